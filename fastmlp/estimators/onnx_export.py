"""ONNX export of fitted MLPClassifier / MLPRegressor (pip install "fastmlp[onnx]").

The graph computes what predict / predict_proba compute, in float32, at inference: each layer
is a Gemm, then LayerNormalization or BatchNormalization (its running statistics) where the
layer is normalized, then the layer's activation; dropout is the identity at inference and
leaves no node. Outputs are named as skl2onnx names them for scikit-learn's MLPs:

    input   X              float32 (n, n_features)
    classifier: label      (n,) the classes_ (int64, float64, bool or string), or, multi-label,
                           (n, n_classes) int64 0 / 1 indicators as predict gives them
                probabilities  float32 (n, n_classes), predict_proba's
    regressor:  variable   float32 (n, n_outputs) (predict's, kept 2-D as skl2onnx does)

to_onnx builds the model with the onnx package alone; register_skl2onnx_converters lets
skl2onnx convert the estimators (also inside a Pipeline) with the same graph.
"""
import math
import os

import numpy as np
from sklearn.utils.validation import check_is_fitted

from .._version import __version__
from ..model import normalization_list

__all__ = ["to_onnx", "register_skl2onnx_converters", "OPSET"]

OPSET = 17        # the first with LayerNormalization; onnxruntime runs it from 1.14 on
IR_VERSION = 8    # the IR that came with opset 17, so older runtimes load the file too
NORM_EPS = 1e-5         # the estimators' LayerNorm / BatchNorm eps (fastmlp.core's default)
NEGATIVE_SLOPE = 0.01   # the estimators' leaky_relu slope (fastmlp.core's default)
# GELU, tanh approximation as fastmlp.core computes it: x * sigmoid(2 C0 (x + C1 x^3))
GELU_C0, GELU_C1 = math.sqrt(2.0 / math.pi), 0.044715
OUTPUTS = {"classifier": ["label", "probabilities"], "regressor": ["variable"]}


def _onnx():
    try:
        # optional dependency (onnx): imported lazily, on purpose, only when exporting
        import onnx
    except ImportError as e:
        raise ImportError("ONNX export needs the onnx package: pip install 'fastmlp[onnx]' "
                          "(or pip install onnx onnxruntime)") from e
    return onnx


class _Graph:
    """The nodes and constants of a graph under construction, named by unique(prefix): the
    same list feeds a plain onnx model (to_onnx) or skl2onnx's container."""

    def __init__(self, unique):
        self.unique = unique
        self.nodes = []       # (op_type, inputs, outputs, attributes)
        self.constants = []   # (name, numpy array)

    def const(self, prefix, value):
        name = self.unique(prefix)
        self.constants.append((name, np.asarray(value)))
        return name

    def op(self, op_type, *inputs, out=None, **attrs):
        out = out or self.unique(op_type.lower())
        self.nodes.append((op_type, list(inputs), [out], attrs))
        return out


def _activation(g, x, name, out=None):
    """Nodes applying fastmlp's activation `name` to x."""
    if name == "identity":
        return g.op("Identity", x, out=out) if out else x
    simple = {"relu": "Relu", "tanh": "Tanh", "logistic": "Sigmoid"}
    if name in simple:
        return g.op(simple[name], x, out=out)
    if name == "leaky_relu":
        return g.op("LeakyRelu", x, out=out, alpha=NEGATIVE_SLOPE)
    if name == "gelu":
        # explicit ops: ONNX's Gelu(approximate="tanh") needs opset 20, beyond older runtimes
        cube = g.op("Mul", g.op("Mul", x, x), x)
        u = g.op("Add", x, g.op("Mul", cube, g.const("gelu_c1", np.float32(GELU_C1))))
        s = g.op("Sigmoid", g.op("Mul", u, g.const("gelu_2c0", np.float32(2 * GELU_C0))))
        return g.op("Mul", x, s, out=out)
    raise ValueError(f"ONNX export: activation {name!r} is not supported (supported: identity, "
                     "relu, leaky_relu, tanh, logistic, gelu)")


def _classes_table(est):
    """classes_ as an ONNX-typed table for the label lookup: int64, float64, bool or str."""
    classes = np.asarray(est.classes_)
    kind = classes.dtype.kind
    if kind == "b":
        return classes.astype(np.bool_)
    if kind in "iu":
        if kind == "u" and classes.size and classes.max() > np.iinfo(np.int64).max:
            raise ValueError("ONNX export: classes_ has unsigned labels beyond int64's range")
        return classes.astype(np.int64)
    if kind == "f":
        return classes.astype(np.float64)
    if kind == "U" or (kind == "O" and all(isinstance(c, str) for c in classes)):
        return np.array([str(c) for c in classes], dtype=object)
    raise TypeError(f"ONNX export: classes_ of dtype {classes.dtype} cannot be ONNX labels "
                    "(only bool, int, float and str classes)")


def _task(est):
    """'classifier' or 'regressor' (a fitted fastmlp estimator), or a clear error."""
    # fastmlp's hyperparameters (scikit-learn's MLPs have no normalization), then its fit
    if not all(hasattr(est, a) for a in ("hidden_layer_sizes", "activation", "normalization",
                                         "dropout")):
        raise TypeError(f"ONNX export needs a fastmlp MLPClassifier or MLPRegressor, got "
                        f"{type(est).__name__}")
    check_is_fitted(est, ["coefs_", "intercepts_", "out_activation_"])
    task = "classifier" if hasattr(est, "classes_") else "regressor"
    wanted = {"classifier": ("softmax", "logistic"), "regressor": ("identity", "exp")}[task]
    if est.out_activation_ not in wanted:
        raise ValueError(f"ONNX export: a {task} with output activation "
                         f"{est.out_activation_!r} is not supported (only {wanted})")
    return task


def _build(g, est, x, outputs):
    """Nodes computing est's predictions from the float32 input x into the names outputs
    (OUTPUTS[_task(est)])."""
    n_hidden = len(est.coefs_) - 1
    acts = [est.activation] * n_hidden if isinstance(est.activation, str) \
        else list(est.activation)
    if len(acts) != n_hidden:
        raise ValueError(f"ONNX export: activation {est.activation!r} does not give one "
                         f"activation per hidden layer ({n_hidden})")
    norms = normalization_list(est.normalization, n_hidden)
    gammas = iter(getattr(est, "norm_params_", [])[0::2])
    betas = iter(getattr(est, "norm_params_", [])[1::2])
    stats = iter(getattr(est, "running_stats_", []))
    a = x
    f32 = np.float32    # the weights as predict computes with them
    for l, (W, b) in enumerate(zip(est.coefs_, est.intercepts_)):
        h = g.op("Gemm", a, g.const(f"coef{l}", f32(W)), g.const(f"intercept{l}", f32(b)))
        if l == n_hidden:
            a = h
            break
        if norms[l] == "layer":
            h = g.op("LayerNormalization", h, g.const(f"gamma{l}", f32(next(gammas))),
                     g.const(f"beta{l}", f32(next(betas))), axis=-1, epsilon=NORM_EPS)
        elif norms[l] == "batch":
            h = g.op("BatchNormalization", h, g.const(f"gamma{l}", f32(next(gammas))),
                     g.const(f"beta{l}", f32(next(betas))),
                     g.const(f"running_mean{l}", f32(next(stats))),
                     g.const(f"running_var{l}", f32(next(stats))), epsilon=NORM_EPS)
        elif norms[l] is not None:
            raise ValueError(f"ONNX export: normalization {norms[l]!r} is not supported")
        a = _activation(g, h, acts[l])
    out_act = est.out_activation_
    if out_act in ("identity", "exp"):
        if out_act == "exp":
            g.op("Exp", a, out=outputs[0])
        else:
            g.op("Identity", a, out=outputs[0])
        return
    label, proba = outputs
    classes = _classes_table(est)
    if out_act == "softmax":
        g.op("Softmax", a, out=proba, axis=-1)
        index = g.op("ArgMax", proba, axis=1, keepdims=0)   # the first of tied maxima, as NumPy
        g.op("Gather", g.const("classes", classes), index, out=label, axis=0)
        return
    p = g.op("Sigmoid", a)
    # LabelBinarizer.inverse_transform: a class is predicted when its probability is > 0.5
    positive = g.op("Greater", p, g.const("threshold", np.float32(0.5)))
    if getattr(est._label_binarizer, "y_type_", None) == "multilabel-indicator":
        g.op("Identity", p, out=proba)
        g.op("Cast", positive, out=label, to=7)          # 7: int64, predict's 0 / 1 ints
        return
    # binary: one output column p, probabilities [1 - p, p]; one class only: always that class
    g.op("Concat", g.op("Sub", g.const("one", np.float32(1)), p), p, out=proba, axis=1)
    index = g.op("Reshape", g.op("Cast", positive, to=7), g.const("flat", np.array([-1])))
    table = classes if len(classes) == 2 else np.repeat(classes[:1], 2)
    g.op("Gather", g.const("classes", table), index, out=label, axis=0)


def _tensor(onnx, name, value):
    if value.dtype == object:     # strings: from_array wants them as bytes or str objects
        return onnx.helper.make_tensor(name, onnx.TensorProto.STRING, value.shape,
                                       [s.encode() for s in value.ravel()])
    return onnx.numpy_helper.from_array(value, name)


def to_onnx(est, path=None):
    """The ONNX model (onnx.ModelProto, opset OPSET) of a fitted fastmlp MLPClassifier or
    MLPRegressor; also written to path (str or os.PathLike) when given.

    The model takes X, float32 (n, n_features), and gives what predict / predict_proba give
    (see the module docstring for the output names, types and shapes). Dense input only; cast
    float64 input to float32 first (fastmlp rounds it to float32 too). Raises TypeError for an
    estimator that is not a fastmlp one and NotFittedError for an unfitted one; ValueError or
    TypeError naming what cannot be exported (an activation, output, normalization or class
    dtype ONNX export does not know)."""
    onnx = _onnx()
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"to_onnx: path must be None, a str or an os.PathLike, got "
                        f"{type(path).__name__}")
    task = _task(est)
    counts = {}

    def unique(prefix):
        counts[prefix] = counts.get(prefix, -1) + 1
        return f"{prefix}_{counts[prefix]}" if counts[prefix] else prefix

    for name in ["X"] + OUTPUTS[task]:
        unique(name)    # reserved: no intermediate takes an input's or output's name
    g = _Graph(unique)
    _build(g, est, "X", OUTPUTS[task])
    h = onnx.helper
    nodes = [h.make_node(op, ins, outs, name=unique(f"{op}_node"), **attrs)
             for op, ins, outs, attrs in g.nodes]
    f32 = onnx.TensorProto.FLOAT
    n_out = est.coefs_[-1].shape[1]
    if task == "regressor":
        outs = [h.make_tensor_value_info("variable", f32, [None, n_out])]
    else:
        classes = _classes_table(est)
        multilabel = est._label_binarizer.y_type_ == "multilabel-indicator"
        label_type = onnx.TensorProto.INT64 if multilabel else \
            onnx.helper.np_dtype_to_tensor_dtype(classes.dtype) if classes.dtype != object \
            else onnx.TensorProto.STRING
        outs = [h.make_tensor_value_info("label", label_type,
                                         [None, n_out] if multilabel else [None]),
                h.make_tensor_value_info("probabilities", f32, [None, max(n_out, 2)])]
    graph = h.make_graph(nodes, type(est).__name__,
                         [h.make_tensor_value_info("X", f32, [None, est.coefs_[0].shape[0]])],
                         outs, [_tensor(onnx, n, v) for n, v in g.constants])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", OPSET)],
                         producer_name="fastmlp", producer_version=__version__)
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    if path is not None:
        onnx.save_model(model, os.fspath(path))
    return model


# ---- skl2onnx ---------------------------------------------------------------------------------

def _skl2onnx_alias(cls):
    return f"Fastmlp{cls.__name__}"


def _skl2onnx_parser(scope, model, inputs, custom_parsers=None):
    """skl2onnx's parser: one operator with to_onnx's outputs (no ZipMap: probabilities stay
    a tensor, as to_onnx gives them)."""
    # optional dependency (skl2onnx): imported lazily, on purpose, only when converting
    from skl2onnx.common.data_types import (BooleanTensorType, DoubleTensorType,
                                            FloatTensorType, Int64TensorType,
                                            StringTensorType)
    op = scope.declare_local_operator(_skl2onnx_alias(type(model)), model)
    op.inputs = inputs
    task = _task(model)
    if task == "regressor":
        op.outputs.append(scope.declare_local_variable("variable", FloatTensorType()))
    else:
        kind = _classes_table(model).dtype.kind
        label = Int64TensorType if model._label_binarizer.y_type_ == "multilabel-indicator" \
            else {"b": BooleanTensorType, "i": Int64TensorType, "f": DoubleTensorType,
                  "O": StringTensorType}[kind]
        op.outputs.append(scope.declare_local_variable("label", label()))
        op.outputs.append(scope.declare_local_variable("probabilities", FloatTensorType()))
    return list(op.outputs)


def _skl2onnx_shapes(operator):
    """skl2onnx's shape calculator: the shapes of to_onnx's outputs."""
    est = operator.raw_operator
    n_out = est.coefs_[-1].shape[1]
    outs = operator.outputs
    if _task(est) == "regressor":
        outs[0].type.shape = [None, n_out]
        return
    multilabel = est._label_binarizer.y_type_ == "multilabel-indicator"
    outs[0].type.shape = [None, n_out] if multilabel else [None]
    outs[1].type.shape = [None, max(n_out, 2)]


def _skl2onnx_convert(scope, operator, container):
    """skl2onnx's converter: to_onnx's graph, added to skl2onnx's container."""
    onnx = _onnx()
    if container.target_opset < OPSET:
        raise ValueError(f"ONNX export of fastmlp estimators needs target_opset >= {OPSET}, "
                         f"got {container.target_opset}")
    x = operator.inputs[0]
    name = x.full_name
    if x.type.to_onnx_type().tensor_type.elem_type != onnx.TensorProto.FLOAT:
        # float64 (or int) input: rounded to float32 as fastmlp's predict rounds it
        name = scope.get_unique_variable_name("X_float32")
        container.add_node("Cast", [x.full_name], [name], to=onnx.TensorProto.FLOAT,
                           name=scope.get_unique_operator_name("Cast"))
    g = _Graph(scope.get_unique_variable_name)
    _build(g, operator.raw_operator, name, [o.full_name for o in operator.outputs])
    for cname, value in g.constants:
        if value.dtype == object:     # strings: the container copies a tensor's raw bytes only
            container.add_initializer(cname, onnx.TensorProto.STRING, list(value.shape),
                                      [str(s) for s in value.ravel()])
        else:
            t = _tensor(onnx, cname, value)
            container.add_initializer(cname, t.data_type, list(t.dims), t)
    for op, ins, outs, attrs in g.nodes:
        container.add_node(op, ins, outs, name=scope.get_unique_operator_name(op), **attrs)


def register_skl2onnx_converters(*classes):
    """Register with skl2onnx (update_registered_converter) a parser, shape calculator and
    converter for each estimator class given (fastmlp's MLPClassifier / MLPRegressor or
    subclasses), so that skl2onnx.to_onnx(est, X[:1]) converts them to to_onnx's graph."""
    try:
        # optional dependency (skl2onnx): imported lazily, on purpose, only when registering
        from skl2onnx import update_registered_converter
    except ImportError as e:
        raise ImportError("register_skl2onnx needs skl2onnx: pip install skl2onnx") from e
    for cls in classes:
        if not isinstance(cls, type):
            raise TypeError(f"register_skl2onnx_converters: classes must be estimator "
                            f"classes, got {cls!r}")
        update_registered_converter(cls, _skl2onnx_alias(cls), _skl2onnx_shapes,
                                    _skl2onnx_convert, parser=_skl2onnx_parser)
