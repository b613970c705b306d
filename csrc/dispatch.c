/* dispatch.c: run-time choice of the ISA path, and the public entry points of fastmlp.h, each a
 * call through the active table. The table is chosen once at import (the Python layer reads
 * FASTMLP_ISA and calls fm_set_isa); tests switch it to cover every path in one run. */
#include <stdlib.h>

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

int fm_sgemm(int trans_a, int trans_b, ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, float alpha,
             const float *A, ptrdiff_t lda, const float *B, ptrdiff_t ldb, float beta, float *C,
             ptrdiff_t ldc, const fm_epilogue *ep, float *work, int nthreads)
{
    const fm_kernels *k = cur();
    return k->sgemm(k, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, ep, work,
                    nthreads);
}

void fm_bias_act_forward(ptrdiff_t M, ptrdiff_t N, const float *Z, const float *bias, int act,
                         float slope, float *Y, int nthreads)
{
    cur()->bias_act_forward(M, N, Z, bias, act, slope, Y, nthreads);
}

void fm_act_backward(ptrdiff_t M, ptrdiff_t N, const float *dY, const float *Y, const float *Z,
                     int act, float slope, float *dZ, int nthreads)
{
    cur()->act_backward(M, N, dY, Y, Z, act, slope, dZ, nthreads);
}

void fm_bias_grad(ptrdiff_t M, ptrdiff_t N, const float *dZ, float *db, int nthreads)
{
    cur()->bias_grad(M, N, dZ, db, nthreads);
}

int fm_softmax_xent(ptrdiff_t M, ptrdiff_t N, const float *Z, const int32_t *labels,
                    const float *w, float *dZ, double *loss, int nthreads)
{
    return cur()->softmax_xent(M, N, Z, labels, w, dZ, loss, nthreads);
}

int fm_sigmoid_xent(ptrdiff_t M, ptrdiff_t N, const float *Z, const float *T, const float *w,
                    float *dZ, double *loss, int nthreads)
{
    return cur()->sigmoid_xent(M, N, Z, T, w, dZ, loss, nthreads);
}

int fm_mse(ptrdiff_t M, ptrdiff_t N, const float *P, const float *T, const float *w, float *dP,
           double *loss, int nthreads)
{
    return cur()->mse(M, N, P, T, w, dP, loss, nthreads);
}

void fm_sgd(ptrdiff_t n, float *p, const float *g, double lr, double l2, double momentum,
            int nesterov, float *vel, int nthreads)
{
    cur()->sgd(n, p, g, lr, l2, momentum, nesterov, vel, nthreads);
}

void fm_rmsprop(ptrdiff_t n, float *p, const float *g, float *sq, double lr, double rho,
                double eps, double l2, int nthreads)
{
    cur()->rmsprop(n, p, g, sq, lr, rho, eps, l2, nthreads);
}

void fm_adam(ptrdiff_t n, float *p, const float *g, float *m, float *v, long step, double lr,
             double b1, double b2, double eps, double l2, double wd, int nthreads)
{
    cur()->adam(n, p, g, m, v, step, lr, b1, b2, eps, l2, wd, nthreads);
}

double fm_measure_peak_gflops(double seconds, int nthreads)
{
    return cur()->peak_gflops(seconds, nthreads > 0 ? nthreads : 1);
}
