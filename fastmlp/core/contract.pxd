# The C contract (csrc/fastmlp.h) as Cython sees it: its constants, enums, structs and entry
# points, declared once. Every Cython file of the package cimports what it needs from here; the
# meaning of each declaration is documented in the header, not repeated.

from libc.stdint cimport int32_t, int64_t

cdef extern from "fastmlp.h" nogil:
    enum:
        FM_OK
        FM_EINVAL
        FM_ENOMEM
        FM_MAX_THREADS

    enum:
        FM_ACT_IDENTITY
        FM_ACT_RELU
        FM_ACT_LEAKY_RELU
        FM_ACT_TANH
        FM_ACT_LOGISTIC
        FM_ACT_GELU
        FM_ACT_COUNT

    enum:
        FM_ISA_GENERIC
        FM_ISA_AVX2
        FM_ISA_AVX512
        FM_ISA_NEON
        FM_ISA_COUNT

    enum:
        FM_VENDOR_OTHER
        FM_VENDOR_INTEL
        FM_VENDOR_AMD

    enum:
        FM_PATH_BLOCKED
        FM_PATH_BLOCKED_CT
        FM_PATH_DOT
        FM_PATH_COUNT

    enum:
        FM_K_MATMUL
        FM_K_BIAS_ACTIVATION
        FM_K_ACTIVATION_BACKWARD
        FM_K_BIAS_GRAD
        FM_K_SOFTMAX_CROSS_ENTROPY
        FM_K_SIGMOID_CROSS_ENTROPY
        FM_K_MSE_LOSS
        FM_K_SGD_UPDATE
        FM_K_RMSPROP_UPDATE
        FM_K_ADAM_UPDATE
        FM_K_POISSON_LOSS
        FM_K_SPARSE_MATMUL
        FM_K_SPARSE_MATMUL_TN
        FM_K_LAYERNORM_FORWARD
        FM_K_LAYERNORM_BACKWARD
        FM_K_BATCHNORM_FORWARD
        FM_K_BATCHNORM_BACKWARD
        FM_K_CLIP_GRAD_NORM
        FM_K_COUNT

    enum:
        FM_PROF_TRANS_A
        FM_PROF_TRANS_B
        FM_PROF_BIAS
        FM_PROF_MOMENTUM
        FM_PROF_NESTEROV
        FM_PROF_WEIGHT_DECAY
        FM_PROF_TRAINING
        FM_PROF_UPDATE

    ctypedef struct fm_update:
        int kernel
        float *p
        float *s1
        float *s2
        long step
        double lr, l2, momentum, rho, beta1, beta2, eps, weight_decay
        int nesterov

    ctypedef struct fm_epilogue:
        const float *bias
        int act
        int grad_act
        float slope
        const float *y
        ptrdiff_t ldy
        const float *z
        ptrdiff_t ldz
        const fm_update *update

    ctypedef struct fm_matmul_plan:
        int path
        int threads
        int split_n
        int pack_b
        int kc, mc, nc
        size_t a_floats
        size_t b_floats
        size_t work_floats

    ctypedef struct fm_prof_entry:
        int kernel
        int act
        int grad_act
        int path
        int flags
        ptrdiff_t m, n, k
        long calls
        double seconds, flops, bytes

    # GEMM
    int fm_matmul(int trans_a, int trans_b, ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, float alpha,
                  const float *A, ptrdiff_t lda, const float *B, ptrdiff_t ldb, float beta,
                  float *C, ptrdiff_t ldc, const fm_epilogue *ep, float *work,
                  size_t work_floats, int nthreads)
    int fm_plan_matmul(int trans_a, int trans_b, ptrdiff_t M, ptrdiff_t N, ptrdiff_t K,
                       ptrdiff_t lda, ptrdiff_t ldb, int nthreads, fm_matmul_plan *plan)

    # sparse first layer
    int fm_sparse_matmul(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const int64_t *indptr,
                         const int32_t *indices, const float *data, const ptrdiff_t *rows,
                         const float *B, ptrdiff_t ldb, float *C, ptrdiff_t ldc,
                         const fm_epilogue *ep, int nthreads)
    int fm_sparse_matmul_tn(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const int64_t *indptr,
                            const int32_t *indices, const float *data, const ptrdiff_t *rows,
                            const float *D, ptrdiff_t ldd, float *C, ptrdiff_t ldc, int nthreads)

    # activations
    void fm_bias_activation(ptrdiff_t M, ptrdiff_t N, const float *Z, const float *bias, int act,
                            float slope, float *Y, int nthreads)
    void fm_activation_backward(ptrdiff_t M, ptrdiff_t N, const float *dY, const float *Y,
                                const float *Z, int act, float slope, float *dZ, int nthreads)
    void fm_bias_grad(ptrdiff_t M, ptrdiff_t N, const float *dZ, float *db, int nthreads)

    # normalization (fused with the activation after it) and gradient clipping
    void fm_layernorm_forward(ptrdiff_t M, ptrdiff_t N, const float *H, const float *gamma,
                              const float *beta, double eps, int act, float slope, float *Y,
                              float *mean, float *rstd, int nthreads)
    void fm_layernorm_backward(ptrdiff_t M, ptrdiff_t N, const float *dY, const float *Y,
                               const float *H, const float *gamma, const float *beta,
                               const float *mean, const float *rstd, int act, float slope,
                               float *dH, float *dgamma, float *dbeta, int nthreads)
    void fm_batchnorm_forward(ptrdiff_t M, ptrdiff_t N, const float *H, const float *gamma,
                              const float *beta, double eps, int training, double momentum,
                              float *running_mean, float *running_var, int act, float slope,
                              float *Y, float *mean, float *rstd, int nthreads)
    void fm_batchnorm_backward(ptrdiff_t M, ptrdiff_t N, const float *dY, const float *Y,
                               const float *H, const float *gamma, const float *beta,
                               const float *mean, const float *rstd, int act, float slope,
                               float *dH, float *dgamma, float *dbeta, int nthreads)
    double fm_clip_grad_norm(ptrdiff_t n, float *g, double max_norm, int nthreads)

    # losses
    int fm_softmax_cross_entropy(ptrdiff_t M, ptrdiff_t N, const float *Z, const int32_t *labels,
                                 const float *w, float *dZ, double *loss, int nthreads)
    int fm_sigmoid_cross_entropy(ptrdiff_t M, ptrdiff_t N, const float *Z, const float *T,
                                 const float *w, float *dZ, double *loss, int nthreads)
    int fm_mse_loss(ptrdiff_t M, ptrdiff_t N, const float *P, const float *T, const float *w,
                    float *dP, double *loss, int nthreads)
    int fm_poisson_loss(ptrdiff_t M, ptrdiff_t N, const float *Z, const float *T, const float *w,
                        float *dZ, double *loss, int nthreads)

    # optimizer updates
    void fm_sgd_update(ptrdiff_t n, float *p, const float *g, double lr, double l2,
                       double momentum, int nesterov, float *vel, int nthreads)
    void fm_rmsprop_update(ptrdiff_t n, float *p, const float *g, float *sq, double lr,
                           double rho, double eps, double l2, int nthreads)
    void fm_adam_update(ptrdiff_t n, float *p, const float *g, float *m, float *v, long step,
                        double lr, double b1, double b2, double eps, double l2, double wd,
                        int nthreads)

    # dispatch
    int fm_cpu_supports(int isa)
    int fm_set_isa(int isa)
    int fm_get_isa()
    int fm_cpu_vendor()
    int fm_get_blocks(int isa, int *mr, int *nr, int *kc, int *mc, int *nc)
    int fm_set_blocks(int isa, int kc, int mc, int nc)
    double fm_measure_peak_gflops(double seconds, int nthreads)

    # profiling
    int fm_profile_start()
    int fm_profile_stop(fm_prof_entry *out, int capacity)

    # names
    const char *fm_activation_name(int act)
    const char *fm_isa_name(int isa)
    const char *fm_path_name(int path)
    const char *fm_kernel_name(int kernel)


cdef extern from "pool.h" nogil:
    ctypedef void (*fm_task_fn)(void *ctx, ptrdiff_t task, int slot) noexcept nogil
    void fm_pool_run(int n_threads, ptrdiff_t n_tasks, fm_task_fn fn, void *ctx)
