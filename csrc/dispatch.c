/* dispatch.c: run-time choice of the ISA path, and the public entry points of fastmlp.h, each a
 * call through the active table. The table is chosen once at import (the Python layer reads
 * FASTMLP_ISA and calls fm_set_isa); tests switch it to cover every path in one run. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels.h"

static fm_kernels *const tables[FM_ISA_COUNT] = {&fm_kernels_generic, &fm_kernels_avx2,
                                                 &fm_kernels_avx512};
static const char *const names[FM_ISA_COUNT] = {"generic", "avx2", "avx512"};

/* Starts at the generic path so that a kernel called before fm_set_isa is still correct. */
static fm_kernels *active = &fm_kernels_generic;

int fm_cpu_supports(int isa)
{
    /* __builtin_cpu_supports also checks that the OS saves the wider registers (xgetbv). */
    __builtin_cpu_init();
    switch (isa) {
    case FM_ISA_GENERIC:
        return 1;
    case FM_ISA_AVX2:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case FM_ISA_AVX512:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
    default:
        return 0;
    }
}

int fm_set_isa(int isa)
{
    if (isa < 0 || isa >= FM_ISA_COUNT || !fm_cpu_supports(isa)) return FM_EINVAL;
    __atomic_store_n(&active, tables[isa], __ATOMIC_RELEASE);
    return FM_OK;
}

int fm_get_isa(void) { return active->isa; }

const char *fm_isa_name(int isa) { return isa >= 0 && isa < FM_ISA_COUNT ? names[isa] : "unknown"; }

void fm_get_blocks(int isa, int *mr, int *nr, int *kc, int *mc, int *nc)
{
    const fm_kernels *k = tables[isa >= 0 && isa < FM_ISA_COUNT ? isa : 0];
    *mr = k->mr, *nr = k->nr, *kc = k->kc, *mc = k->mc, *nc = k->nc;
}

int fm_set_blocks(int isa, int kc, int mc, int nc)
{
    if (isa < 0 || isa >= FM_ISA_COUNT || kc < 1 || kc > 8192 || mc < 1 || mc > 8192 || nc < 1 ||
        nc > 65536)
        return FM_EINVAL;
    fm_kernels *k = tables[isa];
    k->kc = kc, k->mc = mc, k->nc = nc;
    return FM_OK;
}

/* Valid for every path, so a workspace survives a switch of ISA. */
size_t fm_sgemm_work_size(int nthreads)
{
    size_t most = 0;
    for (int i = 0; i < FM_ISA_COUNT; i++) {
        size_t f = fm_gemm_thread_floats(tables[i]);
        most = f > most ? f : most;
    }
    return most * (size_t)(nthreads > 0 ? nthreads : 1);
}

static inline const fm_kernels *cur(void) { return __atomic_load_n(&active, __ATOMIC_ACQUIRE); }

/* ---- Profiling (fastmlp.h): a fixed table behind a mutex; the entries below test `profiling`
 * with one atomic load and go straight to the kernel when it is off. ---- */

#define PROF_SLOTS 512
static int profiling;
static pthread_mutex_t prof_lock = PTHREAD_MUTEX_INITIALIZER;
static fm_prof_entry prof_table[PROF_SLOTS];
static int prof_used;
static const char *const kernel_names[FM_K_COUNT] = {
    "matmul", "bias_activation", "activation_backward", "bias_grad", "softmax_cross_entropy",
    "sigmoid_cross_entropy", "mse_loss", "sgd_update", "rmsprop_update", "adam_update"};

const char *fm_kernel_name(int kernel)
{
    return kernel >= 0 && kernel < FM_K_COUNT ? kernel_names[kernel] : "unknown";
}

static inline int prof_on(void) { return __atomic_load_n(&profiling, __ATOMIC_RELAXED); }

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static fm_prof_entry prof_overflow[FM_K_COUNT]; /* shapes beyond the table, per kernel */

static void prof_add(int kernel, int flags, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, double seconds,
                     double flops, double bytes)
{
    pthread_mutex_lock(&prof_lock);
    if (profiling) {
        fm_prof_entry *e = NULL;
        for (int i = 0; i < prof_used && !e; i++) {
            fm_prof_entry *t = &prof_table[i];
            if (t->kernel == kernel && t->flags == flags && t->m == m && t->n == n && t->k == k) e = t;
        }
        if (!e && prof_used < PROF_SLOTS) {
            e = &prof_table[prof_used++];
            *e = (fm_prof_entry){kernel, flags, m, n, k, 0, 0.0, 0.0, 0.0};
        }
        if (!e) e = &prof_overflow[kernel];
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
            prof_overflow[i] = (fm_prof_entry){i, -1, -1, -1, -1, 0, 0.0, 0.0, 0.0};
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

/* Times `call` and records it when profiling is on. */
#define PROFILED(kernel, flags, m, n, k, flops, bytes, call)                                     \
    do {                                                                                      \
        if (!prof_on()) {                                                                     \
            call;                                                                             \
        } else {                                                                              \
            double t0_ = now();                                                               \
            call;                                                                             \
            prof_add(kernel, flags, m, n, k, now() - t0_, (double)(flops), (double)(bytes));  \
        }                                                                                     \
    } while (0)

#define F4 4.0 /* bytes per float */

int fm_sgemm(int trans_a, int trans_b, ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, float alpha,
             const float *A, ptrdiff_t lda, const float *B, ptrdiff_t ldb, float beta, float *C,
             ptrdiff_t ldc, const fm_epilogue *ep, float *work, int nthreads)
{
    const fm_kernels *k = cur();
    int r;
    int flags = trans_a | trans_b << 1 |
                (ep ? (ep->bias != NULL) << 2 | ep->act << 3 | ep->grad_act << 6 : 0);
    double mn = (double)M * (double)N;
    double bytes = F4 * ((double)M * K + (double)K * N + mn * (beta != 0.0f ? 2 : 1) +
                         (ep && ep->bias ? N : 0) + (ep && ep->y ? mn : 0) + (ep && ep->z ? mn : 0));
    PROFILED(FM_K_SGEMM, flags, M, N, K, 2.0 * mn * (double)K, bytes,
             r = k->sgemm(k, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, ep,
                          work, nthreads));
    return r;
}

void fm_bias_act_forward(ptrdiff_t M, ptrdiff_t N, const float *Z, const float *bias, int act,
                         float slope, float *Y, int nthreads)
{
    double mn = (double)M * (double)N;
    PROFILED(FM_K_BIAS_ACT, act, M, N, 0, mn * ((bias != NULL) + (act != 0)),
             F4 * (2 * mn + (bias ? N : 0)),
             cur()->bias_act_forward(M, N, Z, bias, act, slope, Y, nthreads));
}

void fm_act_backward(ptrdiff_t M, ptrdiff_t N, const float *dY, const float *Y, const float *Z,
                     int act, float slope, float *dZ, int nthreads)
{
    double mn = (double)M * (double)N;
    PROFILED(FM_K_ACT_BACKWARD, act, M, N, 0, mn * (act != 0), F4 * mn * (2 + (Y != NULL) + (Z != NULL)),
             cur()->act_backward(M, N, dY, Y, Z, act, slope, dZ, nthreads));
}

void fm_bias_grad(ptrdiff_t M, ptrdiff_t N, const float *dZ, float *db, int nthreads)
{
    double mn = (double)M * (double)N;
    PROFILED(FM_K_BIAS_GRAD, 0, M, N, 0, mn, F4 * (mn + N), cur()->bias_grad(M, N, dZ, db, nthreads));
}

int fm_softmax_xent(ptrdiff_t M, ptrdiff_t N, const float *Z, const int32_t *labels,
                    const float *w, float *dZ, double *loss, int nthreads)
{
    int r;
    double mn = (double)M * (double)N;
    PROFILED(FM_K_SOFTMAX_XENT, 0, M, N, 0, 4 * mn, F4 * (2 * mn + M + (w ? M : 0)),
             r = cur()->softmax_xent(M, N, Z, labels, w, dZ, loss, nthreads));
    return r;
}

int fm_sigmoid_xent(ptrdiff_t M, ptrdiff_t N, const float *Z, const float *T, const float *w,
                    float *dZ, double *loss, int nthreads)
{
    int r;
    double mn = (double)M * (double)N;
    PROFILED(FM_K_SIGMOID_XENT, 0, M, N, 0, 8 * mn, F4 * (3 * mn + (w ? M : 0)),
             r = cur()->sigmoid_xent(M, N, Z, T, w, dZ, loss, nthreads));
    return r;
}

int fm_mse(ptrdiff_t M, ptrdiff_t N, const float *P, const float *T, const float *w, float *dP,
           double *loss, int nthreads)
{
    int r;
    double mn = (double)M * (double)N;
    PROFILED(FM_K_MSE, 0, M, N, 0, 4 * mn, F4 * (3 * mn + (w ? M : 0)),
             r = cur()->mse(M, N, P, T, w, dP, loss, nthreads));
    return r;
}

void fm_sgd(ptrdiff_t n, float *p, const float *g, double lr, double l2, double momentum,
            int nesterov, float *vel, int nthreads)
{
    int with_mom = momentum != 0.0;
    PROFILED(FM_K_SGD, with_mom | nesterov << 1, 0, n, 0, (double)n * (with_mom ? 6 : 4),
             F4 * (double)n * (with_mom ? 5 : 3),
             cur()->sgd(n, p, g, lr, l2, momentum, nesterov, vel, nthreads));
}

void fm_rmsprop(ptrdiff_t n, float *p, const float *g, float *sq, double lr, double rho,
                double eps, double l2, int nthreads)
{
    PROFILED(FM_K_RMSPROP, 0, 0, n, 0, (double)n * 10, F4 * (double)n * 5,
             cur()->rmsprop(n, p, g, sq, lr, rho, eps, l2, nthreads));
}

void fm_adam(ptrdiff_t n, float *p, const float *g, float *m, float *v, long step, double lr,
             double b1, double b2, double eps, double l2, double wd, int nthreads)
{
    PROFILED(FM_K_ADAM, wd != 0.0, 0, n, 0, (double)n * 14, F4 * (double)n * 7,
             cur()->adam(n, p, g, m, v, step, lr, b1, b2, eps, l2, wd, nthreads));
}

double fm_measure_peak_gflops(double seconds, int nthreads)
{
    return cur()->peak_gflops(seconds, nthreads > 0 ? nthreads : 1);
}
