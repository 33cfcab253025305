// Device helpers shared by the wgmma attention kernels (cuda_attention_wg.cu, cuda_attention_wg_bwd.cu). Internal
// to those files: everything is in an anonymous namespace. Fragment facts are cuda_wgmma.cuh's: a warpgroup's
// accumulator d (64 x N) gives thread t = 32 w + 4 g + q (w: warp in the warpgroup) rows 16 w + g (d[4 j + 0..1])
// and 16 w + g + 8 (d[4 j + 2..3]), columns 8 j + 2 q + 0..1. A row is spread over the 4 lanes q of a quad, so row
// reductions are two xor-shuffles.
#ifndef CUDA_ATTENTION_WG_IMPL_CUH
#define CUDA_ATTENTION_WG_IMPL_CUH
#include "kernels/cuda/cuda_attention_wg.cuh"
#include "kernels/cuda/cuda_wgmma.cuh"

#include <math.h>

namespace {

constexpr float WG_LOG2E = 1.4426950408889634f, WG_LN2 = 0.6931471805599453f;
constexpr size_t WG_SMEM_LIMIT = 227 * 1024; // per-block opt-in maximum on sm_90
constexpr int WG_SLAB_BYTES = 128;           // one swizzled row of a slab: 64 BF16

// 2^x in one MUFU op (ftz: results below 2^-126 flush to zero, which P and the softmax sums can ignore); 2^-inf = 0.
__device__ __forceinline__ float wg_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// 4-byte global -> shared copy (F32 row statistics); valid == false zero-fills (src not read, but a valid address).
__device__ __forceinline__ void wg_cp_async4(uint32_t dst, const void *src, bool valid) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 4 : 0));
}

// d (64 x N) += A (registers) B (MN-major smem descriptor db), for the N the head dims need.
template <int N>
__device__ __forceinline__ void wg_mma_rs_mn(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t db) {
    static_assert(N == 64 || N == 128 || N == 192, "instantiated widths");
    if constexpr (N == 64) wg_mma_rs_n64<1>(d, a, db, 1);
    else if constexpr (N == 128) wg_mma_rs_n128<1>(d, a, db, 1);
    else wg_mma_rs_n192<1>(d, a, db, 1);
}

// Starts copying rows [t0, t0 + ROWS), columns [c0, c0 + 64) of one head of x (row t at xh + t * ld) into the slab
// at shared address `slab` (128-byte swizzled, cuda_wgmma.cuh); rows at or past T are zero-filled. The source
// pointer handed on stays inside the tensor even for a tile wholly past T (cp.async's zero-fill still takes an
// address).
template <int ROWS, int NTH>
__device__ __forceinline__ void wg_load_rows(uint32_t slab, const bf16 *xh, int64_t ld, int t0, int T_, int c0,
                                             int tid) {
    const bf16 *src = xh + (int64_t)(t0 < T_ ? t0 : 0) * ld + c0;
    wg_load_slab(slab, src, ld, ROWS, T_ - t0, tid, NTH);
}

} // namespace
#endif
