"""Build the compiled core: one extension module holding every kernel.

Every ISA path (generic, AVX2+FMA, AVX-512) is compiled into the same binary: the ISA-specific
translation units use target pragmas, so the baseline flags below stay portable. Never add
flags that tune for the build machine's CPU or relax IEEE arithmetic (see README, "Building").
"""
import os
import platform

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

# The AVX2 and AVX-512 paths are x86-64 code: elsewhere the generic path is the one built.
X86_64 = platform.machine().lower() in ("x86_64", "amd64")
SOURCES = ["fastmlp/core/_native.pyx", "csrc/dispatch.c", "csrc/pool.c",
           "csrc/isa_generic.c"] + (
    ["csrc/isa_avx2.c", "csrc/isa_avx512.c"] if X86_64 else [])

# -ffp-contract=off: FMAs appear only where the kernels ask for them, so the order and rounding of
# every sum is fixed by the source (the determinism contract in csrc/fastmlp.h relies on it).
# -Werror=incompatible-pointer-types: an ISA's kernel that drifts from its prototype in fastmlp.h
# does not compile (csrc/kernels.h declares the table from those prototypes).
CFLAGS = ["-O3", "-fopenmp", "-fno-math-errno", "-ffp-contract=off", "-Wno-psabi", "-std=gnu11",
          "-Werror=incompatible-pointer-types"]
DEBUG = os.environ.get("FASTMLP_DEBUG", "") not in ("", "0")
# FASTMLP_SANITIZE=address,undefined (or thread): a sanitizer build for CI's checks; run it with
# the sanitizer's runtime preloaded (.ci/run shows how). Never for a wheel.
SANITIZE = os.environ.get("FASTMLP_SANITIZE", "").strip()
SANITIZE_FLAGS = ([f"-fsanitize={SANITIZE}", "-fno-omit-frame-pointer", "-g", "-O1"]
                  if SANITIZE else [])

# The bindings use NumPy's C API. Built against NumPy 2 (pyproject.toml), the module runs on any
# NumPy from NPY_TARGET_VERSION up; it is pinned to the oldest NumPy in [project] dependencies
# rather than left to the headers' default, which newer NumPy releases raise.
NUMPY_MACROS = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
                ("NPY_TARGET_VERSION", "NPY_1_23_API_VERSION")]

ext = Extension(
    "fastmlp.core._native",
    sources=SOURCES,
    include_dirs=["csrc", numpy.get_include()],
    define_macros=NUMPY_MACROS,
    depends=[os.path.join("csrc", f) for f in os.listdir("csrc") if f.endswith(".h")],
    # -g0 (after Python's own -g): no DWARF in the wheel's module (7 of its 8.4 MB were debug
    # information); the debug and sanitizer builds put -g back
    extra_compile_args=CFLAGS + ["-g0"] + (["-O0", "-g"] if DEBUG else []) + SANITIZE_FLAGS,
    extra_link_args=["-fopenmp"] + ([] if DEBUG or SANITIZE else ["-s"]) + SANITIZE_FLAGS,
)

directives = dict(
    language_level=3,
    boundscheck=DEBUG,
    wraparound=DEBUG,
    initializedcheck=DEBUG,
    cdivision=True,
)

setup(ext_modules=cythonize([ext], compiler_directives=directives))
