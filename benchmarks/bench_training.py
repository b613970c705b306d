"""Training speed on MNIST: fastmlp vs a hand-written NumPy MLP, scikit-learn, PyTorch (eager
and torch.compile) and JAX (a jit-compiled step), on the CPU.

Setup (issue 4): the 10,000 MNIST test images from --data (first 8,000 train, last 2,000 test),
784-512-256-10 ReLU, Adam lr 1e-3, 3 epochs, float32, no L2 (alpha=0 everywhere: the NumPy and
PyTorch loops have none), batch sizes 512, 128 and 32. Every framework trains the same number of
samples; samples/s is 3 * 8,000 / the wall time of training: the median of --repeats runs, the
frameworks interleaved, after one untimed warm-up each, printed with the min-max and flagged
"(noisy)" when max / min exceeds 1.25. The whole step's GFLOP/s counts 2.41 MFLOP a sample
(forward 2 W, weight gradients 2 W, input gradients 2 W but the first layer's, W = 535,818
weights), against the FMA peak measured at the same thread count (the best of 5). The compiled
peers (torch.compile, JAX) are measured in steady state: each batch size's step is compiled for
both of its shapes (full batches and the last, shorter one) before the timed runs, and the
compile time is reported apart. PyTorch and JAX are optional: each is skipped with a note when it
is not installed. PyTorch is imported last (it brings its own OpenMP runtime).

--busy starts a process that spins on one core for the whole run (the contention benchmark: a
shared machine); --fastmlp-threads 1 2 adds a row per thread count.

    env -u OPENBLAS_CORETYPE python benchmarks/bench_training.py [--repeats 5] [--busy]
        [--fastmlp-threads 1 2] [--json out.json]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings

import numpy as np

import fastmlp
from fastmlp import datasets
from fastmlp.tools.bench import best_peak, blas_info, context

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = [784, 512, 256, 10]
EPOCHS, LR = 3, 1e-3
_W = [a * b for a, b in zip(SIZES[:-1], SIZES[1:])]
FLOP_PER_SAMPLE = 6 * sum(_W) - 2 * _W[0]      # 2.41 MFLOP


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
    model = _torch_model(seed)
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


# compiled steps kept across runs: ("torch.compile", batch, threads) -> [model, optimizer,
# compiled step, shapes compiled, compile seconds]; ("jax", batch) -> [step, init, shapes
# compiled, compile seconds]
_COMPILED = {}


def _torch_model(seed):
    """The benchmark's network (Linear + ReLU layers), initialised from seed."""
    import torch
    torch.manual_seed(seed)
    layers = []
    for i, (n_in, n_out) in enumerate(zip(SIZES[:-1], SIZES[1:])):
        layers.append(torch.nn.Linear(n_in, n_out))
        if i < len(SIZES) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def _shapes(n, batch):
    """The batch shapes an epoch of n rows takes: full batches and the last, shorter one."""
    return sorted({batch, n % batch} - {0}, reverse=True)


def run_torch_compile(X, y, Xt, yt, batch, seed, threads):
    """PyTorch with a step (forward, backward, Adam) compiled by torch.compile: one model and
    compiled step per (batch, threads), compiled for each batch shape before the timed epochs
    and reset to the seed's initial weights and a fresh Adam state for every run."""
    import torch
    torch.set_num_threads(threads)
    key = ("torch.compile", batch, threads)
    if key not in _COMPILED:
        model = _torch_model(seed)
        opt = torch.optim.Adam(model.parameters(), lr=LR)
        loss_fn = torch.nn.CrossEntropyLoss()

        def step(xb, yb):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            return loss

        _COMPILED[key] = [model, opt, torch.compile(step), set(), 0.0]
    entry = _COMPILED[key]
    model, opt, compiled, seen = entry[:4]
    Xtr, ytr = torch.from_numpy(X), torch.from_numpy(y)
    for rows in _shapes(len(X), batch):     # compile (and run once) each new shape
        if rows not in seen:
            t0 = time.perf_counter()
            compiled(Xtr[:rows], ytr[:rows])
            entry[4] += time.perf_counter() - t0
            seen.add(rows)
    with torch.no_grad():                   # restart from the seed's weights, Adam afresh
        for p, q in zip(model.parameters(), _torch_model(seed).parameters()):
            p.copy_(q)
        for st in opt.state.values():
            for v in st.values():
                if torch.is_tensor(v):
                    v.zero_()
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(EPOCHS):
        order = torch.randperm(len(X), generator=gen)
        for s in range(0, len(X), batch):
            idx = order[s:s + batch]
            compiled(Xtr[idx], ytr[idx])
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        acc = (model(torch.from_numpy(Xt)).argmax(1).numpy() == yt).mean()
    return seconds, float(acc)


def run_jax(X, y, Xt, yt, batch, seed, threads):
    """JAX: one jax.jit of the whole step (forward, softmax cross-entropy, grad, Adam), compiled
    once per batch size for both shapes beforehand (XLA's CPU threads are its own)."""
    import jax
    import jax.numpy as jnp
    key = ("jax", batch)
    if key not in _COMPILED:
        def loss_fn(params, xb, yb):
            h = xb
            for i, (W, b) in enumerate(params):
                h = h @ W + b
                if i < len(params) - 1:
                    h = jax.nn.relu(h)
            logp = jax.nn.log_softmax(h)
            return -jnp.mean(jnp.take_along_axis(logp, yb[:, None], axis=1))

        @jax.jit
        def step(params, m, v, t, xb, yb):
            g = jax.grad(loss_fn)(params, xb, yb)
            t = t + 1
            m = jax.tree_util.tree_map(lambda a, b: 0.9 * a + 0.1 * b, m, g)
            v = jax.tree_util.tree_map(lambda a, b: 0.999 * a + 0.001 * b * b, v, g)
            lr_t = LR * jnp.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)
            params = jax.tree_util.tree_map(lambda p, a, b: p - lr_t * a / (jnp.sqrt(b) + 1e-8),
                                            params, m, v)
            return params, m, v, t

        def init(s):
            rng = np.random.default_rng(s)
            params = [(jnp.asarray((rng.standard_normal((i, o)) * np.sqrt(2 / i))
                                   .astype(np.float32)), jnp.zeros(o, jnp.float32))
                      for i, o in zip(SIZES[:-1], SIZES[1:])]
            zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
            return params, zeros, zeros, jnp.float32(0)

        _COMPILED[key] = [step, init, set(), 0.0]
    entry = _COMPILED[key]
    step, init, seen = entry[:3]
    for rows in _shapes(len(X), batch):     # compile (and run once) each new shape
        if rows not in seen:
            t0 = time.perf_counter()
            jax.block_until_ready(step(*init(0), jnp.asarray(X[:rows]),
                                       jnp.asarray(y[:rows].astype(np.int32))))
            entry[3] += time.perf_counter() - t0
            seen.add(rows)
    params, m, v, t = init(seed)
    Xj, yj = jnp.asarray(X), jnp.asarray(y.astype(np.int32))
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    for _ in range(EPOCHS):
        order = jnp.asarray(rng.permutation(len(X)))
        for s in range(0, len(X), batch):
            idx = order[s:s + batch]
            params, m, v, t = step(params, m, v, t, Xj[idx], yj[idx])
    jax.block_until_ready(params)
    seconds = time.perf_counter() - t0
    h = jnp.asarray(Xt)
    for i, (W, b) in enumerate(params):
        h = h @ W + b
        if i < len(params) - 1:
            h = jax.nn.relu(h)
    return seconds, float(np.mean(np.asarray(h.argmax(axis=1)) == yt))


def _spin():
    """A process that keeps one core busy until killed (--busy)."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "mnist"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[512, 128, 32])
    parser.add_argument("--busy", action="store_true",
                        help="keep one core busy with a spinning process during the run")
    parser.add_argument("--fastmlp-threads", type=int, nargs="+",
                        help="fastmlp rows at these thread counts (default: --threads)")
    parser.add_argument("--skip", nargs="*", default=[], help="frameworks to skip")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()

    if os.environ.get("OPENBLAS_CORETYPE"):
        print(f"WARNING: OPENBLAS_CORETYPE={os.environ['OPENBLAS_CORETYPE']} is set: NumPy's "
              "OpenBLAS runs a forced kernel; rerun with `env -u OPENBLAS_CORETYPE`",
              file=sys.stderr)
    X, y, Xt, yt = load(args.data)
    info = fastmlp.info()
    # the peak at the benchmark's thread count, before the spinner starts: the best of 5
    peak = best_peak(args.threads, tries=5)
    print(f"fastmlp {info['version']} isa={info['isa']} threads={args.threads}; cpu {info['cpu']} "
          f"({info['cpu_id']}); peak {peak:.0f} GFLOP/s on {args.threads} threads; numpy "
          f"{np.__version__} BLAS {blas_info()}; load average {os.getloadavg()}")
    runners = {}
    for nt in args.fastmlp_threads or [args.threads]:
        name = "fastmlp" if nt == args.threads else f"fastmlp {nt}t"
        runners[name] = (lambda nt: lambda X, y, Xt, yt, b, s, _: run_fastmlp(
            X, y, Xt, yt, b, s, nt))(nt)
    runners.update({"numpy": run_numpy, "sklearn": run_sklearn})
    try:
        import jax  # noqa: F401  (only to see whether it is installed)
        runners["jax"] = run_jax
    except ImportError:
        print("JAX not installed: skipped (pip install jax)")
    try:
        import torch  # noqa: F401
        runners["torch"] = run_torch
        runners["torch.compile"] = run_torch_compile
    except ImportError:
        print("PyTorch not installed: skipped (torch and torch.compile)")
    runners = {name: run for name, run in runners.items() if name not in args.skip}
    spinner = _spin() if args.busy else None
    try:
        results = _measure(args, runners, X, y, Xt, yt)
    finally:
        if spinner is not None:
            spinner.kill()
    _report(args, results, peak, info)


def _measure(args, runners, X, y, Xt, yt):
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
            rates = sorted(EPOCHS * len(X) / t for t in times[name])
            compile_s = _COMPILED[("torch.compile", batch, args.threads)][4] \
                if name == "torch.compile" else (_COMPILED[("jax", batch)][3]
                                                 if name == "jax" else None)
            results.setdefault(str(batch), {})[name] = dict(
                samples_per_s=EPOCHS * len(X) / statistics.median(times[name]),
                min_samples_per_s=rates[0], max_samples_per_s=rates[-1],
                seconds=times[name], accuracy=statistics.median(accs[name]),
                compile_seconds=compile_s)
    return results


def _report(args, results, peak, info):
    print(f"\n{'batch':>5} {'framework':>13} {'samples/s (min-max)':>28} {'GFLOP/s':>8} "
          f"{'% peak':>6} {'fastmlp x':>9} {'test acc':>8}  compile")
    for batch, rows in results.items():
        base = rows.get("fastmlp", {}).get("samples_per_s")
        for name, r in rows.items():
            ratio = f"{base / r['samples_per_s']:.2f}" if base else "-"
            gflops = r["samples_per_s"] * FLOP_PER_SAMPLE / 1e9
            noisy = " (noisy)" if r["max_samples_per_s"] > 1.25 * r["min_samples_per_s"] else ""
            comp = "" if r["compile_seconds"] is None else f"{r['compile_seconds']:.1f} s"
            spread = f"{r['min_samples_per_s']:,.0f}-{r['max_samples_per_s']:,.0f}"
            print(f"{batch:>5} {name:>13} {r['samples_per_s']:>10,.0f} ({spread:>15}) "
                  f"{gflops:8.1f} {100 * gflops / peak:5.1f}% {ratio:>9} "
                  f"{100 * r['accuracy']:>7.2f}%  {comp}{noisy}")
    if args.json:
        ctx = context(ROOT)
        ctx.update(threads=args.threads, busy=args.busy, peak_gflops=peak,
                   flop_per_sample=FLOP_PER_SAMPLE)
        with open(args.json, "w") as f:
            json.dump(dict(context=ctx, results=results), f, indent=1)


if __name__ == "__main__":
    main()
