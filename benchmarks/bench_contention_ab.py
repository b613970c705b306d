"""fastmlp alone, idle or busy: MLPClassifier.fit samples/s for one batch size and thread count.

    python benchmarks/bench_contention_ab.py BATCH THREADS REPEATS [--data DIR]
        [--normalization layer|batch]

784-512-256-10 ReLU (with LayerNorm or BatchNorm after each hidden layer if asked), Adam, 3
epochs of the first 8,000 MNIST test images; prints the median and min-max over REPEATS fits and
which fastmlp it imported (its folder), so that two builds can be compared side by side with
PYTHONPATH (benchmarks/results/pool_contention.md: the commands, and a spinning process for the
busy machine).
"""
import argparse
import os
import time
import warnings

import numpy as np

import fastmlp
from fastmlp import datasets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("batch", type=int)
    p.add_argument("threads", type=int)
    p.add_argument("repeats", type=int)
    p.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "mnist"))
    p.add_argument("--normalization", choices=("layer", "batch"))
    args = p.parse_args()
    X = datasets.prepare_images(datasets.read_idx(
        os.path.join(args.data, "t10k-images-idx3-ubyte.gz")))[:8000]
    y = datasets.read_idx(os.path.join(args.data, "t10k-labels-idx1-ubyte.gz"))[:8000]
    warnings.simplefilter("ignore")
    rates = []
    for r in range(args.repeats):
        clf = fastmlp.MLPClassifier((512, 256), batch_size=args.batch, max_iter=3, tol=0,
                                    alpha=0, random_state=r, n_threads=args.threads,
                                    normalization=args.normalization)
        t0 = time.perf_counter()
        clf.fit(X, y)
        rates.append(3 * len(X) / (time.perf_counter() - t0))
    rates.sort()
    where = os.path.dirname(os.path.dirname(os.path.abspath(fastmlp.__file__)))
    norm = f" {args.normalization}norm" if args.normalization else ""
    print(f"{where}:{norm} batch {args.batch} threads {args.threads}: "
          f"{rates[len(rates) // 2]:,.0f} samples/s ({rates[0]:,.0f}-{rates[-1]:,.0f})")


if __name__ == "__main__":
    main()
