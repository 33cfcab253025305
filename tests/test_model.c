// Model properties that need no external reference: recompute is bit-identical, two pipeline stages chained by
// hand equal one stage, gradients scale and accumulate exactly, routing record/replay, expert load counts, the
// balance loss against a host computation, eval/logits against the training forward, init statistics and
// determinism, and the error messages for bad input. (HF comparison: test_hf_reference.c; finite differences:
// test_gradcheck.c; MTP: test_model_mtp.c.)
#include "model/model_impl.h"
#include "tests/test_model_util.h"

#include <math.h>
#include <omp.h>
#include <sys/wait.h>
#include <unistd.h>

static const Backend *cpu(void) { return backend_get("cpu"); }

// Every gradient of `a` equals the same-named gradient of `b` bit for bit.
static void assert_same_grads(Model *a, Model *b) {
    const ParamTable *t = model_params(a);
    for (int i = 0; i < t->n; i++)
        ASSERT_MSG(tm_same(a, b, cpu(), t->params[i].name, 1), "gradient of %s differs", t->params[i].name);
}

TEST(model_recompute_bit_identical) {
    Config c = tm_config();
    Config cr = c;
    cr.train.recompute = 1;
    Model *a = tm_model(&c, cpu(), params_full_stage(&c.model), 3);
    Model *b = tm_model(&cr, cpu(), params_full_stage(&c.model), 3);
    int32_t *tok = tm_tokens(&c, c.train.micro_batch, c.train.seq_len, 1);
    int32_t *tok2 = tm_tokens(&c, c.train.micro_batch, c.train.seq_len, 2);
    MicroLosses la, lb;
    for (int rep = 0; rep < 2; rep++) {   // two micro-batches: accumulation over a recomputed backward too
        model_step(a, rep ? tok2 : tok, 0.5f, 0.3f, 0.01f, &la);
        model_step(b, rep ? tok2 : tok, 0.5f, 0.3f, 0.01f, &lb);
        ASSERT(memcmp(&la, &lb, sizeof la) == 0);
    }
    assert_same_grads(a, b);
    ASSERT(model_arena_bytes(b) < model_arena_bytes(a));
    printf("    arena %zu bytes without recompute, %zu with\n", model_arena_bytes(a), model_arena_bytes(b));
    free(tok); free(tok2);
    model_free(a); model_free(b);
}

// max |a - b| <= tol * max |b| over a tensor of host values
static void assert_close(const float *a, const float *b, int64_t n, double tol, const char *what) {
    double dmax = 0, bmax = 0;
    for (int64_t j = 0; j < n; j++) {
        dmax = fmax(dmax, fabs((double)a[j] - b[j]));
        bmax = fmax(bmax, fabs(b[j]));
    }
    ASSERT_MSG(dmax <= tol * bmax, "%s: max |diff| %g of max %g", what, dmax, bmax);
}

// Two pipeline stages chained by hand (activations forward, their gradient backward) against one stage. With MTP,
// the last stage holds a tied copy of the embedding for its MTP modules; the two copies' gradients sum to the
// single stage's (in another order, hence a tolerance there; every other gradient is bit-identical).
static void two_stages(int mtp_depth, int split) {
    Config c = tm_config();
    c.model.mtp_depth = mtp_depth;
    c.model.n_layers = 4;   // layer 0 dense, 1..3 MoE; stage 0 = embedding + layers [0, split); stage 1 = the rest
    const Backend *be = cpu();
    Model *full = tm_model(&c, be, params_full_stage(&c.model), 5);
    StageSpec s0 = {.layer_begin = 0, .layer_end = split, .has_embed = 1, .ep_size = 1};
    StageSpec s1 = {.layer_begin = split, .layer_end = 4, .has_head = 1, .has_mtp = 1, .has_embed = mtp_depth > 0,
                    .ep_size = 1};
    Model *a = tm_model(&c, be, s0, 5), *b = tm_model(&c, be, s1, 5);
    // init is keyed by name: the stages start from the full model's values without copying
    for (int i = 0; i < model_params(a)->n; i++) ASSERT(tm_same(a, full, be, model_params(a)->params[i].name, 0));
    for (int i = 0; i < model_params(b)->n; i++) ASSERT(tm_same(b, full, be, model_params(b)->params[i].name, 0));

    int32_t *tok = tm_tokens(&c, c.train.micro_batch, c.train.seq_len, 8);
    size_t hid = (size_t)c.train.micro_batch * c.train.seq_len * c.model.dim * sizeof(float);
    MicroLosses lf, la, lb;
    for (int rep = 0; rep < 2; rep++) {
        model_step(full, tok, 1.0f, 0.3f, 0.05f, &lf);
        model_stage_forward(a, tok, 1.0f, 0.3f, 0.05f, 1, &la);
        be->copy(model_stage_input(b).data, model_stage_output(a).data, hid);      // send activations
        model_stage_forward(b, tok, 1.0f, 0.3f, 0.05f, 1, &lb);
        model_stage_backward(b);
        be->copy(model_stage_grad(a).data, model_stage_grad(b).data, hid);         // send their gradient back
        model_stage_backward(a);
    }
    ASSERT(la.lm_loss == 0 && lb.lm_loss == lf.lm_loss && lb.mtp_loss[0] == lf.mtp_loss[0]);
    ASSERT(la.balance_loss > 0 && lb.balance_loss > 0);
    ASSERT_NEAR(la.balance_loss + lb.balance_loss, lf.balance_loss, 1e-12, 0);
    ASSERT_NEAR(la.total + lb.total, lf.total, 1e-12, 0);
    const char *emb = "model.embed_tokens.weight";
    for (int s = 0; s < 2; s++) {
        Model *st = s ? b : a;
        const ParamTable *t = model_params(st);
        for (int i = 0; i < t->n; i++)
            if (strcmp(t->params[i].name, emb) != 0)
                ASSERT_MSG(tm_same(st, full, be, t->params[i].name, 1), "gradient of %s differs", t->params[i].name);
    }
    const ParamInfo *pe = params_find(model_params(a), emb);
    float *ga = tm_get(a, be, pe, 1), *gf = tm_get(full, be, params_find(model_params(full), emb), 1);
    if (mtp_depth > 0) {
        float *gb = tm_get(b, be, params_find(model_params(b), emb), 1);
        for (int64_t j = 0; j < pe->numel; j++) ga[j] += gb[j];
        free(gb);
        assert_close(ga, gf, pe->numel, 1e-6, emb);
    } else {
        ASSERT(memcmp(ga, gf, (size_t)pe->numel * sizeof(float)) == 0);
    }
    free(ga); free(gf); free(tok);
    model_free(full); model_free(a); model_free(b);
}

TEST(model_two_stages_equal_one) { two_stages(0, 2); }
TEST(model_two_stages_equal_one_mtp_tied_embedding) { two_stages(1, 2); }
// the last stage holds no main layer: only the head and the MTP module (a planner split when MTP blocks fill it)
TEST(model_two_stages_last_only_head_and_mtp) { two_stages(1, 4); }

// A model without MoE layers (the MTP block is then dense too) runs, and recompute stays bit-identical.
TEST(model_dense_only) {
    Config c = tm_config();
    c.model.n_dense_layers = c.model.n_layers;
    c.model.n_routed_experts = 0;
    Config cr = c;
    cr.train.recompute = 1;
    Model *a = tm_model(&c, cpu(), params_full_stage(&c.model), 3);
    Model *b = tm_model(&cr, cpu(), params_full_stage(&c.model), 3);
    ASSERT_EQ_INT(model_n_moe_layers(a), 0);
    int32_t *tok = tm_tokens(&c, c.train.micro_batch, c.train.seq_len, 1);
    MicroLosses la, lb;
    model_step(a, tok, 1.0f, 0.3f, 0.01f, &la);
    model_step(b, tok, 1.0f, 0.3f, 0.01f, &lb);
    ASSERT(memcmp(&la, &lb, sizeof la) == 0);
    ASSERT(la.balance_loss == 0 && isfinite(la.total) && la.mtp_loss[0] > 0);
    assert_same_grads(a, b);
    free(tok);
    model_free(a); model_free(b);
}

// The head in row chunks (forced to 5 rows: chunks 5, 5, 2) gives the same losses and logits as in one chunk, and
// the same gradients up to the summation order of the head weight's gradient over chunks.
TEST(model_head_row_chunks) {
    Config c = tm_config();
    const Backend *be = cpu();
    Model *a = tm_model(&c, be, params_full_stage(&c.model), 3), *b = tm_model(&c, be, params_full_stage(&c.model), 3);
    ASSERT_EQ_INT(a->head_chunk, c.train.micro_batch * c.train.seq_len);
    b->head_chunk = 5;
    int32_t *tok = tm_tokens(&c, c.train.micro_batch, c.train.seq_len, 4);
    MicroLosses la, lb;
    model_step(a, tok, 1.0f, 0.3f, 0.01f, &la);
    model_step(b, tok, 1.0f, 0.3f, 0.01f, &lb);
    ASSERT(memcmp(&la, &lb, sizeof la) == 0);
    const ParamTable *t = model_params(a);
    for (int i = 0; i < t->n; i++) {
        float *x = tm_get(a, be, &t->params[i], 1), *y = tm_get(b, be, &t->params[i], 1);
        assert_close(y, x, t->params[i].numel, 1e-6, t->params[i].name);
        free(x); free(y);
    }
    int64_t nv = (int64_t)c.train.micro_batch * c.train.seq_len * c.model.vocab_size;
    float *za = xmalloc((size_t)nv * sizeof(float)), *zb = xmalloc((size_t)nv * sizeof(float));
    model_forward_logits(a, tok, za);
    model_forward_logits(b, tok, zb);
    ASSERT(memcmp(za, zb, (size_t)nv * sizeof(float)) == 0);
    free(za); free(zb); free(tok);
    model_free(a); model_free(b);
}

// Gradients are linear in grad_scale and added into the buffer: two micro-steps at 0.5 == one at 1.0. Scaling by a
// power of two commutes with FP32 rounding, but tensors fed by several scattered adds (the embedding gets the main
// input and the MTP input) sum in another order, hence 1e-6 of the tensor's largest gradient rather than bits.
TEST(model_grad_scale_accumulates) {
    Config c = tm_config();
    Model *a = tm_model(&c, cpu(), params_full_stage(&c.model), 3), *b = tm_model(&c, cpu(), params_full_stage(&c.model), 3);
    int32_t *tok = tm_tokens(&c, c.train.micro_batch, c.train.seq_len, 4);
    MicroLosses l;
    model_step(a, tok, 1.0f, 0.3f, 0.01f, &l);
    model_step(b, tok, 0.5f, 0.3f, 0.01f, &l);
    model_step(b, tok, 0.5f, 0.3f, 0.01f, &l);
    const ParamTable *t = model_params(a);
    for (int i = 0; i < t->n; i++) {
        float *x = tm_get(a, cpu(), &t->params[i], 1), *y = tm_get(b, cpu(), &t->params[i], 1);
        assert_close(y, x, t->params[i].numel, 1e-6, t->params[i].name);
        free(x); free(y);
    }
    model_zero_grads(b);
    float g;
    const ParamInfo *p = params_find(model_params(b), "lm_head.weight");
    cpu()->download(&g, model_grad_data(b) + p->offset, sizeof g);
    ASSERT(g == 0);
    free(tok);
    model_free(a); model_free(b);
}

TEST(model_route_record_replay) {
    Config c = tm_config();
    Model *m = tm_model(&c, cpu(), params_full_stage(&c.model), 3);
    int32_t *tok = tm_tokens(&c, c.train.micro_batch, c.train.seq_len, 4);
    int N = c.train.micro_batch * c.train.seq_len, K = c.model.n_activated_experts, E = c.model.n_routed_experts;
    model_set_route_mode(m, ROUTE_RECORD);
    MicroLosses l0, l1, l2;
    model_step(m, tok, 1.0f, 0.3f, 0.01f, &l0);
    int32_t *rec = xmalloc((size_t)model_n_moe_layers(m) * N * K * sizeof(int32_t));
    memcpy(rec, m->record, (size_t)model_n_moe_layers(m) * N * K * sizeof(int32_t));
    // A bias that forces expert 0 of every layer: normal routing changes, replay keeps the recorded choice.
    for (int i = 0; i < model_n_moe_layers(m); i++)
        for (int e = 0; e < E; e++) model_expert_bias(m, i)[e] = e == 0 ? 10.0f : 0.0f;
    model_set_route_mode(m, ROUTE_NORMAL);
    model_eval(m, tok, 0.3f, 0.01f, &l1);
    ASSERT(l1.total != l0.total);
    int32_t top[2];
    cpu()->download(top, m->layers[1].topk.data, sizeof top);
    ASSERT(top[0] == 0);
    model_set_route_mode(m, ROUTE_REPLAY);
    model_eval(m, tok, 0.3f, 0.01f, &l2);
    ASSERT(memcmp(&l2, &l0, sizeof l0) == 0);   // same experts, bit-identical gates and losses
    ASSERT(memcmp(rec, m->record, (size_t)model_n_moe_layers(m) * N * K * sizeof(int32_t)) == 0);
    free(rec); free(tok);
    model_free(m);
}

TEST(model_expert_counts) {
    Config c = tm_config();
    Model *m = tm_model(&c, cpu(), params_full_stage(&c.model), 3);
    int32_t *tok = tm_tokens(&c, c.train.micro_batch, c.train.seq_len, 4);
    int N = c.train.micro_batch * c.train.seq_len, K = c.model.n_activated_experts, E = c.model.n_routed_experts;
    ASSERT_EQ_INT(model_n_moe_layers(m), 3);   // layers 1, 2 and the MTP block
    ASSERT_EQ_INT(model_moe_layer_index(m, 2), 3);
    MicroLosses l;
    model_set_route_mode(m, ROUTE_RECORD);
    model_step(m, tok, 1.0f, 0.3f, 0.0f, &l);
    model_step(m, tok, 1.0f, 0.3f, 0.0f, &l);
    model_eval(m, tok, 0.3f, 0.0f, &l);   // eval does not count
    for (int i = 0; i < model_n_moe_layers(m); i++) {
        int64_t want[64] = {0};
        for (int j = 0; j < N * K; j++) want[m->record[(int64_t)i * N * K + j]] += 2;
        for (int e = 0; e < E; e++) ASSERT_EQ_INT(model_expert_counts(m, i)[e], want[e]);
    }
    model_reset_counts(m);
    for (int i = 0; i < model_n_moe_layers(m); i++)
        for (int e = 0; e < E; e++) ASSERT_EQ_INT(model_expert_counts(m, i)[e], 0);
    free(tok);
    model_free(m);
}

// The balance loss of every MoE layer (main and MTP) recomputed on the host from the layer's scores and choices:
// per sequence, alpha * sum_i f_i P_i with f_i = E / (K T) * count_t(i chosen), P_i = mean_t s_it / sum_j s_jt.
TEST(model_balance_loss_matches_host) {
    Config c = tm_config();
    Model *m = tm_model(&c, cpu(), params_full_stage(&c.model), 3);
    int32_t *tok = tm_tokens(&c, c.train.micro_batch, c.train.seq_len, 4);
    int B = c.train.micro_batch, T = c.train.seq_len, N = B * T;
    int K = c.model.n_activated_experts, E = c.model.n_routed_experts;
    const float alpha = 0.25f;
    MicroLosses l;
    model_eval(m, tok, 0.3f, alpha, &l);
    double want = 0;
    float *s = xmalloc((size_t)N * E * sizeof(float));
    int32_t *idx = xmalloc((size_t)N * K * sizeof(int32_t));
    int n_moe = 0;
    for (int li = 0; li < m->n_main + m->n_mtp; li++) {
        Layer *L = &m->layers[li];
        if (!L->is_moe) continue;
        n_moe++;
        cpu()->download(s, L->scores.data, (size_t)N * E * sizeof(float));
        cpu()->download(idx, L->topk.data, (size_t)N * K * sizeof(int32_t));
        for (int b = 0; b < B; b++) {
            double f[64] = {0}, P[64] = {0}, seq = 0;
            for (int t = b * T; t < (b + 1) * T; t++) {
                double sum = 0;
                for (int e = 0; e < E; e++) sum += s[(int64_t)t * E + e];
                for (int e = 0; e < E; e++) P[e] += s[(int64_t)t * E + e] / sum / T;
                for (int k = 0; k < K; k++) f[idx[t * K + k]] += (double)E / (K * T);
            }
            for (int e = 0; e < E; e++) seq += f[e] * P[e];
            want += alpha * seq / B;
        }
    }
    ASSERT_EQ_INT(n_moe, 3);
    ASSERT_NEAR(l.balance_loss, want, 1e-5, 0);
    ASSERT_NEAR(l.total, l.lm_loss + (double)0.3f * l.mtp_loss[0] + l.balance_loss, 1e-12, 0);
    free(s); free(idx); free(tok);
    model_free(m);
}

// model_eval gives the step's losses bit for bit; model_forward_logits gives logits whose cross-entropy (on the
// host, in double) is the step's lm loss.
TEST(model_eval_and_logits_match_step) {
    Config c = tm_config();
    Model *m = tm_model(&c, cpu(), params_full_stage(&c.model), 3);
    int B = c.train.micro_batch, T = c.train.seq_len, V = c.model.vocab_size, S = T + 2;
    int32_t *tok = tm_tokens(&c, B, T, 4);
    MicroLosses ls, le;
    model_step(m, tok, 1.0f, 0.3f, 0.01f, &ls);
    model_eval(m, tok, 0.3f, 0.01f, &le);
    ASSERT(memcmp(&ls, &le, sizeof ls) == 0);
    float *logits = xmalloc((size_t)B * T * V * sizeof(float));
    model_forward_logits(m, tok, logits);
    double sum = 0;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            const float *z = logits + ((int64_t)b * T + t) * V;
            double mx = z[0], se = 0;
            for (int v = 1; v < V; v++) mx = z[v] > mx ? z[v] : mx;
            for (int v = 0; v < V; v++) se += exp(z[v] - mx);
            sum += mx + log(se) - z[tok[b * S + t + 1]];
        }
    ASSERT_NEAR(sum / (B * T), ls.lm_loss, 1e-6, 0);
    free(logits); free(tok);
    model_free(m);
}

TEST(model_init_distribution_and_determinism) {
    Config c = tm_config();
    c.model.vocab_size = 4096;
    c.model.dim = 64;   // the embedding: 262144 samples
    const Backend *be = cpu();
    Model *a = model_create(&c, be, params_full_stage(&c.model), 1, 4);
    Model *b = model_create(&c, be, params_full_stage(&c.model), 1, 4);
    omp_set_num_threads(1);
    model_init(a, 42);
    omp_set_num_threads(2);
    model_init(b, 42);
    const ParamTable *t = model_params(a);
    size_t bytes = (size_t)t->total * sizeof(float);
    ASSERT(memcmp(model_param_data(a), model_param_data(b), bytes) == 0);   // thread count does not matter
    model_init(b, 43);
    ASSERT(memcmp(model_param_data(a), model_param_data(b), bytes) != 0);
    for (int i = 0; i < t->n; i++) {
        const ParamInfo *p = &t->params[i];
        float *v = tm_get(a, be, p, 0);
        if (p->kind == PARAM_NORM) {
            for (int64_t j = 0; j < p->numel; j++) ASSERT(v[j] == 1.0f);
        } else if (p->kind == PARAM_EMBED) {
            // mean within 5 standard errors, std within 1% (7 standard errors), tails like a Gaussian
            double s1 = 0, s2 = 0, tail = 0, n = (double)p->numel, sd = c.model.init_std;
            for (int64_t j = 0; j < p->numel; j++) {
                s1 += v[j];
                s2 += (double)v[j] * v[j];
                tail += fabs(v[j]) > 2 * sd;
            }
            double mean = s1 / n, std = sqrt(s2 / n - mean * mean);
            ASSERT_NEAR(mean, 0, 0, 5 * sd / sqrt(n));
            ASSERT_NEAR(std, sd, 0.01, 0);
            ASSERT_NEAR(tail / n, 0.0455, 0, 0.003);
        }
        free(v);
    }
    model_free(a); model_free(b);
}

// ---- bad input ----

// Runs fn(arg) in a child; it must exit with status 1 and print `needle`.
static void expect_death(void (*fn)(void *), void *arg, const char *needle) {
    int fds[2];
    ASSERT(pipe(fds) == 0);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        dup2(fds[1], 1);
        dup2(fds[1], 2);
        fn(arg);
        _exit(0);
    }
    close(fds[1]);
    char buf[8192];
    size_t len = 0;
    ssize_t r;
    while ((r = read(fds[0], buf + len, sizeof buf - 1 - len)) > 0) len += (size_t)r;
    buf[len] = 0;
    close(fds[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    ASSERT_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 1, "expected exit status 1 (status %d), output:\n%s", st, buf);
    ASSERT_CONTAINS(buf, needle);
}

static void die_bad_token(void *arg) {
    Config c = tm_config();
    Model *m = tm_model(&c, cpu(), params_full_stage(&c.model), 3);
    int32_t *tok = tm_tokens(&c, c.train.micro_batch, c.train.seq_len, 4);
    tok[*(int *)arg] = c.model.vocab_size;
    MicroLosses l;
    model_step(m, tok, 1.0f, 0.3f, 0.0f, &l);
}
static void die_mtp_without_embed(void *arg) {
    Config c = tm_config();
    StageSpec s = {.layer_begin = 2, .layer_end = 3, .has_head = 1, .has_mtp = 1, .ep_size = 1};
    model_create(&c, cpu(), s, 1, 4);
}
static void die_bad_groups(void *arg) {
    Config c = tm_config();
    c.model.n_expert_groups = 3;
    model_create(&c, cpu(), params_full_stage(&c.model), 1, 4);
}
static void die_odd_rope(void *arg) {
    Config c = tm_config();
    c.model.qk_rope_head_dim = 3;
    model_create(&c, cpu(), params_full_stage(&c.model), 1, 4);
}
static void die_backward_first(void *arg) {
    Config c = tm_config();
    Model *m = tm_model(&c, cpu(), params_full_stage(&c.model), 3);
    model_stage_backward(m);
}
static void die_replay_unrecorded(void *arg) {
    Config c = tm_config();
    Model *m = tm_model(&c, cpu(), params_full_stage(&c.model), 3);
    int32_t *tok = tm_tokens(&c, c.train.micro_batch, c.train.seq_len, 4);
    MicroLosses l;
    model_set_route_mode(m, ROUTE_REPLAY);
    model_eval(m, tok, 0.3f, 0.0f, &l);
}
static void die_logits_on_stage(void *arg) {
    Config c = tm_config();
    c.model.mtp_depth = 0;
    StageSpec s = {.layer_begin = 0, .layer_end = 2, .has_embed = 1, .ep_size = 1};
    Model *m = tm_model(&c, cpu(), s, 3);
    int32_t *tok = tm_tokens(&c, c.train.micro_batch, c.train.seq_len, 4);
    float logits[1];
    model_forward_logits(m, tok, logits);
}

static void die_bf16_on_cpu(void *arg) {
    Config c = tm_config();
    c.train.precision = PRECISION_BF16;
    model_create(&c, cpu(), params_full_stage(&c.model), 1, 4);
}
static void die_fp8(void *arg) {
    Config c = tm_config();
    c.train.precision = PRECISION_FP8;
    model_create(&c, cpu(), params_full_stage(&c.model), 1, 4);
}

TEST(model_bad_input_errors) {
    expect_death(die_bf16_on_cpu, NULL, "train.precision: bf16 needs a backend with BF16 kernels");
    expect_death(die_fp8, NULL, "train.precision: fp8");
    int pos = 9;   // row 1 (of T + 1 + D = 8 columns), column 1
    expect_death(die_bad_token, &pos, "token 24 at micro-batch position [1, 1]");
    expect_death(die_mtp_without_embed, NULL, "need the embedding on the same stage");
    expect_death(die_bad_groups, NULL, "model.n_expert_groups = 3 must divide model.n_routed_experts = 8");
    expect_death(die_odd_rope, NULL, "model.qk_rope_head_dim must be even");
    expect_death(die_backward_first, NULL, "no training forward");
    expect_death(die_replay_unrecorded, NULL, "no routing was recorded for layer 1");
    expect_death(die_logits_on_stage, NULL, "needs a stage with the embedding and the head");
}
