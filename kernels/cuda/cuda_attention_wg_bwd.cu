// Causal flash attention backward on Hopper warpgroup MMAs (wgmma, sm_90a; building blocks in cuda_wgmma.cuh),
// selected by DSV3_ATTN_BWD=wg (cuda_attention_tc.cu) for the head dims attn_wg_supported lists. Same math and
// outputs as the mma.sync kernels (cuda_attention_tc2.cu): P = 2^(s scale log2e - lse log2e) recomputed from the
// forward's lse, dS = P (dP - Dr) with Dr = rowsum(dO * O) from the caller, dV = P^T dO, dK = scale dS^T Q,
// dQ = scale dS K; P and dS rounded to BF16 for the second products, everything else FP32.
//
// Deterministic like v2: no atomics. One launch holds two kinds of CTA (v2's interleaving: dK/dV of key tile r beside
// dQ of query tile nt-1-r, heaviest first, so neither kind leaves a tail of idle SMs):
//
// dK/dV CTA: 128 keys (warpgroup wg owns keys 64 wg .. 64 wg + 63), K and V resident in shared memory; loops over
//   the 64-query tiles from the diagonal to T, streamed through 3 cp.async stages (Q, dO, lse, Dr). Per warpgroup and
//   query tile: S^T (64 keys x 64 queries) = K Q^T and dP^T = V dO^T (wgmma m64n64k16, both operands from shared
//   memory: K, V K-major as A; the Q and dO tiles K-major as B), then P^T and dS^T elementwise on the fragments
//   (a column = one query: its lse and Dr come from shared memory), packed to BF16 A fragments (wg_pack_a), and
//   dV (64 x DV) += P^T dO, dK (64 x D) += dS^T Q (wgmma m64nDVk16 / m64nDk16 with A from registers and B = the
//   SAME Q / dO tiles read MN-major: a K-slab of (queries x 64 dims) has the byte layout of an MN-slab of
//   (64 query k-rows x 64 dims)). Accumulators dK 96 + dV 64 + S^T 32 + dP^T 32 floats a thread.
// dQ CTA: 128 queries (warpgroup wg owns 64), Q and dO resident; loops over the 64-key tiles up to the diagonal, K
//   and V streamed through 3 stages. S (64 queries x 64 keys) = Q K^T, dP = dO V^T (m64n64k16, SS), dS elementwise
//   (row statistics in registers), dQ (64 x D) += dS K (A from registers, B = the K tile read MN-major).
//
// Pipeline (both kinds): stage i % 3 holds streamed tile i; iteration i waits for its group (cp.async.wait_group 1:
// the group of tile i + 1 may still fly), fence.proxy.async, __syncthreads (which also proves every warpgroup
// finished iteration i - 1's wgmmas: each iteration ends in wgmma.wait_group 0), then refills stage (i + 2) % 3 =
// the one iteration i - 1 read. Inside a warpgroup the phases are serial (products -> elementwise -> products); the
// two warpgroups of a CTA interleave on the tensor cores.
//
// Causality: a tile pair wholly above the diagonal is skipped by the warpgroup (no wgmma at all; it still takes part
// in the barriers and loads); only tiles crossing the diagonal are masked. Rows past T: the streamed / resident rows
// are zero-filled, so a query row past T contributes nothing (its dO and Q rows are zero; its lse and Dr read as
// zero), and a key past T only meets masked (later-than-every-valid-query) positions in the dQ CTAs; rows past T are
// never stored.
#include "kernels/cuda/cuda_attention_wg_impl.cuh"

namespace {

constexpr int BW_NTH = 256;                       // 2 warpgroups
constexpr int BW_OWN = 128;                       // own rows per CTA (64 per warpgroup)
constexpr int BW_TILE = 64;                       // rows of each streamed tile
constexpr int BW_NST = 3;                         // pipeline stages
constexpr uint32_t BW_OSLAB = BW_OWN * WG_SLAB_BYTES;  // slab of 128 own rows: 16 KB
constexpr uint32_t BW_TSLAB = BW_TILE * WG_SLAB_BYTES; // slab of 64 streamed rows: 8 KB
static_assert(BW_OWN == 2 * BW_TILE, "a dK/dV CTA starts at query tile 2 kt; dQ CTA mt ends at key tile 2 mt + 1");

// Shared memory (byte offsets from the 1024-aligned base). Own rows: A = K (dK/dV) or Q (dQ), D/64 slabs of 128
// rows; B = V or dO, DV/64 slabs. Stage s: D/64 slabs of 64 rows (Q or K) then DV/64 slabs (dO or V). Then the
// dK/dV CTAs' per-stage lse (natural log, as stored) and Dr of the 64 streamed queries.
template <int D, int DV> struct BwLayout {
    static constexpr uint32_t OWN_A = 0, OWN_B = OWN_A + (D / 64) * BW_OSLAB;
    static constexpr uint32_t STAGE0 = OWN_B + (DV / 64) * BW_OSLAB;
    static constexpr uint32_t STAGE = (D / 64 + DV / 64) * BW_TSLAB, STAGE_B = (D / 64) * BW_TSLAB;
    static constexpr uint32_t STATS = STAGE0 + BW_NST * STAGE; // [stage][lse (64), Dr (64)] F32
    static constexpr size_t SMEM = STATS + BW_NST * 2 * BW_TILE * sizeof(float) + 1024;
};

// Starts loading streamed tile `it` of rows [t0, t0 + 64) into stage st: A part (NA = D/64 slabs of x_a, row
// length 64 NA) and B part (NB = DV/64 slabs of x_b).
template <int NA, int NB>
__device__ __forceinline__ void bw_load_tile(uint32_t stage, const bf16 *xa, int64_t lda, const bf16 *xb, int64_t ldb,
                                             int t0, int T_, int tid) {
#pragma unroll
    for (int s = 0; s < NA; s++) wg_load_rows<BW_TILE, BW_NTH>(stage + s * BW_TSLAB, xa, lda, t0, T_, 64 * s, tid);
#pragma unroll
    for (int s = 0; s < NB; s++)
        wg_load_rows<BW_TILE, BW_NTH>(stage + (NA + s) * BW_TSLAB, xb, ldb, t0, T_, 64 * s, tid);
}

// Loads the own rows [t0, t0 + 128): NA slabs of xa, NB slabs of xb.
template <int NA, int NB>
__device__ __forceinline__ void bw_load_own(uint32_t own_a, uint32_t own_b, const bf16 *xa, int64_t lda,
                                            const bf16 *xb, int64_t ldb, int t0, int T_, int tid) {
#pragma unroll
    for (int s = 0; s < NA; s++) wg_load_rows<BW_OWN, BW_NTH>(own_a + s * BW_OSLAB, xa, lda, t0, T_, 64 * s, tid);
#pragma unroll
    for (int s = 0; s < NB; s++) wg_load_rows<BW_OWN, BW_NTH>(own_b + s * BW_OSLAB, xb, ldb, t0, T_, 64 * s, tid);
}

// acc (64 x 64) = A (64 own rows: slabs of 128 rows at a, this warpgroup's half at +8192 wg) B^T (64 streamed rows:
// slabs at b), contraction over NK k16 steps (4 per slab); both K-major.
template <int NK>
__device__ __forceinline__ void bw_ss64(float (&acc)[32], uint32_t a, uint32_t b) {
#pragma unroll
    for (int kk = 0; kk < NK; kk++)
        wg_mma_ss_n64<0, 0>(acc, wg_desc_k(a + (kk / 4) * BW_OSLAB, kk % 4), wg_desc_k(b + (kk / 4) * BW_TSLAB, kk % 4),
                            kk > 0);
}

// acc (64 x N) += A (4 register fragments: 64 k) B (64 k-rows of the streamed tile at b, N / 64 MN-slabs).
template <int N>
__device__ __forceinline__ void bw_rs(float (&acc)[N / 2], const uint32_t (&a)[4][4], uint32_t b) {
#pragma unroll
    for (int kk = 0; kk < 4; kk++) wg_mma_rs_mn<N>(acc, a[kk], wg_desc_mn(b, kk, BW_TSLAB));
}

// Stores rows [r0 + 16 w + g, + 8] of a warpgroup accumulator acc (64 x NC) times mul into x (B, T, H, NC); rows at or
// past T are skipped.
template <int NC>
__device__ __forceinline__ void bw_store(bf16 *x, const float (&acc)[NC / 2], float mul, int b, int h, int r0, int T_,
                                         int H, int w, int g, int qd) {
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int t = r0 + 16 * w + g + 8 * i;
        if (t >= T_) continue;
        bf16 *xr = x + (((int64_t)b * T_ + t) * H + h) * NC;
#pragma unroll
        for (int j = 0; j < NC / 8; j++)
            *reinterpret_cast<__nv_bfloat162 *>(xr + 8 * j + 2 * qd) =
                __floats2bfloat162_rn(acc[4 * j + 2 * i] * mul, acc[4 * j + 2 * i + 1] * mul);
    }
}

// dK, dV of keys [128 kt, 128 kt + 128) over the 64-query tiles from 2 kt to T.
template <int D, int DV>
__device__ __forceinline__ void bw_dkv(unsigned char *sm, bf16 *dk, bf16 *dv, const bf16 *q, const bf16 *k, const bf16 *v,
                                       const bf16 *dout, const float *lse, const float *Dr, int T_, int H, int bh,
                                       int kt, float sl2, float scale) {
    using L = BwLayout<D, DV>;
    const uint32_t base = smem_u32(sm);
    const int tid = threadIdx.x, wg = tid >> 7, w = (tid >> 5) & 3, lane = tid & 31, g = lane >> 2, qd = lane & 3;
    const int b = bh / H, h = bh % H;
    const int k0 = kt * BW_OWN, kw = k0 + 64 * wg; // this warpgroup's keys: [kw, kw + 64)
    const int qt0 = k0 / BW_TILE, nit = (T_ + BW_TILE - 1) / BW_TILE - qt0;
    const int64_t ldq = (int64_t)H * D, ldv = (int64_t)H * DV;
    const int64_t head_q = ((int64_t)b * T_ * H + h) * D, head_v = ((int64_t)b * T_ * H + h) * DV;
    const float *lse_h = lse + (int64_t)bh * T_, *dr_h = Dr + (int64_t)bh * T_;
    auto load_stage = [&](int it) {
        const int st = it % BW_NST, q0 = (qt0 + it) * BW_TILE;
        bw_load_tile<D / 64, DV / 64>(base + L::STAGE0 + st * L::STAGE, q + head_q, ldq, dout + head_v, ldv, q0, T_,
                                      tid);
        if (tid < 2 * BW_TILE) { // lse (threads 0..63) and Dr (64..127) of the 64 queries
            const int r = q0 + (tid & (BW_TILE - 1));
            const float *src = (tid < BW_TILE ? lse_h : dr_h) + (r < T_ ? r : 0);
            wg_cp_async4(base + L::STATS + (st * 2 * BW_TILE + tid) * 4, src, r < T_);
        }
    };
    bw_load_own<D / 64, DV / 64>(base + L::OWN_A, base + L::OWN_B, k + head_q, ldq, v + head_v, ldv, k0, T_, tid);
    load_stage(0);
    cp_async_commit();
    if (nit > 1) load_stage(1);
    cp_async_commit();

    float dka[D / 2], dva[DV / 2], sT[32], dpT[32];
#pragma unroll
    for (int i = 0; i < D / 2; i++) dka[i] = 0.0f;
#pragma unroll
    for (int i = 0; i < DV / 2; i++) dva[i] = 0.0f;
#pragma unroll
    for (int i = 0; i < 32; i++) sT[i] = dpT[i] = 0.0f;
    const int kl = 16 * w + g; // the thread's keys: kw + kl, kw + kl + 8
    for (int it = 0; it < nit; it++) {
        cp_async_wait<1>(); // this thread's copies of tile it (tile it + 1 may still fly)
        wg_fence_proxy();
        __syncthreads(); // everyone's copies landed; every warpgroup finished iteration it - 1's wgmmas
        if (it + 2 < nit) load_stage(it + 2);
        cp_async_commit(); // possibly empty: keeps one group per iteration
        const int q0 = (qt0 + it) * BW_TILE;
        if (q0 + BW_TILE - 1 < kw) continue; // every query of the tile precedes every key of this warpgroup
        const int st = it % BW_NST;
        const uint32_t qs = base + L::STAGE0 + st * L::STAGE, ds = qs + L::STAGE_B;
        const float *stats = reinterpret_cast<const float *>(sm + L::STATS) + st * 2 * BW_TILE; // lse[64], Dr[64]
        wg_fence();
        bw_ss64<D / 16>(sT, base + L::OWN_A + wg * (64 * WG_SLAB_BYTES), qs);
        bw_ss64<DV / 16>(dpT, base + L::OWN_B + wg * (64 * WG_SLAB_BYTES), ds);
        wg_commit();
        wg_wait<0>();
        wg_fence_regs(sT);
        wg_fence_regs(dpT);
        // P^T = 2^(s sl2 - lse2), dS^T = P^T (dP^T - Dr); zero where the key follows the query (diagonal tile only)
        const bool diag = q0 < kw + 63;
        uint32_t pa[4][4], da[4][4];
#pragma unroll
        for (int j = 0; j < 8; j++)
#pragma unroll
            for (int c = 0; c < 2; c++) {
                const int col = 8 * j + 2 * qd + c; // query q0 + col
                const float l2 = stats[col] * WG_LOG2E, dr = stats[BW_TILE + col];
#pragma unroll
                for (int i = 0; i < 2; i++) {
                    const int e = 4 * j + 2 * i + c;
                    float p = wg_exp2(fmaf(sT[e], sl2, -l2));
                    if (diag && kw + kl + 8 * i > q0 + col) p = 0.0f;
                    sT[e] = p;
                    dpT[e] = p * (dpT[e] - dr);
                }
            }
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            wg_pack_a(pa[kk], sT, kk);
            wg_pack_a(da[kk], dpT, kk);
        }
        wg_fence();
        bw_rs<DV>(dva, pa, ds); // dV += P^T dO
        bw_rs<D>(dka, da, qs);  // dK += dS^T Q
        wg_commit();
        wg_wait<0>();
        wg_fence_regs(dva);
        wg_fence_regs(dka);
    }
    cp_async_wait<0>(); // nothing may still write this CTA's shared memory when it exits
    bw_store<D>(dk, dka, scale, b, h, kw, T_, H, w, g, qd);
    bw_store<DV>(dv, dva, 1.0f, b, h, kw, T_, H, w, g, qd);
}

// dQ of queries [128 mt, 128 mt + 128) over the 64-key tiles up to the diagonal and T.
template <int D, int DV>
__device__ __forceinline__ void bw_dq(unsigned char *sm, bf16 *dq, const bf16 *q, const bf16 *k, const bf16 *v,
                                      const bf16 *dout, const float *lse, const float *Dr, int T_, int H, int bh,
                                      int mt, float sl2, float scale) {
    using L = BwLayout<D, DV>;
    const uint32_t base = smem_u32(sm);
    const int tid = threadIdx.x, wg = tid >> 7, w = (tid >> 5) & 3, lane = tid & 31, g = lane >> 2, qd = lane & 3;
    const int b = bh / H, h = bh % H;
    const int q0 = mt * BW_OWN, qw = q0 + 64 * wg; // this warpgroup's queries: [qw, qw + 64)
    const int nk = min((q0 + BW_OWN) / BW_TILE, (T_ + BW_TILE - 1) / BW_TILE); // key tiles up to the diagonal and T
    const int64_t ldq = (int64_t)H * D, ldv = (int64_t)H * DV;
    const int64_t head_q = ((int64_t)b * T_ * H + h) * D, head_v = ((int64_t)b * T_ * H + h) * DV;
    auto load_stage = [&](int kt) {
        bw_load_tile<D / 64, DV / 64>(base + L::STAGE0 + (kt % BW_NST) * L::STAGE, k + head_q, ldq, v + head_v, ldv,
                                      kt * BW_TILE, T_, tid);
    };
    bw_load_own<D / 64, DV / 64>(base + L::OWN_A, base + L::OWN_B, q + head_q, ldq, dout + head_v, ldv, q0, T_, tid);
    load_stage(0);
    cp_async_commit();
    if (nk > 1) load_stage(1);
    cp_async_commit();

    const int ql = 16 * w + g; // the thread's queries: qw + ql, qw + ql + 8
    float l2[2], dr[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int r = qw + ql + 8 * i;
        l2[i] = r < T_ ? lse[(int64_t)bh * T_ + r] * WG_LOG2E : 0.0f;
        dr[i] = r < T_ ? Dr[(int64_t)bh * T_ + r] : 0.0f;
    }
    float dqa[D / 2], s[32], dp[32];
#pragma unroll
    for (int i = 0; i < D / 2; i++) dqa[i] = 0.0f;
#pragma unroll
    for (int i = 0; i < 32; i++) s[i] = dp[i] = 0.0f;
    for (int kt = 0; kt < nk; kt++) {
        cp_async_wait<1>();
        wg_fence_proxy();
        __syncthreads();
        if (kt + 2 < nk) load_stage(kt + 2);
        cp_async_commit();
        const int k0 = kt * BW_TILE;
        if (k0 > qw + 63) continue; // every key of the tile follows every query of this warpgroup
        const uint32_t ks = base + L::STAGE0 + (kt % BW_NST) * L::STAGE, vs = ks + L::STAGE_B;
        wg_fence();
        bw_ss64<D / 16>(s, base + L::OWN_A + wg * (64 * WG_SLAB_BYTES), ks);
        bw_ss64<DV / 16>(dp, base + L::OWN_B + wg * (64 * WG_SLAB_BYTES), vs);
        wg_commit();
        wg_wait<0>();
        wg_fence_regs(s);
        wg_fence_regs(dp);
        // dS = P (dP - Dr), P = 2^(s sl2 - lse2); zero where the key follows the query (diagonal tiles only)
        const bool diag = k0 + 63 > qw;
#pragma unroll
        for (int j = 0; j < 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int i = e >> 1, col = 8 * j + 2 * qd + (e & 1); // key k0 + col
                float p = wg_exp2(fmaf(s[4 * j + e], sl2, -l2[i]));
                if (diag && k0 + col > qw + ql + 8 * i) p = 0.0f;
                dp[4 * j + e] = p * (dp[4 * j + e] - dr[i]);
            }
        uint32_t da[4][4];
#pragma unroll
        for (int kk = 0; kk < 4; kk++) wg_pack_a(da[kk], dp, kk);
        wg_fence();
        bw_rs<D>(dqa, da, ks); // dQ += dS K
        wg_commit();
        wg_wait<0>();
        wg_fence_regs(dqa);
    }
    cp_async_wait<0>();
    bw_store<D>(dq, dqa, scale, b, h, qw, T_, H, w, g, qd);
}

// Block i: rank r = i / (2 BH) (0 = heaviest), kind (i / BH) % 2 (0: dK/dV of key tile r, 1: dQ of query tile
// nt-1-r; both walk 2 (nt - r) streamed tiles when T is a multiple of 128), bh = i % BH.
template <int D, int DV>
__global__ void __launch_bounds__(BW_NTH, 1)
    attn_wg_bwd_kernel(bf16 *dq, bf16 *dk, bf16 *dv, const bf16 *q, const bf16 *k, const bf16 *v, const bf16 *dout,
                       const float *lse, const float *Dr, int T_, int H, int BH, int nt, float sl2, float scale) {
    extern __shared__ __align__(1024) unsigned char wg_bsmem[];
    unsigned char *sm = wg_bsmem + (((smem_u32(wg_bsmem) + 1023u) & ~1023u) - smem_u32(wg_bsmem)); // 1024-aligned
    const int i = blockIdx.x, r = i / (2 * BH), kind = (i / BH) & 1, bh = i % BH;
    if (kind == 0) bw_dkv<D, DV>(sm, dk, dv, q, k, v, dout, lse, Dr, T_, H, bh, r, sl2, scale);
    else bw_dq<D, DV>(sm, dq, q, k, v, dout, lse, Dr, T_, H, bh, nt - 1 - r, sl2, scale);
}

template <int D, int DV>
void bw_launch(bf16 *dq, bf16 *dk, bf16 *dv, const bf16 *q, const bf16 *k, const bf16 *v, const bf16 *dout,
               const float *lse, const float *Dr, int B, int T_, int H, float scale, cudaStream_t s) {
    constexpr size_t smem = BwLayout<D, DV>::SMEM;
    static_assert(smem <= WG_SMEM_LIMIT, "backward tiles must fit one block's shared memory");
    static_assert(D % 64 == 0 && DV % 64 == 0 && D <= 192 && DV <= 192, "K-slabs of 64; m64nNk16 up to N 192");
    static bool attr_done = false;
    if (!attr_done) {
        CUDA_CHECK(cudaFuncSetAttribute(attn_wg_bwd_kernel<D, DV>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        (int)smem));
        attr_done = true;
    }
    const int BH = B * H, nt = (T_ + BW_OWN - 1) / BW_OWN;
    attn_wg_bwd_kernel<D, DV><<<(unsigned)(2 * (int64_t)nt * BH), BW_NTH, smem, s>>>(
        dq, dk, dv, q, k, v, dout, lse, Dr, T_, H, BH, nt, scale * WG_LOG2E, scale);
    CUDA_LAUNCH_CHECK("attn_wg_bwd_kernel");
}

} // namespace

// The same head-dim pairs as the forward (cuda_attention_wg.cu: WG_DIMS, attn_wg_supported).
#define WG_BWD_DIMS(X) X(192, 128) X(128, 128) X(64, 64)

void attn_wg_backward(bf16 *dq, bf16 *dk, bf16 *dv, const bf16 *q, const bf16 *k, const bf16 *v, const bf16 *dout,
                      const float *lse, const float *Dr, int B, int T_, int H, int D, int DV, float scale,
                      cudaStream_t s) {
#define WG_BWD(d, dv_)                                                                                                \
    if (D == d && DV == dv_) return bw_launch<d, dv_>(dq, dk, dv, q, k, v, dout, lse, Dr, B, T_, H, scale, s);
    WG_BWD_DIMS(WG_BWD)
#undef WG_BWD
    die("attn_wg_backward: head dims %d, %d are not instantiated", D, DV);
}
