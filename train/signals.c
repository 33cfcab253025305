// SIGTERM / SIGUSR1 -> a polled flag (see signals.h).
#include "train/signals.h"
#include "train/check.h"

#include <errno.h>
#include <signal.h>
#include <string.h>

static volatile sig_atomic_t g_stop_signal;

static void on_signal(int sig) {
    // Keep the first one: it is the reason the run stops.
    if (!g_stop_signal) g_stop_signal = sig;
}

static void set_handler(int sig, void (*handler)(int)) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sa.sa_flags = SA_RESTART;
    if (sigemptyset(&sa.sa_mask) != 0) die("sigemptyset failed: %s", strerror(errno));
    if (sigaction(sig, &sa, NULL) != 0) die("sigaction(%s) failed: %s", signals_name(sig), strerror(errno));
}

void signals_install(void) {
    g_stop_signal = 0;
    set_handler(SIGTERM, on_signal);
    set_handler(SIGUSR1, on_signal);
}

void signals_uninstall(void) {
    set_handler(SIGTERM, SIG_DFL);
    set_handler(SIGUSR1, SIG_DFL);
}

int signals_stop_requested(void) { return g_stop_signal; }

void signals_clear(void) { g_stop_signal = 0; }

const char *signals_name(int sig) {
    switch (sig) {
    case SIGTERM: return "SIGTERM";
    case SIGUSR1: return "SIGUSR1";
    case 0: return "none";
    default: return "another signal";
    }
}
