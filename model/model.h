// The DeepSeek-V3 graph (RECIPE.md section 1), written once over the Backend table (kernels/ops.h): it calls ops
// on backend memory and never reads or writes activations itself, so the cpu and cuda backends run the same code.
//
// One Model is one pipeline stage: main layers [layer_begin, layer_end), optionally the embedding, the final norm
// + output head and the MTP modules (StageSpec, model/params.h). With a single stage it is the whole model.
//
// Per micro-batch of B sequences of T tokens (N = B*T rows), data flows as
//   embedding -> per layer: x += MLA(RMSNorm(x)); x += FFN(RMSNorm(x))   (FFN: dense SwiGLU or MoE)
//   -> final RMSNorm -> lm_head -> cross-entropy
//   MTP depth k = 1..D: h' = eh_proj([enorm(Emb(tokens shifted by k)) ; hnorm(h_{k-1})]) -> one block -> h_k,
//   then shared_head.norm(h_k) -> the shared lm_head -> cross-entropy against tokens shifted by k + 1
//   (h_0 = the main model's last hidden state before the final norm).
//
// Memory: parameters and gradients are one backend buffer each, laid out by the ParamTable; every activation of a
// micro-batch lives in one arena allocated in model_create (nothing is allocated in model_step). With
// cfg->train.recompute, the RMSNorm outputs, the MLA up-projection outputs (q, k, v) and the SwiGLU outputs share
// one layer-sized scratch instead of being kept per layer, and are recomputed in backward (bit-identical grads).
#ifndef MODEL_H
#define MODEL_H

#include "kernels/ops.h"
#include "model/params.h"
#include "train/config.h"

#include <stdint.h>

#define MODEL_MAX_MTP 8

typedef struct Model Model;

// ROUTE_RECORD: model_step saves every MoE layer's chosen experts; ROUTE_REPLAY: model_step / model_eval reuse
// the saved choice (gates are recomputed from the current scores for those experts), so the loss is a smooth
// function of the weights: for gradient checks and for comparing precisions on the same routing.
typedef enum { ROUTE_NORMAL = 0, ROUTE_RECORD = 1, ROUTE_REPLAY = 2 } RouteMode;

// Loss terms of one micro-batch. lm and mtp are means over the B*T tokens; balance is the sum over this stage's
// MoE layers (main and MTP) of the sequence-wise balance loss (alpha included);
// total = lm + (mtp_lambda / D) * sum_k mtp[k] + balance. A pipeline stage reports the terms it computes (a stage
// without the head: only its balance); summing each field over the stages gives the model's.
typedef struct {
    double lm_loss;
    double mtp_loss[MODEL_MAX_MTP];
    double balance_loss;
    double total;
} MicroLosses;

// Builds the parameter table of `stage`, allocates parameters, gradients (zeroed) and the activation arena for
// micro-batches of B sequences of T tokens. Dies with a message on a model config the graph cannot run.
Model *model_create(const Config *cfg, const Backend *be, StageSpec stage, int B, int T);
void model_free(Model *m);
const ParamTable *model_params(const Model *m);
float *model_param_data(Model *m);   // backend memory, table offsets
float *model_grad_data(Model *m);    // backend memory, table offsets
// After the master parameters were written (optimizer step, checkpoint load, import): under train.precision bf16
// the BF16 copy the GEMMs read is remade before the next forward. (model_param_data marks it too.)
void model_params_changed(Model *m);
// The activation dtype: DT_F32, or DT_BF16 under train.precision bf16.
DType model_act_dtype_of(const Model *m);
// Bytes of the activation arena (for memory reports).
size_t model_arena_bytes(const Model *m);
// The shape the model was created for (model_create's B and T) and its model config (vocab_size, mtp_depth, ...):
// what a caller of model_forward_logits needs to size its token and logit buffers.
int model_batch(const Model *m);
int model_seq_len(const Model *m);
const ModelConfig *model_config(const Model *m);

// normal(0, init_std) for every matrix, 1 for every RMSNorm weight. Each tensor's values come from a counter-based
// generator keyed by (seed, tensor name), so they do not depend on thread count, stage split or expert parallelism.
void model_init(Model *m, uint64_t seed);

int model_n_moe_layers(const Model *m);       // MoE layers of this stage, main then MTP (params_moe_layers order)
int model_moe_layer_index(const Model *m, int i); // the global layer index of MoE layer i
float *model_expert_bias(Model *m, int i);     // host FP32 [E] selection bias of MoE layer i (not trained)
int64_t *model_expert_counts(Model *m, int i); // host [E]: tokens routed per expert by model_step since reset
void model_reset_counts(Model *m);
void model_zero_grads(Model *m);
void model_set_route_mode(Model *m, RouteMode mode);
// The choice recorded under ROUTE_RECORD by MoE layer i: host [N, K] expert ids (NULL when none is recorded). And
// model_route_load: gives a model another model's choice (same N and K) to replay, e.g. to compare two backends or
// precisions under one routing.
const int32_t *model_route_record(const Model *m, int i);
void model_route_load(Model *m, int i, const int32_t *choice);

// One micro-batch, forward + backward. tokens: host int32 [B, T + 1 + D] (D = model.mtp_depth). The main head reads
// tokens[:, 0:T] and predicts tokens[:, 1:T+1]; MTP depth k embeds tokens[:, k:T+k] and predicts
// tokens[:, k+1:T+k+1]. Gradients of total * grad_scale are ADDED to the gradient buffer.
void model_step(Model *m, const int32_t *tokens, float grad_scale, float mtp_lambda, float balance_alpha,
                MicroLosses *out);
// Forward only, the same losses. Routes normally (or replays under ROUTE_REPLAY) and does not count expert load.
void model_eval(Model *m, const int32_t *tokens, float mtp_lambda, float balance_alpha, MicroLosses *out);
// Forward only: the main head's logits, host [B, T, V]. tokens as in model_step ([B, T + 1 + D]; only the inputs
// tokens[:, 0:T] are read). Needs a stage that embeds its input and holds the head (a single-stage model).
void model_forward_logits(Model *m, const int32_t *tokens, float *logits_host);

// ---- pipeline stages ----
// The stage with layer 0 and the embedding embeds the input tokens. The MTP modules need the embedding on their
// (last) stage: there it may be a tied copy (has_embed with layer_begin > 0), used by the MTP modules only, whose
// gradient the pipeline sums with the first stage's. Any other stage reads its input hidden state (N, d) from
// model_stage_input(), which the pipeline fills before model_stage_forward.
// A stage without the head leaves its output hidden state (N, d) in
// model_stage_output(). model_stage_grad() is one (N, d) buffer: before model_stage_backward a stage without the
// head expects the gradient w.r.t. its output there; after it, a stage that does not embed its input leaves the
// gradient w.r.t. its input there. model_step == model_stage_forward(train 1) + model_stage_backward.
Tensor model_stage_input(Model *m);
Tensor model_stage_output(Model *m);
Tensor model_stage_grad(Model *m);
// tokens as in model_step (every stage gets the micro-batch: the first reads inputs, the last targets). With
// train = 0 nothing is prepared for backward and expert load is not counted.
void model_stage_forward(Model *m, const int32_t *tokens, float grad_scale, float mtp_lambda, float balance_alpha,
                         int train, MicroLosses *out);
void model_stage_backward(Model *m);

#endif
