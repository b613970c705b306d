"""Finite-difference and hand-computed checks of the NumPy reference (fastmlp.reference).

The reference is the oracle for every kernel test, so its backward functions are checked here
against central differences of its own forward functions, in float64, with torch.autograd's
gradcheck tolerances.
"""

import warnings

import numpy as np
import pytest

from fastmlp import reference as ref
from fastmlp.testing import assert_bitwise_equal, assert_close, gemm_error_bound

EPS = 1e-6
FD_TOL = dict(atol=1e-5, rtol=1e-3)  # torch.autograd.gradcheck's defaults
ELEMENTWISE_ACTIVATIONS = ref.ACTIVATIONS


def numeric_grad(f, x, eps=EPS):
    """Central-difference gradient of the scalar function f at x (any shape), in float64."""
    x = np.array(x, dtype=np.float64)
    grad = np.empty_like(x)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + eps
        f_plus = f(x)
        x[idx] = old - eps
        f_minus = f(x)
        x[idx] = old
        grad[idx] = (f_plus - f_minus) / (2 * eps)
    return grad


def away_from_kink(rng, shape, scale=2.0):
    """Random values with |x| > 1e-3, so finite differences never straddle relu's kink."""
    x = rng.uniform(-scale, scale, size=shape)
    return np.where(np.abs(x) < 1e-3, 0.5, x)


def backward_inputs(activation, z, negative_slope=0.01):
    """The y / z keyword arguments activation_backward needs for this activation."""
    return dict(y=ref.activation_forward(z, activation, negative_slope), z=z)


# --------------------------------------------------------------------------------------------
# Activations
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ELEMENTWISE_ACTIVATIONS)
def test_activation_backward_matches_finite_differences(activation):
    rng = np.random.default_rng(0)
    z = away_from_kink(rng, (4, 7), scale=3.0)
    dy = rng.standard_normal(z.shape)
    slope = 0.1
    # Elementwise activation: the Jacobian is diagonal, so one vectorized central difference
    # gives every derivative at once.
    f = lambda x: ref.activation_forward(x, activation, negative_slope=slope)  # noqa: E731
    derivative = (f(z + EPS) - f(z - EPS)) / (2 * EPS)
    dz = ref.activation_backward(
        dy, activation, negative_slope=slope, **backward_inputs(activation, z, slope)
    )
    assert_close(dz, dy * derivative, name=f"{activation} backward", **FD_TOL)


@pytest.mark.parametrize("activation", ELEMENTWISE_ACTIVATIONS)
def test_bias_activation_backward_through_sum(activation):
    # Full-Jacobian check of y = act(z + bias): d sum(R * y) / dz = activation_backward(R).
    rng = np.random.default_rng(1)
    z = away_from_kink(rng, (3, 4))
    bias = np.zeros(4)  # keeps z + bias away from the kink, as chosen above
    r = rng.standard_normal(z.shape)
    loss = lambda x: float(np.sum(r * ref.bias_activation(x, bias, activation)))  # noqa: E731
    expected = numeric_grad(loss, z)
    dz = ref.activation_backward(r, activation, **backward_inputs(activation, z))
    assert_close(dz, expected, name=activation, **FD_TOL)


def test_activation_forward_values():
    x = np.array([-2.0, -0.5, 0.0, 0.5, 2.0])
    assert_close(ref.activation_forward(x, "identity"), x)
    assert_close(ref.activation_forward(x, "relu"), [0, 0, 0, 0.5, 2.0])
    assert_close(ref.activation_forward(x, "leaky_relu", 0.2), [-0.4, -0.1, 0, 0.5, 2.0])
    assert_close(ref.activation_forward(x, "tanh"), np.tanh(x), rtol=1e-15)
    assert_close(ref.activation_forward(x, "logistic"), 1 / (1 + np.exp(-x)), rtol=1e-15)
    # The GELU reference is written as x * sigmoid(2u); check it against the textbook form.
    textbook = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    assert_close(ref.activation_forward(x, "gelu"), textbook, rtol=1e-14, atol=1e-16)


def test_bias_activation_adds_bias_and_writes_out():
    rng = np.random.default_rng(2)
    z = rng.standard_normal((3, 5))
    bias = rng.standard_normal(5)
    out = np.full_like(z, np.nan)
    result = ref.bias_activation(z, bias, "tanh", out=out)
    assert result is out
    assert_close(out, np.tanh(z + bias), rtol=1e-15)


def test_extreme_inputs_do_not_warn_or_overflow():
    x = np.array([-1e308, -1e4, -800.0, 0.0, 800.0, 1e4, 1e308])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        logistic = ref.activation_forward(x, "logistic")
        gelu = ref.activation_forward(x, "gelu")
    assert_close(logistic, [0, 0, 0, 0.5, 1, 1, 1])
    assert_close(gelu, [-0.0, -0.0, -0.0, 0, 800, 1e4, 1e308])


@pytest.mark.parametrize("activation", ELEMENTWISE_ACTIVATIONS)
def test_nan_propagates_through_forward(activation):
    x = np.array([np.nan, -1.0, 1.0])
    y = ref.activation_forward(x, activation)
    assert np.isnan(y[0]), f"{activation}(NaN) = {y[0]}"
    assert np.isfinite(y[1:]).all()


def test_backward_mask_is_a_multiplication():
    # A NaN or inf gradient must survive even where relu's mask is 0.
    dy = np.array([np.nan, np.inf, 1.0])
    y = np.array([0.0, 0.0, 0.0])
    with np.errstate(invalid="ignore"):  # inf * 0 is the point of this test
        dz = ref.activation_backward(dy, "relu", y=y)
    assert np.isnan(dz[0]) and np.isnan(dz[1])  # inf * 0 = NaN
    assert dz[2] == 0


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "tanh", "logistic"])
def test_backward_without_y_raises(activation):
    with pytest.raises(ValueError, match="needs y"):
        ref.activation_backward(np.ones(3), activation, z=np.ones(3))


def test_gelu_backward_without_z_raises():
    with pytest.raises(ValueError, match="needs z"):
        ref.activation_backward(np.ones(3), "gelu", y=np.ones(3))


def test_unknown_activation_raises():
    with pytest.raises(ValueError, match="unknown activation"):
        ref.activation_forward(np.ones(3), "softplus")


@pytest.mark.parametrize("activation", ELEMENTWISE_ACTIVATIONS)
def test_float32_stays_float32(activation):
    z = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)
    y = ref.bias_activation(z, np.ones(4, np.float32), activation)
    dz = ref.activation_backward(np.ones_like(z), activation, y=y, z=z)
    assert y.dtype == np.float32 and dz.dtype == np.float32


# --------------------------------------------------------------------------------------------
# Bias gradient
# --------------------------------------------------------------------------------------------


def test_bias_grad_matches_finite_differences():
    rng = np.random.default_rng(3)
    z = rng.standard_normal((6, 4))
    r = rng.standard_normal((6, 4))
    expected = numeric_grad(lambda b: float(np.sum(r * (z + b))), np.zeros(4))
    assert_close(ref.bias_grad(r), expected, **FD_TOL)
    out = np.empty(4)
    assert ref.bias_grad(r, out=out) is out
    assert_close(out, r.sum(axis=0))


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------


def _check_loss_grad(loss_fn, logits, second, sample_weight):
    loss, grad = loss_fn(logits, second, sample_weight)
    assert isinstance(loss, float)
    assert grad.shape == logits.shape
    expected = numeric_grad(lambda z: loss_fn(z, second, sample_weight)[0], logits)
    assert_close(grad, expected, name=loss_fn.__name__, **FD_TOL)


@pytest.mark.parametrize("n", [1, 2, 3, 10])
@pytest.mark.parametrize("weighted", [False, True])
def test_softmax_cross_entropy_grad(n, weighted):
    rng = np.random.default_rng(10 + n)
    m = 5
    logits = 3 * rng.standard_normal((m, n))
    labels = rng.integers(0, n, size=m)
    w = rng.uniform(0.1, 2.0, size=m) if weighted else None
    _check_loss_grad(ref.softmax_cross_entropy, logits, labels, w)


@pytest.mark.parametrize("n", [1, 4])
@pytest.mark.parametrize("weighted", [False, True])
def test_sigmoid_cross_entropy_grad(n, weighted):
    rng = np.random.default_rng(20 + n)
    m = 5
    logits = 3 * rng.standard_normal((m, n))
    targets = rng.uniform(0, 1, size=(m, n))  # soft targets exercise the general formula
    targets[0] = 1.0
    targets[1] = 0.0
    w = rng.uniform(0.1, 2.0, size=m) if weighted else None
    _check_loss_grad(ref.sigmoid_cross_entropy, logits, targets, w)


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("weighted", [False, True])
def test_mse_loss_grad(n, weighted):
    rng = np.random.default_rng(30 + n)
    m = 4
    pred = rng.standard_normal((m, n))
    target = rng.standard_normal((m, n))
    w = rng.uniform(0.1, 2.0, size=m) if weighted else None
    _check_loss_grad(ref.mse_loss, pred, target, w)


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("weighted", [False, True])
def test_poisson_loss_grad(n, weighted):
    rng = np.random.default_rng(35 + n)
    m = 4
    logits = rng.standard_normal((m, n))
    targets = rng.poisson(2.0, size=(m, n)).astype(float)
    targets[0] = 0.0                 # xlogy(0, 0) = 0
    w = rng.uniform(0.1, 2.0, size=m) if weighted else None
    _check_loss_grad(ref.poisson_loss, logits, targets, w)


def test_poisson_loss_is_half_the_deviance():
    # half Poisson deviance of the means mu = exp(z): sum_j mean_i (t log(t / mu) - t + mu)
    rng = np.random.default_rng(36)
    z = rng.standard_normal((6, 2))
    t = rng.poisson(3.0, size=(6, 2)).astype(float)
    t[1, 0] = 0.0
    w = rng.uniform(0.5, 1.5, size=6)
    mu = np.exp(z)
    with np.errstate(divide="ignore", invalid="ignore"):
        term = np.where(t > 0, t * np.log(t / mu), 0.0) - t + mu
    assert_close(ref.poisson_loss(z, t, w)[0], (w[:, None] * term).sum() / 6, rtol=1e-13)
    assert np.isnan(ref.poisson_loss(z, -t - 1)[0])   # negative counts: NaN, as xlogy


def test_loss_values_against_naive_formulas():
    rng = np.random.default_rng(40)
    z = rng.standard_normal((6, 3))
    labels = rng.integers(0, 3, size=6)
    w = rng.uniform(0.5, 1.5, size=6)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    expected = np.mean(w * -np.log(p[np.arange(6), labels]))
    assert_close(ref.softmax_cross_entropy(z, labels, w)[0], expected, rtol=1e-13)

    t = rng.uniform(0, 1, size=(6, 3))
    s = 1 / (1 + np.exp(-z))
    bce = -(t * np.log(s) + (1 - t) * np.log(1 - s)).sum(axis=1)
    assert_close(ref.sigmoid_cross_entropy(z, t, w)[0], np.mean(w * bce), rtol=1e-13)

    # scikit-learn's squared_loss: ((y - p)**2).mean() / 2 (unweighted).
    assert_close(ref.mse_loss(z, t)[0], ((z - t) ** 2).mean() / 2, rtol=1e-13)


def test_losses_are_stable_for_huge_logits():
    z = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss, grad = ref.softmax_cross_entropy(z, np.array([1, 2]))
        bloss, bgrad = ref.sigmoid_cross_entropy(z, np.zeros_like(z))
    # Row 0: label 1 sits 2e4 below the max; row 1: uniform, log 3.
    assert_close(loss, (2e4 + np.log(3)) / 2, rtol=1e-15)
    assert_close(grad, [[0.5, -0.5, 0.0], [1 / 6, 1 / 6, -1 / 3]], rtol=1e-15, atol=1e-300)
    assert_close(bloss, (1e4 + np.log(2)) / 2, rtol=1e-15)
    assert_close(bgrad, [[0.5, 0, 0.25], [0, 0, 0]], atol=1e-300)


@pytest.mark.parametrize(
    "loss_fn", [ref.softmax_cross_entropy, ref.sigmoid_cross_entropy, ref.mse_loss,
                ref.poisson_loss]
)
def test_empty_batch_and_grad_out(loss_fn):
    is_softmax = loss_fn is ref.softmax_cross_entropy
    second = np.zeros(0, dtype=np.int64) if is_softmax else np.zeros((0, 3))
    loss, grad = loss_fn(np.zeros((0, 3)), second)
    assert loss == 0.0 and grad.shape == (0, 3)

    rng = np.random.default_rng(41)
    z = rng.standard_normal((4, 3))
    second = rng.integers(0, 3, size=4) if is_softmax else rng.uniform(size=(4, 3))
    grad_out = np.full_like(z, np.nan)
    loss, grad = loss_fn(z, second, grad_out=grad_out)
    assert grad is grad_out
    assert_close(grad_out, loss_fn(z, second)[1])


def test_softmax_cross_entropy_rejects_out_of_range_labels():
    with pytest.raises(ValueError, match="labels"):
        ref.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="labels"):
        ref.softmax_cross_entropy(np.zeros((2, 3)), np.array([-1, 0]))


def test_losses_keep_float32():
    z = np.linspace(-2, 2, 6, dtype=np.float32).reshape(2, 3)
    w = np.array([1.0, 2.0])  # float64 weights must not promote the float32 computation
    assert ref.softmax_cross_entropy(z, np.array([0, 2]), w)[1].dtype == np.float32
    assert ref.sigmoid_cross_entropy(z, np.zeros((2, 3)), w)[1].dtype == np.float32
    assert ref.mse_loss(z, np.zeros((2, 3)), w)[1].dtype == np.float32


# --------------------------------------------------------------------------------------------
# GEMM
# --------------------------------------------------------------------------------------------


def test_matmul_backward_identities():
    rng = np.random.default_rng(50)
    a = rng.standard_normal((3, 4))
    b = rng.standard_normal((4, 5))
    r = rng.standard_normal((3, 5))
    da = numeric_grad(lambda x: float(np.sum(r * ref.matmul(x, b))), a)
    db = numeric_grad(lambda x: float(np.sum(r * ref.matmul(a, x))), b)
    # The backward products are themselves reference GEMMs with transposed operands.
    assert_close(ref.matmul(r, b, trans_b=True), da, **FD_TOL)
    assert_close(ref.matmul(a, r, trans_a=True), db, **FD_TOL)


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_matmul_trans_alpha_beta(trans_a, trans_b):
    rng = np.random.default_rng(51)
    m, k, n = 3, 4, 5
    a = rng.standard_normal((k, m) if trans_a else (m, k))
    b = rng.standard_normal((n, k) if trans_b else (k, n))
    op_a = a.T if trans_a else a
    op_b = b.T if trans_b else b
    assert_close(ref.matmul(a, b, trans_a=trans_a, trans_b=trans_b), op_a @ op_b)

    c0 = rng.standard_normal((m, n))
    out = c0.copy()
    result = ref.matmul(a, b, trans_a=trans_a, trans_b=trans_b, alpha=0.5, beta=2.0, out=out)
    assert result is out
    assert_close(out, 0.5 * (op_a @ op_b) + 2.0 * c0, rtol=1e-14, atol=1e-14)


def test_matmul_beta_zero_ignores_nan_in_out():
    rng = np.random.default_rng(52)
    a, b = rng.standard_normal((2, 3)), rng.standard_normal((3, 4))
    out = np.full((2, 4), np.nan)
    ref.matmul(a, b, out=out, beta=0.0)
    assert_close(out, a @ b)


def test_matmul_k_zero_applies_beta_and_epilogue():
    out = np.full((2, 3), 4.0)
    bias = np.array([1.0, -10.0, 0.0])
    ref.matmul(np.zeros((2, 0)), np.zeros((0, 3)), beta=0.5, out=out, bias=bias,
               activation="relu")
    assert_close(out, [[3.0, 0.0, 2.0]] * 2)


def test_matmul_forward_epilogue():
    rng = np.random.default_rng(53)
    a, b = rng.standard_normal((4, 3)), rng.standard_normal((3, 5))
    bias = rng.standard_normal(5)
    got = ref.matmul(a, b, bias=bias, activation="leaky_relu", negative_slope=0.2)
    c = a @ b + bias
    assert_close(got, np.where(c > 0, c, 0.2 * c), rtol=1e-15)


def test_matmul_grad_activation():
    rng = np.random.default_rng(54)
    a, b = rng.standard_normal((4, 3)), rng.standard_normal((3, 5))
    y = np.maximum(rng.standard_normal((4, 5)), 0)
    assert_close(ref.matmul(a, b, grad_activation="relu", y=y), (a @ b) * (y > 0))
    z = rng.standard_normal((4, 5))
    assert_close(ref.matmul(a, b, grad_activation="gelu", z=z),
                 ref.activation_backward(a @ b, "gelu", z=z))


def test_matmul_rejects_forward_and_backward_epilogue_together():
    a, b, y = np.ones((2, 2)), np.ones((2, 2)), np.ones((2, 2))
    with pytest.raises(ValueError):
        ref.matmul(a, b, activation="relu", grad_activation="relu", y=y)
    with pytest.raises(ValueError):
        ref.matmul(a, b, bias=np.ones(2), grad_activation="relu", y=y)


# --------------------------------------------------------------------------------------------
# Optimizers
# --------------------------------------------------------------------------------------------


def test_adam_first_step_by_hand():
    # Step 1 from zero state: m = 0.1 g, v = 0.001 g^2, lr_t = lr sqrt(0.001) / 0.1, so
    # lr_t m / sqrt(v) = lr sign(g) exactly; eps shifts it by ~lr * eps / |0.0316 g| ~ 1e-7.
    param = np.array([1.0, -2.0, 3.0])
    grad = np.array([0.5, -1.0, 2.0])
    m, v = np.zeros(3), np.zeros(3)
    assert ref.adam_update(param, grad, m, v, step=1, lr=0.1) is None
    assert_close(m, [0.05, -0.1, 0.2], rtol=1e-15)
    assert_close(v, [0.00025, 0.001, 0.004], rtol=1e-12)
    assert_close(param, [0.9, -1.9, 2.9], atol=1e-6)
    assert not np.allclose(param, [0.9, -1.9, 2.9], atol=1e-9, rtol=0)  # eps is applied


def test_adam_l2_and_weight_decay():
    param = np.array([2.0])
    m, v = np.array([0.1]), np.array([0.01])
    lr, b1, b2, eps, l2, wd, t = 0.01, 0.8, 0.9, 1e-3, 0.5, 0.25, 3
    g = 0.3 + l2 * 2.0
    m_new = b1 * 0.1 + (1 - b1) * g
    v_new = b2 * 0.01 + (1 - b2) * g * g
    lr_t = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
    expected = 2.0 * (1 - lr * wd) - lr_t * m_new / (np.sqrt(v_new) + eps)
    ref.adam_update(param, np.array([0.3]), m, v, step=t, lr=lr, beta1=b1, beta2=b2, eps=eps,
                    l2=l2, weight_decay=wd)
    assert_close(m, [m_new], rtol=1e-15)
    assert_close(v, [v_new], rtol=1e-15)
    assert_close(param, [expected], rtol=1e-14)


def test_adam_rejects_step_zero():
    with pytest.raises(ValueError, match="step"):
        ref.adam_update(np.ones(2), np.ones(2), np.zeros(2), np.zeros(2), step=0, lr=0.1)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_three_steps(nesterov):
    lr, mu, l2 = 0.1, 0.9, 0.01
    grads = [np.array([1.0, -2.0]), np.array([0.5, 0.5]), np.array([-1.0, 3.0])]
    param, vel = np.array([1.0, 1.0]), np.zeros(2)
    # Hand-written scikit-learn SGDOptimizer loop, element by element.
    p_exp, v_exp = [1.0, 1.0], [0.0, 0.0]
    for g in grads:
        ref.sgd_update(param, g, lr=lr, l2=l2, momentum=mu, nesterov=nesterov, velocity=vel)
        for j in range(2):
            gj = g[j] + l2 * p_exp[j]
            v_exp[j] = mu * v_exp[j] - lr * gj
            p_exp[j] += (mu * v_exp[j] - lr * gj) if nesterov else v_exp[j]
    assert_close(vel, v_exp, rtol=1e-14)
    assert_close(param, p_exp, rtol=1e-14)


def test_sgd_plain_and_missing_velocity():
    param = np.array([1.0, 2.0])
    ref.sgd_update(param, np.array([0.5, -0.5]), lr=0.2, l2=0.1)
    assert_close(param, [1.0 - 0.2 * (0.5 + 0.1), 2.0 - 0.2 * (-0.5 + 0.2)], rtol=1e-15)
    with pytest.raises(ValueError, match="velocity"):
        ref.sgd_update(param, np.ones(2), lr=0.1, momentum=0.9)


def test_rmsprop_one_step():
    param = np.array([1.0, -1.0])
    grad = np.array([0.2, -0.4])
    sq = np.array([0.0, 0.1])
    ref.rmsprop_update(param, grad, sq, lr=0.01, rho=0.9, eps=1e-8)
    sq_exp = np.array([0.1 * 0.04, 0.9 * 0.1 + 0.1 * 0.16])  # [0.004, 0.106]
    assert_close(sq, sq_exp, rtol=1e-15)
    assert_close(param, [1.0 - 0.01 * 0.2 / (np.sqrt(0.004) + 1e-8),
                         -1.0 + 0.01 * 0.4 / (np.sqrt(0.106) + 1e-8)], rtol=1e-15)


def test_optimizers_keep_float32():
    p, g = np.ones(3, np.float32), np.full(3, 0.5, np.float32)
    m, v, vel = np.zeros(3, np.float32), np.zeros(3, np.float32), np.zeros(3, np.float32)
    ref.adam_update(p, g, m, v, step=1, lr=0.1, l2=1e-4, weight_decay=1e-2)
    ref.sgd_update(p, g, lr=0.1, momentum=0.9, nesterov=True, velocity=vel)
    ref.rmsprop_update(p, g, v, lr=0.1)
    assert all(x.dtype == np.float32 for x in (p, m, v, vel))


# --------------------------------------------------------------------------------------------
# The comparison helpers themselves: a silently lenient assert_close would void every test
# --------------------------------------------------------------------------------------------


def test_assert_close_reports_mismatches():
    expected = np.zeros((3, 4))
    actual = expected.copy()
    actual[1, 2] = 1e-3
    assert_close(actual, expected, atol=1e-3)
    with pytest.raises(AssertionError) as info:
        assert_close(actual, expected, atol=1e-4, name="C")
    msg = str(info.value)
    assert "C:" in msg and "(3, 4)" in msg and "1 of 12" in msg and "(1, 2)" in msg
    with pytest.raises(AssertionError, match=r"\(3, 4\).*\(4, 3\)"):
        assert_close(np.zeros((3, 4)), np.zeros((4, 3)))


def test_assert_close_nan_inf_and_bound():
    x = np.array([np.nan, np.inf, -np.inf, 1.0])
    assert_close(x, x.copy())
    for bad in ([0.0, np.inf, -np.inf, 1.0], [np.nan, -np.inf, -np.inf, 1.0],
                [np.nan, np.inf, -np.inf, np.nan]):
        with pytest.raises(AssertionError):
            assert_close(np.array(bad), x, atol=1e300)
    assert_close([1.0, 2.5], [1.0, 2.0], bound=[0.0, 0.5])
    with pytest.raises(AssertionError):
        assert_close([1.0, 2.5], [1.0, 2.0], bound=[0.0, 0.4])


def test_gemm_error_bound_and_bitwise_equal():
    a = np.array([[1.0, -2.0]])
    b = np.array([[3.0], [-4.0]])
    assert_close(gemm_error_bound(a, b, 2), [[2 * 2 * 2.0**-24 * 11.0]], rtol=1e-15)
    assert_close(gemm_error_bound(a.T, b.T, 2, trans_a=True, trans_b=True),
                 gemm_error_bound(a, b, 2))
    nan = np.array([np.nan, 1.0], np.float32)
    assert_bitwise_equal(nan, nan.copy())
    with pytest.raises(AssertionError):
        assert_bitwise_equal(np.array([0.0]), np.array([-0.0]))
    with pytest.raises(AssertionError):
        assert_bitwise_equal(np.zeros(2, np.float32), np.zeros(2, np.float64))


# --------------------------------------------------------------------------------------------
# Normalization: layernorm / batchnorm backward against central differences of their forward
# --------------------------------------------------------------------------------------------
# L = sum(w * y) for a random w, so dy = w; every gradient (h, gamma, beta) is checked against
# differences of L in float64 with gradcheck's tolerances (FD_TOL). The statistics are
# recomputed inside each difference: the backward must include the paths through the mean and
# the variance. relu and leaky_relu are checked at points whose pre-activations are away from
# the kink (a difference of 1e-6 cannot cross it).

NORM_ACTIVATIONS = ["identity", "relu", "leaky_relu", "tanh", "logistic", "gelu"]


def _norm_case(kind, activation, shape=(5, 6), seed=0):
    rng = np.random.default_rng(seed)
    h = rng.standard_normal(shape) * 2 + 0.5
    gamma = rng.uniform(0.5, 1.5, shape[1]) * rng.choice([-1, 1], shape[1])
    beta = rng.standard_normal(shape[1]) * 0.5
    w = rng.standard_normal(shape)
    forward = ref.layernorm_forward if kind == "layernorm" else ref.batchnorm_forward
    backward = ref.layernorm_backward if kind == "layernorm" else ref.batchnorm_backward
    slope = 0.1

    def fwd(h_, g_, b_):
        return forward(h_, g_, b_, eps=1e-5, activation=activation, negative_slope=slope)

    # no pre-activation within 1e-3 of relu's kink (the identity forward gives them)
    z = forward(h, gamma, beta, eps=1e-5)[0]
    assert np.abs(z).min() > 1e-3, "pick another seed: a pre-activation is at the kink"
    return h, gamma, beta, w, fwd, backward, slope


@pytest.mark.parametrize("activation", NORM_ACTIVATIONS)
@pytest.mark.parametrize("kind", ["layernorm", "batchnorm"])
def test_norm_backward_matches_finite_differences(kind, activation):
    h, gamma, beta, w, fwd, backward, slope = _norm_case(kind, activation)
    y, mean, rstd = fwd(h, gamma, beta)
    dh, dgamma, dbeta = backward(w, h, gamma, beta, mean, rstd, activation=activation, y=y,
                                 negative_slope=slope)
    loss = lambda y_: float((w * y_).sum())  # noqa: E731
    assert_close(dh, numeric_grad(lambda x: loss(fwd(x, gamma, beta)[0]), h), **FD_TOL,
                 name="dh")
    assert_close(dgamma, numeric_grad(lambda x: loss(fwd(h, x, beta)[0]), gamma), **FD_TOL,
                 name="dgamma")
    assert_close(dbeta, numeric_grad(lambda x: loss(fwd(h, gamma, x)[0]), beta), **FD_TOL,
                 name="dbeta")


@pytest.mark.parametrize("shape", [(1, 7), (7, 1), (2, 3)], ids=str)
def test_norm_backward_finite_differences_small_shapes(shape):
    """A batch of one row (BatchNorm: hn = 0, var = 0) and rows of one feature (LayerNorm), and
    M = 2, where one-off errors in the 1/M terms would show."""
    for kind in ("layernorm", "batchnorm"):
        rng = np.random.default_rng(3)
        h = rng.standard_normal(shape)
        gamma, beta = rng.standard_normal(shape[1]), rng.standard_normal(shape[1])
        w = rng.standard_normal(shape)
        forward = ref.layernorm_forward if kind == "layernorm" else ref.batchnorm_forward
        backward = ref.layernorm_backward if kind == "layernorm" else ref.batchnorm_backward
        fwd = lambda h_, g_, b_: forward(h_, g_, b_, eps=1e-3, activation="tanh")  # noqa: E731
        y, mean, rstd = fwd(h, gamma, beta)
        dh, dgamma, dbeta = backward(w, h, gamma, beta, mean, rstd, activation="tanh", y=y)
        loss = lambda y_: float((w * y_).sum())  # noqa: E731
        assert_close(dh, numeric_grad(lambda x: loss(fwd(x, gamma, beta)[0]), h), **FD_TOL)
        assert_close(dgamma, numeric_grad(lambda x: loss(fwd(h, x, beta)[0]), gamma), **FD_TOL)
        assert_close(dbeta, numeric_grad(lambda x: loss(fwd(h, gamma, x)[0]), beta), **FD_TOL)


def test_norm_forward_statistics_by_hand():
    h = np.array([[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 4.0, 4.0]])
    ones, zeros = np.ones(4), np.zeros(4)
    y, mean, rstd = ref.layernorm_forward(h, ones, zeros, eps=0.0 + 1e-12)
    assert_close(mean, [3.0, 2.0], rtol=1e-15)
    assert_close(rstd, [1 / np.sqrt(3.5), 0.5], rtol=1e-9)
    assert_close(y[1], [-1.0, -1.0, 1.0, 1.0], rtol=1e-9)
    rm, rv = np.zeros(4), np.ones(4)
    y, mean, rstd = ref.batchnorm_forward(h, ones, zeros, eps=1e-12, momentum=0.25,
                                          running_mean=rm, running_var=rv)
    assert_close(mean, [0.5, 1.0, 3.5, 5.0], rtol=1e-15)
    assert_close(rstd, 1 / np.sqrt([0.25, 1.0, 0.25, 1.0]), rtol=1e-9)
    # PyTorch's BatchNorm1d: the running variance takes the unbiased batch variance (M / (M-1))
    assert_close(rm, 0.25 * mean, rtol=1e-15)
    assert_close(rv, 0.75 + 0.25 * np.array([0.5, 2.0, 0.5, 2.0]), rtol=1e-15)
    y2, mean2, rstd2 = ref.batchnorm_forward(h, ones, zeros, eps=1e-12, training=False,
                                             running_mean=rm, running_var=rv)
    assert_close(mean2, rm, rtol=0)
    assert_close(rstd2, 1 / np.sqrt(rv + 1e-12), rtol=1e-15)


def test_clip_grad_norm_by_hand():
    g = np.array([3.0, 4.0], np.float32)
    assert ref.clip_grad_norm(g, 10.0) == 5.0 and list(g) == [3.0, 4.0]
    assert ref.clip_grad_norm(g, 1.0) == 5.0
    assert_close(g, np.array([3.0, 4.0]) / (5.0 + 1e-6), rtol=1e-7)
    assert g.dtype == np.float32
    g = np.array([np.nan, 1.0], np.float32)
    assert np.isnan(ref.clip_grad_norm(g, 1.0)) and g[1] == 1.0
