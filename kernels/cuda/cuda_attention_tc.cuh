// BF16 tensor-core causal flash attention (mma.sync m16n8k16, FP32 accumulation); see cuda_attention_tc.cu.
// Shapes as in cuda_attention.cu: q, k (B, T, H, D), v, out, dout (B, T, H, DV), lse (B, H, T) F32.
#ifndef CUDA_ATTENTION_TC_CUH
#define CUDA_ATTENTION_TC_CUH
#include "kernels/cuda/cuda_common.cuh"

// True when the tensor-core kernels take these head dims (multiples of 16, D <= 192, DV <= 128) and every pointer
// is 16-byte aligned (cp.async copies 16-byte chunks of rows).
bool attn_tc_supported(int D, int DV, const void *const *ptrs, int nptrs);
void attn_tc_forward(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, int B, int T_, int H, int D,
                     int DV, float scale, cudaStream_t s);
// Dr (B, H, T) = rowsum(dO * O), computed by the caller (attn_bwd_dot_kernel).
void attn_tc_backward(bf16 *dq, bf16 *dk, bf16 *dv, const bf16 *q, const bf16 *k, const bf16 *v, const bf16 *dout,
                      const float *lse, const float *Dr, int B, int T_, int H, int D, int DV, float scale,
                      cudaStream_t s);
#endif
