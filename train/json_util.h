// JSON helpers beside the parser in data/json.h: a string builder for writing JSON (checkpoint manifests, Hugging
// Face config.json, index and safetensors headers) and typed reads of parsed values.
#ifndef JSON_UTIL_H
#define JSON_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include "data/json.h"

// A growable NUL-terminated string.
typedef struct { char *s; size_t len, cap; } JsonBuf;
__attribute__((format(printf, 2, 3))) void json_buf_printf(JsonBuf *b, const char *fmt, ...);
// Appends s as a JSON string literal (quotes and escapes).
void json_buf_string(JsonBuf *b, const char *s);
// Appends a double so that strtod reads back the same value (the shortest of up to 17 significant digits);
// non-finite values are a caller bug (JSON has none) and die.
void json_buf_double(JsonBuf *b, double v);
void json_buf_free(JsonBuf *b);

// 1 and *out when v is a number with an integral value of magnitude <= 2^53 (exact in the parser's double: byte
// offsets, shapes and counts of any real file); else 0.
int json_as_int64(const JsonValue *v, int64_t *out);
// 1 and *out (0 or 1) when v is true or false; else 0.
int json_as_bool(const JsonValue *v, int *out);

#endif
