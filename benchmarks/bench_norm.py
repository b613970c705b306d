"""What normalization costs in a training step: fastmlp against PyTorch, side by side.

A 784-512-256-10 ReLU MLP, Adam lr 1e-3, on the bundled MNIST sample (8,000 training images),
shuffled minibatches; each run is 3 epochs, timed as a whole; samples/s = 24,000 / its time.
Variants: no normalization, LayerNorm and BatchNorm before each hidden ReLU (PyTorch:
Linear -> nn.LayerNorm / nn.BatchNorm1d -> ReLU; fastmlp: MLP(normalization=...) and its
native TrainStep, whose norm kernels apply the ReLU in the same pass). Also clip_grad_norm=1.0
(torch.nn.utils.clip_grad_norm_). The frameworks and variants are interleaved over --repeats
rounds after one warm-up each; the table gives medians and the spread (min-max).

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
EPOCHS, LR = 3, 1e-3
VARIANTS = [("none", None, 0.0), ("layer", "layer", 0.0), ("batch", "batch", 0.0),
            ("layer+clip", "layer", 1.0)]


def load():
    images, labels = datasets.load_sample()
    X = datasets.prepare_images(images)
    return np.ascontiguousarray(X[:8000], np.float32), labels[:8000].astype(np.int64)


def run_fastmlp(X, y, batch, norm, clip, seed, threads):
    model = fastmlp.MLP(SIZES, activation="relu", normalization=norm, random_state=seed)
    step = model.train_step("softmax_cross_entropy", batch, optimizer="adam",
                            clip_grad_norm=clip)
    y32 = y.astype(np.int32)
    rng = np.random.default_rng(seed)
    with fastmlp.core.local_num_threads(threads):
        t0 = time.perf_counter()
        for _ in range(EPOCHS):
            order = rng.permutation(len(X))
            for s in range(0, len(X), batch):
                step.run(X, y32, lr=LR, index=order[s:s + batch])
        return time.perf_counter() - t0


def run_torch(X, y, batch, norm, clip, seed, threads):
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
    t0 = time.perf_counter()
    for _ in range(EPOCHS):
        order = torch.randperm(len(X), generator=gen)
        for s in range(0, len(X), batch):
            idx = order[s:s + batch]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(Xtr[idx]), ytr[idx])
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
    return time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
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
    runners = {"fastmlp": run_fastmlp}
    try:
        import torch
        runners["torch"] = run_torch
        print(f"torch {torch.__version__}")
    except ImportError:
        print("PyTorch not installed: fastmlp only")
    # 6 M (n_in n_out) flops a layer per step (forward, two backward products)
    flops = 6 * EPOCHS * len(X) * sum(a * b for a, b in zip(SIZES[:-1], SIZES[1:]))
    results = {}
    for batch in args.batch_sizes:
        times = {(f, v[0]): [] for f in runners for v in VARIANTS}
        for f, run in runners.items():
            for name, norm, clip in VARIANTS:
                run(X[:1024], y[:1024], batch, norm, clip, 0, args.threads)   # warm-up
        for r in range(args.repeats):
            for f, run in runners.items():
                for name, norm, clip in VARIANTS:
                    time.sleep(0.3)
                    times[(f, name)].append(run(X, y, batch, norm, clip, r, args.threads))
        rows = {}
        for (f, name), ts in times.items():
            med = statistics.median(ts)
            rows[f"{f}/{name}"] = dict(seconds=ts, median=med,
                                       samples_per_s=EPOCHS * len(X) / med,
                                       gemm_pct_of_peak=100 * flops / med / 1e9 / peak)
        results[str(batch)] = rows
        print(f"\nbatch {batch}: {'variant':>22} {'samples/s':>10} {'spread (s)':>15} "
              f"{'vs none':>8} {'GEMM % peak':>11} {'torch/fastmlp':>13}")
        for f in runners:
            base = rows[f"{f}/none"]["median"]
            for name, _, _ in VARIANTS:
                r = rows[f"{f}/{name}"]
                ratio = rows.get(f"torch/{name}", {}).get("median")
                ratio = f"{ratio / r['median']:.2f}" if ratio and f == "fastmlp" else ""
                print(f"{'':>9}{f + '/' + name:>22} {r['samples_per_s']:>10,.0f} "
                      f"{min(r['seconds']):>7.3f}-{max(r['seconds']):<7.3f} "
                      f"{100 * (r['median'] / base - 1):>+7.1f}% {r['gemm_pct_of_peak']:>10.1f}% "
                      f"{ratio:>13}")
    if args.json:
        ctx = context(ROOT)
        ctx.update(threads=args.threads, peak_gflops=peak)
        with open(args.json, "w") as f:
            json.dump(dict(context=ctx, results=results), f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
