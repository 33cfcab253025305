// Helpers shared by the model tests (test_model.c, test_model_mtp.c, test_gradcheck.c): a small DeepSeek-V3 config
// that exercises every feature (q_lora, dense + MoE layers, group-limited routing, shared experts, MTP), random
// tokens and biases, and parameter copies by name between models of different stage splits.
#ifndef TEST_MODEL_UTIL_H
#define TEST_MODEL_UTIL_H

#include "model/model.h"
#include "tests/test.h"
#include "train/check.h"

#include <stdint.h>
#include <string.h>

// vocab 24, dim 16, 3 layers (layer 0 dense, 1 and 2 MoE), 2 heads, q_lora 8, kv_lora 8, nope/rope/v 4/4/4,
// 8 routed experts in 4 groups (top-2 groups, top-2 experts) + 1 shared, moe_inter 8, MTP depth 1.
// init_std 0.2 (not 0.006) so that every branch moves the loss visibly in FP32.
static inline Config tm_config(void) {
    Config c;
    memset(&c, 0, sizeof c);
    ModelConfig *m = &c.model;
    m->vocab_size = 24; m->dim = 16; m->inter_dim = 24; m->moe_inter_dim = 8;
    m->n_layers = 3; m->n_dense_layers = 1; m->n_heads = 2;
    m->n_routed_experts = 8; m->n_shared_experts = 1; m->n_activated_experts = 2;
    m->n_expert_groups = 4; m->n_limited_groups = 2; m->score_func = SCORE_SIGMOID; m->route_scale = 2.5;
    m->group_score_topk = 2;
    m->q_lora_rank = 8; m->kv_lora_rank = 8;
    m->qk_nope_head_dim = 4; m->qk_rope_head_dim = 4; m->v_head_dim = 4;
    m->mtp_depth = 1; m->norm_eps = 1e-6; m->init_std = 0.2; m->rope_theta = 10000;
    m->rope_scaling = ROPE_NONE; m->rope_factor = 1; m->beta_fast = 32; m->beta_slow = 1; m->mscale = 1;
    m->original_seq_len = 4096;
    c.train.seq_len = 6;
    c.train.micro_batch = 2;
    return c;
}

static inline uint64_t tm_next(uint64_t *s) {
    uint64_t x = (*s += 0x9E3779B97F4A7C15ull);
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}
static inline double tm_uniform(uint64_t *s) { return (double)(tm_next(s) >> 11) / 9007199254740992.0; }

// tokens [B, T + 1 + D], uniform over the vocabulary
static inline int32_t *tm_tokens(const Config *c, int B, int T, uint64_t seed) {
    int S = T + 1 + c->model.mtp_depth;
    int32_t *t = xmalloc((size_t)B * S * sizeof(int32_t));
    for (int i = 0; i < B * S; i++) t[i] = (int32_t)(tm_next(&seed) % (uint64_t)c->model.vocab_size);
    return t;
}

// Biases of every MoE layer, uniform in +-0.05, keyed by the global layer index (models of different stage splits
// get the same biases for the same layer).
static inline void tm_set_biases(Model *m, const Config *c) {
    for (int i = 0; i < model_n_moe_layers(m); i++) {
        uint64_t s = 1000 + (uint64_t)model_moe_layer_index(m, i);
        float *b = model_expert_bias(m, i);
        for (int e = 0; e < c->model.n_routed_experts; e++) b[e] = (float)(0.1 * tm_uniform(&s) - 0.05);
    }
}

// create + init + biases
static inline Model *tm_model(const Config *c, const Backend *be, StageSpec st, uint64_t seed) {
    Model *m = model_create(c, be, st, c->train.micro_batch, c->train.seq_len);
    model_init(m, seed);
    tm_set_biases(m, c);
    return m;
}

// Host copy of one parameter's values (grad = 1: its gradient).
static inline float *tm_get(Model *m, const Backend *be, const ParamInfo *p, int grad) {
    float *h = xmalloc((size_t)p->numel * sizeof(float));
    be->download(h, (grad ? model_grad_data(m) : model_param_data(m)) + p->offset, (size_t)p->numel * sizeof(float));
    return h;
}

// Copies every parameter of dst from the tensor of the same name in src (asserting it exists there).
static inline void tm_copy_params(Model *dst, Model *src, const Backend *be) {
    const ParamTable *td = model_params(dst), *ts = model_params(src);
    for (int i = 0; i < td->n; i++) {
        const ParamInfo *p = &td->params[i], *q = params_find(ts, p->name);
        ASSERT_MSG(q && q->numel == p->numel, "%s missing in the source model", p->name);
        be->copy(model_param_data(dst) + p->offset, model_param_data(src) + q->offset,
                 (size_t)p->numel * sizeof(float));
    }
}

// Bitwise equality of a named tensor's values (grad = 1: gradients) in two models.
static inline int tm_same(Model *a, Model *b, const Backend *be, const char *name, int grad) {
    const ParamInfo *p = params_find(model_params(a), name), *q = params_find(model_params(b), name);
    ASSERT_MSG(p && q, "%s missing", name);
    float *x = tm_get(a, be, p, grad), *y = tm_get(b, be, q, grad);
    int same = memcmp(x, y, (size_t)p->numel * sizeof(float)) == 0;
    free(x);
    free(y);
    return same;
}

#endif
