// The per-op profiler (kernels/profile.h): a Backend whose every op times the inner backend's op between two
// synchronizations and counts the work its arguments define.
#include "kernels/profile.h"
#include "train/check.h"
#include "train/fsio.h"
#include "train/json_util.h"

#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

// ---- the op table: every Backend op, its family and the kind of work it counts, in the Backend's member order ----

typedef enum {
    FAM_GEMM, FAM_GROUPED_GEMM, FAM_ATTENTION, FAM_NORM, FAM_ELEMENTWISE, FAM_EMBED_LOSS, FAM_MOE, FAM_OPTIM,
    FAM_MEMORY, FAM_COUNT
} Family;

static const char *const family_names[FAM_COUNT] = {
    [FAM_GEMM] = "gemm", [FAM_GROUPED_GEMM] = "grouped gemm", [FAM_ATTENTION] = "attention", [FAM_NORM] = "norm",
    [FAM_ELEMENTWISE] = "elementwise/copy", [FAM_EMBED_LOSS] = "embedding+loss", [FAM_MOE] = "moe routing",
    [FAM_OPTIM] = "optimizer", [FAM_MEMORY] = "memory/transfer",
};

enum { WORK_NONE = 0, WORK_FLOPS = 1, WORK_BYTES = 2 };

// copy and zero are device-side work (a kernel or memset on the device), so they count with the elementwise ops;
// memory/transfer is allocation, host <-> device traffic and the explicit synchronization.
#define PROFILE_OPS(X)                                                                                               \
    X(alloc, FAM_MEMORY, WORK_BYTES) X(free, FAM_MEMORY, WORK_NONE) X(upload, FAM_MEMORY, WORK_BYTES)               \
    X(download, FAM_MEMORY, WORK_BYTES) X(copy, FAM_ELEMENTWISE, WORK_BYTES) X(zero, FAM_ELEMENTWISE, WORK_BYTES)    \
    X(synchronize, FAM_MEMORY, WORK_NONE) X(memory_in_use, FAM_MEMORY, WORK_NONE)                                    \
    X(matmul_forward, FAM_GEMM, WORK_FLOPS) X(matmul_forward_residual, FAM_GEMM, WORK_FLOPS)                         \
    X(matmul_backward, FAM_GEMM, WORK_FLOPS)                                                                         \
    X(grouped_matmul_forward, FAM_GROUPED_GEMM, WORK_FLOPS) X(grouped_matmul_backward, FAM_GROUPED_GEMM, WORK_FLOPS) \
    X(grouped_matmul_dinp_pair, FAM_GROUPED_GEMM, WORK_FLOPS)                                                        \
    X(rmsnorm_forward, FAM_NORM, WORK_NONE) X(rmsnorm_backward, FAM_NORM, WORK_NONE)                                 \
    X(swiglu_forward, FAM_ELEMENTWISE, WORK_NONE) X(swiglu_backward, FAM_ELEMENTWISE, WORK_NONE)                     \
    X(axpy, FAM_ELEMENTWISE, WORK_NONE) X(copy_cols, FAM_ELEMENTWISE, WORK_NONE)                                     \
    X(convert, FAM_ELEMENTWISE, WORK_NONE)                                                                           \
    X(embedding_forward, FAM_EMBED_LOSS, WORK_NONE) X(embedding_backward, FAM_EMBED_LOSS, WORK_NONE)                 \
    X(cross_entropy_forward_backward, FAM_EMBED_LOSS, WORK_NONE)                                                     \
    X(rope_apply, FAM_ELEMENTWISE, WORK_NONE) X(mla_kv_assemble, FAM_ELEMENTWISE, WORK_NONE)                         \
    X(mla_kv_assemble_backward, FAM_ELEMENTWISE, WORK_NONE)                                                          \
    X(attention_forward, FAM_ATTENTION, WORK_FLOPS) X(attention_backward, FAM_ATTENTION, WORK_FLOPS)                 \
    X(moe_route, FAM_MOE, WORK_NONE) X(moe_route_backward, FAM_MOE, WORK_NONE) X(moe_balance_loss, FAM_MOE, WORK_NONE) \
    X(moe_dispatch_plan, FAM_MOE, WORK_NONE) X(moe_gather, FAM_MOE, WORK_NONE)                                       \
    X(moe_gather_backward, FAM_MOE, WORK_NONE) X(moe_combine, FAM_MOE, WORK_NONE)                                    \
    X(moe_combine_backward, FAM_MOE, WORK_NONE)                                                                      \
    X(sum_squares, FAM_OPTIM, WORK_NONE) X(scale, FAM_OPTIM, WORK_NONE) X(adamw_update, FAM_OPTIM, WORK_NONE)

#define X(op, fam, work) OP_##op,
enum { PROFILE_OPS(X) OP_COUNT };
#undef X

typedef struct {
    const char *name;
    Family family;
    int work;
    size_t offset;   // offsetof(Backend, op): naming a member Backend does not have is a compile error
} OpInfo;

#define X(op, fam, work) {#op, fam, work, offsetof(Backend, op)},
static const OpInfo op_info[OP_COUNT] = {PROFILE_OPS(X)};
#undef X

typedef void (*AnyFn)(void);
// Every op is a function pointer after the name, so a Backend op missing from PROFILE_OPS changes this count.
_Static_assert(sizeof(Backend) == offsetof(Backend, alloc) + OP_COUNT * sizeof(AnyFn),
               "kernels/ops.h's Backend has ops that PROFILE_OPS in kernels/profile.c does not list: add each new op "
               "there with its family, and a profiled_<op> wrapper");

// ---- state (process-wide: one wrapper per process) ----

typedef struct { int64_t calls; double seconds, flops, bytes; } OpCounter;

static const Backend *g_inner;
static Backend g_wrapped;
static OpCounter g_count[OP_COUNT];
static int g_active = 1;
static int64_t g_steps;
static double g_wall;          // seconds of active profiling before g_wall_since
static double g_wall_since;    // monotonic time the current active span began

// The GEMM ops again, split by shape: a dense or grouped GEMM family's time hides which product is slow (a small-N
// projection or a short-K expert GEMM runs far below the large ones), so each (op, M, N, K, products) gets its own
// row. M: the rows of inp (grouped: the rows the segments cover); N, K: w's (N, K); products: 1 forward, else the
// bit mask 1 dinp | 2 dw of the backward. Shapes past the table's capacity fall into one last "other" row.
typedef struct { int op; int64_t m, n, k, e; int products; OpCounter c; } ShapeRow;
enum { SHAPE_ROWS = 96 };
static ShapeRow g_shape[SHAPE_ROWS];
static int g_n_shape;
static int g_shape_overflow; // a call found the table full: it counted into the last row, marked "other"

static double mono_s(void) {
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) die("profile: clock_gettime(CLOCK_MONOTONIC) failed");
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double prof_begin(void) {
    g_inner->synchronize();
    return mono_s();
}

// Returns the op's seconds.
static double prof_end(int op, double t0, double flops, double bytes) {
    g_inner->synchronize();
    double t1 = mono_s();
    OpCounter *c = &g_count[op];
    c->calls++;
    c->seconds += t1 - t0;
    c->flops += flops;
    c->bytes += bytes;
    return t1 - t0;
}

static const char *shape_products(const ShapeRow *r) {
    if (r->op == OP_grouped_matmul_dinp_pair) return "dinp pair";
    if (r->op == OP_matmul_forward || r->op == OP_matmul_forward_residual || r->op == OP_grouped_matmul_forward)
        return "fwd";
    return r->products == 1 ? "dinp" : r->products == 2 ? "dw" : r->products == 3 ? "dinp+dw" : "none";
}

static void shape_add(int op, int64_t m, int64_t n, int64_t k, int64_t e, int products, double seconds,
                      double flops) {
    int i = 0;
    while (i < g_n_shape && !(g_shape[i].op == op && g_shape[i].m == m && g_shape[i].n == n && g_shape[i].k == k &&
                              g_shape[i].e == e && g_shape[i].products == products))
        i++;
    if (i == g_n_shape) {
        if (g_n_shape == SHAPE_ROWS) {
            i = SHAPE_ROWS - 1, g_shape_overflow = 1;
        } else {
            g_shape[g_n_shape++] = (ShapeRow){.op = op, .m = m, .n = n, .k = k, .e = e, .products = products};
        }
    }
    g_shape[i].c.calls++;
    g_shape[i].c.seconds += seconds;
    g_shape[i].c.flops += flops;
}

// Runs `call` timed (or straight through when inactive). The work expressions are evaluated after the call, once
// the inner op has checked the shapes they read.
#define PROF_CALL(op, flops, bytes, call)                                                                            \
    do {                                                                                                             \
        if (!g_active) { call; break; }                                                                              \
        double t0_ = prof_begin();                                                                                   \
        call;                                                                                                        \
        prof_end(OP_##op, t0_, (flops), (bytes));                                                                    \
    } while (0)

// ---- the work of an op, from its arguments ----

// One product of a (rows of inp) x (w (N, K))^T GEMM: 2 M N K, M = every row of inp (any leading shape).
static double gemm_flops(Tensor inp, Tensor w) {
    double K = (double)w.shape[1], N = (double)w.shape[0];
    double M = (double)tensor_numel(&inp) / K;
    return 2.0 * M * N * K;
}

// One product over the segments of a grouped GEMM: 2 R N K with R the rows the segments cover, w (E, N, K). The
// table's first and last entries come from offsets_host, or else from the backend (a download: the profiler
// synchronizes around every op anyway; it runs before the op's timing starts). A table too short to read gives 0
// (the op itself then dies naming it).
static double grouped_flops(Tensor w, Tensor offsets, const int32_t *offsets_host) {
    if (!g_active || offsets.ndim != 1 || offsets.shape[0] < 1 || w.ndim != 3 || !offsets.data) return 0;
    int64_t E = offsets.shape[0] - 1;
    int32_t first, last;
    if (offsets_host) {
        first = offsets_host[0], last = offsets_host[E];
    } else {
        g_inner->download(&first, offsets.data, sizeof first);
        g_inner->download(&last, (const int32_t *)offsets.data + E, sizeof last);
    }
    return 2.0 * (double)(last - first) * (double)w.shape[1] * (double)w.shape[2];
}

// The rows a grouped product covered, from its FLOPs (2 R N K) and w (E, N, K).
static int64_t grouped_rows(Tensor w, double flops) {
    double nk = w.ndim == 3 ? (double)w.shape[1] * (double)w.shape[2] : 0;
    return nk > 0 ? (int64_t)llround(flops / (2.0 * nk)) : 0;
}

// Causal attention over q (B, T, H, D) and v (B, T, H, DV): the visible half T^2 / 2 of the score matrix.
static double attention_flops(Tensor q, Tensor v, int backward) {
    double B = (double)q.shape[0], T = (double)q.shape[1], H = (double)q.shape[2];
    double D = (double)q.shape[3], DV = (double)v.shape[3];
    double half = T * T / 2.0;
    return backward ? 2.0 * B * H * half * (3.0 * D + 2.0 * DV) : 2.0 * B * H * half * (D + DV);
}

// ---- the wrapped ops ----

static void *profiled_alloc(size_t bytes) {
    void *p = NULL;
    PROF_CALL(alloc, 0, (double)bytes, p = g_inner->alloc(bytes));
    return p;
}
static void profiled_free(void *p) { PROF_CALL(free, 0, 0, g_inner->free(p)); }
static void profiled_upload(void *dst, const void *src, size_t bytes) {
    PROF_CALL(upload, 0, (double)bytes, g_inner->upload(dst, src, bytes));
}
static void profiled_download(void *dst, const void *src, size_t bytes) {
    PROF_CALL(download, 0, (double)bytes, g_inner->download(dst, src, bytes));
}
static void profiled_copy(void *dst, const void *src, size_t bytes) {
    PROF_CALL(copy, 0, (double)bytes, g_inner->copy(dst, src, bytes));
}
static void profiled_zero(void *p, size_t bytes) { PROF_CALL(zero, 0, (double)bytes, g_inner->zero(p, bytes)); }
static void profiled_synchronize(void) { PROF_CALL(synchronize, 0, 0, g_inner->synchronize()); }
static void profiled_memory_in_use(size_t *used, size_t *total) {
    PROF_CALL(memory_in_use, 0, 0, g_inner->memory_in_use(used, total));
}

// The GEMM wrappers time like PROF_CALL and also add the call to its shape row.
#define PROF_GEMM(op, m, n, k, e, products, flops, call)                                                            \
    do {                                                                                                             \
        if (!g_active) { call; break; }                                                                              \
        double t0_ = prof_begin();                                                                                   \
        call;                                                                                                        \
        double dt_ = prof_end(OP_##op, t0_, (flops), 0);                                                             \
        shape_add(OP_##op, (m), (n), (k), (e), (products), dt_, (flops));                                            \
    } while (0)

static int64_t gemm_rows(Tensor inp, Tensor w) { return w.shape[1] ? tensor_numel(&inp) / w.shape[1] : 0; }

static void profiled_matmul_forward(Tensor out, Tensor inp, Tensor w, int acc) {
    PROF_GEMM(matmul_forward, gemm_rows(inp, w), w.shape[0], w.shape[1], 0, 1, gemm_flops(inp, w),
              g_inner->matmul_forward(out, inp, w, acc));
}
static void profiled_matmul_forward_residual(Tensor out, Tensor res, Tensor inp, Tensor w) {
    PROF_GEMM(matmul_forward_residual, gemm_rows(inp, w), w.shape[0], w.shape[1], 0, 1, gemm_flops(inp, w),
              g_inner->matmul_forward_residual(out, res, inp, w));
}
static void profiled_matmul_backward(Tensor dinp, Tensor dw, Tensor dout, Tensor inp, Tensor w, int acc) {
    PROF_GEMM(matmul_backward, gemm_rows(inp, w), w.shape[0], w.shape[1], 0,
              (dinp.data != NULL) | (dw.data != NULL) << 1,
              ((dinp.data != NULL) + (dw.data != NULL)) * gemm_flops(inp, w),
              g_inner->matmul_backward(dinp, dw, dout, inp, w, acc));
}
static void profiled_grouped_matmul_forward(Tensor out, Tensor inp, Tensor w, Tensor off, const int32_t *off_h) {
    const double flops = grouped_flops(w, off, off_h);
    PROF_GEMM(grouped_matmul_forward, grouped_rows(w, flops), w.shape[1], w.shape[2], w.shape[0], 1, flops,
              g_inner->grouped_matmul_forward(out, inp, w, off, off_h));
}
static void profiled_grouped_matmul_backward(Tensor dinp, Tensor dw, Tensor dout, Tensor inp, Tensor w, Tensor off,
                                             const int32_t *off_h, int acc) {
    const double one = grouped_flops(w, off, off_h);
    PROF_GEMM(grouped_matmul_backward, grouped_rows(w, one), w.shape[1], w.shape[2], w.shape[0],
              (dinp.data != NULL) | (dw.data != NULL) << 1, ((dinp.data != NULL) + (dw.data != NULL)) * one,
              g_inner->grouped_matmul_backward(dinp, dw, dout, inp, w, off, off_h, acc));
}

// Two products (one per weight), each 2 R N K; the shape row's products: "dinp pair".
static void profiled_grouped_matmul_dinp_pair(Tensor dinp, Tensor da, Tensor wa, Tensor db, Tensor wb, Tensor off,
                                              const int32_t *off_h) {
    const double one = grouped_flops(wa, off, off_h);
    PROF_GEMM(grouped_matmul_dinp_pair, grouped_rows(wa, one), wa.shape[1], wa.shape[2], wa.shape[0], 1, 2 * one,
              g_inner->grouped_matmul_dinp_pair(dinp, da, wa, db, wb, off, off_h));
}

static void profiled_rmsnorm_forward(Tensor out, Tensor rstd, Tensor inp, Tensor w, float eps) {
    PROF_CALL(rmsnorm_forward, 0, 0, g_inner->rmsnorm_forward(out, rstd, inp, w, eps));
}
static void profiled_rmsnorm_backward(Tensor dinp, Tensor dw, Tensor dout, Tensor inp, Tensor w, Tensor rstd,
                                      int acc, Tensor dinp_lowp) {
    PROF_CALL(rmsnorm_backward, 0, 0, g_inner->rmsnorm_backward(dinp, dw, dout, inp, w, rstd, acc, dinp_lowp));
}
static void profiled_swiglu_forward(Tensor out, Tensor gate, Tensor up) {
    PROF_CALL(swiglu_forward, 0, 0, g_inner->swiglu_forward(out, gate, up));
}
static void profiled_swiglu_backward(Tensor dgate, Tensor dup, Tensor dout, Tensor gate, Tensor up) {
    PROF_CALL(swiglu_backward, 0, 0, g_inner->swiglu_backward(dgate, dup, dout, gate, up));
}
static void profiled_axpy(Tensor y, Tensor x, float alpha) { PROF_CALL(axpy, 0, 0, g_inner->axpy(y, x, alpha)); }
static void profiled_copy_cols(Tensor dst, int64_t dst_col, Tensor src, int64_t src_col, int64_t ncols, int acc) {
    PROF_CALL(copy_cols, 0, 0, g_inner->copy_cols(dst, dst_col, src, src_col, ncols, acc));
}

static void profiled_convert(Tensor dst, Tensor src) { PROF_CALL(convert, 0, 0, g_inner->convert(dst, src)); }

static void profiled_embedding_forward(Tensor out, Tensor ids, Tensor table) {
    PROF_CALL(embedding_forward, 0, 0, g_inner->embedding_forward(out, ids, table));
}
static void profiled_embedding_backward(Tensor dtable, Tensor dout, Tensor ids) {
    PROF_CALL(embedding_backward, 0, 0, g_inner->embedding_backward(dtable, dout, ids));
}
static void profiled_cross_entropy_forward_backward(Tensor losses, Tensor dlogits, Tensor logits, Tensor targets,
                                                    float grad_scale) {
    PROF_CALL(cross_entropy_forward_backward, 0, 0,
              g_inner->cross_entropy_forward_backward(losses, dlogits, logits, targets, grad_scale));
}

static void profiled_rope_apply(Tensor x, int64_t col, int64_t rope_dim, Tensor cos, Tensor sin, int T, int inverse) {
    PROF_CALL(rope_apply, 0, 0, g_inner->rope_apply(x, col, rope_dim, cos, sin, T, inverse));
}
static void profiled_mla_kv_assemble(Tensor k, Tensor v, Tensor kv, Tensor k_rope, int nope, int rope, int dv) {
    PROF_CALL(mla_kv_assemble, 0, 0, g_inner->mla_kv_assemble(k, v, kv, k_rope, nope, rope, dv));
}
static void profiled_mla_kv_assemble_backward(Tensor dkv, Tensor dk_rope, Tensor dk, Tensor dv, int nope, int rope,
                                              int dv_dim) {
    PROF_CALL(mla_kv_assemble_backward, 0, 0, g_inner->mla_kv_assemble_backward(dkv, dk_rope, dk, dv, nope, rope,
                                                                                 dv_dim));
}
static void profiled_attention_forward(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v, float scale) {
    PROF_CALL(attention_forward, attention_flops(q, v, 0), 0, g_inner->attention_forward(out, lse, q, k, v, scale));
}
static void profiled_attention_backward(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v,
                                        Tensor out, Tensor lse, float scale) {
    PROF_CALL(attention_backward, attention_flops(q, v, 1), 0,
              g_inner->attention_backward(dq, dk, dv, dout, q, k, v, out, lse, scale));
}

static void profiled_moe_route(Tensor topk_idx, Tensor gates, Tensor scores, Tensor logits, Tensor bias,
                               RouterParams p) {
    PROF_CALL(moe_route, 0, 0, g_inner->moe_route(topk_idx, gates, scores, logits, bias, p));
}
static void profiled_moe_route_backward(Tensor dlogits, Tensor dgates, Tensor dscores_extra, Tensor scores,
                                        Tensor topk_idx, RouterParams p) {
    PROF_CALL(moe_route_backward, 0, 0,
              g_inner->moe_route_backward(dlogits, dgates, dscores_extra, scores, topk_idx, p));
}
static void profiled_moe_balance_loss(Tensor loss, Tensor dscores, Tensor scores, Tensor topk_idx, int B, int T,
                                      int top_k, float alpha, float grad_scale) {
    PROF_CALL(moe_balance_loss, 0, 0,
              g_inner->moe_balance_loss(loss, dscores, scores, topk_idx, B, T, top_k, alpha, grad_scale));
}
static void profiled_moe_dispatch_plan(Tensor order, Tensor offsets, int32_t *offsets_host, Tensor counts,
                                       Tensor topk_idx, int n_experts) {
    PROF_CALL(moe_dispatch_plan, 0, 0,
              g_inner->moe_dispatch_plan(order, offsets, offsets_host, counts, topk_idx, n_experts));
}
static void profiled_moe_gather(Tensor x_sorted, Tensor x, Tensor order, int top_k) {
    PROF_CALL(moe_gather, 0, 0, g_inner->moe_gather(x_sorted, x, order, top_k));
}
static void profiled_moe_gather_backward(Tensor dx, Tensor dx_sorted, Tensor order, int top_k, int acc) {
    PROF_CALL(moe_gather_backward, 0, 0, g_inner->moe_gather_backward(dx, dx_sorted, order, top_k, acc));
}
static void profiled_moe_combine(Tensor out, Tensor y_sorted, Tensor gates, Tensor order, int acc) {
    PROF_CALL(moe_combine, 0, 0, g_inner->moe_combine(out, y_sorted, gates, order, acc));
}
static void profiled_moe_combine_backward(Tensor dy_sorted, Tensor dgates, Tensor dout, Tensor y_sorted, Tensor gates,
                                          Tensor order) {
    PROF_CALL(moe_combine_backward, 0, 0,
              g_inner->moe_combine_backward(dy_sorted, dgates, dout, y_sorted, gates, order));
}

static double profiled_sum_squares(Tensor x) {
    double r = 0;
    PROF_CALL(sum_squares, 0, 0, r = g_inner->sum_squares(x));
    return r;
}
static void profiled_scale(Tensor x, float alpha) { PROF_CALL(scale, 0, 0, g_inner->scale(x, alpha)); }
static void profiled_adamw_update(Tensor params, Tensor grads, Tensor m, Tensor v, float lr, float beta1, float beta2,
                                  float eps, float wd, float grad_scale, int64_t t) {
    PROF_CALL(adamw_update, 0, 0,
              g_inner->adamw_update(params, grads, m, v, lr, beta1, beta2, eps, wd, grad_scale, t));
}

#define X(op, fam, work) .op = profiled_##op,
static const Backend profiled_ops = {.name = NULL, PROFILE_OPS(X)};
#undef X

// ---- setup ----

static AnyFn slot_of(const Backend *be, size_t offset) {
    AnyFn f;
    memcpy(&f, (const char *)be + offset, sizeof f);
    return f;
}

// The startup half of the table check (the compile-time half is the size assertion): every op slot is listed
// exactly once, the wrapper fills each, and the inner backend implements each.
static void check_table(const Backend *inner) {
    int seen[OP_COUNT] = {0};
    for (int i = 0; i < OP_COUNT; i++) {
        size_t off = op_info[i].offset, first = offsetof(Backend, alloc);
        size_t slot = (off - first) / sizeof(AnyFn);
        CHECK(off >= first && (off - first) % sizeof(AnyFn) == 0 && slot < OP_COUNT && !seen[slot],
              "profile: op table entry %s is not a distinct Backend op slot", op_info[i].name);
        seen[slot] = 1;
        CHECK(op_info[i].family >= 0 && op_info[i].family < FAM_COUNT, "profile: op %s has no family",
              op_info[i].name);
        CHECK(slot_of(&profiled_ops, off) != NULL, "profile: op %s has no wrapper", op_info[i].name);
        CHECK(slot_of(inner, off) != NULL, "profile: backend \"%s\" does not implement op %s, so it cannot be profiled",
              inner->name ? inner->name : "?", op_info[i].name);
    }
}

const Backend *profile_wrap(const Backend *inner) {
    CHECK(inner, "profile_wrap: no backend given");
    CHECK(inner != &g_wrapped, "profile_wrap: the backend is already the profiling wrapper");
    if (g_inner) {
        CHECK(g_inner == inner, "profile_wrap: this process already profiles backend \"%s\"; one wrapper per process "
              "(asked to wrap \"%s\")", g_inner->name, inner->name ? inner->name : "?");
        return &g_wrapped;
    }
    check_table(inner);
    g_inner = inner;
    g_wrapped = profiled_ops;
    g_wrapped.name = inner->name;
    g_wrapped.bf16 = inner->bf16;
    profile_reset();
    return &g_wrapped;
}

void profile_reset(void) {
    memset(g_count, 0, sizeof g_count);
    memset(g_shape, 0, sizeof g_shape);
    g_n_shape = 0, g_shape_overflow = 0;
    g_steps = 0;
    g_wall = 0;
    g_wall_since = mono_s();
}

void profile_set_active(int active) {
    active = active != 0;
    if (active == g_active) return;
    if (active) g_wall_since = mono_s();
    else g_wall += mono_s() - g_wall_since;
    g_active = active;
}

void profile_step_done(void) { g_steps++; }

static double wall_seconds(void) { return g_wall + (g_active ? mono_s() - g_wall_since : 0.0); }

// ---- reading ----

int profile_n_ops(void) { return OP_COUNT; }

ProfileStat profile_op_stat(int i) {
    CHECK(i >= 0 && i < OP_COUNT, "profile_op_stat: op index %d outside [0, %d)", i, OP_COUNT);
    const OpInfo *o = &op_info[i];
    const OpCounter *c = &g_count[i];
    return (ProfileStat){.op = o->name, .family = family_names[o->family], .calls = c->calls, .seconds = c->seconds,
                         .flops = c->flops, .bytes = c->bytes, .has_flops = o->work == WORK_FLOPS,
                         .has_bytes = o->work == WORK_BYTES};
}

ProfileStat profile_get(const char *name) {
    for (int i = 0; i < OP_COUNT; i++)
        if (name && strcmp(op_info[i].name, name) == 0) return profile_op_stat(i);
    die("profile_get: no backend op is named \"%s\"", name ? name : "(null)");
}

int profile_n_gemm_shapes(void) { return g_n_shape; }

ProfileGemmShape profile_gemm_shape(int i) {
    CHECK(i >= 0 && i < g_n_shape, "profile_gemm_shape: shape index %d outside [0, %d)", i, g_n_shape);
    const ShapeRow *r = &g_shape[i];
    return (ProfileGemmShape){.op = op_info[r->op].name, .products = shape_products(r), .m = r->m, .n = r->n,
                              .k = r->k, .experts = r->e, .calls = r->c.calls, .seconds = r->c.seconds,
                              .flops = r->c.flops};
}

// The family rows: sums of their ops; has_flops when any op of the family counts FLOPs.
static void family_stats(ProfileStat *fam) {
    for (int f = 0; f < FAM_COUNT; f++) fam[f] = (ProfileStat){.family = family_names[f]};
    for (int i = 0; i < OP_COUNT; i++) {
        ProfileStat s = profile_op_stat(i);
        ProfileStat *f = &fam[op_info[i].family];
        f->calls += s.calls;
        f->seconds += s.seconds;
        f->flops += s.flops;
        f->bytes += s.bytes;
        f->has_flops |= s.has_flops;
        f->has_bytes |= s.has_bytes;
    }
}

static int by_time_desc(const void *a, const void *b) {
    const ProfileStat *x = a, *y = b;
    if (x->seconds != y->seconds) return x->seconds < y->seconds ? 1 : -1;
    return strcmp(x->op ? x->op : x->family, y->op ? y->op : y->family);
}

static double total_op_seconds(void) {
    double t = 0;
    for (int i = 0; i < OP_COUNT; i++) t += g_count[i].seconds;
    return t;
}

// "  12.345" or blanks, so the columns stay aligned when the work is not known.
static void rate_cell(char *buf, size_t n, int known, double work, double seconds, double unit) {
    if (known && seconds > 0) snprintf(buf, n, "%9.3f", work / seconds / unit);
    else snprintf(buf, n, "%9s", "-");
}

// ---- output ----


static int shape_by_time_desc(const void *a, const void *b) {
    const ShapeRow *x = a, *y = b;
    if (x->c.seconds != y->c.seconds) return x->c.seconds < y->c.seconds ? 1 : -1;
    return 0;
}

// The GEMM rows by shape, slowest total first: products of M x N x K (grouped: over E experts).
static void shape_report(FILE *out) {
    if (g_n_shape == 0) return;
    ShapeRow rows[SHAPE_ROWS];
    memcpy(rows, g_shape, (size_t)g_n_shape * sizeof rows[0]);
    qsort(rows, (size_t)g_n_shape, sizeof rows[0], shape_by_time_desc);
    fprintf(out, "%-24s %-8s %8s %6s %6s %4s %8s %10s %10s %9s\n", "gemm by shape", "products", "M", "N", "K", "E",
            "calls", "ms/step", "ms/call", "TFLOP/s");
    for (int i = 0; i < g_n_shape; i++) {
        const ShapeRow *r = &rows[i];
        char tf[32];
        rate_cell(tf, sizeof tf, 1, r->c.flops, r->c.seconds, 1e12);
        fprintf(out, "%-24s %-8s %8lld %6lld %6lld %4lld %8lld %10.3f %10.4f %s\n", op_info[r->op].name,
                shape_products(r), (long long)r->m, (long long)r->n, (long long)r->k, (long long)r->e,
                (long long)r->c.calls, g_steps > 0 ? r->c.seconds * 1e3 / (double)g_steps : 0.0,
                r->c.seconds * 1e3 / (double)r->c.calls, tf);
    }
    if (g_shape_overflow)
        fprintf(out, "(more than %d GEMM shapes: the last row of the unsorted table also holds every later shape)\n",
                SHAPE_ROWS);
}

void profile_report(FILE *out) {
    CHECK(g_inner, "profile_report: no backend is being profiled (profile_wrap first)");
    double ops_s = total_op_seconds(), wall = wall_seconds();
    fprintf(out, "profile (%s backend): %lld step(s) after warm-up; %.1f ms in backend ops of %.1f ms profiled wall "
            "time (%.1f%%). Every op is synchronized before and after, so nothing overlaps: these steps are slower "
            "than unprofiled ones.\n", g_inner->name, (long long)g_steps, ops_s * 1e3, wall * 1e3,
            wall > 0 ? 100.0 * ops_s / wall : 0.0);

    ProfileStat rows[OP_COUNT];
    int n = 0;
    for (int i = 0; i < OP_COUNT; i++)
        if (g_count[i].calls > 0) rows[n++] = profile_op_stat(i);
    qsort(rows, (size_t)n, sizeof rows[0], by_time_desc);
    fprintf(out, "%-31s %-17s %9s %11s %10s %7s %9s %9s\n", "op", "family", "calls", "total ms", "ms/call", "% time",
            "TFLOP/s", "GB/s");
    for (int i = 0; i < n; i++) {
        const ProfileStat *s = &rows[i];
        char tf[32], gb[32];
        rate_cell(tf, sizeof tf, s->has_flops, s->flops, s->seconds, 1e12);
        rate_cell(gb, sizeof gb, s->has_bytes, s->bytes, s->seconds, 1e9);
        fprintf(out, "%-31s %-17s %9lld %11.3f %10.4f %6.1f%% %s %s\n", s->op, s->family, (long long)s->calls,
                s->seconds * 1e3, s->seconds * 1e3 / (double)s->calls, ops_s > 0 ? 100.0 * s->seconds / ops_s : 0.0,
                tf, gb);
    }

    ProfileStat fam[FAM_COUNT];
    family_stats(fam);
    qsort(fam, FAM_COUNT, sizeof fam[0], by_time_desc);
    fprintf(out, "%-17s %9s %11s %10s %7s %9s\n", "family", "calls", "total ms", "ms/step", "% time", "TFLOP/s");
    for (int f = 0; f < FAM_COUNT; f++) {
        const ProfileStat *s = &fam[f];
        if (s->calls == 0) continue;
        char tf[32], ms_step[32];
        rate_cell(tf, sizeof tf, s->has_flops, s->flops, s->seconds, 1e12);
        if (g_steps > 0) snprintf(ms_step, sizeof ms_step, "%10.3f", s->seconds * 1e3 / (double)g_steps);
        else snprintf(ms_step, sizeof ms_step, "%10s", "-");
        fprintf(out, "%-17s %9lld %11.3f %s %6.1f%% %s\n", s->family, (long long)s->calls, s->seconds * 1e3, ms_step,
                ops_s > 0 ? 100.0 * s->seconds / ops_s : 0.0, tf);
    }
    shape_report(out);
    fflush(out);
}

// Counts of FLOPs and bytes are integers (exact in a double below 2^53): written as such, not as 3.84e+03.
static void json_number(JsonBuf *b, double v) {
    if (v == floor(v) && fabs(v) < 9007199254740992.0) json_buf_printf(b, "%.0f", v);
    else json_buf_double(b, v);
}

// flops / bytes: a number where the op defines that work, else null.
static void json_work(JsonBuf *b, const char *key, int known, double v) {
    json_buf_printf(b, ",\"%s\":", key);
    if (known) json_number(b, v);
    else json_buf_printf(b, "null");
}

static void json_row(JsonBuf *b, const ProfileStat *s, double ops_s) {
    if (s->op) {
        json_buf_printf(b, "{\"op\":");
        json_buf_string(b, s->op);
        json_buf_printf(b, ",\"family\":");
    } else {
        json_buf_printf(b, "{\"family\":");
    }
    json_buf_string(b, s->family);
    json_buf_printf(b, ",\"calls\":%lld,\"seconds\":", (long long)s->calls);
    json_buf_double(b, s->seconds);
    json_buf_printf(b, ",\"share\":");
    json_buf_double(b, ops_s > 0 ? s->seconds / ops_s : 0.0);
    json_work(b, "flops", s->has_flops, s->flops);
    json_buf_printf(b, ",\"tflops_per_s\":");
    if (s->has_flops && s->seconds > 0) json_buf_double(b, s->flops / s->seconds * 1e-12);
    else json_buf_printf(b, "null");
    if (s->op) json_work(b, "bytes", s->has_bytes, s->bytes);
    json_buf_printf(b, "}");
}

void profile_write_json(const char *path) {
    CHECK(g_inner, "profile_write_json: no backend is being profiled (profile_wrap first)");
    CHECK(path && path[0], "profile_write_json: no path given");
    double ops_s = total_op_seconds();
    JsonBuf b = {0};
    json_buf_printf(&b, "{\"backend\":");
    json_buf_string(&b, g_inner->name);
    json_buf_printf(&b, ",\"steps\":%lld,\"wall_seconds\":", (long long)g_steps);
    json_buf_double(&b, wall_seconds());
    json_buf_printf(&b, ",\"op_seconds\":");
    json_buf_double(&b, ops_s);
    json_buf_printf(&b, ",\"synchronized_per_op\":true,\n\"ops\":[\n");
    for (int i = 0; i < OP_COUNT; i++) {
        ProfileStat s = profile_op_stat(i);
        json_row(&b, &s, ops_s);
        json_buf_printf(&b, i + 1 < OP_COUNT ? ",\n" : "\n");
    }
    ProfileStat fam[FAM_COUNT];
    family_stats(fam);
    qsort(fam, FAM_COUNT, sizeof fam[0], by_time_desc);
    json_buf_printf(&b, "],\n\"families\":[\n");
    for (int f = 0; f < FAM_COUNT; f++) {
        json_row(&b, &fam[f], ops_s);
        json_buf_printf(&b, f + 1 < FAM_COUNT ? ",\n" : "\n");
    }
    json_buf_printf(&b, "],\n\"gemm_shapes\":[\n");
    for (int i = 0; i < g_n_shape; i++) {
        const ShapeRow *r = &g_shape[i];
        json_buf_printf(&b, "{\"op\":");
        json_buf_string(&b, op_info[r->op].name);
        json_buf_printf(&b, ",\"products\":");
        json_buf_string(&b, shape_products(r));
        json_buf_printf(&b, ",\"m\":%lld,\"n\":%lld,\"k\":%lld,\"experts\":%lld,\"calls\":%lld,\"seconds\":",
                        (long long)r->m, (long long)r->n, (long long)r->k, (long long)r->e, (long long)r->c.calls);
        json_buf_double(&b, r->c.seconds);
        json_buf_printf(&b, ",\"flops\":");
        json_number(&b, r->c.flops);
        json_buf_printf(&b, "}%s\n", i + 1 < g_n_shape ? "," : "");
    }
    json_buf_printf(&b, "],\"gemm_shapes_overflow\":%s}\n", g_shape_overflow ? "true" : "false");
    fsio_write_atomic(path, b.s, b.len);   // <path>.tmp, fsync, rename; dies naming the path on any failure
    json_buf_free(&b);
}
