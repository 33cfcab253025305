// Internals shared by tokenizer.c (API, byte tokenizer, added tokens, decode), bpe.c (tokenizer.json loading and
// BPE merges) and bpe_split.c (PCRE2 pre-tokenization). Not a public header: use data/tokenizer.h.
#ifndef BPE_H
#define BPE_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stddef.h>
#include <stdint.h>

#include "data/tokenizer.h"

// Every PCRE2 call that returns an int error code goes through this (NOMATCH is a normal result, not an error).
void bpe_pcre2_die(const char *file, int line, const char *call, int rc);
#define PCRE2_CHECK(call) ({ int rc_ = (call); \
    if (rc_ < 0 && rc_ != PCRE2_ERROR_NOMATCH) { bpe_pcre2_die(__FILE__, __LINE__, #call, rc_); } rc_; })
// For PCRE2 constructors that return NULL on failure (out of memory).
#define PCRE2_CHECK_PTR(call) ({ __typeof__(call) p_ = (call); \
    if (!p_) { bpe_pcre2_die(__FILE__, __LINE__, #call, PCRE2_ERROR_NOMEMORY); } p_; })

typedef struct {
    char *text;          // the token's content, matched verbatim in the input
    uint32_t len, id;
    uint8_t special, normalized;
} AddedToken;

// Byte trie over added tokens' contents for leftmost-longest matching (what Hugging Face's Aho-Corasick does).
typedef struct { uint32_t first_edge, n_edges; int32_t token; } TrieNode;   // token: index into added, or -1
typedef struct { uint8_t byte; uint32_t child; } TrieEdge;
typedef struct {
    TrieNode *nodes;
    TrieEdge *edges;     // each node's edges are contiguous and sorted by byte
    uint32_t n_nodes;
    uint32_t root_child[256];   // 0 = no edge (node 0 is the root, never a child)
    int n_tokens, n_nonspecial;
} AddedTrie;

enum { SPLIT_REMOVED, SPLIT_ISOLATED, SPLIT_MERGED_WITH_PREVIOUS, SPLIT_MERGED_WITH_NEXT, SPLIT_CONTIGUOUS };
typedef struct {
    pcre2_code *re;
    int behavior, invert;
    uint32_t capture_pairs;   // ovector size needed by the match data
} SplitStage;

#define BPE_MAX_SPLITS 16

// (left id, right id) -> (rank, merged id), open addressing on 64-bit keys.
typedef struct { uint64_t *keys; uint64_t *vals; size_t mask, n; } PairMap;
// token bytes -> id, open addressing; a slot holds id + 1 (0 = empty), keys are compared against tok_bytes.
typedef struct { uint32_t *slots; size_t mask; char **key; uint32_t *key_len; } VocabMap;   // key[id] = raw bytes

struct Tokenizer {
    int is_bpe;
    char name[256];
    uint32_t vocab_size, eos_id;
    // Decode table [vocab_size]: bytes of each id; tok_len[id] == UINT32_MAX marks an unused id.
    char **tok_bytes;
    uint32_t *tok_len;
    AddedToken *added;
    size_t n_added;
    AddedTrie trie[2];          // [0]: added tokens matched on raw text, [1]: "normalized" ones (phase 2)

    // BPE only.
    uint32_t byte_id[256];      // id of the single-byte token of each byte value
    VocabMap vocab;
    PairMap merges;
    SplitStage splits[BPE_MAX_SPLITS];
    int n_splits;
    int prefix_space, use_regex, ignore_merges;
    SplitStage byte_level;      // the GPT-2 regex of ByteLevel(use_regex = true)
    char **blobs;               // allocations to free with the tokenizer
    size_t n_blobs;
};

typedef struct { uint32_t start, end; uint8_t is_match; } Span;
typedef struct { uint32_t id; int32_t prev, next; uint32_t len; } Symbol;
typedef struct { uint32_t rank, pos, new_id; } HeapItem;

// Per-thread word cache: piece bytes -> ids (pieces up to BPE_CACHE_MAX_KEY bytes).
#define BPE_CACHE_MAX_KEY 64
typedef struct {
    uint64_t *hash;             // [cap], 0 = empty
    uint32_t *key_off, *ids_off;
    uint16_t *key_len, *n_ids;
    char *keys;
    uint32_t *ids;
    size_t keys_used, ids_used, keys_cap, ids_cap, count, cap;
} WordCache;

struct TokenizerCtx {
    const Tokenizer *t;
    pcre2_match_data *md[BPE_MAX_SPLITS + 1];   // one per regex; [n_splits] for ByteLevel's
    pcre2_match_context *mctx;
    pcre2_jit_stack *jit_stack;
    Span *spans[BPE_MAX_SPLITS + 1];
    size_t span_cap[BPE_MAX_SPLITS + 1];
    char *prefix_buf;
    size_t prefix_cap;
    Symbol *sym;
    size_t sym_cap;
    HeapItem *heap;
    size_t heap_cap;
    WordCache cache;
};

// bpe.c
void bpe_load(Tokenizer *t, const char *path);
void bpe_ctx_init(TokenizerCtx *c);
void bpe_ctx_free(TokenizerCtx *c);
// BPE of one pre-token (raw bytes; the ByteLevel mapping is implicit because the vocabulary is keyed by raw bytes).
void bpe_encode_word(TokenizerCtx *c, const char *w, size_t n, TokenBuf *out);
uint64_t bpe_hash_bytes(const char *s, size_t n);
int64_t bpe_vocab_find(const Tokenizer *t, const char *s, size_t n);

// bpe_split.c
// Translates an Oniguruma (Ruby syntax) pattern, as Hugging Face runs it, to PCRE2 with the same meaning, or
// returns NULL and a reason in err for constructs whose meaning would differ.
char *bpe_onig_to_pcre2(const char *pattern, size_t len, char *err, size_t err_size);
// Compiles a Split pattern; is_regex = 0 for {"String": ...} literal patterns. Dies naming where (what) on error.
void bpe_compile_stage(SplitStage *s, const char *pattern, size_t len, int is_regex, const char *what);
// Pre-tokenizes a segment of ordinary text (between added tokens) and BPE-encodes every piece into out.
void bpe_encode_segment(TokenizerCtx *c, const char *text, size_t len, TokenBuf *out);

// tokenizer.c
void added_trie_build(AddedTrie *trie, const AddedToken *added, size_t n, int normalized);
void added_trie_free(AddedTrie *trie);

#endif
