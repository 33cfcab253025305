// The residual stream's two fusions, chosen by DSV3_RESID_FUSE at model_create:
//
// gemm: a branch's residual add in its output GEMM. x_mid = x_in + o_proj(o) and x_out = x_mid + FFN(h2) become
//   one matmul_forward_residual each (the residual read as the GEMM's C operand, the stream written as D) instead
//   of a copy of the FP32 stream (N, d) followed by an accumulating GEMM.
// lowp: the BF16 view of a residual gradient written by the op that forms it. Every residual gradient (dx, an MTP
//   depth's dres) gets its final value from a rmsnorm_backward into it (a block's post_norm and in_norm accumulating,
//   a head's final norm overwriting, MTP's hnorm accumulating), and its next readers are BF16 GEMMs (the FFN / MoE
//   backward, o_proj's backward, MTP's eh_proj backward). That rmsnorm_backward also writes dxb (its dinp_lowp
//   output) instead of a separate convert pass reading dx again.
//
// Values: "1" both, "0" neither (a copy, and convert, as before), "gemm" or "lowp" one of them; unset or empty:
// RESID_FUSE_DEFAULT. Both give the unfused path's bits: dinp_lowp rounds what dinp holds as convert does, and the
// residual GEMM is the accumulating GEMM with C read from elsewhere (on the cpu a copy then that GEMM; on the GPU the
// same cuBLASLt plan and algorithm, only C's pointer differs: tests/gpu pins both).
#include "model/model_impl.h"
#include "train/check.h"

#include <stdlib.h>
#include <string.h>

// What an unset DSV3_RESID_FUSE means: both fusions (the op tests and gpu_step_resid_fusion_same_bits passed on an
// H100 on 2026-11-23; bench-1gpu MTP 0 117.8K -> 119.0K tokens/s, the same losses).
static const char *const RESID_FUSE_DEFAULT = "1";

void model_residual_select(Model *m) {
    const char *e = getenv("DSV3_RESID_FUSE");
    if (!e || !*e) e = RESID_FUSE_DEFAULT;
    if (!strcmp(e, "1")) m->fuse_gemm = 1, m->fuse_lowp = 1;
    else if (!strcmp(e, "0")) m->fuse_gemm = 0, m->fuse_lowp = 0;
    else if (!strcmp(e, "gemm")) m->fuse_gemm = 1, m->fuse_lowp = 0;
    else if (!strcmp(e, "lowp")) m->fuse_gemm = 0, m->fuse_lowp = 1;
    else die("DSV3_RESID_FUSE=%s: expected 1 (both fusions), 0 (neither), gemm or lowp", e);
    m->dxb_of = NULL;
}

Tensor model_residual_begin(Model *m, Tensor out, Tensor res) {
    if (m->fuse_gemm) return res;
    m->be->copy(out.data, res.data, (size_t)tensor_numel(&out) * dtype_size(out.dtype));
    return tensor_2d(NULL, res.dtype, res.shape[0], res.shape[1]);
}

void model_residual_matmul(const Backend *be, Tensor out, Tensor res, Tensor inp, Tensor w) {
    if (res.data) be->matmul_forward_residual(out, res, inp, w);
    else be->matmul_forward(out, inp, w, 1);
}

// dxb_of names the residual gradient whose BF16 copy dxb holds: set where dxb is written (the fused rmsnorm_backward
// output, or a convert here), cleared where a residual gradient may change outside the model's ops (model_stage_grad
// hands the buffer out; a new forward starts). Every op that writes a residual gradient inside the model is a
// rmsnorm_backward given model_grad_lowp_out, which moves the mark, so dxb is never read stale.
Tensor model_grad_lowp_out(Model *m, Tensor g) {
    if (m->adt == DT_F32 || !m->fuse_lowp) return tensor_2d(NULL, DT_BF16, g.shape[0], g.shape[1]);
    m->dxb_of = g.data;
    return tensor_2d(m->dxb.data, m->adt, g.shape[0], g.shape[1]);
}

Tensor model_grad_lowp(Model *m, Tensor g) {
    if (m->adt == DT_F32) return g;
    Tensor b = tensor_2d(m->dxb.data, m->adt, g.shape[0], g.shape[1]);
    if (m->fuse_lowp && m->dxb_of == g.data) return b;   // written with g by the rmsnorm_backward that formed g
    m->be->convert(b, g);
    m->dxb_of = m->fuse_lowp ? g.data : NULL;
    return b;
}

void model_grad_lowp_invalidate(Model *m) { m->dxb_of = NULL; }
