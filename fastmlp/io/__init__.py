"""Model files: a dense MLP's state as a .safetensors file, written and read without executing
code. This layer knows the file's conventions, not the model classes: each model kind writes its
own state through write_model and reads it back from the ModelFile that read_model returns;
fastmlp.load dispatches on the kind.

Tensors: ``coefs.{i}`` (n_i, n_{i+1}) and ``intercepts.{i}`` (n_{i+1},), float32 (the format:
fastmlp.io.safetensors), and for a normalized hidden layer i ``norm.{i}.gamma`` and
``norm.{i}.beta`` (n_{i+1},), with ``norm.{i}.running_mean`` / ``norm.{i}.running_var`` for a
BatchNorm (the document's "normalization" list says which; files without it have none). ``__metadata__["fastmlp"]`` is a JSON document: format_version,
fastmlp_version, trained_with (ISA, threads, CPU model and OpenMP runtime of the process that
saved it), kind, layer_sizes, activations (hidden layers), out_activation, and what the kind
adds (the MLP: init / dropout / seed; the estimators: hyperparameters, fitted attributes and, for
a classifier, the classes with their dtype).

read_model checks the header bounds and offsets, the tensor names, dtypes and shapes against the
layer sizes, allow-listed activation names, the kind against the kinds the caller reads, finite
weights and a size cap; the kind checks the rest. Any failure is a ModelFileError (a ValueError)
saying what is wrong.
"""
import json

import numpy as np

from ..core import ACTIVATIONS, info
from .._version import __version__
from .safetensors import (ModelFileError, expect, fail, is_int, json_loads, read_file, short,
                          write_file)

__all__ = ["FORMAT_VERSION", "MAX_BYTES", "NORM_TENSORS", "ModelFile", "ModelFileError",
           "classes_field", "json_value", "normalization_fields", "read_classes", "read_model",
           "write_model"]

FORMAT_VERSION = 1
MAX_BYTES = 2 << 30          # default size cap of a model file (2 GiB)
OUT_ACTIVATIONS = ACTIVATIONS + ("softmax", "exp")   # an output layer may also end in softmax
#                                                     or exp (a Poisson regressor's log link)


def json_value(v):
    """v as plain JSON data, or raise TypeError (callables, arrays, random generators)."""
    if isinstance(v, (bool, str, type(None))):
        return v
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v)
    if isinstance(v, (list, tuple)):
        return [json_value(x) for x in v]
    raise TypeError(type(v).__name__)


NORM_TENSORS = {"layer": ("gamma", "beta"),
                "batch": ("gamma", "beta", "running_mean", "running_var")}


def write_model(path, kind, coefs, intercepts, activations, out_activation, extra,
                norm_tensors=None):
    """Write a dense MLP of the given kind: its weights, its layers, and the kind's own metadata
    (extra: a dict of JSON data; with norm_tensors, the norm.* tensors, it carries
    "normalization", "norm_eps" and "norm_momentum")."""
    machine = info()
    sizes = [c.shape[0] for c in coefs] + [coefs[-1].shape[1]]
    # Where the model came from, for reports; informational, not checked on load.
    doc = {"format_version": FORMAT_VERSION, "fastmlp_version": __version__,
           "trained_with": {k: machine[k] for k in ("isa", "num_threads", "cpu", "openmp")},
           "kind": kind, "layer_sizes": sizes, "activations": list(activations),
           "out_activation": out_activation, **extra}
    tensors = {f"coefs.{i}": c for i, c in enumerate(coefs)}
    tensors.update({f"intercepts.{i}": b for i, b in enumerate(intercepts)})
    # interleaved, as the files have always been written: coefs.0, intercepts.0, coefs.1, ...
    order = [name for i in range(len(coefs)) for name in (f"coefs.{i}", f"intercepts.{i}")]
    tensors.update(norm_tensors or {})
    order += sorted(norm_tensors or {})
    write_file(path, {name: tensors[name] for name in order},
               {"fastmlp": json.dumps(doc, allow_nan=True)})


class ModelFile:
    """A model file read and checked by read_model: path, doc (the metadata document), kind,
    layer_sizes, activations (hidden layers), out_activation, coefs and intercepts (float32).
    expect / fail raise ModelFileError naming the file, for the kind's own checks."""

    def __init__(self, path, doc, coefs, intercepts):
        self.path, self.doc = path, doc
        self.kind, self.layer_sizes = doc["kind"], doc["layer_sizes"]
        self.activations, self.out_activation = doc["activations"], doc["out_activation"]
        self.coefs, self.intercepts = coefs, intercepts

    def expect(self, cond, msg):
        expect(self.path, cond, msg)

    def fail(self, msg):
        fail(self.path, msg)


def read_model(path, kinds, *, max_bytes=MAX_BYTES):
    """Read and check a model file whose kind is one of kinds; returns a ModelFile. path: a file
    path, a file descriptor or a binary file object (the last two are left open)."""
    meta, arrays = read_file(path, max_bytes)
    expect(path, isinstance(meta.get("fastmlp"), str),
           "not a fastmlp model (no 'fastmlp' entry in __metadata__)")
    doc = json_loads(path, meta["fastmlp"], "fastmlp metadata")
    expect(path, isinstance(doc, dict), "fastmlp metadata is not a JSON object")
    expect(path, doc.get("format_version") == FORMAT_VERSION,
           f"unsupported format_version {short(doc.get('format_version'))} (this fastmlp reads "
           f"{FORMAT_VERSION})")
    kind = doc.get("kind")
    expect(path, isinstance(kind, str) and kind in kinds, f"unknown model kind {short(kind)}")
    sizes, acts = doc.get("layer_sizes"), doc.get("activations")
    expect(path, isinstance(sizes, list) and 2 <= len(sizes) <= len(arrays) // 2 + 1
           and all(is_int(s, 1, 1 << 31) for s in sizes),
           f"bad layer_sizes {short(sizes)} for {len(arrays)} tensors")
    expect(path, isinstance(acts, list) and len(acts) == len(sizes) - 2,
           f"activations must be a list of {len(sizes) - 2} names, got {short(acts)}")
    for a in acts:
        expect(path, isinstance(a, str) and a in ACTIVATIONS,
               f"unknown activation {short(a)} (allowed: {ACTIVATIONS})")
    out_act = doc.get("out_activation")
    expect(path, isinstance(out_act, str) and out_act in OUT_ACTIVATIONS,
           f"unknown output activation {short(out_act)}")
    L = len(sizes) - 1
    shapes = {f"coefs.{i}": [sizes[i], sizes[i + 1]] for i in range(L)}
    shapes.update({f"intercepts.{i}": [sizes[i + 1]] for i in range(L)})
    norms = doc.get("normalization", [None] * (L - 1))     # files before it: none
    expect(path, isinstance(norms, list) and len(norms) == L - 1
           and all(k is None or k in NORM_TENSORS for k in norms),
           f"normalization must be a list of {L - 1} entries None, 'layer' or 'batch', got "
           f"{short(norms)}")
    for i, k in enumerate(norms):
        for what in NORM_TENSORS.get(k, ()):
            shapes[f"norm.{i}.{what}"] = [sizes[i + 1]]
    expect(path, set(arrays) == set(shapes),
           f"tensors {sorted(arrays)} do not match layer_sizes {sizes}")
    for name, shape in shapes.items():
        expect(path, list(arrays[name].shape) == shape,
               f"tensor {name!r} has shape {list(arrays[name].shape)}, layer_sizes {sizes} "
               f"need {shape}")
        expect(path, np.isfinite(arrays[name]).all(), f"tensor {name!r} has non-finite values")
    f = ModelFile(path, doc, [arrays[f"coefs.{i}"] for i in range(L)],
                  [arrays[f"intercepts.{i}"] for i in range(L)])
    f.norms = {name: a for name, a in arrays.items() if name.startswith("norm.")}
    for name, a in f.norms.items():
        if name.endswith("running_var"):
            f.expect(bool((a >= 0).all()), f"tensor {name!r} has negative variances")
    return f


def normalization_fields(f):
    """(normalization, norm_eps, norm_momentum) of a ModelFile (defaults for older files)."""
    norms = f.doc.get("normalization", [None] * (len(f.layer_sizes) - 2))
    eps, mom = f.doc.get("norm_eps", 1e-5), f.doc.get("norm_momentum", 0.1)
    f.expect(isinstance(eps, (int, float)) and not isinstance(eps, bool) and 0 < eps < 1e300,
             f"bad norm_eps {short(eps)}")
    f.expect(isinstance(mom, (int, float)) and not isinstance(mom, bool) and 0 <= mom <= 1,
             f"bad norm_momentum {short(mom)}")
    return norms, float(eps), float(mom)


CLASS_DTYPES = {"bool": np.bool_, "int": np.int64, "float": np.float64, "str": np.str_}
Y_TYPES = ("binary", "multiclass", "multilabel-indicator")    # scikit-learn's LabelBinarizer's


def classes_field(classes, y_type):
    """A classifier's classes as metadata: {"classes": {"dtype", "values", "y_type"}}, the dtype
    named so that read_classes gives them back of the kind they were (3 stays an int, "3" a
    str). Written by MLPClassifier.save and by `fastmlp train --save`."""
    classes = np.asarray(classes)
    kind = next((k for k, t in [("bool", np.bool_), ("int", np.integer), ("float", np.floating),
                                ("str", np.str_)] if np.issubdtype(classes.dtype, t)), None)
    if kind is None:
        raise TypeError(f"cannot save classes of dtype {classes.dtype} (only bool, int, float and "
                        "str labels)")
    return {"classes": {"dtype": kind, "values": [json_value(c.item()) for c in classes],
                        "y_type": y_type}}


def read_classes(f):
    """(classes, y_type) of a ModelFile written with classes_field, checked."""
    c = f.doc.get("classes")
    f.expect(isinstance(c, dict) and c.get("dtype") in CLASS_DTYPES
             and isinstance(c.get("values"), list) and c.get("y_type") in Y_TYPES,
             f"bad classes {short(c)}")
    pytype = {"int": int, "float": (int, float), "str": str, "bool": bool}[c["dtype"]]
    f.expect(all(isinstance(v, pytype) for v in c["values"]),
             f"class values do not match their dtype {c['dtype']!r}")
    return np.array(c["values"], dtype=CLASS_DTYPES[c["dtype"]]), c["y_type"]
