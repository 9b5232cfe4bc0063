/* Bad arguments to every call: a negative errno and a message, out-params
 * untouched, image bytes unchanged. */
#include "util.h"

#define SIZE (1u << 20)

int main(void)
{
    char dir[4096], ov[4096];
    make_tmpdir(dir, sizeof dir, "badargs");
    make_overlay(dir, SIZE, 65536, ov, sizeof ov);
    struct snapshot before;
    snapshot_take(&before, dir);

    cowblk_image *img = NULL, *sentinel = (cowblk_image *)&before, *p;
    /* open */
    ERR(cowblk_open(NULL, NULL, 0, 0, &img), EINVAL);
    ERR(cowblk_open(ov, NULL, 0, 0, NULL), EINVAL);
    p = sentinel;
    ERR(cowblk_open(ov, NULL, 1u << 20, 0, &p), EINVAL);
    CHECK(p == sentinel && strstr(cowblk_last_error(), "flags"));
    ERR(cowblk_open(ov, NULL, COWBLK_OPEN_NO_BACKING | COWBLK_OPEN_CALLER_BACKING,
                    0, &p),
        EINVAL);
    ERR(cowblk_open(ov, "qcow3", 0, 0, &p), EINVAL);
    CHECK(p == sentinel);
    ERR(cowblk_open_with_backing(ov, NULL, 0, 0, NULL, NULL, &p), EINVAL);
    cowblk_backing_ops short_ops = {.struct_size = 4};
    ERR(cowblk_open_with_backing(ov, NULL, 0, 0, &short_ops, NULL, &p), EINVAL);
    cowblk_backing_ops no_cb = {.struct_size = sizeof no_cb};
    ERR(cowblk_open_with_backing(ov, NULL, 0, 0, &no_cb, NULL, &p), EINVAL);
    CHECK(p == sentinel);
    const char *fmt = "untouched";
    ERR(cowblk_probe(NULL, &fmt), EINVAL);
    ERR(cowblk_probe(ov, NULL), EINVAL);
    ERR(cowblk_probe("/nonexistent/x", &fmt), ENOENT);
    CHECK(strcmp(fmt, "untouched") == 0);

    /* NULL handle everywhere. */
    uint8_t buf[4096];
    struct iovec v = {buf, sizeof buf};
    uint64_t n = 77, m = 78;
    ERR(cowblk_preadv(NULL, 0, &v, 1), EINVAL);
    ERR(cowblk_pwritev(NULL, 0, &v, 1), EINVAL);
    ERR(cowblk_flush(NULL), EINVAL);
    ERR(cowblk_truncate(NULL, 0), EINVAL);
    ERR(cowblk_discard(NULL, 0, 1), EINVAL);
    ERR(cowblk_write_zeroes(NULL, 0, 1), EINVAL);
    ERR(cowblk_get_length(NULL, &n), EINVAL);
    ERR(cowblk_is_allocated(NULL, 0, 1, &n), EINVAL);
    ERR(cowblk_block_status(NULL, 0, 1, &n, &m), EINVAL);
    ERR(cowblk_cow_range(NULL, 0, 1, &n, &m), EINVAL);
    ERR(cowblk_pwritev_cow(NULL, 0, &v, 1, 0, &v, 1), EINVAL);
    ERR(cowblk_change_backing_file(NULL, NULL, NULL), EINVAL);
    cowblk_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    ERR(cowblk_get_info(NULL, &info), EINVAL);
    CHECK(n == 77 && m == 78);

    OK(cowblk_open(ov, NULL, 0, 0, &img));
    /* Out-params. */
    ERR(cowblk_get_length(img, NULL), EINVAL);
    ERR(cowblk_is_allocated(img, 0, 1, NULL), EINVAL);
    ERR(cowblk_block_status(img, 0, 1, NULL, &m), EINVAL);
    ERR(cowblk_cow_range(img, 0, 1, NULL, &m), EINVAL);
    ERR(cowblk_cow_range(img, 0, 1, &n, NULL), EINVAL);
    ERR(cowblk_get_info(img, NULL), EINVAL);
    info.struct_size = 8;
    ERR(cowblk_get_info(img, &info), EINVAL);
    CHECK(info.format == NULL);
    CHECK(n == 77 && m == 78);

    /* iovec lists. */
    ERR(cowblk_preadv(img, 0, &v, -1), EINVAL);
    ERR(cowblk_preadv(img, 0, NULL, 1), EINVAL);
    struct iovec nullseg[2] = {{buf, 10}, {NULL, 10}};
    ERR(cowblk_pwritev(img, 0, nullseg, 2), EINVAL);
    struct iovec huge[2] = {{buf, SIZE_MAX / 2 + 1}, {buf, SIZE_MAX / 2 + 1}};
    ERR(cowblk_pwritev(img, 0, huge, 2), EINVAL);
    /* An empty list is a valid no-op. */
    OK(cowblk_preadv(img, 0, NULL, 0));
    OK(cowblk_pwritev(img, SIZE, NULL, 0));

    /* Ranges past the end. */
    ERR(cowblk_preadv(img, SIZE - 100, &v, 1), EIO);
    ERR(cowblk_pwritev(img, SIZE - 100, &v, 1), EIO);
    ERR(cowblk_pwritev(img, UINT64_MAX - 10, &v, 1), EIO);
    ERR(cowblk_write_zeroes(img, SIZE, 1), EIO);
    ERR(cowblk_discard(img, 0, UINT64_MAX), EIO);
    ERR(cowblk_cow_range(img, SIZE, 1, &n, &m), EIO);
    CHECK(n == 77 && m == 78);
    /* Status past the end is QEMU's answer, not an error. */
    CHECK(OK(cowblk_block_status(img, SIZE, 1, &n, &m)) == COWBLK_BLOCK_EOF);
    CHECK(n == 0);
    CHECK(OK(cowblk_is_allocated(img, SIZE + 5, 1, &n)) == 0 && n == 0);

    /* Backing file changes need a format. */
    ERR(cowblk_change_backing_file(img, "base.raw", NULL), EINVAL);
    ERR(cowblk_change_backing_file(img, "nothere.raw", "raw"), ENOENT);
    OK(cowblk_close(&img));
    CHECK(img == NULL);
    snapshot_same(&before, dir);

    /* Writes through a read-only handle. */
    OK(cowblk_open(ov, NULL, COWBLK_OPEN_RDONLY, 0, &img));
    CHECK((cowblk_capabilities(img) & COWBLK_CAP_WRITE) == 0);
    ERR(cowblk_pwritev(img, 0, &v, 1), EROFS);
    ERR(cowblk_write_zeroes(img, 0, 4096), EROFS);
    ERR(cowblk_discard(img, 0, 65536), EROFS);
    ERR(cowblk_truncate(img, 2 * SIZE), EROFS);
    ERR(cowblk_change_backing_file(img, NULL, NULL), EROFS);
    OK(cowblk_flush(img));
    OK(cowblk_close(&img));
    snapshot_same(&before, dir);
    snapshot_free(&before);
    rm_tree(dir);
    return 0;
}
