// Tokenizer tests: exactness against Hugging Face tokenizers (fixtures made by tests/fixtures/tokenizer/
// make_fixture.py), byte tokenizer, special tokens, error handling of tokenizer.json loading, and build/tokenize
// end to end (shards read back through the HDF5 API, thread-count determinism, every bad input).
#include "test.h"

#include "data/json.h"
#include "data/tokenizer.h"
#include "data/utf8.h"

#include <stdint.h>
#include <string.h>

static char *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    ASSERT_MSG(f, "cannot open %s", path);
    size_t cap = 1 << 16, n = 0, k;
    char *buf = malloc(cap);
    while ((k = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += k;
        if (cap - n < 2) { cap *= 2; buf = realloc(buf, cap); }
    }
    fclose(f);
    buf[n] = 0;
    *len = n;
    return buf;
}

static void write_file(const char *path, const char *data, size_t len) {
    FILE *f = fopen(path, "wb");
    ASSERT_MSG(f, "cannot create %s", path);
    ASSERT(fwrite(data, 1, len, f) == len);
    fclose(f);
}

// Every case of expected.jsonl: identical ids to tokenizers' encode, in both special-token modes.
TEST(tokenizer_matches_hf_tokenizers) {
    size_t len;
    char *all = read_all(test_path("tests/fixtures/tokenizer/expected.jsonl"), &len);
    const char *names[3] = {"v3.json", "gpt2.json", "behaviors.json"};
    Tokenizer *toks[3];
    TokenizerCtx *ctxs[3];
    for (int i = 0; i < 3; i++) {
        char p[256];
        snprintf(p, sizeof p, "tests/fixtures/tokenizer/%s", names[i]);
        toks[i] = tokenizer_load(test_path(p));
        ctxs[i] = tokenizer_ctx_new(toks[i]);
    }
    int n_cases = 0, per_tok[3] = {0};
    char *line = all;
    while (line < all + len) {
        char *nl = strchr(line, '\n');
        size_t ll = nl ? (size_t)(nl - line) : strlen(line);
        char err[256];
        Json *j = json_parse(line, ll, err, sizeof err);
        ASSERT_MSG(j, "expected.jsonl case %d: %s", n_cases, err);
        const JsonValue *root = json_root(j);
        const JsonValue *name = json_get(root, "tokenizer"), *text = json_get(root, "text");
        const JsonValue *ids = json_get(root, "ids"), *ps = json_get(root, "parse_special");
        int k = -1;
        for (int i = 0; i < 3; i++) if (strcmp(name->str, names[i]) == 0) k = i;
        ASSERT(k >= 0);
        TokenBuf out = {0};
        tokenizer_encode(ctxs[k], text->str, text->n, ps->type == JSON_TRUE ? TOKENIZER_PARSE_SPECIAL : 0, &out);
        size_t first_diff = out.n < ids->n ? out.n : ids->n;
        for (size_t i = 0; i < out.n && i < ids->n; i++)
            if (out.ids[i] != (uint32_t)ids->items[i].number) { first_diff = i; break; }
        if (out.n != ids->n || first_diff < out.n) {
            fprintf(stderr, "case %d (%s, parse_special=%d): %zu ids vs %zu expected, first difference at %zu\n",
                    n_cases, name->str, ps->type == JSON_TRUE, out.n, ids->n, first_diff);
            for (size_t i = first_diff > 3 ? first_diff - 3 : 0; i < first_diff + 4; i++)
                fprintf(stderr, "  [%zu] got %lld expected %lld\n", i, i < out.n ? (long long)out.ids[i] : -1LL,
                        i < ids->n ? (long long)ids->items[i].number : -1LL);
            fprintf(stderr, "  text: %.300s\n", line);
            ASSERT_MSG(0, "ids differ from Hugging Face tokenizers");
        }
        tokenbuf_free(&out);
        json_free(j);
        per_tok[k]++;
        n_cases++;
        line += ll + 1;
    }
    ASSERT_EQ_INT(n_cases, 456);
    for (int i = 0; i < 3; i++) ASSERT_EQ_INT(per_tok[i], 152);
    for (int i = 0; i < 3; i++) { tokenizer_ctx_free(ctxs[i]); tokenizer_free(toks[i]); }
    free(all);
}

// ---- helpers for the tool tests -------------------------------------------------------------------------------

#include <hdf5.h>
#include <dirent.h>
#include <sys/wait.h>
#include <unistd.h>

#include "data/shard.h"

// build/tokenize next to this test binary (build/ or build-debug/).
static const char *tool(void) { return test_bin("tokenize"); }

// Runs build/tokenize with args; returns the exit status, output in *out (caller frees).
static int run_tool(char **out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int run_tool(char **out, const char *fmt, ...) {
    char args[8192], cmd[16384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "%s %s", tool(), args);
    return test_run(cmd, out);
}

// A shard read back through the HDF5 API directly (independent of data/shard.c).
typedef struct {
    uint32_t *tokens;
    uint64_t *offsets;
    hsize_t n_tokens, n_docs;
    uint32_t vocab_size, eos_id;
    int version;
    char tokenizer[256];
} H5Shard;

static void h5shard_read(H5Shard *s, const char *path) {
    memset(s, 0, sizeof *s);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    ASSERT_MSG(f >= 0, "cannot open shard %s", path);
    hid_t d = H5Dopen2(f, "tokens", H5P_DEFAULT);
    ASSERT(d >= 0);
    hid_t sp = H5Dget_space(d);
    H5Sget_simple_extent_dims(sp, &s->n_tokens, NULL);
    s->tokens = malloc((s->n_tokens + 1) * sizeof *s->tokens);
    if (s->n_tokens) ASSERT(H5Dread(d, H5T_NATIVE_UINT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, s->tokens) >= 0);
    H5Sclose(sp); H5Dclose(d);
    d = H5Dopen2(f, "doc_offsets", H5P_DEFAULT);
    ASSERT(d >= 0);
    sp = H5Dget_space(d);
    hsize_t n_off;
    H5Sget_simple_extent_dims(sp, &n_off, NULL);
    s->n_docs = n_off - 1;
    s->offsets = malloc(n_off * sizeof *s->offsets);
    ASSERT(H5Dread(d, H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, s->offsets) >= 0);
    H5Sclose(sp); H5Dclose(d);
    hid_t a = H5Aopen(f, "vocab_size", H5P_DEFAULT);
    H5Aread(a, H5T_NATIVE_UINT32, &s->vocab_size); H5Aclose(a);
    a = H5Aopen(f, "eos_id", H5P_DEFAULT);
    H5Aread(a, H5T_NATIVE_UINT32, &s->eos_id); H5Aclose(a);
    a = H5Aopen(f, "format_version", H5P_DEFAULT);
    H5Aread(a, H5T_NATIVE_INT, &s->version); H5Aclose(a);
    a = H5Aopen(f, "tokenizer", H5P_DEFAULT);
    // Fixed-length (our writer) or variable-length (h5py's default) string: read either.
    hid_t ft = H5Aget_type(a), t = H5Tcopy(H5T_C_S1);
    H5Tset_cset(t, H5Tget_cset(ft));
    if (H5Tis_variable_str(ft) > 0) {
        char *name = NULL;
        H5Tset_size(t, H5T_VARIABLE);
        ASSERT(H5Aread(a, t, &name) >= 0);
        snprintf(s->tokenizer, sizeof s->tokenizer, "%s", name);
        H5free_memory(name);
    } else {
        H5Tset_size(t, sizeof s->tokenizer);
        H5Tset_strpad(t, H5T_STR_NULLTERM);
        ASSERT(H5Aread(a, t, s->tokenizer) >= 0);
        s->tokenizer[sizeof s->tokenizer - 1] = 0;
    }
    H5Tclose(ft);
    H5Tclose(t); H5Aclose(a);
    H5Fclose(f);
}

static void h5shard_free(H5Shard *s) { free(s->tokens); free(s->offsets); }

// Number of directory entries other than . and .. (shards, and any leftover staging directory).
static int dir_entries(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    closedir(d);
    return n;
}

static char *tmp_path(const char *name) {
    static char buf[8][4096];
    static int slot;
    char *b = buf[slot++ % 8];
    snprintf(b, 4096, "%s/%s", test_tmpdir(), name);
    return b;
}

// Runs fn in a child process and returns its exit status (for calls that must die()).
static int exit_status_of(void (*fn)(void)) {
    fflush(stdout); fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) { freopen("/dev/null", "w", stderr); fn(); _exit(0); }
    int st;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

// ---- byte tokenizer and special tokens ------------------------------------------------------------------------

TEST(tokenizer_byte_round_trip) {
    Tokenizer *t = tokenizer_load("byte");
    ASSERT_EQ_INT(tokenizer_vocab_size(t), 259);
    ASSERT_EQ_INT(tokenizer_eos_id(t), 256);
    ASSERT_EQ_STR(tokenizer_name(t), "byte");
    ASSERT_EQ_INT(tokenizer_needs_utf8(t), 0);
    TokenizerCtx *c = tokenizer_ctx_new(t);
    // Every byte value, including NUL and bytes that are not UTF-8, is its own id.
    char text[1024];
    for (int i = 0; i < 1024; i++) text[i] = (char)((i * 37 + 11) & 0xff);
    TokenBuf ids = {0};
    ASSERT_EQ_INT(tokenizer_encode(c, text, sizeof text, TOKENIZER_PARSE_SPECIAL, &ids), 1024);
    for (int i = 0; i < 1024; i++) ASSERT_EQ_INT(ids.ids[i], (i * 37 + 11) & 0xff);
    size_t len;
    char *back = tokenizer_decode(t, ids.ids, ids.n, &len);
    ASSERT_EQ_INT(len, 1024);
    ASSERT(memcmp(back, text, 1024) == 0);
    free(back);
    tokenbuf_free(&ids);
    tokenizer_ctx_free(c);
    tokenizer_free(t);
}

TEST(tokenizer_byte_special_tokens) {
    Tokenizer *t = tokenizer_load("byte");
    TokenizerCtx *c = tokenizer_ctx_new(t);
    const char *s = "a<|begin_of_text|>b<|end_of_text|><|pad|><|end_of_text|";
    TokenBuf ids = {0};
    tokenizer_encode(c, s, strlen(s), TOKENIZER_PARSE_SPECIAL, &ids);
    // a, BOS, b, EOS, PAD, then the unterminated "<|end_of_text|" as 14 bytes
    ASSERT_EQ_INT(ids.n, 5 + 14);
    ASSERT_EQ_INT(ids.ids[0], 'a');
    ASSERT_EQ_INT(ids.ids[1], 257);
    ASSERT_EQ_INT(ids.ids[2], 'b');
    ASSERT_EQ_INT(ids.ids[3], 256);
    ASSERT_EQ_INT(ids.ids[4], 258);
    ASSERT_EQ_INT(ids.ids[5], '<');
    size_t len;
    char *back = tokenizer_decode(t, ids.ids, ids.n, &len);
    ASSERT_EQ_STR(back, s);
    free(back);
    // Without TOKENIZER_PARSE_SPECIAL the markers are plain bytes: a document cannot forge an EOS.
    ids.n = 0;
    tokenizer_encode(c, s, strlen(s), 0, &ids);
    ASSERT_EQ_INT(ids.n, strlen(s));
    for (size_t i = 0; i < ids.n; i++) ASSERT(ids.ids[i] < 256);
    ASSERT_EQ_INT(tokenizer_token_id(t, "<|pad|>", 7), 258);
    ASSERT_EQ_INT(tokenizer_token_id(t, "x", 1), 'x');
    ASSERT_EQ_INT(tokenizer_token_id(t, "xy", 2), -1);
    tokenbuf_free(&ids);
    tokenizer_ctx_free(c);
    tokenizer_free(t);
}

static void decode_out_of_range(void) {
    Tokenizer *t = tokenizer_load("byte");
    uint32_t bad[2] = {65, 259};
    size_t len;
    tokenizer_decode(t, bad, 2, &len);
}

TEST(tokenizer_decode_rejects_unknown_id) { ASSERT_EQ_INT(exit_status_of(decode_out_of_range), 1); }

// decode(encode(x)) == x for the V3-style BPE, specials parsed or not; special ids decode to their text.
TEST(tokenizer_bpe_round_trip_and_specials) {
    Tokenizer *t = tokenizer_load(test_path("tests/fixtures/tokenizer/v3.json"));
    ASSERT_EQ_INT(tokenizer_vocab_size(t), 3003);
    ASSERT_EQ_INT(tokenizer_eos_id(t), 1);   // "<|end_of_text|>" by name: no tokenizer_config.json beside it
    ASSERT_EQ_INT(tokenizer_needs_utf8(t), 1);
    ASSERT_CONTAINS(tokenizer_name(t), "hf-bpe:tokenizer/v3.json#fnv1a64=");
    TokenizerCtx *c = tokenizer_ctx_new(t);
    size_t n;
    char *text = read_all(test_path("tests/fixtures/tokenizer/test_text.txt"), &n);
    for (int flags = 0; flags <= TOKENIZER_PARSE_SPECIAL; flags++) {
        TokenBuf ids = {0};
        tokenizer_encode(c, text, n, flags, &ids);
        int n_special = 0;
        for (size_t i = 0; i < ids.n; i++) n_special += ids.ids[i] < 3;
        // test_text.txt has 5 complete special-token markers (and a broken one); ids only when parsed.
        ASSERT_EQ_INT(n_special, flags ? 5 : 0);
        size_t len;
        char *back = tokenizer_decode(t, ids.ids, ids.n, &len);
        ASSERT_EQ_INT(len, n);
        ASSERT(memcmp(back, text, n) == 0);
        free(back);
        tokenbuf_free(&ids);
    }
    uint32_t sp[3] = {0, 1, 3000};
    size_t len;
    char *s = tokenizer_decode(t, sp, 3, &len);
    ASSERT_EQ_STR(s, "<|begin_of_text|><|end_of_text|><think>");
    free(s);
    free(text);
    tokenizer_ctx_free(c);
    tokenizer_free(t);
}

// The EOS named by a tokenizer_config.json beside tokenizer.json wins over the name heuristic.
TEST(tokenizer_eos_from_tokenizer_config) {
    size_t n;
    char *json = read_all(test_path("tests/fixtures/tokenizer/v3.json"), &n);
    write_file(tmp_path("tokenizer.json"), json, n);
    const char *cfg = "{\"eos_token\": {\"content\": \"<|pad|>\", \"special\": true}, \"bos_token\": \"<|begin_of_text|>\"}";
    write_file(tmp_path("tokenizer_config.json"), cfg, strlen(cfg));
    Tokenizer *t = tokenizer_load(tmp_path("tokenizer.json"));
    ASSERT_EQ_INT(tokenizer_eos_id(t), 2);
    tokenizer_set_eos(t, "<|end_of_text|>");
    ASSERT_EQ_INT(tokenizer_eos_id(t), 1);
    tokenizer_free(t);
    free(json);
}

// ---- tokenizer.json that must be refused, each with a message naming the file and the problem -------------------

// Writes v3.json with the first occurrence of `from` replaced by `to` into the temp dir; returns its path.
static const char *v3_variant(const char *name, const char *from, const char *to) {
    size_t n;
    char *json = read_all(test_path("tests/fixtures/tokenizer/v3.json"), &n);
    char *at = strstr(json, from);
    ASSERT_MSG(at, "fixture lacks \"%s\"", from);
    size_t fl = strlen(from), tl = strlen(to);
    char *out = malloc(n - fl + tl + 1);
    memcpy(out, json, (size_t)(at - json));
    memcpy(out + (at - json), to, tl);
    memcpy(out + (at - json) + tl, at + fl, n - (size_t)(at - json) - fl);
    const char *path = tmp_path(name);
    write_file(path, out, n - fl + tl);
    free(out);
    free(json);
    return path;
}

static void expect_load_error(const char *json_path, const char *message) {
    write_file(tmp_path("in.txt"), "hello", 5);
    char *out;
    int rc = run_tool(&out, "--tokenizer %s --dry-run %s", json_path, tmp_path("in.txt"));
    ASSERT_MSG(rc == 1, "exit %d, expected 1; output:\n%s", rc, out);
    ASSERT_CONTAINS(out, json_path);
    ASSERT_CONTAINS(out, message);
    ASSERT_MSG(!strstr(out, "Segmentation") && !strstr(out, "Abort"), "%s", out);
    free(out);
}

TEST(tokenizer_json_unsupported_parts_are_refused) {
    expect_load_error(v3_variant("nfc.json", "\"normalizer\":null", "\"normalizer\":{\"type\":\"NFC\"}"),
                      "normalizer \"NFC\"");
    expect_load_error(v3_variant("digits.json", "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"\\\\p{N}{1,3}\"}",
                                 "{\"type\":\"Digits\",\"individual_digits\":true,\"pattern\":{\"Regex\":\"x\"}"),
                      "pre-tokenizer type \"Digits\" is not supported");
    expect_load_error(v3_variant("w.json", "\"\\\\p{N}{1,3}\"", "\"\\\\w+\""), "\\w is not supported");
    expect_load_error(v3_variant("and.json", "\"\\\\p{N}{1,3}\"", "\"[a-z&&b]\""), "'&&'");
    expect_load_error(v3_variant("nested.json", "\"\\\\p{N}{1,3}\"", "\"[a-z[0-9]]\""), "nested classes");
    expect_load_error(v3_variant("badre.json", "\"\\\\p{N}{1,3}\"", "\"(ab\""), "pcre2_compile");
    expect_load_error(v3_variant("merge.json", "\"merges\":[[", "\"merges\":[[\"Ġ\",\"zzqqzzqq\"],["),
                      "model.merges[0] (line 1) \"Ġ zzqqzzqq\": the second token is not in model.vocab");
    expect_load_error(v3_variant("lstrip.json", "\"lstrip\":false", "\"lstrip\":true"), "lstrip = true is not supported");
    expect_load_error(v3_variant("model.json", "\"type\":\"BPE\"", "\"type\":\"WordPiece\""), "model.type \"WordPiece\"");
    // The byte 0x21 '!' token renamed: a byte-level vocabulary must hold all 256 bytes.
    expect_load_error(v3_variant("byte.json", "\"!\":", "\"!!!!!!!!!!\":"), "lacks the byte-level token \"!\" of byte 0x21");
    size_t n;
    char *json = read_all(test_path("tests/fixtures/tokenizer/v3.json"), &n);
    write_file(tmp_path("truncated.json"), json, n / 2);
    free(json);
    expect_load_error(tmp_path("truncated.json"), "invalid JSON: line 1, column");
    expect_load_error(tmp_path("missing.json"), "cannot open");
}

// ---- build/tokenize end to end --------------------------------------------------------------------------------

// JSONL with escapes, a surrogate pair, an empty document and blank lines; shards of >= 8 tokens.
TEST(tokenize_tool_jsonl_byte_shards) {
    const char *jsonl =
        "{\"id\": 1, \"text\": \"Hello, world!\"}\n"
        "\n"
        "{\"text\": \"tab\\there \\\"quoted\\\" \\\\ slash\\/ caf\\u00e9 \\ud83d\\ude00\\nend\", \"meta\": {\"a\": [1, 2.5e3, null]}}\n"
        "{\"text\": \"\"}\n"
        "   \n"
        "{\"text\": \"abc\"}\n"
        "{\"text\": \"0123456789\", \"x\": true}\n";
    write_file(tmp_path("in.jsonl"), jsonl, strlen(jsonl));
    char *out;
    int rc = run_tool(&out, "--tokenizer byte --out-dir %s --prefix tr --shard-tokens 8 --threads 2 %s",
                      tmp_path("out"), tmp_path("in.jsonl"));
    ASSERT_MSG(rc == 0, "%s", out);
    ASSERT_CONTAINS(out, "4 documents (1 empty skipped)");
    free(out);
    // Expected documents (decoded by hand from the JSON escapes), one shard closes as soon as it has >= 8 tokens.
    const char *docs[4] = {"Hello, world!", "tab\there \"quoted\" \\ slash/ caf\xc3\xa9 \xf0\x9f\x98\x80\nend", "abc",
                           "0123456789"};
    // Shard 0: doc 0 (13 tokens); shard 1: doc 1; shard 2: docs 2 + 3 (3 then 10 tokens).
    const int shard_of[4] = {0, 1, 2, 2};
    ASSERT_EQ_INT(dir_entries(tmp_path("out")), 3);
    int d = 0;
    for (int s = 0; s < 3; s++) {
        char name[64];
        snprintf(name, sizeof name, "out/tr-%05d.h5", s);
        H5Shard sh;
        h5shard_read(&sh, tmp_path(name));
        ASSERT_EQ_INT(sh.version, 1);
        ASSERT_EQ_INT(sh.vocab_size, 259);
        ASSERT_EQ_INT(sh.eos_id, 256);
        ASSERT_EQ_STR(sh.tokenizer, "byte");
        ASSERT_EQ_INT(sh.offsets[0], 0);
        for (hsize_t k = 0; k < sh.n_docs; k++, d++) {
            ASSERT_EQ_INT(shard_of[d], s);
            size_t len = strlen(docs[d]);
            ASSERT_EQ_INT(sh.offsets[k + 1] - sh.offsets[k], len);
            for (size_t i = 0; i < len; i++) ASSERT_EQ_INT(sh.tokens[sh.offsets[k] + i], (uint8_t)docs[d][i]);
        }
        ASSERT_EQ_INT(sh.offsets[sh.n_docs], sh.n_tokens);
        h5shard_free(&sh);
    }
    ASSERT_EQ_INT(d, 4);
}

// --blank-lines 2: runs of >= 2 blank lines separate documents; single blank lines stay inside a document;
// blank lines at the start and end of a file belong to no document; each file starts new documents.
TEST(tokenize_tool_text_blank_line_rule) {
    const char *a = "\n\npara one\n\npara one, second paragraph\n\n\n\ndoc two\n \t\r\n\ndoc three\nline 2\n\n";
    write_file(tmp_path("a.txt"), a, strlen(a));
    write_file(tmp_path("b.txt"), "other file\n", 11);
    char *out;
    int rc = run_tool(&out, "--tokenizer byte --format text --blank-lines 2 --out-dir %s --prefix p %s %s",
                      tmp_path("out"), tmp_path("a.txt"), tmp_path("b.txt"));
    ASSERT_MSG(rc == 0, "%s", out);
    free(out);
    const char *docs[4] = {"para one\n\npara one, second paragraph\n", "doc two\n", "doc three\nline 2\n", "other file\n"};
    H5Shard sh;
    h5shard_read(&sh, tmp_path("out/p-00000.h5"));
    ASSERT_EQ_INT(sh.n_docs, 4);
    for (int k = 0; k < 4; k++) {
        size_t len = strlen(docs[k]);
        ASSERT_EQ_INT(sh.offsets[k + 1] - sh.offsets[k], len);
        for (size_t i = 0; i < len; i++) ASSERT_EQ_INT(sh.tokens[sh.offsets[k] + i], (uint8_t)docs[k][i]);
    }
    h5shard_free(&sh);
    // Default (--blank-lines 0): one document per file, kept byte for byte.
    rc = run_tool(&out, "--tokenizer byte --out-dir %s --prefix w %s %s", tmp_path("out"), tmp_path("a.txt"),
                  tmp_path("b.txt"));
    ASSERT_MSG(rc == 0, "%s", out);
    free(out);
    h5shard_read(&sh, tmp_path("out/w-00000.h5"));
    ASSERT_EQ_INT(sh.n_docs, 2);
    ASSERT_EQ_INT(sh.offsets[1], strlen(a));
    ASSERT_EQ_INT(sh.n_tokens, strlen(a) + 11);
    h5shard_free(&sh);
}

// Reads every shard PREFIX-NNNNN.h5 of a directory in order into one token stream and one list of doc lengths.
typedef struct { uint32_t *tokens; uint64_t *doc_len; size_t n_tokens, n_docs; int n_shards; } Stream;
static void stream_read(Stream *st, const char *dir, const char *prefix) {
    memset(st, 0, sizeof *st);
    for (int s = 0;; s++) {
        char p[4200];
        snprintf(p, sizeof p, "%s/%s-%05d.h5", dir, prefix, s);
        if (access(p, F_OK) != 0) break;
        H5Shard sh;
        h5shard_read(&sh, p);
        st->tokens = realloc(st->tokens, (st->n_tokens + sh.n_tokens + 1) * sizeof *st->tokens);
        memcpy(st->tokens + st->n_tokens, sh.tokens, sh.n_tokens * sizeof *sh.tokens);
        st->n_tokens += sh.n_tokens;
        st->doc_len = realloc(st->doc_len, (st->n_docs + sh.n_docs + 1) * sizeof *st->doc_len);
        for (hsize_t k = 0; k < sh.n_docs; k++) st->doc_len[st->n_docs++] = sh.offsets[k + 1] - sh.offsets[k];
        st->n_shards++;
        h5shard_free(&sh);
    }
}

// The same BPE run with 1 thread (one batch) and 2 threads (batches of 7 documents) gives identical shards, and
// the documents are exactly what the library encodes, in input order, split between train and val.
TEST(tokenize_tool_deterministic_across_threads) {
    size_t n;
    char *text = read_all(test_path("tests/fixtures/tokenizer/test_text.txt"), &n);
    FILE *f = fopen(tmp_path("docs.jsonl"), "w");
    enum { N_DOCS = 120 };
    size_t starts[N_DOCS], lens[N_DOCS];
    for (int d = 0; d < N_DOCS; d++) {
        // Slices of the test text at code-point boundaries (all its multi-byte characters start with >= 0xC0).
        size_t a = (size_t)(d * 37) % (n - 64), b = a + 16 + (size_t)(d * 53) % (n - a - 16);
        while (((uint8_t)text[a] & 0xC0) == 0x80) a++;
        while (b < n && ((uint8_t)text[b] & 0xC0) == 0x80) b++;
        starts[d] = a;
        lens[d] = b - a;
        fputs("{\"text\": \"", f);
        for (size_t i = a; i < b; i++) {
            uint8_t c = (uint8_t)text[i];
            if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
            else if (c < 0x20) fprintf(f, "\\u%04x", c);
            else fputc(c, f);
        }
        fputs("\"}\n", f);
    }
    fclose(f);
    const char *json = test_path("tests/fixtures/tokenizer/v3.json");
    char *out;
    int rc = run_tool(&out, "--tokenizer %s --out-dir %s --prefix t --val-fraction 0.25 --shard-tokens 700 "
                      "--threads 1 %s", json, tmp_path("one"), tmp_path("docs.jsonl"));
    ASSERT_MSG(rc == 0, "%s", out);
    free(out);
    rc = run_tool(&out, "--tokenizer %s --out-dir %s --prefix t --val-fraction 0.25 --shard-tokens 700 "
                  "--threads 2 --batch-docs 7 %s", json, tmp_path("two"), tmp_path("docs.jsonl"));
    ASSERT_MSG(rc == 0, "%s", out);
    free(out);

    Tokenizer *tok = tokenizer_load(json);
    TokenizerCtx *ctx = tokenizer_ctx_new(tok);
    Stream s1[2], s2[2];
    stream_read(&s1[0], tmp_path("one"), "t");
    stream_read(&s1[1], tmp_path("one"), "t-val");
    stream_read(&s2[0], tmp_path("two"), "t");
    stream_read(&s2[1], tmp_path("two"), "t-val");
    for (int k = 0; k < 2; k++) {
        ASSERT_EQ_INT(s1[k].n_shards, s2[k].n_shards);
        ASSERT_EQ_INT(s1[k].n_docs, s2[k].n_docs);
        ASSERT_EQ_INT(s1[k].n_tokens, s2[k].n_tokens);
        ASSERT(memcmp(s1[k].tokens, s2[k].tokens, s1[k].n_tokens * sizeof(uint32_t)) == 0);
        ASSERT(memcmp(s1[k].doc_len, s2[k].doc_len, s1[k].n_docs * sizeof(uint64_t)) == 0);
    }
    ASSERT(s1[0].n_shards >= 2);
    ASSERT(s1[1].n_docs >= 10 && s1[1].n_docs <= 50);   // about a quarter of 120
    ASSERT_EQ_INT(s1[0].n_docs + s1[1].n_docs, N_DOCS);
    // Every document, in order, is in train or val with the library's ids; the split follows the input order.
    size_t pos[2] = {0, 0}, doc[2] = {0, 0};
    for (int d = 0; d < N_DOCS; d++) {
        TokenBuf ids = {0};
        tokenizer_encode(ctx, text + starts[d], lens[d], 0, &ids);
        int k = doc[0] < s1[0].n_docs && s1[0].doc_len[doc[0]] == ids.n &&
                memcmp(s1[0].tokens + pos[0], ids.ids, ids.n * sizeof(uint32_t)) == 0 ? 0 : 1;
        ASSERT_MSG(doc[k] < s1[k].n_docs && s1[k].doc_len[doc[k]] == ids.n &&
                   memcmp(s1[k].tokens + pos[k], ids.ids, ids.n * sizeof(uint32_t)) == 0,
                   "document %d is not next in train or val", d);
        pos[k] += ids.n;
        doc[k]++;
        tokenbuf_free(&ids);
    }
    tokenizer_ctx_free(ctx);
    tokenizer_free(tok);
    free(text);
}

TEST(tokenize_tool_val_docs_and_prefixes) {
    const char *jsonl = "{\"text\": \"d0\"}\n{\"text\": \"d1\"}\n{\"text\": \"d2\"}\n{\"text\": \"d3\"}\n{\"text\": \"d4\"}\n";
    write_file(tmp_path("in.jsonl"), jsonl, strlen(jsonl));
    char *out;
    int rc = run_tool(&out, "--tokenizer byte --out-dir %s --prefix tr --val-prefix va --val-docs 2 %s",
                      tmp_path("out"), tmp_path("in.jsonl"));
    ASSERT_MSG(rc == 0, "%s", out);
    free(out);
    Stream tr, va;
    stream_read(&tr, tmp_path("out"), "tr");
    stream_read(&va, tmp_path("out"), "va");
    ASSERT_EQ_INT(va.n_docs, 2);
    ASSERT_EQ_INT(tr.n_docs, 3);
    ASSERT_EQ_INT(va.tokens[1], '0');
    ASSERT_EQ_INT(va.tokens[3], '1');
    ASSERT_EQ_INT(tr.tokens[1], '2');
    ASSERT_EQ_INT(dir_entries(tmp_path("out")), 2);
    // A second run refuses to mix with the existing shards; --force replaces them (the stale shard goes too).
    write_file(tmp_path("out/tr-00007.h5"), "stale", 5);
    rc = run_tool(&out, "--tokenizer byte --out-dir %s --prefix tr --val-prefix va --val-docs 2 %s",
                  tmp_path("out"), tmp_path("in.jsonl"));
    ASSERT_EQ_INT(rc, 1);
    ASSERT_CONTAINS(out, "already has shards of prefix \"tr\"");
    free(out);
    rc = run_tool(&out, "--tokenizer byte --out-dir %s --prefix tr --val-prefix va --val-docs 4 --force %s",
                  tmp_path("out"), tmp_path("in.jsonl"));
    ASSERT_MSG(rc == 0, "%s", out);
    free(out);
    ASSERT(access(tmp_path("out/tr-00007.h5"), F_OK) != 0);
    stream_read(&tr, tmp_path("out"), "tr");
    ASSERT_EQ_INT(tr.n_docs, 1);
    rc = run_tool(&out, "--tokenizer byte --out-dir %s --prefix x --val-docs 5 %s", tmp_path("out2"), tmp_path("in.jsonl"));
    ASSERT_EQ_INT(rc, 1);
    ASSERT_CONTAINS(out, "no training documents left");
    ASSERT_EQ_INT(dir_entries(tmp_path("out2")), 0);
    free(out);
}

// Each bad input: exit status 1, a message naming the file (and line), nothing left in the output directory, even
// when earlier shards had already been completed (--shard-tokens 1 closes a shard after every document).
static void expect_bad_input(const char *name, const char *content, size_t len, const char *opts, const char *message) {
    char *path = tmp_path(name);
    write_file(path, content, len);
    char *out;
    int rc = run_tool(&out, "--out-dir %s --prefix p --shard-tokens 1 %s %s", tmp_path("out"), opts, path);
    ASSERT_MSG(rc == 1, "%s: exit %d, expected 1:\n%s", name, rc, out);
    ASSERT_CONTAINS(out, path);
    ASSERT_CONTAINS(out, message);
    ASSERT_MSG(dir_entries(tmp_path("out")) == 0, "%s: files left in the output directory", name);
    free(out);
}

TEST(tokenize_tool_bad_inputs) {
#define BAD(name, text, opts, msg) expect_bad_input(name, text, sizeof(text) - 1, opts, msg)
    const char *byte = "--tokenizer byte";
    BAD("syntax.jsonl", "{\"text\": \"a\"}\n{\"text\": \"b\"}\n{\"text\": \"abc\"\n", byte,
        "syntax.jsonl:3: invalid JSON: column 15: expected ',' or '}' in object");
    BAD("notext.jsonl", "{\"text\": \"a\"}\n{\"txt\": \"b\"}\n", byte, "notext.jsonl:2: the object has no \"text\" field");
    BAD("number.jsonl", "{\"text\": \"a\"}\n{\"text\": 5}\n", byte, "number.jsonl:2: \"text\" is number, expected a string");
    BAD("array.jsonl", "{\"text\": \"a\"}\n[\"text\"]\n", byte, "array.jsonl:2: expected a JSON object");
    BAD("surrogate.jsonl", "{\"text\": \"a\"}\n{\"text\": \"x\\ud800y\"}\n", byte,
        "surrogate.jsonl:2: invalid JSON: column 12: high surrogate");
    BAD("rawutf8.jsonl", "{\"text\": \"a\"}\n{\"text\": \"x\xff\"}\n", byte, "rawutf8.jsonl:2: invalid JSON: column 12: invalid UTF-8");
    BAD("trailing.jsonl", "{\"text\": \"a\"} x\n", byte, "trailing.jsonl:1: invalid JSON: column 15: unexpected data");
    BAD("empty.jsonl", "", byte, "empty.jsonl: no documents (empty input)");
    BAD("blank.jsonl", "\n  \n{\"text\": \"\"}\n", byte, "blank.jsonl: no documents (empty input)");
    BAD("blank.txt", "\n \t\n\n", "--tokenizer byte --format text", "blank.txt: no documents (empty input)");
    char bpe[4200];
    snprintf(bpe, sizeof bpe, "--tokenizer %s --blank-lines 1", test_path("tests/fixtures/tokenizer/v3.json"));
    BAD("latin1.txt", "first doc\n\nsecond line ok\ncaf\xe9 third line\n", bpe, "latin1.txt:4: invalid UTF-8");
#undef BAD
    // A missing input among good ones fails before anything is created.
    write_file(tmp_path("good.jsonl"), "{\"text\": \"a\"}\n", 14);
    char *out;
    int rc = run_tool(&out, "--tokenizer byte --out-dir %s --prefix p %s %s", tmp_path("new"), tmp_path("good.jsonl"),
                      tmp_path("missing.jsonl"));
    ASSERT_EQ_INT(rc, 1);
    ASSERT_CONTAINS(out, "missing.jsonl: cannot open input: No such file or directory");
    ASSERT(access(tmp_path("new"), F_OK) != 0);
    free(out);
    rc = run_tool(&out, "--tokenizer byte --val-fraction 1.5 --out-dir %s --prefix p %s", tmp_path("new"), tmp_path("good.jsonl"));
    ASSERT_EQ_INT(rc, 1);
    ASSERT_CONTAINS(out, "--val-fraction: expected a number in [0, 1)");
    free(out);
    rc = run_tool(&out, "--tokenizer byte --out-dir %s %s", tmp_path("new"), tmp_path("good.jsonl"));
    ASSERT_EQ_INT(rc, 1);
    ASSERT_CONTAINS(out, "--out-dir and --prefix are required");
    free(out);
}

// The committed corpus, read through the shard API (data/shard.h): the numbers recorded in data/corpus/SOURCE.md.
TEST(tokenizer_corpus_shards) {
    Shard s;
    shard_open(&s, test_path("data/corpus/train-00000.h5"));
    ASSERT_EQ_INT(s.n_docs, 3163);
    ASSERT_EQ_INT(s.n_tokens, 1805774);
    ASSERT_EQ_INT(s.vocab_size, 259);
    ASSERT_EQ_INT(s.eos_id, 256);
    ASSERT_EQ_STR(s.tokenizer, "byte");
    uint32_t head[64];
    shard_read_tokens(&s, s.doc_offsets[1], 15, head);   // document 1 is the "(version 4.4.7)" front matter
    char txt[16];
    for (int i = 0; i < 15; i++) txt[i] = (char)head[i];
    txt[15] = 0;
    ASSERT_EQ_STR(txt, "(version 4.4.7)");
    shard_close(&s);
    shard_open(&s, test_path("data/corpus/val-00000.h5"));
    ASSERT_EQ_INT(s.n_docs, 182);
    ASSERT_EQ_INT(s.n_tokens, 112403);
    shard_close(&s);
}
