"""The safetensors format, float32 tensors only: read and write, every byte checked.

The format (https://github.com/huggingface/safetensors): an 8-byte little-endian header length, a
JSON header (tensor names -> dtype, shape, byte offsets, plus a ``__metadata__`` map of strings),
then the raw little-endian tensor bytes. It is written and parsed here in ~150 lines rather than
through the ``safetensors`` package: the format is that simple, it keeps the runtime dependencies
to NumPy, and every byte read goes through the checks below (the same files load with
``safetensors.numpy.load_file``). This module knows nothing of models.

Reading a hostile file is bounded work: at most max_bytes are read, whatever the file claims to
be (a FIFO or /dev/zero included); the header's size, nesting depth, number of entries and every
number in it are checked before or while it is parsed, so no JSON document makes the parser or
the checks slow; every failure is a ModelFileError.
"""
import contextlib
import json
import math
import os
import re
import struct

import numpy as np

__all__ = ["ModelFileError", "json_loads", "read_file", "write_file"]

MAX_HEADER = 16 << 20    # a header holds a few KB of JSON; 16 MB is far beyond any model
MAX_DEPTH = 32           # nesting of JSON arrays and objects in a header or metadata document
MAX_TENSORS = 4096       # a model of 2,048 layers
MAX_DIMS = 8
MAX_DIM = 1 << 40
MAX_DIGITS = 20          # digits of a JSON integer (sizes, offsets); a float may have twice


class ModelFileError(ValueError):
    """A model file is truncated, corrupt, tampered with or not a fastmlp model."""


def source_name(source):
    """How messages name a file: its path, its descriptor or the stream's name."""
    if isinstance(source, (str, bytes, os.PathLike)):
        return os.fsdecode(source)
    if isinstance(source, int):
        return f"<file descriptor {source}>"
    name = getattr(source, "name", None)
    return name if isinstance(name, str) else "<binary stream>"


def fail(path, msg):
    """Raise ModelFileError naming the file."""
    raise ModelFileError(f"{source_name(path)}: {msg}")


def expect(path, cond, msg):
    """Raise ModelFileError(msg) naming the file unless cond."""
    if not cond:
        fail(path, msg)


def is_int(v, lo=0, hi=None):
    """v is a JSON integer (not a bool) in [lo, hi]."""
    return (isinstance(v, int) and not isinstance(v, bool) and v >= lo
            and (hi is None or v <= hi))


def short(v, n=120):
    """repr(v), cut to n characters for a message."""
    text = repr(v)
    return text if len(text) <= n else text[:n] + "..."


def _int(text):
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise ValueError(f"an integer of {len(text)} digits")
    return int(text)


def _float(text):
    if len(text) > 2 * MAX_DIGITS:
        raise ValueError(f"a number of {len(text)} characters")
    return float(text)


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def _depth(text):
    """The deepest nesting of arrays and objects in JSON text (brackets inside strings do not
    count), computed before the parser sees the text, in linear time."""
    b = np.frombuffer(_STRING.sub("", text).encode(), np.uint8)
    step = np.isin(b, (ord("["), ord("{"))).astype(np.int64) - np.isin(b, (ord("]"), ord("}")))
    return int(np.cumsum(step).max(initial=0))


def json_loads(path, text, what):
    """Parse JSON text with bounded work: nesting at most MAX_DEPTH, integers of at most
    MAX_DIGITS digits (a long one costs quadratic time to convert, and math.prod of a shape of
    them more), floats of at most twice that; anything else is a ModelFileError naming what."""
    try:
        if _depth(text) > MAX_DEPTH:
            fail(path, f"corrupt {what}: nested deeper than {MAX_DEPTH} levels")
        # NaN and Infinity stay allowed: Python writes them (a NaN validation score, say)
        return json.loads(text, parse_int=_int, parse_float=_float)
    except (ValueError, RecursionError) as e:     # json.JSONDecodeError is a ValueError
        if isinstance(e, ModelFileError):
            raise
        fail(path, f"corrupt {what} (not JSON of plain numbers: {e})")


def write_file(path, tensors, metadata):
    """Write {name: array} as float32 tensors, in the order given, with metadata {str: str}."""
    header, offset, blobs = {}, 0, []
    for name, array in tensors.items():
        data = np.ascontiguousarray(array, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(np.shape(array)),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    header["__metadata__"] = dict(metadata)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)       # safetensors aligns the data to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


@contextlib.contextmanager
def _opened(source):
    """A binary file for a path (closed after), a file descriptor or a file object (both read
    from where they stand and left open)."""
    if isinstance(source, (str, bytes, os.PathLike)):
        with open(source, "rb") as f:
            yield f
    elif isinstance(source, int) and not isinstance(source, bool):
        with open(source, "rb", closefd=False) as f:
            yield f
    elif callable(getattr(source, "read", None)):
        yield source
    else:
        raise TypeError(f"a model file is a path, a file descriptor or a binary file object, "
                        f"got {type(source).__name__}")


def _read(source, f, n):
    """Up to n bytes of f, as bytes."""
    data = f.read(n)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"{source_name(source)}: the file object must be binary (its read() "
                        f"returned {type(data).__name__})")
    return bytes(data)


def read_file(source, max_bytes):
    """(metadata dict, {name: float32 array}) of a file of at most max_bytes bytes, with every
    offset checked: tensors F32 only, data spans matching their shapes, contiguous, no gaps, no
    overlap, nothing after the last. The header is read first and the data only as far as the
    header declares (within max_bytes), so no stream is read further than its model. Raises
    ModelFileError (TypeError for a source that is no file at all)."""
    if not is_int(max_bytes, 8):
        raise ValueError(f"max_bytes must be an integer >= 8, got {short(max_bytes)}")
    try:
        with _opened(source) as f:
            head = _read(source, f, 8)
            expect(source, len(head) == 8, "truncated: no safetensors header length")
            (n,) = struct.unpack("<Q", head)
            expect(source, n <= MAX_HEADER and 8 + n <= max_bytes,
                   f"corrupt or over the cap: header length {n} (at most {MAX_HEADER}, and the "
                   f"file at most max_bytes={max_bytes})")
            raw = _read(source, f, n)
            expect(source, len(raw) == n, f"truncated: header of {n} bytes, got {len(raw)}")
            meta, spans = _parse_header(source, raw, max_bytes - 8 - n)
            end = max((e for _, e, _ in spans.values()), default=0)
            body = _read(source, f, end + 1)
    except OSError as e:
        fail(source, f"cannot read: {e}")
    expect(source, len(body) >= end, f"truncated: the tensors need {end} data bytes, got "
                                     f"{len(body)}")
    expect(source, len(body) == end, "bytes after the last tensor (tampered)")
    body = memoryview(body)
    arrays = {name: np.frombuffer(body[s:e], dtype="<f4").reshape(shape).astype(np.float32)
              for name, (s, e, shape) in spans.items()}
    return meta, arrays


def _parse_header(source, raw, room):
    """(metadata, {name: (start, stop, shape)}) of a header whose tensors have room data bytes
    at most: every entry checked, the spans contiguous from 0."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        fail(source, f"corrupt header (not UTF-8: {e})")
    header = json_loads(source, text, "header")
    expect(source, isinstance(header, dict), "corrupt header (not a JSON object)")
    meta = header.pop("__metadata__", {})     # optional in the format
    expect(source, isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values()),
           "corrupt header (__metadata__ is not a map of strings)")
    expect(source, len(header) <= MAX_TENSORS, f"{len(header)} tensors: more than a model of "
                                               f"{MAX_TENSORS // 2} layers has")
    tensors = {}
    for name, info in header.items():
        expect(source, isinstance(info, dict) and info.get("dtype") == "F32",
               f"tensor {short(name)}: expected dtype F32, got {short(info)}")
        shape, offsets = info.get("shape"), info.get("data_offsets")
        expect(source, isinstance(shape, list) and len(shape) <= MAX_DIMS
               and all(is_int(d, 0, MAX_DIM) for d in shape)
               and isinstance(offsets, list) and len(offsets) == 2
               and all(is_int(o, 0, room) for o in offsets),
               f"tensor {short(name)}: bad shape {short(shape)} or data_offsets "
               f"{short(offsets)} (within {room} data bytes the cap leaves)")
        start, stop = offsets
        expect(source, stop - start == 4 * math.prod(shape),
               f"tensor {short(name)}: data_offsets {offsets} do not match shape {shape} "
               "(truncated or tampered)")
        tensors[name] = (start, stop, shape)
    end = 0
    for s, e in sorted((s, e) for s, e, _ in tensors.values()):
        expect(source, s == end, "tensor data overlaps or leaves gaps (tampered)")
        end = e
    return meta, tensors
