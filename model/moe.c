// DeepSeekMoE (RECIPE.md section 1): router, sequence-wise balance loss, shared experts and routed experts.
//
//   logits = h2 @ gate^T (FP32)                      (N, E)
//   scores, topk_idx, gates = moe_route(logits, bias)  (N, E), (N, K), (N, K)
//   out = res + shared(h2) + sum_k gates[t, k] * expert_{topk_idx[t, k]}(h2[t])
//
// The routed part is three separate steps with the token exchange between them, so that expert parallelism can
// move rows between ranks at the two seams without touching the rest:
//   moe_dispatch        plan (sort the N*K (token, slot) pairs by expert) + gather   h2 (N, d) -> xs (N*K, d)
//   moe_experts_forward grouped gate / up -> SwiGLU -> grouped down                xs -> ey (N*K, d)
//   moe_combine         out[t] += sum_k gates[t, k] * ey[pos(t, k)]
#include "model/model_impl.h"
#include "train/check.h"

#include <string.h>

static Tensor moe_bias(Model *m, Layer *L) {
    int E = m->mc.n_routed_experts;
    return tensor_1d((float *)m->bias.data + (int64_t)L->moe_index * E, DT_F32, E);
}

// ROUTE_REPLAY: the recorded experts replace the chosen ones, and their gates are recomputed from the current
// (unbiased) scores with moe_route's formula: sigmoid gates normalized over the K chosen, times route_scale;
// softmax gates times route_scale. This test/diagnostic path stages through the host.
static void moe_route_replay(Model *m, Layer *L) {
    const Backend *be = m->be;
    int N = m->N, E = m->mc.n_routed_experts, K = m->mc.n_activated_experts;
    CHECK(m->recorded[L->moe_index], "model: ROUTE_REPLAY but no routing was recorded for layer %d (run model_step "
          "under ROUTE_RECORD first)", L->layer);
    const int32_t *rec = m->record + (int64_t)L->moe_index * N * K;
    be->download(m->host_scores, L->scores.data, (size_t)N * E * sizeof(float));
    for (int t = 0; t < N; t++) {
        const float *s = m->host_scores + (int64_t)t * E;
        float *g = m->host_gates + (int64_t)t * K;
        float sum = 0;
        for (int k = 0; k < K; k++) sum += s[rec[t * K + k]];
        // The same float operations as the cpu moe_route (HF's 1e-20 guard included), so that replaying the
        // choice a forward just made reproduces its gates bit for bit.
        float mul = m->rp.score_func == SCORE_SIGMOID ? m->rp.route_scale / (sum + 1e-20f) : m->rp.route_scale;
        for (int k = 0; k < K; k++) g[k] = s[rec[t * K + k]] * mul;
    }
    be->upload(L->topk.data, rec, (size_t)N * K * sizeof(int32_t));
    be->upload(L->gates.data, m->host_gates, (size_t)N * K * sizeof(float));
}

static void moe_route(Model *m, Layer *L, int train) {
    const Backend *be = m->be;
    be->matmul_forward(m->router_logits, L->h2, L->router.w, 0);
    be->moe_route(L->topk, L->gates, L->scores, m->router_logits, moe_bias(m, L), m->rp);
    if (m->route_mode == ROUTE_REPLAY) {
        moe_route_replay(m, L);
    } else if (m->route_mode == ROUTE_RECORD && train) {
        int64_t nk = (int64_t)m->N * m->mc.n_activated_experts;
        be->download(m->record + (int64_t)L->moe_index * nk, L->topk.data, (size_t)nk * sizeof(int32_t));
        m->recorded[L->moe_index] = 1;
    }
}

// Sorts the (token, slot) pairs by expert and gathers their rows: xs (N*K, d). counts (E) += the expert load
// (skipped when counts.data is NULL). Nothing here waits for the device: the grouped GEMMs read the segment table
// in backend memory.
static void moe_dispatch(Model *m, Layer *L, Tensor counts) {
    const Backend *be = m->be;
    be->moe_dispatch_plan(L->order, L->offsets, NULL, counts, L->topk, m->mc.n_routed_experts);
    be->moe_gather(L->xs, L->h2, L->order, m->mc.n_activated_experts);
}

// ey (N*K, d) = down_e(silu(gate_e(xs)) * up_e(xs)) for each row's expert e.
static void moe_experts_forward(Model *m, Layer *L) {
    const Backend *be = m->be;
    be->grouped_matmul_forward(L->eg, L->xs, L->exp_gate.w, L->offsets, NULL);
    be->grouped_matmul_forward(L->eu, L->xs, L->exp_up.w, L->offsets, NULL);
    be->swiglu_forward(L->ea, L->eg, L->eu);
    be->grouped_matmul_forward(L->ey, L->ea, L->exp_down.w, L->offsets, NULL);
}

static void moe_combine(Model *m, Layer *L, Tensor out) {
    m->be->moe_combine(out, L->ey, L->gates, L->order, 1);
}

void moe_forward(Model *m, Layer *L, Tensor out, Tensor res, int train) {
    const Backend *be = m->be;
    int E = m->mc.n_routed_experts, K = m->mc.n_activated_experts;
    moe_route(m, L, train);
    if (m->balance_alpha > 0) {
        int64_t slot = L - m->layers;   // this layer's entry of m->balance
        be->moe_balance_loss(tensor_rows(m->balance, slot, slot + 1), tensor_2d(NULL, DT_F32, m->N, E), L->scores,
                             L->topk, m->B, m->T, K, m->balance_alpha, 0.0f);
    }
    // The shared experts run first and write out = res + shared(h2) (their down projection adds the residual);
    // without them out starts as a copy of res. The routed combine then accumulates.
    if (L->ffn.width > 0) ffn_forward(be, &L->ffn, L->h2, out, res);
    else if (res.data) be->copy(out.data, res.data, (size_t)tensor_numel(&out) * dtype_size(out.dtype));
    Tensor counts = tensor_1d(NULL, DT_I32, E);   // eval passes do not count toward the load
    if (train) {
        counts = tensor_rows(m->counts_dev, L->moe_index, L->moe_index + 1);
        counts = tensor_1d(counts.data, DT_I32, E);
        m->counts_stale = 1;
    }
    moe_dispatch(m, L, counts);
    moe_experts_forward(m, L);
    moe_combine(m, L, out);
}

void moe_recompute(Model *m, Layer *L) {
    m->be->swiglu_forward(L->ea, L->eg, L->eu);
    if (L->ffn.width > 0) ffn_recompute(m->be, &L->ffn);
}

// dxs (N*K, d) = the gradient w.r.t. the dispatched rows, from dys (N*K, d): the gate and up projections' input
// gradients summed by one dinp pair (cuda: one contraction over both, rounded once), their weight gradients apart.
static void moe_experts_backward(Model *m, Layer *L) {
    const Backend *be = m->be;
    BackScratch *bs = &m->bs;
    const Tensor none = {0};
    be->grouped_matmul_backward(bs->dea, L->exp_down.g, bs->dys, L->ea, L->exp_down.w, L->offsets, NULL, 0);
    be->swiglu_backward(bs->deg, bs->deu, bs->dea, L->eg, L->eu);
    be->grouped_matmul_backward(none, L->exp_gate.g, bs->deg, L->xs, L->exp_gate.w, L->offsets, NULL, 0);
    be->grouped_matmul_backward(none, L->exp_up.g, bs->deu, L->xs, L->exp_up.w, L->offsets, NULL, 0);
    be->grouped_matmul_dinp_pair(bs->dxs, bs->deg, L->exp_gate.w, bs->deu, L->exp_up.w, L->offsets, NULL);
}

void moe_backward(Model *m, Layer *L, Tensor dout, Tensor dh2) {
    const Backend *be = m->be;
    BackScratch *bs = &m->bs;
    int E = m->mc.n_routed_experts, K = m->mc.n_activated_experts;

    // combine^T -> experts^T -> dispatch^T (the mirror seams)
    be->moe_combine_backward(bs->dys, bs->dgates, dout, L->ey, L->gates, L->order);
    moe_experts_backward(m, L);
    be->moe_gather_backward(dh2, bs->dxs, L->order, K, 0);

    if (L->ffn.width > 0) ffn_backward(be, &L->ffn, L->h2, dout, dh2, 1, bs);

    // Router: the gates' gradient plus the balance loss's gradient w.r.t. the scores (recomputed here: it is a
    // cheap deterministic function of scores and topk_idx, cheaper to redo than to keep (N, E) per layer).
    Tensor dscores = tensor_2d(NULL, DT_F32, m->N, E);
    if (m->balance_alpha > 0) {
        dscores = bs->dscores;
        be->moe_balance_loss(tensor_1d(NULL, DT_F32, 1), dscores, L->scores, L->topk, m->B, m->T, K,
                             m->balance_alpha, m->grad_scale);
    }
    be->moe_route_backward(bs->dlogits, bs->dgates, dscores, L->scores, L->topk, m->rp);
    if (bs->dlogits_lp.data != bs->dlogits.data) be->convert(bs->dlogits_lp, bs->dlogits);
    be->matmul_backward(dh2, L->router.g, bs->dlogits_lp, L->h2, L->router.w, 1);
}
