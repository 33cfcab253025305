// The training loop (single process for now; the data-parallel reduction slots in after the micro-batch loop).
#ifndef TRAINER_H
#define TRAINER_H

#include "train/config.h"

typedef struct {
    const char *resume;      // "" / "none": start fresh; "auto": newest complete checkpoint (fresh if none); or a path
    const char *init_from;   // a Hugging Face DeepSeek-V3 directory to start from (fresh runs only), or NULL
    const char *config_text; // the effective config (YAML) recorded in every checkpoint's manifest, or NULL
} TrainOptions;

// Trains cfg until train.total_tokens or train.max_steps. Writes <run_dir>/metrics.jsonl (one JSON object per
// step and per evaluation), a progress line per log.every steps on stderr, and checkpoints (every
// checkpoint.every steps, at the end, and on SIGTERM / SIGUSR1). Returns the process exit status: 0 done,
// 3 stopped by the non-finite guard, SIGNALS_EXIT_REQUEUE (75) after a signal-triggered checkpoint.
int trainer_run(const Config *cfg, const TrainOptions *opt);
// The checkpoint directory of a config: checkpoint.dir, or <log.run_dir>/checkpoints when that is empty.
void trainer_ckpt_root(const Config *cfg, char *out, size_t n);

#endif
