// Byte-level BPE from a Hugging Face tokenizer.json: loading (with strict checks of the supported subset) and the
// merge loop. Tokens are stored as RAW BYTES: the ByteLevel byte->unicode mapping ("Ġ" for a space) is undone once
// at load time, so encoding never maps text to the printable alphabet and back.
#include "data/bpe.h"
#include "data/json.h"
#include "data/utf8.h"
#include "train/check.h"

#include <limits.h>
#include <string.h>

// ---- hashing and maps -----------------------------------------------------------------------------------------

static inline uint64_t mix64(uint64_t x) {   // splitmix64 finalizer
    x ^= x >> 30; x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27; x *= 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

uint64_t bpe_hash_bytes(const char *s, size_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ (n * 0xff51afd7ed558ccdULL);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = mix64(h ^ w);
        s += 8;
        n -= 8;
    }
    if (n) {
        uint64_t w = 0;
        memcpy(&w, s, n);
        h = mix64(h ^ w ^ 0x5555);
    }
    return h | 1;   // never 0: the word cache uses 0 for an empty slot
}

static size_t pow2_at_least(size_t n) {
    size_t c = 16;
    while (c < n) c *= 2;
    return c;
}

int64_t bpe_vocab_find(const Tokenizer *t, const char *s, size_t n) {
    const VocabMap *m = &t->vocab;
    for (size_t i = bpe_hash_bytes(s, n) & m->mask;; i = (i + 1) & m->mask) {
        uint32_t slot = m->slots[i];
        if (!slot) return -1;
        uint32_t id = slot - 1;
        if (m->key_len[id] == n && memcmp(m->key[id], s, n) == 0) return id;
    }
}

static void vocab_insert(VocabMap *m, uint32_t id) {
    for (size_t i = bpe_hash_bytes(m->key[id], m->key_len[id]) & m->mask;; i = (i + 1) & m->mask) {
        if (!m->slots[i]) { m->slots[i] = id + 1; return; }
    }
}

static inline uint64_t pair_key(uint32_t a, uint32_t b) { return ((uint64_t)a << 32) | b; }

// Returns rank << 32 | merged id, or UINT64_MAX when the pair does not merge.
static inline uint64_t pair_find(const PairMap *m, uint32_t a, uint32_t b) {
    uint64_t key = pair_key(a, b);
    for (size_t i = mix64(key) & m->mask;; i = (i + 1) & m->mask) {
        if (m->keys[i] == UINT64_MAX) return UINT64_MAX;
        if (m->keys[i] == key) return m->vals[i];
    }
}

static void pair_insert(PairMap *m, uint32_t a, uint32_t b, uint64_t val) {
    uint64_t key = pair_key(a, b);
    for (size_t i = mix64(key) & m->mask;; i = (i + 1) & m->mask) {
        if (m->keys[i] == UINT64_MAX) { m->keys[i] = key; m->vals[i] = val; m->n++; return; }
        // A repeated merge: Hugging Face collects merges into a map, so the later rank replaces the earlier one.
        if (m->keys[i] == key) { m->vals[i] = val; return; }
    }
}

// ---- the ByteLevel alphabet -----------------------------------------------------------------------------------

// GPT-2's bytes_to_unicode: printable bytes map to themselves, the other 68 to U+0100.. in byte order.
static void byte_level_tables(uint32_t byte_to_cp[256], int16_t cp_to_byte[324]) {
    for (int i = 0; i < 324; i++) cp_to_byte[i] = -1;
    int shift = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        byte_to_cp[b] = printable ? (uint32_t)b : 256u + (uint32_t)shift++;
        cp_to_byte[byte_to_cp[b]] = (int16_t)b;
    }
}

// Maps a vocabulary string back to raw bytes (into out, which has room for len bytes: each character of the
// alphabet is 1 or 2 UTF-8 bytes and stands for 1 byte). Returns the raw length, or -1 if a character is outside
// the alphabet (such tokens, e.g. special tokens kept in the vocabulary, cannot come out of byte-level merges).
static long byte_level_unmap(const int16_t cp_to_byte[324], const char *s, size_t len, char *out) {
    size_t i = 0, k = 0;
    while (i < len) {
        int cl = utf8_char_len((const unsigned char *)s + i, len - i);
        if (!cl) return -1;
        uint32_t cp = utf8_decode((const unsigned char *)s + i, cl);
        if (cp >= 324 || cp_to_byte[cp] < 0) return -1;
        out[k++] = (char)cp_to_byte[cp];
        i += (size_t)cl;
    }
    return (long)k;
}

// ---- loading --------------------------------------------------------------------------------------------------

static const JsonValue *want(const char *path, const JsonValue *obj, const char *key, JsonType type, const char *where) {
    const JsonValue *v = json_get(obj, key);
    CHECK(v, "%s: %s has no \"%s\"", path, where, key);
    CHECK(v->type == type || (type == JSON_TRUE && v->type == JSON_FALSE),
          "%s: %s.%s (line %zu) must be %s, found %s", path, where, key, v->line,
          type == JSON_TRUE ? "a boolean" : json_type_name(type), json_type_name(v->type));
    return v;
}

// Optional boolean with a default.
static int opt_bool(const char *path, const JsonValue *obj, const char *key, int dflt, const char *where) {
    const JsonValue *v = json_get(obj, key);
    if (!v || v->type == JSON_NULL) return dflt;
    CHECK(v->type == JSON_TRUE || v->type == JSON_FALSE, "%s: %s.%s (line %zu) must be a boolean, found %s", path,
          where, key, v->line, json_type_name(v->type));
    return v->type == JSON_TRUE;
}

static int is_null_or_empty_string(const JsonValue *v) {
    return !v || v->type == JSON_NULL || (v->type == JSON_STRING && v->n == 0);
}

static void load_pre_tokenizer(Tokenizer *t, const char *path, const JsonValue *pre) {
    CHECK(pre && pre->type == JSON_OBJECT, "%s: \"pre_tokenizer\" must be a ByteLevel pre-tokenizer or a Sequence of "
          "Split ... ByteLevel (byte-level BPE); found %s", path, pre ? json_type_name(pre->type) : "nothing");
    const JsonValue *list = pre, *single = pre;
    size_t n = 1;
    const char *type = want(path, pre, "type", JSON_STRING, "pre_tokenizer")->str;
    if (strcmp(type, "Sequence") == 0) {
        list = want(path, pre, "pretokenizers", JSON_ARRAY, "pre_tokenizer");
        n = list->n;
        single = NULL;
    }
    int saw_byte_level = 0;
    for (size_t i = 0; i < n; i++) {
        const JsonValue *p = single ? single : &list->items[i];
        char where[64];
        snprintf(where, sizeof where, single ? "pre_tokenizer" : "pre_tokenizer.pretokenizers[%zu]", i);
        CHECK(p->type == JSON_OBJECT, "%s: %s (line %zu) must be an object", path, where, p->line);
        const char *ptype = want(path, p, "type", JSON_STRING, where)->str;
        CHECK(!saw_byte_level, "%s: %s (line %zu): a %s after ByteLevel is not supported (ByteLevel must come last)",
              path, where, p->line, ptype);
        if (strcmp(ptype, "ByteLevel") == 0) {
            t->prefix_space = opt_bool(path, p, "add_prefix_space", 1, where);
            t->use_regex = opt_bool(path, p, "use_regex", 1, where);
            saw_byte_level = 1;
            if (t->use_regex) {
                static const char gpt2[] =
                    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
                t->byte_level.behavior = SPLIT_ISOLATED;
                bpe_compile_stage(&t->byte_level, gpt2, strlen(gpt2), 1, "the GPT-2 regex of ByteLevel");
            }
        } else if (strcmp(ptype, "Split") == 0) {
            CHECK(t->n_splits < BPE_MAX_SPLITS, "%s: more than %d Split pre-tokenizers", path, BPE_MAX_SPLITS);
            SplitStage *s = &t->splits[t->n_splits];
            const JsonValue *pat = want(path, p, "pattern", JSON_OBJECT, where);
            const JsonValue *re = json_get(pat, "Regex"), *lit = json_get(pat, "String");
            CHECK((re && re->type == JSON_STRING) || (lit && lit->type == JSON_STRING),
                  "%s: %s.pattern (line %zu) must be {\"Regex\": \"...\"} or {\"String\": \"...\"}", path, where, pat->line);
            const char *beh = want(path, p, "behavior", JSON_STRING, where)->str;
            static const char *names[] = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"};
            s->behavior = -1;
            for (int b = 0; b < 5; b++) if (strcmp(beh, names[b]) == 0) s->behavior = b;
            CHECK(s->behavior >= 0, "%s: %s.behavior \"%s\" is not one of Removed, Isolated, MergedWithPrevious, "
                  "MergedWithNext, Contiguous", path, where, beh);
            s->invert = opt_bool(path, p, "invert", 0, where);
            char what[600];
            snprintf(what, sizeof what, "%s: %s.pattern (line %zu)", path, where, pat->line);
            const JsonValue *src = re && re->type == JSON_STRING ? re : lit;
            bpe_compile_stage(s, src->str, src->n, src == re, what);
            t->n_splits++;
        } else {
            die("%s: %s (line %zu): pre-tokenizer type \"%s\" is not supported (supported: Split with a regex or "
                "string pattern, ByteLevel; see data/FORMAT.md)", path, where, p->line, ptype);
        }
    }
    CHECK(saw_byte_level, "%s: the pre_tokenizer has no ByteLevel step: only byte-level BPE is supported", path);
}

// EOS: tokenizer_config.json beside the file (what transformers uses), else a special token with a usual name.
static void resolve_eos(Tokenizer *t, const char *path) {
    t->eos_id = TOKENIZER_NO_ID;
    char cfg[4096];
    const char *slash = strrchr(path, '/');
    snprintf(cfg, sizeof cfg, "%.*stokenizer_config.json", slash ? (int)(slash - path + 1) : 0, path);
    FILE *f = fopen(cfg, "rb");
    if (f) {
        fclose(f);
        size_t len;
        char *text = json_read_file(cfg, &len), err[256];
        Json *j = json_parse(text, len, err, sizeof err);
        CHECK(j, "%s: invalid JSON: %s", cfg, err);
        const JsonValue *e = json_get(json_root(j), "eos_token");
        if (e && e->type == JSON_OBJECT) e = json_get(e, "content");
        if (e && e->type == JSON_STRING) {
            int64_t id = tokenizer_token_id(t, e->str, e->n);
            CHECK(id >= 0, "%s: eos_token \"%s\" is not a token of %s", cfg, e->str, path);
            t->eos_id = (uint32_t)id;
        }
        json_free(j);
        free(text);
        if (t->eos_id != TOKENIZER_NO_ID) return;
    }
    static const char *names[] = {"<|end_of_text|>", "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
                                  "<|endoftext|>", "</s>", "<eos>"};
    for (size_t k = 0; k < sizeof names / sizeof *names; k++)
        for (size_t i = 0; i < t->n_added; i++)
            if (t->added[i].special && strcmp(t->added[i].text, names[k]) == 0) { t->eos_id = t->added[i].id; return; }
}

static void add_blob(Tokenizer *t, char *p) {
    t->blobs = xrealloc(t->blobs, (t->n_blobs + 1) * sizeof *t->blobs);
    t->blobs[t->n_blobs++] = p;
}

static uint32_t json_id(const char *path, const JsonValue *v, const char *what) {
    CHECK(v->type == JSON_NUMBER && v->number >= 0 && v->number < (double)INT32_MAX && v->number == (double)(uint32_t)v->number,
          "%s: %s (line %zu) must be a non-negative integer id", path, what, v->line);
    return (uint32_t)v->number;
}

static void load_vocab_and_added(Tokenizer *t, const char *path, const JsonValue *model, const JsonValue *root,
                                 const int16_t cp_to_byte[324]) {
    const JsonValue *vocab = want(path, model, "vocab", JSON_OBJECT, "model");
    const JsonValue *added = json_get(root, "added_tokens");
    CHECK(!added || added->type == JSON_ARRAY || added->type == JSON_NULL, "%s: \"added_tokens\" must be an array", path);
    size_t n_added = added && added->type == JSON_ARRAY ? added->n : 0;

    uint32_t max_id = 0;
    for (size_t i = 0; i < vocab->n; i++) {
        uint32_t id = json_id(path, &vocab->items[i], "a model.vocab id");
        if (id > max_id) max_id = id;
    }
    t->n_added = n_added;
    t->added = xcalloc(n_added ? n_added : 1, sizeof *t->added);
    for (size_t i = 0; i < n_added; i++) {
        const JsonValue *a = &added->items[i];
        char where[48];
        snprintf(where, sizeof where, "added_tokens[%zu]", i);
        CHECK(a->type == JSON_OBJECT, "%s: %s (line %zu) must be an object", path, where, a->line);
        const JsonValue *content = want(path, a, "content", JSON_STRING, where);
        CHECK(content->n > 0, "%s: %s (line %zu) has empty content", path, where, a->line);
        const char *flags[] = {"single_word", "lstrip", "rstrip"};
        for (int k = 0; k < 3; k++)
            CHECK(!opt_bool(path, a, flags[k], 0, where), "%s: %s \"%s\" (line %zu): %s = true is not supported",
                  path, where, content->str, a->line, flags[k]);
        AddedToken *tok = &t->added[i];
        tok->text = xmalloc(content->n + 1);
        memcpy(tok->text, content->str, content->n + 1);
        tok->len = (uint32_t)content->n;
        tok->id = json_id(path, want(path, a, "id", JSON_NUMBER, where), "added_tokens[].id");
        tok->special = (uint8_t)opt_bool(path, a, "special", 0, where);
        tok->normalized = (uint8_t)opt_bool(path, a, "normalized", !tok->special, where);
        if (tok->id > max_id) max_id = tok->id;
    }
    t->vocab_size = max_id + 1;
    t->tok_bytes = xcalloc(t->vocab_size, sizeof *t->tok_bytes);
    t->tok_len = xmalloc(t->vocab_size * sizeof *t->tok_len);
    for (uint32_t i = 0; i < t->vocab_size; i++) t->tok_len[i] = UINT32_MAX;

    // Raw bytes of every vocabulary token, in one blob (never longer than the mapped strings).
    size_t total = 0;
    for (size_t i = 0; i < vocab->n; i++) total += strlen(vocab->keys[i]) + 1;
    char *raw = xmalloc(total + 1);
    add_blob(t, raw);
    VocabMap *m = &t->vocab;
    m->mask = pow2_at_least(2 * vocab->n + 2) - 1;
    m->slots = xcalloc(m->mask + 1, sizeof *m->slots);
    m->key = xcalloc(t->vocab_size, sizeof *m->key);
    m->key_len = xcalloc(t->vocab_size, sizeof *m->key_len);
    add_blob(t, (char *)m->key);
    add_blob(t, (char *)m->key_len);
    size_t used = 0;
    for (size_t i = 0; i < vocab->n; i++) {
        uint32_t id = (uint32_t)vocab->items[i].number;
        const char *s = vocab->keys[i];
        size_t len = strlen(s);
        CHECK(t->tok_len[id] == UINT32_MAX, "%s: model.vocab id %u is used twice (\"%s\")", path, id, s);
        long k = byte_level_unmap(cp_to_byte, s, len, raw + used);
        if (k < 0) {
            // Not a byte-level string: decode as its UTF-8 text (what the ByteLevel decoder does), never merged into.
            memcpy(raw + used, s, len);
            t->tok_bytes[id] = raw + used;
            t->tok_len[id] = (uint32_t)len;
            used += len;
            continue;
        }
        t->tok_bytes[id] = raw + used;
        t->tok_len[id] = (uint32_t)k;
        m->key[id] = raw + used;
        m->key_len[id] = (uint32_t)k;
        CHECK(bpe_vocab_find(t, raw + used, (size_t)k) < 0, "%s: model.vocab has two entries for the bytes of \"%s\"", path, s);
        vocab_insert(m, id);
        used += (size_t)k;
    }
    // Added tokens decode as their content (Hugging Face looks ids up in the added vocabulary first).
    for (size_t i = 0; i < n_added; i++) {
        t->tok_bytes[t->added[i].id] = t->added[i].text;
        t->tok_len[t->added[i].id] = t->added[i].len;
    }
    added_trie_build(&t->trie[0], t->added, t->n_added, 0);
    added_trie_build(&t->trie[1], t->added, t->n_added, 1);
}

static void load_merges(Tokenizer *t, const char *path, const JsonValue *model, const int16_t cp_to_byte[324]) {
    const JsonValue *merges = want(path, model, "merges", JSON_ARRAY, "model");
    PairMap *pm = &t->merges;
    pm->mask = pow2_at_least(2 * merges->n + 2) - 1;
    pm->keys = xmalloc((pm->mask + 1) * sizeof *pm->keys);
    pm->vals = xmalloc((pm->mask + 1) * sizeof *pm->vals);
    memset(pm->keys, 0xff, (pm->mask + 1) * sizeof *pm->keys);
    size_t buf_cap = 256;
    char *buf = xmalloc(buf_cap);
    for (size_t r = 0; r < merges->n; r++) {
        const JsonValue *mv = &merges->items[r];
        const char *part[2];
        size_t plen[2];
        if (mv->type == JSON_STRING) {            // "a b" (tokenizers < 0.20 and most published files)
            const char *sp = memchr(mv->str, ' ', mv->n);
            CHECK(sp && !memchr(sp + 1, ' ', mv->n - (size_t)(sp + 1 - mv->str)),
                  "%s: model.merges[%zu] (line %zu) \"%s\" must be two tokens separated by one space", path, r, mv->line, mv->str);
            part[0] = mv->str; plen[0] = (size_t)(sp - mv->str);
            part[1] = sp + 1; plen[1] = mv->n - plen[0] - 1;
        } else {                                  // ["a", "b"] (tokenizers >= 0.20)
            CHECK(mv->type == JSON_ARRAY && mv->n == 2 && mv->items[0].type == JSON_STRING && mv->items[1].type == JSON_STRING,
                  "%s: model.merges[%zu] (line %zu) must be \"a b\" or [\"a\", \"b\"]", path, r, mv->line);
            part[0] = mv->items[0].str; plen[0] = mv->items[0].n;
            part[1] = mv->items[1].str; plen[1] = mv->items[1].n;
        }
        if (plen[0] + plen[1] > buf_cap) { buf_cap = 2 * (plen[0] + plen[1]); buf = xrealloc(buf, buf_cap); }
        long k0 = byte_level_unmap(cp_to_byte, part[0], plen[0], buf);
        long k1 = k0 < 0 ? -1 : byte_level_unmap(cp_to_byte, part[1], plen[1], buf + k0);
        CHECK(k0 > 0 && k1 > 0, "%s: model.merges[%zu] (line %zu) \"%.*s %.*s\" is not made of byte-level tokens",
              path, r, mv->line, (int)plen[0], part[0], (int)plen[1], part[1]);
        int64_t a = bpe_vocab_find(t, buf, (size_t)k0), b = bpe_vocab_find(t, buf + k0, (size_t)k1);
        int64_t ab = bpe_vocab_find(t, buf, (size_t)(k0 + k1));
        CHECK(a >= 0 && b >= 0 && ab >= 0, "%s: model.merges[%zu] (line %zu) \"%.*s %.*s\": %s is not in model.vocab",
              path, r, mv->line, (int)plen[0], part[0], (int)plen[1], part[1],
              a < 0 ? "the first token" : b < 0 ? "the second token" : "the merged token");
        pair_insert(pm, (uint32_t)a, (uint32_t)b, ((uint64_t)r << 32) | (uint64_t)ab);
    }
    free(buf);
}

void bpe_load(Tokenizer *t, const char *path) {
    size_t len;
    char *text = json_read_file(path, &len), err[256];
    Json *doc = json_parse(text, len, err, sizeof err);
    CHECK(doc, "%s: invalid JSON: %s", path, err);
    const JsonValue *root = json_root(doc);
    CHECK(root->type == JSON_OBJECT, "%s: expected a JSON object (a Hugging Face tokenizer.json)", path);
    t->is_bpe = 1;

    const JsonValue *model = json_get(root, "model");
    CHECK(model && model->type == JSON_OBJECT, "%s: no \"model\" object (is this a tokenizer.json?)", path);
    const JsonValue *mtype = json_get(model, "type");
    CHECK(!mtype || (mtype->type == JSON_STRING && strcmp(mtype->str, "BPE") == 0),
          "%s: model.type \"%s\" is not supported (only BPE)", path, mtype && mtype->type == JSON_STRING ? mtype->str : "?");
    const JsonValue *dropout = json_get(model, "dropout");
    CHECK(!dropout || dropout->type == JSON_NULL, "%s: model.dropout must be null (BPE dropout is for training)", path);
    CHECK(is_null_or_empty_string(json_get(model, "continuing_subword_prefix")) &&
          is_null_or_empty_string(json_get(model, "end_of_word_suffix")),
          "%s: model.continuing_subword_prefix / end_of_word_suffix are not supported (byte-level BPE uses neither)", path);
    t->ignore_merges = opt_bool(path, model, "ignore_merges", 0, "model");

    const JsonValue *norm = json_get(root, "normalizer");
    if (norm && norm->type != JSON_NULL) {
        const JsonValue *nt = json_get(norm, "type"), *list = json_get(norm, "normalizers");
        int empty_seq = nt && nt->type == JSON_STRING && strcmp(nt->str, "Sequence") == 0 && list &&
                        list->type == JSON_ARRAY && list->n == 0;
        CHECK(empty_seq, "%s: normalizer \"%s\" (line %zu) is not supported: only null or an empty Sequence (no "
              "normalization) is, as in GPT-2, Llama 3 and DeepSeek-V3", path,
              nt && nt->type == JSON_STRING ? nt->str : "?", norm->line);
    }
    const JsonValue *dec = json_get(root, "decoder");
    if (dec && dec->type != JSON_NULL) {
        const JsonValue *dt = json_get(dec, "type");
        CHECK(dt && dt->type == JSON_STRING && strcmp(dt->str, "ByteLevel") == 0,
              "%s: decoder \"%s\" (line %zu) is not supported (only ByteLevel)", path,
              dt && dt->type == JSON_STRING ? dt->str : "?", dec->line);
    }

    uint32_t byte_to_cp[256];
    int16_t cp_to_byte[324];
    byte_level_tables(byte_to_cp, cp_to_byte);
    load_vocab_and_added(t, path, model, root, cp_to_byte);
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        int64_t id = bpe_vocab_find(t, &c, 1);
        char mapped[4];
        size_t ml = utf8_encode(byte_to_cp[b], mapped);
        CHECK(id >= 0, "%s: model.vocab lacks the byte-level token \"%.*s\" of byte 0x%02x: every byte must be in the "
              "vocabulary of a byte-level BPE", path, (int)ml, mapped, b);
        t->byte_id[b] = (uint32_t)id;
    }
    load_merges(t, path, model, cp_to_byte);
    load_pre_tokenizer(t, path, json_get(root, "pre_tokenizer"));
    resolve_eos(t, path);

    // Name: the file's directory and name plus a content hash, so shards from the same file agree wherever it lives.
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < len; i++) h = (h ^ (uint8_t)text[i]) * 0x100000001b3ULL;
    const char *base = path, *s1 = strrchr(path, '/');
    if (s1) {
        base = s1 + 1;
        for (const char *q = s1 - 1; q >= path; q--) { if (*q == '/') break; base = q; }
    }
    snprintf(t->name, sizeof t->name, "hf-bpe:%.200s#fnv1a64=%016llx", base, (unsigned long long)h);
    json_free(doc);
    free(text);
}

// ---- per-thread context and the merge loop --------------------------------------------------------------------

void bpe_ctx_init(TokenizerCtx *c) {
    const Tokenizer *t = c->t;
    c->jit_stack = PCRE2_CHECK_PTR(pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, NULL));
    c->mctx = PCRE2_CHECK_PTR(pcre2_match_context_create(NULL));
    pcre2_jit_stack_assign(c->mctx, NULL, c->jit_stack);
    for (int i = 0; i <= t->n_splits; i++) {
        const SplitStage *s = i < t->n_splits ? &t->splits[i] : &t->byte_level;
        if (s->re) c->md[i] = PCRE2_CHECK_PTR(pcre2_match_data_create_from_pattern(s->re, NULL));
    }
    WordCache *wc = &c->cache;
    wc->cap = 1 << 16;
    wc->hash = xcalloc(wc->cap, sizeof *wc->hash);
    wc->key_off = xmalloc(wc->cap * sizeof *wc->key_off);
    wc->ids_off = xmalloc(wc->cap * sizeof *wc->ids_off);
    wc->key_len = xmalloc(wc->cap * sizeof *wc->key_len);
    wc->n_ids = xmalloc(wc->cap * sizeof *wc->n_ids);
    wc->keys_cap = wc->cap * 16;
    wc->ids_cap = wc->cap * 8;
    wc->keys = xmalloc(wc->keys_cap);
    wc->ids = xmalloc(wc->ids_cap * sizeof *wc->ids);
}

void bpe_ctx_free(TokenizerCtx *c) {
    for (int i = 0; i <= BPE_MAX_SPLITS; i++) {
        if (c->md[i]) pcre2_match_data_free(c->md[i]);
        free(c->spans[i]);
    }
    pcre2_match_context_free(c->mctx);
    pcre2_jit_stack_free(c->jit_stack);
    free(c->prefix_buf);
    free(c->sym);
    free(c->heap);
    WordCache *wc = &c->cache;
    free(wc->hash); free(wc->key_off); free(wc->ids_off); free(wc->key_len); free(wc->n_ids);
    free(wc->keys); free(wc->ids);
}

// Cache probe: returns the slot holding w, or the empty slot where it would go (hash[slot] == 0).
static size_t cache_slot(const WordCache *wc, const char *w, size_t n, uint64_t h) {
    size_t mask = wc->cap - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        if (!wc->hash[i]) return i;
        if (wc->hash[i] == h && wc->key_len[i] == n && memcmp(wc->keys + wc->key_off[i], w, n) == 0) return i;
    }
}

static void cache_put(WordCache *wc, size_t slot, uint64_t h, const char *w, size_t n, const uint32_t *ids, size_t k) {
    // Full (3/4 of the slots, or the arenas): start over. Frequent words come back within a few documents.
    if (4 * (wc->count + 1) > 3 * wc->cap || wc->keys_used + n > wc->keys_cap || wc->ids_used + k > wc->ids_cap) {
        memset(wc->hash, 0, wc->cap * sizeof *wc->hash);
        wc->count = wc->keys_used = wc->ids_used = 0;
        slot = cache_slot(wc, w, n, h);
        if (n > wc->keys_cap || k > wc->ids_cap) return;
    }
    wc->hash[slot] = h;
    wc->key_off[slot] = (uint32_t)wc->keys_used;
    wc->key_len[slot] = (uint16_t)n;
    memcpy(wc->keys + wc->keys_used, w, n);
    wc->keys_used += n;
    wc->ids_off[slot] = (uint32_t)wc->ids_used;
    wc->n_ids[slot] = (uint16_t)k;
    memcpy(wc->ids + wc->ids_used, ids, k * sizeof *ids);
    wc->ids_used += k;
    wc->count++;
}

static inline int heap_less(const HeapItem *a, const HeapItem *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_push(TokenizerCtx *c, size_t *n, HeapItem it) {
    if (*n == c->heap_cap) {
        c->heap_cap = c->heap_cap ? 2 * c->heap_cap : 256;
        c->heap = xrealloc(c->heap, c->heap_cap * sizeof *c->heap);
    }
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_less(&it, &c->heap[p])) break;
        c->heap[i] = c->heap[p];
        i = p;
    }
    c->heap[i] = it;
}

static HeapItem heap_pop(TokenizerCtx *c, size_t *n) {
    HeapItem top = c->heap[0], last = c->heap[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, m = i;
        if (l >= *n) break;
        m = (l + 1 < *n && heap_less(&c->heap[l + 1], &c->heap[l])) ? l + 1 : l;
        if (!heap_less(&c->heap[m], &last)) break;
        c->heap[i] = c->heap[m];
        i = m;
    }
    if (*n) c->heap[i] = last;
    return top;
}

static void push_pair(TokenizerCtx *c, size_t *n_heap, uint32_t pos) {
    const Symbol *s = c->sym;
    if (s[pos].next < 0) return;
    uint64_t v = pair_find(&c->t->merges, s[pos].id, s[s[pos].next].id);
    if (v != UINT64_MAX) heap_push(c, n_heap, (HeapItem){.rank = (uint32_t)(v >> 32), .pos = pos, .new_id = (uint32_t)v});
}

// The merge loop of Hugging Face's Word::merge_all: repeatedly merge the adjacent pair of lowest rank (leftmost
// first), using a heap of candidate pairs whose stale entries are skipped when popped. O(n log n) in the length.
void bpe_encode_word(TokenizerCtx *c, const char *w, size_t n, TokenBuf *out) {
    const Tokenizer *t = c->t;
    if (n == 1) {
        tokenbuf_reserve(out, 1);
        out->ids[out->n++] = t->byte_id[(uint8_t)w[0]];
        return;
    }
    uint64_t h = 0;
    size_t slot = 0;
    if (n <= BPE_CACHE_MAX_KEY) {
        h = bpe_hash_bytes(w, n);
        slot = cache_slot(&c->cache, w, n, h);
        if (c->cache.hash[slot]) {
            size_t k = c->cache.n_ids[slot];
            tokenbuf_reserve(out, k);
            memcpy(out->ids + out->n, c->cache.ids + c->cache.ids_off[slot], k * sizeof *out->ids);
            out->n += k;
            return;
        }
    }
    CHECK(n < INT32_MAX, "bpe: a pre-token of %zu bytes is too long", n);
    size_t first = out->n;
    int64_t whole = t->ignore_merges ? bpe_vocab_find(t, w, n) : -1;
    if (whole >= 0) {
        tokenbuf_reserve(out, 1);
        out->ids[out->n++] = (uint32_t)whole;
    } else {
        if (n > c->sym_cap) {
            c->sym_cap = 2 * n;
            c->sym = xrealloc(c->sym, c->sym_cap * sizeof *c->sym);
        }
        Symbol *s = c->sym;
        for (size_t i = 0; i < n; i++)
            s[i] = (Symbol){.id = t->byte_id[(uint8_t)w[i]], .prev = (int32_t)i - 1,
                            .next = i + 1 < n ? (int32_t)i + 1 : -1, .len = 1};
        size_t n_heap = 0;
        for (size_t i = 0; i + 1 < n; i++) push_pair(c, &n_heap, (uint32_t)i);
        while (n_heap) {
            HeapItem top = heap_pop(c, &n_heap);
            Symbol *l = &s[top.pos];
            if (l->len == 0 || l->next < 0) continue;
            Symbol *r = &s[l->next];
            uint64_t v = pair_find(&t->merges, l->id, r->id);
            if (v == UINT64_MAX || (uint32_t)v != top.new_id) continue;   // stale: a neighbour merged meanwhile
            l->id = top.new_id;
            l->len += r->len;
            r->len = 0;
            l->next = r->next;
            if (l->next >= 0) s[l->next].prev = (int32_t)top.pos;
            if (l->prev >= 0) push_pair(c, &n_heap, (uint32_t)l->prev);
            push_pair(c, &n_heap, top.pos);
        }
        tokenbuf_reserve(out, n);
        for (int32_t i = 0; i >= 0; i = s[i].next) out->ids[out->n++] = s[i].id;
    }
    if (n <= BPE_CACHE_MAX_KEY) cache_put(&c->cache, slot, h, w, n, out->ids + first, out->n - first);
}

void bpe_pcre2_die(const char *file, int line, const char *call, int rc) {
    PCRE2_UCHAR msg[256];
    if (pcre2_get_error_message(rc, msg, sizeof msg) < 0) snprintf((char *)msg, sizeof msg, "unknown error");
    die_at(file, line, "%s failed: PCRE2 error %d: %s", call, rc, (const char *)msg);
}
