// The planner: parameter counts, FLOPs per token and per-GPU memory from a Config. See plan.h.
//
// Hand check on DeepSeek-V3 671B (d 7168, V 129280, 61 layers of which 3 dense with inter 18432, 58 MoE with 256
// routed + 1 shared experts of moe_inter 2048 and top-8, 128 heads, q_lora 1536, kv_lora 512, nope/rope/v
// 128/64/128, MTP depth 1); tests/test_plan.c asserts these figures:
//   embedding = head = 129280 * 7168                                              =     926,679,040
//   MLA per layer: q_a 1536*7168 + q_b 128*192*1536 + kv_a 576*7168 + kv_b 128*256*512 + o 7168*16384
//                  = 11,010,048 + 37,748,736 + 4,128,768 + 16,777,216 + 117,440,512 = 187,105,280
//                  + q_a / kv_a norms 1536 + 512                                  =     187,107,328
//   block norms per layer 2 * 7168 = 14,336; dense FFN 3 * 18432 * 7168           =     396,361,728
//   one expert 3 * 2048 * 7168 = 44,040,192; router 256 * 7168 = 1,835,008; shared = one expert
//   main total = 2 * 926,679,040 + 61 * (187,107,328 + 14,336) + 3 * 396,361,728
//              + 58 * (1,835,008 + 44,040,192 + 256 * 44,040,192) + 7168          = 671,026,404,352
//   MTP module = 2 * 7168 (enorm, hnorm) + 7168 * 14336 (eh_proj) + 187,107,328 + 14,336 + 1,835,008
//              + 44,040,192 + 11,274,289,152 + 7168 (shared_head.norm)             =  11,610,067,968
//   with MTP 682,636,472,320; the HF checkpoint adds the MTP layer's copies of embedding and head: 684,489,830,400
//   (the model card's "685B"). Activated: main - 58 * 248 * 44,040,192             =  37,552,282,624
//   (36,625,603,584 without the embedding lookup; the TR's "37B" is this figure rounded).
//   FLOPs/token at T = 4096: active matmul params = 37,552,282,624 - 926,679,040 (embedding) - 1,006,592 (norms:
//   61 * (14,336 + 2048) + 7168) = 36,624,596,992; x 6 = 219.748 GFLOP; attention 6 * 61 * 128 * 320 * 4096 / 2
//   = 30.702 GFLOP; total 250.450 GFLOP (ISCA: 250 GFLOP).
#include "train/plan.h"
#include "model/params.h"
#include "train/check.h"

#include <string.h>

// ---- parameter counts (closed form) ----

typedef struct {
    int64_t attn_mat, attn_norm; // MLA weight matrices; q_a / kv_a RMSNorm weights
    int64_t norms;               // input_layernorm + post_attention_layernorm
    int64_t dense;               // dense SwiGLU FFN
    int64_t router, shared;      // MoE gate, shared experts (all n_shared together)
    int64_t expert;              // ONE routed expert (gate, up, down)
} LayerCounts;

static LayerCounts layer_counts(const ModelConfig *m) {
    int64_t d = m->dim, h = m->n_heads, qk = m->qk_nope_head_dim + m->qk_rope_head_dim;
    int64_t mi = m->moe_inter_dim;
    LayerCounts c = {0};
    c.attn_mat = m->q_lora_rank > 0 ? m->q_lora_rank * d + h * qk * m->q_lora_rank : h * qk * d;
    c.attn_mat += (m->kv_lora_rank + m->qk_rope_head_dim) * d
                + h * (m->qk_nope_head_dim + m->v_head_dim) * m->kv_lora_rank + d * h * m->v_head_dim;
    c.attn_norm = m->q_lora_rank + m->kv_lora_rank;
    c.norms = 2 * d;
    c.dense = 3 * (int64_t)m->inter_dim * d;
    c.router = (int64_t)m->n_routed_experts * d;
    c.shared = 3 * (int64_t)m->n_shared_experts * mi * d;
    c.expert = 3 * mi * d;
    return c;
}

// Adds one block (main or MTP layer `layer`) to p; n_experts routed experts counted.
static void count_block(const ModelConfig *m, int layer, int64_t n_experts, PlanParams *p) {
    LayerCounts c = layer_counts(m);
    p->attn += c.attn_mat + c.attn_norm;
    p->norms += c.norms;
    if (params_layer_is_moe(m, layer)) {
        p->router += c.router;
        p->shared += c.shared;
        p->routed += n_experts * c.expert;
    } else {
        p->dense_ffn += c.dense;
    }
}

static int64_t sum_parts(const PlanParams *p) {
    return p->embed + p->attn + p->dense_ffn + p->routed + p->shared + p->router + p->norms + p->head;
}

// active = 0: every parameter; 1: the parameters one token uses.
static PlanParams count_model(const ModelConfig *m, int active) {
    int64_t n_exp = active ? m->n_activated_experts : m->n_routed_experts, d = m->dim;
    PlanParams p = {0};
    p.embed = (int64_t)m->vocab_size * d;
    for (int i = 0; i < m->n_layers; i++) count_block(m, i, n_exp, &p);
    p.norms += d;  // model.norm
    p.head = (int64_t)m->vocab_size * d;
    p.main = sum_parts(&p);
    for (int k = 0; k < m->mtp_depth; k++) {
        PlanParams b = {0};
        count_block(m, m->n_layers + k, n_exp, &b);
        p.mtp += 2 * d + 2 * d * d + sum_parts(&b) + d;  // enorm, hnorm, eh_proj, block, shared_head.norm
    }
    p.with_mtp = p.main + p.mtp;
    return p;
}

// Parameters of one stage's table, split into replicated (dense) and routed-expert parts, E/ep experts per layer.
static void stage_params(const ModelConfig *m, const StageSpec *s, int ep, int64_t *dense, int64_t *expert) {
    PlanParams p = {0};
    int64_t d = m->dim, n_exp = m->n_routed_experts / ep, extra = 0;
    if (s->has_embed) p.embed = (int64_t)m->vocab_size * d;
    for (int i = s->layer_begin; i < s->layer_end; i++) count_block(m, i, n_exp, &p);
    if (s->has_head) p.head = (int64_t)m->vocab_size * d + d;
    if (s->has_mtp)
        for (int k = 0; k < m->mtp_depth; k++) {
            count_block(m, m->n_layers + k, n_exp, &p);
            extra += 2 * d + 2 * d * d + d;
        }
    *expert = p.routed;
    *dense = sum_parts(&p) - p.routed + extra;
}

// ---- activations ----

// Stored and recomputed bytes per token of one block. Stored for backward (BF16 = 2 bytes unless noted):
//   block input h [d] (re-derives the input RMSNorm); q_a_proj output [q_lora] and kv_a_proj output
//   [kv_lora + rope] (pre-norm latents); attention output O [H*v] (o_proj input and flash-attention backward);
//   log-sum-exp [H] FP32; attention residual h2 [d];
//   dense FFN: gate and up outputs [2 * inter] (SwiGLU input);
//   MoE: router scores [E] FP32, top-k ids and gate weights [K] int32 + FP32, shared-expert gate/up outputs
//   [2 * S*mi], and per routed copy (K per token: with balanced load each EP rank receives as many copies as its own
//   tokens send) the dispatched input [d] and gate/up outputs [2 * mi]. Expert outputs are not kept: the gate
//   weight's gradient <dy, W2 a> equals <W2^T dy, a>, and W2^T dy is the down projection's Dgrad anyway.
// Recomputed in backward under train.recompute (the recipe: RMSNorm outputs, MLA up-projections, SwiGLU outputs),
// stored otherwise: normed h [d], c_q [q_lora], c_kv [kv_lora], q and k per head [2 * H*qk], v [H*v],
// normed h2 [d], SwiGLU outputs (dense [inter]; MoE [S*mi] + K * [mi]).
static void layer_act(const ModelConfig *m, int is_moe, double *stored, double *recomputed) {
    double d = m->dim, h = m->n_heads, qk = m->qk_nope_head_dim + m->qk_rope_head_dim, v = m->v_head_dim;
    double ql = m->q_lora_rank, kv = m->kv_lora_rank, rope = m->qk_rope_head_dim;
    double k = m->n_activated_experts, e = m->n_routed_experts, smi = (double)m->n_shared_experts * m->moe_inter_dim;
    double mi = m->moe_inter_dim;
    double s = 2 * (d + ql + kv + rope + h * v + d) + 4 * h;
    double r = 2 * (d + ql + kv + 2 * h * qk + h * v + d);
    if (is_moe) {
        s += 4 * e + 8 * k + 2 * (2 * smi) + k * 2 * (d + 2 * mi);
        r += 2 * (smi + k * mi);
    } else {
        s += 2 * (2.0 * m->inter_dim);
        r += 2.0 * m->inter_dim;
    }
    *stored = s;
    *recomputed = r;
}

double plan_layer_act_bytes(const ModelConfig *m, int is_moe, int recompute) {
    double s, r;
    layer_act(m, is_moe, &s, &r);
    return recompute ? s : s + r;
}

// Per micro-batch of one stage: (stored bytes, transient workspace bytes).
// Head (and each MTP module's pass through it): its input [d] BF16 and the log-sum-exp FP32 (+ the normed input
// [d] without recompute). The MTP block's input is eh_proj's output, counted as that block's h; enorm / hnorm
// inputs are the main model's last hidden (already kept for the head) and the embedding lookup (re-done).
// Workspace: one block's recomputed tensors and their gradients (x 2; x 1 without recompute, when only the
// gradients are new), and the FP32 logits [N, V] of one micro-batch on the stage with the head (the loss pass
// finishes each micro-batch's logits before the next one's: forward and backward of the head are back to back).
static void stage_act(const ModelConfig *m, const StageSpec *s, int recompute, double tokens,
                      double *stored, double *workspace) {
    double d = m->dim, head = 2 * d + 4 + (recompute ? 0 : 2 * d), st = 0, ws = 0;
    for (int i = s->layer_begin; i < s->layer_end + (s->has_mtp ? m->mtp_depth : 0); i++) {
        int layer = i < s->layer_end ? i : m->n_layers + (i - s->layer_end);
        int moe = params_layer_is_moe(m, layer);
        double a, r;
        layer_act(m, moe, &a, &r);
        st += recompute ? a : a + r;
        if (i >= s->layer_end) st += head;
        if (r * (recompute ? 2 : 1) > ws) ws = r * (recompute ? 2 : 1);
    }
    if (s->has_head) {
        st += head;
        ws += 4.0 * m->vocab_size;
    }
    *stored = st * tokens;
    *workspace = ws * tokens;
}

// ---- layout checks and per-rank memory ----

static void check_layout(const Config *cfg) {
    const ParallelConfig *p = &cfg->parallel;
    const ModelConfig *m = &cfg->model;
    CHECK(p->pp >= 1 && p->dp >= 1 && p->ep >= 1, "parallel.pp, parallel.dp and parallel.ep must be >= 1 "
          "(got %d, %d, %d)", p->pp, p->dp, p->ep);
    CHECK(p->dp % p->ep == 0, "parallel.ep = %d must divide parallel.dp = %d (DP = EP x expert-DP)", p->ep, p->dp);
    CHECK(m->n_dense_layers >= m->n_layers || m->n_routed_experts % p->ep == 0,
          "parallel.ep = %d must divide model.n_routed_experts = %d", p->ep, m->n_routed_experts);
    CHECK(m->n_dense_layers >= m->n_layers ||
          (m->n_activated_experts >= 1 && m->n_activated_experts <= m->n_routed_experts),
          "model.n_activated_experts = %d must be in [1, model.n_routed_experts = %d]", m->n_activated_experts,
          m->n_routed_experts);
    CHECK(p->schedule != PIPE_DUALPIPE || (p->pp >= 2 && p->pp % 2 == 0),
          "parallel.schedule = dualpipe needs an even parallel.pp >= 2 (got %d)", p->pp);
    CHECK(p->zero_stage == 0 || p->zero_stage == 1, "parallel.zero_stage must be 0 or 1 (got %d)", p->zero_stage);
    CHECK(cfg->train.micro_batch >= 1 && cfg->train.seq_len >= 1,
          "train.micro_batch and train.seq_len must be >= 1 (got %d, %d)", cfg->train.micro_batch,
          cfg->train.seq_len);
    int blocks = m->n_layers + m->mtp_depth;
    CHECK(blocks >= p->pp, "parallel.pp = %d is more than the model's %d blocks (model.n_layers + model.mtp_depth)",
          p->pp, blocks);
}

void plan_rank_memory(const Config *cfg, int rank, PlanMemory *mem) {
    const ModelConfig *m = &cfg->model;
    const ParallelConfig *p = &cfg->parallel;
    check_layout(cfg);
    CHECK(0 <= rank && rank < p->pp, "pipeline rank %d outside [0, parallel.pp = %d)", rank, p->pp);
    memset(mem, 0, sizeof *mem);
    mem->rank = rank;
    int dualpipe = p->schedule == PIPE_DUALPIPE;
    mem->stages[0] = rank;
    mem->n_stages = 1;
    if (dualpipe) mem->stages[mem->n_stages++] = p->pp - 1 - rank;  // the reverse direction's copy

    double tokens = (double)cfg->train.micro_batch * cfg->train.seq_len;
    for (int j = 0; j < mem->n_stages; j++) {
        StageSpec s = params_stage_spec(m, p->pp, mem->stages[j]);
        int64_t dense, expert;
        stage_params(m, &s, p->ep, &dense, &expert);
        mem->params_dense += dense;
        mem->params_expert += expert;
        mem->n_layers += s.layer_end - s.layer_begin;
        mem->n_mtp += s.has_mtp ? m->mtp_depth : 0;
        double st, ws;
        stage_act(m, &s, cfg->train.recompute, tokens, &st, &ws);
        if (st > mem->act_per_micro) mem->act_per_micro = st;
        if (ws > mem->workspace) mem->workspace = ws;
    }
    // ZeRO-1 shards the optimizer state (master + moments) over the ranks holding the same replica of a tensor:
    // all dp ranks for replicated tensors, the dp/ep expert-data-parallel ranks for routed experts. DualPipe's two
    // copies of a stage live on different pipeline ranks and keep full optimizer state each (their gradients are
    // summed first); sharding over the copies as well would halve it, and is not assumed here.
    double shard_dense = p->zero_stage ? p->dp : 1, shard_expert = p->zero_stage ? p->dp / p->ep : 1;
    double n = (double)(mem->params_dense + mem->params_expert);
    double n_opt = mem->params_dense / shard_dense + mem->params_expert / shard_expert;
    mem->weights = 2 * n;
    mem->grads = 4 * n;
    mem->master = 4 * n_opt;
    mem->moments = 2 * 2 * n_opt;
    // In-flight micro-batches at the peak: 1F1B stage r holds pp - r (warm-up depth), DualPipe pp + 1 per rank
    // (DualPipe paper's table, counted here in the rank's heavier stage); never more than a step's micro-batches.
    mem->in_flight = dualpipe ? p->pp + 1 : p->pp - rank;
    long n_micro = cfg->train.batch_end / ((long)cfg->train.micro_batch * p->dp);
    if (n_micro >= 1 && n_micro < mem->in_flight) mem->in_flight = (int)n_micro;
    mem->activations = mem->in_flight * mem->act_per_micro;
    mem->total = mem->weights + mem->master + mem->grads + mem->moments + mem->activations + mem->workspace;
}

// ---- totals ----

void plan_compute(const Config *cfg, PlanResult *r) {
    const ModelConfig *m = &cfg->model;
    check_layout(cfg);
    memset(r, 0, sizeof *r);
    r->total = count_model(m, 0);
    r->active = count_model(m, 1);
    r->hf_checkpoint = r->total.with_mtp + (int64_t)m->mtp_depth * (r->total.embed + r->total.head);

    // Training FLOPs per token: a weight matrix of n parameters costs 2n FLOPs forward and 4n backward (Dgrad +
    // Wgrad), so 6 x the active matmul parameters (the embedding is a lookup and RMSNorms are elementwise: both
    // excluded; the head is a matmul: included). Attention per layer and head, per token: QK^T over the keys costs
    // 2 * qk_head_dim FLOPs per key, PV 2 * v_head_dim; backward is twice forward; causal masking halves the keys
    // seen on average to T/2: 6 * H * (qk + v) * T / 2.
    LayerCounts c = layer_counts(m);
    const PlanParams *a = &r->active;
    double matmul = (double)(a->main - a->embed - a->norms) - (double)m->n_layers * c.attn_norm;
    double attn_layer = 6.0 * m->n_heads * (m->qk_nope_head_dim + m->qk_rope_head_dim + m->v_head_dim)
                      * cfg->train.seq_len / 2;
    r->flops_matmul = 6 * matmul;
    r->flops_attn = m->n_layers * attn_layer;
    r->flops = r->flops_matmul + r->flops_attn;
    // MTP module: its active matmuls (eh_proj and the block's, i.e. everything but its 5 RMSNorm-type weights:
    // enorm, hnorm, 2 block norms and shared_head.norm, plus the MLA norms), a second pass through the head, and
    // one layer of attention.
    double mtp_norms = m->mtp_depth * (5.0 * m->dim + c.attn_norm);
    r->flops_mtp = 6 * ((double)a->mtp - mtp_norms + (double)m->mtp_depth * a->head) + m->mtp_depth * attn_layer;

    for (int rank = 0; rank < cfg->parallel.pp; rank++) {
        PlanMemory mem;
        plan_rank_memory(cfg, rank, &mem);
        if (rank == 0 || mem.total > r->mem.total) r->mem = mem;
    }
}

// ---- report ----

static const char *fmt_count(char *buf, int64_t n) {
    double x = (double)n;
    if (x >= 1e9) snprintf(buf, 32, "%.3f B", x / 1e9);
    else if (x >= 1e6) snprintf(buf, 32, "%.2f M", x / 1e6);
    else if (x >= 1e3) snprintf(buf, 32, "%.2f K", x / 1e3);
    else snprintf(buf, 32, "%lld", (long long)n);
    return buf;
}

static void print_row(FILE *out, const char *label, int64_t total, int64_t active) {
    char b1[32], b2[32];
    fprintf(out, "  %-22s %14s %14s\n", label, fmt_count(b1, total), fmt_count(b2, active));
}

void plan_print(const Config *cfg, FILE *out) {
    const ModelConfig *m = &cfg->model;
    const ParallelConfig *p = &cfg->parallel;
    PlanResult r;
    plan_compute(cfg, &r);
    int n_moe = m->n_layers > m->n_dense_layers ? m->n_layers - m->n_dense_layers : 0;
    fprintf(out, "Model: %d layers (%d dense, %d MoE) + %d MTP, dim %d, vocab %d, %d heads, %d routed experts "
            "top-%d + %d shared\n\n", m->n_layers, m->n_layers - n_moe, n_moe, m->mtp_depth, m->dim,
            m->vocab_size, m->n_heads, m->n_routed_experts, m->n_activated_experts, m->n_shared_experts);
    fprintf(out, "Parameters               %14s %14s\n", "total", "active/token");
    const PlanParams *t = &r.total, *a = &r.active;
    print_row(out, "embedding", t->embed, a->embed);
    print_row(out, "attention (MLA+norms)", t->attn, a->attn);
    print_row(out, "dense FFN", t->dense_ffn, a->dense_ffn);
    print_row(out, "routed experts", t->routed, a->routed);
    print_row(out, "shared experts", t->shared, a->shared);
    print_row(out, "router", t->router, a->router);
    print_row(out, "block/final norms", t->norms, a->norms);
    print_row(out, "output head", t->head, a->head);
    print_row(out, "main model", t->main, a->main);
    print_row(out, "main w/o embedding", t->main - t->embed, a->main - a->embed);
    print_row(out, "MTP modules", t->mtp, a->mtp);
    print_row(out, "with MTP", t->with_mtp, a->with_mtp);
    char b[32];
    fprintf(out, "  (Hugging Face checkpoint: %s; it stores each MTP layer's own copy of embedding and head)\n\n",
            fmt_count(b, r.hf_checkpoint));

    fprintf(out, "Training FLOPs per token (T = %d; 6 x active matmul params + causal attention)\n",
            cfg->train.seq_len);
    fprintf(out, "  %-22s %10.3f GFLOP\n", "matmuls", r.flops_matmul / 1e9);
    fprintf(out, "  %-22s %10.3f GFLOP\n", "attention", r.flops_attn / 1e9);
    fprintf(out, "  %-22s %10.3f GFLOP\n", "main model", r.flops / 1e9);
    fprintf(out, "  %-22s %10.3f GFLOP\n", "MTP modules", r.flops_mtp / 1e9);
    fprintf(out, "  %-22s %10.3f GFLOP\n\n", "with MTP", (r.flops + r.flops_mtp) / 1e9);

    fprintf(out, "Memory per GPU in GiB (pp %d x dp %d = %d GPUs, ep %d, ZeRO-%d, %s; micro-batch %d x %d tokens, "
            "recompute %s)\n", p->pp, p->dp, p->pp * p->dp, p->ep, p->zero_stage,
            p->schedule == PIPE_DUALPIPE ? "dualpipe" : "1f1b", cfg->train.micro_batch, cfg->train.seq_len,
            cfg->train.recompute ? "on" : "off");
    fprintf(out, "  %4s %-8s %6s %11s %8s %8s %8s %8s %4s %8s %8s %8s\n", "rank", "stages", "blocks", "params",
            "weights", "master", "grads", "moments", "mb", "acts", "work", "total");
    const double gib = 1024.0 * 1024.0 * 1024.0;
    for (int rank = 0; rank < p->pp; rank++) {
        PlanMemory mm;
        plan_rank_memory(cfg, rank, &mm);
        char st[16];
        if (mm.n_stages == 2) snprintf(st, sizeof st, "%d,%d", mm.stages[0], mm.stages[1]);
        else snprintf(st, sizeof st, "%d", mm.stages[0]);
        fprintf(out, "  %4d %-8s %6d %11s %8.2f %8.2f %8.2f %8.2f %4d %8.2f %8.2f %8.2f%s\n", rank, st,
                mm.n_layers + mm.n_mtp, fmt_count(b, mm.params_dense + mm.params_expert), mm.weights / gib,
                mm.master / gib, mm.grads / gib, mm.moments / gib, mm.in_flight, mm.activations / gib,
                mm.workspace / gib, mm.total / gib, mm.rank == r.mem.rank ? "  <- heaviest" : "");
    }
    fprintf(out, "  weights BF16, master FP32 and moments 2 x BF16 (ZeRO-%d), grads FP32; acts = mb in-flight "
            "micro-batches x %.2f GiB stored each (heaviest rank, BF16: the recipe's FP8 caching of expert inputs "
            "would lower it); work = transient backward buffers\n", p->zero_stage, r.mem.act_per_micro / gib);
}
