// The ops interface: the coarse operations the model, the trainer and the optimizer call, through a backend table
// chosen at run time (cpu: FP32 reference, kernels/cpu/; cuda: BF16/FP8 on Hopper, kernels/cuda/).
//
// Conventions
// - A Tensor is a pointer into backend memory plus dtype and shape; ops check shapes and dtypes and die naming the
//   op and the mismatch. Row-major, last dimension contiguous. Shapes in comments: (rows, cols).
// - Weights use the PyTorch/Hugging Face [out, in] layout, so a Linear is out = inp @ W^T.
// - "accumulate" flags: 0 = overwrite the output, 1 = add into it. Parameter gradients always accumulate (+=), so
//   micro-batches sum without extra passes. Input gradients take an accumulate flag where a tensor feeds two
//   consumers (the residual stream, h2 feeding the shared experts and the routed experts and the router).
// - Index tensors (token ids, expert ids, permutations, offsets) are DT_I32.
// - Nothing here allocates: every output is preallocated by the caller from the backend arena.
// - Row-wise ops (matmul's inp/out/dout, norms, elementwise, embedding out, cross-entropy logits) accept any leading
//   shape: (B, T, d) is read as (B*T, d). Weights and index tensors take exactly the documented rank.
// - Optional arguments are passed as a tensor with data == NULL: dinp/dw of matmul, grouped matmul and rmsnorm
//   backward (that gradient is skipped), rmsnorm backward's dinp_lowp, dlogits of cross-entropy (losses only), the
//   bias of moe_route (no bias), dscores_extra, the balance loss's loss and dscores, counts of moe_dispatch_plan,
//   and offsets_host of the dispatch plan and the grouped matmuls (a NULL pointer).
#ifndef OPS_H
#define OPS_H

#include <stddef.h>
#include <stdint.h>

typedef enum { DT_F32 = 0, DT_BF16 = 1, DT_I32 = 2, DT_F8E4M3 = 3 } DType;

typedef struct {
    void *data;
    DType dtype;
    int ndim;
    int64_t shape[4];
} Tensor;

size_t dtype_size(DType dt);
int64_t tensor_numel(const Tensor *t);
// Convenience constructors (no allocation): a view of `data` with the given shape.
Tensor tensor_1d(void *data, DType dt, int64_t a);
Tensor tensor_2d(void *data, DType dt, int64_t a, int64_t b);
Tensor tensor_3d(void *data, DType dt, int64_t a, int64_t b, int64_t c);
Tensor tensor_4d(void *data, DType dt, int64_t a, int64_t b, int64_t c, int64_t d);
// The same data seen with a new shape of the same number of elements.
Tensor tensor_reshape2(Tensor t, int64_t a, int64_t b);
// Rows [begin, end) of a tensor (first dimension), same trailing shape.
Tensor tensor_rows(Tensor t, int64_t begin, int64_t end);

// Router settings (from ModelConfig), passed to the routing op.
typedef struct {
    int n_experts;        // E
    int top_k;            // K
    int n_groups;         // expert groups; group g holds experts [g*E/G, (g+1)*E/G)
    int topk_groups;      // groups kept per token
    int group_score_topk; // group score = sum of the top-this-many biased scores in the group (2 for V3)
    int score_func;       // 0 sigmoid, 1 softmax (ScoreFunc)
    float route_scale;    // gates (normalized for sigmoid) are multiplied by this
} RouterParams;

typedef struct Backend {
    const char *name;
    int bf16;   // 1 when the activation ops take BF16 tensors (cuda); the cpu backend is the FP32 reference (0)

    // ---- memory (device memory for cuda, host for cpu) ----
    void *(*alloc)(size_t bytes);                       // dies on failure; zero-filled
    void (*free)(void *p);
    void (*upload)(void *dst, const void *src_host, size_t bytes);
    void (*download)(void *dst_host, const void *src, size_t bytes);
    void (*copy)(void *dst, const void *src, size_t bytes);
    void (*zero)(void *p, size_t bytes);
    void (*synchronize)(void);
    // Device memory in use and in total, in bytes (cuda: cudaMemGetInfo, so the CUDA context counts as used; every
    // allocation is made at start-up or in the first step, so at the end of a run this is the peak). cpu: 0 and 0.
    void (*memory_in_use)(size_t *used, size_t *total);

    // ---- dense linear algebra ----
    // out (M, N) [+]= inp (M, K) @ w (N, K)^T
    void (*matmul_forward)(Tensor out, Tensor inp, Tensor w, int accumulate);
    // out (M, N) = res (M, N) + inp (M, K) @ w (N, K)^T: a residual add in the GEMM's epilogue (res read as the
    // GEMM's C operand, out written as D), so x_out = x_in + proj(h) needs no copy of the stream first. res and out
    // have one dtype and one shape; out may be res itself (then this is matmul_forward with accumulate = 1).
    void (*matmul_forward_residual)(Tensor out, Tensor res, Tensor inp, Tensor w);
    // dinp (M, K) [+]= dout (M, N) @ w (N, K)   (skipped when dinp.data == NULL)
    // dw (N, K) += dout^T @ inp                (skipped when dw.data == NULL)
    void (*matmul_backward)(Tensor dinp, Tensor dw, Tensor dout, Tensor inp, Tensor w, int accumulate_dinp);
    // Grouped (MoE) linear: rows [offsets[e], offsets[e+1]) of inp use expert e's weight w[e].
    // out (R, N) = inp (R, K) @ w[e] (E, N, K)^T per segment; offsets (E + 1) I32. offsets_host: a host copy of the
    // same values, or NULL (a backend whose kernel needs the table on the host then fetches it, and waits for it).
    void (*grouped_matmul_forward)(Tensor out, Tensor inp, Tensor w, Tensor offsets, const int32_t *offsets_host);
    // dinp (R, K) [+]= dout @ w[e] (accumulate_dinp: add onto dinp, else overwrite; rows outside every segment are
    // not touched); dw (E, N, K) += dout_seg^T @ inp_seg. Either skipped when its data is NULL.
    void (*grouped_matmul_backward)(Tensor dinp, Tensor dw, Tensor dout, Tensor inp, Tensor w, Tensor offsets,
                                    const int32_t *offsets_host, int accumulate_dinp);
    // dinp (R, K) = dout_a (R, N) @ wa[e] + dout_b (R, N) @ wb[e] per segment, wa and wb (E, N, K) (overwrite; rows
    // outside every segment are not touched): the input gradient of two projections of one input, the MoE experts'
    // gate and up. The cuda backend runs it as one contraction over both products (summed in FP32, rounded once);
    // the cpu backend as the first product plus the second accumulated, as grouped_matmul_backward would.
    void (*grouped_matmul_dinp_pair)(Tensor dinp, Tensor dout_a, Tensor wa, Tensor dout_b, Tensor wb, Tensor offsets,
                                     const int32_t *offsets_host);

    // ---- normalization and elementwise ----
    // out (M, d) = inp * rstd * w;  rstd (M) F32 saved for backward; rstd = 1/sqrt(mean(inp^2) + eps)
    void (*rmsnorm_forward)(Tensor out, Tensor rstd, Tensor inp, Tensor w, float eps);
    // dinp (M, d) [+]= ..., dw (d) += ...
    // dinp_lowp (M, d) BF16 (skipped when its data is NULL; needs dinp): dinp's final value (after the accumulate)
    // also written rounded to BF16, with convert's rounding (nearest even): the same bits as convert(dinp_lowp,
    // dinp) afterwards, without a second pass over dinp. The BF16 model's view of its FP32 residual gradient.
    void (*rmsnorm_backward)(Tensor dinp, Tensor dw, Tensor dout, Tensor inp, Tensor w, Tensor rstd,
                             int accumulate_dinp, Tensor dinp_lowp);
    // out (M, I) = silu(gate) * up
    void (*swiglu_forward)(Tensor out, Tensor gate, Tensor up);
    // dgate, dup (M, I) = (overwrite)
    void (*swiglu_backward)(Tensor dgate, Tensor dup, Tensor dout, Tensor gate, Tensor up);
    // y += alpha * x (same shape)
    void (*axpy)(Tensor y, Tensor x, float alpha);
    // Column block copy: dst[:, dst_col : dst_col + ncols] [+]= src[:, src_col : src_col + ncols]; both 2-D with
    // the same row count. Splits and concatenations (MLA's [c_kv ; k_rope], MTP's [emb ; h]) and their backward.
    void (*copy_cols)(Tensor dst, int64_t dst_col, Tensor src, int64_t src_col, int64_t ncols, int accumulate);
    // dst = src converted elementwise between F32 and BF16 (round to nearest even), same number of elements; any of
    // the four dtype pairs. The BF16 model's weight copies and the BF16 view of its FP32 residual gradient.
    void (*convert)(Tensor dst, Tensor src);

    // ---- embedding and loss ----
    // out (N, d) = table[ids]      ids (N) I32
    void (*embedding_forward)(Tensor out, Tensor ids, Tensor table);
    // dtable (V, d) += scatter of dout (N, d) by ids
    void (*embedding_backward)(Tensor dtable, Tensor dout, Tensor ids);
    // Softmax cross-entropy over rows of logits (N, V) with targets (N) I32:
    //   losses (N) F32 = -log softmax(logits)[target];  dlogits (N, V) = grad_scale * (softmax - onehot(target)).
    // dlogits may alias logits (the head's logits are not needed after this).
    void (*cross_entropy_forward_backward)(Tensor losses, Tensor dlogits, Tensor logits, Tensor targets,
                                           float grad_scale);

    // ---- MLA ----
    // RoPE in place on x (N, H, stride) over dims [col, col + rope_dim) of each head, interleaved pairs (2i, 2i+1)
    // as the official DeepSeek-V3 code does; token n has position n % T. cos/sin (T, rope_dim / 2) precomputed by
    // the model (plain or YaRN frequencies). inverse = 1 rotates by -angle (the backward of the forward rotation).
    void (*rope_apply)(Tensor x, int64_t col, int64_t rope_dim, Tensor cos, Tensor sin, int T, int inverse);
    // From kv (N, H*(nope + dv)) (per head [k_nope ; v]) and the shared rope key k_rope (N, rope):
    //   k (N, H, nope + rope) = [k_nope ; k_rope] per head;  v (N, H, dv)
    void (*mla_kv_assemble)(Tensor k, Tensor v, Tensor kv, Tensor k_rope, int nope, int rope, int dv);
    // Its backward: dkv (overwrite) from dk/dv; dk_rope (N, rope) (overwrite) = sum over heads of dk's rope part.
    void (*mla_kv_assemble_backward)(Tensor dkv, Tensor dk_rope, Tensor dk, Tensor dv, int nope, int rope, int dv_dim);
    // Causal attention per sequence: q, k (B, T, H, dqk), v (B, T, H, dv) -> out (B, T, H, dv),
    // lse (B, H, T) F32 = logsumexp of the scaled scores (saved for backward).
    void (*attention_forward)(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v, float scale);
    // dq, dk, dv (overwrite) from dout; recomputes the probabilities from q, k and lse.
    void (*attention_backward)(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v,
                               Tensor out, Tensor lse, float scale);

    // ---- MoE ----
    // From router logits (N, E) F32 and the selection bias (E) F32:
    //   scores (N, E) F32 = sigmoid(logits) (or softmax over E); choice uses scores + bias, group-limited;
    //   topk_idx (N, K) I32 chosen experts (in descending biased-score order), gates (N, K) F32 from the UNBIASED
    //   scores, normalized over the K chosen (sigmoid) and times route_scale.
    void (*moe_route)(Tensor topk_idx, Tensor gates, Tensor scores, Tensor logits, Tensor bias, RouterParams p);
    // dlogits (N, E) (overwrite) from dgates (N, K) and dscores_extra (N, E) (the balance loss's gradient w.r.t.
    // the scores; may have data == NULL).
    void (*moe_route_backward)(Tensor dlogits, Tensor dgates, Tensor dscores_extra, Tensor scores, Tensor topk_idx,
                               RouterParams p);
    // Sequence-wise balance loss (RECIPE.md section 2) over scores (B*T, E) and topk_idx (B*T, K) for B sequences
    // of T tokens: when loss.data is not NULL, loss (1) F32 = the mean over sequences of alpha * sum_i f_i P_i
    // (overwrite, in backend memory: nothing waits for it), and when dscores.data is not NULL, dscores (B*T, E) = its
    // gradient w.r.t. the scores times grad_scale (overwrite).
    void (*moe_balance_loss)(Tensor loss, Tensor dscores, Tensor scores, Tensor topk_idx, int B, int T, int top_k,
                             float alpha, float grad_scale);
    // Dispatch plan: sorts the N*K (token, slot) pairs by expert, stably (token order within an expert):
    //   order (N*K) I32: order[j] = the pair (t*K + k) at sorted position j;
    //   offsets (E + 1) I32: expert e's rows are [offsets[e], offsets[e+1]);
    //   offsets_host (host memory, may be NULL): the same values; asking for them makes the host wait for the plan;
    //   counts (E) I32 (data may be NULL): += tokens routed to each expert (the expert load, for the bias update and
    //   MaxVio), in backend memory, so that the load of a whole step is read once.
    void (*moe_dispatch_plan)(Tensor order, Tensor offsets, int32_t *offsets_host, Tensor counts, Tensor topk_idx,
                              int n_experts);
    // x_sorted (N*K, d) = x[order[j] / K]
    void (*moe_gather)(Tensor x_sorted, Tensor x, Tensor order, int top_k);
    // dx (N, d) [+]= scatter-add of dx_sorted (N*K, d) back to tokens
    void (*moe_gather_backward)(Tensor dx, Tensor dx_sorted, Tensor order, int top_k, int accumulate);
    // out (N, d) [+]= sum_k gates[t, k] * y_sorted[pos(t, k)] where pos is the inverse of order
    void (*moe_combine)(Tensor out, Tensor y_sorted, Tensor gates, Tensor order, int accumulate);
    // dy_sorted (N*K, d) = gates * dout[token];  dgates (N, K) = <dout[t], y_sorted[pos(t, k)]>   (overwrite)
    void (*moe_combine_backward)(Tensor dy_sorted, Tensor dgates, Tensor dout, Tensor y_sorted, Tensor gates,
                                 Tensor order);

    // ---- optimizer ----
    // Sum of squares of x (F32), accumulated in double, returned on the host.
    double (*sum_squares)(Tensor x);
    // x *= alpha (F32)
    void (*scale)(Tensor x, float alpha);
    // AdamW on one contiguous range: params (n) F32 master weights, grads (n) F32 (multiplied by grad_scale on
    // read: the clip factor), m and v (n) BF16 moments (stored round-to-nearest-even), step t >= 1 (bias
    // correction), decoupled weight decay wd (0 for no-decay tensors): p -= lr * (mhat / (sqrt(vhat) + eps) + wd * p)
    void (*adamw_update)(Tensor params, Tensor grads, Tensor m, Tensor v, float lr, float beta1, float beta2,
                         float eps, float wd, float grad_scale, int64_t t);
} Backend;

// The backends. backend_get("cpu") or "cuda" (dies with a clear message when the build has no CUDA or no GPU).
const Backend *backend_get(const char *name);
extern const Backend backend_cpu;

// BF16 helpers (host), round-to-nearest-even; used by the cpu backend's moments and by checkpoints.
uint16_t bf16_from_f32(float x);
float bf16_to_f32(uint16_t h);

#endif
