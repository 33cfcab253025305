// BF16 tensor-core causal flash attention (FlashAttention-2 structure) for BF16 q/k/v with head dims that are
// multiples of 16, D <= 192 (MLA: 128 nope + 64 rope) and DV <= 128. cuda_attention.cu dispatches here and keeps its
// FP32 CUDA-core kernels for F32 tensors and other shapes.
//
// Three kernel sets behind the same entry points (attn_tc_forward / attn_tc_backward, at the end of this file): the
// first set below ("v1", 4-warp CTAs, run-time head dims: any supported dims), the second in cuda_attention_tc2.cu
// ("v2", 8-warp CTAs, compile-time head dims: the pairs attn_tc2_supported lists, MLA's 192/128 among them; 2.9x
// v1's backward on an H100) and the third in cuda_attention_wg.cu ("wg", Hopper wgmma warpgroup MMAs, the pairs
// attn_wg_supported lists). Default where it applies: wg (see attn_tc_version);
// DSV3_ATTN_FWD / DSV3_ATTN_BWD = v1 | v2 | wg select any set (for A/B runs and as a fallback).
//
// Math: mma.sync.m16n8k16 BF16 x BF16 -> FP32 (warp-level tensor-core MMA; not wgmma), operands from shared memory
// through ldmatrix (.trans for the operands whose contraction runs along the rows of a row-major tile). Scores,
// softmax statistics and all accumulators stay FP32; only P and dS are rounded to BF16 to feed the second MMA.
// Softmax runs in the exp2 domain (scores pre-multiplied by scale * log2 e); lse is stored in natural log.
//
// Tiles: 128 threads = 4 warps, each warp owns 16 rows of the CTA's 64-row tile (queries in the forward and the dQ
// kernel, keys in the dK/dV kernel); the inner tile (64 keys or 64 queries) is staged in shared memory by cp.async,
// double-buffered (tile i + 1 streams in while tile i is multiplied). Shared-memory rows are padded by 16 bytes: the
// row stride is then an odd multiple of 16 bytes, so the 8 row addresses of each ldmatrix hit 8 distinct 16-byte
// bank groups (no bank conflicts). In the backward, the 64-wide inner tile is processed in two halves of 32 so the
// dK (16 x 192) and dV (16 x 128) FP32 accumulators fit in registers beside the score fragments.
//
// Backward: Dr = rowsum(dO * O) from the caller; dK/dV kernel: a CTA per 64 keys loops over query tiles at and below
// the diagonal (recomputing P^T = exp(S^T - lse) from K Q^T and dP^T from V dO^T); dQ kernel: a CTA per 64 queries
// loops over the key tiles up to the diagonal. No atomics: deterministic, like the FP32 path.
#include "kernels/cuda/cuda_attention_tc_impl.cuh"
#include "kernels/cuda/cuda_attention_wg.cuh"

#include <stdlib.h>
#include <string.h>

namespace {

constexpr int TC_BM = 64;              // rows of the CTA's own tile
constexpr int TC_BN = 64;              // rows of each streamed inner tile
constexpr int TC_WARPS = 4, TC_NTH = 32 * TC_WARPS;
constexpr int TC_HALF = 32;            // backward: inner columns processed per pass
constexpr int TC_DMAX = 192, TC_DVMAX = 128;

static_assert(TC_BM == 16 * TC_WARPS, "each warp owns 16 rows (the M of one m16n8k16 MMA)");
static_assert(TC_BN == 64, "forward score fragment s[8][4] covers 8 n-tiles of 8 keys");
static_assert(TC_BN % TC_HALF == 0 && TC_HALF % 16 == 0, "backward halves are whole k16 steps");
static_assert(TC_DMAX % 16 == 0 && TC_DVMAX % 16 == 0, "head dims are walked in pairs of n8 tiles / k16 steps");
static_assert(TC_DVMAX / 8 == 16 && TC_DMAX / 8 == 24, "accumulator array sizes below");

// Starts copying rows [t0, t0 + 64) of head h of sequence b of x (B, T, H, ncols) into dst (64, ncols + PAD);
// rows past T are zero.
__device__ __forceinline__ void tc_load_tile(bf16 *dst, const bf16 *x, int b, int h, int t0, int T_, int H,
                                             int ncols) {
    const int cpr = ncols / 8, stride = ncols + PAD;
    for (int idx = threadIdx.x; idx < 64 * cpr; idx += TC_NTH) {
        const int r = idx / cpr, c = (idx - r * cpr) * 8, t = t0 + r;
        const bf16 *src = t < T_ ? x + (((int64_t)b * T_ + t) * H + h) * ncols + c : x;
        cp_async16(smem_u32(dst + r * stride + c), src, t < T_);
    }
}

// Q tile + two stages of (K, V) tiles
constexpr size_t tc_fwd_smem(int D, int DV) {
    return sizeof(bf16) * (size_t)(TC_BM * (D + PAD) + 2 * TC_BN * (D + DV + 2 * PAD));
}
// own pair of tiles (K, V or Q, dO) + two stages of the streamed pair, plus (dK/dV kernel) two stages of lse and D
constexpr size_t tc_bwd_smem(int D, int DV) {
    return sizeof(bf16) * (size_t)((TC_BM + 2 * TC_BN) * (D + DV + 2 * PAD)) + sizeof(float) * 2 * 2 * TC_BN;
}
static_assert(tc_fwd_smem(TC_DMAX, TC_DVMAX) <= SMEM_LIMIT && tc_bwd_smem(TC_DMAX, TC_DVMAX) <= SMEM_LIMIT,
              "tiles at the largest head dims must fit one block's shared memory");
static_assert(2 * tc_fwd_smem(192, 128) + 2 * 1024 <= 228 * 1024, "two forward CTAs per SM at the MLA head dims");

// grid (B*H, query tiles), heaviest (last) query tiles first.
__global__ void __launch_bounds__(TC_NTH) attn_tc_fwd_kernel(bf16 *out, float *lse, const bf16 *q, const bf16 *k,
                                                              const bf16 *v, int T_, int H, int D, int DV,
                                                              float scale_log2) {
    extern __shared__ __align__(16) unsigned char tc_smem[];
    const int SQ = D + PAD, SV = DV + PAD, stage = TC_BN * (SQ + SV);
    bf16 *Qs = reinterpret_cast<bf16 *>(tc_smem), *KV = Qs + TC_BM * SQ;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
    const int bh = blockIdx.x, b = bh / H, h = bh % H;
    const int qt = gridDim.y - 1 - blockIdx.y, q0 = qt * TC_BM, wr = warp * 16;
    tc_load_tile(Qs, q, b, h, q0, T_, H, D);
    tc_load_tile(KV, k, b, h, 0, T_, H, D);
    tc_load_tile(KV + TC_BN * SQ, v, b, h, 0, T_, H, DV);
    cp_async_commit();
    float o[TC_DVMAX / 8][4] = {}, m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    const int rows[2] = {q0 + wr + g, q0 + wr + g + 8};
    const int nk = (qt + 1) * TC_BM / TC_BN; // key tiles up to and including the diagonal
    for (int kt = 0; kt < nk; kt++) {
        const bf16 *Kc = KV + (kt & 1) * stage, *Vc = Kc + TC_BN * SQ;
        if (kt + 1 < nk) {
            bf16 *Kn = KV + ((kt + 1) & 1) * stage;
            tc_load_tile(Kn, k, b, h, (kt + 1) * TC_BN, T_, H, D);
            tc_load_tile(Kn + TC_BN * SQ, v, b, h, (kt + 1) * TC_BN, T_, H, DV);
        }
        cp_async_commit(); // possibly empty: keeps "all but the newest group" = the current tile
        cp_async_wait<1>();
        __syncthreads();
        float s[TC_BN / 8][4] = {};
        for (int kk = 0; kk < D / 16; kk++) {
            uint32_t a[4];
            ld_a(a, Qs, SQ, wr, kk * 16, lane);
#pragma unroll
            for (int jj = 0; jj < TC_BN / 16; jj++) {
                uint32_t bb[4];
                ld_b_rows(bb, Kc, SQ, jj * 16, kk * 16, lane);
                mma_bf16(s[2 * jj], a, bb[0], bb[1]);
                mma_bf16(s[2 * jj + 1], a, bb[2], bb[3]);
            }
        }
        const int k0 = kt * TC_BN;
        const bool diag = k0 + TC_BN > q0; // only tiles reaching the diagonal need the causal mask
        float mx[2] = {m[0], m[1]};
#pragma unroll
        for (int j = 0; j < TC_BN / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int c = k0 + 8 * j + 2 * tq + (e & 1);
                float x = s[j][e] * scale_log2;
                if (diag && c > rows[e >> 1]) x = -INFINITY;
                s[j][e] = x;
                mx[e >> 1] = fmaxf(mx[e >> 1], x);
            }
        float alpha[2], base[2];
#pragma unroll
        for (int i = 0; i < 2; i++) {
            mx[i] = quad_max(mx[i]);
            base[i] = mx[i] == -INFINITY ? 0.0f : mx[i]; // a row with nothing visible yet stays at zero
            alpha[i] = exp2f(m[i] - base[i]);
            m[i] = mx[i];
            l[i] *= alpha[i]; // per-thread partial sums; the quad reduces them once at the end
        }
#pragma unroll
        for (int j = 0; j < TC_BN / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                s[j][e] = exp2f(s[j][e] - base[e >> 1]);
                l[e >> 1] += s[j][e];
            }
#pragma unroll
        for (int j = 0; j < TC_DVMAX / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) o[j][e] *= alpha[e >> 1];
#pragma unroll
        for (int kk = 0; kk < TC_BN / 16; kk++) {
            uint32_t a[4];
            acc_to_a(a, s, kk);
#pragma unroll
            for (int jj = 0; jj < TC_DVMAX / 16; jj++) {
                if (jj * 16 >= DV) break;
                uint32_t bb[4];
                ld_b_cols(bb, Vc, SV, kk * 16, jj * 16, lane);
                mma_bf16(o[2 * jj], a, bb[0], bb[1]);
                mma_bf16(o[2 * jj + 1], a, bb[2], bb[3]);
            }
        }
        __syncthreads(); // every warp is done with this stage before the next iteration refills it
    }
    float inv[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        l[i] = quad_sum(l[i]);
        inv[i] = 1.0f / l[i];
        if (tq == 0 && rows[i] < T_) lse[(int64_t)bh * T_ + rows[i]] = (m[i] + log2f(l[i])) * LN2;
    }
    store_acc(out, o, inv, b, h, q0 + wr, T_, H, DV, lane);
}

// grid (B*H, key tiles), heaviest (first) key tiles first: dK, dV of 64 keys over the query tiles at and below the
// diagonal. Each warp owns 16 keys and computes the transposed products S^T = K Q^T and dP^T = V dO^T, so that
// P^T and dS^T come out in the A layout of dV += P^T dO and dK += dS^T Q.
__global__ void __launch_bounds__(TC_NTH)
    attn_tc_dkv_kernel(bf16 *dk, bf16 *dv, const bf16 *q, const bf16 *k, const bf16 *v, const bf16 *dout,
                       const float *lse, const float *Dr, int T_, int H, int D, int DV, float scale) {
    extern __shared__ __align__(16) unsigned char tc_smem[];
    const int SQ = D + PAD, SV = DV + PAD, stage = TC_BN * (SQ + SV);
    bf16 *Ks = reinterpret_cast<bf16 *>(tc_smem), *Vs = Ks + TC_BM * SQ, *QD = Vs + TC_BM * SV;
    float *stats = reinterpret_cast<float *>(QD + 2 * stage); // [stage][lse * log2 e (64), D (64)]
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
    const int bh = blockIdx.x, b = bh / H, h = bh % H;
    const int kt = blockIdx.y, k0 = kt * TC_BM, wr = warp * 16;
    const int nq = (T_ + TC_BN - 1) / TC_BN, qt0 = k0 / TC_BN;
    const float scale_log2 = scale * LOG2E;
    const int keys[2] = {k0 + wr + g, k0 + wr + g + 8};
    // stage loader: query tile qt -> buffer st (Q, dO by cp.async; lse, D by plain loads, seen after the barrier)
    auto load_q = [&](int qt, int st) {
        bf16 *Qn = QD + st * stage;
        const int q0 = qt * TC_BN;
        tc_load_tile(Qn, q, b, h, q0, T_, H, D);
        tc_load_tile(Qn + TC_BN * SQ, dout, b, h, q0, T_, H, DV);
        float *sn = stats + st * 2 * TC_BN;
        for (int i = threadIdx.x; i < 2 * TC_BN; i += TC_NTH) {
            const int r = q0 + (i % TC_BN);
            sn[i] = r >= T_ ? 0.0f : i < TC_BN ? lse[(int64_t)bh * T_ + r] * LOG2E : Dr[(int64_t)bh * T_ + r];
        }
    };
    tc_load_tile(Ks, k, b, h, k0, T_, H, D);
    tc_load_tile(Vs, v, b, h, k0, T_, H, DV);
    load_q(qt0, 0);
    cp_async_commit();
    float dka[TC_DMAX / 8][4] = {}, dva[TC_DVMAX / 8][4] = {};
    for (int qt = qt0; qt < nq; qt++) {
        const int it = qt - qt0;
        if (qt + 1 < nq) load_q(qt + 1, (it + 1) & 1);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        const bf16 *Qc = QD + (it & 1) * stage, *dOc = Qc + TC_BN * SQ;
        const float *lse_s = stats + (it & 1) * 2 * TC_BN, *D_s = lse_s + TC_BN;
        const int q0 = qt * TC_BN;
#pragma unroll 1
        for (int hq = 0; hq < TC_BN / TC_HALF; hq++) {
            const int n0 = hq * TC_HALF;
            float st[TC_HALF / 8][4] = {}, dpt[TC_HALF / 8][4] = {};
            for (int kk = 0; kk < D / 16; kk++) {
                uint32_t a[4];
                ld_a(a, Ks, SQ, wr, kk * 16, lane);
#pragma unroll
                for (int jj = 0; jj < TC_HALF / 16; jj++) {
                    uint32_t bb[4];
                    ld_b_rows(bb, Qc, SQ, n0 + jj * 16, kk * 16, lane);
                    mma_bf16(st[2 * jj], a, bb[0], bb[1]);
                    mma_bf16(st[2 * jj + 1], a, bb[2], bb[3]);
                }
            }
            for (int kk = 0; kk < DV / 16; kk++) {
                uint32_t a[4];
                ld_a(a, Vs, SV, wr, kk * 16, lane);
#pragma unroll
                for (int jj = 0; jj < TC_HALF / 16; jj++) {
                    uint32_t bb[4];
                    ld_b_rows(bb, dOc, SV, n0 + jj * 16, kk * 16, lane);
                    mma_bf16(dpt[2 * jj], a, bb[0], bb[1]);
                    mma_bf16(dpt[2 * jj + 1], a, bb[2], bb[3]);
                }
            }
            // P^T = exp(scale s - lse), dS^T = P^T (dP^T - D) scale; zero above the diagonal and past T
#pragma unroll
            for (int j = 0; j < TC_HALF / 8; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int rl = n0 + 8 * j + 2 * tq + (e & 1), r = q0 + rl;
                    const bool valid = r < T_ && keys[e >> 1] <= r;
                    const float p = valid ? exp2f(fmaf(st[j][e], scale_log2, -lse_s[rl])) : 0.0f;
                    st[j][e] = p;
                    dpt[j][e] = p * (dpt[j][e] - D_s[rl]) * scale;
                }
#pragma unroll
            for (int kk = 0; kk < TC_HALF / 16; kk++) {
                uint32_t a[4];
                acc_to_a(a, st, kk);
#pragma unroll
                for (int jj = 0; jj < TC_DVMAX / 16; jj++) {
                    if (jj * 16 >= DV) break;
                    uint32_t bb[4];
                    ld_b_cols(bb, dOc, SV, n0 + kk * 16, jj * 16, lane);
                    mma_bf16(dva[2 * jj], a, bb[0], bb[1]);
                    mma_bf16(dva[2 * jj + 1], a, bb[2], bb[3]);
                }
                acc_to_a(a, dpt, kk);
#pragma unroll
                for (int jj = 0; jj < TC_DMAX / 16; jj++) {
                    if (jj * 16 >= D) break;
                    uint32_t bb[4];
                    ld_b_cols(bb, Qc, SQ, n0 + kk * 16, jj * 16, lane);
                    mma_bf16(dka[2 * jj], a, bb[0], bb[1]);
                    mma_bf16(dka[2 * jj + 1], a, bb[2], bb[3]);
                }
            }
        }
        __syncthreads();
    }
    const float one[2] = {1.0f, 1.0f};
    store_acc(dk, dka, one, b, h, k0 + wr, T_, H, D, lane);
    store_acc(dv, dva, one, b, h, k0 + wr, T_, H, DV, lane);
}

// grid (B*H, query tiles), heaviest (last) query tiles first: dQ of 64 queries over the key tiles up to the diagonal.
__global__ void __launch_bounds__(TC_NTH)
    attn_tc_dq_kernel(bf16 *dq, const bf16 *q, const bf16 *k, const bf16 *v, const bf16 *dout, const float *lse,
                      const float *Dr, int T_, int H, int D, int DV, float scale) {
    extern __shared__ __align__(16) unsigned char tc_smem[];
    const int SQ = D + PAD, SV = DV + PAD, stage = TC_BN * (SQ + SV);
    bf16 *Qs = reinterpret_cast<bf16 *>(tc_smem), *dOs = Qs + TC_BM * SQ, *KV = dOs + TC_BM * SV;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
    const int bh = blockIdx.x, b = bh / H, h = bh % H;
    const int qt = gridDim.y - 1 - blockIdx.y, q0 = qt * TC_BM, wr = warp * 16;
    const float scale_log2 = scale * LOG2E;
    const int rows[2] = {q0 + wr + g, q0 + wr + g + 8};
    float lse_r[2], D_r[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        lse_r[i] = rows[i] < T_ ? lse[(int64_t)bh * T_ + rows[i]] * LOG2E : 0.0f;
        D_r[i] = rows[i] < T_ ? Dr[(int64_t)bh * T_ + rows[i]] : 0.0f;
    }
    tc_load_tile(Qs, q, b, h, q0, T_, H, D);
    tc_load_tile(dOs, dout, b, h, q0, T_, H, DV);
    tc_load_tile(KV, k, b, h, 0, T_, H, D);
    tc_load_tile(KV + TC_BN * SQ, v, b, h, 0, T_, H, DV);
    cp_async_commit();
    float dqa[TC_DMAX / 8][4] = {};
    const int nk = (qt + 1) * TC_BM / TC_BN;
    for (int kt = 0; kt < nk; kt++) {
        if (kt + 1 < nk) {
            bf16 *Kn = KV + ((kt + 1) & 1) * stage;
            tc_load_tile(Kn, k, b, h, (kt + 1) * TC_BN, T_, H, D);
            tc_load_tile(Kn + TC_BN * SQ, v, b, h, (kt + 1) * TC_BN, T_, H, DV);
        }
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        const bf16 *Kc = KV + (kt & 1) * stage, *Vc = Kc + TC_BN * SQ;
        const int k0 = kt * TC_BN;
#pragma unroll 1
        for (int hk = 0; hk < TC_BN / TC_HALF; hk++) {
            const int n0 = hk * TC_HALF;
            float s[TC_HALF / 8][4] = {}, dp[TC_HALF / 8][4] = {};
            for (int kk = 0; kk < D / 16; kk++) {
                uint32_t a[4];
                ld_a(a, Qs, SQ, wr, kk * 16, lane);
#pragma unroll
                for (int jj = 0; jj < TC_HALF / 16; jj++) {
                    uint32_t bb[4];
                    ld_b_rows(bb, Kc, SQ, n0 + jj * 16, kk * 16, lane);
                    mma_bf16(s[2 * jj], a, bb[0], bb[1]);
                    mma_bf16(s[2 * jj + 1], a, bb[2], bb[3]);
                }
            }
            for (int kk = 0; kk < DV / 16; kk++) {
                uint32_t a[4];
                ld_a(a, dOs, SV, wr, kk * 16, lane);
#pragma unroll
                for (int jj = 0; jj < TC_HALF / 16; jj++) {
                    uint32_t bb[4];
                    ld_b_rows(bb, Vc, SV, n0 + jj * 16, kk * 16, lane);
                    mma_bf16(dp[2 * jj], a, bb[0], bb[1]);
                    mma_bf16(dp[2 * jj + 1], a, bb[2], bb[3]);
                }
            }
#pragma unroll
            for (int j = 0; j < TC_HALF / 8; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int c = k0 + n0 + 8 * j + 2 * tq + (e & 1), i = e >> 1;
                    const bool valid = rows[i] < T_ && c <= rows[i];
                    const float p = valid ? exp2f(fmaf(s[j][e], scale_log2, -lse_r[i])) : 0.0f;
                    dp[j][e] = p * (dp[j][e] - D_r[i]) * scale;
                }
#pragma unroll
            for (int kk = 0; kk < TC_HALF / 16; kk++) {
                uint32_t a[4];
                acc_to_a(a, dp, kk);
#pragma unroll
                for (int jj = 0; jj < TC_DMAX / 16; jj++) {
                    if (jj * 16 >= D) break;
                    uint32_t bb[4];
                    ld_b_cols(bb, Kc, SQ, n0 + kk * 16, jj * 16, lane); // dQ[r][d] += dS[r][c] K[c][d]
                    mma_bf16(dqa[2 * jj], a, bb[0], bb[1]);
                    mma_bf16(dqa[2 * jj + 1], a, bb[2], bb[3]);
                }
            }
        }
        __syncthreads();
    }
    const float one[2] = {1.0f, 1.0f};
    store_acc(dq, dqa, one, b, h, q0 + wr, T_, H, D, lane);
}

// Raises the dynamic shared-memory limits once, to the largest size any supported head dims need.
void tc_set_smem(void) {
    static bool done = false;
    if (done) return;
    CUDA_CHECK(cudaFuncSetAttribute(attn_tc_fwd_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    (int)tc_fwd_smem(TC_DMAX, TC_DVMAX)));
    CUDA_CHECK(cudaFuncSetAttribute(attn_tc_dkv_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    (int)tc_bwd_smem(TC_DMAX, TC_DVMAX)));
    CUDA_CHECK(cudaFuncSetAttribute(attn_tc_dq_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    (int)tc_bwd_smem(TC_DMAX, TC_DVMAX)));
    done = true;
}

} // namespace

// DSV3_ATTN_FWD / DSV3_ATTN_BWD = v1 | v2 | wg pick the kernel set; read at every call (one getenv beside a kernel
// launch) so that a test or benchmark can A/B them in one process. wg (Hopper wgmma: cuda_attention_wg.cu,
// cuda_attention_wg_bwd.cu) covers the head dims attn_wg_supported lists, v2 those attn_tc2_supported lists; a set
// that does not take the head dims falls back to the next older one (wg -> v2 -> v1). Unset: wg (both passed the GPU
// tests on an H100 on 2026-11-23; B 4 T 4096 H 12 192/128: forward 361 TFLOP/s, v2 223; backward 284, v2 185).
enum { ATTN_V1 = 1, ATTN_V2 = 2, ATTN_WG = 3 };
static int attn_tc_version(const char *var, int unset) {
    const char *e = getenv(var);
    if (!e || !*e) return unset;
    if (!strcmp(e, "v2")) return ATTN_V2;
    if (!strcmp(e, "v1")) return ATTN_V1;
    if (!strcmp(e, "wg")) return ATTN_WG;
    die("%s=%s: expected v1, v2 or wg", var, e);
}

bool attn_tc_supported(int D, int DV, const void *const *ptrs, int nptrs) {
    if (D < 16 || D > TC_DMAX || D % 16 || DV < 16 || DV > TC_DVMAX || DV % 16) return false;
    for (int i = 0; i < nptrs; i++)
        if ((uintptr_t)ptrs[i] % 16) return false;
    return true;
}

void attn_tc_forward(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, int B, int T_, int H, int D,
                     int DV, float scale, cudaStream_t s) {
    const int ver = attn_tc_version("DSV3_ATTN_FWD", ATTN_WG);
    if (ver == ATTN_WG && attn_wg_supported(D, DV)) {
        attn_wg_forward(out, lse, q, k, v, B, T_, H, D, DV, scale, s);
        return;
    }
    if (ver >= ATTN_V2 && attn_tc2_supported(D, DV)) {
        attn_tc2_forward(out, lse, q, k, v, B, T_, H, D, DV, scale, s);
        return;
    }
    tc_set_smem();
    dim3 grid((unsigned)(B * H), (unsigned)((T_ + TC_BM - 1) / TC_BM));
    attn_tc_fwd_kernel<<<grid, TC_NTH, tc_fwd_smem(D, DV), s>>>(out, lse, q, k, v, T_, H, D, DV, scale * LOG2E);
    CUDA_LAUNCH_CHECK("attn_tc_fwd_kernel");
}

void attn_tc_backward(bf16 *dq, bf16 *dk, bf16 *dv, const bf16 *q, const bf16 *k, const bf16 *v, const bf16 *dout,
                      const float *lse, const float *Dr, int B, int T_, int H, int D, int DV, float scale,
                      cudaStream_t s) {
    const int ver = attn_tc_version("DSV3_ATTN_BWD", ATTN_WG);
    if (ver == ATTN_WG && attn_wg_supported(D, DV)) {
        attn_wg_backward(dq, dk, dv, q, k, v, dout, lse, Dr, B, T_, H, D, DV, scale, s);
        return;
    }
    // v2 indexes lse and Dr (B, H, T) with 32-bit offsets (a register fewer in its dK/dV loop)
    if (ver >= ATTN_V2 && attn_tc2_supported(D, DV) && (int64_t)B * H * T_ <= INT32_MAX) {
        attn_tc2_backward(dq, dk, dv, q, k, v, dout, lse, Dr, B, T_, H, D, DV, scale, s);
        return;
    }
    tc_set_smem();
    dim3 grid((unsigned)(B * H), (unsigned)((T_ + TC_BM - 1) / TC_BM));
    const size_t smem = tc_bwd_smem(D, DV);
    attn_tc_dkv_kernel<<<grid, TC_NTH, smem, s>>>(dk, dv, q, k, v, dout, lse, Dr, T_, H, D, DV, scale);
    CUDA_LAUNCH_CHECK("attn_tc_dkv_kernel");
    attn_tc_dq_kernel<<<grid, TC_NTH, smem, s>>>(dq, q, k, v, dout, lse, Dr, T_, H, D, DV, scale);
    CUDA_LAUNCH_CHECK("attn_tc_dq_kernel");
}
