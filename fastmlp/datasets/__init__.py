"""Dataset readers: MNIST (IDX files), NumPy archives and CSV.

What this module offers:

* :func:`read_idx` parses an IDX file (the MNIST format), raw or gzip-compressed.
* :func:`load_sample` returns the MNIST test set (10,000 images) bundled with fastmlp, so that
  examples and tests run offline.
* :func:`load_mnist` returns the full MNIST training or test set, read from a folder, from a cache
  folder, or downloaded once into that cache and checked against known SHA-256 sums.
* :func:`load_npz` and :func:`load_csv` return a feature matrix and labels from a ``.npz``
  archive or a CSV file (numeric features; labels numbers or text); :func:`typed_labels` types
  labels read as text as load_csv does.
* :func:`prepare_images` flattens images to float32 rows scaled to [0, 1], the input the
  estimators expect.

A problem with the content of a file (bad format, truncation, checksum mismatch, missing
dataset files) raises :class:`DatasetError`, a subclass of ``ValueError``, whose message names the
file and the problem. A path that does not exist raises ``FileNotFoundError`` as usual.

Licence of the bundled sample: the files in ``fastmlp/data/`` are the MNIST test set by Yann LeCun,
Corinna Cortes and Christopher J.C. Burges, redistributed unmodified under the Creative Commons
Attribution-Share Alike 3.0 licence (CC BY-SA 3.0); see ``fastmlp/data/README.md``. That licence
covers those data files only, not this module.
"""
from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import http.client
import io
import math
import operator
import os
import secrets
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from importlib import resources
from pathlib import Path

import numpy as np

__all__ = [
    "DEFAULT_MNIST_MIRROR",
    "DatasetError",
    "load_csv",
    "load_mnist",
    "load_npz",
    "load_sample",
    "prepare_images",
    "read_idx",
    "typed_labels",
]

#: Used when neither ``mirror=`` nor the ``FASTMLP_MNIST_MIRROR`` environment variable is set:
#: the copy of the original MNIST files that TensorFlow Datasets downloads from.
DEFAULT_MNIST_MIRROR = "https://storage.googleapis.com/cvdf-datasets/mnist/"

# SHA-256 of the four official MNIST files. The t10k values were computed from the files bundled
# in fastmlp/data (whose MD5 sums match the published 9fb629c4... and ec29112d...); all four agree
# with TensorFlow Datasets' tensorflow_datasets/url_checksums/mnist.txt, which also gives the sizes
# 9,912,422 (train images), 28,881 (train labels), 1,648,877 and 4,542 bytes.
_MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz":
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz":
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz":
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz":
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}

_MNIST_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"

# Payloads are read in pieces so that memory grows with the bytes actually present, never with
# the size a corrupt or hostile header claims.
_CHUNK = 1 << 22

# The largest array read_idx (and load_npz, per array) accepts by default, and the most
# dimensions an IDX header may declare (NumPy's own limit is 32 or more).
DEFAULT_MAX_BYTES = 1 << 30
_MAX_IDX_DIMS = 32

# Seconds a download may stall (per socket operation) before it is abandoned.
_DOWNLOAD_TIMEOUT = 60

_NPZ_KEY_PAIRS = (("X", "y"), ("x", "y"), ("x_train", "y_train"), ("X_train", "y_train"))


class DatasetError(ValueError):
    """A data file is malformed, truncated, missing or fails its checksum, or a download failed."""


# --------------------------------------------------------------------------------------- IDX


def read_idx(source, *, max_bytes=DEFAULT_MAX_BYTES):
    """Read an IDX file, the format of the MNIST distribution.

    Parameters
    ----------
    source : str, os.PathLike, file descriptor or binary file object
        The file. Gzip compression is recognised by its magic bytes (1f 8b), whatever the name.
        A descriptor or file object is read from where it stands and left open.
    max_bytes : int
        The largest array accepted (1 GiB by default; the MNIST training images are 47 MB): the
        header's dimensions are checked against it before anything is decompressed.

    Returns
    -------
    numpy.ndarray
        Array with the shape stored in the header, in native byte order. Type codes: 0x08 uint8,
        0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64.

    Raises
    ------
    DatasetError
        If the header is invalid (first two bytes not zero, unknown type code, no dimensions or
        more than 32, truncated), declares an array over max_bytes, if the payload is shorter or
        longer than the dimensions imply, or if the gzip stream is corrupt or truncated.
    """
    max_bytes = _check_max_bytes(max_bytes)
    name = _source_name(source)
    with _open_binary(source, name) as f:
        return _read_idx_stream(f, name, max_bytes)


def _parse_idx(data, name):
    """Parse the bytes of an IDX file, gzip-compressed or not; ``name`` is used in messages."""
    return _read_idx_stream(io.BytesIO(data), name, DEFAULT_MAX_BYTES)


def _read_idx_stream(f, name, max_bytes):
    head = f.read(2)
    if not isinstance(head, (bytes, bytearray)):
        raise TypeError(f"{name}: read_idx needs a binary file object, got one returning "
                        f"{type(head).__name__}")
    stream = _Prefixed(head, f)
    if bytes(head) == _GZIP_MAGIC:
        stream = gzip.GzipFile(fileobj=stream, mode="rb")
    try:
        return _parse_idx_stream(stream, name, max_bytes)
    except (OSError, EOFError, zlib.error) as exc:
        # only the gzip layer raises these (bad header, CRC or length check, stream cut short)
        raise DatasetError(f"{name}: corrupt or truncated gzip data: {exc}") from exc


class _Prefixed:
    """A binary stream with bytes already read put back in front (the magic sniffed)."""

    def __init__(self, head, stream):
        self.head, self.stream = bytes(head), stream

    def read(self, n=-1):
        if n is None or n < 0:
            out, self.head = self.head + self.stream.read(), b""
            return out
        out, self.head = self.head[:n], self.head[n:]
        if len(out) < n:
            out += self.stream.read(n - len(out))
        return out


def _source_name(source):
    if isinstance(source, (str, bytes, os.PathLike)):
        return os.fsdecode(source)
    if isinstance(source, int) and not isinstance(source, bool):
        return f"<file descriptor {source}>"
    name = getattr(source, "name", None)
    return name if isinstance(name, str) else "<binary stream>"


@contextlib.contextmanager
def _open_binary(source, name):
    """A binary file for a path (closed after), a descriptor (left open) or a file object."""
    if isinstance(source, (str, bytes, os.PathLike)):
        with open(source, "rb") as f:
            yield f
    elif isinstance(source, int) and not isinstance(source, bool):
        with open(source, "rb", closefd=False) as f:
            yield f
    elif callable(getattr(source, "read", None)):
        yield source
    else:
        raise TypeError(f"source must be a path, a file descriptor or a binary file object, got "
                        f"{type(source).__name__}")


def _check_max_bytes(max_bytes):
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise ValueError(f"max_bytes must be a positive integer, got {max_bytes!r}")
    return max_bytes


def _parse_idx_stream(stream, name, max_bytes):
    magic = stream.read(4)
    if len(magic) < 4:
        raise DatasetError(f"{name}: too short for an IDX header ({len(magic)} bytes, need 4)")
    if magic[0] or magic[1]:
        raise DatasetError(f"{name}: not an IDX file: first two bytes are {magic[:2].hex(' ')}, "
                           "expected 00 00")
    dtype = _IDX_DTYPES.get(magic[2])
    if dtype is None:
        known = ", ".join(f"0x{code:02x}" for code in _IDX_DTYPES)
        raise DatasetError(f"{name}: unknown IDX type code 0x{magic[2]:02x} (known: {known})")
    ndim = magic[3]
    if not 1 <= ndim <= _MAX_IDX_DIMS:
        raise DatasetError(f"{name}: IDX header declares {ndim} dimensions (an array has 1 to "
                           f"{_MAX_IDX_DIMS})")
    raw_dims = stream.read(4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise DatasetError(f"{name}: IDX header truncated: {ndim} dimensions need {4 * ndim} "
                           f"bytes, got {len(raw_dims)}")
    dims = tuple(int(d) for d in np.frombuffer(raw_dims, dtype=">u4"))
    native = dtype.newbyteorder("=")
    # Python integers, so an absurd header cannot overflow; checked against the cap before a
    # byte of payload is read or decompressed.
    expected = math.prod(dims) * dtype.itemsize
    if expected > max_bytes:
        raise DatasetError(f"{name}: shape {_shape_text(dims)} of {native.name} is "
                           f"{_count_text(expected)} bytes, over max_bytes={max_bytes}")
    payload = _read_at_most(stream, expected)
    if len(payload) < expected:
        raise DatasetError(f"{name}: payload truncated: shape {_shape_text(dims)} of "
                           f"{native.name} needs {_count_text(expected)} bytes, "
                           f"got {len(payload)}")
    extra = _count_remaining(stream)
    if extra:
        raise DatasetError(f"{name}: {extra} unexpected trailing bytes after the {expected}-byte "
                           f"payload of shape {dims}")
    try:
        return np.frombuffer(payload, dtype=dtype).reshape(dims).astype(native, copy=False)
    except ValueError as exc:    # an empty array whose other dimensions NumPy cannot index
        raise DatasetError(f"{name}: shape {_shape_text(dims)} is not an array NumPy can "
                           f"hold: {exc}") from exc


def _shape_text(dims):
    # A hostile header can declare 255 dimensions; keep the message readable.
    if len(dims) <= 8:
        return str(dims)
    return f"({', '.join(map(str, dims[:4]))}, ... {len(dims)} dims)"


def _count_text(n):
    return str(n) if n < 10**18 else f"more than 10^{len(str(n)) - 1}"


def _read_at_most(stream, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = stream.read(min(n - len(buf), _CHUNK))
        if not chunk:
            break
        buf += chunk
    return buf


def _count_remaining(stream):
    """Bytes after the payload, read to the end (which makes gzip check its CRC and length
    trailer) but no further than _CHUNK: a stream that goes on reports "at least" that."""
    chunk = stream.read(_CHUNK)
    if not chunk:
        return 0
    return len(chunk) if not stream.read(1) else f"at least {len(chunk) + 1}"


def _check_mnist_pair(images, labels, what):
    if images.dtype != np.uint8 or images.ndim != 3:
        raise DatasetError(f"{what}: images must be a 3-D uint8 IDX array, got {images.ndim}-D "
                           f"{images.dtype}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DatasetError(f"{what}: labels must be a 1-D uint8 IDX array, got {labels.ndim}-D "
                           f"{labels.dtype}")
    if len(images) != len(labels):
        raise DatasetError(f"{what}: {len(images)} images but {len(labels)} labels")
    if labels.size and labels.max() > 9:
        raise DatasetError(f"{what}: labels must be digits 0..9, found {labels.max()}")
    return images, labels


def _sha256_mismatch(what, expected, got):
    return DatasetError(f"{what}: SHA-256 mismatch: expected {expected}, got {got}")


# ------------------------------------------------------------------------------------ MNIST


def load_sample():
    """Return the MNIST test set bundled with fastmlp.

    The files are read from the installed package (``fastmlp/data``) and their SHA-256 sums are
    checked before parsing, so a damaged installation fails loudly instead of yielding bad data.
    They are the 10,000 official MNIST test images, unmodified, licensed CC BY-SA 3.0 (see the
    module docstring).

    Returns
    -------
    images : numpy.ndarray of uint8, shape (10000, 28, 28)
    labels : numpy.ndarray of uint8, shape (10000,), digits 0..9
    """
    images_name, labels_name = (stem + ".gz" for stem in _MNIST_STEMS["test"])
    images = _parse_idx(_bundled_bytes(images_name), f"bundled {images_name}")
    labels = _parse_idx(_bundled_bytes(labels_name), f"bundled {labels_name}")
    return _check_mnist_pair(images, labels, "bundled MNIST sample")


def _bundled_bytes(filename):
    resource = resources.files(__package__) / "data" / filename
    try:
        data = resource.read_bytes()
    except FileNotFoundError as exc:
        raise DatasetError(f"bundled sample file {filename} is missing from the fastmlp "
                           "installation; reinstall fastmlp") from exc
    got = hashlib.sha256(data).hexdigest()
    if got != _MNIST_SHA256[filename]:
        raise _sha256_mismatch(f"bundled sample file {filename} is damaged",
                               _MNIST_SHA256[filename], got)
    return data


def load_mnist(subset="train", *, directory=None, download=False, mirror=None, cache_dir=None,
               checksums=None):
    """Return the MNIST training set (60,000 images) or test set (10,000 images).

    Where the files come from, in order:

    1. ``directory``: a folder holding the standard file names (``train-images-idx3-ubyte``,
       ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``), each
       either gzip-compressed with a ``.gz`` suffix or raw. Nothing is downloaded.
    2. Otherwise the cache folder: ``cache_dir``, else the ``FASTMLP_DATA`` environment variable,
       else ``~/.cache/fastmlp/mnist``. Files missing from it are downloaded only if ``download``
       is true, from ``mirror``, else the ``FASTMLP_MNIST_MIRROR`` environment variable, else
       :data:`DEFAULT_MNIST_MIRROR` (the URL of each file is the base URL plus its ``.gz`` name;
       ``file://`` URLs work too). Each download goes to a temporary file in the cache folder,
       is checked against the SHA-256 of the official file, and only then renamed into place; on
       a mismatch the temporary file is deleted.

    Parameters
    ----------
    subset : {"train", "test"}
    directory : str or os.PathLike, optional
    download : bool
    mirror : str, optional
    cache_dir : str or os.PathLike, optional
    checksums : dict, optional
        File name (such as ``"train-images-idx3-ubyte.gz"``) to SHA-256 hex digest, overriding
        the official sums, for mirrors that serve other files in the MNIST format.

    Returns
    -------
    images : numpy.ndarray of uint8, shape (n, 28, 28)
    labels : numpy.ndarray of uint8, shape (n,)

    Raises
    ------
    DatasetError
        If the files are missing (the message lists the options), a download fails or does not
        match its checksum, or a file is malformed.
    """
    if subset not in _MNIST_STEMS:
        raise ValueError(f"subset must be 'train' or 'test', got {subset!r}")
    stems = _MNIST_STEMS[subset]
    if directory is not None:
        if download:
            raise ValueError("pass either directory= (read local files) or download=True "
                             "(fill the cache folder), not both")
        folder = Path(directory).expanduser()
        paths = []
        for stem in stems:
            path = _find_idx(folder, stem)
            if path is None:
                raise DatasetError(f"{folder}: neither {stem}.gz nor {stem} found")
            paths.append(path)
    else:
        paths = _cached_mnist(subset, download, mirror, cache_dir, checksums)
    images, labels = (read_idx(path) for path in paths)
    return _check_mnist_pair(images, labels, f"{paths[0]} and {paths[1]}")


def _find_idx(folder, stem):
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _cached_mnist(subset, download, mirror, cache_dir, checksums):
    if cache_dir is not None:
        root = Path(cache_dir).expanduser()
    elif os.environ.get("FASTMLP_DATA"):
        root = Path(os.environ["FASTMLP_DATA"]).expanduser()
    else:
        root = Path.home() / ".cache" / "fastmlp" / "mnist"
    base = mirror or os.environ.get("FASTMLP_MNIST_MIRROR") or DEFAULT_MNIST_MIRROR
    stems = _MNIST_STEMS[subset]
    missing = [stem + ".gz" for stem in stems if _find_idx(root, stem) is None]
    if missing and not download:
        raise DatasetError(
            f"MNIST {subset} set not found in {root} (missing {', '.join(missing)}). Either call "
            f"load_mnist({subset!r}, download=True) to fetch it from {base} (checked against "
            "known SHA-256 sums; choose another source with mirror= or FASTMLP_MNIST_MIRROR), "
            "pass directory= for a folder that already holds the IDX files, point cache_dir= or "
            "FASTMLP_DATA at another cache folder, or use load_sample() for the 10,000 test "
            "images bundled with fastmlp.")
    if missing:
        known = {**_MNIST_SHA256, **(checksums or {})}
        root.mkdir(parents=True, exist_ok=True)
        for filename in missing:
            _download(base.rstrip("/") + "/" + filename, root / filename, known[filename])
    return [_find_idx(root, stem) for stem in stems]


def _download(url, destination, expected_sha256):
    tmp = destination.with_name(f".{destination.name}.{os.getpid()}.{secrets.token_hex(4)}.part")
    # Not tempfile.mkstemp: its files are mode 0600, whereas this honours the umask, so a cache
    # folder shared through FASTMLP_DATA stays readable by the group.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT) as response:
                    for chunk in iter(lambda: response.read(1 << 16), b""):
                        digest.update(chunk)
                        out.write(chunk)
            except (OSError, http.client.HTTPException) as exc:
                if isinstance(exc, urllib.error.HTTPError):
                    exc.close()  # it holds the connection open until collected otherwise
                raise DatasetError(f"downloading {url} failed: {exc}") from exc
        got = digest.hexdigest()
        if got != expected_sha256.lower():
            raise _sha256_mismatch(f"{destination.name} downloaded from {url} was discarded",
                                   expected_sha256, got)
        # Readers of the cache only ever see complete, verified files.
        os.replace(tmp, destination)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# ------------------------------------------------------------------------------ NPZ and CSV


def load_npz(path, *, max_bytes=DEFAULT_MAX_BYTES):
    """Return ``(X, y)`` from a NumPy ``.npz`` archive.

    The arrays are taken from the first key pair present among ``X``/``y``, ``x``/``y``,
    ``x_train``/``y_train`` (the layout of Keras' ``mnist.npz``) and ``X_train``/``y_train``.
    They are returned with their stored dtypes. Pickled (object) arrays are refused. path may
    be a file descriptor or a binary file object (left open). max_bytes caps each array's
    stored size (1 GiB by default), checked before it is decompressed.

    An archive written by ``scipy.sparse.save_npz`` (CSR or CSC) gives X as a
    ``scipy.sparse.csr_matrix`` with float32 data (SciPy required), checked in full (lengths,
    indptr monotone, indices in range); such an archive holds no labels, so y is its ``y``
    array if one was added (``np.savez(path, y=y, **arrays)``), else None.

    Raises
    ------
    DatasetError
        If the file is not a readable ``.npz`` archive, holds none of the key pairs (the message
        lists the keys it has), an array over max_bytes, a malformed sparse matrix, or ``X`` and
        ``y`` differ in length.
    """
    max_bytes = _check_max_bytes(max_bytes)
    name = _source_name(path)
    # np.load gets an open file rather than the path: on a damaged zip archive it would leave
    # its own file handle open.
    with _open_binary(path, name) as f:
        if not (callable(getattr(f, "seekable", None)) and f.seekable()):
            raise DatasetError(f"{name}: load_npz needs a seekable file (a zip archive is read "
                               "from its end)")
        start = f.tell()
        magic = f.read(6)
        f.seek(start)
        if magic == b"\x93NUMPY":   # refused before np.load would read the whole array
            raise DatasetError(f"{name}: holds a single .npy array, not a .npz archive with X "
                               "and y")
        if not isinstance(magic, bytes) or magic[:4] != b"PK\x03\x04":
            raise DatasetError(f"{name}: not a readable .npz archive: not a zip file")
        # NumPy's and zipfile's parsers of a hostile archive raise many kinds of error (zipfile:
        # BadZipFile, NotImplementedError for an unknown compression, RuntimeError when
        # encrypted; NumPy's .npy header: ValueError, SyntaxError, tokenize.TokenError, ...):
        # every one of them is this file's fault, so each becomes a DatasetError.
        try:
            loaded = np.load(f, allow_pickle=False)
        except Exception as exc:
            raise DatasetError(f"{name}: not a readable .npz archive: {exc}") from exc
        with loaded:
            keys = set(loaded.files)
            if _SPARSE_KEYS <= keys:
                return _sparse_npz(name, loaded, max_bytes)
            pair = next(((xk, yk) for xk, yk in _NPZ_KEY_PAIRS if xk in keys and yk in keys),
                        None)
            if pair is None:
                wanted = ", ".join(f"{xk}/{yk}" for xk, yk in _NPZ_KEY_PAIRS)
                raise DatasetError(f"{name}: no feature/label arrays found; expected one of the "
                                   f"key pairs {wanted}; available keys: {sorted(keys)}")
            _check_member_sizes(name, loaded, pair, max_bytes)
            try:
                X, y = loaded[pair[0]], loaded[pair[1]]
            except Exception as exc:    # see above
                raise DatasetError(f"{name}: cannot read arrays {pair[0]!r}/{pair[1]!r}: "
                                   f"{exc}") from exc
    if not (isinstance(X, np.ndarray) and isinstance(y, np.ndarray)):
        # NpzFile hands back the raw bytes of a member that is not a .npy file
        raise DatasetError(f"{name}: {pair[0]!r} and {pair[1]!r} must be .npy arrays")
    if X.ndim == 0 or y.ndim == 0:
        raise DatasetError(f"{name}: {pair[0]!r} and {pair[1]!r} must be arrays with a sample "
                           "axis, not scalars")
    if len(X) != len(y):
        raise DatasetError(f"{name}: {pair[0]!r} has {len(X)} rows but {pair[1]!r} has {len(y)}")
    return X, y


_SPARSE_KEYS = {"data", "indices", "indptr", "format", "shape"}   # scipy.sparse.save_npz's


def _check_member_sizes(name, loaded, keys, max_bytes):
    """Each of the archive's arrays keys is at most max_bytes once decompressed (checked before
    it is read)."""
    members = {i.filename: i for i in loaded.zip.infolist()}
    for key in keys:
        info = members.get(f"{key}.npy", members.get(key))
        if info is not None and info.file_size > max_bytes:
            raise DatasetError(f"{name}: array {key!r} is {info.file_size} bytes, over "
                               f"max_bytes={max_bytes}")


def _sparse_npz(name, loaded, max_bytes):
    """(csr_matrix, y or None) from an open archive holding scipy.sparse.save_npz's arrays."""
    wanted = sorted(_SPARSE_KEYS | ({"y"} if "y" in loaded.files else set()))
    _check_member_sizes(name, loaded, wanted, max_bytes)
    try:
        arrays = {key: loaded[key] for key in wanted}
    except Exception as exc:    # see load_npz
        raise DatasetError(f"{name}: cannot read the sparse matrix's arrays: {exc}") from exc
    if not all(isinstance(a, np.ndarray) for a in arrays.values()):
        raise DatasetError(f"{name}: the sparse matrix's members must be .npy arrays")
    fmt = arrays["format"]
    fmt = fmt.item() if fmt.shape == () and fmt.dtype.kind in "SU" else None
    fmt = fmt.decode("ascii", "replace") if isinstance(fmt, bytes) else fmt
    if fmt not in ("csr", "csc"):
        raise DatasetError(f"{name}: a sparse matrix in {fmt!r} format; only csr and csc are "
                           "read")
    shape, data = arrays["shape"], arrays["data"]
    indices, indptr = arrays["indices"], arrays["indptr"]
    if not (shape.shape == (2,) and shape.dtype.kind in "iu" and (shape >= 0).all()
            and int(shape.max(initial=0)) < 2**62):
        raise DatasetError(f"{name}: shape must be two non-negative integers, got {shape!r}")
    if not (indices.ndim == indptr.ndim == data.ndim == 1 and indices.dtype.kind in "iu"
            and indptr.dtype.kind in "iu" and data.dtype.kind in "fiub"):
        raise DatasetError(f"{name}: data, indices and indptr must be 1-D arrays of numbers")
    n_major, n_minor = (int(shape[0]), int(shape[1])) if fmt == "csr" else \
        (int(shape[1]), int(shape[0]))
    nnz = len(data)
    if (len(indptr) != n_major + 1 or len(indices) != nnz or (n_major + 1 and (
            indptr[0] != 0 or indptr[-1] != nnz or (np.diff(indptr) < 0).any()))):
        raise DatasetError(f"{name}: indptr must rise from 0 to the number of entries ({nnz}) "
                           f"over {n_major} {'rows' if fmt == 'csr' else 'columns'}")
    if nnz and (indices.min() < 0 or indices.max() >= n_minor):
        raise DatasetError(f"{name}: indices out of range [0, {n_minor})")
    try:
        import scipy.sparse   # optional dependency: imported lazily, on purpose
    except ImportError:
        raise DatasetError(f"{name}: holds a scipy.sparse matrix; reading it needs SciPy "
                           "(pip install scipy)") from None
    kind = scipy.sparse.csr_matrix if fmt == "csr" else scipy.sparse.csc_matrix
    with np.errstate(over="ignore"):
        X = kind((data.astype(np.float32), indices, indptr), shape=(int(shape[0]),
                                                                    int(shape[1]))).tocsr()
    y = arrays.get("y")
    if y is not None and (y.ndim == 0 or len(y) != X.shape[0]):
        raise DatasetError(f"{name}: 'y' must have one label per row of the matrix "
                           f"({X.shape[0]}), got shape {y.shape}")
    return X, y


def load_csv(path, *, label_column=-1, skip_header=None):
    """Return ``(X, y)`` from a comma-separated file, one sample per line: numeric features and
    a label column of numbers or of text (class names such as ``setosa``).

    Parameters
    ----------
    path : str or os.PathLike
    label_column : int
        Index of the label column (negative counts from the end); every other column is a
        feature.
    skip_header : bool, optional
        Whether the first line is a header. By default it is one if a feature cell of it is not
        a number, or if only its label cell is text while the next line's label is a number (a
        header over numeric labels). A first line of numbers over a text label column is data:
        a header whose feature names are all numbers needs ``skip_header=True``.

    Returns
    -------
    X : numpy.ndarray of float32, shape (n, n_columns - 1)
    y : numpy.ndarray, shape (n,)
        Typed as :func:`typed_labels` types text: int64 if every label is a whole number, float64
        if every label is a number, else the labels as strings (``str``, whitespace around them
        removed; cells may be quoted with ``"``). One text label makes the column text, so
        ``3`` is then the string ``"3"``, as in a spreadsheet's text column.

    Raises
    ------
    DatasetError
        For rows whose number of cells differs from the first data row, feature cells that are
        empty, not numbers or not finite, label cells that are empty, ``nan`` or infinite (the
        message gives the line and column), files without data rows, and a ``label_column``
        outside the table.
    """
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    name = os.fsdecode(path)
    if isinstance(label_column, bool):
        raise TypeError("label_column must be an integer, got a bool")
    try:
        label_column = operator.index(label_column)
    except TypeError:
        raise TypeError(f"label_column must be an integer, got {type(label_column).__name__}") \
            from None
    try:
        table, header_lines = _read_csv_table(path, name, skip_header, label_column)
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{name}: not UTF-8 text: {exc}") from exc
    n_rows, n_cols = table.shape
    if n_rows == 0:
        raise DatasetError(f"{name}: no data rows")
    if n_cols < 2:
        raise DatasetError(f"{name}: need at least one feature column and a label column, found "
                           f"{n_cols} column")
    if not -n_cols <= label_column < n_cols:
        raise DatasetError(f"{name}: label_column={label_column} is outside the {n_cols} columns")
    label_column %= n_cols
    try:
        y = typed_labels(table[:, label_column])
        X = np.concatenate((table[:, :label_column], table[:, label_column + 1:]), axis=1,
                           dtype=np.float32 if table.dtype.kind == "f" else None)
        if X.dtype.kind == "U":     # read as text (a text label column): parse the features
            X = X.astype(np.float64)
            if not np.isfinite(X).all():
                raise ValueError("a feature is not a finite number")
            X = X.astype(np.float32)
    except ValueError as exc:
        raise (_diagnose_csv(path, name, header_lines, label_column)
               or DatasetError(f"{name}: {exc}")) from exc
    return X, y


def typed_labels(cells):
    """Labels read as text (a CSV column, a file with one label a line), typed as their writer
    meant them: int64 if every label is a whole number (``3`` and ``3.0`` are the class 3),
    float64 if every label is a number (each class exactly as written), else the labels as
    ``str`` (whitespace around them removed). Raises ValueError for an empty label and for
    ``nan`` or infinite numbers, which are not classes. A numeric array is typed by the same
    rule."""
    cells = np.asarray(cells)
    if cells.dtype.kind == "U":
        cells = np.char.strip(cells)
        if (np.char.str_len(cells) == 0).any():
            raise ValueError("empty label")
        try:
            values = cells.astype(np.float64)
        except ValueError:      # some label is text: the column is text
            numbers = (_parse_float(c) for c in cells.tolist())
            if any(v is not None and not math.isfinite(v) for v in numbers):
                raise ValueError("nan or infinite label") from None
            return cells
    else:
        values = cells.astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError("nan or infinite label")
    whole = np.array_equal(values, np.round(values)) and np.abs(values).max(initial=0) < 2**53
    return values.astype(np.int64) if whole else values


def _read_csv_table(path, name, skip_header, label_column):
    """(table, number of header lines): the cells as float64 when every one is a number (NumPy's
    fast parser), else as strings (a text label column; load_csv converts the features)."""
    # utf-8-sig: spreadsheet programs often start CSV files with a byte-order mark.
    with open(path, encoding="utf-8-sig") as f:
        header = _looks_like_header(f.readline(), f.readline(), label_column) \
            if skip_header is None else bool(skip_header)
        f.seek(0)
        if header:
            f.readline()
        start = f.tell()
        with warnings.catch_warnings():
            # An empty file makes loadtxt warn; load_csv reports it as an error instead.
            warnings.simplefilter("ignore", UserWarning)
            try:
                table = np.loadtxt(f, delimiter=",", dtype=np.float64, ndmin=2, comments=None)
            except ValueError:
                f.seek(start)       # some cell is not a number: read them all as text
                try:
                    table = np.loadtxt(f, delimiter=",", dtype=str, ndmin=2, comments=None,
                                       quotechar='"')
                except ValueError as exc:
                    raise (_diagnose_csv(path, name, int(header), label_column)
                           or DatasetError(f"{name}: {exc}")) from exc
    if table.dtype.kind == "f" and not np.isfinite(table).all():
        raise (_diagnose_csv(path, name, int(header), label_column)
               or DatasetError(f"{name}: contains values that are not finite numbers"))
    return table, int(header)


def _parse_float(cell):
    try:
        return float(cell)
    except ValueError:
        return None


def _looks_like_header(line, next_line, label_column):
    # Only text makes a header: a first data row holding "nan" must still fail as data. Text in
    # the label column alone is a header only over numeric labels (else it is a class name).
    cells = next(csv.reader([line]), [])
    if not cells:
        return False
    label = label_column % len(cells) if -len(cells) <= label_column < len(cells) else None
    if any(_parse_float(c) is None for i, c in enumerate(cells) if i != label):
        return True
    if label is None or _parse_float(cells[label]) is not None:
        return False
    below = next(csv.reader([next_line]), [])
    return len(below) == len(cells) and _parse_float(below[label]) is not None


def _diagnose_csv(path, name, header_lines, label_column):
    """Find the first bad row or cell with the csv module, which, unlike loadtxt, reports line
    numbers; return it as a DatasetError, or None if nothing is found. A label cell may be
    text, but not empty, nan or infinite."""
    with open(path, encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        width = None
        for row in reader:
            if reader.line_num <= header_lines or not row:
                continue
            if width is None:
                width = len(row)
            elif len(row) != width:
                return DatasetError(f"{name}, line {reader.line_num}: {len(row)} columns, but the "
                                    f"first data row has {width}")
            label = label_column % width if -width <= label_column < width else None
            for column, cell in enumerate(row, start=1):
                value = _parse_float(cell)
                if not cell.strip():
                    problem = "empty cell"
                elif value is None and column - 1 != label:
                    problem = f"{cell!r} is not a finite number"
                elif value is not None and not math.isfinite(value):
                    problem = f"{cell!r} is not a finite number"
                else:
                    continue
                return DatasetError(f"{name}, line {reader.line_num}, column {column}: "
                                    f"{problem}")
    return None


# ---------------------------------------------------------------------------- preprocessing


def prepare_images(images):
    """Flatten images to float32 rows scaled to [0, 1].

    Parameters
    ----------
    images : array_like, shape (n, ...)
        Integer pixels in 0..255 (such as MNIST's uint8), divided by 255, or floating-point
        pixels already in [0, 1], copied as float32.

    Returns
    -------
    numpy.ndarray of float32, shape (n, d), C-contiguous
        ``d`` is the product of the remaining dimensions (784 for MNIST).
    """
    images = np.asarray(images)
    if images.ndim < 2:
        raise ValueError(f"prepare_images needs an array of shape (n, ...) with at least 2 "
                         f"dimensions, got shape {images.shape}")
    flat = images.reshape(images.shape[0], math.prod(images.shape[1:]))
    if np.issubdtype(images.dtype, np.integer):
        if images.dtype != np.uint8 and flat.size and (flat.min() < 0 or flat.max() > 255):
            raise ValueError(f"integer pixels must lie in 0..255, found "
                             f"{flat.min()}..{flat.max()}")
        return np.divide(flat, np.float32(255), dtype=np.float32)
    if np.issubdtype(images.dtype, np.floating):
        out = np.array(flat, dtype=np.float32, order="C")
        if out.size and not (np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1):
            raise ValueError("floating-point pixels must be finite and lie in [0, 1]; scale them "
                             "first, or pass integer pixels in 0..255")
        return out
    raise TypeError(f"prepare_images needs integer or floating-point pixels, got {images.dtype}")
