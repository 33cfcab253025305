// Multi-head latent attention (RECIPE.md section 1), forward and backward over the backend ops.
//
//   h = RMSNorm(x_in)                                                   (N, d)
//   q = q_b_proj(q_a_layernorm(q_a_proj(h)))  or  q_proj(h)             (N, H, nope + rope), RoPE on the rope dims
//   [c_kv ; k_rope] = kv_a_proj_with_mqa(h)                             (N, kvlr + rope), RoPE on k_rope
//   [k_nope ; v] per head = kv_b_proj(kv_a_layernorm(c_kv))             (N, H, nope + dv)
//   k = [k_nope ; k_rope] per head (k_rope shared by all heads)         (N, H, nope + rope)
//   o = causal softmax(q k^T * scale) v                                 (N, H, dv)
//   x_mid = x_in + o_proj(o)                                            (N, d)
#include "model/model_impl.h"

// (N, H*w) seen as (B, T, H, w) for the attention op, or as (N, H, w) for the per-head ops.
static Tensor as_heads(Tensor t, int B, int T, int H) {
    return tensor_4d(t.data, t.dtype, B, T, H, t.shape[1] / H);
}
static Tensor per_head(Tensor t, int H) { return tensor_3d(t.data, t.dtype, t.shape[0], H, t.shape[1] / H); }

// The query: h -> q (N, H*(nope+rope)) with RoPE applied. Needs cq kept or recomputed first (q_lora path).
static void mla_query(Model *m, Layer *L) {
    const Backend *be = m->be;
    const ModelConfig *mc = &m->mc;
    if (mc->q_lora_rank > 0) be->matmul_forward(L->q, L->cq, L->q_b.w, 0);
    else be->matmul_forward(L->q, L->h, L->q_proj.w, 0);
    Tensor q3 = tensor_3d(L->q.data, L->q.dtype, m->N, mc->n_heads, mc->qk_nope_head_dim + mc->qk_rope_head_dim);
    be->rope_apply(q3, mc->qk_nope_head_dim, mc->qk_rope_head_dim, m->cos, m->sin, m->T, 0);
}

// ckvn = RMSNorm(ckv); kv = kv_b_proj(ckvn); k, v assembled with k_rope.
static void mla_keys_values(Model *m, Layer *L) {
    const Backend *be = m->be;
    const ModelConfig *mc = &m->mc;
    be->rmsnorm_forward(L->ckvn, L->rstd_kv, L->ckv, L->kv_a_norm.w, (float)mc->norm_eps);
    be->matmul_forward(m->kv, L->ckvn, L->kv_b.w, 0);
    be->mla_kv_assemble(per_head(L->k, mc->n_heads), per_head(L->v, mc->n_heads), m->kv, L->krope, mc->qk_nope_head_dim,
                        mc->qk_rope_head_dim, mc->v_head_dim);
}

void mla_forward(Model *m, Layer *L) {
    const Backend *be = m->be;
    const ModelConfig *mc = &m->mc;
    float eps = (float)mc->norm_eps;
    int kvlr = mc->kv_lora_rank, rope = mc->qk_rope_head_dim, H = mc->n_heads;

    be->rmsnorm_forward(L->h, L->rstd1, L->x_in, L->in_norm.w, eps);
    if (mc->q_lora_rank > 0) {
        be->matmul_forward(L->qa, L->h, L->q_a.w, 0);
        be->rmsnorm_forward(L->cq, L->rstd_q, L->qa, L->q_a_norm.w, eps);
    }
    mla_query(m, L);

    be->matmul_forward(m->kva, L->h, L->kv_a.w, 0);                 // (N, kvlr + rope)
    be->copy_cols(L->ckv, 0, m->kva, 0, kvlr, 0);
    be->copy_cols(L->krope, 0, m->kva, kvlr, rope, 0);
    be->rope_apply(tensor_3d(L->krope.data, L->krope.dtype, m->N, 1, rope), 0, rope, m->cos, m->sin, m->T, 0);
    mla_keys_values(m, L);

    be->attention_forward(as_heads(L->o, m->B, m->T, H), L->lse, as_heads(L->q, m->B, m->T, H),
                          as_heads(L->k, m->B, m->T, H), as_heads(L->v, m->B, m->T, H), m->softmax_scale);
    // x_mid = x_in + o_proj(o): one GEMM with x_in as its residual (or x_in copied first: model_residual_begin)
    model_residual_matmul(be, L->x_mid, model_residual_begin(m, L->x_mid, L->x_in), L->o, L->o_proj.w);
}

// Recompute (cfg->train.recompute): the RMSNorm outputs h, cq, ckvn and the up-projections q, k, v, from the kept
// x_in, qa, ckv, k_rope with the same ops as the forward, hence the same bits.
static void mla_recompute(Model *m, Layer *L) {
    const Backend *be = m->be;
    const ModelConfig *mc = &m->mc;
    float eps = (float)mc->norm_eps;
    be->rmsnorm_forward(L->h, L->rstd1, L->x_in, L->in_norm.w, eps);
    if (mc->q_lora_rank > 0) be->rmsnorm_forward(L->cq, L->rstd_q, L->qa, L->q_a_norm.w, eps);
    mla_query(m, L);
    mla_keys_values(m, L);
}

void mla_backward(Model *m, Layer *L, Tensor dx) {
    const Backend *be = m->be;
    const ModelConfig *mc = &m->mc;
    BackScratch *bs = &m->bs;
    int kvlr = mc->kv_lora_rank, rope = mc->qk_rope_head_dim, nope = mc->qk_nope_head_dim, H = mc->n_heads;
    int B = m->B, T = m->T, N = m->N;

    // dx's BF16 view: written by block_backward's post_norm rmsnorm_backward, which formed dx (model_grad_lowp).
    be->matmul_backward(bs->d_o, L->o_proj.g, model_grad_lowp(m, dx), L->o, L->o_proj.w, 0);
    if (m->cfg.train.recompute) mla_recompute(m, L);
    be->attention_backward(as_heads(bs->dq, B, T, H), as_heads(bs->dk, B, T, H), as_heads(bs->dv, B, T, H),
                           as_heads(bs->d_o, B, T, H), as_heads(L->q, B, T, H), as_heads(L->k, B, T, H),
                           as_heads(L->v, B, T, H), as_heads(L->o, B, T, H), L->lse, m->softmax_scale);
    // RoPE is a rotation: its backward rotates the gradient back.
    be->rope_apply(tensor_3d(bs->dq.data, bs->dq.dtype, N, H, nope + rope), nope, rope, m->cos, m->sin, T, 1);
    be->mla_kv_assemble_backward(bs->dkv, bs->dkrope, per_head(bs->dk, H), per_head(bs->dv, H), nope, rope,
                                 mc->v_head_dim);
    be->rope_apply(tensor_3d(bs->dkrope.data, bs->dkrope.dtype, N, 1, rope), 0, rope, m->cos, m->sin, T, 1);

    be->matmul_backward(bs->dckvn, L->kv_b.g, bs->dkv, L->ckvn, L->kv_b.w, 0);
    be->rmsnorm_backward(bs->dckv, L->kv_a_norm.g, bs->dckvn, L->ckv, L->kv_a_norm.w, L->rstd_kv, 0, model_no_lowp());
    be->copy_cols(bs->dkva, 0, bs->dckv, 0, kvlr, 0);
    be->copy_cols(bs->dkva, kvlr, bs->dkrope, 0, rope, 0);
    be->matmul_backward(bs->dh, L->kv_a.g, bs->dkva, L->h, L->kv_a.w, 0);

    if (mc->q_lora_rank > 0) {
        be->matmul_backward(bs->dcq, L->q_b.g, bs->dq, L->cq, L->q_b.w, 0);
        be->rmsnorm_backward(bs->dqa, L->q_a_norm.g, bs->dcq, L->qa, L->q_a_norm.w, L->rstd_q, 0, model_no_lowp());
        be->matmul_backward(bs->dh, L->q_a.g, bs->dqa, L->h, L->q_a.w, 1);
    } else {
        be->matmul_backward(bs->dh, L->q_proj.g, bs->dq, L->h, L->q_proj.w, 1);
    }
    // dx is now w.r.t. x_in, final for the block below (or MTP's eh_proj): its BF16 view is written here too.
    be->rmsnorm_backward(dx, L->in_norm.g, bs->dh, L->x_in, L->in_norm.w, L->rstd1, 1,
                         model_grad_lowp_out(m, dx));
}
