// Dense and grouped (MoE) linear layers on the cpu, FP32. Weights are [out, in] (PyTorch layout), so
//   forward:  out (M, N)  = inp (M, K) @ w (N, K)^T
//   dinp:     dinp (M, K) = dout (M, N) @ w (N, K)
//   dw:       dw (N, K)  += dout^T @ inp
// Threads split the rows of the output being written, so no two threads write the same element and the
// summation order never depends on the thread count (bit-reproducible runs). `make bench-cpu` prints GFLOP/s.
#include "kernels/cpu/cpu_ops.h"
#include "train/check.h"

#include <omp.h>
#include <string.h>

// All three products are one kernel, C (R, Q) (+)= A (R, P) . B (P, Q), with A read through strides (so A may be a
// transposed view) and B through a row stride and a column stride:
//   forward  out = inp . w^T   A = inp (row stride K, col 1)   B = w^T  (B[p][q] = w[q * K + p])
//   dinp     dinp = dout . w   A = dout (row stride N, col 1)  B = w    (B[p][q] = w[p * K + q])
//   dw       dw += dout^T . inp  A = dout^T (row stride 1, col N)   B = inp
// Blocking: B is copied in KC x NC blocks into a zero-padded panel (contiguous rows, whatever the source layout),
// a 4-row strip of A into an interleaved buffer, and a 4 x 8 register tile accumulates over the block's KC terms
// (its inner loop over 8 columns vectorizes). Threads own whole rows of C; each C element is C0 plus the
// per-block partial sums in block order, so results do not depend on the thread count.
enum { MR = 4, NR = 8, KC = 256, NC = 64 };

typedef struct {
    const float *a;
    int64_t a_row, a_col; // A[r][p] = a[r * a_row + p * a_col]
    const float *b;
    int64_t b_row, b_col; // B[p][q] = b[p * b_row + q * b_col]
    float *c;
    int64_t ldc;          // C[r][q] = c[r * ldc + q]
    int64_t R, Q, P;
} Gemm;

// acc (MR x NR) = sum_p ap[p][0..MR) outer bp[p][0..NR); ap interleaved (MR per p), bp rows of stride ldb.
// One accumulator array per row and the column loop fully unrolled: GCC then keeps all 32 sums in 8 SSE registers
// across the p loop (with a 2-D array it stored them to memory every iteration, at a third of the speed).
static inline void tile_4x8(int64_t kc, const float *ap, const float *bp, int64_t ldb, float acc[MR][NR]) {
    float c0[NR] = {0}, c1[NR] = {0}, c2[NR] = {0}, c3[NR] = {0};
    for (int64_t p = 0; p < kc; p++) {
        const float *bq = bp + p * ldb, *a = ap + p * MR;
        const float a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3];
#pragma GCC unroll 8
        for (int j = 0; j < NR; j++) {
            c0[j] += a0 * bq[j];
            c1[j] += a1 * bq[j];
            c2[j] += a2 * bq[j];
            c3[j] += a3 * bq[j];
        }
    }
    for (int j = 0; j < NR; j++) {
        acc[0][j] = c0[j];
        acc[1][j] = c1[j];
        acc[2][j] = c2[j];
        acc[3][j] = c3[j];
    }
}

// C rows [r0, r1) of the product (one chunk; the packing buffers live on the calling thread's stack, 68 KB).
static void gemm_rows(const Gemm *g, int64_t r0, int64_t r1, int accumulate) {
    float bpack[KC * NC], apack[KC * MR];
    float acc[MR][NR];
    if (!accumulate)
        for (int64_t r = r0; r < r1; r++)
            for (int64_t q = 0; q < g->Q; q++) g->c[r * g->ldc + q] = 0.0f;
    for (int64_t pc = 0; pc < g->P; pc += KC) {
        const int64_t kc = g->P - pc < KC ? g->P - pc : KC;
        for (int64_t qc = 0; qc < g->Q; qc += NC) {
            const int64_t nc = g->Q - qc < NC ? g->Q - qc : NC, ncp = (nc + NR - 1) / NR * NR;
            for (int64_t p = 0; p < kc; p++) {
                const float *src = g->b + (pc + p) * g->b_row + qc * g->b_col;
                float *dst = bpack + p * ncp;
                for (int64_t q = 0; q < nc; q++) dst[q] = src[q * g->b_col];
                for (int64_t q = nc; q < ncp; q++) dst[q] = 0.0f;
            }
            for (int64_t r = r0; r < r1; r += MR) {
                const int64_t mr = r1 - r < MR ? r1 - r : MR;
                for (int64_t p = 0; p < kc; p++)
                    for (int i = 0; i < MR; i++)
                        apack[p * MR + i] = i < mr ? g->a[(r + i) * g->a_row + (pc + p) * g->a_col] : 0.0f;
                for (int64_t q = 0; q < nc; q += NR) {
                    tile_4x8(kc, apack, bpack + q, ncp, acc);
                    const int64_t nr = nc - q < NR ? nc - q : NR;
                    for (int64_t i = 0; i < mr; i++) {
                        float *cr = g->c + (r + i) * g->ldc + qc + q;
                        for (int64_t j = 0; j < nr; j++) cr[j] += acc[i][j];
                    }
                }
            }
        }
    }
}

// Rows go out in chunks (about 4 per thread, 16 to 64 rows each: smaller chunks repack B more often), handed to
// whichever thread is free, so a thread that was descheduled on a busy machine does not hold a fixed half of the
// work. Which thread computes a chunk does not change its arithmetic.
static void gemm_run(const Gemm *g, int accumulate) {
    int64_t rows_per_chunk = (g->R / (4 * omp_get_max_threads()) + MR - 1) / MR * MR;
    rows_per_chunk = rows_per_chunk < 16 ? 16 : rows_per_chunk > 64 ? 64 : rows_per_chunk;
    const int64_t chunks = (g->R + rows_per_chunk - 1) / rows_per_chunk;
    const double work = (double)g->R * g->Q * g->P;
#pragma omp parallel for schedule(dynamic, 1) if (work > (double)CPU_PAR_MIN && chunks > 1)
    for (int64_t ch = 0; ch < chunks; ch++) {
        int64_t r0 = ch * rows_per_chunk, r1 = r0 + rows_per_chunk < g->R ? r0 + rows_per_chunk : g->R;
        gemm_rows(g, r0, r1, accumulate);
    }
}

// out[m, n] (+)= <a[m, :], b[n, :]>; a (M, K) with row stride lda, b (N, K) stride ldb.
static void gemm_nt(float *out, int64_t ldo, const float *a, int64_t lda, const float *b, int64_t ldb, int64_t M,
                    int64_t N, int64_t K, int accumulate) {
    Gemm g = {a, lda, 1, b, 1, ldb, out, ldo, M, N, K};
    gemm_run(&g, accumulate);
}

// out[m, :] (+)= sum_n a[m, n] * b[n, :]; a (M, N) stride lda, b (N, K) stride ldb, out (M, K) stride ldo.
static void gemm_nn(float *out, int64_t ldo, const float *a, int64_t lda, const float *b, int64_t ldb, int64_t M,
                    int64_t N, int64_t K, int accumulate) {
    Gemm g = {a, lda, 1, b, ldb, 1, out, ldo, M, K, N};
    gemm_run(&g, accumulate);
}

// out[n, :] += sum_m a[m, n] * b[m, :]; a (M, N) stride lda, b (M, K) stride ldb, out (N, K) stride ldo.
static void gemm_tn_acc(float *out, int64_t ldo, const float *a, int64_t lda, const float *b, int64_t ldb, int64_t M,
                        int64_t N, int64_t K) {
    Gemm g = {a, 1, lda, b, ldb, 1, out, ldo, N, K, M};
    gemm_run(&g, 1);
}

void cpu_matmul_forward(Tensor out, Tensor inp, Tensor w, int accumulate) {
    const char *op = "matmul_forward";
    cpu_need(op, "out", &out, DT_F32, 0);
    cpu_need(op, "inp", &inp, DT_F32, 0);
    cpu_need(op, "w", &w, DT_F32, 2);
    int64_t M, N, K;
    cpu_matmul_shapes(op, &out, &inp, &w, &M, &N, &K);
    gemm_nt(out.data, N, inp.data, K, w.data, K, M, N, K, accumulate);
}

// out = res + inp @ w^T: res copied into out (unless out is res), then the accumulating product, so the bits are
// those of copy + matmul_forward(accumulate 1).
void cpu_matmul_forward_residual(Tensor out, Tensor res, Tensor inp, Tensor w) {
    const char *op = "matmul_forward_residual";
    cpu_need(op, "out", &out, DT_F32, 0);
    cpu_need(op, "res", &res, DT_F32, 0);
    cpu_need(op, "inp", &inp, DT_F32, 0);
    cpu_need(op, "w", &w, DT_F32, 2);
    int64_t M, N, K;
    cpu_matmul_residual_shapes(op, &out, &res, &inp, &w, &M, &N, &K);
    if (res.data != out.data && M * N > 0) memcpy(out.data, res.data, (size_t)(M * N) * sizeof(float));
    gemm_nt(out.data, N, inp.data, K, w.data, K, M, N, K, 1);
}

void cpu_matmul_backward(Tensor dinp, Tensor dw, Tensor dout, Tensor inp, Tensor w, int accumulate_dinp) {
    const char *op = "matmul_backward";
    cpu_need(op, "dout", &dout, DT_F32, 0);
    cpu_need(op, "inp", &inp, DT_F32, 0);
    cpu_need(op, "w", &w, DT_F32, 2);
    int64_t M = cpu_rows(&inp), K = cpu_cols(&inp), N = w.shape[0];
    cpu_agree(op, "inp", &inp, K, "w", &w, w.shape[1], "K");
    cpu_agree(op, "dout", &dout, cpu_rows(&dout), "inp", &inp, M, "M");
    cpu_agree(op, "dout", &dout, cpu_cols(&dout), "w", &w, N, "N");
    if (dinp.data) {
        cpu_need(op, "dinp", &dinp, DT_F32, 0);
        cpu_agree(op, "dinp", &dinp, cpu_rows(&dinp), "inp", &inp, M, "M");
        cpu_agree(op, "dinp", &dinp, cpu_cols(&dinp), "inp", &inp, K, "K");
        gemm_nn(dinp.data, K, dout.data, N, w.data, K, M, N, K, accumulate_dinp);
    }
    if (dw.data) {
        cpu_need(op, "dw", &dw, DT_F32, 2);
        cpu_agree(op, "dw", &dw, dw.shape[0], "w", &w, N, "N");
        cpu_agree(op, "dw", &dw, dw.shape[1], "w", &w, K, "K");
        gemm_tn_acc(dw.data, K, dout.data, N, inp.data, K, M, N, K);
    }
}

// Checks a grouped matmul's segment table: E + 1 non-decreasing offsets from 0 to at most R rows; on the cpu the
// "device" copy is host memory too, so it must hold the same values as offsets_host when that is given (NULL: the
// device copy is the table). Returns the table.
static const int32_t *check_offsets(const char *op, Tensor offsets, const int32_t *offsets_host, int64_t E,
                                    int64_t R) {
    cpu_need(op, "offsets", &offsets, DT_I32, 1);
    cpu_expect(op, "offsets", &offsets, offsets.shape[0], E + 1, "length (n_experts + 1)");
    const int32_t *dev = offsets.data;
    if (!offsets_host) offsets_host = dev;
    if (offsets_host[0] != 0) die("%s: offsets_host[0] = %d, expected 0", op, offsets_host[0]);
    for (int64_t e = 0; e <= E; e++) {
        if (dev[e] != offsets_host[e])
            die("%s: offsets[%lld] = %d but offsets_host[%lld] = %d", op, (long long)e, dev[e], (long long)e,
                offsets_host[e]);
        if (e > 0 && offsets_host[e] < offsets_host[e - 1])
            die("%s: offsets decrease at expert %lld (%d < %d)", op, (long long)e - 1, offsets_host[e],
                offsets_host[e - 1]);
    }
    if (offsets_host[E] > R) die("%s: offsets end at row %d but the input has %lld rows", op, offsets_host[E], (long long)R);
    return offsets_host;
}

void cpu_grouped_matmul_forward(Tensor out, Tensor inp, Tensor w, Tensor offsets, const int32_t *offsets_host) {
    const char *op = "grouped_matmul_forward";
    cpu_need(op, "out", &out, DT_F32, 2);
    cpu_need(op, "inp", &inp, DT_F32, 2);
    cpu_need(op, "w", &w, DT_F32, 3);
    int64_t R = inp.shape[0], K = inp.shape[1], E = w.shape[0], N = w.shape[1];
    cpu_agree(op, "inp", &inp, K, "w", &w, w.shape[2], "K");
    cpu_agree(op, "out", &out, out.shape[0], "inp", &inp, R, "rows");
    cpu_agree(op, "out", &out, out.shape[1], "w", &w, N, "N");
    offsets_host = check_offsets(op, offsets, offsets_host, E, R);
    const float *x = inp.data, *wd = w.data;
    float *y = out.data;
    for (int64_t e = 0; e < E; e++) {
        int64_t r0 = offsets_host[e], rows = offsets_host[e + 1] - r0;
        if (rows > 0) gemm_nt(y + r0 * N, N, x + r0 * K, K, wd + e * N * K, K, rows, N, K, 0);
    }
}

void cpu_grouped_matmul_backward(Tensor dinp, Tensor dw, Tensor dout, Tensor inp, Tensor w, Tensor offsets,
                                 const int32_t *offsets_host, int accumulate_dinp) {
    const char *op = "grouped_matmul_backward";
    cpu_need(op, "dout", &dout, DT_F32, 2);
    cpu_need(op, "inp", &inp, DT_F32, 2);
    cpu_need(op, "w", &w, DT_F32, 3);
    int64_t R = inp.shape[0], K = inp.shape[1], E = w.shape[0], N = w.shape[1];
    cpu_agree(op, "inp", &inp, K, "w", &w, w.shape[2], "K");
    cpu_agree(op, "dout", &dout, dout.shape[0], "inp", &inp, R, "rows");
    cpu_agree(op, "dout", &dout, dout.shape[1], "w", &w, N, "N");
    offsets_host = check_offsets(op, offsets, offsets_host, E, R);
    if (dinp.data) {
        cpu_need(op, "dinp", &dinp, DT_F32, 2);
        cpu_agree(op, "dinp", &dinp, dinp.shape[0], "inp", &inp, R, "rows");
        cpu_agree(op, "dinp", &dinp, dinp.shape[1], "inp", &inp, K, "K");
    }
    if (dw.data) {
        cpu_need(op, "dw", &dw, DT_F32, 3);
        for (int i = 0; i < 3; i++) cpu_agree(op, "dw", &dw, dw.shape[i], "w", &w, w.shape[i], "shape");
    }
    const float *x = inp.data, *g = dout.data, *wd = w.data;
    for (int64_t e = 0; e < E; e++) {
        int64_t r0 = offsets_host[e], rows = offsets_host[e + 1] - r0;
        if (rows <= 0) continue;
        if (dinp.data)
            gemm_nn((float *)dinp.data + r0 * K, K, g + r0 * N, N, wd + e * N * K, K, rows, N, K, accumulate_dinp);
        if (dw.data) gemm_tn_acc((float *)dw.data + e * N * K, K, g + r0 * N, N, x + r0 * K, K, rows, N, K);
    }
}

void cpu_grouped_matmul_dinp_pair(Tensor dinp, Tensor dout_a, Tensor wa, Tensor dout_b, Tensor wb, Tensor offsets,
                                  const int32_t *offsets_host) {
    const char *op = "grouped_matmul_dinp_pair";
    cpu_need(op, "dinp", &dinp, DT_F32, 2);
    cpu_need(op, "dout_a", &dout_a, DT_F32, 2);
    cpu_need(op, "dout_b", &dout_b, DT_F32, 2);
    cpu_need(op, "wa", &wa, DT_F32, 3);
    cpu_need(op, "wb", &wb, DT_F32, 3);
    int64_t R, E, N, K;
    cpu_dinp_pair_shapes(op, &dinp, &dout_a, &wa, &dout_b, &wb, &R, &E, &N, &K);
    offsets_host = check_offsets(op, offsets, offsets_host, E, R);
    const float *ga = dout_a.data, *gb = dout_b.data, *pa = wa.data, *pb = wb.data;
    for (int64_t e = 0; e < E; e++) {
        int64_t r0 = offsets_host[e], rows = offsets_host[e + 1] - r0;
        if (rows <= 0) continue;
        float *d = (float *)dinp.data + r0 * K;
        gemm_nn(d, K, ga + r0 * N, N, pa + e * N * K, K, rows, N, K, 0);
        gemm_nn(d, K, gb + r0 * N, N, pb + e * N * K, K, rows, N, K, 1);
    }
}
