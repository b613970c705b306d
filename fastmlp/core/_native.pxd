# The native interface of fastmlp's compiled core (_native.pyx) for other Cython modules:
# TrainStep's phases, callable without the GIL. A caller cimports TrainStep from here and, with
# the GIL, validates a batch once (_validate); then, with or without it, runs
#     _load -> _forward -> _backward -> [anything on flat_grads] -> _update
# as TrainStep.run does when it does not fuse the update into backward (design notes in
# _train_step.pxi, p in particular).

from libc.stdint cimport int32_t, int64_t, uint64_t

cdef enum:                   # _Layer.norm: the normalization before a hidden layer's activation
    _NORM_NONE = 0
    _NORM_LAYER = 1          # fm_layernorm_*
    _NORM_BATCH = 2          # fm_batchnorm_*

cdef struct _Layer:
    ptrdiff_t n_in, n_out
    int act           # FM_ACT_* of its output; the last layer's is FM_ACT_IDENTITY
    float *W          # [n_in, n_out] in the flat parameter buffer
    float *b          # [n_out]
    float *dW         # [n_in, n_out] in the flat gradient buffer
    float *db         # [n_out]
    float *Z          # [max_batch, n_out] pre-activation (kept only for gelu's backward)
    float *Y          # [max_batch, n_out] activation output
    float *A          # what the next layer reads: Y, or Y * mask with dropout
    float *mask       # [max_batch, n_out] 0 or 1 / (1 - p), or NULL
    float *D          # [max_batch, n_out] gradient of the loss w.r.t. this layer's pre-activation
    uint64_t keep     # dropout: keep an element when its 24-bit hash < keep
    float scale       # dropout: 1 / (1 - p)
    int norm          # _NORM_*; the rest is set for a normalized layer only (note m):
    float *H          # [max_batch, n_out] the GEMM's output, the norm's input
    float *gamma      # [n_out] in the flat parameter buffer
    float *beta
    float *dgamma     # [n_out] in the flat gradient buffer
    float *dbeta
    float *mean       # [max_batch] per row (layer), [n_out] per column (batch)
    float *rstd
    float *run_mean   # [n_out] batch: the running statistics (the caller's arrays)
    float *run_var
    bint stepped      # run(): W already took this step's update in backward (note p)

# A batch as given, validated: the caller's arrays (their owner keeps them alive).
cdef struct _Input:
    ptrdiff_t rows        # rows of X
    ptrdiff_t M           # batch size: rows, or the length of idx
    const float *X        # [rows, n_in]
    const void *y         # int32 [rows] labels (softmax_cross_entropy), else float32 [rows, n_out]
    const float *w        # [rows] sample weights, or NULL
    const Py_ssize_t *idx # [M] rows of X making the batch, or NULL for all of X
    const int64_t *indptr # a sparse X (note l of _train_step.pxi): its CSR arrays, X NULL;
    const int32_t *indices #   NULL for a dense X
    const float *data

cdef class TrainStep:
    cdef _Layer *layers
    cdef int n_layers, loss_kernel, update_kernel, nesterov
    cdef readonly ptrdiff_t max_batch, n_params, n_weights, n_layer_params
    cdef public long t
    cdef double momentum, beta1, beta2, rho, eps, weight_decay, alpha
    cdef uint64_t seed
    cdef readonly list params, grads, state
    cdef readonly object flat_params, flat_grads
    cdef readonly tuple activations, dropout, normalization
    cdef readonly list running_stats
    cdef readonly double norm_eps, norm_momentum, clip, grad_norm
    cdef bint norm_decay, measure_norm
    cdef readonly object fuse_update # run() steps each W in the product of its gradient (note p)
    cdef void *fusing        # during run(): the fm_update that _backward fuses (note p), or NULL
    cdef readonly str loss, optimizer
    cdef float *p_flat
    cdef float *g_flat
    cdef float *s1_flat      # optimizer state: SGD velocity, RMSProp square average, Adam m
    cdef float *s2_flat      # Adam v
    cdef list _buffers       # keeps the activation / gradient / mask arrays alive
    cdef list _outputs       # the hidden layers' Y as arrays (layer_outputs)
    cdef object _work, _xbuf, _ybuf, _wbuf, _batch_refs, _sparse_src, _sparse_arrays
    cdef float *xbuf          # the gathered batch: rows of X, its targets, its sample weights
    cdef void *ybuf
    cdef float *wbuf
    cdef float *work
    cdef size_t work_floats
    cdef object _config
    # the batch of the last _load
    cdef ptrdiff_t M
    cdef const float *X
    cdef const void *y
    cdef const float *w
    cdef const int64_t *sp_indptr     # a sparse X's CSR arrays (NULL: X is dense)
    cdef const int32_t *sp_indices
    cdef const float *sp_data
    cdef const ptrdiff_t *rows        # the batch's rows of a sparse X, NULL for 0 .. M-1
    cdef double batch_weight          # its sum of sample weights (M without them)
    cdef double total_weight          # > 0: the batch is a shard of one that weighs this (note o)
    cdef ptrdiff_t row_offset         # the shard's first row in its batch (dropout's keys)
    cdef double l2
    cdef readonly double penalty      # the L2 term of the last forward's loss
    cdef readonly object reduce_buffer
    cdef int phase           # _PHASE_*: which phases the current batch has been through
    cdef bint per_output_grad  # mse_loss: scikit-learn's per-output gradient (n_out times)
    cdef bint with_l2        # _forward adds the L2 penalty (loss_and_grad adds it once itself)
    cdef bint continue_nonfinite  # a non-finite loss does not stop the step (note j)

    cdef float *_buffer(self, Py_ssize_t n) except NULL
    cdef int _ensure_work(self, int nthreads) except -1
    cdef int _raise(self, int status) except -1
    cdef int _validate(self, X, y, sample_weight, index, _Input *inp,
                       bint all_rows=*, bint allow_empty=*) except -1
    cdef int _shard(self, row_offset, total_weight) except -1
    cdef int _load(self, const _Input *inp, int nt) noexcept nogil
    cdef int _forward(self, double *loss, int nt) noexcept nogil
    cdef int _backward(self, int nt) noexcept nogil
    cdef int _update(self, double lr, int nt) noexcept nogil
    cdef int _loss_and_grad(self, const _Input *inp, double *acc, double *loss,
                            double divide_by, bint penalty, int nt) noexcept nogil
    cdef void _update_range(self, ptrdiff_t lo, ptrdiff_t hi, double lr, double l2, double wd,
                            int nt) noexcept nogil
