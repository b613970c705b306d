"""scikit-learn compatible MLPClassifier and MLPRegressor trained by fastmlp's kernels.

Parameters and attributes mean what they mean in scikit-learn's ``sklearn.neural_network``
estimators (same names, defaults, formulas, solvers, errors and warnings), plus:
``dropout``, ``weight_decay`` (AdamW), ``rho`` (RMSProp), ``class_weight``, ``n_threads``,
``callback``, schedules for every solver (``learning_rate``), and an explicit validation set
(``fit(..., X_val=, y_val=)``).

Computation is float32: X (any float or int dtype) and regression targets are converted to
float32 C-contiguous arrays before training and prediction; predictions are float32. Values too
large for float32 become inf, and training then stops with scikit-learn's error for
non-finite weights (``NonFiniteWeightsError``, a ValueError).

solver="lbfgs" runs SciPy's L-BFGS-B on scikit-learn's objective (data loss + L2 penalty over the
whole training set), evaluated natively (``TrainStep.loss_and_grad``: chunks of rows, float64
accumulation). SciPy's iterates are float64 and are rounded to float32 for each evaluation, so
the objective it sees is flat below float32's resolution: where scikit-learn's float64 lbfgs keeps
shaving the last digits of the loss, fastmlp's may end earlier with SciPy's "ABNORMAL" line-search
status (a ConvergenceWarning) at a loss equal to scikit-learn's to about float32 precision.
Weights are initialised as scikit-learn does (uniform Glorot variant, ``init="sklearn"`` of
``fastmlp.model.init_params``), so a drop-in replacement starts from the same distribution; given
the same initial weights and batches, the weights and loss curve match scikit-learn's to float32
rounding (tests/estimators/test_sklearn_trajectory.py).

``comm`` (an mpi4py communicator of several ranks) trains data-parallel (fastmlp.distributed):
every rank calls fit with the same data and takes its share of every batch; the ranks sum
their gradients in one allreduce per step and end with the same model, the same loss_curve_,
validation scores and n_iter_. Only rank 0 writes files (save). A comm of one rank is serial.

``to_onnx()`` exports a fitted estimator to ONNX (fastmlp.estimators.onnx_export: onnx's
graph of what predict / predict_proba compute); ``register_skl2onnx()`` teaches skl2onnx the same.

scikit-learn is required by this module (``pip install "fastmlp[sklearn]"``); the kernels and
the model API work without it.
"""
import math
import time
import warnings
import zlib
from numbers import Integral, Real

import numpy as np
from threadpoolctl import threadpool_limits

try:
    import scipy.optimize
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, is_classifier
    from sklearn.exceptions import ConvergenceWarning, DataConversionWarning
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import LabelBinarizer
    from sklearn.utils import check_random_state
    from sklearn.utils.class_weight import compute_sample_weight
    from sklearn.utils._param_validation import (Interval, InvalidParameterError, Options,
                                                 StrOptions)
    from sklearn.utils.metaestimators import available_if
    from sklearn.utils.multiclass import (_check_partial_fit_first_call,
                                          check_classification_targets, type_of_target,
                                          unique_labels)
    from sklearn.utils.optimize import _check_optimize_result
    from sklearn.utils.validation import (_check_sample_weight, check_is_fitted, column_or_1d,
                                          validate_data)
except ImportError as e:  # pragma: no cover - exercised only without scikit-learn
    raise ImportError("fastmlp.MLPClassifier and MLPRegressor need scikit-learn >= 1.6: "
                      "pip install 'fastmlp[sklearn]' (or pip install scikit-learn)") from e

from .. import distributed, io
from ..core import (ACTIVATIONS, MAX_THREADS, TrainStep, batchnorm_forward, flat_buffer,
                    flat_params, layernorm_forward,
                    is_sparse, local_num_threads, matmul, sparse_matmul)
from ..model import init_params, norm_params, normalization_list, optim, running_stats
from ..model.diagnostics import Recorder
from . import onnx_export

__all__ = ["MLPClassifier", "MLPRegressor", "NonFiniteWeightsError", "register_skl2onnx"]

# solver -> TrainStep's optimizer (lbfgs: none, the full-batch loss and gradient)
SOLVERS = {"sgd": "sgd", "adam": "adam", "adamw": "adam", "rmsprop": "rmsprop", "lbfgs": None}
SCHEDULES = ("constant", "invscaling", "adaptive", "cosine")
LBFGS_CHUNK = 4096    # rows per native forward / backward of the full-batch objective


class NonFiniteWeightsError(ValueError, FloatingPointError):
    """Training produced non-finite weights (scikit-learn raises a ValueError with this
    message; this is also a FloatingPointError, what fastmlp raised before)."""

    def __init__(self, detail=""):
        super().__init__("Solver produced non-finite parameter weights. The input data may "
                         "contain large values and need to be preprocessed." + detail)


def _float32(X):
    """X (validated, float64 or float32; dense, CSR or CSC) as the kernels take it: a float32
    C-contiguous array, or a CSR matrix with float32 data (the first layer's products then run
    on it natively: fastmlp.core.sparse_matmul). Values beyond float32's range become inf
    (training then stops with NonFiniteWeightsError)."""
    with np.errstate(over="ignore"):
        if is_sparse(X):
            X = X.tocsr()
            return X if X.dtype == np.float32 else X.astype(np.float32)
        return np.ascontiguousarray(X, dtype=np.float32)


def _fingerprint(X, targets, sample_weight):
    """A cheap summary of a fit's data (shapes and checksums of X's sampled rows, of every
    target and weight), compared across ranks by a data-parallel fit."""
    if hasattr(X, "tocsr"):
        X = X.tocsr()
        sampled = [X.data, X.indices, X.indptr]
    else:
        sampled = [np.ascontiguousarray(X[::max(1, X.shape[0] // 256)])]
    arrays = sampled + [np.ascontiguousarray(targets)] + \
        ([] if sample_weight is None else [np.ascontiguousarray(sample_weight)])
    crc = 0
    for a in arrays:
        crc = zlib.crc32(a.view(np.uint8).reshape(-1), crc)
    return (tuple(X.shape), tuple(np.shape(targets)), sample_weight is not None, crc)


def _stochastic(est):
    """partial_fit exists only for the stochastic solvers, as in scikit-learn."""
    if est.solver == "lbfgs":
        raise AttributeError(f"partial_fit is only available for stochastic optimizers. "
                             f"{est.solver} is not stochastic.")
    return True


class _BaseMLP(BaseEstimator):
    _loss = None   # TrainStep's loss (fastmlp.core.LOSSES), chosen per fit by the subclass

    # scikit-learn's constraints (InvalidParameterError, its messages) widened to fastmlp's
    # options; list-valued activation / dropout and finiteness are checked in _check_params.
    _parameter_constraints: dict = {
        "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
        "activation": [StrOptions(set(ACTIVATIONS)), "array-like"],
        "solver": [StrOptions(set(SOLVERS))],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "batch_size": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "learning_rate": [StrOptions(set(SCHEDULES)), callable],
        "learning_rate_init": [Interval(Real, 0, None, closed="neither")],
        "power_t": [Interval(Real, 0, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "shuffle": ["boolean"],
        "random_state": ["random_state"],
        "tol": [Interval(Real, 0, None, closed="left")],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        "momentum": [Interval(Real, 0, 1, closed="both")],
        "nesterovs_momentum": ["boolean"],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "beta_1": [Interval(Real, 0, 1, closed="left")],
        "beta_2": [Interval(Real, 0, 1, closed="left")],
        "epsilon": [Interval(Real, 0, None, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left"), Options(Real, {np.inf})],
        "max_fun": [Interval(Integral, 1, None, closed="left")],
        "dropout": [Interval(Real, 0, 1, closed="left"), "array-like"],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "rho": [Interval(Real, 0, 1, closed="left")],
        "n_threads": [None, Interval(Integral, 1, MAX_THREADS, closed="both")],
        "callback": [None, callable],
        "normalization": [None, StrOptions({"layer", "batch"}), "array-like"],
        "clip_grad_norm": [None, Interval(Real, 0, None, closed="neither")],
        "diagnostics": ["boolean"],
        "comm": "no_validation",
    }

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 dropout=0.0, weight_decay=0.0, rho=0.9, n_threads=None, callback=None,
                 normalization=None, clip_grad_norm=None, diagnostics=False, comm=None):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.dropout = dropout
        self.weight_decay = weight_decay
        self.rho = rho
        self.n_threads = n_threads
        self.callback = callback
        self.normalization = normalization
        self.clip_grad_norm = clip_grad_norm
        self.diagnostics = diagnostics
        self.comm = comm

    # ---- validation ------------------------------------------------------------------------

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags

    def _check_params(self):
        """scikit-learn's constraints (_parameter_constraints), then what they leave open:
        list-valued parameters, finiteness, bools where a number is due."""
        self._validate_params()

        def bad(name, expected):
            raise InvalidParameterError(f"The '{name}' parameter of {type(self).__name__} must "
                                        f"be {expected}. Got {getattr(self, name)!r} instead.")

        def is_int(v):
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        def is_real(v):
            return (isinstance(v, (int, float, np.integer, np.floating))
                    and not isinstance(v, bool) and math.isfinite(v))

        def listed(name, value):
            """A list-valued parameter's list (one per hidden layer), or bad()."""
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                bad(name, "a sequence, one per hidden layer")
            return list(value)

        sizes = self.hidden_layer_sizes
        sizes = listed("hidden_layer_sizes", sizes) if not is_int(sizes) else [sizes]
        if not sizes or not all(is_int(s) and s > 0 for s in sizes):
            bad("hidden_layer_sizes", "a positive int or a sequence of positive ints")
        acts = [self.activation] * len(sizes) if isinstance(self.activation, str) \
            else listed("activation", self.activation)
        if len(acts) != len(sizes) or not all(isinstance(a, str) and a in ACTIVATIONS
                                              for a in acts):
            bad("activation", f"one of {ACTIVATIONS} or a list of them, one per hidden "
                "layer")
        if not (self.batch_size == "auto" or (is_int(self.batch_size) and self.batch_size >= 1)):
            bad("batch_size", "'auto' or a positive int")
        if not (is_int(self.max_iter) and self.max_iter >= 1):
            bad("max_iter", "a positive int")
        for name, lo, hi in [("alpha", 0, math.inf), ("power_t", 0, math.inf),
                             ("tol", 0, math.inf), ("momentum", 0, 1), ("beta_1", 0, 1 - 1e-12),
                             ("beta_2", 0, 1 - 1e-12), ("rho", 0, 1 - 1e-12),
                             ("validation_fraction", 0, 1 - 1e-12),
                             ("weight_decay", 0, math.inf)]:
            v = getattr(self, name)
            if not (is_real(v) and lo <= v <= hi):
                bad(name, f"a finite number in [{lo}, {hi:.6g}]")
        for name in ("learning_rate_init", "epsilon"):
            v = getattr(self, name)
            if not (is_real(v) and v > 0):
                bad(name, "a finite number > 0")
        if not (self.n_iter_no_change == np.inf or (is_int(self.n_iter_no_change)
                                                    and self.n_iter_no_change >= 1)):
            bad("n_iter_no_change", "a positive int or numpy.inf")
        drop = [self.dropout] * len(sizes) if np.isscalar(self.dropout) \
            else listed("dropout", self.dropout)
        if len(drop) != len(sizes) or not all(is_real(p) and 0 <= p < 1 for p in drop):
            bad("dropout", "a rate in [0, 1) or one per hidden layer")
        if not (self.n_threads is None or (is_int(self.n_threads)
                                           and 1 <= self.n_threads <= MAX_THREADS)):
            bad("n_threads", f"None or an int in [1, {MAX_THREADS}]")
        rs = self.random_state
        if not (rs is None or (is_int(rs) and 0 <= rs < 2**32)
                or isinstance(rs, np.random.RandomState)):
            bad("random_state", "None, an int in [0, 2**32) or a numpy.random.RandomState")
        if self.clip_grad_norm is not None and not is_real(self.clip_grad_norm):
            bad("clip_grad_norm", "None or a finite number > 0")
        try:
            self._norms = normalization_list(self.normalization, len(sizes))
        except (TypeError, ValueError):
            bad("normalization", "None, 'layer', 'batch' or a list of them, one per hidden layer")
        return [int(s) for s in sizes], acts, [float(p) for p in drop]

    def _validate_X(self, X, reset):
        return _float32(validate_data(self, X, reset=reset, dtype=(np.float64, np.float32),
                                      accept_sparse=["csr", "csc"]))

    # ---- training --------------------------------------------------------------------------

    def fit(self, X, y, sample_weight=None, *, X_val=None, y_val=None):
        """Train on X (n_samples, n_features) and y; returns self.

        sample_weight: (n_samples,) or None. X_val, y_val: an explicit validation set, scored
        after every epoch (validation_scores_); with early_stopping=True it replaces the split
        of validation_fraction of the training data.
        """
        return self._fit(X, y, sample_weight, incremental=False, X_val=X_val, y_val=y_val)

    def _comm(self):
        """comm when it has several ranks (data-parallel training), else None (a comm of size
        1 trains as one process)."""
        comm = self.comm
        if comm is None:
            return None
        if not (hasattr(comm, "Get_size") and hasattr(comm, "Allreduce")):
            raise InvalidParameterError(f"The 'comm' parameter of {type(self).__name__} must "
                                        f"be None or an mpi4py communicator, got {comm!r}.")
        return comm if comm.Get_size() > 1 else None

    def _fit(self, X, y, sample_weight, incremental, X_val=None, y_val=None):
        """fit / partial_fit: serial, or data-parallel over a comm of several ranks."""
        comm = self._comm()
        if comm is None:
            return self._fit_body(X, y, sample_weight, incremental, X_val, y_val, None)
        # every collective is reached by every rank or none (fastmlp.distributed, contract 3):
        # a rank whose input fails validation makes every rank raise
        with distributed.collective(comm):
            seed = check_random_state(self.random_state).randint(np.iinfo(np.int32).max)
        distributed.share_cores(distributed.node_ranks(comm))
        seed = comm.bcast(seed, root=0)
        with distributed.collective(comm):
            prepared = self._fit_body(X, y, sample_weight, incremental, X_val, y_val, seed)
        # every rank must pass the same data (each takes its share of every batch)
        mine = prepared[-1]
        prints = comm.allgather(mine)
        if any(p != prints[0] for p in prints):
            r = next(r for r, p in enumerate(prints) if p != prints[0])
            raise ValueError(f"data-parallel fit: every rank must pass the same X, y and "
                             f"sample_weight (rank {r}'s differ from rank 0's: {prints[r]} "
                             f"against {prints[0]})")
        return self._fit_run(*prepared[:-1], comm)

    def _fit_body(self, X, y, sample_weight, incremental, X_val, y_val, seed):
        """Validation and setup of a fit; then (serial, seed None) the training itself.
        With a seed (data-parallel) returns what _fit_run needs and a fingerprint of the data."""
        parallel = seed is not None
        sizes, acts, drop = self._check_params()
        first_pass = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)
        X, y = self._validate_input(X, y, incremental, reset=first_pass)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float32)
        sample_weight = self._class_weights(y, sample_weight)
        targets = self._encode(y)          # int32 labels (softmax) or float32 (n, n_outputs)
        n_outputs = self._n_outputs(targets)
        layer_units = [X.shape[1]] + sizes + [n_outputs]
        if not first_pass and [c.shape[0] for c in self.coefs_] + [n_outputs] != layer_units:
            raise ValueError(f"warm_start / partial_fit: the network has layers "
                             f"{[c.shape[0] for c in self.coefs_] + [self.n_outputs_]} but "
                             f"the parameters and data give {layer_units}")
        if seed is None:
            seed = check_random_state(self.random_state).randint(np.iinfo(np.int32).max)
        rng = np.random.default_rng(seed)
        if self.solver == "lbfgs" and any(drop):
            raise InvalidParameterError("dropout needs a stochastic solver: L-BFGS needs a "
                                        "deterministic objective")
        if first_pass:
            self._initialize(layer_units, acts, rng)
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        if parallel and "batch" in self._norms:
            raise InvalidParameterError("normalization='batch' cannot train data-parallel: "
                                        "each rank's statistics would be those of its shard "
                                        "(use 'layer')")
        if self.solver == "lbfgs":
            if X_val is not None:
                raise ValueError("X_val / y_val: solver='lbfgs' has no epochs to score them "
                                 "after; use a stochastic solver")
            if parallel:
                return ("lbfgs", acts, X, targets, sample_weight, _fingerprint(X, targets,
                                                                               sample_weight))
            with local_num_threads(self.n_threads):
                self._fit_lbfgs(acts, X, targets, sample_weight)
            self._check_finite()
            return self

        X_train, t_train, w_train = X, targets, sample_weight
        if X_val is not None:
            X_val = self._validate_X(X_val, reset=False)
            y_val = np.asarray(y_val)
        elif self.early_stopping:
            # scikit-learn stratifies on its encoded targets, and only with one output column
            # (binary classification): its split and its error messages are these
            stratify = targets.astype(bool) if is_classifier(self) and n_outputs == 1 \
                and self._loss == "sigmoid_cross_entropy" else None
            split = train_test_split(np.arange(X.shape[0]), random_state=seed,
                                     test_size=self.validation_fraction, stratify=stratify)
            tr, va = split
            if len(va) < 2:
                raise ValueError("The validation set is too small. Increase "
                                 "'validation_fraction' or the size of your dataset.")
            X_train, t_train = X[tr], targets[tr]
            w_train = None if sample_weight is None else sample_weight[tr]
            X_val, y_val = X[va], y[va]
        n = X_train.shape[0]
        if self.batch_size == "auto":
            batch = min(200, n)
        else:
            if self.batch_size > n:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is "
                              "going to be clipped")
            batch = int(np.clip(self.batch_size, 1, n))
        step = self._train_step(acts, drop, batch, seed, incremental)
        schedule = self._schedule(incremental, n)
        args = (step, schedule, X_train, t_train, w_train, X_val, y_val, batch, rng,
                incremental)
        if parallel:
            return ("epochs", *args, _fingerprint(X_train, t_train, w_train))
        with local_num_threads(self.n_threads):
            self._epochs(*args)
        self._check_finite()
        return self

    def _fit_run(self, kind, *args):
        """The training of a data-parallel fit, after _fit_body set it up on every rank."""
        *args, comm = args
        with local_num_threads(self.n_threads):
            if kind == "lbfgs":
                self._fit_lbfgs(*args, comm=comm)
                self._check_finite()
                return self
            step, rest = distributed.DistributedTrainStep(args[0], comm), args[1:]
            try:
                self._epochs(step, *rest)
            except Exception as e:
                if not isinstance(e, distributed.DistributedError):
                    step.fail(e)        # every rank stops (distributed, contract 3)
                raise
            step.close()
        self._check_finite()
        return self

    def _check_finite(self, detail=""):
        if not all(np.isfinite(p).all() for p in self.coefs_ + self.intercepts_
                   + getattr(self, "norm_params_", [])):
            raise NonFiniteWeightsError(detail)

    def _params(self):
        """[W0, b0, ..., gamma, beta, ...]: the fitted parameters as views of one flat buffer
        (gathered into one again, values kept, if they are not: unpickled, assigned)."""
        norm = list(getattr(self, "norm_params_", []))
        params = [p for pair in zip(self.coefs_, self.intercepts_) for p in pair] + norm
        if flat_buffer(params) is None:
            params = flat_params(params)
            L = len(self.coefs_)
            self.coefs_, self.intercepts_ = params[0:2 * L:2], params[1:2 * L:2]
            self.norm_params_ = params[2 * L:]
        return params

    def _norm_options(self):
        """TrainStep's normalization keywords for this fit."""
        norms = getattr(self, "_norms", None) or [None] * (len(self.coefs_) - 1)
        if not hasattr(self, "running_stats_"):
            self.running_stats_ = running_stats(
                [c.shape[0] for c in self.coefs_] + [self.n_outputs_], norms)
        # training moves them in place: unpickled (read-only, memory-mapped) ones are copied
        self.running_stats_ = [s if s.flags.writeable and s.flags.c_contiguous
                               and s.dtype == np.float32 else np.array(s, np.float32)
                               for s in self.running_stats_]
        return dict(normalization=norms, running_stats=self.running_stats_)

    def _fit_lbfgs(self, acts, X, targets, sample_weight, comm=None):
        """scikit-learn's lbfgs: SciPy's L-BFGS-B on the full-data objective (loss + L2),
        evaluated by TrainStep.loss_and_grad in float32 with float64 sums."""
        if "batch" in self._norms:
            raise InvalidParameterError("normalization='batch' needs a stochastic solver: "
                                        "L-BFGS needs a full-data objective (use 'layer')")
        step = TrainStep(self._params(), acts, self._loss, min(X.shape[0], LBFGS_CHUNK),
                         optimizer="sgd", momentum=0.0, alpha=self.alpha, per_output_grad=True,
                         **self._norm_options())
        if comm is not None:
            step = distributed.DistributedTrainStep(step, comm)
        flat = step.flat_params
        last = {"loss": np.nan}
        talk = self.verbose and (comm is None or comm.Get_rank() == 0)

        def objective(x):
            with np.errstate(over="ignore", invalid="ignore"):
                flat[...] = x
            try:
                loss, grad = step.loss_and_grad(X, targets, sample_weight)
            except FloatingPointError:
                loss, grad = np.inf, np.zeros(step.n_params)   # L-BFGS-B backs off
            last["loss"] = loss
            return loss, grad

        def iteration_done(xk):
            # the line search's last evaluation is at the accepted point
            self.loss_curve_.append(float(last["loss"]))
            if talk:
                print(f"Iteration {len(self.loss_curve_)}, loss = {last['loss']:.8f}")

        self.loss_curve_ = []
        # L-BFGS-B's own work is vector operations over n_params, on SciPy's BLAS: with BLAS
        # threads of its own it competes with fastmlp's OpenMP threads for the same cores
        # between evaluations (digits, 2 threads: 0.55 s a fit against 0.07 s with one BLAS
        # thread; benchmarks/results/lbfgs_vs_sklearn.md)
        with threadpool_limits(limits=1, user_api="blas"):
            result = scipy.optimize.minimize(
                objective, flat.astype(np.float64), method="L-BFGS-B", jac=True,
                callback=iteration_done,
                options={"maxfun": self.max_fun, "maxiter": self.max_iter, "gtol": self.tol})
        self.n_iter_ = _check_optimize_result("lbfgs", result, self.max_iter)
        self.loss_ = float(result.fun)
        with np.errstate(over="ignore", invalid="ignore"):
            flat[...] = result.x

    def _initialize(self, layer_units, acts, rng):
        L = len(layer_units) - 1
        params = flat_params(init_params(layer_units, acts + ["identity"], "sklearn", rng)
                             + norm_params(layer_units, self._norms))
        self.coefs_, self.intercepts_ = params[0:2 * L:2], params[1:2 * L:2]
        self.norm_params_ = params[2 * L:]
        self.running_stats_ = running_stats(layer_units, self._norms)
        self.history_ = [] if self.diagnostics else None
        self.n_iter_, self.t_ = 0, 0
        self.n_layers_ = len(layer_units)
        self.n_outputs_ = layer_units[-1]
        self.out_activation_ = {"softmax_cross_entropy": "softmax",
                                "sigmoid_cross_entropy": "logistic",
                                "mse_loss": "identity", "poisson_loss": "exp"}[self._loss]
        self.loss_curve_ = []
        self._no_improvement_count = 0
        self.validation_scores_ = [] if self.early_stopping else None
        self.best_validation_score_ = -np.inf if self.early_stopping else None
        self.best_loss_ = None if self.early_stopping else np.inf
        # as scikit-learn: early stopping restores these if no epoch improves on them
        self._best_coefs = [c.copy() for c in self.coefs_]
        self._best_intercepts = [b.copy() for b in self.intercepts_]
        self._best_norm = [p.copy() for p in self.norm_params_ + self.running_stats_]
        for name in ("_step", "_plateau"):
            self.__dict__.pop(name, None)

    def _train_step(self, acts, drop, batch, seed, incremental):
        """The TrainStep over coefs_ / intercepts_: kept by partial_fit (optimizer state
        included), rebuilt by fit (scikit-learn resets the optimizer on every fit)."""
        # The TrainStep updates these arrays in place, as views of one flat buffer (_params)
        params = self._params()
        old = getattr(self, "_step", None)
        if incremental and old is not None and old.max_batch >= batch and all(
                a is b for a, b in zip(old.params, params)):
            return old
        step = TrainStep(
            params, acts, self._loss, batch, optimizer=SOLVERS[self.solver],
            momentum=self.momentum, nesterov=self.nesterovs_momentum, beta1=self.beta_1,
            beta2=self.beta_2, rho=self.rho, eps=self.epsilon,
            weight_decay=self.weight_decay if self.solver == "adamw" else 0.0, alpha=self.alpha,
            dropout=drop, seed=seed, per_output_grad=True, nonfinite="continue",
            clip_grad_norm=self.clip_grad_norm or 0.0, measure_grad_norm=self.diagnostics,
            **self._norm_options())
        if incremental and old is not None and len(old.state) == len(step.state):
            for dst, src in zip(step.state, old.state):
                dst[...] = src
            step.t = old.t
        self._step = step
        return step

    def _schedule(self, incremental, n):
        """The learning-rate schedule, called with t_ (samples seen) at each epoch's start.

        fit (warm_start included) starts the schedule afresh, as scikit-learn starts a fresh
        optimizer: "invscaling" takes learning_rate_init for the first epoch of every fit, then
        learning_rate_init / (t_ + 1) ** power_t with t_ counting every sample seen so far;
        "cosine" spans this fit's max_iter epochs; "adaptive" restarts at learning_rate_init but
        continues the improvement count of the previous fit. partial_fit continues the schedule.
        """
        lr = self.learning_rate
        t0 = self.t_
        if callable(lr):
            return lr
        if lr == "invscaling":
            inv = optim.InverseScaling(self.learning_rate_init, self.power_t)
            if incremental or t0 == 0:
                return inv
            return lambda t: self.learning_rate_init if t == t0 else inv(t)
        if lr == "cosine":
            cos = optim.CosineWarmup(self.learning_rate_init, total=self.max_iter * n)
            if incremental or t0 == 0:
                return cos
            return lambda t: cos(t - t0)
        if lr == "adaptive":
            # kept across partial_fit calls, as scikit-learn keeps its optimizer's rate
            if not (incremental and hasattr(self, "_plateau")):
                self._plateau = optim.ReduceOnPlateau(
                    self.learning_rate_init, patience=self.n_iter_no_change, tol=self.tol)
                # scikit-learn keeps best_loss_ / the count across warm-started fits
                best = self.best_validation_score_ if self.early_stopping else self.best_loss_
                if best is not None:
                    self._plateau.best = -best if self.early_stopping else best
                self._plateau.bad = self._no_improvement_count
            return self._plateau
        return optim.Constant(self.learning_rate_init)

    def _epochs(self, step, schedule, X, targets, w, X_val, y_val, batch, rng, incremental):
        n = X.shape[0]
        order = np.arange(n)
        adaptive = isinstance(schedule, optim.ReduceOnPlateau)
        if X_val is not None and self.validation_scores_ is None:
            self.validation_scores_ = []
        self.n_iter_ = 0     # as scikit-learn: epochs of this call (t_ keeps counting)
        recorder = None
        if self.diagnostics:
            recorder = Recorder(step)
            if getattr(self, "history_", None) is None:
                self.history_ = []
            recorder.records = self.history_
        last_start = (n - 1) // batch * batch
        talk = self.verbose and getattr(step, "rank", 0) == 0
        try:
            for _ in range(1 if incremental else self.max_iter):
                lr = float(schedule(self.t_))
                t0, total = time.perf_counter(), 0.0
                if self.shuffle:
                    rng.shuffle(order)
                # a non-finite loss does not stop the epoch (TrainStep nonfinite="continue"):
                # as in scikit-learn, early stopping may still restore the best weights
                for start in range(0, n, batch):
                    idx = order[start:start + batch]
                    if recorder is not None and start == last_start:
                        recorder.before_update()
                    total += step.run(X, targets, w, lr=lr, index=idx) * len(idx)
                seconds = time.perf_counter() - t0
                self.n_iter_ += 1
                self.t_ += n
                self.loss_ = total / n
                self.loss_curve_.append(self.loss_)
                diag = recorder.record(len(self.loss_curve_), self.loss_) \
                    if recorder is not None else None
                if not math.isfinite(self.loss_) and not self.early_stopping:
                    # scikit-learn would train on to max_iter and raise this at the end
                    self._check_finite(f" The loss became {self.loss_} at epoch "
                                       f"{self.n_iter_}: a lower learning_rate_init may help.")
                score = None
                if X_val is not None:
                    score = self._score_internal(X_val, y_val)
                    self.validation_scores_.append(score)
                if talk:
                    val = "" if score is None else f", validation score = {score:.6f}"
                    print(f"Iteration {self.n_iter_}, loss = {self.loss_:.8f}{val}, "
                          f"{n / seconds:,.0f} samples/s")
                stop = self._update_no_improvement_count(score)
                if adaptive:
                    schedule.report(-score if self.early_stopping else self.loss_)
                    if stop and not schedule.exhausted:
                        self._no_improvement_count = 0   # the rate was reduced: count afresh
                    stop = schedule.exhausted
                if self.callback is not None and self.callback(dict(
                        epoch=self.n_iter_, loss=self.loss_, validation_score=score, lr=lr,
                        samples_per_second=n / seconds, estimator=self, diagnostics=diag)):
                    break
                if stop:
                    if talk:
                        what = ("Validation score" if self.early_stopping else "Training loss")
                        print(f"{what} did not improve more than tol={self.tol:f} for "
                              f"{self.n_iter_no_change} consecutive epochs. Stopping.")
                    break
                if not incremental and self.n_iter_ == self.max_iter:
                    warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter})"
                                  " reached and the optimization hasn't converged yet.",
                                  ConvergenceWarning)
        except KeyboardInterrupt:
            if hasattr(step, "interrupted") and not step.interrupted:
                try:        # data-parallel: stop every rank (fastmlp.distributed, contract 3)
                    step.fail(KeyboardInterrupt())
                except KeyboardInterrupt:
                    pass
            warnings.warn("Training interrupted by user: the model keeps the weights reached "
                          "so far.")
        if self.early_stopping:
            for p, best in zip(self.coefs_ + self.intercepts_ + self.norm_params_
                               + self.running_stats_,
                               self._best_coefs + self._best_intercepts + self._best_norm):
                p[...] = best

    def _update_no_improvement_count(self, score):
        """scikit-learn's stopping rule; returns True when training should stop. As in
        scikit-learn the count is not reset by a stop, so a warm-started fit after one stops
        after its first epoch unless that epoch improves."""
        if self.early_stopping:
            if score < self.best_validation_score_ + self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                self._best_coefs = [c.copy() for c in self.coefs_]
                self._best_intercepts = [b.copy() for b in self.intercepts_]
                self._best_norm = [p.copy() for p in self.norm_params_ + self.running_stats_]
        else:
            if self.loss_curve_[-1] > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            self.best_loss_ = min(self.best_loss_, self.loss_curve_[-1])
        return self._no_improvement_count > self.n_iter_no_change

    # ---- prediction ------------------------------------------------------------------------

    def _forward(self, X):
        """X float32 (n, n_features) -> output layer (n, n_outputs) after out_activation_:
        one fused GEMM + bias + activation per layer (GEMM + bias, then the norm fused with
        the activation, for a normalized layer; BatchNorm with its running statistics)."""
        acts = [self.activation] * (len(self.coefs_) - 1) if isinstance(self.activation, str) \
            else list(self.activation)
        norms = normalization_list(self.normalization, len(self.coefs_) - 1)
        gammas = iter(getattr(self, "norm_params_", [])[0::2])
        betas = iter(getattr(self, "norm_params_", [])[1::2])
        stats = iter(getattr(self, "running_stats_", []))
        a = X
        with local_num_threads(self.n_threads):
            for l, (W, b) in enumerate(zip(self.coefs_, self.intercepts_)):
                last = l == len(self.coefs_) - 1
                act = ("logistic" if self.out_activation_ == "logistic" else None) if last \
                    else acts[l]
                norm = None if last else norms[l]
                a = (sparse_matmul if l == 0 and is_sparse(a) else matmul)(
                    a, W, bias=b, activation=None if norm else act)
                if norm == "layer":
                    a, _, _ = layernorm_forward(a, next(gammas), next(betas), activation=act,
                                                out=a)
                elif norm == "batch":
                    a, _, _ = batchnorm_forward(a, next(gammas), next(betas), training=False,
                                                running_mean=next(stats),
                                                running_var=next(stats), activation=act, out=a)
        if self.out_activation_ == "exp":
            np.exp(a, out=a)
        elif self.out_activation_ == "softmax":
            a -= a.max(axis=1, keepdims=True)
            np.exp(a, out=a)
            a /= a.sum(axis=1, keepdims=True)
        return a

    # ---- model files (fastmlp.io) -----------------------------------------------------------

    # Fitted attributes a file keeps: name -> allowed JSON types
    _FILE_ATTRS = {"n_iter_": (int,), "t_": (int,), "loss_": (float, int), "loss_curve_": (list,),
                   "best_loss_": (float, int, type(None)),
                   "validation_scores_": (list, type(None)),
                   "best_validation_score_": (float, int, type(None)), "n_features_in_": (int,),
                   "n_outputs_": (int,), "n_layers_": (int,),
                   # a DataFrame's column names: predict then checks them, as after pickle
                   "feature_names_in_": (list,)}

    def save(self, path):
        """Write the fitted estimator to a .safetensors file (fastmlp.load reads it back).
        Data-parallel (comm with several ranks): only rank 0 writes (every rank holds the
        same model)."""
        if not hasattr(self, "coefs_"):
            raise TypeError(f"save needs a fastmlp.MLP or a fitted fastmlp estimator, got an "
                            f"unfitted {type(self).__name__}")
        if self._comm() is not None and self.comm.Get_rank() != 0:
            return
        acts = self.activation if not isinstance(self.activation, str) \
            else [self.activation] * (len(self.coefs_) - 1)
        hyper = {}
        for name, value in self.get_params(deep=False).items():
            if name == "callback":
                continue     # code, not data
            try:
                hyper[name] = io.json_value(value)
            except TypeError:
                pass         # callbacks, RandomState objects, schedule objects: not data
        attrs = {k: io.json_value(getattr(self, k) if k != "feature_names_in_" else
                                  [str(c) for c in self.feature_names_in_])
                 for k in self._FILE_ATTRS if hasattr(self, k)}
        norms = normalization_list(self.normalization, len(self.coefs_) - 1)
        tensors, gb, rs = {}, iter(getattr(self, "norm_params_", [])), \
            iter(getattr(self, "running_stats_", []))
        for l, kind in enumerate(norms):
            for what in io.NORM_TENSORS.get(kind, ()):
                tensors[f"norm.{l}.{what}"] = next(gb if what in ("gamma", "beta") else rs)
        io.write_model(path, self._FILE_KIND, self.coefs_, self.intercepts_, acts,
                       self.out_activation_,
                       dict(hyperparameters=hyper, attributes=attrs, normalization=norms,
                            **self._file_extra()), norm_tensors=tensors)

    def _file_extra(self):
        """What this kind adds to a file's metadata."""
        return {}

    def to_onnx(self, path=None):
        """The fitted network as an ONNX model (onnx.ModelProto), written to path too when
        given: input X float32 (n, n_features); outputs label and probabilities (classifier)
        or variable (regressor), what predict / predict_proba give. Needs the onnx package
        (pip install "fastmlp[onnx]"); see fastmlp.estimators.onnx_export.to_onnx."""
        return onnx_export.to_onnx(self, path)

    @classmethod
    def _from_file(cls, f):
        """The estimator a checked io.ModelFile holds."""
        hyper, attrs = f.doc.get("hyperparameters"), f.doc.get("attributes")
        f.expect(isinstance(hyper, dict) and isinstance(attrs, dict),
                 "hyperparameters and attributes must be JSON objects")
        valid = cls().get_params(deep=False)
        for name, value in hyper.items():
            f.expect(name in valid and name != "callback", f"unknown hyperparameter {name!r}")
            f.expect(isinstance(value, (bool, int, float, str, list, type(None))),
                     f"hyperparameter {name!r} has a non-data value")
        if isinstance(hyper.get("hidden_layer_sizes"), list):
            hyper["hidden_layer_sizes"] = tuple(hyper["hidden_layer_sizes"])  # JSON has no tuples
        est = cls(**hyper)
        try:
            _, acts, _ = est._check_params()
        except (TypeError, ValueError) as e:
            f.fail(f"invalid hyperparameters: {e}")
        sizes = f.layer_sizes
        f.expect(list(np.atleast_1d(est.hidden_layer_sizes)) == sizes[1:-1],
                 "hidden_layer_sizes does not match layer_sizes")
        # predict uses the hyperparameter; the file's layer list must say the same
        f.expect(acts == f.activations, f"the activation hyperparameter {est.activation!r} "
                                        f"contradicts the layers' activations {f.activations}")
        for name, value in attrs.items():
            f.expect(name in cls._FILE_ATTRS and isinstance(value, cls._FILE_ATTRS[name]),
                     f"bad attribute {name!r}: {value!r}")
            setattr(est, name, value)
        f.expect(attrs.get("n_features_in_") == sizes[0] and attrs.get("n_outputs_") == sizes[-1],
                 "n_features_in_ / n_outputs_ do not match layer_sizes")
        if "feature_names_in_" in attrs:
            names = attrs["feature_names_in_"]
            f.expect(len(names) == sizes[0] and all(isinstance(c, str) for c in names)
                     and len(set(names)) == len(names),
                     "feature_names_in_ must be n_features_in_ distinct strings")
            est.feature_names_in_ = np.asarray(names, dtype=object)
        est.coefs_, est.intercepts_, est.out_activation_ = f.coefs, f.intercepts, f.out_activation
        norms = f.doc.get("normalization", [None] * (len(sizes) - 2))
        f.expect(norms == normalization_list(est.normalization, len(sizes) - 2),
                 f"the normalization hyperparameter {est.normalization!r} contradicts the "
                 f"layers' normalization {norms}")
        est.norm_params_ = [f.norms[f"norm.{l}.{w}"] for l, k in enumerate(norms) if k
                            for w in ("gamma", "beta")]
        est.running_stats_ = [f.norms[f"norm.{l}.{w}"] for l, k in enumerate(norms)
                              if k == "batch" for w in ("running_mean", "running_var")]
        est._read_extra(f)
        return est

    def _read_extra(self, f):
        """Check and set what this kind added to the file (_file_extra)."""


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier (scikit-learn's MLPClassifier API, fastmlp kernels).

    Binary and multi-label targets train a logistic output with sigmoid cross-entropy;
    multi-class targets a softmax output with cross-entropy. class_weight: None, "balanced" or
    {class: weight}, multiplied into sample_weight. See the module docstring for the rest.
    """

    _FILE_KIND = "MLPClassifier"     # what a saved file says it holds (subclasses too)
    _parameter_constraints: dict = {
        **_BaseMLP._parameter_constraints,
        "class_weight": [None, dict, StrOptions({"balanced"})],
    }

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 dropout=0.0, weight_decay=0.0, rho=0.9, n_threads=None, callback=None,
                 normalization=None, clip_grad_norm=None, diagnostics=False, class_weight=None,
                 comm=None):
        super().__init__(
            hidden_layer_sizes, activation, solver=solver, alpha=alpha, batch_size=batch_size,
            learning_rate=learning_rate, learning_rate_init=learning_rate_init, power_t=power_t,
            max_iter=max_iter, shuffle=shuffle, random_state=random_state, tol=tol,
            verbose=verbose, warm_start=warm_start, momentum=momentum,
            nesterovs_momentum=nesterovs_momentum, early_stopping=early_stopping,
            validation_fraction=validation_fraction, beta_1=beta_1, beta_2=beta_2,
            epsilon=epsilon, n_iter_no_change=n_iter_no_change, max_fun=max_fun,
            dropout=dropout, weight_decay=weight_decay, rho=rho, n_threads=n_threads,
            callback=callback, normalization=normalization, clip_grad_norm=clip_grad_norm,
            diagnostics=diagnostics, comm=comm)
        self.class_weight = class_weight

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, reset=reset, dtype=(np.float64, np.float32),
                             multi_output=True, accept_sparse=["csr", "csc"])
        X = _float32(X)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        # The same class bookkeeping as scikit-learn (fit / warm_start / partial_fit).
        if not hasattr(self, "classes_") or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer().fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError(f"warm_start can only be used where `y` has the same "
                                     f"classes as in the previous call to fit. Previously got "
                                     f"{self.classes_}, `y` has {classes}")
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` has "
                                 f"{self.classes_}. 'y' has {classes}.")
        self._loss = ("softmax_cross_entropy" if self._label_binarizer.y_type_ == "multiclass"
                      else "sigmoid_cross_entropy")
        return X, y

    def _class_weights(self, y, sample_weight):
        if self.class_weight is None:
            return sample_weight
        cw = compute_sample_weight(self.class_weight, y).astype(np.float32)
        return cw if sample_weight is None else cw * sample_weight

    def _encode(self, y):
        onehot = self._label_binarizer.transform(y)
        if self._loss == "softmax_cross_entropy":
            return np.ascontiguousarray(onehot.argmax(axis=1), dtype=np.int32)
        return np.ascontiguousarray(onehot, dtype=np.float32)

    def _n_outputs(self, targets):
        return len(self.classes_) if self._loss == "softmax_cross_entropy" else targets.shape[1]

    @available_if(_stochastic)
    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over (X, y), keeping the weights and the optimizer state between calls.
        classes: every class (for multi-label y, every label column), required on the first
        call (as in scikit-learn). Only for the stochastic solvers."""
        if _check_partial_fit_first_call(self, classes):
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y if type_of_target(y).startswith("multilabel")
                                      else classes)
        return self._fit(X, y, sample_weight, incremental=True)

    def _score_internal(self, X, y):
        return accuracy_score(y, self._predict(X))

    def _predict(self, X):
        out = self._forward(X)
        if self.n_outputs_ == 1:
            out = out.ravel()
        return self._label_binarizer.inverse_transform(out)

    def predict(self, X):
        """Predicted classes (n_samples,), or (n_samples, n_classes) indicators (multi-label)."""
        check_is_fitted(self)
        return self._predict(self._validate_X(X, reset=False))

    def predict_proba(self, X):
        """Class probabilities (n_samples, n_classes), in the order of classes_."""
        check_is_fitted(self)
        out = self._forward(self._validate_X(X, reset=False))
        if self.n_outputs_ == 1:
            out = out.ravel()
            return np.vstack([1 - out, out]).T
        return out

    def predict_log_proba(self, X):
        """log(predict_proba(X))."""
        p = self.predict_proba(X)
        return np.log(p, out=p)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags

    def _file_extra(self):
        return io.classes_field(self.classes_, self._label_binarizer.y_type_)

    def _read_extra(self, f):
        classes, y_type = io.read_classes(f)
        n_out = len(classes) if y_type != "binary" else 1
        out_act = f.out_activation
        f.expect(len(classes) >= 1 and n_out == f.layer_sizes[-1] and
                 out_act == ("softmax" if y_type == "multiclass" else "logistic"),
                 f"{len(classes)} classes of type {y_type} do not match "
                 f"{f.layer_sizes[-1]} outputs with {out_act}")
        lb = LabelBinarizer()
        lb.classes_, lb.y_type_, lb.sparse_input_ = classes, y_type, False
        self._label_binarizer, self.classes_ = lb, classes
        self._loss = ("softmax_cross_entropy" if y_type == "multiclass"
                      else "sigmoid_cross_entropy")


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor (scikit-learn's MLPRegressor API, fastmlp kernels).

    loss: "squared_error" (identity output, half squared error) or "poisson" (log link: the
    output is exp of the last layer, half Poisson deviance; y must be >= 0). Targets
    (n_samples,) or (n_samples, n_outputs) are converted to float32. See the module docstring
    for the other parameters.

    With several outputs and squared_error, loss_curve_ is scikit-learn's loss (half the mean over
    samples and outputs) and the steps are scikit-learn's too: each output's own half mean
    squared error differentiated (n_outputs times the gradient of that mean), so the trajectory
    is scikit-learn's, lbfgs included (TrainStep per_output_grad)."""

    _FILE_KIND = "MLPRegressor"
    _loss = "mse_loss"
    _parameter_constraints: dict = {
        **_BaseMLP._parameter_constraints,
        "loss": [StrOptions({"squared_error", "poisson"})],
    }

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, loss="squared_error",
                 solver="adam", alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 dropout=0.0, weight_decay=0.0, rho=0.9, n_threads=None, callback=None,
                 normalization=None, clip_grad_norm=None, diagnostics=False, comm=None):
        super().__init__(
            hidden_layer_sizes, activation, solver=solver, alpha=alpha, batch_size=batch_size,
            learning_rate=learning_rate, learning_rate_init=learning_rate_init, power_t=power_t,
            max_iter=max_iter, shuffle=shuffle, random_state=random_state, tol=tol,
            verbose=verbose, warm_start=warm_start, momentum=momentum,
            nesterovs_momentum=nesterovs_momentum, early_stopping=early_stopping,
            validation_fraction=validation_fraction, beta_1=beta_1, beta_2=beta_2,
            epsilon=epsilon, n_iter_no_change=n_iter_no_change, max_fun=max_fun,
            dropout=dropout, weight_decay=weight_decay, rho=rho, n_threads=n_threads,
            callback=callback, normalization=normalization, clip_grad_norm=clip_grad_norm,
            diagnostics=diagnostics, comm=comm)
        self.loss = loss

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, reset=reset, dtype=(np.float64, np.float32),
                             multi_output=True, y_numeric=True, accept_sparse=["csr", "csc"])
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        self._loss = "poisson_loss" if self.loss == "poisson" else "mse_loss"
        if self._loss == "poisson_loss" and (np.asarray(y) < 0).any():
            raise ValueError("loss='poisson' needs y >= 0 (counts or rates); some value(s) of y "
                             "are negative")
        return _float32(X), y

    def _class_weights(self, y, sample_weight):
        return sample_weight

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.positive_only = self.loss == "poisson"
        return tags

    def _read_extra(self, f):
        want = "exp" if self.loss == "poisson" else "identity"
        f.expect(f.out_activation == want, f"a regressor with loss={self.loss!r} has a {want} "
                                           f"output, the file says {f.out_activation!r}")
        self._loss = "poisson_loss" if self.loss == "poisson" else "mse_loss"

    def _encode(self, y):
        return np.ascontiguousarray(y.reshape(len(y), -1), dtype=np.float32)

    def _n_outputs(self, targets):
        return targets.shape[1]

    @available_if(_stochastic)
    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over (X, y), keeping the weights and the optimizer state between calls.
        Only for the stochastic solvers."""
        return self._fit(X, y, sample_weight, incremental=True)

    def _score_internal(self, X, y):
        pred = self._predict(X)
        return r2_score(y, pred) if np.isfinite(pred).all() else np.nan

    def _predict(self, X):
        out = self._forward(X)
        return out.ravel() if out.shape[1] == 1 else out

    def predict(self, X):
        """Predictions (n_samples,) or (n_samples, n_outputs), float32."""
        check_is_fitted(self)
        return self._predict(self._validate_X(X, reset=False))


def register_skl2onnx():
    """Let skl2onnx convert MLPClassifier and MLPRegressor (alone or in a Pipeline):
    skl2onnx.to_onnx(est, X[:1]) then gives to_onnx's graph, without ZipMap (a float64 X[:1]
    gives a float64 input, rounded to float32 in the graph). Needs skl2onnx."""
    onnx_export.register_skl2onnx_converters(MLPClassifier, MLPRegressor)
