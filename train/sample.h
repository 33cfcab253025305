// Text generation from a trained model (`build/train sample CKPT --prompt TEXT`): greedy, or temperature with
// optional nucleus (top-p) sampling, from a seeded PRNG so that a run is reproducible.
//
// The context the model sees is EOS + the prompt's tokens. Training packs documents as "doc EOS doc EOS ..." and
// never inserts BOS (data/FORMAT.md), so a preceding EOS is exactly what "the start of a document" looked like in
// training; it also makes an empty prompt well defined (generation starts a fresh document).
//
// No KV cache: every new token runs model_forward_logits over a full window of the model's T positions (the last
// <= T tokens of the context; the positions after the last real token are padding, which causal attention keeps
// from affecting the real ones) and reads the logits at the last real position. Generating n tokens therefore costs
// n full forward passes of T tokens, O(n * T) token-forwards (and O(n * T^2) attention): fine for the small models
// this is for (the tiny model: milliseconds per token), slow for large ones. When the context grows past T the window
// slides: the oldest tokens (the leading EOS first) drop out.
//
// Only ids the tokenizer can decode as text are ever sampled: ids below the tokenizer's vocabulary size (the model's
// vocab_size may be larger), with a vocabulary entry, and not special (PAD, BOS, ...) - except EOS, which ends the
// generation and is not part of the output.
#ifndef SAMPLE_H
#define SAMPLE_H

#include "data/tokenizer.h"
#include "model/model.h"

#include <stddef.h>
#include <stdint.h>

typedef struct {
    double temperature;   // >= 0; 0 = greedy (argmax, the lowest id on a tie)
    double top_p;         // (0, 1]: sample from the smallest set of most likely ids whose mass is >= top_p; 1 = off
    uint64_t seed;        // PRNG seed (unused when greedy)
} SampleOptions;

// Receives the generated text as it is produced, in chunks that never end inside a UTF-8 character that the next
// token could still complete (a terminal can print them as they come). The chunks concatenate to the final text.
typedef void (*SampleEmitFn)(const char *bytes, size_t n, void *user);

typedef struct {
    uint32_t *ids;        // the generated ids, EOS not included
    size_t n_ids;
    char *text;           // tokenizer_decode of ids: NUL-terminated, text_len bytes (may hold invalid UTF-8 bytes
    size_t text_len;      // when a byte-level model produced them)
    size_t n_prompt;      // tokens of the prompt (the leading EOS not counted)
    int hit_eos;          // 1: stopped because EOS was sampled; 0: n_new tokens were generated
} SampleResult;

// Generates up to n_new tokens after `prompt` (NUL-terminated; "" allowed). m: a single-stage model created with
// B = 1, parameters loaded; its vocab_size must be >= the tokenizer's. emit may be NULL. Dies with a message on a
// bad option (temperature < 0 or not finite, top_p outside (0, 1], n_new < 0), a prompt that is not valid UTF-8 for
// a BPE tokenizer, a tokenizer without EOS, a model that does not fit, or a non-finite logit. A prompt longer than
// the window is cut to its last T tokens (with a log line saying so).
void sample_generate(Model *m, const Tokenizer *tok, const char *prompt, int n_new, const SampleOptions *opt,
                     SampleEmitFn emit, void *user, SampleResult *out);
void sample_result_free(SampleResult *r);

// ---- building blocks (exposed for the tests) ----

// allowed[id] for id < tokenizer_vocab_size: 1 for the ids sample_generate may pick (TOKEN_NORMAL ids and EOS),
// 0 otherwise. malloc'd; the count of ids in *n.
uint8_t *sample_allowed_ids(const Tokenizer *tok, uint32_t *n);

// xoshiro256** seeded through splitmix64 (any seed, 0 included, gives a well-mixed state).
typedef struct { uint64_t s[4]; } SampleRng;
void sample_rng_seed(SampleRng *r, uint64_t seed);
uint64_t sample_rng_next(SampleRng *r);
double sample_rng_uniform(SampleRng *r);   // [0, 1), 53 random bits

// One pick from a logits row. Sampler holds the options, the PRNG and scratch for `n` ids.
typedef struct { double p; uint32_t id; } SampleCand;
typedef struct {
    double temperature, top_p;
    SampleRng rng;
    uint32_t n;               // ids considered: [0, n)
    const uint8_t *allowed;   // [n] or NULL (all allowed); not owned
    SampleCand *cand;         // scratch [n]: unnormalized probabilities of the allowed ids
} Sampler;
void sampler_init(Sampler *s, uint32_t n, const uint8_t *allowed, const SampleOptions *opt);
void sampler_free(Sampler *s);
// logits[0:n] (FP32, any scale): greedy -> the first maximum among allowed ids; otherwise p_i proportional to
// exp((logit_i - max) / temperature) in double over allowed ids, cut to the nucleus when top_p < 1 (ids sorted by p
// descending, ties by id; the shortest prefix whose mass is >= top_p of the total), then one draw. Dies on a
// non-finite allowed logit, naming the id.
uint32_t sampler_pick(Sampler *s, const float *logits);

// How many trailing bytes of s[0:n] to hold back before printing: the length (1..3) of an incomplete UTF-8 sequence
// at the end that more bytes could still complete, else 0 (complete or already invalid bytes are released).
size_t sample_utf8_hold(const char *s, size_t n);

#endif
