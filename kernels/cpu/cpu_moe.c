// MoE token movement on the cpu: the dispatch plan (a stable counting sort of (token, slot) pairs by expert),
// gathering token rows into expert order, and combining expert outputs back into token order with the gates.
// Pair p = t * K + k is token t's k-th choice; order[j] = the pair at sorted position j.
#include "kernels/cpu/cpu_ops.h"
#include "train/check.h"

#include <string.h>

void cpu_moe_dispatch_plan(Tensor order, Tensor offsets, int32_t *offsets_host, Tensor counts, Tensor topk_idx,
                           int n_experts) {
    const char *op = "moe_dispatch_plan";
    cpu_need(op, "topk_idx", &topk_idx, DT_I32, 2);
    cpu_need(op, "order", &order, DT_I32, 1);
    cpu_need(op, "offsets", &offsets, DT_I32, 1);
    if (n_experts <= 0) die("%s: n_experts %d must be positive", op, n_experts);
    const int64_t NK = tensor_numel(&topk_idx);
    if (NK > INT32_MAX) die("%s: %lld routed pairs do not fit 32-bit offsets", op, (long long)NK);
    cpu_agree(op, "order", &order, order.shape[0], "topk_idx", &topk_idx, NK, "N * K");
    cpu_expect(op, "offsets", &offsets, offsets.shape[0], (int64_t)n_experts + 1, "length (n_experts + 1)");
    if (counts.data) {
        cpu_need(op, "counts", &counts, DT_I32, 1);
        cpu_expect(op, "counts", &counts, counts.shape[0], n_experts, "length (n_experts)");
    }
    const int32_t *idx = topk_idx.data;
    int32_t *ord = order.data, *off = offsets.data;
    for (int64_t p = 0; p < NK; p++)
        if (idx[p] < 0 || idx[p] >= n_experts)
            die("%s: topk_idx[%lld] = %d is not an expert in [0, %d)", op, (long long)p, idx[p], n_experts);
    // Counting sort: histogram, exclusive prefix sum, then place pairs in increasing p (stable). off (the "device"
    // table, host memory here) is the running insertion cursor; start holds the segment starts meanwhile.
    int32_t *start = xcalloc((size_t)n_experts + 1, sizeof(int32_t));
    for (int64_t p = 0; p < NK; p++) start[idx[p] + 1]++;
    if (counts.data)
        for (int e = 0; e < n_experts; e++) ((int32_t *)counts.data)[e] += start[e + 1];
    for (int e = 0; e < n_experts; e++) start[e + 1] += start[e];
    memcpy(off, start, (size_t)n_experts * sizeof(int32_t));
    for (int64_t p = 0; p < NK; p++) ord[off[idx[p]]++] = (int32_t)p;
    memcpy(off, start, ((size_t)n_experts + 1) * sizeof(int32_t));
    if (offsets_host) memcpy(offsets_host, start, ((size_t)n_experts + 1) * sizeof(int32_t));
    free(start);
}

// Validates order as a permutation-sized index list into N * K pairs (every entry in range).
static void check_order(const char *op, const Tensor *order, int64_t NK) {
    cpu_need(op, "order", order, DT_I32, 1);
    cpu_expect(op, "order", order, order->shape[0], NK, "length (N * K)");
    const int32_t *o = order->data;
    for (int64_t j = 0; j < NK; j++)
        if (o[j] < 0 || o[j] >= NK) die("%s: order[%lld] = %d is outside [0, %lld)", op, (long long)j, o[j], (long long)NK);
}

// x_sorted (N*K, d) = x (N, d)[order[j] / K]
void cpu_moe_gather(Tensor x_sorted, Tensor x, Tensor order, int top_k) {
    const char *op = "moe_gather";
    cpu_need(op, "x_sorted", &x_sorted, DT_F32, 2);
    cpu_need(op, "x", &x, DT_F32, 2);
    if (top_k <= 0) die("%s: top_k %d must be positive", op, top_k);
    const int64_t N = x.shape[0], d = x.shape[1], NK = N * top_k;
    cpu_agree(op, "x_sorted", &x_sorted, x_sorted.shape[1], "x", &x, d, "d");
    cpu_expect(op, "x_sorted", &x_sorted, x_sorted.shape[0], NK, "rows (N * top_k)");
    check_order(op, &order, NK);
    const int32_t *o = order.data;
    const float *xd = x.data;
    float *y = x_sorted.data;
#pragma omp parallel for schedule(static) if (NK * d > CPU_PAR_MIN)
    for (int64_t j = 0; j < NK; j++) memcpy(y + j * d, xd + (int64_t)(o[j] / top_k) * d, (size_t)d * sizeof(float));
}

// dx (N, d) (+)= scatter-add of dx_sorted (N*K, d). Threads own column blocks of dx (no races) and add rows in
// sorted order j, so the result does not depend on the thread count.
void cpu_moe_gather_backward(Tensor dx, Tensor dx_sorted, Tensor order, int top_k, int accumulate) {
    const char *op = "moe_gather_backward";
    cpu_need(op, "dx", &dx, DT_F32, 2);
    cpu_need(op, "dx_sorted", &dx_sorted, DT_F32, 2);
    if (top_k <= 0) die("%s: top_k %d must be positive", op, top_k);
    const int64_t N = dx.shape[0], d = dx.shape[1], NK = N * top_k;
    cpu_agree(op, "dx_sorted", &dx_sorted, dx_sorted.shape[1], "dx", &dx, d, "d");
    cpu_expect(op, "dx_sorted", &dx_sorted, dx_sorted.shape[0], NK, "rows (N * top_k)");
    check_order(op, &order, NK);
    const int32_t *o = order.data;
    const float *g = dx_sorted.data;
    float *out = dx.data;
    if (!accumulate) memset(out, 0, (size_t)(N * d) * sizeof(float));
    const int64_t CB = 64;
#pragma omp parallel for schedule(static) if (NK * d > CPU_PAR_MIN)
    for (int64_t c0 = 0; c0 < d; c0 += CB) {
        int64_t c1 = c0 + CB < d ? c0 + CB : d;
        for (int64_t j = 0; j < NK; j++) {
            float *row = out + (int64_t)(o[j] / top_k) * d;
            const float *gj = g + j * d;
            for (int64_t c = c0; c < c1; c++) row[c] += gj[c];
        }
    }
}

// out (N, d) (+)= sum over pairs of gates[pair] * y_sorted[j], pair = order[j], token = pair / K; column blocks
// per thread as in moe_gather_backward.
void cpu_moe_combine(Tensor out, Tensor y_sorted, Tensor gates, Tensor order, int accumulate) {
    const char *op = "moe_combine";
    cpu_need(op, "out", &out, DT_F32, 2);
    cpu_need(op, "y_sorted", &y_sorted, DT_F32, 2);
    cpu_need(op, "gates", &gates, DT_F32, 2);
    const int64_t N = out.shape[0], d = out.shape[1], K = gates.shape[1], NK = N * K;
    cpu_agree(op, "gates", &gates, gates.shape[0], "out", &out, N, "N");
    cpu_agree(op, "y_sorted", &y_sorted, y_sorted.shape[1], "out", &out, d, "d");
    cpu_expect(op, "y_sorted", &y_sorted, y_sorted.shape[0], NK, "rows (N * top_k)");
    check_order(op, &order, NK);
    const int32_t *o = order.data;
    const float *y = y_sorted.data, *gt = gates.data;
    float *od = out.data;
    if (!accumulate) memset(od, 0, (size_t)(N * d) * sizeof(float));
    const int64_t CB = 64;
#pragma omp parallel for schedule(static) if (NK * d > CPU_PAR_MIN)
    for (int64_t c0 = 0; c0 < d; c0 += CB) {
        int64_t c1 = c0 + CB < d ? c0 + CB : d;
        for (int64_t j = 0; j < NK; j++) {
            float *row = od + (int64_t)(o[j] / K) * d;
            const float gj = gt[o[j]], *yj = y + j * d;
            for (int64_t c = c0; c < c1; c++) row[c] += gj * yj[c];
        }
    }
}

// dy_sorted[j] = gates[pair] * dout[token];  dgates[pair] = <dout[token], y_sorted[j]>  (both overwrite).
void cpu_moe_combine_backward(Tensor dy_sorted, Tensor dgates, Tensor dout, Tensor y_sorted, Tensor gates,
                              Tensor order) {
    const char *op = "moe_combine_backward";
    cpu_need(op, "dy_sorted", &dy_sorted, DT_F32, 2);
    cpu_need(op, "dgates", &dgates, DT_F32, 2);
    cpu_need(op, "dout", &dout, DT_F32, 2);
    cpu_need(op, "y_sorted", &y_sorted, DT_F32, 2);
    cpu_need(op, "gates", &gates, DT_F32, 2);
    const int64_t N = dout.shape[0], d = dout.shape[1], K = gates.shape[1], NK = N * K;
    cpu_agree(op, "gates", &gates, gates.shape[0], "dout", &dout, N, "N");
    cpu_agree(op, "dgates", &dgates, dgates.shape[0], "gates", &gates, N, "N");
    cpu_agree(op, "dgates", &dgates, dgates.shape[1], "gates", &gates, K, "K");
    cpu_agree(op, "y_sorted", &y_sorted, y_sorted.shape[1], "dout", &dout, d, "d");
    cpu_expect(op, "y_sorted", &y_sorted, y_sorted.shape[0], NK, "rows (N * top_k)");
    cpu_agree(op, "dy_sorted", &dy_sorted, dy_sorted.shape[1], "dout", &dout, d, "d");
    cpu_expect(op, "dy_sorted", &dy_sorted, dy_sorted.shape[0], NK, "rows (N * top_k)");
    check_order(op, &order, NK);
    const int32_t *o = order.data;
    const float *g = dout.data, *y = y_sorted.data, *gt = gates.data;
    float *dy = dy_sorted.data, *dg = dgates.data;
#pragma omp parallel for schedule(static) if (NK * d > CPU_PAR_MIN)
    for (int64_t j = 0; j < NK; j++) {
        const float *gt_row = g + (int64_t)(o[j] / K) * d, *yj = y + j * d;
        float *dyj = dy + j * d, gate = gt[o[j]], acc = 0.0f;
#pragma omp simd reduction(+ : acc)
        for (int64_t c = 0; c < d; c++) {
            dyj[c] = gate * gt_row[c];
            acc += gt_row[c] * yj[c];
        }
        dg[o[j]] = acc;
    }
}
