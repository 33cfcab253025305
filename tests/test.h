// A small test framework: each TEST(name) registers itself at load time; tests/main.c runs them (all, or those
// whose name contains a filter given on the command line), each in a forked child so a crash or exit() in one test
// fails that test alone, and ends with the line "N passed, N failed".
//
// Assertions print file:line and the compared values, then fail the test (they exit the child with status 1).
#ifndef TEST_H
#define TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*TestFn)(void);
void test_register(const char *name, const char *file, TestFn fn);

#define TEST(name) \
    static void test_##name(void); \
    __attribute__((constructor)) static void test_register_##name(void) { test_register(#name, __FILE__, test_##name); } \
    static void test_##name(void)

__attribute__((noreturn, format(printf, 3, 4))) void test_fail(const char *file, int line, const char *fmt, ...);

#define ASSERT(cond) do { if (!(cond)) test_fail(__FILE__, __LINE__, "assertion failed: %s", #cond); } while (0)
#define ASSERT_MSG(cond, ...) do { if (!(cond)) test_fail(__FILE__, __LINE__, __VA_ARGS__); } while (0)
#define ASSERT_EQ_INT(a, b) do { long long a_ = (long long)(a), b_ = (long long)(b); \
    if (a_ != b_) test_fail(__FILE__, __LINE__, "%s == %s: %lld != %lld", #a, #b, a_, b_); } while (0)
#define ASSERT_EQ_STR(a, b) do { const char *a_ = (a), *b_ = (b); \
    if (strcmp(a_, b_) != 0) test_fail(__FILE__, __LINE__, "%s == %s: \"%s\" != \"%s\"", #a, #b, a_, b_); } while (0)
// |a - b| <= atol + rtol * |b|
#define ASSERT_NEAR(a, b, rtol, atol) do { double a_ = (double)(a), b_ = (double)(b); \
    if (!(fabs(a_ - b_) <= (atol) + (rtol) * fabs(b_))) \
        test_fail(__FILE__, __LINE__, "%s ~= %s: %.9g vs %.9g (rtol %g, atol %g)", #a, #b, a_, b_, \
                  (double)(rtol), (double)(atol)); } while (0)
#define ASSERT_CONTAINS(haystack, needle) do { const char *h_ = (haystack), *n_ = (needle); \
    if (!strstr(h_, n_)) test_fail(__FILE__, __LINE__, "expected \"%s\" in:\n%s", n_, h_); } while (0)

// Runs a shell command, captures stdout+stderr (malloc'd, NUL-terminated, into *output if non-NULL) and returns its
// exit status (or 128+signal).
int test_run(const char *cmd, char **output);
// A fresh empty directory under $TMPDIR (or /tmp) for this test; removed by the runner after the test.
const char *test_tmpdir(void);
// Path of a program built next to the test binary (build/ or build-debug/): test_bin("train").
const char *test_bin(const char *name);
// Path of the repository root (the runner's working directory), for fixtures: test_path("tests/fixtures/x").
const char *test_path(const char *rel);

#endif
