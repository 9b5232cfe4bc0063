/* cowblk_change_backing_file (qemu-img rebase -u): the new name and format
 * are recorded, reads of unallocated ranges follow the new backing file at
 * once and after a reopen, detaching makes them read zeros, and a host that
 * manages the backing file only changes the record. Plus the capability
 * mask of each kind of handle. */
#include "util.h"

#define SIZE (256u * 1024)
#define CS 4096u

static void expect_backing(cowblk_image *img, const char *name,
                           unsigned seed)
{
    cowblk_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    OK(cowblk_get_info(img, &info));
    if (name) {
        CHECK(info.backing_file && strcmp(info.backing_file, name) == 0);
        CHECK(strcmp(info.backing_format, "raw") == 0);
    } else {
        CHECK(info.backing_file == NULL && info.backing_format == NULL);
    }
    cowblk_info_free(&info);
    /* Cluster 0 is ours; the rest is the backing file's (or zeros). */
    uint8_t buf[2 * CS];
    OK(img_read(img, 0, buf, sizeof buf));
    CHECK(mismatch(buf, CS, 2, 0) < 0);
    for (size_t i = CS; i < sizeof buf; i++)
        CHECK(buf[i] == (seed ? pat(seed, i) : 0));
}

int main(void)
{
    char dir[4096], ov[4096], base2[4096];
    make_tmpdir(dir, sizeof dir, "rebase");
    make_overlay(dir, SIZE, CS, ov, sizeof ov);
    join(base2, sizeof base2, dir, "base2.raw");
    OK(cowblk_create("raw", base2, "size=256k"));
    cowblk_image *img = NULL;
    OK(cowblk_open(base2, NULL, 0, 0, &img));
    uint8_t *buf = malloc(SIZE);
    CHECK(buf != NULL);
    fill(buf, SIZE, 5, 0);
    OK(img_write(img, 0, buf, SIZE));
    uint32_t caps = cowblk_capabilities(img);
    CHECK((caps & COWBLK_CAP_WRITE) && (caps & COWBLK_CAP_TRUNCATE));
    CHECK(!(caps & COWBLK_CAP_BACKING)); /* raw has no backing file */
    OK(cowblk_close(&img));

    OK(cowblk_open(ov, NULL, 0, 0, &img));
    caps = cowblk_capabilities(img);
    CHECK((caps & COWBLK_CAP_BACKING) && (caps & COWBLK_CAP_BLOCK_STATUS));
    CHECK(!(caps & COWBLK_CAP_CALLER_BACKING));
    fill(buf, CS, 2, 0);
    OK(img_write(img, 0, buf, CS));
    expect_backing(img, "base.raw", 1);

    OK(cowblk_change_backing_file(img, "base2.raw", "raw"));
    expect_backing(img, "base2.raw", 5);
    OK(cowblk_close(&img));
    OK(cowblk_open(ov, NULL, 0, 0, &img));
    expect_backing(img, "base2.raw", 5);

    OK(cowblk_change_backing_file(img, NULL, NULL));
    expect_backing(img, NULL, 0);
    OK(cowblk_close(&img));
    OK(cowblk_open(ov, NULL, 0, 0, &img));
    expect_backing(img, NULL, 0);
    OK(cowblk_close(&img));

    /* Host-managed: only the record changes; the library opens nothing. */
    OK(cowblk_open(ov, NULL, COWBLK_OPEN_CALLER_BACKING, 0, &img));
    OK(cowblk_change_backing_file(img, "base.raw", "raw"));
    OK(cowblk_close(&img));
    OK(cowblk_open(ov, NULL, COWBLK_OPEN_RDONLY, 0, &img));
    expect_backing(img, "base.raw", 1);
    OK(cowblk_close(&img));
    free(buf);
    rm_tree(dir);
    return 0;
}
