// XXH64 against the reference implementation's values, and the strict JSON reader (valid documents and every kind
// of invalid one it must refuse).
#include "test.h"
#include "train/fsio.h"
#include "train/json.h"

#include <stdint.h>

TEST(ckpt_xxh64_reference_values) {
    // Values from the reference xxHash (python-xxhash 3.x, XXH64) on bytes (7 i + 3) mod 256.
    uint8_t d[1000];
    for (int i = 0; i < 1000; i++) d[i] = (uint8_t)(i * 7 + 3);
    ASSERT(xxh64("", 0, 0) == 0xef46db3751d8e999ULL);
    ASSERT(xxh64("abc", 3, 0) == 0x44bc2cf5ad770999ULL);
    const struct { size_t n; uint64_t h; } v[] = {
        {31, 0xa2aa5f33cc4a6119ULL}, {32, 0x23c3c17ef790fd97ULL}, {33, 0x50a7cfc7ba588784ULL},
        {100, 0xa61f8d4c170fe531ULL}, {1000, 0x5f235fa033f1a3fbULL}};
    for (size_t i = 0; i < sizeof v / sizeof *v; i++) {
        ASSERT_MSG(xxh64(d, v[i].n, 0) == v[i].h, "n %zu: %016llx", v[i].n, (unsigned long long)xxh64(d, v[i].n, 0));
        // Streaming in uneven pieces gives the same digest.
        Xxh64 s;
        xxh64_init(&s, 0);
        size_t at = 0, piece = 1;
        while (at < v[i].n) {
            size_t k = v[i].n - at < piece ? v[i].n - at : piece;
            xxh64_update(&s, d + at, k);
            at += k;
            piece = piece * 3 + 1;
        }
        ASSERT(xxh64_digest(&s) == v[i].h);
    }
    ASSERT(xxh64(d, 100, 12345) == 0xacb8a02891fea7d2ULL);
    // The file variant hashes the file's bytes.
    char path[4200];
    snprintf(path, sizeof path, "%s/f", test_tmpdir());
    fsio_write_file(path, d, 1000, 0);
    uint64_t h;
    int64_t size;
    ASSERT_EQ_INT(xxh64_file(path, &h, &size), 0);
    ASSERT(h == 0x5f235fa033f1a3fbULL && size == 1000);
}

TEST(ckpt_json_parses_valid_documents) {
    const char *doc = " {\"a\": [1, -2.5e3, true, false, null], \"s\": \"x\\\"y\\\\z\\n\\u00e9\\ud83d\\ude00\",\n"
                      "  \"big\": 9007199254740993, \"o\": {\"k\": {}}, \"e\": []} ";
    JsonValue v;
    char err[256];
    ASSERT_MSG(json_parse(doc, strlen(doc), &v, err, sizeof err) == 0, "%s", err);
    ASSERT_EQ_INT(v.type, JSON_OBJECT);
    ASSERT_EQ_INT(v.n, 5);
    const JsonValue *a = json_get(&v, "a");
    ASSERT(a && a->type == JSON_ARRAY && a->n == 5);
    ASSERT(a->items[0].number == 1 && a->items[1].number == -2500);
    ASSERT(a->items[2].type == JSON_BOOL && a->items[2].boolean == 1 && a->items[4].type == JSON_NULL);
    int64_t i64;
    ASSERT(json_int64(&a->items[0], &i64) && i64 == 1);
    ASSERT(!json_int64(&a->items[1], &i64));   // not an integer literal
    // 2^53 + 1: exact through the literal, not through a double.
    ASSERT(json_int64(json_get(&v, "big"), &i64) && i64 == 9007199254740993LL);
    // Escapes, including a surrogate pair, decoded to UTF-8: e-acute is C3 A9, U+1F600 is F0 9F 98 80.
    ASSERT_EQ_STR(json_get(&v, "s")->str, "x\"y\\z\n\xc3\xa9\xf0\x9f\x98\x80");
    ASSERT(json_get(json_get(&v, "o"), "k")->type == JSON_OBJECT);
    ASSERT(json_get(&v, "missing") == NULL);
    json_free(&v);

    // Many keys: lookups go through the index.
    JsonBuf b = {0};
    json_buf_printf(&b, "{");
    for (int i = 0; i < 5000; i++) json_buf_printf(&b, "%s\"model.layers.%d.w\": %d", i ? "," : "", i, i * 3);
    json_buf_printf(&b, "}");
    ASSERT(json_parse(b.s, b.len, &v, err, sizeof err) == 0);
    for (int i = 0; i < 5000; i += 7) {
        char k[64];
        snprintf(k, sizeof k, "model.layers.%d.w", i);
        ASSERT(json_int64(json_get(&v, k), &i64) && i64 == i * 3);
    }
    json_free(&v);
    json_buf_free(&b);

    // The writer's strings and numbers read back unchanged.
    json_buf_printf(&b, "[");
    json_buf_string(&b, "tab\there \"q\" \x01 back\\slash");
    json_buf_printf(&b, ",");
    json_buf_double(&b, 0.1);
    json_buf_printf(&b, ",");
    json_buf_double(&b, 1e-6);
    json_buf_printf(&b, ",");
    json_buf_double(&b, 2.2e-4 / 3);
    json_buf_printf(&b, "]");
    ASSERT_MSG(json_parse(b.s, b.len, &v, err, sizeof err) == 0, "%s: %s", b.s, err);
    ASSERT_EQ_STR(v.items[0].str, "tab\there \"q\" \x01 back\\slash");
    ASSERT(v.items[1].number == 0.1 && v.items[2].number == 1e-6 && v.items[3].number == 2.2e-4 / 3);
    ASSERT_EQ_STR(v.items[1].str, "0.1");
    json_free(&v);
    json_buf_free(&b);
}

TEST(ckpt_json_refuses_invalid_documents) {
    const struct { const char *text, *err; } bad[] = {
        {"{\"a\": 1,}", "line 1, column 9: trailing comma"},
        {"[1, 2,]", "trailing comma"},
        {"{\"a\": 1, \"a\": 2}", "duplicate member name \"a\""},
        {"{\"a\": 1} // note", "unexpected text after the JSON value"},
        {"{\"a\": 01}", "expected ',' or '}'"},
        {"{\"a\": NaN}", "expected a JSON value"},
        {"{\"a\": \"x\ty\"}", "control character in string"},
        {"{\"a\": \"abc", "unterminated string"},
        {"{\"a\" 1}", "expected ':'"},
        {"{a: 1}", "expected a member name in double quotes"},
        {"\"\\ud800\"", "without its low surrogate"},
        {"\"\\x\"", "invalid escape"},
        {"\"\\u0000\"", "\\u0000"},
        {"1.", "expected a digit after the decimal point"},
        {"-", "expected a digit"},
        {"1e999", "number out of range"},
        {"", "expected a JSON value (at end of input)"},
        {"{\n  \"a\": [1,\n   2 3]}", "line 3, column 6: expected ',' or ']'"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        JsonValue v;
        char err[256];
        ASSERT_MSG(json_parse(bad[i].text, strlen(bad[i].text), &v, err, sizeof err) != 0, "accepted: %s", bad[i].text);
        ASSERT_MSG(strstr(err, bad[i].err), "%s: got \"%s\", expected \"%s\"", bad[i].text, err, bad[i].err);
    }
    // Nesting deeper than 64 is refused (a stack guard), 64 is fine.
    char deep[200];
    for (int d = 64; d <= 65; d++) {
        memset(deep, '[', (size_t)d);
        memset(deep + d, ']', (size_t)d);
        JsonValue v;
        char err[256];
        int rc = json_parse(deep, (size_t)(2 * d), &v, err, sizeof err);
        if (d == 64) { ASSERT_MSG(rc == 0, "%s", err); json_free(&v); }
        else { ASSERT(rc != 0); ASSERT_CONTAINS(err, "nesting deeper than 64"); }
    }
}
