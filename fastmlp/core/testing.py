"""Comparison helpers shared by every kernel test.

Tolerance policy (float32 kernels against the float64 or float32 reference):

* GEMM: a componentwise bound, |C - C_ref| <= 2 k u (|op(A)| @ |op(B)|) with u = 2**-24, the
  classical error bound of a k-term float32 dot product with a factor of 2 slack
  (``gemm_error_bound``, passed to ``assert_close`` as ``bound=``). It holds whatever the
  summation order and scales with each element's own magnitudes, so it neither hides a wrong
  element among large ones nor fails on cancellation. A normwise relative error
  ||C - C_ref||_F / ||C_ref||_F < 1e-5 is the acceptable alternative where a bound is awkward.
* Elementwise kernels (activations and their backward, optimizer updates): rtol 1e-6,
  atol 1e-7 (``ELEMENTWISE_RTOL``, ``ELEMENTWISE_ATOL``): a few float32 ulps.
* Reductions and losses (bias gradient, loss values): a bound of the same form as GEMM's,
  2 n u * sum |terms| for a sum of n terms, e.g. for column sums of dz (M, N):
  ``gemm_error_bound(dz, np.ones((M, 1)), M, trans_a=True).ravel()``.
* Bitwise equality (``assert_bitwise_equal``) for the determinism guarantees: same result
  across thread counts, repeated calls and batch splits.

Every comparison is made in float64. NaN must sit at the same positions in both arrays and
infinities must be equal; they are never "close" to anything else.
"""

import numpy as np

__all__ = [
    "ELEMENTWISE_RTOL",
    "ELEMENTWISE_ATOL",
    "FLOAT32_UNIT_ROUNDOFF",
    "assert_close",
    "assert_bitwise_equal",
    "gemm_error_bound",
]

ELEMENTWISE_RTOL = 1e-6
ELEMENTWISE_ATOL = 1e-7
FLOAT32_UNIT_ROUNDOFF = 2.0**-24

_MAX_REPORTED = 10


def _label(name):
    return f"{name}: " if name else ""


def assert_close(actual, expected, *, rtol=0.0, atol=0.0, bound=None, name=""):
    """Assert |actual - expected| <= atol + rtol |expected| (+ bound) elementwise.

    actual, expected: arrays (or scalars) of the same shape; bound: per-element absolute
    tolerances broadcastable to that shape, or None. NaN must be at the same positions in
    both and +-inf must match exactly. Raises AssertionError listing the shape, the number of
    mismatches, the largest absolute and relative errors and the first mismatches.
    """
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        raise AssertionError(
            f"{_label(name)}shape mismatch: actual {a.shape}, expected {e.shape}"
        )
    with np.errstate(invalid="ignore", over="ignore"):
        # 0 * inf = NaN in `allowed` only where expected is infinite, which is judged apart.
        allowed = atol + rtol * np.abs(e)
        if bound is not None:
            allowed = allowed + np.asarray(bound, dtype=np.float64)
        allowed = np.broadcast_to(allowed, e.shape)
        diff = np.abs(a - e)  # inf - inf = NaN: such elements are judged below instead
        a_nan, e_nan = np.isnan(a), np.isnan(e)
        nonfinite = ~np.isfinite(a) | ~np.isfinite(e)
        ok = np.where(
            nonfinite,
            (a_nan & e_nan) | (a == e),  # NaN at both positions, or the same infinity
            diff <= allowed,
        )
    bad = ~ok
    n_bad = int(bad.sum())
    if n_bad == 0:
        return

    finite = ~nonfinite
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = diff / np.abs(e)
    max_abs = diff[finite].max() if finite.any() else float("nan")
    max_rel = rel[finite].max() if finite.any() else float("nan")
    lines = [
        f"{_label(name)}arrays not close (shape {e.shape}, rtol={rtol}, atol={atol}"
        f"{', with bound' if bound is not None else ''})",
        f"mismatches: {n_bad} of {e.size}",
        f"max abs error: {max_abs:.6g}, max rel error: {max_rel:.6g} (over finite elements)",
        f"first {min(n_bad, _MAX_REPORTED)} mismatches:",
        "index  actual  expected  |diff|  allowed",
    ]
    for idx in np.argwhere(bad)[:_MAX_REPORTED]:
        i = tuple(int(k) for k in idx)
        lines.append(f"{i}  {a[i]!r}  {e[i]!r}  {diff[i]:.6g}  {allowed[i]:.6g}")
    raise AssertionError("\n".join(lines))


def gemm_error_bound(a, b, k, trans_a=False, trans_b=False):
    """Componentwise error bound of a float32 GEMM: 2 k 2**-24 (|op(a)| @ |op(b)|), in float64.

    a, b: the GEMM operands as stored (op(x) = x.T if trans else x); k: the inner dimension.
    The result has the shape of C (M, N); pass it to ``assert_close(..., bound=...)``.
    """
    op_a = np.abs(np.asarray(a, dtype=np.float64))
    op_b = np.abs(np.asarray(b, dtype=np.float64))
    if trans_a:
        op_a = op_a.T
    if trans_b:
        op_b = op_b.T
    return 2 * k * FLOAT32_UNIT_ROUNDOFF * (op_a @ op_b)


def assert_bitwise_equal(a, b, name=""):
    """Assert a and b have the same shape, dtype and bytes (NaN payloads and signed zeros too)."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise AssertionError(f"{_label(name)}shape mismatch: {a.shape} vs {b.shape}")
    if a.dtype != b.dtype:
        raise AssertionError(f"{_label(name)}dtype mismatch: {a.dtype} vs {b.dtype}")
    # Compare the raw bytes of each element: == would call NaN != NaN and -0.0 == 0.0.
    a_bytes = np.ascontiguousarray(a).view(np.uint8).reshape(a.shape + (a.dtype.itemsize,))
    b_bytes = np.ascontiguousarray(b).view(np.uint8).reshape(b.shape + (b.dtype.itemsize,))
    differs = (a_bytes != b_bytes).any(axis=-1)
    n_diff = int(differs.sum())
    if n_diff == 0:
        return
    lines = [
        f"{_label(name)}arrays not bitwise equal (shape {a.shape}, dtype {a.dtype})",
        f"differing elements: {n_diff} of {a.size}",
        f"first {min(n_diff, _MAX_REPORTED)}:",
        "index  a  b",
    ]
    for idx in np.argwhere(differs)[:_MAX_REPORTED]:
        i = tuple(int(k) for k in idx)
        lines.append(f"{i}  {a[i]!r}  {b[i]!r}")
    raise AssertionError("\n".join(lines))
