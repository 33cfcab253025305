// Softmax cross-entropy on the cpu, forward and backward in one pass over each row of logits.
#include "kernels/cpu/cpu_ops.h"
#include "train/check.h"

#include <math.h>

// losses (N) = logsumexp(row) - row[target];  dlogits (N, V) = grad_scale * (softmax(row) - onehot(target)).
// dlogits may alias logits: each row's loss and logsumexp are computed before the row is overwritten.
// dlogits.data == NULL computes the losses only (evaluation).
void cpu_cross_entropy_forward_backward(Tensor losses, Tensor dlogits, Tensor logits, Tensor targets,
                                        float grad_scale) {
    const char *op = "cross_entropy_forward_backward";
    cpu_need(op, "losses", &losses, DT_F32, 0);
    cpu_need(op, "logits", &logits, DT_F32, 0);
    cpu_need(op, "targets", &targets, DT_I32, 0);
    int64_t N = cpu_rows(&logits), V = cpu_cols(&logits);
    cpu_agree(op, "targets", &targets, tensor_numel(&targets), "logits", &logits, N, "N");
    cpu_agree(op, "losses", &losses, tensor_numel(&losses), "logits", &logits, N, "N");
    if (dlogits.data) {
        cpu_need(op, "dlogits", &dlogits, DT_F32, 0);
        cpu_agree(op, "dlogits", &dlogits, tensor_numel(&dlogits), "logits", &logits, N * V, "size");
    }
    const int32_t *tg = targets.data;
    for (int64_t n = 0; n < N; n++)
        if (tg[n] < 0 || tg[n] >= V)
            die("%s: targets[%lld] = %d is outside the vocabulary of %lld", op, (long long)n, tg[n], (long long)V);
    const float *x = logits.data;
    float *loss = losses.data, *dx = dlogits.data;
#pragma omp parallel for schedule(static) if (N * V > CPU_PAR_MIN)
    for (int64_t n = 0; n < N; n++) {
        const float *xn = x + n * V;
        float mx = -INFINITY;
        for (int64_t j = 0; j < V; j++) mx = xn[j] > mx ? xn[j] : mx;
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < V; j++) sum += expf(xn[j] - mx);
        float lse = mx + logf(sum);
        loss[n] = lse - xn[tg[n]];
        if (dx) {
            float *dn = dx + n * V;
            for (int64_t j = 0; j < V; j++) dn[j] = grad_scale * expf(xn[j] - lse);
            dn[tg[n]] -= grad_scale;
        }
    }
}
