/* Image locking: a second writer of an open image is refused (-EAGAIN,
 * QEMU's words), as is a reader that would not share write; force-share
 * readers get in, force-share on a read-write open is refused, and
 * COWBLK_OPEN_NO_LOCK takes no lock at all. Locks go with the handle. */
#include "util.h"

#define SIZE (1u << 20)
#define CS 65536u

static void has(const char *needle)
{
    const char *m = cowblk_last_error();
    if (!m || !strstr(m, needle)) {
        fprintf(stderr, "message '%s' lacks '%s'\n", m ? m : "(null)", needle);
        exit(1);
    }
}

int main(void)
{
    char dir[4096], ov[4096], img_file[4096];
    make_tmpdir(dir, sizeof dir, "locking");
    make_overlay(dir, SIZE, CS, ov, sizeof ov);
    join(img_file, sizeof img_file, dir, "ov.img");

    cowblk_image *w = NULL, *other = NULL;
    OK(cowblk_open(ov, "add-cow", 0, 0, &w));

    ERR(cowblk_open(ov, "add-cow", 0, 0, &other), EAGAIN);
    has("Failed to get \"write\" lock");
    CHECK(other == NULL);
    /* The image file under the add-cow file is locked too. */
    ERR(cowblk_open(img_file, "raw", 0, 0, &other), EAGAIN);
    has("Failed to get \"write\" lock");
    /* A reader that needs the image stable is kept out... */
    ERR(cowblk_open(ov, "add-cow", COWBLK_OPEN_RDONLY, 0, &other), EAGAIN);
    has("Failed to get shared \"write\" lock");
    /* ...one that shares write gets in. */
    OK(cowblk_open(ov, "add-cow", COWBLK_OPEN_RDONLY | COWBLK_OPEN_FORCE_SHARE,
                   0, &other));
    uint8_t buf[512];
    OK(img_read(other, 0, buf, sizeof buf));
    OK(cowblk_close(&other));
    /* Force-share only on read-only opens, as QEMU. */
    ERR(cowblk_open(ov, "add-cow", COWBLK_OPEN_FORCE_SHARE, 0, &other), EINVAL);
    has("force-share=on can only be used with read-only images");
    /* A host that locks the files itself opens without locks. */
    OK(cowblk_open(ov, "add-cow", COWBLK_OPEN_NO_LOCK, 0, &other));
    OK(cowblk_close(&other));

    /* Closing the writer releases everything. */
    OK(cowblk_close(&w));
    OK(cowblk_open(ov, "add-cow", 0, 0, &w));
    OK(cowblk_close(&w));
    rm_tree(dir);
    return 0;
}
