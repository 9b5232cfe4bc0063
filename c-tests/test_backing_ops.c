/* cowblk_open_with_backing: the backing image is served by C callbacks (a
 * memory buffer here, shorter than the overlay so its end reads zeros).
 * Reads of unallocated ranges and copy-on-write go through the callbacks;
 * a failing callback surfaces as its errno with a message. */
#include "util.h"

#include <stdatomic.h>

#define SIZE (1u << 20)
#define CS 4096u
#define BLEN (SIZE - 10000) /* the backing image ends inside a cluster */

struct mem_backing {
    uint8_t *data;
    uint64_t len;
    atomic_int reads;
    atomic_int fail_with; /* errno to fail the next reads with, or 0 */
    int length_fails;
};

static int mem_length(void *opaque, uint64_t *len)
{
    struct mem_backing *m = opaque;
    if (m->length_fails)
        return -EIO;
    *len = m->len;
    return 0;
}

static int mem_preadv(void *opaque, uint64_t off, const struct iovec *iov,
                      int iovcnt)
{
    struct mem_backing *m = opaque;
    atomic_fetch_add(&m->reads, 1);
    int e = atomic_load(&m->fail_with);
    if (e)
        return -e;
    for (int i = 0; i < iovcnt; i++) {
        /* The library promises never to ask past the end. */
        CHECK(off + iov[i].iov_len <= m->len);
        memcpy(iov[i].iov_base, m->data + off, iov[i].iov_len);
        off += iov[i].iov_len;
    }
    return 0;
}

int main(void)
{
    char dir[4096], ov[4096];
    make_tmpdir(dir, sizeof dir, "backingops");
    make_overlay(dir, SIZE, CS, ov, sizeof ov);
    struct mem_backing m = {.len = BLEN};
    m.data = malloc(BLEN);
    CHECK(m.data != NULL);
    fill(m.data, BLEN, 4, 0);
    cowblk_backing_ops ops = {
        .struct_size = sizeof ops,
        .get_length = mem_length,
        .preadv = mem_preadv,
    };

    cowblk_image *img = NULL;
    m.length_fails = 1;
    ERR(cowblk_open_with_backing(ov, NULL, 0, 0, &ops, &m, &img), EIO);
    CHECK(strstr(cowblk_last_error(), "get_length") != NULL);
    m.length_fails = 0;
    ERR(cowblk_open_with_backing(ov, NULL, COWBLK_OPEN_NO_BACKING, 0, &ops, &m,
                                 &img),
        EINVAL);
    OK(cowblk_open_with_backing(ov, NULL, 0, 0, &ops, &m, &img));

    /* Unallocated ranges come from the callbacks, zeros past their end. */
    uint8_t *buf = malloc(SIZE);
    CHECK(buf != NULL);
    OK(img_read(img, 0, buf, SIZE));
    CHECK(m.reads > 0);
    CHECK(mismatch(buf, BLEN, 4, 0) < 0);
    for (uint64_t i = BLEN; i < SIZE; i++)
        CHECK(buf[i] == 0);

    /* Copy-on-write asks the callbacks for the rest of the cluster. */
    int before = m.reads;
    uint8_t w[10];
    fill(w, sizeof w, 2, 5000);
    OK(img_write(img, 5000, w, sizeof w));
    CHECK(m.reads > before);
    /* ... including the cluster the backing image ends in. */
    fill(w, sizeof w, 2, BLEN - 5);
    OK(img_write(img, BLEN - 5, w, sizeof w));

    /* A failing callback: the errno and a message, and no allocation. */
    atomic_store(&m.fail_with, EIO);
    ERR(img_read(img, 100000, buf, 10), EIO);
    CHECK(strstr(cowblk_last_error(), "preadv") != NULL);
    ERR(img_write(img, 100000, w, sizeof w), EIO);
    uint64_t pnum;
    CHECK(OK(cowblk_is_allocated(img, 100000, 1, &pnum)) == 0);
    atomic_store(&m.fail_with, 0);
    OK(cowblk_close(&img));

    /* Reopened without the callbacks (NO_BACKING: unallocated reads zeros),
     * the copied clusters hold the callbacks' bytes around ours. */
    OK(cowblk_open(ov, NULL, COWBLK_OPEN_NO_BACKING | COWBLK_OPEN_RDONLY, 0,
                   &img));
    OK(img_read(img, 0, buf, SIZE));
    for (uint64_t i = 0; i < SIZE; i++) {
        unsigned want;
        if ((i >= 5000 && i < 5010) || (i >= BLEN - 5 && i < BLEN + 5))
            want = pat(2, i);
        else if (i >= CS && i < 2 * CS)
            want = pat(4, i);
        else if (i >= BLEN / CS * CS && i < BLEN / CS * CS + CS)
            want = i < BLEN ? pat(4, i) : 0;
        else
            want = 0;
        if (buf[i] != want) {
            fprintf(stderr, "byte %llu: %u, expected %u\n",
                    (unsigned long long)i, buf[i], want);
            return 1;
        }
    }
    OK(cowblk_close(&img));
    free(buf);
    free(m.data);
    rm_tree(dir);
    return 0;
}
