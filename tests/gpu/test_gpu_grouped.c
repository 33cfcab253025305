// cuda vs cpu: the BF16 grouped (MoE expert) GEMMs of cuda_grouped_gemm.cu, through the backend's
// grouped_matmul_forward/backward: out = inp @ w[e]^T, dinp = dout @ w[e] (overwrite), dw[e] += dout_seg^T inp_seg.
//
// Inputs are random, rounded to BF16 on the host, and the cpu reference (FP32) gets the rounded values, so only the
// FP32 summation order differs: F32 outputs within rtol 1e-5 + 1e-5 of the largest value (as the dense GEMM tests),
// BF16 outputs add one rounding (2^-8 relative): rtol 1e-2 + 1e-3 of the largest value. out and dinp start poisoned
// (NaN), so a row or column the kernel fails to write fails the comparison; dw starts from random values (it
// accumulates). Segment tables cover the edges of the kernels' tiling (128 x 128 output tiles, 64-deep contraction
// stages): empty experts (first, last, consecutive), single rows, sizes one below/at/above a tile, all
// rows in one expert, R = 0, widths that are not multiples of the tile (K = 32, N = 64 of the tiny config; 200, 320),
// and the bench-1gpu widths (1536 / 512). The loop fallback (N or K not a multiple of 8, a misaligned view) is checked
// the same way.
#include "tests/gpu/gpu_testutil.h"

typedef struct {
    int E, N, K;
    const int *rows; // E segment sizes
    DType out_dt;    // out and dinp
    int skew;        // 1: inp starts 1 element (2 bytes) into its buffer, so it is not 16-byte aligned
} GgCase;

static int32_t *make_offsets(int E, const int *rows) {
    int32_t *off = malloc(sizeof(int32_t) * (E + 1));
    off[0] = 0;
    for (int e = 0; e < E; e++) off[e + 1] = off[e] + rows[e];
    return off;
}

static void check_case(const GgCase *c) {
    const int E = c->E, N = c->N, K = c->K;
    int32_t *off = make_offsets(E, c->rows);
    const int64_t R = off[E], nw = (int64_t)E * N * K;
    const DType bf = DT_BF16, od = c->out_dt;
    float *x = gt_round_bf16(ops_rand(R * K, 1.0f), R * K), *w = gt_round_bf16(ops_rand(nw, 1.0f), nw);
    float *g = gt_round_bf16(ops_rand(R * N, 1.0f), R * N), *dw0 = ops_rand(nw, 1.0f);
    // cpu reference on the rounded values
    float *want = malloc(sizeof(float) * (R * N > 0 ? R * N : 1)), *want_dx = malloc(sizeof(float) * (R * K > 0 ? R * K : 1));
    float *want_dw = ops_copy_f(dw0, nw);
    Tensor c_off = tensor_1d(off, DT_I32, E + 1);
    C->grouped_matmul_forward(tensor_2d(want, DT_F32, R, N), tensor_2d(x, DT_F32, R, K), tensor_3d(w, DT_F32, E, N, K),
                              c_off, off);
    C->grouped_matmul_backward(tensor_2d(want_dx, DT_F32, R, K), tensor_3d(want_dw, DT_F32, E, N, K),
                               tensor_2d(g, DT_F32, R, N), tensor_2d(x, DT_F32, R, K), tensor_3d(w, DT_F32, E, N, K),
                               c_off, off);
    // gpu
    void *d_xbuf = NULL, *d_x;
    if (c->skew) {
        float *xs = malloc(sizeof(float) * (R * K + 1));
        xs[0] = 0.0f;
        memcpy(xs + 1, x, sizeof(float) * R * K);
        d_xbuf = gt_dev(xs, R * K + 1, bf);
        d_x = (uint16_t *)d_xbuf + 1;
        free(xs);
    } else {
        d_xbuf = d_x = gt_dev(x, R * K, bf);
    }
    void *d_w = gt_dev(w, nw, bf), *d_g = gt_dev(g, R * N, bf), *d_dw = gt_dev(dw0, nw, DT_F32);
    void *d_off = gt_dev_i32(off, E + 1), *d_out = gt_dev_poison(R * N, od), *d_dx = gt_dev_poison(R * K, od);
    Tensor g_off = tensor_1d(d_off, DT_I32, E + 1);
    Tensor t_x = tensor_2d(d_x, bf, R, K), t_w = tensor_3d(d_w, bf, E, N, K), t_g = tensor_2d(d_g, bf, R, N);
    G->grouped_matmul_forward(tensor_2d(d_out, od, R, N), t_x, t_w, g_off, off);
    G->grouped_matmul_backward(tensor_2d(d_dx, od, R, K), tensor_3d(d_dw, DT_F32, E, N, K), t_g, t_x, t_w, g_off, off);
    const int b = od == DT_BF16;
    const double rtol = b ? 1e-2 : 1e-5, atol = b ? 1e-3 : 1e-5;
    char what[160];
    snprintf(what, sizeof what, "E %d R %lld N %d K %d %s%s fwd", E, (long long)R, N, K, b ? "bf16" : "f32",
             c->skew ? " skewed" : "");
    GT_CLOSE(what, gt_host(d_out, R * N, od), want, R * N, rtol, atol);
    snprintf(what, sizeof what, "E %d R %lld N %d K %d %s%s dinp", E, (long long)R, N, K, b ? "bf16" : "f32",
             c->skew ? " skewed" : "");
    GT_CLOSE(what, gt_host(d_dx, R * K, od), want_dx, R * K, rtol, atol);
    snprintf(what, sizeof what, "E %d R %lld N %d K %d dw (+= random)%s", E, (long long)R, N, K,
             c->skew ? " skewed" : "");
    GT_CLOSE(what, gt_host(d_dw, nw, DT_F32), want_dw, nw, 1e-5, 1e-5);
    G->free(d_xbuf), G->free(d_w), G->free(d_g), G->free(d_dw), G->free(d_off), G->free(d_out), G->free(d_dx);
    free(x), free(w), free(g), free(dw0), free(want), free(want_dx), free(want_dw), free(off);
}

static void check_both_dtypes(int E, int N, int K, const int *rows) {
    GgCase c = {E, N, K, rows, DT_F32, 0};
    check_case(&c);
    c.out_dt = DT_BF16;
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
    check_both_dtypes(10, 320, 200, rows); // N = 2.5 column tiles, K = 3.125 contraction stages
    check_both_dtypes(10, 200, 320, rows); // dinp: 200 output columns, contraction over 320
    int *rr = random_rows(24, 90);
    check_both_dtypes(24, 264, 136, rr);
    free(rr);
}

TEST(gpu_grouped_gemm_degenerate_segments) {
    gt_init(62);
    static const int one_expert[4] = {0, 0, 700, 0}; // all rows in one (middle) expert
    check_both_dtypes(4, 64, 96, one_expert);
    static const int single[1] = {513};              // E = 1
    check_both_dtypes(1, 136, 64, single);
    static const int none[5] = {0, 0, 0, 0, 0};       // R = 0: nothing written, dw unchanged
    check_both_dtypes(5, 64, 32, none);
}

TEST(gpu_grouped_gemm_tiny_config) {
    gt_init(63);
    // configs/tiny.yaml: d = 64, moe_inter_dim = 32: gate/up are N = 32, K = 64; down is N = 64, K = 32
    int *rr = random_rows(8, 40);
    check_both_dtypes(8, 32, 64, rr);
    check_both_dtypes(8, 64, 32, rr);
    free(rr);
}

TEST(gpu_grouped_gemm_bench_widths) {
    gt_init(64);
    // bench-1gpu: d = 1536, moe_inter_dim = 512 (gate/up N = 512, K = 1536; down N = 1536, K = 512), fewer rows
    int *rr = random_rows(16, 160);
    rr[5] = 1024; // an expert of several full row tiles
    check_both_dtypes(16, 512, 1536, rr);
    check_both_dtypes(16, 1536, 512, rr);
    free(rr);
}

TEST(gpu_grouped_gemm_fallback_shapes) {
    gt_init(65);
    // N or K not a multiple of 8, and an input view that is not 16-byte aligned: the per-expert cuBLASLt loop
    static const int rows[5] = {3, 0, 130, 17, 0};
    check_both_dtypes(5, 36, 64, rows);
    check_both_dtypes(5, 64, 20, rows);
    GgCase c = {5, 64, 96, rows, DT_BF16, 1};
    check_case(&c);
}

// Bitwise-reproducible: the same call twice gives the same bits (no atomics, fixed summation order).
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
    float *outs[2], *dxs[2], *dws[2];
    for (int i = 0; i < 2; i++) {
        void *d_out = gt_dev_poison(R * N, DT_F32), *d_dx = gt_dev_poison(R * K, DT_F32), *d_dw = gt_dev(dw0, nw, DT_F32);
        Tensor t_x = tensor_2d(d_x, DT_BF16, R, K), t_w = tensor_3d(d_w, DT_BF16, E, N, K);
        G->grouped_matmul_forward(tensor_2d(d_out, DT_F32, R, N), t_x, t_w, g_off, off);
        G->grouped_matmul_backward(tensor_2d(d_dx, DT_F32, R, K), tensor_3d(d_dw, DT_F32, E, N, K),
                                   tensor_2d(d_g, DT_BF16, R, N), t_x, t_w, g_off, off);
        outs[i] = gt_host(d_out, R * N, DT_F32), dxs[i] = gt_host(d_dx, R * K, DT_F32), dws[i] = gt_host(d_dw, nw, DT_F32);
        G->free(d_out), G->free(d_dx), G->free(d_dw);
    }
    GT_EXACT("grouped fwd, second run", outs[1], outs[0], R * N);
    GT_EXACT("grouped dinp, second run", dxs[1], dxs[0], R * K);
    GT_EXACT("grouped dw, second run", dws[1], dws[0], nw);
    // and the first run is right (so the comparison above is of correct values)
    float *ref = ops_copy_f(dw0, nw), *xr = gt_round_bf16(x, R * K), *gr = gt_round_bf16(g, R * N);
    float *wr = gt_round_bf16(w, nw);
    Tensor c_off = tensor_1d(off, DT_I32, E + 1);
    C->grouped_matmul_backward(tensor_2d(NULL, DT_F32, R, K), tensor_3d(ref, DT_F32, E, N, K),
                               tensor_2d(gr, DT_F32, R, N), tensor_2d(xr, DT_F32, R, K), tensor_3d(wr, DT_F32, E, N, K),
                               c_off, off);
    GT_CLOSE("grouped dw vs cpu", dws[0], ref, nw, 1e-5, 1e-5);
}

// Device offsets that disagree with a valid offsets_host (the kernels read only the device copy): the bad entry is
// found on the GPU and the next synchronization dies naming it; nothing outside the tensors is touched.
static void bad_device_offsets(void *ctx) {
    (void)ctx;
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
    EXPECT_DIE(bad_device_offsets, NULL, "grouped_matmul: device offsets[3] = 40 breaks the segment table");
}
