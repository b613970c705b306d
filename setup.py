"""Build the compiled core: one extension module holding every kernel.

Every ISA path (generic, AVX2+FMA, AVX-512) is compiled into the same binary: the ISA-specific
translation units use target pragmas, so the baseline flags below stay portable. Never add
flags that tune for the build machine's CPU or relax IEEE arithmetic (see README, "Building").
"""
import os
import platform
import subprocess
import sys

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# The AVX2 and AVX-512 paths are x86-64 code, the NEON path aarch64 code; the generic path is
# built everywhere.
MACHINE = platform.machine().lower()
SOURCES = ["fastmlp/core/_native.pyx", "csrc/dispatch.c", "csrc/pool.c", "csrc/isa_generic.c"]
if MACHINE in ("x86_64", "amd64"):
    SOURCES += ["csrc/isa_avx2.c", "csrc/isa_avx512.c"]
elif MACHINE in ("aarch64", "arm64"):
    SOURCES += ["csrc/isa_neon.c"]

# -ffp-contract=off: FMAs appear only where the kernels ask for them, so the order and rounding of
# every sum is fixed by the source (the determinism contract in csrc/fastmlp.h relies on it).
# -Werror=incompatible-pointer-types: an ISA's kernel that drifts from its prototype in fastmlp.h
# does not compile (csrc/kernels.h declares the table from those prototypes).
# OpenMP: GCC and LLVM clang take -fopenmp; Apple's clang takes it only through its
# preprocessor and links LLVM's libomp (Homebrew's: LIBOMP_PREFIX, which cibuildwheel's macOS
# configuration in pyproject.toml sets).
DARWIN = sys.platform == "darwin"
LIBOMP_PREFIX = os.environ.get("LIBOMP_PREFIX", "")
OPENMP_COMPILE = ["-Xpreprocessor", "-fopenmp"] if DARWIN else ["-fopenmp"]
OPENMP_LINK = ["-lomp"] if DARWIN else ["-fopenmp"]
if DARWIN and LIBOMP_PREFIX:
    OPENMP_COMPILE.append(f"-I{LIBOMP_PREFIX}/include")
    OPENMP_LINK[:0] = [f"-L{LIBOMP_PREFIX}/lib", f"-Wl,-rpath,{LIBOMP_PREFIX}/lib"]
CFLAGS = ["-O3"] + OPENMP_COMPILE + ["-fno-math-errno", "-ffp-contract=off", "-Wno-psabi",
                                     "-std=gnu11", "-Werror=incompatible-pointer-types"]
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
    # -s strips the symbols (Apple's linker ignores it: there -g0 is what keeps the module lean)
    extra_link_args=OPENMP_LINK + ([] if DEBUG or SANITIZE or DARWIN else ["-s"]) + SANITIZE_FLAGS,
)

# The instruction sets of the ISA units. GCC takes them from a target pragma in each unit
# (csrc/isa_table.h); clang's pragmas do not reach the functions OpenMP outlines from parallel
# regions, so for clang they are flags of those units alone (never of the whole module).
ISA_FLAGS = {
    "csrc/isa_avx2.c": ["-mavx2", "-mfma"],
    "csrc/isa_avx512.c": ["-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mavx2", "-mfma"],
}


def is_clang(command):
    """Whether the compiler `command` (a list) is clang, whatever it is called (cc on macOS)."""
    try:
        macros = subprocess.run(command + ["-dM", "-E", "-x", "c", os.devnull], check=True,
                                capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return False
    return "__clang__" in macros


class BuildExt(build_ext):
    """build_ext that compiles the ISA units with their own flags when the compiler is clang."""

    def build_extension(self, ext):
        if is_clang(self.compiler.compiler_so[:1]):
            for source, flags in ISA_FLAGS.items():
                if source in ext.sources:
                    ext.sources.remove(source)
                    ext.extra_objects += self.compiler.compile(
                        [source], output_dir=self.build_temp, macros=ext.define_macros,
                        include_dirs=ext.include_dirs, depends=ext.depends,
                        extra_postargs=ext.extra_compile_args + flags)
        super().build_extension(ext)


directives = dict(
    language_level=3,
    boundscheck=DEBUG,
    wraparound=DEBUG,
    initializedcheck=DEBUG,
    cdivision=True,
)

setup(ext_modules=cythonize([ext], compiler_directives=directives), cmdclass={"build_ext": BuildExt})
