"""TrainStep's phases from native code: a Cython module of its own cimports TrainStep from
fastmlp/core/_native.pxd and runs validate, then load, forward, backward and update without the
GIL, as a data-parallel or solver loop in Cython would. Its steps must be run()'s, bit for bit.

Compiles a small extension with Cython and the C compiler (the test extra brings Cython).
"""
import importlib.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fastmlp.core import flat_params
from fastmlp.model import MLP
from fastmlp.testing import assert_bitwise_equal

pytest.importorskip("Cython")

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(
    importlib.util.find_spec("fastmlp").origin)))

CALLER = textwrap.dedent('''
    # cython: language_level=3
    from fastmlp.core._native cimport TrainStep, _Input

    def step_in_phases(TrainStep step, X, y, double lr):
        """validate (GIL), then the four native phases in one nogil block; the loss."""
        cdef _Input inp
        cdef double loss = 0
        cdef int status = 0
        step._validate(X, y, None, None, &inp)
        with nogil:
            step._load(&inp, 1)
            status = step._forward(&loss, 1)
            status = status or step._backward(1)
            status = status or step._update(lr, 1)
        if status:
            raise RuntimeError(f"a phase returned {status}")
        return loss
''')

BUILD = textwrap.dedent('''
    import sys
    from Cython.Build import cythonize
    from setuptools import setup
    setup(ext_modules=cythonize("caller.pyx", include_path=[sys.argv[1]], quiet=True),
          script_args=["build_ext", "--inplace"])
''')


@pytest.fixture(scope="module")
def caller(tmp_path_factory):
    work = tmp_path_factory.mktemp("native_caller")
    (work / "caller.pyx").write_text(CALLER)
    r = subprocess.run([sys.executable, "-c", BUILD, PACKAGE_ROOT], cwd=work,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    so = next(p for p in os.listdir(work) if p.startswith("caller.") and p.endswith(".so"))
    spec = importlib.util.spec_from_file_location("caller", work / so)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_phases_called_from_cython_equal_run(caller):
    import fastmlp
    fastmlp.set_num_threads(1)
    rng = np.random.default_rng(11)
    X = rng.standard_normal((16, 6)).astype(np.float32)
    y = rng.integers(0, 4, 16).astype(np.int32)
    model = MLP([6, 9, 7, 4], ["gelu", "relu"], dropout=[0.2, 0.0], random_state=5)
    a = model.train_step("softmax_cross_entropy", 16, optimizer="adam", alpha=0.1)
    b = fastmlp.TrainStep(flat_params(model.params), model.activations, "softmax_cross_entropy",
                          16, optimizer="adam", alpha=0.1, dropout=model.dropout, seed=model.seed)
    for _ in range(3):
        assert a.run(X, y, lr=0.01) == caller.step_in_phases(b, X, y, 0.01)
        for x, z in zip([a.flat_params, a.flat_grads, *a.state],
                        [b.flat_params, b.flat_grads, *b.state]):
            assert_bitwise_equal(x, z)
    assert a.t == b.t == 3
