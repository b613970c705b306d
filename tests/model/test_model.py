"""The model API (fastmlp.model): MLP's forward / backward, initialisation, optimizers and
schedules. No scikit-learn.

MLP.backward is compared with TrainStep (same dropout masks) with the tolerance of a whole
float32 forward/backward (rtol 1e-4, atol 1e-5); the optimizers must lower a loss.
"""
import pickle

import numpy as np
import pytest

import fastmlp
from fastmlp import optim
from fastmlp.core import flat_buffer
from fastmlp.model import MLP
from fastmlp.testing import assert_close

TOL = dict(rtol=1e-4, atol=1e-5)


def test_model_backward_matches_train_step_with_dropout():
    """forward/backward/optimizer of the model API == one TrainStep call (same dropout masks)."""
    rng = np.random.default_rng(2)
    X = rng.standard_normal((8, 5)).astype(np.float32)
    y = rng.integers(0, 3, 8).astype(np.int32)
    a = MLP([5, 16, 12, 3], ["gelu", "leaky_relu"], dropout=0.4, random_state=3)
    b = pickle.loads(pickle.dumps(a))
    out = a.forward(X, training=True)
    _, dout = fastmlp.softmax_cross_entropy(out, y)
    dX = a.backward(dout)
    assert dX.shape == X.shape
    opt = optim.Adam(a, lr=0.01)
    opt.step()
    b.train_step("softmax_cross_entropy", 8, optimizer="adam").run(X, y, lr=0.01)
    for pa, pb in zip(a.params, b.params):
        assert_close(pa, pb, **TOL)
    assert not np.array_equal(a.params[0], pickle.loads(pickle.dumps(b)).params[0] * 0)


def test_params_and_grads_are_views_of_flat_buffers():
    model = MLP([5, 7, 3], "relu", random_state=0)
    for arrays in (model.params, model.grads):
        flat = flat_buffer(arrays)
        assert flat is not None and flat.size == 5 * 7 + 7 * 3 + 7 + 3
        assert all(p.base is flat for p in arrays)
    assert flat_buffer(model.params) is not flat_buffer(model.grads)
    # a replaced entry: train_step gathers the parameters into one buffer again, values kept
    model.params[0] = model.params[0].copy() + 1
    expected = [p.copy() for p in model.params]
    step = model.train_step("softmax_cross_entropy", 4)
    assert flat_buffer(model.params) is step.flat_params
    for p, e in zip(model.params, expected):
        assert np.array_equal(p, e)


def test_init_schemes():
    he = MLP([400, 300, 10], "relu", random_state=0)
    assert he.params[0].std() == pytest.approx(np.sqrt(2 / 400), rel=0.02)
    glorot = MLP([400, 300, 10], "tanh", random_state=0)
    assert np.abs(glorot.params[0]).max() <= np.sqrt(6 / 700)
    assert not glorot.params[1].any()
    sk = MLP([400, 300, 10], "logistic", init="sklearn", random_state=0)
    assert np.abs(sk.params[0]).max() <= np.sqrt(2 / 700) and sk.params[1].any()


@pytest.mark.parametrize("opt_cls", [optim.SGD, optim.RMSProp, optim.Adam, optim.AdamW])
def test_optimizers_reduce_loss(opt_cls):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int32)
    model = MLP([4, 16, 2], random_state=0)
    opt = opt_cls(model, lr=0.05) if opt_cls is not optim.SGD else opt_cls(model, 0.1, 0.9, True)
    losses = []
    for _ in range(30):
        loss, d = fastmlp.softmax_cross_entropy(model.forward(X, training=True), y)
        model.backward(d)
        opt.step()
        losses.append(loss)
    assert losses[-1] < 0.5 * losses[0]


def test_schedules():
    assert optim.InverseScaling(1.0, 0.5)(3) == pytest.approx(0.5)
    assert optim.StepDecay(1.0, 10, 0.5)(25) == pytest.approx(0.25)
    cos = optim.CosineWarmup(1.0, total=110, warmup=10)
    assert cos(0) == pytest.approx(0.1) and cos(10) == 1.0 and cos(110) == pytest.approx(0)
    plateau = optim.ReduceOnPlateau(1.0, patience=1, tol=0.1)
    for m in [1.0, 1.0, 1.0]:
        lr = plateau.report(m)
    assert lr == pytest.approx(0.2)


def test_public_modules_stay_where_users_import_them():
    import fastmlp.optim
    import fastmlp.reference
    import fastmlp.testing
    assert fastmlp.optim is optim and fastmlp.optim.Adam is optim.Adam
    assert fastmlp.reference is fastmlp.core.reference
    assert fastmlp.testing.assert_close is assert_close
    assert fastmlp.MLP is MLP and fastmlp.TrainStep is fastmlp.core.TrainStep
