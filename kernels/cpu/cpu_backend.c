// The cpu backend's op table: the FP32 reference every other backend is tested against, and the backend CI trains
// the tiny model with. Each entry lives in the kernels/cpu/ file of its op family (see cpu_ops.h).
#include "kernels/cpu/cpu_ops.h"

const Backend backend_cpu = {
    .name = "cpu",

    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_upload,
    .download = cpu_download,
    .copy = cpu_copy,
    .zero = cpu_zero,
    .synchronize = cpu_synchronize,
    .memory_in_use = cpu_memory_in_use,

    .matmul_forward = cpu_matmul_forward,
    .matmul_forward_residual = cpu_matmul_forward_residual,
    .matmul_backward = cpu_matmul_backward,
    .grouped_matmul_forward = cpu_grouped_matmul_forward,
    .grouped_matmul_backward = cpu_grouped_matmul_backward,
    .grouped_matmul_dinp_pair = cpu_grouped_matmul_dinp_pair,

    .rmsnorm_forward = cpu_rmsnorm_forward,
    .rmsnorm_backward = cpu_rmsnorm_backward,
    .swiglu_forward = cpu_swiglu_forward,
    .swiglu_backward = cpu_swiglu_backward,
    .axpy = cpu_axpy,
    .copy_cols = cpu_copy_cols,
    .convert = cpu_convert,

    .embedding_forward = cpu_embedding_forward,
    .embedding_backward = cpu_embedding_backward,
    .cross_entropy_forward_backward = cpu_cross_entropy_forward_backward,

    .rope_apply = cpu_rope_apply,
    .mla_kv_assemble = cpu_mla_kv_assemble,
    .mla_kv_assemble_backward = cpu_mla_kv_assemble_backward,
    .attention_forward = cpu_attention_forward,
    .attention_backward = cpu_attention_backward,

    .moe_route = cpu_moe_route,
    .moe_route_backward = cpu_moe_route_backward,
    .moe_balance_loss = cpu_moe_balance_loss,
    .moe_dispatch_plan = cpu_moe_dispatch_plan,
    .moe_gather = cpu_moe_gather,
    .moe_gather_backward = cpu_moe_gather_backward,
    .moe_combine = cpu_moe_combine,
    .moe_combine_backward = cpu_moe_combine_backward,

    .sum_squares = cpu_sum_squares,
    .scale = cpu_scale,
    .adamw_update = cpu_adamw_update,
};
