// Device helpers shared by the BF16 tensor-core attention kernels (cuda_attention_tc.cu: the first version, kept
// selectable; cuda_attention_tc2.cu: the 8-warp backward and forward). Internal to those two files: everything is in
// an anonymous namespace, so each includer gets its own copy.
//
// Fragment conventions (mma.sync.m16n8k16, BF16 in, FP32 accumulate): lane = 4 g + tq; an accumulator c[4] of one
// n8 tile holds rows g (c[0], c[1]) and g + 8 (c[2], c[3]), columns 2 tq and 2 tq + 1. Shared-memory tiles are
// row-major with rows padded by PAD elements (16 bytes), so row strides are odd multiples of 16 bytes and the 8 row
// addresses of each ldmatrix phase hit distinct bank groups.
#ifndef CUDA_ATTENTION_TC_IMPL_CUH
#define CUDA_ATTENTION_TC_IMPL_CUH
#include "kernels/cuda/cuda_attention_tc.cuh"
#include "kernels/cuda/cuda_mma.cuh" // smem_u32, ldmatrix, mma.sync m16n8k16, cp.async

#include <math.h>

namespace {

constexpr int PAD = 8; // bf16 elements of row padding (16 bytes)
constexpr float LOG2E = 1.4426950408889634f, LN2 = 0.6931471805599453f;
static_assert((PAD * 2) % 16 == 0 && ((PAD * 2) / 16) % 2 == 1,
              "padding: an odd number of 16-byte chunks, so (16-multiple row + pad) strides are odd multiples of 16 B");
constexpr size_t SMEM_LIMIT = 227 * 1024; // per-block opt-in maximum on sm_90

// A fragment (16 x 16) of rows [r0, r0 + 16), columns [c0, c0 + 16) of a row-major tile.
__device__ __forceinline__ void ld_a(uint32_t (&a)[4], const bf16 *tile, int stride, int r0, int c0, int lane) {
    ldsm_x4(a, smem_u32(tile + (r0 + (lane & 15)) * stride + c0 + (lane >> 4) * 8));
}
// B fragments of two n8 tiles where B[k][n] = tile[n0 + n][c0 + k] (contraction along the tile's columns):
// b[0], b[1] for rows n0..n0+7, b[2], b[3] for rows n0+8..n0+15.
__device__ __forceinline__ void ld_b_rows(uint32_t (&b)[4], const bf16 *tile, int stride, int n0, int c0, int lane) {
    ldsm_x4(b, smem_u32(tile + (n0 + (lane & 7) + (lane >> 4) * 8) * stride + c0 + ((lane >> 3) & 1) * 8));
}
// B fragments of two n8 tiles where B[k][n] = tile[k0 + k][n0 + n] (contraction along the tile's rows):
// b[0], b[1] for columns n0..n0+7, b[2], b[3] for columns n0+8..n0+15.
__device__ __forceinline__ void ld_b_cols(uint32_t (&b)[4], const bf16 *tile, int stride, int k0, int n0, int lane) {
    ldsm_x4_t(b, smem_u32(tile + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * stride + n0 + (lane >> 4) * 8));
}
// A fragment for keys/queries [16 kk, 16 kk + 16) from an accumulator fragment c[n8 tile][4] (the C layout of two
// neighbouring n8 tiles is the A layout of one k16 step).
template <int N>
__device__ __forceinline__ void acc_to_a(uint32_t (&a)[4], const float (&c)[N][4], int kk) {
    a[0] = pack_bf16(c[2 * kk][0], c[2 * kk][1]);
    a[1] = pack_bf16(c[2 * kk][2], c[2 * kk][3]);
    a[2] = pack_bf16(c[2 * kk + 1][0], c[2 * kk + 1][1]);
    a[3] = pack_bf16(c[2 * kk + 1][2], c[2 * kk + 1][3]);
}


// Stores an accumulator fragment acc[n8 tiles][4] of 16 rows: rows row0 + g and row0 + 8 + g, columns
// 8 j + 2 tq (+1), into x (B, T, H, ncols) scaled by mul[2] (per row); rows at or past T are skipped.
template <int N>
__device__ __forceinline__ void store_acc(bf16 *x, const float (&acc)[N][4], const float (&mul)[2], int b, int h,
                                          int row0, int T_, int H, int ncols, int lane) {
    const int g = lane >> 2, tq = lane & 3;
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int t = row0 + g + 8 * i;
        if (t >= T_) continue;
        bf16 *xr = x + (((int64_t)b * T_ + t) * H + h) * ncols;
#pragma unroll
        for (int j = 0; j < N; j++)
            if (8 * j < ncols)
                *reinterpret_cast<__nv_bfloat162 *>(xr + 8 * j + 2 * tq) =
                    __floats2bfloat162_rn(acc[j][2 * i] * mul[i], acc[j][2 * i + 1] * mul[i]);
    }
}

// 4-byte global -> shared copy (F32 row statistics); valid == false zero-fills.
__device__ __forceinline__ void cp_async4(uint32_t dst, const void *src, bool valid) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 4 : 0));
}
// 2^x in one MUFU op (flushes results below 2^-126 to zero, which P and the softmax sums can ignore).
__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

} // namespace

// The second kernel set (cuda_attention_tc2.cu), for the head-dim pairs it is instantiated for; attn_tc_forward and
// attn_tc_backward dispatch there unless DSV3_ATTN_FWD / DSV3_ATTN_BWD say v1.
bool attn_tc2_supported(int D, int DV);
void attn_tc2_forward(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, int B, int T_, int H, int D,
                      int DV, float scale, cudaStream_t s);
void attn_tc2_backward(bf16 *dq, bf16 *dk, bf16 *dv, const bf16 *q, const bf16 *k, const bf16 *v, const bf16 *dout,
                       const float *lse, const float *Dr, int B, int T_, int H, int D, int DV, float scale,
                       cudaStream_t s);
#endif
