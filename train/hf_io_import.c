// Hugging Face import: config.json check, index / safetensors headers, per-tensor pread with F32 / BF16 / FP8
// (128x128 block scales) conversion (see hf_io.h).
#include "train/hf_io.h"
#include "train/check.h"
#include "train/ckpt.h"
#include "train/fsio.h"
#include "train/json_util.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define HF_CHUNK_ELEMS ((int64_t)1 << 22)
#define HF_MAX_HEADER ((uint64_t)100 << 20)   // safetensors' own limit is 100 MB
#define FP8_BLOCK 128

typedef enum { ST_F32, ST_BF16, ST_F8E4M3 } StDtype;

typedef struct {
    char *file;          // name inside the directory
    char *path;
    int fd;              // -1 until the header is read
    int64_t data_start, data_len;
    Json *header;
} Shard;

struct HfDir {
    char *dir;
    Json *config;
    Json *index;
    const JsonValue *weight_map;   // NULL: one model.safetensors
    char **map_keys;               // weight_map as an open-addressing hash: tensor name -> shard (a 671B index has
    int *map_shard, map_cap;       // ~91k entries; linear json_get per tensor would be quadratic)
    Shard *shards;
    int n_shards;
    uint8_t *raw;                  // pread buffer
    size_t raw_cap;
};

typedef struct {
    const Shard *shard;
    StDtype dtype;
    int ndim;
    int64_t shape[8];
    int64_t begin, end;   // absolute file offsets
} StTensor;

static const char *st_name(StDtype t) { return t == ST_F32 ? "F32" : t == ST_BF16 ? "BF16" : "F8_E4M3"; }
static int st_size(StDtype t) { return t == ST_F32 ? 4 : t == ST_BF16 ? 2 : 1; }

// ---- opening ----

static char *join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = xmalloc(n);
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static Json *read_json(const char *path) {
    size_t len;
    char *text = fsio_read_small(path, &len);
    if (!text) die("%s: cannot read: %s", path, strerror(errno));
    char err[256];
    Json *j = json_parse(text, len, err, sizeof err);
    if (!j) die("%s: invalid JSON: %s", path, err);
    free(text);
    if (json_root(j)->type != JSON_OBJECT)
        die("%s: expected a JSON object, found %s", path, json_type_name(json_root(j)->type));
    return j;
}

static uint64_t name_hash(const char *s) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ULL;
    return h;
}

// Shard of tensor `name` by the index, or -1.
static int map_find(const HfDir *h, const char *name) {
    size_t mask = (size_t)h->map_cap - 1, i = (size_t)name_hash(name) & mask;
    for (; h->map_keys[i]; i = (i + 1) & mask)
        if (strcmp(h->map_keys[i], name) == 0) return h->map_shard[i];
    return -1;
}

static int shard_add(HfDir *h, const char *file) {
    for (int i = 0; i < h->n_shards; i++) if (strcmp(h->shards[i].file, file) == 0) return i;
    CHECK(!strchr(file, '/') && strcmp(file, "..") != 0, "%s/model.safetensors.index.json: shard name \"%s\" is not a "
          "file in the directory", h->dir, file);
    h->shards = xrealloc(h->shards, (size_t)(h->n_shards + 1) * sizeof *h->shards);
    Shard *s = &h->shards[h->n_shards];
    memset(s, 0, sizeof *s);
    s->file = xstrdup(file);
    s->path = join(h->dir, file);
    s->fd = -1;
    return h->n_shards++;
}

HfDir *hf_open(const char *dir) {
    HfDir *h = xcalloc(1, sizeof *h);
    h->dir = xstrdup(dir);
    if (!fsio_is_dir(dir)) die("%s: not a directory (expected a Hugging Face model directory)", dir);
    char *p = join(dir, "config.json");
    h->config = read_json(p);
    free(p);
    p = join(dir, "model.safetensors.index.json");
    if (fsio_exists(p)) {
        h->index = read_json(p);
        h->weight_map = json_get(json_root(h->index), "weight_map");
        if (!h->weight_map || h->weight_map->type != JSON_OBJECT) die("%s: \"weight_map\" is missing", p);
        h->map_cap = 16;
        while ((size_t)h->map_cap < 2 * h->weight_map->n) h->map_cap *= 2;
        h->map_keys = xcalloc((size_t)h->map_cap, sizeof *h->map_keys);
        h->map_shard = xcalloc((size_t)h->map_cap, sizeof *h->map_shard);
        for (size_t i = 0; i < h->weight_map->n; i++) {
            const JsonValue *v = &h->weight_map->items[i];
            const char *key = h->weight_map->keys[i];
            if (v->type != JSON_STRING) die("%s: weight_map[\"%s\"] is not a file name", p, key);
            if (map_find(h, key) >= 0) die("%s: tensor %s is listed twice in weight_map", p, key);
            size_t mask = (size_t)h->map_cap - 1, j = (size_t)name_hash(key) & mask;
            while (h->map_keys[j]) j = (j + 1) & mask;
            h->map_keys[j] = h->weight_map->keys[i];   // owned by the parsed index
            h->map_shard[j] = shard_add(h, v->str);
        }
    } else {
        char *single = join(dir, "model.safetensors");
        if (!fsio_exists(single))
            die("%s: neither model.safetensors.index.json nor model.safetensors is there", dir);
        free(single);
        shard_add(h, "model.safetensors");
    }
    free(p);
    return h;
}

void hf_close(HfDir *h) {
    if (!h) return;
    for (int i = 0; i < h->n_shards; i++) {
        Shard *s = &h->shards[i];
        if (s->fd >= 0) close(s->fd);
        json_free(s->header);
        free(s->file);
        free(s->path);
    }
    free(h->shards);
    json_free(h->config);
    json_free(h->index);
    free(h->map_keys);
    free(h->map_shard);
    free(h->raw);
    free(h->dir);
    free(h);
}

static void pread_all(const Shard *s, void *buf, size_t n, int64_t off, const char *what) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(s->fd, (char *)buf + got, n - got, (off_t)(off + (int64_t)got));
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) die("%s: read of %s failed: %s", s->path, what, strerror(errno));
        if (r == 0) die("%s: file ends inside %s (truncated?)", s->path, what);
        got += (size_t)r;
    }
}

static void shard_load(Shard *s) {
    if (s->fd >= 0) return;
    s->fd = open(s->path, O_RDONLY | O_CLOEXEC);
    if (s->fd < 0) die("%s: cannot open: %s", s->path, strerror(errno));
    struct stat st;
    if (fstat(s->fd, &st) != 0) die("%s: cannot stat: %s", s->path, strerror(errno));
    uint8_t len8[8];
    if (st.st_size < 8) die("%s: %lld bytes: too short for a safetensors file", s->path, (long long)st.st_size);
    pread_all(s, len8, 8, 0, "the header length");
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | len8[i];
    if (hl < 2 || hl > HF_MAX_HEADER || hl > (uint64_t)st.st_size - 8)
        die("%s: header length %llu is not plausible for a %lld-byte safetensors file", s->path,
            (unsigned long long)hl, (long long)st.st_size);
    char *text = xmalloc(hl);
    pread_all(s, text, hl, 8, "the header");
    char err[256];
    s->header = json_parse(text, hl, err, sizeof err);
    if (!s->header) die("%s: safetensors header: %s", s->path, err);
    free(text);
    if (json_root(s->header)->type != JSON_OBJECT) die("%s: safetensors header is not a JSON object", s->path);
    s->data_start = 8 + (int64_t)hl;
    s->data_len = (int64_t)st.st_size - s->data_start;
}

// Finds tensor `name`: 1 and *t, or 0 when the directory does not have it.
static int lookup(HfDir *h, const char *name, StTensor *t) {
    int si = 0;
    if (h->weight_map && (si = map_find(h, name)) < 0) return 0;
    Shard *s = &h->shards[si];
    shard_load(s);
    const JsonValue *e = json_get(json_root(s->header), name);
    if (!e) {
        if (h->weight_map) die("%s: tensor %s is not in it, but the index maps it there", s->path, name);
        return 0;
    }
    const JsonValue *dt = json_get(e, "dtype"), *shape = json_get(e, "shape"), *off = json_get(e, "data_offsets");
    if (!dt || dt->type != JSON_STRING || !shape || shape->type != JSON_ARRAY || shape->n > 8 || !off ||
        off->type != JSON_ARRAY || off->n != 2)
        die("%s: header entry of %s needs \"dtype\", \"shape\" and \"data_offsets\" [begin, end]", s->path, name);
    memset(t, 0, sizeof *t);
    t->shard = s;
    if (strcmp(dt->str, "F32") == 0) t->dtype = ST_F32;
    else if (strcmp(dt->str, "BF16") == 0) t->dtype = ST_BF16;
    else if (strcmp(dt->str, "F8_E4M3") == 0) t->dtype = ST_F8E4M3;
    else die("%s: tensor %s has dtype %s; supported: F32, BF16, F8_E4M3 (with weight_scale_inv)", s->path, name,
             dt->str);
    int64_t numel = 1;
    t->ndim = (int)shape->n;
    for (int i = 0; i < (int)shape->n; i++) {
        if (!json_as_int64(&shape->items[i], &t->shape[i]) || t->shape[i] < 0)
            die("%s: tensor %s: shape[%d] is not a non-negative integer", s->path, name, i);
        numel *= t->shape[i];
    }
    int64_t b, en;
    if (!json_as_int64(&off->items[0], &b) || !json_as_int64(&off->items[1], &en) || b < 0 || en < b || en > s->data_len)
        die("%s: tensor %s: data_offsets outside the %lld data bytes of the file (truncated?)", s->path, name,
            (long long)s->data_len);
    if (en - b != numel * st_size(t->dtype))
        die("%s: tensor %s: data_offsets span %lld bytes, its shape and dtype need %lld", s->path, name,
            (long long)(en - b), (long long)(numel * st_size(t->dtype)));
    t->begin = s->data_start + b;
    t->end = s->data_start + en;
    return 1;
}

int hf_has(HfDir *h, const char *name) {
    StTensor t;
    return lookup(h, name, &t);
}

// ---- conversion ----

static float f8e4m3_to_f32(uint8_t b) {
    // E4M3 "fn" (torch.float8_e4m3fn): bias 7, no infinities, S.1111.111 is NaN; max 448.
    int sign = b >> 7, e = (b >> 3) & 0xF, m = b & 7;
    if (e == 0xF && m == 7) return NAN;
    float v = e == 0 ? ldexpf((float)m / 8.0f, -6) : ldexpf(1.0f + (float)m / 8.0f, e - 7);
    return sign ? -v : v;
}

static void *raw_buf(HfDir *h, size_t n) {
    if (n > h->raw_cap) {
        free(h->raw);
        h->raw = xmalloc(n);
        h->raw_cap = n;
    }
    return h->raw;
}

static void fmt_shape(char *buf, size_t n, const int64_t *shape, int ndim) {
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && k < n; i++) k += (size_t)snprintf(buf + k, n - k, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (k < n) snprintf(buf + k, n - k, "]");
}

// Reads elements [e0, e0 + n) of an F32 / BF16 tensor as floats.
static void read_plain(HfDir *h, const StTensor *t, const char *name, int64_t e0, int64_t n, float *dst) {
    int es = st_size(t->dtype);
    void *raw = raw_buf(h, (size_t)(n * es));
    pread_all(t->shard, raw, (size_t)(n * es), t->begin + e0 * es, name);
    if (t->dtype == ST_F32) memcpy(dst, raw, (size_t)n * 4);
    else for (int64_t i = 0; i < n; i++) dst[i] = bf16_to_f32(((const uint16_t *)raw)[i]);
}

void hf_read_rows(HfDir *h, const char *name, int64_t rows, int64_t cols, int64_t row0, int64_t nrows, float *dst) {
    StTensor t;
    if (!lookup(h, name, &t))
        die("%s: tensor %s is missing (%s)", h->dir, name, h->weight_map ? "not in model.safetensors.index.json"
                                                                          : "not in model.safetensors");
    int64_t want[2] = {rows, cols};
    int want_nd = cols ? 2 : 1;
    if (t.ndim != want_nd || t.shape[0] != rows || (want_nd == 2 && t.shape[1] != cols)) {
        char a[128], b[128];
        fmt_shape(a, sizeof a, t.shape, t.ndim);
        fmt_shape(b, sizeof b, want, want_nd);
        die("%s: tensor %s has shape %s, the model expects %s", t.shard->path, name, a, b);
    }
    int64_t c = cols ? cols : 1;
    CHECK(row0 >= 0 && nrows >= 0 && row0 + nrows <= rows, "hf_read_rows: rows [%lld, %lld) of %s outside [0, %lld)",
          (long long)row0, (long long)(row0 + nrows), name, (long long)rows);
    if (t.dtype != ST_F8E4M3) {
        read_plain(h, &t, name, row0 * c, nrows * c, dst);
    } else {
        if (want_nd != 2) die("%s: tensor %s is F8_E4M3 but 1-D: block scales need a matrix", t.shard->path, name);
        char sname[PARAMS_NAME_MAX + 32];
        snprintf(sname, sizeof sname, "%s_scale_inv", name);
        StTensor st;
        if (!lookup(h, sname, &st))
            die("%s: tensor %s is F8_E4M3 but its block scales %s are missing", t.shard->path, name, sname);
        int64_t br = (rows + FP8_BLOCK - 1) / FP8_BLOCK, bc = (cols + FP8_BLOCK - 1) / FP8_BLOCK;
        if (st.dtype == ST_F8E4M3 || st.ndim != 2 || st.shape[0] != br || st.shape[1] != bc) {
            char a[128];
            fmt_shape(a, sizeof a, st.shape, st.ndim);
            die("%s: %s has shape %s dtype %s; a [%lld, %lld] weight needs F32 or BF16 scales of shape [%lld, %lld] "
                "(128x128 blocks)", st.shard->path, sname, a, st_name(st.dtype), (long long)rows, (long long)cols,
                (long long)br, (long long)bc);
        }
        // Scale rows covering [row0, row0 + nrows), then the FP8 values.
        int64_t sb0 = row0 / FP8_BLOCK, sb1 = (row0 + nrows + FP8_BLOCK - 1) / FP8_BLOCK;
        float *scale = xmalloc((size_t)((sb1 - sb0) * bc) * sizeof(float));
        read_plain(h, &st, sname, sb0 * bc, (sb1 - sb0) * bc, scale);
        const uint8_t *raw = raw_buf(h, (size_t)(nrows * c));
        pread_all(t.shard, (void *)raw, (size_t)(nrows * c), t.begin + row0 * c, name);
        for (int64_t r = 0; r < nrows; r++) {
            const float *srow = scale + ((row0 + r) / FP8_BLOCK - sb0) * bc;
            for (int64_t j = 0; j < c; j++) dst[r * c + j] = f8e4m3_to_f32(raw[r * c + j]) * srow[j / FP8_BLOCK];
        }
        free(scale);
    }
    for (int64_t i = 0; i < nrows * c; i++)
        if (!isfinite(dst[i]))
            die("%s: tensor %s has a non-finite value (%g) at element %lld", t.shard->path, name, dst[i],
                (long long)(row0 * c + i));
}

// ---- config.json ----

typedef struct {
    const char *path;
    JsonBuf diff;
} Diff;

static void diff_add(Diff *d, const char *hf, const char *file_val, const char *ours, const char *our_val) {
    json_buf_printf(&d->diff, "\n  %s = %s in config.json, model.%s = %s in the config", hf, file_val, ours, our_val);
}

static const JsonValue *cfg_get(const HfDir *h, const char *key) { return json_get(json_root(h->config), key); }

static void cmp_int(Diff *d, const JsonValue *v, const char *hf, long ours, const char *our_key) {
    char a[64], b[64];
    int64_t x;
    snprintf(b, sizeof b, "%ld", ours);
    if (!v) { diff_add(d, hf, "(missing)", our_key, b); return; }
    if (!json_as_int64(v, &x)) {
        if (v->type == JSON_NUMBER) snprintf(a, sizeof a, "%.17g", v->number);
        diff_add(d, hf, v->type == JSON_NUMBER ? a : json_type_name(v->type), our_key, b);
        return;
    }
    snprintf(a, sizeof a, "%lld", (long long)x);
    if (x != ours) diff_add(d, hf, a, our_key, b);
}

static void cmp_num(Diff *d, const JsonValue *v, const char *hf, double ours, const char *our_key) {
    char b[64];
    snprintf(b, sizeof b, "%.9g", ours);
    if (!v) { diff_add(d, hf, "(missing)", our_key, b); return; }
    if (v->type != JSON_NUMBER) { diff_add(d, hf, json_type_name(v->type), our_key, b); return; }
    char a[64];
    snprintf(a, sizeof a, "%.9g", v->number);
    if (fabs(v->number - ours) > 1e-9 * fabs(ours)) diff_add(d, hf, a, our_key, b);
}

void hf_check_config(const HfDir *h, const ModelConfig *mc) {
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", h->dir);
    Diff d = {path, {0}};
    json_buf_printf(&d.diff, "%s", "");
    const JsonValue *v;
    if ((v = cfg_get(h, "model_type")) && (v->type != JSON_STRING || strcmp(v->str, "deepseek_v3") != 0))
        json_buf_printf(&d.diff, "\n  model_type = %s in config.json, expected \"deepseek_v3\"",
                        v->type == JSON_STRING ? v->str : json_type_name(v->type));
    const struct { const char *hf; int ours; const char *key; } ints[] = {
        {"vocab_size", mc->vocab_size, "vocab_size"}, {"hidden_size", mc->dim, "dim"},
        {"intermediate_size", mc->inter_dim, "inter_dim"}, {"moe_intermediate_size", mc->moe_inter_dim, "moe_inter_dim"},
        {"num_hidden_layers", mc->n_layers, "n_layers"}, {"first_k_dense_replace", mc->n_dense_layers, "n_dense_layers"},
        {"num_attention_heads", mc->n_heads, "n_heads"}, {"n_routed_experts", mc->n_routed_experts, "n_routed_experts"},
        {"n_shared_experts", mc->n_shared_experts, "n_shared_experts"},
        {"num_experts_per_tok", mc->n_activated_experts, "n_activated_experts"},
        {"n_group", mc->n_expert_groups, "n_expert_groups"}, {"topk_group", mc->n_limited_groups, "n_limited_groups"},
        {"kv_lora_rank", mc->kv_lora_rank, "kv_lora_rank"}, {"qk_nope_head_dim", mc->qk_nope_head_dim, "qk_nope_head_dim"},
        {"qk_rope_head_dim", mc->qk_rope_head_dim, "qk_rope_head_dim"}, {"v_head_dim", mc->v_head_dim, "v_head_dim"}};
    for (size_t i = 0; i < sizeof ints / sizeof *ints; i++) cmp_int(&d, cfg_get(h, ints[i].hf), ints[i].hf, ints[i].ours, ints[i].key);
    if ((v = cfg_get(h, "num_key_value_heads")) && v->type != JSON_NULL) cmp_int(&d, v, "num_key_value_heads", mc->n_heads, "n_heads");
    v = cfg_get(h, "q_lora_rank");
    if (v && v->type == JSON_NULL) { if (mc->q_lora_rank != 0) { char b[32]; snprintf(b, sizeof b, "%d", mc->q_lora_rank); diff_add(&d, "q_lora_rank", "null", "q_lora_rank", b); } }
    else cmp_int(&d, v, "q_lora_rank", mc->q_lora_rank, "q_lora_rank");
    // MTP: the official name, or transformers 5's; absent means none.
    v = cfg_get(h, "num_nextn_predict_layers");
    if (!v) v = cfg_get(h, "num_mtp_layers");
    if (v) cmp_int(&d, v, v == cfg_get(h, "num_nextn_predict_layers") ? "num_nextn_predict_layers" : "num_mtp_layers",
                   mc->mtp_depth, "mtp_depth");
    else if (mc->mtp_depth != 0) { char b[32]; snprintf(b, sizeof b, "%d", mc->mtp_depth); diff_add(&d, "num_nextn_predict_layers", "(missing: no MTP)", "mtp_depth", b); }
    cmp_num(&d, cfg_get(h, "routed_scaling_factor"), "routed_scaling_factor", mc->route_scale, "route_scale");
    cmp_num(&d, cfg_get(h, "rms_norm_eps"), "rms_norm_eps", mc->norm_eps, "norm_eps");
    // RoPE: the official / transformers 4 layout (rope_theta + rope_scaling) or transformers 5's rope_parameters.
    const JsonValue *rp = cfg_get(h, "rope_parameters"), *rs = cfg_get(h, "rope_scaling");
    const JsonValue *theta = cfg_get(h, "rope_theta");
    if (!theta && rp) theta = json_get(rp, "rope_theta");
    cmp_num(&d, theta, "rope_theta", mc->rope_theta, "rope_theta");
    const JsonValue *scaling = rs && rs->type == JSON_OBJECT ? rs : rp && rp->type == JSON_OBJECT ? rp : NULL;
    const JsonValue *type = scaling ? json_get(scaling, "type") : NULL;
    if (!type && scaling) type = json_get(scaling, "rope_type");
    int yarn = type && type->type == JSON_STRING && strcmp(type->str, "yarn") == 0;
    int plain = !type || (type->type == JSON_STRING && strcmp(type->str, "default") == 0);
    if (!yarn && !plain)
        json_buf_printf(&d.diff, "\n  rope type %s in config.json is not supported (none / default or yarn)",
                        type->type == JSON_STRING ? type->str : json_type_name(type->type));
    else if (yarn != (mc->rope_scaling == ROPE_YARN))
        json_buf_printf(&d.diff, "\n  rope scaling = %s in config.json, model.rope_scaling = %s in the config",
                        yarn ? "yarn" : "none", mc->rope_scaling == ROPE_YARN ? "yarn" : "none");
    else if (yarn) {
        cmp_num(&d, json_get(scaling, "factor"), "rope_scaling.factor", mc->rope_factor, "rope_factor");
        cmp_num(&d, json_get(scaling, "beta_fast"), "rope_scaling.beta_fast", mc->beta_fast, "beta_fast");
        cmp_num(&d, json_get(scaling, "beta_slow"), "rope_scaling.beta_slow", mc->beta_slow, "beta_slow");
        cmp_num(&d, json_get(scaling, "mscale_all_dim"), "rope_scaling.mscale_all_dim", mc->mscale, "mscale");
        cmp_num(&d, json_get(scaling, "mscale"), "rope_scaling.mscale (must equal mscale_all_dim)", mc->mscale, "mscale");
        cmp_int(&d, json_get(scaling, "original_max_position_embeddings"),
                "rope_scaling.original_max_position_embeddings", mc->original_seq_len, "original_seq_len");
    }
    v = cfg_get(h, "scoring_func");
    const char *sf = v && v->type == JSON_STRING ? v->str : "sigmoid";
    if (strcmp(sf, mc->score_func == SCORE_SOFTMAX ? "softmax" : "sigmoid") != 0)
        diff_add(&d, "scoring_func", sf, "score_func", mc->score_func == SCORE_SOFTMAX ? "softmax" : "sigmoid");
    int flag;
    if ((v = cfg_get(h, "norm_topk_prob")) && !(json_as_bool(v, &flag) && flag))
        json_buf_printf(&d.diff, "\n  norm_topk_prob is not true in config.json (this model always normalizes the "
                        "top-k gate weights)");
    if ((v = cfg_get(h, "hidden_act")) && !(v->type == JSON_STRING && strcmp(v->str, "silu") == 0))
        json_buf_printf(&d.diff, "\n  hidden_act is not \"silu\" in config.json");
    if ((v = cfg_get(h, "tie_word_embeddings")) && !(json_as_bool(v, &flag) && !flag))
        json_buf_printf(&d.diff, "\n  tie_word_embeddings is not false in config.json (this model has an untied head)");
    if (d.diff.len) die("%s does not match the model section of the config:%s", path, d.diff.s);
    json_buf_free(&d.diff);
}

// ---- import ----

void hf_import(const char *dir, const ModelConfig *mc, const ParamTable *table, const Backend *be, float *params,
               float **bias, int n_bias) {
    HfDir *h = hf_open(dir);
    hf_check_config(h, mc);
    int64_t max_cols = 1;
    for (int i = 0; i < table->n; i++)
        if (table->params[i].ndim == 2 && table->params[i].shape[1] > max_cols) max_cols = table->params[i].shape[1];
    if (mc->n_routed_experts > max_cols) max_cols = mc->n_routed_experts;
    // Row blocks of FP8 tensors start on 128-row boundaries so each block's scale row is read once.
    int64_t chunk = HF_CHUNK_ELEMS > max_cols * FP8_BLOCK ? HF_CHUNK_ELEMS : max_cols * FP8_BLOCK;
    float *buf = xmalloc((size_t)chunk * sizeof(float));
    int64_t n_values = 0;
    for (int i = 0; i < table->n; i++) {
        const ParamInfo *p = &table->params[i];
        int64_t rows = p->shape[0], cols = p->ndim == 2 ? p->shape[1] : 0, c = cols ? cols : 1;
        int64_t step = chunk / c / FP8_BLOCK * FP8_BLOCK;
        if (step < FP8_BLOCK) step = chunk / c > 0 ? chunk / c : 1;
        for (int64_t r = 0; r < rows; r += step) {
            int64_t nr = rows - r < step ? rows - r : step;
            hf_read_rows(h, p->name, rows, cols, r, nr, buf);
            be->upload(params + p->offset + r * c, buf, (size_t)(nr * c) * sizeof(float));
        }
        n_values += p->numel;
    }
    int n_moe = ckpt_table_moe_layers(table, NULL, 0);
    CHECK(n_bias == n_moe, "hf_import: %d selection-bias rows given but the table has %d MoE layers", n_bias, n_moe);
    int *layers = xmalloc((size_t)(n_moe ? n_moe : 1) * sizeof(int));
    ckpt_table_moe_layers(table, layers, n_moe);
    for (int i = 0; i < n_moe; i++) {
        char name[PARAMS_NAME_MAX];
        snprintf(name, sizeof name, "model.layers.%d.mlp.gate.e_score_correction_bias", layers[i]);
        hf_read_rows(h, name, mc->n_routed_experts, 0, 0, mc->n_routed_experts, bias[i]);
    }
    log_info("imported %d tensors (%.3fM values) and %d selection biases from %s", table->n, n_values / 1e6, n_moe,
             dir);
    free(layers);
    free(buf);
    hf_close(h);
}
