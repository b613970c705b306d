"""Tests for fastmlp.datasets: IDX parsing, the bundled MNIST sample, MNIST download and cache
(against a local HTTP server), folder loading, NPZ, CSV and image preparation."""
import gzip
import hashlib
import http.server
import io
import os
import shutil
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

from fastmlp import datasets
from fastmlp.datasets import DatasetError

SAMPLE_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
DATA_DIR = Path(datasets.__file__).parent / "data"

# Big-endian payload dtype of each IDX type code.
IDX_TYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def idx_bytes(array, code):
    array = np.asarray(array)
    header = struct.pack(">BBBB", 0, 0, code, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(IDX_TYPES[code]).tobytes()


def random_array(code, shape, seed=0):
    rng = np.random.default_rng(seed)
    if code == 0x08:
        return rng.integers(0, 256, shape).astype(np.uint8)
    if code in (0x09, 0x0B, 0x0C):
        info = np.iinfo(np.dtype(IDX_TYPES[code]))
        return rng.integers(info.min, info.max, shape, endpoint=True).astype(IDX_TYPES[code])
    return rng.standard_normal(shape).astype(IDX_TYPES[code])


@pytest.fixture(scope="module")
def sample():
    return datasets.load_sample()


# ---------------------------------------------------------------------------- read_idx


@pytest.mark.parametrize("code", sorted(IDX_TYPES))
@pytest.mark.parametrize("shape", [(7,), (3, 4), (2, 3, 4), (2, 1, 3, 2), (0, 5)])
@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trip(tmp_path, code, shape, compress):
    expected = random_array(code, shape)
    data = idx_bytes(expected, code)
    if compress:
        data = gzip.compress(data)
    path = tmp_path / "array.idx"
    path.write_bytes(data)
    for source in (path, str(path), io.BytesIO(data)):
        got = datasets.read_idx(source)
        assert got.shape == shape
        assert got.dtype == np.dtype(IDX_TYPES[code]).newbyteorder("=")
        assert got.dtype.isnative
        np.testing.assert_array_equal(got, expected)


def test_read_idx_detects_gzip_by_content_not_name(tmp_path):
    expected = random_array(0x0C, (4, 3))
    misnamed_gz = tmp_path / "plain.idx"
    misnamed_gz.write_bytes(gzip.compress(idx_bytes(expected, 0x0C)))
    misnamed_raw = tmp_path / "compressed.gz"
    misnamed_raw.write_bytes(idx_bytes(expected, 0x0C))
    np.testing.assert_array_equal(datasets.read_idx(misnamed_gz), expected)
    np.testing.assert_array_equal(datasets.read_idx(misnamed_raw), expected)


def write(tmp_path, data, name="bad.idx"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("data, message", [
    (b"", "too short for an IDX header"),
    (b"\x00\x00\x08", "too short for an IDX header"),
    (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "first two bytes are 01 00"),
    (b"\x89PNG\r\n\x1a\n", "first two bytes are 89 50"),
    (b"\x00\x00\x0a\x01\x00\x00\x00\x01\x05", "unknown IDX type code 0x0a"),
    (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", "unknown IDX type code 0x07"),
    (b"\x00\x00\x08\x00", "0 dimensions"),
    (b"\x00\x00\x08\x03\x00\x00\x00\x02\x00\x00", "3 dimensions need 12 bytes, got 6"),
])
@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_bad_header(tmp_path, data, message, compress):
    path = write(tmp_path, gzip.compress(data) if compress else data)
    with pytest.raises(DatasetError, match=message) as info:
        datasets.read_idx(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_truncated_payload(tmp_path, compress):
    full = idx_bytes(random_array(0x0B, (3, 5)), 0x0B)
    header = 4 + 2 * 4
    for cut in (header, header + 1, header + 15, len(full) - 1):
        data = full[:cut]
        path = write(tmp_path, gzip.compress(data) if compress else data)
        with pytest.raises(DatasetError, match="payload truncated") as info:
            datasets.read_idx(path)
        assert f"needs 30 bytes, got {cut - header}" in str(info.value)
        assert str(path) in str(info.value)


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_trailing_bytes(tmp_path, compress):
    data = idx_bytes(random_array(0x08, (2, 2)), 0x08) + b"xyz"
    path = write(tmp_path, gzip.compress(data) if compress else data)
    with pytest.raises(DatasetError, match="3 unexpected trailing bytes after the 4-byte payload"):
        datasets.read_idx(path)


def test_read_idx_truncated_gzip(tmp_path):
    compressed = gzip.compress(idx_bytes(random_array(0x08, (40, 50)), 0x08))
    for cut in (3, 10, len(compressed) // 2, len(compressed) - 8, len(compressed) - 1):
        path = write(tmp_path, compressed[:cut])
        with pytest.raises(DatasetError, match="corrupt or truncated gzip data") as info:
            datasets.read_idx(path)
        assert str(path) in str(info.value)


def test_read_idx_corrupted_gzip(tmp_path):
    # Smooth images compress well, so the middle of the file is Huffman-coded data.
    images = np.add.outer(np.arange(40), np.arange(50)).astype(np.uint8)
    compressed = gzip.compress(idx_bytes(images, 0x08))
    for position in (3, len(compressed) // 2, len(compressed) - 8, len(compressed) - 2):
        damaged = bytearray(compressed)
        damaged[position] ^= 0x5A
        path = write(tmp_path, bytes(damaged))
        with pytest.raises(DatasetError) as info:
            datasets.read_idx(path)
        assert str(path) in str(info.value)
    bad_crc = compressed[:-8] + bytes([compressed[-8] ^ 1]) + compressed[-7:]
    with pytest.raises(DatasetError, match="CRC check failed"):
        datasets.read_idx(write(tmp_path, bad_crc))


def test_read_idx_garbage_after_gzip_member(tmp_path):
    data = gzip.compress(idx_bytes(random_array(0x08, (3,)), 0x08)) + b"junk"
    with pytest.raises(DatasetError, match="gzip"):
        datasets.read_idx(write(tmp_path, data))


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("ndim,match", [(4, "over max_bytes"), (255, "declares 255 dimensions")])
def test_read_idx_absurd_dims_rejected_without_allocating(tmp_path, compress, ndim, match):
    # The declared size is far beyond any memory: refused from the header, before any payload
    data = struct.pack(">BBBB", 0, 0, 0x0E, ndim) + b"\xff" * (4 * ndim) + b"\x00" * 16
    path = write(tmp_path, gzip.compress(data) if compress else data)
    with pytest.raises(DatasetError, match=match) as info:
        datasets.read_idx(path)
    assert len(str(info.value)) < 500


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_reads_only_the_bytes_present(tmp_path, compress):
    data = struct.pack(">BBBBI", 0, 0, 0x0E, 1, 1000) + b"\x00" * 16   # 8,000 bytes declared
    path = write(tmp_path, gzip.compress(data) if compress else data)
    with pytest.raises(DatasetError, match="payload truncated.*got 16"):
        datasets.read_idx(path)


def test_read_idx_bounds_a_gzip_bomb_by_its_declared_size(tmp_path):
    """A small gzip that inflates far beyond its header's dimensions is read only that far."""
    header = struct.pack(">BBBBI", 0, 0, 0x08, 1, 10)
    path = write(tmp_path, gzip.compress(header + bytes(10) + bytes(64 << 20)))
    assert path.stat().st_size < 200_000
    with pytest.raises(DatasetError, match="at least .* unexpected trailing bytes"):
        datasets.read_idx(path)
    with pytest.raises(DatasetError, match="over max_bytes=5"):
        datasets.read_idx(path, max_bytes=5)


def test_read_idx_leaves_a_descriptor_open(tmp_path):
    path = write(tmp_path, idx_bytes(random_array(0x08, (3, 2)), 0x08))
    fd = os.open(path, os.O_RDONLY)
    try:
        assert datasets.read_idx(fd).shape == (3, 2)
        os.fstat(fd)                     # still open
    finally:
        os.close(fd)


def test_read_idx_rejects_text_streams():
    with pytest.raises(TypeError, match="binary file object"):
        datasets.read_idx(io.StringIO("\x00\x00\x08\x01"))


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        datasets.read_idx(tmp_path / "absent.idx")


# ------------------------------------------------------------------------ bundled sample


def test_load_sample(sample):
    images, labels = sample
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.dtype == np.uint8
    assert labels.min() == 0 and labels.max() == 9
    counts = np.bincount(labels, minlength=10)
    assert len(counts) == 10 and counts.min() > 800 and counts.max() < 1200
    assert images.max() == 255 and images.min() == 0
    assert 25 < images.mean() < 40  # MNIST's mean pixel is about 33


def test_sample_constants_match_bundled_files():
    sizes = {"t10k-images-idx3-ubyte.gz": 1648877, "t10k-labels-idx1-ubyte.gz": 4542}
    for name in SAMPLE_FILES:
        data = (DATA_DIR / name).read_bytes()
        assert len(data) == sizes[name]
        assert hashlib.sha256(data).hexdigest() == datasets._MNIST_SHA256[name]


def test_sample_readme_has_attribution_and_licence():
    text = (DATA_DIR / "README.md").read_text(encoding="utf-8")
    for needle in ("Yann LeCun", "Corinna Cortes", "Burges", "CC BY-SA 3.0",
                   datasets._MNIST_SHA256[SAMPLE_FILES[0]]):
        assert needle in text


def test_tampered_sample_is_refused(monkeypatch):
    name = SAMPLE_FILES[1]
    actual = datasets._MNIST_SHA256[name]
    monkeypatch.setitem(datasets._MNIST_SHA256, name, "0" * 64)
    with pytest.raises(DatasetError, match="damaged") as info:
        datasets.load_sample()
    assert name in str(info.value)
    assert "expected " + "0" * 64 in str(info.value) and "got " + actual in str(info.value)


# --------------------------------------------------------------- load_mnist: download, cache


class MirrorServer:
    """A local HTTP server for one folder, counting the GET requests it answers."""

    def __init__(self, root):
        self.requests = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self):
                server.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/mnist/"
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def clean_env(monkeypatch):
    for var in ("FASTMLP_DATA", "FASTMLP_MNIST_MIRROR"):
        monkeypatch.delenv(var, raising=False)
    # A proxy configured on the test machine must not intercept requests to 127.0.0.1.
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")
    monkeypatch.setattr(datasets, "_DOWNLOAD_TIMEOUT", 5)


@pytest.fixture
def mirror(tmp_path, clean_env):
    folder = tmp_path / "served" / "mnist"
    folder.mkdir(parents=True)
    server = MirrorServer(folder.parent)
    server.folder = folder
    yield server
    server.close()


def serve_sample(mirror):
    for name in SAMPLE_FILES:
        shutil.copyfile(DATA_DIR / name, mirror.folder / name)


def test_download_verifies_and_caches(tmp_path, mirror, sample):
    serve_sample(mirror)
    cache = tmp_path / "cache"
    images, labels = datasets.load_mnist("test", download=True, mirror=mirror.url, cache_dir=cache)
    np.testing.assert_array_equal(images, sample[0])
    np.testing.assert_array_equal(labels, sample[1])
    assert sorted(mirror.requests) == ["/mnist/" + name for name in sorted(SAMPLE_FILES)]
    assert sorted(p.name for p in cache.iterdir()) == sorted(SAMPLE_FILES)

    again = datasets.load_mnist("test", download=True, mirror=mirror.url, cache_dir=cache)
    offline = datasets.load_mnist("test", cache_dir=cache)
    assert len(mirror.requests) == 2
    for got in (again, offline):
        np.testing.assert_array_equal(got[0], sample[0])
        np.testing.assert_array_equal(got[1], sample[1])


def test_download_uses_environment(tmp_path, mirror, monkeypatch):
    serve_sample(mirror)
    cache = tmp_path / "env-cache"
    monkeypatch.setenv("FASTMLP_DATA", str(cache))
    monkeypatch.setenv("FASTMLP_MNIST_MIRROR", mirror.url.rstrip("/"))
    images, labels = datasets.load_mnist("test", download=True)
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    assert sorted(p.name for p in cache.iterdir()) == sorted(SAMPLE_FILES)


def test_tampered_download_is_discarded(tmp_path, mirror):
    serve_sample(mirror)
    served = mirror.folder / SAMPLE_FILES[0]
    damaged = bytearray(served.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    served.write_bytes(bytes(damaged))
    cache = tmp_path / "cache"
    with pytest.raises(DatasetError, match="SHA-256 mismatch") as info:
        datasets.load_mnist("test", download=True, mirror=mirror.url, cache_dir=cache)
    message = str(info.value)
    assert SAMPLE_FILES[0] in message
    assert "expected " + datasets._MNIST_SHA256[SAMPLE_FILES[0]] in message
    assert "got " + hashlib.sha256(damaged).hexdigest() in message
    assert list(cache.iterdir()) == []


def test_download_http_error(tmp_path, mirror):
    cache = tmp_path / "cache"
    with pytest.raises(DatasetError, match="404") as info:
        datasets.load_mnist("test", download=True, mirror=mirror.url, cache_dir=cache)
    assert mirror.url + SAMPLE_FILES[0] in str(info.value)
    assert list(cache.iterdir()) == []


def test_download_with_custom_checksums(tmp_path, mirror):
    images = random_array(0x08, (5, 28, 28))
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    checksums = {}
    for name, array in (("train-images-idx3-ubyte.gz", images),
                        ("train-labels-idx1-ubyte.gz", labels)):
        data = gzip.compress(idx_bytes(array, 0x08))
        (mirror.folder / name).write_bytes(data)
        checksums[name] = hashlib.sha256(data).hexdigest()
    cache = tmp_path / "cache"
    with pytest.raises(DatasetError, match="SHA-256 mismatch"):
        datasets.load_mnist("train", download=True, mirror=mirror.url, cache_dir=cache)
    got = datasets.load_mnist("train", download=True, mirror=mirror.url, cache_dir=cache,
                              checksums=checksums)
    np.testing.assert_array_equal(got[0], images)
    np.testing.assert_array_equal(got[1], labels)


def test_missing_without_download_explains_options(tmp_path, clean_env):
    cache = tmp_path / "empty-cache"
    with pytest.raises(DatasetError) as info:
        datasets.load_mnist("train", cache_dir=cache)
    message = str(info.value)
    for needle in (str(cache), "train-images-idx3-ubyte.gz", "download=True", "directory=",
                   "FASTMLP_DATA", "load_sample()", datasets.DEFAULT_MNIST_MIRROR):
        assert needle in message
    assert not cache.exists()


def test_bad_subset():
    with pytest.raises(ValueError, match="'train' or 'test'"):
        datasets.load_mnist("validation")


# ----------------------------------------------------------------- load_mnist: directory


def test_directory_with_raw_files(tmp_path, sample, clean_env):
    for name in SAMPLE_FILES:
        raw = gzip.decompress((DATA_DIR / name).read_bytes())
        (tmp_path / name[:-len(".gz")]).write_bytes(raw)
    images, labels = datasets.load_mnist("test", directory=tmp_path)
    np.testing.assert_array_equal(images, sample[0])
    np.testing.assert_array_equal(labels, sample[1])


def test_directory_with_mixed_files(tmp_path, sample, clean_env):
    shutil.copyfile(DATA_DIR / SAMPLE_FILES[0], tmp_path / SAMPLE_FILES[0])
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(
        gzip.decompress((DATA_DIR / SAMPLE_FILES[1]).read_bytes()))
    images, labels = datasets.load_mnist("test", directory=str(tmp_path))
    np.testing.assert_array_equal(labels, sample[1])


def test_directory_errors(tmp_path, clean_env):
    with pytest.raises(DatasetError, match="neither train-images-idx3-ubyte.gz nor"):
        datasets.load_mnist("train", directory=tmp_path)
    with pytest.raises(ValueError, match="not both"):
        datasets.load_mnist("train", directory=tmp_path, download=True)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((3, 2, 2), "u1"), 8))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(2, "u1"), 8))
    with pytest.raises(DatasetError, match="3 images but 2 labels"):
        datasets.load_mnist("train", directory=tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.array([1, 2, 12], "u1"), 8))
    with pytest.raises(DatasetError, match="digits 0..9, found 12"):
        datasets.load_mnist("train", directory=tmp_path)


# ------------------------------------------------------------------------------ load_npz


@pytest.mark.parametrize("keys", [("X", "y"), ("x", "y"), ("x_train", "y_train"),
                                  ("X_train", "y_train")])
def test_load_npz(tmp_path, keys):
    X = random_array(0x0D, (6, 3)).astype(np.float32)
    y = np.arange(6, dtype=np.int64)
    path = tmp_path / "data.npz"
    np.savez(path, **{keys[0]: X, keys[1]: y, "x_test": X[:2]})
    got_X, got_y = datasets.load_npz(path)
    np.testing.assert_array_equal(got_X, X)
    np.testing.assert_array_equal(got_y, y)
    assert got_X.dtype == np.float32 and got_y.dtype == np.int64


def test_load_npz_errors(tmp_path):
    path = tmp_path / "keys.npz"
    np.savez(path, features=np.zeros((2, 2)), target=np.zeros(2))
    with pytest.raises(DatasetError, match=r"available keys: \['features', 'target'\]"):
        datasets.load_npz(path)

    path = tmp_path / "objects.npz"
    np.savez(path, X=np.array([{"a": 1}, None], dtype=object), y=np.zeros(2))
    with pytest.raises(DatasetError, match="allow_pickle=False"):
        datasets.load_npz(path)

    path = tmp_path / "mismatch.npz"
    np.savez(path, X=np.zeros((3, 2)), y=np.zeros(2))
    with pytest.raises(DatasetError, match="'X' has 3 rows but 'y' has 2"):
        datasets.load_npz(path)

    path = tmp_path / "single.npy"
    np.save(path, np.zeros(3))
    with pytest.raises(DatasetError, match="single .npy array"):
        datasets.load_npz(path)

    for content in (b"", b"not numpy at all", b"PK\x03\x04broken zip"):
        path = write(tmp_path, content, "garbage.npz")
        with pytest.raises(DatasetError, match="not a readable .npz archive") as info:
            datasets.load_npz(path)
        assert str(path) in str(info.value)

    with pytest.raises(FileNotFoundError):
        datasets.load_npz(tmp_path / "absent.npz")


# ------------------------------------------------------------------------------ load_csv


def write_text(tmp_path, text, name="data.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_load_csv_with_header(tmp_path):
    path = write_text(tmp_path, "\ufeffa,b,label\n1, 2.5 ,3\n\n4,5e-1,6\n")
    X, y = datasets.load_csv(path)
    np.testing.assert_array_equal(X, np.array([[1, 2.5], [4, 0.5]], np.float32))
    np.testing.assert_array_equal(y, [3, 6])
    assert X.dtype == np.float32 and y.dtype == np.int64


def test_load_csv_label_column_and_header_options(tmp_path):
    path = write_text(tmp_path, "7,1,2\n8,3,4\n")
    X, y = datasets.load_csv(path, label_column=0)
    np.testing.assert_array_equal(X, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(y, [7, 8])
    X, y = datasets.load_csv(path, skip_header=True)
    np.testing.assert_array_equal(X, [[8, 3]])
    np.testing.assert_array_equal(y, [4])
    X, y = datasets.load_csv(write_text(tmp_path, "1,0.1\n2,0.5\n", "float.csv"))
    assert y.dtype == np.float64        # each class exactly as written
    np.testing.assert_array_equal(y, [0.1, 0.5])


def test_load_csv_text_labels(tmp_path):
    # no header: a first line of numbers over a text label is data
    X, y = datasets.load_csv(write_text(tmp_path, '5.1,3.5,setosa\n4.9, 3 ,"versicolor"\n'))
    np.testing.assert_array_equal(X, np.array([[5.1, 3.5], [4.9, 3]], np.float32))
    assert y.dtype.kind == "U" and y.tolist() == ["setosa", "versicolor"]
    # a header over text labels, the label first
    X, y = datasets.load_csv(write_text(tmp_path, "species,a\nb,1\n3,2\n"), label_column=0)
    assert y.tolist() == ["b", "3"] and X.tolist() == [[1], [2]]   # one text label: all text
    # a header whose only text is the label's name, over numeric (quoted) labels
    X, y = datasets.load_csv(write_text(tmp_path, '1,2,label\n5,6,"3"\n7,8,12.0\n'))
    assert y.dtype == np.int64 and y.tolist() == [3, 12] and X.tolist() == [[5, 6], [7, 8]]


def test_typed_labels():
    assert datasets.typed_labels(np.array([" 3", "7 ", "12.0"])).tolist() == [3, 7, 12]
    assert datasets.typed_labels(np.array(["3", "7"])).dtype == np.int64
    assert datasets.typed_labels(np.array(["0.5", "1"])).dtype == np.float64
    assert datasets.typed_labels(np.array(["1e20", "1"])).dtype == np.float64   # not int64
    labels = datasets.typed_labels(np.array(["cat", " 3 "]))
    assert labels.dtype.kind == "U" and labels.tolist() == ["cat", "3"]
    for bad in (["a", ""], ["a", "nan"], ["1", "inf"]):
        with pytest.raises(ValueError):
            datasets.typed_labels(np.array(bad))


@pytest.mark.parametrize("text, message", [
    ("1,2,cat\n4,5\n", "line 2: 2 columns, but the first data row has 3"),
    ("1,2,cat\n4,5,dog,6\n", "line 2: 4 columns, but the first data row has 3"),
    ("1,2,cat\n4,five,dog\n", "line 2, column 2: 'five' is not a finite number"),
    ("1,2,cat\n4,5,\n", "line 2, column 3: empty cell"),
    ("1,2,cat\n4,5,nan\n", "line 2, column 3: 'nan' is not a finite number"),
    ("1,2,3\n4,5\n", "line 2: 2 columns, but the first data row has 3"),
    ("x,y,z\n1,2,3\n4,5,6,7\n", "line 3: 4 columns, but the first data row has 3"),
    ("1,2,3\n4,five,6\n", "line 2, column 2: 'five' is not a finite number"),
    ("1,2,3\n4,,6\n", "line 2, column 2: empty cell"),
    ("1,nan,3\n4,5,6\n", "line 1, column 2: 'nan' is not a finite number"),
    ("a,b\n1,2\n3,inf\n", "line 3, column 2: 'inf' is not a finite number"),
    ("", "no data rows"),
    ("a,b,c\n", "no data rows"),
    ("1\n2\n", "at least one feature column"),
])
def test_load_csv_errors(tmp_path, text, message):
    path = write_text(tmp_path, text)
    with pytest.raises(DatasetError, match=message) as info:
        datasets.load_csv(path)
    assert str(path) in str(info.value)


def test_load_csv_bad_label_column_and_encoding(tmp_path):
    with pytest.raises(DatasetError, match="label_column=3 is outside the 3 columns"):
        datasets.load_csv(write_text(tmp_path, "1,2,3\n"), label_column=3)
    with pytest.raises(DatasetError, match="not UTF-8"):
        datasets.load_csv(write(tmp_path, b"\xff\xfe1,2\n", "binary.csv"))


# ------------------------------------------------------------------------ prepare_images


def test_prepare_images(sample):
    images = sample[0][:100]
    prepared = datasets.prepare_images(images)
    assert prepared.shape == (100, 784) and prepared.dtype == np.float32
    assert prepared.flags.c_contiguous
    np.testing.assert_array_equal(prepared, images.reshape(100, 784) / np.float32(255))
    assert prepared.min() == 0 and prepared.max() == 1

    transposed = datasets.prepare_images(images.transpose(0, 2, 1))
    np.testing.assert_array_equal(transposed, prepared.reshape(100, 28, 28)
                                  .transpose(0, 2, 1).reshape(100, 784))
    np.testing.assert_array_equal(datasets.prepare_images(prepared), prepared)
    np.testing.assert_array_equal(datasets.prepare_images(images.astype(np.int32)), prepared)
    assert datasets.prepare_images(np.zeros((0, 28, 28), np.uint8)).shape == (0, 784)


@pytest.mark.parametrize("images, error, message", [
    (np.zeros(5, np.uint8), ValueError, "at least 2 dimensions"),
    (np.full((2, 3), 300, np.int16), ValueError, "0..255"),
    (np.full((2, 3), 2.0), ValueError, r"\[0, 1\]"),
    (np.full((2, 3), np.nan), ValueError, r"\[0, 1\]"),
    (np.zeros((2, 3), bool), TypeError, "bool"),
])
def test_prepare_images_errors(images, error, message):
    with pytest.raises(error, match=message):
        datasets.prepare_images(images)


def test_load_npz_reads_scipy_save_npz(tmp_path):
    """scipy.sparse.save_npz archives (CSR or CSC, compressed or not) give a float32 CSR matrix;
    labels come from an added 'y' array, else y is None; malformed matrices are DatasetErrors."""
    sp = pytest.importorskip("scipy.sparse")
    X = sp.random(40, 300, density=0.05, format="csr", random_state=0)
    for i, (m, compressed) in enumerate([(X, True), (X.tocsc(), False)]):
        sp.save_npz(tmp_path / f"m{i}.npz", m, compressed=compressed)
        A, y = datasets.load_npz(tmp_path / f"m{i}.npz")
        assert A.format == "csr" and A.dtype == np.float32 and y is None
        assert np.array_equal(A.toarray(), X.toarray().astype(np.float32))
    arrays = dict(np.load(tmp_path / "m0.npz"))
    np.savez(tmp_path / "y.npz", y=np.arange(40) % 3, **arrays)
    assert np.array_equal(datasets.load_npz(tmp_path / "y.npz")[1], np.arange(40) % 3)
    bad = {"indices out of range": dict(indices=arrays["indices"] + 300),
           "indptr must rise": dict(indptr=arrays["indptr"][::-1].copy()),
           "only csr and csc": dict(format=np.array("coo")),
           "shape must be": dict(shape=np.array([40, -1])),
           "one label per row": dict(y=np.zeros(3))}
    for match, edit in bad.items():
        np.savez(tmp_path / "bad.npz", **{**arrays, **edit})
        with pytest.raises(datasets.DatasetError, match=match):
            datasets.load_npz(tmp_path / "bad.npz")
