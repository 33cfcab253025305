// Error checking and logging shared by every subsystem.
//
// Every library call (MPI, HDF5, libyaml, PCRE2, CUDA, cuBLASLt, NCCL) goes through a macro that, on failure,
// prints the call text, file:line and the process rank, then exits non-zero. The rank is a process-wide value
// set once by the launcher (check_set_rank) so that messages from 2048 processes can be told apart.
#ifndef CHECK_H
#define CHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <stdarg.h>

#ifdef __cplusplus
extern "C" {
#endif

void check_set_rank(int rank);
int check_rank(void);

// Prints "[rank R] error: <formatted message>" and exits with status 1. Never returns.
__attribute__((noreturn, format(printf, 1, 2))) void die(const char *fmt, ...);
// die() with the call site prefixed: "file:line: ..."
__attribute__((noreturn, format(printf, 3, 4))) void die_at(const char *file, int line, const char *fmt, ...);
// Rank-0-only informational line on stderr (progress, notices). Rank-tagged when the world has more than one rank.
__attribute__((format(printf, 1, 2))) void log_info(const char *fmt, ...);
__attribute__((format(printf, 1, 2))) void log_warn(const char *fmt, ...);

// Generic check: a condition that must hold, with a message for the user.
#define CHECK(cond, ...) do { if (!(cond)) die_at(__FILE__, __LINE__, __VA_ARGS__); } while (0)

// malloc/calloc that never return NULL.
void *xmalloc(size_t n);
void *xcalloc(size_t count, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);

#ifdef __cplusplus
}
#endif

// Library-specific checks. Each names the call text, file:line and rank (via die_at).
#define MPI_CHECK(call) do { int rc_ = (call); if (rc_ != 0 /* MPI_SUCCESS */) { \
    die_at(__FILE__, __LINE__, "%s failed with MPI error %d", #call, rc_); } } while (0)
// HDF5 calls return negative on failure (hid_t or herr_t).
#define H5_CHECK(call) ({ __typeof__(call) rc_ = (call); if (rc_ < 0) { \
    die_at(__FILE__, __LINE__, "%s failed (HDF5)", #call); } rc_; })

#endif
