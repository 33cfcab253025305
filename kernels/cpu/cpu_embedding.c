// Token embedding on the cpu: a row lookup forward, a scatter-add backward.
#include "kernels/cpu/cpu_ops.h"
#include "train/check.h"

#include <string.h>

// Every id must index a row of the table: a bad token id is a data bug that must stop the run, not read garbage.
static void check_ids(const char *op, const int32_t *id, int64_t N, int64_t V) {
    for (int64_t n = 0; n < N; n++)
        if (id[n] < 0 || id[n] >= V)
            die("%s: ids[%lld] = %d is outside the table's %lld rows", op, (long long)n, id[n], (long long)V);
}

// out (N, d) = table (V, d)[ids (N)]
void cpu_embedding_forward(Tensor out, Tensor ids, Tensor table) {
    const char *op = "embedding_forward";
    cpu_need(op, "out", &out, DT_F32, 0);
    cpu_need(op, "ids", &ids, DT_I32, 0);
    cpu_need(op, "table", &table, DT_F32, 2);
    int64_t N = tensor_numel(&ids), V = table.shape[0], d = table.shape[1];
    cpu_agree(op, "out", &out, cpu_cols(&out), "table", &table, d, "d");
    cpu_agree(op, "out", &out, cpu_rows(&out), "ids", &ids, N, "N");
    const int32_t *id = ids.data;
    check_ids(op, id, N, V);
    const float *tab = table.data;
    float *y = out.data;
#pragma omp parallel for schedule(static) if (N * d > CPU_PAR_MIN)
    for (int64_t n = 0; n < N; n++) memcpy(y + n * d, tab + (int64_t)id[n] * d, (size_t)d * sizeof(float));
}

// dtable (V, d) += scatter of dout (N, d) by ids. Threads own column blocks so repeated ids never race and each
// row's contributions are summed in token order.
void cpu_embedding_backward(Tensor dtable, Tensor dout, Tensor ids) {
    const char *op = "embedding_backward";
    cpu_need(op, "dtable", &dtable, DT_F32, 2);
    cpu_need(op, "dout", &dout, DT_F32, 0);
    cpu_need(op, "ids", &ids, DT_I32, 0);
    int64_t N = tensor_numel(&ids), V = dtable.shape[0], d = dtable.shape[1];
    cpu_agree(op, "dout", &dout, cpu_cols(&dout), "dtable", &dtable, d, "d");
    cpu_agree(op, "dout", &dout, cpu_rows(&dout), "ids", &ids, N, "N");
    const int32_t *id = ids.data;
    check_ids(op, id, N, V);
    const float *g = dout.data;
    float *dt = dtable.data;
    const int64_t CB = 64;
#pragma omp parallel for schedule(static) if (N * d > CPU_PAR_MIN)
    for (int64_t j0 = 0; j0 < d; j0 += CB) {
        int64_t j1 = j0 + CB < d ? j0 + CB : d;
        for (int64_t n = 0; n < N; n++) {
            float *row = dt + (int64_t)id[n] * d;
            const float *gn = g + n * d;
            for (int64_t j = j0; j < j1; j++) row[j] += gn[j];
        }
    }
}
