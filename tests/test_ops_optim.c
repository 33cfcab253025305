// cpu optimizer ops: AdamW with BF16 moments (hand-computed steps), sum of squares, scale.
#include "kernels/ops.h"
#include "tests/ops_testutil.h"
#include "tests/test.h"

#include <omp.h>

static const Backend *cpu(void) { return backend_get("cpu"); }

TEST(ops_adamw_first_step_by_hand) {
    // t = 1, lr .1, beta1 .9, beta2 .95, eps 1e-8, wd .1, grad_scale .5; p = 1, grad = .5 -> g = .25; m = v = 0.
    //   m = .1 * .25 = .025       -> bf16 0x3CCD = 1.6015625 * 2^-6  = .0250244140625
    //   v = .05 * .0625 = .003125 -> bf16 0x3B4D = 1.6015625 * 2^-9  = .0031280517578125
    //   Both rounded up by the same factor r = 1.6015625 / 1.6, so mhat / sqrt(vhat) = sqrt(r) = 1.000488162.
    //   p = 1 * (1 - .1 * .1) - .1 * 1.000488162 = .8899511838   (exact FP32 moments would give .89)
    float p = 1.0f, g = 0.5f;
    uint16_t m = 0, v = 0;
    cpu()->adamw_update(tensor_1d(&p, DT_F32, 1), tensor_1d(&g, DT_F32, 1), tensor_1d(&m, DT_BF16, 1),
                        tensor_1d(&v, DT_BF16, 1), 0.1f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.5f, 1);
    ASSERT_EQ_INT(m, 0x3CCD);
    ASSERT_EQ_INT(v, 0x3B4D);
    ASSERT_NEAR(p, 0.99 - 0.1 * sqrt(1.6015625 / 1.6), 1e-7, 0);
    ASSERT_NEAR(p, 0.8899511838, 1e-7, 0);
}

TEST(ops_adamw_second_step_by_hand) {
    // t = 2, lr .01, beta1 .5, beta2 .75, eps 1e-8, wd .5, grad_scale 1; p = 2, grad = 1, m = .5, v = .25 (all exact
    // in bf16).  m = .5 * .5 + .5 * 1 = .75;  v = .75 * .25 + .25 * 1 = .4375 (both exact in bf16).
    //   bias corrections 1 - .5^2 = .75 and 1 - .75^2 = .4375  ->  mhat = 1, vhat = 1, step = 1 / (1 + 1e-8).
    //   p = 2 * (1 - .01 * .5) - .01 = 1.98
    // A second element with grad 0 and m = v = 0 only decays: 3 * (1 - .005) = 2.985.
    float p[2] = {2.0f, 3.0f}, g[2] = {1.0f, 0.0f};
    uint16_t m[2] = {bf16_from_f32(0.5f), 0}, v[2] = {bf16_from_f32(0.25f), 0};
    cpu()->adamw_update(tensor_1d(p, DT_F32, 2), tensor_1d(g, DT_F32, 2), tensor_1d(m, DT_BF16, 2),
                        tensor_1d(v, DT_BF16, 2), 0.01f, 0.5f, 0.75f, 1e-8f, 0.5f, 1.0f, 2);
    ASSERT(bf16_to_f32(m[0]) == 0.75f);
    ASSERT(bf16_to_f32(v[0]) == 0.4375f);
    ASSERT_NEAR(p[0], 1.98, 1e-7, 0);
    ASSERT_NEAR(p[1], 2.985, 1e-7, 0);
}

static void die_adamw_step0(void *unused) {
    (void)unused;
    static float p[1], g[1];
    static uint16_t m[1], v[1];
    backend_get("cpu")->adamw_update(tensor_1d(p, DT_F32, 1), tensor_1d(g, DT_F32, 1), tensor_1d(m, DT_BF16, 1),
                                     tensor_1d(v, DT_BF16, 1), 0.1f, 0.9f, 0.95f, 1e-8f, 0.0f, 1.0f, 0);
}
static void die_adamw_f32_moments(void *unused) {
    (void)unused;
    static float p[1], g[1], m[1], v[1];
    backend_get("cpu")->adamw_update(tensor_1d(p, DT_F32, 1), tensor_1d(g, DT_F32, 1), tensor_1d(m, DT_F32, 1),
                                     tensor_1d(v, DT_F32, 1), 0.1f, 0.9f, 0.95f, 1e-8f, 0.0f, 1.0f, 1);
}

TEST(ops_adamw_bad_inputs_die) {
    EXPECT_DIE(die_adamw_step0, NULL, "adamw_update: step t = 0, expected >= 1");
    EXPECT_DIE(die_adamw_f32_moments, NULL, "adamw_update: m (1) is f32, expected bf16");
}

TEST(ops_sum_squares_and_scale) {
    float a[2] = {3.0f, 4.0f};
    ASSERT(cpu()->sum_squares(tensor_1d(a, DT_F32, 2)) == 25.0);
    cpu()->scale(tensor_1d(a, DT_F32, 2), -0.5f);
    ASSERT(a[0] == -1.5f && a[1] == -2.0f);
    // Large, odd length: against a double sum, and identical for 1 and 2 threads (bit-reproducible runs).
    ops_rng_seed(501);
    const int64_t n = 300001;
    float *x = ops_rand(n, 1.0f);
    double want = 0.0;
    for (int64_t i = 0; i < n; i++) want += (double)x[i] * x[i];
    omp_set_num_threads(1);
    double s1 = cpu()->sum_squares(tensor_1d(x, DT_F32, n));
    omp_set_num_threads(2);
    double s2 = cpu()->sum_squares(tensor_1d(x, DT_F32, n));
    ASSERT_NEAR(s1, want, 1e-12, 0);
    ASSERT(s1 == s2);
    free(x);
}

