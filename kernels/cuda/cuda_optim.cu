// Optimizer ops on the GPU: the sum of squares for the global gradient norm, scaling, and AdamW with BF16 moments.
// sum_squares is deterministic (a fixed grid of fixed partitions, partial sums added in block order). adamw_update
// repeats the cpu op's arithmetic operation by operation with explicitly rounded FP32 operations (no fused
// multiply-add) and round-to-nearest-even BF16 moments, so it gives the cpu's bits (NaN payloads aside).
#include "kernels/cuda/cuda_common.cuh"

#include <math.h>

enum { SS_BLOCKS = 1024, SS_THREADS = 256 };

__global__ void __launch_bounds__(SS_THREADS) sum_squares_kernel(double *partial, const float *x, int64_t n) {
    __shared__ double red[SS_THREADS / 32];
    double acc = 0.0;
    for (int64_t i = (int64_t)blockIdx.x * SS_THREADS + threadIdx.x; i < n; i += (int64_t)SS_BLOCKS * SS_THREADS)
        acc += (double)x[i] * x[i];
    acc = warp_sum_d(acc);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = acc;
    __syncthreads();
    if (threadIdx.x == 0) {
        double t = 0.0;
        for (int w = 0; w < SS_THREADS / 32; w++) t += red[w];
        partial[blockIdx.x] = t;
    }
}

__global__ void sum_partials_kernel(double *out, const double *partial, int n) {
    double t = 0.0;
    for (int i = 0; i < n; i++) t += partial[i];
    *out = t;
}

extern "C" double cuda_sum_squares(Tensor x) {
    cpu_need("sum_squares", "x", &x, DT_F32, 0);
    const int64_t n = tensor_numel(&x);
    double *scr = (double *)cuda_scratch((SS_BLOCKS + 1) * sizeof(double));
    cudaStream_t s = cuda_stream();
    sum_squares_kernel<<<SS_BLOCKS, SS_THREADS, 0, s>>>(scr, (const float *)x.data, n);
    CUDA_LAUNCH_CHECK("sum_squares_kernel");
    sum_partials_kernel<<<1, 1, 0, s>>>(scr + SS_BLOCKS, scr, SS_BLOCKS);
    CUDA_LAUNCH_CHECK("sum_partials_kernel");
    double total = 0.0;
    CUDA_CHECK(cudaMemcpyAsync(&total, scr + SS_BLOCKS, sizeof total, cudaMemcpyDeviceToHost, s));
    cuda_sync_and_check();
    return total;
}

__global__ void scale_kernel(float *x, float alpha, int64_t n) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        x[i] = __fmul_rn(x[i], alpha);
}

extern "C" void cuda_scale(Tensor x, float alpha) {
    cpu_need("scale", "x", &x, DT_F32, 0);
    const int64_t n = tensor_numel(&x);
    if (n == 0) return;
    scale_kernel<<<cuda_grid(n, 256), 256, 0, cuda_stream()>>>((float *)x.data, alpha, n);
    CUDA_LAUNCH_CHECK("scale_kernel");
}

// The step constants are computed on the host exactly as the cpu op computes them.
struct AdamConsts {
    float beta1, beta2, one_minus_beta1, one_minus_beta2, eps, grad_scale, step, sqrt_bc2, decay;
};

__global__ void adamw_kernel(float *p, const float *g, bf16 *m, bf16 *v, AdamConsts c, int64_t n) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const float gi = __fmul_rn(g[i], c.grad_scale);
        const float mn = __fadd_rn(__fmul_rn(c.beta1, __bfloat162float(m[i])), __fmul_rn(c.one_minus_beta1, gi));
        const float vn = __fadd_rn(__fmul_rn(c.beta2, __bfloat162float(v[i])),
                                   __fmul_rn(__fmul_rn(c.one_minus_beta2, gi), gi));
        const bf16 mb = __float2bfloat16_rn(mn), vb = __float2bfloat16_rn(vn);
        m[i] = mb;
        v[i] = vb;
        const float mi = __bfloat162float(mb), vi = __bfloat162float(vb);
        const float den = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), c.sqrt_bc2), c.eps);
        p[i] = __fsub_rn(__fmul_rn(p[i], c.decay), __fdiv_rn(__fmul_rn(c.step, mi), den));
    }
}

extern "C" void cuda_adamw_update(Tensor params, Tensor grads, Tensor m, Tensor v, float lr, float beta1, float beta2,
                                  float eps, float wd, float grad_scale, int64_t t) {
    const char *op = "adamw_update";
    cpu_need(op, "params", &params, DT_F32, 0);
    cpu_need(op, "grads", &grads, DT_F32, 0);
    cpu_need(op, "m", &m, DT_BF16, 0);
    cpu_need(op, "v", &v, DT_BF16, 0);
    const int64_t n = tensor_numel(&params);
    cpu_agree(op, "grads", &grads, tensor_numel(&grads), "params", &params, n, "size");
    cpu_agree(op, "m", &m, tensor_numel(&m), "params", &params, n, "size");
    cpu_agree(op, "v", &v, tensor_numel(&v), "params", &params, n, "size");
    if (t < 1) die("%s: step t = %lld, expected >= 1 (bias correction)", op, (long long)t);
    if (n == 0) return;
    const float bc1 = 1.0f - powf(beta1, (float)t), bc2 = 1.0f - powf(beta2, (float)t);
    AdamConsts c;
    c.beta1 = beta1, c.beta2 = beta2, c.one_minus_beta1 = 1.0f - beta1, c.one_minus_beta2 = 1.0f - beta2;
    c.eps = eps, c.grad_scale = grad_scale, c.step = lr / bc1, c.sqrt_bc2 = sqrtf(bc2), c.decay = 1.0f - lr * wd;
    adamw_kernel<<<cuda_grid(n, 256), 256, 0, cuda_stream()>>>((float *)params.data, (const float *)grads.data,
                                                               (bf16 *)m.data, (bf16 *)v.data, c, n);
    CUDA_LAUNCH_CHECK("adamw_kernel");
}
