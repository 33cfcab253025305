// Multi-token prediction against an independent composition.
//
// Depth 2 by hand: the main model's last hidden state h0 comes from a stage holding only the main layers (no
// head); each depth k is rebuilt from backend ops (embedding of tokens shifted by k, enorm, hnorm, the [emb ; h]
// concatenation, eh_proj), then pushed through a model whose MAIN layer n_layers + k - 1 has the MTP block's
// weights (same names), then through shared_head.norm + lm_head + cross-entropy against tokens shifted by k + 1.
// Depth 2 consumes depth 1's block output. The MTP losses must equal the model's, and the balance losses must add
// up. A second test checks the weighting lambda / D in the gradients.
#include "model/model_impl.h"
#include "tests/test_model_util.h"

#include <math.h>

static const Backend *cpu(void) { return backend_get("cpu"); }

static Tensor param_tensor(Model *m, const char *name) {
    const ParamInfo *p = params_find(model_params(m), name);
    ASSERT_MSG(p, "%s missing", name);
    float *base = model_param_data(m) + p->offset;
    return p->ndim == 1 ? tensor_1d(base, DT_F32, p->shape[0]) : tensor_2d(base, DT_F32, p->shape[0], p->shape[1]);
}

static Tensor alloc_f32(int64_t r, int64_t c) {
    return tensor_2d(cpu()->alloc((size_t)(r * c) * sizeof(float)), DT_F32, r, c);
}

// tokens[:, j:T+j] of the [B, S] micro-batch, uploaded as (N) I32
static Tensor shifted_ids(const int32_t *tok, int B, int T, int S, int j) {
    int32_t *h = xmalloc((size_t)B * T * sizeof(int32_t));
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) h[b * T + t] = tok[b * S + j + t];
    Tensor ids = tensor_1d(cpu()->alloc((size_t)B * T * sizeof(int32_t)), DT_I32, (int64_t)B * T);
    cpu()->upload(ids.data, h, (size_t)B * T * sizeof(int32_t));
    free(h);
    return ids;
}

TEST(mtp_depth2_equals_hand_chain) {
    const Backend *be = cpu();
    Config c = tm_config();
    c.model.n_layers = 2;     // layer 0 dense, layer 1 MoE; MTP blocks are layers 2 and 3
    c.model.mtp_depth = 2;
    int B = c.train.micro_batch, T = c.train.seq_len, N = B * T, S = T + 3, d = c.model.dim, V = c.model.vocab_size;
    const float lambda = 0.4f, alpha = 0.2f;
    float eps = (float)c.model.norm_eps;
    Model *X = tm_model(&c, be, params_full_stage(&c.model), 11);
    int32_t *tok = tm_tokens(&c, B, T, 3);
    MicroLosses lx;
    model_eval(X, tok, lambda, alpha, &lx);

    // h0: the main layers alone
    StageSpec sz = {.layer_begin = 0, .layer_end = 2, .has_embed = 1, .ep_size = 1};
    Model *Z = model_create(&c, be, sz, B, T);
    tm_copy_params(Z, X, be);
    tm_set_biases(Z, &c);
    MicroLosses lz;
    model_stage_forward(Z, tok, 0.0f, lambda, alpha, 0, &lz);
    Tensor h_prev = model_stage_output(Z);

    // The MTP blocks as main layers 2 and 3 of a 4-layer model (dense first layer, so both are MoE like them).
    Config cy = c;
    cy.model.n_layers = 4;
    cy.model.mtp_depth = 0;
    int32_t *tok_y = xcalloc((size_t)B * (T + 1), sizeof(int32_t));   // read by no one: stages without embed/head

    Tensor rstd = alloc_f32(N, 1), en = alloc_f32(N, d), hn = alloc_f32(N, d), emb = alloc_f32(N, d);
    Tensor cat = alloc_f32(N, 2 * d), x = alloc_f32(N, d), logits = alloc_f32(N, V), losses = alloc_f32(N, 1);
    rstd = tensor_1d(rstd.data, DT_F32, N);
    losses = tensor_1d(losses.data, DT_F32, N);
    Model *Y[2];
    double balance = lz.balance_loss;
    for (int k = 1; k <= 2; k++) {
        int layer = c.model.n_layers + k - 1;
        char name[128];
        Tensor ids = shifted_ids(tok, B, T, S, k), targets = shifted_ids(tok, B, T, S, k + 1);
        be->embedding_forward(emb, ids, param_tensor(X, "model.embed_tokens.weight"));
        snprintf(name, sizeof name, "model.layers.%d.enorm.weight", layer);
        be->rmsnorm_forward(en, rstd, emb, param_tensor(X, name), eps);
        snprintf(name, sizeof name, "model.layers.%d.hnorm.weight", layer);
        be->rmsnorm_forward(hn, rstd, h_prev, param_tensor(X, name), eps);
        be->copy_cols(cat, 0, en, 0, d, 0);
        be->copy_cols(cat, d, hn, 0, d, 0);
        snprintf(name, sizeof name, "model.layers.%d.eh_proj.weight", layer);
        be->matmul_forward(x, cat, param_tensor(X, name), 0);

        StageSpec sy = {.layer_begin = layer, .layer_end = layer + 1, .ep_size = 1};
        Y[k - 1] = model_create(&cy, be, sy, B, T);
        tm_copy_params(Y[k - 1], X, be);
        tm_set_biases(Y[k - 1], &cy);   // keyed by layer index: the MTP block's bias in X
        ASSERT_EQ_INT(model_n_moe_layers(Y[k - 1]), 1);
        ASSERT(memcmp(model_expert_bias(Y[k - 1], 0), model_expert_bias(X, k), c.model.n_routed_experts * 4) == 0);
        be->copy(model_stage_input(Y[k - 1]).data, x.data, (size_t)N * d * sizeof(float));
        MicroLosses ly;
        model_stage_forward(Y[k - 1], tok_y, 0.0f, 0.0f, alpha, 0, &ly);
        balance += ly.balance_loss;
        h_prev = model_stage_output(Y[k - 1]);

        snprintf(name, sizeof name, "model.layers.%d.shared_head.norm.weight", layer);
        be->rmsnorm_forward(hn, rstd, h_prev, param_tensor(X, name), eps);
        be->matmul_forward(logits, hn, param_tensor(X, "lm_head.weight"), 0);
        be->cross_entropy_forward_backward(losses, logits, logits, targets, 0.0f);
        float *l = xmalloc((size_t)N * sizeof(float));
        be->download(l, losses.data, (size_t)N * sizeof(float));
        double mean = 0;
        for (int i = 0; i < N; i++) mean += l[i];
        mean /= N;
        ASSERT_NEAR(lx.mtp_loss[k - 1], mean, 1e-6, 0);
        printf("    depth %d: model %.9f, by hand %.9f\n", k, lx.mtp_loss[k - 1], mean);
        free(l);
        be->free(ids.data);
        be->free(targets.data);
    }
    ASSERT(fabs(lx.mtp_loss[0] - lx.mtp_loss[1]) > 1e-3);   // the depths are not the same computation
    ASSERT_NEAR(lx.balance_loss, balance, 1e-9, 0);
    ASSERT_NEAR(lx.total, lx.lm_loss + (double)lambda / 2 * (lx.mtp_loss[0] + lx.mtp_loss[1]) + lx.balance_loss,
                1e-12, 0);

    Tensor bufs[8] = {rstd, en, hn, emb, cat, x, logits, losses};
    for (int i = 0; i < 8; i++) be->free(bufs[i].data);
    free(tok); free(tok_y);
    model_free(Y[0]); model_free(Y[1]); model_free(Z); model_free(X);
}

// The MTP loss enters with weight lambda / D: its gradients double when lambda doubles, and at lambda = 0 the main
// model's gradients are those of the same model without MTP, bit for bit.
TEST(mtp_lambda_weights_gradients) {
    const Backend *be = cpu();
    Config c = tm_config();
    int B = c.train.micro_batch, T = c.train.seq_len;
    Model *a = tm_model(&c, be, params_full_stage(&c.model), 2), *b = tm_model(&c, be, params_full_stage(&c.model), 2);
    int32_t *tok = tm_tokens(&c, B, T, 6);
    MicroLosses la, lb;
    model_step(a, tok, 1.0f, 0.25f, 0.0f, &la);
    model_step(b, tok, 1.0f, 0.5f, 0.0f, &lb);
    const ParamInfo *p = params_find(model_params(a), "model.layers.3.eh_proj.weight");
    float *ga = tm_get(a, be, p, 1), *gb = tm_get(b, be, p, 1);
    double gmax = 0;
    for (int64_t j = 0; j < p->numel; j++) {
        ASSERT(gb[j] == 2 * ga[j]);
        gmax = fmax(gmax, fabs(ga[j]));
    }
    ASSERT(gmax > 1e-4);
    free(ga); free(gb);
    ASSERT(tm_same(a, b, be, "model.norm.weight", 1));   // main head only: independent of lambda

    // lambda 0 vs no MTP at all
    Config c0 = c;
    c0.model.mtp_depth = 0;
    Model *z = tm_model(&c0, be, params_full_stage(&c0.model), 2);
    int32_t *tok0 = xmalloc((size_t)B * (T + 1) * sizeof(int32_t));
    for (int r = 0; r < B; r++) memcpy(tok0 + r * (T + 1), tok + r * (T + 2), (size_t)(T + 1) * sizeof(int32_t));
    model_zero_grads(a);
    model_step(a, tok, 1.0f, 0.0f, 0.0f, &la);
    model_step(z, tok0, 1.0f, 0.0f, 0.0f, &lb);
    ASSERT(la.lm_loss == lb.lm_loss && la.total == lb.total);
    const ParamTable *tz = model_params(z);
    for (int i = 0; i < tz->n; i++)
        ASSERT_MSG(tm_same(a, z, be, tz->params[i].name, 1), "%s differs", tz->params[i].name);
    free(tok); free(tok0);
    model_free(a); model_free(b); model_free(z);
}
