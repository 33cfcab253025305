// Micro-benchmark of the cuda backend's heavy ops at the bench-1gpu shapes (dim 1536, 12 heads, qk head 192, v head
// 128, micro-batch 4 x 4096 tokens): dense GEMMs (forward, dgrad, wgrad) in FP32 and BF16 through cuBLASLt, the
// grouped (MoE) GEMMs (the one-launch BF16 kernels, mma.sync and wgmma, against the per-expert cuBLASLt loop, with
// balanced and skewed rows per expert), and causal attention forward and backward. Prints milliseconds and TFLOP/s;
// asserts nothing (timings vary from machine to machine).
// Usage: build/bench_ops_gpu [iterations] [attention|grouped]   (only the attention / grouped GEMM rows)
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
// kernels (DSV3_GG=mma), the wgmma kernels at both tile widths (DSV3_GG=wg, DSV3_GG_WG_BN=256 / 128) and the
// per-expert cuBLASLt loop.
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
    static const char *sets[3][3] = {{"mma", NULL, "mma"}, {"wg", "256", "wg 128x256"}, {"wg", "128", "wg 128x128"}};
    BenchFn fn[3] = {gmm_fwd, gmm_dinp, gmm_dw}, lp[3] = {loop_fwd, loop_dinp, loop_dw};
    printf("grouped gemm %-8s %-4s E %d rows %lld %s (per expert %d..%d, max/mean %.1f) N %lld K %lld\n", what,
           dt == DT_BF16 ? "bf16" : "f32", E, (long long)R, skewed ? "skewed" : "balanced", mn, mx,
           (double)mx * E / (double)R, (long long)N, (long long)K);
    for (int i = 0; i < 3; i++) {
        printf("    %-5s", names[i]);
        for (int k = 0; k < 3; k++) {
            setenv("DSV3_GG", sets[k][0], 1);
            if (sets[k][1]) setenv("DSV3_GG_WG_BN", sets[k][1], 1);
            else unsetenv("DSV3_GG_WG_BN");
            const double t = time_it(fn[i], &m);
            printf(" %s %7.3f ms %6.1f |", sets[k][2], t * 1e3, fl / t * 1e-12);
        }
        const double tl = time_it(lp[i], &m);
        printf(" loop %7.3f ms %6.1f TFLOP/s\n", tl * 1e3, fl / tl * 1e-12);
    }
    unsetenv("DSV3_GG"), unsetenv("DSV3_GG_WG_BN");
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

int main(int argc, char **argv) {
    if (argc > 1) g_iters = atoi(argv[1]);
    if (g_iters < 1) die("usage: %s [iterations >= 1] [attention|grouped]", argv[0]);
    const char *only = argc > 2 ? argv[2] : "";
    if (*only && strcmp(only, "attention") && strcmp(only, "grouped"))
        die("usage: %s [iterations >= 1] [attention|grouped]: unknown argument '%s'", argv[0], only);
    G = backend_get("cuda");
    const int64_t M = 4 * 4096; // tokens of one micro-batch
    printf("cuda backend micro-benchmark (%d iterations after 2 warm-ups)\n", g_iters);
    if (!*only) {
        // MLA projections at dim 1536: q up-projection 1536 -> 12 x 192, output 12 x 128 -> 1536, a wide FFN-like one
        bench_gemm("q_up (1536->2304)", M, 2304, 1536, DT_BF16);
        bench_gemm("o_proj (1536->1536)", M, 1536, 1536, DT_BF16);
        bench_gemm("wide (1536->8192)", M, 8192, 1536, DT_BF16);
        bench_gemm("o_proj (1536->1536)", M, 1536, 1536, DT_F32);
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
    return 0;
}
