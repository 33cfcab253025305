// Backend-independent pieces of the ops interface (kernels/ops.h): dtype sizes, tensor views, the BF16 conversion
// used by the optimizer moments and checkpoints, and backend_get, which picks the op table by name at run time.
#include "kernels/ops.h"
#include "train/check.h"

#include <string.h>

size_t dtype_size(DType dt) {
    switch (dt) {
    case DT_F32: return 4;
    case DT_BF16: return 2;
    case DT_I32: return 4;
    case DT_F8E4M3: return 1;
    }
    die("dtype_size: unknown dtype %d", (int)dt);
}

int64_t tensor_numel(const Tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

// All constructors go through here so that a negative dimension (usually an overflowed size computation) is caught
// where the view is made, not as a wild pointer later.
static Tensor tensor_make(void *data, DType dt, int ndim, const int64_t *shape) {
    Tensor t;
    memset(&t, 0, sizeof t);
    t.data = data;
    t.dtype = dt;
    t.ndim = ndim;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) die("tensor_%dd: dimension %d is negative (%lld)", ndim, i, (long long)shape[i]);
        t.shape[i] = shape[i];
    }
    return t;
}

Tensor tensor_1d(void *data, DType dt, int64_t a) {
    int64_t s[1] = {a};
    return tensor_make(data, dt, 1, s);
}
Tensor tensor_2d(void *data, DType dt, int64_t a, int64_t b) {
    int64_t s[2] = {a, b};
    return tensor_make(data, dt, 2, s);
}
Tensor tensor_3d(void *data, DType dt, int64_t a, int64_t b, int64_t c) {
    int64_t s[3] = {a, b, c};
    return tensor_make(data, dt, 3, s);
}
Tensor tensor_4d(void *data, DType dt, int64_t a, int64_t b, int64_t c, int64_t d) {
    int64_t s[4] = {a, b, c, d};
    return tensor_make(data, dt, 4, s);
}

Tensor tensor_reshape2(Tensor t, int64_t a, int64_t b) {
    if (a < 0 || b < 0 || a * b != tensor_numel(&t))
        die("tensor_reshape2: cannot view %lld elements as (%lld, %lld)", (long long)tensor_numel(&t), (long long)a,
            (long long)b);
    return tensor_2d(t.data, t.dtype, a, b);
}

Tensor tensor_rows(Tensor t, int64_t begin, int64_t end) {
    if (t.ndim < 1) die("tensor_rows: a 0-d tensor has no rows");
    if (begin < 0 || end < begin || end > t.shape[0])
        die("tensor_rows: rows [%lld, %lld) out of range for %lld rows", (long long)begin, (long long)end,
            (long long)t.shape[0]);
    int64_t row = (int64_t)dtype_size(t.dtype); // bytes per first-dimension row
    for (int i = 1; i < t.ndim; i++) row *= t.shape[i];
    Tensor r = t;
    r.data = t.data ? (char *)t.data + begin * row : NULL;
    r.shape[0] = end - begin;
    return r;
}

// BF16 is the top half of an FP32. Round to nearest, ties to even: add 0x7FFF plus the lowest kept bit, then
// truncate. NaN must not round into Inf (a NaN with only low mantissa bits would), so NaNs keep their sign and
// become quiet NaNs.
uint16_t bf16_from_f32(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7F800000u) == 0x7F800000u && (u & 0x007FFFFFu)) return (uint16_t)((u >> 16) | 0x0040u);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float x;
    memcpy(&x, &u, 4);
    return x;
}

#ifdef USE_CUDA
extern const Backend backend_cuda;
#endif

const Backend *backend_get(const char *name) {
    if (!name) die("backend_get: no backend name given (expected \"cpu\" or \"cuda\")");
    if (strcmp(name, "cpu") == 0) return &backend_cpu;
    if (strcmp(name, "cuda") == 0) {
#ifdef USE_CUDA
        return &backend_cuda;
#else
        die("backend \"cuda\": this build has no CUDA backend: rebuild on a machine with nvcc");
#endif
    }
    die("unknown backend \"%s\" (expected \"cpu\" or \"cuda\")", name);
}
