// Token shards in HDF5: writer and validating reader. The format is specified in data/FORMAT.md ("Token shards").
//
// Layout choices and why:
// - /tokens is chunked (SHARD_CHUNK tokens per chunk) with the Fletcher32 checksum filter and no compression. The
//   loader reads documents in a shuffled order, i.e. at random places in the file; compression would cost a whole
//   chunk's inflate per document, while the checksum turns a flipped bit on disk into a clear error instead of a
//   silently wrong token. Chunks are small (4096 tokens, 16 KiB) because every partial read verifies a whole chunk:
//   measured with shuffled 1..2047-token documents (data/bench_loader_main.c), 16 KiB chunks deliver ~60 M tokens/s
//   per core against ~8 M with 256 KiB chunks, while sequential reads stay at ~140 M tokens/s.
// - Files use the HDF5 1.10 format (superblock v3, object header v2, extensible-array chunk index): all metadata
//   carries checksums too, and a truncated file is refused by H5Fopen (stored end-of-file beyond the real one).
// - HDF5's automatic error-stack printing is switched off (per thread: the library is built thread-safe and the
//   loader reads from a background thread); failures are reported by our own messages that name the shard file and
//   what was expected, with the innermost HDF5 error text appended.
#include "data/shard.h"
#include "train/check.h"

#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <libgen.h>
#include <stdarg.h>
#include <string.h>
#include <unistd.h>

#define SHARD_CHUNK ((hsize_t)1 << 12)      // tokens per chunk of /tokens (16 KiB)
#define SHARD_OFFSETS_CHUNK ((hsize_t)1 << 16)

// ---------------------------------------------------------------------------------------------------------------
// Error handling

static void shard_quiet_hdf5(void) {
    static _Thread_local int quiet;
    if (!quiet) {
        H5_CHECK(H5Eset_auto2(H5E_DEFAULT, NULL, NULL));
        quiet = 1;
    }
}

static herr_t innermost_error(unsigned n, const H5E_error2_t *e, void *data) {
    if (n == 0) snprintf((char *)data, 256, "%s (in %s)", e->desc ? e->desc : "?", e->func_name ? e->func_name : "?");
    return 0;
}

// The innermost message on this thread's HDF5 error stack, e.g. "truncated file: eof = ...".
static const char *hdf5_error_text(void) {
    static _Thread_local char buf[256];
    strcpy(buf, "no HDF5 error detail");
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, innermost_error, buf);
    return buf;
}

__attribute__((noreturn, format(printf, 2, 3))) static void shard_die(const char *path, const char *fmt, ...) {
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    die("shard %s: %s", path, msg);
}

// H5_CHECK for calls whose failure depends on the file's contents: names the shard file and what it expected.
#define SH_CHECK(path, call, ...) ({ __typeof__(call) r_ = (call); if (r_ < 0) { \
    char what_[512]; snprintf(what_, sizeof what_, __VA_ARGS__); \
    shard_die(path, "%s (HDF5: %s) [%s at %s:%d]", what_, hdf5_error_text(), #call, __FILE__, __LINE__); } r_; })

// File access properties: HDF5 1.10 format for both bounds, so metadata is checksummed and readers >= 1.10 work.
static hid_t shard_fapl(void) {
    hid_t fapl = H5_CHECK(H5Pcreate(H5P_FILE_ACCESS));
    H5_CHECK(H5Pset_libver_bounds(fapl, H5F_LIBVER_V110, H5F_LIBVER_V110));
    return fapl;
}

// ---------------------------------------------------------------------------------------------------------------
// Writer

struct ShardWriter {
    char path[1024], tmp[1040];
    char tokenizer[256];
    uint32_t vocab_size, eos_id;
    hid_t file, tokens;            // tokens < 0 until the first flush creates the dataset
    uint32_t *buf;                 // [SHARD_CHUNK] tokens not yet written
    size_t buf_n;
    uint64_t n_written;            // tokens already in the dataset
    uint64_t *offsets;             // [n_docs + 1]
    size_t n_docs, cap_docs;
};

// Removes the partial file, then dies: nothing half-written stays on disk, not even under the .tmp name.
__attribute__((noreturn, format(printf, 2, 3))) static void writer_fail(ShardWriter *w, const char *fmt, ...) {
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (w->tokens >= 0) H5Dclose(w->tokens);
    if (w->file >= 0) H5Fclose(w->file);
    unlink(w->tmp);
    die("shard writer %s: %s", w->path, msg);
}

ShardWriter *shard_writer_open(const char *path, const char *tokenizer, uint32_t vocab_size, uint32_t eos_id) {
    shard_quiet_hdf5();
    CHECK(strlen(path) < 1024, "shard writer: path too long (%zu chars, at most 1023): %s", strlen(path), path);
    CHECK(tokenizer && strlen(tokenizer) > 0 && strlen(tokenizer) < 256,
          "shard writer %s: tokenizer name must have 1..255 characters", path);
    CHECK(vocab_size > 0, "shard writer %s: vocab_size must be > 0", path);
    CHECK(eos_id < vocab_size, "shard writer %s: eos_id %u must be < vocab_size %u", path, eos_id, vocab_size);
    ShardWriter *w = xcalloc(1, sizeof *w);
    snprintf(w->path, sizeof w->path, "%s", path);
    snprintf(w->tmp, sizeof w->tmp, "%s.tmp", path);
    snprintf(w->tokenizer, sizeof w->tokenizer, "%s", tokenizer);
    w->vocab_size = vocab_size;
    w->eos_id = eos_id;
    w->tokens = -1;
    hid_t fapl = shard_fapl();
    w->file = H5Fcreate(w->tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    if (w->file < 0)
        die("shard writer %s: cannot create %s (HDF5: %s); expected a writable directory", path, w->tmp,
            hdf5_error_text());
    H5_CHECK(H5Pclose(fapl));
    w->buf = xmalloc(SHARD_CHUNK * sizeof(uint32_t));
    w->cap_docs = 1024;
    w->offsets = xmalloc(w->cap_docs * sizeof(uint64_t));
    w->offsets[0] = 0;
    return w;
}

// Creates a 1-D extendible, chunked, checksummed dataset of `type`. `chunk` is capped by the caller for small data
// so that a tiny shard does not occupy a whole 256 KiB chunk on disk.
static hid_t writer_create_dataset(ShardWriter *w, const char *name, hid_t type, hsize_t chunk) {
    hsize_t dims[1] = {0}, maxdims[1] = {H5S_UNLIMITED};
    hid_t space = H5_CHECK(H5Screate_simple(1, dims, maxdims));
    hid_t dcpl = H5_CHECK(H5Pcreate(H5P_DATASET_CREATE));
    H5_CHECK(H5Pset_chunk(dcpl, 1, &chunk));
    H5_CHECK(H5Pset_fletcher32(dcpl));
    hid_t d = H5Dcreate2(w->file, name, type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    if (d < 0) writer_fail(w, "cannot create dataset %s (HDF5: %s)", name, hdf5_error_text());
    H5_CHECK(H5Pclose(dcpl));
    H5_CHECK(H5Sclose(space));
    return d;
}

// Appends n elements (native type `mem_type`) at element offset `at` of 1-D dataset d.
static void writer_append(ShardWriter *w, hid_t d, hid_t mem_type, const void *data, uint64_t at, size_t n) {
    hsize_t new_size[1] = {at + n}, start[1] = {at}, count[1] = {n};
    if (H5Dset_extent(d, new_size) < 0) writer_fail(w, "cannot extend a dataset (HDF5: %s)", hdf5_error_text());
    hid_t fspace = H5_CHECK(H5Dget_space(d));
    H5_CHECK(H5Sselect_hyperslab(fspace, H5S_SELECT_SET, start, NULL, count, NULL));
    hid_t mspace = H5_CHECK(H5Screate_simple(1, count, NULL));
    if (H5Dwrite(d, mem_type, mspace, fspace, H5P_DEFAULT, data) < 0)
        writer_fail(w, "writing %zu elements at %llu failed (HDF5: %s); disk full?", n, (unsigned long long)at,
                    hdf5_error_text());
    H5_CHECK(H5Sclose(mspace));
    H5_CHECK(H5Sclose(fspace));
}

static void writer_flush(ShardWriter *w) {
    if (w->buf_n == 0) return;
    if (w->tokens < 0)   // first flush: a full buffer means a big shard; otherwise the whole shard is this buffer
        w->tokens = writer_create_dataset(w, "tokens", H5T_STD_U32LE, w->buf_n == SHARD_CHUNK ? SHARD_CHUNK : w->buf_n);
    writer_append(w, w->tokens, H5T_NATIVE_UINT32, w->buf, w->n_written, w->buf_n);
    w->n_written += w->buf_n;
    w->buf_n = 0;
}

void shard_writer_add_doc(ShardWriter *w, const uint32_t *tokens, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (tokens[i] >= w->vocab_size)
            writer_fail(w, "document %zu: token %zu has id %u, expected < vocab_size %u", w->n_docs, i, tokens[i],
                        w->vocab_size);
    for (size_t i = 0; i < n;) {
        size_t take = SHARD_CHUNK - w->buf_n < n - i ? SHARD_CHUNK - w->buf_n : n - i;
        memcpy(w->buf + w->buf_n, tokens + i, take * sizeof(uint32_t));
        w->buf_n += take;
        i += take;
        if (w->buf_n == SHARD_CHUNK) writer_flush(w);
    }
    if (w->n_docs + 2 > w->cap_docs) {
        w->cap_docs *= 2;
        w->offsets = xrealloc(w->offsets, w->cap_docs * sizeof(uint64_t));
    }
    w->n_docs++;
    w->offsets[w->n_docs] = w->offsets[w->n_docs - 1] + n;
}

uint64_t shard_writer_tokens(const ShardWriter *w) { return w->offsets[w->n_docs]; }

static void writer_attr(ShardWriter *w, const char *name, hid_t file_type, hid_t mem_type, const void *value) {
    hid_t space = H5_CHECK(H5Screate(H5S_SCALAR));
    hid_t a = H5Acreate2(w->file, name, file_type, space, H5P_DEFAULT, H5P_DEFAULT);
    if (a < 0 || H5Awrite(a, mem_type, value) < 0)
        writer_fail(w, "cannot write attribute %s (HDF5: %s)", name, hdf5_error_text());
    H5_CHECK(H5Aclose(a));
    H5_CHECK(H5Sclose(space));
}

// fsync a file or directory by path; durability of the shard and of its rename.
static void fsync_path(ShardWriter *w, const char *p, int flags) {
    int fd = open(p, flags);
    if (fd < 0) writer_fail(w, "cannot open %s for fsync: %s", p, strerror(errno));
    if (fsync(fd) != 0) { int e = errno; close(fd); writer_fail(w, "fsync %s: %s", p, strerror(e)); }
    close(fd);
}

void shard_writer_close(ShardWriter *w) {
    if (w->n_docs == 0) writer_fail(w, "no documents were added; a shard holds at least one document");
    if (shard_writer_tokens(w) == 0) writer_fail(w, "all %zu documents are empty; a shard holds at least one token",
                                                 w->n_docs);
    writer_flush(w);
    hsize_t oc = w->n_docs + 1 < SHARD_OFFSETS_CHUNK ? w->n_docs + 1 : SHARD_OFFSETS_CHUNK;
    hid_t offs = writer_create_dataset(w, "doc_offsets", H5T_STD_U64LE, oc);
    writer_append(w, offs, H5T_NATIVE_UINT64, w->offsets, 0, w->n_docs + 1);
    H5_CHECK(H5Dclose(offs));
    H5_CHECK(H5Dclose(w->tokens));
    w->tokens = -1;

    int version = SHARD_FORMAT_VERSION;
    writer_attr(w, "format_version", H5T_STD_I32LE, H5T_NATIVE_INT, &version);
    writer_attr(w, "vocab_size", H5T_STD_U32LE, H5T_NATIVE_UINT32, &w->vocab_size);
    writer_attr(w, "eos_id", H5T_STD_U32LE, H5T_NATIVE_UINT32, &w->eos_id);
    hid_t str = H5_CHECK(H5Tcopy(H5T_C_S1));
    H5_CHECK(H5Tset_size(str, strlen(w->tokenizer) + 1));
    H5_CHECK(H5Tset_strpad(str, H5T_STR_NULLTERM));
    writer_attr(w, "tokenizer", str, str, w->tokenizer);
    H5_CHECK(H5Tclose(str));

    if (H5Fclose(w->file) < 0) { w->file = -1; writer_fail(w, "closing failed (HDF5: %s)", hdf5_error_text()); }
    w->file = -1;
    fsync_path(w, w->tmp, O_RDONLY);
    if (rename(w->tmp, w->path) != 0) writer_fail(w, "rename from %s: %s", w->tmp, strerror(errno));
    char dir[1040];
    snprintf(dir, sizeof dir, "%s", w->path);
    fsync_path(w, dirname(dir), O_RDONLY | O_DIRECTORY);
    free(w->buf);
    free(w->offsets);
    free(w);
}

// ---------------------------------------------------------------------------------------------------------------
// Reader

// Opens /name and checks it is a 1-D dataset of unsigned integers of `size` bytes; returns it and its length.
static hid_t open_vector(Shard *s, const char *name, size_t size, uint64_t *len) {
    htri_t ok = SH_CHECK(s->path, H5Lexists(s->file, name, H5P_DEFAULT), "cannot look up dataset /%s", name);
    if (!ok) shard_die(s->path, "dataset /%s is missing; expected a token shard (see data/FORMAT.md)", name);
    hid_t d = SH_CHECK(s->path, H5Dopen2(s->file, name, H5P_DEFAULT), "cannot open dataset /%s", name);
    hid_t t = H5_CHECK(H5Dget_type(d));
    if (H5Tget_class(t) != H5T_INTEGER || H5Tget_sign(t) != H5T_SGN_NONE || H5Tget_size(t) != size)
        shard_die(s->path, "dataset /%s has the wrong type; expected unsigned %zu-bit integers", name, 8 * size);
    H5_CHECK(H5Tclose(t));
    hid_t space = H5_CHECK(H5Dget_space(d));
    hsize_t dims[1];
    if (H5Sget_simple_extent_ndims(space) != 1)
        shard_die(s->path, "dataset /%s must be 1-dimensional", name);
    H5_CHECK(H5Sget_simple_extent_dims(space, dims, NULL));
    H5_CHECK(H5Sclose(space));
    *len = dims[0];
    return d;
}

// Reads a scalar attribute of the root group, converting to mem_type (HDF5 rejects unconvertible types).
static void read_attr(Shard *s, const char *name, hid_t mem_type, void *out) {
    htri_t ok = SH_CHECK(s->path, H5Aexists(s->file, name), "cannot look up attribute %s", name);
    if (!ok) shard_die(s->path, "attribute %s is missing; expected a token shard (see data/FORMAT.md)", name);
    hid_t a = SH_CHECK(s->path, H5Aopen(s->file, name, H5P_DEFAULT), "cannot open attribute %s", name);
    SH_CHECK(s->path, H5Aread(a, mem_type, out), "cannot read attribute %s as the expected type", name);
    H5_CHECK(H5Aclose(a));
}

// The tokenizer name may be stored as a fixed-length string (our writer) or a variable-length one (h5py's default
// for `f.attrs["tokenizer"] = "byte"`), in ASCII or UTF-8: read whichever the file has.
static void read_tokenizer_attr(Shard *s) {
    htri_t ok = SH_CHECK(s->path, H5Aexists(s->file, "tokenizer"), "cannot look up attribute tokenizer");
    if (!ok) shard_die(s->path, "attribute tokenizer is missing; expected a token shard (see data/FORMAT.md)");
    hid_t a = SH_CHECK(s->path, H5Aopen(s->file, "tokenizer", H5P_DEFAULT), "cannot open attribute tokenizer");
    hid_t t = H5_CHECK(H5Aget_type(a));
    if (H5Tget_class(t) != H5T_STRING) shard_die(s->path, "attribute tokenizer must be a string");
    hid_t str = H5_CHECK(H5Tcopy(H5T_C_S1));
    H5_CHECK(H5Tset_cset(str, H5Tget_cset(t)));
    if (H5_CHECK(H5Tis_variable_str(t))) {
        char *v = NULL;
        H5_CHECK(H5Tset_size(str, H5T_VARIABLE));
        SH_CHECK(s->path, H5Aread(a, str, &v), "cannot read attribute tokenizer as a string");
        snprintf(s->tokenizer, sizeof s->tokenizer, "%s", v ? v : "");
        H5_CHECK(H5free_memory(v));
    } else {
        H5_CHECK(H5Tset_size(str, sizeof s->tokenizer));
        H5_CHECK(H5Tset_strpad(str, H5T_STR_NULLTERM));
        SH_CHECK(s->path, H5Aread(a, str, s->tokenizer), "cannot read attribute tokenizer as a string");
    }
    s->tokenizer[sizeof s->tokenizer - 1] = 0;
    H5_CHECK(H5Tclose(t));
    H5_CHECK(H5Aclose(a));
    H5_CHECK(H5Tclose(str));
}

// Opens the file and the tokens dataset. A reopen (of a released shard) skips the checks that cost extra file opens.
static void shard_open_file(Shard *s, int reopen) {
    if (!reopen && access(s->path, R_OK) != 0) shard_die(s->path, "cannot read the file: %s", strerror(errno));
    if (!reopen && H5Fis_hdf5(s->path) <= 0)
        shard_die(s->path, "not an HDF5 file (no HDF5 signature found; empty, truncated at the start or corrupt)");
    hid_t fapl = shard_fapl();
    s->file = H5Fopen(s->path, H5F_ACC_RDONLY, fapl);
    if (s->file < 0)   // (report before any other HDF5 call resets the error stack)
        shard_die(s->path, "cannot open as HDF5 (HDF5: %s); the file is truncated or corrupt", hdf5_error_text());
    H5_CHECK(H5Pclose(fapl));
    uint64_t n;
    // HDF5's default chunk cache (1 MiB) holds 4 chunks: consecutive reads inside one chunk verify it once.
    s->tokens = open_vector(s, "tokens", 4, &n);
    (void)n;
}

void shard_open(Shard *s, const char *path) {
    shard_quiet_hdf5();
    memset(s, 0, sizeof *s);
    s->file = s->tokens = -1;
    if (strlen(path) >= sizeof s->path) die("shard %s: path too long (at most %zu chars)", path, sizeof s->path - 1);
    snprintf(s->path, sizeof s->path, "%s", path);
    shard_open_file(s, 0);
    uint64_t n_off;
    hid_t offs = open_vector(s, "doc_offsets", 8, &n_off);
    hid_t ts = H5_CHECK(H5Dget_space(s->tokens));
    hsize_t nt;
    H5_CHECK(H5Sget_simple_extent_dims(ts, &nt, NULL));
    H5_CHECK(H5Sclose(ts));
    s->n_tokens = nt;

    read_attr(s, "format_version", H5T_NATIVE_INT, &s->format_version);
    if (s->format_version != SHARD_FORMAT_VERSION)
        shard_die(s->path, "format_version is %d, expected %d (written by a different version of the shard writer)",
                  s->format_version, SHARD_FORMAT_VERSION);
    read_attr(s, "vocab_size", H5T_NATIVE_UINT32, &s->vocab_size);
    read_attr(s, "eos_id", H5T_NATIVE_UINT32, &s->eos_id);
    read_tokenizer_attr(s);
    if (s->vocab_size == 0) shard_die(s->path, "vocab_size is 0, expected > 0");
    if (s->eos_id >= s->vocab_size)
        shard_die(s->path, "eos_id %u is not below vocab_size %u", s->eos_id, s->vocab_size);

    if (n_off < 2) shard_die(s->path, "holds no documents (/doc_offsets has %llu entries, expected >= 2)",
                             (unsigned long long)n_off);
    s->n_docs = n_off - 1;
    s->doc_offsets = xmalloc(n_off * sizeof(uint64_t));
    SH_CHECK(s->path, H5Dread(offs, H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, s->doc_offsets),
             "cannot read /doc_offsets; the file is corrupt");
    H5_CHECK(H5Dclose(offs));
    if (s->doc_offsets[0] != 0)
        shard_die(s->path, "doc_offsets[0] is %llu, expected 0", (unsigned long long)s->doc_offsets[0]);
    for (uint64_t d = 0; d < s->n_docs; d++)
        if (s->doc_offsets[d + 1] < s->doc_offsets[d])
            shard_die(s->path, "doc_offsets is not monotone: doc_offsets[%llu] = %llu < doc_offsets[%llu] = %llu",
                      (unsigned long long)d + 1, (unsigned long long)s->doc_offsets[d + 1], (unsigned long long)d,
                      (unsigned long long)s->doc_offsets[d]);
    if (s->doc_offsets[s->n_docs] != s->n_tokens)
        shard_die(s->path, "doc_offsets ends at %llu, expected n_tokens = %llu",
                  (unsigned long long)s->doc_offsets[s->n_docs], (unsigned long long)s->n_tokens);
    if (s->n_tokens == 0) shard_die(s->path, "holds no tokens (%llu empty document(s))", (unsigned long long)s->n_docs);
}

void shard_read_tokens(Shard *s, uint64_t start, uint64_t count, uint32_t *out) {
    shard_quiet_hdf5();
    if (start > s->n_tokens || count > s->n_tokens - start)
        shard_die(s->path, "read of tokens [%llu, %llu) is outside the shard's %llu tokens",
                  (unsigned long long)start, (unsigned long long)(start + count), (unsigned long long)s->n_tokens);
    if (count == 0) return;
    if (s->file < 0) {     // released by shard_release_file: reopen and check it is the same shard
        uint64_t before = s->n_tokens;
        shard_open_file(s, 1);
        hid_t ts = H5_CHECK(H5Dget_space(s->tokens));
        hsize_t nt;
        H5_CHECK(H5Sget_simple_extent_dims(ts, &nt, NULL));
        H5_CHECK(H5Sclose(ts));
        if (nt != before)
            shard_die(s->path, "changed on disk while in use: now %llu tokens, expected %llu",
                      (unsigned long long)nt, (unsigned long long)before);
    }
    hsize_t st[1] = {start}, cn[1] = {count};
    hid_t fspace = H5_CHECK(H5Dget_space(s->tokens));
    H5_CHECK(H5Sselect_hyperslab(fspace, H5S_SELECT_SET, st, NULL, cn, NULL));
    hid_t mspace = H5_CHECK(H5Screate_simple(1, cn, NULL));
    SH_CHECK(s->path, H5Dread(s->tokens, H5T_NATIVE_UINT32, mspace, fspace, H5P_DEFAULT, out),
             "reading tokens [%llu, %llu) failed; the file is corrupt", (unsigned long long)start,
             (unsigned long long)(start + count));
    H5_CHECK(H5Sclose(mspace));
    H5_CHECK(H5Sclose(fspace));
    uint32_t bad = 0;
    for (uint64_t i = 0; i < count; i++) bad |= out[i] >= s->vocab_size;   // branch-free pass, then locate
    if (bad)
        for (uint64_t i = 0; i < count; i++)
            if (out[i] >= s->vocab_size)
                shard_die(s->path, "token at offset %llu has id %u, expected < vocab_size %u",
                          (unsigned long long)(start + i), out[i], s->vocab_size);
}

void shard_release_file(Shard *s) {
    if (s->tokens >= 0) H5_CHECK(H5Dclose(s->tokens));
    if (s->file >= 0) H5_CHECK(H5Fclose(s->file));
    s->tokens = s->file = -1;
}

void shard_close(Shard *s) {
    shard_release_file(s);
    free(s->doc_offsets);
    s->doc_offsets = NULL;
}
