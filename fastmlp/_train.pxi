# A whole training step (forward, loss, backward, L2, optimizer update) as one native call.
# Included into _kernels.pyx so it calls the fm_* kernels directly.
#
# Design notes:
# f) Every buffer is allocated once, in __init__, for the largest batch; a smaller batch uses the
#    first rows. run() holds the GIL only to validate its arguments: the step itself runs in one
#    `with nogil:` block that allocates nothing and touches no Python object.
# g) The parameters are arrays owned by the caller (the model or estimator) and updated in place,
#    so coefs_ / intercepts_ always show the current weights without copies.
# h) Sample weights are renormalised per batch to sum to the batch size: the kernels' mean over M
#    then equals scikit-learn's weighted average (sum_i w_i l_i / sum_i w_i). The L2 term is, as
#    in scikit-learn, alpha / (2 sum w) ||W||^2 with the batch's own (unnormalised) sum of weights.
# i) Dropout masks come from a counter-based hash of (seed, step, layer, element), so they do not
#    depend on the thread count nor on any RNG state: a step is a pure function of its inputs.
# j) The loss is checked before the backward pass: a non-finite loss leaves the parameters and the
#    optimizer state untouched and raises FloatingPointError.
# A TrainStep is not meant to be run from two Python threads at once (the buffers are shared).

from libc.stdint cimport uint64_t, int64_t
from cython.parallel cimport prange
from libc.string cimport memcpy
from libc.math cimport isfinite
from libc.stdlib cimport calloc, free

LOSSES = ("softmax", "sigmoid", "mse")
OPTIMIZERS = ("sgd", "rmsprop", "adam")

cdef struct _Layer:
    ptrdiff_t n_in, n_out
    int act
    float *W          # [n_in, n_out] parameter (caller's array)
    float *b          # [n_out]
    float *dW         # [n_in, n_out]
    float *db         # [n_out]
    float *sW1        # optimizer state: SGD velocity, RMSProp square average, Adam m
    float *sW2        # Adam v
    float *sb1
    float *sb2
    float *Z          # [max_batch, n_out] pre-activation (kept only for gelu's backward)
    float *Y          # [max_batch, n_out] activation output
    float *A          # what the next layer reads: Y, or Y * mask with dropout
    float *mask       # [max_batch, n_out] 0 or 1 / (1 - p), or NULL
    float *D          # [max_batch, n_out] gradient of the loss w.r.t. this layer's pre-activation
    uint64_t keep     # dropout: keep an element when its 24-bit hash < keep
    float scale       # dropout: 1 / (1 - p)


cdef inline uint64_t _splitmix64(uint64_t z) noexcept nogil:
    z += <uint64_t>0x9E3779B97F4A7C15ULL
    z = (z ^ (z >> 30)) * <uint64_t>0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * <uint64_t>0x94D049BB133111EBULL
    return z ^ (z >> 31)


cdef void _dropout_forward(ptrdiff_t n, const float *y, float *mask, float *out, uint64_t keep,
                           float scale, uint64_t key) noexcept nogil:
    """mask[i] = scale if hash(key, i) keeps element i else 0; out = y * mask. y, mask, out: [n]."""
    cdef ptrdiff_t i
    for i in range(n):
        mask[i] = scale if (_splitmix64(key + <uint64_t>i) >> 40) < keep else 0.0
        out[i] = y[i] * mask[i]


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


cdef class TrainStep:
    """One minibatch training step of a dense MLP as a single native call.

    TrainStep(params, activations, loss, max_batch, *, optimizer="adam", momentum=0.9,
              nesterov=False, beta1=0.9, beta2=0.999, rho=0.9, eps=1e-8, weight_decay=0.0,
              alpha=0.0, dropout=None, seed=0)

    params: [W0, b0, W1, b1, ...], C-contiguous writable float32, W_l (n_l, n_{l+1}), b_l
        (n_{l+1},); updated in place by run().
    activations: one name per hidden layer (ACTIVATIONS); the output layer is identity (the loss
        applies softmax / sigmoid).
    loss: "softmax" (integer labels), "sigmoid" (binary / multi-label targets) or "mse".
    max_batch: the largest batch run() accepts; buffers are sized for it.
    optimizer: "sgd" (momentum, nesterov: scikit-learn's form), "rmsprop" (rho, eps) or "adam"
        (beta1, beta2, eps; weight_decay > 0 makes it AdamW).
    alpha: L2 penalty, scikit-learn's semantics: loss += alpha / (2 M) sum ||W||^2 and
        dW += alpha / M W for a batch of M rows (weights only, not biases); with sample weights,
        M is the batch's sum of weights (note h).
    dropout: None or one rate in [0, 1) per hidden layer (inverted dropout on its output).
    seed: dropout's seed.

    Attributes: t (the number of updates done; Adam's step), params, grads (the last step's
    gradients, like params), state (optimizer state arrays).
    """
    cdef _Layer *layers
    cdef int n_layers, loss_kind, opt, nesterov
    cdef readonly ptrdiff_t max_batch
    cdef public long t
    cdef double momentum, beta1, beta2, rho, eps, weight_decay, alpha
    cdef uint64_t seed
    cdef readonly list params, grads, state
    cdef readonly tuple activations, dropout
    cdef readonly str loss, optimizer
    cdef list _buffers       # keeps the activation / gradient / mask arrays alive
    cdef object _work, _xbuf, _ybuf, _wbuf
    cdef float *work
    cdef int work_threads
    cdef object _config

    def __cinit__(self, *args, **kwargs):
        self.layers = NULL

    def __dealloc__(self):
        free(self.layers)

    def __init__(self, params, activations, loss, max_batch, *, optimizer="adam", momentum=0.9,
                 nesterov=False, beta1=0.9, beta2=0.999, rho=0.9, eps=1e-8, weight_decay=0.0,
                 alpha=0.0, dropout=None, seed=0):
        params = list(params)
        if len(params) < 2 or len(params) % 2:
            raise ValueError("params must be [W0, b0, W1, b1, ...]: a weight and a bias per layer")
        cdef int L = len(params) // 2, l
        activations = tuple(activations)
        if len(activations) != L - 1:
            raise ValueError(f"activations: need one per hidden layer ({L - 1}), got "
                             f"{len(activations)}")
        for a in activations:
            _act_code(a, "activations")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
        if not isinstance(max_batch, (int, np.integer)) or max_batch < 1:
            raise ValueError(f"max_batch must be a positive integer, got {max_batch!r}")
        dropout = tuple(float(p) for p in dropout) if dropout is not None else (0.0,) * (L - 1)
        if len(dropout) != L - 1 or not all(0.0 <= p < 1.0 for p in dropout):
            raise ValueError(f"dropout: need one rate in [0, 1) per hidden layer ({L - 1}), got "
                             f"{dropout}")
        if alpha < 0 or weight_decay < 0:
            raise ValueError("alpha and weight_decay must be >= 0")
        self._config = dict(loss=loss, max_batch=int(max_batch), optimizer=optimizer,
                            momentum=momentum, nesterov=bool(nesterov), beta1=beta1, beta2=beta2,
                            rho=rho, eps=eps, weight_decay=weight_decay, alpha=alpha,
                            dropout=dropout, seed=int(seed))
        self.params, self.activations, self.dropout = params, activations, dropout
        self.loss, self.optimizer, self.max_batch = loss, optimizer, max_batch
        self.loss_kind, self.opt = LOSSES.index(loss), OPTIMIZERS.index(optimizer)
        self.momentum, self.nesterov = momentum, bool(nesterov)
        self.beta1, self.beta2, self.rho, self.eps = beta1, beta2, rho, eps
        self.weight_decay, self.alpha = weight_decay, alpha
        self.seed = <uint64_t>(int(seed) & 0xFFFFFFFFFFFFFFFF)
        self.t = 0

        free(self.layers)
        self.layers = <_Layer *>calloc(L, sizeof(_Layer))
        if self.layers == NULL:
            raise MemoryError()
        self.n_layers = L
        self.grads, self.state, self._buffers = [], [], []
        cdef _Layer *ly
        cdef float[::1] v
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
            ly = &self.layers[l]
            ly.n_in, ly.n_out = n_in, n_out
            ly.act = _act_code(activations[l], "activations") if l < L - 1 else 0
            v = _flat(W); ly.W = &v[0]
            v = b; ly.b = &v[0]
            dW, db = np.zeros_like(W), np.zeros_like(b)
            self.grads += [dW, db]
            v = _flat(dW); ly.dW = &v[0]
            v = db; ly.db = &v[0]
            n_state = 2 if optimizer == "adam" else (0 if optimizer == "sgd" and momentum == 0
                                                     else 1)
            sW = [np.zeros_like(W) for _ in range(n_state)]
            sb = [np.zeros_like(b) for _ in range(n_state)]
            self.state += sW + sb
            if n_state:
                v = _flat(sW[0]); ly.sW1 = &v[0]
                v = sb[0]; ly.sb1 = &v[0]
            if n_state == 2:
                v = _flat(sW[1]); ly.sW2 = &v[0]
                v = sb[1]; ly.sb2 = &v[0]
            ly.Y = self._buffer(max_batch * n_out)
            ly.A = ly.Y
            ly.D = self._buffer(max_batch * n_out)
            ly.Z = self._buffer(max_batch * n_out) if ly.act == 5 else NULL
            if l < L - 1 and dropout[l] > 0:
                ly.mask = self._buffer(max_batch * n_out)
                ly.A = self._buffer(max_batch * n_out)
                ly.keep = <uint64_t>round((1.0 - dropout[l]) * (1 << 24))
                ly.scale = 1.0 / (1.0 - dropout[l])
        n_out_last = self.layers[L - 1].n_out
        self._xbuf = np.empty((max_batch, self.layers[0].n_in), np.float32)
        self._ybuf = (np.empty(max_batch, np.int32) if loss == "softmax"
                      else np.empty((max_batch, n_out_last), np.float32))
        self._wbuf = np.empty(max_batch, np.float32)
        self.work_threads = 0
        self._ensure_work(_threads())

    cdef float *_buffer(self, Py_ssize_t n) except NULL:
        a = np.zeros(n, np.float32)
        self._buffers.append(a)
        cdef float[::1] v = a
        return &v[0]

    cdef int _ensure_work(self, int nthreads) except -1:
        cdef float[::1] v
        if nthreads > self.work_threads:
            self._work = np.empty(max(<Py_ssize_t>fm_matmul_work_size(nthreads), 1), np.float32)
            v = self._work
            self.work = &v[0]
            self.work_threads = nthreads
        return 0

    def __reduce__(self):
        # Pickle the parameters (shared with the owner: pickle's memo keeps them the same
        # objects), the configuration, the step count and the optimizer state.
        cfg = dict(self._config)
        args = (self.params, self.activations, cfg.pop("loss"), cfg.pop("max_batch"))
        return (_rebuild_train_step, (args, cfg, self.t, self.state))

    def run(self, X, y, sample_weight=None, *, lr, index=None):
        """One training step on a batch; returns the batch loss (with the L2 penalty).

        X: float32 (n, n_in); y: int (n,) labels in [0, n_out) for "softmax", else float32
        (n, n_out) targets; sample_weight: float32 (n,) or None.
        index: None (the batch is all of X, at most max_batch rows), or integer (M,) row
        indices gathered from X, y and sample_weight inside the native call (no copy in Python).
        lr: the learning rate of this step.
        Raises FloatingPointError, without updating anything, if the loss is not finite.
        """
        X = _input(X, "X", 2)
        cdef Py_ssize_t n = X.shape[0], n_in = self.layers[0].n_in
        cdef Py_ssize_t n_out = self.layers[self.n_layers - 1].n_out
        if X.shape[1] != n_in:
            raise ValueError(f"X must have {n_in} columns, got {X.shape[1]}")
        cdef bint soft = self.loss_kind == 0
        if soft:
            if not isinstance(y, np.ndarray) or y.dtype != np.int32 or y.shape != (n,):
                raise TypeError(f"y must be an int32 array of shape ({n},) of labels")
            y = np.ascontiguousarray(y)
        else:
            y = _input_shaped(y, "y", (n, n_out))
        w = _weights(sample_weight, n)
        cdef const Py_ssize_t[::1] idx
        cdef bint gather = index is not None
        if gather:
            index = np.ascontiguousarray(index, dtype=np.intp)
            if index.ndim != 1:
                raise ValueError("index must be 1-D")
            if index.shape[0] and (index.min() < 0 or index.max() >= n):
                raise IndexError(f"index out of range for {n} rows")
            idx = index
        cdef Py_ssize_t M = index.shape[0] if gather else n
        if M < 1 or M > self.max_batch:
            raise ValueError(f"batch size must be in [1, {self.max_batch}], got {M}")
        if soft and M and not gather and (y.min() < 0 or y.max() >= n_out):
            raise ValueError(f"labels must be in [0, {n_out})")
        cdef int nt = _threads()
        self._ensure_work(nt)
        cdef const float[::1] x_v = _flat(X)
        cdef const int32_t[::1] lab_v
        cdef const float[::1] t_v
        cdef const float[::1] w_v
        cdef float[::1] xb = _flat(self._xbuf)
        cdef float[::1] wb = self._wbuf
        cdef int32_t[::1] lb
        cdef float[::1] tb
        cdef const float *px = &x_v[0]
        cdef const void *py
        cdef float *pw = NULL
        if soft:
            lab_v = y
            lb = self._ybuf
            py = &lab_v[0]
        else:
            t_v = _flat(y)
            tb = _flat(self._ybuf)
            py = &t_v[0]
        cdef bint has_w = w is not None
        if has_w:
            w_v = w
        cdef double lr_ = lr, loss = 0
        cdef int status = FM_OK
        cdef Py_ssize_t r
        cdef double wsum, l2_rows = M
        with nogil:
            if gather:
                # rows of a shuffled epoch are scattered over X (tens of MB, beyond the caches):
                # one thread copying a batch of 128 took 56-86 us (3-4% of a step), two 31-46
                for r in prange(M, num_threads=nt, schedule="static"):
                    memcpy(&xb[r * n_in], px + idx[r] * n_in, n_in * sizeof(float))
                    if soft:
                        lb[r] = (<const int32_t *>py)[idx[r]]
                    else:
                        memcpy(&tb[r * n_out], <const float *>py + idx[r] * n_out,
                               n_out * sizeof(float))
                    if has_w:
                        wb[r] = w_v[idx[r]]
                px = &xb[0]
                py = &lb[0] if soft else <const void *>&tb[0]
            if has_w:
                # note h: weights renormalised to sum to M (all-zero weights: no gradient)
                wsum = 0
                for r in range(M):
                    wsum += (wb[r] if gather else w_v[r])
                for r in range(M):
                    wb[r] = <float>((wb[r] if gather else w_v[r]) * (M / wsum)) if wsum else 0
                pw = &wb[0]
                if wsum:
                    l2_rows = wsum
            status = self._step(M, px, py, pw, lr_, l2_rows, &loss, nt)
        if status == FM_EINVAL:
            raise ValueError(f"labels must be in [0, {n_out})")
        if status == FM_ENOMEM:
            raise MemoryError("TrainStep: could not allocate GEMM buffers")
        if not isfinite(loss):
            raise FloatingPointError(f"the loss became {loss} at step {self.t + 1}; the "
                                     "parameters were not updated")
        return loss

    cdef int _step(self, ptrdiff_t M, const float *X, const void *y, const float *w, double lr,
                   double l2_rows, double *loss, int nt) noexcept nogil:
        cdef int L = self.n_layers, l, status
        cdef _Layer *ly
        cdef _Layer *prev
        cdef const float *inp = X
        cdef fm_epilogue ep
        cdef uint64_t key
        cdef double sq = 0, l2 = self.alpha / l2_rows
        # forward: hidden layers fuse bias + activation in the GEMM epilogue; gelu keeps Z
        for l in range(L):
            ly = &self.layers[l]
            ep.bias = ly.b; ep.act = ly.act; ep.grad_act = 0; ep.slope = 0.01
            ep.y = NULL; ep.ldy = ly.n_out; ep.z = NULL; ep.ldz = ly.n_out
            if ly.Z != NULL:
                ep.act = 0
            status = fm_matmul(0, 0, M, ly.n_out, ly.n_in, 1.0, inp, ly.n_in, ly.W, ly.n_out, 0.0,
                              ly.Z if ly.Z != NULL else ly.Y, ly.n_out, &ep, self.work, nt)
            if status != FM_OK:
                return status
            if ly.Z != NULL:
                fm_bias_activation(M, ly.n_out, ly.Z, NULL, ly.act, 0.01, ly.Y, nt)
            if ly.mask != NULL:
                key = _splitmix64(_splitmix64(self.seed) ^ ((<uint64_t>self.t << 16) | <uint64_t>l))
                _dropout_forward(M * ly.n_out, ly.Y, ly.mask, ly.A, ly.keep, ly.scale, key)
            inp = ly.A
        # loss and its gradient w.r.t. the output pre-activation, in one pass
        ly = &self.layers[L - 1]
        if self.loss_kind == 0:
            status = fm_softmax_cross_entropy(M, ly.n_out, ly.Y, <const int32_t *>y, w, ly.D, loss, nt)
        elif self.loss_kind == 1:
            status = fm_sigmoid_cross_entropy(M, ly.n_out, ly.Y, <const float *>y, w, ly.D, loss, nt)
        else:
            status = fm_mse_loss(M, ly.n_out, ly.Y, <const float *>y, w, ly.D, loss, nt)
        if status != FM_OK:
            return status
        if self.alpha > 0:
            for l in range(L):
                sq += _sum_squares(self.layers[l].n_in * self.layers[l].n_out, self.layers[l].W)
            loss[0] += 0.5 * l2 * sq
        if not isfinite(loss[0]):
            return FM_OK        # note j: nothing updated; run() raises
        self.t += 1
        # backward, updating each layer once its weights are no longer needed
        for l in range(L - 1, -1, -1):
            ly = &self.layers[l]
            inp = X if l == 0 else self.layers[l - 1].A
            status = fm_matmul(1, 0, ly.n_in, ly.n_out, M, 1.0, inp, ly.n_in, ly.D, ly.n_out, 0.0,
                              ly.dW, ly.n_out, NULL, self.work, nt)
            if status != FM_OK:
                return status
            fm_bias_grad(M, ly.n_out, ly.D, ly.db, nt)
            if l > 0:
                # dZ_prev = (D W^T) * act'(.), fused; then dropout's mask
                prev = &self.layers[l - 1]
                ep.bias = NULL; ep.act = 0; ep.grad_act = prev.act; ep.slope = 0.01
                ep.y = prev.Y; ep.ldy = prev.n_out; ep.z = prev.Z; ep.ldz = prev.n_out
                status = fm_matmul(0, 1, M, prev.n_out, ly.n_out, 1.0, ly.D, ly.n_out, ly.W,
                                  ly.n_out, 0.0, prev.D, prev.n_out, &ep, self.work, nt)
                if status != FM_OK:
                    return status
                if prev.mask != NULL:
                    _mul_inplace(M * prev.n_out, prev.D, prev.mask)
            self._update(ly.n_in * ly.n_out, ly.W, ly.dW, ly.sW1, ly.sW2, lr, l2, nt)
            self._update(ly.n_out, ly.b, ly.db, ly.sb1, ly.sb2, lr, 0.0, nt)
        return FM_OK

    cdef void _update(self, ptrdiff_t n, float *p, const float *g, float *s1, float *s2,
                      double lr, double l2, int nt) noexcept nogil:
        if self.opt == 0:
            fm_sgd_update(n, p, g, lr, l2, self.momentum, self.nesterov, s1, nt)
        elif self.opt == 1:
            fm_rmsprop_update(n, p, g, s1, lr, self.rho, self.eps, l2, nt)
        else:
            fm_adam_update(n, p, g, s1, s2, self.t, lr, self.beta1, self.beta2, self.eps, l2,
                    self.weight_decay, nt)


cdef void _mul_inplace(ptrdiff_t n, float *x, const float *m) noexcept nogil:
    cdef ptrdiff_t i
    for i in range(n):
        x[i] = x[i] * m[i]


def _rebuild_train_step(args, config, t, state):
    # Unpickled parameters may be read-only (joblib memory-maps them): train on copies then; the
    # estimators notice the copies are not their coefs_ and rebuild around their own arrays.
    params = [p if p.flags.writeable else p.copy() for p in args[0]]
    step = TrainStep(params, *args[1:], **config)
    for dst, src in zip(step.state, state):
        dst[...] = src
    step.t = t
    return step


def dropout_mask(Py_ssize_t n_rows, Py_ssize_t n_cols, double p, seed, long step, int layer):
    """The inverted-dropout mask TrainStep uses: float32 (n_rows, n_cols) of 0 and 1 / (1 - p),
    a pure function of (seed, step, layer, element) (note i). step: updates done before this one
    (TrainStep.t); layer: the hidden layer's index from 0."""
    if not 0 <= p < 1:
        raise ValueError(f"dropout rate must be in [0, 1), got {p}")
    mask = np.empty((n_rows, n_cols), np.float32)
    ones = np.ones((n_rows, n_cols), np.float32)
    cdef float[::1] m_v = _flat(mask)
    cdef float[::1] o_v = _flat(ones)
    cdef uint64_t s = <uint64_t>(int(seed) & 0xFFFFFFFFFFFFFFFF)
    cdef uint64_t key = _splitmix64(_splitmix64(s) ^ ((<uint64_t>step << 16) | <uint64_t>layer))
    cdef uint64_t keep = <uint64_t>round((1.0 - p) * (1 << 24))
    cdef float scale = 1.0 / (1.0 - p)
    if mask.size:
        with nogil:
            _dropout_forward(n_rows * n_cols, &o_v[0], &m_v[0], &o_v[0], keep, scale, key)
    return mask


def _swap_num_threads(n):
    """Set the thread count like set_num_threads(n) (None: default policy) and return the
    previous setting, so a caller can restore it exactly (the estimators' n_threads)."""
    old = _requested if _requested > 0 else None
    set_num_threads(n)
    return old
