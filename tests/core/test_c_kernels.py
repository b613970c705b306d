"""The C core alone, without Python: tests/c/test_kernels.c built by tests/c/run.sh with this
machine's compiler and run (GEMM edge sizes and every epilogue, elementwise kernels, losses and
optimizers against plain C references in double, on every ISA path, bitwise across thread
counts). CI runs the same program cross-compiled for aarch64 under qemu-user; running it here
keeps it honest on the paths the Python tests also cover."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parents[1] / "c" / "run.sh"
CSRC = Path(__file__).resolve().parents[2] / "csrc"


@pytest.mark.skipif(not (RUN.exists() and CSRC.is_dir()), reason="needs the source tree's csrc")
@pytest.mark.skipif(sys.platform != "linux", reason="run.sh builds with GCC's OpenMP flags (Linux)")
@pytest.mark.skipif(shutil.which("bash") is None or shutil.which(os.environ.get("CC", "gcc"))
                    is None, reason="needs bash and a C compiler")
def test_c_kernels_against_c_reference():
    r = subprocess.run(["bash", str(RUN), "native"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert ", 0 failed" in r.stdout
