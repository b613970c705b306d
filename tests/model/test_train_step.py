"""TrainStep: the native training step, whole (run) and in phases (forward, backward, update).

A step is compared with a float64 NumPy computation built from fastmlp.reference, with the
tolerance of a whole float32 forward/backward (rtol 1e-4, atol 1e-5). The phases are compared
with run() bitwise: they are the same native code. No scikit-learn.
"""
import os
import pickle

import numpy as np
import pytest

import fastmlp
from fastmlp import reference as ref
from fastmlp.core import LOSSES, OPTIMIZERS, TrainStep, dropout_mask, flat_buffer, flat_params
from fastmlp.model import MLP
from fastmlp.testing import assert_bitwise_equal, assert_close

from conftest import bitwise_across_threads

TOL = dict(rtol=1e-4, atol=1e-5)


def _reference_step(params, acts, X, y, loss, alpha, sample_weight=None):
    """float64 loss and gradients of one step, from fastmlp.reference."""
    p = [q.astype(np.float64) for q in params]
    a = [X.astype(np.float64)]
    for l in range(len(p) // 2):
        z = a[-1] @ p[2 * l] + p[2 * l + 1]
        a.append(ref.activation_forward(z, acts[l]) if l < len(acts) else z)
    lossfn = getattr(ref, loss)
    w = None if sample_weight is None else sample_weight * len(X) / sample_weight.sum()
    labels = loss == "softmax_cross_entropy"
    value, d = lossfn(a[-1], y if labels else y.astype(np.float64), w)
    # scikit-learn's L2 scale: the batch size, or the batch's sum of sample weights
    rows = len(X) if sample_weight is None else float(sample_weight.astype(np.float64).sum())
    value += alpha / (2 * rows) * sum((p[2 * l] ** 2).sum() for l in range(len(p) // 2))
    grads = [None] * len(p)
    for l in range(len(p) // 2 - 1, -1, -1):
        grads[2 * l], grads[2 * l + 1] = a[l].T @ d, d.sum(axis=0)
        if l:
            d = ref.activation_backward(d @ p[2 * l].T, acts[l - 1], y=a[l], z=None)
    return value, p, grads


def _batch(rng, loss, n=11, n_in=6, n_out=4):
    X = rng.standard_normal((n, n_in)).astype(np.float32)
    y = (rng.integers(0, n_out, n).astype(np.int32) if loss == "softmax_cross_entropy"
         else (rng.random((n, n_out)) > 0.5).astype(np.float32))
    return X, y


@pytest.mark.parametrize("loss,solver", [("softmax_cross_entropy", "adam"),
                                         ("sigmoid_cross_entropy", "sgd"),
                                         ("mse_loss", "rmsprop")])
def test_train_step_matches_reference(loss, solver):
    rng = np.random.default_rng(1)
    acts = ["relu", "tanh"]
    model = MLP([6, 9, 7, 4], acts, random_state=0)
    X, y = _batch(rng, loss)
    sw = rng.random(11).astype(np.float32)
    alpha, lr = 0.3, 0.05
    value, p64, g64 = _reference_step(model.params, acts, X, y, loss, alpha, sw)
    step = model.train_step(loss, 16, optimizer=solver, alpha=alpha, momentum=0.9)
    got = step.run(X, y, sw, lr=lr)
    assert got == pytest.approx(value, rel=1e-5)
    for i, (p, g) in enumerate(zip(p64, g64)):
        assert_close(step.grads[i], g, **TOL, name=f"grad {i}")
        l2 = alpha / float(sw.astype(np.float64).sum()) if i % 2 == 0 else 0.0
        if solver == "adam":
            ref.adam_update(p, g, np.zeros_like(p), np.zeros_like(p), step=1, lr=lr, l2=l2)
        elif solver == "sgd":
            ref.sgd_update(p, g, lr=lr, l2=l2, momentum=0.9, nesterov=False,
                           velocity=np.zeros_like(p))
        else:
            ref.rmsprop_update(p, g, np.zeros_like(p), lr=lr, l2=l2)
        assert_close(model.params[i], p, **TOL, name=f"param {i}")


def _twin_steps(loss, optimizer, **hyper):
    """Two TrainSteps over equal parameters: one for run(), one for the phases."""
    model = MLP([6, 9, 7, 4], ["gelu", "relu"], dropout=[0.3, 0.0], random_state=4)
    a = model.train_step(loss, 16, optimizer=optimizer, alpha=0.1, **hyper)
    b = TrainStep(flat_params(model.params), model.activations, loss, 16, optimizer=optimizer,
                  alpha=0.1, dropout=model.dropout, seed=model.seed, **hyper)
    return a, b


def _arrays(step):
    return [step.flat_params, step.flat_grads, *step.state]


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_phases_equal_run_bitwise(isa, loss, optimizer):
    """forward + backward + update == run, bit for bit, over several steps (dropout, gather,
    sample weights and the L2 penalty included)."""
    rng = np.random.default_rng(5)
    a, b = _twin_steps(loss, optimizer, weight_decay=0.01 if optimizer == "adam" else 0.0)
    X, y = _batch(rng, loss, n=30)
    sw = rng.random(30).astype(np.float32)
    for it in range(4):
        idx = rng.permutation(30)[:16] if it % 2 else None
        args = (X, y, sw if it > 1 else None) if idx is not None else (X[:16], y[:16])
        lr = 0.01 * (it + 1)
        loss_run = a.run(*args, lr=lr, index=idx)
        loss_phases = b.forward(*args, index=idx)
        b.backward()
        b.update(lr)
        assert loss_run == loss_phases
        assert a.t == b.t == it + 1
        for x, z in zip(_arrays(a), _arrays(b)):
            assert_bitwise_equal(x, z)


def test_gradient_buffer_is_one_array_whose_views_are_the_layer_gradients():
    rng = np.random.default_rng(6)
    model = MLP([6, 9, 7, 4], ["relu", "tanh"], random_state=0)
    step = model.train_step("softmax_cross_entropy", 16, alpha=0.2)
    X, y = _batch(rng, "softmax_cross_entropy")
    step.forward(X, y)
    step.backward()
    flat = step.flat_grads
    assert flat.ndim == 1 and flat.dtype == np.float32 and flat.flags.c_contiguous
    assert flat.size == step.n_params == sum(p.size for p in model.params)
    assert flat_buffer(step.params) is step.flat_params
    # the gradient views sit at their offsets of flat_grads (which reduce_buffer extends)
    assert all(np.shares_memory(g, flat) for g in step.grads)
    assert step.reduce_buffer[:step.n_params].ctypes.data == flat.ctypes.data
    # the layout: every weight first, then every bias (fastmlp.core.flat_params)
    sizes = [p.size for p in model.params]
    weights = np.concatenate([g.ravel() for g in step.grads[0::2]])
    biases = np.concatenate([g.ravel() for g in step.grads[1::2]])
    assert_bitwise_equal(flat, np.concatenate([weights, biases]))
    assert step.n_weights == sum(sizes[0::2])
    # the gradients are those of the data loss (L2's is added by update): the reference's
    _, _, g64 = _reference_step(model.params, ["relu", "tanh"], X, y, "softmax_cross_entropy",
                                0.0)
    for g, e in zip(step.grads, g64):
        assert_close(g, e, **TOL)
    # a view written is the buffer written: one in-place operation on flat reaches every layer
    flat *= 2
    assert_close(step.grads[0], 2 * g64[0], **TOL)


def test_full_batch_gradient_from_phases_without_update():
    """What a full-batch solver needs: loss and gradient over batches, parameters untouched."""
    rng = np.random.default_rng(7)
    model = MLP([6, 9, 4], "relu", random_state=1)
    before = model.params[0].copy()
    step = model.train_step("mse_loss", 10)
    X, y = _batch(rng, "mse_loss", n=20)
    total = np.zeros(step.n_params)
    for lo in (0, 10):
        step.forward(X[lo:lo + 10], y[lo:lo + 10])
        step.backward()
        total += step.flat_grads
    assert_bitwise_equal(model.params[0], before)
    assert step.t == 0
    _, _, g_all = _reference_step(model.params, ["relu"], X, y, "mse_loss", 0.0)
    flat64 = np.concatenate([g_all[0].ravel(), g_all[2].ravel(), g_all[1], g_all[3]])
    # each batch's gradient is of its own mean: two equal batches sum to twice the whole's
    assert_close(total / 2, flat64, **TOL)


def test_phases_refuse_the_wrong_order():
    model = MLP([4, 5, 3], "relu", random_state=0)
    step = model.train_step("softmax_cross_entropy", 8)
    X = np.ones((8, 4), np.float32)
    y = np.zeros(8, np.int32)
    with pytest.raises(RuntimeError, match="backward needs a forward"):
        step.backward()
    with pytest.raises(RuntimeError, match="update needs a backward"):
        step.update(0.1)
    step.forward(X, y)
    with pytest.raises(RuntimeError, match="update needs a backward"):
        step.update(0.1)
    step.backward()
    step.backward()                   # the same batch again: the same gradients
    step.update(0.1)
    with pytest.raises(RuntimeError, match="update needs a backward"):
        step.update(0.1)
    with pytest.raises(RuntimeError, match="backward needs a forward"):
        step.backward()
    assert step.t == 1


def test_non_finite_loss_stops_at_forward():
    model = MLP([2, 3, 1], "relu", random_state=0)
    step = model.train_step("mse_loss", 4)
    before = [p.copy() for p in model.params]
    X = np.array([[np.inf, 1.0]], np.float32)
    y = np.zeros((1, 1), np.float32)
    with pytest.raises(FloatingPointError, match="not updated"):
        step.forward(X, y)
    with pytest.raises(RuntimeError, match="backward needs a forward"):
        step.backward()
    with pytest.raises(FloatingPointError):
        step.run(X, y, lr=0.1)
    for p, b in zip(model.params, before):
        assert_bitwise_equal(p, b)
    assert step.t == 0


def test_params_must_be_one_flat_buffer():
    params = [np.zeros((3, 2), np.float32), np.zeros(2, np.float32)]
    with pytest.raises(ValueError, match="flat_params"):
        TrainStep(params, [], "mse_loss", 4)
    views = flat_params(params)
    assert TrainStep(views, [], "mse_loss", 4).flat_params is flat_buffer(views)
    with pytest.raises(ValueError, match="loss must be one of softmax_cross_entropy"):
        TrainStep(views, [], "softmax", 4)
    with pytest.raises(ValueError, match="optimizer must be one of sgd, rmsprop, adam"):
        TrainStep(views, [], "mse_loss", 4, optimizer="lbfgs")


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_phases_deterministic_across_threads(optimizer):
    rng = np.random.default_rng(8)
    X = rng.standard_normal((256, 300)).astype(np.float32)
    y = rng.integers(0, 10, 256).astype(np.int32)

    def train():
        model = MLP([300, 128, 64, 10], ["relu", "gelu"], dropout=0.1, random_state=2)
        step = model.train_step("softmax_cross_entropy", 128, optimizer=optimizer, alpha=1e-3)
        for start in (0, 128):
            step.forward(X, y, index=np.arange(start, start + 128))
            step.backward()
            step.update(0.01)
        return [step.flat_params, step.flat_grads, *step.state]

    bitwise_across_threads(train)


def test_pickle_keeps_state_and_continues_identically():
    rng = np.random.default_rng(9)
    model = MLP([6, 9, 4], "relu", random_state=3)
    step = model.train_step("softmax_cross_entropy", 8, optimizer="adam")
    X, y = _batch(rng, "softmax_cross_entropy", n=8)
    step.run(X, y, lr=0.01)
    clone = pickle.loads(pickle.dumps(step))
    assert clone.t == 1 and flat_buffer(clone.params) is clone.flat_params
    for a, b in zip(_arrays(step)[:1] + step.state, _arrays(clone)[:1] + clone.state):
        assert_bitwise_equal(a, b)
    step.run(X, y, lr=0.01)
    clone.run(X, y, lr=0.01)
    for a, b in zip(_arrays(step), _arrays(clone)):
        assert_bitwise_equal(a, b)


def test_dropout_mask_deterministic_and_scaled():
    m = dropout_mask(200, 50, 0.25, 7, 3, 1)
    assert_bitwise_equal(m, dropout_mask(200, 50, 0.25, 7, 3, 1))
    assert set(np.unique(m)) <= {0.0, np.float32(1 / 0.75)}
    assert abs((m == 0).mean() - 0.25) < 0.02
    assert not np.array_equal(m, dropout_mask(200, 50, 0.25, 7, 4, 1))


def test_dropout_mask_is_the_one_the_step_applies():
    """The key formula is written once (_dropout_key): the model API's masks and the native
    step's agree, step after step."""
    rng = np.random.default_rng(10)
    X = rng.standard_normal((8, 5)).astype(np.float32)
    y = rng.integers(0, 3, 8).astype(np.int32)
    a = MLP([5, 12, 3], "relu", dropout=0.5, random_state=6)
    b = pickle.loads(pickle.dumps(a))
    step = b.train_step("softmax_cross_entropy", 8, optimizer="sgd", momentum=0.0)
    opt = fastmlp.optim.SGD(a, lr=0.1)
    for _ in range(3):
        _, d = fastmlp.softmax_cross_entropy(a.forward(X, training=True), y)
        a.backward(d)
        opt.step()
        step.run(X, y, lr=0.1)
        for pa, pb in zip(a.params, b.params):
            assert_close(pa, pb, **TOL)


def test_concurrent_steps_profiled_from_several_python_threads():
    """Re-entrancy (fastmlp.h rule 5) for whole training steps: four Python threads, each with
    its own TrainStep and its own local_num_threads, while the profiler records every kernel,
    get the bits of the same steps run one after the other. (CI runs this under
    ThreadSanitizer.)"""
    from concurrent.futures import ThreadPoolExecutor

    from fastmlp.core import local_num_threads
    rng = np.random.default_rng(12)
    X = rng.standard_normal((64, 30)).astype(np.float32)
    y = rng.integers(0, 5, 64).astype(np.int32)

    # two OpenMP threads for half the steps, but one under CI's ThreadSanitizer run
    # (OMP_NUM_THREADS=1): its libgomp is not built with TSan, so a team would read as races
    counts = (1, 1) if os.environ.get("OMP_NUM_THREADS") == "1" else (1, 2)

    def train(seed):
        with local_num_threads(counts[seed % 2]):
            model = MLP([30, 24, 16, 5], ["relu", "gelu"], dropout=0.1, random_state=seed)
            step = model.train_step("softmax_cross_entropy", 32, optimizer="adam", alpha=1e-3)
            for start in (0, 32, 0, 32):
                step.forward(X, y, index=np.arange(start, start + 32))
                step.backward()
                step.update(0.01)
            return step.flat_params.copy()

    serial = [train(s) for s in range(8)]
    with fastmlp.profile(peak_gflops=1.0) as prof:
        with ThreadPoolExecutor(4) as ex:
            concurrent = list(ex.map(train, range(8)))
    for a, b in zip(serial, concurrent):
        assert_bitwise_equal(a, b)
    matmuls = sum(r["calls"] for r in prof.records if r["kernel"] == "matmul")
    assert matmuls == 8 * 4 * (3 + 3 + 2)      # per step: 3 forward, 3 dW, 2 dX


FUSED_CASES = {
    "adamw, layer norm with decay, dropout": dict(
        sizes=[6, 9, 7, 4], optimizer="adam", weight_decay=0.01, norm="layer", norm_decay=True,
        dropout=[0.3, 0.0]),
    "sgd nesterov, batch norm": dict(
        sizes=[6, 9, 7, 4], optimizer="sgd", momentum=0.9, nesterov=True, norm="batch"),
    "rmsprop, no L2": dict(sizes=[6, 9, 7, 4], optimizer="rmsprop", alpha=0.0),
    "plain sgd": dict(sizes=[6, 9, 4], optimizer="sgd", momentum=0.0),
    # several K blocks of dW = A^T D (K = the batch, above every ISA's KC; fuse_update=True
    # fuses at any batch), a narrow output (its dW on FM_PATH_BLOCKED_CT) and a wide one
    "adam, batch 450, outputs 3": dict(sizes=[40, 70, 3], optimizer="adam", batch=450),
    "adam, sparse input (first layer unfused)": dict(sizes=[30, 9, 4], optimizer="adam",
                                                     sparse=True),
}


@pytest.mark.parametrize("case", FUSED_CASES)
def test_fused_update_equals_the_phases_bitwise(isa, case):
    """run() steps each W inside the product of its gradient (note p of _train_step.pxi); the
    parameters, gradients and optimizer state equal those of fuse_update=False, bit for bit,
    over several steps."""
    c = dict(FUSED_CASES[case])
    sizes, batch = c.pop("sizes"), c.pop("batch", 16)
    norm, sparse = c.pop("norm", None), c.pop("sparse", False)
    dropout = c.pop("dropout", None)
    c.setdefault("alpha", 0.1)
    model = MLP(sizes, "relu", normalization=norm, dropout=dropout or 0.0, random_state=3)
    steps = [TrainStep(flat_params([p.copy() for p in model.params]), model.activations,
                       "softmax_cross_entropy", batch, dropout=model.dropout,
                       normalization=model.normalization, fuse_update=fuse, **c)
             for fuse in (True, False)]
    rng = np.random.default_rng(8)
    n = batch + 7
    X = rng.standard_normal((n, sizes[0])).astype(np.float32)
    if sparse:
        scipy_sparse = pytest.importorskip("scipy.sparse")
        X[rng.random(X.shape) < 0.8] = 0
        X = scipy_sparse.csr_matrix(X)
    y = rng.integers(0, sizes[-1], n).astype(np.int32)
    for it in range(4):
        idx = rng.permutation(n)[:batch]
        losses = [s.run(X, y, lr=0.01 * (it + 1), index=idx) for s in steps]
        assert losses[0] == losses[1]
        for a, b in zip(_arrays(steps[0]), _arrays(steps[1])):
            assert_bitwise_equal(a, b)
    assert steps[0].t == steps[1].t == 4


def test_fuse_auto_follows_the_cpu_maker():
    """fuse_update="auto" fuses up to batch 256 on Intel CPUs only (note p): the maker the C core
    reads from CPUID agrees with /proc/cpuinfo's vendor_id."""
    cpu = fastmlp.core.machine.cpu_id()
    if cpu is None:
        pytest.skip("no /proc/cpuinfo vendor_id here")
    expected = 256 if cpu.startswith("GenuineIntel ") else 0
    assert fastmlp.core.FUSE_AUTO_MAX_BATCH == expected


def test_fused_update_runs_the_optimizer_over_the_rest_only():
    """With fuse_update the update kernel's own pass covers the biases only (the weights took
    their step in backward's products); without it, every parameter; with clipping, which must
    see every gradient first, or above FUSE_AUTO_MAX_BATCH (note p), every parameter too."""
    model = MLP([20, 30, 5], "relu", random_state=0)
    rng = np.random.default_rng(9)
    X = rng.standard_normal((300, 20)).astype(np.float32)
    y = rng.integers(0, 5, 300).astype(np.int32)
    seen = {}
    auto = fastmlp.core.FUSE_AUTO_MAX_BATCH   # 256 on Intel, 0 elsewhere
    for name, (batch, hyper) in {"fused": (16, dict(fuse_update=True)),
                                 "unfused": (16, dict(fuse_update=False)),
                                 "clipped": (16, dict(clip_grad_norm=1.0)),
                                 "auto at the limit": (max(auto, 1), {}),
                                 "large batch": (auto + 1, {})}.items():
        step = model.train_step("softmax_cross_entropy", batch, **hyper)
        with fastmlp.profile() as prof:
            step.run(X[:batch], y[:batch], lr=0.01)
        seen[name] = sum(r["n"] * r["calls"] for r in prof.records if r["kernel"] == "adam_update")
    assert seen["fused"] == step.n_params - step.n_weights == 35
    assert seen["unfused"] == seen["clipped"] == seen["large batch"] == step.n_params
    assert seen["auto at the limit"] == (35 if auto else step.n_params)
    forced = model.train_step("softmax_cross_entropy", 257, fuse_update=True)
    with fastmlp.profile() as prof:
        forced.run(X[:257], y[:257], lr=0.01)
    assert sum(r["n"] for r in prof.records if r["kernel"] == "adam_update") == 35
    with pytest.raises(ValueError, match="fuse_update must be 'auto', True or False"):
        model.train_step("softmax_cross_entropy", 16, fuse_update="yes")
