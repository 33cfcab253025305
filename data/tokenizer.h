// Tokenizers: "byte" (the 256 byte values plus three special tokens) and byte-level BPE loaded from a Hugging Face
// tokenizer.json (GPT-2 / Llama-3 / DeepSeek-V3 style). Format notes and the exact supported subset: data/FORMAT.md.
//
// A Tokenizer is immutable after tokenizer_load and may be shared by threads. Encoding needs per-thread scratch
// (PCRE2 match data, BPE work arrays, a word cache): one TokenizerCtx per thread.
//
//   Tokenizer *tok = tokenizer_load("byte");                 // or "path/to/tokenizer.json"
//   TokenizerCtx *ctx = tokenizer_ctx_new(tok);
//   TokenBuf ids = {0};
//   tokenizer_encode(ctx, text, len, 0, &ids);               // appends to ids.ids[0:ids.n]
//   size_t n; char *back = tokenizer_decode(tok, ids.ids, ids.n, &n);   // back[0:n] == text[0:len]
#ifndef TOKENIZER_H
#define TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

// The byte tokenizer's ids: 0..255 are the bytes themselves.
#define TOKENIZER_BYTE_EOS 256u     // "<|end_of_text|>"
#define TOKENIZER_BYTE_BOS 257u     // "<|begin_of_text|>"
#define TOKENIZER_BYTE_PAD 258u     // "<|pad|>"
#define TOKENIZER_BYTE_VOCAB 259u

#define TOKENIZER_NO_ID UINT32_MAX

// tokenizer_encode flags.
// TOKENIZER_PARSE_SPECIAL: special tokens written in the text ("<|end_of_text|>") become their ids, as the Hugging
// Face tokenizer does by default. Without it they are encoded as ordinary text (like tokenizers'
// encode_special_tokens = True), which is what pretraining data wants: a document cannot forge an EOS.
// Non-special added tokens of a tokenizer.json are matched either way (Hugging Face does the same).
#define TOKENIZER_PARSE_SPECIAL 1

typedef struct Tokenizer Tokenizer;
typedef struct TokenizerCtx TokenizerCtx;

// A growable array of token ids; zero-initialize, free with tokenbuf_free.
typedef struct { uint32_t *ids; size_t n, cap; } TokenBuf;
void tokenbuf_reserve(TokenBuf *b, size_t extra);
void tokenbuf_free(TokenBuf *b);

// spec: "byte", or the path of a Hugging Face tokenizer.json. Dies with a message naming the file and the JSON key
// on anything unsupported (a normalizer, a pre-tokenizer type, a regex construct whose meaning differs between
// Oniguruma and PCRE2, ...) rather than tokenizing differently from the reference.
Tokenizer *tokenizer_load(const char *spec);
void tokenizer_free(Tokenizer *t);

uint32_t tokenizer_vocab_size(const Tokenizer *t);   // max id + 1
// EOS id: 256 for "byte"; for a tokenizer.json, the eos_token of a tokenizer_config.json in the same directory,
// else the first special added token named like an end-of-text token; TOKENIZER_NO_ID when neither exists.
uint32_t tokenizer_eos_id(const Tokenizer *t);
void tokenizer_set_eos(Tokenizer *t, const char *token);   // dies if the token does not exist
// Name recorded in shards: "byte", or "hf-bpe:<dir>/tokenizer.json#fnv1a64=<hash of the file>".
const char *tokenizer_name(const Tokenizer *t);
// Whether encode requires valid UTF-8 (BPE: its regexes run on code points; byte: any bytes are fine).
int tokenizer_needs_utf8(const Tokenizer *t);
// Id of a token given by its text (an added token's content, or a vocabulary entry's decoded bytes); -1 if none.
int64_t tokenizer_token_id(const Tokenizer *t, const char *token, size_t len);
// What an id is: TOKEN_UNUSED for ids >= vocab_size and the gaps a tokenizer.json may leave in its ids (decode dies
// on those), TOKEN_SPECIAL for special added tokens (EOS, BOS, PAD, ...), TOKEN_NORMAL for the rest (vocabulary
// entries and non-special added tokens). Costs O(number of added tokens).
typedef enum { TOKEN_UNUSED = 0, TOKEN_NORMAL = 1, TOKEN_SPECIAL = 2 } TokenKind;
TokenKind tokenizer_token_kind(const Tokenizer *t, uint32_t id);

TokenizerCtx *tokenizer_ctx_new(const Tokenizer *t);
void tokenizer_ctx_free(TokenizerCtx *c);

// Appends the ids of text[0:len] to out and returns how many were appended. For BPE, text must be valid UTF-8
// (check with utf8_first_invalid from data/utf8.h first; encode dies naming the offset otherwise).
size_t tokenizer_encode(TokenizerCtx *c, const char *text, size_t len, int flags, TokenBuf *out);

// Concatenated bytes of the tokens (special tokens as their text); malloc'd, NUL-terminated, length in *len.
// Dies on an id outside the vocabulary.
char *tokenizer_decode(const Tokenizer *t, const uint32_t *ids, size_t n, size_t *len);

#endif
