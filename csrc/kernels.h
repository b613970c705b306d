/* kernels.h: the table of kernels each ISA translation unit exports, and how dispatch.c uses it.
 * Not a public header: the public contract is fastmlp.h. */
#ifndef FASTMLP_KERNELS_H
#define FASTMLP_KERNELS_H

#include "fastmlp.h"

typedef struct fm_kernels {
    int isa;
    int mr, nr, vlen;  /* compile-time tile of the micro-kernel */
    int kc, mc, nc;    /* cache blocks: defaults from simd.h, tunable through fm_set_blocks */
    int (*sgemm)(const struct fm_kernels *self, int trans_a, int trans_b, ptrdiff_t M, ptrdiff_t N,
                 ptrdiff_t K, float alpha, const float *A, ptrdiff_t lda, const float *B,
                 ptrdiff_t ldb, float beta, float *C, ptrdiff_t ldc, const fm_epilogue *ep,
                 float *work, int nthreads);
    void (*bias_act_forward)(ptrdiff_t, ptrdiff_t, const float *, const float *, int, float, float *, int);
    void (*act_backward)(ptrdiff_t, ptrdiff_t, const float *, const float *, const float *, int, float, float *, int);
    void (*bias_grad)(ptrdiff_t, ptrdiff_t, const float *, float *, int);
    int (*softmax_xent)(ptrdiff_t, ptrdiff_t, const float *, const int32_t *, const float *, float *, double *, int);
    int (*sigmoid_xent)(ptrdiff_t, ptrdiff_t, const float *, const float *, const float *, float *, double *, int);
    int (*mse)(ptrdiff_t, ptrdiff_t, const float *, const float *, const float *, float *, double *, int);
    void (*sgd)(ptrdiff_t, float *, const float *, double, double, double, int, float *, int);
    void (*rmsprop)(ptrdiff_t, float *, const float *, float *, double, double, double, double, int);
    void (*adam)(ptrdiff_t, float *, const float *, float *, float *, long, double, double, double, double, double, double, int);
    double (*peak_gflops)(double seconds, int nthreads);
} fm_kernels;

extern fm_kernels fm_kernels_generic, fm_kernels_avx2, fm_kernels_avx512;

/* Scratch floats one thread of sgemm needs with the given blocks (two 64-byte aligned buffers). */
static inline size_t fm_gemm_thread_floats(const fm_kernels *k)
{
    size_t mc = (size_t)((k->mc + k->mr - 1) / k->mr) * k->mr;
    size_t nc = (size_t)((k->nc + k->nr - 1) / k->nr) * k->nr;
    return mc * k->kc + (size_t)k->kc * nc + 32;
}

#endif
