#include "check.h"
#include <string.h>

static int g_rank = 0;

void check_set_rank(int rank) { g_rank = rank; }
int check_rank(void) { return g_rank; }

static void vreport(const char *kind, const char *file, int line, const char *fmt, va_list ap) {
    char msg[4096];
    vsnprintf(msg, sizeof msg, fmt, ap);
    if (file) fprintf(stderr, "[rank %d] %s: %s:%d: %s\n", g_rank, kind, file, line, msg);
    else fprintf(stderr, "[rank %d] %s: %s\n", g_rank, kind, msg);
    fflush(stderr);
}

void die(const char *fmt, ...) {
    va_list ap; va_start(ap, fmt); vreport("error", NULL, 0, fmt, ap); va_end(ap);
    exit(1);
}

void die_at(const char *file, int line, const char *fmt, ...) {
    va_list ap; va_start(ap, fmt); vreport("error", file, line, fmt, ap); va_end(ap);
    exit(1);
}

void log_info(const char *fmt, ...) {
    if (g_rank != 0) return;
    va_list ap; va_start(ap, fmt); vfprintf(stderr, fmt, ap); va_end(ap);
    fputc('\n', stderr);
}

void log_warn(const char *fmt, ...) {
    va_list ap; va_start(ap, fmt); vreport("warning", NULL, 0, fmt, ap); va_end(ap);
}

void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) die("out of host memory allocating %zu bytes", n);
    return p;
}
void *xcalloc(size_t count, size_t size) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) die("out of host memory allocating %zu x %zu bytes", count, size);
    return p;
}
void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) die("out of host memory reallocating %zu bytes", n);
    return q;
}
char *xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = xmalloc(n);
    memcpy(p, s, n);
    return p;
}
