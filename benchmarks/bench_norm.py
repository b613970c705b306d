"""What normalization costs in a training step: fastmlp against PyTorch, side by side.

A 784-512-256-10 ReLU MLP, Adam lr 1e-3, on the bundled MNIST sample (8,000 training images),
shuffled minibatches, timed an epoch at a time (samples/s = 8,000 / an epoch's time).
Variants: no normalization, LayerNorm and BatchNorm before each hidden ReLU (PyTorch:
Linear -> nn.LayerNorm / nn.BatchNorm1d -> ReLU; fastmlp: MLP(normalization=...) and its
native TrainStep, whose norm kernels apply the ReLU in the same pass). Also clip_grad_norm=1.0
(torch.nn.utils.clip_grad_norm_). Every (framework, variant) runs one epoch per round, over
--repeats rounds after a warm-up epoch; the table gives medians with quartiles, and the
overheads and framework ratios paired within rounds (this machine's speed drifts by 2x over
seconds when it is shared; pairing cancels most of that).

    env -u OPENBLAS_CORETYPE python benchmarks/bench_norm.py [--repeats 5] [--json out.json]
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

import fastmlp
from fastmlp import datasets
from fastmlp.tools.bench import blas_info, context

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = [784, 512, 256, 10]
LR = 1e-3
VARIANTS = [("none", None, 0.0), ("layer", "layer", 0.0), ("batch", "batch", 0.0),
            ("layer+clip", "layer", 1.0)]


def load():
    images, labels = datasets.load_sample()
    X = datasets.prepare_images(images)
    return np.ascontiguousarray(X[:8000], np.float32), labels[:8000].astype(np.int64)


def fastmlp_epoch(X, y, batch, norm, clip, seed, threads):
    """A function running one shuffled epoch of fastmlp's native step (the model persists)."""
    model = fastmlp.MLP(SIZES, activation="relu", normalization=norm, random_state=seed)
    step = model.train_step("softmax_cross_entropy", batch, optimizer="adam",
                            clip_grad_norm=clip)
    y32 = y.astype(np.int32)
    rng = np.random.default_rng(seed)

    def epoch():
        order = rng.permutation(len(X))
        with fastmlp.core.local_num_threads(threads):
            for s in range(0, len(X), batch):
                step.run(X, y32, lr=LR, index=order[s:s + batch])
    return epoch


def torch_epoch(X, y, batch, norm, clip, seed, threads):
    """The same with PyTorch: Linear -> LayerNorm / BatchNorm1d -> ReLU, Adam."""
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    layers = []
    for i, (n_in, n_out) in enumerate(zip(SIZES[:-1], SIZES[1:])):
        layers.append(torch.nn.Linear(n_in, n_out))
        if i < len(SIZES) - 2:
            if norm == "layer":
                layers.append(torch.nn.LayerNorm(n_out))
            elif norm == "batch":
                layers.append(torch.nn.BatchNorm1d(n_out))
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    loss_fn = torch.nn.CrossEntropyLoss()
    Xtr, ytr = torch.from_numpy(X), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)

    def epoch():
        order = torch.randperm(len(X), generator=gen)
        for s in range(0, len(X), batch):
            idx = order[s:s + batch]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(Xtr[idx]), ytr[idx])
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
    return epoch


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _median_spread(values):
    q = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
    return statistics.median(values), q[0], q[-1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128])
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    if os.environ.get("OPENBLAS_CORETYPE"):
        print(f"WARNING: OPENBLAS_CORETYPE={os.environ['OPENBLAS_CORETYPE']} is set; rerun with "
              "`env -u OPENBLAS_CORETYPE`", file=sys.stderr)
    X, y = load()
    info = fastmlp.info()
    peak = fastmlp.measure_peak_gflops(0.5, args.threads)
    print(f"fastmlp {info['version']} isa={info['isa']} threads={args.threads}; cpu {info['cpu']} "
          f"({info['cpu_id']}); peak {peak:.0f} GFLOP/s; numpy BLAS {blas_info()}; load "
          f"average {os.getloadavg()}")
    makers = {"fastmlp": fastmlp_epoch}
    try:
        import torch
        makers["torch"] = torch_epoch
        print(f"torch {torch.__version__}")
    except ImportError:
        print("PyTorch not installed: fastmlp only")
    # 6 M (n_in n_out) flops a layer per step (forward, two backward products)
    flops = 6 * len(X) * sum(a * b for a, b in zip(SIZES[:-1], SIZES[1:]))
    results = {}
    for batch in args.batch_sizes:
        epochs = {(f, v[0]): make(X, y, batch, v[1], v[2], 0, args.threads)
                  for f, make in makers.items() for v in VARIANTS}
        for fn in epochs.values():
            fn()                                     # warm-up: first-call costs
        # Rounds of one epoch per (framework, variant), in order: each round's entries run
        # seconds apart, so ratios taken within a round (paired) cancel the machine's slower
        # drift; a pause before each framework switch lets the other's threads stop spinning.
        times = {k: [] for k in epochs}
        for r in range(args.repeats):
            for f in makers:
                time.sleep(0.3)
                for v in VARIANTS:
                    times[(f, v[0])].append(_timed(epochs[(f, v[0])]))
        rows = {}
        for (f, name), ts in times.items():
            med, lo, hi = _median_spread(ts)
            base = times[(f, "none")]
            over = _median_spread([t / b - 1 for t, b in zip(ts, base)])
            row = dict(seconds_per_epoch=ts, median=med, q1=lo, q3=hi,
                       samples_per_s=len(X) / med, gemm_pct_of_peak=100 * flops / med / 1e9 / peak,
                       overhead_vs_none=over)
            if f == "fastmlp" and "torch" in makers:
                row["torch_over_fastmlp"] = _median_spread(
                    [t / o for t, o in zip(times[("torch", name)], ts)])
            rows[f"{f}/{name}"] = row
        results[str(batch)] = rows
        print(f"\nbatch {batch}, {args.repeats} rounds (median, quartiles):")
        print(f"{'variant':>20} {'samples/s':>10} {'s/epoch q1-q3':>15} {'vs none (paired)':>20} "
              f"{'GEMM % peak':>11} {'torch/fastmlp (paired)':>23}")
        for key, r in rows.items():
            o = r["overhead_vs_none"]
            t = r.get("torch_over_fastmlp")
            ratio = f"{t[0]:.2f} ({t[1]:.2f}-{t[2]:.2f})" if t else ""
            print(f"{key:>20} {r['samples_per_s']:>10,.0f} {r['q1']:>7.3f}-{r['q3']:<7.3f} "
                  f"{100 * o[0]:>+6.1f}% ({100 * o[1]:+.0f}..{100 * o[2]:+.0f}%) "
                  f"{r['gemm_pct_of_peak']:>10.1f}% {ratio:>23}")
    if args.json:
        ctx = context(ROOT)
        ctx.update(threads=args.threads, peak_gflops=peak)
        with open(args.json, "w") as f:
            json.dump(dict(context=ctx, results=results), f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
