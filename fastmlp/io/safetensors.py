"""The safetensors format, float32 tensors only: read and write, every byte checked.

The format (https://github.com/huggingface/safetensors): an 8-byte little-endian header length, a
JSON header (tensor names -> dtype, shape, byte offsets, plus a ``__metadata__`` map of strings),
then the raw little-endian tensor bytes. It is written and parsed here in ~100 lines rather than
through the ``safetensors`` package: the format is that simple, it keeps the runtime dependencies
to NumPy, and every byte read goes through the checks below (the same files load with
``safetensors.numpy.load_file``). This module knows nothing of models.
"""
import json
import math
import os
import struct

import numpy as np

__all__ = ["ModelFileError", "read_file", "write_file"]

MAX_HEADER = 16 << 20    # a header holds a few KB of JSON; 16 MB is far beyond any model


class ModelFileError(ValueError):
    """A model file is truncated, corrupt, tampered with or not a fastmlp model."""


def fail(path, msg):
    """Raise ModelFileError naming the file."""
    raise ModelFileError(f"{os.fspath(path)}: {msg}")


def expect(path, cond, msg):
    """Raise ModelFileError(msg) naming the file unless cond."""
    if not cond:
        fail(path, msg)


def is_int(v, lo=0):
    """v is a JSON integer (not a bool) >= lo."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


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


def read_file(path, max_bytes):
    """(metadata dict, {name: float32 array}) of a file of at most max_bytes bytes, with every
    offset checked: tensors F32 only, data spans matching their shapes, contiguous, no gaps, no
    overlap, nothing after the last. Raises ModelFileError."""
    size = os.path.getsize(path)
    expect(path, size <= max_bytes, f"file is {size} bytes, over the cap of {max_bytes} "
                                    "(pass max_bytes= to allow it)")
    with open(path, "rb") as f:
        data = f.read()
    expect(path, len(data) >= 8, "truncated: no safetensors header length")
    (n,) = struct.unpack("<Q", data[:8])
    expect(path, n <= MAX_HEADER and 8 + n <= len(data),
           f"truncated or corrupt: header length {n} does not fit in a {len(data)}-byte file")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        fail(path, f"corrupt header (not JSON: {e})")
    expect(path, isinstance(header, dict), "corrupt header (not a JSON object)")
    meta = header.pop("__metadata__", {})     # optional in the format
    expect(path, isinstance(meta, dict), "corrupt header (__metadata__ is not a JSON object)")
    body = memoryview(data)[8 + n:]
    tensors, end = {}, 0
    for name, info in header.items():
        expect(path, isinstance(info, dict) and info.get("dtype") == "F32",
               f"tensor {name!r}: expected dtype F32, got {info!r}")
        shape, offsets = info.get("shape"), info.get("data_offsets")
        expect(path, isinstance(shape, list) and all(is_int(d) for d in shape)
               and isinstance(offsets, list) and len(offsets) == 2
               and all(is_int(o) for o in offsets),
               f"tensor {name!r}: bad shape or data_offsets")
        start, stop = offsets
        expect(path, stop - start == 4 * math.prod(shape) and stop <= len(body),
               f"tensor {name!r}: data_offsets {offsets} do not match shape {shape} within "
               f"{len(body)} data bytes (truncated or tampered)")
        tensors[name] = (start, stop, shape)
    spans = sorted((s, e) for s, e, _ in tensors.values())
    for s, e in spans:
        expect(path, s == end, "tensor data overlaps or leaves gaps (tampered)")
        end = e
    expect(path, end == len(body), f"{len(body) - end} bytes after the last tensor: truncated "
                                   "or tampered" if end < len(body) else "truncated")
    arrays = {name: np.frombuffer(body[s:e], dtype="<f4").reshape(shape).astype(np.float32)
              for name, (s, e, shape) in tensors.items()}
    return meta, arrays
