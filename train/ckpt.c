// Checkpoint directory protocol, manifest, verification, resume selection, retention and loading (see ckpt.h).
#include "train/ckpt_internal.h"
#include "train/check.h"
#include "train/config_internal.h"
#include "train/fsio.h"
#include "train/json_util.h"

#include <dirent.h>
#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

// ---- names ----

void ckpt_path(const char *root, int64_t step, char *out, size_t n) {
    int len = snprintf(out, n, "%s/step-%09lld", root, (long long)step);
    CHECK(len > 0 && (size_t)len < n, "checkpoint path too long: %s/step-%09lld", root, (long long)step);
}

// Parses a directory entry name: "step-<9 digits>" (tmp 0) or "step-<9 digits>.tmp" (tmp 1). Returns 1 on a match.
static int parse_step_name(const char *name, int64_t *step, int *tmp) {
    if (strncmp(name, "step-", 5) != 0) return 0;
    int64_t v = 0;
    for (int i = 0; i < 9; i++) {
        char c = name[5 + i];
        if (c < '0' || c > '9') return 0;
        v = v * 10 + (c - '0');
    }
    const char *rest = name + 14;
    if (*rest == 0) *tmp = 0;
    else if (strcmp(rest, ".tmp") == 0) *tmp = 1;
    else return 0;
    *step = v;
    return 1;
}

static const char *base_name(const char *path) {
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/') n--;   // tolerate a trailing slash
    static char buf[CKPT_PATH_MAX];
    snprintf(buf, sizeof buf, "%.*s", (int)n, path);
    const char *s = strrchr(buf, '/');
    return s ? s + 1 : buf;
}

// ---- model section <-> manifest ----

static const void *model_field(const ModelConfig *m, const ConfigKey *k) {
    return (const char *)m + (k->offset - offsetof(Config, model));
}

// The value of model key k as text (the same spelling the manifest and the YAML use).
static void model_key_text(const ModelConfig *m, const ConfigKey *k, char *buf, size_t n) {
    const void *f = model_field(m, k);
    switch (k->type) {
    case KEY_INT: case KEY_BOOL: snprintf(buf, n, "%d", *(const int *)f); break;
    case KEY_LONG: snprintf(buf, n, "%ld", *(const long *)f); break;
    case KEY_U64: snprintf(buf, n, "%llu", *(const unsigned long long *)f); break;
    case KEY_DOUBLE: config_format_double(*(const double *)f, buf, n); break;
    case KEY_ENUM: {
        int v = *(const int *)f, nv = 0;
        while (k->values[nv]) nv++;
        snprintf(buf, n, "%s", v >= 0 && v < nv ? k->values[v] : "?");
        break;
    }
    case KEY_STRING: snprintf(buf, n, "%s", (const char *)f); break;
    case KEY_SCHEDULE: snprintf(buf, n, "?"); break;
    }
}

static void manifest_write_model(JsonBuf *b, const ModelConfig *m) {
    json_buf_printf(b, "{");
    int first = 1;
    for (int i = 0; i < config_n_keys; i++) {
        const ConfigKey *k = &config_keys[i];
        if (strcmp(k->section, "model") != 0) continue;
        json_buf_printf(b, "%s\n    ", first ? "" : ",");
        first = 0;
        json_buf_string(b, k->name);
        json_buf_printf(b, ": ");
        char text[256];
        model_key_text(m, k, text, sizeof text);
        if (k->type == KEY_ENUM || k->type == KEY_STRING) json_buf_string(b, text);
        else if (k->type == KEY_DOUBLE) json_buf_double(b, *(const double *)model_field(m, k));
        else json_buf_printf(b, "%s", text);
    }
    json_buf_printf(b, "\n  }");
}

// Sets the model keys found in the manifest's "model" object over the defaults. Returns 0 and a reason on a value
// of the wrong type.
static int manifest_read_model(const JsonValue *obj, ModelConfig *out, char *why, size_t n) {
    Config cfg;
    config_defaults(&cfg);
    for (int i = 0; i < config_n_keys; i++) {
        const ConfigKey *k = &config_keys[i];
        if (strcmp(k->section, "model") != 0) continue;
        const JsonValue *v = json_get(obj, k->name);
        if (!v) continue;
        void *f = (char *)&cfg + k->offset;
        int64_t iv;
        switch (k->type) {
        case KEY_INT: case KEY_BOOL:
            if (!json_as_int64(v, &iv)) goto bad;
            *(int *)f = (int)iv;
            break;
        case KEY_LONG:
            if (!json_as_int64(v, &iv)) goto bad;
            *(long *)f = (long)iv;
            break;
        case KEY_U64:
            if (!json_as_int64(v, &iv) || iv < 0) goto bad;
            *(unsigned long long *)f = (unsigned long long)iv;
            break;
        case KEY_DOUBLE:
            if (v->type != JSON_NUMBER) goto bad;
            *(double *)f = v->number;
            break;
        case KEY_ENUM: {
            if (v->type != JSON_STRING) goto bad;
            int idx = -1;
            for (int j = 0; k->values[j]; j++) if (strcmp(k->values[j], v->str) == 0) idx = j;
            if (idx < 0) goto bad;
            *(int *)f = idx;
            break;
        }
        case KEY_STRING:
            if (v->type != JSON_STRING || strlen(v->str) >= k->size) goto bad;
            strcpy(f, v->str);
            break;
        case KEY_SCHEDULE: goto bad;
        }
        continue;
    bad:
        snprintf(why, n, "manifest: model.%s has an invalid value", k->name);
        return 0;
    }
    *out = cfg.model;
    return 1;
}

// ---- the manifest ----

typedef struct {
    char name[128];
    int64_t size;
    uint64_t xxh64;
} ManifestFile;

typedef struct {
    Json *doc;
    int64_t step;
    int world;
    unsigned long long model_hash;
    ModelConfig model;
    const char *config_text;
    ManifestFile *files;
    int n_files;
} Manifest;

static void manifest_free(Manifest *m) {
    json_free(m->doc);
    free(m->files);
    memset(m, 0, sizeof *m);
}

static int parse_hex64(const char *s, uint64_t *out) {
    if (strlen(s) != 16) return 0;
    uint64_t v = 0;
    for (int i = 0; i < 16; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0) return 0;
        v = v << 4 | (uint64_t)d;
    }
    *out = v;
    return 1;
}

// Reads and checks <dir>/COMPLETE. Returns 1, or 0 with the reason.
static int manifest_read(const char *dir, Manifest *m, char *why, size_t n) {
    memset(m, 0, sizeof *m);
    char path[CKPT_PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", dir, CKPT_MANIFEST);
    size_t len;
    char *text = fsio_read_small(path, &len);
    if (!text) {
        if (errno == ENOENT) snprintf(why, n, "no manifest %s (the save did not finish)", CKPT_MANIFEST);
        else snprintf(why, n, "cannot read %s: %s", path, strerror(errno));
        return 0;
    }
    char err[256];
    m->doc = json_parse(text, len, err, sizeof err);
    free(text);
    if (!m->doc) { snprintf(why, n, "manifest %s is not valid JSON: %s", path, err); return 0; }
    const JsonValue *r = json_root(m->doc), *v;
    int64_t iv;
    if (!(v = json_get(r, "format")) || v->type != JSON_STRING || strcmp(v->str, CKPT_FORMAT) != 0) {
        snprintf(why, n, "manifest %s: \"format\" is not \"%s\"", path, CKPT_FORMAT);
        goto fail;
    }
    if (!json_as_int64(json_get(r, "version"), &iv) || iv != CKPT_VERSION) {
        snprintf(why, n, "manifest %s: \"version\" is not %d (written by another version of this program?)", path,
                 CKPT_VERSION);
        goto fail;
    }
    if (!json_as_int64(json_get(r, "step"), &m->step) || m->step < 0) {
        snprintf(why, n, "manifest %s: \"step\" is missing or invalid", path);
        goto fail;
    }
    if (!json_as_int64(json_get(r, "world"), &iv) || iv < 1 || iv > 1 << 24) {
        snprintf(why, n, "manifest %s: \"world\" is missing or invalid", path);
        goto fail;
    }
    m->world = (int)iv;
    uint64_t h;
    if (!(v = json_get(r, "model_hash")) || v->type != JSON_STRING || !parse_hex64(v->str, &h)) {
        snprintf(why, n, "manifest %s: \"model_hash\" is missing or not 16 hex digits", path);
        goto fail;
    }
    m->model_hash = h;
    if (!(v = json_get(r, "model")) || v->type != JSON_OBJECT) {
        snprintf(why, n, "manifest %s: \"model\" is missing", path);
        goto fail;
    }
    if (!manifest_read_model(v, &m->model, why, n)) goto fail;
    v = json_get(r, "config");
    m->config_text = v && v->type == JSON_STRING ? v->str : "";
    const JsonValue *files = json_get(r, "files");
    if (!files || files->type != JSON_ARRAY || files->n == 0) {
        snprintf(why, n, "manifest %s: \"files\" is missing or empty", path);
        goto fail;
    }
    m->files = xcalloc((size_t)files->n, sizeof *m->files);
    m->n_files = (int)files->n;
    for (int i = 0; i < (int)files->n; i++) {
        const JsonValue *fo = &files->items[i], *fn = json_get(fo, "name"), *fx = json_get(fo, "xxh64");
        ManifestFile *mf = &m->files[i];
        if (!fn || fn->type != JSON_STRING || strlen(fn->str) >= sizeof mf->name || strchr(fn->str, '/') ||
            !json_as_int64(json_get(fo, "size"), &mf->size) || mf->size < 0 || !fx || fx->type != JSON_STRING ||
            !parse_hex64(fx->str, &mf->xxh64)) {
            snprintf(why, n, "manifest %s: files[%d] needs \"name\", \"size\" and \"xxh64\" (16 hex digits)", path, i);
            goto fail;
        }
        strcpy(mf->name, fn->str);
    }
    // Every rank must have left its file.
    for (int r = 0; r < m->world; r++) {
        char rname[64];
        ckpt_rank_file_name(r, rname, sizeof rname);
        int found = 0;
        for (int i = 0; i < m->n_files && !found; i++) found = strcmp(m->files[i].name, rname) == 0;
        if (!found) { snprintf(why, n, "manifest %s does not list %s (world %d)", path, rname, m->world); goto fail; }
    }
    return 1;
fail:
    manifest_free(m);
    return 0;
}

// ---- verification and selection ----

int ckpt_verify(const char *path, char *why, size_t n) {
    int64_t step;
    int tmp;
    const char *base = base_name(path);
    if (!parse_step_name(base, &step, &tmp)) {
        snprintf(why, n, "%s is not a checkpoint directory name (expected step-<9 digits>)", base);
        return 0;
    }
    if (tmp) { snprintf(why, n, "temporary name: the save did not finish"); return 0; }
    if (!fsio_is_dir(path)) { snprintf(why, n, "no such directory"); return 0; }
    Manifest m;
    if (!manifest_read(path, &m, why, n)) return 0;
    int ok = 0;
    if (m.step != step) {
        snprintf(why, n, "manifest says step %lld but the directory is step %lld", (long long)m.step, (long long)step);
        goto done;
    }
    for (int i = 0; i < m.n_files; i++) {
        const ManifestFile *f = &m.files[i];
        char fp[CKPT_PATH_MAX];
        snprintf(fp, sizeof fp, "%s/%s", path, f->name);
        struct stat st;
        if (stat(fp, &st) != 0) { snprintf(why, n, "%s is missing", f->name); goto done; }
        if ((int64_t)st.st_size != f->size) {
            snprintf(why, n, "%s has %lld bytes, the manifest says %lld (%s)", f->name, (long long)st.st_size,
                     (long long)f->size, (int64_t)st.st_size < f->size ? "truncated" : "overwritten");
            goto done;
        }
    }
    // Sizes first (cheap) for every file, then the checksums (a full read).
    for (int i = 0; i < m.n_files; i++) {
        const ManifestFile *f = &m.files[i];
        char fp[CKPT_PATH_MAX];
        snprintf(fp, sizeof fp, "%s/%s", path, f->name);
        uint64_t h;
        int64_t size;
        if (xxh64_file(fp, &h, &size) != 0) { snprintf(why, n, "cannot read %s: %s", f->name, strerror(errno)); goto done; }
        if (size != f->size || h != f->xxh64) {
            snprintf(why, n, "checksum mismatch in %s (xxh64 %016llx, the manifest says %016llx): the file is corrupt",
                     f->name, (unsigned long long)h, (unsigned long long)f->xxh64);
            goto done;
        }
    }
    ok = 1;
done:
    manifest_free(&m);
    return ok;
}

typedef struct { int64_t step; int tmp; char name[256]; } Entry;

static int entry_desc(const void *a, const void *b) {
    const Entry *x = a, *y = b;
    if (x->step != y->step) return x->step < y->step ? 1 : -1;
    return x->tmp - y->tmp;   // the final name before a .tmp of the same step
}

// The step-* entries of root, newest first. Returns the count (0 when root does not exist).
static int list_entries(const char *root, Entry **out) {
    *out = NULL;
    DIR *d = opendir(root);
    if (!d) {
        if (errno == ENOENT) return 0;
        die("cannot list checkpoint directory %s: %s", root, strerror(errno));
    }
    int n = 0, cap = 0;
    struct dirent *e;
    while ((errno = 0, e = readdir(d)) != NULL) {
        Entry en;
        if (strlen(e->d_name) >= sizeof en.name || !parse_step_name(e->d_name, &en.step, &en.tmp)) continue;
        strcpy(en.name, e->d_name);
        if (n == cap) { cap = cap ? 2 * cap : 16; *out = xrealloc(*out, (size_t)cap * sizeof **out); }
        (*out)[n++] = en;
    }
    if (errno != 0) die("cannot list checkpoint directory %s: %s", root, strerror(errno));
    if (closedir(d) != 0) die("closedir %s: %s", root, strerror(errno));
    if (n) qsort(*out, (size_t)n, sizeof **out, entry_desc);
    return n;
}

int ckpt_find_latest(const char *root, char *path, size_t n) {
    Entry *es;
    int ne = list_entries(root, &es), found = 0;
    for (int i = 0; i < ne && !found; i++) {
        char p[CKPT_PATH_MAX], why[1024];
        snprintf(p, sizeof p, "%s/%s", root, es[i].name);
        if (ckpt_verify(p, why, sizeof why)) {
            snprintf(path, n, "%s", p);
            found = 1;
        } else {
            log_warn("checkpoint %s is not usable: %s; falling back to an older one", p, why);
        }
    }
    free(es);
    return found;
}

int ckpt_resolve_resume(const char *root, const char *resume, char *path, size_t n) {
    if (!resume || !resume[0] || strcmp(resume, "none") == 0) return 0;
    if (strcmp(resume, "auto") == 0) {
        if (ckpt_find_latest(root, path, n)) {
            log_info("resume: newest complete checkpoint is %s", path);
            return 1;
        }
        log_info("resume auto: no complete checkpoint in %s, starting fresh", root);
        return 0;
    }
    char why[1024];
    if (!ckpt_verify(resume, why, sizeof why)) die("--resume %s: not a usable checkpoint: %s", resume, why);
    snprintf(path, n, "%s", resume);
    return 1;
}

// ---- retention ----

void ckpt_retain(const char *root, int64_t current_step, int keep_last, int keep_every) {
    Entry *es;
    int ne = list_entries(root, &es), kept = 0, warned_newer = 0;
    for (int i = 0; i < ne; i++) {
        char p[CKPT_PATH_MAX];
        snprintf(p, sizeof p, "%s/%s", root, es[i].name);
        if (es[i].tmp) { fsio_rmtree(p); continue; }   // an unfinished save (ours was renamed already)
        if (es[i].step > current_step) {
            if (!warned_newer++)
                log_warn("checkpoint %s is newer than the one just saved (step %lld): it is from an earlier run past "
                         "this resume point and is kept; --resume auto prefers it while it verifies", p,
                         (long long)current_step);
            continue;
        }
        char manifest[CKPT_PATH_MAX + 16];
        snprintf(manifest, sizeof manifest, "%s/%s", p, CKPT_MANIFEST);
        int complete = fsio_exists(manifest);
        int keep = complete && (kept < keep_last || (keep_every > 0 && es[i].step % keep_every == 0));
        if (es[i].step == current_step) keep = 1;
        if (keep) { kept += complete; continue; }
        // Rename first, so that a crash in the middle of the removal never leaves a half-deleted directory under a
        // checkpoint name (it would merely fail verification, but a name that no reader looks at is cleaner).
        char del[CKPT_PATH_MAX + 16];
        snprintf(del, sizeof del, "%s.deleting", p);
        fsio_rmtree(del);
        fsio_rename(p, del);
        fsio_rmtree(del);
    }
    free(es);
    // Leftovers of removals interrupted by a crash.
    DIR *d = opendir(root);
    if (!d) die("cannot list checkpoint directory %s: %s", root, strerror(errno));
    struct dirent *e;
    char **stale = NULL;
    int ns = 0;
    while ((e = readdir(d)) != NULL) {
        size_t l = strlen(e->d_name);
        if (strncmp(e->d_name, "step-", 5) == 0 && l > 9 && strcmp(e->d_name + l - 9, ".deleting") == 0) {
            stale = xrealloc(stale, (size_t)(ns + 1) * sizeof *stale);
            stale[ns++] = xstrdup(e->d_name);
        }
    }
    if (closedir(d) != 0) die("closedir %s: %s", root, strerror(errno));
    for (int i = 0; i < ns; i++) {
        char p[CKPT_PATH_MAX];
        snprintf(p, sizeof p, "%s/%s", root, stale[i]);
        fsio_rmtree(p);
        free(stale[i]);
    }
    free(stale);
}

// ---- saving ----

static void barrier(const CkptOptions *o) {
    if (o->barrier) o->barrier(o->barrier_ctx);
}

// Checksums a file this rank wrote and leaves the "<hex> <size>" note next to it for rank 0. The note needs no
// fsync: it only has to be visible to rank 0 after the barrier; after a crash the whole .tmp directory is discarded.
static void write_note(const char *path) {
    uint64_t h;
    int64_t size;
    if (xxh64_file(path, &h, &size) != 0) die("cannot read back %s: %s", path, strerror(errno));
    char note[CKPT_PATH_MAX], text[64];
    snprintf(note, sizeof note, "%s%s", path, CKPT_SUM_SUFFIX);
    int len = snprintf(text, sizeof text, "%016llx %lld\n", (unsigned long long)h, (long long)size);
    fsio_write_file(note, text, (size_t)len, 0);
}

static int name_cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

// Rank 0, after every rank wrote its files: manifest, rename, retention.
static void finalize(const CkptOptions *o, const CkptRankState *rs, const char *tmp, const char *final,
                     unsigned long long model_hash) {
    for (int r = 0; r < rs->world; r++) {
        char name[64], note[2 * CKPT_PATH_MAX];
        ckpt_rank_file_name(r, name, sizeof name);
        snprintf(note, sizeof note, "%s/%s%s", tmp, name, CKPT_SUM_SUFFIX);
        if (!fsio_exists(note)) die("checkpoint %s: rank %d did not finish writing %s", tmp, r, name);
    }
    DIR *d = opendir(tmp);
    if (!d) die("cannot list %s: %s", tmp, strerror(errno));
    char **notes = NULL;
    int nn = 0;
    struct dirent *e;
    size_t sl = strlen(CKPT_SUM_SUFFIX);
    while ((e = readdir(d)) != NULL) {
        size_t l = strlen(e->d_name);
        if (l > sl && strcmp(e->d_name + l - sl, CKPT_SUM_SUFFIX) == 0) {
            notes = xrealloc(notes, (size_t)(nn + 1) * sizeof *notes);
            notes[nn++] = xstrdup(e->d_name);
        }
    }
    if (closedir(d) != 0) die("closedir %s: %s", tmp, strerror(errno));
    qsort(notes, (size_t)nn, sizeof *notes, name_cmp);

    JsonBuf b = {0};
    json_buf_printf(&b, "{\n  \"format\": \"%s\",\n  \"version\": %d,\n  \"step\": %lld,\n  \"world\": %d,\n"
                    "  \"tokens\": ", CKPT_FORMAT, CKPT_VERSION, (long long)rs->step, rs->world);
    json_buf_double(&b, rs->tokens);
    json_buf_printf(&b, ",\n  \"model_hash\": \"%016llx\",\n  \"model\": ", model_hash);
    manifest_write_model(&b, o->model);
    json_buf_printf(&b, ",\n  \"files\": [");
    int64_t total = 0;
    for (int i = 0; i < nn; i++) {
        char np[2 * CKPT_PATH_MAX], fname[CKPT_PATH_MAX];
        snprintf(np, sizeof np, "%s/%s", tmp, notes[i]);
        snprintf(fname, sizeof fname, "%.*s", (int)(strlen(notes[i]) - sl), notes[i]);
        char *text = fsio_read_small(np, NULL);
        if (!text) die("cannot read %s: %s", np, strerror(errno));
        unsigned long long h;
        long long size;
        if (sscanf(text, "%16llx %lld", &h, &size) != 2) die("checkpoint note %s is malformed: \"%s\"", np, text);
        free(text);
        json_buf_printf(&b, "%s\n    {\"name\": ", i ? "," : "");
        json_buf_string(&b, fname);
        json_buf_printf(&b, ", \"size\": %lld, \"xxh64\": \"%016llx\"}", size, h);
        total += size;
        if (unlink(np) != 0) die("cannot remove %s: %s", np, strerror(errno));
        free(notes[i]);
    }
    free(notes);
    json_buf_printf(&b, "\n  ],\n  \"config\": ");
    json_buf_string(&b, o->config_text ? o->config_text : "");
    json_buf_printf(&b, "\n}\n");
    char mp[2 * CKPT_PATH_MAX];
    snprintf(mp, sizeof mp, "%s/%s", tmp, CKPT_MANIFEST);
    // Inside the .tmp directory the manifest needs no tmp + rename of its own: the directory's rename is the commit.
    fsio_write_file(mp, b.s, b.len, 1);
    fsio_fsync_path(tmp);   // every rank's file entries and the manifest's, before the rename makes them count
    json_buf_free(&b);

    char old[CKPT_PATH_MAX + 16];
    snprintf(old, sizeof old, "%s.deleting", final);
    if (fsio_exists(final)) {
        // The same step saved again (a resumed run reaching it a second time): replace it.
        fsio_rmtree(old);
        fsio_rename(final, old);
    }
    fsio_rename(tmp, final);
    fsio_rmtree(old);
    log_info("checkpoint %s saved (%.1f MB in %d files)", final, total / 1e6, nn);
    ckpt_retain(o->root, rs->step, o->keep_last, o->keep_every);
}

static void check_blob_name(const char *name) {
    CHECK(name && name[0], "checkpoint state blob without a name");
    for (const char *c = name; *c; c++)
        CHECK((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || *c == '_',
              "checkpoint state blob name \"%s\": use letters, digits and '_'", name);
}

void ckpt_save(const CkptOptions *o, const CkptStage *stage, const CkptRankState *rs) {
    CHECK(rs->world >= 1 && rs->rank >= 0 && rs->rank < rs->world, "ckpt_save: rank %d of world %d", rs->rank,
          rs->world);
    CHECK(rs->step >= 0 && rs->step <= 999999999LL, "ckpt_save: step %lld does not fit 9 digits", (long long)rs->step);
    CHECK(o->keep_last >= 1, "checkpoint.keep_last must be >= 1 (got %d)", o->keep_last);
    CHECK(rs->n_blobs >= 0 && rs->n_blobs <= CKPT_MAX_BLOBS, "ckpt_save: %d blobs (max %d)", rs->n_blobs,
          CKPT_MAX_BLOBS);
    for (int i = 0; i < rs->n_blobs; i++) check_blob_name(rs->blobs[i].name);
    char final[CKPT_PATH_MAX], tmp[CKPT_PATH_MAX + 8];
    ckpt_path(o->root, rs->step, final, sizeof final);
    snprintf(tmp, sizeof tmp, "%s.tmp", final);
    unsigned long long model_hash = config_model_hash(o->model);

    if (rs->rank == 0) {
        fsio_mkdirs(o->root);
        fsio_rmtree(tmp);   // a stale attempt at the same step
        fsio_mkdir(tmp);   // no fsync: a lost .tmp is harmless, and the final rename is fsync'd
    }
    barrier(o);
    char path[CKPT_PATH_MAX + 80], name[64];
    if (stage) {
        ckpt_stage_file_name(stage->stage, stage->ep_part, name, sizeof name);
        snprintf(path, sizeof path, "%s/%s", tmp, name);
        ckpt_h5_write_stage(path, stage, rs->step, model_hash);
        write_note(path);
    }
    ckpt_rank_file_name(rs->rank, name, sizeof name);
    snprintf(path, sizeof path, "%s/%s", tmp, name);
    ckpt_h5_write_rank(path, rs, model_hash);
    write_note(path);
    if (rs->rank != 0) fsio_fsync_path(tmp);   // this rank's entries (rank 0 fsyncs the directory after the manifest)
    barrier(o);
    if (rs->rank == 0) finalize(o, rs, tmp, final, model_hash);
    barrier(o);
}

// ---- loading ----

struct Ckpt {
    char dir[CKPT_PATH_MAX];
    Manifest m;
    char **stage_names;
    int n_stage;
    CkptStageIndex ix;
    int ix_open;
};

Ckpt *ckpt_open(const char *path) {
    Ckpt *c = xcalloc(1, sizeof *c);
    snprintf(c->dir, sizeof c->dir, "%s", path);
    char why[1024];
    if (!manifest_read(path, &c->m, why, sizeof why)) die("checkpoint %s: %s", path, why);
    for (int i = 0; i < c->m.n_files; i++) {
        if (strncmp(c->m.files[i].name, "stage-", 6) != 0) continue;
        c->stage_names = xrealloc(c->stage_names, (size_t)(c->n_stage + 1) * sizeof *c->stage_names);
        c->stage_names[c->n_stage++] = c->m.files[i].name;
    }
    return c;
}

void ckpt_close(Ckpt *c) {
    if (!c) return;
    if (c->ix_open) ckpt_h5_index_close(&c->ix);
    manifest_free(&c->m);
    free(c->stage_names);
    free(c);
}

const char *ckpt_dir(const Ckpt *c) { return c->dir; }
int64_t ckpt_step(const Ckpt *c) { return c->m.step; }
int ckpt_world(const Ckpt *c) { return c->m.world; }
unsigned long long ckpt_model_hash(const Ckpt *c) { return c->m.model_hash; }
const char *ckpt_config_text(const Ckpt *c) { return c->m.config_text; }
void ckpt_model_config(const Ckpt *c, ModelConfig *out) { *out = c->m.model; }

void ckpt_check_model(const Ckpt *c, const ModelConfig *m) {
    unsigned long long h = config_model_hash(m);
    if (h == c->m.model_hash) return;
    JsonBuf diff = {0};
    json_buf_printf(&diff, "%s", "");
    for (int i = 0; i < config_n_keys; i++) {
        const ConfigKey *k = &config_keys[i];
        if (strcmp(k->section, "model") != 0) continue;
        char a[256], b[256];
        model_key_text(&c->m.model, k, a, sizeof a);
        model_key_text(m, k, b, sizeof b);
        if (strcmp(a, b) != 0) json_buf_printf(&diff, "\n  model.%s: checkpoint %s, config %s", k->name, a, b);
    }
    die("checkpoint %s was saved for another model: model hash %016llx in the checkpoint, %016llx for this config%s",
        c->dir, c->m.model_hash, h, diff.len ? diff.s : " (no key differs: the checkpoint's manifest is inconsistent)");
}

static void index_ensure(Ckpt *c) {
    if (c->ix_open) return;
    ckpt_h5_index_open(&c->ix, c->dir, c->stage_names, c->n_stage);
    c->ix_open = 1;
}

static int find_file(Ckpt *c, const char *name) {
    index_ensure(c);
    int f = ckpt_h5_index_find(&c->ix, name);
    if (f < 0)
        die("checkpoint %s: tensor %s is in none of its %d stage file(s) (saved for another model or layout?)", c->dir,
            name, c->n_stage);
    return f;
}

// Streams one table tensor of `group` from file f into backend memory base (esize-byte elements).
static void load_tensor(Ckpt *c, int f, const char *group, const ParamInfo *p, const Backend *be, void *base,
                        size_t esize, hid_t mtype, void *host, int64_t chunk) {
    int64_t dims[3];
    int nd = ckpt_h5_dims(&c->ix, f, group, p->name, dims);
    if (nd != p->ndim || dims[0] != p->shape[0] || (nd == 2 && dims[1] != p->shape[1]))
        die("checkpoint file %s: /%s/%s has shape [%lld%s%lld], the model expects [%lld%s%lld]", c->ix.paths[f], group,
            p->name, (long long)dims[0], nd == 2 ? ", " : "", nd == 2 ? (long long)dims[1] : 0LL,
            (long long)p->shape[0], p->ndim == 2 ? ", " : "", p->ndim == 2 ? (long long)p->shape[1] : 0LL);
    int64_t rows = p->shape[0], cols = p->ndim == 2 ? p->shape[1] : 1;
    int64_t step = chunk / cols > 0 ? chunk / cols : 1;
    for (int64_t r = 0; r < rows; r += step) {
        int64_t nr = rows - r < step ? rows - r : step;
        ckpt_h5_read_rows(&c->ix, f, group, p->name, mtype, r, nr, cols, host);
        be->upload((char *)base + (size_t)(p->offset + r * cols) * esize, host, (size_t)(nr * cols) * esize);
    }
}

void ckpt_load_stage(Ckpt *c, CkptStage *s) {
    const ParamTable *t = s->table;
    index_ensure(c);
    int64_t chunk = (int64_t)1 << 22, max_cols = 1;
    for (int i = 0; i < t->n; i++) if (t->params[i].ndim == 2 && t->params[i].shape[1] > max_cols)
        max_cols = t->params[i].shape[1];
    void *host = xmalloc((size_t)(chunk > max_cols ? chunk : max_cols) * sizeof(float));
    int64_t adam_t = -1;
    int adam_t_file = -1;
    for (int i = 0; i < t->n; i++) {
        const ParamInfo *p = &t->params[i];
        int f = find_file(c, p->name);
        load_tensor(c, f, "params", p, s->be, s->params, 4, H5T_NATIVE_FLOAT, host, chunk);
        load_tensor(c, f, "adam_m", p, s->be, s->adam_m, 2, H5T_NATIVE_UINT16, host, chunk);
        load_tensor(c, f, "adam_v", p, s->be, s->adam_v, 2, H5T_NATIVE_UINT16, host, chunk);
        int64_t ft = ckpt_h5_attr_i64(&c->ix, f, "adam_t");
        if (adam_t < 0) { adam_t = ft; adam_t_file = f; }
        else if (ft != adam_t)
            die("checkpoint %s: stage files disagree on the optimizer step: %s has adam_t %lld, %s has %lld", c->dir,
                c->ix.paths[adam_t_file], (long long)adam_t, c->ix.paths[f], (long long)ft);
    }
    free(host);
    s->adam_t = adam_t < 0 ? 0 : adam_t;

    int n_moe = ckpt_table_moe_layers(t, NULL, 0);
    CHECK(s->n_bias == n_moe, "ckpt_load_stage: %d selection-bias rows given but the table has %d MoE layers",
          s->n_bias, n_moe);
    int *layers = xmalloc((size_t)(n_moe ? n_moe : 1) * sizeof(int));
    ckpt_table_moe_layers(t, layers, n_moe);
    for (int i = 0; i < n_moe; i++) {
        const ParamInfo *router = NULL;
        for (int j = 0; j < t->n && !router; j++)
            if (t->params[j].kind == PARAM_ROUTER && t->params[j].layer == layers[i]) router = &t->params[j];
        ckpt_read_bias(c, layers[i], s->bias[i], (int)router->shape[0]);
    }
    free(layers);
}

void ckpt_read_param_rows(Ckpt *c, const char *name, int64_t row0, int64_t nrows, int64_t cols, float *dst) {
    int f = find_file(c, name);
    ckpt_h5_read_rows(&c->ix, f, "params", name, H5T_NATIVE_FLOAT, row0, nrows, cols, dst);
}

void ckpt_read_bias(Ckpt *c, int layer, float *dst, int n_experts) {
    char name[PARAMS_NAME_MAX];
    ckpt_bias_name(layer, name, sizeof name);
    int f = find_file(c, name);
    int64_t dims[3];
    int nd = ckpt_h5_dims(&c->ix, f, "moe_bias", name, dims);
    if (nd != 1 || dims[0] != n_experts)
        die("checkpoint file %s: /moe_bias/%s has %lld values, the model has %d experts", c->ix.paths[f], name,
            (long long)dims[0], n_experts);
    ckpt_h5_read_rows(&c->ix, f, "moe_bias", name, H5T_NATIVE_FLOAT, 0, n_experts, 1, dst);
}

void ckpt_load_rank(Ckpt *c, CkptRankState *rs) {
    int src = rs->rank;
    if (rs->world != c->m.world) {
        src = rs->rank % c->m.world;
        if (rs->rank == 0)
            log_info("checkpoint %s was saved by %d processes, resuming with %d: rank r reads the state of rank "
                     "r %% %d (the data position is global; see train/ckpt.h)", c->dir, c->m.world, rs->world,
                     c->m.world);
    }
    char name[64], path[CKPT_PATH_MAX + 80];
    ckpt_rank_file_name(src, name, sizeof name);
    snprintf(path, sizeof path, "%s/%s", c->dir, name);
    ckpt_h5_read_rank(path, rs);
    if (rs->step != c->m.step)
        die("checkpoint file %s: step %lld, but the manifest says %lld", path, (long long)rs->step,
            (long long)c->m.step);
}
