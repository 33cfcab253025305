// MoE token movement on the GPU: the dispatch plan (a stable sort of the N*K (token, slot) pairs by expert: CUB's
// radix sort is stable, so within an expert the pairs stay in token order), gathering token rows into expert
// order, and combining expert outputs back into token order with the gates; their backward.
// Pair p = t * K + k is token t's k-th choice; order[j] = the pair at sorted position j.
//
// gather_backward and combine run per token over that token's sorted positions in ascending order (built from the
// inverse of order), i.e. the cpu op's summation order, with explicitly rounded products: in FP32 they give the
// cpu's bits exactly. Pairs missing from order contribute nothing (as on the cpu).
#include "kernels/cuda/cuda_common.cuh"

#include <cub/device/device_radix_sort.cuh>

// keys = expert of each pair (a bad one becomes E, past every real expert, and is reported), vals = pair index.
__global__ void plan_keys_kernel(int32_t *keys, int32_t *vals, const int32_t *idx, int64_t NK, int E,
                                 CudaDevError *err) {
    for (int64_t p = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; p < NK; p += (int64_t)gridDim.x * blockDim.x) {
        int32_t e = idx[p];
        if (e < 0 || e >= E) {
            dev_error(err, ERR_PLAN_IDX, p, e, E);
            e = E;
        }
        keys[p] = e;
        vals[p] = (int32_t)p;
    }
}

// offsets[e] = first sorted position with key >= e, for e in [0, E]: a binary search per expert.
__global__ void plan_offsets_kernel(int32_t *offsets, const int32_t *keys_sorted, int64_t NK, int E) {
    for (int e = blockIdx.x * blockDim.x + threadIdx.x; e <= E; e += gridDim.x * blockDim.x) {
        int64_t lo = 0, hi = NK;
        while (lo < hi) {
            int64_t mid = (lo + hi) / 2;
            if (keys_sorted[mid] < e) lo = mid + 1;
            else hi = mid;
        }
        offsets[e] = (int32_t)lo;
    }
}

// counts (E) += segment sizes, from the plan's offsets (one thread per expert).
__global__ void plan_counts_kernel(int32_t *counts, const int32_t *offsets, int E) {
    for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < E; e += gridDim.x * blockDim.x)
        counts[e] += offsets[e + 1] - offsets[e];
}

// No host sync unless offsets_host is asked for: a bad expert id is recorded on the device and reported at the next
// sync (the step's loss read), and the pairs that carry it sort past offsets[E], where no kernel reads them.
extern "C" void cuda_moe_dispatch_plan(Tensor order, Tensor offsets, int32_t *offsets_host, Tensor counts,
                                       Tensor topk_idx, int n_experts) {
    const char *op = "moe_dispatch_plan";
    cpu_need(op, "topk_idx", &topk_idx, DT_I32, 2);
    cpu_need(op, "order", &order, DT_I32, 1);
    cpu_need(op, "offsets", &offsets, DT_I32, 1);
    if (n_experts <= 0) die("%s: n_experts %d must be positive", op, n_experts);
    const int64_t NK = tensor_numel(&topk_idx);
    if (NK > INT32_MAX) die("%s: %lld routed pairs do not fit 32-bit offsets", op, (long long)NK);
    cpu_agree(op, "order", &order, order.shape[0], "topk_idx", &topk_idx, NK, "N * K");
    cpu_expect(op, "offsets", &offsets, offsets.shape[0], (int64_t)n_experts + 1, "length (n_experts + 1)");
    if (counts.data) {
        cpu_need(op, "counts", &counts, DT_I32, 1);
        cpu_expect(op, "counts", &counts, counts.shape[0], n_experts, "length (n_experts)");
    }
    const int E = n_experts;
    cudaStream_t s = cuda_stream();
    int end_bit = 1;
    while (end_bit < 31 && (1ll << end_bit) <= E) end_bit++; // keys are in [0, E]
    size_t temp_bytes = 0;
    if (NK > 0)
        CUDA_CHECK(cub::DeviceRadixSort::SortPairs(NULL, temp_bytes, (const int32_t *)NULL, (int32_t *)NULL,
                                                   (const int32_t *)NULL, (int32_t *)NULL, (int)NK, 0, end_bit, s));
    const size_t arr = cuda_align256((size_t)(NK > 0 ? NK : 1) * sizeof(int32_t));
    char *scr = (char *)cuda_scratch(3 * arr + cuda_align256(temp_bytes));
    int32_t *keys = (int32_t *)scr, *keys_sorted = (int32_t *)(scr + arr), *vals = (int32_t *)(scr + 2 * arr);
    if (NK > 0) {
        plan_keys_kernel<<<cuda_grid(NK, 256), 256, 0, s>>>(keys, vals, (const int32_t *)topk_idx.data, NK, E,
                                                            cuda_dev_error());
        CUDA_LAUNCH_CHECK("plan_keys_kernel");
        CUDA_CHECK(cub::DeviceRadixSort::SortPairs(scr + 3 * arr, temp_bytes, keys, keys_sorted, vals,
                                                   (int32_t *)order.data, (int)NK, 0, end_bit, s));
    }
    plan_offsets_kernel<<<cuda_grid((int64_t)E + 1, 256), 256, 0, s>>>((int32_t *)offsets.data, keys_sorted, NK, E);
    CUDA_LAUNCH_CHECK("plan_offsets_kernel");
    if (counts.data) {
        plan_counts_kernel<<<cuda_grid(E, 256), 256, 0, s>>>((int32_t *)counts.data, (const int32_t *)offsets.data, E);
        CUDA_LAUNCH_CHECK("plan_counts_kernel");
    }
    if (offsets_host) {
        CUDA_CHECK(cudaMemcpyAsync(offsets_host, offsets.data, ((size_t)E + 1) * sizeof(int32_t),
                                   cudaMemcpyDeviceToHost, s));
        cuda_sync_and_check(); // dies here on a bad expert id, before the host reads the table
    }
}

// Checks order's shape; its values are checked on the device (bad entries are reported and skipped).
static void check_order(const char *op, const Tensor *order, int64_t NK) {
    cpu_need(op, "order", order, DT_I32, 1);
    cpu_expect(op, "order", order, order->shape[0], NK, "length (N * K)");
}

// The v2 forms (DSV3_MEMOPS, end of file), called after the checks; false: not selected or not applicable (v1 runs).
static bool moe_gather_v2(Tensor x_sorted, Tensor x, Tensor order, int K, int64_t N, int64_t d);
static bool moe_gather_backward_v2(Tensor dx, Tensor dx_sorted, Tensor order, int K, int64_t N, int64_t d,
                                   int accumulate);
static bool moe_combine_v2(Tensor out, Tensor y_sorted, Tensor gates, Tensor order, int K, int64_t N, int64_t d,
                           int accumulate);
static bool moe_combine_backward_v2(Tensor dy_sorted, Tensor dgates, Tensor dout, Tensor y_sorted, Tensor gates,
                                    Tensor order, int K, int64_t N, int64_t d);

template <typename T>
__global__ void moe_gather_kernel(T *x_sorted, const T *x, const int32_t *order, int64_t NK, int64_t d, int K,
                                  CudaDevError *err) {
    const int64_t n = NK * d;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t j = i / d, c = i % d;
        int32_t p = order[j];
        if (p < 0 || p >= NK) {
            if (c == 0) dev_error(err, ERR_GATHER_ORDER, j, p, NK);
            continue;
        }
        x_sorted[i] = x[(int64_t)(p / K) * d + c];
    }
}

// The same copy in 16-byte units, one warp per sorted row (no per-element 64-bit division: the element-wise kernel
// ran at a quarter of the copy bandwidth). u = units per row.
__global__ void moe_gather_rows16_kernel(uint4 *x_sorted, const uint4 *x, const int32_t *order, int64_t NK, int u,
                                         int K, CudaDevError *err) {
    const int lane = threadIdx.x & 31;
    for (int64_t j = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5; j < NK;
         j += ((int64_t)gridDim.x * blockDim.x) >> 5) {
        const int32_t p = order[j];
        if (p < 0 || p >= NK) {
            if (lane == 0) dev_error(err, ERR_GATHER_ORDER, j, p, NK);
            continue;
        }
        const uint4 *src = x + (int64_t)(p / K) * u;
        uint4 *dst = x_sorted + j * u;
        for (int c = lane; c < u; c += 32) dst[c] = src[c];
    }
}

// For each token, its pairs' sorted positions in ascending order: slots (N, K), -1 for pairs missing from order.
// Step 1 inverts order (inv (N*K), preset to -1); step 2 sorts each token's K positions (K is small).
__global__ void moe_invert_kernel(int32_t *inv, const int32_t *order, int64_t NK, int code, CudaDevError *err) {
    for (int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; j < NK; j += (int64_t)gridDim.x * blockDim.x) {
        int32_t p = order[j];
        if (p < 0 || p >= NK) {
            dev_error(err, code, j, p, NK);
            continue;
        }
        inv[p] = (int32_t)j;
    }
}

__global__ void moe_slots_kernel(int32_t *slots, const int32_t *inv, int64_t N, int K) {
    for (int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; t < N; t += (int64_t)gridDim.x * blockDim.x) {
        int32_t *st = slots + t * K;
        for (int k = 0; k < K; k++) { // insertion sort of inv[t*K .. t*K + K) into st
            int32_t v = inv[t * K + k];
            int i = k;
            while (i > 0 && st[i - 1] > v) {
                st[i] = st[i - 1];
                i--;
            }
            st[i] = v;
        }
    }
}

// Builds slots in scratch (N*K ints; the first N*K ints of scratch are inv). Returns slots.
static int32_t *moe_build_slots(const Tensor *order, int64_t N, int K, int code) {
    const int64_t NK = N * K;
    const size_t arr = cuda_align256((size_t)(NK > 0 ? NK : 1) * sizeof(int32_t));
    char *scr = (char *)cuda_scratch(2 * arr);
    int32_t *inv = (int32_t *)scr, *slots = (int32_t *)(scr + arr);
    cudaStream_t s = cuda_stream();
    CUDA_CHECK(cudaMemsetAsync(inv, 0xFF, (size_t)NK * sizeof(int32_t), s));
    moe_invert_kernel<<<cuda_grid(NK, 256), 256, 0, s>>>(inv, (const int32_t *)order->data, NK, code,
                                                         cuda_dev_error());
    CUDA_LAUNCH_CHECK("moe_invert_kernel");
    moe_slots_kernel<<<cuda_grid(N, 128), 128, 0, s>>>(slots, inv, N, K);
    CUDA_LAUNCH_CHECK("moe_slots_kernel");
    return slots;
}

// dx[t] (+)= sum over t's slots (ascending) of dx_sorted[slot]
template <typename T>
__global__ void moe_gather_bwd_kernel(T *dx, const T *dx_sorted, const int32_t *slots, int64_t N, int64_t d, int K,
                                      int accumulate) {
    const int64_t n = N * d;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t t = i / d, c = i % d;
        float acc = accumulate ? to_f(dx[i]) : 0.0f;
        for (int k = 0; k < K; k++) {
            int32_t j = slots[t * K + k];
            if (j >= 0) acc = __fadd_rn(acc, to_f(dx_sorted[(int64_t)j * d + c]));
        }
        dx[i] = from_f<T>(acc);
    }
}

// out[t] (+)= sum over t's slots (ascending) of gates[order[slot]] * y_sorted[slot]. out may be F32 (the BF16
// model's FP32 residual stream) while y_sorted is BF16.
template <typename T, typename TY>
__global__ void moe_combine_kernel(T *out, const TY *y_sorted, const float *gates, const int32_t *order,
                                   const int32_t *slots, int64_t N, int64_t d, int K, int accumulate) {
    const int64_t n = N * d;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t t = i / d, c = i % d;
        float acc = accumulate ? to_f(out[i]) : 0.0f;
        for (int k = 0; k < K; k++) {
            int32_t j = slots[t * K + k];
            if (j >= 0) acc = __fadd_rn(acc, __fmul_rn(gates[order[j]], to_f(y_sorted[(int64_t)j * d + c])));
        }
        out[i] = from_f<T>(acc);
    }
}

// One warp per sorted row j: dy[j] = gate * dout[token];  dgates[pair] = <dout[token], y[j]>.
template <typename T>
__global__ void moe_combine_bwd_kernel(T *dy_sorted, float *dgates, const T *dout, const T *y_sorted,
                                       const float *gates, const int32_t *order, int64_t NK, int64_t d, int K,
                                       CudaDevError *err) {
    const int lane = threadIdx.x & 31;
    for (int64_t j = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5; j < NK;
         j += ((int64_t)gridDim.x * blockDim.x) >> 5) {
        const int32_t p = order[j];
        if (p < 0 || p >= NK) {
            if (lane == 0) dev_error(err, ERR_COMBINE_BWD_ORDER, j, p, NK);
            continue;
        }
        const T *g = dout + (int64_t)(p / K) * d, *y = y_sorted + j * d;
        T *dy = dy_sorted + j * d;
        const float gate = gates[p];
        float acc = 0.0f;
        for (int64_t c = lane; c < d; c += 32) {
            float gc = to_f(g[c]);
            dy[c] = from_f<T>(gate * gc);
            acc += gc * to_f(y[c]);
        }
        acc = warp_sum(acc);
        if (lane == 0) dgates[p] = acc;
    }
}

extern "C" void cuda_moe_gather(Tensor x_sorted, Tensor x, Tensor order, int top_k) {
    const char *op = "moe_gather";
    cuda_need_float(op, "x_sorted", &x_sorted, 2);
    cuda_need_float(op, "x", &x, 2);
    cuda_same_dtype(op, "x_sorted", &x_sorted, "x", &x);
    if (top_k <= 0) die("%s: top_k %d must be positive", op, top_k);
    const int64_t N = x.shape[0], d = x.shape[1], NK = N * top_k;
    cpu_agree(op, "x_sorted", &x_sorted, x_sorted.shape[1], "x", &x, d, "d");
    cpu_expect(op, "x_sorted", &x_sorted, x_sorted.shape[0], NK, "rows (N * top_k)");
    check_order(op, &order, NK);
    if (NK == 0 || d == 0 || moe_gather_v2(x_sorted, x, order, top_k, N, d)) return;
    cudaStream_t s = cuda_stream();
    const int64_t row_bytes = d * (int64_t)dtype_size(x.dtype);
    if (cuda_rows16(x.data, row_bytes) && cuda_rows16(x_sorted.data, row_bytes) && row_bytes / 16 <= INT32_MAX) {
        moe_gather_rows16_kernel<<<cuda_grid(NK * 32, 256), 256, 0, s>>>((uint4 *)x_sorted.data, (const uint4 *)x.data,
                                                                         (const int32_t *)order.data, NK,
                                                                         (int)(row_bytes / 16), top_k,
                                                                         cuda_dev_error());
        CUDA_LAUNCH_CHECK("moe_gather_rows16_kernel");
        return;
    }
    DISPATCH_FLOAT(x.dtype, T, {
        moe_gather_kernel<T><<<cuda_grid(NK * d, 256), 256, 0, s>>>((T *)x_sorted.data, (const T *)x.data,
                                                                    (const int32_t *)order.data, NK, d, top_k,
                                                                    cuda_dev_error());
    });
    CUDA_LAUNCH_CHECK("moe_gather_kernel");
}

extern "C" void cuda_moe_gather_backward(Tensor dx, Tensor dx_sorted, Tensor order, int top_k, int accumulate) {
    const char *op = "moe_gather_backward";
    cuda_need_float(op, "dx", &dx, 2);
    cuda_need_float(op, "dx_sorted", &dx_sorted, 2);
    cuda_same_dtype(op, "dx", &dx, "dx_sorted", &dx_sorted);
    if (top_k <= 0) die("%s: top_k %d must be positive", op, top_k);
    const int64_t N = dx.shape[0], d = dx.shape[1], NK = N * top_k;
    cpu_agree(op, "dx_sorted", &dx_sorted, dx_sorted.shape[1], "dx", &dx, d, "d");
    cpu_expect(op, "dx_sorted", &dx_sorted, dx_sorted.shape[0], NK, "rows (N * top_k)");
    check_order(op, &order, NK);
    if (N == 0 || d == 0 || moe_gather_backward_v2(dx, dx_sorted, order, top_k, N, d, accumulate)) return;
    const int32_t *slots = moe_build_slots(&order, N, top_k, ERR_GATHER_BWD_ORDER);
    cudaStream_t s = cuda_stream();
    DISPATCH_FLOAT(dx.dtype, T, {
        moe_gather_bwd_kernel<T><<<cuda_grid(N * d, 256), 256, 0, s>>>((T *)dx.data, (const T *)dx_sorted.data, slots,
                                                                       N, d, top_k, accumulate);
    });
    CUDA_LAUNCH_CHECK("moe_gather_bwd_kernel");
}

extern "C" void cuda_moe_combine(Tensor out, Tensor y_sorted, Tensor gates, Tensor order, int accumulate) {
    const char *op = "moe_combine";
    cuda_need_float(op, "out", &out, 2);
    cuda_need_float(op, "y_sorted", &y_sorted, 2);
    cpu_need(op, "gates", &gates, DT_F32, 2);
    const int64_t N = out.shape[0], d = out.shape[1], K = gates.shape[1], NK = N * K;
    cpu_agree(op, "gates", &gates, gates.shape[0], "out", &out, N, "N");
    cpu_agree(op, "y_sorted", &y_sorted, y_sorted.shape[1], "out", &out, d, "d");
    cpu_expect(op, "y_sorted", &y_sorted, y_sorted.shape[0], NK, "rows (N * top_k)");
    check_order(op, &order, NK);
    if (N == 0 || d == 0) return;
    if (K <= 0 || K > INT32_MAX) die("%s: gates have %lld columns", op, (long long)K);
    if (moe_combine_v2(out, y_sorted, gates, order, (int)K, N, d, accumulate)) return;
    const int32_t *slots = moe_build_slots(&order, N, (int)K, ERR_COMBINE_ORDER);
    cudaStream_t s = cuda_stream();
    DISPATCH_FLOAT(out.dtype, T, DISPATCH_FLOAT(y_sorted.dtype, TY, {
        moe_combine_kernel<T, TY><<<cuda_grid(N * d, 256), 256, 0, s>>>((T *)out.data, (const TY *)y_sorted.data,
                                                                        (const float *)gates.data,
                                                                        (const int32_t *)order.data, slots, N, d,
                                                                        (int)K, accumulate);
    }));
    CUDA_LAUNCH_CHECK("moe_combine_kernel");
}

extern "C" void cuda_moe_combine_backward(Tensor dy_sorted, Tensor dgates, Tensor dout, Tensor y_sorted, Tensor gates,
                                          Tensor order) {
    const char *op = "moe_combine_backward";
    cuda_need_float(op, "dy_sorted", &dy_sorted, 2);
    cpu_need(op, "dgates", &dgates, DT_F32, 2);
    cuda_need_float(op, "dout", &dout, 2);
    cuda_need_float(op, "y_sorted", &y_sorted, 2);
    cpu_need(op, "gates", &gates, DT_F32, 2);
    cuda_same_dtype(op, "dy_sorted", &dy_sorted, "dout", &dout);
    cuda_same_dtype(op, "y_sorted", &y_sorted, "dout", &dout);
    const int64_t N = dout.shape[0], d = dout.shape[1], K = gates.shape[1], NK = N * K;
    cpu_agree(op, "gates", &gates, gates.shape[0], "dout", &dout, N, "N");
    cpu_agree(op, "dgates", &dgates, dgates.shape[0], "gates", &gates, N, "N");
    cpu_agree(op, "dgates", &dgates, dgates.shape[1], "gates", &gates, K, "K");
    cpu_agree(op, "y_sorted", &y_sorted, y_sorted.shape[1], "dout", &dout, d, "d");
    cpu_expect(op, "y_sorted", &y_sorted, y_sorted.shape[0], NK, "rows (N * top_k)");
    cpu_agree(op, "dy_sorted", &dy_sorted, dy_sorted.shape[1], "dout", &dout, d, "d");
    cpu_expect(op, "dy_sorted", &dy_sorted, dy_sorted.shape[0], NK, "rows (N * top_k)");
    check_order(op, &order, NK);
    if (NK == 0) return;
    if (K > INT32_MAX) die("%s: gates have %lld columns", op, (long long)K);
    if (moe_combine_backward_v2(dy_sorted, dgates, dout, y_sorted, gates, order, (int)K, N, d)) return;
    cudaStream_t s = cuda_stream();
    DISPATCH_FLOAT(dout.dtype, T, {
        moe_combine_bwd_kernel<T><<<cuda_grid(NK * 32, 256), 256, 0, s>>>(
            (T *)dy_sorted.data, (float *)dgates.data, (const T *)dout.data, (const T *)y_sorted.data,
            (const float *)gates.data, (const int32_t *)order.data, NK, d, (int)K, cuda_dev_error());
    });
    CUDA_LAUNCH_CHECK("moe_combine_bwd_kernel");
}

// ---- v2 (DSV3_MEMOPS): token-major kernels over the inverse of order ----
// One warp per token: its K pairs' sorted positions (inv, -1 for pairs missing from order) are read once into shared
// memory, then the warp moves whole rows in 16-byte units (8 elements; VEC = 1 is the element-wise form for widths
// or views that do not allow it). Token-major, every row of the (N, d) side is read or written once and every row of
// the (N*K, d) side once: the bytes that must move. (The v1 kernels read the (N, d) side once per pair, from random
// rows, so K times from DRAM.) gather_backward and combine add the token's rows in ascending sorted position with
// explicitly rounded products, as v1 and the cpu do (the same bits in FP32). These kernels assume what
// moe_dispatch_plan produces: order is a permutation; out-of-range entries are reported and skipped, as in v1.
enum { MV2_WARPS = 8 }; // tokens (warps) per block

// inv (N*K) in scratch: the sorted position of each pair, -1 for pairs missing from order.
static int32_t *moe_build_inv(const Tensor *order, int64_t NK, int code) {
    int32_t *inv = (int32_t *)cuda_scratch(cuda_align256((size_t)(NK > 0 ? NK : 1) * sizeof(int32_t)));
    cudaStream_t s = cuda_stream();
    CUDA_CHECK(cudaMemsetAsync(inv, 0xFF, (size_t)NK * sizeof(int32_t), s));
    moe_invert_kernel<<<cuda_grid(NK, 256), 256, 0, s>>>(inv, (const int32_t *)order->data, NK, code,
                                                         cuda_dev_error());
    CUDA_LAUNCH_CHECK("moe_invert_kernel");
    return inv;
}

// x_sorted[inv[t*K + k]] = x[t] for every pair of token t. U: uint4 (16-byte units) or the element type; units per
// row. Two units per lane and step, so that two loads are in flight before the stores.
template <typename U>
__global__ void moe_gather_v2_kernel(U *x_sorted, const U *x, const int32_t *inv, int64_t N, int K, int units) {
    __shared__ int32_t sj[MV2_WARPS][32];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    for (int64_t t = (int64_t)blockIdx.x * MV2_WARPS + w; t < N; t += (int64_t)gridDim.x * MV2_WARPS) {
        if (lane < K) sj[w][lane] = inv[t * K + lane];
        __syncwarp();
        const U *src = x + t * units;
        for (int c = lane; c < units; c += 64) {
            const bool two = c + 32 < units;
            const U v0 = src[c];
            U v1 = v0;
            if (two) v1 = src[c + 32];
            for (int k = 0; k < K; k++) {
                const int32_t j = sj[w][k];
                if (j < 0) continue;
                U *dst = x_sorted + (int64_t)j * units;
                dst[c] = v0;
                if (two) dst[c + 32] = v1;
            }
        }
        __syncwarp(); // sj is rewritten for the next token
    }
}

// out[t] (+)= sum over t's pairs in ascending sorted position j of wgt * src[j], wgt = gates[pair] (combine) or 1
// (gather backward, gates NULL: 1 * x is x, so these are v1's sums). d = units * VEC columns.
template <typename T, typename TY, int VEC>
__global__ void moe_token_sum_v2_kernel(T *out, const TY *src, const float *gates, const int32_t *inv, int64_t N,
                                        int K, int units, int accumulate) {
    __shared__ int32_t raw[MV2_WARPS][32], sj[MV2_WARPS][32];
    __shared__ float sg[MV2_WARPS][32];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int64_t d = (int64_t)units * VEC;
    for (int64_t t = (int64_t)blockIdx.x * MV2_WARPS + w; t < N; t += (int64_t)gridDim.x * MV2_WARPS) {
        int32_t v = -1;
        float g = 1.0f;
        if (lane < K) {
            v = inv[t * K + lane];
            if (gates) g = gates[t * K + lane];
            raw[w][lane] = v;
        }
        __syncwarp();
        if (lane < K) { // rank of this pair's position among the token's K (missing ones, -1, first; ties by lane)
            int rank = 0;
            for (int i = 0; i < K; i++) {
                const int32_t o = raw[w][i];
                rank += (o < v) || (o == v && i < lane);
            }
            sj[w][rank] = v;
            sg[w][rank] = g;
        }
        __syncwarp();
        T *o_row = out + t * d;
        for (int c = lane; c < units; c += 32) {
            const int64_t col = (int64_t)c * VEC;
            float acc[VEC];
            if (accumulate) {
                ldv<VEC>(o_row + col, acc);
            } else {
#pragma unroll
                for (int e = 0; e < VEC; e++) acc[e] = 0.0f;
            }
            for (int r0 = 0; r0 < K; r0 += 4) { // four rows' loads in flight, then the sums in order
                float y[4][VEC];
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    const int r = r0 + i;
                    if (r < K && sj[w][r] >= 0) ldv<VEC>(src + (int64_t)sj[w][r] * d + col, y[i]);
                }
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    const int r = r0 + i;
                    if (r < K && sj[w][r] >= 0) {
                        const float gr = sg[w][r];
#pragma unroll
                        for (int e = 0; e < VEC; e++) acc[e] = __fadd_rn(acc[e], __fmul_rn(gr, y[i][e]));
                    }
                }
            }
            stv<VEC>(o_row + col, acc);
        }
        __syncwarp(); // raw/sj/sg are rewritten for the next token
    }
}

// For each pair (t, k) at sorted position j: dy_sorted[j] = gate * dout[t]; dgates[pair] = <dout[t], y_sorted[j]>.
// dout[t] is read from DRAM once (its K re-reads hit the cache). Two units per lane and step.
template <typename T, int VEC>
__global__ void moe_combine_bwd_v2_kernel(T *dy_sorted, float *dgates, const T *dout, const T *y_sorted,
                                          const float *gates, const int32_t *inv, int64_t N, int K, int units) {
    __shared__ int32_t sj[MV2_WARPS][32];
    __shared__ float sg[MV2_WARPS][32];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int64_t d = (int64_t)units * VEC;
    for (int64_t t = (int64_t)blockIdx.x * MV2_WARPS + w; t < N; t += (int64_t)gridDim.x * MV2_WARPS) {
        if (lane < K) {
            sj[w][lane] = inv[t * K + lane];
            sg[w][lane] = gates[t * K + lane];
        }
        __syncwarp();
        const T *g = dout + t * d;
        for (int k = 0; k < K; k++) {
            const int32_t j = sj[w][k];
            if (j < 0) continue; // the same for the whole warp
            const float gate = sg[w][k];
            const T *y = y_sorted + (int64_t)j * d;
            T *dy = dy_sorted + (int64_t)j * d;
            float dot = 0.0f;
            for (int c = lane; c < units; c += 64) {
                const bool two = c + 32 < units;
                float a0[VEC], b0[VEC], a1[VEC], b1[VEC], o[VEC];
                ldv<VEC>(g + (int64_t)c * VEC, a0);
                ldv<VEC>(y + (int64_t)c * VEC, b0);
                if (two) {
                    ldv<VEC>(g + (int64_t)(c + 32) * VEC, a1);
                    ldv<VEC>(y + (int64_t)(c + 32) * VEC, b1);
                }
#pragma unroll
                for (int e = 0; e < VEC; e++) {
                    o[e] = __fmul_rn(gate, a0[e]);
                    dot += a0[e] * b0[e];
                }
                stv<VEC>(dy + (int64_t)c * VEC, o);
                if (two) {
#pragma unroll
                    for (int e = 0; e < VEC; e++) {
                        o[e] = __fmul_rn(gate, a1[e]);
                        dot += a1[e] * b1[e];
                    }
                    stv<VEC>(dy + (int64_t)(c + 32) * VEC, o);
                }
            }
            dot = warp_sum(dot);
            if (lane == 0) dgates[t * K + k] = dot;
        }
        __syncwarp(); // sj/sg are rewritten for the next token
    }
}

// The v2 launches, after the entry points' checks. Each returns false, having done nothing, where v2 is not selected
// or does not apply (more than 32 pairs per token: one warp holds a token's pairs); v1 then runs.
static bool moe_gather_v2(Tensor x_sorted, Tensor x, Tensor order, int K, int64_t N, int64_t d) {
    if (!cuda_memops_v2("moe_gather") || K > 32 || d > INT32_MAX) return false;
    const int32_t *inv = moe_build_inv(&order, N * K, ERR_GATHER_ORDER);
    const unsigned grid = cuda_grid(N, MV2_WARPS);
    cudaStream_t s = cuda_stream();
    const int64_t row_bytes = d * (int64_t)dtype_size(x.dtype);
    if (cuda_rows16(x.data, row_bytes) && cuda_rows16(x_sorted.data, row_bytes)) {
        moe_gather_v2_kernel<uint4><<<grid, MV2_WARPS * 32, 0, s>>>((uint4 *)x_sorted.data, (const uint4 *)x.data, inv,
                                                                    N, K, (int)(row_bytes / 16));
    } else {
        DISPATCH_FLOAT(x.dtype, T, {
            moe_gather_v2_kernel<T><<<grid, MV2_WARPS * 32, 0, s>>>((T *)x_sorted.data, (const T *)x.data, inv, N, K,
                                                                    (int)d);
        });
    }
    CUDA_LAUNCH_CHECK("moe_gather_v2_kernel");
    return true;
}

// out (N, d) (+)= the token sums of src (N*K, d) (combine: gates (N, K); gather backward: gates NULL).
static void moe_token_sum_v2(Tensor out, Tensor src, const float *gates, const int32_t *inv, int64_t N, int K,
                             int64_t d, int accumulate, const char *name) {
    const unsigned grid = cuda_grid(N, MV2_WARPS);
    cudaStream_t s = cuda_stream();
    const bool v8 = cuda_vec8_ok(d, out.data, src.data);
    const int units = (int)(v8 ? d / 8 : d);
    DISPATCH_FLOAT(out.dtype, T, DISPATCH_FLOAT(src.dtype, TY, {
        if (v8)
            moe_token_sum_v2_kernel<T, TY, 8><<<grid, MV2_WARPS * 32, 0, s>>>(
                (T *)out.data, (const TY *)src.data, gates, inv, N, K, units, accumulate);
        else
            moe_token_sum_v2_kernel<T, TY, 1><<<grid, MV2_WARPS * 32, 0, s>>>(
                (T *)out.data, (const TY *)src.data, gates, inv, N, K, units, accumulate);
    }));
    CUDA_LAUNCH_CHECK(name);
}

static bool moe_gather_backward_v2(Tensor dx, Tensor dx_sorted, Tensor order, int K, int64_t N, int64_t d,
                                   int accumulate) {
    if (!cuda_memops_v2("moe_gather_backward") || K > 32 || d > INT32_MAX) return false;
    const int32_t *inv = moe_build_inv(&order, N * K, ERR_GATHER_BWD_ORDER);
    moe_token_sum_v2(dx, dx_sorted, NULL, inv, N, K, d, accumulate, "moe_token_sum_v2_kernel (gather backward)");
    return true;
}

static bool moe_combine_v2(Tensor out, Tensor y_sorted, Tensor gates, Tensor order, int K, int64_t N, int64_t d,
                           int accumulate) {
    if (!cuda_memops_v2("moe_combine") || K > 32 || d > INT32_MAX) return false;
    const int32_t *inv = moe_build_inv(&order, N * K, ERR_COMBINE_ORDER);
    moe_token_sum_v2(out, y_sorted, (const float *)gates.data, inv, N, K, d, accumulate,
                     "moe_token_sum_v2_kernel (combine)");
    return true;
}

static bool moe_combine_backward_v2(Tensor dy_sorted, Tensor dgates, Tensor dout, Tensor y_sorted, Tensor gates,
                                    Tensor order, int K, int64_t N, int64_t d) {
    if (!cuda_memops_v2("moe_combine_backward") || K > 32 || d > INT32_MAX) return false;
    const int32_t *inv = moe_build_inv(&order, N * K, ERR_COMBINE_BWD_ORDER);
    const unsigned grid = cuda_grid(N, MV2_WARPS);
    cudaStream_t s = cuda_stream();
    const bool v8 = cuda_vec8_ok(d, dy_sorted.data, dout.data, y_sorted.data);
    const int units = (int)(v8 ? d / 8 : d);
    DISPATCH_FLOAT(dout.dtype, T, {
        if (v8)
            moe_combine_bwd_v2_kernel<T, 8><<<grid, MV2_WARPS * 32, 0, s>>>(
                (T *)dy_sorted.data, (float *)dgates.data, (const T *)dout.data, (const T *)y_sorted.data,
                (const float *)gates.data, inv, N, K, units);
        else
            moe_combine_bwd_v2_kernel<T, 1><<<grid, MV2_WARPS * 32, 0, s>>>(
                (T *)dy_sorted.data, (float *)dgates.data, (const T *)dout.data, (const T *)y_sorted.data,
                (const float *)gates.data, inv, N, K, units);
    });
    CUDA_LAUNCH_CHECK("moe_combine_bwd_v2_kernel");
    return true;
}
