"""fastmlp.estimators: scikit-learn's MLPClassifier and MLPRegressor, trained by fastmlp.

The only part of fastmlp that imports scikit-learn (pip install "fastmlp[sklearn]"). Built on
fastmlp.core (TrainStep), fastmlp.model (init_params, optim's schedules) and fastmlp.io.
"""
from .mlp import MLPClassifier, MLPRegressor, NonFiniteWeightsError

__all__ = ["MLPClassifier", "MLPRegressor", "NonFiniteWeightsError"]
