// Causal attention on the GPU, flash style: no (T, T) matrix in memory.
//   q, k (B, T, H, D), v, out, dout (B, T, H, DV), lse (B, H, T) F32;  D <= 192 (MLA: 128 nope + 64 rope), DV <= 128.
// Forward: one block per (64-query tile, b*h); it walks the key tiles up to the diagonal with an online softmax
// (running max m and sum l per row), keeps O in registers and writes O / l and lse = m + log l.
// Backward (FlashAttention-2): D_i = <dO_i, O_i> first; then one kernel per key tile accumulates dK, dV over the
// query tiles at and below the diagonal, and a second per query tile accumulates dQ over the key tiles; both
// recompute P = exp(scale * q.k - lse) from the saved lse. Two kernels instead of atomics into dq: deterministic,
// and dq may be BF16.
//
// This first version computes in FP32 on the CUDA cores (BF16 tensors are converted on load), for exactness against
// the cpu reference: 256 threads as a 16 x 16 grid; every (64 x 64) score tile and every output tile is computed
// by each thread for rows ty + 16 i and columns tx + 16 j, from shared-memory tiles with odd row strides (no bank
// conflicts for either access pattern). BF16 tensors with head dims that are multiples of 16 (D <= 192, DV <= 128)
// and 16-byte aligned data take the tensor-core kernels of cuda_attention_tc.cu instead (attn_use_tc).
#include "kernels/cuda/cuda_attention_tc.cuh"

#include <math.h>

namespace {

constexpr int BR = 64, BC = 64, NTH = 256;
constexpr int DQK_MAX = 192, DV_MAX = 128;
constexpr int SQ = DQK_MAX + 1, SV = DV_MAX + 1, SP = BC + 1; // odd strides (floats)
constexpr int NJ_QK = DQK_MAX / 16, NJ_V = DV_MAX / 16;       // output columns per thread: 12 and 8

// Loads rows [t0, t0 + 64) of head h of sequence b from x (B, T, H, ncols) into dst (64, stride) as floats; rows
// past T are zero.
template <typename T>
__device__ __forceinline__ void load_tile(float *dst, int stride, const T *x, int b, int h, int t0, int T_, int H,
                                          int ncols) {
    for (int idx = threadIdx.x; idx < 64 * ncols; idx += NTH) {
        int r = idx / ncols, c = idx - r * ncols, t = t0 + r;
        dst[r * stride + c] = t < T_ ? to_f(x[(((int64_t)b * T_ + t) * H + h) * ncols + c]) : 0.0f;
    }
}

// acc[i][j] += sum_{k < K} A[row_i][k] * B[col_j][k];  row_i = ty + 16 i, col_j = tx + 16 j (both k-contiguous)
__device__ __forceinline__ void mm_nt(float (&acc)[4][4], const float *A, int sa, const float *B, int sb, int K, int ty,
                                      int tx) {
#pragma unroll 4
    for (int k = 0; k < K; k++) {
        float a[4], b[4];
#pragma unroll
        for (int i = 0; i < 4; i++) a[i] = A[(ty + 16 * i) * sa + k];
#pragma unroll
        for (int j = 0; j < 4; j++) b[j] = B[(tx + 16 * j) * sb + k];
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int j = 0; j < 4; j++) acc[i][j] += a[i] * b[j];
    }
}

// acc[i][j] += sum_{k < K} A[row_i][k] * B[k][col_j]
template <int NJ>
__device__ __forceinline__ void mm_nn(float (&acc)[4][NJ], const float *A, int sa, const float *B, int sb, int K,
                                      int ty, int tx) {
#pragma unroll 2
    for (int k = 0; k < K; k++) {
        float a[4];
#pragma unroll
        for (int i = 0; i < 4; i++) a[i] = A[(ty + 16 * i) * sa + k];
#pragma unroll
        for (int j = 0; j < NJ; j++) {
            float b = B[k * sb + tx + 16 * j];
#pragma unroll
            for (int i = 0; i < 4; i++) acc[i][j] += a[i] * b;
        }
    }
}

// acc[i][j] += sum_{k < K} A[k][row_i] * B[k][col_j]
template <int NJ>
__device__ __forceinline__ void mm_tn(float (&acc)[4][NJ], const float *A, int sa, const float *B, int sb, int K,
                                      int ty, int tx) {
#pragma unroll 2
    for (int k = 0; k < K; k++) {
        float a[4];
#pragma unroll
        for (int i = 0; i < 4; i++) a[i] = A[k * sa + ty + 16 * i];
#pragma unroll
        for (int j = 0; j < NJ; j++) {
            float b = B[k * sb + tx + 16 * j];
#pragma unroll
            for (int i = 0; i < 4; i++) acc[i][j] += a[i] * b;
        }
    }
}

// Reductions over the 16 threads of one row group (tx = lane % 16; a warp holds two row groups).
__device__ __forceinline__ float half_warp_max(float v) {
    for (int o = 8; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ float half_warp_sum(float v) {
    for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

constexpr size_t FWD_SMEM = sizeof(float) * (size_t)(BR * SQ + BC * SQ + BC * SV + BR * SP);
constexpr size_t DKV_SMEM = sizeof(float) * (size_t)(BC * SQ + BC * SV + BR * SQ + BR * SV + 2 * BR * SP + 2 * BR);
constexpr size_t DQ_SMEM = sizeof(float) * (size_t)(BR * SQ + BR * SV + BC * SQ + BC * SV + BR * SP + 2 * BR);

// grid (B*H, query tiles), heaviest (last) query tiles first.
template <typename T>
__global__ void __launch_bounds__(NTH) attn_fwd_kernel(T *out, float *lse, const T *q, const T *k, const T *v, int T_,
                                                        int H, int D, int DV, float scale) {
    extern __shared__ float sm[];
    float *Qs = sm, *Ks = Qs + BR * SQ, *Vs = Ks + BC * SQ, *Ps = Vs + BC * SV;
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    const int bh = blockIdx.x, b = bh / H, h = bh % H;
    const int qt = gridDim.y - 1 - blockIdx.y, q0 = qt * BR;
    load_tile(Qs, SQ, q, b, h, q0, T_, H, D);
    float m[4], l[4], o[4][NJ_V];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        m[i] = -INFINITY;
        l[i] = 0.0f;
#pragma unroll
        for (int j = 0; j < NJ_V; j++) o[i][j] = 0.0f;
    }
    for (int kt = 0; kt <= qt; kt++) {
        const int k0 = kt * BC;
        __syncthreads(); // the previous tile's readers of Ks, Vs and Ps are done
        load_tile(Ks, SQ, k, b, h, k0, T_, H, D);
        load_tile(Vs, SV, v, b, h, k0, T_, H, DV);
        __syncthreads();
        float s[4][4] = {};
        mm_nt(s, Qs, SQ, Ks, SQ, D, ty, tx);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int r = q0 + ty + 16 * i;
            float mt = -INFINITY;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const int c = k0 + tx + 16 * j;
                s[i][j] = (c <= r && c < T_) ? scale * s[i][j] : -INFINITY;
                mt = fmaxf(mt, s[i][j]);
            }
            mt = half_warp_max(mt);
            const float mn = fmaxf(m[i], mt);
            const float base = mn == -INFINITY ? 0.0f : mn; // a row with nothing visible yet stays at zero
            const float alpha = expf(m[i] - base);
            float rs = 0.0f;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                s[i][j] = expf(s[i][j] - base);
                rs += s[i][j];
            }
            rs = half_warp_sum(rs);
            l[i] = l[i] * alpha + rs;
            m[i] = mn;
#pragma unroll
            for (int j = 0; j < NJ_V; j++) o[i][j] *= alpha;
#pragma unroll
            for (int j = 0; j < 4; j++) Ps[(ty + 16 * i) * SP + tx + 16 * j] = s[i][j];
        }
        __syncthreads();
        mm_nn<NJ_V>(o, Ps, SP, Vs, SV, BC, ty, tx);
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int r = q0 + ty + 16 * i;
        if (r >= T_) continue;
        const float inv = 1.0f / l[i];
        T *orow = out + (((int64_t)b * T_ + r) * H + h) * DV;
#pragma unroll
        for (int j = 0; j < NJ_V; j++) {
            const int e = tx + 16 * j;
            if (e < DV) orow[e] = from_f<T>(o[i][j] * inv);
        }
        if (tx == 0) lse[(int64_t)bh * T_ + r] = m[i] + logf(l[i]);
    }
}

// Dr (B, H, T) = <dO, O> per row: one warp per (b, t, h).
template <typename T>
__global__ void attn_bwd_dot_kernel(float *Dr, const T *dout, const T *out, int B, int T_, int H, int DV) {
    const int64_t rows = (int64_t)B * T_ * H;
    const int lane = threadIdx.x & 31;
    for (int64_t row = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5; row < rows;
         row += ((int64_t)gridDim.x * blockDim.x) >> 5) {
        const T *g = dout + row * DV, *o = out + row * DV;
        float acc = 0.0f;
        for (int e = lane; e < DV; e += 32) acc += to_f(g[e]) * to_f(o[e]);
        acc = warp_sum(acc);
        if (lane == 0) {
            int64_t h = row % H, bt = row / H, t = bt % T_, b = bt / T_;
            Dr[(b * H + h) * T_ + t] = acc;
        }
    }
}

// P and dS of one (query tile, key tile) pair from Qs, dOs, Ks, Vs: p = exp(scale s - lse), ds = p (dp - D) scale;
// entries above the diagonal or past T are zero. Written to Ps (if not NULL) and dSs as (64, SP) row-major.
__device__ __forceinline__ void attn_bwd_p_ds(float *Ps, float *dSs, const float *Qs, const float *dOs,
                                              const float *Ks, const float *Vs, const float *lse_s, const float *D_s,
                                              int q0, int k0, int T_, int D, int DV, float scale, int ty, int tx) {
    float s[4][4] = {}, dp[4][4] = {};
    mm_nt(s, Qs, SQ, Ks, SQ, D, ty, tx);
    mm_nt(dp, dOs, SV, Vs, SV, DV, ty, tx);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int rl = ty + 16 * i, r = q0 + rl;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int cl = tx + 16 * j, c = k0 + cl;
            const bool valid = r < T_ && c <= r;
            const float p = valid ? expf(scale * s[i][j] - lse_s[rl]) : 0.0f;
            const float ds = p * (dp[i][j] - D_s[rl]) * scale;
            if (Ps) Ps[rl * SP + cl] = p;
            dSs[rl * SP + cl] = ds;
        }
    }
}

// Loads lse and D of query rows [q0, q0 + 64) (zero past T).
__device__ __forceinline__ void load_row_stats(float *lse_s, float *D_s, const float *lse, const float *Dr,
                                               int64_t bh, int q0, int T_) {
    if (threadIdx.x < BR) {
        const int r = q0 + threadIdx.x;
        lse_s[threadIdx.x] = r < T_ ? lse[bh * T_ + r] : 0.0f;
        D_s[threadIdx.x] = r < T_ ? Dr[bh * T_ + r] : 0.0f;
    }
}

// grid (B*H, key tiles), heaviest (first) key tiles first: dK, dV of 64 keys over the query tiles qt >= kt.
template <typename T>
__global__ void __launch_bounds__(NTH)
    attn_bwd_dkv_kernel(T *dk, T *dv, const T *q, const T *k, const T *v, const T *dout, const float *lse,
                        const float *Dr, int T_, int H, int D, int DV, float scale) {
    extern __shared__ float sm[];
    float *Ks = sm, *Vs = Ks + BC * SQ, *Qs = Vs + BC * SV, *dOs = Qs + BR * SQ, *Ps = dOs + BR * SV;
    float *dSs = Ps + BR * SP, *lse_s = dSs + BR * SP, *D_s = lse_s + BR;
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    const int bh = blockIdx.x, b = bh / H, h = bh % H;
    const int kt = blockIdx.y, k0 = kt * BC, nq = (T_ + BR - 1) / BR;
    load_tile(Ks, SQ, k, b, h, k0, T_, H, D);
    load_tile(Vs, SV, v, b, h, k0, T_, H, DV);
    float dk_acc[4][NJ_QK] = {}, dv_acc[4][NJ_V] = {};
    for (int qt = kt; qt < nq; qt++) {
        const int q0 = qt * BR;
        __syncthreads(); // the previous query tile's readers are done
        load_tile(Qs, SQ, q, b, h, q0, T_, H, D);
        load_tile(dOs, SV, dout, b, h, q0, T_, H, DV);
        load_row_stats(lse_s, D_s, lse, Dr, bh, q0, T_);
        __syncthreads();
        attn_bwd_p_ds(Ps, dSs, Qs, dOs, Ks, Vs, lse_s, D_s, q0, k0, T_, D, DV, scale, ty, tx);
        __syncthreads();
        // dV[c][e] += sum_r P[r][c] dO[r][e];  dK[c][d] += sum_r dS[r][c] Q[r][d]   (rows c = ty + 16 i)
        mm_tn<NJ_V>(dv_acc, Ps, SP, dOs, SV, BR, ty, tx);
        mm_tn<NJ_QK>(dk_acc, dSs, SP, Qs, SQ, BR, ty, tx);
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int c = k0 + ty + 16 * i;
        if (c >= T_) continue;
        T *dkr = dk + (((int64_t)b * T_ + c) * H + h) * D;
        T *dvr = dv + (((int64_t)b * T_ + c) * H + h) * DV;
#pragma unroll
        for (int j = 0; j < NJ_QK; j++)
            if (tx + 16 * j < D) dkr[tx + 16 * j] = from_f<T>(dk_acc[i][j]);
#pragma unroll
        for (int j = 0; j < NJ_V; j++)
            if (tx + 16 * j < DV) dvr[tx + 16 * j] = from_f<T>(dv_acc[i][j]);
    }
}

// grid (B*H, query tiles), heaviest (last) query tiles first: dQ of 64 queries over the key tiles kt <= qt.
template <typename T>
__global__ void __launch_bounds__(NTH)
    attn_bwd_dq_kernel(T *dq, const T *q, const T *k, const T *v, const T *dout, const float *lse, const float *Dr,
                       int T_, int H, int D, int DV, float scale) {
    extern __shared__ float sm[];
    float *Qs = sm, *dOs = Qs + BR * SQ, *Ks = dOs + BR * SV, *Vs = Ks + BC * SQ, *dSs = Vs + BC * SV;
    float *lse_s = dSs + BR * SP, *D_s = lse_s + BR;
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    const int bh = blockIdx.x, b = bh / H, h = bh % H;
    const int qt = gridDim.y - 1 - blockIdx.y, q0 = qt * BR;
    load_tile(Qs, SQ, q, b, h, q0, T_, H, D);
    load_tile(dOs, SV, dout, b, h, q0, T_, H, DV);
    load_row_stats(lse_s, D_s, lse, Dr, bh, q0, T_);
    float dq_acc[4][NJ_QK] = {};
    for (int kt = 0; kt <= qt; kt++) {
        const int k0 = kt * BC;
        __syncthreads();
        load_tile(Ks, SQ, k, b, h, k0, T_, H, D);
        load_tile(Vs, SV, v, b, h, k0, T_, H, DV);
        __syncthreads();
        attn_bwd_p_ds(NULL, dSs, Qs, dOs, Ks, Vs, lse_s, D_s, q0, k0, T_, D, DV, scale, ty, tx);
        __syncthreads();
        mm_nn<NJ_QK>(dq_acc, dSs, SP, Ks, SQ, BC, ty, tx); // dQ[r][d] += sum_c dS[r][c] K[c][d]
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int r = q0 + ty + 16 * i;
        if (r >= T_) continue;
        T *dqr = dq + (((int64_t)b * T_ + r) * H + h) * D;
#pragma unroll
        for (int j = 0; j < NJ_QK; j++)
            if (tx + 16 * j < D) dqr[tx + 16 * j] = from_f<T>(dq_acc[i][j]);
    }
}

// Raises each kernel's dynamic shared-memory limit once (above 48 KB needs the opt-in).
template <typename T> void attn_set_smem(void) {
    static bool done = false;
    if (done) return;
    CUDA_CHECK(cudaFuncSetAttribute(attn_fwd_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)FWD_SMEM));
    CUDA_CHECK(cudaFuncSetAttribute(attn_bwd_dkv_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    (int)DKV_SMEM));
    CUDA_CHECK(cudaFuncSetAttribute(attn_bwd_dq_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)DQ_SMEM));
    done = true;
}

void check_qkv(const char *op, const Tensor *q, const Tensor *k, const Tensor *v) {
    cuda_need_float(op, "q", q, 4);
    cuda_need_float(op, "k", k, 4);
    cuda_need_float(op, "v", v, 4);
    cuda_same_dtype(op, "k", k, "q", q);
    cuda_same_dtype(op, "v", v, "q", q);
    static const char *dims[4] = {"B", "T", "H", "head dim"};
    for (int i = 0; i < 4; i++) cpu_agree(op, "q", q, q->shape[i], "k", k, k->shape[i], dims[i]);
    for (int i = 0; i < 3; i++) cpu_agree(op, "v", v, v->shape[i], "q", q, q->shape[i], dims[i]);
    if (q->shape[3] < 1 || q->shape[3] > DQK_MAX || v->shape[3] < 1 || v->shape[3] > DV_MAX)
        die("%s: head dims q/k %lld and v %lld: this kernel supports 1..%d and 1..%d", op, (long long)q->shape[3],
            (long long)v->shape[3], DQK_MAX, DV_MAX);
    if (q->shape[1] > INT32_MAX / 2 || q->shape[0] * q->shape[2] > INT32_MAX)
        die("%s: B %lld, T %lld, H %lld too large", op, (long long)q->shape[0], (long long)q->shape[1],
            (long long)q->shape[2]);
}

void check_like(const char *op, const char *name, const Tensor *t, const Tensor *ref, const char *refname) {
    cuda_need_float(op, name, t, 4);
    cuda_same_dtype(op, name, t, refname, ref);
    static const char *dims[4] = {"B", "T", "H", "head dim"};
    for (int i = 0; i < 4; i++) cpu_agree(op, name, t, t->shape[i], refname, ref, ref->shape[i], dims[i]);
}

void check_lse(const char *op, const Tensor *lse, const Tensor *q) {
    cpu_need(op, "lse", lse, DT_F32, 3);
    cpu_agree(op, "lse", lse, lse->shape[0], "q", q, q->shape[0], "B");
    cpu_agree(op, "lse", lse, lse->shape[1], "q", q, q->shape[2], "H");
    cpu_agree(op, "lse", lse, lse->shape[2], "q", q, q->shape[1], "T");
}

// The dispatch rule: BF16 tensors whose head dims and pointers the tensor-core kernels take; F32 and other shapes
// stay on the FP32 kernels above.
bool attn_use_tc(const Tensor *q, const Tensor *v, const void *const *ptrs, int nptrs) {
    return q->dtype == DT_BF16 && attn_tc_supported((int)q->shape[3], (int)v->shape[3], ptrs, nptrs);
}

} // namespace

extern "C" void cuda_attention_forward(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v, float scale) {
    const char *op = "attention_forward";
    check_qkv(op, &q, &k, &v);
    check_like(op, "out", &out, &v, "v");
    check_lse(op, &lse, &q);
    const int B = (int)q.shape[0], T_ = (int)q.shape[1], H = (int)q.shape[2], D = (int)q.shape[3];
    const int DV = (int)v.shape[3];
    if ((int64_t)B * H * T_ == 0) return;
    const int nq = (T_ + BR - 1) / BR;
    if (nq > 65535) die("%s: T = %d needs more than 65535 query tiles", op, T_);
    dim3 grid((unsigned)(B * H), (unsigned)nq);
    cudaStream_t s = cuda_stream();
    const void *ptrs[] = {out.data, q.data, k.data, v.data};
    if (attn_use_tc(&q, &v, ptrs, 4)) {
        attn_tc_forward((bf16 *)out.data, (float *)lse.data, (const bf16 *)q.data, (const bf16 *)k.data,
                        (const bf16 *)v.data, B, T_, H, D, DV, scale, s);
        return;
    }
    DISPATCH_FLOAT(q.dtype, TT, {
        attn_set_smem<TT>();
        attn_fwd_kernel<TT><<<grid, NTH, FWD_SMEM, s>>>((TT *)out.data, (float *)lse.data, (const TT *)q.data,
                                                        (const TT *)k.data, (const TT *)v.data, T_, H, D, DV, scale);
    });
    CUDA_LAUNCH_CHECK("attn_fwd_kernel");
}

extern "C" void cuda_attention_backward(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v,
                                        Tensor out, Tensor lse, float scale) {
    const char *op = "attention_backward";
    check_qkv(op, &q, &k, &v);
    check_like(op, "out", &out, &v, "v");
    check_like(op, "dout", &dout, &v, "v");
    check_like(op, "dq", &dq, &q, "q");
    check_like(op, "dk", &dk, &k, "k");
    check_like(op, "dv", &dv, &v, "v");
    check_lse(op, &lse, &q);
    const int B = (int)q.shape[0], T_ = (int)q.shape[1], H = (int)q.shape[2], D = (int)q.shape[3];
    const int DV = (int)v.shape[3];
    if ((int64_t)B * H * T_ == 0) return;
    const int nt = (T_ + BR - 1) / BR;
    if (nt > 65535) die("%s: T = %d needs more than 65535 tiles", op, T_);
    float *Dr = (float *)cuda_scratch((size_t)B * H * T_ * sizeof(float));
    dim3 grid((unsigned)(B * H), (unsigned)nt);
    cudaStream_t s = cuda_stream();
    DISPATCH_FLOAT(q.dtype, TT, {
        attn_set_smem<TT>();
        attn_bwd_dot_kernel<TT><<<cuda_grid((int64_t)B * T_ * H * 32, 256), 256, 0, s>>>(
            Dr, (const TT *)dout.data, (const TT *)out.data, B, T_, H, DV);
        CUDA_LAUNCH_CHECK("attn_bwd_dot_kernel");
        const void *ptrs[] = {dq.data, dk.data, dv.data, dout.data, q.data, k.data, v.data};
        if (attn_use_tc(&q, &v, ptrs, 7)) {
            attn_tc_backward((bf16 *)dq.data, (bf16 *)dk.data, (bf16 *)dv.data, (const bf16 *)q.data,
                             (const bf16 *)k.data, (const bf16 *)v.data, (const bf16 *)dout.data,
                             (const float *)lse.data, Dr, B, T_, H, D, DV, scale, s);
            return;
        }
        attn_bwd_dkv_kernel<TT><<<grid, NTH, DKV_SMEM, s>>>((TT *)dk.data, (TT *)dv.data, (const TT *)q.data,
                                                            (const TT *)k.data, (const TT *)v.data,
                                                            (const TT *)dout.data, (const float *)lse.data, Dr, T_, H,
                                                            D, DV, scale);
        CUDA_LAUNCH_CHECK("attn_bwd_dkv_kernel");
        attn_bwd_dq_kernel<TT><<<grid, NTH, DQ_SMEM, s>>>((TT *)dq.data, (const TT *)q.data, (const TT *)k.data,
                                                          (const TT *)v.data, (const TT *)dout.data,
                                                          (const float *)lse.data, Dr, T_, H, D, DV, scale);
    });
    CUDA_LAUNCH_CHECK("attn_bwd_dq_kernel");
}
