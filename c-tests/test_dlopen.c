/* A host that only dlopens the library: resolves the add-cow driver table
 * by name and runs create, write, read, flush, close, reopen and verify
 * through it. The library's path is argv[1] or $COWBLK_LIB. */
#include <dlfcn.h>

static const char *(*p_last_error)(void);
#define UTIL_LAST_ERROR p_last_error
#include "util.h"

#define SIZE (8u << 20)

int main(int argc, char **argv)
{
    const char *path = argc > 1 ? argv[1] : getenv("COWBLK_LIB");
    CHECK(path != NULL);
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        return 1;
    }
    const cowblk_driver *(*find)(const char *);
    uint32_t (*abi)(void);
    *(void **)&find = dlsym(lib, "cowblk_driver_find");
    *(void **)&abi = dlsym(lib, "cowblk_abi_version");
    *(void **)&p_last_error = dlsym(lib, "cowblk_last_error");
    CHECK(find && abi && p_last_error);
    CHECK(abi() == COWBLK_ABI_VERSION);

    const cowblk_driver *raw = find("raw");
    const cowblk_driver *ac = find("add-cow");
    CHECK(raw && ac);
    /* A host checks the version and size before using any member. */
    CHECK(ac->abi_version == COWBLK_ABI_VERSION);
    CHECK(ac->struct_size >= sizeof(cowblk_driver));
    CHECK(strcmp(ac->format_name, "add-cow") == 0);

    char dir[4096], base[4096], ov[4096];
    make_tmpdir(dir, sizeof dir, "dlopen");
    join(base, sizeof base, dir, "base.raw");
    join(ov, sizeof ov, dir, "disk.add-cow");

    /* The base: pattern 1 written through the raw table. */
    OK(raw->create(base, "size=8M"));
    cowblk_image *img = NULL;
    OK(raw->open(base, 0, 0, &img));
    uint8_t *buf = malloc(SIZE), *back = malloc(SIZE);
    CHECK(buf && back);
    fill(buf, SIZE, 1, 0);
    struct iovec v = {buf, SIZE};
    OK(raw->writev(img, 0, &v, 1));
    OK(raw->close(&img));
    CHECK(img == NULL);

    /* The overlay, probed by its own table. */
    OK(ac->create(ov, "backing_file=base.raw,backing_fmt=raw,"
                      "image_file=disk.img,cluster_size=64k"));
    uint8_t head[4096];
    int fd = open(ov, O_RDONLY);
    CHECK(fd >= 0);
    ssize_t got = read(fd, head, sizeof head);
    close(fd);
    CHECK(got >= 512);
    CHECK(ac->probe(head, (size_t)got, ov) == 100);
    CHECK(raw->probe(head, (size_t)got, ov) == 1);

    OK(ac->open(ov, 0, 0, &img));
    uint64_t len = 0;
    OK(ac->get_length(img, &len));
    CHECK(len == SIZE);
    /* An unaligned write across a cluster boundary, in two segments. */
    uint8_t w1[70000], w2[1000];
    fill(w1, sizeof w1, 2, 100000);
    fill(w2, sizeof w2, 2, 100000 + sizeof w1);
    struct iovec wv[2] = {{w1, sizeof w1}, {w2, sizeof w2}};
    OK(ac->writev(img, 100000, wv, 2));
    OK(ac->flush(img));
    uint64_t pnum = 0;
    CHECK(OK(ac->is_allocated(img, 0, SIZE, &pnum)) == 0 && pnum == 65536);
    CHECK(OK(ac->is_allocated(img, 65536, SIZE, &pnum)) == 1 &&
          pnum == 2 * 65536);
    OK(ac->close(&img));
    CHECK(img == NULL);

    /* Reopen and verify every byte. */
    OK(ac->open(ov, COWBLK_OPEN_RDONLY, 0, &img));
    struct iovec rv = {back, SIZE};
    OK(ac->readv(img, 0, &rv, 1));
    for (uint64_t i = 0; i < SIZE; i++) {
        int mine = i >= 100000 && i < 100000 + sizeof w1 + sizeof w2;
        if (back[i] != pat(mine ? 2 : 1, i)) {
            fprintf(stderr, "byte %llu differs\n", (unsigned long long)i);
            return 1;
        }
    }
    cowblk_info info;
    memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    OK(ac->get_info(img, &info));
    CHECK(strcmp(info.format, "add-cow") == 0);
    CHECK(strcmp(info.backing_file, "base.raw") == 0);
    CHECK(info.allocated_bytes == COWBLK_ALLOCATED_UNKNOWN);
    int (*allocated)(cowblk_image *, uint64_t *);
    *(void **)&allocated = dlsym(lib, "cowblk_get_allocated_bytes");
    CHECK(allocated);
    uint64_t counted = 0;
    OK(allocated(img, &counted));
    CHECK(counted == 2 * 65536);
    void (*info_free)(cowblk_info *);
    *(void **)&info_free = dlsym(lib, "cowblk_info_free");
    CHECK(info_free);
    info_free(&info);
    CHECK(info.format == NULL);
    /* Writes to a read-only handle fail cleanly. */
    ERR(ac->writev(img, 0, &wv[1], 1), EROFS);
    OK(ac->close(&img));

    free(buf);
    free(back);
    rm_tree(dir);
    CHECK(dlclose(lib) == 0);
    return 0;
}
