# Bindings of the normalization kernels (LayerNorm, BatchNorm, each fused with the activation
# after it) and of global-norm gradient clipping. Included into _native.pyx; contracts in
# csrc/fastmlp.h, twins in reference.py.


cdef tuple _norm_operands(str who, object h, object gamma, object beta, object eps,
                          bint with_eps=True):
    """(H, gamma, beta, M, N, eps) checked: h float32 (M, N), gamma and beta (N,), eps > 0
    (with_eps; else eps is 0)."""
    cdef cnp.ndarray H = _input(h, "h", 2)
    cdef Py_ssize_t M = cnp.PyArray_DIM(H, 0), N = cnp.PyArray_DIM(H, 1)
    cdef cnp.ndarray G = _input_shaped(gamma, "gamma", (N,), "h's columns")
    cdef cnp.ndarray B = _input_shaped(beta, "beta", (N,), "h's columns")
    cdef double e = _real(eps, "eps", 0.0, math.inf, True) if with_eps else 0.0
    return H, G, B, M, N, e


cdef tuple _norm_backward_operands(str who, object dy, object h, object gamma, object beta,
                                   object mean, object rstd, object activation, object y,
                                   bint per_row):
    """The checked operands of a norm's backward; y is required by the activations whose
    derivative comes from their output."""
    cdef cnp.ndarray H, G, B
    cdef Py_ssize_t M, N
    H, G, B, M, N, _ = _norm_operands(who, h, gamma, beta, None, False)
    cdef cnp.ndarray D = _input_shaped(dy, "dy", (M, N), "h")
    cdef Py_ssize_t n_stat = M if per_row else N
    like = "h's rows" if per_row else "h's columns"
    cdef cnp.ndarray mu = _input_shaped(mean, "mean", (n_stat,), like)
    cdef cnp.ndarray r = _input_shaped(rstd, "rstd", (n_stat,), like)
    cdef int act = _act_code(activation, "activation")
    cdef cnp.ndarray Y = None
    if act not in (FM_ACT_IDENTITY, FM_ACT_GELU):
        if y is None:
            raise ValueError(f"{who}: {activation!r} needs y, the forward's output")
        Y = _input_shaped(y, "y", (M, N), "h")
    return D, H, G, B, mu, r, Y, act, M, N


def layernorm_forward(h, gamma, beta, *, eps=1e-5, activation="identity", negative_slope=0.01,
                      out=None):
    """LayerNorm over each row of h, then the activation: y = act(gamma (h - mean) rstd + beta)
    with mean and rstd = 1 / sqrt(var + eps) of each row (biased variance). h float32 (M, N);
    gamma, beta (N,); out may be h (in place). Returns (y, mean, rstd), mean and rstd (M,),
    which layernorm_backward takes."""
    cdef cnp.ndarray H, G, B
    cdef Py_ssize_t M, N
    cdef double e
    H, G, B, M, N, e = _norm_operands("layernorm_forward", h, gamma, beta, eps)
    cdef int act = _act_code(activation, "activation")
    cdef float s = _real(negative_slope, "negative_slope")
    cdef cnp.ndarray O = _output(out, "out", (M, N), "h")
    _no_overlap("layernorm_forward", O, "out", ((H, "h"), (G, "gamma"), (B, "beta")), same_ok=H)
    cdef cnp.ndarray mu = np.empty(M, np.float32), r = np.empty(M, np.float32)
    cdef int nt = _threads()
    with nogil:
        fm_layernorm_forward(M, N, _ptr(H), _ptr(G), _ptr(B), e, act, s, _ptr(O), _ptr(mu),
                             _ptr(r), nt)
    return O, mu, r


def layernorm_backward(dy, h, gamma, beta, mean, rstd, *, activation="identity", y=None,
                       negative_slope=0.01, out=None):
    """The gradients of layernorm_forward: dy (M, N) w.r.t. its output -> (dh, dgamma, dbeta).
    h, gamma, beta: the forward's inputs; mean, rstd: what it returned; y: its output, needed
    for relu, leaky_relu, tanh and logistic (gelu's derivative is recomputed from h). out (dh)
    may be dy (in place)."""
    cdef cnp.ndarray D, H, G, B, mu, r, Y
    cdef int act
    cdef Py_ssize_t M, N
    D, H, G, B, mu, r, Y, act, M, N = _norm_backward_operands(
        "layernorm_backward", dy, h, gamma, beta, mean, rstd, activation, y, True)
    cdef float s = _real(negative_slope, "negative_slope")
    cdef cnp.ndarray O = _output(out, "out", (M, N), "dy")
    _no_overlap("layernorm_backward", O, "out", ((D, "dy"), (H, "h"), (G, "gamma"),
                (B, "beta"), (mu, "mean"), (r, "rstd"), (Y, "y")), same_ok=D)
    cdef cnp.ndarray dg = np.empty(N, np.float32), db = np.empty(N, np.float32)
    cdef int nt = _threads()
    with nogil:
        fm_layernorm_backward(M, N, _ptr(D), _ptr(Y), _ptr(H), _ptr(G), _ptr(B), _ptr(mu),
                              _ptr(r), act, s, _ptr(O), _ptr(dg), _ptr(db), nt)
    return O, dg, db


def batchnorm_forward(h, gamma, beta, *, eps=1e-5, training=True, momentum=0.1,
                      running_mean=None, running_var=None, activation="identity",
                      negative_slope=0.01, out=None):
    """BatchNorm over the batch (each column of h), then the activation:
    y = act(gamma (h - mean) rstd + beta). training=True: the batch's mean and biased variance;
    running_mean / running_var (float32 (N,), optional, updated in place) move as PyTorch's
    BatchNorm1d: running = (1 - momentum) running + momentum batch, with the unbiased variance.
    training=False: the running statistics (both required). out may be h. Returns (y, mean,
    rstd), mean and rstd (N,), which batchnorm_backward takes."""
    cdef cnp.ndarray H, G, B
    cdef Py_ssize_t M, N
    cdef double e
    H, G, B, M, N, e = _norm_operands("batchnorm_forward", h, gamma, beta, eps)
    cdef double mom = _real(momentum, "momentum", 0.0, 1.0)
    cdef int act = _act_code(activation, "activation")
    cdef float s = _real(negative_slope, "negative_slope")
    cdef bint train = bool(training)
    cdef cnp.ndarray rm = None, rv = None
    if (running_mean is None) != (running_var is None):
        raise ValueError("batchnorm_forward: give both running_mean and running_var, or neither")
    if running_mean is not None and train:      # updated in place
        rm = _output(running_mean, "running_mean", (N,), "h's columns")
        rv = _output(running_var, "running_var", (N,), "h's columns")
    elif running_mean is not None:                # only read (may be read-only)
        rm = _input_shaped(running_mean, "running_mean", (N,), "h's columns")
        rv = _input_shaped(running_var, "running_var", (N,), "h's columns")
    elif not train:
        raise ValueError("batchnorm_forward: training=False needs running_mean and running_var")
    if train and M < 1:
        raise ValueError("batchnorm_forward: training needs a batch of at least one row")
    cdef cnp.ndarray O = _output(out, "out", (M, N), "h")
    _no_overlap("batchnorm_forward", O, "out", ((H, "h"), (G, "gamma"), (B, "beta"),
                (rm, "running_mean"), (rv, "running_var")), same_ok=H)
    if rm is not None and train:
        _distinct("batchnorm_forward", ((rm, "running_mean"), (rv, "running_var")),
                  ((H, "h"), (G, "gamma"), (B, "beta")))
    cdef cnp.ndarray mu = np.empty(N, np.float32), r = np.empty(N, np.float32)
    cdef float *prm = <float *>cnp.PyArray_DATA(rm) if rm is not None else NULL
    cdef float *prv = <float *>cnp.PyArray_DATA(rv) if rv is not None else NULL
    cdef int nt = _threads()
    with nogil:
        fm_batchnorm_forward(M, N, _ptr(H), _ptr(G), _ptr(B), e, train, mom, prm, prv, act, s,
                             _ptr(O), _ptr(mu), _ptr(r), nt)
    return O, mu, r


def batchnorm_backward(dy, h, gamma, beta, mean, rstd, *, activation="identity", y=None,
                       negative_slope=0.01, out=None):
    """The gradients of a training batchnorm_forward (batch statistics): dy (M, N) w.r.t. its
    output -> (dh, dgamma, dbeta); arguments as layernorm_backward's, mean and rstd (N,)."""
    cdef cnp.ndarray D, H, G, B, mu, r, Y
    cdef int act
    cdef Py_ssize_t M, N
    D, H, G, B, mu, r, Y, act, M, N = _norm_backward_operands(
        "batchnorm_backward", dy, h, gamma, beta, mean, rstd, activation, y, False)
    cdef float s = _real(negative_slope, "negative_slope")
    cdef cnp.ndarray O = _output(out, "out", (M, N), "dy")
    _no_overlap("batchnorm_backward", O, "out", ((D, "dy"), (H, "h"), (G, "gamma"),
                (B, "beta"), (mu, "mean"), (r, "rstd"), (Y, "y")), same_ok=D)
    cdef cnp.ndarray dg = np.empty(N, np.float32), db = np.empty(N, np.float32)
    cdef int nt = _threads()
    with nogil:
        fm_batchnorm_backward(M, N, _ptr(D), _ptr(Y), _ptr(H), _ptr(G), _ptr(B), _ptr(mu),
                              _ptr(r), act, s, _ptr(O), _ptr(dg), _ptr(db), nt)
    return O, dg, db


def clip_grad_norm(grad, max_norm):
    """The global L2 norm of grad (a writable C-contiguous float32 array of any shape, e.g.
    a flat gradient buffer), summed in double in a fixed order; if max_norm > 0 and the norm is
    larger, grad is scaled in place by max_norm / (norm + 1e-6) (PyTorch's clip_grad_norm_).
    max_norm 0 or inf only measures. Returns the norm before clipping."""
    if not isinstance(grad, np.ndarray):
        raise TypeError(f"grad must be a numpy.ndarray of float32, got {type(grad).__name__}")
    cdef cnp.ndarray g = _output(grad, "grad", grad.shape)
    if isinstance(max_norm, (int, float, np.integer, np.floating)) and not isinstance(
            max_norm, bool) and max_norm == math.inf:
        max_norm = 0.0
    cdef double mx = _real(max_norm, "max_norm", 0.0)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(g)
    cdef double norm = 0.0
    cdef int nt = _threads()
    if n:
        with nogil:
            norm = fm_clip_grad_norm(n, _ptr(g), mx, nt)
    return norm
