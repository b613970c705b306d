"""Elementwise kernels, bias gradient, losses and optimizers against float64 references, per ISA.

References run on float64 copies of the same float32 inputs (fastmlp.reference, or a more
precise float64 formula where the reference itself would lose digits), so what is measured is
the kernel's float32 rounding. Tolerances, u = 2**-24 (float32 unit roundoff):

* bias_activation: rtol 1e-6, atol 1e-7 (fastmlp.testing.ELEMENTWISE_*): the bias add is one
  rounding and the vector exp / tanh / logistic are accurate to a few ulps; 1e-6 is ~17 ulps.
* activation_backward: rtol 1e-6 and atol 1e-7 * max|dy|: the derivative factor is computed in
  float32 with an absolute error of a few ulps of its O(1) terms, so near a zero of act' (gelu'
  at z ~ -0.75) the error is absolute, proportional to |dy|.
* bias_grad: the GEMM-form bound of an M-term sum, 2 M u sum_i |dz_ij| per column.
* Losses, value: rtol 1e-6 against float64. The kernel forms each row's terms in float32 (a few
  ulps each, relative to the term, all terms of one sign once the log-sum-exp is formed) and sums
  rows in double, so the relative error is a few ulps times a small count (~N/VLEN lanes for the
  softmax normaliser): well under 1e-6 for N <= 1000.
* Losses, gradient: each entry is w_i (q - t) / M with q a probability (or p - t for mse) in
  [0, 1]: q is accurate to a few ulps relative; q - t is either formed without cancellation
  (softmax: 1 - p_y as the sum of the others) or, for soft targets, as (1-t) s - t (1-s) whose two
  products are each <= 1, an absolute error ~2u; scaling by w_i / M (two roundings) adds relative
  error. Hence atol = 4 u max|w| / M (/ N for mse), rtol 1e-5 for the relative part.
* Optimizers: rtol 1e-6, atol 1e-7 for param and state after 1 and after 5 steps: each step is a
  handful of float32 operations per element (hyperparameters are rounded once to float32, ~u),
  and the updates are contractive, so 5 steps stay within a few tens of ulps.
* Determinism across thread counts (fastmlp.h rule 4): bitwise.
"""
import zlib

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
    gemm_error_bound,
)

from conftest import bitwise_across_threads, f32, f64

ACTS = fastmlp.ACTIVATIONS
SLOPE = 0.05
SHAPES = [(1, 1), (3, 17), (37, 53), (64, 33), (5, 4)]


# --------------------------------------------------------------------------------------------
# bias_activation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("use_bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_bias_activation(isa, rng, act, use_bias, shape):
    z = f32(rng.uniform(-6, 6, shape))
    bias = f32(rng.uniform(-2, 2, shape[1])) if use_bias else None
    got = fastmlp.bias_activation(z, bias, act, negative_slope=SLOPE)
    assert got.shape == shape and got.dtype == np.float32
    expected = ref.bias_activation(f64(z), None if bias is None else f64(bias), act,
                                   negative_slope=SLOPE)
    assert_close(got, expected, rtol=RTOL, atol=ATOL)
    # in place: the same bits
    zz = z.copy()
    res = fastmlp.bias_activation(zz, bias, act, negative_slope=SLOPE, out=zz)
    assert res is zz
    assert_bitwise_equal(zz, got)
    # a given out
    out = np.full(shape, np.nan, np.float32)
    assert fastmlp.bias_activation(z, bias, act, negative_slope=SLOPE, out=out) is out
    assert_bitwise_equal(out, got)


def test_bias_activation_none_is_identity(isa, rng):
    z = f32(rng.standard_normal((4, 9)))
    b = f32(rng.standard_normal(9))
    assert_bitwise_equal(fastmlp.bias_activation(z, b, None),
                         fastmlp.bias_activation(z, b, "identity"))
    assert_bitwise_equal(fastmlp.bias_activation(z), z)


@pytest.mark.parametrize("act", ACTS)
def test_bias_activation_nan_propagates(isa, act):
    z = np.zeros((3, 21), np.float32)
    z[0, ::2] = np.nan
    z[1] = -1e4  # saturated region: NaN must still win where present
    z[1, 5] = np.nan
    bias = np.zeros(21, np.float32)
    bias[20] = np.nan
    got = fastmlp.bias_activation(z, bias, act, negative_slope=SLOPE)
    expected_nan = np.isnan(z) | np.isnan(bias)
    assert_bitwise_equal(np.isnan(got), expected_nan)


EXTREMES = np.array([1e4, -1e4, 100.0, -100.0, 88.0, -88.0, 30.0, -30.0, 10.0, -10.0, 9.5,
                     -9.5, 1e-40, -1e-40, 1.4e-45, -1.4e-45, 1.2e-38, -1.2e-38, 0.0, -0.0,
                     1e-8, -1e-8, 3e38, -3e38], dtype=np.float32)


@pytest.mark.parametrize("act", ACTS)
def test_bias_activation_extreme_inputs(isa, act):
    z = np.tile(EXTREMES, (3, 1))
    with np.errstate(over="ignore", invalid="ignore"):
        got = fastmlp.bias_activation(z, None, act, negative_slope=SLOPE)
        expected = ref.activation_forward(f64(z), act, SLOPE)
    assert np.isfinite(got).all()
    assert_close(got, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("act", ACTS)
def test_bias_activation_infinities(isa, act):
    """act(+-inf) where the limit is defined and the formula gives it; gelu(-inf) is skipped
    (x * sigmoid(2u) is -inf * 0: NaN in the kernel and the reference alike)."""
    z = np.array([[np.inf, -np.inf]], np.float32)
    if act == "gelu":
        z = z[:, :1]
    got = fastmlp.bias_activation(z, None, act, negative_slope=SLOPE)
    expected = {
        "identity": [np.inf, -np.inf], "relu": [np.inf, 0.0], "leaky_relu": [np.inf, -np.inf],
        "tanh": [1.0, -1.0], "logistic": [1.0, 0.0], "gelu": [np.inf],
    }[act]
    assert_close(got, np.array([expected]))


@pytest.mark.parametrize("m,n", [(0, 5), (5, 0), (0, 0)])
def test_bias_activation_empty(isa, m, n):
    got = fastmlp.bias_activation(np.zeros((m, n), np.float32), np.zeros(n, np.float32), "tanh")
    assert got.shape == (m, n)
    dz = fastmlp.activation_backward(np.zeros((m, n), np.float32), "gelu",
                                     z=np.zeros((m, n), np.float32))
    assert dz.shape == (m, n)


# --------------------------------------------------------------------------------------------
# activation_backward
# --------------------------------------------------------------------------------------------


def _backward_inputs(rng, act, shape):
    z = f32(rng.uniform(-5, 5, shape))
    z[rng.random(shape) < 0.1] = 0.0
    y = f32(ref.activation_forward(f64(z), act, SLOPE))
    return z, y


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_activation_backward(isa, rng, act, shape):
    z, y = _backward_inputs(rng, act, shape)
    dy = f32(rng.standard_normal(shape) * 3)
    got = fastmlp.activation_backward(dy, act, y=y, z=z, negative_slope=SLOPE)
    expected = ref.activation_backward(f64(dy), act, y=f64(y), z=f64(z), negative_slope=SLOPE)
    assert_close(got, expected, rtol=RTOL, atol=ATOL * np.abs(dy).max())
    # only the operand the activation needs is required
    need = {"gelu": dict(z=z), "identity": {}}.get(act, dict(y=y))
    assert_bitwise_equal(fastmlp.activation_backward(dy, act, negative_slope=SLOPE, **need), got)
    # in place: out=dy
    d = dy.copy()
    assert fastmlp.activation_backward(d, act, negative_slope=SLOPE, out=d, **need) is d
    assert_bitwise_equal(d, got)


@pytest.mark.parametrize("act", ["relu", "leaky_relu", "tanh", "logistic", "gelu"])
def test_activation_backward_nan_in_dy_survives_mask(isa, act):
    """Rule 6: masks multiply, so NaN / inf in dy survive a zero derivative."""
    y = np.zeros((2, 19), np.float32)  # relu' = 0 here
    y[:, 10:] = 1.0  # logistic' = 0 and tanh' = 0 here
    z = np.full((2, 19), -50.0, np.float32)  # gelu'(-50) = 0
    dy = np.ones((2, 19), np.float32)
    dy[0] = np.nan
    dy[1, 3] = np.inf
    got = fastmlp.activation_backward(dy, act, y=y, z=z, negative_slope=SLOPE)
    assert np.isnan(got[0]).all()
    assert not np.isfinite(got[1, 3])
    with np.errstate(invalid="ignore"):
        expected = ref.activation_backward(f64(dy), act, y=f64(y), z=f64(z),
                                           negative_slope=SLOPE)
    assert_close(got, expected, rtol=RTOL, atol=ATOL)


def test_activation_backward_extreme_z_gelu(isa):
    """gelu'(z) for extreme z, +-inf included: 1 for large positive z, 0 for large negative."""
    z = np.tile(EXTREMES, (2, 1))
    dy = np.ones_like(z)
    with np.errstate(over="ignore", invalid="ignore"):
        got = fastmlp.activation_backward(dy, "gelu", z=z)
        expected = ref.activation_backward(f64(dy), "gelu", z=f64(z))
    assert np.isfinite(got).all()
    assert_close(got, expected, rtol=RTOL, atol=ATOL)
    zinf = np.array([[np.inf, -np.inf, np.nan]], np.float32)
    got = fastmlp.activation_backward(np.ones_like(zinf), "gelu", z=zinf)
    assert_close(got, np.array([[1.0, 0.0, np.nan]]))


# --------------------------------------------------------------------------------------------
# Fused (GEMM epilogue) and unfused computations give the same bits
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
def test_fused_forward_equals_unfused(isa, act, ta, tb):
    rng = np.random.default_rng(21)
    m, n, k = 45, 70, 500  # k > KC: the epilogue runs on the last of several K blocks
    a = f32(rng.standard_normal((k, m) if ta else (m, k)) * 0.2)
    b = f32(rng.standard_normal((n, k) if tb else (k, n)) * 0.2)
    bias = f32(rng.standard_normal(n))
    fused = fastmlp.matmul(a, b, trans_a=ta, trans_b=tb, bias=bias, activation=act,
                           negative_slope=SLOPE)
    plain = fastmlp.matmul(a, b, trans_a=ta, trans_b=tb)
    unfused = fastmlp.bias_activation(plain, bias, act, negative_slope=SLOPE)
    assert_bitwise_equal(fused, unfused)
    fused_nb = fastmlp.matmul(a, b, trans_a=ta, trans_b=tb, activation=act, negative_slope=SLOPE)
    assert_bitwise_equal(fused_nb, fastmlp.bias_activation(plain, None, act,
                                                           negative_slope=SLOPE))


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
def test_fused_backward_equals_unfused(isa, act, ta, tb):
    rng = np.random.default_rng(22)
    m, n, k = 45, 70, 500
    a = f32(rng.standard_normal((k, m) if ta else (m, k)) * 0.2)
    b = f32(rng.standard_normal((n, k) if tb else (k, n)) * 0.2)
    z, y = _backward_inputs(rng, act, (m, n))
    fused = fastmlp.matmul(a, b, trans_a=ta, trans_b=tb, grad_activation=act, y=y, z=z,
                           negative_slope=SLOPE)
    plain = fastmlp.matmul(a, b, trans_a=ta, trans_b=tb)
    unfused = fastmlp.activation_backward(plain, act, y=y, z=z, negative_slope=SLOPE)
    assert_bitwise_equal(fused, unfused)


# --------------------------------------------------------------------------------------------
# bias_grad
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("m,n", [(1, 1), (7, 15), (50, 16), (33, 17), (100, 100), (3, 1),
                                 (257, 31), (1000, 5)])
def test_bias_grad(isa, rng, m, n):
    dz = f32(rng.standard_normal((m, n)))
    got = fastmlp.bias_grad(dz)
    assert got.shape == (n,) and got.dtype == np.float32
    bound = gemm_error_bound(dz, np.ones((m, 1)), m, trans_a=True).ravel()  # 2 M u sum|dz|
    assert_close(got, f64(dz).sum(axis=0), bound=bound)
    out = np.full(n, np.nan, np.float32)
    assert fastmlp.bias_grad(dz, out=out) is out
    assert_bitwise_equal(out, got)


def test_bias_grad_is_row_order_sum(isa, rng):
    """Each column is summed in row order (fastmlp.h): a float32 running sum gives the bits."""
    dz = f32(rng.standard_normal((300, 37)) * 10 ** rng.uniform(-3, 3, (300, 37)))
    expected = np.zeros(37, np.float32)
    for row in dz:
        expected = expected + row
    assert_bitwise_equal(fastmlp.bias_grad(dz), expected)


@pytest.mark.parametrize("m,n", [(0, 5), (0, 17), (4, 0), (0, 0)])
def test_bias_grad_empty(isa, m, n):
    got = fastmlp.bias_grad(np.zeros((m, n), np.float32))
    assert_bitwise_equal(got, np.zeros(n, np.float32))
    out = np.full(n, np.nan, np.float32)
    fastmlp.bias_grad(np.zeros((m, n), np.float32), out=out)
    assert_bitwise_equal(out, np.zeros(n, np.float32))


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------


def softmax_xent64(z, labels, w):
    """Float64 softmax cross-entropy, precise also for confident rows: loss_i =
    log1p(sum_{j != y} exp(z_j - z_y)) when z_y is the row's maximum (no 1 + tiny rounding)."""
    z = f64(z)
    m, n = z.shape
    w = np.ones(m) if w is None else f64(w)
    rows = np.arange(m)
    zy = z[rows, labels]
    mx = z.max(axis=1)
    e = np.exp(z - mx[:, None])
    s = e.sum(axis=1)
    with np.errstate(over="ignore"):  # rows whose label is far below the max: unused branch
        others = np.exp(z - zy[:, None])
    others[rows, labels] = 0
    per_row = np.where(zy == mx, np.log1p(others.sum(axis=1)), np.log(s) + mx - zy)
    p = e / s[:, None]
    grad = p.copy()
    # 1 - p_y as the sum of the other classes (s - e_y would cancel for confident rows)
    e_others = e.copy()
    e_others[rows, labels] = 0
    grad[rows, labels] = -e_others.sum(axis=1) / s
    grad *= (w / m)[:, None]
    return float((w * per_row).sum() / m), grad, per_row


def _loss_grad_tol(w, m, n=1):
    wmax = 1.0 if w is None else float(np.abs(w).max())
    return dict(rtol=1e-5, atol=4 * U * wmax / (m * n))


@pytest.mark.parametrize("n", [1, 2, 10, 33, 1000])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_softmax_cross_entropy(isa, rng, n, weighted):
    m = 17
    z = f32(rng.standard_normal((m, n)) * 3)
    labels = rng.integers(0, n, m)
    w = f32(rng.uniform(0.1, 3, m)) if weighted else None
    loss, grad = fastmlp.softmax_cross_entropy(z, labels, w)
    assert isinstance(loss, float)
    assert grad.shape == (m, n) and grad.dtype == np.float32
    eloss, egrad, _ = softmax_xent64(z, labels, w)
    assert_close(loss, eloss, rtol=1e-6)
    assert_close(grad, egrad, **_loss_grad_tol(w, m))
    # the reference module agrees (same definition)
    rloss, _ = ref.softmax_cross_entropy(f64(z), labels, None if w is None else f64(w))
    assert_close(loss, rloss, rtol=1e-6)
    # in place: grad_out = logits
    zz = z.copy()
    loss2, g2 = fastmlp.softmax_cross_entropy(zz, labels, w, grad_out=zz)
    assert g2 is zz and loss2 == loss
    assert_bitwise_equal(zz, grad)


@pytest.mark.parametrize("margin", [17.0, 20.0, 25.0, 40.0, 80.0])
@pytest.mark.parametrize("n", [2, 10, 33])
def test_softmax_cross_entropy_confident(isa, rng, margin, n):
    """p_y within 1e-7 of 1: the loss ~ sum_j exp(z_j - z_y) must keep its relative accuracy
    (and the gradient at the label, -(1 - p_y) w / M, too): the kernel forms it as
    log1p(sum of the others), never as log(1 + tiny).

    The logits are multiples of 1/64 in [-1, 1] and z_y an integer, so every z_j - z_y is exact in
    float32 and the only errors left are the kernel's exp / sum / log1p: rtol 1e-6 on the loss.
    (For arbitrary float32 logits the loss is only as accurate as its conditioning allows: z_j -
    z_y rounds with error u |z_j - z_y|, and d loss / loss = d(z_j - z_y): covered below with
    rtol 1e-6 + 2 u max|z_j - z_y|.)"""
    m = 9
    z = f32(np.round(rng.uniform(-1, 1, (m, n)) * 64) / 64)
    labels = rng.integers(0, n, m)
    z[np.arange(m), labels] = margin + rng.integers(0, 3, m)
    loss, grad = fastmlp.softmax_cross_entropy(z, labels)
    eloss, egrad, per_row = softmax_xent64(z, labels, None)
    assert 0 < eloss < 1e-7 * n
    assert_close(loss, eloss, rtol=1e-6)
    rows = np.arange(m)
    assert_close(grad[rows, labels], egrad[rows, labels], rtol=1e-5)
    assert_close(grad, egrad, rtol=1e-5, atol=1e-45)
    # each row alone (one row per batch) is as precise
    for i in range(3):
        li, _ = fastmlp.softmax_cross_entropy(z[i:i + 1], labels[i:i + 1])
        assert_close(li, per_row[i], rtol=1e-6)
    # arbitrary logits: accurate to the conditioning of z_j - z_y
    z = f32(rng.uniform(-1, 1, (m, n)))
    z[np.arange(m), labels] = margin + f32(rng.uniform(0, 1, m))
    loss, grad = fastmlp.softmax_cross_entropy(z, labels)
    eloss, egrad, _ = softmax_xent64(z, labels, None)
    cond = 2 * U * float(np.abs(z - z[np.arange(m), labels][:, None]).max())
    assert_close(loss, eloss, rtol=1e-6 + cond)
    assert_close(grad[rows, labels], egrad[rows, labels], rtol=1e-5 + cond)


def test_softmax_cross_entropy_extreme_logits(isa, rng):
    m, n = 6, 12
    z = f32(rng.uniform(-1, 1, (m, n)))
    z[:, 0] = 1e4
    z[:, 1] = -1e4
    z[2:4, 5] = 1e4  # ties at the max
    labels = np.array([0, 1, 5, 0, 7, 1])
    loss, grad = fastmlp.softmax_cross_entropy(z, labels)
    assert np.isfinite(loss) and np.isfinite(grad).all()
    eloss, egrad, _ = softmax_xent64(z, labels, None)
    assert_close(loss, eloss, rtol=1e-6)
    assert_close(grad, egrad, **_loss_grad_tol(None, m))


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, np.int16])
def test_softmax_cross_entropy_label_dtypes(isa, rng, dtype):
    z = f32(rng.standard_normal((8, 5)))
    labels = rng.integers(0, 5, 8)
    base = fastmlp.softmax_cross_entropy(z, labels)
    got = fastmlp.softmax_cross_entropy(z, labels.astype(dtype))
    assert got[0] == base[0]
    assert_bitwise_equal(got[1], base[1])
    # non-contiguous labels
    lab2 = np.repeat(labels, 2)[::2]
    assert_bitwise_equal(fastmlp.softmax_cross_entropy(z, lab2)[1], base[1])


def test_softmax_cross_entropy_empty(isa):
    loss, grad = fastmlp.softmax_cross_entropy(np.zeros((0, 4), np.float32),
                                               np.zeros(0, np.int64))
    assert loss == 0.0 and grad.shape == (0, 4)


def sigmoid_xent64(z, t, w):
    z, t = f64(z), f64(t)
    m = z.shape[0]
    w = np.ones(m) if w is None else f64(w)
    per = np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))
    s = np.where(z >= 0, 1 / (1 + np.exp(-np.abs(z))), np.exp(-np.abs(z)) / (1 + np.exp(-np.abs(z))))
    return float((w[:, None] * per).sum() / m), w[:, None] * (s - t) / m


@pytest.mark.parametrize("case", ["binary", "multilabel", "soft", "soft_weighted",
                                  "binary_weighted", "extreme"])
def test_sigmoid_cross_entropy(isa, rng, case):
    m = 23
    n = 1 if case.startswith("binary") else 7
    z = f32(rng.standard_normal((m, n)) * 4)
    if case.startswith("soft"):
        t = f32(rng.uniform(0, 1, (m, n)))
    else:
        t = f32(rng.integers(0, 2, (m, n)))
    if case == "extreme":
        z[0] = 1e4
        z[1] = -1e4
        z[2] = 100
        z[3] = -100
        z[4] = 1e-30
    w = f32(rng.uniform(0.1, 3, m)) if case.endswith("weighted") else None
    loss, grad = fastmlp.sigmoid_cross_entropy(z, t, w)
    eloss, egrad = sigmoid_xent64(z, t, w)
    assert_close(loss, eloss, rtol=1e-6)
    assert_close(grad, egrad, **_loss_grad_tol(w, m))
    rloss, rgrad = ref.sigmoid_cross_entropy(f64(z), f64(t), None if w is None else f64(w))
    assert_close(loss, rloss, rtol=1e-6)
    zz = z.copy()
    loss2, g2 = fastmlp.sigmoid_cross_entropy(zz, t, w, grad_out=zz)
    assert g2 is zz and loss2 == loss
    assert_bitwise_equal(zz, grad)


def test_sigmoid_cross_entropy_empty(isa):
    loss, grad = fastmlp.sigmoid_cross_entropy(np.zeros((0, 3), np.float32),
                                               np.zeros((0, 3), np.float32))
    assert loss == 0.0 and grad.shape == (0, 3)


@pytest.mark.parametrize("shape", [(1, 1), (23, 1), (23, 7), (5, 40)], ids=str)
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_mse_loss(isa, rng, shape, weighted):
    m, n = shape
    p = f32(rng.standard_normal(shape))
    t = f32(rng.standard_normal(shape))
    w = f32(rng.uniform(0.1, 3, m)) if weighted else None
    loss, grad = fastmlp.mse_loss(p, t, w)
    eloss, egrad = ref.mse_loss(f64(p), f64(t), None if w is None else f64(w))
    assert_close(loss, eloss, rtol=1e-6)
    assert_close(grad, egrad, **_loss_grad_tol(w, m, n))
    pp = p.copy()
    loss2, g2 = fastmlp.mse_loss(pp, t, w, grad_out=pp)
    assert g2 is pp and loss2 == loss
    assert_bitwise_equal(pp, grad)


@pytest.mark.parametrize("shape", [(0, 3), (3, 0), (0, 0)])
def test_mse_loss_empty(isa, shape):
    loss, grad = fastmlp.mse_loss(np.zeros(shape, np.float32), np.zeros(shape, np.float32))
    assert loss == 0.0 and grad.shape == shape


@pytest.mark.parametrize("shape", [(1, 1), (23, 1), (23, 7), (5, 40)], ids=str)
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_poisson_loss(isa, rng, shape, weighted):
    m, n = shape
    z = f32(rng.standard_normal(shape) * 2)
    t = f32(rng.poisson(np.exp(f64(z))))
    t[0] = 0.0
    w = f32(rng.uniform(0.1, 3, m)) if weighted else None
    loss, grad = fastmlp.poisson_loss(z, t, w)
    eloss, egrad = ref.poisson_loss(f64(z), f64(t), None if w is None else f64(w))
    assert_close(loss, eloss, rtol=1e-6)
    # exp(z) in float32: a few ulps relative to exp(z), which is <= e^6 here
    wmax = 1.0 if w is None else float(w.max())
    assert_close(grad, egrad, rtol=1e-5, atol=4 * 2.0**-24 * float(np.exp(f64(z)).max()) * wmax / m)
    zz = z.copy()
    loss2, g2 = fastmlp.poisson_loss(zz, t, w, grad_out=zz)
    assert g2 is zz and loss2 == loss
    assert_bitwise_equal(zz, grad)


def test_poisson_loss_edges(isa):
    loss, grad = fastmlp.poisson_loss(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32))
    assert loss == 0.0 and grad.shape == (0, 3)
    # overflow of exp(z) is an infinite loss, never a silent finite one; negative counts NaN
    z = f32([[100.0, 0.0]])
    assert fastmlp.poisson_loss(z, f32([[1.0, 1.0]]))[0] == np.inf
    assert np.isnan(fastmlp.poisson_loss(f32([[0.0]]), f32([[-1.0]]))[0])


# --------------------------------------------------------------------------------------------
# Optimizers
# --------------------------------------------------------------------------------------------

OPTIMIZERS = {
    "sgd": ("sgd", dict(lr=0.1)),
    "sgd_l2": ("sgd", dict(lr=0.1, l2=1e-2)),
    "momentum": ("sgd", dict(lr=0.05, momentum=0.9)),
    "nesterov_l2": ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True, l2=1e-3)),
    "rmsprop": ("rmsprop", dict(lr=1e-3, rho=0.9, eps=1e-8)),
    "rmsprop_l2": ("rmsprop", dict(lr=1e-2, rho=0.99, eps=1e-6, l2=1e-2)),
    "adam": ("adam", dict(lr=1e-3)),
    "adam_l2": ("adam", dict(lr=1e-2, beta1=0.8, beta2=0.99, l2=1e-2)),
    "adamw": ("adam", dict(lr=1e-3, weight_decay=1e-2)),
}


def _run_optimizer(mod, kind, kw, p, states, g, step):
    if kind == "sgd":
        vel = states[0] if kw.get("momentum") else None
        mod.sgd_update(p, g, velocity=vel, **kw)
    elif kind == "rmsprop":
        mod.rmsprop_update(p, g, states[0], **kw)
    else:
        mod.adam_update(p, g, states[0], states[1], step=step, **kw)


def _n_states(kind, kw):
    return {"sgd": 1 if kw.get("momentum") else 0, "rmsprop": 1, "adam": 2}[kind]


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("shape", [(37, 19), (1000,), (3,)], ids=str)
def test_optimizer(isa, name, shape):
    """Five steps with random gradients; after each (so after 1 and after 5), param and state
    match the float64 reference applied to float64 copies of the kernel's own state before the
    step, with rtol 1e-6, atol 1e-7. (Re-synchronising measures each step's rounding: a free
    float64 trajectory drifts from the float32 one by the float32 rounding of the state itself,
    ~ steps u max|param|, which is not an error of the kernel; it is bounded in
    test_optimizer_trajectory.)"""
    kind, kw = OPTIMIZERS[name]
    rng = np.random.default_rng(zlib.crc32(f"{name}{shape}".encode()))
    p = f32(rng.standard_normal(shape))
    ns = _n_states(kind, kw)
    states = [np.zeros(shape, np.float32) for _ in range(ns)]
    if ns and kind == "sgd":
        states[0][...] = f32(rng.standard_normal(shape) * 0.01)  # a running velocity
    for step in range(1, 6):
        g = f32(rng.standard_normal(shape))
        p64 = f64(p).copy()
        states64 = [f64(s).copy() for s in states]
        _run_optimizer(fastmlp, kind, kw, p, states, g, step)
        _run_optimizer(ref, kind, kw, p64, states64, f64(g), step)
        assert_close(p, p64, rtol=RTOL, atol=ATOL, name=f"param at step {step}")
        for i, (s, s64) in enumerate(zip(states, states64)):
            assert_close(s, s64, rtol=RTOL, atol=ATOL, name=f"state {i} at step {step}")
    assert p.dtype == np.float32 and all(s.dtype == np.float32 for s in states)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optimizer_trajectory(isa, name):
    """Five free-running steps against a float64 trajectory: each step rounds param (and state)
    to float32 once more, so the drift is bounded by ~4 u per step times the largest magnitude
    the element went through; atol = 5 * 4 u * max|param| + rtol 1e-6."""
    kind, kw = OPTIMIZERS[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    shape = (500,)
    p = f32(rng.standard_normal(shape))
    states = [np.zeros(shape, np.float32) for _ in range(_n_states(kind, kw))]
    p64 = f64(p).copy()
    states64 = [f64(s).copy() for s in states]
    scale = float(np.abs(p).max())
    for step in range(1, 6):
        g = f32(rng.standard_normal(shape))
        _run_optimizer(fastmlp, kind, kw, p, states, g, step)
        _run_optimizer(ref, kind, kw, p64, states64, f64(g), step)
        scale = max(scale, float(np.abs(p).max()))
    assert_close(p, p64, rtol=RTOL, atol=5 * 4 * U * scale)
    for s, s64 in zip(states, states64):
        assert_close(s, s64, rtol=1e-5, atol=5 * 4 * U * float(np.abs(s64).max()))


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("shape", [(0,), (3, 0)], ids=str)
def test_optimizer_zero_sized(isa, name, shape):
    kind, kw = OPTIMIZERS[name]
    p = np.zeros(shape, np.float32)
    states = [np.zeros(shape, np.float32) for _ in range(_n_states(kind, kw))]
    _run_optimizer(fastmlp, kind, kw, p, states, np.zeros(shape, np.float32), 1)
    assert p.shape == shape and all(s.shape == shape for s in states)


def test_sgd_without_momentum_ignores_velocity(isa, rng):
    p = f32(rng.standard_normal(50))
    g = f32(rng.standard_normal(50))
    p1 = p.copy()
    fastmlp.sgd_update(p1, g, lr=0.1)
    p2 = p.copy()
    vel = np.full(50, 7.0, np.float32)
    fastmlp.sgd_update(p2, g, lr=0.1, velocity=vel)
    assert_bitwise_equal(p1, p2)
    assert (vel == 7.0).all()


# --------------------------------------------------------------------------------------------
# Determinism across thread counts (rule 4), sizes that do use threads (> 64K elements)
# --------------------------------------------------------------------------------------------


def test_threads_losses_and_bias_grad(isa):
    rng = np.random.default_rng(99)
    m, n = 3000, 50  # 150K elements: several threads
    z = f32(rng.standard_normal((m, n)) * 3)
    labels = rng.integers(0, n, m)
    t = f32(rng.uniform(0, 1, (m, n)))
    w = f32(rng.uniform(0.5, 2, m))
    loss, _ = bitwise_across_threads(lambda: fastmlp.softmax_cross_entropy(z, labels, w))
    assert_close(loss, softmax_xent64(z, labels, w)[0], rtol=1e-6)
    bitwise_across_threads(lambda: fastmlp.sigmoid_cross_entropy(z, t, w))
    bitwise_across_threads(lambda: fastmlp.mse_loss(z, t, w))
    bitwise_across_threads(lambda: fastmlp.poisson_loss(z, t, w))
    (db,) = bitwise_across_threads(lambda: (fastmlp.bias_grad(z),))
    assert_close(db, f64(z).sum(axis=0),
                 bound=gemm_error_bound(z, np.ones((m, 1)), m, trans_a=True).ravel())
    bitwise_across_threads(lambda: (fastmlp.bias_activation(z, w[:n], "gelu"),))
    bitwise_across_threads(lambda: (fastmlp.activation_backward(z, "tanh", y=t),))


@pytest.mark.parametrize("name", ["nesterov_l2", "rmsprop_l2", "adamw"])
def test_threads_optimizers(isa, name):
    kind, kw = OPTIMIZERS[name]
    rng = np.random.default_rng(5)
    shape = (200_003,)
    p0 = f32(rng.standard_normal(shape))
    g = f32(rng.standard_normal(shape))
    s0 = [f32(rng.uniform(0, 0.1, shape)) for _ in range(_n_states(kind, kw))]

    def run():
        p = p0.copy()
        states = [s.copy() for s in s0]
        for step in (1, 2):
            _run_optimizer(fastmlp, kind, kw, p, states, g, step)
        return [p] + states

    bitwise_across_threads(run)
