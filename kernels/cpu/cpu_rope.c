// MLA's data movement on the cpu: RoPE on the rope part of each head, and the assembly of per-head keys and values
// from the up-projected [k_nope ; v] and the single shared rope key.
#include "kernels/cpu/cpu_ops.h"
#include "train/check.h"

// x viewed as (N, H, stride): a 2-D x (N, stride) is one head per token (the shared k_rope).
void cpu_rope_apply(Tensor x, int64_t col, int64_t rope_dim, Tensor cos, Tensor sin, int T, int inverse) {
    const char *op = "rope_apply";
    cpu_need(op, "x", &x, DT_F32, 0);
    cpu_need(op, "cos", &cos, DT_F32, 2);
    cpu_need(op, "sin", &sin, DT_F32, 2);
    int64_t stride = cpu_cols(&x), H = x.ndim >= 3 ? x.shape[x.ndim - 2] : 1;
    int64_t N = tensor_numel(&x) / (stride * H > 0 ? stride * H : 1);
    int64_t half = rope_dim / 2;
    if (rope_dim <= 0 || rope_dim % 2) die("%s: rope_dim %lld must be positive and even", op, (long long)rope_dim);
    if (col < 0 || col + rope_dim > stride)
        die("%s: rope columns [%lld, %lld) do not fit a head of %lld", op, (long long)col, (long long)(col + rope_dim),
            (long long)stride);
    if (T <= 0 || N % T) die("%s: %lld tokens are not a whole number of sequences of T = %d", op, (long long)N, T);
    cpu_agree(op, "cos", &cos, cos.shape[1], "sin", &sin, sin.shape[1], "columns");
    cpu_agree(op, "cos", &cos, cos.shape[0], "sin", &sin, sin.shape[0], "rows");
    cpu_expect(op, "cos", &cos, cos.shape[1], half, "columns (rope_dim / 2)");
    if (cos.shape[0] < T) die("%s: cos/sin tables have %lld positions, fewer than T = %d", op, (long long)cos.shape[0], T);
    float *xd = x.data;
    const float *c = cos.data, *s = sin.data;
    const float sign = inverse ? -1.0f : 1.0f;
#pragma omp parallel for schedule(static) if (N * H * rope_dim > CPU_PAR_MIN)
    for (int64_t n = 0; n < N; n++) {
        const float *cn = c + (n % T) * half, *sn = s + (n % T) * half;
        for (int64_t h = 0; h < H; h++) {
            float *p = xd + (n * H + h) * stride + col;
            for (int64_t i = 0; i < half; i++) {
                float x0 = p[2 * i], x1 = p[2 * i + 1], ci = cn[i], si = sign * sn[i];
                p[2 * i] = x0 * ci - x1 * si;
                p[2 * i + 1] = x0 * si + x1 * ci;
            }
        }
    }
}

// Checks k (N, H, nope + rope), v (N, H, dv), kv (N, H * (nope + dv)), k_rope (N, rope); a leading (B, T) pair in
// place of N is accepted for k and v (the attention op's layout). Returns N and H.
static void kv_shapes(const char *op, const Tensor *k, const Tensor *v, const Tensor *kv, const Tensor *kr, int nope,
                      int rope, int dv, int64_t *N_out, int64_t *H_out) {
    if (nope < 0 || rope < 0 || dv <= 0 || nope + rope <= 0)
        die("%s: bad head dimensions nope %d, rope %d, dv %d", op, nope, rope, dv);
    if (k->ndim < 3) die("%s: k must be (N, H, nope + rope), got %d dimensions", op, k->ndim);
    int64_t H = k->shape[k->ndim - 2], N = cpu_rows(k) / (H ? H : 1);
    cpu_expect(op, "k", k, cpu_cols(k), nope + rope, "head dim (nope + rope)");
    if (v->ndim < 3) die("%s: v must be (N, H, dv), got %d dimensions", op, v->ndim);
    cpu_expect(op, "v", v, cpu_cols(v), dv, "head dim (dv)");
    cpu_agree(op, "v", v, v->shape[v->ndim - 2], "k", k, H, "H");
    cpu_agree(op, "v", v, cpu_rows(v) / (H ? H : 1), "k", k, N, "N");
    cpu_expect(op, "kv", kv, cpu_cols(kv), H * (nope + dv), "columns (H * (nope + dv))");
    cpu_agree(op, "kv", kv, cpu_rows(kv), "k", k, N, "N");
    cpu_expect(op, "k_rope", kr, cpu_cols(kr), rope, "columns (rope)");
    cpu_agree(op, "k_rope", kr, cpu_rows(kr), "k", k, N, "N");
    *N_out = N;
    *H_out = H;
}

void cpu_mla_kv_assemble(Tensor k, Tensor v, Tensor kv, Tensor k_rope, int nope, int rope, int dv) {
    const char *op = "mla_kv_assemble";
    cpu_need(op, "k", &k, DT_F32, 0);
    cpu_need(op, "v", &v, DT_F32, 0);
    cpu_need(op, "kv", &kv, DT_F32, 0);
    cpu_need(op, "k_rope", &k_rope, DT_F32, 0);
    int64_t N, H;
    kv_shapes(op, &k, &v, &kv, &k_rope, nope, rope, dv, &N, &H);
    const int64_t dk = nope + rope, dkv = nope + dv;
    float *kd = k.data, *vd = v.data;
    const float *src = kv.data, *kr = k_rope.data;
#pragma omp parallel for schedule(static) if (N * H * (dk + dv) > CPU_PAR_MIN)
    for (int64_t n = 0; n < N; n++)
        for (int64_t h = 0; h < H; h++) {
            const float *s = src + (n * H + h) * dkv; // this head's [k_nope ; v]
            float *kh = kd + (n * H + h) * dk, *vh = vd + (n * H + h) * dv;
            for (int j = 0; j < nope; j++) kh[j] = s[j];
            for (int j = 0; j < rope; j++) kh[nope + j] = kr[n * rope + j];
            for (int j = 0; j < dv; j++) vh[j] = s[nope + j];
        }
}

void cpu_mla_kv_assemble_backward(Tensor dkv, Tensor dk_rope, Tensor dk, Tensor dv, int nope, int rope, int dv_dim) {
    const char *op = "mla_kv_assemble_backward";
    cpu_need(op, "dkv", &dkv, DT_F32, 0);
    cpu_need(op, "dk_rope", &dk_rope, DT_F32, 0);
    cpu_need(op, "dk", &dk, DT_F32, 0);
    cpu_need(op, "dv", &dv, DT_F32, 0);
    int64_t N, H;
    kv_shapes(op, &dk, &dv, &dkv, &dk_rope, nope, rope, dv_dim, &N, &H);
    const int64_t dkd = nope + rope, dkvd = nope + dv_dim;
    float *out = dkv.data, *dkr = dk_rope.data;
    const float *g = dk.data, *gv = dv.data;
#pragma omp parallel for schedule(static) if (N * H * (dkd + dv_dim) > CPU_PAR_MIN)
    for (int64_t n = 0; n < N; n++) {
        float *r = dkr + n * rope;
        for (int j = 0; j < rope; j++) r[j] = 0.0f;
        for (int64_t h = 0; h < H; h++) {
            float *o = out + (n * H + h) * dkvd;
            const float *gk = g + (n * H + h) * dkd, *gvh = gv + (n * H + h) * dv_dim;
            for (int j = 0; j < nope; j++) o[j] = gk[j];
            for (int j = 0; j < dv_dim; j++) o[nope + j] = gvh[j];
            for (int j = 0; j < rope; j++) r[j] += gk[nope + j];
        }
    }
}
