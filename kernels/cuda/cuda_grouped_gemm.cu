// BF16 grouped (MoE expert) GEMMs on Hopper: one launch per product for all experts, FP32 accumulation.
//   sm90_bf16_grouped_gemm_nt     out  (R, N)  = inp (R, K) @ w[e] (N, K)^T    per segment (forward)
//   sm90_bf16_grouped_gemm_nn     dinp (R, K) (+)= dout (R, N) @ w[e] (N, K)   per segment (input gradient)
//   sm90_bf16_grouped_gemm_tn_dw  dw[e] (N, K) += dout_seg^T @ inp_seg          (weight gradient, F32, deterministic)
// Expert e owns rows [offsets[e], offsets[e + 1]) of inp/out/dout/dinp. Only the DEVICE offsets are read.
//
// Math: mma.sync.m16n8k16 BF16 x BF16 -> FP32 (warp-level tensor-core MMA, as in cuda_attention_tc.cu; not wgmma),
// operands staged in shared memory by a STAGES-deep cp.async pipeline and read with ldmatrix (.trans for an operand
// whose contraction index runs along its global rows: w in nn, dout and inp in tn_dw).
//
// Tiles: a CTA of 4 warps (2 x 2) computes a BM x BN = 128 x 128 output tile, each warp 64 x 64 (4 m16 x 8 n8 MMA
// tiles, 128 FP32 accumulators per thread); the contraction advances BK = 64 per pipeline stage, 3 stages, two CTAs
// per SM. The large warp tile keeps shared-memory reads at the MMA rate: per k16 step a warp issues 8 ldmatrix.x4
// (4 KB) for 32 MMAs, about one shared-memory cycle per MMA; a 64 x 32 warp tile would need half as much again per
// MMA. (TileCfg takes other shapes; the one used is chosen below, with the alternatives measured.) Shared-memory
// rows are padded by 16 bytes so that every row stride is an odd multiple of 16 bytes: the 8 row addresses of an
// ldmatrix (and of each 8-chunk group of cp.async stores) hit 8 distinct 16-byte bank groups: no bank conflicts.
//
// Scheduling. nt/nn: a 1-D grid of (row-tile bound) x (column tiles), column tile fastest (the CTAs sharing a row
// tile run together and share its rows in L2). The bound is floor((R + E (BM - 1)) / BM) >= sum_e ceil(rows_e / BM);
// every warp of a CTA scans the per-expert tile counts (a warp prefix sum over the device offsets, 32 experts per
// step) to find its (expert, first row); CTAs past the last tile exit. Tiles never straddle experts: the rows of a
// tile past its segment's end are zero-filled on load (cp.async src-size 0) and masked on store. tn_dw: one CTA per
// (expert, n tile, k tile) of dw; it owns that tile, sums its segment's rows in a fixed order (BK rows per stage, in
// row order) and adds the sum to dw once: deterministic, no atomics. Empty experts' CTAs exit at once.
//
// Bad device offsets (not starting at 0, decreasing, or past R) cannot make a kernel read or write outside the
// tensors: segments are clamped to [0, R] and to be non-decreasing; block 0 records the first bad entry in the
// device error record, and the next host sync dies naming it (cuda_check_device_errors). The segment-table helpers
// are in cuda_grouped_gemm.cuh (shared with the wgmma kernels of cuda_grouped_gemm_wg.cu).
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_grouped_gemm.cuh"
#include "kernels/cuda/cuda_mma.cuh"

#include <limits.h>

#include "kernels/cuda/cuda_grouped_gemm.h"

namespace {

constexpr int PAD = 8;                    // bf16 elements (16 bytes) of padding per shared-memory row
constexpr size_t SMEM_LIMIT = 227 * 1024; // per-block opt-in maximum of dynamic shared memory on sm_90

// The CTA tile: BM x BN outputs, BK of the contraction per stage, WARPS_M x WARPS_N warps, STAGES pipeline stages,
// MIN_BLOCKS CTAs per SM for __launch_bounds__ (register budget 65536 / (MIN_BLOCKS * THREADS)).
template <int BM_, int BN_, int BK_, int WARPS_M_, int WARPS_N_, int STAGES_, int MIN_BLOCKS_> struct TileCfg {
    static constexpr int BM = BM_, BN = BN_, BK = BK_, WARPS_M = WARPS_M_, WARPS_N = WARPS_N_;
    static constexpr int STAGES = STAGES_, MIN_BLOCKS = MIN_BLOCKS_;
    static constexpr int THREADS = 32 * WARPS_M * WARPS_N;
    static constexpr int WTM = BM / WARPS_M, WTN = BN / WARPS_N; // one warp's output tile
    static constexpr int MI = WTM / 16, NI = WTN / 8;            // its m16 and n8 MMA tiles
    static_assert(BM % (16 * WARPS_M) == 0, "warp tiles are whole m16 MMA tiles");
    static_assert(BN % (16 * WARPS_N) == 0, "warp tiles are whole pairs of n8 MMA tiles (one ldmatrix.x4 each)");
    static_assert(BK % 16 == 0, "a stage is whole k16 MMA steps");
    static_assert(BM % 8 == 0 && BN % 8 == 0 && BK % 8 == 0, "tiles are whole 16-byte chunks");
    static_assert(STAGES >= 2, "the pipeline overlaps at least one load with the compute");
};

// One operand tile in shared memory. K-major (the contraction index contiguous in global memory: inp and w in nt,
// dout in nn): [MN][BK + PAD]. MN-major (the contraction runs along global rows: w in nn, dout and inp in tn_dw):
// [BK][MN + PAD].
template <bool KMAJ, int MN, int BK> struct OpTile {
    static constexpr int STRIDE = KMAJ ? BK + PAD : MN + PAD;     // elements per shared-memory row
    static constexpr int ELEMS = KMAJ ? MN * STRIDE : BK * STRIDE;
    static constexpr int CHUNKS = MN * BK / 8;                    // 16-byte cp.async chunks per stage
    static constexpr int CPR = (KMAJ ? BK : MN) / 8;              // chunks per shared-memory row
    static_assert((STRIDE * 2) % 16 == 0 && ((STRIDE * 2) / 16) % 2 == 1,
                  "row stride an odd multiple of 16 bytes: 8 consecutive rows hit 8 distinct 16-byte bank groups");
};

// Where an operand lives in global memory: element (mn, kc) (mn: the output row or column it feeds, kc: the
// contraction index) is g[mn * ld + kc] when K-major, g[kc * ld + mn] when MN-major. Valid while mn < mn_end (and
// kc < the contraction end); mn0 is the tile's first mn.
struct Operand {
    const bf16 *g;
    int64_t ld;
    int mn0, mn_end;
};

template <class T, bool A_KMAJ, bool B_KMAJ> struct Gemm {
    using TA = OpTile<A_KMAJ, T::BM, T::BK>;
    using TB = OpTile<B_KMAJ, T::BN, T::BK>;
    static constexpr int STAGE_ELEMS = TA::ELEMS + TB::ELEMS;
    static constexpr size_t SMEM = sizeof(bf16) * (size_t)STAGE_ELEMS * T::STAGES;
    static_assert(SMEM <= SMEM_LIMIT, "the pipeline must fit one block's shared memory");
    static_assert((TA::ELEMS * 2) % 16 == 0 && (STAGE_ELEMS * 2) % 16 == 0, "tiles start 16-byte aligned");
    static_assert(TA::CHUNKS % T::THREADS == 0 && TB::CHUNKS % T::THREADS == 0,
                  "every thread copies the same number of chunks per stage");
};

// Starts the copy of contraction indices [kc0, kc0 + BK) of an operand tile into shared memory at s. Chunks past
// mn_end or kc_end are zero-filled (so they add nothing to the products). mn_end and kc_end along a chunk's
// 8 elements are multiples of 8 (N, K) or the chunk is one row (a segment end), so a chunk is all in or all out.
template <bool KMAJ, int MN, int BK, int THREADS>
__device__ __forceinline__ void load_tile(uint32_t s, const Operand &o, int kc0, int kc_end) {
    using L = OpTile<KMAJ, MN, BK>;
#pragma unroll
    for (int i = 0; i < L::CHUNKS / THREADS; i++) {
        const int idx = threadIdx.x + i * THREADS, r = idx / L::CPR, c = idx % L::CPR;
        const int mn = o.mn0 + (KMAJ ? r : 8 * c), kc = kc0 + (KMAJ ? 8 * c : r);
        const bool ok = mn < o.mn_end && kc < kc_end;
        const bf16 *src = o.g + (ok ? (KMAJ ? (int64_t)mn * o.ld + kc : (int64_t)kc * o.ld + mn) : 0);
        cp_async16(s + 2u * (uint32_t)(r * L::STRIDE + 8 * c), src, ok);
    }
}

// acc (the warp's MI x NI MMA tiles) += A (BM x [kc0, kc_end)) B ([kc0, kc_end) x BN), A and B from global memory
// through the shared-memory pipeline at smem.
template <class T, bool A_KMAJ, bool B_KMAJ>
__device__ __forceinline__ void gemm_mainloop(float (&acc)[T::MI][T::NI][4], uint32_t smem, const Operand &a,
                                              const Operand &b, int kc0, int kc_end) {
    using G = Gemm<T, A_KMAJ, B_KMAJ>;
    using TA = typename G::TA;
    using TB = typename G::TB;
    constexpr uint32_t STAGE_BYTES = 2u * G::STAGE_ELEMS, A_BYTES = 2u * TA::ELEMS;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int wm0 = (warp / T::WARPS_N) * T::WTM, wn0 = (warp % T::WARPS_N) * T::WTN;
    const int nk = (kc_end - kc0 + T::BK - 1) / T::BK; // kc_end >= kc0
    auto load_stage = [&](int kt) {
        const uint32_t s = smem + (uint32_t)(kt % T::STAGES) * STAGE_BYTES;
        load_tile<A_KMAJ, T::BM, T::BK, T::THREADS>(s, a, kc0 + kt * T::BK, kc_end);
        load_tile<B_KMAJ, T::BN, T::BK, T::THREADS>(s + A_BYTES, b, kc0 + kt * T::BK, kc_end);
    };
#pragma unroll
    for (int st = 0; st < T::STAGES - 1; st++) {
        if (st < nk) load_stage(st);
        cp_async_commit(); // possibly empty: group g always holds stage g
    }
    // Per-lane ldmatrix offsets (elements) within a stage's tiles, for k16 step 0 and the warp's first MMA tile.
    // A K-major: lanes 0-15 rows 0-15 at k 0, lanes 16-31 rows 0-15 at k 8 (matrices a0 a1 a2 a3).
    // A MN-major (.trans): matrix j = lane / 8 is (m 8 (j & 1), k 8 (j >> 1)); its row address is k, m fixed.
    // B K-major: matrices (n 0-7, k 0), (n 0-7, k 8), (n 8-15, k 0), (n 8-15, k 8) = b0, b1 of two n8 tiles.
    // B MN-major (.trans): the same matrices, row addresses along k.
    const int a_off = A_KMAJ ? (wm0 + (lane & 15)) * TA::STRIDE + (lane >> 4) * 8
                             : ((lane & 7) + (lane >> 4) * 8) * TA::STRIDE + wm0 + ((lane >> 3) & 1) * 8;
    const int b_off = B_KMAJ ? (wn0 + (lane & 7) + (lane >> 4) * 8) * TB::STRIDE + ((lane >> 3) & 1) * 8
                             : ((lane & 7) + ((lane >> 3) & 1) * 8) * TB::STRIDE + wn0 + (lane >> 4) * 8;
    // Element steps: to the next k16 step, the next m16 tile (A), the next pair of n8 tiles (B).
    constexpr int A_K16 = A_KMAJ ? 16 : 16 * TA::STRIDE, A_M16 = A_KMAJ ? 16 * TA::STRIDE : 16;
    constexpr int B_K16 = B_KMAJ ? 16 : 16 * TB::STRIDE, B_N16 = B_KMAJ ? 16 * TB::STRIDE : 16;
#pragma unroll 1
    for (int kt = 0; kt < nk; kt++) {
        cp_async_wait<T::STAGES - 2>(); // this thread's copies of stage kt have landed ...
        __syncthreads();                // ... and everyone's; everyone is also done computing on stage kt - 1
        if (kt + T::STAGES - 1 < nk) load_stage(kt + T::STAGES - 1); // refills stage kt - 1's buffer
        cp_async_commit();
        const uint32_t sa = smem + (uint32_t)(kt % T::STAGES) * STAGE_BYTES, sb = sa + A_BYTES;
#pragma unroll
        for (int kk = 0; kk < T::BK / 16; kk++) {
            uint32_t af[T::MI][4], bfr[T::NI][2];
#pragma unroll
            for (int mi = 0; mi < T::MI; mi++) {
                const uint32_t addr = sa + 2u * (uint32_t)(a_off + kk * A_K16 + mi * A_M16);
                if (A_KMAJ) ldsm_x4(af[mi], addr);
                else ldsm_x4_t(af[mi], addr);
            }
#pragma unroll
            for (int nj = 0; nj < T::NI / 2; nj++) {
                uint32_t r[4];
                const uint32_t addr = sb + 2u * (uint32_t)(b_off + kk * B_K16 + nj * B_N16);
                if (B_KMAJ) ldsm_x4(r, addr);
                else ldsm_x4_t(r, addr);
                bfr[2 * nj][0] = r[0], bfr[2 * nj][1] = r[1], bfr[2 * nj + 1][0] = r[2], bfr[2 * nj + 1][1] = r[3];
            }
#pragma unroll
            for (int mi = 0; mi < T::MI; mi++)
#pragma unroll
                for (int ni = 0; ni < T::NI; ni++) mma_bf16(acc[mi][ni], af[mi], bfr[ni][0], bfr[ni][1]);
        }
    }
}

__device__ __forceinline__ void store2(float *p, float x, float y) { *reinterpret_cast<float2 *>(p) = make_float2(x, y); }
__device__ __forceinline__ void store2(bf16 *p, float x, float y) {
    *reinterpret_cast<__nv_bfloat162 *>(p) = __floats2bfloat162_rn(x, y);
}
__device__ __forceinline__ float2 load2(const float *p) { return *reinterpret_cast<const float2 *>(p); }
__device__ __forceinline__ float2 load2(const bf16 *p) {
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(p));
}

// Writes (ACC: adds into, in FP32, then rounds to OutT) the CTA's tile: rows [r0, r0 + BM) below r_end, columns
// [c0, c0 + BN) below c_end (a multiple of 8, so a thread's column pair is all in or all out) of the row-major c with
// row stride ld. ACC loads all the old values first (into acc, dead afterwards), so that the loads are not
// serialized behind stores the compiler cannot prove disjoint from them.
template <class T, bool ACC, typename OutT>
__device__ __forceinline__ void store_tile(OutT *c, int64_t ld, float (&acc)[T::MI][T::NI][4], int r0, int r_end,
                                           int c0, int c_end) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
    const int wr = r0 + (warp / T::WARPS_N) * T::WTM, wc = c0 + (warp % T::WARPS_N) * T::WTN;
    if constexpr (ACC) {
#pragma unroll
        for (int mi = 0; mi < T::MI; mi++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int r = wr + 16 * mi + 8 * h + g;
                if (r >= r_end) continue;
                const OutT *row = c + (int64_t)r * ld;
#pragma unroll
                for (int ni = 0; ni < T::NI; ni++) {
                    const int col = wc + 8 * ni + 2 * tq;
                    if (col >= c_end) continue;
                    const float2 old = load2(row + col);
                    acc[mi][ni][2 * h] += old.x, acc[mi][ni][2 * h + 1] += old.y;
                }
            }
    }
#pragma unroll
    for (int mi = 0; mi < T::MI; mi++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int r = wr + 16 * mi + 8 * h + g;
            if (r >= r_end) continue;
            OutT *row = c + (int64_t)r * ld;
#pragma unroll
            for (int ni = 0; ni < T::NI; ni++) {
                const int col = wc + 8 * ni + 2 * tq;
                if (col >= c_end) continue;
                store2(row + col, acc[mi][ni][2 * h], acc[mi][ni][2 * h + 1]);
            }
        }
}

} // namespace

// The kernels are named arch_dtype_op (as DeepGEMM names its kernels). Grids and arguments: see the launchers.

// out (R, N) = inp (R, K) @ w[e] (N, K)^T. grid: row-tile bound x n_tiles, n tile fastest.
template <class T, typename OutT>
__global__ void __launch_bounds__(T::THREADS, T::MIN_BLOCKS)
    sm90_bf16_grouped_gemm_nt(OutT *out, const bf16 *inp, const bf16 *w, const int32_t *offsets, int R, int E, int N,
                              int K, int n_tiles, CudaDevError *err) {
    extern __shared__ __align__(128) unsigned char gg_smem[];
    check_offsets(offsets, E, R, err);
    int e, row0, row_end;
    if (!find_row_tile<T::BM>(offsets, E, R, (int)(blockIdx.x / n_tiles), e, row0, row_end)) return;
    const int n0 = (int)(blockIdx.x % n_tiles) * T::BN;
    const Operand a = {inp, K, row0, row_end}, b = {w + (int64_t)e * N * K, K, n0, N};
    float acc[T::MI][T::NI][4] = {};
    gemm_mainloop<T, true, true>(acc, smem_u32(gg_smem), a, b, 0, K);
    store_tile<T, false>(out, N, acc, row0, row_end, n0, N);
}

// dinp (R, K) (+)= dout (R, N) @ w[e] (N, K): the contraction runs over N; accumulate: dinp += the product.
// grid: row-tile bound x k_tiles.
template <class T, typename OutT>
__global__ void __launch_bounds__(T::THREADS, T::MIN_BLOCKS)
    sm90_bf16_grouped_gemm_nn(OutT *dinp, const bf16 *dout, const bf16 *w, const int32_t *offsets, int R, int E,
                              int N, int K, int k_tiles, int accumulate, CudaDevError *err) {
    extern __shared__ __align__(128) unsigned char gg_smem[];
    check_offsets(offsets, E, R, err);
    int e, row0, row_end;
    if (!find_row_tile<T::BM>(offsets, E, R, (int)(blockIdx.x / k_tiles), e, row0, row_end)) return;
    const int k0 = (int)(blockIdx.x % k_tiles) * T::BN;
    const Operand a = {dout, N, row0, row_end}, b = {w + (int64_t)e * N * K, K, k0, K};
    float acc[T::MI][T::NI][4] = {};
    gemm_mainloop<T, true, false>(acc, smem_u32(gg_smem), a, b, 0, N);
    if (accumulate) store_tile<T, true>(dinp, K, acc, row0, row_end, k0, K);
    else store_tile<T, false>(dinp, K, acc, row0, row_end, k0, K);
}

// dw[e] (N, K) += dout_seg (rows, N)^T @ inp_seg (rows, K): the contraction runs over the segment's rows.
// grid: E x n_tiles x k_tiles, k tile fastest.
template <class T>
__global__ void __launch_bounds__(T::THREADS, T::MIN_BLOCKS)
    sm90_bf16_grouped_gemm_tn_dw(float *dw, const bf16 *dout, const bf16 *inp, const int32_t *offsets, int R, int E,
                                 int N, int K, int n_tiles, int k_tiles, CudaDevError *err) {
    extern __shared__ __align__(128) unsigned char gg_smem[];
    check_offsets(offsets, E, R, err);
    const int per_e = n_tiles * k_tiles, e = (int)(blockIdx.x / per_e), t = (int)(blockIdx.x % per_e);
    const int n0 = (t / k_tiles) * T::BM, k0 = (t % k_tiles) * T::BN;
    int lo, hi;
    segment(offsets, e, R, lo, hi);
    if (hi == lo) return; // an empty expert adds nothing
    const Operand a = {dout, N, n0, N}, b = {inp, K, k0, K};
    float acc[T::MI][T::NI][4] = {};
    gemm_mainloop<T, false, false>(acc, smem_u32(gg_smem), a, b, lo, hi);
    store_tile<T, true>(dw + (int64_t)e * N * K, K, acc, n0, N, k0, K);
}

namespace {

// 128 x 128 x 64, 4 warps (2 x 2) of 64 x 64, 3 stages, two CTAs per SM (232-244 registers per thread, 102-108 KB
// of shared memory per CTA). Measured on an H100 at the bench-1gpu shapes against 128 x 256 x 32 (8 warps, 4 stages,
// 1 CTA/SM), 128 x 256 x 64 (8 warps, 3 stages) and 128 x 128 x 32 (4 warps, 4 stages): fastest or tied for all three
// products. Two co-resident CTAs overlap one's prologue and epilogue with the other's main loop.
using Cfg = TileCfg<128, 128, 64, 2, 2, 3, 2>;

static_assert(Cfg::MI == 4 && Cfg::NI == 8, "64 x 64 warp tiles");
static_assert(2 * (Gemm<Cfg, true, true>::SMEM + 1024) <= 228 * 1024, "two CTAs per SM fit the 228 KB of an SM");

// Raises a kernel's dynamic shared-memory limit once (per instantiation; the backend uses one device per process).
template <auto KERNEL> void set_smem_once(size_t bytes) {
    static bool done = false;
    if (done) return;
    CUDA_CHECK(cudaFuncSetAttribute(KERNEL, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
    done = true;
}

template <class T, typename OutT> void launch_nt(Tensor out, Tensor inp, Tensor w, Tensor offsets) {
    const int R = (int)inp.shape[0], K = (int)inp.shape[1], E = (int)w.shape[0], N = (int)w.shape[1];
    const int n_tiles = (int)gg_ceil_div(N, T::BN);
    const int64_t blocks = row_tile_bound(R, E, T::BM) * n_tiles;
    if (blocks == 0) return; // N == 0 or no experts: nothing to write
    constexpr size_t smem = Gemm<T, true, true>::SMEM;
    set_smem_once<sm90_bf16_grouped_gemm_nt<T, OutT>>(smem);
    sm90_bf16_grouped_gemm_nt<T, OutT><<<(unsigned)blocks, T::THREADS, smem, cuda_stream()>>>(
        (OutT *)out.data, (const bf16 *)inp.data, (const bf16 *)w.data, (const int32_t *)offsets.data, R, E, N, K,
        n_tiles, cuda_dev_error());
    CUDA_LAUNCH_CHECK("sm90_bf16_grouped_gemm_nt");
}

template <class T, typename OutT> void launch_nn(Tensor dinp, Tensor dout, Tensor w, Tensor offsets, int accumulate) {
    const int R = (int)dout.shape[0], E = (int)w.shape[0], N = (int)w.shape[1], K = (int)w.shape[2];
    const int k_tiles = (int)gg_ceil_div(K, T::BN);
    const int64_t blocks = row_tile_bound(R, E, T::BM) * k_tiles;
    if (blocks == 0) return;
    constexpr size_t smem = Gemm<T, true, false>::SMEM;
    set_smem_once<sm90_bf16_grouped_gemm_nn<T, OutT>>(smem);
    sm90_bf16_grouped_gemm_nn<T, OutT><<<(unsigned)blocks, T::THREADS, smem, cuda_stream()>>>(
        (OutT *)dinp.data, (const bf16 *)dout.data, (const bf16 *)w.data, (const int32_t *)offsets.data, R, E, N, K,
        k_tiles, accumulate, cuda_dev_error());
    CUDA_LAUNCH_CHECK("sm90_bf16_grouped_gemm_nn");
}

template <class T> void launch_tn_dw(Tensor dw, Tensor dout, Tensor inp, Tensor offsets) {
    const int R = (int)inp.shape[0], K = (int)inp.shape[1], E = (int)dw.shape[0], N = (int)dw.shape[1];
    const int n_tiles = (int)gg_ceil_div(N, T::BM), k_tiles = (int)gg_ceil_div(K, T::BN);
    const int64_t blocks = (int64_t)E * n_tiles * k_tiles;
    if (blocks == 0) return;
    constexpr size_t smem = Gemm<T, false, false>::SMEM;
    set_smem_once<sm90_bf16_grouped_gemm_tn_dw<T>>(smem);
    sm90_bf16_grouped_gemm_tn_dw<T><<<(unsigned)blocks, T::THREADS, smem, cuda_stream()>>>(
        (float *)dw.data, (const bf16 *)dout.data, (const bf16 *)inp.data, (const int32_t *)offsets.data, R, E, N, K,
        n_tiles, k_tiles, cuda_dev_error());
    CUDA_LAUNCH_CHECK("sm90_bf16_grouped_gemm_tn_dw");
}

} // namespace

extern "C" int cuda_gg_supported(int64_t R, int64_t E, int64_t N, int64_t K, const void *const *ptrs, int nptrs) {
    typedef Cfg T;
    if (N % 8 || K % 8 || R < 0 || E < 0 || N < 0 || K < 0) return 0;
    // int32 indexing inside the kernels (rows, columns, tile indices, a tile's end past the last row or column: the
    // margin) and 1-D grids below 2^31 blocks. Holds for the wgmma kernels too (their tiles are at least 128 x 128).
    const int64_t lim = INT_MAX - 1024;
    if (R > lim || N > lim || K > lim || E > lim) return 0;
    const int64_t col_tiles = gg_ceil_div(N > K ? N : K, T::BN); // nt: N / BN, nn: K / BN
    if (row_tile_bound(R, E, T::BM) * col_tiles > INT_MAX) return 0;
    if (E * gg_ceil_div(N, T::BM) * gg_ceil_div(K, T::BN) > INT_MAX) return 0; // tn_dw
    for (int i = 0; i < nptrs; i++)
        if ((uintptr_t)ptrs[i] % 16) return 0;
    return 1;
}

extern "C" void cuda_gg_forward(Tensor out, Tensor inp, Tensor w, Tensor offsets) {
    if (out.dtype == DT_BF16) launch_nt<Cfg, bf16>(out, inp, w, offsets);
    else launch_nt<Cfg, float>(out, inp, w, offsets);
}

extern "C" void cuda_gg_dinp(Tensor dinp, Tensor dout, Tensor w, Tensor offsets, int accumulate) {
    if (dinp.dtype == DT_BF16) launch_nn<Cfg, bf16>(dinp, dout, w, offsets, accumulate);
    else launch_nn<Cfg, float>(dinp, dout, w, offsets, accumulate);
}

extern "C" void cuda_gg_dw(Tensor dw, Tensor dout, Tensor inp, Tensor offsets) {
    launch_tn_dw<Cfg>(dw, dout, inp, offsets);
}
