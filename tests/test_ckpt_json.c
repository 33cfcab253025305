// XXH64 against the reference implementation's values, and the strict JSON reader (valid documents and every kind
// of invalid one it must refuse).
#include "test.h"
#include "train/fsio.h"
#include "train/json_util.h"

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

TEST(ckpt_json_writer_round_trips) {
    // Strings with every escape the writer produces, and doubles written shortest-exact, read back unchanged by
    // the parser (data/json.h).
    JsonBuf b = {0};
    json_buf_printf(&b, "[");
    json_buf_string(&b, "tab\there \"q\" \x01 back\\slash\nnew \xc3\xa9");
    const double xs[] = {0.1, 1e-6, 2.2e-4 / 3, 14.8e12, -0.0, 5e-324, 1.7976931348623157e308, 2.5};
    for (size_t i = 0; i < sizeof xs / sizeof *xs; i++) {
        json_buf_printf(&b, ",");
        json_buf_double(&b, xs[i]);
    }
    json_buf_printf(&b, "]");
    ASSERT_CONTAINS(b.s, "\"tab\\there \\\"q\\\" \\u0001 back\\\\slash\\nnew \xc3\xa9\",0.1,1e-06,");
    ASSERT_CONTAINS(b.s, ",2.5]");
    char err[256];
    Json *doc = json_parse(b.s, b.len, err, sizeof err);
    ASSERT_MSG(doc, "%s: %s", b.s, err);
    const JsonValue *v = json_root(doc);
    ASSERT_EQ_STR(v->items[0].str, "tab\there \"q\" \x01 back\\slash\nnew \xc3\xa9");
    for (size_t i = 0; i < sizeof xs / sizeof *xs; i++)
        ASSERT_MSG(v->items[1 + i].number == xs[i], "%.17g", xs[i]);
    int64_t x;
    ASSERT(!json_as_int64(&v->items[1], &x));            // 0.1
    ASSERT(json_as_int64(&v->items[4], &x) && x == 14800000000000LL);
    ASSERT(json_as_int64(&v->items[8], &x) == 0);        // 2.5
    json_free(doc);
    json_buf_free(&b);
}
