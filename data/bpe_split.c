// Pre-tokenization for byte-level BPE: the Split pre-tokenizers (PCRE2 standing in for the Oniguruma engine that
// Hugging Face tokenizers uses) and the ByteLevel step, reproducing tokenizers' semantics exactly:
//   - each Split runs its regex on each piece left by the previous one, separately (lookarounds cannot see past a
//     piece), and the match list includes empty matches, iterated like Oniguruma's find_iter;
//   - the behaviours fold that list the way tokenizers' NormalizedString::split does; empty pieces are dropped;
//   - ByteLevel adds a leading space to each piece that lacks one (add_prefix_space) and, with use_regex, splits it
//     with the GPT-2 regex; then each piece goes through BPE.
#include "data/bpe.h"
#include "data/utf8.h"
#include "train/check.h"

#include <string.h>

// Oniguruma's \s (Unicode White_Space). PCRE2's \s under UCP also matches U+180E, so \s is spelled out.
#define ONIG_SPACE "\\t-\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"

typedef struct { char *s; size_t n, cap; } StrBuf;
static void sb_put(StrBuf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        b->cap = 2 * (b->n + n + 1);
        b->s = xrealloc(b->s, b->cap);
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}
#define SB_LIT(b, lit) sb_put(b, lit, sizeof(lit) - 1)

char *bpe_onig_to_pcre2(const char *p, size_t len, char *err, size_t err_size) {
    StrBuf out = {0};
    sb_put(&out, "", 0);
    int in_class = 0;
    size_t class_start = 0;
    for (size_t i = 0; i < len; i++) {
        char ch = p[i];
        if (ch == '\\') {
            if (i + 1 >= len) { snprintf(err, err_size, "pattern ends with a lone backslash"); goto fail; }
            char e = p[++i];
            switch (e) {
            case 's':
                if (in_class) SB_LIT(&out, ONIG_SPACE); else SB_LIT(&out, "[" ONIG_SPACE "]");
                continue;
            case 'S':
                if (in_class) { snprintf(err, err_size, "\\S inside a character class is not supported"); goto fail; }
                SB_LIT(&out, "[^" ONIG_SPACE "]");
                continue;
            case 'h':   // Oniguruma: a hexadecimal digit (PCRE2: horizontal space)
                if (in_class) SB_LIT(&out, "0-9A-Fa-f"); else SB_LIT(&out, "[0-9A-Fa-f]");
                continue;
            case 'H':
                if (in_class) { snprintf(err, err_size, "\\H inside a character class is not supported"); goto fail; }
                SB_LIT(&out, "[^0-9A-Fa-f]");
                continue;
            case 'w': case 'W':
                snprintf(err, err_size, "\\%c is not supported (Oniguruma's word class differs from PCRE2's; use "
                         "\\p{L}, \\p{N}, ... explicitly)", e);
                goto fail;
            case 'b': case 'B':
                if (!in_class) {
                    snprintf(err, err_size, "\\%c (word boundary) is not supported (it depends on the word class, "
                             "which differs between Oniguruma and PCRE2)", e);
                    goto fail;
                }
                break;
            default: break;
            }
            char two[2] = {'\\', e};
            sb_put(&out, two, 2);
            continue;
        }
        if (!in_class) {
            if (ch == '[') {
                in_class = 1;
                class_start = i;
                sb_put(&out, "[", 1);
                if (i + 1 < len && p[i + 1] == '^') { sb_put(&out, "^", 1); i++; }
                if (i + 1 < len && p[i + 1] == ']') { SB_LIT(&out, "\\]"); i++; }   // leading ']' is literal
                continue;
            }
            sb_put(&out, &ch, 1);
            continue;
        }
        if (ch == ']') { in_class = 0; sb_put(&out, "]", 1); continue; }
        if (ch == '[') {
            snprintf(err, err_size, "'[' inside the character class at offset %zu: nested classes and POSIX "
                     "brackets are not supported (escape it as \\[)", class_start);
            goto fail;
        }
        if (ch == '&' && i + 1 < len && p[i + 1] == '&') {
            snprintf(err, err_size, "class intersection '&&' (character class at offset %zu) is not supported by PCRE2",
                     class_start);
            goto fail;
        }
        sb_put(&out, &ch, 1);
    }
    if (in_class) { snprintf(err, err_size, "unterminated character class at offset %zu", class_start); goto fail; }
    return out.s;
fail:
    free(out.s);
    return NULL;
}

void bpe_compile_stage(SplitStage *s, const char *pattern, size_t len, int is_regex, const char *what) {
    char err[512];
    char *pcre = NULL;
    uint32_t options = PCRE2_UTF;
    if (is_regex) {
        pcre = bpe_onig_to_pcre2(pattern, len, err, sizeof err);
        CHECK(pcre, "%s: regex \"%.*s\": %s", what, (int)len, pattern, err);
        // UCP: \p and \d work on Unicode properties. MULTILINE: in Oniguruma's Ruby syntax ^ and $ are line anchors.
        options |= PCRE2_UCP | PCRE2_MULTILINE;
    } else {
        options |= PCRE2_LITERAL;
    }
    pcre2_compile_context *cc = PCRE2_CHECK_PTR(pcre2_compile_context_create(NULL));
    PCRE2_CHECK(pcre2_set_newline(cc, PCRE2_NEWLINE_LF));   // Oniguruma's newline is LF only
    int code;
    PCRE2_SIZE off;
    s->re = pcre2_compile((PCRE2_SPTR)(pcre ? pcre : pattern), pcre ? PCRE2_ZERO_TERMINATED : len, options, &code, &off, cc);
    pcre2_compile_context_free(cc);
    if (!s->re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(code, msg, sizeof msg);
        die("%s: pcre2_compile of \"%.*s\" failed at offset %zu: %s", what, (int)len, pattern, (size_t)off, (char *)msg);
    }
    free(pcre);
    // JIT when the library has it; PCRE2_ERROR_JIT_BADOPTION means "no JIT here", and the interpreter is used.
    int rc = pcre2_jit_compile(s->re, PCRE2_JIT_COMPLETE);
    if (rc != 0 && rc != PCRE2_ERROR_JIT_BADOPTION)
        bpe_pcre2_die(__FILE__, __LINE__, "pcre2_jit_compile(s->re, PCRE2_JIT_COMPLETE)", rc);
}

static Span *span_push(TokenizerCtx *c, int level, size_t *n, uint32_t start, uint32_t end, int is_match) {
    if (*n == c->span_cap[level]) {
        c->span_cap[level] = c->span_cap[level] ? 2 * c->span_cap[level] : 64;
        c->spans[level] = xrealloc(c->spans[level], c->span_cap[level] * sizeof(Span));
    }
    Span *sp = &c->spans[level][(*n)++];
    *sp = (Span){.start = start, .end = end, .is_match = (uint8_t)is_match};
    return sp;
}

static size_t next_char(const char *s, size_t len, size_t i) {
    if (i >= len) return i + 1;
    int k = utf8_char_len((const unsigned char *)s + i, len - i);
    return i + (k ? (size_t)k : 1);
}

// tokenizers' Pattern::find_matches for a regex: every match and every gap between matches, in order. Matches are
// iterated like the onig crate's find_iter: an empty match right where the previous match ended is skipped, and
// after an empty match the search resumes one character later.
static size_t find_matches(TokenizerCtx *c, int level, const SplitStage *st, const char *s, size_t len) {
    pcre2_match_data *md = c->md[level];
    size_t n = 0, prev = 0, search = 0;
    long last_match_end = -1;
    while (search <= len) {
        int rc = PCRE2_CHECK(pcre2_match(st->re, (PCRE2_SPTR)s, len, search, PCRE2_NO_UTF_CHECK, md, c->mctx));
        if (rc == PCRE2_ERROR_NOMATCH) break;
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t ms = ov[0], me = ov[1];
        if (ms == me && (long)me == last_match_end) { search = next_char(s, len, search); continue; }
        if (prev != ms) span_push(c, level, &n, (uint32_t)prev, (uint32_t)ms, 0);
        span_push(c, level, &n, (uint32_t)ms, (uint32_t)me, 1);
        prev = me;
        last_match_end = (long)me;
        search = ms == me ? next_char(s, len, me) : me;
    }
    if (prev != len) span_push(c, level, &n, (uint32_t)prev, (uint32_t)len, 0);
    if (st->invert)
        for (size_t i = 0; i < n; i++) c->spans[level][i].is_match ^= 1;
    return n;
}

// The SplitDelimiterBehavior folds of tokenizers (normalizer.rs). Afterwards is_match means "drop this span".
static size_t apply_behavior(TokenizerCtx *c, int level, int behavior, size_t n) {
    Span *sp = c->spans[level];
    size_t k = 0;
    int previous_match = 0;
    switch (behavior) {
    case SPLIT_REMOVED:
        return n;
    case SPLIT_ISOLATED:
        for (size_t i = 0; i < n; i++) sp[i].is_match = 0;
        return n;
    case SPLIT_CONTIGUOUS:
        for (size_t i = 0; i < n; i++) {
            int m = sp[i].is_match;
            if (m == previous_match && k > 0) sp[k - 1].end = sp[i].end;
            else sp[k++] = (Span){sp[i].start, sp[i].end, 0};
            previous_match = m;
        }
        return k;
    case SPLIT_MERGED_WITH_PREVIOUS:
        for (size_t i = 0; i < n; i++) {
            int m = sp[i].is_match;
            if (m && !previous_match && k > 0) sp[k - 1].end = sp[i].end;
            else sp[k++] = (Span){sp[i].start, sp[i].end, 0};
            previous_match = m;
        }
        return k;
    case SPLIT_MERGED_WITH_NEXT:
        // Folded from the end; written back from the end so the output stays in order, then shifted down.
        k = n;
        for (size_t i = n; i-- > 0;) {
            int m = sp[i].is_match;
            if (m && !previous_match && k < n) sp[k].start = sp[i].start;
            else sp[--k] = (Span){sp[i].start, sp[i].end, 0};
            previous_match = m;
        }
        memmove(sp, sp + k, (n - k) * sizeof *sp);
        return n - k;
    }
    return n;
}

static void byte_level_piece(TokenizerCtx *c, const char *s, size_t len, TokenBuf *out) {
    const Tokenizer *t = c->t;
    if (t->prefix_space && s[0] != ' ') {
        if (len + 1 > c->prefix_cap) {
            c->prefix_cap = 2 * (len + 1);
            c->prefix_buf = xrealloc(c->prefix_buf, c->prefix_cap);
        }
        c->prefix_buf[0] = ' ';
        memcpy(c->prefix_buf + 1, s, len);
        s = c->prefix_buf;
        len++;
    }
    if (!t->use_regex) { bpe_encode_word(c, s, len, out); return; }
    int level = t->n_splits;
    size_t n = find_matches(c, level, &t->byte_level, s, len);
    for (size_t i = 0; i < n; i++) {
        Span sp = c->spans[level][i];
        if (sp.end > sp.start) bpe_encode_word(c, s + sp.start, sp.end - sp.start, out);
    }
}

static void split_level(TokenizerCtx *c, int level, const char *s, size_t len, TokenBuf *out) {
    const Tokenizer *t = c->t;
    if (level == t->n_splits) { byte_level_piece(c, s, len, out); return; }
    const SplitStage *st = &t->splits[level];
    size_t n = apply_behavior(c, level, st->behavior, find_matches(c, level, st, s, len));
    for (size_t i = 0; i < n; i++) {
        Span sp = c->spans[level][i];
        if (sp.is_match || sp.end == sp.start) continue;
        split_level(c, level + 1, s + sp.start, sp.end - sp.start, out);
    }
}

void bpe_encode_segment(TokenizerCtx *c, const char *text, size_t len, TokenBuf *out) {
    CHECK(len < UINT32_MAX, "bpe: a text segment of %zu bytes is too long (limit 4 GiB)", len);
    split_level(c, 0, text, len, out);
}
