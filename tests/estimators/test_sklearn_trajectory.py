"""fastmlp's estimators run scikit-learn's training algorithm: the same trajectory, to float32.

Each test starts a scikit-learn estimator and a fastmlp one from the same initial weights
(``fastmlp.model.init_params(..., "sklearn")``), feeds both the same minibatches (``shuffle=False``,
``batch_size`` dividing ``n_samples``: 256 samples, 20 features, batches of 64) and trains both for
3 epochs (12 updates) with the L2 penalty on (``alpha=0.5``, so the penalty is a large part of
every gradient) and fresh optimizers on both sides. Then ``coefs_``, ``intercepts_`` and
``loss_curve_`` must agree.

How the initial weights get in: a first ``fit(max_iter=1, warm_start=True)`` builds every fitted
attribute, the weights are overwritten in place, and a second warm-started ``fit`` trains from
them. Both libraries start a fresh optimizer on every ``fit`` (warm_start keeps the weights, not the
optimizer state), so the comparison is fresh Adam / SGD against fresh Adam / SGD. ``t_`` carries
the first fit's 256 samples on both sides, which is what the "invscaling" case checks (the first
epoch of a warm-started fit restarts at ``learning_rate_init``).

Tolerance (``WEIGHT_TOL``: ``atol = rtol = 2e-5``; ``LOSS_RTOL = 1e-5``). Both sides compute in
float32 (scikit-learn keeps float32 for float32 input) but sum in different orders (OpenBLAS
against fastmlp's blocked FMA kernels, for each ISA path) and order the optimizer arithmetic
differently, so results differ by rounding only. With u = 2^-24 = 6e-8: every update rounds
p + dp (<= 1 ulp, u |p|, on each side); a gradient entry is a sum of K <= 64 products, whose
error is at most K u = 3.8e-6 times the sum of the absolute terms (Higham's gamma_K); SGD turns it
into lr (<= 0.5) times that, momentum 0.9 accumulates it up to 1 / (1 - 0.9) = 10 times, and 12
updates add up: a worst case of about 12 * 10 * 0.5 * 3.8e-6 = 2e-4 absolute for weights and
gradients of order 1 (Adam's m / sqrt(v) is scale-free; its worst case is smaller unless a
gradient entry is lost in rounding, which alpha > 0 prevents for the weights). Rounding errors
have random signs, so the expected size is about sqrt(number of rounded terms) u ~ 1e-6; the
largest difference observed over every case and ISA path is 2.4e-7 (2 ulp of the largest
weights). 2e-5 sits 80x above that and 10x below the worst case, and far below the effect of the
algorithmic differences this test is there to catch, each of which moves some weight by 2e-3 to
7e-2 here (measured): a 1e-2 change of one initial weight, alpha changed by 10%, or scaled by
batch / n_samples (L2 averaged over the data set instead of the batch), regularised intercepts,
Nesterov against classical momentum, momentum 0.85 against 0.9, beta_2 0.99 against 0.999,
Adam's epsilon added to the bias-corrected sqrt(v) as in PyTorch (visible only because the
"adam-eps" case takes epsilon=1e-3: at 1e-8 it moves weights by 1e-5, below any float32-honest
tolerance). ``loss_curve_`` entries are means of float32 per-sample losses (a few u each,
summed pairwise or in double: <= ~1e-6 relative): LOSS_RTOL = 1e-5 (observed 1e-8). Every case
also checks that the weights moved by far more than the tolerance (> 1e-3), so agreement is not
"nothing happened".

Why small data and few steps: long float32 trajectories are chaotic. On MNIST (784-512-256-10,
Adam, 3 epochs) scikit-learn against itself with its initial weights moved by 1e-7 ends 4e-2
apart, as far as it ends from fastmlp; test accuracy stays the same (paired over 10 seeds with
identical starts and batches: fastmlp - scikit-learn = 0.00 +- 0.06 points).
"""
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.neural_network import MLPClassifier as SkMLPClassifier  # noqa: E402
from sklearn.neural_network import MLPRegressor as SkMLPRegressor  # noqa: E402
from sklearn.utils import check_random_state  # noqa: E402

import fastmlp  # noqa: E402
from fastmlp.model import init_params  # noqa: E402
from fastmlp.testing import assert_bitwise_equal, assert_close  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

WEIGHT_TOL = dict(rtol=2e-5, atol=2e-5)
LOSS_RTOL = 1e-5
N, D, BATCH, HIDDEN, EPOCHS = 256, 20, 64, (16, 8), 3

SOLVERS = {
    "adam": dict(solver="adam", learning_rate_init=1e-2),
    # epsilon comparable to sqrt(v) (gradients ~1e-3..1e-2): pins where epsilon and the bias
    # correction enter (scikit-learn: lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps))
    "adam-eps": dict(solver="adam", learning_rate_init=1e-2, beta_1=0.8, beta_2=0.99,
                     epsilon=1e-3),
    "sgd-nesterov": dict(solver="sgd", learning_rate_init=0.2, momentum=0.9,
                         nesterovs_momentum=True),
    "sgd-momentum": dict(solver="sgd", learning_rate_init=0.2, momentum=0.8,
                         nesterovs_momentum=False),
    "sgd-invscaling": dict(solver="sgd", learning_rate_init=0.5, momentum=0.9,
                           nesterovs_momentum=True, learning_rate="invscaling", power_t=0.25),
}


def _data(kind):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((N, D)).astype(np.float32)
    scores = X @ rng.standard_normal((D, 3)) + 0.5 * rng.standard_normal((N, 3))
    if kind == "multiclass":
        return X, scores.argmax(axis=1)
    if kind == "binary":
        return X, (scores[:, 0] > 0).astype(np.int64)
    if kind == "multilabel":
        return X, (scores > 0).astype(np.int64)
    if kind == "regression":
        return X, (scores[:, 0] / scores[:, 0].std()).astype(np.float32)
    if kind == "regression-2":
        return X, (scores[:, :2] / scores[:, :2].std(axis=0)).astype(np.float32)
    raise ValueError(kind)


def _initial_weights(n_outputs, activation, seed=1):
    units = [D, *HIDDEN, n_outputs]
    params = init_params(units, [activation] * len(HIDDEN) + ["identity"], "sklearn",
                         np.random.default_rng(seed))
    return params[0::2], params[1::2]


def _fit_from(est, X, y, coefs, intercepts, sample_weight=None, epochs=EPOCHS):
    """Train est from the given weights with a fresh optimizer; returns est."""
    est.set_params(max_iter=1, warm_start=True)
    est.fit(X, y)                                  # builds classes_, out_activation_, t_, ...
    for p, p0 in zip(est.coefs_ + est.intercepts_, coefs + intercepts):
        # scikit-learn's lbfgs leaves float64 parameters (SciPy's iterates) even for float32 data
        assert p.dtype == (np.float64 if est.solver == "lbfgs" and est.__module__.startswith(
            "sklearn") else np.float32) and p.shape == p0.shape
        p[...] = p0
    est.set_params(max_iter=epochs)
    return est.fit(X, y, sample_weight=sample_weight)


def _pair(kind, activation, params, *, sk_params=None, fm_params=None, perturb=None,
          sample_weight=None, sk_sample_weight=None, epochs=EPOCHS):
    """(scikit-learn estimator, fastmlp estimator, initial weights) after training both from
    the same weights on the same batches. sk_params / fm_params override one side only;
    perturb=(layer, i, j, delta) changes one of fastmlp's initial weights."""
    X, y = _data(kind)
    n_outputs = (3 if kind in ("multiclass", "multilabel") else
                 2 if kind == "regression-2" else 1)
    coefs, intercepts = _initial_weights(n_outputs, activation)
    common = dict(hidden_layer_sizes=HIDDEN, activation=activation, alpha=0.5,
                  batch_size=BATCH, shuffle=False, tol=0.0, n_iter_no_change=1000,
                  random_state=0)
    common.update(params)
    regress = kind.startswith("regression")
    sk = (SkMLPRegressor if regress else SkMLPClassifier)(**{**common, **(sk_params or {})})
    fm = (fastmlp.MLPRegressor if regress else fastmlp.MLPClassifier)(
        **{**common, **(fm_params or {})})
    sk_w = sample_weight if sk_sample_weight is None else sk_sample_weight
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        _fit_from(sk, X, y, coefs, intercepts, sk_w, epochs)
        fm_coefs = [c.copy() for c in coefs]
        if perturb is not None:
            layer, i, j, delta = perturb
            fm_coefs[layer][i, j] += delta
        _fit_from(fm, X, y, fm_coefs, intercepts, sample_weight, epochs)
    return sk, fm, coefs + intercepts


def _assert_same_trajectory(sk, fm, initial, min_moved=1e-3):
    names = [f"coefs_[{i}]" for i in range(len(sk.coefs_))] + \
            [f"intercepts_[{i}]" for i in range(len(sk.intercepts_))]
    moved = 0.0
    for name, a, b, p0 in zip(names, sk.coefs_ + sk.intercepts_, fm.coefs_ + fm.intercepts_,
                              initial):
        assert a.dtype == np.float32 and b.dtype == np.float32, name
        assert_close(b, a, **WEIGHT_TOL, name=f"{name} against scikit-learn's")
        moved = max(moved, float(np.abs(a - p0).max()))
    assert moved > min_moved, f"the weights barely moved ({moved:.2g}): the test proves nothing"
    assert len(fm.loss_curve_) == len(sk.loss_curve_)
    assert_close(fm.loss_curve_[1:], sk.loss_curve_[1:], rtol=LOSS_RTOL, name="loss_curve_")
    assert fm.n_iter_ == sk.n_iter_ and fm.t_ == sk.t_


@pytest.mark.parametrize("solver", list(SOLVERS))
@pytest.mark.parametrize("activation", ["relu", "tanh", "logistic"])
def test_classifier_trajectory_matches_sklearn(isa, activation, solver):
    """Multi-class (softmax output, cross-entropy): every activation x every solver, on every
    ISA path of the kernels."""
    _assert_same_trajectory(*_pair("multiclass", activation, SOLVERS[solver]))


@pytest.mark.parametrize("solver", ["adam", "sgd-nesterov"])
@pytest.mark.parametrize("kind", ["binary", "multilabel", "regression"])
def test_other_outputs_trajectory_matches_sklearn(kind, solver):
    """Binary (one logistic output), multi-label (logistic outputs, loss summed over labels) and
    single-output regression (identity output, half squared error)."""
    _assert_same_trajectory(*_pair(kind, "tanh", SOLVERS[solver]))


@pytest.mark.parametrize("solver", ["adam", "sgd-nesterov"])
def test_multi_output_regression_trajectory_matches_sklearn(solver):
    """Two outputs: scikit-learn reports half the mean over samples and outputs but steps with
    each output's own gradient (n_outputs times that mean's); fastmlp steps the same way."""
    _assert_same_trajectory(*_pair("regression-2", "relu", SOLVERS[solver]))


# L-BFGS: both sides run SciPy's L-BFGS-B from the same weights for LBFGS_ITERS iterations.
# scikit-learn's objective is float64 after its first unpack (its parameters become SciPy's
# float64 iterates), fastmlp's float32 with float64 sums: each evaluation differs by float32
# rounding (~1e-7 relative). L-BFGS's iterates are smooth in the values and gradients it is fed
# while the line search keeps choosing the same steps. Observed over the five kinds below: the
# weights within 6.3e-7 and the final loss within 2.5e-7 relative; alpha changed by 10% on one
# side moves the weights by 1.2e-3 to 3.7e-2. Tolerance: WEIGHT_TOL (2e-5) and LOSS_RTOL.
LBFGS_ITERS = 8


@pytest.mark.parametrize("kind", ["multiclass", "binary", "multilabel", "regression",
                                  "regression-2"])
def test_lbfgs_trajectory_matches_sklearn(kind):
    sk, fm, init = _pair(kind, "tanh", dict(solver="lbfgs"), epochs=LBFGS_ITERS)
    names = [f"coefs_[{i}]" for i in range(len(sk.coefs_))] + \
            [f"intercepts_[{i}]" for i in range(len(sk.intercepts_))]
    moved = 0.0
    for name, a, b, p0 in zip(names, sk.coefs_ + sk.intercepts_, fm.coefs_ + fm.intercepts_,
                              init):
        assert_close(b, a, **WEIGHT_TOL, name=f"{name} against scikit-learn's")
        moved = max(moved, float(np.abs(a - p0).max()))
    assert moved > 1e-2, f"the weights barely moved ({moved:.2g})"
    assert fm.n_iter_ == sk.n_iter_ == LBFGS_ITERS
    assert_close(fm.loss_, sk.loss_, rtol=LOSS_RTOL, name="loss_")


def test_shuffled_batches_are_sklearns_scheme():
    """shuffle=True: every epoch draws a fresh permutation and cuts it into consecutive batches,
    as scikit-learn does. fastmlp's draws (a numpy Generator seeded with
    check_random_state(random_state).randint(2**31 - 1): the initial weights, then one in-place
    shuffle of the running order per epoch) are reproduced here, and the shuffled fit must equal
    fastmlp's and scikit-learn's unshuffled fits on the data laid out in that order."""
    X, y = _data("multiclass")
    params = dict(SOLVERS["adam"], hidden_layer_sizes=HIDDEN, alpha=0.5, batch_size=BATCH,
                  tol=0.0, n_iter_no_change=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        shuffled = fastmlp.MLPClassifier(**params, random_state=7, max_iter=EPOCHS).fit(X, y)
    rng = np.random.default_rng(check_random_state(7).randint(np.iinfo(np.int32).max))
    params0 = init_params([D, *HIDDEN, 3], ["relu"] * len(HIDDEN) + ["identity"], "sklearn", rng)
    order, laid_out = np.arange(N), []
    for _ in range(EPOCHS):
        rng.shuffle(order)
        laid_out.append(order.copy())
    idx = np.concatenate(laid_out)
    for cls in (fastmlp.MLPClassifier, SkMLPClassifier):
        est = cls(**params, shuffle=False, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            _fit_from(est, X[idx], y[idx], params0[0::2], params0[1::2], epochs=1)
        for a, b in zip(est.coefs_ + est.intercepts_, shuffled.coefs_ + shuffled.intercepts_):
            if cls is fastmlp.MLPClassifier:
                assert_bitwise_equal(a, b)
            else:
                assert_close(a, b, **WEIGHT_TOL)


def test_adaptive_schedule_and_stopping_match_sklearn():
    """"adaptive": the rate divided by 5 after n_iter_no_change + 1 epochs without improvement,
    training stopped at a plateau reached with the rate already <= 1e-6 (scikit-learn checks
    before dividing); a warm-started fit after that stop continues scikit-learn's count (it stops
    after one epoch without improvement). Constant Adam: the same stop and warm-start rule."""
    for params in (dict(solver="sgd", learning_rate="adaptive", learning_rate_init=1e-3,
                        momentum=0.9), dict(solver="adam", learning_rate_init=1e-3)):
        params = dict(params, tol=0.3, n_iter_no_change=2)
        sk, fm, init = _pair("multiclass", "relu", params, epochs=300)
        assert sk.n_iter_ < 300
        _assert_same_trajectory(sk, fm, init, min_moved=1e-4)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            X, y = _data("multiclass")
            sk.fit(X, y)
            fm.fit(X, y)
        _assert_same_trajectory(sk, fm, init, min_moved=1e-4)


def test_adaptive_with_infinite_patience():
    X, y = _data("multiclass")
    clf = fastmlp.MLPClassifier((8,), solver="sgd", learning_rate="adaptive",
                                n_iter_no_change=np.inf, max_iter=3, random_state=0).fit(X, y)
    assert clf.n_iter_ == 3


def test_warm_start_restarts_cosine_schedule():
    """A warm-started fit runs the "cosine" schedule over its own max_iter epochs again (it used
    to continue from t_, past the end of the schedule: learning rate 0, no training)."""
    X, y = _data("multiclass")
    rates = []
    clf = fastmlp.MLPClassifier((8,), learning_rate="cosine", learning_rate_init=0.01,
                                max_iter=4, tol=0.0, random_state=0, warm_start=True,
                                callback=lambda info: rates.append(info["lr"]))
    clf.fit(X, y)
    w = clf.coefs_[0].copy()
    clf.fit(X, y)
    assert rates[:4] == rates[4:] and rates[0] == 0.01
    assert np.abs(clf.coefs_[0] - w).max() > 1e-3


def test_batch_normalised_sample_weight_matches_sklearn():
    """Sample weights weight the per-sample losses as scikit-learn's weighted average does.
    (Weights summing to the batch size in every batch: see the next test for other weights.)"""
    rng = np.random.default_rng(3)
    w = rng.random(N) + 0.25
    w = (w * BATCH / w.reshape(-1, BATCH).sum(axis=1).repeat(BATCH)).astype(np.float32)
    for solver in ("adam", "sgd-nesterov"):
        _assert_same_trajectory(*_pair("multiclass", "relu", SOLVERS[solver], sample_weight=w))


def test_sample_weight_l2_scaling_matches_sklearn():
    """Weights that do not sum to the batch size: the L2 term is divided by the batch's sum of
    weights, as in scikit-learn (doubling every weight halves its pull)."""
    rng = np.random.default_rng(3)
    w = (2 * rng.random(N) + 0.5).astype(np.float32)
    _assert_same_trajectory(*_pair("multiclass", "relu", SOLVERS["adam"], sample_weight=w))
    _assert_same_trajectory(*_pair("multiclass", "relu", SOLVERS["adam"], sample_weight=2 * w))


@pytest.mark.parametrize("activation,factor", [("relu", 6.0), ("logistic", 2.0)])
def test_default_initialisation_is_sklearns(activation, factor):
    """Both estimators draw weights and intercepts from U(-b, b), b = sqrt(factor / (fan_in +
    fan_out)) with scikit-learn's factor (2 for logistic, else 6). The draws themselves differ
    (numpy Generator against RandomState). A learning rate of 1e-12 leaves the initial weights."""
    X, y = _data("multiclass")
    fits = [cls((64,), activation, solver="sgd", momentum=0.0, learning_rate_init=1e-12,
                max_iter=1, random_state=0).fit(X, y)
            for cls in (SkMLPClassifier, fastmlp.MLPClassifier)]
    for clf in fits:
        for W, b in zip(clf.coefs_, clf.intercepts_):
            bound = np.sqrt(factor / sum(W.shape))
            for p in (W, b):
                assert np.abs(p).max() <= bound * (1 + 1e-6)
                if p.size >= 64:      # P(max |p| < 0.8 b) = 0.8^size
                    assert np.abs(p).max() >= 0.8 * bound
        W0 = clf.coefs_[0]
        assert W0.std() == pytest.approx(np.sqrt(factor / sum(W0.shape) / 3), rel=0.1)
