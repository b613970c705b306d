/* isa_table.h: the body of every isa_*.c. Includes the kernels written once and exports them as
 * the table FM_TABLE for dispatch.c. The including file names its target: an FM_TARGET_* macro
 * and, where the path needs more than the architecture's baseline, FM_TARGET_FEATURES. */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(FM_TARGET_AVX2) || defined(FM_TARGET_AVX512)
#include <immintrin.h>
#endif

/* The target features apply to fastmlp's own functions, from here to the end of the unit: the
 * system headers above are compiled for the baseline. GCC takes a target pragma. Clang has no
 * such pragma that reaches the functions OpenMP outlines from parallel regions, so for clang
 * setup.py compiles this unit alone with the features as flags (ISA_FLAGS there). */
#define FM_PRAGMA_(x) _Pragma(#x)
#define FM_PRAGMA(x) FM_PRAGMA_(x)
#if defined(FM_TARGET_FEATURES) && !defined(__clang__)
FM_PRAGMA(GCC target(FM_TARGET_FEATURES))
#elif defined(FM_TARGET_AVX2) && !(defined(__AVX2__) && defined(__FMA__))
#error "clang: compile isa_avx2.c with -mavx2 -mfma (setup.py does)"
#elif defined(FM_TARGET_AVX512) && !(defined(__AVX512F__) && defined(__AVX512DQ__) && \
                                     defined(__AVX512BW__) && defined(__AVX512VL__))
#error "clang: compile isa_avx512.c with the AVX-512 flags in setup.py's ISA_FLAGS"
#endif

#include "kernels.h"
#include "simd.h"
#include "optim_impl.h"
#include "gemm_pack.h"
#include "gemm_ukernel.h"
#include "gemm_dot.h"
#include "gemm_plan.h"
#include "gemm_driver.h"
#include "ops_impl.h"
#include "norm_impl.h"
#include "sparse_impl.h"

fm_kernels FM_TABLE = {
    .isa = FM_TABLE_ISA,
    .mr = FM_MR, .nr = FM_NR, .vlen = VLEN,
    .kc = FM_KC, .mc = FM_MC, .nc = FM_NC,
    .plan_matmul = plan_matmul,
    .matmul = matmul,
    .sparse_matmul = sparse_matmul,
    .sparse_matmul_tn = sparse_matmul_tn,
    .bias_activation = bias_activation,
    .activation_backward = activation_backward,
    .bias_grad = bias_grad,
    .softmax_cross_entropy = softmax_cross_entropy,
    .sigmoid_cross_entropy = sigmoid_cross_entropy,
    .mse_loss = mse_loss,
    .poisson_loss = poisson_loss,
    .sgd_update = sgd_update,
    .rmsprop_update = rmsprop_update,
    .adam_update = adam_update,
    .layernorm_forward = layernorm_forward,
    .layernorm_backward = layernorm_backward,
    .batchnorm_forward = batchnorm_forward,
    .batchnorm_backward = batchnorm_backward,
    .clip_grad_norm = clip_grad_norm,
    .measure_peak_gflops = measure_peak_gflops,
};
