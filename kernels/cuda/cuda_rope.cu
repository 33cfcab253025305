// MLA's data movement on the GPU: RoPE on the rope part of each head (interleaved pairs), and the assembly of
// per-head keys and values from the up-projected [k_nope ; v] and the single shared rope key, with its backward.
// Tensors of one op share a dtype (F32 or BF16). The rotation uses explicitly rounded products and sums, so in FP32
// it gives the cpu op's bits exactly; so do the copies and the head sum of dk_rope (summed in head order).
#include "kernels/cuda/cuda_common.cuh"

enum { ROPE_THREADS = 256 };

// The v2 forms (DSV3_MEMOPS, end of file), after the checks; false: not selected or not applicable (v1 runs).
static bool rope_apply_v2(Tensor x, int64_t col, int64_t rope_dim, Tensor cos, Tensor sin, int T, int inverse,
                          int64_t N, int64_t H, int64_t stride);
static bool kv_assemble_v2(Tensor k, Tensor v, Tensor kv, Tensor k_rope, int nope, int rope, int dv, int64_t N,
                           int64_t H);
static bool kv_assemble_backward_v2(Tensor dkv, Tensor dk_rope, Tensor dk, Tensor dv, int nope, int rope, int dv_dim,
                                    int64_t N, int64_t H);

// x (N, H, stride): pair i of head h of token n rotates by the angle of position n % T.
template <typename T>
__global__ void rope_kernel(T *x, int64_t N, int64_t H, int64_t stride, int64_t col, int64_t half, const float *cosv,
                            const float *sinv, int T_, float sign) {
    const int64_t n_pairs = N * H * half;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n_pairs;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t p = i % half, nh = i / half, n = nh / H;
        T *q = x + nh * stride + col + 2 * p;
        float x0 = to_f(q[0]), x1 = to_f(q[1]);
        float c = cosv[(n % T_) * half + p], s = sign * sinv[(n % T_) * half + p];
        q[0] = from_f<T>(__fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s)));
        q[1] = from_f<T>(__fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c)));
    }
}

extern "C" void cuda_rope_apply(Tensor x, int64_t col, int64_t rope_dim, Tensor cos, Tensor sin, int T, int inverse) {
    const char *op = "rope_apply";
    cuda_need_float(op, "x", &x, 0);
    cpu_need(op, "cos", &cos, DT_F32, 2);
    cpu_need(op, "sin", &sin, DT_F32, 2);
    int64_t stride = cpu_cols(&x), H = x.ndim >= 3 ? x.shape[x.ndim - 2] : 1;
    int64_t N = tensor_numel(&x) / (stride * H > 0 ? stride * H : 1);
    int64_t half = rope_dim / 2;
    if (rope_dim <= 0 || rope_dim % 2) die("%s: rope_dim %lld must be positive and even", op, (long long)rope_dim);
    if (col < 0 || col + rope_dim > stride)
        die("%s: rope columns [%lld, %lld) do not fit a head of %lld", op, (long long)col, (long long)(col + rope_dim),
            (long long)stride);
    if (T <= 0 || N % T) die("%s: %lld tokens are not a whole number of sequences of T = %d", op, (long long)N, T);
    cpu_agree(op, "cos", &cos, cos.shape[1], "sin", &sin, sin.shape[1], "columns");
    cpu_agree(op, "cos", &cos, cos.shape[0], "sin", &sin, sin.shape[0], "rows");
    cpu_expect(op, "cos", &cos, cos.shape[1], half, "columns (rope_dim / 2)");
    if (cos.shape[0] < T)
        die("%s: cos/sin tables have %lld positions, fewer than T = %d", op, (long long)cos.shape[0], T);
    if (N == 0 || rope_apply_v2(x, col, rope_dim, cos, sin, T, inverse, N, H, stride)) return;
    cudaStream_t s = cuda_stream();
    DISPATCH_FLOAT(x.dtype, TT, {
        rope_kernel<TT><<<cuda_grid(N * H * half, ROPE_THREADS), ROPE_THREADS, 0, s>>>(
            (TT *)x.data, N, H, stride, col, half, (const float *)cos.data, (const float *)sin.data, T,
            inverse ? -1.0f : 1.0f);
    });
    CUDA_LAUNCH_CHECK("rope_kernel");
}

// Checks k (N, H, nope + rope), v (N, H, dv), kv (N, H * (nope + dv)), k_rope (N, rope) as the cpu op does; a
// leading (B, T) pair in place of N is accepted for k and v. Returns N and H.
static void kv_shapes(const char *op, const Tensor *k, const Tensor *v, const Tensor *kv, const Tensor *kr, int nope,
                      int rope, int dv, int64_t *N_out, int64_t *H_out) {
    if (nope < 0 || rope < 0 || dv <= 0 || nope + rope <= 0)
        die("%s: bad head dimensions nope %d, rope %d, dv %d", op, nope, rope, dv);
    if (k->ndim < 3) die("%s: k must be (N, H, nope + rope), got %d dimensions", op, k->ndim);
    int64_t H = k->shape[k->ndim - 2], N = cpu_rows(k) / (H ? H : 1);
    cpu_expect(op, "k", k, cpu_cols(k), nope + rope, "head dim (nope + rope)");
    if (v->ndim < 3) die("%s: v must be (N, H, dv), got %d dimensions", op, v->ndim);
    cpu_expect(op, "v", v, cpu_cols(v), dv, "head dim (dv)");
    cpu_agree(op, "v", v, v->shape[v->ndim - 2], "k", k, H, "H");
    cpu_agree(op, "v", v, cpu_rows(v) / (H ? H : 1), "k", k, N, "N");
    cpu_expect(op, "kv", kv, cpu_cols(kv), H * (nope + dv), "columns (H * (nope + dv))");
    cpu_agree(op, "kv", kv, cpu_rows(kv), "k", k, N, "N");
    cpu_expect(op, "k_rope", kr, cpu_cols(kr), rope, "columns (rope)");
    cpu_agree(op, "k_rope", kr, cpu_rows(kr), "k", k, N, "N");
    *N_out = N;
    *H_out = H;
}

// One thread per output element of k (N, H, dk) followed by v (N, H, dv).
template <typename T>
__global__ void kv_assemble_kernel(T *k, T *v, const T *kv, const T *k_rope, int64_t N, int64_t H, int nope, int rope,
                                   int dv) {
    const int64_t dk = nope + rope, dkv = nope + dv, nk = N * H * dk, total = nk + N * H * dv;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        if (i < nk) {
            int64_t j = i % dk, nh = i / dk;
            k[i] = j < nope ? kv[nh * dkv + j] : k_rope[(nh / H) * rope + (j - nope)];
        } else {
            int64_t i2 = i - nk, j = i2 % dv, nh = i2 / dv;
            v[i2] = kv[nh * dkv + nope + j];
        }
    }
}

// The same in 16-byte units, one warp per (token, head) row (no per-element 64-bit division). Units: unope, urope,
// udv of nope, rope, dv elements.
__global__ void kv_assemble_rows16_kernel(uint4 *k, uint4 *v, const uint4 *kv, const uint4 *k_rope, int64_t NH, int H,
                                          int unope, int urope, int udv) {
    const int lane = threadIdx.x & 31, uk = unope + urope, ukv = unope + udv;
    for (int64_t nh = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5; nh < NH;
         nh += ((int64_t)gridDim.x * blockDim.x) >> 5) {
        const uint4 *src = kv + nh * ukv, *rr = k_rope + (nh / H) * urope;
        uint4 *kr = k + nh * uk, *vr = v + nh * udv;
        for (int c = lane; c < uk; c += 32) kr[c] = c < unope ? src[c] : rr[c - unope];
        for (int c = lane; c < udv; c += 32) vr[c] = src[unope + c];
    }
}

// Backward in 16-byte units: dkv rows from dk's nope part and dv, one warp per (token, head).
__global__ void kv_assemble_bwd_rows16_kernel(uint4 *dkv, const uint4 *dk, const uint4 *dv, int64_t NH, int unope,
                                              int urope, int udv) {
    const int lane = threadIdx.x & 31, uk = unope + urope, ukv = unope + udv;
    for (int64_t nh = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5; nh < NH;
         nh += ((int64_t)gridDim.x * blockDim.x) >> 5) {
        uint4 *dst = dkv + nh * ukv;
        for (int c = lane; c < ukv; c += 32) dst[c] = c < unope ? dk[nh * uk + c] : dv[nh * udv + (c - unope)];
    }
}

// dk_rope (N, rope) = sum over heads of dk's rope part, in head order (the part of kv_assemble_bwd_kernel after n1).
template <typename T>
__global__ void kv_rope_sum_kernel(T *dk_rope, const T *dk, int64_t N, int64_t H, int nope, int rope) {
    const int64_t dkd = nope + rope, total = N * rope;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t j = i % rope, n = i / rope;
        float acc = 0.0f;
        for (int64_t h = 0; h < H; h++) acc = __fadd_rn(acc, to_f(dk[(n * H + h) * dkd + nope + j]));
        dk_rope[i] = from_f<T>(acc);
    }
}

// dkv (N, H*(nope+dv)) from dk's nope part and dv; then dk_rope (N, rope) = sum over heads, in head order.
template <typename T>
__global__ void kv_assemble_bwd_kernel(T *dkv, T *dk_rope, const T *dk, const T *dv, int64_t N, int64_t H, int nope,
                                       int rope, int dvd) {
    const int64_t dkd = nope + rope, dkvd = nope + dvd, n1 = N * H * dkvd, total = n1 + N * rope;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        if (i < n1) {
            int64_t j = i % dkvd, nh = i / dkvd;
            dkv[i] = j < nope ? dk[nh * dkd + j] : dv[nh * dvd + (j - nope)];
        } else {
            int64_t i2 = i - n1, j = i2 % rope, n = i2 / rope;
            float acc = 0.0f;
            for (int64_t h = 0; h < H; h++) acc = __fadd_rn(acc, to_f(dk[(n * H + h) * dkd + nope + j]));
            dk_rope[i2] = from_f<T>(acc);
        }
    }
}

extern "C" void cuda_mla_kv_assemble(Tensor k, Tensor v, Tensor kv, Tensor k_rope, int nope, int rope, int dv) {
    const char *op = "mla_kv_assemble";
    cuda_need_float(op, "k", &k, 0);
    cuda_need_float(op, "v", &v, 0);
    cuda_need_float(op, "kv", &kv, 0);
    cuda_need_float(op, "k_rope", &k_rope, 0);
    cuda_same_dtype(op, "k", &k, "kv", &kv);
    cuda_same_dtype(op, "v", &v, "kv", &kv);
    cuda_same_dtype(op, "k_rope", &k_rope, "kv", &kv);
    int64_t N, H;
    kv_shapes(op, &k, &v, &kv, &k_rope, nope, rope, dv, &N, &H);
    int64_t total = N * H * (nope + rope + dv);
    if (total == 0 || kv_assemble_v2(k, v, kv, k_rope, nope, rope, dv, N, H)) return;
    cudaStream_t s = cuda_stream();
    const int64_t es = (int64_t)dtype_size(kv.dtype);
    if (cuda_rows16(k.data, nope * es) && cuda_rows16(v.data, rope * es) && cuda_rows16(kv.data, dv * es) &&
        cuda_rows16(k_rope.data, 16) && H <= INT32_MAX) {
        kv_assemble_rows16_kernel<<<cuda_grid(N * H * 32, 256), 256, 0, s>>>(
            (uint4 *)k.data, (uint4 *)v.data, (const uint4 *)kv.data, (const uint4 *)k_rope.data, N * H, (int)H,
            (int)(nope * es / 16), (int)(rope * es / 16), (int)(dv * es / 16));
        CUDA_LAUNCH_CHECK("kv_assemble_rows16_kernel");
        return;
    }
    DISPATCH_FLOAT(kv.dtype, T, {
        kv_assemble_kernel<T><<<cuda_grid(total, 256), 256, 0, s>>>((T *)k.data, (T *)v.data, (const T *)kv.data,
                                                                    (const T *)k_rope.data, N, H, nope, rope, dv);
    });
    CUDA_LAUNCH_CHECK("kv_assemble_kernel");
}

extern "C" void cuda_mla_kv_assemble_backward(Tensor dkv, Tensor dk_rope, Tensor dk, Tensor dv, int nope, int rope,
                                              int dv_dim) {
    const char *op = "mla_kv_assemble_backward";
    cuda_need_float(op, "dkv", &dkv, 0);
    cuda_need_float(op, "dk_rope", &dk_rope, 0);
    cuda_need_float(op, "dk", &dk, 0);
    cuda_need_float(op, "dv", &dv, 0);
    cuda_same_dtype(op, "dk", &dk, "dkv", &dkv);
    cuda_same_dtype(op, "dv", &dv, "dkv", &dkv);
    cuda_same_dtype(op, "dk_rope", &dk_rope, "dkv", &dkv);
    int64_t N, H;
    kv_shapes(op, &dk, &dv, &dkv, &dk_rope, nope, rope, dv_dim, &N, &H);
    int64_t total = N * H * (nope + dv_dim) + N * rope;
    if (total == 0 || kv_assemble_backward_v2(dkv, dk_rope, dk, dv, nope, rope, dv_dim, N, H)) return;
    cudaStream_t s = cuda_stream();
    const int64_t es = (int64_t)dtype_size(dkv.dtype);
    if (cuda_rows16(dkv.data, nope * es) && cuda_rows16(dk.data, rope * es) && cuda_rows16(dv.data, dv_dim * es)) {
        kv_assemble_bwd_rows16_kernel<<<cuda_grid(N * H * 32, 256), 256, 0, s>>>(
            (uint4 *)dkv.data, (const uint4 *)dk.data, (const uint4 *)dv.data, N * H, (int)(nope * es / 16),
            (int)(rope * es / 16), (int)(dv_dim * es / 16));
        CUDA_LAUNCH_CHECK("kv_assemble_bwd_rows16_kernel");
        if (N * rope > 0) {
            DISPATCH_FLOAT(dkv.dtype, T, {
                kv_rope_sum_kernel<T><<<cuda_grid(N * rope, 256), 256, 0, s>>>((T *)dk_rope.data, (const T *)dk.data,
                                                                               N, H, nope, rope);
            });
            CUDA_LAUNCH_CHECK("kv_rope_sum_kernel");
        }
        return;
    }
    DISPATCH_FLOAT(dkv.dtype, T, {
        kv_assemble_bwd_kernel<T><<<cuda_grid(total, 256), 256, 0, s>>>(
            (T *)dkv.data, (T *)dk_rope.data, (const T *)dk.data, (const T *)dv.data, N, H, nope, rope, dv_dim);
    });
    CUDA_LAUNCH_CHECK("kv_assemble_bwd_kernel");
}

// ---- v2 (DSV3_MEMOPS): one thread per 16-byte unit, 32-bit index arithmetic (the callers check the counts) ----

// RoPE: thread i = (token, head) row nh, unit u of 8 elements (4 pairs) of its rope part; cos/sin as float4.
template <typename T>
__global__ void rope_v2_kernel(T *x, unsigned NH, unsigned H, unsigned upr, int64_t stride, int64_t col, int64_t half,
                               const float *cosv, const float *sinv, unsigned T_, float sign) {
    const unsigned total = NH * upr;
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        const unsigned nh = i / upr, u = i - nh * upr, pos = (nh / H) % T_;
        T *q = x + (int64_t)nh * stride + col + 8 * u;
        const float4 c4 = *(const float4 *)(cosv + (int64_t)pos * half + 4 * u);
        const float4 s4 = *(const float4 *)(sinv + (int64_t)pos * half + 4 * u);
        const float c[4] = {c4.x, c4.y, c4.z, c4.w};
        const float s[4] = {sign * s4.x, sign * s4.y, sign * s4.z, sign * s4.w};
        float v[8], o[8];
        ld8(q, v);
#pragma unroll
        for (int p = 0; p < 4; p++) {
            const float x0 = v[2 * p], x1 = v[2 * p + 1];
            o[2 * p] = __fsub_rn(__fmul_rn(x0, c[p]), __fmul_rn(x1, s[p]));
            o[2 * p + 1] = __fadd_rn(__fmul_rn(x0, s[p]), __fmul_rn(x1, c[p]));
        }
        st8(q, o);
    }
}

// k/v assembly: thread i = (token, head) row nh, 16-byte unit c of [k row ; v row] (unope + urope + udv units).
__global__ void kv_assemble_v2_kernel(uint4 *k, uint4 *v, const uint4 *kv, const uint4 *k_rope, unsigned NH,
                                      unsigned H, unsigned unope, unsigned urope, unsigned udv) {
    const unsigned uk = unope + urope, ukv = unope + udv, urow = uk + udv, total = NH * urow;
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        const unsigned nh = i / urow, c = i - nh * urow;
        if (c < unope) k[(size_t)nh * uk + c] = kv[(size_t)nh * ukv + c];
        else if (c < uk) k[(size_t)nh * uk + c] = k_rope[(size_t)(nh / H) * urope + (c - unope)];
        else v[(size_t)nh * udv + (c - uk)] = kv[(size_t)nh * ukv + unope + (c - uk)];
    }
}

// Backward in one launch: threads [0, NH * ukv) copy dkv's 16-byte units from dk's nope part and dv; the next
// N * (rope / 8) threads each sum one 8-element unit of dk's rope part over the heads, in head order from 0.0f with
// explicit rounding (v1's sums). Element offsets: nope, rope, dv are multiples of 8 (checked by the caller).
template <typename T>
__global__ void kv_assemble_bwd_v2_kernel(uint4 *dkv, T *dk_rope, const uint4 *dk, const uint4 *dv, const T *dk_el,
                                          unsigned NH, unsigned N, unsigned H, unsigned unope, unsigned urope,
                                          unsigned udv, int nope, int rope) {
    const unsigned uk = unope + urope, ukv = unope + udv, n1 = NH * ukv, r8 = (unsigned)rope / 8;
    const unsigned total = n1 + N * r8;
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        if (i < n1) {
            const unsigned nh = i / ukv, c = i - nh * ukv;
            dkv[i] = c < unope ? dk[(size_t)nh * uk + c] : dv[(size_t)nh * udv + (c - unope)];
        } else {
            const unsigned i2 = i - n1, n = i2 / r8, u = i2 - n * r8;
            const int64_t dkd = nope + rope;
            const T *src = dk_el + (int64_t)n * H * dkd + nope + 8 * u;
            float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll 4
            for (unsigned h = 0; h < H; h++) {
                float y[8];
                ld8(src + (int64_t)h * dkd, y);
#pragma unroll
                for (int e = 0; e < 8; e++) acc[e] = __fadd_rn(acc[e], y[e]);
            }
            st8(dk_rope + (int64_t)n * rope + 8 * u, acc);
        }
    }
}

static bool rope_apply_v2(Tensor x, int64_t col, int64_t rope_dim, Tensor cos, Tensor sin, int T, int inverse,
                          int64_t N, int64_t H, int64_t stride) {
    if (!cuda_memops_v2("rope_apply") || !cuda_vec8_ok(rope_dim, x.data, cos.data, sin.data) || col % 8 ||
        stride % 8 || N * H * (rope_dim / 8) > INT32_MAX)
        return false;
    const unsigned upr = (unsigned)(rope_dim / 8);
    DISPATCH_FLOAT(x.dtype, TT, {
        rope_v2_kernel<TT><<<cuda_grid(N * H * upr, ROPE_THREADS), ROPE_THREADS, 0, cuda_stream()>>>(
            (TT *)x.data, (unsigned)(N * H), (unsigned)H, upr, stride, col, rope_dim / 2, (const float *)cos.data,
            (const float *)sin.data, (unsigned)T, inverse ? -1.0f : 1.0f);
    });
    CUDA_LAUNCH_CHECK("rope_v2_kernel");
    return true;
}

static bool kv_assemble_v2(Tensor k, Tensor v, Tensor kv, Tensor k_rope, int nope, int rope, int dv, int64_t N,
                           int64_t H) {
    const int64_t es = (int64_t)dtype_size(kv.dtype);
    // 16-byte units in every row (v1's rows16 condition) and 32-bit unit counts
    if (!cuda_memops_v2("mla_kv_assemble") || !cuda_rows16(k.data, nope * es) || !cuda_rows16(v.data, rope * es) ||
        !cuda_rows16(kv.data, dv * es) || !cuda_rows16(k_rope.data, 16) ||
        N * H * ((nope + rope + dv) * es / 16) > INT32_MAX)
        return false;
    const unsigned unope = (unsigned)(nope * es / 16), urope = (unsigned)(rope * es / 16), udv = (unsigned)(dv * es / 16);
    kv_assemble_v2_kernel<<<cuda_grid(N * H * (unope + urope + udv), 256), 256, 0, cuda_stream()>>>(
        (uint4 *)k.data, (uint4 *)v.data, (const uint4 *)kv.data, (const uint4 *)k_rope.data, (unsigned)(N * H),
        (unsigned)H, unope, urope, udv);
    CUDA_LAUNCH_CHECK("kv_assemble_v2_kernel");
    return true;
}

static bool kv_assemble_backward_v2(Tensor dkv, Tensor dk_rope, Tensor dk, Tensor dv, int nope, int rope, int dv_dim,
                                    int64_t N, int64_t H) {
    const int64_t es = (int64_t)dtype_size(dkv.dtype);
    if (!cuda_memops_v2("mla_kv_assemble_backward") || nope % 8 || rope % 8 || dv_dim % 8 ||
        !cuda_vec8_ok(0, dkv.data, dk_rope.data, dk.data, dv.data) ||
        N * H * ((nope + dv_dim) * es / 16) + N * (rope / 8) > INT32_MAX)
        return false;
    const unsigned unope = (unsigned)(nope * es / 16), urope = (unsigned)(rope * es / 16);
    const unsigned udv = (unsigned)(dv_dim * es / 16);
    const int64_t total = N * H * (unope + udv) + N * (rope / 8);
    DISPATCH_FLOAT(dkv.dtype, T, {
        kv_assemble_bwd_v2_kernel<T><<<cuda_grid(total, 256), 256, 0, cuda_stream()>>>(
            (uint4 *)dkv.data, (T *)dk_rope.data, (const uint4 *)dk.data, (const uint4 *)dv.data, (const T *)dk.data,
            (unsigned)(N * H), (unsigned)N, (unsigned)H, unope, urope, udv, nope, rope);
    });
    CUDA_LAUNCH_CHECK("kv_assemble_bwd_v2_kernel");
    return true;
}
