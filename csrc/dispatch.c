/* dispatch.c: run-time choice of the ISA path, and the public entry points of fastmlp.h, each a
 * call through the active table. The table is chosen once at import (the Python layer reads
 * FASTMLP_ISA and calls fm_set_isa); tests switch it to cover every path in one run. The AVX2 and
 * AVX-512 tables exist on x86-64 only, the NEON one on aarch64 only; elsewhere the generic path
 * is the one there is. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels.h"

#if defined(__x86_64__)
static fm_kernels *const tables[FM_ISA_COUNT] = {
    [FM_ISA_GENERIC] = &fm_kernels_generic, [FM_ISA_AVX2] = &fm_kernels_avx2,
    [FM_ISA_AVX512] = &fm_kernels_avx512};
#elif defined(__aarch64__)
static fm_kernels *const tables[FM_ISA_COUNT] = {
    [FM_ISA_GENERIC] = &fm_kernels_generic, [FM_ISA_NEON] = &fm_kernels_neon};
#else
static fm_kernels *const tables[FM_ISA_COUNT] = {[FM_ISA_GENERIC] = &fm_kernels_generic};
#endif

/* Starts at the generic path so that a kernel called before fm_set_isa is still correct. */
static fm_kernels *active = &fm_kernels_generic;

int fm_cpu_supports(int isa)
{
    if (isa == FM_ISA_GENERIC) return 1;
#if defined(__x86_64__)
    /* __builtin_cpu_supports also checks that the OS saves the wider registers (xgetbv). */
    __builtin_cpu_init();
    if (isa == FM_ISA_AVX2) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (isa == FM_ISA_AVX512)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
#elif defined(__aarch64__)
    if (isa == FM_ISA_NEON) return 1; /* baseline of the architecture */
#endif
    return 0;
}

int fm_cpu_vendor(void)
{
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_is("intel")) return FM_VENDOR_INTEL;
    if (__builtin_cpu_is("amd")) return FM_VENDOR_AMD;
#endif
    return FM_VENDOR_OTHER;
}

int fm_set_isa(int isa)
{
    if (isa < 0 || isa >= FM_ISA_COUNT || !fm_cpu_supports(isa)) return FM_EINVAL;
    __atomic_store_n(&active, tables[isa], __ATOMIC_RELEASE);
    return FM_OK;
}

int fm_get_isa(void) { return active->isa; }

/* The table of an ISA this build has, else NULL. */
static fm_kernels *table(int isa) { return isa >= 0 && isa < FM_ISA_COUNT ? tables[isa] : NULL; }

int fm_get_blocks(int isa, int *mr, int *nr, int *kc, int *mc, int *nc)
{
    const fm_kernels *k = table(isa);
    if (!k) return FM_EINVAL;
    *mr = k->mr, *nr = k->nr, *kc = k->kc, *mc = k->mc, *nc = k->nc;
    return FM_OK;
}

int fm_set_blocks(int isa, int kc, int mc, int nc)
{
    fm_kernels *k = table(isa);
    if (!k || kc < 1 || kc > 8192 || mc < 1 || mc > 8192 || nc < 1 || nc > 65536) return FM_EINVAL;
    k->kc = kc, k->mc = mc, k->nc = nc;
    return FM_OK;
}

static inline const fm_kernels *cur(void) { return __atomic_load_n(&active, __ATOMIC_ACQUIRE); }

/* Rule 3: a thread count, clamped to [1, FM_MAX_THREADS]. */
static inline int threads(int n) { return n < 1 ? 1 : n > FM_MAX_THREADS ? FM_MAX_THREADS : n; }

/* ---- Names (fastmlp.h): designated initializers tie each name to its enum value ---- */

static const char *const activation_names[FM_ACT_COUNT] = {
    [FM_ACT_IDENTITY] = "identity", [FM_ACT_RELU] = "relu", [FM_ACT_LEAKY_RELU] = "leaky_relu",
    [FM_ACT_TANH] = "tanh", [FM_ACT_LOGISTIC] = "logistic", [FM_ACT_GELU] = "gelu"};
static const char *const isa_names[FM_ISA_COUNT] = {
    [FM_ISA_GENERIC] = "generic", [FM_ISA_AVX2] = "avx2", [FM_ISA_AVX512] = "avx512",
    [FM_ISA_NEON] = "neon"};
static const char *const path_names[FM_PATH_COUNT] = {
    [FM_PATH_BLOCKED] = "blocked", [FM_PATH_BLOCKED_CT] = "blocked_ct", [FM_PATH_DOT] = "dot"};
static const char *const kernel_names[FM_K_COUNT] = {
    [FM_K_MATMUL] = "matmul", [FM_K_BIAS_ACTIVATION] = "bias_activation",
    [FM_K_ACTIVATION_BACKWARD] = "activation_backward", [FM_K_BIAS_GRAD] = "bias_grad",
    [FM_K_SOFTMAX_CROSS_ENTROPY] = "softmax_cross_entropy",
    [FM_K_SIGMOID_CROSS_ENTROPY] = "sigmoid_cross_entropy", [FM_K_MSE_LOSS] = "mse_loss",
    [FM_K_SGD_UPDATE] = "sgd_update", [FM_K_RMSPROP_UPDATE] = "rmsprop_update",
    [FM_K_ADAM_UPDATE] = "adam_update", [FM_K_POISSON_LOSS] = "poisson_loss",
    [FM_K_SPARSE_MATMUL] = "sparse_matmul", [FM_K_SPARSE_MATMUL_TN] = "sparse_matmul_tn",
    [FM_K_LAYERNORM_FORWARD] = "layernorm_forward",
    [FM_K_LAYERNORM_BACKWARD] = "layernorm_backward",
    [FM_K_BATCHNORM_FORWARD] = "batchnorm_forward",
    [FM_K_BATCHNORM_BACKWARD] = "batchnorm_backward", [FM_K_CLIP_GRAD_NORM] = "clip_grad_norm"};

static const char *name_of(const char *const *names, int count, int i)
{
    return i >= 0 && i < count && names[i] ? names[i] : "unknown";
}

const char *fm_activation_name(int act) { return name_of(activation_names, FM_ACT_COUNT, act); }
const char *fm_isa_name(int isa) { return name_of(isa_names, FM_ISA_COUNT, isa); }
const char *fm_path_name(int path) { return name_of(path_names, FM_PATH_COUNT, path); }
const char *fm_kernel_name(int kernel) { return name_of(kernel_names, FM_K_COUNT, kernel); }

/* ---- Profiling (fastmlp.h): a fixed table behind a mutex; the entries below test `profiling`
 * with one atomic load and go straight to the kernel when it is off. ---- */

#define PROF_SLOTS 512
static int profiling;
static pthread_mutex_t prof_lock = PTHREAD_MUTEX_INITIALIZER;
static fm_prof_entry prof_table[PROF_SLOTS];
static int prof_used;

static inline int prof_on(void) { return __atomic_load_n(&profiling, __ATOMIC_RELAXED); }

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static fm_prof_entry prof_overflow[FM_K_COUNT]; /* shapes beyond the table, per kernel */

/* What a call is recorded under: the kernel, its variant and its shape. */
typedef struct {
    int kernel, act, grad_act, path, flags;
    ptrdiff_t m, n, k;
} prof_key;

static int same_key(const fm_prof_entry *e, const prof_key *key)
{
    return e->kernel == key->kernel && e->act == key->act && e->grad_act == key->grad_act &&
           e->path == key->path && e->flags == key->flags && e->m == key->m && e->n == key->n &&
           e->k == key->k;
}

static void prof_add(const prof_key *key, double seconds, double flops, double bytes)
{
    pthread_mutex_lock(&prof_lock);
    if (profiling) {
        fm_prof_entry *e = NULL;
        for (int i = 0; i < prof_used && !e; i++)
            if (same_key(&prof_table[i], key)) e = &prof_table[i];
        if (!e && prof_used < PROF_SLOTS) {
            e = &prof_table[prof_used++];
            *e = (fm_prof_entry){key->kernel, key->act, key->grad_act, key->path, key->flags,
                                 key->m, key->n, key->k, 0, 0.0, 0.0, 0.0};
        }
        if (!e) e = &prof_overflow[key->kernel];
        e->calls++;
        e->seconds += seconds;
        e->flops += flops;
        e->bytes += bytes;
    }
    pthread_mutex_unlock(&prof_lock);
}

int fm_profile_start(void)
{
    int status = FM_OK;
    pthread_mutex_lock(&prof_lock);
    if (profiling) {
        status = FM_EINVAL;
    } else {
        prof_used = 0;
        for (int i = 0; i < FM_K_COUNT; i++)
            prof_overflow[i] = (fm_prof_entry){i, FM_ACT_IDENTITY, FM_ACT_IDENTITY, -1, 0,
                                               -1, -1, -1, 0, 0.0, 0.0, 0.0};
        __atomic_store_n(&profiling, 1, __ATOMIC_RELAXED);
    }
    pthread_mutex_unlock(&prof_lock);
    return status;
}

int fm_profile_stop(fm_prof_entry *out, int capacity)
{
    pthread_mutex_lock(&prof_lock);
    __atomic_store_n(&profiling, 0, __ATOMIC_RELAXED);
    int n = 0;
    for (int i = 0; i < prof_used && n < capacity; i++) out[n++] = prof_table[i];
    for (int i = 0; i < FM_K_COUNT && n < capacity; i++)
        if (prof_overflow[i].calls) out[n++] = prof_overflow[i];
    pthread_mutex_unlock(&prof_lock);
    return n;
}

/* Times `call` and records it under `key` when profiling is on. */
#define PROFILED(key, flops, bytes, call)                                                    \
    do {                                                                                     \
        if (!prof_on()) {                                                                    \
            call;                                                                            \
        } else {                                                                             \
            double t0_ = now();                                                              \
            call;                                                                            \
            prof_add(&(key), now() - t0_, (double)(flops), (double)(bytes));                 \
        }                                                                                    \
    } while (0)

/* The key of an elementwise kernel's call: a kernel, an activation, flags and an M x N shape. */
#define KEY(kernel, act, flags, m, n) ((prof_key){kernel, act, FM_ACT_IDENTITY, -1, flags, m, n, 0})

#define F4 4.0 /* bytes per float */

int fm_plan_matmul(int trans_a, int trans_b, ptrdiff_t M, ptrdiff_t N, ptrdiff_t K,
                   ptrdiff_t lda, ptrdiff_t ldb, int nthreads, fm_matmul_plan *plan)
{
    return cur()->plan_matmul(trans_a, trans_b, M, N, K, lda, ldb, threads(nthreads), plan);
}

int fm_matmul(int trans_a, int trans_b, ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, float alpha,
              const float *A, ptrdiff_t lda, const float *B, ptrdiff_t ldb, float beta, float *C,
              ptrdiff_t ldc, const fm_epilogue *ep, float *work, size_t work_floats, int nthreads)
{
    const fm_kernels *k = cur();
    nthreads = threads(nthreads);
    if (!prof_on())
        return k->matmul(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, ep, work,
                         work_floats, nthreads);
    fm_matmul_plan plan; /* the plan is pure: computing it again only to name the path */
    k->plan_matmul(trans_a, trans_b, M, N, K, lda, ldb, nthreads, &plan);
    prof_key key = {FM_K_MATMUL, ep ? ep->act : FM_ACT_IDENTITY,
                    ep ? ep->grad_act : FM_ACT_IDENTITY, plan.path,
                    (trans_a ? FM_PROF_TRANS_A : 0) | (trans_b ? FM_PROF_TRANS_B : 0) |
                        (ep && ep->bias ? FM_PROF_BIAS : 0) |
                        (ep && ep->update ? FM_PROF_UPDATE : 0),
                    M, N, K};
    double mn = (double)M * (double)N;
    double bytes = F4 * ((double)M * K + (double)K * N + mn * (beta != 0.0f ? 2 : 1) +
                         (ep && ep->bias ? N : 0) + (ep && ep->y ? mn : 0) + (ep && ep->z ? mn : 0));
    double flops = 2.0 * mn * (double)K;
    if (ep && ep->update) { /* the update kernel's flops and its arrays' traffic (profiler.py) */
        const fm_update *u = ep->update;
        int adam = u->kernel == FM_K_ADAM_UPDATE, rmsprop = u->kernel == FM_K_RMSPROP_UPDATE;
        int arrays = adam ? 3 : rmsprop || u->momentum != 0.0 ? 2 : 1; /* p and its state */
        flops += mn * (adam ? 14 : rmsprop ? 10 : u->momentum != 0.0 ? 6 : 4);
        bytes += F4 * 2.0 * arrays * mn;
    }
    int r;
    PROFILED(key, flops, bytes,
             r = k->matmul(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, ep,
                           work, work_floats, nthreads));
    return r;
}

/* The entries of the rows a sparse product uses: its flops are 2 nnz N. Read only when
 * profiling; the rows' indptr values are within the arrays (the kernels' precondition). */
static double rows_nnz(ptrdiff_t M, const int64_t *indptr, const ptrdiff_t *rows)
{
    if (!rows) return M > 0 ? (double)(indptr[M] - indptr[0]) : 0.0;
    double nnz = 0.0;
    for (ptrdiff_t r = 0; r < M; r++) nnz += (double)(indptr[rows[r] + 1] - indptr[rows[r]]);
    return nnz;
}

/* Bytes of a sparse product's CSR operand: indices and data of its entries (8 each), indptr
 * (one value per row and the last) and rows. */
static double csr_bytes(ptrdiff_t M, double nnz, const ptrdiff_t *rows)
{
    return 8.0 * nnz + 8.0 * ((double)M + 1) + (rows ? 8.0 * (double)M : 0.0);
}

int fm_sparse_matmul(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const int64_t *indptr,
                     const int32_t *indices, const float *data, const ptrdiff_t *rows,
                     const float *B, ptrdiff_t ldb, float *C, ptrdiff_t ldc,
                     const fm_epilogue *ep, int nthreads)
{
    const fm_kernels *k = cur();
    nthreads = threads(nthreads);
    if (!prof_on())
        return k->sparse_matmul(M, N, K, indptr, indices, data, rows, B, ldb, C, ldc, ep,
                                nthreads);
    int bias = ep && ep->bias;
    prof_key key = {FM_K_SPARSE_MATMUL, ep ? ep->act : FM_ACT_IDENTITY,
                    ep ? ep->grad_act : FM_ACT_IDENTITY, -1, bias ? FM_PROF_BIAS : 0, M, N, K};
    double nnz = rows_nnz(M, indptr, rows);
    double bytes = csr_bytes(M, nnz, rows) + F4 * ((double)K * N + (double)M * N + (bias ? N : 0));
    int r;
    PROFILED(key, 2.0 * nnz * (double)N, bytes,
             r = k->sparse_matmul(M, N, K, indptr, indices, data, rows, B, ldb, C, ldc, ep,
                                  nthreads));
    return r;
}

int fm_sparse_matmul_tn(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, const int64_t *indptr,
                        const int32_t *indices, const float *data, const ptrdiff_t *rows,
                        const float *D, ptrdiff_t ldd, float *C, ptrdiff_t ldc, int nthreads)
{
    const fm_kernels *k = cur();
    nthreads = threads(nthreads);
    if (!prof_on())
        return k->sparse_matmul_tn(M, N, K, indptr, indices, data, rows, D, ldd, C, ldc,
                                   nthreads);
    prof_key key = {FM_K_SPARSE_MATMUL_TN, FM_ACT_IDENTITY, FM_ACT_IDENTITY, -1, 0, M, N, K};
    double nnz = rows_nnz(M, indptr, rows);
    double bytes = csr_bytes(M, nnz, rows) + F4 * ((double)M * N + (double)K * N);
    int r;
    PROFILED(key, 2.0 * nnz * (double)N, bytes,
             r = k->sparse_matmul_tn(M, N, K, indptr, indices, data, rows, D, ldd, C, ldc,
                                     nthreads));
    return r;
}

void fm_bias_activation(ptrdiff_t M, ptrdiff_t N, const float *Z, const float *bias, int act,
                        float slope, float *Y, int nthreads)
{
    double mn = (double)M * (double)N;
    prof_key key = KEY(FM_K_BIAS_ACTIVATION, act, 0, M, N);
    PROFILED(key, mn * ((bias != NULL) + (act != FM_ACT_IDENTITY)), F4 * (2 * mn + (bias ? N : 0)),
             cur()->bias_activation(M, N, Z, bias, act, slope, Y, threads(nthreads)));
}

void fm_activation_backward(ptrdiff_t M, ptrdiff_t N, const float *dY, const float *Y,
                            const float *Z, int act, float slope, float *dZ, int nthreads)
{
    double mn = (double)M * (double)N;
    prof_key key = KEY(FM_K_ACTIVATION_BACKWARD, act, 0, M, N);
    PROFILED(key, mn * (act != FM_ACT_IDENTITY), F4 * mn * (2 + (Y != NULL) + (Z != NULL)),
             cur()->activation_backward(M, N, dY, Y, Z, act, slope, dZ, threads(nthreads)));
}

void fm_bias_grad(ptrdiff_t M, ptrdiff_t N, const float *dZ, float *db, int nthreads)
{
    double mn = (double)M * (double)N;
    prof_key key = KEY(FM_K_BIAS_GRAD, FM_ACT_IDENTITY, 0, M, N);
    PROFILED(key, mn, F4 * (mn + N), cur()->bias_grad(M, N, dZ, db, threads(nthreads)));
}

int fm_softmax_cross_entropy(ptrdiff_t M, ptrdiff_t N, const float *Z, const int32_t *labels,
                             const float *w, float *dZ, double *loss, int nthreads)
{
    int r;
    double mn = (double)M * (double)N;
    prof_key key = KEY(FM_K_SOFTMAX_CROSS_ENTROPY, FM_ACT_IDENTITY, 0, M, N);
    PROFILED(key, 4 * mn, F4 * (2 * mn + M + (w ? M : 0)),
             r = cur()->softmax_cross_entropy(M, N, Z, labels, w, dZ, loss, threads(nthreads)));
    return r;
}

int fm_sigmoid_cross_entropy(ptrdiff_t M, ptrdiff_t N, const float *Z, const float *T,
                             const float *w, float *dZ, double *loss, int nthreads)
{
    int r;
    double mn = (double)M * (double)N;
    prof_key key = KEY(FM_K_SIGMOID_CROSS_ENTROPY, FM_ACT_IDENTITY, 0, M, N);
    PROFILED(key, 8 * mn, F4 * (3 * mn + (w ? M : 0)),
             r = cur()->sigmoid_cross_entropy(M, N, Z, T, w, dZ, loss, threads(nthreads)));
    return r;
}

int fm_mse_loss(ptrdiff_t M, ptrdiff_t N, const float *P, const float *T, const float *w,
                float *dP, double *loss, int nthreads)
{
    int r;
    double mn = (double)M * (double)N;
    prof_key key = KEY(FM_K_MSE_LOSS, FM_ACT_IDENTITY, 0, M, N);
    PROFILED(key, 4 * mn, F4 * (3 * mn + (w ? M : 0)),
             r = cur()->mse_loss(M, N, P, T, w, dP, loss, threads(nthreads)));
    return r;
}

int fm_poisson_loss(ptrdiff_t M, ptrdiff_t N, const float *Z, const float *T, const float *w,
                    float *dZ, double *loss, int nthreads)
{
    int r;
    double mn = (double)M * (double)N;
    prof_key key = KEY(FM_K_POISSON_LOSS, FM_ACT_IDENTITY, 0, M, N);
    PROFILED(key, 8 * mn, F4 * (3 * mn + (w ? M : 0)),
             r = cur()->poisson_loss(M, N, Z, T, w, dZ, loss, threads(nthreads)));
    return r;
}

void fm_sgd_update(ptrdiff_t n, float *p, const float *g, double lr, double l2,
                   double momentum, int nesterov, float *vel, int nthreads)
{
    int with_mom = momentum != 0.0;
    prof_key key = KEY(FM_K_SGD_UPDATE, FM_ACT_IDENTITY,
                       (with_mom ? FM_PROF_MOMENTUM : 0) | (nesterov ? FM_PROF_NESTEROV : 0), 0, n);
    PROFILED(key, (double)n * (with_mom ? 6 : 4), F4 * (double)n * (with_mom ? 5 : 3),
             cur()->sgd_update(n, p, g, lr, l2, momentum, nesterov, vel, threads(nthreads)));
}

void fm_rmsprop_update(ptrdiff_t n, float *p, const float *g, float *sq, double lr,
                       double rho, double eps, double l2, int nthreads)
{
    prof_key key = KEY(FM_K_RMSPROP_UPDATE, FM_ACT_IDENTITY, 0, 0, n);
    PROFILED(key, (double)n * 10, F4 * (double)n * 5,
             cur()->rmsprop_update(n, p, g, sq, lr, rho, eps, l2, threads(nthreads)));
}

void fm_adam_update(ptrdiff_t n, float *p, const float *g, float *m, float *v, long step,
                    double lr, double b1, double b2, double eps, double l2, double wd,
                    int nthreads)
{
    int flags = wd != 0.0 ? FM_PROF_WEIGHT_DECAY : 0;
    prof_key key = KEY(FM_K_ADAM_UPDATE, FM_ACT_IDENTITY, flags, 0, n);
    PROFILED(key, (double)n * 14, F4 * (double)n * 7,
             cur()->adam_update(n, p, g, m, v, step, lr, b1, b2, eps, l2, wd, threads(nthreads)));
}

/* Normalization (formulas in fastmlp/tools/profiler.py): per element, the forward's statistics
 * take 4 flops (mean: add; variance: subtract, square, add), normalizing 2 and the affine map 2,
 * plus one for the activation; bytes count every array read or written once (a row or column
 * strip is re-read from cache, not memory). */
static double act_flops(int act) { return act != FM_ACT_IDENTITY ? 1.0 : 0.0; }

void fm_layernorm_forward(ptrdiff_t M, ptrdiff_t N, const float *H, const float *gamma,
                          const float *beta, double eps, int act, float slope, float *Y,
                          float *mean, float *rstd, int nthreads)
{
    double mn = (double)M * (double)N;
    prof_key key = KEY(FM_K_LAYERNORM_FORWARD, act, 0, M, N);
    PROFILED(key, mn * (8 + act_flops(act)), F4 * (2 * mn + 2.0 * N + 2.0 * M),
             cur()->layernorm_forward(M, N, H, gamma, beta, eps, act, slope, Y, mean, rstd,
                                      threads(nthreads)));
}

void fm_layernorm_backward(ptrdiff_t M, ptrdiff_t N, const float *dY, const float *Y,
                           const float *H, const float *gamma, const float *beta,
                           const float *mean, const float *rstd, int act, float slope, float *dH,
                           float *dgamma, float *dbeta, int nthreads)
{
    double mn = (double)M * (double)N;
    prof_key key = KEY(FM_K_LAYERNORM_BACKWARD, act, 0, M, N);
    PROFILED(key, mn * (13 + act_flops(act)),
             F4 * (mn * (3 + (Y != NULL)) + 4.0 * N + 2.0 * M),
             cur()->layernorm_backward(M, N, dY, Y, H, gamma, beta, mean, rstd, act, slope, dH,
                                       dgamma, dbeta, threads(nthreads)));
}

void fm_batchnorm_forward(ptrdiff_t M, ptrdiff_t N, const float *H, const float *gamma,
                          const float *beta, double eps, int training, double momentum,
                          float *running_mean, float *running_var, int act, float slope,
                          float *Y, float *mean, float *rstd, int nthreads)
{
    double mn = (double)M * (double)N;
    int running = running_mean && running_var;
    prof_key key = KEY(FM_K_BATCHNORM_FORWARD, act, training ? FM_PROF_TRAINING : 0, M, N);
    /* inference skips the statistics (4 flops per element) and reads the running ones */
    double flops = mn * ((training ? 8 : 4) + act_flops(act)) + (training && running ? 6.0 * N : 0);
    double bytes = F4 * (2 * mn + 4.0 * N + (training ? (running ? 4.0 * N : 0) : 2.0 * N));
    PROFILED(key, flops, bytes,
             cur()->batchnorm_forward(M, N, H, gamma, beta, eps, training, momentum, running_mean,
                                      running_var, act, slope, Y, mean, rstd, threads(nthreads)));
}

void fm_batchnorm_backward(ptrdiff_t M, ptrdiff_t N, const float *dY, const float *Y,
                           const float *H, const float *gamma, const float *beta,
                           const float *mean, const float *rstd, int act, float slope, float *dH,
                           float *dgamma, float *dbeta, int nthreads)
{
    double mn = (double)M * (double)N;
    prof_key key = KEY(FM_K_BATCHNORM_BACKWARD, act, 0, M, N);
    PROFILED(key, mn * (9 + act_flops(act)), F4 * (mn * (3 + (Y != NULL)) + 6.0 * N),
             cur()->batchnorm_backward(M, N, dY, Y, H, gamma, beta, mean, rstd, act, slope, dH,
                                       dgamma, dbeta, threads(nthreads)));
}

double fm_clip_grad_norm(ptrdiff_t n, float *g, double max_norm, int nthreads)
{
    double r;
    prof_key key = KEY(FM_K_CLIP_GRAD_NORM, FM_ACT_IDENTITY, 0, 0, n);
    /* evaluated after the call: a clipped g is read and written a second time */
#define CLIPPED (max_norm > 0.0 && r > max_norm)
    PROFILED(key, (double)n * (CLIPPED ? 3 : 2), F4 * (double)n * (CLIPPED ? 3 : 1),
             r = cur()->clip_grad_norm(n, g, max_norm, threads(nthreads)));
#undef CLIPPED
    return r;
}

double fm_measure_peak_gflops(double seconds, int nthreads)
{
    return cur()->measure_peak_gflops(seconds, threads(nthreads));
}
