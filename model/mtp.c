// Multi-token prediction (RECIPE.md section 1), depth k = i + 1:
//   emb  = Emb(tokens[:, k:T+k])                                    (N, d)   the shared embedding
//   cat  = [enorm(emb) ; hnorm(h_prev)]                             (N, 2d)  the public loaders' order
//   x_in = eh_proj(cat)                                             (N, d)
//   h_k  = block_k(x_in)                                            (N, d)   model.layers.<n_layers + i>
//   loss = CE(lm_head(shared_head.norm(h_k)), tokens[:, k+1:T+k+1])          the shared head
// h_prev is the main model's last hidden state before the final norm for k = 1, else h_{k-1}.
#include "model/model_impl.h"

static void mtp_build_cat(Model *m, MtpDepth *p, Tensor h_prev) {
    const Backend *be = m->be;
    float eps = (float)m->mc.norm_eps;
    int d = m->mc.dim;
    be->rmsnorm_forward(p->en, p->rstd_e, p->emb, p->enorm.w, eps);
    be->rmsnorm_forward(p->hn, p->rstd_h, h_prev, p->hnorm.w, eps);
    be->copy_cols(p->cat, 0, p->en, 0, d, 0);
    be->copy_cols(p->cat, d, p->hn, 0, d, 0);
}

void mtp_forward(Model *m, int i, Tensor h_prev, float ce_scale, int train) {
    const Backend *be = m->be;
    MtpDepth *p = &m->mtp[i];
    be->embedding_forward(p->emb, model_ids(m, i + 1), m->embed.w);
    mtp_build_cat(m, p, h_prev);
    be->matmul_forward(p->block->x_in, p->cat, p->eh_proj.w, 0);
    block_forward(m, p->block, train);
    // Its head's gradient goes into dres (overwrite); depth i + 1's backward adds its hnorm path later.
    head_forward(m, p->block->x_out, p->head_norm, p->rstd_f, model_ids(m, i + 2),
                 tensor_rows(m->losses, (int64_t)(i + 1) * m->N, (int64_t)(i + 2) * m->N), ce_scale, train, p->dres, 0);
}

void mtp_backward(Model *m, int i, Tensor h_prev, Tensor dprev) {
    const Backend *be = m->be;
    MtpDepth *p = &m->mtp[i];
    BackScratch *bs = &m->bs;
    int d = m->mc.dim;
    block_backward(m, p->block, p->dres);                      // dres: now w.r.t. the block input
    if (m->cfg.train.recompute) mtp_build_cat(m, p, h_prev);
    // dres's BF16 view: written by the block's in_norm rmsnorm_backward, which formed dres.
    be->matmul_backward(bs->dcat, p->eh_proj.g, model_grad_lowp(m, p->dres), p->cat, p->eh_proj.w, 0);
    // [emb ; h] split: the emb half through enorm into the embedding table, the h half through hnorm into dprev.
    be->copy_cols(bs->dtmp, 0, bs->dcat, 0, d, 0);
    be->copy_cols(bs->dh, 0, bs->dcat, d, d, 0);
    // dprev (dx or the previous depth's dres) is final after this: its BF16 view, for the blocks below, too.
    be->rmsnorm_backward(dprev, p->hnorm.g, bs->dh, h_prev, p->hnorm.w, p->rstd_h, 1,
                         model_grad_lowp_out(m, dprev));
    be->rmsnorm_backward(bs->demb, p->enorm.g, bs->dtmp, p->emb, p->enorm.w, p->rstd_e, 0, model_no_lowp());
    be->embedding_backward(m->embed.g, bs->demb, model_ids(m, i + 1));
}
