/* isa_table.h: the body of every isa_*.c. Includes the kernels written once and exports them as
 * the table FM_TABLE for dispatch.c. The including file has already chosen the target (pragma and
 * FM_TARGET_* macro). */
#include "kernels.h"
#include "simd.h"
#include "gemm_impl.h"
#include "ops_impl.h"

fm_kernels FM_TABLE = {
    .isa = FM_TABLE_ISA,
    .mr = FM_MR, .nr = FM_NR, .vlen = VLEN,
    .kc = FM_KC, .mc = FM_MC, .nc = FM_NC,
    .sgemm = sgemm,
    .bias_act_forward = bias_act_forward,
    .act_backward = act_backward_k,
    .bias_grad = bias_grad,
    .softmax_xent = softmax_xent,
    .sigmoid_xent = sigmoid_xent,
    .mse = mse,
    .sgd = sgd,
    .rmsprop = rmsprop,
    .adam = adam,
    .peak_gflops = peak_gflops,
};
