# cython: language_level=3
"""Bindings of the C kernels (csrc/fastmlp.h): validate, release the GIL, call. The sparse first
layer's bindings (_sparse.pxi), the normalization kernels' (_norm.pxi), the profiler's
(_profile.pxi) and the native training step (_train_step.pxi) are included here: one extension
module, one copy of the C library's state.

Design notes:
a) Inputs must be float32 (integer labels excepted): a kernel never converts dtypes behind the
   user's back, because a silent float64 -> float32 copy hides both a cost and a rounding. The
   error says how to convert. The estimators convert, and document it. (A sparse matrix's data
   is the exception: _sparse.pxi, note b.)
b) Layout is not the user's problem: a Fortran-ordered matrix is a transposed C-ordered one
   (GEMM flips the transpose flag instead of copying), rows with a gap (a column slice) are passed
   with their leading dimension, anything else is copied to C order. Read-only arrays work.
c) Arrays the kernels write (out=, optimizer parameters and state) must be C-contiguous, writable
   float32 of the exact shape: writing into a temporary copy would silently lose the result.
d) Every error names the argument and what was expected. The C kernels trust these checks, and
   still refuse out-of-range labels themselves (rule 7 of fastmlp.h).
e) Thread count: resolved per call by _threads() (see fastmlp/core/machine.py for the policy) and
   passed explicitly to the kernel.
"""
import math
import os

import numpy as np

cimport numpy as cnp
from libc.stdint cimport int32_t, int64_t, uintptr_t

cnp.import_array()

from fastmlp.core.contract cimport *

cdef extern from "omp.h" nogil:
    int omp_get_max_threads()

# ---- names: every tuple below is read from the C side, in the order of its enum ----------------


cdef tuple _names(const char *(*name)(int) noexcept nogil, int count):
    return tuple(name(i).decode() for i in range(count))


ACTIVATIONS = _names(fm_activation_name, FM_ACT_COUNT)   # index = FM_ACT_* value
ISAS = _names(fm_isa_name, FM_ISA_COUNT)                  # index = FM_ISA_*
GEMM_PATHS = _names(fm_path_name, FM_PATH_COUNT)          # index = FM_PATH_*
KERNELS = _names(fm_kernel_name, FM_K_COUNT)              # index = FM_K_*: the Python names
if "unknown" in ACTIVATIONS + ISAS + GEMM_PATHS + KERNELS:
    raise ImportError("fastmlp's compiled core has an enum value without a name (csrc/dispatch.c)")

# ---- threads -------------------------------------------------------------------------------------
# One validator for every thread count (_thread_count); the count a call uses is, in order: the
# calling Python thread's own (local_num_threads, what the estimators' n_threads sets), the
# process-wide set_num_threads, else OpenMP's limit for the calling thread capped at the
# physical cores. All are at most MAX_THREADS: more only oversubscribes the machine, and each
# thread libgomp creates reserves a stack (with 1,000 of them a memory limit kills the process).

cdef extern from *:
    """
    static __thread int fastmlp_local_threads; /* local_num_threads; 0: none */
    """
    int fastmlp_local_threads

MAX_THREADS = min(FM_MAX_THREADS, max(64, 4 * (os.cpu_count() or 1)))
cdef int _max_threads = MAX_THREADS
cdef int _requested = 0      # set_num_threads; 0 = default policy
cdef int _cap = 1            # physical cores, unless OMP_NUM_THREADS was set (then MAX_THREADS)


def _configure_threads(int cap):
    global _cap
    _cap = cap if 0 < cap < _max_threads else _max_threads


cdef inline int _threads() noexcept nogil:
    """Threads for the next kernel call (see above)."""
    if fastmlp_local_threads > 0:
        return fastmlp_local_threads
    if _requested > 0:
        return _requested
    cdef int n = omp_get_max_threads()
    return n if n < _cap else _cap


cdef int _thread_count(object n, str name) except -1:
    """n as a thread count: an integer in [1, MAX_THREADS], or a ValueError / TypeError naming
    the argument."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"{name} must be an integer in [1, {MAX_THREADS}] or None, got {n!r}")
    if not 1 <= n <= _max_threads:
        raise ValueError(f"{name} must be in [1, {MAX_THREADS}] (MAX_THREADS: 4 per logical "
                         f"CPU, at least 64), got {n}")
    return int(n)


cdef extern from "<dlfcn.h>" nogil:
    ctypedef struct Dl_info:
        const char *dli_fname
    int dladdr(const void *addr, Dl_info *info)


def openmp_library():
    """The path of the shared library that provides omp_get_max_threads to fastmlp's compiled
    core (its own OpenMP runtime), or None."""
    cdef Dl_info d
    if dladdr(<const void *>omp_get_max_threads, &d) == 0 or d.dli_fname == NULL:
        return None
    return d.dli_fname.decode("utf-8", "replace")


def set_num_threads(n):
    """Use n threads in every kernel from now on, in every Python thread (1 <= n <= MAX_THREADS);
    None restores the default policy: the number of physical cores, lowered by OMP_NUM_THREADS
    or threadpoolctl.threadpool_limits."""
    global _requested
    _requested = 0 if n is None else _thread_count(n, "n_threads")


def get_num_threads():
    """The number of threads the next kernel call from this Python thread may use."""
    return _threads()


class local_num_threads:
    """with local_num_threads(n): kernels called from this Python thread use n threads inside the
    block (None: leave the setting as it is); other Python threads and the process-wide
    set_num_threads are not touched, so concurrent fits with different n_threads do not change
    each other's (the estimators' n_threads is this)."""

    def __init__(self, n):
        self.n = None if n is None else _thread_count(n, "n_threads")

    def __enter__(self):
        self.old = fastmlp_local_threads
        if self.n is not None:
            _set_local_threads(self.n)
        return self

    def __exit__(self, *exc):
        _set_local_threads(self.old)
        return False


def _set_local_threads(int n):
    global fastmlp_local_threads
    fastmlp_local_threads = n

# ---- ISA dispatch ----------------------------------------------------------------------------------


def _isa_index(str name):
    if name not in ISAS:
        raise ValueError(f"unknown ISA {name!r}; expected one of {', '.join(ISAS)}")
    return ISAS.index(name)


def supported_isas():
    """The ISA paths this CPU can run, from the most portable to the widest."""
    return tuple(n for i, n in enumerate(ISAS) if fm_cpu_supports(i))


def set_isa(str name):
    """Switch every kernel to the named ISA path (one of ISAS). Raises RuntimeError
    if this CPU cannot run it. Meant for tests and benchmarks; FASTMLP_ISA does it at import."""
    cdef int i = _isa_index(name)
    if fm_set_isa(i) != FM_OK:
        raise RuntimeError(f"this CPU does not support the {name!r} ISA path "
                           f"(supported: {', '.join(supported_isas())})")


def get_isa():
    """The name of the ISA path in use."""
    return ISAS[fm_get_isa()]


def gemm_blocks(str isa=None):
    """The GEMM block sizes of an ISA path (default: the one in use) as a dict mr, nr, kc, mc, nc."""
    cdef int mr, nr, kc, mc, nc
    if fm_get_blocks(_isa_index(isa) if isa else fm_get_isa(), &mr, &nr, &kc, &mc, &nc) != FM_OK:
        raise RuntimeError(f"the {isa!r} ISA path is not in this build")
    return dict(mr=mr, nr=nr, kc=kc, mc=mc, nc=nc)


def set_gemm_blocks(str isa, kc, mc, nc):
    """Override the cache blocks of an ISA path (for tuning; FASTMLP_GEMM_KC/MC/NC at import):
    kc and mc in [1, 8192], nc in [1, 65536]. Safe at any time: a product whose blocks need
    more scratch than its caller's workspace (a TrainStep made before) allocates its own."""
    cdef int k = _integer(kc, "kc", 1, 8192), m = _integer(mc, "mc", 1, 8192)
    cdef int n = _integer(nc, "nc", 1, 65536)
    if fm_set_blocks(_isa_index(isa), k, m, n) != FM_OK:
        raise RuntimeError(f"the {isa!r} ISA path is not in this build")


def measure_peak_gflops(seconds=0.2, n_threads=None):
    """Measure the FMA peak of the ISA path in use: GFLOP/s of a timed loop of independent FMAs
    for seconds (0 < seconds <= 60) on n_threads threads (default: get_num_threads())."""
    cdef double secs = _real(seconds, "seconds", 0.0, 60.0, True)
    cdef int nt = _threads() if n_threads is None else _thread_count(n_threads, "n_threads")
    cdef double r
    with nogil:
        r = fm_measure_peak_gflops(secs, nt)
    return r

# ---- validation helpers ----------------------------------------------------------------------------
# They read arrays through NumPy's C API: x.dtype, x.shape or x.flags each build Python objects,
# which cost more than a small kernel call itself. Scalars go through _real / _integer, so a
# wrong one is an error naming it (not Cython's bare "must be real number, not str") and a NaN or
# infinite hyperparameter never reaches a kernel.


cdef double _real(object x, str name, double lo=-math.inf, double hi=math.inf,
                  bint open_low=False, bint open_high=False) except? -1.0:
    """x as a finite float in [lo, hi] (open at an end on request), or an error naming it."""
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__} {x!r}")
    cdef double v = float(x)
    if not (math.isfinite(v) and (v > lo if open_low else v >= lo)
            and (v < hi if open_high else v <= hi)):
        interval = f"{'(' if open_low else '['}{lo:g}, {hi:g}{')' if open_high else ']'}"
        raise ValueError(f"{name} must be a finite number in {interval}, got {x!r}")
    return v


cdef Py_ssize_t _integer(object x, str name, Py_ssize_t lo, Py_ssize_t hi) except? -1:
    """x as an integer in [lo, hi], or an error naming it."""
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(x).__name__} {x!r}")
    if not lo <= x <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {x}")
    return int(x)


cdef str _from(str like):
    """The end of a shape error: where the expected shape comes from."""
    return f" (the shape of {like})" if like else ""


cdef cnp.ndarray _check_f32(object x, str name, int ndim, str like=None):
    if not cnp.PyArray_Check(x):
        raise TypeError(f"{name} must be a numpy.ndarray of float32, got {type(x).__name__}")
    cdef cnp.ndarray a = <cnp.ndarray>x
    # a byte-swapped float32 ('>f4' here) is not float32 to the kernels
    if cnp.PyArray_TYPE(a) != cnp.NPY_FLOAT32 or not cnp.PyArray_ISNOTSWAPPED(a):
        raise TypeError(f"{name} must be float32, got {x.dtype}; "
                        f"convert with {name}.astype(numpy.float32)")
    if cnp.PyArray_NDIM(a) != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got a {x.ndim}-D array of shape "
                         f"{x.shape}{_from(like)}")
    return a


cdef bint _has_shape(cnp.ndarray x, tuple shape):
    """x.shape == shape, for an x of len(shape) dimensions."""
    cdef Py_ssize_t i
    for i in range(len(shape)):
        if cnp.PyArray_DIM(x, i) != <cnp.npy_intp>shape[i]:
            return False
    return True


cdef cnp.ndarray _input(object x, str name, int ndim, str like=None):
    """A C-contiguous float32 array to read (note b)."""
    cdef cnp.ndarray a = _check_f32(x, name, ndim, like)
    return a if cnp.PyArray_IS_C_CONTIGUOUS(a) else np.ascontiguousarray(a)


cdef cnp.ndarray _input_shaped(object x, str name, tuple shape, str like=None):
    """_input of a given shape, which comes from the argument(s) named like."""
    cdef cnp.ndarray a = _input(x, name, len(shape), like)
    if not _has_shape(a, shape):
        raise ValueError(f"{name} must have shape {shape}, got {x.shape}{_from(like)}")
    return a


cdef cnp.ndarray _output(object out, str name, tuple shape, str like=None):
    """A writable C-contiguous float32 array of the given shape (note c); new if out is None."""
    cdef cnp.npy_intp dims[cnp.NPY_MAXDIMS]
    cdef Py_ssize_t i
    if out is None:
        for i in range(len(shape)):
            dims[i] = shape[i]
        return cnp.PyArray_EMPTY(len(shape), dims, cnp.NPY_FLOAT32, 0)
    cdef cnp.ndarray a = _check_f32(out, name, len(shape), like)
    if not _has_shape(a, shape):
        raise ValueError(f"{name} must have shape {shape}, got {out.shape}{_from(like)}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(a):
        raise ValueError(f"{name} must be C-contiguous (it is written in place)")
    if not cnp.PyArray_ISWRITEABLE(a):
        raise ValueError(f"{name} is read-only (it is written in place)")
    return a


cdef int _act_code(object name, str arg) except -1:
    """The FM_ACT_* value of an activation name (None: identity)."""
    if name is None:
        return FM_ACT_IDENTITY
    try:
        return ACTIVATIONS.index(name)
    except ValueError:
        raise ValueError(f"{arg} must be one of {', '.join(ACTIVATIONS)} or None, "
                         f"got {name!r}") from None


cdef inline float *_ptr(cnp.ndarray x) noexcept nogil:
    """x's data, or NULL if x is None or empty."""
    return <float *>cnp.PyArray_DATA(x) if x is not None and cnp.PyArray_SIZE(x) else NULL


cdef cnp.ndarray _weights(object sample_weight, Py_ssize_t m, str like):
    if sample_weight is None:
        return None
    return _input_shaped(sample_weight, "sample_weight", (m,), like)



# ---- GEMM ------------------------------------------------------------------------------------------


cdef void _extent(cnp.ndarray x, uintptr_t *lo, uintptr_t *hi) noexcept:
    """[lo, hi): the bytes x spans, from its data pointer, shape and strides; lo == hi if empty."""
    cdef cnp.npy_intp low = 0, high = cnp.PyArray_ITEMSIZE(x), d
    cdef int i
    lo[0] = hi[0] = <uintptr_t>cnp.PyArray_DATA(x)
    for i in range(cnp.PyArray_NDIM(x)):
        if cnp.PyArray_DIM(x, i) == 0:
            return
        d = cnp.PyArray_STRIDE(x, i) * (cnp.PyArray_DIM(x, i) - 1)
        if d > 0:
            high += d
        else:
            low += d
    lo[0] += <uintptr_t>low
    hi[0] += <uintptr_t>high


cdef bint _overlap(cnp.ndarray x, cnp.ndarray y) noexcept:
    """np.may_share_memory(x, y), which also compares extents only."""
    cdef uintptr_t x0, x1, y0, y1
    _extent(x, &x0, &x1)
    _extent(y, &y0, &y1)
    return x0 < x1 and y0 < y1 and x0 < y1 and y0 < x1


cdef bint _same(cnp.ndarray x, cnp.ndarray y) noexcept:
    """x and y are the same memory seen the same way (an in-place call)."""
    cdef int i
    if (cnp.PyArray_DATA(x) != cnp.PyArray_DATA(y) or cnp.PyArray_NDIM(x) != cnp.PyArray_NDIM(y)
            or cnp.PyArray_TYPE(x) != cnp.PyArray_TYPE(y)):
        return False
    for i in range(cnp.PyArray_NDIM(x)):
        if (cnp.PyArray_DIM(x, i) != cnp.PyArray_DIM(y, i)
                or cnp.PyArray_STRIDE(x, i) != cnp.PyArray_STRIDE(y, i)):
            return False
    return True


cdef int _no_overlap(str who, cnp.ndarray out, str out_name, tuple inputs,
                     cnp.ndarray same_ok=None) except -1:
    """Refuse an array a kernel writes (out) that overlaps one it reads: inputs is a tuple of
    (array or None, name), the arrays as the kernel gets them (a copy made on the way aliases
    nothing). same_ok: the input the contract lets out be exactly, for an in-place call (an
    elementwise kernel reads each element before it writes it)."""
    cdef cnp.ndarray x
    for arr, name in inputs:
        if arr is None:
            continue
        x = <cnp.ndarray>arr
        if same_ok is not None and x is same_ok and _same(out, x):
            continue
        if _overlap(out, x):
            allowed = (f" (it may be {name} itself, for an in-place call)"
                       if same_ok is not None and x is same_ok else "")
            raise ValueError(f"{who}: {out_name} must not overlap {name}{allowed}: the kernel "
                             f"would read values it has already overwritten")
    return 0


cdef cnp.ndarray _gemm_operand(object x, str name, bint *trans, Py_ssize_t *ld):
    """Return an array whose rows are contiguous, flipping *trans for a Fortran-ordered matrix
    (note b); *ld receives its leading dimension in elements."""
    cdef cnp.ndarray a = _check_f32(x, name, 2)
    cdef Py_ssize_t m = cnp.PyArray_DIM(a, 0), n = cnp.PyArray_DIM(a, 1)
    cdef Py_ssize_t s0 = cnp.PyArray_STRIDE(a, 0), s1 = cnp.PyArray_STRIDE(a, 1)
    # The stride of a dimension of length 1 means nothing (NumPy may keep any): such an array
    # keeps the caller's transpose flag, which can decide the summation order (fastmlp.h rule 4).
    if n == 1:
        s1 = 4
    if m == 1 and s0 < 4 * n:
        s0 = 4 * n
    if m > 0 and n > 0:
        if s1 == 4 and s0 >= 4 * n and s0 % 4 == 0:
            ld[0] = s0 // 4
            return a
        if s0 == 4 and s1 >= 4 * m and s1 % 4 == 0:
            trans[0] = not trans[0]
            ld[0] = s1 // 4
            return a.T
    ld[0] = max(n, 1)
    return np.ascontiguousarray(a)


cdef struct _Product:
    bint ta, tb                 # the transpose flags, after _gemm_operand
    Py_ssize_t lda, ldb
    Py_ssize_t M, N, K


cdef int _product_shape(cnp.ndarray A, cnp.ndarray B, _Product *g, str who) except -1:
    """M, N, K of op(A) @ op(B) into g; a ValueError naming who if the inner dimensions differ."""
    g.M = cnp.PyArray_DIM(A, 1 if g.ta else 0)
    g.K = cnp.PyArray_DIM(A, 0 if g.ta else 1)
    g.N = cnp.PyArray_DIM(B, 0 if g.tb else 1)
    cdef Py_ssize_t Kb = cnp.PyArray_DIM(B, 1 if g.tb else 0)
    if g.K != Kb:
        raise ValueError(f"{who}: inner dimensions differ: op(a) is ({g.M}, {g.K}) and op(b) is "
                         f"({Kb}, {g.N})")
    return 0


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
    cdef _Product g
    g.ta, g.tb = trans_a, trans_b
    cdef cnp.ndarray A = _gemm_operand(a, "a", &g.ta, &g.lda)
    cdef cnp.ndarray B = _gemm_operand(b, "b", &g.tb, &g.ldb)
    _product_shape(A, B, &g, "matmul")
    cdef bint ta = g.ta, tb = g.tb
    cdef Py_ssize_t M = g.M, N = g.N, K = g.K, lda = g.lda, ldb = g.ldb
    cdef fm_epilogue ep
    ep.bias = NULL; ep.y = NULL; ep.z = NULL; ep.ldy = N; ep.ldz = N; ep.update = NULL
    ep.act = _act_code(activation, "activation")
    ep.grad_act = _act_code(grad_activation, "grad_activation")
    ep.slope = _real(negative_slope, "negative_slope")
    cdef float al = _real(alpha, "alpha"), be = _real(beta, "beta")
    if ep.grad_act != FM_ACT_IDENTITY and (ep.act != FM_ACT_IDENTITY or bias is not None):
        raise ValueError("matmul: grad_activation cannot be combined with activation or bias")
    if be != 0 and out is None:
        raise ValueError("matmul: beta != 0 needs out (its initial contents are scaled by beta)")
    cdef cnp.ndarray C = _output(out, "out", (M, N), "op(a) @ op(b)")
    if bias is not None:
        bias = _input_shaped(bias, "bias", (N,), "op(b)'s columns")
        ep.bias = _ptr(bias)
    if ep.grad_act == FM_ACT_GELU:
        if z is None:
            raise ValueError("matmul: grad_activation='gelu' needs z, the activation's input")
        z = _input_shaped(z, "z", (M, N), "op(a) @ op(b)")
        ep.z = _ptr(z)
    elif ep.grad_act != FM_ACT_IDENTITY:
        if y is None:
            raise ValueError(f"matmul: grad_activation={grad_activation!r} needs y, the "
                             "activation's output")
        y = _input_shaped(y, "y", (M, N), "op(a) @ op(b)")
        ep.y = _ptr(y)
    # C is written block by block over K while A, B (and, on the last block, bias, y, z) are read
    _no_overlap("matmul", C, "out", ((A, "a"), (B, "b"), (bias, "bias"), (y, "y"), (z, "z")))
    cdef int status, nt = _threads()
    with nogil:
        status = fm_matmul(ta, tb, M, N, K, al, _ptr(A), lda, _ptr(B), ldb, be, _ptr(C),
                           N if N > 0 else 1, &ep, NULL, 0, nt)
    if status == FM_ENOMEM:
        raise MemoryError("matmul: could not allocate the packing buffers")
    return C


def matmul_plan(a, b, *, trans_a=False, trans_b=False):
    """How matmul(a, b, trans_a=..., trans_b=...) would run on the active ISA with the current
    thread count, decided from the shapes, layouts and flags alone (fm_plan_matmul; no data is
    read). Returns a dict: path (one of GEMM_PATHS: "blocked", "blocked_ct" computes C^T, "dot"
    the narrow-N dot products), threads, split ("n" or "m": what the threads divide), pack_b,
    kc (the length of K's equal blocks; 0 on the dot path, which does not block K), mc, nc,
    a_floats and b_floats (scratch per thread)."""
    cdef _Product g
    g.ta, g.tb = trans_a, trans_b
    cdef cnp.ndarray A = _gemm_operand(a, "a", &g.ta, &g.lda)
    cdef cnp.ndarray B = _gemm_operand(b, "b", &g.tb, &g.ldb)
    _product_shape(A, B, &g, "matmul_plan")
    cdef fm_matmul_plan p
    fm_plan_matmul(g.ta, g.tb, g.M, g.N, g.K, g.lda, g.ldb, _threads(), &p)
    return dict(path=GEMM_PATHS[p.path], threads=p.threads, split="n" if p.split_n else "m",
                pack_b=bool(p.pack_b), kc=p.kc, mc=p.mc, nc=p.nc, a_floats=p.a_floats,
                b_floats=p.b_floats)


# ---- activations ------------------------------------------------------------------------------------


def bias_activation(z, bias=None, activation="identity", *, negative_slope=0.01, out=None):
    """activation(z + bias). z: float32 (M, N); bias: float32 (N,) or None; out may be z itself
    (in place). Returns out (new if None)."""
    cdef cnp.ndarray Z = _input(z, "z", 2)
    cdef Py_ssize_t M = cnp.PyArray_DIM(Z, 0), N = cnp.PyArray_DIM(Z, 1)
    cdef int act = _act_code(activation, "activation")
    cdef cnp.ndarray O = _output(out, "out", (M, N), "z")
    cdef const float *pb = NULL
    if bias is not None:
        bias = _input_shaped(bias, "bias", (N,), "z's columns")
        pb = _ptr(bias)
    cdef float s = _real(negative_slope, "negative_slope")
    # elementwise: out may be z itself; bias is read for every row
    _no_overlap("bias_activation", O, "out", ((Z, "z"), (bias, "bias")), same_ok=Z)
    cdef int nt = _threads()
    with nogil:
        fm_bias_activation(M, N, _ptr(Z), pb, act, s, _ptr(O), nt)
    return O


def activation_backward(dy, activation, *, y=None, z=None, negative_slope=0.01, out=None):
    """dz = dy * activation'(.): from y, the activation's output (relu, leaky_relu, tanh,
    logistic), or z, its input (gelu); identity copies dy. All float32 (M, N). out may be dy."""
    cdef cnp.ndarray D = _input(dy, "dy", 2)
    cdef Py_ssize_t M = cnp.PyArray_DIM(D, 0), N = cnp.PyArray_DIM(D, 1)
    cdef int act = _act_code(activation, "activation")
    if activation is None:
        raise ValueError("activation_backward: activation must be given")
    cdef const float *py = NULL
    cdef const float *pz = NULL
    if act == FM_ACT_GELU:
        if z is None:
            raise ValueError("activation_backward: 'gelu' needs z, the activation's input")
        z = _input_shaped(z, "z", (M, N), "dy")
        pz = _ptr(z)
    elif act != FM_ACT_IDENTITY:
        if y is None:
            raise ValueError(f"activation_backward: {activation!r} needs y, the activation's output")
        y = _input_shaped(y, "y", (M, N), "dy")
        py = _ptr(y)
    cdef cnp.ndarray O = _output(out, "out", (M, N), "dy")
    cdef float s = _real(negative_slope, "negative_slope")
    _no_overlap("activation_backward", O, "out", ((D, "dy"), (y, "y"), (z, "z")), same_ok=D)
    cdef int nt = _threads()
    with nogil:
        fm_activation_backward(M, N, _ptr(D), py, pz, act, s, _ptr(O), nt)
    return O


def bias_grad(dz, out=None):
    """Column sums of dz (float32 (M, N)) -> (N,), each column summed in row order."""
    cdef cnp.ndarray D = _input(dz, "dz", 2)
    cdef Py_ssize_t M = cnp.PyArray_DIM(D, 0), N = cnp.PyArray_DIM(D, 1)
    cdef cnp.ndarray O = _output(out, "out", (N,), "dz's columns")
    _no_overlap("bias_grad", O, "out", ((D, "dz"),))
    cdef int nt = _threads()
    with nogil:
        fm_bias_grad(M, N, _ptr(D), _ptr(O), nt)
    return O

# ---- losses -------------------------------------------------------------------------------------------


def softmax_cross_entropy(logits, labels, sample_weight=None, *, grad_out=None):
    """Mean softmax cross-entropy over the batch and its gradient, in one pass.

    logits: float32 (M, N); labels: integers (M,) in [0, N); sample_weight: float32 (M,) or None.
    Returns (loss, grad): loss = (1/M) sum_i w_i (logsumexp(z_i) - z_i[y_i]) as a float (0.0 for
    an empty batch), grad = w_i (softmax(z_i) - onehot(y_i)) / M. grad_out may be logits.
    """
    cdef cnp.ndarray Z = _input(logits, "logits", 2)
    cdef Py_ssize_t M = cnp.PyArray_DIM(Z, 0), N = cnp.PyArray_DIM(Z, 1)
    if not isinstance(labels, np.ndarray) or labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be a numpy array of integers, got "
                        f"{getattr(labels, 'dtype', type(labels).__name__)}")
    if labels.shape != (M,):
        raise ValueError(f"labels must have shape ({M},), got {labels.shape} (the rows of "
                         "logits)")
    # Checked before the int32 conversion, which would wrap a label such as 2**32 into range;
    # the kernel checks again (rule 7), for callers that reach it without this binding.
    if M and (labels.min() < 0 or labels.max() >= N):
        raise ValueError(f"labels must be in [0, {N}), got values in "
                         f"[{labels.min()}, {labels.max()}]")
    cdef cnp.ndarray lab = np.ascontiguousarray(labels, dtype=np.int32)
    cdef cnp.ndarray w = _weights(sample_weight, M, "logits' rows")
    cdef cnp.ndarray G = _output(grad_out, "grad_out", (M, N), "logits")
    # a row's gradient is written after the row is read: grad_out may be logits itself
    _no_overlap("softmax_cross_entropy", G, "grad_out",
                ((Z, "logits"), (lab, "labels"), (w, "sample_weight")), same_ok=Z)
    cdef double loss = 0
    cdef int status, nt = _threads()
    with nogil:
        status = fm_softmax_cross_entropy(M, N, _ptr(Z), <const int32_t *>_ptr(lab), _ptr(w),
                                          _ptr(G), &loss, nt)
    if status != FM_OK:
        raise ValueError(f"labels must be in [0, {N})")
    return loss, G


cdef tuple _pair_loss(str kind, object pred, object target, object sample_weight, object grad_out):
    # sigmoid_cross_entropy and poisson_loss take (logits, targets), mse_loss (pred, target)
    cdef bint sig = kind != "mse_loss"
    cdef cnp.ndarray P = _input(pred, "logits" if sig else "pred", 2)
    cdef Py_ssize_t M = cnp.PyArray_DIM(P, 0), N = cnp.PyArray_DIM(P, 1)
    cdef str first = "logits" if sig else "pred"
    cdef cnp.ndarray T = _input_shaped(target, "targets" if sig else "target", (M, N), first)
    cdef cnp.ndarray w = _weights(sample_weight, M, first + "' rows")
    cdef cnp.ndarray G = _output(grad_out, "grad_out", (M, N), first)
    _no_overlap(kind, G, "grad_out", ((P, "logits" if sig else "pred"),
                                      (T, "targets" if sig else "target"), (w, "sample_weight")),
                same_ok=P)
    cdef double loss = 0
    cdef int nt = _threads()
    cdef int kernel = KERNELS.index(kind)
    with nogil:
        if kernel == FM_K_SIGMOID_CROSS_ENTROPY:
            fm_sigmoid_cross_entropy(M, N, _ptr(P), _ptr(T), _ptr(w), _ptr(G), &loss, nt)
        elif kernel == FM_K_POISSON_LOSS:
            fm_poisson_loss(M, N, _ptr(P), _ptr(T), _ptr(w), _ptr(G), &loss, nt)
        else:
            fm_mse_loss(M, N, _ptr(P), _ptr(T), _ptr(w), _ptr(G), &loss, nt)
    return loss, G


def sigmoid_cross_entropy(logits, targets, sample_weight=None, *, grad_out=None):
    """Mean sigmoid (binary / multi-label) cross-entropy with logits, and its gradient.

    logits, targets: float32 (M, N), targets in [0, 1]; sample_weight: float32 (M,) or None.
    Returns (loss, grad): loss = (1/M) sum_i w_i sum_j (max(z,0) - z t + log1p(exp(-|z|))),
    grad = w_i (sigmoid(z) - t) / M.
    """
    return _pair_loss("sigmoid_cross_entropy", logits, targets, sample_weight, grad_out)


def mse_loss(pred, target, sample_weight=None, *, grad_out=None):
    """Half mean squared error (scikit-learn's squared loss) and its gradient.

    pred, target: float32 (M, N); sample_weight: float32 (M,) or None.
    Returns (loss, grad): loss = (1/(M N)) sum_i w_i sum_j (p - t)^2 / 2, grad = w_i (p - t)/(M N).
    """
    return _pair_loss("mse_loss", pred, target, sample_weight, grad_out)


def poisson_loss(logits, targets, sample_weight=None, *, grad_out=None):
    """Half Poisson deviance with a log link (scikit-learn's poisson loss), and its gradient.

    logits z (the log of the predicted means), targets t >= 0: float32 (M, N); sample_weight:
    float32 (M,) or None. Returns (loss, grad): loss = (1/M) sum_i w_i sum_j (xlogy(t, t) - t z
    - t + exp(z)), grad = w_i (exp(z) - t) / M. A negative target makes the loss NaN.
    """
    return _pair_loss("poisson_loss", logits, targets, sample_weight, grad_out)

# ---- optimizers -------------------------------------------------------------------------------------
# The hyperparameters' ranges, checked where they enter the native layer (here and in TrainStep):
# NaN, inf or an out-of-range value would write garbage into every parameter without a loss to
# show it (a beta of 1 divides by zero in Adam's bias correction).


cdef double _lr(object x) except? -1.0:
    return _real(x, "lr", 0.0)


cdef double _momentum(object x) except? -1.0:
    return _real(x, "momentum", 0.0, 1.0)


cdef double _decay_rate(object x, str name) except? -1.0:
    """rho, beta1, beta2: in [0, 1)."""
    return _real(x, name, 0.0, 1.0, False, True)


cdef double _eps(object x) except? -1.0:
    return _real(x, "eps", 0.0, math.inf, True)


cdef cnp.ndarray _state(object x, str name, tuple shape):
    """An array updated in place (note c)."""
    if x is None:
        raise ValueError(f"{name} is required: a float32 array shaped like param")
    return _output(x, name, shape, "param")


cdef tuple _param_grad(object param, object grad):
    """(shape, param to update, grad to read)."""
    if not isinstance(param, np.ndarray):
        raise TypeError(f"param must be a numpy.ndarray of float32, got {type(param).__name__}")
    shape = param.shape
    return shape, _output(param, "param", shape), _input_shaped(grad, "grad", shape, "param")


cdef int _distinct(str who, tuple written, tuple read) except -1:
    """Every array an optimizer writes must overlap no other array of its call: one pass reads
    param, grad and state element by element while it writes param and state (m is v, or a state
    aliasing param, would mix them)."""
    cdef Py_ssize_t i
    for i in range(len(written)):
        if written[i][0] is not None:
            _no_overlap(who, written[i][0], written[i][1], written[i + 1:] + read)
    return 0


def sgd_update(param, grad, *, lr, l2=0.0, momentum=0.0, nesterov=False, velocity=None):
    """SGD step in place (scikit-learn's momentum form). g = grad + l2 * param; momentum == 0:
    param -= lr g; else velocity = momentum velocity - lr g and param += velocity (or, Nesterov,
    param += momentum velocity - lr g). velocity: float32 like param, needed when momentum != 0.
    lr, l2 >= 0 and momentum in [0, 1], finite."""
    cdef double lr_ = _lr(lr), l2_ = _real(l2, "l2", 0.0), mom = _momentum(momentum)
    cdef cnp.ndarray p, g, vel = None
    shape, p, g = _param_grad(param, grad)
    if mom != 0:
        if velocity is None:
            raise ValueError("sgd_update: momentum != 0 needs velocity (float32, like param)")
        vel = _state(velocity, "velocity", shape)
    _distinct("sgd_update", ((p, "param"), (vel, "velocity")), ((g, "grad"),))
    cdef Py_ssize_t n = cnp.PyArray_SIZE(p)
    cdef bint nest = bool(nesterov)
    cdef int nt = _threads()
    if n:
        with nogil:
            fm_sgd_update(n, _ptr(p), _ptr(g), lr_, l2_, mom, nest, _ptr(vel), nt)


def rmsprop_update(param, grad, square_avg, *, lr, rho=0.9, eps=1e-8, l2=0.0):
    """RMSProp step in place: g = grad + l2 param; square_avg = rho square_avg + (1-rho) g^2;
    param -= lr g / (sqrt(square_avg) + eps). lr, l2 >= 0, rho in [0, 1), eps > 0, finite."""
    cdef double lr_ = _lr(lr), rho_ = _decay_rate(rho, "rho"), eps_ = _eps(eps)
    cdef double l2_ = _real(l2, "l2", 0.0)
    cdef cnp.ndarray p, g
    shape, p, g = _param_grad(param, grad)
    cdef cnp.ndarray sq = _state(square_avg, "square_avg", shape)
    _distinct("rmsprop_update", ((p, "param"), (sq, "square_avg")), ((g, "grad"),))
    cdef Py_ssize_t n = cnp.PyArray_SIZE(p)
    cdef int nt = _threads()
    if n:
        with nogil:
            fm_rmsprop_update(n, _ptr(p), _ptr(g), _ptr(sq), lr_, rho_, eps_, l2_, nt)


def adam_update(param, grad, m, v, *, step, lr, beta1=0.9, beta2=0.999, eps=1e-8, l2=0.0,
                weight_decay=0.0):
    """Adam step in place (AdamW when weight_decay > 0). g = grad + l2 param;
    m = beta1 m + (1-beta1) g; v = beta2 v + (1-beta2) g^2;
    lr_t = lr sqrt(1-beta2^step) / (1-beta1^step);
    param = param (1 - lr weight_decay) - lr_t m / (sqrt(v) + eps). step counts from 1.
    lr, l2, weight_decay >= 0, beta1 and beta2 in [0, 1), eps > 0, finite."""
    cdef long t = _integer(step, "step", 1, 2**62)
    cdef double lr_ = _lr(lr), b1 = _decay_rate(beta1, "beta1"), b2 = _decay_rate(beta2, "beta2")
    cdef double eps_ = _eps(eps), l2_ = _real(l2, "l2", 0.0)
    cdef double wd = _real(weight_decay, "weight_decay", 0.0)
    cdef cnp.ndarray p, g
    shape, p, g = _param_grad(param, grad)
    cdef cnp.ndarray m1 = _state(m, "m", shape), m2 = _state(v, "v", shape)
    _distinct("adam_update", ((p, "param"), (m1, "m"), (m2, "v")), ((g, "grad"),))
    cdef Py_ssize_t n = cnp.PyArray_SIZE(p)
    cdef int nt = _threads()
    if n:
        with nogil:
            fm_adam_update(n, _ptr(p), _ptr(g), _ptr(m1), _ptr(m2), t, lr_, b1, b2, eps_, l2_, wd,
                           nt)


include "_sparse.pxi"
include "_norm.pxi"
include "_profile.pxi"
include "_train_step.pxi"
