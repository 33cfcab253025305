// cuda vs cpu for the v2 memory-bound kernels (DSV3_MEMOPS=v2, kernels/cuda/cuda_common.cuh): RMSNorm forward and
// backward (dw fused into the dx pass), SwiGLU, axpy, convert, copy_cols, RoPE, the MLA key/value assembly and the
// softmax cross-entropy (one online pass for max and sum); and
// the DSV3_MEMOPS selection itself. Each op runs at the bench-1gpu shapes, at small and odd shapes, on unaligned
// views (where v2 must hand over to v1), in F32 and BF16 and the model's mixed forms.
//
// Tolerances as in test_gpu_dense.c: ops whose FP32 arithmetic is v1's and the cpu's operation by operation are
// compared bit for bit (axpy, convert, copy_cols, RoPE, the k/v assembly and its head sums), and in BF16 v2 against
// v1 bit for bit as well; reductions differ from the cpu in summation order only (RMSNorm: rtol 1e-5 forward, 1e-4
// backward, dw 1e-4 of the largest |dw| at 16384 rows); expf differs by an ulp (SwiGLU, rtol 1e-6); a BF16 output
// adds one rounding (rtol 1e-2).
#include "tests/gpu/gpu_testutil.h"

// The kernel set for the next calls; NULL: the first set (v1) by name, not the unset default (which is v2 for the
// ops that passed on a GPU), so that every "= v1" comparison here compares two sets. Each test runs in its own
// process, so the variable does not outlive it.
static void memops(const char *v) { setenv("DSV3_MEMOPS", v ? v : "v1", 1); }

static const char *dts(DType t) { return t == DT_BF16 ? "bf16" : "f32"; }

// ---- DSV3_MEMOPS ----

static void unknown_name(void *ctx) {
    (void)ctx;
    setenv("DSV3_MEMOPS", "moe_combine,bogus", 1);
    const Backend *g = backend_get("cuda");
    void *a = g->alloc(64);
    g->swiglu_forward(tensor_1d(a, DT_F32, 8), tensor_1d(a, DT_F32, 8), tensor_1d(a, DT_F32, 8));
}

TEST(gpu_memops_selection) {
    EXPECT_DIE(unknown_name, NULL, "DSV3_MEMOPS=moe_combine,bogus: unknown op 'bogus' (expected v1, v2 or a comma-sep");
    // a list: the named ops take v2, the others v1; both must match the cpu
    gt_init(101);
    const int64_t n = 1003;
    float *g = ops_rand(n, 4.0f), *u = ops_rand(n, 2.0f), *want = malloc(sizeof(float) * n);
    C->swiglu_forward(tensor_1d(want, DT_F32, n), tensor_1d(g, DT_F32, n), tensor_1d(u, DT_F32, n));
    void *d_g = gt_dev(g, n, DT_F32), *d_u = gt_dev(u, n, DT_F32);
    static const char *lists[3] = {"swiglu_forward", "rmsnorm_forward,swiglu_forward,convert", "rmsnorm_forward"};
    for (int i = 0; i < 3; i++) {
        void *d_o = gt_dev_poison(n, DT_F32);
        memops(lists[i]);
        G->swiglu_forward(tensor_1d(d_o, DT_F32, n), tensor_1d(d_g, DT_F32, n), tensor_1d(d_u, DT_F32, n));
        memops(NULL);
        GT_CLOSE(lists[i], gt_host(d_o, n, DT_F32), want, n, 1e-6, 1e-7);
    }
}

// ---- RMSNorm ----

// Forward out (dt_out) from inp (dt_in), weight dt_w; backward dinp (dt_in) from dout (dt_g): with both outputs
// (overwrite and accumulate), dinp only, dw only; dw twice from the same start (the same bits).
static void check_norm(int M, int d, DType dt_in, DType dt_out, DType dt_w, DType dt_g) {
    const int64_t n = (int64_t)M * d;
    float *x = ops_rand(n, 2.0f), *w = ops_rand(d, 1.0f), *g = ops_rand(n, 1.0f), *dx0 = ops_rand(n, 1.0f);
    float *dw0 = ops_rand(d, 1.0f);
    if (dt_in == DT_BF16) x = gt_round_bf16(x, n), dx0 = gt_round_bf16(dx0, n);
    if (dt_w == DT_BF16) w = gt_round_bf16(w, d);
    if (dt_g == DT_BF16) g = gt_round_bf16(g, n);
    float *want = malloc(sizeof(float) * n), *rstd = malloc(sizeof(float) * M);
    C->rmsnorm_forward(tensor_2d(want, DT_F32, M, d), tensor_1d(rstd, DT_F32, M), tensor_2d(x, DT_F32, M, d),
                       tensor_1d(w, DT_F32, d), 1e-6f);
    void *d_x = gt_dev(x, n, dt_in), *d_w = gt_dev(w, d, dt_w), *d_g = gt_dev(g, n, dt_g);
    void *d_out = gt_dev_poison(n, dt_out), *d_r = gt_dev_poison(M, DT_F32);
    memops("v2");
    G->rmsnorm_forward(tensor_2d(d_out, dt_out, M, d), tensor_1d(d_r, DT_F32, M), tensor_2d(d_x, dt_in, M, d),
                       tensor_1d(d_w, dt_w, d), 1e-6f);
    memops(NULL);
    char what[128];
    snprintf(what, sizeof what, "v2 rmsnorm %dx%d %s->%s w %s", M, d, dts(dt_in), dts(dt_out), dts(dt_w));
    if (dt_out == DT_F32) GT_CLOSE(what, gt_host(d_out, n, dt_out), want, n, 1e-5, 1e-5);
    else GT_CLOSE(what, gt_host(d_out, n, dt_out), want, n, 1e-2, 1e-3);
    GT_CLOSE("    rstd", gt_host(d_r, M, DT_F32), rstd, M, 1e-5, 0);
    G->upload(d_r, rstd, sizeof(float) * M); // the backward differentiates at the cpu's rstd on both sides
    const double rt = dt_in == DT_F32 ? 1e-4 : 1e-2, at = dt_in == DT_F32 ? 1e-5 : 1e-3;
    const double dw_at = M > 4096 ? 1e-4 : 1e-5;
    for (int mode = 0; mode < 4; mode++) { // 0, 1: dinp and dw (overwrite, accumulate); 2: dinp only; 3: dw only
        const int acc = mode == 1, want_dx = mode != 3, want_dw = mode != 2;
        float *c_dx = ops_copy_f(dx0, n), *c_dw = ops_copy_f(dw0, d);
        C->rmsnorm_backward(tensor_2d(want_dx ? c_dx : NULL, DT_F32, M, d), tensor_1d(want_dw ? c_dw : NULL, DT_F32, d),
                            tensor_2d(g, DT_F32, M, d), tensor_2d(x, DT_F32, M, d), tensor_1d(w, DT_F32, d),
                            tensor_1d(rstd, DT_F32, M), acc, ops_none(DT_BF16));
        void *d_dx = want_dx ? (acc ? gt_dev(dx0, n, dt_in) : gt_dev_poison(n, dt_in)) : NULL;
        void *d_dw = want_dw ? gt_dev(dw0, d, DT_F32) : NULL;
        memops("v2");
        G->rmsnorm_backward(tensor_2d(d_dx, dt_in, M, d), tensor_1d(d_dw, DT_F32, d), tensor_2d(d_g, dt_g, M, d),
                            tensor_2d(d_x, dt_in, M, d), tensor_1d(d_w, dt_w, d),
                            tensor_1d(d_r, DT_F32, M), acc, ops_none(DT_BF16));
        memops(NULL);
        if (want_dx) {
            snprintf(what, sizeof what, "    dinp (%s, dout %s)%s%s", dts(dt_in), dts(dt_g), acc ? " acc" : "",
                     want_dw ? "" : ", no dw");
            GT_CLOSE_ABS(what, gt_host(d_dx, n, dt_in), c_dx, n, rt, at, 1e-6);
        }
        if (want_dw) {
            float *got = gt_host(d_dw, d, DT_F32);
            GT_CLOSE(want_dx ? "    dw" : "    dw, no dinp", got, c_dw, d, 1e-4, dw_at);
            if (mode == 3) { // determinism: the same bits from the same start
                G->upload(d_dw, dw0, sizeof(float) * d);
                memops("v2");
                G->rmsnorm_backward(tensor_2d(NULL, dt_in, M, d), tensor_1d(d_dw, DT_F32, d),
                                    tensor_2d(d_g, dt_g, M, d), tensor_2d(d_x, dt_in, M, d), tensor_1d(d_w, dt_w, d),
                                    tensor_1d(d_r, DT_F32, M), 0, ops_none(DT_BF16));
                memops(NULL);
                GT_EXACT("    dw deterministic", gt_host(d_dw, d, DT_F32), got, d);
            }
            free(got);
        }
        free(c_dx), free(c_dw);
        if (d_dx) G->free(d_dx);
        if (d_dw) G->free(d_dw);
    }
    G->free(d_x), G->free(d_w), G->free(d_g), G->free(d_out), G->free(d_r);
    free(x), free(w), free(g), free(dx0), free(dw0), free(want), free(rstd);
}

TEST(gpu_memops_rmsnorm) {
    gt_init(102);
    check_norm(1, 8, DT_F32, DT_F32, DT_F32, DT_F32);
    check_norm(7, 16, DT_F32, DT_F32, DT_F32, DT_F32);
    check_norm(7, 33, DT_F32, DT_F32, DT_F32, DT_F32);        // odd width: v1 runs
    check_norm(64, 1536, DT_F32, DT_F32, DT_F32, DT_F32);
    check_norm(300, 2048, DT_F32, DT_F32, DT_F32, DT_F32);    // the widest v2 row
    check_norm(5, 2056, DT_F32, DT_F32, DT_F32, DT_F32);      // wider: v1 runs
    check_norm(257, 512, DT_BF16, DT_BF16, DT_BF16, DT_BF16); // the q LoRA norm
    check_norm(1000, 256, DT_BF16, DT_BF16, DT_F32, DT_BF16); // the kv LoRA norm
    check_norm(100, 520, DT_BF16, DT_BF16, DT_BF16, DT_BF16); // just over the NU = 2 bound
    // the bench model's residual norms: F32 stream in, BF16 out; backward BF16 dout into the F32 gradient
    check_norm(16384, 1536, DT_F32, DT_BF16, DT_BF16, DT_BF16);
    check_norm(16384, 1536, DT_F32, DT_BF16, DT_F32, DT_BF16);
}

// rmsnorm_backward's dinp_lowp (the BF16 view of the residual gradient, written by the op that forms it), with each
// kernel set: the same call without it and then convert give dinp, dw and the BF16 copy bit for bit (the copy is
// the rounding of what dinp holds, as convert's); dinp against the cpu as in check_norm. lowp_off: dinp_lowp starts
// that many elements into its buffer (an unaligned view: v2 hands over to v1), and the element before it stays
// untouched.
static void check_norm_lowp(int M, int d, DType dt_in, DType dt_g, DType dt_w, int lowp_off) {
    const int64_t n = (int64_t)M * d;
    float *x = ops_rand(n, 2.0f), *w = ops_rand(d, 1.0f), *g = ops_rand(n, 1.0f), *dx0 = ops_rand(n, 1.0f);
    float *dw0 = ops_rand(d, 1.0f);
    if (dt_in == DT_BF16) x = gt_round_bf16(x, n), dx0 = gt_round_bf16(dx0, n);
    if (dt_g == DT_BF16) g = gt_round_bf16(g, n);
    if (dt_w == DT_BF16) w = gt_round_bf16(w, d);
    float *y = malloc(sizeof(float) * n), *rstd = malloc(sizeof(float) * M);
    C->rmsnorm_forward(tensor_2d(y, DT_F32, M, d), tensor_1d(rstd, DT_F32, M), tensor_2d(x, DT_F32, M, d),
                       tensor_1d(w, DT_F32, d), 1e-6f);
    void *d_x = gt_dev(x, n, dt_in), *d_w = gt_dev(w, d, dt_w), *d_g = gt_dev(g, n, dt_g);
    void *d_r = gt_dev(rstd, M, DT_F32);
    Tensor tg = tensor_2d(d_g, dt_g, M, d), tx = tensor_2d(d_x, dt_in, M, d), tw = tensor_1d(d_w, dt_w, d);
    Tensor tr = tensor_1d(d_r, DT_F32, M);
    const double rt = dt_in == DT_F32 ? 1e-4 : 1e-2, at = dt_in == DT_F32 ? 1e-5 : 1e-3;
    static const char *const sets[2] = {"v1", "v2"};
    char what[160];
    for (int set = 0; set < 2; set++)
        for (int acc = 0; acc <= 1; acc++) {
            float *c_dx = ops_copy_f(dx0, n);
            C->rmsnorm_backward(tensor_2d(c_dx, DT_F32, M, d), ops_none(DT_F32), tensor_2d(g, DT_F32, M, d),
                                tensor_2d(x, DT_F32, M, d), tensor_1d(w, DT_F32, d), tensor_1d(rstd, DT_F32, M), acc,
                                ops_none(DT_BF16));
            void *r_dx = acc ? gt_dev(dx0, n, dt_in) : gt_dev_poison(n, dt_in), *r_dw = gt_dev(dw0, d, DT_F32);
            void *f_dx = acc ? gt_dev(dx0, n, dt_in) : gt_dev_poison(n, dt_in), *f_dw = gt_dev(dw0, d, DT_F32);
            void *conv = gt_dev_poison(n, DT_BF16), *lp_buf = gt_dev_poison(n + lowp_off, DT_BF16);
            void *lp = (uint16_t *)lp_buf + lowp_off;
            memops(sets[set]);
            G->rmsnorm_backward(tensor_2d(r_dx, dt_in, M, d), tensor_1d(r_dw, DT_F32, d), tg, tx, tw, tr, acc,
                                ops_none(DT_BF16));
            G->rmsnorm_backward(tensor_2d(f_dx, dt_in, M, d), tensor_1d(f_dw, DT_F32, d), tg, tx, tw, tr, acc,
                                tensor_2d(lp, DT_BF16, M, d));
            // the contract: dinp_lowp is the BF16 of what this call left in dinp
            G->convert(tensor_2d(conv, DT_BF16, M, d), tensor_2d(f_dx, dt_in, M, d));
            memops(NULL);
            snprintf(what, sizeof what, "%s rmsnorm_bwd %dx%d %s dout %s w %s%s%s: dinp_lowp = convert(dinp)",
                     sets[set], M, d, dts(dt_in), dts(dt_g), dts(dt_w), acc ? " acc" : "",
                     lowp_off ? " (unaligned)" : "");
            float *got_dx = gt_host(f_dx, n, dt_in), *ref_dx = gt_host(r_dx, n, dt_in);
            float *got_lp = gt_host(lp, n, DT_BF16), *ref_lp = gt_host(conv, n, DT_BF16);
            GT_EXACT(what, got_lp, ref_lp, n);
            // The same kernel with and without the copy: the same dinp and dw bits. A misaligned copy sends the v2
            // set to the v1 kernels (another row-sum order), so there only the tolerance to the cpu holds.
            float *gw = gt_host(f_dw, d, DT_F32), *rw = gt_host(r_dw, d, DT_F32);
            if (!lowp_off || !strcmp(sets[set], "v1")) {
                GT_EXACT("    dinp: the same bits with dinp_lowp", got_dx, ref_dx, n);
                GT_EXACT("    dw: the same bits with dinp_lowp", gw, rw, d);
            }
            GT_CLOSE_ABS("    dinp vs cpu", got_dx, c_dx, n, rt, at, 1e-6);
            if (lowp_off) {
                float *before = gt_host(lp_buf, 1, DT_BF16);
                ASSERT_MSG(isnan(before[0]), "the element before dinp_lowp was written (%g)", (double)before[0]);
                free(before);
            }
            free(c_dx), free(got_dx), free(ref_dx), free(got_lp), free(ref_lp), free(gw), free(rw);
            G->free(r_dx), G->free(r_dw), G->free(f_dx), G->free(f_dw), G->free(conv), G->free(lp_buf);
        }
    G->free(d_x), G->free(d_w), G->free(d_g), G->free(d_r);
    free(x), free(w), free(g), free(dx0), free(dw0), free(y), free(rstd);
}

TEST(gpu_memops_rmsnorm_backward_lowp) {
    gt_init(109);
    check_norm_lowp(16384, 1536, DT_F32, DT_BF16, DT_F32, 0);  // the bench model's residual gradient
    check_norm_lowp(100, 1536, DT_F32, DT_BF16, DT_F32, 0);    // a partial last block of rows
    check_norm_lowp(300, 2048, DT_F32, DT_BF16, DT_F32, 1);    // unaligned dinp_lowp: v1 under either set
    check_norm_lowp(5, 2056, DT_F32, DT_F32, DT_F32, 0);       // wider than v2 takes
    check_norm_lowp(7, 33, DT_F32, DT_F32, DT_BF16, 0);        // odd width
    check_norm_lowp(257, 512, DT_BF16, DT_BF16, DT_BF16, 0);   // a BF16 dinp: its copy is itself, bit for bit
}

// ---- elementwise ----

// swiglu forward/backward on n elements starting `off` elements into the buffers (off 1: unaligned, v1 runs).
static void check_swiglu(int64_t n, DType dt, int64_t off) {
    const int64_t m = n + off;
    float *g = ops_rand(m, 4.0f), *u = ops_rand(m, 2.0f), *dy = ops_rand(m, 1.0f);
    if (dt == DT_BF16) g = gt_round_bf16(g, m), u = gt_round_bf16(u, m), dy = gt_round_bf16(dy, m);
    float *want = malloc(sizeof(float) * n), *wdg = malloc(sizeof(float) * n), *wdu = malloc(sizeof(float) * n);
    C->swiglu_forward(tensor_1d(want, DT_F32, n), tensor_1d(g + off, DT_F32, n), tensor_1d(u + off, DT_F32, n));
    C->swiglu_backward(tensor_1d(wdg, DT_F32, n), tensor_1d(wdu, DT_F32, n), tensor_1d(dy + off, DT_F32, n),
                       tensor_1d(g + off, DT_F32, n), tensor_1d(u + off, DT_F32, n));
    const size_t es = dtype_size(dt);
    char *d_g = gt_dev(g, m, dt), *d_u = gt_dev(u, m, dt), *d_dy = gt_dev(dy, m, dt);
    char *d_o = gt_dev_poison(m, dt), *d_dg = gt_dev_poison(m, dt), *d_du = gt_dev_poison(m, dt);
    Tensor tg = tensor_1d(d_g + off * es, dt, n), tu = tensor_1d(d_u + off * es, dt, n);
    memops("v2");
    G->swiglu_forward(tensor_1d(d_o + off * es, dt, n), tg, tu);
    G->swiglu_backward(tensor_1d(d_dg + off * es, dt, n), tensor_1d(d_du + off * es, dt, n),
                       tensor_1d(d_dy + off * es, dt, n), tg, tu);
    memops(NULL);
    const double rt = dt == DT_F32 ? 1e-6 : 1e-2, at = dt == DT_F32 ? 1e-7 : 1e-3;
    char what[96];
    snprintf(what, sizeof what, "v2 swiglu n %lld %s%s", (long long)n, dts(dt), off ? " unaligned" : "");
    float *got = gt_host(d_o, m, dt);
    GT_CLOSE(what, got + off, want, n, rt, at);
    free(got);
    got = gt_host(d_dg, m, dt);
    GT_CLOSE("    dgate", got + off, wdg, n, rt, at);
    free(got);
    got = gt_host(d_du, m, dt);
    GT_CLOSE("    dup", got + off, wdu, n, rt, at);
    free(got);
    // in place, as the model may call it: dgate/dup over gate/up
    memops("v2");
    G->swiglu_backward(tg, tu, tensor_1d(d_dy + off * es, dt, n), tg, tu);
    memops(NULL);
    got = gt_host(d_g, m, dt);
    GT_CLOSE("    dgate in place", got + off, wdg, n, rt, at);
    free(got);
    got = gt_host(d_u, m, dt);
    GT_CLOSE("    dup in place", got + off, wdu, n, rt, at);
    free(got);
    G->free(d_g), G->free(d_u), G->free(d_dy), G->free(d_o), G->free(d_dg), G->free(d_du);
    free(g), free(u), free(dy), free(want), free(wdg), free(wdu);
}

TEST(gpu_memops_swiglu) {
    gt_init(103);
    check_swiglu(1, DT_F32, 0);
    check_swiglu(7, DT_BF16, 0);           // the tail only
    check_swiglu(1000, DT_F32, 0);
    check_swiglu(100003, DT_BF16, 0);      // 16-byte units and a tail
    check_swiglu(100003, DT_BF16, 1);      // unaligned view: v1
    check_swiglu(16384 * 512, DT_BF16, 0); // the shared expert
    check_swiglu(98304 * 512, DT_BF16, 0); // the routed experts (bench)
    check_swiglu(4096 * 1024 + 3, DT_F32, 0);
}

TEST(gpu_memops_axpy_convert_exact) {
    gt_init(104);
    static const int64_t sizes[] = {1, 9, 1000003};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        const int64_t n = sizes[s];
        float *y = ops_rand(n, 1.0f), *x = ops_rand(n, 1.0f);
        if (n > 2) y[0] = 1.0f + 0x1p-8f, y[1] = -0.0f; // a rounding tie (to even in BF16), a negative zero
        // axpy F32: exact; BF16: v2 = v1 bit for bit (the same FP32 expression, one rounding), close to the cpu
        void *d_y = gt_dev(y, n, DT_F32), *d_x = gt_dev(x, n, DT_F32);
        float *want = ops_copy_f(y, n);
        C->axpy(tensor_1d(want, DT_F32, n), tensor_1d(x, DT_F32, n), -0.37f);
        memops("v2");
        G->axpy(tensor_1d(d_y, DT_F32, n), tensor_1d(d_x, DT_F32, n), -0.37f);
        memops(NULL);
        GT_EXACT("v2 axpy f32", gt_host(d_y, n, DT_F32), want, n);
        float *yb = gt_round_bf16(y, n), *xb = gt_round_bf16(x, n);
        void *d_yb1 = gt_dev(yb, n, DT_BF16), *d_yb2 = gt_dev(yb, n, DT_BF16), *d_xb = gt_dev(xb, n, DT_BF16);
        G->axpy(tensor_1d(d_yb1, DT_BF16, n), tensor_1d(d_xb, DT_BF16, n), 0.5f);
        memops("v2");
        G->axpy(tensor_1d(d_yb2, DT_BF16, n), tensor_1d(d_xb, DT_BF16, n), 0.5f);
        memops(NULL);
        GT_EXACT("v2 axpy bf16 = v1", gt_host(d_yb2, n, DT_BF16), gt_host(d_yb1, n, DT_BF16), n);
        // convert: the four dtype pairs, against the cpu's round-to-nearest-even
        for (int pair = 0; pair < 4; pair++) {
            const DType td = pair & 1 ? DT_BF16 : DT_F32, ts = pair & 2 ? DT_BF16 : DT_F32;
            float *src = ts == DT_BF16 ? yb : y, *cw = malloc(sizeof(float) * n);
            for (int64_t i = 0; i < n; i++) cw[i] = td == DT_BF16 ? bf16_to_f32(bf16_from_f32(src[i])) : src[i];
            void *d_s = gt_dev(src, n, ts), *d_d = gt_dev_poison(n, td);
            memops("v2");
            G->convert(tensor_1d(d_d, td, n), tensor_1d(d_s, ts, n));
            memops(NULL);
            char what[64];
            snprintf(what, sizeof what, "v2 convert %s->%s n %lld", dts(ts), dts(td), (long long)n);
            GT_EXACT(what, gt_host(d_d, n, td), cw, n);
            G->free(d_s), G->free(d_d), free(cw);
        }
        G->free(d_y), G->free(d_x), G->free(d_yb1), G->free(d_yb2), G->free(d_xb);
        free(y), free(x), free(want), free(yb), free(xb);
    }
}

// dst (R, dc)[:, dcol : dcol + nc] [+]= src (R, sc)[:, scol : scol + nc], both accumulate modes, against the cpu.
static void check_copy_cols(int R, int dc, int dcol, int sc, int scol, int nc, DType dt) {
    float *dst = ops_rand((int64_t)R * dc, 1.0f), *src = ops_rand((int64_t)R * sc, 1.0f);
    if (dt == DT_BF16) dst = gt_round_bf16(dst, (int64_t)R * dc), src = gt_round_bf16(src, (int64_t)R * sc);
    void *d_s = gt_dev(src, (int64_t)R * sc, dt);
    for (int acc = 0; acc <= 1; acc++) {
        float *want = ops_copy_f(dst, (int64_t)R * dc);
        C->copy_cols(tensor_2d(want, DT_F32, R, dc), dcol, tensor_2d(src, DT_F32, R, sc), scol, nc, acc);
        void *d_d = gt_dev(dst, (int64_t)R * dc, dt);
        memops("v2");
        G->copy_cols(tensor_2d(d_d, dt, R, dc), dcol, tensor_2d(d_s, dt, R, sc), scol, nc, acc);
        memops(NULL);
        char what[128];
        snprintf(what, sizeof what, "v2 copy_cols %dx%d[%d:+%d] <- %dx%d[%d:] %s%s", R, dc, dcol, nc, R, sc, scol,
                 dts(dt), acc ? " acc" : "");
        float *got = gt_host(d_d, (int64_t)R * dc, dt);
        if (dt == DT_F32 || !acc) GT_EXACT(what, got, want, (int64_t)R * dc); // a BF16 copy is exact too
        else GT_CLOSE(what, got, want, (int64_t)R * dc, 1e-2, 1e-2);
        G->free(d_d), free(want), free(got);
    }
    G->free(d_s), free(dst), free(src);
}

TEST(gpu_memops_copy_cols) {
    gt_init(105);
    check_copy_cols(16384, 256, 0, 320, 0, 256, DT_BF16);     // MLA: c_kv out of [c_kv ; k_rope]
    check_copy_cols(16384, 64, 0, 320, 256, 64, DT_BF16);     // k_rope
    check_copy_cols(16384, 320, 256, 64, 0, 64, DT_BF16);     // and back (the backward)
    check_copy_cols(4096, 3072, 1536, 1536, 0, 1536, DT_F32); // MTP's [emb ; h]
    check_copy_cols(129, 100, 30, 70, 5, 64, DT_F32);         // odd offsets: v1
    check_copy_cols(3, 24, 8, 16, 8, 8, DT_F32);
}

// ---- RoPE and the MLA key/value assembly ----

static void rand_tables(float *cs, float *sn, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        double a = 3.14159265 * ops_rng_unit() * (1 + i % 7);
        cs[i] = (float)cos(a), sn[i] = (float)sin(a);
    }
}

// x (N, H, stride) rotated over [col, col + rope) with position n % T, forward then inverse; F32 against the cpu
// bit for bit, BF16 v2 against v1 bit for bit and close to the cpu.
static void check_rope(int N, int H, int stride, int col, int rope, int T) {
    const int64_t n = (int64_t)N * H * stride, half = rope / 2;
    float *cs = malloc(sizeof(float) * T * half), *sn = malloc(sizeof(float) * T * half);
    rand_tables(cs, sn, (int64_t)T * half);
    void *d_cs = gt_dev(cs, (int64_t)T * half, DT_F32), *d_sn = gt_dev(sn, (int64_t)T * half, DT_F32);
    Tensor ccs = tensor_2d(cs, DT_F32, T, half), csn = tensor_2d(sn, DT_F32, T, half);
    Tensor gcs = tensor_2d(d_cs, DT_F32, T, half), gsn = tensor_2d(d_sn, DT_F32, T, half);
    float *x = ops_rand(n, 2.0f), *xb = gt_round_bf16(x, n);
    void *d_x = gt_dev(x, n, DT_F32), *d_b1 = gt_dev(xb, n, DT_BF16), *d_b2 = gt_dev(xb, n, DT_BF16);
    char what[96];
    for (int inv = 0; inv <= 1; inv++) {
        C->rope_apply(tensor_3d(x, DT_F32, N, H, stride), col, rope, ccs, csn, T, inv);
        memops("v2");
        G->rope_apply(tensor_3d(d_x, DT_F32, N, H, stride), col, rope, gcs, gsn, T, inv);
        G->rope_apply(tensor_3d(d_b2, DT_BF16, N, H, stride), col, rope, gcs, gsn, T, inv);
        memops(NULL);
        G->rope_apply(tensor_3d(d_b1, DT_BF16, N, H, stride), col, rope, gcs, gsn, T, inv);
        snprintf(what, sizeof what, "v2 rope N %d H %d stride %d [%d:+%d]%s", N, H, stride, col, rope,
                 inv ? " inverse" : "");
        GT_EXACT(what, gt_host(d_x, n, DT_F32), x, n);
        GT_EXACT("    bf16 = v1", gt_host(d_b2, n, DT_BF16), gt_host(d_b1, n, DT_BF16), n);
    }
    GT_CLOSE("    bf16 round trip ~ input", gt_host(d_b2, n, DT_BF16), xb, n, 2e-2, 2e-2);
    G->free(d_cs), G->free(d_sn), G->free(d_x), G->free(d_b1), G->free(d_b2);
    free(cs), free(sn), free(x), free(xb);
}

TEST(gpu_memops_rope) {
    gt_init(106);
    check_rope(2 * 512, 12, 192, 128, 64, 512); // the bench q: 12 heads of [nope 128 ; rope 64]
    check_rope(2 * 512, 1, 64, 0, 64, 512);     // the shared k_rope
    check_rope(10, 3, 40, 8, 16, 5);
    check_rope(10, 3, 40, 8, 12, 5);            // rope 12: v1
    check_rope(10, 3, 41, 8, 16, 5);            // odd stride: v1
}

static void check_kv(int N, int H, int nope, int rope, int dv) {
    const int64_t nk = (int64_t)N * H * (nope + rope), nv = (int64_t)N * H * dv, nkv = (int64_t)N * H * (nope + dv);
    float *kv = ops_rand(nkv, 1.0f), *kr = ops_rand((int64_t)N * rope, 1.0f);
    float *gk = ops_rand(nk, 1.0f), *gv = ops_rand(nv, 1.0f);
    float *k = malloc(sizeof(float) * nk), *v = malloc(sizeof(float) * nv), *dkv = malloc(sizeof(float) * nkv);
    float *dkr = malloc(sizeof(float) * N * rope);
    C->mla_kv_assemble(tensor_3d(k, DT_F32, N, H, nope + rope), tensor_3d(v, DT_F32, N, H, dv),
                       tensor_2d(kv, DT_F32, N, H * (nope + dv)), tensor_2d(kr, DT_F32, N, rope), nope, rope, dv);
    C->mla_kv_assemble_backward(tensor_2d(dkv, DT_F32, N, H * (nope + dv)), tensor_2d(dkr, DT_F32, N, rope),
                                tensor_3d(gk, DT_F32, N, H, nope + rope), tensor_3d(gv, DT_F32, N, H, dv), nope, rope,
                                dv);
    char what[96];
    for (int b = 0; b <= 1; b++) {
        const DType dt = b ? DT_BF16 : DT_F32;
        float *kvb = b ? gt_round_bf16(kv, nkv) : kv, *krb = b ? gt_round_bf16(kr, (int64_t)N * rope) : kr;
        float *gkb = b ? gt_round_bf16(gk, nk) : gk, *gvb = b ? gt_round_bf16(gv, nv) : gv;
        void *d_kv = gt_dev(kvb, nkv, dt), *d_kr = gt_dev(krb, (int64_t)N * rope, dt), *d_gk = gt_dev(gkb, nk, dt);
        void *d_gv = gt_dev(gvb, nv, dt);
        float *out[2][4]; // [v1, v2][k, v, dkv, dk_rope]
        for (int ver = 0; ver <= 1; ver++) {
            void *d_k = gt_dev_poison(nk, dt), *d_v = gt_dev_poison(nv, dt), *d_dkv = gt_dev_poison(nkv, dt);
            void *d_dkr = gt_dev_poison((int64_t)N * rope, dt);
            memops(ver ? "v2" : "v1");
            G->mla_kv_assemble(tensor_3d(d_k, dt, N, H, nope + rope), tensor_3d(d_v, dt, N, H, dv),
                               tensor_2d(d_kv, dt, N, H * (nope + dv)), tensor_2d(d_kr, dt, N, rope), nope, rope, dv);
            G->mla_kv_assemble_backward(tensor_2d(d_dkv, dt, N, H * (nope + dv)), tensor_2d(d_dkr, dt, N, rope),
                                        tensor_3d(d_gk, dt, N, H, nope + rope), tensor_3d(d_gv, dt, N, H, dv), nope,
                                        rope, dv);
            memops(NULL);
            out[ver][0] = gt_host(d_k, nk, dt), out[ver][1] = gt_host(d_v, nv, dt);
            out[ver][2] = gt_host(d_dkv, nkv, dt), out[ver][3] = gt_host(d_dkr, (int64_t)N * rope, dt);
            G->free(d_k), G->free(d_v), G->free(d_dkv), G->free(d_dkr);
        }
        snprintf(what, sizeof what, "v2 kv_assemble N %d H %d %d/%d/%d %s k", N, H, nope, rope, dv, dts(dt));
        const int64_t sz[4] = {nk, nv, nkv, (int64_t)N * rope};
        static const char *names[4] = {NULL, "    v", "    dkv", "    dk_rope (head sums)"};
        for (int i = 0; i < 4; i++) {
            GT_EXACT(i ? names[i] : what, out[1][i], out[0][i], sz[i]); // v2 = v1 bit for bit
            const float *want = i == 0 ? k : i == 1 ? v : i == 2 ? dkv : dkr;
            if (!b) GT_EXACT("      = cpu", out[1][i], want, sz[i]);
            else if (i < 3) GT_CLOSE("      ~ cpu", out[1][i], want, sz[i], 1e-2, 1e-2); // the cpu on unrounded
            for (int ver = 0; ver <= 1; ver++) free(out[ver][i]);
        }
        G->free(d_kv), G->free(d_kr), G->free(d_gk), G->free(d_gv);
        if (b) free(kvb), free(krb), free(gkb), free(gvb);
    }
    free(kv), free(kr), free(gk), free(gv), free(k), free(v), free(dkv), free(dkr);
}

TEST(gpu_memops_mla_kv_assemble) {
    gt_init(107);
    check_kv(2048, 12, 128, 64, 128); // the bench heads
    check_kv(38, 4, 16, 8, 16);
    check_kv(38, 4, 16, 8, 12);       // dv 12: the backward takes v1
    check_kv(5, 3, 5, 3, 7);          // odd: v1
}

// ---- cross-entropy ----

static void check_ce(int N, int V, float amp, DType dt_grad) {
    float *x = ops_rand((int64_t)N * V, amp);
    int32_t *tg = malloc(sizeof(int32_t) * N);
    for (int n = 0; n < N; n++) tg[n] = (int32_t)(ops_rng_u64() % V);
    if (N > 2 && V > 8) { // a row with -inf logits (masked entries) and a row with a NaN (its loss is NaN)
        for (int j = 0; j < V; j += 3) x[(int64_t)V + j] = j == tg[1] ? 0.0f : -INFINITY;
        x[2 * (int64_t)V + V / 2] = NAN;
    }
    float *loss = malloc(sizeof(float) * N), *dl = malloc(sizeof(float) * N * (int64_t)V);
    C->cross_entropy_forward_backward(tensor_1d(loss, DT_F32, N), tensor_2d(dl, DT_F32, N, V),
                                      tensor_2d(x, DT_F32, N, V), tensor_1d(tg, DT_I32, N), 0.125f);
    void *d_x = gt_dev(x, (int64_t)N * V, DT_F32), *d_tg = gt_dev_i32(tg, N), *d_loss = gt_dev_poison(N, DT_F32);
    void *d_dl = gt_dev_poison((int64_t)N * V, dt_grad);
    memops("v2");
    G->cross_entropy_forward_backward(tensor_1d(d_loss, DT_F32, N), tensor_2d(d_dl, dt_grad, N, V),
                                      tensor_2d(d_x, DT_F32, N, V), tensor_1d(d_tg, DT_I32, N), 0.125f);
    memops(NULL);
    char what[96];
    snprintf(what, sizeof what, "v2 cross_entropy N %d V %d loss (dlogits %s)", N, V, dts(dt_grad));
    GT_CLOSE(what, gt_host(d_loss, N, DT_F32), loss, N, 1e-4, 1e-5);
    if (dt_grad == DT_F32) GT_CLOSE("    dlogits", gt_host(d_dl, (int64_t)N * V, DT_F32), dl, (int64_t)N * V, 1e-4, 1e-5);
    else GT_CLOSE("    dlogits bf16", gt_host(d_dl, (int64_t)N * V, DT_BF16), dl, (int64_t)N * V, 4e-3, 1e-5);
    if (dt_grad == DT_F32) { // in place over the logits (the model's F32 use), then losses only
        void *d_l2 = gt_dev_poison(N, DT_F32), *d_x2 = gt_dev(x, (int64_t)N * V, DT_F32), *d_l3 = gt_dev_poison(N, DT_F32);
        memops("v2");
        G->cross_entropy_forward_backward(tensor_1d(d_l2, DT_F32, N), tensor_2d(d_x, DT_F32, N, V),
                                          tensor_2d(d_x, DT_F32, N, V), tensor_1d(d_tg, DT_I32, N), 0.125f);
        G->cross_entropy_forward_backward(tensor_1d(d_l3, DT_F32, N), tensor_2d(NULL, DT_F32, N, V),
                                          tensor_2d(d_x2, DT_F32, N, V), tensor_1d(d_tg, DT_I32, N), 0.125f);
        memops(NULL);
        GT_CLOSE("    loss (aliased)", gt_host(d_l2, N, DT_F32), loss, N, 1e-4, 1e-5);
        GT_CLOSE("    dlogits (aliased)", gt_host(d_x, (int64_t)N * V, DT_F32), dl, (int64_t)N * V, 1e-4, 1e-5);
        GT_CLOSE("    loss only", gt_host(d_l3, N, DT_F32), loss, N, 1e-4, 1e-5);
    }
}

TEST(gpu_memops_cross_entropy) {
    gt_init(108);
    check_ce(1, 1, 1.0f, DT_F32); // V % 4 != 0: v1
    check_ce(5, 8, 3.0f, DT_F32);
    check_ce(64, 1000, 5.0f, DT_F32);
    check_ce(7, 1002, 5.0f, DT_BF16); // v1
    check_ce(8, 129280, 4.0f, DT_F32);
    check_ce(2048, 32768, 4.0f, DT_BF16); // the bench head chunk
}

static void bad_target(void *ctx) {
    (void)ctx;
    setenv("DSV3_MEMOPS", "v2", 1);
    const Backend *g = backend_get("cuda");
    int32_t tg[3] = {0, 9, 3};
    void *d_tg = g->alloc(12), *d_x = g->alloc(3 * 8 * 4), *d_l = g->alloc(12);
    g->upload(d_tg, tg, 12);
    g->cross_entropy_forward_backward(tensor_1d(d_l, DT_F32, 3), tensor_2d(d_x, DT_F32, 3, 8),
                                      tensor_2d(d_x, DT_F32, 3, 8), tensor_1d(d_tg, DT_I32, 3), 1.0f);
    g->synchronize();
}

TEST(gpu_memops_cross_entropy_bad_target_dies) {
    EXPECT_DIE(bad_target, NULL, "cross_entropy_forward_backward: targets[1] = 9 is outside [0, 8)");
}
