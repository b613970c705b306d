"""GEMM kernel (fastmlp.matmul) against a float64 reference, on every ISA path.

Reference: the product computed by NumPy in float64 from float64 copies of the very float32
inputs the kernel gets (fastmlp.reference.matmul semantics), so the only difference left is the
kernel's own float32 rounding.

Tolerances (all through fastmlp.testing.assert_close):

* Product: componentwise |C - C64| <= 2 K u (|op(a)| @ |op(b)|), u = 2**-24
  (fastmlp.testing.gemm_error_bound): the classical bound of a K-term float32 dot product,
  gamma_K ~ K u, with a factor 2 of slack. It holds for any summation order (so for any blocking
  over KC) and scales with each element's own magnitudes: a wrong element cannot hide among large
  ones and cancellation does not fail it. With alpha / beta, the terms |alpha| and |beta C| enter
  the bound the same way (two more roundings: K -> K + 2).
* Epilogue: a perturbation d of the product moves act(c) by at most d * max|act'|, so the bound
  is multiplied by max|act'|: 1 for identity / relu / leaky_relu / tanh, 1/4 for logistic,
  1.13 for gelu (max of the tanh-GELU's derivative, ~1.129 at x ~ 1.5). The final rounding of
  the bias add and of the activation itself is covered by an elementwise rtol 1e-6, atol 1e-7
  (a few float32 ulps, fastmlp.testing.ELEMENTWISE_*).
* Backward epilogue (c * act'(y or z)): the product's bound times max|act'| as above, plus the
  error of the derivative factor, which is computed in float32 with an absolute error of a few
  ulps of 1: rtol 1e-6 of |c| (the "atol scaled by |dy|" of the elementwise kernels; it matters
  where act' crosses 0, e.g. gelu' at z ~ -0.75), plus atol 1e-7.
* Determinism (fastmlp.h rule 4): bitwise, across thread counts, batch splits and layouts. For a
  narrow N the summation order depends on whether A is transposed (dot products along k for a
  row-major A), so a layout that the bindings turn into the other transpose (Fortran order) is
  held to the error bound instead.
"""
import functools
import itertools

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
    FLOAT32_UNIT_ROUNDOFF as U,
    assert_bitwise_equal,
    assert_close,
    gemm_error_bound,
)

from conftest import bitwise_across_threads, f32

TRANSPOSES = [(False, False), (False, True), (True, False), (True, True)]  # NN, NT, TN, TT
ACTS = fastmlp.ACTIVATIONS
# max |act'(x)|: how much a perturbation of the product can grow through the activation
MAX_DERIV = {"identity": 1.0, "relu": 1.0, "leaky_relu": 1.0, "tanh": 1.0, "logistic": 0.25,
             "gelu": 1.13}
SLOPE = 0.05


def stored(op, trans):
    """The C-contiguous array that, with the given transpose flag, has op(x) == op."""
    return np.ascontiguousarray(op.T if trans else op)


# --------------------------------------------------------------------------------------------
# Edge sweeps: sizes around the micro-tile (MR x NR) and the K block (KC)
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def edge_data(isa):
    """Inputs of the edge sweeps of one ISA, built once: op(A) (Mmax, Kmax), op(B) (Kmax, Nmax),
    a bias, y / z operands of the backward epilogues, and, per k, the float64 product of the
    leading k columns / rows and |op(A)| @ |op(B)| (every smaller problem is a slice of them)."""
    blk = core.gemm_blocks(isa)
    ms = list(range(1, 3 * blk["mr"] + 2))
    ns = list(range(1, 3 * blk["nr"] + 2))
    ks = [1, blk["kc"] - 1, blk["kc"], blk["kc"] + 1]
    rng = np.random.default_rng(1234 + len(ms) * 1000 + len(ns))
    mmax, nmax, kmax = ms[-1], ns[-1], ks[-1]
    a = f32(rng.uniform(-1, 1, (mmax, kmax)))
    b = f32(rng.uniform(-1, 1, (kmax, nmax)))
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    prod = {k: a64[:, :k] @ b64[:k] for k in ks}
    absprod = {k: np.abs(a64[:, :k]) @ np.abs(b64[:k]) for k in ks}
    bias = f32(rng.uniform(-1, 1, nmax))
    # pre-activations spread over the interesting range of every activation, with exact zeros
    zpre = f32(rng.uniform(-4, 4, (mmax, nmax)))
    zpre[rng.random(zpre.shape) < 0.05] = 0.0
    ys = {act: f32(ref.activation_forward(zpre.astype(np.float64), act, SLOPE)) for act in ACTS}
    return dict(ms=ms, ns=ns, ks=ks, a=a, b=b, prod=prod, absprod=absprod, bias=bias,
                zpre=zpre, ys=ys)


def check_edge(d, m, n, k, ta, tb, *, bias=False, act=None, grad=None):
    """One kernel call on an (m, n, k) problem cut from the edge data, checked against the float64
    reference with the bound of the module docstring."""
    a_op, b_op = d["a"][:m, :k], d["b"][:k, :n]
    kw = dict(trans_a=ta, trans_b=tb, negative_slope=SLOPE)
    c64 = d["prod"][k][:m, :n]
    bound = 2 * k * U * d["absprod"][k][:m, :n]
    rtol, atol = ELEMENTWISE_RTOL, ELEMENTWISE_ATOL
    if grad is not None:
        kw["grad_activation"] = grad
        y = np.ascontiguousarray(d["ys"][grad][:m, :n])
        z = np.ascontiguousarray(d["zpre"][:m, :n])
        kw.update(y=y, z=z)
        expected = ref.activation_backward(c64, grad, y=y.astype(np.float64),
                                           z=z.astype(np.float64), negative_slope=SLOPE)
        bound = bound * MAX_DERIV[grad] + ELEMENTWISE_RTOL * np.abs(c64)
    else:
        pre = c64
        if bias:
            kw["bias"] = np.ascontiguousarray(d["bias"][:n])
            pre = c64 + d["bias"][:n].astype(np.float64)
        if act is not None:
            kw["activation"] = act
        expected = ref.activation_forward(pre, act or "identity", SLOPE)
        bound = bound * MAX_DERIV[act or "identity"]
    got = fastmlp.matmul(stored(a_op, ta), stored(b_op, tb), **kw)
    assert got.shape == (m, n) and got.dtype == np.float32
    assert_close(got, expected, rtol=rtol, atol=atol, bound=bound,
                 name=f"m={m} n={n} k={k} ta={ta} tb={tb} bias={bias} act={act} grad={grad}")


@pytest.mark.parametrize("ta,tb", TRANSPOSES, ids=["NN", "NT", "TN", "TT"])
def test_edge_full_cross_product(isa, ta, tb):
    """Every (m, n) in 1..3MR+1 x 1..3NR+1, for each transpose combination, at k = KC + 1 (two
    K blocks, the second of one step) and k = 1, no epilogue."""
    d = edge_data(isa)
    for k in (d["ks"][-1], 1):
        for m in d["ms"]:
            for n in d["ns"]:
                check_edge(d, m, n, k, ta, tb)


def test_edge_transposes_and_k(isa):
    """Every transpose combination x every k in {1, KC-1, KC, KC+1}; within each, every m and
    every n appear (m cycles while n sweeps)."""
    d = edge_data(isa)
    ms, ns = d["ms"], d["ns"]
    for (ta, tb), k in itertools.product(TRANSPOSES, d["ks"]):
        for i, n in enumerate(ns):
            check_edge(d, ms[(5 * i) % len(ms)], n, k, ta, tb)
        for i, m in enumerate(ms):  # and the widest n with every m
            check_edge(d, m, ns[-1 - (i % 3)], k, ta, tb)


EPILOGUES = (
    [dict(bias=True)]
    + [dict(act=a) for a in ACTS]
    + [dict(bias=True, act=a) for a in ACTS]  # includes bias + relu
    + [dict(grad=a) for a in ACTS]  # y for relu/leaky/tanh/logistic, z for gelu
)


def _epi_id(e):
    return "-".join(f"{k}={v}" for k, v in e.items())


@pytest.mark.parametrize("epilogue", EPILOGUES, ids=_epi_id)
def test_edge_epilogues(isa, epilogue):
    """Each epilogue over every m, every n, every transpose combination and every k."""
    d = edge_data(isa)
    ms, ns, ks = d["ms"], d["ns"], d["ks"]
    for i, n in enumerate(ns):
        m = ms[(7 * i) % len(ms)]  # 7 is prime to len(ms): every m appears
        ta, tb = TRANSPOSES[i % 4]
        k = ks[(i // 4) % 4]  # 16 consecutive i cover every (transpose, k)
        check_edge(d, m, n, k, ta, tb, **epilogue)


# --------------------------------------------------------------------------------------------
# alpha, beta, empty and large problems
# --------------------------------------------------------------------------------------------


def _bound_ab(a_op, b_op, c0, alpha, beta):
    k = a_op.shape[1]
    return 2 * (k + 2) * U * (abs(alpha) * (np.abs(a_op.astype(np.float64))
                                            @ np.abs(b_op.astype(np.float64)))
                              + abs(beta) * np.abs(c0.astype(np.float64)))


@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (-0.5, 0.0), (2.0, 1.0), (0.75, -1.5),
                                        (0.0, 2.0)])
@pytest.mark.parametrize("ta,tb", TRANSPOSES)
def test_alpha_beta(isa, rng, alpha, beta, ta, tb):
    kc = core.gemm_blocks(isa)["kc"]
    m, n, k = 23, 45, 2 * kc + 7  # three K blocks: beta applies on the first only
    a_op = f32(rng.standard_normal((m, k)))
    b_op = f32(rng.standard_normal((k, n)))
    c0 = f32(rng.standard_normal((m, n)))
    out = c0.copy()
    res = fastmlp.matmul(stored(a_op, ta), stored(b_op, tb), trans_a=ta, trans_b=tb,
                         alpha=alpha, beta=beta, out=out)
    assert res is out
    expected = ref.matmul(a_op.astype(np.float64), b_op.astype(np.float64), alpha=alpha,
                          beta=beta, out=c0.astype(np.float64))
    assert_close(out, expected, bound=_bound_ab(a_op, b_op, c0, alpha, beta))


def test_alpha_beta_with_epilogue(isa, rng):
    m, n, k = 17, 40, 300
    a_op = f32(rng.standard_normal((m, k)))
    b_op = f32(rng.standard_normal((k, n)))
    bias = f32(rng.standard_normal(n))
    c0 = f32(rng.standard_normal((m, n)))
    out = c0.copy()
    fastmlp.matmul(a_op, b_op, alpha=0.5, beta=-2.0, out=out, bias=bias, activation="tanh")
    expected = ref.matmul(a_op.astype(np.float64), b_op.astype(np.float64), alpha=0.5,
                          beta=-2.0, out=c0.astype(np.float64), bias=bias.astype(np.float64),
                          activation="tanh")
    assert_close(out, expected, rtol=ELEMENTWISE_RTOL, atol=ELEMENTWISE_ATOL,
                 bound=_bound_ab(a_op, b_op, c0, 0.5, -2.0))


@pytest.mark.parametrize("ta,tb", TRANSPOSES)
def test_beta_zero_ignores_nan_in_out(isa, rng, ta, tb):
    m, n, k = 13, 37, 20
    a_op = f32(rng.standard_normal((m, k)))
    b_op = f32(rng.standard_normal((k, n)))
    out = np.full((m, n), np.nan, dtype=np.float32)
    out[::2] = np.inf
    fastmlp.matmul(stored(a_op, ta), stored(b_op, tb), trans_a=ta, trans_b=tb, beta=0.0,
                   out=out)
    assert np.isfinite(out).all()
    assert_close(out, a_op.astype(np.float64) @ b_op.astype(np.float64),
                 bound=gemm_error_bound(a_op, b_op, k))


def test_k_zero(isa, rng):
    """K = 0: the product is 0, but beta and the epilogue still apply (rule 1)."""
    m, n = 9, 21
    a = np.zeros((m, 0), np.float32)
    b = np.zeros((0, n), np.float32)
    bias = f32(rng.standard_normal(n))
    c0 = f32(rng.standard_normal((m, n)))
    # no out: zeros (plus the epilogue)
    assert_bitwise_equal(fastmlp.matmul(a, b), np.zeros((m, n), np.float32))
    got = fastmlp.matmul(a, b, bias=bias, activation="relu")
    assert_close(got, np.broadcast_to(np.maximum(bias, 0), (m, n)))
    # beta, bias, activation
    out = c0.copy()
    fastmlp.matmul(a, b, beta=0.5, out=out, bias=bias, activation="tanh")
    expected = np.tanh(0.5 * c0.astype(np.float64) + bias)
    assert_close(out, expected, rtol=ELEMENTWISE_RTOL, atol=ELEMENTWISE_ATOL)
    # transposed empty operands, backward epilogue
    y = f32(rng.uniform(-1, 1, (m, n)))
    out = c0.copy()
    fastmlp.matmul(np.zeros((0, m), np.float32), np.zeros((n, 0), np.float32), trans_a=True,
                   trans_b=True, beta=1.0, out=out, grad_activation="relu", y=y)
    assert_close(out, c0 * (y > 0))


@pytest.mark.parametrize("m,n,k", [(0, 5, 3), (5, 0, 3), (0, 0, 3), (0, 0, 0), (0, 7, 0)])
def test_m_or_n_zero(isa, m, n, k):
    for ta, tb in TRANSPOSES:
        a = np.ones((k, m) if ta else (m, k), np.float32)
        b = np.ones((n, k) if tb else (k, n), np.float32)
        got = fastmlp.matmul(a, b, trans_a=ta, trans_b=tb, bias=np.ones(n, np.float32),
                             activation="gelu")
        assert got.shape == (m, n) and got.dtype == np.float32
        out = np.empty((m, n), np.float32)
        assert fastmlp.matmul(a, b, trans_a=ta, trans_b=tb, out=out, beta=1.0) is out


@pytest.mark.parametrize("ta,tb", [(False, False), (False, True)])
def test_large_spans_several_blocks(isa, ta, tb):
    """300 x 1100 x 900: several MC, NC and KC blocks and every thread."""
    rng = np.random.default_rng(7)
    m, n, k = 300, 1100, 900
    a_op = f32(rng.standard_normal((m, k)))
    b_op = f32(rng.standard_normal((k, n)))
    bias = f32(rng.standard_normal(n))
    got = fastmlp.matmul(stored(a_op, ta), stored(b_op, tb), trans_a=ta, trans_b=tb, bias=bias,
                         activation="relu")
    c64 = a_op.astype(np.float64) @ b_op.astype(np.float64) + bias
    assert_close(got, np.maximum(c64, 0), rtol=ELEMENTWISE_RTOL, atol=ELEMENTWISE_ATOL,
                 bound=gemm_error_bound(a_op, b_op, k))


# --------------------------------------------------------------------------------------------
# Layouts (binding note b): every layout gives the bits of the C-contiguous call
# --------------------------------------------------------------------------------------------


def _unaligned(x):
    """A copy of x whose data starts 4 bytes past a 64-byte boundary (float32-aligned only)."""
    buf = np.zeros(x.nbytes + 128, dtype=np.uint8)
    start = (-buf.ctypes.data) % 64 + 4
    view = buf[start:start + x.nbytes].view(np.float32).reshape(x.shape)
    view[...] = x
    assert view.ctypes.data % 16 == 4
    return view


def _readonly(x):
    x = x.copy()
    x.flags.writeable = False
    return x


def _layouts(x):
    """(name, array equal to x in another memory layout)."""
    big = np.zeros((x.shape[0] * 2 + 1, x.shape[1] * 3 + 2), np.float32)
    big[1::2, 2::3] = x
    rev = np.ascontiguousarray(x[::-1, ::-1])
    wide = np.zeros((x.shape[0], x.shape[1] + 9), np.float32)
    wide[:, 3:3 + x.shape[1]] = x
    return [
        ("fortran", np.asfortranarray(x)),
        ("strided", big[1::2, 2::3]),
        ("negative_strides", rev[::-1, ::-1]),
        ("column_slice", wide[:, 3:3 + x.shape[1]]),
        ("readonly", _readonly(x)),
        ("unaligned", _unaligned(x)),
        ("fortran_column_slice", np.asfortranarray(wide.T).T[:, 3:3 + x.shape[1]]),
    ]


@pytest.mark.parametrize("ta,tb", TRANSPOSES)
def test_layouts(isa, ta, tb):
    rng = np.random.default_rng(11)
    m, n, k = 29, 70, 50
    a_op = f32(rng.standard_normal((m, k)))
    b_op = f32(rng.standard_normal((k, n)))
    bias = f32(rng.standard_normal(n))
    a_st, b_st = stored(a_op, ta), stored(b_op, tb)
    kw = dict(trans_a=ta, trans_b=tb, bias=bias, activation="leaky_relu")
    base = fastmlp.matmul(a_st, b_st, **kw)
    expected = ref.matmul(a_op.astype(np.float64), b_op.astype(np.float64), bias=bias,
                          activation="leaky_relu")
    assert_close(base, expected, rtol=ELEMENTWISE_RTOL, atol=ELEMENTWISE_ATOL,
                 bound=gemm_error_bound(a_op, b_op, k))
    for name, a_l in _layouts(a_st):
        assert_bitwise_equal(fastmlp.matmul(a_l, b_st, **kw), base, name=f"a {name}")
    for name, b_l in _layouts(b_st):
        assert_bitwise_equal(fastmlp.matmul(a_st, b_l, **kw), base, name=f"b {name}")
    # layouts of y / z / bias (copied by the bindings) in the epilogues
    y = f32(rng.uniform(-1, 1, (m, n)))
    gbase = fastmlp.matmul(a_st, b_st, trans_a=ta, trans_b=tb, grad_activation="tanh", y=y)
    for name, y_l in _layouts(y):
        got = fastmlp.matmul(a_st, b_st, trans_a=ta, trans_b=tb, grad_activation="tanh", y=y_l)
        assert_bitwise_equal(got, gbase, name=f"y {name}")
    got = fastmlp.matmul(a_st, b_st, trans_a=ta, trans_b=tb, bias=_unaligned(bias[None])[0],
                         activation="leaky_relu")
    assert_bitwise_equal(got, base, name="unaligned bias")


@pytest.mark.parametrize("ta,tb", TRANSPOSES)
def test_layouts_narrow_n(isa, ta, tb):
    """A 10-wide C: bitwise equal over the layouts that keep the transpose flags; a Fortran-ordered
    operand flips its flag (note b of the bindings), which for A may change the summation order,
    and must then still meet the error bound."""
    rng = np.random.default_rng(13)
    m, n, k = 40, 10, 300
    a_op = f32(rng.standard_normal((m, k)))
    b_op = f32(rng.standard_normal((k, n)))
    a_st, b_st = stored(a_op, ta), stored(b_op, tb)
    kw = dict(trans_a=ta, trans_b=tb)
    base = fastmlp.matmul(a_st, b_st, **kw)
    bound = gemm_error_bound(a_op, b_op, k)
    expected = ref.matmul(a_op.astype(np.float64), b_op.astype(np.float64))
    assert_close(base, expected, rtol=0, atol=0, bound=bound)
    for which, layouts in (("a", _layouts(a_st)), ("b", _layouts(b_st))):
        for name, x in layouts:
            got = (fastmlp.matmul(x, b_st, **kw) if which == "a"
                   else fastmlp.matmul(a_st, x, **kw))
            if which == "a" and name.startswith("fortran"):
                assert_close(got, expected, rtol=0, atol=0, bound=bound, name=f"a {name}")
            else:
                assert_bitwise_equal(got, base, name=f"{which} {name}")


def test_unaligned_out_and_beta(isa, rng):
    m, n, k = 31, 45, 33
    a = f32(rng.standard_normal((m, k)))
    b = f32(rng.standard_normal((k, n)))
    c0 = f32(rng.standard_normal((m, n)))
    out_ref = c0.copy()
    fastmlp.matmul(a, b, beta=1.0, out=out_ref)
    out = _unaligned(c0)
    fastmlp.matmul(a, b, beta=1.0, out=out)
    assert_bitwise_equal(out, out_ref)


def test_layout_zero_sized(isa):
    a = np.zeros((0, 6), np.float32)[:, ::2]
    b = np.asfortranarray(np.zeros((3, 4), np.float32))
    got = fastmlp.matmul(a, b)
    assert got.shape == (0, 4)
    got = fastmlp.matmul(np.zeros((5, 0), np.float32, order="F"), np.zeros((0, 4), np.float32))
    assert_bitwise_equal(got, np.zeros((5, 4), np.float32))


# --------------------------------------------------------------------------------------------
# Determinism (rule 4)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("m,n,k", [(37, 2000, 300), (2000, 20, 500), (1000, 100, 100),
                                   (2000, 10, 300)],
                         ids=["split_n", "split_m", "split_m_by_cost", "narrow_n"])
@pytest.mark.parametrize("ta,tb", [(False, False), (True, True)])
def test_thread_count_does_not_change_bits(isa, m, n, k, ta, tb):
    rng = np.random.default_rng(3)
    a_op = f32(rng.standard_normal((m, k)))
    b_op = f32(rng.standard_normal((k, n)))
    bias = f32(rng.standard_normal(n))
    a_st, b_st = stored(a_op, ta), stored(b_op, tb)
    (c,) = bitwise_across_threads(lambda: (fastmlp.matmul(a_st, b_st, trans_a=ta, trans_b=tb,
                                                          bias=bias, activation="gelu"),))
    expected = ref.matmul(a_op.astype(np.float64), b_op.astype(np.float64), bias=bias,
                          activation="gelu")
    assert_close(c, expected, rtol=ELEMENTWISE_RTOL, atol=ELEMENTWISE_ATOL,
                 bound=MAX_DERIV["gelu"] * gemm_error_bound(a_op, b_op, k))


@pytest.mark.parametrize("ta,tb", TRANSPOSES)
@pytest.mark.parametrize("epilogue", ["none", "bias_gelu", "grad_logistic"])
@pytest.mark.parametrize("narrow", [False, True], ids=["wide", "narrow"])
def test_row_alone_equals_row_in_batch(isa, ta, tb, epilogue, narrow):
    """Narrow: a 10-wide C, which the kernel may compute as dot products along k (row-major
    A) or as C^T (transposed A) depending on the shape: a row must come out the same."""
    rng = np.random.default_rng(5)
    blk = core.gemm_blocks(isa)
    m, n, k = 4 * blk["mr"] + 3, 10 if narrow else 3 * blk["nr"] + 5, blk["kc"] + 9
    a_op = f32(rng.standard_normal((m, k)))
    b_op = f32(rng.standard_normal((k, n)))
    bias = f32(rng.standard_normal(n))
    y = f32(rng.uniform(0, 1, (m, n)))
    b_st = stored(b_op, tb)

    def run(rows):
        kw = dict(trans_a=ta, trans_b=tb)
        if epilogue == "bias_gelu":
            kw.update(bias=bias, activation="gelu")
        elif epilogue == "grad_logistic":
            kw.update(grad_activation="logistic", y=np.ascontiguousarray(y[rows]))
        return fastmlp.matmul(stored(a_op[rows], ta), b_st, **kw)

    batch = run(slice(None))
    for i in (0, 1, blk["mr"] - 1, blk["mr"], m // 2, m - 1):
        assert_bitwise_equal(run(slice(i, i + 1)), batch[i:i + 1], name=f"row {i}")
    # a sub-batch starting mid-tile
    lo = blk["mr"] // 2 + 1
    assert_bitwise_equal(run(slice(lo, lo + blk["mr"] + 2)), batch[lo:lo + blk["mr"] + 2],
                         name="sub-batch")


def test_repeated_calls_are_bitwise_equal(isa, rng):
    a = f32(rng.standard_normal((50, 400)))
    b = f32(rng.standard_normal((400, 70)))
    first = fastmlp.matmul(a, b, activation="tanh")
    for _ in range(3):
        assert_bitwise_equal(fastmlp.matmul(a, b, activation="tanh"), first)


# --------------------------------------------------------------------------------------------
# NaN propagation through the fused activations (rule 6)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("act", ACTS)
def test_nan_propagates_through_epilogue(isa, act):
    rng = np.random.default_rng(9)
    m, n, k = 15, 40, 12
    a = f32(rng.standard_normal((m, k)))
    b = f32(rng.standard_normal((k, n)))
    a[3, 5] = np.nan  # row 3 of C is NaN
    b[2, 7] = np.nan  # column 7 of C is NaN
    bias = f32(rng.standard_normal(n))
    bias[11] = np.nan  # column 11 too
    # large negative products too: relu's / logistic's / gelu's saturation must not eat the NaN
    a[5] = -50.0
    got = fastmlp.matmul(a, b, bias=bias, activation=act, negative_slope=SLOPE)
    nan = np.zeros((m, n), bool)
    nan[3] = nan[:, 7] = nan[:, 11] = True
    assert_bitwise_equal(np.isnan(got), nan)
    with np.errstate(invalid="ignore"):
        expected = ref.matmul(a.astype(np.float64), b.astype(np.float64), bias=bias,
                              activation=act, negative_slope=SLOPE)
    assert_close(got, expected, rtol=ELEMENTWISE_RTOL, atol=ELEMENTWISE_ATOL,
                 bound=MAX_DERIV[act] * np.nan_to_num(gemm_error_bound(a, b, k)))


@pytest.mark.parametrize("act", ["relu", "leaky_relu", "tanh", "logistic", "gelu"])
def test_nan_survives_backward_epilogue_mask(isa, act):
    """Rule 6: the backward mask is a multiplication, so NaN in the product survives a 0 mask."""
    m, n, k = 6, 20, 5
    a = np.ones((m, k), np.float32)
    a[2, 1] = np.nan
    b = np.ones((k, n), np.float32)
    y = np.zeros((m, n), np.float32)  # relu mask 0, logistic/tanh derivative nonzero
    z = np.full((m, n), -30.0, np.float32)  # gelu'(-30) = -0: 0 mask
    got = fastmlp.matmul(a, b, grad_activation=act, y=y, z=z)
    assert np.isnan(got[2]).all()
    assert not np.isnan(np.delete(got, 2, axis=0)).any()


# --------------------------------------------------------------------------------------------
# Property test: random small problems against the reference
# --------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(m=st.integers(0, 40), n=st.integers(0, 70), k=st.integers(0, 70),
       ta=st.booleans(), tb=st.booleans(), seed=st.integers(0, 2**31 - 1),
       act=st.sampled_from((None,) + ACTS), use_bias=st.booleans(),
       alpha=st.sampled_from([1.0, -1.0, 0.5, 3.0]), beta=st.sampled_from([0.0, 1.0, -0.25]))
def test_property_random_small_gemm(isa, m, n, k, ta, tb, seed, act, use_bias, alpha, beta):
    rng = np.random.default_rng(seed)
    a_op = f32(rng.standard_normal((m, k)))
    b_op = f32(rng.standard_normal((k, n)))
    bias = f32(rng.standard_normal(n)) if use_bias else None
    c0 = f32(rng.standard_normal((m, n)))
    out = c0.copy()
    fastmlp.matmul(stored(a_op, ta), stored(b_op, tb), trans_a=ta, trans_b=tb, bias=bias,
                   activation=act, alpha=alpha, beta=beta, out=out, negative_slope=SLOPE)
    expected = ref.matmul(a_op.astype(np.float64), b_op.astype(np.float64), bias=bias,
                          activation=act, alpha=alpha, beta=beta, out=c0.astype(np.float64),
                          negative_slope=SLOPE)
    assert_close(out, expected, rtol=ELEMENTWISE_RTOL, atol=ELEMENTWISE_ATOL,
                 bound=MAX_DERIV[act or "identity"] * _bound_ab(a_op, b_op, c0, alpha, beta))


# --------------------------------------------------------------------------------------------
# The plan (fm_plan_matmul): which path each product of an MLP step takes
# --------------------------------------------------------------------------------------------


def _plan(m, n, k, ta=False, tb=False, n_threads=2):
    a = np.zeros((k, m) if ta else (m, k), np.float32)
    b = np.zeros((n, k) if tb else (k, n), np.float32)
    fastmlp.set_num_threads(n_threads)
    return core.matmul_plan(a, b, trans_a=ta, trans_b=tb)


# A 784-512-256-10 MLP at batch 128: forward X W, weight gradients X^T D, input gradients D W^T.
# The narrow paths depend on the vector width: 10 classes fill most of AVX-512's 16 lanes (the
# dot path forward, C^T for dW), not AVX2's 8 or the generic path's 4 (fastmlp.h, FM_PATH_*).
ANY = dict(generic="blocked", avx2="blocked", avx512="blocked")
MLP_PRODUCTS = [
    ("forward 784->512", (128, 512, 784), False, False, ANY),
    ("forward logits 256->10", (128, 10, 256), False, False,
     dict(generic="blocked", avx2="blocked", avx512="dot")),
    ("dW 784x512", (784, 512, 128), True, False, ANY),
    ("dW logits 256x10", (256, 10, 128), True, False,
     dict(generic="blocked", avx2="blocked_ct", avx512="blocked_ct")),
    ("dX from logits (K = 10)", (128, 256, 10), False, True, ANY),
    ("dX 256->512", (128, 512, 256), False, True, ANY),
]


@pytest.mark.parametrize("name,shape,ta,tb,paths", MLP_PRODUCTS,
                         ids=[p[0] for p in MLP_PRODUCTS])
def test_plan_of_mlp_products(isa, name, shape, ta, tb, paths):
    m, n, k = shape
    plan = _plan(m, n, k, ta, tb)
    assert plan["path"] == paths[isa]
    assert 1 <= plan["threads"] <= 2
    kc = core.gemm_blocks(isa)["kc"]
    if plan["path"] == "dot":
        assert plan["kc"] == 0          # the dot path does not block K
    else:
        blocks = -(-k // kc)
        assert plan["kc"] == -(-k // blocks) <= kc    # equal blocks of at most KC
        assert plan["mc"] == core.gemm_blocks(isa)["mc"]
    if ta and not tb and plan["path"] == "blocked":
        assert plan["split"] == "m"     # a weight gradient splits M (tall and narrow)
    if tb:
        assert plan["pack_b"]           # a transposed B is always packed


def test_plan_narrow_paths_exist_where_the_lanes_are(isa):
    """On every ISA, an N no wider than one vector takes the dot path forward and C^T for a
    transposed A: the same 256x10 products with N = VLEN / 2 classes."""
    vlen = {"generic": 4, "avx2": 8, "avx512": 16, "neon": 4}[isa]
    n = vlen // 2
    assert _plan(128, n, 256)["path"] == "dot"
    assert _plan(256, n, 128, ta=True)["path"] == "blocked_ct"


def test_plan_path_does_not_depend_on_m(isa):
    """The dot path sums along k in another order: it is chosen from N and K only, so a row alone
    takes the path (and the bits) it takes inside a batch (fastmlp.h rule 4)."""
    for n, k in [(10, 256), (3, 100), (16, 5000), (10, 8)]:
        paths = {_plan(m, n, k)["path"] for m in (1, 2, 7, 128, 1000)}
        assert len(paths) == 1, (n, k, paths)


def test_plan_threads_follow_the_limit_and_the_size(isa):
    assert _plan(512, 512, 512, n_threads=1)["threads"] == 1
    assert _plan(512, 512, 512, n_threads=2)["threads"] == 2
    assert _plan(4, 4, 4, n_threads=2)["threads"] == 1          # too small to wake a thread
    assert _plan(0, 5, 3)["threads"] == 1


def test_plan_matches_what_the_profiler_records(isa):
    """The path the profiler names is the plan's: a profiled product records it."""
    rng = np.random.default_rng(4)
    h, w = f32(rng.standard_normal((128, 256))), f32(rng.standard_normal((256, 10)))
    d = f32(rng.standard_normal((128, 10)))
    fastmlp.set_num_threads(2)
    with fastmlp.profile(peak_gflops=1.0) as prof:
        fastmlp.matmul(h, w)
        fastmlp.matmul(h, d, trans_a=True)
    paths = sorted((r["flags"], r["path"]) for r in prof.records)
    assert paths == [((), core.matmul_plan(h, w)["path"]),
                     (("trans_a",), core.matmul_plan(h, d, trans_a=True)["path"])]
    for r in prof.records:
        assert r["name"].endswith(f"[{r['path']}]")


def test_plan_rejects_bad_operands():
    a = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="inner dimensions"):
        core.matmul_plan(a, a)
    with pytest.raises(TypeError, match="float32"):
        core.matmul_plan(a.astype(np.float64), a.T)
