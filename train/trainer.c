// The step loop: micro-batches with gradient accumulation up to the (ramping) global batch, global-norm clipping,
// AdamW, the bias update from the step's expert load, schedules, metrics, evaluation, and the non-finite guard.
#include "train/trainer.h"
#include "train/check.h"
#include "train/optim.h"
#include "train/ckpt.h"
#include "train/hf_io.h"
#include "train/plan.h"
#include "train/signals.h"
#include "kernels/profile.h"
#include "model/model.h"
#include "data/loader.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>

static double wall_s(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return tv.tv_sec + tv.tv_usec * 1e-6;
}

static void fmt_count(char *buf, size_t n, double x) {
    if (x >= 1e12) snprintf(buf, n, "%.2fT", x / 1e12);
    else if (x >= 1e9) snprintf(buf, n, "%.2fB", x / 1e9);
    else if (x >= 1e6) snprintf(buf, n, "%.2fM", x / 1e6);
    else if (x >= 1e3) snprintf(buf, n, "%.1fK", x / 1e3);
    else snprintf(buf, n, "%.0f", x);
}

static void fmt_duration(char *buf, size_t n, double s) {
    if (!isfinite(s) || s < 0) { snprintf(buf, n, "?"); return; }
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(buf, n, "%ldh%02ldm", t / 3600, (t / 60) % 60);
    else if (t >= 60) snprintf(buf, n, "%ldm%02lds", t / 60, t % 60);
    else snprintf(buf, n, "%lds", t);
}

void trainer_ckpt_root(const Config *cfg, char *out, size_t n) {
    if (cfg->checkpoint.dir[0]) snprintf(out, n, "%s", cfg->checkpoint.dir);
    else snprintf(out, n, "%s/checkpoints", cfg->log.run_dir);
}

// What a resumed run needs besides parameters, moments, biases and the loader position.
typedef struct {
    int64_t nonfinite_total;
    int32_t nonfinite_run, pad_;
} TrainerCounters;

typedef struct {
    const Config *cfg;
    const TrainOptions *opt;
    char root[CKPT_PATH_MAX];
    Model *m;
    AdamW *adam;
    Loader *train;
    float **bias;           // host [E] rows of the MoE layers, table order
} CkptCtx;

static CkptStage ckpt_stage_of(CkptCtx *c) {
    return (CkptStage){.table = model_params(c->m), .be = c->adam->be, .params = model_param_data(c->m),
                       .adam_m = c->adam->m, .adam_v = c->adam->v, .adam_t = c->adam->t, .bias = c->bias,
                       .n_bias = model_n_moe_layers(c->m), .stage = 0, .ep_part = 0};
}

static void trainer_save(CkptCtx *c, long step, double tokens, TrainerCounters *counters) {
    LoaderState ls;
    loader_state_save(c->train, &ls);
    CkptOptions o = {.root = c->root, .model = &c->cfg->model, .config_text = c->opt->config_text,
                     .keep_last = c->cfg->checkpoint.keep_last, .keep_every = c->cfg->checkpoint.keep_every};
    CkptStage st = ckpt_stage_of(c);
    CkptRankState rs = {.step = step, .tokens = tokens, .rank = 0, .world = 1, .dp_size = 1, .pp_size = 1,
                        .ep_size = 1, .n_blobs = 2};
    rs.blobs[0] = (CkptBlob){"loader", &ls, sizeof ls};
    rs.blobs[1] = (CkptBlob){"trainer", counters, sizeof *counters};
    ckpt_save(&o, &st, &rs);   // logs the path and size
}

// Loads a checkpoint into the model, optimizer, biases, loader and counters; returns its step and token count.
static void trainer_load(CkptCtx *c, const char *path, long *step, double *tokens, TrainerCounters *counters) {
    Ckpt *ck = ckpt_open(path);
    ckpt_check_model(ck, &c->cfg->model);
    CkptStage st = ckpt_stage_of(c);
    ckpt_load_stage(ck, &st);
    c->adam->t = st.adam_t;
    LoaderState ls;
    CkptRankState rs = {.rank = 0, .world = 1, .dp_size = 1, .pp_size = 1, .ep_size = 1, .n_blobs = 2};
    rs.blobs[0] = (CkptBlob){"loader", &ls, sizeof ls};
    rs.blobs[1] = (CkptBlob){"trainer", counters, sizeof *counters};
    ckpt_load_rank(ck, &rs);
    loader_state_load(c->train, &ls);
    *step = rs.step;
    *tokens = rs.tokens;
    ckpt_close(ck);
    log_info("resumed from %s: step %ld, %.0f tokens", path, *step, *tokens);
}

// On resume, the metrics file keeps the lines of steps up to the checkpoint (a crashed run may have logged steps
// past it, which the resumed run repeats). Rewritten atomically; returns the file opened for appending.
// The benchmark line: steady-state tokens/s, model TFLOP/s by the planner's FLOPs per token (6 x active matmul
// parameters + causal attention, MTP included when the model has it), MFU against the H100 SXM's dense BF16 peak,
// and the device memory in use (the peak: nothing is allocated after the first step).
#define TRAINER_PEAK_TFLOPS 989.0   // H100 SXM, dense BF16 tensor cores (the figure MFU is quoted against)
static void trainer_report_throughput(const Config *cfg, const Backend *be, double tok_s) {
    PlanResult pr;
    plan_compute(cfg, &pr);
    double fpt = pr.flops + (cfg->model.mtp_depth > 0 ? pr.flops_mtp : 0.0);
    double tflops = tok_s * fpt / 1e12;
    size_t used = 0, total = 0;
    be->memory_in_use(&used, &total);
    if (total > 0)
        log_info("throughput: %.1fK tokens/s after step 2, %.1f TFLOP/s (%.3f GFLOP/token), MFU %.1f%% of %.0f "
                 "TFLOP/s dense BF16; device memory in use %.1f of %.1f GiB", tok_s / 1e3, tflops, fpt / 1e9,
                 100.0 * tflops / TRAINER_PEAK_TFLOPS, TRAINER_PEAK_TFLOPS, used / 1073741824.0,
                 total / 1073741824.0);
    else
        log_info("throughput: %.1fK tokens/s after step 2, %.3f TFLOP/s (%.3f GFLOP/token)", tok_s / 1e3, tflops,
                 fpt / 1e9);
}

static FILE *metrics_open(const char *path, long resume_step) {
    if (resume_step > 0) {
        FILE *in = fopen(path, "r");
        if (in) {
            char tmp[CONFIG_PATH_MAX + 64];
            snprintf(tmp, sizeof tmp, "%s.tmp", path);
            FILE *out = fopen(tmp, "w");
            if (!out) die("cannot write %s: %s", tmp, strerror(errno));
            char *line = NULL;
            size_t cap = 0;
            while (getline(&line, &cap, in) > 0) {
                const char *p = strstr(line, "\"step\":");
                if (p && strtol(p + 7, NULL, 10) <= resume_step) fputs(line, out);
            }
            free(line);
            fclose(in);
            if (fclose(out) != 0 || rename(tmp, path) != 0) die("cannot rewrite %s: %s", path, strerror(errno));
        }
    }
    FILE *f = fopen(path, resume_step > 0 ? "a" : "w");
    if (!f) die("cannot write %s: %s", path, strerror(errno));
    return f;
}

// log.profile: evaluation and checkpoints are kept out of the step profile (the wrapped ops call straight through).
static void profile_pause(const Config *cfg, int pause) {
    if (cfg->log.profile) profile_set_active(!pause);
}

// log.profile: the table in the log and <run_dir>/profile.json.
static void profile_finish(const Config *cfg, long steps_run) {
    if (!cfg->log.profile) return;
    if (steps_run < 2)
        log_warn("log.profile: %ld step(s) ran and the first is warm-up, so the profile is empty (run 2 or more)",
                 steps_run);
    profile_report(stderr);
    char path[CONFIG_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/profile.json", cfg->log.run_dir);
    profile_write_json(path);
    log_info("profile: wrote %s", path);
    profile_set_active(0);   // what follows (final evaluation, checkpoint) is not profiled
}

static Loader *open_loader(const Config *cfg, const char *shards, int shuffle) {
    LoaderOptions o = {
        .shards = shards, .base_dir = NULL, .seq_len = cfg->train.seq_len, .mtp_depth = cfg->model.mtp_depth,
        .micro_batch = cfg->train.micro_batch, .dp_rank = 0, .dp_size = 1, .seed = cfg->train.seed,
        .shuffle = shuffle, .vocab_size = (uint32_t)cfg->model.vocab_size, .prefetch = cfg->data.prefetch,
    };
    return loader_open(&o);
}

// Mean losses over the validation stream's first eval_batches micro-batches (the stream restarts every time, so
// evaluations are comparable across steps).
static MicroLosses evaluate(Model *m, Loader *val, const Config *cfg, uint32_t *tokens, float mtp_lambda) {
    MicroLosses sum = {0};
    loader_rewind(val);
    int n = cfg->train.eval_batches;
    for (int i = 0; i < n; i++) {
        MicroLosses l;
        loader_next(val, tokens);
        model_eval(m, (const int32_t *)tokens, mtp_lambda, (float)cfg->train.balance_alpha, &l);
        sum.lm_loss += l.lm_loss / n;
        for (int k = 0; k < cfg->model.mtp_depth; k++) sum.mtp_loss[k] += l.mtp_loss[k] / n;
        sum.balance_loss += l.balance_loss / n;
        sum.total += l.total / n;
    }
    return sum;
}

// Test hook for the non-finite guard: DSV3_FAULT_NAN_STEPS="3,4,5" poisons the gradients of those steps (1-based),
// as an overflow in a kernel would. Read once at start-up into a small list; unset means an empty list.
#define FAULT_MAX 64
typedef struct { long steps[FAULT_MAX]; int n; } FaultSteps;

static FaultSteps fault_steps_read(void) {
    FaultSteps f = {.n = 0};
    const char *env = getenv("DSV3_FAULT_NAN_STEPS");
    for (const char *p = env; p && *p && f.n < FAULT_MAX;) {
        char *end;
        long s = strtol(p, &end, 10);
        if (end == p) break;
        f.steps[f.n++] = s;
        p = *end == ',' ? end + 1 : end;
    }
    return f;
}

static int fault_nan_at(const FaultSteps *f, long step) {
    for (int i = 0; i < f->n; i++)
        if (f->steps[i] == step) return 1;
    return 0;
}

int trainer_run(const Config *cfg, const TrainOptions *topt) {
    const TrainConfig *tc = &cfg->train;
    const ModelConfig *mc = &cfg->model;
    const Backend *be = backend_get(tc->backend == BACKEND_CUDA ? "cuda" : "cpu");
    // The first step is warm-up (plan caches, first-use allocations): the profile is reset once it is done.
    if (cfg->log.profile) {
        be = profile_wrap(be);
        log_info("log.profile: timing every backend op, synchronized one by one (slower than an unprofiled run)");
    }
    const int D = mc->mtp_depth, T = tc->seq_len, B = tc->micro_batch;
    const int row = T + 1 + D;

    Loader *train = open_loader(cfg, cfg->data.train, cfg->data.shuffle);
    Loader *val = cfg->data.val[0] && tc->eval_every > 0 ? open_loader(cfg, cfg->data.val, 0) : NULL;
    LoaderInfo info = loader_info(train);
    log_info("data: %d shard(s), %llu documents, %llu tokens, %llu windows of %d per epoch", info.n_shards,
             (unsigned long long)info.n_docs, (unsigned long long)info.n_tokens,
             (unsigned long long)info.windows_per_epoch, T);

    StageSpec stage = params_full_stage(mc);
    Model *m = model_create(cfg, be, stage, B, T);
    model_init(m, tc->seed);
    const ParamTable *table = model_params(m);
    float *params = model_param_data(m), *grads = model_grad_data(m);
    AdamW opt;
    adamw_create(&opt, be, table);
    const int n_moe = model_n_moe_layers(m);
    const int E = mc->n_routed_experts;
    log_info("model: %.3fM parameters in this stage, %d MoE layer(s), backend %s", table->total / 1e6, n_moe,
             be->name);

    uint32_t *tokens = xmalloc((size_t)B * row * sizeof(uint32_t));
    double *max_vio = xcalloc((size_t)(n_moe ? n_moe : 1), sizeof(double));
    long step = 0;
    double n_tokens = 0;
    TrainerCounters counters = {0};

    // Resume (or start from Hugging Face weights) before anything is written for this run.
    CkptCtx ck = {.cfg = cfg, .opt = topt, .m = m, .adam = &opt, .train = train};
    trainer_ckpt_root(cfg, ck.root, sizeof ck.root);
    ck.bias = xcalloc((size_t)(n_moe ? n_moe : 1), sizeof(float *));
    for (int i = 0; i < n_moe; i++) ck.bias[i] = model_expert_bias(m, i);
    char resume_path[CKPT_PATH_MAX];
    if (ckpt_resolve_resume(ck.root, topt->resume ? topt->resume : "", resume_path, sizeof resume_path)) {
        trainer_load(&ck, resume_path, &step, &n_tokens, &counters);
        model_params_changed(m);
    } else if (topt->init_from && topt->init_from[0]) {
        hf_import(topt->init_from, mc, table, be, params, ck.bias, n_moe);
        model_params_changed(m);
        log_info("initialized from %s", topt->init_from);
    }

    // The metrics file is created only once data and model are ready, so a run that cannot start leaves none.
    if (mkdir(cfg->log.run_dir, 0755) != 0 && errno != EEXIST)
        die("log.run_dir: cannot create %s: %s", cfg->log.run_dir, strerror(errno));
    char metrics_path[CONFIG_PATH_MAX + 32];
    snprintf(metrics_path, sizeof metrics_path, "%s/metrics.jsonl", cfg->log.run_dir);
    FILE *metrics = metrics_open(metrics_path, step);

    const FaultSteps faults = fault_steps_read();
    signals_install();
    long last_saved = step > 0 ? step : -1;
    double t_start = wall_s(), tokens_start = n_tokens;
    // Steady-state throughput is measured from the end of this run's second step: the first steps include one-time
    // work (cuBLASLt plans, scratch growth, the loader filling its prefetch queue).
    const long step0 = step;
    long steps_run = 0;
    double t_warm = 0, tokens_warm = 0;
    int status = 0;

    while ((tc->total_tokens <= 0 || n_tokens < tc->total_tokens) && (tc->max_steps == 0 || step < tc->max_steps)) {
        const long batch = config_batch_size(cfg, n_tokens);        // sequences in this global batch
        const int n_micro = (int)(batch / ((long)B * cfg->parallel.dp));
        const float lr = (float)schedule_value(&tc->lr, n_tokens);
        const float gamma = (float)schedule_value(&tc->bias_update_speed, n_tokens);
        const float mtp_lambda = (float)schedule_value(&tc->mtp_lambda, n_tokens);
        double t0 = wall_s();

        model_zero_grads(m);
        model_reset_counts(m);
        MicroLosses step_loss = {0};
        for (int micro = 0; micro < n_micro; micro++) {
            MicroLosses l;
            loader_next(train, tokens);
            model_step(m, (const int32_t *)tokens, 1.0f / n_micro, mtp_lambda, (float)tc->balance_alpha, &l);
            step_loss.lm_loss += l.lm_loss / n_micro;
            for (int k = 0; k < D; k++) step_loss.mtp_loss[k] += l.mtp_loss[k] / n_micro;
            step_loss.balance_loss += l.balance_loss / n_micro;
            step_loss.total += l.total / n_micro;
        }
        if (fault_nan_at(&faults, step + 1)) {
            float nan = NAN;
            be->upload(grads, &nan, sizeof nan);
        }

        double gnorm = optim_grad_norm(be, table, grads);
        if (!isfinite(gnorm) || !isfinite(step_loss.total)) {
            // Skip the update: parameters, moments, biases and schedules stay where they were; the data moves on.
            counters.nonfinite_run++;
            counters.nonfinite_total++;
            n_tokens += (double)batch * T;
            step++;
            log_warn("step %ld: non-finite %s (loss %g, grad norm %g): update skipped (%d in a row, %ld in total)",
                     step, isfinite(step_loss.total) ? "gradients" : "loss", step_loss.total, gnorm,
                     counters.nonfinite_run, (long)counters.nonfinite_total);
            fprintf(metrics, "{\"step\":%ld,\"tokens\":%.0f,\"skipped\":true,\"loss\":%.9g,\"grad_norm\":%.9g}\n",
                    step, n_tokens, step_loss.total, gnorm);
            fflush(metrics);
            if (counters.nonfinite_run >= tc->max_nonfinite_steps) {
                log_warn("stopping: %d consecutive steps with non-finite loss or gradients "
                         "(train.max_nonfinite_steps = %d)", counters.nonfinite_run, tc->max_nonfinite_steps);
                status = 3;
                break;
            }
            goto step_done;   // a skipped step still checkpoints when due and answers a stop signal
        }
        counters.nonfinite_run = 0;

        AdamWHyper h = {lr, (float)tc->beta1, (float)tc->beta2, (float)tc->eps, (float)tc->weight_decay,
                        (float)tc->grad_clip};
        adamw_step(&opt, params, grads, &h, gnorm);
        model_params_changed(m);   // the BF16 weight copy (train.precision bf16) is remade from the new masters
        for (int i = 0; i < n_moe; i++)
            max_vio[i] = moe_bias_update(model_expert_bias(m, i), model_expert_counts(m, i), E, gamma);

        step++;
        n_tokens += (double)batch * T;
        double now = wall_s();
        if (++steps_run == 2) t_warm = now, tokens_warm = n_tokens;
        double tok_s = (double)batch * T / (now - t0);
        double avg_tok_s = (n_tokens - tokens_start) / (now - t_start);
        double remaining = tc->total_tokens > 0 ? tc->total_tokens - n_tokens : INFINITY;
        if (tc->max_steps > 0) {
            double by_steps = (double)(tc->max_steps - step) * batch * T;
            if (by_steps < remaining) remaining = by_steps;
        }
        double mtp_sum = 0;
        for (int k = 0; k < D; k++) mtp_sum += step_loss.mtp_loss[k];

        fprintf(metrics, "{\"step\":%ld,\"tokens\":%.0f,\"loss\":%.9g,\"lm_loss\":%.9g,\"mtp_loss\":[", step,
                n_tokens, step_loss.total, step_loss.lm_loss);
        for (int k = 0; k < D; k++) fprintf(metrics, "%s%.9g", k ? "," : "", step_loss.mtp_loss[k]);
        fprintf(metrics, "],\"balance_loss\":%.9g,\"grad_norm\":%.9g,\"lr\":%.9g,\"gamma\":%.9g,\"mtp_lambda\":%.9g,"
                "\"batch\":%ld,\"tokens_per_s\":%.1f,\"max_vio\":[", step_loss.balance_loss, gnorm, lr, gamma,
                mtp_lambda, batch, tok_s);
        for (int i = 0; i < n_moe; i++) fprintf(metrics, "%s%.6g", i ? "," : "", max_vio[i]);
        fprintf(metrics, "],\"expert_load\":[");
        for (int i = 0; i < n_moe; i++) {
            const int64_t *c = model_expert_counts(m, i);
            fprintf(metrics, "%s[", i ? "," : "");
            for (int e = 0; e < E; e++) fprintf(metrics, "%s%lld", e ? "," : "", (long long)c[e]);
            fputc(']', metrics);
        }
        fprintf(metrics, "]}\n");
        fflush(metrics);

        if (cfg->log.every > 0 && (step % cfg->log.every == 0 || step == 1)) {
            char tk[32], eta[32], ts[32];
            fmt_count(tk, sizeof tk, n_tokens);
            fmt_duration(eta, sizeof eta, remaining / avg_tok_s);
            fmt_count(ts, sizeof ts, tok_s);
            double mv = 0;
            for (int i = 0; i < n_moe; i++) if (max_vio[i] > mv) mv = max_vio[i];
            log_info("step %5ld | tokens %8s | loss %.4f (lm %.4f mtp %.4f bal %.5f) | gnorm %.3f | lr %.3e | "
                     "maxvio %.3f | %s tok/s | ETA %s", step, tk, step_loss.total, step_loss.lm_loss, mtp_sum,
                     step_loss.balance_loss, gnorm, lr, mv, ts, eta);
        }

        if (val && step % tc->eval_every == 0) {
            profile_pause(cfg, 1);
            MicroLosses ev = evaluate(m, val, cfg, tokens, mtp_lambda);
            profile_pause(cfg, 0);
            log_info("eval  %5ld | val loss %.4f (lm %.4f)", step, ev.total, ev.lm_loss);
            fprintf(metrics, "{\"step\":%ld,\"tokens\":%.0f,\"eval_loss\":%.9g,\"eval_lm_loss\":%.9g}\n", step,
                    n_tokens, ev.total, ev.lm_loss);
            fflush(metrics);
        }

    step_done:;
        if (cfg->log.profile) {
            if (step == step0 + 1) profile_reset();
            else profile_step_done();
        }
        int sig = signals_stop_requested();
        if (sig || (cfg->checkpoint.every > 0 && step % cfg->checkpoint.every == 0)) {
            profile_pause(cfg, 1);
            trainer_save(&ck, step, n_tokens, &counters);
            profile_pause(cfg, 0);
            last_saved = step;
        }
        if (sig) {
            log_warn("%s received: checkpoint at step %ld written, exiting with status %d (requeue)",
                     signals_name(sig), step, SIGNALS_EXIT_REQUEUE);
            status = SIGNALS_EXIT_REQUEUE;
            break;
        }
    }

    profile_finish(cfg, step - step0);
    if (status == 0 && val && step % tc->eval_every != 0) {
        MicroLosses ev = evaluate(m, val, cfg, tokens, (float)schedule_value(&tc->mtp_lambda, n_tokens));
        log_info("eval  %5ld | val loss %.4f (lm %.4f)", step, ev.total, ev.lm_loss);
        fprintf(metrics, "{\"step\":%ld,\"tokens\":%.0f,\"eval_loss\":%.9g,\"eval_lm_loss\":%.9g}\n", step,
                n_tokens, ev.total, ev.lm_loss);
    }
    if (status == 0 && cfg->checkpoint.at_end && step != last_saved) trainer_save(&ck, step, n_tokens, &counters);
    if (status == 0) {
        double t_end = wall_s();
        log_info("done: %ld steps, %.0f tokens in %.1f s (%ld skipped)", step, n_tokens, t_end - t_start,
                 (long)counters.nonfinite_total);
        if (steps_run > 2) trainer_report_throughput(cfg, be, (n_tokens - tokens_warm) / (t_end - t_warm));
    }
    signals_uninstall();
    free(ck.bias);
    if (fclose(metrics) != 0) die("cannot write %s: %s", metrics_path, strerror(errno));
    free(tokens);
    free(max_vio);
    adamw_free(&opt);
    model_free(m);
    loader_close(train);
    if (val) loader_close(val);
    return status;
}
