// Test runner: see test.h. Usage: build/tests [substring...]
#include "test.h"

#include <stdarg.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct { const char *name, *file; TestFn fn; } TestCase;
static TestCase *g_tests;
static int g_n_tests, g_cap_tests;
static char g_tmpdir[4200];
static char g_root[4096];

void test_register(const char *name, const char *file, TestFn fn) {
    if (g_n_tests == g_cap_tests) {
        g_cap_tests = g_cap_tests ? 2 * g_cap_tests : 64;
        g_tests = realloc(g_tests, (size_t)g_cap_tests * sizeof *g_tests);
        if (!g_tests) { perror("realloc"); exit(2); }
    }
    g_tests[g_n_tests++] = (TestCase){name, file, fn};
}

void test_fail(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "    %s:%d: ", file, line);
    va_start(ap, fmt); vfprintf(stderr, fmt, ap); va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
    _exit(1);
}

int test_run(const char *cmd, char **output) {
    char *full;
    if (asprintf(&full, "( %s ) 2>&1", cmd) < 0) return -1;
    FILE *p = popen(full, "r");
    free(full);
    if (!p) return -1;
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    size_t n;
    while ((n = fread(buf + len, 1, cap - len - 1, p)) > 0) {
        len += n;
        if (cap - len < 2) { cap *= 2; buf = realloc(buf, cap); }
    }
    buf[len] = 0;
    int st = pclose(p);
    if (output) *output = buf; else free(buf);
    if (WIFEXITED(st)) return WEXITSTATUS(st);
    if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
    return -1;
}

const char *test_tmpdir(void) { return g_tmpdir; }

const char *test_path(const char *rel) {
    static char buf[8][8192];
    static int slot;
    char *b = buf[slot++ % 8];
    snprintf(b, 8192, "%s/%s", g_root, rel);
    return b;
}

const char *test_bin(const char *name) {
    static char buf[4][8192];
    static int slot;
    char *b = buf[slot++ % 4];
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) { perror("readlink /proc/self/exe"); exit(2); }
    exe[n] = 0;
    char *slash = strrchr(exe, '/');
    if (slash) *slash = 0;
    snprintf(b, 8192, "%s/%s", exe, name);
    return b;
}

static double now_s(void) { struct timeval tv; gettimeofday(&tv, NULL); return tv.tv_sec + tv.tv_usec * 1e-6; }

int main(int argc, char **argv) {
    if (!getcwd(g_root, sizeof g_root)) { perror("getcwd"); return 2; }
    const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    int passed = 0, failed = 0;
    char failed_names[8192] = "";
    for (int i = 0; i < g_n_tests; i++) {
        const TestCase *t = &g_tests[i];
        int selected = argc < 2;
        for (int a = 1; a < argc; a++) if (strstr(t->name, argv[a]) || strstr(t->file, argv[a])) selected = 1;
        if (!selected) continue;
        snprintf(g_tmpdir, sizeof g_tmpdir, "%s/dsv3-test-XXXXXX", tmp);
        if (!mkdtemp(g_tmpdir)) { perror("mkdtemp"); return 2; }
        double t0 = now_s();
        fflush(stdout); fflush(stderr);
        pid_t pid = fork();
        if (pid == 0) { t->fn(); fflush(stdout); fflush(stderr); _exit(0); }
        int st = 0;
        waitpid(pid, &st, 0);
        double dt = now_s() - t0;
        int ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;
        if (ok) { passed++; printf("PASS %-48s %7.2fs\n", t->name, dt); }
        else {
            failed++;
            if (WIFSIGNALED(st)) printf("FAIL %-48s (signal %d)\n", t->name, WTERMSIG(st));
            else printf("FAIL %-48s (%s)\n", t->name, t->file);
            if (strlen(failed_names) + strlen(t->name) + 2 < sizeof failed_names) {
                strcat(failed_names, " "); strcat(failed_names, t->name);
            }
        }
        fflush(stdout);
        char rm[4400];
        snprintf(rm, sizeof rm, "rm -rf '%s'", g_tmpdir);
        if (system(rm) != 0) fprintf(stderr, "warning: could not remove %s\n", g_tmpdir);
    }
    if (failed) printf("failed:%s\n", failed_names);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
