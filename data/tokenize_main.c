// build/tokenize: text or JSONL documents -> HDF5 token shards (data/shard.h; formats in data/FORMAT.md).
//
// Pipeline: the main thread reads documents in input order into a batch (files are read in bounded chunks; only a
// batch of documents is in memory), OpenMP threads tokenize the batch's documents (one TokenizerCtx each), then the
// main thread writes them in input order. Output therefore does not depend on --threads. Shards are written into
// a hidden staging directory inside --out-dir and renamed to their final names only after the whole run succeeded;
// on any error the staging directory is removed, so no shard from a failed run appears under a final name.
#include "data/tokenize_input.h"
#include "data/shard.h"
#include "data/tokenizer.h"
#include "data/utf8.h"
#include "train/check.h"

#include <dirent.h>
#include <errno.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char *USAGE =
    "usage: build/tokenize --tokenizer byte|PATH/tokenizer.json --out-dir DIR --prefix NAME [options] INPUT...\n"
    "\n"
    "Tokenizes documents into HDF5 shards DIR/NAME-00000.h5, DIR/NAME-00001.h5, ... of about --shard-tokens tokens\n"
    "each (a document is never split across shards). Documents are stored without separators; the loader inserts\n"
    "EOS between them.\n"
    "\n"
    "options:\n"
    "  --format text|jsonl   input format (default: jsonl for *.jsonl files, text otherwise)\n"
    "                        text: one document per file, or see --blank-lines; jsonl: one JSON object per line,\n"
    "                        the document is its \"text\" string (blank lines are skipped)\n"
    "  --blank-lines K       text: a run of K or more blank lines (empty or only spaces/tabs/CR) separates\n"
    "                        documents; the run itself belongs to no document (default 0: one document per file)\n"
    "  --shard-tokens N      tokens per shard, approximately (default 100000000)\n"
    "  --val-fraction F      hold out about a fraction F of the documents (chosen by a hash of the document's\n"
    "                        index, so the choice is reproducible) into DIR/VALNAME-00000.h5 ...\n"
    "  --val-docs N          hold out the first N documents instead\n"
    "  --val-prefix VALNAME  prefix of the held-out shards (default NAME-val)\n"
    "  --threads N           tokenizer threads (default: all cores)\n"
    "  --parse-special       turn special tokens written in the text (\"<|end_of_text|>\") into their ids\n"
    "                        (default: encode them as ordinary text, so a document cannot forge an EOS)\n"
    "  --eos-token TEXT      EOS token of a tokenizer.json when it cannot be found (tokenizer_config.json)\n"
    "  --max-doc-mb M        largest accepted document in MiB (default 1024)\n"
    "  --batch-docs N        most documents tokenized per batch (default 65536; output does not depend on it)\n"
    "  --force               replace existing shards of the same prefixes in DIR\n"
    "  --dry-run             tokenize and report throughput, write nothing (--out-dir/--prefix not needed)\n";

typedef struct {
    const char *prefix;
    ShardWriter *w;
    int n_shards;
    uint64_t docs, tokens;
} Stream;

static struct {
    char staging[4200];
    int committed;
} g_stage;

// atexit: a failed run (die() exits through here) leaves nothing behind but what existed before.
static void remove_staging(void) {
    if (!g_stage.staging[0] || g_stage.committed) return;
    DIR *d = opendir(g_stage.staging);
    if (d) {
        struct dirent *e;
        char p[4600];
        while ((e = readdir(d))) {
            if (e->d_name[0] == '.') continue;
            snprintf(p, sizeof p, "%s/%s", g_stage.staging, e->d_name);
            unlink(p);
        }
        closedir(d);
    }
    rmdir(g_stage.staging);
}

// Is name PREFIX-NNNNN.h5 (exactly five digits)?
static int is_shard_name(const char *name, const char *prefix) {
    size_t pl = strlen(prefix);
    if (strncmp(name, prefix, pl) != 0 || name[pl] != '-') return 0;
    const char *d = name + pl + 1;
    for (int i = 0; i < 5; i++) if (d[i] < '0' || d[i] > '9') return 0;
    return strcmp(d + 5, ".h5") == 0;
}

// Existing shards of a prefix in dir: dies unless force; with force, removes them (called after success).
static void check_existing(const char *dir, const char *prefix, int force, int remove) {
    DIR *d = opendir(dir);
    CHECK(d, "%s: cannot open output directory: %s", dir, strerror(errno));
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!is_shard_name(e->d_name, prefix)) continue;
        CHECK(force, "%s already has shards of prefix \"%s\" (e.g. %s); remove them or pass --force", dir, prefix,
              e->d_name);
        if (remove) {
            char p[4600];
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            CHECK(unlink(p) == 0, "%s: cannot remove old shard: %s", p, strerror(errno));
        }
    }
    closedir(d);
}

static void stream_add(Stream *s, const Tokenizer *tok, uint64_t shard_tokens, const uint32_t *ids, size_t n) {
    if (!s->w) {
        char path[4600];
        snprintf(path, sizeof path, "%s/%s-%05d.h5", g_stage.staging, s->prefix, s->n_shards);
        CHECK(s->n_shards < 100000, "more than 100000 shards of prefix %s: raise --shard-tokens", s->prefix);
        s->w = shard_writer_open(path, tokenizer_name(tok), tokenizer_vocab_size(tok), tokenizer_eos_id(tok));
        s->n_shards++;
    }
    shard_writer_add_doc(s->w, ids, n);
    s->docs++;
    s->tokens += n;
    if (shard_writer_tokens(s->w) >= shard_tokens) {
        shard_writer_close(s->w);
        s->w = NULL;
    }
}

// Moves the staged shards to their final names (old shards of the same prefixes are removed first with --force).
static void commit(const char *out_dir, Stream *streams, int n_streams, int force) {
    for (int i = 0; i < n_streams; i++) check_existing(out_dir, streams[i].prefix, force, 1);
    for (int i = 0; i < n_streams; i++)
        for (int k = 0; k < streams[i].n_shards; k++) {
            char from[4600], to[4600];
            snprintf(from, sizeof from, "%s/%s-%05d.h5", g_stage.staging, streams[i].prefix, k);
            snprintf(to, sizeof to, "%s/%s-%05d.h5", out_dir, streams[i].prefix, k);
            CHECK(rename(from, to) == 0, "rename %s -> %s failed: %s", from, to, strerror(errno));
        }
    g_stage.committed = 1;
    CHECK(rmdir(g_stage.staging) == 0, "%s: cannot remove staging directory: %s", g_stage.staging, strerror(errno));
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

static long parse_long(const char *opt, const char *v, long lo, long hi) {
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    CHECK(!errno && *v && !*end && x >= lo && x <= hi, "%s: expected an integer in [%ld, %ld], got \"%s\"", opt, lo, hi, v);
    return x;
}

typedef struct {
    const char *tokenizer, *out_dir, *prefix, *val_prefix, *eos_token;
    long shard_tokens, val_docs, threads, blank_lines, max_doc_mb, batch_docs;
    double val_fraction;
    int format, parse_special, force, dry_run;
    const char **inputs;
    int n_inputs;
} Options;

static void parse_args(int argc, char **argv, Options *o) {
    *o = (Options){.shard_tokens = 100000000, .threads = omp_get_num_procs(), .format = -1, .max_doc_mb = 1024,
                 .batch_docs = 65536};
    o->inputs = xcalloc((size_t)argc, sizeof *o->inputs);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { fputs(USAGE, stdout); exit(0); }
        if (!strcmp(a, "--parse-special")) { o->parse_special = 1; continue; }
        if (!strcmp(a, "--force")) { o->force = 1; continue; }
        if (!strcmp(a, "--dry-run")) { o->dry_run = 1; continue; }
        if (strncmp(a, "--", 2) != 0) { o->inputs[o->n_inputs++] = a; continue; }
        CHECK(i + 1 < argc, "%s needs a value\n%s", a, USAGE);
        const char *v = argv[++i];
        if (!strcmp(a, "--tokenizer")) o->tokenizer = v;
        else if (!strcmp(a, "--out-dir")) o->out_dir = v;
        else if (!strcmp(a, "--prefix")) o->prefix = v;
        else if (!strcmp(a, "--val-prefix")) o->val_prefix = v;
        else if (!strcmp(a, "--eos-token")) o->eos_token = v;
        else if (!strcmp(a, "--shard-tokens")) o->shard_tokens = parse_long(a, v, 1, 1L << 40);
        else if (!strcmp(a, "--val-docs")) o->val_docs = parse_long(a, v, 0, 1L << 50);
        else if (!strcmp(a, "--threads")) o->threads = parse_long(a, v, 1, 4096);
        else if (!strcmp(a, "--blank-lines")) o->blank_lines = parse_long(a, v, 0, 1000000);
        else if (!strcmp(a, "--max-doc-mb")) o->max_doc_mb = parse_long(a, v, 1, 1L << 22);
        else if (!strcmp(a, "--batch-docs")) o->batch_docs = parse_long(a, v, 1, 1L << 24);
        else if (!strcmp(a, "--val-fraction")) {
            char *end;
            o->val_fraction = strtod(v, &end);
            CHECK(*v && !*end && o->val_fraction >= 0 && o->val_fraction < 1, "--val-fraction: expected a number in "
                  "[0, 1), got \"%s\"", v);
        } else if (!strcmp(a, "--format")) {
            CHECK(!strcmp(v, "text") || !strcmp(v, "jsonl"), "--format: expected text or jsonl, got \"%s\"", v);
            o->format = !strcmp(v, "jsonl") ? INPUT_JSONL : INPUT_TEXT;
        } else die("unknown option %s\n%s", a, USAGE);
    }
    CHECK(o->tokenizer, "--tokenizer is required\n%s", USAGE);
    CHECK(o->n_inputs > 0, "no INPUT files given\n%s", USAGE);
    CHECK(o->dry_run || (o->out_dir && o->prefix), "--out-dir and --prefix are required\n%s", USAGE);
    CHECK(!(o->val_docs && o->val_fraction > 0), "--val-docs and --val-fraction exclude each other");
    if (o->prefix) CHECK(*o->prefix && !strchr(o->prefix, '/'), "--prefix \"%s\": must be a file name prefix", o->prefix);
}

typedef struct {
    TokenBuf ids;
    size_t bad_utf8;      // offset of invalid UTF-8, or SIZE_MAX
} Slot;

int main(int argc, char **argv) {
    Options o;
    parse_args(argc, argv, &o);
    Tokenizer *tok = tokenizer_load(o.tokenizer);
    if (o.eos_token) tokenizer_set_eos(tok, o.eos_token);
    CHECK(tokenizer_eos_id(tok) != TOKENIZER_NO_ID, "%s: no EOS token found (no tokenizer_config.json eos_token and "
          "no special token named like <|end_of_text|>); pass --eos-token TEXT", o.tokenizer);
    // Fail fast on inputs that cannot be read, before any work.
    for (int i = 0; i < o.n_inputs; i++) input_check_readable(o.inputs[i]);

    char val_prefix[1024] = "";
    int want_val = o.val_docs > 0 || o.val_fraction > 0;
    if (!o.dry_run) {
        struct stat st;
        if (stat(o.out_dir, &st) != 0) CHECK(mkdir(o.out_dir, 0777) == 0, "%s: cannot create output directory: %s",
                                             o.out_dir, strerror(errno));
        else CHECK(S_ISDIR(st.st_mode), "%s: exists and is not a directory", o.out_dir);
        snprintf(val_prefix, sizeof val_prefix, "%s", o.val_prefix ? o.val_prefix : o.prefix);
        if (!o.val_prefix) snprintf(val_prefix, sizeof val_prefix, "%s-val", o.prefix);
        CHECK(!want_val || strcmp(val_prefix, o.prefix) != 0, "--val-prefix must differ from --prefix");
        check_existing(o.out_dir, o.prefix, o.force, 0);
        if (want_val) check_existing(o.out_dir, val_prefix, o.force, 0);
        snprintf(g_stage.staging, sizeof g_stage.staging, "%s/.tokenize-staging-%ld", o.out_dir, (long)getpid());
        CHECK(mkdir(g_stage.staging, 0777) == 0, "%s: cannot create: %s", g_stage.staging, strerror(errno));
        atexit(remove_staging);
    }

    int threads = (int)o.threads;
    TokenizerCtx **ctx = xcalloc((size_t)threads, sizeof *ctx);
    for (int t = 0; t < threads; t++) ctx[t] = tokenizer_ctx_new(tok);
    double *busy = xcalloc((size_t)threads, sizeof *busy);
    int flags = o.parse_special ? TOKENIZER_PARSE_SPECIAL : 0;
    int need_utf8 = tokenizer_needs_utf8(tok);

    InputSet in;
    input_open(&in, o.inputs, o.n_inputs, o.format, (int)o.blank_lines, (size_t)o.max_doc_mb << 20);
    // A batch: enough text to keep every thread busy, small enough to bound memory.
    size_t batch_bytes = (size_t)threads * (4u << 20), batch_cap = 1024;
    InputDoc *batch = xcalloc(batch_cap, sizeof *batch);
    Slot *slots = xcalloc(batch_cap, sizeof *slots);
    Stream streams[2] = {{.prefix = o.prefix}, {.prefix = val_prefix}};
    uint64_t doc_index = 0, text_bytes = 0;
    double t0 = now_s(), last_report = t0;
    int tty = isatty(2);

    for (;;) {
        size_t n = 0, bytes = 0;
        while (bytes < batch_bytes && n < (size_t)o.batch_docs) {
            if (n == batch_cap) {
                batch_cap *= 2;
                batch = xrealloc(batch, batch_cap * sizeof *batch);
                slots = xrealloc(slots, batch_cap * sizeof *slots);
                memset(slots + n, 0, (batch_cap - n) * sizeof *slots);
            }
            if (!input_next(&in, &batch[n])) break;
            bytes += batch[n].len;
            n++;
        }
        if (!n) break;

#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
        for (size_t i = 0; i < n; i++) {
            int t = omp_get_thread_num();
            double s = omp_get_wtime();
            slots[i].ids.n = 0;
            slots[i].bad_utf8 = need_utf8 ? utf8_first_invalid(batch[i].text, batch[i].len) : batch[i].len;
            if (slots[i].bad_utf8 == batch[i].len) {
                slots[i].bad_utf8 = SIZE_MAX;
                tokenizer_encode(ctx[t], batch[i].text, batch[i].len, flags, &slots[i].ids);
            }
            busy[t] += omp_get_wtime() - s;
        }

        for (size_t i = 0; i < n; i++) {
            const InputDoc *d = &batch[i];
            if (slots[i].bad_utf8 != SIZE_MAX) {
                uint64_t line = d->line;
                for (size_t k = 0; k < slots[i].bad_utf8; k++) line += d->text[k] == '\n';
                die("%s:%llu: invalid UTF-8 (byte %zu of the document starting at line %llu); the BPE tokenizer "
                    "needs UTF-8 text", d->path, (unsigned long long)(d->format == INPUT_JSONL ? d->line : line),
                    slots[i].bad_utf8, (unsigned long long)d->line);
            }
            int val = o.val_docs > 0 ? doc_index < (uint64_t)o.val_docs
                                     : (double)(splitmix64(doc_index) >> 11) * 0x1.0p-53 < o.val_fraction;
            if (!o.dry_run) stream_add(&streams[val], tok, (uint64_t)o.shard_tokens, slots[i].ids.ids, slots[i].ids.n);
            else { streams[val].docs++; streams[val].tokens += slots[i].ids.n; }
            doc_index++;
            text_bytes += d->len;
            free(batch[i].text);
        }
        double now = now_s();
        if (now - last_report >= (tty ? 1.0 : 10.0)) {
            double dt = now - t0;
            uint64_t toks = streams[0].tokens + streams[1].tokens;
            fprintf(stderr, "%stokenize: %.1f MB of input, %.2f MB/s, %.3f M tokens/s, %llu documents, %d shards%s",
                    tty ? "\r" : "", (double)in.bytes_read / 1e6, (double)in.bytes_read / 1e6 / dt, (double)toks / 1e6 / dt,
                    (unsigned long long)doc_index, streams[0].n_shards + streams[1].n_shards, tty ? "   " : "\n");
            last_report = now;
        }
    }
    if (tty && now_s() - t0 >= 1.0) fputc('\n', stderr);
    CHECK(streams[0].docs > 0, "no training documents left (all %llu documents were held out for validation)",
          (unsigned long long)doc_index);
    if (want_val && !streams[1].docs) log_warn("no document was held out for validation (%llu documents, --val-fraction %g)",
                                               (unsigned long long)doc_index, o.val_fraction);
    if (!o.dry_run) {
        for (int s = 0; s < 2; s++) if (streams[s].w) { shard_writer_close(streams[s].w); streams[s].w = NULL; }
        commit(o.out_dir, streams, want_val ? 2 : 1, o.force);
    }

    double wall = now_s() - t0, cpu = 0;
    for (int t = 0; t < threads; t++) cpu += busy[t];
    uint64_t toks = streams[0].tokens + streams[1].tokens;
    printf("tokenize: %s: %llu documents (%llu empty skipped), %llu tokens from %.2f MB of text\n", tokenizer_name(tok),
           (unsigned long long)doc_index, (unsigned long long)in.empty_docs, (unsigned long long)toks, (double)text_bytes / 1e6);
    if (!o.dry_run)
        for (int s = 0; s < (want_val ? 2 : 1); s++)
            printf("  %s/%s-*.h5: %d shards, %llu documents, %llu tokens\n", o.out_dir, streams[s].prefix,
                   streams[s].n_shards, (unsigned long long)streams[s].docs, (unsigned long long)streams[s].tokens);
    printf("  wall %.2f s: %.2f MB/s, %.3f M tokens/s with %d threads; per core (tokenizer busy time %.2f s): "
           "%.2f MB/s, %.3f M tokens/s\n", wall, (double)text_bytes / 1e6 / wall, (double)toks / 1e6 / wall, threads,
           cpu, cpu > 0 ? (double)text_bytes / 1e6 / cpu : 0.0, cpu > 0 ? (double)toks / 1e6 / cpu : 0.0);

    input_close(&in);
    for (int t = 0; t < threads; t++) tokenizer_ctx_free(ctx[t]);
    for (size_t i = 0; i < batch_cap; i++) tokenbuf_free(&slots[i].ids);
    free(slots); free(batch); free(ctx); free(busy); free(o.inputs);
    tokenizer_free(tok);
    return 0;
}
