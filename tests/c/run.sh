#!/usr/bin/env bash
# Build the C core with tests/c/test_kernels.c, without Python, and run it.
#   tests/c/run.sh native    this machine's compiler (CC, default gcc) and ISA units
#   tests/c/run.sh aarch64   cross-compiled with Debian's gcc-aarch64-linux-gnu, run under
#                            qemu-user (qemu-aarch64 -L /usr/aarch64-linux-gnu): the generic
#                            and NEON paths
# The flags are setup.py's (no -march, no -ffast-math); -Werror here, as C warnings in the
# core are bugs.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
csrc="$here/../../csrc"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
flags=(-O3 -fopenmp -fno-math-errno -ffp-contract=off -Wno-psabi -std=gnu11 -Wall -Werror
       -Werror=incompatible-pointer-types -I"$csrc")
units=(dispatch.c pool.c isa_generic.c)
case "${1:-native}" in
native)
    cc="${CC:-gcc}"
    case "$(uname -m)" in
    x86_64 | amd64) units+=(isa_avx2.c isa_avx512.c) ;;
    aarch64 | arm64) units+=(isa_neon.c) ;;
    esac
    run=() ;;
aarch64)
    cc=aarch64-linux-gnu-gcc
    units+=(isa_neon.c)
    run=(qemu-aarch64 -L /usr/aarch64-linux-gnu) ;;
*)
    echo "usage: $0 [native|aarch64]" >&2
    exit 2 ;;
esac
"$cc" "${flags[@]}" -o "$out/test_kernels" "$here/test_kernels.c" "${units[@]/#/$csrc/}" -lm
echo "built with $("$cc" --version | head -1)"
"${run[@]}" "$out/test_kernels"
