// Strict JSON reader and writer helpers: see json.h.
#include "train/json.h"
#include "train/check.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define JSON_MAX_DEPTH 64

typedef struct {
    const char *s;
    size_t len, pos;
    char *err;
    size_t errlen;
    int failed;
} Parser;

static void parser_fail(Parser *p, const char *what) {
    if (p->failed) return;
    p->failed = 1;
    int line = 1, col = 1;
    for (size_t i = 0; i < p->pos && i < p->len; i++) {
        if (p->s[i] == '\n') { line++; col = 1; } else col++;
    }
    if (p->pos >= p->len) snprintf(p->err, p->errlen, "line %d, column %d: %s (at end of input)", line, col, what);
    else snprintf(p->err, p->errlen, "line %d, column %d: %s", line, col, what);
}

static void skip_ws(Parser *p) {
    while (p->pos < p->len) {
        char c = p->s[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        p->pos++;
    }
}

static int peek(Parser *p) { return p->pos < p->len ? (unsigned char)p->s[p->pos] : -1; }

static uint64_t hash_str(const char *s) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ULL;
    return h;
}

// Builds the key index of an object; returns 0 on a duplicate key (index of the duplicate in *dup).
static int object_index(JsonValue *v, int *dup) {
    int cap = 16;
    while (cap < 2 * v->n) cap *= 2;
    v->index = xmalloc((size_t)cap * sizeof *v->index);
    v->index_cap = cap;
    for (int i = 0; i < cap; i++) v->index[i] = -1;
    for (int i = 0; i < v->n; i++) {
        size_t h = (size_t)(hash_str(v->keys[i]) & (uint64_t)(cap - 1));
        while (v->index[h] >= 0) {
            if (strcmp(v->keys[v->index[h]], v->keys[i]) == 0) { *dup = i; return 0; }
            h = (h + 1) & (size_t)(cap - 1);
        }
        v->index[h] = i;
    }
    return 1;
}

static int hex4(Parser *p, unsigned *out) {
    if (p->pos + 4 > p->len) { parser_fail(p, "expected 4 hex digits after \\u"); return 0; }
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p->s[p->pos + i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else { parser_fail(p, "expected 4 hex digits after \\u"); return 0; }
    }
    p->pos += 4;
    *out = v;
    return 1;
}

static void put_utf8(JsonBuf *b, unsigned cp) {
    if (cp < 0x80) json_buf_printf(b, "%c", (char)cp);
    else if (cp < 0x800) json_buf_printf(b, "%c%c", (char)(0xC0 | (cp >> 6)), (char)(0x80 | (cp & 0x3F)));
    else if (cp < 0x10000)
        json_buf_printf(b, "%c%c%c", (char)(0xE0 | (cp >> 12)), (char)(0x80 | ((cp >> 6) & 0x3F)),
                        (char)(0x80 | (cp & 0x3F)));
    else
        json_buf_printf(b, "%c%c%c%c", (char)(0xF0 | (cp >> 18)), (char)(0x80 | ((cp >> 12) & 0x3F)),
                        (char)(0x80 | ((cp >> 6) & 0x3F)), (char)(0x80 | (cp & 0x3F)));
}

// Parses a string literal (p at the opening quote); returns a malloc'd UTF-8 string or NULL on error.
static char *parse_string(Parser *p) {
    p->pos++;   // opening quote
    JsonBuf b = {0};
    json_buf_printf(&b, "%s", "");
    while (1) {
        if (p->pos >= p->len) { parser_fail(p, "unterminated string"); break; }
        unsigned char c = (unsigned char)p->s[p->pos];
        if (c == '"') { p->pos++; return b.s; }
        if (c < 0x20) { parser_fail(p, "control character in string (must be escaped)"); break; }
        if (c != '\\') {
            // Copy a run of plain bytes at once (UTF-8 passes through unchanged).
            size_t start = p->pos;
            while (p->pos < p->len && p->s[p->pos] != '"' && p->s[p->pos] != '\\' &&
                   (unsigned char)p->s[p->pos] >= 0x20) p->pos++;
            json_buf_printf(&b, "%.*s", (int)(p->pos - start), p->s + start);
            continue;
        }
        p->pos++;
        if (p->pos >= p->len) { parser_fail(p, "unterminated escape"); break; }
        char e = p->s[p->pos++];
        switch (e) {
        case '"': json_buf_printf(&b, "\""); break;
        case '\\': json_buf_printf(&b, "\\"); break;
        case '/': json_buf_printf(&b, "/"); break;
        case 'b': json_buf_printf(&b, "\b"); break;
        case 'f': json_buf_printf(&b, "\f"); break;
        case 'n': json_buf_printf(&b, "\n"); break;
        case 'r': json_buf_printf(&b, "\r"); break;
        case 't': json_buf_printf(&b, "\t"); break;
        case 'u': {
            unsigned cp;
            if (!hex4(p, &cp)) goto fail;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                unsigned lo;
                if (p->pos + 2 > p->len || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u') {
                    parser_fail(p, "high surrogate \\u escape without its low surrogate");
                    goto fail;
                }
                p->pos += 2;
                if (!hex4(p, &lo)) goto fail;
                if (lo < 0xDC00 || lo > 0xDFFF) { parser_fail(p, "invalid low surrogate"); goto fail; }
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                parser_fail(p, "lone low surrogate");
                goto fail;
            } else if (cp == 0) {
                parser_fail(p, "\\u0000 in a string is not supported");
                goto fail;
            }
            put_utf8(&b, cp);
            break;
        }
        default: p->pos--; parser_fail(p, "invalid escape in string"); goto fail;
        }
    }
fail:
    json_buf_free(&b);
    return NULL;
}

static int parse_number(Parser *p, JsonValue *v) {
    size_t start = p->pos;
    const char *s = p->s;
    if (peek(p) == '-') p->pos++;
    if (peek(p) == '0') p->pos++;
    else if (peek(p) >= '1' && peek(p) <= '9') while (peek(p) >= '0' && peek(p) <= '9') p->pos++;
    else { parser_fail(p, "expected a digit"); return 0; }
    if (peek(p) == '.') {
        p->pos++;
        if (!(peek(p) >= '0' && peek(p) <= '9')) { parser_fail(p, "expected a digit after the decimal point"); return 0; }
        while (peek(p) >= '0' && peek(p) <= '9') p->pos++;
    }
    if (peek(p) == 'e' || peek(p) == 'E') {
        p->pos++;
        if (peek(p) == '+' || peek(p) == '-') p->pos++;
        if (!(peek(p) >= '0' && peek(p) <= '9')) { parser_fail(p, "expected a digit in the exponent"); return 0; }
        while (peek(p) >= '0' && peek(p) <= '9') p->pos++;
    }
    size_t n = p->pos - start;
    v->type = JSON_NUMBER;
    v->str = xmalloc(n + 1);
    memcpy(v->str, s + start, n);
    v->str[n] = 0;
    v->number = strtod(v->str, NULL);
    if (!isfinite(v->number)) { parser_fail(p, "number out of range"); return 0; }
    return 1;
}

static int parse_value(Parser *p, JsonValue *v, int depth);

static int parse_container(Parser *p, JsonValue *v, int depth, int is_object) {
    if (depth >= JSON_MAX_DEPTH) { parser_fail(p, "nesting deeper than 64"); return 0; }
    char close = is_object ? '}' : ']';
    v->type = is_object ? JSON_OBJECT : JSON_ARRAY;
    p->pos++;
    int cap = 0;
    skip_ws(p);
    if (peek(p) == close) { p->pos++; return is_object ? object_index(v, &cap) : 1; }
    while (1) {
        if (v->n == cap) {
            cap = cap ? 2 * cap : 8;
            v->items = xrealloc(v->items, (size_t)cap * sizeof *v->items);
            if (is_object) v->keys = xrealloc(v->keys, (size_t)cap * sizeof *v->keys);
        }
        JsonValue *item = &v->items[v->n];
        memset(item, 0, sizeof *item);
        if (is_object) {
            skip_ws(p);
            if (peek(p) != '"') { parser_fail(p, "expected a member name in double quotes"); return 0; }
            char *key = parse_string(p);
            if (!key) return 0;
            v->keys[v->n] = key;
            v->n++;   // owned from here on (json_free frees keys[0..n) and items[0..n))
            skip_ws(p);
            if (peek(p) != ':') { parser_fail(p, "expected ':' after the member name"); return 0; }
            p->pos++;
        } else {
            v->n++;
        }
        if (!parse_value(p, item, depth + 1)) return 0;
        skip_ws(p);
        int c = peek(p);
        if (c == ',') {
            p->pos++;
            skip_ws(p);
            if (peek(p) == close) { parser_fail(p, "trailing comma"); return 0; }
            continue;
        }
        if (c == close) { p->pos++; break; }
        parser_fail(p, is_object ? "expected ',' or '}'" : "expected ',' or ']'");
        return 0;
    }
    if (is_object) {
        int dup = -1;
        if (!object_index(v, &dup)) {
            char msg[256];
            snprintf(msg, sizeof msg, "duplicate member name \"%.200s\"", v->keys[dup]);
            parser_fail(p, msg);
            return 0;
        }
    }
    return 1;
}

static int parse_literal(Parser *p, const char *lit) {
    size_t n = strlen(lit);
    if (p->pos + n > p->len || memcmp(p->s + p->pos, lit, n) != 0) { parser_fail(p, "expected a JSON value"); return 0; }
    p->pos += n;
    return 1;
}

static int parse_value(Parser *p, JsonValue *v, int depth) {
    skip_ws(p);
    int c = peek(p);
    switch (c) {
    case '{': return parse_container(p, v, depth, 1);
    case '[': return parse_container(p, v, depth, 0);
    case '"': v->type = JSON_STRING; v->str = parse_string(p); return v->str != NULL;
    case 't': v->type = JSON_BOOL; v->boolean = 1; return parse_literal(p, "true");
    case 'f': v->type = JSON_BOOL; v->boolean = 0; return parse_literal(p, "false");
    case 'n': v->type = JSON_NULL; return parse_literal(p, "null");
    default:
        if (c == '-' || (c >= '0' && c <= '9')) return parse_number(p, v);
        parser_fail(p, "expected a JSON value");
        return 0;
    }
}

int json_parse(const char *text, size_t len, JsonValue *out, char *err, size_t errlen) {
    Parser p = {text, len, 0, err, errlen, 0};
    memset(out, 0, sizeof *out);
    if (errlen) err[0] = 0;
    if (parse_value(&p, out, 0)) {
        skip_ws(&p);
        if (p.pos == p.len) return 0;
        parser_fail(&p, "unexpected text after the JSON value");
    }
    json_free(out);
    return -1;
}

void json_free(JsonValue *v) {
    if (!v) return;
    for (int i = 0; i < v->n; i++) {
        json_free(&v->items[i]);
        if (v->keys) free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
    free(v->index);
    free(v->str);
    memset(v, 0, sizeof *v);
}

const JsonValue *json_get(const JsonValue *obj, const char *key) {
    if (!obj || obj->type != JSON_OBJECT || !obj->index) return NULL;
    size_t mask = (size_t)obj->index_cap - 1;
    size_t h = (size_t)hash_str(key) & mask;
    while (obj->index[h] >= 0) {
        if (strcmp(obj->keys[obj->index[h]], key) == 0) return &obj->items[obj->index[h]];
        h = (h + 1) & mask;
    }
    return NULL;
}

int json_int64(const JsonValue *v, int64_t *out) {
    if (!v || v->type != JSON_NUMBER) return 0;
    if (strpbrk(v->str, ".eE")) return 0;
    errno = 0;
    char *end;
    long long x = strtoll(v->str, &end, 10);
    if (errno || *end) return 0;
    *out = x;
    return 1;
}

const char *json_type_name(JsonType t) {
    static const char *names[] = {"null", "boolean", "number", "string", "array", "object"};
    return (unsigned)t < 6 ? names[t] : "?";
}

// ---- writing ----

void json_buf_printf(JsonBuf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    CHECK(n >= 0, "vsnprintf failed for format \"%s\"", fmt);
    if (b->len + (size_t)n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (b->len + (size_t)n + 1 > cap) cap *= 2;
        b->s = xrealloc(b->s, cap);
        b->cap = cap;
    }
    va_start(ap, fmt);
    vsnprintf(b->s + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void json_buf_string(JsonBuf *b, const char *s) {
    json_buf_printf(b, "\"");
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        switch (*c) {
        case '"': json_buf_printf(b, "\\\""); break;
        case '\\': json_buf_printf(b, "\\\\"); break;
        case '\n': json_buf_printf(b, "\\n"); break;
        case '\r': json_buf_printf(b, "\\r"); break;
        case '\t': json_buf_printf(b, "\\t"); break;
        default:
            if (*c < 0x20) json_buf_printf(b, "\\u%04x", *c);
            else json_buf_printf(b, "%c", *c);
        }
    }
    json_buf_printf(b, "\"");
}

void json_buf_double(JsonBuf *b, double v) {
    CHECK(isfinite(v), "internal: non-finite number %g cannot be written as JSON", v);
    char tmp[40];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*g", prec, v);
        if (strtod(tmp, NULL) == v) break;
    }
    // JSON numbers need a digit before '.', which %g always gives; "1e-06" is valid JSON.
    json_buf_printf(b, "%s", tmp);
}

void json_buf_free(JsonBuf *b) {
    free(b->s);
    memset(b, 0, sizeof *b);
}
