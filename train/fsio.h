// File-system helpers for writes that must survive crashes (checkpoints, Hugging Face export), and the XXH64
// checksum that checkpoint manifests record.
//
// Crash-safety rule used throughout: data reaches its final name only by rename(2) of a file (or directory) that
// was completely written and fsync'd, followed by an fsync of the parent directory so that the rename itself is
// durable. Every call here checks its syscall and dies naming the path and strerror.
#ifndef FSIO_H
#define FSIO_H

#include <stddef.h>
#include <stdint.h>

// fsync a file or a directory by path.
void fsio_fsync_path(const char *path);
// fsync the directory that contains `path`.
void fsio_fsync_parent(const char *path);
// Writes data to path (created or truncated); with durable, fsyncs it before returning.
void fsio_write_file(const char *path, const void *data, size_t n, int durable);
// Writes data to path atomically: <path>.tmp, write, fsync, rename over path, fsync the parent directory.
void fsio_write_atomic(const char *path, const void *data, size_t n);
// rename(2), then fsync of the destination's parent directory.
void fsio_rename(const char *from, const char *to);
// mkdir; an existing directory is fine. Dies on any other error.
void fsio_mkdir(const char *path);
// mkdir -p.
void fsio_mkdirs(const char *path);
// Removes a file or a directory tree (rm -rf); a missing path is fine.
void fsio_rmtree(const char *path);
// 1 if path exists (any type), 0 if not.
int fsio_exists(const char *path);
int fsio_is_dir(const char *path);
// Reads a whole (small) file into a malloc'd NUL-terminated buffer; NULL (and errno set) if it cannot be read.
char *fsio_read_small(const char *path, size_t *len);

// XXH64 (Yann Collet's xxHash, 64-bit variant), streaming. Fast (several GB/s per core), so verifying a checkpoint
// is bounded by the disk, not the hash.
typedef struct {
    uint64_t total_len;
    uint64_t v[4];
    uint8_t mem[32];
    uint32_t memsize;
    uint64_t seed;
} Xxh64;
void xxh64_init(Xxh64 *s, uint64_t seed);
void xxh64_update(Xxh64 *s, const void *data, size_t len);
uint64_t xxh64_digest(const Xxh64 *s);
uint64_t xxh64(const void *data, size_t len, uint64_t seed);
// XXH64 (seed 0) and size of a file's bytes. Returns 0, or -1 with errno set when it cannot be opened or read.
int xxh64_file(const char *path, uint64_t *hash, int64_t *size);

#endif
