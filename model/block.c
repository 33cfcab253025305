// One transformer block: x_mid = x_in + MLA(RMSNorm(x_in)); x_out = x_mid + FFN(RMSNorm(x_mid)), FFN dense SwiGLU
// or MoE. Backward runs in place on one residual-gradient buffer dx (N, d): the residual adds pass the gradient
// through unchanged, and each branch adds its input gradient into dx (accumulate flags).
#include "model/model_impl.h"

void block_forward(Model *m, Layer *L, int train) {
    const Backend *be = m->be;
    mla_forward(m, L);
    be->rmsnorm_forward(L->h2, L->rstd2, L->x_mid, L->post_norm.w, (float)m->mc.norm_eps);
    // x_out = x_mid + FFN(h2): the first GEMM into x_out (the dense or shared down projection) adds x_mid
    Tensor res = model_residual_begin(m, L->x_out, L->x_mid);
    if (!L->is_moe) ffn_forward(be, &L->ffn, L->h2, L->x_out, res);
    else moe_forward(m, L, L->x_out, res, train);
}

void block_backward(Model *m, Layer *L, Tensor dx) {
    const Backend *be = m->be;
    Tensor dh2 = m->bs.dh;
    if (m->cfg.train.recompute) {
        be->rmsnorm_forward(L->h2, L->rstd2, L->x_mid, L->post_norm.w, (float)m->mc.norm_eps);
        if (L->is_moe) moe_recompute(m, L);
        else ffn_recompute(be, &L->ffn);
    }
    // What the FFN's backward GEMMs read: dx's BF16 view, written by the rmsnorm_backward that formed dx (the block
    // above's in_norm, the head's final norm, MTP's hnorm; model_grad_lowp converts where none did).
    Tensor dxl = model_grad_lowp(m, dx);
    if (L->is_moe) moe_backward(m, L, dxl, dh2);
    else ffn_backward(be, &L->ffn, L->h2, dxl, dh2, 0, &m->bs);
    // dx is now w.r.t. x_mid: its BF16 view, for o_proj's backward in mla_backward, is written here too.
    be->rmsnorm_backward(dx, L->post_norm.g, dh2, L->x_mid, L->post_norm.w, L->rstd2, 1,
                         model_grad_lowp_out(m, dx));
    mla_backward(m, L, dx);
}
