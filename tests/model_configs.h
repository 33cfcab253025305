// Model and run configs filled in C for the parameter-table and planner tests (independent of the YAML loader):
// DeepSeek-V3 671B as published (inference/configs/config_671B.json, TR section 4.2), the single-GPU benchmark
// model, and a tiny model small enough to check every figure by hand.
#ifndef TEST_MODEL_CONFIGS_H
#define TEST_MODEL_CONFIGS_H

#include "train/config.h"
#include <string.h>

static inline ModelConfig test_model_v3(void) {
    ModelConfig m;
    memset(&m, 0, sizeof m);
    m.vocab_size = 129280; m.dim = 7168; m.inter_dim = 18432; m.moe_inter_dim = 2048;
    m.n_layers = 61; m.n_dense_layers = 3; m.n_heads = 128;
    m.n_routed_experts = 256; m.n_shared_experts = 1; m.n_activated_experts = 8;
    m.n_expert_groups = 8; m.n_limited_groups = 4; m.score_func = SCORE_SIGMOID; m.route_scale = 2.5;
    m.group_score_topk = 2;
    m.q_lora_rank = 1536; m.kv_lora_rank = 512;
    m.qk_nope_head_dim = 128; m.qk_rope_head_dim = 64; m.v_head_dim = 128;
    m.mtp_depth = 1; m.norm_eps = 1e-6; m.init_std = 0.006; m.rope_theta = 10000;
    return m;
}

// configs/bench-1gpu.yaml's model: vocab 32768, dim 1536, 12 layers (first dense, inter 4096), 12 heads,
// q_lora 512, kv_lora 256, 64 routed experts top-6 + 1 shared of moe_inter 512, MTP 1.
static inline ModelConfig test_model_bench(void) {
    ModelConfig m = test_model_v3();
    m.vocab_size = 32768; m.dim = 1536; m.inter_dim = 4096; m.moe_inter_dim = 512;
    m.n_layers = 12; m.n_dense_layers = 1; m.n_heads = 12;
    m.n_routed_experts = 64; m.n_shared_experts = 1; m.n_activated_experts = 6;
    m.n_expert_groups = 1; m.n_limited_groups = 1; m.group_score_topk = 2;
    m.q_lora_rank = 512; m.kv_lora_rank = 256;
    return m;
}

// Tiny: vocab 16, dim 8, 2 layers (layer 0 dense with inter 16, layer 1 MoE), 2 heads, q_lora 4, kv_lora 4,
// nope/rope/v 2/2/2, 4 routed experts top-2 + 1 shared of moe_inter 4, MTP 1.
static inline ModelConfig test_model_tiny(void) {
    ModelConfig m = test_model_v3();
    m.vocab_size = 16; m.dim = 8; m.inter_dim = 16; m.moe_inter_dim = 4;
    m.n_layers = 2; m.n_dense_layers = 1; m.n_heads = 2;
    m.n_routed_experts = 4; m.n_shared_experts = 1; m.n_activated_experts = 2;
    m.n_expert_groups = 1; m.n_limited_groups = 1; m.group_score_topk = 2;
    m.q_lora_rank = 4; m.kv_lora_rank = 4;
    m.qk_nope_head_dim = 2; m.qk_rope_head_dim = 2; m.v_head_dim = 2;
    return m;
}

// A run config around a model: one GPU, 1F1B, ZeRO-1, one sequence of 4096 tokens per micro-batch, recompute on.
static inline Config test_config(ModelConfig m) {
    Config c;
    memset(&c, 0, sizeof c);
    c.model = m;
    c.train.seq_len = 4096; c.train.micro_batch = 1; c.train.recompute = 1;
    c.train.batch_start = 3072; c.train.batch_end = 15360;
    c.parallel.pp = 1; c.parallel.dp = 1; c.parallel.ep = 1; c.parallel.zero_stage = 1;
    c.parallel.schedule = PIPE_1F1B;
    return c;
}

#endif
