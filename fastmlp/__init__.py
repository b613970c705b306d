"""fastmlp: fast multilayer perceptrons on multicore CPUs.

Kernels (float32, compiled C with OpenMP, SIMD paths chosen at import):
    matmul, bias_activation, activation_backward, bias_grad,
    softmax_cross_entropy, sigmoid_cross_entropy, mse_loss, poisson_loss,
    sgd_update, rmsprop_update, adam_update,
    sparse_matmul, sparse_matmul_tn (a SciPy CSR / CSC matrix times a dense one, and its weight
    gradient),
    layernorm_forward, layernorm_backward, batchnorm_forward, batchnorm_backward (each fused with
    the activation after it), clip_grad_norm (global-norm gradient clipping)
Their pure-NumPy twins live in fastmlp.reference; fastmlp.testing holds the comparison helper.
Threads: set_num_threads / get_num_threads. Machine and build: info().

Models: MLP (model API), optim (optimizers and schedules), TrainStep (the native training
step, in phases), load (read a saved model), profile (the per-kernel profiler);
MLPClassifier and MLPRegressor (scikit-learn API; imported on first use, so `import fastmlp`
needs no scikit-learn).

This module is the facade: it holds no code of its own but load(). The layers, each a
subpackage importing only those before it: core (compiled kernels, TrainStep, reference),
io (model files), model (MLP, optim), estimators (scikit-learn), tools (CLI, profiler,
benchmarks); datasets stands apart. See the README's "Layout".
"""
import sys

from . import core, io, model
from ._version import __version__
from .core import (
    ACTIVATIONS,
    TrainStep,
    activation_backward,
    adam_update,
    batchnorm_backward,
    batchnorm_forward,
    bias_activation,
    bias_grad,
    clip_grad_norm,
    get_num_threads,
    info,
    layernorm_backward,
    layernorm_forward,
    matmul,
    measure_peak_gflops,
    mse_loss,
    poisson_loss,
    reference,
    rmsprop_update,
    set_num_threads,
    sgd_update,
    sigmoid_cross_entropy,
    softmax_cross_entropy,
    sparse_matmul,
    sparse_matmul_tn,
    testing,
)
from .model import MLP, optim
from .tools.profiler import profile

# fastmlp.reference, fastmlp.testing and fastmlp.optim were modules of this package before the
# layers: `import fastmlp.optim` and its kin keep working.
for _name, _module in (("reference", reference), ("testing", testing), ("optim", optim)):
    sys.modules[f"{__name__}.{_name}"] = _module
del _name, _module

_ESTIMATORS = ("MLPClassifier", "MLPRegressor")


def load(path, *, max_bytes=io.MAX_BYTES):
    """Read a model written by save(): a fastmlp.MLP, MLPClassifier or MLPRegressor.

    path: a file path, a file descriptor or a binary file object (the last two are read from
    where they stand and left open); at most max_bytes are read. Never executes code from the
    file. Raises ModelFileError (a ValueError) if the file is truncated, corrupt, tampered with,
    or describes an invalid model. An estimator's file (MLPClassifier.save, `fastmlp train
    --save`) needs scikit-learn: without it, load raises ImportError saying so (fastmlp.io's
    read_model and read_classes still read its weights and classes)."""
    f = io.read_model(path, ("MLP",) + _ESTIMATORS, max_bytes=max_bytes)
    try:
        if f.kind == "MLP":
            return MLP._from_file(f)
        # optional dependency (scikit-learn): imported lazily, on purpose, only for an estimator
        from . import estimators
        return getattr(estimators, f.kind)._from_file(f)
    except io.ModelFileError:
        raise
    except (ArithmeticError, AttributeError, LookupError, RecursionError, TypeError,
            ValueError) as e:
        # what a kind's own checks let through is still the file's fault, and said so
        f.fail(f"invalid {f.kind}: {type(e).__name__}: {e}")


def __getattr__(name):
    if name not in _ESTIMATORS:
        raise AttributeError(f"module 'fastmlp' has no attribute {name!r}")
    # optional dependency (scikit-learn): imported lazily, on purpose, on first use
    from . import estimators
    return getattr(estimators, name)


__all__ = [
    "ACTIVATIONS", "MLP", "MLPClassifier", "MLPRegressor", "TrainStep", "load", "optim",
    "activation_backward", "adam_update", "batchnorm_backward", "batchnorm_forward",
    "bias_activation", "bias_grad", "clip_grad_norm", "core", "get_num_threads", "info", "io",
    "layernorm_backward", "layernorm_forward", "matmul", "measure_peak_gflops", "model",
    "mse_loss", "poisson_loss", "profile", "reference", "rmsprop_update", "set_num_threads", "sgd_update",
    "sigmoid_cross_entropy", "softmax_cross_entropy", "sparse_matmul", "sparse_matmul_tn",
    "testing",
]
