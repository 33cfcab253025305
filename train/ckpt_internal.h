// Internals shared by ckpt.c (directory protocol, manifest, verification, retention) and ckpt_h5.c (the HDF5
// stage and rank files).
#ifndef CKPT_INTERNAL_H
#define CKPT_INTERNAL_H

#include "train/ckpt.h"
#include <hdf5.h>

#define CKPT_FORMAT "dsv3-checkpoint"
#define CKPT_VERSION 1
#define CKPT_MANIFEST "COMPLETE"
#define CKPT_SUM_SUFFIX ".xxh64"

// Stage file name of (stage, ep part) and rank file name of a rank (no directory).
void ckpt_stage_file_name(int stage, int ep_part, char *out, size_t n);
void ckpt_rank_file_name(int rank, char *out, size_t n);

// Writes one stage / rank file at `path` (inside the .tmp directory) and fsyncs it.
void ckpt_h5_write_stage(const char *path, const CkptStage *s, int64_t step, unsigned long long model_hash);
void ckpt_h5_write_rank(const char *path, const CkptRankState *rs, unsigned long long model_hash);
// Reads a rank file into rs (see ckpt_load_rank).
void ckpt_h5_read_rank(const char *path, CkptRankState *rs);

// The stage files of a checkpoint, opened, with an index from tensor name (parameters and biases) to file.
typedef struct {
    int n;
    char **paths;
    hid_t *fids;
    char **keys;        // open-addressing map: name -> file index
    int *vals;
    int cap, n_keys;
} CkptStageIndex;

void ckpt_h5_index_open(CkptStageIndex *ix, const char *dir, char **names, int n);
void ckpt_h5_index_close(CkptStageIndex *ix);
// File index holding tensor `name` (a parameter or a bias name), or -1.
int ckpt_h5_index_find(const CkptStageIndex *ix, const char *name);
// Reads rows [row0, row0 + nrows) of dataset <group>/<name> of file f (cols elements per row, 1 for 1-D) into the
// host buffer dst, as mem_type. Checks that the dataset's total element count is consistent.
void ckpt_h5_read_rows(const CkptStageIndex *ix, int f, const char *group, const char *name, hid_t mem_type,
                       int64_t row0, int64_t nrows, int64_t cols, void *dst);
// Dataset dims (up to 3) of <group>/<name> in file f; returns ndims. Dies when absent.
int ckpt_h5_dims(const CkptStageIndex *ix, int f, const char *group, const char *name, int64_t *dims);
// int64 attribute of the root of file f.
int64_t ckpt_h5_attr_i64(const CkptStageIndex *ix, int f, const char *attr);
// "model.layers.<layer>.mlp.gate.e_score_correction_bias"
void ckpt_bias_name(int layer, char *out, size_t n);

#endif
