// A training run's state <-> checkpoints / HF weights (see ckpt_run.h).
#include "train/ckpt_run.h"
#include "train/check.h"
#include "train/ckpt.h"
#include "train/hf_io.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

RunLayout ckpt_run_single(void) {
    RunLayout l = {.rank = 0, .world = 1, .dp_size = 1, .pp_size = 1, .ep_size = 1, .writes_stage = 1};
    return l;
}

void ckpt_run_root(const Config *cfg, char *out, size_t n) {
    int len = cfg->checkpoint.dir[0] ? snprintf(out, n, "%s", cfg->checkpoint.dir)
                                     : snprintf(out, n, "%s/checkpoints", cfg->log.run_dir);
    CHECK(len > 0 && (size_t)len < n, "checkpoint directory path too long");
}

// The model's selection-bias rows (host, one per MoE layer of the stage, in table order).
static float **bias_rows(Model *m, int *n) {
    *n = model_n_moe_layers(m);
    float **rows = xcalloc((size_t)(*n ? *n : 1), sizeof *rows);
    for (int i = 0; i < *n; i++) rows[i] = model_expert_bias(m, i);
    return rows;
}

static CkptStage stage_of(const RunLayout *lay, Model *m, const AdamW *opt, float **bias, int n_bias) {
    CkptStage s = {.table = model_params(m), .be = opt->be, .params = model_param_data(m), .adam_m = opt->m,
                   .adam_v = opt->v, .adam_t = opt->t, .bias = bias, .n_bias = n_bias, .stage = lay->pp_rank,
                   .ep_part = lay->ep_rank};
    return s;
}

static CkptRankState rank_state(const RunLayout *lay, LoaderState *ls, RunCounters *c) {
    CkptRankState rs = {.step = c->step, .tokens = c->tokens, .rank = lay->rank, .world = lay->world,
                        .dp_rank = lay->dp_rank, .dp_size = lay->dp_size, .pp_rank = lay->pp_rank,
                        .pp_size = lay->pp_size, .ep_rank = lay->ep_rank, .ep_size = lay->ep_size, .n_blobs = 2};
    rs.blobs[0] = (CkptBlob){"loader", ls, sizeof *ls};
    rs.blobs[1] = (CkptBlob){"trainer", c, sizeof *c};
    return rs;
}

void ckpt_run_save(const Config *cfg, const RunLayout *lay, Model *m, const AdamW *opt, const Loader *train,
                   const RunCounters *c) {
    char root[CKPT_PATH_MAX];
    ckpt_run_root(cfg, root, sizeof root);
    // The effective config, as the run directory's config.yaml has it, goes into the manifest.
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) die("open_memstream failed: %s", strerror(errno));
    config_dump(cfg, f);
    if (fclose(f) != 0) die("cannot format the config for the checkpoint manifest");
    int n_bias;
    float **bias = bias_rows(m, &n_bias);
    CkptStage st = stage_of(lay, m, opt, bias, n_bias);
    LoaderState ls;
    loader_state_save(train, &ls);
    RunCounters cc = *c;
    CkptRankState rs = rank_state(lay, &ls, &cc);
    CkptOptions o = {.root = root, .model = &cfg->model, .config_text = text, .keep_last = cfg->checkpoint.keep_last,
                     .keep_every = cfg->checkpoint.keep_every, .barrier = lay->barrier,
                     .barrier_ctx = lay->barrier_ctx};
    ckpt_save(&o, lay->writes_stage ? &st : NULL, &rs);
    free(bias);
    free(text);
}

int ckpt_run_resume(const Config *cfg, const char *resume, const RunLayout *lay, Model *m, AdamW *opt, Loader *train,
                    RunCounters *c) {
    char root[CKPT_PATH_MAX], path[CKPT_PATH_MAX];
    ckpt_run_root(cfg, root, sizeof root);
    if (!ckpt_resolve_resume(root, resume, path, sizeof path)) return 0;
    Ckpt *ck = ckpt_open(path);
    ckpt_check_model(ck, &cfg->model);
    int n_bias;
    float **bias = bias_rows(m, &n_bias);
    CkptStage st = stage_of(lay, m, opt, bias, n_bias);
    ckpt_load_stage(ck, &st);
    opt->t = st.adam_t;
    LoaderState ls;
    RunCounters cc;
    CkptRankState rs = rank_state(lay, &ls, &cc);
    ckpt_load_rank(ck, &rs);
    loader_state_load(train, &ls);   // dies if the data, seed, seq_len or MTP depth changed
    if (cc.step != rs.step || cc.tokens != rs.tokens)
        die("checkpoint %s: the trainer counters (step %lld, %.0f tokens) disagree with the rank file (step %lld, "
            "%.0f tokens)", path, (long long)cc.step, cc.tokens, (long long)rs.step, rs.tokens);
    *c = cc;
    log_info("resumed from %s: step %lld, %.0f tokens", path, (long long)c->step, c->tokens);
    free(bias);
    ckpt_close(ck);
    return 1;
}

void ckpt_run_init_from(const char *hf_dir, const Config *cfg, Model *m) {
    int n_bias;
    float **bias = bias_rows(m, &n_bias);
    const Backend *be = backend_get(cfg->train.backend == BACKEND_CUDA ? "cuda" : "cpu");
    hf_import(hf_dir, &cfg->model, model_params(m), be, model_param_data(m), bias, n_bias);
    free(bias);
}

int ckpt_cli_export(int argc, char **argv) {
    const char *src = NULL, *out = NULL;
    HfExportOptions o = {.dtype = HF_F32};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--dtype") == 0 && i + 1 < argc) {
            const char *d = argv[++i];
            if (strcmp(d, "fp32") == 0) o.dtype = HF_F32;
            else if (strcmp(d, "bf16") == 0) o.dtype = HF_BF16;
            else { fprintf(stderr, "export: --dtype %s: expected fp32 or bf16\n", d); return 2; }
        } else if (strcmp(a, "--max-shard-size") == 0 && i + 1 < argc) {
            char *end;
            double v = strtod(argv[++i], &end);
            if (end == argv[i] || *end || !(v >= 1)) {
                fprintf(stderr, "export: --max-shard-size %s: expected a number of bytes (e.g. 5e9)\n", argv[i]);
                return 2;
            }
            o.max_shard_bytes = (int64_t)v;
        } else if (a[0] == '-') {
            fprintf(stderr, "export: unknown option %s\nusage:\n" CKPT_CLI_EXPORT_USAGE, a);
            return 2;
        } else if (!src) src = a;
        else if (!out) out = a;
        else { fprintf(stderr, "export: unexpected argument %s\nusage:\n" CKPT_CLI_EXPORT_USAGE, a); return 2; }
    }
    if (!src || !out) { fprintf(stderr, "export: needs CKPT and OUT_DIR\nusage:\n" CKPT_CLI_EXPORT_USAGE); return 2; }
    char path[CKPT_PATH_MAX], man[CKPT_PATH_MAX + 16];
    snprintf(man, sizeof man, "%s/COMPLETE", src);
    FILE *f = fopen(man, "r");
    if (f) {
        fclose(f);
        snprintf(path, sizeof path, "%s", src);
    } else if (!ckpt_find_latest(src, path, sizeof path)) {
        die("export: %s is neither a checkpoint nor a directory holding a complete one", src);
    }
    hf_export_ckpt(path, out, &o);
    return 0;
}
