// Sampling tests (train/sample.c): greedy generation against an independent loop over model_forward_logits (with
// and without a sliding window, different padding), the limits temperature -> 0 and top_p -> 0, seeds, the id mask
// (a model rigged to prefer PAD/BOS/out-of-tokenizer ids), EOS stopping, the empirical distribution of the first
// token against softmax of the logits, the sampler's temperature / nucleus math on hand-made logits, UTF-8-safe
// streaming, a BPE tokenizer with a larger model vocabulary, and the error messages for bad input.
#include "tests/child_exit.h"
#include "tests/test_model_util.h"
#include "train/sample.h"

#include <math.h>
#include <omp.h>

static const Backend *cpu(void) { return backend_get("cpu"); }

// The tiny test model (tests/test_model_util.h: dim 16, dense + MoE layers, MTP 1, init_std 0.2) with the byte
// tokenizer's model vocabulary of configs/tiny.yaml (320 > the tokenizer's 259), B = 1, context T.
// One OpenMP thread: a forward pass of this model is all parallel-region overhead (0.2 ms on one thread, 20-40x that
// with two threads on a loaded 2-core machine), and these tests run thousands. Each test is its own process.
static Model *tiny_model(int T, int V, uint64_t seed) {
    omp_set_num_threads(1);
    Config c = tm_config();
    c.model.vocab_size = V;
    c.train.seq_len = T;
    c.train.micro_batch = 1;
    return tm_model(&c, cpu(), params_full_stage(&c.model), seed);
}

// Greedy generation written directly against model_forward_logits, from the byte tokenizer's definition
// (data/FORMAT.md: ids 0..255 are bytes, 256 EOS, 257 BOS, 258 PAD): context = EOS + the prompt's bytes, window =
// the last T tokens, padding = pseudo-random ids over the whole model vocabulary (sample.c pads with EOS; causal
// attention must make that irrelevant), argmax over ids 0..256, stop at EOS. Returns the count of ids written.
static int ref_greedy(Model *m, const char *prompt, int n_new, uint32_t *ids) {
    int T = model_seq_len(m), V = model_config(m)->vocab_size, S = T + 1 + model_config(m)->mtp_depth;
    int n_ctx = 0, n = 0;
    uint32_t *ctx = xmalloc((strlen(prompt) + 1 + (size_t)n_new) * sizeof *ctx);
    ctx[n_ctx++] = 256;
    for (const char *p = prompt; *p; p++) ctx[n_ctx++] = (uint8_t)*p;
    int32_t *win = xmalloc((size_t)S * sizeof *win);
    float *logits = xmalloc((size_t)T * V * sizeof *logits);
    uint64_t pad = 12345;
    for (int step = 0; step < n_new; step++) {
        int w = n_ctx < T ? n_ctx : T;
        for (int i = 0; i < w; i++) win[i] = (int32_t)ctx[n_ctx - w + i];
        for (int i = w; i < S; i++) win[i] = (int32_t)(tm_next(&pad) % (uint64_t)V);
        model_forward_logits(m, win, logits);
        const float *row = logits + (size_t)(w - 1) * V;
        int best = 0;
        for (int i = 1; i <= 256; i++)
            if (row[i] > row[best]) best = i;
        if (best == 256) break;
        ctx[n_ctx++] = (uint32_t)best;
        ids[n++] = (uint32_t)best;
    }
    free(ctx); free(win); free(logits);
    return n;
}

static SampleOptions opts(double temperature, double top_p, uint64_t seed) {
    return (SampleOptions){.temperature = temperature, .top_p = top_p, .seed = seed};
}

// sample_generate's ids equal ref's, and the text is those bytes (the byte tokenizer decodes id b to byte b).
static void assert_same_as_ref(const SampleResult *r, const uint32_t *ref, int n_ref) {
    ASSERT_EQ_INT(r->n_ids, n_ref);
    for (int i = 0; i < n_ref; i++) ASSERT_MSG(r->ids[i] == ref[i], "token %d: %u, reference %u", i, r->ids[i], ref[i]);
    ASSERT_EQ_INT(r->text_len, n_ref);
    for (int i = 0; i < n_ref; i++) ASSERT_EQ_INT((uint8_t)r->text[i], ref[i]);
}

TEST(sample_greedy_matches_reference_loop) {
    Model *m = tiny_model(32, 320, 7);
    Tokenizer *tok = tokenizer_load("byte");
    const char *prompts[2] = {"Hello, wor", ""};   // "" starts from EOS alone
    for (int k = 0; k < 2; k++) {
        uint32_t ref[20];
        int n_ref = ref_greedy(m, prompts[k], 20, ref);   // 1 + 10 + 20 <= 32: no sliding
        SampleOptions o = opts(0, 1, 1);
        SampleResult r;
        sample_generate(m, tok, prompts[k], 20, &o, NULL, NULL, &r);
        ASSERT_EQ_INT(r.n_prompt, strlen(prompts[k]));
        ASSERT_EQ_INT(r.hit_eos, n_ref < 20);
        assert_same_as_ref(&r, ref, n_ref);
        printf("    prompt \"%s\": %d greedy tokens equal the reference\n", prompts[k], n_ref);
        sample_result_free(&r);
    }
    tokenizer_free(tok);
    model_free(m);
}

static void long_prompt_child(void *arg) {
    Model *m = tiny_model(8, 320, 11);
    Tokenizer *tok = tokenizer_load("byte");
    SampleOptions o = opts(0, 1, 1);
    SampleResult r;
    sample_generate(m, tok, "abcdefghijkl", 30, &o, NULL, NULL, &r);
    uint32_t ref[30];
    int n_ref = ref_greedy(m, "abcdefghijkl", 30, ref);
    assert_same_as_ref(&r, ref, n_ref);
    printf("greedy %d tokens ok\n", n_ref);
}

// T = 8 and a 12-byte prompt: the prompt is cut (with a log line) and the window slides for every new token.
TEST(sample_sliding_window_matches_reference_loop) {
    char msg[4096];
    int st = child_exit_status(long_prompt_child, NULL, msg, sizeof msg);
    ASSERT_MSG(st == 0, "child failed (%d):\n%s", st, msg);
    ASSERT_CONTAINS(msg, "the prompt is 12 tokens");
    ASSERT_CONTAINS(msg, "sees only the last 8");
    ASSERT_CONTAINS(msg, "tokens ok");
    printf("    %s", strstr(msg, "greedy"));
}

// temperature -> 0 and top_p -> 0 both reduce to greedy (the top id's share dominates; the nucleus is the top id).
TEST(sample_limits_equal_greedy) {
    Model *m = tiny_model(32, 320, 7);
    Tokenizer *tok = tokenizer_load("byte");
    SampleOptions g = opts(0, 1, 0);
    SampleResult rg;
    sample_generate(m, tok, "The ", 24, &g, NULL, NULL, &rg);
    SampleOptions cases[3] = {opts(1e-6, 1, 5), opts(1.0, 1e-9, 6), opts(0.7, 1e-6, 7)};
    for (int k = 0; k < 3; k++) {
        SampleResult r;
        sample_generate(m, tok, "The ", 24, &cases[k], NULL, NULL, &r);
        ASSERT_EQ_INT(r.n_ids, rg.n_ids);
        ASSERT_MSG(memcmp(r.ids, rg.ids, r.n_ids * sizeof *r.ids) == 0, "case %d differs from greedy", k);
        sample_result_free(&r);
    }
    sample_result_free(&rg);
    tokenizer_free(tok);
    model_free(m);
}

// Same seed: the same text. Eight seeds at temperature 1: eight different texts (24 tokens each from a spread
// distribution; two equal by chance has negligible probability). And no text equals greedy's.
TEST(sample_seeds) {
    Model *m = tiny_model(32, 320, 7);
    Tokenizer *tok = tokenizer_load("byte");
    SampleResult r[8], again, g;
    SampleOptions go = opts(0, 1, 0);
    sample_generate(m, tok, "x", 24, &go, NULL, NULL, &g);
    for (int k = 0; k < 8; k++) {
        SampleOptions o = opts(1.0, 1, 100 + (uint64_t)k);
        sample_generate(m, tok, "x", 24, &o, NULL, NULL, &r[k]);
        ASSERT(r[k].n_ids >= 4);
    }
    SampleOptions o3 = opts(1.0, 1, 103);
    sample_generate(m, tok, "x", 24, &o3, NULL, NULL, &again);
    ASSERT_EQ_INT(again.text_len, r[3].text_len);
    ASSERT(memcmp(again.text, r[3].text, again.text_len) == 0);
    for (int a = 0; a < 8; a++) {
        ASSERT(!(r[a].text_len == g.text_len && memcmp(r[a].text, g.text, g.text_len) == 0));
        for (int b = a + 1; b < 8; b++)
            ASSERT_MSG(!(r[a].text_len == r[b].text_len && memcmp(r[a].text, r[b].text, r[a].text_len) == 0),
                       "seeds %d and %d gave the same text", 100 + a, 100 + b);
    }
    for (int k = 0; k < 8; k++) sample_result_free(&r[k]);
    sample_result_free(&again);
    sample_result_free(&g);
    tokenizer_free(tok);
    model_free(m);
}

// Rigs a model so that the ids in `rig` get by far the largest logits at every position: every embedding row gets
// +100 in column 0 (the residual stream, hence the normed hidden state, is then dominated by a positive column 0)
// and the lm_head rows of `rig` get +5 in column 0.
static void rig_model(Model *m, const uint32_t *rig, int n) {
    const ParamTable *t = model_params(m);
    const ParamInfo *emb = params_find(t, "model.embed_tokens.weight"), *head = params_find(t, "lm_head.weight");
    ASSERT(emb && head);
    float *e = tm_get(m, cpu(), emb, 0), *h = tm_get(m, cpu(), head, 0);
    int d = model_config(m)->dim, V = model_config(m)->vocab_size;
    for (int i = 0; i < V; i++) e[(size_t)i * d] += 100.0f;
    for (int k = 0; k < n; k++) h[(size_t)rig[k] * d] += 5.0f;
    cpu()->upload(model_param_data(m) + emb->offset, e, (size_t)emb->numel * sizeof(float));
    cpu()->upload(model_param_data(m) + head->offset, h, (size_t)head->numel * sizeof(float));
    free(e); free(h);
}

// Unmasked argmax of the logits at the last position of a window holding `ctx`.
static int raw_argmax(Model *m, const int32_t *ctx, int n) {
    int T = model_seq_len(m), V = model_config(m)->vocab_size, S = T + 1 + model_config(m)->mtp_depth;
    int32_t *win = xcalloc((size_t)S, sizeof *win);
    float *logits = xmalloc((size_t)T * V * sizeof *logits);
    memcpy(win, ctx, (size_t)n * sizeof *ctx);
    model_forward_logits(m, win, logits);
    int best = 0;
    for (int i = 1; i < V; i++)
        if (logits[(size_t)(n - 1) * V + i] > logits[(size_t)(n - 1) * V + best]) best = i;
    free(win); free(logits);
    return best;
}

TEST(sample_never_emits_masked_ids) {
    Model *m = tiny_model(32, 320, 7);
    uint32_t rig[5] = {257, 258, 259, 300, 319};   // BOS, PAD, and ids beyond the byte tokenizer
    rig_model(m, rig, 5);
    int32_t ctx[2] = {256, 'a'};
    int raw = raw_argmax(m, ctx, 2);
    ASSERT_MSG(raw == 257 || raw == 258 || raw >= 259, "rigging failed: unmasked argmax is %d", raw);
    Tokenizer *tok = tokenizer_load("byte");
    int total = 0;
    for (int k = 0; k < 6; k++) {
        SampleOptions o = k == 0 ? opts(0, 1, 0) : opts(k < 3 ? 1.0 : 3.0, k == 5 ? 0.9 : 1.0, 50 + (uint64_t)k);
        SampleResult r;
        sample_generate(m, tok, "a", 24, &o, NULL, NULL, &r);
        for (size_t i = 0; i < r.n_ids; i++)
            ASSERT_MSG(r.ids[i] < 256, "case %d: sampled id %u (bytes are 0..255, EOS ends)", k, r.ids[i]);
        total += (int)r.n_ids;
        sample_result_free(&r);
    }
    ASSERT(total > 50);
    tokenizer_free(tok);
    model_free(m);
}

TEST(sample_stops_at_eos) {
    Model *m = tiny_model(16, 320, 7);
    uint32_t rig[1] = {256};
    rig_model(m, rig, 1);
    Tokenizer *tok = tokenizer_load("byte");
    SampleOptions o = opts(0, 1, 0);
    SampleResult r;
    sample_generate(m, tok, "abc", 10, &o, NULL, NULL, &r);
    ASSERT_EQ_INT(r.hit_eos, 1);
    ASSERT_EQ_INT(r.n_ids, 0);
    ASSERT_EQ_INT(r.text_len, 0);
    ASSERT_EQ_STR(r.text, "");
    sample_result_free(&r);
    sample_generate(m, tok, "abc", 0, &o, NULL, NULL, &r);   // n_new = 0: nothing, not even a forward
    ASSERT_EQ_INT(r.hit_eos, 0);
    ASSERT_EQ_INT(r.n_ids, 0);
    sample_result_free(&r);
    tokenizer_free(tok);
    model_free(m);
}

// The first token at temperature 1 over N seeds against softmax of the logits over ids 0..256 (computed here from
// a forward pass). Bins: each id with an expected count >= 20, the rest pooled. Pearson's statistic with df = bins - 1
// has mean df and sd sqrt(2 df); the bound df + 8 sqrt(2 df) is exceeded with probability < 1e-6 by a correct
// sampler, while a wrong distribution (e.g. over the wrong ids, or a wrong temperature) overshoots it by far.
TEST(sample_first_token_distribution) {
    Model *m = tiny_model(8, 320, 21);
    Tokenizer *tok = tokenizer_load("byte");
    int V = 320, T = 8;
    int32_t win[10] = {256, 'h', 'i'};
    for (int i = 3; i < 10; i++) win[i] = 256;
    float *logits = xmalloc((size_t)T * V * sizeof *logits);
    model_forward_logits(m, win, logits);
    double p[257], mx = -INFINITY, z = 0;
    for (int i = 0; i <= 256; i++) mx = fmax(mx, logits[2 * V + i]);
    for (int i = 0; i <= 256; i++) z += p[i] = exp(logits[2 * V + i] - mx);
    for (int i = 0; i <= 256; i++) p[i] /= z;
    enum { N = 4000 };
    int count[257] = {0};
    for (int s = 0; s < N; s++) {
        SampleOptions o = opts(1.0, 1, 1000 + (uint64_t)s);
        SampleResult r;
        sample_generate(m, tok, "hi", 1, &o, NULL, NULL, &r);
        count[r.hit_eos ? 256 : r.ids[0]]++;
        sample_result_free(&r);
    }
    double x2 = 0, e_rest = 0, o_rest = 0, pmax = 0;
    int bins = 0;
    for (int i = 0; i <= 256; i++) {
        pmax = fmax(pmax, p[i]);
        if (N * p[i] >= 20) { x2 += (count[i] - N * p[i]) * (count[i] - N * p[i]) / (N * p[i]); bins++; }
        else { e_rest += N * p[i]; o_rest += count[i]; }
    }
    x2 += (o_rest - e_rest) * (o_rest - e_rest) / e_rest;
    bins++;
    int df = bins - 1;
    printf("    %d draws, max p %.3f, %d bins: chi2 %.1f (df %d, bound %.1f)\n", N, pmax, bins, x2, df,
           df + 8 * sqrt(2.0 * df));
    ASSERT(df >= 20);
    ASSERT(x2 < df + 8 * sqrt(2.0 * df));
    free(logits);
    tokenizer_free(tok);
    model_free(m);
}

// sampler_pick on hand-made logits log(0.4, 0.3, 0.2, 0.1) + a masked id with the largest logit:
//   T = 1:             0.4 0.3 0.2 0.1
//   T = 0.5:           p^2 / 0.30 = 0.16/0.30 0.09/0.30 0.04/0.30 0.01/0.30
//   T = 1, top_p 0.6:  nucleus {0, 1} (0.4 < 0.6 <= 0.7): 4/7 3/7 0 0
//   T = 1, top_p 0.95: nucleus {0, 1, 2, 3} (0.9 < 0.95): unchanged
// 40000 draws each: the sd of a frequency is <= 0.0025, the tolerance 0.015 is 6 sd.
TEST(sample_sampler_math) {
    float logits[5] = {logf(0.4f), logf(0.3f), logf(0.2f), logf(0.1f), 10.0f};
    uint8_t allowed[5] = {1, 1, 1, 1, 0};
    struct { double t, top_p, want[4]; } cases[4] = {
        {1.0, 1.0, {0.4, 0.3, 0.2, 0.1}},
        {0.5, 1.0, {0.16 / 0.30, 0.09 / 0.30, 0.04 / 0.30, 0.01 / 0.30}},
        {1.0, 0.6, {4.0 / 7, 3.0 / 7, 0, 0}},
        {1.0, 0.95, {0.4, 0.3, 0.2, 0.1}},
    };
    for (int c = 0; c < 4; c++) {
        SampleOptions o = opts(cases[c].t, cases[c].top_p, 99);
        Sampler s;
        sampler_init(&s, 5, allowed, &o);
        int count[5] = {0};
        enum { N = 40000 };
        for (int i = 0; i < N; i++) count[sampler_pick(&s, logits)]++;
        ASSERT_EQ_INT(count[4], 0);
        for (int k = 0; k < 4; k++) {
            ASSERT_NEAR((double)count[k] / N, cases[c].want[k], 0, 0.015);
            if (cases[c].want[k] == 0) ASSERT_EQ_INT(count[k], 0);
        }
        sampler_free(&s);
    }
    // greedy: the first of equal maxima among allowed ids
    float tie[4] = {1.0f, 3.0f, 3.0f, 9.0f};
    uint8_t al[4] = {1, 1, 1, 0};
    SampleOptions g = opts(0, 1, 0);
    Sampler s;
    sampler_init(&s, 4, al, &g);
    ASSERT_EQ_INT(sampler_pick(&s, tie), 1);
    sampler_free(&s);
}

TEST(sample_rng_reference_values) {
    // Seed 0: the state is splitmix64's first four outputs from 0 (the first, 0xE220A8397B1DCDAF, is splitmix64's
    // published test value) and the draws are xoshiro256**'s; both computed independently with Python integers from
    // the reference C code (prng.di.unimi.it).
    SampleRng r;
    sample_rng_seed(&r, 0);
    ASSERT(r.s[0] == 0xE220A8397B1DCDAFull && r.s[1] == 0x6E789E6AA1B965F4ull && r.s[2] == 0x06C45D188009454Full &&
           r.s[3] == 0xF88BB8A8724C81ECull);
    ASSERT(sample_rng_next(&r) == 0x99EC5F36CB75F2B4ull);
    ASSERT(sample_rng_next(&r) == 0xBF6E1F784956452Aull);
    ASSERT(sample_rng_next(&r) == 0x1A5F849D4933E6E0ull);
    double mean = 0;
    for (int i = 0; i < 100000; i++) {
        double u = sample_rng_uniform(&r);
        ASSERT(u >= 0 && u < 1);
        mean += u / 100000;
    }
    ASSERT_NEAR(mean, 0.5, 0, 0.005);   // sd 0.29 / sqrt(1e5) = 0.0009
}

TEST(sample_utf8_hold_cases) {
    struct { const char *s; size_t hold; } c[] = {
        {"", 0}, {"abc", 0}, {"a\xC3", 1}, {"a\xC3\xA9", 0}, {"\xE2\x82", 2}, {"\xE2\x82\xAC", 0}, {"\xE2", 1},
        {"\xF0\x9F\x98", 3}, {"\xF0\x9F\x98\x80", 0}, {"\xF0\x9F", 2},
        {"\x80", 0}, {"a\x80\x80", 0}, {"\xFF", 0}, {"\xC0", 0}, {"\xC1", 0}, {"\xF5", 0},   // never valid: release
        {"\xE0\x80", 0}, {"\xE0\xA0", 2}, {"\xED\xA0", 0}, {"\xED\x9F", 2}, {"\xF0\x8F", 0}, {"\xF4\x90", 0},
        {"\xF4\x8F\xBF", 3}, {"\xC3\xA9\xA9", 0}, {"\xE2\x82\xAC\x80", 0},
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++)
        ASSERT_MSG(sample_utf8_hold(c[i].s, strlen(c[i].s)) == c[i].hold, "case %zu: hold %zu, expected %zu", i,
                   sample_utf8_hold(c[i].s, strlen(c[i].s)), c[i].hold);
}

typedef struct { char buf[4096]; size_t len; int calls, bad_ends, last_bad; } Sink;
static void sink_emit(const char *b, size_t n, void *user) {
    Sink *s = user;
    ASSERT(n > 0 && s->len + n < sizeof s->buf);
    memcpy(s->buf + s->len, b, n);
    s->len += n;
    s->calls++;
    if (sample_utf8_hold(s->buf, s->len) != 0) { s->bad_ends++; s->last_bad = s->calls; }
}

// Streaming at temperature 1 on a byte model (random bytes: many UTF-8 lead bytes): the chunks concatenate to the
// text, and no chunk but the last ends inside a character that the next byte could still complete.
TEST(sample_streaming_utf8) {
    Model *m = tiny_model(32, 320, 7);
    Tokenizer *tok = tokenizer_load("byte");
    SampleOptions o = opts(1.5, 1, 4);
    Sink sink = {0};
    SampleResult r;
    sample_generate(m, tok, "", 31, &o, sink_emit, &sink, &r);
    ASSERT_EQ_INT(sink.len, r.text_len);
    ASSERT(memcmp(sink.buf, r.text, r.text_len) == 0);
    // only the final flush may end mid-character (when generation stopped there)
    ASSERT(sink.bad_ends == 0 || (sink.bad_ends == 1 && sink.last_bad == sink.calls));
    int holds = 0;   // positions where the text so far ends mid-character: no chunk may end there
    for (size_t i = 1; i < r.text_len; i++) holds += sample_utf8_hold(r.text, i) != 0;
    printf("    %zu tokens, %d chunks, %d mid-character positions\n", r.n_ids, sink.calls, holds);
    ASSERT(holds > 0);   // the check above was exercised
    sample_result_free(&r);
    tokenizer_free(tok);
    model_free(m);
}

// A BPE tokenizer (the V3-style fixture: 3003 ids, specials 0 BOS, 1 EOS, 2 PAD, non-special added 3000..3002)
// under a model vocabulary of 3008: ids are always < 3003, never 0 or 2, and the text is their decoding.
TEST(sample_bpe_tokenizer) {
    Tokenizer *tok = tokenizer_load(test_path("tests/fixtures/tokenizer/v3.json"));
    ASSERT_EQ_INT(tokenizer_vocab_size(tok), 3003);
    ASSERT_EQ_INT(tokenizer_eos_id(tok), 1);
    ASSERT_EQ_INT(tokenizer_token_kind(tok, 0), TOKEN_SPECIAL);
    ASSERT_EQ_INT(tokenizer_token_kind(tok, 2), TOKEN_SPECIAL);
    ASSERT_EQ_INT(tokenizer_token_kind(tok, 3000), TOKEN_NORMAL);
    ASSERT_EQ_INT(tokenizer_token_kind(tok, 100), TOKEN_NORMAL);
    ASSERT_EQ_INT(tokenizer_token_kind(tok, 3003), TOKEN_UNUSED);
    uint32_t n;
    uint8_t *al = sample_allowed_ids(tok, &n);
    ASSERT_EQ_INT(n, 3003);
    ASSERT(!al[0] && al[1] && !al[2] && al[3] && al[3000] && al[3002]);
    free(al);
    Model *m = tiny_model(16, 3008, 3);
    for (int k = 0; k < 3; k++) {
        SampleOptions o = opts(k == 0 ? 0 : 2.0, k == 2 ? 0.8 : 1, 8 + (uint64_t)k);
        SampleResult r;
        sample_generate(m, tok, "Hello world", 12, &o, NULL, NULL, &r);
        ASSERT(r.n_prompt >= 2);
        for (size_t i = 0; i < r.n_ids; i++) ASSERT_MSG(r.ids[i] < 3003 && r.ids[i] != 0 && r.ids[i] != 2, "id %u", r.ids[i]);
        size_t len;
        char *text = tokenizer_decode(tok, r.ids, r.n_ids, &len);
        ASSERT_EQ_INT(len, r.text_len);
        ASSERT(memcmp(text, r.text, len) == 0);
        free(text);
        sample_result_free(&r);
    }
    model_free(m);
    tokenizer_free(tok);
}

// ---- bad input ----

typedef struct { double t, top_p; int n_new, B, V; const char *tok, *prompt; } BadCase;
static void bad_child(void *arg) {
    const BadCase *b = arg;
    omp_set_num_threads(1);
    Config c = tm_config();
    c.model.vocab_size = b->V;
    Model *m = model_create(&c, cpu(), params_full_stage(&c.model), b->B, 8);
    model_init(m, 1);
    Tokenizer *tok = tokenizer_load(b->tok);
    SampleOptions o = opts(b->t, b->top_p, 1);
    SampleResult r;
    sample_generate(m, tok, b->prompt, b->n_new, &o, NULL, NULL, &r);
}

TEST(sample_bad_input) {
    const char *v3 = test_path("tests/fixtures/tokenizer/v3.json");
    struct { BadCase c; const char *msg; } cases[] = {
        {{-1, 1, 4, 1, 320, "byte", "a"}, "temperature -1 is invalid: expected a number >= 0"},
        {{NAN, 1, 4, 1, 320, "byte", "a"}, "temperature nan is invalid"},
        {{INFINITY, 1, 4, 1, 320, "byte", "a"}, "temperature inf is invalid"},
        {{1, 0, 4, 1, 320, "byte", "a"}, "top_p 0 is invalid: expected a number in (0, 1]"},
        {{1, 1.5, 4, 1, 320, "byte", "a"}, "top_p 1.5 is invalid"},
        {{1, NAN, 4, 1, 320, "byte", "a"}, "top_p nan is invalid"},
        {{1, 1, -1, 1, 320, "byte", "a"}, "number of tokens to generate is -1"},
        {{1, 1, 4, 2, 320, "byte", "a"}, "sampling needs B = 1"},
        {{1, 1, 4, 1, 200, "byte", "a"}, "tokenizer byte has 259 ids but the model's vocab_size is 200"},
        {{1, 1, 4, 1, 3008, v3, "caf\xC3"}, "prompt is not valid UTF-8 at byte 3"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char msg[4096];
        int st = child_exit_status(bad_child, &cases[i].c, msg, sizeof msg);
        ASSERT_MSG(st == 1, "case %zu: exit %d:\n%s", i, st, msg);
        ASSERT_CONTAINS(msg, cases[i].msg);
    }
}

static void nan_child(void *arg) {
    float logits[3] = {0.0f, NAN, 1.0f};
    SampleOptions o = opts(*(double *)arg, 1, 1);
    Sampler s;
    sampler_init(&s, 3, NULL, &o);
    sampler_pick(&s, logits);
}

TEST(sample_nonfinite_logit) {
    double temps[2] = {0, 1};
    for (int k = 0; k < 2; k++) {
        char msg[1024];
        ASSERT_EQ_INT(child_exit_status(nan_child, &temps[k], msg, sizeof msg), 1);
        ASSERT_CONTAINS(msg, "the logit of token id 1 is nan");
    }
    // a NaN at a masked id is never looked at
    float logits[3] = {0.0f, NAN, 1.0f};
    uint8_t al[3] = {1, 0, 1};
    SampleOptions o = opts(1, 1, 1);
    Sampler s;
    sampler_init(&s, 3, al, &o);
    for (int i = 0; i < 100; i++) ASSERT(sampler_pick(&s, logits) != 1);
    sampler_free(&s);
}
