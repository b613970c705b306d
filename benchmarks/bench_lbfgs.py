"""solver="lbfgs": fastmlp against scikit-learn on scikit-learn's own test problems, side by side.

Problems (those of sklearn/neural_network/tests/test_mlp.py's lbfgs tests): digits (all 1,797
images, 10 classes, features scaled to [0, 1]), iris (150 x 4, 3 classes, as loaded) and the
regression set (make_regression(200, 10, bias=20, noise=100, random_state=7), y standardised).
One hidden layer of 50 units, relu and tanh, alpha 1e-4, max_iter 200, tol 1e-4 (the defaults;
--alpha and --max-iter change the first two).
Each pair of fits starts from the same initial weights (scikit-learn's initialisation drawn with
fastmlp.model.init_params(..., "sklearn") from the seed) and runs SciPy's L-BFGS-B on both sides;
only that fit is timed. Reported per problem and activation, over --seeds seeds: the final loss
of each (loss_), their relative difference, iterations, and seconds (median and range over the
seeds; the two libraries alternate). scikit-learn's BLAS and fastmlp use --threads threads.

What "the same loss" can mean here: these problems are nearly interpolated (final losses of
1e-5 to 1e-2, mostly the L2 term), and where L-BFGS stops on them depends on rounding. The
column "sk vs sk" is scikit-learn against itself started from the same weights moved by one
float32 ulp (p * (1 + 2**-23)): the spread a difference of rounding alone produces; "rows
permuted" is scikit-learn against itself from the same weights on the same rows in another
order, which changes only the order of its float64 sums: what any float64 implementation
(summing in its own order) could at best agree to.

    env -u OPENBLAS_CORETYPE python benchmarks/bench_lbfgs.py [--seeds 5] [--alpha 1e-4]
        [--max-iter 200] [--json out.json]
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
from fastmlp.model import init_params
from fastmlp.tools.bench import blas_info, context, coretype_warning

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def problems():
    from sklearn.datasets import load_digits, load_iris, make_regression
    from sklearn.preprocessing import MinMaxScaler, scale
    X, y = load_digits(return_X_y=True)
    yield "digits", MinMaxScaler().fit_transform(X), y, True
    iris = load_iris()
    yield "iris", iris.data, iris.target, True
    X, y = make_regression(n_samples=200, n_features=10, bias=20.0, noise=100.0, random_state=7)
    yield "regression", X, scale(y), False


def fit_pair(name, X, y, classify, activation, seed, threads, alpha, max_iter):
    from sklearn import neural_network as sk_nn
    from threadpoolctl import threadpool_limits
    params = dict(hidden_layer_sizes=(50,), activation=activation, solver="lbfgs",
                  alpha=alpha, random_state=0)
    n_out = len(np.unique(y)) if classify else 1
    n_out = 1 if n_out == 2 else n_out
    init = init_params([X.shape[1], 50, n_out], [activation, "identity"], "sklearn",
                       np.random.default_rng(seed))
    out = {}
    ulp = [p * np.float32(1 + 2.0**-23) for p in init]
    rows = np.arange(len(X))
    shuffled = np.random.default_rng([seed, 1]).permutation(len(X))
    for lib, module, start, order in (
            ("scikit-learn", sk_nn, init, rows), ("fastmlp", fastmlp, init, rows),
            ("scikit-learn, 1 ulp", sk_nn, ulp, rows),
            ("scikit-learn, rows permuted", sk_nn, init, shuffled)):
        cls = module.MLPClassifier if classify else module.MLPRegressor
        extra = dict(n_threads=threads) if lib == "fastmlp" else {}
        est = cls(**params, **extra, max_iter=1, warm_start=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est.fit(X[order], y[order])
            for p, p0 in zip(est.coefs_ + est.intercepts_, start[0::2] + start[1::2]):
                p[...] = p0
            est.set_params(max_iter=max_iter)
            with threadpool_limits(threads):
                t0 = time.perf_counter()
                est.fit(X[order], y[order])
                seconds = time.perf_counter() - t0
        out[lib] = dict(loss=float(est.loss_), n_iter=int(est.n_iter_), seconds=seconds,
                        score=float(est.score(X, y)))
    return out


def summary(values):
    return dict(median=statistics.median(values), min=min(values), max=max(values))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--alpha", type=float, default=1e-4)
    parser.add_argument("--max-iter", type=int, default=200)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    warning = coretype_warning()
    if warning:
        print(warning, file=sys.stderr)
    ctx = context(ROOT)
    print(f"CPU {ctx['cpu']} ({ctx['cpu_id']}), fastmlp ISA {ctx['isa']}, {args.threads} threads;"
          f" NumPy BLAS: {blas_info()}; alpha {args.alpha:g}, max_iter {args.max_iter}")
    rows = []
    print(f"{'problem':<11} {'act':<5} {'loss sklearn':>13} {'loss fastmlp':>13} {'rel diff':>9}"
          f" {'iters sk/fm':>11} {'s sklearn':>16} {'s fastmlp':>16} {'speedup':>8}")
    for name, X, y, classify in problems():
        for activation in ("relu", "tanh"):
            runs = [fit_pair(name, X, y, classify, activation, seed, args.threads, args.alpha,
                             args.max_iter)
                    for seed in range(args.seeds)]
            sk = [r["scikit-learn"] for r in runs]
            fm = [r["fastmlp"] for r in runs]
            rel = [f["loss"] / s["loss"] - 1 for s, f in zip(sk, fm)]
            self_rel = [r["scikit-learn, 1 ulp"]["loss"] / s["loss"] - 1 for s, r in zip(sk, runs)]
            perm_rel = [r["scikit-learn, rows permuted"]["loss"] / s["loss"] - 1
                        for s, r in zip(sk, runs)]
            speed = [s["seconds"] / f["seconds"] for s, f in zip(sk, fm)]
            row = dict(problem=name, activation=activation, runs=runs,
                       relative_loss_difference=summary(rel),
                       sklearn_1ulp_relative_loss_difference=summary(self_rel),
                       sklearn_permuted_relative_loss_difference=summary(perm_rel),
                       speedup=summary(speed))
            rows.append(row)
            med = statistics.median
            print(f"{name:<11} {activation:<5} {med([s['loss'] for s in sk]):13.6f} "
                  f"{med([f['loss'] for f in fm]):13.6f} {med(rel):+9.2%} "
                  f"{med([s['n_iter'] for s in sk]):5.0f}/{med([f['n_iter'] for f in fm]):<5.0f} "
                  f"{med([s['seconds'] for s in sk]):6.3f} ({min(s['seconds'] for s in sk):.3f}-"
                  f"{max(s['seconds'] for s in sk):.3f}) "
                  f"{med([f['seconds'] for f in fm]):6.3f} ({min(f['seconds'] for f in fm):.3f}-"
                  f"{max(f['seconds'] for f in fm):.3f}) {med(speed):7.1f}x")
            print(f"{'':<17} fm vs sk over seeds: {min(rel):+.2%} .. {max(rel):+.2%} "
                  f"(sk vs sk 1 ulp: {min(self_rel):+.2%} .. {max(self_rel):+.2%}; rows permuted:"
                  f" median {med(perm_rel):+.2%}, {min(perm_rel):+.2%} .. {max(perm_rel):+.2%});"
                  f" speedup "
                  f"{min(speed):.1f}x .. {max(speed):.1f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(context=ctx, seeds=args.seeds, threads=args.threads, alpha=args.alpha,
                           max_iter=args.max_iter, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
