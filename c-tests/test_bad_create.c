/* Creation that must fail: an unwritable directory, an unwritable existing
 * image file, and bad options. Each returns a negative errno and a message
 * and leaves every directory as it was. Runs as an unprivileged user (root
 * drops to nobody in a child process, since root may write anywhere). */
#include "util.h"

#include <grp.h>
#include <sys/wait.h>

static char top[4096], rw[4096], ro[4096];

struct bad {
    const char *what;
    const char *dir; /* where the add-cow file goes */
    const char *opts;
    int want; /* errno, or 0 for any */
    const char *needle;
};

static void run(const struct bad *b)
{
    char path[4096];
    join(path, sizeof path, b->dir, "new.add-cow");
    printf("%s\n", b->what);
    struct snapshot s_rw, s_ro;
    snapshot_take(&s_rw, rw);
    snapshot_take(&s_ro, ro);
    ERR(cowblk_create("add-cow", path, b->opts), b->want);
    if (b->needle && !strstr(cowblk_last_error(), b->needle)) {
        fprintf(stderr, "message lacks '%s'\n", b->needle);
        exit(1);
    }
    snapshot_same(&s_rw, rw);
    snapshot_same(&s_ro, ro);
    snapshot_free(&s_rw);
    snapshot_free(&s_ro);
}

static int cases(void)
{
    char longname[1100 + 32];
    memset(longname, 'n', sizeof longname);
    memcpy(longname, "size=1M,image_file=", 19);
    longname[sizeof longname - 1] = '\0';
    const struct bad all[] = {
        {"unwritable directory", ro, "size=1M,image_file=new.img", EACCES,
         NULL},
        {"image file in an unwritable directory", rw,
         "size=1M,image_file=../ro/new.img", EACCES, NULL},
        {"existing image file not writable", rw,
         "size=1M,image_file=../ro/base.raw", EACCES, NULL},
        {"image file is the backing file", rw,
         "image_file=base.raw,backing_file=base.raw,backing_fmt=raw", EINVAL,
         "backing file"},
        {"image file is the add-cow file", rw, "size=1M,image_file=new.add-cow",
         EINVAL, "itself"},
        {"backing file without a format", rw,
         "image_file=new.img,backing_file=base.raw", EINVAL, "backing_fmt"},
        {"missing backing file", rw,
         "image_file=new.img,backing_file=nothere.raw,backing_fmt=raw", ENOENT,
         "nothere.raw"},
        {"unknown option", rw, "size=1M,image_file=new.img,colour=blue",
         EINVAL, "colour"},
        {"option without a value", rw, "size=1M,image_file", EINVAL,
         "image_file"},
        {"bad size", rw, "size=12Q,image_file=new.img", EINVAL, "12Q"},
        {"absurd size", rw, "size=16E,image_file=new.img", 0, "size"},
        {"no size and no backing file", rw, "image_file=new.img", EINVAL,
         "size"},
        {"no image file", rw, "size=1M", EINVAL, "image_file"},
        {"cluster size not a power of two", rw,
         "size=1M,image_file=new.img,cluster_size=3000", EINVAL,
         "cluster_size"},
        {"cluster size too large", rw,
         "size=1M,image_file=new.img,cluster_size=4M", EINVAL, "cluster_size"},
        {"image file name longer than 1023 bytes", rw, longname, 0, "1023"},
    };
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        run(&all[i]);

    /* Bad arguments. */
    char path[4096];
    join(path, sizeof path, rw, "new.add-cow");
    ERR(cowblk_create(NULL, path, "size=1M"), EINVAL);
    ERR(cowblk_create("add-cow", NULL, "size=1M"), EINVAL);
    ERR(cowblk_create("add-cow", "", "size=1M"), EINVAL);
    ERR(cowblk_create("qcow3", path, "size=1M"), EINVAL);
    const char *k[2] = {"size", NULL}, *v[2] = {"1M", "x"};
    ERR(cowblk_create_kv("raw", path, k, v, 2), EINVAL);
    ERR(cowblk_create_kv("raw", path, NULL, v, 1), EINVAL);
    CHECK(access(path, F_OK) != 0);

    /* And the same options succeed where they may. */
    OK(cowblk_create_kv("raw", path, k, v, 1));
    OK(cowblk_create("add-cow", path, "size=1M,image_file=new.img"));
    return 0;
}

int main(void)
{
    make_tmpdir(top, sizeof top, "badcreate");
    join(rw, sizeof rw, top, "rw");
    join(ro, sizeof ro, top, "ro");
    CHECK(mkdir(rw, 0777) == 0 && mkdir(ro, 0755) == 0);
    char base[4096];
    join(base, sizeof base, ro, "base.raw");
    OK(cowblk_create("raw", base, "size=1M"));
    CHECK(symlink("../ro/base.raw", (join(base, sizeof base, rw, "base.raw"), base)) == 0);
    CHECK(chmod(top, 0755) == 0 && chmod(rw, 0777) == 0);
    CHECK(chmod(ro, 0555) == 0);
    join(base, sizeof base, ro, "base.raw");
    CHECK(chmod(base, 0444) == 0);

    int rc;
    if (geteuid() != 0) {
        rc = cases();
    } else {
        pid_t pid = fork();
        CHECK(pid >= 0);
        if (pid == 0) {
            if (setgroups(0, NULL) != 0 || setgid(65534) != 0 ||
                setuid(65534) != 0) {
                perror("dropping root");
                _exit(SKIP);
            }
            fflush(stdout);
            _exit(cases());
        }
        int st;
        CHECK(waitpid(pid, &st, 0) == pid);
        rc = WIFEXITED(st) ? WEXITSTATUS(st) : 1;
    }
    chmod(ro, 0755);
    rm_tree(top);
    return rc;
}
