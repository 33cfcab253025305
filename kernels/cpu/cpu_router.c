// MoE routing and the sequence-wise balance loss on the cpu.
//
// Routing follows the official DeepSeek-V3 inference/model.py Gate and the Hugging Face DeepseekV3TopkRouter:
//   scores = sigmoid(logits) (or softmax over all E);  biased = scores + bias (the bias only steers the choice);
//   experts split into G groups of E/G consecutive experts; group score = sum of the top group_score_topk biased
//   scores in the group; the topk_groups best groups are kept; top_k experts are picked among them by biased score;
//   gates = unbiased scores of the chosen / (their sum + 1e-20) (sigmoid only, as both references) * route_scale.
// Ties go to the lower index (groups and experts), so a choice never depends on thread count or summation order.
// Experts of dropped groups are excluded outright, as the official code does (-inf). HF instead sets their biased
// score to 0.0, which differs only when fewer than top_k experts of the kept groups have a positive biased score.
#include "kernels/cpu/cpu_ops.h"
#include "train/check.h"

#include <math.h>

// The HF router adds this to the gate denominator; matching it keeps gates comparable to HF to the last bit.
#define GATE_DENOM_EPS 1e-20f

static void check_params(const char *op, RouterParams p) {
    if (p.n_experts <= 0 || p.top_k <= 0 || p.n_groups <= 0 || p.n_experts % p.n_groups)
        die("%s: n_experts %d must be positive and divisible by n_groups %d (top_k %d)", op, p.n_experts, p.n_groups,
            p.top_k);
    int per_group = p.n_experts / p.n_groups;
    if (p.topk_groups <= 0 || p.topk_groups > p.n_groups)
        die("%s: topk_groups %d must be in [1, n_groups = %d]", op, p.topk_groups, p.n_groups);
    if (p.group_score_topk <= 0 || p.group_score_topk > per_group)
        die("%s: group_score_topk %d must be in [1, experts per group = %d]", op, p.group_score_topk, per_group);
    if (p.top_k > p.topk_groups * per_group)
        die("%s: top_k %d exceeds the %d experts in the %d kept groups", op, p.top_k, p.topk_groups * per_group,
            p.topk_groups);
    if (p.score_func != 0 && p.score_func != 1) die("%s: score_func %d is neither 0 (sigmoid) nor 1 (softmax)", op,
                                                    p.score_func);
}

// Index of the largest v[i] among i in [0, n) with allowed[i] (allowed may be NULL: all), scanning upward with a
// strict comparison so the lower index wins ties; -1 if none is allowed. NaNs never win a comparison; if every
// candidate is NaN the first allowed index is taken, so a NaN router still produces a valid (distinct) choice.
static int argmax_allowed(const float *v, const unsigned char *allowed, int n) {
    int best = -1;
    for (int i = 0; i < n; i++) {
        if (allowed && !allowed[i]) continue;
        if (best < 0 || v[i] > v[best]) best = i;
    }
    return best;
}

void cpu_moe_route(Tensor topk_idx, Tensor gates, Tensor scores, Tensor logits, Tensor bias, RouterParams p) {
    const char *op = "moe_route";
    check_params(op, p);
    const int E = p.n_experts, K = p.top_k, G = p.n_groups, per = E / G;
    cpu_need(op, "logits", &logits, DT_F32, 2);
    cpu_need(op, "scores", &scores, DT_F32, 2);
    cpu_need(op, "topk_idx", &topk_idx, DT_I32, 2);
    cpu_need(op, "gates", &gates, DT_F32, 2);
    const int64_t N = logits.shape[0];
    cpu_expect(op, "logits", &logits, logits.shape[1], E, "columns (n_experts)");
    cpu_agree(op, "scores", &scores, scores.shape[0], "logits", &logits, N, "N");
    cpu_expect(op, "scores", &scores, scores.shape[1], E, "columns (n_experts)");
    cpu_agree(op, "topk_idx", &topk_idx, topk_idx.shape[0], "logits", &logits, N, "N");
    cpu_expect(op, "topk_idx", &topk_idx, topk_idx.shape[1], K, "columns (top_k)");
    cpu_agree(op, "gates", &gates, gates.shape[0], "logits", &logits, N, "N");
    cpu_expect(op, "gates", &gates, gates.shape[1], K, "columns (top_k)");
    const float *bd = NULL;
    if (bias.data) {
        cpu_need(op, "bias", &bias, DT_F32, 1);
        cpu_expect(op, "bias", &bias, bias.shape[0], E, "length (n_experts)");
        bd = bias.data;
    }
    const float *x = logits.data;
    float *s = scores.data, *gt = gates.data;
    int32_t *idx = topk_idx.data;
#pragma omp parallel if (N * E * (K + 2) > CPU_PAR_MIN)
    {
        // Per-thread scratch: biased scores (E), group scores (G), expert and group availability flags.
        float *biased = xmalloc((size_t)E * sizeof(float));
        float *gscore = xmalloc((size_t)G * sizeof(float));
        unsigned char *allowed = xmalloc((size_t)E), *gallowed = xmalloc((size_t)G);
#pragma omp for schedule(static)
        for (int64_t t = 0; t < N; t++) {
            const float *xt = x + t * E;
            float *st = s + t * E;
            if (p.score_func == 0) {
                for (int e = 0; e < E; e++) st[e] = 1.0f / (1.0f + expf(-xt[e]));
            } else {
                float mx = -INFINITY, sum = 0.0f;
                for (int e = 0; e < E; e++) mx = xt[e] > mx ? xt[e] : mx;
                for (int e = 0; e < E; e++) sum += (st[e] = expf(xt[e] - mx));
                for (int e = 0; e < E; e++) st[e] /= sum;
            }
            for (int e = 0; e < E; e++) {
                biased[e] = st[e] + (bd ? bd[e] : 0.0f);
                allowed[e] = 1;
            }
            if (G > 1) {
                // allowed[] doubles as "not yet counted" flags while summing each group's top scores.
                for (int g = 0; g < G; g++) {
                    unsigned char *avail = allowed + g * per;
                    float sum = 0.0f;
                    for (int r = 0; r < p.group_score_topk; r++) {
                        int i = argmax_allowed(biased + g * per, avail, per);
                        sum += biased[g * per + i];
                        avail[i] = 0;
                    }
                    gscore[g] = sum;
                    gallowed[g] = 1;
                }
                for (int e = 0; e < E; e++) allowed[e] = 0;
                for (int r = 0; r < p.topk_groups; r++) {
                    int g = argmax_allowed(gscore, gallowed, G);
                    gallowed[g] = 0;
                    for (int i = 0; i < per; i++) allowed[g * per + i] = 1;
                }
            }
            int32_t *it = idx + t * K;
            float *gtt = gt + t * K, sum = 0.0f;
            for (int k = 0; k < K; k++) {
                int e = argmax_allowed(biased, allowed, E);
                allowed[e] = 0;
                it[k] = e;
                gtt[k] = st[e];
                sum += st[e];
            }
            float mul = p.score_func == 0 ? p.route_scale / (sum + GATE_DENOM_EPS) : p.route_scale;
            for (int k = 0; k < K; k++) gtt[k] *= mul;
        }
        free(biased);
        free(gscore);
        free(allowed);
        free(gallowed);
    }
}

// dgates (N, K) -> dscores of the chosen experts (through normalization and scale) + dscores_extra (N, E), then
// through the score function:
//   sigmoid: g_k = rs * s_k / (S + eps), S = sum_k s_k  =>  ds_k = rs * (dg_k / (S + eps) - sum_j dg_j s_j / (S + eps)^2)
//            dlogit_e = ds_e * s_e * (1 - s_e)
//   softmax: g_k = rs * s_k  =>  ds_k = rs * dg_k;  dlogit_e = s_e * (ds_e - sum_j ds_j s_j)
void cpu_moe_route_backward(Tensor dlogits, Tensor dgates, Tensor dscores_extra, Tensor scores, Tensor topk_idx,
                            RouterParams p) {
    const char *op = "moe_route_backward";
    check_params(op, p);
    const int E = p.n_experts, K = p.top_k;
    cpu_need(op, "dlogits", &dlogits, DT_F32, 2);
    cpu_need(op, "dgates", &dgates, DT_F32, 2);
    cpu_need(op, "scores", &scores, DT_F32, 2);
    cpu_need(op, "topk_idx", &topk_idx, DT_I32, 2);
    const int64_t N = scores.shape[0];
    cpu_expect(op, "scores", &scores, scores.shape[1], E, "columns (n_experts)");
    cpu_agree(op, "dlogits", &dlogits, dlogits.shape[0], "scores", &scores, N, "N");
    cpu_expect(op, "dlogits", &dlogits, dlogits.shape[1], E, "columns (n_experts)");
    cpu_agree(op, "dgates", &dgates, dgates.shape[0], "scores", &scores, N, "N");
    cpu_expect(op, "dgates", &dgates, dgates.shape[1], K, "columns (top_k)");
    cpu_agree(op, "topk_idx", &topk_idx, topk_idx.shape[0], "scores", &scores, N, "N");
    cpu_expect(op, "topk_idx", &topk_idx, topk_idx.shape[1], K, "columns (top_k)");
    const float *extra = NULL;
    if (dscores_extra.data) {
        cpu_need(op, "dscores_extra", &dscores_extra, DT_F32, 2);
        cpu_agree(op, "dscores_extra", &dscores_extra, dscores_extra.shape[0], "scores", &scores, N, "N");
        cpu_expect(op, "dscores_extra", &dscores_extra, dscores_extra.shape[1], E, "columns (n_experts)");
        extra = dscores_extra.data;
    }
    const float *s = scores.data, *dg = dgates.data;
    const int32_t *idx = topk_idx.data;
    float *dl = dlogits.data;
    for (int64_t i = 0; i < N * K; i++)
        if (idx[i] < 0 || idx[i] >= E) die("%s: topk_idx[%lld] = %d is not an expert in [0, %d)", op, (long long)i, idx[i], E);
#pragma omp parallel for schedule(static) if (N * E > CPU_PAR_MIN)
    for (int64_t t = 0; t < N; t++) {
        const float *st = s + t * E, *dgt = dg + t * K;
        const int32_t *it = idx + t * K;
        float *ds = dl + t * E; // ds accumulates dscores in place, then becomes dlogits
        for (int e = 0; e < E; e++) ds[e] = extra ? extra[t * E + e] : 0.0f;
        if (p.score_func == 0) {
            float S = 0.0f, dot = 0.0f;
            for (int k = 0; k < K; k++) {
                S += st[it[k]];
                dot += dgt[k] * st[it[k]];
            }
            float inv = 1.0f / (S + GATE_DENOM_EPS);
            for (int k = 0; k < K; k++) ds[it[k]] += p.route_scale * (dgt[k] * inv - dot * inv * inv);
            for (int e = 0; e < E; e++) ds[e] *= st[e] * (1.0f - st[e]);
        } else {
            for (int k = 0; k < K; k++) ds[it[k]] += p.route_scale * dgt[k];
            float dot = 0.0f;
            for (int e = 0; e < E; e++) dot += ds[e] * st[e];
            for (int e = 0; e < E; e++) ds[e] = st[e] * (ds[e] - dot);
        }
    }
}

// Per sequence b of T tokens (RECIPE.md section 2):
//   f_i = E / (K T) * #{t : i in topk(t)},  Z_t = sum_j s_{j,t},  P_i = (1/T) sum_t s_{i,t} / Z_t,
//   L_b = alpha * sum_i f_i P_i;  loss = mean_b L_b.
// Gradient (f is a count, constant):  dL/ds_{j,t} = alpha / (B T) * (f_j / Z_t - sum_i f_i s_{i,t} / Z_t^2).
void cpu_moe_balance_loss(Tensor loss, Tensor dscores, Tensor scores, Tensor topk_idx, int B, int T, int top_k,
                          float alpha, float grad_scale) {
    const char *op = "moe_balance_loss";
    cpu_need(op, "scores", &scores, DT_F32, 2);
    cpu_need(op, "topk_idx", &topk_idx, DT_I32, 2);
    const int64_t E = scores.shape[1];
    if (B <= 0 || T <= 0 || top_k <= 0) die("%s: B %d, T %d and top_k %d must be positive", op, B, T, top_k);
    cpu_expect(op, "scores", &scores, scores.shape[0], (int64_t)B * T, "rows (B * T)");
    cpu_agree(op, "topk_idx", &topk_idx, topk_idx.shape[0], "scores", &scores, (int64_t)B * T, "rows (B * T)");
    cpu_expect(op, "topk_idx", &topk_idx, topk_idx.shape[1], top_k, "columns (top_k)");
    float *ds = NULL;
    if (dscores.data) {
        cpu_need(op, "dscores", &dscores, DT_F32, 2);
        cpu_agree(op, "dscores", &dscores, dscores.shape[0], "scores", &scores, (int64_t)B * T, "rows");
        cpu_agree(op, "dscores", &dscores, dscores.shape[1], "scores", &scores, E, "E");
        ds = dscores.data;
    }
    if (loss.data) {
        cpu_need(op, "loss", &loss, DT_F32, 1);
        cpu_expect(op, "loss", &loss, loss.shape[0], 1, "length 1");
    }
    const float *s = scores.data;
    const int32_t *idx = topk_idx.data;
    for (int64_t i = 0; i < (int64_t)B * T * top_k; i++)
        if (idx[i] < 0 || idx[i] >= E)
            die("%s: topk_idx[%lld] = %d is not an expert in [0, %lld)", op, (long long)i, idx[i], (long long)E);
    double total = 0.0;
    double *f = xmalloc((size_t)E * sizeof(double)), *P = xmalloc((size_t)E * sizeof(double));
    for (int b = 0; b < B; b++) {
        for (int64_t e = 0; e < E; e++) f[e] = P[e] = 0.0;
        for (int64_t t = 0; t < T; t++)
            for (int k = 0; k < top_k; k++) f[idx[((int64_t)b * T + t) * top_k + k]] += 1.0;
        for (int64_t e = 0; e < E; e++) f[e] *= (double)E / ((double)top_k * T);
        for (int64_t t = 0; t < T; t++) {
            const float *st = s + ((int64_t)b * T + t) * E;
            double Z = 0.0, fs = 0.0;
            for (int64_t e = 0; e < E; e++) {
                Z += st[e];
                fs += f[e] * st[e];
            }
            for (int64_t e = 0; e < E; e++) P[e] += st[e] / Z / T;
            if (ds) {
                float *dst = ds + ((int64_t)b * T + t) * E;
                double c = (double)alpha * grad_scale / ((double)B * T);
                for (int64_t e = 0; e < E; e++) dst[e] = (float)(c * (f[e] / Z - fs / (Z * Z)));
            }
        }
        double L = 0.0;
        for (int64_t e = 0; e < E; e++) L += f[e] * P[e];
        total += alpha * L;
    }
    free(f);
    free(P);
    if (loss.data) *(float *)loss.data = (float)(total / B);
}
