// Token shards in HDF5 (see shard.h). The writer appends tokens in chunk-sized blocks to an extendible chunked
// dataset (shuffle + deflate when the library has them: byte-level ids compress like the text itself), keeps the
// document offsets in memory (8 bytes per document) and writes them at close.
#include "data/shard.h"
#include "train/check.h"

#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define SHARD_CHUNK 65536   // tokens per HDF5 chunk (256 KiB)

struct ShardWriter {
    char path[1024], tmp[1100];
    hid_t file, tokens;
    uint32_t *buf;               // [SHARD_CHUNK] tokens not yet written
    size_t n_buf;
    uint64_t n_written, n_tokens;
    uint64_t *offsets;           // [n_docs + 1]
    size_t n_docs, cap_docs;
};

static hid_t chunked_dcpl(hsize_t chunk) {
    hid_t dcpl = H5_CHECK(H5Pcreate(H5P_DATASET_CREATE));
    H5_CHECK(H5Pset_chunk(dcpl, 1, &chunk));
    if (H5Zfilter_avail(H5Z_FILTER_DEFLATE) > 0) {
        H5_CHECK(H5Pset_shuffle(dcpl));
        H5_CHECK(H5Pset_deflate(dcpl, 4));
    }
    return dcpl;
}

static void write_attr(hid_t loc, const char *name, hid_t type, const void *value) {
    hid_t space = H5_CHECK(H5Screate(H5S_SCALAR));
    hid_t a = H5_CHECK(H5Acreate2(loc, name, type, space, H5P_DEFAULT, H5P_DEFAULT));
    H5_CHECK(H5Awrite(a, type, value));
    H5_CHECK(H5Aclose(a));
    H5_CHECK(H5Sclose(space));
}

ShardWriter *shard_writer_open(const char *path, const char *tokenizer, uint32_t vocab_size, uint32_t eos_id) {
    ShardWriter *w = xcalloc(1, sizeof *w);
    CHECK(strlen(path) < sizeof w->path, "shard path too long: %s", path);
    snprintf(w->path, sizeof w->path, "%s", path);
    snprintf(w->tmp, sizeof w->tmp, "%s.tmp", path);
    w->file = H5_CHECK(H5Fcreate(w->tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT));
    hsize_t dims = 0, maxdims = H5S_UNLIMITED;
    hid_t space = H5_CHECK(H5Screate_simple(1, &dims, &maxdims));
    hid_t dcpl = chunked_dcpl(SHARD_CHUNK);
    w->tokens = H5_CHECK(H5Dcreate2(w->file, "tokens", H5T_STD_U32LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT));
    H5_CHECK(H5Pclose(dcpl));
    H5_CHECK(H5Sclose(space));

    int version = SHARD_FORMAT_VERSION;
    write_attr(w->file, "format_version", H5T_NATIVE_INT, &version);
    write_attr(w->file, "vocab_size", H5T_NATIVE_UINT32, &vocab_size);
    write_attr(w->file, "eos_id", H5T_NATIVE_UINT32, &eos_id);
    hid_t str = H5_CHECK(H5Tcopy(H5T_C_S1));
    H5_CHECK(H5Tset_size(str, H5T_VARIABLE));
    write_attr(w->file, "tokenizer", str, &tokenizer);
    H5_CHECK(H5Tclose(str));

    w->buf = xmalloc(SHARD_CHUNK * sizeof *w->buf);
    w->cap_docs = 1024;
    w->offsets = xmalloc(w->cap_docs * sizeof *w->offsets);
    w->offsets[0] = 0;
    return w;
}

static void flush_tokens(ShardWriter *w) {
    if (!w->n_buf) return;
    hsize_t start = w->n_written, count = w->n_buf, size = w->n_written + w->n_buf;
    H5_CHECK(H5Dset_extent(w->tokens, &size));
    hid_t fspace = H5_CHECK(H5Dget_space(w->tokens));
    H5_CHECK(H5Sselect_hyperslab(fspace, H5S_SELECT_SET, &start, NULL, &count, NULL));
    hid_t mspace = H5_CHECK(H5Screate_simple(1, &count, NULL));
    H5_CHECK(H5Dwrite(w->tokens, H5T_NATIVE_UINT32, mspace, fspace, H5P_DEFAULT, w->buf));
    H5_CHECK(H5Sclose(mspace));
    H5_CHECK(H5Sclose(fspace));
    w->n_written += w->n_buf;
    w->n_buf = 0;
}

void shard_writer_add_doc(ShardWriter *w, const uint32_t *tokens, size_t n) {
    while (n) {
        size_t k = SHARD_CHUNK - w->n_buf < n ? SHARD_CHUNK - w->n_buf : n;
        memcpy(w->buf + w->n_buf, tokens, k * sizeof *tokens);
        w->n_buf += k;
        tokens += k;
        n -= k;
        w->n_tokens += k;
        if (w->n_buf == SHARD_CHUNK) flush_tokens(w);
    }
    if (w->n_docs + 2 > w->cap_docs) {
        w->cap_docs *= 2;
        w->offsets = xrealloc(w->offsets, w->cap_docs * sizeof *w->offsets);
    }
    w->offsets[++w->n_docs] = w->n_tokens;
}

uint64_t shard_writer_tokens(const ShardWriter *w) { return w->n_tokens; }

static void fsync_path(const char *path, int directory) {
    int fd = open(path, directory ? O_RDONLY | O_DIRECTORY : O_RDONLY);
    CHECK(fd >= 0, "%s: cannot open for fsync: %s", path, strerror(errno));
    CHECK(fsync(fd) == 0, "%s: fsync failed: %s", path, strerror(errno));
    close(fd);
}

void shard_writer_close(ShardWriter *w) {
    flush_tokens(w);
    hsize_t n = w->n_docs + 1;
    hid_t space = H5_CHECK(H5Screate_simple(1, &n, NULL));
    hid_t dcpl = chunked_dcpl(n < 65536 ? n : 65536);
    hid_t d = H5_CHECK(H5Dcreate2(w->file, "doc_offsets", H5T_STD_U64LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT));
    H5_CHECK(H5Dwrite(d, H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, w->offsets));
    H5_CHECK(H5Dclose(d));
    H5_CHECK(H5Pclose(dcpl));
    H5_CHECK(H5Sclose(space));
    H5_CHECK(H5Dclose(w->tokens));
    H5_CHECK(H5Fclose(w->file));
    // A shard under its final name is complete: data on disk first, then the rename, then the directory entry.
    fsync_path(w->tmp, 0);
    CHECK(rename(w->tmp, w->path) == 0, "rename %s -> %s failed: %s", w->tmp, w->path, strerror(errno));
    char dir[1024];
    snprintf(dir, sizeof dir, "%s", w->path);
    char *slash = strrchr(dir, '/');
    if (slash) *(slash == dir ? slash + 1 : slash) = 0; else snprintf(dir, sizeof dir, ".");
    fsync_path(dir, 1);
    free(w->buf);
    free(w->offsets);
    free(w);
}

// ---- reading --------------------------------------------------------------------------------------------------

static int attr_exists(hid_t loc, const char *name) { return H5_CHECK(H5Aexists(loc, name)) > 0; }

static uint64_t read_attr_u64(const Shard *s, const char *name) {
    CHECK(attr_exists(s->file, name), "%s: missing root attribute \"%s\"", s->path, name);
    hid_t a = H5_CHECK(H5Aopen(s->file, name, H5P_DEFAULT));
    hid_t t = H5_CHECK(H5Aget_type(a));
    CHECK(H5_CHECK(H5Tget_class(t)) == H5T_INTEGER, "%s: attribute \"%s\" must be an integer", s->path, name);
    int64_t v = 0;
    H5_CHECK(H5Aread(a, H5T_NATIVE_INT64, &v));
    H5_CHECK(H5Tclose(t));
    H5_CHECK(H5Aclose(a));
    CHECK(v >= 0, "%s: attribute \"%s\" is negative (%lld)", s->path, name, (long long)v);
    return (uint64_t)v;
}

static void read_attr_string(Shard *s, const char *name, char *out, size_t size) {
    CHECK(attr_exists(s->file, name), "%s: missing root attribute \"%s\"", s->path, name);
    hid_t a = H5_CHECK(H5Aopen(s->file, name, H5P_DEFAULT));
    hid_t t = H5_CHECK(H5Aget_type(a));
    CHECK(H5_CHECK(H5Tget_class(t)) == H5T_STRING, "%s: attribute \"%s\" must be a string", s->path, name);
    hid_t mem = H5_CHECK(H5Tcopy(H5T_C_S1));
    H5_CHECK(H5Tset_cset(mem, H5_CHECK(H5Tget_cset(t))));   // HDF5 does not convert between ASCII and UTF-8
    if (H5_CHECK(H5Tis_variable_str(t)) > 0) {
        H5_CHECK(H5Tset_size(mem, H5T_VARIABLE));
        char *v = NULL;
        H5_CHECK(H5Aread(a, mem, &v));
        snprintf(out, size, "%s", v ? v : "");
        hid_t space = H5_CHECK(H5Aget_space(a));
        H5_CHECK(H5Dvlen_reclaim(mem, space, H5P_DEFAULT, &v));
        H5_CHECK(H5Sclose(space));
    } else {
        size_t n = H5Tget_size(t);
        char *v = xcalloc(n + 1, 1);
        H5_CHECK(H5Tset_size(mem, n + 1));
        H5_CHECK(H5Aread(a, mem, v));
        snprintf(out, size, "%s", v);
        free(v);
    }
    H5_CHECK(H5Tclose(mem));
    H5_CHECK(H5Tclose(t));
    H5_CHECK(H5Aclose(a));
}

static hsize_t dataset_len(const Shard *s, hid_t d, const char *name) {
    hid_t space = H5_CHECK(H5Dget_space(d));
    CHECK(H5_CHECK(H5Sget_simple_extent_ndims(space)) == 1, "%s: /%s must be 1-D", s->path, name);
    hsize_t n;
    H5_CHECK(H5Sget_simple_extent_dims(space, &n, NULL));
    H5_CHECK(H5Sclose(space));
    return n;
}

void shard_open(Shard *s, const char *path) {
    memset(s, 0, sizeof *s);
    CHECK(strlen(path) < sizeof s->path, "shard path too long: %s", path);
    snprintf(s->path, sizeof s->path, "%s", path);
    CHECK(access(path, R_OK) == 0, "%s: cannot read shard: %s", path, strerror(errno));
#if H5_VERSION_GE(1, 12, 0)
    CHECK(H5Fis_accessible(path, H5P_DEFAULT) > 0, "%s: not an HDF5 file", path);
#else
    CHECK(H5Fis_hdf5(path) > 0, "%s: not an HDF5 file", path);
#endif
    s->file = H5_CHECK(H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT));
    CHECK(H5_CHECK(H5Lexists(s->file, "tokens", H5P_DEFAULT)) > 0, "%s: no /tokens dataset", path);
    CHECK(H5_CHECK(H5Lexists(s->file, "doc_offsets", H5P_DEFAULT)) > 0, "%s: no /doc_offsets dataset", path);
    s->format_version = (int)read_attr_u64(s, "format_version");
    CHECK(s->format_version == SHARD_FORMAT_VERSION, "%s: format_version %d, this build reads %d", path,
          s->format_version, SHARD_FORMAT_VERSION);
    uint64_t vocab = read_attr_u64(s, "vocab_size"), eos = read_attr_u64(s, "eos_id");
    CHECK(vocab > 0 && vocab <= UINT32_MAX && eos < vocab, "%s: vocab_size %llu / eos_id %llu out of range", path,
          (unsigned long long)vocab, (unsigned long long)eos);
    s->vocab_size = (uint32_t)vocab;
    s->eos_id = (uint32_t)eos;
    read_attr_string(s, "tokenizer", s->tokenizer, sizeof s->tokenizer);
    s->tokens = H5_CHECK(H5Dopen2(s->file, "tokens", H5P_DEFAULT));
    s->n_tokens = dataset_len(s, s->tokens, "tokens");
    hid_t d = H5_CHECK(H5Dopen2(s->file, "doc_offsets", H5P_DEFAULT));
    hsize_t n_off = dataset_len(s, d, "doc_offsets");
    CHECK(n_off >= 2, "%s: /doc_offsets has %llu entries: a shard needs at least one document", path,
          (unsigned long long)n_off);
    s->n_docs = n_off - 1;
    s->doc_offsets = xmalloc(n_off * sizeof *s->doc_offsets);
    H5_CHECK(H5Dread(d, H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, s->doc_offsets));
    H5_CHECK(H5Dclose(d));
    CHECK(s->doc_offsets[0] == 0, "%s: doc_offsets[0] = %llu, expected 0", path, (unsigned long long)s->doc_offsets[0]);
    for (uint64_t i = 0; i < s->n_docs; i++)
        CHECK(s->doc_offsets[i + 1] >= s->doc_offsets[i], "%s: doc_offsets not monotone at %llu", path,
              (unsigned long long)i);
    CHECK(s->doc_offsets[s->n_docs] == s->n_tokens, "%s: doc_offsets ends at %llu but /tokens has %llu tokens", path,
          (unsigned long long)s->doc_offsets[s->n_docs], (unsigned long long)s->n_tokens);
}

void shard_read_tokens(Shard *s, uint64_t start, uint64_t count, uint32_t *out) {
    CHECK(start + count <= s->n_tokens && start + count >= start, "%s: read of [%llu, %llu) past %llu tokens", s->path,
          (unsigned long long)start, (unsigned long long)(start + count), (unsigned long long)s->n_tokens);
    if (!count) return;
    hsize_t st = start, cn = count;
    hid_t fspace = H5_CHECK(H5Dget_space(s->tokens));
    H5_CHECK(H5Sselect_hyperslab(fspace, H5S_SELECT_SET, &st, NULL, &cn, NULL));
    hid_t mspace = H5_CHECK(H5Screate_simple(1, &cn, NULL));
    H5_CHECK(H5Dread(s->tokens, H5T_NATIVE_UINT32, mspace, fspace, H5P_DEFAULT, out));
    H5_CHECK(H5Sclose(mspace));
    H5_CHECK(H5Sclose(fspace));
    for (uint64_t i = 0; i < count; i++)
        CHECK(out[i] < s->vocab_size, "%s: token %u at offset %llu is outside the vocabulary (size %u)", s->path,
              out[i], (unsigned long long)(start + i), s->vocab_size);
}

void shard_close(Shard *s) {
    if (s->tokens) H5_CHECK(H5Dclose(s->tokens));
    if (s->file) H5_CHECK(H5Fclose(s->file));
    free(s->doc_offsets);
    memset(s, 0, sizeof *s);
}
