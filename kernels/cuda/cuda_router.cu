// MoE routing and the sequence-wise balance loss on the GPU; the semantics are the cpu op's (kernels/cpu/cpu_router.c):
//   scores = sigmoid(logits) (or softmax over E); biased = scores + bias; groups of E/G consecutive experts scored by
//   the sum of their top group_score_topk biased scores (summed in pick order); the topk_groups best groups kept;
//   top_k experts picked among them by biased score; gates = unbiased scores / (their sum + 1e-20) (sigmoid) *
//   route_scale. Every pick is the cpu's sequential upward scan with a strict '>': ties go to the lower index, NaNs
//   never win, and if the first candidate is NaN the scan keeps it (warp_pick reproduces exactly that).
// One warp per token, its scores, biased scores and flags in shared memory. The only difference from the cpu
// op is expf (CUDA's vs glibc's, both within 2 ulp), so a choice can differ only at a near tie.
#include "kernels/cuda/cuda_common.cuh"

#include <limits.h>
#include <math.h>

#define GATE_DENOM_EPS 1e-20f

enum { ROUTE_WARPS = 4 };

// The index the cpu's argmax_allowed picks among i in [0, n) with allowed[i] (allowed NULL: all): the first allowed
// index if its value is NaN, else the lowest index holding the largest non-NaN value; -1 if none is allowed.
// Called by the whole warp; every lane returns the same index.
__device__ int warp_pick(const float *v, const unsigned char *allowed, int n) {
    const int lane = threadIdx.x & 31;
    int first = INT_MAX, bi = -1;
    float bv = 0.0f;
    for (int i = lane; i < n; i += 32) {
        if (allowed && !allowed[i]) continue;
        if (first == INT_MAX) first = i;
        float x = v[i];
        if (isnan(x)) continue;
        if (bi < 0 || x > bv) bv = x, bi = i;
    }
    for (int o = 16; o > 0; o >>= 1) first = min(first, __shfl_xor_sync(0xffffffffu, first, o));
    if (first == INT_MAX) return -1;
    if (isnan(v[first])) return first;
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (oi >= 0 && (bi < 0 || ov > bv || (ov == bv && oi < bi))) bv = ov, bi = oi;
    }
    return bi;
}

// Per-warp shared memory: sc (E) and biased (E) floats, gscore (G) floats, allowed (E) and gallowed (G) bytes.
static size_t route_warp_smem(int E, int G) { return cuda_align256((size_t)(2 * E + G) * 4 + (size_t)E + (size_t)G); }

__global__ void moe_route_kernel(int32_t *topk_idx, float *gates, float *scores, const float *logits, const float *bias,
                                 int64_t N, RouterParams p, size_t warp_smem) {
    extern __shared__ __align__(16) unsigned char route_sm[];
    const int E = p.n_experts, K = p.top_k, G = p.n_groups, per = E / G;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    unsigned char *base = route_sm + warp * warp_smem;
    float *sc = (float *)base, *biased = sc + E, *gscore = biased + E;
    unsigned char *allowed = (unsigned char *)(gscore + G), *gallowed = allowed + E;
    for (int64_t t = (int64_t)blockIdx.x * ROUTE_WARPS + warp; t < N; t += (int64_t)gridDim.x * ROUTE_WARPS) {
        const float *xt = logits + t * E;
        float *st = scores + t * E;
        if (p.score_func == 0) {
            for (int e = lane; e < E; e += 32) sc[e] = 1.0f / (1.0f + expf(-xt[e]));
        } else {
            float mx = -INFINITY;
            for (int e = lane; e < E; e += 32) mx = fmaxf(mx, xt[e]);
            mx = warp_max(mx);
            float sum = 0.0f;
            for (int e = lane; e < E; e += 32) sum += (sc[e] = expf(xt[e] - mx));
            sum = warp_sum(sum);
            for (int e = lane; e < E; e += 32) sc[e] /= sum;
        }
        for (int e = lane; e < E; e += 32) {
            st[e] = sc[e];
            biased[e] = sc[e] + (bias ? bias[e] : 0.0f);
            allowed[e] = 1;
        }
        __syncwarp();
        if (G > 1) {
            // allowed[] doubles as "not yet counted" flags while summing each group's top scores.
            for (int g = 0; g < G; g++) {
                float sum = 0.0f;
                for (int r = 0; r < p.group_score_topk; r++) {
                    int i = warp_pick(biased + g * per, allowed + g * per, per);
                    sum += biased[g * per + i];
                    __syncwarp();
                    if (lane == 0) allowed[g * per + i] = 0;
                    __syncwarp();
                }
                if (lane == 0) gscore[g] = sum, gallowed[g] = 1;
            }
            for (int e = lane; e < E; e += 32) allowed[e] = 0;
            __syncwarp();
            for (int r = 0; r < p.topk_groups; r++) {
                int g = warp_pick(gscore, gallowed, G);
                __syncwarp();
                if (lane == 0) gallowed[g] = 0;
                for (int i = lane; i < per; i += 32) allowed[g * per + i] = 1;
                __syncwarp();
            }
        }
        float sum = 0.0f, mine = 0.0f; // lane k keeps the unbiased score of pick k
        for (int k = 0; k < K; k++) {
            int e = warp_pick(biased, allowed, E);
            __syncwarp();
            if (lane == 0) {
                allowed[e] = 0;
                topk_idx[t * K + k] = e;
            }
            if (lane == k) mine = sc[e];
            sum += sc[e];
            __syncwarp();
        }
        const float mul = p.score_func == 0 ? p.route_scale / (sum + GATE_DENOM_EPS) : p.route_scale;
        if (lane < K) gates[t * K + lane] = mine * mul;
        __syncwarp(); // sc and flags are rewritten for the next token
    }
}

static void check_params(const char *op, RouterParams p) {
    if (p.n_experts <= 0 || p.top_k <= 0 || p.n_groups <= 0 || p.n_experts % p.n_groups)
        die("%s: n_experts %d must be positive and divisible by n_groups %d (top_k %d)", op, p.n_experts, p.n_groups,
            p.top_k);
    int per_group = p.n_experts / p.n_groups;
    if (p.topk_groups <= 0 || p.topk_groups > p.n_groups)
        die("%s: topk_groups %d must be in [1, n_groups = %d]", op, p.topk_groups, p.n_groups);
    if (p.group_score_topk <= 0 || p.group_score_topk > per_group)
        die("%s: group_score_topk %d must be in [1, experts per group = %d]", op, p.group_score_topk, per_group);
    if (p.top_k > p.topk_groups * per_group)
        die("%s: top_k %d exceeds the %d experts in the %d kept groups", op, p.top_k, p.topk_groups * per_group,
            p.topk_groups);
    if (p.score_func != 0 && p.score_func != 1)
        die("%s: score_func %d is neither 0 (sigmoid) nor 1 (softmax)", op, p.score_func);
    if (p.top_k > 32) die("%s: top_k %d: the cuda router supports at most 32", op, p.top_k);
}

extern "C" void cuda_moe_route(Tensor topk_idx, Tensor gates, Tensor scores, Tensor logits, Tensor bias,
                               RouterParams p) {
    const char *op = "moe_route";
    check_params(op, p);
    const int E = p.n_experts, K = p.top_k;
    cpu_need(op, "logits", &logits, DT_F32, 2);
    cpu_need(op, "scores", &scores, DT_F32, 2);
    cpu_need(op, "topk_idx", &topk_idx, DT_I32, 2);
    cpu_need(op, "gates", &gates, DT_F32, 2);
    const int64_t N = logits.shape[0];
    cpu_expect(op, "logits", &logits, logits.shape[1], E, "columns (n_experts)");
    cpu_agree(op, "scores", &scores, scores.shape[0], "logits", &logits, N, "N");
    cpu_expect(op, "scores", &scores, scores.shape[1], E, "columns (n_experts)");
    cpu_agree(op, "topk_idx", &topk_idx, topk_idx.shape[0], "logits", &logits, N, "N");
    cpu_expect(op, "topk_idx", &topk_idx, topk_idx.shape[1], K, "columns (top_k)");
    cpu_agree(op, "gates", &gates, gates.shape[0], "logits", &logits, N, "N");
    cpu_expect(op, "gates", &gates, gates.shape[1], K, "columns (top_k)");
    const float *bd = NULL;
    if (bias.data) {
        cpu_need(op, "bias", &bias, DT_F32, 1);
        cpu_expect(op, "bias", &bias, bias.shape[0], E, "length (n_experts)");
        bd = (const float *)bias.data;
    }
    if (N == 0) return;
    const size_t ws = route_warp_smem(E, p.n_groups), smem = ws * ROUTE_WARPS;
    if (smem > 48 * 1024) die("%s: %d experts need %zu bytes of shared memory per block (limit 48 KB)", op, E, smem);
    unsigned grid = cuda_grid(N, ROUTE_WARPS);
    moe_route_kernel<<<grid, ROUTE_WARPS * 32, smem, cuda_stream()>>>((int32_t *)topk_idx.data, (float *)gates.data,
                                                                     (float *)scores.data, (const float *)logits.data,
                                                                     bd, N, p, ws);
    CUDA_LAUNCH_CHECK("moe_route_kernel");
}

// See cpu_moe_route_backward for the formulas; dlogits' row serves as the dscores accumulator, then becomes dlogits.
__global__ void moe_route_bwd_kernel(float *dlogits, const float *dgates, const float *extra, const float *scores,
                                     const int32_t *topk_idx, int64_t N, RouterParams p, CudaDevError *err) {
    const int E = p.n_experts, K = p.top_k;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int64_t t = (int64_t)blockIdx.x * ROUTE_WARPS + warp; t < N; t += (int64_t)gridDim.x * ROUTE_WARPS) {
        const float *st = scores + t * E, *dgt = dgates + t * K;
        const int32_t *it = topk_idx + t * K;
        float *ds = dlogits + t * E;
        bool bad = false;
        for (int k = 0; k < K; k++)
            if (it[k] < 0 || it[k] >= E) bad = true;
        if (bad) { // uniform across the warp
            if (lane == 0)
                for (int k = 0; k < K; k++)
                    if (it[k] < 0 || it[k] >= E) dev_error(err, ERR_ROUTE_BWD_IDX, t * K + k, it[k], E);
            continue;
        }
        for (int e = lane; e < E; e += 32) ds[e] = extra ? extra[t * E + e] : 0.0f;
        __syncwarp();
        if (p.score_func == 0) {
            float S = 0.0f, dot = 0.0f;
            for (int k = 0; k < K; k++) {
                S += st[it[k]];
                dot += dgt[k] * st[it[k]];
            }
            const float inv = 1.0f / (S + GATE_DENOM_EPS);
            if (lane < K) ds[it[lane]] += p.route_scale * (dgt[lane] * inv - dot * inv * inv);
            __syncwarp();
            for (int e = lane; e < E; e += 32) ds[e] *= st[e] * (1.0f - st[e]);
        } else {
            if (lane < K) ds[it[lane]] += p.route_scale * dgt[lane];
            __syncwarp();
            float dot = 0.0f;
            for (int e = lane; e < E; e += 32) dot += ds[e] * st[e];
            dot = warp_sum(dot);
            for (int e = lane; e < E; e += 32) ds[e] = st[e] * (ds[e] - dot);
        }
        __syncwarp();
    }
}

extern "C" void cuda_moe_route_backward(Tensor dlogits, Tensor dgates, Tensor dscores_extra, Tensor scores,
                                        Tensor topk_idx, RouterParams p) {
    const char *op = "moe_route_backward";
    check_params(op, p);
    const int E = p.n_experts, K = p.top_k;
    cpu_need(op, "dlogits", &dlogits, DT_F32, 2);
    cpu_need(op, "dgates", &dgates, DT_F32, 2);
    cpu_need(op, "scores", &scores, DT_F32, 2);
    cpu_need(op, "topk_idx", &topk_idx, DT_I32, 2);
    const int64_t N = scores.shape[0];
    cpu_expect(op, "scores", &scores, scores.shape[1], E, "columns (n_experts)");
    cpu_agree(op, "dlogits", &dlogits, dlogits.shape[0], "scores", &scores, N, "N");
    cpu_expect(op, "dlogits", &dlogits, dlogits.shape[1], E, "columns (n_experts)");
    cpu_agree(op, "dgates", &dgates, dgates.shape[0], "scores", &scores, N, "N");
    cpu_expect(op, "dgates", &dgates, dgates.shape[1], K, "columns (top_k)");
    cpu_agree(op, "topk_idx", &topk_idx, topk_idx.shape[0], "scores", &scores, N, "N");
    cpu_expect(op, "topk_idx", &topk_idx, topk_idx.shape[1], K, "columns (top_k)");
    const float *extra = NULL;
    if (dscores_extra.data) {
        cpu_need(op, "dscores_extra", &dscores_extra, DT_F32, 2);
        cpu_agree(op, "dscores_extra", &dscores_extra, dscores_extra.shape[0], "scores", &scores, N, "N");
        cpu_expect(op, "dscores_extra", &dscores_extra, dscores_extra.shape[1], E, "columns (n_experts)");
        extra = (const float *)dscores_extra.data;
    }
    if (N == 0) return;
    moe_route_bwd_kernel<<<cuda_grid(N, ROUTE_WARPS), ROUTE_WARPS * 32, 0, cuda_stream()>>>(
        (float *)dlogits.data, (const float *)dgates.data, extra, (const float *)scores.data,
        (const int32_t *)topk_idx.data, N, p, cuda_dev_error());
    CUDA_LAUNCH_CHECK("moe_route_bwd_kernel");
}

// ---- sequence-wise balance loss (see cpu_moe_balance_loss for the formulas) ----

// cnt (B, E) += routed pairs per sequence and expert (integer atomics: exact and order-free).
__global__ void balance_count_kernel(int *cnt, const int32_t *idx, int64_t n_pairs, int T_, int K, int E,
                                     CudaDevError *err) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n_pairs; i += (int64_t)gridDim.x * blockDim.x) {
        int e = idx[i];
        if (e < 0 || e >= E) {
            dev_error(err, ERR_BALANCE_IDX, i, e, E);
            continue;
        }
        atomicAdd(&cnt[(i / K / T_) * E + e], 1);
    }
}

// One warp per token: Z_t = sum_e s (double) and, when ds is wanted, ds = c (f_e / Z - sum_i f_i s_i / Z^2).
__global__ void balance_token_kernel(double *Z, float *ds, const float *scores, const int *cnt, int64_t N, int T_,
                                     int E, double f_scale, double c) {
    const int lane = threadIdx.x & 31;
    for (int64_t t = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5; t < N;
         t += ((int64_t)gridDim.x * blockDim.x) >> 5) {
        const float *st = scores + t * E;
        const int *cb = cnt + (t / T_) * E;
        double z = 0.0, fs = 0.0;
        for (int e = lane; e < E; e += 32) {
            z += st[e];
            fs += (double)cb[e] * f_scale * st[e];
        }
        z = warp_sum_d(z);
        fs = warp_sum_d(fs);
        if (lane == 0) Z[t] = z;
        if (ds)
            for (int e = lane; e < E; e += 32) ds[t * E + e] = (float)(c * ((double)cb[e] * f_scale / z - fs / (z * z)));
    }
}

// P_e = sum_t s / Z / T per sequence, in two deterministic stages (a single thread per (b, e) walking all T tokens
// took 1.3 ms per call at T 4096, 5% of a bench step): block (chunk c, sequence b) sums its BALANCE_CHUNK tokens in
// order into part[b, c, e] (threads over e: coalesced rows of scores), then one thread per (b, e) sums the chunks in
// order. Fixed order both times: the same bits on every run.
enum { BALANCE_CHUNK = 64 };
__global__ void balance_p_partial_kernel(double *part, const float *scores, const double *Z, int T_, int E,
                                         int n_chunks) {
    const int c = blockIdx.x, b = blockIdx.y;
    const int64_t t0 = (int64_t)c * BALANCE_CHUNK, t1 = t0 + BALANCE_CHUNK < T_ ? t0 + BALANCE_CHUNK : T_;
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        double P = 0.0;
        for (int64_t t = t0; t < t1; t++)
            P += (double)scores[((int64_t)b * T_ + t) * E + e] / Z[(int64_t)b * T_ + t] / T_;
        part[((int64_t)b * n_chunks + c) * E + e] = P;
    }
}

// v2 (DSV3_MEMOPS): the same sums, the same order, but each thread loads 8 tokens' scores and Z before adding them:
// v1's loop waits for one load pair per token (64 dependent DRAM round trips per thread).
__global__ void balance_p_partial_v2_kernel(double *part, const float *scores, const double *Z, int T_, int E,
                                            int n_chunks) {
    const int c = blockIdx.x, b = blockIdx.y;
    const int64_t t0 = (int64_t)c * BALANCE_CHUNK, t1 = t0 + BALANCE_CHUNK < T_ ? t0 + BALANCE_CHUNK : T_;
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        double P = 0.0;
        for (int64_t t = t0; t < t1; t += 8) {
            float sv[8];
            double zv[8];
#pragma unroll
            for (int i = 0; i < 8; i++)
                if (t + i < t1) sv[i] = scores[((int64_t)b * T_ + t + i) * E + e], zv[i] = Z[(int64_t)b * T_ + t + i];
#pragma unroll
            for (int i = 0; i < 8; i++)
                if (t + i < t1) P += (double)sv[i] / zv[i] / T_;
        }
        part[((int64_t)b * n_chunks + c) * E + e] = P;
    }
}

// One thread per (b, e): L[b, e] = f_e * P_e.
__global__ void balance_p_kernel(double *L, const double *part, const int *cnt, int B, int E, int n_chunks,
                                 double f_scale) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (int64_t)B * E) return;
    const int64_t b = i / E, e = i % E;
    double P = 0.0;
    for (int c = 0; c < n_chunks; c++) P += part[(b * n_chunks + c) * E + e];
    L[i] = (double)cnt[i] * f_scale * P;
}

// One thread: mean over sequences of alpha * sum_e L[b, e], in the cpu op's order (rounded to F32 at the end).
__global__ void balance_total_kernel(float *out, const double *L, int B, int E, double alpha) {
    double total = 0.0;
    for (int b = 0; b < B; b++) {
        double l = 0.0;
        for (int e = 0; e < E; e++) l += L[(int64_t)b * E + e];
        total += alpha * l;
    }
    *out = (float)(total / B);
}

// Nothing here waits for the device: the loss stays in backend memory until the caller reads it.
extern "C" void cuda_moe_balance_loss(Tensor loss, Tensor dscores, Tensor scores, Tensor topk_idx, int B, int T,
                                      int top_k, float alpha, float grad_scale) {
    const char *op = "moe_balance_loss";
    cpu_need(op, "scores", &scores, DT_F32, 2);
    cpu_need(op, "topk_idx", &topk_idx, DT_I32, 2);
    const int64_t E = scores.shape[1];
    if (B <= 0 || T <= 0 || top_k <= 0) die("%s: B %d, T %d and top_k %d must be positive", op, B, T, top_k);
    cpu_expect(op, "scores", &scores, scores.shape[0], (int64_t)B * T, "rows (B * T)");
    cpu_agree(op, "topk_idx", &topk_idx, topk_idx.shape[0], "scores", &scores, (int64_t)B * T, "rows (B * T)");
    cpu_expect(op, "topk_idx", &topk_idx, topk_idx.shape[1], top_k, "columns (top_k)");
    float *ds = NULL;
    if (dscores.data) {
        cpu_need(op, "dscores", &dscores, DT_F32, 2);
        cpu_agree(op, "dscores", &dscores, dscores.shape[0], "scores", &scores, (int64_t)B * T, "rows");
        cpu_agree(op, "dscores", &dscores, dscores.shape[1], "scores", &scores, E, "E");
        ds = (float *)dscores.data;
    }
    if (loss.data) {
        cpu_need(op, "loss", &loss, DT_F32, 1);
        cpu_expect(op, "loss", &loss, loss.shape[0], 1, "length 1");
    }
    if (E <= 0 || E > INT32_MAX) die("%s: scores have %lld columns", op, (long long)E);
    const int64_t N = (int64_t)B * T;
    const size_t cnt_b = cuda_align256((size_t)B * E * sizeof(int)), z_b = cuda_align256((size_t)N * sizeof(double));
    const size_t l_b = cuda_align256((size_t)B * E * sizeof(double));
    const int n_chunks = (T + BALANCE_CHUNK - 1) / BALANCE_CHUNK;
    const size_t part_b = cuda_align256((size_t)B * n_chunks * E * sizeof(double));
    char *scr = (char *)cuda_scratch(cnt_b + z_b + l_b + 256 + part_b);
    int *cnt = (int *)scr;
    double *Z = (double *)(scr + cnt_b), *L = (double *)(scr + cnt_b + z_b);
    cudaStream_t s = cuda_stream();
    const double f_scale = (double)E / ((double)top_k * T);
    const double c = (double)alpha * grad_scale / ((double)B * T);
    CUDA_CHECK(cudaMemsetAsync(cnt, 0, (size_t)B * E * sizeof(int), s));
    balance_count_kernel<<<cuda_grid(N * top_k, 256), 256, 0, s>>>(cnt, (const int32_t *)topk_idx.data, N * top_k, T,
                                                                   top_k, (int)E, cuda_dev_error());
    CUDA_LAUNCH_CHECK("balance_count_kernel");
    balance_token_kernel<<<cuda_grid(N * 32, 256), 256, 0, s>>>(Z, ds, (const float *)scores.data, cnt, N, T, (int)E,
                                                                f_scale, c);
    CUDA_LAUNCH_CHECK("balance_token_kernel");
    if (!loss.data) return; // the gradient alone (the backward pass) needs no P
    double *part = (double *)(scr + cnt_b + z_b + l_b + 256);
    if (cuda_memops_v2(op))
        balance_p_partial_v2_kernel<<<dim3((unsigned)n_chunks, (unsigned)B), E < 256 ? 64 : 256, 0, s>>>(
            part, (const float *)scores.data, Z, T, (int)E, n_chunks);
    else
        balance_p_partial_kernel<<<dim3((unsigned)n_chunks, (unsigned)B), E < 256 ? 64 : 256, 0, s>>>(
            part, (const float *)scores.data, Z, T, (int)E, n_chunks);
    CUDA_LAUNCH_CHECK("balance_p_partial_kernel");
    balance_p_kernel<<<cuda_grid((int64_t)B * E, 128), 128, 0, s>>>(L, part, cnt, B, (int)E, n_chunks, f_scale);
    CUDA_LAUNCH_CHECK("balance_p_kernel");
    balance_total_kernel<<<1, 1, 0, s>>>((float *)loss.data, L, B, (int)E, (double)alpha);
    CUDA_LAUNCH_CHECK("balance_total_kernel");
}
