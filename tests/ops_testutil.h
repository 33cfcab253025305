// Shared helpers for the op tests (tests/test_ops_*.c): a seeded PRNG, comparisons against double-precision
// references, central finite differences, and a check that an op dies with a given message.
//
// Every random input comes from the seed in ops_seed (fixed per test; OPS_TEST_SEED overrides it to explore), and
// every failure message prints it, so a failure can be replayed exactly.
#ifndef OPS_TESTUTIL_H
#define OPS_TESTUTIL_H

#include "kernels/ops.h"
#include "tests/test.h"

#include <stdint.h>
#include <sys/wait.h>
#include <unistd.h>

static uint64_t ops_seed, ops_state;

static inline void ops_rng_seed(uint64_t seed) {
    const char *env = getenv("OPS_TEST_SEED");
    ops_seed = env ? strtoull(env, NULL, 10) : seed;
    ops_state = ops_seed * 0x9E3779B97F4A7C15ull + 1;
}

// splitmix64
static inline uint64_t ops_rng_u64(void) {
    uint64_t z = (ops_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Uniform in [-1, 1).
static inline float ops_rng_unit(void) { return (float)((double)(ops_rng_u64() >> 11) * 0x1.0p-53 * 2.0 - 1.0); }

static inline float *ops_rand(int64_t n, float amp) {
    float *x = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    for (int64_t i = 0; i < n; i++) x[i] = amp * ops_rng_unit();
    return x;
}

// An optional tensor argument left out (data NULL).
static inline Tensor ops_none(DType dt) { return tensor_1d(NULL, dt, 0); }

static inline double *ops_to_double(const float *x, int64_t n) {
    double *d = malloc((size_t)(n > 0 ? n : 1) * sizeof(double));
    for (int64_t i = 0; i < n; i++) d[i] = x[i];
    return d;
}

static inline float *ops_copy_f(const float *x, int64_t n) {
    float *y = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    memcpy(y, x, (size_t)n * sizeof(float));
    return y;
}

// got[i] ~= want[i] within atol + rtol |want[i]|, with atol = atol_rel * max_i |want[i]| (errors of FP32 sums scale
// with the largest terms, not with each entry, so a near-zero entry from cancellation gets the global scale).
static inline void ops_expect_close(const char *file, int line, const char *what, const float *got,
                                    const double *want, int64_t n, double rtol, double atol_rel) {
    double mx = 0.0;
    for (int64_t i = 0; i < n; i++) mx = fabs(want[i]) > mx ? fabs(want[i]) : mx;
    double atol = atol_rel * mx + 1e-30;
    for (int64_t i = 0; i < n; i++)
        if (!(fabs((double)got[i] - want[i]) <= atol + rtol * fabs(want[i])))
            test_fail(file, line, "%s[%lld]: got %.9g, want %.9g (rtol %g, atol %g; seed %llu)", what, (long long)i,
                      (double)got[i], want[i], rtol, atol, (unsigned long long)ops_seed);
}
#define EXPECT_CLOSE(what, got, want, n, rtol, atol_rel) \
    ops_expect_close(__FILE__, __LINE__, what, got, want, n, rtol, atol_rel)

// Central differences of loss(ctx) with respect to each x[i] (x is one of the double inputs ctx's loss reads).
// The loss is evaluated in double, so h = 1e-5 leaves truncation error ~1e-10 relative: far below the tolerance.
static inline double *ops_fd_grad(double (*loss)(void *), void *ctx, double *x, int64_t n) {
    double *g = malloc((size_t)(n > 0 ? n : 1) * sizeof(double));
    for (int64_t i = 0; i < n; i++) {
        double x0 = x[i], h = 1e-5 * (fabs(x0) > 1.0 ? fabs(x0) : 1.0);
        x[i] = x0 + h;
        double lp = loss(ctx);
        x[i] = x0 - h;
        double lm = loss(ctx);
        x[i] = x0;
        g[i] = (lp - lm) / (2.0 * h);
    }
    return g;
}

// Runs fn(ctx) in a child process and asserts that it exits non-zero with `needle` in its stderr (an op's check
// dying with a clear message, never a crash and never a silent success).
static inline void ops_expect_die(const char *file, int line, void (*fn)(void *), void *ctx, const char *needle) {
    char path[4200];
    snprintf(path, sizeof path, "%s/die-%d.txt", test_tmpdir(), (int)getpid());
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen(path, "w", stderr)) _exit(99);
        fn(ctx);
        fflush(stderr);
        _exit(0);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    char buf[4096] = "";
    FILE *f = fopen(path, "r");
    if (f) {
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        buf[n] = 0;
        fclose(f);
    }
    if (!WIFEXITED(st) || WEXITSTATUS(st) == 0)
        test_fail(file, line, "expected a clean non-zero exit with \"%s\", got status 0x%x; stderr:\n%s", needle, st,
                  buf);
    if (!strstr(buf, needle)) test_fail(file, line, "expected \"%s\" in the error, got:\n%s", needle, buf);
}
#define EXPECT_DIE(fn, ctx, needle) ops_expect_die(__FILE__, __LINE__, fn, ctx, needle)

#endif
