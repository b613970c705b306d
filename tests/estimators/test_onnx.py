"""ONNX export (fastmlp.estimators.onnx_export): fit, export, run with onnxruntime, and compare
with the estimator's own predict / predict_proba.

Tolerances (float32 throughout; the two runtimes sum the products in different orders):
probabilities rtol 1e-5, atol 1e-6; regression outputs rtol 1e-5, atol 1e-5. Labels must be
equal except on rows where the decision is within TIE of a tie (top two probabilities, or a
probability and 0.5), where float32 rounding may pick either side.
"""
import warnings

import numpy as np
import pytest

import fastmlp

pytest.importorskip("sklearn")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from sklearn.exceptions import NotFittedError  # noqa: E402

from fastmlp import MLPClassifier, MLPRegressor  # noqa: E402
from fastmlp.estimators import onnx_export  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
PROBA_TOL = dict(rtol=1e-5, atol=1e-6)
REG_TOL = dict(rtol=1e-5, atol=1e-5)
TIE = 1e-5


def _data(n=300, d=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(np.float32)


X = _data()
X_TEST = _data(200, seed=1) * 1.5     # beyond the training range too
CLASSES3 = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.3)   # 3 classes


def _run(model, X):
    """onnxruntime's outputs for X, by name."""
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {sess.get_inputs()[0].name: X})))


def _decided(proba, multilabel_or_binary):
    """Rows (or entries) whose label is not within TIE of a tie."""
    if multilabel_or_binary:
        return np.abs(proba - 0.5) > TIE
    top2 = np.sort(proba, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0] > TIE


def check_classifier(clf, X=X_TEST):
    """onnxruntime's label / probabilities against predict / predict_proba; returns the
    largest absolute difference of the probabilities."""
    out = _run(clf.to_onnx(), X)
    proba = clf.predict_proba(X)
    np.testing.assert_allclose(out["probabilities"], proba, **PROBA_TOL)
    pred = clf.predict(X)
    assert out["label"].shape == pred.shape
    y_type = clf._label_binarizer.y_type_
    if y_type == "multiclass":
        keep = _decided(proba, False)
    elif y_type == "binary":
        keep = _decided(proba[:, 1], True)
    else:
        keep = _decided(proba, True)
    assert keep.mean() > 0.9      # the comparison covers nearly every row
    assert np.array_equal(out["label"][keep], pred[keep])
    return float(np.abs(out["probabilities"] - proba).max())


def check_regressor(reg, X=X_TEST):
    out = _run(reg.to_onnx(), X)["variable"]
    pred = reg.predict(X)
    assert out.shape == (len(X), reg.n_outputs_)
    np.testing.assert_allclose(out, pred.reshape(len(X), -1), **REG_TOL)
    return float(np.abs(out - pred.reshape(len(X), -1)).max())


@pytest.mark.parametrize("activation", fastmlp.ACTIVATIONS)
def test_every_activation(activation):
    # every activation fastmlp has: a new one must be added to the export
    clf = MLPClassifier((12, 8), activation=activation, max_iter=40, random_state=0)
    check_classifier(clf.fit(X, CLASSES3))
    reg = MLPRegressor((12,), activation=activation, max_iter=40, random_state=0)
    check_regressor(reg.fit(X, X[:, 0] - X[:, 1] ** 2))


def test_gelu_far_from_zero():
    # the cube in gelu's tanh approximation: large inputs, both signs
    reg = MLPRegressor((16,), activation="gelu", max_iter=40, random_state=0)
    reg.fit(X, X[:, 0] * 3)
    check_regressor(reg, X_TEST * 20)


def test_per_layer_activations_normalization_and_dropout():
    clf = MLPClassifier((16, 12, 8), activation=["gelu", "leaky_relu", "tanh"],
                        normalization=["layer", "batch", None], dropout=[0.2, 0.1, 0.0],
                        max_iter=40, random_state=0).fit(X, CLASSES3)
    check_classifier(clf)


@pytest.mark.parametrize("normalization", ["layer", "batch"])
def test_normalization(normalization):
    clf = MLPClassifier((16, 8), normalization=normalization, max_iter=40, random_state=0)
    clf.fit(X * 3 + 1, CLASSES3)
    if normalization == "batch":
        # the running statistics moved away from (0, 1): the export must use them
        assert not np.allclose(clf.running_stats_[1], 1, atol=0.1)
    check_classifier(clf, X_TEST * 3 + 1)
    reg = MLPRegressor((16, 8), normalization=normalization, max_iter=40, random_state=0)
    check_regressor(reg.fit(X, X[:, 0] + X[:, 2]))


def test_dropout_is_the_identity_at_inference():
    clf = MLPClassifier((32,), dropout=0.5, max_iter=40, random_state=0).fit(X, CLASSES3)
    check_classifier(clf)


@pytest.mark.parametrize("labels", [
    np.array(["cat", "dog", "émeu"]), np.array([10, -3, 7]), np.array([1.0, -2.0, 5.0])],
    ids=["str", "int", "float"])
def test_multiclass_labels_of_any_dtype(labels):
    y = labels[CLASSES3]
    clf = MLPClassifier((10,), max_iter=40, random_state=0).fit(X, y)
    check_classifier(clf)


@pytest.mark.parametrize("labels", [np.array(["no", "yes"]), np.array([3, 8]),
                                    np.array([False, True])], ids=["str", "int", "bool"])
def test_binary(labels):
    y = labels[(X[:, 0] + X[:, 1] > 0).astype(int)]
    clf = MLPClassifier((10,), activation="tanh", max_iter=40, random_state=0).fit(X, y)
    assert clf.n_outputs_ == 1
    check_classifier(clf)


def test_one_class():
    # LabelBinarizer predicts the one class whatever the output; predict_proba has two columns
    clf = MLPClassifier((4,), max_iter=5, random_state=0).fit(X, np.full(len(X), "only"))
    out = _run(clf.to_onnx(), X_TEST)
    assert np.array_equal(out["label"], clf.predict(X_TEST))
    np.testing.assert_allclose(out["probabilities"], clf.predict_proba(X_TEST), **PROBA_TOL)


def test_object_string_labels():
    y = np.array(["a", "b", "c"], dtype=object)[CLASSES3]
    clf = MLPClassifier((10,), max_iter=40, random_state=0).fit(X, y)
    check_classifier(clf)


def test_multilabel():
    Y = np.stack([X[:, 0] > 0, X[:, 1] > 0, X[:, 0] * X[:, 2] > 0], axis=1).astype(int)
    clf = MLPClassifier((16,), max_iter=60, random_state=0).fit(X, Y)
    assert clf._label_binarizer.y_type_ == "multilabel-indicator"
    check_classifier(clf)
    out = _run(clf.to_onnx(), X_TEST)
    assert out["label"].dtype == np.int64 and out["label"].shape == (len(X_TEST), 3)


def test_regressor_outputs_and_poisson():
    check_regressor(MLPRegressor((12,), max_iter=40, random_state=0).fit(X, X[:, 0]))
    Y = np.stack([X[:, 0], X[:, 1] * X[:, 2], -X[:, 3]], axis=1)
    check_regressor(MLPRegressor((12, 6), max_iter=40, random_state=0).fit(X, Y))
    counts = np.random.default_rng(0).poisson(np.exp(0.5 * X[:, 0]))
    reg = MLPRegressor((12,), loss="poisson", max_iter=40, random_state=0).fit(X, counts)
    assert reg.out_activation_ == "exp"
    check_regressor(reg)


def test_lbfgs_fit_and_float64_input_rounded_as_fastmlp_rounds_it():
    clf = MLPClassifier((10,), solver="lbfgs", max_iter=50, random_state=0)
    clf.fit(X.astype(np.float64), CLASSES3)
    check_classifier(clf, X_TEST.astype(np.float64).astype(np.float32))


def test_file_round_trip(tmp_path):
    clf = MLPClassifier((10,), max_iter=20, random_state=0).fit(X, CLASSES3)
    path = tmp_path / "clf.onnx"
    model = clf.to_onnx(path)
    loaded = onnx.load(str(path))
    assert loaded.SerializeToString() == model.SerializeToString()
    assert [i.name for i in loaded.graph.input] == ["X"]
    assert [o.name for o in loaded.graph.output] == ["label", "probabilities"]
    assert loaded.opset_import[0].version == onnx_export.OPSET
    np.testing.assert_allclose(_run(loaded, X_TEST)["probabilities"], clf.predict_proba(X_TEST),
                               **PROBA_TOL)


def test_clear_errors():
    with pytest.raises(NotFittedError):
        MLPClassifier().to_onnx()
    with pytest.raises(TypeError, match="fastmlp MLPClassifier or MLPRegressor"):
        onnx_export.to_onnx(object())
    from sklearn.neural_network import MLPClassifier as SklearnMLP
    sk = SklearnMLP((4,), max_iter=5, random_state=0).fit(X, CLASSES3)
    with pytest.raises(TypeError, match="got MLPClassifier"):
        onnx_export.to_onnx(sk)       # scikit-learn's own: skl2onnx converts it, not fastmlp
    clf = MLPClassifier((4,), max_iter=5, random_state=0).fit(X, CLASSES3)
    with pytest.raises(TypeError, match="path"):
        clf.to_onnx(path=3)
    clf.activation = "softsign"        # no such fastmlp activation: refused by name
    with pytest.raises(ValueError, match="activation 'softsign' is not supported"):
        clf.to_onnx()
    clf.activation = "relu"
    clf.classes_ = np.array([b"a", b"b", b"c"])
    with pytest.raises(TypeError, match="classes_ of dtype"):
        clf.to_onnx()
    reg = MLPRegressor((4,), max_iter=5, random_state=0).fit(X, X[:, 0])
    reg.out_activation_ = "softmax"
    with pytest.raises(ValueError, match="output activation 'softmax'"):
        reg.to_onnx()


def test_skl2onnx_converts_the_estimators_and_a_pipeline():
    skl2onnx = pytest.importorskip("skl2onnx")
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    fastmlp.estimators.register_skl2onnx()
    clf = MLPClassifier((12,), normalization="layer", max_iter=40, random_state=0)
    clf.fit(X, np.array(["a", "b", "c"])[CLASSES3])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = skl2onnx.to_onnx(clf, X[:1].astype(np.float64))
    out = _run(model, X_TEST.astype(np.float64))
    np.testing.assert_allclose(out["probabilities"], clf.predict_proba(X_TEST), **PROBA_TOL)
    keep = _decided(clf.predict_proba(X_TEST), False)
    assert np.array_equal(out["label"][keep], clf.predict(X_TEST)[keep])

    pipe = make_pipeline(StandardScaler(), MLPRegressor((12,), max_iter=40, random_state=0))
    pipe.fit(X * 5 + 2, X[:, :2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = skl2onnx.to_onnx(pipe, X[:1] * 5 + 2)
    out = _run(model, X_TEST * 5 + 2)["variable"]
    np.testing.assert_allclose(out, pipe.predict(X_TEST * 5 + 2), **REG_TOL)
