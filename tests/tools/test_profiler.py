"""fastmlp.profile: exact call counts and FLOPs, for direct kernel calls and a training step.

The expected numbers are written out from the formulas in fastmlp/tools/profiler.py's docstring
and from the kernel sequence of TrainStep's phases (fastmlp/core/_train_step.pxi): per layer a
forward GEMM with the bias (and hidden activation) fused, then backward from the last layer:
dW = A^T D, db, the input gradient (D W^T) * act' fused for every layer but the first; then one
optimizer update over the flat parameter buffer, or two with an L2 penalty (the weights, then the
biases).
"""
import numpy as np
import pytest

import fastmlp

from conftest import randn

PEAK = 100.0    # a fixed peak: these tests check counts, not speed, and skip the measurement


def by_key(prof):
    """Records keyed by (kernel, act, grad_act, flags, m, n, k)."""
    return {(r["kernel"], r["act"], r["grad_act"], r["flags"], r["m"], r["n"], r["k"]): r
            for r in prof.records}


def test_direct_calls_counted_exactly():
    rng = np.random.default_rng(0)
    a, w = randn(rng, 64, 784), randn(rng, 784, 32)
    h, w2, b2 = randn(rng, 64, 32), randn(rng, 32, 10), randn(rng, 10)
    dz = randn(rng, 64, 10)
    p, g, m, v = randn(rng, 320), randn(rng, 320), np.zeros(320, np.float32), np.zeros(320, np.float32)
    with fastmlp.profile(peak_gflops=PEAK) as prof:
        fastmlp.matmul(a, w)
        fastmlp.matmul(a, w)
        fastmlp.matmul(h, w2, bias=b2, activation="relu")
        fastmlp.bias_grad(dz)
        fastmlp.adam_update(p, g, m, v, step=1, lr=1e-3)
    rows = by_key(prof)
    assert len(rows) == 4
    plain = rows[("matmul", None, None, (), 64, 32, 784)]
    assert plain["calls"] == 2
    assert plain["flops"] == 2 * (2 * 64 * 32 * 784)
    assert plain["bytes"] == 2 * 4 * (64 * 784 + 784 * 32 + 64 * 32)
    fused = rows[("matmul", "relu", None, ("bias",), 64, 10, 32)]
    assert fused["calls"] == 1
    assert fused["flops"] == 2 * 64 * 10 * 32
    assert fused["bytes"] == 4 * (64 * 32 + 32 * 10 + 64 * 10 + 10)
    assert fused["name"] == "matmul NN 64x10x32 +bias +relu [blocked]"
    bg = rows[("bias_grad", None, None, (), 64, 10, 0)]
    assert (bg["calls"], bg["flops"], bg["bytes"]) == (1, 64 * 10, 4 * (64 * 10 + 10))
    adam = rows[("adam_update", None, None, (), 0, 320, 0)]
    assert (adam["calls"], adam["flops"], adam["bytes"]) == (1, 14 * 320, 4 * 7 * 320)
    for r in prof.records:
        assert r["seconds"] > 0
        assert r["mean_seconds"] == pytest.approx(r["seconds"] / r["calls"])
        assert r["gflops"] == pytest.approx(r["flops"] / r["seconds"] * 1e-9)
        assert r["percent_of_peak"] == pytest.approx(100 * r["gflops"] / PEAK)


def expected_train_step(n_in, n_hidden, n_out, batch, l2, fused=True):
    """{(kernel, act, grad_act, flags, m, n, k): (calls, flops)} of one Adam TrainStep.run of a
    n_in-n_hidden-n_out ReLU net with softmax cross-entropy (with an L2 penalty or not: the
    same calls, but for the unfused optimizer's passes). fused: each weight matrix takes Adam's
    step inside the product of its gradient (an update epilogue: the product's flops plus 14 a
    weight), the biases in adam_update; else adam_update steps them all."""
    M = batch
    n_biases = n_hidden + n_out
    dw_flags = ("trans_a", "update") if fused else ("trans_a",)
    step_flops = 14 if fused else 0           # Adam's, per weight, inside the dW product
    expected = {
        # forward
        ("matmul", "relu", None, ("bias",), M, n_hidden, n_in): (1, 2 * M * n_hidden * n_in),
        ("matmul", None, None, ("bias",), M, n_out, n_hidden): (1, 2 * M * n_out * n_hidden),
        ("softmax_cross_entropy", None, None, (), M, n_out, 0): (1, 4 * M * n_out),
        # backward, output layer: db1, dH = (D W1^T) * relu'(H), then dW1 = H^T D (with W1's step)
        ("bias_grad", None, None, (), M, n_out, 0): (1, M * n_out),
        ("matmul", None, "relu", ("trans_b",), M, n_hidden, n_out): (1, 2 * M * n_hidden * n_out),
        ("matmul", None, None, dw_flags, n_hidden, n_out, M):
            (1, 2 * n_hidden * n_out * M + step_flops * n_hidden * n_out),
        # backward, first layer: no input gradient
        ("bias_grad", None, None, (), M, n_hidden, 0): (1, M * n_hidden),
        ("matmul", None, None, dw_flags, n_in, n_hidden, M):
            (1, 2 * n_in * n_hidden * M + step_flops * n_in * n_hidden),
    }
    # the rest of the update: fused, the biases; unfused, one pass over every parameter or, with
    # L2 (the weights' only), one over the weights and one over the biases (flat_params keeps
    # each kind together)
    n_weights = n_in * n_hidden + n_hidden * n_out
    passes = ((n_biases,) if fused else (n_weights, n_biases) if l2
              else (n_weights + n_biases,))
    for n in passes:
        expected[("adam_update", None, None, (), 0, n, 0)] = (1, 14 * n)
    return expected


def check_train_step(prof, l2, fused=True):
    expected = expected_train_step(784, 32, 10, 64, l2, fused)
    got = {key: (r["calls"], r["flops"]) for key, r in by_key(prof).items()}
    assert got == expected
    gemms = [r for r in prof.records if r["kernel"] == "matmul"]
    if not fused:
        return
    # 2 forward GEMMs, a dW per layer (with its weights' Adam step), a dX for the second only
    assert sum(r["calls"] for r in gemms) == 5
    assert sum(r["flops"] for r in gemms) == 2 * 64 * (2 * 784 * 32 + 3 * 32 * 10) + \
        14 * (784 * 32 + 32 * 10)
    stepped = sorted((r for r in gemms if "update" in r["flags"]), key=lambda r: r["m"])
    assert [r["name"] for r in stepped] == ["matmul TN 32x10x64 +update [blocked_ct]",
                                            "matmul TN 784x32x64 +update [blocked]"]
    # bytes: the product's, plus Adam's parameter, m and v, each read and written
    assert stepped[1]["bytes"] == 4 * (784 * 64 + 64 * 32 + 784 * 32) + 4 * 6 * 784 * 32


def mnist_like_batch(rng):
    return rng.random((64, 784), np.float32), rng.integers(0, 10, 64).astype(np.int32)


def test_train_step_counts_exact():
    rng = np.random.default_rng(1)
    params = fastmlp.core.flat_params([randn(rng, 784, 32) * 0.05, np.zeros(32, np.float32),
                                       randn(rng, 32, 10) * 0.1, np.zeros(10, np.float32)])
    X, y = mnist_like_batch(rng)
    for alpha in (0.0, 1e-4):
        for fused in (True, False):
            step = fastmlp.TrainStep(params, ["relu"], "softmax_cross_entropy", 64, alpha=alpha,
                                     fuse_update=fused)
            with fastmlp.profile(peak_gflops=PEAK) as prof:
                step.run(X, y, lr=1e-3)
            check_train_step(prof, l2=alpha > 0, fused=fused)


def test_estimator_partial_fit_batch_counts_exact():
    pytest.importorskip("sklearn")
    X, y = mnist_like_batch(np.random.default_rng(2))
    y[:10] = np.arange(10)      # every class present: a softmax output of 10 units
    clf = fastmlp.MLPClassifier((32,), batch_size=64, random_state=0)
    with fastmlp.profile(peak_gflops=PEAK) as prof:
        clf.partial_fit(X, y, classes=np.arange(10))
    # the estimator's step fuses as fuse_update="auto" does on this CPU
    check_train_step(prof, l2=clf.alpha > 0, fused=64 <= fastmlp.core.FUSE_AUTO_MAX_BATCH)


def test_off_records_nothing():
    rng = np.random.default_rng(3)
    a = randn(rng, 8, 8)
    fastmlp.matmul(a, a)                    # outside any profile
    with fastmlp.profile(peak_gflops=PEAK) as prof:
        pass
    assert prof.records == []
    assert prof.total_seconds == 0
    with fastmlp.profile(peak_gflops=PEAK) as prof:
        fastmlp.matmul(a, a)
    fastmlp.matmul(a, a)                    # after the block: not added to it
    assert [r["calls"] for r in prof.records] == [1]


def test_profiles_do_not_nest():
    a = np.ones((4, 4), np.float32)
    with fastmlp.profile(peak_gflops=PEAK) as outer:
        with pytest.raises(RuntimeError, match="nest"):
            with fastmlp.profile(peak_gflops=PEAK):
                pass
        fastmlp.matmul(a, a)
    assert [r["calls"] for r in outer.records] == [1]
    with fastmlp.profile(peak_gflops=PEAK) as again:     # the failed inner one left no trace
        fastmlp.matmul(a, a)
    assert [r["calls"] for r in again.records] == [1]


def test_table_and_to_dict_hold_the_rows():
    rng = np.random.default_rng(4)
    z, dz = randn(rng, 16, 8), randn(rng, 16, 8)
    with fastmlp.profile(peak_gflops=PEAK) as prof:
        fastmlp.bias_activation(z, None, "tanh")
        fastmlp.bias_grad(dz)
    table = prof.table()
    assert "bias_activation tanh 16x8" in table
    assert "bias_grad 16x8" in table
    assert f"{PEAK:.1f} GFLOP/s" in table
    d = prof.to_dict()
    assert d["isa"] == fastmlp.info()["isa"]
    assert d["peak_gflops"] == PEAK
    assert sorted(r["name"] for r in d["records"]) == ["bias_activation tanh 16x8",
                                                       "bias_grad 16x8"]
    assert d["total_seconds"] == pytest.approx(sum(r["seconds"] for r in d["records"]))


def test_normalization_and_clipping_counted_exactly():
    """The normalization kernels and clip_grad_norm, by the formulas of profiler.py: the
    activation is in the key (one more flop per element), a training batchnorm carries the
    "training" flag, and a clipped gradient costs a second pass."""
    rng = np.random.default_rng(5)
    M, N = 24, 10
    h, dy = randn(rng, M, N), randn(rng, M, N)
    gamma, beta = randn(rng, N), randn(rng, N)
    rm, rv = np.zeros(N, np.float32), np.ones(N, np.float32)
    g = randn(rng, 500)
    with fastmlp.profile(peak_gflops=PEAK) as prof:
        y, mean, rstd = fastmlp.layernorm_forward(h, gamma, beta, activation="relu")
        fastmlp.layernorm_backward(dy, h, gamma, beta, mean, rstd, activation="relu", y=y)
        fastmlp.layernorm_forward(h, gamma, beta)
        y, mean, rstd = fastmlp.batchnorm_forward(h, gamma, beta, running_mean=rm,
                                                  running_var=rv, activation="gelu")
        fastmlp.batchnorm_backward(dy, h, gamma, beta, mean, rstd, activation="gelu")
        fastmlp.batchnorm_forward(h, gamma, beta, training=False, running_mean=rm,
                                  running_var=rv)
        fastmlp.clip_grad_norm(g, 1e9)                  # measured only
        fastmlp.clip_grad_norm(g, 1.0)                  # clipped
    rows = by_key(prof)
    mn = M * N
    expect = {
        ("layernorm_forward", "relu", None, (), M, N, 0): (1, 9 * mn, 4 * (2 * mn + 2 * N + 2 * M)),
        ("layernorm_forward", None, None, (), M, N, 0): (1, 8 * mn, 4 * (2 * mn + 2 * N + 2 * M)),
        ("layernorm_backward", "relu", None, (), M, N, 0):
            (1, 14 * mn, 4 * (4 * mn + 4 * N + 2 * M)),
        ("batchnorm_forward", "gelu", None, ("training",), M, N, 0):
            (1, 9 * mn + 6 * N, 4 * (2 * mn + 8 * N)),
        ("batchnorm_forward", None, None, (), M, N, 0): (1, 4 * mn, 4 * (2 * mn + 6 * N)),
        ("batchnorm_backward", "gelu", None, (), M, N, 0): (1, 10 * mn, 4 * (3 * mn + 6 * N)),
    }
    for key, (calls, flops, nbytes) in expect.items():
        r = rows.pop(key)
        assert (r["calls"], r["flops"], r["bytes"]) == (calls, flops, nbytes), key
    clip = rows.pop(("clip_grad_norm", None, None, (), 0, 500, 0))
    assert (clip["calls"], clip["flops"], clip["bytes"]) == (2, 5 * 500, 4 * 4 * 500)
    assert rows == {}
    names = {r["name"] for r in prof.records}
    assert {"layernorm_forward 24x10 +relu", "batchnorm_forward 24x10 training +gelu",
            "batchnorm_forward 24x10 inference", "clip_grad_norm n=500"} <= names


def test_peak_measured_again_when_a_kernel_beats_it(monkeypatch):
    """A peak measured at a busy moment (here: a probe that reports 1 MFLOP/s) is measured again
    at the end of the profile once a kernel ran faster, and the best measurement is kept, so no
    row shows more than 100%; a peak the caller gave is left alone."""
    from fastmlp.tools import profiler
    measured = iter([1e-3, 1e6])
    monkeypatch.setattr(profiler, "_peaks", {})
    monkeypatch.setattr(profiler, "best_peak", lambda n_threads=None: next(measured))
    rng = np.random.default_rng(0)
    a, w = randn(rng, 64, 256), randn(rng, 256, 64)
    with fastmlp.profile() as prof:
        fastmlp.matmul(a, w)
    assert prof.peak_gflops == 1e6
    assert all(r["percent_of_peak"] <= 100.0 for r in prof.records)
    with fastmlp.profile() as again:                # the kept best: no third measurement
        fastmlp.matmul(a, w)
    assert again.peak_gflops == 1e6
    with fastmlp.profile(peak_gflops=1e-3) as given:
        fastmlp.matmul(a, w)
    assert given.peak_gflops == 1e-3
    assert given.records[0]["percent_of_peak"] > 100.0
