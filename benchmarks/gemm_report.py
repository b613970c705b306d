"""GEMM speed report: fastmlp against NumPy's BLAS, side by side in one run.

For each shape it prints GFLOP/s, % of the FMA peak measured on this machine, and the ratio to
NumPy (and to the unfused NumPy sequence for fused products): medians of ~50 ms blocks of
timings, fastmlp and NumPy in turn with a pause between them (fastmlp.tools.bench.compare), so
drift on a shared machine hits both alike. The JSON's context is fastmlp.tools.bench.context(): the
commit of this checkout, the CPU, the BLAS kernel and the versions compared with.

    env -u OPENBLAS_CORETYPE python benchmarks/gemm_report.py [--threads 2] [--json out.json]

Speed claims are made against NumPy with OpenBLAS choosing its own kernel: the script prints
which kernel that is and warns when OPENBLAS_CORETYPE forces one.
"""
import argparse
import json
import os

import numpy as np
from threadpoolctl import threadpool_limits

import fastmlp
from fastmlp import core
from fastmlp.tools.bench import blas_info, compare, context

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name, M, N, K, trans_a, trans_b, fused epilogue ("relu" = bias + relu, "mask" = relu backward)
CASES = [
    ("square 1024", 1024, 1024, 1024, False, False, None),
    ("square 2048", 2048, 2048, 2048, False, False, None),
    ("mlp b128 fwd 784x512", 128, 512, 784, False, False, None),
    ("mlp b128 fwd 512x256", 128, 256, 512, False, False, None),
    ("mlp b128 dW 784x512", 784, 512, 128, True, False, None),
    ("mlp b128 dW 512x256", 512, 256, 128, True, False, None),
    ("mlp b128 dX 512->784", 128, 784, 512, False, True, None),
    ("mlp b128 dX 256->512", 128, 512, 256, False, True, None),
    ("mlp b512 fwd 784x512", 512, 512, 784, False, False, None),
    ("mlp b512 fwd 512x256", 512, 256, 512, False, False, None),
    ("mlp b512 dW 784x512", 784, 512, 512, True, False, None),
    ("mlp b512 dW 512x256", 512, 256, 512, True, False, None),
    ("mlp b512 dX 512->784", 512, 784, 512, False, True, None),
    ("mlp b512 dX 256->512", 512, 512, 256, False, True, None),
    ("logits b128 fwd 256x10", 128, 10, 256, False, False, None),
    ("logits b128 dW 256x10", 256, 10, 128, True, False, None),
    ("logits b128 dX 10->256", 128, 256, 10, False, True, None),
    ("fused relu(XW+b) 128x784x512", 128, 512, 784, False, False, "relu"),
    ("fused (dY W^T)*[Y>0] 128x512x256", 128, 512, 256, False, True, "mask"),
]


def run_case(case, rng, repeats):
    name, M, N, K, ta, tb, fused = case
    a = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
    b = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
    A, B = (a.T if ta else a), (b.T if tb else b)
    out = np.empty((M, N), np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    y = np.maximum(rng.standard_normal((M, N)), 0).astype(np.float32)
    if fused == "relu":
        ours = lambda: fastmlp.matmul(a, b, trans_a=ta, trans_b=tb, bias=bias,  # noqa: E731
                                      activation="relu", out=out)
        theirs = lambda: np.maximum(A @ B + bias, 0)  # noqa: E731
    elif fused == "mask":
        ours = lambda: fastmlp.matmul(a, b, trans_a=ta, trans_b=tb,  # noqa: E731
                                      grad_activation="relu", y=y, out=out)
        theirs = lambda: (A @ B) * (y > 0)  # noqa: E731
    else:
        ours = lambda: fastmlp.matmul(a, b, trans_a=ta, trans_b=tb, out=out)  # noqa: E731
        theirs = lambda: np.matmul(A, B, out=out)  # noqa: E731
    flops = 2.0 * M * N * K
    t = compare(dict(ours=ours, theirs=theirs), target_seconds=0.05, repeats=repeats)
    to, tt = t["ours"]["median"], t["theirs"]["median"]
    return dict(name=name, M=M, N=N, K=K, trans_a=ta, trans_b=tb, fused=fused,
                fastmlp_seconds=to, numpy_seconds=tt, fastmlp_gflops=flops / to * 1e-9,
                numpy_gflops=flops / tt * 1e-9, ratio=tt / to)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=fastmlp.get_num_threads())
    parser.add_argument("--isa", default=None, help="force an ISA path (generic, avx2, avx512)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--only", default=None, help="run the cases whose name contains this")
    parser.add_argument("--json", default=None, help="write the results to this file")
    args = parser.parse_args()

    if args.isa:
        core.set_isa(args.isa)
    fastmlp.set_num_threads(args.threads)
    coretype = os.environ.get("OPENBLAS_CORETYPE")
    with threadpool_limits(limits=args.threads, user_api="blas"):
        blas = blas_info()
        print(f"fastmlp {fastmlp.__version__}, isa {core.get_isa()}, threads {args.threads}, "
              f"cpu {fastmlp.info()['cpu']} ({fastmlp.info()['cpu_id']})")
        for b in blas:
            print(f"NumPy BLAS: {b['internal_api']} {b['version']}, kernel {b['architecture']}, "
                  f"{b['num_threads']} threads ({b['library']})")
        if coretype:
            print(f"WARNING: OPENBLAS_CORETYPE={coretype} forces NumPy's BLAS kernel; speed claims "
                  "are made with it unset (env -u OPENBLAS_CORETYPE)")
        peak = fastmlp.measure_peak_gflops(0.5, args.threads)
        print(f"measured FMA peak ({core.get_isa()}, {args.threads} threads): {peak:.1f} GFLOP/s")
        print(f"{'case':34s} {'M':>5s} {'N':>5s} {'K':>5s}  {'fastmlp':>9s} {'%peak':>6s}  "
              f"{'numpy':>9s} {'%peak':>6s}  {'ratio':>6s}")
        rng = np.random.default_rng(0)
        results = []
        for case in CASES:
            if args.only and args.only not in case[0]:
                continue
            r = run_case(case, rng, args.repeats)
            results.append(r)
            print(f"{r['name']:34s} {r['M']:5d} {r['N']:5d} {r['K']:5d}  "
                  f"{r['fastmlp_gflops']:9.1f} {100 * r['fastmlp_gflops'] / peak:5.1f}%  "
                  f"{r['numpy_gflops']:9.1f} {100 * r['numpy_gflops'] / peak:5.1f}%  "
                  f"{r['ratio']:5.2f}x", flush=True)
        ctx = context(ROOT)
    if args.json:
        ctx["peak_gflops"] = peak
        with open(args.json, "w") as f:
            json.dump(dict(context=ctx, results=results), f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
