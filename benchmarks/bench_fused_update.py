"""What fusing the optimizer into the weight gradients' products saves (TrainStep note p): the
native training step of a 784-512-256-10 ReLU MLP with Adam on the bundled MNIST sample (real
data: random inputs and labels drive Adam's state into subnormal floats, which slow any x86 CPU
down several times; each measurement starts afresh), run() with fuse_update=True (at every
batch: the default "auto" stops at FUSE_AUTO_MAX_BATCH, 256 on Intel and 0 elsewhere) and False
from the same parameters, at batch 32, 128 and 512, interleaved repeats in alternating order;
samples/s (median and min-max), the whole step's GFLOP/s as % of the measured peak, and the
fused / unfused ratio of each repeat's adjacent pair of runs (median, interquartile range, and
how many pairs the fused step won).

    env -u OPENBLAS_CORETYPE python benchmarks/bench_fused_update.py [--repeats 9] [--batches 32,128,512]
        [--json F]
"""
import argparse
import json
import time

import numpy as np

import fastmlp
from fastmlp import core, datasets
from fastmlp.tools import bench

LAYERS = (784, 512, 256, 10)
# forward 2 N K, backward 4 N K a layer (the first layer's input gradient is not computed)
FLOP_PER_SAMPLE = sum(2 * a * b for a, b in zip(LAYERS[:-1], LAYERS[1:])) * 3 - 2 * 784 * 512


def steps_per_second(step, X, y, batch, seconds):
    n, done, t0 = X.shape[0], 0, time.perf_counter()
    while True:
        start = (done * batch) % (n - batch)
        step.run(X[start:start + batch], y[start:start + batch], lr=1e-3)
        done += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return done / elapsed


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--seconds", type=float, default=0.3)
    ap.add_argument("--batches", default="32,128,512")
    ap.add_argument("--json")
    args = ap.parse_args()
    images, labels = datasets.load_sample()
    order = np.random.default_rng(0).permutation(len(labels))
    X = np.ascontiguousarray(datasets.prepare_images(images)[order])
    y = labels[order].astype(np.int32)
    peak = bench.best_peak(core.get_num_threads(), 0.2)
    model = fastmlp.MLP(LAYERS, "relu", random_state=0)
    rows = []
    for batch in map(int, args.batches.split(",")):
        rates = {True: [], False: []}
        for i in range(args.repeats):                       # interleaved, in both orders
            for fuse in ((True, False) if i % 2 == 0 else (False, True)):
                # a fresh step from the initial parameters each time: a long run on 10,000
                # samples drives Adam's state into subnormals, slow on any x86 CPU
                s = core.TrainStep(core.flat_params([p.copy() for p in model.params]),
                                   ["relu", "relu"], "softmax_cross_entropy", batch,
                                   fuse_update=fuse)
                steps_per_second(s, X, y, batch, 0.05)      # warm-up
                rates[fuse].append(batch * steps_per_second(s, X, y, batch, args.seconds))
        row = {"batch": batch}
        for fuse, name in ((True, "fused"), (False, "unfused")):
            r = np.array(rates[fuse])
            row[name] = {"median": float(np.median(r)), "min": float(r.min()),
                         "max": float(r.max()),
                         "percent_of_peak": float(np.median(r) * FLOP_PER_SAMPLE * 1e-9 / peak
                                                  * 100)}
        row["speedup"] = row["fused"]["median"] / row["unfused"]["median"]
        # each repeat's two runs are adjacent in time: their ratio is steadier than the ratio of
        # medians on a machine whose speed drifts (shared VMs)
        pairs = np.array(rates[True]) / np.array(rates[False])
        q1, q3 = np.percentile(pairs, [25, 75])
        row["pair_ratio"] = {"median": float(np.median(pairs)), "q1": float(q1), "q3": float(q3),
                             "fused_faster": int((pairs > 1).sum()), "pairs": len(pairs)}
        rows.append(row)
        print(f"batch {batch:4}: fused {row['fused']['median']:9,.0f} samples/s "
              f"({row['fused']['min']:,.0f}-{row['fused']['max']:,.0f}, "
              f"{row['fused']['percent_of_peak']:.1f}% of peak) | unfused "
              f"{row['unfused']['median']:9,.0f} ({row['unfused']['min']:,.0f}-"
              f"{row['unfused']['max']:,.0f}, {row['unfused']['percent_of_peak']:.1f}%) | "
              f"{row['speedup']:.3f}x; pairs {row['pair_ratio']['median']:.3f}x "
              f"(IQR {q1:.3f}-{q3:.3f}, fused faster in {row['pair_ratio']['fused_faster']} of "
              f"{len(pairs)})")
    if args.json:
        out = {"context": bench.context(), "peak_gflops": peak, "flop_per_sample": FLOP_PER_SAMPLE,
               "repeats": args.repeats, "results": rows}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
