// The activation arena: every tensor a micro-batch needs, placed in one backend allocation made once in
// model_create. model_layout_activations runs the same placement twice: first against a NULL base to measure, then
// against the allocation. Tensors marked [R] in model_impl.h point into one shared recompute scratch when
// cfg->train.recompute is on (each layer overwrites it in forward; backward rebuilds it layer by layer), and are
// per layer otherwise. Backward scratch (BackScratch) is one layer's worth, shared by all layers.
#include "model/model_impl.h"
#include "train/check.h"

#define ARENA_ALIGN 256

typedef struct {
    char *base;   // NULL while measuring
    size_t off;
    DType adt;    // the activation dtype (m->adt)
} Arena;

static void *arena_take(Arena *a, size_t bytes) {
    size_t off = a->off;
    a->off += (bytes + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN;
    return a->base ? a->base + off : NULL;
}

static Tensor f32(Arena *a, int64_t r, int64_t c) {
    return tensor_2d(arena_take(a, (size_t)(r * c) * sizeof(float)), DT_F32, r, c);
}
static Tensor f32v(Arena *a, int64_t n) { return tensor_1d(arena_take(a, (size_t)n * sizeof(float)), DT_F32, n); }
static Tensor i32(Arena *a, int64_t r, int64_t c) {
    return tensor_2d(arena_take(a, (size_t)(r * c) * sizeof(int32_t)), DT_I32, r, c);
}
static Tensor i32v(Arena *a, int64_t n) {
    return tensor_1d(arena_take(a, (size_t)n * sizeof(int32_t)), DT_I32, n);
}
// An activation in the model's activation dtype (BF16 under train.precision bf16, else F32).
static Tensor act(Arena *a, int64_t r, int64_t c) {
    return tensor_2d(arena_take(a, (size_t)(r * c) * dtype_size(a->adt)), a->adt, r, c);
}
// A kept activation, or a view of the recompute scratch `shared` with this shape.
static Tensor kept_or(Arena *a, int recompute, Tensor shared, int64_t r, int64_t c) {
    return recompute ? tensor_2d(shared.data, a->adt, r, c) : act(a, r, c);
}

typedef struct {   // the recompute scratch (one of each; raw widths are the maxima over layers)
    Tensor h, cq, q, ckvn, k, v, h2, fa, ea, cat;
} RecomputeScratch;

static void layout_layer(Model *m, Arena *a, Layer *L, const RecomputeScratch *rs, Tensor x_in, Tensor x_out) {
    const ModelConfig *mc = &m->mc;
    int R = m->cfg.train.recompute;
    int64_t N = m->N, d = mc->dim, H = mc->n_heads, nope = mc->qk_nope_head_dim, rope = mc->qk_rope_head_dim;
    int64_t dv = mc->v_head_dim, qlr = mc->q_lora_rank, kvlr = mc->kv_lora_rank;
    int64_t E = mc->n_routed_experts, K = mc->n_activated_experts, mi = mc->moe_inter_dim;

    L->x_in = x_in;
    L->x_out = x_out;
    L->x_mid = f32(a, N, d);   // the residual stream stays FP32 (RECIPE.md 1)
    L->rstd1 = f32v(a, N);
    L->h = kept_or(a, R, rs->h, N, d);
    if (qlr > 0) {
        L->qa = act(a, N, qlr);
        L->rstd_q = f32v(a, N);
        L->cq = kept_or(a, R, rs->cq, N, qlr);
    }
    L->q = kept_or(a, R, rs->q, N, H * (nope + rope));
    L->ckv = act(a, N, kvlr);
    L->krope = act(a, N, rope);
    L->rstd_kv = f32v(a, N);
    L->ckvn = kept_or(a, R, rs->ckvn, N, kvlr);
    L->k = kept_or(a, R, rs->k, N, H * (nope + rope));
    L->v = kept_or(a, R, rs->v, N, H * dv);
    L->o = act(a, N, H * dv);
    L->lse = tensor_3d(arena_take(a, (size_t)N * H * sizeof(float)), DT_F32, m->B, H, m->T);
    L->rstd2 = f32v(a, N);
    L->h2 = kept_or(a, R, rs->h2, N, d);
    if (L->ffn.width > 0) {
        L->ffn.g = act(a, N, L->ffn.width);
        L->ffn.u = act(a, N, L->ffn.width);
        L->ffn.a = kept_or(a, R, rs->fa, N, L->ffn.width);
    }
    if (L->is_moe) {
        L->scores = f32(a, N, E);
        L->topk = i32(a, N, K);
        L->gates = f32(a, N, K);
        L->order = i32v(a, N * K);
        L->offsets = i32v(a, E + 1);
        L->xs = act(a, N * K, d);
        L->eg = act(a, N * K, mi);
        L->eu = act(a, N * K, mi);
        L->ea = kept_or(a, R, rs->ea, N * K, mi);
        L->ey = act(a, N * K, d);
    }
}

static void layout_all(Model *m, Arena *a) {
    const ModelConfig *mc = &m->mc;
    int R = m->cfg.train.recompute;
    int64_t N = m->N, d = mc->dim, H = mc->n_heads, nope = mc->qk_nope_head_dim, rope = mc->qk_rope_head_dim;
    int64_t dv = mc->v_head_dim, qlr = mc->q_lora_rank, kvlr = mc->kv_lora_rank, V = mc->vocab_size;
    int64_t E = mc->n_routed_experts, K = mc->n_activated_experts, mi = mc->moe_inter_dim;
    int D = mc->mtp_depth;
    int64_t max_ffn = 1;   // widest dense / shared-expert FFN of the stage
    for (int l = 0; l < m->n_main + m->n_mtp; l++)
        if (m->layers[l].ffn.width > max_ffn) max_ffn = m->layers[l].ffn.width;

    m->bias = f32(a, m->n_moe > 0 ? m->n_moe : 1, E);
    m->cos = f32(a, m->T, rope / 2);
    m->sin = f32(a, m->T, rope / 2);
    m->ids = i32(a, D + 2, N);
    for (int l = 0; l <= m->n_main; l++) m->res[l] = f32(a, N, d);
    m->dx = f32(a, N, d);
    m->kva = act(a, N, kvlr + rope);
    m->kv = act(a, N, H * (nope + dv));
    // The BF16 view of the FP32 residual gradient that the backward GEMMs read (F32: dx itself).
    m->dxb = a->adt == DT_F32 ? m->dx : act(a, N, d);
    m->router_logits = f32(a, N, E);
    // losses and balance losses in one allocation, so that one download reads them
    const int n_heads = m->stage.has_head ? 1 + m->n_mtp : 0, n_layers = m->n_main + m->n_mtp;
    m->loss_buf = f32v(a, (int64_t)n_heads * N + n_layers);
    m->losses = tensor_1d(m->loss_buf.data, DT_F32, (int64_t)n_heads * N);
    m->balance = tensor_1d(m->loss_buf.data ? (float *)m->loss_buf.data + (int64_t)n_heads * N : NULL, DT_F32,
                           n_layers);
    m->counts_dev = i32(a, m->n_moe > 0 ? m->n_moe : 1, E);
    if (m->stage.has_head) {
        m->rstd_f = f32v(a, N);
        m->hn_f = act(a, N, d);
        m->head_logits = f32(a, m->head_chunk, V);   // FP32 logits into the softmax
        // BF16: the chunk's loss gradient for the BF16 head GEMMs (F32: written over the logits)
        m->head_dlogits = a->adt == DT_F32 ? m->head_logits : act(a, m->head_chunk, V);
        m->dhn = act(a, N, d);
    }

    RecomputeScratch rs = {0};
    if (R) {
        rs.h = act(a, N, d);
        rs.cq = act(a, N, qlr > 0 ? qlr : 1);
        rs.q = act(a, N, H * (nope + rope));
        rs.ckvn = act(a, N, kvlr);
        rs.k = act(a, N, H * (nope + rope));
        rs.v = act(a, N, H * dv);
        rs.h2 = act(a, N, d);
        rs.fa = act(a, N, max_ffn);
        rs.ea = act(a, N * K, mi);
        rs.cat = act(a, N, 2 * d);
    }
    for (int l = 0; l < m->n_main; l++) layout_layer(m, a, &m->layers[l], &rs, m->res[l], m->res[l + 1]);

    Tensor en = {0}, hn = {0};
    if (m->n_mtp > 0) {
        en = act(a, N, d);
        hn = act(a, N, d);
    }
    for (int i = 0; i < m->n_mtp; i++) {
        MtpDepth *p = &m->mtp[i];
        p->emb = f32(a, N, d);
        p->rstd_e = f32v(a, N);
        p->rstd_h = f32v(a, N);
        p->rstd_f = f32v(a, N);
        p->en = en;
        p->hn = hn;
        p->cat = kept_or(a, R, rs.cat, N, 2 * d);
        p->dres = f32(a, N, d);
        Tensor x_in = f32(a, N, d), x_out = f32(a, N, d);
        layout_layer(m, a, p->block, &rs, x_in, x_out);
    }

    BackScratch *bs = &m->bs;
    bs->dh = act(a, N, d);
    bs->d_o = act(a, N, H * dv);
    bs->dq = act(a, N, H * (nope + rope));
    if (qlr > 0) {
        bs->dcq = act(a, N, qlr);
        bs->dqa = act(a, N, qlr);
    }
    bs->dkva = act(a, N, kvlr + rope);
    bs->dckvn = act(a, N, kvlr);
    bs->dckv = act(a, N, kvlr);
    bs->dkrope = act(a, N, rope);
    bs->dkv = act(a, N, H * (nope + dv));
    bs->dk = act(a, N, H * (nope + rope));
    bs->dv = act(a, N, H * dv);
    bs->dfa = act(a, N, max_ffn);
    bs->dfg = act(a, N, max_ffn);
    bs->dfu = act(a, N, max_ffn);
    if (m->n_moe > 0) {
        bs->dlogits = f32(a, N, E);
        bs->dlogits_lp = a->adt == DT_F32 ? bs->dlogits : act(a, N, E);
        bs->dscores = f32(a, N, E);
        bs->dgates = f32(a, N, K);
        bs->dys = act(a, N * K, d);
        bs->dxs = act(a, N * K, d);
        bs->dea = act(a, N * K, mi);
        bs->deg = act(a, N * K, mi);
        bs->deu = act(a, N * K, mi);
    }
    if (m->n_mtp > 0) {
        bs->dcat = act(a, N, 2 * d);
        bs->dtmp = act(a, N, d);
        bs->demb = f32(a, N, d);
    }
}

void model_layout_activations(Model *m) {
    Arena a = {NULL, 0, m->adt};
    layout_all(m, &a);
    m->arena_bytes = a.off;
    m->arena = m->be->alloc(a.off);
    a = (Arena){m->arena, 0, m->adt};
    layout_all(m, &a);
    CHECK(a.off == m->arena_bytes, "model: activation layout is not reproducible (%zu vs %zu bytes)", a.off,
          m->arena_bytes);
}
