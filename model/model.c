// Model lifecycle (create, init, free), host-side MoE state, and the stage step: forward through the owned
// layers, heads and MTP depths, then backward in reverse. See model.h for the graph and model_impl.h for shapes.
#include "model/model_impl.h"
#include "train/check.h"

#include <math.h>
#include <stdarg.h>
#include <string.h>

// ---- binding parameters to Weight views ----

static Tensor param_view(float *base, const ParamInfo *p) {
    if (p->ndim == 1) return tensor_1d(base + p->offset, DT_F32, p->shape[0]);
    return tensor_2d(base + p->offset, DT_F32, p->shape[0], p->shape[1]);
}

// Matrices read by GEMMs: the BF16 copy under a BF16 model; norm weights and the embedding table (read by the
// RMSNorm and embedding ops, not by GEMMs) always the FP32 master.
static int reads_lowp(const Model *m, const ParamInfo *p) {
    return m->wlp && p->kind != PARAM_NORM && p->kind != PARAM_EMBED;
}

static Weight weight_of(Model *m, const ParamInfo *p) {
    Weight w = {param_view(m->params, p), param_view(m->grads, p)};
    if (reads_lowp(m, p)) {
        w.w.data = (uint16_t *)m->wlp + p->offset;
        w.w.dtype = DT_BF16;
    }
    return w;
}

__attribute__((format(printf, 2, 3))) static Weight weight(Model *m, const char *fmt, ...) {
    char name[PARAMS_NAME_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    return weight_of(m, params_get(&m->table, "%s", name));
}

// The contiguous [E_local, rows, cols] block of one projection of a MoE layer's routed experts.
static Weight expert_block(Model *m, int layer, const char *proj) {
    const ParamInfo *p = params_expert_block(&m->table, layer, proj);
    CHECK(p, "model: layer %d has no routed-expert %s block in the parameter table", layer, proj);
    int64_t E = m->table.expert_end - m->table.expert_begin;
    Weight w = {tensor_3d(m->params + p->offset, DT_F32, E, p->shape[0], p->shape[1]),
                tensor_3d(m->grads + p->offset, DT_F32, E, p->shape[0], p->shape[1])};
    if (reads_lowp(m, p)) w.w = tensor_3d((uint16_t *)m->wlp + p->offset, DT_BF16, E, p->shape[0], p->shape[1]);
    return w;
}

static void layer_bind(Model *m, Layer *L, int layer) {
    const ModelConfig *mc = &m->mc;
    const char *pre = "model.layers";
    L->layer = layer;
    L->in_norm = weight(m, "%s.%d.input_layernorm.weight", pre, layer);
    if (mc->q_lora_rank > 0) {
        L->q_a = weight(m, "%s.%d.self_attn.q_a_proj.weight", pre, layer);
        L->q_a_norm = weight(m, "%s.%d.self_attn.q_a_layernorm.weight", pre, layer);
        L->q_b = weight(m, "%s.%d.self_attn.q_b_proj.weight", pre, layer);
    } else {
        L->q_proj = weight(m, "%s.%d.self_attn.q_proj.weight", pre, layer);
    }
    L->kv_a = weight(m, "%s.%d.self_attn.kv_a_proj_with_mqa.weight", pre, layer);
    L->kv_a_norm = weight(m, "%s.%d.self_attn.kv_a_layernorm.weight", pre, layer);
    L->kv_b = weight(m, "%s.%d.self_attn.kv_b_proj.weight", pre, layer);
    L->o_proj = weight(m, "%s.%d.self_attn.o_proj.weight", pre, layer);
    L->post_norm = weight(m, "%s.%d.post_attention_layernorm.weight", pre, layer);
    L->is_moe = params_layer_is_moe(mc, layer);
    L->moe_index = -1;
    if (!L->is_moe) {
        L->ffn.width = mc->inter_dim;
        L->ffn.gate = weight(m, "%s.%d.mlp.gate_proj.weight", pre, layer);
        L->ffn.up = weight(m, "%s.%d.mlp.up_proj.weight", pre, layer);
        L->ffn.down = weight(m, "%s.%d.mlp.down_proj.weight", pre, layer);
        return;
    }
    for (int i = 0; i < m->n_moe; i++)
        if (m->moe_layer[i] == layer) L->moe_index = i;
    CHECK(L->moe_index >= 0, "model: MoE layer %d missing from the stage's MoE list", layer);
    L->router = weight(m, "%s.%d.mlp.gate.weight", pre, layer);
    L->ffn.width = mc->n_shared_experts * mc->moe_inter_dim;
    if (L->ffn.width > 0) {
        L->ffn.gate = weight(m, "%s.%d.mlp.shared_experts.gate_proj.weight", pre, layer);
        L->ffn.up = weight(m, "%s.%d.mlp.shared_experts.up_proj.weight", pre, layer);
        L->ffn.down = weight(m, "%s.%d.mlp.shared_experts.down_proj.weight", pre, layer);
    }
    L->exp_gate = expert_block(m, layer, "gate_proj");
    L->exp_up = expert_block(m, layer, "up_proj");
    L->exp_down = expert_block(m, layer, "down_proj");
}

// ---- creation ----

// What the graph itself relies on beyond params_build's checks; the messages name the config keys.
static void model_check_config(const ModelConfig *mc, const StageSpec *s, int B, int T) {
    CHECK(B > 0 && T > 0 && (int64_t)B * T <= INT32_MAX / 64, "model: micro-batch %d x %d tokens out of range", B, T);
    CHECK(mc->qk_rope_head_dim > 0 && mc->qk_rope_head_dim % 2 == 0,
          "model.qk_rope_head_dim must be even and positive (RoPE rotates pairs), got %d", mc->qk_rope_head_dim);
    CHECK(mc->qk_nope_head_dim >= 0 && mc->v_head_dim > 0 && mc->kv_lora_rank > 0,
          "model: qk_nope_head_dim >= 0, v_head_dim > 0 and kv_lora_rank > 0 required (got %d, %d, %d)",
          mc->qk_nope_head_dim, mc->v_head_dim, mc->kv_lora_rank);
    CHECK(mc->mtp_depth <= MODEL_MAX_MTP, "model.mtp_depth = %d: at most %d supported", mc->mtp_depth,
          MODEL_MAX_MTP);
    CHECK(mc->norm_eps > 0, "model.norm_eps must be positive");
    CHECK(!(s->has_mtp && mc->mtp_depth > 0) || s->has_embed,
          "model: this stage holds the MTP modules but not the embedding they share (layers [%d, %d)); the MTP "
          "modules embed shifted tokens, so they need the embedding on the same stage (a later stage may hold a "
          "tied copy: has_embed with layer_begin > 0, its gradient summed with the first stage's)", s->layer_begin,
          s->layer_end);
    CHECK(s->ep_size <= 1, "model: expert parallelism (ep_size %d) is done by parallel/, not by a model stage",
          s->ep_size);
    if (mc->n_dense_layers < mc->n_layers) {
        int E = mc->n_routed_experts, G = mc->n_expert_groups;
        CHECK(G >= 1 && E % G == 0, "model.n_expert_groups = %d must divide model.n_routed_experts = %d", G, E);
        CHECK(mc->n_limited_groups >= 1 && mc->n_limited_groups <= G,
              "model.n_limited_groups = %d must be in [1, n_expert_groups = %d]", mc->n_limited_groups, G);
        CHECK(mc->n_activated_experts >= 1 && mc->n_activated_experts <= mc->n_limited_groups * (E / G),
              "model.n_activated_experts = %d must be in [1, n_limited_groups * experts per group = %d]",
              mc->n_activated_experts, mc->n_limited_groups * (E / G));
    }
}

// train.precision -> the activation dtype, or a clear stop for what this build cannot run.
static DType model_act_dtype(const Config *cfg, const Backend *be) {
    switch (cfg->train.precision) {
    case PRECISION_FP32: return DT_F32;
    case PRECISION_BF16:
        CHECK(be->bf16, "train.precision: bf16 needs a backend with BF16 kernels (train.backend: cuda); the %s "
              "backend computes in FP32 only (it is the reference): set train.precision: fp32", be->name);
        return DT_BF16;
    case PRECISION_FP8: break;
    }
    die("train.precision: fp8 (E4M3 GEMMs with 1x128 / 128x128 block scales, RECIPE.md 3) is not built yet: use "
        "bf16 (cuda) or fp32");
}

Model *model_create(const Config *cfg, const Backend *be, StageSpec stage, int B, int T) {
    Model *m = xcalloc(1, sizeof *m);
    m->cfg = *cfg;
    m->mc = cfg->model;
    m->be = be;
    m->stage = stage;
    m->B = B;
    m->T = T;
    const ModelConfig *mc = &m->mc;
    model_check_config(mc, &stage, B, T);
    m->N = B * T;
    params_build(&m->table, mc, &stage);
    m->params = be->alloc((size_t)m->table.total * sizeof(float));
    m->grads = be->alloc((size_t)m->table.total * sizeof(float));
    m->adt = model_act_dtype(cfg, be);
    model_residual_select(m);
    if (m->adt == DT_BF16) m->wlp = be->alloc((size_t)m->table.total * sizeof(uint16_t));
    m->wlp_stale = 1;

    int E = mc->n_routed_experts, K = mc->n_activated_experts, N = m->N, D = mc->mtp_depth;
    m->n_moe = params_moe_layers(mc, &stage, NULL, 0);
    m->moe_layer = xcalloc(m->n_moe + 1, sizeof(int));
    params_moe_layers(mc, &stage, m->moe_layer, m->n_moe);
    m->n_main = stage.layer_end - stage.layer_begin;
    m->n_mtp = stage.has_mtp ? D : 0;
    m->layers = xcalloc(m->n_main + m->n_mtp + 1, sizeof(Layer));
    for (int l = 0; l < m->n_main; l++) layer_bind(m, &m->layers[l], stage.layer_begin + l);
    for (int i = 0; i < m->n_mtp; i++) {
        int layer = mc->n_layers + i;
        MtpDepth *p = &m->mtp[i];
        p->block = &m->layers[m->n_main + i];
        layer_bind(m, p->block, layer);
        p->enorm = weight(m, "model.layers.%d.enorm.weight", layer);
        p->hnorm = weight(m, "model.layers.%d.hnorm.weight", layer);
        p->eh_proj = weight(m, "model.layers.%d.eh_proj.weight", layer);
        p->head_norm = weight(m, "model.layers.%d.shared_head.norm.weight", layer);
    }
    if (stage.has_embed) m->embed = weight(m, "model.embed_tokens.weight");
    if (stage.has_head) {
        m->final_norm = weight(m, "model.norm.weight");
        m->head = weight(m, "lm_head.weight");
    }

    // V3's group score is the sum of the top-2 biased scores in a group; V2's (softmax) is the group maximum.
    int per_group = mc->n_expert_groups > 0 ? E / mc->n_expert_groups : E;
    int gtop = mc->score_func == SCORE_SIGMOID ? mc->group_score_topk : 1;
    m->rp = (RouterParams){.n_experts = E, .top_k = K, .n_groups = mc->n_expert_groups,
                           .topk_groups = mc->n_limited_groups,
                           .group_score_topk = gtop < per_group ? gtop : per_group,
                           .score_func = mc->score_func, .route_scale = (float)mc->route_scale};
    m->softmax_scale = rope_softmax_scale(mc);
    int64_t chunk = HEAD_CHUNK_ELEMS / mc->vocab_size;
    m->head_chunk = (int)(chunk < 1 ? 1 : chunk > N ? N : chunk);

    size_t nm = m->n_moe > 0 ? (size_t)m->n_moe : 1;
    m->bias_host = xcalloc(nm * E + 1, sizeof(float));
    m->counts = xcalloc(nm * E + 1, sizeof(int64_t));
    m->host_counts = xcalloc(nm * E + 1, sizeof(int32_t));
    m->record = xcalloc(nm * N * K + 1, sizeof(int32_t));
    m->recorded = xcalloc(nm, sizeof(int));
    m->host_scores = xcalloc((size_t)N * E + 1, sizeof(float));
    m->host_gates = xcalloc((size_t)N * K + 1, sizeof(float));
    m->host_ids = xcalloc((size_t)(D + 2) * N, sizeof(int32_t));
    m->res = xcalloc(m->n_main + 1, sizeof(Tensor));

    model_layout_activations(m);
    m->host_losses = xcalloc((size_t)m->loss_buf.shape[0] + 1, sizeof(float));
    model_reset_counts(m);

    int half = mc->qk_rope_head_dim / 2;
    float *cs = xmalloc((size_t)2 * T * half * sizeof(float));
    rope_tables(mc, T, cs, cs + (size_t)T * half);
    be->upload(m->cos.data, cs, (size_t)T * half * sizeof(float));
    be->upload(m->sin.data, cs + (size_t)T * half, (size_t)T * half * sizeof(float));
    free(cs);
    return m;
}

void model_free(Model *m) {
    if (!m) return;
    const Backend *be = m->be;
    be->free(m->arena);
    be->free(m->params);
    be->free(m->grads);
    if (m->wlp) be->free(m->wlp);
    free(m->layers);
    free(m->moe_layer);
    free(m->bias_host);
    free(m->counts);
    free(m->host_counts);
    free(m->record);
    free(m->recorded);
    free(m->host_scores);
    free(m->host_gates);
    free(m->host_ids);
    free(m->host_losses);
    free(m->res);
    params_free(&m->table);
    free(m);
}

// ---- accessors ----

const ParamTable *model_params(const Model *m) { return &m->table; }
// A caller that gets the master parameters may write them: the BF16 copy is remade before the next forward.
float *model_param_data(Model *m) {
    m->wlp_stale = 1;
    return m->params;
}
void model_params_changed(Model *m) { m->wlp_stale = 1; }
DType model_act_dtype_of(const Model *m) { return m->adt; }

float *model_grad_data(Model *m) { return m->grads; }
size_t model_arena_bytes(const Model *m) { return m->arena_bytes; }
int model_batch(const Model *m) { return m->B; }
int model_seq_len(const Model *m) { return m->T; }
const ModelConfig *model_config(const Model *m) { return &m->mc; }
int model_n_moe_layers(const Model *m) { return m->n_moe; }

static void check_moe_index(const Model *m, int i) {
    CHECK(i >= 0 && i < m->n_moe, "model: MoE layer index %d outside [0, %d)", i, m->n_moe);
}
int model_moe_layer_index(const Model *m, int i) { check_moe_index(m, i); return m->moe_layer[i]; }
float *model_expert_bias(Model *m, int i) {
    check_moe_index(m, i);
    return m->bias_host + (int64_t)i * m->mc.n_routed_experts;
}
// The load accumulates in backend memory (moe_dispatch_plan adds each micro-batch's); the host copy is refreshed
// here, once after a step's micro-batches, not once per layer and micro-batch.
int64_t *model_expert_counts(Model *m, int i) {
    check_moe_index(m, i);
    if (m->counts_stale) {
        const int64_t n = (int64_t)m->n_moe * m->mc.n_routed_experts;
        m->be->download(m->host_counts, m->counts_dev.data, (size_t)n * sizeof(int32_t));
        for (int64_t j = 0; j < n; j++) m->counts[j] = m->host_counts[j];
        m->counts_stale = 0;
    }
    return m->counts + (int64_t)i * m->mc.n_routed_experts;
}
void model_reset_counts(Model *m) {
    memset(m->counts, 0, (size_t)(m->n_moe > 0 ? m->n_moe : 1) * m->mc.n_routed_experts * sizeof(int64_t));
    m->be->zero(m->counts_dev.data, (size_t)tensor_numel(&m->counts_dev) * sizeof(int32_t));
    m->counts_stale = 0;
}
void model_zero_grads(Model *m) { m->be->zero(m->grads, (size_t)m->table.total * sizeof(float)); }
void model_set_route_mode(Model *m, RouteMode mode) { m->route_mode = mode; }
const int32_t *model_route_record(const Model *m, int i) {
    check_moe_index(m, i);
    return m->recorded[i] ? m->record + (int64_t)i * m->N * m->mc.n_activated_experts : NULL;
}
void model_route_load(Model *m, int i, const int32_t *choice) {
    check_moe_index(m, i);
    int64_t nk = (int64_t)m->N * m->mc.n_activated_experts;
    for (int64_t j = 0; j < nk; j++)
        CHECK(choice[j] >= 0 && choice[j] < m->mc.n_routed_experts, "model_route_load: layer %d entry %lld is expert "
              "%d, outside [0, %d)", m->moe_layer[i], (long long)j, choice[j], m->mc.n_routed_experts);
    memcpy(m->record + (int64_t)i * nk, choice, (size_t)nk * sizeof(int32_t));
    m->recorded[i] = 1;
}

Tensor model_stage_input(Model *m) { return m->res[0]; }
Tensor model_stage_output(Model *m) { return m->res[m->n_main]; }
// The caller may write the gradient (the next stage's): the BF16 copy of dx that backward would reuse is void.
Tensor model_stage_grad(Model *m) {
    model_grad_lowp_invalidate(m);
    return m->dx;
}
Tensor model_ids(Model *m, int j) { return tensor_1d((int32_t *)m->ids.data + (int64_t)j * m->N, DT_I32, m->N); }

// ---- init ----

static uint64_t splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

// Uniform in (0, 1): 53 random bits, offset by half a step so that log() never sees 0.
static double unit_uniform(uint64_t x) { return ((double)(x >> 11) + 0.5) * (1.0 / 9007199254740992.0); }

void model_init(Model *m, uint64_t seed) {
    int64_t max_numel = 1;
    for (int i = 0; i < m->table.n; i++)
        if (m->table.params[i].numel > max_numel) max_numel = m->table.params[i].numel;
    float *host = xmalloc((size_t)max_numel * sizeof(float));
    double std = m->mc.init_std;
    for (int i = 0; i < m->table.n; i++) {
        const ParamInfo *p = &m->table.params[i];
        if (p->kind == PARAM_NORM) {
            for (int64_t j = 0; j < p->numel; j++) host[j] = 1.0f;
        } else {
            uint64_t key = 1469598103934665603ull;   // FNV-1a of the name, mixed with the seed
            for (const char *c = p->name; *c; c++) key = (key ^ (unsigned char)*c) * 1099511628211ull;
            key = splitmix64(seed ^ splitmix64(key));
            // Element j is one half of the Box-Muller pair j/2, from counters 2*(j/2) and 2*(j/2)+1.
#pragma omp parallel for schedule(static) if (p->numel >= (1 << 16))
            for (int64_t j = 0; j < p->numel; j++) {
                uint64_t pair = (uint64_t)(j / 2);
                double u1 = unit_uniform(splitmix64(key + 2 * pair));
                double u2 = unit_uniform(splitmix64(key + 2 * pair + 1));
                double r = sqrt(-2.0 * log(u1)), a = 2.0 * M_PI * u2;
                host[j] = (float)(std * r * (j % 2 == 0 ? cos(a) : sin(a)));
            }
        }
        m->be->upload(m->params + p->offset, host, (size_t)p->numel * sizeof(float));
    }
    free(host);
    m->wlp_stale = 1;
}

// ---- the stage step ----

// The first stage embeds the input tokens. A later stage may hold the embedding too, as a tied copy for its MTP
// modules only (pipeline parallelism with MTP on the last stage); its input is then the previous stage's output.
static int model_embeds_input(const Model *m) { return m->stage.has_embed && m->stage.layer_begin == 0; }

// Rows j = 0..D+1 of ids: tokens[:, j:T+j] flattened to N, checked against the vocabulary.
static void upload_tokens(Model *m, const int32_t *tokens) {
    int B = m->B, T = m->T, D = m->mc.mtp_depth, S = T + 1 + D, V = m->mc.vocab_size;
    CHECK(tokens, "model: no tokens given");
    for (int b = 0; b < B; b++)
        for (int s = 0; s < S; s++) {
            int32_t tok = tokens[(int64_t)b * S + s];
            CHECK(tok >= 0 && tok < V, "model: token %d at micro-batch position [%d, %d] (of [%d, T + 1 + D = %d]) "
                  "is outside the vocabulary [0, %d)", tok, b, s, B, S, V);
        }
    for (int j = 0; j < D + 2; j++)
        for (int b = 0; b < B; b++)
            memcpy(m->host_ids + (int64_t)j * m->N + (int64_t)b * T, tokens + (int64_t)b * S + j,
                   (size_t)T * sizeof(int32_t));
    m->be->upload(m->ids.data, m->host_ids, (size_t)(D + 2) * m->N * sizeof(int32_t));
}

// Embedding (when owned) and the main layers.
static void forward_layers(Model *m, const int32_t *tokens, float grad_scale, float balance_alpha, int train) {
    const Backend *be = m->be;
    if (m->wlp && m->wlp_stale) {   // one conversion pass over every parameter, once per optimizer step
        be->convert(tensor_1d(m->wlp, DT_BF16, m->table.total), tensor_1d(m->params, DT_F32, m->table.total));
        m->wlp_stale = 0;
    }
    upload_tokens(m, tokens);
    m->train = train;
    m->grad_scale = grad_scale;
    m->balance_alpha = balance_alpha;
    if (m->n_moe > 0)
        be->upload(m->bias.data, m->bias_host, (size_t)m->n_moe * m->mc.n_routed_experts * sizeof(float));
    if (model_embeds_input(m)) be->embedding_forward(m->res[0], model_ids(m, 0), m->embed.w);
    for (int l = 0; l < m->n_main; l++) block_forward(m, &m->layers[l], train);
}

// The micro-batch's losses, read from backend memory in one download (the host waits here, once per micro-batch,
// for the forward pass) and summed in double in a fixed order: each head's N token losses, then the balance losses
// of the main layers and of the MTP blocks in order.
static void read_losses(Model *m, MicroLosses *r) {
    const int N = m->N, D = m->mc.mtp_depth;
    m->be->download(m->host_losses, m->loss_buf.data, (size_t)m->loss_buf.shape[0] * sizeof(float));
    if (m->balance_alpha > 0)
        for (int l = 0; l < m->n_main + m->n_mtp; l++)
            if (m->layers[l].is_moe) r->balance_loss += m->host_losses[m->losses.shape[0] + l];
    if (!m->stage.has_head) return;
    for (int h = 0; h <= m->n_mtp; h++) {
        double sum = 0;
        for (int i = 0; i < N; i++) sum += m->host_losses[(int64_t)h * N + i];
        if (h == 0) r->lm_loss = sum / N;
        else r->mtp_loss[h - 1] = sum / N;
    }
    r->total = r->lm_loss;
    for (int i = 0; i < m->n_mtp; i++) r->total += m->mtp_lambda / D * r->mtp_loss[i];
}

void model_stage_forward(Model *m, const int32_t *tokens, float grad_scale, float mtp_lambda, float balance_alpha,
                         int train, MicroLosses *out) {
    MicroLosses r;
    memset(&r, 0, sizeof r);
    model_grad_lowp_invalidate(m);
    forward_layers(m, tokens, grad_scale, balance_alpha, train);
    m->mtp_lambda = mtp_lambda;
    if (m->stage.has_head) {
        int N = m->N, D = m->mc.mtp_depth;
        Tensor h = m->res[m->n_main];
        head_forward(m, h, m->final_norm, m->rstd_f, model_ids(m, 1), tensor_rows(m->losses, 0, N), grad_scale / N,
                     train, m->dx, 0);
        // MTP depth k's CE carries weight lambda / D in the total, so its gradient seed is scaled the same way.
        float mtp_scale = D > 0 ? grad_scale * mtp_lambda / ((float)D * N) : 0.0f;
        for (int i = 0; i < m->n_mtp; i++) {
            mtp_forward(m, i, h, mtp_scale, train);
            h = m->mtp[i].block->x_out;
        }
    }
    read_losses(m, &r);
    r.total += r.balance_loss;
    if (out) *out = r;
}

void model_stage_backward(Model *m) {
    CHECK(m->train, "model_stage_backward: no training forward to differentiate (model_stage_forward with train 1 "
          "must come first, once per backward)");
    m->train = 0;
    // MTP depths in reverse: depth i's hnorm path adds into the gradient of its h_prev (depth i-1's output, or the
    // main model's last hidden state, whose dx the main head already wrote).
    for (int i = m->n_mtp - 1; i >= 0; i--) {
        Tensor h_prev = i == 0 ? m->res[m->n_main] : m->mtp[i - 1].block->x_out;
        Tensor dprev = i == 0 ? m->dx : m->mtp[i - 1].dres;
        mtp_backward(m, i, h_prev, dprev);
    }
    for (int l = m->n_main - 1; l >= 0; l--) block_backward(m, &m->layers[l], m->dx);
    if (model_embeds_input(m)) m->be->embedding_backward(m->embed.g, m->dx, model_ids(m, 0));
}

void model_step(Model *m, const int32_t *tokens, float grad_scale, float mtp_lambda, float balance_alpha,
                MicroLosses *out) {
    model_stage_forward(m, tokens, grad_scale, mtp_lambda, balance_alpha, 1, out);
    model_stage_backward(m);
}

void model_eval(Model *m, const int32_t *tokens, float mtp_lambda, float balance_alpha, MicroLosses *out) {
    model_stage_forward(m, tokens, 0.0f, mtp_lambda, balance_alpha, 0, out);
}

void model_forward_logits(Model *m, const int32_t *tokens, float *logits_host) {
    CHECK(model_embeds_input(m) && m->stage.has_head, "model_forward_logits needs a stage with the embedding and the "
          "head (a single-stage model)");
    forward_layers(m, tokens, 0.0f, 0.0f, 0);
    head_logits(m, m->res[m->n_main], logits_host);
}
