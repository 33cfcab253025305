// Checkpoints: bitwise round trip, every kind of bad checkpoint (auto falls back, an explicit path fails), retention,
// model mismatch, resharding across pipeline / expert splits and world sizes, the multi-rank protocol (forked ranks
// with a pipe barrier), and the signal flag.
#include "test.h"
#include "child_exit.h"
#include "ckpt_testutil.h"
#include "model_configs.h"
#include "train/ckpt.h"
#include "train/fsio.h"
#include "train/signals.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static ModelConfig tiny(void) {
    ModelConfig m = test_model_tiny();   // 2 layers (dense, MoE), 4 experts, MTP 1 (a second MoE layer)
    m.group_score_topk = 2;
    return m;
}

typedef struct {
    uint8_t loader[48];
    uint64_t rng[4];
} Extra;

static void extra_fill(Extra *x, int64_t step) {
    for (int i = 0; i < 48; i++) x->loader[i] = (uint8_t)(tu_mix((uint64_t)(step * 100 + i)) & 0xFF);
    for (int i = 0; i < 4; i++) x->rng[i] = tu_mix((uint64_t)(step * 7 + i));
}

static CkptRankState rank_state(int64_t step, Extra *x, int rank, int world) {
    CkptRankState rs = {.step = step, .tokens = (double)step * 4096.0 + 0.5, .rank = rank, .world = world,
                        .dp_rank = rank, .dp_size = world, .pp_size = 1, .ep_size = 1, .n_blobs = 2};
    rs.blobs[0] = (CkptBlob){"loader", x->loader, sizeof x->loader};
    rs.blobs[1] = (CkptBlob){"rng", x->rng, sizeof x->rng};
    return rs;
}

// Saves checkpoint `step` of the whole tiny model, its values derived from `step`.
static void save_step(const char *root, int64_t step, int keep_last, int keep_every) {
    ModelConfig mc = tiny();
    TState s;
    tstate_create(&s, &mc, params_full_stage(&mc));
    tstate_fill(&s, (uint64_t)step);
    Extra x;
    extra_fill(&x, step);
    CkptOptions o = {.root = root, .model = &mc, .config_text = "model:\n  dim: 8\n", .keep_last = keep_last,
                     .keep_every = keep_every};
    CkptStage st = tstate_stage(&s, 0, 0);
    CkptRankState rs = rank_state(step, &x, 0, 1);
    ckpt_save(&o, &st, &rs);
    tstate_free(&s);
}

// Loads `path` into a fresh full-model state and checks it equals what save_step(step) saved, bit for bit.
static void check_loads_as(const char *path, int64_t step) {
    ModelConfig mc = tiny();
    TState want, got;
    tstate_create(&want, &mc, params_full_stage(&mc));
    tstate_fill(&want, (uint64_t)step);
    tstate_create(&got, &mc, params_full_stage(&mc));
    Ckpt *c = ckpt_open(path);
    ASSERT_EQ_INT(ckpt_step(c), step);
    ckpt_check_model(c, &mc);
    CkptStage st = tstate_stage(&got, 0, 0);
    st.adam_t = -5;
    ckpt_load_stage(c, &st);
    ASSERT_EQ_INT(st.adam_t, want.adam_t);
    char why[256];
    ASSERT_MSG(tstate_subset_equal(&want, &got, why, sizeof why), "step %lld: %s", (long long)step, why);
    Extra xw, xg;
    extra_fill(&xw, step);
    memset(&xg, 0, sizeof xg);
    CkptRankState rs = rank_state(-1, &xg, 0, 1);
    rs.tokens = -1;
    ckpt_load_rank(c, &rs);
    ASSERT_EQ_INT(rs.step, step);
    ASSERT(rs.tokens == (double)step * 4096.0 + 0.5);
    ASSERT(memcmp(&xw, &xg, sizeof xw) == 0);
    ckpt_close(c);
    tstate_free(&want);
    tstate_free(&got);
}

static char *root_dir(void) {
    static char buf[4200];
    snprintf(buf, sizeof buf, "%s/ckpt", test_tmpdir());
    return buf;
}

static const char *step_path(int64_t step) {
    static char buf[4][4400];
    static int k;
    char *b = buf[k++ % 4];
    ckpt_path(root_dir(), step, b, 4400);
    return b;
}

TEST(ckpt_roundtrip_bitwise) {
    const char *root = root_dir();
    save_step(root, 7, 3, 0);
    char path[4400];
    ASSERT(ckpt_find_latest(root, path, sizeof path));
    ASSERT_EQ_STR(path, step_path(7));
    char why[512];
    ASSERT_MSG(ckpt_verify(path, why, sizeof why), "%s", why);
    check_loads_as(path, 7);
    // The model section is recorded: the manifest gives back the config the checkpoint was saved with.
    Ckpt *c = ckpt_open(path);
    ModelConfig mc = tiny(), back;
    ckpt_model_config(c, &back);
    ASSERT_EQ_INT(back.dim, mc.dim);
    ASSERT_EQ_INT(back.n_routed_experts, mc.n_routed_experts);
    ASSERT_EQ_INT(back.q_lora_rank, mc.q_lora_rank);
    ASSERT(back.norm_eps == mc.norm_eps && back.route_scale == mc.route_scale);
    ASSERT_EQ_INT(ckpt_model_hash(c), config_model_hash(&mc));
    ASSERT_EQ_STR(ckpt_config_text(c), "model:\n  dim: 8\n");
    ckpt_close(c);
    // Files on disk: one stage file, one rank file, the manifest; no leftovers.
    char *out = NULL;
    char cmd[4600];
    snprintf(cmd, sizeof cmd, "ls %s", path);
    ASSERT_EQ_INT(test_run(cmd, &out), 0);
    ASSERT_EQ_STR(out, "COMPLETE\nrank-00000.h5\nstage-000-ep-000.h5\n");
    free(out);
    // Standard HDF5 tools read it (hdf5-tools is a build dependency): tensor names and shapes as documented.
    snprintf(cmd, sizeof cmd, "h5ls -r %s/stage-000-ep-000.h5", path);
    ASSERT_EQ_INT(test_run(cmd, &out), 0);
    ASSERT_CONTAINS(out, "/params/model.layers.0.self_attn.kv_a_proj_with_mqa.weight Dataset {6, 8}");
    ASSERT_CONTAINS(out, "/adam_v/model.layers.1.mlp.experts.3.down_proj.weight Dataset {8, 4}");
    ASSERT_CONTAINS(out, "/moe_bias/model.layers.2.mlp.gate.e_score_correction_bias Dataset {4}");
    free(out);
}

// ---- bad checkpoints ----

typedef enum { BAD_TRUNCATE, BAD_FLIP, BAD_NO_MANIFEST, BAD_NO_RANK, BAD_TMP, BAD_MANIFEST_JSON, BAD_STEP } BadKind;

static void corrupt(const char *path, BadKind kind) {
    char f[4600], g[4600];
    switch (kind) {
    case BAD_TRUNCATE: {
        snprintf(f, sizeof f, "%s/stage-000-ep-000.h5", path);
        struct stat st;
        ASSERT(stat(f, &st) == 0);
        ASSERT(truncate(f, st.st_size / 2) == 0);
        break;
    }
    case BAD_FLIP: {
        snprintf(f, sizeof f, "%s/stage-000-ep-000.h5", path);
        int fd = open(f, O_RDWR);
        ASSERT(fd >= 0);
        struct stat st;
        ASSERT(fstat(fd, &st) == 0);
        unsigned char b;
        off_t at = st.st_size * 2 / 3;   // inside the tensor data
        ASSERT(pread(fd, &b, 1, at) == 1);
        b ^= 0x10;
        ASSERT(pwrite(fd, &b, 1, at) == 1);
        close(fd);
        break;
    }
    case BAD_NO_MANIFEST:
        snprintf(f, sizeof f, "%s/COMPLETE", path);
        ASSERT(unlink(f) == 0);
        break;
    case BAD_NO_RANK:
        snprintf(f, sizeof f, "%s/rank-00000.h5", path);
        ASSERT(unlink(f) == 0);
        break;
    case BAD_TMP:
        snprintf(g, sizeof g, "%s.tmp", path);
        ASSERT(rename(path, g) == 0);
        break;
    case BAD_MANIFEST_JSON: {
        snprintf(f, sizeof f, "%s/COMPLETE", path);
        struct stat st;
        ASSERT(stat(f, &st) == 0);
        ASSERT(truncate(f, st.st_size - 20) == 0);
        break;
    }
    case BAD_STEP:   // a checkpoint directory renamed by hand to another step
        snprintf(g, sizeof g, "%s", path);
        memcpy(g + strlen(g) - 9, "000000003", 9);
        ASSERT(rename(path, g) == 0);
        break;
    }
}

static const char *g_resume_arg;
static void resolve_child(void *arg) {
    (void)arg;
    char path[4400];
    int r = ckpt_resolve_resume(root_dir(), g_resume_arg, path, sizeof path);
    printf("resolved %d %s\n", r, r ? path : "-");
}

TEST(ckpt_bad_checkpoints_fall_back_or_fail) {
    const struct { BadKind kind; const char *reason; } cases[] = {
        {BAD_TRUNCATE, "stage-000-ep-000.h5 has"},      // "... bytes, the manifest says ... (truncated)"
        {BAD_FLIP, "checksum mismatch in stage-000-ep-000.h5"},
        {BAD_NO_MANIFEST, "no manifest COMPLETE"},
        {BAD_NO_RANK, "rank-00000.h5 is missing"},
        {BAD_TMP, "temporary name"},
        {BAD_MANIFEST_JSON, "is not valid JSON"},
        {BAD_STEP, "manifest says step 2 but the directory is step 3"},
    };
    // Steps 1 and 2 saved once into a pristine copy; each case corrupts a fresh copy of it.
    char pristine[4400], cmd[9000];
    snprintf(pristine, sizeof pristine, "%s/pristine", test_tmpdir());
    save_step(pristine, 1, 5, 0);
    save_step(pristine, 2, 5, 0);
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        const char *root = root_dir();
        fsio_rmtree(root);
        snprintf(cmd, sizeof cmd, "cp -a %s %s", pristine, root);
        ASSERT_EQ_INT(test_run(cmd, NULL), 0);
        corrupt(step_path(2), cases[k].kind);
        char bad[4600];
        if (cases[k].kind == BAD_TMP) snprintf(bad, sizeof bad, "%s.tmp", step_path(2));
        else if (cases[k].kind == BAD_STEP) snprintf(bad, sizeof bad, "%s", step_path(3));
        else snprintf(bad, sizeof bad, "%s", step_path(2));
        if (cases[k].kind == BAD_TRUNCATE) {
            char why[512];
            ASSERT(!ckpt_verify(bad, why, sizeof why));
            ASSERT_CONTAINS(why, "(truncated)");
        }

        // auto: a warning naming the bad checkpoint and why, then step 1.
        char msg[8192];
        g_resume_arg = "auto";
        int st = child_exit_status(resolve_child, NULL, msg, sizeof msg);
        ASSERT_MSG(st == 0, "case %zu: exit %d: %s", k, st, msg);
        ASSERT_CONTAINS(msg, bad);
        ASSERT_CONTAINS(msg, cases[k].reason);
        ASSERT_CONTAINS(msg, "falling back");
        char want[4600];
        snprintf(want, sizeof want, "resolved 1 %s\n", step_path(1));
        ASSERT_CONTAINS(msg, want);
        check_loads_as(step_path(1), 1);

        // An explicit path: a clear error with the reason, non-zero exit.
        g_resume_arg = bad;
        st = child_exit_status(resolve_child, NULL, msg, sizeof msg);
        ASSERT_MSG(st == 1, "case %zu: explicit path exited %d: %s", k, st, msg);
        ASSERT_CONTAINS(msg, bad);
        ASSERT_CONTAINS(msg, cases[k].reason);
        ASSERT(!strstr(msg, "resolved"));
    }
    // An explicit good path resolves to itself.
    g_resume_arg = step_path(1);
    char msg[8192];
    ASSERT_EQ_INT(child_exit_status(resolve_child, NULL, msg, sizeof msg), 0);
    ASSERT_CONTAINS(msg, "resolved 1");
}

TEST(ckpt_resume_fresh_when_none) {
    char path[4400];
    // No directory at all, then an empty one, then only an unfinished save: all start fresh.
    ASSERT_EQ_INT(ckpt_resolve_resume(root_dir(), "auto", path, sizeof path), 0);
    fsio_mkdirs(root_dir());
    ASSERT_EQ_INT(ckpt_resolve_resume(root_dir(), "auto", path, sizeof path), 0);
    save_step(root_dir(), 4, 2, 0);
    corrupt(step_path(4), BAD_TMP);
    ASSERT_EQ_INT(ckpt_find_latest(root_dir(), path, sizeof path), 0);
    ASSERT_EQ_INT(ckpt_resolve_resume(root_dir(), "none", path, sizeof path), 0);
    ASSERT_EQ_INT(ckpt_resolve_resume(root_dir(), "", path, sizeof path), 0);
}

static char *list_root(void) {
    char cmd[4400], *out = NULL;
    snprintf(cmd, sizeof cmd, "ls %s | tr '\\n' ' '", root_dir());
    ASSERT_EQ_INT(test_run(cmd, &out), 0);
    return out;
}

TEST(ckpt_retention) {
    const char *root = root_dir();
    // keep_last 3, keep_every 4: after steps 1..10, {4, 8} (milestones) and {8, 9, 10} (newest) remain.
    for (int s = 1; s <= 9; s++) save_step(root, s, 3, 4);
    // Leftovers of crashes: an unfinished save and an interrupted deletion; both go with the next save.
    char p[4600];
    snprintf(p, sizeof p, "%s.tmp", step_path(5));
    fsio_mkdir(p);
    snprintf(p, sizeof p, "%s.deleting", step_path(3));
    fsio_mkdir(p);
    save_step(root, 10, 3, 4);
    char *ls = list_root();
    ASSERT_EQ_STR(ls, "step-000000004 step-000000008 step-000000009 step-000000010 ");
    free(ls);
    // Saving an existing step again replaces it (a resumed run reaching that step a second time).
    save_step(root, 10, 3, 4);
    check_loads_as(step_path(10), 10);
    // A resumed run saving step 6 while steps 8..10 exist from the earlier run: nothing newer is deleted, and the
    // older ones are kept by the same rules counted from step 6 (6 itself, 4 as the milestone and newest-but-one).
    save_step(root, 6, 2, 4);
    ls = list_root();
    ASSERT_EQ_STR(ls, "step-000000004 step-000000006 step-000000008 step-000000009 step-000000010 ");
    free(ls);
}

static ModelConfig g_other;
static void check_model_child(void *arg) {
    Ckpt *c = ckpt_open((const char *)arg);
    ckpt_check_model(c, &g_other);
    printf("accepted\n");
}

TEST(ckpt_model_mismatch_is_an_error) {
    save_step(root_dir(), 3, 2, 0);
    ModelConfig mc = tiny();
    g_other = mc;
    g_other.n_heads = 4;
    g_other.route_scale = 2.0;
    char msg[8192], h1[32], h2[32];
    int st = child_exit_status(check_model_child, (void *)step_path(3), msg, sizeof msg);
    ASSERT_EQ_INT(st, 1);
    snprintf(h1, sizeof h1, "%016llx", config_model_hash(&mc));
    snprintf(h2, sizeof h2, "%016llx", config_model_hash(&g_other));
    ASSERT_CONTAINS(msg, h1);
    ASSERT_CONTAINS(msg, h2);
    ASSERT_CONTAINS(msg, "model.n_heads: checkpoint 2, config 4");
    ASSERT_CONTAINS(msg, "model.route_scale: checkpoint 2.5, config 2");
    ASSERT(!strstr(msg, "accepted"));
    g_other = mc;
    ASSERT_EQ_INT(child_exit_status(check_model_child, (void *)step_path(3), msg, sizeof msg), 0);
}

// ---- multi-rank protocol and resharding ----

typedef struct {
    int pp, ep;       // rank r = stage * ep + ep_rank
} Layout;

static StageSpec layout_spec(const ModelConfig *mc, Layout l, int rank) { return tu_layout_spec(mc, l.pp, l.ep, rank); }

static void rank_blobs(CkptRankState *rs, void *ctx) {
    Extra *x = ctx;   // one per rank: each forked rank fills its own copy
    extra_fill(x, rs->step * 10 + rs->rank);
    rs->n_blobs = 2;
    rs->blobs[0] = (CkptBlob){"loader", x->loader, sizeof x->loader};
    rs->blobs[1] = (CkptBlob){"rng", x->rng, sizeof x->rng};
}

static void save_world(Layout l, int64_t step) {
    ModelConfig mc = tiny();
    Extra x;
    ASSERT_MSG(tu_save_world(root_dir(), &mc, l.pp, l.ep, 77, step, rank_blobs, &x), "a rank of the save failed");
}

// Loads checkpoint `step` into the tables of layout `l` (in this process, one table at a time) and compares each to
// the values saved.
static void load_as_layout(int64_t step, Layout l) {
    ModelConfig mc = tiny();
    Ckpt *c = ckpt_open(step_path(step));
    for (int r = 0; r < l.pp * l.ep; r++) {
        TState want, got;
        tstate_create(&want, &mc, layout_spec(&mc, l, r));
        tstate_fill(&want, 77);
        tstate_create(&got, &mc, layout_spec(&mc, l, r));
        CkptStage st = tstate_stage(&got, 0, 0);
        ckpt_load_stage(c, &st);
        char why[256];
        ASSERT_MSG(tstate_subset_equal(&want, &got, why, sizeof why), "layout pp %d ep %d rank %d: %s", l.pp, l.ep, r,
                   why);
        tstate_free(&want);
        tstate_free(&got);
    }
    ckpt_close(c);
}

TEST(ckpt_multirank_and_reshard) {
    // 2 pipeline stages x 2 expert slices = 4 forked ranks write one checkpoint together.
    Layout saved = {2, 2};
    save_world(saved, 5);
    char path[4400], why[512];
    ASSERT(ckpt_find_latest(root_dir(), path, sizeof path));
    ASSERT_MSG(ckpt_verify(path, why, sizeof why), "%s", why);
    char *out = NULL, cmd[4600];
    snprintf(cmd, sizeof cmd, "ls %s | tr '\\n' ' '", path);
    ASSERT_EQ_INT(test_run(cmd, &out), 0);
    ASSERT_EQ_STR(out, "COMPLETE rank-00000.h5 rank-00001.h5 rank-00002.h5 rank-00003.h5 stage-000-ep-000.h5 "
                       "stage-000-ep-001.h5 stage-001-ep-000.h5 stage-001-ep-001.h5 ");
    free(out);
    // Load it as one process, as 3 stages without EP, and as 1 stage x 4 expert slices.
    load_as_layout(5, (Layout){1, 1});
    load_as_layout(5, (Layout){3, 1});
    load_as_layout(5, (Layout){1, 4});
    // Rank state: same world -> own file; a world of 2 -> rank r reads rank r % 4 = r; a world of 6 -> rank 5
    // reads rank 1.
    Ckpt *c = ckpt_open(path);
    const int cases[][3] = {{4, 3, 3}, {2, 1, 1}, {6, 5, 1}};   // {world now, rank now, rank whose state it gets}
    for (int k = 0; k < 3; k++) {
        Extra want, got;
        extra_fill(&want, 5 * 10 + cases[k][2]);
        CkptRankState rs = rank_state(0, &got, cases[k][1], cases[k][0]);
        ckpt_load_rank(c, &rs);
        ASSERT_EQ_INT(rs.step, 5);
        ASSERT_MSG(memcmp(&want, &got, sizeof want) == 0, "world %d rank %d", cases[k][0], cases[k][1]);
    }
    ckpt_close(c);
}

static void load_blob_child(void *arg) {
    const char *which = arg;
    Ckpt *c = ckpt_open(step_path(2));
    uint8_t buf[64];
    CkptRankState rs = {.rank = 0, .world = 1, .n_blobs = 1};
    // "loader" with 64 bytes: a build whose LoaderState grew; "trainer": a blob this checkpoint never had.
    rs.blobs[0] = (CkptBlob){which, buf, sizeof buf};
    ckpt_load_rank(c, &rs);
    printf("loaded\n");
}

TEST(ckpt_blob_size_change_or_missing_blob_is_an_error) {
    save_step(root_dir(), 2, 2, 0);
    char msg[4096];
    ASSERT_EQ_INT(child_exit_status(load_blob_child, "loader", msg, sizeof msg), 1);
    ASSERT_CONTAINS(msg, "rank-00000.h5: state \"loader\" has 48 bytes, this build expects 64");
    ASSERT_EQ_INT(child_exit_status(load_blob_child, "trainer", msg, sizeof msg), 1);
    ASSERT_CONTAINS(msg, "state \"trainer\" is missing");
}

TEST(ckpt_signals_set_the_flag) {
    signals_install();
    ASSERT_EQ_INT(signals_stop_requested(), 0);
    ASSERT_EQ_INT(raise(SIGUSR1), 0);
    ASSERT_EQ_INT(signals_stop_requested(), SIGUSR1);
    ASSERT_EQ_INT(raise(SIGTERM), 0);   // the first signal is the one reported
    ASSERT_EQ_INT(signals_stop_requested(), SIGUSR1);
    ASSERT_EQ_STR(signals_name(SIGUSR1), "SIGUSR1");
    signals_clear();
    ASSERT_EQ_INT(raise(SIGTERM), 0);
    ASSERT_EQ_INT(signals_stop_requested(), SIGTERM);
    ASSERT_EQ_STR(signals_name(SIGTERM), "SIGTERM");
    ASSERT_EQ_INT(SIGNALS_EXIT_REQUEUE, 75);
    signals_uninstall();
}

// ---- crash safety ----

// Saves steps after the newest complete checkpoint, forever (until killed). Values depend on the step only.
static void save_forever(void) {
    char path[4400];
    int64_t step = 1;
    if (ckpt_find_latest(root_dir(), path, sizeof path)) step = strtoll(path + strlen(path) - 9, NULL, 10) + 1;
    for (;; step++) save_step(root_dir(), step, 2, 3);
}

// Every directory under a checkpoint name must verify: a crash may leave .tmp / .deleting leftovers, never a
// checkpoint-named directory that is incomplete.
static void check_all_final_verify(int trial) {
    char *ls = list_root();
    for (char *tok = strtok(ls, " "); tok; tok = strtok(NULL, " ")) {
        if (strlen(tok) != 14) continue;   // step-NNNNNNNNN exactly
        char p[4600], why[512];
        snprintf(p, sizeof p, "%s/%s", root_dir(), tok);
        ASSERT_MSG(ckpt_verify(p, why, sizeof why), "trial %d: %s is under a checkpoint name but %s", trial, tok, why);
    }
    free(ls);
}

TEST(ckpt_crash_safety_sigkill_during_saves) {
    // Kill a process that saves continuously (keep_last 2, keep_every 3: retention deletes as it goes) with SIGKILL
    // after a random delay, 24 times; each time the newest complete checkpoint must verify, load to exactly what was
    // saved at its step, never be older than the one found after the previous kill, and every directory with a
    // checkpoint name must verify. The seed is printed so a failure can be replayed.
    unsigned seed = (unsigned)getpid() ^ (unsigned)time(NULL);
    srand(seed);
    int64_t prev = 0;
    int found_any = 0, leftovers = 0;
    for (int trial = 0; trial < 24; trial++) {
        pid_t pid = fork();
        ASSERT(pid >= 0);
        if (pid == 0) {
            int devnull = open("/dev/null", O_WRONLY);
            dup2(devnull, 2);
            save_forever();
            _exit(0);
        }
        // Delays spread over several saves (a save of the tiny model takes ~10-30 ms here), at microsecond
        // granularity so that the kill lands in every phase of the protocol over the trials.
        usleep((useconds_t)(rand() % 60000));
        ASSERT_EQ_INT(kill(pid, SIGKILL), 0);
        int status;
        ASSERT(waitpid(pid, &status, 0) == pid);
        char *ls = list_root();
        if (strstr(ls, ".tmp") || strstr(ls, ".deleting")) leftovers++;
        free(ls);

        char path[4400];
        int saved_stderr = dup(2), devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 2);   // find_latest warns about the .tmp the kill left behind
        int found = ckpt_find_latest(root_dir(), path, sizeof path);
        dup2(saved_stderr, 2);
        close(devnull);
        close(saved_stderr);
        ASSERT_MSG(found || prev == 0, "seed %u trial %d: no checkpoint found, step %lld was complete before", seed,
                   trial, (long long)prev);
        if (!found) continue;
        found_any = 1;
        int64_t step = strtoll(path + strlen(path) - 9, NULL, 10);
        ASSERT_MSG(step >= prev, "seed %u trial %d: newest complete step went back from %lld to %lld", seed, trial,
                   (long long)prev, (long long)step);
        prev = step;
        check_loads_as(path, step);
        check_all_final_verify(trial);
    }
    ASSERT_MSG(found_any, "seed %u: no save completed in 24 trials", seed);
    printf("    crash trials: newest step %lld after 24 kills, %d kills left an unfinished save or deletion\n",
           (long long)prev, leftovers);
}
