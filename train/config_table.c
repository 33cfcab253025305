// The key table: every configuration key, declared once.
//
// Defaults are the DeepSeek-V3 671B recipe (shared/RECIPE.md sections 1-2) wherever the recipe fixes a number, so
// that a key left out of a file means "as V3 did"; the run-time layout defaults to one CPU process in FP32.
// A default is YAML text parsed by the same code as a value in a file, so it is range-checked like one.
// The YAML name of a key is its field name in config.h (the KEY macro takes one name for both).
#include "train/config_internal.h"
#include <limits.h>
#include <math.h>

#define KEY(sec, fld, ty) .section = #sec, .name = #fld, .type = ty, \
    .offset = offsetof(Config, sec.fld), .size = sizeof(((Config *)0)->sec.fld)
#define IMAX ((double)INT_MAX)
#define LMAX 1e18
#define INF INFINITY

static const char *const score_funcs[] = {"sigmoid", "softmax", NULL};       // ScoreFunc
static const char *const rope_scalings[] = {"none", "yarn", NULL};          // RopeScaling
static const char *const backends[] = {"cpu", "cuda", NULL};                // BackendKind
static const char *const precisions[] = {"fp32", "bf16", "fp8", NULL};      // PrecisionKind
static const char *const pipe_schedules[] = {"1f1b", "dualpipe", NULL};     // PipeSchedule
const char *const config_phase_shapes[] = {"constant", "linear", "cosine", NULL}; // PhaseShape

const char *const config_sections[] = {"model", "train", "data", "parallel", "checkpoint", "log", NULL};

// The V3 schedules (RECIPE.md section 2): LR warmup 2000 steps, constant to 10T tokens, cosine to 2.2e-5 at 14.3T,
// 2.2e-5 for 333B tokens, 7.3e-6 for the last 167B; gamma 0.001 then 0 for the last 500B; MTP lambda 0.3 then 0.1.
#define V3_LR "{start: 0, phases: [{shape: linear, until_steps: 2000, to: 2.2e-4}, " \
    "{shape: constant, until_tokens: 10e12, to: 2.2e-4}, {shape: cosine, until_tokens: 14.3e12, to: 2.2e-5}, " \
    "{shape: constant, until_tokens: 14.633e12, to: 2.2e-5}, {shape: constant, until_tokens: 14.8e12, to: 7.3e-6}]}"
#define V3_GAMMA "{start: 0.001, phases: [{shape: constant, until_tokens: 14.3e12, to: 0.001}, " \
    "{shape: constant, until_tokens: 14.8e12, to: 0}]}"
#define V3_MTP_LAMBDA "{start: 0.3, phases: [{shape: constant, until_tokens: 10e12, to: 0.3}, " \
    "{shape: constant, until_tokens: 14.8e12, to: 0.1}]}"

const ConfigKey config_keys[] = {
    // ---- model: the architecture (RECIPE.md section 1); config_model_hash covers exactly these
    { KEY(model, vocab_size, KEY_INT), .def = "129280", .min = 1, .max = IMAX,
      .help = "vocabulary size (129280 for V3's byte-level BPE; 320 for the byte tokenizer)" },
    { KEY(model, dim, KEY_INT), .def = "7168", .min = 1, .max = IMAX, .help = "hidden size of the residual stream" },
    { KEY(model, inter_dim, KEY_INT), .def = "18432", .min = 1, .max = IMAX,
      .help = "hidden size of the dense SwiGLU FFN of the first n_dense_layers blocks" },
    { KEY(model, moe_inter_dim, KEY_INT), .def = "2048", .min = 1, .max = IMAX,
      .help = "hidden size of each expert's SwiGLU (routed and shared experts)" },
    { KEY(model, n_layers, KEY_INT), .def = "61", .min = 1, .max = IMAX,
      .help = "transformer blocks of the main model (MTP blocks not counted)" },
    { KEY(model, n_dense_layers, KEY_INT), .def = "3", .min = 0, .max = IMAX,
      .help = "the first n_dense_layers blocks use the dense FFN, the rest MoE (first_k_dense_replace)" },
    { KEY(model, n_heads, KEY_INT), .def = "128", .min = 1, .max = IMAX, .help = "attention heads" },
    { KEY(model, n_routed_experts, KEY_INT), .def = "256", .min = 1, .max = IMAX,
      .help = "routed experts per MoE layer" },
    { KEY(model, n_shared_experts, KEY_INT), .def = "1", .min = 0, .max = IMAX,
      .help = "shared experts per MoE layer (every token goes through them)" },
    { KEY(model, n_activated_experts, KEY_INT), .def = "8", .min = 1, .max = IMAX,
      .help = "routed experts chosen per token (top-k)" },
    { KEY(model, n_expert_groups, KEY_INT), .def = "8", .min = 1, .max = IMAX,
      .help = "expert groups of group-limited routing; 1 = plain top-k over all experts" },
    { KEY(model, n_limited_groups, KEY_INT), .def = "4", .min = 1, .max = IMAX,
      .help = "groups kept per token before the top-k (topk_group)" },
    { KEY(model, group_score_topk, KEY_INT), .def = "2", .min = 1, .max = IMAX,
      .help = "a group's score is the sum of its top group_score_topk biased expert scores (2 in V3's code)" },
    { KEY(model, score_func, KEY_ENUM), .def = "sigmoid", .values = score_funcs,
      .help = "router affinity: sigmoid (V3) or softmax (V2, the 16B model)" },
    { KEY(model, route_scale, KEY_DOUBLE), .def = "2.5", .min = 0, .min_open = 1, .max = INF,
      .help = "multiplier of the normalized gate weights" },
    { KEY(model, q_lora_rank, KEY_INT), .def = "1536", .min = 0, .max = IMAX,
      .help = "MLA query compression rank; 0 = plain query projection (as the 16B model)" },
    { KEY(model, kv_lora_rank, KEY_INT), .def = "512", .min = 1, .max = IMAX,
      .help = "MLA key/value compression rank (the latent c_kv)" },
    { KEY(model, qk_nope_head_dim, KEY_INT), .def = "128", .min = 1, .max = IMAX,
      .help = "per-head query/key dims without RoPE" },
    { KEY(model, qk_rope_head_dim, KEY_INT), .def = "64", .min = 1, .max = IMAX,
      .help = "per-head query dims with RoPE, and the one shared RoPE key (even: RoPE rotates pairs)" },
    { KEY(model, v_head_dim, KEY_INT), .def = "128", .min = 1, .max = IMAX, .help = "per-head value dims" },
    { KEY(model, mtp_depth, KEY_INT), .def = "1", .min = 0, .max = IMAX,
      .help = "multi-token prediction modules D (0 = no MTP)" },
    { KEY(model, norm_eps, KEY_DOUBLE), .def = "1e-6", .min = 0, .min_open = 1, .max = 1, .max_open = 1,
      .help = "RMSNorm epsilon" },
    { KEY(model, init_std, KEY_DOUBLE), .def = "0.006", .min = 0, .min_open = 1, .max = INF,
      .help = "weights are initialized from normal(0, init_std)" },
    { KEY(model, rope_theta, KEY_DOUBLE), .def = "10000", .min = 0, .min_open = 1, .max = INF,
      .help = "RoPE base" },
    { KEY(model, rope_scaling, KEY_ENUM), .def = "none", .values = rope_scalings,
      .help = "none for pretraining; yarn for context extension (uses the four keys below)" },
    { KEY(model, rope_factor, KEY_DOUBLE), .def = "40", .min = 0, .min_open = 1, .max = INF,
      .help = "YaRN: context extension factor (> 1 with yarn)" },
    { KEY(model, beta_fast, KEY_DOUBLE), .def = "32", .min = 0, .min_open = 1, .max = INF,
      .help = "YaRN: rotations above which dims keep plain RoPE" },
    { KEY(model, beta_slow, KEY_DOUBLE), .def = "1", .min = 0, .min_open = 1, .max = INF,
      .help = "YaRN: rotations below which dims are fully interpolated" },
    { KEY(model, mscale, KEY_DOUBLE), .def = "1", .min = 0, .max = INF,
      .help = "YaRN: attention scale coefficient (mscale = 0.1 * mscale * ln(factor) + 1)" },
    { KEY(model, original_seq_len, KEY_INT), .def = "4096", .min = 1, .max = IMAX,
      .help = "YaRN: context length of pretraining" },

    // ---- train: the step loop, batch and schedules (RECIPE.md section 2)
    { KEY(train, backend, KEY_ENUM), .def = "cpu", .values = backends,
      .help = "ops backend: cpu (FP32 reference, OpenMP) or cuda" },
    { KEY(train, precision, KEY_ENUM), .def = "fp32", .values = precisions,
      .help = "fp32 (any backend), or bf16 (cuda: BF16 activations and GEMM inputs, FP32 residual stream, "
               "master weights and gradients); fp8 (RECIPE.md 3) is not built yet and stops at start-up" },
    { KEY(train, seq_len, KEY_INT), .def = "4096", .min = 1, .max = IMAX, .help = "tokens per sequence T" },
    { KEY(train, micro_batch, KEY_INT), .def = "1", .min = 1, .max = IMAX,
      .help = "sequences per micro-batch per data-parallel rank" },
    { KEY(train, batch_start, KEY_LONG), .def = "3072", .min = 1, .max = LMAX,
      .help = "global batch in sequences at token 0 (a multiple of micro_batch * dp)" },
    { KEY(train, batch_end, KEY_LONG), .def = "15360", .min = 1, .max = LMAX,
      .help = "global batch in sequences once the ramp is over (a multiple of micro_batch * dp)" },
    { KEY(train, batch_ramp_tokens, KEY_DOUBLE), .def = "469e9", .min = 0, .max = INF,
      .help = "tokens over which the batch grows linearly, rounded down to micro_batch * dp; 0 = no ramp" },
    { KEY(train, total_tokens, KEY_DOUBLE), .def = "14.8e12", .min = 0, .max = INF,
      .help = "training stops after this many tokens (0 = no token limit)" },
    { KEY(train, max_steps, KEY_LONG), .def = "0", .min = 0, .max = LMAX,
      .help = "or after this many optimizer steps, whichever comes first (0 = no step limit)" },
    { KEY(train, lr, KEY_SCHEDULE), .def = V3_LR, .min = 0, .max = INF, .help = "learning rate schedule" },
    { KEY(train, bias_update_speed, KEY_SCHEDULE), .def = V3_GAMMA, .min = 0, .max = INF,
      .help = "gamma of auxiliary-loss-free balancing: per-step change of the expert selection biases" },
    { KEY(train, mtp_lambda, KEY_SCHEDULE), .def = V3_MTP_LAMBDA, .min = 0, .max = INF,
      .help = "weight lambda of the MTP loss" },
    { KEY(train, beta1, KEY_DOUBLE), .def = "0.9", .min = 0, .max = 1, .max_open = 1, .help = "AdamW beta1" },
    { KEY(train, beta2, KEY_DOUBLE), .def = "0.95", .min = 0, .max = 1, .max_open = 1, .help = "AdamW beta2" },
    { KEY(train, eps, KEY_DOUBLE), .def = "1e-8", .min = 0, .min_open = 1, .max = INF,
      .help = "AdamW epsilon (not in the report; common practice)" },
    { KEY(train, weight_decay, KEY_DOUBLE), .def = "0.1", .min = 0, .max = INF,
      .help = "AdamW decoupled weight decay (norms and biases are not decayed)" },
    { KEY(train, grad_clip, KEY_DOUBLE), .def = "1", .min = 0, .max = INF,
      .help = "clip the global gradient norm to this (0 = off)" },
    { KEY(train, balance_alpha, KEY_DOUBLE), .def = "1e-4", .min = 0, .max = INF,
      .help = "weight alpha of the sequence-wise balance loss (0 = off)" },
    { KEY(train, seed, KEY_U64), .def = "42", .min = 0, .max = INF,
      .help = "seed of initialization, data shuffling and everything random" },
    { KEY(train, eval_every, KEY_INT), .def = "0", .min = 0, .max = IMAX,
      .help = "steps between evaluations on data.val (0 = never)" },
    { KEY(train, eval_batches, KEY_INT), .def = "8", .min = 1, .max = IMAX,
      .help = "micro-batches per evaluation" },
    { KEY(train, max_nonfinite_steps, KEY_INT), .def = "3", .min = 0, .max = IMAX,
      .help = "consecutive non-finite steps skipped before the run stops (0 = stop at the first)" },
    { KEY(train, recompute, KEY_BOOL), .def = "true",
      .help = "recompute RMSNorm outputs, MLA up-projections and SwiGLU outputs in backward" },

    // ---- data
    { KEY(data, train, KEY_STRING), .def = "",
      .help = "training shards: comma-separated globs, relative to the working directory" },
    { KEY(data, val, KEY_STRING), .def = "",
      .help = "validation shards, same syntax (\"\" = no evaluation)" },
    { KEY(data, tokenizer, KEY_STRING), .def = "byte",
      .help = "\"byte\" or the path of a Hugging Face tokenizer.json" },
    { KEY(data, prefetch, KEY_INT), .def = "2", .min = 0, .max = 1024,
      .help = "micro-batches prepared ahead by the loader thread" },
    { KEY(data, shuffle, KEY_BOOL), .def = "true", .help = "shuffle documents each epoch (from train.seed)" },

    // ---- parallel: world = pp * dp processes (RECIPE.md section 4)
    { KEY(parallel, pp, KEY_INT), .def = "1", .min = 1, .max = IMAX, .help = "pipeline stages" },
    { KEY(parallel, dp, KEY_INT), .def = "1", .min = 1, .max = IMAX, .help = "data-parallel degree" },
    { KEY(parallel, ep, KEY_INT), .def = "1", .min = 1, .max = IMAX,
      .help = "expert-parallel degree (divides dp and n_routed_experts)" },
    { KEY(parallel, schedule, KEY_ENUM), .def = "1f1b", .values = pipe_schedules,
      .help = "pipeline schedule: 1f1b or dualpipe (even pp)" },
    { KEY(parallel, zero_stage, KEY_INT), .def = "1", .min = 0, .max = 1,
      .help = "1 = optimizer state sharded over dp (ZeRO-1); 0 = replicated" },

    // ---- checkpoint
    { KEY(checkpoint, dir, KEY_STRING), .def = "", .help = "checkpoint directory (\"\" = <log.run_dir>/checkpoints)" },
    { KEY(checkpoint, every, KEY_INT), .def = "1000", .min = 0, .max = IMAX,
      .help = "steps between checkpoints (0 = only at the end or on a signal)" },
    { KEY(checkpoint, keep_last, KEY_INT), .def = "3", .min = 1, .max = IMAX,
      .help = "keep the newest keep_last complete checkpoints" },
    { KEY(checkpoint, keep_every, KEY_INT), .def = "0", .min = 0, .max = IMAX,
      .help = "and keep every checkpoint whose step is a multiple of this (0 = none)" },
    { KEY(checkpoint, at_end, KEY_BOOL), .def = "true",
      .help = "also write a checkpoint when the run ends (off for benchmarks; signals still checkpoint)" },

    // ---- log
    { KEY(log, run_dir, KEY_STRING), .def = "runs/default",
      .help = "run directory: effective config, metrics, checkpoints" },
    { KEY(log, every, KEY_INT), .def = "10", .min = 1, .max = IMAX, .help = "steps between progress lines" },
    { KEY(log, profile, KEY_BOOL), .def = "false",
      .help = "time every backend op from the second step on (each op synchronized: slower than an unprofiled run); "
              "at the end, a per-op and per-family table in the log and <log.run_dir>/profile.json" },
};
const int config_n_keys = (int)(sizeof config_keys / sizeof config_keys[0]);

_Static_assert(sizeof(ScoreFunc) == sizeof(int) && sizeof(RopeScaling) == sizeof(int) &&
               sizeof(BackendKind) == sizeof(int) && sizeof(PrecisionKind) == sizeof(int) &&
               sizeof(PipeSchedule) == sizeof(int) && sizeof(PhaseShape) == sizeof(int),
               "KEY_ENUM fields are read and written as int");
