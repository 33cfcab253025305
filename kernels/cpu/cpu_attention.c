// Causal softmax attention on the cpu, the FP32 reference for the CUDA kernel.
//   q, k (B, T, H, dqk), v (B, T, H, dv), out (B, T, H, dv), lse (B, H, T)
// Forward: for each query row, scores s_j = scale * <q_i, k_j> for j <= i, p = softmax(s), out_i = sum_j p_j v_j,
// lse_i = logsumexp(s). Backward recomputes p_ij = exp(s_ij - lse_i) (nothing (T, T) is stored):
//   dv_j += p_ij do_i;  dp_ij = <do_i, v_j>;  ds_ij = p_ij (dp_ij - <do_i, out_i>);
//   dq_i += scale ds_ij k_j;  dk_j += scale ds_ij q_i.
// Each thread takes whole (b, h) pairs, so it alone writes that pair's dq, dk, dv; in the forward one row buffer of T
// floats per thread holds a row of probabilities; the backward needs none (it recomputes p_ij one at a time).
#include "kernels/cpu/cpu_ops.h"
#include "train/check.h"

#include <math.h>
#include <string.h>

static float dot(const float *a, const float *b, int64_t n) {
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < n; i++) acc += a[i] * b[i];
    return acc;
}

static void check_qkv(const char *op, const Tensor *q, const Tensor *k, const Tensor *v) {
    cpu_need(op, "q", q, DT_F32, 4);
    cpu_need(op, "k", k, DT_F32, 4);
    cpu_need(op, "v", v, DT_F32, 4);
    static const char *dims[4] = {"B", "T", "H", "head dim"};
    for (int i = 0; i < 4; i++) cpu_agree(op, "q", q, q->shape[i], "k", k, k->shape[i], dims[i]);
    for (int i = 0; i < 3; i++) cpu_agree(op, "v", v, v->shape[i], "q", q, q->shape[i], dims[i]);
}

static void check_like(const char *op, const char *name, const Tensor *t, const Tensor *ref, const char *refname) {
    cpu_need(op, name, t, DT_F32, 4);
    static const char *dims[4] = {"B", "T", "H", "head dim"};
    for (int i = 0; i < 4; i++) cpu_agree(op, name, t, t->shape[i], refname, ref, ref->shape[i], dims[i]);
}

static void check_lse(const char *op, const Tensor *lse, const Tensor *q) {
    cpu_need(op, "lse", lse, DT_F32, 3);
    cpu_agree(op, "lse", lse, lse->shape[0], "q", q, q->shape[0], "B");
    cpu_agree(op, "lse", lse, lse->shape[1], "q", q, q->shape[2], "H");
    cpu_agree(op, "lse", lse, lse->shape[2], "q", q, q->shape[1], "T");
}

void cpu_attention_forward(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v, float scale) {
    const char *op = "attention_forward";
    check_qkv(op, &q, &k, &v);
    check_like(op, "out", &out, &v, "v");
    check_lse(op, &lse, &q);
    const int64_t B = q.shape[0], T = q.shape[1], H = q.shape[2], D = q.shape[3], DV = v.shape[3];
    const float *qd = q.data, *kd = k.data, *vd = v.data;
    float *od = out.data, *ld = lse.data;
#pragma omp parallel
    {
        float *p = xmalloc((size_t)(T > 0 ? T : 1) * sizeof(float));
#pragma omp for schedule(dynamic, 1)
        for (int64_t bh = 0; bh < B * H; bh++) {
            int64_t b = bh / H, h = bh % H;
            for (int64_t i = 0; i < T; i++) {
                const float *qi = qd + ((b * T + i) * H + h) * D;
                float mx = -INFINITY;
                for (int64_t j = 0; j <= i; j++) {
                    p[j] = scale * dot(qi, kd + ((b * T + j) * H + h) * D, D);
                    mx = p[j] > mx ? p[j] : mx;
                }
                float sum = 0.0f;
                for (int64_t j = 0; j <= i; j++) {
                    p[j] = expf(p[j] - mx);
                    sum += p[j];
                }
                float inv = 1.0f / sum;
                float *oi = od + ((b * T + i) * H + h) * DV;
                memset(oi, 0, (size_t)DV * sizeof(float));
                for (int64_t j = 0; j <= i; j++) {
                    const float pj = p[j] * inv, *vj = vd + ((b * T + j) * H + h) * DV;
                    for (int64_t c = 0; c < DV; c++) oi[c] += pj * vj[c];
                }
                ld[(b * H + h) * T + i] = mx + logf(sum);
            }
        }
        free(p);
    }
}

void cpu_attention_backward(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out,
                            Tensor lse, float scale) {
    const char *op = "attention_backward";
    check_qkv(op, &q, &k, &v);
    check_like(op, "out", &out, &v, "v");
    check_like(op, "dout", &dout, &v, "v");
    check_like(op, "dq", &dq, &q, "q");
    check_like(op, "dk", &dk, &k, "k");
    check_like(op, "dv", &dv, &v, "v");
    check_lse(op, &lse, &q);
    const int64_t B = q.shape[0], T = q.shape[1], H = q.shape[2], D = q.shape[3], DV = v.shape[3];
    const float *qd = q.data, *kd = k.data, *vd = v.data, *od = out.data, *gd = dout.data, *ld = lse.data;
    float *dqd = dq.data, *dkd = dk.data, *dvd = dv.data;
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t bh = 0; bh < B * H; bh++) {
        int64_t b = bh / H, h = bh % H;
        for (int64_t j = 0; j < T; j++) {
            memset(dkd + ((b * T + j) * H + h) * D, 0, (size_t)D * sizeof(float));
            memset(dvd + ((b * T + j) * H + h) * DV, 0, (size_t)DV * sizeof(float));
        }
        for (int64_t i = 0; i < T; i++) {
            const int64_t qi_off = ((b * T + i) * H + h);
            const float *qi = qd + qi_off * D, *gi = gd + qi_off * DV, *oi = od + qi_off * DV;
            float *dqi = dqd + qi_off * D;
            const float li = ld[(b * H + h) * T + i], Di = dot(gi, oi, DV);
            memset(dqi, 0, (size_t)D * sizeof(float));
            for (int64_t j = 0; j <= i; j++) {
                const int64_t kj_off = ((b * T + j) * H + h);
                const float *kj = kd + kj_off * D, *vj = vd + kj_off * DV;
                float pij = expf(scale * dot(qi, kj, D) - li);
                float dsij = pij * (dot(gi, vj, DV) - Di) * scale;
                float *dvj = dvd + kj_off * DV, *dkj = dkd + kj_off * D;
                for (int64_t c = 0; c < DV; c++) dvj[c] += pij * gi[c];
                for (int64_t c = 0; c < D; c++) dqi[c] += dsij * kj[c];
                for (int64_t c = 0; c < D; c++) dkj[c] += dsij * qi[c];
            }
        }
    }
}
