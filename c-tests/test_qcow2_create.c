/* qcow2 creation through the C ABI: cowblk_create("qcow2", ...) and the
 * driver table's create entry make images that open and read zeros with
 * the options asked for, and the table's check finds them clean; QEMU's refusals come back as -EINVAL with a
 * message and leave no file behind. */
#include "util.h"

static int exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0;
}

int main(void)
{
    char dir[4096], a[4096], b[4096], c[4096], d[4096];
    make_tmpdir(dir, sizeof dir, "qcow2-create");
    join(a, sizeof a, dir, "a.qcow2");
    join(b, sizeof b, dir, "b.qcow2");
    join(c, sizeof c, dir, "c.qcow2");
    join(d, sizeof d, dir, "bad.qcow2");

    OK(cowblk_create("qcow2", a, "size=4M,cluster_size=4k,refcount_bits=8"));
    cowblk_image *img = NULL;
    OK(cowblk_open(a, "qcow2", COWBLK_OPEN_RDONLY, 0, &img));
    cowblk_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    OK(cowblk_get_info(img, &info));
    CHECK(info.virtual_size == 4u << 20);
    CHECK(info.cluster_size == 4096);
    cowblk_info_free(&info);
    uint8_t buf[8192];
    memset(buf, 0xaa, sizeof buf);
    OK(img_read(img, 1 << 20, buf, sizeof buf));
    for (size_t i = 0; i < sizeof buf; i++)
        CHECK(buf[i] == 0);
    OK(cowblk_close(&img));

    /* The driver table's create entry, with a backing file. */
    const cowblk_driver *t = cowblk_driver_find("qcow2");
    CHECK(t != NULL && t->create != NULL);
    OK(t->create(b, "backing_file=a.qcow2,backing_fmt=qcow2,compat=0.10"));
    OK(cowblk_open(b, "qcow2", COWBLK_OPEN_RDONLY, 0, &img));
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    OK(cowblk_get_info(img, &info));
    CHECK(info.virtual_size == 4u << 20); /* the backing file's size */
    cowblk_info_free(&info);
    OK(cowblk_close(&img));

    /* Metadata preallocation. */
    OK(cowblk_create("qcow2", c, "size=1M,preallocation=metadata"));
    CHECK(exists(c));

    /* The table's check: clean, read-only; repairs are refused. */
    CHECK(t->check != NULL);
    OK(cowblk_open(c, "qcow2", COWBLK_OPEN_RDONLY, 0, &img));
    cowblk_check_result r;
    memset(&r, 0, sizeof r);
    r.struct_size = sizeof r;
    OK(t->check(img, 0, &r));
    CHECK(r.corruptions == 0 && r.leaks == 0 && r.check_errors == 0);
    CHECK(r.total_clusters == 16 && r.allocated_clusters == 16);
    ERR(t->check(img, COWBLK_CHECK_FIX_LEAKS, &r), EROFS);
    OK(cowblk_close(&img));

    /* QEMU's refusals: -EINVAL, a message, no file. */
    ERR(cowblk_create("qcow2", d, "size=1M,extended_l2=on,cluster_size=8k"), EINVAL);
    CHECK(strstr(cowblk_last_error(), "at least 16384 bytes") != NULL);
    CHECK(!exists(d));
    ERR(cowblk_create("qcow2", d, "size=1M,compat=0.10,lazy_refcounts=on"), EINVAL);
    CHECK(!exists(d));
    ERR(cowblk_create("qcow2", d, "size=1M,data_file_raw=on"), EINVAL);
    CHECK(strstr(cowblk_last_error(), "data-file-raw requires data-file") != NULL);
    CHECK(!exists(d));
    ERR(cowblk_create("qcow2", d, "size=1M,cluster_size=1000"), EINVAL);
    CHECK(!exists(d));
    ERR(cowblk_create("qcow2", d, "size=1M,backing_file=a.qcow2"), EINVAL);
    CHECK(!exists(d));

    /* Compressed writes (the table's pwritev_compressed): whole clusters
     * stored compressed read back the same, a cluster that does not shrink
     * is stored plainly, a misaligned range is refused, and add-cow and raw
     * have no such member. */
    char e[4096];
    join(e, sizeof e, dir, "z.qcow2");
    OK(cowblk_create("qcow2", e, "size=1M,cluster_size=64k"));
    OK(cowblk_open(e, "qcow2", 0, 0, &img));
    CHECK(t->struct_size >= offsetof(cowblk_driver, pwritev_compressed) +
                               sizeof(t->pwritev_compressed));
    CHECK(t->pwritev_compressed != NULL);
    static uint8_t z[2 * 65536], back[2 * 65536];
    for (size_t i = 0; i < 65536; i++)
        z[i] = (uint8_t)(i / 1000);          /* compresses */
    fill(z + 65536, 65536, 7, 0);             /* does not */
    struct iovec v[2] = { { z, 100000 }, { z + 100000, sizeof z - 100000 } };
    OK(t->pwritev_compressed(img, 128 * 1024, v, 2));
    OK(img_read(img, 128 * 1024, back, sizeof back));
    CHECK(memcmp(back, z, sizeof z) == 0);
    ERR(t->pwritev_compressed(img, 4096, v, 1), EINVAL);
    CHECK(strstr(cowblk_last_error(), "whole clusters") != NULL);
    memset(&r, 0, sizeof r);
    r.struct_size = sizeof r;
    OK(t->check(img, 0, &r));
    CHECK(r.corruptions == 0 && r.leaks == 0 && r.check_errors == 0);
    OK(cowblk_close(&img));
    CHECK(cowblk_driver_find("add-cow")->pwritev_compressed == NULL);
    CHECK(cowblk_driver_find("raw")->pwritev_compressed == NULL);

    rm_tree(dir);
    return 0;
}
