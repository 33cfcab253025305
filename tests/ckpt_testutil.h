// Helpers for the checkpoint and Hugging Face I/O tests: a stage's model state (params, AdamW moments, MoE biases)
// filled with values that are a pure function of (seed, tensor name, element index), so that any process can
// regenerate what another one saved, and comparisons by tensor name across different tables (pipeline / EP splits).
#ifndef CKPT_TESTUTIL_H
#define CKPT_TESTUTIL_H

#include "kernels/ops.h"
#include "model/params.h"
#include "train/ckpt.h"
#include "train/check.h"

#include <stdint.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct {
    ModelConfig mc;
    ParamTable t;
    const Backend *be;
    float *params;
    uint16_t *m, *v;
    int64_t adam_t;
    float **bias;       // n_bias rows of E
    int n_bias, E;
} TState;

static inline uint64_t tu_mix(uint64_t x) {   // splitmix64 finalizer
    x += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

static inline uint64_t tu_hash_name(const char *s) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ULL;
    return h;
}

// A float in [-1, 1) from 24 random bits: exact on every machine (no libm).
static inline float tu_value(uint64_t seed, const char *name, int64_t i) {
    uint64_t x = tu_mix(seed ^ tu_mix(tu_hash_name(name) + (uint64_t)i));
    return (float)((double)(x >> 40) * (1.0 / 8388608.0) - 1.0);
}

static inline void tstate_create(TState *s, const ModelConfig *mc, StageSpec spec) {
    memset(s, 0, sizeof *s);
    s->mc = *mc;
    s->be = &backend_cpu;
    params_build(&s->t, mc, &spec);
    s->params = s->be->alloc((size_t)s->t.total * 4);
    s->m = s->be->alloc((size_t)s->t.total * 2);
    s->v = s->be->alloc((size_t)s->t.total * 2);
    s->E = mc->n_routed_experts;
    s->n_bias = ckpt_table_moe_layers(&s->t, NULL, 0);
    s->bias = xcalloc((size_t)(s->n_bias ? s->n_bias : 1), sizeof *s->bias);
    for (int i = 0; i < s->n_bias; i++) s->bias[i] = xcalloc((size_t)s->E, sizeof(float));
}

static inline void tstate_free(TState *s) {
    s->be->free(s->params);
    s->be->free(s->m);
    s->be->free(s->v);
    for (int i = 0; i < s->n_bias; i++) free(s->bias[i]);
    free(s->bias);
    params_free(&s->t);
}

// Fills every tensor (and the padding, which must not matter) from seed. Norm weights get 1 + 0.1 u so the values
// look like a model's; the moments are arbitrary BF16 bit patterns except NaN-free.
static inline void tstate_fill(TState *s, uint64_t seed) {
    for (int64_t i = 0; i < s->t.total; i++) {   // padding: garbage that a load must not depend on
        s->params[i] = tu_value(seed, "pad", i);
        s->m[i] = (uint16_t)tu_mix(seed + (uint64_t)i);
        s->v[i] = (uint16_t)tu_mix(seed * 3 + (uint64_t)i);
    }
    for (int k = 0; k < s->t.n; k++) {
        const ParamInfo *p = &s->t.params[k];
        for (int64_t i = 0; i < p->numel; i++) {
            float u = tu_value(seed, p->name, i);
            s->params[p->offset + i] = p->no_decay ? 1.0f + 0.1f * u : 0.02f * u;
            s->m[p->offset + i] = (uint16_t)(tu_mix(seed ^ tu_hash_name(p->name) ^ (uint64_t)i) & 0x7F7F);
            s->v[p->offset + i] = (uint16_t)(tu_mix(seed + tu_hash_name(p->name) + (uint64_t)i) & 0x3F7F);
        }
    }
    int layers[64];
    ckpt_table_moe_layers(&s->t, layers, 64);
    for (int i = 0; i < s->n_bias; i++) {
        char name[64];
        snprintf(name, sizeof name, "bias.%d", layers[i]);
        for (int e = 0; e < s->E; e++) s->bias[i][e] = 0.05f * tu_value(seed, name, e);
    }
    s->adam_t = (int64_t)(seed % 1000) + 1;
}

static inline CkptStage tstate_stage(TState *s, int stage, int ep_part) {
    CkptStage c = {.table = &s->t, .be = s->be, .params = s->params, .adam_m = s->m, .adam_v = s->v,
                   .adam_t = s->adam_t, .bias = s->bias, .n_bias = s->n_bias, .stage = stage, .ep_part = ep_part};
    return c;
}

// Every tensor of `a` must be in `b` with the same bits (params, m, v); every MoE layer's bias of `a` likewise.
// Returns 1, or 0 with the first difference in why.
static inline int tstate_subset_equal(const TState *a, const TState *b, char *why, size_t n) {
    for (int k = 0; k < a->t.n; k++) {
        const ParamInfo *p = &a->t.params[k], *q = params_find(&b->t, p->name);
        if (!q) { snprintf(why, n, "%s missing", p->name); return 0; }
        if (q->numel != p->numel) { snprintf(why, n, "%s numel differs", p->name); return 0; }
        if (memcmp(a->params + p->offset, b->params + q->offset, (size_t)p->numel * 4) != 0) {
            snprintf(why, n, "params of %s differ", p->name);
            return 0;
        }
        if (memcmp(a->m + p->offset, b->m + q->offset, (size_t)p->numel * 2) != 0 ||
            memcmp(a->v + p->offset, b->v + q->offset, (size_t)p->numel * 2) != 0) {
            snprintf(why, n, "moments of %s differ", p->name);
            return 0;
        }
    }
    int la[64], lb[64];
    ckpt_table_moe_layers(&a->t, la, 64);
    int nb = ckpt_table_moe_layers(&b->t, lb, 64);
    for (int i = 0; i < a->n_bias; i++) {
        int j = 0;
        while (j < nb && lb[j] != la[i]) j++;
        if (j == nb) { snprintf(why, n, "bias of layer %d missing", la[i]); return 0; }
        if (memcmp(a->bias[i], b->bias[j], (size_t)a->E * 4) != 0) {
            snprintf(why, n, "bias of layer %d differs", la[i]);
            return 0;
        }
    }
    return 1;
}

// A barrier between the processes of a forked "world" (tests of the multi-rank protocol without MPI): every rank
// writes one byte to rank 0's pipe, rank 0 answers each rank on its own pipe.
#define TU_MAX_WORLD 8
typedef struct {
    int world, rank;
    int up[2];                    // ranks -> rank 0
    int down[TU_MAX_WORLD][2];    // rank 0 -> rank r
} TuBarrier;

static inline void tu_barrier_init(TuBarrier *b, int world) {
    memset(b, 0, sizeof *b);
    b->world = world;
    if (pipe(b->up) != 0) die("pipe failed");
    for (int r = 0; r < world; r++) if (pipe(b->down[r]) != 0) die("pipe failed");
}

static inline void tu_barrier(void *ctx) {
    TuBarrier *b = ctx;
    char c = 1;
    if (b->rank == 0) {
        for (int i = 1; i < b->world; i++) if (read(b->up[0], &c, 1) != 1) die("barrier: a rank died");
        for (int r = 1; r < b->world; r++) if (write(b->down[r][1], &c, 1) != 1) die("barrier: write failed");
    } else {
        if (write(b->up[1], &c, 1) != 1) die("barrier: write failed");
        if (read(b->down[b->rank][0], &c, 1) != 1) die("barrier: rank 0 died");
    }
}

// Saves one checkpoint with a world of pp * ep forked ranks (rank r = stage * ep + ep_rank), each holding the table
// of its stage and expert slice filled by tstate_fill(seed), with the real multi-rank protocol (pipe barrier).
// extra(rs, ctx) may add blobs to each rank's state. Returns 1 when every rank exited cleanly.
static inline StageSpec tu_layout_spec(const ModelConfig *mc, int pp, int ep, int rank) {
    StageSpec s = params_stage_spec(mc, pp, rank / ep);
    s.ep_size = ep;
    s.ep_rank = rank % ep;
    return s;
}

static inline int tu_save_world(const char *root, const ModelConfig *mc, int pp, int ep, uint64_t seed, int64_t step,
                                void (*extra)(CkptRankState *rs, void *ctx), void *ctx) {
    int world = pp * ep;
    TuBarrier b;
    tu_barrier_init(&b, world);
    pid_t pids[TU_MAX_WORLD];
    for (int r = 0; r < world; r++) {
        pids[r] = fork();
        if (pids[r] < 0) return 0;
        if (pids[r] == 0) {
            b.rank = r;
            check_set_rank(r);
            TState s;
            tstate_create(&s, mc, tu_layout_spec(mc, pp, ep, r));
            tstate_fill(&s, seed);   // the same global values whatever the layout
            CkptOptions o = {.root = root, .model = mc, .keep_last = 2, .barrier = tu_barrier, .barrier_ctx = &b};
            // With EP, slice 0 of a stage writes its non-expert tensors, the others only their experts.
            CkptStage st = tstate_stage(&s, r / ep, r % ep);
            CkptRankState rs = {.step = step, .tokens = (double)step * 1000, .rank = r, .world = world,
                                .dp_rank = 0, .dp_size = 1, .pp_rank = r / ep, .pp_size = pp, .ep_rank = r % ep,
                                .ep_size = ep};
            if (extra) extra(&rs, ctx);
            ckpt_save(&o, &st, &rs);
            _exit(0);
        }
    }
    int ok = 1;
    for (int r = 0; r < world; r++) {
        int status;
        if (waitpid(pids[r], &status, 0) != pids[r] || !WIFEXITED(status) || WEXITSTATUS(status) != 0) ok = 0;
    }
    return ok;
}

#endif
