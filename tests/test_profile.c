// The per-op profiler (kernels/profile.h): the wrapper on single ops (calls, FLOPs and bytes from the arguments,
// results identical to the inner backend's), the report and profile.json, bad inputs, and build/train with
// log.profile on the tiny model, where every op's call count per step and the FLOPs of the GEMM, grouped GEMM and
// attention families are derived here from the config by walking the graph of model/*.c by hand.
#include "tests/test.h"
#include <stddef.h>
#include "tests/child_exit.h"
#include "kernels/profile.h"
#include "train/config.h"
#include "model/params.h"
#include "data/json.h"

#include <limits.h>
#include <stdint.h>
#include <unistd.h>

static void fill(float *x, int64_t n, float seed) {
    for (int64_t i = 0; i < n; i++) x[i] = sinf(seed + 0.37f * (float)i);
}

// ---- the wrapper on single ops ----

TEST(profile_wrap_matmul_counts_one_call_and_its_flops) {
    const Backend *be = profile_wrap(&backend_cpu);
    ASSERT_EQ_STR(be->name, "cpu");
    ASSERT(profile_wrap(&backend_cpu) == be);   // one wrapper per process
    profile_reset();
    enum { M = 3, N = 4, K = 5 };
    float inp[M * K], w[N * K], out[M * N], ref[M * N];
    fill(inp, M * K, 0.1f);
    fill(w, N * K, 1.3f);
    be->matmul_forward(tensor_2d(out, DT_F32, M, N), tensor_2d(inp, DT_F32, M, K), tensor_2d(w, DT_F32, N, K), 0);
    backend_cpu.matmul_forward(tensor_2d(ref, DT_F32, M, N), tensor_2d(inp, DT_F32, M, K),
                               tensor_2d(w, DT_F32, N, K), 0);
    ASSERT(memcmp(out, ref, sizeof out) == 0);   // the wrapper passes every argument through
    ProfileStat s = profile_get("matmul_forward");
    ASSERT_EQ_INT(s.calls, 1);
    ASSERT(s.has_flops && !s.has_bytes);
    ASSERT(s.flops == 2.0 * M * N * K);          // 120
    ASSERT(s.seconds >= 0);
    ASSERT_EQ_STR(s.family, "gemm");

    // Backward: one product per gradient it computes (dw skipped, then both).
    float dinp[M * K], dw[N * K] = {0};
    be->matmul_backward(tensor_2d(dinp, DT_F32, M, K), tensor_2d(NULL, DT_F32, N, K), tensor_2d(out, DT_F32, M, N),
                        tensor_2d(inp, DT_F32, M, K), tensor_2d(w, DT_F32, N, K), 0);
    ASSERT(profile_get("matmul_backward").flops == 120.0);
    be->matmul_backward(tensor_2d(dinp, DT_F32, M, K), tensor_2d(dw, DT_F32, N, K), tensor_2d(out, DT_F32, M, N),
                        tensor_2d(inp, DT_F32, M, K), tensor_2d(w, DT_F32, N, K), 0);
    ASSERT_EQ_INT(profile_get("matmul_backward").calls, 2);
    ASSERT(profile_get("matmul_backward").flops == 120.0 + 240.0);
    // A (2, 3, K) input is read as 6 rows: 2 * 6 * N * K.
    float inp3[6 * K], out3[6 * N];
    fill(inp3, 6 * K, 0.5f);
    be->matmul_forward(tensor_3d(out3, DT_F32, 2, 3, N), tensor_3d(inp3, DT_F32, 2, 3, K), tensor_2d(w, DT_F32, N, K),
                       0);
    ASSERT(profile_get("matmul_forward").flops == 120.0 + 2.0 * 6 * N * K);

    profile_reset();
    s = profile_get("matmul_forward");
    ASSERT(s.calls == 0 && s.flops == 0 && s.seconds == 0);
}

TEST(profile_grouped_matmul_and_attention_flops) {
    const Backend *be = profile_wrap(&backend_cpu);
    profile_reset();
    // Grouped: 3 experts, rows [0, 2) [2, 2) [2, 5): R = 5 rows, w (3, N 4, K 3) -> 2 * 5 * 4 * 3 = 120 per product.
    enum { E = 3, R = 5, GN = 4, GK = 3 };
    int32_t off[E + 1] = {0, 2, 2, 5};
    float x[R * GK], w[E * GN * GK], y[R * GN], dx[R * GK], dw[E * GN * GK] = {0};
    fill(x, R * GK, 0.2f);
    fill(w, E * GN * GK, 0.7f);
    Tensor toff = tensor_1d(off, DT_I32, E + 1);
    be->grouped_matmul_forward(tensor_2d(y, DT_F32, R, GN), tensor_2d(x, DT_F32, R, GK),
                               tensor_3d(w, DT_F32, E, GN, GK), toff, off);
    be->grouped_matmul_backward(tensor_2d(dx, DT_F32, R, GK), tensor_3d(dw, DT_F32, E, GN, GK),
                                tensor_2d(y, DT_F32, R, GN), tensor_2d(x, DT_F32, R, GK),
                                tensor_3d(w, DT_F32, E, GN, GK), toff, off, 0);
    ASSERT_EQ_INT(profile_get("grouped_matmul_forward").calls, 1);
    ASSERT(profile_get("grouped_matmul_forward").flops == 120.0);
    ASSERT(profile_get("grouped_matmul_backward").flops == 240.0);
    ASSERT_EQ_STR(profile_get("grouped_matmul_backward").family, "grouped gemm");
    // The shape rows: one each, M = the 5 rows the segments cover (not a tensor's leading dim), N 4, K 3, E 3.
    ASSERT_EQ_INT(profile_n_gemm_shapes(), 2);
    ProfileGemmShape gf = profile_gemm_shape(0), gb = profile_gemm_shape(1);
    ASSERT_EQ_STR(gf.op, "grouped_matmul_forward");
    ASSERT_EQ_STR(gf.products, "fwd");
    ASSERT(gf.m == R && gf.n == GN && gf.k == GK && gf.experts == E && gf.calls == 1 && gf.flops == 120.0);
    ASSERT_EQ_STR(gb.products, "dinp+dw");
    ASSERT(gb.m == R && gb.calls == 1 && gb.flops == 240.0);
    // Dense: a dw-only backward and a repeat of the same forward shape (one row, two calls).
    float a[6] = {1, 2, 3, 4, 5, 6}, wd[6] = {1, 0, 0, 1, 1, 1}, od[4], g[6] = {0};
    for (int i = 0; i < 2; i++)
        be->matmul_forward(tensor_2d(od, DT_F32, 2, 2), tensor_2d(a, DT_F32, 2, 3), tensor_2d(wd, DT_F32, 2, 3), 0);
    be->matmul_backward((Tensor){0}, tensor_2d(g, DT_F32, 2, 3), tensor_2d(od, DT_F32, 2, 2),
                        tensor_2d(a, DT_F32, 2, 3), tensor_2d(wd, DT_F32, 2, 3), 0);
    ASSERT_EQ_INT(profile_n_gemm_shapes(), 4);
    ProfileGemmShape df = profile_gemm_shape(2), db = profile_gemm_shape(3);
    ASSERT(df.m == 2 && df.n == 2 && df.k == 3 && df.experts == 0 && df.calls == 2 && df.flops == 2 * 24.0);
    ASSERT_EQ_STR(db.products, "dw");
    ASSERT(db.calls == 1 && db.flops == 24.0);

    // Causal attention B 1, T 4, H 2, D 3, DV 2: the visible half T^2/2 = 8 scores per head:
    // forward 2 * 1 * 2 * 8 * (3 + 2) = 160; backward 2 * 1 * 2 * 8 * (3*3 + 2*2) = 416 (bench_ops_gpu.c's counts).
    enum { B = 1, T = 4, H = 2, D = 3, DV = 2 };
    float q[B * T * H * D], k[B * T * H * D], v[B * T * H * DV], o[B * T * H * DV], lse[B * H * T];
    float dq[B * T * H * D], dk[B * T * H * D], dv[B * T * H * DV];
    fill(q, B * T * H * D, 0.3f);
    fill(k, B * T * H * D, 0.9f);
    fill(v, B * T * H * DV, 1.7f);
    Tensor tq = tensor_4d(q, DT_F32, B, T, H, D), tk = tensor_4d(k, DT_F32, B, T, H, D);
    Tensor tv = tensor_4d(v, DT_F32, B, T, H, DV), to = tensor_4d(o, DT_F32, B, T, H, DV);
    Tensor tl = tensor_3d(lse, DT_F32, B, H, T);
    be->attention_forward(to, tl, tq, tk, tv, 0.5f);
    be->attention_backward(tensor_4d(dq, DT_F32, B, T, H, D), tensor_4d(dk, DT_F32, B, T, H, D),
                           tensor_4d(dv, DT_F32, B, T, H, DV), to, tq, tk, tv, to, tl, 0.5f);
    ASSERT(profile_get("attention_forward").flops == 160.0);
    ASSERT(profile_get("attention_backward").flops == 416.0);
    ASSERT_EQ_STR(profile_get("attention_forward").family, "attention");
}

TEST(profile_memory_ops_count_bytes_and_inactive_calls_through) {
    const Backend *be = profile_wrap(&backend_cpu);
    profile_reset();
    float host[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, back[10];
    float *dev = be->alloc(sizeof host);
    be->upload(dev, host, sizeof host);
    be->download(back, dev, sizeof back);
    be->zero(dev, 12);
    be->free(dev);
    ASSERT(memcmp(host, back, sizeof host) == 0);
    ProfileStat a = profile_get("alloc"), u = profile_get("upload"), d = profile_get("download");
    ASSERT(a.calls == 1 && a.bytes == 40 && a.has_bytes && !a.has_flops);
    ASSERT(u.calls == 1 && u.bytes == 40 && d.calls == 1 && d.bytes == 40);
    ASSERT(profile_get("zero").bytes == 12 && profile_get("free").calls == 1);
    ASSERT_EQ_STR(a.family, "memory/transfer");
    ASSERT_EQ_STR(profile_get("zero").family, "elementwise/copy");

    // Inactive: the op still runs, nothing is counted.
    profile_set_active(0);
    float y[3] = {1, 2, 3}, x[3] = {10, 20, 30};
    be->axpy(tensor_1d(y, DT_F32, 3), tensor_1d(x, DT_F32, 3), 2.0f);
    ASSERT(y[0] == 21 && y[1] == 42 && y[2] == 63);
    ASSERT_EQ_INT(profile_get("axpy").calls, 0);
    profile_set_active(1);
    be->axpy(tensor_1d(y, DT_F32, 3), tensor_1d(x, DT_F32, 3), 1.0f);
    ASSERT_EQ_INT(profile_get("axpy").calls, 1);
}

// ---- profile.json ----

static const char *const families[] = {"gemm", "grouped gemm", "attention", "norm", "elementwise/copy",
                                       "embedding+loss", "moe routing", "optimizer", "memory/transfer"};
enum { N_FAMILIES = 9 };

static Json *json_load(const char *path) {
    size_t len;
    char *text = json_read_file(path, &len), err[256];
    Json *j = json_parse(text, len, err, sizeof err);
    ASSERT_MSG(j, "%s is not valid JSON: %s", path, err);
    free(text);
    return j;
}

static const JsonValue *json_op(const JsonValue *root, const char *op) {
    const JsonValue *ops = json_get(root, "ops");
    ASSERT(ops && ops->type == JSON_ARRAY);
    for (size_t i = 0; i < ops->n; i++) {
        const JsonValue *name = json_get(&ops->items[i], "op");
        if (name && name->type == JSON_STRING && strcmp(name->str, op) == 0) return &ops->items[i];
    }
    test_fail(__FILE__, __LINE__, "op %s not in profile.json", op);
}

static double json_num(const JsonValue *obj, const char *key) {
    const JsonValue *v = json_get(obj, key);
    ASSERT_MSG(v && v->type == JSON_NUMBER, "key %s: expected a number", key);
    return v->number;
}

TEST(profile_report_and_json_hold_every_op_and_family) {
    const Backend *be = profile_wrap(&backend_cpu);
    profile_reset();
    float a[6] = {1, 2, 3, 4, 5, 6}, w[6] = {1, 0, 0, 1, 1, 1}, o[4];
    be->matmul_forward(tensor_2d(o, DT_F32, 2, 2), tensor_2d(a, DT_F32, 2, 3), tensor_2d(w, DT_F32, 2, 3), 0);
    be->scale(tensor_1d(a, DT_F32, 6), 0.5f);
    profile_step_done();

    char *text = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&text, &len);
    ASSERT(mem);
    profile_report(mem);
    ASSERT(fclose(mem) == 0);
    ASSERT_CONTAINS(text, "profile (cpu backend): 1 step(s) after warm-up");
    ASSERT_CONTAINS(text, "\nmatmul_forward ");
    ASSERT_CONTAINS(text, "\nscale ");
    ASSERT_CONTAINS(text, "\ngemm ");
    ASSERT_CONTAINS(text, "\noptimizer ");
    ASSERT(!strstr(text, "\nadamw_update "));   // ops that did not run are left out of the table
    free(text);

    char path[PATH_MAX], tmp[PATH_MAX + 8];
    snprintf(path, sizeof path, "%s/profile.json", test_tmpdir());
    profile_write_json(path);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    ASSERT(access(tmp, F_OK) != 0);
    Json *j = json_load(path);
    const JsonValue *root = json_root(j);
    ASSERT_EQ_STR(json_get(root, "backend")->str, "cpu");
    ASSERT(json_num(root, "steps") == 1);
    const JsonValue *ops = json_get(root, "ops");
    ASSERT_EQ_INT(ops->n, profile_n_ops());
    ASSERT_EQ_INT(profile_n_ops(), (sizeof(Backend) - offsetof(Backend, alloc)) / sizeof(void (*)(void)));
    for (size_t i = 0; i < ops->n; i++) {   // every op in exactly one of the nine families
        const char *fam = json_get(&ops->items[i], "family")->str;
        int found = 0;
        for (int f = 0; f < N_FAMILIES; f++) found += strcmp(fam, families[f]) == 0;
        ASSERT_MSG(found == 1, "op %s has family \"%s\"", json_get(&ops->items[i], "op")->str, fam);
    }
    const JsonValue *mm = json_op(root, "matmul_forward");
    ASSERT(json_num(mm, "calls") == 1 && json_num(mm, "flops") == 2 * 2 * 2 * 3);
    ASSERT(json_get(json_op(root, "scale"), "flops")->type == JSON_NULL);
    ASSERT(json_num(json_op(root, "adamw_update"), "calls") == 0);
    const JsonValue *fams = json_get(root, "families");
    ASSERT_EQ_INT(fams->n, N_FAMILIES);
    for (size_t f = 1; f < fams->n; f++)   // sorted by time
        ASSERT(json_num(&fams->items[f - 1], "seconds") >= json_num(&fams->items[f], "seconds"));
    json_free(j);
}

// ---- bad inputs ----

static void write_json_to(void *path) { profile_write_json(path); }
static void get_unknown(void *arg) { profile_get(arg); }
static void wrap_backend(void *be) { profile_wrap(be); }

TEST(profile_bad_inputs_die_with_a_message) {
    char msg[4096];
    // A backend that lacks an op cannot be profiled (checked before anything is wrapped).
    static Backend partial;
    partial = backend_cpu;
    partial.name = "partial";
    partial.moe_gather = NULL;
    ASSERT_EQ_INT(child_exit_status(wrap_backend, &partial, msg, sizeof msg), 1);
    ASSERT_CONTAINS(msg, "backend \"partial\" does not implement op moe_gather");

    profile_wrap(&backend_cpu);
    static Backend other;
    other = backend_cpu;
    other.name = "other";
    ASSERT_EQ_INT(child_exit_status(wrap_backend, &other, msg, sizeof msg), 1);
    ASSERT_CONTAINS(msg, "already profiles backend \"cpu\"");

    ASSERT_EQ_INT(child_exit_status(get_unknown, "matmul_forwards", msg, sizeof msg), 1);
    ASSERT_CONTAINS(msg, "no backend op is named \"matmul_forwards\"");

    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/missing-dir/profile.json", test_tmpdir());
    ASSERT_EQ_INT(child_exit_status(write_json_to, path, msg, sizeof msg), 1);
    ASSERT_CONTAINS(msg, path);
    ASSERT(access(path, F_OK) != 0);
}

// ---- build/train with log.profile: counts and FLOPs against the graph ----

// A small tiny model (dim 32, 2 x 32 tokens per micro-batch, 2 micro-batches per step): ~50 ms per step.
static const char *const small_sets[] = {"model.dim=32", "train.seq_len=32", "train.micro_batch=2",
                                         "train.batch_start=4", "train.batch_end=4", "train.max_steps=3",
                                         "checkpoint.at_end=false", "log.every=100"};
enum { N_SMALL = 8 };

typedef struct { const char *op; double calls, flops; } Expect;   // flops < 0: not checked
enum { MAX_EXPECT = 48 };

// Per optimizer step, from the config alone. The counts come from reading the graph (model/*.c): per micro-batch,
// each of the Lb = n_layers + mtp_depth blocks runs MLA and a dense or MoE FFN forward, and with train.recompute
// the norms, query / kv_b projections, RoPE on q, kv assembly and SwiGLUs again in backward; the main head and
// each MTP head run norm -> lm_head -> cross-entropy with the head's backward inline. fuse: DSV3_RESID_FUSE=1 (the
// residual adds in o_proj's and the FFN's down GEMMs), else 0 (copies of the stream and accumulating GEMMs).
static int expect_step(const Config *c, int fuse, Expect *e) {
    const ModelConfig *mc = &c->model;
    const TrainConfig *tc = &c->train;
    const double B = tc->micro_batch, T = tc->seq_len, N = B * T, d = mc->dim, H = mc->n_heads, V = mc->vocab_size;
    const double qlr = mc->q_lora_rank, kvlr = mc->kv_lora_rank, nope = mc->qk_nope_head_dim;
    const double rope = mc->qk_rope_head_dim, dv = mc->v_head_dim, qk = nope + rope;
    const double D = mc->mtp_depth, Lb = mc->n_layers + D, I = mc->inter_dim, E = mc->n_routed_experts;
    const double K = mc->n_activated_experts, mi = mc->moe_inter_dim, S = (double)mc->n_shared_experts * mi;
    const double n_dense = mc->n_dense_layers, n_moe = Lb - n_dense;   // MTP blocks are MoE (the main model has MoE)
    const double micro = (double)tc->batch_start / tc->micro_batch;   // no batch ramp, dp 1
    const double rec = tc->recompute ? 1 : 0, ql = qlr > 0 ? 1 : 0, sh = S > 0 ? 1 : 0;
    ASSERT(mc->n_dense_layers < mc->n_layers && tc->batch_start == tc->batch_end && c->parallel.dp == 1);
    ASSERT(N * V <= (double)(1 << 26));   // the head's logits fit one chunk (HEAD_CHUNK_ELEMS): one GEMM per head
    ASSERT(tc->balance_alpha > 0);

    // Dense GEMMs of one block, one head, one MTP projection (2 M N K each).
    double q_proj = ql ? 2 * N * H * qk * qlr : 2 * N * H * qk * d;
    double attn = (ql ? 2 * N * qlr * d : 0) + q_proj + 2 * N * (kvlr + rope) * d + 2 * N * H * (nope + dv) * kvlr
                + 2 * N * d * H * dv;
    double attn_n = 4 + ql;
    double ffn = 3 * 2 * N * I * d, moe = 2 * N * E * d + sh * 3 * 2 * N * S * d, moe_n = 1 + 3 * sh;
    double head = 2 * N * V * d, eh = 2 * N * d * 2 * d;
    double fwd = Lb * attn + n_dense * ffn + n_moe * moe + (1 + D) * head + D * eh;   // products with a backward
    double recomputed = rec * Lb * (q_proj + 2 * N * H * (nope + dv) * kvlr);         // q and kv_b again
    double gemm_n = Lb * attn_n + n_dense * 3 + n_moe * moe_n + (1 + D) + D;
    // The GEMMs that add the residual: o_proj in every block, the down projection of the dense FFN / shared expert.
    double resid_n = Lb + n_dense + n_moe * sh, resid = Lb * 2 * N * d * H * dv + n_dense * 2 * N * I * d
                   + n_moe * sh * 2 * N * S * d;
    double grouped = n_moe * 3 * 2 * (N * K) * mi * d;                                 // N*K rows, 3 projections
    double half = T * T / 2;
    double norms = Lb * (3 + ql) + (1 + D) + 2 * D;   // input, q_a, kv_a, post; heads; enorm + hnorm
    double n_params = 1 + Lb * (7 + 2 * ql) + n_dense * 3 + n_moe * (1 + 3 * sh + 3 * E) + 2 + 4 * D;

    int n = 0;
#define PER_MICRO(name, calls, flops) e[n++] = (Expect){name, micro * (calls), (flops) < 0 ? -1 : micro * (flops)}
#define PER_STEP(name, calls) e[n++] = (Expect){name, calls, -1}
    PER_MICRO("matmul_forward", gemm_n + rec * 2 * Lb - fuse * resid_n, fwd + recomputed - fuse * resid);
    PER_MICRO("matmul_forward_residual", fuse * resid_n, fuse * resid);
    PER_MICRO("matmul_backward", gemm_n, 2 * fwd);   // every backward computes both dinp and dw
    PER_MICRO("grouped_matmul_forward", 3 * n_moe, grouped);
    // backward: down (dinp and dw), gate and up (dw only: 1/3 of `grouped` each); their input gradients in one pair
    PER_MICRO("grouped_matmul_backward", 3 * n_moe, 4 * grouped / 3);
    PER_MICRO("grouped_matmul_dinp_pair", n_moe, 2 * grouped / 3);
    PER_MICRO("attention_forward", Lb, Lb * 2 * B * H * half * (qk + dv));
    PER_MICRO("attention_backward", Lb, Lb * 2 * B * H * half * (3 * qk + 2 * dv));
    PER_MICRO("rmsnorm_forward", norms + rec * (Lb * (3 + ql) + 2 * D), -1);
    PER_MICRO("rmsnorm_backward", norms, -1);
    PER_MICRO("swiglu_forward", (n_dense + n_moe * (1 + sh)) * (1 + rec), -1);
    PER_MICRO("swiglu_backward", n_dense + n_moe * (1 + sh), -1);
    PER_MICRO("axpy", 0, -1);   // none: the gate and up experts' input gradients are summed by the dinp pair
    PER_MICRO("copy_cols", Lb * 4 + D * (4 + 2 * rec), -1);
    PER_MICRO("rope_apply", Lb * (4 + rec), -1);
    PER_MICRO("mla_kv_assemble", Lb * (1 + rec), -1);
    PER_MICRO("mla_kv_assemble_backward", Lb, -1);
    // Unfused, x_mid and x_out start as copies of the stream; fused, only a MoE block without shared experts copies.
    PER_MICRO("copy", fuse ? n_moe * (1 - sh) : 2 * Lb, -1);
    PER_MICRO("embedding_forward", 1 + D, -1);
    PER_MICRO("embedding_backward", 1 + D, -1);
    PER_MICRO("cross_entropy_forward_backward", 1 + D, -1);
    PER_MICRO("moe_route", n_moe, -1);
    PER_MICRO("moe_route_backward", n_moe, -1);
    PER_MICRO("moe_balance_loss", 2 * n_moe, -1);   // the loss in forward, its gradient in backward
    PER_MICRO("moe_dispatch_plan", n_moe, -1);
    PER_MICRO("moe_gather", n_moe, -1);
    PER_MICRO("moe_gather_backward", n_moe, -1);
    PER_MICRO("moe_combine", n_moe, -1);
    PER_MICRO("moe_combine_backward", n_moe, -1);
    PER_MICRO("upload", 2, -1);            // the token ids and the selection biases
    // one read of the micro-batch's losses (every head's and every balance loss), and one of the step's expert load
    e[n++] = (Expect){"download", micro + (n_moe > 0), -1};
    PER_STEP("zero", 1 + (n_moe > 0));     // the gradient buffer and the expert load
    PER_STEP("sum_squares", 1);            // the global gradient norm
    // The optimizer launches once per run of consecutive tensors with the same weight decay (train/optim.c): the
    // table must hold the hand-counted tensors, and the runs are counted on it.
    ParamTable pt;
    StageSpec full = params_full_stage(mc);
    params_build(&pt, mc, &full);
    ASSERT_EQ_INT(pt.n, (int64_t)n_params);
    int runs = 1;
    for (int i = 1; i < pt.n; i++) runs += pt.params[i].no_decay != pt.params[i - 1].no_decay;
    params_free(&pt);
    PER_STEP("adamw_update", runs);
    PER_STEP("scale", 0);
    PER_STEP("alloc", 0);                  // nothing is allocated after the first step
    PER_STEP("free", 0);
    PER_STEP("synchronize", 0);
    PER_STEP("memory_in_use", 0);          // once, after the profiled loop
    PER_MICRO("convert", 0, -1);           // FP32 (the cpu backend): no BF16 copies
#undef PER_MICRO
#undef PER_STEP
    ASSERT(n <= MAX_EXPECT);
    return n;
}

// Runs build/train with the small sets plus `extra` (k=v overrides) in run dir `run`, DSV3_RESID_FUSE=fuse ("": the
// default). One thread: at this size threads buy nothing, and on a loaded 2-core machine OpenMP barriers can stall a
// run for seconds.
static int run_train(const char *run, const char *fuse, const char *const *extra, int n_extra, char **out) {
    char cmd[8192];
    size_t len = 0;
#define APPEND(...) do { int n_ = snprintf(cmd + len, sizeof cmd - len, __VA_ARGS__); \
        ASSERT(n_ >= 0 && (size_t)n_ < sizeof cmd - len); len += (size_t)n_; } while (0)
    APPEND("DSV3_RESID_FUSE=%s OMP_NUM_THREADS=1 %s %s --resume none --set 'data.train=%s' --set 'data.val=%s' "
           "--set log.run_dir=%s", fuse, test_bin("train"), test_path("configs/tiny.yaml"), test_path("data/corpus/train-*.h5"),
           test_path("data/corpus/val-*.h5"), run);
    for (int i = 0; i < N_SMALL; i++) APPEND(" --set %s", small_sets[i]);
    for (int i = 0; i < n_extra; i++) APPEND(" --set %s", extra[i]);
#undef APPEND
    return test_run(cmd, out);
}

static void check_profiled_run(int fuse, const char *const *extra, int n_extra) {
    char run[PATH_MAX], path[PATH_MAX + 16], *out;
    snprintf(run, sizeof run, "%s/run", test_tmpdir());
    ASSERT_EQ_INT(run_train(run, fuse ? "1" : "0", extra, n_extra, &out), 0);
    ASSERT_CONTAINS(out, "profile (cpu backend): 2 step(s) after warm-up");
    ASSERT_CONTAINS(out, "\nfamily ");
    ASSERT_CONTAINS(out, "profile: wrote ");

    char *sets[N_SMALL + 8];
    ASSERT(n_extra <= 8 && profile_n_ops() <= 64);
    for (int i = 0; i < N_SMALL; i++) sets[i] = (char *)small_sets[i];
    for (int i = 0; i < n_extra; i++) sets[N_SMALL + i] = (char *)extra[i];
    Config cfg;
    config_load(&cfg, test_path("configs/tiny.yaml"), N_SMALL + n_extra, sets);
    Expect e[MAX_EXPECT];
    int n = expect_step(&cfg, fuse, e);
    const double steps = (double)cfg.train.max_steps - 1;   // the first step is warm-up

    snprintf(path, sizeof path, "%s/profile.json", run);
    Json *j = json_load(path);
    const JsonValue *root = json_root(j);
    ASSERT(json_num(root, "steps") == steps);
    int checked[64] = {0};
    for (int i = 0; i < n; i++) {
        const JsonValue *op = json_op(root, e[i].op);
        ASSERT_MSG(json_num(op, "calls") == steps * e[i].calls, "%s: %g calls, expected %g", e[i].op,
                   json_num(op, "calls"), steps * e[i].calls);
        if (e[i].flops >= 0)
            ASSERT_MSG(json_num(op, "flops") == steps * e[i].flops, "%s: %.17g FLOPs, expected %.17g", e[i].op,
                       json_num(op, "flops"), steps * e[i].flops);
        for (int k = 0; k < profile_n_ops(); k++) checked[k] |= strcmp(profile_op_stat(k).op, e[i].op) == 0;
    }
    for (int k = 0; k < profile_n_ops(); k++)   // the expectation covers every op of the Backend
        ASSERT_MSG(checked[k], "op %s has no expected count", profile_op_stat(k).op);
    json_free(j);
    free(out);
}

TEST(profile_trainer_counts_and_flops_match_the_graph) {
    check_profiled_run(1, (const char *const[]){"log.profile=true", "train.eval_every=0", "checkpoint.every=0"}, 3);
}

// The other branches of the graph (plain query projection, no recompute, the residual adds unfused), with an
// evaluation and a checkpoint after every step: they are kept out of the profile, so the counts are those of the
// training steps alone.
TEST(profile_trainer_counts_without_q_lora_and_recompute_exclude_eval_and_checkpoints) {
    check_profiled_run(0, (const char *const[]){"log.profile=true", "model.q_lora_rank=0", "train.recompute=false",
                                                "train.eval_every=1", "train.eval_batches=1", "checkpoint.every=1"}, 6);
}

TEST(profile_off_by_default_writes_nothing) {
    char run[PATH_MAX], path[PATH_MAX + 16], *out;
    snprintf(run, sizeof run, "%s/run", test_tmpdir());
    ASSERT_EQ_INT(run_train(run, "", (const char *const[]){"train.eval_every=0", "checkpoint.every=0"}, 2, &out), 0);
    snprintf(path, sizeof path, "%s/profile.json", run);
    ASSERT(access(path, F_OK) != 0);
    ASSERT(!strstr(out, "profile ("));
    free(out);
}
