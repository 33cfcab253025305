#include "train/optim.h"
#include "train/check.h"

#include <math.h>

void adamw_create(AdamW *o, const Backend *be, const ParamTable *table) {
    o->be = be;
    o->table = table;
    // alloc zero-fills: BF16 zero is the bit pattern 0, so both moments start at exactly 0.
    o->m = be->alloc((size_t)table->total * sizeof(uint16_t));
    o->v = be->alloc((size_t)table->total * sizeof(uint16_t));
    o->t = 0;
}

void adamw_free(AdamW *o) {
    o->be->free(o->m);
    o->be->free(o->v);
    o->m = o->v = NULL;
}

double optim_grad_norm(const Backend *be, const ParamTable *table, float *grads) {
    return sqrt(be->sum_squares(tensor_1d(grads, DT_F32, table->total)));
}

// One adamw_update launch per run of consecutive tensors (in buffer order) with the same weight decay, covering the
// padding between them: padding holds zero parameters, gradients and moments, which AdamW maps to zero (the update
// is 0 / (0 + eps) and the decay of 0 is 0), so a run gives exactly the per-tensor result in far fewer launches
// (tens per step instead of one per tensor: bench-1gpu has 2270 tensors, the routed experts one each).
void adamw_step(AdamW *o, float *params, float *grads, const AdamWHyper *h, double grad_norm) {
    float clip_scale = 1.0f;
    if (h->grad_clip > 0 && grad_norm > h->grad_clip) clip_scale = (float)(h->grad_clip / grad_norm);
    o->t++;
    const ParamTable *t = o->table;
    int64_t begin = 0;
    for (int i = 0; i < t->n; i++) {
        const ParamInfo *p = &t->params[i];
        CHECK(i == 0 || p->offset >= t->params[i - 1].offset + t->params[i - 1].numel,
              "adamw_step: parameter %s is not after %s in the buffer", p->name, t->params[i - 1].name);
        int last = i + 1 == t->n || t->params[i + 1].no_decay != p->no_decay;
        if (!last) continue;
        int64_t end = i + 1 == t->n ? t->total : t->params[i + 1].offset, n = end - begin;
        float wd = p->no_decay ? 0.0f : h->weight_decay;
        o->be->adamw_update(tensor_1d(params + begin, DT_F32, n), tensor_1d(grads + begin, DT_F32, n),
                            tensor_1d(o->m + begin, DT_BF16, n), tensor_1d(o->v + begin, DT_BF16, n), h->lr,
                            h->beta1, h->beta2, h->eps, wd, clip_scale, o->t);
        begin = end;
    }
}

double moe_max_violation(const int64_t *counts, int n_experts) {
    int64_t total = 0, max = 0;
    for (int i = 0; i < n_experts; i++) {
        total += counts[i];
        if (counts[i] > max) max = counts[i];
    }
    if (total == 0) return 0.0;
    double mean = (double)total / n_experts;
    return ((double)max - mean) / mean;
}

double moe_bias_update(float *bias, const int64_t *counts, int n_experts, float gamma) {
    int64_t total = 0;
    for (int i = 0; i < n_experts; i++) total += counts[i];
    // Compare count * E with the total instead of count with total / E: exact integer test, no rounding ties.
    for (int i = 0; i < n_experts; i++) {
        int64_t scaled = counts[i] * (int64_t)n_experts;
        if (scaled > total) bias[i] -= gamma;
        else if (scaled < total) bias[i] += gamma;
    }
    return moe_max_violation(counts, n_experts);
}
