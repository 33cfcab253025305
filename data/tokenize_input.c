// Streaming document reader of build/tokenize (see tokenize_input.h).
#include "data/tokenize_input.h"
#include "data/json.h"
#include "train/check.h"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>

#define CHUNK_BYTES (1u << 20)

void input_check_readable(const char *path) {
    struct stat st;
    CHECK(stat(path, &st) == 0, "%s: cannot open input: %s", path, strerror(errno));
    CHECK(S_ISREG(st.st_mode) || S_ISFIFO(st.st_mode), "%s: not a regular file", path);
    FILE *f = fopen(path, "rb");
    CHECK(f, "%s: cannot open input: %s", path, strerror(errno));
    fclose(f);
}

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

void input_open(InputSet *in, const char **paths, int n_paths, int format, int blank_lines, size_t max_doc) {
    memset(in, 0, sizeof *in);
    in->paths = paths;
    in->n_paths = n_paths;
    in->cur = -1;
    in->format_override = format;
    in->blank_lines = blank_lines;
    in->max_doc = max_doc;
    in->chunk = xmalloc(CHUNK_BYTES);
}

void input_close(InputSet *in) {
    if (in->f) fclose(in->f);
    free(in->chunk);
    free(in->line_buf);
    memset(in, 0, sizeof *in);
}

// Opens the next input file; returns 0 when there is none.
static int next_file(InputSet *in) {
    if (in->f) {
        CHECK(in->docs_in_file > 0, "%s: no documents (empty input)", in->paths[in->cur]);
        fclose(in->f);
        in->f = NULL;
    }
    if (++in->cur >= in->n_paths) return 0;
    const char *path = in->paths[in->cur];
    in->f = fopen(path, "rb");
    CHECK(in->f, "%s: cannot open input: %s", path, strerror(errno));
    in->format = in->format_override >= 0 ? in->format_override : ends_with(path, ".jsonl") ? INPUT_JSONL : INPUT_TEXT;
    in->chunk_len = in->chunk_pos = 0;
    in->eof = 0;
    in->line = 0;
    in->carry = 0;
    in->docs_in_file = 0;
    return 1;
}

static int refill(InputSet *in) {
    if (in->eof) return 0;
    in->chunk_len = fread(in->chunk, 1, CHUNK_BYTES, in->f);
    in->chunk_pos = 0;
    CHECK(!ferror(in->f), "%s: read error: %s", in->paths[in->cur], strerror(errno));
    in->bytes_read += in->chunk_len;
    if (in->chunk_len == 0) in->eof = 1;
    return in->chunk_len > 0;
}

static void append(char **buf, size_t *len, size_t *cap, const char *s, size_t n) {
    if (*len + n + 1 > *cap) {
        size_t c = *cap ? *cap : 4096;
        while (c < *len + n + 1) c *= 2;
        *buf = xrealloc(*buf, c);
        *cap = c;
    }
    memcpy(*buf + *len, s, n);
    *len += n;
    (*buf)[*len] = 0;
}

// Reads the next line (with its '\n' when present) into in->line_buf; 0 at end of file.
static int read_line(InputSet *in) {
    in->line_len = 0;
    for (;;) {
        if (in->chunk_pos == in->chunk_len && !refill(in)) {
            if (in->line_len) { in->line++; return 1; }
            return 0;
        }
        const char *p = in->chunk + in->chunk_pos;
        size_t avail = in->chunk_len - in->chunk_pos;
        const char *nl = memchr(p, '\n', avail);
        size_t take = nl ? (size_t)(nl - p) + 1 : avail;
        CHECK(in->line_len + take <= in->max_doc, "%s:%llu: line longer than --max-doc-mb (%zu MiB)",
              in->paths[in->cur], (unsigned long long)in->line + 1, in->max_doc >> 20);
        append(&in->line_buf, &in->line_len, &in->line_cap, p, take);
        in->chunk_pos += take;
        if (nl) { in->line++; return 1; }
    }
}

static int is_blank(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n') return 0;
    return 1;
}

static void take_doc(InputSet *in, InputDoc *doc, char *text, size_t len, uint64_t line) {
    *doc = (InputDoc){.text = text, .len = len, .path = in->paths[in->cur], .line = line, .format = in->format};
    in->docs_in_file++;
}

// Text, one document per file: the whole file, read in chunks.
static int next_whole_file(InputSet *in, InputDoc *doc) {
    if (in->eof) return 0;
    char *text = NULL;
    size_t len = 0, cap = 0;
    while (refill(in)) {
        CHECK(len + in->chunk_len <= in->max_doc, "%s: document larger than --max-doc-mb (%zu MiB)",
              in->paths[in->cur], in->max_doc >> 20);
        append(&text, &len, &cap, in->chunk, in->chunk_len);
    }
    if (is_blank(text, len)) { free(text); if (len) in->empty_docs++; return 0; }
    take_doc(in, doc, text, len, 1);
    return 1;
}

// Text with --blank-lines K: documents are separated by runs of >= K blank lines. Blank lines at the start or end
// of a file belong to no document; shorter runs inside a document are kept.
static int next_paragraph_doc(InputSet *in, InputDoc *doc) {
    char *text = NULL, *pending = NULL;
    size_t len = 0, cap = 0, plen = 0, pcap = 0;
    uint64_t start = 0, n_blank = 0;
    for (;;) {
        if (!in->carry && !read_line(in)) break;
        in->carry = 0;
        if (is_blank(in->line_buf, in->line_len)) {
            if (len) append(&pending, &plen, &pcap, in->line_buf, in->line_len);
            n_blank++;
            continue;
        }
        if (len && n_blank >= (uint64_t)in->blank_lines) { in->carry = 1; break; }   // this line starts the next one
        if (!len) start = in->line;
        append(&text, &len, &cap, pending ? pending : "", plen);
        append(&text, &len, &cap, in->line_buf, in->line_len);
        CHECK(len <= in->max_doc, "%s:%llu: document larger than --max-doc-mb (%zu MiB)", in->paths[in->cur],
              (unsigned long long)start, in->max_doc >> 20);
        plen = 0;
        n_blank = 0;
    }
    free(pending);
    if (!len) return 0;
    take_doc(in, doc, text, len, start);
    return 1;
}

static int next_jsonl_doc(InputSet *in, InputDoc *doc) {
    while (read_line(in)) {
        const char *path = in->paths[in->cur];
        char *s = in->line_buf;
        size_t n = in->line_len;
        if (in->line == 1 && n >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0) { s += 3; n -= 3; }   // UTF-8 BOM
        while (n && (s[n - 1] == '\n' || s[n - 1] == '\r')) n--;   // so errors at the end of a record say line 1
        if (is_blank(s, n)) continue;
        char err[300];
        Json *j = json_parse(s, n, err, sizeof err);
        // The parser counts lines within the string; a JSONL record is one line, so drop its "line 1, ".
        CHECK(j, "%s:%llu: invalid JSON: %s", path, (unsigned long long)in->line,
              strncmp(err, "line 1, ", 8) == 0 ? err + 8 : err);
        const JsonValue *root = json_root(j);
        CHECK(root->type == JSON_OBJECT, "%s:%llu: expected a JSON object with a \"text\" field, found %s", path,
              (unsigned long long)in->line, json_type_name(root->type));
        const JsonValue *t = json_get(root, "text");
        CHECK(t, "%s:%llu: the object has no \"text\" field", path, (unsigned long long)in->line);
        CHECK(t->type == JSON_STRING, "%s:%llu: \"text\" is %s, expected a string", path,
              (unsigned long long)in->line, json_type_name(t->type));
        if (t->n == 0) { in->empty_docs++; json_free(j); continue; }
        char *text = xmalloc(t->n + 1);
        memcpy(text, t->str, t->n + 1);
        take_doc(in, doc, text, t->n, in->line);
        json_free(j);
        return 1;
    }
    return 0;
}

int input_next(InputSet *in, InputDoc *doc) {
    for (;;) {
        if (in->f) {
            int got = in->format == INPUT_JSONL ? next_jsonl_doc(in, doc)
                      : in->blank_lines > 0     ? next_paragraph_doc(in, doc)
                                                : next_whole_file(in, doc);
            if (got) return 1;
        }
        if (!next_file(in)) return 0;
    }
}
