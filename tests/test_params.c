// The named parameter table (model/params.h): names, shapes, layout, stage splits, expert parallelism, bad specs.
#include "model/params.h"
#include "tests/model_configs.h"
#include "tests/test.h"
#include "tests/child_exit.h"

#include <stdint.h>
#include <sys/wait.h>
#include <unistd.h>

// fn(arg) must die: exit status 1 with `needle` in its message (tests/child_exit.h runs it in a child).
static void expect_die(void (*fn)(void *), void *arg, const char *needle) {
    char msg[4096];
    int st = child_exit_status(fn, arg, msg, sizeof msg);
    ASSERT_MSG(st == 1, "expected exit status 1, got %d; stderr:\n%s", st, msg);
    ASSERT_CONTAINS(msg, needle);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }
static int cmp_off(const void *a, const void *b) {
    int64_t x = (*(const ParamInfo *const *)a)->offset, y = (*(const ParamInfo *const *)b)->offset;
    return (x > y) - (x < y);
}

// Layout invariants of any table: unique names, in-bounds and non-overlapping ranges, tensors aligned except
// experts after the first of a block, routed blocks contiguous, kinds and no_decay consistent.
static void check_layout(const ParamTable *t) {
    char **names = malloc((size_t)t->n * sizeof *names);
    const ParamInfo **by_off = malloc((size_t)t->n * sizeof *by_off);
    for (int i = 0; i < t->n; i++) { names[i] = (char *)t->params[i].name; by_off[i] = &t->params[i]; }
    qsort(names, (size_t)t->n, sizeof *names, cmp_str);
    for (int i = 1; i < t->n; i++) ASSERT_MSG(strcmp(names[i - 1], names[i]) != 0, "duplicate name %s", names[i]);
    qsort(by_off, (size_t)t->n, sizeof *by_off, cmp_off);
    for (int i = 0; i < t->n; i++) {
        const ParamInfo *p = by_off[i];
        int64_t end = p->offset + p->numel;
        ASSERT(p->numel == (p->ndim == 2 ? p->shape[0] * p->shape[1] : p->shape[0]));
        ASSERT(end <= t->total);
        if (i + 1 < t->n) ASSERT_MSG(end <= by_off[i + 1]->offset, "%s overlaps %s", p->name, by_off[i + 1]->name);
        int first_expert = p->expert == t->expert_begin;
        if (p->kind != PARAM_ROUTED_EXPERT || first_expert)
            ASSERT_MSG(p->offset % PARAMS_ALIGN == 0, "%s at %lld not aligned", p->name, (long long)p->offset);
        ASSERT_EQ_INT(p->no_decay, p->kind == PARAM_NORM);
        ASSERT_EQ_INT(p->no_decay, strstr(p->name, "norm.weight") != NULL);
        ASSERT_EQ_INT(p->kind == PARAM_ROUTED_EXPERT, p->expert >= 0);
        ASSERT(params_find(t, p->name) == p);
    }
    ASSERT(t->total % PARAMS_ALIGN == 0);
    ASSERT(t->n == 0 || t->total - (by_off[t->n - 1]->offset + by_off[t->n - 1]->numel) < PARAMS_ALIGN);
    free(names);
    free(by_off);
}

// Every routed projection of every MoE layer is one [E_local, rows, cols] block: expert e at block + (e-e0)*numel.
static void check_expert_blocks(const ModelConfig *m, const ParamTable *t) {
    static const char *const projs[3] = {"gate_proj", "up_proj", "down_proj"};
    int layers[128];
    int n = params_moe_layers(m, &t->stage, layers, 128);
    ASSERT(n <= 128);
    for (int li = 0; li < n; li++) {
        for (int p = 0; p < 3; p++) {
            const ParamInfo *b = params_expert_block(t, layers[li], projs[p]);
            ASSERT(b != NULL);
            ASSERT_EQ_INT(b->expert, t->expert_begin);
            for (int e = t->expert_begin; e < t->expert_end; e++) {
                const ParamInfo *x = params_get(t, "model.layers.%d.mlp.experts.%d.%s.weight", layers[li], e,
                                                projs[p]);
                ASSERT_EQ_INT(x->offset, b->offset + (int64_t)(e - t->expert_begin) * b->numel);
                ASSERT_EQ_INT(x->shape[0], p == 2 ? m->dim : m->moe_inter_dim);
                ASSERT_EQ_INT(x->shape[1], p == 2 ? m->moe_inter_dim : m->dim);
                ASSERT_EQ_INT(x->layer, layers[li]);
            }
        }
    }
}

static void assert_shape(const ParamTable *t, const char *name, int64_t r, int64_t c, ParamKind kind) {
    const ParamInfo *p = params_find(t, name);
    ASSERT_MSG(p != NULL, "missing %s", name);
    ASSERT_EQ_INT(p->shape[0], r);
    ASSERT_EQ_INT(p->shape[1], c);
    ASSERT_EQ_INT(p->ndim, c ? 2 : 1);
    ASSERT_EQ_INT(p->kind, kind);
}

TEST(params_v3_names_shapes_counts) {
    ModelConfig m = test_model_v3();
    StageSpec s = params_full_stage(&m);
    ParamTable t;
    params_build(&t, &m, &s);
    // Hand count of tensors: dense layer = 2 block norms + 7 MLA (q_a, q_a_norm, q_b, kv_a, kv_a_norm, kv_b, o)
    // + 3 FFN = 12; MoE layer = 9 + router + 3 shared + 3 * 256 experts = 781; main = embed + 3 * 12 + 58 * 781
    // + norm + head = 45,337; MTP = enorm, hnorm, eh_proj + 781 + shared_head.norm = 785.
    ASSERT_EQ_INT(t.n, 45337 + 785);
    // 671,026,404,352 + 11,610,067,968 (derivation in train/plan.c)
    ASSERT_EQ_INT(params_numel(&t), 682636472320LL);
    ASSERT(t.total >= params_numel(&t));
    assert_shape(&t, "model.embed_tokens.weight", 129280, 7168, PARAM_EMBED);
    assert_shape(&t, "model.layers.0.input_layernorm.weight", 7168, 0, PARAM_NORM);
    assert_shape(&t, "model.layers.0.self_attn.q_a_proj.weight", 1536, 7168, PARAM_ATTN);
    assert_shape(&t, "model.layers.0.self_attn.q_a_layernorm.weight", 1536, 0, PARAM_NORM);
    assert_shape(&t, "model.layers.0.self_attn.q_b_proj.weight", 128 * 192, 1536, PARAM_ATTN);
    assert_shape(&t, "model.layers.0.self_attn.kv_a_proj_with_mqa.weight", 576, 7168, PARAM_ATTN);
    assert_shape(&t, "model.layers.0.self_attn.kv_a_layernorm.weight", 512, 0, PARAM_NORM);
    assert_shape(&t, "model.layers.0.self_attn.kv_b_proj.weight", 128 * 256, 512, PARAM_ATTN);
    assert_shape(&t, "model.layers.0.self_attn.o_proj.weight", 7168, 128 * 128, PARAM_ATTN);
    assert_shape(&t, "model.layers.2.mlp.gate_proj.weight", 18432, 7168, PARAM_DENSE_FFN);
    assert_shape(&t, "model.layers.2.mlp.down_proj.weight", 7168, 18432, PARAM_DENSE_FFN);
    assert_shape(&t, "model.layers.3.mlp.gate.weight", 256, 7168, PARAM_ROUTER);
    assert_shape(&t, "model.layers.3.mlp.shared_experts.up_proj.weight", 2048, 7168, PARAM_SHARED_EXPERT);
    assert_shape(&t, "model.layers.3.mlp.shared_experts.down_proj.weight", 7168, 2048, PARAM_SHARED_EXPERT);
    assert_shape(&t, "model.layers.60.mlp.experts.255.down_proj.weight", 7168, 2048, PARAM_ROUTED_EXPERT);
    assert_shape(&t, "model.norm.weight", 7168, 0, PARAM_NORM);
    assert_shape(&t, "lm_head.weight", 129280, 7168, PARAM_HEAD);
    assert_shape(&t, "model.layers.61.enorm.weight", 7168, 0, PARAM_NORM);
    assert_shape(&t, "model.layers.61.hnorm.weight", 7168, 0, PARAM_NORM);
    assert_shape(&t, "model.layers.61.eh_proj.weight", 7168, 2 * 7168, PARAM_MTP_PROJ);
    assert_shape(&t, "model.layers.61.mlp.experts.7.up_proj.weight", 2048, 7168, PARAM_ROUTED_EXPERT);
    assert_shape(&t, "model.layers.61.shared_head.norm.weight", 7168, 0, PARAM_NORM);
    // Absent: the dense layers have no router, the selection bias is no parameter, no q_proj with q_lora,
    // shared embedding / head are not duplicated under the MTP layer, no layer 62.
    ASSERT(params_find(&t, "model.layers.2.mlp.gate.weight") == NULL);
    ASSERT(params_find(&t, "model.layers.3.mlp.gate.e_score_correction_bias") == NULL);
    ASSERT(params_find(&t, "model.layers.0.self_attn.q_proj.weight") == NULL);
    ASSERT(params_find(&t, "model.layers.61.embed_tokens.weight") == NULL);
    ASSERT(params_find(&t, "model.layers.61.shared_head.head.weight") == NULL);
    ASSERT(params_find(&t, "model.layers.62.input_layernorm.weight") == NULL);
    ASSERT(params_find(&t, "model.layers.3.mlp.experts.256.up_proj.weight") == NULL);
    // Metadata.
    const ParamInfo *e = params_find(&t, "model.layers.61.mlp.experts.7.up_proj.weight");
    ASSERT(e->layer == 61 && e->expert == 7 && e->is_mtp == 1 && e->no_decay == 0);
    const ParamInfo *h = params_find(&t, "lm_head.weight");
    ASSERT(h->layer == -1 && h->expert == -1 && h->is_mtp == 0);
    ASSERT_EQ_INT(params_find(&t, "model.layers.5.self_attn.o_proj.weight")->layer, 5);
    // Order: the embedding first, at offset 0; the MTP module after the head.
    ASSERT_EQ_INT(t.params[0].offset, 0);
    ASSERT_EQ_STR(t.params[0].name, "model.embed_tokens.weight");
    ASSERT(params_find(&t, "model.layers.61.enorm.weight")->offset > h->offset);
    check_layout(&t);
    check_expert_blocks(&m, &t);
    params_free(&t);
}

TEST(params_expert_block_order) {
    // gate block, then up block, then down block; each right after the previous one (block starts aligned).
    ModelConfig m = test_model_tiny();
    m.dim = 5; m.moe_inter_dim = 3;  // 15-element experts: packing inside a block is visible
    StageSpec s = params_full_stage(&m);
    ParamTable t;
    params_build(&t, &m, &s);
    const ParamInfo *g = params_expert_block(&t, 1, "gate_proj"), *u = params_expert_block(&t, 1, "up_proj"),
                    *d = params_expert_block(&t, 1, "down_proj");
    ASSERT(g && u && d);
    ASSERT_EQ_INT(g->numel, 15);
    ASSERT_EQ_INT(params_get(&t, "model.layers.1.mlp.experts.3.gate_proj.weight")->offset, g->offset + 45);
    ASSERT_EQ_INT(u->offset, (g->offset + 4 * 15 + 63) / 64 * 64);
    ASSERT_EQ_INT(d->offset, (u->offset + 4 * 15 + 63) / 64 * 64);
    ASSERT(params_expert_block(&t, 0, "gate_proj") == NULL);  // dense layer
    ASSERT(params_expert_block(&t, 1, "bogus_proj") == NULL);
    check_layout(&t);
    check_expert_blocks(&m, &t);
    params_free(&t);
}

TEST(params_tiny_hand_offsets) {
    // Tiny model, hand layout: embed [16, 8] = 128 at 0; layer 0: input_layernorm 8 at 128, q_a [4, 8] at 192,
    // q_a_layernorm 4 at 256, q_b [8, 4] at 320, kv_a [6, 8] at 384, kv_a_layernorm 4 at 448, kv_b [8, 4] at 512,
    // o [8, 4] at 576, post_attention_layernorm 8 at 640, gate/up/down [16,8]/[16,8]/[8,16] at 704, 832, 960;
    // layer 1 starts at 1088.
    ModelConfig m = test_model_tiny();
    StageSpec s = params_full_stage(&m);
    ParamTable t;
    params_build(&t, &m, &s);
    static const struct { const char *name; int64_t off; } want[] = {
        {"model.embed_tokens.weight", 0}, {"model.layers.0.input_layernorm.weight", 128},
        {"model.layers.0.self_attn.q_a_proj.weight", 192}, {"model.layers.0.self_attn.q_a_layernorm.weight", 256},
        {"model.layers.0.self_attn.q_b_proj.weight", 320},
        {"model.layers.0.self_attn.kv_a_proj_with_mqa.weight", 384},
        {"model.layers.0.self_attn.kv_a_layernorm.weight", 448}, {"model.layers.0.self_attn.kv_b_proj.weight", 512},
        {"model.layers.0.self_attn.o_proj.weight", 576}, {"model.layers.0.post_attention_layernorm.weight", 640},
        {"model.layers.0.mlp.gate_proj.weight", 704}, {"model.layers.0.mlp.up_proj.weight", 832},
        {"model.layers.0.mlp.down_proj.weight", 960}, {"model.layers.1.input_layernorm.weight", 1088},
    };
    for (size_t i = 0; i < sizeof want / sizeof *want; i++)
        ASSERT_EQ_INT(params_get(&t, "%s", want[i].name)->offset, want[i].off);
    // Numel by hand: main 1560 + MTP 864 (see tests/test_plan.c).
    ASSERT_EQ_INT(params_numel(&t), 1560 + 864);
    check_layout(&t);
    params_free(&t);
}

TEST(params_q_lora_zero_uses_q_proj) {
    ModelConfig m = test_model_bench();
    m.q_lora_rank = 0;
    StageSpec s = params_full_stage(&m);
    ParamTable t;
    params_build(&t, &m, &s);
    assert_shape(&t, "model.layers.4.self_attn.q_proj.weight", 12 * 192, 1536, PARAM_ATTN);
    ASSERT(params_find(&t, "model.layers.4.self_attn.q_a_proj.weight") == NULL);
    ASSERT(params_find(&t, "model.layers.4.self_attn.q_a_layernorm.weight") == NULL);
    ASSERT(params_find(&t, "model.layers.4.self_attn.q_b_proj.weight") == NULL);
    // Hand: bench total 1,874,803,200 + MTP 163,782,912 (test_plan.c) minus, in 13 blocks, the q_lora path
    // (786,432 + 512 + 1,179,648) plus q_proj 2304 * 1536 = 3,538,944: +1,572,352 per block.
    ASSERT_EQ_INT(params_numel(&t), 1874803200LL + 163782912LL + 13LL * 1572352);
    check_layout(&t);
    check_expert_blocks(&m, &t);
    params_free(&t);
}

// Stages of a pp-way split partition the full table: every tensor exactly once, same shape and metadata.
static void check_partition(const ModelConfig *m, int pp) {
    StageSpec full = params_full_stage(m);
    ParamTable ft;
    params_build(&ft, m, &full);
    int *seen = calloc((size_t)ft.n, sizeof *seen);
    int next_layer = 0, n_embed = 0, n_head = 0, n_mtp = 0;
    for (int st = 0; st < pp; st++) {
        StageSpec s = params_stage_spec(m, pp, st);
        ASSERT_EQ_INT(s.layer_begin, next_layer);
        next_layer = s.layer_end;
        ASSERT(s.layer_end - s.layer_begin + (s.has_mtp ? m->mtp_depth : 0) >= 1);
        n_embed += s.has_embed; n_head += s.has_head; n_mtp += s.has_mtp;
        ParamTable t;
        params_build(&t, m, &s);
        check_layout(&t);
        check_expert_blocks(m, &t);
        for (int i = 0; i < t.n; i++) {
            const ParamInfo *f = params_find(&ft, t.params[i].name);
            ASSERT_MSG(f != NULL, "stage %d has %s, not in the full table", st, t.params[i].name);
            seen[f - ft.params]++;
            ASSERT(f->numel == t.params[i].numel && f->kind == t.params[i].kind && f->layer == t.params[i].layer);
        }
        params_free(&t);
    }
    ASSERT_EQ_INT(next_layer, m->n_layers);
    ASSERT(n_embed == 1 && n_head == 1 && n_mtp == 1);
    for (int i = 0; i < ft.n; i++) ASSERT_MSG(seen[i] == 1, "%s held %d times", ft.params[i].name, seen[i]);
    free(seen);
    params_free(&ft);
}

TEST(params_stage_splits_partition) {
    ModelConfig b = test_model_bench();
    for (int pp = 1; pp <= 13; pp++) check_partition(&b, pp);
    ModelConfig t = test_model_tiny();
    t.mtp_depth = 3;   // MTP blocks outnumber the last stage's share: it holds only them
    t.n_layers = 4;
    for (int pp = 1; pp <= 4; pp++) check_partition(&t, pp);
    // Hand: 4 + 3 = 7 blocks over 4 stages -> shares 2,2,2,1; the last share (1) < 3 MTP blocks, so the main
    // layers go over the first 3 stages as 2,1,1 and the last stage holds MTP only.
    StageSpec s0 = params_stage_spec(&t, 4, 0), s3 = params_stage_spec(&t, 4, 3);
    ASSERT(s0.layer_begin == 0 && s0.layer_end == 2 && s0.has_embed && !s0.has_head);
    ASSERT(s3.layer_begin == 4 && s3.layer_end == 4 && s3.has_head && s3.has_mtp && !s3.has_embed);
}

TEST(params_v3_pp16_split) {
    // Hand: 61 + 1 = 62 blocks over 16 stages = 3 rem 14: stages 0-13 take 4, 14 and 15 take 3; the last one's 3
    // include the MTP block. So stage 0 = [0,4), 13 = [52,56), 14 = [56,59), 15 = [59,61) + MTP.
    ModelConfig m = test_model_v3();
    StageSpec s0 = params_stage_spec(&m, 16, 0), s13 = params_stage_spec(&m, 16, 13);
    StageSpec s14 = params_stage_spec(&m, 16, 14), s15 = params_stage_spec(&m, 16, 15);
    ASSERT(s0.layer_begin == 0 && s0.layer_end == 4 && s0.has_embed && !s0.has_head && !s0.has_mtp);
    ASSERT(s13.layer_begin == 52 && s13.layer_end == 56);
    ASSERT(s14.layer_begin == 56 && s14.layer_end == 59 && !s14.has_head);
    ASSERT(s15.layer_begin == 59 && s15.layer_end == 61 && s15.has_head && s15.has_mtp);
    int layers[8];
    ASSERT_EQ_INT(params_moe_layers(&m, &s0, layers, 8), 1);
    ASSERT_EQ_INT(layers[0], 3);
    ASSERT_EQ_INT(params_moe_layers(&m, &s15, layers, 8), 3);
    ASSERT(layers[0] == 59 && layers[1] == 60 && layers[2] == 61);
    StageSpec full = params_full_stage(&m);
    ASSERT_EQ_INT(params_moe_layers(&m, &full, NULL, 0), 59);
}

TEST(params_expert_parallel_subsets) {
    ModelConfig m = test_model_bench();
    StageSpec s = params_full_stage(&m);
    ParamTable full;
    params_build(&full, &m, &s);
    int64_t routed_full = 0, routed_sum = 0, other_full = 0;
    for (int i = 0; i < full.n; i++) {
        if (full.params[i].kind == PARAM_ROUTED_EXPERT) routed_full += full.params[i].numel;
        else other_full += full.params[i].numel;
    }
    for (int r = 0; r < 4; r++) {
        s.ep_size = 4; s.ep_rank = r;
        ParamTable t;
        params_build(&t, &m, &s);
        ASSERT(t.expert_begin == 16 * r && t.expert_end == 16 * (r + 1));
        ASSERT(params_find(&t, "model.layers.5.mlp.experts.0.up_proj.weight") == NULL || r == 0);
        params_get(&t, "model.layers.5.mlp.experts.%d.up_proj.weight", 16 * r + 15);
        ASSERT_EQ_INT(params_expert_block(&t, 5, "down_proj")->expert, 16 * r);
        int64_t routed = 0, other = 0;
        for (int i = 0; i < t.n; i++) {
            if (t.params[i].kind == PARAM_ROUTED_EXPERT) routed += t.params[i].numel;
            else other += t.params[i].numel;
        }
        ASSERT_EQ_INT(other, other_full);      // everything else is replicated on every EP rank
        routed_sum += routed;
        check_layout(&t);
        check_expert_blocks(&m, &t);
        params_free(&t);
    }
    ASSERT_EQ_INT(routed_sum, routed_full);
    ASSERT_EQ_INT(routed_full, 12LL * 64 * 3 * 512 * 1536);  // 11 MoE layers + the MTP block
    params_free(&full);
}

TEST(params_all_dense_model) {
    // n_dense_layers >= n_layers: no MoE anywhere, MTP block dense too, experts may be 0.
    ModelConfig m = test_model_tiny();
    m.n_dense_layers = 2; m.n_routed_experts = 0;
    StageSpec s = params_full_stage(&m);
    ParamTable t;
    params_build(&t, &m, &s);
    ASSERT(params_find(&t, "model.layers.2.mlp.gate_proj.weight") != NULL);
    ASSERT(params_find(&t, "model.layers.2.mlp.gate.weight") == NULL);
    ASSERT_EQ_INT(params_moe_layers(&m, &s, NULL, 0), 0);
    // Hand: 128 + 2 * 584 + 8 + 128 + MTP (8 + 8 + 128 + 584 + 8) = 1432 + 736.
    ASSERT_EQ_INT(params_numel(&t), 1432 + 736);
    check_layout(&t);
    params_free(&t);
}

static void die_get(void *arg) {
    ParamTable *t = arg;
    params_get(t, "model.layers.%d.mlp.gate.weight", 0);
}
static void die_mtp_without_head(void *arg) {
    ModelConfig m = test_model_tiny();
    StageSpec s = {.layer_begin = 0, .layer_end = 2, .has_mtp = 1};
    ParamTable t;
    params_build(&t, &m, &s);
    (void)arg;
}
static void die_ep(void *arg) {
    ModelConfig m = test_model_tiny();
    StageSpec s = params_full_stage(&m);
    s.ep_size = 3;
    ParamTable t;
    params_build(&t, &m, &s);
    (void)arg;
}
static void die_range(void *arg) {
    ModelConfig m = test_model_tiny();
    StageSpec s = {.layer_begin = 1, .layer_end = 3};
    ParamTable t;
    params_build(&t, &m, &s);
    (void)arg;
}
static void die_pp(void *arg) {
    ModelConfig m = test_model_tiny();
    params_stage_spec(&m, 4, 0);  // 3 blocks
    (void)arg;
}
static void die_moe_no_experts(void *arg) {
    ModelConfig m = test_model_tiny();
    m.n_routed_experts = 0;
    StageSpec s = params_full_stage(&m);
    ParamTable t;
    params_build(&t, &m, &s);
    (void)arg;
}

TEST(params_bad_specs_die_clearly) {
    ModelConfig m = test_model_tiny();
    StageSpec s = params_full_stage(&m);
    ParamTable t;
    params_build(&t, &m, &s);
    expect_die(die_get, &t, "model.layers.0.mlp.gate.weight is not in this stage's table");
    params_free(&t);
    expect_die(die_mtp_without_head, NULL, "must also hold the output head");
    expect_die(die_ep, NULL, "parallel.ep = 3 must divide model.n_routed_experts = 4");
    expect_die(die_range, NULL, "stage layers [1, 3) outside the model's 2 layers");
    expect_die(die_pp, NULL, "parallel.pp = 4 is more than the 3 transformer blocks");
    expect_die(die_moe_no_experts, NULL, "needs n_routed_experts > 0");
}
