// Hopper wgmma flash attention (cuda_attention_wg.cu: forward; cuda_attention_wg_bwd.cu: backward), selected by
// DSV3_ATTN_FWD=wg / DSV3_ATTN_BWD=wg in cuda_attention_tc.cu for the head-dim pairs attn_wg_supported lists.
// Shapes as in cuda_attention.cu: q, k (B, T, H, D), v, out, dout (B, T, H, DV) BF16, lse and Dr (B, H, T) F32;
// every pointer 16-byte aligned (attn_tc_supported checked that).
#ifndef CUDA_ATTENTION_WG_CUH
#define CUDA_ATTENTION_WG_CUH
#include "kernels/cuda/cuda_common.cuh"

bool attn_wg_supported(int D, int DV);
void attn_wg_forward(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, int B, int T_, int H, int D,
                     int DV, float scale, cudaStream_t s);
// Dr (B, H, T) = rowsum(dO * O), computed by the caller (attn_bwd_dot_kernel).
void attn_wg_backward(bf16 *dq, bf16 *dk, bf16 *dv, const bf16 *q, const bf16 *k, const bf16 *v, const bf16 *dout,
                      const float *lse, const float *Dr, int B, int T_, int H, int D, int DV, float scale,
                      cudaStream_t s);
#endif
