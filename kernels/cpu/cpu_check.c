// Argument checks shared by the cpu ops: a wrong dtype, rank or dimension stops the program with the op's name,
// the tensors' names and shapes, instead of reading out of bounds.
#include "kernels/cpu/cpu_ops.h"
#include "train/check.h"

#include <stdio.h>

static const char *dtype_name(DType dt) {
    switch (dt) {
    case DT_F32: return "f32";
    case DT_BF16: return "bf16";
    case DT_I32: return "i32";
    case DT_F8E4M3: return "f8e4m3";
    }
    return "unknown dtype";
}

const char *cpu_shape_str(const Tensor *t, char *buf) {
    int n = 0;
    n += snprintf(buf + n, 96 - n, "(");
    for (int i = 0; i < t->ndim && i < 4 && n < 80; i++)
        n += snprintf(buf + n, 96 - n, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
    snprintf(buf + n, 96 - n, ")");
    return buf;
}

void cpu_need(const char *op, const char *name, const Tensor *t, DType dt, int ndim) {
    char s[96];
    if (t->ndim < 1 || t->ndim > 4) die("%s: %s has %d dimensions (expected 1 to 4)", op, name, t->ndim);
    if (t->dtype != dt)
        die("%s: %s %s is %s, expected %s", op, name, cpu_shape_str(t, s), dtype_name(t->dtype), dtype_name(dt));
    if (ndim > 0 && t->ndim != ndim)
        die("%s: %s %s has %d dimensions, expected %d", op, name, cpu_shape_str(t, s), t->ndim, ndim);
    for (int i = 0; i < t->ndim; i++)
        if (t->shape[i] < 0) die("%s: %s %s has a negative dimension", op, name, cpu_shape_str(t, s));
    if (!t->data && tensor_numel(t) > 0) die("%s: %s %s has no data (NULL)", op, name, cpu_shape_str(t, s));
}

int64_t cpu_cols(const Tensor *t) { return t->shape[t->ndim - 1]; }

int64_t cpu_rows(const Tensor *t) {
    int64_t r = 1;
    for (int i = 0; i < t->ndim - 1; i++) r *= t->shape[i];
    return r;
}

void cpu_agree(const char *op, const char *an, const Tensor *a, int64_t av, const char *bn, const Tensor *b,
               int64_t bv, const char *what) {
    if (av == bv) return;
    char sa[96], sb[96];
    die("%s: %s %s and %s %s disagree on %s (%lld vs %lld)", op, an, cpu_shape_str(a, sa), bn, cpu_shape_str(b, sb),
        what, (long long)av, (long long)bv);
}

void cpu_expect(const char *op, const char *name, const Tensor *t, int64_t got, int64_t want, const char *what) {
    if (got == want) return;
    char s[96];
    die("%s: %s %s has %s = %lld, expected %lld", op, name, cpu_shape_str(t, s), what, (long long)got,
        (long long)want);
}

void cpu_same_or_disjoint(const char *op, const char *an, const Tensor *a, const char *bn, const Tensor *b) {
    if (a->data == b->data || tensor_numel(a) == 0 || tensor_numel(b) == 0) return;
    const uintptr_t a0 = (uintptr_t)a->data, a1 = a0 + (uintptr_t)tensor_numel(a) * dtype_size(a->dtype);
    const uintptr_t b0 = (uintptr_t)b->data, b1 = b0 + (uintptr_t)tensor_numel(b) * dtype_size(b->dtype);
    if (a1 <= b0 || b1 <= a0) return;
    char sa[96], sb[96];
    die("%s: %s %s and %s %s overlap without being the same tensor", op, an, cpu_shape_str(a, sa), bn,
        cpu_shape_str(b, sb));
}

void cpu_need_lowp_copy(const char *op, const char *name, const Tensor *copy, const char *of_name, const Tensor *of,
                        int64_t n) {
    if (!of->data) die("%s: %s is given but %s is not (it is %s's BF16 copy)", op, name, of_name, of_name);
    cpu_need(op, name, copy, DT_BF16, 0);
    cpu_agree(op, name, copy, tensor_numel(copy), of_name, of, n, "size");
    char sa[96], sb[96];
    if (copy->data == of->data)
        die("%s: %s %s is %s %s's memory (it must be a separate buffer)", op, name, cpu_shape_str(copy, sa), of_name,
            cpu_shape_str(of, sb));
    cpu_same_or_disjoint(op, name, copy, of_name, of);
}

void cpu_matmul_shapes(const char *op, const Tensor *out, const Tensor *inp, const Tensor *w, int64_t *M, int64_t *N,
                       int64_t *K) {
    *M = cpu_rows(inp), *K = cpu_cols(inp), *N = w->shape[0];
    cpu_agree(op, "inp", inp, *K, "w", w, w->shape[1], "K");
    cpu_agree(op, "out", out, cpu_rows(out), "inp", inp, *M, "M");
    cpu_agree(op, "out", out, cpu_cols(out), "w", w, *N, "N");
}

void cpu_matmul_residual_shapes(const char *op, const Tensor *out, const Tensor *res, const Tensor *inp,
                                const Tensor *w, int64_t *M, int64_t *N, int64_t *K) {
    cpu_matmul_shapes(op, out, inp, w, M, N, K);
    cpu_agree(op, "res", res, cpu_rows(res), "out", out, *M, "M");
    cpu_agree(op, "res", res, cpu_cols(res), "out", out, *N, "N");
    cpu_same_or_disjoint(op, "res", res, "out", out);
}

void cpu_dinp_pair_shapes(const char *op, const Tensor *dinp, const Tensor *da, const Tensor *wa, const Tensor *db,
                          const Tensor *wb, int64_t *R, int64_t *E, int64_t *N, int64_t *K) {
    for (int i = 0; i < 3; i++) cpu_agree(op, "wb", wb, wb->shape[i], "wa", wa, wa->shape[i], "shape");
    *R = dinp->shape[0], *K = dinp->shape[1], *E = wa->shape[0], *N = wa->shape[1];
    cpu_agree(op, "dinp", dinp, *K, "wa", wa, wa->shape[2], "K");
    cpu_agree(op, "dout_a", da, da->shape[0], "dinp", dinp, *R, "rows");
    cpu_agree(op, "dout_a", da, da->shape[1], "wa", wa, *N, "N");
    cpu_agree(op, "dout_b", db, db->shape[0], "dinp", dinp, *R, "rows");
    cpu_agree(op, "dout_b", db, db->shape[1], "wa", wa, *N, "N");
}
