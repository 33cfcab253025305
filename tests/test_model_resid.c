// The residual-stream fusions of model/residual.c (DSV3_RESID_FUSE) on the cpu: the FP32 model trains to the same
// bits with the residual GEMMs fused as without (a copy of the stream and an accumulating GEMM), across dense and MoE
// layers, with and without shared experts, MTP and recompute; the profiler shows the copies gone and the residual
// GEMMs there. The BF16 half (the gradient's BF16 view written by rmsnorm_backward) runs on the GPU:
// tests/gpu/test_gpu_step.c, gpu_step_resid_fusion_same_bits.
#include "kernels/profile.h"
#include "model/model_impl.h"
#include "tests/ops_testutil.h"
#include "tests/test_model_util.h"

#include <stdlib.h>

static Model *model_with(const char *fuse, const Config *c, const Backend *be) {
    ASSERT(setenv("DSV3_RESID_FUSE", fuse, 1) == 0);
    Model *m = tm_model(c, be, params_full_stage(&c->model), 3);
    ASSERT(unsetenv("DSV3_RESID_FUSE") == 0);
    return m;
}

// Two micro-batches on models made under DSV3_RESID_FUSE=0 and =1: the same losses and gradients, bit for bit.
// Returns the profiled counts of the fused run: copies and residual GEMMs per micro-batch.
static void same_bits(const Config *c, int64_t *copies, int64_t *residual_gemms) {
    const Backend *be = profile_wrap(backend_get("cpu"));
    Model *a = model_with("0", c, be), *b = model_with("1", c, be);
    ASSERT(!a->fuse_gemm && !a->fuse_lowp && b->fuse_gemm && b->fuse_lowp);
    int32_t *tok[2] = {tm_tokens(c, c->train.micro_batch, c->train.seq_len, 1),
                       tm_tokens(c, c->train.micro_batch, c->train.seq_len, 2)};
    MicroLosses la, lb;
    for (int rep = 0; rep < 2; rep++) {
        model_step(a, tok[rep], 0.5f, 0.3f, 0.01f, &la);
        profile_reset();
        model_step(b, tok[rep], 0.5f, 0.3f, 0.01f, &lb);
        ASSERT(memcmp(&la, &lb, sizeof la) == 0);
    }
    *copies = profile_get("copy").calls;
    *residual_gemms = profile_get("matmul_forward_residual").calls;
    const ParamTable *t = model_params(a);
    for (int i = 0; i < t->n; i++)
        ASSERT_MSG(tm_same(a, b, be, t->params[i].name, 1), "gradient of %s differs", t->params[i].name);
    free(tok[0]), free(tok[1]);
    model_free(a), model_free(b);
}

TEST(model_resid_fusion_same_bits) {
    Config c = tm_config();   // 3 layers (1 dense, 2 MoE with a shared expert) + 1 MTP block
    int64_t copies, gemms;
    same_bits(&c, &copies, &gemms);
    // Per micro-batch: no copy of the stream; each of the 4 blocks adds x_in in o_proj's GEMM and x_mid in the
    // dense FFN's or the shared expert's down projection.
    ASSERT_EQ_INT(copies, 0);
    ASSERT_EQ_INT(gemms, 2 * 4);
}

TEST(model_resid_fusion_same_bits_without_shared_experts) {
    Config c = tm_config();
    c.model.n_shared_experts = 0;   // MoE layers start x_out as a copy of x_mid
    c.model.mtp_depth = 2;
    c.train.recompute = 1;
    int64_t copies, gemms;
    same_bits(&c, &copies, &gemms);
    ASSERT_EQ_INT(copies, 4);        // the MoE blocks: layers 1, 2 and the two MTP blocks
    ASSERT_EQ_INT(gemms, 5 + 1);     // o_proj of the 5 blocks, the dense FFN's down projection
}

static void bad_env(void *u) {
    (void)u;
    Config c = tm_config();
    setenv("DSV3_RESID_FUSE", "yes", 1);
    tm_model(&c, backend_get("cpu"), params_full_stage(&c.model), 3);
}

TEST(model_resid_fusion_bad_setting_dies) {
    EXPECT_DIE(bad_env, NULL, "DSV3_RESID_FUSE=yes: expected 1 (both fusions), 0 (neither), gemm or lowp");
}
