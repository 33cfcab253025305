// BF16 tensor-core causal flash attention, second kernel set: 8 warps and 128-row CTA tiles, head dims fixed at
// compile time, a 3-stage cp.async pipeline, and one merged backward launch. Same math and fragment conventions as
// the first set (cuda_attention_tc.cu, kept selectable with DSV3_ATTN_FWD=v1 / DSV3_ATTN_BWD=v1 and used for head
// dims not instantiated here); see cuda_attention_tc_impl.cuh.
//
// Why (measured on an H100 at B 4, T 4096, H 12, D 192, DV 128, the first set's backward ran at 65 TFLOP/s): its
// dK/dV and dQ kernels each took 130 KB of shared memory for 4 warps, so an SM ran ONE 4-warp CTA: one warp per
// scheduler, every ldmatrix -> mma -> exp dependency exposed, and each CTA's barrier stalled the whole SM. Its loops
// ran over run-time head dims (not unrolled, so no loads hoisted ahead of the MMAs), and each 64-row CTA re-streamed
// the inner tiles for only 64 own rows. Here:
// - 8 warps (256 threads) own 128 rows (16 each); the streamed 64-row tiles feed twice the rows per byte of L2.
// - The own tile (K, V for dK/dV; Q, dO for dQ; 86 KB at the MLA dims) stays in shared memory; the streamed tiles
//   rotate through 3 stages (two tiles in flight while one is multiplied; one barrier per tile). 212 KB in all.
// - D and DV are template parameters: every k16 / n8 loop is unrolled and the masks are compile-time shaped.
// - Only tiles that cross the causal diagonal are masked; a warp skips a (half-)tile that lies wholly above it.
//   Query rows past T need no mask: their Q and dO rows are zero (cp.async zero-fill), so they add nothing.
// - dK/dV and dQ CTAs share ONE launch, interleaved heaviest first (dK/dV of key tile r next to dQ of query tile
//   nt-1-r, which do the same number of tile pairs), so neither pass has its own tail of idle SMs.
// - The softmax scale is applied once to the FP32 accumulators at the store (dK, dQ), not to every dS element.
// Still deterministic: every output element is written by exactly one thread, summed in a fixed order; no atomics.
//
// Measured (H100, same shape, bench_ops_gpu): backward 10.27 -> 3.54 ms (65 -> 189 TFLOP/s counted, 2.9x), forward
// 1.81 -> 1.14 ms (142 -> 225 TFLOP/s). Nsight Compute on the merged backward: shared-memory (L1) throughput 72%,
// tensor pipe 40%, 8 warps per SM (registers and shared memory both allow one CTA), stalls split between
// ldmatrix->mma dependencies and fixed-latency MMA chains. ldmatrix traffic is the limit: with 16 rows per warp
// each B fragment feeds only two m16n8k16 MMAs (dK/dV: 100 ldmatrix.x4 per 160 MMAs; dQ: 148 per 256), and every
// warp reloads the same streamed fragments. The next step is wgmma (a warpgroup reads each B tile once for 64 rows).
//
// Work per warp and (64-row) streamed tile, backward: dK/dV: S^T (16 keys x 32 queries, two halves per tile so the
// dK 16x192 and dV 16x128 FP32 accumulators (160 registers) fit), dP^T, then dV += P^T dO and dK += dS^T Q with
// P^T, dS^T as A fragments straight from the accumulators. dQ: S and dP for 16 queries x 64 keys, dQ += dS K.
#include "kernels/cuda/cuda_attention_tc_impl.cuh"

namespace {

constexpr int NW2 = 8, NTH2 = 32 * NW2;
constexpr int BM2 = 16 * NW2; // own rows per CTA: 16 per warp
constexpr int BN2 = 64;       // rows of each streamed tile
constexpr int NST = 3;        // pipeline stages of streamed tiles
constexpr int HALF2 = 32;     // dK/dV: queries per pass (register budget)
static_assert(NST >= 2 && BN2 % HALF2 == 0 && HALF2 % 16 == 0 && BM2 % BN2 == 0, "tile shapes");

// Starts copying rows [t0, t0 + ROWS) of head h of sequence b of x (B, T, H, NC) into dst (ROWS, NC + PAD); rows
// past T are zero-filled.
template <int ROWS, int NC>
__device__ __forceinline__ void load_rows(bf16 *dst, const bf16 *x, int b, int h, int t0, int T_, int H) {
    constexpr int CPR = NC / 8, N = ROWS * CPR;
#pragma unroll 1
    for (int i = 0; i < (N + NTH2 - 1) / NTH2; i++) {
        const int idx = threadIdx.x + i * NTH2;
        if (N % NTH2 == 0 || idx < N) {
            const int r = idx / CPR, c = (idx - r * CPR) * 8, t = t0 + r;
            const bf16 *src = t < T_ ? x + (((int64_t)b * T_ + t) * H + h) * NC + c : x;
            cp_async16(smem_u32(dst + r * (NC + PAD) + c), src, t < T_);
        }
    }
}

// Shared memory of the merged backward kernel: own pair of 128-row tiles + NST stages of the streamed pair + (dK/dV
// CTAs) NST stages of the streamed rows' lse and Dr.
template <int D, int DV> constexpr size_t bwd2_smem() {
    return sizeof(bf16) * (size_t)((BM2 + NST * BN2) * (D + DV + 2 * PAD)) + sizeof(float) * NST * 2 * BN2;
}
// Forward: own Q tile + NST stages of (K, V).
template <int D, int DV> constexpr size_t fwd2_smem() {
    return sizeof(bf16) * (size_t)(BM2 * (D + PAD) + NST * BN2 * (D + DV + 2 * PAD));
}
static_assert(bwd2_smem<192, 128>() <= SMEM_LIMIT && fwd2_smem<192, 128>() <= SMEM_LIMIT,
              "MLA head dims must fit one block's shared memory");

// dK, dV of 128 keys [128 kt, 128 kt + 128) over the 64-query tiles at and below the diagonal. Each warp owns 16
// keys and computes the transposed products S^T = K Q^T and dP^T = V dO^T, so that P^T and dS^T come out in the A
// layout of dV += P^T dO and dK += dS^T Q.
template <int D, int DV>
__device__ __forceinline__ void bwd2_dkv(unsigned char *smem, bf16 *dk, bf16 *dv, const bf16 *q, const bf16 *k,
                                         const bf16 *v, const bf16 *dout, const float *lse, const float *Dr, int T_,
                                         int H, int bh, int kt, float scale_log2, float scale) {
    constexpr int SQ = D + PAD, SV = DV + PAD, STAGE = BN2 * (SQ + SV);
    bf16 *Ks = reinterpret_cast<bf16 *>(smem), *Vs = Ks + BM2 * SQ, *QD = Vs + BM2 * SV;
    float *stats = reinterpret_cast<float *>(QD + NST * STAGE); // [stage][lse (64), Dr (64)]
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
    const int b = bh / H, h = bh % H, wr = warp * 16;
    const int k0 = kt * BM2, kw = k0 + wr; // this warp's keys: [kw, kw + 16)
    const int nq = (T_ + BN2 - 1) / BN2, qt0 = k0 / BN2;
    const int keys[2] = {kw + g, kw + g + 8};
    auto load_stage = [&](int qt, int st) {
        const int q0 = qt * BN2;
        bf16 *Qn = QD + st * STAGE;
        load_rows<BN2, D>(Qn, q, b, h, q0, T_, H);
        load_rows<BN2, DV>(Qn + BN2 * SQ, dout, b, h, q0, T_, H);
        if (threadIdx.x < 2 * BN2) {
            const int r = q0 + (threadIdx.x & (BN2 - 1));
            // 32-bit offset: the dispatch keeps B H T below 2^31
            const float *src = (threadIdx.x < BN2 ? lse : Dr) + (bh * T_ + (r < T_ ? r : 0));
            cp_async4(smem_u32(stats + st * 2 * BN2 + threadIdx.x), src, r < T_);
        }
    };
    load_rows<BM2, D>(Ks, k, b, h, k0, T_, H);
    load_rows<BM2, DV>(Vs, v, b, h, k0, T_, H);
    load_stage(qt0, 0);
    cp_async_commit();
#pragma unroll
    for (int s = 1; s < NST - 1; s++) {
        if (qt0 + s < nq) load_stage(qt0 + s, s);
        cp_async_commit();
    }
    float dka[D / 8][4] = {}, dva[DV / 8][4] = {};
    for (int qt = qt0, st = 0; qt < nq; qt++, st = st == NST - 1 ? 0 : st + 1) { // st: this tile's stage
        cp_async_wait<NST - 2>(); // this tile's group has landed (for this thread) ...
        __syncthreads();          // ... for every thread; and every warp is done with the stage refilled next
        if (qt + NST - 1 < nq) load_stage(qt + NST - 1, st == 0 ? NST - 1 : st - 1);
        cp_async_commit(); // possibly empty: keeps the group count in step with the tiles
        const int q0 = qt * BN2;
        const bf16 *Qc = QD + st * STAGE, *dOc = Qc + BN2 * SQ;
        const float *lse_s = stats + st * 2 * BN2, *D_s = lse_s + BN2;
#pragma unroll 1
        for (int n0 = 0; n0 < BN2; n0 += HALF2) {
            const int qh = q0 + n0;
            if (qh + HALF2 - 1 < kw) continue; // every query of this half precedes every key of this warp: P = 0
            float sT[HALF2 / 8][4] = {}, dpT[HALF2 / 8][4] = {};
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                uint32_t a[4];
                ld_a(a, Ks, SQ, wr, kk * 16, lane);
#pragma unroll
                for (int jj = 0; jj < HALF2 / 16; jj++) {
                    uint32_t bb[4];
                    ld_b_rows(bb, Qc, SQ, n0 + jj * 16, kk * 16, lane);
                    mma_bf16(sT[2 * jj], a, bb[0], bb[1]);
                    mma_bf16(sT[2 * jj + 1], a, bb[2], bb[3]);
                }
            }
#pragma unroll
            for (int kk = 0; kk < DV / 16; kk++) {
                uint32_t a[4];
                ld_a(a, Vs, SV, wr, kk * 16, lane);
#pragma unroll
                for (int jj = 0; jj < HALF2 / 16; jj++) {
                    uint32_t bb[4];
                    ld_b_rows(bb, dOc, SV, n0 + jj * 16, kk * 16, lane);
                    mma_bf16(dpT[2 * jj], a, bb[0], bb[1]);
                    mma_bf16(dpT[2 * jj + 1], a, bb[2], bb[3]);
                }
            }
            // P^T = 2^(s scale log2e - lse log2e), dS^T / scale = P^T (dP^T - Dr); zero above the diagonal
            const bool diag = qh < kw + 15;
#pragma unroll
            for (int j = 0; j < HALF2 / 8; j++)
#pragma unroll
                for (int c = 0; c < 2; c++) {
                    const int rl = n0 + 8 * j + 2 * tq + c;
                    const float l2 = lse_s[rl] * LOG2E, dr = D_s[rl];
#pragma unroll
                    for (int i = 0; i < 2; i++) {
                        const int e = 2 * i + c;
                        float p = fast_exp2(fmaf(sT[j][e], scale_log2, -l2));
                        if (diag && keys[i] > q0 + rl) p = 0.0f;
                        sT[j][e] = p;
                        dpT[j][e] = p * (dpT[j][e] - dr);
                    }
                }
#pragma unroll
            for (int kk = 0; kk < HALF2 / 16; kk++) {
                uint32_t a[4];
                acc_to_a(a, sT, kk);
#pragma unroll
                for (int jj = 0; jj < DV / 16; jj++) {
                    uint32_t bb[4];
                    ld_b_cols(bb, dOc, SV, n0 + kk * 16, jj * 16, lane);
                    mma_bf16(dva[2 * jj], a, bb[0], bb[1]);
                    mma_bf16(dva[2 * jj + 1], a, bb[2], bb[3]);
                }
                acc_to_a(a, dpT, kk);
#pragma unroll
                for (int jj = 0; jj < D / 16; jj++) {
                    uint32_t bb[4];
                    ld_b_cols(bb, Qc, SQ, n0 + kk * 16, jj * 16, lane);
                    mma_bf16(dka[2 * jj], a, bb[0], bb[1]);
                    mma_bf16(dka[2 * jj + 1], a, bb[2], bb[3]);
                }
            }
        }
    }
    const float mk[2] = {scale, scale}, one[2] = {1.0f, 1.0f};
    store_acc(dk, dka, mk, b, h, kw, T_, H, D, lane);
    store_acc(dv, dva, one, b, h, kw, T_, H, DV, lane);
}

// dQ of 128 queries [128 mt, 128 mt + 128) over the 64-key tiles up to the diagonal; each warp owns 16 queries.
template <int D, int DV>
__device__ __forceinline__ void bwd2_dq(unsigned char *smem, bf16 *dq, const bf16 *q, const bf16 *k, const bf16 *v,
                                        const bf16 *dout, const float *lse, const float *Dr, int T_, int H, int bh,
                                        int mt, float scale_log2, float scale) {
    constexpr int SQ = D + PAD, SV = DV + PAD, STAGE = BN2 * (SQ + SV);
    bf16 *Qs = reinterpret_cast<bf16 *>(smem), *dOs = Qs + BM2 * SQ, *KV = dOs + BM2 * SV;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
    const int b = bh / H, h = bh % H, wr = warp * 16;
    const int q0 = mt * BM2, qw = q0 + wr; // this warp's queries: [qw, qw + 16)
    const int rows[2] = {qw + g, qw + g + 8};
    const int nk = min((q0 + BM2 + BN2 - 1) / BN2, (T_ + BN2 - 1) / BN2); // key tiles up to the diagonal and T
    auto load_stage = [&](int kt) {
        bf16 *Kn = KV + (kt % NST) * STAGE;
        load_rows<BN2, D>(Kn, k, b, h, kt * BN2, T_, H);
        load_rows<BN2, DV>(Kn + BN2 * SQ, v, b, h, kt * BN2, T_, H);
    };
    load_rows<BM2, D>(Qs, q, b, h, q0, T_, H);
    load_rows<BM2, DV>(dOs, dout, b, h, q0, T_, H);
    load_stage(0);
    cp_async_commit();
#pragma unroll
    for (int s = 1; s < NST - 1; s++) {
        if (s < nk) load_stage(s);
        cp_async_commit();
    }
    float l2[2], dr[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        l2[i] = rows[i] < T_ ? lse[(int64_t)bh * T_ + rows[i]] * LOG2E : 0.0f;
        dr[i] = rows[i] < T_ ? Dr[(int64_t)bh * T_ + rows[i]] : 0.0f;
    }
    float dqa[D / 8][4] = {};
    for (int kt = 0; kt < nk; kt++) {
        cp_async_wait<NST - 2>();
        __syncthreads();
        if (kt + NST - 1 < nk) load_stage(kt + NST - 1);
        cp_async_commit();
        const int k0 = kt * BN2;
        if (k0 > qw + 15) continue; // the whole tile lies after this warp's queries
        const bf16 *Kc = KV + (kt % NST) * STAGE, *Vc = Kc + BN2 * SQ;
        float s[BN2 / 8][4] = {}, dp[BN2 / 8][4] = {};
#pragma unroll 4
        for (int kk = 0; kk < D / 16; kk++) {
            uint32_t a[4];
            ld_a(a, Qs, SQ, wr, kk * 16, lane);
#pragma unroll
            for (int jj = 0; jj < BN2 / 16; jj++) {
                uint32_t bb[4];
                ld_b_rows(bb, Kc, SQ, jj * 16, kk * 16, lane);
                mma_bf16(s[2 * jj], a, bb[0], bb[1]);
                mma_bf16(s[2 * jj + 1], a, bb[2], bb[3]);
            }
        }
#pragma unroll
        for (int kk = 0; kk < DV / 16; kk++) {
            uint32_t a[4];
            ld_a(a, dOs, SV, wr, kk * 16, lane);
#pragma unroll
            for (int jj = 0; jj < BN2 / 16; jj++) {
                uint32_t bb[4];
                ld_b_rows(bb, Vc, SV, jj * 16, kk * 16, lane);
                mma_bf16(dp[2 * jj], a, bb[0], bb[1]);
                mma_bf16(dp[2 * jj + 1], a, bb[2], bb[3]);
            }
        }
        const bool diag = k0 + BN2 - 1 > qw;
#pragma unroll
        for (int j = 0; j < BN2 / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int i = e >> 1, c = k0 + 8 * j + 2 * tq + (e & 1);
                float p = fast_exp2(fmaf(s[j][e], scale_log2, -l2[i]));
                if (diag && c > rows[i]) p = 0.0f;
                dp[j][e] = p * (dp[j][e] - dr[i]);
            }
#pragma unroll
        for (int kk = 0; kk < BN2 / 16; kk++) {
            uint32_t a[4];
            acc_to_a(a, dp, kk);
#pragma unroll
            for (int jj = 0; jj < D / 16; jj++) {
                uint32_t bb[4];
                ld_b_cols(bb, Kc, SQ, kk * 16, jj * 16, lane); // dQ[r][d] += dS[r][c] K[c][d]
                mma_bf16(dqa[2 * jj], a, bb[0], bb[1]);
                mma_bf16(dqa[2 * jj + 1], a, bb[2], bb[3]);
            }
        }
    }
    const float mq[2] = {scale, scale};
    store_acc(dq, dqa, mq, b, h, qw, T_, H, D, lane);
}

// Block i: rank r = i / (2 BH) (0 = heaviest), role (i / BH) % 2 (0: dK/dV of key tile r, 1: dQ of query tile
// nt-1-r; both walk the same number of tile pairs), bh = i % BH.
template <int D, int DV>
__global__ void __launch_bounds__(NTH2, 1)
    attn_tc2_bwd_kernel(bf16 *dq, bf16 *dk, bf16 *dv, const bf16 *q, const bf16 *k, const bf16 *v, const bf16 *dout,
                        const float *lse, const float *Dr, int T_, int H, int BH, int nt, float scale_log2,
                        float scale) {
    extern __shared__ __align__(16) unsigned char smem2[];
    const int i = blockIdx.x, r = i / (2 * BH), role = (i / BH) & 1, bh = i % BH;
    if (role == 0)
        bwd2_dkv<D, DV>(smem2, dk, dv, q, k, v, dout, lse, Dr, T_, H, bh, r, scale_log2, scale);
    else
        bwd2_dq<D, DV>(smem2, dq, q, k, v, dout, lse, Dr, T_, H, bh, nt - 1 - r, scale_log2, scale);
}

template <int D, int DV>
void bwd2_launch(bf16 *dq, bf16 *dk, bf16 *dv, const bf16 *q, const bf16 *k, const bf16 *v, const bf16 *dout,
                 const float *lse, const float *Dr, int B, int T_, int H, float scale, cudaStream_t s) {
    constexpr size_t smem = bwd2_smem<D, DV>();
    static_assert(smem <= SMEM_LIMIT, "backward tiles must fit one block's shared memory");
    static bool attr_done = false;
    if (!attr_done) {
        CUDA_CHECK(cudaFuncSetAttribute(attn_tc2_bwd_kernel<D, DV>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        (int)smem));
        attr_done = true;
    }
    const int BH = B * H, nt = (T_ + BM2 - 1) / BM2;
    attn_tc2_bwd_kernel<D, DV><<<(unsigned)(2 * nt * BH), NTH2, smem, s>>>(dq, dk, dv, q, k, v, dout, lse, Dr, T_, H,
                                                                           BH, nt, scale * LOG2E, scale);
    CUDA_LAUNCH_CHECK("attn_tc2_bwd_kernel");
}

// Forward: 128 queries [128 mt, 128 mt + 128) over the 64-key tiles up to the diagonal, online softmax as in the
// first set. Each warp owns 16 queries; its Q fragments (16 x D) are read from shared memory once and kept in
// registers, so the score MMAs load only K fragments.
template <int D, int DV>
__global__ void __launch_bounds__(NTH2, 1) attn_tc2_fwd_kernel(bf16 *out, float *lse, const bf16 *q, const bf16 *k,
                                                               const bf16 *v, int T_, int H, int BH, int nt,
                                                               float scale_log2) {
    constexpr int SQ = D + PAD, SV = DV + PAD, STAGE = BN2 * (SQ + SV);
    extern __shared__ __align__(16) unsigned char smem2[];
    bf16 *Qs = reinterpret_cast<bf16 *>(smem2), *KV = Qs + BM2 * SQ;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
    const int mt = nt - 1 - (int)blockIdx.x / BH, bh = (int)blockIdx.x % BH; // heaviest (last) query tiles first
    const int b = bh / H, h = bh % H, wr = warp * 16;
    const int q0 = mt * BM2, qw = q0 + wr;
    const int rows[2] = {qw + g, qw + g + 8};
    const int nk = min((q0 + BM2 + BN2 - 1) / BN2, (T_ + BN2 - 1) / BN2);
    auto load_stage = [&](int kt) {
        bf16 *Kn = KV + (kt % NST) * STAGE;
        load_rows<BN2, D>(Kn, k, b, h, kt * BN2, T_, H);
        load_rows<BN2, DV>(Kn + BN2 * SQ, v, b, h, kt * BN2, T_, H);
    };
    load_rows<BM2, D>(Qs, q, b, h, q0, T_, H);
    load_stage(0);
    cp_async_commit();
#pragma unroll
    for (int s = 1; s < NST - 1; s++) {
        if (s < nk) load_stage(s);
        cp_async_commit();
    }
    uint32_t qf[D / 16][4];
    float o[DV / 8][4] = {}, m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    for (int kt = 0; kt < nk; kt++) {
        cp_async_wait<NST - 2>();
        __syncthreads();
        if (kt + NST - 1 < nk) load_stage(kt + NST - 1);
        cp_async_commit();
        if (kt == 0) {
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) ld_a(qf[kk], Qs, SQ, wr, kk * 16, lane);
        }
        const int k0 = kt * BN2;
        if (k0 > qw + 15) continue; // the whole tile lies after this warp's queries
        const bf16 *Kc = KV + (kt % NST) * STAGE, *Vc = Kc + BN2 * SQ;
        float s[BN2 / 8][4] = {};
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++)
#pragma unroll
            for (int jj = 0; jj < BN2 / 16; jj++) {
                uint32_t bb[4];
                ld_b_rows(bb, Kc, SQ, jj * 16, kk * 16, lane);
                mma_bf16(s[2 * jj], qf[kk], bb[0], bb[1]);
                mma_bf16(s[2 * jj + 1], qf[kk], bb[2], bb[3]);
            }
        const bool diag = k0 + BN2 - 1 > qw; // keys past T lie past every valid row: masked here too
        float mx[2] = {m[0], m[1]};
#pragma unroll
        for (int j = 0; j < BN2 / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float x = s[j][e] * scale_log2;
                if (diag && k0 + 8 * j + 2 * tq + (e & 1) > rows[e >> 1]) x = -INFINITY;
                s[j][e] = x;
                mx[e >> 1] = fmaxf(mx[e >> 1], x);
            }
        float alpha[2], base[2];
#pragma unroll
        for (int i = 0; i < 2; i++) {
            mx[i] = quad_max(mx[i]);
            base[i] = mx[i] == -INFINITY ? 0.0f : mx[i]; // a row with nothing visible yet stays at zero
            alpha[i] = fast_exp2(m[i] - base[i]);
            m[i] = mx[i];
            l[i] *= alpha[i]; // per-thread partial sums; the quad reduces them once at the end
        }
#pragma unroll
        for (int j = 0; j < BN2 / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                s[j][e] = fast_exp2(s[j][e] - base[e >> 1]);
                l[e >> 1] += s[j][e];
            }
#pragma unroll
        for (int j = 0; j < DV / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) o[j][e] *= alpha[e >> 1];
#pragma unroll
        for (int kk = 0; kk < BN2 / 16; kk++) {
            uint32_t a[4];
            acc_to_a(a, s, kk);
#pragma unroll
            for (int jj = 0; jj < DV / 16; jj++) {
                uint32_t bb[4];
                ld_b_cols(bb, Vc, SV, kk * 16, jj * 16, lane);
                mma_bf16(o[2 * jj], a, bb[0], bb[1]);
                mma_bf16(o[2 * jj + 1], a, bb[2], bb[3]);
            }
        }
    }
    float inv[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        l[i] = quad_sum(l[i]);
        inv[i] = 1.0f / l[i];
        if (tq == 0 && rows[i] < T_) lse[(int64_t)bh * T_ + rows[i]] = (m[i] + log2f(l[i])) * LN2;
    }
    store_acc(out, o, inv, b, h, qw, T_, H, DV, lane);
}

template <int D, int DV>
void fwd2_launch(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, int B, int T_, int H,
                 float scale, cudaStream_t s) {
    constexpr size_t smem = fwd2_smem<D, DV>();
    static_assert(smem <= SMEM_LIMIT, "forward tiles must fit one block's shared memory");
    static bool attr_done = false;
    if (!attr_done) {
        CUDA_CHECK(cudaFuncSetAttribute(attn_tc2_fwd_kernel<D, DV>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        (int)smem));
        attr_done = true;
    }
    const int BH = B * H, nt = (T_ + BM2 - 1) / BM2;
    attn_tc2_fwd_kernel<D, DV><<<(unsigned)(nt * BH), NTH2, smem, s>>>(out, lse, q, k, v, T_, H, BH, nt,
                                                                       scale * LOG2E);
    CUDA_LAUNCH_CHECK("attn_tc2_fwd_kernel");
}

} // namespace

// The head-dim pairs instantiated here: MLA's (192, 128) and the common 128 / 64 heads.
#define TC2_DIMS(X) X(192, 128) X(128, 128) X(64, 64)

bool attn_tc2_supported(int D, int DV) {
#define TC2_MATCH(d, dv)                                                                                              \
    if (D == d && DV == dv) return true;
    TC2_DIMS(TC2_MATCH)
#undef TC2_MATCH
    return false;
}

void attn_tc2_backward(bf16 *dq, bf16 *dk, bf16 *dv, const bf16 *q, const bf16 *k, const bf16 *v, const bf16 *dout,
                       const float *lse, const float *Dr, int B, int T_, int H, int D, int DV, float scale,
                       cudaStream_t s) {
#define TC2_BWD(d, dv_)                                                                                               \
    if (D == d && DV == dv_) return bwd2_launch<d, dv_>(dq, dk, dv, q, k, v, dout, lse, Dr, B, T_, H, scale, s);
    TC2_DIMS(TC2_BWD)
#undef TC2_BWD
    die("attn_tc2_backward: head dims %d, %d are not instantiated", D, DV);
}

void attn_tc2_forward(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, int B, int T_, int H, int D,
                      int DV, float scale, cudaStream_t s) {
#define TC2_FWD(d, dv_)                                                                                               \
    if (D == d && DV == dv_) return fwd2_launch<d, dv_>(out, lse, q, k, v, B, T_, H, scale, s);
    TC2_DIMS(TC2_FWD)
#undef TC2_FWD
    die("attn_tc2_forward: head dims %d, %d are not instantiated", D, DV);
}
