# Sparse first layer (included by _native.pyx): CSR rows times a dense matrix and its weight
# gradient (fm_sparse_matmul, fm_sparse_matmul_tn; fastmlp.h, "Sparse first layer").
#
# a) A sparse x is anything that looks like a SciPy sparse matrix or array in CSR or CSC format
#    (.format, .data, .indices, .indptr, .shape, .tocsr()): fastmlp.core never imports SciPy.
# b) csr_arrays converts what the kernels cannot read: CSC to CSR, indices to int32, indptr to
#    int64, data to float32 (SciPy's default dtype is float64), each only when needed. Unlike the
#    dense kernels' inputs (note a of _native.pyx) the data is converted without asking, because
#    no sparse matrix library keeps float32 as its default. It checks what costs O(1): the
#    arrays' lengths against the shape. Indices converted from a wider type are range-checked on
#    the way (a wrapped index could land in range).
# c) Per call, the bindings check what keeps the kernels inside the arrays, in O(batch): rows in
#    [0, n_rows), and the indptr values of the rows used within [0, nnz]. The kernels check the
#    rest for the rows they use (rule 7): indptr monotone, indices in [0, n_cols). The caller
#    pays for the rows of its batch, never for the whole matrix.

cdef tuple _CSR_ATTRS = ("format", "data", "indices", "indptr", "shape", "tocsr")


cdef cnp.ndarray _csr_index_array(object a, str name, str what, object dtype):
    """x.indices or x.indptr (what) as a 1-D C-contiguous array of dtype, converted if needed."""
    if not isinstance(a, np.ndarray) or a.dtype.kind not in "iu":
        raise TypeError(f"{name}.{what} must be a numpy array of integers, got "
                        f"{getattr(a, 'dtype', type(a).__name__)}")
    if a.ndim != 1:
        raise ValueError(f"{name}.{what} must be 1-D, got shape {a.shape}")
    return np.ascontiguousarray(a, dtype=dtype)


def is_sparse(x):
    """Whether x is a SciPy sparse matrix or array (any format), recognised by its attributes:
    the inputs that go to csr_arrays and the sparse kernels rather than to the dense ones."""
    return (not isinstance(x, np.ndarray) and isinstance(getattr(x, "format", None), str)
            and hasattr(x, "tocsr"))


def csr_arrays(x, name="x"):
    """The CSR arrays of x that the sparse kernels read: (data, indices, indptr, shape).

    x: a SciPy sparse matrix or array in CSR or CSC format (any index dtype), recognised by its
    attributes (fastmlp does not import SciPy). Returns data as float32, indices as int32,
    indptr as int64 (all 1-D, C-contiguous; x's own arrays when they are so already, else
    converted copies; CSC is converted with x.tocsr()) and shape = (n_rows, n_cols).
    Checks the arrays' lengths against the shape (indptr n_rows + 1 long, indices and data of one
    length) and n_cols < 2**31; not indptr's values nor the indices' range, which the kernels
    check for the rows they use (except that indices converted from a wider type are checked
    here, before they could wrap). Errors name the argument (name).

    Cost: SciPy keeps both index arrays in int32 while they fit, so indptr (n_rows + 1 values)
    is converted on every call of the kernels' bindings; code that runs many batches of one
    matrix (a training loop) calls csr_arrays once and keeps its arrays.
    """
    fmt = getattr(x, "format", None)
    if isinstance(fmt, str) and fmt not in ("csr", "csc") and hasattr(x, "tocsr"):
        raise TypeError(f"{name} must be in CSR or CSC format, got a {fmt!r} sparse matrix; "
                        f"convert with {name}.tocsr()")
    if fmt not in ("csr", "csc") or not all(hasattr(x, a) for a in _CSR_ATTRS):
        raise TypeError(f"{name} must be a scipy.sparse matrix or array in CSR or CSC format, "
                        f"got {type(x).__name__}")
    if fmt == "csc":
        x = x.tocsr()
        if getattr(x, "format", None) != "csr":
            raise TypeError(f"{name}.tocsr() did not return a CSR matrix")
    shape = x.shape
    if (not isinstance(shape, tuple) or len(shape) != 2
            or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 0
                       for s in shape)):
        raise ValueError(f"{name} must be a 2-D sparse matrix, got shape {shape!r}")
    n_rows, n_cols = int(shape[0]), int(shape[1])
    if n_cols >= 2**31:
        raise ValueError(f"{name} has {n_cols} columns: the sparse kernels take fewer than 2**31 "
                         "(int32 indices)")
    cdef cnp.ndarray indptr = _csr_index_array(x.indptr, name, "indptr", np.int64)
    raw = x.indices
    cdef cnp.ndarray indices = _csr_index_array(raw, name, "indices", np.int32)
    if (raw.dtype != np.int32 and raw.size
            and (raw.min() < 0 or raw.max() >= n_cols)):
        raise ValueError(f"{name}: indices out of range [0, {n_cols}) (got values in "
                         f"[{raw.min()}, {raw.max()}])")
    data = x.data
    if not isinstance(data, np.ndarray) or data.dtype.kind not in "fiub":
        raise TypeError(f"{name}.data must be a numpy array of real numbers, got "
                        f"{getattr(data, 'dtype', type(data).__name__)}")
    if data.ndim != 1:
        raise ValueError(f"{name}.data must be 1-D, got shape {data.shape}")
    data = np.ascontiguousarray(data, dtype=np.float32)
    if cnp.PyArray_DIM(indptr, 0) != n_rows + 1:
        raise ValueError(f"{name}.indptr must have {n_rows + 1} values (the rows of {name}, "
                         f"plus one), got {cnp.PyArray_DIM(indptr, 0)}")
    if cnp.PyArray_DIM(indices, 0) != cnp.PyArray_DIM(data, 0):
        raise ValueError(f"{name}.indices and {name}.data must have one length, got "
                         f"{cnp.PyArray_DIM(indices, 0)} and {cnp.PyArray_DIM(data, 0)}")
    return data, indices, indptr, (n_rows, n_cols)


cdef Py_ssize_t _csr_rows_outside(const int64_t *indptr, const ptrdiff_t *rows, Py_ssize_t M,
                                  int64_t nnz) noexcept nogil:
    """The first r whose row's indptr values do not both lie in [0, nnz], or -1: the kernels'
    precondition (fastmlp.h), which keeps them inside the CSR arrays. rows: NULL for 0 .. M-1."""
    cdef Py_ssize_t r, i
    for r in range(M):
        i = rows[r] if rows != NULL else r
        if not (0 <= indptr[i] <= nnz and 0 <= indptr[i + 1] <= nnz):
            return r
    return -1


# One sparse operand as the kernels take it, from x and rows: its arrays (kept alive by the
# caller through `keep`) and their pointers.
cdef struct _Csr:
    const int64_t *indptr
    const int32_t *indices
    const float *data
    const ptrdiff_t *rows   # NULL: rows 0 .. M-1
    Py_ssize_t n_rows, K, M


cdef tuple _csr_operand(object x, object rows, _Csr *s, str who):
    """csr_arrays(x) and rows, checked (note c), into s; returns the arrays s points into."""
    arrays = csr_arrays(x, "x")
    cdef cnp.ndarray data = arrays[0], indices = arrays[1], indptr = arrays[2], R = None
    s.n_rows, s.K = arrays[3]
    if rows is not None:
        if not isinstance(rows, np.ndarray) or rows.dtype.kind not in "iu":
            raise TypeError(f"rows must be None or a numpy array of integers, got "
                            f"{getattr(rows, 'dtype', type(rows).__name__)}")
        if rows.ndim != 1:
            raise ValueError(f"rows must be 1-D, got shape {rows.shape}")
        # checked before the conversion to intp, which could wrap a huge unsigned value
        if rows.size and (rows.min() < 0 or rows.max() >= s.n_rows):
            raise IndexError(f"rows must be in [0, {s.n_rows}) (the rows of x), got values in "
                             f"[{rows.min()}, {rows.max()}]")
        R = np.ascontiguousarray(rows, dtype=np.intp)
    s.M = cnp.PyArray_DIM(R, 0) if R is not None else s.n_rows
    s.indptr = <const int64_t *>cnp.PyArray_DATA(indptr)
    s.indices = <const int32_t *>cnp.PyArray_DATA(indices)
    s.data = <const float *>cnp.PyArray_DATA(data)
    s.rows = <const ptrdiff_t *>cnp.PyArray_DATA(R) if R is not None else NULL
    cdef Py_ssize_t bad = _csr_rows_outside(s.indptr, s.rows, s.M, cnp.PyArray_DIM(data, 0))
    if bad >= 0:
        i = s.rows[bad] if s.rows != NULL else bad
        raise ValueError(f"{who}: x's indptr points outside its {cnp.PyArray_DIM(data, 0)} "
                         f"entries (row {i})")
    return data, indices, indptr, R


cdef int _csr_refused(const _Csr *s, str who) except -1:
    """The ValueError of a kernel's FM_EINVAL (rule 7): which of its checks failed."""
    cdef Py_ssize_t r, i
    for r in range(s.M):
        i = s.rows[r] if s.rows != NULL else r
        if s.indptr[i] > s.indptr[i + 1]:
            raise ValueError(f"{who}: x's indptr not monotone (row {i}: indptr[{i}] = "
                             f"{s.indptr[i]} > indptr[{i + 1}] = {s.indptr[i + 1]})")
    raise ValueError(f"{who}: x's indices out of range [0, {s.K}) in the rows used")


def sparse_matmul(x, b, *, bias=None, activation=None, negative_slope=0.01, rows=None, out=None):
    """activation(x[rows] @ b + bias) for a sparse x, fused (fm_sparse_matmul).

    x: a SciPy sparse matrix or array, CSR or CSC (csr_arrays says what is converted), of shape
    (n_rows, K). b: float32 (K, N). rows: None (all of x's rows) or a 1-D integer array of row
    indices in [0, n_rows), repeats allowed: the batch, gathered without a copy. bias: float32
    (N,) or None; activation: one of ACTIVATIONS or None (identity); negative_slope: leaky_relu's.
    Each element sums x's entries of its row in storage order (duplicates add up), with a
    multiply and an add each: the bits are the same at any thread count, on every ISA, and for a
    row alone or in any batch. Returns out (a new float32 (M, N) array if None; M = len(rows),
    or n_rows).
    """
    cdef _Csr s
    keep = _csr_operand(x, rows, &s, "sparse_matmul")
    cdef cnp.ndarray B = _input(b, "b", 2)
    if cnp.PyArray_DIM(B, 0) != s.K:
        raise ValueError(f"b must have {s.K} rows (the columns of x), got shape {b.shape}")
    cdef Py_ssize_t M = s.M, N = cnp.PyArray_DIM(B, 1), K = s.K
    cdef fm_epilogue ep
    ep.bias = NULL; ep.y = NULL; ep.z = NULL; ep.ldy = N; ep.ldz = N; ep.update = NULL
    ep.act = _act_code(activation, "activation")
    ep.grad_act = FM_ACT_IDENTITY
    ep.slope = _real(negative_slope, "negative_slope")
    if bias is not None:
        bias = _input_shaped(bias, "bias", (N,), "b's columns")
        ep.bias = _ptr(bias)
    cdef cnp.ndarray C = _output(out, "out", (M, N), "x[rows] @ b")
    data, indices, indptr, R = keep
    _no_overlap("sparse_matmul", C, "out", ((B, "b"), (bias, "bias"), (data, "x"),
                                            (indices, "x"), (indptr, "x"), (R, "rows")))
    cdef int status, nt = _threads()
    with nogil:
        status = fm_sparse_matmul(M, N, K, s.indptr, s.indices, s.data, s.rows, _ptr(B),
                                  N if N > 0 else 1, _ptr(C), N if N > 0 else 1, &ep, nt)
    if status != FM_OK:
        _csr_refused(&s, "sparse_matmul")
    return C


def sparse_matmul_tn(x, d, *, rows=None, out=None):
    """x[rows]^T @ d for a sparse x (fm_sparse_matmul_tn): the weight gradient of a sparse first
    layer, X^T dZ.

    x: as for sparse_matmul, of shape (n_rows, K); rows: None or the batch's row indices (as for
    sparse_matmul); d: float32 (M, N), one row per row of the batch. Element (k, j) sums
    x[rows[r], k] * d[r, j] over r ascending (each stored entry on its own, in storage order),
    with a multiply and an add each: the bits are the same at any thread count and on every ISA.
    Returns out (a new float32 (K, N) array if None), every element written (0 where no entry of
    the batch has that column).
    """
    cdef _Csr s
    keep = _csr_operand(x, rows, &s, "sparse_matmul_tn")
    cdef cnp.ndarray D = _input(d, "d", 2)
    if cnp.PyArray_DIM(D, 0) != s.M:
        raise ValueError(f"d must have {s.M} rows (the rows of x[rows]), got shape {d.shape}")
    cdef Py_ssize_t M = s.M, N = cnp.PyArray_DIM(D, 1), K = s.K
    cdef cnp.ndarray C = _output(out, "out", (K, N), "x[rows]^T @ d")
    data, indices, indptr, R = keep
    _no_overlap("sparse_matmul_tn", C, "out", ((D, "d"), (data, "x"), (indices, "x"),
                                               (indptr, "x"), (R, "rows")))
    cdef int status, nt = _threads()
    with nogil:
        status = fm_sparse_matmul_tn(M, N, K, s.indptr, s.indices, s.data, s.rows, _ptr(D),
                                     N if N > 0 else 1, _ptr(C), N if N > 0 else 1, nt)
    if status != FM_OK:
        _csr_refused(&s, "sparse_matmul_tn")
    return C
