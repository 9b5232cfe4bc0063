/* Files an image names: COWBLK_OPEN_CONFINED refuses an add-cow whose
 * image_file is /etc/passwd (bits set), a `..` name and a fifo, with
 * -EACCES naming the file; COWBLK_OPEN_METADATA_ONLY opens for
 * cowblk_get_info without opening the image file (missing, or a fifo). */
#include "util.h"

#define IMAGE_FIELD 1036

static char dir[4096], ov[4096];

static void set_image_file(const char *name)
{
    size_t len = 0;
    uint8_t *b = read_file(ov, &len);
    CHECK(len >= IMAGE_FIELD + 1024 && strlen(name) < 1024);
    memset(b + IMAGE_FIELD, 0, 1024);
    memcpy(b + IMAGE_FIELD, name, strlen(name));
    write_file(ov, b, len);
    free(b);
}

static void refused(uint32_t flags, const char *needle)
{
    cowblk_image *img = NULL;
    ERR(cowblk_open(ov, "add-cow", flags, 0, &img), EACCES);
    CHECK(img == NULL);
    if (!strstr(cowblk_last_error(), needle)) {
        fprintf(stderr, "message lacks '%s'\n", needle);
        exit(1);
    }
}

int main(void)
{
    make_tmpdir(dir, sizeof dir, "confined");
    char sub[4096], outside[4096];
    join(sub, sizeof sub, dir, "sub");
    CHECK(mkdir(sub, 0700) == 0);
    join(ov, sizeof ov, sub, "a.add-cow");
    join(outside, sizeof outside, dir, "outside.img");
    write_file(outside, "outside", 7);
    OK(cowblk_create("add-cow", ov, "size=64k,image_file=a.img,cluster_size=4k"));
    cowblk_image *img = NULL;
    OK(cowblk_open(ov, "add-cow", COWBLK_OPEN_CONFINED, 0, &img));
    uint8_t buf[8192];
    memset(buf, 0x5a, sizeof buf);
    struct iovec iov = {buf, sizeof buf};
    OK(cowblk_pwritev(img, 0, &iov, 1));
    OK(cowblk_close(&img));

    printf("image_file=/etc/passwd with bits set\n");
    set_image_file("/etc/passwd");
    refused(COWBLK_OPEN_CONFINED | COWBLK_OPEN_RDONLY, "'/etc/passwd'");
    refused(COWBLK_OPEN_CONFINED, "outside the image's directory");

    printf("image_file=../outside.img\n");
    set_image_file("../outside.img");
    refused(COWBLK_OPEN_CONFINED | COWBLK_OPEN_RDONLY, "../outside.img");
    OK(cowblk_open(ov, "add-cow", COWBLK_OPEN_RDONLY, 0, &img));
    OK(cowblk_close(&img));

    printf("metadata-only info with the image file missing\n");
    set_image_file("gone.img");
    ERR(cowblk_open(ov, "add-cow", COWBLK_OPEN_RDONLY, 0, &img), ENOENT);
    ERR(cowblk_open(ov, "add-cow", COWBLK_OPEN_METADATA_ONLY, 0, &img), EINVAL);
    OK(cowblk_open(ov, "add-cow", COWBLK_OPEN_RDONLY | COWBLK_OPEN_METADATA_ONLY, 0, &img));
    struct cowblk_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    OK(cowblk_get_info(img, &info));
    CHECK(info.virtual_size == 65536);
    uint64_t allocated = 0;
    OK(cowblk_get_allocated_bytes(img, &allocated));
    CHECK(allocated == 8192);
    CHECK(info.data_file && strstr(info.data_file, "gone.img"));
    cowblk_info_free(&info);
    ERR(cowblk_preadv(img, 0, &iov, 1), ENOTSUP);
    OK(cowblk_close(&img));

    printf("a fifo as image file: never opened for info, refused otherwise\n");
    char fifo[4096];
    join(fifo, sizeof fifo, sub, "f");
    CHECK(mkfifo(fifo, 0600) == 0);
    set_image_file("f");
    OK(cowblk_open(ov, "add-cow", COWBLK_OPEN_RDONLY | COWBLK_OPEN_METADATA_ONLY, 0, &img));
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    OK(cowblk_get_info(img, &info));
    cowblk_info_free(&info);
    OK(cowblk_close(&img));
    refused(COWBLK_OPEN_CONFINED | COWBLK_OPEN_RDONLY, "a fifo");
    /* Unconfined: refused too (a fifo holds no image), without blocking. */
    ERR(cowblk_open(ov, "add-cow", COWBLK_OPEN_RDONLY, 0, &img), EINVAL);

    rm_tree(dir);
    printf("ok\n");
    return 0;
}
