// A single-warpgroup product through kernels/cuda/cuda_wgmma.cuh, for test_gpu_wgmma.c: C (64 x N) = A (64 x 64) *
// B (64 x N) in every operand layout the wgmma kernels use (A K-major / MN-major / registers, B K-major /
// MN-major), so that a wrong swizzle, descriptor field or fragment mapping fails one named case instead of a whole
// GEMM or attention kernel. The MN-major descriptor's LBO / SBO can be overridden to test the alternative reading.
#include <cuda_runtime.h>

#include "kernels/cuda/cuda_wgmma.cuh"

extern "C" {
#include "train/check.h"
}

#define PROBE_CHECK(call)                                                                                             \
    do {                                                                                                              \
        cudaError_t e_ = (call);                                                                                      \
        if (e_ != cudaSuccess) die_at(__FILE__, __LINE__, "%s failed: %s", #call, cudaGetErrorString(e_));            \
    } while (0)

// a_st: A's storage, (64, 64) row-major if TA == 0 (M rows of k), else (64 k, 64 m). b_st: (N, 64) if TB == 0
// (N rows of k), else (64 k, N). c: (64, N) F32.
template <int N, int TA, int TB, int RS>
__global__ void __launch_bounds__(128) probe_kernel(const __nv_bfloat16 *a_st, const __nv_bfloat16 *b_st, float *c,
                                                    uint32_t mn_lbo, uint32_t mn_sbo) {
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    // 1024-byte alignment of the tiles (the dynamic shared window is only guaranteed 16-byte aligned)
    uint32_t base = (smem_u32(smem_raw) + 1023u) & ~1023u;
    uint32_t sa = base, sb = base + 64 * 128;
    int tid = threadIdx.x;
    // A: one slab of 64 rows (K-major: m rows; MN-major: k rows), 8 KB
    wg_load_slab(sa, a_st, 64, 64, 64, tid, 128);
    if (TB == 0) {
        wg_load_slab(sb, b_st, 64, N, N, tid, 128); // one K-slab of N rows
    } else {
        for (int s = 0; s < N / 64; s++) wg_load_slab(sb + s * 8192, b_st + s * 64, N, 64, 64, tid, 128);
    }
    cp_async_commit();
    cp_async_wait<0>();
    wg_fence_proxy();
    __syncthreads();

    float d[N / 2];
#pragma unroll
    for (int i = 0; i < N / 2; i++) d[i] = 0.f;
    int w = tid / 32, g = (tid % 32) / 4, q = tid % 4;
    wg_fence();
#pragma unroll
    for (int ks = 0; ks < 4; ks++) {
        uint64_t db = TB == 0 ? wg_desc_k(sb, ks) : wg_desc(sb + 2048u * ks, mn_lbo, mn_sbo);
        if (RS) {
            uint32_t a[4];
            int r = 16 * w + g, k0 = 16 * ks + 2 * q;
            const uint32_t *A32 = (const uint32_t *)a_st; // (64, 64) row-major here
            a[0] = A32[(r * 64 + k0) / 2];
            a[1] = A32[((r + 8) * 64 + k0) / 2];
            a[2] = A32[(r * 64 + k0 + 8) / 2];
            a[3] = A32[((r + 8) * 64 + k0 + 8) / 2];
            if constexpr (N == 64) wg_mma_rs_n64<TB>(*(float(*)[32])d, a, db, ks > 0);
            if constexpr (N == 128) wg_mma_rs_n128<TB>(*(float(*)[64])d, a, db, ks > 0);
            if constexpr (N == 192) wg_mma_rs_n192<TB>(*(float(*)[96])d, a, db, ks > 0);
            if constexpr (N == 256) wg_mma_rs_n256<TB>(*(float(*)[128])d, a, db, ks > 0);
        } else {
            uint64_t da = TA == 0 ? wg_desc_k(sa, ks) : wg_desc(sa + 2048u * ks, mn_lbo, mn_sbo);
            if constexpr (N == 64) wg_mma_ss_n64<TA, TB>(*(float(*)[32])d, da, db, ks > 0);
            if constexpr (N == 128) wg_mma_ss_n128<TA, TB>(*(float(*)[64])d, da, db, ks > 0);
            if constexpr (N == 192) wg_mma_ss_n192<TA, TB>(*(float(*)[96])d, da, db, ks > 0);
            if constexpr (N == 256) wg_mma_ss_n256<TA, TB>(*(float(*)[128])d, da, db, ks > 0);
        }
    }
    wg_commit();
    wg_wait<0>();
#pragma unroll
    for (int j = 0; j < N / 8; j++) {
        int r = 16 * w + g, col = 8 * j + 2 * q;
        c[r * N + col] = d[4 * j];
        c[r * N + col + 1] = d[4 * j + 1];
        c[(r + 8) * N + col] = d[4 * j + 2];
        c[(r + 8) * N + col + 1] = d[4 * j + 3];
    }
}

template <int N, int TA, int TB, int RS>
static void probe_launch(const __nv_bfloat16 *a, const __nv_bfloat16 *b, float *c, uint32_t lbo, uint32_t sbo) {
    size_t smem = 1024 + 64 * 128 + (size_t)N * 128;
    PROBE_CHECK(cudaFuncSetAttribute(probe_kernel<N, TA, TB, RS>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     (int)smem));
    probe_kernel<N, TA, TB, RS><<<1, 128, smem>>>(a, b, c, lbo, sbo);
    PROBE_CHECK(cudaGetLastError());
}

// A (64, 64) and B (64, N) are the math operands (row-major F32, already BF16-representable); `a_layout`
// 0 K-major, 1 MN-major, 2 registers; `b_layout` 0 K-major, 1 MN-major. lbo / sbo: the MN-major descriptor fields
// in bytes (0, 0: the header's wg_desc_mn reading: LBO = slab stride 8192, SBO = 1024). Returns 0, or -1 for a
// combination the probe does not instantiate.
extern "C" int wgmma_probe(float *C, const float *A, const float *B, int N, int a_layout, int b_layout, uint32_t lbo,
                           uint32_t sbo) {
    if (!(N == 64 || N == 128 || N == 192 || N == 256) || a_layout < 0 || a_layout > 2 || b_layout < 0 || b_layout > 1)
        return -1;
    if (lbo == 0 && sbo == 0) lbo = 8192, sbo = 1024;
    __nv_bfloat16 *ha = (__nv_bfloat16 *)xmalloc(64 * 64 * 2), *hb = (__nv_bfloat16 *)xmalloc((size_t)64 * N * 2);
    for (int m = 0; m < 64; m++)
        for (int k = 0; k < 64; k++) ha[a_layout == 1 ? k * 64 + m : m * 64 + k] = __float2bfloat16(A[m * 64 + k]);
    for (int k = 0; k < 64; k++)
        for (int n = 0; n < N; n++) hb[b_layout == 1 ? k * N + n : n * 64 + k] = __float2bfloat16(B[k * N + n]);
    __nv_bfloat16 *da, *db;
    float *dc;
    PROBE_CHECK(cudaMalloc(&da, 64 * 64 * 2));
    PROBE_CHECK(cudaMalloc(&db, (size_t)64 * N * 2));
    PROBE_CHECK(cudaMalloc(&dc, (size_t)64 * N * 4));
    PROBE_CHECK(cudaMemcpy(da, ha, 64 * 64 * 2, cudaMemcpyHostToDevice));
    PROBE_CHECK(cudaMemcpy(db, hb, (size_t)64 * N * 2, cudaMemcpyHostToDevice));
    PROBE_CHECK(cudaMemset(dc, 0xFF, (size_t)64 * N * 4));
#define PROBE_CASE(NN)                                                                                                \
    if (N == NN) {                                                                                                    \
        if (a_layout == 2 && b_layout == 0) probe_launch<NN, 0, 0, 1>(da, db, dc, lbo, sbo);                          \
        if (a_layout == 2 && b_layout == 1) probe_launch<NN, 0, 1, 1>(da, db, dc, lbo, sbo);                          \
        if (a_layout == 0 && b_layout == 0) probe_launch<NN, 0, 0, 0>(da, db, dc, lbo, sbo);                          \
        if (a_layout == 0 && b_layout == 1) probe_launch<NN, 0, 1, 0>(da, db, dc, lbo, sbo);                          \
        if (a_layout == 1 && b_layout == 0) probe_launch<NN, 1, 0, 0>(da, db, dc, lbo, sbo);                          \
        if (a_layout == 1 && b_layout == 1) probe_launch<NN, 1, 1, 0>(da, db, dc, lbo, sbo);                          \
    }
    PROBE_CASE(64)
    PROBE_CASE(128)
    PROBE_CASE(192)
    PROBE_CASE(256)
#undef PROBE_CASE
    PROBE_CHECK(cudaDeviceSynchronize());
    PROBE_CHECK(cudaMemcpy(C, dc, (size_t)64 * N * 4, cudaMemcpyDeviceToHost));
    PROBE_CHECK(cudaFree(da));
    PROBE_CHECK(cudaFree(db));
    PROBE_CHECK(cudaFree(dc));
    free(ha);
    free(hb);
    return 0;
}
