// SwiGLU FFN: out = res + down(silu(gate(x)) * up(x)) (res.data NULL: out +=), the dense FFN of the first layers and
// the shared experts of a MoE layer (width n_shared * moe_inter_dim). x, out, res (N, d); g, u, a (N, I).
#include "model/model_impl.h"

void ffn_forward(const Backend *be, Ffn *f, Tensor x, Tensor out, Tensor res) {
    be->matmul_forward(f->g, x, f->gate.w, 0);
    be->matmul_forward(f->u, x, f->up.w, 0);
    be->swiglu_forward(f->a, f->g, f->u);
    model_residual_matmul(be, out, res, f->a, f->down.w);
}

// The SwiGLU output a is not kept under recompute: it is rebuilt from the kept g and u.
void ffn_recompute(const Backend *be, Ffn *f) { be->swiglu_forward(f->a, f->g, f->u); }

void ffn_backward(const Backend *be, Ffn *f, Tensor x, Tensor dout, Tensor dx, int accumulate_dx, BackScratch *bs) {
    int64_t n = x.shape[0], w = f->width;
    Tensor da = tensor_2d(bs->dfa.data, bs->dfa.dtype, n, w);
    Tensor dg = tensor_2d(bs->dfg.data, bs->dfg.dtype, n, w);
    Tensor du = tensor_2d(bs->dfu.data, bs->dfu.dtype, n, w);
    be->matmul_backward(da, f->down.g, dout, f->a, f->down.w, 0);
    be->swiglu_backward(dg, du, da, f->g, f->u);
    be->matmul_backward(dx, f->gate.g, dg, x, f->gate.w, accumulate_dx);
    be->matmul_backward(dx, f->up.g, du, x, f->up.w, 1);
}
