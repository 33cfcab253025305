// cuda vs cpu for the v2 memory-bound kernels (DSV3_MEMOPS=v2, kernels/cuda/cuda_common.cuh) of MoE token movement
// and the token embedding, beside the v1 kernels on the same inputs.
//
// MoE: gather, gather backward, combine and combine backward's dy are copies or FP32 sums in the cpu's order with
// explicitly rounded products, in both kernel sets: bit-exact against the cpu in FP32, and v2 bit-exact against v1
// in BF16 (the same FP32 arithmetic before the one output rounding). dgates is a dot product over d (another order of
// sums): rtol 1e-5. Shapes: the bench width 1536 (16-byte units), odd widths (the element-wise form), K = 33 (over
// the 32 pairs one warp holds: v1 runs), the model's F32 stream with BF16 expert rows, and bad order entries, which
// must still be reported with their index.
//
// Embedding backward v2 sums fixed chunks of 64 sorted rows: a run of equal ids inside one chunk is summed in token
// order onto its row (the cpu's bits), a longer run through per-chunk partials (FP32 rounding of other partial
// sums: rtol 1e-5 plus 1e-5 of the largest entry). Inputs: distinct ids (exact), crafted run lengths around the
// chunk boundaries, and byte-level text statistics at the bench shape (16384 tokens, d 1536, a few hundred ids, the
// most frequent in ~17% of tokens: runs of thousands, the case that took v1 3.6 ms). Deterministic: two runs must give
// the same bits. The balance loss v2 only batches loads: v1's bits.
#include "tests/gpu/gpu_testutil.h"

// The kernel set for the next calls; NULL: the first set (v1) by name, not the unset default (which is v2 for the
// ops that passed on a GPU), so that every "= v1" comparison here compares two sets. Each test runs in its own
// process, so the variable does not outlive it.
static void memops(const char *v) { setenv("DSV3_MEMOPS", v ? v : "v1", 1); }

static void shuffle(int *p, int n) {
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(ops_rng_u64() % (uint64_t)(i + 1)), t = p[i];
        p[i] = p[j], p[j] = t;
    }
}

// ---- MoE token movement ----

typedef struct {
    float *xs, *dx[2], *out[2], *dy, *dg; // gather; gather backward and combine (overwrite, accumulate); combine bwd
} MoeOut;

typedef struct {
    int N, K, d;
    DType dt, dt_out; // dt: x, y, dx, dout; dt_out: combine's out (F32 with BF16 rows is the model's stream)
    void *order, *gates, *x, *ys, *dxs, *o0, *dout, *o0c;
} MoeDev;

static MoeOut moe_run_gpu(const MoeDev *m) {
    const int64_t N = m->N, K = m->K, d = m->d, NK = N * K;
    Tensor order = tensor_1d(m->order, DT_I32, NK), gates = tensor_2d(m->gates, DT_F32, N, K);
    MoeOut r;
    void *xs = gt_dev_poison(NK * d, m->dt);
    G->moe_gather(tensor_2d(xs, m->dt, NK, d), tensor_2d(m->x, m->dt, N, d), order, (int)K);
    r.xs = gt_host(xs, NK * d, m->dt);
    for (int acc = 0; acc <= 1; acc++) {
        // overwrite: poisoned outputs; accumulate: from o0 (o0c for combine's output dtype)
        void *dx = gt_dev_poison(N * d, m->dt), *out = gt_dev_poison(N * d, m->dt_out);
        if (acc) {
            G->copy(dx, m->o0, (size_t)(N * d) * dtype_size(m->dt));
            G->copy(out, m->o0c, (size_t)(N * d) * dtype_size(m->dt_out));
        }
        G->moe_gather_backward(tensor_2d(dx, m->dt, N, d), tensor_2d(m->dxs, m->dt, NK, d), order, (int)K, acc);
        G->moe_combine(tensor_2d(out, m->dt_out, N, d), tensor_2d(m->ys, m->dt, NK, d), gates, order, acc);
        r.dx[acc] = gt_host(dx, N * d, m->dt);
        r.out[acc] = gt_host(out, N * d, m->dt_out);
        G->free(dx), G->free(out);
    }
    void *dy = gt_dev_poison(NK * d, m->dt), *dg = gt_dev_poison(NK, DT_F32);
    G->moe_combine_backward(tensor_2d(dy, m->dt, NK, d), tensor_2d(dg, DT_F32, N, K), tensor_2d(m->dout, m->dt, N, d),
                            tensor_2d(m->ys, m->dt, NK, d), gates, order);
    r.dy = gt_host(dy, NK * d, m->dt);
    r.dg = gt_host(dg, NK, DT_F32);
    G->free(xs), G->free(dy), G->free(dg);
    return r;
}

// N tokens routed to K distinct random experts of E (the cpu plan's order), gates in [-1, 1), d columns.
static void check_moe(int N, int K, int E, int d, DType dt, DType dt_out) {
    const int64_t NK = (int64_t)N * K, nd = (int64_t)N * d, nkd = NK * d;
    int32_t *idx = malloc(sizeof(int32_t) * NK), *order = malloc(sizeof(int32_t) * NK);
    int32_t *off = malloc(sizeof(int32_t) * (E + 1)), *off_h = malloc(sizeof(int32_t) * (E + 1));
    int *pm = malloc(sizeof(int) * E);
    for (int t = 0; t < N; t++) {
        for (int e = 0; e < E; e++) pm[e] = e;
        shuffle(pm, E);
        for (int k = 0; k < K; k++) idx[(int64_t)t * K + k] = pm[k];
    }
    C->moe_dispatch_plan(tensor_1d(order, DT_I32, NK), tensor_1d(off, DT_I32, E + 1), off_h,
                         tensor_1d(NULL, DT_I32, E), tensor_2d(idx, DT_I32, N, K), E);
    float *gates = ops_rand(NK, 1.0f), *x = ops_rand(nd, 1.0f), *ys = ops_rand(nkd, 1.0f), *dxs = ops_rand(nkd, 1.0f);
    float *o0 = ops_rand(nd, 1.0f), *dout = ops_rand(nd, 1.0f);
    if (dt == DT_BF16)
        x = gt_round_bf16(x, nd), ys = gt_round_bf16(ys, nkd), dxs = gt_round_bf16(dxs, nkd), o0 = gt_round_bf16(o0, nd),
        dout = gt_round_bf16(dout, nd);
    float *o0c = dt_out == DT_BF16 ? gt_round_bf16(o0, nd) : o0;
    MoeDev m = {N, K, d, dt, dt_out, gt_dev_i32(order, NK), gt_dev(gates, NK, DT_F32), gt_dev(x, nd, dt),
                gt_dev(ys, nkd, dt), gt_dev(dxs, nkd, dt), gt_dev(o0, nd, dt), gt_dev(dout, nd, dt),
                gt_dev(o0c, nd, dt_out)};
    memops(NULL);
    MoeOut g1 = moe_run_gpu(&m);
    memops("v2");
    MoeOut g2 = moe_run_gpu(&m);
    memops(NULL);
    // the cpu reference on the same (rounded) values
    Tensor t_order = tensor_1d(order, DT_I32, NK), t_gates = tensor_2d(gates, DT_F32, N, K);
    MoeOut c;
    c.xs = malloc(sizeof(float) * nkd);
    C->moe_gather(tensor_2d(c.xs, DT_F32, NK, d), tensor_2d(x, DT_F32, N, d), t_order, K);
    for (int acc = 0; acc <= 1; acc++) {
        c.dx[acc] = ops_copy_f(o0, nd);
        c.out[acc] = ops_copy_f(o0c, nd);
        C->moe_gather_backward(tensor_2d(c.dx[acc], DT_F32, N, d), tensor_2d(dxs, DT_F32, NK, d), t_order, K, acc);
        C->moe_combine(tensor_2d(c.out[acc], DT_F32, N, d), tensor_2d(ys, DT_F32, NK, d), t_gates, t_order, acc);
    }
    c.dy = malloc(sizeof(float) * nkd), c.dg = malloc(sizeof(float) * NK);
    C->moe_combine_backward(tensor_2d(c.dy, DT_F32, NK, d), tensor_2d(c.dg, DT_F32, N, K),
                            tensor_2d(dout, DT_F32, N, d), tensor_2d(ys, DT_F32, NK, d), t_gates, t_order);
    printf("    N %d K %d E %d d %d %s (combine out %s)\n", N, K, E, d, dt ? "bf16" : "f32", dt_out ? "bf16" : "f32");
    GT_EXACT("v2 moe_gather", g2.xs, c.xs, nkd); // a copy: exact in both dtypes
    GT_EXACT("v2 moe_gather = v1", g2.xs, g1.xs, nkd);
    static const char *gb[2] = {"v2 moe_gather_backward", "v2 moe_gather_backward acc"};
    static const char *cb[2] = {"v2 moe_combine", "v2 moe_combine acc"};
    for (int acc = 0; acc <= 1; acc++) {
        if (dt == DT_F32) GT_EXACT(gb[acc], g2.dx[acc], c.dx[acc], nd);
        else GT_CLOSE(gb[acc], g2.dx[acc], c.dx[acc], nd, 1e-2, 1e-2);
        if (dt_out == DT_F32) GT_EXACT(cb[acc], g2.out[acc], c.out[acc], nd);
        else GT_CLOSE(cb[acc], g2.out[acc], c.out[acc], nd, 1e-2, 1e-2);
        GT_EXACT("    ... = v1 (gather backward)", g2.dx[acc], g1.dx[acc], nd);
        GT_EXACT("    ... = v1 (combine)", g2.out[acc], g1.out[acc], nd);
    }
    if (dt == DT_F32) GT_EXACT("v2 moe_combine_backward dy", g2.dy, c.dy, nkd);
    else GT_CLOSE("v2 moe_combine_backward dy", g2.dy, c.dy, nkd, 1e-2, 1e-3);
    GT_EXACT("    ... = v1 (dy)", g2.dy, g1.dy, nkd);
    GT_CLOSE("v2 moe_combine_backward dgates", g2.dg, c.dg, NK, 1e-5, 1e-5);
}

TEST(gpu_memops_moe_movement) {
    gt_init(91);
    check_moe(1, 1, 1, 1, DT_F32, DT_F32);       // element-wise form, one token
    check_moe(37, 3, 8, 13, DT_F32, DT_F32);     // odd width: element-wise form
    check_moe(50, 3, 8, 40, DT_F32, DT_F32);     // 16-byte units, fewer than a warp's worth per row
    check_moe(300, 6, 64, 256, DT_BF16, DT_BF16);
    check_moe(30, 33, 40, 16, DT_F32, DT_F32);   // K = 33 > 32: v1 runs under DSV3_MEMOPS=v2 too
    check_moe(300, 32, 64, 24, DT_BF16, DT_BF16); // K = 32: every lane holds a pair
    check_moe(512, 8, 64, 1536, DT_F32, DT_F32);
    check_moe(2048, 6, 64, 1536, DT_BF16, DT_F32); // the bench model: BF16 rows into the F32 stream
    check_moe(2048, 6, 64, 1536, DT_BF16, DT_BF16);
}

// A bad order entry (value NK) at position 5 of 8 pairs: v2 reports it as v1 does.
static void bad_order(void *ctx) {
    const int which = *(const int *)ctx;
    setenv("DSV3_MEMOPS", "v2", 1);
    const Backend *g = backend_get("cuda");
    int32_t ord[8] = {0, 1, 2, 3, 4, 8, 6, 7};
    void *d_o = g->alloc(32), *x = g->alloc(4 * 16 * 4), *xs = g->alloc(8 * 16 * 4), *gt = g->alloc(32);
    g->upload(d_o, ord, 32);
    Tensor order = tensor_1d(d_o, DT_I32, 8);
    if (which == 0) g->moe_gather(tensor_2d(xs, DT_F32, 8, 16), tensor_2d(x, DT_F32, 4, 16), order, 2);
    if (which == 1) g->moe_gather_backward(tensor_2d(x, DT_F32, 4, 16), tensor_2d(xs, DT_F32, 8, 16), order, 2, 0);
    if (which == 2) g->moe_combine(tensor_2d(x, DT_F32, 4, 16), tensor_2d(xs, DT_F32, 8, 16),
                                   tensor_2d(gt, DT_F32, 4, 2), order, 1);
    if (which == 3) {
        void *dg = g->alloc(32), *dy = g->alloc(8 * 16 * 4);
        g->moe_combine_backward(tensor_2d(dy, DT_F32, 8, 16), tensor_2d(dg, DT_F32, 4, 2), tensor_2d(x, DT_F32, 4, 16),
                                tensor_2d(xs, DT_F32, 8, 16), tensor_2d(gt, DT_F32, 4, 2), order);
    }
    g->synchronize();
}

TEST(gpu_memops_moe_bad_order_reported) {
    static const char *msg[4] = {"moe_gather: order[5] = 8 is outside [0, 8)",
                                 "moe_gather_backward: order[5] = 8 is outside [0, 8)",
                                 "moe_combine: order[5] = 8 is outside [0, 8)",
                                 "moe_combine_backward: order[5] = 8 is outside [0, 8)"};
    for (int i = 0; i < 4; i++) EXPECT_DIE(bad_order, &i, msg[i]);
}

// ---- embedding ----

TEST(gpu_memops_embedding_forward_exact) {
    gt_init(92);
    static const int shapes[][3] = {{10, 3, 7}, {1000, 64, 300}, {8192, 1536, 4096}, {50, 20, 33}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int V = shapes[s][0], d = shapes[s][1], N = shapes[s][2];
        float *table = ops_rand((int64_t)V * d, 1.0f);
        int32_t *ids = malloc(sizeof(int32_t) * N);
        for (int n = 0; n < N; n++) ids[n] = (int32_t)(ops_rng_u64() % V);
        for (int b = 0; b <= 1; b++) {
            const DType dt = b ? DT_BF16 : DT_F32;
            float *tb = b ? gt_round_bf16(table, (int64_t)V * d) : table, *want = malloc(sizeof(float) * N * d);
            C->embedding_forward(tensor_2d(want, DT_F32, N, d), tensor_1d(ids, DT_I32, N), tensor_2d(tb, DT_F32, V, d));
            void *d_t = gt_dev(tb, (int64_t)V * d, dt), *d_ids = gt_dev_i32(ids, N);
            void *d_o = gt_dev_poison((int64_t)N * d, dt);
            memops("v2");
            G->embedding_forward(tensor_2d(d_o, dt, N, d), tensor_1d(d_ids, DT_I32, N), tensor_2d(d_t, dt, V, d));
            memops(NULL);
            GT_EXACT(b ? "v2 embedding fwd bf16" : "v2 embedding fwd f32", gt_host(d_o, (int64_t)N * d, dt), want,
                     (int64_t)N * d);
        }
    }
}

// dtable (V, d) += dout (N, d) scattered by ids, through v2 (twice, from the same start: the same bits) and v1.
static void check_embedding_bwd(const int32_t *ids, int N, int V, int d, DType dt, int exact) {
    const int64_t vd = (int64_t)V * d, nd = (int64_t)N * d;
    float *g = ops_rand(nd, 1.0f), *dt0 = ops_rand(vd, 1.0f);
    if (dt == DT_BF16) g = gt_round_bf16(g, nd);
    float *want = ops_copy_f(dt0, vd);
    C->embedding_backward(tensor_2d(want, DT_F32, V, d), tensor_2d(g, DT_F32, N, d), tensor_1d((void *)ids, DT_I32, N));
    void *d_g = gt_dev(g, nd, dt), *d_ids = gt_dev_i32(ids, N);
    float *got[2];
    for (int rep = 0; rep < 2; rep++) {
        void *d_dt = gt_dev(dt0, vd, DT_F32);
        memops("v2");
        G->embedding_backward(tensor_2d(d_dt, DT_F32, V, d), tensor_2d(d_g, dt, N, d), tensor_1d(d_ids, DT_I32, N));
        memops(NULL);
        got[rep] = gt_host(d_dt, vd, DT_F32);
        G->free(d_dt);
    }
    char what[96];
    snprintf(what, sizeof what, "v2 embedding bwd N %d V %d d %d %s", N, V, d, dt ? "bf16" : "f32");
    if (exact) GT_EXACT(what, got[0], want, vd);
    else GT_CLOSE(what, got[0], want, vd, 1e-5, 1e-5);
    GT_EXACT("    deterministic (second run)", got[1], got[0], vd);
    free(g), free(dt0), free(want), free(got[0]), free(got[1]);
    G->free(d_g), G->free(d_ids);
}

// ids with the given run lengths (id i repeated counts[i] times), in random token order.
static int32_t *runs_ids(const int *counts, int n_ids, int *N_out) {
    int N = 0;
    for (int i = 0; i < n_ids; i++) N += counts[i];
    int32_t *ids = malloc(sizeof(int32_t) * N);
    int *p = malloc(sizeof(int) * N), n = 0;
    for (int i = 0; i < n_ids; i++)
        for (int r = 0; r < counts[i]; r++) p[n++] = i;
    shuffle(p, N);
    for (int i = 0; i < N; i++) ids[i] = p[i];
    free(p);
    *N_out = N;
    return ids;
}

TEST(gpu_memops_embedding_backward) {
    gt_init(93);
    // distinct ids (runs of one, never crossing a chunk): the cpu's bits, vector and element-wise forms
    int *pm = malloc(sizeof(int) * 5000);
    for (int i = 0; i < 5000; i++) pm[i] = i;
    shuffle(pm, 5000);
    int32_t *ids = malloc(sizeof(int32_t) * 1000);
    for (int i = 0; i < 1000; i++) ids[i] = pm[i];
    check_embedding_bwd(ids, 1000, 5000, 64, DT_F32, 1);
    check_embedding_bwd(ids, 1000, 5000, 13, DT_F32, 1);
    // run lengths around the 64-row chunks: a run filling chunk 0 exactly, a run of 1, runs crossing one and two
    // boundaries, a run ending exactly at a boundary, short runs between; N = 768 (12 chunks)
    static const int counts[] = {64, 64, 1, 127, 200, 3, 5, 59, 128, 1, 52, 64};
    int N;
    int32_t *rids = runs_ids(counts, (int)(sizeof counts / sizeof counts[0]), &N);
    check_embedding_bwd(rids, N, 12, 1536, DT_F32, 0);
    check_embedding_bwd(rids, N, 12, 1536, DT_BF16, 0);
    check_embedding_bwd(rids, N, 12, 24, DT_F32, 0);
    check_embedding_bwd(rids, N, 12, 7, DT_BF16, 0); // element-wise form
    // one id everywhere: a single run over all 4097 rows (65 chunks, the last one row long)
    int32_t *one = malloc(sizeof(int32_t) * 4097);
    for (int i = 0; i < 4097; i++) one[i] = 3;
    check_embedding_bwd(one, 4097, 5, 64, DT_F32, 0);
    // byte-level text statistics at the bench shape: id 32 (space) in ~17% of tokens, the other mass on ~90 ids
    // with a Zipf-like decay, in a 32768-row table
    const int NB = 16384;
    int32_t *bids = malloc(sizeof(int32_t) * NB);
    for (int n = 0; n < NB; n++) {
        uint64_t r = ops_rng_u64() % 1000;
        if (r < 170) bids[n] = 32;
        else {
            double u = (double)(ops_rng_u64() >> 11) * 0x1.0p-53;
            bids[n] = 33 + (int32_t)(90.0 * u * u * u); // denser at low ids
        }
    }
    check_embedding_bwd(bids, NB, 32768, 1536, DT_F32, 0);
    check_embedding_bwd(bids, NB, 256, 1536, DT_BF16, 0);
}

static void bad_embedding_bwd(void *ctx) {
    (void)ctx;
    setenv("DSV3_MEMOPS", "v2", 1);
    const Backend *g = backend_get("cuda");
    int32_t ids[4] = {1, 2, 1000, 3};
    void *d_ids = g->alloc(16), *d_t = g->alloc(1000 * 8 * 4), *d_o = g->alloc(4 * 8 * 4);
    g->upload(d_ids, ids, 16);
    g->embedding_backward(tensor_2d(d_t, DT_F32, 1000, 8), tensor_2d(d_o, DT_F32, 4, 8), tensor_1d(d_ids, DT_I32, 4));
    g->synchronize();
}

static void bad_embedding_fwd(void *ctx) {
    (void)ctx;
    setenv("DSV3_MEMOPS", "v2", 1);
    const Backend *g = backend_get("cuda");
    int32_t ids[4] = {1, 2, -7, 3};
    void *d_ids = g->alloc(16), *d_t = g->alloc(1000 * 8 * 4), *d_o = g->alloc(4 * 8 * 4);
    g->upload(d_ids, ids, 16);
    g->embedding_forward(tensor_2d(d_o, DT_F32, 4, 8), tensor_1d(d_ids, DT_I32, 4), tensor_2d(d_t, DT_F32, 1000, 8));
    g->synchronize();
}

TEST(gpu_memops_embedding_bad_id_dies_with_its_index) {
    EXPECT_DIE(bad_embedding_bwd, NULL, "embedding_backward: ids[2] = 1000 is outside [0, 1000)");
    EXPECT_DIE(bad_embedding_fwd, NULL, "embedding_forward: ids[2] = -7 is outside [0, 1000)");
}

// ---- sequence-wise balance loss: v2 only reorders loads, so its loss and gradient are v1's bits ----

static void check_balance_v2(int B, int T, int E, int K) {
    const int N = B * T;
    float *scores = ops_rand((int64_t)N * E, 3.0f);
    for (int64_t i = 0; i < (int64_t)N * E; i++) scores[i] = 1.0f / (1.0f + expf(-scores[i]));
    int32_t *idx = malloc(sizeof(int32_t) * N * K);
    int *pm = malloc(sizeof(int) * E);
    for (int t = 0; t < N; t++) {
        for (int e = 0; e < E; e++) pm[e] = e;
        shuffle(pm, E);
        for (int k = 0; k < K; k++) idx[t * K + k] = pm[k];
    }
    float *want = malloc(sizeof(float) * N * E), lc = 0;
    C->moe_balance_loss(tensor_1d(&lc, DT_F32, 1), tensor_2d(want, DT_F32, N, E), tensor_2d(scores, DT_F32, N, E),
                        tensor_2d(idx, DT_I32, N, K), B, T, K, 1e-4f, 0.5f);
    void *d_s = gt_dev(scores, (int64_t)N * E, DT_F32), *d_i = gt_dev_i32(idx, (int64_t)N * K);
    float l[2];
    float *ds[2];
    for (int ver = 0; ver <= 1; ver++) {
        void *d_ds = gt_dev_poison((int64_t)N * E, DT_F32), *d_l = gt_dev_poison(1, DT_F32);
        memops(ver ? "v2" : "v1");
        G->moe_balance_loss(tensor_1d(d_l, DT_F32, 1), tensor_2d(d_ds, DT_F32, N, E), tensor_2d(d_s, DT_F32, N, E),
                            tensor_2d(d_i, DT_I32, N, K), B, T, K, 1e-4f, 0.5f);
        memops(NULL);
        ds[ver] = gt_host(d_ds, (int64_t)N * E, DT_F32);
        l[ver] = gt_host(d_l, 1, DT_F32)[0];
        G->free(d_ds), G->free(d_l);
    }
    printf("    balance loss B%d T%d E%d K%d: v2 %.9g v1 %.9g cpu %.9g\n", B, T, E, K, l[1], l[0], lc);
    ASSERT(l[1] == l[0]);
    ASSERT_NEAR(l[1], lc, 1e-6, 0);
    GT_EXACT("v2 balance dscores = v1", ds[1], ds[0], (int64_t)N * E);
    GT_CLOSE("v2 balance dscores", ds[1], want, (int64_t)N * E, 1e-6, 1e-6);
}

TEST(gpu_memops_balance_loss) {
    gt_init(94);
    check_balance_v2(1, 1, 4, 1);
    check_balance_v2(2, 100, 64, 6);
    check_balance_v2(4, 4096, 64, 6); // the bench micro-batch
    check_balance_v2(1, 4097, 256, 8);
}
