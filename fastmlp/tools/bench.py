"""Measurements behind `fastmlp info` and `fastmlp bench`: machine context, timing, memory
bandwidth, the kernel cases of an MLP and the speedup chart.

Timings alternate the implementations being compared and keep medians, so drift on a shared
machine hits every side alike (as benchmarks/gemm_report.py does). FLOPs and bytes are not
recomputed here: each case is run once under fastmlp.profile(), whose formulas are the single
definition of a kernel's work.
"""
import os
import platform
import subprocess
import time
from importlib import metadata

import numpy as np
from threadpoolctl import threadpool_info

from .. import core
from .._version import __version__
from ..core import info
from ..core import reference as ref
from .profiler import best_peak, profile

# An MLP the size people train on MNIST, at the batch size of `fastmlp train`.
LAYERS = (784, 512, 256, 10)
BATCH = 128


# ---- context --------------------------------------------------------------------------------


def blas_info():
    """NumPy's BLAS libraries as threadpoolctl sees them, with the kernel architecture in use."""
    return [dict(internal_api=i.get("internal_api"), version=i.get("version"),
                 architecture=i.get("architecture"), num_threads=i.get("num_threads"),
                 library=os.path.basename(i.get("filepath", "")))
            for i in threadpool_info() if i.get("user_api") == "blas"]


def versions():
    """Python's and the versions of the libraries a benchmark compares with (None: absent)."""
    out = {"python": platform.python_version()}
    for name in ("numpy", "scikit-learn", "torch", "jax"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit(repo):
    """The commit checked out in repo, with "-dirty" if tracked files differ from it; None
    when repo is None or not a git checkout."""
    if repo is None:
        return None
    try:
        head = subprocess.run(["git", "-C", os.fspath(repo), "rev-parse", "HEAD"], check=True,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", os.fspath(repo), "diff", "--quiet", "HEAD"],
                               capture_output=True, timeout=10).returncode != 0
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")


def source_checkout():
    """The git checkout fastmlp is imported from (an editable install), else None."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # .../fastmlp
    root = os.path.dirname(root)
    return root if os.path.exists(os.path.join(root, ".git")) else None


def context(repo=None):
    """What a report was measured with, one schema for every benchmark (fastmlp bench and
    benchmarks/*.py): fastmlp's version and path, the git commit of repo (default: the
    checkout fastmlp is imported from, if any), ISA, threads, CPU (name and family / model),
    OpenMP, GEMM blocks, NumPy's BLAS (blas_info), OPENBLAS_CORETYPE, the versions of Python,
    NumPy, scikit-learn, PyTorch and JAX, and the load average."""
    machine = info()
    return dict(fastmlp_version=__version__, fastmlp_path=os.path.dirname(os.path.dirname(core.__file__)),
                git_commit=git_commit(repo if repo is not None else source_checkout()),
                isa=machine["isa"], supported_isas=machine["supported_isas"],
                threads=machine["num_threads"], cpu=machine["cpu"], cpu_id=machine["cpu_id"],
                openmp=machine["openmp"], gemm_blocks=machine["gemm_blocks"], blas=blas_info(),
                openblas_coretype=os.environ.get("OPENBLAS_CORETYPE"), versions=versions(),
                load_average=list(os.getloadavg()))


def coretype_warning():
    """A warning line if OPENBLAS_CORETYPE forces NumPy's BLAS kernel, else None: comparisons
    against NumPy are only fair with OpenBLAS choosing its own kernel."""
    forced = os.environ.get("OPENBLAS_CORETYPE")
    if forced:
        return (f"warning: OPENBLAS_CORETYPE={forced} forces NumPy's BLAS kernel; compare with "
                "it unset (env -u OPENBLAS_CORETYPE)")
    return None


def threads_text(n):
    return f"{n} thread{'s' if n != 1 else ''}"


# ---- timing ---------------------------------------------------------------------------------


def _seconds_per_call(fn, number):
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - t0) / number


def compare(fns, target_seconds, repeats):
    """Median seconds per call of each function in fns (name -> callable). Each timing runs a
    function for about target_seconds; the functions take turns, repeats rounds."""
    numbers = {}
    for name, fn in fns.items():
        fn()    # warm up: first-touch page faults, GEMM scratch, BLAS thread start
        numbers[name] = max(1, int(target_seconds / max(_seconds_per_call(fn, 1), 1e-7)))
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            # OpenBLAS's threads busy-wait for tens of ms after a call (libgomp's for less) and
            # would take a core from whichever function ran next: let them go to sleep first.
            time.sleep(0.15)
            times[name].append(_seconds_per_call(fn, numbers[name]))
    return {name: spread(t) for name, t in times.items()}


NOISY = 1.25    # a case whose slowest repeat is this much slower than its fastest is flagged


def spread(values):
    """{"median", "min", "max"} of a list of timings (or rates)."""
    v = sorted(float(x) for x in values)
    return {"median": float(np.median(v)), "min": v[0], "max": v[-1]}


def busy_warning(peaks):
    """A warning when the peak on several threads is below 1.5x the one-thread peak (peaks:
    {threads: GFLOP/s}): the other cores are busy, and every speed measured now is low."""
    one = peaks.get(1) or peaks.get("1")
    for n, gf in peaks.items():
        if int(n) > 1 and one and gf < 1.5 * one:
            return (f"WARNING: the {n}-thread peak ({gf:.0f} GFLOP/s) is below 1.5x the 1-thread "
                    f"peak ({one:.0f}): the machine is busy, so these numbers are low and noisy")
    return None


def memory_bandwidth_gbps(mib=256, repeats=3):
    """Streaming bandwidth: an identity bias_activation copies a float32 array of `mib` MiB to
    another (4 bytes read + 4 written per element), best of `repeats`."""
    z = np.ones(mib * (1 << 20) // 4, np.float32).reshape(-1, 1 << 16)
    y = np.empty_like(z)
    core.bias_activation(z, activation="identity", out=y)   # fault the pages in
    best = min(_seconds_per_call(lambda: core.bias_activation(z, activation="identity",
                                                                  out=y), 1)
               for _ in range(repeats))
    return 8 * z.size / best * 1e-9


# ---- cases ----------------------------------------------------------------------------------


class Case:
    """One benchmark line: fastmlp's call, the NumPy reference's, and NumPy's BLAS for the bare
    product of a matmul (None for other kernels)."""

    def __init__(self, name, group, ours, reference, blas=None):
        self.name, self.group = name, group
        self.ours, self.reference, self.blas = ours, reference, blas


def _matmul_cases(rng):
    """Every product of a forward and backward pass of LAYERS at BATCH, fused as training runs
    them: forward relu(XW + b), weight gradients X^T D, input gradients (D W^T) * relu'(Y)."""
    cases = []
    n_layers = len(LAYERS) - 1
    for l, (n_in, n_out) in enumerate(zip(LAYERS[:-1], LAYERS[1:])):
        x = rng.random((BATCH, n_in), np.float32)
        w = rng.standard_normal((n_in, n_out), np.float32) * 0.05
        b = rng.standard_normal(n_out, np.float32)
        d = rng.standard_normal((BATCH, n_out), np.float32)
        act = "relu" if l < n_layers - 1 else None
        fwd = dict(bias=b, activation=act)
        cases.append(Case(f"matmul fwd {BATCH}x{n_in}x{n_out} +bias{'+relu' if act else ''}",
                          "matmul", _bind(core.matmul, x, w, **fwd),
                          _bind(ref.matmul, x, w, **fwd), _blas(x, w)))
        cases.append(Case(f"matmul dW {n_in}x{n_out} (K={BATCH})", "matmul",
                          _bind(core.matmul, x, d, trans_a=True),
                          _bind(ref.matmul, x, d, trans_a=True), _blas(x.T, d)))
        if l > 0:
            y = np.maximum(rng.standard_normal((BATCH, n_in), np.float32), 0)
            bwd = dict(trans_b=True, grad_activation="relu", y=y)
            cases.append(Case(f"matmul dX {BATCH}x{n_out}->{n_in} *relu'", "matmul",
                              _bind(core.matmul, d, w, **bwd), _bind(ref.matmul, d, w, **bwd),
                              _blas(d, w.T)))
    return cases


def _bind(fn, *args, **kwargs):
    return lambda: fn(*args, **kwargs)


def _blas(a, b):
    """NumPy's BLAS on the bare product a @ b into a preallocated output."""
    out = np.empty((a.shape[0], b.shape[1]), np.float32)
    return lambda: np.matmul(a, b, out=out)


def _elementwise_cases(rng):
    """The non-GEMM kernels at the sizes one training step of LAYERS meets."""
    m, n, classes = BATCH, LAYERS[1], LAYERS[-1]
    z = rng.standard_normal((m, n), np.float32)
    b = rng.standard_normal(n, np.float32)
    y = np.maximum(z, 0)
    logits = rng.standard_normal((m, classes), np.float32)
    labels = rng.integers(0, classes, m).astype(np.int32)
    targets = (rng.random((m, classes)) < 0.5).astype(np.float32)
    cases = [
        Case(f"bias_activation relu {m}x{n}", "elementwise",
             *(_bind(k.bias_activation, z, b, "relu") for k in (core, ref))),
        Case(f"bias_activation gelu {m}x{n}", "elementwise",
             *(_bind(k.bias_activation, z, b, "gelu") for k in (core, ref))),
        Case(f"activation_backward relu {m}x{n}", "elementwise",
             *(_bind(k.activation_backward, z, "relu", y=y) for k in (core, ref))),
        Case(f"bias_grad {m}x{n}", "elementwise", *(_bind(k.bias_grad, z) for k in (core, ref))),
        Case(f"softmax_cross_entropy {m}x{classes}", "loss",
             *(_bind(k.softmax_cross_entropy, logits, labels) for k in (core, ref))),
        Case(f"sigmoid_cross_entropy {m}x{classes}", "loss",
             *(_bind(k.sigmoid_cross_entropy, logits, targets) for k in (core, ref))),
        Case(f"mse_loss {m}x{classes}", "loss",
             *(_bind(k.mse_loss, logits, targets) for k in (core, ref))),
    ]
    size = LAYERS[0] * LAYERS[1]
    for name, make in [("sgd_update momentum", _sgd), ("rmsprop_update", _rmsprop),
                       ("adam_update", _adam)]:
        # separate state per side: the updates run in place
        cases.append(Case(f"{name} n={size}", "optimizer", make(core, rng, size),
                          make(ref, rng, size)))
    return cases


def _sgd(k, rng, n):
    p, g, vel = rng.standard_normal(n, np.float32), rng.standard_normal(n, np.float32), \
        np.zeros(n, np.float32)
    return lambda: k.sgd_update(p, g, lr=1e-6, momentum=0.9, velocity=vel)


def _rmsprop(k, rng, n):
    p, g, sq = rng.standard_normal(n, np.float32), rng.standard_normal(n, np.float32), \
        np.zeros(n, np.float32)
    return lambda: k.rmsprop_update(p, g, sq, lr=1e-6)


def _adam(k, rng, n):
    p, g = rng.standard_normal(n, np.float32), rng.standard_normal(n, np.float32)
    m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    return lambda: k.adam_update(p, g, m, v, step=1, lr=1e-6)


def _train_step_case(rng, norm=None, fuse_update=True):
    """One Adam training step of LAYERS (relu, softmax) on a batch, with LayerNorm before each
    hidden relu if norm == "layer": fastmlp's native TrainStep against the same step written
    with the NumPy reference kernels. fuse_update=False: the weights' Adam step as a pass of its
    own after backward instead of inside the weight gradients' products (what the fusion saves:
    this case against the default one)."""
    x = rng.random((BATCH, LAYERS[0]), np.float32)
    labels = rng.integers(0, LAYERS[-1], BATCH).astype(np.int32)
    n_hidden = len(LAYERS) - 2

    def params():
        out = []
        for n_in, n_out in zip(LAYERS[:-1], LAYERS[1:]):
            out += [rng.standard_normal((n_in, n_out), np.float32) * np.float32(
                np.sqrt(2 / n_in)), np.zeros(n_out, np.float32)]
        if norm:
            for n in LAYERS[1:-1]:
                out += [np.ones(n, np.float32), np.zeros(n, np.float32)]
        return out

    step = core.TrainStep(core.flat_params(params()), ["relu"] * n_hidden,
                          "softmax_cross_entropy", BATCH, normalization=norm,
                          fuse_update=fuse_update)
    ref_params = params()
    ref_state = [(np.zeros_like(p), np.zeros_like(p)) for p in ref_params]
    L = len(LAYERS) - 1

    def reference_step():
        acts, saved = [x], []
        for l in range(L):
            W, b = ref_params[2 * l], ref_params[2 * l + 1]
            if norm and l < n_hidden:
                g, be = ref_params[2 * L + 2 * l], ref_params[2 * L + 2 * l + 1]
                h = ref.matmul(acts[-1], W, bias=b)
                y, mu, r = ref.layernorm_forward(h, g, be, activation="relu")
                saved.append((h, mu, r))
                acts.append(y)
            else:
                acts.append(ref.matmul(acts[-1], W, bias=b,
                                       activation="relu" if l < n_hidden else None))
        _, d = ref.softmax_cross_entropy(acts[-1], labels)
        grads = [None] * len(ref_params)
        for l in range(L - 1, -1, -1):
            grads[2 * l], grads[2 * l + 1] = ref.matmul(acts[l], d, trans_a=True), \
                ref.bias_grad(d)
            if l > 0 and norm:
                h, mu, r = saved[l - 1]
                j = 2 * L + 2 * (l - 1)
                d = ref.matmul(d, ref_params[2 * l], trans_b=True)
                d, grads[j], grads[j + 1] = ref.layernorm_backward(
                    d, h, ref_params[j], ref_params[j + 1], mu, r, activation="relu",
                    y=acts[l])
            elif l > 0:
                d = ref.matmul(d, ref_params[2 * l], trans_b=True, grad_activation="relu",
                               y=acts[l])
        for p, g, (m, v) in zip(ref_params, grads, ref_state):
            ref.adam_update(p, g, m, v, step=1, lr=1e-6)

    name = (f"train step {'-'.join(map(str, LAYERS))} batch {BATCH} adam"
            f"{' layernorm' if norm else ''}{'' if fuse_update else ', update unfused'}")
    return Case(name, "train step", lambda: step.run(x, labels, lr=1e-6), reference_step)


# The normalization cases' shape: a hidden layer of 512 units at a batch of 256.
NORM_SHAPE = (256, 512)


def _norm_pass(k, kind, fused, h, gamma, beta, dy, bufs, **fwd_kw):
    """One forward and backward of a normalization followed by relu, with the kernels (or
    twins) of k: fused (one call each way, act=relu) or unfused (the norm alone, then
    bias_activation relu; backward activation_backward relu, then the norm's backward). The
    outputs go to preallocated buffers on both sides."""
    forward, backward = getattr(k, f"{kind}_forward"), getattr(k, f"{kind}_backward")
    y, z, dz, dh = bufs

    def run():
        if fused:
            _, mean, rstd = forward(h, gamma, beta, activation="relu", out=y, **fwd_kw)
            backward(dy, h, gamma, beta, mean, rstd, activation="relu", y=y, out=dh)
        else:
            _, mean, rstd = forward(h, gamma, beta, out=z, **fwd_kw)
            k.bias_activation(z, None, "relu", out=y)
            k.activation_backward(dy, "relu", y=y, out=dz)
            backward(dz, h, gamma, beta, mean, rstd, out=dh)
    return run


def _norm_cases(rng):
    """LayerNorm and BatchNorm (training, running statistics) with relu, forward + backward,
    fused into the norm's kernels against the unfused sequence of four kernels, both against the
    NumPy reference: the fused pair saves the pre-activation's write and two reads of the
    intermediate arrays."""
    m, n = NORM_SHAPE
    h = rng.standard_normal((m, n), np.float32) * 2 + 1
    gamma = rng.uniform(0.5, 1.5, n).astype(np.float32)
    beta = rng.standard_normal(n, np.float32)
    dy = rng.standard_normal((m, n), np.float32)
    cases = []
    for kind in ("layernorm", "batchnorm"):
        for fused in (True, False):
            sides = []
            for k in (core, ref):
                bufs = [np.empty((m, n), np.float32) for _ in range(4)]
                kw = {}
                if kind == "batchnorm":   # separate running statistics per side
                    kw = dict(running_mean=np.zeros(n, np.float32),
                              running_var=np.ones(n, np.float32))
                sides.append(_norm_pass(k, kind, fused, h, gamma, beta, dy, bufs, **kw))
            name = f"{kind}+relu fwd+bwd {m}x{n} {'fused' if fused else 'unfused'}"
            cases.append(Case(name, "normalization", *sides))
    g = rng.standard_normal(LAYERS[0] * LAYERS[1], np.float32)
    cases.append(Case(f"clip_grad_norm n={g.size}", "optimizer",
                      *(_bind(k.clip_grad_norm, g, 0.0) for k in (core, ref))))
    return cases


def cases(rng):
    """Every benchmark case: products, elementwise kernels, losses, optimizers, normalization
    (fused and unfused with relu), a train step without and with LayerNorm, and with its
    optimizer step unfused."""
    return (_matmul_cases(rng) + _elementwise_cases(rng) + _norm_cases(rng)
            + [_train_step_case(rng), _train_step_case(rng, fuse_update=False),
               _train_step_case(rng, "layer")])


# ---- running --------------------------------------------------------------------------------


def work(fn, peak):
    """(flops, bytes) of one call of fn, by the profiler's formulas."""
    with profile(peak_gflops=peak) as prof:
        fn()
    return (sum(r["flops"] for r in prof.records), sum(r["bytes"] for r in prof.records))


def measure(case, peak, target_seconds, repeats):
    """One result record for a case (see `fastmlp bench --help` for the fields)."""
    fns = dict(fastmlp=case.ours, reference=case.reference)
    if case.blas is not None:
        fns["blas"] = case.blas
    spreads = compare(fns, target_seconds, repeats)
    t = {name: sp["median"] for name, sp in spreads.items()}
    flops, nbytes = work(case.ours, peak)
    ours = t["fastmlp"]
    return dict(name=case.name, group=case.group, flops=flops, bytes=nbytes,
                fastmlp_seconds=ours, reference_seconds=t["reference"],
                blas_seconds=t.get("blas"), gflops=flops / ours * 1e-9,
                gbps=nbytes / ours * 1e-9, percent_of_peak=100 * flops / ours * 1e-9 / peak,
                speedup_vs_reference=t["reference"] / ours,
                speedup_vs_blas=t["blas"] / ours if "blas" in t else None,
                fastmlp_seconds_min=spreads["fastmlp"]["min"],
                fastmlp_seconds_max=spreads["fastmlp"]["max"],
                noisy=spreads["fastmlp"]["max"] > NOISY * spreads["fastmlp"]["min"])


# ---- chart ----------------------------------------------------------------------------------


def require_matplotlib():
    """matplotlib, or a SystemExit saying how to install it (it is an optional extra)."""
    try:
        import matplotlib   # optional dependency: imported lazily, on purpose
    except ImportError:
        raise SystemExit("fastmlp bench --plot needs matplotlib: pip install 'fastmlp[plot]' "
                         "(or pip install matplotlib)") from None
    return matplotlib


def plot(results, ctx, path):
    """Horizontal bars of each case's speedup over the NumPy reference, log scale, to path."""
    matplotlib = require_matplotlib()
    matplotlib.use("Agg")    # files only: no display needed
    import matplotlib.pyplot as plt   # optional dependency: imported lazily, on purpose

    names = [r["name"] for r in results][::-1]     # first case at the top
    speedups = [r["speedup_vs_reference"] for r in results][::-1]
    colours = {"matmul": "tab:blue", "elementwise": "tab:orange", "loss": "tab:green",
               "optimizer": "tab:purple", "normalization": "tab:brown",
               "train step": "tab:red"}
    fig, ax = plt.subplots(figsize=(10, 0.38 * len(names) + 1.6))
    bars = ax.barh(names, speedups, color=[colours.get(r["group"], "grey")
                                           for r in results][::-1])
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda x, _: f"{x:g}x"))
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=c, label=g)
                       for g, c in colours.items() if any(r["group"] == g for r in results)],
              loc="best", fontsize=8)  # "best" keeps it off the bars and their labels
    ax.axvline(1.0, color="black", linewidth=0.8)
    for bar, s in zip(bars, speedups):
        ax.annotate(f"{s:.1f}x", (bar.get_width(), bar.get_y() + bar.get_height() / 2),
                    xytext=(4, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_xlim(min(0.5, min(speedups) / 1.5), max(speedups) * 2.5)
    ax.set_xlabel("speedup over the NumPy reference (fastmlp.reference), log scale")
    ax.set_title(f"fastmlp {ctx['fastmlp_version']} on {ctx['cpu']}\n"
                 f"{ctx['isa']}, {threads_text(ctx['threads'])}", fontsize=10)
    ax.tick_params(axis="y", labelsize=8)
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
