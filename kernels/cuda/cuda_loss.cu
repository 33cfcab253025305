// Softmax cross-entropy on the GPU, forward and backward in one kernel: one block per row of logits (N, V).
//   losses (N) = logsumexp(row) - row[target];  dlogits (N, V) = grad_scale * (softmax(row) - onehot(target)).
// Three passes over the row (max, sum of exponentials, gradient); dlogits may alias logits because each element is
// read and then written by the same thread in the last pass, after the loss has been computed.
// FP32 logits (the head's output); dlogits F32 (may alias) or BF16 (a separate buffer: the BF16 model feeds it to
// the head's BF16 backward GEMMs). TO REPLACE (issue 5): the head GEMM fused with a vocabulary-chunked softmax.
#include "kernels/cuda/cuda_common.cuh"

#include <math.h>

enum { CE_THREADS = 512 };

// The v2 form (DSV3_MEMOPS, end of file), after the checks; false: not selected or not applicable (v1 runs).
static bool cross_entropy_v2(Tensor losses, Tensor dlogits, Tensor logits, Tensor targets, float grad_scale, int64_t N,
                             int64_t V);

// Block-wide reduction (sum or max) of one float; every thread gets the result. red has >= 32 floats.
template <bool IS_MAX> __device__ float block_reduce(float v, float *red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = IS_MAX ? warp_max(v) : warp_sum(v);
    __syncthreads(); // red may still be read by an earlier call
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float r = lane < nwarps ? red[lane] : (IS_MAX ? -INFINITY : 0.0f);
    return IS_MAX ? warp_max(r) : warp_sum(r);
}

template <typename TD>
__global__ void __launch_bounds__(CE_THREADS)
    cross_entropy_kernel(float *losses, TD *dlogits, const float *logits, const int32_t *targets, int64_t N,
                         int64_t V, float grad_scale, CudaDevError *err) {
    __shared__ float red[32];
    for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
        const float *x = logits + n * V;
        const int32_t tg = targets[n];
        if (tg < 0 || tg >= V) { // uniform across the block
            if (threadIdx.x == 0) dev_error(err, ERR_CE_TARGET, n, tg, V);
            continue;
        }
        float mx = -INFINITY;
        for (int64_t j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, x[j]);
        mx = block_reduce<true>(mx, red);
        float sum = 0.0f;
        for (int64_t j = threadIdx.x; j < V; j += blockDim.x) sum += expf(x[j] - mx);
        sum = block_reduce<false>(sum, red);
        const float lse = mx + logf(sum);
        const float xt = x[tg];
        if (threadIdx.x == 0) losses[n] = lse - xt;
        if (dlogits) {
            __syncthreads(); // x[tg] is read by every thread before any thread may overwrite it (aliasing)
            TD *dn = dlogits + n * V;
            for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
                float g = grad_scale * expf(x[j] - lse);
                dn[j] = from_f<TD>(j == tg ? g - grad_scale : g);
            }
        }
    }
}

extern "C" void cuda_cross_entropy_forward_backward(Tensor losses, Tensor dlogits, Tensor logits, Tensor targets,
                                                    float grad_scale) {
    const char *op = "cross_entropy_forward_backward";
    cpu_need(op, "losses", &losses, DT_F32, 0);
    cpu_need(op, "logits", &logits, DT_F32, 0);
    cpu_need(op, "targets", &targets, DT_I32, 0);
    int64_t N = cpu_rows(&logits), V = cpu_cols(&logits);
    cpu_agree(op, "targets", &targets, tensor_numel(&targets), "logits", &logits, N, "N");
    cpu_agree(op, "losses", &losses, tensor_numel(&losses), "logits", &logits, N, "N");
    if (dlogits.data) {
        cuda_need_float(op, "dlogits", &dlogits, 0);
        if (dlogits.dtype != DT_F32 && (const char *)dlogits.data < (const char *)logits.data + N * V * 4 &&
            (const char *)logits.data < (const char *)dlogits.data + N * V * 2)
            die("%s: BF16 dlogits must not overlap the F32 logits (only F32 dlogits may alias them)", op);
        cpu_agree(op, "dlogits", &dlogits, tensor_numel(&dlogits), "logits", &logits, N * V, "size");
    }
    if (N == 0) return;
    if (V == 0) die("%s: logits have no columns", op);
    if (cross_entropy_v2(losses, dlogits, logits, targets, grad_scale, N, V)) return;
    unsigned grid = (unsigned)(N < 65535 * 16 ? N : 65535 * 16);
    DISPATCH_FLOAT(dlogits.data ? dlogits.dtype : DT_F32, TD, {
        cross_entropy_kernel<TD><<<grid, CE_THREADS, 0, cuda_stream()>>>(
            (float *)losses.data, (TD *)dlogits.data, (const float *)logits.data, (const int32_t *)targets.data, N, V,
            grad_scale, cuda_dev_error());
    });
    CUDA_LAUNCH_CHECK("cross_entropy_kernel");
}

// ---- v2 (DSV3_MEMOPS): one pass for max and sum (online softmax), one for the gradient; float4 loads ----
// v1 reads each row three times (max, sum, gradient); at 2048 rows of 32768 logits the rows in flight do not stay in
// L2, so that is three DRAM reads. v2 folds max and sum into one pass: each thread keeps a running (max, sum) and
// rescales its sum when its max grows; the block merges the pairs. The gradient pass re-reads the row, from L2: the
// grid is two blocks per SM looping over rows (264 rows of 128 KB in flight on an H100, against 50 MB of L2; each
// block keeps 4 float4 loads per thread in flight, enough for the bandwidth). Same formulas as v1; the sum is taken
// in another order (and rescaled):
// the loss agrees with v1 to FP32 rounding, not bit for bit. Rows of V % 4 == 0 with 16-byte aligned logits and
// dlogits; other shapes take v1.
enum { CE_V2_THREADS = 512 };

// s * exp(m - M) for a partial sum s taken against max m, M >= m; an empty partial (m = -inf) contributes 0.
// (s * 0 keeps a NaN sum NaN, as v1's sum over a row with a NaN stays NaN.)
__device__ __forceinline__ float ce_rescale(float s, float m, float M) {
    return m == -INFINITY ? s * 0.0f : s * expf(m - M);
}

// Block-wide merge of (max, sum) pairs; every thread gets the result. red has >= 64 floats.
__device__ void ce_block_merge(float &m, float &s, float *red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    for (int o = 16; o > 0; o >>= 1) {
        const float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
        const float M = fmaxf(m, m2);
        s = ce_rescale(s, m, M) + ce_rescale(s2, m2, M);
        m = M;
    }
    __syncthreads(); // red may still be read by the previous row
    if (lane == 0) red[warp] = m, red[32 + warp] = s;
    __syncthreads();
    m = lane < nwarps ? red[lane] : -INFINITY;
    s = lane < nwarps ? red[32 + lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) {
        const float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
        const float M = fmaxf(m, m2);
        s = ce_rescale(s, m, M) + ce_rescale(s2, m2, M);
        m = M;
    }
}

template <typename TD>
__global__ void __launch_bounds__(CE_V2_THREADS)
    cross_entropy_v2_kernel(float *losses, TD *dlogits, const float *logits, const int32_t *targets, int64_t N,
                            int64_t V, float grad_scale, CudaDevError *err) {
    __shared__ float red[64];
    const int64_t V4 = V / 4;
    for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
        const float4 *x4 = (const float4 *)(logits + n * V);
        const int32_t tg = targets[n];
        if (tg < 0 || tg >= V) { // uniform across the block
            if (threadIdx.x == 0) dev_error(err, ERR_CE_TARGET, n, tg, V);
            continue;
        }
        float m = -INFINITY, s = 0.0f;
        for (int64_t j = threadIdx.x; j < V4; j += 4 * (int64_t)blockDim.x) { // four float4 loads in flight
            float4 q[4];
#pragma unroll
            for (int b = 0; b < 4; b++)
                if (j + b * (int64_t)blockDim.x < V4) q[b] = x4[j + b * (int64_t)blockDim.x];
#pragma unroll
            for (int b = 0; b < 4; b++) {
                if (j + b * (int64_t)blockDim.x >= V4) break;
                const float v[4] = {q[b].x, q[b].y, q[b].z, q[b].w};
                float bm = fmaxf(fmaxf(v[0], v[1]), fmaxf(v[2], v[3])); // NaNs are dropped by fmaxf, as in v1
                if (bm > m) s = ce_rescale(s, m, bm), m = bm;
                if (m != -INFINITY)
#pragma unroll
                    for (int e = 0; e < 4; e++) s += expf(v[e] - m);
                else // every value so far is -inf (or NaN): only a NaN contributes (NaN), as in v1's sum
#pragma unroll
                    for (int e = 0; e < 4; e++)
                        if (isnan(v[e])) s += v[e];
            }
        }
        ce_block_merge(m, s, red);
        const float lse = m + logf(s);
        const float xt = logits[n * V + tg];
        if (threadIdx.x == 0) losses[n] = lse - xt;
        if (dlogits) {
            __syncthreads(); // x[tg] is read by every thread before any thread may overwrite it (aliasing)
            TD *dn = dlogits + n * V;
            for (int64_t j = threadIdx.x; j < V4; j += blockDim.x) {
                const float4 q = x4[j];
                const float v[4] = {q.x, q.y, q.z, q.w};
                float o[4];
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const float g = grad_scale * expf(v[e] - lse);
                    o[e] = 4 * j + e == tg ? g - grad_scale : g;
                }
                if constexpr (sizeof(TD) == 4) {
                    ((float4 *)dn)[j] = make_float4(o[0], o[1], o[2], o[3]);
                } else {
                    uint2 u;
                    u.x = bf16x2_pack(o[0], o[1]), u.y = bf16x2_pack(o[2], o[3]);
                    ((uint2 *)dn)[j] = u;
                }
            }
        }
    }
}

static bool cross_entropy_v2(Tensor losses, Tensor dlogits, Tensor logits, Tensor targets, float grad_scale, int64_t N,
                             int64_t V) {
    // BF16 dlogits are written 4 at a time (8 bytes): 8-byte alignment suffices for them
    if (!cuda_memops_v2("cross_entropy_forward_backward") || V % 4 || (uintptr_t)logits.data % 16 ||
        (dlogits.data && (uintptr_t)dlogits.data % (dlogits.dtype == DT_F32 ? 16 : 8)))
        return false;
    const int sms = cuda_sm_count();
    const unsigned grid = (unsigned)(N < 2 * sms ? N : 2 * sms);
    DISPATCH_FLOAT(dlogits.data ? dlogits.dtype : DT_F32, TD, {
        cross_entropy_v2_kernel<TD><<<grid, CE_V2_THREADS, 0, cuda_stream()>>>(
            (float *)losses.data, (TD *)dlogits.data, (const float *)logits.data, (const int32_t *)targets.data, N, V,
            grad_scale, cuda_dev_error());
    });
    CUDA_LAUNCH_CHECK("cross_entropy_v2_kernel");
    return true;
}
