"""Run by test_mpi.py under mpiexec: one rank fails, every rank must stop (no hang) with an
error naming it. Each rank writes what it saw in each scenario to <out>.<rank>.json."""
import json
import sys
import warnings

import numpy as np
from mpi4py import MPI

from fastmlp import MLPClassifier, MLP
from fastmlp.distributed import DistributedTrainStep

warnings.simplefilter("ignore")
comm = MPI.COMM_WORLD
rank, last = comm.Get_rank(), comm.Get_size() - 1
rng = np.random.default_rng(0)
X = rng.normal(size=(300, 8)).astype(np.float32)
y = (X[:, 0] > 0).astype(int)
kw = dict(hidden_layer_sizes=(16,), max_iter=6, random_state=0, batch_size=50, tol=0.0)


def scenario(fn):
    try:
        fn()
        return {"error": None}
    except BaseException as e:             # KeyboardInterrupt included: record it
        return {"error": type(e).__name__, "message": str(e)}


def bad_data():
    Xr = X if rank != last else X[:, :7]            # the last rank's X has a column less
    MLPClassifier(comm=comm, **kw).fit(Xr, y)


def different_data():
    Xr = X if rank != last else X + 1               # same shape, other values
    MLPClassifier(comm=comm, **kw).fit(Xr, y)


def bad_parameter():
    MLPClassifier(comm=comm, **dict(kw, alpha=-1.0 if rank == last else 1e-4)).fit(X, y)


def callback_raises():
    def cb(info):
        if rank == last and info["epoch"] == 2:
            raise RuntimeError("callback failed on purpose")
    MLPClassifier(comm=comm, callback=cb, **kw).fit(X, y)


interrupted = {}


def interrupt():
    def cb(info):
        if rank == last and info["epoch"] == 3:
            raise KeyboardInterrupt
    est = MLPClassifier(comm=comm, callback=cb, **kw).fit(X, y)
    interrupted.update(n_iter=est.n_iter_, crc=float(np.sum(est.coefs_[0], dtype=np.float64)))


def lbfgs_bad_data():
    Xr = X if rank != last else X[:, :7]
    MLPClassifier(comm=comm, solver="lbfgs", **kw).fit(Xr, y)


def batch_norm():
    MLPClassifier(comm=comm, normalization="batch", **kw).fit(X, y)


def different_networks():
    model = MLP([8, 16 if rank != last else 17, 2], random_state=0)
    DistributedTrainStep(model.train_step("softmax_cross_entropy", 32), comm)


def works_after():     # the communicator is still usable after every failure above
    MLPClassifier(comm=comm, **kw).fit(X, y)


result = {name: scenario(fn) for name, fn in [
    ("bad_data", bad_data), ("different_data", different_data),
    ("bad_parameter", bad_parameter), ("callback_raises", callback_raises),
    ("interrupt", interrupt), ("lbfgs_bad_data", lbfgs_bad_data),
    ("batch_norm", batch_norm), ("different_networks", different_networks),
    ("works_after", works_after)]}
result["interrupted"] = interrupted
with open(f"{sys.argv[1]}.{rank}.json", "w") as f:
    json.dump(result, f)
