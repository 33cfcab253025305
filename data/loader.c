// The data loader (semantics in loader.h and data/FORMAT.md).
//
// Memory: per document 8 bytes of doc_offsets (kept by each Shard) plus 16 bytes for the current epoch's order and
// its prefix sums; tokens are never held beyond the prefetch ring. Windows are read by hyperslab, document piece by
// document piece, with at most LOADER_MAX_OPEN shard files open at a time (least recently used ones are released).
//
// Threads: with prefetch > 0 one producer thread owns the shards and the epoch cache and fills a ring of
// `prefetch` micro-batches; the consumer (loader_next) only copies out of the ring. Repositioning (state load,
// rewind) stops and joins the producer, drops the ring and restarts it at the new position, so the saved position
// is always the consumer's, never the producer's.
#include "data/loader.h"
#include "data/shard.h"
#include "train/check.h"

#include <glob.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define LOADER_MAX_OPEN 64        // shard files kept open (each holds an HDF5 handle and a 1 MiB chunk cache)
#define LOADER_MAX_PREFETCH 64

struct Loader {
    LoaderOptions o;
    char *patterns, *base_dir;     // owned copies of o.shards / o.base_dir
    int row;                       // T + 1 + D tokens per window
    size_t batch_elems;            // B * row
    uint64_t stride;               // B * dp_size global windows per loader_next

    Shard *shards;                 // [n_shards], sorted by path
    int n_shards, n_open;
    uint64_t *doc_base;            // [n_shards + 1] global id of each shard's first document
    uint64_t *last_use, use_clock; // LRU of open shard files
    uint64_t n_docs, n_tokens, stream_len, windows_per_epoch;
    uint32_t vocab_size, eos_id;

    int shuffle_windows;           // windows too are visited in a seeded order (0: a state from before that rule)
    uint64_t cached_epoch;         // epoch whose order is in perm/cum (UINT64_MAX: none)
    uint64_t *perm;                // [n_docs] global document ids in stream order
    uint64_t *cum;                 // [n_docs + 1] stream offset of each ordered document (its EOS included)

    uint64_t pos;                  // global window of the next batch loader_next returns (the saved state)
    uint64_t produce_pos;          // global window of the next batch the producer makes
    uint32_t *ring;                // [prefetch][batch_elems]
    int head, count, stop;
    int running;                   // a producer thread exists (guarded by g_reg_mu, read by the exit handler)
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t not_full, not_empty;
    Loader *reg_next, *join_next;  // registry of live loaders, for the exit handler
};

// ---------------------------------------------------------------------------------------------------------------
// Exit safety: die() anywhere calls exit(), which runs HDF5's atexit handler (closing the library). A producer
// still reading at that moment would then fail inside HDF5. Our handler, registered after HDF5 initialised and so
// run before HDF5's, stops and joins every other thread's producer first.

static pthread_mutex_t g_reg_mu = PTHREAD_MUTEX_INITIALIZER;
static Loader *g_reg;
static pthread_once_t g_exit_once = PTHREAD_ONCE_INIT;

static void loader_join(Loader *l);

static void loader_exit_handler(void) {
    Loader *to_join = NULL;
    pthread_mutex_lock(&g_reg_mu);   // claim the running producers (not our own thread's), then join unlocked
    for (Loader *l = g_reg; l; l = l->reg_next)
        if (l->running && !pthread_equal(l->thread, pthread_self())) {
            l->running = 0;
            l->join_next = to_join;
            to_join = l;
        }
    pthread_mutex_unlock(&g_reg_mu);
    for (Loader *l = to_join; l; l = l->join_next) loader_join(l);
}
static void loader_register_exit(void) { atexit(loader_exit_handler); }

// ---------------------------------------------------------------------------------------------------------------
// Permutation: splitmix64 seeds xoshiro256**; Fisher-Yates with Lemire's unbiased bounded integers.

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}
static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
static uint64_t xoshiro_next(uint64_t s[4]) {
    uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]; s[2] ^= t; s[3] = rotl(s[3], 45);
    return r;
}
static uint64_t bounded(uint64_t s[4], uint64_t n) {   // uniform in [0, n)
    unsigned __int128 m = (unsigned __int128)xoshiro_next(s) * n;
    uint64_t lo = (uint64_t)m;
    if (lo < n) {
        uint64_t thresh = -n % n;
        while (lo < thresh) { m = (unsigned __int128)xoshiro_next(s) * n; lo = (uint64_t)m; }
    }
    return (uint64_t)(m >> 64);
}

void loader_epoch_order(const Loader *l, uint64_t epoch, uint64_t *perm) {
    for (uint64_t i = 0; i < l->n_docs; i++) perm[i] = i;
    if (!l->o.shuffle) return;
    uint64_t x = l->o.seed, s[4];
    x = splitmix64(&x) ^ (epoch * 0xD1B54A32D192ED03ULL);   // hash seed, then mix in the epoch
    for (int i = 0; i < 4; i++) s[i] = splitmix64(&x);
    for (uint64_t i = l->n_docs - 1; i > 0; i--) {
        uint64_t j = bounded(s, i + 1), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
}

// The window order of an epoch: a bijection of [0, W) drawn from (seed, epoch), O(1) memory whatever W (V3-scale
// runs have billions of windows). A balanced Feistel network of 6 rounds over the smallest even bit width 2h with
// 2^2h >= W permutes [0, 2^2h); cycle walking (map again while the value is >= W) restricts it to [0, W), and each
// walk ends because the values the network visits form a cycle through the starting index. Round function: the
// splitmix64 finalizer of (right half, round key).
static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}
uint64_t loader_window_permute(uint64_t seed, uint64_t epoch, uint64_t W, uint64_t w) {
    if (W < 2) return w;
    int h = 1;
    while (h < 32 && (1ULL << (2 * h)) < W) h++;
    const uint64_t mask = (1ULL << h) - 1;
    uint64_t x = seed ^ 0x5DEECE66DULL;
    const uint64_t key = mix64(splitmix64(&x) ^ (epoch * 0x9E3779B97F4A7C15ULL) ^ 0xA0761D6478BD642FULL);
    uint64_t i = w;
    do {
        uint64_t L = i >> h, R = i & mask;
        for (uint64_t r = 0; r < 6; r++) {
            uint64_t t = L ^ (mix64(R ^ (key + r * 0xE7037ED1A0B428DBULL)) & mask);
            L = R;
            R = t;
        }
        i = (L << h) | R;
    } while (i >= W);
    return i;
}
uint64_t loader_window_order(const Loader *l, uint64_t epoch, uint64_t w) {
    if (!l->o.shuffle || !l->shuffle_windows) return w;
    return loader_window_permute(l->o.seed, epoch, l->windows_per_epoch, w);
}

// ---------------------------------------------------------------------------------------------------------------
// Dataset

static int shard_of_doc(const Loader *l, uint64_t doc) {   // last shard whose first document is <= doc
    int lo = 0, hi = l->n_shards - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (l->doc_base[mid] <= doc) lo = mid; else hi = mid - 1;
    }
    return lo;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

// Expands the comma-separated patterns into a sorted, de-duplicated path list.
static char **expand_patterns(Loader *l, int *n_out) {
    char **paths = NULL;
    size_t n = 0, cap = 0;
    char *list = xstrdup(l->patterns), *save = NULL;
    int n_patterns = 0;
    for (char *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ' || *tok == '\t') tok++;
        char *end = tok + strlen(tok);
        while (end > tok && (end[-1] == ' ' || end[-1] == '\t')) *--end = 0;
        if (!*tok) continue;
        n_patterns++;
        char full[4096];
        if (tok[0] != '/' && l->base_dir[0]) snprintf(full, sizeof full, "%s/%s", l->base_dir, tok);
        else snprintf(full, sizeof full, "%s", tok);
        glob_t g;
        int rc = glob(full, GLOB_ERR, NULL, &g);
        if (rc == GLOB_NOMATCH)
            die("data: shard pattern '%s' matches no file (expected one or more token shards)", full);
        if (rc != 0) die("data: shard pattern '%s': cannot read its directory (glob error %d)", full, rc);
        for (size_t i = 0; i < g.gl_pathc; i++) {
            if (n == cap) { cap = cap ? 2 * cap : 16; paths = xrealloc(paths, cap * sizeof *paths); }
            paths[n++] = xstrdup(g.gl_pathv[i]);
        }
        globfree(&g);
    }
    free(list);
    if (n_patterns == 0) die("data: the shard list '%s' names no pattern", l->patterns);
    qsort(paths, n, sizeof *paths, cmp_str);
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (m > 0 && strcmp(paths[m - 1], paths[i]) == 0) { free(paths[i]); continue; }
        paths[m++] = paths[i];
    }
    *n_out = (int)m;
    return paths;
}

static void open_shards(Loader *l) {
    int n;
    char **paths = expand_patterns(l, &n);
    l->n_shards = n;
    l->shards = xcalloc(n, sizeof *l->shards);
    l->doc_base = xmalloc((n + 1) * sizeof(uint64_t));
    l->last_use = xcalloc(n, sizeof(uint64_t));
    l->doc_base[0] = 0;
    for (int i = 0; i < n; i++) {
        Shard *s = &l->shards[i];
        shard_open(s, paths[i]);
        if (i == 0) pthread_once(&g_exit_once, loader_register_exit);   // HDF5 is initialised now
        const Shard *f = &l->shards[0];
        if (strcmp(s->tokenizer, f->tokenizer) != 0 || s->vocab_size != f->vocab_size || s->eos_id != f->eos_id)
            die("data: shard %s (tokenizer '%s', vocab_size %u, eos_id %u) does not match shard %s (tokenizer '%s', "
                "vocab_size %u, eos_id %u); expected all shards of one stream to share a tokenizer", s->path,
                s->tokenizer, s->vocab_size, s->eos_id, f->path, f->tokenizer, f->vocab_size, f->eos_id);
        if (s->vocab_size > l->o.vocab_size)
            die("data: shard %s has vocab_size %u, expected <= the model's vocab_size %u", s->path, s->vocab_size,
                l->o.vocab_size);
        l->doc_base[i + 1] = l->doc_base[i] + s->n_docs;
        l->n_tokens += s->n_tokens;
        if (i >= LOADER_MAX_OPEN) shard_release_file(s); else l->n_open++;
        free(paths[i]);
    }
    free(paths);
    l->n_docs = l->doc_base[n];
    l->vocab_size = l->shards[0].vocab_size;
    l->eos_id = l->shards[0].eos_id;
    l->stream_len = l->n_tokens + l->n_docs;
    if (l->stream_len < (uint64_t)l->row)
        die("data: the %d shard(s) matched by '%s' (first: %s) hold %llu tokens in %llu documents, %llu with EOS; "
            "expected at least one sequence of seq_len + 1 + mtp_depth = %d tokens", n, l->patterns,
            l->shards[0].path, (unsigned long long)l->n_tokens, (unsigned long long)l->n_docs,
            (unsigned long long)l->stream_len, l->row);
    l->windows_per_epoch = (l->stream_len - 1 - l->o.mtp_depth) / l->o.seq_len;
}

// Reads tokens [start, start + count) of a shard, reopening its file if it was released (LRU of open files).
static void read_doc_tokens(Loader *l, int si, uint64_t start, uint64_t count, uint32_t *out) {
    Shard *s = &l->shards[si];
    if (s->file < 0) {
        if (l->n_open >= LOADER_MAX_OPEN) {
            int victim = -1;
            for (int i = 0; i < l->n_shards; i++)
                if (l->shards[i].file >= 0 && (victim < 0 || l->last_use[i] < l->last_use[victim])) victim = i;
            shard_release_file(&l->shards[victim]);
            l->n_open--;
        }
        l->n_open++;   // shard_read_tokens reopens it
    }
    l->last_use[si] = ++l->use_clock;
    shard_read_tokens(s, start, count, out);
}

static void ensure_epoch(Loader *l, uint64_t epoch) {
    if (l->cached_epoch == epoch) return;
    loader_epoch_order(l, epoch, l->perm);
    l->cum[0] = 0;
    for (uint64_t k = 0; k < l->n_docs; k++) {
        uint64_t d = l->perm[k];
        const Shard *s = &l->shards[shard_of_doc(l, d)];
        uint64_t local = d - l->doc_base[s - l->shards];
        l->cum[k + 1] = l->cum[k] + (s->doc_offsets[local + 1] - s->doc_offsets[local]) + 1;   // + EOS
    }
    l->cached_epoch = epoch;
}

// Writes global window g (row tokens) into out: the epoch's stream window at position g mod W of its window order.
static void fetch_window(Loader *l, uint64_t g, uint32_t *out) {
    uint64_t epoch = g / l->windows_per_epoch;
    uint64_t start = loader_window_order(l, epoch, g % l->windows_per_epoch) * (uint64_t)l->o.seq_len;
    ensure_epoch(l, epoch);
    uint64_t lo = 0, hi = l->n_docs - 1;   // last ordered document with cum[k] <= start
    while (lo < hi) {
        uint64_t mid = (lo + hi + 1) / 2;
        if (l->cum[mid] <= start) lo = mid; else hi = mid - 1;
    }
    uint64_t k = lo, off = start - l->cum[k], need = l->row;
    while (need > 0) {   // the window ends inside the stream (W's definition), so k stays < n_docs
        uint64_t d = l->perm[k];
        int si = shard_of_doc(l, d);
        const Shard *s = &l->shards[si];
        uint64_t local = d - l->doc_base[si], first = s->doc_offsets[local], len = s->doc_offsets[local + 1] - first;
        if (off < len) {
            uint64_t take = len - off < need ? len - off : need;
            read_doc_tokens(l, si, first + off, take, out);
            out += take;
            need -= take;
            off += take;
        }
        if (need > 0) {   // off == len: the document's EOS, then the next document
            *out++ = l->eos_id;
            need--;
            k++;
            off = 0;
        }
    }
}

static void produce_batch(Loader *l, uint64_t p, uint32_t *out) {
    for (int b = 0; b < l->o.micro_batch; b++)
        fetch_window(l, p + (uint64_t)l->o.dp_rank * l->o.micro_batch + b, out + (size_t)b * l->row);
}

// ---------------------------------------------------------------------------------------------------------------
// Prefetch thread

static void *producer_main(void *arg) {
    Loader *l = arg;
    pthread_mutex_lock(&l->mu);
    while (!l->stop) {
        while (!l->stop && l->count == l->o.prefetch) pthread_cond_wait(&l->not_full, &l->mu);
        if (l->stop) break;
        int slot = (l->head + l->count) % l->o.prefetch;
        uint64_t p = l->produce_pos;
        l->produce_pos += l->stride;
        pthread_mutex_unlock(&l->mu);
        produce_batch(l, p, l->ring + (size_t)slot * l->batch_elems);   // slot is invisible to the consumer
        pthread_mutex_lock(&l->mu);
        l->count++;
        pthread_cond_signal(&l->not_empty);
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

// Asks the producer to finish its current batch and stop, and joins it.
static void loader_join(Loader *l) {
    pthread_mutex_lock(&l->mu);
    l->stop = 1;
    pthread_cond_broadcast(&l->not_full);
    pthread_mutex_unlock(&l->mu);
    int rc = pthread_join(l->thread, NULL);
    CHECK(rc == 0, "data: pthread_join of the prefetch thread failed (%d)", rc);
}

static void loader_stop_thread(Loader *l) {
    pthread_mutex_lock(&g_reg_mu);   // claim the thread so that the exit handler does not join it too
    int was_running = l->running;
    l->running = 0;
    pthread_mutex_unlock(&g_reg_mu);
    if (was_running) loader_join(l);
}

// (Re)starts production at the consumer's position with an empty ring.
static void loader_start_thread(Loader *l) {
    if (l->o.prefetch == 0) return;
    l->head = l->count = 0;
    l->stop = 0;
    l->produce_pos = l->pos;
    pthread_mutex_lock(&g_reg_mu);
    int rc = pthread_create(&l->thread, NULL, producer_main, l);
    l->running = rc == 0;
    pthread_mutex_unlock(&g_reg_mu);
    CHECK(rc == 0, "data: cannot start the prefetch thread (pthread_create: %d)", rc);
}

// ---------------------------------------------------------------------------------------------------------------
// Public API

Loader *loader_open(const LoaderOptions *o) {
    CHECK(o->shards && o->shards[0], "data: no shard pattern given (expected comma-separated globs)");
    CHECK(o->seq_len >= 1, "data: seq_len %d, expected >= 1", o->seq_len);
    CHECK(o->mtp_depth >= 0, "data: mtp_depth %d, expected >= 0", o->mtp_depth);
    CHECK(o->micro_batch >= 1, "data: micro_batch %d, expected >= 1", o->micro_batch);
    CHECK(o->dp_size >= 1 && o->dp_rank >= 0 && o->dp_rank < o->dp_size,
          "data: dp_rank %d of dp_size %d, expected 0 <= dp_rank < dp_size", o->dp_rank, o->dp_size);
    CHECK(o->vocab_size >= 1, "data: vocab_size %u, expected >= 1", o->vocab_size);
    CHECK(o->prefetch >= 0 && o->prefetch <= LOADER_MAX_PREFETCH, "data: prefetch %d, expected 0..%d", o->prefetch,
          LOADER_MAX_PREFETCH);
    Loader *l = xcalloc(1, sizeof *l);
    l->o = *o;
    l->patterns = xstrdup(o->shards);
    l->base_dir = xstrdup(o->base_dir ? o->base_dir : "");
    l->o.shards = l->patterns;
    l->o.base_dir = l->base_dir;
    l->row = o->seq_len + 1 + o->mtp_depth;
    l->batch_elems = (size_t)o->micro_batch * l->row;
    l->stride = (uint64_t)o->micro_batch * o->dp_size;
    open_shards(l);
    l->perm = xmalloc(l->n_docs * sizeof(uint64_t));
    l->cum = xmalloc((l->n_docs + 1) * sizeof(uint64_t));
    l->cached_epoch = UINT64_MAX;
    l->shuffle_windows = 1;
    if (o->prefetch > 0) l->ring = xmalloc((size_t)o->prefetch * l->batch_elems * sizeof(uint32_t));
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->not_full, NULL);
    pthread_cond_init(&l->not_empty, NULL);
    pthread_mutex_lock(&g_reg_mu);
    l->reg_next = g_reg;
    g_reg = l;
    pthread_mutex_unlock(&g_reg_mu);
    loader_start_thread(l);
    return l;
}

void loader_next(Loader *l, uint32_t *tokens) {
    if (l->o.prefetch == 0) {
        produce_batch(l, l->pos, tokens);
        l->pos += l->stride;
        return;
    }
    pthread_mutex_lock(&l->mu);
    while (l->count == 0) pthread_cond_wait(&l->not_empty, &l->mu);
    memcpy(tokens, l->ring + (size_t)l->head * l->batch_elems, l->batch_elems * sizeof(uint32_t));
    l->head = (l->head + 1) % l->o.prefetch;
    l->count--;
    l->pos += l->stride;
    pthread_cond_signal(&l->not_full);
    pthread_mutex_unlock(&l->mu);
}

void loader_state_save(const Loader *l, LoaderState *st) {
    memset(st, 0, sizeof *st);
    st->magic = LOADER_STATE_MAGIC;
    st->next_window = l->pos;
    st->seed = l->o.seed;
    st->n_docs = l->n_docs;
    st->n_tokens = l->n_tokens;
    st->seq_len = l->o.seq_len;
    st->mtp_depth = l->o.mtp_depth;
    st->shuffle = l->o.shuffle;
    st->window_order = l->shuffle_windows;
}

void loader_state_load(Loader *l, const LoaderState *st) {
    if (st->magic != LOADER_STATE_MAGIC) die("data: loader state has magic %#llx, expected %#llx (not a loader state)",
                                             (unsigned long long)st->magic, (unsigned long long)LOADER_STATE_MAGIC);
    if (st->n_docs != l->n_docs || st->n_tokens != l->n_tokens)
        die("data: loader state was saved for a dataset of %llu documents / %llu tokens, but '%s' holds %llu / %llu; "
            "expected the same shards to resume", (unsigned long long)st->n_docs, (unsigned long long)st->n_tokens,
            l->patterns, (unsigned long long)l->n_docs, (unsigned long long)l->n_tokens);
    if (st->seq_len != l->o.seq_len || st->mtp_depth != l->o.mtp_depth || st->shuffle != l->o.shuffle ||
        (l->o.shuffle && st->seed != l->o.seed))
        die("data: loader state was saved with seq_len %d, mtp_depth %d, shuffle %d, seed %llu; this loader has "
            "%d, %d, %d, %llu; expected them equal to resume", st->seq_len, st->mtp_depth, st->shuffle,
            (unsigned long long)st->seed, l->o.seq_len, l->o.mtp_depth, l->o.shuffle, (unsigned long long)l->o.seed);
    loader_stop_thread(l);
    l->pos = st->next_window;
    // A state saved before windows were shuffled (window_order 0) resumes that run's order exactly.
    l->shuffle_windows = st->window_order != 0;
    loader_start_thread(l);
}

void loader_rewind(Loader *l) {
    loader_stop_thread(l);
    l->pos = 0;
    loader_start_thread(l);
}

void loader_close(Loader *l) {
    pthread_mutex_lock(&g_reg_mu);   // unregister first: the exit handler must not join a thread we join
    for (Loader **p = &g_reg; *p; p = &(*p)->reg_next)
        if (*p == l) { *p = l->reg_next; break; }
    pthread_mutex_unlock(&g_reg_mu);
    loader_stop_thread(l);
    for (int i = 0; i < l->n_shards; i++) shard_close(&l->shards[i]);
    pthread_mutex_destroy(&l->mu);
    pthread_cond_destroy(&l->not_full);
    pthread_cond_destroy(&l->not_empty);
    free(l->shards); free(l->doc_base); free(l->last_use); free(l->perm); free(l->cum); free(l->ring);
    free(l->patterns); free(l->base_dir);
    free(l);
}

LoaderInfo loader_info(const Loader *l) {
    return (LoaderInfo){.n_shards = l->n_shards, .n_docs = l->n_docs, .n_tokens = l->n_tokens,
                        .stream_len = l->stream_len, .windows_per_epoch = l->windows_per_epoch,
                        .vocab_size = l->vocab_size, .eos_id = l->eos_id};
}

uint64_t loader_position(const Loader *l) { return l->pos; }
