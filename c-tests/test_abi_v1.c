/* A binary built against the first ABI keeps working: the structs of
 * abi_v1.h (a frozen copy of the version-1 header) are laid out as the
 * current ones begin; cowblk_get_info and cowblk_check fill a version-1
 * struct, or one cut down to its last member, and never write past its
 * struct_size; cowblk_info_free frees its strings; every driver table reads
 * through the version-1 view, and a member is NULL exactly where the
 * format cannot do the operation. */
#include "util.h"

#include "abi_v1.h"

#include <stdalign.h>

/* Each version-1 member sits where the current header has it. */
#define SAME(old, cur, m)                                                      \
    _Static_assert(offsetof(old, m) == offsetof(cur, m) &&                     \
                       sizeof(((old *)0)->m) == sizeof(((cur *)0)->m),         \
                   #m " moved")

SAME(cowblk_info_v1, cowblk_info, struct_size);
SAME(cowblk_info_v1, cowblk_info, format);
SAME(cowblk_info_v1, cowblk_info, filename);
SAME(cowblk_info_v1, cowblk_info, virtual_size);
SAME(cowblk_info_v1, cowblk_info, cluster_size);
SAME(cowblk_info_v1, cowblk_info, data_file);
SAME(cowblk_info_v1, cowblk_info, backing_file);
SAME(cowblk_info_v1, cowblk_info, backing_path);
SAME(cowblk_info_v1, cowblk_info, backing_format);
SAME(cowblk_info_v1, cowblk_info, allocated_bytes);
SAME(cowblk_info_v1, cowblk_info, disk_size);
SAME(cowblk_info_v1, cowblk_info, read_only);
_Static_assert(sizeof(cowblk_info_v1) <= sizeof(cowblk_info), "info shrank");

SAME(cowblk_check_result_v1, cowblk_check_result, struct_size);
SAME(cowblk_check_result_v1, cowblk_check_result, corruptions);
SAME(cowblk_check_result_v1, cowblk_check_result, leaks);
SAME(cowblk_check_result_v1, cowblk_check_result, check_errors);
SAME(cowblk_check_result_v1, cowblk_check_result, corruptions_fixed);
SAME(cowblk_check_result_v1, cowblk_check_result, leaks_fixed);
SAME(cowblk_check_result_v1, cowblk_check_result, total_clusters);
SAME(cowblk_check_result_v1, cowblk_check_result, allocated_clusters);
SAME(cowblk_check_result_v1, cowblk_check_result, image_end_offset);
SAME(cowblk_check_result_v1, cowblk_check_result, messages);
_Static_assert(sizeof(cowblk_check_result_v1) <= sizeof(cowblk_check_result),
               "check result shrank");

SAME(cowblk_driver_v1, cowblk_driver, struct_size);
SAME(cowblk_driver_v1, cowblk_driver, abi_version);
SAME(cowblk_driver_v1, cowblk_driver, format_name);
SAME(cowblk_driver_v1, cowblk_driver, probe);
SAME(cowblk_driver_v1, cowblk_driver, create);
SAME(cowblk_driver_v1, cowblk_driver, open);
SAME(cowblk_driver_v1, cowblk_driver, close);
SAME(cowblk_driver_v1, cowblk_driver, readv);
SAME(cowblk_driver_v1, cowblk_driver, writev);
SAME(cowblk_driver_v1, cowblk_driver, flush);
SAME(cowblk_driver_v1, cowblk_driver, truncate);
SAME(cowblk_driver_v1, cowblk_driver, is_allocated);
SAME(cowblk_driver_v1, cowblk_driver, block_status);
SAME(cowblk_driver_v1, cowblk_driver, get_info);
SAME(cowblk_driver_v1, cowblk_driver, discard);
SAME(cowblk_driver_v1, cowblk_driver, write_zeroes);
SAME(cowblk_driver_v1, cowblk_driver, get_length);
SAME(cowblk_driver_v1, cowblk_driver, change_backing_file);
SAME(cowblk_driver_v1, cowblk_driver, check);

#define CANARY 0xa5
#define SPARE 256

/* `total` bytes: a zeroed struct of `n` bytes, then canary bytes. */
static unsigned char *room(unsigned char *buf, size_t n, size_t total)
{
    memset(buf, CANARY, total);
    memset(buf, 0, n);
    return buf;
}

static void canary_intact(const unsigned char *buf, size_t from, size_t to)
{
    for (size_t i = from; i < to; i++)
        if (buf[i] != CANARY) {
            fprintf(stderr, "byte %zu past struct_size %zu was written\n", i,
                    from);
            exit(1);
        }
}

static int same_str(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a && b && strcmp(a, b) == 0);
}

/* cowblk_get_info into a version-1 struct with struct_size `size`. */
static void info_v1(cowblk_image *img, const cowblk_info *want, size_t size)
{
    alignas(max_align_t) unsigned char buf[sizeof(cowblk_info_v1) + SPARE];
    cowblk_info_v1 *v = (cowblk_info_v1 *)room(buf, size, sizeof buf);
    v->struct_size = size;
    OK(cowblk_get_info(img, (cowblk_info *)v));
    CHECK(v->struct_size == size);
    CHECK(same_str(v->format, want->format));
    CHECK(same_str(v->filename, want->filename));
    CHECK(same_str(v->data_file, want->data_file));
    CHECK(same_str(v->backing_file, want->backing_file));
    CHECK(same_str(v->backing_path, want->backing_path));
    CHECK(same_str(v->backing_format, want->backing_format));
    CHECK(v->virtual_size == want->virtual_size);
    CHECK(v->cluster_size == want->cluster_size);
    CHECK(v->allocated_bytes == want->allocated_bytes);
    CHECK(v->disk_size == want->disk_size);
    CHECK(v->read_only == want->read_only);
    canary_intact(buf, size, sizeof(cowblk_info_v1) + SPARE);
    cowblk_info_free((cowblk_info *)v);
    CHECK(v->format == NULL && v->filename == NULL && v->data_file == NULL &&
          v->backing_file == NULL && v->backing_path == NULL &&
          v->backing_format == NULL);
    canary_intact(buf, size, sizeof(cowblk_info_v1) + SPARE);
}

static void check_v1(cowblk_image *img, const cowblk_check_result *want,
                     size_t size)
{
    alignas(max_align_t) unsigned char
        buf[sizeof(cowblk_check_result_v1) + SPARE];
    cowblk_check_result_v1 *r = (cowblk_check_result_v1 *)room(buf, size, sizeof buf);
    r->struct_size = size;
    OK(cowblk_check(img, 0, (cowblk_check_result *)r));
    CHECK(r->struct_size == size);
    CHECK(r->corruptions == want->corruptions && r->leaks == want->leaks);
    CHECK(r->total_clusters == want->total_clusters);
    CHECK(r->allocated_clusters == want->allocated_clusters);
    CHECK(r->image_end_offset == want->image_end_offset);
    CHECK(strcmp(r->messages, want->messages) == 0);
    canary_intact(buf, size, sizeof(cowblk_check_result_v1) + SPARE);
}

/* Which members a format's table may leave NULL, and must. */
static void table_v1(const cowblk_driver_v1 *d)
{
    CHECK(d->struct_size >= sizeof(cowblk_driver_v1));
    CHECK(d->abi_version >= 1);
    CHECK(d->probe && d->open && d->close && d->readv && d->flush &&
          d->is_allocated && d->block_status && d->get_info && d->get_length);
    int writes = d->create && d->writev && d->truncate && d->discard &&
                 d->write_zeroes;
    if (strcmp(d->format_name, "add-cow") == 0) {
        CHECK(writes && d->change_backing_file && d->check);
    } else if (strcmp(d->format_name, "raw") == 0) {
        CHECK(writes && !d->change_backing_file && !d->check);
    } else if (strcmp(d->format_name, "qcow2") == 0) {
        /* Creates, checks, writes and changes its backing file. */
        CHECK(d->create && d->check && d->writev && d->truncate &&
              d->discard && d->write_zeroes && d->change_backing_file);
    } else {
        fprintf(stderr, "unknown table %s: add it here\n", d->format_name);
        exit(1);
    }
}

int main(void)
{
    char dir[4096], ov[4096], raw[4096];
    make_tmpdir(dir, sizeof dir, "abi-v1");
    make_overlay(dir, 64 * 1024, 4096, ov, sizeof ov);

    cowblk_image *img = NULL;
    OK(cowblk_open(ov, NULL, 0, 0, &img));
    uint8_t data[5000];
    fill(data, sizeof data, 4, 0);
    OK(img_write(img, 3000, data, sizeof data));
    OK(cowblk_flush(img));

    cowblk_info cur;
    memset(&cur, 0, sizeof cur);
    cur.struct_size = sizeof cur;
    OK(cowblk_get_info(img, &cur));
    CHECK(cur.virtual_size == 64 * 1024 && cur.backing_file != NULL);

    /* A version-1 binary's sizeof, and the bare minimum (up to the last
     * version-1 member, without tail padding). */
    info_v1(img, &cur, sizeof(cowblk_info_v1));
    info_v1(img, &cur, offsetof(cowblk_info_v1, read_only) + 1);
    /* One byte short of the first version: refused, nothing written. */
    cowblk_info_v1 small;
    memset(&small, 0, sizeof small);
    small.struct_size = offsetof(cowblk_info_v1, read_only);
    ERR(cowblk_get_info(img, (cowblk_info *)&small), EINVAL);
    CHECK(small.format == NULL && small.virtual_size == 0);
    cowblk_info_free(&cur);

    cowblk_check_result full;
    memset(&full, 0, sizeof full);
    full.struct_size = sizeof full;
    OK(cowblk_check(img, 0, &full));
    CHECK(full.total_clusters == 16 && full.allocated_clusters == 2);
    check_v1(img, &full, sizeof(cowblk_check_result_v1));
    cowblk_check_result_v1 rs;
    memset(&rs, 0, sizeof rs);
    rs.struct_size = sizeof rs - 1;
    ERR(cowblk_check(img, 0, (cowblk_check_result *)&rs), EINVAL);
    CHECK(rs.total_clusters == 0);
    OK(cowblk_close(&img));

    /* Driver tables through the version-1 view. */
    const cowblk_driver *d;
    size_t n = 0;
    for (; (d = cowblk_driver_get(n)) != NULL; n++)
        table_v1((const cowblk_driver_v1 *)d);
    CHECK(n == 3);
    CHECK(COWBLK_ABI_VERSION >= 2 && cowblk_abi_version() == COWBLK_ABI_VERSION);

    /* The NULLs are honest: the flat calls behind them fail. */
    join(raw, sizeof raw, dir, "plain.raw");
    OK(cowblk_create("raw", raw, "size=64k"));
    OK(cowblk_open(raw, NULL, 0, 0, &img));
    ERR(cowblk_check(img, 0, &full), ENOTSUP);
    OK(cowblk_close(&img));
    /* qcow2 creates, writes and checks, as its table's entries say. */
    char q[4096];
    join(q, sizeof q, dir, "new.qcow2");
    OK(cowblk_create("qcow2", q, "size=64k"));
    OK(cowblk_open(q, NULL, 0, 0, &img));
    char buf[4096];
    memset(buf, 0x5a, sizeof buf);
    struct iovec v = { buf, sizeof buf };
    OK(cowblk_pwritev(img, 4096, &v, 1));
    OK(cowblk_close(&img));
    OK(cowblk_open(q, NULL, COWBLK_OPEN_RDONLY, 0, &img));
    cowblk_check_result cr;
    memset(&cr, 0, sizeof cr);
    cr.struct_size = sizeof cr;
    OK(cowblk_check(img, 0, &cr));
    CHECK(cr.corruptions == 0 && cr.leaks == 0);
    OK(cowblk_close(&img));

    rm_tree(dir);
    return 0;
}
