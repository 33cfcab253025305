// Streaming document reader of build/tokenize: text files (one document per file, or documents separated by runs
// of blank lines) and JSONL (the "text" string of one JSON object per line). Files are read in 1 MiB chunks; only
// the current document (and the line being read) is held in memory.
#ifndef TOKENIZE_INPUT_H
#define TOKENIZE_INPUT_H

#include <stdint.h>
#include <stdio.h>

enum { INPUT_TEXT, INPUT_JSONL };

typedef struct {
    char *text;          // malloc'd, owned by the caller; len bytes (may contain NUL in JSONL)
    size_t len;
    const char *path;
    uint64_t line;       // 1-based line where the document starts
    int format;
} InputDoc;

typedef struct {
    const char **paths;
    int n_paths, cur, format_override, blank_lines;
    size_t max_doc;
    FILE *f;
    int format;          // of the current file
    char *chunk;         // [1 MiB] read buffer
    size_t chunk_len, chunk_pos;
    int eof;
    uint64_t line;       // number of the last line read from the current file
    char *line_buf;      // the current line (with its '\n', if any)
    size_t line_len, line_cap;
    int carry;           // text mode: line_buf holds the first line of the next document
    uint64_t docs_in_file;
    uint64_t bytes_read, empty_docs;
} InputSet;

// Dies naming the file when it cannot be opened for reading or is not a regular file.
void input_check_readable(const char *path);
// format: INPUT_TEXT, INPUT_JSONL, or -1 to choose per file (".jsonl" suffix -> JSONL). blank_lines: see --blank-lines.
void input_open(InputSet *in, const char **paths, int n_paths, int format, int blank_lines, size_t max_doc);
// Next non-empty document in input order; 0 when every input is exhausted. Dies with FILE:LINE on bad input
// (invalid JSON, no "text" string, an input file without any document, a document over max_doc bytes).
int input_next(InputSet *in, InputDoc *doc);
void input_close(InputSet *in);

#endif
