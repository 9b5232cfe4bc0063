/* One handle, many threads: writers fill interleaved stripes that share
 * clusters (so their copy-on-writes race), readers check that every byte
 * they see is either the old or the new contents, then every byte of the
 * image is checked, before and after a reopen. */
#include "util.h"

#include <pthread.h>
#include <stdatomic.h>

#define SIZE (8u << 20)
#define STRIPE 1536u /* not a divisor of the 4 KiB cluster: stripes share clusters */
#define WRITERS 6
#define READERS 2
#define GROUPS (WRITERS + 1) /* stripes of the last group stay untouched */

static cowblk_image *img;
static atomic_int writers_left = WRITERS;

static unsigned owner(uint64_t off)
{
    return (unsigned)((off / STRIPE) % GROUPS);
}

/* What byte `off` holds once every writer is done. */
static uint8_t final_byte(uint64_t off)
{
    unsigned g = owner(off);
    return g == WRITERS ? pat(1, off) : pat(2 + g, off);
}

static void *writer(void *arg)
{
    unsigned t = (unsigned)(uintptr_t)arg;
    uint8_t buf[STRIPE];
    /* Every other pass runs backwards so threads meet in both orders. */
    uint64_t n = (SIZE + STRIPE - 1) / STRIPE;
    for (uint64_t k = 0; k < n; k++) {
        uint64_t s = (t % 2) ? n - 1 - k : k;
        if (s % GROUPS != t)
            continue;
        uint64_t off = s * STRIPE;
        size_t len = off + STRIPE <= SIZE ? STRIPE : SIZE - off;
        fill(buf, len, 2 + t, off);
        /* Three segments, one of them empty. */
        size_t a = len < 500 ? len : 500;
        struct iovec v[3] = {{buf, a}, {buf + a, 0}, {buf + a, len - a}};
        OK(cowblk_pwritev(img, off, v, 3));
    }
    atomic_fetch_sub(&writers_left, 1);
    return NULL;
}

static void *reader(void *arg)
{
    unsigned seed = (unsigned)(uintptr_t)arg * 7919u + 1;
    uint8_t *buf = malloc(3 * 65536);
    CHECK(buf != NULL);
    long rounds = 0;
    while (atomic_load(&writers_left) > 0 || rounds < 20) {
        seed = seed * 1103515245u + 12345u;
        uint64_t off = (seed >> 4) % (SIZE - 3 * 65536);
        size_t len = 1 + (seed >> 8) % (3 * 65536 - 1);
        size_t a = len / 3;
        struct iovec v[2] = {{buf, a}, {buf + a, len - a}};
        OK(cowblk_preadv(img, off, v, 2));
        for (size_t i = 0; i < len; i++) {
            uint64_t o = off + i;
            if (buf[i] != pat(1, o) && buf[i] != final_byte(o)) {
                fprintf(stderr, "reader saw a torn byte at %llu\n",
                        (unsigned long long)o);
                exit(1);
            }
        }
        uint64_t pnum;
        OK(cowblk_is_allocated(img, off, len, &pnum));
        CHECK(pnum > 0 && pnum <= len);
        rounds++;
    }
    free(buf);
    return NULL;
}

static void verify_all(const char *when)
{
    uint8_t *buf = malloc(SIZE);
    CHECK(buf != NULL);
    OK(img_read(img, 0, buf, SIZE));
    for (uint64_t i = 0; i < SIZE; i++) {
        if (buf[i] != final_byte(i)) {
            fprintf(stderr, "%s: byte %llu is %u, expected %u (stripe owner %u)\n",
                    when, (unsigned long long)i, buf[i], final_byte(i),
                    owner(i));
            exit(1);
        }
    }
    free(buf);
}

int main(void)
{
    char dir[4096], ov[4096];
    make_tmpdir(dir, sizeof dir, "threads");
    make_overlay(dir, SIZE, 4096, ov, sizeof ov);
    OK(cowblk_open(ov, NULL, 0, 0, &img));

    pthread_t w[WRITERS], r[READERS];
    for (unsigned i = 0; i < READERS; i++)
        CHECK(pthread_create(&r[i], NULL, reader, (void *)(uintptr_t)i) == 0);
    for (unsigned i = 0; i < WRITERS; i++)
        CHECK(pthread_create(&w[i], NULL, writer, (void *)(uintptr_t)i) == 0);
    for (unsigned i = 0; i < WRITERS; i++)
        CHECK(pthread_join(w[i], NULL) == 0);
    for (unsigned i = 0; i < READERS; i++)
        CHECK(pthread_join(r[i], NULL) == 0);

    verify_all("after the threads");
    OK(cowblk_close(&img));
    OK(cowblk_open(ov, NULL, COWBLK_OPEN_RDONLY, 0, &img));
    verify_all("after reopening");
    OK(cowblk_close(&img));
    rm_tree(dir);
    printf("%d writers and %d readers on one handle: all %u bytes correct\n",
           WRITERS, READERS, SIZE);
    return 0;
}
