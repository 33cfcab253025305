// cpu matmul and grouped matmul against a naive double-precision triple loop, and their backward against central
// finite differences of that double forward (loss = sum(out * R)).
#include "kernels/ops.h"
#include "tests/ops_testutil.h"
#include "tests/test.h"

#include <omp.h>

static const Backend *cpu(void) { return backend_get("cpu"); }

// out (M, N) = inp (M, K) @ w (N, K)^T in double.
static void ref_matmul(double *out, const double *x, const double *w, int M, int N, int K) {
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double acc = 0.0;
            for (int k = 0; k < K; k++) acc += x[m * K + k] * w[n * K + k];
            out[m * N + n] = acc;
        }
}

TEST(ops_matmul_forward_matches_double) {
    ops_rng_seed(101);
    // Shapes: degenerate, odd, T=1-like single rows, and ones that cross the blocked kernel's tile edges.
    static const int shapes[][3] = {{1, 1, 1}, {1, 7, 5}, {3, 5, 7}, {8, 48, 64}, {13, 33, 17}, {65, 70, 131},
                                    {2, 129, 3}, {100, 1, 40}, {7, 70, 600}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
        float *x = ops_rand((int64_t)M * K, 1.0f), *w = ops_rand((int64_t)N * K, 1.0f);
        float *out = ops_rand((int64_t)M * N, 1.0f), *pre = ops_copy_f(out, (int64_t)M * N);
        double *xd = ops_to_double(x, (int64_t)M * K), *wd = ops_to_double(w, (int64_t)N * K);
        double *want = malloc(sizeof(double) * M * N);
        ref_matmul(want, xd, wd, M, N, K);
        cpu()->matmul_forward(tensor_2d(out, DT_F32, M, N), tensor_2d(x, DT_F32, M, K), tensor_2d(w, DT_F32, N, K), 0);
        EXPECT_CLOSE("matmul out", out, want, (int64_t)M * N, 1e-5, 1e-6);
        // accumulate = 1 adds onto what was there
        memcpy(out, pre, sizeof(float) * M * N);
        cpu()->matmul_forward(tensor_2d(out, DT_F32, M, N), tensor_2d(x, DT_F32, M, K), tensor_2d(w, DT_F32, N, K), 1);
        for (int i = 0; i < M * N; i++) want[i] += pre[i];
        EXPECT_CLOSE("matmul out (accumulate)", out, want, (int64_t)M * N, 1e-5, 1e-6);
        free(x), free(w), free(out), free(pre), free(xd), free(wd), free(want);
    }
}

// A (B, T, K) activation is accepted where (M, K) is documented (leading dimensions flatten).
TEST(ops_matmul_accepts_3d_activations) {
    ops_rng_seed(102);
    int B = 2, T = 3, K = 5, N = 4;
    float *x = ops_rand(B * T * K, 1.0f), *w = ops_rand(N * K, 1.0f), *o3 = calloc(B * T * N, 4), *o2 = calloc(B * T * N, 4);
    cpu()->matmul_forward(tensor_3d(o3, DT_F32, B, T, N), tensor_3d(x, DT_F32, B, T, K), tensor_2d(w, DT_F32, N, K), 0);
    cpu()->matmul_forward(tensor_2d(o2, DT_F32, B * T, N), tensor_2d(x, DT_F32, B * T, K), tensor_2d(w, DT_F32, N, K), 0);
    ASSERT(memcmp(o3, o2, sizeof(float) * B * T * N) == 0);
}

// Threads own whole output rows and sum in a fixed order: 1 and 3 threads give bit-identical results.
TEST(ops_matmul_independent_of_thread_count) {
    ops_rng_seed(106);
    int M = 45, N = 37, K = 300;
    float *x = ops_rand(M * K, 1.0f), *w = ops_rand(N * K, 1.0f), *g = ops_rand(M * N, 1.0f);
    float *o[2], *dx[2], *dw[2];
    for (int r = 0; r < 2; r++) {
        omp_set_num_threads(r ? 3 : 1);
        o[r] = calloc(M * N, 4), dx[r] = calloc(M * K, 4), dw[r] = calloc(N * K, 4);
        cpu()->matmul_forward(tensor_2d(o[r], DT_F32, M, N), tensor_2d(x, DT_F32, M, K), tensor_2d(w, DT_F32, N, K), 0);
        cpu()->matmul_backward(tensor_2d(dx[r], DT_F32, M, K), tensor_2d(dw[r], DT_F32, N, K), tensor_2d(g, DT_F32, M, N),
                               tensor_2d(x, DT_F32, M, K), tensor_2d(w, DT_F32, N, K), 0);
    }
    ASSERT(memcmp(o[0], o[1], sizeof(float) * M * N) == 0);
    ASSERT(memcmp(dx[0], dx[1], sizeof(float) * M * K) == 0);
    ASSERT(memcmp(dw[0], dw[1], sizeof(float) * N * K) == 0);
}

typedef struct { int M, N, K; double *x, *w, *R; } MatmulCtx;

static double matmul_loss(void *p) {
    MatmulCtx *c = p;
    double L = 0.0;
    for (int m = 0; m < c->M; m++)
        for (int n = 0; n < c->N; n++) {
            double acc = 0.0;
            for (int k = 0; k < c->K; k++) acc += c->x[m * c->K + k] * c->w[n * c->K + k];
            L += acc * c->R[m * c->N + n];
        }
    return L;
}

TEST(ops_matmul_backward_matches_finite_differences) {
    ops_rng_seed(103);
    static const int shapes[][3] = {{1, 1, 1}, {1, 4, 9}, {3, 5, 7}, {6, 9, 5}, {9, 17, 12}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
        float *x = ops_rand(M * K, 1.0f), *w = ops_rand(N * K, 1.0f), *R = ops_rand(M * N, 1.0f);
        float *dx0 = ops_rand(M * K, 1.0f), *dw0 = ops_rand(N * K, 1.0f);
        float *dx = ops_copy_f(dx0, M * K), *dw = ops_copy_f(dw0, N * K);
        MatmulCtx c = {M, N, K, ops_to_double(x, M * K), ops_to_double(w, N * K), ops_to_double(R, M * N)};
        double *gx = ops_fd_grad(matmul_loss, &c, c.x, M * K), *gw = ops_fd_grad(matmul_loss, &c, c.w, N * K);
        // dinp accumulates onto dx0 (flag 1); dw always accumulates onto dw0.
        cpu()->matmul_backward(tensor_2d(dx, DT_F32, M, K), tensor_2d(dw, DT_F32, N, K), tensor_2d(R, DT_F32, M, N),
                               tensor_2d(x, DT_F32, M, K), tensor_2d(w, DT_F32, N, K), 1);
        for (int i = 0; i < M * K; i++) gx[i] += dx0[i];
        for (int i = 0; i < N * K; i++) gw[i] += dw0[i];
        EXPECT_CLOSE("dinp (accumulated)", dx, gx, M * K, 1e-4, 1e-5);
        EXPECT_CLOSE("dw (accumulated)", dw, gw, N * K, 1e-4, 1e-5);
        // dinp overwrite (flag 0), dw skipped (NULL): dw must stay untouched
        float *dw_before = ops_copy_f(dw, N * K);
        cpu()->matmul_backward(tensor_2d(dx, DT_F32, M, K), tensor_2d(NULL, DT_F32, N, K), tensor_2d(R, DT_F32, M, N),
                               tensor_2d(x, DT_F32, M, K), tensor_2d(w, DT_F32, N, K), 0);
        for (int i = 0; i < M * K; i++) gx[i] -= dx0[i];
        EXPECT_CLOSE("dinp (overwrite)", dx, gx, M * K, 1e-4, 1e-5);
        ASSERT(memcmp(dw_before, dw, sizeof(float) * N * K) == 0);
        free(x), free(w), free(R), free(dx0), free(dw0), free(dx), free(dw), free(dw_before), free(gx), free(gw);
        free(c.x), free(c.w), free(c.R);
    }
}

// Larger shapes (where finite differences would be slow): the backward against the exact double products
// dinp = R @ w and dw = R^T @ inp.
TEST(ops_matmul_backward_matches_double_products) {
    ops_rng_seed(104);
    // Includes sums longer than the kernel's 256-term blocks (K 270 for dinp's N 300, dw's M 300) and outputs wider
    // than its 64-column panels.
    static const int shapes[][3] = {{37, 70, 45}, {64, 64, 64}, {5, 130, 67}, {5, 300, 270}, {300, 9, 11}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
        float *x = ops_rand(M * K, 1.0f), *w = ops_rand(N * K, 1.0f), *R = ops_rand(M * N, 1.0f);
        float *dx = calloc(M * K, 4), *dw = calloc(N * K, 4);
        double *gx = calloc(M * K, 8), *gw = calloc(N * K, 8);
        for (int m = 0; m < M; m++)
            for (int n = 0; n < N; n++)
                for (int k = 0; k < K; k++) {
                    gx[m * K + k] += (double)R[m * N + n] * w[n * K + k];
                    gw[n * K + k] += (double)R[m * N + n] * x[m * K + k];
                }
        cpu()->matmul_backward(tensor_2d(dx, DT_F32, M, K), tensor_2d(dw, DT_F32, N, K), tensor_2d(R, DT_F32, M, N),
                               tensor_2d(x, DT_F32, M, K), tensor_2d(w, DT_F32, N, K), 0);
        EXPECT_CLOSE("dinp", dx, gx, M * K, 1e-5, 1e-6);
        EXPECT_CLOSE("dw", dw, gw, N * K, 1e-5, 1e-6);
        free(x), free(w), free(R), free(dx), free(dw), free(gx), free(gw);
    }
}

typedef struct { int E, N, K; const int32_t *off; double *x, *w, *R; } GroupedCtx;

static double grouped_loss(void *p) {
    GroupedCtx *c = p;
    double L = 0.0;
    for (int e = 0; e < c->E; e++)
        for (int r = c->off[e]; r < c->off[e + 1]; r++)
            for (int n = 0; n < c->N; n++) {
                double acc = 0.0;
                for (int k = 0; k < c->K; k++) acc += c->x[r * c->K + k] * c->w[(e * c->N + n) * c->K + k];
                L += acc * c->R[r * c->N + n];
            }
    return L;
}

TEST(ops_grouped_matmul_forward_backward) {
    ops_rng_seed(105);
    // Expert 1 receives no rows; expert 3's segment holds a single row.
    enum { E = 4, R = 8, N = 5, K = 7 };
    int32_t off[E + 1] = {0, 3, 3, 7, 8};
    float *x = ops_rand(R * K, 1.0f), *w = ops_rand(E * N * K, 1.0f), *dy = ops_rand(R * N, 1.0f);
    float *out = calloc(R * N, 4), *dx = ops_rand(R * K, 5.0f), *dw0 = ops_rand(E * N * K, 1.0f);
    float *dw = ops_copy_f(dw0, E * N * K);
    Tensor offs = tensor_1d(off, DT_I32, E + 1);
    cpu()->grouped_matmul_forward(tensor_2d(out, DT_F32, R, N), tensor_2d(x, DT_F32, R, K),
                                  tensor_3d(w, DT_F32, E, N, K), offs, off);
    GroupedCtx c = {E, N, K, off, ops_to_double(x, R * K), ops_to_double(w, E * N * K), ops_to_double(dy, R * N)};
    double want[R * N];
    for (int e = 0; e < E; e++)
        for (int r = off[e]; r < off[e + 1]; r++)
            for (int n = 0; n < N; n++) {
                double acc = 0.0;
                for (int k = 0; k < K; k++) acc += c.x[r * K + k] * c.w[(e * N + n) * K + k];
                want[r * N + n] = acc;
            }
    EXPECT_CLOSE("grouped out", out, want, R * N, 1e-5, 1e-6);
    cpu()->grouped_matmul_backward(tensor_2d(dx, DT_F32, R, K), tensor_3d(dw, DT_F32, E, N, K),
                                   tensor_2d(dy, DT_F32, R, N), tensor_2d(x, DT_F32, R, K),
                                   tensor_3d(w, DT_F32, E, N, K), offs, off, 0);
    double *gx = ops_fd_grad(grouped_loss, &c, c.x, R * K), *gw = ops_fd_grad(grouped_loss, &c, c.w, E * N * K);
    for (int i = 0; i < E * N * K; i++) gw[i] += dw0[i];
    EXPECT_CLOSE("grouped dinp (overwrite)", dx, gx, R * K, 1e-4, 1e-5);
    EXPECT_CLOSE("grouped dw (accumulated)", dw, gw, E * N * K, 1e-4, 1e-5);
    // The empty expert's dw is exactly what it was.
    ASSERT(memcmp(dw + 1 * N * K, dw0 + 1 * N * K, sizeof(float) * N * K) == 0);
}

// accumulate_dinp, on hand-computed numbers: E 2, rows [0, 1) and [1, 3) of R 4 (row 3 in no segment), N = K = 2.
// dinp = dout @ w[e]: row 0 (1, 1) @ [[1, 2], [3, 4]] = (4, 6); row 1 (2, 0) @ [[0, 1], [1, 0]] = (0, 2);
// row 2 (0, 3) @ [[0, 1], [1, 0]] = (3, 0). Onto 10 everywhere: added (accumulate 1) or replacing it (0); row 3
// keeps its 10 either way.
TEST(ops_grouped_matmul_backward_accumulate_dinp) {
    int32_t off[3] = {0, 1, 3};
    float w[8] = {1, 2, 3, 4, 0, 1, 1, 0}, dout[8] = {1, 1, 2, 0, 0, 3, 5, 5}, inp[8] = {0};
    const float add[8] = {14, 16, 10, 12, 13, 10, 10, 10}, put[8] = {4, 6, 0, 2, 3, 0, 10, 10};
    for (int acc = 0; acc < 2; acc++) {
        float dinp[8];
        for (int i = 0; i < 8; i++) dinp[i] = 10.0f;
        cpu()->grouped_matmul_backward(tensor_2d(dinp, DT_F32, 4, 2), tensor_3d(NULL, DT_F32, 2, 2, 2),
                                       tensor_2d(dout, DT_F32, 4, 2), tensor_2d(inp, DT_F32, 4, 2),
                                       tensor_3d(w, DT_F32, 2, 2, 2), tensor_1d(off, DT_I32, 3), off, acc);
        for (int i = 0; i < 8; i++) ASSERT_NEAR(dinp[i], (acc ? add : put)[i], 0, 0);
    }
}

// The dinp pair on the same segments: dinp = dout @ w[e] (as above) + dout_b @ wb[e], wb[0] = [[2, 0], [0, 2]],
// wb[1] = [[1, 1], [0, 1]]: row 0 (4, 6) + (1, 0) @ wb[0] = (6, 6); row 1 (0, 2) + (1, 1) @ wb[1] = (1, 4);
// row 2 (3, 0) + (2, 0) @ wb[1] = (5, 2); row 3 keeps its 10 (overwrite semantics, in no segment).
TEST(ops_grouped_matmul_dinp_pair) {
    int32_t off[3] = {0, 1, 3};
    float w[8] = {1, 2, 3, 4, 0, 1, 1, 0}, dout[8] = {1, 1, 2, 0, 0, 3, 5, 5};
    float wb[8] = {2, 0, 0, 2, 1, 1, 0, 1}, dout_b[8] = {1, 0, 1, 1, 2, 0, 7, 7};
    const float want[8] = {6, 6, 1, 4, 5, 2, 10, 10};
    float dinp[8];
    for (int i = 0; i < 8; i++) dinp[i] = 10.0f;
    cpu()->grouped_matmul_dinp_pair(tensor_2d(dinp, DT_F32, 4, 2), tensor_2d(dout, DT_F32, 4, 2),
                                    tensor_3d(w, DT_F32, 2, 2, 2), tensor_2d(dout_b, DT_F32, 4, 2),
                                    tensor_3d(wb, DT_F32, 2, 2, 2), tensor_1d(off, DT_I32, 3), off);
    for (int i = 0; i < 8; i++) ASSERT_NEAR(dinp[i], want[i], 0, 0);
}

static void die_pair_bad_wb(void *unused) {
    (void)unused;
    static float d[4 * 2], g[4 * 2], w[2 * 2 * 2], wb[2 * 2 * 3];
    static int32_t off[3] = {0, 1, 3};
    backend_get("cpu")->grouped_matmul_dinp_pair(tensor_2d(d, DT_F32, 4, 2), tensor_2d(g, DT_F32, 4, 2),
                                                 tensor_3d(w, DT_F32, 2, 2, 2), tensor_2d(g, DT_F32, 4, 2),
                                                 tensor_3d(wb, DT_F32, 2, 2, 3), tensor_1d(off, DT_I32, 3), off);
}

static void die_matmul_bad_k(void *unused) {
    (void)unused;
    static float x[8 * 64], w[32 * 48], o[8 * 32];
    backend_get("cpu")->matmul_forward(tensor_2d(o, DT_F32, 8, 32), tensor_2d(x, DT_F32, 8, 64),
                                       tensor_2d(w, DT_F32, 32, 48), 0);
}
static void die_matmul_bad_dtype(void *unused) {
    (void)unused;
    static float x[4], w[4], o[4];
    backend_get("cpu")->matmul_forward(tensor_2d(o, DT_F32, 2, 2), tensor_2d(x, DT_BF16, 2, 2),
                                       tensor_2d(w, DT_F32, 2, 2), 0);
}
static void die_grouped_bad_offsets(void *unused) {
    (void)unused;
    static float x[6 * 2], w[2 * 3 * 2], o[6 * 3];
    static int32_t off[3] = {0, 4, 2};
    backend_get("cpu")->grouped_matmul_forward(tensor_2d(o, DT_F32, 6, 3), tensor_2d(x, DT_F32, 6, 2),
                                               tensor_3d(w, DT_F32, 2, 3, 2), tensor_1d(off, DT_I32, 3), off);
}
static void die_grouped_offsets_past_end(void *unused) {
    (void)unused;
    static float x[6 * 2], w[2 * 3 * 2], o[6 * 3];
    static int32_t off[3] = {0, 4, 9};
    backend_get("cpu")->grouped_matmul_forward(tensor_2d(o, DT_F32, 6, 3), tensor_2d(x, DT_F32, 6, 2),
                                               tensor_3d(w, DT_F32, 2, 3, 2), tensor_1d(off, DT_I32, 3), off);
}

TEST(ops_matmul_bad_shapes_die_with_clear_messages) {
    EXPECT_DIE(die_matmul_bad_k, NULL, "matmul_forward: inp (8, 64) and w (32, 48) disagree on K");
    EXPECT_DIE(die_matmul_bad_dtype, NULL, "matmul_forward: inp (2, 2) is bf16, expected f32");
    EXPECT_DIE(die_grouped_bad_offsets, NULL, "grouped_matmul_forward: offsets decrease at expert 1");
    EXPECT_DIE(die_grouped_offsets_past_end, NULL, "offsets end at row 9 but the input has 6 rows");
    EXPECT_DIE(die_pair_bad_wb, NULL, "grouped_matmul_dinp_pair: wb (2, 2, 3) and wa (2, 2, 2) disagree on shape");
}

// out = res + inp @ w^T against the double reference (res + ref_matmul), with out a separate buffer (res left as it
// was) and out == res (in place), and bit for bit against its definition: a copy of res, then matmul_forward with
// accumulate 1.
TEST(ops_matmul_forward_residual) {
    ops_rng_seed(107);
    static const int shapes[][3] = {{1, 1, 1}, {3, 5, 7}, {13, 33, 17}, {65, 70, 131}, {130, 64, 300}, {4, 9, 0}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
        float *x = ops_rand((int64_t)M * K, 1.0f), *w = ops_rand((int64_t)N * K, 1.0f);
        float *res = ops_rand((int64_t)M * N, 2.0f), *res0 = ops_copy_f(res, (int64_t)M * N);
        float *out = ops_rand((int64_t)M * N, 1.0f), *def = ops_copy_f(res, (int64_t)M * N);
        double *xd = ops_to_double(x, (int64_t)M * K), *wd = ops_to_double(w, (int64_t)N * K);
        double *want = malloc(sizeof(double) * M * N);
        ref_matmul(want, xd, wd, M, N, K);
        for (int i = 0; i < M * N; i++) want[i] += res[i];
        Tensor tx = tensor_2d(x, DT_F32, M, K), tw = tensor_2d(w, DT_F32, N, K);
        cpu()->matmul_forward_residual(tensor_2d(out, DT_F32, M, N), tensor_2d(res, DT_F32, M, N), tx, tw);
        EXPECT_CLOSE("residual out", out, want, (int64_t)M * N, 1e-5, 1e-6);
        ASSERT_MSG(memcmp(res, res0, sizeof(float) * M * N) == 0, "res changed (%dx%dx%d)", M, N, K);
        cpu()->matmul_forward(tensor_2d(def, DT_F32, M, N), tx, tw, 1);
        ASSERT_MSG(memcmp(out, def, sizeof(float) * M * N) == 0, "not copy + accumulate's bits (%dx%dx%d)", M, N, K);
        cpu()->matmul_forward_residual(tensor_2d(res, DT_F32, M, N), tensor_2d(res, DT_F32, M, N), tx, tw);
        ASSERT_MSG(memcmp(res, def, sizeof(float) * M * N) == 0, "in place differs (%dx%dx%d)", M, N, K);
        free(x), free(w), free(res), free(res0), free(out), free(def), free(xd), free(wd), free(want);
    }
    // Hand-derived: [1 2] @ [[1 0] [1 1]]^T = [1 3], plus res [10 20].
    float x[2] = {1, 2}, w[4] = {1, 0, 1, 1}, res[2] = {10, 20}, out[2] = {-1, -1};
    cpu()->matmul_forward_residual(tensor_2d(out, DT_F32, 1, 2), tensor_2d(res, DT_F32, 1, 2),
                                   tensor_2d(x, DT_F32, 1, 2), tensor_2d(w, DT_F32, 2, 2));
    ASSERT(out[0] == 11.0f && out[1] == 23.0f && res[0] == 10.0f && res[1] == 20.0f);
}

static void die_residual_bad_res_shape(void *unused) {
    (void)unused;
    static float x[8 * 16], w[32 * 16], o[8 * 32], r[8 * 33];
    cpu()->matmul_forward_residual(tensor_2d(o, DT_F32, 8, 32), tensor_2d(r, DT_F32, 8, 33),
                                   tensor_2d(x, DT_F32, 8, 16), tensor_2d(w, DT_F32, 32, 16));
}
static void die_residual_bad_res_rows(void *unused) {
    (void)unused;
    static float x[8 * 16], w[32 * 16], o[8 * 32], r[9 * 32];
    cpu()->matmul_forward_residual(tensor_2d(o, DT_F32, 8, 32), tensor_2d(r, DT_F32, 9, 32),
                                   tensor_2d(x, DT_F32, 8, 16), tensor_2d(w, DT_F32, 32, 16));
}
static void die_residual_bad_res_dtype(void *unused) {
    (void)unused;
    static float x[8 * 16], w[32 * 16], o[8 * 32], r[8 * 32];
    cpu()->matmul_forward_residual(tensor_2d(o, DT_F32, 8, 32), tensor_2d(r, DT_BF16, 8, 32),
                                   tensor_2d(x, DT_F32, 8, 16), tensor_2d(w, DT_F32, 32, 16));
}
static void die_residual_overlap(void *unused) {
    (void)unused;
    static float x[8 * 16], w[32 * 16], buf[9 * 32];
    cpu()->matmul_forward_residual(tensor_2d(buf + 32, DT_F32, 8, 32), tensor_2d(buf, DT_F32, 8, 32),
                                   tensor_2d(x, DT_F32, 8, 16), tensor_2d(w, DT_F32, 32, 16));
}
static void die_residual_bad_k(void *unused) {
    (void)unused;
    static float x[8 * 16], w[32 * 15], o[8 * 32], r[8 * 32];
    cpu()->matmul_forward_residual(tensor_2d(o, DT_F32, 8, 32), tensor_2d(r, DT_F32, 8, 32),
                                   tensor_2d(x, DT_F32, 8, 16), tensor_2d(w, DT_F32, 32, 15));
}

TEST(ops_matmul_forward_residual_bad_inputs_die_with_clear_messages) {
    EXPECT_DIE(die_residual_bad_res_shape, NULL,
               "matmul_forward_residual: res (8, 33) and out (8, 32) disagree on N (33 vs 32)");
    EXPECT_DIE(die_residual_bad_res_rows, NULL,
               "matmul_forward_residual: res (9, 32) and out (8, 32) disagree on M (9 vs 8)");
    EXPECT_DIE(die_residual_bad_res_dtype, NULL, "matmul_forward_residual: res (8, 32) is bf16, expected f32");
    EXPECT_DIE(die_residual_overlap, NULL,
               "matmul_forward_residual: res (8, 32) and out (8, 32) overlap without being the same tensor");
    EXPECT_DIE(die_residual_bad_k, NULL, "matmul_forward_residual: inp (8, 16) and w (32, 15) disagree on K");
}
