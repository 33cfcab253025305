// A small strict JSON (RFC 8259) parser producing a read-only tree. Used for Hugging Face tokenizer.json files and
// for JSONL input documents (one object per line) in build/tokenize.
//
// Strings are decoded to UTF-8: escapes, \uXXXX and surrogate pairs are resolved; raw bytes must be valid UTF-8 and
// a lone surrogate escape is an error (it has no UTF-8 form, and silently replacing it would change the text).
// Every node lives in one arena owned by the Json document, so json_free releases everything at once.
#ifndef JSON_H
#define JSON_H

#include <stddef.h>

typedef enum { JSON_NULL, JSON_FALSE, JSON_TRUE, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } JsonType;

typedef struct JsonValue JsonValue;
struct JsonValue {
    JsonType type;
    size_t n;              // STRING: byte length (the text may contain NUL); ARRAY/OBJECT: number of elements
    double number;         // NUMBER
    char *str;             // STRING: n bytes plus a terminating NUL
    JsonValue *items;      // ARRAY: elements [n]; OBJECT: values [n]
    char **keys;           // OBJECT: keys [n], NUL-terminated (a key containing NUL is rejected)
    size_t line;           // 1-based line where the value starts, for error messages about its content
};

typedef struct Json Json;

// Parses text[0:len]. On error returns NULL and writes "line L, column C: what was expected" into err.
Json *json_parse(const char *text, size_t len, char *err, size_t err_size);
const JsonValue *json_root(const Json *j);
void json_free(Json *j);

// Object member lookup (first match); NULL when absent or when obj is not an object.
const JsonValue *json_get(const JsonValue *obj, const char *key);
const char *json_type_name(JsonType t);

// Reads a whole file (for tokenizer.json, which must be parsed whole); dies naming the file on I/O errors.
char *json_read_file(const char *path, size_t *len);

#endif
