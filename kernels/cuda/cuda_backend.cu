// The cuda backend's op table: every op of kernels/ops.h on device memory, tested against the cpu backend by
// tests/gpu/ (make test-gpu). Each entry lives in the kernels/cuda/ file of its op family (see cuda_common.cuh).
#include "kernels/cuda/cuda_common.cuh"

extern "C" const Backend backend_cuda;

// Positional order is the order of the members of Backend (C++ designated initializers must follow it too).
extern "C" const Backend backend_cuda = {
    .name = "cuda",
    .bf16 = 1,

    .alloc = cuda_alloc,
    .free = cuda_free,
    .upload = cuda_upload,
    .download = cuda_download,
    .copy = cuda_copy,
    .zero = cuda_zero,
    .synchronize = cuda_synchronize,
    .memory_in_use = cuda_memory_in_use,

    .matmul_forward = cuda_matmul_forward,
    .matmul_forward_residual = cuda_matmul_forward_residual,
    .matmul_backward = cuda_matmul_backward,
    .grouped_matmul_forward = cuda_grouped_matmul_forward,
    .grouped_matmul_backward = cuda_grouped_matmul_backward,
    .grouped_matmul_dinp_pair = cuda_grouped_matmul_dinp_pair,

    .rmsnorm_forward = cuda_rmsnorm_forward,
    .rmsnorm_backward = cuda_rmsnorm_backward,
    .swiglu_forward = cuda_swiglu_forward,
    .swiglu_backward = cuda_swiglu_backward,
    .axpy = cuda_axpy,
    .copy_cols = cuda_copy_cols,
    .convert = cuda_convert,

    .embedding_forward = cuda_embedding_forward,
    .embedding_backward = cuda_embedding_backward,
    .cross_entropy_forward_backward = cuda_cross_entropy_forward_backward,

    .rope_apply = cuda_rope_apply,
    .mla_kv_assemble = cuda_mla_kv_assemble,
    .mla_kv_assemble_backward = cuda_mla_kv_assemble_backward,
    .attention_forward = cuda_attention_forward,
    .attention_backward = cuda_attention_backward,

    .moe_route = cuda_moe_route,
    .moe_route_backward = cuda_moe_route_backward,
    .moe_balance_loss = cuda_moe_balance_loss,
    .moe_dispatch_plan = cuda_moe_dispatch_plan,
    .moe_gather = cuda_moe_gather,
    .moe_gather_backward = cuda_moe_gather_backward,
    .moe_combine = cuda_moe_combine,
    .moe_combine_backward = cuda_moe_combine_backward,

    .sum_squares = cuda_sum_squares,
    .scale = cuda_scale,
    .adamw_update = cuda_adamw_update,
};
