// The config system: every error class through the real binary (exit status 1, file:line:column, the key and the
// expectation on stderr), --set, --help-config against the key table, the shipped configs, dump round trips and
// the model hash.
#include "tests/child_exit.h"
#include "tests/test.h"
#include "train/config.h"
#include "train/config_internal.h"
#include <limits.h>
#include <stdarg.h>
#include <unistd.h>

// build/train next to this test binary (build/ or build-debug/).
static const char *train_bin(void) { return test_bin("train"); }

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    ASSERT_MSG(f, "cannot write %s", path);
    fputs(text, f);
    ASSERT(fclose(f) == 0);
}

// Writes yaml to <tmp>/t.yaml and runs `build/train dump-config <tmp>/t.yaml ARGS`; returns the exit status.
static int dump_yaml(const char *yaml, const char *args, char **out) {
    char path[PATH_MAX], cmd[8192];
    snprintf(path, sizeof path, "%s/t.yaml", test_tmpdir());
    write_file(path, yaml);
    snprintf(cmd, sizeof cmd, "%s dump-config %s %s", train_bin(), path, args ? args : "");
    return test_run(cmd, out);
}

// A config error: exit status 1 and each of the NULL-terminated needles in the output.
static void expect_error(const char *yaml, const char *args, ...) {
    char *out;
    int rc = dump_yaml(yaml, args, &out);
    ASSERT_MSG(rc == 1, "exit status %d, expected 1; output:\n%s", rc, out);
    va_list ap;
    va_start(ap, args);
    for (const char *needle; (needle = va_arg(ap, const char *)) != NULL;) ASSERT_CONTAINS(out, needle);
    va_end(ap);
    free(out);
}

// A config that loads: exit status 0 and each needle in the dumped YAML.
static void expect_ok(const char *yaml, const char *args, ...) {
    char *out;
    int rc = dump_yaml(yaml, args, &out);
    ASSERT_MSG(rc == 0, "exit status %d, expected 0; output:\n%s", rc, out);
    va_list ap;
    va_start(ap, args);
    for (const char *needle; (needle = va_arg(ap, const char *)) != NULL;) ASSERT_CONTAINS(out, needle);
    va_end(ap);
    free(out);
}

// ---- one test per error class

TEST(config_unknown_section) {
    expect_error("model:\n  dim: 64\nmodle:\n  dim: 64\n", NULL, "t.yaml:3:1: modle: unknown section",
                 "did you mean model?", NULL);
    expect_error("seq_len: 64\n", NULL, "t.yaml:1:1: seq_len: unknown section", "a key of section train", NULL);
}

TEST(config_unknown_key_suggests_nearest) {
    expect_error("model:\n  dim: 64\n  n_routed_expert: 8\n", NULL,
                 "t.yaml:3:3: model.n_routed_expert: unknown key", "did you mean model.n_routed_experts?", NULL);
    expect_error("train:\n  seq_len: 64\n  dim: 64\n", NULL, "t.yaml:3:3: train.dim: unknown key",
                 "dim is a key of section model", NULL);
    expect_error("log:\n  zzzzzzzzzz: 1\n", NULL, "t.yaml:2:3: log.zzzzzzzzzz: unknown key", "--help-config", NULL);
}

TEST(config_wrong_type) {
    expect_error("model:\n  dim: abc\n", NULL, "t.yaml:2:3: model.dim: expected an integer >= 1, got \"abc\"",
                 "hidden size", NULL);   // the key's help line follows
    expect_error("model:\n  dim: {a: 1}\n", NULL, "t.yaml:2:3: model.dim: expected an integer >= 1, got a mapping",
                 NULL);
    expect_error("data:\n  shuffle: 1\n", NULL, "t.yaml:2:3: data.shuffle: expected true or false, got \"1\"", NULL);
    expect_error("model: 5\n", NULL, "t.yaml:1:1: model: expected a mapping of model keys, got a scalar", NULL);
    expect_error("train:\n  lr: [1, 2]\n", NULL, "t.yaml:2:3: train.lr: expected a schedule", "got a sequence",
                 NULL);
}

TEST(config_integer_rejects_fraction) {
    expect_error("model:\n  n_heads: 1.5\n", NULL, "t.yaml:2:3: model.n_heads: expected an integer >= 1, got 1.5 "
                 "(not an integer)", NULL);
    expect_error("train:\n  lr:\n    start: 0\n    phases:\n      - {shape: linear, until_steps: 2.5, to: 1}\n",
                 NULL, "t.yaml:5:25: train.lr.phases[0].until_steps: expected an integer >= 1", NULL);
}

TEST(config_number_overflow) {
    expect_error("model:\n  dim: 1e10\n", NULL, "t.yaml:2:3: model.dim: expected an integer >= 1 and <= 2147483647, "
                 "got 1e10", NULL);
    expect_error("train:\n  batch_end: 99999999999999999999\n", NULL,
                 "t.yaml:2:3: train.batch_end:", "got 99999999999999999999 (out of range)", NULL);
    expect_error("train:\n  total_tokens: 1e400\n", NULL, "t.yaml:2:3: train.total_tokens:", "(out of range)", NULL);
}

TEST(config_negative_where_min_is_zero) {
    expect_error("model:\n  n_shared_experts: -1\n", NULL,
                 "t.yaml:2:3: model.n_shared_experts: expected an integer >= 0", "got -1", NULL);
    expect_error("train:\n  weight_decay: -0.1\n", NULL, "t.yaml:2:3: train.weight_decay: expected a number >= 0",
                 NULL);
    expect_error("train:\n  seed: -5\n", NULL, "t.yaml:2:3: train.seed: expected an integer from 0", NULL);
}

TEST(config_enum_not_allowed) {
    expect_error("model:\n  score_func: tanh\n", NULL,
                 "t.yaml:2:3: model.score_func: expected one of sigmoid, softmax, got \"tanh\"", NULL);
    expect_error("parallel:\n  schedule: gpipe\n", NULL, "t.yaml:2:3: parallel.schedule: expected one of 1f1b, "
                 "dualpipe", NULL);
}

TEST(config_missing_file) {
    char cmd[PATH_MAX + 64], *out;
    snprintf(cmd, sizeof cmd, "%s dump-config %s/nope.yaml", train_bin(), test_tmpdir());
    ASSERT_EQ_INT(test_run(cmd, &out), 1);
    ASSERT_CONTAINS(out, "nope.yaml: cannot open the config file: No such file or directory");
    free(out);
}

TEST(config_yaml_syntax_error) {
    expect_error("model:\n  dim: [64, 128\ntrain:\n", NULL, "t.yaml:3:", "YAML syntax error",
                 "while parsing a flow sequence at line 2, column 8", NULL);
    expect_error("model:\n\tdim: 64\n", NULL, "t.yaml:2:1: YAML syntax error", NULL);
    expect_error("model:\n  dim: 64\n  x: \xff\n", NULL, "t.yaml:3:6: YAML error: invalid leading UTF-8 octet", NULL);
    expect_error("model:\n  dim: 64\n---\ntrain:\n  seq_len: 8\n", NULL, "t.yaml:4:1: a second YAML document",
                 NULL);
}

TEST(config_duplicate_key) {
    expect_error("model:\n  dim: 64\n  n_heads: 4\n  dim: 128\n", NULL,
                 "t.yaml:4:3: model.dim: duplicate key (first given at line 2)", NULL);
    expect_error("log:\n  every: 1\nlog:\n  every: 2\n", NULL, "t.yaml:3:1: log: duplicate section", NULL);
    expect_error("train:\n  lr: {start: 0, start: 1, phases: []}\n", NULL, "t.yaml:2:18: train.lr: duplicate key "
                 "\"start\" (first given at line 2)", NULL);
}

// ---- cross-key rules

TEST(config_rule_groups_divide_experts) {
    expect_error("model:\n  n_routed_experts: 64\n  n_expert_groups: 6\n", NULL,
                 "t.yaml:3:3: model.n_expert_groups: 64 routed experts are not divisible by 6 groups (expected a "
                 "divisor of n_routed_experts)", NULL);
}

TEST(config_rule_limited_groups) {
    expect_error("model:\n  n_expert_groups: 4\n  n_limited_groups: 5\n", NULL,
                 "t.yaml:3:3: model.n_limited_groups: 5 groups kept per token out of 4 groups (expected "
                 "n_limited_groups <= n_expert_groups)", NULL);
}

TEST(config_rule_activated_experts) {
    // 256 experts in 8 groups of 32, 1 group kept: at most 32 candidates for top-40
    expect_error("model:\n  n_limited_groups: 1\n  n_activated_experts: 40\n", NULL,
                 "t.yaml:3:3: model.n_activated_experts: top-40 routing, but 1 kept groups of 32 experts offer only "
                 "32", "expected n_activated_experts <= n_limited_groups * n_routed_experts / n_expert_groups", NULL);
}

TEST(config_rule_group_score_topk) {
    expect_error("model:\n  n_expert_groups: 128\n  group_score_topk: 3\n", NULL,
                 "t.yaml:3:3: model.group_score_topk: group scores sum the top 3 experts of groups of 2",
                 "expected group_score_topk <= n_routed_experts / n_expert_groups", NULL);
}

TEST(config_rule_dense_layers) {
    expect_error("model:\n  n_layers: 4\n  n_dense_layers: 5\n", NULL,
                 "t.yaml:3:3: model.n_dense_layers: 5 dense layers in a 4-layer model (expected n_dense_layers <= "
                 "n_layers)", NULL);
}

TEST(config_rule_rope_dim_odd) {
    expect_error("model:\n  qk_rope_head_dim: 63\n", NULL, "t.yaml:2:3: model.qk_rope_head_dim: 63 is odd (expected "
                 "an even number", NULL);
}

TEST(config_rule_ranks_and_head_dims_positive) {
    expect_error("model:\n  kv_lora_rank: 0\n", NULL, "t.yaml:2:3: model.kv_lora_rank: expected an integer >= 1, "
                 "got 0", NULL);
    expect_error("model:\n  v_head_dim: 0\n", NULL, "t.yaml:2:3: model.v_head_dim: expected an integer >= 1", NULL);
    expect_error("model:\n  qk_nope_head_dim: -128\n", NULL, "t.yaml:2:3: model.qk_nope_head_dim: expected an "
                 "integer >= 1", NULL);
    expect_error("model:\n  q_lora_rank: -1\n", NULL, "t.yaml:2:3: model.q_lora_rank: expected an integer >= 0",
                 NULL);
    expect_ok("model:\n  q_lora_rank: 0\n", NULL, "\n  q_lora_rank: 0\n", NULL);   // no query compression
}

TEST(config_rule_pipeline_stages) {
    expect_error("model:\n  n_layers: 4\nparallel:\n  pp: 8\n", NULL,
                 "t.yaml:4:3: parallel.pp: 8 pipeline stages for 4 layers (expected pp <= n_layers", NULL);
    expect_ok("parallel:\n  pp: 16\n", NULL, "\n  pp: 16\n", NULL);   // 61 layers on 16 stages: uneven is fine
}

TEST(config_rule_expert_parallel) {
    expect_error("parallel:\n  dp: 8\n  ep: 3\n", NULL,
                 "t.yaml:3:3: parallel.ep: ep 3 does not divide dp 8 (expected a divisor of dp", NULL);
    expect_error("parallel:\n  dp: 48\n  ep: 48\n", NULL,
                 "t.yaml:3:3: parallel.ep: ep 48 does not divide 256 routed experts (expected a divisor of "
                 "n_routed_experts)", NULL);
}

TEST(config_rule_dualpipe_even) {
    expect_error("parallel:\n  pp: 3\n  schedule: dualpipe\n", NULL,
                 "t.yaml:3:3: parallel.schedule: dualpipe with pp 3 (expected an even pp", NULL);
}

TEST(config_rule_batch_multiple) {
    expect_error("train:\n  micro_batch: 8\n  batch_start: 3004\n", NULL,
                 "t.yaml:3:3: train.batch_start: batch_start 3004 is not a multiple of micro_batch * dp = 8 * 1 "
                 "(expected a multiple of 8 sequences)", NULL);
    expect_error("train:\n  batch_start: 64\n  batch_end: 100\nparallel:\n  dp: 16\n", NULL,
                 "t.yaml:3:3: train.batch_end: batch_end 100 is not a multiple of micro_batch * dp = 1 * 16", NULL);
}

TEST(config_rule_batch_end_below_start) {
    expect_error("train:\n  batch_start: 4096\n  batch_end: 2048\n", NULL,
                 "t.yaml:3:3: train.batch_end: batch_end 2048 is below batch_start 4096 (expected batch_end >= "
                 "batch_start)", NULL);
}

TEST(config_rule_yarn_factor) {
    expect_error("model:\n  rope_scaling: yarn\n  rope_factor: 1\n", NULL,
                 "t.yaml:3:3: model.rope_factor: yarn with factor 1 (expected rope_factor > 1", NULL);
    expect_ok("model:\n  rope_scaling: yarn\n  rope_factor: 40\n", NULL, "rope_scaling: yarn", NULL);
}

TEST(config_rule_phase_ends_increase) {
    // without a ramp every step has batch_end sequences: 100 steps of 15360 x 4096 tokens end at 6291456000
    expect_error("train:\n  batch_ramp_tokens: 0\n  lr:\n    start: 0\n    phases:\n"
                 "      - {shape: linear, until_steps: 100, to: 1e-3}\n"
                 "      - {shape: cosine, until_tokens: 1e9, to: 1e-4}\n", NULL,
                 "t.yaml:7:25: train.lr.phases[1].until_tokens: the phase ends at 1e+09 tokens, not after the end "
                 "of the previous phase at 6.29146e+09 tokens (expected increasing phase ends)", NULL);
    expect_error("train:\n  mtp_lambda: {start: 1, phases: [{shape: constant, until_steps: 5, to: 1}, "
                 "{shape: constant, until_steps: 5, to: 0}]}\n", NULL,
                 "t.yaml:2:95: train.mtp_lambda.phases[1].until_steps: the phase ends at step 5", NULL);
}

TEST(config_schedule_shape_errors) {
    expect_error("train:\n  lr: {start: 0, phases: [{shape: linear, until_steps: 5, until_tokens: 9, to: 1}]}\n",
                 NULL, "t.yaml:2:27: train.lr.phases[0]: expected exactly one of until_steps and until_tokens, "
                 "got both", NULL);
    expect_error("train:\n  lr: {start: 0, phases: [{shape: linear, until_steps: 5}]}\n", NULL,
                 "train.lr.phases[0]: missing to", NULL);
    expect_error("train:\n  lr: {start: 0, phases: [{shape: exp, until_steps: 5, to: 1}]}\n", NULL,
                 "train.lr.phases[0].shape: expected one of constant, linear, cosine, got \"exp\"", NULL);
    expect_error("train:\n  lr: {phases: [{shape: linear, until_steps: 5, to: 1}]}\n", NULL,
                 "t.yaml:2:3: train.lr: missing start", NULL);
    expect_error("train:\n  lr: {start: 0, phase: []}\n", NULL,
                 "train.lr: unknown key \"phase\" (did you mean phases?)", NULL);
    expect_error("train:\n  lr: {start: 0, phases: [{shape: linear, until_steps: 5, to: -1}]}\n", NULL,
                 "train.lr.phases[0].to: expected a number >= 0, got -1", NULL);
}

TEST(config_trailing_text_is_not_a_number) {
    expect_error("model:\n  route_scale: 2.5x\n", NULL, "model.route_scale: expected a number > 0, got \"2.5x\"",
                 NULL);
    expect_error("model:\n  route_scale: inf\n", NULL, "got \"inf\"", NULL);
    expect_error("model:\n  route_scale: nan\n", NULL, "got \"nan\"", NULL);
}

// ---- numbers, overrides, help

TEST(config_number_forms) {
    expect_ok("model:\n  route_scale: 2.2e-4\n  norm_eps: 1e-4\ntrain:\n  total_tokens: 14.8e12\n"
              "  batch_start: 15360\n  batch_end: 1.536e4\n  max_steps: 1.5e4\n", NULL,
              "route_scale: 0.00022\n", "norm_eps: 0.0001\n", "total_tokens: 1.48e13\n", "batch_start: 15360\n",
              "batch_end: 15360\n", "max_steps: 15000\n", NULL);
    // and exactly, in process
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/n.yaml", test_tmpdir());
    write_file(path, "model:\n  route_scale: 2.2e-4\ntrain:\n  total_tokens: 14.8e12\n  max_steps: 1.5e4\n"
               "  batch_ramp_tokens: 469e9\n");
    Config c;
    config_load(&c, path, 0, NULL);
    ASSERT(c.model.route_scale == 2.2e-4);
    ASSERT(c.train.total_tokens == 14.8e12);
    ASSERT(c.train.batch_ramp_tokens == 469000000000.0);
    ASSERT_EQ_INT(c.train.max_steps, 15000);
    char *sets[] = {"train.max_steps=900719925474099301"};   // above 2^53: plain integers convert exactly
    config_load(&c, path, 1, sets);
    ASSERT(c.train.max_steps == 900719925474099301L);
}

TEST(config_override_wins_and_is_validated) {
    expect_ok("model:\n  dim: 64\n", "--set model.dim=96 --set model.dim=128 --set=train.lr=3e-4",
              "\n  dim: 128\n", "\n  lr: 0.0003\n", NULL);
    expect_ok("", "--set train.batch_ramp_tokens=0 "
              "--set 'train.lr={start: 0, phases: [{shape: linear, until_steps: 10, to: 1e-3}]}'",
              "- {shape: linear, until_steps: 10, to: 0.001}  # ends at 629145600 tokens", NULL);
    expect_error("model:\n  dim: 64\n", "--set model.dim=abc",
                 "--set model.dim=abc: model.dim: expected an integer >= 1, got \"abc\"", NULL);
    // a rule broken by an override is reported at the override
    expect_error("model:\n  n_expert_groups: 8\n", "--set model.n_routed_experts=60",
                 "--set model.n_routed_experts=60: model.n_routed_experts: 60 routed experts are not divisible by 8 "
                 "groups", NULL);
    expect_error("", "--set model.dimm=3", "--set model.dimm=3: model.dimm: unknown key (did you mean model.dim?)",
                 NULL);
    expect_error("", "--set model.dim", "--set model.dim: expected section.key=value", NULL);
    expect_error("", "--set 'train.lr={start: 0, ]'", "--set train.lr={start: 0, ]: train.lr: YAML syntax error at "
                 "column 12 of the value", NULL);
}

TEST(config_help_lists_every_key) {
    char cmd[PATH_MAX + 32], *out;
    snprintf(cmd, sizeof cmd, "%s --help-config", train_bin());
    ASSERT_EQ_INT(test_run(cmd, &out), 0);
    // every key of the table, with its type and default
    for (int i = 0; i < config_n_keys; i++) {
        char want[256];
        snprintf(want, sizeof want, "\n  %s.%s (%s, default ", config_keys[i].section, config_keys[i].name,
                 config_type_name(config_keys[i].type));
        ASSERT_CONTAINS(out, want);
    }
    // and nothing else looks like a key line: count "  section.name (" lines against the table
    int lines = 0;
    for (char *line = out; line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        for (int s = 0; config_sections[s]; s++) {
            size_t n = strlen(config_sections[s]);
            if (strncmp(line, "  ", 2) == 0 && strncmp(line + 2, config_sections[s], n) == 0 && line[2 + n] == '.')
                lines++;
        }
    }
    ASSERT_EQ_INT(lines, config_n_keys);
    ASSERT_EQ_INT(config_n_keys, 30 + 23 + 5 + 5 + 5 + 3);   // the fields of the section structs in config.h
    ASSERT_CONTAINS(out, "  model.n_expert_groups (int, default 8): ");
    ASSERT_CONTAINS(out, "      expects one of sigmoid, softmax\n");
    free(out);
}

TEST(config_cli_usage_errors) {
    char cmd[PATH_MAX + 64], *out;
    snprintf(cmd, sizeof cmd, "%s", train_bin());
    ASSERT_EQ_INT(test_run(cmd, &out), 1);
    ASSERT_CONTAINS(out, "usage: build/train");
    free(out);
    snprintf(cmd, sizeof cmd, "%s dump-config --bogus configs/tiny.yaml", train_bin());
    ASSERT_EQ_INT(test_run(cmd, &out), 1);
    ASSERT_CONTAINS(out, "unknown option --bogus");
    free(out);
    snprintf(cmd, sizeof cmd, "%s dump-config", train_bin());
    ASSERT_EQ_INT(test_run(cmd, &out), 1);
    ASSERT_CONTAINS(out, "no config file given");
    free(out);
    snprintf(cmd, sizeof cmd, "%s --help", train_bin());
    ASSERT_EQ_INT(test_run(cmd, &out), 0);
    ASSERT_CONTAINS(out, "dump-config");
    free(out);
}

// ---- shipped configs, round trips, saving, hash

static void assert_round_trip(const Config *a) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/dumped.yaml", test_tmpdir());
    FILE *f = fopen(path, "w");
    ASSERT(f);
    config_dump(a, f);
    ASSERT(fclose(f) == 0);
    Config b, a2 = *a;
    config_load(&b, path, 0, NULL);
    memset(a2.source_path, 0, sizeof a2.source_path);
    memset(b.source_path, 0, sizeof b.source_path);
    for (int i = 0; i < config_n_keys; i++)   // name the first differing key, then compare every byte
        ASSERT_MSG(memcmp((char *)&a2 + config_keys[i].offset, (char *)&b + config_keys[i].offset,
                          config_keys[i].size) == 0, "%s.%s differs after the round trip", config_keys[i].section,
                   config_keys[i].name);
    ASSERT(memcmp(&a2, &b, sizeof b) == 0);
}

TEST(config_shipped_configs_load_and_round_trip) {
    const char *names[] = {"configs/tiny.yaml", "configs/bench-1gpu.yaml", "configs/ablation-16b.yaml",
                           "configs/v3-671b.yaml"};
    for (int i = 0; i < 4; i++) {
        Config c;
        config_load(&c, test_path(names[i]), 0, NULL);
        assert_round_trip(&c);
    }
    Config d;
    config_defaults(&d);
    assert_round_trip(&d);
    // spot checks against RECIPE.md / the brief
    Config v3, tiny;
    config_load(&v3, test_path("configs/v3-671b.yaml"), 0, NULL);
    ASSERT_EQ_INT(v3.model.n_layers, 61);
    ASSERT_EQ_INT(v3.model.vocab_size, 129280);
    ASSERT_EQ_INT(v3.parallel.pp * v3.parallel.dp, 2048);
    ASSERT(v3.parallel.schedule == PIPE_DUALPIPE);
    ASSERT(v3.train.total_tokens == 14.8e12);
    ASSERT_EQ_INT(v3.train.lr.n_phases, 5);
    ASSERT(v3.train.lr.phases[4].until_tokens == 14.8e12 && v3.train.lr.phases[4].to == 7.3e-6);
    config_load(&tiny, test_path("configs/tiny.yaml"), 0, NULL);
    ASSERT_EQ_INT(tiny.model.vocab_size, 320);
    ASSERT_EQ_INT(tiny.train.max_steps, 300);
    ASSERT(tiny.train.lr.phases[1].until_tokens == 300.0 * 16 * 128);
}

TEST(config_round_trip_odd_values) {
    char *sets[] = {"data.val=a \"quoted\" \\back\\slash\ttab # not a comment: x", "data.tokenizer=caf\xc3\xa9.json",
                    "data.train=", "model.route_scale=0.30000000000000004", "model.init_std=3.3333333333333335e-7",
                    "train.seed=18446744073709551615", "train.beta2=0.999999999",
                    "train.bias_update_speed={start: 1e-3, phases: [{shape: cosine, until_steps: 7, to: 1e-300}]}"};
    Config c;
    config_load(&c, NULL, 8, sets);
    ASSERT_EQ_STR(c.data.val, "a \"quoted\" \\back\\slash\ttab # not a comment: x");
    ASSERT(c.model.route_scale == 0.1 + 0.2);
    ASSERT(c.train.seed == 18446744073709551615ULL);
    assert_round_trip(&c);
}

TEST(config_train_entry_writes_effective_config) {
    char cmd[2 * PATH_MAX], *out, run[PATH_MAX], saved[PATH_MAX + 32];
    snprintf(run, sizeof run, "%s/runs/a/b", test_tmpdir());
    // Shards that do not exist: the effective config is recorded first, then the loader stops naming the pattern.
    snprintf(cmd, sizeof cmd, "%s --set log.run_dir=%s --set data.train=%s/none-*.h5 %s", train_bin(), run,
             test_tmpdir(), test_path("configs/tiny.yaml"));
    ASSERT_EQ_INT(test_run(cmd, &out), 1);
    ASSERT_CONTAINS(out, "none-*.h5");
    free(out);
    snprintf(saved, sizeof saved, "%s/config.yaml", run);
    Config a, b;
    char set_dir[PATH_MAX + 32], set_data[PATH_MAX + 32];
    char *sets[] = {set_dir, set_data};
    snprintf(set_dir, sizeof set_dir, "log.run_dir=%s", run);
    snprintf(set_data, sizeof set_data, "data.train=%s/none-*.h5", test_tmpdir());
    config_load(&a, test_path("configs/tiny.yaml"), 2, sets);
    config_load(&b, saved, 0, NULL);
    memset(a.source_path, 0, sizeof a.source_path);
    memset(b.source_path, 0, sizeof b.source_path);
    ASSERT(memcmp(&a, &b, sizeof a) == 0);
    snprintf(cmd, sizeof cmd, "ls -A %s", run);   // nothing but config.yaml: no temporary left behind
    ASSERT_EQ_INT(test_run(cmd, &out), 0);
    ASSERT_EQ_STR(out, "config.yaml\n");
    free(out);
    // a run directory that cannot be created: a clear error, status 1
    snprintf(saved, sizeof saved, "%s/plainfile", test_tmpdir());
    write_file(saved, "x");
    snprintf(cmd, sizeof cmd, "%s --set log.run_dir=%s/sub %s", train_bin(), saved, test_path("configs/tiny.yaml"));
    ASSERT_EQ_INT(test_run(cmd, &out), 1);
    ASSERT_CONTAINS(out, "plainfile/sub: Not a directory");
    free(out);
}

TEST(config_model_hash_covers_every_model_key) {
    // FNV-1a 64 reference vectors
    ASSERT(config_fnv1a(CONFIG_FNV_OFFSET, "", 0) == 0xcbf29ce484222325ULL);
    ASSERT(config_fnv1a(CONFIG_FNV_OFFSET, "a", 1) == 0xaf63dc4c8601ec8cULL);
    ASSERT(config_fnv1a(CONFIG_FNV_OFFSET, "foobar", 6) == 0x85944171f73967e8ULL);
    Config c;
    config_load(&c, test_path("configs/tiny.yaml"), 0, NULL);
    unsigned long long h = config_model_hash(&c.model);
    Config same = c;
    same.train.seq_len = 999;   // not a model key
    ASSERT(config_model_hash(&same.model) == h);
    int n_model = 0;
    for (int i = 0; i < config_n_keys; i++) {
        const ConfigKey *k = &config_keys[i];
        if (strcmp(k->section, "model") != 0) continue;
        n_model++;
        Config m = c;
        void *f = (char *)&m + k->offset;
        if (k->type == KEY_INT) *(int *)f += 1;
        else if (k->type == KEY_ENUM) *(int *)f = !*(int *)f;
        else if (k->type == KEY_DOUBLE) *(double *)f = *(double *)f * 2 + 1;
        else ASSERT_MSG(0, "model key %s of unexpected type", k->name);
        ASSERT_MSG(config_model_hash(&m.model) != h, "changing model.%s does not change the hash", k->name);
    }
    ASSERT_EQ_INT(n_model, 30);   // the fields of ModelConfig
}

// Every field of Config but source_path is a key: sorted by offset, the keys leave no gap larger than alignment
// padding (a forgotten long, double, string or schedule field would leave one).
TEST(config_table_covers_struct) {
    size_t covered_to = 0;
    for (;;) {   // walk fields in offset order
        int next = -1;
        for (int i = 0; i < config_n_keys; i++)
            if (config_keys[i].offset >= covered_to && (next < 0 || config_keys[i].offset < config_keys[next].offset))
                next = i;
        if (next < 0) break;
        ASSERT_MSG(config_keys[next].offset - covered_to < sizeof(double), "%zu bytes before %s.%s are no key's",
                   config_keys[next].offset - covered_to, config_keys[next].section, config_keys[next].name);
        covered_to = config_keys[next].offset + config_keys[next].size;
    }
    ASSERT_EQ_INT(covered_to, offsetof(Config, source_path));
}

// config_load_text (a checkpoint manifest's config): the same values as the file, and errors name the text's origin.
static void load_bad_text(void *arg) {
    Config c;
    config_load_text(&c, "ckpt-7 (its manifest's config)", (const char *)arg, 0, NULL);
}

TEST(config_load_text_matches_file_and_names_its_origin) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/t.yaml", test_tmpdir());
    const char *yaml = "model:\n  dim: 96\ntrain:\n  seq_len: 64\n  max_steps: 5\n";
    write_file(path, yaml);
    Config a, b;
    config_load(&a, path, 0, NULL);
    char *set[] = {"train.seq_len=32"};
    config_load_text(&b, "memory", yaml, 1, set);
    ASSERT_EQ_INT(b.model.dim, 96);
    ASSERT_EQ_INT(a.train.seq_len, 64);
    ASSERT_EQ_INT(b.train.seq_len, 32);
    ASSERT_EQ_INT(b.train.max_steps, a.train.max_steps);
    char msg[4096];
    int st = child_exit_status(load_bad_text, "model:\n  dimm: 64\n", msg, sizeof msg);
    ASSERT_EQ_INT(st, 1);
    ASSERT_CONTAINS(msg, "ckpt-7 (its manifest's config):2:3: model.dimm: unknown key");
}
