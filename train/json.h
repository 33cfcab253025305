// A small, strict JSON reader (RFC 8259) and a string builder for writing JSON.
//
// Used for the files other tools write or read: safetensors headers, Hugging Face config.json and
// model.safetensors.index.json, and the checkpoint manifest. Strict on purpose: these files decide which bytes we
// load as weights, so anything unusual (trailing commas, comments, duplicate keys, control characters in strings,
// NaN, nesting deeper than 64) is an error with its line and column, never a guess.
//
// The parse result is a tree owned by the root value. Objects keep their members in file order and an index for
// O(1) lookup (a 671B index.json has ~90k keys). Numbers keep their literal text as well, so 64-bit integers such
// as safetensors byte offsets are read exactly (json_int64), not through a double.
#ifndef JSON_H
#define JSON_H

#include <stddef.h>
#include <stdint.h>

typedef enum { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } JsonType;

typedef struct JsonValue {
    JsonType type;
    int boolean;              // JSON_BOOL
    double number;            // JSON_NUMBER (strtod of the literal)
    char *str;                // JSON_STRING: UTF-8, NUL-terminated (\u0000 is rejected); JSON_NUMBER: the literal
    int n;                    // JSON_ARRAY / JSON_OBJECT: element count
    struct JsonValue *items;  // elements, or member values in file order
    char **keys;              // JSON_OBJECT: member names, aligned with items
    int *index, index_cap;    // JSON_OBJECT: open-addressing hash of keys -> member (-1 empty)
} JsonValue;

// Parses text[0..len). Returns 0 and fills *out, or returns -1 with "line L, column C: <what was expected>" in err
// (out is then empty and needs no json_free).
int json_parse(const char *text, size_t len, JsonValue *out, char *err, size_t errlen);
void json_free(JsonValue *v);
// The member `key` of an object, NULL when absent (or when obj is not an object).
const JsonValue *json_get(const JsonValue *obj, const char *key);
// 1 and *out when v is a number written as an integer (no fraction or exponent) that fits int64; else 0.
int json_int64(const JsonValue *v, int64_t *out);
const char *json_type_name(JsonType t);

// A growable NUL-terminated string for writing JSON.
typedef struct { char *s; size_t len, cap; } JsonBuf;
__attribute__((format(printf, 2, 3))) void json_buf_printf(JsonBuf *b, const char *fmt, ...);
// Appends s as a JSON string literal (quotes and escapes).
void json_buf_string(JsonBuf *b, const char *s);
// Appends a double so that strtod reads back the same value (17 significant digits at most, shortest that works);
// non-finite values are a caller bug (JSON has none) and die.
void json_buf_double(JsonBuf *b, double v);
void json_buf_free(JsonBuf *b);

#endif
