/* kernels.h: the table of kernels each ISA translation unit exports, and how dispatch.c uses it.
 * Not a public header: the public contract is fastmlp.h. Each entry is declared from the
 * contract's own prototype (typeof), so an ISA's implementation that drifts from fastmlp.h does
 * not compile (-Werror=incompatible-pointer-types, setup.py). */
#ifndef FASTMLP_KERNELS_H
#define FASTMLP_KERNELS_H

#include "fastmlp.h"
#include "pool.h"

#define FM_ENTRY(name) __typeof__(fm_##name) *name

typedef struct fm_kernels {
    int isa;
    int mr, nr, vlen;  /* compile-time tile of the micro-kernel */
    int kc, mc, nc;    /* cache blocks: defaults from simd.h, tunable through fm_set_blocks */
    FM_ENTRY(plan_matmul);
    FM_ENTRY(matmul);
    FM_ENTRY(sparse_matmul);
    FM_ENTRY(sparse_matmul_tn);
    FM_ENTRY(bias_activation);
    FM_ENTRY(activation_backward);
    FM_ENTRY(bias_grad);
    FM_ENTRY(softmax_cross_entropy);
    FM_ENTRY(sigmoid_cross_entropy);
    FM_ENTRY(mse_loss);
    FM_ENTRY(poisson_loss);
    FM_ENTRY(sgd_update);
    FM_ENTRY(rmsprop_update);
    FM_ENTRY(adam_update);
    FM_ENTRY(layernorm_forward);
    FM_ENTRY(layernorm_backward);
    FM_ENTRY(batchnorm_forward);
    FM_ENTRY(batchnorm_backward);
    FM_ENTRY(clip_grad_norm);
    FM_ENTRY(measure_peak_gflops);
} fm_kernels;

#undef FM_ENTRY

extern fm_kernels fm_kernels_generic;
#if defined(__x86_64__)
extern fm_kernels fm_kernels_avx2, fm_kernels_avx512;
#elif defined(__aarch64__)
extern fm_kernels fm_kernels_neon;
#endif

/* Scratch floats one thread of matmul needs with the given blocks (two 64-byte aligned
 * buffers). */
static inline size_t fm_gemm_thread_floats(const fm_kernels *k)
{
    size_t mc = (size_t)((k->mc + k->mr - 1) / k->mr) * k->mr;
    size_t nc = (size_t)((k->nc + k->nr - 1) / k->nr) * k->nr;
    return mc * k->kc + (size_t)k->kc * nc + 32;
}

#endif
