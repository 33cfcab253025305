// Helpers for the GPU op tests (tests/gpu/test_*.c): device buffers made from host arrays (optionally stored as
// BF16), output buffers poisoned with NaN (0xFF bytes: NaN in F32 and BF16, -1 in I32) so that an element a kernel
// fails to write fails the comparison, downloads back to FP32, and comparisons that print the worst error.
//
// Every test compares the cuda op with the cpu op (the FP32 reference) on the same inputs. Only the Backend
// interface is used: the tests need no CUDA headers. The parent test runner never touches CUDA; each test runs in
// its own forked child and creates its own CUDA context.
#ifndef GPU_TESTUTIL_H
#define GPU_TESTUTIL_H

#include "kernels/ops.h"
#include "tests/ops_testutil.h"
#include "tests/test.h"

#include <stdint.h>

static const Backend *G, *C; // the cuda backend under test and the cpu reference

static inline void gt_init(uint64_t seed) {
    ops_rng_seed(seed);
    G = backend_get("cuda");
    C = backend_get("cpu");
}

// Host floats rounded to BF16 and back (what a BF16 tensor holds); the cpu reference gets these values.
static inline float *gt_round_bf16(const float *x, int64_t n) {
    float *y = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    for (int64_t i = 0; i < n; i++) y[i] = bf16_to_f32(bf16_from_f32(x[i]));
    return y;
}

// A device copy of h (n floats) stored as dt (F32 or BF16).
static inline void *gt_dev(const float *h, int64_t n, DType dt) {
    size_t es = dtype_size(dt);
    void *d = G->alloc((size_t)n * es);
    if (dt == DT_F32) {
        G->upload(d, h, (size_t)n * 4);
    } else {
        uint16_t *b = malloc((size_t)(n > 0 ? n : 1) * 2);
        for (int64_t i = 0; i < n; i++) b[i] = bf16_from_f32(h[i]);
        G->upload(d, b, (size_t)n * 2);
        free(b);
    }
    return d;
}

static inline void *gt_dev_i32(const int32_t *h, int64_t n) {
    void *d = G->alloc((size_t)n * 4);
    G->upload(d, h, (size_t)n * 4);
    return d;
}

// An output buffer of n elements of dt, every byte 0xFF.
static inline void *gt_dev_poison(int64_t n, DType dt) {
    size_t bytes = (size_t)n * dtype_size(dt);
    void *d = G->alloc(bytes);
    unsigned char *p = malloc(bytes ? bytes : 1);
    memset(p, 0xFF, bytes);
    G->upload(d, p, bytes);
    free(p);
    return d;
}

// Downloads n elements of dt as floats (malloc'd).
static inline float *gt_host(const void *d, int64_t n, DType dt) {
    float *h = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    if (dt == DT_F32) {
        G->download(h, d, (size_t)n * 4);
    } else {
        uint16_t *b = malloc((size_t)(n > 0 ? n : 1) * 2);
        G->download(b, d, (size_t)n * 2);
        for (int64_t i = 0; i < n; i++) h[i] = bf16_to_f32(b[i]);
        free(b);
    }
    return h;
}

static inline int32_t *gt_host_i32(const void *d, int64_t n) {
    int32_t *h = malloc((size_t)(n > 0 ? n : 1) * 4);
    G->download(h, d, (size_t)n * 4);
    return h;
}

// got ~= want elementwise: |got - want| <= rtol |want| + atol_rel * max|want|. Prints the worst relative error
// (for the record) and fails at the first violation, naming the element and the seed. NaN anywhere fails unless
// want is NaN there too.
// atol_abs: an absolute floor for results that cancel to (near) zero from O(1) terms (a T = 1 attention's dq, a
// d = 1 RMSNorm's dinp), where FP32 rounding of the terms, not of the result, sets the error.
static inline void gt_close_abs(const char *file, int line, const char *what, const float *got, const float *want,
                                int64_t n, double rtol, double atol_rel, double atol_abs) {
    double mx = 0.0, worst = 0.0;
    for (int64_t i = 0; i < n; i++)
        if (isfinite(want[i]) && fabs(want[i]) > mx) mx = fabs(want[i]);
    const double atol = atol_rel * mx + atol_abs + 1e-30;
    for (int64_t i = 0; i < n; i++) {
        if (isnan(want[i]) && isnan(got[i])) continue;
        double err = fabs((double)got[i] - (double)want[i]);
        if (!(err <= atol + rtol * fabs(want[i])))
            test_fail(file, line, "%s[%lld]: gpu %.9g, cpu %.9g (rtol %g, atol %g = %g x max %g; seed %llu)", what,
                      (long long)i, (double)got[i], (double)want[i], rtol, atol, atol_rel, mx,
                      (unsigned long long)ops_seed);
        double rel = err / (fabs(want[i]) + mx * 1e-3 + 1e-30);
        if (rel > worst) worst = rel;
    }
    printf("    %-40s n %-10lld max|cpu| %-10.4g worst err/(|cpu| + 1e-3 max) %.3g\n", what, (long long)n, mx, worst);
}
#define GT_CLOSE(what, got, want, n, rtol, atol_rel) \
    gt_close_abs(__FILE__, __LINE__, what, got, want, n, rtol, atol_rel, 0.0)
#define GT_CLOSE_ABS(what, got, want, n, rtol, atol_rel, atol_abs) \
    gt_close_abs(__FILE__, __LINE__, what, got, want, n, rtol, atol_rel, atol_abs)

// Bitwise-equal values (NaN matches NaN; -0 matches +0): for ops whose FP32 arithmetic is the cpu op's, operation
// by operation.
static inline void gt_exact(const char *file, int line, const char *what, const float *got, const float *want,
                            int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        if (isnan(want[i]) && isnan(got[i])) continue;
        if (!(got[i] == want[i]))
            test_fail(file, line, "%s[%lld]: gpu %.9g, cpu %.9g: expected the same bits (seed %llu)", what,
                      (long long)i, (double)got[i], (double)want[i], (unsigned long long)ops_seed);
    }
    printf("    %-40s n %-10lld exact\n", what, (long long)n);
}
#define GT_EXACT(what, got, want, n) gt_exact(__FILE__, __LINE__, what, got, want, n)

static inline void gt_exact_i32(const char *file, int line, const char *what, const int32_t *got, const int32_t *want,
                                int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (got[i] != want[i])
            test_fail(file, line, "%s[%lld]: gpu %d, cpu %d (seed %llu)", what, (long long)i, got[i], want[i],
                      (unsigned long long)ops_seed);
    printf("    %-40s n %-10lld exact\n", what, (long long)n);
}
#define GT_EXACT_I32(what, got, want, n) gt_exact_i32(__FILE__, __LINE__, what, got, want, n)

#endif
