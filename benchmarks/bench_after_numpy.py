"""A fastmlp product right after a NumPy product, against the same product after a pause.

OpenBLAS's threads busy-wait for their next call for a while after a product; a fastmlp call
made in that window competes with them for the cores. This times, for each shape, one fastmlp
matmul (i) right after a NumPy matmul of the same shape, with no pause, and (ii) after a pause
of --pause seconds, interleaved over --repeats, and prints the GFLOP/s of each (median and
min-max), their ratio and NumPy's own.

    env -u OPENBLAS_CORETYPE python benchmarks/bench_after_numpy.py [--repeats 30] [--json F]
"""
import argparse
import json
import os
import sys
import time

import numpy as np

import fastmlp
from fastmlp.tools.bench import best_peak, blas_info, context, spread

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = [(128, 512, 784), (512, 512, 784), (128, 256, 512), (1024, 1024, 1024)]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--pause", type=float, default=0.2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json")
    args = p.parse_args()
    if os.environ.get("OPENBLAS_CORETYPE"):
        print("WARNING: OPENBLAS_CORETYPE is set: rerun with `env -u OPENBLAS_CORETYPE`",
              file=sys.stderr)
    fastmlp.set_num_threads(args.threads)
    from threadpoolctl import threadpool_limits
    peak = best_peak(args.threads, tries=5)
    info = fastmlp.info()
    print(f"{info['cpu']} ({info['cpu_id']}), {info['isa']}, {args.threads} threads, peak "
          f"{peak:.0f} GFLOP/s; NumPy BLAS {blas_info()}")
    print(f"{'M x N x K':>18s} {'after NumPy':>24s} {'after a pause':>24s} {'ratio':>6s} "
          f"{'NumPy':>8s}  (GFLOP/s, median (min-max))")
    rng = np.random.default_rng(0)
    results = {}
    with threadpool_limits(args.threads, user_api="blas"):
        for M, N, K in SHAPES:
            A = rng.random((M, K), dtype=np.float32)
            B = rng.random((K, N), dtype=np.float32)
            C = np.empty((M, N), np.float32)
            flop = 2 * M * N * K
            fastmlp.matmul(A, B, out=C)
            np.matmul(A, B)
            after, paused, blas = [], [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                np.matmul(A, B, out=C)
                t1 = time.perf_counter()
                fastmlp.matmul(A, B, out=C)          # no pause: OpenBLAS's threads still spin
                t2 = time.perf_counter()
                blas.append(flop / (t1 - t0) / 1e9)
                after.append(flop / (t2 - t1) / 1e9)
                time.sleep(args.pause)
                t0 = time.perf_counter()
                fastmlp.matmul(A, B, out=C)
                paused.append(flop / (time.perf_counter() - t0) / 1e9)
                time.sleep(args.pause)
            a, b, n = spread(after), spread(paused), spread(blas)
            ratio = a["median"] / b["median"]
            results[f"{M}x{N}x{K}"] = {"after_numpy": a, "after_pause": b, "numpy": n,
                                       "ratio": ratio}
            print(f"{f'{M} x {N} x {K}':>18s} {a['median']:7.1f} ({a['min']:6.1f}-{a['max']:6.1f})"
                  f" {b['median']:7.1f} ({b['min']:6.1f}-{b['max']:6.1f}) {ratio:6.2f} "
                  f"{n['median']:8.1f}")
    if args.json:
        ctx = context(ROOT)
        ctx.update(threads=args.threads, peak_gflops=peak, pause=args.pause)
        with open(args.json, "w") as f:
            json.dump({"context": ctx, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
