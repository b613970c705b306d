"""The scikit-learn estimators: scikit-learn's estimator checks, the parameters and attributes
of its MLPs, their training behaviour, and saving them.

The trajectory against scikit-learn's own MLPs is in test_sklearn_trajectory.py; the training
step they run is tested in tests/model.
"""
import pickle
import warnings

import numpy as np
import pytest

import fastmlp
from fastmlp.testing import assert_bitwise_equal, assert_close

sklearn = pytest.importorskip("sklearn")
from sklearn.base import clone  # noqa: E402
from sklearn.datasets import make_classification, make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from fastmlp import MLPClassifier, MLPRegressor  # noqa: E402
from fastmlp.io import ModelFileError  # noqa: E402

from conftest import rewrite_meta  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
TOL = dict(rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def clf_data():
    X, y = make_classification(300, 10, n_informative=6, n_classes=3, random_state=0)
    return X.astype(np.float32), y


@pytest.fixture(scope="module")
def reg_data():
    X, y = make_regression(200, 8, n_targets=2, noise=0.1, random_state=0)
    return X.astype(np.float32), (y / y.std()).astype(np.float32)


# ---- scikit-learn estimator checks ---------------------------------------------------------

_SW_EQUIV = ("minibatch SGD visits a repeated row twice at different points of the trajectory, so "
             "weights and repetitions agree only in expectation")
EXPECTED = {"check_sample_weight_equivalence_on_dense_data": _SW_EQUIV,
            "check_sample_weight_equivalence_on_sparse_data": _SW_EQUIV}


def _expected_failed(est):
    out = dict(EXPECTED)
    if est.solver == "lbfgs":
        # full batch, so the objectives are equal; but the check asks rtol 1e-7 of
        # predict_proba and float32 evaluations through 200 L-BFGS iterations give 7.6e-6
        for data in ("dense", "sparse"):
            out[f"check_sample_weight_equivalence_on_{data}_data"] = (
                "the same objective in float32: predictions agree to ~1e-5, the check asks 1e-7")
    if isinstance(est, MLPRegressor):
        out["check_regressor_multioutput"] = "predictions are float32 by design (float32 compute)"
    return out


@parametrize_with_checks(
    [MLPClassifier((8,), max_iter=200, learning_rate_init=0.01, random_state=0),
     MLPRegressor((8,), max_iter=200, learning_rate_init=0.01, random_state=0),
     MLPClassifier((8,), solver="lbfgs", max_iter=200, random_state=0),
     MLPRegressor((8,), solver="lbfgs", max_iter=200, random_state=0),
     MLPRegressor((8,), loss="poisson", max_iter=200, learning_rate_init=0.01, random_state=0),
     MLPClassifier((8,), normalization="layer", clip_grad_norm=1.0, max_iter=200,
                   learning_rate_init=0.01, random_state=0),
     MLPRegressor((8,), normalization="batch", clip_grad_norm=1.0, diagnostics=True,
                  max_iter=200, learning_rate_init=0.01, random_state=0),
     MLPClassifier((8, 6), normalization=["batch", "layer"], max_iter=200,
                   learning_rate_init=0.01, random_state=0)],
    expected_failed_checks=_expected_failed)
def test_sklearn_checks(estimator, check):
    check(estimator)


def test_pipeline_gridsearch_clone(clf_data):
    X, y = clf_data
    pipe = make_pipeline(StandardScaler(), MLPClassifier((8,), max_iter=100, batch_size=32,
                                                       learning_rate_init=0.01, random_state=0))
    grid = GridSearchCV(pipe, {"mlpclassifier__alpha": [1e-4, 1e-1]}, cv=2).fit(X, y)
    assert grid.best_score_ > 0.6
    c = clone(grid.best_estimator_[-1])
    assert c.get_params() == grid.best_estimator_[-1].get_params()
    assert not hasattr(c, "coefs_")


# ---- estimator behaviour --------------------------------------------------------------------

@pytest.mark.parametrize("solver", ["sgd", "adam", "adamw", "rmsprop"])
@pytest.mark.parametrize("learning_rate", ["constant", "invscaling", "adaptive", "cosine"])
def test_solvers_and_schedules_learn(clf_data, solver, learning_rate):
    X, y = clf_data
    clf = MLPClassifier((16,), solver=solver, learning_rate=learning_rate,
                        learning_rate_init=0.01 if solver != "sgd" else 0.1, max_iter=20,
                        random_state=0, weight_decay=1e-3, rho=0.8, power_t=0.25,
                        momentum=0.8, nesterovs_momentum=solver == "sgd")
    clf.fit(X, y)
    assert clf.loss_curve_[-1] < clf.loss_curve_[0]
    # invscaling decays with samples seen (scikit-learn's clock): too slow to learn much here
    assert clf.score(X, y) > (0.7 if learning_rate != "invscaling" else 0.4)


def test_attributes_and_outputs(clf_data, reg_data):
    X, y = clf_data
    clf = MLPClassifier((7, 5), activation=["tanh", "logistic"], max_iter=5, batch_size=32,
                        random_state=0).fit(X.astype(np.float64), y)
    assert [c.shape for c in clf.coefs_] == [(10, 7), (7, 5), (5, 3)]
    assert clf.out_activation_ == "softmax" and clf.n_features_in_ == 10
    assert clf.n_iter_ == 5 and clf.t_ == 5 * len(X) and len(clf.loss_curve_) == 5
    assert clf.best_loss_ == min(clf.loss_curve_) and clf.validation_scores_ is None
    proba = clf.predict_proba(X)
    assert_close(proba.sum(axis=1), np.ones(len(X)), rtol=1e-5, atol=1e-6)
    assert_close(clf.predict_log_proba(X), np.log(proba), rtol=1e-5, atol=1e-6)
    binary = MLPClassifier((4,), max_iter=5, random_state=0).fit(X, y == 1)
    assert binary.out_activation_ == "logistic" and binary.predict_proba(X).shape == (300, 2)
    multilabel = np.stack([y == 0, y == 1], axis=1).astype(int)
    ml = MLPClassifier((4,), max_iter=5, random_state=0).fit(X, multilabel)
    assert ml.predict(X).shape == (300, 2) and ml.out_activation_ == "logistic"
    Xr, yr = reg_data
    reg = MLPRegressor((16,), max_iter=300, learning_rate_init=0.01, random_state=0)
    assert reg.fit(Xr.astype(np.int64), yr).predict(Xr).shape == (200, 2)
    assert reg.fit(Xr, yr).score(Xr, yr) > 0.9
    assert reg.fit(Xr, yr[:, 0]).predict(Xr).shape == (200,)


def test_partial_fit_keeps_optimizer_state(clf_data):
    X, y = clf_data
    a = MLPClassifier((8,), random_state=0, shuffle=False, batch_size=300)
    b = MLPClassifier((8,), random_state=0, shuffle=False, batch_size=300, max_iter=3)
    for _ in range(3):
        a.partial_fit(X, y, classes=np.unique(y))
    b.fit(X, y)          # one full-batch Adam trajectory: equal iff the state was kept
    for ca, cb in zip(a.coefs_, b.coefs_):
        assert_bitwise_equal(ca, cb)
    assert a._step.t == 3
    with pytest.raises(ValueError, match="classes"):
        MLPClassifier().partial_fit(X, y)


def test_warm_start_continues(clf_data):
    X, y = clf_data
    clf = MLPClassifier((8,), max_iter=5, warm_start=True, random_state=0).fit(X, y)
    first = clf.coefs_[0].copy()
    clf.fit(X, y)
    assert len(clf.loss_curve_) == 10 and not np.array_equal(first, clf.coefs_[0])
    cold = MLPClassifier((8,), max_iter=5, random_state=0).fit(X, y)
    assert_bitwise_equal(cold.coefs_[0], first)


def test_early_stopping_restores_best(clf_data):
    X, y = clf_data
    seen = []
    clf = MLPClassifier((8,), max_iter=40, early_stopping=True, validation_fraction=0.2,
                        n_iter_no_change=2, tol=0.5, random_state=0, learning_rate_init=0.05,
                        callback=lambda info: seen.append([c.copy() for c in
                                                           info["estimator"].coefs_]) and False)
    clf.fit(X, y)
    best = int(np.argmax(clf.validation_scores_))
    assert clf.n_iter_ < 40 and clf.best_validation_score_ == max(clf.validation_scores_)
    for c, s in zip(clf.coefs_, seen[best]):
        assert_bitwise_equal(c, s)


def test_explicit_validation_set_callback_verbose(clf_data, capsys):
    X, y = clf_data
    infos = []
    clf = MLPClassifier((8,), max_iter=50, verbose=True, random_state=0,
                        callback=lambda info: infos.append(info) or info["epoch"] == 3)
    clf.fit(X[:200], y[:200], X_val=X[200:], y_val=y[200:])
    assert clf.n_iter_ == 3 and len(clf.validation_scores_) == 3
    assert infos[-1]["validation_score"] == clf.score(X[200:], y[200:])
    out = capsys.readouterr().out
    assert "Iteration 3" in out and "validation score" in out and "samples/s" in out


def test_class_weight_and_sample_weight(clf_data):
    X, y = clf_data
    base = dict(hidden_layer_sizes=(8,), max_iter=30, batch_size=32, learning_rate_init=0.01,
                random_state=0)
    plain = MLPClassifier(**base).fit(X, y)
    weighted = MLPClassifier(**base, class_weight={0: 20.0, 1: 1.0, 2: 1.0}).fit(X, y)
    assert (weighted.predict(X) == 0).sum() > (plain.predict(X) == 0).sum()
    sw = np.where(y == 0, 20.0, 1.0)
    by_sw = MLPClassifier(**base).fit(X, y, sample_weight=sw)
    for a, b in zip(by_sw.coefs_, weighted.coefs_):
        assert_close(a, b, rtol=1e-5, atol=1e-6)
    balanced = MLPClassifier(**base, class_weight="balanced").fit(X[:200], y[:200])
    assert balanced.score(X, y) > 0.6


def test_dropout_alpha_and_batch_size_change_the_fit(clf_data):
    X, y = clf_data
    base = dict(hidden_layer_sizes=(16,), max_iter=5, random_state=0)
    ref_coef = MLPClassifier(**base).fit(X, y).coefs_[0]
    for change in [dict(dropout=0.3), dict(alpha=1.0), dict(batch_size=17),
                   dict(shuffle=False), dict(beta_1=0.5), dict(beta_2=0.9), dict(epsilon=1e-3)]:
        coef = MLPClassifier(**base, **change).fit(X, y).coefs_[0]
        assert not np.array_equal(coef, ref_coef), change
    heavy = MLPClassifier(**dict(base, max_iter=30), alpha=10.0).fit(X, y)
    assert np.linalg.norm(heavy.coefs_[0]) < np.linalg.norm(ref_coef)


def test_tol_and_n_iter_no_change_stop_early(clf_data):
    X, y = clf_data
    clf = MLPClassifier((8,), max_iter=200, tol=10.0, n_iter_no_change=3, random_state=0)
    # epoch 1 sets best_loss_; epochs 2..5 do not improve by tol; 4 > n_iter_no_change stops
    assert clf.fit(X, y).n_iter_ == 5


@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_determinism_across_threads(clf_data, n_threads):
    X, y = clf_data
    params = dict(hidden_layer_sizes=(64, 32), max_iter=3, dropout=0.2, random_state=5)
    base = MLPClassifier(**params, n_threads=1).fit(X, y)
    other = MLPClassifier(**params, n_threads=n_threads).fit(X, y)
    for a, b in zip(base.coefs_ + base.intercepts_, other.coefs_ + other.intercepts_):
        assert_bitwise_equal(a, b)


def test_n_threads_is_restored(clf_data):
    X, y = clf_data
    before = fastmlp.get_num_threads()
    MLPClassifier((4,), max_iter=1, n_threads=3).fit(X, y)
    assert fastmlp.get_num_threads() == before


def test_divergence_raises_sklearns_error(reg_data):
    """scikit-learn's ValueError and message (code catching it keeps working), and a
    FloatingPointError as fastmlp raised before, raised at the epoch the loss stops being
    finite rather than after max_iter epochs of NaN."""
    X, y = reg_data
    reg = MLPRegressor((32,), solver="sgd", learning_rate_init=10.0, momentum=0.9,
                       max_iter=50, random_state=0)
    with pytest.raises(fastmlp.estimators.NonFiniteWeightsError,
                       match="^Solver produced non-finite parameter weights. The input data may "
                             "contain large values and need to be preprocessed.") as e:
        reg.fit(X * 100, y)
    assert isinstance(e.value, ValueError) and isinstance(e.value, FloatingPointError)
    assert "learning_rate_init" in str(e.value) and reg.n_iter_ < 50
    # float64 values beyond float32's range: the same error, not a conversion error
    with pytest.raises(ValueError, match="non-finite parameter weights"):
        MLPRegressor((4,), max_iter=5).fit(np.full((10, 2), 1e300), np.ones(10))


def test_divergence_under_early_stopping_restores_the_best_weights(reg_data):
    """As scikit-learn: training goes on through a NaN loss (validation scores NaN, no
    improvement), stops after n_iter_no_change + 1 epochs and restores the best weights."""
    X, y = reg_data
    # two good epochs (t counts samples: 180 a epoch), then a rate that diverges
    reg = MLPRegressor((32,), solver="sgd", learning_rate=lambda t: 0.01 if t < 360 else 50.0,
                       momentum=0.9, max_iter=50, early_stopping=True, n_iter_no_change=3,
                       random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NumPy's overflow in the score
        reg.fit(X, y)
    assert np.isfinite(reg.validation_scores_[:2]).all()
    # a NaN score resets scikit-learn's no-improvement count: it trains to max_iter
    assert np.isnan(reg.loss_curve_[-1]) and np.isnan(reg.validation_scores_[-1])
    assert reg.n_iter_ == 50 and isinstance(reg.validation_scores_[-1], float)
    assert all(np.isfinite(c).all() for c in reg.coefs_ + reg.intercepts_)
    best = int(np.nanargmax(reg.validation_scores_)) if np.isfinite(
        reg.validation_scores_).any() else None
    assert best is None or reg.best_validation_score_ == reg.validation_scores_[best]


def test_keyboard_interrupt_leaves_usable_model(clf_data):
    X, y = clf_data

    def interrupt(info):
        if info["epoch"] == 2:
            raise KeyboardInterrupt

    clf = MLPClassifier((8,), max_iter=50, random_state=0, callback=interrupt)
    with pytest.warns(UserWarning, match="interrupted"):
        clf.fit(X, y)
    assert clf.n_iter_ == 2 and clf.predict(X).shape == (300,)


def test_invalid_parameters(clf_data):
    """scikit-learn's InvalidParameterError (a ValueError and a TypeError) naming the
    parameter, for fastmlp's extra parameters too."""
    from sklearn.utils._param_validation import InvalidParameterError
    X, y = clf_data
    for bad in [dict(solver="bogus"), dict(dropout=1.0), dict(activation="swish"),
                dict(learning_rate="bogus"), dict(n_threads=0), dict(hidden_layer_sizes=(0,)),
                dict(max_fun=0), dict(alpha=np.nan), dict(dropout=[0.1, 0.2]),
                dict(solver="lbfgs", dropout=0.1)]:
        with pytest.raises(InvalidParameterError) as e:
            MLPClassifier(**bad).fit(X, y)
        assert isinstance(e.value, TypeError) and list(bad)[-1] in str(e.value)
    with pytest.raises(InvalidParameterError, match="'loss' parameter"):
        MLPRegressor(loss="absolute_error").fit(X, y)


def test_partial_fit_only_for_stochastic_solvers_and_multilabel_classes():
    assert not hasattr(MLPClassifier(solver="lbfgs"), "partial_fit")
    assert not hasattr(MLPRegressor(solver="lbfgs"), "partial_fit")
    X, Y = make_multilabel(60)
    with pytest.raises(ValueError, match="classes must be passed on the first call"):
        MLPClassifier(solver="sgd").partial_fit(X, Y)
    clf = MLPClassifier((8,), solver="sgd", random_state=0)
    for _ in range(3):
        clf.partial_fit(X, Y, classes=np.arange(Y.shape[1]))
    assert clf.predict(X).shape == Y.shape and clf.n_outputs_ == Y.shape[1]


def make_multilabel(n):
    from sklearn.datasets import make_multilabel_classification
    X, Y = make_multilabel_classification(n, 6, n_classes=4, random_state=0)
    return X.astype(np.float32), Y


@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_lbfgs_is_deterministic_across_threads(clf_data, n_threads):
    X, y = clf_data
    params = dict(hidden_layer_sizes=(64, 32), solver="lbfgs", max_iter=20, random_state=5)
    base = MLPClassifier(**params, n_threads=1).fit(X, y)
    other = MLPClassifier(**params, n_threads=n_threads).fit(X, y)
    for a, b in zip(base.coefs_ + base.intercepts_, other.coefs_ + other.intercepts_):
        assert_bitwise_equal(a, b)
    assert base.loss_curve_ == other.loss_curve_ and len(base.loss_curve_) == base.n_iter_


def test_lbfgs_max_fun_and_chunks(clf_data):
    """max_fun bounds the evaluations (ConvergenceWarning); an objective over more rows than a
    chunk (LBFGS_CHUNK) is the same objective: 4096 + 904 rows cut in two chunks reach the loss
    of the data set evaluated in one go, to float32 rounding."""
    from fastmlp.estimators import mlp as est_mlp
    X, y = clf_data
    with pytest.warns(ConvergenceWarning, match="lbfgs failed to converge"):
        MLPClassifier((8,), solver="lbfgs", max_fun=5, random_state=0).fit(X, y)
    Xb, yb = np.tile(X, (17, 1))[:5000], np.tile(y, 17)[:5000]
    one = MLPClassifier((8,), solver="lbfgs", max_iter=3, random_state=0).fit(Xb, yb)
    chunk, est_mlp.LBFGS_CHUNK = est_mlp.LBFGS_CHUNK, 5000
    try:
        two = MLPClassifier((8,), solver="lbfgs", max_iter=3, random_state=0).fit(Xb, yb)
    finally:
        est_mlp.LBFGS_CHUNK = chunk
    assert_close(one.loss_curve_, two.loss_curve_, rtol=1e-6)


def test_poisson_regressor_matches_sklearn():
    """loss="poisson": exp output, half Poisson deviance; lbfgs from the same initial weights
    reaches scikit-learn's loss and predictions. (tanh: with relu the objective has kinks, and
    L-BFGS paths that differ by rounding end in different kinked valleys, on either side.)"""
    from sklearn.neural_network import MLPRegressor as SkMLPRegressor
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 4)).astype(np.float32)
    y = rng.poisson(np.exp(0.5 * X[:, 0] - 0.3 * X[:, 1] + 0.2))
    params = dict(hidden_layer_sizes=(8,), activation="tanh", loss="poisson", solver="lbfgs",
                  tol=1e-9, random_state=0)
    # the same start (the network is not convex: other starts end in other minima)
    sk = SkMLPRegressor(**params, max_iter=1, warm_start=True).fit(X, y)
    fm = MLPRegressor(**params, max_iter=1, warm_start=True).fit(X, y)
    for p, q in zip(fm.coefs_ + fm.intercepts_, sk.coefs_ + sk.intercepts_):
        p[...] = q
    fm.set_params(max_iter=1000).fit(X, y)
    sk.set_params(max_iter=1000).fit(X, y)
    assert fm.out_activation_ == "exp" and (fm.predict(X) > 0).all()
    assert abs(fm.loss_ - sk.loss_) <= 0.01 * sk.loss_
    # stationarity in the output bias (not penalised): mean(exp(z)) = mean(y)
    assert_close(fm.predict(X).mean(), y.mean(), rtol=1e-3)
    with pytest.raises(ValueError, match="y >= 0"):
        MLPRegressor(loss="poisson").fit(X, -np.ones(300))


# ---- saving (the file format's own checks: tests/io) ----------------------------------------

@pytest.fixture(scope="module")
def saved(tmp_path_factory, clf_data):
    X, y = clf_data
    labels = np.array(["cat", "dog", "emu"])[y]
    clf = MLPClassifier((8, 6), activation=["relu", "gelu"], max_iter=5, random_state=0)
    path = tmp_path_factory.mktemp("models") / "clf.safetensors"
    clf.fit(X, labels).save(path)
    return clf, path, path.read_bytes()


def test_save_load_round_trips(saved, clf_data, reg_data, tmp_path):
    X, _ = clf_data
    clf, path, _ = saved
    loaded = fastmlp.load(path)
    assert_bitwise_equal(loaded.predict_proba(X), clf.predict_proba(X))
    assert (loaded.predict(X) == clf.predict(X)).all() and loaded.classes_.dtype.kind == "U"
    assert loaded.get_params() == {**clf.get_params(), "callback": None}
    assert pickle.loads(pickle.dumps(clf)).predict(X).tolist() == clf.predict(X).tolist()
    Xr, yr = reg_data
    reg = MLPRegressor((5,), max_iter=3, random_state=0).fit(Xr, yr)
    reg.save(tmp_path / "r.safetensors")
    assert_bitwise_equal(fastmlp.load(tmp_path / "r.safetensors").predict(Xr), reg.predict(Xr))
    with pytest.raises(TypeError, match="fitted"):
        MLPClassifier().save(tmp_path / "unfitted.safetensors")


def test_loaded_and_unpickled_estimators_train_on(saved, clf_data):
    """partial_fit after load or unpickling gathers coefs_ into one flat buffer again and goes
    on from the saved weights."""
    X, y = clf_data
    labels = np.array(["cat", "dog", "emu"])[y]
    clf, path, _ = saved
    for est in (fastmlp.load(path), pickle.loads(pickle.dumps(clf))):
        before = est.coefs_[0].copy()
        est.partial_fit(X, labels)
        assert fastmlp.core.flat_buffer(est._step.params) is est._step.flat_params
        assert est.coefs_[0] is est._step.params[0]
        assert not np.array_equal(est.coefs_[0], before)


def test_saved_model_records_its_context(saved):
    import json
    import struct
    raw = saved[2]
    header = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
    doc = json.loads(header["__metadata__"]["fastmlp"])
    machine = fastmlp.info()
    assert doc["fastmlp_version"] == fastmlp.__version__
    assert doc["trained_with"] == {k: machine[k] for k in ("isa", "num_threads", "cpu", "openmp")}


@pytest.mark.parametrize("edit,match", [
    (lambda d: d.__setitem__("hyperparameters", {"callback": "print"}), "hyperparameter"),
    (lambda d: d["hyperparameters"].__setitem__("alpha", -1.0), "invalid hyperparameters"),
    (lambda d: d["classes"].__setitem__("values", [1, 2]), "classes|dtype"),
    (lambda d: d["classes"].__setitem__("values", ["a", "b"]), "classes"),
    (lambda d: d["attributes"].__setitem__("n_features_in_", 3), "n_features_in_"),
    (lambda d: d["attributes"].__setitem__("feature_names_in_", ["a"]), "feature_names_in_"),
    (lambda d: d["attributes"].__setitem__("feature_names_in_", [1] * 20), "feature_names_in_"),
    (lambda d: d.__setitem__("out_activation", "identity"), "classes"),
])
def test_load_rejects_bad_estimator_files(saved, tmp_path, edit, match):
    _, _, raw = saved
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(rewrite_meta(raw, edit))
    with pytest.raises(ModelFileError, match=match):
        fastmlp.load(bad)


@pytest.mark.parametrize("cls", [MLPClassifier, MLPRegressor])
def test_saved_estimator_keeps_feature_names_as_pickle_does(cls, tmp_path):
    """Fitted on a DataFrame, a reloaded estimator checks the columns it is given: reordered
    columns are refused (scikit-learn's ValueError, as after pickle) instead of predicting
    with the features swapped; the same columns predict what the original predicts."""
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.standard_normal((80, 3)), columns=["age", "height", "weight"])
    y = (df["age"] > 0).astype(int) if cls is MLPClassifier else df["age"] * 2.0
    est = cls((8,), max_iter=20, random_state=0).fit(df, y)
    est.save(tmp_path / "m.safetensors")
    loaded = fastmlp.load(tmp_path / "m.safetensors")
    assert list(loaded.feature_names_in_) == ["age", "height", "weight"]
    assert_bitwise_equal(loaded.predict(df), est.predict(df))
    swapped = df[["weight", "height", "age"]]
    for model in (loaded, pickle.loads(pickle.dumps(est))):
        with pytest.raises(ValueError, match="feature names"):
            model.predict(swapped)
    # fitted on a plain array: no names saved, and none invented
    plain = cls((8,), max_iter=5, random_state=0).fit(df.to_numpy(), y)
    plain.save(tmp_path / "p.safetensors")
    assert not hasattr(fastmlp.load(tmp_path / "p.safetensors"), "feature_names_in_")


@pytest.mark.parametrize("solver", ["adam", "sgd", "lbfgs"])
@pytest.mark.parametrize("fmt", ["csr", "csc"])
def test_sparse_fit_equals_dense_fit(solver, fmt):
    """A fit on a sparse X (the first layer on the sparse kernels) predicts what the same fit on
    X.toarray() predicts, to float32 rounding: both runs see the same weights and batches, and
    the products add the same terms in other orders. Tolerance rtol 1e-3, atol 1e-4 on
    predict_proba after 5 epochs (lbfgs: 15 iterations) — rounding amplified by training."""
    sp = pytest.importorskip("scipy.sparse")
    rng = np.random.default_rng(0)
    X = sp.random(300, 500, density=0.02, format="csr", random_state=1)
    y = (X @ rng.standard_normal(500) > 0).astype(int) + (X[:, :10].sum(axis=1).A1 > 0.3)
    Xs = X.asformat(fmt)
    params = dict(hidden_layer_sizes=(16,), solver=solver, max_iter=15 if solver == "lbfgs"
                  else 5, random_state=0, learning_rate_init=0.01)
    a = MLPClassifier(**params).fit(Xs, y)
    b = MLPClassifier(**params).fit(X.toarray(), y)
    assert_close(a.predict_proba(Xs), b.predict_proba(X.toarray()), rtol=1e-3, atol=1e-4)
    assert_close(a.predict_proba(Xs), a.predict_proba(X.toarray()), rtol=1e-5, atol=1e-6)
    assert a.score(Xs, y) == b.score(X.toarray(), y)
    reg = MLPRegressor((8,), solver=solver, max_iter=5, random_state=0).fit(Xs, y * 1.0)
    assert reg.predict(Xs).shape == (300,)
    if solver != "lbfgs":
        a.partial_fit(Xs, y)


# ---- normalization, clipping, diagnostics ----------------------------------------------------


@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_normalized_fit_save_load_and_pickle(clf_data, tmp_path, norm):
    import pickle
    X, y = clf_data
    clf = MLPClassifier((16, 8), normalization=norm, clip_grad_norm=1.0, max_iter=60,
                        learning_rate_init=0.01, random_state=0).fit(X, y)
    assert clf.score(X, y) > 0.9      # 0.94 (layer), 0.95 (batch), 0.93 without a norm
    assert len(clf.norm_params_) == 4 and len(clf.running_stats_) == (4 if norm == "batch"
                                                                        else 0)
    # gamma and beta trained (they start at ones and zeros)
    assert not np.allclose(clf.norm_params_[0], 1)
    clf.save(tmp_path / "c.safetensors")
    for back in (fastmlp.load(tmp_path / "c.safetensors"), pickle.loads(pickle.dumps(clf))):
        np.testing.assert_array_equal(back.predict_proba(X), clf.predict_proba(X))
    # predict in inference mode: a row's prediction does not depend on its batch
    np.testing.assert_allclose(clf.predict_proba(X[:3]), clf.predict_proba(X)[:3],
                               rtol=1e-5, atol=1e-6)


def test_diagnostics_history_and_callback(clf_data):
    X, y = clf_data
    seen = []
    clf = MLPClassifier((16, 8), diagnostics=True, max_iter=6, random_state=0,
                        callback=lambda info: seen.append(info["diagnostics"])).fit(X, y)
    assert len(clf.history_) == 6 and seen == clf.history_
    rec = clf.history_[-1]
    assert rec["epoch"] == 6 and rec["loss"] == pytest.approx(clf.loss_curve_[-1])
    assert len(rec["layers"]) == 3
    for entry in rec["layers"]:
        assert entry["grad_norm"] > 0 and entry["weight_norm"] > 0
        assert 0 < entry["update_ratio"] < 1
    for entry in rec["layers"][:2]:
        assert 0 <= entry["inactive"] <= 1 and entry["act_std"] > 0
    # the global norm is the norm of the per-layer weight gradients
    assert rec["grad_norm"] == pytest.approx(
        np.sqrt(sum(e["grad_norm"] ** 2 for e in rec["layers"])))
    assert MLPClassifier((4,), max_iter=2, random_state=0).fit(X, y).history_ is None


def test_diagnostics_see_vanishing_gradients():
    """A deep logistic network from scikit-learn's small init: its first layer's gradient is
    orders of magnitude below its last's (the chain rule's product of sigmoid' <= 1/4)."""
    X, y = make_classification(400, 10, n_informative=6, random_state=0)
    clf = MLPClassifier((16,) * 8, activation="logistic", diagnostics=True, max_iter=2,
                        random_state=0).fit(X, y)
    layers = clf.history_[0]["layers"]
    assert layers[0]["grad_norm"] < 1e-3 * layers[-1]["grad_norm"]


def test_normalization_parameter_errors(clf_data):
    X, y = clf_data
    with pytest.raises(ValueError, match="normalization"):
        MLPClassifier((4,), normalization="group").fit(X, y)
    with pytest.raises(ValueError, match="normalization"):
        MLPClassifier((4, 4), normalization=["layer"]).fit(X, y)
    with pytest.raises(ValueError, match="clip_grad_norm"):
        MLPClassifier((4,), clip_grad_norm=-1.0).fit(X, y)
    with pytest.raises(ValueError, match="stochastic solver"):
        MLPClassifier((4,), solver="lbfgs", normalization="batch").fit(X, y)
    # LayerNorm's full-batch objective is well defined: lbfgs trains it
    assert MLPClassifier((8,), solver="lbfgs", normalization="layer", max_iter=100,
                         random_state=0).fit(X, y).score(X, y) > 0.8


@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_normalized_fits_bitwise_identical_for_1_2_3_threads(norm):
    # layers wide enough (200 x 512 per batch) that the kernels split their work over threads
    X, y = make_classification(1000, 40, n_informative=20, n_classes=4, random_state=1)
    params = dict(hidden_layer_sizes=(512, 256), normalization=norm, clip_grad_norm=1.0,
                  max_iter=2, random_state=3)
    fits = [MLPClassifier(**params, n_threads=t).fit(X, y) for t in (1, 2, 3)]
    for other in fits[1:]:
        for a, b in zip(fits[0].coefs_ + fits[0].intercepts_ + fits[0].norm_params_
                        + fits[0].running_stats_,
                        other.coefs_ + other.intercepts_ + other.norm_params_
                        + other.running_stats_):
            assert_bitwise_equal(a, b)
