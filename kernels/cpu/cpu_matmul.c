// Dense and grouped (MoE) linear layers on the cpu, FP32. Weights are [out, in] (PyTorch layout), so
//   forward:  out (M, N)  = inp (M, K) @ w (N, K)^T     each output is a dot product of two contiguous rows
//   dinp:     dinp (M, K) = dout (M, N) @ w (N, K)      each output row is a sum of scaled rows of w
//   dw:       dw (N, K)  += dout^T @ inp                each dw row is a sum of scaled rows of inp
// Threads split the rows of the output being written, so no two threads write the same element and the
// summation order never depends on the thread count (bit-reproducible runs).
#include "kernels/cpu/cpu_ops.h"
#include "train/check.h"

// out[m, n] (+)= <a[m, :], b[n, :]> for m < M, n < N; a (M, K) with row stride lda, b (N, K) stride ldb.
static void gemm_nt(float *out, int64_t ldo, const float *a, int64_t lda, const float *b, int64_t ldb, int64_t M,
                    int64_t N, int64_t K, int accumulate) {
#pragma omp parallel for schedule(static)
    for (int64_t m = 0; m < M; m++) {
        const float *am = a + m * lda;
        float *om = out + m * ldo;
        for (int64_t n = 0; n < N; n++) {
            const float *bn = b + n * ldb;
            float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
            for (int64_t k = 0; k < K; k++) acc += am[k] * bn[k];
            om[n] = accumulate ? om[n] + acc : acc;
        }
    }
}

// out[m, :] (+)= sum_n a[m, n] * b[n, :]; a (M, N) stride lda, b (N, K) stride ldb, out (M, K) stride ldo.
static void gemm_nn(float *out, int64_t ldo, const float *a, int64_t lda, const float *b, int64_t ldb, int64_t M,
                    int64_t N, int64_t K, int accumulate) {
#pragma omp parallel for schedule(static)
    for (int64_t m = 0; m < M; m++) {
        float *om = out + m * ldo;
        if (!accumulate)
            for (int64_t k = 0; k < K; k++) om[k] = 0.0f;
        for (int64_t n = 0; n < N; n++) {
            const float s = a[m * lda + n];
            const float *bn = b + n * ldb;
            for (int64_t k = 0; k < K; k++) om[k] += s * bn[k];
        }
    }
}

// out[n, :] += sum_m a[m, n] * b[m, :]; a (M, N) stride lda, b (M, K) stride ldb, out (N, K) stride ldo.
static void gemm_tn_acc(float *out, int64_t ldo, const float *a, int64_t lda, const float *b, int64_t ldb, int64_t M,
                        int64_t N, int64_t K) {
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        float *on = out + n * ldo;
        for (int64_t m = 0; m < M; m++) {
            const float s = a[m * lda + n];
            const float *bm = b + m * ldb;
            for (int64_t k = 0; k < K; k++) on[k] += s * bm[k];
        }
    }
}

void cpu_matmul_forward(Tensor out, Tensor inp, Tensor w, int accumulate) {
    const char *op = "matmul_forward";
    cpu_need(op, "out", &out, DT_F32, 0);
    cpu_need(op, "inp", &inp, DT_F32, 0);
    cpu_need(op, "w", &w, DT_F32, 2);
    int64_t M = cpu_rows(&inp), K = cpu_cols(&inp), N = w.shape[0];
    cpu_agree(op, "inp", &inp, K, "w", &w, w.shape[1], "K");
    cpu_agree(op, "out", &out, cpu_rows(&out), "inp", &inp, M, "M");
    cpu_agree(op, "out", &out, cpu_cols(&out), "w", &w, N, "N");
    gemm_nt(out.data, N, inp.data, K, w.data, K, M, N, K, accumulate);
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
// device copy is host memory too, so it must hold the same values as offsets_host.
static void check_offsets(const char *op, Tensor offsets, const int32_t *offsets_host, int64_t E, int64_t R) {
    cpu_need(op, "offsets", &offsets, DT_I32, 1);
    cpu_expect(op, "offsets", &offsets, offsets.shape[0], E + 1, "length (n_experts + 1)");
    if (!offsets_host) die("%s: offsets_host is NULL", op);
    const int32_t *dev = offsets.data;
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
    check_offsets(op, offsets, offsets_host, E, R);
    const float *x = inp.data, *wd = w.data;
    float *y = out.data;
    for (int64_t e = 0; e < E; e++) {
        int64_t r0 = offsets_host[e], rows = offsets_host[e + 1] - r0;
        if (rows > 0) gemm_nt(y + r0 * N, N, x + r0 * K, K, wd + e * N * K, K, rows, N, K, 0);
    }
}

void cpu_grouped_matmul_backward(Tensor dinp, Tensor dw, Tensor dout, Tensor inp, Tensor w, Tensor offsets,
                                 const int32_t *offsets_host) {
    const char *op = "grouped_matmul_backward";
    cpu_need(op, "dout", &dout, DT_F32, 2);
    cpu_need(op, "inp", &inp, DT_F32, 2);
    cpu_need(op, "w", &w, DT_F32, 3);
    int64_t R = inp.shape[0], K = inp.shape[1], E = w.shape[0], N = w.shape[1];
    cpu_agree(op, "inp", &inp, K, "w", &w, w.shape[2], "K");
    cpu_agree(op, "dout", &dout, dout.shape[0], "inp", &inp, R, "rows");
    cpu_agree(op, "dout", &dout, dout.shape[1], "w", &w, N, "N");
    check_offsets(op, offsets, offsets_host, E, R);
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
        if (dinp.data) gemm_nn((float *)dinp.data + r0 * K, K, g + r0 * N, N, wd + e * N * K, K, rows, N, K, 0);
        if (dw.data) gemm_tn_acc((float *)dw.data + e * N * K, K, g + r0 * N, N, x + r0 * K, K, rows, N, K);
    }
}
