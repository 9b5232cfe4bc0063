/* Key/value metadata through the C ABI: set, get (size query, short
 * buffer), list through a callback (and stopping it), delete, an atomic
 * batch that fails as a whole, values that survive a reopen, raw's
 * -ENOTSUP, a read-only handle's -EROFS, and bad arguments. */
#include "util.h"

struct listed {
    int n;
    char keys[8][32];
    uint64_t sizes[8];
};

static int collect(void *opaque, const char *key, uint64_t size)
{
    struct listed *l = opaque;
    if (l->n >= 8)
        return -1;
    snprintf(l->keys[l->n], sizeof l->keys[0], "%s", key);
    l->sizes[l->n] = size;
    l->n++;
    return 0;
}

static int stop_at_first(void *opaque, const char *key, uint64_t size)
{
    (void)key;
    (void)size;
    ++*(int *)opaque;
    return 42;
}

int main(void)
{
    char dir[4096], ov[4096], raw[4096];
    make_tmpdir(dir, sizeof dir, "meta");
    make_overlay(dir, 1 << 20, 4096, ov, sizeof ov);

    cowblk_image *img = NULL;
    OK(cowblk_open(ov, NULL, 0, 0, &img));
    uint64_t len = 0;
    ERR(cowblk_meta_get(img, "license", NULL, 0, &len), ENOENT);

    static uint8_t logo[100000];
    fill(logo, sizeof logo, 5, 0);
    OK(cowblk_meta_set(img, "license", "MIT", 3));
    OK(cowblk_meta_set(img, "logo", logo, sizeof logo));
    OK(cowblk_meta_set(img, "empty", NULL, 0));
    /* Guest data next to the metadata. */
    uint8_t sec[4096];
    fill(sec, sizeof sec, 9, 0);
    OK(img_write(img, 8192, sec, sizeof sec));

    /* Size first, then the bytes; a short buffer gets a prefix. */
    OK(cowblk_meta_get(img, "logo", NULL, 0, &len));
    CHECK(len == sizeof logo);
    static uint8_t back[100000];
    OK(cowblk_meta_get(img, "logo", back, sizeof back, &len));
    CHECK(memcmp(back, logo, sizeof logo) == 0);
    char small[2] = {0, 0};
    OK(cowblk_meta_get(img, "license", small, 2, &len));
    CHECK(len == 3 && small[0] == 'M' && small[1] == 'I');

    struct listed l;
    memset(&l, 0, sizeof l);
    OK(cowblk_meta_list(img, collect, &l));
    CHECK(l.n == 3);
    CHECK(strcmp(l.keys[0], "empty") == 0 && l.sizes[0] == 0);
    CHECK(strcmp(l.keys[1], "license") == 0 && l.sizes[1] == 3);
    CHECK(strcmp(l.keys[2], "logo") == 0 && l.sizes[2] == sizeof logo);
    int calls = 0;
    CHECK(cowblk_meta_list(img, stop_at_first, &calls) == 42 && calls == 1);

    /* A batch with an absent delete changes nothing. */
    cowblk_meta_op bad[2] = {
        {COWBLK_META_SET, "motd", "hi", 2},
        {COWBLK_META_DELETE, "nope", NULL, 0},
    };
    ERR(cowblk_meta_batch(img, bad, 2), ENOENT);
    CHECK(strstr(cowblk_last_error(), "nope") != NULL);
    ERR(cowblk_meta_get(img, "motd", NULL, 0, &len), ENOENT);
    cowblk_meta_op good[3] = {
        {COWBLK_META_SET, "motd", "hi", 2},
        {COWBLK_META_DELETE, "empty", NULL, 0},
        {COWBLK_META_SET, "license", "GPL-2.0", 7},
    };
    OK(cowblk_meta_batch(img, good, 3));
    OK(cowblk_meta_delete(img, "logo"));
    ERR(cowblk_meta_delete(img, "logo"), ENOENT);

    /* Bad arguments. */
    ERR(cowblk_meta_set(img, "", "x", 1), EINVAL);
    char longkey[300];
    memset(longkey, 'k', sizeof longkey - 1);
    longkey[sizeof longkey - 1] = 0;
    ERR(cowblk_meta_set(img, longkey, "x", 1), EINVAL);
    ERR(cowblk_meta_set(img, NULL, "x", 1), EINVAL);
    ERR(cowblk_meta_set(img, "k", NULL, 1), EINVAL);
    ERR(cowblk_meta_get(img, "motd", NULL, 0, NULL), EINVAL);
    ERR(cowblk_meta_get(img, "motd", NULL, 5, &len), EINVAL);
    ERR(cowblk_meta_list(img, NULL, NULL), EINVAL);
    cowblk_meta_op odd = {7, "k", NULL, 0};
    ERR(cowblk_meta_batch(img, &odd, 1), EINVAL);
    ERR(cowblk_meta_batch(img, NULL, 1), EINVAL);
    ERR(cowblk_meta_get(NULL, "motd", NULL, 0, &len), EINVAL);
    OK(cowblk_close(&img));

    /* Everything is there after a reopen, read-only; changes are refused. */
    OK(cowblk_open(ov, NULL, COWBLK_OPEN_RDONLY, 0, &img));
    memset(&l, 0, sizeof l);
    OK(cowblk_meta_list(img, collect, &l));
    CHECK(l.n == 2 && strcmp(l.keys[0], "license") == 0 &&
          strcmp(l.keys[1], "motd") == 0);
    char v[16] = {0};
    OK(cowblk_meta_get(img, "license", v, sizeof v, &len));
    CHECK(len == 7 && memcmp(v, "GPL-2.0", 7) == 0);
    ERR(cowblk_meta_set(img, "k", "v", 1), EROFS);
    uint8_t got[4096];
    OK(img_read(img, 8192, got, sizeof got));
    CHECK(memcmp(got, sec, sizeof sec) == 0);
    OK(cowblk_close(&img));

    /* qcow2 keeps the pairs in a hidden snapshot; the same calls work. */
    char q[4096];
    join(q, sizeof q, dir, "m.qcow2");
    OK(cowblk_create("qcow2", q, "size=1M"));
    OK(cowblk_open(q, "qcow2", 0, 0, &img));
    OK(cowblk_meta_set(img, "logo", logo, sizeof logo));
    OK(img_write(img, 0, sec, sizeof sec));
    cowblk_meta_op two[2] = {
        {COWBLK_META_SET, "a", "1", 1},
        {COWBLK_META_SET, "b", "22", 2},
    };
    OK(cowblk_meta_batch(img, two, 2));
    OK(cowblk_close(&img));
    OK(cowblk_open(q, "qcow2", COWBLK_OPEN_RDONLY, 0, &img));
    memset(back, 0, sizeof back);
    OK(cowblk_meta_get(img, "logo", back, sizeof back, &len));
    CHECK(len == sizeof logo && memcmp(back, logo, sizeof logo) == 0);
    memset(&l, 0, sizeof l);
    OK(cowblk_meta_list(img, collect, &l));
    CHECK(l.n == 3 && strcmp(l.keys[0], "a") == 0 && l.sizes[1] == 2);
    OK(img_read(img, 0, got, sizeof got));
    CHECK(memcmp(got, sec, sizeof sec) == 0);
    cowblk_check_result cr;
    memset(&cr, 0, sizeof cr);
    cr.struct_size = sizeof cr;
    OK(cowblk_check(img, 0, &cr));
    CHECK(cr.corruptions == 0 && cr.leaks == 0);
    OK(cowblk_close(&img));

    /* raw has no place for metadata. */
    join(raw, sizeof raw, dir, "plain.raw");
    OK(cowblk_create("raw", raw, "size=64k"));
    OK(cowblk_open(raw, "raw", 0, 0, &img));
    ERR(cowblk_meta_set(img, "k", "v", 1), ENOTSUP);
    CHECK(strstr(cowblk_last_error(), "not supported by raw") != NULL);
    ERR(cowblk_meta_list(img, collect, &l), ENOTSUP);
    OK(cowblk_close(&img));

    rm_tree(dir);
    return 0;
}
