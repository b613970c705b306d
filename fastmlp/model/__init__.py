"""fastmlp.model: the model API for custom training loops.

    MLP           dense layers, per-layer activations, He / Glorot / scikit-learn init,
                  dropout; forward, backward, params and grads (views of flat buffers)
    init_params   the initial weights of a layer stack (norm_params, running_stats: those of
                  its normalization layers)
    diagnostics   per-layer training diagnostics (Recorder, format_table, plot)
    optim         optimizers (SGD, RMSProp, Adam, AdamW) and learning-rate schedules
    TrainStep     the native training step (forward / backward / update), from fastmlp.core

Imports fastmlp.core and fastmlp.io; nothing here needs scikit-learn.
"""
from ..core import TrainStep
from . import diagnostics, optim
from .mlp import (INITS, MLP, NORMALIZATIONS, init_params, norm_params, normalization_list,
                  running_stats)

__all__ = ["INITS", "MLP", "NORMALIZATIONS", "TrainStep", "diagnostics", "init_params",
           "norm_params", "normalization_list", "optim", "running_stats"]
