// Exact resume and crash safety of the training loop, through build/train: N steps straight equal N/2 steps, stop,
// resume, N/2 steps (losses at every step and the final parameters, moments and biases, bit for bit); a run killed
// with SIGKILL at random moments (mostly inside checkpoint writes) resumes with --resume auto from the last
// complete checkpoint and ends exactly where the uninterrupted run ends; SIGTERM writes a checkpoint and exits 75.
#include "tests/test.h"
#include "train/ckpt.h"
#include "train/config.h"
#include "train/signals.h"
#include "model/params.h"
#include "kernels/ops.h"

#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <spawn.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

// A smaller tiny model (dim 32, 32-token sequences, 4 per step), checkpointing every step: ~50 ms per step.
#define SMALL "--set model.dim=32 --set train.seq_len=32 --set train.micro_batch=2 --set train.batch_start=4 " \
              "--set train.batch_end=4 --set train.eval_every=0 --set checkpoint.keep_last=2 " \
              "--set checkpoint.every=1 --set log.every=100"

static void small_args(char *buf, size_t n, const char *run, int steps) {
    snprintf(buf, n, "configs/tiny.yaml " SMALL " --set 'data.train=%s' --set 'data.val=%s' "
             "--set log.run_dir=%s --set train.max_steps=%d", test_path("data/corpus/train-*.h5"),
             test_path("data/corpus/val-*.h5"), run, steps);
}

static int train_cmd(const char *run, int steps, const char *extra, char **out) {
    char args[8192], cmd[10000];
    small_args(args, sizeof args, run, steps);
    snprintf(cmd, sizeof cmd, "%s %s %s", test_bin("train"), args, extra ? extra : "");
    return test_run(cmd, out);
}

// The metrics lines without the wall-clock field, concatenated.
static char *metrics_without_speed(const char *run) {
    char path[PATH_MAX], *text = NULL, cmd[PATH_MAX + 128];
    snprintf(path, sizeof path, "%s/metrics.jsonl", run);
    snprintf(cmd, sizeof cmd, "sed -E 's/\"tokens_per_s\":[0-9.e+-]+,//' %s", path);
    ASSERT_EQ_INT(test_run(cmd, &text), 0);
    return text;
}

// Parameters, moments and biases of a checkpoint, loaded through the checkpoint reader into host buffers.
typedef struct { float *params; uint16_t *m, *v; float *bias; int64_t n, t; int n_bias, E; } State;

static State load_state(const char *ckpt) {
    Config cfg;
    char *sets[] = {"model.dim=32"};
    config_load(&cfg, test_path("configs/tiny.yaml"), 1, sets);
    ParamTable t;
    StageSpec st = params_full_stage(&cfg.model);
    params_build(&t, &cfg.model, &st);
    State s = {.n = t.total, .E = cfg.model.n_routed_experts};
    s.params = calloc((size_t)t.total, sizeof(float));
    s.m = calloc((size_t)t.total, 2);
    s.v = calloc((size_t)t.total, 2);
    s.n_bias = ckpt_table_moe_layers(&t, NULL, 0);
    s.bias = calloc((size_t)(s.n_bias * s.E + 1), sizeof(float));
    float *rows[16];
    for (int i = 0; i < s.n_bias; i++) rows[i] = s.bias + (size_t)i * s.E;
    CkptStage cs = {.table = &t, .be = &backend_cpu, .params = s.params, .adam_m = s.m, .adam_v = s.v,
                    .bias = rows, .n_bias = s.n_bias};
    char why[512];
    ASSERT_MSG(ckpt_verify(ckpt, why, sizeof why), "%s does not verify: %s", ckpt, why);
    Ckpt *c = ckpt_open(ckpt);
    ckpt_load_stage(c, &cs);
    s.t = cs.adam_t;
    ckpt_close(c);
    params_free(&t);
    return s;
}

static void assert_same_state(const char *a, const char *b) {
    State x = load_state(a), y = load_state(b);
    ASSERT_EQ_INT(x.n, y.n);
    ASSERT_EQ_INT(x.t, y.t);
    ASSERT_MSG(memcmp(x.params, y.params, (size_t)x.n * 4) == 0, "parameters differ: %s vs %s", a, b);
    ASSERT_MSG(memcmp(x.m, y.m, (size_t)x.n * 2) == 0, "first moments differ: %s vs %s", a, b);
    ASSERT_MSG(memcmp(x.v, y.v, (size_t)x.n * 2) == 0, "second moments differ: %s vs %s", a, b);
    ASSERT_MSG(memcmp(x.bias, y.bias, (size_t)x.n_bias * x.E * 4) == 0, "MoE biases differ: %s vs %s", a, b);
}

static void final_ckpt(const char *run, int step, char *out, size_t n) {
    char root[PATH_MAX + 16];
    snprintf(root, sizeof root, "%s/checkpoints", run);
    ckpt_path(root, step, out, n);
}

TEST(resume_is_bit_exact) {
    char straight[PATH_MAX], halves[PATH_MAX], a[PATH_MAX], b[PATH_MAX], *out;
    snprintf(straight, sizeof straight, "%s/straight", test_tmpdir());
    snprintf(halves, sizeof halves, "%s/halves", test_tmpdir());
    ASSERT_EQ_INT(train_cmd(straight, 8, NULL, &out), 0);
    ASSERT_EQ_INT(train_cmd(halves, 4, NULL, &out), 0);
    ASSERT_EQ_INT(train_cmd(halves, 8, NULL, &out), 0);   // --resume auto is the default
    ASSERT_CONTAINS(out, "resumed from");
    ASSERT_CONTAINS(out, "step-000000004: step 4");
    ASSERT_EQ_STR(metrics_without_speed(halves), metrics_without_speed(straight));
    final_ckpt(straight, 8, a, sizeof a);
    final_ckpt(halves, 8, b, sizeof b);
    assert_same_state(a, b);
}

TEST(resume_none_starts_fresh_and_a_model_change_is_refused) {
    char run[PATH_MAX], *out;
    snprintf(run, sizeof run, "%s/run", test_tmpdir());
    ASSERT_EQ_INT(train_cmd(run, 2, NULL, &out), 0);
    ASSERT_EQ_INT(train_cmd(run, 3, "--resume none", &out), 0);
    ASSERT_MSG(!strstr(out, "resumed from"), "--resume none resumed:\n%s", out);
    // The same run directory with another model section: a clear error naming the key.
    int rc = train_cmd(run, 4, "--set model.n_heads=2", &out);
    ASSERT_EQ_INT(rc, 1);
    ASSERT_CONTAINS(out, "n_heads");
}

TEST(sigterm_checkpoints_and_exits_for_requeue) {
    char run[PATH_MAX], args[8192], straight[PATH_MAX], a[PATH_MAX], b[PATH_MAX], *out;
    snprintf(run, sizeof run, "%s/run", test_tmpdir());
    snprintf(straight, sizeof straight, "%s/straight", test_tmpdir());
    // checkpoint.every 0: only the signal (and the end) write checkpoints.
    small_args(args, sizeof args, run, 400);
    char cmd[10000];
    snprintf(cmd, sizeof cmd, "%s %s --set checkpoint.every=0 & pid=$!; sleep 1.5; kill -TERM $pid; wait $pid",
             test_bin("train"), args);
    int rc = test_run(cmd, &out);
    ASSERT_MSG(rc == SIGNALS_EXIT_REQUEUE, "exit status %d, expected %d:\n%s", rc, SIGNALS_EXIT_REQUEUE, out);
    ASSERT_CONTAINS(out, "SIGTERM received: checkpoint at step");
    const char *p = strstr(out, "checkpoint at step ");
    int stopped = atoi(p + strlen("checkpoint at step "));
    ASSERT(stopped >= 1 && stopped < 400);
    // Resuming to stopped + 2 steps matches a straight run of that length.
    ASSERT_EQ_INT(train_cmd(run, stopped + 2, "--set checkpoint.every=0", &out), 0);
    ASSERT_EQ_INT(train_cmd(straight, stopped + 2, "--set checkpoint.every=0", &out), 0);
    final_ckpt(run, stopped + 2, a, sizeof a);
    final_ckpt(straight, stopped + 2, b, sizeof b);
    assert_same_state(a, b);
    ASSERT_EQ_STR(metrics_without_speed(run), metrics_without_speed(straight));
}

static double now_s(void) { struct timeval tv; gettimeofday(&tv, NULL); return tv.tv_sec + tv.tv_usec * 1e-6; }

TEST(sigkill_at_random_moments_never_loses_a_checkpoint) {
    enum { STEPS = 10, TRIALS = 24 };
    char ref[PATH_MAX], refckpt[PATH_MAX], *out;
    snprintf(ref, sizeof ref, "%s/ref", test_tmpdir());
    double t0 = now_s();
    ASSERT_EQ_INT(train_cmd(ref, STEPS, NULL, &out), 0);
    double full = now_s() - t0;
    final_ckpt(ref, STEPS, refckpt, sizeof refckpt);
    char *ref_metrics = metrics_without_speed(ref);
    unsigned seed = (unsigned)time(NULL);
    fprintf(stderr, "    uninterrupted run %.2f s; kill seed %u\n", full, seed);
    srand(seed);
    int resumed_mid = 0;
    for (int trial = 0; trial < TRIALS; trial++) {
        char run[PATH_MAX], args[8192], root[PATH_MAX + 16], latest[CKPT_PATH_MAX], mine[PATH_MAX];
        snprintf(run, sizeof run, "%s/t%02d", test_tmpdir(), trial);
        small_args(args, sizeof args, run, STEPS);
        char *argv[64];
        int argc = 0;
        argv[argc++] = (char *)test_bin("train");
        // Split args on spaces, removing the single quotes around the data patterns (no shell here).
        char *save = NULL;
        for (char *tok = strtok_r(args, " ", &save); tok && argc < 62; tok = strtok_r(NULL, " ", &save)) {
            size_t L = strlen(tok);
            if (tok[0] == '\'') { tok++; L--; }
            if (L && tok[L - 1] == '\'') tok[L - 1] = 0;
            argv[argc++] = tok;
        }
        argv[argc] = NULL;
        pid_t pid;
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
        ASSERT_EQ_INT(posix_spawn(&pid, argv[0], &fa, NULL, argv, environ), 0);
        posix_spawn_file_actions_destroy(&fa);
        // Uniform over the run's length: with a checkpoint every step, most of it is spent writing checkpoints.
        usleep((useconds_t)(1e6 * full * rand() / (double)RAND_MAX));
        kill(pid, SIGKILL);
        int st;
        waitpid(pid, &st, 0);
        // What --resume auto must pick: the newest checkpoint that verifies (or none).
        snprintf(root, sizeof root, "%s/checkpoints", run);
        int have = ckpt_find_latest(root, latest, sizeof latest);
        ASSERT_EQ_INT(train_cmd(run, STEPS, NULL, &out), 0);
        if (have) {
            resumed_mid++;
            char want[CKPT_PATH_MAX + 32];
            snprintf(want, sizeof want, "resumed from %s", latest);
            ASSERT_CONTAINS(out, want);
        }
        final_ckpt(run, STEPS, mine, sizeof mine);
        assert_same_state(mine, refckpt);
        ASSERT_EQ_STR(metrics_without_speed(run), ref_metrics);
    }
    fprintf(stderr, "    %d of %d trials resumed from a checkpoint written before the kill\n", resumed_mid, TRIALS);
    ASSERT(resumed_mid >= TRIALS / 4);   // the kills were not all before the first checkpoint
}

TEST(sample_and_export_from_a_trained_run) {
    char run[PATH_MAX], cmd[PATH_MAX * 2 + 256], hf[PATH_MAX], *out;
    snprintf(run, sizeof run, "%s/run", test_tmpdir());
    ASSERT_EQ_INT(train_cmd(run, 2, NULL, &out), 0);
    // A run directory stands for its newest checkpoint; greedy output is deterministic: two calls agree.
    snprintf(cmd, sizeof cmd, "%s sample %s --prompt 'The ' --tokens 12 2>/dev/null", test_bin("train"), run);
    char *a, *b;
    ASSERT_EQ_INT(test_run(cmd, &a), 0);
    ASSERT_EQ_INT(test_run(cmd, &b), 0);
    ASSERT_MSG(strncmp(a, "The ", 4) == 0, "sample output does not start with the prompt: %s", a);
    ASSERT_EQ_STR(a, b);
    // --backend cpu (the run's own backend here) gives the same text; a bad backend is a clear error.
    snprintf(cmd, sizeof cmd, "%s sample %s --prompt 'The ' --tokens 12 --backend cpu 2>/dev/null", test_bin("train"),
             run);
    ASSERT_EQ_INT(test_run(cmd, &b), 0);
    ASSERT_EQ_STR(a, b);
    snprintf(cmd, sizeof cmd, "%s sample %s --backend tpu", test_bin("train"), run);
    ASSERT_EQ_INT(test_run(cmd, &out), 1);
    ASSERT_CONTAINS(out, "sample: --backend tpu: expected cpu or cuda");
    snprintf(cmd, sizeof cmd, "%s sample %s --temperature -1", test_bin("train"), run);
    ASSERT_EQ_INT(test_run(cmd, &out), 1);
    ASSERT_CONTAINS(out, "temperature");
    // Export of the same run's checkpoint: a Hugging Face directory with config.json and one safetensors file.
    snprintf(hf, sizeof hf, "%s/hf", test_tmpdir());
    snprintf(cmd, sizeof cmd, "%s export %s/checkpoints/step-000000002 %s --dtype fp32", test_bin("train"), run, hf);
    ASSERT_EQ_INT(test_run(cmd, &out), 0);
    snprintf(cmd, sizeof cmd, "ls %s", hf);
    ASSERT_EQ_INT(test_run(cmd, &out), 0);
    ASSERT_EQ_STR(out, "config.json\nmodel.safetensors\n");
    // A checkpoint path that is not one: a clear error.
    snprintf(cmd, sizeof cmd, "%s export %s/nope %s/hf2", test_bin("train"), run, test_tmpdir());
    ASSERT_EQ_INT(test_run(cmd, &out), 1);
    ASSERT_CONTAINS(out, "is not a complete checkpoint");
}
