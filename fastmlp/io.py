"""Save and load models as .safetensors files, without executing code.

The file is the safetensors format (https://github.com/huggingface/safetensors): an 8-byte
little-endian header length, a JSON header (tensor names -> dtype, shape, byte offsets, plus a
``__metadata__`` map of strings), then the raw little-endian tensor bytes. It is written and
parsed here in ~100 lines rather than through the ``safetensors`` package: the format is that
simple, it keeps the runtime dependencies to NumPy, and every byte read goes through the
validation below (the same files load with ``safetensors.numpy.load_file``).

Tensors: ``coefs.{i}`` (n_i, n_{i+1}) and ``intercepts.{i}`` (n_{i+1},), float32.
``__metadata__["fastmlp"]`` is a JSON document: format_version, fastmlp_version, trained_with
(ISA, threads, CPU model and OpenMP runtime of the process that saved it), kind
("MLP", "MLPClassifier", "MLPRegressor"), layer_sizes, activations (hidden layers),
out_activation, and per kind: hyperparameters and fitted attributes (estimators), classes with
their dtype (classifier), init / dropout / seed (MLP).

``load`` checks the header bounds and offsets, the tensor names, dtypes and shapes against the
layer sizes, allow-listed activation names, metadata types, finite weights and a size cap; any
failure is a ModelFileError (a ValueError) saying what is wrong.
"""
import json
import math
import os
import struct

import numpy as np

__all__ = ["save_model", "load", "ModelFileError", "FORMAT_VERSION"]

FORMAT_VERSION = 1
MAX_BYTES = 2 << 30          # default size cap of a model file (2 GiB)
_MAX_HEADER = 16 << 20       # a header holds a few KB of JSON; 16 MB is far beyond any model
_KINDS = ("MLP", "MLPClassifier", "MLPRegressor")
_OUT_ACTIVATIONS = ("identity", "softmax", "logistic", "relu", "leaky_relu", "tanh", "gelu")
_CLASS_DTYPES = ("int", "float", "str", "bool")
# Fitted attributes stored in the metadata: name -> allowed JSON types
_ATTRS = {"n_iter_": (int,), "t_": (int,), "loss_": (float, int), "loss_curve_": (list,),
          "best_loss_": (float, int, type(None)), "validation_scores_": (list, type(None)),
          "best_validation_score_": (float, int, type(None)), "n_features_in_": (int,),
          "n_outputs_": (int,), "n_layers_": (int,)}
_LB_TYPES = ("binary", "multiclass", "multilabel-indicator")


class ModelFileError(ValueError):
    """A model file is truncated, corrupt, tampered with or not a fastmlp model."""


# ---- saving -----------------------------------------------------------------------------------


def _json_value(v):
    """v as plain JSON data, or raise TypeError (callables, arrays, random generators)."""
    if isinstance(v, (bool, str, type(None))):
        return v
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v)
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    raise TypeError(type(v).__name__)


def _describe(model):
    """(metadata dict, [W0, b0, ...]) of a model or fitted estimator."""
    from .model import MLP
    from . import __version__
    from . import info
    machine = info()
    # Where the model came from, for reports; informational, not checked on load.
    meta = {"format_version": FORMAT_VERSION, "fastmlp_version": __version__,
            "trained_with": {k: machine[k] for k in ("isa", "num_threads", "cpu", "openmp")}}
    if isinstance(model, MLP):
        meta.update(kind="MLP", layer_sizes=model.layer_sizes, activations=model.activations,
                    out_activation=model.output_activation, init=model.init,
                    dropout=model.dropout, seed=str(model.seed))
        return meta, list(model.params)
    kind = type(model).__name__
    if kind not in _KINDS or not hasattr(model, "coefs_"):
        raise TypeError(f"save needs a fastmlp.MLP or a fitted fastmlp estimator, got {kind}")
    coefs, intercepts = model.coefs_, model.intercepts_
    sizes = [c.shape[0] for c in coefs] + [coefs[-1].shape[1]]
    acts = model.activation if not isinstance(model.activation, str) \
        else [model.activation] * (len(coefs) - 1)
    hyper = {}
    for name, value in model.get_params(deep=False).items():
        if name == "callback":
            continue     # code, not data
        try:
            hyper[name] = _json_value(value)
        except TypeError:
            pass         # callbacks, RandomState objects, schedule objects: not data
    attrs = {k: _json_value(getattr(model, k)) for k in _ATTRS if hasattr(model, k)}
    meta.update(kind=kind, layer_sizes=sizes, activations=list(acts),
                out_activation=model.out_activation_, hyperparameters=hyper, attributes=attrs)
    if kind == "MLPClassifier":
        classes = model.classes_
        ckind = next((k for k, t in [("bool", np.bool_), ("int", np.integer),
                                     ("float", np.floating), ("str", np.str_)]
                      if np.issubdtype(classes.dtype, t)), None)
        if ckind is None:
            raise TypeError(f"cannot save classes of dtype {classes.dtype} (only bool, int, "
                            "float and str labels)")
        meta["classes"] = {"dtype": ckind, "values": [_json_value(c.item()) for c in classes],
                           "y_type": model._label_binarizer.y_type_}
    return meta, [p for pair in zip(coefs, intercepts) for p in pair]


def save_model(model, path):
    """Write a fastmlp.MLP or fitted MLPClassifier / MLPRegressor to path (.safetensors)."""
    meta, params = _describe(model)
    header, offset, blobs = {}, 0, []
    for i, p in enumerate(params):
        name = f"{'coefs' if i % 2 == 0 else 'intercepts'}.{i // 2}"
        data = np.ascontiguousarray(p, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(p.shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    header["__metadata__"] = {"fastmlp": json.dumps(meta, allow_nan=True)}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)       # safetensors aligns the data to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


# ---- loading ----------------------------------------------------------------------------------


def _fail(path, msg):
    raise ModelFileError(f"{os.fspath(path)}: {msg}")


def _expect(path, cond, msg):
    if not cond:
        _fail(path, msg)


def _is_int(v, lo=0):
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _read_tensors(path, max_bytes):
    """The header's metadata document and {name: float32 array}, with every offset checked."""
    size = os.path.getsize(path)
    _expect(path, size <= max_bytes, f"file is {size} bytes, over the cap of {max_bytes} "
                                     "(pass max_bytes= to allow it)")
    with open(path, "rb") as f:
        data = f.read()
    _expect(path, len(data) >= 8, "truncated: no safetensors header length")
    (n,) = struct.unpack("<Q", data[:8])
    _expect(path, n <= _MAX_HEADER and 8 + n <= len(data),
            f"truncated or corrupt: header length {n} does not fit in a {len(data)}-byte file")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        _fail(path, f"corrupt header (not JSON: {e})")
    _expect(path, isinstance(header, dict), "corrupt header (not a JSON object)")
    meta = header.pop("__metadata__", None)
    _expect(path, isinstance(meta, dict) and isinstance(meta.get("fastmlp"), str),
            "not a fastmlp model (no 'fastmlp' entry in __metadata__)")
    try:
        doc = json.loads(meta["fastmlp"])
    except json.JSONDecodeError as e:
        _fail(path, f"corrupt fastmlp metadata (not JSON: {e})")
    body = memoryview(data)[8 + n:]
    tensors, end = {}, 0
    for name, info in header.items():
        _expect(path, isinstance(info, dict) and info.get("dtype") == "F32",
                f"tensor {name!r}: expected dtype F32, got {info!r}")
        shape, offsets = info.get("shape"), info.get("data_offsets")
        _expect(path, isinstance(shape, list) and all(_is_int(d) for d in shape)
                and isinstance(offsets, list) and len(offsets) == 2
                and all(_is_int(o) for o in offsets),
                f"tensor {name!r}: bad shape or data_offsets")
        start, stop = offsets
        _expect(path, stop - start == 4 * math.prod(shape) and stop <= len(body),
                f"tensor {name!r}: data_offsets {offsets} do not match shape {shape} within "
                f"{len(body)} data bytes (truncated or tampered)")
        tensors[name] = (start, stop, shape)
    spans = sorted((s, e) for s, e, _ in tensors.values())
    for s, e in spans:
        _expect(path, s == end, "tensor data overlaps or leaves gaps (tampered)")
        end = e
    _expect(path, end == len(body), f"{len(body) - end} bytes after the last tensor: truncated "
                                    "or tampered" if end < len(body) else "truncated")
    arrays = {name: np.frombuffer(body[s:e], dtype="<f4").reshape(shape).astype(np.float32)
              for name, (s, e, shape) in tensors.items()}
    return doc, arrays


def _check_metadata(path, doc):
    from ._kernels import ACTIVATIONS
    _expect(path, isinstance(doc, dict), "fastmlp metadata is not a JSON object")
    _expect(path, doc.get("format_version") == FORMAT_VERSION,
            f"unsupported format_version {doc.get('format_version')!r} (this fastmlp reads "
            f"{FORMAT_VERSION})")
    kind = doc.get("kind")
    _expect(path, kind in _KINDS, f"unknown model kind {kind!r}")
    sizes, acts = doc.get("layer_sizes"), doc.get("activations")
    _expect(path, isinstance(sizes, list) and len(sizes) >= 2
            and all(_is_int(s, 1) for s in sizes), f"bad layer_sizes {sizes!r}")
    _expect(path, isinstance(acts, list) and len(acts) == len(sizes) - 2,
            f"activations must be a list of {len(sizes) - 2} names, got {acts!r}")
    for a in acts:
        _expect(path, a in ACTIVATIONS, f"unknown activation {a!r} (allowed: {ACTIVATIONS})")
    _expect(path, doc.get("out_activation") in _OUT_ACTIVATIONS,
            f"unknown output activation {doc.get('out_activation')!r}")
    return kind, sizes, acts


def load(path, *, max_bytes=MAX_BYTES):
    """Read a model written by save(): a fastmlp.MLP, MLPClassifier or MLPRegressor.

    Never executes code from the file. Raises ModelFileError (a ValueError) if the file is
    truncated, corrupt, tampered with, or describes an invalid model."""
    doc, arrays = _read_tensors(path, max_bytes)
    kind, sizes, acts = _check_metadata(path, doc)
    L = len(sizes) - 1
    expected = {f"coefs.{i}": [sizes[i], sizes[i + 1]] for i in range(L)}
    expected.update({f"intercepts.{i}": [sizes[i + 1]] for i in range(L)})
    _expect(path, set(arrays) == set(expected),
            f"tensors {sorted(arrays)} do not match layer_sizes {sizes}")
    for name, shape in expected.items():
        _expect(path, list(arrays[name].shape) == shape,
                f"tensor {name!r} has shape {list(arrays[name].shape)}, layer_sizes {sizes} "
                f"need {shape}")
        _expect(path, np.isfinite(arrays[name]).all(), f"tensor {name!r} has non-finite values")
    coefs = [arrays[f"coefs.{i}"] for i in range(L)]
    intercepts = [arrays[f"intercepts.{i}"] for i in range(L)]
    if kind == "MLP":
        return _load_mlp(path, doc, sizes, acts, coefs, intercepts)
    return _load_estimator(path, doc, kind, sizes, acts, coefs, intercepts)


def _load_mlp(path, doc, sizes, acts, coefs, intercepts):
    from .model import INITS, MLP
    drop, seed, init = doc.get("dropout"), doc.get("seed"), doc.get("init")
    _expect(path, isinstance(drop, list) and len(drop) == len(acts)
            and all(isinstance(p, (int, float)) and 0 <= p < 1 for p in drop),
            f"bad dropout {drop!r}")
    _expect(path, isinstance(seed, str) and seed.isdigit(), f"bad seed {seed!r}")
    _expect(path, init in INITS, f"bad init {init!r}")
    model = MLP(sizes, acts, doc["out_activation"], init=init, dropout=drop)
    model.seed = int(seed)
    model.params = [p for pair in zip(coefs, intercepts) for p in pair]
    model.grads = [np.zeros_like(p) for p in model.params]
    return model


def _load_estimator(path, doc, kind, sizes, acts, coefs, intercepts):
    from . import estimators
    cls = getattr(estimators, kind)
    hyper, attrs = doc.get("hyperparameters"), doc.get("attributes")
    _expect(path, isinstance(hyper, dict) and isinstance(attrs, dict),
            "hyperparameters and attributes must be JSON objects")
    valid = cls().get_params(deep=False)
    for name, value in hyper.items():
        _expect(path, name in valid and name != "callback", f"unknown hyperparameter {name!r}")
        _expect(path, isinstance(value, (bool, int, float, str, list, type(None))),
                f"hyperparameter {name!r} has a non-data value")
    if isinstance(hyper.get("hidden_layer_sizes"), list):
        hyper["hidden_layer_sizes"] = tuple(hyper["hidden_layer_sizes"])    # JSON has no tuples
    est = cls(**hyper)
    try:
        est._check_params()
    except ValueError as e:
        _fail(path, f"invalid hyperparameters: {e}")
    _expect(path, list(np.atleast_1d(est.hidden_layer_sizes)) == sizes[1:-1],
            "hidden_layer_sizes does not match layer_sizes")
    for name, value in attrs.items():
        _expect(path, name in _ATTRS and isinstance(value, _ATTRS[name]),
                f"bad attribute {name!r}: {value!r}")
        setattr(est, name, value)
    _expect(path, attrs.get("n_features_in_") == sizes[0] and
            attrs.get("n_outputs_") == sizes[-1], "n_features_in_ / n_outputs_ do not match "
                                                  "layer_sizes")
    out_act = doc["out_activation"]
    est.coefs_, est.intercepts_, est.out_activation_ = coefs, intercepts, out_act
    if kind == "MLPClassifier":
        from sklearn.preprocessing import LabelBinarizer
        c = doc.get("classes")
        _expect(path, isinstance(c, dict) and c.get("dtype") in _CLASS_DTYPES
                and isinstance(c.get("values"), list) and c.get("y_type") in _LB_TYPES,
                f"bad classes {c!r}")
        pytype = {"int": int, "float": (int, float), "str": str, "bool": bool}[c["dtype"]]
        _expect(path, all(isinstance(v, pytype) for v in c["values"]),
                f"class values do not match their dtype {c['dtype']!r}")
        classes = np.array(c["values"], dtype={"int": np.int64, "float": np.float64,
                                               "str": np.str_, "bool": np.bool_}[c["dtype"]])
        n_out = len(classes) if c["y_type"] != "binary" else 1
        _expect(path, len(classes) >= 1 and n_out == sizes[-1] and
                out_act == ("softmax" if c["y_type"] == "multiclass" else "logistic"),
                f"{len(classes)} classes of type {c['y_type']} do not match {sizes[-1]} "
                f"outputs with {out_act}")
        lb = LabelBinarizer()
        lb.classes_, lb.y_type_, lb.sparse_input_ = classes, c["y_type"], False
        est._label_binarizer, est.classes_ = lb, classes
        est._loss = "softmax" if c["y_type"] == "multiclass" else "sigmoid"
    else:
        _expect(path, out_act == "identity", f"a regressor's output must be identity, got "
                                             f"{out_act!r}")
    return est
