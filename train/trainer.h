// The training loop (single process for now; the data-parallel reduction slots in after the micro-batch loop).
#ifndef TRAINER_H
#define TRAINER_H

#include "train/config.h"

// Trains cfg until train.total_tokens or train.max_steps. Writes <run_dir>/metrics.jsonl (one JSON object per
// step and per evaluation) and a progress line per log.every steps on stderr. Returns the process exit status.
int trainer_run(const Config *cfg);

#endif
