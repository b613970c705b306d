"""Optimizers and learning-rate schedules for the model API (fastmlp.MLP).

An optimizer holds its parameters (float32 arrays, updated in place by the fastmlp update
kernels) and their state; ``step(grads)`` applies one update, with ``grads`` in the order of
``params`` (``MLP.grads``). ``step()`` without arguments uses the gradients of the model the
optimizer was built from (``SGD(model, lr=...)``).

A learning rate is a float or a schedule: an object whose ``__call__(t)`` returns the rate at
time ``t``. Optimizers call it with the number of updates done so far; the estimators call it
once per epoch with ``t_``, the number of samples seen (scikit-learn's clock for "invscaling").
"""
import math

import numpy as np

from ..core import adam_update, rmsprop_update, sgd_update

__all__ = ["SGD", "RMSProp", "Adam", "AdamW", "Constant", "InverseScaling", "StepDecay",
           "CosineWarmup", "ReduceOnPlateau"]


# ---- schedules --------------------------------------------------------------------------------


class Constant:
    """lr(t) = lr."""

    def __init__(self, lr):
        self.lr = float(lr)

    def __call__(self, t):
        return self.lr


class InverseScaling:
    """scikit-learn's "invscaling": lr(t) = lr / (t + 1) ** power_t."""

    def __init__(self, lr, power_t=0.5):
        self.lr, self.power_t = float(lr), float(power_t)

    def __call__(self, t):
        return self.lr / (t + 1) ** self.power_t


class StepDecay:
    """lr(t) = lr * gamma ** (t // step_size)."""

    def __init__(self, lr, step_size, gamma=0.1):
        if step_size < 1:
            raise ValueError(f"step_size must be >= 1, got {step_size}")
        self.lr, self.step_size, self.gamma = float(lr), int(step_size), float(gamma)

    def __call__(self, t):
        return self.lr * self.gamma ** (t // self.step_size)


class CosineWarmup:
    """Linear warmup from 0 over ``warmup`` steps, then cosine decay to ``min_lr`` at ``total``:
    lr(t) = lr (t + 1) / warmup for t < warmup, else
    min_lr + (lr - min_lr) (1 + cos(pi min(1, (t - warmup) / (total - warmup)))) / 2."""

    def __init__(self, lr, total, warmup=0, min_lr=0.0):
        if total < 1 or not 0 <= warmup < total:
            raise ValueError(f"need total >= 1 and 0 <= warmup < total, got total={total}, "
                             f"warmup={warmup}")
        self.lr, self.total, self.warmup, self.min_lr = float(lr), total, warmup, float(min_lr)

    def __call__(self, t):
        if t < self.warmup:
            return self.lr * (t + 1) / self.warmup
        frac = min(1.0, (t - self.warmup) / (self.total - self.warmup))
        return self.min_lr + (self.lr - self.min_lr) * (1 + math.cos(math.pi * frac)) / 2


class ReduceOnPlateau:
    """scikit-learn's "adaptive": the rate stays constant while the reported metric (a loss:
    lower is better) improves by more than ``tol``; after more than ``patience`` reports without
    improvement it is divided by ``factor`` (5) and the count restarts. ``exhausted`` becomes
    True at such a plateau if the rate is already at most ``min_lr`` (1e-6) (the rate is then
    left as it is): scikit-learn's signal to stop. patience may be math.inf (never reduce)."""

    def __init__(self, lr, patience=10, factor=5.0, tol=1e-4, min_lr=1e-6):
        self.lr, self.factor = float(lr), float(factor)
        self.patience = patience if patience == math.inf else int(patience)
        self.tol, self.min_lr = float(tol), float(min_lr)
        self.best, self.bad = math.inf, 0
        self._exhausted = False

    def __call__(self, t):
        return self.lr

    def report(self, metric):
        """Record one epoch's metric (lower is better); returns the rate for what follows."""
        if metric > self.best - self.tol:
            self.bad += 1
        else:
            self.bad = 0
        self.best = min(self.best, metric)
        if self.bad > self.patience:
            if self.lr <= self.min_lr:
                self._exhausted = True
            else:
                self.lr /= self.factor
            self.bad = 0
        return self.lr

    @property
    def exhausted(self):
        return self._exhausted


def as_schedule(lr):
    """A schedule for a float or a schedule (anything callable)."""
    return lr if callable(lr) else Constant(lr)


# ---- optimizers -------------------------------------------------------------------------------


class _Optimizer:
    n_state = 0

    def __init__(self, params, lr):
        self.model = None
        if hasattr(params, "params") and hasattr(params, "grads"):
            self.model, params = params, params.params
        self.params = list(params)
        for i, p in enumerate(self.params):
            if not (isinstance(p, np.ndarray) and p.dtype == np.float32 and p.flags.c_contiguous
                    and p.flags.writeable):
                raise TypeError(f"params[{i}] must be a writable C-contiguous float32 array")
        self.schedule = as_schedule(lr)
        self.t = 0
        self.state = [[np.zeros_like(p) for p in self.params] for _ in range(self.n_state)]

    @property
    def lr(self):
        """The learning rate of the next step."""
        return self.schedule(self.t)

    def step(self, grads=None):
        """Apply one update to every parameter; grads in the order of params (default: the
        model's .grads)."""
        if grads is None:
            if self.model is None:
                raise ValueError("step() needs grads unless the optimizer was built from a model")
            grads = self.model.grads
        grads = list(grads)
        if len(grads) != len(self.params):
            raise ValueError(f"expected {len(self.params)} gradients, got {len(grads)}")
        lr = self.lr
        self.t += 1
        for i, (p, g) in enumerate(zip(self.params, grads)):
            self._update(p, g, [s[i] for s in self.state], lr)


class SGD(_Optimizer):
    """SGD with optional (Nesterov) momentum, scikit-learn's form, and L2 (coupled, on every
    parameter given): see fastmlp.sgd_update."""

    def __init__(self, params, lr, momentum=0.0, nesterov=False, l2=0.0):
        self.n_state = 1 if momentum else 0
        super().__init__(params, lr)
        self.momentum, self.nesterov, self.l2 = momentum, nesterov, l2

    def _update(self, p, g, state, lr):
        sgd_update(p, g, lr=lr, l2=self.l2, momentum=self.momentum, nesterov=self.nesterov,
                   velocity=state[0] if state else None)


class RMSProp(_Optimizer):
    """RMSProp: see fastmlp.rmsprop_update."""
    n_state = 1

    def __init__(self, params, lr, rho=0.9, eps=1e-8, l2=0.0):
        super().__init__(params, lr)
        self.rho, self.eps, self.l2 = rho, eps, l2

    def _update(self, p, g, state, lr):
        rmsprop_update(p, g, state[0], lr=lr, rho=self.rho, eps=self.eps, l2=self.l2)


class Adam(_Optimizer):
    """Adam (scikit-learn's bias correction): see fastmlp.adam_update."""
    n_state = 2

    def __init__(self, params, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, l2=0.0,
                 weight_decay=0.0):
        super().__init__(params, lr)
        self.beta1, self.beta2, self.eps, self.l2 = beta1, beta2, eps, l2
        self.weight_decay = weight_decay

    def _update(self, p, g, state, lr):
        adam_update(p, g, state[0], state[1], step=self.t, lr=lr, beta1=self.beta1,
                    beta2=self.beta2, eps=self.eps, l2=self.l2, weight_decay=self.weight_decay)


class AdamW(Adam):
    """Adam with decoupled weight decay: p *= 1 - lr weight_decay before the Adam step."""

    def __init__(self, params, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01):
        super().__init__(params, lr, beta1, beta2, eps, 0.0, weight_decay)
