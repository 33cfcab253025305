// Benchmark of the cpu backend's matmul (forward, dinp, dw) on the tiny model's shapes and one larger square:
// prints GFLOP/s per shape. Not a test: timings vary with the machine and its load.
//   make bench-cpu        (or OMP_NUM_THREADS=1 make bench-cpu)
#include "kernels/ops.h"

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

static float *rand_buf(int64_t n) {
    float *x = malloc((size_t)n * sizeof(float));
    if (!x) { fprintf(stderr, "bench_cpu_matmul: out of memory\n"); exit(1); }
    for (int64_t i = 0; i < n; i++) x[i] = (float)rand() / RAND_MAX - 0.5f;
    return x;
}

int main(void) {
    const Backend *b = backend_get("cpu");
    // (M, N, K): tiny.yaml's micro-batch of 8 x 128 tokens through dim 64 -> q_lora 48, FFN 192, head 320; a square.
    static const int shapes[][3] = {{1024, 48, 64}, {1024, 192, 64}, {1024, 64, 192}, {1024, 320, 64}, {512, 512, 512}, {500, 500, 500}, {2048, 1024, 256}};
    printf("threads %d\n%-18s %10s %10s %10s\n", omp_get_max_threads(), "M x N x K", "fwd GF/s", "dinp GF/s", "dw GF/s");
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
        float *x = rand_buf((int64_t)M * K), *w = rand_buf((int64_t)N * K), *y = rand_buf((int64_t)M * N);
        float *dx = rand_buf((int64_t)M * K), *dw = rand_buf((int64_t)N * K);
        Tensor tx = tensor_2d(x, DT_F32, M, K), tw = tensor_2d(w, DT_F32, N, K), ty = tensor_2d(y, DT_F32, M, N);
        Tensor tdx = tensor_2d(dx, DT_F32, M, K), tdw = tensor_2d(dw, DT_F32, N, K), none = tensor_2d(NULL, DT_F32, 0, 0);
        double flop = 2.0 * M * N * K, gf[3];
        for (int which = 0; which < 3; which++) {
            int reps = 0;
            double t0 = omp_get_wtime(), t;
            do {
                if (which == 0) b->matmul_forward(ty, tx, tw, 0);
                else if (which == 1) b->matmul_backward(tdx, none, ty, tx, tw, 0);
                else b->matmul_backward(none, tdw, ty, tx, tw, 0);
                reps++;
                t = omp_get_wtime() - t0;
            } while (t < 0.3);
            gf[which] = flop * reps / t / 1e9;
        }
        char name[64];
        snprintf(name, sizeof name, "%dx%dx%d", M, N, K);
        printf("%-18s %10.2f %10.2f %10.2f\n", name, gf[0], gf[1], gf[2]);
        free(x), free(w), free(y), free(dx), free(dw);
    }
    return 0;
}
