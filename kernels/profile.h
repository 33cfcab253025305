// A per-op profiler for any backend: profile_wrap(inner) returns a Backend with the same ops, each of which
// synchronizes the inner backend, takes a monotonic timestamp, runs the inner op, synchronizes again and adds
// (calls, seconds) to the op's row, plus the work the op's arguments define:
//   FLOPs  matmul_forward and matmul_forward_residual 2 M N K; matmul_backward 2 M N K per product it computes
//          (dinp and/or dw non-NULL);
//          grouped_matmul_* the same summed over the R rows of the segments (2 R N K per product);
//          attention (causal, the visible half of the scores, as tests/gpu/bench_ops_gpu.c counts it):
//          forward 2 B H (T^2 / 2) (D + DV), backward 2 B H (T^2 / 2) (3 D + 2 DV) (2.5x the forward when D = DV).
//   bytes  alloc, upload, download, copy, zero: the bytes argument.
// Each op belongs to one family (gemm, grouped gemm, attention, norm, elementwise/copy, embedding+loss,
// moe routing, optimizer, memory/transfer) through one fixed table in profile.c; a Backend member missing from that
// table is a compile error there.
//
// Because every op is synchronized on both sides, nothing overlaps (host work with device work, one kernel with the
// next), so a profiled step is slower than an unprofiled one: the profile says where the time goes, an unprofiled
// run says how fast the step is.
//
// One process holds one wrapper: the inner backend and the counters are process-wide statics (the trainer runs one
// backend per process). profile_wrap dies when asked to wrap a second, different backend. Not thread-safe: call the
// wrapped ops from one thread, as the model and optimizer do.
#ifndef PROFILE_H
#define PROFILE_H

#include <stdint.h>
#include <stdio.h>
#include "kernels/ops.h"

// What one op (or one family) accumulated since the last profile_reset.
typedef struct {
    const char *op;       // the Backend member's name ("matmul_forward"); NULL for a family row
    const char *family;   // "gemm", "grouped gemm", ...
    int64_t calls;
    double seconds;       // synchronized wall time inside the op
    double flops;         // 0 when has_flops is 0
    double bytes;         // 0 when has_bytes is 0
    int has_flops, has_bytes;
} ProfileStat;

// The wrapped table (process-wide; wrapping the same inner backend again returns the same table). Its name is the
// inner backend's name. Counting starts at once; the caller resets after warm-up.
const Backend *profile_wrap(const Backend *inner);
// Zeroes every counter, the step count and the wall clock (e.g. after the first, warm-up, step).
void profile_reset(void);
// Active (the default): ops are synchronized and counted. Inactive: the wrapped ops call straight through, and the
// wall clock of the profile stops (for evaluation and checkpoints inside a profiled run).
void profile_set_active(int active);
// One more training step in the profiled span (the report gives ms per step).
void profile_step_done(void);

// The ops in table order (the Backend's member order): i in [0, profile_n_ops()).
int profile_n_ops(void);
ProfileStat profile_op_stat(int i);
// The row of op `name`; dies naming it when no Backend op has that name.
ProfileStat profile_get(const char *name);

// The GEMM ops' calls split by shape (the per-op rows above sum them): op, M (the rows of inp; grouped: the rows
// the segments covered), N and K (w's), experts (grouped: E; dense: 0) and the products ("fwd"; backward: "dinp",
// "dw" or "dinp+dw"). Rows in first-seen order; at most 96 shapes, later ones add to the last row.
typedef struct {
    const char *op, *products;
    int64_t m, n, k, experts, calls;
    double seconds, flops;
} ProfileGemmShape;
int profile_n_gemm_shapes(void);
ProfileGemmShape profile_gemm_shape(int i);

// A table of the ops that ran (sorted by time): op, family, calls, total ms, ms per call, % of the profiled op time,
// TFLOP/s and GB/s where the work is known; then the per-family summary, sorted by time; then the GEMM shapes,
// sorted by time.
void profile_report(FILE *out);
// The same data as JSON (every op, also those that did not run), written atomically: <path>.tmp, then rename.
void profile_write_json(const char *path);

#endif
