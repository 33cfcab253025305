// Strict recursive-descent JSON parser (see json.h). Values are allocated from an arena of large blocks, so a
// 10 MB tokenizer.json with ~600K values costs a handful of mallocs.
#include "data/json.h"
#include "data/utf8.h"
#include "train/check.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>

#define JSON_MAX_DEPTH 512   // deeper nesting is rejected rather than risking the C stack

typedef struct ArenaBlock { struct ArenaBlock *next; size_t used, cap; } ArenaBlock;
#define ARENA_HDR ((sizeof(ArenaBlock) + 15) & ~(size_t)15)   // keeps block data 16-byte aligned

struct Json {
    ArenaBlock *blocks;
    JsonValue root;
};

typedef struct {
    const char *p, *end, *start;
    Json *doc;
    char *err;
    size_t err_size;
    int failed;
    int depth;
    size_t line;             // current line (newlines only occur in whitespace in valid JSON)
    const char *line_start;
} Parser;

static void *arena_alloc(Json *doc, size_t n) {
    n = (n + 15) & ~(size_t)15;
    ArenaBlock *b = doc->blocks;
    if (!b || b->cap - b->used < n) {
        size_t cap = n > ((size_t)1 << 20) ? n : ((size_t)1 << 20);
        b = xmalloc(ARENA_HDR + cap);
        b->cap = cap;
        b->used = 0;
        b->next = doc->blocks;
        doc->blocks = b;
    }
    void *p = (char *)b + ARENA_HDR + b->used;
    b->used += n;
    return p;
}

// Records the first error with the line and column of the parser's position.
static void fail(Parser *ps, const char *what) {
    if (ps->failed) return;
    ps->failed = 1;
    size_t col = (size_t)(ps->p - ps->line_start) + 1;
    snprintf(ps->err, ps->err_size, "line %zu, column %zu: %s", ps->line, col, what);
}

static void skip_ws(Parser *ps) {
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r')) {
        if (*ps->p == '\n') { ps->line++; ps->line_start = ps->p + 1; }
        ps->p++;
    }
}

static int hex4(const char *s, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return 0;
    }
    *out = v;
    return 1;
}

// Parses a string starting at the opening quote; the decoded bytes go to the arena.
static int parse_string(Parser *ps, char **out, size_t *out_len) {
    ps->p++;   // opening quote
    // The decoded form is never longer than the raw form, so one allocation of the raw length suffices.
    const char *q = ps->p;
    while (q < ps->end && *q != '"') q += (*q == '\\' && q + 1 < ps->end) ? 2 : 1;
    if (q >= ps->end) { fail(ps, "unterminated string"); return 0; }
    char *buf = arena_alloc(ps->doc, (size_t)(q - ps->p) + 1);
    size_t n = 0;
    while (ps->p < ps->end) {
        unsigned char c = (unsigned char)*ps->p;
        if (c == '"') { ps->p++; buf[n] = 0; *out = buf; *out_len = n; return 1; }
        if (c < 0x20) { fail(ps, "control character in string (must be escaped)"); return 0; }
        if (c == '\\') {
            if (ps->p + 1 >= ps->end) { fail(ps, "unterminated escape"); return 0; }
            char e = ps->p[1];
            ps->p += 2;
            switch (e) {
            case '"': buf[n++] = '"'; break;
            case '\\': buf[n++] = '\\'; break;
            case '/': buf[n++] = '/'; break;
            case 'b': buf[n++] = '\b'; break;
            case 'f': buf[n++] = '\f'; break;
            case 'n': buf[n++] = '\n'; break;
            case 'r': buf[n++] = '\r'; break;
            case 't': buf[n++] = '\t'; break;
            case 'u': {
                unsigned cp;
                if (ps->end - ps->p < 4 || !hex4(ps->p, &cp)) { ps->p -= 2; fail(ps, "bad \\u escape (need 4 hex digits)"); return 0; }
                ps->p += 4;
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    unsigned lo;
                    if (ps->end - ps->p < 6 || ps->p[0] != '\\' || ps->p[1] != 'u' || !hex4(ps->p + 2, &lo) ||
                        lo < 0xDC00 || lo > 0xDFFF) {
                        ps->p -= 6;
                        fail(ps, "high surrogate \\uD800-\\uDBFF not followed by a low surrogate \\uDC00-\\uDFFF");
                        return 0;
                    }
                    ps->p += 6;
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                    ps->p -= 6;
                    fail(ps, "lone low surrogate \\uDC00-\\uDFFF");
                    return 0;
                }
                n += utf8_encode(cp, buf + n);
                break;
            }
            default: ps->p -= 2; fail(ps, "invalid escape in string"); return 0;
            }
            continue;
        }
        if (c < 0x80) { buf[n++] = (char)c; ps->p++; continue; }
        int clen = utf8_char_len((const unsigned char *)ps->p, (size_t)(ps->end - ps->p));
        if (!clen) { fail(ps, "invalid UTF-8 in string"); return 0; }
        memcpy(buf + n, ps->p, (size_t)clen);
        n += (size_t)clen;
        ps->p += clen;
    }
    fail(ps, "unterminated string");
    return 0;
}

static int parse_number(Parser *ps, double *out) {
    const char *s = ps->p, *q = ps->p;
    if (q < ps->end && *q == '-') q++;
    if (q < ps->end && *q == '0') q++;
    else if (q < ps->end && *q >= '1' && *q <= '9') { while (q < ps->end && *q >= '0' && *q <= '9') q++; }
    else { fail(ps, "invalid number"); return 0; }
    if (q < ps->end && *q == '.') {
        q++;
        if (q >= ps->end || *q < '0' || *q > '9') { ps->p = q; fail(ps, "digit expected after '.'"); return 0; }
        while (q < ps->end && *q >= '0' && *q <= '9') q++;
    }
    if (q < ps->end && (*q == 'e' || *q == 'E')) {
        q++;
        if (q < ps->end && (*q == '+' || *q == '-')) q++;
        if (q >= ps->end || *q < '0' || *q > '9') { ps->p = q; fail(ps, "digit expected in exponent"); return 0; }
        while (q < ps->end && *q >= '0' && *q <= '9') q++;
    }
    char tmp[64];
    size_t n = (size_t)(q - s);
    if (n >= sizeof tmp) {
        // strtod needs a terminated copy; long numbers are rare (only in odd files), so allocate for them.
        char *big = xmalloc(n + 1);
        memcpy(big, s, n); big[n] = 0;
        *out = strtod(big, NULL);
        free(big);
    } else {
        memcpy(tmp, s, n); tmp[n] = 0;
        *out = strtod(tmp, NULL);
    }
    ps->p = q;
    return 1;
}

static int parse_value(Parser *ps, JsonValue *v);

// Elements are gathered in a malloc'd vector (sizes are unknown up front) and copied to the arena at the end.
static int parse_container(Parser *ps, JsonValue *v, int is_object) {
    if (++ps->depth > JSON_MAX_DEPTH) { fail(ps, "nesting deeper than 512 levels"); return 0; }
    ps->p++;
    size_t n = 0, cap = 0;
    JsonValue *items = NULL;
    char **keys = NULL;
    int ok = 0;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == (is_object ? '}' : ']')) { ps->p++; ok = 1; goto done; }
    for (;;) {
        if (n == cap) {
            cap = cap ? 2 * cap : 8;
            items = xrealloc(items, cap * sizeof *items);
            if (is_object) keys = xrealloc(keys, cap * sizeof *keys);
        }
        skip_ws(ps);
        if (is_object) {
            if (ps->p >= ps->end || *ps->p != '"') { fail(ps, "expected '\"' to start an object key"); goto done; }
            size_t klen;
            if (!parse_string(ps, &keys[n], &klen)) goto done;
            if (strlen(keys[n]) != klen) { fail(ps, "object key contains \\u0000"); goto done; }
            skip_ws(ps);
            if (ps->p >= ps->end || *ps->p != ':') { fail(ps, "expected ':' after object key"); goto done; }
            ps->p++;
            skip_ws(ps);
        }
        if (!parse_value(ps, &items[n])) goto done;
        n++;
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == ',') { ps->p++; continue; }
        if (ps->p < ps->end && *ps->p == (is_object ? '}' : ']')) { ps->p++; ok = 1; break; }
        fail(ps, is_object ? "expected ',' or '}' in object" : "expected ',' or ']' in array");
        goto done;
    }
done:
    if (ok) {
        v->n = n;
        v->items = arena_alloc(ps->doc, (n ? n : 1) * sizeof *items);
        if (n) memcpy(v->items, items, n * sizeof *items);
        if (is_object) {
            v->keys = arena_alloc(ps->doc, (n ? n : 1) * sizeof *keys);
            if (n) memcpy(v->keys, keys, n * sizeof *keys);
        }
    }
    free(items);
    free(keys);
    ps->depth--;
    return ok;
}

static int parse_literal(Parser *ps, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0) { fail(ps, "invalid literal"); return 0; }
    ps->p += n;
    return 1;
}

static int parse_value(Parser *ps, JsonValue *v) {
    memset(v, 0, sizeof *v);
    skip_ws(ps);
    if (ps->p >= ps->end) { fail(ps, "unexpected end of input (value expected)"); return 0; }
    v->line = ps->line;
    switch (*ps->p) {
    case '{': v->type = JSON_OBJECT; return parse_container(ps, v, 1);
    case '[': v->type = JSON_ARRAY; return parse_container(ps, v, 0);
    case '"': v->type = JSON_STRING; return parse_string(ps, &v->str, &v->n);
    case 't': v->type = JSON_TRUE; return parse_literal(ps, "true");
    case 'f': v->type = JSON_FALSE; return parse_literal(ps, "false");
    case 'n': v->type = JSON_NULL; return parse_literal(ps, "null");
    default:
        if (*ps->p == '-' || (*ps->p >= '0' && *ps->p <= '9')) { v->type = JSON_NUMBER; return parse_number(ps, &v->number); }
        fail(ps, "unexpected character (value expected)");
        return 0;
    }
}

Json *json_parse(const char *text, size_t len, char *err, size_t err_size) {
    Json *doc = xcalloc(1, sizeof *doc);
    Parser ps = {.p = text, .end = text + len, .start = text, .doc = doc, .err = err, .err_size = err_size,
                 .line = 1, .line_start = text};
    if (err_size) err[0] = 0;
    if (parse_value(&ps, &doc->root)) {
        skip_ws(&ps);
        if (ps.p != ps.end) fail(&ps, "unexpected data after the JSON value");
    }
    if (ps.failed) { json_free(doc); return NULL; }
    return doc;
}

const JsonValue *json_root(const Json *j) { return &j->root; }

void json_free(Json *j) {
    if (!j) return;
    for (ArenaBlock *b = j->blocks, *next; b; b = next) { next = b->next; free(b); }
    free(j);
}

const JsonValue *json_get(const JsonValue *obj, const char *key) {
    if (!obj || obj->type != JSON_OBJECT) return NULL;
    for (size_t i = 0; i < obj->n; i++)
        if (strcmp(obj->keys[i], key) == 0) return &obj->items[i];
    return NULL;
}

const char *json_type_name(JsonType t) {
    static const char *names[] = {"null", "false", "true", "number", "string", "array", "object"};
    return (unsigned)t < sizeof names / sizeof *names ? names[t] : "?";
}

char *json_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) die("%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0) die("%s: cannot stat: %s", path, strerror(errno));
    size_t n = (size_t)st.st_size;
    char *buf = xmalloc(n + 1);
    if (n && fread(buf, 1, n, f) != n) die("%s: read error: %s", path, strerror(errno));
    fclose(f);
    buf[n] = 0;
    *len = n;
    return buf;
}
