// RMSNorm on the GPU: y = x * rstd * w with rstd = 1 / sqrt(mean(x^2) + eps), per row of x (M, d).
// One warp per row (rows are 512..7168 wide: 16..224 elements per lane). Each activation may be F32 or BF16 on its
// own, except that dinp has inp's dtype: the BF16 model normalizes the FP32 residual stream into BF16 outputs, and
// its backward adds a BF16 output gradient into the FP32 residual gradient. The weight may be F32 or BF16; rstd and
// dw are F32. The arithmetic follows the cpu op
// expression by expression; only the order of the row sums differs. The backward's optional dinp_lowp (BF16) is
// written by the same thread right after each dinp element, from the value stored (__float2bfloat16_rn of it:
// convert's rounding), in both the v1 and v2 kernels.
#include "kernels/cuda/cuda_common.cuh"

enum { NORM_WARPS = 8 }; // rows per block

// The v2 forms (DSV3_MEMOPS, end of file), after the checks; false: not selected or not applicable (v1 runs).
static bool rmsnorm_forward_v2(Tensor out, Tensor rstd, Tensor inp, Tensor w, float eps, int64_t M, int64_t d);
static bool rmsnorm_backward_v2(Tensor dinp, Tensor dw, Tensor dout, Tensor inp, Tensor w, Tensor rstd,
                                int accumulate, Tensor dinp_lowp, int64_t M, int64_t d);

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

// dx_j = rstd * (w_j dy_j - x_j * c), c = rstd^2 / d * sum_i w_i dy_i x_i;  lowp (unless NULL) = BF16 of dx_j
template <typename T, typename TG, typename TW>
__global__ void rmsnorm_bwd_dx_kernel(T *dinp, const TG *dout, const T *inp, const TW *w, const float *rstd, int64_t M,
                                      int d, int accumulate, bf16 *lowp) {
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
    bf16 *lp = lowp ? lowp + row * d : nullptr;
    for (int j = lane; j < d; j += 32) {
        float v = rs * (to_f(w[j]) * to_f(g[j]) - to_f(x[j]) * c);
        const T r = from_f<T>(accumulate ? to_f(dx[j]) + v : v);
        dx[j] = r;
        if (lp) lp[j] = from_f<bf16>(to_f(r));
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
    if (rmsnorm_forward_v2(out, rstd, inp, w, eps, M, d)) return;
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
                                      int accumulate_dinp, Tensor dinp_lowp) {
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
    if (dinp_lowp.data) cpu_need_lowp_copy(op, "dinp_lowp", &dinp_lowp, "dinp", &dinp, M * d);
    if (M == 0 || d == 0) return;
    if (d > INT32_MAX) die("%s: row length %lld too large", op, (long long)d);
    if ((dinp.data || dw.data) && rmsnorm_backward_v2(dinp, dw, dout, inp, w, rstd, accumulate_dinp, dinp_lowp, M, d))
        return;
    cudaStream_t s = cuda_stream();
    if (dinp.data) {
        unsigned grid = (unsigned)((M + NORM_WARPS - 1) / NORM_WARPS);
        DISPATCH_FLOAT(inp.dtype, T, DISPATCH_FLOAT(dout.dtype, TG, DISPATCH_FLOAT(w.dtype, TW, {
            rmsnorm_bwd_dx_kernel<T, TG, TW><<<grid, NORM_WARPS * 32, 0, s>>>(
                (T *)dinp.data, (const TG *)dout.data, (const T *)inp.data, (const TW *)w.data,
                (const float *)rstd.data, M, (int)d, accumulate_dinp, (bf16 *)dinp_lowp.data);
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

// ---- v2 (DSV3_MEMOPS): 16-byte loads, the row in registers; backward with dw fused ----
// Rows of d = 8 * units elements, units <= 32 * NU (NU = 2: d <= 512; NU = 8: d <= 2048); one warp per row, lane
// `lane` holding units lane + 32 u. Wider rows, odd widths and unaligned views take v1.

template <typename TI, typename TO, typename TW, int NU>
__global__ void __launch_bounds__(NORM_WARPS * 32)
    rmsnorm_fwd_v2_kernel(TO *out, float *rstd, const TI *inp, const TW *w, int64_t M, int d, float eps) {
    const int lane = threadIdx.x & 31, units = d / 8;
    const int64_t row = (int64_t)blockIdx.x * NORM_WARPS + (threadIdx.x >> 5);
    if (row >= M) return;
    const TI *x = inp + row * d;
    float v[NU][8];
#pragma unroll
    for (int u = 0; u < NU; u++)
        if (lane + 32 * u < units) ld8(x + 8 * (lane + 32 * u), v[u]);
    float ss = 0.0f;
#pragma unroll
    for (int u = 0; u < NU; u++)
        if (lane + 32 * u < units)
#pragma unroll
            for (int e = 0; e < 8; e++) ss += v[u][e] * v[u][e];
    ss = warp_sum(ss);
    const float rs = 1.0f / sqrtf(ss / (float)d + eps);
    if (lane == 0) rstd[row] = rs;
    TO *y = out + row * d; // may alias inp (one dtype): every load of the row is above
#pragma unroll
    for (int u = 0; u < NU; u++) {
        const int c = lane + 32 * u;
        if (c < units) {
            float wv[8], o[8];
            ld8(w + 8 * c, wv);
#pragma unroll
            for (int e = 0; e < 8; e++) o[e] = v[u][e] * rs * wv[e];
            st8(y + 8 * c, o);
        }
    }
}

// Rows [blockIdx.x * rows_per_block, ...) per block, warp w taking rows w, w + 8, ... of them in order:
//   dinp (unless NULL) as v1: dx = rstd * (w g - x c), c = rstd^2 / d * sum w g x (x and g re-read: cache hits),
//   and lowp (unless NULL; needs dinp) the BF16 rounding of the values stored in dinp;
//   part[block] (unless NULL) = this block's sum over its rows of g x rstd: each warp in row order in registers,
//   then the 8 warps in order through shared memory. rmsnorm_dw_final_v2_kernel adds the blocks in order:
//   deterministic, and one pass over dout and inp instead of v1's two.
template <typename T, typename TG, typename TW, int NU>
__global__ void __launch_bounds__(NORM_WARPS * 32)
    rmsnorm_bwd_v2_kernel(T *dinp, float *part, const TG *dout, const T *inp, const TW *w, const float *rstd,
                          int64_t M, int d, int accumulate, int64_t rows_per_block, bf16 *lowp) {
    __shared__ float red[NORM_WARPS][256];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, units = d / 8;
    const int64_t r0 = (int64_t)blockIdx.x * rows_per_block;
    const int64_t r1 = r0 + rows_per_block < M ? r0 + rows_per_block : M;
    float dw[NU][8];
#pragma unroll
    for (int u = 0; u < NU; u++)
#pragma unroll
        for (int e = 0; e < 8; e++) dw[u][e] = 0.0f;
    for (int64_t row = r0 + warp; row < r1; row += NORM_WARPS) {
        const T *x = inp + row * d;
        const TG *g = dout + row * d;
        const float rs = rstd[row];
        float cc = 0.0f;
        if (dinp) {
            float dot = 0.0f;
#pragma unroll
            for (int u = 0; u < NU; u++) {
                const int c = lane + 32 * u;
                if (c < units) {
                    float xv[8], gv[8], wv[8];
                    ld8(x + 8 * c, xv);
                    ld8(g + 8 * c, gv);
                    ld8(w + 8 * c, wv);
#pragma unroll
                    for (int e = 0; e < 8; e++) dot += wv[e] * gv[e] * xv[e];
                }
            }
            dot = warp_sum(dot);
            cc = dot * rs * rs / (float)d;
        }
#pragma unroll
        for (int u = 0; u < NU; u++) {
            const int c = lane + 32 * u;
            if (c < units) {
                float xv[8], gv[8];
                ld8(x + 8 * c, xv);
                ld8(g + 8 * c, gv);
                if (dinp) {
                    float wv[8], o[8];
                    ld8(w + 8 * c, wv);
                    T *dx = dinp + row * d + 8 * c;
                    if (accumulate) ld8(dx, o);
#pragma unroll
                    for (int e = 0; e < 8; e++) {
                        const float v = rs * (wv[e] * gv[e] - xv[e] * cc);
                        o[e] = accumulate ? o[e] + v : v;
                    }
                    st8(dx, o);
                    // st8 rounds to T as from_f<T> does, and rounding to BF16 again changes nothing, so the BF16
                    // of o is the BF16 of what dx now holds, whichever T is.
                    if (lowp) st8(lowp + row * d + 8 * c, o);
                }
                if (part)
#pragma unroll
                    for (int e = 0; e < 8; e++) dw[u][e] += gv[e] * xv[e] * rs;
            }
        }
    }
    if (!part) return; // uniform across the block
#pragma unroll
    for (int u = 0; u < NU; u++) { // unit u of every lane: columns [256 u, 256 u + 256)
        if (256 * u >= d) break;   // uniform
        __syncthreads();           // red is free again
#pragma unroll
        for (int e = 0; e < 8; e++) red[warp][lane * 8 + e] = dw[u][e];
        __syncthreads();
        const int col = 256 * u + threadIdx.x;
        if (col < d) {
            float s = 0.0f;
#pragma unroll
            for (int k = 0; k < NORM_WARPS; k++) s += red[k][threadIdx.x];
            part[(int64_t)blockIdx.x * d + col] = s;
        }
    }
}

// dw[col] += sum over blocks b (in order) of part[b, col]: block (32 columns) x (32 row groups); row group ty sums
// blocks ty, ty + 32, ... in order, then thread ty = 0 sums the 32 groups in order.
__global__ void rmsnorm_dw_final_v2_kernel(float *dw, const float *part, int d, int nb) {
    __shared__ float red[32][33];
    const int tx = threadIdx.x, ty = threadIdx.y, col = blockIdx.x * 32 + tx;
    float s = 0.0f;
    if (col < d)
        for (int b = ty; b < nb; b += 32) s += part[(int64_t)b * d + col];
    red[ty][tx] = s;
    __syncthreads();
    if (ty == 0 && col < d) {
        float t = 0.0f;
        for (int k = 0; k < 32; k++) t += red[k][tx];
        dw[col] += t;
    }
}

enum { NORM_V2_ROWS = 64 }; // rows per backward block: 256 blocks for 16384 rows, one wave on an H100

static int norm_v2_nu(int64_t d) { return d % 8 ? 0 : d <= 512 ? 2 : d <= 2048 ? 8 : 0; }

static bool rmsnorm_forward_v2(Tensor out, Tensor rstd, Tensor inp, Tensor w, float eps, int64_t M, int64_t d) {
    const int nu = norm_v2_nu(d);
    if (!cuda_memops_v2("rmsnorm_forward") || !nu || !cuda_vec8_ok(d, out.data, inp.data, w.data)) return false;
    const unsigned grid = (unsigned)((M + NORM_WARPS - 1) / NORM_WARPS);
    cudaStream_t s = cuda_stream();
    DISPATCH_FLOAT(inp.dtype, TI, DISPATCH_FLOAT(out.dtype, TO, DISPATCH_FLOAT(w.dtype, TW, {
        if (nu == 2)
            rmsnorm_fwd_v2_kernel<TI, TO, TW, 2><<<grid, NORM_WARPS * 32, 0, s>>>(
                (TO *)out.data, (float *)rstd.data, (const TI *)inp.data, (const TW *)w.data, M, (int)d, eps);
        else
            rmsnorm_fwd_v2_kernel<TI, TO, TW, 8><<<grid, NORM_WARPS * 32, 0, s>>>(
                (TO *)out.data, (float *)rstd.data, (const TI *)inp.data, (const TW *)w.data, M, (int)d, eps);
    })));
    CUDA_LAUNCH_CHECK("rmsnorm_fwd_v2_kernel");
    return true;
}

static bool rmsnorm_backward_v2(Tensor dinp, Tensor dw, Tensor dout, Tensor inp, Tensor w, Tensor rstd,
                                int accumulate, Tensor dinp_lowp, int64_t M, int64_t d) {
    const int nu = norm_v2_nu(d);
    if (!cuda_memops_v2("rmsnorm_backward") || !nu ||
        !cuda_vec8_ok(d, dinp.data, dout.data, inp.data, w.data, dinp_lowp.data))
        return false;
    const int64_t nb = (M + NORM_V2_ROWS - 1) / NORM_V2_ROWS;
    if (nb > INT32_MAX) return false;
    float *part = dw.data ? (float *)cuda_scratch((size_t)nb * (size_t)d * sizeof(float)) : NULL;
    cudaStream_t s = cuda_stream();
    DISPATCH_FLOAT(inp.dtype, T, DISPATCH_FLOAT(dout.dtype, TG, DISPATCH_FLOAT(w.dtype, TW, {
        if (nu == 2)
            rmsnorm_bwd_v2_kernel<T, TG, TW, 2><<<(unsigned)nb, NORM_WARPS * 32, 0, s>>>(
                (T *)dinp.data, part, (const TG *)dout.data, (const T *)inp.data, (const TW *)w.data,
                (const float *)rstd.data, M, (int)d, accumulate, NORM_V2_ROWS, (bf16 *)dinp_lowp.data);
        else
            rmsnorm_bwd_v2_kernel<T, TG, TW, 8><<<(unsigned)nb, NORM_WARPS * 32, 0, s>>>(
                (T *)dinp.data, part, (const TG *)dout.data, (const T *)inp.data, (const TW *)w.data,
                (const float *)rstd.data, M, (int)d, accumulate, NORM_V2_ROWS, (bf16 *)dinp_lowp.data);
    })));
    CUDA_LAUNCH_CHECK("rmsnorm_bwd_v2_kernel");
    if (part) {
        rmsnorm_dw_final_v2_kernel<<<(unsigned)((d + 31) / 32), dim3(32, 32), 0, s>>>((float *)dw.data, part, (int)d,
                                                                                     (int)nb);
        CUDA_LAUNCH_CHECK("rmsnorm_dw_final_v2_kernel");
    }
    return true;
}
