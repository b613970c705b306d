"""fastmlp.model: the model API for custom training loops.

    MLP           dense layers, per-layer activations, He / Glorot / scikit-learn init,
                  dropout; forward, backward, params and grads (views of flat buffers)
    init_params   the initial weights of a layer stack
    optim         optimizers (SGD, RMSProp, Adam, AdamW) and learning-rate schedules
    TrainStep     the native training step (forward / backward / update), from fastmlp.core

Imports fastmlp.core and fastmlp.io; nothing here needs scikit-learn.
"""
from ..core import TrainStep
from . import optim
from .mlp import INITS, MLP, init_params

__all__ = ["INITS", "MLP", "TrainStep", "init_params", "optim"]
