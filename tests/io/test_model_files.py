"""Model files (fastmlp.io): a saved MLP reads back bit for bit, and every kind of damage to a
file is a ModelFileError saying what is wrong, never a crash or code execution. No
scikit-learn: the estimators' own metadata is tested in tests/estimators.
"""
import json
import struct

import numpy as np
import pytest

import fastmlp
from fastmlp import io
from fastmlp.core import flat_buffer
from fastmlp.io import ModelFileError, safetensors
from fastmlp.model import MLP
from fastmlp.testing import assert_bitwise_equal

from conftest import rewrite_meta


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = MLP([4, 3, 2], "tanh", dropout=0.1, random_state=0)
    path = tmp_path_factory.mktemp("models") / "m.safetensors"
    model.save(path)
    return model, path, path.read_bytes()


def test_mlp_round_trips(saved):
    model, path, _ = saved
    back = fastmlp.load(path)
    x = np.ones((2, 4), np.float32)
    assert_bitwise_equal(back.predict(x), model.predict(x))
    assert back.seed == model.seed and back.dropout == model.dropout
    assert back.init == model.init and back.activations == model.activations
    assert flat_buffer(back.params) is not None      # ready for train_step


def test_file_is_plain_safetensors(saved):
    """The tensors and metadata read back through the format layer alone, interleaved as
    coefs.i, intercepts.i."""
    model, path, raw = saved
    meta, tensors = safetensors.read_file(path, io.MAX_BYTES)
    assert list(tensors) == ["coefs.0", "intercepts.0", "coefs.1", "intercepts.1"]
    for name, p in zip(tensors, model.params):
        assert_bitwise_equal(tensors[name], p)
    doc = json.loads(meta["fastmlp"])
    assert doc["kind"] == "MLP" and doc["layer_sizes"] == [4, 3, 2]
    assert doc["format_version"] == io.FORMAT_VERSION
    assert struct.unpack("<Q", raw[:8])[0] % 8 == 0      # data aligned to 8 bytes


def test_round_trip_through_the_safetensors_package(saved, tmp_path):
    """fastmlp's files are what the reference implementation (Hugging Face's safetensors
    package) reads: the same tensors, bit for bit, and the metadata; and a file that package
    writes from those tensors and metadata is one fastmlp loads, predicting the same."""
    st = pytest.importorskip("safetensors.numpy")
    from safetensors import safe_open
    model, path, _ = saved
    theirs = st.load_file(str(path))
    meta, ours = safetensors.read_file(path, io.MAX_BYTES)
    assert list(theirs) == list(ours)
    for name in ours:
        assert theirs[name].dtype == np.float32
        assert_bitwise_equal(theirs[name], ours[name])
    with safe_open(str(path), framework="numpy") as f:
        assert f.metadata() == meta
    written = tmp_path / "by_safetensors.safetensors"
    st.save_file(theirs, str(written), metadata=meta)
    back = fastmlp.load(written)
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    assert_bitwise_equal(back.predict(x), model.predict(x))


def _set(key, value):
    return lambda doc: doc.__setitem__(key, value)


@pytest.mark.parametrize("corrupt,match", [
    (lambda raw: raw[:-7], "truncated|bytes"),
    (lambda raw: raw[:5], "truncated"),
    (lambda raw: raw[:20] + bytes([raw[20] ^ 0x55]) + raw[21:], "corrupt|tensor|fastmlp"),
    (lambda raw: rewrite_meta(raw, _set("layer_sizes", [4, 5, 2])), "shape"),
    (lambda raw: rewrite_meta(raw, _set("activations", ["os.system"])), "unknown activation"),
    (lambda raw: rewrite_meta(raw, _set("format_version", 99)), "format_version"),
    (lambda raw: rewrite_meta(raw, _set("kind", "Pickle")), "unknown model kind"),
    (lambda raw: rewrite_meta(raw, _set("out_activation", "eval")), "output activation"),
    (lambda raw: rewrite_meta(raw, _set("dropout", [2.0])), "dropout"),
    (lambda raw: rewrite_meta(raw, _set("seed", "-1")), "seed"),
    (lambda raw: raw[:-4] + np.float32(np.nan).tobytes(), "non-finite"),
])
def test_load_rejects_bad_files(saved, tmp_path, corrupt, match):
    _, _, raw = saved
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(corrupt(raw))
    with pytest.raises(ModelFileError, match=match):
        fastmlp.load(bad)


def test_load_rejects_a_safetensors_file_of_another_program(tmp_path):
    path = tmp_path / "other.safetensors"
    safetensors.write_file(path, {"w": np.ones(3, np.float32)}, {"format": "pt"})
    with pytest.raises(ModelFileError, match="not a fastmlp model"):
        fastmlp.load(path)


def test_load_size_cap(saved):
    _, path, _ = saved
    with pytest.raises(ValueError, match="cap"):
        fastmlp.load(path, max_bytes=100)


@pytest.mark.parametrize("norm", ["layer", "batch", [None, "batch"]])
def test_normalized_mlp_round_trips(tmp_path, norm):
    model = MLP([6, 5, 4, 3], "relu", normalization=norm, random_state=0)
    rng = np.random.default_rng(0)
    for p in model.params[2 * model.n_layers:] + model.running_stats:
        p[...] = rng.uniform(0.5, 1.5, p.shape)
    model.save(tmp_path / "n.safetensors")
    back = fastmlp.load(tmp_path / "n.safetensors")
    x = rng.standard_normal((7, 6)).astype(np.float32)
    assert_bitwise_equal(back.predict(x), model.predict(x))
    assert back.normalization == model.normalization
    for a, b in zip(back.params + back.running_stats, model.params + model.running_stats):
        assert_bitwise_equal(a, b)
    assert flat_buffer(back.params) is not None


def test_normalized_file_is_checked(tmp_path):
    model = MLP([6, 5, 3], "relu", normalization="batch", random_state=0)
    model.running_stats[1][0] = -1.0          # a negative variance
    model.save(tmp_path / "bad.safetensors")
    with pytest.raises(ModelFileError, match="negative variances"):
        fastmlp.load(tmp_path / "bad.safetensors")
    model.running_stats[1][0] = 1.0
    model.save(tmp_path / "n.safetensors")
    raw = (tmp_path / "n.safetensors").read_bytes()
    (tmp_path / "x.safetensors").write_bytes(
        rewrite_meta(raw, _set("normalization", ["layer"])))   # tensors of a BatchNorm
    with pytest.raises(ModelFileError, match="tensors"):
        fastmlp.load(tmp_path / "x.safetensors")
    (tmp_path / "y.safetensors").write_bytes(rewrite_meta(raw, _set("normalization", "batch")))
    with pytest.raises(ModelFileError, match="normalization"):
        fastmlp.load(tmp_path / "y.safetensors")


def test_files_without_normalization_still_load(saved):
    """A file written before normalization existed has no "normalization" entry."""
    model, path, raw = saved
    doc_free = rewrite_meta(raw, lambda d: [d.pop(k) for k in ("normalization", "norm_eps",
                                                                "norm_momentum")])
    back = fastmlp.load(__import__("io").BytesIO(doc_free))
    assert back.normalization == [None]
    x = np.ones((2, 4), np.float32)
    assert_bitwise_equal(back.predict(x), model.predict(x))
