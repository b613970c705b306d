"""fastmlp: fast multilayer perceptrons on multicore CPUs.

Kernels (float32, compiled C with OpenMP, SIMD paths chosen at import):
    matmul, bias_activation, activation_backward, bias_grad,
    softmax_cross_entropy, sigmoid_cross_entropy, mse_loss,
    sgd_update, rmsprop_update, adam_update
Their pure-NumPy twins live in fastmlp.reference; fastmlp.testing holds the comparison helper.
Threads: set_num_threads / get_num_threads. Machine and build: info().

Models (imported on first use, so `import fastmlp` stays fast and needs no scikit-learn):
    MLPClassifier, MLPRegressor (scikit-learn API; need scikit-learn), MLP (model API),
    optim (optimizers and schedules), load (read a saved model), TrainStep (one native
    training step).
"""
import os

from . import _threads
from ._kernels import (
    ACTIVATIONS,
    activation_backward,
    adam_update,
    bias_activation,
    bias_grad,
    get_num_threads,
    matmul,
    measure_peak_gflops,
    mse_loss,
    rmsprop_update,
    set_num_threads,
    sgd_update,
    sigmoid_cross_entropy,
    softmax_cross_entropy,
)
from . import _kernels
from .profiler import profile

__version__ = "0.1.0"

_threads.configure(_kernels)


def info():
    """What fastmlp runs with: version, ISA in use and supported, threads, CPU model, OpenMP
    runtime, GEMM block sizes."""
    from threadpoolctl import threadpool_info

    openmp = [
        dict(library=os.path.basename(i["filepath"]), version=i.get("version"),
             internal_api=i.get("internal_api"))
        for i in threadpool_info()
        if i.get("user_api") == "openmp"
    ]
    return {
        "version": __version__,
        "isa": _kernels.get_isa(),
        "supported_isas": list(_kernels.supported_isas()),
        "num_threads": get_num_threads(),
        "physical_cores": _threads.physical_cores(),
        "cpu": _threads.cpu_model(),
        "openmp": openmp[0] if openmp else None,
        "gemm_blocks": _kernels.gemm_blocks(),
    }


_LAZY = {"MLPClassifier": "estimators", "MLPRegressor": "estimators", "MLP": "model",
         "load": "io", "optim": None, "TrainStep": "_kernels"}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'fastmlp' has no attribute {name!r}")
    import importlib
    module = importlib.import_module(f".{_LAZY[name] or name}", __name__)
    return module if _LAZY[name] is None else getattr(module, name)


__all__ = [
    "ACTIVATIONS", "MLP", "MLPClassifier", "MLPRegressor", "TrainStep", "load", "optim",
    "activation_backward", "adam_update", "bias_activation", "bias_grad",
    "get_num_threads", "info", "matmul", "profile", "measure_peak_gflops", "mse_loss", "rmsprop_update",
    "set_num_threads", "sgd_update", "sigmoid_cross_entropy", "softmax_cross_entropy",
]
