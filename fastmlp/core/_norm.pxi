# Normalization and gradient clipping (included by _native.pyx): LayerNorm and BatchNorm fused
# with the activation after them, their backward, and global-norm clipping (fastmlp.h,
# "Normalization"; the kernels in csrc/norm_impl.h).
#
# a) The forward bindings return (y, mean, rstd): the statistics the backward takes, per row
#    (LayerNorm, shape (M,)) or per column (BatchNorm, (N,)). The backward bindings return
#    (dh, dgamma, dbeta), dgamma and dbeta new arrays.
# b) y may be h itself (forward, out=h) and dh may be dy itself (backward, out=dy): the kernels
#    read each element before they write it. No other overlap is allowed (_no_overlap).
# c) Zero sizes: the kernels write nothing (rule 1), so the bindings fill what the user still
#    gets: dgamma and dbeta of an empty batch are 0 (sums of nothing); LayerNorm's statistics of
#    rows without features are NaN (the mean of nothing, as numpy.mean says); BatchNorm's
#    inference statistics of an empty batch are the running ones, computed here as the kernel
#    would. A training BatchNorm needs a batch: M = 0 is a ValueError.
# d) Backward activations: act'(.) comes from y, the forward's output, for relu, leaky_relu, tanh
#    and logistic (y is then required), and from z = gamma hn + beta, recomputed, for gelu; for
#    identity and gelu y is not read.


cdef double _norm_eps(object eps) except? -1.0:
    return _real(eps, "eps", 0.0, math.inf, True)


cdef tuple _norm_params(object gamma, object beta, Py_ssize_t N, str like):
    return (_input_shaped(gamma, "gamma", (N,), like), _input_shaped(beta, "beta", (N,), like))


cdef cnp.ndarray _new_f32(Py_ssize_t n, bint zero):
    cdef cnp.npy_intp dims[1]
    dims[0] = n
    return cnp.PyArray_ZEROS(1, dims, cnp.NPY_FLOAT32, 0) if zero else \
        cnp.PyArray_EMPTY(1, dims, cnp.NPY_FLOAT32, 0)


def layernorm_forward(h, gamma, beta, *, eps=1e-5, activation="identity", negative_slope=0.01,
                      out=None):
    """LayerNorm over each row of h, fused with the activation after it:
    y = activation(gamma (h - mean) rstd + beta), mean and rstd = 1 / sqrt(var + eps) per row
    (var the biased variance, two-pass, in float32).

    h: float32 (M, N); gamma, beta: float32 (N,); eps > 0; activation: one of ACTIVATIONS or
    None; out: float32 (M, N), may be h (in place). Returns (y, mean, rstd), mean and rstd
    float32 (M,) for layernorm_backward."""
    cdef cnp.ndarray H = _input(h, "h", 2)
    cdef Py_ssize_t M = cnp.PyArray_DIM(H, 0), N = cnp.PyArray_DIM(H, 1)
    cdef cnp.ndarray G, B
    G, B = _norm_params(gamma, beta, N, "h's columns")
    cdef double e = _norm_eps(eps)
    cdef int act = _act_code(activation, "activation")
    cdef float s = _real(negative_slope, "negative_slope")
    cdef cnp.ndarray Y = _output(out, "out", (M, N), "h")
    _no_overlap("layernorm_forward", Y, "out", ((H, "h"), (G, "gamma"), (B, "beta")), same_ok=H)
    cdef cnp.ndarray mean = _new_f32(M, False), rstd = _new_f32(M, False)
    if N == 0:                                   # note c
        mean.fill(np.nan)
        rstd.fill(np.nan)
    cdef int nt = _threads()
    with nogil:
        fm_layernorm_forward(M, N, _ptr(H), _ptr(G), _ptr(B), e, act, s, _ptr(Y), _ptr(mean),
                             _ptr(rstd), nt)
    return Y, mean, rstd


def batchnorm_forward(h, gamma, beta, *, eps=1e-5, training=True, momentum=0.1,
                      running_mean=None, running_var=None, activation="identity",
                      negative_slope=0.01, out=None):
    """BatchNorm over each column of h (the batch's M rows), fused with the activation after it:
    y = activation(gamma (h - mean) rstd + beta), mean and rstd = 1 / sqrt(var + eps) per column.

    training=True: batch statistics (var biased, two-pass, in float32; M >= 1); running_mean and
    running_var (float32 (N,), both or neither) are updated in place as PyTorch's BatchNorm1d
    does: running = (1 - momentum) running + momentum batch, with the unbiased variance
    var M / (M - 1) (the biased one when M == 1). training=False: inference with the running
    statistics, which are then required (only read). momentum in [0, 1], eps > 0.
    h: float32 (M, N); gamma, beta: float32 (N,); out may be h. Returns (y, mean, rstd), mean and
    rstd float32 (N,) for batchnorm_backward."""
    cdef cnp.ndarray H = _input(h, "h", 2)
    cdef Py_ssize_t M = cnp.PyArray_DIM(H, 0), N = cnp.PyArray_DIM(H, 1)
    cdef cnp.ndarray G, B
    G, B = _norm_params(gamma, beta, N, "h's columns")
    cdef double e = _norm_eps(eps)
    if not isinstance(training, (bool, np.bool_)):
        raise TypeError(f"training must be a bool, got {type(training).__name__} {training!r}")
    cdef bint train = bool(training)
    cdef double mom = _real(momentum, "momentum", 0.0, 1.0)
    cdef int act = _act_code(activation, "activation")
    cdef float s = _real(negative_slope, "negative_slope")
    if (running_mean is None) != (running_var is None):
        missing = "running_var" if running_var is None else "running_mean"
        raise ValueError(f"batchnorm_forward: {missing} is missing: running_mean and "
                         "running_var go together")
    cdef cnp.ndarray RM = None, RV = None
    if running_mean is not None:
        if train:                                # updated in place
            RM = _output(running_mean, "running_mean", (N,), "h's columns")
            RV = _output(running_var, "running_var", (N,), "h's columns")
        else:
            RM = _input_shaped(running_mean, "running_mean", (N,), "h's columns")
            RV = _input_shaped(running_var, "running_var", (N,), "h's columns")
    elif not train:
        raise ValueError("batchnorm_forward: training=False needs running_mean and running_var "
                         "(float32 (N,)): inference normalizes with them")
    if train and M == 0:
        raise ValueError("batchnorm_forward: training needs a batch of at least one row (h has "
                         "0 rows: its statistics are undefined)")
    cdef cnp.ndarray Y = _output(out, "out", (M, N), "h")
    _no_overlap("batchnorm_forward", Y, "out", ((H, "h"), (G, "gamma"), (B, "beta"),
                                                (RM, "running_mean"), (RV, "running_var")),
                same_ok=H)
    if train and RM is not None:
        _distinct("batchnorm_forward", ((RM, "running_mean"), (RV, "running_var")),
                  ((H, "h"), (G, "gamma"), (B, "beta")))
    cdef cnp.ndarray mean = _new_f32(N, False), rstd = _new_f32(N, False)
    if M == 0 and N > 0:                         # inference on an empty batch: note c
        mean[...] = RM
        rstd[...] = (1.0 / np.sqrt(RV.astype(np.float64) + e)).astype(np.float32)
    cdef int nt = _threads()
    with nogil:
        fm_batchnorm_forward(M, N, _ptr(H), _ptr(G), _ptr(B), e, train, mom, _ptr(RM), _ptr(RV),
                             act, s, _ptr(Y), _ptr(mean), _ptr(rstd), nt)
    return Y, mean, rstd


cdef tuple _norm_backward(str who, bint layer, object dy, object h, object gamma, object beta,
                          object mean, object rstd, object activation, object y,
                          object negative_slope, object out):
    cdef cnp.ndarray D = _input(dy, "dy", 2)
    cdef Py_ssize_t M = cnp.PyArray_DIM(D, 0), N = cnp.PyArray_DIM(D, 1)
    cdef cnp.ndarray H = _input_shaped(h, "h", (M, N), "dy")
    cdef cnp.ndarray G, B
    G, B = _norm_params(gamma, beta, N, "dy's columns")
    cdef Py_ssize_t n_stats = M if layer else N
    cdef str stats_like = "dy's rows" if layer else "dy's columns"
    cdef cnp.ndarray MU = _input_shaped(mean, "mean", (n_stats,), stats_like)
    cdef cnp.ndarray RS = _input_shaped(rstd, "rstd", (n_stats,), stats_like)
    cdef int act = _act_code(activation, "activation")
    cdef float s = _real(negative_slope, "negative_slope")
    cdef cnp.ndarray Yv = None
    if act != FM_ACT_IDENTITY and act != FM_ACT_GELU:     # note d
        if y is None:
            raise ValueError(f"{who}: activation={activation!r} needs y, the forward's output")
        Yv = _input_shaped(y, "y", (M, N), "dy")
    cdef cnp.ndarray O = _output(out, "out", (M, N), "dy")
    _no_overlap(who, O, "out", ((D, "dy"), (H, "h"), (G, "gamma"), (B, "beta"), (MU, "mean"),
                                (RS, "rstd"), (Yv, "y")), same_ok=D)
    cdef cnp.ndarray dg = _new_f32(N, True), db = _new_f32(N, True)   # note c
    cdef int nt = _threads()
    with nogil:
        if layer:
            fm_layernorm_backward(M, N, _ptr(D), _ptr(Yv), _ptr(H), _ptr(G), _ptr(B), _ptr(MU),
                                  _ptr(RS), act, s, _ptr(O), _ptr(dg), _ptr(db), nt)
        else:
            fm_batchnorm_backward(M, N, _ptr(D), _ptr(Yv), _ptr(H), _ptr(G), _ptr(B), _ptr(MU),
                                  _ptr(RS), act, s, _ptr(O), _ptr(dg), _ptr(db), nt)
    return O, dg, db


def layernorm_backward(dy, h, gamma, beta, mean, rstd, *, activation="identity", y=None,
                       negative_slope=0.01, out=None):
    """Gradient of layernorm_forward. dy: float32 (M, N), the gradient w.r.t. its output y;
    h, gamma, beta: its inputs; mean, rstd: float32 (M,) as it returned them; activation: the
    forward's, whose derivative comes from y (its output, required for relu, leaky_relu, tanh,
    logistic) or, for gelu, from gamma hn + beta recomputed. With g = dy act'(.), gh = g gamma,
    hn = (h - mean) rstd: dh = rstd (gh - mean_j(gh) - hn mean_j(gh hn)), dgamma = sum_i g hn,
    dbeta = sum_i g (column sums in row order). out may be dy. Returns (dh, dgamma, dbeta)."""
    return _norm_backward("layernorm_backward", True, dy, h, gamma, beta, mean, rstd, activation,
                          y, negative_slope, out)


def batchnorm_backward(dy, h, gamma, beta, mean, rstd, *, activation="identity", y=None,
                       negative_slope=0.01, out=None):
    """Gradient of a training batchnorm_forward (batch statistics). dy: float32 (M, N); h,
    gamma, beta: its inputs; mean, rstd: float32 (N,) as it returned them; activation and y as in
    layernorm_backward. With g = dy act'(.), hn = (h - mean) rstd: dbeta = sum_i g,
    dgamma = sum_i g hn, dh = gamma rstd (g - dbeta / M - hn dgamma / M). out may be dy.
    Returns (dh, dgamma, dbeta)."""
    return _norm_backward("batchnorm_backward", False, dy, h, gamma, beta, mean, rstd, activation,
                          y, negative_slope, out)


def clip_grad_norm(grad, max_norm):
    """Global-norm gradient clipping, in place (PyTorch's clip_grad_norm_ on one buffer).

    grad: a writable C-contiguous float32 array of any shape (a flat gradient buffer, such as
    TrainStep.flat_grads). The norm ||grad||_2 is computed in double in a fixed order; if
    max_norm > 0 and the norm exceeds it, grad *= max_norm / (norm + 1e-6). max_norm >= 0;
    0 or inf only measures. Returns the norm before clipping as a float (NaN if grad holds a
    NaN, and grad is then left as it is)."""
    if not isinstance(grad, np.ndarray):
        raise TypeError(f"grad must be a numpy.ndarray of float32, got {type(grad).__name__}")
    cdef cnp.ndarray g = _output(grad, "grad", grad.shape)
    cdef double mx
    if (isinstance(max_norm, (float, np.floating)) and math.isinf(max_norm)
            and max_norm > 0):
        mx = math.inf
    else:
        mx = _real(max_norm, "max_norm", 0.0)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(g)
    cdef int nt = _threads()
    cdef double norm = 0.0
    if n:
        with nogil:
            norm = fm_clip_grad_norm(n, _ptr(g), mx, nt)
    return norm
