// Token embedding on the GPU: a row lookup forward; the backward scatter-add made deterministic by a stable sort of
// the token ids (CUB radix sort), then one block per distinct id summing that id's rows in token order (the cpu op's
// order, so in FP32 the result is bitwise the cpu's).
// out and table share a dtype (F32 or BF16); dtable is F32 (parameter gradients are FP32), dout F32 or BF16.
#include "kernels/cuda/cuda_common.cuh"

#include <cub/device/device_radix_sort.cuh>

template <typename T>
__global__ void embedding_fwd_kernel(T *out, const int32_t *ids, const T *table, int64_t N, int64_t V, int64_t d,
                                     CudaDevError *err) {
    const int64_t n_el = N * d;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n_el; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t n = i / d, c = i % d;
        int32_t id = ids[n];
        if (id < 0 || id >= V) {
            dev_error(err, ERR_EMBED_FWD_ID, n, id, V);
            continue;
        }
        out[i] = table[(int64_t)id * d + c];
    }
}

// keys = ids (a bad id becomes V, past every real row, and is reported), vals = token index.
__global__ void embedding_keys_kernel(int32_t *keys, int32_t *vals, const int32_t *ids, int64_t N, int64_t V,
                                      CudaDevError *err) {
    for (int64_t n = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; n < N; n += (int64_t)gridDim.x * blockDim.x) {
        int32_t id = ids[n];
        if (id < 0 || id >= V) {
            dev_error(err, ERR_EMBED_BWD_ID, n, id, V);
            id = (int32_t)V;
        }
        keys[n] = id;
        vals[n] = (int32_t)n;
    }
}

// One block per sorted position that starts a run of equal ids: dtable[id] += the run's rows in token order.
template <typename T>
__global__ void embedding_bwd_kernel(float *dtable, const T *dout, const int32_t *keys, const int32_t *tokens, int64_t N,
                                     int64_t V, int64_t d) {
    for (int64_t j = blockIdx.x; j < N; j += gridDim.x) {
        const int32_t id = keys[j];
        if ((j > 0 && keys[j - 1] == id) || id >= V) continue;
        int64_t end = j + 1;
        while (end < N && keys[end] == id) end++;
        float *row = dtable + (int64_t)id * d;
        for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
            float acc = row[c];
            for (int64_t r = j; r < end; r++) acc += to_f(dout[(int64_t)tokens[r] * d + c]);
            row[c] = acc;
        }
    }
}

extern "C" void cuda_embedding_forward(Tensor out, Tensor ids, Tensor table) {
    const char *op = "embedding_forward";
    cuda_need_float(op, "out", &out, 0);
    cpu_need(op, "ids", &ids, DT_I32, 0);
    cuda_need_float(op, "table", &table, 2);
    cuda_same_dtype(op, "out", &out, "table", &table);
    int64_t N = tensor_numel(&ids), V = table.shape[0], d = table.shape[1];
    cpu_agree(op, "out", &out, cpu_cols(&out), "table", &table, d, "d");
    cpu_agree(op, "out", &out, cpu_rows(&out), "ids", &ids, N, "N");
    if (N == 0 || d == 0) return;
    cudaStream_t s = cuda_stream();
    DISPATCH_FLOAT(out.dtype, T, {
        embedding_fwd_kernel<T><<<cuda_grid(N * d, 256), 256, 0, s>>>((T *)out.data, (const int32_t *)ids.data,
                                                                      (const T *)table.data, N, V, d,
                                                                      cuda_dev_error());
    });
    CUDA_LAUNCH_CHECK("embedding_fwd_kernel");
}

extern "C" void cuda_embedding_backward(Tensor dtable, Tensor dout, Tensor ids) {
    const char *op = "embedding_backward";
    cpu_need(op, "dtable", &dtable, DT_F32, 2);
    cuda_need_float(op, "dout", &dout, 0);
    cpu_need(op, "ids", &ids, DT_I32, 0);
    int64_t N = tensor_numel(&ids), V = dtable.shape[0], d = dtable.shape[1];
    cpu_agree(op, "dout", &dout, cpu_cols(&dout), "dtable", &dtable, d, "d");
    cpu_agree(op, "dout", &dout, cpu_rows(&dout), "ids", &ids, N, "N");
    if (N == 0 || d == 0) return;
    if (N > INT32_MAX || V >= INT32_MAX) die("%s: %lld ids or %lld rows do not fit 32 bits", op, (long long)N, (long long)V);
    cudaStream_t s = cuda_stream();
    int end_bit = 1;
    while (end_bit < 31 && (1ll << end_bit) <= V) end_bit++; // keys are in [0, V]
    size_t temp_bytes = 0;
    CUDA_CHECK(cub::DeviceRadixSort::SortPairs(NULL, temp_bytes, (const int32_t *)NULL, (int32_t *)NULL,
                                               (const int32_t *)NULL, (int32_t *)NULL, (int)N, 0, end_bit, s));
    size_t arr = cuda_align256((size_t)N * sizeof(int32_t));
    char *scratch = (char *)cuda_scratch(4 * arr + cuda_align256(temp_bytes));
    int32_t *keys_in = (int32_t *)scratch, *keys_out = (int32_t *)(scratch + arr);
    int32_t *vals_in = (int32_t *)(scratch + 2 * arr), *vals_out = (int32_t *)(scratch + 3 * arr);
    void *temp = scratch + 4 * arr;
    embedding_keys_kernel<<<cuda_grid(N, 256), 256, 0, s>>>(keys_in, vals_in, (const int32_t *)ids.data, N, V,
                                                            cuda_dev_error());
    CUDA_LAUNCH_CHECK("embedding_keys_kernel");
    CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys_in, keys_out, vals_in, vals_out, (int)N, 0,
                                               end_bit, s));
    unsigned grid = (unsigned)(N < 65535 * 8 ? N : 65535 * 8);
    DISPATCH_FLOAT(dout.dtype, T, {
        embedding_bwd_kernel<T><<<grid, 256, 0, s>>>((float *)dtable.data, (const T *)dout.data, keys_out, vals_out,
                                                     N, V, d);
    });
    CUDA_LAUNCH_CHECK("embedding_bwd_kernel");
}
