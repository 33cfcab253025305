// cpu MoE ops: routing on hand-worked cases and against an independent sort-based reference, the routing backward
// against finite differences, the sequence-wise balance loss on a hand-computed 2-sequence example, the dispatch
// plan's order/offsets/counts, and gather/combine as exact adjoints (round trips).
#include "kernels/ops.h"
#include "tests/ops_testutil.h"
#include "tests/test.h"

static const Backend *cpu(void) { return backend_get("cpu"); }

// logit whose sigmoid is p
static float logit_of(double p) { return (float)log(p / (1.0 - p)); }

// E = 8 in G = 4 groups of 2, keep 2 groups, K = 2, group score = sum of the top 2 (all of a group of 2),
// route_scale 2.5. Scores (sigmoid) by expert:  0: .9  1: .1 | 2: .6  3: .5 | 4: .8  5: .25 | 6: .2  7: .4
static const double hand_scores[8] = {0.9, 0.1, 0.6, 0.5, 0.8, 0.25, 0.2, 0.4};
static RouterParams hand_params(void) { return (RouterParams){8, 2, 4, 2, 2, 0, 2.5f}; }

static void route(const float *logits, const float *bias, int N, RouterParams p, int32_t *idx, float *gates,
                  float *scores) {
    cpu()->moe_route(tensor_2d(idx, DT_I32, N, p.top_k), tensor_2d(gates, DT_F32, N, p.top_k),
                     tensor_2d(scores, DT_F32, N, p.n_experts), tensor_2d((void *)logits, DT_F32, N, p.n_experts),
                     tensor_1d((void *)bias, DT_F32, p.n_experts), p);
}

TEST(ops_moe_route_hand_example_without_bias) {
    // Group scores: g0 = .9 + .1 = 1.0, g1 = .6 + .5 = 1.1, g2 = .8 + .25 = 1.05, g3 = .2 + .4 = .6.
    // Kept: g1, g2. Expert 0 has the highest score of all but its group is dropped. Top 2 of {2: .6, 3: .5, 4: .8,
    // 5: .25} by score: [4, 2]. Gates: .8 / 1.4 * 2.5 = 1.4285714, .6 / 1.4 * 2.5 = 1.0714286.
    float logits[8], scores[8], gates[2];
    int32_t idx[2];
    for (int e = 0; e < 8; e++) logits[e] = logit_of(hand_scores[e]);
    route(logits, NULL, 1, hand_params(), idx, gates, scores);
    ASSERT_EQ_INT(idx[0], 4);
    ASSERT_EQ_INT(idx[1], 2);
    ASSERT_NEAR(gates[0], 0.8 / 1.4 * 2.5, 1e-6, 0);
    ASSERT_NEAR(gates[1], 0.6 / 1.4 * 2.5, 1e-6, 0);
    for (int e = 0; e < 8; e++) ASSERT_NEAR(scores[e], hand_scores[e], 1e-6, 0);
}

TEST(ops_moe_route_hand_example_bias_changes_choice) {
    // Bias [0, 0, 0, 0, -.5, 0, .45, .35]: biased scores 0: .9 1: .1 | 2: .6 3: .5 | 4: .3 5: .25 | 6: .65 7: .75.
    // Group scores: g0 = 1.0, g1 = 1.1, g2 = .55, g3 = 1.4. Kept: g3, g1. Top 2 of {2: .6, 3: .5, 6: .65, 7: .75}
    // by biased score: [7, 6]. Gates from the UNBIASED scores .4 and .2: .4 / .6 * 2.5 = 1.6666667, .2 / .6 * 2.5 =
    // .8333333. A second token (all logits 0, scores .5) in the same call: every biased score is .5 + bias, groups
    // g0 = 1.0, g1 = 1.0, g2 = .75, g3 = 1.8; kept g3 and g0 (ties: lower index); experts by biased score: 6 (.95),
    // 7 (.85); gates .5 / 1.0 * 2.5 = 1.25 each.
    float logits[16], scores[16], gates[4];
    float bias[8] = {0, 0, 0, 0, -0.5f, 0, 0.45f, 0.35f};
    int32_t idx[4];
    for (int e = 0; e < 8; e++) logits[e] = logit_of(hand_scores[e]), logits[8 + e] = 0.0f;
    route(logits, bias, 2, hand_params(), idx, gates, scores);
    ASSERT_EQ_INT(idx[0], 7);
    ASSERT_EQ_INT(idx[1], 6);
    ASSERT_NEAR(gates[0], 0.4 / 0.6 * 2.5, 1e-6, 0);
    ASSERT_NEAR(gates[1], 0.2 / 0.6 * 2.5, 1e-6, 0);
    ASSERT_EQ_INT(idx[2], 6);
    ASSERT_EQ_INT(idx[3], 7);
    ASSERT_NEAR(gates[2], 1.25, 1e-6, 0);
    ASSERT_NEAR(gates[3], 1.25, 1e-6, 0);
}

TEST(ops_moe_route_ties_go_to_lower_index) {
    // All scores exactly .5, no bias: every group ties at 1.0 -> groups 0 and 1 kept; every expert ties -> [0, 1].
    float logits[8] = {0}, scores[8], gates[2];
    int32_t idx[2];
    route(logits, NULL, 1, hand_params(), idx, gates, scores);
    ASSERT_EQ_INT(idx[0], 0);
    ASSERT_EQ_INT(idx[1], 1);
    ASSERT_NEAR(gates[0], 1.25, 1e-7, 0);
    ASSERT_NEAR(gates[1], 1.25, 1e-7, 0);
}

TEST(ops_moe_route_softmax_hand_example) {
    // Softmax gating (16B/236B configs): logits ln(w), w = [.05 .3 .1 .1 .2 .15 .05 .05] (sums to 1, so the scores
    // are w). Group score = top-1 (max) of the group, as the official Gate without bias: g0 .3, g1 .1, g2 .2,
    // g3 .05 -> keep g0, g2; top 2 of {0: .05, 1: .3, 4: .2, 5: .15}: [1, 4]. Softmax gates are not renormalized:
    // route_scale 2 -> [.6, .4].
    const double w[8] = {0.05, 0.3, 0.1, 0.1, 0.2, 0.15, 0.05, 0.05};
    float logits[8], scores[8], gates[2];
    int32_t idx[2];
    for (int e = 0; e < 8; e++) logits[e] = (float)log(w[e]);
    RouterParams p = {8, 2, 4, 2, 1, 1, 2.0f};
    route(logits, NULL, 1, p, idx, gates, scores);
    for (int e = 0; e < 8; e++) ASSERT_NEAR(scores[e], w[e], 1e-6, 0);
    ASSERT_EQ_INT(idx[0], 1);
    ASSERT_EQ_INT(idx[1], 4);
    ASSERT_NEAR(gates[0], 0.6, 1e-6, 0);
    ASSERT_NEAR(gates[1], 0.4, 1e-6, 0);
}

// Independent reference: rank groups and experts by sorting (stable, so ties keep the lower index first).
typedef struct { double v; int i; } Ranked;
static int ranked_desc(const void *a, const void *b) {
    const Ranked *x = a, *y = b;
    if (x->v != y->v) return x->v < y->v ? 1 : -1;
    return x->i - y->i;
}

TEST(ops_moe_route_matches_sort_reference) {
    ops_rng_seed(401);
    enum { N = 64, E = 16, G = 4, PER = E / G, KG = 2, K = 4, GK = 2 };
    RouterParams p = {E, K, G, KG, GK, 0, 2.5f};
    float *logits = ops_rand(N * E, 3.0f), *bias = ops_rand(E, 0.2f), scores[N * E], gates[N * K];
    int32_t idx[N * K];
    route(logits, bias, N, p, idx, gates, scores);
    for (int t = 0; t < N; t++) {
        // Scores against a double sigmoid; the ranking then uses the op's FP32 scores and FP32 sums (as the op does),
        // so a near-tie cannot be resolved differently by rounding alone.
        double s[E];
        float b[E];
        for (int e = 0; e < E; e++) {
            s[e] = 1.0 / (1.0 + exp(-(double)logits[t * E + e]));
            ASSERT_NEAR(scores[t * E + e], s[e], 1e-6, 0);
            b[e] = scores[t * E + e] + bias[e];
        }
        Ranked gr[G];
        for (int g = 0; g < G; g++) {
            Ranked in[PER];
            for (int i = 0; i < PER; i++) in[i] = (Ranked){b[g * PER + i], i};
            qsort(in, PER, sizeof *in, ranked_desc);
            float top2 = (float)in[0].v + (float)in[1].v;
            gr[g] = (Ranked){top2, g};
        }
        qsort(gr, G, sizeof *gr, ranked_desc);
        Ranked ex[E];
        int n = 0;
        for (int r = 0; r < KG; r++)
            for (int i = 0; i < PER; i++, n++) ex[n] = (Ranked){b[gr[r].i * PER + i], gr[r].i * PER + i};
        qsort(ex, n, sizeof *ex, ranked_desc);
        double sum = 0.0;
        for (int k = 0; k < K; k++) sum += s[ex[k].i];
        for (int k = 0; k < K; k++) {
            ASSERT_MSG(idx[t * K + k] == ex[k].i, "token %d slot %d: expert %d, reference %d (seed %llu)", t, k,
                       idx[t * K + k], ex[k].i, (unsigned long long)ops_seed);
            ASSERT_NEAR(gates[t * K + k], s[ex[k].i] / sum * 2.5, 1e-5, 0);
        }
    }
}

// ---- routing backward ----
// With the selection frozen (it is piecewise constant), loss(logits) = sum_k Rg[t,k] gate[t,k] + sum_e Rs[t,e] s[t,e]
// in double; the op's dlogits (from dgates = Rg, dscores_extra = Rs) must be its gradient.
typedef struct { int N, E, K, softmax; double scale, *x, *Rg, *Rs; const int32_t *idx; } RouteCtx;

static double route_loss(void *p) {
    RouteCtx *c = p;
    double L = 0.0, s[64];
    for (int t = 0; t < c->N; t++) {
        const double *x = c->x + t * c->E;
        if (c->softmax) {
            double mx = -INFINITY, z = 0.0;
            for (int e = 0; e < c->E; e++) mx = fmax(mx, x[e]);
            for (int e = 0; e < c->E; e++) z += exp(x[e] - mx);
            for (int e = 0; e < c->E; e++) s[e] = exp(x[e] - mx) / z;
        } else {
            for (int e = 0; e < c->E; e++) s[e] = 1.0 / (1.0 + exp(-x[e]));
        }
        double S = 0.0;
        for (int k = 0; k < c->K; k++) S += s[c->idx[t * c->K + k]];
        for (int k = 0; k < c->K; k++) {
            double g = s[c->idx[t * c->K + k]] * c->scale;
            if (!c->softmax) g /= S + 1e-20;
            L += g * c->Rg[t * c->K + k];
        }
        if (c->Rs)
            for (int e = 0; e < c->E; e++) L += s[e] * c->Rs[t * c->E + e];
    }
    return L;
}

TEST(ops_moe_route_backward_matches_finite_differences) {
    ops_rng_seed(402);
    // {N, E, G, keep, K, group_score_topk, softmax, with dscores_extra}
    static const int cases[][8] = {{1, 8, 4, 2, 2, 2, 0, 1}, {3, 8, 4, 2, 3, 2, 0, 0}, {5, 6, 1, 1, 3, 1, 0, 1},
                                   {2, 8, 4, 2, 2, 1, 1, 1}, {4, 7, 1, 1, 2, 1, 1, 0}};
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const int *cs = cases[ci];
        int N = cs[0], E = cs[1], K = cs[4];
        RouterParams p = {E, K, cs[2], cs[3], cs[5], cs[6], 2.5f};
        float *logits = ops_rand(N * E, 2.0f), *bias = ops_rand(E, 0.1f), *Rg = ops_rand(N * K, 1.0f);
        float *Rs = cs[7] ? ops_rand(N * E, 1.0f) : NULL;
        float *scores = calloc(N * E, 4), *gates = calloc(N * K, 4), *dl = ops_rand(N * E, 9.0f);
        int32_t *idx = calloc(N * K, 4);
        route(logits, bias, N, p, idx, gates, scores);
        cpu()->moe_route_backward(tensor_2d(dl, DT_F32, N, E), tensor_2d(Rg, DT_F32, N, K),
                                  tensor_2d(Rs, DT_F32, N, E), tensor_2d(scores, DT_F32, N, E),
                                  tensor_2d(idx, DT_I32, N, K), p);
        RouteCtx c = {N, E, K, cs[6], 2.5, ops_to_double(logits, N * E), ops_to_double(Rg, N * K),
                      Rs ? ops_to_double(Rs, N * E) : NULL, idx};
        double *g = ops_fd_grad(route_loss, &c, c.x, N * E);
        EXPECT_CLOSE("route dlogits", dl, g, N * E, 1e-4, 1e-5);
        free(logits), free(bias), free(Rg), free(Rs), free(scores), free(gates), free(dl), free(idx);
        free(c.x), free(c.Rg), free(c.Rs), free(g);
    }
}

// ---- balance loss ----
// B = 2 sequences of T = 2 tokens, E = 4, K = 2, alpha = 0.1.
// Seq 0: t0 s = [.5 .25 .125 .125] top {0, 1};  t1 s = [.1 .2 .3 .4] top {3, 2}.  Counts [1 1 1 1], f_i = 4 / (2*2)
//   * count = [1 1 1 1]; P = [(.5+.1)/2, (.25+.2)/2, (.125+.3)/2, (.125+.4)/2] = [.3 .225 .2125 .2625];
//   sum f P = 1.0; L0 = .1.
// Seq 1: t0 s = [.4 .4 .8 .4] (sum 2: normalized to [.2 .2 .4 .2]) top {2, 0};  t1 s = [.6 .2 .1 .1] top {0, 1}.
//   Counts [2 1 1 0], f = [2 1 1 0]; P = [.4 .2 .25 .15]; sum f P = .8 + .2 + .25 = 1.25; L1 = .125.
// Mean over sequences: .1125.
static const float bal_scores[16] = {0.5f, 0.25f, 0.125f, 0.125f, 0.1f, 0.2f, 0.3f, 0.4f,
                                     0.4f, 0.4f,  0.8f,   0.4f,   0.6f, 0.2f, 0.1f, 0.1f};
static const int32_t bal_idx[8] = {0, 1, 3, 2, 2, 0, 0, 1};

typedef struct { int B, T, E, K; double alpha, *s; const int32_t *idx; const double *R; } BalCtx;

static double bal_loss_ref(void *p) {
    BalCtx *c = p;
    double total = 0.0;
    for (int b = 0; b < c->B; b++) {
        double f[64] = {0}, P[64] = {0}, L = 0.0;
        for (int t = 0; t < c->T; t++)
            for (int k = 0; k < c->K; k++) f[c->idx[(b * c->T + t) * c->K + k]] += (double)c->E / (c->K * c->T);
        for (int t = 0; t < c->T; t++) {
            const double *st = c->s + (b * c->T + t) * c->E;
            double z = 0.0;
            for (int e = 0; e < c->E; e++) z += st[e];
            for (int e = 0; e < c->E; e++) P[e] += st[e] / z / c->T;
        }
        for (int e = 0; e < c->E; e++) L += f[e] * P[e];
        total += c->alpha * L;
    }
    return total / c->B;
}

TEST(ops_moe_balance_loss_hand_example_and_gradient) {
    float s[16], ds[16], L = -1, L2 = -2;
    memcpy(s, bal_scores, sizeof s);
    const float gs = 3.0f;
    cpu()->moe_balance_loss(tensor_1d(&L, DT_F32, 1), tensor_2d(ds, DT_F32, 4, 4), tensor_2d(s, DT_F32, 4, 4),
                            tensor_2d((void *)bal_idx, DT_I32, 4, 2), 2, 2, 2, 0.1f, gs);
    ASSERT_NEAR(L, 0.1125, 1e-6, 0);
    // Without a gradient buffer: same loss, nothing written.
    cpu()->moe_balance_loss(tensor_1d(&L2, DT_F32, 1), tensor_2d(NULL, DT_F32, 4, 4), tensor_2d(s, DT_F32, 4, 4),
                            tensor_2d((void *)bal_idx, DT_I32, 4, 2), 2, 2, 2, 0.1f, gs);
    ASSERT(L2 == L);
    // Without a loss buffer: the same gradient.
    float ds2[16];
    cpu()->moe_balance_loss(tensor_1d(NULL, DT_F32, 1), tensor_2d(ds2, DT_F32, 4, 4), tensor_2d(s, DT_F32, 4, 4),
                            tensor_2d((void *)bal_idx, DT_I32, 4, 2), 2, 2, 2, 0.1f, gs);
    ASSERT(memcmp(ds, ds2, sizeof ds) == 0);
    BalCtx c = {2, 2, 4, 2, 0.1, ops_to_double(s, 16), bal_idx, NULL};
    double *g = ops_fd_grad(bal_loss_ref, &c, c.s, 16);
    for (int i = 0; i < 16; i++) g[i] *= gs;
    EXPECT_CLOSE("balance dscores", ds, g, 16, 1e-4, 1e-5);
    // Hand check of one entry: seq 0 token 0 (Z = 1), expert 0: alpha / (B T) * (f_0 / Z - sum_i f_i s_i / Z^2)
    //   = .1 / 4 * (1 - 1) = 0; expert 0 of seq 1 token 0 (Z = 2): .1 / 4 * (2 / 2 - (2*.4 + .4 + .8 + 0) / 4) = .0125.
    ASSERT_NEAR(ds[0], 0.0, 0, 1e-8);
    ASSERT_NEAR(ds[8], 0.0125 * gs, 1e-5, 0);
    free(c.s), free(g);
}

TEST(ops_moe_balance_loss_random_matches_reference) {
    ops_rng_seed(403);
    enum { B = 3, T = 5, E = 7, K = 3 };
    float s[B * T * E], ds[B * T * E];
    int32_t idx[B * T * K];
    for (int i = 0; i < B * T * E; i++) s[i] = 0.05f + 0.5f * (ops_rng_unit() + 1.0f);
    for (int t = 0; t < B * T; t++)
        for (int k = 0; k < K; k++) idx[t * K + k] = (t + 2 * k) % E; // distinct within a token
    float L = 0;
    cpu()->moe_balance_loss(tensor_1d(&L, DT_F32, 1), tensor_2d(ds, DT_F32, B * T, E), tensor_2d(s, DT_F32, B * T, E),
                            tensor_2d(idx, DT_I32, B * T, K), B, T, K, 1e-4f, 1.0f);
    BalCtx c = {B, T, E, K, 1e-4, ops_to_double(s, B * T * E), idx, NULL};
    ASSERT_NEAR(L, bal_loss_ref(&c), 1e-6, 0);
    double *g = ops_fd_grad(bal_loss_ref, &c, c.s, B * T * E);
    EXPECT_CLOSE("balance dscores", ds, g, B * T * E, 1e-4, 1e-5);
    free(c.s), free(g);
}

// ---- dispatch plan, gather, combine ----
// topk_idx (N = 4, K = 2) = [[2 0] [0 2] [3 0] [2 3]]: pairs p = t*K + k -> experts 0:2 1:0 2:0 3:2 4:3 5:0 6:2 7:3.
// Stable sort by expert: e0 = {1, 2, 5}, e1 = {}, e2 = {0, 3, 6}, e3 = {4, 7}: order = [1 2 5 0 3 6 4 7],
// offsets = [0 3 3 6 8]; counts starting at [10 0 0 1] becomes [13 0 3 3].
static const int32_t plan_idx[8] = {2, 0, 0, 2, 3, 0, 2, 3};

TEST(ops_moe_dispatch_plan_hand_example) {
    int32_t order[8], offsets[5], offsets_host[5];
    int32_t counts[4] = {10, 0, 0, 1};
    cpu()->moe_dispatch_plan(tensor_1d(order, DT_I32, 8), tensor_1d(offsets, DT_I32, 5), offsets_host,
                             tensor_1d(counts, DT_I32, 4), tensor_2d((void *)plan_idx, DT_I32, 4, 2), 4);
    const int32_t want_order[8] = {1, 2, 5, 0, 3, 6, 4, 7}, want_off[5] = {0, 3, 3, 6, 8};
    const int32_t want_counts[4] = {13, 0, 3, 3};
    for (int j = 0; j < 8; j++) ASSERT_EQ_INT(order[j], want_order[j]);
    for (int e = 0; e < 5; e++) ASSERT_EQ_INT(offsets[e], want_off[e]);
    for (int e = 0; e < 5; e++) ASSERT_EQ_INT(offsets_host[e], want_off[e]);
    for (int e = 0; e < 4; e++) ASSERT_EQ_INT(counts[e], want_counts[e]);
    // No host copy and no counts asked for: the same plan.
    int32_t order2[8], offsets2[5];
    cpu()->moe_dispatch_plan(tensor_1d(order2, DT_I32, 8), tensor_1d(offsets2, DT_I32, 5), NULL,
                             tensor_1d(NULL, DT_I32, 4), tensor_2d((void *)plan_idx, DT_I32, 4, 2), 4);
    for (int j = 0; j < 8; j++) ASSERT_EQ_INT(order2[j], want_order[j]);
    for (int e = 0; e < 5; e++) ASSERT_EQ_INT(offsets2[e], want_off[e]);
}

TEST(ops_moe_gather_combine_round_trip_and_adjoints) {
    ops_rng_seed(404);
    enum { N = 4, K = 2, D = 5, NK = N * K };
    int32_t order[NK], offsets[5], offsets_host[5];
    cpu()->moe_dispatch_plan(tensor_1d(order, DT_I32, NK), tensor_1d(offsets, DT_I32, 5), offsets_host,
                             tensor_1d(NULL, DT_I32, 4), tensor_2d((void *)plan_idx, DT_I32, N, K), 4);
    float *x = ops_rand(N * D, 1.0f), xs[NK * D];
    cpu()->moe_gather(tensor_2d(xs, DT_F32, NK, D), tensor_2d(x, DT_F32, N, D), tensor_1d(order, DT_I32, NK), K);
    for (int j = 0; j < NK; j++)
        for (int c = 0; c < D; c++) ASSERT(xs[j * D + c] == x[(order[j] / K) * D + c]);
    // Identity experts and gates that sum to 1 per token: combine(gather(x)) == x.
    float gates[NK] = {0.25f, 0.75f, 0.5f, 0.5f, 1.0f, 0.0f, 0.125f, 0.875f}, out[N * D];
    cpu()->moe_combine(tensor_2d(out, DT_F32, N, D), tensor_2d(xs, DT_F32, NK, D), tensor_2d(gates, DT_F32, N, K),
                       tensor_1d(order, DT_I32, NK), 0);
    double xw[N * D];
    for (int i = 0; i < N * D; i++) xw[i] = x[i];
    EXPECT_CLOSE("combine(gather(x))", out, xw, N * D, 1e-6, 0);
    // accumulate = 1 adds a second copy.
    cpu()->moe_combine(tensor_2d(out, DT_F32, N, D), tensor_2d(xs, DT_F32, NK, D), tensor_2d(gates, DT_F32, N, K),
                       tensor_1d(order, DT_I32, NK), 1);
    for (int i = 0; i < N * D; i++) xw[i] *= 2.0;
    EXPECT_CLOSE("combine accumulate", out, xw, N * D, 1e-6, 0);

    // gather_backward is gather's transpose: <gather(x), g> = <x, gather_backward(g)>.
    float *g = ops_rand(NK * D, 1.0f), dx[N * D];
    cpu()->moe_gather_backward(tensor_2d(dx, DT_F32, N, D), tensor_2d(g, DT_F32, NK, D), tensor_1d(order, DT_I32, NK),
                               K, 0);
    double lhs = 0.0, rhs = 0.0;
    for (int i = 0; i < NK * D; i++) lhs += (double)xs[i] * g[i];
    for (int i = 0; i < N * D; i++) rhs += (double)x[i] * dx[i];
    ASSERT_NEAR(lhs, rhs, 1e-5, 1e-6);
    float dx2[N * D];
    memcpy(dx2, x, sizeof dx2);
    cpu()->moe_gather_backward(tensor_2d(dx2, DT_F32, N, D), tensor_2d(g, DT_F32, NK, D),
                               tensor_1d(order, DT_I32, NK), K, 1);
    for (int i = 0; i < N * D; i++) ASSERT_NEAR(dx2[i], (double)x[i] + dx[i], 1e-6, 1e-7);

    // combine is bilinear in (y_sorted, gates): its backward gives both partials exactly:
    //   <combine(y, gates), R> = <y, dy_sorted> = <gates, dgates>.
    float *y = ops_rand(NK * D, 1.0f), *R = ops_rand(N * D, 1.0f), *rg = ops_rand(NK, 1.0f), comb[N * D];
    float dy[NK * D], dg[NK];
    cpu()->moe_combine(tensor_2d(comb, DT_F32, N, D), tensor_2d(y, DT_F32, NK, D), tensor_2d(rg, DT_F32, N, K),
                       tensor_1d(order, DT_I32, NK), 0);
    cpu()->moe_combine_backward(tensor_2d(dy, DT_F32, NK, D), tensor_2d(dg, DT_F32, N, K), tensor_2d(R, DT_F32, N, D),
                                tensor_2d(y, DT_F32, NK, D), tensor_2d(rg, DT_F32, N, K), tensor_1d(order, DT_I32, NK));
    double L = 0.0, Ly = 0.0, Lg = 0.0;
    for (int i = 0; i < N * D; i++) L += (double)comb[i] * R[i];
    for (int i = 0; i < NK * D; i++) Ly += (double)y[i] * dy[i];
    for (int i = 0; i < NK; i++) Lg += (double)rg[i] * dg[i];
    ASSERT_NEAR(Ly, L, 1e-5, 1e-6);
    ASSERT_NEAR(Lg, L, 1e-5, 1e-6);
    // One entry by hand: pair 0 (token 0, slot 0) sits at sorted position 3: dgates[0] = <R[0], y[3]>.
    double d0 = 0.0;
    for (int c = 0; c < D; c++) d0 += (double)R[c] * y[3 * D + c];
    ASSERT_NEAR(dg[0], d0, 1e-6, 1e-7);
}

static void die_route_bad_groups(void *unused) {
    (void)unused;
    static float l[8], s[8], g[2], b[8];
    static int32_t idx[2];
    RouterParams p = {8, 2, 3, 2, 2, 0, 1.0f}; // 8 experts do not split into 3 groups
    backend_get("cpu")->moe_route(tensor_2d(idx, DT_I32, 1, 2), tensor_2d(g, DT_F32, 1, 2), tensor_2d(s, DT_F32, 1, 8),
                                  tensor_2d(l, DT_F32, 1, 8), tensor_1d(b, DT_F32, 8), p);
}
static void die_route_too_few_kept(void *unused) {
    (void)unused;
    static float l[8], s[8], g[5], b[8];
    static int32_t idx[5];
    RouterParams p = {8, 5, 4, 2, 2, 0, 1.0f}; // 2 kept groups of 2 hold 4 experts < top_k 5
    backend_get("cpu")->moe_route(tensor_2d(idx, DT_I32, 1, 5), tensor_2d(g, DT_F32, 1, 5), tensor_2d(s, DT_F32, 1, 8),
                                  tensor_2d(l, DT_F32, 1, 8), tensor_1d(b, DT_F32, 8), p);
}
static void die_dispatch_bad_expert(void *unused) {
    (void)unused;
    static int32_t idx[4] = {0, 1, 4, 2}, order[4], off[5], offh[5];
    backend_get("cpu")->moe_dispatch_plan(tensor_1d(order, DT_I32, 4), tensor_1d(off, DT_I32, 5), offh,
                                          tensor_1d(NULL, DT_I32, 4), tensor_2d(idx, DT_I32, 2, 2), 4);
}
static void die_balance_bad_rows(void *unused) {
    (void)unused;
    static float s[6 * 4];
    static int32_t idx[6 * 2];
    backend_get("cpu")->moe_balance_loss(tensor_1d(NULL, DT_F32, 1), tensor_2d(NULL, DT_F32, 6, 4),
                                         tensor_2d(s, DT_F32, 6, 4), tensor_2d(idx, DT_I32, 6, 2), 2, 4, 2, 0.1f, 1.0f);
}

TEST(ops_moe_bad_inputs_die) {
    EXPECT_DIE(die_route_bad_groups, NULL, "moe_route: n_experts 8 must be positive and divisible by n_groups 3");
    EXPECT_DIE(die_route_too_few_kept, NULL, "moe_route: top_k 5 exceeds the 4 experts in the 2 kept groups");
    EXPECT_DIE(die_dispatch_bad_expert, NULL, "moe_dispatch_plan: topk_idx[2] = 4 is not an expert in [0, 4)");
    EXPECT_DIE(die_balance_bad_rows, NULL, "moe_balance_loss: scores (6, 4) has rows (B * T) = 6, expected 8");
}
