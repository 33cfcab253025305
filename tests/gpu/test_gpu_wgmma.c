// The wgmma building blocks (kernels/cuda/cuda_wgmma.cuh) on one warpgroup: C (64 x N) = A (64 x 64) * B (64 x N)
// for N = 64, 128, 192, 256 and every operand layout the wgmma kernels use (A K-major, MN-major or from registers;
// B K-major or MN-major), through tests/gpu/wgmma_probe.cu. Inputs are small integers (exact in BF16, and every
// product and partial sum is exact in FP32), so the result must equal the host's integer product exactly: a wrong
// swizzle, descriptor field or fragment mapping moves values and fails. The output starts poisoned (NaN).
#include "tests/test.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int wgmma_probe(float *C, const float *A, const float *B, int N, int a_layout, int b_layout, uint32_t lbo,
                uint32_t sbo);

// Max |C - A B| over the tile, or INFINITY for a non-finite element.
static double probe_error(int N, int a_layout, int b_layout, uint32_t lbo, uint32_t sbo, unsigned seed) {
    float *A = malloc(64 * 64 * sizeof(float)), *B = malloc((size_t)64 * N * sizeof(float));
    float *C = malloc((size_t)64 * N * sizeof(float));
    srand(seed);
    for (int i = 0; i < 64 * 64; i++) A[i] = (float)(rand() % 9 - 4);
    for (int i = 0; i < 64 * N; i++) B[i] = (float)(rand() % 9 - 4);
    ASSERT_EQ_INT(wgmma_probe(C, A, B, N, a_layout, b_layout, lbo, sbo), 0);
    double worst = 0;
    for (int m = 0; m < 64; m++)
        for (int n = 0; n < N; n++) {
            double want = 0;
            for (int k = 0; k < 64; k++) want += (double)A[m * 64 + k] * B[k * N + n];
            double got = C[m * N + n];
            double e = isfinite(got) ? fabs(got - want) : INFINITY;
            if (e > worst) worst = e;
        }
    free(A);
    free(B);
    free(C);
    return worst;
}

TEST(gpu_wgmma_operand_layouts_exact) {
    static const char *an[] = {"A K-major", "A MN-major", "A registers"}, *bn[] = {"B K-major", "B MN-major"};
    static const int Ns[] = {64, 128, 192, 256};
    int failures = 0;
    for (int ni = 0; ni < 4; ni++)
        for (int a = 0; a < 3; a++)
            for (int b = 0; b < 2; b++) {
                double e = probe_error(Ns[ni], a, b, 0, 0, 1000u + 10u * ni + 3u * a + b);
                if (e != 0) {
                    failures++;
                    // The other reading of the MN-major descriptor fields (LBO / SBO swapped), as a diagnosis.
                    double e2 = (a == 1 || b == 1) ? probe_error(Ns[ni], a, b, 1024, 8192, 7u) : NAN;
                    printf("  N %d, %s, %s: max error %g (LBO/SBO swapped: %g)\n", Ns[ni], an[a], bn[b], e, e2);
                }
            }
    ASSERT_MSG(failures == 0, "%d of 24 wgmma operand-layout cases differ from the exact product", failures);
}
