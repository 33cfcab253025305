// A training run's state <-> checkpoints and Hugging Face weights: the calls the step loop makes.
//
// What a run's checkpoint holds (ckpt.h for the files): the model (FP32 master weights, MoE selection biases), the
// AdamW moments and step count, and per rank the loader position (blob "loader", a LoaderState) and the loop's
// counters (blob "trainer", a RunCounters). The schedules (LR, batch size, gamma, MTP lambda) are functions of the
// token counter, so restoring `tokens` restores them. Nothing else in the loop carries state across steps.
#ifndef CKPT_RUN_H
#define CKPT_RUN_H

#include <stdint.h>
#include "data/loader.h"
#include "model/model.h"
#include "train/config.h"
#include "train/optim.h"

// The loop's counters, saved as raw bytes (fixed-width fields, no pointers).
typedef struct {
    int64_t step;             // optimizer steps done (skipped non-finite steps included: the data moved on)
    double tokens;            // tokens consumed (exact integers in a double, as config_tokens_after_steps)
    int64_t nonfinite_total;  // skipped steps so far
    int32_t nonfinite_run;    // consecutive skipped steps right before the checkpoint
    int32_t pad_;
} RunCounters;

// Where this process sits in the job (a single process: rank 0 of 1, everything 0/1, barrier NULL).
typedef struct {
    int rank, world;
    int dp_rank, dp_size, pp_rank, pp_size, ep_rank, ep_size;
    int writes_stage;                  // this rank writes its stage file: dp_rank 0 of its (stage, EP slice)
    void (*barrier)(void *ctx);        // over all ranks
    void *barrier_ctx;
} RunLayout;

// The single-process layout.
RunLayout ckpt_run_single(void);
// checkpoint.dir, or <log.run_dir>/checkpoints when it is "".
void ckpt_run_root(const Config *cfg, char *out, size_t n);
// Saves step c->step (collective; see ckpt_save). Records the effective config in the manifest.
void ckpt_run_save(const Config *cfg, const RunLayout *lay, Model *m, const AdamW *opt, const Loader *train,
                   const RunCounters *c);
// --resume: "" / "none" = start fresh (returns 0), "auto" = the newest complete checkpoint under ckpt_run_root, or
// fresh when there is none, or a checkpoint path (dies if it does not verify). On a resume fills the model, the
// optimizer, the loader position and *c from it and returns 1. Dies on a different model section.
int ckpt_run_resume(const Config *cfg, const char *resume, const RunLayout *lay, Model *m, AdamW *opt, Loader *train,
                    RunCounters *c);
// --init-from: the model's tensors and selection biases from a Hugging Face DeepSeek-V3 directory (hf_io.h).
void ckpt_run_init_from(const char *hf_dir, const Config *cfg, Model *m);

// `build/train export CKPT OUT_DIR [--dtype fp32|bf16] [--max-shard-size BYTES]`: argv[0] is "export". CKPT is a
// checkpoint (step-NNNNNNNNN) or a checkpoint directory (its newest complete checkpoint is used). Returns the exit
// status (usage errors: 2).
int ckpt_cli_export(int argc, char **argv);
#define CKPT_CLI_EXPORT_USAGE \
    "       build/train export CKPT OUT_DIR [--dtype fp32|bf16] [--max-shard-size BYTES]\n"
#define CKPT_CLI_EXPORT_HELP \
    "  export                  write a checkpoint (step-NNNNNNNNN, or the newest in a checkpoint directory) as a\n" \
    "                          Hugging Face DeepSeek-V3 directory: config.json + model*.safetensors (+ index);\n" \
    "                          weights fp32 (default) or bf16, shards of at most 5 GB unless --max-shard-size\n"

#endif
