"""The `fastmlp` command end to end: `python -m fastmlp ...` in a subprocess, run from a temporary
directory with PYTHONPATH pointing at the package under test (not whatever a checkout in the
working directory would shadow it with)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastmlp
from fastmlp import datasets
from fastmlp.io import read_classes, read_model
from fastmlp.testing import assert_bitwise_equal
from fastmlp.tools import bench
from fastmlp.tools.bench import context

PACKAGE_PARENT = str(Path(fastmlp.__file__).resolve().parent.parent)
ACCURACY = re.compile(r"test accuracy ([\d.]+)% on ([\d,]+) samples")


def run(args, cwd, env=None, check=True):
    environment = dict(os.environ, PYTHONPATH=PACKAGE_PARENT, **(env or {}))
    result = subprocess.run([sys.executable, "-m", "fastmlp", *args], cwd=cwd, env=environment,
                            capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        pytest.fail(f"fastmlp {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


def summary(stdout):
    """(accuracy in %, number of test samples) from the closing summary line."""
    match = ACCURACY.search(stdout)
    assert match, f"no summary line in:\n{stdout}"
    return float(match.group(1)), int(match.group(2).replace(",", ""))


def test_version(tmp_path):
    assert run(["--version"], tmp_path).stdout.strip() == f"fastmlp {fastmlp.__version__}"


def test_info_json(tmp_path):
    report = json.loads(run(["info", "--json"], tmp_path).stdout)
    for key in ("version", "cpu", "isa", "supported_isas", "num_threads", "openmp",
                "peak_gflops", "memory_bandwidth_gbps", "blas", "openblas_coretype"):
        assert key in report
    assert report["version"] == fastmlp.__version__
    assert report["isa"] in report["supported_isas"]
    assert set(report["peak_gflops"]) == {"1", str(report["num_threads"])}
    assert all(gf > 0 for gf in report["peak_gflops"].values())
    assert report["memory_bandwidth_gbps"] > 0


def test_info_text_warns_about_forced_blas_kernel(tmp_path):
    result = run(["info"], tmp_path, env={"OPENBLAS_CORETYPE": "Haswell"})
    assert f"isa            {fastmlp.info()['isa']}" in result.stdout
    assert "GFLOP/s" in result.stdout and "GB/s" in result.stdout
    assert "OPENBLAS_CORETYPE=Haswell" in result.stderr


def test_train_bundled_sample_and_save(tmp_path):
    result = run(["train", "--epochs", "3", "--hidden", "32", "--limit", "2000",
                  "--save", "model.safetensors"], tmp_path)
    accuracy, n_test = summary(result.stdout)
    assert n_test == 2000               # the last 2,000 images of the sample
    assert accuracy > 75
    # stderr is a pipe, not a terminal: one plain progress line per epoch
    assert len(re.findall(r"^epoch \d/3 .* loss [\d.]+ [\d,]+ samples/s$", result.stderr,
                          re.M)) == 3
    assert "\r" not in result.stderr
    # the saved file is the classifier the summary scored (read without scikit-learn: its
    # layers by hand, as MLPClassifier.predict runs them)
    f = read_model(tmp_path / "model.safetensors", ("MLPClassifier",))
    assert f.layer_sizes == [784, 32, 10] and f.out_activation == "softmax"
    classes, y_type = read_classes(f)
    assert y_type == "multiclass" and classes.tolist() == list(range(10))
    images, labels = datasets.load_sample()
    X_test = datasets.prepare_images(images[8000:])
    hidden = np.maximum(X_test @ f.coefs[0] + f.intercepts[0], 0)
    predicted = classes[(hidden @ f.coefs[1] + f.intercepts[1]).argmax(axis=1)]
    assert 100 * np.mean(predicted == labels[8000:]) == pytest.approx(accuracy, abs=0.005)


def blobs(n, seed=0):
    """Three well separated Gaussian blobs in 4-D, labelled 10, 20, 30 (not 0..C-1)."""
    rng = np.random.default_rng(seed)
    y = rng.choice([10, 20, 30], n)
    centres = {10: [2, 0, 0, 0], 20: [0, 2, 0, 0], 30: [0, 0, 2, 0]}
    X = np.array([centres[c] for c in y], np.float32) + 0.3 * rng.standard_normal((n, 4))
    return X.astype(np.float32), y


def test_train_npz_with_validation_split(tmp_path):
    X, y = blobs(500)
    np.savez(tmp_path / "blobs.npz", X=X, y=y)
    result = run(["train", "--data", "blobs.npz", "--epochs", "15", "--hidden", "16",
                  "--batch-size", "32", "--validation-split", "0.1"], tmp_path)
    accuracy, n_test = summary(result.stdout)
    assert n_test == 100                # the default --test-split 0.2
    assert accuracy > 90
    assert re.search(r"^epoch 15/15 .* val acc [\d.]+%$", result.stderr, re.M)


def test_train_sparse_npz_with_labels(tmp_path):
    """A scipy.sparse.save_npz file (it holds no labels: --labels gives them) trains on the
    sparse kernels; without --labels the command says what is missing."""
    sp = pytest.importorskip("scipy.sparse")
    X, y = blobs(500)
    X = sp.csr_matrix(np.where(np.abs(X) > 1.0, X, 0.0))        # about a third nonzero
    sp.save_npz(tmp_path / "x.npz", X)
    np.save(tmp_path / "y.npy", y)
    result = run(["train", "--data", "x.npz", "--labels", "y.npy", "--epochs", "15",
                  "--hidden", "16", "--batch-size", "32", "--validation-split", "0.1"], tmp_path)
    accuracy, n_test = summary(result.stdout)
    assert n_test == 100 and accuracy > 80
    missing = run(["train", "--data", "x.npz"], tmp_path, check=False)
    assert missing.returncode != 0 and "--labels" in missing.stderr


def test_train_csv_with_test_split_and_profile(tmp_path):
    X, y = blobs(400, seed=1)
    rows = ["a,b,c,d,label"] + [",".join(f"{v:.4f}" for v in x) + f",{c}" for x, c in zip(X, y)]
    (tmp_path / "blobs.csv").write_text("\n".join(rows) + "\n")
    result = run(["train", "--data", "blobs.csv", "--test-split", "0.25", "--epochs", "15",
                  "--hidden", "16", "--batch-size", "32", "--solver", "rmsprop", "--profile",
                  "--quiet"], tmp_path)
    accuracy, n_test = summary(result.stdout)
    assert n_test == 100
    assert accuracy > 90
    assert result.stderr == ""          # --quiet: no progress
    # the kernel table of the run: the 4-16-3 net's forward GEMM; its RMSProp update: where
    # "auto" fuses at batch 32 (TrainStep note p), each weight matrix's inside the product of its
    # gradient, then one pass over the 16 + 3 biases; elsewhere one pass over all 131 parameters
    assert "matmul NN 32x16x4 +bias +relu [blocked]" in result.stdout
    if fastmlp.core.FUSE_AUTO_MAX_BATCH >= 32:
        assert "matmul TN 4x16x32 +update [blocked]" in result.stdout
        assert "rmsprop_update n=19" in result.stdout
    else:
        assert "matmul TN 4x16x32 [blocked]" in result.stdout
        assert "rmsprop_update n=131" in result.stdout


def test_train_reports_bad_data_without_traceback(tmp_path):
    (tmp_path / "broken.npz").write_bytes(b"not a zip archive")
    result = run(["train", "--data", "broken.npz"], tmp_path, check=False)
    assert result.returncode != 0
    assert "broken.npz: not a readable .npz archive" in result.stderr
    assert "Traceback" not in result.stderr


def test_bench_quick_json_and_plot(tmp_path):
    want_plot = True
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        want_plot = False
    args = ["bench", "--quick", "--json", "out.json"] + (["--plot", "out.png"] * want_plot)
    run(args, tmp_path)
    report = json.loads((tmp_path / "out.json").read_text())
    ctx = report["context"]
    # one context schema for every benchmark (fastmlp.tools.bench.context)
    assert set(ctx) == set(context()) | {"peak_gflops", "peak_gflops_by_threads"}
    assert ctx["fastmlp_version"] == fastmlp.__version__
    assert set(ctx["versions"]) == {"python", "numpy", "scikit-learn", "torch", "jax"}
    assert ctx["versions"]["numpy"] == np.__version__
    for b in ctx["blas"]:
        assert set(b) == {"internal_api", "version", "architecture", "num_threads", "library"}
    names = [r["name"] for r in report["results"]]
    for kernel in ("matmul fwd", "matmul dW", "matmul dX", "bias_activation",
                   "activation_backward", "bias_grad", "softmax_cross_entropy",
                   "sigmoid_cross_entropy", "mse_loss", "sgd_update", "rmsprop_update",
                   "adam_update", "train step"):
        assert any(n.startswith(kernel) for n in names), kernel
    for r in report["results"]:
        assert r["flops"] > 0 and r["bytes"] > 0
        assert r["speedup_vs_reference"] > 0
        # the spread of the repeats comes with every median
        assert r["fastmlp_seconds_min"] <= r["fastmlp_seconds"] <= r["fastmlp_seconds_max"]
        assert r["noisy"] == (r["fastmlp_seconds_max"] > bench.NOISY * r["fastmlp_seconds_min"])
        # NumPy's BLAS is compared on products only
        assert (r["speedup_vs_blas"] is not None) == r["name"].startswith("matmul")
    if want_plot:
        assert (tmp_path / "out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        pytest.skip("matplotlib is not installed: the --plot part was not run")


def test_train_norm_clip_diagnose_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    result = run(["train", "--epochs", "2", "--hidden", "32,16", "--limit", "2000", "--norm",
                  "batch", "--clip", "1.0", "--diagnose", "--plot", "diag.png", "--save",
                  "m.safetensors"], tmp_path)
    accuracy, _ = summary(result.stdout)
    assert accuracy > 60
    # one per-layer table for the first and one for the last epoch: 3 layers each
    assert len(re.findall(r"^epoch [12]: loss [\d.]+, gradient norm", result.stdout, re.M)) == 2
    rows = re.findall(r"^ +(\d) +(relu|output) +([\d.e+-]+) ", result.stdout, re.M)
    assert [r[0] for r in rows] == ["0", "1", "2"] * 2
    assert all(float(r[2]) > 0 for r in rows)
    assert (tmp_path / "diag.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    f = read_model(tmp_path / "m.safetensors", ("MLPClassifier",))
    assert f.doc["normalization"] == ["batch", "batch"]
    # the running statistics moved away from their start (zeros, ones) and were saved
    assert not np.allclose(f.norms["norm.0.running_mean"], 0)


def test_train_plot_needs_diagnose(tmp_path):
    result = run(["train", "--plot", "x.png"], tmp_path, check=False)
    assert result.returncode != 0 and "--diagnose" in result.stderr


def test_busy_warning_and_spread():
    assert bench.busy_warning({1: 100.0, 2: 190.0}) is None
    warning = bench.busy_warning({"1": 100.0, "2": 140.0})
    assert "below 1.5x the 1-thread peak" in warning and "busy" in warning
    assert bench.busy_warning({1: 100.0}) is None
    assert bench.spread([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0}


def test_bench_never_prints_more_than_the_peak(capsys):
    from fastmlp.tools.cli import _print_result
    r = dict(name="case", fastmlp_seconds=1e-3, fastmlp_seconds_min=9e-4,
             fastmlp_seconds_max=2e-3, gflops=120.0, gbps=1.0, percent_of_peak=104.0,
             speedup_vs_reference=2.0, speedup_vs_blas=None, noisy=True)
    _print_result(r)
    out = capsys.readouterr().out
    assert "104" not in out and ">peak" in out and "(noisy)" in out


class _Terminal:
    """A stream that says it is a terminal, recording what is written."""

    def __init__(self):
        self.text = ""

    def isatty(self):
        return True

    def write(self, s):
        self.text += s

    def flush(self):
        pass


@pytest.mark.parametrize("columns", [40, 120])
def test_progress_fits_the_terminal_and_shows_elapsed_and_eta(columns, monkeypatch):
    from fastmlp.tools.cli import Progress
    clock = iter(range(100, 10_000, 5))        # 5 s between readings of perf_counter
    monkeypatch.setattr("fastmlp.tools.cli.time.perf_counter", lambda: next(clock))
    term = _Terminal()
    p = Progress(epochs=2, n_samples=1000, stream=term, columns=columns)
    p.update(1, 500, 0.5, 1234.0)
    p.end_epoch(1, 0.4, 1200.0, None)
    redraws = [r for r in term.text.replace("\n", "\r").split("\r") if r]
    assert len(redraws) == 2
    for r in redraws:
        # every redraw fits the width (an erase-to-end code after it): no wrapped lines
        assert len(r.replace("\x1b[K", "")) <= columns - 1, r
    if columns >= 120:
        assert "elapsed, ETA" in redraws[0]
        # 500 of 2,000 samples in the elapsed time so far: 3 x that time left
        elapsed, eta = redraws[0].split("samples/s, ")[1].split(" elapsed, ETA ")
        to_s = lambda t: sum(int(x) * 60 ** i for i, x in enumerate(reversed(t.split(":"))))
        assert to_s(eta.replace("\x1b[K", "")) == 3 * to_s(elapsed)
    assert term.text.endswith("\n")


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child needs POSIX signals")
def test_ctrl_c_prints_the_summary_and_still_saves(tmp_path):
    """Ctrl-C during training ends training, not the command: the summary of the model reached
    is printed, --save writes it, and the exit code is 130 (the shell's for Ctrl-C)."""
    import signal
    saved = tmp_path / "m.safetensors"
    environment = dict(os.environ, PYTHONPATH=PACKAGE_PARENT)
    proc = subprocess.Popen([sys.executable, "-m", "fastmlp", "train", "--epochs", "100000",
                             "--hidden", "32", "--save", str(saved)], cwd=tmp_path,
                            env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT,
                                                                       signal.SIG_DFL))
    line = ""
    while "epoch 2/" not in line:             # training is under way (one line per epoch)
        line = proc.stderr.readline()
        assert line or proc.poll() is None, "fastmlp train ended before training"
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("fastmlp train did not stop on SIGINT")
    assert proc.returncode == 130, err
    assert "interrupted in epoch" in err
    accuracy, n_test = summary(out)
    assert n_test > 0 and accuracy > 50
    assert f"saved the model to {saved}" in out
    assert read_model(saved, ("MLPClassifier",)).layer_sizes[1] == 32


def test_integer_tables_are_not_taken_for_pixels():
    from fastmlp.tools.cli import _features
    table = np.array([[0, 16, 3], [1000, 2, 7]], dtype=np.int64)    # digits-like, and > 255
    assert_bitwise_equal(_features(table), table.astype(np.float32))
    assert_bitwise_equal(_features(table, 255.0), table.astype(np.float32) / np.float32(255))
    images = np.zeros((2, 3, 3), np.uint8) + 51                       # IDX-like: scaled
    assert_bitwise_equal(_features(images), np.full((2, 9), 0.2, np.float32))


def test_a_continuous_target_is_refused_unless_forced(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 3)).astype(np.float32)
    np.savez(tmp_path / "reg.npz", X=X, y=X[:, 0] * 1.7 + 0.1)
    r = run(["train", "--data", "reg.npz", "--epochs", "1"], tmp_path, check=False)
    assert r.returncode != 0 and "looks continuous" in r.stderr and "Traceback" not in r.stderr
    # whole-number floats are classes; --task classification forces any values to be classes
    np.savez(tmp_path / "cls.npz", X=X, y=(X[:, 0] > 0).astype(np.float64))
    run(["train", "--data", "cls.npz", "--epochs", "1", "--quiet"], tmp_path)
    np.savez(tmp_path / "few.npz", X=X, y=np.where(X[:, 0] > 0, 0.5, 1.5))
    run(["train", "--data", "few.npz", "--epochs", "1", "--quiet", "--task", "classification"],
        tmp_path)


def test_the_test_split_is_shuffled_and_stratified():
    from fastmlp.tools.cli import split_rows
    y = np.repeat([0, 1, 2], [50, 30, 20])          # a file sorted by label
    train, test = split_rows(y, 20, seed=0)
    assert sorted(np.concatenate([train, test])) == list(range(100))
    assert sorted(np.bincount(y[test])) == [4, 6, 10]      # each class its share
    again, other = split_rows(y, 20, seed=0), split_rows(y, 20, seed=1)
    assert np.array_equal(again[1], test) and not np.array_equal(other[1], test)
    strings = np.array(["cat", "dog"] * 10)
    assert set(strings[split_rows(strings, 4, 0)[1]]) == {"cat", "dog"}


# ---- --save writes a classifier that predicts the file's labels ------------------------------


def held_out(X, y, test_split=0.2, seed=0):
    """The rows `fastmlp train` holds out as its test set (the same split, from its own code)."""
    from fastmlp.tools.cli import split_rows
    n_test = max(1, int(round(len(y) * test_split)))
    test = split_rows(y, n_test, seed)[1]
    return X[test], y[test]


def check_saved_classifier(path, X_test, y_test, printed_accuracy):
    """The file loads as a fitted MLPClassifier whose predict gives labels (1-D, of y's kind:
    not the scores of a raw MLP) scoring the accuracy the CLI printed; returns them."""
    pytest.importorskip("sklearn")
    clf = fastmlp.load(path)
    assert isinstance(clf, fastmlp.MLPClassifier)
    predicted = clf.predict(X_test)
    assert predicted.shape == (len(y_test),)          # a raw MLP gave (n, n_classes) scores
    assert predicted.dtype.kind == y_test.dtype.kind
    assert set(predicted.tolist()) <= set(y_test.tolist())
    assert 100 * np.mean(predicted == y_test) == pytest.approx(printed_accuracy, abs=0.005)
    proba = clf.predict_proba(X_test)
    assert proba.shape == (len(y_test), len(clf.classes_))
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_array_equal(clf.classes_[proba.argmax(axis=1)], predicted)
    return clf


def test_csv_with_string_labels_trains_and_saves_a_classifier_of_those_labels(tmp_path):
    X, codes = blobs(400, seed=2)
    names = {10: "setosa", 20: "versicolor", 30: "virginica"}
    # no header: the first line is data (its label cell is text, as below it)
    rows = [",".join(f"{v:.4f}" for v in x) + f",{names[c]}" for x, c in zip(X, codes)]
    (tmp_path / "iris.csv").write_text("\n".join(rows) + "\n")
    result = run(["train", "--data", "iris.csv", "--epochs", "10", "--hidden", "16",
                  "--batch-size", "32", "--save", "m.safetensors"], tmp_path)
    accuracy, n_test = summary(result.stdout)
    assert accuracy > 90
    assert "predict gives labels [setosa, versicolor, virginica]" in result.stdout
    X_csv, y = datasets.load_csv(tmp_path / "iris.csv")
    assert len(y) == 400 and y.dtype.kind == "U"     # the first line is a sample too
    X_test, y_test = held_out(X_csv, y)
    assert len(y_test) == n_test
    clf = check_saved_classifier(tmp_path / "m.safetensors", X_test, y_test, accuracy)
    assert clf.classes_.tolist() == ["setosa", "versicolor", "virginica"]
    assert clf.n_features_in_ == 4 and clf.n_iter_ == 10 and len(clf.loss_curve_) == 10


@pytest.mark.parametrize("norm", [None, "layer", "batch"])
def test_integer_labels_come_back_as_themselves_with_every_norm(tmp_path, norm):
    X, y = blobs(500, seed=3)
    y = np.select([y == 10, y == 20], [3, 7], 12)       # classes 3, 7, 12: not 0..C-1
    np.savez(tmp_path / "d.npz", X=X, y=y)
    result = run(["train", "--data", "d.npz", "--epochs", "10", "--hidden", "16,8",
                  "--batch-size", "32", "--save", "m.safetensors"]
                 + (["--norm", norm] if norm else []), tmp_path)
    accuracy, _ = summary(result.stdout)
    assert accuracy > 85
    clf = check_saved_classifier(tmp_path / "m.safetensors", *held_out(X, y), accuracy)
    assert clf.classes_.tolist() == [3, 7, 12] and clf.classes_.dtype.kind == "i"
    assert clf.normalization == norm
    if norm == "batch":     # the running statistics moved from their start and were saved
        assert not np.allclose(clf.running_stats_[0], 0)


def test_two_classes_save_as_a_binary_classifier(tmp_path):
    """Two classes give scikit-learn's binary form (one logistic output, from the softmax
    pair); labels from a --labels text file are typed: -1 and 1 are integers."""
    sp = pytest.importorskip("scipy.sparse")
    X, y = blobs(500, seed=4)
    y = np.where(y == 10, -1, 1)
    sp.save_npz(tmp_path / "x.npz", sp.csr_matrix(X))
    (tmp_path / "y.txt").write_text("".join(f" {v}\n" for v in y))
    result = run(["train", "--data", "x.npz", "--labels", "y.txt", "--epochs", "10",
                  "--hidden", "16", "--batch-size", "32", "--save", "m.safetensors"], tmp_path)
    accuracy, _ = summary(result.stdout)
    assert accuracy > 90
    clf = check_saved_classifier(tmp_path / "m.safetensors", *held_out(X, y), accuracy)
    assert clf.classes_.tolist() == [-1, 1] and clf.n_outputs_ == 1
    assert clf.out_activation_ == "logistic"


def test_train_and_save_need_no_scikit_learn_and_load_says_it_does(tmp_path):
    """`train --save` runs with scikit-learn unimportable; fastmlp.load of the file then
    raises ImportError naming scikit-learn, and fastmlp.io still reads the file."""
    X, y = blobs(200, seed=5)
    np.savez(tmp_path / "d.npz", X=X, y=np.array(["a", "b", "c"])[(y // 10) - 1])
    script = f"""
import sys
sys.modules["sklearn"] = None         # import sklearn raises ImportError
from fastmlp.tools.cli import main
import fastmlp, fastmlp.io
main(["train", "--data", "d.npz", "--epochs", "1", "--quiet", "--save", "m.safetensors"])
f = fastmlp.io.read_model("m.safetensors", ("MLPClassifier",))
print(fastmlp.io.read_classes(f)[0].tolist())
try:
    fastmlp.load("m.safetensors")
except ImportError as e:
    print("ImportError:", e)
"""
    r = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=PACKAGE_PARENT))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[-2] == "['a', 'b', 'c']"
    assert lines[-1].startswith("ImportError:") and "scikit-learn" in lines[-1]


def test_labels_the_model_file_cannot_keep_are_refused_before_training(tmp_path):
    X, _ = blobs(50)
    np.savez(tmp_path / "c.npz", X=X, y=np.ones(50, np.complex64))
    r = run(["train", "--data", "c.npz", "--epochs", "1"], tmp_path, check=False)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "labels must be numbers or strings, got dtype complex64" in r.stderr
    (tmp_path / "bad.csv").write_text("1,2,a\n3,x,b\n")
    r = run(["train", "--data", "bad.csv", "--epochs", "1"], tmp_path, check=False)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "bad.csv, line 2, column 2: 'x' is not a finite number" in r.stderr
