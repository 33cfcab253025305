// cpu RMSNorm, SwiGLU, axpy, copy_cols, embedding and cross-entropy against double-precision references written
// here, and their backward against central finite differences of those references (loss = sum(out * R)).
#include "kernels/ops.h"
#include "tests/ops_testutil.h"
#include "tests/test.h"

static const Backend *cpu(void) { return backend_get("cpu"); }

// ---- RMSNorm ----
typedef struct { int M, d; double eps, *x, *w, *R; } NormCtx;

static void ref_rmsnorm(double *y, double *rstd, const NormCtx *c) {
    for (int m = 0; m < c->M; m++) {
        double ss = 0.0;
        for (int j = 0; j < c->d; j++) ss += c->x[m * c->d + j] * c->x[m * c->d + j];
        double r = 1.0 / sqrt(ss / c->d + c->eps);
        if (rstd) rstd[m] = r;
        for (int j = 0; j < c->d; j++) y[m * c->d + j] = c->x[m * c->d + j] * r * c->w[j];
    }
}

static double rmsnorm_loss(void *p) {
    NormCtx *c = p;
    double *y = malloc(sizeof(double) * c->M * c->d), L = 0.0;
    ref_rmsnorm(y, NULL, c);
    for (int i = 0; i < c->M * c->d; i++) L += y[i] * c->R[i];
    free(y);
    return L;
}

TEST(ops_rmsnorm_forward_backward) {
    ops_rng_seed(201);
    static const int shapes[][2] = {{1, 3}, {1, 8}, {3, 5}, {4, 13}, {7, 64}, {2, 70}}; // d = 1 has a ~0 dinp
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int M = shapes[s][0], d = shapes[s][1];
        float eps = 1e-6f;
        float *x = ops_rand(M * d, 2.0f), *w = ops_rand(d, 1.5f), *R = ops_rand(M * d, 1.0f);
        float *y = calloc(M * d, 4), *rstd = calloc(M, 4), *dx0 = ops_rand(M * d, 1.0f), *dw0 = ops_rand(d, 1.0f);
        float *dx = ops_copy_f(dx0, M * d), *dw = ops_copy_f(dw0, d);
        NormCtx c = {M, d, eps, ops_to_double(x, M * d), ops_to_double(w, d), ops_to_double(R, M * d)};
        double *yw = malloc(sizeof(double) * M * d), *rw = malloc(sizeof(double) * M);
        ref_rmsnorm(yw, rw, &c);
        cpu()->rmsnorm_forward(tensor_2d(y, DT_F32, M, d), tensor_1d(rstd, DT_F32, M), tensor_2d(x, DT_F32, M, d),
                               tensor_1d(w, DT_F32, d), eps);
        EXPECT_CLOSE("rmsnorm out", y, yw, M * d, 1e-5, 1e-6);
        EXPECT_CLOSE("rmsnorm rstd", rstd, rw, M, 1e-5, 0);
        double *gx = ops_fd_grad(rmsnorm_loss, &c, c.x, M * d), *gw = ops_fd_grad(rmsnorm_loss, &c, c.w, d);
        cpu()->rmsnorm_backward(tensor_2d(dx, DT_F32, M, d), tensor_1d(dw, DT_F32, d), tensor_2d(R, DT_F32, M, d),
                                tensor_2d(x, DT_F32, M, d), tensor_1d(w, DT_F32, d),
                                tensor_1d(rstd, DT_F32, M), 0, ops_none(DT_BF16));
        for (int j = 0; j < d; j++) gw[j] += dw0[j];
        EXPECT_CLOSE("rmsnorm dinp (overwrite)", dx, gx, M * d, 1e-4, 1e-5);
        EXPECT_CLOSE("rmsnorm dw (accumulated)", dw, gw, d, 1e-4, 1e-5);
        // accumulate_dinp = 1 adds onto what is there.
        memcpy(dx, dx0, sizeof(float) * M * d);
        cpu()->rmsnorm_backward(tensor_2d(dx, DT_F32, M, d), tensor_1d(NULL, DT_F32, d), tensor_2d(R, DT_F32, M, d),
                                tensor_2d(x, DT_F32, M, d), tensor_1d(w, DT_F32, d),
                                tensor_1d(rstd, DT_F32, M), 1, ops_none(DT_BF16));
        for (int i = 0; i < M * d; i++) gx[i] += dx0[i];
        EXPECT_CLOSE("rmsnorm dinp (accumulated)", dx, gx, M * d, 1e-4, 1e-5);
        free(x), free(w), free(R), free(y), free(rstd), free(dx0), free(dw0), free(dx), free(dw);
        free(c.x), free(c.w), free(c.R), free(yw), free(rw), free(gx), free(gw);
    }
}

// ---- SwiGLU ----
typedef struct { int n; double *g, *u, *R; } SwigluCtx;

static double silu_d(double g) { return g / (1.0 + exp(-g)); }

static double swiglu_loss(void *p) {
    SwigluCtx *c = p;
    double L = 0.0;
    for (int i = 0; i < c->n; i++) L += silu_d(c->g[i]) * c->u[i] * c->R[i];
    return L;
}

TEST(ops_swiglu_forward_backward) {
    ops_rng_seed(202);
    static const int shapes[][2] = {{1, 1}, {3, 7}, {5, 16}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int M = shapes[s][0], I = shapes[s][1], n = M * I;
        float *g = ops_rand(n, 4.0f), *u = ops_rand(n, 2.0f), *R = ops_rand(n, 1.0f);
        float *y = calloc(n, 4), *dg = calloc(n, 4), *du = calloc(n, 4);
        SwigluCtx c = {n, ops_to_double(g, n), ops_to_double(u, n), ops_to_double(R, n)};
        double *yw = malloc(sizeof(double) * n);
        for (int i = 0; i < n; i++) yw[i] = silu_d(c.g[i]) * c.u[i];
        cpu()->swiglu_forward(tensor_2d(y, DT_F32, M, I), tensor_2d(g, DT_F32, M, I), tensor_2d(u, DT_F32, M, I));
        EXPECT_CLOSE("swiglu out", y, yw, n, 1e-5, 1e-7);
        cpu()->swiglu_backward(tensor_2d(dg, DT_F32, M, I), tensor_2d(du, DT_F32, M, I), tensor_2d(R, DT_F32, M, I),
                               tensor_2d(g, DT_F32, M, I), tensor_2d(u, DT_F32, M, I));
        double *gg = ops_fd_grad(swiglu_loss, &c, c.g, n), *gu = ops_fd_grad(swiglu_loss, &c, c.u, n);
        EXPECT_CLOSE("swiglu dgate", dg, gg, n, 1e-4, 1e-6);
        EXPECT_CLOSE("swiglu dup", du, gu, n, 1e-4, 1e-6);
        free(g), free(u), free(R), free(y), free(dg), free(du), free(c.g), free(c.u), free(c.R), free(yw), free(gg),
            free(gu);
    }
}

TEST(ops_axpy_and_copy_cols) {
    // axpy: y = [1, 2, 3] + 0.5 * [4, -2, 8] = [3, 1, 7] (exact in FP32)
    float y[3] = {1, 2, 3}, x[3] = {4, -2, 8};
    cpu()->axpy(tensor_1d(y, DT_F32, 3), tensor_1d(x, DT_F32, 3), 0.5f);
    ASSERT(y[0] == 3.0f && y[1] == 1.0f && y[2] == 7.0f);
    // copy_cols: dst (2, 4), src (2, 3); copy src cols [1, 3) into dst cols [2, 4), then accumulate src col 0 into
    // dst col 0.
    float dst[8] = {0, 0, 0, 0, 10, 10, 10, 10}, src[6] = {1, 2, 3, 4, 5, 6};
    cpu()->copy_cols(tensor_2d(dst, DT_F32, 2, 4), 2, tensor_2d(src, DT_F32, 2, 3), 1, 2, 0);
    cpu()->copy_cols(tensor_2d(dst, DT_F32, 2, 4), 0, tensor_2d(src, DT_F32, 2, 3), 0, 1, 1);
    float want[8] = {1, 0, 2, 3, 14, 10, 5, 6};
    for (int i = 0; i < 8; i++) ASSERT_NEAR(dst[i], want[i], 0, 0);
}

// ---- embedding ----
TEST(ops_embedding_forward_backward) {
    ops_rng_seed(203);
    enum { V = 6, d = 5, N = 7 };
    int32_t ids[N] = {3, 0, 3, 5, 1, 3, 0}; // repeated ids: their gradients must add up
    float *table = ops_rand(V * d, 1.0f), *out = calloc(N * d, 4), *g = ops_rand(N * d, 1.0f);
    float *dt0 = ops_rand(V * d, 1.0f), *dt = ops_copy_f(dt0, V * d);
    cpu()->embedding_forward(tensor_2d(out, DT_F32, N, d), tensor_1d(ids, DT_I32, N), tensor_2d(table, DT_F32, V, d));
    for (int n = 0; n < N; n++)
        for (int j = 0; j < d; j++) ASSERT(out[n * d + j] == table[ids[n] * d + j]);
    cpu()->embedding_backward(tensor_2d(dt, DT_F32, V, d), tensor_2d(g, DT_F32, N, d), tensor_1d(ids, DT_I32, N));
    double want[V * d];
    for (int i = 0; i < V * d; i++) want[i] = dt0[i];
    for (int n = 0; n < N; n++)
        for (int j = 0; j < d; j++) want[ids[n] * d + j] += g[n * d + j];
    EXPECT_CLOSE("dtable", dt, want, V * d, 1e-6, 0);
}

static void die_embedding_bad_id(void *unused) {
    (void)unused;
    static float table[4 * 2], out[2 * 2];
    static int32_t ids[2] = {1, 4};
    backend_get("cpu")->embedding_forward(tensor_2d(out, DT_F32, 2, 2), tensor_1d(ids, DT_I32, 2),
                                          tensor_2d(table, DT_F32, 4, 2));
}

// ---- cross-entropy ----
typedef struct { int N, V; const int32_t *tg; double *x; double scale; } CeCtx;

static double ce_loss(void *p) {
    CeCtx *c = p;
    double L = 0.0;
    for (int n = 0; n < c->N; n++) {
        double mx = -INFINITY, s = 0.0;
        for (int j = 0; j < c->V; j++) mx = fmax(mx, c->x[n * c->V + j]);
        for (int j = 0; j < c->V; j++) s += exp(c->x[n * c->V + j] - mx);
        L += mx + log(s) - c->x[n * c->V + c->tg[n]];
    }
    return L * c->scale;
}

TEST(ops_cross_entropy_forward_backward) {
    ops_rng_seed(204);
    static const int shapes[][2] = {{1, 2}, {3, 7}, {5, 33}, {2, 130}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int N = shapes[s][0], V = shapes[s][1];
        float *x = ops_rand(N * V, 5.0f), *loss = calloc(N, 4), *dx = calloc(N * V, 4);
        int32_t *tg = malloc(sizeof(int32_t) * N);
        for (int n = 0; n < N; n++) tg[n] = (int32_t)(ops_rng_u64() % (uint64_t)V);
        const float gs = 0.25f;
        CeCtx c = {N, V, tg, ops_to_double(x, N * V), 1.0};
        double *lw = malloc(sizeof(double) * N);
        for (int n = 0; n < N; n++) {
            CeCtx one = {1, V, tg + n, c.x + n * V, 1.0};
            lw[n] = ce_loss(&one);
        }
        cpu()->cross_entropy_forward_backward(tensor_1d(loss, DT_F32, N), tensor_2d(dx, DT_F32, N, V),
                                              tensor_2d(x, DT_F32, N, V), tensor_1d(tg, DT_I32, N), gs);
        EXPECT_CLOSE("ce losses", loss, lw, N, 1e-5, 1e-7);
        c.scale = gs;
        double *gx = ops_fd_grad(ce_loss, &c, c.x, N * V);
        EXPECT_CLOSE("ce dlogits", dx, gx, N * V, 1e-4, 1e-5);
        // dlogits aliasing logits gives the same numbers.
        float *xa = ops_copy_f(x, N * V);
        cpu()->cross_entropy_forward_backward(tensor_1d(loss, DT_F32, N), tensor_2d(xa, DT_F32, N, V),
                                              tensor_2d(xa, DT_F32, N, V), tensor_1d(tg, DT_I32, N), gs);
        ASSERT(memcmp(xa, dx, sizeof(float) * N * V) == 0);
        EXPECT_CLOSE("ce losses (aliased)", loss, lw, N, 1e-5, 1e-7);
        free(x), free(loss), free(dx), free(tg), free(c.x), free(lw), free(gx), free(xa);
    }
}

// A hand-worked row: logits [0, ln 3] target 1: softmax [1/4, 3/4], loss = -ln(3/4) = ln(4/3),
// dlogits = [1/4, 3/4 - 1] = [0.25, -0.25].
TEST(ops_cross_entropy_hand_example) {
    float x[2] = {0.0f, logf(3.0f)}, loss[1], dx[2];
    int32_t tg[1] = {1};
    cpu()->cross_entropy_forward_backward(tensor_1d(loss, DT_F32, 1), tensor_2d(dx, DT_F32, 1, 2),
                                          tensor_2d(x, DT_F32, 1, 2), tensor_1d(tg, DT_I32, 1), 1.0f);
    ASSERT_NEAR(loss[0], log(4.0 / 3.0), 1e-6, 0);
    ASSERT_NEAR(dx[0], 0.25, 1e-6, 0);
    ASSERT_NEAR(dx[1], -0.25, 1e-6, 0);
}

static void die_ce_bad_target(void *unused) {
    (void)unused;
    static float x[2 * 3], l[2], dx[2 * 3];
    static int32_t tg[2] = {0, 3};
    backend_get("cpu")->cross_entropy_forward_backward(tensor_1d(l, DT_F32, 2), tensor_2d(dx, DT_F32, 2, 3),
                                                       tensor_2d(x, DT_F32, 2, 3), tensor_1d(tg, DT_I32, 2), 1.0f);
}
static void die_rmsnorm_bad_w(void *unused) {
    (void)unused;
    static float x[2 * 4], y[2 * 4], r[2], w[3];
    backend_get("cpu")->rmsnorm_forward(tensor_2d(y, DT_F32, 2, 4), tensor_1d(r, DT_F32, 2),
                                        tensor_2d(x, DT_F32, 2, 4), tensor_1d(w, DT_F32, 3), 1e-6f);
}
static void die_copy_cols_out_of_range(void *unused) {
    (void)unused;
    static float d[2 * 4], s[2 * 3];
    backend_get("cpu")->copy_cols(tensor_2d(d, DT_F32, 2, 4), 3, tensor_2d(s, DT_F32, 2, 3), 0, 2, 0);
}

TEST(ops_norm_loss_bad_inputs_die) {
    EXPECT_DIE(die_embedding_bad_id, NULL, "embedding_forward: ids[1] = 4 is outside the table's 4 rows");
    EXPECT_DIE(die_ce_bad_target, NULL, "targets[1] = 3 is outside the vocabulary of 3");
    EXPECT_DIE(die_rmsnorm_bad_w, NULL, "rmsnorm_forward: inp (2, 4) and w (3) disagree on d");
    EXPECT_DIE(die_copy_cols_out_of_range, NULL, "copy_cols: columns out of range");
}

// convert: F32 -> BF16 rounds to nearest even (hand-picked bit patterns), BF16 -> F32 is exact, and the four dtype
// pairs agree with the host helpers on random values.
TEST(ops_convert_rounds_to_nearest_even) {
    const Backend *be = backend_get("cpu");
    // 1 + 2^-8 is halfway between BF16 1.0 (0x3F80) and 1 + 2^-7 (0x3F81): ties to the even 0x3F80; 1 + 3 * 2^-8 is
    // halfway between 0x3F81 and 0x3F82: ties to the even 0x3F82; 1 + 2^-8 + 2^-20 is above halfway: 0x3F81.
    float src[4] = {1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, 1.0f + 0x1p-8f + 0x1p-20f, -2.5f};
    const uint16_t want[4] = {0x3F80, 0x3F82, 0x3F81, 0xC020};
    uint16_t got[4];
    be->convert(tensor_1d(got, DT_BF16, 4), tensor_1d(src, DT_F32, 4));
    for (int i = 0; i < 4; i++) ASSERT_MSG(got[i] == want[i], "element %d: 0x%04X, expected 0x%04X", i, got[i], want[i]);
    float back[4];
    be->convert(tensor_2d(back, DT_F32, 2, 2), tensor_1d(got, DT_BF16, 4));   // any shapes of equal size
    ASSERT(back[0] == 1.0f && back[1] == 1.0f + 0x1p-6f && back[2] == 1.0f + 0x1p-7f && back[3] == -2.5f);
    float f2[4];
    be->convert(tensor_1d(f2, DT_F32, 4), tensor_1d(src, DT_F32, 4));
    ASSERT(memcmp(f2, src, sizeof src) == 0);
}

// rmsnorm_backward's dinp_lowp: the BF16 bits of convert(dinp) after the same op without it, overwriting and
// accumulating, dw or not; dinp itself unchanged by asking for the copy. Sizes on both sides of the parallel bound.
TEST(ops_rmsnorm_backward_lowp_is_convert_of_dinp) {
    ops_rng_seed(207);
    static const int shapes[][2] = {{1, 1}, {3, 5}, {7, 64}, {300, 257}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int M = shapes[s][0], d = shapes[s][1], n = M * d;
        float *x = ops_rand(n, 2.0f), *w = ops_rand(d, 1.5f), *g = ops_rand(n, 1.0f), *dx0 = ops_rand(n, 1.0f);
        float *y = malloc(sizeof(float) * n), *rstd = malloc(sizeof(float) * M);
        cpu()->rmsnorm_forward(tensor_2d(y, DT_F32, M, d), tensor_1d(rstd, DT_F32, M), tensor_2d(x, DT_F32, M, d),
                               tensor_1d(w, DT_F32, d), 1e-6f);
        for (int acc = 0; acc <= 1; acc++)
            for (int with_dw = 0; with_dw <= 1; with_dw++) {
                float *ref = ops_copy_f(dx0, n), *got = ops_copy_f(dx0, n), *dw1 = calloc(d, 4), *dw2 = calloc(d, 4);
                uint16_t *lp = malloc(2 * (size_t)n), *conv = malloc(2 * (size_t)n);
                memset(lp, 0xFF, 2 * (size_t)n);
                Tensor tg = tensor_2d(g, DT_F32, M, d), tx = tensor_2d(x, DT_F32, M, d), tw = tensor_1d(w, DT_F32, d);
                Tensor tr = tensor_1d(rstd, DT_F32, M);
                cpu()->rmsnorm_backward(tensor_2d(ref, DT_F32, M, d), tensor_1d(with_dw ? dw1 : NULL, DT_F32, d), tg,
                                        tx, tw, tr, acc, ops_none(DT_BF16));
                cpu()->convert(tensor_2d(conv, DT_BF16, M, d), tensor_2d(ref, DT_F32, M, d));
                cpu()->rmsnorm_backward(tensor_2d(got, DT_F32, M, d), tensor_1d(with_dw ? dw2 : NULL, DT_F32, d), tg,
                                        tx, tw, tr, acc, tensor_2d(lp, DT_BF16, M, d));
                ASSERT_MSG(memcmp(got, ref, sizeof(float) * n) == 0, "dinp changed by dinp_lowp (%dx%d acc %d)", M, d,
                           acc);
                ASSERT_MSG(memcmp(lp, conv, 2 * (size_t)n) == 0, "dinp_lowp is not convert(dinp) (%dx%d acc %d)", M,
                           d, acc);
                ASSERT(memcmp(dw1, dw2, sizeof(float) * d) == 0);
                free(ref), free(got), free(dw1), free(dw2), free(lp), free(conv);
            }
        free(x), free(w), free(g), free(dx0), free(y), free(rstd);
    }
}

// Hand-derived rounding: with dout = 0 the accumulating backward adds exactly 0, so dinp keeps its values and
// dinp_lowp is their BF16: 1 + 2^-8 ties to the even 0x3F80, 1 + 3 * 2^-8 to the even 0x3F82, 1 + 2^-8 + 2^-20
// rounds up to 0x3F81, -2.5 is 0xC020.
TEST(ops_rmsnorm_backward_lowp_rounds_to_nearest_even) {
    float dx[4] = {1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, 1.0f + 0x1p-8f + 0x1p-20f, -2.5f};
    float x[4] = {0.5f, -1.0f, 2.0f, 0.25f}, w[2] = {1.0f, 3.0f}, g[4] = {0}, rstd[2] = {1.5f, 0.75f};
    const float keep[4] = {dx[0], dx[1], dx[2], dx[3]};
    const uint16_t want[4] = {0x3F80, 0x3F82, 0x3F81, 0xC020};
    uint16_t lp[4] = {0};
    cpu()->rmsnorm_backward(tensor_2d(dx, DT_F32, 2, 2), ops_none(DT_F32), tensor_2d(g, DT_F32, 2, 2),
                            tensor_2d(x, DT_F32, 2, 2), tensor_1d(w, DT_F32, 2), tensor_1d(rstd, DT_F32, 2), 1,
                            tensor_2d(lp, DT_BF16, 2, 2));
    for (int i = 0; i < 4; i++) {
        ASSERT_MSG(dx[i] == keep[i], "dinp[%d] changed: %.9g", i, (double)dx[i]);
        ASSERT_MSG(lp[i] == want[i], "dinp_lowp[%d]: 0x%04X, expected 0x%04X", i, lp[i], want[i]);
    }
}

static float nb_x[2 * 4], nb_g[2 * 4], nb_dx[2 * 4], nb_w[4], nb_r[2];
static uint16_t nb_lp[2 * 5];
static void norm_bwd_lowp(Tensor dinp, Tensor lowp) {
    cpu()->rmsnorm_backward(dinp, ops_none(DT_F32), tensor_2d(nb_g, DT_F32, 2, 4), tensor_2d(nb_x, DT_F32, 2, 4),
                            tensor_1d(nb_w, DT_F32, 4), tensor_1d(nb_r, DT_F32, 2), 0, lowp);
}
static void die_lowp_f32(void *u) {
    (void)u;
    norm_bwd_lowp(tensor_2d(nb_dx, DT_F32, 2, 4), tensor_2d(nb_lp, DT_F32, 2, 4));
}
static void die_lowp_size(void *u) {
    (void)u;
    norm_bwd_lowp(tensor_2d(nb_dx, DT_F32, 2, 4), tensor_2d(nb_lp, DT_BF16, 2, 5));
}
static void die_lowp_no_dinp(void *u) {
    (void)u;
    norm_bwd_lowp(tensor_2d(NULL, DT_F32, 2, 4), tensor_2d(nb_lp, DT_BF16, 2, 4));
}
static void die_lowp_aliases_dinp(void *u) {
    (void)u;
    norm_bwd_lowp(tensor_2d(nb_dx, DT_F32, 2, 4), tensor_2d(nb_dx, DT_BF16, 2, 4));
}
static void die_lowp_overlaps_dinp(void *u) {
    (void)u;
    norm_bwd_lowp(tensor_2d(nb_dx, DT_F32, 2, 4), tensor_2d(nb_dx + 3, DT_BF16, 2, 4));
}

TEST(ops_rmsnorm_backward_lowp_bad_inputs_die) {
    EXPECT_DIE(die_lowp_f32, NULL, "rmsnorm_backward: dinp_lowp (2, 4) is f32, expected bf16");
    EXPECT_DIE(die_lowp_size, NULL, "rmsnorm_backward: dinp_lowp (2, 5) and dinp (2, 4) disagree on size (10 vs 8)");
    EXPECT_DIE(die_lowp_no_dinp, NULL, "rmsnorm_backward: dinp_lowp is given but dinp is not");
    EXPECT_DIE(die_lowp_aliases_dinp, NULL, "rmsnorm_backward: dinp_lowp (2, 4) is dinp (2, 4)'s memory");
    EXPECT_DIE(die_lowp_overlaps_dinp, NULL,
               "rmsnorm_backward: dinp_lowp (2, 4) and dinp (2, 4) overlap without being the same tensor");
}
