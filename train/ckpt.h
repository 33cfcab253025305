// Checkpoints: everything the next step depends on, written so that no crash at any moment can leave a checkpoint
// that loads as good but is not.
//
// On disk (<root> is checkpoint.dir, by default <log.run_dir>/checkpoints):
//   <root>/step-000001200/                     one checkpoint (9-digit optimizer step)
//       stage-SSS-ep-EEE.h5                    model state of pipeline stage SSS (its EP slice EEE): per tensor of
//                                              the parameter table, by Hugging Face name,
//                                                /params/<name>   float32, the FP32 master weights, HF shape
//                                                /adam_m/<name>   uint16, the BF16 bits of AdamW's first moment
//                                                /adam_v/<name>   uint16, the BF16 bits of the second moment
//                                                /moe_bias/model.layers.<i>.mlp.gate.e_score_correction_bias
//                                                                 float32 [E], the selection bias of MoE layer i
//                                              and root attributes step, adam_t (optimizer steps), stage, ep_part,
//                                              model_hash. Slice EEE > 0 holds only its routed experts (the rest of
//                                              the stage is in slice 0).
//       rank-RRRRR.h5                          per process: attributes step, tokens, rank/world, dp/pp/ep rank and
//                                              size; datasets /blobs/<name> uint8 (the loader position, RNG state,
//                                              trainer counters: opaque bytes whose size is checked on load)
//       COMPLETE                               the manifest, JSON, written last: step, world size, model hash, the
//                                              model section, every file with its size and XXH64, the config text
// Everything is readable with h5py (BF16 moments: np.uint32(x) << 16 viewed as float32).
//
// Writing (ckpt_save, called by every rank): rank 0 creates step-N.tmp/ (removing a stale one); barrier; each rank
// writes its files there, fsyncs them, checksums them (XXH64 of the file bytes) into a <file>.xxh64 note; barrier;
// rank 0 collects the notes, requires a rank file from every rank, writes COMPLETE (tmp + fsync + rename), renames
// step-N.tmp to step-N, fsyncs <root>, applies retention; barrier. A checkpoint is complete iff its directory has
// the final name and a manifest whose files all exist with the recorded sizes and checksums.
//
// Reading: ckpt_find_latest / ckpt_resolve_resume pick a checkpoint that verifies (falling back past bad ones with
// a warning naming each and why); ckpt_open parses its manifest; ckpt_check_model refuses a different model
// section; ckpt_load_stage fills any ParamTable (any pipeline split, any expert-parallel slice) by tensor name from
// whichever stage file holds each tensor, so a different parallel layout reshards on load; ckpt_load_rank restores
// a rank's counters and blobs.
//
// Data-parallel degree changes: stage files hold full tensors, so any DP degree loads them. Rank files: a rank
// reads its own file when the world size is unchanged, else the file of rank (rank % old_world). The loader
// position is global (data/loader.h: the same on every rank, each rank offsets by its dp_rank), so any rank's
// loader state resumes the same data stream; per-rank RNG streams then come from another rank's file.
//
// Multi-process note: verifying reads every file of a checkpoint. Call ckpt_find_latest / ckpt_resolve_resume on
// one rank and broadcast the path. Stage files are written by ONE rank per (stage, EP slice), which must hold the
// full tensors of its table (with ZeRO-1, gather the moment shards first); other ranks pass stage = NULL.
#ifndef CKPT_H
#define CKPT_H

#include <stddef.h>
#include <stdint.h>
#include "kernels/ops.h"
#include "model/params.h"
#include "train/config.h"

#define CKPT_MAX_BLOBS 8
#define CKPT_PATH_MAX 4096

// Opaque per-rank bytes (LoaderState, RNG state, trainer counters). On save `data` is read; on load exactly
// `size` bytes are written to `data` (a size different from the stored one is an error naming the blob).
typedef struct {
    const char *name;   // [A-Za-z0-9_]+
    void *data;
    size_t size;
} CkptBlob;

typedef struct {
    int64_t step;        // optimizer steps completed (the checkpoint's name)
    double tokens;       // tokens consumed so far (stored as float64: the trainer counts in double, exactly)
    int rank, world;     // this process in MPI_COMM_WORLD (0, 1 for a single process)
    int dp_rank, dp_size, pp_rank, pp_size, ep_rank, ep_size;
    int n_blobs;
    CkptBlob blobs[CKPT_MAX_BLOBS];
} CkptRankState;

// One rank's model state: a parameter table (a pipeline stage, possibly an EP slice of it) and its buffers.
typedef struct {
    const ParamTable *table;
    const Backend *be;         // params, adam_m, adam_v live in this backend's memory (table->total elements)
    float *params;             // FP32 master weights
    uint16_t *adam_m, *adam_v; // BF16 moments
    int64_t adam_t;            // AdamW steps taken (ckpt_load_stage sets it)
    float **bias;              // host FP32 [E] rows, one per MoE layer of the table, in table order (the order of
    int n_bias;                // params_moe_layers / model_expert_bias)
    int stage;                 // pipeline stage index, and EP slice: they name the file; ep_part > 0 writes only
    int ep_part;               // the routed experts of the table
} CkptStage;

typedef struct {
    const char *root;              // the checkpoint directory (created if missing)
    const ModelConfig *model;      // its hash and keys go into the manifest
    const char *config_text;       // the effective config (YAML) recorded in the manifest; may be NULL
    int keep_last;                 // retention: the newest keep_last complete checkpoints (>= 1) ...
    int keep_every;                // ... plus every one whose step is a multiple of keep_every (0 = none)
    void (*barrier)(void *ctx);    // all ranks; NULL in a single process
    void *barrier_ctx;
} CkptOptions;

// Writes checkpoint rs->step (collective over all ranks, see the header comment). stage is NULL on ranks that write
// no stage file. Returns when the checkpoint is complete on disk. Dies on any I/O error (the partial step-N.tmp is
// left for the next save or retention to remove). Saving a step that already has a checkpoint replaces it.
void ckpt_save(const CkptOptions *o, const CkptStage *stage, const CkptRankState *rs);

// <root>/step-<9 digits>.
void ckpt_path(const char *root, int64_t step, char *out, size_t n);
// 1 if `path` is a complete, intact checkpoint; else 0 and the reason in why (e.g. "no manifest COMPLETE",
// "rank-00001.h5 is missing", "stage-000-ep-000.h5 has 1000 bytes, the manifest says 4096 (truncated)",
// "checksum mismatch in ...", "temporary name (the save did not finish)").
int ckpt_verify(const char *path, char *why, size_t n);
// The newest checkpoint under root that verifies: 1 and its path, or 0 when there is none (a missing root counts
// as empty). Every newer one that fails verification is logged as a warning with its reason.
int ckpt_find_latest(const char *root, char *path, size_t n);
// --resume semantics: "" or "none" -> 0 (start fresh); "auto" -> ckpt_find_latest (0 when none: fresh start,
// logged); any other value is a checkpoint path that must verify (dies naming it and the reason) -> 1.
int ckpt_resolve_resume(const char *root, const char *resume, char *path, size_t n);
// Deletes checkpoints older than the newest complete one that retention does not keep, stale step-*.tmp
// directories and leftovers of interrupted deletions. Never deletes a checkpoint newer than `current_step`.
// Called by ckpt_save on rank 0; exposed for tests and tools.
void ckpt_retain(const char *root, int64_t current_step, int keep_last, int keep_every);

typedef struct Ckpt Ckpt;
// Parses the manifest of a checkpoint (verify it first). Dies with the path and reason when it is unusable.
Ckpt *ckpt_open(const char *path);
void ckpt_close(Ckpt *c);
const char *ckpt_dir(const Ckpt *c);
int64_t ckpt_step(const Ckpt *c);
int ckpt_world(const Ckpt *c);
unsigned long long ckpt_model_hash(const Ckpt *c);
// The config text recorded at save time ("" if none).
const char *ckpt_config_text(const Ckpt *c);
// The model section recorded in the manifest (keys absent there keep their defaults).
void ckpt_model_config(const Ckpt *c, ModelConfig *out);
// Dies unless the checkpoint was saved for this model section: the message names both hashes and every key that
// differs with both values.
void ckpt_check_model(const Ckpt *c, const ModelConfig *m);
// Fills every tensor of s->table (params, adam_m, adam_v), the MoE biases and s->adam_t from the stage files.
// Dies naming the tensor and checkpoint when one is missing or has another shape.
void ckpt_load_stage(Ckpt *c, CkptStage *s);
// Fills rs->step, rs->tokens and each blob in rs->blobs (name, data, size given by the caller) from the rank file
// of rs->rank (or rank % world of the checkpoint when rs->world differs, see above). Dies when a blob is missing
// or has another size.
void ckpt_load_rank(Ckpt *c, CkptRankState *rs);
// Reads rows [row0, row0 + nrows) of FP32 parameter `name` (host dst, row-major) from the stage files; 1-D tensors
// have one row per element. Dies when absent. For streaming exports (hf_io).
void ckpt_read_param_rows(Ckpt *c, const char *name, int64_t row0, int64_t nrows, int64_t cols, float *dst);
// The MoE layers of a table in table order (the layers of its router tensors; the order of CkptStage.bias):
// writes up to cap of them into out (may be NULL when cap is 0) and returns the count.
int ckpt_table_moe_layers(const ParamTable *t, int *out, int cap);
// Reads the [E] selection bias of MoE layer `layer` into dst; dies when absent.
void ckpt_read_bias(Ckpt *c, int layer, float *dst, int n_experts);

#endif
