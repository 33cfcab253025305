// The cuda backend's internals, shared by every kernels/cuda/*.cu file: the checked-call macros, the one stream,
// the cuBLASLt handle, a grow-once scratch buffer, the device-side error record (bad indices found inside kernels),
// the argument checks (the cpu backend's, so both backends die with the same messages), element-type helpers for
// F32/BF16 kernels, and the op entry points that cuda_backend.cu collects into backend_cuda.
//
// Threading model (first version, issue 5): every op enqueues on ONE stream created at first use; nothing syncs the
// host except the ops that return a host value (sum_squares), fill host arrays (moe_dispatch_plan when offsets_host
// is asked for; the per-expert cuBLASLt loop of the grouped matmuls, which reads the segment table on the host),
// or move memory to the host (download, synchronize). Kernels that find a bad index (a token id
// outside the table, an expert id outside [0, E), ...) record it in a device-memory record and skip the access; the
// next host sync dies with the op, the tensor, the index and the bad value (cuda_check_device_errors).
#ifndef CUDA_COMMON_CUH
#define CUDA_COMMON_CUH

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

extern "C" {
#include "kernels/cpu/cpu_ops.h" // argument checks cpu_need/cpu_agree/cpu_expect/cpu_rows/cpu_cols
#include "kernels/ops.h"
#include "train/check.h"
}

// ---- checked calls: each names the call, file:line and (through die_at) the rank ----
#define CUDA_CHECK(call)                                                                                              \
    do {                                                                                                              \
        cudaError_t e_ = (call);                                                                                      \
        if (e_ != cudaSuccess)                                                                                        \
            die_at(__FILE__, __LINE__, "%s failed: %s (%s)", #call, cudaGetErrorName(e_), cudaGetErrorString(e_));   \
    } while (0)

#define CUBLAS_CHECK(call)                                                                                            \
    do {                                                                                                              \
        cublasStatus_t s_ = (call);                                                                                   \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                                              \
            die_at(__FILE__, __LINE__, "%s failed: %s (%s)", #call, cublasLtGetStatusName(s_),                        \
                   cublasLtGetStatusString(s_));                                                                      \
    } while (0)

// After every kernel launch: a bad configuration (too much shared memory, a zero-sized grid) fails here, naming the
// kernel, instead of at some later call.
#define CUDA_LAUNCH_CHECK(kernel_name)                                                                                \
    do {                                                                                                              \
        cudaError_t e_ = cudaGetLastError();                                                                          \
        if (e_ != cudaSuccess)                                                                                        \
            die_at(__FILE__, __LINE__, "launch of %s failed: %s (%s)", kernel_name, cudaGetErrorName(e_),             \
                   cudaGetErrorString(e_));                                                                           \
    } while (0)

// ---- runtime (cuda_runtime.cu) ----
cudaStream_t cuda_stream(void);       // the backend's stream, created at first use
cublasLtHandle_t cuda_lt_handle(void); // created at first use
int cuda_sm_count(void);               // the device's SM count (asked once): persistent grids size by it
void *cuda_lt_workspace(size_t *bytes);
// A device buffer of at least `bytes`, owned by the backend and reused by every op: valid until the next call of
// cuda_scratch (an op takes all the scratch it needs in one call and carves it). It grows (after a stream sync) the
// first time a larger size is asked for, so after the first training step nothing is allocated any more.
void *cuda_scratch(size_t bytes);
// Whether a pointer and a row length in bytes allow 16-byte (uint4) row copies.
static inline bool cuda_rows16(const void *p, int64_t row_bytes) {
    return ((uintptr_t)p & 15) == 0 && row_bytes % 16 == 0;
}
// Rounds a byte count up to 256 so that carved scratch pieces stay aligned for vector loads.
static inline size_t cuda_align256(size_t b) { return (b + 255) / 256 * 256; }

// Errors found on the device. A kernel calls dev_error(...) with one of these codes; the first one is kept.
enum CudaErrCode {
    ERR_NONE = 0,
    ERR_EMBED_FWD_ID,
    ERR_EMBED_BWD_ID,
    ERR_CE_TARGET,
    ERR_ROUTE_BWD_IDX,
    ERR_BALANCE_IDX,
    ERR_PLAN_IDX,
    ERR_GATHER_ORDER,
    ERR_GATHER_BWD_ORDER,
    ERR_COMBINE_ORDER,
    ERR_COMBINE_BWD_ORDER,
    ERR_GROUPED_OFFSETS, // a grouped GEMM's device offsets: index = entry, value = its value, bound = the row count
    ERR_COUNT
};
struct CudaDevError {
    int code;
    int pad;
    long long index, value, bound;
};
// Device pointer to the record (created, zeroed, at first use).
CudaDevError *cuda_dev_error(void);
// Host side, after a stream sync: dies with the recorded error, if any.
void cuda_check_device_errors(void);
// cudaStreamSynchronize on the backend stream, then cuda_check_device_errors.
void cuda_sync_and_check(void);

__device__ __forceinline__ void dev_error(CudaDevError *e, int code, long long index, long long value,
                                          long long bound) {
    if (atomicCAS(&e->code, 0, code) == 0) {
        e->index = index;
        e->value = value;
        e->bound = bound;
    }
}

// ---- argument checks ----
// Dies unless t is F32 or BF16 (an activation), then applies cpu_need's checks for its dtype.
void cuda_need_float(const char *op, const char *name, const Tensor *t, int ndim);
// Dies unless a and b have the same dtype.
void cuda_same_dtype(const char *op, const char *an, const Tensor *a, const char *bn, const Tensor *b);

// ---- element types ----
typedef __nv_bfloat16 bf16;
__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(bf16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_f<bf16>(float x) { return __float2bfloat16_rn(x); }

// Runs the statement with T bound to the C++ type of dtype dt (F32 or BF16; checked before).
#define DISPATCH_FLOAT(dt, T, ...)                                                                                    \
    do {                                                                                                              \
        if ((dt) == DT_F32) {                                                                                         \
            typedef float T;                                                                                          \
            __VA_ARGS__;                                                                                              \
        } else {                                                                                                      \
            typedef bf16 T;                                                                                           \
            __VA_ARGS__;                                                                                              \
        }                                                                                                             \
    } while (0)

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ double warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// ---- the second set of memory-bound kernels (v2): 16-byte vector loads, one warp or thread per 16-byte unit ----
// DSV3_MEMOPS picks them, op by op, beside the first kernels (v1), which stay as they were: "v1": v1 everywhere;
// "v2": v2 wherever it applies; unset or "": MEMOPS_DEFAULT (cuda_elementwise.cu: v2); otherwise a comma-separated list of op names that take v2 (e.g. "moe_combine,embedding_backward"; an
// unknown name dies, listing the known ones). Read at every call (a getenv
// beside a launch) so that a test or benchmark can A/B both in one process. Defined in cuda_elementwise.cu.
bool cuda_memops_v2(const char *op);

// Eight consecutive elements at p as floats, and back. p must be 16-byte aligned: the callers check the base
// pointers (cuda_rows16) and use rows whose lengths are multiples of 8 elements. Plain loads (no __ldg): some
// callers write what they read (accumulating or in-place outputs).
__device__ __forceinline__ void ld8(const float *p, float *f) {
    const float4 a = ((const float4 *)p)[0], b = ((const float4 *)p)[1];
    f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
}
__device__ __forceinline__ void bf16x2_unpack(unsigned u, float *f) {
    f[0] = __uint_as_float(u << 16); // the low half is the element at the lower address
    f[1] = __uint_as_float(u & 0xFFFF0000u);
}
__device__ __forceinline__ void ld8(const bf16 *p, float *f) {
    const uint4 u = *(const uint4 *)p;
    bf16x2_unpack(u.x, f), bf16x2_unpack(u.y, f + 2), bf16x2_unpack(u.z, f + 4), bf16x2_unpack(u.w, f + 6);
}
__device__ __forceinline__ void st8(float *p, const float *f) {
    ((float4 *)p)[0] = make_float4(f[0], f[1], f[2], f[3]);
    ((float4 *)p)[1] = make_float4(f[4], f[5], f[6], f[7]);
}
__device__ __forceinline__ unsigned bf16x2_pack(float lo, float hi) { // round to nearest even, as from_f<bf16>
    return (unsigned)__bfloat16_as_ushort(__float2bfloat16_rn(lo)) |
           ((unsigned)__bfloat16_as_ushort(__float2bfloat16_rn(hi)) << 16);
}
__device__ __forceinline__ void st8(bf16 *p, const float *f) {
    uint4 u;
    u.x = bf16x2_pack(f[0], f[1]), u.y = bf16x2_pack(f[2], f[3]);
    u.z = bf16x2_pack(f[4], f[5]), u.w = bf16x2_pack(f[6], f[7]);
    *(uint4 *)p = u;
}
// VEC (1 or 8) elements: the scalar form serves shapes that the 16-byte form cannot (odd widths, unaligned views).
template <int VEC, typename T> __device__ __forceinline__ void ldv(const T *p, float *f) {
    if constexpr (VEC == 8) ld8(p, f);
    else f[0] = to_f(*p);
}
template <int VEC, typename T> __device__ __forceinline__ void stv(T *p, const float *f) {
    if constexpr (VEC == 8) st8(p, f);
    else *p = from_f<T>(f[0]);
}
// Whether every pointer is 16-byte aligned and n (elements per row, or a column offset) is a multiple of 8: the
// condition for ld8/st8 on rows of n elements.
static inline bool cuda_vec8_ok(int64_t n, const void *a, const void *b = NULL, const void *c = NULL,
                                const void *d = NULL, const void *e = NULL) {
    const uintptr_t m = (uintptr_t)a | (uintptr_t)b | (uintptr_t)c | (uintptr_t)d | (uintptr_t)e;
    return (m & 15) == 0 && n % 8 == 0;
}

// Grid size for a grid-stride loop over n items with `threads` per block.
static inline unsigned cuda_grid(int64_t n, int threads) {
    int64_t b = (n + threads - 1) / threads;
    if (b < 1) b = 1;
    if (b > 65535LL * 16) b = 65535LL * 16;
    return (unsigned)b;
}

// ---- op entry points (one .cu file per op family, as in kernels/cpu/) ----
extern "C" {
void *cuda_alloc(size_t bytes);
void cuda_free(void *p);
void cuda_upload(void *dst, const void *src_host, size_t bytes);
void cuda_download(void *dst_host, const void *src, size_t bytes);
void cuda_copy(void *dst, const void *src, size_t bytes);
void cuda_zero(void *p, size_t bytes);
void cuda_synchronize(void);
void cuda_memory_in_use(size_t *used, size_t *total);

void cuda_matmul_forward(Tensor out, Tensor inp, Tensor w, int accumulate);
void cuda_matmul_forward_residual(Tensor out, Tensor res, Tensor inp, Tensor w);
void cuda_matmul_backward(Tensor dinp, Tensor dw, Tensor dout, Tensor inp, Tensor w, int accumulate_dinp);
void cuda_grouped_matmul_forward(Tensor out, Tensor inp, Tensor w, Tensor offsets, const int32_t *offsets_host);
void cuda_grouped_matmul_backward(Tensor dinp, Tensor dw, Tensor dout, Tensor inp, Tensor w, Tensor offsets,
                                  const int32_t *offsets_host, int accumulate_dinp);
void cuda_grouped_matmul_dinp_pair(Tensor dinp, Tensor dout_a, Tensor wa, Tensor dout_b, Tensor wb, Tensor offsets,
                                   const int32_t *offsets_host);

void cuda_rmsnorm_forward(Tensor out, Tensor rstd, Tensor inp, Tensor w, float eps);
void cuda_rmsnorm_backward(Tensor dinp, Tensor dw, Tensor dout, Tensor inp, Tensor w, Tensor rstd,
                           int accumulate_dinp, Tensor dinp_lowp);
void cuda_swiglu_forward(Tensor out, Tensor gate, Tensor up);
void cuda_swiglu_backward(Tensor dgate, Tensor dup, Tensor dout, Tensor gate, Tensor up);
void cuda_axpy(Tensor y, Tensor x, float alpha);
void cuda_copy_cols(Tensor dst, int64_t dst_col, Tensor src, int64_t src_col, int64_t ncols, int accumulate);
void cuda_convert(Tensor dst, Tensor src);

void cuda_embedding_forward(Tensor out, Tensor ids, Tensor table);
void cuda_embedding_backward(Tensor dtable, Tensor dout, Tensor ids);
void cuda_cross_entropy_forward_backward(Tensor losses, Tensor dlogits, Tensor logits, Tensor targets,
                                         float grad_scale);

void cuda_rope_apply(Tensor x, int64_t col, int64_t rope_dim, Tensor cos, Tensor sin, int T, int inverse);
void cuda_mla_kv_assemble(Tensor k, Tensor v, Tensor kv, Tensor k_rope, int nope, int rope, int dv);
void cuda_mla_kv_assemble_backward(Tensor dkv, Tensor dk_rope, Tensor dk, Tensor dv, int nope, int rope, int dv_dim);
void cuda_attention_forward(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v, float scale);
void cuda_attention_backward(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out,
                             Tensor lse, float scale);

void cuda_moe_route(Tensor topk_idx, Tensor gates, Tensor scores, Tensor logits, Tensor bias, RouterParams p);
void cuda_moe_route_backward(Tensor dlogits, Tensor dgates, Tensor dscores_extra, Tensor scores, Tensor topk_idx,
                             RouterParams p);
void cuda_moe_balance_loss(Tensor loss, Tensor dscores, Tensor scores, Tensor topk_idx, int B, int T, int top_k,
                           float alpha, float grad_scale);
void cuda_moe_dispatch_plan(Tensor order, Tensor offsets, int32_t *offsets_host, Tensor counts, Tensor topk_idx,
                            int n_experts);
void cuda_moe_gather(Tensor x_sorted, Tensor x, Tensor order, int top_k);
void cuda_moe_gather_backward(Tensor dx, Tensor dx_sorted, Tensor order, int top_k, int accumulate);
void cuda_moe_combine(Tensor out, Tensor y_sorted, Tensor gates, Tensor order, int accumulate);
void cuda_moe_combine_backward(Tensor dy_sorted, Tensor dgates, Tensor dout, Tensor y_sorted, Tensor gates,
                               Tensor order);

double cuda_sum_squares(Tensor x);
void cuda_scale(Tensor x, float alpha);
void cuda_adamw_update(Tensor params, Tensor grads, Tensor m, Tensor v, float lr, float beta1, float beta2, float eps,
                       float wd, float grad_scale, int64_t t);
}

#endif
