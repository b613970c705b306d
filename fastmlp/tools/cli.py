"""The `fastmlp` command (also `python -m fastmlp`).

    fastmlp info [--json]            the machine: CPU, ISAs, threads, OpenMP, peak GFLOP/s,
                                     memory bandwidth, NumPy's BLAS
    fastmlp train [options]          train an MLP classifier (bundled MNIST sample by default);
                                     --norm layer|batch, --clip 1.0, --diagnose [--plot F.png]
    fastmlp bench [--quick] [--json FILE] [--plot FILE.png]
                                     every kernel and a training step against NumPy

`train` drives the model API (fastmlp.model.MLP and its native TrainStep), not the scikit-learn
estimators, so that it runs right after `pip install .`: scikit-learn is an optional extra.
`train --save` still writes a fitted MLPClassifier's file (save_classifier), which keeps the
classes: reading it back (fastmlp.load) needs scikit-learn.
Under `mpiexec -n N` (mpi4py installed: `pip install "fastmlp[mpi]"`) it trains data-parallel
(fastmlp.distributed): every rank loads the data and takes its share of every batch; rank 0
prints and saves, and the samples/s are the job's.
"""
import argparse
import contextlib
import json
import os
import shutil
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

from .. import core, datasets, distributed, io
from .._version import __version__
from ..model import MLP, diagnostics
from . import bench
from .profiler import profile

SOLVERS = ("sgd", "adam", "adamw", "rmsprop")


# ---- info -----------------------------------------------------------------------------------


def machine_report():
    """core.info() plus measured peaks, memory bandwidth and NumPy's BLAS."""
    report = core.info()
    threads = report["num_threads"]
    report.update(
        peak_gflops={str(n): bench.best_peak(n) for n in sorted({1, threads})},
        memory_bandwidth_gbps=bench.memory_bandwidth_gbps(),
        blas=bench.blas_info(),
        openblas_coretype=os.environ.get("OPENBLAS_CORETYPE"))
    return report


def cmd_info(args):
    report = machine_report()
    if args.json:
        print(json.dumps(report, indent=1))
        return
    omp = report["openmp"] or {}
    lines = [
        f"fastmlp {report['version']}",
        f"cpu            {report['cpu']} ({report['cpu_id'] or 'family and model unknown'})",
        f"isa            {report['isa']} (supported: {', '.join(report['supported_isas'])})",
        f"threads        {report['num_threads']} ({report['physical_cores']} physical cores)",
        f"openmp         {omp.get('library', 'none found')}",
    ]
    lines += [f"peak           {gf:.1f} GFLOP/s on {bench.threads_text(int(n))} (FMA, "
              f"{report['isa']})" for n, gf in report["peak_gflops"].items()]
    lines.append(f"memory         {report['memory_bandwidth_gbps']:.1f} GB/s (streaming copy, "
                 f"{report['num_threads']} threads)")
    lines += [f"numpy blas     {b['internal_api']} {b['version']}, kernel {b['architecture']}, "
              f"{b['num_threads']} threads ({b['library']})" for b in report["blas"]] \
        or ["numpy blas     none found by threadpoolctl"]
    print("\n".join(lines))
    for warning in (bench.coretype_warning(), bench.busy_warning(report["peak_gflops"])):
        if warning:
            print(warning, file=sys.stderr)


# ---- train: data ----------------------------------------------------------------------------


def load_data(args):
    """(X_train, y_train, X_test, y_test, description): float32 features; labels of the file's
    kind (integers, whole or other floats, strings; bytes decoded as UTF-8), which the saved
    classifier predicts as they are."""
    if args.data is None:
        images, labels = datasets.load_sample()
        X = datasets.prepare_images(images)
        X_train, y_train, X_test, y_test = X[:8000], labels[:8000], X[8000:], labels[8000:]
        source = "the bundled MNIST sample"
    elif os.path.isdir(args.data):
        train = datasets.load_mnist("train", directory=args.data)
        test = datasets.load_mnist("test", directory=args.data)
        X_train, y_train = datasets.prepare_images(train[0]), train[1]
        X_test, y_test = datasets.prepare_images(test[0]), test[1]
        source = f"MNIST files in {args.data}"
    else:
        reader = datasets.load_csv if args.data.lower().endswith(".csv") else datasets.load_npz
        X, y = reader(args.data)
        if getattr(args, "labels", None) is not None:
            y = _labels(args.labels)
        if y is None:
            raise SystemExit(f"{args.data} holds no labels (a scipy.sparse.save_npz file): give "
                             "them with --labels FILE (.npy, or text with one label a line)")
        y = _label_kinds(y, getattr(args, "labels", None) or args.data)
        X = _features(X, getattr(args, "scale", None))
        if X.shape[0] != len(y):
            raise SystemExit(f"{X.shape[0]} samples but {len(y)} labels")
        _check_task(y, getattr(args, "task", "auto"))
        n_test = max(1, int(round(X.shape[0] * args.test_split)))
        if n_test >= X.shape[0]:
            raise SystemExit(f"--test-split {args.test_split} leaves no training samples")
        train, test = split_rows(y, n_test, args.seed)
        X_train, y_train, X_test, y_test = X[train], y[train], X[test], y[test]
        source = f"{args.data} ({n_test:,} samples held out: shuffled, stratified, seed " \
                 f"{args.seed})"
    if args.limit:
        X_train, y_train = X_train[:args.limit], y_train[:args.limit]
    return X_train, y_train, X_test, y_test, source


def _labels(path):
    """Labels from a .npy file (as stored) or a text file with one label a line (typed as a CSV
    label column is, datasets.typed_labels: 3 is the integer 3, setosa a string)."""
    try:
        if path.lower().endswith(".npy"):
            y = np.load(path, allow_pickle=False)
        else:
            with open(path, encoding="utf-8-sig") as f:
                y = datasets.typed_labels(np.array([s for s in map(str.strip, f) if s], str))
    except (OSError, ValueError) as e:
        raise SystemExit(f"--labels {path}: {e}") from None
    if y.ndim != 1:
        raise SystemExit(f"--labels {path}: need one label per sample (1-D), got shape {y.shape}")
    return y


def _label_kinds(y, source):
    """y as the classes a model file can keep (bool, integers, floats, str): bytes are decoded,
    other kinds refused before training rather than when --save writes them."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise SystemExit(f"{source}: need one label per sample (1-D), got shape {y.shape}")
    if y.dtype.kind == "S":
        try:
            y = np.char.decode(y, "utf-8")
        except UnicodeDecodeError as e:
            raise SystemExit(f"{source}: labels are bytes that are not UTF-8: {e}") from None
    if y.dtype.kind not in "biufU":
        raise SystemExit(f"{source}: labels must be numbers or strings, got dtype {y.dtype}")
    return y


def _features(X, scale=None):
    """Images (more than 2-D: IDX-like arrays) are flattened and their integer pixels scaled to
    [0, 1]; a table (2-D, integers or floats) is used as given unless --scale says by what to
    divide it (--scale 255 for a table of pixels); a sparse matrix (CSR) is kept sparse: the
    first layer runs the sparse kernels on it."""
    if core.is_sparse(X):
        X = X.tocsr()
        return X if scale is None else (X / np.float32(scale)).astype(np.float32).tocsr()
    X = np.asarray(X)
    if X.ndim > 2:
        return datasets.prepare_images(X) if scale is None else np.ascontiguousarray(
            X.reshape(X.shape[0], -1) / np.float32(scale), dtype=np.float32)
    if X.ndim != 2:
        raise SystemExit(f"features must be (n_samples, n_features), got shape {X.shape}")
    if not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
        raise SystemExit(f"features must be numbers, got dtype {X.dtype}")
    X = np.ascontiguousarray(X, dtype=np.float32)
    return X if scale is None else X / np.float32(scale)


def _check_task(y, task):
    """fastmlp train trains classifiers: a target that looks continuous (floats that are not
    all whole numbers, with many distinct values) is refused with a message unless --task
    classification says to treat its values as classes."""
    if task == "classification" or not np.issubdtype(np.asarray(y).dtype, np.floating):
        return
    values = np.unique(y)
    if not np.all(np.isfinite(values)):
        raise SystemExit("the target has NaN or infinite values")
    if np.any(values != np.round(values)) or len(values) > max(20, len(y) // 10):
        raise SystemExit(f"the target looks continuous ({len(values):,} distinct values, "
                         f"e.g. {values[0]:g} .. {values[-1]:g}): fastmlp train trains "
                         f"classifiers; for regression use fastmlp.MLPRegressor, or pass "
                         f"--task classification to treat each value as a class")


def split_rows(y, n_test, seed):
    """(train, test) row indices: a seeded shuffle, stratified by class (each class gives its
    share of the n_test rows, at least one where it has two or more), so a file sorted by label
    does not leave one class in the test set."""
    rng = np.random.default_rng(seed)
    classes, codes = np.unique(np.asarray(y).astype(str), return_inverse=True)
    test = []
    for c in range(len(classes)):
        rows = rng.permutation(np.flatnonzero(codes == c))
        k = int(round(n_test * len(rows) / len(y)))
        if len(rows) >= 2:
            k = min(max(k, 1), len(rows) - 1)
        else:
            k = 0
        test.extend(rows[:k])
    test = np.array(sorted(test), dtype=np.intp)
    if len(test) == 0:          # every class has one row: a plain shuffled split
        test = np.sort(rng.permutation(len(y))[:n_test])
    train = np.setdiff1d(np.arange(len(y)), test)
    return rng.permutation(train), rng.permutation(test)


# ---- train: progress ------------------------------------------------------------------------


class Progress:
    """A one-line progress bar on stderr with elapsed time, ETA and samples/s, redrawn in place
    at most ten times a second and cut to the terminal's width (a line longer than the terminal
    would wrap, and every redraw would leave a line behind). When stderr is not a terminal (a
    log, CI) it prints one plain line per epoch instead."""

    WIDTH = 24

    def __init__(self, epochs, n_samples, stream=sys.stderr, enabled=True, columns=None):
        self.epochs, self.n, self.stream, self.enabled = epochs, n_samples, stream, enabled
        self.tty = enabled and stream.isatty()
        self.columns = columns          # None: the terminal's, read at each redraw
        self._drawn = 0.0
        self._start = time.perf_counter()

    def _fit(self, line):
        cols = self.columns or shutil.get_terminal_size((80, 24)).columns
        return line[:max(cols - 1, 1)]

    def _times(self, epoch, done):
        """'elapsed, ETA' of the whole run, from the samples seen so far."""
        elapsed = time.perf_counter() - self._start
        seen = (epoch - 1) * self.n + done
        left = elapsed / seen * (self.epochs * self.n - seen) if seen else 0.0
        return f"{_clock(elapsed)} elapsed, ETA {_clock(left)}"

    def update(self, epoch, done, loss, rate):
        if not self.tty or time.perf_counter() - self._drawn < 0.1:
            return
        self._drawn = time.perf_counter()
        filled = int(self.WIDTH * done / self.n)
        bar = "#" * filled + "." * (self.WIDTH - filled)
        line = (f"epoch {epoch}/{self.epochs} [{bar}] {done:,}/{self.n:,} loss {loss:.4f} "
                f"{rate:,.0f} samples/s, {self._times(epoch, done)}")
        self.stream.write("\r" + self._fit(line) + "\x1b[K")
        self.stream.flush()

    def end_epoch(self, epoch, loss, rate, val_acc):
        if not self.enabled:
            return
        val = "" if val_acc is None else f"  val acc {100 * val_acc:.2f}%"
        line = (f"epoch {epoch}/{self.epochs} [{'#' * self.WIDTH}] {self.n:,}/{self.n:,} "
                f"loss {loss:.4f} {rate:,.0f} samples/s{val}")
        if self.tty:     # a log keeps its plain line an epoch
            line = self._fit(f"{line}, {self._times(epoch, self.n)}")
        self.stream.write(("\r" + line + "\x1b[K\n") if self.tty else line + "\n")
        self.stream.flush()


def _clock(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


# ---- train: the loop ------------------------------------------------------------------------


def _parse_hidden(text):
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes like 256 or 256,128, got "
                                         f"{text!r}")
    return sizes


def _positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _positive_real(text):
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def _fraction(text):
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text}")
    return value


def build_model(args, n_features, n_classes):
    """The MLP and the native TrainStep that updates its parameters in place."""
    model = MLP([n_features, *args.hidden, n_classes], activation=args.activation,
                normalization=args.norm, init=args.init, random_state=args.seed)
    hyper = dict(optimizer="adam" if args.solver == "adamw" else args.solver,
                 clip_grad_norm=args.clip or 0.0, measure_grad_norm=args.diagnose)
    if args.solver == "adamw":
        hyper["weight_decay"] = args.weight_decay
    step = model.train_step("softmax_cross_entropy", args.batch_size, **hyper)
    return model, step


def accuracy(model, X, y):
    return float(np.mean(model.predict(X).argmax(axis=1) == y))


def fit(model, step, X, y, X_val, y_val, args, progress, recorder=None):
    """args.epochs epochs of shuffled minibatches; returns (seconds, samples seen, epoch at
    which Ctrl-C stopped training or None, mean loss of each epoch completed): an interrupt ends
    training, not the command, so the summary is printed and --save still writes the model
    reached. recorder: a diagnostics.Recorder of step, fed on each epoch's last batch."""
    rng = np.random.default_rng(args.seed)
    n, seconds, seen, losses = X.shape[0], 0.0, 0, []
    order = np.arange(n)
    last_start = (n - 1) // args.batch_size * args.batch_size
    epoch, t0 = 0, time.perf_counter()
    try:
        for epoch in range(1, args.epochs + 1):
            rng.shuffle(order)
            total, t0 = 0.0, time.perf_counter()
            for start in range(0, n, args.batch_size):
                idx = order[start:start + args.batch_size]
                if recorder is not None and start == last_start:
                    recorder.before_update()
                total += step.run(X, y, lr=args.lr, index=idx) * len(idx)
                done = start + len(idx)
                seen += len(idx)
                progress.update(epoch, done, total / done, done / (time.perf_counter() - t0))
            elapsed = time.perf_counter() - t0
            seconds += elapsed
            val = accuracy(model, X_val, y_val) if X_val is not None else None
            progress.end_epoch(epoch, total / n, n / elapsed, val)
            losses.append(total / n)
            if recorder is not None:
                recorder.record(epoch, total / n)
    except KeyboardInterrupt:
        seconds += time.perf_counter() - t0
        if progress.tty:
            progress.stream.write("\n")
        return seconds, seen, epoch, losses
    return seconds, seen, None, losses


def mpi_comm():
    """COMM_WORLD when this process is one of several MPI ranks (mpiexec sets PMI_SIZE,
    OMPI_COMM_WORLD_SIZE or PMIX_SIZE... in its environment), else None."""
    sizes = [os.environ.get(k, "") for k in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS",
                                            "PMIX_SIZE")]
    if not any(v.isdigit() and int(v) > 1 for v in sizes):
        return None
    try:
        from mpi4py import MPI   # optional dependency: imported lazily, on purpose
    except ImportError:
        raise SystemExit("fastmlp train under mpiexec needs mpi4py: pip install "
                         "'fastmlp[mpi]' (or run without mpiexec)") from None
    return MPI.COMM_WORLD if MPI.COMM_WORLD.Get_size() > 1 else None


def cmd_train(args):
    comm = mpi_comm()
    if comm is not None:
        distributed.share_cores(distributed.node_ranks(comm))
        if comm.Get_rank() != 0:
            args.quiet, args.profile, args.save, args.plot = True, False, None, None
            args.diagnose = False
        # a rank that cannot load the data stops every rank (no collective inside the block)
        with distributed.collective(comm):
            prepared = _prepare(args)
        _train(args, comm, *prepared)
        return
    _train(args, None, *_prepare(args))


def _prepare(args):
    """The data and the model of `fastmlp train` (no collective: see cmd_train)."""
    if args.plot and not args.diagnose:
        raise SystemExit("fastmlp train: --plot draws the diagnostics: add --diagnose")
    if args.plot:
        bench.require_matplotlib()     # fail before training, not after
    if args.threads:
        core.set_num_threads(args.threads)
    X_train, y_train, X_test, y_test, source = load_data(args)
    # Labels of any kind (digits, strings of numbers, floats) become indices 0..C-1.
    classes, y_all = np.unique(np.concatenate([y_train, y_test]), return_inverse=True)
    y_all = y_all.astype(np.int32)
    y_train, y_test = y_all[:len(y_train)], y_all[len(y_train):]
    X_val = y_val = None
    if args.validation_split:
        n_val = max(1, int(round(X_train.shape[0] * args.validation_split)))
        X_train, X_val = X_train[:-n_val], X_train[-n_val:]
        y_train, y_val = y_train[:-n_val], y_train[-n_val:]
    if isinstance(X_train, np.ndarray):
        X_train = np.ascontiguousarray(X_train)
    model, step = build_model(args, X_train.shape[1], len(classes))
    return model, step, classes, X_train, y_train, X_val, y_val, X_test, y_test, source


def _train(args, comm, model, step, classes, X_train, y_train, X_val, y_val, X_test, y_test,
           source):
    talk = comm is None or comm.Get_rank() == 0
    if comm is not None:        # rank 0's initial parameters, gradients summed every step
        step = distributed.DistributedTrainStep(step, comm)
    if not args.quiet:
        print(f"training {'-'.join(map(str, model.layer_sizes))} MLP ({args.activation}, "
              f"{args.solver} lr {args.lr:g}, batch {args.batch_size}) on {source}: "
              f"{X_train.shape[0]:,} train / {X_test.shape[0]:,} test samples"
              + ("" if comm is None else f", {comm.Get_size()} MPI ranks"), file=sys.stderr)
    progress = Progress(args.epochs, X_train.shape[0], enabled=not args.quiet)
    recorder = diagnostics.Recorder(step) if args.diagnose else None
    with profile() if args.profile else contextlib.nullcontext() as prof:
        try:
            seconds, seen, stopped, losses = fit(model, step, X_train, y_train, X_val, y_val,
                                                 args, progress, recorder)
        except Exception as e:
            if comm is not None and not isinstance(e, distributed.DistributedError):
                step.fail(e)        # every rank stops
            raise
        if comm is not None:
            step.close()
    if not talk:
        return
    if stopped is not None:
        print(f"interrupted in epoch {stopped} of {args.epochs}: the summary and --save are "
              f"those of the model reached", file=sys.stderr)
    acc = accuracy(model, X_test, y_test)
    print(f"test accuracy {100 * acc:.2f}% on {X_test.shape[0]:,} samples | trained in "
          f"{seconds:.2f} s, {seen / max(seconds, 1e-9):,.0f} samples/s | {core.info()['isa']}, "
          f"{bench.threads_text(core.get_num_threads())}"
          + ("" if comm is None else f" x {comm.Get_size()} MPI ranks"))
    if args.profile:
        print(prof.table())
    if recorder is not None:
        shown = recorder.records if len(recorder.records) <= 2 else \
            [recorder.records[0], recorder.records[-1]]
        print("diagnostics (each epoch's last batch; fastmlp.model.diagnostics explains the "
              "columns):")
        for rec in shown:
            print(diagnostics.format_table(rec, model.activations))
        if args.plot:
            diagnostics.plot(recorder.records, args.plot,
                             title=f"{'-'.join(map(str, model.layer_sizes))}, "
                                   f"norm {args.norm or 'none'}")
            print(f"wrote {args.plot}")
    if args.save:
        save_classifier(args.save, model, classes, args, losses, seen)
        print(f"saved the model to {args.save} (a fitted fastmlp.MLPClassifier: "
              f"fastmlp.load(path).predict gives labels {_class_list(classes)}, predict_proba "
              f"their probabilities; reading it needs scikit-learn)")
    if stopped is not None:
        raise SystemExit(130)      # the shell's code for a command ended by Ctrl-C


def save_classifier(path, model, classes, args, losses, seen):
    """Write the trained model as a fitted fastmlp.MLPClassifier: the estimators' file (its
    classes with their dtype, fitted attributes, and hyperparameters that say how `train`
    trained it), written through fastmlp.io without the estimator class, which needs
    scikit-learn; `train` does not, fastmlp.load of the file does. Two classes take
    scikit-learn's binary form, one logistic output: the softmax of (z0, z1) is the logistic
    of z1 - z0, so the last layer becomes W1 - W0, b1 - b0 (a fitted MLPClassifier's own)."""
    L = model.n_layers
    coefs, intercepts = model.params[0:2 * L:2], model.params[1:2 * L:2]
    if len(classes) == 2:
        coefs[-1] = coefs[-1][:, 1:] - coefs[-1][:, :1]
        intercepts[-1] = intercepts[-1][1:] - intercepts[-1][:1]
    multiclass = len(classes) > 2
    hyper = dict(hidden_layer_sizes=list(args.hidden), activation=args.activation,
                 solver=args.solver, alpha=0.0, batch_size=args.batch_size,
                 learning_rate_init=args.lr, max_iter=args.epochs, normalization=args.norm,
                 weight_decay=args.weight_decay if args.solver == "adamw" else 0.0,
                 clip_grad_norm=args.clip)
    attrs = dict(n_features_in_=model.layer_sizes[0], n_outputs_=coefs[-1].shape[1],
                 n_layers_=L + 1, n_iter_=len(losses), t_=seen, loss_curve_=losses,
                 **({"loss_": losses[-1]} if losses else {}))
    io.write_model(path, "MLPClassifier", coefs, intercepts, model.activations,
                   "softmax" if multiclass else "logistic",
                   dict(hyperparameters=hyper, attributes=attrs,
                        normalization=model.normalization,
                        **io.classes_field(classes, "multiclass" if multiclass else "binary")),
                   norm_tensors=model.norm_tensors())


def _class_list(classes):
    shown = ", ".join(str(c) for c in classes[:10])
    return f"[{shown}{', ...' if len(classes) > 10 else ''}]"


# ---- bench ----------------------------------------------------------------------------------


def cmd_bench(args):
    if args.plot:
        bench.require_matplotlib()     # fail before the measurements, not after
    if args.threads:
        core.set_num_threads(args.threads)
    warning = bench.coretype_warning()
    if warning:
        print(warning, file=sys.stderr)
    target, repeats = (0.005, 3) if args.quick else (0.05, 5)
    # NumPy's BLAS gets as many threads as fastmlp: a like-for-like comparison
    with threadpool_limits(limits=core.get_num_threads(), user_api="blas"):
        ctx = bench.context()
        peaks = {n: bench.best_peak(n, 0.1 if args.quick else 0.2)
                 for n in sorted({1, core.get_num_threads()})}
        ctx["peak_gflops"] = peak = peaks[core.get_num_threads()]
        ctx["peak_gflops_by_threads"] = peaks
        _print_context(ctx)
        busy = bench.busy_warning(peaks)
        if busy:
            print(busy, file=sys.stderr)
        results = []
        for case in bench.cases(np.random.default_rng(0)):
            results.append(bench.measure(case, peak, target, repeats))
            _print_result(results[-1])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(context=ctx, results=results), f, indent=1)
        print(f"wrote {args.json}")
    if args.plot:
        bench.plot(results, ctx, args.plot)
        print(f"wrote {args.plot}")


def _print_context(ctx):
    print(f"fastmlp {ctx['fastmlp_version']} | {ctx['cpu']} ({ctx['cpu_id']}) | {ctx['isa']}, "
          f"{bench.threads_text(ctx['threads'])} | peak {ctx['peak_gflops']:.1f} GFLOP/s")
    for b in ctx["blas"]:
        print(f"NumPy BLAS: {b['internal_api']} {b['version']}, kernel {b['architecture']}, "
              f"{b['num_threads']} threads")
    print(f"{'case':46s} {'fastmlp':>10s} {'min-max':>19s} {'GFLOP/s':>8s} {'GB/s':>7s} "
          f"{'%peak':>6s} {'vs ref':>7s} {'vs BLAS':>7s}  (medians; noisy: max > "
          f"{bench.NOISY} min)")


def _print_result(r):
    vs_blas = "" if r["speedup_vs_blas"] is None else f"{r['speedup_vs_blas']:6.2f}x"
    # the peak is the best of several measurements: a case above it was timed while the
    # peak's own measurement was unlucky, and is printed as such, never as >100%
    pct = f"{r['percent_of_peak']:5.1f}%" if r["percent_of_peak"] <= 100 else " >peak"
    spread = f"{_duration(r['fastmlp_seconds_min'])}-{_duration(r['fastmlp_seconds_max'])}"
    print(f"{r['name'][:46]:46s} {_duration(r['fastmlp_seconds']):>10s} {spread:>19s} "
          f"{r['gflops']:8.1f} {r['gbps']:7.1f} {pct} {r['speedup_vs_reference']:6.1f}x "
          f"{vs_blas:>7s}{' (noisy)' if r['noisy'] else ''}", flush=True)


def _duration(seconds):
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


# ---- command line ---------------------------------------------------------------------------


def parser():
    p = argparse.ArgumentParser(prog="fastmlp", description="Fast MLPs on multicore CPUs.")
    p.add_argument("--version", action="version", version=f"fastmlp {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="the machine: CPU, ISAs, threads, peaks, BLAS")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(run=cmd_info)

    train = sub.add_parser("train", help="train an MLP classifier and report test accuracy",
                           description="Train an MLP classifier: by default on the bundled "
                           "MNIST sample (first 8,000 images train, last 2,000 test).")
    train.add_argument("--data", help="a folder with MNIST IDX files, an .npz (X/y, x_train/"
                       "y_train, ..., or a sparse matrix from scipy.sparse.save_npz) or a .csv "
                       "(label in the last column: numbers or text)")
    train.add_argument("--labels", help="the labels of --data, for a save_npz file (which holds "
                       "none): a .npy file or text with one label a line")
    train.add_argument("--test-split", type=_fraction, default=0.2,
                       help="for .npz/.csv: the fraction held out at the end as the test set "
                       "(default 0.2)")
    train.add_argument("--limit", type=_positive, help="train on the first N training samples only")
    train.add_argument("--scale", type=_positive_real, metavar="S",
                       help="divide a table's features by S (--scale 255 for pixels in a table; "
                            "IDX images are scaled to [0, 1] without it)")
    train.add_argument("--task", choices=("auto", "classification"), default="auto",
                       help="auto: refuse a continuous target; classification: its values are "
                            "the classes")
    train.add_argument("--hidden", type=_parse_hidden, default=[256],
                       help="hidden layer sizes, e.g. 256 or 256,128 (default 256)")
    train.add_argument("--activation", default="relu",
                       choices=[a for a in core.ACTIVATIONS if a != "identity"])
    train.add_argument("--solver", default="adam", choices=SOLVERS)
    train.add_argument("--weight-decay", type=float, default=0.01, help="AdamW's decay "
                       "(--solver adamw; default 0.01)")
    train.add_argument("--lr", type=_positive_real, default=2e-3,
                       help="learning rate (default 2e-3)")
    train.add_argument("--batch-size", type=_positive, default=128)
    train.add_argument("--epochs", type=_positive, default=10)
    train.add_argument("--threads", type=_positive, help="fastmlp threads (default: physical cores)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--validation-split", type=_fraction, default=0.0,
                       help="fraction of the training data held out and scored every epoch")
    train.add_argument("--norm", choices=["layer", "batch"], default=None,
                       help="LayerNorm or BatchNorm before every hidden activation")
    train.add_argument("--init", choices=["auto", "he", "glorot", "sklearn"], default="auto",
                       help="weight initialization (default auto: He before ReLU, else Glorot)")
    train.add_argument("--clip", type=_positive_real, metavar="MAX_NORM",
                       help="clip the gradient's global norm to MAX_NORM")
    train.add_argument("--diagnose", action="store_true",
                       help="print per-layer diagnostics (gradient and weight norms, update "
                       "ratio, dead or saturated units, activation statistics)")
    train.add_argument("--plot", metavar="FILE.png", help="with --diagnose: plot the loss and "
                       "per-layer gradient norms (matplotlib)")
    train.add_argument("--save", metavar="PATH", help="write a fitted fastmlp.MLPClassifier "
                       "(.safetensors): fastmlp.load(PATH).predict gives labels")
    train.add_argument("--profile", action="store_true", help="print the kernel profile")
    train.add_argument("--quiet", action="store_true", help="print the summary only")
    train.set_defaults(run=cmd_train)

    bench_cmd = sub.add_parser("bench", help="every kernel and a training step against NumPy")
    bench_cmd.add_argument("--quick", action="store_true", help="short timings (noisier)")
    bench_cmd.add_argument("--threads", type=_positive, help="fastmlp threads (default: physical cores)")
    bench_cmd.add_argument("--json", metavar="FILE", help="write results and context as JSON")
    bench_cmd.add_argument("--plot", metavar="FILE.png", help="bar chart of speedups (matplotlib)")
    bench_cmd.set_defaults(run=cmd_bench)
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except (datasets.DatasetError, FileNotFoundError) as e:
        raise SystemExit(f"fastmlp {args.command}: {e}") from None
    except distributed.DistributedError as e:
        raise SystemExit(f"fastmlp {args.command}: {e}") from None
    except FloatingPointError as e:
        raise SystemExit(f"fastmlp {args.command}: training diverged ({e}); try a lower --lr")\
            from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except BrokenPipeError:
        # the reader of our output (`| head`) left: end quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
