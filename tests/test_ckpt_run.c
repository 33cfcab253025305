// The run-level checkpoint calls on a real model, optimizer and loader (the embedded corpus): N steps straight equal
// N/2 steps, save, a fresh process state resumed from the checkpoint, N/2 steps, bit for bit (parameters, moments,
// selection biases, loader position, counters). The steps are the trainer's (train/trainer.c) written out here.
#include "test.h"
#include "child_exit.h"
#include "model/model.h"
#include "train/check.h"
#include "train/ckpt.h"
#include "train/ckpt_run.h"
#include "train/hf_io.h"
#include "train/optim.h"

#include <math.h>

typedef struct {
    Config cfg;
    Model *m;
    AdamW opt;
    Loader *train;
    RunCounters c;
    uint32_t *tokens;
} Run;

static void run_config(Config *cfg) {
    char run_dir[4300], shards[4300];
    snprintf(run_dir, sizeof run_dir, "log.run_dir=%s/run", test_tmpdir());
    snprintf(shards, sizeof shards, "data.train=%s", test_path("data/corpus/train-*.h5"));
    char *sets[] = {run_dir, shards, "train.seq_len=32", "train.micro_batch=2", "train.batch_start=4",
                    "train.batch_end=4", "train.eval_every=0", "checkpoint.keep_last=2", "data.prefetch=1"};
    config_load(cfg, test_path("configs/tiny.yaml"), (int)(sizeof sets / sizeof *sets), sets);
}

static void run_open(Run *r, uint64_t init_seed) {
    memset(r, 0, sizeof *r);
    run_config(&r->cfg);
    const Config *cfg = &r->cfg;
    LoaderOptions o = {.shards = cfg->data.train, .seq_len = cfg->train.seq_len, .mtp_depth = cfg->model.mtp_depth,
                       .micro_batch = cfg->train.micro_batch, .dp_rank = 0, .dp_size = 1, .seed = cfg->train.seed,
                       .shuffle = cfg->data.shuffle, .vocab_size = (uint32_t)cfg->model.vocab_size,
                       .prefetch = cfg->data.prefetch};
    r->train = loader_open(&o);
    r->m = model_create(cfg, &backend_cpu, params_full_stage(&cfg->model), cfg->train.micro_batch, cfg->train.seq_len);
    model_init(r->m, init_seed);
    adamw_create(&r->opt, &backend_cpu, model_params(r->m));
    r->tokens = xmalloc((size_t)cfg->train.micro_batch * (cfg->train.seq_len + 1 + cfg->model.mtp_depth) * 4);
}

static void run_close(Run *r) {
    adamw_free(&r->opt);
    model_free(r->m);
    loader_close(r->train);
    free(r->tokens);
}

// One optimizer step as train/trainer.c takes it.
static void run_step(Run *r) {
    const TrainConfig *tc = &r->cfg.train;
    long batch = config_batch_size(&r->cfg, r->c.tokens);
    int n_micro = (int)(batch / tc->micro_batch);
    float lr = (float)schedule_value(&tc->lr, r->c.tokens);
    float gamma = (float)schedule_value(&tc->bias_update_speed, r->c.tokens);
    float lambda = (float)schedule_value(&tc->mtp_lambda, r->c.tokens);
    model_zero_grads(r->m);
    model_reset_counts(r->m);
    for (int i = 0; i < n_micro; i++) {
        MicroLosses l;
        loader_next(r->train, r->tokens);
        model_step(r->m, (const int32_t *)r->tokens, 1.0f / n_micro, lambda, (float)tc->balance_alpha, &l);
    }
    const ParamTable *t = model_params(r->m);
    double gnorm = optim_grad_norm(&backend_cpu, t, model_grad_data(r->m));
    AdamWHyper h = {lr, (float)tc->beta1, (float)tc->beta2, (float)tc->eps, (float)tc->weight_decay,
                    (float)tc->grad_clip};
    adamw_step(&r->opt, model_param_data(r->m), model_grad_data(r->m), &h, gnorm);
    for (int i = 0; i < model_n_moe_layers(r->m); i++)
        moe_bias_update(model_expert_bias(r->m, i), model_expert_counts(r->m, i), r->cfg.model.n_routed_experts, gamma);
    r->c.step++;
    r->c.tokens += (double)batch * tc->seq_len;
}

static void assert_same_state(Run *a, Run *b) {
    const ParamTable *t = model_params(a->m);
    ASSERT(memcmp(model_param_data(a->m), model_param_data(b->m), (size_t)t->total * 4) == 0);
    ASSERT(memcmp(a->opt.m, b->opt.m, (size_t)t->total * 2) == 0);
    ASSERT(memcmp(a->opt.v, b->opt.v, (size_t)t->total * 2) == 0);
    ASSERT_EQ_INT(a->opt.t, b->opt.t);
    for (int i = 0; i < model_n_moe_layers(a->m); i++)
        ASSERT(memcmp(model_expert_bias(a->m, i), model_expert_bias(b->m, i),
                      (size_t)a->cfg.model.n_routed_experts * 4) == 0);
    ASSERT_EQ_INT(loader_position(a->train), loader_position(b->train));
    ASSERT(memcmp(&a->c, &b->c, sizeof a->c) == 0);
}

TEST(ckpt_run_resume_is_bit_exact) {
    RunLayout lay = ckpt_run_single();
    Run a, b;
    run_open(&a, 42);
    for (int s = 0; s < 2; s++) run_step(&a);
    a.c.nonfinite_total = 5;   // counters travel too
    ckpt_run_save(&a.cfg, &lay, a.m, &a.opt, a.train, &a.c);
    for (int s = 0; s < 2; s++) run_step(&a);

    run_open(&b, 7);   // another init: everything must come from the checkpoint
    ASSERT_EQ_INT(ckpt_run_resume(&b.cfg, "auto", &lay, b.m, &b.opt, b.train, &b.c), 1);
    ASSERT_EQ_INT(b.c.step, 2);
    ASSERT_EQ_INT(b.c.nonfinite_total, 5);
    ASSERT_EQ_INT(b.opt.t, 2);
    for (int s = 0; s < 2; s++) run_step(&b);
    assert_same_state(&a, &b);
    // The manifest records the effective config.
    char root[4400], path[4400];
    ckpt_run_root(&a.cfg, root, sizeof root);
    ASSERT(ckpt_find_latest(root, path, sizeof path));
    Ckpt *c = ckpt_open(path);
    ASSERT_CONTAINS(ckpt_config_text(c), "seq_len: 32");
    ckpt_close(c);
    run_close(&a);
    run_close(&b);
}

static void resume_other_data(void *arg) {
    (void)arg;
    Run r;
    run_open(&r, 1);
    LoaderOptions o = {.shards = r.cfg.data.train, .seq_len = 16, .mtp_depth = r.cfg.model.mtp_depth,
                       .micro_batch = 2, .dp_size = 1, .seed = r.cfg.train.seed, .shuffle = 1,
                       .vocab_size = (uint32_t)r.cfg.model.vocab_size};
    loader_close(r.train);
    r.train = loader_open(&o);
    RunLayout lay = ckpt_run_single();
    ckpt_run_resume(&r.cfg, "auto", &lay, r.m, &r.opt, r.train, &r.c);
    printf("resumed\n");
}

TEST(ckpt_run_fresh_start_and_changed_data_refused) {
    RunLayout lay = ckpt_run_single();
    Run a;
    run_open(&a, 42);
    // Nothing saved yet: auto starts fresh and leaves the state alone.
    ASSERT_EQ_INT(ckpt_run_resume(&a.cfg, "auto", &lay, a.m, &a.opt, a.train, &a.c), 0);
    ASSERT_EQ_INT(a.c.step, 0);
    run_step(&a);
    ckpt_run_save(&a.cfg, &lay, a.m, &a.opt, a.train, &a.c);
    run_close(&a);
    // The loader refuses a position saved for another sequence length (loader_state_load's check).
    char msg[8192];
    ASSERT_EQ_INT(child_exit_status(resume_other_data, NULL, msg, sizeof msg), 1);
    ASSERT_CONTAINS(msg, "loader state was saved with seq_len 32");
    ASSERT(!strstr(msg, "resumed"));
}

TEST(ckpt_run_init_from_hf_export) {
    Run a, b;
    run_open(&a, 42);
    run_step(&a);   // biases moved off zero
    char dir[4400];
    snprintf(dir, sizeof dir, "%s/hf", test_tmpdir());
    int n = model_n_moe_layers(a.m);
    float *bias[16];
    for (int i = 0; i < n; i++) bias[i] = model_expert_bias(a.m, i);
    hf_export_memory(&a.cfg.model, model_params(a.m), &backend_cpu, model_param_data(a.m), bias, dir,
                     &(HfExportOptions){.dtype = HF_F32});
    run_open(&b, 9);
    ckpt_run_init_from(dir, &b.cfg, b.m);
    ASSERT(memcmp(model_param_data(a.m), model_param_data(b.m), (size_t)model_params(a.m)->total * 4) == 0);
    for (int i = 0; i < n; i++)
        ASSERT(memcmp(model_expert_bias(a.m, i), model_expert_bias(b.m, i),
                      (size_t)a.cfg.model.n_routed_experts * 4) == 0);
    run_close(&a);
    run_close(&b);
}

TEST(ckpt_run_export_cli) {
    // build/train export on a run's checkpoint directory (newest checkpoint) and on an explicit checkpoint.
    RunLayout lay = ckpt_run_single();
    Run a;
    run_open(&a, 42);
    run_step(&a);
    ckpt_run_save(&a.cfg, &lay, a.m, &a.opt, a.train, &a.c);
    char root[4400], cmd[16384], *out = NULL;
    ckpt_run_root(&a.cfg, root, sizeof root);
    snprintf(cmd, sizeof cmd, "%s export %s %s/hf --dtype bf16 --max-shard-size 100000 && ls %s/hf", test_bin("train"),
             root, test_tmpdir(), test_tmpdir());
    ASSERT_EQ_INT(test_run(cmd, &out), 0);
    ASSERT_CONTAINS(out, "model-00001-of-");
    ASSERT_CONTAINS(out, "model.safetensors.index.json");
    ASSERT_CONTAINS(out, "config.json");
    free(out);
    // The export imports back to the model's values rounded to BF16.
    Run b;
    run_open(&b, 3);
    char dir[4400];
    snprintf(dir, sizeof dir, "%s/hf", test_tmpdir());
    ckpt_run_init_from(dir, &b.cfg, b.m);
    const ParamTable *t = model_params(a.m);
    for (int k = 0; k < t->n; k++)
        for (int64_t i = 0; i < t->params[k].numel; i++) {
            float x = model_param_data(a.m)[t->params[k].offset + i];
            float y = model_param_data(b.m)[t->params[k].offset + i];
            ASSERT_MSG(y == bf16_to_f32(bf16_from_f32(x)), "%s[%lld]", t->params[k].name, (long long)i);
        }
    // Usage errors: exit 2 with the usage line; a path that holds no checkpoint: exit 1 naming it.
    snprintf(cmd, sizeof cmd, "%s export %s", test_bin("train"), root);
    ASSERT_EQ_INT(test_run(cmd, &out), 2);
    ASSERT_CONTAINS(out, "build/train export CKPT OUT_DIR");
    free(out);
    snprintf(cmd, sizeof cmd, "%s export %s %s/x --dtype fp16", test_bin("train"), root, test_tmpdir());
    ASSERT_EQ_INT(test_run(cmd, &out), 2);
    ASSERT_CONTAINS(out, "expected fp32 or bf16");
    free(out);
    snprintf(cmd, sizeof cmd, "%s export %s/nothing %s/y", test_bin("train"), test_tmpdir(), test_tmpdir());
    ASSERT_EQ_INT(test_run(cmd, &out), 1);
    ASSERT_CONTAINS(out, "nothing is neither a checkpoint nor a directory holding a complete one");
    free(out);
    run_close(&a);
    run_close(&b);
}
