// AdamW against hand-computed steps, clipping, and the auxiliary-loss-free bias update against small cases.
#include "tests/test.h"
#include "tests/model_configs.h"
#include "model/params.h"
#include <string.h>
#include "train/optim.h"
#include "kernels/ops.h"

#include <stdint.h>

// A two-tensor table: "w" (decayed, 2 elements) and "n.norm.weight" (no decay, 1 element), offsets 0 and 2.
static ParamTable two_tensor_table(void) {
    static ParamInfo p[2];
    memset(p, 0, sizeof p);
    snprintf(p[0].name, sizeof p[0].name, "w");
    p[0].ndim = 1; p[0].shape[0] = 2; p[0].offset = 0; p[0].numel = 2; p[0].no_decay = 0;
    snprintf(p[1].name, sizeof p[1].name, "n.norm.weight");
    p[1].ndim = 1; p[1].shape[0] = 1; p[1].offset = 2; p[1].numel = 1; p[1].no_decay = 1;
    return (ParamTable){.params = p, .n = 2, .total = 3};
}

TEST(adamw_first_step_by_hand) {
    // Step 1 with g = 0.5 on p = 1: m = 0.1 * 0.5 = 0.05, v = 0.05 * 0.25 = 0.0125, stored in BF16 rounded to
    // nearest even: m1 = 0x3D4D = 0.050048828125, v1 = 0x3C4D = 0.01251220703125. The step uses the stored
    // (rounded) moments, so a resumed run sees exactly what the uninterrupted one used:
    // mhat = m1 / (1 - 0.9), vhat = v1 / (1 - 0.95), dir = mhat / (sqrt(vhat) + 1e-8) = 1.000487...
    // Decayed tensor: p = 1 * (1 - lr * wd) - lr * dir; no-decay tensor: 1 - lr * dir; g = -0.5 flips dir.
    const Backend *be = &backend_cpu;
    ParamTable t = two_tensor_table();
    float params[3] = {1.0f, 1.0f, 1.0f}, grads[3] = {0.5f, -0.5f, 0.5f};
    AdamW o;
    adamw_create(&o, be, &t);
    AdamWHyper h = {.lr = 0.1f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f, .grad_clip = 0};
    adamw_step(&o, params, grads, &h, 0.866);
    double m1 = 0.050048828125, v1 = 0.01251220703125;
    double dir = (m1 / 0.1) / (sqrt(v1 / 0.05) + 1e-8);
    ASSERT_NEAR(params[0], 0.99 - 0.1 * dir, 1e-6, 0);
    ASSERT_NEAR(params[1], 0.99 + 0.1 * dir, 1e-6, 0);
    ASSERT_NEAR(params[2], 1.0 - 0.1 * dir, 1e-6, 0);
    ASSERT_EQ_INT(o.m[0], 0x3D4D);
    ASSERT_EQ_INT(o.v[0], 0x3C4D);
    ASSERT_EQ_INT(o.m[1], 0xBD4D);
    adamw_free(&o);
}

TEST(adamw_second_step_reads_bf16_moments) {
    // Step 2 starts from the stored BF16 moments m1 = 0.050048828125, v1 = 0.01251220703125. With g2 = 0.25 and no
    // decay: m2 = bf16(0.9 m1 + 0.025), v2 = bf16(0.95 v1 + 0.05 * 0.0625) (the stored values, checked bit for
    // bit), mhat = m2 / (1 - 0.81), vhat = v2 / (1 - 0.9025); p2 = p1 - lr * mhat / (sqrt(vhat) + eps).
    const Backend *be = &backend_cpu;
    ParamTable t = two_tensor_table();
    float params[3] = {1, 1, 1}, grads[3] = {0.5f, 0.5f, 0.5f};
    AdamW o;
    adamw_create(&o, be, &t);
    AdamWHyper h = {.lr = 0.1f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.0f, .grad_clip = 0};
    adamw_step(&o, params, grads, &h, 0.866);
    double p1 = params[0];
    grads[0] = grads[1] = grads[2] = 0.25f;
    adamw_step(&o, params, grads, &h, 0.433);
    // 0.9 * 0.050048828125 + 0.025 = 0.0700439453125 -> BF16 0x3D8F = 0.06982421875 (the next one up, 0x3D90 =
    // 0.0703125, is farther); 0.95 * 0.01251220703125 + 0.003125 = 0.0150115966796875 -> 0x3C76 = 0.0150146484375.
    ASSERT_EQ_INT(o.m[0], 0x3D8F);
    ASSERT_EQ_INT(o.v[0], 0x3C76);
    double m2 = 0.06982421875, v2 = 0.0150146484375;
    double mhat = m2 / (1 - 0.81), vhat = v2 / (1 - 0.9025);
    ASSERT_NEAR(params[0], p1 - 0.1 * mhat / (sqrt(vhat) + 1e-8), 1e-6, 0);
    adamw_free(&o);
}

TEST(adamw_clips_by_global_norm) {
    // Gradients (3, 4, 0) have norm 5; clip 1 scales them by 0.2. Adam's first step is scale invariant in g
    // (mhat / sqrt(vhat) = sign(g)) except through eps, so compare against an unclipped run on pre-scaled
    // gradients, which must give the same parameters and moments.
    const Backend *be = &backend_cpu;
    ParamTable t = two_tensor_table();
    float pa[3] = {1, 2, 3}, ga[3] = {3, 4, 0};
    float pb[3] = {1, 2, 3}, gb[3] = {0.6f, 0.8f, 0};
    ASSERT_NEAR(optim_grad_norm(be, &t, ga), 5.0, 1e-12, 0);
    AdamW oa, ob;
    adamw_create(&oa, be, &t);
    adamw_create(&ob, be, &t);
    AdamWHyper h = {.lr = 0.01f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f, .grad_clip = 1};
    adamw_step(&oa, pa, ga, &h, 5.0);
    AdamWHyper hb = h;
    hb.grad_clip = 0;
    adamw_step(&ob, pb, gb, &hb, 1.0);
    for (int i = 0; i < 3; i++) {
        ASSERT_NEAR(pa[i], pb[i], 1e-7, 0);
        ASSERT_EQ_INT(oa.m[i], ob.m[i]);
        ASSERT_EQ_INT(oa.v[i], ob.v[i]);
    }
    adamw_free(&oa);
    adamw_free(&ob);
}

TEST(bias_update_moves_against_the_load) {
    // 4 experts, 40 routed tokens: mean 10. Expert 0 overloaded (16), 1 at the mean (10), 2 and 3 underloaded.
    int64_t counts[4] = {16, 10, 8, 6};
    float bias[4] = {0.5f, 0.0f, -0.25f, 0.0f};
    double vio = moe_bias_update(bias, counts, 4, 0.001f);
    ASSERT_NEAR(bias[0], 0.499, 1e-6, 0);
    ASSERT_NEAR(bias[1], 0.0, 0, 0);
    ASSERT_NEAR(bias[2], -0.249, 1e-6, 0);
    ASSERT_NEAR(bias[3], 0.001, 1e-6, 0);
    ASSERT_NEAR(vio, (16.0 - 10.0) / 10.0, 1e-12, 0);
    // A mean that is not an integer (7 tokens over 2 experts: 3.5) never counts as "equal".
    int64_t c2[2] = {4, 3};
    float b2[2] = {0, 0};
    moe_bias_update(b2, c2, 2, 0.5f);
    ASSERT_NEAR(b2[0], -0.5, 0, 0);
    ASSERT_NEAR(b2[1], 0.5, 0, 0);
    // gamma 0 (the last 500B tokens of the recipe) leaves the bias alone.
    float b3[4] = {1, 2, 3, 4};
    moe_bias_update(b3, counts, 4, 0.0f);
    ASSERT_NEAR(b3[0], 1, 0, 0);
    ASSERT_NEAR(b3[3], 4, 0, 0);
}

TEST(max_violation_of_balanced_and_empty_loads) {
    int64_t even[3] = {5, 5, 5}, none[3] = {0, 0, 0}, one[4] = {8, 0, 0, 0};
    ASSERT_NEAR(moe_max_violation(even, 3), 0.0, 0, 0);
    ASSERT_NEAR(moe_max_violation(none, 3), 0.0, 0, 0);
    ASSERT_NEAR(moe_max_violation(one, 4), 3.0, 1e-12, 0);   // (8 - 2) / 2
}

// adamw_step launches once per run of same-decay tensors, padding included: the result must be bit-identical to one
// adamw_update per tensor, on a real table (the tiny test model: norms between matrices, 64-element alignment gaps).
TEST(adamw_runs_equal_per_tensor_updates) {
    const Backend *be = backend_get("cpu");
    ModelConfig mc = test_model_tiny();
    ParamTable t;
    StageSpec full = params_full_stage(&mc);
    params_build(&t, &mc, &full);
    float *p1 = be->alloc((size_t)t.total * 4), *g = be->alloc((size_t)t.total * 4);
    uint64_t s = 7;
    for (int i = 0; i < t.n; i++)   // values only inside tensors: the padding stays zero, as in a model
        for (int64_t j = t.params[i].offset; j < t.params[i].offset + t.params[i].numel; j++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            p1[j] = (float)((int64_t)(s >> 40) - (1 << 23)) / (1 << 23);
            g[j] = (float)((int64_t)((s >> 16) & 0xFFFFFF) - (1 << 23)) / (1 << 24);
        }
    float *p2 = be->alloc((size_t)t.total * 4);
    memcpy(p2, p1, (size_t)t.total * 4);
    AdamW o;
    adamw_create(&o, be, &t);
    uint16_t *m2 = be->alloc((size_t)t.total * 2), *v2 = be->alloc((size_t)t.total * 2);
    AdamWHyper h = {.lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f, .grad_clip = 0};
    for (int step = 1; step <= 3; step++) {
        adamw_step(&o, p1, g, &h, 1.0);
        for (int i = 0; i < t.n; i++) {
            const ParamInfo *q = &t.params[i];
            be->adamw_update(tensor_1d(p2 + q->offset, DT_F32, q->numel), tensor_1d(g + q->offset, DT_F32, q->numel),
                             tensor_1d(m2 + q->offset, DT_BF16, q->numel), tensor_1d(v2 + q->offset, DT_BF16, q->numel),
                             h.lr, h.beta1, h.beta2, h.eps, q->no_decay ? 0.0f : h.weight_decay, 1.0f, step);
        }
    }
    ASSERT(memcmp(p1, p2, (size_t)t.total * 4) == 0);
    ASSERT(memcmp(o.m, m2, (size_t)t.total * 2) == 0 && memcmp(o.v, v2, (size_t)t.total * 2) == 0);
    int gaps = 0, runs = 1;   // the case is meaningful: padding inside runs, and several runs
    for (int i = 1; i < t.n; i++) {
        gaps += t.params[i].offset > t.params[i - 1].offset + t.params[i - 1].numel;
        runs += t.params[i].no_decay != t.params[i - 1].no_decay;
    }
    ASSERT(gaps > 0 && runs > 2);
    adamw_free(&o);
    params_free(&t);
}
