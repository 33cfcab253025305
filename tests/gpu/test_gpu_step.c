// The whole model and trainer on the cuda backend in BF16 against the cpu FP32 reference, on configs/tiny.yaml:
//   - one training step (forward, backward, AdamW) from the same initial weights, under the cpu's routing decisions
//     (a near-tie between two experts flips under BF16 rounding and moves outputs far beyond rounding error, so the
//     precision comparison replays the reference's choice; the flip rate of free BF16 routing is reported apart);
//   - 50 steps of `build/train` on both backends: the BF16 loss curve tracks the FP32 one.
// Tolerances are BF16's: activations and weights rounded to 8 significant bits (relative 2^-9 each), compounded over
// a dozen GEMMs and norms per layer, give percent-level agreement of gradients; the losses agree far closer because
// they average N tokens.
#include "tests/gpu/gpu_testutil.h"
#include "tests/test_model_util.h"
#include "kernels/profile.h"
#include "train/config.h"
#include "train/optim.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static Config tiny_config(int cuda) {
    Config c;
    config_load(&c, test_path("configs/tiny.yaml"), 0, NULL);
    c.train.backend = cuda ? BACKEND_CUDA : BACKEND_CPU;
    c.train.precision = cuda ? PRECISION_BF16 : PRECISION_FP32;
    return c;
}

// Random tokens [B, T + 1 + D] over the vocabulary, and the same random selection biases on every MoE layer of both
// models (so the bias path is exercised).
static void set_biases(Model *m, uint64_t seed) {
    for (int i = 0; i < model_n_moe_layers(m); i++) {
        uint64_t s = seed + (uint64_t)i;
        float *b = model_expert_bias(m, i);
        for (int e = 0; e < model_config(m)->n_routed_experts; e++) b[e] = (float)(0.1 * tm_uniform(&s) - 0.05);
    }
}

// || a - b || / || b || over n host floats
static double rel_l2(const float *a, const float *b, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static float *download_all(const Backend *be, const float *dev, int64_t n) {
    float *h = malloc((size_t)n * sizeof(float));
    be->download(h, dev, (size_t)n * sizeof(float));
    return h;
}

// Worst per-tensor relative L2 difference between the cuda and cpu copies of a parameter-table-shaped buffer.
static double worst_tensor_rel(const ParamTable *t, const float *g, const float *c, const char **worst_name) {
    double worst = 0;
    for (int i = 0; i < t->n; i++) {
        const ParamInfo *p = &t->params[i];
        double r = rel_l2(g + p->offset, c + p->offset, p->numel);
        if (r > worst) worst = r, *worst_name = p->name;
    }
    return worst;
}

TEST(gpu_step_bf16_matches_cpu_fp32) {
    gt_init(71);
    Config cc = tiny_config(0), cg = tiny_config(1);
    const int B = cc.train.micro_batch, T = cc.train.seq_len;
    Model *mc = model_create(&cc, C, params_full_stage(&cc.model), B, T);
    Model *mg = model_create(&cg, G, params_full_stage(&cg.model), B, T);
    ASSERT(model_act_dtype_of(mg) == DT_BF16 && model_act_dtype_of(mc) == DT_F32);
    model_init(mc, 5);
    model_init(mg, 5);
    set_biases(mc, 900);
    set_biases(mg, 900);
    int32_t *tok = tm_tokens(&cc, B, T, 17);
    const float mtp_lambda = 0.3f, alpha = (float)cc.train.balance_alpha;

    // cpu: record the routing; cuda: replay it.
    MicroLosses lc, lg;
    model_set_route_mode(mc, ROUTE_RECORD);
    model_step(mc, tok, 1.0f, mtp_lambda, alpha, &lc);
    for (int i = 0; i < model_n_moe_layers(mc); i++) model_route_load(mg, i, model_route_record(mc, i));
    model_set_route_mode(mg, ROUTE_REPLAY);
    model_step(mg, tok, 1.0f, mtp_lambda, alpha, &lg);
    printf("    losses cpu fp32 / cuda bf16: lm %.6f / %.6f, mtp %.6f / %.6f, balance %.4g / %.4g\n", lc.lm_loss,
           lg.lm_loss, lc.mtp_loss[0], lg.mtp_loss[0], lc.balance_loss, lg.balance_loss);
    ASSERT_NEAR(lg.lm_loss, lc.lm_loss, 1e-2, 0);
    ASSERT_NEAR(lg.mtp_loss[0], lc.mtp_loss[0], 1e-2, 0);
    ASSERT_NEAR(lg.balance_loss, lc.balance_loss, 3e-2, 0);
    ASSERT_NEAR(lg.total, lc.total, 1e-2, 0);

    const ParamTable *t = model_params(mc);
    float *gc = download_all(C, model_grad_data(mc), t->total), *gg = download_all(G, model_grad_data(mg), t->total);
    const char *wn = "";
    double worst = worst_tensor_rel(t, gg, gc, &wn);
    printf("    gradients: worst per-tensor relative L2 difference %.4f (%s), whole buffer %.4f\n", worst, wn,
           rel_l2(gg, gc, t->total));
    ASSERT_MSG(worst < 0.05, "gradient of %s differs by %.4f (relative L2)", wn, worst);

    // One AdamW step on each backend from those gradients: the updated FP32 masters agree.
    AdamW oc, og;
    adamw_create(&oc, C, t);
    adamw_create(&og, G, model_params(mg));
    AdamWHyper h = {.lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f, .grad_clip = 1.0f};
    adamw_step(&oc, model_param_data(mc), model_grad_data(mc), &h, optim_grad_norm(C, t, model_grad_data(mc)));
    adamw_step(&og, model_param_data(mg), model_grad_data(mg), &h, optim_grad_norm(G, t, model_grad_data(mg)));
    float *pc = download_all(C, model_param_data(mc), t->total), *pg = download_all(G, model_param_data(mg), t->total);
    // Adam's first step moves each weight by lr * g / |g|: the two agree exactly where the gradient signs agree,
    // and by 2 lr where a gradient within BF16 noise of zero changes sign.
    int64_t flips = 0, n = 0;
    double max_diff = 0;
    for (int i = 0; i < t->n; i++) {
        const ParamInfo *p = &t->params[i];
        for (int64_t j = p->offset; j < p->offset + p->numel; j++, n++) {
            if ((gc[j] > 0) != (gg[j] > 0)) flips++;
            max_diff = fmax(max_diff, fabs((double)pg[j] - pc[j]));
        }
    }
    double wu = worst_tensor_rel(t, pg, pc, &wn);
    printf("    updated weights: worst per-tensor relative L2 %.2e (%s), max |diff| %.3g (lr %.0e), gradient sign "
           "flips %.3f%%\n", wu, wn, max_diff, (double)h.lr, 100.0 * flips / n);
    ASSERT_MSG(wu < 1e-2, "updated %s differs by %.3g (relative L2)", wn, wu);
    ASSERT_MSG(max_diff <= 2.2 * h.lr, "an updated weight differs by %.3g, more than 2 lr", max_diff);
    ASSERT_MSG(flips < n / 50, "%lld of %lld gradient signs differ", (long long)flips, (long long)n);

    // The flip rate of BF16 routing left free, on the same weights and tokens (reported, not asserted: it depends
    // on how many tokens sit near a tie).
    Model *mf = model_create(&cg, G, params_full_stage(&cg.model), B, T);
    model_init(mf, 5);
    set_biases(mf, 900);
    model_set_route_mode(mf, ROUTE_RECORD);
    MicroLosses lf;
    model_step(mf, tok, 1.0f, mtp_lambda, alpha, &lf);
    int64_t diff = 0, tot = 0;
    const int K = cc.model.n_activated_experts;
    for (int i = 0; i < model_n_moe_layers(mc); i++) {
        const int32_t *a = model_route_record(mc, i), *b = model_route_record(mf, i);
        for (int64_t r = 0; r < (int64_t)B * T; r++)
            for (int k = 0; k < K; k++, tot++) {   // is a's k-th expert among b's K (the order may differ)
                int found = 0;
                for (int k2 = 0; k2 < K; k2++) found |= a[r * K + k] == b[r * K + k2];
                diff += !found;
            }
    }
    printf("    free BF16 routing: %.3f%% of (token, expert) choices differ from the FP32 reference; lm loss %.6f\n",
           100.0 * diff / tot, lf.lm_loss);
    adamw_free(&oc);
    adamw_free(&og);
    model_free(mc);
    model_free(mg);
    model_free(mf);
}

// The residual-stream fusions of model/residual.c change no bit of the BF16 model: two micro-batches of the tiny
// config (free routing) under DSV3_RESID_FUSE=0 (a copy of the stream before each branch's accumulating GEMM, and a
// convert pass for each BF16 view of the residual gradient), =lowp (the views written by the rmsnorm_backward that
// forms each gradient) and =1 (also the residual adds in o_proj's and the down projections' GEMMs) give the same
// losses and gradients. The profiler shows the fusions at work: with lowp the only converts left are the weights'
// BF16 copy (once) and each MoE layer's router gradient; with 1 the stream is never copied (the tiny model's MoE
// layers have a shared expert).
TEST(gpu_step_resid_fusion_same_bits) {
    gt_init(72);
    const Backend *P = profile_wrap(G);
    Config c = tiny_config(1);
    const int B = c.train.micro_batch, T = c.train.seq_len;
    const ModelConfig *mc = &c.model;
    ASSERT(mc->n_shared_experts > 0);
    const int64_t Lb = mc->n_layers + mc->mtp_depth, n_moe = Lb - mc->n_dense_layers, D = mc->mtp_depth;
    int32_t *tok[2] = {tm_tokens(&c, B, T, 31), tm_tokens(&c, B, T, 32)};
    static const char *const modes[3] = {"0", "lowp", "1"};
    MicroLosses l[3][2];
    float *grads[3];
    int64_t converts[3], copies[3], resid[3];
    Model *ms[3];
    for (int k = 0; k < 3; k++) {
        ASSERT(setenv("DSV3_RESID_FUSE", modes[k], 1) == 0);
        Model *m = ms[k] = model_create(&c, P, params_full_stage(&c.model), B, T);
        ASSERT(unsetenv("DSV3_RESID_FUSE") == 0);
        model_init(m, 5);
        set_biases(m, 900);
        profile_reset();
        for (int r = 0; r < 2; r++) model_step(m, tok[r], 1.0f, 0.3f, (float)c.train.balance_alpha, &l[k][r]);
        converts[k] = profile_get("convert").calls;
        copies[k] = profile_get("copy").calls;
        resid[k] = profile_get("matmul_forward_residual").calls;
        grads[k] = download_all(G, model_grad_data(m), model_params(m)->total);
    }
    printf("    per 2 micro-batches: convert %lld / %lld / %lld, copy %lld / %lld / %lld, residual GEMMs %lld / %lld / "
           "%lld (DSV3_RESID_FUSE 0 / lowp / 1); lm loss %.6f\n", (long long)converts[0], (long long)converts[1],
           (long long)converts[2], (long long)copies[0], (long long)copies[1], (long long)copies[2],
           (long long)resid[0], (long long)resid[1], (long long)resid[2], l[0][1].lm_loss);
    for (int k = 1; k < 3; k++)
        for (int r = 0; r < 2; r++)
            ASSERT_MSG(memcmp(&l[k][r], &l[0][r], sizeof l[0][r]) == 0, "DSV3_RESID_FUSE=%s: micro-batch %d's losses "
                       "differ (lm %.9g vs %.9g)", modes[k], r, l[k][r].lm_loss, l[0][r].lm_loss);
    const ParamTable *t = model_params(ms[0]);
    for (int k = 1; k < 3; k++)
        for (int i = 0; i < t->n; i++) {
            const ParamInfo *p = &t->params[i];
            ASSERT_MSG(memcmp(grads[k] + p->offset, grads[0] + p->offset, (size_t)p->numel * sizeof(float)) == 0,
                       "DSV3_RESID_FUSE=%s: the gradient of %s differs from DSV3_RESID_FUSE=0's", modes[k], p->name);
        }
    // Per micro-batch, unfused: a convert at the start of each block's backward and at o_proj's, one for each MTP
    // depth's eh_proj, one for each MoE router; the weights' BF16 copy once (the first forward).
    ASSERT_EQ_INT(converts[0], 1 + 2 * (2 * Lb + D + n_moe));
    ASSERT_EQ_INT(converts[1], 1 + 2 * n_moe);
    ASSERT_EQ_INT(converts[2], 1 + 2 * n_moe);
    ASSERT_EQ_INT(copies[0], 2 * 2 * Lb);
    ASSERT_EQ_INT(copies[1], 2 * 2 * Lb);
    ASSERT_EQ_INT(copies[2], 0);
    ASSERT_EQ_INT(resid[0], 0);
    ASSERT_EQ_INT(resid[2], 2 * 2 * Lb);   // o_proj and the dense or shared down projection of every block
    for (int k = 0; k < 3; k++) free(grads[k]), model_free(ms[k]);
    free(tok[0]), free(tok[1]);
}

// The per-step "loss" of a run's metrics.jsonl: n values.
static int read_losses(const char *path, double *loss, int cap) {
    FILE *f = fopen(path, "r");
    ASSERT_MSG(f, "no %s", path);
    char line[8192];
    int n = 0;
    while (fgets(line, sizeof line, f) && n < cap) {
        const char *p = strstr(line, "\"loss\":");
        if (p) loss[n++] = atof(p + 7);
    }
    fclose(f);
    return n;
}

TEST(gpu_train_tiny_bf16_tracks_cpu_curve) {
    enum { STEPS = 50 };
    const char *dir = test_tmpdir();
    const char *common = "--set train.max_steps=50 --set train.eval_every=0 --set checkpoint.at_end=false "
                         "--set checkpoint.every=0 --set log.every=1";
    double lc[STEPS + 1], lg[STEPS + 1];
    char cmd[4096], path[4200];
    char *out = NULL;
    snprintf(cmd, sizeof cmd, "%s %s %s --set log.run_dir=%s/cpu 2>&1", test_bin("train"),
             test_path("configs/tiny.yaml"), common, dir);
    ASSERT_MSG(test_run(cmd, &out) == 0, "cpu run failed:\n%s", out);
    free(out);
    snprintf(cmd, sizeof cmd, "%s %s %s --set log.run_dir=%s/cuda --set train.backend=cuda "
             "--set train.precision=bf16 2>&1", test_bin("train"), test_path("configs/tiny.yaml"), common, dir);
    ASSERT_MSG(test_run(cmd, &out) == 0, "cuda run failed:\n%s", out);
    free(out);
    snprintf(path, sizeof path, "%s/cpu/metrics.jsonl", dir);
    ASSERT_EQ_INT(read_losses(path, lc, STEPS + 1), STEPS);
    snprintf(path, sizeof path, "%s/cuda/metrics.jsonl", dir);
    ASSERT_EQ_INT(read_losses(path, lg, STEPS + 1), STEPS);
    // Both runs see the same batches, but around the learning-rate peak (3e-3 at step 20) the rounding differences
    // grow chaotically for a step or two: single steps may differ by several percent (measured on an H100 on
    // 2026-11-23 with the loader's sequence order: 7.4% at one step with the wgmma/v2 kernels, 6.4% with the first
    // kernel sets), and come back. The curve is what must track: the 5-step means of the two loss curves (the max
    // over the run), the mean per-step difference and the last 10 steps.
    enum { W = 5 };
    double mean_rel = 0, max_rel = 0, last = 0, max_smooth = 0;
    for (int s = 0; s < STEPS; s++) {
        double r = fabs(lg[s] - lc[s]) / lc[s];
        mean_rel += r / STEPS;
        max_rel = fmax(max_rel, r);
        if (s >= STEPS - 10) last += (lg[s] - lc[s]) / lc[s] / 10;
        if (s + W <= STEPS) {
            double mc = 0, mg = 0;
            for (int k = s; k < s + W; k++) mc += lc[k] / W, mg += lg[k] / W;
            max_smooth = fmax(max_smooth, fabs(mg - mc) / mc);
        }
    }
    printf("    50 steps: loss %.4f -> %.4f (cpu fp32), %.4f -> %.4f (cuda bf16); relative difference mean %.4f, max "
           "%.4f (one step), %.4f (5-step means), last 10 steps mean %+.4f\n", lc[0], lc[STEPS - 1], lg[0],
           lg[STEPS - 1], mean_rel, max_rel, max_smooth, last);
    ASSERT_MSG(lc[STEPS - 1] < lc[0] - 1.0, "the cpu run did not learn (%.4f -> %.4f)", lc[0], lc[STEPS - 1]);
    ASSERT_MSG(mean_rel < 0.02 && max_smooth < 0.05 && fabs(last) < 0.02,
               "the BF16 curve leaves the FP32 one: mean %.4f, 5-step means %.4f (one step %.4f), last-10 %.4f",
               mean_rel, max_smooth, max_rel, last);
}
