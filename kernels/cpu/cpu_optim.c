// Optimizer ops on the cpu: the sum of squares for the global gradient norm, scaling, and AdamW with BF16 moments.
#include "kernels/cpu/cpu_ops.h"
#include "train/check.h"

#include <math.h>

// Accumulated in double over fixed blocks whose partial sums are added in block order, so the result is the same
// for any thread count (runs must be bit-reproducible across resume).
double cpu_sum_squares(Tensor x) {
    cpu_need("sum_squares", "x", &x, DT_F32, 0);
    const int64_t n = tensor_numel(&x);
    enum { MAX_BLOCKS = 1024 };
    int64_t bs = (n + MAX_BLOCKS - 1) / MAX_BLOCKS;
    if (bs < 4096) bs = 4096;
    const int64_t nb = (n + bs - 1) / bs;
    double part[MAX_BLOCKS];
    const float *xd = x.data;
#pragma omp parallel for schedule(static) if (n > CPU_PAR_MIN)
    for (int64_t b = 0; b < nb; b++) {
        int64_t i0 = b * bs, i1 = i0 + bs < n ? i0 + bs : n;
        double acc = 0.0;
        for (int64_t i = i0; i < i1; i++) acc += (double)xd[i] * xd[i];
        part[b] = acc;
    }
    double total = 0.0;
    for (int64_t b = 0; b < nb; b++) total += part[b];
    return total;
}

void cpu_scale(Tensor x, float alpha) {
    cpu_need("scale", "x", &x, DT_F32, 0);
    const int64_t n = tensor_numel(&x);
    float *xd = x.data;
#pragma omp parallel for simd schedule(static) if (n > CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++) xd[i] *= alpha;
}

// torch.optim.AdamW's arithmetic with the moments held in BF16 (as a torch run with bf16 optimizer state would):
//   g = grad * grad_scale;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2  (FP32, then stored rounded to BF16)
//   p *= 1 - lr wd;  p -= (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
// The step uses the rounded moments, i.e. exactly what is stored, so a resumed run continues bit-identically.
void cpu_adamw_update(Tensor params, Tensor grads, Tensor m, Tensor v, float lr, float beta1, float beta2, float eps,
                      float wd, float grad_scale, int64_t t) {
    const char *op = "adamw_update";
    cpu_need(op, "params", &params, DT_F32, 0);
    cpu_need(op, "grads", &grads, DT_F32, 0);
    cpu_need(op, "m", &m, DT_BF16, 0);
    cpu_need(op, "v", &v, DT_BF16, 0);
    const int64_t n = tensor_numel(&params);
    cpu_agree(op, "grads", &grads, tensor_numel(&grads), "params", &params, n, "size");
    cpu_agree(op, "m", &m, tensor_numel(&m), "params", &params, n, "size");
    cpu_agree(op, "v", &v, tensor_numel(&v), "params", &params, n, "size");
    if (t < 1) die("%s: step t = %lld, expected >= 1 (bias correction)", op, (long long)t);
    const float bc1 = 1.0f - powf(beta1, (float)t), bc2 = 1.0f - powf(beta2, (float)t);
    const float step = lr / bc1, sqrt_bc2 = sqrtf(bc2), decay = 1.0f - lr * wd;
    float *p = params.data;
    const float *g = grads.data;
    uint16_t *md = m.data, *vd = v.data;
#pragma omp parallel for schedule(static) if (n > CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        float gi = g[i] * grad_scale;
        uint16_t mb = bf16_from_f32(beta1 * bf16_to_f32(md[i]) + (1.0f - beta1) * gi);
        uint16_t vb = bf16_from_f32(beta2 * bf16_to_f32(vd[i]) + (1.0f - beta2) * gi * gi);
        md[i] = mb;
        vd[i] = vb;
        float mi = bf16_to_f32(mb), vi = bf16_to_f32(vb);
        p[i] = p[i] * decay - step * mi / (sqrtf(vi) / sqrt_bc2 + eps);
    }
}
