// Token shards: round trip, atomic writing, and every kind of bad file the reader must refuse (data/shard.c).
#include "tests/test.h"
#include "tests/child_exit.h"
#include "data/shard.h"

#include <hdf5.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *tmp_file(const char *name) {
    static char buf[8][1024];
    static int slot;
    char *b = buf[slot++ % 8];
    snprintf(b, 1024, "%s/%s", test_tmpdir(), name);
    return b;
}

static int file_exists(const char *p) { struct stat st; return stat(p, &st) == 0; }

// A shard of three documents {10..14}, {}, {20, 21, 22} with vocab 100, eos 1.
static const char *write_small(const char *name) {
    const char *p = tmp_file(name);
    ShardWriter *w = shard_writer_open(p, "byte-test", 100, 1);
    uint32_t a[] = {10, 11, 12, 13, 14}, c[] = {20, 21, 22};
    shard_writer_add_doc(w, a, 5);
    shard_writer_add_doc(w, NULL, 0);
    shard_writer_add_doc(w, c, 3);
    ASSERT_EQ_INT(shard_writer_tokens(w), 8);
    shard_writer_close(w);
    return p;
}

TEST(shard_roundtrip_small) {
    const char *p = write_small("s.h5");
    Shard s;
    shard_open(&s, p);
    ASSERT_EQ_INT(s.n_docs, 3);
    ASSERT_EQ_INT(s.n_tokens, 8);
    uint64_t want_off[] = {0, 5, 5, 8};
    for (int i = 0; i < 4; i++) ASSERT_EQ_INT(s.doc_offsets[i], want_off[i]);
    ASSERT_EQ_INT(s.vocab_size, 100);
    ASSERT_EQ_INT(s.eos_id, 1);
    ASSERT_EQ_INT(s.format_version, SHARD_FORMAT_VERSION);
    ASSERT_EQ_STR(s.tokenizer, "byte-test");
    uint32_t out[8];
    shard_read_tokens(&s, 3, 4, out);   // crosses the empty document's boundary
    uint32_t want[] = {13, 14, 20, 21};
    for (int i = 0; i < 4; i++) ASSERT_EQ_INT(out[i], want[i]);
    shard_release_file(&s);             // reopened transparently by the next read
    shard_read_tokens(&s, 0, 8, out);
    uint32_t all[] = {10, 11, 12, 13, 14, 20, 21, 22};
    for (int i = 0; i < 8; i++) ASSERT_EQ_INT(out[i], all[i]);
    shard_close(&s);
}

// Token i of the big shard (a hash, so misplaced chunks cannot go unnoticed).
static uint32_t big_token(uint64_t i) { return (uint32_t)((i * 2654435761u) >> 7) % 50000; }

TEST(shard_roundtrip_multi_chunk) {
    // 300000 tokens = 4.6 chunks of 65536; documents of varied lengths, one longer than a chunk.
    const char *p = tmp_file("big.h5");
    ShardWriter *w = shard_writer_open(p, "t", 50000, 0);
    uint32_t *buf = malloc(300000 * sizeof *buf);
    for (uint64_t i = 0; i < 300000; i++) buf[i] = big_token(i);
    uint64_t lens[] = {1, 70000, 12345, 99999, 3, 117652}, at = 0;
    for (int d = 0; d < 6; d++) { shard_writer_add_doc(w, buf + at, lens[d]); at += lens[d]; }
    ASSERT_EQ_INT(at, 300000);
    shard_writer_close(w);
    Shard s;
    shard_open(&s, p);
    ASSERT_EQ_INT(s.n_tokens, 300000);
    ASSERT_EQ_INT(s.n_docs, 6);
    ASSERT_EQ_INT(s.doc_offsets[3], 1 + 70000 + 12345);
    uint64_t starts[] = {0, 65530, 131071, 299990, 1000}, counts[] = {300000, 20, 65538, 10, 200000};
    uint32_t *out = malloc(300000 * sizeof *out);
    for (int k = 0; k < 5; k++) {
        shard_read_tokens(&s, starts[k], counts[k], out);
        for (uint64_t i = 0; i < counts[k]; i++)
            ASSERT_MSG(out[i] == big_token(starts[k] + i), "token %llu: %u != %u",
                       (unsigned long long)(starts[k] + i), out[i], big_token(starts[k] + i));
    }
    shard_close(&s);
    free(buf);
    free(out);
}

TEST(shard_writer_is_atomic) {
    const char *p = tmp_file("a.h5"), *tmp = tmp_file("a.h5.tmp");
    ShardWriter *w = shard_writer_open(p, "t", 10, 0);
    uint32_t d[] = {1, 2, 3};
    shard_writer_add_doc(w, d, 3);
    ASSERT(!file_exists(p));   // a crash now leaves only the .tmp name
    ASSERT(file_exists(tmp));
    shard_writer_close(w);
    ASSERT(file_exists(p));
    ASSERT(!file_exists(tmp));
}

static void write_bad_id(void *path) {
    ShardWriter *w = shard_writer_open(path, "t", 10, 0);
    uint32_t d[] = {1, 2, 3}, bad[] = {4, 10};
    shard_writer_add_doc(w, d, 3);
    shard_writer_add_doc(w, bad, 2);
    shard_writer_close(w);
}
static void write_no_docs(void *path) { shard_writer_close(shard_writer_open(path, "t", 10, 0)); }
static void write_only_empty_docs(void *path) {
    ShardWriter *w = shard_writer_open(path, "t", 10, 0);
    shard_writer_add_doc(w, NULL, 0);
    shard_writer_close(w);
}

TEST(shard_writer_bad_input_leaves_nothing) {
    struct { void (*fn)(void *); const char *expect; } cases[] = {
        {write_bad_id, "document 1: token 1 has id 10, expected < vocab_size 10"},
        {write_no_docs, "no documents"},
        {write_only_empty_docs, "all 1 documents are empty"},
    };
    for (int i = 0; i < 3; i++) {
        const char *p = tmp_file("bad.h5"), *tmp = tmp_file("bad.h5.tmp");
        char msg[4096];
        ASSERT_EQ_INT(child_exit_status(cases[i].fn, (void *)p, msg, sizeof msg), 1);
        ASSERT_CONTAINS(msg, p);
        ASSERT_CONTAINS(msg, cases[i].expect);
        ASSERT(!file_exists(p));
        ASSERT(!file_exists(tmp));
    }
}

// ---- the reader's bad inputs: each runs shard_open (and a full read) in a child, expecting exit 1 ----

static void open_and_read_all(void *path) {
    Shard s;
    shard_open(&s, path);
    uint32_t *buf = malloc(s.n_tokens * sizeof *buf);
    shard_read_tokens(&s, 0, s.n_tokens, buf);
    free(buf);
    shard_close(&s);
}

static void expect_open_fails(const char *path, const char *expect) {
    char msg[4096];
    int st = child_exit_status(open_and_read_all, (void *)path, msg, sizeof msg);
    ASSERT_MSG(st == 1, "expected exit 1 for %s (%s), got %d:\n%s", path, expect, st, msg);
    ASSERT_CONTAINS(msg, path);
    ASSERT_CONTAINS(msg, expect);
    ASSERT_MSG(!strstr(msg, "HDF5-DIAG"), "HDF5's own error stack was printed:\n%s", msg);
}

// Edits a valid shard in place through HDF5 (to make files the writer would never produce).
static hid_t edit_open(const char *p) {
    hid_t f = H5Fopen(p, H5F_ACC_RDWR, H5P_DEFAULT);
    ASSERT(f >= 0);
    return f;
}
static void edit_attr_int(const char *p, const char *name, hid_t type, const void *v) {
    hid_t f = edit_open(p), a = H5Aopen(f, name, H5P_DEFAULT);
    ASSERT(a >= 0 && H5Awrite(a, type, v) >= 0);
    H5Aclose(a);
    H5Fclose(f);
}
static void edit_delete(const char *p, int is_attr, const char *name) {
    hid_t f = edit_open(p);
    ASSERT((is_attr ? H5Adelete(f, name) : H5Ldelete(f, name, H5P_DEFAULT)) >= 0);
    H5Fclose(f);
}
// Resizes /name to n elements and writes v into it.
static void edit_vector(const char *p, const char *name, hid_t type, const void *v, hsize_t n) {
    hid_t f = edit_open(p), d = H5Dopen2(f, name, H5P_DEFAULT);
    ASSERT(d >= 0 && H5Dset_extent(d, &n) >= 0);
    if (n > 0) ASSERT(H5Dwrite(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, v) >= 0);
    H5Dclose(d);
    H5Fclose(f);
}

static void flip_byte(const char *p, long at) {
    FILE *f = fopen(p, "r+b");
    ASSERT(f);
    ASSERT(fseek(f, at, SEEK_SET) == 0);
    int c = fgetc(f);
    ASSERT(c != EOF);
    ASSERT(fseek(f, at, SEEK_SET) == 0);
    fputc(c ^ 0x10, f);
    fclose(f);
}

// Offset of the first occurrence of the little-endian uint32 sequence {a, b, c} in the file (the tokens' bytes).
static long find_tokens(const char *p, uint32_t a, uint32_t b, uint32_t c) {
    FILE *f = fopen(p, "rb");
    ASSERT(f);
    static unsigned char buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    unsigned char pat[12];
    uint32_t v[3] = {a, b, c};
    for (int i = 0; i < 12; i++) pat[i] = (unsigned char)(v[i / 4] >> (8 * (i % 4)));
    unsigned char *hit = memmem(buf, n, pat, sizeof pat);
    ASSERT_MSG(hit, "token bytes not found in %s", p);
    return (long)(hit - buf);
}

TEST(shard_reader_refuses_bad_files) {
    char p[1024];
    expect_open_fails(tmp_file("nope.h5"), "cannot read the file");

    snprintf(p, sizeof p, "%s", tmp_file("text.h5"));
    FILE *f = fopen(p, "w");
    fputs("this is not an HDF5 file\n", f);
    fclose(f);
    expect_open_fails(p, "not an HDF5 file");

    snprintf(p, sizeof p, "%s", write_small("trunc.h5"));
    struct stat st;
    stat(p, &st);
    ASSERT(truncate(p, st.st_size / 2) == 0);
    expect_open_fails(p, "truncated or corrupt");
    ASSERT(truncate(p, 0) == 0);
    expect_open_fails(p, "not an HDF5 file");

    snprintf(p, sizeof p, "%s", write_small("super.h5"));
    flip_byte(p, 36);   // inside the superblock (v3: 48 bytes with a checksum)
    expect_open_fails(p, "truncated or corrupt");

    snprintf(p, sizeof p, "%s", write_small("data.h5"));
    flip_byte(p, find_tokens(p, 11, 12, 13) + 4);   // low byte of token 12: still a valid id, caught by Fletcher32
    expect_open_fails(p, "reading tokens [0, 8) failed; the file is corrupt");
    expect_open_fails(p, "Fletcher32");

    int v99 = 99;
    snprintf(p, sizeof p, "%s", write_small("v99.h5"));
    edit_attr_int(p, "format_version", H5T_NATIVE_INT, &v99);
    expect_open_fails(p, "format_version is 99, expected 1");

    const char *attrs[] = {"format_version", "tokenizer", "vocab_size", "eos_id"};
    for (int i = 0; i < 4; i++) {
        char name[64], expect[128];
        snprintf(name, sizeof name, "noattr%d.h5", i);
        snprintf(p, sizeof p, "%s", write_small(name));
        edit_delete(p, 1, attrs[i]);
        snprintf(expect, sizeof expect, "attribute %s is missing", attrs[i]);
        expect_open_fails(p, expect);
    }
    snprintf(p, sizeof p, "%s", write_small("nooffsets.h5"));
    edit_delete(p, 0, "doc_offsets");
    expect_open_fails(p, "dataset /doc_offsets is missing");
    snprintf(p, sizeof p, "%s", write_small("notokens.h5"));
    edit_delete(p, 0, "tokens");
    expect_open_fails(p, "dataset /tokens is missing");

    uint64_t not_monotone[] = {0, 6, 5, 8};
    snprintf(p, sizeof p, "%s", write_small("mono.h5"));
    edit_vector(p, "doc_offsets", H5T_NATIVE_UINT64, not_monotone, 4);
    expect_open_fails(p, "doc_offsets is not monotone: doc_offsets[2] = 5 < doc_offsets[1] = 6");

    uint64_t short_end[] = {0, 5, 5, 7};
    snprintf(p, sizeof p, "%s", write_small("end.h5"));
    edit_vector(p, "doc_offsets", H5T_NATIVE_UINT64, short_end, 4);
    expect_open_fails(p, "doc_offsets ends at 7, expected n_tokens = 8");

    uint64_t zero[] = {0, 0};
    snprintf(p, sizeof p, "%s", write_small("nodocs.h5"));
    edit_vector(p, "doc_offsets", H5T_NATIVE_UINT64, zero, 1);
    expect_open_fails(p, "holds no documents");

    snprintf(p, sizeof p, "%s", write_small("empty.h5"));
    edit_vector(p, "doc_offsets", H5T_NATIVE_UINT64, zero, 2);
    edit_vector(p, "tokens", H5T_NATIVE_UINT32, NULL, 0);
    expect_open_fails(p, "holds no tokens");

    uint32_t vocab20 = 20;   // the data holds ids up to 22
    snprintf(p, sizeof p, "%s", write_small("vocab.h5"));
    edit_attr_int(p, "vocab_size", H5T_NATIVE_UINT32, &vocab20);
    expect_open_fails(p, "token at offset 5 has id 20, expected < vocab_size 20");

    uint32_t eos_big = 100;
    snprintf(p, sizeof p, "%s", write_small("eos.h5"));
    edit_attr_int(p, "eos_id", H5T_NATIVE_UINT32, &eos_big);
    expect_open_fails(p, "eos_id 100 is not below vocab_size 100");
}

static void read_out_of_range(void *path) {
    Shard s;
    shard_open(&s, path);
    uint32_t buf[16];
    shard_read_tokens(&s, 5, 4, buf);
}

TEST(shard_read_out_of_range_dies) {
    const char *p = write_small("r.h5");
    char msg[4096];
    ASSERT_EQ_INT(child_exit_status(read_out_of_range, (void *)p, msg, sizeof msg), 1);
    ASSERT_CONTAINS(msg, p);
    ASSERT_CONTAINS(msg, "read of tokens [5, 9) is outside the shard's 8 tokens");
}
