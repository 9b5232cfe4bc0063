/* cowblk_check (qemu-img check through the C ABI): a clean add-cow image,
 * an image file cut short (a corruption, repaired with FIX_ERRORS; its
 * message also through message_fn), stray
 * padding bits (a leak, repaired with FIX_LEAKS), raw's -ENOTSUP, the
 * driver table's entry, and bad arguments. */
#include "util.h"

#define SIZE (40u * 1024) /* 10 clusters of 4 KiB: 6 padding bits */
#define CS 4096u

/* message_fn (ABI 6): collects the lines handed over. */
static char lines_seen[4096];
static int nlines;
static void on_line(void *opaque, const char *line)
{
    CHECK(opaque == (void *)lines_seen);
    if (nlines++) {
        strncat(lines_seen, "\n", sizeof lines_seen - strlen(lines_seen) - 1);
    }
    strncat(lines_seen, line, sizeof lines_seen - strlen(lines_seen) - 1);
}

static cowblk_check_result check(cowblk_image *img, uint32_t fix)
{
    cowblk_check_result r;
    memset(&r, 0, sizeof r);
    r.struct_size = sizeof r;
    OK(cowblk_check(img, fix, &r));
    return r;
}

int main(void)
{
    char dir[4096], ov[4096], img_file[4096], raw[4096];
    make_tmpdir(dir, sizeof dir, "check");
    make_overlay(dir, SIZE, CS, ov, sizeof ov);
    join(img_file, sizeof img_file, dir, "ov.img");

    cowblk_image *img = NULL;
    OK(cowblk_open(ov, NULL, 0, 0, &img));
    uint8_t buf[CS];
    fill(buf, CS, 3, 0);
    OK(img_write(img, CS, buf, CS));
    cowblk_check_result r = check(img, 0);
    CHECK(r.corruptions == 0 && r.leaks == 0 && r.check_errors == 0);
    CHECK(r.total_clusters == 10 && r.allocated_clusters == 1);
    CHECK(r.messages[0] == '\0');

    /* The image file shorter than the disk: a corruption, repaired. */
    CHECK(truncate(img_file, 8192) == 0);
    r = check(img, 0);
    CHECK(r.corruptions == 1 && r.corruptions_fixed == 0);
    CHECK(strstr(r.messages, "shorter than the virtual size") != NULL);
    /* The same message through the callback, whole and once. */
    cowblk_check_result rc;
    memset(&rc, 0, sizeof rc);
    rc.struct_size = sizeof rc;
    rc.message_fn = on_line;
    rc.message_opaque = lines_seen;
    OK(cowblk_check(img, 0, &rc));
    CHECK(nlines == 1 && strcmp(lines_seen, rc.messages) == 0);
    CHECK(rc.message_fn == on_line && rc.message_opaque == lines_seen);
    r = check(img, COWBLK_CHECK_FIX_ERRORS);
    CHECK(r.corruptions == 1 && r.corruptions_fixed == 1);
    r = check(img, 0);
    CHECK(r.corruptions == 0);
    OK(cowblk_close(&img));

    /* A padding bit past the last cluster: a leak, repaired. */
    FILE *f = fopen(ov, "r+b");
    CHECK(f != NULL);
    CHECK(fseek(f, 2561, SEEK_SET) == 0);
    CHECK(fputc(0x80, f) == 0x80);
    CHECK(fclose(f) == 0);
    OK(cowblk_open(ov, NULL, COWBLK_OPEN_RDONLY, 0, &img));
    r = check(img, 0);
    CHECK(r.leaks == 1 && strstr(r.messages, "padding") != NULL);
    /* Repairs need a writable handle. */
    cowblk_check_result rr;
    memset(&rr, 0, sizeof rr);
    rr.struct_size = sizeof rr;
    ERR(cowblk_check(img, COWBLK_CHECK_FIX_LEAKS, &rr), EROFS);
    OK(cowblk_close(&img));
    OK(cowblk_open(ov, NULL, 0, 0, &img));
    r = check(img, COWBLK_CHECK_FIX_LEAKS);
    CHECK(r.leaks == 1 && r.leaks_fixed == 1);
    CHECK(check(img, 0).leaks == 0);

    /* The driver table carries the entry point. */
    const cowblk_driver *drv = cowblk_driver_find("add-cow");
    CHECK(drv != NULL && drv->struct_size >= offsetof(cowblk_driver, check) + sizeof drv->check);
    CHECK(drv->check != NULL);
    memset(&rr, 0, sizeof rr);
    rr.struct_size = sizeof rr;
    OK(drv->check(img, 0, &rr));
    CHECK(rr.corruptions == 0 && rr.leaks == 0);

    /* Bad arguments. */
    ERR(cowblk_check(img, 0, NULL), EINVAL);
    ERR(cowblk_check(img, 4, &rr), EINVAL);
    rr.struct_size = 8;
    ERR(cowblk_check(img, 0, &rr), EINVAL);
    ERR(cowblk_check(NULL, 0, &rr), EINVAL);
    OK(cowblk_close(&img));

    /* raw has no checker. */
    join(raw, sizeof raw, dir, "plain.raw");
    OK(cowblk_create("raw", raw, "size=64k"));
    OK(cowblk_open(raw, NULL, 0, 0, &img));
    rr.struct_size = sizeof rr;
    ERR(cowblk_check(img, 0, &rr), ENOTSUP);
    OK(cowblk_close(&img));
    rm_tree(dir);
    return 0;
}
