"""Pure-NumPy reference implementation of every fastmlp kernel.

This module is the oracle the kernel tests compare against and the baseline the benchmarks measure
speedups from, so it is written to be read, not to be fast: one function per kernel, each a
direct transcription of the formula in its docstring (and in ``csrc/fastmlp.h``). The functions
have the same names and signatures as the compiled ones in ``fastmlp`` (``KERNELS``).

Every function computes in the floating dtype it is given (float64 in the finite-difference
tests, float32 to mirror the kernels) and never upcasts or downcasts silently: Python scalars
(``lr``, ``alpha``, ``negative_slope``...) are "weak" under NumPy's promotion rules and keep that
dtype; targets and sample weights are converted to the dtype of the logits/predictions they go
with. Labels are integer arrays. Validation is limited to what gives a readable error; the
compiled bindings validate everything.
"""

import math

import numpy as np

from ._native import ACTIVATIONS

__all__ = [
    "ACTIVATIONS",
    "activation_forward",
    "bias_activation",
    "activation_backward",
    "bias_grad",
    "matmul",
    "sparse_matmul",
    "sparse_matmul_tn",
    "softmax_cross_entropy",
    "sigmoid_cross_entropy",
    "mse_loss",
    "poisson_loss",
    "sgd_update",
    "rmsprop_update",
    "adam_update",
    "layernorm_forward",
    "layernorm_backward",
    "batchnorm_forward",
    "batchnorm_backward",
    "clip_grad_norm",
]

# GELU, tanh approximation (GPT-2 / llm.c): gelu(x) = 0.5 x (1 + tanh(u)), u = C0 (x + C1 x^3).
_GELU_C0 = math.sqrt(2.0 / math.pi)
_GELU_C1 = 0.044715


def _check_activation(activation):
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; expected one of {ACTIVATIONS}")


def _store(result, out):
    """Return ``result``, or copy it into ``out`` and return ``out``.

    Computing the full result before writing lets ``out`` alias any input.
    """
    if out is None:
        return result
    out[...] = result
    return out


def _sigmoid(x):
    """1 / (1 + exp(-x)), elementwise, without overflow for any x; NaN propagates.

    exp(-|x|) lies in [0, 1], so neither branch can overflow; each branch is the form without
    cancellation on its side of zero.
    """
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _gelu_u(x):
    # x**3 overflows (harmlessly: u = +-inf gives sigmoid 1 or 0) for huge |x|; the warning
    # would only be noise in the tests that feed extreme values.
    with np.errstate(over="ignore"):
        return _GELU_C0 * (x + _GELU_C1 * x**3)


# --------------------------------------------------------------------------------------------
# Activations
# --------------------------------------------------------------------------------------------


def activation_forward(z, activation, negative_slope=0.01):
    """Apply an activation elementwise; returns a new array of z's shape and dtype.

    identity(x) = x; relu(x) = max(x, 0); leaky_relu(x) = x if x > 0 else negative_slope * x;
    tanh(x); logistic(x) = 1 / (1 + exp(-x));
    gelu(x) = 0.5 x (1 + tanh(u)) = x * sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3).
    NaN propagates through every one of them.
    """
    _check_activation(activation)
    z = np.asarray(z)
    if activation == "identity":
        return z.copy()
    if activation == "relu":
        return np.maximum(z, 0)  # np.maximum propagates NaN (np.fmax would not)
    if activation == "leaky_relu":
        return np.where(z > 0, z, negative_slope * z)
    if activation == "tanh":
        return np.tanh(z)
    if activation == "logistic":
        return _sigmoid(z)
    # x * sigmoid(2u) equals 0.5 x (1 + tanh(u)) but avoids the cancellation in 1 + tanh(u)
    # for very negative x.
    return z * _sigmoid(2 * _gelu_u(z))


def bias_activation(z, bias=None, activation="identity", *, negative_slope=0.01, out=None):
    """Forward epilogue of a dense layer: y = act(z + bias).

    z: (M, N) pre-activation; bias: (N,) or None (no bias). Returns y (M, N), written into
    ``out`` (which may be z) if given.
    """
    z = np.asarray(z)
    pre = z if bias is None else z + bias
    return _store(activation_forward(pre, activation, negative_slope), out)


def activation_backward(dy, activation, *, y=None, z=None, negative_slope=0.01, out=None):
    """Backward of an activation: dz = dy * act'(z), all arrays (M, N).

    The derivative is expressed through the activation output y wherever possible, so the
    forward pass need not keep z:
      identity:   dz = dy
      relu:       dz = dy * [y > 0]
      leaky_relu: dz = dy * (1 if y > 0 else negative_slope)
      tanh:       dz = dy * (1 - y) * (1 + y)    (not 1 - y^2: no cancellation near |y| = 1)
      logistic:   dz = dy * y * (1 - y)
      gelu:       from the pre-activation z:  s = sigmoid(2u), u = sqrt(2/pi) (z + 0.044715 z^3),
                  dz = dy * (s + z * 2 s (1 - s) * sqrt(2/pi) (1 + 3 * 0.044715 z^2))
    Masks are multiplications, so NaN/inf in dy survive even where the mask is 0.
    Raises ValueError if y (or z, for gelu) is needed and missing.
    """
    _check_activation(activation)
    dy = np.asarray(dy)
    if activation == "identity":
        return _store(dy.copy(), out)
    if activation == "gelu":
        if z is None:
            raise ValueError("activation_backward('gelu') needs z (the pre-activation)")
        z = np.asarray(z)
        s = _sigmoid(2 * _gelu_u(z))
        du_dz = _GELU_C0 * (1 + 3 * _GELU_C1 * z * z)
        return _store(dy * (s + z * 2 * s * (1 - s) * du_dz), out)
    if y is None:
        raise ValueError(f"activation_backward({activation!r}) needs y (the activation output)")
    y = np.asarray(y)
    if activation == "relu":
        result = dy * (y > 0)
    elif activation == "leaky_relu":
        # Typed scalars so np.where builds the mask in dy's dtype, not float64.
        one, slope = dy.dtype.type(1), dy.dtype.type(negative_slope)
        result = dy * np.where(y > 0, one, slope)
    elif activation == "tanh":
        result = dy * (1 - y) * (1 + y)
    else:  # logistic
        result = dy * y * (1 - y)
    return _store(result, out)


def bias_grad(dz, out=None):
    """Gradient of the bias: db[j] = sum_i dz[i, j]. dz: (M, N) -> db: (N,)."""
    return _store(np.asarray(dz).sum(axis=0), out)


# --------------------------------------------------------------------------------------------
# GEMM with fused epilogue
# --------------------------------------------------------------------------------------------


def matmul(a, b, *, trans_a=False, trans_b=False, bias=None, activation=None,
           negative_slope=0.01, alpha=1.0, beta=0.0, out=None, grad_activation=None, y=None,
           z=None):
    """C (M, N) = epilogue(alpha * op(a) @ op(b) + beta * out), op(x) = x.T if trans else x.

    a: (M, K), or (K, M) with trans_a; b: (K, N), or (N, K) with trans_b.
    The beta term is used only when ``out`` is given and beta != 0; with beta == 0 the old
    contents of ``out`` are ignored, even NaN.
    Forward epilogue: C = act(C + bias), bias (N,) or None, activation None meaning identity.
    Backward epilogue (grad_activation given): C = activation_backward(C, grad_activation, y=y,
    z=z), i.e. C * act'(.), e.g. relu: C * [y > 0]. Combining it with a bias or a (non-identity)
    forward activation is a ValueError. Writes into ``out`` if given and returns the result.
    """
    if grad_activation is not None and (
        bias is not None or activation not in (None, "identity")
    ):
        raise ValueError("matmul: grad_activation cannot be combined with bias or activation")
    op_a = np.asarray(a).T if trans_a else np.asarray(a)
    op_b = np.asarray(b).T if trans_b else np.asarray(b)
    c = alpha * (op_a @ op_b)
    if out is not None and beta != 0:
        c = c + beta * out
    if grad_activation is not None:
        c = activation_backward(c, grad_activation, y=y, z=z, negative_slope=negative_slope)
    else:
        c = bias_activation(c, bias, activation or "identity", negative_slope=negative_slope)
    return _store(c, out)


# --------------------------------------------------------------------------------------------
# Sparse first layer: a CSR matrix (as SciPy's, read through its arrays) times a dense one
# --------------------------------------------------------------------------------------------


def _csr(x):
    """(data, indices, indptr, (n_rows, n_cols)) of a CSR or CSC matrix (SciPy's, read by its
    attributes: no SciPy import here); data keeps its dtype."""
    if getattr(x, "format", None) == "csc":
        x = x.tocsr()
    if getattr(x, "format", None) != "csr":
        raise TypeError(f"x must be a sparse matrix in CSR or CSC format, got {type(x).__name__}")
    return (np.asarray(x.data), np.asarray(x.indices, dtype=np.int64),
            np.asarray(x.indptr, dtype=np.int64), tuple(int(s) for s in x.shape))


def _batch_entries(indptr, n_rows, rows):
    """(r, p) of every entry of the batch x[rows], r ascending and p in storage order within a
    row: the order in which the kernels add the terms."""
    rows = np.arange(n_rows) if rows is None else np.asarray(rows, dtype=np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= n_rows):
        raise IndexError(f"rows must lie in [0, {n_rows})")
    start, count = indptr[rows], indptr[rows + 1] - indptr[rows]
    r = np.repeat(np.arange(rows.size), count)
    # p = start of its row + its position within the row
    p = np.repeat(start, count) + np.arange(r.size) - np.repeat(np.cumsum(count) - count, count)
    return rows.size, r, p


def sparse_matmul(x, b, *, bias=None, activation=None, negative_slope=0.01, rows=None, out=None):
    """C (M, N) = act(x[rows] @ b + bias) for a sparse x (n_rows, K), b (K, N).

    C[r] = sum over the stored entries p of row rows[r], in storage order, of
    data[p] * b[indices[p]] (duplicates add up, explicit zeros too); rows: None (every row) or
    integer row indices, repeats allowed. The terms are added one by one in that order
    (np.add.at), so with float32 inputs the sum is the kernel's, bit for bit. The epilogue is
    bias_activation's. Writes into ``out`` if given and returns the result.
    """
    data, indices, indptr, (n_rows, n_cols) = _csr(x)
    b = np.asarray(b)
    if b.ndim != 2 or b.shape[0] != n_cols:
        raise ValueError(f"b must have shape ({n_cols}, N), got {b.shape}")
    m, r, p = _batch_entries(indptr, n_rows, rows)
    c = np.zeros((m, b.shape[1]), dtype=np.result_type(data, b))
    np.add.at(c, r, data[p, None] * b[indices[p]])
    return _store(bias_activation(c, bias, activation or "identity",
                                  negative_slope=negative_slope), out)


def sparse_matmul_tn(x, d, *, rows=None, out=None):
    """C (K, N) = x[rows]^T @ d for a sparse x (n_rows, K), d (M, N): a sparse first layer's
    weight gradient.

    C[k] = sum over r ascending, then over the entries p of row rows[r] with indices[p] == k in
    storage order, of data[p] * d[r]; rows of C that no entry reaches are 0. Added one term at a
    time in that order (np.add.at), as the kernel does. Writes into ``out`` if given.
    """
    data, indices, indptr, (n_rows, n_cols) = _csr(x)
    d = np.asarray(d)
    m, r, p = _batch_entries(indptr, n_rows, rows)
    if d.ndim != 2 or d.shape[0] != m:
        raise ValueError(f"d must have shape ({m}, N), got {d.shape}")
    c = np.zeros((n_cols, d.shape[1]), dtype=np.result_type(data, d))
    np.add.at(c, indices[p], data[p, None] * d[r])
    return _store(c, out)


# --------------------------------------------------------------------------------------------
# Losses: each returns (loss as a Python float, gradient with the shape of the logits)
# --------------------------------------------------------------------------------------------


def _check_2d(x, name):
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (M, N), got shape {x.shape}")


def _weights(sample_weight, m, dtype):
    """Sample weights as an (M, 1) column in the computation dtype (all ones when None)."""
    if sample_weight is None:
        return np.ones((m, 1), dtype=dtype)
    w = np.asarray(sample_weight, dtype=dtype)
    if w.shape != (m,):
        raise ValueError(f"sample_weight must have shape ({m},), got {w.shape}")
    return w[:, None]


def _logits_targets(logits, targets, sample_weight):
    """(z, t, w, M) of a loss of logits and same-shape targets, checked; w is None if M == 0."""
    z = np.asarray(logits)
    _check_2d(z, "logits")
    t = np.asarray(targets, dtype=z.dtype)
    if t.shape != z.shape:
        raise ValueError(f"targets shape {t.shape} does not match logits shape {z.shape}")
    m = z.shape[0]
    return z, t, (_weights(sample_weight, m, z.dtype) if m else None), m


def softmax_cross_entropy(logits, labels, sample_weight=None, *, grad_out=None):
    """Softmax cross-entropy averaged over the batch.

    logits z: (M, N); labels y: integer (M,) in [0, N); sample_weight w: (M,) or None (ones).
    loss = (1/M) sum_i w_i (logsumexp(z_i) - z_i[y_i]);
    grad = w_i (softmax(z_i) - onehot(y_i)) / M, shape (M, N).
    Rows are shifted by their maximum before exponentiating, so no logit overflows.
    Returns (loss, grad); M == 0 gives (0.0, empty grad).
    """
    z = np.asarray(logits)
    _check_2d(z, "logits")
    labels = np.asarray(labels)
    m, n = z.shape
    if labels.shape != (m,):
        raise ValueError(f"labels must have shape ({m},), got {labels.shape}")
    if m == 0:
        return 0.0, _store(np.zeros_like(z), grad_out)
    # Negative labels would silently index from the end.
    if labels.min() < 0 or labels.max() >= n:
        raise ValueError(
            f"labels must lie in [0, {n}), got range [{labels.min()}, {labels.max()}]"
        )
    w = _weights(sample_weight, m, z.dtype)
    rows = np.arange(m)

    shifted = z - z.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    sum_exp = exp.sum(axis=1, keepdims=True)
    per_row = np.log(sum_exp) - shifted[rows, labels][:, None]  # logsumexp(z_i) - z_i[y_i]
    loss = (w * per_row).sum() / m

    grad = exp / sum_exp
    grad[rows, labels] -= 1
    grad = w * grad / m
    return float(loss), _store(grad, grad_out)


def sigmoid_cross_entropy(logits, targets, sample_weight=None, *, grad_out=None):
    """Sigmoid (binary / multi-label) cross-entropy, summed over outputs, averaged over the batch.

    logits z, targets t: (M, N), t in [0, 1] (binary: N = 1); sample_weight w: (M,) or None.
    Per element l = max(z, 0) - z t + log1p(exp(-|z|))  (= -t log s - (1-t) log(1-s), s =
    sigmoid(z), without overflow); loss = (1/M) sum_i w_i sum_j l_ij;
    grad = w_i (sigmoid(z_ij) - t_ij) / M. Returns (loss, grad); M == 0 gives (0.0, empty grad).
    """
    z, t, w, m = _logits_targets(logits, targets, sample_weight)
    if m == 0:
        return 0.0, _store(np.zeros_like(z), grad_out)

    per_element = np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))
    loss = (w * per_element).sum() / m
    grad = w * (_sigmoid(z) - t) / m
    return float(loss), _store(grad, grad_out)


def mse_loss(pred, target, sample_weight=None, *, grad_out=None):
    """Half mean squared error, as scikit-learn's squared_loss.

    pred p, target t: (M, N); sample_weight w: (M,) or None.
    loss = (1/(M N)) sum_i w_i sum_j (p_ij - t_ij)^2 / 2;  grad = w_i (p_ij - t_ij) / (M N).
    Returns (loss, grad); an empty problem gives (0.0, empty grad).
    """
    p = np.asarray(pred)
    _check_2d(p, "pred")
    t = np.asarray(target, dtype=p.dtype)
    if t.shape != p.shape:
        raise ValueError(f"target shape {t.shape} does not match pred shape {p.shape}")
    m, n = p.shape
    if m * n == 0:
        return 0.0, _store(np.zeros_like(p), grad_out)
    w = _weights(sample_weight, m, p.dtype)

    diff = p - t
    loss = (w * (0.5 * diff * diff)).sum() / (m * n)
    grad = w * diff / (m * n)
    return float(loss), _store(grad, grad_out)


def poisson_loss(logits, targets, sample_weight=None, *, grad_out=None):
    """Half Poisson deviance with a log link, as scikit-learn's poisson_loss on exp(z).

    logits z, targets t >= 0: (M, N); sample_weight w: (M,) or None.
    loss = (1/M) sum_i w_i sum_j (xlogy(t, t) - t z - t + exp(z)); grad = w_i (exp(z) - t) / M.
    Returns (loss, grad); M == 0 gives (0.0, empty grad).
    """
    z, t, w, m = _logits_targets(logits, targets, sample_weight)
    if m == 0:
        return 0.0, _store(np.zeros_like(z), grad_out)
    p = np.exp(z.astype(np.float64))
    t64 = t.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        xlogx = np.where(t64 > 0, t64 * np.log(np.where(t64 > 0, t64, 1)),
                         np.where(t64 == 0, 0.0, np.nan))
    loss = (w.astype(np.float64) * (xlogx - t64 * z - t64 + p)).sum() / m
    grad = w * (p.astype(z.dtype) - t) / m
    return float(loss), _store(grad.astype(z.dtype), grad_out)


# --------------------------------------------------------------------------------------------
# Optimizer updates: in place, return None. Each first forms g = grad + l2 * param.
# --------------------------------------------------------------------------------------------


def sgd_update(param, grad, *, lr, l2=0.0, momentum=0.0, nesterov=False, velocity=None):
    """SGD step, in place on param (and velocity). All arrays share one shape.

    g = grad + l2 param.  momentum == 0: param -= lr g.
    Otherwise (scikit-learn's formulation; velocity required):
      velocity = momentum velocity - lr g;
      param += momentum velocity - lr g  (nesterov)   or   param += velocity.
    """
    g = grad + l2 * param
    if momentum == 0:
        param -= lr * g
        return None
    if velocity is None:
        raise ValueError("sgd_update with momentum != 0 needs velocity")
    velocity[...] = momentum * velocity - lr * g
    if nesterov:
        param += momentum * velocity - lr * g
    else:
        param += velocity
    return None


def rmsprop_update(param, grad, square_avg, *, lr, rho=0.9, eps=1e-8, l2=0.0):
    """RMSprop step, in place on param and square_avg. All arrays share one shape.

    g = grad + l2 param;  square_avg = rho square_avg + (1 - rho) g^2;
    param -= lr g / (sqrt(square_avg) + eps).
    """
    g = grad + l2 * param
    square_avg[...] = rho * square_avg + (1 - rho) * g * g
    param -= lr * g / (np.sqrt(square_avg) + eps)
    return None


def adam_update(param, grad, m, v, *, step, lr, beta1=0.9, beta2=0.999, eps=1e-8, l2=0.0,
                weight_decay=0.0):
    """Adam / AdamW step, in place on param, m and v. All arrays share one shape.

    step t >= 1 is the number of this update (1 for the first).
    g = grad + l2 param;  m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2;
    lr_t = lr sqrt(1 - beta2^t) / (1 - beta1^t)   (scikit-learn's form: eps not bias-corrected);
    param = param (1 - lr weight_decay) - lr_t m / (sqrt(v) + eps).
    weight_decay > 0 is AdamW's decoupled weight decay; l2 is the coupled (classic) penalty.
    """
    if step < 1:
        raise ValueError(f"adam_update: step must be >= 1, got {step}")
    g = grad + l2 * param
    m[...] = beta1 * m + (1 - beta1) * g
    v[...] = beta2 * v + (1 - beta2) * g * g
    lr_t = lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)
    param[...] = param * (1 - lr * weight_decay) - lr_t * m / (np.sqrt(v) + eps)
    return None


# --------------------------------------------------------------------------------------------
# Normalization, fused with the activation after it; global-norm gradient clipping
# --------------------------------------------------------------------------------------------
# Statistics are two-pass, as the kernels': the mean, then the mean of squared deviations from
# it (var biased). rstd = 1 / sqrt(var + eps). The forward returns (y, mean, rstd), the backward
# (dh, dgamma, dbeta); all in h's dtype (running statistics are converted to it).


def _normalize(h, mean, rstd, axis):
    """hn = (h - mean) rstd with the statistics broadcast along axis (1: per row, 0: per
    column)."""
    if axis == 1:
        return (h - mean[:, None]) * rstd[:, None]
    return (h - mean) * rstd


def _statistics(h, eps, axis):
    """(mean, var, rstd) along axis, two-pass; NaN where there is nothing to average."""
    if h.shape[axis] == 0:
        nan = np.full(h.shape[1 - axis], np.nan, h.dtype)
        return nan, nan, nan
    mean = h.mean(axis=axis)
    dev = h - (mean[:, None] if axis == 1 else mean)
    var = (dev * dev).mean(axis=axis)
    return mean, var, 1 / np.sqrt(var + eps)


def _norm_grad(dy, h, gamma, beta, mean, rstd, activation, y, negative_slope, axis):
    """(g = dy act'(.), hn): act' from y, or for gelu from z = gamma hn + beta."""
    h = np.asarray(h)
    hn = _normalize(h, np.asarray(mean, h.dtype), np.asarray(rstd, h.dtype), axis)
    z = gamma * hn + beta if activation == "gelu" else None
    return activation_backward(dy, activation, y=y, z=z, negative_slope=negative_slope), hn


def layernorm_forward(h, gamma, beta, *, eps=1e-5, activation="identity", negative_slope=0.01,
                      out=None):
    """LayerNorm over each row of h (M, N), fused with an activation:
    mean_i = mean_j h_ij, var_i = mean_j (h_ij - mean_i)^2, rstd_i = 1 / sqrt(var_i + eps),
    y = act(gamma (h - mean_i) rstd_i + beta). gamma, beta: (N,). Returns (y, mean, rstd), the
    statistics (M,); y written into ``out`` (which may be h) if given. Rows of no features
    (N == 0) have NaN statistics."""
    _check_activation(activation or "identity")
    h = np.asarray(h)
    mean, _, rstd = _statistics(h, eps, 1)
    y = activation_forward(gamma * _normalize(h, mean, rstd, 1) + beta, activation or "identity",
                           negative_slope)
    return _store(y, out), mean, rstd


def layernorm_backward(dy, h, gamma, beta, mean, rstd, *, activation="identity", y=None,
                       negative_slope=0.01, out=None):
    """Gradient of layernorm_forward: with g = dy act'(.) (activation_backward's, from y, or for
    gelu from z = gamma hn + beta), hn = (h - mean) rstd and gh = g gamma:
    dh = rstd (gh - mean_j(gh) - hn mean_j(gh hn)), dgamma = sum_i g hn, dbeta = sum_i g.
    Returns (dh, dgamma, dbeta); dh written into ``out`` (which may be dy) if given."""
    activation = activation or "identity"
    _check_activation(activation)
    g, hn = _norm_grad(dy, h, gamma, beta, mean, rstd, activation, y, negative_slope, 1)
    gh = g * gamma
    n = max(gh.shape[1], 1)
    a = gh.sum(axis=1, keepdims=True) / n
    c = (gh * hn).sum(axis=1, keepdims=True) / n
    dh = np.asarray(rstd, hn.dtype)[:, None] * (gh - a - hn * c)
    return _store(dh, out), (g * hn).sum(axis=0), g.sum(axis=0)


def batchnorm_forward(h, gamma, beta, *, eps=1e-5, training=True, momentum=0.1,
                      running_mean=None, running_var=None, activation="identity",
                      negative_slope=0.01, out=None):
    """BatchNorm over each column of h (M, N), fused with an activation, as PyTorch's
    BatchNorm1d (affine) followed by the activation.

    training: mean_j = mean_i h_ij, var_j = mean_i (h_ij - mean_j)^2 (biased), and, if given,
    running_mean = (1 - momentum) running_mean + momentum mean_j and
    running_var = (1 - momentum) running_var + momentum var_j M / (M - 1) (M == 1: var_j), in
    place. Inference (training=False): mean_j = running_mean, var_j = running_var.
    rstd_j = 1 / sqrt(var_j + eps); y = act(gamma (h - mean_j) rstd_j + beta).
    Returns (y, mean, rstd), the statistics (N,); y written into ``out`` (may be h) if given."""
    activation = activation or "identity"
    _check_activation(activation)
    h = np.asarray(h)
    m = h.shape[0]
    if training:
        if m == 0:
            raise ValueError("batchnorm_forward: training needs at least one row")
        mean, var, rstd = _statistics(h, eps, 0)
        if running_mean is not None:
            unbiased = var * (m / (m - 1)) if m > 1 else var
            running_mean[...] = (1 - momentum) * running_mean + momentum * mean
            running_var[...] = (1 - momentum) * running_var + momentum * unbiased
    else:
        if running_mean is None or running_var is None:
            raise ValueError("batchnorm_forward: training=False needs running_mean and "
                             "running_var")
        mean = np.asarray(running_mean, h.dtype).copy()
        rstd = 1 / np.sqrt(np.asarray(running_var, h.dtype) + eps)
    y = activation_forward(gamma * _normalize(h, mean, rstd, 0) + beta, activation,
                           negative_slope)
    return _store(y, out), mean, rstd


def batchnorm_backward(dy, h, gamma, beta, mean, rstd, *, activation="identity", y=None,
                       negative_slope=0.01, out=None):
    """Gradient of a training batchnorm_forward (batch statistics): with g = dy act'(.) and
    hn = (h - mean) rstd: dbeta = sum_i g, dgamma = sum_i g hn,
    dh = gamma rstd (g - dbeta / M - hn dgamma / M). Returns (dh, dgamma, dbeta); dh written into
    ``out`` (which may be dy) if given."""
    activation = activation or "identity"
    _check_activation(activation)
    g, hn = _norm_grad(dy, h, gamma, beta, mean, rstd, activation, y, negative_slope, 0)
    m = max(g.shape[0], 1)
    dbeta, dgamma = g.sum(axis=0), (g * hn).sum(axis=0)
    dh = gamma * np.asarray(rstd, hn.dtype) * (g - dbeta / m - hn * (dgamma / m))
    return _store(dh, out), dgamma, dbeta


def clip_grad_norm(grad, max_norm):
    """Global-norm clipping in place (PyTorch's clip_grad_norm_): norm = ||grad||_2 in float64;
    if max_norm > 0 and norm > max_norm, grad *= max_norm / (norm + 1e-6) (the factor rounded
    to grad's dtype). max_norm 0 or inf only measures. Returns the norm before clipping (NaN if
    grad holds one; grad is then left as it is)."""
    g64 = np.asarray(grad, dtype=np.float64)
    norm = float(np.sqrt((g64 * g64).sum()))
    if max_norm > 0 and norm > max_norm:
        with np.errstate(invalid="ignore"):  # an infinite norm: inf * 0 = NaN, as PyTorch's
            grad *= grad.dtype.type(max_norm / (norm + 1e-6))
    return norm
