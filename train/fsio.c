// Crash-safe file helpers and XXH64: see fsio.h.
#include "train/fsio.h"
#include "train/check.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <libgen.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void fsio_fsync_path(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) die("cannot open %s to fsync it: %s", path, strerror(errno));
    // EINVAL: the file system does not support fsync on this kind of file (some do not for directories); the data
    // is then as durable as that file system makes it, and there is nothing more we can do.
    if (fsync(fd) != 0 && errno != EINVAL) die("fsync of %s failed: %s", path, strerror(errno));
    if (close(fd) != 0) die("close of %s failed: %s", path, strerror(errno));
}

void fsio_fsync_parent(const char *path) {
    char *copy = xstrdup(path);
    fsio_fsync_path(dirname(copy));
    free(copy);
}

void fsio_write_file(const char *path, const void *data, size_t n, int durable) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) die("cannot create %s: %s", path, strerror(errno));
    const char *p = data;
    size_t left = n;
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) die("write to %s failed: %s", path, strerror(errno));
        p += w;
        left -= (size_t)w;
    }
    if (durable && fsync(fd) != 0) die("fsync of %s failed: %s", path, strerror(errno));
    if (close(fd) != 0) die("close of %s failed: %s", path, strerror(errno));
}

void fsio_write_atomic(const char *path, const void *data, size_t n) {
    size_t len = strlen(path) + 8;
    char *tmp = xmalloc(len);
    snprintf(tmp, len, "%s.tmp", path);
    fsio_write_file(tmp, data, n, 1);
    fsio_rename(tmp, path);
    free(tmp);
}

void fsio_rename(const char *from, const char *to) {
    if (rename(from, to) != 0) die("cannot rename %s to %s: %s", from, to, strerror(errno));
    fsio_fsync_parent(to);
}

void fsio_mkdir(const char *path) {
    if (mkdir(path, 0755) != 0) {
        if (errno == EEXIST && fsio_is_dir(path)) return;
        die("cannot create directory %s: %s", path, strerror(errno));
    }
}

void fsio_mkdirs(const char *path) {
    char *buf = xstrdup(path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        fsio_mkdir(buf);
        *p = '/';
    }
    fsio_mkdir(buf);
    free(buf);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st; (void)ftw;
    int rc = flag == FTW_DP ? rmdir(path) : unlink(path);
    if (rc != 0 && errno != ENOENT) die("cannot remove %s: %s", path, strerror(errno));
    return 0;
}

void fsio_rmtree(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0) {
        if (errno == ENOENT) return;
        die("cannot stat %s: %s", path, strerror(errno));
    }
    if (!S_ISDIR(st.st_mode)) {
        if (unlink(path) != 0 && errno != ENOENT) die("cannot remove %s: %s", path, strerror(errno));
        return;
    }
    if (nftw(path, rm_entry, 32, FTW_DEPTH | FTW_PHYS) != 0) die("cannot remove %s: %s", path, strerror(errno));
}

int fsio_exists(const char *path) {
    struct stat st;
    return lstat(path, &st) == 0;
}

int fsio_is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

char *fsio_read_small(const char *path, size_t *len) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return NULL;
    struct stat st;
    if (fstat(fd, &st) != 0) { int e = errno; close(fd); errno = e; return NULL; }
    size_t n = (size_t)st.st_size, got = 0;
    char *buf = xmalloc(n + 1);
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) { int e = r < 0 ? errno : EIO; free(buf); close(fd); errno = e; return NULL; }
        got += (size_t)r;
    }
    close(fd);
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}

// ---- XXH64 ----

#define P1 0x9E3779B185EBCA87ULL
#define P2 0xC2B2AE3D27D4EB4FULL
#define P3 0x165667B19E3779F9ULL
#define P4 0x85EBCA77C2B2AE63ULL
#define P5 0x27D4EB2F165667C5ULL

static inline uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
// Little-endian loads (the format is defined on little-endian values; memcpy is fine on x86 and ARM hosts).
static inline uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t xround(uint64_t acc, uint64_t in) { return rotl64(acc + in * P2, 31) * P1; }
static inline uint64_t xmerge(uint64_t acc, uint64_t v) { return (acc ^ xround(0, v)) * P1 + P4; }

void xxh64_init(Xxh64 *s, uint64_t seed) {
    memset(s, 0, sizeof *s);
    s->seed = seed;
    s->v[0] = seed + P1 + P2;
    s->v[1] = seed + P2;
    s->v[2] = seed;
    s->v[3] = seed - P1;
}

void xxh64_update(Xxh64 *s, const void *data, size_t len) {
    const uint8_t *p = data, *end = p + len;
    s->total_len += len;
    if (s->memsize + len < 32) {
        memcpy(s->mem + s->memsize, p, len);
        s->memsize += (uint32_t)len;
        return;
    }
    if (s->memsize) {
        size_t fill = 32 - s->memsize;
        memcpy(s->mem + s->memsize, p, fill);
        for (int i = 0; i < 4; i++) s->v[i] = xround(s->v[i], rd64(s->mem + 8 * i));
        p += fill;
        s->memsize = 0;
    }
    uint64_t v0 = s->v[0], v1 = s->v[1], v2 = s->v[2], v3 = s->v[3];
    while (p + 32 <= end) {
        v0 = xround(v0, rd64(p));
        v1 = xround(v1, rd64(p + 8));
        v2 = xround(v2, rd64(p + 16));
        v3 = xround(v3, rd64(p + 24));
        p += 32;
    }
    s->v[0] = v0; s->v[1] = v1; s->v[2] = v2; s->v[3] = v3;
    if (p < end) {
        memcpy(s->mem, p, (size_t)(end - p));
        s->memsize = (uint32_t)(end - p);
    }
}

uint64_t xxh64_digest(const Xxh64 *s) {
    uint64_t h;
    if (s->total_len >= 32) {
        h = rotl64(s->v[0], 1) + rotl64(s->v[1], 7) + rotl64(s->v[2], 12) + rotl64(s->v[3], 18);
        for (int i = 0; i < 4; i++) h = xmerge(h, s->v[i]);
    } else {
        h = s->seed + P5;
    }
    h += s->total_len;
    const uint8_t *p = s->mem, *end = p + s->memsize;
    while (p + 8 <= end) {
        h ^= xround(0, rd64(p));
        h = rotl64(h, 27) * P1 + P4;
        p += 8;
    }
    if (p + 4 <= end) {
        h ^= (uint64_t)rd32(p) * P1;
        h = rotl64(h, 23) * P2 + P3;
        p += 4;
    }
    while (p < end) {
        h ^= (*p++) * P5;
        h = rotl64(h, 11) * P1;
    }
    h ^= h >> 33;
    h *= P2;
    h ^= h >> 29;
    h *= P3;
    h ^= h >> 32;
    return h;
}

uint64_t xxh64(const void *data, size_t len, uint64_t seed) {
    Xxh64 s;
    xxh64_init(&s, seed);
    xxh64_update(&s, data, len);
    return xxh64_digest(&s);
}

int xxh64_file(const char *path, uint64_t *hash, int64_t *size) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    enum { CHUNK = 8 << 20 };
    uint8_t *buf = xmalloc(CHUNK);
    Xxh64 s;
    xxh64_init(&s, 0);
    int64_t total = 0;
    while (1) {
        ssize_t r = read(fd, buf, CHUNK);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) { int e = errno; free(buf); close(fd); errno = e; return -1; }
        if (r == 0) break;
        xxh64_update(&s, buf, (size_t)r);
        total += r;
    }
    free(buf);
    close(fd);
    *hash = xxh64_digest(&s);
    *size = total;
    return 0;
}
