"""pytest-benchmark suite: fastmlp's GEMM against NumPy, grouped by shape.

    env -u OPENBLAS_CORETYPE pytest benchmarks/test_bench_gemm.py --benchmark-group-by=group

Each group holds fastmlp, NumPy's matmul and, for fused products, the unfused NumPy sequence, so
pytest-benchmark's table compares them side by side. benchmarks/gemm_report.py prints the same
comparison as GFLOP/s, % of the measured peak and ratios. No assertions on time: speed is read
from the tables, never asserted.
"""
import numpy as np
import pytest

import fastmlp

from gemm_report import CASES


def _operands(case):
    name, M, N, K, ta, tb, fused = case
    rng = np.random.default_rng(0)
    a = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
    b = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    y = np.maximum(rng.standard_normal((M, N)), 0).astype(np.float32)
    return a, b, bias, y


def _kwargs(case, bias, y):
    fused = case[6]
    if fused == "relu":
        return dict(bias=bias, activation="relu")
    if fused == "mask":
        return dict(grad_activation="relu", y=y)
    return {}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("impl", ["fastmlp", "numpy"])
def test_gemm(benchmark, case, impl):
    name, M, N, K, ta, tb, fused = case
    a, b, bias, y = _operands(case)
    A, B = (a.T if ta else a), (b.T if tb else b)
    benchmark.group = name
    benchmark.extra_info["gflop"] = 2e-9 * M * N * K
    if impl == "fastmlp":
        out = np.empty((M, N), np.float32)
        result = benchmark(fastmlp.matmul, a, b, trans_a=ta, trans_b=tb, out=out,
                           **_kwargs(case, bias, y))
    elif fused == "relu":  # the unfused NumPy sequence
        result = benchmark(lambda: np.maximum(A @ B + bias, 0))
    elif fused == "mask":
        result = benchmark(lambda: (A @ B) * (y > 0))
    else:
        result = benchmark(np.matmul, A, B)
    assert result.shape == (M, N)
