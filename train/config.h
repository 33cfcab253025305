// The run configuration: one YAML file with sections model / train / data / parallel / checkpoint / log.
//
// Every key is declared once, in the table in config.c (type, default, allowed range or values, one-line help).
// Parsing, validation, `build/train --help-config` and the dump of the effective config all walk that table,
// so a key cannot be parsed without being documented or documented without being parsed.
#ifndef CONFIG_H
#define CONFIG_H

#include <stdio.h>

#define CONFIG_PATH_MAX 1024
#define SCHEDULE_MAX_PHASES 16

typedef enum { SCORE_SIGMOID = 0, SCORE_SOFTMAX = 1 } ScoreFunc;
typedef enum { ROPE_NONE = 0, ROPE_YARN = 1 } RopeScaling;
typedef enum { BACKEND_CPU = 0, BACKEND_CUDA = 1 } BackendKind;
typedef enum { PRECISION_FP32 = 0, PRECISION_BF16 = 1, PRECISION_FP8 = 2 } PrecisionKind;
typedef enum { PIPE_1F1B = 0, PIPE_DUALPIPE = 1 } PipeSchedule;

// The model section. Names follow DeepSeek-V3's inference ModelArgs where one exists.
typedef struct {
    int vocab_size;          // 129280 for V3
    int dim;                 // hidden size, 7168
    int inter_dim;           // dense SwiGLU FFN hidden size, 18432
    int moe_inter_dim;       // per-expert SwiGLU hidden size, 2048
    int n_layers;            // transformer blocks of the main model, 61 (MTP blocks not counted)
    int n_dense_layers;      // the first n_dense_layers blocks use the dense FFN (first_k_dense_replace), 3
    int n_heads;             // attention heads, 128
    int n_routed_experts;    // 256
    int n_shared_experts;    // 1
    int n_activated_experts; // routed experts per token (top-k), 8
    int n_expert_groups;     // routing groups, 8
    int n_limited_groups;    // groups kept per token (topk_group), 4
    int group_score_topk;    // a group's score = sum of its top group_score_topk biased expert scores, 2 (as V3's code)
    ScoreFunc score_func;    // sigmoid (V3) or softmax (V2 / 16B)
    double route_scale;      // gate weight multiplier, 2.5
    int q_lora_rank;         // 1536; 0 = plain query projection
    int kv_lora_rank;        // 512
    int qk_nope_head_dim;    // 128
    int qk_rope_head_dim;    // 64
    int v_head_dim;          // 128
    int mtp_depth;           // multi-token prediction modules, 1
    double norm_eps;         // RMSNorm epsilon, 1e-6
    double init_std;         // normal(0, init_std) initialization, 0.006
    double rope_theta;       // 10000
    RopeScaling rope_scaling;// none for pretraining, yarn for context extension
    double rope_factor;      // YaRN factor, 40
    double beta_fast;        // YaRN, 32
    double beta_slow;        // YaRN, 1
    double mscale;           // YaRN mscale coefficient, 1.0 (mscale = 0.1 * mscale * ln(factor) + 1)
    int original_seq_len;    // YaRN original context, 4096
} ModelConfig;

// A schedule is a start value and a list of phases. Phase i runs from the end of phase i-1 (or 0) to its own end,
// given in steps or tokens in the YAML; config_load resolves every end to tokens through the batch-size schedule
// (until_tokens below), so that evaluation needs only the token counter. Shapes move from the value at the end of
// the previous phase to `to`: linear, cosine (half-cosine), or constant (jump to `to` at the phase start).
// Past the last phase the value stays at the last phase's `to`. Phase i covers tokens in [end of phase i-1, its end):
// a value is asked for with the tokens consumed BEFORE the step, so a phase ending at N tokens no longer applies to
// the step that starts at N tokens.
typedef enum { PHASE_CONSTANT = 0, PHASE_LINEAR = 1, PHASE_COSINE = 2 } PhaseShape;
typedef struct {
    PhaseShape shape;
    double to;             // value reached at the end of the phase (held throughout for constant)
    double until_steps;    // as written in YAML (0 = not given)
    double until_tokens;   // as written in YAML, or resolved from until_steps by config_load
} Phase;
typedef struct {
    double start;
    int n_phases;
    Phase phases[SCHEDULE_MAX_PHASES];
} Schedule;

typedef struct {
    BackendKind backend;
    PrecisionKind precision;
    int seq_len;              // T, 4096
    int micro_batch;          // sequences per micro-batch per data-parallel rank
    long batch_start;         // global batch in sequences at token 0 (3072)
    long batch_end;           // global batch in sequences after the ramp (15360)
    double batch_ramp_tokens; // tokens over which the batch ramps linearly (469e9); 0 = no ramp
    double total_tokens;      // training stops after this many tokens (14.8e12; 0 = no token limit), or
    long max_steps;           // after this many optimizer steps, whichever comes first (0 = no step limit)
    Schedule lr;              // learning rate
    Schedule bias_update_speed; // gamma of auxiliary-loss-free balancing
    Schedule mtp_lambda;      // MTP loss weight lambda
    double beta1, beta2, eps, weight_decay;
    double grad_clip;         // global-norm clip, 1.0; 0 = off
    double balance_alpha;     // sequence-wise balance loss weight, 1e-4
    unsigned long long seed;
    int eval_every;           // steps between evaluations (0 = never)
    int eval_batches;         // micro-batches per evaluation
    int max_nonfinite_steps;  // consecutive skipped (non-finite) steps before the run stops
    int recompute;            // recompute RMSNorm outputs, MLA up-projections and SwiGLU outputs in backward
} TrainConfig;

typedef struct {
    char train[CONFIG_PATH_MAX];     // shard list: glob(s) separated by commas, relative to the working directory
    char val[CONFIG_PATH_MAX];       // validation shards, same syntax ("" = no eval)
    char tokenizer[CONFIG_PATH_MAX]; // "byte" or a path to a Hugging Face tokenizer.json (for sampling)
    int prefetch;                    // micro-batches prepared ahead by the background thread
    int shuffle;                     // 1 = shuffle documents per epoch from train.seed
} DataConfig;

typedef struct {
    int pp;                   // pipeline stages
    int dp;                   // data-parallel degree (world = pp * dp)
    int ep;                   // expert-parallel degree, divides dp
    PipeSchedule schedule;    // 1f1b or dualpipe
    int zero_stage;           // 0 or 1
} ParallelConfig;

typedef struct {
    char dir[CONFIG_PATH_MAX];   // "" = <log.run_dir>/checkpoints
    int every;                   // steps between checkpoints (0 = only on signal / end)
    int keep_last;               // retention: newest N complete checkpoints
    int keep_every;              // and every checkpoint whose step is a multiple of this (0 = none)
    int at_end;                  // 1 = also checkpoint when the run ends (benchmarks turn it off)
} CheckpointConfig;

typedef struct {
    char run_dir[CONFIG_PATH_MAX];   // where the effective config, metrics and checkpoints go
    int every;                       // steps between progress lines
    int profile;                     // 1 = time every backend op (kernels/profile.h): report + <run_dir>/profile.json
} LogConfig;

typedef struct {
    ModelConfig model;
    TrainConfig train;
    DataConfig data;
    ParallelConfig parallel;
    CheckpointConfig checkpoint;
    LogConfig log;
    char source_path[CONFIG_PATH_MAX]; // the YAML file it came from ("" for defaults only)
} Config;

// Fills every key with its table default.
void config_defaults(Config *cfg);
// Loads `path` (NULL: none) over the defaults, applies the `--set section.key=value` overrides in order, validates
// each key and the cross-key rules, and resolves schedules. On any error: a message with file:line:column (or
// "--set section.key=value"), the key, what was expected, and exit(1).
void config_load(Config *cfg, const char *path, int n_overrides, char **overrides);
// The same from YAML text in memory (a checkpoint manifest's config); `name` stands for the file in messages.
void config_load_text(Config *cfg, const char *name, const char *text, int n_overrides, char **overrides);
// Writes the effective config as YAML that config_load reads back to the same values.
void config_dump(const Config *cfg, FILE *out);
// Writes every key with its type, default, allowed values and help line (for --help-config).
void config_print_help(FILE *out);
// Schedule value at a token count (after config_load resolved phase ends to tokens).
double schedule_value(const Schedule *s, double tokens);
// Global batch size in sequences for the step that starts after `tokens` tokens: linear in tokens from batch_start
// (at 0) to batch_end (at batch_ramp_tokens), rounded DOWN to a multiple of micro_batch * dp and never below
// batch_start; batch_end from batch_ramp_tokens on (and always when batch_ramp_tokens is 0).
long config_batch_size(const Config *cfg, double tokens);
// Tokens consumed by the first `steps` optimizer steps: t(0) = 0, t(s+1) = t(s) + config_batch_size(t(s)) * seq_len.
// Exact (integers below 2^53); the trainer's token counter must advance the same way.
double config_tokens_after_steps(const Config *cfg, long steps);
// Writes config_dump(cfg) to `path` atomically (path.tmp.<pid>, fsync, rename), creating missing parent directories.
void config_save(const Config *cfg, const char *path);
// FNV-1a 64 over every model key's name and value in table order (not the raw struct bytes), for checkpoint
// compatibility checks.
unsigned long long config_model_hash(const ModelConfig *m);

#endif
