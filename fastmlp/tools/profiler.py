"""Per-kernel profiler: where the time goes, and how close each kernel runs to the machine.

    with fastmlp.profile() as prof:
        clf.fit(X, y)
    print(prof.table())

Every kernel call inside the block is recorded, whether it comes from a direct call, the model
API or a native training step, from any thread: the C entry points (csrc/dispatch.c) time each
call and add FLOPs and bytes by formula. Off, an entry point costs one atomic load and a branch.

Formulas (per call; M x N the output, K the inner dimension, n an optimizer's element count):
    matmul                 2 M N K flops; bytes of A, B, C (read too when beta != 0), bias, y/z
    bias_activation        M N per arithmetic step (bias add, activation); reads Z, writes Y
    activation_backward    M N; reads dY and y or z, writes dZ
    bias_grad              M N; reads dZ, writes db
    softmax_cross_entropy  4 M N; sigmoid_cross_entropy 8 M N; mse_loss 4 M N
    sgd_update             4 n (6 n with momentum); rmsprop_update 10 n; adam_update 14 n
    matmul +update         a product with the optimizer's step fused (a training step's dW):
                           the product's, plus the update's over its M N elements (flops as
                           above; bytes: the parameter and its state, read and written)
    sparse_matmul          2 nnz N flops (M x N the output, K the sparse matrix's columns, nnz
                           the stored entries of the M rows used); bytes: 8 nnz (indices and
                           data), 8 (M + 1) for indptr, 8 M for rows if given, B (K N), C (M N),
                           bias (N)
    sparse_matmul_tn       2 nnz N flops (K x N the output); the same CSR bytes, D (M N), C (K N)
    Normalization (M x N = H's shape; A = 1 when an activation is fused, else 0). Flops count
    each arithmetic step of the definition once per element: the statistics 4 (mean: add;
    variance: subtract, square, add), normalizing 2 (subtract, multiply), the affine map 2;
    backward the recomputed Hn 2, act' A, the column sums 3 (dbeta add, dgamma multiply-add).
    Bytes count every array read or written once (a LayerNorm row and a BatchNorm column strip
    are re-read from cache between the passes, not from memory):
    layernorm_forward      (8 + A) M N; reads H, gamma, beta, writes Y, mean, rstd (M each)
    layernorm_backward     (13 + A) M N (gh 1, the two row means 3, dH 4); reads dY, H, y if
                           given, gamma, beta, mean, rstd, writes dH, dgamma, dbeta
    batchnorm_forward      training (flag "training"): (8 + A) M N + 6 N with running
                           statistics (read and written); inference: (4 + A) M N, reads them;
                           H, Y, gamma, beta, mean, rstd (N each)
    batchnorm_backward     (9 + A) M N (dH 4); reads dY, H, y if given, gamma, beta, mean, rstd,
                           writes dH, dgamma, dbeta
    clip_grad_norm         2 n (square, add); g read once; clipped: 3 n, g read and written again
% of peak compares GFLOP/s with the FMA peak measured on this machine (fastmlp.measure_peak_gflops)
for the ISA and thread count in use: the best of three measurements, measured again at the end of
a profile in which a kernel ran faster than it (a busy moment lowers a measurement, never raises
it), so that no row shows more than 100% unless the machine was busy at every measurement.
"""
from ..core import _native

_peaks = {}


def best_peak(n_threads=None, seconds=0.2, tries=3):
    """The FMA peak as the best of `tries` measurements: a busy moment only lowers one, so the
    best is the closest to the machine's peak and no kernel should then exceed 100% of it."""
    return max(_native.measure_peak_gflops(seconds, n_threads) for _ in range(tries))


def _peak(threads, again=False):
    """The best peak measured in this process for the active ISA and `threads`; again: measure
    once more (a kernel ran faster than it, so every measurement so far met a busy moment)."""
    key = (_native.get_isa(), threads)
    if key not in _peaks or again:
        _peaks[key] = max(_peaks.get(key, 0.0), best_peak(threads))
    return _peaks[key]


def _describe(r):
    """A short human name for one row: the kernel, its variant and shape; a matmul's path."""
    kernel = r["kernel"]
    if r["m"] < 0:
        return f"{kernel} (other shapes)"
    if kernel == "matmul":
        ta, tb = ("T" if f in r["flags"] else "N" for f in ("trans_a", "trans_b"))
        text = f"matmul {ta}{tb} {r['m']}x{r['n']}x{r['k']}"
        if "bias" in r["flags"]:
            text += " +bias"
        if r["act"]:
            text += f" +{r['act']}"
        if r["grad_act"]:
            text += f" *{r['grad_act']}'"
        if "update" in r["flags"]:
            text += " +update"
        return text + f" [{r['path']}]"
    if kernel in ("sparse_matmul", "sparse_matmul_tn"):
        text = f"{kernel} {r['m']}x{r['n']}x{r['k']}"
        if "bias" in r["flags"]:
            text += " +bias"
        return text + (f" +{r['act']}" if r["act"] else "")
    if kernel in ("bias_activation", "activation_backward"):
        return f"{kernel} {r['act'] or 'identity'} {r['m']}x{r['n']}"
    if kernel in ("layernorm_forward", "layernorm_backward", "batchnorm_forward",
                  "batchnorm_backward"):
        text = f"{kernel} {r['m']}x{r['n']}"
        if "training" in r["flags"]:
            text += " training"
        elif kernel == "batchnorm_forward":
            text += " inference"
        return text + (f" +{r['act']}" if r["act"] else "")
    if kernel in ("sgd_update", "rmsprop_update", "adam_update", "clip_grad_norm"):
        return f"{kernel} n={r['n']}"
    return f"{kernel} {r['m']}x{r['n']}"


class profile:
    """Context manager recording every fastmlp kernel call inside it. Profiles do not nest.

    After the block: `records` (one dict per kernel and shape: calls, seconds, flops, bytes,
    gflops, gbps, percent_of_peak), `table()` and `to_dict()`.
    """

    def __init__(self, peak_gflops=None):
        self.peak_gflops = peak_gflops
        self._measured = peak_gflops is None    # the peak is ours to measure (and re-measure)
        self.records = []
        self.threads = None

    def __enter__(self):
        self.threads = _native.get_num_threads()
        if self.peak_gflops is None:
            self.peak_gflops = _peak(self.threads)
        _native._profile_start()
        return self

    def __exit__(self, *exc):
        rows = _native._profile_stop()
        for r in rows:
            r["name"] = _describe(r)
            s = r["seconds"]
            r["mean_seconds"] = s / r["calls"]
            r["gflops"] = r["flops"] / s * 1e-9 if s > 0 else 0.0
            r["gbps"] = r["bytes"] / s * 1e-9 if s > 0 else 0.0
        if self._measured and any(r["gflops"] > self.peak_gflops for r in rows):
            self.peak_gflops = _peak(self.threads, again=True)
        for r in rows:
            r["percent_of_peak"] = 100.0 * r["gflops"] / self.peak_gflops if self.peak_gflops else 0.0
        self.records = sorted(rows, key=lambda r: -r["seconds"])
        return False

    @property
    def total_seconds(self):
        return sum(r["seconds"] for r in self.records)

    def to_dict(self):
        """Records plus the context they were measured in."""
        return dict(isa=_native.get_isa(), threads=self.threads, peak_gflops=self.peak_gflops,
                    total_seconds=self.total_seconds, records=list(self.records))

    def table(self):
        """A text table, slowest first."""
        total = self.total_seconds or 1.0
        lines = [f"{'kernel':54s} {'calls':>7s} {'total ms':>9s} {'mean us':>9s} {'GFLOP/s':>8s} "
                 f"{'GB/s':>7s} {'%peak':>6s} {'%time':>6s}"]
        for r in self.records:
            lines.append(f"{r['name'][:54]:54s} {r['calls']:7d} {r['seconds'] * 1e3:9.2f} "
                         f"{r['mean_seconds'] * 1e6:9.1f} {r['gflops']:8.1f} {r['gbps']:7.1f} "
                         f"{r['percent_of_peak']:5.1f}% {100 * r['seconds'] / total:5.1f}%")
        lines.append(f"total {self.total_seconds * 1e3:.2f} ms in kernels; peak "
                     f"{self.peak_gflops:.1f} GFLOP/s ({_native.get_isa()}, {self.threads} threads)")
        return "\n".join(lines)
