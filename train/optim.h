// AdamW over a stage's parameter table, global-norm clipping, and the auxiliary-loss-free bias update.
//
// Master weights are FP32 (the model's parameter buffer); gradients FP32; the two moments are stored in BF16
// (round-to-nearest-even), as RECIPE.md section 3 says, in buffers that mirror the parameter table's offsets.
#ifndef OPTIM_H
#define OPTIM_H

#include <stdint.h>
#include "kernels/ops.h"
#include "model/params.h"

typedef struct {
    const Backend *be;
    const ParamTable *table;
    uint16_t *m, *v;      // backend memory, BF16, table->total elements each
    int64_t t;            // optimizer steps taken (bias correction uses t + 1 for the next step)
} AdamW;

typedef struct {
    float lr, beta1, beta2, eps, weight_decay;
    float grad_clip;      // max global norm; 0 = no clipping
} AdamWHyper;

void adamw_create(AdamW *o, const Backend *be, const ParamTable *table);
void adamw_free(AdamW *o);
// sqrt(sum of squares) over the whole gradient buffer (padding between tensors is zero and adds nothing).
double optim_grad_norm(const Backend *be, const ParamTable *table, float *grads);
// One AdamW step over every tensor of the table. grad_norm is the global norm the caller computed (over all ranks
// once data parallelism reduces it); the clip factor min(1, clip / norm) is applied as the gradients are read.
// Tensors marked no_decay (norm weights) get weight decay 0.
void adamw_step(AdamW *o, float *params, float *grads, const AdamWHyper *h, double grad_norm);

// Auxiliary-loss-free balancing (RECIPE.md section 2): from one optimizer step's expert load over the global batch,
// bias[i] -= gamma when expert i got more tokens than the mean load, += gamma when fewer, unchanged when equal.
// Returns MaxVio = (max_i load_i - mean) / mean of this load (0 when no tokens).
double moe_bias_update(float *bias, const int64_t *counts, int n_experts, float gamma);
// MaxVio alone.
double moe_max_violation(const int64_t *counts, int n_experts);

#endif
