// Softmax cross-entropy on the GPU, forward and backward in one kernel: one block per row of logits (N, V).
//   losses (N) = logsumexp(row) - row[target];  dlogits (N, V) = grad_scale * (softmax(row) - onehot(target)).
// Three passes over the row (max, sum of exponentials, gradient); dlogits may alias logits because each element is
// read and then written by the same thread in the last pass, after the loss has been computed.
// FP32 logits (the head's output); dlogits F32 (may alias) or BF16 (a separate buffer: the BF16 model feeds it to
// the head's BF16 backward GEMMs). TO REPLACE (issue 5): the head GEMM fused with a vocabulary-chunked softmax.
#include "kernels/cuda/cuda_common.cuh"

#include <math.h>

enum { CE_THREADS = 512 };

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
    unsigned grid = (unsigned)(N < 65535 * 16 ? N : 65535 * 16);
    DISPATCH_FLOAT(dlogits.data ? dlogits.dtype : DT_F32, TD, {
        cross_entropy_kernel<TD><<<grid, CE_THREADS, 0, cuda_stream()>>>(
            (float *)losses.data, (TD *)dlogits.data, (const float *)logits.data, (const int32_t *)targets.data, N, V,
            grad_scale, cuda_dev_error());
    });
    CUDA_LAUNCH_CHECK("cross_entropy_kernel");
}
