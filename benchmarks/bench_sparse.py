"""Sparse input: fastmlp on a sparse text-like problem against the same fit densified and
against scikit-learn's sparse path, in one run.

The problem: generated documents (a Zipf vocabulary of 50,000 words, five topics that each
boost 500 words; 30 to 300 words a document) hashed by scikit-learn's HashingVectorizer into
100,000 features (l2-normalised counts, about 0.1% density), the topic as the label; 8,000
documents train, 2,000 test. Each estimator: MLPClassifier(hidden_layer_sizes=(100,),
solver="adam", batch_size=200, max_iter=--epochs, tol=0), --threads threads (scikit-learn's BLAS
too). Three runs, each in a fresh process, one after the other:

* fastmlp on the CSR matrix (first layer on fastmlp.core.sparse_matmul / sparse_matmul_tn);
* fastmlp on X.toarray() as float32 (the densified matrix: 3.2 GB for these 8,000 rows);
* scikit-learn on the CSR matrix (its own sparse path, float64).

Each reports the fit's wall time (median and range over --repeats fits in its process), test
accuracy and the process's peak resident memory (ru_maxrss) minus its memory after building the
data, i.e. what training added.

    env -u OPENBLAS_CORETYPE python benchmarks/bench_sparse.py [--repeats 3] [--json out.json]
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_TRAIN, N_TEST, N_FEATURES, VOCAB, TOPICS = 8000, 2000, 100_000, 50_000, 5


def documents(seed=0):
    """(CSR float64 (n, N_FEATURES), labels): the hashed generated documents."""
    from sklearn.feature_extraction.text import HashingVectorizer
    rng = np.random.default_rng(seed)
    base = 1.0 / np.arange(1, VOCAB + 1) ** 1.1
    topics = []
    for _ in range(TOPICS):
        p = base.copy()
        p[rng.choice(VOCAB, 500, replace=False)] *= 40.0
        topics.append(p / p.sum())
    labels = rng.integers(0, TOPICS, N_TRAIN + N_TEST)
    lengths = rng.integers(30, 300, N_TRAIN + N_TEST)
    words = np.empty(N_TRAIN + N_TEST, object)
    for c in range(TOPICS):          # one draw per topic (a draw builds the whole distribution)
        docs_c = np.flatnonzero(labels == c)
        drawn = rng.choice(VOCAB, lengths[docs_c].sum(), p=topics[c])
        for d, chunk in zip(docs_c, np.split(drawn, np.cumsum(lengths[docs_c])[:-1])):
            words[d] = chunk
    docs = [" ".join(f"w{w}" for w in ws) for ws in words]
    X = HashingVectorizer(n_features=N_FEATURES, alternate_sign=False, norm="l2").transform(docs)
    return X.tocsr(), labels


def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # kB on Linux


def current_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run(kind, repeats, epochs, threads):
    """One kind of fit, in this process; prints a JSON line."""
    from threadpoolctl import threadpool_limits
    X, y = documents()
    Xtr, ytr, Xte, yte = X[:N_TRAIN], y[:N_TRAIN], X[N_TRAIN:], y[N_TRAIN:]
    if kind == "fastmlp dense":
        Xtr, Xte = Xtr.toarray().astype(np.float32), Xte.toarray().astype(np.float32)
    base = current_mb()
    params = dict(hidden_layer_sizes=(100,), solver="adam", batch_size=200, max_iter=epochs,
                  tol=0.0, random_state=0)
    if kind.startswith("fastmlp"):
        import fastmlp
        make = lambda: fastmlp.MLPClassifier(**params, n_threads=threads)   # noqa: E731
    else:
        from sklearn.neural_network import MLPClassifier
        make = lambda: MLPClassifier(**params)                               # noqa: E731
    seconds = []
    with threadpool_limits(threads), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(repeats):
            clf = make()
            t0 = time.perf_counter()
            clf.fit(Xtr, ytr)
            seconds.append(time.perf_counter() - t0)
    print(json.dumps(dict(kind=kind, seconds=seconds, accuracy=float(clf.score(Xte, yte)),
                          data_mb=base, training_peak_mb=peak_mb() - base,
                          density=float(X.nnz / (X.shape[0] * X.shape[1])))))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--run", help=argparse.SUPPRESS)    # the child's kind
    args = parser.parse_args(argv)
    if args.run:
        return run(args.run, args.repeats, args.epochs, args.threads)
    from fastmlp.tools.bench import blas_info, context, coretype_warning
    warning = coretype_warning()
    if warning:
        print(warning, file=sys.stderr)
    ctx = context(ROOT)
    print(f"CPU {ctx['cpu']} ({ctx['cpu_id']}), fastmlp ISA {ctx['isa']}, {args.threads} threads;"
          f" NumPy BLAS: {blas_info()}")
    results = []
    for kind in ("fastmlp sparse", "fastmlp dense", "scikit-learn sparse"):
        out = subprocess.run([sys.executable, __file__, "--run", kind, "--repeats",
                              str(args.repeats), "--epochs", str(args.epochs), "--threads",
                              str(args.threads)], capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = results[-1]
        s = r["seconds"]
        print(f"{kind:<20} fit {statistics.median(s):7.2f} s ({min(s):.2f}-{max(s):.2f}), "
              f"test accuracy {r['accuracy']:.4f}, data {r['data_mb']:,.0f} MB, training "
              f"added {r['training_peak_mb']:,.0f} MB (density {r['density']:.4%})", flush=True)
    sk = statistics.median(results[2]["seconds"])
    for r in results[:2]:
        print(f"{r['kind']}: {sk / statistics.median(r['seconds']):.1f}x scikit-learn's sparse "
              f"fit")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(context=ctx, epochs=args.epochs, threads=args.threads,
                           results=results), f, indent=1)


if __name__ == "__main__":
    main()
