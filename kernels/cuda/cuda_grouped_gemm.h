// The cuda backend's grouped (MoE expert) GEMMs for BF16 tensors: one kernel launch per product for all experts,
// reading the DEVICE segment table offsets (E + 1) I32 only (never offsets_host), so no host sync is needed.
// Shapes as in ops.h: inp (R, K), w (E, N, K), out (R, N), dout (R, N), dinp (R, K), dw (E, N, K); expert e owns
// rows [offsets[e], offsets[e + 1]). Rows outside every segment are neither read for the result nor written.
// Included from C (the benchmark) and from CUDA C++ (kernels/cuda/).
#ifndef CUDA_GROUPED_GEMM_H
#define CUDA_GROUPED_GEMM_H

#include "kernels/ops.h"

#ifdef __cplusplus
extern "C" {
#endif

// 1 when the kernels take this problem: N and K multiples of 8 (16-byte rows for cp.async), every pointer in ptrs
// 16-byte aligned, and sizes within the kernels' int32 indexing. Dtypes are the caller's to check (BF16 inp, w,
// dout; F32 or BF16 out/dinp; F32 dw).
int cuda_gg_supported(int64_t R, int64_t E, int64_t N, int64_t K, const void *const *ptrs, int nptrs);

// sm90_bf16_grouped_gemm_nt: out (R, N) = inp (R, K) @ w[e] (N, K)^T per segment; out F32 or BF16.
void cuda_gg_forward(Tensor out, Tensor inp, Tensor w, Tensor offsets);
// sm90_bf16_grouped_gemm_nn: dinp (R, K) = dout (R, N) @ w[e] (N, K) per segment (accumulate: dinp += the
// product, summed in FP32 and rounded once); dinp F32 or BF16.
void cuda_gg_dinp(Tensor dinp, Tensor dout, Tensor w, Tensor offsets, int accumulate);
// sm90_bf16_grouped_gemm_tn_dw: dw[e] (N, K) += dout_seg^T @ inp_seg; dw F32; deterministic (no atomics).
void cuda_gg_dw(Tensor dw, Tensor dout, Tensor inp, Tensor offsets);

// The wgmma versions (cuda_grouped_gemm_wg.cu: sm90_bf16_grouped_gemm_wg_nt / _nn / _tn_dw), same semantics and
// the same cuda_gg_supported conditions. The backend uses them when cuda_gg_wg_selected() says so.
void cuda_gg_wg_forward(Tensor out, Tensor inp, Tensor w, Tensor offsets);
void cuda_gg_wg_dinp(Tensor dinp, Tensor dout, Tensor w, Tensor offsets, int accumulate);
void cuda_gg_wg_dw(Tensor dw, Tensor dout, Tensor inp, Tensor offsets);
// dinp = da @ wa[e] + db @ wb[e] per segment, one contraction (overwrite); da, db (R, N), wa, wb (E, N, K).
void cuda_gg_wg_dinp_pair(Tensor dinp, Tensor da, Tensor wa, Tensor db, Tensor wb, Tensor offsets);
// DSV3_GG = wg | mma (unset or empty: mma): which kernel set the backend's BF16 grouped GEMMs use; read at every
// call (so one process can A/B both); any other value dies. DSV3_GG_WG_BN = 256 | 128 (unset: 256) picks the wgmma
// kernels' output tile width (128 x 256 or 128 x 128), for measurements.
int cuda_gg_wg_selected(void);

// The per-expert cuBLASLt loop (cuda_matmul.cu), with the same checks and semantics as the backend's
// grouped_matmul_forward/backward: what those use for F32 tensors and for shapes the kernels do not take. Exposed
// for the benchmark's comparison.
void cuda_grouped_matmul_forward_loop(Tensor out, Tensor inp, Tensor w, Tensor offsets, const int32_t *offsets_host);
void cuda_grouped_matmul_backward_loop(Tensor dinp, Tensor dw, Tensor dout, Tensor inp, Tensor w, Tensor offsets,
                                       const int32_t *offsets_host, int accumulate_dinp);

#ifdef __cplusplus
}
#endif

#endif
