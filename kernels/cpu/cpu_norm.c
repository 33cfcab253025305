// RMSNorm on the cpu: y = x * rstd * w with rstd = 1 / sqrt(mean(x^2) + eps), per row of x (M, d).
#include "kernels/cpu/cpu_ops.h"
#include "train/check.h"

#include <math.h>

void cpu_rmsnorm_forward(Tensor out, Tensor rstd, Tensor inp, Tensor w, float eps) {
    const char *op = "rmsnorm_forward";
    cpu_need(op, "out", &out, DT_F32, 0);
    cpu_need(op, "inp", &inp, DT_F32, 0);
    cpu_need(op, "w", &w, DT_F32, 1);
    cpu_need(op, "rstd", &rstd, DT_F32, 0);
    int64_t M = cpu_rows(&inp), d = cpu_cols(&inp);
    cpu_agree(op, "inp", &inp, d, "w", &w, w.shape[0], "d");
    cpu_agree(op, "out", &out, tensor_numel(&out), "inp", &inp, M * d, "size");
    cpu_expect(op, "rstd", &rstd, tensor_numel(&rstd), M, "size (rows of inp)");
    const float *x = inp.data, *wd = w.data;
    float *y = out.data, *r = rstd.data;
#pragma omp parallel for schedule(static) if (M * d > CPU_PAR_MIN)
    for (int64_t m = 0; m < M; m++) {
        const float *xm = x + m * d;
        float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
        for (int64_t j = 0; j < d; j++) ss += xm[j] * xm[j];
        float rs = 1.0f / sqrtf(ss / (float)d + eps);
        r[m] = rs;
        float *ym = y + m * d;
        for (int64_t j = 0; j < d; j++) ym[j] = xm[j] * rs * wd[j];
    }
}

// With xhat = x * rstd:  dx_j = rstd * (w_j dy_j - xhat_j * mean_i(w_i dy_i xhat_i)),  dw_j += sum_rows dy_j xhat_j.
// dinp_lowp: each row of dinp, once final, rounded to BF16 by bf16_from_f32 (convert's rounding).
void cpu_rmsnorm_backward(Tensor dinp, Tensor dw, Tensor dout, Tensor inp, Tensor w, Tensor rstd,
                          int accumulate_dinp, Tensor dinp_lowp) {
    const char *op = "rmsnorm_backward";
    cpu_need(op, "dout", &dout, DT_F32, 0);
    cpu_need(op, "inp", &inp, DT_F32, 0);
    cpu_need(op, "w", &w, DT_F32, 1);
    cpu_need(op, "rstd", &rstd, DT_F32, 0);
    int64_t M = cpu_rows(&inp), d = cpu_cols(&inp);
    cpu_agree(op, "inp", &inp, d, "w", &w, w.shape[0], "d");
    cpu_agree(op, "dout", &dout, tensor_numel(&dout), "inp", &inp, M * d, "size");
    cpu_expect(op, "rstd", &rstd, tensor_numel(&rstd), M, "size (rows of inp)");
    const float *x = inp.data, *g = dout.data, *wd = w.data, *r = rstd.data;
    if (dinp_lowp.data) cpu_need_lowp_copy(op, "dinp_lowp", &dinp_lowp, "dinp", &dinp, M * d);
    if (dinp.data) {
        cpu_need(op, "dinp", &dinp, DT_F32, 0);
        cpu_agree(op, "dinp", &dinp, tensor_numel(&dinp), "inp", &inp, M * d, "size");
        float *dx = dinp.data;
        uint16_t *lp = dinp_lowp.data;
#pragma omp parallel for schedule(static) if (M * d > CPU_PAR_MIN)
        for (int64_t m = 0; m < M; m++) {
            const float *xm = x + m * d, *gm = g + m * d;
            float rs = r[m], dot = 0.0f;
#pragma omp simd reduction(+ : dot)
            for (int64_t j = 0; j < d; j++) dot += wd[j] * gm[j] * xm[j];
            // dot * rs is sum_i w_i dy_i xhat_i; divided by d it is the mean in the formula above.
            float c = dot * rs * rs / (float)d;
            float *dxm = dx + m * d;
            if (accumulate_dinp)
                for (int64_t j = 0; j < d; j++) dxm[j] += rs * (wd[j] * gm[j] - xm[j] * c);
            else
                for (int64_t j = 0; j < d; j++) dxm[j] = rs * (wd[j] * gm[j] - xm[j] * c);
            if (lp)
                for (int64_t j = 0; j < d; j++) lp[m * d + j] = bf16_from_f32(dxm[j]);
        }
    }
    if (dw.data) {
        cpu_need(op, "dw", &dw, DT_F32, 1);
        cpu_agree(op, "dw", &dw, dw.shape[0], "w", &w, d, "d");
        float *dwd = dw.data;
        // Threads own column blocks (each dw element has one writer), rows summed in order: deterministic.
        const int64_t CB = 64;
#pragma omp parallel for schedule(static) if (M * d > CPU_PAR_MIN)
        for (int64_t j0 = 0; j0 < d; j0 += CB) {
            int64_t j1 = j0 + CB < d ? j0 + CB : d;
            for (int64_t m = 0; m < M; m++) {
                const float *xm = x + m * d, *gm = g + m * d;
                float rs = r[m];
                for (int64_t j = j0; j < j1; j++) dwd[j] += gm[j] * xm[j] * rs;
            }
        }
    }
}
