"""The fuzz targets: each takes arbitrary bytes and feeds them to one reader of untrusted files.
A reader may refuse the bytes with its documented error (ModelFileError, DatasetError); any
other exception, a crash or a hang is a finding. Used by fuzz.py (atheris, coverage-guided) and
by test_fuzz_corpus.py, which replays the corpus in the normal test run."""
import io
import os
import tempfile
import warnings

from fastmlp import datasets, load
from fastmlp.datasets import DatasetError
from fastmlp.io import ModelFileError

CAP = 1 << 20   # a fuzzed file may claim anything; the readers are asked to read at most this


def target_load(data):
    try:
        load(io.BytesIO(data), max_bytes=CAP)
    except ModelFileError:
        pass


def target_idx(data):
    try:
        datasets.read_idx(io.BytesIO(data), max_bytes=CAP)
    except DatasetError:
        pass


def _on_disk(data, suffix, read):
    fd, path = tempfile.mkstemp(suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            read(path)
    except DatasetError:
        pass
    finally:
        os.unlink(path)


def target_csv(data):
    _on_disk(data, ".csv", datasets.load_csv)


def target_npz(data):
    _on_disk(data, ".npz", lambda path: datasets.load_npz(path, max_bytes=CAP))


TARGETS = {"load": target_load, "idx": target_idx, "csv": target_csv, "npz": target_npz}
CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
