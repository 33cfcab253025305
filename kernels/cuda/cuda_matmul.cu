// Dense and grouped (MoE) linear layers through cuBLASLt. Weights are [out, in] (PyTorch layout), tensors row-major.
// cuBLASLt is column-major, and a row-major (R, C) buffer is the column-major (C, R) matrix, so
//   forward  out (M, N)  = inp (M, K) @ w (N, K)^T   is  out^T (N, M)  = op_T(w: K x N) @ inp^T (K x M)
//   dinp     dinp (M, K) = dout (M, N) @ w (N, K)    is  dinp^T (K, M) = w^T (K x N) @ dout^T (N x M)
//   dw       dw (N, K)  += dout^T @ inp              is  dw^T (K, N)  += inp^T (K x M) @ op_T(dout^T: N x M)
// Types: F32 tensors use CUBLAS_COMPUTE_32F (true FP32, no TF32); BF16 inputs with FP32 accumulation
// (CUBLAS_COMPUTE_32F) and an F32 or BF16 output. Both inputs of one product must share a dtype.
//
// matmul_forward_residual is the forward with the residual as cuBLASLt's C operand and out as D (C != D, beta 1):
// one GEMM whose epilogue adds the residual, no copy of it first.
//
// Plans (descriptors, layouts and the heuristic's algorithm) are cached per shape/type/alignment. When cuBLASLt's
// heuristic has no algorithm (odd leading dimensions or misaligned views of BF16 data, say), the product goes
// through classic cuBLAS cublasGemmEx, which takes any layout, with the same types and FP32 compute.
// grouped_matmul_* with BF16 inputs run the one-launch grouped kernels (device offsets only): the mma.sync ones of
// cuda_grouped_gemm.cu, or with DSV3_GG=wg the wgmma ones of cuda_grouped_gemm_wg.cu; F32 inputs and the shapes
// those kernels do not take loop over the experts with one cuBLASLt call per non-empty expert, reading the segment
// table on the host (offsets_host).
#include "kernels/cuda/cuda_common.cuh"

#include "kernels/cuda/cuda_grouped_gemm.h"

#include <cublas_v2.h>
#include <limits.h>
#include <string.h>

static cudaDataType_t lt_type(DType dt) { return dt == DT_BF16 ? CUDA_R_16BF : CUDA_R_32F; }

// Largest power of two (up to 256) dividing the address: cuBLASLt's heuristic must only propose kernels that can
// read a pointer this aligned (views such as tensor_rows() or expert segments start anywhere).
static uint32_t ptr_align(const void *p) {
    uintptr_t a = (uintptr_t)p;
    uint32_t al = 256;
    while (al > 1 && (a & (al - 1))) al >>= 1;
    return al;
}

typedef struct {
    int transa, transb;
    int64_t m, n, k, lda, ldb, ldc;
    cudaDataType_t ta, tb, tc;
    uint32_t align_a, align_b, align_c, align_d; // C (read, beta != 0) and D (written): one buffer in place
} PlanKey;

typedef struct {
    int used, have_algo; // have_algo 0: no cuBLASLt algorithm, use cublasGemmEx
    PlanKey key;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulAlgo_t algo;
} Plan;

// Direct-mapped cache: a collision replaces the old plan (destroying its descriptors).
enum { PLAN_SLOTS = 4096 };
static Plan g_plans[PLAN_SLOTS];

static uint64_t key_hash(const PlanKey *k) {
    // FNV-1a over the key's bytes (the struct is memset before filling, so padding is zero).
    const unsigned char *b = (const unsigned char *)k;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < sizeof *k; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

static void plan_destroy(Plan *p) {
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(p->la));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(p->lb));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(p->lc));
    CUBLAS_CHECK(cublasLtMatmulDescDestroy(p->desc));
    p->used = 0;
}

static Plan *plan_get(const char *op, const PlanKey *key) {
    Plan *p = &g_plans[key_hash(key) % PLAN_SLOTS];
    if (p->used && memcmp(&p->key, key, sizeof *key) == 0) return p;
    if (p->used) plan_destroy(p);
    cublasLtHandle_t lt = cuda_lt_handle();
    size_t ws_bytes;
    cuda_lt_workspace(&ws_bytes);
    p->key = *key;
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t ta = key->transa ? CUBLAS_OP_T : CUBLAS_OP_N, tb = key->transb ? CUBLAS_OP_T : CUBLAS_OP_N;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    // Stored shapes (column-major rows x cols) before the transposes.
    uint64_t a_rows = key->transa ? key->k : key->m, a_cols = key->transa ? key->m : key->k;
    uint64_t b_rows = key->transb ? key->n : key->k, b_cols = key->transb ? key->k : key->n;
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->la, key->ta, a_rows, a_cols, key->lda));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->lb, key->tb, b_rows, b_cols, key->ldb));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->lc, key->tc, key->m, key->n, key->ldc));
    cublasLtMatmulPreference_t pref;
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes,
                                                      sizeof ws_bytes));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                      &key->align_a, sizeof key->align_a));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                      &key->align_b, sizeof key->align_b));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                                      &key->align_c, sizeof key->align_c));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                                      &key->align_d, sizeof key->align_d));
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    // NOT_SUPPORTED means no algorithm for this configuration: the same as an empty answer.
    cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(lt, p->desc, p->la, p->lb, p->lc, p->lc, pref, 1, &res, &found);
    if (st == CUBLAS_STATUS_NOT_SUPPORTED || st == CUBLAS_STATUS_INVALID_VALUE) found = 0;   // no algorithm
    else CUBLAS_CHECK(st);
    CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(pref));
    p->have_algo = found >= 1;
    if (p->have_algo) p->algo = res.algo;
    p->used = 1;
    return p;
}

static cublasHandle_t g_cublas;

// D (column-major m x n, leading dimension ldc, type tc) = C: the start of an out-of-place product done in place.
static void copy_c_to_d(const PlanKey *k, const void *C, void *D) {
    const size_t es = k->tc == CUDA_R_16BF ? 2 : 4, pitch = (size_t)k->ldc * es;
    CUDA_CHECK(cudaMemcpy2DAsync(D, pitch, C, pitch, (size_t)k->m * es, (size_t)k->n, cudaMemcpyDeviceToDevice,
                                 cuda_stream()));
}

// The fallback: cublasGemmEx with FP32 compute (CUBLAS_COMPUTE_32F: no TF32), on the backend stream. It works in
// place only, so an out-of-place product (C != D, the residual forward) first copies C into D.
static void gemmex(const char *op, const PlanKey *k, const void *A, const void *B, const void *C, void *D,
                   float beta) {
    if (beta != 0.0f && C != D) copy_c_to_d(k, C, D);
    if (!g_cublas) {
        CUBLAS_CHECK(cublasCreate(&g_cublas));
        CUBLAS_CHECK(cublasSetStream(g_cublas, cuda_stream()));
    }
    if (k->m > INT_MAX || k->n > INT_MAX || k->k > INT_MAX || k->lda > INT_MAX || k->ldb > INT_MAX || k->ldc > INT_MAX)
        die("%s: m %lld n %lld k %lld too large for cublasGemmEx", op, (long long)k->m, (long long)k->n,
            (long long)k->k);
    const float alpha = 1.0f;
    CUBLAS_CHECK(cublasGemmEx(g_cublas, k->transa ? CUBLAS_OP_T : CUBLAS_OP_N, k->transb ? CUBLAS_OP_T : CUBLAS_OP_N,
                              (int)k->m, (int)k->n, (int)k->k, &alpha, A, k->ta, (int)k->lda, B, k->tb, (int)k->ldb,
                              &beta, D, k->tc, (int)k->ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

static int64_t next_pow2(int64_t x) {
    int64_t p = 1;
    while (p < x) p <<= 1;
    return p;
}

// The grouped (per-expert) products change a dimension, the expert's row count, on every call: asking cuBLASLt's
// heuristic for each distinct size (tens to hundreds of microseconds of host time each) cost more than the GEMMs
// (measured: 60 TFLOP/s for the whole grouped op). So their plans are keyed by the power-of-two bucket of m, n and
// k: the heuristic answers once for the bucket's upper bound, and each call runs that algorithm on layouts of its
// exact shape. If cuBLASLt refuses the algorithm for a smaller shape, the product goes through cublasGemmEx.
static void lt_gemm_bucketed(const char *op, PlanKey key, const void *A, const void *B, const void *C, void *D,
                             float beta) {
    // Only dimensions that are no matrix's leading (row) dimension may grow: a stored row count above its ld is
    // invalid. n is a row count only of a transposed B; k is one of a transposed A and of a plain B.
    PlanKey bk = key;
    if (!key.transb) bk.n = next_pow2(key.n);
    if (!key.transa && key.transb) bk.k = next_pow2(key.k);
    Plan *p = plan_get(op, &bk);
    if (!p->have_algo) {
        gemmex(op, &key, A, B, C, D, beta);
        return;
    }
    cublasLtMatrixLayout_t la, lb, lc;
    uint64_t a_rows = key.transa ? key.k : key.m, a_cols = key.transa ? key.m : key.k;
    uint64_t b_rows = key.transb ? key.n : key.k, b_cols = key.transb ? key.k : key.n;
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&la, key.ta, a_rows, a_cols, key.lda));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&lb, key.tb, b_rows, b_cols, key.ldb));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&lc, key.tc, key.m, key.n, key.ldc));
    size_t ws_bytes;
    void *ws = cuda_lt_workspace(&ws_bytes);
    const float alpha = 1.0f;
    cublasStatus_t st = cublasLtMatmul(cuda_lt_handle(), p->desc, &alpha, A, la, B, lb, &beta, C, lc, D, lc, &p->algo,
                                       ws, ws_bytes, cuda_stream());
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(la));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(lb));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(lc));
    if (st == CUBLAS_STATUS_NOT_SUPPORTED || st == CUBLAS_STATUS_INVALID_VALUE) gemmex(op, &key, A, B, C, D, beta);
    else CUBLAS_CHECK(st);
}

// Column-major D (m x n, ldc) = op(A) (m x k) @ op(B) (k x n) + beta * C, beta 0 or 1. C has D's layout and type:
// D itself (C NULL: in place) or another buffer (the residual forward), which only beta 1 reads. per_expert: a
// grouped op's per-expert product, whose row count changes from call to call (plans keyed by buckets,
// lt_gemm_bucketed).
static void lt_gemm(const char *op, int transa, int transb, int64_t m, int64_t n, int64_t k, const void *A, DType ta,
                    int64_t lda, const void *B, DType tb, int64_t ldb, void *D, DType tc, int64_t ldc, const void *C,
                    float beta, int per_expert) {
    if (m == 0 || n == 0) return;
    if (!C || beta == 0.0f) C = D;
    cudaStream_t s = cuda_stream();
    PlanKey key;
    memset(&key, 0, sizeof key);
    key.transa = transa, key.transb = transb;
    key.m = m, key.n = n, key.k = k, key.lda = lda, key.ldb = ldb, key.ldc = ldc;
    key.ta = lt_type(ta), key.tb = lt_type(tb), key.tc = lt_type(tc);
    key.align_a = ptr_align(A), key.align_b = ptr_align(B), key.align_c = ptr_align(C), key.align_d = ptr_align(D);
    if (k == 0) { // an empty sum: D = beta * C, i.e. zero when overwriting, C when accumulating
        if (beta == 0.0f) {
            size_t es = dtype_size(tc);
            CUDA_CHECK(cudaMemset2DAsync(D, (size_t)ldc * es, 0, (size_t)m * es, (size_t)n, s));
        } else if (C != D) {
            copy_c_to_d(&key, C, D);
        }
        return;
    }
    if (per_expert) {
        lt_gemm_bucketed(op, key, A, B, C, D, beta);
        return;
    }
    Plan *p = plan_get(op, &key);
    if (!p->have_algo) {
        gemmex(op, &key, A, B, C, D, beta);
        return;
    }
    size_t ws_bytes;
    void *ws = cuda_lt_workspace(&ws_bytes);
    const float alpha = 1.0f;
    // C and D share the layout p->lc (one shape, type and leading dimension); only the pointers may differ.
    CUBLAS_CHECK(cublasLtMatmul(cuda_lt_handle(), p->desc, &alpha, A, p->la, B, p->lb, &beta, C, p->lc, D, p->lc,
                                &p->algo, ws, ws_bytes, s));
}

// out (M, N) = beta * res + inp (M, K) @ w (N, K)^T  on raw pointers; res: out itself (NULL) or a residual of
// out's type and shape.
static void mm_forward(const char *op, void *out, DType to, const void *res, const void *inp, const void *w, DType ti,
                       int64_t M, int64_t N, int64_t K, float beta, int per_expert) {
    lt_gemm(op, 1, 0, N, M, K, w, ti, K, inp, ti, K, out, to, N, res, beta, per_expert);
}
// dinp (M, K) [+]= dout (M, N) @ w (N, K)
static void mm_dinp(const char *op, void *dinp, DType to, const void *dout, const void *w, DType ti, int64_t M,
                    int64_t N, int64_t K, float beta, int per_expert) {
    lt_gemm(op, 0, 0, K, M, N, w, ti, K, dout, ti, N, dinp, to, K, NULL, beta, per_expert);
}
// dw (N, K) += dout (M, N)^T @ inp (M, K)
static void mm_dw(const char *op, void *dw, DType to, const void *dout, const void *inp, DType ti, int64_t M,
                  int64_t N, int64_t K, int per_expert) {
    lt_gemm(op, 0, 1, K, N, M, inp, ti, K, dout, ti, N, dw, to, K, NULL, 1.0f, per_expert);
}

extern "C" void cuda_matmul_forward(Tensor out, Tensor inp, Tensor w, int accumulate) {
    const char *op = "matmul_forward";
    cuda_need_float(op, "out", &out, 0);
    cuda_need_float(op, "inp", &inp, 0);
    cuda_need_float(op, "w", &w, 2);
    cuda_same_dtype(op, "inp", &inp, "w", &w);
    int64_t M, N, K;
    cpu_matmul_shapes(op, &out, &inp, &w, &M, &N, &K);
    mm_forward(op, out.data, out.dtype, NULL, inp.data, w.data, inp.dtype, M, N, K, accumulate ? 1.0f : 0.0f, 0);
}

// out = res + inp @ w^T: cuBLASLt with C = res and D = out (beta 1), one GEMM. The checks are matmul_forward's plus
// res against out (one dtype, one shape; out is res itself or does not overlap it).
extern "C" void cuda_matmul_forward_residual(Tensor out, Tensor res, Tensor inp, Tensor w) {
    const char *op = "matmul_forward_residual";
    cuda_need_float(op, "out", &out, 0);
    cuda_need_float(op, "res", &res, 0);
    cuda_need_float(op, "inp", &inp, 0);
    cuda_need_float(op, "w", &w, 2);
    cuda_same_dtype(op, "inp", &inp, "w", &w);
    cuda_same_dtype(op, "res", &res, "out", &out);
    int64_t M, N, K;
    cpu_matmul_residual_shapes(op, &out, &res, &inp, &w, &M, &N, &K);
    mm_forward(op, out.data, out.dtype, res.data, inp.data, w.data, inp.dtype, M, N, K, 1.0f, 0);
}

extern "C" void cuda_matmul_backward(Tensor dinp, Tensor dw, Tensor dout, Tensor inp, Tensor w, int accumulate_dinp) {
    const char *op = "matmul_backward";
    cuda_need_float(op, "dout", &dout, 0);
    cuda_need_float(op, "inp", &inp, 0);
    cuda_need_float(op, "w", &w, 2);
    int64_t M = cpu_rows(&inp), K = cpu_cols(&inp), N = w.shape[0];
    cpu_agree(op, "inp", &inp, K, "w", &w, w.shape[1], "K");
    cpu_agree(op, "dout", &dout, cpu_rows(&dout), "inp", &inp, M, "M");
    cpu_agree(op, "dout", &dout, cpu_cols(&dout), "w", &w, N, "N");
    if (dinp.data) {
        cuda_need_float(op, "dinp", &dinp, 0);
        cuda_same_dtype(op, "dout", &dout, "w", &w);
        cpu_agree(op, "dinp", &dinp, cpu_rows(&dinp), "inp", &inp, M, "M");
        cpu_agree(op, "dinp", &dinp, cpu_cols(&dinp), "inp", &inp, K, "K");
        mm_dinp(op, dinp.data, dinp.dtype, dout.data, w.data, dout.dtype, M, N, K, accumulate_dinp ? 1.0f : 0.0f,
                0);
    }
    if (dw.data) {
        cuda_need_float(op, "dw", &dw, 2);
        cuda_same_dtype(op, "dout", &dout, "inp", &inp);
        cpu_agree(op, "dw", &dw, dw.shape[0], "w", &w, N, "N");
        cpu_agree(op, "dw", &dw, dw.shape[1], "w", &w, K, "K");
        mm_dw(op, dw.data, dw.dtype, dout.data, inp.data, inp.dtype, M, N, K, 0);
    }
}

// The device table's shape. Its values are read by the kernels where they are (the one-launch grouped kernels) or
// on the host by the loop (host_offsets); comparing the two copies would cost a download per call.
static void check_offsets(const char *op, Tensor offsets, int64_t E) {
    cpu_need(op, "offsets", &offsets, DT_I32, 1);
    cpu_expect(op, "offsets", &offsets, offsets.shape[0], E + 1, "length (n_experts + 1)");
}

// The per-expert loop walks the segment table on the host: the caller's copy, or else one fetched here (a
// download, so the host waits for the plan: only the loop, i.e. F32 tensors and shapes the grouped kernels do not
// take, pays that). Its values are checked either way.
static const int32_t *host_offsets(const char *op, Tensor offsets, const int32_t *offsets_host, int64_t E, int64_t R) {
    static int32_t *fetched; // grows to the largest table seen; the backend is single-threaded
    static int64_t fetched_cap;
    if (!offsets_host) {
        if (fetched_cap < E + 1) {
            free(fetched);
            fetched = (int32_t *)xmalloc((size_t)(E + 1) * sizeof(int32_t));
            fetched_cap = E + 1;
        }
        cuda_download(fetched, offsets.data, (size_t)(E + 1) * sizeof(int32_t));
        offsets_host = fetched;
    }
    if (offsets_host[0] != 0) die("%s: offsets_host[0] = %d, expected 0", op, offsets_host[0]);
    for (int64_t e = 1; e <= E; e++)
        if (offsets_host[e] < offsets_host[e - 1])
            die("%s: offsets decrease at expert %lld (%d < %d)", op, (long long)e - 1, offsets_host[e],
                offsets_host[e - 1]);
    if (offsets_host[E] > R)
        die("%s: offsets end at row %d but the input has %lld rows", op, offsets_host[E], (long long)R);
    return offsets_host;
}

// The argument checks of grouped_matmul_forward (as the cpu backend's); R, K, E, N from the tensors.
static void grouped_forward_check(const char *op, Tensor out, Tensor inp, Tensor w, Tensor offsets,
                                  const int32_t *offsets_host) {
    cuda_need_float(op, "out", &out, 2);
    cuda_need_float(op, "inp", &inp, 2);
    cuda_need_float(op, "w", &w, 3);
    cuda_same_dtype(op, "inp", &inp, "w", &w);
    int64_t R = inp.shape[0], K = inp.shape[1], E = w.shape[0], N = w.shape[1];
    cpu_agree(op, "inp", &inp, K, "w", &w, w.shape[2], "K");
    cpu_agree(op, "out", &out, out.shape[0], "inp", &inp, R, "rows");
    cpu_agree(op, "out", &out, out.shape[1], "w", &w, N, "N");
    check_offsets(op, offsets, E);
}

// The per-expert loop: one cuBLASLt call per non-empty expert, segments read from offsets_host.
static void grouped_forward_loop(const char *op, Tensor out, Tensor inp, Tensor w, Tensor offsets,
                                 const int32_t *offsets_host) {
    int64_t K = inp.shape[1], E = w.shape[0], N = w.shape[1];
    offsets_host = host_offsets(op, offsets, offsets_host, E, inp.shape[0]);
    const size_t ei = dtype_size(inp.dtype), eo = dtype_size(out.dtype);
    for (int64_t e = 0; e < E; e++) {
        int64_t r0 = offsets_host[e], rows = offsets_host[e + 1] - r0;
        if (rows <= 0) continue;
        mm_forward(op, (char *)out.data + r0 * N * eo, out.dtype, NULL, (const char *)inp.data + r0 * K * ei,
                   (const char *)w.data + e * N * K * ei, inp.dtype, rows, N, K, 0.0f, 1);
    }
}

// BF16 inputs go to the one-launch grouped kernel (cuda_grouped_gemm.cu) unless cuda_gg_supported says no: N or K
// not a multiple of 8, a pointer not 16-byte aligned (a view starting mid-row, say), or sizes past its int32
// indexing. Those, and F32 inputs, take the loop.
extern "C" void cuda_grouped_matmul_forward(Tensor out, Tensor inp, Tensor w, Tensor offsets,
                                            const int32_t *offsets_host) {
    const char *op = "grouped_matmul_forward";
    grouped_forward_check(op, out, inp, w, offsets, offsets_host);
    const void *ptrs[3] = {out.data, inp.data, w.data};
    if (inp.dtype == DT_BF16 && cuda_gg_supported(inp.shape[0], w.shape[0], w.shape[1], w.shape[2], ptrs, 3)) {
        if (cuda_gg_wg_selected()) cuda_gg_wg_forward(out, inp, w, offsets);
        else cuda_gg_forward(out, inp, w, offsets);
    } else {
        grouped_forward_loop(op, out, inp, w, offsets, offsets_host);
    }
}

extern "C" void cuda_grouped_matmul_forward_loop(Tensor out, Tensor inp, Tensor w, Tensor offsets,
                                                 const int32_t *offsets_host) {
    const char *op = "grouped_matmul_forward";
    grouped_forward_check(op, out, inp, w, offsets, offsets_host);
    grouped_forward_loop(op, out, inp, w, offsets, offsets_host);
}

static void grouped_backward_check(const char *op, Tensor dinp, Tensor dw, Tensor dout, Tensor inp, Tensor w,
                                   Tensor offsets, const int32_t *offsets_host) {
    cuda_need_float(op, "dout", &dout, 2);
    cuda_need_float(op, "inp", &inp, 2);
    cuda_need_float(op, "w", &w, 3);
    int64_t R = inp.shape[0], K = inp.shape[1], E = w.shape[0], N = w.shape[1];
    cpu_agree(op, "inp", &inp, K, "w", &w, w.shape[2], "K");
    cpu_agree(op, "dout", &dout, dout.shape[0], "inp", &inp, R, "rows");
    cpu_agree(op, "dout", &dout, dout.shape[1], "w", &w, N, "N");
    check_offsets(op, offsets, E);
    if (dinp.data) {
        cuda_need_float(op, "dinp", &dinp, 2);
        cuda_same_dtype(op, "dout", &dout, "w", &w);
        cpu_agree(op, "dinp", &dinp, dinp.shape[0], "inp", &inp, R, "rows");
        cpu_agree(op, "dinp", &dinp, dinp.shape[1], "inp", &inp, K, "K");
    }
    if (dw.data) {
        cuda_need_float(op, "dw", &dw, 3);
        cuda_same_dtype(op, "dout", &dout, "inp", &inp);
        for (int i = 0; i < 3; i++) cpu_agree(op, "dw", &dw, dw.shape[i], "w", &w, w.shape[i], "shape");
    }
}

// The per-expert loop for whichever of dinp and dw has data; accumulate_dinp: dinp += (cuBLASLt's beta = 1).
static void grouped_backward_loop(const char *op, Tensor dinp, Tensor dw, Tensor dout, Tensor inp, Tensor w,
                                  Tensor offsets, const int32_t *offsets_host, int accumulate_dinp) {
    int64_t K = inp.shape[1], E = w.shape[0], N = w.shape[1];
    offsets_host = host_offsets(op, offsets, offsets_host, E, inp.shape[0]);
    const size_t ea = dtype_size(inp.dtype), ew = dtype_size(w.dtype), eg = dtype_size(dout.dtype);
    for (int64_t e = 0; e < E; e++) {
        int64_t r0 = offsets_host[e], rows = offsets_host[e + 1] - r0;
        if (rows <= 0) continue;
        const char *g = (const char *)dout.data + r0 * N * eg;
        if (dinp.data)
            mm_dinp(op, (char *)dinp.data + r0 * K * dtype_size(dinp.dtype), dinp.dtype, g,
                    (const char *)w.data + e * N * K * ew, dout.dtype, rows, N, K, accumulate_dinp ? 1.0f : 0.0f, 1);
        if (dw.data)
            mm_dw(op, (char *)dw.data + e * N * K * dtype_size(dw.dtype), dw.dtype, g,
                  (const char *)inp.data + r0 * K * ea, inp.dtype, rows, N, K, 1);
    }
}

// dinp and dw go to the grouped kernels independently: dinp when dout and w are BF16, dw when dout and inp are BF16
// and dw is F32 (a BF16 dw takes the loop), each subject to cuda_gg_supported (see the forward).
extern "C" void cuda_grouped_matmul_backward(Tensor dinp, Tensor dw, Tensor dout, Tensor inp, Tensor w, Tensor offsets,
                                             const int32_t *offsets_host, int accumulate_dinp) {
    const char *op = "grouped_matmul_backward";
    grouped_backward_check(op, dinp, dw, dout, inp, w, offsets, offsets_host);
    const int64_t R = inp.shape[0], E = w.shape[0], N = w.shape[1], K = w.shape[2];
    Tensor loop_dinp = dinp, loop_dw = dw; // what is left for the loop
    const int wg = cuda_gg_wg_selected();
    if (dinp.data && dout.dtype == DT_BF16) {
        const void *ptrs[3] = {dinp.data, dout.data, w.data};
        if (cuda_gg_supported(R, E, N, K, ptrs, 3)) {
            if (wg) cuda_gg_wg_dinp(dinp, dout, w, offsets, accumulate_dinp);
            else cuda_gg_dinp(dinp, dout, w, offsets, accumulate_dinp);
            loop_dinp.data = NULL;
        }
    }
    if (dw.data && dout.dtype == DT_BF16 && dw.dtype == DT_F32) {
        const void *ptrs[3] = {dw.data, dout.data, inp.data};
        if (cuda_gg_supported(R, E, N, K, ptrs, 3)) {
            if (wg) cuda_gg_wg_dw(dw, dout, inp, offsets);
            else cuda_gg_dw(dw, dout, inp, offsets);
            loop_dw.data = NULL;
        }
    }
    if (loop_dinp.data || loop_dw.data)
        grouped_backward_loop(op, loop_dinp, loop_dw, dout, inp, w, offsets, offsets_host,
                              accumulate_dinp);
}

extern "C" void cuda_grouped_matmul_dinp_pair(Tensor dinp, Tensor dout_a, Tensor wa, Tensor dout_b, Tensor wb,
                                              Tensor offsets, const int32_t *offsets_host) {
    const char *op = "grouped_matmul_dinp_pair";
    cuda_need_float(op, "dinp", &dinp, 2);
    cuda_need_float(op, "dout_a", &dout_a, 2);
    cuda_need_float(op, "dout_b", &dout_b, 2);
    cuda_need_float(op, "wa", &wa, 3);
    cuda_need_float(op, "wb", &wb, 3);
    cuda_same_dtype(op, "dout_a", &dout_a, "wa", &wa);
    cuda_same_dtype(op, "dout_b", &dout_b, "wa", &wa);
    cuda_same_dtype(op, "wb", &wb, "wa", &wa);
    int64_t R, E, N, K;
    cpu_dinp_pair_shapes(op, &dinp, &dout_a, &wa, &dout_b, &wb, &R, &E, &N, &K);
    check_offsets(op, offsets, E);
    const void *ptrs[5] = {dinp.data, dout_a.data, wa.data, dout_b.data, wb.data};
    if (dout_a.dtype == DT_BF16 && cuda_gg_wg_selected() && cuda_gg_supported(R, E, N, K, ptrs, 5)) {
        cuda_gg_wg_dinp_pair(dinp, dout_a, wa, dout_b, wb, offsets);
        return;
    }
    // Elsewhere: the two products through grouped_matmul_backward, the second accumulated (dinp stands for the
    // input there: only its shape (R, K) is read when no dw is asked for).
    const Tensor none = {0};
    cuda_grouped_matmul_backward(dinp, none, dout_a, dinp, wa, offsets, offsets_host, 0);
    cuda_grouped_matmul_backward(dinp, none, dout_b, dinp, wb, offsets, offsets_host, 1);
}

extern "C" void cuda_grouped_matmul_backward_loop(Tensor dinp, Tensor dw, Tensor dout, Tensor inp, Tensor w,
                                                  Tensor offsets, const int32_t *offsets_host, int accumulate_dinp) {
    const char *op = "grouped_matmul_backward";
    grouped_backward_check(op, dinp, dw, dout, inp, w, offsets, offsets_host);
    grouped_backward_loop(op, dinp, dw, dout, inp, w, offsets, offsets_host, accumulate_dinp);
}
