"""Data-parallel scaling on one machine: 1 rank x 2 threads against 2 ranks x 1 thread.

    python benchmarks/bench_distributed.py [--rounds 5] [--json FILE]

Runs itself under mpiexec (one job per configuration, the two alternated over --rounds so
that the machine's drift touches both), each job timing --steps data-parallel steps of a
784-512-256-10 ReLU network with Adam at global batches 128 and 512 after a warm-up, and
reporting samples/s and the share of the step spent in the allreduce of the gradient buffer;
the 2-rank job also times MPI_Allreduce (sum, in place, float32) against the buffer size.
Prints medians with min-max and writes everything to --json. Needs mpi4py and mpiexec.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

SIZES = [784, 512, 256, 10]


def worker(args):
    from mpi4py import MPI

    import fastmlp
    from fastmlp.distributed import DistributedTrainStep
    from fastmlp.model import MLP
    comm = MPI.COMM_WORLD
    fastmlp.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    n = 8192
    X = rng.random((n, SIZES[0]), dtype=np.float32)
    y = rng.integers(0, SIZES[-1], n).astype(np.int32)
    out = {"ranks": comm.Get_size(), "threads": args.threads, "batches": {}}
    for batch in (128, 512):
        model = MLP(SIZES, random_state=0)
        step = model.train_step("softmax_cross_entropy", batch)
        if comm.Get_size() > 1:
            step = DistributedTrainStep(step, comm)
        order = np.random.default_rng(1).permutation(n)
        starts = list(range(0, n - batch + 1, batch))
        for s in starts[:4]:                       # warm-up
            step.run(X, y, lr=1e-3, index=order[s:s + batch])
        comm.Barrier()
        t_reduce0 = getattr(step, "allreduce_seconds", 0.0)
        t0 = time.perf_counter()
        done = 0
        for k in range(args.steps):
            s = starts[k % len(starts)]
            step.run(X, y, lr=1e-3, index=order[s:s + batch])
            done += batch
        comm.Barrier()
        seconds = time.perf_counter() - t0
        reduce = getattr(step, "allreduce_seconds", 0.0) - t_reduce0
        out["batches"][batch] = {"samples_per_second": done / seconds,
                                 "allreduce_share": reduce / seconds,
                                 "step_ms": 1e3 * seconds / args.steps}
        if comm.Get_size() > 1:
            step.close()
    if comm.Get_size() > 1:
        out["allreduce"] = {}
        for floats in (1 << 10, 1 << 14, 1 << 17, 535818, 1 << 21, 1 << 22):
            buf = np.zeros(floats, np.float32)
            for _ in range(5):
                comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
            reps = max(5, min(200, int(2e7 // floats)))
            comm.Barrier()
            t0 = time.perf_counter()
            for _ in range(reps):
                comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
            out["allreduce"][floats] = (time.perf_counter() - t0) / reps
    if comm.Get_rank() == 0:
        print(json.dumps(out))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--json")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    import fastmlp
    from fastmlp.tools.bench import best_peak, spread as _spread

    def spread(values):         # (median, min, max), the JSON's form
        s = _spread(values)
        return s["median"], s["min"], s["max"]

    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep
                           + os.environ.get("PATH", ""))
    if mpiexec is None:
        raise SystemExit("bench_distributed needs mpiexec: pip install '.[mpi]'")
    configs = [(1, 2), (2, 1)]
    runs = {c: [] for c in configs}
    for _ in range(args.rounds):
        for ranks, threads in configs:
            r = subprocess.run([mpiexec, "-n", str(ranks), sys.executable, __file__, "--worker",
                                "--threads", str(threads), "--steps", str(args.steps)],
                               capture_output=True, text=True, check=True)
            runs[(ranks, threads)].append(json.loads(r.stdout.strip().splitlines()[-1]))
    info = fastmlp.info()
    peak = best_peak(2, 0.3)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=os.path.dirname(os.path.abspath(__file__)),
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    # per sample: forward 2 W, weight gradients 2 W, input gradients 2 W but for layer 0
    weights = [a * b for a, b in zip(SIZES[:-1], SIZES[1:])]
    flop = 6 * sum(weights) - 2 * weights[0]
    print(f"{info['cpu']} ({info.get('cpu_id', '')}), fastmlp {info['version']}, "
          f"{info['isa']}; peak {peak:.0f} GFLOP/s (2 threads); {args.rounds} rounds")
    print(f"{'config':24s} {'batch':>5s} {'samples/s (min-max)':>30s} {'% peak':>7s} "
          f"{'allreduce share':>16s}")
    table = {}
    for (ranks, threads), rs in runs.items():
        for batch in ("128", "512"):
            sps = spread([r["batches"][batch]["samples_per_second"] for r in rs])
            share = spread([r["batches"][batch]["allreduce_share"] for r in rs])
            name = f"{ranks} rank{'s' if ranks > 1 else ''} x {threads} thread" \
                   f"{'s' if threads > 1 else ''}"
            table[f"{name}, batch {batch}"] = {"samples_per_second": sps,
                                               "allreduce_share": share}
            print(f"{name:24s} {batch:>5s} {sps[0]:12,.0f} ({sps[1]:,.0f}-{sps[2]:,.0f}) "
                  f"{100 * sps[0] * flop / 1e9 / peak:6.1f}% "
                  f"{100 * share[0]:7.1f}% ({100 * share[1]:.1f}-{100 * share[2]:.1f})")
    sizes = runs[(2, 1)][0]["allreduce"].keys()
    print("MPI_Allreduce, 2 ranks, in place, float32 sum:")
    allreduce = {}
    for k in sizes:
        t = spread([r["allreduce"][k] for r in runs[(2, 1)]])
        allreduce[k] = t
        print(f"  {int(k):>9,d} floats ({4 * int(k) / 1e6:7.3f} MB): {1e6 * t[0]:9.1f} us "
              f"({1e6 * t[1]:.1f}-{1e6 * t[2]:.1f}), {4 * int(k) / t[0] / 1e9:6.2f} GB/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"context": {"commit": commit, "cpu": info["cpu"],
                                   "cpu_id": info.get("cpu_id"),
                                   "fastmlp": info["version"], "isa": info["isa"],
                                   "peak_gflops_2threads": peak, "rounds": args.rounds,
                                   "steps": args.steps, "network": SIZES},
                       "table": table, "allreduce_seconds": allreduce,
                       "runs": {f"{a}x{b}": v for (a, b), v in runs.items()}}, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
