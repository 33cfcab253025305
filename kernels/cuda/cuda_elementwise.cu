// Elementwise ops on the GPU: SwiGLU, axpy, and the column-block copy used for splits and concatenations.
// Tensors of one op share a dtype (F32 or BF16); math in FP32. Grid-stride loops over 64-bit indices.
// axpy and copy_cols use explicitly rounded multiply and add (__fmul_rn/__fadd_rn), so no fused multiply-add changes
// the result: in FP32 they give the cpu op's bits exactly. Also here: the DSV3_MEMOPS switch between the first
// memory-bound kernels (v1) and the 16-byte-vector ones (v2; cuda_common.cuh), and the v2 forms of these ops.
#include "kernels/cuda/cuda_common.cuh"

#include <stdlib.h>
#include <string.h>

enum { EW_THREADS = 256 };

// The v2 forms (DSV3_MEMOPS, end of file): each returns false, having done nothing, where it is not selected or its
// 16-byte form does not apply; the v1 kernel then runs.
static bool swiglu_fwd_v2(Tensor out, Tensor gate, Tensor up, int64_t n);
static bool swiglu_bwd_v2(Tensor dgate, Tensor dup, Tensor dout, Tensor gate, Tensor up, int64_t n);
static bool axpy_v2(Tensor y, Tensor x, float alpha, int64_t n);
static bool convert_v2(Tensor dst, Tensor src, int64_t n);
static bool copy_cols_v2(Tensor dst, int64_t dc, int64_t dst_col, Tensor src, int64_t sc, int64_t src_col, int64_t R,
                         int64_t ncols, int accumulate);

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
    if (n == 0 || swiglu_fwd_v2(out, gate, up, n)) return;
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
    if (n == 0 || swiglu_bwd_v2(dgate, dup, dout, gate, up, n)) return;
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
    if (n == 0 || axpy_v2(y, x, alpha, n)) return;
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
    if (R == 0 || ncols == 0 || copy_cols_v2(dst, dc, dst_col, src, sc, src_col, R, ncols, accumulate)) return;
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
    if (n == 0 || convert_v2(dst, src, n)) return;
    cudaStream_t s = cuda_stream();
    DISPATCH_FLOAT(dst.dtype, TD, DISPATCH_FLOAT(src.dtype, TS, {
        convert_kernel<TD, TS><<<cuda_grid(n, EW_THREADS), EW_THREADS, 0, s>>>((TD *)dst.data, (const TS *)src.data,
                                                                              n);
    }));
    CUDA_LAUNCH_CHECK("convert_kernel");
}

// ---- DSV3_MEMOPS (see cuda_common.cuh) ----

// The ops that have a v2 kernel; DSV3_MEMOPS names them.
static const char *const MEMOPS_V2[] = {"embedding_forward", "embedding_backward", "moe_gather", "moe_gather_backward",
                                        "moe_combine", "moe_combine_backward", "rmsnorm_forward", "rmsnorm_backward",
                                        "swiglu_forward", "swiglu_backward", "axpy", "copy_cols", "convert",
                                        "rope_apply", "mla_kv_assemble", "mla_kv_assemble_backward",
                                        "cross_entropy_forward_backward", "moe_balance_loss"};

// What an unset or empty DSV3_MEMOPS means: v2 (every v2 kernel passed tests/gpu on an H100 on 2026-11-23; the first
// sixteen ops took bench-1gpu from 75.7K to 84.4K tokens/s with the same losses to 4-5 digits).
static const char *const MEMOPS_DEFAULT = "v2";

bool cuda_memops_v2(const char *op) {
    const char *e = getenv("DSV3_MEMOPS");
    if (!e || !*e) e = MEMOPS_DEFAULT;
    if (!strcmp(e, "v1")) return false;
    if (!strcmp(e, "v2")) return true;
    bool hit = false;
    for (const char *p = e;;) {
        const char *q = strchr(p, ',');
        const size_t len = q ? (size_t)(q - p) : strlen(p);
        bool known = false;
        for (size_t i = 0; i < sizeof MEMOPS_V2 / sizeof MEMOPS_V2[0]; i++)
            if (strlen(MEMOPS_V2[i]) == len && !strncmp(MEMOPS_V2[i], p, len)) known = true;
        if (!known) {
            char names[512] = "";
            for (size_t i = 0; i < sizeof MEMOPS_V2 / sizeof MEMOPS_V2[0]; i++)
                snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", i ? ", " : "", MEMOPS_V2[i]);
            die("DSV3_MEMOPS=%s: unknown op '%.*s' (expected v1, v2 or a comma-separated list of: %s)", e, (int)len, p,
                names);
        }
        if (strlen(op) == len && !strncmp(op, p, len)) hit = true;
        if (!q) break;
        p = q + 1;
    }
    return hit;
}

// ---- v2 kernels: 8 elements (16 bytes of BF16, 32 of F32) per thread and step; the n % 8 tail element-wise ----
// The arithmetic is the v1 kernels', expression by expression.

template <typename T> __global__ void swiglu_fwd_v2_kernel(T *out, const T *gate, const T *up, int64_t n) {
    const int64_t n8 = n / 8, stride = (int64_t)gridDim.x * blockDim.x, tid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    for (int64_t i = tid; i < n8; i += stride) {
        float g[8], u[8], o[8];
        ld8(gate + 8 * i, g);
        ld8(up + 8 * i, u);
#pragma unroll
        for (int e = 0; e < 8; e++) {
            float s = 1.0f / (1.0f + expf(-g[e]));
            o[e] = g[e] * s * u[e];
        }
        st8(out + 8 * i, o);
    }
    for (int64_t i = 8 * n8 + tid; i < n; i += stride) {
        float g = to_f(gate[i]), u = to_f(up[i]);
        float s = 1.0f / (1.0f + expf(-g));
        out[i] = from_f<T>(g * s * u);
    }
}

template <typename T>
__global__ void swiglu_bwd_v2_kernel(T *dgate, T *dup, const T *dout, const T *gate, const T *up, int64_t n) {
    const int64_t n8 = n / 8, stride = (int64_t)gridDim.x * blockDim.x, tid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    for (int64_t i = tid; i < n8; i += stride) {
        float g[8], u[8], dy[8], dg[8], du[8];
        ld8(gate + 8 * i, g);
        ld8(up + 8 * i, u);
        ld8(dout + 8 * i, dy);
#pragma unroll
        for (int e = 0; e < 8; e++) {
            float s = 1.0f / (1.0f + expf(-g[e]));
            dg[e] = dy[e] * u[e] * (s + g[e] * s * (1.0f - s));
            du[e] = dy[e] * g[e] * s;
        }
        // dgate/dup may alias gate/up: this thread read its 8 elements above.
        st8(dgate + 8 * i, dg);
        st8(dup + 8 * i, du);
    }
    for (int64_t i = 8 * n8 + tid; i < n; i += stride) {
        float g = to_f(gate[i]), u = to_f(up[i]), dy = to_f(dout[i]);
        float s = 1.0f / (1.0f + expf(-g));
        float dg = dy * u * (s + g * s * (1.0f - s)), du = dy * g * s;
        dgate[i] = from_f<T>(dg);
        dup[i] = from_f<T>(du);
    }
}

template <typename T> __global__ void axpy_v2_kernel(T *y, const T *x, float alpha, int64_t n) {
    const int64_t n8 = n / 8, stride = (int64_t)gridDim.x * blockDim.x, tid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    for (int64_t i = tid; i < n8; i += stride) {
        float a[8], b[8];
        ld8(y + 8 * i, a);
        ld8(x + 8 * i, b);
#pragma unroll
        for (int e = 0; e < 8; e++) a[e] = __fadd_rn(a[e], __fmul_rn(alpha, b[e]));
        st8(y + 8 * i, a);
    }
    for (int64_t i = 8 * n8 + tid; i < n; i += stride) y[i] = from_f<T>(__fadd_rn(to_f(y[i]), __fmul_rn(alpha, to_f(x[i]))));
}

template <typename TD, typename TS> __global__ void convert_v2_kernel(TD *dst, const TS *src, int64_t n) {
    const int64_t n8 = n / 8, stride = (int64_t)gridDim.x * blockDim.x, tid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    for (int64_t i = tid; i < n8; i += stride) {
        float a[8];
        ld8(src + 8 * i, a);
        st8(dst + 8 * i, a);
    }
    for (int64_t i = 8 * n8 + tid; i < n; i += stride) dst[i] = from_f<TD>(to_f(src[i]));
}

// One thread per 8-column unit of the block: i = r * units + c (32-bit: the caller checks rows * units < 2^31).
template <typename T>
__global__ void copy_cols_v2_kernel(T *dst, int64_t dcols, const T *src, int64_t scols, unsigned rows, unsigned units,
                                    int accumulate) {
    const unsigned total = rows * units;
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        const unsigned r = i / units, c = i - r * units;
        T *d = dst + (int64_t)r * dcols + 8 * c;
        float v[8];
        ld8(src + (int64_t)r * scols + 8 * c, v);
        if (accumulate) {
            float o[8];
            ld8(d, o);
#pragma unroll
            for (int e = 0; e < 8; e++) v[e] = __fadd_rn(o[e], v[e]);
        }
        st8(d, v);
    }
}

// The v2 launches; each returns false (nothing done) where its 16-byte form does not apply.
static unsigned ew_grid8(int64_t n) { return cuda_grid(n / 8 > 0 ? n / 8 : 1, EW_THREADS); }

static bool swiglu_fwd_v2(Tensor out, Tensor gate, Tensor up, int64_t n) {
    if (!cuda_memops_v2("swiglu_forward") || !cuda_vec8_ok(0, out.data, gate.data, up.data)) return false;
    DISPATCH_FLOAT(gate.dtype, T, {
        swiglu_fwd_v2_kernel<T><<<ew_grid8(n), EW_THREADS, 0, cuda_stream()>>>((T *)out.data, (const T *)gate.data,
                                                                              (const T *)up.data, n);
    });
    CUDA_LAUNCH_CHECK("swiglu_fwd_v2_kernel");
    return true;
}

static bool swiglu_bwd_v2(Tensor dgate, Tensor dup, Tensor dout, Tensor gate, Tensor up, int64_t n) {
    if (!cuda_memops_v2("swiglu_backward") || !cuda_vec8_ok(0, dgate.data, dup.data, dout.data, gate.data, up.data))
        return false;
    DISPATCH_FLOAT(gate.dtype, T, {
        swiglu_bwd_v2_kernel<T><<<ew_grid8(n), EW_THREADS, 0, cuda_stream()>>>(
            (T *)dgate.data, (T *)dup.data, (const T *)dout.data, (const T *)gate.data, (const T *)up.data, n);
    });
    CUDA_LAUNCH_CHECK("swiglu_bwd_v2_kernel");
    return true;
}

static bool axpy_v2(Tensor y, Tensor x, float alpha, int64_t n) {
    if (!cuda_memops_v2("axpy") || !cuda_vec8_ok(0, y.data, x.data)) return false;
    DISPATCH_FLOAT(y.dtype, T, {
        axpy_v2_kernel<T><<<ew_grid8(n), EW_THREADS, 0, cuda_stream()>>>((T *)y.data, (const T *)x.data, alpha, n);
    });
    CUDA_LAUNCH_CHECK("axpy_v2_kernel");
    return true;
}

static bool convert_v2(Tensor dst, Tensor src, int64_t n) {
    if (!cuda_memops_v2("convert") || !cuda_vec8_ok(0, dst.data, src.data)) return false;
    DISPATCH_FLOAT(dst.dtype, TD, DISPATCH_FLOAT(src.dtype, TS, {
        convert_v2_kernel<TD, TS><<<ew_grid8(n), EW_THREADS, 0, cuda_stream()>>>((TD *)dst.data, (const TS *)src.data, n);
    }));
    CUDA_LAUNCH_CHECK("convert_v2_kernel");
    return true;
}

static bool copy_cols_v2(Tensor dst, int64_t dc, int64_t dst_col, Tensor src, int64_t sc, int64_t src_col, int64_t R,
                         int64_t ncols, int accumulate) {
    if (!cuda_memops_v2("copy_cols")) return false;
    const size_t es = dtype_size(dst.dtype);
    const char *d0 = (const char *)dst.data + dst_col * es, *s0 = (const char *)src.data + src_col * es;
    // 16-byte units in every row: aligned block starts, widths and row pitches that are multiples of 8 elements
    if (!cuda_vec8_ok(ncols, d0, s0) || dc % 8 || sc % 8 || R * (ncols / 8) > INT32_MAX) return false;
    const unsigned units = (unsigned)(ncols / 8);
    DISPATCH_FLOAT(dst.dtype, T, {
        copy_cols_v2_kernel<T><<<cuda_grid(R * units, EW_THREADS), EW_THREADS, 0, cuda_stream()>>>(
            (T *)d0, dc, (const T *)s0, sc, (unsigned)R, units, accumulate);
    });
    CUDA_LAUNCH_CHECK("copy_cols_v2_kernel");
    return true;
}
