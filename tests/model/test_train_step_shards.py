"""TrainStep shards (note o of _train_step.pxi), the arithmetic of data-parallel training,
checked in one process without MPI: the shards of a batch, each run with total_weight and
row_offset, sum to the whole batch's loss and gradient (float32 tolerance: a different
summation order, rtol 1e-5, atol 1e-6); their dropout masks are the whole batch's rows; an
empty shard contributes nothing; an update after the sum equals the whole batch's update."""
import numpy as np
import pytest

from fastmlp.model import MLP
from fastmlp.testing import assert_bitwise_equal, assert_close

TOL = dict(rtol=1e-5, atol=1e-6)


def _steps(n, dropout=None):
    """n steps over separate copies of the same network (alpha 0.3)."""
    return [MLP([7, 13, 9, 4], ["relu", "tanh"], dropout=dropout or 0.0, random_state=0)
            .train_step("softmax_cross_entropy", 64, alpha=0.3) for _ in range(n)], None


@pytest.mark.parametrize("cuts", [[0, 40], [0, 13, 29, 40], [0, 0, 20, 40]],
                         ids=["whole", "three", "empty first"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dropout", [None, (0.4, 0.2)])
def test_shards_sum_to_the_whole_batch(cuts, weighted, dropout):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 7)).astype(np.float32)
    y = rng.integers(0, 4, 40).astype(np.int32)
    w = rng.uniform(0.1, 3, 40).astype(np.float32) if weighted else None
    steps, _ = _steps(len(cuts), dropout=dropout)
    whole, shards = steps[0], steps[1:]
    loss = whole.forward(X, y, w)
    whole.backward()
    total = float(np.sum(w, dtype=np.float64)) if weighted else 40.0
    grad, share = np.zeros(whole.n_params, np.float32), 0.0
    for s, lo, hi in zip(shards, cuts[:-1], cuts[1:]):
        share += s.forward(X, y, w, index=np.arange(lo, hi), total_weight=total, row_offset=lo)
        s.backward()
        grad += s.flat_grads
        assert s.reduce_buffer.shape == (s.n_params + 4,)
    assert_close(share + shards[0].penalty, loss, **TOL, name="loss")
    assert_close(grad, whole.flat_grads, **TOL, name="summed gradient")
    # the update after the sum equals the whole batch's (alpha / total_weight as L2)
    s = shards[0]
    s.flat_grads[...] = grad
    s.update(0.01)
    whole.update(0.01)
    assert_close(s.flat_params, whole.flat_params, **TOL, name="parameters after update")


def test_dropout_masks_are_keyed_by_the_row_of_the_whole_batch():
    # at rate 0.5 the loss depends on every mask: the shards' losses sum to the whole batch's
    # only if shard rows lo.. draw the whole batch's masks of rows lo..
    rng = np.random.default_rng(2)
    X = rng.normal(size=(30, 7)).astype(np.float32)
    y = rng.integers(0, 4, 30).astype(np.int32)
    steps, _ = _steps(3, dropout=(0.5, 0.5))
    whole, a, b = steps
    loss = whole.forward(X, y)
    share = a.forward(X, y, index=np.arange(0, 11), total_weight=30.0, row_offset=0) + \
        b.forward(X, y, index=np.arange(11, 30), total_weight=30.0, row_offset=11)
    assert_close(share + a.penalty, loss, **TOL, name="dropout loss")
    # a wrong offset draws other masks: the loss changes (the check can fail)
    wrong = a.forward(X, y, index=np.arange(0, 11), total_weight=30.0, row_offset=0) + \
        b.forward(X, y, index=np.arange(11, 30), total_weight=30.0, row_offset=0)
    assert abs(wrong + a.penalty - loss) > 1e-4


def test_empty_shard_has_zero_gradient_and_the_batch_penalty():
    steps, _ = _steps(1)
    s = steps[0]
    X = np.zeros((5, 7), np.float32)
    y = np.zeros(5, np.int32)
    s.flat_grads[...] = 7
    assert s.forward(X, y, index=np.arange(0), total_weight=64.0, row_offset=3) == 0
    s.backward()
    assert_bitwise_equal(s.flat_grads, np.zeros_like(s.flat_grads))
    W = np.concatenate([p.ravel() for p in s.params[0::2]]).astype(np.float64)
    assert_close(s.penalty, 0.3 / (2 * 64) * (W ** 2).sum(), rtol=1e-6, name="penalty")


def test_shard_arguments_are_checked():
    steps, _ = _steps(1)
    s = steps[0]
    X, y = np.zeros((5, 7), np.float32), np.zeros(5, np.int32)
    with pytest.raises(ValueError, match="total_weight"):
        s.forward(X, y, total_weight=0.0)
    with pytest.raises(ValueError, match="row_offset needs total_weight"):
        s.forward(X, y, row_offset=2)
    with pytest.raises(ValueError, match="row_offset"):
        s.forward(X, y, total_weight=5.0, row_offset=-1)
    with pytest.raises(ValueError, match="batch size"):
        s.forward(X, y, index=np.arange(0))           # empty only as a shard


@pytest.mark.parametrize("penalty", [True, False])
def test_loss_and_grad_shards_sum_to_the_objective(penalty):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(150, 7)).astype(np.float32)
    y = rng.integers(0, 4, 150).astype(np.int32)
    steps, _ = _steps(1)
    s = steps[0]
    loss, grad = s.loss_and_grad(X, y)
    l1, g1 = s.loss_and_grad(X[:70], y[:70], total_weight=150.0)
    l2, g2 = s.loss_and_grad(X[70:], y[70:], total_weight=150.0, penalty=False)
    # chunks of max_batch rows are cut elsewhere in a shard: float32 tolerance
    assert_close(l1 + l2, loss, **TOL, name="loss")
    assert_close(g1 + g2, grad, **TOL, name="gradient")
    l0, _ = s.loss_and_grad(X, y, penalty=False)
    assert l0 < loss          # alpha 0.3: the penalty is part of the objective
