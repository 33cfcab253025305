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
// A kept tensor, or a view of the recompute scratch `shared` with this shape.
static Tensor kept_or(Arena *a, int recompute, Tensor shared, int64_t r, int64_t c) {
    return recompute ? tensor_2d(shared.data, DT_F32, r, c) : f32(a, r, c);
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
    L->x_mid = f32(a, N, d);
    L->rstd1 = f32v(a, N);
    L->h = kept_or(a, R, rs->h, N, d);
    if (qlr > 0) {
        L->qa = f32(a, N, qlr);
        L->rstd_q = f32v(a, N);
        L->cq = kept_or(a, R, rs->cq, N, qlr);
    }
    L->q = kept_or(a, R, rs->q, N, H * (nope + rope));
    L->ckv = f32(a, N, kvlr);
    L->krope = f32(a, N, rope);
    L->rstd_kv = f32v(a, N);
    L->ckvn = kept_or(a, R, rs->ckvn, N, kvlr);
    L->k = kept_or(a, R, rs->k, N, H * (nope + rope));
    L->v = kept_or(a, R, rs->v, N, H * dv);
    L->o = f32(a, N, H * dv);
    L->lse = tensor_3d(arena_take(a, (size_t)N * H * sizeof(float)), DT_F32, m->B, H, m->T);
    L->rstd2 = f32v(a, N);
    L->h2 = kept_or(a, R, rs->h2, N, d);
    if (L->ffn.width > 0) {
        L->ffn.g = f32(a, N, L->ffn.width);
        L->ffn.u = f32(a, N, L->ffn.width);
        L->ffn.a = kept_or(a, R, rs->fa, N, L->ffn.width);
    }
    if (L->is_moe) {
        L->scores = f32(a, N, E);
        L->topk = i32(a, N, K);
        L->gates = f32(a, N, K);
        L->order = i32v(a, N * K);
        L->offsets = i32v(a, E + 1);
        L->xs = f32(a, N * K, d);
        L->eg = f32(a, N * K, mi);
        L->eu = f32(a, N * K, mi);
        L->ea = kept_or(a, R, rs->ea, N * K, mi);
        L->ey = f32(a, N * K, d);
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
    m->kva = f32(a, N, kvlr + rope);
    m->kv = f32(a, N, H * (nope + dv));
    m->router_logits = f32(a, N, E);
    if (m->stage.has_head) {
        m->rstd_f = f32v(a, N);
        m->hn_f = f32(a, N, d);
        m->head_logits = f32(a, m->head_chunk, V);
        m->losses = f32v(a, N);
        m->dhn = f32(a, N, d);
    }

    RecomputeScratch rs = {0};
    if (R) {
        rs.h = f32(a, N, d);
        rs.cq = f32(a, N, qlr > 0 ? qlr : 1);
        rs.q = f32(a, N, H * (nope + rope));
        rs.ckvn = f32(a, N, kvlr);
        rs.k = f32(a, N, H * (nope + rope));
        rs.v = f32(a, N, H * dv);
        rs.h2 = f32(a, N, d);
        rs.fa = f32(a, N, max_ffn);
        rs.ea = f32(a, N * K, mi);
        rs.cat = f32(a, N, 2 * d);
    }
    for (int l = 0; l < m->n_main; l++) layout_layer(m, a, &m->layers[l], &rs, m->res[l], m->res[l + 1]);

    Tensor en = {0}, hn = {0};
    if (m->n_mtp > 0) {
        en = f32(a, N, d);
        hn = f32(a, N, d);
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
    bs->dh = f32(a, N, d);
    bs->d_o = f32(a, N, H * dv);
    bs->dq = f32(a, N, H * (nope + rope));
    if (qlr > 0) {
        bs->dcq = f32(a, N, qlr);
        bs->dqa = f32(a, N, qlr);
    }
    bs->dkva = f32(a, N, kvlr + rope);
    bs->dckvn = f32(a, N, kvlr);
    bs->dckv = f32(a, N, kvlr);
    bs->dkrope = f32(a, N, rope);
    bs->dkv = f32(a, N, H * (nope + dv));
    bs->dk = f32(a, N, H * (nope + rope));
    bs->dv = f32(a, N, H * dv);
    bs->dfa = f32(a, N, max_ffn);
    bs->dfg = f32(a, N, max_ffn);
    bs->dfu = f32(a, N, max_ffn);
    if (m->n_moe > 0) {
        bs->dlogits = f32(a, N, E);
        bs->dscores = f32(a, N, E);
        bs->dgates = f32(a, N, K);
        bs->dys = f32(a, N * K, d);
        bs->dxs = f32(a, N * K, d);
        bs->dxs2 = f32(a, N * K, d);
        bs->dea = f32(a, N * K, mi);
        bs->deg = f32(a, N * K, mi);
        bs->deu = f32(a, N * K, mi);
    }
    if (m->n_mtp > 0) {
        bs->dcat = f32(a, N, 2 * d);
        bs->dtmp = f32(a, N, d);
    }
}

void model_layout_activations(Model *m) {
    Arena a = {NULL, 0};
    layout_all(m, &a);
    m->arena_bytes = a.off;
    m->arena = m->be->alloc(a.off);
    a = (Arena){m->arena, 0};
    layout_all(m, &a);
    CHECK(a.off == m->arena_bytes, "model: activation layout is not reproducible (%zu vs %zu bytes)", a.off,
          m->arena_bytes);
}
