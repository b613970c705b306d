"""TrainStep.loss_and_grad and MLP.loss_and_grad: the full-batch objective of L-BFGS.

Against the float64 reference step over all the rows (tests/model/test_train_step.py's
_reference_step, itself checked against finite differences through fastmlp.reference), with
the tolerance of a float32 forward/backward (rtol 1e-4, atol 1e-5); chunked evaluation against
one chunk (float32 rounding of different GEMM shapes: rtol 1e-5); thread counts bitwise.
"""
import numpy as np
import pytest

from fastmlp.core import LOSSES, TrainStep, flat_params
from fastmlp.model import MLP
from fastmlp.testing import assert_bitwise_equal, assert_close

from conftest import bitwise_across_threads
from test_train_step import TOL, _batch, _reference_step


def _flat64(grads):
    """[dW0, db0, dW1, db1, ...] float64 -> the flat layout [dW0, dW1, ..., db0, db1, ...]."""
    return np.concatenate([g.ravel() for g in grads[0::2]] + [g.ravel() for g in grads[1::2]])


def _step(model, loss, max_batch, alpha, **kw):
    return TrainStep(flat_params(model.params), model.activations, loss, max_batch,
                     optimizer="sgd", momentum=0.0, alpha=alpha, **kw)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_loss_and_grad_matches_reference(isa, loss, weighted):
    """37 rows in chunks of 8 (the last one short) equal the reference over all 37."""
    rng = np.random.default_rng(2)
    model = MLP([6, 9, 7, 4], ["relu", "tanh"], random_state=1)
    X, y = _batch(rng, loss, n=37)
    sw = rng.uniform(0.2, 2.0, 37).astype(np.float32) if weighted else None
    value, _, grads = _reference_step(model.params, ["relu", "tanh"], X, y, loss, 0.3, sw)
    # the reference's gradient is the data loss's; loss_and_grad adds the L2 term's
    for l in range(3):
        rows = 37 if sw is None else float(sw.astype(np.float64).sum())
        grads[2 * l] = grads[2 * l] + 0.3 / rows * model.params[2 * l].astype(np.float64)
    step = _step(model, loss, 8, 0.3)
    got, grad = step.loss_and_grad(X, y, sw)
    assert grad.dtype == np.float64 and grad.shape == (step.n_params,)
    assert got == pytest.approx(value, rel=1e-5)
    assert_close(grad, _flat64(grads), **TOL)
    assert step.t == 0      # nothing was updated
    assert_bitwise_equal(step.flat_params, flat_params(model.params)[0].base)


def test_loss_and_grad_chunks_and_threads():
    rng = np.random.default_rng(3)
    model = MLP([20, 64, 3], "relu", random_state=0)
    X, y = _batch(rng, "softmax_cross_entropy", n=1000, n_in=20, n_out=3)
    one = _step(model, "softmax_cross_entropy", 1000, 0.1).loss_and_grad(X, y)
    step = _step(model, "softmax_cross_entropy", 300, 0.1)
    many = bitwise_across_threads(lambda: step.loss_and_grad(X, y))
    assert many[0] == pytest.approx(one[0], rel=1e-6)
    assert_close(many[1], one[1], rtol=1e-5, atol=1e-7)


def test_per_output_grad_is_n_outputs_times_the_mean():
    """mse_loss with per_output_grad: scikit-learn's gradient (each output's own mean), the
    loss unchanged."""
    rng = np.random.default_rng(4)
    model = MLP([6, 9, 4], "tanh", random_state=0)
    X, y = _batch(rng, "mse_loss", n=20)
    plain = _step(model, "mse_loss", 20, 0.0).loss_and_grad(X, y)
    scaled = _step(model, "mse_loss", 20, 0.0, per_output_grad=True).loss_and_grad(X, y)
    assert plain[0] == scaled[0]
    assert_close(scaled[1], 4 * plain[1], rtol=1e-6, atol=1e-9)


def test_nonfinite_continue_goes_on_and_raise_updates_nothing():
    rng = np.random.default_rng(5)
    X, y = _batch(rng, "mse_loss", n=8)
    X[0, 0] = np.inf
    for mode in ("raise", "continue"):
        model = MLP([6, 5, 4], "relu", random_state=0)
        step = model.train_step("mse_loss", 8, optimizer="sgd", nonfinite=mode)
        before = step.flat_params.copy()
        if mode == "raise":
            with pytest.raises(FloatingPointError, match="not updated"):
                step.run(X, y, lr=0.1)
            assert_bitwise_equal(step.flat_params, before) and step.t == 0
        else:
            assert not np.isfinite(step.run(X, y, lr=0.1))
            assert step.t == 1 and not np.isfinite(step.flat_params).all()
    with pytest.raises(ValueError, match="nonfinite must be"):
        MLP([6, 4], random_state=0).train_step("mse_loss", 8, nonfinite="ignore")


def test_loss_and_grad_errors():
    rng = np.random.default_rng(6)
    model = MLP([6, 9, 4], "relu", dropout=0.5, random_state=0)
    X, y = _batch(rng, "mse_loss", n=10)
    with pytest.raises(ValueError, match="without dropout"):
        model.train_step("mse_loss", 10).loss_and_grad(X, y)
    step = _step(MLP([6, 9, 4], "relu", random_state=0), "mse_loss", 4, 0.1)
    with pytest.raises(ValueError, match="sums to zero"):
        step.loss_and_grad(X, y, np.zeros(10, np.float32))
    with pytest.raises(ValueError, match="out must be"):
        step.loss_and_grad(X, y, out=np.zeros(3))
    with pytest.raises(ValueError, match="X must have 6 columns"):
        step.loss_and_grad(X[:, :5], y)
    X[3] = np.nan
    with pytest.raises(FloatingPointError):
        step.loss_and_grad(X, y)


def test_mlp_loss_and_grad_is_the_trainstep_objective():
    rng = np.random.default_rng(7)
    model = MLP([6, 9, 4], "tanh", random_state=0)
    X, y = _batch(rng, "sigmoid_cross_entropy", n=50)
    loss, grad = model.loss_and_grad(X, y, "sigmoid_cross_entropy", alpha=0.2, chunk=16)
    ref = _step(model, "sigmoid_cross_entropy", 16, 0.2).loss_and_grad(X, y)
    assert loss == ref[0]
    assert_bitwise_equal(grad, ref[1])
    # a step along -grad lowers the loss (the gradient is the objective's)
    from fastmlp.core import flat_buffer
    flat = flat_buffer(model.params)
    flat -= (1e-2 * grad).astype(np.float32)
    assert model.loss_and_grad(X, y, "sigmoid_cross_entropy", alpha=0.2, chunk=16)[0] < loss
