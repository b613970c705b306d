# cython: language_level=3
"""Bindings of the C kernels (csrc/fastmlp.h): validate, release the GIL, call.

Design notes:
a) Inputs must be float32 (integer labels excepted): a kernel never converts dtypes behind the
   user's back, because a silent float64 -> float32 copy hides both a cost and a rounding. The
   error says how to convert. The estimators convert, and document it.
b) Layout is not the user's problem: a Fortran-ordered matrix is a transposed C-ordered one
   (GEMM flips the transpose flag instead of copying), rows with a gap (a column slice) are passed
   with their leading dimension, anything else is copied to C order. Read-only arrays work.
c) Arrays the kernels write (out=, optimizer parameters and state) must be C-contiguous, writable
   float32 of the exact shape: writing into a temporary copy would silently lose the result.
d) Every error names the argument and what was expected. The C kernels trust these checks, and
   still refuse out-of-range labels themselves (rule 7 of fastmlp.h).
e) Thread count: resolved per call by _threads() (see fastmlp/_threads.py for the policy) and
   passed explicitly to the kernel.
"""
import numpy as np

from libc.stdint cimport int32_t

cdef extern from "fastmlp.h" nogil:
    int FM_OK, FM_EINVAL, FM_ENOMEM
    ctypedef struct fm_epilogue:
        const float *bias
        int act
        int grad_act
        float slope
        const float *y
        ptrdiff_t ldy
        const float *z
        ptrdiff_t ldz
    int fm_sgemm(int trans_a, int trans_b, ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, float alpha,
                 const float *A, ptrdiff_t lda, const float *B, ptrdiff_t ldb, float beta,
                 float *C, ptrdiff_t ldc, const fm_epilogue *ep, float *work, int nthreads)
    size_t fm_sgemm_work_size(int nthreads)
    void fm_bias_act_forward(ptrdiff_t M, ptrdiff_t N, const float *Z, const float *bias, int act,
                             float slope, float *Y, int nthreads)
    void fm_act_backward(ptrdiff_t M, ptrdiff_t N, const float *dY, const float *Y, const float *Z,
                         int act, float slope, float *dZ, int nthreads)
    void fm_bias_grad(ptrdiff_t M, ptrdiff_t N, const float *dZ, float *db, int nthreads)
    int fm_softmax_xent(ptrdiff_t M, ptrdiff_t N, const float *Z, const int32_t *labels,
                        const float *w, float *dZ, double *loss, int nthreads)
    int fm_sigmoid_xent(ptrdiff_t M, ptrdiff_t N, const float *Z, const float *T, const float *w,
                        float *dZ, double *loss, int nthreads)
    int fm_mse(ptrdiff_t M, ptrdiff_t N, const float *P, const float *T, const float *w,
               float *dP, double *loss, int nthreads)
    void fm_sgd(ptrdiff_t n, float *p, const float *g, double lr, double l2, double momentum,
                int nesterov, float *vel, int nthreads)
    void fm_rmsprop(ptrdiff_t n, float *p, const float *g, float *sq, double lr, double rho,
                    double eps, double l2, int nthreads)
    void fm_adam(ptrdiff_t n, float *p, const float *g, float *m, float *v, long step, double lr,
                 double b1, double b2, double eps, double l2, double wd, int nthreads)
    int fm_cpu_supports(int isa)
    int fm_set_isa(int isa)
    int fm_get_isa()
    const char *fm_isa_name(int isa)
    void fm_get_blocks(int isa, int *mr, int *nr, int *kc, int *mc, int *nc)
    int fm_set_blocks(int isa, int kc, int mc, int nc)
    double fm_measure_peak_gflops(double seconds, int nthreads)

cdef extern from "omp.h" nogil:
    int omp_get_max_threads()

ACTIVATIONS = ("identity", "relu", "leaky_relu", "tanh", "logistic", "gelu")
ISAS = ("generic", "avx2", "avx512")
_F32 = np.dtype(np.float32)

# ---- threads -------------------------------------------------------------------------------------

cdef int _requested = 0      # set_num_threads; 0 = default policy
cdef int _cap = 1            # physical cores, unless OMP_NUM_THREADS was set (then no cap)


def _configure_threads(int cap):
    global _cap
    _cap = cap if cap > 0 else 1 << 20


cdef inline int _threads() noexcept nogil:
    """Threads for the next kernel call: set_num_threads' value, else OpenMP's limit for the calling
    thread (OMP_NUM_THREADS, threadpoolctl.threadpool_limits) capped at the physical cores."""
    if _requested > 0:
        return _requested
    cdef int n = omp_get_max_threads()
    return n if n < _cap else _cap


def set_num_threads(n):
    """Use n threads in every kernel from now on (n >= 1); None restores the default policy:
    the number of physical cores, lowered by OMP_NUM_THREADS or threadpoolctl.threadpool_limits."""
    global _requested
    if n is None:
        _requested = 0
        return
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n_threads must be a positive integer or None, got {n!r}")
    _requested = int(n)


def get_num_threads():
    """The number of threads the next kernel call may use."""
    return _threads()

# ---- ISA dispatch ----------------------------------------------------------------------------------


def _isa_index(str name):
    if name not in ISAS:
        raise ValueError(f"unknown ISA {name!r}; expected one of {', '.join(ISAS)}")
    return ISAS.index(name)


def supported_isas():
    """The ISA paths this CPU can run, from the most portable to the widest."""
    return tuple(n for i, n in enumerate(ISAS) if fm_cpu_supports(i))


def set_isa(str name):
    """Switch every kernel to the named ISA path ('generic', 'avx2', 'avx512'). Raises RuntimeError
    if this CPU cannot run it. Meant for tests and benchmarks; FASTMLP_ISA does it at import."""
    cdef int i = _isa_index(name)
    if fm_set_isa(i) != FM_OK:
        raise RuntimeError(f"this CPU does not support the {name!r} ISA path "
                           f"(supported: {', '.join(supported_isas())})")


def get_isa():
    """The name of the ISA path in use."""
    return fm_isa_name(fm_get_isa()).decode()


def gemm_blocks(str isa=None):
    """The GEMM block sizes of an ISA path (default: the one in use) as a dict mr, nr, kc, mc, nc."""
    cdef int mr, nr, kc, mc, nc
    fm_get_blocks(_isa_index(isa) if isa else fm_get_isa(), &mr, &nr, &kc, &mc, &nc)
    return dict(mr=mr, nr=nr, kc=kc, mc=mc, nc=nc)


def set_gemm_blocks(str isa, int kc, int mc, int nc):
    """Override the cache blocks of an ISA path (for tuning; FASTMLP_GEMM_KC/MC/NC at import).
    Call it before creating any TrainStep: a TrainStep sizes its GEMM workspace once, for the
    blocks in force then (fm_sgemm_work_size)."""
    if fm_set_blocks(_isa_index(isa), kc, mc, nc) != FM_OK:
        raise ValueError(f"GEMM blocks out of range: kc={kc} (1..8192), mc={mc} (1..8192), "
                         f"nc={nc} (1..65536)")


def measure_peak_gflops(double seconds=0.2, n_threads=None):
    """Measure the FMA peak of the ISA path in use: GFLOP/s of a timed loop of independent FMAs
    on n_threads threads (default: get_num_threads())."""
    cdef int nt = _threads() if n_threads is None else int(n_threads)
    cdef double r
    with nogil:
        r = fm_measure_peak_gflops(seconds, nt)
    return r

# ---- validation helpers ----------------------------------------------------------------------------


cdef object _check_f32(object x, str name, int ndim):
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of float32, got {type(x).__name__}")
    if x.dtype != _F32:
        raise TypeError(f"{name} must be float32, got {x.dtype}; "
                        f"convert with {name}.astype(numpy.float32)")
    if x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got a {x.ndim}-D array of shape {x.shape}")
    return x


cdef object _input(object x, str name, int ndim):
    """A C-contiguous float32 array to read (note b)."""
    _check_f32(x, name, ndim)
    return x if x.flags.c_contiguous else np.ascontiguousarray(x)


cdef object _input_shaped(object x, str name, tuple shape):
    x = _input(x, name, len(shape))
    if x.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {x.shape}")
    return x


cdef object _output(object out, str name, tuple shape):
    """A writable C-contiguous float32 array of the given shape (note c); new if out is None."""
    if out is None:
        return np.empty(shape, dtype=np.float32)
    _check_f32(out, name, len(shape))
    if out.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {out.shape}")
    if not out.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (it is written in place)")
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only (it is written in place)")
    return out


cdef int _act_code(object name, str arg) except -1:
    if name is None:
        return 0
    if name not in ACTIVATIONS:
        raise ValueError(f"{arg} must be one of {', '.join(ACTIVATIONS)} or None, got {name!r}")
    return ACTIVATIONS.index(name)


cdef inline const float *_ptr(const float[::1] v) noexcept nogil:
    return &v[0] if v.shape[0] > 0 else NULL


cdef object _weights(object sample_weight, Py_ssize_t m):
    if sample_weight is None:
        return None
    return _input_shaped(sample_weight, "sample_weight", (m,))


cdef object _flat(object x):
    """A 1-D view of a C-contiguous array (for kernels that see a matrix as rows of floats)."""
    return x.reshape(-1)

# ---- GEMM ------------------------------------------------------------------------------------------


cdef object _gemm_operand(object x, str name, bint *trans, Py_ssize_t *ld):
    """Return an array whose rows are contiguous, flipping *trans for a Fortran-ordered matrix
    (note b); *ld receives its leading dimension in elements."""
    _check_f32(x, name, 2)
    cdef Py_ssize_t s0 = x.strides[0], s1 = x.strides[1]
    if x.size > 0:
        if s1 == 4 and s0 >= 4 * x.shape[1] and s0 % 4 == 0:
            ld[0] = s0 // 4
            return x
        if s0 == 4 and s1 >= 4 * x.shape[0] and s1 % 4 == 0:
            trans[0] = not trans[0]
            ld[0] = s1 // 4
            return x.T
    x = np.ascontiguousarray(x)
    ld[0] = max(x.shape[1], 1)
    return x


def matmul(a, b, *, trans_a=False, trans_b=False, bias=None, activation=None,
           negative_slope=0.01, alpha=1.0, beta=0.0, out=None, grad_activation=None, y=None,
           z=None):
    """activation(alpha * op(a) @ op(b) + beta * out + bias), op(x) = x.T if trans_x else x.

    a: float32 (M, K), or (K, M) with trans_a. b: float32 (K, N), or (N, K) with trans_b.
    bias: float32 (N,) or None. activation: one of ACTIVATIONS or None (identity), applied in the
    GEMM's epilogue (fused, in registers). beta != 0 reads out's initial contents; with beta == 0
    out is only written. negative_slope: leaky_relu's slope.

    Backward epilogue: grad_activation='relu' (or any activation) multiplies the product by the
    derivative of that activation, computed from y (the activation's output, shape (M, N)) or,
    for 'gelu', z (its input): with relu, result = (op(a) @ op(b)) * (y > 0). Cannot be combined
    with bias or activation.

    Returns out (a new float32 (M, N) array if out is None).
    """
    cdef bint ta = bool(trans_a), tb = bool(trans_b)
    cdef Py_ssize_t lda = 0, ldb = 0
    a = _gemm_operand(a, "a", &ta, &lda)
    b = _gemm_operand(b, "b", &tb, &ldb)
    cdef Py_ssize_t M = a.shape[1] if ta else a.shape[0]
    cdef Py_ssize_t K = a.shape[0] if ta else a.shape[1]
    cdef Py_ssize_t Kb = b.shape[1] if tb else b.shape[0]
    cdef Py_ssize_t N = b.shape[0] if tb else b.shape[1]
    if K != Kb:
        raise ValueError(f"matmul: inner dimensions differ: op(a) is ({M}, {K}) and op(b) is "
                         f"({Kb}, {N})")
    cdef fm_epilogue ep
    ep.bias = NULL; ep.y = NULL; ep.z = NULL; ep.ldy = N; ep.ldz = N
    ep.act = _act_code(activation, "activation")
    ep.grad_act = _act_code(grad_activation, "grad_activation")
    ep.slope = negative_slope
    if ep.grad_act and (ep.act or bias is not None):
        raise ValueError("matmul: grad_activation cannot be combined with activation or bias")
    if beta != 0 and out is None:
        raise ValueError("matmul: beta != 0 needs out (its initial contents are scaled by beta)")
    if out is not None and (np.may_share_memory(out, a) or np.may_share_memory(out, b)):
        raise ValueError("matmul: out must not overlap a or b")
    out = _output(out, "out", (M, N))
    cdef const float[::1] bias_v, y_v, z_v
    if bias is not None:
        bias = _input_shaped(bias, "bias", (N,))
        bias_v = bias
        ep.bias = _ptr(bias_v)
    if ep.grad_act:
        need = "z" if ep.grad_act == 5 else ("y" if ep.grad_act != 0 else None)
        if need == "y":
            if y is None:
                raise ValueError(f"matmul: grad_activation={grad_activation!r} needs y, the "
                                 "activation's output")
            y_v = _flat(_input_shaped(y, "y", (M, N)))
            ep.y = _ptr(y_v)
        if need == "z":
            if z is None:
                raise ValueError("matmul: grad_activation='gelu' needs z, the activation's input")
            z_v = _flat(_input_shaped(z, "z", (M, N)))
            ep.z = _ptr(z_v)
    cdef const float[:, :] a_v = a
    cdef const float[:, :] b_v = b
    cdef float[::1] c_v = _flat(out)
    cdef const float *pa = &a_v[0, 0] if a.size else NULL
    cdef const float *pb = &b_v[0, 0] if b.size else NULL
    cdef float *pc = &c_v[0] if out.size else NULL
    cdef float al = alpha, be = beta
    cdef int status, nt = _threads()
    if lda == 0:
        lda = 1
    if ldb == 0:
        ldb = 1
    with nogil:
        status = fm_sgemm(ta, tb, M, N, K, al, pa, lda, pb, ldb, be, pc, N if N > 0 else 1,
                          &ep, NULL, nt)
    if status == FM_ENOMEM:
        raise MemoryError("matmul: could not allocate the packing buffers")
    return out

# ---- activations ------------------------------------------------------------------------------------


def bias_activation(z, bias=None, activation="identity", *, negative_slope=0.01, out=None):
    """activation(z + bias). z: float32 (M, N); bias: float32 (N,) or None; out may be z itself
    (in place). Returns out (new if None)."""
    z = _input(z, "z", 2)
    cdef Py_ssize_t M = z.shape[0], N = z.shape[1]
    cdef int act = _act_code(activation, "activation")
    out = _output(out, "out", (M, N))
    cdef const float[::1] z_v = _flat(z)
    cdef const float[::1] b_v
    cdef const float *pb = NULL
    if bias is not None:
        b_v = _input_shaped(bias, "bias", (N,))
        pb = _ptr(b_v)
    cdef float[::1] o_v = _flat(out)
    cdef float s = negative_slope
    cdef int nt = _threads()
    with nogil:
        fm_bias_act_forward(M, N, _ptr(z_v), pb, act, s, &o_v[0] if M * N else NULL, nt)
    return out


def activation_backward(dy, activation, *, y=None, z=None, negative_slope=0.01, out=None):
    """dz = dy * activation'(.): from y, the activation's output (relu, leaky_relu, tanh,
    logistic), or z, its input (gelu); identity copies dy. All float32 (M, N). out may be dy."""
    dy = _input(dy, "dy", 2)
    cdef Py_ssize_t M = dy.shape[0], N = dy.shape[1]
    cdef int act = _act_code(activation, "activation")
    if activation is None:
        raise ValueError("activation_backward: activation must be given")
    cdef const float[::1] y_v, z_v
    cdef const float *py = NULL
    cdef const float *pz = NULL
    if act == 5:
        if z is None:
            raise ValueError("activation_backward: 'gelu' needs z, the activation's input")
        z_v = _flat(_input_shaped(z, "z", (M, N)))
        pz = _ptr(z_v)
    elif act != 0:
        if y is None:
            raise ValueError(f"activation_backward: {activation!r} needs y, the activation's output")
        y_v = _flat(_input_shaped(y, "y", (M, N)))
        py = _ptr(y_v)
    out = _output(out, "out", (M, N))
    cdef const float[::1] d_v = _flat(dy)
    cdef float[::1] o_v = _flat(out)
    cdef float s = negative_slope
    cdef int nt = _threads()
    with nogil:
        fm_act_backward(M, N, _ptr(d_v), py, pz, act, s, &o_v[0] if M * N else NULL, nt)
    return out


def bias_grad(dz, out=None):
    """Column sums of dz (float32 (M, N)) -> (N,), each column summed in row order."""
    dz = _input(dz, "dz", 2)
    cdef Py_ssize_t M = dz.shape[0], N = dz.shape[1]
    out = _output(out, "out", (N,))
    cdef const float[::1] d_v = _flat(dz)
    cdef float[::1] o_v = out
    cdef int nt = _threads()
    with nogil:
        fm_bias_grad(M, N, _ptr(d_v), &o_v[0] if N else NULL, nt)
    return out

# ---- losses -------------------------------------------------------------------------------------------


def softmax_cross_entropy(logits, labels, sample_weight=None, *, grad_out=None):
    """Mean softmax cross-entropy over the batch and its gradient, in one pass.

    logits: float32 (M, N); labels: integers (M,) in [0, N); sample_weight: float32 (M,) or None.
    Returns (loss, grad): loss = (1/M) sum_i w_i (logsumexp(z_i) - z_i[y_i]) as a float (0.0 for
    an empty batch), grad = w_i (softmax(z_i) - onehot(y_i)) / M. grad_out may be logits.
    """
    logits = _input(logits, "logits", 2)
    cdef Py_ssize_t M = logits.shape[0], N = logits.shape[1]
    if not isinstance(labels, np.ndarray) or labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be a numpy array of integers, got "
                        f"{getattr(labels, 'dtype', type(labels).__name__)}")
    if labels.shape != (M,):
        raise ValueError(f"labels must have shape ({M},), got {labels.shape}")
    # Checked before the int32 conversion, which would wrap a label such as 2**32 into range;
    # the kernel checks again (rule 7), for callers that reach it without this binding.
    if M and (labels.min() < 0 or labels.max() >= N):
        raise ValueError(f"labels must be in [0, {N}), got values in "
                         f"[{labels.min()}, {labels.max()}]")
    lab = np.ascontiguousarray(labels, dtype=np.int32)
    w = _weights(sample_weight, M)
    grad_out = _output(grad_out, "grad_out", (M, N))
    cdef const float[::1] z_v = _flat(logits)
    cdef const int32_t[::1] l_v = lab
    cdef const float[::1] w_v
    cdef const float *pw = NULL
    if w is not None:
        w_v = w
        pw = _ptr(w_v)
    cdef float[::1] g_v = _flat(grad_out)
    cdef double loss = 0
    cdef int status, nt = _threads()
    with nogil:
        status = fm_softmax_xent(M, N, _ptr(z_v), &l_v[0] if M else NULL, pw,
                                 &g_v[0] if M * N else NULL, &loss, nt)
    if status != FM_OK:
        raise ValueError(f"labels must be in [0, {N})")
    return loss, grad_out


cdef tuple _pair_loss(str kind, object pred, object target, object sample_weight, object grad_out):
    pname = "logits" if kind == "sigmoid" else "pred"
    pred = _input(pred, pname, 2)
    cdef Py_ssize_t M = pred.shape[0], N = pred.shape[1]
    target = _input_shaped(target, "targets" if kind == "sigmoid" else "target", (M, N))
    w = _weights(sample_weight, M)
    grad_out = _output(grad_out, "grad_out", (M, N))
    cdef const float[::1] p_v = _flat(pred)
    cdef const float[::1] t_v = _flat(target)
    cdef const float[::1] w_v
    cdef const float *pw = NULL
    if w is not None:
        w_v = w
        pw = _ptr(w_v)
    cdef float[::1] g_v = _flat(grad_out)
    cdef float *pg = &g_v[0] if M * N else NULL
    cdef double loss = 0
    cdef int nt = _threads()
    cdef bint sig = kind == "sigmoid"
    with nogil:
        if sig:
            fm_sigmoid_xent(M, N, _ptr(p_v), _ptr(t_v), pw, pg, &loss, nt)
        else:
            fm_mse(M, N, _ptr(p_v), _ptr(t_v), pw, pg, &loss, nt)
    return loss, grad_out


def sigmoid_cross_entropy(logits, targets, sample_weight=None, *, grad_out=None):
    """Mean sigmoid (binary / multi-label) cross-entropy with logits, and its gradient.

    logits, targets: float32 (M, N), targets in [0, 1]; sample_weight: float32 (M,) or None.
    Returns (loss, grad): loss = (1/M) sum_i w_i sum_j (max(z,0) - z t + log1p(exp(-|z|))),
    grad = w_i (sigmoid(z) - t) / M.
    """
    return _pair_loss("sigmoid", logits, targets, sample_weight, grad_out)


def mse_loss(pred, target, sample_weight=None, *, grad_out=None):
    """Half mean squared error (scikit-learn's squared loss) and its gradient.

    pred, target: float32 (M, N); sample_weight: float32 (M,) or None.
    Returns (loss, grad): loss = (1/(M N)) sum_i w_i sum_j (p - t)^2 / 2, grad = w_i (p - t)/(M N).
    """
    return _pair_loss("mse", pred, target, sample_weight, grad_out)

# ---- optimizers -------------------------------------------------------------------------------------


cdef float[::1] _state(object x, str name, tuple shape):
    """An array updated in place (note c), seen as a flat memoryview."""
    if x is None:
        raise ValueError(f"{name} is required: a float32 array shaped like param")
    return _flat(_output(x, name, shape))


cdef tuple _param_grad(object param, object grad):
    """(shape, flat param to update, flat grad to read)."""
    if not isinstance(param, np.ndarray):
        raise TypeError(f"param must be a numpy.ndarray of float32, got {type(param).__name__}")
    shape = param.shape
    return shape, _flat(_output(param, "param", shape)), _flat(_input_shaped(grad, "grad", shape))


def sgd_update(param, grad, *, lr, l2=0.0, momentum=0.0, nesterov=False, velocity=None):
    """SGD step in place (scikit-learn's momentum form). g = grad + l2 * param; momentum == 0:
    param -= lr g; else velocity = momentum velocity - lr g and param += velocity (or, Nesterov,
    param += momentum velocity - lr g). velocity: float32 like param, needed when momentum != 0."""
    shape, p, g = _param_grad(param, grad)
    cdef float[::1] p_v = p, v_v
    cdef const float[::1] g_v = g
    cdef float *pv = NULL
    if momentum != 0:
        if velocity is None:
            raise ValueError("sgd_update: momentum != 0 needs velocity (float32, like param)")
        v_v = _state(velocity, "velocity", shape)
        pv = &v_v[0] if v_v.shape[0] else NULL
    cdef Py_ssize_t n = p_v.shape[0]
    cdef double lr_ = lr, l2_ = l2, mom = momentum
    cdef int nest = bool(nesterov), nt = _threads()
    if n:
        with nogil:
            fm_sgd(n, &p_v[0], &g_v[0], lr_, l2_, mom, nest, pv, nt)


def rmsprop_update(param, grad, square_avg, *, lr, rho=0.9, eps=1e-8, l2=0.0):
    """RMSProp step in place: g = grad + l2 param; square_avg = rho square_avg + (1-rho) g^2;
    param -= lr g / (sqrt(square_avg) + eps)."""
    shape, p, g = _param_grad(param, grad)
    cdef float[::1] p_v = p
    cdef const float[::1] g_v = g
    cdef float[::1] s_v = _state(square_avg, "square_avg", shape)
    cdef Py_ssize_t n = p_v.shape[0]
    cdef double lr_ = lr, rho_ = rho, eps_ = eps, l2_ = l2
    cdef int nt = _threads()
    if n:
        with nogil:
            fm_rmsprop(n, &p_v[0], &g_v[0], &s_v[0], lr_, rho_, eps_, l2_, nt)


def adam_update(param, grad, m, v, *, step, lr, beta1=0.9, beta2=0.999, eps=1e-8, l2=0.0,
                weight_decay=0.0):
    """Adam step in place (AdamW when weight_decay > 0). g = grad + l2 param;
    m = beta1 m + (1-beta1) g; v = beta2 v + (1-beta2) g^2;
    lr_t = lr sqrt(1-beta2^step) / (1-beta1^step);
    param = param (1 - lr weight_decay) - lr_t m / (sqrt(v) + eps). step counts from 1."""
    if not isinstance(step, (int, np.integer)) or step < 1:
        raise ValueError(f"adam_update: step must be an integer >= 1, got {step!r}")
    shape, p, g = _param_grad(param, grad)
    cdef float[::1] p_v = p
    cdef const float[::1] g_v = g
    cdef float[::1] m_v = _state(m, "m", shape)
    cdef float[::1] v_v = _state(v, "v", shape)
    cdef Py_ssize_t n = p_v.shape[0]
    cdef long t = step
    cdef double lr_ = lr, b1 = beta1, b2 = beta2, eps_ = eps, l2_ = l2, wd = weight_decay
    cdef int nt = _threads()
    if n:
        with nogil:
            fm_adam(n, &p_v[0], &g_v[0], &m_v[0], &v_v[0], t, lr_, b1, b2, eps_, l2_, wd, nt)


include "_profile.pxi"
include "_train.pxi"
