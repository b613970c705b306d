"""Python API of the compiled kernels: validation (fastmlp/core/_native.pyx notes a-e), threads,
ISA dispatch at import, concurrency, info() and one vocabulary across C and Python.

Numerical results here are compared bitwise (same kernel, same inputs) or with the GEMM bound of
test_gemm.py (2 K u |a| @ |b|, fastmlp.testing.gemm_error_bound).
"""
import os
import platform
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import fastmlp
from fastmlp import core
from fastmlp.testing import assert_bitwise_equal, assert_close, gemm_error_bound

F = np.float32


def mat(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(F)


# --------------------------------------------------------------------------------------------
# Bad input: a clear ValueError / TypeError naming the argument
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("call,exc,match", [
    # wrong ndim
    (lambda: fastmlp.matmul(mat(3), mat(3, 2)), ValueError, r"^a must be 2-D"),
    (lambda: fastmlp.matmul(mat(2, 3), mat(3, 2, 1)), ValueError, r"^b must be 2-D"),
    (lambda: fastmlp.bias_activation(mat(5)), ValueError, r"^z must be 2-D"),
    (lambda: fastmlp.bias_grad(mat(2, 3, 4)), ValueError, r"^dz must be 2-D"),
    (lambda: fastmlp.softmax_cross_entropy(mat(4), np.zeros(4, int)), ValueError,
     r"^logits must be 2-D"),
    # mismatched shapes
    (lambda: fastmlp.matmul(mat(2, 3), mat(4, 2)), ValueError, r"inner dimensions differ"),
    (lambda: fastmlp.matmul(mat(2, 3), mat(2, 4), trans_b=True), ValueError,
     r"inner dimensions differ"),
    (lambda: fastmlp.activation_backward(mat(2, 3), "relu", y=mat(3, 2)), ValueError,
     r"^y must have shape \(2, 3\)"),
    (lambda: fastmlp.activation_backward(mat(2, 3), "gelu", z=mat(2, 4)), ValueError,
     r"^z must have shape \(2, 3\)"),
    (lambda: fastmlp.matmul(mat(2, 3), mat(3, 4), grad_activation="tanh", y=mat(4, 2)),
     ValueError, r"^y must have shape \(2, 4\)"),
    (lambda: fastmlp.sigmoid_cross_entropy(mat(2, 3), mat(2, 4)), ValueError,
     r"^targets must have shape"),
    (lambda: fastmlp.mse_loss(mat(2, 3), mat(3, 3)), ValueError, r"^target must have shape"),
    (lambda: fastmlp.softmax_cross_entropy(mat(4, 3), np.zeros(5, int)), ValueError,
     r"^labels must have shape \(4,\)"),
    (lambda: fastmlp.mse_loss(mat(4, 3), mat(4, 3), mat(3)), ValueError,
     r"^sample_weight must have shape \(4,\)"),
    (lambda: fastmlp.sgd_update(mat(4, 3), mat(3, 4), lr=0.1), ValueError,
     r"^grad must have shape \(4, 3\)"),
    (lambda: fastmlp.adam_update(mat(4), mat(4), mat(4), mat(5), step=1, lr=0.1), ValueError,
     r"^v must have shape \(4,\)"),
    # float64 input
    (lambda: fastmlp.matmul(mat(2, 3).astype(np.float64), mat(3, 2)), TypeError,
     r"^a must be float32, got float64; convert with a.astype\(numpy.float32\)"),
    (lambda: fastmlp.matmul(mat(2, 3), mat(3, 2).astype(np.float64)), TypeError,
     r"^b must be float32"),
    (lambda: fastmlp.bias_activation(mat(2, 3).astype(np.float64)), TypeError,
     r"^z must be float32"),
    (lambda: fastmlp.sgd_update(mat(3).astype(np.float64), mat(3), lr=0.1), TypeError,
     r"^param must be float32"),
    (lambda: fastmlp.sgd_update(mat(3), mat(3).astype(np.float64), lr=0.1), TypeError,
     r"^grad must be float32"),
    (lambda: fastmlp.softmax_cross_entropy(mat(2, 3), np.zeros(2, int), np.ones(2)), TypeError,
     r"^sample_weight must be float32"),
    (lambda: fastmlp.matmul(mat(2, 3).astype(np.float16), mat(3, 2)), TypeError,
     r"^a must be float32"),
    (lambda: fastmlp.matmul(mat(2, 3).astype(">f4"), mat(3, 2)), TypeError,
     r"^a must be float32, got >f4"),
    # list input
    (lambda: fastmlp.matmul([[1.0, 2.0]], mat(2, 2)), TypeError,
     r"^a must be a numpy.ndarray of float32, got list"),
    (lambda: fastmlp.bias_activation(mat(2, 2), [1.0, 2.0]), TypeError,
     r"^bias must be a numpy.ndarray"),
    (lambda: fastmlp.sgd_update([1.0], mat(1), lr=0.1), TypeError, r"^param must be a numpy"),
    (lambda: fastmlp.mse_loss(mat(2, 2), [[0.0, 0.0], [0.0, 0.0]]), TypeError,
     r"^target must be a numpy"),
    # wrong bias shape
    (lambda: fastmlp.matmul(mat(2, 3), mat(3, 4), bias=mat(3)), ValueError,
     r"^bias must have shape \(4,\), got \(3,\)"),
    (lambda: fastmlp.matmul(mat(2, 3), mat(3, 4), bias=mat(1, 4)), ValueError,
     r"^bias must be 1-D"),
    (lambda: fastmlp.bias_activation(mat(2, 3), mat(2)), ValueError,
     r"^bias must have shape \(3,\)"),
    # unknown activation
    (lambda: fastmlp.matmul(mat(2, 3), mat(3, 4), activation="swish"), ValueError,
     r"^activation must be one of identity, relu, leaky_relu, tanh, logistic, gelu or None, "
     r"got 'swish'"),
    (lambda: fastmlp.matmul(mat(2, 3), mat(3, 4), grad_activation="softplus", y=mat(2, 4)),
     ValueError, r"^grad_activation must be one of"),
    (lambda: fastmlp.bias_activation(mat(2, 3), None, "Relu"), ValueError,
     r"^activation must be one of"),
    (lambda: fastmlp.activation_backward(mat(2, 3), "sigmoid", y=mat(2, 3)), ValueError,
     r"^activation must be one of"),
    (lambda: fastmlp.activation_backward(mat(2, 3), None), ValueError,
     r"activation must be given"),
    # grad_activation without y (or z for gelu), or combined with a forward epilogue
    (lambda: fastmlp.matmul(mat(2, 3), mat(3, 4), grad_activation="relu"), ValueError,
     r"grad_activation='relu' needs y"),
    (lambda: fastmlp.matmul(mat(2, 3), mat(3, 4), grad_activation="gelu", y=mat(2, 4)),
     ValueError, r"grad_activation='gelu' needs z"),
    (lambda: fastmlp.activation_backward(mat(2, 3), "tanh", z=mat(2, 3)), ValueError,
     r"'tanh' needs y"),
    (lambda: fastmlp.activation_backward(mat(2, 3), "gelu", y=mat(2, 3)), ValueError,
     r"'gelu' needs z"),
    (lambda: fastmlp.matmul(mat(2, 3), mat(3, 4), grad_activation="relu", y=mat(2, 4),
                            bias=mat(4)), ValueError, r"grad_activation cannot be combined"),
    (lambda: fastmlp.matmul(mat(2, 3), mat(3, 4), grad_activation="relu", y=mat(2, 4),
                            activation="relu"), ValueError, r"grad_activation cannot be combined"),
    # labels
    (lambda: fastmlp.softmax_cross_entropy(mat(3, 4), np.array([0, -1, 2])), ValueError,
     r"^labels must be in \[0, 4\), got values in \[-1, 2\]"),
    (lambda: fastmlp.softmax_cross_entropy(mat(3, 4), np.array([0, 4, 2])), ValueError,
     r"^labels must be in \[0, 4\), got values in \[0, 4\]"),
    (lambda: fastmlp.softmax_cross_entropy(mat(3, 4), np.array([0, 2**40, 2])), ValueError,
     r"^labels must be in \[0, 4\)"),
    (lambda: fastmlp.softmax_cross_entropy(mat(3, 4), np.array([0.0, 1.0, 2.0])), TypeError,
     r"^labels must be a numpy array of integers, got float64"),
    (lambda: fastmlp.softmax_cross_entropy(mat(3, 4), np.array([True, False, True])),
     TypeError, r"^labels must be a numpy array of integers, got bool"),
    (lambda: fastmlp.softmax_cross_entropy(mat(3, 4), [0, 1, 2]), TypeError,
     r"^labels must be a numpy array of integers, got list"),
    (lambda: fastmlp.softmax_cross_entropy(mat(3, 0), np.array([0, 0, 0])), ValueError,
     r"^labels must be in \[0, 0\)"),
])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def _readonly(x):
    x.flags.writeable = False
    return x


@pytest.mark.parametrize("make_out,exc,match", [
    (lambda: np.empty((2, 5), F), ValueError, r"^out must have shape \(2, 4\), got \(2, 5\)"),
    (lambda: np.empty((4, 2), F), ValueError, r"^out must have shape \(2, 4\)"),
    (lambda: np.empty(8, F), ValueError, r"^out must be 2-D"),
    (lambda: np.empty((2, 4), np.float64), TypeError, r"^out must be float32"),
    (lambda: [[0.0] * 4] * 2, TypeError, r"^out must be a numpy.ndarray"),
    (lambda: np.empty((4, 2), F).T, ValueError, r"^out must be C-contiguous"),
    (lambda: np.empty((2, 8), F)[:, ::2], ValueError, r"^out must be C-contiguous"),
    (lambda: _readonly(np.empty((2, 4), F)), ValueError, r"^out is read-only"),
])
def test_bad_out(make_out, exc, match):
    a, b = mat(2, 3), mat(3, 4)
    for call in (lambda o: fastmlp.matmul(a, b, out=o),
                 lambda o: fastmlp.bias_activation(mat(2, 4), out=o),
                 lambda o: fastmlp.activation_backward(mat(2, 4), "relu", y=mat(2, 4), out=o),
                 lambda o: fastmlp.sigmoid_cross_entropy(mat(2, 4), mat(2, 4), grad_out=o),
                 lambda o: fastmlp.softmax_cross_entropy(mat(2, 4), np.zeros(2, int),
                                                         grad_out=o)):
        with pytest.raises(exc, match=match.replace("out", "(grad_)?out", 1)):
            call(make_out())


def test_bad_out_bias_grad():
    with pytest.raises(ValueError, match=r"^out must have shape \(3,\)"):
        fastmlp.bias_grad(mat(4, 3), out=np.empty(4, F))
    with pytest.raises(ValueError, match=r"^out is read-only"):
        fastmlp.bias_grad(mat(4, 3), out=_readonly(np.empty(3, F)))


def test_bad_optimizer_state():
    p, g = mat(6), mat(6, seed=1)
    with pytest.raises(ValueError, match=r"^param must be C-contiguous"):
        fastmlp.sgd_update(mat(6, 2)[:, 0], g, lr=0.1)
    with pytest.raises(ValueError, match=r"^param is read-only"):
        fastmlp.sgd_update(_readonly(mat(6)), g, lr=0.1)
    with pytest.raises(ValueError, match=r"^square_avg must be C-contiguous"):
        fastmlp.rmsprop_update(p, g, np.zeros(12, F)[::2], lr=0.1)
    with pytest.raises(TypeError, match=r"^m must be float32"):
        fastmlp.adam_update(p, g, np.zeros(6), np.zeros(6, F), step=1, lr=0.1)
    with pytest.raises(ValueError, match=r"^m is required"):
        fastmlp.adam_update(p, g, None, np.zeros(6, F), step=1, lr=0.1)
    # nothing was modified by the failed calls
    assert_bitwise_equal(p, mat(6))


def test_beta_without_out():
    with pytest.raises(ValueError, match=r"beta != 0 needs out"):
        fastmlp.matmul(mat(2, 3), mat(3, 4), beta=1.0)
    # beta == 0 without out is fine
    assert fastmlp.matmul(mat(2, 3), mat(3, 4), beta=0.0).shape == (2, 4)


def test_out_overlapping_inputs():
    a = mat(4, 4)
    with pytest.raises(ValueError, match=r"matmul: out must not overlap [ab]\b"):
        fastmlp.matmul(a, mat(4, 4), out=a)
    b = mat(4, 4)
    with pytest.raises(ValueError, match=r"matmul: out must not overlap [ab]\b"):
        fastmlp.matmul(mat(4, 4), b, out=b)
    buf = np.zeros((8, 4), F)
    buf[:4] = mat(4, 4)
    with pytest.raises(ValueError, match=r"matmul: out must not overlap [ab]\b"):
        fastmlp.matmul(mat(4, 4), buf[:4].T, out=buf[:4])
    # a's transpose view overlaps too
    with pytest.raises(ValueError, match=r"matmul: out must not overlap [ab]\b"):
        fastmlp.matmul(a.T, mat(4, 4), out=a)
    # like np.may_share_memory, only extents are compared: out between a's rows counts
    rows = np.zeros((2, 10), F)
    with pytest.raises(ValueError, match=r"matmul: out must not overlap [ab]\b"):
        fastmlp.matmul(rows[:, :2], mat(2, 4), out=rows[0, 2:].reshape(2, 4))
    # disjoint halves of one buffer are fine
    got = fastmlp.matmul(buf[:4], mat(4, 4), out=buf[4:])
    assert got.base is not None and np.shares_memory(got, buf)


@pytest.mark.parametrize("step,exc", [(0, ValueError), (-1, ValueError), (2**63, ValueError),
                                      (1.0, TypeError), ("1", TypeError), (None, TypeError),
                                      (True, TypeError)])
def test_adam_bad_step(step, exc):
    p = mat(3)
    with pytest.raises(exc, match=r"^step must be (an integer|in \[1, )"):
        fastmlp.adam_update(p, mat(3), np.zeros(3, F), np.zeros(3, F), step=step, lr=0.1)
    assert_bitwise_equal(p, mat(3))


def test_momentum_without_velocity():
    p = mat(3)
    with pytest.raises(ValueError, match=r"momentum != 0 needs velocity"):
        fastmlp.sgd_update(p, mat(3), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"momentum != 0 needs velocity"):
        fastmlp.sgd_update(p, mat(3), lr=0.1, momentum=0.9, nesterov=True)
    assert_bitwise_equal(p, mat(3))


@pytest.mark.parametrize("n,exc", [(0, ValueError), (-1, ValueError), (10**6, ValueError),
                                   ("2", TypeError), (2.0, TypeError), (True, TypeError),
                                   (1.5, TypeError)])
def test_set_num_threads_rejects(n, exc):
    with pytest.raises(exc, match=rf"^n_threads must be (an integer )?in \[1, {core.MAX_THREADS}\]"):
        fastmlp.set_num_threads(n)
    assert core.MAX_THREADS >= 64


def test_set_num_threads_accepts():
    for n in (1, 3, np.int64(2)):
        fastmlp.set_num_threads(n)
        assert fastmlp.get_num_threads() == int(n)
    fastmlp.set_num_threads(None)
    assert fastmlp.get_num_threads() >= 1


def test_unknown_isa():
    with pytest.raises(ValueError, match=r"unknown ISA 'sse9'"):
        core.set_isa("sse9")
    with pytest.raises(ValueError, match=r"unknown ISA"):
        core.gemm_blocks("sve")
    assert core.get_isa() in core.supported_isas()


def test_isa_not_in_this_build():
    # each architecture builds its own paths: x86-64 has no NEON table, aarch64 no AVX ones
    absent = "neon" if platform.machine().lower() in ("x86_64", "amd64") else "avx2"
    with pytest.raises(RuntimeError, match=f"the '{absent}' ISA path is not in this build"):
        core.gemm_blocks(absent)
    with pytest.raises(RuntimeError, match="not in this build"):
        core.set_gemm_blocks(absent, 64, 64, 64)
    with pytest.raises(RuntimeError, match="does not support"):
        core.set_isa(absent)
    assert absent not in core.supported_isas()


# --------------------------------------------------------------------------------------------
# Layouts accepted by the readers (note b) give the contiguous result
# --------------------------------------------------------------------------------------------


def test_non_contiguous_inputs_are_copied(isa):
    rng = np.random.default_rng(0)
    z = rng.standard_normal((10, 14)).astype(F)
    bias = rng.standard_normal(28).astype(F)[::2]
    base = fastmlp.bias_activation(z, np.ascontiguousarray(bias), "tanh")
    assert_bitwise_equal(fastmlp.bias_activation(np.asfortranarray(z), bias, "tanh"), base)
    big = np.zeros((20, 28), F)
    big[::2, ::2] = z
    assert_bitwise_equal(fastmlp.bias_activation(big[::2, ::2], bias, "tanh"), base)
    zr = z.copy()
    zr.flags.writeable = False
    assert_bitwise_equal(fastmlp.bias_activation(zr, bias, "tanh"), base)
    labels = np.arange(10) % 14
    l1, g1 = fastmlp.softmax_cross_entropy(z, labels)
    l2, g2 = fastmlp.softmax_cross_entropy(np.asfortranarray(z), labels[::-1][::-1])
    assert l1 == l2
    assert_bitwise_equal(g1, g2)
    p = z.copy()
    fastmlp.sgd_update(p, np.asfortranarray(z), lr=0.5)
    assert_bitwise_equal(p, z - F(0.5) * z)


# --------------------------------------------------------------------------------------------
# Threads
# --------------------------------------------------------------------------------------------


def test_get_num_threads_respects_threadpool_limits():
    fastmlp.set_num_threads(None)
    default = fastmlp.get_num_threads()
    assert default >= 1
    with threadpool_limits(limits=1, user_api="openmp"):
        assert fastmlp.get_num_threads() == 1
        # set_num_threads overrides the limit explicitly
        fastmlp.set_num_threads(2)
        assert fastmlp.get_num_threads() == 2
        fastmlp.set_num_threads(None)
        assert fastmlp.get_num_threads() == 1
    assert fastmlp.get_num_threads() == default


def test_default_threads_capped_at_physical_cores():
    if os.environ.get("OMP_NUM_THREADS"):
        pytest.skip("OMP_NUM_THREADS is set: no cap by design")
    fastmlp.set_num_threads(None)
    assert 1 <= fastmlp.get_num_threads() <= fastmlp.info()["physical_cores"]


def test_concurrent_python_threads_match_sequential(isa):
    """Re-entrancy (rule 5): four Python threads calling the kernels at once (the GIL is released
    in every call) get the bits of sequential calls."""
    rng = np.random.default_rng(17)
    jobs = []
    for i in range(8):
        m, n, k = 60 + 7 * i, 90 + 11 * i, 300 + 13 * i
        jobs.append((rng.standard_normal((m, k)).astype(F), rng.standard_normal((n, k)).astype(F),
                     rng.standard_normal(n).astype(F)))

    def work(job):
        a, b, bias = job
        c = fastmlp.matmul(a, b, trans_b=True, bias=bias, activation="gelu")
        d = fastmlp.matmul(a, b, trans_b=True)
        loss, g = fastmlp.softmax_cross_entropy(c, np.arange(c.shape[0]) % c.shape[1])
        return c, d, g, np.array([loss])

    sequential = [work(j) for j in jobs]
    with ThreadPoolExecutor(max_workers=4) as ex:
        for _ in range(3):
            concurrent = list(ex.map(work, jobs))
            for s, c in zip(sequential, concurrent):
                for x, y in zip(s, c):
                    assert_bitwise_equal(x, y)
    a, b, _ = jobs[0]
    assert_close(sequential[0][1], a.astype(np.float64) @ b.T.astype(np.float64),
                 bound=gemm_error_bound(a, b, a.shape[1], trans_b=True))


# --------------------------------------------------------------------------------------------
# ISA dispatch: FASTMLP_ISA at import, in a fresh interpreter
# --------------------------------------------------------------------------------------------

PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(fastmlp.__file__)))


def _run_python(code, tmp_path, **env_updates):
    env = dict(os.environ)
    env.pop("FASTMLP_ISA", None)
    env.update(env_updates)
    env["PYTHONPATH"] = PKG_PARENT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


CHECK_CODE = """
    import fastmlp, numpy as np
    assert fastmlp.__file__ == {file!r}, fastmlp.__file__
    info = fastmlp.info()
    a = np.ones((3, 5), np.float32)
    c = fastmlp.matmul(a, a, trans_b=True, activation="tanh")
    print(info["isa"], float(c[0, 0]))
"""


@pytest.mark.parametrize("name", list(core.supported_isas()))
def test_fastmlp_isa_env_selects_path(tmp_path, name):
    r = _run_python(CHECK_CODE.format(file=fastmlp.__file__), tmp_path, FASTMLP_ISA=name)
    assert r.returncode == 0, r.stderr
    isa, value = r.stdout.split()
    assert isa == name
    assert_close(float(value), np.tanh(5.0), rtol=1e-6)


def test_fastmlp_isa_env_default_is_widest(tmp_path):
    r = _run_python(CHECK_CODE.format(file=fastmlp.__file__), tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == core.supported_isas()[-1]


@pytest.mark.parametrize("value", ["sse9", "AVX-512", "sve"])
def test_fastmlp_isa_env_bogus_fails_at_import(tmp_path, value):
    r = _run_python("import fastmlp", tmp_path, FASTMLP_ISA=value)
    assert r.returncode != 0
    assert "ImportError" in r.stderr
    assert f"FASTMLP_ISA={value.lower()!r} is not an ISA path" in r.stderr
    assert "generic, avx2, avx512, neon" in r.stderr


def test_fastmlp_isa_env_unsupported_fails_at_import(tmp_path):
    unsupported = [i for i in core.ISAS if i not in core.supported_isas()]
    if not unsupported:
        pytest.skip("this CPU supports every ISA path")
    r = _run_python("import fastmlp", tmp_path, FASTMLP_ISA=unsupported[-1])
    assert r.returncode != 0
    assert "this CPU does not support it" in r.stderr


def test_fastmlp_isa_env_case_and_spaces(tmp_path):
    r = _run_python(CHECK_CODE.format(file=fastmlp.__file__), tmp_path, FASTMLP_ISA=" Generic ")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == "generic"


def test_set_isa_switches_and_restores(isa):
    assert core.get_isa() == isa
    assert fastmlp.info()["isa"] == isa
    blocks = core.gemm_blocks()
    assert blocks == core.gemm_blocks(isa)
    assert set(blocks) == {"mr", "nr", "kc", "mc", "nc"}
    assert all(isinstance(v, int) and v >= 1 for v in blocks.values())


# --------------------------------------------------------------------------------------------
# info()
# --------------------------------------------------------------------------------------------


def test_info():
    info = fastmlp.info()
    for key in ("version", "isa", "supported_isas", "num_threads", "openmp"):
        assert key in info, key
    assert info["version"] == fastmlp.__version__
    assert info["isa"] == core.get_isa()
    assert info["isa"] in info["supported_isas"]
    assert info["supported_isas"] == list(core.supported_isas())
    assert info["supported_isas"][0] == "generic"
    assert info["num_threads"] == fastmlp.get_num_threads()
    assert info["openmp"] is None or "library" in info["openmp"]
    fastmlp.set_num_threads(3)
    assert fastmlp.info()["num_threads"] == 3


# --------------------------------------------------------------------------------------------
# One vocabulary: the C side's names are the Python names
# --------------------------------------------------------------------------------------------


def test_every_kernel_has_one_name_in_c_python_and_the_reference():
    """KERNELS is read from the C side (fm_kernel_name, the profiler's names): each is a function
    of fastmlp and of fastmlp.reference, with the same parameters."""
    import inspect
    assert len(core.KERNELS) == len(set(core.KERNELS)) >= 10
    for name in core.KERNELS:
        ours, twin = getattr(fastmlp, name), getattr(fastmlp.reference, name)
        assert callable(ours) and callable(twin), name
        assert name in fastmlp.__all__ and name in fastmlp.reference.__all__, name
        assert ours.__doc__ and twin.__doc__, name
        params = list(inspect.signature(twin).parameters)
        assert params == list(inspect.signature(ours).parameters), name


def test_enum_names_come_from_one_place():
    assert fastmlp.ACTIVATIONS is core.ACTIVATIONS is fastmlp.reference.ACTIVATIONS
    assert core.ACTIVATIONS == ("identity", "relu", "leaky_relu", "tanh", "logistic", "gelu")
    assert core.ISAS == ("generic", "avx2", "avx512", "neon")
    assert core.GEMM_PATHS == ("blocked", "blocked_ct", "dot")
    assert set(core.LOSSES) <= set(core.KERNELS)
    assert {f"{o}_update" for o in core.OPTIMIZERS} <= set(core.KERNELS)
    assert set(core.supported_isas()) <= set(core.ISAS)
