// Internals shared by the model's files (model.c: lifecycle and the stage step; layout.c: the activation arena;
// mla.c, ffn.c, moe.c: the sub-layers; block.c: a transformer block; head.c: norm + lm_head + loss; mtp.c;
// rope.c). Not for use outside model/.
//
// Shapes: N = B*T tokens, d = dim, H = heads, nope/rope/dv = per-head dims, qlr/kvlr = LoRA ranks, E = routed
// experts, K = top-k, mi = moe_inter_dim, V = vocab. "[R]" marks a tensor that, with recompute on, lives in the
// shared recompute scratch and is recomputed in backward from the tensors that are kept.
//
// Precision: activations live in m->adt: F32, or BF16 under train.precision bf16 (cuda). The residual stream (x_in,
// x_mid, x_out, its gradient dx), RMSNorm rstd, attention lse, router logits, scores, gates, the head's logits and
// the losses stay F32 whatever adt is. Matrix weights are read through a BF16 copy of the FP32 master parameters
// (m->wlp, refreshed before a forward when the parameters changed); norm weights and the embedding table read the
// FP32 master directly. Gradients are FP32.
#ifndef MODEL_IMPL_H
#define MODEL_IMPL_H

#include "model/model.h"

// Rows of logits (of width V) computed at once by the head: bounds the logits buffer to HEAD_CHUNK_ELEMS floats.
#define HEAD_CHUNK_ELEMS ((int64_t)1 << 26)

typedef struct { Tensor w, g; } Weight;   // a parameter and its gradient (views into the two stage buffers)

// A SwiGLU FFN: out += down(silu(gate(x)) * up(x)). Dense FFN of a layer, or the shared experts of a MoE layer.
typedef struct {
    int width;                 // inter size I (0 = absent)
    Weight gate, up, down;     // (I, d), (I, d), (d, I)
    Tensor g, u, a;            // (N, I) gate and up outputs; a = silu(g) * u [R]
} Ffn;

typedef struct {
    int layer;                 // global layer index (MTP module k: n_layers + k - 1)
    int is_moe;
    int moe_index;             // row of the bias / counts / record arrays, -1 for a dense layer

    // ---- parameters ----
    Weight in_norm, q_a, q_a_norm, q_b, q_proj, kv_a, kv_a_norm, kv_b, o_proj, post_norm;
    Ffn ffn;                                 // dense FFN or shared experts
    Weight router;                           // (E, d)
    Weight exp_gate, exp_up, exp_down;       // (E, mi, d), (E, mi, d), (E, d, mi)

    // ---- activations ----
    Tensor x_in, x_mid, x_out;               // (N, d) residual stream: x_mid = x_in + attn, x_out = x_mid + ffn
    Tensor rstd1, h;                         // (N), (N, d) h = RMSNorm(x_in) [R]
    Tensor qa, rstd_q, cq;                   // (N, qlr), (N), (N, qlr) cq = RMSNorm(qa) [R]
    Tensor q;                                // (N, H*(nope+rope)) after RoPE [R]
    Tensor ckv, krope;                       // (N, kvlr) and (N, rope) after RoPE: the split of kv_a_proj(h)
    Tensor rstd_kv, ckvn;                    // (N), (N, kvlr) ckvn = RMSNorm(ckv) [R]
    Tensor k, v;                             // (N, H*(nope+rope)), (N, H*dv) [R]
    Tensor o, lse;                           // (N, H*dv) attention output, (B, H, T)
    Tensor rstd2, h2;                        // (N), (N, d) h2 = RMSNorm(x_mid) [R]
    // MoE
    Tensor scores, topk, gates;              // (N, E) F32, (N, K) I32, (N, K) F32
    Tensor order, offsets;                   // (N*K) I32, (E+1) I32
    Tensor xs, eg, eu, ea, ey;               // (N*K, d) dispatched rows; (N*K, mi) gate, up, swiglu [R]; (N*K, d)
} Layer;

// Backward scratch: one layer's worth, reused by every layer (sequential lifetimes).
typedef struct {
    Tensor dh;                               // (N, d) gradient w.r.t. a RMSNorm output (h, then h2)
    Tensor d_o, dq, dcq, dqa;                // (N, H*dv), (N, H*(nope+rope)), (N, qlr) x2
    Tensor dkva, dckvn, dckv, dkrope, dkv;   // (N, kvlr+rope), (N, kvlr) x2, (N, rope), (N, H*(nope+dv))
    Tensor dk, dv;                           // (N, H*(nope+rope)), (N, H*dv)
    Tensor dfa, dfg, dfu;                    // (N, max(I, shared I)) raw (views take the width)
    Tensor dlogits, dscores, dgates;         // (N, E), (N, E), (N, K) F32
    Tensor dlogits_lp;                       // (N, E) dlogits in adt for the router's backward GEMM (F32: dlogits)
    Tensor dys, dxs;                         // (N*K, d)
    Tensor dea, deg, deu;                    // (N*K, mi)
    Tensor dcat, dtmp;                       // (N, 2d), (N, d) MTP
    Tensor demb;                             // (N, d) F32 MTP: gradient w.r.t. the embedding rows
} BackScratch;

// One MTP depth k (1-based in the text, index k-1 here).
typedef struct {
    Weight enorm, hnorm, eh_proj, head_norm; // (d), (d), (d, 2d), (d)
    Layer *block;                            // its transformer block (x_in = eh_proj output, x_out = h_k)
    Tensor emb;                              // (N, d) Emb(tokens[:, k:T+k])
    Tensor rstd_e, rstd_h, rstd_f;           // (N) enorm, hnorm, shared_head.norm
    Tensor en, hn;                           // (N, d) enorm(emb), hnorm(h_{k-1}) (only to build cat)
    Tensor cat;                              // (N, 2d) [en ; hn] [R]
    Tensor dres;                             // (N, d) gradient w.r.t. h_k, then (after the block) w.r.t. x_in
} MtpDepth;

struct Model {
    Config cfg;
    ModelConfig mc;
    const Backend *be;
    StageSpec stage;
    ParamTable table;
    int B, T, N;
    float *params, *grads;                   // backend, table.total floats each
    DType adt;                               // activation dtype: DT_F32, or DT_BF16 (train.precision bf16)
    void *wlp;                               // BF16 copy of params (table.total) when adt is BF16, else NULL
    int wlp_stale;                           // params changed since wlp was made

    int n_main;                              // main layers of this stage
    int n_mtp;                               // MTP depths of this stage (D or 0)
    Layer *layers;                           // n_main main layers, then n_mtp MTP blocks
    MtpDepth mtp[MODEL_MAX_MTP];
    Weight embed, final_norm, head;          // (V, d), (d), (V, d) when owned
    RouterParams rp;
    float softmax_scale;

    // ---- MoE host state ----
    int n_moe;
    int *moe_layer;                          // (n_moe) global layer index
    float *bias_host;                        // (n_moe, E) selection bias
    int64_t *counts;                         // (n_moe, E) load since model_reset_counts (host copy of counts_dev)
    int32_t *host_counts;                    // (n_moe, E) staging
    int counts_stale;                        // counts_dev moved since counts was read
    int32_t *record;                         // (n_moe, N, K) recorded choices
    int *recorded;                           // (n_moe) whether record holds a choice
    float *host_scores, *host_gates;         // (N, E), (N, K) staging for route replay
    RouteMode route_mode;

    // ---- activations (one arena) ----
    void *arena;
    size_t arena_bytes;
    Tensor bias;                             // (n_moe, E) F32 device copy of bias_host (uploaded every forward)
    Tensor cos, sin;                         // (T, rope/2)
    Tensor ids;                              // (D + 2, N) I32: row j = tokens[:, j:T+j]
    Tensor *res;                             // n_main + 1 residual stream buffers (N, d); res[0] = stage input
    Tensor dx;                               // (N, d) main residual gradient = model_stage_grad
    Tensor dxb;                              // (N, d) adt copy of a residual gradient for backward GEMMs (F32: dx)
    const void *dxb_of;                      // the residual gradient (data) whose copy dxb holds; NULL: none
    int fuse_gemm, fuse_lowp;                // DSV3_RESID_FUSE (residual.c)
    Tensor kva, kv, router_logits;           // scratch (N, kvlr+rope), (N, H*(nope+dv)), (N, E)
    Tensor rstd_f, hn_f, head_logits, dhn;   // (N), (N, d), (chunk, V) F32, (N, d)
    // The micro-batch's losses, left in backend memory until model_stage_forward reads them all at once (the one
    // host sync of a micro-batch): loss_buf = [per-token CE losses of the main head (N) and each MTP depth (N)]
    // [the balance loss of every layer of m->layers (n_main + n_mtp; dense layers' entries unused)].
    Tensor loss_buf, losses, balance;        // (n_heads * N + n_layers), (n_heads * N) view, (n_layers) view
    Tensor counts_dev;                       // (n_moe, E) I32 expert load since model_reset_counts
    Tensor head_dlogits;                     // (chunk, V) adt (F32: the same buffer as head_logits)
    int head_chunk;                          // rows per head chunk
    BackScratch bs;
    int32_t *host_ids;                       // (D + 2, N) staging
    float *host_losses;                      // (loss_buf) staging

    // ---- the micro-batch in flight (set by model_stage_forward, read by backward) ----
    int train;
    float grad_scale, mtp_lambda, balance_alpha;
};

// layout.c: assigns every activation tensor from one arena (two passes: measure, then place).
void model_layout_activations(Model *m);

// rope.c: the inverse frequencies (rope/2) of plain RoPE or YaRN; cos/sin (T, rope/2) on the host (plain RoPE or YaRN) and the softmax scale.
void rope_inv_freq(const ModelConfig *mc, double *freq);
void rope_tables(const ModelConfig *mc, int T, float *cos_out, float *sin_out);
float rope_softmax_scale(const ModelConfig *mc);

// mla.c: x_mid = x_in + o_proj(attention(RMSNorm(x_in))).
void mla_forward(Model *m, Layer *L);
// dx (N, d): in, the gradient w.r.t. x_mid; out, w.r.t. x_in (the attention branch is added in place).
void mla_backward(Model *m, Layer *L, Tensor dx);

// ffn.c: out = res + FFN(x) (res.data NULL: out += FFN(x)), the residual added by the down projection's GEMM.
void ffn_forward(const Backend *be, Ffn *f, Tensor x, Tensor out, Tensor res);
void ffn_recompute(const Backend *be, Ffn *f);
// dx [+]= the gradient w.r.t. x from dout (the gradient w.r.t. out).
void ffn_backward(const Backend *be, Ffn *f, Tensor x, Tensor dout, Tensor dx, int accumulate_dx, BackScratch *bs);

// moe.c: out = res + shared(h2) + sum_k g_k expert_k(h2) (res.data NULL: out += ...), res added by the shared
// experts' down projection (or copied into out first when the layer has none); its balance loss (when alpha > 0)
// goes to m->balance.
void moe_forward(Model *m, Layer *L, Tensor out, Tensor res, int train);
void moe_recompute(Model *m, Layer *L);
// dh2 (overwrite) from dout, the gradient w.r.t. out.
void moe_backward(Model *m, Layer *L, Tensor dout, Tensor dh2);

// block.c: x_out = block(x_in). Backward: dx from w.r.t. x_out to w.r.t. x_in, in place.
void block_forward(Model *m, Layer *L, int train);
void block_backward(Model *m, Layer *L, Tensor dx);

// head.c: RMSNorm(x) -> lm_head -> cross-entropy against targets (N) I32, the N losses into losses (N) F32
// (backend memory). With train: gradients of ce_scale * sum into the norm and head weights, dx [+]= the gradient
// w.r.t. x.
void head_forward(Model *m, Tensor x, Weight norm, Tensor rstd, Tensor targets, Tensor losses, float ce_scale,
                  int train, Tensor dx, int accumulate_dx);
void head_logits(Model *m, Tensor x, float *logits_host);

// mtp.c: depth index i (0-based) from h_prev (N, d); its CE losses go to rows [(i + 1) N, (i + 2) N) of m->losses.
void mtp_forward(Model *m, int i, Tensor h_prev, float ce_scale, int train);
// dprev += the gradient w.r.t. h_prev.
void mtp_backward(Model *m, int i, Tensor h_prev, Tensor dprev);

// The row of tokens shifted by j: (N) I32.
Tensor model_ids(Model *m, int j);

// residual.c: the residual stream's fusions (DSV3_RESID_FUSE, read by model_residual_select at model_create).
void model_residual_select(Model *m);
// The forward's residual adds out = res + branch (N, d) F32: what the branch's first GEMM into out takes as its
// residual (model_residual_matmul): res itself under the gemm fusion, else a NULL tensor, res having been copied
// into out here (that GEMM then accumulates onto it).
Tensor model_residual_begin(Model *m, Tensor out, Tensor res);
// out = res + inp @ w^T (matmul_forward_residual) when res has data, else out += inp @ w^T.
void model_residual_matmul(const Backend *be, Tensor out, Tensor res, Tensor inp, Tensor w);
// A residual-stream gradient g (N, d) F32 as the backward GEMMs read it: g itself when adt is F32, else its BF16
// copy in m->dxb: as the rmsnorm_backward that formed g wrote it (given model_grad_lowp_out(m, g) as dinp_lowp),
// or else converted here. Valid until the next residual gradient is written.
Tensor model_grad_lowp(Model *m, Tensor g);
// The dinp_lowp argument of a rmsnorm_backward whose dinp is the residual gradient g: m->dxb under the lowp fusion
// of a BF16 model (dxb then holds g), else a NULL tensor. Every rmsnorm_backward into a residual gradient takes it.
Tensor model_grad_lowp_out(Model *m, Tensor g);
// A residual gradient may have changed outside the model's ops (model_stage_grad, a new forward): dxb holds none.
void model_grad_lowp_invalidate(Model *m);
// The dinp_lowp of a rmsnorm_backward whose dinp is not a residual gradient: none.
static inline Tensor model_no_lowp(void) { return tensor_1d(NULL, DT_BF16, 0); }

#endif
