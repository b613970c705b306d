"""Run by test_mpi.py under mpiexec: data-parallel fits against one process.

Every rank fits each case with comm=COMM_WORLD; rank 0 also fits it alone (comm=None) and
writes, per case, the largest parameter difference, the loss curves, n_iter_ and whether every
rank ended with bitwise the same parameters as rank 0 and as a second identical run.
"""
import json
import sys
import warnings
import zlib

import numpy as np
from mpi4py import MPI

from fastmlp import MLPClassifier, MLPRegressor

warnings.simplefilter("ignore")
comm = MPI.COMM_WORLD
rng = np.random.default_rng(0)
n = 501                                   # batch 100: the last batch has 1 row (empty shards)
X = rng.normal(size=(n, 12)).astype(np.float32)
labels = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(int) + (X[:, 3] > 0.8)
Y2 = np.stack([X[:, 0] - X[:, 1], np.sin(X[:, 2])], 1)
counts = rng.poisson(np.exp(0.3 * X[:, 0])).astype(np.float64)
weights = rng.uniform(0.2, 2.0, n)
base = dict(hidden_layer_sizes=(24, 16), max_iter=12, random_state=3, batch_size=100,
            alpha=1e-3, tol=0.0)
CASES = {
    "adam": (MLPClassifier, dict(), labels, None),
    "sgd nesterov": (MLPClassifier, dict(solver="sgd", learning_rate_init=0.05), labels, None),
    "rmsprop": (MLPClassifier, dict(solver="rmsprop"), labels, None),
    # lbfgs where the penalty fixes the minimum: a nearly interpolated problem amplifies any
    # rounding difference into another path (benchmarks/results/lbfgs_vs_sklearn.md)
    "lbfgs": (MLPClassifier, dict(solver="lbfgs", max_iter=25, alpha=0.1), labels, None),
    "dropout": (MLPClassifier, dict(dropout=0.3), labels, None),
    "weights": (MLPClassifier, dict(class_weight="balanced"), labels, weights),
    "layer norm, clip": (MLPClassifier, dict(normalization="layer", clip_grad_norm=0.5), labels,
                         None),
    "early stopping": (MLPClassifier, dict(early_stopping=True, max_iter=20), labels, None),
    "binary": (MLPClassifier, dict(activation="tanh"), labels > 0, None),
    "multi-output sgd": (MLPRegressor, dict(solver="sgd", learning_rate_init=0.01), Y2, None),
    "regression lbfgs": (MLPRegressor, dict(solver="lbfgs", max_iter=25, alpha=0.1), Y2,
                         weights),
    "poisson": (MLPRegressor, dict(loss="poisson", learning_rate_init=0.003), counts, None),
}


def params(est):
    return np.concatenate([p.ravel() for p in est.coefs_ + est.intercepts_])


out = {}
for name, (cls, extra, y, w) in CASES.items():
    kw = dict(base, **extra)
    a = cls(comm=comm, **kw).fit(X, y, sample_weight=w)
    again = cls(comm=comm, **kw).fit(X, y, sample_weight=w)
    pa = params(a)
    crc = zlib.crc32(pa.view(np.uint8))
    same = comm.allgather((crc, a.n_iter_, a.loss_curve_))
    if comm.Get_rank() == 0:
        b = cls(**kw).fit(X, y, sample_weight=w)
        pb = params(b)
        out[name] = dict(
            max_diff=float(np.abs(pa - pb).max()), scale=float(np.abs(pb).max()),
            loss_n=a.loss_curve_, loss_1=b.loss_curve_, n_iter_n=a.n_iter_, n_iter_1=b.n_iter_,
            ranks_identical=all(s == same[0] for s in same),
            repeat_bitwise=bool(np.array_equal(pa.view(np.uint32), params(again).view(np.uint32))),
            validation_n=getattr(a, "validation_scores_", None),
            validation_1=getattr(b, "validation_scores_", None))
if comm.Get_rank() == 0:
    with open(sys.argv[1], "w") as f:
        json.dump(out, f)
