/* Any offset, any length, any iovec split: thousands of random reads,
 * writes, zeroings and discards on an add-cow overlay (unaligned virtual
 * size, 4 KiB clusters) checked against an in-memory model of its bytes and
 * of which clusters it owns; then is_allocated, block_status, get_info and
 * truncate against the same model. */
#include "util.h"

#define SIZE 1049810u /* not a multiple of the cluster size */
#define CS 4096u
#define NCL ((SIZE + CS - 1) / CS)
#define OPS 3000

static uint8_t model[SIZE + 200000];
static uint8_t owned[NCL + 64];
static uint32_t rng = 12345;

static uint32_t rnd(uint32_t n)
{
    rng = rng * 1664525u + 1013904223u;
    return (rng >> 8) % n;
}

/* Splits [0, len) of buf into up to 8 segments, some empty. */
static int split(uint8_t *buf, size_t len, struct iovec *v)
{
    int n = 1 + (int)rnd(8);
    size_t pos = 0;
    for (int i = 0; i < n; i++) {
        size_t take = i == n - 1 ? len - pos : rnd((uint32_t)(len - pos + 1));
        v[i].iov_base = buf + pos;
        v[i].iov_len = take;
        pos += take;
    }
    return n;
}

static void own(uint64_t off, uint64_t len)
{
    for (uint64_t c = off / CS; c <= (off + len - 1) / CS; c++)
        owned[c] = 1;
}

static void check_range(cowblk_image *img, uint64_t off, size_t len)
{
    static uint8_t buf[sizeof model];
    struct iovec v[8];
    int n = split(buf, len, v);
    OK(cowblk_preadv(img, off, v, n));
    if (memcmp(buf, model + off, len) != 0) {
        for (size_t i = 0; i < len; i++)
            if (buf[i] != model[off + i]) {
                fprintf(stderr, "byte %llu: %u, model %u\n",
                        (unsigned long long)(off + i), buf[i], model[off + i]);
                break;
            }
        exit(1);
    }
}

static void check_allocation(cowblk_image *img, uint64_t size)
{
    /* is_allocated runs must match the model's clusters exactly. */
    uint64_t off = 0, pnum;
    while (off < size) {
        int a = OK(cowblk_is_allocated(img, off, size - off, &pnum));
        CHECK(pnum > 0 && off + pnum <= size);
        for (uint64_t o = off; o < off + pnum; o += CS - o % CS)
            CHECK(owned[o / CS] == a);
        off += pnum;
        /* A run ends where the state changes (or at the end). */
        CHECK(off == size || owned[off / CS] != a);
    }
    /* block_status: allocated data sits at the same offset in the image
     * file; unallocated reports no flags (there is a backing file). */
    for (int i = 0; i < 200; i++) {
        uint64_t o = rnd((uint32_t)size), map = 1;
        int f = OK(cowblk_block_status(img, o, size - o, &pnum, &map));
        int want = owned[o / CS] ? COWBLK_BLOCK_DATA | COWBLK_BLOCK_OFFSET_VALID |
                                       COWBLK_BLOCK_ALLOCATED
                                 : 0;
        if (o + pnum == size)
            want |= COWBLK_BLOCK_EOF;
        CHECK(f == want);
        CHECK(map == (owned[o / CS] ? o : 0));
    }
}

int main(void)
{
    char dir[4096], ov[4096];
    make_tmpdir(dir, sizeof dir, "iomodel");
    make_overlay(dir, SIZE, CS, ov, sizeof ov);
    fill(model, SIZE, 1, 0);
    cowblk_image *img = NULL;
    OK(cowblk_open(ov, NULL, 0, 0, &img));
    uint64_t len0;
    OK(cowblk_get_length(img, &len0));
    CHECK(len0 == SIZE);

    static uint8_t buf[SIZE];
    for (int op = 0; op < OPS; op++) {
        /* Mostly small requests, sometimes large ones. */
        uint32_t max = rnd(10) ? 3 * CS : SIZE;
        uint64_t off = rnd(SIZE);
        size_t len = 1 + rnd(max);
        if (off + len > SIZE)
            len = SIZE - off;
        struct iovec v[8];
        switch (rnd(6)) {
        case 0:
        case 1: {
            fill(buf, len, 2 + (unsigned)op, off);
            int n = split(buf, len, v);
            OK(cowblk_pwritev(img, off, v, n));
            memcpy(model + off, buf, len);
            own(off, len);
            break;
        }
        case 2:
            OK(cowblk_write_zeroes(img, off, len));
            memset(model + off, 0, len);
            own(off, len);
            break;
        case 3:
            /* With a backing file, discard keeps every byte. */
            OK(cowblk_discard(img, off, len));
            break;
        default:
            check_range(img, off, len);
        }
        if (op % 500 == 0)
            OK(cowblk_flush(img));
    }
    check_range(img, 0, SIZE);
    check_allocation(img, SIZE);

    /* get_info agrees with the model. */
    cowblk_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    OK(cowblk_get_info(img, &info));
    uint64_t owned_bytes = 0;
    for (uint64_t c = 0; c < NCL; c++)
        if (owned[c])
            owned_bytes += c == NCL - 1 ? SIZE - c * CS : CS;
    CHECK(strcmp(info.format, "add-cow") == 0);
    CHECK(info.virtual_size == SIZE && info.cluster_size == CS);
    /* get_info stays cheap; the count is a call of its own. */
    CHECK(info.allocated_bytes == COWBLK_ALLOCATED_UNKNOWN);
    uint64_t counted = 0;
    OK(cowblk_get_allocated_bytes(img, &counted));
    CHECK(counted == owned_bytes);
    CHECK(strcmp(info.backing_file, "base.raw") == 0);
    CHECK(strcmp(info.backing_format, "raw") == 0);
    CHECK(strstr(info.backing_path, "/base.raw") != NULL);
    CHECK(strstr(info.data_file, "/ov.img") != NULL);
    CHECK(strcmp(info.filename, ov) == 0);
    CHECK(!info.read_only);
    cowblk_info_free(&info);
    CHECK(info.format == NULL && info.data_file == NULL);
    cowblk_info_free(&info); /* twice is fine */

    /* Reopen: the same bytes and the same map. */
    OK(cowblk_close(&img));
    OK(cowblk_open(ov, NULL, 0, 0, &img));
    check_range(img, 0, SIZE);
    check_allocation(img, SIZE);

    /* Grow: the new bytes read zeros. The cluster holding the old end is
     * owned so that the base does not show through past the old size;
     * clusters past the base's end stay unallocated (they read zeros). */
    OK(cowblk_truncate(img, SIZE + 100000));
    memset(model + SIZE, 0, 100000);
    owned[SIZE / CS] = 1;
    check_range(img, 0, SIZE + 100000);
    check_allocation(img, SIZE + 100000);
    /* Shrink back below where we started. */
    OK(cowblk_truncate(img, SIZE - 5000));
    OK(cowblk_get_length(img, &len0));
    CHECK(len0 == SIZE - 5000);
    check_range(img, 0, SIZE - 5000);
    OK(cowblk_close(&img));
    rm_tree(dir);
    printf("%d random operations matched the model\n", OPS);
    return 0;
}
