// Elementwise ops on the GPU: SwiGLU, axpy, and the column-block copy used for splits and concatenations.
// Tensors of one op share a dtype (F32 or BF16); math in FP32. Grid-stride loops over 64-bit indices.
// axpy and copy_cols use explicitly rounded multiply and add (__fmul_rn/__fadd_rn), so no fused multiply-add changes
// the result: in FP32 they give the cpu op's bits exactly.
#include "kernels/cuda/cuda_common.cuh"

enum { EW_THREADS = 256 };

template <typename T> __global__ void swiglu_fwd_kernel(T *out, const T *gate, const T *up, int64_t n) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float g = to_f(gate[i]), u = to_f(up[i]);
        float s = 1.0f / (1.0f + expf(-g));
        out[i] = from_f<T>(g * s * u);
    }
}

// d/dg [g s(g)] = s + g s (1 - s)
template <typename T>
__global__ void swiglu_bwd_kernel(T *dgate, T *dup, const T *dout, const T *gate, const T *up, int64_t n) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float g = to_f(gate[i]), u = to_f(up[i]), dy = to_f(dout[i]);
        float s = 1.0f / (1.0f + expf(-g));
        float dg = dy * u * (s + g * s * (1.0f - s)), du = dy * g * s;
        // dgate/dup may alias gate/up (each element is read before it is written, by the same thread).
        dgate[i] = from_f<T>(dg);
        dup[i] = from_f<T>(du);
    }
}

template <typename T> __global__ void axpy_kernel(T *y, const T *x, float alpha, int64_t n) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        y[i] = from_f<T>(__fadd_rn(to_f(y[i]), __fmul_rn(alpha, to_f(x[i]))));
}

template <typename T>
__global__ void copy_cols_kernel(T *dst, int64_t dcols, int64_t dst_col, const T *src, int64_t scols, int64_t src_col,
                                 int64_t rows, int64_t ncols, int accumulate) {
    const int64_t n = rows * ncols;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = i / ncols, j = i % ncols;
        T *d = dst + r * dcols + dst_col + j;
        float v = to_f(src[r * scols + src_col + j]);
        *d = from_f<T>(accumulate ? __fadd_rn(to_f(*d), v) : v);
    }
}

extern "C" void cuda_swiglu_forward(Tensor out, Tensor gate, Tensor up) {
    const char *op = "swiglu_forward";
    cuda_need_float(op, "out", &out, 0);
    cuda_need_float(op, "gate", &gate, 0);
    cuda_need_float(op, "up", &up, 0);
    cuda_same_dtype(op, "out", &out, "gate", &gate);
    cuda_same_dtype(op, "up", &up, "gate", &gate);
    int64_t n = tensor_numel(&gate);
    cpu_agree(op, "gate", &gate, n, "up", &up, tensor_numel(&up), "size");
    cpu_agree(op, "out", &out, tensor_numel(&out), "gate", &gate, n, "size");
    if (n == 0) return;
    cudaStream_t s = cuda_stream();
    DISPATCH_FLOAT(gate.dtype, T, {
        swiglu_fwd_kernel<T><<<cuda_grid(n, EW_THREADS), EW_THREADS, 0, s>>>((T *)out.data, (const T *)gate.data,
                                                                            (const T *)up.data, n);
    });
    CUDA_LAUNCH_CHECK("swiglu_fwd_kernel");
}

extern "C" void cuda_swiglu_backward(Tensor dgate, Tensor dup, Tensor dout, Tensor gate, Tensor up) {
    const char *op = "swiglu_backward";
    cuda_need_float(op, "dgate", &dgate, 0);
    cuda_need_float(op, "dup", &dup, 0);
    cuda_need_float(op, "dout", &dout, 0);
    cuda_need_float(op, "gate", &gate, 0);
    cuda_need_float(op, "up", &up, 0);
    cuda_same_dtype(op, "dgate", &dgate, "gate", &gate);
    cuda_same_dtype(op, "dup", &dup, "gate", &gate);
    cuda_same_dtype(op, "dout", &dout, "gate", &gate);
    cuda_same_dtype(op, "up", &up, "gate", &gate);
    int64_t n = tensor_numel(&gate);
    cpu_agree(op, "gate", &gate, n, "up", &up, tensor_numel(&up), "size");
    cpu_agree(op, "dout", &dout, tensor_numel(&dout), "gate", &gate, n, "size");
    cpu_agree(op, "dgate", &dgate, tensor_numel(&dgate), "gate", &gate, n, "size");
    cpu_agree(op, "dup", &dup, tensor_numel(&dup), "up", &up, n, "size");
    if (n == 0) return;
    cudaStream_t s = cuda_stream();
    DISPATCH_FLOAT(gate.dtype, T, {
        swiglu_bwd_kernel<T><<<cuda_grid(n, EW_THREADS), EW_THREADS, 0, s>>>(
            (T *)dgate.data, (T *)dup.data, (const T *)dout.data, (const T *)gate.data, (const T *)up.data, n);
    });
    CUDA_LAUNCH_CHECK("swiglu_bwd_kernel");
}

extern "C" void cuda_axpy(Tensor y, Tensor x, float alpha) {
    const char *op = "axpy";
    cuda_need_float(op, "y", &y, 0);
    cuda_need_float(op, "x", &x, 0);
    cuda_same_dtype(op, "y", &y, "x", &x);
    int64_t n = tensor_numel(&y);
    cpu_agree(op, "y", &y, n, "x", &x, tensor_numel(&x), "size");
    if (n == 0) return;
    cudaStream_t s = cuda_stream();
    DISPATCH_FLOAT(y.dtype, T, {
        axpy_kernel<T><<<cuda_grid(n, EW_THREADS), EW_THREADS, 0, s>>>((T *)y.data, (const T *)x.data, alpha, n);
    });
    CUDA_LAUNCH_CHECK("axpy_kernel");
}

extern "C" void cuda_copy_cols(Tensor dst, int64_t dst_col, Tensor src, int64_t src_col, int64_t ncols,
                               int accumulate) {
    const char *op = "copy_cols";
    cuda_need_float(op, "dst", &dst, 0);
    cuda_need_float(op, "src", &src, 0);
    cuda_same_dtype(op, "dst", &dst, "src", &src);
    int64_t R = cpu_rows(&dst), dc = cpu_cols(&dst), sc = cpu_cols(&src);
    cpu_agree(op, "dst", &dst, R, "src", &src, cpu_rows(&src), "rows");
    if (ncols < 0 || dst_col < 0 || src_col < 0 || dst_col + ncols > dc || src_col + ncols > sc)
        die("%s: columns out of range: dst [%lld, %lld) of %lld, src [%lld, %lld) of %lld", op, (long long)dst_col,
            (long long)(dst_col + ncols), (long long)dc, (long long)src_col, (long long)(src_col + ncols),
            (long long)sc);
    if (R == 0 || ncols == 0) return;
    cudaStream_t s = cuda_stream();
    DISPATCH_FLOAT(dst.dtype, T, {
        copy_cols_kernel<T><<<cuda_grid(R * ncols, EW_THREADS), EW_THREADS, 0, s>>>(
            (T *)dst.data, dc, dst_col, (const T *)src.data, sc, src_col, R, ncols, accumulate);
    });
    CUDA_LAUNCH_CHECK("copy_cols_kernel");
}

template <typename TD, typename TS> __global__ void convert_kernel(TD *dst, const TS *src, int64_t n) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = from_f<TD>(to_f(src[i]));
}

// dst = src between F32 and BF16 (__float2bfloat16_rn: round to nearest even, as the cpu's bf16_from_f32).
extern "C" void cuda_convert(Tensor dst, Tensor src) {
    const char *op = "convert";
    cuda_need_float(op, "dst", &dst, 0);
    cuda_need_float(op, "src", &src, 0);
    int64_t n = tensor_numel(&src);
    cpu_agree(op, "dst", &dst, tensor_numel(&dst), "src", &src, n, "size");
    if (n == 0) return;
    cudaStream_t s = cuda_stream();
    DISPATCH_FLOAT(dst.dtype, TD, DISPATCH_FLOAT(src.dtype, TS, {
        convert_kernel<TD, TS><<<cuda_grid(n, EW_THREADS), EW_THREADS, 0, s>>>((TD *)dst.data, (const TS *)src.data,
                                                                              n);
    }));
    CUDA_LAUNCH_CHECK("convert_kernel");
}
