// cuda vs cpu: MLA's RoPE and key/value assembly (bit for bit in FP32: the same operations in the same order), and
// causal flash attention forward and backward at several shapes: single tokens, tiles that end mid-way (T = 65,
// 130, 200), odd head dims, and the bench-1gpu shape (T 4096, 12 heads, qk 192, v 128), in FP32 and BF16.
//
// Attention tolerances: the GPU kernel sums scores and outputs tile by tile with an online softmax (rescaled
// partial sums) and its own expf, the cpu in one pass per row; both in FP32. Forward outputs are convex
// combinations of v rows: rtol 1e-4 plus 1e-5 of the largest. The gradients are sums of up to T terms that
// include the cancellation dp - D: rtol 1e-3 plus 1e-4 of the largest |gradient| (FP32 error grows ~sqrt(T)). BF16
// tensors (inputs rounded on both sides, FP32 math inside) add one output rounding: rtol 1e-2 plus 1e-2 of the max.
// BF16 tensors with head dims that are multiples of 16 (D <= 192, DV <= 128) run on the tensor-core kernels
// (cuda_attention_tc.cu): q.k and dO.v are exact BF16 products summed in FP32, but P and dS are rounded to BF16
// (relative 2^-9 each) before the second product, so each output is a sum of up to T terms each off by up to 0.4%,
// plus the output's own BF16 rounding (another 0.4%): rtol 2e-2 with an absolute floor of 2e-2 x max|ref| (terms
// of both signs can cancel to near zero, where only the floor relative to the largest gradient is meaningful); lse
// comes from FP32 scores but through exp2/log2 in place of exp/log and another summation order: rtol 1e-4.
#include "tests/gpu/gpu_testutil.h"

static void rand_tables(float *cs, float *sn, int T, int half) {
    for (int i = 0; i < T * half; i++) {
        double a = 3.14159265 * ops_rng_unit() * (1 + i % 7);
        cs[i] = (float)cos(a);
        sn[i] = (float)sin(a);
    }
}

TEST(gpu_rope_exact) {
    gt_init(31);
    // q-like x (N, H, stride) with the rope part at columns [8, 24); then a 2-D k_rope (N, 64), rope over all columns
    const int T = 5, N = 2 * T, H = 3, stride = 40;
    float cs[5 * 8], sn[5 * 8], cs2[5 * 32], sn2[5 * 32];
    rand_tables(cs, sn, T, 8);
    rand_tables(cs2, sn2, T, 32);
    void *d_cs = gt_dev(cs, T * 8, DT_F32), *d_sn = gt_dev(sn, T * 8, DT_F32);
    void *d_cs2 = gt_dev(cs2, T * 32, DT_F32), *d_sn2 = gt_dev(sn2, T * 32, DT_F32);
    float *x = ops_rand(N * H * stride, 2.0f);
    float *xb = gt_round_bf16(x, N * H * stride); // BF16 copy, taken before the FP32 rotations
    void *d_x = gt_dev(x, N * H * stride, DT_F32), *d_xb = gt_dev(xb, N * H * stride, DT_BF16);
    Tensor c_cs = tensor_2d(cs, DT_F32, T, 8), c_sn = tensor_2d(sn, DT_F32, T, 8);
    Tensor g_cs = tensor_2d(d_cs, DT_F32, T, 8), g_sn = tensor_2d(d_sn, DT_F32, T, 8);
    for (int inv = 0; inv <= 1; inv++) {
        C->rope_apply(tensor_3d(x, DT_F32, N, H, stride), 8, 16, c_cs, c_sn, T, inv);
        G->rope_apply(tensor_3d(d_x, DT_F32, N, H, stride), 8, 16, g_cs, g_sn, T, inv);
        GT_EXACT(inv ? "rope inverse" : "rope", gt_host(d_x, N * H * stride, DT_F32), x, N * H * stride);
    }
    float *kr = ops_rand(N * 64, 1.0f);
    void *d_kr = gt_dev(kr, N * 64, DT_F32);
    C->rope_apply(tensor_2d(kr, DT_F32, N, 64), 0, 64, tensor_2d(cs2, DT_F32, T, 32), tensor_2d(sn2, DT_F32, T, 32),
                  T, 0);
    G->rope_apply(tensor_2d(d_kr, DT_F32, N, 64), 0, 64, tensor_2d(d_cs2, DT_F32, T, 32),
                  tensor_2d(d_sn2, DT_F32, T, 32), T, 0);
    GT_EXACT("rope 2-d", gt_host(d_kr, N * 64, DT_F32), kr, N * 64);
    // BF16 activations: rotated in FP32, rounded once
    C->rope_apply(tensor_3d(xb, DT_F32, N, H, stride), 8, 16, c_cs, c_sn, T, 0);
    G->rope_apply(tensor_3d(d_xb, DT_BF16, N, H, stride), 8, 16, g_cs, g_sn, T, 0);
    GT_CLOSE("rope bf16", gt_host(d_xb, N * H * stride, DT_BF16), xb, N * H * stride, 1e-2, 1e-2);
}

TEST(gpu_mla_kv_assemble_exact) {
    gt_init(32);
    const int B = 2, T = 19, N = B * T, H = 4, nope = 16, rope = 8, dv = 12;
    float *kv = ops_rand(N * H * (nope + dv), 1.0f), *kr = ops_rand(N * rope, 1.0f);
    float *k = malloc(sizeof(float) * N * H * (nope + rope)), *v = malloc(sizeof(float) * N * H * dv);
    C->mla_kv_assemble(tensor_4d(k, DT_F32, B, T, H, nope + rope), tensor_4d(v, DT_F32, B, T, H, dv),
                       tensor_2d(kv, DT_F32, N, H * (nope + dv)), tensor_2d(kr, DT_F32, N, rope), nope, rope, dv);
    void *d_kv = gt_dev(kv, N * H * (nope + dv), DT_F32), *d_kr = gt_dev(kr, N * rope, DT_F32);
    void *d_k = gt_dev_poison(N * H * (nope + rope), DT_F32), *d_v = gt_dev_poison(N * H * dv, DT_F32);
    G->mla_kv_assemble(tensor_4d(d_k, DT_F32, B, T, H, nope + rope), tensor_4d(d_v, DT_F32, B, T, H, dv),
                       tensor_2d(d_kv, DT_F32, N, H * (nope + dv)), tensor_2d(d_kr, DT_F32, N, rope), nope, rope, dv);
    GT_EXACT("kv_assemble k", gt_host(d_k, N * H * (nope + rope), DT_F32), k, N * H * (nope + rope));
    GT_EXACT("kv_assemble v", gt_host(d_v, N * H * dv, DT_F32), v, N * H * dv);
    float *gk = ops_rand(N * H * (nope + rope), 1.0f), *gv = ops_rand(N * H * dv, 1.0f);
    float *dkv = malloc(sizeof(float) * N * H * (nope + dv)), *dkr = malloc(sizeof(float) * N * rope);
    C->mla_kv_assemble_backward(tensor_2d(dkv, DT_F32, N, H * (nope + dv)), tensor_2d(dkr, DT_F32, N, rope),
                                tensor_3d(gk, DT_F32, N, H, nope + rope), tensor_3d(gv, DT_F32, N, H, dv), nope, rope,
                                dv);
    void *d_gk = gt_dev(gk, N * H * (nope + rope), DT_F32), *d_gv = gt_dev(gv, N * H * dv, DT_F32);
    void *d_dkv = gt_dev_poison(N * H * (nope + dv), DT_F32), *d_dkr = gt_dev_poison(N * rope, DT_F32);
    G->mla_kv_assemble_backward(tensor_2d(d_dkv, DT_F32, N, H * (nope + dv)), tensor_2d(d_dkr, DT_F32, N, rope),
                                tensor_3d(d_gk, DT_F32, N, H, nope + rope), tensor_3d(d_gv, DT_F32, N, H, dv), nope,
                                rope, dv);
    GT_EXACT("kv_assemble_bwd dkv", gt_host(d_dkv, N * H * (nope + dv), DT_F32), dkv, N * H * (nope + dv));
    GT_EXACT("kv_assemble_bwd dk_rope (head sum)", gt_host(d_dkr, N * rope, DT_F32), dkr, N * rope);
}

// The tensor-core kernel sets (DSV3_ATTN_FWD / DSV3_ATTN_BWD = v1 | v2 | wg; cuda_attention_tc.cu). v2 and wg (the
// Hopper wgmma kernels) are instantiated for these head dims (cuda_attention_tc2.cu: TC2_DIMS, cuda_attention_wg.cu:
// WG_DIMS); other tensor-core dims run v1 under every setting.
static int tc2_dims(int D, int DV) { return (D == 192 && DV == 128) || (D == 128 && DV == 128) || (D == 64 && DV == 64); }

static const char *const attn_version_names[4] = {"", "v1", "v2", "wg"};
static void attn_set_version(int ver) {
    setenv("DSV3_ATTN_FWD", attn_version_names[ver], 1);
    setenv("DSV3_ATTN_BWD", attn_version_names[ver], 1);
}

// Forward and backward of one shape; the backward of both backends starts from the cpu's out and lse, so both
// differentiate the same forward. Tensor-core shapes with v2 / wg kernels run all three kernel sets (wg first)
// against the one cpu reference, each into freshly poisoned outputs.
static void check_attention(int B, int T, int H, int D, int DV, DType dt) {
    const int64_t nq = (int64_t)B * T * H * D, nv = (int64_t)B * T * H * DV, nl = (int64_t)B * H * T;
    const float scale = 1.0f / sqrtf((float)D);
    float *q = ops_rand(nq, 2.0f), *k = ops_rand(nq, 2.0f), *v = ops_rand(nv, 1.0f), *dout = ops_rand(nv, 1.0f);
    if (dt == DT_BF16) q = gt_round_bf16(q, nq), k = gt_round_bf16(k, nq), v = gt_round_bf16(v, nv), dout = gt_round_bf16(dout, nv);
    float *out = malloc(sizeof(float) * nv), *lse = malloc(sizeof(float) * nl);
    C->attention_forward(tensor_4d(out, DT_F32, B, T, H, DV), tensor_3d(lse, DT_F32, B, H, T),
                         tensor_4d(q, DT_F32, B, T, H, D), tensor_4d(k, DT_F32, B, T, H, D),
                         tensor_4d(v, DT_F32, B, T, H, DV), scale);
    const int bf = dt == DT_BF16;
    float *outr = bf ? gt_round_bf16(out, nv) : out; // what a BF16 forward would have stored
    float *dq = malloc(sizeof(float) * nq), *dk = malloc(sizeof(float) * nq), *dv = malloc(sizeof(float) * nv);
    C->attention_backward(tensor_4d(dq, DT_F32, B, T, H, D), tensor_4d(dk, DT_F32, B, T, H, D),
                          tensor_4d(dv, DT_F32, B, T, H, DV), tensor_4d(dout, DT_F32, B, T, H, DV),
                          tensor_4d(q, DT_F32, B, T, H, D), tensor_4d(k, DT_F32, B, T, H, D),
                          tensor_4d(v, DT_F32, B, T, H, DV), tensor_4d(outr, DT_F32, B, T, H, DV),
                          tensor_3d(lse, DT_F32, B, H, T), scale);
    const int tc = bf && D % 16 == 0 && DV % 16 == 0 && D <= 192 && DV <= 128; // the cuda dispatch rule
    const int nver = tc && tc2_dims(D, DV) ? 3 : 1;
    void *d_q = gt_dev(q, nq, dt), *d_k = gt_dev(k, nq, dt), *d_v = gt_dev(v, nv, dt);
    void *d_o2 = gt_dev(outr, nv, dt), *d_l2 = gt_dev(lse, nl, DT_F32), *d_do = gt_dev(dout, nv, dt);
    Tensor tq = tensor_4d(d_q, dt, B, T, H, D), tk = tensor_4d(d_k, dt, B, T, H, D), tv = tensor_4d(d_v, dt, B, T, H, DV);
    for (int ver = nver; ver >= 1; ver--) {
        if (tc) attn_set_version(ver);
        void *d_out = gt_dev_poison(nv, dt), *d_lse = gt_dev_poison(nl, DT_F32);
        G->attention_forward(tensor_4d(d_out, dt, B, T, H, DV), tensor_3d(d_lse, DT_F32, B, H, T), tq, tk, tv, scale);
        const double frt = tc ? 2e-2 : bf ? 1e-2 : 1e-4, fat = tc ? 2e-2 : bf ? 1e-2 : 1e-5;
        char what[160];
        snprintf(what, sizeof what, "attn B%d T%d H%d D%d DV%d %s%s out", B, T, H, D, DV,
                 tc ? "bf16 tensor-core " : bf ? "bf16" : "f32", tc ? attn_version_names[ver] : "");
        GT_CLOSE(what, gt_host(d_out, nv, dt), out, nv, frt, fat);
        const char *vn = tc ? attn_version_names[ver] : ""; // names the kernel set in every failure
        char wl[32], wq[32], wk[32], wv[32];
        snprintf(wl, sizeof wl, "attn %s lse", vn), snprintf(wq, sizeof wq, "attn %s dq", vn);
        snprintf(wk, sizeof wk, "attn %s dk", vn), snprintf(wv, sizeof wv, "attn %s dv", vn);
        GT_CLOSE(wl, gt_host(d_lse, nl, DT_F32), lse, nl, tc ? 1e-4 : 1e-5, 1e-6);

        void *d_dq = gt_dev_poison(nq, dt), *d_dk = gt_dev_poison(nq, dt), *d_dv = gt_dev_poison(nv, dt);
        G->attention_backward(tensor_4d(d_dq, dt, B, T, H, D), tensor_4d(d_dk, dt, B, T, H, D),
                              tensor_4d(d_dv, dt, B, T, H, DV), tensor_4d(d_do, dt, B, T, H, DV), tq, tk, tv,
                              tensor_4d(d_o2, dt, B, T, H, DV), tensor_3d(d_l2, DT_F32, B, H, T), scale);
        const double rt = tc ? 2e-2 : bf ? 1e-2 : 1e-3, at = tc ? 2e-2 : bf ? 1e-2 : 1e-4;
        // Inputs are O(1): gradients that cancel to ~0 (T = 1: dq = dk = 0 exactly) keep FP32 noise of O(1) terms.
        GT_CLOSE_ABS(wq, gt_host(d_dq, nq, dt), dq, nq, rt, at, 1e-6);
        GT_CLOSE_ABS(wk, gt_host(d_dk, nq, dt), dk, nq, rt, at, 1e-6);
        GT_CLOSE_ABS(wv, gt_host(d_dv, nv, dt), dv, nv, rt, at, 1e-6);
        G->free(d_out), G->free(d_lse), G->free(d_dq), G->free(d_dk), G->free(d_dv);
    }
    unsetenv("DSV3_ATTN_FWD"), unsetenv("DSV3_ATTN_BWD");
    G->free(d_q), G->free(d_k), G->free(d_v), G->free(d_o2), G->free(d_l2), G->free(d_do);
    free(q), free(k), free(v), free(dout), free(out), free(lse), free(dq), free(dk), free(dv);
    if (bf) free(outr);
}

TEST(gpu_attention_small_shapes) {
    gt_init(33);
    check_attention(2, 1, 1, 8, 8, DT_F32);     // one token: p = 1
    check_attention(3, 64, 2, 64, 64, DT_F32);  // exactly one tile
    check_attention(2, 65, 3, 24, 16, DT_F32);  // a second tile of one row
    check_attention(1, 130, 2, 192, 128, DT_F32); // MLA head dims, three tiles
    check_attention(1, 200, 2, 33, 7, DT_F32);  // odd head dims
}

TEST(gpu_attention_bench_shape) {
    gt_init(34);
    check_attention(1, 4096, 12, 192, 128, DT_F32);
}

TEST(gpu_attention_bf16) {
    gt_init(35);
    check_attention(2, 300, 4, 192, 128, DT_BF16); // tensor cores
    check_attention(1, 77, 2, 40, 24, DT_BF16);    // head dims not multiples of 16: the FP32 kernels
    check_attention(2, 128, 4, 24, 16, DT_BF16);   // configs/tiny.yaml's attention (qk 16 + 8, v 16): FP32 kernels
}

// The tensor-core kernels, all sets (v2: 128-row CTA tiles, 64-row streamed tiles; wg: 128 queries x 128-key tiles):
// MLA head dims at T 4096 (32 full 128-row tiles, the causal diagonal in every CTA), an odd T (1000: the last
// 128-row tile holds 104 rows, the last 64-row tile 40; cp.async zero-fills the rest), T = 1, T below one 64-row
// tile (37), between one and two (100), one row past a 128-row tile (129: a second key tile of one key, so the
// pipelines' prologue, steady state and tail all run), B and H > 1 everywhere, the other v2 / wg instantiations
// (128/128, 64/64) and dims that only v1 takes.
TEST(gpu_attention_bf16_tensor_core) {
    gt_init(36);
    check_attention(1, 4096, 2, 192, 128, DT_BF16);
    check_attention(2, 1000, 3, 192, 128, DT_BF16);
    check_attention(3, 1, 2, 192, 128, DT_BF16);
    check_attention(2, 37, 3, 192, 128, DT_BF16);
    check_attention(2, 100, 2, 192, 128, DT_BF16);
    check_attention(2, 129, 2, 192, 128, DT_BF16);
    check_attention(1, 520, 2, 128, 128, DT_BF16);
    check_attention(1, 37, 1, 128, 128, DT_BF16);
    check_attention(2, 250, 3, 64, 64, DT_BF16);
    check_attention(1, 129, 2, 16, 16, DT_BF16);
    check_attention(2, 200, 2, 64, 96, DT_BF16);
}

// Bit-reproducible backward (exact resume depends on it): the same inputs twice give the same bits, for each set.
TEST(gpu_attention_bf16_deterministic) {
    gt_init(37);
    const int B = 2, T = 700, H = 3, D = 192, DV = 128;
    const int64_t nq = (int64_t)B * T * H * D, nv = (int64_t)B * T * H * DV, nl = (int64_t)B * H * T;
    float *q = ops_rand(nq, 2.0f), *k = ops_rand(nq, 2.0f), *v = ops_rand(nv, 1.0f), *dout = ops_rand(nv, 1.0f);
    void *d_q = gt_dev(q, nq, DT_BF16), *d_k = gt_dev(k, nq, DT_BF16), *d_v = gt_dev(v, nv, DT_BF16);
    void *d_do = gt_dev(dout, nv, DT_BF16), *d_out = gt_dev_poison(nv, DT_BF16), *d_lse = gt_dev_poison(nl, DT_F32);
    Tensor tq = tensor_4d(d_q, DT_BF16, B, T, H, D), tk = tensor_4d(d_k, DT_BF16, B, T, H, D);
    Tensor tv = tensor_4d(d_v, DT_BF16, B, T, H, DV), to = tensor_4d(d_out, DT_BF16, B, T, H, DV);
    Tensor tl = tensor_3d(d_lse, DT_F32, B, H, T), tdo = tensor_4d(d_do, DT_BF16, B, T, H, DV);
    for (int ver = 1; ver <= 3; ver++) {
        attn_set_version(ver);
        G->attention_forward(to, tl, tq, tk, tv, 1.0f / sqrtf((float)D));
        float *first[3] = {NULL, NULL, NULL};
        for (int rep = 0; rep < 2; rep++) {
            void *g[3] = {gt_dev_poison(nq, DT_BF16), gt_dev_poison(nq, DT_BF16), gt_dev_poison(nv, DT_BF16)};
            G->attention_backward(tensor_4d(g[0], DT_BF16, B, T, H, D), tensor_4d(g[1], DT_BF16, B, T, H, D),
                                  tensor_4d(g[2], DT_BF16, B, T, H, DV), tdo, tq, tk, tv, to, tl,
                                  1.0f / sqrtf((float)D));
            const int64_t n[3] = {nq, nq, nv};
            static const char *names[3] = {"dq", "dk", "dv"};
            for (int i = 0; i < 3; i++) {
                float *h = gt_host(g[i], n[i], DT_BF16);
                if (rep == 0) first[i] = h;
                else {
                    char what[64];
                    snprintf(what, sizeof what, "attn %s %s run 2 vs run 1", attn_version_names[ver], names[i]);
                    GT_EXACT(what, h, first[i], n[i]);
                    free(h), free(first[i]);
                }
                G->free(g[i]);
            }
        }
    }
    unsetenv("DSV3_ATTN_FWD"), unsetenv("DSV3_ATTN_BWD");
    G->free(d_q), G->free(d_k), G->free(d_v), G->free(d_do), G->free(d_out), G->free(d_lse);
    free(q), free(k), free(v), free(dout);
}

static void bad_version(void *ctx) {
    (void)ctx;
    setenv("DSV3_ATTN_BWD", "v3", 1);
    const Backend *g = backend_get("cuda");
    const int T = 4, D = 64;
    void *x = g->alloc(T * D * 2 * 8), *l = g->alloc(T * 4);
    Tensor t = tensor_4d(x, DT_BF16, 1, T, 1, D);
    g->attention_backward(t, t, t, t, t, t, t, t, tensor_3d(l, DT_F32, 1, 1, T), 1.0f);
}

TEST(gpu_attention_rejects_bad_version) {
    EXPECT_DIE(bad_version, NULL, "DSV3_ATTN_BWD=v3: expected v1, v2 or wg");
}

static void bad_head_dim(void *ctx) {
    (void)ctx;
    const Backend *g = backend_get("cuda");
    void *q = g->alloc(256 * 4), *v = g->alloc(128 * 4), *o = g->alloc(128 * 4), *l = g->alloc(4);
    g->attention_forward(tensor_4d(o, DT_F32, 1, 1, 1, 128), tensor_3d(l, DT_F32, 1, 1, 1),
                         tensor_4d(q, DT_F32, 1, 1, 1, 256), tensor_4d(q, DT_F32, 1, 1, 1, 256),
                         tensor_4d(v, DT_F32, 1, 1, 1, 128), 1.0f);
}

TEST(gpu_attention_rejects_head_dim_over_192) {
    EXPECT_DIE(bad_head_dim, NULL, "attention_forward: head dims q/k 256 and v 128: this kernel supports 1..192");
}
