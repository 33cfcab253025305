// cpu RoPE, MLA key/value assembly and causal attention against double-precision references written here; the
// attention backward against central finite differences of the double forward (loss = sum(out * R)) and, for
// sequences too long for those, against a double backward; attention results bit-identical for any thread count.
#include "kernels/ops.h"
#include "tests/ops_testutil.h"
#include "tests/test.h"

#include <omp.h>

static const Backend *cpu(void) { return backend_get("cpu"); }

// ---- RoPE ----

// Hand example: one token, one head, rope over dims [1, 5) of a 6-wide head; pair 0 rotates by 90 degrees
// (cos 0, sin 1): (x0, x1) = (1, 2) -> (x0 c - x1 s, x0 s + x1 c) = (-2, 1); pair 1 by 180 degrees: (3, 4) -> (-3, -4).
TEST(ops_rope_hand_example) {
    float x[6] = {9, 1, 2, 3, 4, 7}, c[2] = {0, -1}, s[2] = {1, 0};
    cpu()->rope_apply(tensor_3d(x, DT_F32, 1, 1, 6), 1, 4, tensor_2d(c, DT_F32, 1, 2), tensor_2d(s, DT_F32, 1, 2), 1,
                      0);
    float want[6] = {9, -2, 1, -3, -4, 7};
    for (int i = 0; i < 6; i++) ASSERT_NEAR(x[i], want[i], 0, 1e-7);
    cpu()->rope_apply(tensor_3d(x, DT_F32, 1, 1, 6), 1, 4, tensor_2d(c, DT_F32, 1, 2), tensor_2d(s, DT_F32, 1, 2), 1,
                      1);
    float back[6] = {9, 1, 2, 3, 4, 7};
    for (int i = 0; i < 6; i++) ASSERT_NEAR(x[i], back[i], 0, 1e-7);
}

TEST(ops_rope_matches_double_and_inverse_is_adjoint) {
    ops_rng_seed(301);
    // N = B*T tokens with B = 3, T = 5: token n uses position n % T.
    enum { B = 3, T = 5, H = 3, S = 11, COL = 4, RD = 6, HALF = RD / 2, N = B * T };
    float cs[T * HALF], sn[T * HALF];
    for (int p = 0; p < T; p++)
        for (int i = 0; i < HALF; i++) {
            double ang = p * pow(10000.0, -2.0 * i / RD);
            cs[p * HALF + i] = (float)cos(ang);
            sn[p * HALF + i] = (float)sin(ang);
        }
    float *x = ops_rand(N * H * S, 1.0f), *y = ops_rand(N * H * S, 1.0f);
    float *rx = ops_copy_f(x, N * H * S), *ry = ops_copy_f(y, N * H * S);
    double want[N * H * S];
    for (int n = 0; n < N; n++)
        for (int h = 0; h < H; h++)
            for (int j = 0; j < S; j++) {
                const float *xp = x + (n * H + h) * S;
                double v = xp[j];
                if (j >= COL && j < COL + RD) {
                    int i = (j - COL) / 2, p = n % T;
                    double c = cs[p * HALF + i], s = sn[p * HALF + i];
                    double x0 = xp[COL + 2 * i], x1 = xp[COL + 2 * i + 1];
                    v = (j - COL) % 2 == 0 ? x0 * c - x1 * s : x0 * s + x1 * c;
                }
                want[(n * H + h) * S + j] = v;
            }
    Tensor tc = tensor_2d(cs, DT_F32, T, HALF), ts = tensor_2d(sn, DT_F32, T, HALF);
    cpu()->rope_apply(tensor_3d(rx, DT_F32, N, H, S), COL, RD, tc, ts, T, 0);
    EXPECT_CLOSE("rope", rx, want, N * H * S, 1e-6, 1e-7);
    // The backward (inverse = 1) is the transpose of the forward: <R x, y> = <x, R^T y>.
    cpu()->rope_apply(tensor_3d(ry, DT_F32, N, H, S), COL, RD, tc, ts, T, 1);
    double lhs = 0.0, rhs = 0.0;
    for (int i = 0; i < N * H * S; i++) {
        lhs += (double)rx[i] * y[i];
        rhs += (double)x[i] * ry[i];
    }
    ASSERT_NEAR(lhs, rhs, 1e-5, 1e-5);
    // A 2-D (N, rope) tensor is one head per token (the shared k_rope), same numbers as head 0 of a 3-D one.
    float *k2 = malloc(sizeof(float) * N * RD), *k3 = malloc(sizeof(float) * N * RD);
    for (int i = 0; i < N * RD; i++) k2[i] = k3[i] = ops_rng_unit();
    cpu()->rope_apply(tensor_2d(k2, DT_F32, N, RD), 0, RD, tc, ts, T, 0);
    cpu()->rope_apply(tensor_3d(k3, DT_F32, N, 1, RD), 0, RD, tc, ts, T, 0);
    ASSERT(memcmp(k2, k3, sizeof(float) * N * RD) == 0);
}

// ---- MLA key/value assembly ----
TEST(ops_mla_kv_assemble_layout_and_adjoint) {
    ops_rng_seed(302);
    enum { N = 3, H = 2, NOPE = 3, ROPE = 2, DV = 4, DK = NOPE + ROPE, DKV = NOPE + DV };
    float *kv = ops_rand(N * H * DKV, 1.0f), *kr = ops_rand(N * ROPE, 1.0f);
    float *k = calloc(N * H * DK, 4), *v = calloc(N * H * DV, 4);
    cpu()->mla_kv_assemble(tensor_3d(k, DT_F32, N, H, DK), tensor_3d(v, DT_F32, N, H, DV),
                           tensor_2d(kv, DT_F32, N, H * DKV), tensor_2d(kr, DT_F32, N, ROPE), NOPE, ROPE, DV);
    for (int n = 0; n < N; n++)
        for (int h = 0; h < H; h++) {
            for (int j = 0; j < NOPE; j++) ASSERT(k[(n * H + h) * DK + j] == kv[n * H * DKV + h * DKV + j]);
            for (int j = 0; j < ROPE; j++) ASSERT(k[(n * H + h) * DK + NOPE + j] == kr[n * ROPE + j]);
            for (int j = 0; j < DV; j++) ASSERT(v[(n * H + h) * DV + j] == kv[n * H * DKV + h * DKV + NOPE + j]);
        }
    // Backward = transpose: <assemble(kv, kr), (gk, gv)> = <kv, dkv> + <kr, dkr>.
    float *gk = ops_rand(N * H * DK, 1.0f), *gv = ops_rand(N * H * DV, 1.0f);
    float *dkv = ops_rand(N * H * DKV, 9.0f), *dkr = ops_rand(N * ROPE, 9.0f); // garbage: must be overwritten
    cpu()->mla_kv_assemble_backward(tensor_2d(dkv, DT_F32, N, H * DKV), tensor_2d(dkr, DT_F32, N, ROPE),
                                    tensor_3d(gk, DT_F32, N, H, DK), tensor_3d(gv, DT_F32, N, H, DV), NOPE, ROPE, DV);
    double lhs = 0.0, rhs = 0.0;
    for (int i = 0; i < N * H * DK; i++) lhs += (double)k[i] * gk[i];
    for (int i = 0; i < N * H * DV; i++) lhs += (double)v[i] * gv[i];
    for (int i = 0; i < N * H * DKV; i++) rhs += (double)kv[i] * dkv[i];
    for (int i = 0; i < N * ROPE; i++) rhs += (double)kr[i] * dkr[i];
    ASSERT_NEAR(lhs, rhs, 1e-5, 1e-6);
    // dk_rope is the sum over heads: token 1, dim 0.
    ASSERT_NEAR(dkr[1 * ROPE + 0], (double)gk[(1 * H + 0) * DK + NOPE] + gk[(1 * H + 1) * DK + NOPE], 1e-6, 0);
}

// ---- attention ----
// (The cpu kernel works in blocks of 64 query rows, strips of 4 rows and 8 keys, head dims padded to multiples of 8;
// the shapes below straddle those sizes.)
typedef struct { int B, T, H, D, DV; double scale, *q, *k, *v, *R; } AttnCtx;

// out (B, T, H, DV), lse (B, H, T): plain softmax over j <= i, in double.
static void ref_attention(double *out, double *lse, const AttnCtx *c) {
    int B = c->B, T = c->T, H = c->H, D = c->D, DV = c->DV;
    double *s = malloc(sizeof(double) * T);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < T; i++) {
                double mx = -INFINITY, sum = 0.0;
                for (int j = 0; j <= i; j++) {
                    double acc = 0.0;
                    for (int x = 0; x < D; x++)
                        acc += c->q[((b * T + i) * H + h) * D + x] * c->k[((b * T + j) * H + h) * D + x];
                    s[j] = acc * c->scale;
                    mx = fmax(mx, s[j]);
                }
                for (int j = 0; j <= i; j++) sum += exp(s[j] - mx);
                if (lse) lse[(b * H + h) * T + i] = mx + log(sum);
                for (int x = 0; x < DV; x++) {
                    double o = 0.0;
                    for (int j = 0; j <= i; j++) o += exp(s[j] - mx) / sum * c->v[((b * T + j) * H + h) * DV + x];
                    out[((b * T + i) * H + h) * DV + x] = o;
                }
            }
    free(s);
}

static double attention_loss(void *p) {
    AttnCtx *c = p;
    int n = c->B * c->T * c->H * c->DV;
    double *o = malloc(sizeof(double) * n), L = 0.0;
    ref_attention(o, NULL, c);
    for (int i = 0; i < n; i++) L += o[i] * c->R[i];
    free(o);
    return L;
}

TEST(ops_attention_forward_backward) {
    ops_rng_seed(303);
    // (B, T, H, D, DV): T = 1, odd sizes, dv != dqk as in MLA.
    // {1, 67, 1, 5, 3}: past the cpu kernel's 64-row query block, ending in a partial block and a partial 4-row strip.
    static const int shapes[][5] = {{1, 1, 1, 3, 2}, {2, 1, 2, 4, 4}, {2, 5, 3, 4, 6}, {1, 7, 2, 5, 3}, {2, 9, 1, 8, 8},
                                    {1, 67, 1, 5, 3}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        int B = shapes[si][0], T = shapes[si][1], H = shapes[si][2], D = shapes[si][3], DV = shapes[si][4];
        int nq = B * T * H * D, nv = B * T * H * DV, nl = B * H * T;
        float scale = 1.0f / sqrtf((float)D);
        float *q = ops_rand(nq, 1.5f), *k = ops_rand(nq, 1.5f), *v = ops_rand(nv, 1.0f), *R = ops_rand(nv, 1.0f);
        float *out = calloc(nv, 4), *lse = calloc(nl, 4);
        float *dq = ops_rand(nq, 9.0f), *dk = ops_rand(nq, 9.0f), *dv = ops_rand(nv, 9.0f); // must be overwritten
        AttnCtx c = {B, T, H, D, DV, scale, ops_to_double(q, nq), ops_to_double(k, nq), ops_to_double(v, nv),
                     ops_to_double(R, nv)};
        double *ow = malloc(sizeof(double) * nv), *lw = malloc(sizeof(double) * nl);
        ref_attention(ow, lw, &c);
        Tensor tq = tensor_4d(q, DT_F32, B, T, H, D), tk = tensor_4d(k, DT_F32, B, T, H, D);
        Tensor tv = tensor_4d(v, DT_F32, B, T, H, DV), to = tensor_4d(out, DT_F32, B, T, H, DV);
        Tensor tl = tensor_3d(lse, DT_F32, B, H, T);
        cpu()->attention_forward(to, tl, tq, tk, tv, scale);
        EXPECT_CLOSE("attention out", out, ow, nv, 1e-5, 1e-6);
        EXPECT_CLOSE("attention lse", lse, lw, nl, 1e-5, 1e-6);
        cpu()->attention_backward(tensor_4d(dq, DT_F32, B, T, H, D), tensor_4d(dk, DT_F32, B, T, H, D),
                                  tensor_4d(dv, DT_F32, B, T, H, DV), tensor_4d(R, DT_F32, B, T, H, DV), tq, tk, tv,
                                  to, tl, scale);
        double *gq = ops_fd_grad(attention_loss, &c, c.q, nq), *gk = ops_fd_grad(attention_loss, &c, c.k, nq);
        double *gv = ops_fd_grad(attention_loss, &c, c.v, nv);
        EXPECT_CLOSE("attention dq", dq, gq, nq, 1e-4, 1e-5);
        EXPECT_CLOSE("attention dk", dk, gk, nq, 1e-4, 1e-5);
        EXPECT_CLOSE("attention dv", dv, gv, nv, 1e-4, 1e-5);
        free(q), free(k), free(v), free(R), free(out), free(lse), free(dq), free(dk), free(dv);
        free(c.q), free(c.k), free(c.v), free(c.R), free(ow), free(lw), free(gq), free(gk), free(gv);
    }
}

// The backward in double from the softmax Jacobian, written independently of the kernel's formulation:
// dv_j = sum_i p_ij g_i;  dp_ij = <g_i, v_j>;  ds_ij = p_ij (dp_ij - sum_l p_il dp_il);
// dq_i = scale sum_j ds_ij k_j;  dk_j = scale sum_i ds_ij q_i. g = c->R is dout. Outputs zeroed here.
static void ref_attention_backward(double *dq, double *dk, double *dv, const AttnCtx *c) {
    int B = c->B, T = c->T, H = c->H, D = c->D, DV = c->DV;
    memset(dq, 0, sizeof(double) * B * T * H * D);
    memset(dk, 0, sizeof(double) * B * T * H * D);
    memset(dv, 0, sizeof(double) * B * T * H * DV);
    double *p = malloc(sizeof(double) * T), *dp = malloc(sizeof(double) * T);
#define AT(x, t, d, dim) ((x) + ((size_t)((b * T + (t)) * H + h) * (dim) + (d)))
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < T; i++) {
                double mx = -INFINITY, sum = 0.0, pdp = 0.0;
                for (int j = 0; j <= i; j++) {
                    double acc = 0.0;
                    for (int x = 0; x < D; x++) acc += *AT(c->q, i, x, D) * *AT(c->k, j, x, D);
                    p[j] = acc * c->scale;
                    mx = fmax(mx, p[j]);
                }
                for (int j = 0; j <= i; j++) sum += (p[j] = exp(p[j] - mx));
                for (int j = 0; j <= i; j++) {
                    p[j] /= sum;
                    double acc = 0.0;
                    for (int x = 0; x < DV; x++) acc += *AT(c->R, i, x, DV) * *AT(c->v, j, x, DV);
                    dp[j] = acc;
                    pdp += p[j] * dp[j];
                }
                for (int j = 0; j <= i; j++) {
                    double ds = p[j] * (dp[j] - pdp) * c->scale;
                    for (int x = 0; x < DV; x++) *AT(dv, j, x, DV) += p[j] * *AT(c->R, i, x, DV);
                    for (int x = 0; x < D; x++) *AT(dq, i, x, D) += ds * *AT(c->k, j, x, D);
                    for (int x = 0; x < D; x++) *AT(dk, j, x, D) += ds * *AT(c->q, i, x, D);
                }
            }
#undef AT
    free(p), free(dp);
}

// Longer sequences than finite differences can afford, against the double forward and backward: several 64-row
// blocks with a partial last one, head dims of tiny.yaml (24, 16) and unpadded ones (9, 5, 33). The last shape has
// scores spread over a range of more than 87, where the kernel's exp flushes to 0 (asserted to occur, so the test
// keeps covering it).
TEST(ops_attention_long_sequences_match_double) {
    ops_rng_seed(304);
    static const int shapes[][5] = {{2, 131, 2, 24, 16}, {1, 200, 1, 33, 5}, {1, 70, 3, 9, 5}};
    static const float amp[] = {1.5f, 1.0f, 7.0f};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        int B = shapes[si][0], T = shapes[si][1], H = shapes[si][2], D = shapes[si][3], DV = shapes[si][4];
        int nq = B * T * H * D, nv = B * T * H * DV, nl = B * H * T;
        float scale = 1.0f / sqrtf((float)D);
        float *q = ops_rand(nq, amp[si]), *k = ops_rand(nq, amp[si]), *v = ops_rand(nv, 1.0f);
        float *R = ops_rand(nv, 1.0f), *out = calloc(nv, 4), *lse = calloc(nl, 4);
        float *dq = ops_rand(nq, 9.0f), *dk = ops_rand(nq, 9.0f), *dv = ops_rand(nv, 9.0f);
        AttnCtx c = {B, T, H, D, DV, scale, ops_to_double(q, nq), ops_to_double(k, nq), ops_to_double(v, nv),
                     ops_to_double(R, nv)};
        double *ow = malloc(sizeof(double) * nv), *lw = malloc(sizeof(double) * nl);
        double *gq = malloc(sizeof(double) * nq), *gk = malloc(sizeof(double) * nq), *gv = malloc(sizeof(double) * nv);
        ref_attention(ow, lw, &c);
        ref_attention_backward(gq, gk, gv, &c);
        if (amp[si] > 5.0f) { // some score is more than 87 below its row's logsumexp
            int underflow = 0;
            for (int b = 0; b < B && !underflow; b++)
                for (int i = 0; i < T && !underflow; i++)
                    for (int j = 0; j <= i && !underflow; j++) {
                        double acc = 0.0;
                        for (int x = 0; x < D; x++) acc += c.q[(b * T + i) * H * D + x] * c.k[(b * T + j) * H * D + x];
                        underflow = acc * scale - lw[b * H * T + i] < -90.0;
                    }
            ASSERT_MSG(underflow, "shape %zu: no score below the exp flush threshold; raise the amplitude", si);
        }
        Tensor tq = tensor_4d(q, DT_F32, B, T, H, D), tk = tensor_4d(k, DT_F32, B, T, H, D);
        Tensor tv = tensor_4d(v, DT_F32, B, T, H, DV), to = tensor_4d(out, DT_F32, B, T, H, DV);
        Tensor tl = tensor_3d(lse, DT_F32, B, H, T);
        cpu()->attention_forward(to, tl, tq, tk, tv, scale);
        // out: scores near 100 (last shape) carry FP32 rounding of ~1e-5 into exp; the old per-row kernel erred
        // as much (2e-6 of the largest output), so the absolute tolerance is 1e-5 of it here.
        EXPECT_CLOSE("attention out", out, ow, nv, 1e-5, 1e-5);
        EXPECT_CLOSE("attention lse", lse, lw, nl, 1e-5, 1e-6);
        cpu()->attention_backward(tensor_4d(dq, DT_F32, B, T, H, D), tensor_4d(dk, DT_F32, B, T, H, D),
                                  tensor_4d(dv, DT_F32, B, T, H, DV), tensor_4d(R, DT_F32, B, T, H, DV), tq, tk, tv,
                                  to, tl, scale);
        EXPECT_CLOSE("attention dq", dq, gq, nq, 1e-4, 1e-5);
        EXPECT_CLOSE("attention dk", dk, gk, nq, 1e-4, 1e-5);
        EXPECT_CLOSE("attention dv", dv, gv, nv, 1e-4, 1e-5);
        free(q), free(k), free(v), free(R), free(out), free(lse), free(dq), free(dk), free(dv);
        free(c.q), free(c.k), free(c.v), free(c.R), free(ow), free(lw), free(gq), free(gk), free(gv);
    }
}

// Bit-identical results for 1, 2 and 3 threads (and on a repeat): each (b, h) pair is one thread's whole job, so the
// summation order cannot depend on the thread count.
TEST(ops_attention_same_bits_for_any_thread_count) {
    ops_rng_seed(305);
    enum { B = 2, T = 77, H = 3, D = 24, DV = 16, NQ = B * T * H * D, NV = B * T * H * DV, NL = B * H * T };
    float *q = ops_rand(NQ, 1.5f), *k = ops_rand(NQ, 1.5f), *v = ops_rand(NV, 1.0f), *g = ops_rand(NV, 1.0f);
    Tensor tq = tensor_4d(q, DT_F32, B, T, H, D), tk = tensor_4d(k, DT_F32, B, T, H, D);
    Tensor tv = tensor_4d(v, DT_F32, B, T, H, DV), tg = tensor_4d(g, DT_F32, B, T, H, DV);
    const float scale = 0.2f;
    float *res[4];
    const int threads[4] = {1, 2, 3, 2};
    for (int r = 0; r < 4; r++) {
        omp_set_num_threads(threads[r]);
        float *o = res[r] = calloc(2 * NV + NL + 2 * NQ + NV, 4), *l = o + NV, *dq = l + NL, *dk = dq + NQ;
        float *dv = dk + NQ;
        Tensor to = tensor_4d(o, DT_F32, B, T, H, DV), tl = tensor_3d(l, DT_F32, B, H, T);
        cpu()->attention_forward(to, tl, tq, tk, tv, scale);
        cpu()->attention_backward(tensor_4d(dq, DT_F32, B, T, H, D), tensor_4d(dk, DT_F32, B, T, H, D),
                                  tensor_4d(dv, DT_F32, B, T, H, DV), tg, tq, tk, tv, to, tl, scale);
    }
    for (int r = 1; r < 4; r++)
        ASSERT_MSG(memcmp(res[0], res[r], sizeof(float) * (2 * NV + NL + 2 * NQ)) == 0,
                   "%d threads differ from 1 thread", threads[r]);
    for (int r = 0; r < 4; r++) free(res[r]);
    free(q), free(k), free(v), free(g);
}

static void die_attention_bad_lse(void *unused) {
    (void)unused;
    static float q[1 * 4 * 2 * 3], o[1 * 4 * 2 * 3], l[1 * 4 * 2];
    backend_get("cpu")->attention_forward(tensor_4d(o, DT_F32, 1, 4, 2, 3), tensor_3d(l, DT_F32, 1, 4, 2),
                                          tensor_4d(q, DT_F32, 1, 4, 2, 3), tensor_4d(q, DT_F32, 1, 4, 2, 3),
                                          tensor_4d(q, DT_F32, 1, 4, 2, 3), 1.0f);
}
static void die_rope_partial_sequence(void *unused) {
    (void)unused;
    static float x[5 * 4], c[4 * 2], s[4 * 2];
    backend_get("cpu")->rope_apply(tensor_2d(x, DT_F32, 5, 4), 0, 4, tensor_2d(c, DT_F32, 4, 2),
                                   tensor_2d(s, DT_F32, 4, 2), 4, 0);
}

TEST(ops_attention_bad_inputs_die) {
    EXPECT_DIE(die_attention_bad_lse, NULL, "attention_forward: lse (1, 4, 2) and q (1, 4, 2, 3) disagree on H");
    EXPECT_DIE(die_rope_partial_sequence, NULL, "rope_apply: 5 tokens are not a whole number of sequences of T = 4");
}
