// Tokenizer API (see tokenizer.h): the byte tokenizer, added/special token matching shared by both kinds, the
// encode dispatch, decoding and per-thread contexts. The BPE model itself is in bpe.c and bpe_split.c.
#include "data/bpe.h"
#include "data/utf8.h"
#include "train/check.h"

#include <string.h>

void tokenbuf_reserve(TokenBuf *b, size_t extra) {
    if (b->n + extra <= b->cap) return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + extra) cap *= 2;
    b->ids = xrealloc(b->ids, cap * sizeof *b->ids);
    b->cap = cap;
}

void tokenbuf_free(TokenBuf *b) {
    free(b->ids);
    memset(b, 0, sizeof *b);
}

// ---- added-token trie -----------------------------------------------------------------------------------------

typedef struct { uint32_t first_child, next_sibling; int32_t token; uint8_t byte; } BuildNode;

// Builds the trie of the added tokens with the given "normalized" flag. A first-child/next-sibling tree is built,
// then flattened so that each node's edges are contiguous and sorted (binary-searchable, cache friendly).
void added_trie_build(AddedTrie *trie, const AddedToken *added, size_t n, int normalized) {
    memset(trie, 0, sizeof *trie);
    size_t cap = 64, count = 1;
    BuildNode *bn = xcalloc(cap, sizeof *bn);
    bn[0].token = -1;
    for (size_t i = 0; i < n; i++) {
        if (added[i].normalized != normalized) continue;
        trie->n_tokens++;
        trie->n_nonspecial += !added[i].special;
        uint32_t node = 0;
        for (uint32_t k = 0; k < added[i].len; k++) {
            uint8_t byte = (uint8_t)added[i].text[k];
            uint32_t c = bn[node].first_child;
            while (c && bn[c].byte != byte) c = bn[c].next_sibling;
            if (!c) {
                if (count == cap) { cap *= 2; bn = xrealloc(bn, cap * sizeof *bn); }
                c = (uint32_t)count++;
                bn[c] = (BuildNode){.first_child = 0, .next_sibling = bn[node].first_child, .token = -1, .byte = byte};
                bn[node].first_child = c;
            }
            node = c;
        }
        // Two added tokens with the same content: the first one wins (Hugging Face keeps one id per content).
        if (bn[node].token < 0) bn[node].token = (int32_t)i;
    }
    trie->n_nodes = (uint32_t)count;
    trie->nodes = xcalloc(count, sizeof *trie->nodes);
    trie->edges = xcalloc(count, sizeof *trie->edges);
    uint32_t n_edges = 0;
    for (uint32_t v = 0; v < count; v++) {
        trie->nodes[v].token = bn[v].token;
        trie->nodes[v].first_edge = n_edges;
        for (uint32_t c = bn[v].first_child; c; c = bn[c].next_sibling) {
            // insertion sort by byte: fan-out is small except at the root, which also has root_child
            uint32_t j = n_edges++;
            while (j > trie->nodes[v].first_edge && trie->edges[j - 1].byte > bn[c].byte) {
                trie->edges[j] = trie->edges[j - 1];
                j--;
            }
            trie->edges[j] = (TrieEdge){.byte = bn[c].byte, .child = c};
        }
        trie->nodes[v].n_edges = n_edges - trie->nodes[v].first_edge;
    }
    for (uint32_t e = 0; e < trie->nodes[0].n_edges; e++) trie->root_child[trie->edges[e].byte] = trie->edges[e].child;
    free(bn);
}

void added_trie_free(AddedTrie *trie) {
    free(trie->nodes);
    free(trie->edges);
    memset(trie, 0, sizeof *trie);
}

static uint32_t trie_child(const AddedTrie *trie, uint32_t node, uint8_t byte) {
    const TrieNode *nd = &trie->nodes[node];
    uint32_t lo = nd->first_edge, hi = nd->first_edge + nd->n_edges;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        if (trie->edges[mid].byte < byte) lo = mid + 1;
        else hi = mid;
    }
    return lo < nd->first_edge + nd->n_edges && trie->edges[lo].byte == byte ? trie->edges[lo].child : 0;
}

// Longest acceptable added token starting at text[0]; returns its index in t->added (and its length) or -1.
static int32_t trie_match(const Tokenizer *t, const AddedTrie *trie, const char *text, size_t len, int flags,
                          uint32_t *match_len) {
    uint32_t node = trie->root_child[(uint8_t)text[0]];
    int32_t best = -1;
    size_t k = 1;
    while (node) {
        int32_t tok = trie->nodes[node].token;
        if (tok >= 0 && (!t->added[tok].special || (flags & TOKENIZER_PARSE_SPECIAL))) { best = tok; *match_len = (uint32_t)k; }
        if (k == len) break;
        node = trie_child(trie, node, (uint8_t)text[k++]);
    }
    return best;
}

// ---- encoding -------------------------------------------------------------------------------------------------

static void encode_plain(TokenizerCtx *c, const char *text, size_t len, TokenBuf *out) {
    if (!len) return;
    if (c->t->is_bpe) { bpe_encode_segment(c, text, len, out); return; }
    tokenbuf_reserve(out, len);
    const unsigned char *u = (const unsigned char *)text;
    for (size_t i = 0; i < len; i++) out->ids[out->n++] = u[i];
}

// Hugging Face extracts added tokens in two passes: those with normalized = false on the raw text, then those with
// normalized = true on the (normalized) remainder. With no normalizer both passes see the same bytes, but the
// order still decides which token wins where a raw and a normalized token overlap, so both passes are kept.
static void encode_added(TokenizerCtx *c, int phase, const char *text, size_t len, int flags, TokenBuf *out) {
    const Tokenizer *t = c->t;
    const AddedTrie *trie = &t->trie[phase];
    if ((flags & TOKENIZER_PARSE_SPECIAL) ? trie->n_tokens == 0 : trie->n_nonspecial == 0) {
        if (phase == 0) encode_added(c, 1, text, len, flags, out);
        else encode_plain(c, text, len, out);
        return;
    }
    size_t gap = 0, i = 0;
    while (i < len) {
        uint32_t mlen = 0;
        int32_t tok = trie->root_child[(uint8_t)text[i]] ? trie_match(t, trie, text + i, len - i, flags, &mlen) : -1;
        if (tok < 0) { i++; continue; }
        if (i > gap) {
            if (phase == 0) encode_added(c, 1, text + gap, i - gap, flags, out);
            else encode_plain(c, text + gap, i - gap, out);
        }
        tokenbuf_reserve(out, 1);
        out->ids[out->n++] = t->added[tok].id;
        i += mlen;
        gap = i;
    }
    if (len > gap) {
        if (phase == 0) encode_added(c, 1, text + gap, len - gap, flags, out);
        else encode_plain(c, text + gap, len - gap, out);
    }
}

size_t tokenizer_encode(TokenizerCtx *c, const char *text, size_t len, int flags, TokenBuf *out) {
    size_t before = out->n;
    if (c->t->is_bpe) {
        size_t bad = utf8_first_invalid(text, len);
        CHECK(bad == len, "tokenizer_encode: invalid UTF-8 at byte offset %zu of a %zu-byte text (the BPE "
              "tokenizer needs UTF-8; the caller should have checked)", bad, len);
    }
    encode_added(c, 0, text, len, flags, out);
    return out->n - before;
}

char *tokenizer_decode(const Tokenizer *t, const uint32_t *ids, size_t n, size_t *len) {
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        CHECK(ids[i] < t->vocab_size && t->tok_len[ids[i]] != UINT32_MAX,
              "tokenizer_decode: token id %u at position %zu is not in the vocabulary of %s (size %u)",
              ids[i], i, t->name, t->vocab_size);
        total += t->tok_len[ids[i]];
    }
    char *buf = xmalloc(total + 1);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        memcpy(buf + k, t->tok_bytes[ids[i]], t->tok_len[ids[i]]);
        k += t->tok_len[ids[i]];
    }
    buf[k] = 0;
    *len = k;
    return buf;
}

// ---- loading and queries --------------------------------------------------------------------------------------

static void byte_load(Tokenizer *t) {
    static const char *specials[3] = {"<|end_of_text|>", "<|begin_of_text|>", "<|pad|>"};
    t->vocab_size = TOKENIZER_BYTE_VOCAB;
    t->eos_id = TOKENIZER_BYTE_EOS;
    snprintf(t->name, sizeof t->name, "byte");
    t->tok_bytes = xcalloc(t->vocab_size, sizeof *t->tok_bytes);
    t->tok_len = xcalloc(t->vocab_size, sizeof *t->tok_len);
    char *bytes = xmalloc(256);
    for (int b = 0; b < 256; b++) {
        bytes[b] = (char)b;
        t->tok_bytes[b] = bytes + b;
        t->tok_len[b] = 1;
    }
    t->blobs = xcalloc(1, sizeof *t->blobs);
    t->blobs[t->n_blobs++] = bytes;
    t->n_added = 3;
    t->added = xcalloc(3, sizeof *t->added);
    for (int i = 0; i < 3; i++) {
        t->added[i] = (AddedToken){.text = xstrdup(specials[i]), .len = (uint32_t)strlen(specials[i]),
                                   .id = TOKENIZER_BYTE_EOS + (uint32_t)i, .special = 1, .normalized = 0};
        t->tok_bytes[t->added[i].id] = t->added[i].text;
        t->tok_len[t->added[i].id] = t->added[i].len;
    }
    added_trie_build(&t->trie[0], t->added, t->n_added, 0);
    added_trie_build(&t->trie[1], t->added, t->n_added, 1);
}

Tokenizer *tokenizer_load(const char *spec) {
    CHECK(spec && *spec, "tokenizer_load: empty tokenizer spec (expected \"byte\" or a tokenizer.json path)");
    Tokenizer *t = xcalloc(1, sizeof *t);
    if (strcmp(spec, "byte") == 0) byte_load(t);
    else bpe_load(t, spec);
    return t;
}

void tokenizer_free(Tokenizer *t) {
    if (!t) return;
    for (size_t i = 0; i < t->n_added; i++) free(t->added[i].text);
    free(t->added);
    added_trie_free(&t->trie[0]);
    added_trie_free(&t->trie[1]);
    free(t->tok_bytes);
    free(t->tok_len);
    for (int i = 0; i < t->n_splits; i++) pcre2_code_free(t->splits[i].re);
    if (t->byte_level.re) pcre2_code_free(t->byte_level.re);
    free(t->vocab.slots);
    free(t->merges.keys);
    free(t->merges.vals);
    for (size_t i = 0; i < t->n_blobs; i++) free(t->blobs[i]);
    free(t->blobs);
    free(t);
}

uint32_t tokenizer_vocab_size(const Tokenizer *t) { return t->vocab_size; }
uint32_t tokenizer_eos_id(const Tokenizer *t) { return t->eos_id; }
const char *tokenizer_name(const Tokenizer *t) { return t->name; }
int tokenizer_needs_utf8(const Tokenizer *t) { return t->is_bpe; }

int64_t tokenizer_token_id(const Tokenizer *t, const char *token, size_t len) {
    for (size_t i = 0; i < t->n_added; i++)
        if (t->added[i].len == len && memcmp(t->added[i].text, token, len) == 0) return t->added[i].id;
    if (t->is_bpe) return bpe_vocab_find(t, token, len);
    if (len == 1) return (uint8_t)token[0];
    return -1;
}

TokenKind tokenizer_token_kind(const Tokenizer *t, uint32_t id) {
    if (id >= t->vocab_size || t->tok_len[id] == UINT32_MAX) return TOKEN_UNUSED;
    for (size_t i = 0; i < t->n_added; i++)
        if (t->added[i].id == id) return t->added[i].special ? TOKEN_SPECIAL : TOKEN_NORMAL;
    return TOKEN_NORMAL;
}

void tokenizer_set_eos(Tokenizer *t, const char *token) {
    int64_t id = tokenizer_token_id(t, token, strlen(token));
    CHECK(id >= 0, "EOS token \"%s\" is not a token of %s", token, t->name);
    t->eos_id = (uint32_t)id;
}

TokenizerCtx *tokenizer_ctx_new(const Tokenizer *t) {
    TokenizerCtx *c = xcalloc(1, sizeof *c);
    c->t = t;
    if (t->is_bpe) bpe_ctx_init(c);
    return c;
}

void tokenizer_ctx_free(TokenizerCtx *c) {
    if (!c) return;
    if (c->t->is_bpe) bpe_ctx_free(c);
    free(c);
}
