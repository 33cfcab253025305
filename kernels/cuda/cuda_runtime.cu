// The cuda backend's runtime: the stream, the cuBLASLt handle and workspace, the scratch buffer, the device error
// record, the memory ops of the Backend table, and the dtype checks the ops share.
#include "kernels/cuda/cuda_common.cuh"

#include <string.h>

static cudaStream_t g_stream;
static int g_stream_ready;

// The first call creates the stream; the device is whatever the caller selected (cudaSetDevice) before, device 0
// by default. A non-blocking stream: nothing on the legacy default stream orders against it, so every backend
// operation, memsets included, goes through this stream.
int cuda_sm_count(void) {
    static int n = 0; // the backend uses one device per process
    if (!n) {
        int dev = 0;
        CUDA_CHECK(cudaGetDevice(&dev));
        CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
    }
    return n;
}

cudaStream_t cuda_stream(void) {
    if (!g_stream_ready) {
        int n = 0;
        cudaError_t e = cudaGetDeviceCount(&n);
        if (e != cudaSuccess || n == 0)
            die("backend \"cuda\": no usable CUDA device (%s)", e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
        CUDA_CHECK(cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking));
        g_stream_ready = 1;
    }
    return g_stream;
}

static cublasLtHandle_t g_lt;
static void *g_lt_ws;
// cuBLASLt's recommended workspace on Hopper is 32 MiB; allocated once.
static const size_t LT_WS_BYTES = 32u << 20;

cublasLtHandle_t cuda_lt_handle(void) {
    if (!g_lt) {
        cuda_stream();
        CUBLAS_CHECK(cublasLtCreate(&g_lt));
        CUDA_CHECK(cudaMalloc(&g_lt_ws, LT_WS_BYTES));
    }
    return g_lt;
}

void *cuda_lt_workspace(size_t *bytes) {
    cuda_lt_handle();
    *bytes = LT_WS_BYTES;
    return g_lt_ws;
}

static void *g_scratch;
static size_t g_scratch_bytes;

void *cuda_scratch(size_t bytes) {
    if (bytes > g_scratch_bytes) {
        cudaStream_t s = cuda_stream();
        // Kernels already queued may still read the old buffer: wait for them before freeing it.
        CUDA_CHECK(cudaStreamSynchronize(s));
        if (g_scratch) CUDA_CHECK(cudaFree(g_scratch));
        size_t n = cuda_align256(bytes + bytes / 4); // some headroom so slightly larger requests do not regrow
        CUDA_CHECK(cudaMalloc(&g_scratch, n));
        g_scratch_bytes = n;
    }
    if (!g_scratch) return cuda_scratch(256);
    return g_scratch;
}

// The record lives in device memory (kernels write it with a device-scope atomicCAS); the host reads it after the
// stream syncs that the interface already has (download, synchronize, and the ops returning host values), one small
// copy each time.
static CudaDevError *g_err_dev;

CudaDevError *cuda_dev_error(void) {
    if (!g_err_dev) {
        cudaStream_t s = cuda_stream();
        CUDA_CHECK(cudaMalloc((void **)&g_err_dev, sizeof(CudaDevError)));
        CUDA_CHECK(cudaMemsetAsync(g_err_dev, 0, sizeof(CudaDevError), s));
        CUDA_CHECK(cudaStreamSynchronize(s));
    }
    return g_err_dev;
}

// What each code means: the op and the index tensor whose entry was out of range.
static void err_text(int code, const char **op, const char **name) {
    *name = "order";
    switch (code) {
    case ERR_EMBED_FWD_ID: *op = "embedding_forward", *name = "ids"; return;
    case ERR_EMBED_BWD_ID: *op = "embedding_backward", *name = "ids"; return;
    case ERR_CE_TARGET: *op = "cross_entropy_forward_backward", *name = "targets"; return;
    case ERR_ROUTE_BWD_IDX: *op = "moe_route_backward", *name = "topk_idx"; return;
    case ERR_BALANCE_IDX: *op = "moe_balance_loss", *name = "topk_idx"; return;
    case ERR_PLAN_IDX: *op = "moe_dispatch_plan", *name = "topk_idx"; return;
    case ERR_GATHER_ORDER: *op = "moe_gather"; return;
    case ERR_GATHER_BWD_ORDER: *op = "moe_gather_backward"; return;
    case ERR_COMBINE_ORDER: *op = "moe_combine"; return;
    case ERR_COMBINE_BWD_ORDER: *op = "moe_combine_backward"; return;
    default: *op = "unknown op", *name = "index"; return;
    }
}

void cuda_check_device_errors(void) {
    if (!g_err_dev) return;
    CudaDevError e;
    cudaStream_t s = cuda_stream();
    CUDA_CHECK(cudaMemcpyAsync(&e, g_err_dev, sizeof e, cudaMemcpyDeviceToHost, s));
    CUDA_CHECK(cudaStreamSynchronize(s));
    if (e.code == ERR_NONE) return;
    if (e.code == ERR_GROUPED_OFFSETS) // not a range error: the table must start at 0, not decrease, end <= rows
        die("grouped_matmul: device offsets[%lld] = %lld breaks the segment table (offsets[0] = 0, non-decreasing, "
            "at most the %lld rows; found on the GPU; reported at the next synchronization)",
            (long long)e.index, (long long)e.value, (long long)e.bound);
    const char *op, *name;
    err_text(e.code, &op, &name);
    die("%s: %s[%lld] = %lld is outside [0, %lld) (found on the GPU; reported at the next synchronization)", op, name,
        (long long)e.index, (long long)e.value, (long long)e.bound);
}

void cuda_sync_and_check(void) {
    CUDA_CHECK(cudaStreamSynchronize(cuda_stream()));
    cuda_check_device_errors();
}

void cuda_need_float(const char *op, const char *name, const Tensor *t, int ndim) {
    if (t->dtype != DT_F32 && t->dtype != DT_BF16) {
        char s[96];
        die("%s: %s %s has dtype %d, expected f32 or bf16", op, name, cpu_shape_str(t, s), (int)t->dtype);
    }
    cpu_need(op, name, t, t->dtype, ndim);
}

void cuda_same_dtype(const char *op, const char *an, const Tensor *a, const char *bn, const Tensor *b) {
    if (a->dtype == b->dtype) return;
    char sa[96], sb[96];
    die("%s: %s %s and %s %s must have the same dtype (%s vs %s)", op, an, cpu_shape_str(a, sa), bn,
        cpu_shape_str(b, sb), a->dtype == DT_F32 ? "f32" : a->dtype == DT_BF16 ? "bf16" : "other",
        b->dtype == DT_F32 ? "f32" : b->dtype == DT_BF16 ? "bf16" : "other");
}

// ---- Backend memory ops ----

// Zero-filled as the interface promises (parameter gradients rely on it). Allocation is start-up work: the memset is
// waited for, so the memory is ready for any stream.
extern "C" void *cuda_alloc(size_t bytes) {
    cudaStream_t s = cuda_stream();
    cuda_dev_error();
    size_t n = cuda_align256(bytes ? bytes : 1);
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, n);
    if (e != cudaSuccess) {
        size_t free_b = 0, total_b = 0;
        cudaMemGetInfo(&free_b, &total_b);
        die("cuda backend: out of device memory allocating %zu bytes (%zu of %zu bytes free): %s", bytes, free_b,
            total_b, cudaGetErrorString(e));
    }
    CUDA_CHECK(cudaMemsetAsync(p, 0, n, s));
    CUDA_CHECK(cudaStreamSynchronize(s));
    return p;
}

// Waits for the stream first: a kernel still reading p must finish before the memory goes back.
extern "C" void cuda_free(void *p) {
    if (!p) return;
    CUDA_CHECK(cudaStreamSynchronize(cuda_stream()));
    CUDA_CHECK(cudaFree(p));
}

// Returns when the copy is done, so the host buffer may be reused at once (uploads are start-up and per-batch
// work, not inside the step's kernels).
extern "C" void cuda_upload(void *dst, const void *src_host, size_t bytes) {
    if (!bytes) return;
    cudaStream_t s = cuda_stream();
    CUDA_CHECK(cudaMemcpyAsync(dst, src_host, bytes, cudaMemcpyHostToDevice, s));
    CUDA_CHECK(cudaStreamSynchronize(s));
}

extern "C" void cuda_download(void *dst_host, const void *src, size_t bytes) {
    cudaStream_t s = cuda_stream();
    if (bytes) CUDA_CHECK(cudaMemcpyAsync(dst_host, src, bytes, cudaMemcpyDeviceToHost, s));
    cuda_sync_and_check();
}

// memmove semantics like the cpu backend: cudaMemcpy of overlapping ranges is undefined, so an overlapping copy
// goes in pieces no longer than the shift, each piece's source and destination disjoint, in the order that reads
// every byte before it is overwritten (stream order serializes the pieces).
extern "C" void cuda_copy(void *dst, const void *src, size_t bytes) {
    if (!bytes || dst == src) return;
    cudaStream_t s = cuda_stream();
    char *d = (char *)dst;
    const char *sr = (const char *)src;
    size_t shift = d > sr ? (size_t)(d - sr) : (size_t)(sr - d);
    if (shift >= bytes) {
        CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, s));
        return;
    }
    if (d < sr) { // moving down: copy from the front
        for (size_t off = 0; off < bytes; off += shift) {
            size_t n = bytes - off < shift ? bytes - off : shift;
            CUDA_CHECK(cudaMemcpyAsync(d + off, sr + off, n, cudaMemcpyDeviceToDevice, s));
        }
    } else { // moving up: copy from the back
        for (size_t end = bytes; end > 0;) {
            size_t n = end < shift ? end : shift;
            end -= n;
            CUDA_CHECK(cudaMemcpyAsync(d + end, sr + end, n, cudaMemcpyDeviceToDevice, s));
        }
    }
}

extern "C" void cuda_zero(void *p, size_t bytes) {
    if (bytes) CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, cuda_stream()));
}

extern "C" void cuda_synchronize(void) { cuda_sync_and_check(); }

extern "C" void cuda_memory_in_use(size_t *used, size_t *total) {
    size_t free_b = 0, total_b = 0;
    cuda_stream();   // the context exists
    CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    *used = total_b - free_b;
    *total = total_b;
}
