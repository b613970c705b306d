"""Data-parallel training with real MPI ranks (mpiexec -n 2 and -n 3 on loopback).

Each test runs a script under mpiexec with a timeout: a hang fails the test instead of
blocking CI. Skipped when mpi4py or mpiexec is absent (pip install ".[mpi]" brings both; CI
installs them). Tolerances: a data-parallel step sums the shards' gradients in another order
than one process, so parameters agree to 1e-4 x max(1, |W|) after 12 epochs (stochastic
solvers) and loss curves to rtol 1e-5; L-BFGS, whose line search amplifies rounding, to
1e-3 x max(1, |W|) and its final loss to rtol 1e-4 (on problems whose penalty fixes the
minimum). The same rank count gives bitwise the same parameters on every rank and run.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install '.[mpi]')")
HERE = Path(__file__).parent
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep
                       + os.environ.get("PATH", ""))
if MPIEXEC is None:
    pytest.skip("no mpiexec on PATH (pip install '.[mpi]' brings MPICH's)",
                allow_module_level=True)
TIMEOUT = 240


def mpirun(n, *args, timeout=TIMEOUT, cwd=None):
    """Run args under mpiexec -n n; a run that outlives timeout fails (a hang, contract 3).
    cwd: where it runs (`python -m fastmlp` must not start in the source tree, whose fastmlp
    folder has no compiled core)."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    try:
        return subprocess.run([MPIEXEC, "-n", str(n), *args], capture_output=True, text=True,
                              timeout=timeout, env=env, cwd=cwd)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"mpiexec -n {n} {' '.join(args)} did not finish in {timeout} s (a hang): "
                    f"{e.stdout} {e.stderr}")


@pytest.fixture(scope="module", params=[2, 3], ids=["2 ranks", "3 ranks"])
def equivalence(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("mpi") / "equivalence.json"
    r = mpirun(request.param, sys.executable, str(HERE / "mpi_equivalence.py"), str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(out.read_text())


CASES = ["adam", "sgd nesterov", "rmsprop", "lbfgs", "dropout", "weights", "layer norm, clip",
         "early stopping", "binary", "multi-output sgd", "regression lbfgs", "poisson"]


@pytest.mark.parametrize("case", CASES)
def test_n_ranks_train_as_one_process(equivalence, case):
    c = equivalence[case]
    lbfgs = "lbfgs" in case
    assert c["max_diff"] <= (1e-3 if lbfgs else 1e-4) * max(1.0, c["scale"]), c
    assert c["n_iter_n"] == c["n_iter_1"]
    a, b = np.array(c["loss_n"]), np.array(c["loss_1"])
    if lbfgs:
        assert abs(a[-1] - b[-1]) <= 1e-4 * abs(b[-1])
    else:
        assert a.shape == b.shape and np.allclose(a, b, rtol=1e-5, atol=0), (a, b)
    if c["validation_1"] is not None:
        assert np.allclose(c["validation_n"], c["validation_1"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("case", CASES)
def test_ranks_hold_identical_parameters_and_repeat_bitwise(equivalence, case):
    assert equivalence[case]["ranks_identical"]
    assert equivalence[case]["repeat_bitwise"]


@pytest.fixture(scope="module", params=[2, 3], ids=["2 ranks", "3 ranks"])
def failures(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("mpi") / "failures"
    r = mpirun(request.param, sys.executable, str(HERE / "mpi_failures.py"), str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    return [json.loads(Path(f"{out}.{k}.json").read_text()) for k in range(request.param)]


def test_bad_input_on_one_rank_stops_every_rank(failures):
    last = len(failures) - 1
    for rank, seen in enumerate(failures):
        for name in ("bad_data", "different_data", "lbfgs_bad_data"):
            assert seen[name]["error"] == "ValueError", (rank, name, seen[name])
            assert f"rank {last}'s differ" in seen[name]["message"]
        # the rank with the bad parameter raises its own error, the others name it
        bad = seen["bad_parameter"]
        if rank == last:
            assert bad["error"] == "InvalidParameterError" and "'alpha'" in bad["message"]
        else:
            assert bad["error"] == "DistributedError"
            assert bad["message"].startswith(f"rank {last} failed: InvalidParameterError")


def test_exception_in_a_callback_on_one_rank_stops_every_rank(failures):
    last = len(failures) - 1
    for seen in failures:
        assert seen["callback_raises"]["error"] == "DistributedError"
        assert seen["callback_raises"]["message"] == \
            f"rank {last} failed: RuntimeError: callback failed on purpose"


def test_interrupt_on_one_rank_stops_every_rank_with_the_same_model(failures):
    # KeyboardInterrupt in the last rank's callback after epoch 3: every rank keeps the
    # weights reached so far (as a serial fit does), the same on every rank
    for seen in failures:
        assert seen["interrupt"]["error"] is None
        assert seen["interrupted"] == failures[0]["interrupted"]
    assert failures[0]["interrupted"]["n_iter"] == 3


def test_refused_uses(failures):
    last = len(failures) - 1
    for seen in failures:
        assert seen["batch_norm"]["error"] == "InvalidParameterError"
        assert "cannot train data-parallel" in seen["batch_norm"]["message"]
        assert seen["different_networks"]["error"] == "DistributedError"
        assert f"rank {last}'s network differs" in seen["different_networks"]["message"]
        assert seen["works_after"]["error"] is None


MODEL_API = """
import sys, numpy as np
from mpi4py import MPI
from fastmlp.model import MLP
from fastmlp.distributed import DistributedTrainStep, DistributedError
comm = MPI.COMM_WORLD
rng = np.random.default_rng(0)
X = rng.normal(size=(256, 10)).astype(np.float32)
y = rng.integers(0, 3, 256).astype(np.int32)
# rank 0's initial parameters are broadcast: other seeds on other ranks do not matter
model = MLP([10, 32, 3], random_state=comm.Get_rank())
step = DistributedTrainStep(model.train_step("softmax_cross_entropy", 64, alpha=0.01), comm,
                            check=True)
order = np.random.default_rng(5).permutation(256)
losses = [step.run(X, y, lr=0.01, index=order[s:s + 64]) for s in range(0, 256, 64)]
step.close()
if comm.Get_rank() == 0:
    ref = MLP([10, 32, 3], random_state=0)
    one = ref.train_step("softmax_cross_entropy", 64, alpha=0.01)
    ones = [one.run(X, y, lr=0.01, index=order[s:s + 64]) for s in range(0, 256, 64)]
    assert np.allclose(losses, ones, rtol=1e-5), (losses, ones)
    assert np.allclose(step.flat_params, one.flat_params, rtol=0, atol=1e-5)
    assert step.allreduce_seconds > 0
# the debug check catches ranks whose parameters drifted apart
if comm.Get_rank() == 1:
    step.flat_params[0] += 1
try:
    step.check_identical()
    raise SystemExit("check_identical missed a difference")
except DistributedError as e:
    assert "rank 1's parameters differ" in str(e), e
print("ok" * (comm.Get_rank() + 1))
"""


def test_model_api_step_matches_one_process_and_checks_ranks(tmp_path):
    script = tmp_path / "model_api.py"
    script.write_text(MODEL_API)
    r = mpirun(2, sys.executable, str(script))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("ok") == 3, r.stdout        # rank 0 once, rank 1 twice


def test_comm_of_one_rank_is_serial(tmp_path):
    script = tmp_path / "self.py"
    script.write_text("""
import warnings, numpy as np
from mpi4py import MPI
from fastmlp import MLPClassifier
warnings.simplefilter("ignore")
rng = np.random.default_rng(0)
X = rng.normal(size=(200, 5)).astype(np.float32)
y = (X[:, 0] > 0).astype(int)
kw = dict(hidden_layer_sizes=(8,), max_iter=5, random_state=0)
a = MLPClassifier(comm=MPI.COMM_SELF, **kw).fit(X, y)
b = MLPClassifier(**kw).fit(X, y)
assert all(np.array_equal(p, q) for p, q in zip(a.coefs_, b.coefs_))
print("ok")
""")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr


def test_cli_trains_data_parallel_and_rank_0_reports_and_saves(tmp_path):
    saved = tmp_path / "model.safetensors"
    r = mpirun(2, sys.executable, "-m", "fastmlp", "train", "--epochs", "2", "--hidden", "64",
               "--save", str(saved), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    summary = [line for line in r.stdout.splitlines() if line.startswith("test accuracy")]
    assert len(summary) == 1 and "x 2 MPI ranks" in summary[0], r.stdout
    assert r.stderr.count("2 MPI ranks") == 1           # the header, from rank 0 only
    accuracy = float(summary[0].split()[2].rstrip("%"))
    assert accuracy > 80, summary                      # 2 epochs of the bundled MNIST sample
    from fastmlp.io import read_model
    assert read_model(str(saved), ("MLPClassifier",)).layer_sizes[1] == 64


def test_cli_failure_on_one_rank_stops_the_job(tmp_path):
    # a file only rank 0 can read: the other rank fails to load it, and every rank stops
    script = tmp_path / "cli.py"
    data = tmp_path / "rank0.npz"
    rng = np.random.default_rng(0)
    np.savez(data, X_train=rng.normal(size=(50, 4)).astype(np.float32),
             y_train=np.arange(50) % 2, X_test=np.zeros((4, 4), np.float32),
             y_test=np.arange(4) % 2)
    script.write_text(f"""
import os, sys
from mpi4py import MPI
from fastmlp.tools.cli import main
path = {str(data)!r} if MPI.COMM_WORLD.Get_rank() == 0 else {str(tmp_path / 'missing.npz')!r}
main(["train", "--data", path, "--epochs", "1"])
""")
    r = mpirun(2, sys.executable, str(script), timeout=120)
    assert r.returncode != 0
    assert "rank 1 failed" in r.stdout + r.stderr, r.stdout + r.stderr
