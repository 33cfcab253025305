// Causal softmax attention on the cpu, the FP32 reference for the CUDA kernel.
//   q, k (B, T, H, dqk), v (B, T, H, dv), out (B, T, H, dv), lse (B, H, T)
// Forward: for each query row, scores s_j = scale * <q_i, k_j> for j <= i, p = softmax(s), out_i = sum_j p_j v_j,
// lse_i = logsumexp(s). Backward (FlashAttention-2's formulation) recomputes p_ij = exp(s_ij - lse_i):
//   D_i = <do_i, out_i>;  dp_ij = <do_i, v_j>;  ds_ij = p_ij (dp_ij - D_i);
//   dv_j = sum_i p_ij do_i;  dq_i = scale sum_j ds_ij k_j;  dk_j = scale sum_i ds_ij q_i.
//
// Layout of the work: threads take whole (b, h) pairs (so one thread alone writes that pair's outputs, and which
// thread it is does not change any sum: results are bit-identical for any thread count). A pair's (T, d) slices are
// first copied into contiguous zero-padded buffers (q, k, v, dO by rows, k and v also transposed), so every product
// below is a small matrix product with unit-stride rows, done by one 4 x 8 register tile (as in cpu_matmul.c):
//   forward, per strip of 4 query rows: S (4, kend) = Q K^T, row softmax in place, O (4, dv) = P V;
//   backward, per block of BR query rows, per strip of 4: S = Q K^T -> P, dP = dO V^T -> dS (in place),
//   dQ (4, dqk) = dS K; then for the block dK += dS^T Q and dV += P^T dO into per-pair accumulators (block order).
// kend = the strip's last row + 1 rounded up to 8: columns past the diagonal are computed but masked to exactly 0,
// so the causal triangle costs at most 7 extra columns per row. Every sum runs in an order fixed by T alone.
#include "kernels/cpu/cpu_ops.h"
#include "train/check.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

// BR: query rows per backward block (the dK, dV accumulators are read and written once per block, so larger blocks
// mean fewer passes over them; the two (BR, T) panels are 2 x 128 KB at T = 512, within L2).
enum { BR = 64, TR = 4, TC = 8 };
// Tp (a multiple of BR) must hold every strip's kend (a multiple of TC), and strips must tile blocks.
_Static_assert(BR % TC == 0 && TC % TR == 0, "BR must be a multiple of TC, TC of TR");

static inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// exp(x) in a form GCC vectorizes (glibc's expf is a call per element, which in the forward took as long as all
// the multiply-adds): x = n ln2 + r with |r| <= ln2 / 2, e^r by Cephes' degree-7 polynomial, 2^n built in the
// exponent bits; within 1.4 ulp of exp on [-87, 88] (measured over every float there). Below -87 (e^x < 1.7e-38,
// beside softmax sums >= 1) it returns 0, above 88 +inf, NaN stays NaN. The range selects are integer masks on the
// bit patterns: float comparisons may trap (-ftrapping-math), so a select on one is a branch and stops GCC from
// vectorizing the loop.
static inline float exp_vec(float x) {
    const float magic = 12582912.0f; // 1.5 * 2^23: adding it rounds to an integer, left in the low mantissa bits
    const float t = x * 1.44269504088896341f + magic, n = t - magic;
    const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f; // ln2 in two parts: n * 0.693359375 is exact
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    uint32_t tb, xb, yb;
    memcpy(&tb, &t, sizeof tb);
    memcpy(&xb, &x, sizeof xb);
    tb = (tb << 23) + 0x3f800000u; // t's mantissa holds 2^22 + n; shifted into the exponent field: 2^n
    float two_n, y;
    memcpy(&two_n, &tb, sizeof two_n);
    y = p * two_n;
    memcpy(&yb, &y, sizeof yb);
    // All-ones masks: x is NaN; x > 88 (as signed ints, positive floats order like their bits; +inf included);
    // x < -87 (negative floats: larger bits, larger magnitude; -inf included).
    const uint32_t nan = -(uint32_t)((xb & 0x7fffffffu) > 0x7f800000u);
    const uint32_t big = -(uint32_t)((int32_t)xb > (int32_t)0x42b00000), small = -(uint32_t)(xb > 0xc2ae0000u);
    yb = (yb & ~(nan | big | small)) | (big & ~nan & 0x7f800000u) | (nan & (xb | 0x00400000u));
    memcpy(&y, &yb, sizeof y);
    return y;
}

// c (4 x 8, row stride ldc) = (or += with accumulate) a (4 x n) . b (n x 8), where a[r][p] = a[r * ar + p * ac]
// (so a may be a transposed view) and b[p][j] = b[p * ldb + j]. Four 1-D accumulators and a fully unrolled column
// loop: GCC keeps the 32 sums in 8 SSE registers across the p loop (a 2-D array went through memory). Not inlined:
// where a's column stride was the constant 1, GCC vectorized the p loop instead, with transposes and spills, at a
// third of the speed.
__attribute__((noinline)) static void tile_4x8(int64_t n, const float *a, int64_t ar, int64_t ac, const float *b,
                                               int64_t ldb, float *c, int64_t ldc, int accumulate) {
    float c0[TC] = {0}, c1[TC] = {0}, c2[TC] = {0}, c3[TC] = {0};
    for (int64_t p = 0; p < n; p++) {
        const float *bp = b + p * ldb, *ap = a + p * ac;
        const float a0 = ap[0], a1 = ap[ar], a2 = ap[2 * ar], a3 = ap[3 * ar];
#pragma GCC unroll 8
        for (int j = 0; j < TC; j++) {
            c0[j] += a0 * bp[j];
            c1[j] += a1 * bp[j];
            c2[j] += a2 * bp[j];
            c3[j] += a3 * bp[j];
        }
    }
    // One store loop with the choice inside: written as two loops under an if, GCC stopped vectorizing the p loop.
    float *r0 = c, *r1 = c + ldc, *r2 = c + 2 * ldc, *r3 = c + 3 * ldc;
    for (int j = 0; j < TC; j++) {
        r0[j] = accumulate ? r0[j] + c0[j] : c0[j];
        r1[j] = accumulate ? r1[j] + c1[j] : c1[j];
        r2[j] = accumulate ? r2[j] + c2[j] : c2[j];
        r3[j] = accumulate ? r3[j] + c3[j] : c3[j];
    }
}

// One thread's buffers for one (b, h) pair at a time. Rows are padded to Tp (a multiple of BR), head dims to
// multiples of 8 (Dp, DVp); the inputs' padding (q, k, v, g, kt, vt) is zeroed once (calloc) and never written, so
// padded keys score 0 (and are masked) and padded columns add nothing.
typedef struct {
    int64_t T, Tp, D, Dp, DV, DVp;
    float *q, *k, *v, *g; // (Tp, Dp) q and k, (Tp, DVp) v and dO (g)
    float *kt, *vt;       // (D, Tp), (DV, Tp) transposed k and v
    float *dk, *dv;       // (Tp, Dp), (Tp, DVp) backward accumulators
    float *s, *ds;        // (BR, Tp) panels: scores then P; dP then dS
    float *blk;           // (TR, max(Dp, DVp)) one strip's output rows
    float *delta;         // (Tp) D_i = <dO_i, out_i>
} Work;

static Work work_alloc(int64_t T, int64_t D, int64_t DV, int backward) {
    Work w = {.T = T, .Tp = round_up(T > 0 ? T : 1, BR), .D = D, .Dp = round_up(D, TC), .DV = DV,
              .DVp = round_up(DV, TC)};
    const size_t Tp = (size_t)w.Tp, Dp = (size_t)w.Dp, DVp = (size_t)w.DVp, sz = sizeof(float);
    w.q = xcalloc(Tp * Dp, sz);
    w.kt = xcalloc((size_t)D * Tp, sz);
    w.s = xcalloc((backward ? BR : TR) * Tp, sz);
    w.blk = xcalloc(TR * (Dp > DVp ? Dp : DVp), sz);
    if (backward) {
        w.k = xcalloc(Tp * Dp, sz);
        w.g = xcalloc(Tp * DVp, sz);
        w.vt = xcalloc((size_t)DV * Tp, sz);
        w.dk = xcalloc(Tp * Dp, sz);
        w.dv = xcalloc(Tp * DVp, sz);
        w.ds = xcalloc(BR * Tp, sz);
        w.delta = xcalloc(Tp, sz);
    } else {
        w.v = xcalloc(Tp * DVp, sz);
    }
    return w;
}

static void work_free(Work *w) {
    float *all[] = {w->q, w->k, w->v, w->g, w->kt, w->vt, w->dk, w->dv, w->s, w->ds, w->blk, w->delta};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) free(all[i]);
}

// The (b, h) slice of src (B, T, H, d) -- row i at src + ((b T + i) H + h) d -- into dst (T, d) with row stride
// ld, or transposed into dst (d, T) with row stride ld.
static void slice_load(float *dst, int64_t ld, const float *src, int64_t b, int64_t h, int64_t T, int64_t H,
                       int64_t d) {
    for (int64_t i = 0; i < T; i++) memcpy(dst + i * ld, src + ((b * T + i) * H + h) * d, (size_t)d * sizeof(float));
}

static void slice_load_t(float *dst, int64_t ld, const float *src, int64_t b, int64_t h, int64_t T, int64_t H,
                         int64_t d) {
    for (int64_t i = 0; i < T; i++) {
        const float *row = src + ((b * T + i) * H + h) * d;
        for (int64_t x = 0; x < d; x++) dst[x * ld + i] = row[x];
    }
}

static void slice_store(float *dst, const float *src, int64_t ld, int64_t b, int64_t h, int64_t T, int64_t H,
                        int64_t d) {
    for (int64_t i = 0; i < T; i++) memcpy(dst + ((b * T + i) * H + h) * d, src + i * ld, (size_t)d * sizeof(float));
}

// S rows [r0, r0 + 4) x columns [0, kend) = Q K^T (unscaled) into s (row stride Tp).
static void strip_scores(const Work *w, int64_t r0, int64_t kend, float *s) {
    for (int64_t j0 = 0; j0 < kend; j0 += TC)
        tile_4x8(w->D, w->q + r0 * w->Dp, w->Dp, 1, w->kt + j0, w->Tp, s + j0, w->Tp, 0);
}

static void forward_pair(Work *w, float *od, float *ld, const float *qd, const float *kd, const float *vd,
                         int64_t b, int64_t h, int64_t H, float scale) {
    const int64_t T = w->T, Tp = w->Tp, DV = w->DV, DVp = w->DVp;
    slice_load(w->q, w->Dp, qd, b, h, T, H, w->D);
    slice_load_t(w->kt, Tp, kd, b, h, T, H, w->D);
    slice_load(w->v, DVp, vd, b, h, T, H, DV);
    float *lse = ld + (b * H + h) * T;
    for (int64_t r0 = 0; r0 < T; r0 += TR) {
        const int64_t kend = (r0 + TR + TC - 1) / TC * TC;
        strip_scores(w, r0, kend, w->s);
        float inv[TR] = {0};
        for (int64_t r = 0; r < TR && r0 + r < T; r++) {
            const int64_t i = r0 + r;
            float *p = w->s + r * Tp, mx = -INFINITY, sum = 0.0f;
#pragma omp simd reduction(max : mx)
            for (int64_t j = 0; j <= i; j++) {
                p[j] *= scale;
                mx = p[j] > mx ? p[j] : mx;
            }
#pragma omp simd reduction(+ : sum)
            for (int64_t j = 0; j <= i; j++) {
                p[j] = exp_vec(p[j] - mx);
                sum += p[j];
            }
            for (int64_t j = i + 1; j < kend; j++) p[j] = 0.0f;
            inv[r] = 1.0f / sum;
            lse[i] = mx + logf(sum);
        }
        // Rows past T (the last strip's padding) hold raw scores: their outputs are dropped below.
        for (int64_t c0 = 0; c0 < DVp; c0 += TC) tile_4x8(kend, w->s, Tp, 1, w->v + c0, DVp, w->blk + c0, DVp, 0);
        for (int64_t r = 0; r < TR && r0 + r < T; r++) {
            float *o = od + ((b * T + r0 + r) * H + h) * DV;
            for (int64_t c = 0; c < DV; c++) o[c] = w->blk[r * DVp + c] * inv[r];
        }
    }
}

// dq for the pair's rows, and its dk, dv (whole, from the accumulators at the end).
static void backward_pair(Work *w, float *dqd, float *dkd, float *dvd, const float *gd, const float *qd,
                          const float *kd, const float *vd, const float *od, const float *ld, int64_t b, int64_t h,
                          int64_t H, float scale) {
    const int64_t T = w->T, Tp = w->Tp, D = w->D, Dp = w->Dp, DV = w->DV, DVp = w->DVp;
    slice_load(w->q, Dp, qd, b, h, T, H, D);
    slice_load(w->k, Dp, kd, b, h, T, H, D);
    slice_load_t(w->kt, Tp, kd, b, h, T, H, D);
    slice_load_t(w->vt, Tp, vd, b, h, T, H, DV);
    slice_load(w->g, DVp, gd, b, h, T, H, DV);
    const float *lse = ld + (b * H + h) * T;
    for (int64_t i = 0; i < T; i++) {
        const float *o = od + ((b * T + i) * H + h) * DV, *g = w->g + i * DVp;
        float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
        for (int64_t c = 0; c < DV; c++) acc += g[c] * o[c];
        w->delta[i] = acc;
    }
    memset(w->dk, 0, (size_t)(Tp * Dp) * sizeof(float));
    memset(w->dv, 0, (size_t)(Tp * DVp) * sizeof(float));
    for (int64_t i0 = 0; i0 < T; i0 += BR) {
        const int64_t i1 = i0 + BR < T ? i0 + BR : T;
        for (int64_t r0 = i0; r0 < i1; r0 += TR) {
            const int64_t kend = (r0 + TR + TC - 1) / TC * TC;
            float *s = w->s + (r0 - i0) * Tp, *ds = w->ds + (r0 - i0) * Tp;
            strip_scores(w, r0, kend, s);
            for (int64_t j0 = 0; j0 < kend; j0 += TC)
                tile_4x8(DV, w->g + r0 * DVp, DVp, 1, w->vt + j0, Tp, ds + j0, Tp, 0);
            for (int64_t r = 0; r < TR && r0 + r < T; r++) {
                const int64_t i = r0 + r;
                const float li = lse[i], di = w->delta[i];
                float *p = s + r * Tp, *dp = ds + r * Tp;
#pragma omp simd
                for (int64_t j = 0; j <= i; j++) {
                    const float pij = exp_vec(scale * p[j] - li);
                    p[j] = pij;
                    dp[j] = pij * (dp[j] - di) * scale;
                }
                for (int64_t j = i + 1; j < kend; j++) p[j] = dp[j] = 0.0f;
            }
            // dQ for the strip is complete here (its row of dS spans every key it sees); padding rows are dropped.
            for (int64_t c0 = 0; c0 < Dp; c0 += TC) tile_4x8(kend, ds, Tp, 1, w->k + c0, Dp, w->blk + c0, Dp, 0);
            for (int64_t r = 0; r < TR && r0 + r < T; r++)
                memcpy(dqd + ((b * T + r0 + r) * H + h) * D, w->blk + r * Dp, (size_t)D * sizeof(float));
        }
        // dK, dV rows j < i1 += this block's rows i in [max(i0, j), i1): rows i < j are masked zeros and skipped;
        // rows from T on (padding of the last strip) are not included.
        for (int64_t j0 = 0; j0 < i1; j0 += TR) {
            const int64_t is = i0 > j0 ? i0 : j0, n = i1 - is;
            const float *pa = w->s + (is - i0) * Tp + j0, *dsa = w->ds + (is - i0) * Tp + j0;
            for (int64_t c0 = 0; c0 < Dp; c0 += TC)
                tile_4x8(n, dsa, 1, Tp, w->q + is * Dp + c0, Dp, w->dk + j0 * Dp + c0, Dp, 1);
            for (int64_t c0 = 0; c0 < DVp; c0 += TC)
                tile_4x8(n, pa, 1, Tp, w->g + is * DVp + c0, DVp, w->dv + j0 * DVp + c0, DVp, 1);
        }
    }
    slice_store(dkd, w->dk, Dp, b, h, T, H, D);
    slice_store(dvd, w->dv, DVp, b, h, T, H, DV);
}

static void check_qkv(const char *op, const Tensor *q, const Tensor *k, const Tensor *v) {
    cpu_need(op, "q", q, DT_F32, 4);
    cpu_need(op, "k", k, DT_F32, 4);
    cpu_need(op, "v", v, DT_F32, 4);
    static const char *dims[4] = {"B", "T", "H", "head dim"};
    for (int i = 0; i < 4; i++) cpu_agree(op, "q", q, q->shape[i], "k", k, k->shape[i], dims[i]);
    for (int i = 0; i < 3; i++) cpu_agree(op, "v", v, v->shape[i], "q", q, q->shape[i], dims[i]);
}

static void check_like(const char *op, const char *name, const Tensor *t, const Tensor *ref, const char *refname) {
    cpu_need(op, name, t, DT_F32, 4);
    static const char *dims[4] = {"B", "T", "H", "head dim"};
    for (int i = 0; i < 4; i++) cpu_agree(op, name, t, t->shape[i], refname, ref, ref->shape[i], dims[i]);
}

static void check_lse(const char *op, const Tensor *lse, const Tensor *q) {
    cpu_need(op, "lse", lse, DT_F32, 3);
    cpu_agree(op, "lse", lse, lse->shape[0], "q", q, q->shape[0], "B");
    cpu_agree(op, "lse", lse, lse->shape[1], "q", q, q->shape[2], "H");
    cpu_agree(op, "lse", lse, lse->shape[2], "q", q, q->shape[1], "T");
}

void cpu_attention_forward(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v, float scale) {
    const char *op = "attention_forward";
    check_qkv(op, &q, &k, &v);
    check_like(op, "out", &out, &v, "v");
    check_lse(op, &lse, &q);
    const int64_t B = q.shape[0], T = q.shape[1], H = q.shape[2], D = q.shape[3], DV = v.shape[3];
#pragma omp parallel if (B * H > 1)
    {
        Work w = work_alloc(T, D, DV, 0);
        // Pairs go to whichever thread is free (a thread descheduled on a busy machine holds up one pair, not a fixed
        // share); a pair's arithmetic is the same on any thread.
#pragma omp for schedule(dynamic, 1)
        for (int64_t bh = 0; bh < B * H; bh++)
            forward_pair(&w, out.data, lse.data, q.data, k.data, v.data, bh / H, bh % H, H, scale);
        work_free(&w);
    }
}

void cpu_attention_backward(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out,
                            Tensor lse, float scale) {
    const char *op = "attention_backward";
    check_qkv(op, &q, &k, &v);
    check_like(op, "out", &out, &v, "v");
    check_like(op, "dout", &dout, &v, "v");
    check_like(op, "dq", &dq, &q, "q");
    check_like(op, "dk", &dk, &k, "k");
    check_like(op, "dv", &dv, &v, "v");
    check_lse(op, &lse, &q);
    const int64_t B = q.shape[0], T = q.shape[1], H = q.shape[2], D = q.shape[3], DV = v.shape[3];
#pragma omp parallel if (B * H > 1)
    {
        Work w = work_alloc(T, D, DV, 1);
#pragma omp for schedule(dynamic, 1)
        for (int64_t bh = 0; bh < B * H; bh++)
            backward_pair(&w, dq.data, dk.data, dv.data, dout.data, q.data, k.data, v.data, out.data, lse.data,
                          bh / H, bh % H, H, scale);
        work_free(&w);
    }
}
