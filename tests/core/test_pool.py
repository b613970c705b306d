"""fastmlp's thread team (csrc/pool.h): kernels that run on it give the same bits whoever runs
which task, from several Python threads at once (a busy team makes a caller run its tasks
itself, contract 3), and after fork() (the child has none of the parent's workers, contract 4).
No timing here: what the team buys on a busy machine is measured by
benchmarks/bench_training.py --busy (benchmarks/results/pool_contention.md)."""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import fastmlp
from fastmlp.core import local_num_threads
from fastmlp.testing import assert_bitwise_equal


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    # large enough that every kernel below takes two threads (ops_impl.h, MIN_PER_THREAD)
    return (rng.standard_normal((600, 200)).astype(np.float32),
            rng.standard_normal((200, 400)).astype(np.float32),
            rng.standard_normal(400).astype(np.float32))


def _kernels(a, b, bias):
    """A product with its epilogue, an elementwise kernel, a reduction and an optimizer step:
    one of each kind the team runs."""
    y = fastmlp.matmul(a, b, bias=bias, activation="relu")
    dz = fastmlp.activation_backward(y, "relu", y=y)
    db = fastmlp.bias_grad(dz)
    p, m, v = b.copy(), np.zeros_like(b), np.zeros_like(b)
    fastmlp.adam_update(p, b, m, v, step=1, lr=1e-3)
    return [y, dz, db, p, m, v]


def test_concurrent_python_threads_get_the_serial_bits():
    a, b, bias = _problem()
    with local_num_threads(1):
        expected = _kernels(a, b, bias)
    results, errors = {}, []

    def work(k):
        try:
            with local_num_threads(2):
                for _ in range(20):
                    results[k] = _kernels(a, b, bias)
        except BaseException as e:    # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and all(not t.is_alive() for t in threads), errors
    for k in range(4):
        for got, want in zip(results[k], expected):
            assert_bitwise_equal(got, want)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_computes_with_a_fresh_team(tmp_path):
    code = """
import os, sys, numpy as np, fastmlp
rng = np.random.default_rng(0)
a, b = rng.standard_normal((300, 200), dtype=np.float32), rng.standard_normal((200, 170), dtype=np.float32)
fastmlp.set_num_threads(2)
parent = fastmlp.matmul(a, b)          # the parent's team has started its worker
pid = os.fork()
if pid == 0:
    child = fastmlp.matmul(a, b)       # the worker did not survive the fork: no hang
    os._exit(0 if np.array_equal(child, parent) else 3)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""
    # cwd: not the source tree, whose fastmlp folder has no compiled core
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux's /proc")
def test_every_kernel_runs_on_the_team_not_openmp(tmp_path):
    """The normalization, clipping and sparse kernels start no thread of their own: after each,
    the process has the threads it had once the team's worker started (an OpenMP region would
    add libgomp's, which then spin on the cores the team needs: benchmarks/results/
    pool_contention.md, "Normalization and sparse kernels"). The peak probe is OpenMP's alone.
    Without scipy (CI's run without scikit-learn) the sparse kernels are left out."""
    code = """
import os, sys, numpy as np, fastmlp
from fastmlp import core
try:
    import scipy.sparse as sp
except ImportError:
    sp = None
threads = lambda: len(os.listdir("/proc/self/task"))
rng = np.random.default_rng(0)
h = rng.standard_normal((512, 512), dtype=np.float32)
g, b = np.ones(512, np.float32), np.zeros(512, np.float32)
fastmlp.set_num_threads(2)
fastmlp.matmul(h, h)                              # the team's worker starts
before = threads()
for kind in ("layernorm", "batchnorm"):
    y, mean, rstd = getattr(core, kind + "_forward")(h, g, b, activation="relu")
    getattr(core, kind + "_backward")(h, h, g, b, mean, rstd, activation="relu", y=y)
core.clip_grad_norm(h.ravel().copy(), 1.0)
if sp is not None:
    x = sp.random(512, 2000, density=0.05, format="csr", dtype=np.float32, random_state=0)
    core.sparse_matmul(x, rng.standard_normal((2000, 512), dtype=np.float32), activation="relu")
    core.sparse_matmul_tn(x, h)
after = threads()
fastmlp.measure_peak_gflops(0.01, 2)              # OpenMP: a thread more (the check can fail)
sys.exit(0 if after == before < threads() else f"threads {before} -> {after} -> {threads()}")
"""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")     # NumPy's BLAS starts no threads
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
