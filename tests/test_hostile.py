"""Hostile calls: every public function, every argument, every kind of wrong value.

The table is generated: for each function a valid call (checked to work), and for each of its
arguments the hostile values of the argument's kind (wrong type, wrong dtype or rank, wrong
shape, non-contiguous or read-only outputs, NaN / inf / out-of-range / huge scalars, arrays
that alias an output). Each hostile call must raise a TypeError or ValueError (MemoryError for
an allocation the argument makes impossible) whose message names the argument; nothing may
crash, hang or return. The calls of one function run in a subprocess of their own, one per ISA
path, so a crash fails its test with the case that caused it instead of killing the suite.

Below the table: the sequences of issue 12 that used to overrun memory or write silent garbage,
run to completion and checked against the reference.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastmlp
from fastmlp import core
from fastmlp import reference as ref
from fastmlp.testing import assert_close

from conftest import ISAS_UNDER_TEST

# ---- the table --------------------------------------------------------------------------------
# The child process builds the same table (this module's source is its own), so the table and
# the runner cannot drift apart.

TABLE_SOURCE = r'''
import numpy as np
import fastmlp
from fastmlp import core

F = np.float32


def arr(*shape, dtype=F):
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


def readonly(x):
    x.flags.writeable = False
    return x


NUMBERS_BAD = [("str", lambda: "0.1"), ("None", lambda: None), ("list", lambda: [0.1]),
               ("complex", lambda: 1j), ("nan", lambda: float("nan")),
               ("inf", lambda: float("inf")), ("-inf", lambda: -float("inf")),
               ("numpy nan", lambda: np.float32("nan")), ("numpy inf", lambda: np.float64("inf")),
               ("str nan", lambda: "nan"), ("Decimal", lambda: __import__("decimal").Decimal(1)),
               ("1e400", lambda: 1e400), ("bool", lambda: True), ("array", lambda: np.ones(2))]
NEGATIVE = [("negative", lambda: -0.5), ("huge negative", lambda: -1e300)]
ABOVE_ONE = [("1.0", lambda: 1.0), ("1.5", lambda: 1.5)]
INTS_BAD = [("float", lambda: 1.5), ("str", lambda: "3"), ("None", lambda: None),
            ("bool", lambda: True), ("2**70", lambda: 2**70), ("-1", lambda: -1),
            ("0", lambda: 0)]
THREADS_BAD = [("0", lambda: 0), ("-1", lambda: -1), ("10**6", lambda: 10**6),
               ("2**70", lambda: 2**70), ("1.5", lambda: 1.5), ("str", lambda: "2"),
               ("bool", lambda: True)]
STR_BAD = [("int", lambda: 5), ("bytes", lambda: b"relu"), ("bogus", lambda: "bogus"),
           ("list", lambda: ["relu"])]


def arrays_bad(shape, required=True):
    """Hostile values for a float32 input of shape."""
    bad = [("str", lambda: "x"), ("list", lambda: [[1.0]]), ("dict", lambda: {}),
           ("int", lambda: 3), ("bytes", lambda: b"\x00" * 16), ("0-d", lambda: np.float32(1)),
           ("float64", lambda: arr(*shape, dtype=np.float64)),
           ("float16", lambda: arr(*shape, dtype=np.float16)),
           ("int32", lambda: np.ones(shape, np.int32)),
           ("complex", lambda: np.ones(shape, np.complex64)),
           ("object", lambda: np.empty(shape, object)),
           ("big-endian", lambda: arr(*shape).astype(">f4")),
           ("rank+1", lambda: arr(*shape, 2)), ("wrong shape", lambda: arr(*(s + 1 for s in shape)))]
    if len(shape) > 1:
        bad.append(("rank-1", lambda: arr(shape[0])))
    if required:
        bad.append(("None", lambda: None))
    return bad


def outputs_bad(shape):
    """Hostile values for a float32 output of shape (written in place)."""
    bad = arrays_bad(shape, required=False) + [
        ("read-only", lambda: readonly(np.zeros(shape, F))),
        ("non-contiguous", lambda: np.zeros(shape + (2,), F)[..., 0])]
    if len(shape) > 1:
        bad.append(("fortran", lambda: np.asfortranarray(np.zeros(shape, F))))
    return bad


def cases():
    """(function name, call(**kwargs), valid kwargs factory, {argument: [(label, value factory)]})
    for every public function."""
    M, K, N = 5, 7, 3
    out = []

    def add(name, call, valid, hostile):
        out.append((name, call, valid, hostile))

    add("matmul", lambda **k: fastmlp.matmul(**k),
        lambda: dict(a=arr(M, K), b=arr(K, N), bias=arr(N), out=np.zeros((M, N), F)),
        dict(a=arrays_bad((M, K)), b=arrays_bad((K, N)), bias=arrays_bad((N,), required=False),
             out=outputs_bad((M, N)), activation=STR_BAD, negative_slope=NUMBERS_BAD[:-2],
             alpha=NUMBERS_BAD[:-2], beta=NUMBERS_BAD[:-2]))
    add("matmul backward", lambda **k: fastmlp.matmul(**k),
        lambda: dict(a=arr(M, K), b=arr(K, N), grad_activation="tanh", y=arr(M, N),
                     out=np.zeros((M, N), F)),
        dict(y=arrays_bad((M, N)), grad_activation=STR_BAD))
    add("matmul_plan", lambda **k: core.matmul_plan(**k),
        lambda: dict(a=arr(M, K), b=arr(K, N)),
        dict(a=arrays_bad((M, K)), b=arrays_bad((K, N))))
    add("bias_activation", lambda **k: fastmlp.bias_activation(**k),
        lambda: dict(z=arr(M, N), bias=arr(N), activation="gelu", out=np.zeros((M, N), F)),
        dict(z=arrays_bad((M, N)), bias=arrays_bad((N,), required=False),
             activation=STR_BAD, negative_slope=NUMBERS_BAD[:-2],
             out=outputs_bad((M, N))))
    add("activation_backward", lambda **k: fastmlp.activation_backward(**k),
        lambda: dict(dy=arr(M, N), activation="relu", y=arr(M, N), out=np.zeros((M, N), F)),
        dict(dy=arrays_bad((M, N)), activation=STR_BAD + [("None", lambda: None)],
             y=arrays_bad((M, N)), negative_slope=NUMBERS_BAD[:-2], out=outputs_bad((M, N))))
    add("bias_grad", lambda **k: fastmlp.bias_grad(**k),
        lambda: dict(dz=arr(M, N), out=np.zeros(N, F)),
        dict(dz=arrays_bad((M, N)), out=outputs_bad((N,))))
    acts_no_none = STR_BAD
    for kind in ("layernorm", "batchnorm"):
        extra, extra_bad = {}, {}
        if kind == "batchnorm":
            extra = dict(training=True, momentum=0.1, running_mean=np.zeros(N, F),
                         running_var=np.ones(N, F))
            extra_bad = dict(
                training=[("str", lambda: "yes"), ("int", lambda: 1), ("None", lambda: None)],
                momentum=NUMBERS_BAD + NEGATIVE + [("1.5", lambda: 1.5)],
                running_mean=outputs_bad((N,)), running_var=outputs_bad((N,)))
        add(f"{kind}_forward", lambda kind=kind, **k: getattr(fastmlp, f"{kind}_forward")(**k),
            lambda extra=extra: dict(h=arr(M, N), gamma=arr(N), beta=arr(N), eps=1e-5,
                                     activation="relu", out=np.zeros((M, N), F),
                                     **{k: v.copy() if hasattr(v, "copy") else v
                                        for k, v in extra.items()}),
            dict(h=arrays_bad((M, N)), gamma=arrays_bad((N,)), beta=arrays_bad((N,)),
                 eps=NUMBERS_BAD + NEGATIVE + [("0", lambda: 0.0)], activation=acts_no_none,
                 negative_slope=NUMBERS_BAD[:-2], out=outputs_bad((M, N)), **extra_bad))
        stats = M if kind == "layernorm" else N
        add(f"{kind}_backward", lambda kind=kind, **k: getattr(fastmlp, f"{kind}_backward")(**k),
            lambda stats=stats: dict(dy=arr(M, N), h=arr(M, N), gamma=arr(N), beta=arr(N),
                                     mean=arr(stats), rstd=np.ones(stats, F), activation="tanh",
                                     y=arr(M, N), out=np.zeros((M, N), F)),
            dict(dy=arrays_bad((M, N)), h=arrays_bad((M, N)), gamma=arrays_bad((N,)),
                 beta=arrays_bad((N,)), mean=arrays_bad((stats,)), rstd=arrays_bad((stats,)),
                 activation=acts_no_none, y=arrays_bad((M, N)),
                 negative_slope=NUMBERS_BAD[:-2], out=outputs_bad((M, N))))
    add("batchnorm_forward inference", lambda **k: fastmlp.batchnorm_forward(**k),
        lambda: dict(h=arr(M, N), gamma=arr(N), beta=arr(N), training=False,
                     running_mean=np.zeros(N, F), running_var=np.ones(N, F)),
        dict(running_mean=arrays_bad((N,)), running_var=arrays_bad((N,))))
    # max_norm: inf means "only measure" (valid), so the infinite hostile values are left out
    add("clip_grad_norm", lambda **k: fastmlp.clip_grad_norm(**k),
        lambda: dict(grad=arr(4, 5), max_norm=1.0),
        dict(grad=[v for v in outputs_bad((4, 5)) if v[0] not in ("rank+1", "wrong shape",
                                                                   "rank-1")]
             + [("None", lambda: None)],
             max_norm=[v for v in NUMBERS_BAD if "inf" not in v[0] and v[0] != "1e400"]
             + NEGATIVE + [("-inf", lambda: -float("inf"))]))
    labels_bad = [("str", lambda: "x"), ("list", lambda: [0] * M), ("float", lambda: np.zeros(M)),
                  ("bool", lambda: np.zeros(M, bool)), ("2-D", lambda: np.zeros((M, 1), int)),
                  ("short", lambda: np.zeros(M - 1, int)), ("negative", lambda: -np.ones(M, int)),
                  ("too big", lambda: np.full(M, N, int)), ("2**40", lambda: np.full(M, 2**40)),
                  ("None", lambda: None)]
    add("softmax_cross_entropy", lambda **k: fastmlp.softmax_cross_entropy(**k),
        lambda: dict(logits=arr(M, N), labels=np.arange(M) % N, sample_weight=np.ones(M, F),
                     grad_out=np.zeros((M, N), F)),
        dict(logits=arrays_bad((M, N)), labels=labels_bad,
             sample_weight=arrays_bad((M,), required=False), grad_out=outputs_bad((M, N))))
    for loss, second in (("sigmoid_cross_entropy", "targets"), ("mse_loss", "target"),
                         ("poisson_loss", "targets")):
        first = "pred" if loss == "mse_loss" else "logits"
        add(loss, lambda loss=loss, **k: getattr(fastmlp, loss)(**k),
            lambda first=first, second=second: {first: arr(M, N), second: arr(M, N),
                                                "sample_weight": np.ones(M, F),
                                                "grad_out": np.zeros((M, N), F)},
            {first: arrays_bad((M, N)), second: arrays_bad((M, N)),
             "sample_weight": arrays_bad((M,), required=False), "grad_out": outputs_bad((M, N))})
    n = 11
    add("sgd_update", lambda **k: fastmlp.sgd_update(**k),
        lambda: dict(param=arr(n), grad=arr(n), lr=0.1, l2=0.01, momentum=0.9,
                     velocity=np.zeros(n, F)),
        dict(param=outputs_bad((n,)) + [("None", lambda: None)], grad=arrays_bad((n,)),
             lr=NUMBERS_BAD + NEGATIVE, l2=NUMBERS_BAD + NEGATIVE,
             momentum=NUMBERS_BAD + NEGATIVE + [("1.5", lambda: 1.5)],
             velocity=outputs_bad((n,)) + [("None", lambda: None)]))
    add("rmsprop_update", lambda **k: fastmlp.rmsprop_update(**k),
        lambda: dict(param=arr(n), grad=arr(n), square_avg=np.zeros(n, F), lr=0.1, rho=0.9,
                     eps=1e-8, l2=0.01),
        dict(param=outputs_bad((n,)) + [("None", lambda: None)], grad=arrays_bad((n,)),
             square_avg=outputs_bad((n,)) + [("None", lambda: None)],
             lr=NUMBERS_BAD + NEGATIVE, rho=NUMBERS_BAD + NEGATIVE + ABOVE_ONE,
             eps=NUMBERS_BAD + NEGATIVE + [("0", lambda: 0.0)], l2=NUMBERS_BAD + NEGATIVE))
    add("adam_update", lambda **k: fastmlp.adam_update(**k),
        lambda: dict(param=arr(n), grad=arr(n), m=np.zeros(n, F), v=np.zeros(n, F), step=1,
                     lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, l2=0.01, weight_decay=0.01),
        dict(param=outputs_bad((n,)) + [("None", lambda: None)], grad=arrays_bad((n,)),
             m=outputs_bad((n,)) + [("None", lambda: None)],
             v=outputs_bad((n,)) + [("None", lambda: None)], step=INTS_BAD,
             lr=NUMBERS_BAD + NEGATIVE, beta1=NUMBERS_BAD + NEGATIVE + ABOVE_ONE,
             beta2=NUMBERS_BAD + NEGATIVE + ABOVE_ONE,
             eps=NUMBERS_BAD + NEGATIVE + [("0", lambda: 0.0)], l2=NUMBERS_BAD + NEGATIVE,
             weight_decay=NUMBERS_BAD + NEGATIVE))
    def alias(**kw):
        """Several arguments replaced at once (arrays sharing memory): a dict for the runner."""
        return lambda: dict(_multi=kw)

    def views(*shapes):
        """Views of one buffer, each starting one element into the last: they all overlap."""
        buf = np.zeros(sum(int(np.prod(s)) for s in shapes) + 1, F)
        out, start = [], 0
        for shape in shapes:
            size = int(np.prod(shape))
            out.append(buf[start:start + size].reshape(shape))
            start += size - 1 if size > 1 else 0
        return out

    buf = lambda *shapes: views(*shapes)     # noqa: E731
    c, a_ = np.zeros((M, N), F), np.zeros((M, N), F)
    add("aliasing", lambda **k: k["f"](**{x: v for x, v in k.items() if x != "f"}),
        lambda: dict(f=fastmlp.bias_grad, dz=arr(M, N)),
        dict(out=[
            ("matmul out is a", lambda: dict(_multi=dict(f=fastmlp.matmul, a=c, b=arr(N, N),
                                                         out=c))),
            ("matmul out=y (K > 384)", lambda: (lambda y: dict(_multi=dict(
                f=fastmlp.matmul, a=arr(M, 400), b=arr(400, N), grad_activation="relu", y=y,
                out=y)))(np.abs(arr(M, N)))),
            ("matmul out=z", lambda: (lambda z: dict(_multi=dict(
                f=fastmlp.matmul, a=arr(M, K), b=arr(K, N), grad_activation="gelu", z=z,
                out=z)))(arr(M, N))),
            ("matmul bias a row of out", lambda: (lambda o: dict(_multi=dict(
                f=fastmlp.matmul, a=arr(M, K), b=arr(K, N), bias=o[0], out=o)))(np.zeros((M, N), F))),
            ("bias_activation bias inside out", lambda: (lambda o: dict(_multi=dict(
                f=fastmlp.bias_activation, z=arr(M, N), bias=o[1], out=o)))(np.zeros((M, N), F))),
            ("bias_activation out shifted over z", lambda: (lambda v: dict(_multi=dict(
                f=fastmlp.bias_activation, z=v[0], out=v[1])))(buf((M, N), (M, N)))),
            ("activation_backward out=y", lambda: (lambda y: dict(_multi=dict(
                f=fastmlp.activation_backward, dy=arr(M, N), activation="relu", y=y,
                out=y)))(arr(M, N))),
            ("bias_grad out in dz", lambda: (lambda v: dict(_multi=dict(
                f=fastmlp.bias_grad, dz=v[0], out=v[1])))(buf((M, N), (N,)))),
            ("layernorm out over gamma", lambda: (lambda o: dict(_multi=dict(
                f=fastmlp.layernorm_forward, h=arr(M, N), gamma=o[1], beta=arr(N),
                out=o)))(np.zeros((M, N), F))),
            ("layernorm out shifted over h", lambda: (lambda v: dict(_multi=dict(
                f=fastmlp.layernorm_forward, h=v[0], gamma=arr(N), beta=arr(N),
                out=v[1])))(buf((M, N), (M, N)))),
            ("batchnorm out over running_var", lambda: (lambda o: dict(_multi=dict(
                f=fastmlp.batchnorm_forward, h=arr(M, N), gamma=arr(N), beta=arr(N),
                running_mean=np.zeros(N, F), running_var=o[2], out=o)))(np.ones((M, N), F))),
            ("batchnorm running_mean is running_var", lambda: (lambda r: dict(_multi=dict(
                f=fastmlp.batchnorm_forward, h=arr(M, N), gamma=arr(N), beta=arr(N),
                running_mean=r, running_var=r, out=np.zeros((M, N), F))))(np.ones(N, F))),
            ("batchnorm running_mean is gamma", lambda: (lambda r: dict(_multi=dict(
                f=fastmlp.batchnorm_forward, h=arr(M, N), gamma=r, beta=arr(N),
                running_mean=r, running_var=np.ones(N, F),
                out=np.zeros((M, N), F))))(np.ones(N, F))),
            ("layernorm_backward out=h", lambda: (lambda h: dict(_multi=dict(
                f=fastmlp.layernorm_backward, dy=arr(M, N), h=h, gamma=arr(N), beta=arr(N),
                mean=arr(M), rstd=np.ones(M, F), out=h)))(arr(M, N))),
            ("batchnorm_backward out=y", lambda: (lambda y: dict(_multi=dict(
                f=fastmlp.batchnorm_backward, dy=arr(M, N), h=arr(M, N), gamma=arr(N),
                beta=arr(N), mean=arr(N), rstd=np.ones(N, F), activation="relu", y=y,
                out=y)))(arr(M, N))),
            ("batchnorm_backward out shifted over dy", lambda: (lambda v: dict(_multi=dict(
                f=fastmlp.batchnorm_backward, dy=v[0], h=arr(M, N), gamma=arr(N),
                beta=arr(N), mean=arr(N), rstd=np.ones(N, F), out=v[1])))(buf((M, N), (M, N)))),
            ("softmax sample_weight in grad_out", lambda: (lambda g: dict(_multi=dict(
                f=fastmlp.softmax_cross_entropy, logits=arr(M, N), labels=np.zeros(M, int),
                sample_weight=g.reshape(-1)[:M], grad_out=g)))(
                np.ones((M, N), F))),
            ("sigmoid grad_out shifted over logits", lambda: (lambda v: dict(_multi=dict(
                f=fastmlp.sigmoid_cross_entropy, logits=v[0], targets=arr(M, N),
                grad_out=v[1])))(buf((M, N), (M, N)))),
            ("mse target is grad_out", lambda: (lambda t: dict(_multi=dict(
                f=fastmlp.mse_loss, pred=arr(M, N), target=t, grad_out=t)))(arr(M, N))),
            ("adam m is v", lambda: (lambda m: dict(_multi=dict(
                f=lambda **k: fastmlp.adam_update(**k, step=1, lr=0.1), param=arr(9),
                grad=arr(9), m=m, v=m)))(np.zeros(9, F))),
            ("adam m is param", lambda: (lambda p: dict(_multi=dict(
                f=lambda **k: fastmlp.adam_update(**k, step=1, lr=0.1), param=p, grad=arr(9),
                m=p, v=np.zeros(9, F))))(arr(9))),
            ("adam grad is v", lambda: (lambda g: dict(_multi=dict(
                f=lambda **k: fastmlp.adam_update(**k, step=1, lr=0.1), param=arr(9), grad=g,
                m=np.zeros(9, F), v=g)))(np.zeros(9, F))),
            ("rmsprop square_avg=param", lambda: (lambda p: dict(_multi=dict(
                f=lambda **k: fastmlp.rmsprop_update(**k, lr=0.1), param=p, grad=arr(9),
                square_avg=p)))(arr(9))),
            ("sgd velocity overlaps param", lambda: (lambda v: dict(_multi=dict(
                f=lambda **k: fastmlp.sgd_update(**k, lr=0.1, momentum=0.9), param=v[0],
                grad=arr(9), velocity=v[1])))(buf((9,), (9,)))),
        ]))
    add("set_num_threads", lambda **k: fastmlp.set_num_threads(k["n"]), lambda: dict(n=2),
        dict(n=THREADS_BAD))
    add("local_num_threads", lambda **k: core.local_num_threads(k["n"]), lambda: dict(n=2),
        dict(n=THREADS_BAD))
    add("measure_peak_gflops", lambda **k: fastmlp.measure_peak_gflops(**k),
        lambda: dict(seconds=0.001, n_threads=1),
        dict(seconds=NUMBERS_BAD + NEGATIVE + [("0", lambda: 0.0), ("1e9", lambda: 1e9)],
             n_threads=THREADS_BAD))
    add("set_isa", lambda **k: core.set_isa(k["name"]), lambda: dict(name=core.get_isa()),
        dict(name=STR_BAD + [("None", lambda: None)]))
    add("gemm_blocks", lambda **k: core.gemm_blocks(k["isa"]), lambda: dict(isa=core.get_isa()),
        dict(isa=STR_BAD))
    blocks = core.gemm_blocks()
    add("set_gemm_blocks", lambda **k: core.set_gemm_blocks(**k),
        lambda: dict(isa=core.get_isa(), kc=blocks["kc"], mc=blocks["mc"], nc=blocks["nc"]),
        dict(isa=STR_BAD, kc=INTS_BAD + [("9000", lambda: 9000)],
             mc=INTS_BAD + [("9000", lambda: 9000)], nc=INTS_BAD + [("10**5", lambda: 10**5)]))
    add("dropout_mask", lambda **k: core.dropout_mask(**k),
        lambda: dict(n_rows=3, n_cols=4, p=0.5, seed=1, step=2, layer=0),
        dict(n_rows=INTS_BAD[:-1] + [("2**50", lambda: 2**50)],
             n_cols=INTS_BAD[:-1], p=NUMBERS_BAD + NEGATIVE + ABOVE_ONE,
             seed=[("str", lambda: "1"), ("float", lambda: 1.5), ("None", lambda: None),
                   ("bool", lambda: True)],
             step=INTS_BAD[:-1], layer=INTS_BAD[:-1] + [("2**20", lambda: 2**20)]))
    add("flat_params", lambda **k: core.flat_params(k["params"]),
        lambda: dict(params=[arr(3, 2), arr(2)]),
        dict(params=[("empty", lambda: []), ("odd", lambda: [arr(3, 2)]), ("int", lambda: 3),
                     ("str", lambda: "ab"), ("None", lambda: None)]))

    def step_params():
        return core.flat_params([arr(K, 4), arr(4), arr(4, N), arr(N)])

    hyper = dict(momentum=NUMBERS_BAD + NEGATIVE + [("1.5", lambda: 1.5)],
                 beta1=NUMBERS_BAD + NEGATIVE + ABOVE_ONE,
                 beta2=NUMBERS_BAD + NEGATIVE + ABOVE_ONE,
                 rho=NUMBERS_BAD + NEGATIVE + ABOVE_ONE,
                 eps=NUMBERS_BAD + NEGATIVE + [("0", lambda: 0.0)],
                 weight_decay=NUMBERS_BAD + NEGATIVE, alpha=NUMBERS_BAD + NEGATIVE,
                 dropout=[("rate 1", lambda: [1.0]), ("nan", lambda: [float("nan")]),
                          ("str", lambda: ["x"]), ("scalar", lambda: 0.5),
                          ("too many", lambda: [0.1, 0.1]), ("string", lambda: "0")],
                 seed=[("str", lambda: "1"), ("float", lambda: 1.5), ("None", lambda: None)],
                 nonfinite=STR_BAD + [("None", lambda: None)],
                 max_batch=INTS_BAD + [("2**40", lambda: 2**40)],
                 loss=STR_BAD + [("None", lambda: None), ("softmax", lambda: "softmax")],
                 optimizer=STR_BAD + [("None", lambda: None), ("lbfgs", lambda: "lbfgs")],
                 activations=[("int", lambda: 5), ("bogus", lambda: ["bogus"]),
                              ("two", lambda: ["relu", "relu"]), ("None", lambda: None)],
                 params=[("not flat", lambda: [arr(K, 4), arr(4), arr(4, N), arr(N)]),
                         ("float64", lambda: [p.astype(np.float64) for p in step_params()]),
                         ("None", lambda: None), ("odd", lambda: step_params()[:3]),
                         ("chain broken", lambda: core.flat_params([arr(K, 4), arr(4),
                                                                    arr(5, N), arr(N)]))])
    add("TrainStep", lambda **k: core.TrainStep(**k),
        lambda: dict(params=step_params(), activations=["relu"], loss="softmax_cross_entropy",
                     max_batch=8, optimizer="adam"), hyper)

    def step_call(method):
        def call(**k):
            step = core.TrainStep(step_params(), ["relu"], "softmax_cross_entropy", 8,
                                  optimizer="sgd", momentum=0.9)
            if method == "update":
                step.forward(arr(8, K), np.zeros(8, np.int32))
                step.backward()
                return step.update(k["lr"])
            return getattr(step, method)(**k)
        return call

    run_hostile = dict(X=arrays_bad((8, K)),
                       y=[("float", lambda: np.zeros(8)), ("int64", lambda: np.zeros(8, int)),
                          ("short", lambda: np.zeros(7, np.int32)), ("str", lambda: "x"),
                          ("None", lambda: None),
                          ("out of range", lambda: np.full(8, N, np.int32))],
                       sample_weight=arrays_bad((8,), required=False),
                       index=[("float", lambda: np.zeros(3)), ("2-D", lambda: np.zeros((2, 2), int)),
                              ("out of range", lambda: np.array([0, 99])),
                              ("negative", lambda: np.array([-1])),
                              ("too many", lambda: np.zeros(9, int)), ("str", lambda: "0"),
                              ("empty", lambda: np.zeros(0, int))])
    add("TrainStep.run", step_call("run"),
        lambda: dict(X=arr(8, K), y=np.zeros(8, np.int32), sample_weight=None, lr=0.1),
        dict(run_hostile, lr=NUMBERS_BAD + NEGATIVE))
    add("TrainStep.forward", step_call("forward"),
        lambda: dict(X=arr(8, K), y=np.zeros(8, np.int32)), run_hostile)
    add("TrainStep.update", step_call("update"), lambda: dict(lr=0.1),
        dict(lr=NUMBERS_BAD + NEGATIVE))
    full_hostile = {k: v for k, v in run_hostile.items() if k != "index"}
    add("TrainStep.loss_and_grad", step_call("loss_and_grad"),
        lambda: dict(X=arr(20, K), y=np.zeros(20, np.int32), out=np.zeros(4 * K + 4 + 4 * N + N)),
        dict(full_hostile, X=arrays_bad((20, K)),
             out=[("float32", lambda: np.zeros(4 * K + 4 + 4 * N + N, F)),
                  ("short", lambda: np.zeros(3)), ("read-only", lambda: readonly(np.zeros(
                      4 * K + 4 + 4 * N + N))), ("str", lambda: "x")]))
    add("MLP", lambda **k: fastmlp.MLP(**k),
        lambda: dict(layer_sizes=[4, 3, 2], activation="relu", dropout=0.1, random_state=0),
        dict(layer_sizes=[("one", lambda: [4]), ("zero", lambda: [4, 0, 2]),
                          ("str", lambda: "42"), ("floats", lambda: [4.5, 2]),
                          ("None", lambda: None), ("huge", lambda: [2**40, 2])],
             activation=STR_BAD[:-1] + [("None", lambda: None)],
             dropout=[("1.0", lambda: 1.0), ("nan", lambda: float("nan")), ("str", lambda: "x"),
                      ("negative", lambda: -0.1), ("too many", lambda: [0.1, 0.2])],
             random_state=[("str", lambda: "seed"), ("float", lambda: 1.5),
                           ("negative", lambda: -1)]))

    def mlp_call(method):
        def call(**k):
            model = fastmlp.MLP([4, 3, 2], "relu", random_state=0)
            if method == "backward":
                model.forward(arr(5, 4), training=True)
            return getattr(model, method)(**k)
        return call

    add("MLP.forward", mlp_call("forward"), lambda: dict(X=arr(5, 4)),
        dict(X=arrays_bad((5, 4))))
    add("MLP.backward", mlp_call("backward"), lambda: dict(dout=arr(5, 2)),
        dict(dout=arrays_bad((5, 2))))
    add("load", lambda **k: fastmlp.load(**k), lambda: dict(path=VALID_MODEL),
        dict(path=[("int", lambda: 10**6), ("float", lambda: 1.5), ("None", lambda: None),
                   ("list", lambda: []), ("missing", lambda: "/nonexistent/m.safetensors"),
                   ("dir", lambda: "/"), ("dev-zero", lambda: "/dev/zero")],
             max_bytes=[("str", lambda: "1"), ("negative", lambda: -1), ("float", lambda: 1.5),
                        ("too small", lambda: 10)]))
    from fastmlp import datasets
    add("read_idx", lambda **k: datasets.read_idx(**k), lambda: dict(source=VALID_IDX),
        dict(source=[("float", lambda: 1.5), ("None", lambda: None), ("list", lambda: []),
                     ("missing", lambda: "/nonexistent/x.idx"), ("dev-zero", lambda: "/dev/zero")],
             max_bytes=[("str", lambda: "1"), ("zero", lambda: 0), ("tiny", lambda: 3),
                        ("float", lambda: 1.5)]))
    add("load_csv", lambda **k: datasets.load_csv(**k), lambda: dict(path=VALID_CSV),
        dict(path=[("float", lambda: 1.5), ("None", lambda: None), ("missing",
                                                                      lambda: "/nonexistent.csv")],
             label_column=[("str", lambda: "0"), ("float", lambda: 0.5), ("bool", lambda: True),
                           ("out of range", lambda: 9)]))
    add("load_npz", lambda **k: datasets.load_npz(**k), lambda: dict(path=VALID_NPZ),
        dict(path=[("float", lambda: 1.5), ("None", lambda: None), ("dev-zero",
                                                                      lambda: "/dev/zero")],
             max_bytes=[("str", lambda: "1"), ("zero", lambda: 0), ("tiny", lambda: 10)]))
    import importlib.util

    class CSR:
        """What fastmlp reads of a SciPy CSR matrix, with arrays as given (SciPy would check
        some on construction and crash on others: these reach fastmlp as they are)."""

        def __init__(self, data=None, indices=(0, 2, 1, 6, 3, 4, 0, 5),
                     indptr=(0, 2, 4, 4, 6, 8), shape=(5, 7), fmt="csr", index_dtype=np.int32):
            self.format, self.shape = fmt, shape
            self.indices = np.array(indices, index_dtype)
            self.indptr = np.array(indptr, index_dtype)
            self.data = arr(len(indices)) if data is None else data

        def tocsr(self):
            return self

    class Missing:
        format = "csr"

    sx = lambda **kw: (lambda: CSR(**kw))      # noqa: E731

    def sx_with(attr, edit):
        """A factory of CSR() with one of its arrays edited afterwards."""
        def make():
            c = CSR()
            setattr(c, attr, edit(getattr(c, attr)))
            return c
        return make

    sparse_bad = [
        ("str", lambda: "x"), ("None", lambda: None), ("list", lambda: [[1.0]]),
        ("int", lambda: 3), ("dense", lambda: arr(5, 7)), ("no arrays", lambda: Missing()),
        ("coo", sx(fmt="coo")), ("bsr", sx(fmt="bsr")), ("format int", sx(fmt=3)),
        ("csc whose tocsr is not csr", sx(fmt="csc")),
        ("index = K", sx(indices=(0, 2, 1, 6, 3, 4, 0, 7))),
        ("negative index", sx(indices=(-1, 2, 1, 6, 3, 4, 0, 5))),
        ("int64 index 2**32 + 2", sx(indices=(2**32 + 2, 2, 1, 6, 3, 4, 0, 5),
                                     index_dtype=np.int64)),
        ("indptr not monotone", sx(indptr=(0, 2, 4, 4, 8, 6))),
        ("indptr past nnz", sx(indptr=(0, 2, 4, 4, 6, 9))),
        ("indptr negative", sx(indptr=(-2, 2, 4, 4, 6, 8))),
        ("indptr 2**62", sx(indptr=(0, 2, 4, 4, 6, 2**62), index_dtype=np.int64)),
        ("short indptr", sx(indptr=(0, 2, 4, 4, 6))),
        ("2-D indptr", sx_with("indptr", lambda a: a[None])),
        ("data short", sx(data=arr(7))), ("data 2-D", sx(data=arr(8, 1))),
        ("data complex", sx(data=np.ones(8, np.complex64))), ("data list", sx(data=[1.0] * 8)),
        ("float indices", sx_with("indices", lambda a: a * 1.0)),
        ("2**31 columns", sx(shape=(5, 2**31))), ("3-D shape", sx(shape=(5, 7, 1))),
        ("negative shape", sx(shape=(5, -7))), ("float shape", sx(shape=(5.0, 7))),
        ("shape None", sx(shape=None)), ("columns not b's rows", sx(shape=(5, 8)))]
    if importlib.util.find_spec("scipy") is not None:
        import scipy.sparse as sparse
        sparse_bad += [("scipy coo", lambda: sparse.coo_matrix(arr(5, 7))),
                       ("scipy dok", lambda: sparse.dok_matrix(arr(5, 7))),
                       ("scipy csr of 6 columns", lambda: sparse.csr_matrix(arr(5, 6)))]
    rows_bad = [("float", lambda: np.zeros(3)), ("2-D", lambda: np.zeros((3, 1), int)),
                ("out of range", lambda: np.array([0, 5, 1])),
                ("negative", lambda: np.array([0, -1, 1])),
                ("uint64 2**63", lambda: np.array([0, 2**63, 1], np.uint64)),
                ("bool", lambda: np.zeros(3, bool)), ("list", lambda: [0, 1, 2]),
                ("str", lambda: "0"), ("four rows", lambda: np.zeros(4, int)),
                ("object", lambda: np.zeros(3, object))]
    SM, SN = 3, 4                              # the batch: rows [4, 0, 0] of the 5 x 7 CSR
    batch = lambda: np.array([4, 0, 0])        # noqa: E731

    def over_data(shape):
        """(out, a CSR whose data is a view of out's memory)"""
        o = np.zeros(shape, F)
        return o, CSR(data=o.reshape(-1)[:8])

    add("sparse_matmul", lambda **k: fastmlp.sparse_matmul(**k),
        lambda: dict(x=CSR(), b=arr(7, SN), bias=arr(SN), activation="relu", rows=batch(),
                     out=np.zeros((SM, SN), F)),
        dict(x=sparse_bad, b=arrays_bad((7, SN)), bias=arrays_bad((SN,), required=False),
             rows=rows_bad, activation=STR_BAD, negative_slope=NUMBERS_BAD[:-2],
             out=outputs_bad((SM, SN)) + [
                 ("out in b", lambda: (lambda b: dict(_multi=dict(
                     x=CSR(), b=b, rows=batch(), out=b[2:5])))(np.zeros((7, SN), F))),
                 ("bias a row of out", lambda: (lambda o: dict(_multi=dict(
                     x=CSR(), b=arr(7, SN), bias=o[1], rows=batch(), out=o)))(
                     np.zeros((SM, SN), F))),
                 ("out over x's data", lambda: (lambda o, x: dict(_multi=dict(
                     x=x, b=arr(7, SN), rows=batch(), out=o)))(*over_data((SM, SN))))]))
    add("sparse_matmul_tn", lambda **k: fastmlp.sparse_matmul_tn(**k),
        lambda: dict(x=CSR(), d=arr(SM, SN), rows=batch(), out=np.zeros((7, SN), F)),
        dict(x=[v for v in sparse_bad if v[0] != "columns not b's rows"],
             d=arrays_bad((SM, SN)), rows=rows_bad,
             out=outputs_bad((7, SN)) + [
                 ("out over d", lambda: (lambda o: dict(_multi=dict(
                     x=CSR(), d=o[4:7], rows=batch(), out=o)))(np.zeros((7, SN), F))),
                 ("out over x's data", lambda: (lambda o, x: dict(_multi=dict(
                     x=x, d=arr(SM, SN), rows=batch(), out=o)))(*over_data((7, SN))))]))
    add("csr_arrays", lambda **k: core.csr_arrays(**k), lambda: dict(x=CSR()),
        dict(x=[v for v in sparse_bad if not v[0].startswith(("index = K", "negative index",
                                                               "indptr", "columns",
                                                               "scipy csr"))]))
    if importlib.util.find_spec("sklearn") is None:     # the estimators need scikit-learn
        return out
    X, y = arr(30, 4), np.arange(30) % 3
    reals = NUMBERS_BAD[:-1] + NEGATIVE
    est_hostile = dict(
        hidden_layer_sizes=[("str", lambda: "x"), ("zero", lambda: (0,)), ("float", lambda: (2.5,)),
                            ("None", lambda: None), ("negative", lambda: -3)],
        activation=STR_BAD[:3] + [("None", lambda: None)],
        solver=STR_BAD[:3] + [("None", lambda: None)], alpha=reals,
        batch_size=[("zero", lambda: 0), ("str", lambda: "x"), ("float", lambda: 2.5),
                    ("None", lambda: None)],
        learning_rate=[("bogus", lambda: "bogus"), ("int", lambda: 3)],
        learning_rate_init=reals + [("0", lambda: 0.0)], power_t=reals,
        max_iter=INTS_BAD[:2] + [("0", lambda: 0), ("None", lambda: None)], tol=reals,
        momentum=reals + ABOVE_ONE[1:], beta_1=reals + ABOVE_ONE, beta_2=reals + ABOVE_ONE,
        epsilon=reals + [("0", lambda: 0.0)],
        validation_fraction=reals + ABOVE_ONE,
        n_iter_no_change=[("0", lambda: 0), ("str", lambda: "x"), ("float", lambda: 1.5)],
        dropout=[("1.0", lambda: 1.0), ("str", lambda: "x"), ("nan", lambda: float("nan")),
                 ("negative", lambda: -0.5), ("list", lambda: [0.1, 0.2])],
        weight_decay=reals, rho=reals + ABOVE_ONE, n_threads=THREADS_BAD,
        max_fun=[("0", lambda: 0), ("str", lambda: "x"), ("float", lambda: 1.5)],
        callback=[("int", lambda: 3), ("str", lambda: "print")],
        random_state=[("str", lambda: "x"), ("float", lambda: 1.5), ("negative", lambda: -1)])
    for kind in ("MLPClassifier", "MLPRegressor"):       # imported (scikit-learn) only when run
        hostile = dict(est_hostile)
        if kind == "MLPClassifier":
            hostile["class_weight"] = [("bogus", lambda: "bogus"), ("int", lambda: 3)]
        else:
            hostile["loss"] = STR_BAD[:3] + [("None", lambda: None)]
        add(f"{kind}.fit",
            lambda kind=kind, **k: getattr(fastmlp, kind)(**k).fit(
                X, y if kind == "MLPClassifier" else X[:, 0]),
            lambda: dict(hidden_layer_sizes=(4,), max_iter=2), hostile)
    return out
'''

# The arguments whose hostile values an error may name differently: the message must name one of
# these instead (a batch-size error names the batch, a model file error the file).
ALSO_NAMED = {"out": ("must not overlap", "out"), "index": ("batch size", "index"), "path": ("path", "model file", "nonexistent",
                                                         "file descriptor",
                                                         "dev/zero", "/:", "Is a directory",
                                                         "not a fastmlp model", "corrupt"),
              "source": ("source", "nonexistent", "dev/zero", "header", "binary"),
              "max_bytes": ("max_bytes", "over the cap", "cap"),
              "params": ("params", "param"), "labels": ("labels",), "y": ("y ", "labels"),
              "activations": ("activations", "activation"), "z": ("y,", "needs y"),
              "layer_sizes": ("layer_sizes", "fit in memory"), "n": ("n_threads",),
              "name": ("name", "ISA"), "isa": ("isa", "ISA"), "grad_activation": ("grad_activation",),
              "random_state": ("random_state", "seed", "SeedSequence", "entropy", "integer"),
              "dout": ("dout", "dy", "a must", "b must", "out"), "X": ("X", "a must"),
              "label_column": ("label_column", "outside"), "dropout": ("dropout", "rate"),
              "class_weight": ("class_weight",)}

RUNNER = TABLE_SOURCE + r'''
import json, sys, traceback
VALID_MODEL, VALID_IDX, VALID_CSV, VALID_NPZ = sys.argv[3:7]
core.set_isa(sys.argv[1])
wanted = sys.argv[2]
for name, call, valid, hostile in cases():
    if name != wanted:
        continue
    call(**valid())                                  # the valid call works
    print(json.dumps(dict(case="valid")), flush=True)
    for arg, values in hostile.items():
        for label, make in values:
            kwargs = valid()
            value = make()
            if isinstance(value, dict) and "_multi" in value:
                kwargs = value["_multi"]
            else:
                kwargs[arg] = value
            print(json.dumps(dict(case=f"{arg}={label}", start=True)), flush=True)
            try:
                call(**kwargs)
                result = dict(case=f"{arg}={label}", arg=arg, exc=None, msg="returned")
            except Exception as e:
                result = dict(case=f"{arg}={label}", arg=arg, exc=type(e).__name__,
                              mro=[c.__name__ for c in type(e).__mro__], msg=str(e)[:500])
            print(json.dumps(result), flush=True)
            fastmlp.set_num_threads(None)
'''


def _function_names():
    namespace = {}
    exec(TABLE_SOURCE, namespace)
    namespace.update(VALID_MODEL="", VALID_IDX="", VALID_CSV="", VALID_NPZ="")
    return [name for name, *_ in namespace["cases"]()]


FUNCTIONS = _function_names()


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory):
    from fastmlp import datasets
    d = tmp_path_factory.mktemp("hostile")
    fastmlp.MLP([3, 2], random_state=0).save(d / "m.safetensors")
    img = datasets.load_sample()[1][:10]
    import struct
    (d / "x.idx").write_bytes(struct.pack(">BBBBI", 0, 0, 0x08, 1, len(img)) + img.tobytes())
    (d / "t.csv").write_text("1,2,0\n3,4,1\n")
    np.savez(d / "t.npz", X=np.ones((2, 2)), y=np.zeros(2))
    return [str(d / n) for n in ("m.safetensors", "x.idx", "t.csv", "t.npz")]


TOTAL = {}


@pytest.mark.parametrize("isa", ISAS_UNDER_TEST)
@pytest.mark.parametrize("function", FUNCTIONS)
def test_hostile_calls(function, isa, valid_files, tmp_path):
    """Every hostile call of one function, in a subprocess: a documented error naming the
    argument, no crash, no hang, no silent return."""
    env = dict(os.environ, OMP_NUM_THREADS="2")
    r = subprocess.run([sys.executable, "-c", RUNNER, isa, function, *valid_files],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    lines = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    started = [x["case"] for x in lines if x.get("start")]
    results = [x for x in lines if "exc" in x]
    assert r.returncode == 0, (f"{function}: the child died (code {r.returncode}) during "
                               f"{started[-1] if started else 'the valid call'}:\n"
                               f"{r.stderr[-3000:]}")
    assert lines and lines[0]["case"] == "valid", r.stderr[-3000:]
    problems = []
    for x in results:
        names = ALSO_NAMED.get(x["arg"], ()) + (x["arg"],)
        if x["exc"] is None:
            problems.append(f"{x['case']}: returned instead of raising")
        elif not {"TypeError", "ValueError", "IndexError", "MemoryError", "FileNotFoundError",
                  "IsADirectoryError"} & set(x["mro"]):
            problems.append(f"{x['case']}: {x['exc']}: {x['msg']}")
        elif not any(n in x["msg"] for n in names):
            problems.append(f"{x['case']}: {x['exc']} does not name {x['arg']!r}: {x['msg']}")
    assert not problems, f"{function} on {isa}:\n" + "\n".join(problems)
    TOTAL[(function, isa)] = len(results)


def test_the_table_is_large():
    """The table holds at least the 1,816 kinds of hostile call per ISA of issue 12 (fewer
    without scikit-learn, whose estimators' parameters are a part of it)."""
    namespace = {}
    exec(TABLE_SOURCE, namespace)
    namespace.update(VALID_MODEL="", VALID_IDX="", VALID_CSV="", VALID_NPZ="")
    n = sum(len(v) for *_, hostile in namespace["cases"]() for v in hostile.values())
    import importlib.util
    assert n >= (1816 if importlib.util.find_spec("sklearn") else 1390), n


# ---- the sequences that used to overrun or write garbage -------------------------------------


def test_enlarging_gemm_blocks_after_a_train_step_exists(isa):
    """The heap overrun of issue 12: a TrainStep sized its workspace for the blocks of its
    birth; larger blocks later (FASTMLP_GEMM_* or set_gemm_blocks between two partial_fit
    calls) wrote past it. Now the product allocates what its plan needs: the step runs, and
    trains as a step made under the new blocks does (to rounding: K is blocked differently)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((128, 784)).astype(np.float32)
    y = rng.integers(0, 10, 128).astype(np.int32)
    sizes = [784, 512, 256, 10]
    params = [p for a, b in zip(sizes[:-1], sizes[1:])
              for p in ((rng.standard_normal((a, b)) * np.sqrt(2 / a)).astype(np.float32),
                        np.zeros(b, np.float32))]
    old = core.gemm_blocks(isa)
    a = core.TrainStep(core.flat_params(params), ["relu", "relu"], "softmax_cross_entropy", 128)
    a.run(X, y, lr=1e-3)
    try:
        core.set_gemm_blocks(isa, 8192, 8192, 65536)
        losses_a = [a.run(X, y, lr=1e-3) for _ in range(3)]
        b = core.TrainStep(core.flat_params(params), ["relu", "relu"], "softmax_cross_entropy",
                           128)
        b.run(X, y, lr=1e-3)
        losses_b = [b.run(X, y, lr=1e-3) for _ in range(3)]
    finally:
        core.set_gemm_blocks(isa, old["kc"], old["mc"], old["nc"])
    assert_close(losses_a, losses_b, rtol=1e-4)
    assert_close(a.flat_params, b.flat_params, rtol=1e-3, atol=1e-5)


def test_in_place_calls_the_contract_allows_still_work(isa):
    """The overlap checks refuse only what would read overwritten values: the exact in-place
    calls stay allowed and give the out-of-place bits."""
    rng = np.random.default_rng(1)
    z, dy, y = (rng.standard_normal((7, 9)).astype(np.float32) for _ in range(3))
    bias = rng.standard_normal(9).astype(np.float32)
    expected = fastmlp.bias_activation(z, bias, "gelu")
    fastmlp.bias_activation(z, bias, "gelu", out=z)
    assert np.array_equal(z, expected)
    expected = fastmlp.activation_backward(dy, "tanh", y=y)
    fastmlp.activation_backward(dy, "tanh", y=y, out=dy)
    assert np.array_equal(dy, expected)
    logits = rng.standard_normal((7, 4)).astype(np.float32)
    labels = rng.integers(0, 4, 7)
    loss, grad = fastmlp.softmax_cross_entropy(logits, labels)
    loss2, grad2 = fastmlp.softmax_cross_entropy(logits, labels, grad_out=logits)
    assert loss == loss2 and grad2 is logits and np.array_equal(grad, logits)
    # disjoint halves of one buffer are no overlap
    buf = np.zeros((2, 7, 9), np.float32)
    buf[0] = y
    out = fastmlp.bias_activation(buf[0], bias, "relu", out=buf[1])
    assert np.array_equal(out, ref.bias_activation(y, bias, "relu"))


def test_empty_problems_with_huge_row_counts_return_at_once(tmp_path):
    """(2**40, 0) arrays hold no bytes; the kernels used to loop over their 2**40 empty rows
    (about an hour)."""
    code = textwrap.dedent("""
        import numpy as np, fastmlp
        z = np.empty((2**40, 0), np.float32)
        assert fastmlp.sigmoid_cross_entropy(z, z)[0] == 0.0
        assert fastmlp.mse_loss(z, z)[0] == 0.0
        assert fastmlp.poisson_loss(z, z)[0] == 0.0
        assert fastmlp.bias_activation(z, None, "relu").shape == z.shape
        assert fastmlp.activation_backward(z, "relu", y=z).shape == z.shape
        assert fastmlp.bias_grad(z).shape == (0,)
        print("ok")
    """)
    # cwd: not the repository root, whose fastmlp folder would shadow the installed package
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


@pytest.mark.filterwarnings("ignore::UserWarning")     # ConvergenceWarning, from any thread
def test_concurrent_fits_with_their_own_thread_counts():
    """n_threads is per Python thread: concurrent fits with different counts neither change the
    process-wide setting nor each other's bits (which do not depend on the count anyway)."""
    sklearn = pytest.importorskip("sklearn")  # noqa: F841
    from concurrent.futures import ThreadPoolExecutor
    rng = np.random.default_rng(2)
    X = rng.standard_normal((200, 20)).astype(np.float32)
    y = rng.integers(0, 3, 200)
    fastmlp.set_num_threads(2)
    seen = []

    def fit(n):
        clf = fastmlp.MLPClassifier((16,), max_iter=3, random_state=0, n_threads=n,
                                    callback=lambda info: seen.append(core.get_num_threads()))
        return clf.fit(X, y).coefs_[0].copy()

    with ThreadPoolExecutor(4) as ex:
        results = list(ex.map(fit, [1, 3, 1, 3, 2, 5]))
    assert core.get_num_threads() == 2          # the process-wide setting is untouched
    for r in results[1:]:
        assert np.array_equal(r, results[0])
    assert set(seen) == {1, 2, 3, 5}            # each fit ran with its own count
