// Text generation (see sample.h): the window loop over model_forward_logits, the masked temperature / top-p
// sampler, the PRNG, and UTF-8-safe streaming of the output.
#include "train/sample.h"

#include "data/utf8.h"
#include "train/check.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

// ---- PRNG: splitmix64 to seed, xoshiro256** to draw (Blackman & Vigna) ------------------------------------------

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void sample_rng_seed(SampleRng *r, uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&x);   // never all zero: splitmix64 is a bijection of a counter
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t sample_rng_next(SampleRng *r) {
    uint64_t *s = r->s;
    uint64_t out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

double sample_rng_uniform(SampleRng *r) { return (double)(sample_rng_next(r) >> 11) * 0x1.0p-53; }

// ---- the sampler ----------------------------------------------------------------------------------------------

static void check_options(const SampleOptions *opt) {
    CHECK(opt, "sample: no options given");
    if (!(isfinite(opt->temperature) && opt->temperature >= 0))
        die("sample: temperature %g is invalid: expected a number >= 0 (0 = greedy)", opt->temperature);
    if (!(opt->top_p > 0 && opt->top_p <= 1))
        die("sample: top_p %g is invalid: expected a number in (0, 1] (1 = off)", opt->top_p);
}

void sampler_init(Sampler *s, uint32_t n, const uint8_t *allowed, const SampleOptions *opt) {
    check_options(opt);
    CHECK(n > 0, "sampler_init: no ids to sample from");
    memset(s, 0, sizeof *s);
    s->temperature = opt->temperature;
    s->top_p = opt->top_p;
    sample_rng_seed(&s->rng, opt->seed);
    s->n = n;
    s->allowed = allowed;
    s->cand = xmalloc((size_t)n * sizeof *s->cand);
}

void sampler_free(Sampler *s) {
    free(s->cand);
    s->cand = NULL;
}

// Probability descending, then id ascending: a total order, so the nucleus does not depend on qsort's algorithm.
static int cand_cmp(const void *a, const void *b) {
    const SampleCand *x = a, *y = b;
    if (x->p != y->p) return x->p > y->p ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

uint32_t sampler_pick(Sampler *s, const float *logits) {
    uint32_t best = UINT32_MAX;
    float mx = 0;
    for (uint32_t i = 0; i < s->n; i++) {
        if (s->allowed && !s->allowed[i]) continue;
        if (!isfinite(logits[i])) die("sample: the logit of token id %u is %g: the model's weights are broken", i,
                                      (double)logits[i]);
        if (best == UINT32_MAX || logits[i] > mx) { best = i; mx = logits[i]; }
    }
    CHECK(best != UINT32_MAX, "sample: no token id may be sampled (all %u are masked)", s->n);
    if (s->temperature == 0) return best;

    // softmax((logit - max) / T) in double: the max term is exactly 1, so the sum is >= 1 and never underflows.
    uint32_t m = 0;
    double total = 0;
    for (uint32_t i = 0; i < s->n; i++) {
        if (s->allowed && !s->allowed[i]) continue;
        double p = exp(((double)logits[i] - (double)mx) / s->temperature);
        s->cand[m++] = (SampleCand){p, i};
        total += p;
    }
    double mass = total;
    if (s->top_p < 1) {
        qsort(s->cand, m, sizeof *s->cand, cand_cmp);
        double cum = 0, need = s->top_p * total;
        uint32_t k = 0;
        while (k < m) {
            cum += s->cand[k++].p;
            if (cum >= need) break;
        }
        m = k;
        mass = cum;
    }
    double u = sample_rng_uniform(&s->rng) * mass, acc = 0;
    for (uint32_t j = 0; j < m; j++) {
        acc += s->cand[j].p;
        if (u < acc) return s->cand[j].id;
    }
    return s->cand[m - 1].id;   // u within rounding of the top of the mass
}

uint8_t *sample_allowed_ids(const Tokenizer *tok, uint32_t *n) {
    uint32_t V = tokenizer_vocab_size(tok), eos = tokenizer_eos_id(tok);
    uint8_t *a = xmalloc(V);
    for (uint32_t i = 0; i < V; i++) a[i] = i == eos || tokenizer_token_kind(tok, i) == TOKEN_NORMAL;
    *n = V;
    return a;
}

// ---- UTF-8 streaming ------------------------------------------------------------------------------------------

size_t sample_utf8_hold(const char *str, size_t n) {
    const unsigned char *s = (const unsigned char *)str;
    size_t k = 0;   // trailing continuation bytes
    while (k < 3 && k < n && (s[n - 1 - k] & 0xC0) == 0x80) k++;
    if (k == n) return 0;
    unsigned lead = s[n - 1 - k];
    size_t need = lead >= 0xC2 && lead < 0xE0 ? 2 : lead >= 0xE0 && lead < 0xF0 ? 3 : lead >= 0xF0 && lead < 0xF5 ? 4 : 0;
    if (need == 0 || k + 1 >= need) return 0;   // not a lead byte, or its sequence is complete: release
    if (k >= 1) {   // the second byte's range restrictions (utf8_char_len): an impossible prefix is released
        unsigned c1 = s[n - k];
        if ((lead == 0xE0 && c1 < 0xA0) || (lead == 0xED && c1 >= 0xA0) || (lead == 0xF0 && c1 < 0x90) ||
            (lead == 0xF4 && c1 >= 0x90))
            return 0;
    }
    return k + 1;
}

typedef struct {
    SampleEmitFn emit;
    void *user;
    char *buf;          // bytes decoded but not yet emitted (an incomplete character at most, between tokens)
    size_t len, cap;
} Emitter;

static void emitter_push(Emitter *e, const Tokenizer *tok, uint32_t id) {
    size_t n;
    char *piece = tokenizer_decode(tok, &id, 1, &n);
    if (e->len + n > e->cap) {
        e->cap = 2 * (e->len + n) + 16;
        e->buf = xrealloc(e->buf, e->cap);
    }
    memcpy(e->buf + e->len, piece, n);
    e->len += n;
    free(piece);
    size_t out = e->len - sample_utf8_hold(e->buf, e->len);
    if (out == 0) return;
    e->emit(e->buf, out, e->user);
    memmove(e->buf, e->buf + out, e->len - out);
    e->len -= out;
}

static void emitter_flush(Emitter *e) {
    if (e->len) e->emit(e->buf, e->len, e->user);
    e->len = 0;
    free(e->buf);
}

// ---- generation -----------------------------------------------------------------------------------------------

void sample_generate(Model *m, const Tokenizer *tok, const char *prompt, int n_new, const SampleOptions *opt,
                     SampleEmitFn emit, void *user, SampleResult *out) {
    check_options(opt);
    CHECK(prompt, "sample: no prompt given (pass \"\" for none)");
    if (n_new < 0) die("sample: the number of tokens to generate is %d: expected >= 0", n_new);
    const ModelConfig *mc = model_config(m);
    int T = model_seq_len(m), D = mc->mtp_depth, Vm = mc->vocab_size;
    if (model_batch(m) != 1)
        die("sample: the model was created for micro-batches of %d sequences; sampling needs B = 1", model_batch(m));
    uint32_t Vt = tokenizer_vocab_size(tok), eos = tokenizer_eos_id(tok);
    if (Vt > (uint32_t)Vm)
        die("sample: tokenizer %s has %u ids but the model's vocab_size is %d: not the tokenizer it was trained with",
            tokenizer_name(tok), Vt, Vm);
    if (eos == TOKENIZER_NO_ID)
        die("sample: tokenizer %s has no EOS token (it starts the context and ends generation)", tokenizer_name(tok));
    size_t plen = strlen(prompt);
    if (tokenizer_needs_utf8(tok)) {
        size_t bad = utf8_first_invalid(prompt, plen);
        if (bad < plen) die("sample: the prompt is not valid UTF-8 at byte %zu (tokenizer %s needs UTF-8)", bad,
                            tokenizer_name(tok));
    }

    // context = EOS, prompt ids, generated ids
    TokenBuf ctx = {0};
    tokenbuf_reserve(&ctx, 1);
    ctx.ids[ctx.n++] = eos;
    TokenizerCtx *tc = tokenizer_ctx_new(tok);
    size_t n_prompt = tokenizer_encode(tc, prompt, plen, 0, &ctx);   // special-token text stays text, as in the data
    tokenizer_ctx_free(tc);
    if (ctx.n > (size_t)T)
        log_info("sample: the prompt is %zu tokens; with the leading EOS that exceeds the model's context of %d "
                 "tokens, so the model sees only the last %d", n_prompt, T, T);
    tokenbuf_reserve(&ctx, (size_t)n_new);

    memset(out, 0, sizeof *out);
    out->n_prompt = n_prompt;
    out->ids = xmalloc(((size_t)n_new + 1) * sizeof *out->ids);

    uint32_t n_allowed;
    uint8_t *allowed = sample_allowed_ids(tok, &n_allowed);
    Sampler s;
    sampler_init(&s, n_allowed, allowed, opt);
    int S = T + 1 + D;   // model_forward_logits reads tokens[0:T] of a [1, T + 1 + D] row
    int32_t *window = xmalloc((size_t)S * sizeof *window);
    float *logits = xmalloc((size_t)T * Vm * sizeof *logits);
    Emitter em = {.emit = emit, .user = user};

    for (int step = 0; step < n_new; step++) {
        size_t w = ctx.n < (size_t)T ? ctx.n : (size_t)T, start = ctx.n - w;
        for (size_t i = 0; i < w; i++) window[i] = (int32_t)ctx.ids[start + i];
        for (int i = (int)w; i < S; i++) window[i] = (int32_t)eos;   // padding: causal attention never reads it
        model_forward_logits(m, window, logits);
        uint32_t id = sampler_pick(&s, logits + (w - 1) * (size_t)Vm);
        if (id == eos) { out->hit_eos = 1; break; }
        ctx.ids[ctx.n++] = id;
        out->ids[out->n_ids++] = id;
        if (emit) emitter_push(&em, tok, id);
    }
    if (emit) emitter_flush(&em);
    out->text = tokenizer_decode(tok, out->ids, out->n_ids, &out->text_len);

    free(logits);
    free(window);
    sampler_free(&s);
    free(allowed);
    tokenbuf_free(&ctx);
}

void sample_result_free(SampleResult *r) {
    free(r->ids);
    free(r->text);
    memset(r, 0, sizeof *r);
}
