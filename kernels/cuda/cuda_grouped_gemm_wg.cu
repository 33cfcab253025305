// BF16 grouped (MoE expert) GEMMs on Hopper with warpgroup MMA (wgmma): the products, semantics and conditions of
// cuda_grouped_gemm.cu (see cuda_grouped_gemm.h), one launch each for all experts, FP32 accumulation:
//   sm90_bf16_grouped_gemm_wg_nt     out  (R, N)    = inp (R, K) @ w[e] (N, K)^T     per segment (forward)
//   sm90_bf16_grouped_gemm_wg_nn     dinp (R, K)  (+)= dout (R, N) @ w[e] (N, K)     per segment (input gradient)
//   sm90_bf16_grouped_gemm_wg_tn_dw  dw[e] (N, K)  += dout_seg^T @ inp_seg            (weight gradient, F32)
// Expert e owns rows [offsets[e], offsets[e + 1]); only the DEVICE offsets are read (cuda_grouped_gemm.cuh).
//
// Math: wgmma.mma_async m64nBNk16 (BN = 256 or 128) with both operands read from 128-byte-swizzled shared memory
// through descriptors (cuda_wgmma.cuh). A (M x k) and B (k x N) per product:
//   nt: A = inp rows (K-major), B = w[e] stored (N, K) (K-major)
//   nn: A = dout rows (K-major, k = N), B = w[e] stored (N = k, K) (MN-major: the output columns are contiguous)
//   dw: A = dout_seg^T stored (rows = k, N = M) (MN-major), B = inp_seg stored (rows = k, K) (MN-major)
// A K-major stage is one K-slab (rows x 64 k, 128 bytes a row); an MN-major stage is 64 k-rows x 64 m/n per
// MN-slab, consecutive MN-slabs 8 KB apart (the descriptor's LBO). Every slab starts 1024-byte aligned.
//
// CTA: 256 threads = 2 warpgroups; the CTA tile is 128 x BN, warpgroup g computing rows 64 g .. 64 g + 63 (BN / 2
// FP32 accumulators per thread, in the fragment layout of cuda_wgmma.cuh). All threads both copy (cp.async,
// zero-filling what lies outside the operands) and multiply. The contraction advances BK = 64 per stage through a
// ring of STAGES shared-memory buffers (~193 KB, one CTA per SM). Per stage q (buffer q % STAGES):
//   cp.async.wait_group (this thread's copies of stage q landed); fence.proxy.async (visible to wgmma); barrier B1
//   4 wgmma (k16 steps) on buffer q; commit; wgmma.wait_group 1 (this warpgroup's products of stage q - 1 are done)
//   barrier B2 (both warpgroups': buffer (q - 1) % STAGES is free); cp.async of stage q + STAGES - 1 into it; commit
// so copies run STAGES - 1 stages ahead, a buffer is refilled only after every wgmma reading it completed, and the
// tensor cores have stage q queued while stage q - 1 runs. One cp.async group is committed per stage, empty past
// the last copy, so wait_group's counting is the same in every thread.
//
// Scheduling. nt/nn: persistent; grid = min(tiles, SMs), CTA b takes tiles b, b + grid, ... of the (row tile, column
// tile) sequence (column tile fastest; row tiles as in cuda_grouped_gemm.cuh, found with a warp scan of the device
// offsets). The copies walk the same tile sequence, so the first stages of the next tile stream in while the
// current one finishes; only the epilogue is exposed. Epilogue: BF16 outputs that are not accumulated (the forward
// products, a first input gradient) are rounded into a shared staging tile and leave by asynchronous bulk copies,
// one per row, while the CTA starts its next tile (store_staged); the rest (F32, accumulating) go from the
// fragments straight to global memory (store_acc). dw: one CTA per
// (expert, N tile, K tile); it owns that dw tile, sums its segment's rows in order (BK rows per stage) and adds the
// sum once: deterministic, no atomics. Tile work grows with the expert's rows (very uneven under skewed routing),
// so block b takes the expert of rank b / tiles_per_expert in descending row count: the hardware starts the longest
// CTAs first and fills in with short ones (longest-processing-time-first).
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_grouped_gemm.cuh"
#include "kernels/cuda/cuda_wgmma.cuh"

#include <string.h>
#include <type_traits>

#include "kernels/cuda/cuda_grouped_gemm.h"

namespace {

constexpr size_t SMEM_LIMIT = 227 * 1024; // per-block opt-in maximum of dynamic shared memory on sm_90
constexpr uint32_t MN_SLAB = 64 * 128;    // bytes of an MN-slab of 64 k-rows, and of 64 rows of a K-slab

// STAGED: the BF16 epilogue goes through a shared-memory staging tile and asynchronous bulk copies (one per row,
// cp.async.bulk) instead of 4-byte stores from the fragments; see store_staged. The staging rows are padded by 16
// bytes so the fragment writes are bank-conflict free and every row starts 16-byte aligned (the bulk copy's rule).
template <int BN_, int STAGES_, bool STAGED_ = false> struct WgCfg {
    static constexpr int BM = 128, BN = BN_, BK = 64, STAGES = STAGES_, THREADS = 256;
    static constexpr bool STAGED = STAGED_;
    static constexpr uint32_t A_BYTES = BM * BK * 2, B_BYTES = BN * BK * 2, STAGE_BYTES = A_BYTES + B_BYTES;
    static constexpr uint32_t STG_ROW = BN * 2 + 16, STG_BYTES = STAGED ? BM * STG_ROW : 0;
    // + the slack to align the ring to 1024; the staging tile follows the ring
    static constexpr size_t SMEM = (size_t)STAGES * STAGE_BYTES + STG_BYTES + 1024;
    static constexpr int ACC = BN / 2;                                   // accumulators per thread: 64 x BN / 128
    static_assert(BN == 128 || BN == 256, "the instructions used: wg_mma_ss_n128 / n256");
    static_assert(THREADS == 2 * 128 && BM == 2 * 64, "two warpgroups, 64 rows (one m64 wgmma) each");
    static_assert(BK == 64, "a stage is one 128-byte swizzled k row (K-major) / 64 k-rows (MN-major): 4 k16 steps");
    static_assert(A_BYTES == 2 * MN_SLAB && B_BYTES == (BN / 64) * MN_SLAB, "A and B are whole 64-row slabs");
    static_assert(A_BYTES % 1024 == 0 && STAGE_BYTES % 1024 == 0, "every slab starts 1024-byte aligned");
    static_assert(((BM * BK / 8) % THREADS) == 0 && ((BN * BK / 8) % THREADS) == 0, "whole 16-byte chunks a thread");
    static_assert(STAGES >= 3, "copies run STAGES - 1 stages ahead of the multiplies");
    static_assert(SMEM + 64 <= SMEM_LIMIT, "the ring (and the dw kernel's static word) fit one CTA's shared memory");
    static_assert(BN >= 128, "cuda_gg_supported bounds the grids with 128 x 128 tiles");
};
// 128 x 256 tiles, 4 stages of 48 KB; 128 x 128 tiles, 6 stages of 32 KB (DSV3_GG_WG_BN=128).
using Cfg256 = WgCfg<256, 4>;
using Cfg128 = WgCfg<128, 6>;
// 128 x 256 tiles, 3 stages of 48 KB and a 66 KB staging tile for the bulk-copy epilogue (the default;
// DSV3_GG_WG_EPI=direct selects Cfg256).
using Cfg256s = WgCfg<256, 3, true>;

// Copies NSLAB slabs of ROWS rows x 64 BF16 (128-byte rows, swizzled): slab j (at dst + j ROWS 128) gets rows
// [r0, r0 + ROWS) x columns [c0 + 64 j, c0 + 64 j + 64) of the row-major g (row stride ld). Rows at or past r_end and
// columns at or past c_end are zero-filled; c0 and c_end are multiples of 8, so a 16-byte chunk is all in or out.
template <int ROWS, int NSLAB, int THREADS>
__device__ __forceinline__ void load_block(uint32_t dst, const bf16 *g, int64_t ld, int r0, int r_end, int c0,
                                           int c_end) {
    constexpr int CHUNKS = NSLAB * ROWS * 8;
    static_assert(CHUNKS % THREADS == 0, "every thread copies the same number of chunks");
#pragma unroll
    for (int i = 0; i < CHUNKS / THREADS; i++) {
        const int idx = (int)threadIdx.x + i * THREADS; // 8 consecutive threads copy one 128-byte row
        const int c = idx & 7, r = (idx >> 3) % ROWS, j = idx / (ROWS * 8);
        const int gr = r0 + r, gc = c0 + 64 * j + 8 * c;
        const bool ok = gr < r_end && gc < c_end;
        const bf16 *src = ok ? g + (int64_t)gr * ld + gc : g;
        cp_async16(dst + (uint32_t)j * (ROWS * 128u) + wg_sw128((uint32_t)r, (uint32_t)c), src, ok);
    }
}

template <int BN, int TA, int TB>
__device__ __forceinline__ void wg_mma(float (&d)[BN / 2], uint64_t da, uint64_t db, int accumulate) {
    if constexpr (BN == 256) wg_mma_ss_n256<TA, TB>(d, da, db, accumulate);
    else wg_mma_ss_n128<TA, TB>(d, da, db, accumulate);
}

__device__ __forceinline__ float2 ld2(const float *p) { return *reinterpret_cast<const float2 *>(p); }
__device__ __forceinline__ float2 ld2(const bf16 *p) {
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(p));
}
__device__ __forceinline__ void st2(float *p, float x, float y) { *reinterpret_cast<float2 *>(p) = make_float2(x, y); }
__device__ __forceinline__ void st2(bf16 *p, float x, float y) {
    *reinterpret_cast<__nv_bfloat162 *>(p) = __floats2bfloat162_rn(x, y);
}

// Writes the CTA tile's accumulators d (this thread's fragment) to rows [r0, r0 + 128) below r_end and columns
// [c0, c0 + BN) below c_end (a multiple of 8: a thread's column pair is all in or out) of the row-major c (row stride
// ld). accumulate: c += d, summed in FP32 and rounded once; the old values are all loaded (into d, which is dead
// afterwards) before any store, so the loads are not serialized behind stores the compiler cannot prove disjoint.
// Fragment (cuda_wgmma.cuh): warp w of warpgroup g, lane 4 gr + q: d[4 j + 2 h + 0..1] is row 64 g + 16 w + gr + 8 h,
// columns 8 j + 2 q + 0..1.
template <int BN, typename OutT>
__device__ __forceinline__ void store_acc(OutT *c, int64_t ld, float (&d)[BN / 2], int r0, int r_end, int c0,
                                          int c_end, int accumulate) {
    const int lane = threadIdx.x & 31, q = lane & 3;
    const int rw = r0 + 64 * (int)(threadIdx.x >> 7) + 16 * (int)((threadIdx.x >> 5) & 3) + (lane >> 2);
    if (accumulate) {
#pragma unroll
        for (int h = 0; h < 2; h++) {
            if (rw + 8 * h >= r_end) continue;
            const OutT *row = c + (int64_t)(rw + 8 * h) * ld;
#pragma unroll
            for (int j = 0; j < BN / 8; j++) {
                const int col = c0 + 8 * j + 2 * q;
                if (col >= c_end) continue;
                const float2 o = ld2(row + col);
                d[4 * j + 2 * h] += o.x, d[4 * j + 2 * h + 1] += o.y;
            }
        }
    }
#pragma unroll
    for (int h = 0; h < 2; h++) {
        if (rw + 8 * h >= r_end) continue;
        OutT *row = c + (int64_t)(rw + 8 * h) * ld;
#pragma unroll
        for (int j = 0; j < BN / 8; j++) {
            const int col = c0 + 8 * j + 2 * q;
            if (col < c_end) st2(row + col, d[4 * j + 2 * h], d[4 * j + 2 * h + 1]);
        }
    }
}

// The asynchronous bulk copy (sm_90, no tensor map): bytes (a multiple of 16) from shared src to global dst, both
// 16-byte aligned, tracked in this thread's bulk groups.
__device__ __forceinline__ void bulk_store(void *dst, uint32_t src, uint32_t bytes) {
    asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;\n" ::"l"(dst), "r"(src), "r"(bytes)
                 : "memory");
}
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
// This thread's bulk copies have read their shared source (the buffer may be rewritten).
__device__ __forceinline__ void bulk_wait_read() { asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory"); }
// This thread's bulk copies are complete (their global writes done).
__device__ __forceinline__ void bulk_wait_all() { asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory"); }

// The staged BF16 epilogue (no accumulate): the fragments are rounded into the shared staging tile stg (BM rows of
// Cfg::STG_ROW bytes), then threads 0..127 each start one bulk copy of their row (columns [c0, min(c0 + BN, c_end)))
// if it lies below r_end, and the CTA goes on to its next tile while the copies drain. Before the staging tile is
// rewritten, the issuing threads wait until their previous copies have read it (long done in practice: a whole
// tile's products run in between), then a barrier. The rounding is __floats2bfloat162_rn as in store_acc, so both
// epilogues write the same bits.
template <class Cfg>
__device__ __forceinline__ void store_staged(bf16 *c, int64_t ld, float (&d)[Cfg::ACC], int r0, int r_end, int c0,
                                             int c_end, uint32_t stg) {
    constexpr int BN = Cfg::BN;
    if (threadIdx.x < Cfg::BM) bulk_wait_read();
    __syncthreads();
    const int lane = threadIdx.x & 31, q = lane & 3;
    const int rl = 64 * (int)(threadIdx.x >> 7) + 16 * (int)((threadIdx.x >> 5) & 3) + (lane >> 2);
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const uint32_t row = stg + (uint32_t)(rl + 8 * h) * Cfg::STG_ROW + 4u * q;
#pragma unroll
        for (int j = 0; j < BN / 8; j++) {
            const __nv_bfloat162 v = __floats2bfloat162_rn(d[4 * j + 2 * h], d[4 * j + 2 * h + 1]);
            asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(row + 16u * j), "r"(*reinterpret_cast<const uint32_t *>(&v))
                         : "memory");
        }
    }
    wg_fence_proxy(); // the generic-proxy writes above become visible to the bulk copies (async proxy)
    __syncthreads();
    if (threadIdx.x < Cfg::BM) {
        const int r = r0 + (int)threadIdx.x, ncol = min(BN, c_end - c0);
        if (r < r_end && ncol > 0)
            bulk_store(c + (int64_t)r * ld + c0, stg + threadIdx.x * Cfg::STG_ROW, (uint32_t)ncol * 2u);
        bulk_commit();
    }
}

// One output tile: rows [m0, m0 + 128) (valid below m_end) of expert e, columns [c0, c0 + BN), contraction
// [k0, k_end) (never empty: the kernels handle an empty contraction before the pipeline).
struct Tile {
    int e, m0, m_end, c0, k0, k_end;
};

// The products. get(j, t): the CTA's j-th tile (false past its last; the same answer in every thread). load: starts
// the copies of contraction [kc, kc + 64) of tile t into the stage buffers sa (A) and sb (B). store: the epilogue.
// TA / TB: the instruction's operand majorness (0 K-major, 1 MN-major).

// out (R, N) = inp (R, K) @ w[e] (N, K)^T.
template <class Cfg, typename OutT> struct ProbNT {
    static constexpr int TA = 0, TB = 0;
    OutT *out;
    const bf16 *inp, *w;
    const int32_t *off;
    int R, E, N, K, col_tiles;
    long long tiles; // the grid's bound on (row tile, column tile) pairs
    __device__ __forceinline__ bool get(int j, Tile &t) const {
        const long long idx = (long long)blockIdx.x + (long long)j * gridDim.x;
        if (idx >= tiles || !find_row_tile<Cfg::BM>(off, E, R, (int)(idx / col_tiles), t.e, t.m0, t.m_end))
            return false;
        t.c0 = (int)(idx % col_tiles) * Cfg::BN, t.k0 = 0, t.k_end = K;
        return true;
    }
    __device__ __forceinline__ void load(const Tile &t, int kc, uint32_t sa, uint32_t sb) const {
        load_block<Cfg::BM, 1, Cfg::THREADS>(sa, inp, K, t.m0, t.m_end, kc, K);
        load_block<Cfg::BN, 1, Cfg::THREADS>(sb, w + (int64_t)t.e * N * K, K, t.c0, N, kc, K);
    }
    __device__ __forceinline__ void store(const Tile &t, float (&d)[Cfg::ACC], uint32_t stg) const {
        if constexpr (Cfg::STAGED && std::is_same_v<OutT, bf16>)
            store_staged<Cfg>(out, N, d, t.m0, t.m_end, t.c0, N, stg);
        else
            store_acc<Cfg::BN>(out, N, d, t.m0, t.m_end, t.c0, N, 0);
    }
};

// dinp (R, K) (+)= dout (R, N) @ w[e] (N, K): the contraction runs over N.
template <class Cfg, typename OutT> struct ProbNN {
    static constexpr int TA = 0, TB = 1;
    OutT *dinp;
    const bf16 *dout, *w;
    const int32_t *off;
    int R, E, N, K, col_tiles, accumulate;
    long long tiles;
    __device__ __forceinline__ bool get(int j, Tile &t) const {
        const long long idx = (long long)blockIdx.x + (long long)j * gridDim.x;
        if (idx >= tiles || !find_row_tile<Cfg::BM>(off, E, R, (int)(idx / col_tiles), t.e, t.m0, t.m_end))
            return false;
        t.c0 = (int)(idx % col_tiles) * Cfg::BN, t.k0 = 0, t.k_end = N;
        return true;
    }
    __device__ __forceinline__ void load(const Tile &t, int kc, uint32_t sa, uint32_t sb) const {
        load_block<Cfg::BM, 1, Cfg::THREADS>(sa, dout, N, t.m0, t.m_end, kc, N);
        load_block<Cfg::BK, Cfg::BN / 64, Cfg::THREADS>(sb, w + (int64_t)t.e * N * K, K, kc, N, t.c0, K);
    }
    __device__ __forceinline__ void store(const Tile &t, float (&d)[Cfg::ACC], uint32_t stg) const {
        if constexpr (Cfg::STAGED && std::is_same_v<OutT, bf16>) {
            if (!accumulate) return store_staged<Cfg>(dinp, K, d, t.m0, t.m_end, t.c0, K, stg);
        }
        store_acc<Cfg::BN>(dinp, K, d, t.m0, t.m_end, t.c0, K, accumulate);
    }
};

// dinp (R, K) = da (R, N) @ wa[e] (N, K) + db (R, N) @ wb[e] (N, K): one contraction over both products (the MoE
// gate and up projections' input gradients), so the sum is formed in the FP32 accumulators and rounded once, the
// contraction is twice as deep as either product's, and nothing is read back. Contraction index kc in
// [0, NP + N): [0, NP) walks product a (NP = N rounded up to the 64-deep stage, the columns past N zero-filled by
// load_block), [NP, NP + N) product b, so no stage mixes the two.
template <class Cfg, typename OutT> struct ProbNN2 {
    static constexpr int TA = 0, TB = 1;
    OutT *dinp;
    const bf16 *da, *wa, *db, *wb;
    const int32_t *off;
    int R, E, N, K, NP, col_tiles;
    long long tiles;
    __device__ __forceinline__ bool get(int j, Tile &t) const {
        const long long idx = (long long)blockIdx.x + (long long)j * gridDim.x;
        if (idx >= tiles || !find_row_tile<Cfg::BM>(off, E, R, (int)(idx / col_tiles), t.e, t.m0, t.m_end))
            return false;
        t.c0 = (int)(idx % col_tiles) * Cfg::BN, t.k0 = 0, t.k_end = NP + N;
        return true;
    }
    __device__ __forceinline__ void load(const Tile &t, int kc, uint32_t sa, uint32_t sb) const {
        const bool second = kc >= NP;
        const bf16 *d = second ? db : da, *w = second ? wb : wa;
        const int k = second ? kc - NP : kc;
        load_block<Cfg::BM, 1, Cfg::THREADS>(sa, d, N, t.m0, t.m_end, k, N);
        load_block<Cfg::BK, Cfg::BN / 64, Cfg::THREADS>(sb, w + (int64_t)t.e * N * K, K, k, N, t.c0, K);
    }
    __device__ __forceinline__ void store(const Tile &t, float (&d)[Cfg::ACC], uint32_t stg) const {
        if constexpr (Cfg::STAGED && std::is_same_v<OutT, bf16>)
            store_staged<Cfg>(dinp, K, d, t.m0, t.m_end, t.c0, K, stg);
        else
            store_acc<Cfg::BN>(dinp, K, d, t.m0, t.m_end, t.c0, K, 0);
    }
};

// dw[e] (N, K) += dout_seg (rows, N)^T @ inp_seg (rows, K): M = N, the contraction runs over the segment's rows.
template <class Cfg> struct ProbDW {
    static constexpr int TA = 1, TB = 1;
    float *dw;
    const bf16 *dout, *inp;
    int N, K;
    Tile tile; // the CTA's only tile
    __device__ __forceinline__ bool get(int j, Tile &t) const {
        if (j != 0) return false;
        t = tile;
        return true;
    }
    __device__ __forceinline__ void load(const Tile &t, int kc, uint32_t sa, uint32_t sb) const {
        load_block<Cfg::BK, Cfg::BM / 64, Cfg::THREADS>(sa, dout, N, kc, t.k_end, t.m0, N);
        load_block<Cfg::BK, Cfg::BN / 64, Cfg::THREADS>(sb, inp, K, kc, t.k_end, t.c0, K);
    }
    __device__ __forceinline__ void store(const Tile &t, float (&d)[Cfg::ACC], uint32_t) const {
        store_acc<Cfg::BN>(dw + (int64_t)t.e * N * K, K, d, t.m0, N, t.c0, K, 1);
    }
};

// The copy side of the pipeline: walks the CTA's tiles and their stages, one stage per next() call, into ring slot
// `slot` (the copy number modulo STAGES: it advances on every call, also past the last copy).
template <class Cfg, class P> struct Copier {
    Tile t;
    int j, kc, slot;
    bool valid;
    __device__ __forceinline__ void init(const P &p) {
        j = 0, slot = 0;
        valid = p.get(0, t);
        kc = valid ? t.k0 : 0;
    }
    __device__ __forceinline__ void next(const P &p, uint32_t ring) {
        if (valid) {
            const uint32_t sa = ring + (uint32_t)slot * Cfg::STAGE_BYTES;
            p.load(t, kc, sa, sa + Cfg::A_BYTES);
            kc += Cfg::BK;
            if (kc >= t.k_end) {
                valid = p.get(++j, t);
                kc = valid ? t.k0 : 0;
            }
        }
        cp_async_commit(); // possibly empty: group number = copy number in every thread
        slot = slot + 1 == Cfg::STAGES ? 0 : slot + 1;
    }
};

// Runs all of the CTA's tiles through the pipeline described at the top. ring: the 1024-aligned shared buffers.
template <class Cfg, class P> __device__ __forceinline__ void wg_pipeline(const P &p, uint32_t ring) {
    constexpr int S = Cfg::STAGES;
    // The warpgroup's 64 rows of A: rows 64 g.. of the K-slab, or MN-slab g; 8 KB either way.
    const uint32_t a_off = (uint32_t)(threadIdx.x >> 7) * MN_SLAB;
    float d[Cfg::ACC];
#pragma unroll
    for (int i = 0; i < Cfg::ACC; i++) d[i] = 0.0f;
    Copier<Cfg, P> cp;
    cp.init(p);
#pragma unroll 1
    for (int i = 0; i < S - 1; i++) cp.next(p, ring);
    Tile ct, nt;
    bool cv = p.get(0, ct), nv = false;
    int cj = 0, slot = 0;
#pragma unroll 1
    while (cv) {
#pragma unroll 1
        for (int kc = ct.k0; kc < ct.k_end; kc += Cfg::BK) {
            cp_async_wait<S - 2>(); // this thread's copies of this stage (copy group number = stage number) landed
            wg_fence_proxy();
            __syncthreads(); // B1: everyone's have, and are visible to the async proxy
            const uint32_t sa = ring + (uint32_t)slot * Cfg::STAGE_BYTES, sb = sa + Cfg::A_BYTES;
            const int first = kc == ct.k0; // the tile's first stage overwrites the accumulators
            wg_fence();
#pragma unroll
            for (int ks = 0; ks < Cfg::BK / 16; ks++) {
                const uint64_t da = P::TA ? wg_desc_mn(sa + a_off, ks, MN_SLAB) : wg_desc_k(sa + a_off, ks);
                const uint64_t db = P::TB ? wg_desc_mn(sb, ks, MN_SLAB) : wg_desc_k(sb, ks);
                wg_mma<Cfg::BN, P::TA, P::TB>(d, da, db, !first || ks > 0);
            }
            wg_commit();
            if (first) nv = p.get(cj + 1, nt); // the next tile, found while the tensor cores work
            wg_wait<1>();    // this warpgroup's products of the previous stage are done ...
            __syncthreads(); // B2: ... and the other's: its buffer (the slot before this one) is free
            cp.next(p, ring); // refills it: STAGES - 1 stages ahead
            slot = slot + 1 == S ? 0 : slot + 1;
        }
        wg_wait<0>();
        wg_fence_regs(d); // the epilogue's reads stay below the wait
        p.store(ct, d, ring + S * Cfg::STAGE_BYTES);
        ct = nt, cv = nv, cj++;
    }
    cp_async_wait<0>(); // only empty groups are left; leave nothing in flight
    if constexpr (Cfg::STAGED) {
        if (threadIdx.x < Cfg::BM) bulk_wait_all(); // the epilogue's bulk copies are complete before the CTA exits
    }
}

// An empty contraction (K = 0 in nt, N = 0 in nn): the product is zero; written to every tile (the host skips the
// accumulate case, which changes nothing).
template <class Cfg, class P> __device__ __forceinline__ void store_zero_tiles(const P &p, uint32_t ring) {
    float z[Cfg::ACC];
    Tile t;
    for (int j = 0; p.get(j, t); j++) {
#pragma unroll
        for (int i = 0; i < Cfg::ACC; i++) z[i] = 0.0f;
        p.store(t, z, ring + Cfg::STAGES * Cfg::STAGE_BYTES);
    }
    if constexpr (Cfg::STAGED) {
        if (threadIdx.x < Cfg::BM) bulk_wait_all();
    }
}

__device__ __forceinline__ uint32_t ring_base(const unsigned char *smem) { return (smem_u32(smem) + 1023u) & ~1023u; }

} // namespace

extern __shared__ __align__(16) unsigned char gg_wg_smem[];

// out (R, N) = inp (R, K) @ w[e] (N, K)^T. Persistent: grid <= SMs, tiles: the (row tile, N tile) bound.
template <class Cfg, typename OutT>
__global__ void __launch_bounds__(Cfg::THREADS, 1)
    sm90_bf16_grouped_gemm_wg_nt(OutT *out, const bf16 *inp, const bf16 *w, const int32_t *offsets, int R, int E,
                                 int N, int K, int col_tiles, long long tiles, CudaDevError *err) {
    check_offsets(offsets, E, R, err);
    const ProbNT<Cfg, OutT> p = {out, inp, w, offsets, R, E, N, K, col_tiles, tiles};
    if (K == 0) store_zero_tiles<Cfg>(p, ring_base(gg_wg_smem));
    else wg_pipeline<Cfg>(p, ring_base(gg_wg_smem));
}

// dinp (R, K) (+)= dout (R, N) @ w[e] (N, K). Persistent: grid <= SMs, tiles: the (row tile, K tile) bound.
template <class Cfg, typename OutT>
__global__ void __launch_bounds__(Cfg::THREADS, 1)
    sm90_bf16_grouped_gemm_wg_nn(OutT *dinp, const bf16 *dout, const bf16 *w, const int32_t *offsets, int R, int E,
                                 int N, int K, int col_tiles, long long tiles, int accumulate, CudaDevError *err) {
    check_offsets(offsets, E, R, err);
    const ProbNN<Cfg, OutT> p = {dinp, dout, w, offsets, R, E, N, K, col_tiles, accumulate, tiles};
    if (N == 0) store_zero_tiles<Cfg>(p, ring_base(gg_wg_smem));
    else wg_pipeline<Cfg>(p, ring_base(gg_wg_smem));
}

// dinp (R, K) = da @ wa[e] + db @ wb[e]. Persistent like nn; an empty contraction (N = 0) writes zeros.
template <class Cfg, typename OutT>
__global__ void __launch_bounds__(Cfg::THREADS, 1)
    sm90_bf16_grouped_gemm_wg_nn2(OutT *dinp, const bf16 *da, const bf16 *wa, const bf16 *db, const bf16 *wb,
                                  const int32_t *offsets, int R, int E, int N, int K, int col_tiles, long long tiles,
                                  CudaDevError *err) {
    check_offsets(offsets, E, R, err);
    const int np = (N + Cfg::BK - 1) / Cfg::BK * Cfg::BK;
    const ProbNN2<Cfg, OutT> p = {dinp, da, wa, db, wb, offsets, R, E, N, K, np, col_tiles, tiles};
    if (N == 0) store_zero_tiles<Cfg>(p, ring_base(gg_wg_smem));
    else wg_pipeline<Cfg>(p, ring_base(gg_wg_smem));
}

// dw[e] (N, K) += dout_seg^T @ inp_seg. grid: E x n_tiles x k_tiles; block b: the expert of rank b / (n_tiles
// k_tiles) by descending row count (ties by index), tile b % (n_tiles k_tiles), K tile fastest.
template <class Cfg>
__global__ void __launch_bounds__(Cfg::THREADS, 1)
    sm90_bf16_grouped_gemm_wg_tn_dw(float *dw, const bf16 *dout, const bf16 *inp, const int32_t *offsets, int R,
                                    int E, int N, int K, int n_tiles, int k_tiles, CudaDevError *err) {
    __shared__ int s_expert;
    check_offsets(offsets, E, R, err);
    const int per_e = n_tiles * k_tiles, rank = (int)(blockIdx.x / per_e), t = (int)(blockIdx.x % per_e);
    if (threadIdx.x == 0) s_expert = -1;
    __syncthreads();
    // rank(e) = #{f : rows_f > rows_e or (rows_f == rows_e and f < e)}: a permutation of 0 .. E - 1, so exactly one
    // expert matches (all threads read the same f at once: broadcast loads).
    for (int e = threadIdx.x; e < E; e += Cfg::THREADS) {
        int lo, hi;
        segment(offsets, e, R, lo, hi);
        const int n = hi - lo;
        int r = 0;
#pragma unroll 8
        for (int f = 0; f < E; f++) {
            int flo, fhi;
            segment(offsets, f, R, flo, fhi);
            const int m = fhi - flo;
            r += m > n || (m == n && f < e);
        }
        if (r == rank) s_expert = e;
    }
    __syncthreads();
    const int e = s_expert;
    if (e < 0) return; // cannot happen (rank < E); uniform across the CTA
    int lo, hi;
    segment(offsets, e, R, lo, hi);
    if (hi == lo) return; // an empty expert adds nothing
    ProbDW<Cfg> p = {dw, dout, inp, N, K, {e, (t / k_tiles) * Cfg::BM, N, (t % k_tiles) * Cfg::BN, lo, hi}};
    wg_pipeline<Cfg>(p, ring_base(gg_wg_smem));
}

namespace {

// Raises a kernel's dynamic shared-memory limit once (per instantiation; the backend uses one device per process).
template <auto KERNEL> void set_smem_once(size_t bytes) {
    static bool done = false;
    if (done) return;
    CUDA_CHECK(cudaFuncSetAttribute(KERNEL, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
    done = true;
}


// The tile configuration, read at every call like DSV3_GG: DSV3_GG_WG_BN = 256 (default) | 128, the output tile
// width; DSV3_GG_WG_EPI = bulk (default) | direct, the epilogue of the 128 x 256 configuration (bulk: Cfg256s). The
// bulk epilogue passed the GPU tests on an H100 on 2026-11-23 and runs the bench shapes faster although its ring has
// 3 stages instead of 4 (TFLOP/s, direct -> bulk: gate/up fwd 387 -> 427, dinp 285 -> 360; down fwd 286 -> 366,
// dinp 387 -> 433; bench-1gpu MTP 0 113.0K -> 115.5K tokens/s, the same losses).
enum WgChoice { WG_256, WG_128, WG_256_BULK };
WgChoice wg_choice() {
    const char *v = getenv("DSV3_GG_WG_BN"), *e = getenv("DSV3_GG_WG_EPI");
    int bn = 256;
    if (v && *v && strcmp(v, "256")) {
        if (strcmp(v, "128")) die("DSV3_GG_WG_BN=%s: expected 256 or 128", v);
        bn = 128;
    }
    bool bulk = true;
    if (e && *e && strcmp(e, "bulk")) {
        if (strcmp(e, "direct")) die("DSV3_GG_WG_EPI=%s: expected direct or bulk", e);
        bulk = false;
    }
    if (bn == 128) return WG_128; // the bulk epilogue exists for the 256-wide tile only
    return bulk ? WG_256_BULK : WG_256;
}

template <class Cfg, typename OutT> void launch_nt(Tensor out, Tensor inp, Tensor w, Tensor offsets) {
    const int R = (int)inp.shape[0], K = (int)inp.shape[1], E = (int)w.shape[0], N = (int)w.shape[1];
    const int col_tiles = (int)gg_ceil_div(N, Cfg::BN);
    const long long tiles = row_tile_bound(R, E, Cfg::BM) * col_tiles;
    if (tiles == 0) return; // N == 0 or nothing to tile
    const unsigned grid = (unsigned)(tiles < cuda_sm_count() ? tiles : cuda_sm_count());
    set_smem_once<sm90_bf16_grouped_gemm_wg_nt<Cfg, OutT>>(Cfg::SMEM);
    sm90_bf16_grouped_gemm_wg_nt<Cfg, OutT><<<grid, Cfg::THREADS, Cfg::SMEM, cuda_stream()>>>(
        (OutT *)out.data, (const bf16 *)inp.data, (const bf16 *)w.data, (const int32_t *)offsets.data, R, E, N, K,
        col_tiles, tiles, cuda_dev_error());
    CUDA_LAUNCH_CHECK("sm90_bf16_grouped_gemm_wg_nt");
}

template <class Cfg, typename OutT> void launch_nn(Tensor dinp, Tensor dout, Tensor w, Tensor offsets, int accumulate) {
    const int R = (int)dout.shape[0], E = (int)w.shape[0], N = (int)w.shape[1], K = (int)w.shape[2];
    if (N == 0 && accumulate) return; // adds an empty sum: nothing changes
    const int col_tiles = (int)gg_ceil_div(K, Cfg::BN);
    const long long tiles = row_tile_bound(R, E, Cfg::BM) * col_tiles;
    if (tiles == 0) return;
    const unsigned grid = (unsigned)(tiles < cuda_sm_count() ? tiles : cuda_sm_count());
    set_smem_once<sm90_bf16_grouped_gemm_wg_nn<Cfg, OutT>>(Cfg::SMEM);
    sm90_bf16_grouped_gemm_wg_nn<Cfg, OutT><<<grid, Cfg::THREADS, Cfg::SMEM, cuda_stream()>>>(
        (OutT *)dinp.data, (const bf16 *)dout.data, (const bf16 *)w.data, (const int32_t *)offsets.data, R, E, N, K,
        col_tiles, tiles, accumulate, cuda_dev_error());
    CUDA_LAUNCH_CHECK("sm90_bf16_grouped_gemm_wg_nn");
}

template <class Cfg, typename OutT>
void launch_nn2(Tensor dinp, Tensor da, Tensor wa, Tensor db, Tensor wb, Tensor offsets) {
    const int R = (int)da.shape[0], E = (int)wa.shape[0], N = (int)wa.shape[1], K = (int)wa.shape[2];
    const int col_tiles = (int)gg_ceil_div(K, Cfg::BN);
    const long long tiles = row_tile_bound(R, E, Cfg::BM) * col_tiles;
    if (tiles == 0) return;
    const unsigned grid = (unsigned)(tiles < cuda_sm_count() ? tiles : cuda_sm_count());
    set_smem_once<sm90_bf16_grouped_gemm_wg_nn2<Cfg, OutT>>(Cfg::SMEM);
    sm90_bf16_grouped_gemm_wg_nn2<Cfg, OutT><<<grid, Cfg::THREADS, Cfg::SMEM, cuda_stream()>>>(
        (OutT *)dinp.data, (const bf16 *)da.data, (const bf16 *)wa.data, (const bf16 *)db.data, (const bf16 *)wb.data,
        (const int32_t *)offsets.data, R, E, N, K, col_tiles, tiles, cuda_dev_error());
    CUDA_LAUNCH_CHECK("sm90_bf16_grouped_gemm_wg_nn2");
}

template <class Cfg> void launch_tn_dw(Tensor dw, Tensor dout, Tensor inp, Tensor offsets) {
    const int R = (int)inp.shape[0], K = (int)inp.shape[1], E = (int)dw.shape[0], N = (int)dw.shape[1];
    const int n_tiles = (int)gg_ceil_div(N, Cfg::BM), k_tiles = (int)gg_ceil_div(K, Cfg::BN);
    const int64_t blocks = (int64_t)E * n_tiles * k_tiles;
    if (blocks == 0) return;
    set_smem_once<sm90_bf16_grouped_gemm_wg_tn_dw<Cfg>>(Cfg::SMEM);
    sm90_bf16_grouped_gemm_wg_tn_dw<Cfg><<<(unsigned)blocks, Cfg::THREADS, Cfg::SMEM, cuda_stream()>>>(
        (float *)dw.data, (const bf16 *)dout.data, (const bf16 *)inp.data, (const int32_t *)offsets.data, R, E, N, K,
        n_tiles, k_tiles, cuda_dev_error());
    CUDA_LAUNCH_CHECK("sm90_bf16_grouped_gemm_wg_tn_dw");
}

template <class Cfg> void forward_as(Tensor out, Tensor inp, Tensor w, Tensor offsets) {
    if (out.dtype == DT_BF16) launch_nt<Cfg, bf16>(out, inp, w, offsets);
    else launch_nt<Cfg, float>(out, inp, w, offsets);
}
template <class Cfg> void dinp_as(Tensor dinp, Tensor dout, Tensor w, Tensor offsets, int accumulate) {
    if (dinp.dtype == DT_BF16) launch_nn<Cfg, bf16>(dinp, dout, w, offsets, accumulate);
    else launch_nn<Cfg, float>(dinp, dout, w, offsets, accumulate);
}

template <class Cfg> void dinp_pair_as(Tensor dinp, Tensor da, Tensor wa, Tensor db, Tensor wb, Tensor offsets) {
    if (dinp.dtype == DT_BF16) launch_nn2<Cfg, bf16>(dinp, da, wa, db, wb, offsets);
    else launch_nn2<Cfg, float>(dinp, da, wa, db, wb, offsets);
}

} // namespace

// DSV3_GG = wg | mma; unset: wg (it passed the GPU tests on an H100 on 2026-11-23 and runs the bench shapes at
// 285-393 TFLOP/s where the mma.sync set runs 176-290; bench-1gpu 87.1K -> 98.3K tokens/s, the same losses).
extern "C" int cuda_gg_wg_selected(void) {
    const char *v = getenv("DSV3_GG");
    if (!v || !*v || !strcmp(v, "wg")) return 1;
    if (!strcmp(v, "mma")) return 0;
    die("DSV3_GG=%s: expected wg or mma", v);
}

extern "C" void cuda_gg_wg_forward(Tensor out, Tensor inp, Tensor w, Tensor offsets) {
    switch (wg_choice()) {
    case WG_256: forward_as<Cfg256>(out, inp, w, offsets); break;
    case WG_128: forward_as<Cfg128>(out, inp, w, offsets); break;
    case WG_256_BULK: forward_as<Cfg256s>(out, inp, w, offsets); break;
    }
}

extern "C" void cuda_gg_wg_dinp(Tensor dinp, Tensor dout, Tensor w, Tensor offsets, int accumulate) {
    switch (wg_choice()) {
    case WG_256: dinp_as<Cfg256>(dinp, dout, w, offsets, accumulate); break;
    case WG_128: dinp_as<Cfg128>(dinp, dout, w, offsets, accumulate); break;
    case WG_256_BULK: dinp_as<Cfg256s>(dinp, dout, w, offsets, accumulate); break;
    }
}

extern "C" void cuda_gg_wg_dinp_pair(Tensor dinp, Tensor da, Tensor wa, Tensor db, Tensor wb, Tensor offsets) {
    switch (wg_choice()) {
    case WG_256: dinp_pair_as<Cfg256>(dinp, da, wa, db, wb, offsets); break;
    case WG_128: dinp_pair_as<Cfg128>(dinp, da, wa, db, wb, offsets); break;
    case WG_256_BULK: dinp_pair_as<Cfg256s>(dinp, da, wa, db, wb, offsets); break;
    }
}

// The weight gradient is F32 (accumulated): its epilogue is always direct, so the bulk choice runs Cfg256.
extern "C" void cuda_gg_wg_dw(Tensor dw, Tensor dout, Tensor inp, Tensor offsets) {
    if (wg_choice() == WG_128) launch_tn_dw<Cfg128>(dw, dout, inp, offsets);
    else launch_tn_dw<Cfg256>(dw, dout, inp, offsets);
}
