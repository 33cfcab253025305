// The output head: RMSNorm -> lm_head (V, d) -> softmax cross-entropy, shared by the main model (model.norm) and
// every MTP depth (its shared_head.norm). The logits (N, V) are never materialized whole: rows go through in chunks
// of m->head_chunk (HEAD_CHUNK_ELEMS / V rows), each chunk's loss gradient is formed in place of its logits and
// immediately pushed through the head's backward, so the head's backward runs during the forward pass.
#include "model/model_impl.h"

void head_forward(Model *m, Tensor x, Weight norm, Tensor rstd, Tensor targets, Tensor losses, float ce_scale,
                  int train, Tensor dx, int accumulate_dx) {
    const Backend *be = m->be;
    int N = m->N, V = m->mc.vocab_size;
    be->rmsnorm_forward(m->hn_f, rstd, x, norm.w, (float)m->mc.norm_eps);
    for (int r0 = 0; r0 < N; r0 += m->head_chunk) {
        int r1 = r0 + m->head_chunk < N ? r0 + m->head_chunk : N;
        Tensor logits = tensor_2d(m->head_logits.data, DT_F32, r1 - r0, V);
        Tensor dlogits = tensor_2d(m->head_dlogits.data, m->head_dlogits.dtype, r1 - r0, V);
        Tensor hn = tensor_rows(m->hn_f, r0, r1);
        be->matmul_forward(logits, hn, m->head.w, 0);
        // dlogits = ce_scale * (softmax - onehot): over the logits (F32), or into the BF16 buffer the GEMMs read
        Tensor grad = train ? dlogits : tensor_2d(NULL, DT_F32, r1 - r0, V);   // eval: losses only
        be->cross_entropy_forward_backward(tensor_rows(losses, r0, r1), grad, logits, tensor_rows(targets, r0, r1),
                                           ce_scale);
        if (train) be->matmul_backward(tensor_rows(m->dhn, r0, r1), m->head.g, dlogits, hn, m->head.w, 0);
    }
    // dx's BF16 view for the backward GEMMs that read dx next (the last block's FFN, MTP's eh_proj) is written here
    // too; an MTP depth's hnorm accumulating into dx later writes it again.
    if (train)
        be->rmsnorm_backward(dx, norm.g, m->dhn, x, norm.w, rstd, accumulate_dx, model_grad_lowp_out(m, dx));
}

void head_logits(Model *m, Tensor x, float *logits_host) {
    const Backend *be = m->be;
    int N = m->N, V = m->mc.vocab_size;
    be->rmsnorm_forward(m->hn_f, m->rstd_f, x, m->final_norm.w, (float)m->mc.norm_eps);
    for (int r0 = 0; r0 < N; r0 += m->head_chunk) {
        int r1 = r0 + m->head_chunk < N ? r0 + m->head_chunk : N;
        Tensor logits = tensor_2d(m->head_logits.data, DT_F32, r1 - r0, V);
        be->matmul_forward(logits, tensor_rows(m->hn_f, r0, r1), m->head.w, 0);
        be->download(logits_host + (int64_t)r0 * V, logits.data, (size_t)(r1 - r0) * V * sizeof(float));
    }
}
