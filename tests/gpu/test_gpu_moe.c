// cuda vs cpu: MoE routing (sigmoid with V3's group limit, softmax), its backward, the sequence-wise balance loss,
// the dispatch plan, gather/combine and their backward.
//
// Routing is discontinuous: the two backends' expf differ by an ulp, so a near tie between two experts may flip.
// The routing tests therefore (a) build inputs with clear margins (every biased score and group score separated by
// far more than rounding) and demand the same choices, gates to a few ulp; (b) run random inputs and report the
// flip rate on its own, comparing gates only where the choices agree; (c) check exact ties and NaNs, which both
// backends must resolve identically (lower index wins, the cpu scan's NaN rule).
// Token movement (plan, gather, gather backward, combine) is exact: integer work, or FP32 sums in the cpu's order.
#include "tests/gpu/gpu_testutil.h"

static void perm(int *p, int n) {
    for (int i = 0; i < n; i++) p[i] = i;
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(ops_rng_u64() % (uint64_t)(i + 1)), t = p[i];
        p[i] = p[j], p[j] = t;
    }
}

static RouterParams params(int E, int K, int G, int kg, int gk, int func, float rs) {
    RouterParams p = {E, K, G, kg, gk, func, rs};
    return p;
}

typedef struct { int32_t *idx; float *gates, *scores; } Routed;

static Routed route_cpu(const float *logits, const float *bias, int N, RouterParams p) {
    Routed r = {malloc(sizeof(int32_t) * N * p.top_k), malloc(sizeof(float) * N * p.top_k),
                malloc(sizeof(float) * N * p.n_experts)};
    C->moe_route(tensor_2d(r.idx, DT_I32, N, p.top_k), tensor_2d(r.gates, DT_F32, N, p.top_k),
                 tensor_2d(r.scores, DT_F32, N, p.n_experts), tensor_2d((void *)logits, DT_F32, N, p.n_experts),
                 tensor_1d((void *)bias, DT_F32, p.n_experts), p);
    return r;
}

static Routed route_gpu(const float *logits, const float *bias, int N, RouterParams p) {
    const int E = p.n_experts, K = p.top_k;
    void *d_l = gt_dev(logits, (int64_t)N * E, DT_F32), *d_b = bias ? gt_dev(bias, E, DT_F32) : NULL;
    void *d_i = gt_dev_poison((int64_t)N * K, DT_I32), *d_g = gt_dev_poison((int64_t)N * K, DT_F32);
    void *d_s = gt_dev_poison((int64_t)N * E, DT_F32);
    G->moe_route(tensor_2d(d_i, DT_I32, N, K), tensor_2d(d_g, DT_F32, N, K), tensor_2d(d_s, DT_F32, N, E),
                 tensor_2d(d_l, DT_F32, N, E), tensor_1d(d_b, DT_F32, E), p);
    Routed r = {gt_host_i32(d_i, (int64_t)N * K), gt_host(d_g, (int64_t)N * K, DT_F32), gt_host(d_s, (int64_t)N * E, DT_F32)};
    return r;
}

static void expect_same_routing(const Routed *g, const Routed *c, int N, RouterParams p) {
    GT_CLOSE("route scores", g->scores, c->scores, (int64_t)N * p.n_experts, 1e-6, 0);
    GT_EXACT_I32("route topk_idx", g->idx, c->idx, (int64_t)N * p.top_k);
    GT_CLOSE("route gates", g->gates, c->gates, (int64_t)N * p.top_k, 1e-5, 0);
}

// Logits on a grid (distinct values spaced `step`, randomly permuted per token): no two scores are near each other.
static float *grid_logits(int N, int E, float lo, float step) {
    float *x = malloc(sizeof(float) * N * E);
    int *pm = malloc(sizeof(int) * E);
    for (int t = 0; t < N; t++) {
        perm(pm, E);
        for (int e = 0; e < E; e++) x[t * E + e] = lo + step * pm[e];
    }
    free(pm);
    return x;
}

TEST(gpu_moe_route_clear_margins) {
    gt_init(41);
    const int N = 2048;
    // (a) no groups, sigmoid, a small bias: score gaps >= 0.004, bias differences <= 0.002
    RouterParams pa = params(64, 6, 1, 1, 1, 0, 2.5f);
    float *xa = grid_logits(N, 64, -3.0f, 6.0f / 64), *ba = malloc(sizeof(float) * 64);
    for (int e = 0; e < 64; e++) ba[e] = 0.001f * (e % 3);
    Routed ca = route_cpu(xa, ba, N, pa), ga = route_gpu(xa, ba, N, pa);
    expect_same_routing(&ga, &ca, N, pa);
    // (b) softmax scoring
    RouterParams pb = params(64, 6, 1, 1, 1, 1, 1.0f);
    Routed cb = route_cpu(xa, NULL, N, pb), gb = route_gpu(xa, NULL, N, pb);
    expect_same_routing(&gb, &cb, N, pb);
    // (c) V3's group limit where it matters: per token 4 random groups hold experts with logits in [0.5, 2.5]
    // (distinct grid values); each other group has one spike at 4 + j/64 (its biased score beats every kept expert)
    // and the rest in [-4, -2], so its top-2 sum (< 1.11) stays far below any kept group's (> 1.8). The spikes must
    // be excluded: without the group limit they would be chosen.
    const int E = 256, per = 32;
    RouterParams pc = params(E, 8, 8, 4, 2, 0, 2.5f);
    float *xc = malloc(sizeof(float) * N * E), *bc = malloc(sizeof(float) * E);
    for (int e = 0; e < E; e++) bc[e] = 1e-4f * (e % 5);
    int gp[8], ep[128], lo[256];
    for (int t = 0; t < N; t++) {
        perm(gp, 8);
        perm(ep, 128);
        perm(lo, 256);
        for (int gi = 0; gi < 8; gi++) {
            int g = gp[gi];
            for (int i = 0; i < per; i++) {
                float *x = &xc[t * E + g * per + i];
                if (gi < 4) *x = 0.5f + 2.0f * ep[gi * per + i] / 128.0f;
                else *x = i == (t + g) % per ? 4.0f + gi / 64.0f : -4.0f + 2.0f * lo[g * per + i] / 256.0f;
            }
        }
    }
    Routed cc = route_cpu(xc, bc, N, pc), gc = route_gpu(xc, bc, N, pc);
    expect_same_routing(&gc, &cc, N, pc);
    for (int t = 0; t < N; t++) // sanity of the construction: no spike chosen on the cpu either
        for (int k = 0; k < 8; k++) ASSERT(xc[t * E + cc.idx[t * 8 + k]] < 3.0f);
}

TEST(gpu_moe_route_random_inputs_flip_rate) {
    gt_init(42);
    const int N = 4096, E = 256, K = 8;
    RouterParams p = params(E, K, 8, 4, 2, 0, 2.5f);
    float *x = ops_rand((int64_t)N * E, 3.0f), *b = ops_rand(E, 0.05f);
    Routed c = route_cpu(x, b, N, p), g = route_gpu(x, b, N, p);
    GT_CLOSE("route scores", g.scores, c.scores, (int64_t)N * E, 1e-6, 0);
    // Gates are compared on the tokens routed the same way (a flipped token's gates differ by design).
    int flips = 0, same_n = 0;
    float *gg = malloc(sizeof(float) * N * K), *cg = malloc(sizeof(float) * N * K);
    for (int t = 0; t < N; t++) {
        if (memcmp(&g.idx[t * K], &c.idx[t * K], sizeof(int32_t) * K) != 0) {
            flips++;
            continue;
        }
        memcpy(gg + same_n * K, &g.gates[t * K], sizeof(float) * K);
        memcpy(cg + same_n * K, &c.gates[t * K], sizeof(float) * K);
        same_n++;
    }
    GT_CLOSE("route gates (same choice)", gg, cg, (int64_t)same_n * K, 1e-5, 0);
    printf("    routing flips: %d of %d tokens (%.4f%%)\n", flips, N, 100.0 * flips / N);
    ASSERT_MSG(flips * 100 <= N, "%d of %d tokens routed differently: more than near ties explain", flips, N);
}

TEST(gpu_moe_route_ties_and_nans_resolve_like_cpu) {
    gt_init(43);
    const int N = 64, E = 64, K = 6;
    RouterParams p = params(E, K, 8, 3, 2, 0, 1.0f);
    // Grid logits (no near ties between distinct values; the grid is not symmetric about 0, so no two group
    // sums are s(x) + s(-x) = 1 up to rounding), then exact ties and NaNs on purpose.
    float *x = grid_logits(N, E, -2.9713f, 6.0f / 64);
    for (int t = 0; t < N; t++) {
        if (t % 4 == 0)
            for (int e = 0; e < E; e++) x[t * E + e] = 0.0f; // every score exactly 0.5: lowest indices win
        if (t % 4 == 1) x[t * E + (t % E)] = NAN;         // one NaN score: it never wins
        if (t % 4 == 2) x[t * E + 0] = NAN, x[t * E + 8] = NAN; // NaN first in a group: the scan keeps it
        if (t % 4 == 3)
            for (int e = 16; e < 24; e++) x[t * E + e] = 1.0f; // a tied block of 8
    }
    Routed c = route_cpu(x, NULL, N, p), g = route_gpu(x, NULL, N, p);
    GT_EXACT_I32("route topk_idx (ties, NaN)", g.idx, c.idx, (int64_t)N * K);
    GT_CLOSE("route gates (ties, NaN)", g.gates, c.gates, (int64_t)N * K, 1e-6, 0);
    for (int k = 0; k < K; k++) ASSERT_EQ_INT(g.idx[k], k); // token 0: all tied
}

static void check_route_backward(int N, RouterParams p, int with_extra) {
    const int E = p.n_experts, K = p.top_k;
    float *x = ops_rand((int64_t)N * E, 3.0f), *b = ops_rand(E, 0.05f);
    Routed c = route_cpu(x, b, N, p);
    float *dg = ops_rand((int64_t)N * K, 1.0f), *ex = with_extra ? ops_rand((int64_t)N * E, 0.1f) : NULL;
    float *want = malloc(sizeof(float) * N * E);
    C->moe_route_backward(tensor_2d(want, DT_F32, N, E), tensor_2d(dg, DT_F32, N, K), tensor_2d(ex, DT_F32, N, E),
                          tensor_2d(c.scores, DT_F32, N, E), tensor_2d(c.idx, DT_I32, N, K), p);
    void *d_dl = gt_dev_poison((int64_t)N * E, DT_F32), *d_dg = gt_dev(dg, (int64_t)N * K, DT_F32);
    void *d_ex = ex ? gt_dev(ex, (int64_t)N * E, DT_F32) : NULL, *d_s = gt_dev(c.scores, (int64_t)N * E, DT_F32);
    void *d_i = gt_dev_i32(c.idx, (int64_t)N * K);
    G->moe_route_backward(tensor_2d(d_dl, DT_F32, N, E), tensor_2d(d_dg, DT_F32, N, K), tensor_2d(d_ex, DT_F32, N, E),
                          tensor_2d(d_s, DT_F32, N, E), tensor_2d(d_i, DT_I32, N, K), p);
    GT_CLOSE(p.score_func ? "route_bwd softmax" : "route_bwd sigmoid", gt_host(d_dl, (int64_t)N * E, DT_F32), want,
             (int64_t)N * E, 1e-5, 1e-6);
}

TEST(gpu_moe_route_backward) {
    gt_init(44);
    check_route_backward(1000, params(256, 8, 8, 4, 2, 0, 2.5f), 1);
    check_route_backward(1000, params(256, 8, 8, 4, 2, 0, 2.5f), 0);
    check_route_backward(777, params(64, 6, 1, 1, 1, 1, 1.0f), 1);
}

static void check_balance(int B, int T, int E, int K) {
    const int N = B * T;
    RouterParams p = params(E, K, 1, 1, 1, 0, 1.0f);
    float *x = ops_rand((int64_t)N * E, 3.0f);
    Routed c = route_cpu(x, NULL, N, p);
    float *want = malloc(sizeof(float) * N * E), lc = 0;
    C->moe_balance_loss(tensor_1d(&lc, DT_F32, 1), tensor_2d(want, DT_F32, N, E), tensor_2d(c.scores, DT_F32, N, E),
                        tensor_2d(c.idx, DT_I32, N, K), B, T, K, 1e-4f, 0.5f);
    void *d_s = gt_dev(c.scores, (int64_t)N * E, DT_F32), *d_i = gt_dev_i32(c.idx, (int64_t)N * K);
    void *d_ds = gt_dev_poison((int64_t)N * E, DT_F32), *d_l = gt_dev_poison(2, DT_F32);
    G->moe_balance_loss(tensor_1d(d_l, DT_F32, 1), tensor_2d(d_ds, DT_F32, N, E), tensor_2d(d_s, DT_F32, N, E),
                        tensor_2d(d_i, DT_I32, N, K), B, T, K, 1e-4f, 0.5f);
    // again without the gradient (into the second slot), and the gradient alone (the loss slot is not touched)
    G->moe_balance_loss(tensor_1d((float *)d_l + 1, DT_F32, 1), tensor_2d(NULL, DT_F32, N, E),
                        tensor_2d(d_s, DT_F32, N, E), tensor_2d(d_i, DT_I32, N, K), B, T, K, 1e-4f, 0.5f);
    void *d_ds2 = gt_dev_poison((int64_t)N * E, DT_F32);
    G->moe_balance_loss(tensor_1d(NULL, DT_F32, 1), tensor_2d(d_ds2, DT_F32, N, E), tensor_2d(d_s, DT_F32, N, E),
                        tensor_2d(d_i, DT_I32, N, K), B, T, K, 1e-4f, 0.5f);
    float *lg = gt_host(d_l, 2, DT_F32);
    printf("    balance loss B%d T%d E%d K%d: gpu %.9g cpu %.9g\n", B, T, E, K, lg[0], lc);
    ASSERT_NEAR(lg[0], lc, 1e-6, 0); // double sums in another order, rounded to F32
    GT_CLOSE("balance dscores", gt_host(d_ds, (int64_t)N * E, DT_F32), want, (int64_t)N * E, 1e-6, 1e-6);
    ASSERT(lg[1] == lg[0]); // deterministic, and the same without the gradient
    GT_EXACT("balance dscores without the loss", gt_host(d_ds2, (int64_t)N * E, DT_F32),
                 gt_host(d_ds, (int64_t)N * E, DT_F32), (int64_t)N * E);
}

TEST(gpu_moe_balance_loss) {
    gt_init(45);
    check_balance(1, 1, 4, 1);
    check_balance(2, 100, 64, 6);
    check_balance(4, 4096, 256, 8);
}

static void check_plan(int N, int K, int E, int used_experts) {
    // distinct experts per token drawn from the first used_experts (so the rest are empty)
    int32_t *idx = malloc(sizeof(int32_t) * N * K);
    int *pm = malloc(sizeof(int) * used_experts);
    for (int t = 0; t < N; t++) {
        perm(pm, used_experts);
        for (int k = 0; k < K; k++) idx[t * K + k] = pm[k];
    }
    const int64_t NK = (int64_t)N * K;
    int32_t *order = malloc(sizeof(int32_t) * NK), *off = malloc(sizeof(int32_t) * (E + 1));
    int32_t *off_h = malloc(sizeof(int32_t) * (E + 1)), *goff_h = malloc(sizeof(int32_t) * (E + 1));
    int32_t *cnt = malloc(sizeof(int32_t) * E);
    for (int e = 0; e < E; e++) cnt[e] = 1000 + e; // counts accumulate
    void *d_cnt = gt_dev_i32(cnt, E);
    C->moe_dispatch_plan(tensor_1d(order, DT_I32, NK), tensor_1d(off, DT_I32, E + 1), off_h,
                         tensor_1d(cnt, DT_I32, E), tensor_2d(idx, DT_I32, N, K), E);
    void *d_idx = gt_dev_i32(idx, NK), *d_order = gt_dev_poison(NK, DT_I32), *d_off = gt_dev_poison(E + 1, DT_I32);
    G->moe_dispatch_plan(tensor_1d(d_order, DT_I32, NK), tensor_1d(d_off, DT_I32, E + 1), goff_h,
                         tensor_1d(d_cnt, DT_I32, E), tensor_2d(d_idx, DT_I32, N, K), E);
    GT_EXACT_I32("plan order (stable)", gt_host_i32(d_order, NK), order, NK);
    GT_EXACT_I32("plan offsets", gt_host_i32(d_off, E + 1), off, E + 1);
    GT_EXACT_I32("plan offsets_host", goff_h, off_h, E + 1);
    GT_EXACT_I32("plan counts", gt_host_i32(d_cnt, E), cnt, E);
    // Neither the host table nor the counts (what the model asks for: no host sync): the same plan.
    void *d_order2 = gt_dev_poison(NK, DT_I32), *d_off2 = gt_dev_poison(E + 1, DT_I32);
    G->moe_dispatch_plan(tensor_1d(d_order2, DT_I32, NK), tensor_1d(d_off2, DT_I32, E + 1), NULL,
                         tensor_1d(NULL, DT_I32, E), tensor_2d(d_idx, DT_I32, N, K), E);
    GT_EXACT_I32("plan order without host table", gt_host_i32(d_order2, NK), order, NK);
    GT_EXACT_I32("plan offsets without host table", gt_host_i32(d_off2, E + 1), off, E + 1);
}

TEST(gpu_moe_dispatch_plan_exact) {
    gt_init(46);
    check_plan(1, 1, 1, 1);
    check_plan(37, 3, 16, 5);
    check_plan(4096, 8, 256, 256);
    check_plan(16384, 8, 256, 200);
}

static void bad_plan(void *ctx) {
    (void)ctx;
    const Backend *g = backend_get("cuda");
    int32_t idx[8] = {0, 1, 2, 3, 4, 64, 6, 7}, off_h[65];
    void *d_idx = g->alloc(32), *d_o = g->alloc(32), *d_off = g->alloc(65 * 4);
    g->upload(d_idx, idx, 32);
    g->moe_dispatch_plan(tensor_1d(d_o, DT_I32, 8), tensor_1d(d_off, DT_I32, 65), off_h,
                         tensor_1d(NULL, DT_I32, 64), tensor_2d(d_idx, DT_I32, 4, 2), 64);
}
// Without the host table the plan does not wait; the bad id is reported at the next sync (a download here).
static void bad_plan_deferred(void *ctx) {
    (void)ctx;
    const Backend *g = backend_get("cuda");
    int32_t idx[8] = {0, 1, 2, 3, 4, 64, 6, 7}, off_h[65];
    void *d_idx = g->alloc(32), *d_o = g->alloc(32), *d_off = g->alloc(65 * 4);
    g->upload(d_idx, idx, 32);
    g->moe_dispatch_plan(tensor_1d(d_o, DT_I32, 8), tensor_1d(d_off, DT_I32, 65), NULL,
                         tensor_1d(NULL, DT_I32, 64), tensor_2d(d_idx, DT_I32, 4, 2), 64);
    g->download(off_h, d_off, sizeof off_h);
}

TEST(gpu_moe_dispatch_plan_bad_expert_dies) {
    EXPECT_DIE(bad_plan, NULL, "moe_dispatch_plan: topk_idx[5] = 64 is outside [0, 64)");
    EXPECT_DIE(bad_plan_deferred, NULL, "moe_dispatch_plan: topk_idx[5] = 64 is outside [0, 64)");
}

// gather, gather backward, combine, combine backward on the cpu's plan of a random routing.
static void check_movement(int N, int K, int E, int d, DType dt) {
    const int64_t NK = (int64_t)N * K;
    RouterParams p = params(E, K, 1, 1, 1, 0, 2.5f);
    float *lg = ops_rand((int64_t)N * E, 3.0f);
    Routed r = route_cpu(lg, NULL, N, p);
    int32_t *order = malloc(sizeof(int32_t) * NK), *off = malloc(sizeof(int32_t) * (E + 1)), *off_h = malloc(sizeof(int32_t) * (E + 1));
    C->moe_dispatch_plan(tensor_1d(order, DT_I32, NK), tensor_1d(off, DT_I32, E + 1), off_h,
                         tensor_1d(NULL, DT_I32, E), tensor_2d(r.idx, DT_I32, N, K), E);
    const int bf = dt == DT_BF16;
    float *x = ops_rand((int64_t)N * d, 1.0f), *ys = ops_rand(NK * d, 1.0f), *dxs = ops_rand(NK * d, 1.0f);
    float *o0 = ops_rand((int64_t)N * d, 1.0f), *dout = ops_rand((int64_t)N * d, 1.0f);
    if (bf) {
        x = gt_round_bf16(x, (int64_t)N * d), ys = gt_round_bf16(ys, NK * d), dxs = gt_round_bf16(dxs, NK * d);
        o0 = gt_round_bf16(o0, (int64_t)N * d), dout = gt_round_bf16(dout, (int64_t)N * d);
    }
    void *d_order = gt_dev_i32(order, NK), *d_gates = gt_dev(r.gates, NK, DT_F32);
    void *d_x = gt_dev(x, (int64_t)N * d, dt), *d_ys = gt_dev(ys, NK * d, dt), *d_dxs = gt_dev(dxs, NK * d, dt);
    void *d_dout = gt_dev(dout, (int64_t)N * d, dt);
    Tensor t_order = tensor_1d(order, DT_I32, NK), g_order = tensor_1d(d_order, DT_I32, NK);
    // gather: a copy, exact in both dtypes
    float *want = malloc(sizeof(float) * NK * d);
    C->moe_gather(tensor_2d(want, DT_F32, NK, d), tensor_2d(x, DT_F32, N, d), t_order, K);
    void *d_xs = gt_dev_poison(NK * d, dt);
    G->moe_gather(tensor_2d(d_xs, dt, NK, d), tensor_2d(d_x, dt, N, d), g_order, K);
    GT_EXACT("moe_gather", gt_host(d_xs, NK * d, dt), want, NK * d);
    // gather backward and combine, overwrite and accumulate: the cpu's order of sums (exact in FP32)
    for (int acc = 0; acc <= 1; acc++) {
        float *w1 = ops_copy_f(o0, (int64_t)N * d), *w2 = ops_copy_f(o0, (int64_t)N * d);
        C->moe_gather_backward(tensor_2d(w1, DT_F32, N, d), tensor_2d(dxs, DT_F32, NK, d), t_order, K, acc);
        C->moe_combine(tensor_2d(w2, DT_F32, N, d), tensor_2d(ys, DT_F32, NK, d), tensor_2d(r.gates, DT_F32, N, K),
                       t_order, acc);
        void *d1 = acc ? gt_dev(o0, (int64_t)N * d, dt) : gt_dev_poison((int64_t)N * d, dt);
        void *d2 = acc ? gt_dev(o0, (int64_t)N * d, dt) : gt_dev_poison((int64_t)N * d, dt);
        G->moe_gather_backward(tensor_2d(d1, dt, N, d), tensor_2d(d_dxs, dt, NK, d), g_order, K, acc);
        G->moe_combine(tensor_2d(d2, dt, N, d), tensor_2d(d_ys, dt, NK, d), tensor_2d(d_gates, DT_F32, N, K), g_order,
                       acc);
        if (bf) {
            GT_CLOSE("moe_gather_backward bf16", gt_host(d1, (int64_t)N * d, dt), w1, (int64_t)N * d, 1e-2, 1e-2);
            GT_CLOSE("moe_combine bf16", gt_host(d2, (int64_t)N * d, dt), w2, (int64_t)N * d, 1e-2, 1e-2);
        } else {
            GT_EXACT(acc ? "moe_gather_backward acc" : "moe_gather_backward", gt_host(d1, (int64_t)N * d, dt), w1,
                     (int64_t)N * d);
            GT_EXACT(acc ? "moe_combine acc" : "moe_combine", gt_host(d2, (int64_t)N * d, dt), w2, (int64_t)N * d);
        }
    }
    // combine backward: dy is one product per element (exact in FP32); dgates is a dot product over d
    float *wdy = malloc(sizeof(float) * NK * d), *wdg = malloc(sizeof(float) * NK);
    C->moe_combine_backward(tensor_2d(wdy, DT_F32, NK, d), tensor_2d(wdg, DT_F32, N, K), tensor_2d(dout, DT_F32, N, d),
                            tensor_2d(ys, DT_F32, NK, d), tensor_2d(r.gates, DT_F32, N, K), t_order);
    void *d_dy = gt_dev_poison(NK * d, dt), *d_dg = gt_dev_poison(NK, DT_F32);
    G->moe_combine_backward(tensor_2d(d_dy, dt, NK, d), tensor_2d(d_dg, DT_F32, N, K), tensor_2d(d_dout, dt, N, d),
                            tensor_2d(d_ys, dt, NK, d), tensor_2d(d_gates, DT_F32, N, K), g_order);
    if (bf) GT_CLOSE("moe_combine_backward dy bf16", gt_host(d_dy, NK * d, dt), wdy, NK * d, 1e-2, 1e-3);
    else GT_EXACT("moe_combine_backward dy", gt_host(d_dy, NK * d, dt), wdy, NK * d);
    GT_CLOSE("moe_combine_backward dgates", gt_host(d_dg, NK, DT_F32), wdg, NK, 1e-5, 1e-5);
}

TEST(gpu_moe_gather_combine) {
    gt_init(47);
    check_movement(1, 1, 1, 1, DT_F32);
    check_movement(50, 3, 8, 40, DT_F32);
    check_movement(512, 8, 64, 1536, DT_F32);
    check_movement(300, 6, 64, 256, DT_BF16);
}

// The grouped matmuls without a host segment table (what the model passes since the dispatch plan stopped waiting
// for the device): F32 tensors take the per-expert cuBLASLt loop, which fetches the table itself. Against the cpu op
// (which reads its host-memory table) on the same inputs; an empty expert and a segment table ending before R.
TEST(gpu_grouped_loop_without_host_offsets) {
    gt_init(47);
    const int E = 4, N = 24, K = 40, R = 20;
    const int32_t off[5] = {0, 5, 5, 12, 15}; // rows 15..19 belong to no expert
    const int64_t nw = (int64_t)E * N * K;
    float *x = ops_rand((int64_t)R * K, 1.0f), *w = ops_rand(nw, 1.0f), *g = ops_rand((int64_t)R * N, 1.0f);
    float *dw0 = ops_rand(nw, 1.0f), *want_dw = ops_copy_f(dw0, nw);
    float *want = ops_rand((int64_t)R * N, 1.0f), *want_dx = ops_rand((int64_t)R * K, 1.0f);
    float *out0 = ops_copy_f(want, (int64_t)R * N), *dx0 = ops_copy_f(want_dx, (int64_t)R * K);
    Tensor c_off = tensor_1d((void *)off, DT_I32, E + 1);
    C->grouped_matmul_forward(tensor_2d(want, DT_F32, R, N), tensor_2d(x, DT_F32, R, K), tensor_3d(w, DT_F32, E, N, K),
                              c_off, NULL);
    C->grouped_matmul_backward(tensor_2d(want_dx, DT_F32, R, K), tensor_3d(want_dw, DT_F32, E, N, K),
                               tensor_2d(g, DT_F32, R, N), tensor_2d(x, DT_F32, R, K), tensor_3d(w, DT_F32, E, N, K),
                               c_off, NULL, 0);
    // rows outside every segment are left alone by both backends: start the GPU buffers from the same values
    void *d_x = gt_dev(x, (int64_t)R * K, DT_F32), *d_w = gt_dev(w, nw, DT_F32), *d_g = gt_dev(g, (int64_t)R * N, DT_F32);
    void *d_out = gt_dev(out0, (int64_t)R * N, DT_F32), *d_dx = gt_dev(dx0, (int64_t)R * K, DT_F32);
    void *d_dw = gt_dev(dw0, nw, DT_F32), *d_off = gt_dev_i32(off, E + 1);
    Tensor g_off = tensor_1d(d_off, DT_I32, E + 1);
    G->grouped_matmul_forward(tensor_2d(d_out, DT_F32, R, N), tensor_2d(d_x, DT_F32, R, K),
                              tensor_3d(d_w, DT_F32, E, N, K), g_off, NULL);
    G->grouped_matmul_backward(tensor_2d(d_dx, DT_F32, R, K), tensor_3d(d_dw, DT_F32, E, N, K),
                               tensor_2d(d_g, DT_F32, R, N), tensor_2d(d_x, DT_F32, R, K),
                               tensor_3d(d_w, DT_F32, E, N, K), g_off, NULL, 0);
    GT_CLOSE("grouped out (fetched table)", gt_host(d_out, (int64_t)R * N, DT_F32), want, (int64_t)R * N, 1e-5, 1e-5);
    GT_CLOSE("grouped dinp (fetched table)", gt_host(d_dx, (int64_t)R * K, DT_F32), want_dx, (int64_t)R * K, 1e-5,
             1e-5);
    GT_CLOSE("grouped dw (fetched table)", gt_host(d_dw, nw, DT_F32), want_dw, nw, 1e-5, 1e-5);
}
