// Benchmark of the cpu backend's causal attention (forward, backward) on the tiny model's shape and a larger one:
// prints milliseconds per call and GFLOP/s counting only the causal (j <= i) multiply-adds. Not a test: timings vary
// with the machine and its load (print `uptime` next to the figures).
//   make bench-cpu-attention        (or OMP_NUM_THREADS=1 make bench-cpu-attention)
#include "kernels/ops.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

static float *rand_buf(int64_t n, float amp) {
    float *x = malloc((size_t)n * sizeof(float));
    if (!x) {
        fprintf(stderr, "bench_cpu_attention: out of memory\n");
        exit(1);
    }
    for (int64_t i = 0; i < n; i++) x[i] = amp * ((float)rand() / RAND_MAX - 0.5f);
    return x;
}

// Seconds per call of fwd (which 0) or bwd (which 1): the fastest single call of those made in 1.5 s (at least 5).
// On a shared machine the other processes only ever add time, so the minimum is the least disturbed figure.
static double time_call(int which, Tensor o, Tensor l, Tensor q, Tensor k, Tensor v, Tensor dq, Tensor dk, Tensor dv,
                        Tensor dout, float scale) {
    const Backend *b = backend_get("cpu");
    double best = 1e30, start = omp_get_wtime();
    for (int reps = 0; reps < 5 || omp_get_wtime() - start < 1.5; reps++) {
        double t0 = omp_get_wtime();
        if (which == 0) b->attention_forward(o, l, q, k, v, scale);
        else b->attention_backward(dq, dk, dv, dout, q, k, v, o, l, scale);
        double t = omp_get_wtime() - t0;
        best = t < best ? t : best;
    }
    return best;
}

int main(void) {
    // (B, T, H, dqk, dv): configs/tiny.yaml's micro-batch (dqk = 16 nope + 8 rope); a longer, wider one.
    static const int shapes[][5] = {{8, 128, 4, 24, 16}, {2, 512, 8, 64, 64}};
    double load[3] = {0};
    FILE *f = fopen("/proc/loadavg", "r"); // the other processes' share of the machine, to read the figures by
    if (f) {
        if (fscanf(f, "%lf %lf %lf", &load[0], &load[1], &load[2]) != 3) load[0] = load[1] = load[2] = -1;
        fclose(f);
    }
    printf("threads %d, load average %.2f %.2f %.2f (fastest call of each)\n%-22s %9s %9s %9s %9s\n",
           omp_get_max_threads(), load[0], load[1], load[2], "B,T,H,dqk,dv", "fwd ms", "fwd GF/s",
           "bwd ms", "bwd GF/s");
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int B = shapes[s][0], T = shapes[s][1], H = shapes[s][2], D = shapes[s][3], DV = shapes[s][4];
        int64_t nq = (int64_t)B * T * H * D, nv = (int64_t)B * T * H * DV, nl = (int64_t)B * H * T;
        float *q = rand_buf(nq, 2.0f), *k = rand_buf(nq, 2.0f), *v = rand_buf(nv, 2.0f), *g = rand_buf(nv, 2.0f);
        float *o = rand_buf(nv, 0), *l = rand_buf(nl, 0), *dq = rand_buf(nq, 0), *dk = rand_buf(nq, 0);
        float *dv = rand_buf(nv, 0);
        Tensor tq = tensor_4d(q, DT_F32, B, T, H, D), tk = tensor_4d(k, DT_F32, B, T, H, D);
        Tensor tv = tensor_4d(v, DT_F32, B, T, H, DV), tg = tensor_4d(g, DT_F32, B, T, H, DV);
        Tensor to = tensor_4d(o, DT_F32, B, T, H, DV), tl = tensor_3d(l, DT_F32, B, H, T);
        Tensor tdq = tensor_4d(dq, DT_F32, B, T, H, D), tdk = tensor_4d(dk, DT_F32, B, T, H, D);
        Tensor tdv = tensor_4d(dv, DT_F32, B, T, H, DV);
        const float scale = 1.0f / sqrtf((float)D);
        // Causal pairs (j <= i) per (b, h); forward: q.k and p.v; backward: q.k, dO.v, P^T dO, dS k, dS^T q.
        const double pairs = (double)B * H * T * (T + 1) / 2;
        const double fwd_flop = 2.0 * pairs * (D + DV), bwd_flop = 2.0 * pairs * (3 * D + 2 * DV);
        double tf = time_call(0, to, tl, tq, tk, tv, tdq, tdk, tdv, tg, scale);
        double tb = time_call(1, to, tl, tq, tk, tv, tdq, tdk, tdv, tg, scale);
        char name[64];
        snprintf(name, sizeof name, "%d,%d,%d,%d,%d", B, T, H, D, DV);
        printf("%-22s %9.3f %9.2f %9.3f %9.2f\n", name, tf * 1e3, fwd_flop / tf / 1e9, tb * 1e3,
               bwd_flop / tb / 1e9);
        free(q), free(k), free(v), free(g), free(o), free(l), free(dq), free(dk), free(dv);
    }
    return 0;
}
