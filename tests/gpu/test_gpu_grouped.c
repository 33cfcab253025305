// cuda vs cpu: the BF16 grouped (MoE expert) GEMMs, through the backend's grouped_matmul_forward/backward and
// grouped_matmul_dinp_pair: out = inp @ w[e]^T, dinp = dout @ w[e] (overwrite, and with accumulate_dinp added onto
// what dinp holds), dw[e] += dout_seg^T inp_seg, and the pair dinp = dout @ w[e] + dout2 @ w2[e]. Every case runs
// on each kernel set: the mma.sync kernels of cuda_grouped_gemm.cu
// (DSV3_GG=mma) and the wgmma kernels of cuda_grouped_gemm_wg.cu (DSV3_GG=wg) with both tile widths
// (DSV3_GG_WG_BN=256, 128; DSV3_GG_WG_EPI=direct, bulk), each with F32 and BF16 out/dinp.
//
// Inputs are random, rounded to BF16 on the host, and the cpu reference (FP32) gets the rounded values, so only the
// FP32 summation order differs: F32 outputs within rtol 1e-5 + 1e-5 of the largest value (as the dense GEMM tests),
// BF16 outputs add one rounding (2^-8 relative): rtol 1e-2 + 1e-3 of the largest value. out and dinp start poisoned
// (NaN), so a row or column the kernel fails to write fails the comparison; rows past the last segment (`tail`) must
// keep the poison bit for bit. dw starts from random values (it accumulates); the accumulating dinp starts from
// random values too and must become start + product (tail rows: start, exactly). Segment tables cover the edges of
// the kernels' tiling (128-row tiles, 128 or 256 wide, 64-deep contraction stages): empty experts (first, last,
// consecutive), single rows, sizes one below/at/above a tile, all rows in one expert, R = 0, more than 32 experts
// (the tile scan's second step), widths that are not multiples of the tile (K = 32, N = 64 of the tiny config; 200,
// 320), a one-stage contraction with several tiles per CTA (the wgmma kernels' pipeline crossing tiles at every
// stage), and the bench-1gpu widths (1536 / 512). The loop fallback (N or K not a multiple of 8, a misaligned view)
// is checked the same way.
#include "tests/gpu/gpu_testutil.h"

typedef struct {
    int E, N, K;
    const int *rows; // E segment sizes
    int tail;        // rows of the tensors past the last segment (in no segment: never written)
    int skew;        // 1: inp starts 1 element (2 bytes) into its buffer, so it is not 16-byte aligned
} GgCase;

// A kernel set: DSV3_GG, DSV3_GG_WG_BN and DSV3_GG_WG_EPI (NULL: unset).
typedef struct {
    const char *gg, *bn, *epi, *name;
} GgImpl;
static const GgImpl g_impls[] = {{"mma", NULL, NULL, "mma"},
                                 {"wg", "256", "direct", "wg 128x256"},
                                 {"wg", "128", NULL, "wg 128x128"},
                                 {"wg", "256", "bulk", "wg 128x256, bulk-copy epilogue"}};
enum { N_IMPLS = sizeof g_impls / sizeof g_impls[0] };

static void impl_select(const GgImpl *im) {
    setenv("DSV3_GG", im->gg, 1);
    if (im->bn) setenv("DSV3_GG_WG_BN", im->bn, 1);
    else unsetenv("DSV3_GG_WG_BN");
    if (im->epi) setenv("DSV3_GG_WG_EPI", im->epi, 1);
    else unsetenv("DSV3_GG_WG_EPI");
}

static int32_t *make_offsets(int E, const int *rows) {
    int32_t *off = malloc(sizeof(int32_t) * (E + 1));
    off[0] = 0;
    for (int e = 0; e < E; e++) off[e + 1] = off[e] + rows[e];
    return off;
}

// The host data of one case: BF16-rounded inputs, the cpu reference, the starting dw and accumulating dinp.
typedef struct {
    int64_t S, R, nw; // rows in segments, tensor rows (S + tail), dw elements
    int32_t *off;
    float *x, *w, *g, *dw0, *dx0, *want, *want_dx, *want_dw;
    float *w2, *g2, *want_pair;             // the dinp pair's second product (g2 @ w2[e]) and the pair's reference
    void *d_xbuf, *d_x, *d_w, *d_g, *d_off; // device inputs (d_x inside d_xbuf when skewed)
    void *d_w2, *d_g2;
} GgData;

static void run_impl(const GgCase *c, const GgData *h, const GgImpl *im, DType od) {
    const int E = c->E, N = c->N, K = c->K;
    const int64_t S = h->S, R = h->R, nw = h->nw;
    const DType bf = DT_BF16;
    const int b = od == DT_BF16;
    impl_select(im);
    void *d_out = gt_dev_poison(R * N, od), *d_dx = gt_dev_poison(R * K, od), *d_dw = gt_dev(h->dw0, nw, DT_F32);
    Tensor g_off = tensor_1d(h->d_off, DT_I32, E + 1);
    Tensor t_x = tensor_2d(h->d_x, bf, R, K), t_w = tensor_3d(h->d_w, bf, E, N, K), t_g = tensor_2d(h->d_g, bf, R, N);
    G->grouped_matmul_forward(tensor_2d(d_out, od, R, N), t_x, t_w, g_off, h->off);
    G->grouped_matmul_backward(tensor_2d(d_dx, od, R, K), tensor_3d(d_dw, DT_F32, E, N, K), t_g, t_x, t_w, g_off,
                               h->off, 0);
    // dinp += the product, onto random values stored as od
    float *dx0 = b ? gt_round_bf16(h->dx0, R * K) : ops_copy_f(h->dx0, R * K);
    void *d_dxa = gt_dev(dx0, R * K, od);
    G->grouped_matmul_backward(tensor_2d(d_dxa, od, R, K), tensor_3d(NULL, DT_F32, E, N, K), t_g, t_x, t_w, g_off,
                               h->off, 1);
    // the dinp pair: g @ w[e] + g2 @ w2[e], overwriting a poisoned dinp
    void *d_dxp = gt_dev_poison(R * K, od);
    G->grouped_matmul_dinp_pair(tensor_2d(d_dxp, od, R, K), t_g, t_w, tensor_2d(h->d_g2, bf, R, N),
                                tensor_3d(h->d_w2, bf, E, N, K), g_off, h->off);
    const double rtol = b ? 1e-2 : 1e-5, atol = b ? 1e-3 : 1e-5;
    char what[200], id[160];
    snprintf(id, sizeof id, "%s E %d R %lld+%d N %d K %d %s%s", im->name, E, (long long)S, c->tail, N, K,
             b ? "bf16" : "f32", c->skew ? " skewed" : "");
    float *out = gt_host(d_out, R * N, od), *dx = gt_host(d_dx, R * K, od), *dxa = gt_host(d_dxa, R * K, od);
    float *dw = gt_host(d_dw, nw, DT_F32), *dxp = gt_host(d_dxp, R * K, od);
    // The wgmma set sums both products in one contraction (one rounding); the mma set falls back to the first
    // product rounded to od, then the second accumulated onto it: one more rounding, of the first product (at most
    // half a BF16 ulp of its largest value, 2^-9 relative; allowed 2^-8).
    double atol_first = 0;
    if (b && strcmp(im->gg, "wg")) {
        for (int64_t i = 0; i < S * K; i++) atol_first = fmax(atol_first, fabs(h->want_dx[i]));
        atol_first = ldexp(atol_first, -8);
    }
    snprintf(what, sizeof what, "%s dinp pair", id);
    GT_CLOSE_ABS(what, dxp, h->want_pair, S * K, rtol, atol, atol_first);
    snprintf(what, sizeof what, "%s fwd", id);
    GT_CLOSE(what, out, h->want, S * N, rtol, atol);
    snprintf(what, sizeof what, "%s dinp", id);
    GT_CLOSE(what, dx, h->want_dx, S * K, rtol, atol);
    snprintf(what, sizeof what, "%s dw (+= random)", id);
    GT_CLOSE(what, dw, h->want_dw, nw, 1e-5, 1e-5);
    float *acc_want = ops_copy_f(dx0, R * K);
    for (int64_t i = 0; i < S * K; i++) acc_want[i] += h->want_dx[i];
    snprintf(what, sizeof what, "%s dinp += (random)", id);
    GT_CLOSE(what, dxa, acc_want, S * K, rtol, atol);
    if (c->tail) { // rows in no segment: untouched
        float *nan = malloc(sizeof(float) * (size_t)c->tail * (N > K ? N : K));
        for (int64_t i = 0; i < (int64_t)c->tail * (N > K ? N : K); i++) nan[i] = NAN;
        snprintf(what, sizeof what, "%s fwd tail rows", id);
        GT_EXACT(what, out + S * N, nan, (int64_t)c->tail * N);
        snprintf(what, sizeof what, "%s dinp tail rows", id);
        GT_EXACT(what, dx + S * K, nan, (int64_t)c->tail * K);
        snprintf(what, sizeof what, "%s dinp pair tail rows", id);
        GT_EXACT(what, dxp + S * K, nan, (int64_t)c->tail * K);
        snprintf(what, sizeof what, "%s dinp += tail rows", id);
        GT_EXACT(what, dxa + S * K, dx0 + S * K, (int64_t)c->tail * K);
        free(nan);
    }
    G->free(d_out), G->free(d_dx), G->free(d_dw), G->free(d_dxa), G->free(d_dxp);
    free(dx0), free(out), free(dx), free(dxa), free(dw), free(acc_want), free(dxp);
}

static void check_case(const GgCase *c) {
    const int E = c->E, N = c->N, K = c->K;
    GgData h;
    h.off = make_offsets(E, c->rows);
    h.S = h.off[E], h.R = h.S + c->tail, h.nw = (int64_t)E * N * K;
    const int64_t R = h.R, nw = h.nw;
    h.x = gt_round_bf16(ops_rand(R * K, 1.0f), R * K), h.w = gt_round_bf16(ops_rand(nw, 1.0f), nw);
    h.g = gt_round_bf16(ops_rand(R * N, 1.0f), R * N), h.dw0 = ops_rand(nw, 1.0f), h.dx0 = ops_rand(R * K, 1.0f);
    // cpu reference on the rounded values (rows past the segments are not written: compared only up to S)
    h.want = malloc(sizeof(float) * (R * N > 0 ? R * N : 1));
    h.want_dx = malloc(sizeof(float) * (R * K > 0 ? R * K : 1));
    h.want_dw = ops_copy_f(h.dw0, nw);
    Tensor c_off = tensor_1d(h.off, DT_I32, E + 1);
    C->grouped_matmul_forward(tensor_2d(h.want, DT_F32, R, N), tensor_2d(h.x, DT_F32, R, K),
                              tensor_3d(h.w, DT_F32, E, N, K), c_off, h.off);
    C->grouped_matmul_backward(tensor_2d(h.want_dx, DT_F32, R, K), tensor_3d(h.want_dw, DT_F32, E, N, K),
                               tensor_2d(h.g, DT_F32, R, N), tensor_2d(h.x, DT_F32, R, K),
                               tensor_3d(h.w, DT_F32, E, N, K), c_off, h.off, 0);
    h.w2 = gt_round_bf16(ops_rand(nw, 1.0f), nw), h.g2 = gt_round_bf16(ops_rand(R * N, 1.0f), R * N);
    h.want_pair = malloc(sizeof(float) * (R * K > 0 ? R * K : 1));
    C->grouped_matmul_dinp_pair(tensor_2d(h.want_pair, DT_F32, R, K), tensor_2d(h.g, DT_F32, R, N),
                                tensor_3d(h.w, DT_F32, E, N, K), tensor_2d(h.g2, DT_F32, R, N),
                                tensor_3d(h.w2, DT_F32, E, N, K), c_off, h.off);
    h.d_w2 = gt_dev(h.w2, nw, DT_BF16), h.d_g2 = gt_dev(h.g2, R * N, DT_BF16);
    if (c->skew) {
        float *xs = malloc(sizeof(float) * (R * K + 1));
        xs[0] = 0.0f;
        memcpy(xs + 1, h.x, sizeof(float) * R * K);
        h.d_xbuf = gt_dev(xs, R * K + 1, DT_BF16);
        h.d_x = (uint16_t *)h.d_xbuf + 1;
        free(xs);
    } else {
        h.d_xbuf = h.d_x = gt_dev(h.x, R * K, DT_BF16);
    }
    h.d_w = gt_dev(h.w, nw, DT_BF16), h.d_g = gt_dev(h.g, R * N, DT_BF16), h.d_off = gt_dev_i32(h.off, E + 1);
    for (int i = 0; i < N_IMPLS; i++) {
        run_impl(c, &h, &g_impls[i], DT_F32);
        run_impl(c, &h, &g_impls[i], DT_BF16);
    }
    G->free(h.d_xbuf), G->free(h.d_w), G->free(h.d_g), G->free(h.d_off), G->free(h.d_w2), G->free(h.d_g2);
    free(h.x), free(h.w), free(h.g), free(h.dw0), free(h.dx0), free(h.want), free(h.want_dx), free(h.want_dw);
    free(h.w2), free(h.g2), free(h.want_pair);
    free(h.off);
}

static void check_rows(int E, int N, int K, const int *rows, int tail) {
    GgCase c = {E, N, K, rows, tail, 0};
    check_case(&c);
}

// Sizes in [0, 2 avg], about one expert in six empty, the first and the last empty.
static int *random_rows(int E, int avg) {
    int *rows = malloc(sizeof(int) * E);
    for (int e = 0; e < E; e++)
        rows[e] = ops_rng_u64() % 6 == 0 ? 0 : (int)(ops_rng_u64() % (uint64_t)(2 * avg + 1));
    rows[0] = rows[E - 1] = 0;
    return rows;
}

TEST(gpu_grouped_gemm_tile_edges) {
    gt_init(61);
    // empty first/last/consecutive experts, 1 row, one below / at / above the 128-row tile, two tiles and a bit
    static const int rows[10] = {0, 1, 127, 128, 129, 0, 0, 300, 45, 0};
    check_rows(10, 320, 200, rows, 5); // N = 2.5 / 1.25 column tiles, K = 3.125 stages; 5 rows in no segment
    check_rows(10, 200, 320, rows, 0); // dinp: 200 output columns, contraction over 320
    int *rr = random_rows(40, 90);     // 40 experts: the tile scan's second 32-expert step
    check_rows(40, 264, 136, rr, 0);
    free(rr);
}

TEST(gpu_grouped_gemm_degenerate_segments) {
    gt_init(62);
    static const int one_expert[4] = {0, 0, 700, 0}; // all rows in one (middle) expert
    check_rows(4, 64, 96, one_expert, 0);
    static const int single[1] = {513}; // E = 1
    check_rows(1, 136, 64, single, 0);
    static const int none[5] = {0, 0, 0, 0, 0}; // R = 0: nothing written, dw unchanged
    check_rows(5, 64, 32, none, 0);
    check_rows(5, 64, 32, none, 3); // no rows in segments, 3 in none: still nothing written
}

TEST(gpu_grouped_gemm_tiny_config) {
    gt_init(63);
    // configs/tiny.yaml: d = 64, moe_inter_dim = 32: gate/up are N = 32, K = 64; down is N = 64, K = 32
    int *rr = random_rows(8, 40);
    check_rows(8, 32, 64, rr, 0);
    check_rows(8, 64, 32, rr, 0);
    free(rr);
}

TEST(gpu_grouped_gemm_many_tiles) {
    gt_init(67);
    // About 250 row tiles: each CTA of the persistent wgmma kernels runs several; with a 64-deep contraction (K = 64
    // forward, N = 64 dinp) every stage is a tile's first and last. dw sums up to 12000 rows in one CTA.
    static const int rows[5] = {9000, 0, 12000, 7000, 4100};
    check_rows(5, 256, 64, rows, 0);
    check_rows(5, 64, 256, rows, 0);
}

TEST(gpu_grouped_gemm_bench_widths) {
    gt_init(64);
    // bench-1gpu: d = 1536, moe_inter_dim = 512 (gate/up N = 512, K = 1536; down N = 1536, K = 512), fewer rows
    int *rr = random_rows(16, 160);
    rr[5] = 1024; // an expert of several full row tiles
    check_rows(16, 512, 1536, rr, 0);
    check_rows(16, 1536, 512, rr, 0);
    free(rr);
}

TEST(gpu_grouped_gemm_fallback_shapes) {
    gt_init(65);
    // N or K not a multiple of 8, and an input view that is not 16-byte aligned: the per-expert cuBLASLt loop
    static const int rows[5] = {3, 0, 130, 17, 0};
    check_rows(5, 36, 64, rows, 0);
    check_rows(5, 64, 20, rows, 2);
    GgCase c = {5, 64, 96, rows, 0, 1};
    check_case(&c);
}

// Bitwise-reproducible: the same call twice gives the same bits (no atomics, fixed summation order), on each kernel
// set.
TEST(gpu_grouped_gemm_deterministic) {
    gt_init(66);
    const int E = 6, N = 256, K = 512;
    static const int rows[6] = {900, 0, 1, 400, 257, 33};
    int32_t *off = make_offsets(E, rows);
    const int64_t R = off[E], nw = (int64_t)E * N * K;
    float *x = ops_rand(R * K, 1.0f), *w = ops_rand(nw, 1.0f), *g = ops_rand(R * N, 1.0f), *dw0 = ops_rand(nw, 1.0f);
    void *d_x = gt_dev(x, R * K, DT_BF16), *d_w = gt_dev(w, nw, DT_BF16), *d_g = gt_dev(g, R * N, DT_BF16);
    void *d_off = gt_dev_i32(off, E + 1);
    Tensor g_off = tensor_1d(d_off, DT_I32, E + 1);
    float *ref = ops_copy_f(dw0, nw), *xr = gt_round_bf16(x, R * K), *gr = gt_round_bf16(g, R * N);
    float *wr = gt_round_bf16(w, nw);
    Tensor c_off = tensor_1d(off, DT_I32, E + 1);
    C->grouped_matmul_backward(tensor_2d(NULL, DT_F32, R, K), tensor_3d(ref, DT_F32, E, N, K),
                               tensor_2d(gr, DT_F32, R, N), tensor_2d(xr, DT_F32, R, K), tensor_3d(wr, DT_F32, E, N, K),
                               c_off, off, 0);
    for (int im = 0; im < N_IMPLS; im++) {
        impl_select(&g_impls[im]);
        float *outs[2], *dxs[2], *dws[2];
        for (int i = 0; i < 2; i++) {
            void *d_out = gt_dev_poison(R * N, DT_F32), *d_dx = gt_dev_poison(R * K, DT_F32);
            void *d_dw = gt_dev(dw0, nw, DT_F32);
            Tensor t_x = tensor_2d(d_x, DT_BF16, R, K), t_w = tensor_3d(d_w, DT_BF16, E, N, K);
            G->grouped_matmul_forward(tensor_2d(d_out, DT_F32, R, N), t_x, t_w, g_off, off);
            G->grouped_matmul_backward(tensor_2d(d_dx, DT_F32, R, K), tensor_3d(d_dw, DT_F32, E, N, K),
                                       tensor_2d(d_g, DT_BF16, R, N), t_x, t_w, g_off, off, 0);
            outs[i] = gt_host(d_out, R * N, DT_F32), dxs[i] = gt_host(d_dx, R * K, DT_F32);
            dws[i] = gt_host(d_dw, nw, DT_F32);
            G->free(d_out), G->free(d_dx), G->free(d_dw);
        }
        char what[120];
        snprintf(what, sizeof what, "%s grouped fwd, second run", g_impls[im].name);
        GT_EXACT(what, outs[1], outs[0], R * N);
        snprintf(what, sizeof what, "%s grouped dinp, second run", g_impls[im].name);
        GT_EXACT(what, dxs[1], dxs[0], R * K);
        snprintf(what, sizeof what, "%s grouped dw, second run", g_impls[im].name);
        GT_EXACT(what, dws[1], dws[0], nw);
        // and the first run is right (so the comparison above is of correct values)
        snprintf(what, sizeof what, "%s grouped dw vs cpu", g_impls[im].name);
        GT_CLOSE(what, dws[0], ref, nw, 1e-5, 1e-5);
        for (int i = 0; i < 2; i++) free(outs[i]), free(dxs[i]), free(dws[i]);
    }
    G->free(d_x), G->free(d_w), G->free(d_g), G->free(d_off);
    free(x), free(w), free(g), free(dw0), free(ref), free(xr), free(gr), free(wr), free(off);
}

// Device offsets that disagree with a valid offsets_host (the kernels read only the device copy): the bad entry is
// found on the GPU and the next synchronization dies naming it; nothing outside the tensors is touched.
static void bad_device_offsets(void *ctx) {
    impl_select((const GgImpl *)ctx);
    const Backend *g = backend_get("cuda");
    const int E = 4, N = 64, K = 64, R = 100;
    int32_t good[5] = {0, 10, 50, 50, 100}, bad[5] = {0, 10, 60, 40, 100};
    void *d_off = g->alloc(sizeof bad), *x = g->alloc((size_t)R * K * 2), *w = g->alloc((size_t)E * N * K * 2);
    void *o = g->alloc((size_t)R * N * 2);
    g->upload(d_off, bad, sizeof bad);
    g->grouped_matmul_forward(tensor_2d(o, DT_BF16, R, N), tensor_2d(x, DT_BF16, R, K),
                              tensor_3d(w, DT_BF16, E, N, K), tensor_1d(d_off, DT_I32, E + 1), good);
    g->synchronize();
}

TEST(gpu_grouped_gemm_bad_device_offsets_die) {
    for (int im = 0; im < N_IMPLS; im++)
        EXPECT_DIE(bad_device_offsets, (void *)&g_impls[im],
                   "grouped_matmul: device offsets[3] = 40 breaks the segment table");
}

// A kernel-set variable with a value that names nothing: the op dies naming the variable and the choices.
static void bad_gg_env(void *ctx) {
    const char *var = ctx;
    setenv("DSV3_GG", "wg", 1);
    setenv(var, "tma", 1);
    const Backend *g = backend_get("cuda");
    int32_t off[3] = {0, 3, 8};
    void *d_off = g->alloc(sizeof off), *x = g->alloc(8 * 64 * 2), *w = g->alloc(2 * 64 * 64 * 2);
    void *o = g->alloc(8 * 64 * 2);
    g->upload(d_off, off, sizeof off);
    g->grouped_matmul_forward(tensor_2d(o, DT_BF16, 8, 64), tensor_2d(x, DT_BF16, 8, 64),
                              tensor_3d(w, DT_BF16, 2, 64, 64), tensor_1d(d_off, DT_I32, 3), off);
    g->synchronize();
}

TEST(gpu_grouped_gemm_bad_env_dies) {
    EXPECT_DIE(bad_gg_env, (void *)"DSV3_GG", "DSV3_GG=tma: expected wg or mma");
    EXPECT_DIE(bad_gg_env, (void *)"DSV3_GG_WG_BN", "DSV3_GG_WG_BN=tma: expected 256 or 128");
    EXPECT_DIE(bad_gg_env, (void *)"DSV3_GG_WG_EPI", "DSV3_GG_WG_EPI=tma: expected direct or bulk");
}
