"""Data-parallel training over MPI: every rank holds the same model, trains on its share of each
global batch, and the ranks sum their gradients with one allreduce per step.

    from mpi4py import MPI
    MLPClassifier(..., comm=MPI.COMM_WORLD).fit(X, y)        # every rank: the same X, y
    step = DistributedTrainStep(model.train_step(...), MPI.COMM_WORLD)   # custom loops

Needs mpi4py and an MPI library (``pip install "fastmlp[mpi]"`` brings both from PyPI); nothing
else in fastmlp imports this module, and it imports mpi4py only when a communicator is used.

Contract (TrainStep note o does the arithmetic):
 1. A global batch of B rows (their indices, the same on every rank) is cut by position: rank r
    of N takes positions [B r / N, B (r + 1) / N). Its forward is a shard of total weight W
    (B, or the batch's sum of sample weights) starting at that position, so its flat_grads
    hold its share of the global gradient and dropout masks are those of the global batch.
 2. One allreduce (sum, in place) of the step's reduce_buffer: the gradient shares and, in the
    same message, the loss shares and three status counts (failed, interrupted, closing).
    Every rank then runs the same update on the same sum: the parameters stay identical.
 3. Every collective is reached by every rank or by none. A rank whose work fails still joins
    the step's allreduce, with a status; then every rank raises DistributedError naming the
    failed rank (KeyboardInterrupt on every rank if the failures were interrupts), before any
    update. Code failing between steps calls fail(exc) (the estimators do), which joins the
    others' next allreduce the same way; close() is the last collective of a training run.
 4. Setup (the constructor) checks collectively that every rank has the same architecture,
    optimizer and parameter count, then broadcasts rank 0's parameters, optimizer state, step
    count and running statistics: a run starts identical on every rank.
 5. check=True (debugging) compares a checksum of the parameters across ranks after every
    update and raises DistributedError if they differ.
 6. Batch normalization is refused: its statistics would be those of each rank's shard (what
    PyTorch's DDP does without SyncBatchNorm), so N ranks would not train as one process.
"""
import math
import time
import zlib

import numpy as np

from ..core.machine import share_cores

__all__ = ["DistributedError", "DistributedTrainStep", "agree", "shard_bounds", "share_cores",
           "node_ranks"]

_FAILED, _INTERRUPTED, _CLOSING = 1, 2, 3     # status slots after the loss share (contract 2)


class DistributedError(RuntimeError):
    """A rank failed (or the ranks disagree); raised on every rank. rank: the first rank that
    failed; detail: its error."""

    def __init__(self, message, rank=None, detail=None):
        super().__init__(message)
        self.rank, self.detail = rank, detail


def _mpi():
    try:
        from mpi4py import MPI   # optional dependency: imported lazily, on purpose
    except ImportError as e:      # pragma: no cover - a comm cannot exist without it
        raise ImportError("fastmlp.distributed needs mpi4py: pip install 'fastmlp[mpi]'") from e
    return MPI


def shard_bounds(n, size, rank):
    """Rows [lo, hi) of n that rank `rank` of `size` takes (contract 1): contiguous, in rank
    order, sizes differing by at most one."""
    return n * rank // size, n * (rank + 1) // size


def node_ranks(comm):
    """How many ranks of comm run on this machine (shared memory)."""
    MPI = _mpi()
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return local.Get_size()
    finally:
        local.Free()


def _describe(exc):
    return f"{type(exc).__name__}: {exc}"


def agree(comm, error=None):
    """A collective check: every rank calls it, with the exception it met (or None). If any
    rank met one, every rank raises: the failing rank its own exception, the others a
    DistributedError naming the first failing rank and its error. Returns None otherwise."""
    errors = comm.allgather(None if error is None else _describe(error))
    failed = [r for r, e in enumerate(errors) if e is not None]
    if not failed:
        return
    if error is not None:
        raise error
    r = failed[0]
    raise DistributedError(f"rank {r} failed: {errors[r]}", r, errors[r])


class collective:
    """with collective(comm): a block every rank runs; if it raises on any rank, it raises on
    every rank at its end (agree). comm None: a plain block."""

    def __init__(self, comm):
        self.comm = comm

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if self.comm is not None:
            agree(self.comm, exc)
        return False


def _signature(step):
    return (tuple(p.shape for p in step.params), step.activations, step.loss, step.optimizer,
            step.dropout, step.normalization, step.n_params, step.max_batch)


class DistributedTrainStep:
    """A TrainStep trained data-parallel over comm (contract above).

    step: a fastmlp.core.TrainStep (the same architecture on every rank); comm: an mpi4py
    communicator; check: compare the parameters across ranks after every update (contract 5).
    run(X, y, sample_weight, lr=, index=) takes the global batch (the same arguments on every
    rank) and returns its loss; loss_and_grad(X, y, sample_weight) is the full-data objective
    for L-BFGS, each rank evaluating its contiguous share of the rows. The wrapped step's
    attributes (params, flat_params, t, state, grad_norm, ...) are read through.
    """

    def __init__(self, step, comm, *, check=False):
        MPI = _mpi()
        self.MPI, self.comm, self.step, self.check = MPI, comm, step, bool(check)
        self.size, self.rank = comm.Get_size(), comm.Get_rank()
        self.interrupted = False
        self._error = None                # this rank's failure, told to the others (contract 3)
        self.allreduce_seconds = 0.0      # time inside the step allreduces (benchmarks)
        self._lbfgs_cache = None
        with collective(comm):
            if "batch" in step.normalization:
                raise ValueError("normalization='batch' cannot train data-parallel: each "
                                 "rank's statistics would be those of its shard (use 'layer')")
            mine = _signature(step)
        signatures = comm.allgather(mine)
        if any(s != signatures[0] for s in signatures):
            r = next(r for r, s in enumerate(signatures) if s != signatures[0])
            raise DistributedError(f"rank {r}'s network differs from rank 0's: {signatures[r]} "
                                   f"against {signatures[0]}", r)
        # contract 4: start from rank 0's parameters and optimizer state
        for a in [step.flat_params, *step.state, *step.running_stats]:
            comm.Bcast(a, root=0)
        step.t = comm.bcast(step.t, root=0)
        self._tail = step.reduce_buffer[step.n_params:]

    def __getattr__(self, name):
        if name == "step":
            raise AttributeError(name)
        return getattr(self.step, name)

    # ---- the step --------------------------------------------------------------------------

    def _shard(self, n_rows, index, sample_weight):
        """This rank's rows of the global batch, their first position and the batch's total
        weight (contract 1)."""
        rows = np.arange(n_rows) if index is None else np.asarray(index)
        lo, hi = shard_bounds(rows.shape[0], self.size, self.rank)
        if sample_weight is None:
            total = float(rows.shape[0])
        else:
            total = float(np.sum(np.asarray(sample_weight, np.float64)[rows]))
        return rows[lo:hi], lo, total

    def _allreduce(self, status):
        """The step's one collective (contract 2): status slots set, sum in place, then raise
        on every rank if any rank failed or the ranks are out of step."""
        self._tail[1:] = 0
        if status:
            self._tail[status] = 1
        t0 = time.perf_counter()
        self.comm.Allreduce(self.MPI.IN_PLACE, self.step.reduce_buffer, op=self.MPI.SUM)
        self.allreduce_seconds += time.perf_counter() - t0
        failed, interrupted, closing = (int(self._tail[k]) for k in
                                        (_FAILED, _INTERRUPTED, _CLOSING))
        if failed or interrupted:
            errors = self.comm.allgather(self._error)
            self._error = None
            if not failed:
                self.interrupted = True
                raise KeyboardInterrupt(f"interrupted on rank(s) "
                                        f"{[r for r, e in enumerate(errors) if e]}")
            r = next(r for r, e in enumerate(errors) if e and not e.startswith("Keyboard"))
            raise DistributedError(f"rank {r} failed: {errors[r]}", r, errors[r])
        if closing and closing != self.size:
            raise DistributedError(f"the ranks are out of step: {closing} of {self.size} "
                                   "finished training while the others took another step")

    def run(self, X, y, sample_weight=None, *, lr, index=None):
        """One data-parallel step of the global batch (X's rows `index`, all of X if None):
        every rank passes the same arguments. Returns the global batch's loss (with the L2
        term). Raises FloatingPointError on every rank, updating nothing, if it is not finite
        and the step was made with nonfinite="raise"."""
        step, status, share = self.step, 0, 0.0
        try:
            rows, lo, total = self._shard(X.shape[0], index, sample_weight)
            try:
                share = step.forward(X, y, sample_weight, index=rows, total_weight=total,
                                     row_offset=lo)
                step.backward()
            except FloatingPointError:
                share = math.nan            # every rank raises it after the sum
                step.flat_grads[...] = 0
        except BaseException as e:          # contract 3: still join the collective
            step.flat_grads[...] = 0
            status = _INTERRUPTED if isinstance(e, KeyboardInterrupt) else _FAILED
            self._error = _describe(e)
        self._tail[0] = share
        self._allreduce(status)
        loss = float(self._tail[0]) + step.penalty
        if not math.isfinite(loss) and step._config["nonfinite"] == "raise":
            raise FloatingPointError(f"the loss became {loss} at step {step.t + 1}; the "
                                     "parameters were not updated")
        step.update(lr)
        if self.check:
            self.check_identical()
        return loss

    def fail(self, exc):
        """This rank met exc outside run (a callback, scoring): join the others' next step
        with a failure status, so that every rank stops (contract 3). Raises on every rank:
        KeyboardInterrupt for an interrupt (then interrupted is True), else DistributedError."""
        if isinstance(exc, KeyboardInterrupt) and self.interrupted:
            return
        self._error = _describe(exc)
        self.step.flat_grads[...] = 0
        self._tail[0] = 0
        self._allreduce(_INTERRUPTED if isinstance(exc, KeyboardInterrupt) else _FAILED)
        raise DistributedError("fail() met no failure: the ranks are out of step")

    def close(self):
        """The last collective of a training run (contract 3): every rank calls it once the
        loop is over; it raises if another rank failed or is still taking steps."""
        self.step.flat_grads[...] = 0
        self._tail[0] = 0
        self._allreduce(_CLOSING)

    def check_identical(self):
        """Raise DistributedError unless every rank holds the same parameters (contract 5)."""
        mine = zlib.crc32(np.ascontiguousarray(self.step.flat_params).view(np.uint8))
        sums = self.comm.allgather(mine)
        if any(s != sums[0] for s in sums):
            r = next(r for r, s in enumerate(sums) if s != sums[0])
            raise DistributedError(f"rank {r}'s parameters differ from rank 0's after "
                                   f"update {self.step.t}", r)

    # ---- full-batch objective (L-BFGS) ---------------------------------------------------------

    def loss_and_grad(self, X, y, sample_weight=None, *, out=None):
        """The full-data loss and its float64 gradient (TrainStep.loss_and_grad), each rank
        evaluating rows shard_bounds(n, size, rank) of X and one allreduce summing the shares
        (the L2 term added once, on rank 0). The same result on every rank."""
        step, n_params = self.step, self.step.n_params
        cache = self._lbfgs_cache
        if cache is None or cache[0] is not X or cache[1] is not y or cache[2] is not \
                sample_weight:
            n = X.shape[0]
            lo, hi = shard_bounds(n, self.size, self.rank)
            w = None if sample_weight is None else sample_weight[lo:hi]
            total = float(n if sample_weight is None
                          else np.sum(np.asarray(sample_weight, np.float64)))
            cache = self._lbfgs_cache = (X, y, sample_weight, X[lo:hi], y[lo:hi], w, total,
                                         hi > lo, np.empty(n_params + 2, np.float64))
        Xs, ys, ws, total, nonempty, buf = cache[3:]
        failure = None
        buf[:] = 0
        try:
            if nonempty:
                loss, _ = step.loss_and_grad(Xs, ys, ws, out=buf[:n_params], total_weight=total,
                                             penalty=self.rank == 0)
                buf[n_params] = loss
        except FloatingPointError:
            buf[n_params] = math.nan
        except BaseException as e:
            failure = e
            buf[n_params + 1] = 1
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        if buf[n_params + 1]:
            agree(self.comm, failure if failure is not None else None)
        loss = float(buf[n_params])
        if not math.isfinite(loss):
            raise FloatingPointError(f"the loss became {loss}")
        if out is None:
            out = np.empty(n_params, np.float64)
        out[...] = buf[:n_params]
        return loss, out
