/* COWBLK_OPEN_CALLER_BACKING, the mode for a host (the QEMU glue) that owns
 * the backing chain: the library never reads backing data, refuses what
 * would need it, and copies on write from bytes the caller supplies. The
 * supplied bytes use a pattern of their own, so the test can tell them from
 * the base file's. */
#include "util.h"

#define SIZE (1u << 20)
#define CS 65536u

static cowblk_image *img;

/* Writes [off, off + len) with pattern 2, supplying pattern 3 as the old
 * backing contents the library asks for. */
static void write_cow(uint64_t off, size_t len)
{
    uint64_t co = 1, cl = 1;
    OK(cowblk_cow_range(img, off, len, &co, &cl));
    uint8_t *data = malloc(len), *old = malloc(cl ? cl : 1);
    CHECK(data && old);
    fill(data, len, 2, off);
    fill(old, cl, 3, co);
    struct iovec v = {data, len}, o = {old, cl};
    OK(cowblk_pwritev_cow(img, off, &v, 1, co, &o, cl ? 1 : 0));
    free(data);
    free(old);
}

int main(void)
{
    char dir[4096], ov[4096];
    make_tmpdir(dir, sizeof dir, "callerbacking");
    make_overlay(dir, SIZE, CS, ov, sizeof ov);
    OK(cowblk_open(ov, "add-cow", COWBLK_OPEN_CALLER_BACKING, 0, &img));
    CHECK(cowblk_capabilities(img) & COWBLK_CAP_CALLER_BACKING);

    uint8_t buf[3 * CS];
    uint64_t pnum, map, co, cl;
    /* Unallocated: neither backing data nor zeros, but a status. */
    ERR(img_read(img, 100, buf, 10), ENOTSUP);
    CHECK(strstr(cowblk_last_error(), "caller manages") != NULL);
    /* Not allocated, not known zeros (the caller has the backing file). */
    CHECK(OK(cowblk_block_status(img, 0, SIZE, &pnum, &map)) == COWBLK_BLOCK_EOF);
    CHECK(pnum == SIZE);

    /* A write that needs old bytes is refused, and writes nothing. */
    struct snapshot before;
    snapshot_take(&before, dir);
    fill(buf, 100, 2, 70000);
    ERR(img_write(img, 70000, buf, 100), ENOTSUP);
    ERR(cowblk_write_zeroes(img, 70000, 100), ENOTSUP);
    /* So is a supply that misses part of the range. */
    OK(cowblk_cow_range(img, 70000, 100, &co, &cl));
    CHECK(co == CS && cl == CS);
    struct iovec v = {buf, 100}, o = {buf + CS, CS - 1};
    ERR(cowblk_pwritev_cow(img, 70000, &v, 1, co, &o, 1), EINVAL);
    ERR(cowblk_pwritev_cow(img, 70000, &v, 1, co + 1, &o, 1), EINVAL);
    OK(cowblk_flush(img));
    snapshot_same(&before, dir);
    snapshot_free(&before);

    /* Whole clusters need no old bytes. */
    OK(cowblk_cow_range(img, 4 * CS, 2 * CS, &co, &cl));
    CHECK(cl == 0);
    fill(buf, 2 * CS, 2, 4 * CS);
    OK(img_write(img, 4 * CS, buf, 2 * CS));

    /* Partial clusters: head only, both ends, and inside allocated ones. */
    write_cow(70000, 100);           /* cluster 1 */
    write_cow(2 * CS + 10, CS + 20); /* clusters 2 and 3 */
    OK(cowblk_cow_range(img, 70000 + 500, 7, &co, &cl));
    CHECK(cl == 0); /* cluster 1 is allocated now */
    write_cow(70000 + 500, 7);
    write_cow(5 * CS - 3, 6); /* across two allocated clusters */

    /* Whole zero clusters need no old bytes either. */
    OK(cowblk_write_zeroes(img, 8 * CS, CS));
    CHECK(OK(cowblk_is_allocated(img, 0, SIZE, &pnum)) == 0 && pnum == CS);
    CHECK(OK(cowblk_is_allocated(img, CS, SIZE, &pnum)) == 1 &&
          pnum == 5 * CS);

    /* Growing owns the new clusters: they read zeros without any backing. */
    OK(cowblk_truncate(img, SIZE + 3 * CS));
    CHECK(OK(cowblk_is_allocated(img, SIZE, 3 * CS, &pnum)) == 1 &&
          pnum == 3 * CS);
    OK(img_read(img, SIZE, buf, 3 * CS));
    for (size_t i = 0; i < 3 * CS; i++)
        CHECK(buf[i] == 0);
    OK(cowblk_close(&img));

    /* Opened the ordinary way, the base fills what is still unallocated. */
    OK(cowblk_open(ov, NULL, COWBLK_OPEN_RDONLY, 0, &img));
    uint8_t *all = malloc(SIZE);
    CHECK(all != NULL);
    OK(img_read(img, 0, all, SIZE));
    for (uint64_t i = 0; i < SIZE; i++) {
        unsigned want;
        if ((i >= 70000 && i < 70100) || (i >= 70500 && i < 70507) ||
            (i >= 2 * CS + 10 && i < 3 * CS + 30) ||
            (i >= 4 * CS && i < 6 * CS))
            want = pat(2, i);
        else if (i >= 8 * CS && i < 9 * CS)
            want = 0;
        else if (i >= CS && i < 4 * CS)
            want = pat(3, i); /* copied from the caller's bytes */
        else
            want = pat(1, i); /* the base file */
        if (all[i] != want) {
            fprintf(stderr, "byte %llu: %u, expected %u\n",
                    (unsigned long long)i, all[i], want);
            return 1;
        }
    }
    free(all);
    OK(cowblk_close(&img));

    /* Growing from inside an unallocated cluster would need its backing
     * bytes: refused, and the image stays as it was. */
    OK(cowblk_open(ov, NULL, COWBLK_OPEN_CALLER_BACKING, 0, &img));
    OK(cowblk_truncate(img, 12 * CS + 100));
    ERR(cowblk_truncate(img, 13 * CS), ENOTSUP);
    uint64_t len;
    OK(cowblk_get_length(img, &len));
    CHECK(len == 12 * CS + 100);
    OK(cowblk_close(&img));
    OK(cowblk_open(ov, NULL, COWBLK_OPEN_RDONLY, 0, &img));
    OK(cowblk_get_length(img, &len));
    CHECK(len == 12 * CS + 100);
    OK(img_read(img, 11 * CS, buf, CS + 100));
    CHECK(mismatch(buf, CS + 100, 1, 11 * CS) < 0);
    OK(cowblk_close(&img));
    rm_tree(dir);
    return 0;
}
