// Token embedding on the GPU: a row lookup forward; the backward scatter-add made deterministic by a stable sort of
// the token ids (CUB radix sort), then one block per distinct id summing that id's rows in token order (the cpu op's
// order, so in FP32 the result is bitwise the cpu's).
// out and table share a dtype (F32 or BF16); dtable is F32 (parameter gradients are FP32), dout F32 or BF16.
#include "kernels/cuda/cuda_common.cuh"

#include <cub/device/device_radix_sort.cuh>

// The v2 forms (DSV3_MEMOPS, end of file). The backward sums fixed chunks of EMB_CHUNK sorted rows (see there).
enum { EMB_CHUNK = 64, EMB_BATCH = 4 };
static bool embedding_forward_v2(Tensor out, Tensor ids, Tensor table, int64_t N, int64_t V, int64_t d);
static void embedding_backward_v2(Tensor dtable, Tensor dout, const int32_t *keys, const int32_t *tokens, float *part,
                                  int64_t N, int64_t V, int64_t d);

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
    if (N == 0 || d == 0 || embedding_forward_v2(out, ids, table, N, V, d)) return;
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
    const bool v2 = cuda_memops_v2(op) && d <= 65535LL * 64; // column tiles fit grid.y
    const size_t chunks = (size_t)((N + EMB_CHUNK - 1) / EMB_CHUNK);
    const size_t part_bytes = v2 ? cuda_align256(2 * chunks * (size_t)d * sizeof(float)) : 0; // part_head, part_tail
    char *scratch = (char *)cuda_scratch(4 * arr + cuda_align256(temp_bytes) + part_bytes);
    int32_t *keys_in = (int32_t *)scratch, *keys_out = (int32_t *)(scratch + arr);
    int32_t *vals_in = (int32_t *)(scratch + 2 * arr), *vals_out = (int32_t *)(scratch + 3 * arr);
    void *temp = scratch + 4 * arr;
    embedding_keys_kernel<<<cuda_grid(N, 256), 256, 0, s>>>(keys_in, vals_in, (const int32_t *)ids.data, N, V,
                                                            cuda_dev_error());
    CUDA_LAUNCH_CHECK("embedding_keys_kernel");
    CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys_in, keys_out, vals_in, vals_out, (int)N, 0,
                                               end_bit, s));
    if (v2) {
        embedding_backward_v2(dtable, dout, keys_out, vals_out,
                              (float *)(scratch + 4 * arr + cuda_align256(temp_bytes)), N, V, d);
        return;
    }
    unsigned grid = (unsigned)(N < 65535 * 8 ? N : 65535 * 8);
    DISPATCH_FLOAT(dout.dtype, T, {
        embedding_bwd_kernel<T><<<grid, 256, 0, s>>>((float *)dtable.data, (const T *)dout.data, keys_out, vals_out,
                                                     N, V, d);
    });
    CUDA_LAUNCH_CHECK("embedding_bwd_kernel");
}

// ---- v2 (DSV3_MEMOPS) ----

// Forward: one warp per token copies the table row in 16-byte units (U = uint4) or elements (U = T).
template <typename U>
__global__ void embedding_fwd_v2_kernel(U *out, const int32_t *ids, const U *table, int64_t N, int64_t V, int units,
                                        CudaDevError *err) {
    const int lane = threadIdx.x & 31;
    for (int64_t n = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5; n < N;
         n += ((int64_t)gridDim.x * blockDim.x) >> 5) {
        const int32_t id = ids[n];
        if (id < 0 || id >= V) {
            if (lane == 0) dev_error(err, ERR_EMBED_FWD_ID, n, id, V);
            continue;
        }
        const U *src = table + (int64_t)id * units;
        U *dst = out + n * units;
        for (int c = lane; c < units; c += 64) { // two loads in flight before the stores
            const U a = src[c];
            if (c + 32 < units) {
                const U b = src[c + 32];
                dst[c + 32] = b;
            }
            dst[c] = a;
        }
    }
}

static bool embedding_forward_v2(Tensor out, Tensor ids, Tensor table, int64_t N, int64_t V, int64_t d) {
    if (!cuda_memops_v2("embedding_forward") || d > INT32_MAX) return false;
    cudaStream_t s = cuda_stream();
    const int64_t row_bytes = d * (int64_t)dtype_size(table.dtype);
    const unsigned grid = cuda_grid(N * 32, 256);
    if (cuda_rows16(out.data, row_bytes) && cuda_rows16(table.data, row_bytes)) {
        embedding_fwd_v2_kernel<uint4><<<grid, 256, 0, s>>>((uint4 *)out.data, (const int32_t *)ids.data,
                                                            (const uint4 *)table.data, N, V, (int)(row_bytes / 16),
                                                            cuda_dev_error());
    } else {
        DISPATCH_FLOAT(table.dtype, T, {
            embedding_fwd_v2_kernel<T><<<grid, 256, 0, s>>>((T *)out.data, (const int32_t *)ids.data,
                                                            (const T *)table.data, N, V, (int)d, cuda_dev_error());
        });
    }
    CUDA_LAUNCH_CHECK("embedding_fwd_v2_kernel");
    return true;
}

// Backward: v1 gives each run of equal sorted ids to one block, which walks the run's rows one after another; with
// a byte-level vocabulary (a few hundred ids, the space alone in ~15% of the tokens) one block then sums thousands
// of rows while the rest of the GPU idles (3.6 ms for 16384 x 1536). v2 cuts the sorted positions into fixed chunks
// of EMB_CHUNK rows, one block per (chunk, column tile), each thread VEC columns:
//   - a run that lies inside one chunk is summed there onto its dtable row, starting from the row's value and adding
//     in token order (the cpu's order: the same bits in FP32);
//   - a run that crosses chunk boundaries leaves one partial per chunk: the chunk where it begins sums onto the
//     dtable value (part_tail), each later chunk from zero (part_head); then the fix-up kernel, in the run's first
//     chunk, adds the later partials in chunk order and stores the row.
// Fixed chunks, fixed orders, no atomics: deterministic (bits independent of scheduling), and equal to the cpu's up
// to the rounding of the partial sums for ids that span more than one chunk.
template <typename T, int VEC>
__global__ void embedding_bwd_v2_kernel(float *dtable, float *part_head, float *part_tail, const T *dout,
                                        const int32_t *keys, const int32_t *tokens, int64_t N, int64_t V, int64_t d) {
    __shared__ int32_t sk[EMB_CHUNK], st[EMB_CHUNK];
    const int64_t c = blockIdx.x, j0 = c * EMB_CHUNK, j1 = j0 + EMB_CHUNK < N ? j0 + EMB_CHUNK : N;
    const int n = (int)(j1 - j0);
    for (int i = threadIdx.x; i < n; i += blockDim.x) sk[i] = keys[j0 + i], st[i] = tokens[j0 + i];
    __syncthreads();
    const int64_t col = ((int64_t)blockIdx.y * blockDim.x + threadIdx.x) * VEC;
    if (col >= d) return; // after the block's only barrier
    // Whether the chunk's first run began in an earlier chunk, and whether its last run goes on past the chunk.
    const bool head_open = j0 > 0 && keys[j0 - 1] == sk[0], tail_open = j1 < N && keys[j1] == sk[n - 1];
    for (int i = 0; i < n;) {
        const int32_t id = sk[i];
        int e = i + 1;
        while (e < n && sk[e] == id) e++; // the run's rows in this chunk: [i, e)
        const bool head = i == 0 && head_open, tail = e == n && tail_open;
        if (id < V) { // a bad id was reported by the keys kernel and sorted past every row (key V)
            float *row = dtable + (int64_t)id * d + col;
            float acc[VEC];
            if (head) {
#pragma unroll
                for (int v = 0; v < VEC; v++) acc[v] = 0.0f;
            } else {
                ldv<VEC>(row, acc);
            }
            for (int r0 = i; r0 < e; r0 += EMB_BATCH) { // EMB_BATCH rows' loads in flight, then the sums in order
                float y[EMB_BATCH][VEC];
#pragma unroll
                for (int b = 0; b < EMB_BATCH; b++)
                    if (r0 + b < e) ldv<VEC>(dout + (int64_t)st[r0 + b] * d + col, y[b]);
#pragma unroll
                for (int b = 0; b < EMB_BATCH; b++)
                    if (r0 + b < e)
#pragma unroll
                        for (int v = 0; v < VEC; v++) acc[v] += y[b][v];
            }
            if (head) stv<VEC>(part_head + c * d + col, acc);
            else if (tail) stv<VEC>(part_tail + c * d + col, acc);
            else stv<VEC>(row, acc);
        }
        i = e;
    }
}

// For each run that begins in chunk c and goes on past it: row = part_tail[c] + part_head[c + 1] + ... in chunk
// order. Chunk c2 > c belongs to the run iff its first sorted key is the run's id (keys are sorted); the batch's
// boundary keys and partials are loaded together.
template <int VEC>
__global__ void embedding_bwd_fix_kernel(float *dtable, const float *part_head, const float *part_tail,
                                         const int32_t *keys, int64_t N, int64_t V, int64_t d) {
    const int64_t c = blockIdx.x, j0 = c * EMB_CHUNK, j1 = j0 + EMB_CHUNK < N ? j0 + EMB_CHUNK : N;
    const int32_t id = keys[j1 - 1];
    if (id >= V || j1 >= N || keys[j1] != id) return; // the last run ends in this chunk (or is the bad-id run)
    if (j0 > 0 && keys[j0 - 1] == id) return;          // it began in an earlier chunk, which owns it
    const int64_t col = ((int64_t)blockIdx.y * blockDim.x + threadIdx.x) * VEC;
    if (col >= d) return;
    float acc[VEC];
    ldv<VEC>(part_tail + c * d + col, acc);
    for (int64_t c0 = c + 1;; c0 += EMB_BATCH) {
        bool in[EMB_BATCH];
        float p[EMB_BATCH][VEC];
#pragma unroll
        for (int b = 0; b < EMB_BATCH; b++) {
            const int64_t jb = (c0 + b) * EMB_CHUNK;
            in[b] = jb < N && keys[jb] == id;
            if (in[b]) ldv<VEC>(part_head + (c0 + b) * d + col, p[b]);
        }
        bool more = true;
#pragma unroll
        for (int b = 0; b < EMB_BATCH; b++) {
            more = more && in[b];
            if (more)
#pragma unroll
                for (int v = 0; v < VEC; v++) acc[v] += p[b][v];
        }
        if (!more) break;
    }
    stv<VEC>(dtable + (int64_t)id * d + col, acc);
}

// After the sort (keys_out, vals_out). part: 2 * chunks * d floats of scratch.
static void embedding_backward_v2(Tensor dtable, Tensor dout, const int32_t *keys, const int32_t *tokens, float *part,
                                  int64_t N, int64_t V, int64_t d) {
    const int64_t chunks = (N + EMB_CHUNK - 1) / EMB_CHUNK;
    float *part_head = part, *part_tail = part + chunks * d;
    const bool v8 = cuda_vec8_ok(d, dtable.data, dout.data);
    const int64_t units = v8 ? d / 8 : d;
    const int threads = units > 32 ? 64 : 32; // 1536 F32 or BF16 columns: 192 units, 3 tiles of 64 threads
    const dim3 grid((unsigned)chunks, (unsigned)((units + threads - 1) / threads));
    cudaStream_t s = cuda_stream();
    DISPATCH_FLOAT(dout.dtype, T, {
        if (v8)
            embedding_bwd_v2_kernel<T, 8><<<grid, threads, 0, s>>>((float *)dtable.data, part_head, part_tail,
                                                                   (const T *)dout.data, keys, tokens, N, V, d);
        else
            embedding_bwd_v2_kernel<T, 1><<<grid, threads, 0, s>>>((float *)dtable.data, part_head, part_tail,
                                                                   (const T *)dout.data, keys, tokens, N, V, d);
    });
    CUDA_LAUNCH_CHECK("embedding_bwd_v2_kernel");
    if (v8)
        embedding_bwd_fix_kernel<8><<<grid, threads, 0, s>>>((float *)dtable.data, part_head, part_tail, keys, N, V, d);
    else
        embedding_bwd_fix_kernel<1><<<grid, threads, 0, s>>>((float *)dtable.data, part_head, part_tail, keys, N, V, d);
    CUDA_LAUNCH_CHECK("embedding_bwd_fix_kernel");
}
