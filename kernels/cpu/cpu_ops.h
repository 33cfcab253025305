// The cpu backend's internals: the argument checks every op starts with, and the op entry points that
// cpu_backend.c collects into backend_cpu. FP32 throughout, OpenMP across rows (or across columns where rows would
// race on a shared output), loops written so that the innermost one vectorizes.
#ifndef CPU_OPS_H
#define CPU_OPS_H

#include "kernels/ops.h"

// Loops over fewer elements (or multiply-adds) than this run on one thread: a parallel region costs microseconds,
// more than such a loop takes, and on a busy machine each region can stall until a descheduled thread returns.
#define CPU_PAR_MIN 65536

// ---- argument checks (cpu_check.c): each dies with "op: <what is wrong>" naming the tensors and their shapes ----

// Dies unless t has data, dtype dt and exactly ndim dimensions (ndim 0: any number >= 1; the op then views the
// tensor as (rows, cols) with cols the last dimension, so (B, T, d) activations may be passed where (M, d) is
// documented).
void cpu_need(const char *op, const char *name, const Tensor *t, DType dt, int ndim);
// Product of all dimensions but the last, and the last dimension.
int64_t cpu_rows(const Tensor *t);
int64_t cpu_cols(const Tensor *t);
// Dies with "op: a (shape) and b (shape) disagree on <what>" unless av == bv.
void cpu_agree(const char *op, const char *an, const Tensor *a, int64_t av, const char *bn, const Tensor *b,
               int64_t bv, const char *what);
// Dies with "op: name (shape) has <what> = got, expected want" unless got == want.
void cpu_expect(const char *op, const char *name, const Tensor *t, int64_t got, int64_t want, const char *what);
// Dies with "op: a (shape) and b (shape) overlap without being the same tensor" unless a and b are the same memory
// (same data pointer) or do not overlap: for outputs that may alias an input only exactly (in place).
void cpu_same_or_disjoint(const char *op, const char *an, const Tensor *a, const char *bn, const Tensor *b);
// An optional BF16 copy of output `of` (n elements): dies unless of has data, copy is BF16 with n elements, and the
// two do not overlap.
void cpu_need_lowp_copy(const char *op, const char *name, const Tensor *copy, const char *of_name, const Tensor *of,
                        int64_t n);
// The shape rules of the linear ops, shared by both backends (each checks its own dtypes first); every one dies
// naming op and the tensors. matmul: out (M, N) = inp (M, K) @ w (N, K)^T (inp and out any leading shape);
// sets *M, *N, *K. matmul_residual: the same plus res (M, N) like out, and res either out itself or disjoint.
void cpu_matmul_shapes(const char *op, const Tensor *out, const Tensor *inp, const Tensor *w, int64_t *M, int64_t *N,
                       int64_t *K);
void cpu_matmul_residual_shapes(const char *op, const Tensor *out, const Tensor *res, const Tensor *inp,
                                const Tensor *w, int64_t *M, int64_t *N, int64_t *K);
// dinp pair: dinp (R, K) = da (R, N) @ wa[e] (E, N, K) + db (R, N) @ wb[e], wb shaped as wa; sets *R, *E, *N, *K.
void cpu_dinp_pair_shapes(const char *op, const Tensor *dinp, const Tensor *da, const Tensor *wa, const Tensor *db,
                          const Tensor *wb, int64_t *R, int64_t *E, int64_t *N, int64_t *K);
// Prints the shape as "(8, 64)" into buf (at least 96 bytes) and returns buf.
const char *cpu_shape_str(const Tensor *t, char *buf);

// ---- memory (cpu_memory.c) ----
void *cpu_alloc(size_t bytes);
void cpu_free(void *p);
void cpu_upload(void *dst, const void *src_host, size_t bytes);
void cpu_download(void *dst_host, const void *src, size_t bytes);
void cpu_copy(void *dst, const void *src, size_t bytes);
void cpu_zero(void *p, size_t bytes);
void cpu_synchronize(void);
void cpu_memory_in_use(size_t *used, size_t *total);

// ---- dense and grouped matmul (cpu_matmul.c) ----
void cpu_matmul_forward(Tensor out, Tensor inp, Tensor w, int accumulate);
void cpu_matmul_forward_residual(Tensor out, Tensor res, Tensor inp, Tensor w);
void cpu_matmul_backward(Tensor dinp, Tensor dw, Tensor dout, Tensor inp, Tensor w, int accumulate_dinp);
void cpu_grouped_matmul_forward(Tensor out, Tensor inp, Tensor w, Tensor offsets, const int32_t *offsets_host);
void cpu_grouped_matmul_backward(Tensor dinp, Tensor dw, Tensor dout, Tensor inp, Tensor w, Tensor offsets,
                                 const int32_t *offsets_host, int accumulate_dinp);
void cpu_grouped_matmul_dinp_pair(Tensor dinp, Tensor dout_a, Tensor wa, Tensor dout_b, Tensor wb, Tensor offsets,
                                  const int32_t *offsets_host);

// ---- normalization (cpu_norm.c) and elementwise (cpu_elementwise.c) ----
void cpu_rmsnorm_forward(Tensor out, Tensor rstd, Tensor inp, Tensor w, float eps);
void cpu_rmsnorm_backward(Tensor dinp, Tensor dw, Tensor dout, Tensor inp, Tensor w, Tensor rstd, int accumulate_dinp,
                          Tensor dinp_lowp);
void cpu_swiglu_forward(Tensor out, Tensor gate, Tensor up);
void cpu_swiglu_backward(Tensor dgate, Tensor dup, Tensor dout, Tensor gate, Tensor up);
void cpu_axpy(Tensor y, Tensor x, float alpha);
void cpu_copy_cols(Tensor dst, int64_t dst_col, Tensor src, int64_t src_col, int64_t ncols, int accumulate);
void cpu_convert(Tensor dst, Tensor src);

// ---- embedding (cpu_embedding.c) and loss (cpu_loss.c) ----
void cpu_embedding_forward(Tensor out, Tensor ids, Tensor table);
void cpu_embedding_backward(Tensor dtable, Tensor dout, Tensor ids);
void cpu_cross_entropy_forward_backward(Tensor losses, Tensor dlogits, Tensor logits, Tensor targets,
                                        float grad_scale);

// ---- MLA pieces (cpu_rope.c) and attention (cpu_attention.c) ----
void cpu_rope_apply(Tensor x, int64_t col, int64_t rope_dim, Tensor cos, Tensor sin, int T, int inverse);
void cpu_mla_kv_assemble(Tensor k, Tensor v, Tensor kv, Tensor k_rope, int nope, int rope, int dv);
void cpu_mla_kv_assemble_backward(Tensor dkv, Tensor dk_rope, Tensor dk, Tensor dv, int nope, int rope, int dv_dim);
void cpu_attention_forward(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v, float scale);
void cpu_attention_backward(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out,
                            Tensor lse, float scale);

// ---- MoE routing and balance loss (cpu_router.c), token movement (cpu_moe.c) ----
void cpu_moe_route(Tensor topk_idx, Tensor gates, Tensor scores, Tensor logits, Tensor bias, RouterParams p);
void cpu_moe_route_backward(Tensor dlogits, Tensor dgates, Tensor dscores_extra, Tensor scores, Tensor topk_idx,
                            RouterParams p);
void cpu_moe_balance_loss(Tensor loss, Tensor dscores, Tensor scores, Tensor topk_idx, int B, int T, int top_k,
                          float alpha, float grad_scale);
void cpu_moe_dispatch_plan(Tensor order, Tensor offsets, int32_t *offsets_host, Tensor counts, Tensor topk_idx,
                           int n_experts);
void cpu_moe_gather(Tensor x_sorted, Tensor x, Tensor order, int top_k);
void cpu_moe_gather_backward(Tensor dx, Tensor dx_sorted, Tensor order, int top_k, int accumulate);
void cpu_moe_combine(Tensor out, Tensor y_sorted, Tensor gates, Tensor order, int accumulate);
void cpu_moe_combine_backward(Tensor dy_sorted, Tensor dgates, Tensor dout, Tensor y_sorted, Tensor gates,
                              Tensor order);

// ---- optimizer (cpu_optim.c) ----
double cpu_sum_squares(Tensor x);
void cpu_scale(Tensor x, float alpha);
void cpu_adamw_update(Tensor params, Tensor grads, Tensor m, Tensor v, float lr, float beta1, float beta2, float eps,
                      float wd, float grad_scale, int64_t t);

#endif
