// JSON writing and typed reads: see json_util.h.
#include "train/json_util.h"
#include "train/check.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

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
    json_buf_printf(b, "%s", tmp);   // %g always puts a digit before '.', and "1e-06" is valid JSON
}

void json_buf_free(JsonBuf *b) {
    free(b->s);
    memset(b, 0, sizeof *b);
}

int json_as_int64(const JsonValue *v, int64_t *out) {
    if (!v || v->type != JSON_NUMBER || !(fabs(v->number) <= 9007199254740992.0) || v->number != floor(v->number))
        return 0;
    *out = (int64_t)v->number;
    return 1;
}

int json_as_bool(const JsonValue *v, int *out) {
    if (!v || (v->type != JSON_TRUE && v->type != JSON_FALSE)) return 0;
    *out = v->type == JSON_TRUE;
    return 1;
}
