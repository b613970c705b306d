"""fastmlp.estimators: scikit-learn's MLPClassifier and MLPRegressor, trained by fastmlp.

The only part of fastmlp that imports scikit-learn (pip install "fastmlp[sklearn]"). Built on
fastmlp.core (TrainStep), fastmlp.model (init_params, optim's schedules) and fastmlp.io.
ONNX export: est.to_onnx() (onnx_export; the onnx package), register_skl2onnx() for skl2onnx.
"""
from .mlp import MLPClassifier, MLPRegressor, NonFiniteWeightsError, register_skl2onnx
from .onnx_export import to_onnx

__all__ = ["MLPClassifier", "MLPRegressor", "NonFiniteWeightsError", "register_skl2onnx",
           "to_onnx"]
