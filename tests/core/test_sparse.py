"""Sparse first-layer kernels (fastmlp.sparse_matmul, fastmlp.sparse_matmul_tn) against float64
and float32 references, on every ISA path.

References:

* float64: the densified matrix times b (or, transposed, times d) in float64, from the very
  float32 inputs the kernels get. Tolerance: the GEMM bound (fastmlp.testing.gemm_error_bound)
  on the densified matrix of |data|, |A| @ |B| times 2 k u, with k the most terms any element
  sums (duplicated entries count one each, and their magnitudes add in |A|, so cancellation
  among them is covered).
* float32 twin (fastmlp.reference.sparse_matmul / sparse_matmul_tn): each element of C is
  c = 0, then c = c + x * y term by term in a fixed order, a multiply and an add on every ISA
  (fastmlp.h, "Sparse first layer"); the twin adds the same products in the same order
  (np.add.at), so the bits must be equal. The fused activations are the kernels' own vector
  code: they are compared bitwise with fastmlp.bias_activation applied to the product, and with
  the float64 reference through the bound times max|act'| plus the elementwise tolerances (as
  in test_gemm.py).
* Determinism (fastmlp.h rule 4): bitwise across thread counts, across batch splits (a row alone
  or in any batch, gathered or not), across splits of N (lanes never meet) and across ISAs.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastmlp
from fastmlp import core
from fastmlp import reference as ref
from fastmlp.testing import (
    ELEMENTWISE_ATOL,
    ELEMENTWISE_RTOL,
    assert_bitwise_equal,
    assert_close,
    gemm_error_bound,
)

from conftest import ISAS_UNDER_TEST, bitwise_across_threads, f32

sp = pytest.importorskip("scipy.sparse")

ACTS = fastmlp.ACTIVATIONS
MAX_DERIV = {"identity": 1.0, "relu": 1.0, "leaky_relu": 1.0, "tanh": 1.0, "logistic": 0.25,
             "gelu": 1.13}
SLOPE = 0.05
VLEN = {"generic": 4, "avx2": 8, "avx512": 16, "neon": 4}
SP_NV = 8      # vectors per register block of the forward (csrc/sparse_impl.h)


# --------------------------------------------------------------------------------------------
# Matrices: built from their CSR arrays, so duplicates, order and explicit zeros are as asked
# --------------------------------------------------------------------------------------------


def random_csr(rng, m, k, density=0.3, *, duplicates=False, unsorted=False, zeros=False,
               empty_rows=(), empty_cols=(), kind=sp.csr_matrix, index_dtype=np.int32,
               dtype=np.float32):
    """An m x k CSR matrix with about density * k entries per row (none in empty_rows or
    empty_cols), optionally with duplicated indices, unsorted rows and explicit zeros."""
    cols = np.setdiff1d(np.arange(k), empty_cols)
    indices, indptr = [], [0]
    for i in range(m):
        n = 0 if i in empty_rows or cols.size == 0 else rng.binomial(cols.size, density)
        row = np.sort(rng.choice(cols, n, replace=False))
        if duplicates and n:
            row = np.sort(np.concatenate([row, rng.choice(row, rng.integers(1, n + 1))]))
        if unsorted:
            row = rng.permutation(row)
        indices.append(row)
        indptr.append(indptr[-1] + row.size)
    indices = np.concatenate(indices) if indices else np.zeros(0, int)
    data = rng.uniform(-1, 1, indices.size)
    if zeros and data.size:
        data[rng.random(data.size) < 0.2] = 0.0
    x = kind((data.astype(dtype), indices, np.array(indptr)), shape=(m, k))
    x.indices = x.indices.astype(index_dtype)    # csr_matrix would downcast int64 to int32
    x.indptr = x.indptr.astype(index_dtype)
    return x


def entries(x, rows):
    """(r, p): every stored entry of x[rows], r ascending, p in storage order."""
    rows = np.arange(x.shape[0]) if rows is None else np.asarray(rows)
    r = [np.full(x.indptr[i + 1] - x.indptr[i], n) for n, i in enumerate(rows)]
    p = [np.arange(x.indptr[i], x.indptr[i + 1]) for i in rows]
    return (np.concatenate(r).astype(int) if r else np.zeros(0, int),
            np.concatenate(p).astype(int) if p else np.zeros(0, int))


def dense64(x, rows=None, absolute=False):
    """x[rows] densified in float64 from its CSR arrays, duplicates added (exactly enough for a
    reference), or the densified |data| (the magnitudes of the bound). Never through SciPy's
    abs or astype: they sum duplicates in place (sum_duplicates), removing what is tested."""
    r, p = entries(x, rows)
    data = np.asarray(x.data, np.float64)[p]
    out = np.zeros((x.shape[0] if rows is None else len(rows), x.shape[1]))
    np.add.at(out, (r, np.asarray(x.indices)[p]), np.abs(data) if absolute else data)
    return out


def as_dtype(x, dtype):
    """x with its data in dtype and its arrays as they are (duplicates and order kept)."""
    return type(x)((x.data.astype(dtype), x.indices, x.indptr), shape=x.shape)


def forward_bound(x, b, rows=None):
    r, p = entries(x, rows)
    k = max(1, np.bincount(r).max()) if r.size else 1
    return gemm_error_bound(dense64(x, rows, absolute=True), b, k)


def tn_bound(x, d, rows=None):
    r, p = entries(x, rows)
    k = max(1, np.bincount(x.indices[p]).max()) if p.size else 1
    return gemm_error_bound(dense64(x, rows, absolute=True), d, k, trans_a=True)


def check(x, b, d=None, *, rows=None, name=""):
    """Both kernels on (x, b) and (x, d) against the float64 reference (bound) and the float32
    twin (bitwise); returns the two results."""
    c = fastmlp.sparse_matmul(x, b, rows=rows)
    m = x.shape[0] if rows is None else len(rows)
    assert c.shape == (m, b.shape[1]) and c.dtype == np.float32
    assert_close(c, dense64(x, rows) @ b.astype(np.float64), bound=forward_bound(x, b, rows),
                 name=f"forward {name}")
    assert_bitwise_equal(c, ref.sparse_matmul(x, b, rows=rows),
                         name=f"forward vs float32 twin {name}")
    if d is None:
        return c, None
    g = fastmlp.sparse_matmul_tn(x, d, rows=rows)
    assert g.shape == (x.shape[1], d.shape[1]) and g.dtype == np.float32
    assert_close(g, dense64(x, rows).T @ d.astype(np.float64), bound=tn_bound(x, d, rows),
                 name=f"tn {name}")
    assert_bitwise_equal(g, ref.sparse_matmul_tn(x, d, rows=rows),
                         name=f"tn vs float32 twin {name}")
    return c, g


def edge_ns(isa):
    v = VLEN[isa]
    return sorted({0, 1, 2, v - 1, v, v + 1, 4 * v - 1, 4 * v, 4 * v + 1, SP_NV * v - 1,
                   SP_NV * v, SP_NV * v + 1, SP_NV * v + 4 * v + 3, 2 * SP_NV * v + 5 * v + 1})


# --------------------------------------------------------------------------------------------
# Edge sizes and structure
# --------------------------------------------------------------------------------------------


def test_edge_sizes(isa, rng):
    """M, N, K from 0 up, N around every block boundary of the ISA (one vector, the 4- and
    8-vector blocks, masked tails), K from 0 to a few tens; both kernels."""
    for m in (0, 1, 2, 3, 17, 40):
        for k in (0, 1, 3, 40):
            x = random_csr(rng, m, k, 0.4)
            for n in edge_ns(isa):
                b = f32(rng.uniform(-1, 1, (k, n)))
                d = f32(rng.uniform(-1, 1, (m, n)))
                check(x, b, d, name=f"m={m} k={k} n={n}")


STRUCTURES = {
    "empty rows and columns": dict(empty_rows=(0, 3, 4, 11), empty_cols=(0, 5, 6, 29)),
    "duplicates": dict(duplicates=True),
    "unsorted": dict(unsorted=True),
    "explicit zeros": dict(zeros=True),
    "all at once": dict(duplicates=True, unsorted=True, zeros=True, empty_rows=(2, 7),
                        empty_cols=(1, 13)),
}


@pytest.mark.parametrize("structure", STRUCTURES, ids=list(STRUCTURES))
def test_structure(isa, rng, structure):
    """Duplicated and unsorted indices and explicit zeros simply add their terms; rows without
    entries give 0 (forward), columns without entries give rows of 0 in the gradient, written
    even over NaN."""
    x = random_csr(rng, 12, 30, 0.3, **STRUCTURES[structure])
    arrays = [a.copy() for a in (x.data, x.indices, x.indptr)]
    rows_of = np.split(x.indices, x.indptr[1:-1])
    if STRUCTURES[structure].get("duplicates"):
        assert any(np.unique(r).size < r.size for r in rows_of)
    if STRUCTURES[structure].get("unsorted"):
        assert any((np.diff(r) < 0).any() for r in rows_of)
    for n in (1, VLEN[isa] + 3, 70):
        b, d = f32(rng.uniform(-1, 1, (30, n))), f32(rng.uniform(-1, 1, (12, n)))
        c, g = check(x, b, d, name=structure)
        for i in STRUCTURES[structure].get("empty_rows", ()):
            assert not c[i].any()
        out = np.full((30, n), np.nan, np.float32)
        assert fastmlp.sparse_matmul_tn(x, d, out=out) is out
        assert_bitwise_equal(out, g)
        for j in STRUCTURES[structure].get("empty_cols", ()):
            assert_bitwise_equal(out[j], np.zeros(n, np.float32))
    for a, b in zip(arrays, (x.data, x.indices, x.indptr)):   # nothing canonicalized x
        assert_bitwise_equal(a, b)


def test_duplicates_add_in_storage_order(isa):
    """Two entries of one column add one after the other, in storage order: with 1, 1e8, -1e8
    the float32 chain gives 0 where the densified (summed) value would be 1."""
    x = sp.csr_matrix((np.array([1.0, 1e8, -1e8], np.float32), np.array([0, 0, 0]),
                       np.array([0, 3])), shape=(1, 1))
    b = np.ones((1, 3), np.float32)
    assert_bitwise_equal(fastmlp.sparse_matmul(x, b), np.zeros((1, 3), np.float32))
    g = fastmlp.sparse_matmul_tn(x, b[:, :1].copy())
    assert_bitwise_equal(g, np.zeros((1, 1), np.float32))
    assert_bitwise_equal(fastmlp.sparse_matmul(x, b), ref.sparse_matmul(x, b))


CONSTRUCTORS = [("csr_matrix", sp.csr_matrix), ("csr_array", sp.csr_array),
                ("csc_matrix", sp.csc_matrix), ("csc_array", sp.csc_array)]


@pytest.mark.parametrize("kind", [c for _, c in CONSTRUCTORS], ids=[n for n, _ in CONSTRUCTORS])
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_formats_and_dtypes(isa, kind, index_dtype, dtype):
    """CSR or CSC, matrix or array, int32 or int64 indices, float32 or float64 data: the bits of
    the float32 CSR matrix (canonical, so CSC's conversion keeps the order of each row)."""
    rng = np.random.default_rng(7)
    base = random_csr(rng, 23, 40, 0.3)
    b, d = f32(rng.uniform(-1, 1, (40, 37))), f32(rng.uniform(-1, 1, (23, 37)))
    rows = np.array([5, 0, 5, 22])
    expected = [fastmlp.sparse_matmul(base, b), fastmlp.sparse_matmul_tn(base, d),
                fastmlp.sparse_matmul(base, b, rows=rows),
                fastmlp.sparse_matmul_tn(base, d[:4], rows=rows)]
    x = kind(as_dtype(base, dtype))
    x.indices = x.indices.astype(index_dtype)
    x.indptr = x.indptr.astype(index_dtype)
    got = [fastmlp.sparse_matmul(x, b), fastmlp.sparse_matmul_tn(x, d),
           fastmlp.sparse_matmul(x, b, rows=rows),
           fastmlp.sparse_matmul_tn(x, d[:4], rows=rows)]
    for i, (g, e) in enumerate(zip(got, expected)):
        assert_bitwise_equal(g, e, name=f"result {i}")


# --------------------------------------------------------------------------------------------
# csr_arrays: conversions only where needed
# --------------------------------------------------------------------------------------------


def test_csr_arrays_converts_only_what_it_must():
    rng = np.random.default_rng(1)
    x = random_csr(rng, 6, 9, 0.5, kind=sp.csr_array)
    x.indices = x.indices.astype(np.int32)
    x.indptr = x.indptr.astype(np.int64)
    data, indices, indptr, shape = core.csr_arrays(x)
    assert shape == (6, 9)
    assert data is x.data and indices is x.indices and indptr is x.indptr   # no copy
    y = as_dtype(x, np.float64)
    y.indices, y.indptr = y.indices.astype(np.int64), y.indptr.astype(np.int32)
    data, indices, indptr, shape = core.csr_arrays(y)
    assert (data.dtype, indices.dtype, indptr.dtype) == (np.float32, np.int32, np.int64)
    assert all(a.flags.c_contiguous for a in (data, indices, indptr))
    assert_bitwise_equal(data, x.data)
    assert np.array_equal(indices, x.indices) and np.array_equal(indptr, x.indptr)
    c = sp.csc_matrix(x)
    data, indices, indptr, shape = core.csr_arrays(c)
    assert shape == (6, 9) and np.array_equal(indptr, x.indptr)


def test_csr_arrays_refuses_what_would_wrap_or_mislead():
    rng = np.random.default_rng(2)
    x = random_csr(rng, 4, 5, 0.6, kind=sp.csr_array, index_dtype=np.int64)
    x.indices[0] = 2**32 + 1            # int32 would wrap it to 1, in range
    with pytest.raises(ValueError, match="x: indices out of range"):
        core.csr_arrays(x)
    with pytest.raises(ValueError, match="2\\*\\*31"):
        core.csr_arrays(sp.csr_matrix((3, 2**31)))
    with pytest.raises(TypeError, match="CSR or CSC.*tocsr"):
        core.csr_arrays(sp.coo_matrix(np.eye(3)))
    with pytest.raises(TypeError, match="w must be a scipy.sparse"):
        core.csr_arrays(np.eye(3, dtype=np.float32), name="w")
    y = random_csr(rng, 4, 5, 0.6)
    y.data = y.data.astype(np.complex64)
    with pytest.raises(TypeError, match="x.data must be .* real"):
        core.csr_arrays(y)


# --------------------------------------------------------------------------------------------
# rows: a gathered batch
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rows_dtype", [np.int64, np.int32, np.uint16, np.int8, np.intp])
def test_rows_gathered_with_repeats(isa, rng, rows_dtype):
    x = random_csr(rng, 50, 33, 0.2, duplicates=True, unsorted=True)
    b, n = f32(rng.uniform(-1, 1, (33, 45))), 45
    rows = np.array([49, 3, 3, 0, 17, 3, 49, 1], dtype=rows_dtype)
    d = f32(rng.uniform(-1, 1, (rows.size, n)))
    c, g = check(x, b, d, rows=rows, name=f"rows {rows_dtype.__name__}")
    full = fastmlp.sparse_matmul(x, b)
    assert_bitwise_equal(c, full[rows.astype(int)])          # gathered rows are the rows
    # the gradient of the gathered batch is that of the batch materialized as a matrix
    xb = sp.csr_matrix((x.data[entries(x, rows)[1]], x.indices[entries(x, rows)[1]],
                        np.concatenate([[0], np.cumsum(np.diff(x.indptr)[rows.astype(int)])])),
                       shape=(rows.size, 33))
    assert_bitwise_equal(g, fastmlp.sparse_matmul_tn(xb, d))


def test_rows_empty_batch(isa, rng):
    """M = 0: the forward is (0, N); the gradient is all zeros, written over NaN."""
    x = random_csr(rng, 5, 7, 0.5)
    rows = np.zeros(0, np.int64)
    assert fastmlp.sparse_matmul(x, f32(np.ones((7, 3))), rows=rows).shape == (0, 3)
    out = np.full((7, 3), np.nan, np.float32)
    fastmlp.sparse_matmul_tn(x, np.zeros((0, 3), np.float32), rows=rows, out=out)
    assert_bitwise_equal(out, np.zeros((7, 3), np.float32))


# --------------------------------------------------------------------------------------------
# Epilogue and out=
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("act", (None,) + ACTS)
@pytest.mark.parametrize("use_bias", [False, True], ids=["no_bias", "bias"])
def test_epilogue(isa, rng, act, use_bias):
    """act(x @ b + bias) fused: the bits of fastmlp.bias_activation applied to the product (one
    vector code for both), and the float64 reference within the bound through act."""
    x = random_csr(rng, 21, 50, 0.2, duplicates=True, zeros=True, empty_rows=(4,))
    n = SP_NV * VLEN[isa] + 4 * VLEN[isa] + 3
    b = f32(rng.uniform(-2, 2, (50, n)))
    bias = f32(rng.uniform(-1, 1, n)) if use_bias else None
    rows = rng.integers(0, 21, 30)
    got = fastmlp.sparse_matmul(x, b, bias=bias, activation=act, negative_slope=SLOPE,
                                rows=rows)
    product = fastmlp.sparse_matmul(x, b, rows=rows)
    assert_bitwise_equal(got, fastmlp.bias_activation(product, bias, act or "identity",
                                                      negative_slope=SLOPE))
    pre = dense64(x, rows) @ b.astype(np.float64)
    if use_bias:
        pre = pre + bias.astype(np.float64)
    expected = ref.activation_forward(pre, act or "identity", SLOPE)
    assert_close(got, expected, rtol=ELEMENTWISE_RTOL, atol=ELEMENTWISE_ATOL,
                 bound=MAX_DERIV[act or "identity"] * forward_bound(x, b, rows))
    assert_close(got, ref.sparse_matmul(as_dtype(x, np.float64), b.astype(np.float64), bias=bias,
                                        activation=act, negative_slope=SLOPE, rows=rows),
                 rtol=ELEMENTWISE_RTOL, atol=ELEMENTWISE_ATOL,
                 bound=MAX_DERIV[act or "identity"] * forward_bound(x, b, rows))


def test_empty_k_gives_the_epilogue_of_zero(isa, rng):
    """K = 0 (and rows without entries): C = act(0 + bias), as GEMM's K = 0 (rule 1)."""
    x = sp.csr_matrix((4, 0), dtype=np.float32)
    bias = f32(rng.uniform(-1, 1, 11))
    got = fastmlp.sparse_matmul(x, np.zeros((0, 11), np.float32), bias=bias, activation="tanh")
    assert_bitwise_equal(got, fastmlp.bias_activation(np.zeros((4, 11), np.float32), bias,
                                                      "tanh"))
    assert fastmlp.sparse_matmul_tn(x, np.ones((4, 11), np.float32)).shape == (0, 11)


def test_out_is_written_and_returned(isa, rng):
    x = random_csr(rng, 9, 14, 0.4)
    b, d = f32(rng.uniform(-1, 1, (14, 19))), f32(rng.uniform(-1, 1, (9, 19)))
    out = np.full((9, 19), np.nan, np.float32)
    assert fastmlp.sparse_matmul(x, b, bias=b[0], activation="relu", out=out) is out
    assert_bitwise_equal(out, fastmlp.sparse_matmul(x, b, bias=b[0], activation="relu"))
    out = np.full((14, 19), np.inf, np.float32)
    assert fastmlp.sparse_matmul_tn(x, d, out=out) is out
    assert_bitwise_equal(out, fastmlp.sparse_matmul_tn(x, d))


def test_input_layouts_give_the_same_bits(isa, rng):
    """b, d and bias in any layout (copied to C order by the bindings, as matmul's inputs)."""
    x = random_csr(rng, 15, 20, 0.3)
    b, d = f32(rng.uniform(-1, 1, (20, 26))), f32(rng.uniform(-1, 1, (15, 26)))
    bias = f32(rng.uniform(-1, 1, 26))
    base = fastmlp.sparse_matmul(x, b, bias=bias)
    base_tn = fastmlp.sparse_matmul_tn(x, d)
    wide = np.zeros((20, 60), np.float32)
    wide[:, 7:33] = b
    for name, bl in (("fortran", np.asfortranarray(b)), ("column slice", wide[:, 7:33]),
                     ("reversed", b[::-1][::-1])):
        assert_bitwise_equal(fastmlp.sparse_matmul(x, bl, bias=bias), base, name=name)
    assert_bitwise_equal(fastmlp.sparse_matmul(x, b, bias=np.repeat(bias, 2)[::2]), base)
    assert_bitwise_equal(fastmlp.sparse_matmul_tn(x, np.asfortranarray(d)), base_tn)


# --------------------------------------------------------------------------------------------
# Against the dense GEMM, NaN and inf
# --------------------------------------------------------------------------------------------


def test_forward_equals_dense_matmul(isa, rng):
    """fastmlp.matmul on x.toarray() (no duplicates, so the densified matrix is exact in
    float32): within the GEMM bound of each other's float64 reference."""
    x = random_csr(rng, 70, 300, 0.1)
    b = f32(rng.standard_normal((300, 90)))
    bias = f32(rng.standard_normal(90))
    dense = x.toarray()
    got = fastmlp.sparse_matmul(x, b, bias=bias, activation="leaky_relu", negative_slope=SLOPE)
    want = fastmlp.matmul(dense, b, bias=bias, activation="leaky_relu", negative_slope=SLOPE)
    assert_close(got, want, rtol=2 * ELEMENTWISE_RTOL, atol=2 * ELEMENTWISE_ATOL,
                 bound=2 * gemm_error_bound(dense, b, 300))
    d = f32(rng.standard_normal((70, 90)))
    assert_close(fastmlp.sparse_matmul_tn(x, d), fastmlp.matmul(dense, d, trans_a=True),
                 bound=2 * gemm_error_bound(dense, d, 70, trans_a=True))


def test_nan_and_inf(isa):
    """NaN in an entry or a used row of b reaches the row (rule 6); an explicit zero times inf is
    NaN, as in a dense product, while an implicit zero reads nothing."""
    x = sp.csr_matrix((np.array([1.0, np.nan, 0.0, 2.0], np.float32), np.array([0, 1, 2, 0]),
                       np.array([0, 1, 2, 3, 4, 4])), shape=(5, 4))
    b = np.ones((4, 10), np.float32)
    b[2, 3] = np.inf    # read by row 2's explicit zero
    b[3, 5] = np.nan    # column 3: no entry reads it
    c = fastmlp.sparse_matmul(x, b)
    assert np.isnan(c[1]).all()
    assert np.isnan(c[2, 3]) and not np.isnan(np.delete(c[2], 3)).any()
    assert not np.isnan(c[[0, 3, 4]]).any()
    d = np.ones((5, 10), np.float32)
    d[3, 4] = np.nan    # row 3 of the batch has one entry, in column 0
    g = fastmlp.sparse_matmul_tn(x, d)
    assert np.isnan(g[1]).all() and np.isnan(g[0, 4]) and not np.isnan(np.delete(g[0], 4)).any()
    assert not np.isnan(g[3]).any()


# --------------------------------------------------------------------------------------------
# Determinism (rule 4)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("m,n,k,density", [(2000, 64, 500, 0.05), (300, 700, 2000, 0.02),
                                           (64, 3, 100, 0.3)],
                         ids=["many_rows", "wide", "narrow"])
def test_thread_count_does_not_change_bits(isa, m, n, k, density):
    rng = np.random.default_rng(3)
    x = random_csr(rng, m, k, density, duplicates=True)
    b, d = f32(rng.standard_normal((k, n))), f32(rng.standard_normal((m // 2, n)))
    bias = f32(rng.standard_normal(n))
    rows = rng.integers(0, m, m // 2)
    c, cr, g = bitwise_across_threads(lambda: (
        fastmlp.sparse_matmul(x, b, bias=bias, activation="gelu"),
        fastmlp.sparse_matmul(x, b, rows=rows), fastmlp.sparse_matmul_tn(x, d, rows=rows)))
    assert_close(cr, dense64(x, rows) @ b.astype(np.float64), bound=forward_bound(x, b, rows))
    assert_close(g, dense64(x, rows).T @ d.astype(np.float64), bound=tn_bound(x, d, rows))


def test_row_alone_equals_row_in_batch(isa, rng):
    x = random_csr(rng, 80, 120, 0.1, duplicates=True, unsorted=True)
    n = SP_NV * VLEN[isa] + 5
    b, bias = f32(rng.standard_normal((120, n))), f32(rng.standard_normal(n))
    batch = fastmlp.sparse_matmul(x, b, bias=bias, activation="logistic")
    for i in (0, 1, 15, 16, 17, 40, 79):
        alone = fastmlp.sparse_matmul(x, b, bias=bias, activation="logistic",
                                      rows=np.array([i]))
        assert_bitwise_equal(alone, batch[i:i + 1], name=f"row {i}")
    sub = np.arange(5, 43)      # a batch starting inside a thread's chunk of rows
    assert_bitwise_equal(fastmlp.sparse_matmul(x, b, bias=bias, activation="logistic",
                                               rows=sub), batch[sub])


def test_columns_alone_equal_columns_in_the_product(isa, rng):
    """Vectors run along N and lanes never meet: a slice of b's (or d's) columns gives the same
    columns of C, whichever vector and block they fall in."""
    x = random_csr(rng, 40, 60, 0.2, duplicates=True)
    n = 2 * SP_NV * VLEN[isa] + 3
    b, d = f32(rng.standard_normal((60, n))), f32(rng.standard_normal((40, n)))
    c, g = fastmlp.sparse_matmul(x, b), fastmlp.sparse_matmul_tn(x, d)
    for j0, j1 in ((0, 1), (3, 3 + VLEN[isa]), (VLEN[isa] - 1, n), (n - 2, n)):
        assert_bitwise_equal(fastmlp.sparse_matmul(x, np.ascontiguousarray(b[:, j0:j1])),
                             c[:, j0:j1], name=f"forward columns {j0}:{j1}")
        assert_bitwise_equal(fastmlp.sparse_matmul_tn(x, np.ascontiguousarray(d[:, j0:j1])),
                             g[:, j0:j1], name=f"tn columns {j0}:{j1}")


@pytest.mark.skipif(len(ISAS_UNDER_TEST) < 2, reason="one ISA path under test")
def test_same_bits_on_every_isa():
    """No FMA, lanes independent: every ISA path gives the same bits (fastmlp.h), the fused
    activations included (one vector code, no FMA either)."""
    rng = np.random.default_rng(4)
    x = random_csr(rng, 50, 80, 0.15, duplicates=True, zeros=True)
    b, d = f32(rng.standard_normal((80, 77))), f32(rng.standard_normal((50, 77)))
    bias = f32(rng.standard_normal(77))
    previous = core.get_isa()
    results = {}
    try:
        for name in ISAS_UNDER_TEST:
            core.set_isa(name)
            results[name] = [fastmlp.sparse_matmul_tn(x, d)] + [
                fastmlp.sparse_matmul(x, b, bias=bias, activation=act) for act in ACTS]
    finally:
        core.set_isa(previous)
    first = ISAS_UNDER_TEST[0]
    for name in ISAS_UNDER_TEST[1:]:
        for what, got, want in zip(("tn",) + ACTS, results[name], results[first]):
            assert_bitwise_equal(got, want, name=f"{what}: {name} vs {first}")


# --------------------------------------------------------------------------------------------
# Errors (rule 7: bad data is refused before anything is written)
# --------------------------------------------------------------------------------------------


def test_bad_structure_is_refused_and_nothing_written(isa):
    data = np.ones(6, np.float32)
    b, d = np.ones((4, 5), np.float32), np.ones((3, 5), np.float32)
    for indices, indptr, match in (
            ([0, 1, 2, 3, 4, 1], [0, 2, 4, 6], "indices out of range"),    # 4 >= K
            ([0, 1, -1, 3, 0, 1], [0, 2, 4, 6], "indices out of range"),
            ([0, 1, 2, 3, 0, 1], [0, 5, 4, 6], "indptr not monotone"),
            ([0, 1, 2, 3, 0, 1], [0, 2, 4, 7], "points outside"),
            ([0, 1, 2, 3, 0, 1], [-1, 2, 4, 6], "points outside")):
        x = sp.csr_matrix((3, 4), dtype=np.float32)     # then its arrays, unchecked by SciPy
        x.data, x.indices = data, np.array(indices, np.int32)
        x.indptr = np.array(indptr, np.int64)
        out = np.full((3, 5), 7.0, np.float32)
        with pytest.raises(ValueError, match=match):
            fastmlp.sparse_matmul(x, b, out=out)
        assert (out == 7.0).all()
        out = np.full((4, 5), 7.0, np.float32)
        with pytest.raises(ValueError, match=match):
            fastmlp.sparse_matmul_tn(x, d, out=out)
        assert (out == 7.0).all()
    # only the rows used are checked: a bad row outside the batch does not matter
    x.indptr = np.array([0, 2, 4, 6], np.int64)
    x.indices = np.array([0, 1, 2, 3, 9, 9], np.int32)
    got = fastmlp.sparse_matmul(x, b, rows=np.array([1, 0]))
    assert_bitwise_equal(got, np.full((2, 5), 2.0, np.float32))
    with pytest.raises(ValueError, match="indices out of range"):
        fastmlp.sparse_matmul(x, b, rows=np.array([2]))


def test_argument_errors_name_the_argument():
    x = sp.csr_matrix(np.eye(3, 4, dtype=np.float32))
    b, d = np.ones((4, 2), np.float32), np.ones((3, 2), np.float32)
    for call, exc, match in (
            (lambda: fastmlp.sparse_matmul(x.toarray(), b), TypeError, "x must be"),
            (lambda: fastmlp.sparse_matmul(x.tocoo(), b), TypeError, "x must be in CSR"),
            (lambda: fastmlp.sparse_matmul(x, b[:3]), ValueError, "b must have 4 rows"),
            (lambda: fastmlp.sparse_matmul(x, b.astype(np.float64)), TypeError, "b must be"),
            (lambda: fastmlp.sparse_matmul(x, b, rows=np.array([3])), IndexError, "rows must"),
            (lambda: fastmlp.sparse_matmul(x, b, rows=np.array([-1])), IndexError, "rows must"),
            (lambda: fastmlp.sparse_matmul(x, b, rows=np.array([2**63], np.uint64)),
             IndexError, "rows must"),
            (lambda: fastmlp.sparse_matmul(x, b, rows=[0]), TypeError, "rows must"),
            (lambda: fastmlp.sparse_matmul(x, b, rows=np.zeros(1)), TypeError, "rows must"),
            (lambda: fastmlp.sparse_matmul(x, b, rows=np.zeros((1, 1), int)), ValueError,
             "rows must be 1-D"),
            (lambda: fastmlp.sparse_matmul(x, b, bias=np.ones(3, np.float32)), ValueError,
             "bias must have shape"),
            (lambda: fastmlp.sparse_matmul(x, b, activation="bogus"), ValueError, "activation"),
            (lambda: fastmlp.sparse_matmul(x, b, out=np.ones((3, 3), np.float32)), ValueError,
             "out must have shape"),
            (lambda: fastmlp.sparse_matmul_tn(x, d[:2]), ValueError, "d must have 3 rows"),
            (lambda: fastmlp.sparse_matmul_tn(x, d, out=np.ones((3, 2), np.float32)),
             ValueError, "out must have shape"),
            (lambda: fastmlp.sparse_matmul_tn(x, d, rows=np.array([0, 1])), ValueError,
             "d must have 2 rows")):
        with pytest.raises(exc, match=match):
            call()


def test_out_may_not_alias_an_input(isa):
    x = sp.csr_matrix(np.eye(3, dtype=np.float32))
    b = np.ones((3, 3), np.float32)
    with pytest.raises(ValueError, match="out must not overlap b"):
        fastmlp.sparse_matmul(x, b, out=b)
    y = sp.csr_matrix(np.ones((1, 1), np.float32))
    with pytest.raises(ValueError, match="out must not overlap x"):
        fastmlp.sparse_matmul(y, b[:1, :1], out=y.data.reshape(1, 1))
    with pytest.raises(ValueError, match="out must not overlap d"):
        fastmlp.sparse_matmul_tn(x, b, out=b)


# --------------------------------------------------------------------------------------------
# The reference twin, the profiler, random problems
# --------------------------------------------------------------------------------------------


def test_reference_twin_in_float64(rng):
    x = random_csr(rng, 30, 25, 0.3, duplicates=True, unsorted=True, dtype=np.float64)
    b, d = rng.standard_normal((25, 8)), rng.standard_normal((12, 8))
    rows = rng.integers(0, 30, 12)
    dense = dense64(x)
    np.testing.assert_allclose(ref.sparse_matmul(x, b, rows=rows), dense[rows] @ b,
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ref.sparse_matmul_tn(x, d, rows=rows), dense[rows].T @ d,
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ref.sparse_matmul(sp.csc_array(x), b, bias=b[0],
                                                 activation="tanh"),
                               np.tanh(dense @ b + b[0]), rtol=1e-12, atol=1e-12)


def test_profile_counts_sparse_calls(isa, rng):
    """2 nnz N flops (nnz: the entries of the rows used) and the bytes of the formula in
    fastmlp/tools/profiler.py."""
    x = random_csr(rng, 40, 30, 0.2)
    rows = np.array([3, 3, 7, 0, 39])
    nnz = int(sum(x.indptr[i + 1] - x.indptr[i] for i in rows))
    m, n, k = rows.size, 16, 30
    b, d = f32(rng.standard_normal((k, n))), f32(rng.standard_normal((m, n)))
    with fastmlp.profile(peak_gflops=1.0) as prof:
        fastmlp.sparse_matmul(x, b, rows=rows, bias=b[0], activation="relu")
        fastmlp.sparse_matmul(x, b, rows=rows, bias=b[0], activation="relu")
        fastmlp.sparse_matmul_tn(x, d, rows=rows)
    recs = {r["kernel"]: r for r in prof.records}
    assert set(recs) == {"sparse_matmul", "sparse_matmul_tn"}
    fwd, tn = recs["sparse_matmul"], recs["sparse_matmul_tn"]
    csr = 8 * nnz + 8 * (m + 1) + 8 * m
    assert (fwd["calls"], fwd["act"], fwd["flags"], fwd["m"], fwd["n"], fwd["k"]) == \
        (2, "relu", ("bias",), m, n, k)
    assert fwd["flops"] == 2 * (2 * nnz * n)
    assert fwd["bytes"] == 2 * (csr + 4 * (k * n + m * n + n))
    assert fwd["name"] == f"sparse_matmul {m}x{n}x{k} +bias +relu"
    assert (tn["calls"], tn["flops"], tn["bytes"]) == (1, 2 * nnz * n, csr + 4 * (m * n + k * n))
    assert tn["name"] == f"sparse_matmul_tn {m}x{n}x{k}"


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(m=st.integers(0, 30), n=st.integers(0, 70), k=st.integers(0, 40),
       density=st.floats(0.0, 0.6), duplicates=st.booleans(), unsorted=st.booleans(),
       gather=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_property_random_problems(isa, m, n, k, density, duplicates, unsorted, gather, seed):
    rng = np.random.default_rng(seed)
    x = random_csr(rng, m, k, density, duplicates=duplicates, unsorted=unsorted, zeros=True)
    rows = rng.integers(0, m, rng.integers(0, 2 * m + 1)) if gather and m else None
    mb = m if rows is None else rows.size
    check(x, f32(rng.uniform(-1, 1, (k, n))), f32(rng.uniform(-1, 1, (mb, n))), rows=rows)
