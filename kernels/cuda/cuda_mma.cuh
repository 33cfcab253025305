// Warp-level tensor-core building blocks shared by the mma.sync kernels (sm_80 instructions, run on sm_90a here):
// cp.async global -> shared copies with zero-fill, ldmatrix fragment loads and the BF16 m16n8k16 MMA with FP32
// accumulators. Fragment layouts are PTX's: for mma.m16n8k16 a thread (lane = 4 g + tq) holds A rows g and g + 8,
// columns 2 tq (+1) and 2 tq + 8 (+1); B columns (n) g, rows (k) 2 tq (+1) and 2 tq + 8 (+1); C rows g and g + 8,
// columns 2 tq (+1).
#ifndef CUDA_MMA_CUH
#define CUDA_MMA_CUH

#include <cuda_bf16.h>
#include <stdint.h>

// Shared-memory address of a generic pointer into shared memory (what ldmatrix and cp.async take).
__device__ __forceinline__ uint32_t smem_u32(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

// Four 8x8 b16 matrices; lanes 8 j .. 8 j + 7 give the row addresses of matrix j, which lands in r[j].
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
// The same, each 8x8 matrix transposed on the way (for operands whose contraction index runs along the rows).
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
// c += a (16 x 16, row) * b (16 x 8, col); BF16 inputs, FP32 accumulators.
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// Two floats -> one register of two BF16 (lo in the low half: the lower address, the lower column), round to
// nearest even: the packed operand of both the mma.sync and the wgmma register fragments.
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
}
// Max / sum over the 4 lanes of a quad (lanes 4 g .. 4 g + 3: the threads holding one accumulator row).
__device__ __forceinline__ float quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}
// 16-byte global -> shared copy that bypasses L1; valid == false writes 16 zero bytes (src-size 0: src is not read,
// but must still be a valid address).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void *src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits until at most N of this thread's committed groups are still in flight.
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

#endif
