// Gradient check of the whole tiny model (tests/test_model_util.h: dense + 2 MoE layers with group-limited
// routing, shared experts, q_lora MLA, MTP depth 1 whose block is MoE too, balance loss on) against central finite
// differences of the total loss, on entries sampled from every parameter kind.
//
// Routing is held fixed (ROUTE_RECORD for the analytic step, ROUTE_REPLAY for every perturbed forward): the choice
// of experts is piecewise constant in the weights, so a perturbation that flipped a choice would make the finite
// difference meaningless; with the choice fixed the loss is smooth (gates, scores and the balance loss's P_i still
// move with the weights, and their gradients are checked).
#include "model/model_impl.h"
#include "tests/test_model_util.h"

#include <math.h>

static void set_entry(Model *m, const Backend *be, const ParamInfo *p, int64_t j, float v) {
    be->upload(model_param_data(m) + p->offset + j, &v, sizeof v);
}

static double total_loss(Model *m, const int32_t *tok, float lambda, float alpha) {
    MicroLosses L;
    model_eval(m, tok, lambda, alpha, &L);
    return L.total;
}

typedef struct { const ParamInfo *p; int64_t j; double g; } Entry;

// FD step 3e-3 (parameters are ~0.2 in size, norm weights ~1) and tolerance 1e-2 relative, justified by measurement
// and by the error budget: the total loss (~3) is an FP32 forward whose rounding moves it by ~1e-7 relative per
// evaluation, i.e. ~5e-7 absolute, so the difference quotient carries ~5e-7 / 6e-3 ~ 1e-4 absolute noise, 1e-3 to
// 1e-2 of the sampled gradients (|g| 2e-2 .. 4e-1: the largest of 24 random candidates of each kind); the O(eps^2)
// truncation term is ~1e-5 relative. Measured worst: 1e-3 to 2e-3. A wrong factor or a missing path shifts a gradient by
// far more than 1e-2 (the balance term alone moves the router gradients by more than 5e-2, asserted below).
#define FD_EPS 3e-3
#define FD_TOL 1e-2
#define N_CAND 24
#define N_PICK 5

static Entry entry_at(Model *m, const Backend *be, const ParamInfo *p, int64_t j) {
    float g;
    be->download(&g, model_grad_data(m) + p->offset + j, sizeof g);
    return (Entry){p, j, g};
}

// From N_CAND random entries of the tensors selected by `want`, the N_PICK with the largest analytic gradient
// (entries with a tiny gradient would only measure FP32 noise).
static int pick(Model *m, const Backend *be, int (*want)(const ParamInfo *, int), int arg, uint64_t *rng, Entry *out) {
    const ParamTable *t = model_params(m);
    int idx[256], n = 0;
    for (int i = 0; i < t->n && n < 256; i++) if (want(&t->params[i], arg)) idx[n++] = i;
    ASSERT_MSG(n > 0, "no parameter selected (arg %d)", arg);
    Entry cand[N_CAND];
    for (int k = 0; k < N_CAND; k++) {
        const ParamInfo *p = &t->params[idx[tm_next(rng) % (uint64_t)n]];
        cand[k] = entry_at(m, be, p, (int64_t)(tm_next(rng) % (uint64_t)p->numel));
    }
    int n_out = 0;
    for (int s = 0; s < N_PICK; s++) {
        int best = -1;
        for (int k = 0; k < N_CAND; k++)
            if (cand[k].p && (best < 0 || fabs(cand[k].g) > fabs(cand[best].g))) best = k;
        if (best < 0) break;
        out[n_out++] = cand[best];
        for (int k = 0; k < N_CAND; k++)
            if (k != best && cand[k].p == cand[best].p && cand[k].j == cand[best].j) cand[k].p = NULL;
        cand[best].p = NULL;
    }
    return n_out;
}

static int want_kind(const ParamInfo *p, int kind) { return (int)p->kind == kind && p->kind != PARAM_ROUTER; }
static int want_router(const ParamInfo *p, int layer) { return p->kind == PARAM_ROUTER && p->layer == layer; }

static double finite_difference(Model *m, const Backend *be, const Entry *en, const int32_t *tok, float lambda,
                                float alpha) {
    float v;
    be->download(&v, model_param_data(m) + en->p->offset + en->j, sizeof v);
    float vp = (float)(v + FD_EPS), vm = (float)(v - FD_EPS);
    set_entry(m, be, en->p, en->j, vp);
    double lp = total_loss(m, tok, lambda, alpha);
    set_entry(m, be, en->p, en->j, vm);
    double lm = total_loss(m, tok, lambda, alpha);
    set_entry(m, be, en->p, en->j, v);
    return (lp - lm) / ((double)vp - (double)vm);
}

static void run_gradcheck(Config c, const char *label) {
    const Backend *be = backend_get("cpu");
    Model *m = tm_model(&c, be, params_full_stage(&c.model), 7);
    int32_t *tok = tm_tokens(&c, c.train.micro_batch, c.train.seq_len, 99);
    const float lambda = 0.5f, alpha = 0.3f;

    model_set_route_mode(m, ROUTE_RECORD);
    MicroLosses L0;
    model_step(m, tok, 1.0f, lambda, alpha, &L0);
    model_set_route_mode(m, ROUTE_REPLAY);
    ASSERT(total_loss(m, tok, lambda, alpha) == L0.total);   // replay reproduces the recorded forward exactly
    ASSERT(L0.balance_loss > 0.01 * L0.total);               // the balance term is not negligible

    uint64_t rng = 5;
    Entry picked[16 * N_PICK];
    int n = 0;
    for (int kind = PARAM_EMBED; kind <= PARAM_HEAD; kind++)
        if (kind != PARAM_ROUTER && (kind != PARAM_DENSE_FFN || c.model.n_dense_layers > 0))
            n += pick(m, be, want_kind, kind, &rng, picked + n);
    int n_router_begin = n;
    for (int i = 0; i < model_n_moe_layers(m); i++)   // every MoE layer's router, the MTP block's included
        n += pick(m, be, want_router, model_moe_layer_index(m, i), &rng, picked + n);
    ASSERT(n >= 40);

    // The same router entries without the balance loss: the term must move them visibly, or it is not checked.
    model_zero_grads(m);
    MicroLosses L1;
    model_step(m, tok, 1.0f, lambda, 0.0f, &L1);
    double balance_effect = 0;
    for (int i = n_router_begin; i < n; i++) {
        double g0 = entry_at(m, be, picked[i].p, picked[i].j).g;
        double d = fabs(picked[i].g - g0) / fabs(picked[i].g);
        if (d > balance_effect) balance_effect = d;
    }
    ASSERT_MSG(balance_effect > 5 * FD_TOL, "balance loss changes router gradients by only %.3g", balance_effect);

    double worst = 0;
    const Entry *worst_entry = &picked[0];
    for (int i = 0; i < n; i++) {
        double fd = finite_difference(m, be, &picked[i], tok, lambda, alpha);
        double err = fabs(fd - picked[i].g) / fabs(picked[i].g);
        ASSERT_MSG(err <= FD_TOL, "%s[%lld]: analytic %.6e, finite difference %.6e (rel %.2e)", picked[i].p->name,
                   (long long)picked[i].j, picked[i].g, fd, err);
        if (err > worst) { worst = err; worst_entry = &picked[i]; }
    }
    printf("    %s: %d entries, worst relative error %.2e (%s), balance moves router grads by %.2f\n", label, n,
           worst, worst_entry->p->name, balance_effect);
    free(tok);
    model_free(m);
}

// V3: sigmoid scores, 4 groups (top-2 groups by top-2 sums), top-2 experts, MTP 1, recompute off.
TEST(gradcheck_whole_model) { run_gradcheck(tm_config(), "sigmoid, group-limited"); }

// V2-style softmax gating without groups, q_proj instead of q_lora, recompute on.
TEST(gradcheck_softmax_qproj) {
    Config c = tm_config();
    c.model.score_func = SCORE_SOFTMAX;
    c.model.n_expert_groups = 1;
    c.model.n_limited_groups = 1;
    c.model.q_lora_rank = 0;
    c.train.recompute = 1;
    run_gradcheck(c, "softmax, q_proj, recompute");
}
