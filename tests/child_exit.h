// Runs a piece of code that is expected to die() in a forked child, capturing its stderr, so that a test can check
// the exit status and the message (bad-input tests). Header-only so that any tests/*.c can include it.
#ifndef CHILD_EXIT_H
#define CHILD_EXIT_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

// Calls fn(arg) in a child process with stderr (and stdout) going to a pipe; returns the child's exit status
// (0 if fn returned, 128 + signal if it was killed). The captured output (NUL-terminated, truncated to cap - 1
// bytes) goes to msg.
static inline int child_exit_status(void (*fn)(void *), void *arg, char *msg, size_t cap) {
    int fds[2];
    if (pipe(fds) != 0) { perror("pipe"); exit(2); }
    fflush(stdout); fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) { perror("fork"); exit(2); }
    if (pid == 0) {
        close(fds[0]);
        dup2(fds[1], 2);
        dup2(fds[1], 1);
        fn(arg);
        fflush(stdout); fflush(stderr);
        _exit(0);
    }
    close(fds[1]);
    size_t len = 0;
    ssize_t n;
    char sink[4096];
    while ((n = read(fds[0], len + 1 < cap ? msg + len : sink, len + 1 < cap ? cap - 1 - len : sizeof sink)) > 0)
        if (len + 1 < cap) len += (size_t)n;
    msg[len] = 0;
    close(fds[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    if (WIFEXITED(st)) return WEXITSTATUS(st);
    if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
    return -1;
}

#endif
