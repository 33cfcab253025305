// Schedules: the V3 learning rate, gamma and MTP lambda at and around every phase boundary, the batch ramp, and
// step -> token resolution, against hand-computed values.
#include "tests/test.h"
#include "train/config.h"
#include <limits.h>

static void load_yaml(Config *c, const char *yaml) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/s.yaml", test_tmpdir());
    FILE *f = fopen(path, "w");
    ASSERT(f);
    fputs(yaml, f);
    ASSERT(fclose(f) == 0);
    config_load(c, path, 0, NULL);
}

// The warmup of configs/v3-671b.yaml ends after 2000 steps of the batch ramp (3072 -> 15360 sequences of 4096
// tokens over 469e9 tokens, in multiples of micro_batch * dp = 128). By hand: the batch rises by 128 each time the
// token count crosses k * 469e9 / 96 = k * 4885416666.67, i.e.
//   3072 for 389 steps (to 4894752768 tokens),  3200 for 373 (to 9783738368),  3328 for 358 (to 14663811072),
//   3456 for 345 (to 19547553792),               3584 for 333 (to 24436015104), 3712 for the last 202 steps:
//   W = 24436015104 + 202 * 3712 * 4096 = 27507294208 tokens.
static const double V3_WARMUP_END = 27507294208.0;

TEST(schedule_v3_warmup_resolution) {
    Config c;
    config_load(&c, test_path("configs/v3-671b.yaml"), 0, NULL);
    ASSERT(c.train.lr.phases[0].until_steps == 2000);
    ASSERT(c.train.lr.phases[0].until_tokens == V3_WARMUP_END);
    ASSERT(config_tokens_after_steps(&c, 389) == 4894752768.0);
    ASSERT(config_tokens_after_steps(&c, 389 + 373) == 9783738368.0);
    ASSERT(config_tokens_after_steps(&c, 1798) == 24436015104.0);
}

TEST(schedule_v3_learning_rate) {
    Config c;
    config_load(&c, test_path("configs/v3-671b.yaml"), 0, NULL);
    const Schedule *lr = &c.train.lr;
    const double W = V3_WARMUP_END, peak = 2.2e-4, low = 2.2e-5;
    // linear warmup 0 -> 2.2e-4 over [0, W)
    ASSERT(schedule_value(lr, 0) == 0);
    ASSERT_NEAR(schedule_value(lr, W / 2), 1.1e-4, 1e-12, 0);
    ASSERT_NEAR(schedule_value(lr, W - 1), peak * (W - 1) / W, 1e-12, 0);
    // constant 2.2e-4 from W to 10e12
    ASSERT(schedule_value(lr, W) == peak);
    ASSERT(schedule_value(lr, W + 1) == peak);
    ASSERT(schedule_value(lr, 10e12 - 1) == peak);
    // cosine 2.2e-4 -> 2.2e-5 over [10e12, 14.3e12): to + (from - to) * (1 + cos(pi * frac)) / 2
    ASSERT_NEAR(schedule_value(lr, 10e12), peak, 1e-12, 0);
    ASSERT_NEAR(schedule_value(lr, 10e12 + 1), peak, 1e-9, 0);
    ASSERT_NEAR(schedule_value(lr, 10e12 + 4.3e12 / 4), 1.9100357134e-4, 1e-9, 0);   // 2.2e-5 + 1.98e-4 * 0.85355339
    ASSERT_NEAR(schedule_value(lr, 12.15e12), 1.21e-4, 1e-12, 0);                    // half way: the mean
    ASSERT_NEAR(schedule_value(lr, 10e12 + 4.3e12 * 3 / 4), 5.0996428657e-5, 1e-9, 0); // 2.2e-5 + 1.98e-4 * 0.14644661
    ASSERT_NEAR(schedule_value(lr, 14.3e12 - 1), low, 1e-9, 0);
    // 2.2e-5 for 333e9 tokens, then 7.3e-6 for the last 167e9, and after the end
    ASSERT(schedule_value(lr, 14.3e12) == low);
    ASSERT(schedule_value(lr, 14.633e12 - 1) == low);
    ASSERT(schedule_value(lr, 14.633e12) == 7.3e-6);
    ASSERT(schedule_value(lr, 14.8e12 - 1) == 7.3e-6);
    ASSERT(schedule_value(lr, 14.8e12) == 7.3e-6);
    ASSERT(schedule_value(lr, 20e12) == 7.3e-6);
}

TEST(schedule_v3_gamma_and_mtp_lambda) {
    Config c;
    config_load(&c, test_path("configs/v3-671b.yaml"), 0, NULL);
    const Schedule *g = &c.train.bias_update_speed, *l = &c.train.mtp_lambda;
    // gamma 0.001 for the first 14.3e12 tokens, then 0
    ASSERT(schedule_value(g, 0) == 0.001);
    ASSERT(schedule_value(g, 14.3e12 - 1) == 0.001);
    ASSERT(schedule_value(g, 14.3e12) == 0);
    ASSERT(schedule_value(g, 14.3e12 + 1) == 0);
    ASSERT(schedule_value(g, 14.8e12) == 0);
    // MTP lambda 0.3 for the first 10e12 tokens, then 0.1
    ASSERT(schedule_value(l, 0) == 0.3);
    ASSERT(schedule_value(l, 10e12 - 1) == 0.3);
    ASSERT(schedule_value(l, 10e12) == 0.1);
    ASSERT(schedule_value(l, 10e12 + 1) == 0.1);
    ASSERT(schedule_value(l, 14.8e12) == 0.1);
}

TEST(schedule_v3_batch_ramp) {
    Config c;
    config_load(&c, test_path("configs/v3-671b.yaml"), 0, NULL);
    ASSERT_EQ_INT(config_batch_size(&c, 0), 3072);
    // the first step of 128 comes at 469e9 / 96 = 4885416666.67 tokens
    ASSERT_EQ_INT(config_batch_size(&c, 4885416666.0), 3072);
    ASSERT_EQ_INT(config_batch_size(&c, 4885416667.0), 3200);
    ASSERT_EQ_INT(config_batch_size(&c, 234.5e9), 9216);          // mid-ramp: (3072 + 15360) / 2
    ASSERT_EQ_INT(config_batch_size(&c, 234.5e9 - 1), 9088);      // just below: rounded down to 128
    ASSERT_EQ_INT(config_batch_size(&c, 469e9 - 1), 15232);
    ASSERT_EQ_INT(config_batch_size(&c, 469e9), 15360);
    ASSERT_EQ_INT(config_batch_size(&c, 14e12), 15360);
}

// A small case by hand: seq_len 10, micro_batch 1, dp 2 (batches in multiples of 2), batch 2 -> 6 over 100 tokens.
//   step 1 starts at   0: 2 + 4 *  0/100 = 2.0 -> 2, ends at  20
//   step 2 starts at  20: 2 + 4 * 20/100 = 2.8 -> 2, ends at  40
//   step 3 starts at  40: 2 + 4 * 40/100 = 3.6 -> 2, ends at  60
//   step 4 starts at  60: 2 + 4 * 60/100 = 4.4 -> 4, ends at 100
//   step 5 starts at 100: ramp over -> 6,            ends at 160
//   step 6 starts at 160: 6,                          ends at 220
static const char *SMALL =
    "train:\n  seq_len: 10\n  micro_batch: 1\n  batch_start: 2\n  batch_end: 6\n  batch_ramp_tokens: 100\n"
    "  lr:\n    start: 1\n    phases:\n"
    "      - {shape: linear, until_steps: 4, to: 0}\n"
    "      - {shape: constant, until_tokens: 200, to: 5}\n"
    "      - {shape: linear, until_steps: 6, to: 7}\n"
    "parallel:\n  dp: 2\n";

TEST(schedule_small_case_by_hand) {
    Config c;
    load_yaml(&c, SMALL);
    const double ends[] = {0, 20, 40, 60, 100, 160, 220, 280};
    for (int s = 0; s < 8; s++) ASSERT_MSG(config_tokens_after_steps(&c, s) == ends[s], "after %d steps: %.0f", s,
                                           config_tokens_after_steps(&c, s));
    ASSERT_EQ_INT(config_batch_size(&c, 0), 2);
    ASSERT_EQ_INT(config_batch_size(&c, 50), 4);    // mid-ramp: 2 + 4 * 0.5
    ASSERT_EQ_INT(config_batch_size(&c, 99), 4);    // 5.96 rounds down to 4
    ASSERT_EQ_INT(config_batch_size(&c, 100), 6);
    const Schedule *lr = &c.train.lr;
    ASSERT(lr->phases[0].until_tokens == 100);      // 4 steps
    ASSERT(lr->phases[2].until_tokens == 220);      // 6 steps
    ASSERT(schedule_value(lr, 0) == 1);
    ASSERT(schedule_value(lr, 25) == 0.75);         // linear 1 -> 0 over [0, 100)
    ASSERT(schedule_value(lr, 100) == 5);           // constant: `to` from the first token of the phase
    ASSERT(schedule_value(lr, 199) == 5);
    ASSERT(schedule_value(lr, 200) == 5);           // linear from 5 (end of the constant phase) to 7 over [200, 220)
    ASSERT(schedule_value(lr, 210) == 6);
    ASSERT(schedule_value(lr, 220) == 7);
    ASSERT(schedule_value(lr, 1e9) == 7);
}

// The level-jumping resolution equals the trainer's step-by-step arithmetic at every step, on the V3 ramp
// (batches in multiples of 128) and on the default layout (multiples of 1: a level every ~38e6 tokens).
TEST(schedule_resolution_matches_step_by_step) {
    Config cs[2];
    config_load(&cs[0], test_path("configs/v3-671b.yaml"), 0, NULL);
    config_defaults(&cs[1]);
    for (int i = 0; i < 2; i++) {
        const Config *c = &cs[i];
        double t = 0;
        for (long s = 0; s <= 40000; s++) {   // past the end of the ramp (step 15155 for V3, 15000 for the defaults)
            int check = i == 0 ? s % 97 == 0 || (s > 14900 && s < 15400)
                               : s % 997 == 0 || (s > 14950 && s < 15050);
            if (check)
                ASSERT_MSG(config_tokens_after_steps(c, s) == t, "config %d, step %ld: %.0f vs %.0f", i, s,
                           config_tokens_after_steps(c, s), t);
            t += (double)config_batch_size(c, t) * c->train.seq_len;
        }
    }
}

TEST(schedule_constant_and_tiny) {
    Schedule s = {.start = 3e-4, .n_phases = 0};
    ASSERT(schedule_value(&s, 0) == 3e-4);
    ASSERT(schedule_value(&s, 1e15) == 3e-4);
    // tiny: 16 x 128 = 2048 tokens per step; warmup to 3e-3 over 20 steps, cosine to 3e-4 at step 300
    Config c;
    config_load(&c, test_path("configs/tiny.yaml"), 0, NULL);
    ASSERT(schedule_value(&c.train.lr, 0) == 0);
    ASSERT_NEAR(schedule_value(&c.train.lr, 10 * 2048), 1.5e-3, 1e-12, 0);
    ASSERT_NEAR(schedule_value(&c.train.lr, 20 * 2048), 3e-3, 1e-12, 0);
    ASSERT_NEAR(schedule_value(&c.train.lr, 160 * 2048), 1.65e-3, 1e-12, 0);   // the cosine's middle
    ASSERT(schedule_value(&c.train.lr, 300 * 2048) == 3e-4);
}
