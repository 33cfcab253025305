// Causal flash attention forward on Hopper warpgroup MMAs (wgmma, sm_90a; building blocks in cuda_wgmma.cuh), BF16
// q/k/v, FP32 scores, softmax statistics and accumulators. Selected by DSV3_ATTN_FWD=wg (cuda_attention_tc.cu) for
// the head dims instantiated below; same outputs as the mma.sync kernels (cuda_attention_tc2.cu): out = softmax(scale
// q k^T) v in BF16 and lse (B, H, T) = the natural-log logsumexp of the scaled scores (the backward reads it).
//
// Why: the mma.sync forward (v2, 225 TFLOP/s on an H100 at B 4, T 4096, H 12, D 192, DV 128) is bound by ldmatrix:
// every warp reloads each K / V fragment for its own 16 rows. A wgmma reads its B operand from shared memory once
// for 64 rows (one warpgroup) and its A operand straight from shared memory (Q) or from registers (P).
//
// CTA: 2 warpgroups (256 threads), 128 queries [128 mt, 128 mt + 128); warpgroup wg owns rows 64 wg .. 64 wg + 63.
// Key tiles of 128 keys, K and V each double-buffered in shared memory:
//   Q (128 x D) as D/64 K-slabs (A of S = Q K^T, K-major)                     48 KB at D 192
//   K (128 keys x D) x 2 buffers, D/64 K-slabs each (B of S, K-major: (N, K) row-major)  96 KB
//   V (128 keys x DV) x 2 buffers, DV/64 MN-slabs each (B of O += P V: (K, N) row-major, MN-major)  64 KB
// Per warpgroup and key tile: S (64 x 128) = Q K^T by 12 wgmma m64n128k16 (both operands from shared memory), the
// online softmax on the accumulator fragments (a row lives in the 4 lanes of a quad), P packed to BF16 registers in
// the A-fragment layout (wg_pack_a) and O (64 x DV) += P V by 8 wgmma m64nDVk16 with A from registers.
//
// Overlap inside a warpgroup (FlashAttention-3's "intra-warpgroup pipelining"): iteration j issues S_{j+1} = Q K_{j+1}^T
// and then O += P_j V_j, waits only for S_{j+1}, runs the softmax of S_{j+1} (exp2 on the MUFU pipe) while the tensor
// cores still work on P_j V_j, then waits for that, rescales O by the new running maximum and packs P_{j+1}. Only one
// S fragment (64 floats), O (64 floats at DV 128) and P (32 registers) are live: about 190 registers a thread.
// The two warpgroups share the tensor cores; whichever finished its scores first runs its softmax while the other's
// products execute.
//
// Pipeline of the loads (cp.async by all 256 threads, one group in flight): the group issued in iteration j holds
// K_{j+2} (into the buffer K_j used) and V_{j+1} (into the buffer V_{j-1} used); iteration j + 1 starts with
// cp.async.wait_group 0, fence.proxy.async (cp.async writes become visible to wgmma's async-proxy reads) and one
// __syncthreads, which also proves both warpgroups finished every wgmma of iteration j (each ends with
// wgmma.wait_group 0) before those buffers are refilled.
//
// Causality: key tiles 0 .. mt; only tile mt (the diagonal: the key tile starts at the query tile's first row) is
// masked, by a compile-time-selected copy of the softmax. Query rows past T hold zero Q (cp.async zero-fill) and are
// not stored; keys past T only appear in the diagonal tile, after every valid row, so the mask removes them.
// Heaviest query tiles (most key tiles) are launched first. lse = (m + log2 l) ln 2 with m, l the exp2-domain running
// maximum and sum, as in the mma.sync kernels.
#include "kernels/cuda/cuda_attention_wg_impl.cuh"

namespace {

constexpr int FW_BM = 128, FW_BN = 128; // queries per CTA (64 per warpgroup), keys per streamed tile
constexpr int FW_NTH = 256;             // 2 warpgroups
constexpr uint32_t FW_SLAB = 128 * WG_SLAB_BYTES; // one slab of 128 rows: 16 KB
static_assert(FW_BM == FW_BN, "the diagonal key tile starts at the query tile's first row (mask in local indices)");
static_assert(FW_BN == 128, "S is one m64n128 accumulator; P is 8 k16 steps");

// Shared-memory layout (byte offsets from the 1024-aligned base; every slab is 16 KB, so all stay 1024-aligned).
template <int D, int DV> struct FwLayout {
    static constexpr uint32_t Q = 0;
    static constexpr uint32_t KBUF = FW_BN * D * 2, K = Q + FW_BM * D * 2;
    static constexpr uint32_t VBUF = FW_BN * DV * 2, V = K + 2 * KBUF;
    static constexpr size_t SMEM = V + 2 * VBUF + 1024; // + slack to align the dynamic window's base
};

// S (64 x 128) = Q_wg (64 x D) K^T: qw = this warpgroup's first row in the first Q slab, kb = the K buffer.
template <int D> __device__ __forceinline__ void fw_scores(float (&S)[64], uint32_t qw, uint32_t kb) {
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++)
        wg_mma_ss_n128<0, 0>(S, wg_desc_k(qw + (kk / 4) * FW_SLAB, kk % 4), wg_desc_k(kb + (kk / 4) * FW_SLAB, kk % 4),
                             kk > 0);
}

// O (64 x DV) += P (64 x 128 keys, BF16 registers) V (128 keys x DV, MN-major slabs at vb).
template <int DV> __device__ __forceinline__ void fw_pv(float (&O)[DV / 2], const uint32_t (&P)[8][4], uint32_t vb) {
#pragma unroll
    for (int kk = 0; kk < FW_BN / 16; kk++)
        wg_mma_rs_mn<DV>(O, P[kk], wg_desc_mn(vb, kk, FW_SLAB));
}

// Online softmax of one score tile in place (S -> unnormalized probabilities 2^(s scale log2e - m)); m, l: the
// running exp2-domain maximum and per-thread partial sum of the thread's two rows, alpha: the factor the previous
// O and l are scaled by. MASK (diagonal tile): key column c > query row r is -inf; rl = the thread's first row
// within the CTA tile (the second is rl + 8), columns within the key tile.
template <bool MASK>
__device__ __forceinline__ void fw_softmax(float (&S)[64], float (&m)[2], float (&l)[2], float (&alpha)[2], int rl,
                                           int qd, float sl2) {
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int j = 0; j < 16; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            if (MASK && 8 * j + 2 * qd + (e & 1) > rl + 8 * (e >> 1)) S[4 * j + e] = -INFINITY;
            mx[e >> 1] = fmaxf(mx[e >> 1], S[4 * j + e]);
        }
    float nb[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const float mn = fmaxf(m[i], quad_max(mx[i]) * sl2); // scale > 0: the max commutes with scaling
        const float bse = mn == -INFINITY ? 0.0f : mn;          // a row with nothing visible yet stays at zero
        alpha[i] = wg_exp2(m[i] - bse);
        m[i] = mn;
        l[i] *= alpha[i];
        nb[i] = -bse;
    }
#pragma unroll
    for (int j = 0; j < 16; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const float p = wg_exp2(fmaf(S[4 * j + e], sl2, nb[e >> 1]));
            S[4 * j + e] = p;
            l[e >> 1] += p;
        }
}

__device__ __forceinline__ void fw_pack(uint32_t (&P)[8][4], const float (&S)[64]) {
#pragma unroll
    for (int kk = 0; kk < 8; kk++) wg_pack_a(P[kk], S, kk);
}

// grid: nt * BH CTAs, block i: query tile nt - 1 - i / BH (heaviest first) of (b, h) = i % BH.
template <int D, int DV>
__global__ void __launch_bounds__(FW_NTH, 1) attn_wg_fwd_kernel(bf16 *out, float *lse, const bf16 *q, const bf16 *k,
                                                                const bf16 *v, int T_, int H, int BH, int nt,
                                                                float sl2) {
    using L = FwLayout<D, DV>;
    constexpr int NKS = D / 64, NVS = DV / 64;
    extern __shared__ __align__(1024) unsigned char wg_smem[];
    const uint32_t base = (smem_u32(wg_smem) + 1023u) & ~1023u;
    const int tid = threadIdx.x, wg = tid >> 7, w = (tid >> 5) & 3, lane = tid & 31, g = lane >> 2, qd = lane & 3;
    const int mt = nt - 1 - (int)blockIdx.x / BH, bh = (int)blockIdx.x % BH, b = bh / H, h = bh % H;
    const int q0 = mt * FW_BM, n = mt + 1; // key tiles 0 .. mt (all start below T: 128 kt <= q0 < T)
    const int64_t ldq = (int64_t)H * D, ldv = (int64_t)H * DV;
    const bf16 *qh = q + ((int64_t)b * T_ * H + h) * D, *kh = k + ((int64_t)b * T_ * H + h) * D;
    const bf16 *vh = v + ((int64_t)b * T_ * H + h) * DV;
    auto load_k = [&](int kt, int buf) {
#pragma unroll
        for (int s = 0; s < NKS; s++)
            wg_load_rows<FW_BN, FW_NTH>(base + L::K + buf * L::KBUF + s * FW_SLAB, kh, ldq, kt * FW_BN, T_, 64 * s, tid);
    };
    auto load_v = [&](int kt, int buf) {
#pragma unroll
        for (int s = 0; s < NVS; s++)
            wg_load_rows<FW_BN, FW_NTH>(base + L::V + buf * L::VBUF + s * FW_SLAB, vh, ldv, kt * FW_BN, T_, 64 * s, tid);
    };
    // group 1: Q and K_0; group 2: K_1 and V_0
#pragma unroll
    for (int s = 0; s < NKS; s++) wg_load_rows<FW_BM, FW_NTH>(base + L::Q + s * FW_SLAB, qh, ldq, q0, T_, 64 * s, tid);
    load_k(0, 0);
    cp_async_commit();
    if (n > 1) load_k(1, 1);
    load_v(0, 0);
    cp_async_commit();

    const uint32_t qw = base + L::Q + wg * (64 * WG_SLAB_BYTES); // rows 64 wg .. of each Q slab (1024-aligned)
    const int rl = 64 * wg + 16 * w + g;                         // the thread's rows in the tile: rl, rl + 8
    float S[64], O[DV / 2], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f}, alpha[2];
    uint32_t P[8][4];
#pragma unroll
    for (int i = 0; i < 64; i++) S[i] = 0.0f;
#pragma unroll
    for (int i = 0; i < DV / 2; i++) O[i] = 0.0f;

    cp_async_wait<1>();
    wg_fence_proxy();
    __syncthreads();
    wg_fence();
    fw_scores<D>(S, qw, base + L::K);
    wg_commit();
    wg_wait<0>();
    wg_fence_regs(S);
    if (mt == 0) fw_softmax<true>(S, m, l, alpha, rl, qd, sl2);
    else fw_softmax<false>(S, m, l, alpha, rl, qd, sl2);
    fw_pack(P, S); // O is still zero: no rescale

    for (int j = 0; j + 1 < n; j++) {
        cp_async_wait<0>(); // this thread's copies of K_{j+1}, V_j
        wg_fence_proxy();
        __syncthreads(); // everyone's copies landed; both warpgroups are past iteration j - 1's wgmma.wait_group 0
        if (j + 2 < n) load_k(j + 2, j & 1);
        load_v(j + 1, (j + 1) & 1);
        cp_async_commit();
        wg_fence();
        fw_scores<D>(S, qw, base + L::K + ((j + 1) & 1) * L::KBUF);
        wg_commit();
        fw_pv<DV>(O, P, base + L::V + (j & 1) * L::VBUF);
        wg_commit();
        wg_wait<1>(); // S_{j+1} done; P_j V_j may still run
        wg_fence_regs(S);
        if (j + 1 == mt) fw_softmax<true>(S, m, l, alpha, rl, qd, sl2);
        else fw_softmax<false>(S, m, l, alpha, rl, qd, sl2);
        wg_wait<0>();
        wg_fence_regs(O);
        wg_fence_regs(S);
#pragma unroll
        for (int i = 0; i < DV / 2; i++) O[i] *= alpha[(i >> 1) & 1];
        fw_pack(P, S);
    }
    // the last key tile (the diagonal): its V landed with the last group
    cp_async_wait<0>();
    wg_fence_proxy();
    __syncthreads();
    wg_fence();
    fw_pv<DV>(O, P, base + L::V + ((n - 1) & 1) * L::VBUF);
    wg_commit();
    wg_wait<0>();
    wg_fence_regs(O);

    // epilogue: quad sums, lse, O / l
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int row = q0 + rl + 8 * i;
        const float lr = quad_sum(l[i]), inv = 1.0f / lr;
        if (row >= T_) continue;
        if (qd == 0) lse[(int64_t)bh * T_ + row] = (m[i] + log2f(lr)) * WG_LN2;
        bf16 *orow = out + (((int64_t)b * T_ + row) * H + h) * DV;
#pragma unroll
        for (int j = 0; j < DV / 8; j++)
            *reinterpret_cast<__nv_bfloat162 *>(orow + 8 * j + 2 * qd) =
                __floats2bfloat162_rn(O[4 * j + 2 * i] * inv, O[4 * j + 2 * i + 1] * inv);
    }
}

template <int D, int DV>
void fw_launch(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, int B, int T_, int H, float scale,
               cudaStream_t s) {
    constexpr size_t smem = FwLayout<D, DV>::SMEM;
    static_assert(smem <= WG_SMEM_LIMIT, "forward tiles must fit one block's shared memory");
    static_assert(D % 64 == 0 && (DV == 64 || DV == 128), "K-slabs of 64 head dims; O is one m64n64/n128 fragment");
    static bool attr_done = false;
    if (!attr_done) {
        CUDA_CHECK(cudaFuncSetAttribute(attn_wg_fwd_kernel<D, DV>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        (int)smem));
        attr_done = true;
    }
    const int BH = B * H, nt = (T_ + FW_BM - 1) / FW_BM;
    attn_wg_fwd_kernel<D, DV><<<(unsigned)((int64_t)nt * BH), FW_NTH, smem, s>>>(out, lse, q, k, v, T_, H, BH, nt,
                                                                                scale * WG_LOG2E);
    CUDA_LAUNCH_CHECK("attn_wg_fwd_kernel");
}

} // namespace

// The head-dim pairs instantiated here (forward and backward): MLA's (192, 128) and the common 128 / 64 heads.
#define WG_DIMS(X) X(192, 128) X(128, 128) X(64, 64)

bool attn_wg_supported(int D, int DV) {
#define WG_MATCH(d, dv)                                                                                               \
    if (D == d && DV == dv) return true;
    WG_DIMS(WG_MATCH)
#undef WG_MATCH
    return false;
}

void attn_wg_forward(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, int B, int T_, int H, int D,
                     int DV, float scale, cudaStream_t s) {
#define WG_FWD(d, dv_)                                                                                                \
    if (D == d && DV == dv_) return fw_launch<d, dv_>(out, lse, q, k, v, B, T_, H, scale, s);
    WG_DIMS(WG_FWD)
#undef WG_FWD
    die("attn_wg_forward: head dims %d, %d are not instantiated", D, DV);
}
