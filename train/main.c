// build/train: the one binary.
//
//   build/train [--set section.key=value]... CONFIG              train (the training entry)
//   build/train plan [--set section.key=value]... CONFIG         parameters, FLOPs/token and per-GPU memory
//   build/train dump-config [--set section.key=value]... CONFIG  print the effective config as YAML
//   build/train --help-config                                    every config key: type, default, range, help
//   build/train --help
//
// Subcommands that take a config share one argument parser (parse_config_args), so --set works the same for all.
#include "train/check.h"
#include "train/config.h"
#include "train/plan.h"
#include "train/trainer.h"
#include "train/hf_io.h"
#include "train/ckpt.h"
#include "train/sample.h"
#include "data/tokenizer.h"
#include "model/model.h"
#include <unistd.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *out) {
    fprintf(out,
        "usage: build/train [--set section.key=value]... [--resume auto|none|PATH] [--init-from HF_DIR] CONFIG\n"
        "       build/train plan [--set section.key=value]... CONFIG\n"
        "       build/train export CKPT OUT_DIR [--dtype bf16|fp32] [--max-shard-gb N]\n"
        "       build/train sample CKPT|RUN_DIR [--prompt TEXT] [--tokens N] [--temperature T] [--top-p P] [--seed S]\n"
        "                          [--backend cpu|cuda]   (default: the run's; cpu samples in FP32)\n"
        "       build/train dump-config [--set section.key=value]... CONFIG\n"
        "       build/train --help-config\n"
        "       build/train --help\n"
        "\n"
        "  CONFIG                  a YAML config (configs/tiny.yaml, configs/v3-671b.yaml, ...)\n"
        "  --resume auto|none|PATH continue from the newest complete checkpoint of the run (auto, the default: a\n"
        "                          fresh start when there is none), start fresh (none), or from a given checkpoint\n"
        "  --init-from HF_DIR      a fresh run starts from a Hugging Face DeepSeek-V3 directory (safetensors in\n"
        "                          BF16, FP32 or FP8 with 128x128 block scales); ignored when a checkpoint is resumed\n"
        "  --set section.key=value override one key after the file is read (repeatable), e.g.\n"
        "                            --set train.seq_len=2048\n"
        "                            --set 'train.lr={start: 0, phases: [{shape: cosine, until_steps: 100, to: 0}]}'\n"
        "  plan                    parameters (total / activated), training FLOPs per token and per-GPU memory\n"
        "                          of the config's parallel layout, without allocating the model\n"
        "  export                  write a checkpoint as a Hugging Face DeepSeek-V3 directory (config.json,\n"
        "                          model*.safetensors, index), MTP modules and selection biases included\n"
        "  sample                  generate text from a checkpoint with the tokenizer of its data (data.tokenizer):\n"
        "                          greedy by default (--temperature 0), or temperature / nucleus sampling\n"
        "  dump-config             print the effective config (file + overrides + defaults) as YAML and exit\n"
        "  --help-config           list every config key with its type, default, allowed values and meaning\n");
}

// Collects "--set k=v" (or "--set=k=v") and exactly one CONFIG from argv[first..]. The overrides point into argv.
// When `train` is given, also --resume auto|none|PATH and --init-from DIR (the training entry's options).
static const char *parse_args(int argc, char **argv, int first, int *n_sets, char **sets, TrainOptions *train) {
    const char *config = NULL;
    *n_sets = 0;
    for (int i = first; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--set") == 0) {
            if (i + 1 >= argc) die("--set needs an argument section.key=value (see build/train --help)");
            sets[(*n_sets)++] = argv[++i];
        } else if (strncmp(a, "--set=", 6) == 0) {
            sets[(*n_sets)++] = argv[i] + 6;
        } else if (train && (strcmp(a, "--resume") == 0 || strcmp(a, "--init-from") == 0)) {
            if (i + 1 >= argc) die("%s needs an argument (see build/train --help)", a);
            if (a[2] == 'r') train->resume = argv[++i];
            else train->init_from = argv[++i];
        } else if (a[0] == '-' && a[1] != 0) {
            die("unknown option %s (see build/train --help)", a);
        } else if (config) {
            die("more than one config file given: %s and %s (see build/train --help)", config, a);
        } else {
            config = a;
        }
    }
    if (!config) die("no config file given (see build/train --help)");
    return config;
}

static const char *parse_config_args(int argc, char **argv, int first, int *n_sets, char **sets) {
    return parse_args(argc, argv, first, n_sets, sets, NULL);
}

// Loads the config of a subcommand that takes CONFIG and --set overrides from argv[first..].
static void load_config_args(int argc, char **argv, int first, Config *cfg) {
    char **sets = xcalloc((size_t)argc, sizeof *sets);
    int n_sets;
    const char *path = parse_config_args(argc, argv, first, &n_sets, sets);
    config_load(cfg, path, n_sets, sets);
    free(sets);
}

static int cmd_dump_config(int argc, char **argv) {
    Config cfg;
    load_config_args(argc, argv, 2, &cfg);
    config_dump(&cfg, stdout);
    if (fflush(stdout) != 0 || ferror(stdout)) die("cannot write the config to stdout");
    return 0;
}

static int cmd_plan(int argc, char **argv) {
    Config cfg;
    load_config_args(argc, argv, 2, &cfg);
    plan_print(&cfg, stdout);
    return 0;
}

static int cmd_export(int argc, char **argv) {
    if (argc < 4) die("usage: build/train export CKPT OUT_DIR [--dtype bf16|fp32] [--max-shard-gb N]");
    HfExportOptions o = {.dtype = HF_BF16, .max_shard_bytes = 0};
    for (int i = 4; i < argc; i++) {
        if (strcmp(argv[i], "--dtype") == 0 && i + 1 < argc) {
            const char *d = argv[++i];
            if (strcmp(d, "bf16") == 0) o.dtype = HF_BF16;
            else if (strcmp(d, "fp32") == 0) o.dtype = HF_F32;
            else die("export: --dtype %s: expected bf16 or fp32", d);
        } else if (strcmp(argv[i], "--max-shard-gb") == 0 && i + 1 < argc) {
            char *end;
            double gb = strtod(argv[++i], &end);
            if (*end || !(gb > 0)) die("export: --max-shard-gb %s: expected a positive number", argv[i]);
            o.max_shard_bytes = (int64_t)(gb * 1e9);
        } else {
            die("export: unknown argument %s", argv[i]);
        }
    }
    char why[1024];
    if (!ckpt_verify(argv[2], why, sizeof why)) die("export: %s is not a complete checkpoint: %s", argv[2], why);
    hf_export_ckpt(argv[2], argv[3], &o);
    log_info("exported %s to %s", argv[2], argv[3]);
    return 0;
}

static void sample_emit(const char *bytes, size_t n, void *user) {
    (void)user;
    fwrite(bytes, 1, n, stdout);
    fflush(stdout);
}

// Generates text from a checkpoint: the model and tokenizer come from the config recorded in its manifest.
static int cmd_sample(int argc, char **argv) {
    if (argc < 3) die("usage: build/train sample CKPT [--prompt TEXT] [--tokens N] [--temperature T] [--top-p P] "
                      "[--seed S] [--backend cpu|cuda]");
    const char *ckpt = argv[2], *prompt = "", *backend = NULL;
    int n_new = 200;
    SampleOptions so = {.temperature = 0.0, .top_p = 1.0, .seed = 1};
    for (int i = 3; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc) die("sample: %s needs a value", a);
        const char *v = argv[++i];
        char *end;
        if (strcmp(a, "--prompt") == 0) prompt = v;
        else if (strcmp(a, "--tokens") == 0) { n_new = (int)strtol(v, &end, 10); if (*end || n_new < 0) die("sample: --tokens %s: expected a count >= 0", v); }
        else if (strcmp(a, "--temperature") == 0) { so.temperature = strtod(v, &end); if (*end) die("sample: --temperature %s: expected a number", v); }
        else if (strcmp(a, "--top-p") == 0) { so.top_p = strtod(v, &end); if (*end) die("sample: --top-p %s: expected a number", v); }
        else if (strcmp(a, "--seed") == 0) { so.seed = strtoull(v, &end, 10); if (*end) die("sample: --seed %s: expected an integer", v); }
        else if (strcmp(a, "--backend") == 0) {
            if (strcmp(v, "cpu") != 0 && strcmp(v, "cuda") != 0) die("sample: --backend %s: expected cpu or cuda", v);
            backend = v;
        }
        else die("sample: unknown argument %s", a);
    }
    // CKPT may also be a run directory: its newest complete checkpoint.
    char why[1024], latest[CKPT_PATH_MAX], root[CKPT_PATH_MAX];
    snprintf(root, sizeof root, "%s/checkpoints", ckpt);
    if (access(root, F_OK) == 0) {
        if (!ckpt_find_latest(root, latest, sizeof latest)) die("sample: %s holds no complete checkpoint", root);
        ckpt = latest;
    }
    if (!ckpt_verify(ckpt, why, sizeof why)) die("sample: %s is not a complete checkpoint: %s", ckpt, why);
    Ckpt *c = ckpt_open(ckpt);
    // The manifest's config text, through the config loader.
    const char *text = ckpt_config_text(c);
    if (!text || !text[0]) die("sample: %s records no config (it was not written by build/train)", ckpt);
    Config cfg;
    char name[CKPT_PATH_MAX + 32];
    snprintf(name, sizeof name, "%s (its manifest's config)", ckpt);
    config_load_text(&cfg, name, text, 0, NULL);
    ckpt_check_model(c, &cfg.model);
    // --backend cpu samples a GPU run on a machine without one: in FP32 (the cpu backend is the FP32 reference; the
    // checkpoint holds FP32 master weights whatever precision trained them).
    if (backend) cfg.train.backend = strcmp(backend, "cuda") == 0 ? BACKEND_CUDA : BACKEND_CPU;
    if (cfg.train.backend == BACKEND_CPU && cfg.train.precision != PRECISION_FP32) {
        log_info("sample: the cpu backend computes in FP32 (the run trained with train.precision %s)",
                 cfg.train.precision == PRECISION_BF16 ? "bf16" : "fp8");
        cfg.train.precision = PRECISION_FP32;
    }

    const Backend *be = backend_get(cfg.train.backend == BACKEND_CUDA ? "cuda" : "cpu");
    Model *m = model_create(&cfg, be, params_full_stage(&cfg.model), 1, cfg.train.seq_len);
    const ParamTable *t = model_params(m);
    int n_moe = model_n_moe_layers(m);
    float **bias = xcalloc((size_t)(n_moe ? n_moe : 1), sizeof(float *));
    for (int i = 0; i < n_moe; i++) bias[i] = model_expert_bias(m, i);
    // The reader fills the moments too: scratch buffers, freed right after.
    uint16_t *am = be->alloc((size_t)t->total * 2), *av = be->alloc((size_t)t->total * 2);
    CkptStage st = {.table = t, .be = be, .params = model_param_data(m), .adam_m = am, .adam_v = av,
                    .bias = bias, .n_bias = n_moe};
    ckpt_load_stage(c, &st);
    be->free(am);
    be->free(av);
    ckpt_close(c);

    Tokenizer *tok = tokenizer_load(cfg.data.tokenizer);
    SampleResult r;
    fputs(prompt, stdout);
    sample_generate(m, tok, prompt, n_new, &so, sample_emit, NULL, &r);
    fputc('\n', stdout);
    fflush(stdout);
    log_info("sampled %zu tokens after a %zu-token prompt (%s, temperature %g, top-p %g, seed %llu)%s", r.n_ids,
             r.n_prompt, so.temperature > 0 ? "sampling" : "greedy", so.temperature, so.top_p,
             (unsigned long long)so.seed, r.hit_eos ? ", stopped at EOS" : "");
    sample_result_free(&r);
    tokenizer_free(tok);
    free(bias);
    model_free(m);
    return 0;
}

// The number of processes the launcher started (mpirun, srun), from the environment, before any MPI call.
static int launched_world_size(void) {
    const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "SLURM_NTASKS"};
    for (size_t i = 0; i < sizeof vars / sizeof *vars; i++) {
        const char *v = getenv(vars[i]);
        if (v && atoi(v) > 0) return atoi(v);
    }
    return 1;
}

// The training entry: loads the config, records the effective config in the run directory, trains.
static int cmd_train(int argc, char **argv) {
    char **sets = xcalloc((size_t)argc, sizeof *sets);
    int n_sets;
    TrainOptions topt = {.resume = "auto", .init_from = NULL};
    const char *path = parse_args(argc, argv, 1, &n_sets, sets, &topt);
    Config cfg;
    config_load(&cfg, path, n_sets, sets);
    int world = launched_world_size();
    if (world != 1 || cfg.parallel.pp * cfg.parallel.dp != 1)
        die("%s: parallel.pp = %d x parallel.dp = %d with %d launched process(es): this build trains in one "
            "process only (pipeline, expert and data parallelism are not built yet); use pp 1, dp 1 and one process",
            path, cfg.parallel.pp, cfg.parallel.dp, world);
    char out[CONFIG_PATH_MAX + 32];
    snprintf(out, sizeof out, "%s/config.yaml", cfg.log.run_dir);
    config_save(&cfg, out);
    log_info("effective config written to %s", out);
    // The effective config goes into every checkpoint's manifest, so a checkpoint says how it was made.
    char *text = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&text, &len);
    if (!mem) die("open_memstream failed");
    config_dump(&cfg, mem);
    fclose(mem);
    topt.config_text = text;
    int rc = trainer_run(&cfg, &topt);
    free(text);
    free(sets);
    return rc;
}

int main(int argc, char **argv) {
    if (argc < 2) { usage(stderr); return 1; }
    const char *cmd = argv[1];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) { usage(stdout); return 0; }
    if (strcmp(cmd, "--help-config") == 0) { config_print_help(stdout); return 0; }
    if (strcmp(cmd, "dump-config") == 0) return cmd_dump_config(argc, argv);
    if (strcmp(cmd, "plan") == 0) return cmd_plan(argc, argv);
    if (strcmp(cmd, "export") == 0) return cmd_export(argc, argv);
    if (strcmp(cmd, "sample") == 0) return cmd_sample(argc, argv);
    return cmd_train(argc, argv);
}
