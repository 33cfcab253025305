// Micro-benchmark of the cuda backend's heavy ops at the bench-1gpu shapes (dim 1536, 12 heads, qk head 192, v head
// 128, micro-batch 4 x 4096 tokens): dense GEMMs (forward, dgrad, wgrad) in FP32 and BF16 through cuBLASLt (and the
// residual forward, matmul_forward_residual, against a copy of the stream and an accumulating GEMM), the
// grouped (MoE) GEMMs (the one-launch BF16 kernels, mma.sync and wgmma, against the per-expert cuBLASLt loop, with
// balanced and skewed rows per expert), causal attention forward and backward (milliseconds and TFLOP/s), and the
// memory-bound ops, each with its v1 and v2 kernels (DSV3_MEMOPS; milliseconds and GB/s). Asserts nothing (timings
// vary from machine to machine).
// Usage: build/bench_ops_gpu [iterations] [attention|grouped|memops]   (only those rows)
//
// FLOP counts: a GEMM is 2 M N K. Causal attention counts the visible half of the score matrix: forward
// 2 B H (T^2 / 2) (D + DV) (QK^T and PV), backward 2 B H (T^2 / 2) (3 D + 2 DV) (QK^T recomputed, dP = dO V^T,
// dV = P^T dO, dQ = dS K, dK = dS^T Q); the kernel's own recomputation (dQ in a second pass) is not counted.
#include "kernels/cuda/cuda_grouped_gemm.h"
#include "kernels/ops.h"
#include "train/check.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const Backend *G;
static int g_iters = 10;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// Device buffer of n random values in [-amp, amp) stored as dt.
static void *rand_dev(int64_t n, DType dt, float amp) {
    size_t es = dtype_size(dt);
    unsigned char *h = xmalloc((size_t)n * es);
    uint64_t s = 0x9E3779B97F4A7C15ull ^ (uint64_t)n;
    for (int64_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        float v = amp * ((float)(s >> 40) / (float)(1 << 24) * 2.0f - 1.0f);
        if (dt == DT_F32) memcpy(h + i * 4, &v, 4);
        else {
            uint16_t b = bf16_from_f32(v);
            memcpy(h + i * 2, &b, 2);
        }
    }
    void *d = G->alloc((size_t)n * es);
    G->upload(d, h, (size_t)n * es);
    free(h);
    return d;
}

typedef void (*BenchFn)(void *ctx);

// Mean seconds per call after 2 warm-up calls.
static double time_it(BenchFn fn, void *ctx) {
    for (int i = 0; i < 2; i++) fn(ctx);
    G->synchronize();
    double t0 = now_s();
    for (int i = 0; i < g_iters; i++) fn(ctx);
    G->synchronize();
    return (now_s() - t0) / g_iters;
}

typedef struct { Tensor out, inp, w, dinp, dw, dout; } MmCtx;
static void mm_fwd(void *c) { MmCtx *m = c; G->matmul_forward(m->out, m->inp, m->w, 0); }
static void mm_dgrad(void *c) {
    MmCtx *m = c;
    G->matmul_backward(m->dinp, tensor_2d(NULL, DT_F32, m->w.shape[0], m->w.shape[1]), m->dout, m->inp, m->w, 0);
}
static void mm_wgrad(void *c) {
    MmCtx *m = c;
    G->matmul_backward(tensor_2d(NULL, m->inp.dtype, m->inp.shape[0], m->inp.shape[1]), m->dw, m->dout, m->inp, m->w, 0);
}

static void bench_gemm(const char *what, int64_t M, int64_t N, int64_t K, DType dt) {
    MmCtx m;
    m.inp = tensor_2d(rand_dev(M * K, dt, 1.0f), dt, M, K);
    m.w = tensor_2d(rand_dev(N * K, dt, 1.0f), dt, N, K);
    m.out = tensor_2d(G->alloc((size_t)(M * N) * dtype_size(dt)), dt, M, N);
    m.dout = tensor_2d(rand_dev(M * N, dt, 1.0f), dt, M, N);
    m.dinp = tensor_2d(G->alloc((size_t)(M * K) * dtype_size(dt)), dt, M, K);
    m.dw = tensor_2d(G->alloc((size_t)(N * K) * 4), DT_F32, N, K);
    double fl = 2.0 * M * N * K;
    double tf = time_it(mm_fwd, &m), td = time_it(mm_dgrad, &m), tw = time_it(mm_wgrad, &m);
    printf("gemm %-22s %-4s M %6lld N %6lld K %6lld | fwd %7.3f ms %6.1f TFLOP/s | dgrad %7.3f ms %6.1f | wgrad %7.3f ms "
           "%6.1f\n",
           what, dt == DT_BF16 ? "bf16" : "f32", (long long)M, (long long)N, (long long)K, tf * 1e3, fl / tf * 1e-12,
           td * 1e3, fl / td * 1e-12, tw * 1e3, fl / tw * 1e-12);
    G->free(m.inp.data), G->free(m.w.data), G->free(m.out.data), G->free(m.dout.data), G->free(m.dinp.data);
    G->free(m.dw.data);
}

// The residual add of a branch's output projection, x_out (M, N) F32 = x_in + inp (M, K) @ w^T (BF16): a copy of
// the stream then an accumulating GEMM, against matmul_forward_residual (x_in as cuBLASLt's C, one GEMM).
typedef struct { Tensor out, res, inp, w; } ResCtx;
static void res_copy_acc(void *c) {
    ResCtx *r = c;
    G->copy(r->out.data, r->res.data, (size_t)tensor_numel(&r->out) * sizeof(float));
    G->matmul_forward(r->out, r->inp, r->w, 1);
}
static void res_fused(void *c) { ResCtx *r = c; G->matmul_forward_residual(r->out, r->res, r->inp, r->w); }

static void bench_gemm_residual(const char *what, int64_t M, int64_t N, int64_t K) {
    ResCtx r;
    r.inp = tensor_2d(rand_dev(M * K, DT_BF16, 1.0f), DT_BF16, M, K);
    r.w = tensor_2d(rand_dev(N * K, DT_BF16, 1.0f), DT_BF16, N, K);
    r.res = tensor_2d(rand_dev(M * N, DT_F32, 1.0f), DT_F32, M, N);
    r.out = tensor_2d(G->alloc((size_t)(M * N) * 4), DT_F32, M, N);
    const double fl = 2.0 * M * N * K, t0 = time_it(res_copy_acc, &r), t1 = time_it(res_fused, &r);
    printf("gemm %-22s bf16 -> f32 + res M %6lld N %6lld K %6lld | copy + acc %7.3f ms %6.1f TFLOP/s | "
           "matmul_forward_residual %7.3f ms %6.1f | saved %.3f ms\n", what, (long long)M, (long long)N, (long long)K,
           t0 * 1e3, fl / t0 * 1e-12, t1 * 1e3, fl / t1 * 1e-12, (t0 - t1) * 1e3);
    G->free(r.inp.data), G->free(r.w.data), G->free(r.res.data), G->free(r.out.data);
}

typedef struct { Tensor out, inp, w, dinp, dw, dout, off; int32_t *off_h; } GmmCtx;
// The backend's grouped ops (BF16: the one-launch kernels that DSV3_GG selects) and the per-expert cuBLASLt loop.
static void gmm_fwd(void *c) { GmmCtx *m = c; G->grouped_matmul_forward(m->out, m->inp, m->w, m->off, m->off_h); }
static void gmm_dinp(void *c) {
    GmmCtx *m = c;
    G->grouped_matmul_backward(m->dinp, tensor_3d(NULL, DT_F32, 0, 0, 0), m->dout, m->inp, m->w, m->off, m->off_h,
                               0);
}
static void gmm_dw(void *c) {
    GmmCtx *m = c;
    G->grouped_matmul_backward(tensor_2d(NULL, DT_BF16, 0, 0), m->dw, m->dout, m->inp, m->w, m->off, m->off_h, 0);
}
// The dinp pair (the MoE gate and up input gradients as one contraction): dout @ w[e] + dout @ w[e] (the same
// operands twice: the speed does not depend on the values).
static void gmm_dinp_pair(void *c) {
    GmmCtx *m = c;
    G->grouped_matmul_dinp_pair(m->dinp, m->dout, m->w, m->dout, m->w, m->off, m->off_h);
}
static void loop_fwd(void *c) { GmmCtx *m = c; cuda_grouped_matmul_forward_loop(m->out, m->inp, m->w, m->off, m->off_h); }
static void loop_dinp(void *c) {
    GmmCtx *m = c;
    cuda_grouped_matmul_backward_loop(m->dinp, tensor_3d(NULL, DT_F32, 0, 0, 0), m->dout, m->inp, m->w, m->off,
                                      m->off_h, 0);
}
static void loop_dw(void *c) {
    GmmCtx *m = c;
    cuda_grouped_matmul_backward_loop(tensor_2d(NULL, DT_BF16, 0, 0), m->dw, m->dout, m->inp, m->w, m->off, m->off_h,
                                      0);
}

static uint64_t lcg(uint64_t *s) { return *s = *s * 6364136223846793005ull + 1442695040888963407ull; }

// Segment sizes for R rows over E experts from per-expert weights (fixed seed). balanced: weights in [0.6, 1.4)
// (+-40% around R / E). skewed, as routing early in training: experts 3, 17 and 41 (when E > 41) take about 10x
// the mean each, two experts (9 and 50) none, the others weights in [0.05, 1.95).
static void grouped_rows(int32_t *off, int E, int64_t R, int skewed) {
    double *wt = xmalloc(sizeof(double) * E), sum = 0;
    uint64_t s = 12345;
    for (int e = 0; e < E; e++) {
        const double u = (double)(lcg(&s) >> 11) * 0x1.0p-53;
        wt[e] = skewed ? 0.05 + 1.9 * u : 0.6 + 0.8 * u;
        if (skewed && (e == 9 || e == 50)) wt[e] = 0.0;
        if (skewed && (e == 3 || e == 17 || e == 41)) wt[e] = 18.0;
        sum += wt[e];
    }
    double acc = 0;
    off[0] = 0;
    for (int e = 0; e < E; e++) acc += wt[e], off[e + 1] = (int32_t)(R * (acc / sum) + 0.5);
    off[E] = (int32_t)R;
    free(wt);
}

// E experts, R routed rows in segments from grouped_rows: out (R, N) = inp (R, K) @ w[e]^T per segment,
// dinp (R, K) = dout @ w[e], dw[e] (N, K) += dout_seg^T inp_seg. Prints each product's time for the mma.sync
// kernels (DSV3_GG=mma), the wgmma kernels at both tile widths (DSV3_GG=wg, DSV3_GG_WG_BN=256 / 128), the 256-wide
// one with the bulk-copy epilogue (DSV3_GG_WG_EPI=bulk) and the per-expert cuBLASLt loop.
static void bench_grouped(const char *what, int E, int64_t R, int64_t N, int64_t K, DType dt, int skewed) {
    GmmCtx m;
    m.off_h = xmalloc(sizeof(int32_t) * (E + 1));
    grouped_rows(m.off_h, E, R, skewed);
    int32_t mn = INT32_MAX, mx = 0;
    for (int e = 0; e < E; e++) {
        int32_t r = m.off_h[e + 1] - m.off_h[e];
        mn = r < mn ? r : mn, mx = r > mx ? r : mx;
    }
    void *doff = G->alloc(sizeof(int32_t) * (E + 1));
    G->upload(doff, m.off_h, sizeof(int32_t) * (E + 1));
    m.off = tensor_1d(doff, DT_I32, E + 1);
    m.inp = tensor_2d(rand_dev(R * K, dt, 1.0f), dt, R, K);
    m.w = tensor_3d(rand_dev((int64_t)E * N * K, dt, 1.0f), dt, E, N, K);
    m.out = tensor_2d(G->alloc((size_t)(R * N) * dtype_size(dt)), dt, R, N);
    m.dout = tensor_2d(rand_dev(R * N, dt, 1.0f), dt, R, N);
    m.dinp = tensor_2d(G->alloc((size_t)(R * K) * dtype_size(dt)), dt, R, K);
    m.dw = tensor_3d(G->alloc((size_t)E * N * K * 4), DT_F32, E, N, K);
    const double fl = 2.0 * R * N * K;
    static const char *names[3] = {"fwd", "dinp", "dw"};
    static const char *sets[4][4] = {{"mma", NULL, NULL, "mma"},
                                     {"wg", "256", "direct", "wg 128x256"},
                                     {"wg", "128", NULL, "wg 128x128"},
                                     {"wg", "256", "bulk", "wg 128x256 bulk"}};
    BenchFn fn[3] = {gmm_fwd, gmm_dinp, gmm_dw}, lp[3] = {loop_fwd, loop_dinp, loop_dw};
    printf("grouped gemm %-8s %-4s E %d rows %lld %s (per expert %d..%d, max/mean %.1f) N %lld K %lld\n", what,
           dt == DT_BF16 ? "bf16" : "f32", E, (long long)R, skewed ? "skewed" : "balanced", mn, mx,
           (double)mx * E / (double)R, (long long)N, (long long)K);
    for (int i = 0; i < 3; i++) {
        printf("    %-5s", names[i]);
        for (int k = 0; k < 4; k++) {
            setenv("DSV3_GG", sets[k][0], 1);
            if (sets[k][1]) setenv("DSV3_GG_WG_BN", sets[k][1], 1);
            else unsetenv("DSV3_GG_WG_BN");
            if (sets[k][2]) setenv("DSV3_GG_WG_EPI", sets[k][2], 1);
            else unsetenv("DSV3_GG_WG_EPI");
            const double t = time_it(fn[i], &m);
            printf(" %s %7.3f ms %6.1f |", sets[k][3], t * 1e3, fl / t * 1e-12);
        }
        const double tl = time_it(lp[i], &m);
        printf(" loop %7.3f ms %6.1f TFLOP/s\n", tl * 1e3, fl / tl * 1e-12);
    }
    unsetenv("DSV3_GG"), unsetenv("DSV3_GG_WG_BN"), unsetenv("DSV3_GG_WG_EPI");
    const double tp = time_it(gmm_dinp_pair, &m); // the default kernel set
    printf("    dinp pair (2 products, default set) %7.3f ms %6.1f TFLOP/s\n", tp * 1e3, 2 * fl / tp * 1e-12);
    G->free(m.inp.data), G->free(m.w.data), G->free(m.out.data), G->free(m.dout.data), G->free(m.dinp.data);
    G->free(m.dw.data), G->free(doff), free(m.off_h);
}

typedef struct { Tensor q, k, v, out, lse, dout, dq, dk, dv; float scale; } AttnCtx;
static void attn_fwd(void *c) { AttnCtx *a = c; G->attention_forward(a->out, a->lse, a->q, a->k, a->v, a->scale); }
static void attn_bwd(void *c) {
    AttnCtx *a = c;
    G->attention_backward(a->dq, a->dk, a->dv, a->dout, a->q, a->k, a->v, a->out, a->lse, a->scale);
}

// ver: the tensor-core kernel set for BF16 (1 v1, 2 v2, 3 wg: DSV3_ATTN_FWD / DSV3_ATTN_BWD), 0 for F32.
static void bench_attention(int B, int T, int H, int D, int DV, DType dt, int ver) {
    static const char *const names[4] = {"", "v1", "v2", "wg"};
    if (ver) {
        setenv("DSV3_ATTN_FWD", names[ver], 1);
        setenv("DSV3_ATTN_BWD", names[ver], 1);
    }
    AttnCtx a;
    int64_t nq = (int64_t)B * T * H * D, nv = (int64_t)B * T * H * DV;
    size_t es = dtype_size(dt);
    a.q = tensor_4d(rand_dev(nq, dt, 2.0f), dt, B, T, H, D);
    a.k = tensor_4d(rand_dev(nq, dt, 2.0f), dt, B, T, H, D);
    a.v = tensor_4d(rand_dev(nv, dt, 1.0f), dt, B, T, H, DV);
    a.dout = tensor_4d(rand_dev(nv, dt, 1.0f), dt, B, T, H, DV);
    a.out = tensor_4d(G->alloc(nv * es), dt, B, T, H, DV);
    a.lse = tensor_3d(G->alloc((size_t)B * H * T * 4), DT_F32, B, H, T);
    a.dq = tensor_4d(G->alloc(nq * es), dt, B, T, H, D);
    a.dk = tensor_4d(G->alloc(nq * es), dt, B, T, H, D);
    a.dv = tensor_4d(G->alloc(nv * es), dt, B, T, H, DV);
    a.scale = 1.0f / sqrtf((float)D);
    double half = (double)T * T / 2.0, bh = (double)B * H;
    double ff = 2.0 * bh * half * (D + DV), fb = 2.0 * bh * half * (3.0 * D + 2.0 * DV);
    double tf = time_it(attn_fwd, &a), tb = time_it(attn_bwd, &a);
    printf("attention %-4s %-2s B %d T %d H %d D %d DV %d | fwd %8.3f ms %6.1f TFLOP/s | bwd %8.3f ms %6.1f TFLOP/s | "
           "fwd+bwd %6.1f TFLOP/s\n",
           dt == DT_BF16 ? "bf16" : "f32", names[ver], B, T, H, D, DV, tf * 1e3, ff / tf * 1e-12, tb * 1e3, fb / tb * 1e-12,
           (ff + fb) / (tf + tb) * 1e-12);
    G->free(a.q.data), G->free(a.k.data), G->free(a.v.data), G->free(a.dout.data), G->free(a.out.data);
    G->free(a.lse.data), G->free(a.dq.data), G->free(a.dk.data), G->free(a.dv.data);
    unsetenv("DSV3_ATTN_FWD"), unsetenv("DSV3_ATTN_BWD");
}

// ---- memory-bound ops: v1 and v2 (DSV3_MEMOPS=v2) of each op at the bench shapes ----
// GB/s counts the bytes the op must move at the least (each input read once, each output written once, an accumulated
// output read and written), over the time per call: against the ~2.9 TB/s an H100 copies at.

typedef struct {
    Tensor t[8];
    int i[2];
} MemCtx;

static void mem_row(const char *op, const char *shape, double bytes, BenchFn fn, void *ctx) {
    setenv("DSV3_MEMOPS", "v1", 1); // by name: unset is the default set (v2)
    const double t1 = time_it(fn, ctx);
    setenv("DSV3_MEMOPS", "v2", 1);
    const double t2 = time_it(fn, ctx);
    unsetenv("DSV3_MEMOPS");
    printf("memop %-24s %-44s | v1 %8.4f ms %6.0f GB/s | v2 %8.4f ms %6.0f GB/s | %6.2fx\n", op, shape, t1 * 1e3,
           bytes / t1 * 1e-9, t2 * 1e3, bytes / t2 * 1e-9, t1 / t2);
}

static void emb_fwd(void *c) { MemCtx *m = c; G->embedding_forward(m->t[0], m->t[1], m->t[2]); }
static void emb_bwd(void *c) { MemCtx *m = c; G->embedding_backward(m->t[0], m->t[1], m->t[2]); }
static void gather(void *c) { MemCtx *m = c; G->moe_gather(m->t[0], m->t[1], m->t[2], m->i[0]); }
static void gather_bwd(void *c) { MemCtx *m = c; G->moe_gather_backward(m->t[1], m->t[0], m->t[2], m->i[0], 0); }
static void combine(void *c) { MemCtx *m = c; G->moe_combine(m->t[3], m->t[4], m->t[5], m->t[2], 1); }
static void combine_bwd(void *c) {
    MemCtx *m = c;
    G->moe_combine_backward(m->t[0], m->t[6], m->t[1], m->t[4], m->t[5], m->t[2]);
}
static void swi_fwd(void *c) { MemCtx *m = c; G->swiglu_forward(m->t[0], m->t[1], m->t[2]); }
static void swi_bwd(void *c) { MemCtx *m = c; G->swiglu_backward(m->t[3], m->t[4], m->t[0], m->t[1], m->t[2]); }
static void norm_fwd(void *c) { MemCtx *m = c; G->rmsnorm_forward(m->t[0], m->t[1], m->t[2], m->t[3], 1e-6f); }
static void norm_bwd(void *c) {
    MemCtx *m = c;
    G->rmsnorm_backward(m->t[4], m->t[5], m->t[6], m->t[2], m->t[3], m->t[1], m->i[0], tensor_1d(NULL, DT_BF16, 0));
}
// The residual gradient's BF16 view: rmsnorm_backward then convert (t[7] BF16 = dinp), or dinp_lowp in the same op.
static void norm_bwd_convert(void *c) {
    MemCtx *m = c;
    norm_bwd(c);
    G->convert(m->t[7], m->t[4]);
}
static void norm_bwd_lowp(void *c) {
    MemCtx *m = c;
    G->rmsnorm_backward(m->t[4], m->t[5], m->t[6], m->t[2], m->t[3], m->t[1], m->i[0], m->t[7]);
}
static void rope(void *c) { MemCtx *m = c; G->rope_apply(m->t[0], m->i[0], 64, m->t[1], m->t[2], 4096, 0); }
static void kv_asm(void *c) { MemCtx *m = c; G->mla_kv_assemble(m->t[0], m->t[1], m->t[2], m->t[3], 128, 64, 128); }
static void kv_asm_bwd(void *c) {
    MemCtx *m = c;
    G->mla_kv_assemble_backward(m->t[2], m->t[3], m->t[0], m->t[1], 128, 64, 128);
}
static void conv(void *c) { MemCtx *m = c; G->convert(m->t[0], m->t[1]); }
static void ccols(void *c) { MemCtx *m = c; G->copy_cols(m->t[0], 0, m->t[1], m->i[0], m->t[0].shape[1], 0); }
static void axpy1(void *c) { MemCtx *m = c; G->axpy(m->t[0], m->t[1], 1.0f); }
static void balance(void *c) {
    MemCtx *m = c;
    G->moe_balance_loss(m->t[3], m->t[0], m->t[1], m->t[2], 4, 4096, m->i[0], 1e-4f, 1.0f);
}
static void xent(void *c) { MemCtx *m = c; G->cross_entropy_forward_backward(m->t[0], m->t[1], m->t[2], m->t[3], 0.5f); }

static void *dev_i32(const int32_t *h, int64_t n) {
    void *d = G->alloc((size_t)n * 4);
    G->upload(d, h, (size_t)n * 4);
    return d;
}

// Token ids like byte-level text (bench-1gpu's tokenizer): id 32 in ~17% of the tokens, the rest on ~90 ids with
// a Zipf-like decay; or uniform over V.
static int32_t *bench_ids(int64_t N, int V, int bytes_like) {
    int32_t *ids = xmalloc(sizeof(int32_t) * N);
    uint64_t s = 777;
    for (int64_t n = 0; n < N; n++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        const double u = (double)(s >> 11) * 0x1.0p-53;
        if (!bytes_like) ids[n] = (int32_t)(u * V);
        else if (u < 0.17) ids[n] = 32;
        else {
            const double r = (u - 0.17) / 0.83;
            ids[n] = 33 + (int32_t)(90.0 * r * r * r);
        }
    }
    return ids;
}

static void bench_memops(void) {
    const int64_t N = 4 * 4096, d = 1536, V = 32768, K = 6, NK = N * K, I = 512;
    const int E = 64;
    char shape[96];
    printf("memory-bound ops at the bench shapes (N %lld tokens, dim %lld, %d experts, top-%lld): v1 and v2 "
           "(DSV3_MEMOPS=v2)\n", (long long)N, (long long)d, E, (long long)K);
    MemCtx m;
    // embedding
    for (int b = 0; b < 3; b++) { // dout F32 byte-like ids, BF16 byte-like ids, F32 uniform ids
        const DType gt = b == 1 ? DT_BF16 : DT_F32;
        int32_t *ids = bench_ids(N, (int)V, b < 2);
        char *seen = calloc((size_t)V, 1);
        int64_t distinct = 0;
        for (int64_t n = 0; n < N; n++) distinct += !seen[ids[n]], seen[ids[n]] = 1;
        m.t[0] = tensor_2d(G->alloc((size_t)(V * d) * 4), DT_F32, V, d);
        m.t[1] = tensor_2d(rand_dev(N * d, gt, 1.0f), gt, N, d);
        m.t[2] = tensor_1d(dev_i32(ids, N), DT_I32, N);
        snprintf(shape, sizeof shape, "(%lld,%lld) %s ids %s (%lld distinct)", (long long)N, (long long)d,
                 gt == DT_BF16 ? "bf16" : "f32", b < 2 ? "byte-like" : "uniform", (long long)distinct);
        mem_row("embedding_backward", shape, (double)N * d * dtype_size(gt) + 2.0 * distinct * d * 4 + N * 4.0,
                emb_bwd, &m);
        if (b == 0) {
            MemCtx f = m;
            f.t[0] = tensor_2d(G->alloc((size_t)(N * d) * 4), DT_F32, N, d);
            f.t[1] = m.t[2];
            f.t[2] = tensor_2d(rand_dev(V * d, DT_F32, 1.0f), DT_F32, V, d);
            mem_row("embedding_forward", "(16384,1536) f32 table 32768 rows", 2.0 * N * d * 4 + N * 4.0, emb_fwd, &f);
            G->free(f.t[0].data), G->free(f.t[2].data);
        }
        G->free(m.t[0].data), G->free(m.t[1].data), G->free(m.t[2].data);
        free(ids), free(seen);
    }
    // MoE token movement: a routing with distinct experts per token, the backend's own plan
    {
        int32_t *idx = xmalloc(sizeof(int32_t) * NK), *off_h = xmalloc(sizeof(int32_t) * (E + 1));
        uint64_t s = 4242;
        for (int64_t t = 0; t < N; t++) {
            int pm[64];
            for (int e = 0; e < E; e++) pm[e] = e;
            for (int k = 0; k < K; k++) { // partial Fisher-Yates: K distinct experts
                s = s * 6364136223846793005ull + 1442695040888963407ull;
                int j = k + (int)((s >> 33) % (uint64_t)(E - k)), tmp = pm[k];
                pm[k] = pm[j], pm[j] = tmp;
                idx[t * K + k] = pm[k];
            }
        }
        Tensor topk = tensor_2d(dev_i32(idx, NK), DT_I32, N, K);
        m.t[2] = tensor_1d(G->alloc((size_t)NK * 4), DT_I32, NK);
        Tensor offs = tensor_1d(G->alloc((size_t)(E + 1) * 4), DT_I32, E + 1);
        G->moe_dispatch_plan(m.t[2], offs, off_h, tensor_1d(NULL, DT_I32, E), topk, E);
        m.i[0] = (int)K;
        m.t[0] = tensor_2d(rand_dev(NK * d, DT_BF16, 1.0f), DT_BF16, NK, d); // xs / dxs / dys
        m.t[1] = tensor_2d(rand_dev(N * d, DT_BF16, 1.0f), DT_BF16, N, d);   // x / dx / dout
        m.t[3] = tensor_2d(rand_dev(N * d, DT_F32, 1.0f), DT_F32, N, d);     // the F32 stream
        m.t[4] = tensor_2d(rand_dev(NK * d, DT_BF16, 1.0f), DT_BF16, NK, d); // ey
        m.t[5] = tensor_2d(rand_dev(NK, DT_F32, 1.0f), DT_F32, N, K);        // gates
        m.t[6] = tensor_2d(G->alloc((size_t)NK * 4), DT_F32, N, K);          // dgates
        const double nd2 = (double)N * d * 2, nkd2 = (double)NK * d * 2;
        snprintf(shape, sizeof shape, "x (%lld,%lld) bf16 -> (%lld,%lld)", (long long)N, (long long)d, (long long)NK,
                 (long long)d);
        mem_row("moe_gather", shape, nd2 + nkd2 + NK * 4.0, gather, &m);
        snprintf(shape, sizeof shape, "(%lld,%lld) bf16 -> (%lld,%lld)", (long long)NK, (long long)d, (long long)N,
                 (long long)d);
        mem_row("moe_gather_backward", shape, nkd2 + nd2 + NK * 4.0, gather_bwd, &m);
        snprintf(shape, sizeof shape, "ey (%lld,%lld) bf16 into f32 out (acc)", (long long)NK, (long long)d);
        mem_row("moe_combine", shape, nkd2 + 4.0 * nd2 + NK * 8.0, combine, &m);
        snprintf(shape, sizeof shape, "dout (%lld,%lld) ey/dys (%lld,%lld) bf16", (long long)N, (long long)d,
                 (long long)NK, (long long)d);
        mem_row("moe_combine_backward", shape, nd2 + 2.0 * nkd2 + NK * 12.0, combine_bwd, &m);
        MemCtx a = m;
        a.t[0] = m.t[0], a.t[1] = m.t[4];
        snprintf(shape, sizeof shape, "(%lld,%lld) bf16 += x", (long long)NK, (long long)d);
        mem_row("axpy", shape, 3.0 * nkd2, axpy1, &a);
        for (int i = 0; i < 7; i++) G->free(m.t[i].data);
        MemCtx bl = {.i = {(int)K}};
        bl.t[0] = tensor_2d(G->alloc((size_t)(N * E) * 4), DT_F32, N, E);
        bl.t[1] = tensor_2d(rand_dev(N * E, DT_F32, 1.0f), DT_F32, N, E);
        bl.t[2] = topk;
        bl.t[3] = tensor_1d(G->alloc(4), DT_F32, 1);
        mem_row("moe_balance_loss", "scores (16384,64) f32, 4 sequences, loss and dscores", 3.0 * N * E * 4 + NK * 4.0,
                balance, &bl);
        G->free(bl.t[0].data), G->free(bl.t[1].data), G->free(bl.t[3].data);
        G->free(topk.data), G->free(offs.data), free(idx), free(off_h);
    }
    // SwiGLU over the routed experts' rows and the shared expert's
    static const int64_t swi_rows[2] = {4 * 4096 * 6, 4 * 4096};
    for (int r = 0; r < 2; r++) {
        const int64_t n = swi_rows[r] * I;
        for (int i = 0; i < 5; i++) m.t[i] = tensor_2d(rand_dev(n, DT_BF16, 2.0f), DT_BF16, swi_rows[r], I);
        snprintf(shape, sizeof shape, "(%lld,%lld) bf16", (long long)swi_rows[r], (long long)I);
        mem_row("swiglu_forward", shape, 3.0 * n * 2, swi_fwd, &m);
        mem_row("swiglu_backward", shape, 5.0 * n * 2, swi_bwd, &m);
        for (int i = 0; i < 5; i++) G->free(m.t[i].data);
    }
    // RMSNorm: the residual norms (F32 stream -> BF16, BF16 dout into the F32 gradient) and the LoRA norms (BF16)
    static const int64_t widths[3] = {1536, 512, 256};
    for (int wi = 0; wi < 3; wi++) {
        const int64_t w = widths[wi];
        const DType ti = wi == 0 ? DT_F32 : DT_BF16;
        const double ei = (double)dtype_size(ti);
        m.t[0] = tensor_2d(G->alloc((size_t)(N * w) * 2), DT_BF16, N, w);          // out
        m.t[1] = tensor_1d(G->alloc((size_t)N * 4), DT_F32, N);                    // rstd
        m.t[2] = tensor_2d(rand_dev(N * w, ti, 2.0f), ti, N, w);                   // inp
        m.t[3] = tensor_1d(rand_dev(w, DT_BF16, 1.0f), DT_BF16, w);                // w
        m.t[4] = tensor_2d(rand_dev(N * w, ti, 1.0f), ti, N, w);                   // dinp
        m.t[5] = tensor_1d(G->alloc((size_t)w * 4), DT_F32, w);                    // dw
        m.t[6] = tensor_2d(rand_dev(N * w, DT_BF16, 1.0f), DT_BF16, N, w);         // dout
        m.i[0] = wi == 0; // the residual gradient accumulates; the LoRA ones overwrite
        norm_fwd(&m);     // rstd for the backward
        snprintf(shape, sizeof shape, "(%lld,%lld) %s -> bf16", (long long)N, (long long)w, ti == DT_F32 ? "f32" : "bf16");
        mem_row("rmsnorm_forward", shape, (double)N * w * (ei + 2), norm_fwd, &m);
        snprintf(shape, sizeof shape, "(%lld,%lld) bf16 dout -> %s dinp%s + dw", (long long)N, (long long)w,
                 ti == DT_F32 ? "f32" : "bf16", m.i[0] ? " (acc)" : "");
        mem_row("rmsnorm_backward", shape, (double)N * w * (2 + ei + ei * (m.i[0] ? 2 : 1)) + N * 4.0, norm_bwd, &m);
        if (wi == 0) { // + the BF16 view of dinp: a convert pass (reads dinp again) or dinp_lowp (one more write)
            m.t[7] = tensor_2d(G->alloc((size_t)(N * w) * 2), DT_BF16, N, w);
            const double base = (double)N * w * (2 + ei + ei * (m.i[0] ? 2 : 1)) + N * 4.0;
            mem_row("rmsnorm_backward+convert", shape, base + (double)N * w * (ei + 2), norm_bwd_convert, &m);
            mem_row("rmsnorm_backward dinp_lowp", shape, base + (double)N * w * 2, norm_bwd_lowp, &m);
            G->free(m.t[7].data);
        }
        for (int i = 0; i < 7; i++) G->free(m.t[i].data);
    }
    // MLA: RoPE on q's rope part and on k_rope; the key/value assembly and its backward
    {
        const int64_t H = 12, nope = 128, rope_d = 64, dv = 128, T = 4096;
        m.t[1] = tensor_2d(rand_dev(T * rope_d / 2, DT_F32, 1.0f), DT_F32, T, rope_d / 2);
        m.t[2] = tensor_2d(rand_dev(T * rope_d / 2, DT_F32, 1.0f), DT_F32, T, rope_d / 2);
        m.t[0] = tensor_3d(rand_dev(N * H * (nope + rope_d), DT_BF16, 1.0f), DT_BF16, N, H, nope + rope_d);
        m.i[0] = (int)nope;
        mem_row("rope_apply", "q (16384,12,192) bf16 [128:+64]", 2.0 * N * H * rope_d * 2, rope, &m);
        G->free(m.t[0].data);
        m.t[0] = tensor_3d(rand_dev(N * rope_d, DT_BF16, 1.0f), DT_BF16, N, 1, rope_d);
        m.i[0] = 0;
        mem_row("rope_apply", "k_rope (16384,1,64) bf16", 2.0 * N * rope_d * 2, rope, &m);
        G->free(m.t[0].data), G->free(m.t[1].data), G->free(m.t[2].data);
        m.t[0] = tensor_3d(rand_dev(N * H * (nope + rope_d), DT_BF16, 1.0f), DT_BF16, N, H, nope + rope_d); // k / dk
        m.t[1] = tensor_3d(rand_dev(N * H * dv, DT_BF16, 1.0f), DT_BF16, N, H, dv);                      // v / dv
        m.t[2] = tensor_2d(rand_dev(N * H * (nope + dv), DT_BF16, 1.0f), DT_BF16, N, H * (nope + dv));   // kv / dkv
        m.t[3] = tensor_2d(rand_dev(N * rope_d, DT_BF16, 1.0f), DT_BF16, N, rope_d);                     // k_rope
        const double kvb = (double)N * H * (nope + dv) * 2, kb = (double)N * H * (nope + rope_d) * 2;
        const double vb = (double)N * H * dv * 2, krb = (double)N * rope_d * 2;
        mem_row("mla_kv_assemble", "(16384,12) nope 128 rope 64 v 128 bf16", kvb + krb + kb + vb, kv_asm, &m);
        mem_row("mla_kv_assemble_backward", "(16384,12) nope 128 rope 64 v 128 bf16", kb + vb + kvb + krb, kv_asm_bwd,
                &m);
        for (int i = 0; i < 4; i++) G->free(m.t[i].data);
    }
    // convert (the BF16 view of the F32 residual gradient) and copy_cols (MLA's [c_kv ; k_rope] split)
    m.t[0] = tensor_2d(G->alloc((size_t)(N * d) * 2), DT_BF16, N, d);
    m.t[1] = tensor_2d(rand_dev(N * d, DT_F32, 1.0f), DT_F32, N, d);
    mem_row("convert", "(16384,1536) f32 -> bf16", (double)N * d * 6, conv, &m);
    G->free(m.t[0].data), G->free(m.t[1].data);
    m.t[0] = tensor_2d(G->alloc((size_t)(N * 256) * 2), DT_BF16, N, 256);
    m.t[1] = tensor_2d(rand_dev(N * 320, DT_BF16, 1.0f), DT_BF16, N, 320);
    m.i[0] = 0;
    mem_row("copy_cols", "(16384,256) <- (16384,320)[0:256] bf16", (double)N * 256 * 4, ccols, &m);
    G->free(m.t[0].data), G->free(m.t[1].data);
    // cross-entropy over one head chunk (HEAD_CHUNK_ELEMS / V rows): F32 logits, BF16 dlogits
    {
        const int64_t R = ((int64_t)1 << 26) / V;
        int32_t *tg = bench_ids(R, (int)V, 0);
        m.t[0] = tensor_1d(G->alloc((size_t)R * 4), DT_F32, R);
        m.t[1] = tensor_2d(G->alloc((size_t)(R * V) * 2), DT_BF16, R, V);
        m.t[2] = tensor_2d(rand_dev(R * V, DT_F32, 4.0f), DT_F32, R, V);
        m.t[3] = tensor_1d(dev_i32(tg, R), DT_I32, R);
        snprintf(shape, sizeof shape, "logits (%lld,%lld) f32 -> bf16 dlogits", (long long)R, (long long)V);
        mem_row("cross_entropy_fwd_bwd", shape, (double)R * V * 6 + R * 8.0, xent, &m);
        for (int i = 0; i < 4; i++) G->free(m.t[i].data);
        free(tg);
    }
}

int main(int argc, char **argv) {
    if (argc > 1) g_iters = atoi(argv[1]);
    if (g_iters < 1) die("usage: %s [iterations >= 1] [attention|grouped|memops]", argv[0]);
    const char *only = argc > 2 ? argv[2] : "";
    if (*only && strcmp(only, "attention") && strcmp(only, "grouped") && strcmp(only, "memops"))
        die("usage: %s [iterations >= 1] [attention|grouped|memops]: unknown argument '%s'", argv[0], only);
    const int mem_only = !strcmp(only, "memops");
    G = backend_get("cuda");
    if (mem_only) {
        printf("cuda backend micro-benchmark (%d iterations after 2 warm-ups)\n", g_iters);
        bench_memops();
        return 0;
    }
    const int64_t M = 4 * 4096; // tokens of one micro-batch
    printf("cuda backend micro-benchmark (%d iterations after 2 warm-ups)\n", g_iters);
    if (!*only) {
        // MLA projections at dim 1536: q up-projection 1536 -> 12 x 192, output 12 x 128 -> 1536, a wide FFN-like one
        bench_gemm("q_up (1536->2304)", M, 2304, 1536, DT_BF16);
        bench_gemm("o_proj (1536->1536)", M, 1536, 1536, DT_BF16);
        bench_gemm("wide (1536->8192)", M, 8192, 1536, DT_BF16);
        bench_gemm("o_proj (1536->1536)", M, 1536, 1536, DT_F32);
        bench_gemm_residual("o_proj (1536->1536)", M, 1536, 1536);
        bench_gemm_residual("ffn down (512->1536)", M, 1536, 512);
    }
    if (!*only || !strcmp(only, "grouped")) {
        // MoE experts: 64 experts, top-6 of 16384 tokens, moe_inter_dim 512: gate/up (1536 -> 512), down (512 -> 1536);
        // rows per expert balanced (+-40%) and skewed (three experts at 10x the mean), kernel sets side by side
        for (int skewed = 0; skewed < 2; skewed++) {
            bench_grouped("gate/up", 64, M * 6, 512, 1536, DT_BF16, skewed);
            bench_grouped("down", 64, M * 6, 1536, 512, DT_BF16, skewed);
        }
    }
    if (!*only || !strcmp(only, "attention")) {
        // BF16 attention on the tensor-core kernel sets (v1: the first, 4-warp kernels; v2: the default; wg: Hopper
        // wgmma)
        bench_attention(4, 4096, 12, 192, 128, DT_BF16, 1);
        bench_attention(4, 4096, 12, 192, 128, DT_BF16, 2);
        bench_attention(4, 4096, 12, 192, 128, DT_BF16, 3);
        bench_attention(4, 4096, 12, 192, 128, DT_F32, 0);
        bench_attention(1, 4096, 12, 192, 128, DT_BF16, 1);
        bench_attention(1, 4096, 12, 192, 128, DT_BF16, 2);
        bench_attention(1, 4096, 12, 192, 128, DT_BF16, 3);
    }
    if (!*only) bench_memops();
    return 0;
}
