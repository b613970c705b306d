"""A sparse first layer in TrainStep and MLP: the same step as on the dense matrix.

TrainStep on a SciPy CSR / CSC X runs the sparse kernels for the first layer's products
(forward X W0, weight gradient X^T D0), reading the batch's rows through the index in place.
Against the same step on X.toarray(): loss rtol 1e-5, gradients and parameters rtol 1e-4,
atol 1e-5 (the products sum the same terms in other orders: float32 rounding). Thread counts:
bitwise.
"""
import numpy as np
import pytest

from fastmlp.core import LOSSES, TrainStep, flat_params
from fastmlp.model import MLP
from fastmlp.testing import assert_bitwise_equal, assert_close

from conftest import bitwise_across_threads
from test_train_step import TOL, _batch

sp = pytest.importorskip("scipy.sparse")


def _sparse_batch(rng, loss, n=40, n_in=30, n_out=4, density=0.15):
    X, y = _batch(rng, loss, n=n, n_in=n_in, n_out=n_out)
    X = sp.random(n, n_in, density=density, format="csr", random_state=rng.integers(1 << 30),
                  dtype=np.float32)
    X[3] = 0.0                       # an empty row
    X.eliminate_zeros()
    return X, y


def _pair(loss, optimizer="adam", **hyper):
    model = MLP([30, 16, 8, 4], ["relu", "gelu"], random_state=3)
    a = TrainStep(flat_params(model.params), model.activations, loss, 16, optimizer=optimizer,
                  alpha=0.1, **hyper)
    b = TrainStep(flat_params(model.params), model.activations, loss, 16, optimizer=optimizer,
                  alpha=0.1, **hyper)
    return a, b


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("fmt", ["csr", "csc"])
def test_sparse_steps_equal_dense_steps(isa, loss, fmt):
    rng = np.random.default_rng(8)
    X, y = _sparse_batch(rng, loss)
    Xs, Xd = X.asformat(fmt), X.toarray()
    a, b = _pair(loss)
    for it in range(4):
        idx = rng.permutation(40)[:16]
        ls = a.run(Xs, y, lr=0.01, index=idx)
        ld = b.run(Xd, y, lr=0.01, index=idx)
        assert ls == pytest.approx(ld, rel=1e-5)
        assert_close(a.flat_grads, b.flat_grads, **TOL, name=f"grads, step {it}")
        assert_close(a.flat_params, b.flat_params, **TOL, name=f"params, step {it}")
    full_s, full_d = a.loss_and_grad(Xs, y), b.loss_and_grad(Xd, y)
    assert full_s[0] == pytest.approx(full_d[0], rel=1e-5)
    assert_close(full_s[1], full_d[1], **TOL)


def test_sparse_step_threads_and_index_dtypes():
    rng = np.random.default_rng(9)
    X, y = _sparse_batch(rng, "softmax_cross_entropy", n=400, n_in=300, n_out=5)
    X64 = X.copy()
    X64.indices, X64.indptr = X64.indices.astype(np.int64), X64.indptr.astype(np.int64)
    idx = rng.permutation(400)[:128]
    results = []
    for Xi in (X, X64):
        model = MLP([300, 64, 5], "relu", random_state=0)
        step = model.train_step("softmax_cross_entropy", 128, optimizer="sgd", momentum=0.9)
        params0 = step.flat_params.copy()

        def one():
            step.flat_params[...] = params0
            step.state[0][...] = 0
            step.run(Xi, y, lr=0.1, index=idx)
            return step.flat_params.copy(), step.flat_grads.copy()

        results.append(bitwise_across_threads(one))
    for a, b in zip(*results):
        assert_bitwise_equal(a, b)


def test_sparse_batch_errors_and_mlp():
    rng = np.random.default_rng(10)
    X, y = _sparse_batch(rng, "mse_loss")
    step = MLP([30, 8, 4], "tanh", random_state=0).train_step("mse_loss", 16)
    with pytest.raises(ValueError, match="X must have 30 columns"):
        step.run(sp.csr_matrix((40, 29), dtype=np.float32), y, lr=0.1, index=np.arange(16))
    with pytest.raises(TypeError, match="X must be"):
        step.run(X.tocoo(), y, lr=0.1, index=np.arange(16))
    bad = X.copy()
    bad.indices[0] = 30
    with pytest.raises(ValueError, match="indices out of range"):
        step.run(bad, y, lr=0.1, index=np.arange(16))
    model = MLP([30, 8, 4], "tanh", random_state=0)
    dense = MLP([30, 8, 4], "tanh", random_state=0)
    out_s, out_d = model.forward(X, training=True), dense.forward(X.toarray(), training=True)
    assert_close(out_s, out_d, **TOL)
    d = np.ones_like(out_s)
    assert model.backward(d) is None and dense.backward(d).shape == (40, 30)
    for g, h in zip(model.grads, dense.grads):
        assert_close(g, h, **TOL)
    assert_close(model.predict(X), dense.predict(X.toarray()), **TOL)
