// cpu backend memory: "device" memory is host memory, so transfers are memcpy and synchronize has nothing to wait for.
#include "kernels/cpu/cpu_ops.h"
#include "train/check.h"

#include <string.h>

// 64-byte aligned so that rows start on cache lines and vector loads do not split; zero-filled as the interface
// promises (parameter gradients and accumulators rely on it).
void *cpu_alloc(size_t bytes) {
    size_t n = (bytes + 63) / 64 * 64;
    if (n == 0) n = 64;
    void *p = aligned_alloc(64, n);
    if (!p) die("cpu backend: out of host memory allocating %zu bytes", bytes);
    memset(p, 0, n);
    return p;
}

void cpu_free(void *p) { free(p); }

void cpu_upload(void *dst, const void *src_host, size_t bytes) {
    if (bytes) memcpy(dst, src_host, bytes);
}

void cpu_download(void *dst_host, const void *src, size_t bytes) {
    if (bytes) memcpy(dst_host, src, bytes);
}

// memmove: a caller copying between overlapping views (a shift within one buffer) gets the right answer.
void cpu_copy(void *dst, const void *src, size_t bytes) {
    if (bytes) memmove(dst, src, bytes);
}

void cpu_zero(void *p, size_t bytes) {
    if (bytes) memset(p, 0, bytes);
}

void cpu_synchronize(void) {}

void cpu_memory_in_use(size_t *used, size_t *total) { *used = *total = 0; }
