// What the grouped (MoE expert) GEMM kernels share: reading the DEVICE segment table offsets (E + 1) I32 (expert e
// owns rows [offsets[e], offsets[e + 1])), recording a bad table, and finding a row tile's expert without host data.
// Used by cuda_grouped_gemm.cu (the mma.sync kernels) and cuda_grouped_gemm_wg.cu (the wgmma kernels).
//
// Row tiles never straddle experts: expert e's rows are cut into ceil(rows_e / BM) tiles of BM rows (its last one
// partial), and the tiles of all experts are numbered expert by expert. row_tile_bound(R, E, BM) bounds their count
// for any table of R rows, so a grid can be sized on the host; a CTA past the last tile finds none and exits.
#ifndef CUDA_GROUPED_GEMM_CUH
#define CUDA_GROUPED_GEMM_CUH

#include "kernels/cuda/cuda_common.cuh"

namespace {

// Expert e's segment clamped into [0, R] and non-decreasing: what the kernels use whatever the offsets hold.
__device__ __forceinline__ void segment(const int32_t *off, int e, int R, int &lo, int &hi) {
    lo = min(max(__ldg(off + e), 0), R);
    hi = min(max(__ldg(off + e + 1), lo), R);
}

// Block 0, one warp: records the first entry of offsets (E + 1) that is not a valid segment table for R rows
// (offsets[0] == 0, non-decreasing, offsets[E] <= R).
__device__ __forceinline__ void check_offsets(const int32_t *off, int E, int R, CudaDevError *err) {
    if (blockIdx.x != 0 || threadIdx.x >= 32) return;
    for (int e = threadIdx.x; e <= E; e += 32) {
        const int v = __ldg(off + e), prev = e > 0 ? __ldg(off + e - 1) : 0;
        if (v < 0 || v > R || v < prev || (e == 0 && v != 0)) dev_error(err, ERR_GROUPED_OFFSETS, e, v, R);
    }
}

// The row tile mt of the concatenated per-expert row tiles (expert by expert, BM rows each, the last one of an
// expert partial): its expert, first row and the segment's end. Every warp computes it (identically), so a CTA
// needs no shared memory or barrier for it; all 32 lanes of a warp must call it. False when mt is past the last tile.
template <int BM>
__device__ __forceinline__ bool find_row_tile(const int32_t *off, int E, int R, int mt, int &e_out, int &row0,
                                              int &row_end) {
    const int lane = threadIdx.x & 31;
    int before = 0; // tiles of the experts of earlier 32-expert steps
    for (int base = 0; base < E; base += 32) {
        const int e = base + lane;
        int lo = 0, hi = 0;
        if (e < E) segment(off, e, R, lo, hi);
        const int n = (hi - lo + BM - 1) / BM;
        int incl = n; // inclusive prefix sum of n over the lanes
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const int v = __shfl_up_sync(0xffffffffu, incl, o);
            if (lane >= o) incl += v;
        }
        const int first = before + incl - n;
        const bool mine = mt >= first && mt < first + n; // false for empty experts (n == 0)
        const unsigned m = __ballot_sync(0xffffffffu, mine);
        if (m) {
            const int src = __ffs(m) - 1;
            e_out = __shfl_sync(0xffffffffu, e, src);
            row0 = __shfl_sync(0xffffffffu, mine ? lo + (mt - first) * BM : 0, src);
            row_end = __shfl_sync(0xffffffffu, hi, src);
            return true;
        }
        before += __shfl_sync(0xffffffffu, incl, 31);
    }
    return false;
}

inline int64_t gg_ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Upper bound of sum_e ceil(rows_e / BM) for segments that tile [0, R): sum (rows_e + BM - 1) / BM.
inline int64_t row_tile_bound(int64_t R, int64_t E, int BM) { return (R + E * (BM - 1)) / BM; }

} // namespace

#endif
