# The training step of a dense MLP in native code, in three phases: forward (with the loss),
# backward (every gradient into one flat buffer), update (the optimizer over the flat buffers).
# Included into _native.pyx so it calls the fm_* kernels directly; its class is declared in
# _native.pxd, where other Cython modules find the phases.
#
# Design notes:
# f) Every buffer is allocated once, in __init__, for the largest batch; a smaller batch uses the
#    first rows. Each phase holds the GIL only to validate its arguments (_validate); the work
#    itself (_load, _forward, _backward, _update) is native code that allocates nothing and
#    touches no Python object, callable without the GIL from Cython (_native.pxd). run() is the
#    three phases in one `with nogil:` block.
# g) Parameters live in one flat float32 buffer owned by the caller, gradients in one owned by
#    the step, both laid out [W0, W1, ..., W_{L-1}, b0, b1, ..., b_{L-1}] (flat_params); the
#    per-layer arrays are views into them. Weights first: the L2 penalty covers one contiguous
#    segment, so an update is one optimizer call over the whole buffer (two with L2), and a
#    data-parallel step reduces one buffer. The optimizer state is flat in the same layout.
# h) Sample weights are renormalised per batch to sum to the batch size: the kernels' mean over M
#    then equals scikit-learn's weighted average (sum_i w_i l_i / sum_i w_i). The L2 term is, as
#    in scikit-learn, alpha / (2 sum w) ||W||^2 with the batch's own (unnormalised) sum of weights.
#    It is part of forward's loss, and its gradient alpha / (sum w) W is added by update (in the
#    optimizer kernel's pass, g' = g + l2 p): flat_grads hold the data loss's gradient only.
# i) Dropout masks come from a counter-based hash of (seed, step, layer, element), with the key
#    of _dropout_key, so they do not depend on the thread count nor on any RNG state: a step is a
#    pure function of its inputs.
# j) A non-finite loss raises FloatingPointError at forward: nothing is updated and backward and
#    update refuse to run until the next forward. With nonfinite="continue" (scikit-learn's
#    behaviour, for its early stopping) the step goes on and returns the loss: the parameters
#    take whatever the gradient holds, NaN included.
# l) X may be a SciPy sparse matrix (CSR or CSC; csr_arrays): the first layer's products are then
#    the sparse kernels (fm_sparse_matmul forward, fm_sparse_matmul_tn for dW0), which read the
#    batch's rows through the index in place (no gather, no dense copy of X).
# k) loss_and_grad (full-batch solvers) runs forward and backward over the data in chunks of
#    max_batch rows and sums chunk c's data gradient times its weight W_c (its row count, or its
#    sum of sample weights) into a float64 buffer, then divides by the total W and adds the L2
#    term alpha / W * W_l: the gradient of sum_i w_i l_i / W + alpha / (2 W) ||W||^2, exactly
#    the objective of a batch holding all the data. The chunks depend on max_batch only, so the
#    result is the same at any thread count.
# m) Normalization (normalization="layer" | "batch" per hidden layer): Linear -> norm ->
#    activation -> dropout. The GEMM writes H = A W + b (bias kept, as PyTorch's Linear before a
#    norm keeps it), the norm kernel writes Y = act(gamma Hn + beta) in the same pass as the
#    normalization (fused, fastmlp.h), and keeps mean and rstd. Backward: the next layer's
#    GEMM writes dY (no activation epilogue), dropout's mask, then the norm's backward turns dY
#    into dH in place (act' recomputed inside) with dgamma and dbeta. gamma and beta are extra
#    entries of the flat parameter buffer after the biases [..., gamma_l, beta_l, ...] (note g),
#    so every optimizer trains them in its one pass; they get neither the L2 penalty nor AdamW's
#    decay unless norm_decay=True. BatchNorm's running mean and variance (PyTorch's momentum
#    convention) are state, not parameters: arrays of the caller (running_stats) that forward
#    updates in place. loss_and_grad refuses BatchNorm (a full-batch objective would depend on
#    how the data are cut into chunks).
# n) clip_grad_norm > 0: update first scales flat_grads (the data loss's gradient, before the
#    L2 term: as torch.nn.utils.clip_grad_norm_ before an optimizer's weight_decay) to that
#    global norm if it is larger (fm_clip_grad_norm: one deterministic pass for the norm, one to
#    scale); grad_norm is the norm before clipping (NaN until measured). measure_grad_norm=True
#    measures it on every update without clipping (diagnostics).
# o) Data parallelism (fastmlp.distributed): forward(..., total_weight=W, row_offset=r0) makes the
#    batch a shard of a larger one of total weight W (its row count, or its sum of sample
#    weights) whose rows r0, r0 + 1, ... it holds. The loss's gradient w.r.t. the output is
#    scaled by W_s / W (W_s: the shard's own weight) before backward, which is linear in it, so
#    flat_grads hold the shard's share of the whole batch's gradient and a sum over the shards
#    (one allreduce of reduce_buffer) is that gradient, with no pass over the buffer before or
#    after. forward returns the shard's share of the data loss (the L2 term, alpha / (2 W)
#    ||W||^2, is in penalty: the same on every shard), update uses alpha / W, and dropout keys
#    element (r0 + r, c) so masks do not depend on how the batch is cut. A shard may be empty
#    (zero gradient). reduce_buffer is flat_grads followed by REDUCE_TAIL float32 slots the
#    caller fills (the loss share, status flags) so that they travel in the same allreduce.
# p) run() with fuse_update ("auto", the default, or True) steps each layer's W inside the
#    product that makes its gradient, dW = A^T D (an update epilogue, fastmlp.h): the gradient is
#    still stored, and the optimizer reads each finished block of it back from L1/L2 instead of
#    a second pass over flat_grads. Backward computes
#    a layer's D W^T before its dW, so the product that needs W reads it before it changes; then
#    update steps whatever was not stepped yet (biases, norms, a sparse first layer's W). The
#    bits are those of the three phases (the optimizer's arithmetic is one source,
#    csrc/optim_impl.h; tests/model/test_train_step.py compares them). Not fused where something
#    must see every gradient before any parameter moves (gradient clipping or its measurement,
#    the phases called one by one: data parallelism's allreduce sits between them), nor, with
#    "auto", above batch FUSE_AUTO_MAX_BATCH, which depends on the CPU (below; True fuses at
#    any batch, False never).
# A TrainStep is not meant to be run from two Python threads at once (the buffers are shared).

from libc.stdint cimport uint64_t
from libc.string cimport memcpy, memset
from libc.math cimport isfinite, NAN
from libc.stdlib cimport calloc, free

# TrainStep's vocabulary is the kernels': a loss is the kernel that computes it, an optimizer is
# named after its update kernel.
cdef tuple _LOSS_KERNELS = (FM_K_SOFTMAX_CROSS_ENTROPY, FM_K_SIGMOID_CROSS_ENTROPY, FM_K_MSE_LOSS,
                            FM_K_POISSON_LOSS)
cdef tuple _UPDATE_KERNELS = (FM_K_SGD_UPDATE, FM_K_RMSPROP_UPDATE, FM_K_ADAM_UPDATE)
# The largest batch whose run() fuses the update with fuse_update="auto" (note p), by CPU maker
# (benchmarks/results/fused_update.md): on an Intel Xeon (family 6 model 167) fusing measured
# 1.02-1.09x up to batch 256 and slower above; on an AMD Zen 4 (family 25 model 17) slower at
# every batch (the unfused step 1.04-1.11x at 32-256, 1.01x at 512), so "auto" fuses only on
# Intel. Elsewhere it does not fuse: unmeasured, and the unfused phases are the reference.
FUSE_AUTO_MAX_BATCH = 256 if fm_cpu_vendor() == FM_VENDOR_INTEL else 0
cdef Py_ssize_t _fuse_max_batch = FUSE_AUTO_MAX_BATCH
LOSSES = tuple(KERNELS[k] for k in _LOSS_KERNELS)
OPTIMIZERS = tuple(KERNELS[k].removesuffix("_update") for k in _UPDATE_KERNELS)

cdef enum:                   # TrainStep.phase: how far the current batch has gone
    _PHASE_NONE = 0          # no batch, or its update is done
    _PHASE_FORWARD = 1
    _PHASE_BACKWARD = 2

REDUCE_TAIL = 4     # note o: slots after flat_grads in reduce_buffer

cdef enum:
    _STATUS_ZERO_WEIGHT = 1  # _loss_and_grad: the sample weights sum to zero
    _STATUS_BAD_SPARSE = 2   # a sparse kernel refused X's rows (indptr, indices)


cdef inline uint64_t _splitmix64(uint64_t z) noexcept nogil:
    z += <uint64_t>0x9E3779B97F4A7C15ULL
    z = (z ^ (z >> 30)) * <uint64_t>0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * <uint64_t>0x94D049BB133111EBULL
    return z ^ (z >> 31)


cdef inline uint64_t _dropout_key(uint64_t seed, uint64_t step, uint64_t layer) noexcept nogil:
    """The key of hidden layer `layer`'s dropout mask at `step` (updates done before it)."""
    return _splitmix64(_splitmix64(seed) ^ ((step << 16) | layer))


cdef void _dropout_forward(ptrdiff_t n, const float *y, float *mask, float *out, uint64_t keep,
                           float scale, uint64_t key) noexcept nogil:
    """mask[i] = scale if hash(key, i) keeps element i else 0; out = y * mask. y, mask, out: [n]."""
    cdef ptrdiff_t i
    for i in range(n):
        mask[i] = scale if (_splitmix64(key + <uint64_t>i) >> 40) < keep else 0.0
        out[i] = y[i] * mask[i]


cdef enum:
    _GATHER_ROWS = 16    # rows a gather task copies


cdef struct _Gather:     # _load's gather of a batch's rows (one task: _GATHER_ROWS of them)
    const _Input *inp
    float *xb
    void *yb
    float *wb
    ptrdiff_t n_in, n_out
    bint labels


cdef void _gather_task(void *ctx, ptrdiff_t task, int slot) noexcept nogil:
    cdef const _Gather *g = <const _Gather *>ctx
    cdef const _Input *inp = g.inp
    cdef ptrdiff_t r, n_in = g.n_in, n_out = g.n_out
    cdef ptrdiff_t hi = min((task + 1) * _GATHER_ROWS, inp.M)
    for r in range(task * _GATHER_ROWS, hi):
        if inp.X != NULL:
            memcpy(&g.xb[r * n_in], inp.X + inp.idx[r] * n_in, n_in * sizeof(float))
        if g.labels:
            (<int32_t *>g.yb)[r] = (<const int32_t *>inp.y)[inp.idx[r]]
        else:
            memcpy(<float *>g.yb + r * n_out, <const float *>inp.y + inp.idx[r] * n_out,
                   n_out * sizeof(float))
        if g.wb != NULL and inp.w != NULL:
            g.wb[r] = inp.w[inp.idx[r]]


cdef void _mul_inplace(ptrdiff_t n, float *x, const float *m) noexcept nogil:
    cdef ptrdiff_t i
    for i in range(n):
        x[i] = x[i] * m[i]


cdef void _scale(ptrdiff_t n, float *x, float s) noexcept nogil:
    cdef ptrdiff_t i
    for i in range(n):
        x[i] = x[i] * s


cdef double _sum_squares(ptrdiff_t n, const float *x) noexcept nogil:
    """sum x^2 in double, eight independent accumulators (fixed order: deterministic) so the sum
    is not bound by the latency of one chain of adds."""
    cdef double acc[8]
    cdef ptrdiff_t i, j
    for j in range(8):
        acc[j] = 0
    i = 0
    while i + 8 <= n:
        for j in range(8):
            acc[j] += <double>x[i + j] * x[i + j]
        i += 8
    while i < n:
        acc[0] += <double>x[i] * x[i]
        i += 1
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))


# ---- the flat layout (note g) --------------------------------------------------------------------


def _n_layers(shapes):
    """L: the leading (2-D weight, 1-D bias) pairs of [W0, b0, W1, b1, ..., extra...]; what
    follows them (normalization parameters, 1-D) is extra."""
    L = 0
    while 2 * L + 1 < len(shapes) and len(shapes[2 * L]) == 2 and len(shapes[2 * L + 1]) == 1:
        L += 1
    return L


def _flat_offsets(list shapes):
    """Element offsets of [W0, b0, W1, b1, ..., extra...] in the layout [W0, ..., W_{L-1}, b0, ...,
    b_{L-1}, extra...] (note g), and the total size."""
    sizes = [int(np.prod(s)) for s in shapes]
    L = _n_layers(shapes)
    order = list(range(0, 2 * L, 2)) + list(range(1, 2 * L, 2)) + list(range(2 * L, len(shapes)))
    offsets, total = [0] * len(shapes), 0
    for i in order:
        offsets[i] = total
        total += sizes[i]
    return offsets, total


def flat_params(params):
    """Copy params [W0, b0, W1, b1, ...] (arrays of any float dtype) into one new flat float32
    buffer laid out [W0, W1, ..., b0, b1, ...] (weights first); return the list of views into it,
    in the order given. The buffer is views[0].base (see flat_buffer). 1-D arrays after the
    layers' pairs (a normalized network's gamma0, beta0, gamma1, beta1, ...) follow the biases,
    in order."""
    params = _param_list(params)
    arrays = []
    for i, p in enumerate(params):
        try:
            arrays.append(np.asarray(p, dtype=np.float32))
        except (TypeError, ValueError) as e:
            raise TypeError(f"params[{i}] must be an array of numbers: {e}") from None
    offsets, total = _flat_offsets([a.shape for a in arrays])
    flat = np.empty(total, np.float32)
    views = []
    for a, o in zip(arrays, offsets):
        v = flat[o:o + a.size].reshape(a.shape)
        v[...] = a
        views.append(v)
    return views


def _param_list(params):
    """params as a list [W0, b0, W1, b1, ...], or an error naming params."""
    if isinstance(params, (str, bytes, np.ndarray)) or not hasattr(params, "__iter__"):
        raise TypeError(f"params must be a list [W0, b0, W1, b1, ...] of arrays, got "
                        f"{type(params).__name__}")
    params = list(params)
    if len(params) < 2 or len(params) % 2:
        raise ValueError(f"params must be [W0, b0, W1, b1, ...]: a weight and a bias per layer, "
                         f"got {len(params)} arrays")
    return params


def flat_buffer(params):
    """The flat buffer params are views of, if they are laid out as flat_params lays them out
    (each a C-contiguous writable float32 view at its offset of one 1-D float32 array); else
    None."""
    try:
        params = list(params)
    except TypeError:
        return None
    if len(params) < 2 or len(params) % 2 or not all(isinstance(p, np.ndarray) for p in params):
        return None
    flat = params[0].base
    if not (isinstance(flat, np.ndarray) and flat.ndim == 1 and flat.dtype == np.float32
            and flat.flags.c_contiguous and flat.flags.writeable):
        return None
    offsets, total = _flat_offsets([p.shape for p in params])
    if flat.size != total:
        return None
    cdef uintptr_t base = <uintptr_t>cnp.PyArray_DATA(<cnp.ndarray>flat)
    for p, o in zip(params, offsets):
        if (p.base is not flat or p.dtype != np.float32 or not p.flags.c_contiguous
                or <uintptr_t>cnp.PyArray_DATA(<cnp.ndarray>p) != base + 4 * <uintptr_t>o):
            return None
    return flat


cdef float *_data(object a):
    return <float *>cnp.PyArray_DATA(<cnp.ndarray>a)


cdef class TrainStep:
    """One minibatch training step of a dense MLP, in native code, in phases.

    TrainStep(params, activations, loss, max_batch, *, optimizer="adam", momentum=0.9,
              nesterov=False, beta1=0.9, beta2=0.999, rho=0.9, eps=1e-8, weight_decay=0.0,
              alpha=0.0, dropout=None, seed=0)

    params: [W0, b0, W1, b1, ...], W_l (n_l, n_{l+1}), b_l (n_{l+1},): views of one flat
        float32 buffer as flat_params makes them (note g); updated in place by update().
    activations: one name per hidden layer (ACTIVATIONS); the output layer is identity (the loss
        applies softmax / sigmoid).
    loss: "softmax_cross_entropy" (integer labels), "sigmoid_cross_entropy" (binary /
        multi-label targets), "mse_loss" or "poisson_loss" (log link: the output layer's value is
        the log of the predicted mean) (LOSSES: the kernels that compute them).
    max_batch: the largest batch accepted; buffers are sized for it.
    optimizer: "sgd" (momentum, nesterov: scikit-learn's form), "rmsprop" (rho, eps) or "adam"
        (beta1, beta2, eps; weight_decay > 0 makes it AdamW) (OPTIMIZERS).
    alpha: L2 penalty, scikit-learn's semantics: loss += alpha / (2 M) sum ||W||^2 and
        dW += alpha / M W for a batch of M rows (weights only, not biases); with sample weights,
        M is the batch's sum of weights (note h).
    dropout: None or one rate in [0, 1) per hidden layer (inverted dropout on its output).
    seed: dropout's seed.
    nonfinite: "raise" (a non-finite loss raises FloatingPointError and updates nothing) or
        "continue" (the step goes on; forward and run return the loss) (note j).
    per_output_grad: with "mse_loss" and several outputs, step with scikit-learn's gradient:
        each output's half mean squared error differentiated on its own, n_outputs times the
        gradient of the reported loss (their mean). False (the default): the loss's own gradient.
    normalization: None, "layer" or "batch" (every hidden layer), or one of them per hidden
        layer (note m). params then end with gamma_l, beta_l (n_out,) of each normalized layer.
    norm_eps, norm_momentum: the norms' eps and BatchNorm's running-statistics momentum
        (PyTorch's convention: running = (1 - m) running + m batch).
    running_stats: None (zeros and ones, owned by the step) or [mean_l, var_l, ...] float32
        (n_out,) arrays of each batch-normalized layer, updated in place by forward.
    norm_decay: gamma and beta get the L2 penalty and AdamW's decay too (default False).
    clip_grad_norm: 0 (off) or the largest global norm of flat_grads an update uses (note n).
    measure_grad_norm: measure grad_norm on every update without clipping.
    fuse_update: "auto" (the default: up to batch FUSE_AUTO_MAX_BATCH, 256 on Intel CPUs and 0,
        never, on others, where fusing measured slower), True or False: whether run() steps each
        weight matrix in the product that makes its gradient (note p; the same bits as the
        phases one by one) or runs the three phases as they are.

    Phases: forward(X, y, sample_weight, index=, total_weight=, row_offset=) -> loss (with
    total_weight: a shard of a larger batch, note o); backward() fills flat_grads;
    update(lr) steps the optimizer. run(...) is the three in one native call.
    loss_and_grad(X, y, sample_weight) is the loss and gradient over all of X, for full-batch
    solvers (note k).

    Attributes: t (the number of updates done; Adam's step), params and grads (views of
    flat_params and flat_grads, in the order of params), n_params, n_weights (the weights come
    first in the flat buffers), n_layer_params (weights and biases: the normalization
    parameters follow), state (the optimizer's flat state buffers), running_stats,
    grad_norm (the last update's gradient norm before clipping, note n), reduce_buffer
    (flat_grads followed by REDUCE_TAIL float32 slots: what a data-parallel step allreduces),
    penalty (the L2 term of the last forward's loss, note o). layer_outputs()
    returns the hidden layers' outputs of the last forward (diagnostics).
    """

    def __cinit__(self, *args, **kwargs):
        self.layers = NULL

    def __dealloc__(self):
        free(self.layers)

    def __init__(self, params, activations, loss, max_batch, *, optimizer="adam", momentum=0.9,
                 nesterov=False, beta1=0.9, beta2=0.999, rho=0.9, eps=1e-8, weight_decay=0.0,
                 alpha=0.0, dropout=None, seed=0, per_output_grad=False, nonfinite="raise",
                 normalization=None, norm_eps=1e-5, norm_momentum=0.1, running_stats=None,
                 norm_decay=False, clip_grad_norm=0.0, measure_grad_norm=False,
                 fuse_update="auto"):
        params = _param_list(params)
        cdef int L = _n_layers([getattr(p, "shape", ()) for p in params]) or len(params) // 2, l
        if isinstance(activations, (str, bytes)) or not hasattr(activations, "__iter__"):
            raise TypeError(f"activations must be a list of names, one per hidden layer, got "
                            f"{type(activations).__name__}")
        activations = tuple(activations)
        if len(activations) != L - 1:
            raise ValueError(f"activations: need one per hidden layer ({L - 1}), got "
                             f"{len(activations)}")
        for a in activations:
            _act_code(a, "activations")
        if not isinstance(loss, str) or loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        if not isinstance(optimizer, str) or optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
        max_batch = _integer(max_batch, "max_batch", 1, 2**31 - 1)
        if dropout is None:
            dropout = (0.0,) * (L - 1)
        if isinstance(dropout, (str, bytes)) or not hasattr(dropout, "__len__") \
                or len(dropout) != L - 1:
            raise ValueError(f"dropout: need one rate in [0, 1) per hidden layer ({L - 1}), got "
                             f"{dropout!r}")
        dropout = tuple(_real(p, "dropout", 0.0, 1.0, False, True) for p in dropout)
        normalization = _normalization(normalization, L - 1)
        n_norm = sum(k is not None for k in normalization)
        if len(params) != 2 * L + 2 * n_norm:
            raise ValueError(f"params: {L} layers with normalization {list(normalization)} need "
                             f"{2 * L + 2 * n_norm} arrays ([W0, b0, ..., W{L - 1}, b{L - 1}] and "
                             f"gamma, beta per normalized layer), got {len(params)}")
        norm_eps = _real(norm_eps, "norm_eps", 0.0, math.inf, True)
        norm_momentum = _real(norm_momentum, "norm_momentum", 0.0, 1.0)
        clip_grad_norm = _real(0.0 if clip_grad_norm is None else clip_grad_norm,
                               "clip_grad_norm", 0.0)
        # the hyperparameters' ranges (see the optimizers' bindings)
        momentum, beta1, beta2 = _momentum(momentum), _decay_rate(beta1, "beta1"), \
            _decay_rate(beta2, "beta2")
        rho, eps = _decay_rate(rho, "rho"), _eps(eps)
        weight_decay, alpha = _real(weight_decay, "weight_decay", 0.0), _real(alpha, "alpha", 0.0)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an integer, got {type(seed).__name__} {seed!r}")
        n_prev = None
        for l in range(L):
            W, b = params[2 * l], params[2 * l + 1]
            if not isinstance(W, np.ndarray) or W.ndim != 2:
                raise ValueError(f"params[{2 * l}] must be a 2-D float32 array (n_in, n_out)")
            n_in, n_out = W.shape
            if n_prev is not None and n_in != n_prev:
                raise ValueError(f"params[{2 * l}] has {n_in} rows but the previous layer has "
                                 f"{n_prev} outputs")
            if n_in < 1 or n_out < 1:
                raise ValueError(f"params[{2 * l}]: layers need at least one input and output")
            n_prev = n_out
            _output(W, f"params[{2 * l}]", (n_in, n_out))
            _output(b, f"params[{2 * l + 1}]", (n_out,))
        cdef int j = 2 * L
        norm_slots, n_batch = [], 0    # per hidden layer: index of its gamma in params, or -1
        for l in range(L - 1):
            if normalization[l] is None:
                norm_slots.append(-1)
                continue
            n_out = params[2 * l].shape[1]
            _output(params[j], f"params[{j}]", (n_out,), f"layer {l}'s gamma")
            _output(params[j + 1], f"params[{j + 1}]", (n_out,), f"layer {l}'s beta")
            norm_slots.append(j)
            n_batch += normalization[l] == "batch"
            j += 2
        if running_stats is None:
            running_stats = [np.zeros(params[2 * l].shape[1], np.float32) if k == 0 else
                             np.ones(params[2 * l].shape[1], np.float32)
                             for l in range(L - 1) if normalization[l] == "batch" for k in (0, 1)]
        else:
            running_stats = list(running_stats)
            if len(running_stats) != 2 * n_batch:
                raise ValueError(f"running_stats: need a mean and a variance per batch-normalized "
                                 f"layer ({2 * n_batch} arrays), got {len(running_stats)}")
            j = 0
            for l in range(L - 1):
                if normalization[l] == "batch":
                    for k in range(2):
                        _output(running_stats[j], f"running_stats[{j}]",
                                (params[2 * l].shape[1],), f"layer {l}'s outputs")
                        j += 1
        flat = flat_buffer(params)
        if flat is None:
            raise ValueError("params must be views of one flat float32 buffer laid out [W0, W1, "
                             "..., b0, b1, ...]: make them with fastmlp.core.flat_params(params)")
        self._config = dict(loss=loss, max_batch=int(max_batch), optimizer=optimizer,
                            momentum=momentum, nesterov=bool(nesterov), beta1=beta1, beta2=beta2,
                            rho=rho, eps=eps, weight_decay=weight_decay, alpha=alpha,
                            dropout=dropout, seed=int(seed),
                            per_output_grad=bool(per_output_grad), nonfinite=nonfinite,
                            normalization=normalization, norm_eps=norm_eps,
                            norm_momentum=norm_momentum, running_stats=running_stats,
                            norm_decay=bool(norm_decay), clip_grad_norm=clip_grad_norm,
                            measure_grad_norm=bool(measure_grad_norm),
                            fuse_update=fuse_update)
        self.params, self.activations, self.dropout = params, activations, dropout
        self.normalization, self.running_stats = normalization, running_stats
        self.norm_eps, self.norm_momentum = norm_eps, norm_momentum
        self.norm_decay, self.clip = bool(norm_decay), clip_grad_norm
        self.measure_norm = bool(measure_grad_norm) or clip_grad_norm > 0
        if not (fuse_update is True or fuse_update is False or fuse_update == "auto"):
            raise ValueError(f"fuse_update must be 'auto', True or False, got {fuse_update!r}")
        self.fuse_update = fuse_update
        self.grad_norm = NAN
        self.loss, self.optimizer, self.max_batch = loss, optimizer, max_batch
        self.loss_kernel = _LOSS_KERNELS[LOSSES.index(loss)]
        self.update_kernel = _UPDATE_KERNELS[OPTIMIZERS.index(optimizer)]
        self.momentum, self.nesterov = momentum, bool(nesterov)
        self.beta1, self.beta2, self.rho, self.eps = beta1, beta2, rho, eps
        self.weight_decay, self.alpha = weight_decay, alpha
        self.seed = <uint64_t>(int(seed) & 0xFFFFFFFFFFFFFFFF)
        self.per_output_grad = bool(per_output_grad) and loss == "mse_loss"
        self.with_l2 = 1
        if nonfinite not in ("raise", "continue"):
            raise ValueError(f"nonfinite must be 'raise' or 'continue', got {nonfinite!r}")
        self.continue_nonfinite = nonfinite == "continue"
        self.t = 0
        self.phase = _PHASE_NONE

        # flat buffers (note g): parameters (the caller's), gradients, optimizer state
        self.flat_params = flat
        self.n_params = flat.size
        self.n_weights = sum(params[2 * l].size for l in range(L))
        self.n_layer_params = self.n_weights + sum(params[2 * l + 1].size for l in range(L))
        # note o: the gradients with REDUCE_TAIL slots after them, one buffer to allreduce
        self.reduce_buffer = np.zeros(self.n_params + REDUCE_TAIL, np.float32)
        self.flat_grads = self.reduce_buffer[:self.n_params]
        offsets, _ = _flat_offsets([p.shape for p in params])
        self.grads = [self.flat_grads[o:o + p.size].reshape(p.shape)
                      for p, o in zip(params, offsets)]
        self.total_weight, self.row_offset, self.penalty = 0.0, 0, 0.0
        n_state = 2 if optimizer == "adam" else (0 if optimizer == "sgd" and momentum == 0 else 1)
        self.state = [np.zeros(self.n_params, np.float32) for _ in range(n_state)]
        self.p_flat, self.g_flat = _data(self.flat_params), _data(self.flat_grads)
        self.s1_flat = _data(self.state[0]) if n_state > 0 else NULL
        self.s2_flat = _data(self.state[1]) if n_state > 1 else NULL

        free(self.layers)
        self.layers = <_Layer *>calloc(L, sizeof(_Layer))
        if self.layers == NULL:
            raise MemoryError()
        self.n_layers = L
        self._buffers, self._outputs = [], []
        cdef _Layer *ly
        for l in range(L):
            ly = &self.layers[l]
            ly.n_in, ly.n_out = params[2 * l].shape
            ly.act = _act_code(activations[l], "activations") if l < L - 1 else FM_ACT_IDENTITY
            ly.W, ly.b = _data(params[2 * l]), _data(params[2 * l + 1])
            ly.dW, ly.db = _data(self.grads[2 * l]), _data(self.grads[2 * l + 1])
            ly.Y = self._buffer(max_batch * ly.n_out)
            self._outputs.append(
                self._buffers[len(self._buffers) - 1].reshape(max_batch, ly.n_out))
            ly.A = ly.Y
            ly.D = self._buffer(max_batch * ly.n_out)
            ly.norm = _NORM_NONE
            ly.Z = NULL
            if l < L - 1 and normalization[l] is not None:
                # note m: H (the GEMM's output), the statistics, gamma and beta in the buffers
                j = norm_slots[l]
                ly.norm = _NORM_LAYER if normalization[l] == "layer" else _NORM_BATCH
                ly.H = self._buffer(max_batch * ly.n_out)
                ly.gamma, ly.beta = _data(params[j]), _data(params[j + 1])
                ly.dgamma, ly.dbeta = _data(self.grads[j]), _data(self.grads[j + 1])
                n_stat = max_batch if ly.norm == _NORM_LAYER else ly.n_out
                ly.mean, ly.rstd = self._buffer(n_stat), self._buffer(n_stat)
                ly.run_mean = ly.run_var = NULL
                if ly.norm == _NORM_BATCH:
                    k = 2 * sum(normalization[i] == "batch" for i in range(l))
                    ly.run_mean, ly.run_var = _data(running_stats[k]), _data(running_stats[k + 1])
            elif ly.act == FM_ACT_GELU:
                ly.Z = self._buffer(max_batch * ly.n_out)
            if l < L - 1 and dropout[l] > 0:
                ly.mask = self._buffer(max_batch * ly.n_out)
                ly.A = self._buffer(max_batch * ly.n_out)
                ly.keep = <uint64_t>round((1.0 - dropout[l]) * (1 << 24))
                ly.scale = 1.0 / (1.0 - dropout[l])
        n_out_last = self.layers[L - 1].n_out
        self._xbuf, self.xbuf = None, NULL     # allocated by the first dense gather (_validate)
        self._ybuf = (self._array((max_batch,), np.int32)
                      if self.loss_kernel == FM_K_SOFTMAX_CROSS_ENTROPY
                      else self._array((max_batch, n_out_last), np.float32))
        self._wbuf = self._array((max_batch,), np.float32)
        self.wbuf = _data(self._wbuf)
        self.ybuf = cnp.PyArray_DATA(<cnp.ndarray>self._ybuf)
        self.work, self.work_floats = NULL, 0
        self._ensure_work(_threads())

    def _array(self, shape, dtype):
        """A zeroed buffer of this step, or a MemoryError naming max_batch."""
        try:
            return np.zeros(shape, dtype)
        except (MemoryError, ValueError):
            raise MemoryError(f"TrainStep: the buffers for max_batch={self.max_batch} do not fit "
                              f"in memory (one of them: {shape}, {np.dtype(dtype).name})") from None

    cdef float *_buffer(self, Py_ssize_t n) except NULL:
        a = self._array((n,), np.float32)
        self._buffers.append(a)
        return _data(a)

    cdef int _ensure_work(self, int nthreads) except -1:
        """A GEMM workspace for nthreads threads, sized from the plans of this network's
        products at max_batch (the largest a batch needs; fm_matmul allocates for itself in the
        rare call that needs more, after set_gemm_blocks, say, so nothing is ever overrun)."""
        cdef size_t need = 0
        cdef fm_matmul_plan p
        cdef _Layer *ly
        cdef int l
        cdef ptrdiff_t M = self.max_batch
        for l in range(self.n_layers):
            ly = &self.layers[l]
            fm_plan_matmul(0, 0, M, ly.n_out, ly.n_in, ly.n_in, ly.n_out, nthreads, &p)
            need = max(need, p.work_floats)
            fm_plan_matmul(1, 0, ly.n_in, ly.n_out, M, ly.n_in, ly.n_out, nthreads, &p)
            need = max(need, p.work_floats)
            if l > 0:
                fm_plan_matmul(0, 1, M, self.layers[l - 1].n_out, ly.n_out, ly.n_out, ly.n_out,
                               nthreads, &p)
                need = max(need, p.work_floats)
        if need > self.work_floats:
            self._work = np.empty(need, np.float32)
            self.work, self.work_floats = _data(self._work), need
        return 0

    def __reduce__(self):
        # Pickle the parameters (shared with the owner: pickle's memo keeps them the same
        # objects), the configuration, the step count and the optimizer state.
        cfg = dict(self._config)
        args = (self.params, self.activations, cfg.pop("loss"), cfg.pop("max_batch"))
        return (_rebuild_train_step, (args, cfg, self.t, self.state))

    # ---- with the GIL: validation ---------------------------------------------------------------

    cdef int _shard(self, row_offset, total_weight) except -1:
        """Note o: make the next batch a shard (total_weight > 0) or a whole batch (None)."""
        if total_weight is None:
            self.total_weight, self.row_offset = 0.0, 0
            if row_offset:
                raise ValueError("row_offset needs total_weight (a shard of a larger batch)")
            return 0
        self.total_weight = _real(total_weight, "total_weight", 0.0, math.inf, True)
        self.row_offset = _integer(row_offset, "row_offset", 0, 2**40)
        return 0

    cdef int _validate(self, X, y, sample_weight, index, _Input *inp,
                       bint all_rows=False, bint allow_empty=False) except -1:
        """Check a batch and describe it in inp; keep its arrays alive until the next one.
        all_rows: any number of rows (loss_and_grad cuts them in chunks), else at most
        max_batch. allow_empty: zero rows are a batch (a shard, note o).
        A sparse X (note l) is converted once per object: the same matrix object in the next
        batch reuses its arrays."""
        cdef bint sparse = is_sparse(X)
        cdef Py_ssize_t n, n_cols, n_in = self.layers[0].n_in
        if sparse:
            if X is not self._sparse_src:
                self._sparse_src, self._sparse_arrays = None, None
                self._sparse_arrays = csr_arrays(X, "X")
                self._sparse_src = X
            n, n_cols = self._sparse_arrays[3]
        else:
            X = _input(X, "X", 2)
            n, n_cols = X.shape[0], X.shape[1]
        cdef Py_ssize_t n_out = self.layers[self.n_layers - 1].n_out
        if n_cols != n_in:
            raise ValueError(f"X must have {n_in} columns, got {n_cols}")
        cdef bint labels = self.loss_kernel == FM_K_SOFTMAX_CROSS_ENTROPY
        if labels:
            if not isinstance(y, np.ndarray) or y.dtype != np.int32 or y.shape != (n,):
                raise TypeError(f"y must be an int32 array of shape ({n},) of labels")
            y = np.ascontiguousarray(y)
        else:
            y = _input_shaped(y, "y", (n, n_out), "X's rows, the last layer's outputs")
        w = _weights(sample_weight, n, "X's rows")
        cdef bint gather = index is not None
        if gather:
            if not isinstance(index, np.ndarray) or index.dtype.kind not in "iu":
                raise TypeError(f"index must be a 1-D numpy array of integers (rows of X), got "
                                f"{getattr(index, 'dtype', type(index).__name__)}")
            if index.ndim != 1:
                raise ValueError(f"index must be 1-D, got shape {index.shape}")
            index = np.ascontiguousarray(index, dtype=np.intp)
            if index.shape[0] and (index.min() < 0 or index.max() >= n):
                raise IndexError(f"index out of range for {n} rows")
        cdef Py_ssize_t M = index.shape[0] if gather else n
        if (M < 1 and not allow_empty) or (M > self.max_batch and not all_rows):
            raise ValueError(f"batch size must be in [1, {self.max_batch}], got {M}")
        if labels and M and not gather and (y.min() < 0 or y.max() >= n_out):
            raise ValueError(f"labels must be in [0, {n_out})")
        self._batch_refs = (X, y, w, index)
        inp.rows, inp.M = n, M
        inp.X, inp.indptr, inp.indices, inp.data = NULL, NULL, NULL, NULL
        cdef Py_ssize_t bad
        if sparse:
            data, indices, indptr, _ = self._sparse_arrays
            inp.indptr = <const int64_t *>cnp.PyArray_DATA(<cnp.ndarray>indptr)
            inp.indices = <const int32_t *>cnp.PyArray_DATA(<cnp.ndarray>indices)
            inp.data = <const float *>cnp.PyArray_DATA(<cnp.ndarray>data)
            bad = _csr_rows_outside(inp.indptr, <const ptrdiff_t *>cnp.PyArray_DATA(
                <cnp.ndarray>index) if gather else NULL, M, data.shape[0])
            if bad >= 0:
                raise ValueError(f"X's indptr points outside its {data.shape[0]} entries "
                                 f"(batch row {bad})")
        else:
            inp.X = _data(X)
            if gather and self.xbuf == NULL:
                self._xbuf = self._array((self.max_batch, n_in), np.float32)
                self.xbuf = _data(self._xbuf)
        inp.y = cnp.PyArray_DATA(<cnp.ndarray>y)
        inp.w = _data(w) if w is not None else NULL
        inp.idx = <const Py_ssize_t *>cnp.PyArray_DATA(<cnp.ndarray>index) if gather else NULL
        return 0

    # ---- without the GIL: the phases ------------------------------------------------------------

    cdef int _load(self, const _Input *inp, int nt) noexcept nogil:
        """Make inp the current batch: gather its rows (with idx), renormalise its sample weights
        (note h) and set the L2 coefficient. Returns FM_OK."""
        cdef ptrdiff_t M = inp.M, n_in = self.layers[0].n_in
        cdef ptrdiff_t n_out = self.layers[self.n_layers - 1].n_out, r
        cdef bint labels = self.loss_kernel == FM_K_SOFTMAX_CROSS_ENTROPY
        cdef float *xb = self.xbuf
        cdef float *wb = self.wbuf
        cdef void *yb = self.ybuf
        cdef const float *w = inp.w
        cdef double wsum
        cdef _Gather gather
        self.M, self.X, self.y, self.w = M, inp.X, inp.y, NULL
        self.sp_indptr, self.sp_indices, self.sp_data = inp.indptr, inp.indices, inp.data
        self.rows = <const ptrdiff_t *>inp.idx if inp.indptr != NULL else NULL  # note l: no copy
        if inp.idx != NULL:
            # rows of a shuffled epoch are scattered over X (tens of MB, beyond the caches): a
            # gather on every thread (ee2d0fb; benchmarks/results/gemm_rules.md, "gather"), in
            # tasks of _GATHER_ROWS rows on the thread team (csrc/pool.h)
            gather.inp, gather.xb, gather.yb, gather.wb = inp, xb, yb, wb
            gather.n_in, gather.n_out, gather.labels = n_in, n_out, labels
            fm_pool_run(nt if M * n_in >= 32768 else 1, (M + _GATHER_ROWS - 1) // _GATHER_ROWS,
                        _gather_task, &gather)
            self.X, self.y = (xb if inp.X != NULL else NULL), yb
            if w != NULL:
                w = wb
        self.batch_weight = M
        if w != NULL:
            # note h: weights renormalised to sum to M (all-zero weights: no gradient)
            wsum = 0
            for r in range(M):
                wsum += w[r]
            for r in range(M):
                wb[r] = <float>(w[r] * (M / wsum)) if wsum else 0
            self.w = wb
            self.batch_weight = wsum
        self.l2 = self.alpha / (self.total_weight if self.total_weight > 0 else
                                (self.batch_weight if self.batch_weight else M))
        self.phase = _PHASE_NONE
        return FM_OK

    cdef int _forward(self, double *loss, int nt) noexcept nogil:
        """Forward pass and loss of the current batch, with the L2 penalty; the loss's gradient
        w.r.t. the output goes to the last layer's D. A non-finite loss leaves the phase at none
        (note j). Returns FM_OK, FM_EINVAL (a label out of range) or FM_ENOMEM."""
        cdef int L = self.n_layers, l, status
        cdef ptrdiff_t M = self.M
        cdef _Layer *ly
        cdef const float *inp = self.X
        cdef float *out
        cdef fm_epilogue ep
        cdef double sq = 0
        self.phase = _PHASE_NONE
        if self.alpha > 0 and self.with_l2:
            for l in range(L):
                sq += _sum_squares(self.layers[l].n_in * self.layers[l].n_out, self.layers[l].W)
        self.penalty = 0.5 * self.l2 * sq
        if M == 0:                      # an empty shard (note o)
            loss[0] = 0
            self.phase = _PHASE_FORWARD
            return FM_OK
        # hidden layers fuse bias + activation in the GEMM epilogue; gelu keeps Z; a
        # normalized layer's GEMM writes H and its norm kernel applies the activation (note m)
        for l in range(L):
            ly = &self.layers[l]
            ep.bias = ly.b; ep.act = ly.act; ep.grad_act = FM_ACT_IDENTITY; ep.slope = 0.01
            ep.y = NULL; ep.ldy = ly.n_out; ep.z = NULL; ep.ldz = ly.n_out; ep.update = NULL
            if ly.Z != NULL or ly.norm != _NORM_NONE:
                ep.act = FM_ACT_IDENTITY
            out = ly.Z if ly.Z != NULL else (ly.H if ly.norm != _NORM_NONE else ly.Y)
            if l == 0 and self.sp_indptr != NULL:
                status = fm_sparse_matmul(M, ly.n_out, ly.n_in, self.sp_indptr, self.sp_indices,
                                          self.sp_data, self.rows, ly.W, ly.n_out, out,
                                          ly.n_out, &ep, nt)
                if status != FM_OK:
                    return _STATUS_BAD_SPARSE
            else:
                status = fm_matmul(0, 0, M, ly.n_out, ly.n_in, 1.0, inp, ly.n_in, ly.W, ly.n_out,
                                   0.0, out, ly.n_out, &ep, self.work, self.work_floats, nt)
            if status != FM_OK:
                return status
            if ly.Z != NULL:
                fm_bias_activation(M, ly.n_out, ly.Z, NULL, ly.act, 0.01, ly.Y, nt)
            elif ly.norm == _NORM_LAYER:
                fm_layernorm_forward(M, ly.n_out, ly.H, ly.gamma, ly.beta, self.norm_eps, ly.act,
                                     0.01, ly.Y, ly.mean, ly.rstd, nt)
            elif ly.norm == _NORM_BATCH:
                fm_batchnorm_forward(M, ly.n_out, ly.H, ly.gamma, ly.beta, self.norm_eps, 1,
                                     self.norm_momentum, ly.run_mean, ly.run_var, ly.act, 0.01,
                                     ly.Y, ly.mean, ly.rstd, nt)
            if ly.mask != NULL:
                _dropout_forward(M * ly.n_out, ly.Y, ly.mask, ly.A, ly.keep, ly.scale,
                                 _dropout_key(self.seed, <uint64_t>self.t, <uint64_t>l)
                                 + <uint64_t>(self.row_offset * ly.n_out))
            inp = ly.A
        # the loss and its gradient w.r.t. the output pre-activation, in one pass
        ly = &self.layers[L - 1]
        if self.loss_kernel == FM_K_SOFTMAX_CROSS_ENTROPY:
            status = fm_softmax_cross_entropy(M, ly.n_out, ly.Y, <const int32_t *>self.y, self.w,
                                              ly.D, loss, nt)
        elif self.loss_kernel == FM_K_SIGMOID_CROSS_ENTROPY:
            status = fm_sigmoid_cross_entropy(M, ly.n_out, ly.Y, <const float *>self.y, self.w,
                                              ly.D, loss, nt)
        elif self.loss_kernel == FM_K_POISSON_LOSS:
            status = fm_poisson_loss(M, ly.n_out, ly.Y, <const float *>self.y, self.w, ly.D, loss,
                                     nt)
        else:
            status = fm_mse_loss(M, ly.n_out, ly.Y, <const float *>self.y, self.w, ly.D, loss, nt)
            if self.per_output_grad and ly.n_out > 1:
                _scale(M * ly.n_out, ly.D, <float>ly.n_out)
        if status != FM_OK:
            return status
        if self.total_weight > 0:      # note o: this shard's share of the batch
            _scale(M * ly.n_out, ly.D, <float>(self.batch_weight / self.total_weight))
            loss[0] *= self.batch_weight / self.total_weight
        else:
            loss[0] += self.penalty
        if isfinite(loss[0]) or self.continue_nonfinite:
            self.phase = _PHASE_FORWARD
        return FM_OK

    cdef int _backward(self, int nt) noexcept nogil:
        """Every gradient of the current batch's data loss into flat_grads. Returns FM_OK,
        FM_EINVAL (no forward of this batch) or FM_ENOMEM. During run() with fusing set (the
        optimizer's step, its arrays unset), each dense W also takes the step in the product of
        its gradient, and is marked stepped (note p)."""
        if self.phase == _PHASE_NONE:
            return FM_EINVAL
        cdef fm_update *up = <fm_update *>self.fusing
        cdef int L = self.n_layers, l, status
        cdef ptrdiff_t M = self.M, at
        cdef _Layer *ly
        cdef _Layer *prev
        cdef const float *inp
        cdef fm_epilogue ep
        cdef fm_epilogue step_ep
        if M == 0:                      # an empty shard: no share of the gradient (note o)
            memset(self.g_flat, 0, self.n_params * sizeof(float))
            self.phase = _PHASE_BACKWARD
            return FM_OK
        for l in range(L):              # a step abandoned by an error leaves none stepped
            self.layers[l].stepped = False
        step_ep.bias = NULL; step_ep.act = FM_ACT_IDENTITY; step_ep.grad_act = FM_ACT_IDENTITY
        step_ep.slope = 0.01; step_ep.y = NULL; step_ep.z = NULL; step_ep.update = up
        for l in range(L - 1, -1, -1):
            ly = &self.layers[l]
            inp = self.X if l == 0 else self.layers[l - 1].A
            fm_bias_grad(M, ly.n_out, ly.D, ly.db, nt)
            if l > 0:
                # dZ_prev = (D W^T) * act'(.), fused; then dropout's mask. A normalized layer:
                # dY = D W^T, the mask, then the norm's backward (act' inside) to dH (note m).
                # Before dW: a fused step (note p) changes W
                prev = &self.layers[l - 1]
                ep.bias = NULL; ep.act = FM_ACT_IDENTITY; ep.slope = 0.01
                ep.grad_act = prev.act if prev.norm == _NORM_NONE else FM_ACT_IDENTITY
                ep.y = prev.Y; ep.ldy = prev.n_out; ep.z = prev.Z; ep.ldz = prev.n_out
                ep.update = NULL
                status = fm_matmul(0, 1, M, prev.n_out, ly.n_out, 1.0, ly.D, ly.n_out, ly.W,
                                   ly.n_out, 0.0, prev.D, prev.n_out, &ep, self.work,
                                   self.work_floats, nt)
                if status != FM_OK:
                    return status
                if prev.mask != NULL:
                    _mul_inplace(M * prev.n_out, prev.D, prev.mask)
                if prev.norm == _NORM_LAYER:
                    fm_layernorm_backward(M, prev.n_out, prev.D, prev.Y, prev.H, prev.gamma,
                                          prev.beta, prev.mean, prev.rstd, prev.act, 0.01,
                                          prev.D, prev.dgamma, prev.dbeta, nt)
                elif prev.norm == _NORM_BATCH:
                    fm_batchnorm_backward(M, prev.n_out, prev.D, prev.Y, prev.H, prev.gamma,
                                          prev.beta, prev.mean, prev.rstd, prev.act, 0.01,
                                          prev.D, prev.dgamma, prev.dbeta, nt)
            if l == 0 and self.sp_indptr != NULL:
                status = fm_sparse_matmul_tn(M, ly.n_out, ly.n_in, self.sp_indptr,
                                             self.sp_indices, self.sp_data, self.rows, ly.D,
                                             ly.n_out, ly.dW, ly.n_out, nt)
                if status != FM_OK:
                    return _STATUS_BAD_SPARSE
            elif up != NULL:
                at = ly.W - self.p_flat
                up.p = ly.W
                up.s1 = self.s1_flat + at if self.s1_flat != NULL else NULL
                up.s2 = self.s2_flat + at if self.s2_flat != NULL else NULL
                step_ep.ldy = ly.n_out; step_ep.ldz = ly.n_out
                status = fm_matmul(1, 0, ly.n_in, ly.n_out, M, 1.0, inp, ly.n_in, ly.D,
                                   ly.n_out, 0.0, ly.dW, ly.n_out, &step_ep, self.work,
                                   self.work_floats, nt)
                ly.stepped = status == FM_OK
            else:
                status = fm_matmul(1, 0, ly.n_in, ly.n_out, M, 1.0, inp, ly.n_in, ly.D,
                                   ly.n_out, 0.0, ly.dW, ly.n_out, NULL, self.work,
                                   self.work_floats, nt)
            if status != FM_OK:
                return status
        self.phase = _PHASE_BACKWARD
        return FM_OK

    cdef int _update(self, double lr, int nt) noexcept nogil:
        """One optimizer step over the flat buffers with flat_grads: the weights with the L2
        coefficient of the current batch, the biases without (note g). Returns FM_OK, or
        FM_EINVAL (no backward since the last update)."""
        if self.phase != _PHASE_BACKWARD:
            return FM_EINVAL
        self.t += 1
        if self.measure_norm:       # note n
            self.grad_norm = fm_clip_grad_norm(self.n_params, self.g_flat, self.clip, nt)
        cdef ptrdiff_t nw = self.n_weights, nl = self.n_layer_params, n = self.n_params
        cdef ptrdiff_t w0 = 0, at
        cdef double wd = self.weight_decay
        cdef int l
        cdef _Layer *ly
        # weights stepped in backward (note p): the others alone (every weight gets l2 and wd)
        for l in range(self.n_layers):
            if self.layers[l].stepped:
                w0 = nw
        if w0:
            for l in range(self.n_layers):
                ly = &self.layers[l]
                at = ly.W - self.p_flat
                if not ly.stepped:
                    self._update_range(at, at + ly.n_in * ly.n_out, lr, self.l2, wd, nt)
                ly.stepped = False
        if self.norm_decay and nl < n:
            # gamma, beta as weights: L2 and decay (note m); the biases keep AdamW's decay
            self._update_range(w0, nw, lr, self.l2, wd, nt)
            self._update_range(nw, nl, lr, 0.0, wd, nt)
            self._update_range(nl, n, lr, self.l2, wd, nt)
        elif self.l2 == 0 and (wd == 0 or nl == n):
            self._update_range(w0, n, lr, 0.0, wd, nt)      # one pass over everything
        else:
            self._update_range(w0, nw, lr, self.l2, wd, nt)
            self._update_range(nw, nl, lr, 0.0, wd, nt)
            self._update_range(nl, n, lr, 0.0, 0.0, nt)
        self.phase = _PHASE_NONE
        return FM_OK

    cdef void _update_range(self, ptrdiff_t lo, ptrdiff_t hi, double lr, double l2, double wd,
                            int nt) noexcept nogil:
        """The optimizer over elements [lo, hi) of the flat buffers (nothing if empty), with
        L2 coefficient l2 and AdamW decay wd."""
        if hi <= lo:
            return
        cdef float *s1 = self.s1_flat + lo if self.s1_flat != NULL else NULL
        cdef float *s2 = self.s2_flat + lo if self.s2_flat != NULL else NULL
        if self.update_kernel == FM_K_SGD_UPDATE:
            fm_sgd_update(hi - lo, self.p_flat + lo, self.g_flat + lo, lr, l2, self.momentum,
                          self.nesterov, s1, nt)
        elif self.update_kernel == FM_K_RMSPROP_UPDATE:
            fm_rmsprop_update(hi - lo, self.p_flat + lo, self.g_flat + lo, s1, lr, self.rho,
                              self.eps, l2, nt)
        else:
            fm_adam_update(hi - lo, self.p_flat + lo, self.g_flat + lo, s1, s2, self.t, lr,
                           self.beta1, self.beta2, self.eps, l2, wd, nt)

    # ---- the phases from Python -----------------------------------------------------------------

    cdef int _raise(self, int status) except -1:
        n_out = self.layers[self.n_layers - 1].n_out
        if status == FM_EINVAL:
            raise ValueError(f"labels must be in [0, {n_out})")
        if status == _STATUS_BAD_SPARSE:
            raise ValueError("X: the batch's rows have indptr not monotone or indices out of "
                             f"range [0, {self.layers[0].n_in})")
        if status == FM_ENOMEM:
            raise MemoryError("TrainStep: could not allocate GEMM buffers")
        return 0

    def forward(self, X, y, sample_weight=None, *, index=None, total_weight=None, row_offset=0):
        """Forward pass and loss of a batch (with the L2 penalty); keeps what backward needs.

        X: float32 (n, n_in), or a SciPy sparse matrix (CSR or CSC, note l); y: int32 (n,)
        labels in [0, n_out) for "softmax_cross_entropy",
        else float32 (n, n_out) targets; sample_weight: float32 (n,) or None.
        index: None (the batch is all of X, at most max_batch rows), or integer (M,) row
        indices gathered from X, y and sample_weight inside the native call (no copy in Python).
        Without index, backward reads X again: leave it unchanged until then.
        total_weight, row_offset: None, or the batch is a shard, starting at row row_offset, of
        a batch of that total weight (note o; it may then be empty).
        Returns the loss (a shard's share of the data loss, note o); raises FloatingPointError
        if it is not finite (note j).
        """
        cdef _Input inp
        self._shard(row_offset, total_weight)
        self._validate(X, y, sample_weight, index, &inp, False, self.total_weight > 0)
        cdef int nt = _threads()
        self._ensure_work(nt)
        cdef double loss = 0
        cdef int status
        with nogil:
            self._load(&inp, nt)
            status = self._forward(&loss, nt)
        self._raise(status)
        if not isfinite(loss) and not self.continue_nonfinite:
            raise FloatingPointError(f"the loss became {loss} at step {self.t + 1}; the "
                                     "parameters were not updated")
        return loss

    def backward(self):
        """The gradients of the last forward's data loss into flat_grads (grads are views).
        The L2 penalty's gradient is not in them: update adds it (note h)."""
        if self.phase == _PHASE_NONE:
            raise RuntimeError("backward needs a forward (with a finite loss) of a new batch "
                               "first")
        cdef int nt = _threads()
        self._ensure_work(nt)
        cdef int status
        with nogil:
            status = self._backward(nt)
        self._raise(status)

    def update(self, lr):
        """One optimizer step with flat_grads at learning rate lr (t counts it)."""
        if self.phase != _PHASE_BACKWARD:
            raise RuntimeError("update needs a backward since the last update")
        cdef double lr_ = _lr(lr)
        cdef int nt = _threads()
        with nogil:
            self._update(lr_, nt)

    def run(self, X, y, sample_weight=None, *, lr, index=None):
        """forward, backward and update of one batch in one native call; returns the loss.

        Arguments as forward's (a whole batch); lr: the learning rate of this step.
        Raises FloatingPointError, without updating anything, if the loss is not finite.
        """
        cdef _Input inp
        self._shard(0, None)
        self._validate(X, y, sample_weight, index, &inp)
        cdef int nt = _threads()
        self._ensure_work(nt)
        cdef double lr_ = _lr(lr), loss = 0
        cdef int status
        cdef fm_update up
        cdef bint fuse = (self.fuse_update is not False and not self.measure_norm and  # note p
                          (self.fuse_update is True or inp.M <= _fuse_max_batch))
        up.kernel = self.update_kernel; up.lr = lr_; up.momentum = self.momentum
        up.nesterov = self.nesterov; up.rho = self.rho; up.beta1 = self.beta1
        up.beta2 = self.beta2; up.eps = self.eps; up.weight_decay = self.weight_decay
        with nogil:
            self._load(&inp, nt)
            status = self._forward(&loss, nt)
            if status == FM_OK and self.phase == _PHASE_FORWARD:
                up.step = self.t + 1; up.l2 = self.l2        # what _update will use
                self.fusing = &up if fuse else NULL
                status = self._backward(nt)
                self.fusing = NULL
                if status == FM_OK:
                    self._update(lr_, nt)
        self._raise(status)
        if not isfinite(loss) and not self.continue_nonfinite:
            raise FloatingPointError(f"the loss became {loss} at step {self.t + 1}; the "
                                     "parameters were not updated")
        return loss

    def loss_and_grad(self, X, y, sample_weight=None, *, out=None, total_weight=None,
                      penalty=True):
        """The loss over all of X and its gradient (note k), for full-batch solvers (L-BFGS).

        X, y, sample_weight: as forward's, any number of rows (processed max_batch at a time);
        the parameters are read from flat_params. out: None or a float64 (n_params,) array.
        Returns (loss, grad): loss = sum_i w_i l_i / W + alpha / (2 W) sum ||W_l||^2 with W the
        sum of the sample weights (the row count without them), grad its gradient in the flat
        layout [W0, ..., b0, ...] as float64. Nothing is updated; t does not change. Raises
        FloatingPointError if the loss is not finite, ValueError with dropout (the loss must be
        a deterministic function of the parameters) or if the weights sum to zero.
        total_weight: None, or X is a shard of data of that total weight (note o): the sums
        are divided by it instead of X's own. penalty=False leaves the L2 term out (data
        parallel: one shard adds it, so that the shards' results sum to the objective).
        """
        if any(p > 0 for p in self.dropout):
            raise ValueError("loss_and_grad needs a network without dropout (a full-batch "
                             "solver needs a deterministic loss)")
        if "batch" in self.normalization:
            raise ValueError("loss_and_grad needs a network without batch normalization (its "
                             "statistics would depend on how the data are cut into chunks)")
        cdef _Input all_rows
        self._shard(0, None)             # chunks are whole batches; the division is ours
        cdef double divide_by = _real(total_weight, "total_weight", 0.0, math.inf, True) \
            if total_weight is not None else 0.0
        self._validate(X, y, sample_weight, None, &all_rows, True)
        if out is None:
            out = np.empty(self.n_params, np.float64)
        elif not (isinstance(out, np.ndarray) and out.dtype == np.float64 and out.ndim == 1
                  and out.shape[0] == self.n_params and out.flags.c_contiguous
                  and out.flags.writeable):
            raise ValueError(f"out must be a writable C-contiguous float64 array of shape "
                             f"({self.n_params},)")
        cdef double *acc = <double *>cnp.PyArray_DATA(<cnp.ndarray>out)
        cdef int nt = _threads()
        self._ensure_work(nt)
        cdef double loss = 0
        cdef int status
        cdef bint with_penalty = bool(penalty)
        with nogil:
            status = self._loss_and_grad(&all_rows, acc, &loss, divide_by, with_penalty, nt)
        self._raise(status)
        if status == _STATUS_ZERO_WEIGHT:
            raise ValueError("sample_weight sums to zero: the loss is undefined")
        if not isfinite(loss):
            raise FloatingPointError(f"the loss became {loss}")
        return loss, out

    cdef int _loss_and_grad(self, const _Input *inp, double *acc, double *loss,
                            double divide_by, bint penalty, int nt) noexcept nogil:
        """Note k, over the rows inp describes (any number). Returns FM_OK, FM_EINVAL,
        FM_ENOMEM or _STATUS_ZERO_WEIGHT; *loss is NaN when a chunk's loss is not finite."""
        cdef ptrdiff_t n = inp.M, start = 0, rows, i, n_in = self.layers[0].n_in
        cdef ptrdiff_t n_out = self.layers[self.n_layers - 1].n_out
        cdef size_t ysize = sizeof(int32_t) if self.loss_kernel == FM_K_SOFTMAX_CROSS_ENTROPY \
            else n_out * sizeof(float)
        cdef double total_w = 0, chunk_loss, sq = 0
        cdef int status, l
        cdef _Input chunk
        for i in range(self.n_params):
            acc[i] = 0
        self.with_l2 = 0
        while start < n:
            rows = min(self.max_batch, n - start)
            chunk.rows, chunk.M, chunk.idx = rows, rows, NULL
            chunk.X = inp.X + start * n_in if inp.X != NULL else NULL
            chunk.indptr = inp.indptr + start if inp.indptr != NULL else NULL
            chunk.indices, chunk.data = inp.indices, inp.data
            chunk.y = <const char *>inp.y + start * ysize
            chunk.w = inp.w + start if inp.w != NULL else NULL
            self._load(&chunk, nt)          # its batch_weight: W_c of note k
            chunk_loss = 0
            status = self._forward(&chunk_loss, nt)
            if status == FM_OK and self.phase == _PHASE_FORWARD:
                status = self._backward(nt)
            if status != FM_OK:
                self.with_l2 = 1
                return status
            if self.phase != _PHASE_BACKWARD:      # a non-finite loss
                self.with_l2 = 1
                loss[0] = NAN
                return FM_OK
            loss[0] += self.batch_weight * chunk_loss
            for i in range(self.n_params):
                acc[i] += self.batch_weight * self.g_flat[i]
            total_w += self.batch_weight
            start += rows
        self.with_l2 = 1
        self.phase = _PHASE_NONE
        if divide_by > 0:
            total_w = divide_by
        if total_w == 0:
            return _STATUS_ZERO_WEIGHT
        for i in range(self.n_params):
            acc[i] /= total_w
        loss[0] /= total_w
        if self.alpha > 0 and penalty:
            for l in range(self.n_layers):
                sq += _sum_squares(self.layers[l].n_in * self.layers[l].n_out, self.layers[l].W)
            loss[0] += 0.5 * self.alpha * sq / total_w
            for i in range(self.n_weights):
                acc[i] += self.alpha * self.p_flat[i] / total_w
        return FM_OK


    def layer_outputs(self):
        """The hidden layers' outputs Y (after the activation, before dropout) of the last
        forward's batch: views (M, n_out) into the step's buffers, valid until the next forward
        (what diagnostics read: no second forward pass)."""
        return [y[:self.M] for y in self._outputs[:self.n_layers - 1]]


def _normalization(normalization, Py_ssize_t n_hidden):
    """normalization as a tuple of None / "layer" / "batch", one per hidden layer."""
    if normalization is None or isinstance(normalization, str):
        normalization = [normalization] * n_hidden
    elif isinstance(normalization, bytes) or not hasattr(normalization, "__len__"):
        raise TypeError(f"normalization must be None, 'layer', 'batch' or a list of them, got "
                        f"{type(normalization).__name__}")
    normalization = tuple(normalization)
    if len(normalization) != n_hidden:
        raise ValueError(f"normalization: need one entry per hidden layer ({n_hidden}), got "
                         f"{len(normalization)}")
    for k in normalization:
        if k not in (None, "layer", "batch"):
            raise ValueError(f"normalization entries must be None, 'layer' or 'batch', got {k!r}")
    return normalization


def _rebuild_train_step(args, config, t, state):
    # Unpickled parameters are separate arrays (and may be read-only: joblib memory-maps them):
    # train on a flat copy; the estimators notice it is not their coefs_ and rebuild around
    # their own arrays.
    config = dict(config)
    if config.get("running_stats") is not None:      # the same: writable copies
        config["running_stats"] = [np.array(r, np.float32) for r in config["running_stats"]]
    step = TrainStep(flat_params(args[0]), *args[1:], **config)
    for dst, src in zip(step.state, state):
        dst[...] = src
    step.t = t
    return step


def dropout_mask(n_rows, n_cols, p, seed, step, layer):
    """The inverted-dropout mask TrainStep uses: float32 (n_rows, n_cols) of 0 and 1 / (1 - p),
    a pure function of (seed, step, layer, element) (note i). step: updates done before this one
    (TrainStep.t); layer: the hidden layer's index from 0."""
    n_rows, n_cols = _integer(n_rows, "n_rows", 0, 2**40), _integer(n_cols, "n_cols", 0, 2**40)
    p = _real(p, "p", 0.0, 1.0, False, True)
    step, layer = _integer(step, "step", 0, 2**47), _integer(layer, "layer", 0, 2**16 - 1)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer, got {type(seed).__name__} {seed!r}")
    try:
        mask = np.empty((n_rows, n_cols), np.float32)
        ones = np.ones((n_rows, n_cols), np.float32)
    except (MemoryError, ValueError):
        raise MemoryError(f"dropout_mask: a ({n_rows}, {n_cols}) mask does not fit in memory") \
            from None
    cdef uint64_t s = <uint64_t>(int(seed) & 0xFFFFFFFFFFFFFFFF)
    cdef uint64_t key = _dropout_key(s, <uint64_t>step, <uint64_t>layer)
    cdef uint64_t keep = <uint64_t>round((1.0 - p) * (1 << 24))
    cdef float scale = 1.0 / (1.0 - p)
    cdef float *m_p = _data(mask)
    cdef float *o_p = _data(ones)
    cdef ptrdiff_t count = mask.size
    if count:
        with nogil:
            _dropout_forward(count, o_p, m_p, o_p, keep, scale, key)
    return mask
