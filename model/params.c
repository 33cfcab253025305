// The named parameter table: see params.h for names, shapes, order and alignment.
#include "model/params.h"
#include "train/check.h"

#include <stdarg.h>
#include <string.h>

// ---- building ----

typedef struct {
    ParamTable *t;
    int cap;
    int64_t off;   // next free element
    int layer;     // layer stamped on added tensors
    int is_mtp;
} Builder;

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

static int64_t align_up(int64_t x) { return (x + PARAMS_ALIGN - 1) / PARAMS_ALIGN * PARAMS_ALIGN; }

// Appends one tensor. `aligned` = 0 packs it right after the previous one (experts inside a grouped block).
static ParamInfo *builder_add(Builder *b, int aligned, ParamKind kind, int64_t rows, int64_t cols, int expert,
                              const char *fmt, ...) {
    ParamTable *t = b->t;
    if (t->n == b->cap) {
        b->cap = b->cap ? 2 * b->cap : 256;
        t->params = xrealloc(t->params, (size_t)b->cap * sizeof *t->params);
    }
    ParamInfo *p = &t->params[t->n++];
    memset(p, 0, sizeof *p);
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(p->name, sizeof p->name, fmt, ap);
    va_end(ap);
    CHECK(len > 0 && len < (int)sizeof p->name, "parameter name too long (%d chars): %s", len, p->name);
    CHECK(rows > 0 && cols >= 0, "parameter %s has an empty shape [%lld, %lld]: check the model section of the "
          "config", p->name, (long long)rows, (long long)cols);
    p->ndim = cols ? 2 : 1;
    p->shape[0] = rows;
    p->shape[1] = cols;
    p->numel = cols ? rows * cols : rows;
    if (aligned) b->off = align_up(b->off);
    p->offset = b->off;
    b->off += p->numel;
    p->kind = kind;
    p->layer = b->layer;
    p->expert = expert;
    p->is_mtp = b->is_mtp;
    p->no_decay = ends_with(p->name, "norm.weight");
    return p;
}

#define ADD(kind, rows, cols, ...) builder_add(b, 1, kind, rows, cols, -1, __VA_ARGS__)

static void add_attention(Builder *b, const ModelConfig *m, int i) {
    int64_t d = m->dim, h = m->n_heads, qk = m->qk_nope_head_dim + m->qk_rope_head_dim;
    if (m->q_lora_rank > 0) {
        ADD(PARAM_ATTN, m->q_lora_rank, d, "model.layers.%d.self_attn.q_a_proj.weight", i);
        ADD(PARAM_NORM, m->q_lora_rank, 0, "model.layers.%d.self_attn.q_a_layernorm.weight", i);
        ADD(PARAM_ATTN, h * qk, m->q_lora_rank, "model.layers.%d.self_attn.q_b_proj.weight", i);
    } else {
        ADD(PARAM_ATTN, h * qk, d, "model.layers.%d.self_attn.q_proj.weight", i);
    }
    ADD(PARAM_ATTN, (int64_t)m->kv_lora_rank + m->qk_rope_head_dim, d,
        "model.layers.%d.self_attn.kv_a_proj_with_mqa.weight", i);
    ADD(PARAM_NORM, m->kv_lora_rank, 0, "model.layers.%d.self_attn.kv_a_layernorm.weight", i);
    ADD(PARAM_ATTN, h * (m->qk_nope_head_dim + m->v_head_dim), m->kv_lora_rank,
        "model.layers.%d.self_attn.kv_b_proj.weight", i);
    ADD(PARAM_ATTN, d, h * m->v_head_dim, "model.layers.%d.self_attn.o_proj.weight", i);
}

static void add_block(Builder *b, const ModelConfig *m, int i, int e_begin, int e_end) {
    int64_t d = m->dim;
    ADD(PARAM_NORM, d, 0, "model.layers.%d.input_layernorm.weight", i);
    add_attention(b, m, i);
    ADD(PARAM_NORM, d, 0, "model.layers.%d.post_attention_layernorm.weight", i);
    if (!params_layer_is_moe(m, i)) {
        ADD(PARAM_DENSE_FFN, m->inter_dim, d, "model.layers.%d.mlp.gate_proj.weight", i);
        ADD(PARAM_DENSE_FFN, m->inter_dim, d, "model.layers.%d.mlp.up_proj.weight", i);
        ADD(PARAM_DENSE_FFN, d, m->inter_dim, "model.layers.%d.mlp.down_proj.weight", i);
        return;
    }
    int64_t mi = m->moe_inter_dim, si = (int64_t)m->n_shared_experts * mi;
    ADD(PARAM_ROUTER, m->n_routed_experts, d, "model.layers.%d.mlp.gate.weight", i);
    if (si > 0) {
        ADD(PARAM_SHARED_EXPERT, si, d, "model.layers.%d.mlp.shared_experts.gate_proj.weight", i);
        ADD(PARAM_SHARED_EXPERT, si, d, "model.layers.%d.mlp.shared_experts.up_proj.weight", i);
        ADD(PARAM_SHARED_EXPERT, d, si, "model.layers.%d.mlp.shared_experts.down_proj.weight", i);
    }
    static const char *const projs[3] = {"gate_proj", "up_proj", "down_proj"};
    for (int p = 0; p < 3; p++)
        for (int e = e_begin; e < e_end; e++)
            builder_add(b, e == e_begin, PARAM_ROUTED_EXPERT, p == 2 ? d : mi, p == 2 ? mi : d, e,
                        "model.layers.%d.mlp.experts.%d.%s.weight", i, e, projs[p]);
}

static void table_index(ParamTable *t) {
    t->hash_cap = 16;
    while (t->hash_cap < 2 * t->n) t->hash_cap *= 2;
    t->hash = xmalloc((size_t)t->hash_cap * sizeof *t->hash);
    for (int i = 0; i < t->hash_cap; i++) t->hash[i] = -1;
    for (int i = 0; i < t->n; i++) {
        uint64_t h = 1469598103934665603ull; // FNV-1a
        for (const char *c = t->params[i].name; *c; c++) h = (h ^ (unsigned char)*c) * 1099511628211ull;
        int slot = (int)(h & (uint64_t)(t->hash_cap - 1));
        while (t->hash[slot] >= 0) {
            CHECK(strcmp(t->params[t->hash[slot]].name, t->params[i].name) != 0,
                  "duplicate parameter name %s", t->params[i].name);
            slot = (slot + 1) & (t->hash_cap - 1);
        }
        t->hash[slot] = i;
    }
}

static void check_model(const ModelConfig *m) {
    CHECK(m->vocab_size > 0 && m->dim > 0 && m->n_layers > 0 && m->n_heads > 0,
          "model: vocab_size, dim, n_layers and n_heads must be positive (got %d, %d, %d, %d)",
          m->vocab_size, m->dim, m->n_layers, m->n_heads);
    CHECK(m->n_dense_layers >= 0 && m->mtp_depth >= 0 && m->q_lora_rank >= 0,
          "model: n_dense_layers, mtp_depth and q_lora_rank must be >= 0");
    int has_moe = m->n_dense_layers < m->n_layers;
    CHECK(!has_moe || (m->n_routed_experts > 0 && m->moe_inter_dim > 0 && m->n_shared_experts >= 0),
          "model: n_dense_layers (%d) < n_layers (%d) needs n_routed_experts > 0 and moe_inter_dim > 0",
          m->n_dense_layers, m->n_layers);
}

void params_build(ParamTable *t, const ModelConfig *m, const StageSpec *s) {
    check_model(m);
    int n_ep = s->ep_size > 1 ? s->ep_size : 1;
    int ep_rank = n_ep > 1 ? s->ep_rank : 0;
    CHECK(0 <= s->layer_begin && s->layer_begin <= s->layer_end && s->layer_end <= m->n_layers,
          "stage layers [%d, %d) outside the model's %d layers", s->layer_begin, s->layer_end, m->n_layers);
    CHECK(!s->has_mtp || s->has_head || m->mtp_depth == 0,
          "a stage with the MTP modules must also hold the output head they share");
    int has_moe = m->n_dense_layers < m->n_layers;
    CHECK(!has_moe || m->n_routed_experts % n_ep == 0, "parallel.ep = %d must divide model.n_routed_experts = %d",
          n_ep, m->n_routed_experts);
    CHECK(0 <= ep_rank && ep_rank < n_ep, "expert-parallel rank %d outside [0, %d)", ep_rank, n_ep);
    int e_local = has_moe ? m->n_routed_experts / n_ep : 0;
    int e_begin = ep_rank * e_local, e_end = e_begin + e_local;

    memset(t, 0, sizeof *t);
    t->stage = *s;
    t->stage.ep_size = n_ep;
    t->stage.ep_rank = ep_rank;
    t->n_layers_model = m->n_layers;
    t->expert_begin = e_begin;
    t->expert_end = e_end;
    Builder bld = {.t = t, .layer = -1}, *b = &bld;
    int64_t d = m->dim;

    if (s->has_embed) ADD(PARAM_EMBED, m->vocab_size, d, "model.embed_tokens.weight");
    for (int i = s->layer_begin; i < s->layer_end; i++) {
        b->layer = i;
        add_block(b, m, i, e_begin, e_end);
    }
    b->layer = -1;
    if (s->has_head) {
        ADD(PARAM_NORM, d, 0, "model.norm.weight");
        ADD(PARAM_HEAD, m->vocab_size, d, "lm_head.weight");
    }
    if (s->has_mtp) {
        b->is_mtp = 1;
        for (int k = 0; k < m->mtp_depth; k++) {
            int l = m->n_layers + k;
            b->layer = l;
            ADD(PARAM_NORM, d, 0, "model.layers.%d.enorm.weight", l);
            ADD(PARAM_NORM, d, 0, "model.layers.%d.hnorm.weight", l);
            ADD(PARAM_MTP_PROJ, d, 2 * d, "model.layers.%d.eh_proj.weight", l);
            add_block(b, m, l, e_begin, e_end);
            ADD(PARAM_NORM, d, 0, "model.layers.%d.shared_head.norm.weight", l);
        }
    }
    t->total = align_up(b->off);
    table_index(t);
}

void params_free(ParamTable *t) {
    free(t->params);
    free(t->hash);
    memset(t, 0, sizeof *t);
}

// ---- lookup ----

const ParamInfo *params_find(const ParamTable *t, const char *name) {
    if (!t->hash_cap) return NULL;
    uint64_t h = 1469598103934665603ull;
    for (const char *c = name; *c; c++) h = (h ^ (unsigned char)*c) * 1099511628211ull;
    for (int slot = (int)(h & (uint64_t)(t->hash_cap - 1)); t->hash[slot] >= 0; slot = (slot + 1) & (t->hash_cap - 1))
        if (strcmp(t->params[t->hash[slot]].name, name) == 0) return &t->params[t->hash[slot]];
    return NULL;
}

const ParamInfo *params_get(const ParamTable *t, const char *fmt, ...) {
    char name[PARAMS_NAME_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    const ParamInfo *p = params_find(t, name);
    if (!p) die("parameter %s is not in this stage's table (layers [%d, %d), embed %d, head %d, mtp %d)", name,
                t->stage.layer_begin, t->stage.layer_end, t->stage.has_embed, t->stage.has_head, t->stage.has_mtp);
    return p;
}

const ParamInfo *params_expert_block(const ParamTable *t, int layer, const char *proj) {
    char name[PARAMS_NAME_MAX];
    if (t->expert_end <= t->expert_begin) return NULL;
    snprintf(name, sizeof name, "model.layers.%d.mlp.experts.%d.%s.weight", layer, t->expert_begin, proj);
    return params_find(t, name);
}

int64_t params_numel(const ParamTable *t) {
    int64_t n = 0;
    for (int i = 0; i < t->n; i++) n += t->params[i].numel;
    return n;
}

// ---- stages ----

StageSpec params_full_stage(const ModelConfig *m) {
    return (StageSpec){.layer_begin = 0, .layer_end = m->n_layers, .has_embed = 1, .has_head = 1, .has_mtp = 1,
                       .ep_size = 1, .ep_rank = 0};
}

StageSpec params_stage_spec(const ModelConfig *m, int pp, int stage) {
    CHECK(pp >= 1 && 0 <= stage && stage < pp, "pipeline stage %d outside [0, parallel.pp = %d)", stage, pp);
    int blocks = m->n_layers + m->mtp_depth;
    CHECK(blocks >= pp, "parallel.pp = %d is more than the %d transformer blocks (model.n_layers %d + "
          "model.mtp_depth %d): some stage would be empty", pp, blocks, m->n_layers, m->mtp_depth);
    // Main layers per stage: blocks split evenly (earlier stages take the remainder), the last stage's share
    // including its MTP blocks. If the MTP blocks alone exceed the last stage's share, the last stage holds only
    // them and the main layers are split over the other stages.
    int base = blocks / pp, rem = blocks % pp;
    int last_share = base; // rem < pp, so the last stage never takes a remainder block
    int begin = 0, count;
    if (last_share >= m->mtp_depth || pp == 1) {
        begin = stage * base + (stage < rem ? stage : rem);
        count = stage == pp - 1 ? last_share - m->mtp_depth : base + (stage < rem);
    } else {
        CHECK(m->n_layers >= pp - 1, "parallel.pp = %d leaves some stage without a main layer (%d layers, %d MTP "
              "modules on the last stage)", pp, m->n_layers, m->mtp_depth);
        int b2 = m->n_layers / (pp - 1), r2 = m->n_layers % (pp - 1);
        if (stage == pp - 1) { begin = m->n_layers; count = 0; }
        else { begin = stage * b2 + (stage < r2 ? stage : r2); count = b2 + (stage < r2); }
    }
    return (StageSpec){.layer_begin = begin, .layer_end = begin + count, .has_embed = stage == 0,
                       .has_head = stage == pp - 1, .has_mtp = stage == pp - 1, .ep_size = 1, .ep_rank = 0};
}

int params_layer_is_moe(const ModelConfig *m, int layer) {
    if (layer < m->n_layers) return layer >= m->n_dense_layers;
    return m->n_layers > m->n_dense_layers;
}

int params_moe_layers(const ModelConfig *m, const StageSpec *s, int *out, int cap) {
    int n = 0;
    for (int i = s->layer_begin; i < s->layer_end; i++)
        if (params_layer_is_moe(m, i)) { if (n < cap) out[n] = i; n++; }
    if (s->has_mtp)
        for (int k = 0; k < m->mtp_depth; k++)
            if (params_layer_is_moe(m, m->n_layers + k)) { if (n < cap) out[n] = m->n_layers + k; n++; }
    return n;
}
