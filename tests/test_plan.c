// The planner (train/plan.h): parameter counts, FLOPs and memory against hand-derived figures, and against the
// parameter table (model/params.h).
#include "model/params.h"
#include "tests/model_configs.h"
#include "tests/test.h"
#include "tests/child_exit.h"
#include "train/plan.h"

#include <sys/wait.h>
#include <unistd.h>

// fn(arg) must die: exit status 1 with `needle` in its message (tests/child_exit.h runs it in a child).
static void expect_die(void (*fn)(void *), void *arg, const char *needle) {
    char msg[4096];
    int st = child_exit_status(fn, arg, msg, sizeof msg);
    ASSERT_MSG(st == 1, "expected exit status 1, got %d; stderr:\n%s", st, msg);
    ASSERT_CONTAINS(msg, needle);
}

TEST(plan_v3_parameter_counts) {
    // Hand derivation in the header comment of train/plan.c.
    Config c = test_config(test_model_v3());
    PlanResult r;
    plan_compute(&c, &r);
    const PlanParams *t = &r.total;
    ASSERT_EQ_INT(t->embed, 926679040LL);
    ASSERT_EQ_INT(t->head, 926679040LL);
    ASSERT_EQ_INT(t->attn, 61LL * 187107328);
    ASSERT_EQ_INT(t->norms, 61LL * 14336 + 7168);
    ASSERT_EQ_INT(t->dense_ffn, 3LL * 396361728);
    ASSERT_EQ_INT(t->router, 58LL * 1835008);
    ASSERT_EQ_INT(t->shared, 58LL * 44040192);
    ASSERT_EQ_INT(t->routed, 58LL * 256 * 44040192);
    ASSERT_NEAR(t->main, 671026404352.0, 1e-9, 0);
    ASSERT_NEAR(t->main, 671e9, 0.01, 0);            // the published 671B
    ASSERT_NEAR(t->mtp, 11610067968.0, 1e-9, 0);
    ASSERT_NEAR(t->with_mtp, 682636472320.0, 1e-9, 0);
    // The released checkpoint stores the MTP layer's own embedding and head copies: 684.49B, the model card's 685B.
    ASSERT_NEAR(r.hf_checkpoint, 684489830400.0, 1e-9, 0);
    ASSERT_NEAR(r.hf_checkpoint, 685e9, 0.01, 0);
    // Activated: 8 of 256 experts per MoE layer. The TR's "37B activated" is a rounded figure, hence 1.5%.
    const PlanParams *a = &r.active;
    ASSERT_NEAR(a->main, 37552282624.0, 1e-9, 0);
    ASSERT_NEAR(a->main - a->embed, 36625603584.0, 1e-9, 0);
    ASSERT_NEAR(a->main, 37e9, 0.015, 0);
    ASSERT_EQ_INT(a->routed, 58LL * 8 * 44040192);
    ASSERT_EQ_INT(a->attn, t->attn);
    ASSERT_EQ_INT(a->shared, t->shared);
    // MTP active: 11,610,067,968 - 248 * 44,040,192.
    ASSERT_EQ_INT(a->mtp, 11610067968LL - 248LL * 44040192);
}

TEST(plan_v3_flops_per_token) {
    // 6 * 36,624,596,992 + 6 * 61 * 128 * 320 * 4096 / 2 = 219,747,581,952 + 30,702,305,280 (train/plan.c).
    Config c = test_config(test_model_v3());
    PlanResult r;
    plan_compute(&c, &r);
    ASSERT_NEAR(r.flops_matmul, 219747581952.0, 1e-9, 0);
    ASSERT_NEAR(r.flops_attn, 30702305280.0, 1e-9, 0);
    ASSERT_NEAR(r.flops, 250449887232.0, 1e-9, 0);
    ASSERT_NEAR(r.flops, 250e9, 0.01, 0);  // ISCA paper: 250 GFLOP per token at 4K
    // MTP: 6 * (688,100,352 active - 37,888 norm weights + 926,679,040 head) + 6 * 128 * 320 * 2048.
    ASSERT_NEAR(r.flops_mtp, 6.0 * (688100352.0 - 37888 + 926679040) + 6.0 * 128 * 320 * 2048, 1e-9, 0);
    // The attention term scales with T, the matmul term does not.
    c.train.seq_len = 8192;
    PlanResult r2;
    plan_compute(&c, &r2);
    ASSERT_NEAR(r2.flops_attn, 2 * 30702305280.0, 1e-9, 0);
    ASSERT_NEAR(r2.flops_matmul, r.flops_matmul, 1e-12, 0);
}

TEST(plan_bench_parameter_counts) {
    // Hand: embed = head = 32768 * 1536 = 50,331,648. MLA per layer: q_a 512*1536 = 786,432, q_b 12*192*512
    // = 1,179,648, kv_a 320*1536 = 491,520, kv_b 12*256*256 = 786,432, o 1536*1536 = 2,359,296, norms 768:
    // 5,604,096. Block norms 3072. Dense FFN 3*4096*1536 = 18,874,368. Expert 3*512*1536 = 2,359,296; router
    // 64*1536 = 98,304. Main = 2 * 50,331,648 + 12 * (5,604,096 + 3072) + 18,874,368
    // + 11 * (98,304 + 2,359,296 + 64 * 2,359,296) + 1536 = 1,874,803,200.
    Config c = test_config(test_model_bench());
    PlanResult r;
    plan_compute(&c, &r);
    ASSERT_EQ_INT(r.total.main, 1874803200LL);
    ASSERT_NEAR(r.total.main, 1.87e9, 0.005, 0);
    // Active: main - 11 * 58 * 2,359,296 = 369,572,352. MTP: 2*1536 + 1536*3072 + 5,604,096 + 3072 + 98,304
    // + 65 * 2,359,296 + 1536 = 163,782,912.
    ASSERT_EQ_INT(r.active.main, 369572352LL);
    ASSERT_EQ_INT(r.total.mtp, 163782912LL);
}

// Plan's counts against a walk of the full parameter table: per kind, totals, and per pipeline stage.
static void cross_check(const ModelConfig *m) {
    Config c = test_config(*m);
    PlanResult r;
    plan_compute(&c, &r);
    StageSpec s = params_full_stage(m);
    ParamTable t;
    params_build(&t, m, &s);
    PlanParams w = {0};
    for (int i = 0; i < t.n; i++) {
        const ParamInfo *p = &t.params[i];
        if (p->is_mtp) { w.mtp += p->numel; continue; }
        switch (p->kind) {
        case PARAM_EMBED: w.embed += p->numel; break;
        case PARAM_ATTN: w.attn += p->numel; break;
        case PARAM_NORM: if (strstr(p->name, "self_attn.")) w.attn += p->numel; else w.norms += p->numel; break;
        case PARAM_DENSE_FFN: w.dense_ffn += p->numel; break;
        case PARAM_ROUTER: w.router += p->numel; break;
        case PARAM_SHARED_EXPERT: w.shared += p->numel; break;
        case PARAM_ROUTED_EXPERT: w.routed += p->numel; break;
        case PARAM_HEAD: w.head += p->numel; break;
        case PARAM_MTP_PROJ: ASSERT(0); break;
        }
    }
    ASSERT_EQ_INT(w.embed, r.total.embed);
    ASSERT_EQ_INT(w.attn, r.total.attn);
    ASSERT_EQ_INT(w.norms, r.total.norms);
    ASSERT_EQ_INT(w.dense_ffn, r.total.dense_ffn);
    ASSERT_EQ_INT(w.router, r.total.router);
    ASSERT_EQ_INT(w.shared, r.total.shared);
    ASSERT_EQ_INT(w.routed, r.total.routed);
    ASSERT_EQ_INT(w.head, r.total.head);
    ASSERT_EQ_INT(w.mtp, r.total.mtp);
    ASSERT_EQ_INT(params_numel(&t), r.total.with_mtp);
    params_free(&t);
    // Per pipeline rank (1F1B: one stage each) with EP: the rank's table holds what plan counts.
    int blocks = m->n_layers + m->mtp_depth;
    for (int pp = 1; pp <= 4 && pp <= blocks; pp++) {
        c.parallel.pp = pp; c.parallel.dp = 4; c.parallel.ep = m->n_routed_experts % 2 ? 1 : 2;
        for (int rank = 0; rank < pp; rank++) {
            PlanMemory mem;
            plan_rank_memory(&c, rank, &mem);
            StageSpec st = params_stage_spec(m, pp, rank);
            st.ep_size = c.parallel.ep; st.ep_rank = 1 % c.parallel.ep;
            ParamTable tt;
            params_build(&tt, m, &st);
            int64_t routed = 0;
            for (int i = 0; i < tt.n; i++) if (tt.params[i].kind == PARAM_ROUTED_EXPERT) routed += tt.params[i].numel;
            ASSERT_EQ_INT(mem.params_expert, routed);
            ASSERT_EQ_INT(mem.params_dense + mem.params_expert, params_numel(&tt));
            params_free(&tt);
        }
    }
}

TEST(plan_counts_match_param_table) {
    ModelConfig b = test_model_bench();
    cross_check(&b);
    b.q_lora_rank = 0;
    b.mtp_depth = 2;
    b.n_shared_experts = 2;
    cross_check(&b);
    ModelConfig t = test_model_tiny();
    cross_check(&t);
    t.n_dense_layers = 2;  // all dense, MTP block dense too
    cross_check(&t);
    ModelConfig v = test_model_v3();
    cross_check(&v);
}

// The tiny model under pp 2, dp 4, ep 2, ZeRO-1, micro-batch 2 x 16 tokens, batch 64 sequences, recompute on.
static Config tiny_layout(PipeSchedule sched) {
    Config c = test_config(test_model_tiny());
    c.train.seq_len = 16; c.train.micro_batch = 2; c.train.batch_end = 64;
    c.parallel.pp = 2; c.parallel.dp = 4; c.parallel.ep = 2; c.parallel.schedule = sched;
    return c;
}

TEST(plan_tiny_memory_by_hand) {
    // Tiny model params (test_params.c offsets): embed = head = 128; MLA 176 matrices + 8 norms = 184; block norms
    // 16; dense FFN 384; router 32, shared 96, one expert 96. Layer 0 (dense) 584, layer 1 (MoE) 712 of which 384
    // routed; MTP = 8 + 8 + 128 + 712 + 8 = 864. Blocks 2 + 1 over pp 2: shares 2 and 1, the last one being the
    // MTP block, so stage 0 = embed + layers 0-1, stage 1 = norm + head + MTP.
    // ep 2 -> 2 experts (192) per MoE layer. Stage 0: dense 128 + 584 + 328 = 1040, experts 192.
    // Stage 1: dense 8 + 128 + 480 = 616, experts 192.
    // Activation bytes per token (plan.c formula): MLA part 2*(8+4+4+2+2*2+8) + 4*2 = 68; dense layer + 2*2*16
    // = 132; MoE layer + 4*4 + 8*2 + 2*2*4 + 2*2*(8+2*4) = 180. Recomputed: 2*(8+4+4+2*2*4+2*2+8) = 88, dense + 32
    // = 120, MoE + 2*(4+2*4) = 112. Head 2*8 + 4 = 20.
    // Tokens per micro-batch 32. Rank 0 (1F1B): stored (132 + 180) * 32 = 9984, in flight pp - 0 = 2 (a step has
    // 64 / (2*4) = 8 micro-batches), workspace 2 * 120 * 32 = 7680. Weights 2 * 1232, grads 4 * 1232,
    // master 4 * (1040/4 + 192/2) = 4 * 356 = moments.
    Config c = tiny_layout(PIPE_1F1B);
    PlanMemory m0, m1;
    plan_rank_memory(&c, 0, &m0);
    ASSERT_EQ_INT(m0.params_dense, 1040);
    ASSERT_EQ_INT(m0.params_expert, 192);
    ASSERT_NEAR(m0.weights, 2464, 1e-12, 0);
    ASSERT_NEAR(m0.grads, 4928, 1e-12, 0);
    ASSERT_NEAR(m0.master, 1424, 1e-12, 0);
    ASSERT_NEAR(m0.moments, 1424, 1e-12, 0);
    ASSERT_EQ_INT(m0.in_flight, 2);
    ASSERT_NEAR(m0.act_per_micro, 9984, 1e-12, 0);
    ASSERT_NEAR(m0.activations, 19968, 1e-12, 0);
    ASSERT_NEAR(m0.workspace, 7680, 1e-12, 0);
    ASSERT_NEAR(m0.total, 37888, 1e-12, 0);
    // Rank 1: 808 params; opt 616/4 + 192/2 = 250; stored (180 + 20 MTP head + 20 main head) * 32 = 7040, in
    // flight 1; workspace (2 * 112 + 4 * 16 logits) * 32 = 9216. Total 1616 + 3232 + 1000 + 1000 + 7040 + 9216.
    plan_rank_memory(&c, 1, &m1);
    ASSERT_EQ_INT(m1.n_layers, 0);
    ASSERT_EQ_INT(m1.n_mtp, 1);
    ASSERT_NEAR(m1.master, 1000, 1e-12, 0);
    ASSERT_EQ_INT(m1.in_flight, 1);
    ASSERT_NEAR(m1.activations, 7040, 1e-12, 0);
    ASSERT_NEAR(m1.workspace, 9216, 1e-12, 0);
    ASSERT_NEAR(m1.total, 23104, 1e-12, 0);
    PlanResult r;
    plan_compute(&c, &r);
    ASSERT_EQ_INT(r.mem.rank, 0);
    ASSERT_NEAR(r.mem.total, 37888, 1e-12, 0);

    // DualPipe: each rank holds both stages: 2040 params, opt 606, in flight pp + 1 = 3 x max(9984, 7040),
    // workspace max(7680, 9216). 4080 + 8160 + 2424 + 2424 + 29952 + 9216 = 56256.
    c = tiny_layout(PIPE_DUALPIPE);
    plan_rank_memory(&c, 1, &m1);
    ASSERT(m1.n_stages == 2 && m1.stages[0] == 1 && m1.stages[1] == 0);
    ASSERT_EQ_INT(m1.in_flight, 3);
    ASSERT_NEAR(m1.total, 56256, 1e-12, 0);

    // No ZeRO: master and moments unsharded (4 * 1232 each); no recompute: recomputed tensors stored too
    // ((120 + 112 + 132 + 180) * 32 = 17408 per micro-batch) and only their gradients transient (120 * 32).
    c = tiny_layout(PIPE_1F1B);
    c.parallel.zero_stage = 0;
    c.train.recompute = 0;
    plan_rank_memory(&c, 0, &m0);
    ASSERT_NEAR(m0.master, 4928, 1e-12, 0);
    ASSERT_NEAR(m0.moments, 4928, 1e-12, 0);
    ASSERT_NEAR(m0.act_per_micro, 17408, 1e-12, 0);
    ASSERT_NEAR(m0.workspace, 3840, 1e-12, 0);
    // A step of 2 micro-batches caps the in-flight count of 1F1B's first stage.
    c.train.batch_end = 16;
    plan_rank_memory(&c, 0, &m0);
    ASSERT_EQ_INT(m0.in_flight, 2);
    c.train.batch_end = 8;
    plan_rank_memory(&c, 0, &m0);
    ASSERT_EQ_INT(m0.in_flight, 1);
}

TEST(plan_v3_layout_memory) {
    // The recipe's layout: pp 16 x dp 128 (2048 GPUs), ep 64, ZeRO-1, DualPipe. Rank r holds stages r and 15-r.
    Config c = test_config(test_model_v3());
    c.parallel.pp = 16; c.parallel.dp = 128; c.parallel.ep = 64; c.parallel.schedule = PIPE_DUALPIPE;
    PlanResult r;
    plan_compute(&c, &r);
    // Every rank holds 8 blocks except ranks 0 and 15 (stage 0's 4 + stage 15's 2 + MTP = 7) and ranks 1 and 14
    // (stage 1's 4 + stage 14's 3 = 7). Rank 0 carries embedding + head. Routed experts per rank: 4 of 256 per
    // MoE layer. Rank 0's MoE blocks: layer 3, 59, 60, 61 -> 4 * 4 * 44,040,192 expert parameters.
    PlanMemory m0;
    plan_rank_memory(&c, 0, &m0);
    ASSERT(m0.n_layers == 6 && m0.n_mtp == 1);
    ASSERT_EQ_INT(m0.params_expert, 16LL * 44040192);
    // Replicated: embed + head + final norm, 3 dense layers, 4 MoE blocks' non-routed parts, MTP extras.
    int64_t mla = 187107328, norms = 14336, moe_rest = 1835008 + 44040192;
    int64_t dense = 2 * 926679040LL + 7168 + 3 * (mla + norms + 396361728LL) + 4 * (mla + norms + moe_rest)
                  + 2 * 7168 + 7168LL * 14336 + 7168;
    ASSERT_EQ_INT(m0.params_dense, dense);
    ASSERT_EQ_INT(m0.in_flight, 17);
    ASSERT(r.mem.total >= m0.total);
    ASSERT_EQ_INT(r.mem.n_stages, 2);
}

TEST(plan_print_report) {
    Config c = test_config(test_model_v3());
    c.parallel.pp = 16; c.parallel.dp = 128; c.parallel.ep = 64; c.parallel.schedule = PIPE_DUALPIPE;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    ASSERT(f != NULL);
    plan_print(&c, f);
    fclose(f);
    ASSERT_CONTAINS(buf, "671.026 B");  // main model total
    ASSERT_CONTAINS(buf, "37.552 B");   // active
    ASSERT_CONTAINS(buf, "684.490 B");  // HF checkpoint
    ASSERT_CONTAINS(buf, "250.450 GFLOP");
    ASSERT_CONTAINS(buf, "pp 16 x dp 128 = 2048 GPUs, ep 64, ZeRO-1, dualpipe");
    ASSERT_CONTAINS(buf, "<- heaviest");
    ASSERT_CONTAINS(buf, "0,15");       // rank 0 holds stages 0 and 15
    free(buf);
}

static void die_layout(void *arg) {
    Config *c = arg;
    PlanResult r;
    plan_compute(c, &r);
}

TEST(plan_bad_layouts_die_clearly) {
    Config c = tiny_layout(PIPE_1F1B);
    c.parallel.ep = 3; c.parallel.dp = 6;
    expect_die(die_layout, &c, "parallel.ep = 3 must divide model.n_routed_experts = 4");
    c = tiny_layout(PIPE_1F1B);
    c.parallel.ep = 4; c.parallel.dp = 2;
    expect_die(die_layout, &c, "parallel.ep = 4 must divide parallel.dp = 2");
    c = tiny_layout(PIPE_DUALPIPE);
    c.parallel.pp = 3;
    expect_die(die_layout, &c, "dualpipe needs an even parallel.pp");
    c = tiny_layout(PIPE_1F1B);
    c.parallel.pp = 4;
    expect_die(die_layout, &c, "parallel.pp = 4 is more than the model's 3 blocks");
    c = tiny_layout(PIPE_1F1B);
    c.train.micro_batch = 0;
    expect_die(die_layout, &c, "train.micro_batch");
    c = tiny_layout(PIPE_1F1B);
    c.model.n_activated_experts = 5;
    expect_die(die_layout, &c, "model.n_activated_experts = 5");
    c = tiny_layout(PIPE_1F1B);
    c.parallel.zero_stage = 2;
    expect_die(die_layout, &c, "parallel.zero_stage must be 0 or 1");
}
