/* isa_table.h: the body of every isa_*.c. Includes the kernels written once and exports them as
 * the table FM_TABLE for dispatch.c. The including file has already chosen the target (pragma and
 * FM_TARGET_* macro). */
#include <stdlib.h>
#include <omp.h>

#include "kernels.h"
#include "simd.h"
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
