// Token shards: one HDF5 file per shard (format documented in data/FORMAT.md).
//   /tokens       uint32 [n_tokens], chunked; documents back to back, WITHOUT separators (the loader inserts EOS)
//   /doc_offsets  uint64 [n_docs + 1]; document d is tokens[doc_offsets[d] : doc_offsets[d+1]]
//   attributes on the root group: format_version (int), tokenizer (string), vocab_size (uint32), eos_id (uint32)
#ifndef SHARD_H
#define SHARD_H

#include <stddef.h>
#include <stdint.h>

#define SHARD_FORMAT_VERSION 1

// Writing: streams documents into <path>.tmp, and on close fsyncs and renames it to <path>, so that a shard that
// exists under its final name is always complete.
typedef struct ShardWriter ShardWriter;
ShardWriter *shard_writer_open(const char *path, const char *tokenizer, uint32_t vocab_size, uint32_t eos_id);
void shard_writer_add_doc(ShardWriter *w, const uint32_t *tokens, size_t n);
uint64_t shard_writer_tokens(const ShardWriter *w);   // tokens written so far
void shard_writer_close(ShardWriter *w);

// Reading. shard_open validates everything (file readable, datasets and attributes present, format version,
// doc_offsets monotone and ending at n_tokens, at least one document) and dies naming the file otherwise.
// Token values are checked against vocab_size as they are read (shard_read_tokens dies naming file and offset).
typedef struct {
    char path[1024];
    int64_t file, tokens;          // hid_t of the file and of the tokens dataset
    uint64_t n_tokens, n_docs;
    uint64_t *doc_offsets;         // [n_docs + 1], in memory (8 bytes per document)
    uint32_t vocab_size, eos_id;
    char tokenizer[256];
    int format_version;
} Shard;
void shard_open(Shard *s, const char *path);
void shard_read_tokens(Shard *s, uint64_t start, uint64_t count, uint32_t *out);
// Closes the HDF5 handles but keeps the metadata (doc_offsets, attributes); the next shard_read_tokens reopens the
// file (checking it still holds n_tokens tokens). Lets the loader index thousands of shards with few files open.
void shard_release_file(Shard *s);
void shard_close(Shard *s);

#endif
