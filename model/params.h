// The named parameter table: every trained tensor of one pipeline stage, as a view into one contiguous FP32 buffer.
//
// Init, the optimizer (FP32 master weights, BF16 moments), gradients, collectives (ZeRO-1 reduce-scatter /
// all-gather), checkpoints and the Hugging Face export all walk this one table, so a tensor is declared once.
//
// Names and shapes are exactly those of the Hugging Face DeepSeek-V3 checkpoint, shapes in PyTorch [out, in] order
// (d = dim, H = n_heads, E = routed experts):
//   model.embed_tokens.weight                          [V, d]                      (first stage)
//   per layer i (main layers 0..n_layers-1, MTP block k is layer L = n_layers + k):
//   model.layers.i.input_layernorm.weight              [d]
//   model.layers.i.self_attn.q_a_proj.weight           [q_lora, d]                 \ q_lora_rank > 0
//   model.layers.i.self_attn.q_a_layernorm.weight      [q_lora]                     |
//   model.layers.i.self_attn.q_b_proj.weight           [H*(nope+rope), q_lora]     /
//   model.layers.i.self_attn.q_proj.weight             [H*(nope+rope), d]          (q_lora_rank == 0)
//   model.layers.i.self_attn.kv_a_proj_with_mqa.weight [kv_lora+rope, d]
//   model.layers.i.self_attn.kv_a_layernorm.weight     [kv_lora]
//   model.layers.i.self_attn.kv_b_proj.weight          [H*(nope+v), kv_lora]
//   model.layers.i.self_attn.o_proj.weight             [d, H*v]
//   model.layers.i.post_attention_layernorm.weight     [d]
//   dense FFN (i < n_dense_layers): mlp.{gate,up}_proj.weight [inter, d], mlp.down_proj.weight [d, inter]
//   MoE: mlp.gate.weight [E, d] (router), mlp.shared_experts.{gate,up}_proj.weight [n_shared*moe_inter, d],
//        mlp.shared_experts.down_proj.weight [d, n_shared*moe_inter], then the routed experts ordered for grouped
//        GEMMs: mlp.experts.{0..E-1}.gate_proj.weight [moe_inter, d], then all up_proj, then all down_proj
//        [d, moe_inter], so that each projection of a layer is ONE contiguous [E, rows, cols] block.
//   model.norm.weight [d], lm_head.weight [V, d]                                   (last stage)
//   MTP module k (L = n_layers + k, last stage): model.layers.L.enorm.weight [d], .hnorm.weight [d],
//        .eh_proj.weight [d, 2d] (input is [enorm(emb) ; hnorm(h)]), the block above (MoE unless the whole main
//        model is dense), model.layers.L.shared_head.norm.weight [d].
//
// Shared tensors: MTP uses the main model's embedding and output head, so they are in the table once. The HF
// export writes copies of them as model.layers.L.embed_tokens.weight and model.layers.L.shared_head.head.weight
// (that is why the public checkpoint counts 685B parameters against our 671B + 11.6B MTP).
//
// Not in the table: mlp.gate.e_score_correction_bias [E], the aux-loss-free selection bias. It is not trained by
// the optimizer (it is moved by +-gamma from the global expert load), so the model keeps it in its own FP32 buffer,
// one [E] row per MoE layer of the stage, in the order params_moe_layers gives.
//
// Weight decay: no_decay = 1 for every RMSNorm weight (names ending in "norm.weight", which covers layernorm and
// enorm/hnorm): they are gains around 1, decaying them toward 0 shrinks activations for no regularization benefit.
// This is common practice (the recipe leaves it OPEN); the model has no biases, and the gate bias is not a parameter.
//
// Layout: tensors in the order above, each starting at an offset aligned to PARAMS_ALIGN elements (64 FP32 =
// 256 bytes: every tensor starts on a cache line and is aligned for vectorized loads / 128-byte GPU transactions in
// the FP32 buffer and its BF16 mirror). Padding is not counted in numel but is in total (the buffer size). Within a
// routed-expert block the experts are packed back to back without padding (stride rows*cols), so the block is one
// dense [E_local, rows, cols] tensor for grouped GEMMs; only the block start is aligned.
#ifndef PARAMS_H
#define PARAMS_H

#include "train/config.h"
#include <stdint.h>

#define PARAMS_ALIGN 64
#define PARAMS_NAME_MAX 112

typedef enum {
    PARAM_EMBED, PARAM_ATTN, PARAM_NORM, PARAM_DENSE_FFN, PARAM_ROUTER, PARAM_SHARED_EXPERT,
    PARAM_ROUTED_EXPERT, PARAM_MTP_PROJ, PARAM_HEAD
} ParamKind;

typedef struct {
    char name[PARAMS_NAME_MAX]; // Hugging Face name
    int ndim;                   // 1 or 2
    int64_t shape[3];           // PyTorch order [out, in]; unused dims are 0
    int64_t offset, numel;      // in elements, into the stage buffer
    ParamKind kind;
    int layer;                  // -1 for embed / final norm / head; n_layers + k for MTP module k
    int expert;                 // global routed-expert index, -1 otherwise
    int is_mtp;                 // belongs to an MTP module
    int no_decay;               // excluded from weight decay (RMSNorm weights)
} ParamInfo;

// What one table holds: main layers [layer_begin, layer_end), and optionally the embedding, the final norm + head,
// and all MTP modules (which need the head, so has_mtp requires has_head). Expert parallelism: the table holds the
// routed experts [ep_rank * E/ep_size, (ep_rank+1) * E/ep_size) of every MoE layer; ep_size 0 or 1 = all experts.
typedef struct {
    int layer_begin, layer_end;
    int has_embed, has_head, has_mtp;
    int ep_size, ep_rank;
} StageSpec;

typedef struct {
    ParamInfo *params;
    int n;
    int64_t total;        // buffer size in elements, padding included
    StageSpec stage;
    int n_layers_model;   // the config's n_layers (to tell MTP layers apart)
    int expert_begin, expert_end; // the global routed experts [begin, end) held for every MoE layer
    int *hash;            // open-addressing name index into params (-1 = empty), hash_cap slots
    int hash_cap;
} ParamTable;

// Builds the table of stage `s` of model `m`. Dies with a message on an inconsistent spec (layer range outside
// the model, has_mtp without has_head, ep_size not dividing the routed experts).
void params_build(ParamTable *t, const ModelConfig *m, const StageSpec *s);
void params_free(ParamTable *t);
// NULL if the table has no tensor of that name.
const ParamInfo *params_find(const ParamTable *t, const char *name);
// printf-style name; dies naming the tensor when it is absent (for model code that knows it must be there).
__attribute__((format(printf, 2, 3))) const ParamInfo *params_get(const ParamTable *t, const char *fmt, ...);
// The first local expert of one projection ("gate_proj", "up_proj" or "down_proj") of a MoE layer: its offset is
// the start of the contiguous [E_local, rows, cols] block. NULL if the layer is not a MoE layer of this table.
const ParamInfo *params_expert_block(const ParamTable *t, int layer, const char *proj);
// Sum of numel (no padding).
int64_t params_numel(const ParamTable *t);

// The whole model in one table (single process, no EP).
StageSpec params_full_stage(const ModelConfig *m);
// Stage `stage` of a `pp`-way pipeline split. The n_layers + mtp_depth transformer blocks (an MTP module counts as
// one block and always sits on the last stage) are split as evenly as possible, the earlier stages taking the
// remainder; stage 0 gets the embedding, stage pp-1 the final norm, head and MTP modules. Dies if some stage would
// get no block. Stages partition the full table.
StageSpec params_stage_spec(const ModelConfig *m, int pp, int stage);
// Whether (main or MTP) layer `layer` has a MoE FFN: main layers from n_dense_layers on; MTP blocks unless the
// whole main model is dense.
int params_layer_is_moe(const ModelConfig *m, int layer);
// The MoE layers held by stage `s`, main then MTP, in table order (the order of the selection-bias buffer rows).
// Writes up to `cap` layer indices into `out` (may be NULL when cap is 0) and returns the count.
int params_moe_layers(const ModelConfig *m, const StageSpec *s, int *out, int cap);

#endif
