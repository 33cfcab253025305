// Hugging Face export: config.json, safetensors shards and the index (see hf_io.h). Import is in hf_io_import.c.
#include "train/hf_io.h"
#include "train/check.h"
#include "train/ckpt.h"
#include "train/fsio.h"
#include "train/json_util.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define HF_CHUNK_ELEMS ((int64_t)1 << 22)    // 16 MiB of FP32 per row block
#define HF_DEFAULT_SHARD 5000000000LL        // 5 GB

// ---- config.json ----

char *hf_config_json(const ModelConfig *mc, HfDtype dtype) {
    JsonBuf b = {0};
    int yarn = mc->rope_scaling == ROPE_YARN;
    // max_position_embeddings: the context the weights are meant for. For YaRN it is the extended length (the
    // official 671B config: 4096 * 40 = 163840), and transformers checks factor == max_pos / original.
    long max_pos = yarn ? lround(mc->original_seq_len * mc->rope_factor) : mc->original_seq_len;
    json_buf_printf(&b, "{\n  \"architectures\": [\"DeepseekV3ForCausalLM\"],\n  \"model_type\": \"deepseek_v3\",\n");
    json_buf_printf(&b, "  \"attention_bias\": false,\n  \"attention_dropout\": 0.0,\n  \"bos_token_id\": 0,\n"
                    "  \"eos_token_id\": 1,\n  \"ep_size\": 1,\n");
    json_buf_printf(&b, "  \"first_k_dense_replace\": %d,\n  \"hidden_act\": \"silu\",\n  \"hidden_size\": %d,\n",
                    mc->n_dense_layers, mc->dim);
    json_buf_printf(&b, "  \"initializer_range\": ");
    json_buf_double(&b, mc->init_std);
    json_buf_printf(&b, ",\n  \"intermediate_size\": %d,\n  \"kv_lora_rank\": %d,\n  \"max_position_embeddings\": %ld,\n",
                    mc->inter_dim, mc->kv_lora_rank, max_pos);
    json_buf_printf(&b, "  \"moe_intermediate_size\": %d,\n  \"moe_layer_freq\": 1,\n  \"n_group\": %d,\n"
                    "  \"n_routed_experts\": %d,\n  \"n_shared_experts\": %d,\n  \"norm_topk_prob\": true,\n",
                    mc->moe_inter_dim, mc->n_expert_groups, mc->n_routed_experts, mc->n_shared_experts);
    json_buf_printf(&b, "  \"num_attention_heads\": %d,\n  \"num_experts_per_tok\": %d,\n  \"num_hidden_layers\": %d,\n"
                    "  \"num_key_value_heads\": %d,\n  \"num_nextn_predict_layers\": %d,\n", mc->n_heads,
                    mc->n_activated_experts, mc->n_layers, mc->n_heads, mc->mtp_depth);
    if (mc->q_lora_rank > 0) json_buf_printf(&b, "  \"q_lora_rank\": %d,\n", mc->q_lora_rank);
    else json_buf_printf(&b, "  \"q_lora_rank\": null,\n");
    json_buf_printf(&b, "  \"qk_nope_head_dim\": %d,\n  \"qk_rope_head_dim\": %d,\n  \"rms_norm_eps\": ",
                    mc->qk_nope_head_dim, mc->qk_rope_head_dim);
    json_buf_double(&b, mc->norm_eps);
    json_buf_printf(&b, ",\n  \"rope_interleave\": true,\n  \"rope_scaling\": ");
    if (yarn) {
        // Our one mscale plays the official code's role, which is HF's mscale_all_dim with mscale equal to it
        // (tests/fixtures/hf_ref/README.md, "Which mscale").
        json_buf_printf(&b, "{\n    \"beta_fast\": ");
        json_buf_double(&b, mc->beta_fast);
        json_buf_printf(&b, ",\n    \"beta_slow\": ");
        json_buf_double(&b, mc->beta_slow);
        json_buf_printf(&b, ",\n    \"factor\": ");
        json_buf_double(&b, mc->rope_factor);
        json_buf_printf(&b, ",\n    \"mscale\": ");
        json_buf_double(&b, mc->mscale);
        json_buf_printf(&b, ",\n    \"mscale_all_dim\": ");
        json_buf_double(&b, mc->mscale);
        json_buf_printf(&b, ",\n    \"original_max_position_embeddings\": %d,\n    \"type\": \"yarn\"\n  }",
                        mc->original_seq_len);
    } else {
        json_buf_printf(&b, "null");
    }
    json_buf_printf(&b, ",\n  \"rope_theta\": ");
    json_buf_double(&b, mc->rope_theta);
    json_buf_printf(&b, ",\n  \"routed_scaling_factor\": ");
    json_buf_double(&b, mc->route_scale);
    json_buf_printf(&b, ",\n  \"scoring_func\": \"%s\",\n  \"seq_aux\": true,\n  \"tie_word_embeddings\": false,\n"
                    "  \"topk_group\": %d,\n  \"topk_method\": \"noaux_tc\",\n  \"torch_dtype\": \"%s\",\n"
                    "  \"use_cache\": true,\n  \"v_head_dim\": %d,\n  \"vocab_size\": %d\n}\n",
                    mc->score_func == SCORE_SOFTMAX ? "softmax" : "sigmoid", mc->n_limited_groups,
                    dtype == HF_BF16 ? "bfloat16" : "float32", mc->v_head_dim, mc->vocab_size);
    return b.s;
}

// ---- the export plan ----

typedef struct {
    char name[PARAMS_NAME_MAX + 16];
    const ParamInfo *src;   // table tensor holding the values (NULL for a bias)
    int bias_layer;         // MoE layer of a bias entry, -1 otherwise
    int ndim;
    int64_t shape[2];
    int esize;              // 4 (F32) or 2 (BF16)
    int64_t bytes;
    int shard;
    int64_t begin;          // offset in the shard's data section
} Entry;

static int64_t entry_rows(const Entry *e) { return e->shape[0]; }
static int64_t entry_cols(const Entry *e) { return e->ndim == 2 ? e->shape[1] : 1; }

static Entry *plan_add(Entry **es, int *n, int *cap) {
    if (*n == *cap) {
        *cap = *cap ? 2 * *cap : 256;
        *es = xrealloc(*es, (size_t)*cap * sizeof **es);
    }
    Entry *e = &(*es)[(*n)++];
    memset(e, 0, sizeof *e);
    e->bias_layer = -1;
    return e;
}

static void entry_from_param(Entry *e, const char *name, const ParamInfo *p, int esize) {
    snprintf(e->name, sizeof e->name, "%s", name);
    e->src = p;
    e->ndim = p->ndim;
    e->shape[0] = p->shape[0];
    e->shape[1] = p->shape[1];
    e->esize = esize;
    e->bytes = p->numel * esize;
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

// Every exported tensor in table order, with the biases after their router and the MTP copies of the embedding
// and head after each MTP module.
static Entry *plan_build(const ModelConfig *mc, const ParamTable *t, HfDtype dtype, int *n_out) {
    const StageSpec *s = &t->stage;
    CHECK(s->has_embed && s->has_head && s->layer_begin == 0 && s->layer_end == mc->n_layers &&
          (mc->mtp_depth == 0 || s->has_mtp) && t->expert_begin == 0 &&
          (mc->n_dense_layers >= mc->n_layers || t->expert_end == mc->n_routed_experts),
          "hf export needs the table of the whole model (params_full_stage); export a checkpoint to combine stages");
    int esize = dtype == HF_BF16 ? 2 : 4, n = 0, cap = 0;
    Entry *es = NULL;
    const ParamInfo *embed = params_find(t, "model.embed_tokens.weight"), *head = params_find(t, "lm_head.weight");
    for (int i = 0; i < t->n; i++) {
        const ParamInfo *p = &t->params[i];
        entry_from_param(plan_add(&es, &n, &cap), p->name, p, esize);
        if (p->kind == PARAM_ROUTER) {
            Entry *e = plan_add(&es, &n, &cap);
            snprintf(e->name, sizeof e->name, "model.layers.%d.mlp.gate.e_score_correction_bias", p->layer);
            e->bias_layer = p->layer;
            e->ndim = 1;
            e->shape[0] = p->shape[0];
            e->esize = 4;
            e->bytes = p->shape[0] * 4;
        }
        if (p->is_mtp && ends_with(p->name, ".shared_head.norm.weight")) {
            char name[PARAMS_NAME_MAX + 16];
            snprintf(name, sizeof name, "model.layers.%d.embed_tokens.weight", p->layer);
            entry_from_param(plan_add(&es, &n, &cap), name, embed, esize);
            snprintf(name, sizeof name, "model.layers.%d.shared_head.head.weight", p->layer);
            entry_from_param(plan_add(&es, &n, &cap), name, head, esize);
        }
    }
    *n_out = n;
    return es;
}

// Shards in plan order; within a shard, 4-byte tensors first so that every tensor is aligned to its element size
// (the header is padded to 8 bytes).
static int plan_shards(Entry *es, int n, int64_t max_bytes) {
    int shard = 0;
    int64_t used = 0;
    for (int i = 0; i < n; i++) {
        if (used > 0 && used + es[i].bytes > max_bytes) { shard++; used = 0; }
        es[i].shard = shard;
        used += es[i].bytes;
    }
    int n_shards = shard + 1;
    for (int s = 0; s < n_shards; s++) {
        int64_t off = 0;
        for (int pass = 4; pass >= 2; pass -= 2)
            for (int i = 0; i < n; i++)
                if (es[i].shard == s && es[i].esize == pass) { es[i].begin = off; off += es[i].bytes; }
    }
    return n_shards;
}

static void shard_name(int s, int n_shards, char *out, size_t n) {
    if (n_shards == 1) snprintf(out, n, "model.safetensors");
    else snprintf(out, n, "model-%05d-of-%05d.safetensors", s + 1, n_shards);
}

// ---- writing ----

static void write_all(int fd, const char *path, const void *data, size_t n) {
    const char *p = data;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) die("write to %s failed: %s", path, strerror(errno));
        p += w;
        n -= (size_t)w;
    }
}

static void write_shard(const char *path, Entry *es, int n, int s, const HfSource *src, float *buf, uint16_t *bf) {
    // Header: entries of this shard in data order.
    JsonBuf h = {0};
    json_buf_printf(&h, "{\"__metadata__\":{\"format\":\"pt\"}");
    int64_t data_bytes = 0;
    for (int pass = 4; pass >= 2; pass -= 2)
        for (int i = 0; i < n; i++) {
            const Entry *e = &es[i];
            if (e->shard != s || e->esize != pass) continue;
            json_buf_printf(&h, ",");
            json_buf_string(&h, e->name);
            json_buf_printf(&h, ":{\"dtype\":\"%s\",\"shape\":[%lld", e->esize == 2 ? "BF16" : "F32",
                            (long long)e->shape[0]);
            if (e->ndim == 2) json_buf_printf(&h, ",%lld", (long long)e->shape[1]);
            json_buf_printf(&h, "],\"data_offsets\":[%lld,%lld]}", (long long)e->begin, (long long)(e->begin + e->bytes));
            data_bytes += e->bytes;
        }
    json_buf_printf(&h, "}");
    while (h.len % 8) json_buf_printf(&h, " ");
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) die("cannot create %s: %s", path, strerror(errno));
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)h.len >> (8 * i));   // little-endian u64
    write_all(fd, path, len8, 8);
    write_all(fd, path, h.s, h.len);
    json_buf_free(&h);
    // Data, one tensor at a time in row blocks, in the same order as the header's offsets.
    int64_t written = 0;
    for (int pass = 4; pass >= 2; pass -= 2)
        for (int i = 0; i < n; i++) {
            const Entry *e = &es[i];
            if (e->shard != s || e->esize != pass) continue;
            CHECK(written == e->begin, "internal: %s at %lld, expected %lld", e->name, (long long)written,
                  (long long)e->begin);
            if (e->bias_layer >= 0) {
                src->read_bias(src->ctx, e->bias_layer, buf);
                write_all(fd, path, buf, (size_t)e->bytes);
                written += e->bytes;
                continue;
            }
            int64_t rows = entry_rows(e), cols = entry_cols(e);
            int64_t step = HF_CHUNK_ELEMS / cols > 0 ? HF_CHUNK_ELEMS / cols : 1;
            for (int64_t r = 0; r < rows; r += step) {
                int64_t nr = rows - r < step ? rows - r : step, k = nr * cols;
                src->read_rows(src->ctx, e->src, r, nr, buf);
                if (e->esize == 2) {
                    for (int64_t j = 0; j < k; j++) bf[j] = bf16_from_f32(buf[j]);
                    write_all(fd, path, bf, (size_t)k * 2);
                } else {
                    write_all(fd, path, buf, (size_t)k * 4);
                }
            }
            written += e->bytes;
        }
    CHECK(written == data_bytes, "internal: wrote %lld bytes of tensors to %s, planned %lld", (long long)written, path,
          (long long)data_bytes);
    if (fsync(fd) != 0) die("fsync of %s failed: %s", path, strerror(errno));
    if (close(fd) != 0) die("close of %s failed: %s", path, strerror(errno));
}

static int name_cmp(const void *a, const void *b) {
    return strcmp((*(Entry *const *)a)->name, (*(Entry *const *)b)->name);
}

void hf_export(const ModelConfig *mc, const ParamTable *table, const HfSource *src, const char *out_dir,
               const HfExportOptions *o) {
    if (fsio_exists(out_dir)) die("hf export: %s already exists; give a new directory", out_dir);
    int64_t max_bytes = o && o->max_shard_bytes > 0 ? o->max_shard_bytes : HF_DEFAULT_SHARD;
    HfDtype dtype = o ? o->dtype : HF_F32;
    if (mc->group_score_topk != 2)
        log_warn("hf export: model.group_score_topk = %d, but DeepSeek-V3 implementations (transformers, the "
                 "official inference code) score a group by its top 2 experts", mc->group_score_topk);
    if (mc->score_func == SCORE_SOFTMAX)
        log_warn("hf export: score_func softmax is written as scoring_func \"softmax\"; transformers' DeepseekV3 "
                 "always uses sigmoid");
    int n;
    Entry *es = plan_build(mc, table, dtype, &n);
    int n_shards = plan_shards(es, n, max_bytes);

    size_t tlen = strlen(out_dir) + 8;
    char *tmp = xmalloc(tlen);
    snprintf(tmp, tlen, "%s.tmp", out_dir);
    fsio_rmtree(tmp);
    fsio_mkdirs(tmp);
    int64_t max_cols = 1;
    for (int i = 0; i < n; i++) if (entry_cols(&es[i]) > max_cols) max_cols = entry_cols(&es[i]);
    for (int i = 0; i < n; i++) if (es[i].bias_layer >= 0 && es[i].shape[0] > max_cols) max_cols = es[i].shape[0];
    size_t buf_elems = (size_t)(HF_CHUNK_ELEMS > max_cols ? HF_CHUNK_ELEMS : max_cols);
    float *buf = xmalloc(buf_elems * sizeof(float));
    uint16_t *bf = dtype == HF_BF16 ? xmalloc(buf_elems * sizeof(uint16_t)) : NULL;
    char path[4400], name[64];
    for (int s = 0; s < n_shards; s++) {
        shard_name(s, n_shards, name, sizeof name);
        snprintf(path, sizeof path, "%s/%s", tmp, name);
        write_shard(path, es, n, s, src, buf, bf);
    }
    free(buf);
    free(bf);

    int64_t total = 0;
    for (int i = 0; i < n; i++) total += es[i].bytes;
    if (n_shards > 1) {
        Entry **sorted = xmalloc((size_t)n * sizeof *sorted);
        for (int i = 0; i < n; i++) sorted[i] = &es[i];
        qsort(sorted, (size_t)n, sizeof *sorted, name_cmp);
        JsonBuf b = {0};
        json_buf_printf(&b, "{\n  \"metadata\": {\n    \"total_size\": %lld\n  },\n  \"weight_map\": {", (long long)total);
        for (int i = 0; i < n; i++) {
            shard_name(sorted[i]->shard, n_shards, name, sizeof name);
            json_buf_printf(&b, "%s\n    ", i ? "," : "");
            json_buf_string(&b, sorted[i]->name);
            json_buf_printf(&b, ": \"%s\"", name);
        }
        json_buf_printf(&b, "\n  }\n}\n");
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", tmp);
        fsio_write_file(path, b.s, b.len, 1);
        json_buf_free(&b);
        free(sorted);
    }
    char *cfg = hf_config_json(mc, dtype);
    snprintf(path, sizeof path, "%s/config.json", tmp);
    fsio_write_file(path, cfg, strlen(cfg), 1);
    free(cfg);
    fsio_fsync_path(tmp);
    fsio_rename(tmp, out_dir);
    log_info("exported %d tensors (%.1f MB, %s) in %d shard(s) to %s", n, total / 1e6,
             dtype == HF_BF16 ? "bf16" : "fp32", n_shards, out_dir);
    free(tmp);
    free(es);
}

// ---- sources ----

typedef struct {
    const Backend *be;
    const float *params;
    float *const *bias;
    const ParamTable *t;
    int E;
} MemSource;

static void mem_rows(void *ctx, const ParamInfo *p, int64_t row0, int64_t nrows, float *dst) {
    MemSource *m = ctx;
    int64_t cols = p->ndim == 2 ? p->shape[1] : 1;
    m->be->download(dst, m->params + p->offset + row0 * cols, (size_t)(nrows * cols) * sizeof(float));
}

static void mem_bias(void *ctx, int layer, float *dst) {
    MemSource *m = ctx;
    int layers[1024];
    int n = ckpt_table_moe_layers(m->t, layers, 1024);
    for (int i = 0; i < n && i < 1024; i++)
        if (layers[i] == layer) { memcpy(dst, m->bias[i], (size_t)m->E * sizeof(float)); return; }
    die("internal: no selection bias for MoE layer %d", layer);
}

void hf_export_memory(const ModelConfig *mc, const ParamTable *table, const Backend *be, const float *params,
                      float *const *bias, const char *out_dir, const HfExportOptions *o) {
    MemSource m = {be, params, bias, table, mc->n_routed_experts};
    HfSource src = {mem_rows, mem_bias, &m};
    hf_export(mc, table, &src, out_dir, o);
}

typedef struct {
    Ckpt *c;
    int E;
} CkptSource;

static void ck_rows(void *ctx, const ParamInfo *p, int64_t row0, int64_t nrows, float *dst) {
    CkptSource *s = ctx;
    ckpt_read_param_rows(s->c, p->name, row0, nrows, p->ndim == 2 ? p->shape[1] : 1, dst);
}

static void ck_bias(void *ctx, int layer, float *dst) {
    CkptSource *s = ctx;
    ckpt_read_bias(s->c, layer, dst, s->E);
}

void hf_export_ckpt(const char *ckpt_dir, const char *out_dir, const HfExportOptions *o) {
    char why[1024];
    if (!ckpt_verify(ckpt_dir, why, sizeof why)) die("export: %s is not a usable checkpoint: %s", ckpt_dir, why);
    Ckpt *c = ckpt_open(ckpt_dir);
    ModelConfig mc;
    ckpt_model_config(c, &mc);
    // The full-model table names every tensor; values stream from whichever stage file holds each one.
    ParamTable t;
    StageSpec full = params_full_stage(&mc);
    params_build(&t, &mc, &full);
    CkptSource s = {c, mc.n_routed_experts};
    HfSource src = {ck_rows, ck_bias, &s};
    hf_export(&mc, &t, &src, out_dir, o);
    params_free(&t);
    ckpt_close(c);
}
