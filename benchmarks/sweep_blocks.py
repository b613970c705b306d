"""Sweep the GEMM cache blocks (KC, MC, NC) of one ISA path and print GFLOP/s per setting.

Each setting runs in a fresh process (block sizes are read from FASTMLP_GEMM_* at import):

    env -u OPENBLAS_CORETYPE python benchmarks/sweep_blocks.py --isa avx512 --threads 1
"""
import argparse
import itertools
import json
import os
import subprocess
import sys

import fastmlp
from fastmlp.tools.bench import context

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = r"""
import json, sys, time, numpy as np, fastmlp
fastmlp.set_num_threads(int(sys.argv[1]))
rng = np.random.default_rng(0)
res = {}
for name, M, N, K, ta in [("square 1024", 1024, 1024, 1024, 0), ("square 2048", 2048, 2048, 2048, 0),
                          ("b128 fwd 784x512", 128, 512, 784, 0), ("b512 dW 784x512", 784, 512, 512, 1)]:
    a = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
    b = rng.standard_normal((K, N)).astype(np.float32)
    out = np.empty((M, N), np.float32)
    n = max(1, int(4e9 / (2 * M * N * K)))
    fastmlp.matmul(a, b, trans_a=ta, out=out)
    ts = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            fastmlp.matmul(a, b, trans_a=ta, out=out)
        ts.append((time.perf_counter() - t0) / n)
    res[name] = 2 * M * N * K / np.median(ts) * 1e-9
print(json.dumps(res))
"""


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--isa", default="avx512")
    p.add_argument("--threads", default="1")
    p.add_argument("--kc", default="192,256,384,512")
    p.add_argument("--mc", default="48,96,192")
    p.add_argument("--nc", default="256,512,1024")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    rows = []
    for kc, mc, nc in itertools.product(*(map(int, getattr(args, k).split(",")) for k in ("kc", "mc", "nc"))):
        env = dict(os.environ, FASTMLP_ISA=args.isa, FASTMLP_GEMM_KC=str(kc),
                   FASTMLP_GEMM_MC=str(mc), FASTMLP_GEMM_NC=str(nc))
        out = subprocess.run([sys.executable, "-c", PROBE, args.threads], env=env, check=True,
                             capture_output=True, text=True).stdout
        r = json.loads(out)
        rows.append(dict(kc=kc, mc=mc, nc=nc, **r))
        print(f"kc {kc:4d} mc {mc:4d} nc {nc:5d}  " + "  ".join(f"{k} {v:6.1f}" for k, v in r.items()),
              flush=True)
    if args.json:
        fastmlp.core.set_isa(args.isa)
        ctx = dict(context(ROOT), isa=args.isa, threads=int(args.threads))
        with open(args.json, "w") as f:
            json.dump(dict(context=ctx, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
