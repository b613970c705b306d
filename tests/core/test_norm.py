"""LayerNorm, BatchNorm (fused with the activation after them) and clip_grad_norm against the
float64 reference, on every ISA path.

The references run on float64 copies of the same float32 inputs (fastmlp.reference), so what is
measured is the kernels' float32 rounding. Backward references take the kernel's own float32 y,
so that relu's mask is the same on both sides (a pre-activation within an ulp of 0 could
otherwise flip it: a difference of the whole gradient, not of rounding).

Tolerances (u = 2**-24; K the number of terms of a statistic: N for LayerNorm, M for BatchNorm):
componentwise bounds in the style of fastmlp.testing.gemm_error_bound, from the classical error
bound (K - 1) u sum|x| of a K-term float32 sum, with a factor of 2 of slack. They are built up
along the kernels' arithmetic (see _forward_bound, _backward_bound):
  * the mean: K u mean|h|; the variance, a sum of K squares of deviations: relative (K + 2) u,
    hence rstd relative (K/2 + 2) u; Hn = (h - mean) rstd: K u mean|h| rstd + (K/2 + 4) u |Hn|;
  * z = gamma Hn + beta: |gamma| err(Hn) + 2 u (|gamma Hn| + |beta|); y = act(z): the
    activation's Lipschitz constant (<= 1.13, gelu) times err(z), plus the elementwise kernels'
    own rtol 1e-6 / atol 1e-7 (fastmlp.testing.ELEMENTWISE_*);
  * g = dy act'(.): rtol 1e-6 with atol 1e-7 max|dy| (test_ops' activation_backward tolerance),
    and for gelu |dy| err(z) (|gelu''| < 1: act' is recomputed from the kernel's z);
  * dgamma, dbeta: column sums of M terms, M u sum|terms| plus the sum of the terms' errors;
  * dH: the errors of its terms (g or g gamma, the two means, Hn) and of rstd, propagated.
This keeps each element's tolerance proportional to its own magnitudes: it does not hide a wrong
element among large ones, nor fail on the cancellation in dH's difference.
clip_grad_norm: the norm is summed in double from exact squares: rtol 1e-12 against
numpy.linalg.norm in float64 (n 2**-53 relative for the sums, n <= 10**6); the scaling is checked
bitwise against g * float32(max_norm / (norm + 1e-6)) computed from the returned norm.
Determinism across thread counts (fastmlp.h rule 4): bitwise.
"""
import numpy as np
import pytest

import fastmlp
from fastmlp import reference as ref
from fastmlp.testing import (
    ELEMENTWISE_ATOL as ATOL,
    ELEMENTWISE_RTOL as RTOL,
    FLOAT32_UNIT_ROUNDOFF as U,
    assert_bitwise_equal,
    assert_close,
)

from conftest import bitwise_across_threads, f32, f64

ACTS = fastmlp.ACTIVATIONS
SLOPE = 0.05
VLEN = {"generic": 4, "avx2": 8, "avx512": 16, "neon": 4}
# N as a function of VLEN: one lane, a partial vector, a full one, one past it, several and a tail
N_SPECS = {"1": lambda v: 1, "V-1": lambda v: v - 1, "V": lambda v: v, "V+1": lambda v: v + 1,
           "3V+5": lambda v: 3 * v + 5}
MS = [1, 2, 7, 300]
NEEDS_Y = ("relu", "leaky_relu", "tanh", "logistic")
KINDS = ("layernorm", "batchnorm")


def _inputs(rng, m, n, offset=3.0):
    """h with a mean well away from 0 (offset) against its spread, as a linear layer's output
    can be: the case a one-pass variance gets wrong."""
    h = f32(rng.standard_normal((m, n)) * rng.uniform(0.5, 2.0, n) + offset)
    gamma = f32(rng.uniform(0.5, 1.5, n) * rng.choice([-1, 1], n))
    beta = f32(rng.standard_normal(n) * 0.5)
    return h, gamma, beta


def _fwd(kind, *args, **kw):
    return getattr(fastmlp, f"{kind}_forward")(*args, **kw)


def _bwd(kind, *args, **kw):
    return getattr(fastmlp, f"{kind}_backward")(*args, **kw)


def _ref(kind, direction):
    return getattr(ref, f"{kind}_{direction}")


def _axis(kind):
    """The axis a statistic runs along: 1 (a row's features) for LayerNorm, 0 (a column's batch)
    for BatchNorm."""
    return 1 if kind == "layernorm" else 0


def _bcast(stat, kind):
    return stat[:, None] if kind == "layernorm" else stat


def _hn_bound(kind, h, mean, rstd):
    """Bound of the kernel's Hn = (h - mean) rstd (module docstring), and the reference Hn."""
    ax = _axis(kind)
    k = h.shape[ax]
    hn = (h - _bcast(mean, kind)) * _bcast(rstd, kind)
    mean_abs = np.abs(h).mean(axis=ax)
    err = k * U * _bcast(mean_abs * rstd, kind) + (k / 2 + 4) * U * np.abs(hn)
    return 2 * err, hn


def _forward_bound(kind, h, gamma, beta, y_ref, mean, rstd):
    err_hn, hn = _hn_bound(kind, h, mean, rstd)
    err_z = np.abs(gamma) * err_hn + 2 * U * (np.abs(gamma * hn) + np.abs(beta))
    return 1.2 * err_z + RTOL * np.abs(y_ref) + ATOL, err_z


def _backward_bound(kind, act, dy, h, gamma, beta, mean, rstd, dh_ref):
    """Bounds of (dh, dgamma, dbeta) from the reference's float64 values (module docstring)."""
    m = h.shape[0]
    ax = _axis(kind)
    k = h.shape[ax]
    err_hn, hn = _hn_bound(kind, h, mean, rstd)
    err_z = np.abs(gamma) * err_hn + 2 * U * (np.abs(gamma * hn) + np.abs(beta))
    g, _ = ref._norm_grad(dy, h, gamma, beta, mean, rstd, act,
                          ref.activation_forward(gamma * hn + beta, act, SLOPE), SLOPE, ax)
    err_g = RTOL * np.abs(g) + ATOL * (np.abs(dy).max() if dy.size else 0.0)
    if act == "gelu":
        err_g = err_g + np.abs(dy) * err_z
    # the parameter gradients: column sums of M terms
    err_db = m * U * np.abs(g).sum(0) + err_g.sum(0)
    err_dg = m * U * np.abs(g * hn).sum(0) + (err_g * np.abs(hn) + np.abs(g) * err_hn).sum(0)
    rel_rstd = (k / 2 + 2) * U
    if kind == "layernorm":
        gh = g * gamma
        err_gh = np.abs(gamma) * err_g + U * np.abs(gh)
        scale = rstd[:, None]
    else:
        gh, err_gh = g, err_g
        scale = np.abs(gamma) * rstd
    a = gh.mean(axis=ax, keepdims=True)
    c = (gh * hn).mean(axis=ax, keepdims=True)
    err_a = k * U * np.abs(gh).mean(axis=ax, keepdims=True) + err_gh.mean(axis=ax, keepdims=True)
    err_c = (k * U * np.abs(gh * hn).mean(axis=ax, keepdims=True)
             + (err_gh * np.abs(hn) + np.abs(gh) * err_hn).mean(axis=ax, keepdims=True))
    err_t = (err_gh + err_a + np.abs(hn) * err_c + np.abs(c) * err_hn
             + 3 * U * (np.abs(gh) + np.abs(a) + np.abs(hn * c)))
    err_dh = scale * err_t + np.abs(dh_ref) * (rel_rstd + 2 * U)
    return 2 * err_dh, 2 * err_dg, 2 * err_db


def _forward_kw(kind, n, training=True):
    if kind == "layernorm":
        return {}
    return dict(training=training, running_mean=np.zeros(n, np.float32),
                running_var=np.ones(n, np.float32))


# --------------------------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("nspec", N_SPECS)
@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("kind", KINDS)
def test_forward(isa, rng, kind, act, m, nspec):
    n = N_SPECS[nspec](VLEN[isa])
    h, gamma, beta = _inputs(rng, m, n)
    y, mean, rstd = _fwd(kind, h, gamma, beta, eps=1e-5, activation=act, negative_slope=SLOPE)
    stats = m if kind == "layernorm" else n
    assert y.shape == (m, n) and y.dtype == np.float32
    assert mean.shape == rstd.shape == (stats,) and mean.dtype == rstd.dtype == np.float32
    y64, mean64, rstd64 = _ref(kind, "forward")(f64(h), f64(gamma), f64(beta), eps=1e-5,
                                                activation=act, negative_slope=SLOPE)
    bound, _ = _forward_bound(kind, f64(h), f64(gamma), f64(beta), y64, mean64, rstd64)
    assert_close(y, y64, bound=bound, name="y")
    ax = _axis(kind)
    assert_close(mean, mean64, bound=2 * h.shape[ax] * U * np.abs(f64(h)).mean(axis=ax),
                 name="mean")
    # rstd: relative (K/2 + 2) u from the variance, plus the mean's error squared (relative to
    # the variance it biases), with slack 2
    assert_close(rstd, rstd64, rtol=2 * (h.shape[ax] / 2 + 4) * U, name="rstd")
    # in place, and into a given out: the same bits
    hh = h.copy()
    y2, _, _ = _fwd(kind, hh, gamma, beta, eps=1e-5, activation=act, negative_slope=SLOPE,
                    out=hh)
    assert y2 is hh
    assert_bitwise_equal(hh, y)
    out = np.full((m, n), np.nan, np.float32)
    assert _fwd(kind, h, gamma, beta, eps=1e-5, activation=act, negative_slope=SLOPE,
                out=out)[0] is out
    assert_bitwise_equal(out, y)


@pytest.mark.parametrize("kind", KINDS)
def test_forward_large_mean(isa, rng, kind):
    """|mean| / std = 1e3: the two-pass variance keeps it (E[h^2] - E[h]^2 in float32 would lose
    every digit); the bound grows with |mean| / std as the rounding of h itself does."""
    h, gamma, beta = _inputs(rng, 64, 37, offset=1e3)
    y, mean, rstd = _fwd(kind, h, gamma, beta)
    y64, mean64, rstd64 = _ref(kind, "forward")(f64(h), f64(gamma), f64(beta))
    bound, _ = _forward_bound(kind, f64(h), f64(gamma), f64(beta), y64, mean64, rstd64)
    assert_close(y, y64, bound=bound)
    assert_close(rstd, rstd64, rtol=1e-3)


def test_layernorm_activation_is_fused_bias_activation(isa, rng):
    """Fused y = act(norm) has the bits of the norm alone followed by bias_activation: the same
    vector activation code (simd.h)."""
    h, gamma, beta = _inputs(rng, 9, 3 * VLEN[isa] + 5)
    for kind in KINDS:
        for act in ACTS:
            fused = _fwd(kind, h, gamma, beta, activation=act, negative_slope=SLOPE)[0]
            plain = _fwd(kind, h, gamma, beta)[0]
            assert_bitwise_equal(fused, fastmlp.bias_activation(plain, None, act,
                                                                negative_slope=SLOPE))


# --------------------------------------------------------------------------------------------
# backward
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("nspec", N_SPECS)
@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("kind", KINDS)
def test_backward(isa, rng, kind, act, m, nspec):
    n = N_SPECS[nspec](VLEN[isa])
    h, gamma, beta = _inputs(rng, m, n)
    dy = f32(rng.standard_normal((m, n)))
    y, mean, rstd = _fwd(kind, h, gamma, beta, activation=act, negative_slope=SLOPE)
    dh, dgamma, dbeta = _bwd(kind, dy, h, gamma, beta, mean, rstd, activation=act, y=y,
                             negative_slope=SLOPE)
    assert dh.shape == (m, n) and dgamma.shape == dbeta.shape == (n,)
    assert dh.dtype == dgamma.dtype == dbeta.dtype == np.float32
    # the reference with float64 statistics and the kernel's y (module docstring)
    _, mean64, rstd64 = _ref(kind, "forward")(f64(h), f64(gamma), f64(beta))
    dh64, dg64, db64 = _ref(kind, "backward")(f64(dy), f64(h), f64(gamma), f64(beta), mean64,
                                              rstd64, activation=act, y=f64(y),
                                              negative_slope=SLOPE)
    b_dh, b_dg, b_db = _backward_bound(kind, act, f64(dy), f64(h), f64(gamma), f64(beta),
                                       mean64, rstd64, dh64)
    assert_close(dh, dh64, bound=b_dh, name="dh")
    assert_close(dgamma, dg64, bound=b_dg, name="dgamma")
    assert_close(dbeta, db64, bound=b_db, name="dbeta")
    # dh written over dy (in place) and into a given out: the same bits
    dd = dy.copy()
    res = _bwd(kind, dd, h, gamma, beta, mean, rstd, activation=act, y=y, negative_slope=SLOPE,
               out=dd)
    assert res[0] is dd
    for got, want in zip(res, (dh, dgamma, dbeta)):
        assert_bitwise_equal(got, want)


@pytest.mark.parametrize("kind", KINDS)
def test_backward_y_only_where_needed(isa, rng, kind):
    h, gamma, beta = _inputs(rng, 5, 11)
    dy = f32(rng.standard_normal((5, 11)))
    for act in ACTS:
        y, mean, rstd = _fwd(kind, h, gamma, beta, activation=act)
        if act in NEEDS_Y:
            with pytest.raises(ValueError, match="needs y"):
                _bwd(kind, dy, h, gamma, beta, mean, rstd, activation=act)
        else:  # identity and gelu do not read y
            assert_bitwise_equal(
                _bwd(kind, dy, h, gamma, beta, mean, rstd, activation=act)[0],
                _bwd(kind, dy, h, gamma, beta, mean, rstd, activation=act, y=y)[0])


def test_fused_backward_equals_unfused(isa, rng):
    """Backward with act fused: the bits of activation_backward followed by the identity norm
    backward, for the activations computed from y (the same vector code for g)."""
    h, gamma, beta = _inputs(rng, 13, 2 * VLEN[isa] + 3)
    dy = f32(rng.standard_normal(h.shape))
    for kind in KINDS:
        for act in NEEDS_Y:
            y, mean, rstd = _fwd(kind, h, gamma, beta, activation=act, negative_slope=SLOPE)
            fused = _bwd(kind, dy, h, gamma, beta, mean, rstd, activation=act, y=y,
                         negative_slope=SLOPE)
            g = fastmlp.activation_backward(dy, act, y=y, negative_slope=SLOPE)
            unfused = _bwd(kind, g, h, gamma, beta, mean, rstd)
            for a, b in zip(fused, unfused):
                assert_bitwise_equal(a, b)


# --------------------------------------------------------------------------------------------
# BatchNorm: running statistics and inference
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("m", [1, 2, 7, 300])
@pytest.mark.parametrize("momentum", [0.0, 0.1, 0.5, 1.0])
def test_batchnorm_running_statistics(isa, rng, m, momentum):
    """PyTorch's BatchNorm1d convention: running = (1 - momentum) running + momentum batch, the
    batch variance unbiased (M / (M - 1)), biased for M == 1 (where PyTorch refuses to train).
    The hand formula runs in float32 as the kernel documents it (coefficients rounded once from
    double; the unbiasing factor too), on the kernel's own batch statistics: the update is then
    the same few float32 operations, so rtol 1e-6 (a few ulps) holds."""
    n = 3 * VLEN[isa] + 5
    h, gamma, beta = _inputs(rng, m, n)
    rm0 = f32(rng.standard_normal(n))
    rv0 = f32(rng.uniform(0.5, 2.0, n))
    rm, rv = rm0.copy(), rv0.copy()
    _, mean, rstd = fastmlp.batchnorm_forward(h, gamma, beta, eps=1e-5, momentum=momentum,
                                              running_mean=rm, running_var=rv)
    var = f64(h).var(axis=0)
    unbias = m / (m - 1) if m > 1 else 1.0
    # float64 hand formula against the float64 batch variance: the kernel's variance is within
    # its bound (relative (M + 2) u, slack 2), the update adds a few roundings
    want_rm = (1 - momentum) * f64(rm0) + momentum * f64(h).mean(axis=0)
    want_rv = (1 - momentum) * f64(rv0) + momentum * var * unbias
    assert_close(rm, want_rm, rtol=RTOL, atol=momentum * 2 * m * U * np.abs(f64(h)).mean(0))
    assert_close(rv, want_rv, rtol=2 * (m + 4) * U + RTOL)
    # the reference twin updates its own copies the same way
    rm64, rv64 = f64(rm0), f64(rv0)
    ref.batchnorm_forward(f64(h), f64(gamma), f64(beta), momentum=momentum, running_mean=rm64,
                          running_var=rv64)
    assert_close(rv, rv64, rtol=2 * (m + 4) * U + RTOL)
    # no running statistics: the same y, mean and rstd
    y_none = fastmlp.batchnorm_forward(h, gamma, beta, eps=1e-5, momentum=momentum)
    assert_bitwise_equal(y_none[1], mean)
    assert_bitwise_equal(y_none[2], rstd)


def test_batchnorm_running_statistics_as_torch_documents(isa):
    """A hand-made batch whose statistics are exact in float32: the running values are those
    torch.nn.BatchNorm1d(momentum=0.25) reaches (computed by its documented formula)."""
    h = np.array([[1, 2], [3, 6], [5, 10], [7, 14]], np.float32)     # mean (4, 8)
    rm, rv = np.zeros(2, np.float32), np.ones(2, np.float32)
    for _ in range(2):
        fastmlp.batchnorm_forward(h, np.ones(2, np.float32), np.zeros(2, np.float32),
                                  momentum=0.25, running_mean=rm, running_var=rv)
    # biased var (5, 20), unbiased (20/3, 80/3); two steps from (0, 1)
    assert_close(rm, [4 * (1 - 0.75**2), 8 * (1 - 0.75**2)], rtol=1e-6)
    assert_close(rv, [0.75**2 + 20 / 3 * (1 - 0.75**2), 0.75**2 + 80 / 3 * (1 - 0.75**2)],
                 rtol=1e-6)


@pytest.mark.parametrize("m", [0, 1, 7, 300])
@pytest.mark.parametrize("act", ACTS)
def test_batchnorm_inference(isa, rng, act, m):
    """training=False: the running statistics, only read; mean and rstd are them (rstd in double
    from running_var, rounded once: bitwise 1 / sqrt(var + eps)). M = 0 gives them too."""
    n = 2 * VLEN[isa] + 1
    h, gamma, beta = _inputs(rng, m, n)
    rm = f32(rng.standard_normal(n) + 3)
    rv = f32(rng.uniform(0.5, 4.0, n))
    rm0, rv0 = rm.copy(), rv.copy()
    y, mean, rstd = fastmlp.batchnorm_forward(h, gamma, beta, eps=1e-3, training=False,
                                              running_mean=rm, running_var=rv, activation=act,
                                              negative_slope=SLOPE)
    assert_bitwise_equal(rm, rm0)
    assert_bitwise_equal(rv, rv0)
    assert_bitwise_equal(mean, rm)
    assert_bitwise_equal(rstd, f32(1.0 / np.sqrt(f64(rv) + 1e-3)))
    y64, _, rstd64 = ref.batchnorm_forward(f64(h), f64(gamma), f64(beta), eps=1e-3,
                                           training=False, running_mean=f64(rm),
                                           running_var=f64(rv), activation=act,
                                           negative_slope=SLOPE)
    # no statistics to sum: Hn is a subtraction and a multiplication (2 u relative to its terms)
    hn = (f64(h) - f64(rm)) * f64(rstd)
    err_z = 2 * U * (np.abs(f64(gamma)) * (np.abs(f64(h)) + np.abs(f64(rm))) * f64(rstd)
                     + np.abs(f64(gamma) * hn) + np.abs(f64(beta)))
    assert_close(y, y64, bound=2 * (1.2 * err_z + RTOL * np.abs(y64) + ATOL))
    # read-only running statistics are fine for inference
    rm.flags.writeable = rv.flags.writeable = False
    assert_bitwise_equal(fastmlp.batchnorm_forward(h, gamma, beta, eps=1e-3, training=False,
                                                   running_mean=rm, running_var=rv,
                                                   activation=act, negative_slope=SLOPE)[0], y)


def test_batchnorm_training_needs_rows_and_inference_needs_stats():
    z = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="at least one row"):
        fastmlp.batchnorm_forward(np.zeros((0, 3), np.float32), z, z)
    with pytest.raises(ValueError, match="running_mean and running_var"):
        fastmlp.batchnorm_forward(np.zeros((2, 3), np.float32), z, z, training=False)
    with pytest.raises(ValueError, match="running_var"):
        fastmlp.batchnorm_forward(np.zeros((2, 3), np.float32), z, z, running_mean=z.copy())


# --------------------------------------------------------------------------------------------
# NaN propagation, zero sizes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("act", ACTS)
def test_nan_propagates(isa, rng, act):
    """A NaN in h spoils its statistic's row (LayerNorm) or column (BatchNorm) and nothing else;
    a NaN in dy survives relu's zero mask (rule 6) into dh's row / column and the parameter
    gradients of its column."""
    m, n = 7, 2 * VLEN[isa] + 3
    h, gamma, beta = _inputs(rng, m, n)
    dy = f32(rng.standard_normal((m, n)))
    h[2, 5] = np.nan
    for kind in KINDS:
        y, mean, rstd = _fwd(kind, h, gamma, beta, activation=act, negative_slope=SLOPE)
        nan = np.zeros((m, n), bool)
        if kind == "layernorm":
            nan[2] = True
            assert_bitwise_equal(np.isnan(mean), np.arange(m) == 2)
        else:
            nan[:, 5] = True
            assert_bitwise_equal(np.isnan(mean), np.arange(n) == 5)
        assert_bitwise_equal(np.isnan(y), nan)
        assert_bitwise_equal(np.isnan(rstd), np.isnan(mean))
    hc, _, _ = _inputs(rng, m, n)
    hc[0] = -100 * np.abs(hc[0])   # pre-activations of both signs; the NaN sits on a negative one
    dy[3, 4] = np.nan
    for kind in KINDS:
        y, mean, rstd = _fwd(kind, hc, gamma, beta, activation=act, negative_slope=SLOPE)
        dh, dg, db = _bwd(kind, dy, hc, gamma, beta, mean, rstd, activation=act, y=y,
                          negative_slope=SLOPE)
        nan = np.zeros((m, n), bool)
        if kind == "layernorm":
            nan[3] = True
        else:
            nan[:, 4] = True
        assert_bitwise_equal(np.isnan(dh), nan)
        assert_bitwise_equal(np.isnan(dg), np.arange(n) == 4)
        assert_bitwise_equal(np.isnan(db), np.arange(n) == 4)


@pytest.mark.parametrize("m,n", [(0, 5), (5, 0), (0, 0)])
@pytest.mark.parametrize("kind", KINDS)
def test_empty(isa, kind, m, n):
    h = np.zeros((m, n), np.float32)
    p = np.ones(n, np.float32)
    if kind == "batchnorm" and m == 0:
        kw = dict(training=False, running_mean=np.zeros(n, np.float32),
                  running_var=np.ones(n, np.float32))
    else:
        kw = {}
    y, mean, rstd = _fwd(kind, h, p, p, **kw)
    assert y.shape == (m, n)
    if kind == "layernorm":
        assert mean.shape == rstd.shape == (m,)
        assert np.isnan(mean).all() and np.isnan(rstd).all()   # the mean of no features
    else:
        assert_close(rstd, np.full(n, 1 / np.sqrt(1 + 1e-5)), rtol=1e-7)
    stats = np.zeros(m if kind == "layernorm" else n, np.float32)
    dh, dg, db = _bwd(kind, h, h, p, p, stats, stats, activation="gelu")
    assert dh.shape == (m, n)
    assert_bitwise_equal(dg, np.zeros(n, np.float32))   # sums of no rows
    assert_bitwise_equal(db, np.zeros(n, np.float32))


# --------------------------------------------------------------------------------------------
# determinism
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2000, "3V+5"), (97, 1029)], ids=str)
@pytest.mark.parametrize("act", ["relu", "gelu"])
@pytest.mark.parametrize("kind", KINDS)
def test_threads_bitwise(isa, kind, act, shape):
    """Bitwise the same for 1, 2, 3 and 7 threads (conftest.THREAD_COUNTS): shapes large enough
    (M N > 3 x 32768, ops_impl.h's MIN_PER_THREAD) for three threads to start; 97 rows do not
    divide among them evenly."""
    m, n = shape[0], N_SPECS[shape[1]](VLEN[isa]) if isinstance(shape[1], str) else shape[1]
    rng = np.random.default_rng(11)
    h, gamma, beta = _inputs(rng, m, n)
    dy = f32(rng.standard_normal((m, n)))
    kw = _forward_kw(kind, n)

    def run():
        rs = {k: v.copy() for k, v in kw.items() if k.startswith("running")}
        y, mean, rstd = _fwd(kind, h, gamma, beta, activation=act, **{**kw, **rs})
        back = _bwd(kind, dy, h, gamma, beta, mean, rstd, activation=act, y=y)
        return (y, mean, rstd, *back, *rs.values())

    bitwise_across_threads(run)


# --------------------------------------------------------------------------------------------
# clip_grad_norm
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 3, 17, 255, 256, 257, 1000, 4099, 100_003])
def test_clip_grad_norm(isa, rng, n):
    g = f32(rng.standard_normal(n) * 3)
    g0 = g.copy()
    want = np.linalg.norm(f64(g))
    norm = fastmlp.clip_grad_norm(g, 2 * want)        # below max_norm: measured only
    assert isinstance(norm, float)
    assert_close(norm, want, rtol=1e-12)
    assert_bitwise_equal(g, g0)
    norm = fastmlp.clip_grad_norm(g, want / 4)         # clipped: g * float32(max / (norm + 1e-6))
    assert_close(norm, want, rtol=1e-12)
    assert_bitwise_equal(g, g0 * np.float32(want / 4 / (norm + 1e-6)))
    assert_close(np.linalg.norm(f64(g)), want / 4, rtol=1e-6)
    # the twin gives the same bits when its norm rounds to the same factor
    g2 = g0.copy()
    ref_norm = ref.clip_grad_norm(g2, want / 4)
    if np.float32(want / 4 / (ref_norm + 1e-6)) == np.float32(want / 4 / (norm + 1e-6)):
        assert_bitwise_equal(g, g2)


def test_clip_grad_norm_any_shape_and_measure_only(isa, rng):
    g = f32(rng.standard_normal((7, 3, 5)))
    g0 = g.copy()
    for max_norm in (0, 0.0, float("inf"), np.float64("inf")):
        assert_close(fastmlp.clip_grad_norm(g, max_norm), np.linalg.norm(f64(g0)), rtol=1e-12)
        assert_bitwise_equal(g, g0)
    assert fastmlp.clip_grad_norm(np.zeros((0, 4), np.float32), 1.0) == 0.0
    z = np.zeros(9, np.float32)
    assert fastmlp.clip_grad_norm(z, 1.0) == 0.0 and not z.any()


def test_clip_grad_norm_nonfinite(isa):
    g = np.ones(1000, np.float32)
    g[517] = np.nan
    g0 = g.copy()
    assert np.isnan(fastmlp.clip_grad_norm(g, 1.0))
    assert_bitwise_equal(g, g0)                         # NaN norm: g left as it is
    g = np.ones(1000, np.float32)
    g[3] = np.inf
    g2 = g.copy()
    assert fastmlp.clip_grad_norm(g, 1.0) == np.inf == ref.clip_grad_norm(g2, 1.0)
    assert_bitwise_equal(g, g2)                         # inf norm: factor 0, as PyTorch's


def test_clip_grad_norm_threads_bitwise(isa):
    rng = np.random.default_rng(2)
    g0 = f32(rng.standard_normal(1_000_003))

    def run():
        g = g0.copy()
        return np.float64(fastmlp.clip_grad_norm(g, 10.0)), g

    bitwise_across_threads(run)
