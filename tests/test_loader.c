// The data loader (data/loader.c): exact packing, shuffling, data-parallel dealing, resumable state with prefetch,
// rewinding, many shards, and every bad input.
#include "tests/test.h"
#include "tests/child_exit.h"
#include "data/loader.h"
#include "data/shard.h"
#include "train/check.h"

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

// The hand-made dataset: a.h5 = {10 11 12 13 14}, {20 21}; b.h5 = {30 31 32 33}; vocab 100, eos 1.
static void write_abc(void) {
    ShardWriter *w = shard_writer_open(tmp_file("a.h5"), "t", 100, 1);
    uint32_t a[] = {10, 11, 12, 13, 14}, b[] = {20, 21}, c[] = {30, 31, 32, 33};
    shard_writer_add_doc(w, a, 5);
    shard_writer_add_doc(w, b, 2);
    shard_writer_close(w);
    w = shard_writer_open(tmp_file("b.h5"), "t", 100, 1);
    shard_writer_add_doc(w, c, 4);
    shard_writer_close(w);
}

static LoaderOptions opts(const char *shards, int T, int D, int B) {
    return (LoaderOptions){.shards = shards, .base_dir = test_tmpdir(), .seq_len = T, .mtp_depth = D,
                           .micro_batch = B, .dp_rank = 0, .dp_size = 1, .seed = 1234, .shuffle = 0,
                           .vocab_size = 128, .prefetch = 0};
}

static void expect_rows(const uint32_t *got, const uint32_t *want, int n, const char *what) {
    for (int i = 0; i < n; i++)
        ASSERT_MSG(got[i] == want[i], "%s: element %d is %u, expected %u", what, i, got[i], want[i]);
}

TEST(loader_exact_packing) {
    write_abc();
    // Stream (shuffle off, EOS = 1 after every document), L = 14:
    //   pos: 0  1  2  3  4  5 6  7  8 9  10 11 12 13
    //        10 11 12 13 14 1 20 21 1 30 31 32 33 1
    // T = 4, D = 1: rows of 6, window i = stream[4i, 4i + 6), W = (14 - 2) / 4 = 3.
    uint32_t w0[] = {10, 11, 12, 13, 14, 1}, w1[] = {14, 1, 20, 21, 1, 30}, w2[] = {1, 30, 31, 32, 33, 1};
    for (int prefetch = 0; prefetch <= 2; prefetch += 2) {
        // Patterns out of order and overlapping: the file list is sorted and de-duplicated.
        LoaderOptions o = opts("b.h5, a.h5,*.h5", 4, 1, 2);
        o.prefetch = prefetch;
        Loader *l = loader_open(&o);
        LoaderInfo info = loader_info(l);
        ASSERT_EQ_INT(info.n_shards, 2);
        ASSERT_EQ_INT(info.n_docs, 3);
        ASSERT_EQ_INT(info.n_tokens, 11);
        ASSERT_EQ_INT(info.stream_len, 14);
        ASSERT_EQ_INT(info.windows_per_epoch, 3);
        uint32_t got[12];
        loader_next(l, got);                       // epoch 0 windows 0, 1
        expect_rows(got, w0, 6, "batch 0 row 0");
        expect_rows(got + 6, w1, 6, "batch 0 row 1");
        loader_next(l, got);                       // epoch 0 window 2, epoch 1 window 0
        expect_rows(got, w2, 6, "batch 1 row 0");
        expect_rows(got + 6, w0, 6, "batch 1 row 1");
        ASSERT_EQ_INT(loader_position(l), 4);
        loader_close(l);
    }
    // D = 0: rows of 5, W = (14 - 1) / 4 = 3; the final EOS (position 13) is the dropped tail.
    LoaderOptions o = opts("*.h5", 4, 0, 4);
    Loader *l = loader_open(&o);
    uint32_t got[20], want[] = {10, 11, 12, 13, 14, 14, 1, 20, 21, 1, 1, 30, 31, 32, 33, 10, 11, 12, 13, 14};
    loader_next(l, got);
    expect_rows(got, want, 20, "D = 0");
    loader_close(l);
}

// 40 documents of one token each, token = 100 + document id, in two shards; vocab 256, eos 1.
static void write_singletons(void) {
    for (int s = 0; s < 2; s++) {
        char name[32];
        snprintf(name, sizeof name, "single%d.h5", s);
        ShardWriter *w = shard_writer_open(tmp_file(name), "t", 256, 1);
        for (uint32_t d = 0; d < 20; d++) { uint32_t t = 100 + 20 * s + d; shard_writer_add_doc(w, &t, 1); }
        shard_writer_close(w);
    }
}

TEST(loader_shuffle_is_a_seeded_permutation) {
    write_singletons();
    LoaderOptions o = opts("single*.h5", 2, 0, 20);
    o.shuffle = 1;
    o.vocab_size = 256;
    Loader *l = loader_open(&o), *l2 = loader_open(&o);
    o.seed = 1235;
    Loader *l3 = loader_open(&o);
    uint64_t p0[40], p1[40], q0[40], r0[40];
    loader_epoch_order(l, 0, p0);
    loader_epoch_order(l, 1, p1);
    loader_epoch_order(l2, 0, q0);
    loader_epoch_order(l3, 0, r0);
    int seen[40] = {0}, moved = 0, same_next_epoch = 0, same_other_seed = 0;
    for (int i = 0; i < 40; i++) {
        ASSERT(p0[i] < 40);
        seen[p0[i]]++;
        moved += p0[i] != (uint64_t)i;
        same_next_epoch += p0[i] == p1[i];
        same_other_seed += p0[i] == r0[i];
        ASSERT_EQ_INT(p0[i], q0[i]);   // deterministic in the seed
    }
    for (int i = 0; i < 40; i++) ASSERT_EQ_INT(seen[i], 1);
    ASSERT(moved > 20);                // not the identity (a random permutation fixes ~1 point)
    ASSERT(same_next_epoch < 20);
    ASSERT(same_other_seed < 20);
    // The stream follows the order: T = 2, D = 0 stream windows are stream[2j, 2j + 3) = {doc, EOS, next doc}.
    // L = 80, W = 39. Batch position i visits stream window j = loader_window_order(epoch, i): 39 of epoch 0, then
    // epoch 1's first. The window order is a permutation of [0, 39) that moves windows.
    uint32_t got[2][60];
    loader_next(l, got[0]);
    loader_next(l, got[1]);
    int wseen[39] = {0}, wmoved = 0;
    for (int i = 0; i < 40; i++) {
        const uint32_t *row = got[i / 20] + 3 * (i % 20);
        uint64_t j = loader_window_order(l, i < 39 ? 0 : 1, i < 39 ? (uint64_t)i : 0);
        ASSERT(j < 39);
        if (i < 39) wseen[j]++, wmoved += j != (uint64_t)i;
        uint64_t doc = i < 39 ? p0[j] : p1[j], next = i < 39 ? p0[j + 1] : p1[j + 1];
        ASSERT_EQ_INT(row[0], 100 + doc);
        ASSERT_EQ_INT(row[1], 1);
        ASSERT_EQ_INT(row[2], 100 + next);
    }
    for (int j = 0; j < 39; j++) ASSERT_EQ_INT(wseen[j], 1);
    ASSERT(wmoved > 20);
    loader_close(l);
    loader_close(l2);
    loader_close(l3);
}

// The window order is a bijection of [0, W) for any W (cycle walking over a Feistel network of the next even bit
// width), deterministic in (seed, epoch), and different for another seed or epoch: checked exhaustively for small and
// awkward sizes (one above a power of two, a power of four, 2^20 + 1).
TEST(loader_window_order_is_a_seeded_bijection) {
    static const uint64_t Ws[] = {1, 2, 3, 5, 39, 64, 1000, 4097, 65536, (1u << 20) + 1};
    for (size_t wi = 0; wi < sizeof Ws / sizeof Ws[0]; wi++) {
        const uint64_t W = Ws[wi];
        unsigned char *seen = calloc(W, 1);
        uint64_t moved = 0, same_epoch1 = 0, same_seed2 = 0;
        for (uint64_t w = 0; w < W; w++) {
            uint64_t j = loader_window_permute(1234, 0, W, w);
            ASSERT_MSG(j < W, "W %llu: position %llu maps to %llu", (unsigned long long)W, (unsigned long long)w,
                       (unsigned long long)j);
            ASSERT_MSG(!seen[j], "W %llu: window %llu visited twice", (unsigned long long)W, (unsigned long long)j);
            seen[j] = 1;
            moved += j != w;
            same_epoch1 += j == loader_window_permute(1234, 1, W, w);
            same_seed2 += j == loader_window_permute(1235, 0, W, w);
            ASSERT(j == loader_window_permute(1234, 0, W, w));
        }
        free(seen);
        if (W >= 39) {   // a random permutation fixes ~1 point and agrees with another in ~1
            ASSERT_MSG(moved > W / 2, "W %llu: only %llu windows moved", (unsigned long long)W, (unsigned long long)moved);
            ASSERT(same_epoch1 < W / 4 && same_seed2 < W / 4);
        }
    }
}

// A shard of n_docs documents of varied lengths whose tokens are all distinct (id = 2 + running index).
static void write_distinct(const char *name, int n_docs, uint32_t vocab) {
    ShardWriter *w = shard_writer_open(tmp_file(name), "t", vocab, 1);
    uint32_t buf[64], next = 2;
    for (int d = 0; d < n_docs; d++) {
        int len = 1 + (d * 7) % 23;
        for (int i = 0; i < len; i++) buf[i] = next++;
        shard_writer_add_doc(w, buf, len);
    }
    shard_writer_close(w);
}

static int cmp_rows(const void *a, const void *b) { return memcmp(a, b, 9 * sizeof(uint32_t)); }

TEST(loader_data_parallel_disjoint_and_covering) {
    write_distinct("d.h5", 300, 1 << 20);
    // Global batch G = 16 rows per step, T = 8, D = 0 (rows of 9). Layouts (dp, B): micro-batches per step = G/(dp*B).
    int layouts[][2] = {{1, 4}, {2, 4}, {4, 2}, {8, 2}, {16, 1}};
    enum { G = 16, STEPS = 5, ROW = 9 };
    static uint32_t step_rows[5][STEPS][G * ROW];
    for (int li = 0; li < 5; li++) {
        int dp = layouts[li][0], B = layouts[li][1], micro = G / (dp * B);
        for (int r = 0; r < dp; r++) {
            LoaderOptions o = opts("d.h5", 8, 0, B);
            o.shuffle = 1;
            o.vocab_size = 1 << 20;
            o.dp_rank = r;
            o.dp_size = dp;
            o.prefetch = r % 2 ? 3 : 0;
            Loader *l = loader_open(&o);
            for (int s = 0; s < STEPS; s++)
                for (int m = 0; m < micro; m++)   // rank r's micro-batch m lands at slot (m * dp + r) * B
                    loader_next(l, step_rows[li][s] + (size_t)((m * dp + r) * B) * ROW);
            ASSERT_EQ_INT(loader_position(l), STEPS * G);   // the same position on every rank
            loader_close(l);
        }
        for (int s = 0; s < STEPS; s++) {
            qsort(step_rows[li][s], G, ROW * sizeof(uint32_t), cmp_rows);
            for (int i = 1; i < G; i++)   // disjoint: distinct tokens make distinct windows distinct rows
                ASSERT_MSG(cmp_rows(step_rows[li][s] + (i - 1) * ROW, step_rows[li][s] + i * ROW) != 0,
                           "layout dp=%d B=%d step %d: row %d repeated", dp, B, s, i);
            if (li > 0)   // covering: the same set of windows as dp = 1
                ASSERT_MSG(memcmp(step_rows[li][s], step_rows[0][s], sizeof step_rows[0][s]) == 0,
                           "layout dp=%d B=%d step %d differs from dp=1", dp, B, s);
        }
    }
    // And a step's set is the windows at positions 0..15 of the epoch's window order: step 0 of dp = 1, read as
    // one batch of 16, is the same set; with shuffle off the same positions are stream windows 0..15, whose
    // consecutive windows overlap by one token (1 + D).
    LoaderOptions o = opts("d.h5", 8, 0, 16);
    o.shuffle = 1;
    o.vocab_size = 1 << 20;
    Loader *l = loader_open(&o);
    uint32_t all[G * ROW];
    loader_next(l, all);
    qsort(all, G, ROW * sizeof(uint32_t), cmp_rows);
    ASSERT(memcmp(all, step_rows[0][0], sizeof all) == 0);
    loader_close(l);
    o.shuffle = 0;
    l = loader_open(&o);
    loader_next(l, all);
    for (int i = 0; i + 1 < G; i++) ASSERT_EQ_INT(all[i * ROW + 8], all[(i + 1) * ROW]);
    loader_close(l);
}

TEST(loader_state_resume_is_exact_with_prefetch) {
    write_distinct("d.h5", 40, 4096);   // ~520 stream tokens, W = 32: 12 + 10 batches of 8 windows span 5 epochs
    enum { K = 12, N = 10, ROW = 17 };
    LoaderOptions o = opts("d.h5", 16, 0, 4);
    o.shuffle = 1;
    o.vocab_size = 4096;
    o.prefetch = 3;
    o.dp_rank = 1;
    o.dp_size = 2;
    Loader *a = loader_open(&o);
    uint32_t buf[4 * ROW], ref[N][4 * ROW];
    for (int i = 0; i < K; i++) loader_next(a, buf);
    usleep(20000);   // let the producer run ahead: the ring is full of unconsumed batches
    LoaderState st;
    loader_state_save(a, &st);
    ASSERT_EQ_INT(st.next_window, K * 8);
    ASSERT(st.next_window > 2 * loader_info(a).windows_per_epoch);   // the run crossed epochs
    for (int i = 0; i < N; i++) loader_next(a, ref[i]);
    loader_close(a);

    for (int prefetch = 0; prefetch <= 5; prefetch += 5) {
        o.prefetch = prefetch;
        Loader *b = loader_open(&o);
        for (int i = 0; i < 3; i++) loader_next(b, buf);   // consumed and prefetched batches are discarded
        loader_state_load(b, &st);
        ASSERT_EQ_INT(loader_position(b), K * 8);
        for (int i = 0; i < N; i++) {
            loader_next(b, buf);
            expect_rows(buf, ref[i], 4 * ROW, "resumed batch");
        }
        loader_close(b);
    }
    // A state saved before windows were shuffled (window_order 0) resumes in stream order: this rank's 4 windows of
    // the next batch (global positions 96 + 4 .. 96 + 7: windows 4..7 of epoch 3, W = 32) are then consecutive
    // stream windows, which overlap by one token.
    ASSERT_EQ_INT(st.window_order, 1);
    st.window_order = 0;
    Loader *c = loader_open(&o);
    loader_state_load(c, &st);
    loader_next(c, buf);
    for (int i = 0; i + 1 < 4; i++) ASSERT_EQ_INT(buf[i * ROW + 16], buf[(i + 1) * ROW]);
    ASSERT_EQ_INT(loader_window_order(c, 3, 5), 5);
    loader_close(c);
}

TEST(loader_rewind_restarts_validation_stream) {
    write_abc();
    LoaderOptions o = opts("*.h5", 4, 1, 1);
    o.prefetch = 2;
    Loader *l = loader_open(&o);
    uint32_t first[5][6], again[6];
    for (int i = 0; i < 5; i++) loader_next(l, first[i]);
    loader_rewind(l);
    ASSERT_EQ_INT(loader_position(l), 0);
    for (int i = 0; i < 5; i++) {
        loader_next(l, again);
        expect_rows(again, first[i], 6, "after rewind");
    }
    loader_close(l);
}

TEST(loader_many_shards_match_one_shard) {
    // 70 shards (more than the 64 the loader keeps open) hold the same documents as one shard, in the same order:
    // the shuffled streams must be identical (the LRU of open files must not change what is read).
    mkdir(tmp_file("one"), 0755);
    mkdir(tmp_file("many"), 0755);
    ShardWriter *one = shard_writer_open(tmp_file("one/all.h5"), "t", 1000, 1), *part = NULL;
    uint32_t buf[8];
    for (int d = 0; d < 210; d++) {
        int len = 1 + d % 5;
        for (int i = 0; i < len; i++) buf[i] = 2 + (uint32_t)(d * 13 + i) % 997;
        if (d % 3 == 0) {
            char name[64];
            snprintf(name, sizeof name, "many/s%03d.h5", d / 3);
            part = shard_writer_open(tmp_file(name), "t", 1000, 1);
        }
        shard_writer_add_doc(one, buf, len);
        shard_writer_add_doc(part, buf, len);
        if (d % 3 == 2) shard_writer_close(part);
    }
    shard_writer_close(one);
    LoaderOptions o = opts("one/all.h5", 8, 1, 4);
    o.shuffle = 1;
    o.vocab_size = 1000;
    Loader *a = loader_open(&o);
    o.shards = "many/*.h5";
    o.prefetch = 2;
    Loader *b = loader_open(&o);
    ASSERT_EQ_INT(loader_info(b).n_shards, 70);
    ASSERT_EQ_INT(loader_info(b).n_tokens, loader_info(a).n_tokens);
    uint32_t x[40], y[40];
    for (int i = 0; i < 40; i++) {   // 160 windows of 8: about 1.5 epochs of the 840-token stream
        loader_next(a, x);
        loader_next(b, y);
        expect_rows(y, x, 40, "70 shards vs 1 shard");
    }
    loader_close(a);
    loader_close(b);
}

// ---- bad inputs: loader_open plus a few loader_next in a child; exit status 1 and the file named ----

typedef struct { LoaderOptions o; int n_next; LoaderState *load; } LoaderRun;

static void run_loader(void *arg) {
    LoaderRun *r = arg;
    Loader *l = loader_open(&r->o);
    if (r->load) loader_state_load(l, r->load);
    uint32_t *buf = malloc((size_t)r->o.micro_batch * (r->o.seq_len + 1 + r->o.mtp_depth) * sizeof *buf);
    for (int i = 0; i < r->n_next; i++) loader_next(l, buf);
    free(buf);
    loader_close(l);
}

static void expect_loader_fails(LoaderRun r, const char *name, const char *expect) {
    char msg[4096];
    int st = child_exit_status(run_loader, &r, msg, sizeof msg);
    ASSERT_MSG(st == 1, "expected exit 1 (%s), got %d:\n%s", expect, st, msg);
    if (name) ASSERT_CONTAINS(msg, name);
    ASSERT_CONTAINS(msg, expect);
}

static void copy_file(const char *from, const char *to) {
    char cmd[2200];
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", from, to);
    ASSERT_EQ_INT(test_run(cmd, NULL), 0);
}

static void set_attr_u32(const char *p, const char *name, uint32_t v) {
    hid_t f = H5Fopen(p, H5F_ACC_RDWR, H5P_DEFAULT), a = H5Aopen(f, name, H5P_DEFAULT);
    ASSERT(a >= 0);
    hid_t type = strcmp(name, "format_version") == 0 ? H5T_NATIVE_INT : H5T_NATIVE_UINT32;
    int iv = (int)v;
    ASSERT(H5Awrite(a, type, type == H5T_NATIVE_INT ? (void *)&iv : (void *)&v) >= 0);
    H5Aclose(a);
    H5Fclose(f);
}

TEST(loader_refuses_bad_input) {
    write_abc();
    LoaderRun r = {opts("*.h5", 4, 1, 2), 3, NULL};
    r.o.prefetch = 2;

    r.o.shards = "a.h5,nothing*.h5";
    expect_loader_fails(r, "nothing*.h5", "matches no file");
    r.o.shards = "a.h5, missing.h5";
    expect_loader_fails(r, "missing.h5", "matches no file");

    r.o.shards = "*.h5";
    r.o.seq_len = 16;   // 14 stream tokens < 16 + 1 + 1
    expect_loader_fails(r, "a.h5", "expected at least one sequence of seq_len + 1 + mtp_depth = 18 tokens");
    r.o.seq_len = 4;
    r.o.vocab_size = 64;
    expect_loader_fails(r, "a.h5", "has vocab_size 100, expected <= the model's vocab_size 64");
    r.o.vocab_size = 128;

    mkdir(tmp_file("bad"), 0755);
    const char *bad = tmp_file("bad/x.h5");
    r.o.shards = "a.h5,bad/*.h5";

    copy_file(tmp_file("b.h5"), bad);
    struct stat st;
    stat(bad, &st);
    ASSERT(truncate(bad, st.st_size - 100) == 0);
    expect_loader_fails(r, bad, "truncated");

    copy_file(tmp_file("b.h5"), bad);
    set_attr_u32(bad, "format_version", 99);
    expect_loader_fails(r, bad, "format_version is 99, expected 1");

    copy_file(tmp_file("a.h5"), bad);
    set_attr_u32(bad, "vocab_size", 14);   // a.h5 holds 10..14, 20, 21: found while reading, in the prefetch thread
    r.o.shards = "bad/*.h5";
    expect_loader_fails(r, bad, "token at offset 4 has id 14, expected < vocab_size 14");
    r.o.shards = "a.h5,bad/*.h5";

    copy_file(tmp_file("b.h5"), bad);
    set_attr_u32(bad, "eos_id", 2);
    expect_loader_fails(r, bad, "expected all shards of one stream to share a tokenizer");

    ShardWriter *w = shard_writer_open(bad, "t", 100, 1);   // a shard of one empty document
    uint32_t t = 5;
    shard_writer_add_doc(w, &t, 1);
    shard_writer_close(w);
    hid_t f = H5Fopen(bad, H5F_ACC_RDWR, H5P_DEFAULT), d = H5Dopen2(f, "tokens", H5P_DEFAULT);
    hsize_t zero = 0;
    uint64_t offs[2] = {0, 0};
    ASSERT(H5Dset_extent(d, &zero) >= 0);
    H5Dclose(d);
    d = H5Dopen2(f, "doc_offsets", H5P_DEFAULT);
    ASSERT(H5Dwrite(d, H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, offs) >= 0);
    H5Dclose(d);
    H5Fclose(f);
    expect_loader_fails(r, bad, "holds no tokens");

    // Corrupt token bytes (b.h5's {30 31 32 33}): detected by the checksum when the prefetch thread reads them.
    copy_file(tmp_file("b.h5"), bad);
    FILE *fp = fopen(bad, "r+b");
    static unsigned char bytes[1 << 16];
    size_t n = fread(bytes, 1, sizeof bytes, fp);
    unsigned char pat[8] = {31, 0, 0, 0, 32, 0, 0, 0};
    unsigned char *hit = memmem(bytes, n, pat, 8);
    ASSERT(hit);
    fseek(fp, hit - bytes, SEEK_SET);
    fputc(29, fp);   // 31 -> 29: a valid id, only the checksum can tell
    fclose(fp);
    expect_loader_fails(r, bad, "Fletcher32");

    // A state saved under another seed or dataset cannot be loaded.
    LoaderState s = {0};
    r.o.shards = "*.h5";
    r.o.shuffle = 1;
    Loader *l = loader_open(&r.o);
    loader_state_save(l, &s);
    loader_close(l);
    s.seed++;
    r.load = &s;
    expect_loader_fails(r, NULL, "loader state was saved with seq_len 4, mtp_depth 1, shuffle 1, seed 1235");
    s.seed--;
    s.n_tokens++;
    expect_loader_fails(r, "*.h5", "expected the same shards to resume");
}

// The trainer may die() (bad config, non-finite loss) while the prefetch thread is reading: the exit must still be
// a clean status 1 with the message, not a crash or hang inside HDF5's shutdown.
static void die_while_prefetching(void *arg) {
    LoaderOptions *o = arg;
    Loader *l = loader_open(o);
    uint32_t *buf = malloc(sizeof(uint32_t) * o->micro_batch * (o->seq_len + 1));
    loader_next(l, buf);   // the producer is now busy filling the rest of the ring with small document reads
    die("stopping on purpose with the producer running");
}

TEST(loader_die_while_prefetching_exits_cleanly) {
    write_distinct("d.h5", 3000, 1 << 20);
    LoaderOptions o = opts("d.h5", 4096, 0, 8);
    o.shuffle = 1;
    o.vocab_size = 1 << 20;
    o.prefetch = 64;
    char msg[4096];
    for (int i = 0; i < 5; i++) {
        ASSERT_EQ_INT(child_exit_status(die_while_prefetching, &o, msg, sizeof msg), 1);
        ASSERT_CONTAINS(msg, "stopping on purpose");
    }
}
