/* cowblk demo: a raw base image with a pattern, an add-cow overlay on it,
 * a few writes, a read-back that checks every byte, and the allocation map.
 *
 *   make demo            (builds the library and runs this in build/demo)
 *   ./demo DIR           (DIR must exist; the images are made inside it)
 */
#include "cowblk.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MiB (1024u * 1024u)
#define SIZE (4 * MiB)

/* Stops with the library's message when a call fails. */
static int check(int r, const char *what)
{
    if (r < 0) {
        fprintf(stderr, "%s failed: %s (%s)\n", what, strerror(-r),
                cowblk_last_error());
        exit(1);
    }
    return r;
}

/* The base image's byte at `off`: each 512-byte sector says its number. */
static char base_byte(uint64_t off)
{
    char line[32];
    int n = snprintf(line, sizeof line, "base sector %llu\n",
                     (unsigned long long)(off / 512));
    return line[(off % 512) % (uint64_t)n];
}

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : ".";
    char base[4096], overlay[4096];
    snprintf(base, sizeof base, "%s/base.raw", dir);
    snprintf(overlay, sizeof overlay, "%s/overlay.add-cow", dir);
    printf("cowblk %s (C ABI %u)\n\n", cowblk_version(), cowblk_abi_version());

    /* 1. The base: a 4 MiB raw image with a pattern. */
    char *buf = malloc(SIZE), *back = malloc(SIZE);
    if (!buf || !back)
        return 1;
    for (uint64_t i = 0; i < SIZE; i++)
        buf[i] = base_byte(i);
    check(cowblk_create("raw", base, "size=4M"), "create base.raw");
    cowblk_image *img = NULL;
    check(cowblk_open(base, "raw", 0, 0, &img), "open base.raw");
    struct iovec whole = {buf, SIZE};
    check(cowblk_pwritev(img, 0, &whole, 1), "write base.raw");
    check(cowblk_close(&img), "close base.raw");
    printf("made %s (raw, 4 MiB, \"base sector N\" in every sector)\n", base);

    /* 2. The overlay: an add-cow file plus its raw image file. */
    check(cowblk_create("add-cow", overlay,
                        "backing_file=base.raw,backing_fmt=raw,"
                        "image_file=overlay.img,cluster_size=64k"),
          "create overlay.add-cow");
    check(cowblk_open(overlay, NULL, 0, 0, &img), "open overlay.add-cow");
    cowblk_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    check(cowblk_get_info(img, &info), "get_info");
    printf("made %s (%s, %llu bytes, %llu-byte clusters)\n"
           "  image file   %s\n  backing file %s (%s)\n\n",
           overlay, info.format, (unsigned long long)info.virtual_size,
           (unsigned long long)info.cluster_size, info.data_file,
           info.backing_file, info.backing_format);
    cowblk_info_free(&info);

    /* 3. Writes: unaligned, in two pieces, and zeros. */
    const char hello[] = "Hello from add-cow! ";
    const char world[] = "(written at an odd offset, in two iovecs)";
    struct iovec two[2] = {{(void *)hello, strlen(hello)},
                           {(void *)world, strlen(world)}};
    uint64_t at = 100000;
    check(cowblk_pwritev(img, at, two, 2), "write");
    memcpy(buf + at, hello, strlen(hello));
    memcpy(buf + at + strlen(hello), world, strlen(world));
    printf("wrote %zu bytes at offset %llu\n", strlen(hello) + strlen(world),
           (unsigned long long)at);

    char block[65536];
    memset(block, 'X', sizeof block);
    struct iovec one = {block, sizeof block};
    check(cowblk_pwritev(img, 1 * MiB, &one, 1), "write");
    memcpy(buf + 1 * MiB, block, sizeof block);
    printf("wrote 65536 bytes of 'X' at offset %u\n", 1 * MiB);

    check(cowblk_write_zeroes(img, 3 * MiB + 4096, 200000), "write_zeroes");
    memset(buf + 3 * MiB + 4096, 0, 200000);
    printf("zeroed 200000 bytes at offset %u\n", 3 * MiB + 4096);
    check(cowblk_flush(img), "flush");
    check(cowblk_close(&img), "close");

    /* 4. Reopen read-only and check every byte against what we expect. */
    check(cowblk_open(overlay, NULL, COWBLK_OPEN_RDONLY, 0, &img), "reopen");
    struct iovec rd = {back, SIZE};
    check(cowblk_preadv(img, 0, &rd, 1), "read");
    for (uint64_t i = 0; i < SIZE; i++) {
        if (back[i] != buf[i]) {
            fprintf(stderr, "byte %llu differs!\n", (unsigned long long)i);
            return 1;
        }
    }
    printf("\nread back all %u bytes: they match (writes where we wrote, the "
           "base elsewhere)\n",
           SIZE);
    char peek[64];
    memcpy(peek, back + at, sizeof peek - 1);
    peek[sizeof peek - 1] = '\0';
    printf("  at %llu: \"%.61s\"\n", (unsigned long long)at, peek);

    /* 5. The allocation map: runs of clusters owned by the overlay. */
    printf("\nallocation map (is_allocated runs):\n");
    printf("  %10s  %10s  %s\n", "offset", "length", "state");
    uint64_t off = 0, pnum = 0;
    while (off < SIZE) {
        int a = check(cowblk_is_allocated(img, off, SIZE - off, &pnum),
                      "is_allocated");
        printf("  %10llu  %10llu  %s\n", (unsigned long long)off,
               (unsigned long long)pnum,
               a ? "allocated in the overlay" : "from the base image");
        off += pnum;
    }
    check(cowblk_close(&img), "close");
    free(buf);
    free(back);
    printf("\ndone: the images are in %s\n", dir);
    return 0;
}
