// The mixed-dtype forms of the cuda ops that the BF16 model uses where its FP32 residual stream meets BF16
// activations (model/model_impl.h, "Precision"), against the cpu FP32 op on the same (BF16-rounded) values:
//   RMSNorm of an F32 input into a BF16 output, and its backward adding a BF16 gradient into an F32 one;
//   moe_combine adding BF16 expert outputs into an F32 stream; cross-entropy writing BF16 dlogits from F32 logits;
//   convert between F32 and BF16 (bit-exact against the host's round-to-nearest-even).
#include "tests/gpu/gpu_testutil.h"

TEST(gpu_convert_exact) {
    gt_init(81);
    const int64_t n = 1000003;
    float *x = ops_rand(n, 3.0f);
    x[0] = 1.0f + 0x1p-8f;   // a tie: to even
    x[1] = -0.0f;
    uint16_t *want = malloc((size_t)n * 2);
    C->convert(tensor_1d(want, DT_BF16, n), tensor_1d(x, DT_F32, n));
    void *d_x = gt_dev(x, n, DT_F32), *d_b = gt_dev_poison(n, DT_BF16), *d_f = gt_dev_poison(n, DT_F32);
    G->convert(tensor_1d(d_b, DT_BF16, n), tensor_1d(d_x, DT_F32, n));
    uint16_t *got = malloc((size_t)n * 2);
    G->download(got, d_b, (size_t)n * 2);
    for (int64_t i = 0; i < n; i++)
        ASSERT_MSG(got[i] == want[i], "convert f32->bf16 [%lld]: gpu 0x%04X, cpu 0x%04X (x = %.9g)", (long long)i,
                   got[i], want[i], (double)x[i]);
    G->convert(tensor_1d(d_f, DT_F32, n), tensor_1d(d_b, DT_BF16, n));   // back: exact
    float *wantf = malloc((size_t)n * 4);
    for (int64_t i = 0; i < n; i++) wantf[i] = bf16_to_f32(want[i]);
    GT_EXACT("convert bf16->f32", gt_host(d_f, n, DT_F32), wantf, n);
}

// RMSNorm with an F32 input (the residual stream) and a BF16 output; backward with F32 dinp/inp and a BF16 dout.
TEST(gpu_rmsnorm_f32_stream_bf16_branch) {
    gt_init(82);
    const int M = 513, d = 1536;
    const int64_t n = (int64_t)M * d;
    float *x = ops_rand(n, 2.0f), *w = ops_rand(d, 1.0f), *g = gt_round_bf16(ops_rand(n, 1.0f), n);
    float *dx0 = ops_rand(n, 1.0f);
    float *want = malloc(sizeof(float) * n), *rstd = malloc(sizeof(float) * M);
    C->rmsnorm_forward(tensor_2d(want, DT_F32, M, d), tensor_1d(rstd, DT_F32, M), tensor_2d(x, DT_F32, M, d),
                       tensor_1d(w, DT_F32, d), 1e-6f);
    void *d_x = gt_dev(x, n, DT_F32), *d_w = gt_dev(w, d, DT_F32), *d_out = gt_dev_poison(n, DT_BF16);
    void *d_r = gt_dev_poison(M, DT_F32);
    G->rmsnorm_forward(tensor_2d(d_out, DT_BF16, M, d), tensor_1d(d_r, DT_F32, M), tensor_2d(d_x, DT_F32, M, d),
                       tensor_1d(d_w, DT_F32, d), 1e-6f);
    // one BF16 rounding of an FP32 result: relative 2^-9
    GT_CLOSE("rmsnorm f32 -> bf16 out", gt_host(d_out, n, DT_BF16), want, n, 4e-3, 1e-6);
    GT_CLOSE("rmsnorm f32 -> bf16 rstd", gt_host(d_r, M, DT_F32), rstd, M, 1e-5, 0);
    float *want_dx = ops_copy_f(dx0, n), *want_dw = calloc((size_t)d, sizeof(float));
    C->rmsnorm_backward(tensor_2d(want_dx, DT_F32, M, d), tensor_1d(want_dw, DT_F32, d), tensor_2d(g, DT_F32, M, d),
                        tensor_2d(x, DT_F32, M, d), tensor_1d(w, DT_F32, d),
                        tensor_1d(rstd, DT_F32, M), 1, ops_none(DT_BF16));
    void *d_g = gt_dev(g, n, DT_BF16), *d_dx = gt_dev(dx0, n, DT_F32), *d_dw = gt_dev_poison(d, DT_F32);
    G->zero(d_dw, (size_t)d * 4);
    G->upload(d_r, rstd, sizeof(float) * M);
    G->rmsnorm_backward(tensor_2d(d_dx, DT_F32, M, d), tensor_1d(d_dw, DT_F32, d), tensor_2d(d_g, DT_BF16, M, d),
                        tensor_2d(d_x, DT_F32, M, d), tensor_1d(d_w, DT_F32, d),
                        tensor_1d(d_r, DT_F32, M), 1, ops_none(DT_BF16));
    // The inputs are the same values on both sides and the math is FP32: only summation order differs.
    GT_CLOSE("rmsnorm_bwd bf16 dout -> f32 dinp (acc)", gt_host(d_dx, n, DT_F32), want_dx, n, 1e-4, 1e-5);
    GT_CLOSE("rmsnorm_bwd bf16 dout dw", gt_host(d_dw, d, DT_F32), want_dw, d, 1e-4, 1e-5);
}

// moe_combine: BF16 expert rows added, gate-weighted, into an F32 output (accumulate, as the model's x_out).
TEST(gpu_moe_combine_bf16_rows_into_f32) {
    gt_init(83);
    const int N = 300, K = 4, E = 16, d = 256;
    const int64_t NK = (int64_t)N * K;
    // A valid order: pair (t, k) at sorted position j, sorted by a random expert id (stable), via the cpu plan.
    int32_t *idx = malloc(sizeof(int32_t) * NK);
    for (int t = 0; t < N; t++)
        for (int k = 0; k < K; k++) idx[t * K + k] = (t * 7 + k * 5) % E;   // distinct per token (K <= E / gcd)
    int32_t *order = malloc(sizeof(int32_t) * NK), *off = malloc(sizeof(int32_t) * (E + 1));
    int32_t *off_h = malloc(sizeof(int32_t) * (E + 1));
    C->moe_dispatch_plan(tensor_1d(order, DT_I32, NK), tensor_1d(off, DT_I32, E + 1), off_h,
                         tensor_1d(NULL, DT_I32, E), tensor_2d(idx, DT_I32, N, K), E);
    float *ys = gt_round_bf16(ops_rand(NK * d, 1.0f), NK * d), *gates = ops_rand(NK, 1.0f);
    float *o0 = ops_rand((int64_t)N * d, 1.0f), *want = ops_copy_f(o0, (int64_t)N * d);
    C->moe_combine(tensor_2d(want, DT_F32, N, d), tensor_2d(ys, DT_F32, NK, d), tensor_2d(gates, DT_F32, N, K),
                   tensor_1d(order, DT_I32, NK), 1);
    void *d_ys = gt_dev(ys, NK * d, DT_BF16), *d_g = gt_dev(gates, NK, DT_F32), *d_o = gt_dev(o0, (int64_t)N * d, DT_F32);
    void *d_order = gt_dev_i32(order, NK);
    G->moe_combine(tensor_2d(d_o, DT_F32, N, d), tensor_2d(d_ys, DT_BF16, NK, d), tensor_2d(d_g, DT_F32, N, K),
                   tensor_1d(d_order, DT_I32, NK), 1);
    // Same values and the cpu's order of FP32 sums: bit-exact.
    GT_EXACT("moe_combine bf16 rows -> f32 out", gt_host(d_o, (int64_t)N * d, DT_F32), want, (int64_t)N * d);
}

// Cross-entropy from F32 logits into BF16 dlogits (a separate buffer).
TEST(gpu_cross_entropy_bf16_dlogits) {
    gt_init(84);
    const int N = 64, V = 32768;
    float *x = ops_rand((int64_t)N * V, 5.0f);
    int32_t *tg = malloc(sizeof(int32_t) * N);
    for (int i = 0; i < N; i++) tg[i] = (i * 7919) % V;
    float *loss = malloc(sizeof(float) * N), *dl = malloc(sizeof(float) * N * V);
    C->cross_entropy_forward_backward(tensor_1d(loss, DT_F32, N), tensor_2d(dl, DT_F32, N, V),
                                      tensor_2d(x, DT_F32, N, V), tensor_1d(tg, DT_I32, N), 0.5f);
    void *d_x = gt_dev(x, (int64_t)N * V, DT_F32), *d_tg = gt_dev_i32(tg, N), *d_loss = gt_dev_poison(N, DT_F32);
    void *d_dl = gt_dev_poison((int64_t)N * V, DT_BF16);
    G->cross_entropy_forward_backward(tensor_1d(d_loss, DT_F32, N), tensor_2d(d_dl, DT_BF16, N, V),
                                      tensor_2d(d_x, DT_F32, N, V), tensor_1d(d_tg, DT_I32, N), 0.5f);
    GT_CLOSE("cross_entropy loss (bf16 dlogits)", gt_host(d_loss, N, DT_F32), loss, N, 1e-4, 1e-5);
    GT_CLOSE("cross_entropy dlogits bf16", gt_host(d_dl, (int64_t)N * V, DT_BF16), dl, (int64_t)N * V, 4e-3, 1e-5);
}
