// RMSNorm on the GPU: y = x * rstd * w with rstd = 1 / sqrt(mean(x^2) + eps), per row of x (M, d).
// One warp per row (rows are 512..7168 wide: 16..224 elements per lane). Each activation may be F32 or BF16 on its
// own, except that dinp has inp's dtype: the BF16 model normalizes the FP32 residual stream into BF16 outputs, and
// its backward adds a BF16 output gradient into the FP32 residual gradient. The weight may be F32 or BF16; rstd and
// dw are F32. The arithmetic follows the cpu op
// expression by expression; only the order of the row sums differs.
#include "kernels/cuda/cuda_common.cuh"

enum { NORM_WARPS = 8 }; // rows per block

template <typename TI, typename TO, typename TW>
__global__ void rmsnorm_fwd_kernel(TO *out, float *rstd, const TI *inp, const TW *w, int64_t M, int d, float eps) {
    const int lane = threadIdx.x & 31;
    const int64_t row = (int64_t)blockIdx.x * NORM_WARPS + (threadIdx.x >> 5);
    if (row >= M) return;
    const TI *x = inp + row * d;
    TO *y = out + row * d;
    float ss = 0.0f;
    for (int j = lane; j < d; j += 32) {
        float v = to_f(x[j]);
        ss += v * v;
    }
    ss = warp_sum(ss);
    const float rs = 1.0f / sqrtf(ss / (float)d + eps);
    if (lane == 0) rstd[row] = rs;
    // Each lane rewrites only the elements it read, so out may alias inp (when both have one dtype).
    for (int j = lane; j < d; j += 32) y[j] = from_f<TO>(to_f(x[j]) * rs * to_f(w[j]));
}

// dx_j = rstd * (w_j dy_j - x_j * c), c = rstd^2 / d * sum_i w_i dy_i x_i
template <typename T, typename TG, typename TW>
__global__ void rmsnorm_bwd_dx_kernel(T *dinp, const TG *dout, const T *inp, const TW *w, const float *rstd, int64_t M,
                                      int d, int accumulate) {
    const int lane = threadIdx.x & 31;
    const int64_t row = (int64_t)blockIdx.x * NORM_WARPS + (threadIdx.x >> 5);
    if (row >= M) return;
    const T *x = inp + row * d;
    const TG *g = dout + row * d;
    T *dx = dinp + row * d;
    const float rs = rstd[row];
    float dot = 0.0f;
    for (int j = lane; j < d; j += 32) dot += to_f(w[j]) * to_f(g[j]) * to_f(x[j]);
    dot = warp_sum(dot);
    const float c = dot * rs * rs / (float)d;
    for (int j = lane; j < d; j += 32) {
        float v = rs * (to_f(w[j]) * to_f(g[j]) - to_f(x[j]) * c);
        dx[j] = from_f<T>(accumulate ? to_f(dx[j]) + v : v);
    }
}

// dw partial sums: block (column block, row chunk); thread = one column, rows of the chunk summed in order.
// partial (chunks, d). Deterministic: no atomics, fixed chunking.
template <typename T, typename TG>
__global__ void rmsnorm_bwd_dw_partial_kernel(float *partial, const TG *dout, const T *inp, const float *rstd, int64_t M,
                                              int d, int64_t rows_per_chunk) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= d) return;
    const int64_t r0 = (int64_t)blockIdx.y * rows_per_chunk;
    const int64_t r1 = r0 + rows_per_chunk < M ? r0 + rows_per_chunk : M;
    float acc = 0.0f;
    for (int64_t r = r0; r < r1; r++) acc += to_f(dout[r * d + c]) * to_f(inp[r * d + c]) * rstd[r];
    partial[(int64_t)blockIdx.y * d + c] = acc;
}

__global__ void rmsnorm_bwd_dw_final_kernel(float *dw, const float *partial, int d, int chunks) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= d) return;
    float acc = 0.0f;
    for (int k = 0; k < chunks; k++) acc += partial[(int64_t)k * d + c];
    dw[c] += acc;
}

extern "C" void cuda_rmsnorm_forward(Tensor out, Tensor rstd, Tensor inp, Tensor w, float eps) {
    const char *op = "rmsnorm_forward";
    cuda_need_float(op, "out", &out, 0);
    cuda_need_float(op, "inp", &inp, 0);
    cuda_need_float(op, "w", &w, 1);
    cpu_need(op, "rstd", &rstd, DT_F32, 0);
    int64_t M = cpu_rows(&inp), d = cpu_cols(&inp);
    cpu_agree(op, "inp", &inp, d, "w", &w, w.shape[0], "d");
    cpu_agree(op, "out", &out, tensor_numel(&out), "inp", &inp, M * d, "size");
    cpu_expect(op, "rstd", &rstd, tensor_numel(&rstd), M, "size (rows of inp)");
    if (M == 0 || d == 0) return;
    if (d > INT32_MAX) die("%s: row length %lld too large", op, (long long)d);
    unsigned grid = (unsigned)((M + NORM_WARPS - 1) / NORM_WARPS);
    cudaStream_t s = cuda_stream();
    DISPATCH_FLOAT(inp.dtype, TI, DISPATCH_FLOAT(out.dtype, TO, DISPATCH_FLOAT(w.dtype, TW, {
        rmsnorm_fwd_kernel<TI, TO, TW><<<grid, NORM_WARPS * 32, 0, s>>>((TO *)out.data, (float *)rstd.data,
                                                                        (const TI *)inp.data, (const TW *)w.data, M,
                                                                        (int)d, eps);
    })));
    CUDA_LAUNCH_CHECK("rmsnorm_fwd_kernel");
}

extern "C" void cuda_rmsnorm_backward(Tensor dinp, Tensor dw, Tensor dout, Tensor inp, Tensor w, Tensor rstd,
                                      int accumulate_dinp) {
    const char *op = "rmsnorm_backward";
    cuda_need_float(op, "dout", &dout, 0);
    cuda_need_float(op, "inp", &inp, 0);
    cuda_need_float(op, "w", &w, 1);
    cpu_need(op, "rstd", &rstd, DT_F32, 0);
    int64_t M = cpu_rows(&inp), d = cpu_cols(&inp);
    cpu_agree(op, "inp", &inp, d, "w", &w, w.shape[0], "d");
    cpu_agree(op, "dout", &dout, tensor_numel(&dout), "inp", &inp, M * d, "size");
    cpu_expect(op, "rstd", &rstd, tensor_numel(&rstd), M, "size (rows of inp)");
    if (dinp.data) {
        cuda_need_float(op, "dinp", &dinp, 0);
        cuda_same_dtype(op, "dinp", &dinp, "inp", &inp);
        cpu_agree(op, "dinp", &dinp, tensor_numel(&dinp), "inp", &inp, M * d, "size");
    }
    if (dw.data) {
        cpu_need(op, "dw", &dw, DT_F32, 1);
        cpu_agree(op, "dw", &dw, dw.shape[0], "w", &w, d, "d");
    }
    if (M == 0 || d == 0) return;
    if (d > INT32_MAX) die("%s: row length %lld too large", op, (long long)d);
    cudaStream_t s = cuda_stream();
    if (dinp.data) {
        unsigned grid = (unsigned)((M + NORM_WARPS - 1) / NORM_WARPS);
        DISPATCH_FLOAT(inp.dtype, T, DISPATCH_FLOAT(dout.dtype, TG, DISPATCH_FLOAT(w.dtype, TW, {
            rmsnorm_bwd_dx_kernel<T, TG, TW><<<grid, NORM_WARPS * 32, 0, s>>>(
                (T *)dinp.data, (const TG *)dout.data, (const T *)inp.data, (const TW *)w.data,
                (const float *)rstd.data, M, (int)d, accumulate_dinp);
        })));
        CUDA_LAUNCH_CHECK("rmsnorm_bwd_dx_kernel");
    }
    if (dw.data) {
        // Up to 256 row chunks of at least 32 rows: enough blocks to fill the GPU for d >= 1024.
        int64_t rows_per_chunk = (M + 255) / 256;
        if (rows_per_chunk < 32) rows_per_chunk = 32;
        int chunks = (int)((M + rows_per_chunk - 1) / rows_per_chunk);
        float *partial = (float *)cuda_scratch((size_t)chunks * (size_t)d * sizeof(float));
        dim3 grid((unsigned)((d + 127) / 128), (unsigned)chunks);
        DISPATCH_FLOAT(inp.dtype, T, DISPATCH_FLOAT(dout.dtype, TG, {
            rmsnorm_bwd_dw_partial_kernel<T, TG><<<grid, 128, 0, s>>>(partial, (const TG *)dout.data,
                                                                      (const T *)inp.data, (const float *)rstd.data,
                                                                      M, (int)d, rows_per_chunk);
        }));
        CUDA_LAUNCH_CHECK("rmsnorm_bwd_dw_partial_kernel");
        rmsnorm_bwd_dw_final_kernel<<<(unsigned)((d + 127) / 128), 128, 0, s>>>((float *)dw.data, partial, (int)d,
                                                                               chunks);
        CUDA_LAUNCH_CHECK("rmsnorm_bwd_dw_final_kernel");
    }
}
