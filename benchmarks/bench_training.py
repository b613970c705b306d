"""Training speed on MNIST: fastmlp vs a hand-written NumPy MLP, scikit-learn and PyTorch (CPU).

Setup (issue 4): the 10,000 MNIST test images from --data (first 8,000 train, last 2,000 test),
784-512-256-10 ReLU, Adam lr 1e-3, 3 epochs, float32, no L2 (alpha=0 everywhere: the NumPy and
PyTorch loops have none), batch sizes 128 and 32. Every framework trains the same number of
samples; samples/s is 3 * 8,000 / the wall time of training (medians of --repeats runs, the
frameworks interleaved, after one untimed warm-up each). PyTorch is imported last (it brings its
own OpenMP runtime).

    env -u OPENBLAS_CORETYPE python benchmarks/bench_training.py [--repeats 3] [--json out.json]
"""
import argparse
import json
import os
import statistics
import sys
import time
import warnings

import numpy as np

import fastmlp
from fastmlp import datasets
from fastmlp.tools.bench import blas_info, context

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = [784, 512, 256, 10]
EPOCHS, LR = 3, 1e-3


def load(directory):
    images = datasets.read_idx(os.path.join(directory, "t10k-images-idx3-ubyte.gz"))
    labels = datasets.read_idx(os.path.join(directory, "t10k-labels-idx1-ubyte.gz"))
    X, y = datasets.prepare_images(images), labels.astype(np.int64)
    return X[:8000], y[:8000], X[8000:], y[8000:]


def _timed_fit(clf, X, y, Xt, yt):
    """(seconds to fit, test accuracy); convergence warnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        clf.fit(X, y)
        seconds = time.perf_counter() - t0
    return seconds, clf.score(Xt, yt)


def run_fastmlp(X, y, Xt, yt, batch, seed, threads):
    clf = fastmlp.MLPClassifier(SIZES[1:-1], solver="adam", learning_rate_init=LR, alpha=0.0,
                                batch_size=batch, max_iter=EPOCHS, tol=0.0, random_state=seed,
                                n_threads=threads)
    return _timed_fit(clf, X, y, Xt, yt)


def run_sklearn(X, y, Xt, yt, batch, seed, threads):
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits
    clf = MLPClassifier(SIZES[1:-1], solver="adam", learning_rate_init=LR, alpha=0.0,
                        batch_size=batch, max_iter=EPOCHS, tol=0.0, random_state=seed)
    with threadpool_limits(threads):
        return _timed_fit(clf, X, y, Xt, yt)


def run_numpy(X, y, Xt, yt, batch, seed, threads):
    """A careful NumPy MLP: float32, buffers preallocated, matmuls into out= (OpenBLAS), Adam in
    place. Same initialisation (He) and Adam as fastmlp's kernels."""
    from threadpoolctl import threadpool_limits
    rng = np.random.default_rng(seed)
    W = [(rng.standard_normal((i, o)) * np.sqrt(2 / i)).astype(np.float32)
         for i, o in zip(SIZES[:-1], SIZES[1:])]
    b = [np.zeros(o, np.float32) for o in SIZES[1:]]
    params = W + b
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    gW = [np.empty_like(w) for w in W]
    gb = [np.empty_like(x) for x in b]
    grads = gW + gb
    H = [np.empty((batch, o), np.float32) for o in SIZES[1:]]
    D = [np.empty((batch, o), np.float32) for o in SIZES[1:]]
    tmp = [np.empty_like(p) for p in params]
    b1, b2, eps, t = 0.9, 0.999, 1e-8, 0
    with threadpool_limits(threads):
        t0 = time.perf_counter()
        for _ in range(EPOCHS):
            order = rng.permutation(len(X))
            for s in range(0, len(X), batch):
                idx = order[s:s + batch]
                n = len(idx)
                a = X[idx]
                hs, ds = [x[:n] for x in H], [x[:n] for x in D]
                for l in range(3):                       # forward
                    np.matmul(a if l == 0 else hs[l - 1], W[l], out=hs[l])
                    hs[l] += b[l]
                    if l < 2:
                        np.maximum(hs[l], 0, out=hs[l])
                z = hs[2]                                # softmax cross-entropy gradient
                z -= z.max(axis=1, keepdims=True)
                np.exp(z, out=ds[2])
                ds[2] /= ds[2].sum(axis=1, keepdims=True)
                ds[2][np.arange(n), y[idx]] -= 1
                ds[2] /= n
                for l in range(2, -1, -1):               # backward
                    np.matmul((a if l == 0 else hs[l - 1]).T, ds[l], out=gW[l])
                    np.sum(ds[l], axis=0, out=gb[l])
                    if l:
                        np.matmul(ds[l], W[l].T, out=ds[l - 1])
                        ds[l - 1] *= hs[l - 1] > 0
                t += 1
                lr_t = LR * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
                for p, g, mi, vi, tp in zip(params, grads, m, v, tmp):   # Adam
                    mi *= b1
                    mi += (1 - b1) * g
                    vi *= b2
                    np.multiply(g, g, out=tp)
                    tp *= 1 - b2
                    vi += tp
                    np.sqrt(vi, out=tp)
                    tp += eps
                    np.divide(mi, tp, out=tp)
                    tp *= lr_t
                    p -= tp
        seconds = time.perf_counter() - t0
    h = Xt
    for l in range(3):
        h = h @ W[l] + b[l]
        if l < 2:
            h = np.maximum(h, 0)
    return seconds, float(np.mean(h.argmax(axis=1) == yt))


def run_torch(X, y, Xt, yt, batch, seed, threads):
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    layers = []
    for i, (n_in, n_out) in enumerate(zip(SIZES[:-1], SIZES[1:])):
        layers.append(torch.nn.Linear(n_in, n_out))
        if i < len(SIZES) - 2:
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
            opt.step()
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        acc = (model(torch.from_numpy(Xt)).argmax(1).numpy() == yt).mean()
    return seconds, float(acc)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "mnist"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 32])
    parser.add_argument("--skip", nargs="*", default=[], help="frameworks to skip")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()

    if os.environ.get("OPENBLAS_CORETYPE"):
        print(f"WARNING: OPENBLAS_CORETYPE={os.environ['OPENBLAS_CORETYPE']} is set: NumPy's "
              "OpenBLAS runs a forced kernel; rerun with `env -u OPENBLAS_CORETYPE`",
              file=sys.stderr)
    X, y, Xt, yt = load(args.data)
    info = fastmlp.info()
    print(f"fastmlp {info['version']} isa={info['isa']} threads={args.threads}; cpu {info['cpu']} "
          f"({info['cpu_id']}); numpy {np.__version__} BLAS {blas_info()}; load average "
          f"{os.getloadavg()}")
    runners = {"fastmlp": run_fastmlp, "numpy": run_numpy, "sklearn": run_sklearn}
    try:
        import torch  # noqa: F401  (only to see whether it is installed)
        runners["torch"] = run_torch
    except ImportError:
        print("PyTorch not installed: skipped")
    runners = {name: run for name, run in runners.items() if name not in args.skip}
    results = {}
    for batch in args.batch_sizes:
        times = {name: [] for name in runners}
        accs = {name: [] for name in runners}
        for name, run in runners.items():  # warm-up: first-call costs (imports, page faults)
            run(X[:1024], y[:1024], Xt, yt, batch, 0, args.threads)
        # Repeats interleave the frameworks so drift hits all alike; the pause before each run
        # lets the previous framework's thread pool stop busy-waiting (OpenBLAS's threads spin
        # for tens of ms after a call and would take a core from the next run).
        for r in range(args.repeats):
            for name, run in runners.items():
                time.sleep(0.5)
                seconds, acc = run(X, y, Xt, yt, batch, r, args.threads)
                times[name].append(seconds)
                accs[name].append(acc)
        for name in runners:
            results.setdefault(str(batch), {})[name] = dict(
                samples_per_s=EPOCHS * len(X) / statistics.median(times[name]),
                seconds=times[name], accuracy=statistics.median(accs[name]))
    print(f"\n{'batch':>5} {'framework':>9} {'samples/s':>10} {'fastmlp x':>9} {'test acc':>8}")
    for batch, rows in results.items():
        base = rows.get("fastmlp", {}).get("samples_per_s")
        for name, r in rows.items():
            ratio = f"{base / r['samples_per_s']:.2f}" if base else "-"
            print(f"{batch:>5} {name:>9} {r['samples_per_s']:>10,.0f} {ratio:>9} "
                  f"{100 * r['accuracy']:>7.2f}%")
    if args.json:
        ctx = context(ROOT)
        ctx["threads"] = args.threads
        with open(args.json, "w") as f:
            json.dump(dict(context=ctx, results=results), f, indent=1)


if __name__ == "__main__":
    main()
