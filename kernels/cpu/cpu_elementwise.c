// Elementwise ops on the cpu: SwiGLU, axpy, and the column-block copy used for splits and concatenations.
#include "kernels/cpu/cpu_ops.h"
#include "train/check.h"

#include <math.h>

// out (M, I) = silu(gate) * up,  silu(g) = g * sigmoid(g)
void cpu_swiglu_forward(Tensor out, Tensor gate, Tensor up) {
    const char *op = "swiglu_forward";
    cpu_need(op, "out", &out, DT_F32, 0);
    cpu_need(op, "gate", &gate, DT_F32, 0);
    cpu_need(op, "up", &up, DT_F32, 0);
    int64_t n = tensor_numel(&gate);
    cpu_agree(op, "gate", &gate, n, "up", &up, tensor_numel(&up), "size");
    cpu_agree(op, "out", &out, tensor_numel(&out), "gate", &gate, n, "size");
    const float *g = gate.data, *u = up.data;
    float *y = out.data;
#pragma omp parallel for simd schedule(static) if (n > CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        float s = 1.0f / (1.0f + expf(-g[i]));
        y[i] = g[i] * s * u[i];
    }
}

// d/dg [g s(g)] = s + g s (1 - s)
void cpu_swiglu_backward(Tensor dgate, Tensor dup, Tensor dout, Tensor gate, Tensor up) {
    const char *op = "swiglu_backward";
    cpu_need(op, "dgate", &dgate, DT_F32, 0);
    cpu_need(op, "dup", &dup, DT_F32, 0);
    cpu_need(op, "dout", &dout, DT_F32, 0);
    cpu_need(op, "gate", &gate, DT_F32, 0);
    cpu_need(op, "up", &up, DT_F32, 0);
    int64_t n = tensor_numel(&gate);
    cpu_agree(op, "gate", &gate, n, "up", &up, tensor_numel(&up), "size");
    cpu_agree(op, "dout", &dout, tensor_numel(&dout), "gate", &gate, n, "size");
    cpu_agree(op, "dgate", &dgate, tensor_numel(&dgate), "gate", &gate, n, "size");
    cpu_agree(op, "dup", &dup, tensor_numel(&dup), "up", &up, n, "size");
    const float *g = gate.data, *u = up.data, *dy = dout.data;
    float *dg = dgate.data, *du = dup.data;
#pragma omp parallel for simd schedule(static) if (n > CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        float s = 1.0f / (1.0f + expf(-g[i]));
        float gi = g[i], dyi = dy[i];
        dg[i] = dyi * u[i] * (s + gi * s * (1.0f - s));
        du[i] = dyi * gi * s;
    }
}

// y += alpha * x; the shapes may differ as views as long as the element counts agree.
void cpu_axpy(Tensor y, Tensor x, float alpha) {
    const char *op = "axpy";
    cpu_need(op, "y", &y, DT_F32, 0);
    cpu_need(op, "x", &x, DT_F32, 0);
    int64_t n = tensor_numel(&y);
    cpu_agree(op, "y", &y, n, "x", &x, tensor_numel(&x), "size");
    float *yd = y.data;
    const float *xd = x.data;
#pragma omp parallel for simd schedule(static) if (n > CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++) yd[i] += alpha * xd[i];
}

// dst[:, dst_col : dst_col + ncols] (+)= src[:, src_col : src_col + ncols]; rows = product of leading dimensions.
void cpu_copy_cols(Tensor dst, int64_t dst_col, Tensor src, int64_t src_col, int64_t ncols, int accumulate) {
    const char *op = "copy_cols";
    cpu_need(op, "dst", &dst, DT_F32, 0);
    cpu_need(op, "src", &src, DT_F32, 0);
    int64_t R = cpu_rows(&dst), dc = cpu_cols(&dst), sc = cpu_cols(&src);
    cpu_agree(op, "dst", &dst, R, "src", &src, cpu_rows(&src), "rows");
    if (ncols < 0 || dst_col < 0 || src_col < 0 || dst_col + ncols > dc || src_col + ncols > sc)
        die("%s: columns out of range: dst [%lld, %lld) of %lld, src [%lld, %lld) of %lld", op, (long long)dst_col,
            (long long)(dst_col + ncols), (long long)dc, (long long)src_col, (long long)(src_col + ncols),
            (long long)sc);
    float *d = dst.data;
    const float *s = src.data;
#pragma omp parallel for schedule(static) if (R * ncols > CPU_PAR_MIN)
    for (int64_t r = 0; r < R; r++) {
        float *dr = d + r * dc + dst_col;
        const float *sr = s + r * sc + src_col;
        if (accumulate)
            for (int64_t j = 0; j < ncols; j++) dr[j] += sr[j];
        else
            for (int64_t j = 0; j < ncols; j++) dr[j] = sr[j];
    }
}

// dst = src between F32 and BF16 (round to nearest even: bf16_from_f32), element by element.
void cpu_convert(Tensor dst, Tensor src) {
    const char *op = "convert";
    if (dst.dtype != DT_F32 && dst.dtype != DT_BF16) cpu_need(op, "dst", &dst, DT_F32, 0);
    if (src.dtype != DT_F32 && src.dtype != DT_BF16) cpu_need(op, "src", &src, DT_F32, 0);
    cpu_need(op, "dst", &dst, dst.dtype, 0);
    cpu_need(op, "src", &src, src.dtype, 0);
    int64_t n = tensor_numel(&src);
    cpu_agree(op, "dst", &dst, tensor_numel(&dst), "src", &src, n, "size");
#pragma omp parallel for schedule(static) if (n > CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        float v = src.dtype == DT_F32 ? ((const float *)src.data)[i] : bf16_to_f32(((const uint16_t *)src.data)[i]);
        if (dst.dtype == DT_F32) ((float *)dst.data)[i] = v;
        else ((uint16_t *)dst.data)[i] = bf16_from_f32(v);
    }
}
