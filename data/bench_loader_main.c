// Loader benchmark: tokens per second delivered by ONE core (prefetch 0: loader_next does all the reading in the
// calling thread), and by the background thread (prefetch 4: the consumer only copies), at T = 4096, B = 4, D = 1.
//
//   build/bench_loader [--dir DIR] [--tokens N] [--keep]
//
// Datasets, generated under DIR (default /tmp/bench_loader) unless --keep finds them there already:
//   big    one shard of N tokens (default 2^28 = 1 GiB of uint32), vocab 129280, documents of 1..2047 tokens
//   many   the same amount of tokens in 128 shards (more than the loader keeps open: exercises reopening)
//   corpus one shard of 4M byte-level tokens (vocab 256) in documents of 1..4095 tokens: a small embedded corpus
// "warm" runs read from the page cache; "cold" runs first drop the shards' pages (posix_fadvise DONTNEED).
#include "data/loader.h"
#include "data/shard.h"
#include "train/check.h"

#include <fcntl.h>
#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static uint64_t rng_next(uint64_t *s) {   // xorshift64*
    *s ^= *s >> 12; *s ^= *s << 25; *s ^= *s >> 27;
    return *s * 0x2545F4914F6CDD1DULL;
}

// Writes n_tokens random tokens as n_shards shards <dir>/<name>-NNNN.h5, documents of 1..max_doc-1 tokens.
static void make_dataset(const char *dir, const char *name, uint64_t n_tokens, int n_shards, uint32_t vocab,
                         uint32_t max_doc) {
    uint32_t *doc = xmalloc(max_doc * sizeof *doc);
    uint64_t s = 0x9E3779B97F4A7C15ULL ^ n_tokens, per = n_tokens / n_shards;
    double t0 = now_s();
    for (int i = 0; i < n_shards; i++) {
        char path[2048];
        snprintf(path, sizeof path, "%s/%s-%04d.h5", dir, name, i);
        ShardWriter *w = shard_writer_open(path, "bench-random", vocab, vocab - 1);
        while (shard_writer_tokens(w) < per) {
            uint64_t len = 1 + rng_next(&s) % (max_doc - 1);
            if (len > per - shard_writer_tokens(w)) len = per - shard_writer_tokens(w);
            for (uint64_t j = 0; j < len; j++) doc[j] = (uint32_t)(rng_next(&s) % (vocab - 1));
            shard_writer_add_doc(w, doc, len);
        }
        shard_writer_close(w);
    }
    double dt = now_s() - t0;
    printf("wrote %-6s %3d shard(s), %llu tokens in %.1f s (%.1f M tokens/s)\n", name, n_shards,
           (unsigned long long)per * n_shards, dt, per * n_shards / dt / 1e6);
    free(doc);
}

static int dataset_present(const char *dir, const char *name, int n_shards) {
    char pat[2048];
    snprintf(pat, sizeof pat, "%s/%s-*.h5", dir, name);
    glob_t g;
    int n = glob(pat, 0, NULL, &g) == 0 ? (int)g.gl_pathc : 0;
    if (n) globfree(&g);
    return n == n_shards;
}

static void drop_page_cache(const char *dir, const char *name) {
    char pat[2048];
    snprintf(pat, sizeof pat, "%s/%s-*.h5", dir, name);
    glob_t g;
    if (glob(pat, 0, NULL, &g) != 0) return;
    for (size_t i = 0; i < g.gl_pathc; i++) {
        int fd = open(g.gl_pathv[i], O_RDONLY);
        CHECK(fd >= 0, "cannot open %s", g.gl_pathv[i]);
        int rc = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        if (rc != 0)
            log_warn("posix_fadvise(%s) failed (%d): the cold run may read from the page cache", g.gl_pathv[i], rc);
        close(fd);
    }
    globfree(&g);
}

// Runs loader_next for about `seconds` (at most one epoch) and prints the rate of training tokens (B * T per call).
static void measure(const char *dir, const char *name, uint32_t vocab, int shuffle, int prefetch, int cold,
                    double seconds) {
    char pat[2048];
    snprintf(pat, sizeof pat, "%s-*.h5", name);
    enum { T = 4096, B = 4, D = 1 };
    if (cold) drop_page_cache(dir, name);
    LoaderOptions o = {.shards = pat, .base_dir = dir, .seq_len = T, .mtp_depth = D, .micro_batch = B,
                       .dp_rank = 0, .dp_size = 1, .seed = 42, .shuffle = shuffle, .vocab_size = vocab,
                       .prefetch = prefetch};
    double t_open = now_s();
    Loader *l = loader_open(&o);
    t_open = now_s() - t_open;
    LoaderInfo info = loader_info(l);
    uint32_t *buf = xmalloc(sizeof(uint32_t) * B * (T + 1 + D));
    uint64_t max_batches = info.windows_per_epoch / B, n = 0, check = 0;
    double t0 = now_s(), t = t0;
    while (n < max_batches && (t = now_s()) - t0 < seconds) {
        loader_next(l, buf);
        check += buf[n % (B * T)];
        n++;
    }
    double rate = (double)n * B * T / (t - t0);
    printf("%-6s shards %3d  tokens %10llu  shuffle %d  prefetch %d  %s  open %6.3f s  %6llu batches  "
           "%8.2f M tokens/s   (checksum %llu)\n", name, info.n_shards, (unsigned long long)info.n_tokens, shuffle,
           prefetch, cold ? "cold" : "warm", t_open, (unsigned long long)n, rate / 1e6, (unsigned long long)check);
    fflush(stdout);
    free(buf);
    loader_close(l);
}

int main(int argc, char **argv) {
    const char *dir = "/tmp/bench_loader";
    uint64_t n_tokens = 1ULL << 28;
    int keep = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--dir") && i + 1 < argc) dir = argv[++i];
        else if (!strcmp(argv[i], "--tokens") && i + 1 < argc) n_tokens = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--keep")) keep = 1;
        else die("usage: %s [--dir DIR] [--tokens N] [--keep]  (unknown argument '%s')", argv[0], argv[i]);
    }
    CHECK(n_tokens >= (1u << 20), "--tokens %llu: expected at least 2^20", (unsigned long long)n_tokens);
    mkdir(dir, 0755);
    struct { const char *name; uint64_t tokens; int shards; uint32_t vocab, max_doc; } sets[] = {
        {"big", n_tokens, 1, 129280, 2048},
        {"many", n_tokens, 128, 129280, 2048},
        {"corpus", 4u << 20, 1, 256, 4096},
    };
    for (int i = 0; i < 3; i++)
        if (!keep || !dataset_present(dir, sets[i].name, sets[i].shards))
            make_dataset(dir, sets[i].name, sets[i].tokens, sets[i].shards, sets[i].vocab, sets[i].max_doc);
    printf("T = 4096, B = 4, D = 1; tokens/s counts B * T training tokens per loader_next\n");
    for (int i = 0; i < 3; i++) {
        uint32_t v = sets[i].vocab;
        measure(dir, sets[i].name, v, 1, 0, 1, 5.0);   // cold, shuffled: random reads from disk
        measure(dir, sets[i].name, v, 1, 0, 0, 3.0);   // warm, shuffled, one core
        measure(dir, sets[i].name, v, 0, 0, 0, 3.0);   // warm, sequential (validation stream), one core
        measure(dir, sets[i].name, v, 1, 4, 0, 3.0);   // warm, shuffled, background thread
    }
    return 0;
}
