// The planner behind `build/train plan <config.yaml>`: parameter counts, training FLOPs per token and per-GPU
// memory of a configuration, computed from the config alone (nothing is allocated), so a layout can be checked
// before a cluster is spent on it.
//
// Parameter counts come from closed-form per-layer formulas (plan.c); tests cross-check them against the named
// parameter table (model/params.h) on small configs and on the full 671B model, stage by stage.
#ifndef PLAN_H
#define PLAN_H

#include "train/config.h"
#include <stdint.h>
#include <stdio.h>

// A parameter count split by what the parameters are. `attn` includes the q_a / kv_a RMSNorms inside MLA;
// `norms` is the block RMSNorms (input_layernorm, post_attention_layernorm) and the final model.norm.
typedef struct {
    int64_t embed, attn, dense_ffn, routed, shared, router, norms, head;
    int64_t main;      // sum of the above: the main model
    int64_t mtp;       // all MTP modules: enorm, hnorm, eh_proj, their block, shared_head.norm (embedding and head
                       // are shared with the main model and counted there)
    int64_t with_mtp;  // main + mtp
} PlanParams;

// Memory of one pipeline rank (one GPU), in bytes.
typedef struct {
    int rank;                  // pipeline rank
    int stages[2], n_stages;   // stages held: 1 with 1F1B, 2 (r and pp-1-r) with DualPipe
    int n_layers, n_mtp;       // main layers and MTP blocks held
    int64_t params_dense;      // parameters replicated over dp (everything but routed experts)
    int64_t params_expert;     // routed-expert parameters held (E/ep experts per MoE layer), replicated over dp/ep
    double weights;            // BF16 working weights
    double master;             // FP32 master weights (ZeRO-1: sharded)
    double grads;              // FP32 gradient accumulators (never sharded under ZeRO-1)
    double moments;            // AdamW m and v in BF16 (ZeRO-1: sharded)
    int in_flight;             // micro-batches whose activations are held at the schedule's peak
    double act_per_micro;      // activation bytes stored per micro-batch (the rank's heavier stage)
    double activations;        // in_flight * act_per_micro
    double workspace;          // transient: one layer's recomputed tensors and their gradients, plus the FP32
                               // logits of one micro-batch on the rank with the head
    double total;
} PlanMemory;

typedef struct {
    PlanParams total;          // every parameter
    PlanParams active;         // per token: all but routed experts, plus n_activated_experts per MoE layer
    int64_t hf_checkpoint;     // total.with_mtp + mtp_depth x (embedding + head): the Hugging Face files store
                               // copies of both under each MTP layer, so the released V3 checkpoint says 685B
    double flops_matmul;       // training FLOPs per token of the main model's weight matrices (6 x active matmul)
    double flops_attn;         // training FLOPs per token of causal attention (QK^T and PV)
    double flops;              // flops_matmul + flops_attn: the main model
    double flops_mtp;          // all MTP modules (eh_proj, block, head pass, attention)
    PlanMemory mem;            // the heaviest pipeline rank
} PlanResult;

// Dies with the offending key on a layout that cannot run (ep not dividing dp or the experts, dualpipe with odd pp,
// more stages than blocks, ...).
void plan_compute(const Config *cfg, PlanResult *r);
// Memory of pipeline rank `rank` in [0, parallel.pp).
void plan_rank_memory(const Config *cfg, int rank, PlanMemory *mem);
// Stored activation bytes per token of one block (MoE or dense), under train.recompute; exposed for tests.
double plan_layer_act_bytes(const ModelConfig *m, int is_moe, int recompute);
// The report: parameter table, FLOPs, per-rank memory.
void plan_print(const Config *cfg, FILE *out);

#endif
