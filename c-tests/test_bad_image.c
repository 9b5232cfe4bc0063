/* Hostile add-cow files: each open fails with a negative errno and a message
 * naming the problem, and no file in the directory changes. */
#include "util.h"

#define SIZE (1u << 20)

static char dir[4096], ov[4096];
static uint8_t *orig;
static size_t orig_len;

static void put_be32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (24 - 8 * i));
}

static void put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (56 - 8 * i));
}

/* Writes the damaged header (len bytes of buf), opens it every way a caller
 * might, and checks the refusal. */
static void refuse_unless(const char *what, const uint8_t *buf, size_t len,
                          const char *needle, uint32_t allowed_flag)
{
    printf("%s\n", what);
    write_file(ov, buf, len);
    struct snapshot before;
    snapshot_take(&before, dir);
    const char *formats[2] = {"add-cow", NULL};
    uint32_t flags[3] = {0, COWBLK_OPEN_RDONLY, COWBLK_OPEN_NO_BACKING};
    for (int f = 0; f < 2; f++) {
        /* Bytes that no longer probe as add-cow open as raw: fine. */
        const char *probed = NULL;
        OK(cowblk_probe(ov, &probed));
        if (!formats[f] && strcmp(probed, "add-cow") != 0)
            continue;
        for (int k = 0; k < 3; k++) {
            if (flags[k] == allowed_flag)
                continue;
            cowblk_image *img = (cowblk_image *)&before; /* must stay untouched */
            cowblk_image *sentinel = img;
            ERR(cowblk_open(ov, formats[f], flags[k], 0, &img), 0);
            CHECK(img == sentinel);
            if (needle && !strstr(cowblk_last_error(), needle)) {
                fprintf(stderr, "message lacks '%s'\n", needle);
                exit(1);
            }
        }
    }
    snapshot_same(&before, dir);
    snapshot_free(&before);
    write_file(ov, orig, orig_len);
}

static void refuse(const char *what, const uint8_t *buf, size_t len,
                   const char *needle)
{
    refuse_unless(what, buf, len, needle, UINT32_MAX);
}

int main(void)
{
    make_tmpdir(dir, sizeof dir, "badimage");
    make_overlay(dir, SIZE, 65536, ov, sizeof ov);
    orig = read_file(ov, &orig_len);
    CHECK(orig != NULL && orig_len == 2560 + 2);
    uint8_t *b = malloc(orig_len);
    CHECK(b != NULL);

    /* The untouched file opens: the damage below is what fails. */
    cowblk_image *img = NULL;
    OK(cowblk_open(ov, "add-cow", 0, 0, &img));
    OK(cowblk_close(&img));

    refuse("truncated header", orig, 1000, "truncated");
    refuse("empty file", orig, 0, "truncated");
    refuse("bitmap cut short", orig, 2560, "truncated");

    memcpy(b, orig, orig_len);
    memcpy(b, "ADD_COX\xff", 8);
    refuse("bad magic", b, orig_len, "magic");

    memcpy(b, orig, orig_len);
    put_be32(b + 8, 2);
    refuse("unknown version", b, orig_len, "version 2");

    memcpy(b, orig, orig_len);
    put_be64(b + 2072, 1ull << 40);
    refuse("unknown incompatible feature", b, orig_len, "incompatible feature");

    memcpy(b, orig, orig_len);
    put_be64(b + 2060, UINT64_MAX);
    refuse("absurd size (2^64 - 1)", b, orig_len, "exceeds");

    memcpy(b, orig, orig_len);
    put_be64(b + 2060, 1ull << 62);
    refuse("huge size without the bitmap it needs", b, orig_len, "truncated");

    memcpy(b, orig, orig_len);
    put_be32(b + 2068, 40);
    refuse("cluster_bits 40", b, orig_len, "cluster_bits");

    memcpy(b, orig, orig_len);
    memset(b + 12, 'a', 1024);
    refuse("backing name without NUL", b, orig_len, "NUL");

    memcpy(b, orig, orig_len);
    memset(b + 1036, 'b', 1024);
    refuse("image name without NUL", b, orig_len, "NUL");

    memcpy(b, orig, orig_len);
    memset(b + 1036, 0, 1024);
    refuse("empty image name", b, orig_len, "image file");

    memcpy(b, orig, orig_len);
    memset(b + 12, 0, 1024);
    memcpy(b + 12, "ov.add-cow", 10);
    memcpy(b + 2096, "add-cow", 7);
    /* (Without opening the backing file there is no loop to refuse.) */
    refuse_unless("backing file is itself", b, orig_len, "loop",
                  COWBLK_OPEN_NO_BACKING);

    /* A missing image file. */
    char img_path[4096];
    join(img_path, sizeof img_path, dir, "ov.img");
    size_t img_len;
    uint8_t *img_bytes = read_file(img_path, &img_len);
    CHECK(img_bytes != NULL);
    CHECK(unlink(img_path) == 0);
    refuse("missing image file", orig, orig_len, "ov.img");
    write_file(img_path, img_bytes, img_len);

    /* A missing backing file: refused, unless the caller asked for none. */
    char base[4096], moved[4096];
    join(base, sizeof base, dir, "base.raw");
    join(moved, sizeof moved, dir, "base.moved");
    CHECK(rename(base, moved) == 0);
    printf("missing backing file\n");
    struct snapshot before;
    snapshot_take(&before, dir);
    ERR(cowblk_open(ov, NULL, 0, 0, &img), ENOENT);
    CHECK(strstr(cowblk_last_error(), "base.raw") != NULL);
    snapshot_same(&before, dir);
    snapshot_free(&before);
    OK(cowblk_open(ov, NULL, COWBLK_OPEN_NO_BACKING | COWBLK_OPEN_RDONLY, 0,
                   &img));
    OK(cowblk_close(&img));

    free(b);
    free(img_bytes);
    free(orig);
    rm_tree(dir);
    return 0;
}
