"""fastmlp.core: the compiled core and its NumPy twin.

The C kernels (csrc/, contract in csrc/fastmlp.h) and their bindings live in one extension
module, _native (its Cython declarations of the contract: contract.pxd), with the native
training step TrainStep: one module, because the active ISA, the GEMM blocks and the profiler's
table are process state of the C library, and a second module would carry a second copy.

    kernels      matmul, bias_activation, activation_backward, bias_grad,
                 softmax_cross_entropy, sigmoid_cross_entropy, mse_loss, poisson_loss,
                 sgd_update, rmsprop_update, adam_update,
                 sparse_matmul, sparse_matmul_tn,
                 layernorm_forward, layernorm_backward, batchnorm_forward,
                 batchnorm_backward, clip_grad_norm   (their names: KERNELS)
    sparse input is_sparse, csr_arrays (a SciPy CSR / CSC matrix as the arrays the sparse
                 kernels read)
    plan         matmul_plan (how matmul runs a product: GEMM_PATHS, threads, blocks)
    training     TrainStep (forward / backward / update in native code), flat_params,
                 flat_buffer, dropout_mask, LOSSES, OPTIMIZERS, FUSE_AUTO_MAX_BATCH
    machine      ISAS, supported_isas, get_isa, set_isa, gemm_blocks, set_gemm_blocks,
                 get_num_threads, set_num_threads, local_num_threads, MAX_THREADS,
                 measure_peak_gflops, info
    twins        reference (pure NumPy, the test oracle), testing (comparison helpers)

Everything above the core (model, io, estimators, tools) imports it; it imports none of them.
"""
from . import machine, reference, testing
from ._native import (
    ACTIVATIONS,
    FUSE_AUTO_MAX_BATCH,
    GEMM_PATHS,
    ISAS,
    KERNELS,
    LOSSES,
    MAX_THREADS,
    OPTIMIZERS,
    TrainStep,
    activation_backward,
    adam_update,
    batchnorm_backward,
    batchnorm_forward,
    bias_activation,
    bias_grad,
    clip_grad_norm,
    csr_arrays,
    dropout_mask,
    flat_buffer,
    flat_params,
    gemm_blocks,
    is_sparse,
    get_isa,
    get_num_threads,
    layernorm_backward,
    layernorm_forward,
    local_num_threads,
    matmul,
    matmul_plan,
    measure_peak_gflops,
    mse_loss,
    poisson_loss,
    rmsprop_update,
    set_gemm_blocks,
    set_isa,
    set_num_threads,
    sgd_update,
    sigmoid_cross_entropy,
    softmax_cross_entropy,
    sparse_matmul,
    sparse_matmul_tn,
    supported_isas,
)
from .machine import info

machine.configure()

__all__ = [
    "ACTIVATIONS", "FUSE_AUTO_MAX_BATCH", "GEMM_PATHS", "ISAS", "KERNELS", "LOSSES", "MAX_THREADS",
    "OPTIMIZERS",
    "TrainStep", "local_num_threads", "activation_backward", "adam_update", "batchnorm_backward",
    "batchnorm_forward", "bias_activation", "bias_grad", "clip_grad_norm", "csr_arrays",
    "dropout_mask", "flat_buffer", "flat_params", "gemm_blocks", "get_isa", "get_num_threads",
    "info", "is_sparse", "layernorm_backward", "layernorm_forward", "matmul", "matmul_plan",
    "measure_peak_gflops", "mse_loss", "poisson_loss", "reference", "rmsprop_update",
    "set_gemm_blocks", "set_isa", "set_num_threads", "sgd_update", "sigmoid_cross_entropy",
    "softmax_cross_entropy", "sparse_matmul", "sparse_matmul_tn", "supported_isas", "testing",
]
