// The HDF5 files of a checkpoint: per-stage model state and per-rank state (layout in ckpt.h).
//
// Tensors move between backend memory and the file in row chunks of at most CHUNK_ELEMS elements through one host
// buffer, so saving or loading never needs a second copy of a stage in host memory (a 671B stage with its moments is
// hundreds of GB on the device). Datasets are contiguous (no chunking, no filters): checkpoint integrity is the
// manifest's XXH64 of the whole file, and contiguous tensors are a single read for h5py users. Files use the HDF5
// 1.10 format, whose metadata is checksummed and whose large groups are indexed (a 671B stage has ~48k tensors).
#include "train/ckpt_internal.h"
#include "train/check.h"
#include "train/fsio.h"

#include <stdarg.h>
#include <string.h>

#define CHUNK_ELEMS ((int64_t)1 << 22)   // 16 MiB of FP32 per transfer

// ---- errors ----

static void h5_quiet(void) {
    static int quiet;
    if (!quiet) {
        H5_CHECK(H5Eset_auto2(H5E_DEFAULT, NULL, NULL));
        quiet = 1;
    }
}

static herr_t innermost(unsigned n, const H5E_error2_t *e, void *data) {
    if (n == 0) snprintf((char *)data, 256, "%s (in %s)", e->desc ? e->desc : "?", e->func_name ? e->func_name : "?");
    return 0;
}

static const char *h5_error_text(void) {
    static char buf[256];
    strcpy(buf, "no HDF5 error detail");
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, innermost, buf);
    return buf;
}

// H5_CHECK that names the checkpoint file and what was being done.
#define CK_H5(path, call, ...) ({ __typeof__(call) r_ = (call); if (r_ < 0) { \
    char what_[512]; snprintf(what_, sizeof what_, __VA_ARGS__); \
    die_at(__FILE__, __LINE__, "checkpoint file %s: %s (HDF5: %s) [%s]", path, what_, h5_error_text(), #call); } r_; })

// ---- names ----

void ckpt_stage_file_name(int stage, int ep_part, char *out, size_t n) {
    snprintf(out, n, "stage-%03d-ep-%03d.h5", stage, ep_part);
}

void ckpt_rank_file_name(int rank, char *out, size_t n) { snprintf(out, n, "rank-%05d.h5", rank); }

void ckpt_bias_name(int layer, char *out, size_t n) {
    snprintf(out, n, "model.layers.%d.mlp.gate.e_score_correction_bias", layer);
}

int ckpt_table_moe_layers(const ParamTable *t, int *out, int cap) {
    int k = 0;
    for (int i = 0; i < t->n; i++) {
        if (t->params[i].kind != PARAM_ROUTER) continue;
        if (k < cap) out[k] = t->params[i].layer;
        k++;
    }
    return k;
}

static int64_t param_rows(const ParamInfo *p) { return p->shape[0]; }
static int64_t param_cols(const ParamInfo *p) { return p->ndim == 2 ? p->shape[1] : 1; }

// ---- writing ----

static hid_t file_create(const char *path) {
    h5_quiet();
    hid_t fapl = H5_CHECK(H5Pcreate(H5P_FILE_ACCESS));
    H5_CHECK(H5Pset_libver_bounds(fapl, H5F_LIBVER_V110, H5F_LIBVER_V110));
    hid_t f = CK_H5(path, H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, fapl), "cannot create the file");
    H5_CHECK(H5Pclose(fapl));
    return f;
}

static void file_close(const char *path, hid_t f) {
    CK_H5(path, H5Fclose(f), "cannot close the file (data may not have been written)");
    fsio_fsync_path(path);
}

static void attr_write(const char *path, hid_t loc, const char *name, hid_t ftype, hid_t mtype, const void *v) {
    hid_t space = H5_CHECK(H5Screate(H5S_SCALAR));
    hid_t a = CK_H5(path, H5Acreate2(loc, name, ftype, space, H5P_DEFAULT, H5P_DEFAULT), "cannot create attribute %s",
                    name);
    CK_H5(path, H5Awrite(a, mtype, v), "cannot write attribute %s", name);
    H5_CHECK(H5Aclose(a));
    H5_CHECK(H5Sclose(space));
}

static void attr_i64(const char *path, hid_t loc, const char *name, int64_t v) {
    attr_write(path, loc, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &v);
}
static void attr_u64(const char *path, hid_t loc, const char *name, unsigned long long v) {
    uint64_t x = v;
    attr_write(path, loc, name, H5T_STD_U64LE, H5T_NATIVE_UINT64, &x);
}
static void attr_f64(const char *path, hid_t loc, const char *name, double v) {
    attr_write(path, loc, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &v);
}
static void attr_str(const char *path, hid_t loc, const char *name, const char *s) {
    hid_t t = H5_CHECK(H5Tcopy(H5T_C_S1));
    H5_CHECK(H5Tset_size(t, strlen(s) + 1));
    H5_CHECK(H5Tset_strpad(t, H5T_STR_NULLTERM));
    attr_write(path, loc, name, t, t, s);
    H5_CHECK(H5Tclose(t));
}

static hid_t group_create(const char *path, hid_t f, const char *name) {
    return CK_H5(path, H5Gcreate2(f, name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), "cannot create group %s", name);
}

// Creates <g>/<name> with dims [rows] (cols == 0) or [rows, cols] of file type ftype.
static hid_t dataset_create(const char *path, hid_t g, const char *name, hid_t ftype, int ndim, int64_t rows,
                            int64_t cols) {
    hsize_t dims[2] = {(hsize_t)rows, (hsize_t)cols};
    hid_t space = H5_CHECK(H5Screate_simple(ndim, dims, NULL));
    hid_t dcpl = H5_CHECK(H5Pcreate(H5P_DATASET_CREATE));
    // Every byte is written by us: skip HDF5's fill pass over the (possibly GB-sized) contiguous storage.
    H5_CHECK(H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER));
    hid_t d = CK_H5(path, H5Dcreate2(g, name, ftype, space, H5P_DEFAULT, dcpl, H5P_DEFAULT), "cannot create dataset %s",
                    name);
    H5_CHECK(H5Pclose(dcpl));
    H5_CHECK(H5Sclose(space));
    return d;
}

// Writes rows [row0, row0 + nrows) (cols elements each) of dataset d from host buf.
static void dataset_write_rows(const char *path, const char *name, hid_t d, hid_t mtype, int ndim, int64_t row0,
                               int64_t nrows, int64_t cols, const void *buf) {
    hsize_t start[2] = {(hsize_t)row0, 0}, count[2] = {(hsize_t)nrows, (hsize_t)cols};
    if (ndim == 1) { start[0] = (hsize_t)(row0 * cols); count[0] = (hsize_t)(nrows * cols); }
    hid_t fspace = H5_CHECK(H5Dget_space(d));
    H5_CHECK(H5Sselect_hyperslab(fspace, H5S_SELECT_SET, start, NULL, count, NULL));
    hid_t mspace = H5_CHECK(H5Screate_simple(ndim, count, NULL));
    CK_H5(path, H5Dwrite(d, mtype, mspace, fspace, H5P_DEFAULT, buf), "cannot write tensor %s", name);
    H5_CHECK(H5Sclose(mspace));
    H5_CHECK(H5Sclose(fspace));
}

// Streams one tensor of the table from backend memory `base` (elements of esize bytes) into a new dataset.
static void write_tensor(const char *path, hid_t g, const ParamInfo *p, const Backend *be, const void *base,
                         size_t esize, hid_t ftype, hid_t mtype, void *host) {
    int64_t rows = param_rows(p), cols = param_cols(p);
    hid_t d = dataset_create(path, g, p->name, ftype, p->ndim, rows, p->ndim == 2 ? cols : 0);
    int64_t step_rows = CHUNK_ELEMS / cols > 0 ? CHUNK_ELEMS / cols : 1;
    for (int64_t r = 0; r < rows; r += step_rows) {
        int64_t nr = rows - r < step_rows ? rows - r : step_rows;
        const char *src = (const char *)base + (size_t)(p->offset + r * cols) * esize;
        be->download(host, src, (size_t)(nr * cols) * esize);
        dataset_write_rows(path, p->name, d, mtype, p->ndim, r, nr, cols, host);
    }
    H5_CHECK(H5Dclose(d));
}

void ckpt_h5_write_stage(const char *path, const CkptStage *s, int64_t step, unsigned long long model_hash) {
    const ParamTable *t = s->table;
    int n_moe = ckpt_table_moe_layers(t, NULL, 0);
    CHECK(s->n_bias == n_moe, "checkpoint stage %d: %d selection-bias rows given but the table has %d MoE layers",
          s->stage, s->n_bias, n_moe);
    int64_t max_cols = 1;
    for (int i = 0; i < t->n; i++) if (param_cols(&t->params[i]) > max_cols) max_cols = param_cols(&t->params[i]);
    // One row may exceed CHUNK_ELEMS only for absurdly wide tensors; size the buffer for whichever is larger.
    size_t host_bytes = (size_t)(CHUNK_ELEMS > max_cols ? CHUNK_ELEMS : max_cols) * sizeof(float);
    void *host = xmalloc(host_bytes);

    hid_t f = file_create(path);
    attr_str(path, f, "format", CKPT_FORMAT);
    attr_i64(path, f, "version", CKPT_VERSION);
    attr_i64(path, f, "step", step);
    attr_i64(path, f, "adam_t", s->adam_t);
    attr_i64(path, f, "stage", s->stage);
    attr_i64(path, f, "ep_part", s->ep_part);
    attr_u64(path, f, "model_hash", model_hash);
    attr_str(path, f, "adam_moment_encoding", "bfloat16 bits as uint16: float32 value = bits << 16");

    hid_t gp = group_create(path, f, "params"), gm = group_create(path, f, "adam_m"), gv = group_create(path, f, "adam_v");
    for (int i = 0; i < t->n; i++) {
        const ParamInfo *p = &t->params[i];
        if (s->ep_part > 0 && p->kind != PARAM_ROUTED_EXPERT) continue;
        write_tensor(path, gp, p, s->be, s->params, 4, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, host);
        write_tensor(path, gm, p, s->be, s->adam_m, 2, H5T_STD_U16LE, H5T_NATIVE_UINT16, host);
        write_tensor(path, gv, p, s->be, s->adam_v, 2, H5T_STD_U16LE, H5T_NATIVE_UINT16, host);
    }
    H5_CHECK(H5Gclose(gp));
    H5_CHECK(H5Gclose(gm));
    H5_CHECK(H5Gclose(gv));

    hid_t gb = group_create(path, f, "moe_bias");
    if (s->ep_part == 0 && n_moe > 0) {
        int *layers = xmalloc((size_t)n_moe * sizeof(int));
        ckpt_table_moe_layers(t, layers, n_moe);
        int64_t E = 0;
        for (int i = 0; i < t->n; i++) if (t->params[i].kind == PARAM_ROUTER) { E = t->params[i].shape[0]; break; }
        for (int i = 0; i < n_moe; i++) {
            char name[PARAMS_NAME_MAX];
            ckpt_bias_name(layers[i], name, sizeof name);
            hid_t d = dataset_create(path, gb, name, H5T_IEEE_F32LE, 1, E, 0);
            dataset_write_rows(path, name, d, H5T_NATIVE_FLOAT, 1, 0, E, 1, s->bias[i]);
            H5_CHECK(H5Dclose(d));
        }
        free(layers);
    }
    H5_CHECK(H5Gclose(gb));
    file_close(path, f);
    free(host);
}

void ckpt_h5_write_rank(const char *path, const CkptRankState *rs, unsigned long long model_hash) {
    hid_t f = file_create(path);
    attr_str(path, f, "format", CKPT_FORMAT);
    attr_i64(path, f, "version", CKPT_VERSION);
    attr_i64(path, f, "step", rs->step);
    attr_f64(path, f, "tokens", rs->tokens);
    attr_u64(path, f, "model_hash", model_hash);
    const struct { const char *name; int v; } ints[] = {
        {"rank", rs->rank}, {"world", rs->world}, {"dp_rank", rs->dp_rank}, {"dp_size", rs->dp_size},
        {"pp_rank", rs->pp_rank}, {"pp_size", rs->pp_size}, {"ep_rank", rs->ep_rank}, {"ep_size", rs->ep_size}};
    for (size_t i = 0; i < sizeof ints / sizeof *ints; i++) attr_i64(path, f, ints[i].name, ints[i].v);
    hid_t g = group_create(path, f, "blobs");
    for (int i = 0; i < rs->n_blobs; i++) {
        const CkptBlob *b = &rs->blobs[i];
        hid_t d = dataset_create(path, g, b->name, H5T_STD_U8LE, 1, (int64_t)b->size, 0);
        if (b->size > 0) dataset_write_rows(path, b->name, d, H5T_NATIVE_UINT8, 1, 0, (int64_t)b->size, 1, b->data);
        H5_CHECK(H5Dclose(d));
    }
    H5_CHECK(H5Gclose(g));
    file_close(path, f);
}

// ---- reading ----

static hid_t file_open(const char *path) {
    h5_quiet();
    return CK_H5(path, H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT), "cannot open the file (truncated or not HDF5?)");
}

static int64_t attr_read_i64(const char *path, hid_t f, const char *name) {
    if (CK_H5(path, H5Aexists(f, name), "cannot look up attribute %s", name) <= 0)
        die("checkpoint file %s: attribute %s is missing", path, name);
    hid_t a = CK_H5(path, H5Aopen(f, name, H5P_DEFAULT), "cannot open attribute %s", name);
    int64_t v;
    CK_H5(path, H5Aread(a, H5T_NATIVE_INT64, &v), "cannot read attribute %s as an integer", name);
    H5_CHECK(H5Aclose(a));
    return v;
}

static double attr_read_f64(const char *path, hid_t f, const char *name) {
    if (CK_H5(path, H5Aexists(f, name), "cannot look up attribute %s", name) <= 0)
        die("checkpoint file %s: attribute %s is missing", path, name);
    hid_t a = CK_H5(path, H5Aopen(f, name, H5P_DEFAULT), "cannot open attribute %s", name);
    double v;
    CK_H5(path, H5Aread(a, H5T_NATIVE_DOUBLE, &v), "cannot read attribute %s as a number", name);
    H5_CHECK(H5Aclose(a));
    return v;
}

void ckpt_h5_read_rank(const char *path, CkptRankState *rs) {
    hid_t f = file_open(path);
    rs->step = attr_read_i64(path, f, "step");
    rs->tokens = attr_read_f64(path, f, "tokens");
    for (int i = 0; i < rs->n_blobs; i++) {
        CkptBlob *b = &rs->blobs[i];
        char dname[256];
        snprintf(dname, sizeof dname, "blobs/%s", b->name);
        htri_t ok = CK_H5(path, H5Lexists(f, "blobs", H5P_DEFAULT), "cannot look up group /blobs");
        if (ok > 0) ok = CK_H5(path, H5Lexists(f, dname, H5P_DEFAULT), "cannot look up /%s", dname);
        if (ok <= 0) die("checkpoint file %s: state \"%s\" is missing (saved by a build that did not record it)",
                         path, b->name);
        hid_t d = CK_H5(path, H5Dopen2(f, dname, H5P_DEFAULT), "cannot open /%s", dname);
        hid_t space = H5_CHECK(H5Dget_space(d));
        hssize_t n = H5_CHECK(H5Sget_simple_extent_npoints(space));
        H5_CHECK(H5Sclose(space));
        if ((size_t)n != b->size)
            die("checkpoint file %s: state \"%s\" has %lld bytes, this build expects %zu (saved by an incompatible "
                "build?)", path, b->name, (long long)n, b->size);
        if (n > 0) CK_H5(path, H5Dread(d, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, b->data), "cannot read /%s",
                         dname);
        H5_CHECK(H5Dclose(d));
    }
    H5_CHECK(H5Fclose(f));
}

// ---- the stage index ----

static uint64_t name_hash(const char *s) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ULL;
    return h;
}

static void index_put(CkptStageIndex *ix, const char *key, int file) {
    if (2 * (ix->n_keys + 1) > ix->cap) {
        int old_cap = ix->cap;
        char **ok = ix->keys;
        int *ov = ix->vals;
        ix->cap = ix->cap ? 2 * ix->cap : 1024;
        ix->keys = xcalloc((size_t)ix->cap, sizeof *ix->keys);
        ix->vals = xcalloc((size_t)ix->cap, sizeof *ix->vals);
        ix->n_keys = 0;
        for (int i = 0; i < old_cap; i++) if (ok[i]) { index_put(ix, ok[i], ov[i]); free(ok[i]); }
        free(ok);
        free(ov);
    }
    size_t mask = (size_t)ix->cap - 1, h = (size_t)name_hash(key) & mask;
    while (ix->keys[h]) {
        // The same tensor in two files (e.g. written twice by a layout that replicates it): the first file wins;
        // both hold the same values by construction.
        if (strcmp(ix->keys[h], key) == 0) return;
        h = (h + 1) & mask;
    }
    ix->keys[h] = xstrdup(key);
    ix->vals[h] = file;
    ix->n_keys++;
}

int ckpt_h5_index_find(const CkptStageIndex *ix, const char *name) {
    if (!ix->cap) return -1;
    size_t mask = (size_t)ix->cap - 1, h = (size_t)name_hash(name) & mask;
    while (ix->keys[h]) {
        if (strcmp(ix->keys[h], name) == 0) return ix->vals[h];
        h = (h + 1) & mask;
    }
    return -1;
}

typedef struct { CkptStageIndex *ix; int file; } IterCtx;

static herr_t index_link(hid_t g, const char *name, const H5L_info_t *info, void *data) {
    (void)g; (void)info;
    IterCtx *c = data;
    index_put(c->ix, name, c->file);
    return 0;
}

void ckpt_h5_index_open(CkptStageIndex *ix, const char *dir, char **names, int n) {
    memset(ix, 0, sizeof *ix);
    ix->n = n;
    ix->paths = xcalloc((size_t)(n ? n : 1), sizeof *ix->paths);
    ix->fids = xcalloc((size_t)(n ? n : 1), sizeof *ix->fids);
    for (int i = 0; i < n; i++) {
        size_t len = strlen(dir) + strlen(names[i]) + 2;
        ix->paths[i] = xmalloc(len);
        snprintf(ix->paths[i], len, "%s/%s", dir, names[i]);
        ix->fids[i] = file_open(ix->paths[i]);
        const char *groups[] = {"params", "moe_bias"};
        for (int k = 0; k < 2; k++) {
            if (CK_H5(ix->paths[i], H5Lexists(ix->fids[i], groups[k], H5P_DEFAULT), "cannot look up /%s", groups[k]) <= 0)
                die("checkpoint file %s: group /%s is missing: not a stage file of this format", ix->paths[i],
                    groups[k]);
            hid_t g = CK_H5(ix->paths[i], H5Gopen2(ix->fids[i], groups[k], H5P_DEFAULT), "cannot open /%s", groups[k]);
            IterCtx c = {ix, i};
            CK_H5(ix->paths[i], H5Literate(g, H5_INDEX_NAME, H5_ITER_NATIVE, NULL, index_link, &c),
                  "cannot list /%s", groups[k]);
            H5_CHECK(H5Gclose(g));
        }
    }
}

void ckpt_h5_index_close(CkptStageIndex *ix) {
    for (int i = 0; i < ix->n; i++) {
        if (ix->fids[i] > 0) H5_CHECK(H5Fclose(ix->fids[i]));
        free(ix->paths[i]);
    }
    for (int i = 0; i < ix->cap; i++) free(ix->keys[i]);
    free(ix->keys);
    free(ix->vals);
    free(ix->paths);
    free(ix->fids);
    memset(ix, 0, sizeof *ix);
}

static hid_t open_dataset(const CkptStageIndex *ix, int f, const char *group, const char *name) {
    const char *path = ix->paths[f];
    char dname[PARAMS_NAME_MAX + 32];
    snprintf(dname, sizeof dname, "%s/%s", group, name);
    if (CK_H5(path, H5Lexists(ix->fids[f], dname, H5P_DEFAULT), "cannot look up /%s", dname) <= 0)
        die("checkpoint file %s: /%s is missing", path, dname);
    return CK_H5(path, H5Dopen2(ix->fids[f], dname, H5P_DEFAULT), "cannot open /%s", dname);
}

int ckpt_h5_dims(const CkptStageIndex *ix, int f, const char *group, const char *name, int64_t *dims) {
    hid_t d = open_dataset(ix, f, group, name);
    hid_t space = H5_CHECK(H5Dget_space(d));
    int nd = H5_CHECK(H5Sget_simple_extent_ndims(space));
    if (nd > 3) die("checkpoint file %s: /%s/%s has %d dimensions", ix->paths[f], group, name, nd);
    hsize_t hd[3] = {0, 0, 0};
    H5_CHECK(H5Sget_simple_extent_dims(space, hd, NULL));
    for (int i = 0; i < 3; i++) dims[i] = i < nd ? (int64_t)hd[i] : 0;
    H5_CHECK(H5Sclose(space));
    H5_CHECK(H5Dclose(d));
    return nd;
}

void ckpt_h5_read_rows(const CkptStageIndex *ix, int f, const char *group, const char *name, hid_t mem_type,
                       int64_t row0, int64_t nrows, int64_t cols, void *dst) {
    const char *path = ix->paths[f];
    hid_t d = open_dataset(ix, f, group, name);
    hid_t fspace = H5_CHECK(H5Dget_space(d));
    int nd = H5_CHECK(H5Sget_simple_extent_ndims(fspace));
    hsize_t dims[2] = {0, 0};
    if (nd < 1 || nd > 2) die("checkpoint file %s: /%s/%s has %d dimensions, expected 1 or 2", path, group, name, nd);
    H5_CHECK(H5Sget_simple_extent_dims(fspace, dims, NULL));
    int64_t file_cols = nd == 2 ? (int64_t)dims[1] : 1;
    int64_t total = (int64_t)dims[0] * file_cols;
    if (file_cols != cols && !(nd == 1 && cols == 1))
        die("checkpoint file %s: /%s/%s has %lld columns, expected %lld", path, group, name, (long long)file_cols,
            (long long)cols);
    if (row0 < 0 || (row0 + nrows) * cols > total)
        die("checkpoint file %s: /%s/%s has %lld elements, rows [%lld, %lld) of %lld asked", path, group, name,
            (long long)total, (long long)row0, (long long)(row0 + nrows), (long long)cols);
    hsize_t start[2] = {(hsize_t)row0, 0}, count[2] = {(hsize_t)nrows, (hsize_t)cols};
    H5_CHECK(H5Sselect_hyperslab(fspace, H5S_SELECT_SET, start, NULL, count, NULL));
    hid_t mspace = H5_CHECK(H5Screate_simple(nd, count, NULL));
    CK_H5(path, H5Dread(d, mem_type, mspace, fspace, H5P_DEFAULT, dst), "cannot read /%s/%s", group, name);
    H5_CHECK(H5Sclose(mspace));
    H5_CHECK(H5Sclose(fspace));
    H5_CHECK(H5Dclose(d));
}

int64_t ckpt_h5_attr_i64(const CkptStageIndex *ix, int f, const char *attr) {
    return attr_read_i64(ix->paths[f], ix->fids[f], attr);
}
