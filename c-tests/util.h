/* Shared helpers for the C tests: checks that print what failed, a scratch
 * directory, patterns, and file snapshots for "nothing was written" checks.
 * Exit codes: 0 pass, 1 fail, 77 skipped. */
#ifndef COWBLK_TEST_UTIL_H
#define COWBLK_TEST_UTIL_H

#include "cowblk.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SKIP 77

/* The dlopen test resolves cowblk_last_error at run time. */
#ifndef UTIL_LAST_ERROR
#define UTIL_LAST_ERROR cowblk_last_error
#endif

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__,  \
                    #cond);                                                    \
            exit(1);                                                           \
        }                                                                      \
    } while (0)

/* The call must succeed (return >= 0); evaluates to its result. */
#define OK(call) ok_((call), #call, __FILE__, __LINE__)

/* The call must fail with -want (any negative errno if want is 0) and leave
 * a message; the message is printed so the test log shows it. */
#define ERR(call, want) err_((call), (want), #call, __FILE__, __LINE__)

static inline int ok_(int r, const char *what, const char *file, int line)
{
    if (r < 0) {
        fprintf(stderr, "%s:%d: %s failed: %d (%s): %s\n", file, line, what,
                r, strerror(-r), UTIL_LAST_ERROR());
        exit(1);
    }
    return r;
}

static inline void err_(int r, int want, const char *what, const char *file,
                        int line)
{
    const char *msg = UTIL_LAST_ERROR();
    if (r >= 0 || (want != 0 && r != -want)) {
        fprintf(stderr, "%s:%d: %s returned %d, expected %s%d (%s)\n", file,
                line, what, r, want ? "-" : "a negative errno, e.g. -",
                want ? want : EINVAL, want ? strerror(want) : "any");
        fprintf(stderr, "  message: %s\n", msg ? msg : "(null)");
        exit(1);
    }
    if (msg == NULL || msg[0] == '\0') {
        fprintf(stderr, "%s:%d: %s failed (%d) without a message\n", file,
                line, what, r);
        exit(1);
    }
    printf("  expected error %d (%s): %s\n", r, strerror(-r), msg);
}

/* A fresh directory under $TMPDIR (or /tmp), removed by rm_tree. */
static inline void make_tmpdir(char *out, size_t len, const char *name)
{
    const char *t = getenv("TMPDIR");
    snprintf(out, len, "%s/cowblk-%s-XXXXXX", t && *t ? t : "/tmp", name);
    CHECK(mkdtemp(out) != NULL);
}

static inline void join(char *out, size_t len, const char *dir,
                        const char *name)
{
    CHECK((size_t)snprintf(out, len, "%s/%s", dir, name) < len);
}

static inline int rm_one(const char *p, const struct stat *st, int flag,
                         struct FTW *f)
{
    (void)st;
    (void)flag;
    (void)f;
    return remove(p);
}

static inline void rm_tree(const char *dir)
{
    nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* The byte at guest offset `off` of pattern `seed` (seed 0 is not used). */
static inline uint8_t pat(unsigned seed, uint64_t off)
{
    uint64_t x = (off + 1) * 0x9E3779B97F4A7C15ull ^ (uint64_t)seed * 0xD6E8FEB86659FD93ull;
    return (uint8_t)(x >> 56 ^ x >> 29);
}

static inline void fill(uint8_t *buf, size_t len, unsigned seed, uint64_t off)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = pat(seed, off + i);
}

/* Index of the first byte of buf that is not pattern `seed`, or -1. */
static inline long mismatch(const uint8_t *buf, size_t len, unsigned seed,
                            uint64_t off)
{
    for (size_t i = 0; i < len; i++)
        if (buf[i] != pat(seed, off + i))
            return (long)i;
    return -1;
}

static inline uint8_t *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    uint8_t *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n == cap) {
            cap = cap ? cap * 2 : 65536;
            buf = realloc(buf, cap);
            CHECK(buf != NULL);
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0)
            break;
    }
    fclose(f);
    *len = n;
    return buf;
}

static inline void write_file(const char *path, const void *buf, size_t len)
{
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    CHECK(fwrite(buf, 1, len, f) == len);
    CHECK(fclose(f) == 0);
}

/* Every regular file of a directory with its contents, to prove that a
 * failed call wrote nothing. */
#define SNAP_MAX 32
struct snapshot {
    int n;
    char name[SNAP_MAX][256];
    uint8_t *data[SNAP_MAX];
    size_t len[SNAP_MAX];
};

static inline void snapshot_take(struct snapshot *s, const char *dir)
{
    DIR *d = opendir(dir);
    CHECK(d != NULL);
    s->n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        CHECK(s->n < SNAP_MAX);
        char p[4096];
        join(p, sizeof p, dir, e->d_name);
        snprintf(s->name[s->n], sizeof s->name[0], "%s", e->d_name);
        s->data[s->n] = read_file(p, &s->len[s->n]);
        CHECK(s->data[s->n] != NULL);
        s->n++;
    }
    closedir(d);
}

static inline void snapshot_free(struct snapshot *s)
{
    for (int i = 0; i < s->n; i++)
        free(s->data[i]);
    s->n = 0;
}

/* Fails the test if `dir` differs from the snapshot in any file or byte. */
static inline void snapshot_same(struct snapshot *before, const char *dir)
{
    struct snapshot now;
    snapshot_take(&now, dir);
    if (now.n != before->n) {
        fprintf(stderr, "directory %s had %d files, now %d\n", dir, before->n,
                now.n);
        exit(1);
    }
    for (int i = 0; i < before->n; i++) {
        int j = 0;
        while (j < now.n && strcmp(now.name[j], before->name[i]) != 0)
            j++;
        if (j == now.n) {
            fprintf(stderr, "%s/%s disappeared\n", dir, before->name[i]);
            exit(1);
        }
        if (now.len[j] != before->len[i] ||
            memcmp(now.data[j], before->data[i], now.len[j]) != 0) {
            fprintf(stderr, "%s/%s changed\n", dir, before->name[i]);
            exit(1);
        }
    }
    snapshot_free(&now);
}

static inline void pwrite_all(const char *path, const void *buf, size_t len,
                              off_t off)
{
    int fd = open(path, O_WRONLY);
    CHECK(fd >= 0);
    CHECK(pwrite(fd, buf, len, off) == (ssize_t)len);
    CHECK(close(fd) == 0);
}

/* One-buffer wrappers over the vectored calls. */
static inline int img_read(cowblk_image *img, uint64_t off, void *buf,
                           size_t len)
{
    struct iovec v = {buf, len};
    return cowblk_preadv(img, off, &v, 1);
}

static inline int img_write(cowblk_image *img, uint64_t off, const void *buf,
                            size_t len)
{
    struct iovec v = {(void *)buf, len};
    return cowblk_pwritev(img, off, &v, 1);
}

/* dir/base.raw holding pattern 1 over `size` bytes, and dir/ov.add-cow over
 * it (image file ov.img, the given cluster size); the overlay's path goes
 * to `ov`. */
static inline void make_overlay(const char *dir, uint64_t size,
                                unsigned cluster, char *ov, size_t ovlen)
{
    char base[4096], opts[256];
    join(base, sizeof base, dir, "base.raw");
    snprintf(opts, sizeof opts, "size=%llu", (unsigned long long)size);
    OK(cowblk_create("raw", base, opts));
    cowblk_image *b = NULL;
    OK(cowblk_open(base, "raw", 0, 0, &b));
    uint8_t *buf = malloc(size);
    CHECK(buf != NULL);
    fill(buf, size, 1, 0);
    OK(img_write(b, 0, buf, size));
    free(buf);
    OK(cowblk_close(&b));
    join(ov, ovlen, dir, "ov.add-cow");
    snprintf(opts, sizeof opts,
             "backing_file=base.raw,backing_fmt=raw,image_file=ov.img,"
             "cluster_size=%u",
             cluster);
    OK(cowblk_create("add-cow", ov, opts));
}

#endif
