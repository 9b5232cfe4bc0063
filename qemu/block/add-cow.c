/*
 * add-cow (and the library's other formats) for QEMU 7.2, through libcowblk.
 *
 * This file is compiled inside a QEMU tree (see scripts/qemu-build.sh); it
 * forwards every block-driver call to libcowblk, a Rust library with a C ABI.
 *
 * Who does what:
 *  - libcowblk reads and writes the add-cow file and its raw image file.  It
 *    opens files by path, so this driver takes the file name of its "file"
 *    child (a local file, possibly under filters; see add_cow_local_file)
 *    and hands it to the library.  The file child stays open so that QEMU's
 *    image locking and permission system still cover the add-cow file.
 *  - QEMU owns the backing chain (supports_backing, bs->backing): the library
 *    is opened in its "caller manages the backing file" mode.  Reads fill
 *    unallocated ranges from bs->backing; writes that partly cover an
 *    unallocated cluster first read the cluster's old contents from
 *    bs->backing and pass them to the library (cowblk_pwritev_cow).
 *  - Every library call on the request path (read, write, block status,
 *    zeroes, flush, truncate, check, create) runs on the AioContext's thread
 *    pool (thread_pool_submit_co), so the event loop never waits for the
 *    disk.  Worker functions call only cowblk_* (and QEMU's iovec helpers);
 *    every bdrv_* call stays in coroutine context.  Open, close, reopen,
 *    getlength and change_backing_file run in the main loop synchronously,
 *    as QEMU's own drivers do there; they use only the library's cheap
 *    calls (cowblk_get_info reads no bitmap).  The allocated file size
 *    (query-block, qemu-img info) is a stat on the pool, polled for.
 *  - Locking: QEMU's file-posix locks the add-cow file (bs->file); the
 *    library is opened with COWBLK_OPEN_NO_LOCK so that nothing locks twice.
 *
 * The library's qcow2 driver, when the library has one, is registered as
 * format "cowblk-qcow2" (never chosen by probing) so that qemu-img bench can
 * compare it with QEMU's own qcow2 in one binary.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qapi/qapi-types-block-core.h"
#include "block/block_int.h"
#include "block/raw-aio.h"
#include "block/thread-pool.h"
#include "qemu/cutils.h"
#include "qemu/error-report.h"
#include "qemu/module.h"
#include "qemu/option.h"
#include "qemu/memalign.h"
#include "qapi/qmp/qdict.h"

#include <cowblk.h>

#define ADD_COW_ERR_LEN 512

/* The most unallocated runs one read task reports before returning. */
#define ADD_COW_MAX_HOLES 32

/*
 * A cluster whose copy-on-write (backing read, then the write) this node
 * has in flight; lives on the writing coroutine's stack.  Other writes to
 * the cluster wait for it instead of copying the cluster again.
 */
typedef struct AddCowInflight {
    uint64_t cluster;           /* guest offset of the cluster */
    CoQueue waiters;
    QLIST_ENTRY(AddCowInflight) next;
} AddCowInflight;

/* A library call for a worker thread; on the calling coroutine's stack. */
typedef struct AddCowJob {
    ThreadPoolFunc *fn;
    void *arg;
    int ret;
    Coroutine *co;
    QSIMPLEQ_ENTRY(AddCowJob) next;
} AddCowJob;

/*
 * QEMU's qcow2 runtime options the library's qcow2 takes too (cache sizes
 * and overlap checks, cowblk_open_kv; cowblk_qcow2_runtime_opts lists
 * them); the values as given (the library parses them as QEMU's qcow2
 * does).  Any other qcow2 option stays unconsumed, so QEMU refuses it
 * rather than have it silently ignored.
 */
#define ADD_COW_LIB_OPTS 5

typedef struct AddCowLibOpts {
    const char *keys[ADD_COW_LIB_OPTS];
    char *vals[ADD_COW_LIB_OPTS];
    int n;
} AddCowLibOpts;

typedef struct BDRVAddCowState {
    struct cowblk_image *img;
    AddCowLibOpts lib_opts;     /* the options the handle was opened with */
    const char *lib_format;     /* library format name */
    uint64_t cluster_size;
    bool writable;
    char *image_file;           /* the raw image file, resolved (for info) */
    /*
     * Taken by a request whose metadata lookup missed the cache while a
     * worker loads it, so that the requests missing at the same time wait
     * for one load (as QEMU's qcow2 waits on its lock for an L2 load)
     * rather than each sending a worker.
     */
    CoMutex load_lock;
    QLIST_HEAD(, AddCowInflight) inflight;
    /* library calls waiting for a worker (add_cow_submit) */
    QemuMutex jobs_lock;
    QSIMPLEQ_HEAD(, AddCowJob) jobs;
    int njobs;                  /* queued, not yet taken */
    int nworkers;               /* workers running (taking jobs) */
    /* backing reads collecting for one merged read (add_cow_read_backing) */
    struct AddCowMerge *merge;
    /* reads and writes of the node in progress in this driver */
    int nrequests;
    /* a backing fd whose RWF_NOWAIT reads failed as unsupported */
    int nowait_bad_fd;
    /* a request failure was reported (only the first one is) */
    bool request_error_reported;
} BDRVAddCowState;

/* The library format behind a QEMU format name. */
static const char *lib_format_of(BlockDriverState *bs);

/* ---- running library calls on the thread pool ---- */

/*
 * Library calls run on workers that take them from a queue, one after
 * another, and wake each caller as its call returns.  Requests that arrive
 * while a worker is busy wait in the queue for it rather than each waking
 * a thread of its own (a thread-pool hop per request: a futex wake to
 * start it, an eventfd write to finish), so at depth the wake-ups are
 * shared; a new worker starts only when more calls wait than workers run
 * (up to ADD_COW_MAX_WORKERS), so a slow call (a flush) does not hold up
 * the rest and independent calls still run in parallel.
 */
#define ADD_COW_MAX_WORKERS 4

static void add_cow_jobs_init(BDRVAddCowState *s)
{
    qemu_mutex_init(&s->jobs_lock);
    QSIMPLEQ_INIT(&s->jobs);
    s->njobs = 0;
    s->nworkers = 0;
}

/* Waits for the workers to leave (they touch s until they do). */
static void add_cow_jobs_destroy(BDRVAddCowState *s)
{
    qemu_mutex_lock(&s->jobs_lock);
    while (s->nworkers > 0) {
        qemu_mutex_unlock(&s->jobs_lock);
        g_usleep(100);
        qemu_mutex_lock(&s->jobs_lock);
    }
    qemu_mutex_unlock(&s->jobs_lock);
    qemu_mutex_destroy(&s->jobs_lock);
}

static int add_cow_job_worker(void *opaque)
{
    BDRVAddCowState *s = opaque;
    AddCowJob *j;

    qemu_mutex_lock(&s->jobs_lock);
    while ((j = QSIMPLEQ_FIRST(&s->jobs)) != NULL) {
        Coroutine *co = j->co;

        QSIMPLEQ_REMOVE_HEAD(&s->jobs, next);
        s->njobs--;
        qemu_mutex_unlock(&s->jobs_lock);
        j->ret = j->fn(j->arg);
        /* j lives on co's stack: not touched once co may run */
        aio_co_wake(co);
        qemu_mutex_lock(&s->jobs_lock);
    }
    s->nworkers--;
    qemu_mutex_unlock(&s->jobs_lock);
    return 0;
}

static int coroutine_fn add_cow_submit(BlockDriverState *bs,
                                       ThreadPoolFunc *fn, void *arg)
{
    BDRVAddCowState *s = bs->opaque;
    AddCowJob j = { .fn = fn, .arg = arg, .co = qemu_coroutine_self() };
    bool start;

    qemu_mutex_lock(&s->jobs_lock);
    QSIMPLEQ_INSERT_TAIL(&s->jobs, &j, next);
    s->njobs++;
    start = s->nworkers < ADD_COW_MAX_WORKERS && s->njobs > s->nworkers;
    if (start) {
        s->nworkers++;
    }
    qemu_mutex_unlock(&s->jobs_lock);
    if (start) {
        thread_pool_submit(aio_get_thread_pool(bdrv_get_aio_context(bs)),
                           add_cow_job_worker, s);
    }
    qemu_coroutine_yield();
    return j.ret;
}

/* Copies the library's (thread-local) message for a failed call. */
static void save_err(char *dst, int ret)
{
    const char *m = cowblk_last_error();
    snprintf(dst, ADD_COW_ERR_LEN, "%s", m && *m ? m : strerror(-ret));
}

/*
 * The library's reason alone, where QEMU names the file itself: what
 * follows "could not VERB 'PATH': " in its message (as QEMU's drivers word
 * their errors), else the whole message.
 */
static const char *lib_reason(const char *msg, const char *verb,
                              const char *path)
{
    g_autofree char *pre = g_strdup_printf("could not %s '%s': ", verb, path);
    const char *why = strstr(msg, pre);

    return why ? why + strlen(pre) : msg;
}

/* ---- probe, open, close ---- */

/*
 * The reason a request failed, on stderr: for the node's first failure
 * only.  The errno goes back to the caller every time; a guest that keeps
 * retrying a failing read must not flood the log (QEMU's own drivers print
 * nothing for a failed request).
 */
static void G_GNUC_PRINTF(3, 4) add_cow_request_error(BlockDriverState *bs,
                                                      const char *what,
                                                      const char *fmt, ...)
{
    BDRVAddCowState *s = bs->opaque;
    g_autofree char *msg = NULL;
    va_list ap;

    if (s->request_error_reported) {
        return;
    }
    s->request_error_reported = true;
    va_start(ap, fmt);
    msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    error_report("%s: %s failed: %s (later request failures of this node "
                 "are not reported)", bs->filename, what, msg);
}

static int add_cow_probe(const uint8_t *buf, int buf_size,
                         const char *filename)
{
    const struct cowblk_driver *d = cowblk_driver_find("add-cow");
    int score;

    if (!d || !d->probe || buf_size <= 0) {
        return 0;
    }
    score = d->probe(buf, buf_size, filename);
    return score < 0 ? 0 : score;
}

/* Whether a blkdebug node was given rules that act on I/O (errors, states). */
static bool blkdebug_has_rules(BlockDriverState *f)
{
    const QDictEntry *e;

    for (e = qdict_first(f->options); e; e = qdict_next(f->options, e)) {
        const char *k = qdict_entry_key(e);
        if (strstart(k, "inject-error", NULL) || strstart(k, "set-state", NULL)
            || strstart(k, "config", NULL)) {
            return true;
        }
    }
    return false;
}

/*
 * The local file under the "file" child, for the library to open by path.
 * Filters between are passed over: the library does its own I/O, so they
 * never see it.  That is harmless for filters that only shape requests
 * (blkdebug's align, throttle), but error injection would silently not
 * happen, so a blkdebug with rules is refused.
 */
static BlockDriverState *add_cow_local_file(BlockDriverState *bs,
                                            Error **errp)
{
    BlockDriverState *f = bs->file->bs;

    while (f && f->drv && f->drv->is_filter) {
        if (!strcmp(f->drv->format_name, "blkdebug") && blkdebug_has_rules(f)) {
            error_setg(errp, "%s: blkdebug error injection cannot reach the "
                       "files libcowblk opens itself", bs->drv->format_name);
            return NULL;
        }
        f = bdrv_filter_bs(f);
    }
    if (!f || !f->drv || (strcmp(f->drv->format_name, "file") &&
                          strcmp(f->drv->format_name, "host_device"))) {
        error_setg(errp, "%s images must be local files (protocol 'file'), "
                   "not '%s'", bs->drv->format_name,
                   f && f->drv ? f->drv->format_name : "?");
        return NULL;
    }
    return f;
}

static QemuOptsList cowblk_qcow2_runtime_opts = {
    .name = "cowblk-qcow2",
    .head = QTAILQ_HEAD_INITIALIZER(cowblk_qcow2_runtime_opts.head),
    .desc = {
        {
            .name = "cache-size",
            .type = QEMU_OPT_SIZE,
            .help = "Maximum combined metadata (L2 tables and refcount "
                    "blocks) cache size",
        },
        {
            .name = "l2-cache-size",
            .type = QEMU_OPT_SIZE,
            .help = "Maximum L2 table cache size",
        },
        {
            .name = "refcount-cache-size",
            .type = QEMU_OPT_SIZE,
            .help = "Maximum refcount block cache size",
        },
        {
            .name = "l2-cache-entry-size",
            .type = QEMU_OPT_SIZE,
            .help = "Size of each entry in the L2 cache (checked; the "
                    "library caches whole tables)",
        },
        {
            .name = "overlap-check",
            .type = QEMU_OPT_STRING,
            .help = "Selects which overlap checks to perform from a range "
                    "of templates (none, constant, cached, all)",
        },
        { /* end of list */ }
    },
};

static void add_cow_lib_opts_free(AddCowLibOpts *o)
{
    for (int i = 0; i < o->n; i++) {
        g_free(o->vals[i]);
    }
    o->n = 0;
}

static bool add_cow_lib_opts_equal(const AddCowLibOpts *a,
                                   const AddCowLibOpts *b)
{
    if (a->n != b->n) {
        return false;
    }
    for (int i = 0; i < a->n; i++) {
        if (strcmp(a->keys[i], b->keys[i]) || strcmp(a->vals[i], b->vals[i])) {
            return false;
        }
    }
    return true;
}

/* Takes the library's qcow2 options out of options (qcow2 only). */
static int add_cow_absorb_opts(BlockDriverState *bs, QDict *options,
                               AddCowLibOpts *o, Error **errp)
{
    QemuOpts *opts;

    o->n = 0;
    if (strcmp(lib_format_of(bs), "qcow2")) {
        return 0;
    }
    opts = qemu_opts_create(&cowblk_qcow2_runtime_opts, NULL, 0,
                            &error_abort);
    if (!qemu_opts_absorb_qdict(opts, options, errp)) {
        qemu_opts_del(opts);
        return -EINVAL;
    }
    for (int i = 0; i < ADD_COW_LIB_OPTS; i++) {
        const char *k = cowblk_qcow2_runtime_opts.desc[i].name;
        const char *v = qemu_opt_get(opts, k);

        if (v) {
            o->keys[o->n] = k;
            o->vals[o->n++] = g_strdup(v);
        }
    }
    qemu_opts_del(opts);
    return 0;
}

static int add_cow_open_lib(BlockDriverState *bs, int flags,
                            const AddCowLibOpts *o,
                            struct cowblk_image **out, Error **errp)
{
    BlockDriverState *file = add_cow_local_file(bs, errp);
    /*
     * No library locks: QEMU's file-posix locks the add-cow file through
     * bs->file, and a second lock from the library's own descriptor would
     * conflict with QEMU's (OFD locks) and with the handle a reopen opens
     * beside the old one.
     */
    uint32_t oflags = COWBLK_OPEN_CALLER_BACKING | COWBLK_OPEN_NO_LOCK;
    int ret;

    if (!file) {
        return -ENOTSUP;
    }
    g_autofree char *path = g_strdup(file->filename);

    if (!(flags & BDRV_O_RDWR)) {
        oflags |= COWBLK_OPEN_RDONLY;
    }
    /*
     * A -snapshot overlay: file-posix unlinked the file as soon as it had
     * opened it (BDRV_O_TEMPORARY), so open its descriptor through /proc.
     */
    if ((file->open_flags & BDRV_O_TEMPORARY) && access(path, F_OK) < 0) {
        bool direct;
        int fd = raw_file_fd(file, &direct);

        if (fd >= 0) {
            g_free(path);
            path = g_strdup_printf("/proc/self/fd/%d", fd);
        }
    }
    ret = cowblk_open_kv(path, lib_format_of(bs), oflags, 0,
                         (const char *const *)o->keys,
                         (const char *const *)o->vals, o->n, out);
    if (ret < 0) {
        /* QEMU names the image itself ("can't open device F: ...") */
        const char *m = cowblk_last_error();

        error_setg(errp, "%s", lib_reason(m && *m ? m : strerror(-ret),
                                          "open", path));
    }
    return ret;
}

static int add_cow_open(BlockDriverState *bs, QDict *options, int flags,
                        Error **errp)
{
    BDRVAddCowState *s = bs->opaque;
    struct cowblk_info info = { .struct_size = sizeof(info) };
    uint64_t len;
    int ret;

    add_cow_jobs_init(s);
    ret = bdrv_open_file_child(NULL, options, "file", bs, errp);
    if (ret < 0) {
        return ret;
    }
    s->lib_format = lib_format_of(bs);
    ret = add_cow_absorb_opts(bs, options, &s->lib_opts, errp);
    if (ret < 0) {
        return ret;
    }
    ret = add_cow_open_lib(bs, flags, &s->lib_opts, &s->img, errp);
    if (ret < 0) {
        add_cow_lib_opts_free(&s->lib_opts);
        return ret;
    }
    s->writable = flags & BDRV_O_RDWR;

    ret = cowblk_get_info(s->img, &info);
    if (ret < 0) {
        error_setg(errp, "%s", cowblk_last_error());
        cowblk_close(&s->img);
        return ret;
    }
    s->cluster_size = info.cluster_size;
    qemu_co_mutex_init(&s->load_lock);
    s->nowait_bad_fd = -1;
    QLIST_INIT(&s->inflight);
    s->image_file = g_strdup(info.data_file);
    pstrcpy(bs->backing_file, sizeof(bs->backing_file),
            info.backing_file ? info.backing_file : "");
    pstrcpy(bs->backing_format, sizeof(bs->backing_format),
            info.backing_format ? info.backing_format : "");
    pstrcpy(bs->auto_backing_file, sizeof(bs->auto_backing_file),
            bs->backing_file);
    cowblk_info_free(&info);
    ret = cowblk_get_length(s->img, &len);
    if (ret < 0) {
        error_setg(errp, "%s", cowblk_last_error());
        cowblk_close(&s->img);
        return ret;
    }
    bs->total_sectors = DIV_ROUND_UP(len, BDRV_SECTOR_SIZE);
    /* the library makes grown space read zeros in caller-backing mode */
    bs->supported_truncate_flags = BDRV_REQ_ZERO_WRITE;
    /* both are passed on to the library (cowblk_write_zeroes_flags) */
    bs->supported_zero_flags = BDRV_REQ_MAY_UNMAP | BDRV_REQ_NO_FALLBACK;
    return 0;
}

static void add_cow_close(BlockDriverState *bs)
{
    BDRVAddCowState *s = bs->opaque;

    add_cow_jobs_destroy(s);
    if (s->img && cowblk_close(&s->img) < 0) {
        error_report("%s: close failed: %s", bs->filename,
                     cowblk_last_error());
    }
    g_free(s->image_file);
    s->image_file = NULL;
    add_cow_lib_opts_free(&s->lib_opts);
}

static int64_t add_cow_getlength(BlockDriverState *bs)
{
    BDRVAddCowState *s = bs->opaque;
    uint64_t len;
    int ret = cowblk_get_length(s->img, &len);

    return ret < 0 ? ret : (int64_t)len;
}

/* A reopen's new handle and the options it was opened with. */
typedef struct AddCowReopen {
    struct cowblk_image *img;
    AddCowLibOpts opts;
} AddCowReopen;

/*
 * Reopen: a change between read-only and read-write, or of the library
 * options (QEMU's qcow2 takes new cache sizes on reopen too), opens a new
 * library handle in prepare (so that errors are reported there) and swaps
 * it in on commit; otherwise the handle stays.  The block layer has
 * drained and flushed the node before prepare.
 */
static int add_cow_reopen_prepare(BDRVReopenState *state,
                                  BlockReopenQueue *queue, Error **errp)
{
    BDRVAddCowState *s = state->bs->opaque;
    AddCowReopen *r = g_new0(AddCowReopen, 1);
    bool rw = state->flags & BDRV_O_RDWR;
    int ret;

    state->opaque = NULL;
    ret = add_cow_absorb_opts(state->bs, state->options, &r->opts, errp);
    if (ret < 0) {
        g_free(r);
        return ret;
    }
    if (rw == s->writable && add_cow_lib_opts_equal(&r->opts, &s->lib_opts)) {
        add_cow_lib_opts_free(&r->opts);
        g_free(r);
        return 0;
    }
    if (s->writable) {
        ret = cowblk_flush(s->img);
        if (ret < 0) {
            error_setg(errp, "%s", cowblk_last_error());
            goto fail;
        }
    }
    ret = add_cow_open_lib(state->bs, state->flags, &r->opts, &r->img, errp);
    if (ret < 0) {
        goto fail;
    }
    state->opaque = r;
    return 0;

fail:
    add_cow_lib_opts_free(&r->opts);
    g_free(r);
    return ret;
}

static void add_cow_reopen_commit(BDRVReopenState *state)
{
    BDRVAddCowState *s = state->bs->opaque;
    struct cowblk_image *old = s->img;
    AddCowReopen *r = state->opaque;

    if (!r) {
        return;
    }
    s->img = r->img;
    s->writable = state->flags & BDRV_O_RDWR;
    add_cow_lib_opts_free(&s->lib_opts);
    s->lib_opts = r->opts;
    g_free(r);
    state->opaque = NULL;
    if (cowblk_close(&old) < 0) {
        error_report("%s: closing the old handle failed: %s",
                     state->bs->filename, cowblk_last_error());
    }
}

static void add_cow_reopen_abort(BDRVReopenState *state)
{
    AddCowReopen *r = state->opaque;

    if (r) {
        cowblk_close(&r->img);
        add_cow_lib_opts_free(&r->opts);
        g_free(r);
        state->opaque = NULL;
    }
}

/* ---- iovec slices without allocation ---- */

/* Slices of up to this many segments live on the caller's stack. */
#define ADD_COW_FIXED_IOV 16

typedef struct AddCowIov {
    struct iovec fixed[ADD_COW_FIXED_IOV];
    struct iovec *iov;          /* fixed, or the heap for longer slices */
    int niov;
} AddCowIov;

/*
 * Bytes [off, off + len) of qiov as an iovec array for the library.  The
 * common request (a few segments) allocates nothing; add_cow_iov_free
 * releases the rare longer one.  Pure (no bdrv_*): usable in a worker.
 */
static void add_cow_iov_slice(AddCowIov *v, QEMUIOVector *qiov, size_t off,
                              size_t len)
{
    int n = qemu_iovec_subvec_niov(qiov, off, len);

    v->iov = n <= ADD_COW_FIXED_IOV ? v->fixed : g_new(struct iovec, n);
    v->niov = iov_copy(v->iov, n, qiov->iov, qiov->niov, off, len);
}

static void add_cow_iov_free(AddCowIov *v)
{
    if (v->iov != v->fixed) {
        g_free(v->iov);
    }
}

/* ---- reads ---- */

static int coroutine_fn add_cow_load_metadata(BlockDriverState *bs,
                                              uint64_t offset, uint64_t bytes);

typedef struct AddCowHole {
    uint64_t off, len;
} AddCowHole;

/*
 * A read task: on a worker, reads every allocated run of a part of the
 * request through the library and notes the unallocated runs ("holes") for
 * the coroutine to fill from the backing file.  It stops early when the
 * hole list is full; done says how far it got.  It lives on the
 * coroutine's stack.
 */
typedef struct AddCowReadTask {
    struct cowblk_image *img;
    QEMUIOVector *qiov;
    uint64_t offset;            /* guest offset of qiov byte 0 */
    uint64_t start, bytes;      /* the part of qiov to do, relative */
    uint64_t done;
    AddCowHole holes[ADD_COW_MAX_HOLES];
    int nholes;
    char err[ADD_COW_ERR_LEN];
} AddCowReadTask;

static int add_cow_read_worker(void *opaque)
{
    AddCowReadTask *t = opaque;
    int ret = 0;

    t->done = 0;
    t->nholes = 0;
    while (t->done < t->bytes) {
        uint64_t pos = t->offset + t->start + t->done;
        uint64_t n = 0;
        int st;

        st = ret = cowblk_block_status(t->img, pos, t->bytes - t->done, &n,
                                       NULL);
        if (ret < 0) {
            break;
        }
        if (n == 0 || n > t->bytes - t->done) {
            snprintf(t->err, sizeof(t->err), "library block status returned "
                     "%" PRIu64 " bytes at offset %" PRIu64, n, pos);
            return -EIO;
        }
        if (st & COWBLK_BLOCK_ALLOCATED) {
            AddCowIov part;
            add_cow_iov_slice(&part, t->qiov, t->start + t->done, n);
            ret = cowblk_preadv(t->img, pos, part.iov, part.niov);
            add_cow_iov_free(&part);
            if (ret < 0) {
                break;
            }
        } else {
            if (t->nholes == ADD_COW_MAX_HOLES) {
                break;
            }
            t->holes[t->nholes].off = t->start + t->done;
            t->holes[t->nholes].len = n;
            t->nholes++;
        }
        t->done += n;
    }
    if (ret < 0) {
        save_err(t->err, ret);
    }
    return ret;
}

/*
 * Backing reads of requests in flight together are merged.  The first one
 * in waits one turn of the event loop (aio_co_schedule) for the others
 * issued in the same turn; then each run of adjacent ranges goes to
 * bs->backing as one request over the callers' own buffers (a combined
 * vector: nothing is copied or cached), issued by the run's first member
 * so that separate runs still proceed in parallel.  Sequential reads at
 * queue depth 16 then cost one thread-pool hop per batch where QEMU's
 * qcow2 pays one per request (the hop, not the copy, is what a 4 KiB
 * backing read costs on file-posix).  A request with nothing else in
 * flight (s->nrequests, counted by the driver's entry points: bs->in_flight
 * also counts the BlockBackend's hold on a root node) reads at once, as
 * before.  A merged read that fails is retried
 * piece by piece, so each request gets its own result.
 */
#define ADD_COW_MERGE_MAX 64            /* requests per batch */
#define ADD_COW_MERGE_BYTES (1 << 20)   /* bytes per merged read */

typedef struct AddCowBackingRead {
    uint64_t off, len;                  /* guest range */
    QEMUIOVector *qiov;
    size_t qiov_off;
    Coroutine *co;
    int ret;
    bool done;
    bool head;                          /* issues the run starting here */
    int niov;                           /* iovecs of its part of qiov */
    struct AddCowBackingRead *run_next; /* next member of the run */
    QSIMPLEQ_ENTRY(AddCowBackingRead) next;
} AddCowBackingRead;

typedef struct AddCowMerge {
    QSIMPLEQ_HEAD(, AddCowBackingRead) reads;
    int n;
} AddCowMerge;

static int coroutine_fn add_cow_backing_one(BlockDriverState *bs,
                                            AddCowBackingRead *r)
{
    return bdrv_co_preadv_part(bs->backing, r->off, r->len, r->qiov,
                               r->qiov_off, 0);
}

/* Issues the run headed by h and hands every member its result. */
static void coroutine_fn add_cow_merge_read(BlockDriverState *bs,
                                            AddCowBackingRead *h)
{
    AddCowBackingRead *r;
    int ret;

    if (!h->run_next) {
        ret = add_cow_backing_one(bs, h);
    } else {
        QEMUIOVector q;
        int niov = 0;
        uint64_t len = 0;

        for (r = h; r; r = r->run_next) {
            niov += r->niov;
            len += r->len;
        }
        qemu_iovec_init(&q, niov);
        for (r = h; r; r = r->run_next) {
            qemu_iovec_concat(&q, r->qiov, r->qiov_off, r->len);
        }
        ret = bdrv_co_preadv(bs->backing, h->off, len, &q, 0);
        qemu_iovec_destroy(&q);
    }
    for (r = h; r; r = r->run_next) {
        if (ret < 0 && h->run_next) {
            r->ret = add_cow_backing_one(bs, r);
        } else {
            r->ret = ret;
        }
    }
    for (r = h; r;) {
        AddCowBackingRead *n = r->run_next;

        r->done = true;
        if (r != h) {
            aio_co_wake(r->co);
        }
        r = n;
    }
}

/*
 * The batch is closed: sort it, chain each run of adjacent ranges (within
 * the size and iovec limits) and wake each run's head, the leader's own
 * run excepted (its caller issues that one).
 */
static void add_cow_merge_plan(AddCowMerge *m, AddCowBackingRead *leader)
{
    AddCowBackingRead *v[ADD_COW_MERGE_MAX], *r;
    int n = 0;

    QSIMPLEQ_FOREACH(r, &m->reads, next) {
        int i = n++;

        while (i > 0 && v[i - 1]->off > r->off) {
            v[i] = v[i - 1];
            i--;
        }
        v[i] = r;
    }
    for (int i = 0; i < n;) {
        AddCowBackingRead *h = v[i];
        uint64_t end = h->off + h->len;
        int niov = h->niov;
        int j = i + 1;

        h->head = true;
        while (j < n && v[j]->off == end &&
               end + v[j]->len - h->off <= ADD_COW_MERGE_BYTES &&
               niov + v[j]->niov <= IOV_MAX) {
            v[j - 1]->run_next = v[j];
            end += v[j]->len;
            niov += v[j]->niov;
            j++;
        }
        if (h != leader) {
            aio_co_wake(h->co);
        }
        i = j;
    }
}

/*
 * A backing read served from the page cache in the coroutine, as the
 * library serves this node's own data (cowblk_preadv_nb): no thread-pool
 * hop when the bytes are cached, where bdrv_co_preadv on file-posix always
 * hops.  Only where that read is exactly what the block layer would read:
 * the backing node is raw without offset or size (a filter of its file)
 * over a plain file-posix node opened without O_DIRECT, the range lies
 * inside the file's length, and neither node has a copy-on-read, a
 * serialising request in flight, a drain, or a parent that may write (a
 * commit job, say).  No yield between these checks and the read, so
 * nothing can change the graph or the fd meanwhile (a reopen drains this
 * node first).  Anything else, a short read, or EAGAIN (not cached)
 * returns false and the caller reads through the block layer as before.
 */
#if defined(CONFIG_POSIX) && defined(RWF_NOWAIT)
static bool add_cow_node_quiet(BlockDriverState *n)
{
    BdrvChild *c;

    if (n->copy_on_read || n->quiesce_counter ||
        qatomic_read(&n->serialising_in_flight)) {
        return false;
    }
    QLIST_FOREACH(c, &n->parents, next_parent) {
        if (c->perm & (BLK_PERM_WRITE | BLK_PERM_WRITE_UNCHANGED |
                       BLK_PERM_RESIZE)) {
            return false;
        }
    }
    return true;
}

static bool coroutine_fn add_cow_backing_nowait(BlockDriverState *bs,
                                                AddCowBackingRead *r)
{
    BDRVAddCowState *s = bs->opaque;
    BlockDriverState *raw = bs->backing->bs, *file;
    AddCowIov part;
    ssize_t got;
    bool direct;
    int fd;

    if (!raw->drv || strcmp(raw->drv->format_name, "raw") ||
        !raw->file || !(raw->file->role & BDRV_CHILD_FILTERED)) {
        return false;
    }
    file = raw->file->bs;
    fd = raw_file_fd(file, &direct);
    /* an O_DIRECT read would still wait for the device */
    if (fd < 0 || direct || fd == s->nowait_bad_fd ||
        r->off + r->len > (uint64_t)file->total_sectors * BDRV_SECTOR_SIZE ||
        !add_cow_node_quiet(raw) || !add_cow_node_quiet(file)) {
        return false;
    }
    add_cow_iov_slice(&part, r->qiov, r->qiov_off, r->len);
    got = preadv2(fd, part.iov, part.niov, r->off, RWF_NOWAIT);
    add_cow_iov_free(&part);
    if (got < 0 && (errno == EOPNOTSUPP || errno == EINVAL)) {
        /* this file (filesystem, kernel) has no NOWAIT reads: stop asking */
        s->nowait_bad_fd = fd;
    }
    return got == (ssize_t)r->len;
}
#else
static bool coroutine_fn add_cow_backing_nowait(BlockDriverState *bs,
                                                AddCowBackingRead *r)
{
    return false;
}
#endif

/*
 * Reads [qiov_off, qiov_off + len) of qiov at guest offset off + qiov_off
 * from the backing file; zeros without one.  Past the backing file's end
 * the block layer itself reads zeros (bdrv_aligned_preadv), as QEMU's
 * qcow2 relies on, so no length is asked here (for a raw backing node
 * that would be an fstat per request).
 */
static int coroutine_fn add_cow_read_backing(BlockDriverState *bs,
                                             uint64_t off, QEMUIOVector *qiov,
                                             uint64_t qiov_off, uint64_t len)
{
    BDRVAddCowState *s = bs->opaque;
    AddCowBackingRead me = {
        .off = off + qiov_off, .len = len, .qiov = qiov,
        .qiov_off = qiov_off, .co = qemu_coroutine_self(),
    };
    AddCowMerge m;

    if (!bs->backing) {
        qemu_iovec_memset(qiov, qiov_off, 0, len);
        return 0;
    }
    if (add_cow_backing_nowait(bs, &me)) {
        return 0;
    }
    if (!s->merge && s->nrequests <= 1) {
        return add_cow_backing_one(bs, &me);
    }
    me.niov = qemu_iovec_subvec_niov(qiov, qiov_off, len);
    if (s->merge && s->merge->n < ADD_COW_MERGE_MAX) {
        /* join the batch; woken as a run's head, or when done */
        QSIMPLEQ_INSERT_TAIL(&s->merge->reads, &me, next);
        s->merge->n++;
        while (!me.done) {
            qemu_coroutine_yield();
            if (me.head && !me.done) {
                add_cow_merge_read(bs, &me);
            }
        }
        return me.ret;
    }
    /* lead a new batch: let the requests of this turn join, then plan */
    QSIMPLEQ_INIT(&m.reads);
    QSIMPLEQ_INSERT_TAIL(&m.reads, &me, next);
    m.n = 1;
    s->merge = &m;
    aio_co_schedule(bdrv_get_aio_context(bs), me.co);
    qemu_coroutine_yield();
    if (s->merge == &m) {
        s->merge = NULL;
    }
    add_cow_merge_plan(&m, &me);
    if (me.head) {
        add_cow_merge_read(bs, &me);
    }
    while (!me.done) {
        qemu_coroutine_yield();
    }
    return me.ret;
}

/*
 * The library's part of a read, [start, start + bytes) of qiov, in one
 * thread-pool hop per ADD_COW_MAX_HOLES unallocated runs: the worker reads
 * the allocated runs, the coroutine then fills the holes.
 */
static int coroutine_fn add_cow_read_slow(BlockDriverState *bs,
                                          int64_t offset, QEMUIOVector *qiov,
                                          uint64_t start, uint64_t bytes)
{
    BDRVAddCowState *s = bs->opaque;
    AddCowReadTask t = { .img = s->img, .qiov = qiov, .offset = offset };
    uint64_t end = start + bytes;
    int ret;

    while (start < end) {
        t.start = start;
        t.bytes = end - start;
        t.err[0] = 0;
        ret = add_cow_submit(bs, add_cow_read_worker, &t);
        if (ret < 0) {
            add_cow_request_error(bs, "read", "%s", t.err);
            return ret;
        }
        for (int i = 0; i < t.nholes; i++) {
            ret = add_cow_read_backing(bs, offset, qiov, t.holes[i].off,
                                       t.holes[i].len);
            if (ret < 0) {
                return ret;
            }
        }
        start += t.done;
    }
    return 0;
}

/*
 * Stored data: read in the coroutine when the library can do it without
 * waiting (metadata cached, data in the page cache: no hop at all, where
 * QEMU's qcow2 always hops to file-posix's worker), else one hop.
 */
static int coroutine_fn add_cow_read_data(BlockDriverState *bs,
                                          int64_t offset, QEMUIOVector *qiov,
                                          uint64_t start, uint64_t bytes)
{
    BDRVAddCowState *s = bs->opaque;
    AddCowIov part;
    int ret;

    add_cow_iov_slice(&part, qiov, start, bytes);
    ret = cowblk_preadv_nb(s->img, offset + start, part.iov, part.niov);
    add_cow_iov_free(&part);
    if (ret == -EAGAIN) {
        return add_cow_read_slow(bs, offset, qiov, start, bytes);
    }
    if (ret < 0) {
        add_cow_request_error(bs, "read", "%s", cowblk_last_error());
    }
    return ret;
}

/*
 * Reads without a thread-pool hop where the metadata is cached:
 * cowblk_map_nb answers in the coroutine, unallocated runs go straight to
 * bs->backing (as QEMU's qcow2 does after its L2 lookup), zero runs are
 * filled here, and only stored data (one hop: the library reads it from
 * the image file, which QEMU has no node for) and cache misses (the hop
 * also loads the cache) reach the thread pool.
 *
 * An "unallocated" answer is acted on after the lookup, while a write may
 * allocate the cluster concurrently.  That is safe: the backing file does
 * not change under an open overlay, an allocating write copies the
 * backing bytes into the rest of its cluster, so the bytes read are this
 * layer's at the lookup except those a concurrent write to the same bytes
 * is changing, where old contents are a valid result (QEMU's qcow2 has the
 * same window between its L2 lookup and its backing read).  See
 * docs/QEMU.md, "Non-blocking lookups".
 */
static int coroutine_fn add_cow_co_preadv(BlockDriverState *bs,
                                          int64_t offset, int64_t bytes,
                                          QEMUIOVector *qiov,
                                          BdrvRequestFlags flags)
{
    BDRVAddCowState *s = bs->opaque;
    uint64_t pos = 0;
    bool loaded = false;
    int ret = 0;

    while (pos < (uint64_t)bytes && ret >= 0) {
        uint64_t n = 0;
        uint32_t kind = 0;

        ret = cowblk_map_nb(s->img, offset + pos, bytes - pos, &n, NULL,
                            &kind);
        if (ret == -EAGAIN && !loaded) {
            /* a miss: one worker loads the metadata, then ask again */
            ret = add_cow_load_metadata(bs, offset + pos, bytes - pos);
            loaded = true;
            continue;
        }
        if (ret == -EAGAIN) {
            /* still not cached (compressed, or evicted): the worker reads */
            return add_cow_read_slow(bs, offset, qiov, pos, bytes - pos);
        }
        if (ret < 0) {
            add_cow_request_error(bs, "read", "%s", cowblk_last_error());
            return ret;
        }
        n = MIN(n, bytes - pos);
        switch (kind) {
        case COWBLK_MAP_UNALLOCATED:
            ret = add_cow_read_backing(bs, offset, qiov, pos, n);
            break;
        case COWBLK_MAP_ZERO:
            qemu_iovec_memset(qiov, pos, 0, n);
            break;
        case COWBLK_MAP_COMPRESSED:
            ret = add_cow_read_slow(bs, offset, qiov, pos, n);
            break;
        default:
            ret = add_cow_read_data(bs, offset, qiov, pos, n);
            break;
        }
        pos += n;
    }
    return ret;
}

/* ---- writes ---- */

/*
 * A write task, on the coroutine's stack.  With cow_buf it writes with
 * those old contents (cowblk_pwritev_cow); with ask (the slow path's first
 * pass) it asks the library which old contents the write needs and
 * returns with need_cow set if any, else writes at once; otherwise it just
 * writes (the library maps again and copies nothing for a cluster that is
 * allocated, or wholly written).
 */
typedef struct AddCowWriteTask {
    struct cowblk_image *img;
    QEMUIOVector *qiov;
    size_t qiov_off;
    uint64_t offset, bytes;
    uint64_t cow_off, cow_len;
    void *cow_buf;
    bool ask;
    bool need_cow;
    char err[ADD_COW_ERR_LEN];
} AddCowWriteTask;

static int add_cow_write_worker(void *opaque)
{
    AddCowWriteTask *t = opaque;
    AddCowIov part;
    int ret;

    add_cow_iov_slice(&part, t->qiov, t->qiov_off, t->bytes);
    if (t->cow_buf) {
        struct iovec cow = { .iov_base = t->cow_buf, .iov_len = t->cow_len };
        ret = cowblk_pwritev_cow(t->img, t->offset, part.iov, part.niov,
                                 t->cow_off, &cow, 1);
    } else if (t->ask) {
        ret = cowblk_cow_range(t->img, t->offset, t->bytes, &t->cow_off,
                               &t->cow_len);
        if (ret >= 0 && t->cow_len) {
            t->need_cow = true;
        } else if (ret >= 0) {
            ret = cowblk_pwritev(t->img, t->offset, part.iov, part.niov);
        }
    } else {
        ret = cowblk_pwritev(t->img, t->offset, part.iov, part.niov);
    }
    add_cow_iov_free(&part);
    if (ret < 0) {
        save_err(t->err, ret);
    }
    return ret;
}

/* Reads the old contents t->cow_off/cow_len names, then writes with them. */
static int coroutine_fn add_cow_write_cow(BlockDriverState *bs,
                                          AddCowWriteTask *t)
{
    QEMUIOVector cowq;
    int ret;

    t->cow_buf = qemu_try_blockalign(bs, t->cow_len);
    if (!t->cow_buf) {
        return -ENOMEM;
    }
    qemu_iovec_init_buf(&cowq, t->cow_buf, t->cow_len);
    ret = add_cow_read_backing(bs, t->cow_off, &cowq, 0, t->cow_len);
    if (ret >= 0) {
        ret = add_cow_submit(bs, add_cow_write_worker, t);
    }
    qemu_vfree(t->cow_buf);
    t->cow_buf = NULL;
    return ret;
}

/* The copy-on-write of the cluster at guest offset cluster in flight, if any. */
static AddCowInflight *add_cow_inflight_find(BDRVAddCowState *s,
                                             uint64_t cluster)
{
    AddCowInflight *w;

    QLIST_FOREACH(w, &s->inflight, next) {
        if (w->cluster == cluster) {
            return w;
        }
    }
    return NULL;
}

/*
 * Writes one piece that needs at most one cluster of old contents.  Where
 * the metadata is cached (cowblk_map_nb), the coroutine decides: a piece
 * covering whole clusters, or one in an allocated cluster, is one hop (the
 * write); a partial piece of an unallocated cluster reads the cluster's
 * old contents from bs->backing, then one hop writes with them, as QEMU's
 * qcow2 reads its copy-on-write area and then writes.  The library checks
 * again under its allocation lock, so a cluster that another write
 * allocated meanwhile is written in place and the supplied contents are
 * not used; they never could be stale anyway (the backing file does not
 * change).  A miss asks the library first (one more hop).
 */
static int coroutine_fn add_cow_write_piece(BlockDriverState *bs,
                                            uint64_t offset, uint64_t bytes,
                                            QEMUIOVector *qiov,
                                            size_t qiov_off)
{
    BDRVAddCowState *s = bs->opaque;
    AddCowWriteTask t = {
        .img = s->img, .qiov = qiov, .qiov_off = qiov_off,
        .offset = offset, .bytes = bytes,
    };
    uint64_t cs = s->cluster_size ? s->cluster_size : 1;
    uint64_t cstart = QEMU_ALIGN_DOWN(offset, cs);
    uint64_t end = offset + bytes;
    uint64_t size = 0, n = 0;
    uint32_t kind = 0;
    int ret = cowblk_get_length(s->img, &size);
    bool partial = offset % cs || (end % cs && end < size);

    if (ret >= 0 && partial) {
        AddCowInflight *w;

        ret = cowblk_map_nb(s->img, offset, bytes, &n, NULL, &kind);
        if (ret == -EAGAIN) {
            ret = add_cow_load_metadata(bs, offset, bytes);
            if (ret >= 0) {
                ret = cowblk_map_nb(s->img, offset, bytes, &n, NULL, &kind);
            }
        }
        /*
         * Another write of this node is copying the cluster: wait for it
         * and ask again (then usually a one-hop write in place), rather
         * than read the cluster from the backing file once more and make a
         * worker wait on the library's allocation lock.
         */
        while (ret >= 0 && kind == COWBLK_MAP_UNALLOCATED &&
               (w = add_cow_inflight_find(s, cstart))) {
            qemu_co_queue_wait(&w->waiters, NULL);
            ret = cowblk_map_nb(s->img, offset, bytes, &n, NULL, &kind);
        }
    }
    if (ret >= 0 && partial && kind == COWBLK_MAP_UNALLOCATED) {
        AddCowInflight me = { .cluster = cstart };

        qemu_co_queue_init(&me.waiters);
        QLIST_INSERT_HEAD(&s->inflight, &me, next);
        t.cow_off = cstart;
        t.cow_len = MIN(cs, size - cstart);
        ret = add_cow_write_cow(bs, &t);
        QLIST_REMOVE(&me, next);
        qemu_co_queue_restart_all(&me.waiters);
    } else if (ret >= 0) {
        ret = add_cow_submit(bs, add_cow_write_worker, &t);
    }
    /*
     * A miss, or (rarely) a cluster that lost its allocation meanwhile:
     * ask the library which old contents it needs.
     */
    if (ret == -EAGAIN || ret == -ENOTSUP) {
        t.ask = true;
        t.err[0] = 0;
        ret = add_cow_submit(bs, add_cow_write_worker, &t);
        if (ret >= 0 && t.need_cow) {
            t.ask = false;
            ret = add_cow_write_cow(bs, &t);
        }
    }
    if (ret < 0 && t.err[0]) {
        add_cow_request_error(bs, "write", "%s", t.err);
    }
    return ret;
}

/*
 * Splits a write so that each piece needs at most one cluster of old
 * contents: the partial first cluster, the whole clusters, the partial
 * last cluster.
 */
static int coroutine_fn add_cow_co_pwritev(BlockDriverState *bs,
                                           int64_t offset, int64_t bytes,
                                           QEMUIOVector *qiov,
                                           BdrvRequestFlags flags)
{
    BDRVAddCowState *s = bs->opaque;
    uint64_t cs = s->cluster_size ? s->cluster_size : 1;
    uint64_t end = offset + bytes;
    uint64_t head_end = MIN(end, ROUND_UP(offset, cs));
    uint64_t tail_start = MAX(head_end, QEMU_ALIGN_DOWN(end, cs));
    uint64_t cuts[4] = { offset, head_end, tail_start, end };
    int ret = 0;

    for (int i = 0; i < 3 && ret >= 0; i++) {
        if (cuts[i + 1] > cuts[i]) {
            ret = add_cow_write_piece(bs, cuts[i], cuts[i + 1] - cuts[i],
                                      qiov, cuts[i] - offset);
        }
    }
    return ret;
}

/* The driver's entry points count the requests in progress (nrequests). */
typedef int coroutine_fn AddCowRw(BlockDriverState *bs, int64_t offset,
                                  int64_t bytes, QEMUIOVector *qiov,
                                  BdrvRequestFlags flags);

static int coroutine_fn add_cow_counted(AddCowRw *fn, BlockDriverState *bs,
                                        int64_t offset, int64_t bytes,
                                        QEMUIOVector *qiov,
                                        BdrvRequestFlags flags)
{
    BDRVAddCowState *s = bs->opaque;
    int ret;

    s->nrequests++;
    ret = fn(bs, offset, bytes, qiov, flags);
    s->nrequests--;
    return ret;
}

static int coroutine_fn add_cow_co_preadv_entry(BlockDriverState *bs,
                                                int64_t offset, int64_t bytes,
                                                QEMUIOVector *qiov,
                                                BdrvRequestFlags flags)
{
    return add_cow_counted(add_cow_co_preadv, bs, offset, bytes, qiov, flags);
}

static int coroutine_fn add_cow_co_pwritev_entry(BlockDriverState *bs,
                                                 int64_t offset, int64_t bytes,
                                                 QEMUIOVector *qiov,
                                                 BdrvRequestFlags flags)
{
    return add_cow_counted(add_cow_co_pwritev, bs, offset, bytes, qiov, flags);
}

/*
 * A compressed write (qemu-img convert -c, qemu-io write -c) of whole
 * clusters, or a tail ending the image, as QEMU's qcow2 takes them: one
 * hop; the worker compresses and stores, so the requests convert keeps
 * in flight compress on several pool threads at once.
 */
typedef struct AddCowCompressTask {
    struct cowblk_image *img;
    QEMUIOVector *qiov;
    size_t qiov_off;
    uint64_t offset, bytes;
    char err[ADD_COW_ERR_LEN];
} AddCowCompressTask;

static int add_cow_compress_worker(void *opaque)
{
    AddCowCompressTask *t = opaque;
    AddCowIov part;
    int ret;

    add_cow_iov_slice(&part, t->qiov, t->qiov_off, t->bytes);
    ret = cowblk_pwritev_compressed(t->img, t->offset, part.iov, part.niov);
    add_cow_iov_free(&part);
    if (ret < 0) {
        save_err(t->err, ret);
    }
    return ret;
}

static int coroutine_fn
cowblk_qcow2_co_pwritev_compressed_part(BlockDriverState *bs, int64_t offset,
                                        int64_t bytes, QEMUIOVector *qiov,
                                        size_t qiov_offset)
{
    BDRVAddCowState *s = bs->opaque;
    AddCowCompressTask t = {
        .img = s->img, .qiov = qiov, .qiov_off = qiov_offset,
        .offset = offset, .bytes = bytes,
    };
    int ret = add_cow_submit(bs, add_cow_compress_worker, &t);

    if (ret < 0) {
        add_cow_request_error(bs, "compressed write", "%s", t.err);
    }
    return ret;
}

/* ---- flush, truncate, status ---- */

typedef struct AddCowSimpleTask {
    struct cowblk_image *img;
    int op;
    uint64_t a, b;
    uint64_t pnum;
    int status;
    uint64_t map;
    uint32_t zflags;            /* COWBLK_ZERO_* for OP_ZEROES */
    char err[ADD_COW_ERR_LEN];
} AddCowSimpleTask;

/* OP_TRUNCATE_OVER: b is the backing file's length, zflags 1 if there is one */
enum {
    OP_FLUSH, OP_TRUNCATE, OP_TRUNCATE_OVER, OP_STATUS, OP_ZEROES, OP_DISCARD
};

static int add_cow_simple_worker(void *opaque)
{
    AddCowSimpleTask *t = opaque;
    int ret = -EINVAL;

    switch (t->op) {
    case OP_FLUSH:
        ret = cowblk_flush(t->img);
        break;
    case OP_TRUNCATE:
        ret = cowblk_truncate(t->img, t->a);
        break;
    case OP_TRUNCATE_OVER:
        ret = cowblk_truncate_over(t->img, t->a, t->zflags, t->b);
        break;
    case OP_DISCARD:
        ret = cowblk_discard(t->img, t->a, t->b);
        break;
    case OP_STATUS:
        ret = t->status = cowblk_block_status(t->img, t->a, t->b, &t->pnum,
                                              &t->map);
        break;
    case OP_ZEROES: {
        /*
         * Zeroing part of an unallocated cluster: the library makes it a
         * zero cluster where the rest reads zeros (this layer, no backing
         * file, or the glue's word for QEMU's backing chain); otherwise it
         * would need the old contents, which only QEMU can read, so with
         * NO_FALLBACK it refuses, before allocating anything, and the
         * block layer's fallback writes zeros (add_cow_co_pwritev).
         */
        uint64_t cow_off, cow_len;
        uint32_t zflags = t->zflags;
        ret = cowblk_cow_range(t->img, t->a, t->b, &cow_off, &cow_len);
        if (ret >= 0 && cow_len) {
            zflags |= COWBLK_ZERO_NO_FALLBACK;
        }
        if (ret >= 0) {
            ret = cowblk_write_zeroes_flags(t->img, t->a, t->b, zflags);
        }
        if (ret == -ENOTSUP) {
            return ret;
        }
        break;
    }
    }
    if (ret < 0) {
        save_err(t->err, ret);
    }
    return ret;
}

/*
 * Loads the metadata of [offset, offset + bytes) into the library's cache
 * on a worker (block status maps the range), one load at a time: requests
 * that missed meanwhile wait here and then usually find the cache filled,
 * so a burst of misses sends one worker, not one each (QEMU's qcow2 waits
 * on its lock for an L2 load the same way).  Data I/O never runs here.
 */
static int coroutine_fn add_cow_load_metadata(BlockDriverState *bs,
                                              uint64_t offset, uint64_t bytes)
{
    BDRVAddCowState *s = bs->opaque;
    AddCowSimpleTask t = {
        .img = s->img, .op = OP_STATUS, .a = offset, .b = bytes,
    };
    uint64_t n = 0;
    uint32_t kind = 0;
    int ret;

    qemu_co_mutex_lock(&s->load_lock);
    ret = cowblk_map_nb(s->img, offset, bytes, &n, NULL, &kind);
    if (ret == -EAGAIN) {
        ret = add_cow_submit(bs, add_cow_simple_worker, &t);
        if (ret < 0) {
            add_cow_request_error(bs, "metadata load", "%s", t.err);
        }
    }
    qemu_co_mutex_unlock(&s->load_lock);
    return ret < 0 ? ret : 0;
}

/*
 * Whether [off, off + bytes) reads zeros through this node and its
 * backing chain, by block status alone (QEMU's qcow2 is_zero: a loop,
 * since zeros of an unallocated chain and of a short backing file come
 * as separate extents).
 */
static bool coroutine_fn add_cow_reads_zero(BlockDriverState *bs, int64_t off,
                                            int64_t bytes)
{
    int64_t nr;
    int res;

    bytes = MIN(bytes, bs->total_sectors * BDRV_SECTOR_SIZE - off);
    if (bytes <= 0) {
        return true;
    }
    do {
        res = bdrv_block_status_above(bs, NULL, off, bytes, &nr, NULL, NULL);
        off += nr;
        bytes -= nr;
    } while (res >= 0 && (res & BDRV_BLOCK_ZERO) && nr && bytes);
    return res >= 0 && (res & BDRV_BLOCK_ZERO) && !bytes;
}

/*
 * Zero writes.  A library qcow2 (v3) zeroes whole clusters in metadata; a
 * partial cluster becomes a zero cluster when its other bytes read zeros
 * (QEMU's qcow2 rule).  The library checks its own layer for that under
 * the cluster's lock but cannot look into QEMU's backing chain (it stands
 * for one even where there is none), so the glue asks the block layer here
 * and vouches with
 * COWBLK_ZERO_BACKING_ZERO_HEAD/TAIL (the backing chain does not change
 * under an open overlay; this layer's part the library checks again).  The
 * block layer splits requests at the cluster size (pwrite_zeroes_alignment),
 * so a piece the library refuses (-ENOTSUP: it would need backing bytes)
 * falls back to zero buffers alone, as with QEMU's qcow2.
 */
static int coroutine_fn add_cow_co_pwrite_zeroes(BlockDriverState *bs,
                                                 int64_t offset, int64_t bytes,
                                                 BdrvRequestFlags flags)
{
    BDRVAddCowState *s = bs->opaque;
    AddCowSimpleTask t = {
        .img = s->img, .op = OP_ZEROES, .a = offset, .b = bytes,
        /* holes only with leave to unmap; -ENOTSUP rather than slow zeros */
        .zflags = (flags & BDRV_REQ_MAY_UNMAP ? COWBLK_ZERO_MAY_UNMAP : 0) |
                  (flags & BDRV_REQ_NO_FALLBACK ? COWBLK_ZERO_NO_FALLBACK : 0),
    };
    int ret;

    if (!strcmp(s->lib_format, "qcow2") && bytes > 0) {
        int64_t cs = s->cluster_size, end = offset + bytes;
        int64_t size = bs->total_sectors * BDRV_SECTOR_SIZE;
        int64_t hs = QEMU_ALIGN_DOWN(offset, cs);
        int64_t ts = QEMU_ALIGN_DOWN(end - 1, cs);
        /* cluster ends; the image's partial last cluster ends with it */
        int64_t he = MIN(hs + cs, size), te = MIN(ts + cs, size);

        if ((offset != hs || end < he) &&
            add_cow_reads_zero(bs, hs, offset - hs) &&
            (ts > hs || add_cow_reads_zero(bs, end, he - end))) {
            t.zflags |= COWBLK_ZERO_BACKING_ZERO_HEAD;
        }
        if (ts > hs && end < te && add_cow_reads_zero(bs, end, te - end)) {
            t.zflags |= COWBLK_ZERO_BACKING_ZERO_TAIL;
        }
    }
    ret = add_cow_submit(bs, add_cow_simple_worker, &t);
    if (ret < 0 && ret != -ENOTSUP) {
        add_cow_request_error(bs, "write zeroes", "%s", t.err);
    }
    return ret;
}

/* Zero writes reach the driver split at cluster boundaries (see above). */
static void add_cow_refresh_limits(BlockDriverState *bs, Error **errp)
{
    BDRVAddCowState *s = bs->opaque;

    if (s->img && !strcmp(s->lib_format, "qcow2") && s->cluster_size &&
        s->cluster_size <= INT32_MAX) {
        bs->bl.pwrite_zeroes_alignment = s->cluster_size;
    }
}

/*
 * Discard: the library drops whole clusters only, and only where reads keep
 * their meaning for the format (qcow2: the zero flag in v3, the backing
 * file again in v2, as QEMU's qcow2; add-cow with a backing file keeps
 * everything).
 */
static int coroutine_fn add_cow_co_pdiscard(BlockDriverState *bs,
                                            int64_t offset, int64_t bytes)
{
    BDRVAddCowState *s = bs->opaque;
    AddCowSimpleTask t = {
        .img = s->img, .op = OP_DISCARD, .a = offset, .b = bytes,
    };
    int ret = add_cow_submit(bs, add_cow_simple_worker, &t);

    if (ret < 0) {
        add_cow_request_error(bs, "discard", "%s", t.err);
    }
    return ret;
}

static int coroutine_fn add_cow_co_flush(BlockDriverState *bs)
{
    BDRVAddCowState *s = bs->opaque;
    AddCowSimpleTask t = { .img = s->img, .op = OP_FLUSH };
    int ret;

    if (!s->writable) {
        return 0;
    }
    ret = add_cow_submit(bs, add_cow_simple_worker, &t);
    if (ret < 0) {
        add_cow_request_error(bs, "flush", "%s", t.err);
    }
    return ret;
}

static int coroutine_fn add_cow_own_last_cluster(BlockDriverState *bs,
                                                 uint64_t new_size)
{
    BDRVAddCowState *s = bs->opaque;
    int64_t old = add_cow_getlength(bs);
    uint64_t cs = s->cluster_size;
    uint64_t start;
    QEMUIOVector qiov;
    void *buf;
    int ret;

    if (old < 0) {
        return old;
    }
    if (!cs || new_size <= (uint64_t)old || old % cs == 0) {
        return 0;
    }
    start = QEMU_ALIGN_DOWN(old, cs);
    buf = qemu_try_blockalign(bs, old - start);
    if (!buf) {
        return -ENOMEM;
    }
    qemu_iovec_init_buf(&qiov, buf, old - start);
    ret = add_cow_co_preadv(bs, start, old - start, &qiov, 0);
    if (ret >= 0) {
        ret = add_cow_co_pwritev(bs, start, old - start, &qiov, 0);
    }
    qemu_vfree(buf);
    return ret;
}

static int coroutine_fn add_cow_co_truncate(BlockDriverState *bs,
                                            int64_t offset, bool exact,
                                            PreallocMode prealloc,
                                            BdrvRequestFlags flags,
                                            Error **errp)
{
    BDRVAddCowState *s = bs->opaque;
    AddCowSimpleTask t = { .img = s->img, .a = offset };
    int ret;

    if (prealloc != PREALLOC_MODE_OFF) {
        error_setg(errp, "Unsupported preallocation mode '%s'",
                   PreallocMode_str(prealloc));
        return -ENOTSUP;
    }
    /*
     * Grown space reads zeros: in caller-backing mode the library owns every
     * new cluster.  A cluster straddling the old end must keep its backing
     * bytes below the end, which the library cannot read in that mode, so
     * rewrite them first: that allocates the cluster with its contents.
     */
    if (strcmp(s->lib_format, "add-cow")) {
        /*
         * qcow2: the library zeroes the last cluster's tail itself and
         * learns how far our backing file reaches, so grown space it does
         * not cover stays unallocated (as in QEMU's qcow2).
         */
        t.op = OP_TRUNCATE_OVER;
        if (bs->backing) {
            int64_t blen = bdrv_getlength(bs->backing->bs);
            if (blen < 0) {
                error_setg_errno(errp, -blen, "Could not get the backing "
                                 "file's length");
                return blen;
            }
            t.b = blen;
            t.zflags = 1;
            /*
             * From a size inside a cluster, the library makes the last
             * cluster its own (zeros after the old end) and reads its
             * bytes below the end through this layer: rewrite them first,
             * as for add-cow, so that it has them.
             */
            if (blen > add_cow_getlength(bs)) {
                ret = add_cow_own_last_cluster(bs, offset);
                if (ret < 0) {
                    error_setg_errno(errp, -ret, "Could not copy the last "
                                     "cluster");
                    return ret;
                }
            }
        }
    } else {
        ret = add_cow_own_last_cluster(bs, offset);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Could not copy the last cluster");
            return ret;
        }
        t.op = OP_TRUNCATE;
    }
    ret = add_cow_submit(bs, add_cow_simple_worker, &t);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "%s", t.err);
    }
    return ret;
}

static int coroutine_fn add_cow_co_block_status(BlockDriverState *bs,
                                                bool want_zero,
                                                int64_t offset, int64_t bytes,
                                                int64_t *pnum, int64_t *map,
                                                BlockDriverState **file)
{
    BDRVAddCowState *s = bs->opaque;
    AddCowSimpleTask t = {
        .img = s->img, .op = OP_STATUS, .a = offset, .b = bytes,
    };
    uint64_t n = 0;
    uint32_t kind = 0;
    int ret = cowblk_map_nb(s->img, offset, bytes, &n, NULL, &kind);

    *map = 0;
    *file = NULL;
    /*
     * Unallocated and zero runs are answered from the cache, in the
     * coroutine; data runs ask the library, which also looks for holes
     * under them (raw, preallocated qcow2).
     */
    if (ret == 0 && kind != COWBLK_MAP_DATA && kind != COWBLK_MAP_COMPRESSED) {
        *pnum = n;
        return kind == COWBLK_MAP_ZERO ? BDRV_BLOCK_ZERO : 0;
    }
    ret = add_cow_submit(bs, add_cow_simple_worker, &t);
    if (ret < 0) {
        add_cow_request_error(bs, "block status", "%s", t.err);
        return ret;
    }
    *pnum = t.pnum;
    if (!(t.status & COWBLK_BLOCK_ALLOCATED)) {
        /* the block layer asks bs->backing */
        return 0;
    }
    /*
     * qcow2 without an external data file keeps its data in bs->file: the
     * host offset is valid there, as QEMU's qcow2 reports it (qemu-img
     * map shows it, the block layer may look for holes under it).
     */
    if (!s->image_file && (t.status & COWBLK_BLOCK_OFFSET_VALID) &&
        !strcmp(s->lib_format, "qcow2")) {
        *map = t.map;
        *file = bs->file->bs;
        return BDRV_BLOCK_OFFSET_VALID |
               ((t.status & COWBLK_BLOCK_ZERO) ? BDRV_BLOCK_ZERO : 0) |
               ((t.status & COWBLK_BLOCK_DATA) ? BDRV_BLOCK_DATA : 0);
    }
    /*
     * Otherwise the data lives in a file the library opened and QEMU has
     * no node for (add-cow's image file, a qcow2 data file): no
     * OFFSET_VALID, so nobody reads around us.
     */
    return (t.status & COWBLK_BLOCK_ZERO) ? BDRV_BLOCK_ZERO : BDRV_BLOCK_DATA;
}

/* ---- info, backing file, check ---- */

static int add_cow_get_info(BlockDriverState *bs, BlockDriverInfo *bdi)
{
    BDRVAddCowState *s = bs->opaque;

    bdi->cluster_size = s->cluster_size;
    return 0;
}

/*
 * Both files: the add-cow file and the raw image file.  Asked from the main
 * loop (query-block, qemu-img info); the stat runs on the thread pool while
 * the loop keeps polling, so a slow filesystem does not stall it.
 */
typedef struct AddCowSizeTask {
    BlockDriverState *bs;
    struct cowblk_image *img;
    int64_t ret;
    bool done;
} AddCowSizeTask;

static int add_cow_size_worker(void *opaque)
{
    AddCowSizeTask *t = opaque;
    struct cowblk_info info = { .struct_size = sizeof(info) };
    int ret = cowblk_get_info(t->img, &info);   /* cheap: no bitmap scan */

    if (ret < 0) {
        return ret;
    }
    cowblk_info_free(&info);
    t->ret = info.disk_size;
    return 0;
}

static void coroutine_fn add_cow_size_entry(void *opaque)
{
    AddCowSizeTask *t = opaque;
    int ret = add_cow_submit(t->bs, add_cow_size_worker, t);

    if (ret < 0) {
        t->ret = ret;
    }
    t->done = true;
    aio_wait_kick();
}

static int64_t add_cow_get_allocated_file_size(BlockDriverState *bs)
{
    BDRVAddCowState *s = bs->opaque;
    AddCowSizeTask t = { .bs = bs, .img = s->img };

    if (qemu_in_coroutine()) {
        add_cow_size_entry(&t);
    } else {
        bdrv_coroutine_enter(bs, qemu_coroutine_create(add_cow_size_entry, &t));
        BDRV_POLL_WHILE(bs, !t.done);
    }
    return t.ret;
}

/* A big-endian field of the qcow2 header in buf (len bytes), or 0. */
static uint64_t qcow2_field(const uint8_t *buf, size_t len, size_t off,
                            int bytes)
{
    uint64_t v = 0;

    if (off + bytes > len) {
        return 0;
    }
    for (int i = 0; i < bytes; i++) {
        v = v << 8 | buf[off + i];
    }
    return v;
}

/*
 * What qemu-img info shows under "Format specific information" for qcow2,
 * read from the header (the first 4 KiB) through bs->file: the feature
 * bits, the refcount width, the compression type and the external data
 * file's name (header extension 0x44415441).  Nothing is validated beyond
 * staying inside the buffer: the library validated the header at open.
 */
static ImageInfoSpecific *cowblk_qcow2_specific_info(BlockDriverState *bs,
                                                     Error **errp)
{
    enum { HDR = 4096 };
    g_autofree uint8_t *h = g_malloc0(HDR);
    ImageInfoSpecific *spec;
    ImageInfoSpecificQCow2 *q;
    uint64_t version, incompat, compat, autoclear, hlen, ext;
    int ret = bdrv_pread(bs->file, 0, HDR, h, 0);

    if (ret < 0 && bdrv_getlength(bs->file->bs) >= 72) {
        /* a short file: read what there is */
        ret = bdrv_pread(bs->file, 0, 72, h, 0);
    }
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not read the qcow2 header");
        return NULL;
    }
    version = qcow2_field(h, HDR, 4, 4);
    spec = g_new0(ImageInfoSpecific, 1);
    spec->type = IMAGE_INFO_SPECIFIC_KIND_QCOW2;
    q = spec->u.qcow2.data = g_new0(ImageInfoSpecificQCow2, 1);
    if (version < 3) {
        q->compat = g_strdup("0.10");
        q->refcount_bits = 16;
        return spec;
    }
    incompat = qcow2_field(h, HDR, 72, 8);
    compat = qcow2_field(h, HDR, 80, 8);
    autoclear = qcow2_field(h, HDR, 88, 8);
    hlen = qcow2_field(h, HDR, 100, 4);
    q->compat = g_strdup("1.1");
    q->has_lazy_refcounts = true;
    q->lazy_refcounts = compat & 1;
    q->has_corrupt = true;
    q->corrupt = incompat & 2;
    q->has_extended_l2 = true;
    q->extended_l2 = incompat & 16;
    q->refcount_bits = 1ULL << MIN(qcow2_field(h, HDR, 96, 4), 6);
    if (hlen > 104 && qcow2_field(h, HDR, 104, 1) == 1) {
#if defined(CONFIG_ZSTD)
        q->compression_type = QCOW2_COMPRESSION_TYPE_ZSTD;
#endif
    }
    if (incompat & 4) {
        q->has_data_file_raw = true;
        q->data_file_raw = autoclear & 2;
        /* header extensions: type, length, data padded to 8 bytes */
        for (ext = hlen; ext + 8 <= HDR;) {
            uint64_t type = qcow2_field(h, HDR, ext, 4);
            uint64_t len = qcow2_field(h, HDR, ext + 4, 4);
            if (type == 0 || ext + 8 + len > HDR) {
                break;
            }
            if (type == 0x44415441) {
                q->has_data_file = true;
                q->data_file = g_strndup((char *)h + ext + 8, len);
                break;
            }
            ext += 8 + ROUND_UP(len, 8);
        }
    }
    return spec;
}

/*
 * A new image reads zeros, so qemu-img convert need not write them: an
 * add-cow image always (clear bits read the backing file, or zeros), a
 * qcow2 one unless an external data file holds its data (its bytes may be
 * anything), as QEMU's qcow2 answers.
 */
static int add_cow_has_zero_init(BlockDriverState *bs)
{
    BDRVAddCowState *s = bs->opaque;

    return !strcmp(s->lib_format, "add-cow") || !s->image_file;
}

/* cowblk_meta_list's callback: appends one key and its value size. */
static int add_cow_meta_entry(void *opaque, const char *key, uint64_t size)
{
    ImageInfoMetadataEntryList ***tail = opaque;
    ImageInfoMetadataEntry *e = g_new0(ImageInfoMetadataEntry, 1);

    e->key = g_strdup(key);
    e->size = size;
    QAPI_LIST_APPEND(*tail, e);
    return 0;
}

/*
 * The image's key/value metadata (keys and value sizes) for qemu-img info,
 * or NULL when it carries none.  A store the library cannot read costs a
 * warning naming the problem, not the whole info.
 */
static ImageInfoMetadataEntryList *add_cow_metadata_info(BDRVAddCowState *s)
{
    ImageInfoMetadataEntryList *list = NULL, **tail = &list;
    int ret = cowblk_meta_list(s->img, add_cow_meta_entry, &tail);

    if (ret < 0) {
        warn_report("Could not list the key/value metadata: %s",
                    cowblk_last_error() ? cowblk_last_error() : strerror(-ret));
        qapi_free_ImageInfoMetadataEntryList(list);
        return NULL;
    }
    return list;
}

static ImageInfoSpecific *add_cow_get_specific_info(BlockDriverState *bs,
                                                    Error **errp)
{
    BDRVAddCowState *s = bs->opaque;
    ImageInfoSpecific *spec;
    ImageInfoMetadataEntryList *meta;

    if (!strcmp(s->lib_format, "qcow2")) {
        spec = cowblk_qcow2_specific_info(bs, errp);
        if (spec) {
            meta = add_cow_metadata_info(s);
            spec->u.qcow2.data->has_metadata = meta != NULL;
            spec->u.qcow2.data->metadata = meta;
        }
        return spec;
    }
    if (!s->image_file) {
        return NULL;
    }
    spec = g_new0(ImageInfoSpecific, 1);
    spec->type = IMAGE_INFO_SPECIFIC_KIND_ADD_COW;
    spec->u.add_cow.data = g_new0(ImageInfoSpecificAddCow, 1);
    spec->u.add_cow.data->image_file = g_strdup(s->image_file);
    meta = add_cow_metadata_info(s);
    spec->u.add_cow.data->has_metadata = meta != NULL;
    spec->u.add_cow.data->metadata = meta;
    return spec;
}

static int add_cow_change_backing_file(BlockDriverState *bs,
                                       const char *backing_file,
                                       const char *backing_fmt)
{
    BDRVAddCowState *s = bs->opaque;
    int ret;

    if (backing_file && !*backing_file) {
        backing_file = NULL;
    }
    ret = cowblk_change_backing_file(s->img, backing_file,
                                     backing_file ? backing_fmt : NULL);
    if (ret < 0) {
        error_report("%s: cannot change the backing file: %s", bs->filename,
                     cowblk_last_error());
        return ret;
    }
    pstrcpy(bs->backing_file, sizeof(bs->backing_file),
            backing_file ? backing_file : "");
    pstrcpy(bs->backing_format, sizeof(bs->backing_format),
            backing_file && backing_fmt ? backing_fmt : "");
    return 0;
}

/*
 * qemu-img check: the library's cowblk_check, on the thread pool.  It checks
 * the bitmap (padding bits), the add-cow file's length (leaks) and that the
 * image file covers the virtual size (corruption), and repairs what `fix`
 * allows.
 */
typedef struct AddCowCheckTask {
    struct cowblk_image *img;
    uint32_t fix;
    struct cowblk_check_result r;
    char err[ADD_COW_ERR_LEN];
} AddCowCheckTask;

/* Each message line as QEMU's qcow2 prints its own: whole, on stderr. */
static void add_cow_check_line(void *opaque, const char *line)
{
    fprintf(stderr, "%s\n", line);
}

static int add_cow_check_worker(void *opaque)
{
    AddCowCheckTask *t = opaque;
    int ret;

    t->r.struct_size = sizeof(t->r);
    t->r.message_fn = add_cow_check_line;
    ret = cowblk_check(t->img, t->fix, &t->r);
    if (ret < 0) {
        save_err(t->err, ret);
    }
    return ret;
}

static int coroutine_fn add_cow_co_check(BlockDriverState *bs,
                                         BdrvCheckResult *result,
                                         BdrvCheckMode fix)
{
    BDRVAddCowState *s = bs->opaque;
    AddCowCheckTask t = { .img = s->img };
    int ret;

    if (fix & BDRV_FIX_LEAKS) {
        t.fix |= COWBLK_CHECK_FIX_LEAKS;
    }
    if (fix & BDRV_FIX_ERRORS) {
        t.fix |= COWBLK_CHECK_FIX_ERRORS;
    }
    ret = add_cow_submit(bs, add_cow_check_worker, &t);
    if (ret < 0) {
        error_report("%s: check failed: %s", bs->filename, t.err);
        result->check_errors++;
        return ret;
    }
    /* As qcow2 reports them: what is left after repairs, plus what was
     * fixed. */
    result->corruptions += t.r.corruptions - t.r.corruptions_fixed;
    result->leaks += t.r.leaks - t.r.leaks_fixed;
    result->corruptions_fixed += t.r.corruptions_fixed;
    result->leaks_fixed += t.r.leaks_fixed;
    result->check_errors += t.r.check_errors;
    result->image_end_offset = t.r.image_end_offset;
    result->bfi.total_clusters = t.r.total_clusters;
    result->bfi.allocated_clusters = t.r.allocated_clusters;
    result->bfi.fragmented_clusters = t.r.fragmented_clusters;
    result->bfi.compressed_clusters = t.r.compressed_clusters;
    return 0;
}

/* ---- create ---- */

/* Appends key=value to opts, doubling commas as QEMU's option syntax wants. */
static void opt_append(GString *opts, const char *key, const char *val)
{
    if (opts->len) {
        g_string_append_c(opts, ',');
    }
    g_string_append_printf(opts, "%s=", key);
    for (; *val; val++) {
        if (*val == ',') {
            g_string_append_c(opts, ',');
        }
        g_string_append_c(opts, *val);
    }
}

typedef struct AddCowCreateTask {
    const char *path, *format, *opts;
    char err[ADD_COW_ERR_LEN];
} AddCowCreateTask;

static int add_cow_create_worker(void *opaque)
{
    AddCowCreateTask *t = opaque;
    int ret = cowblk_create(t->format, t->path, t->opts);

    if (ret < 0) {
        save_err(t->err, ret);
    }
    return ret;
}

/*
 * Passes every option the user gave (never QEMU's defaults: the library
 * has its own, the same ones) to cowblk_create as "key=value,...": sizes
 * as byte counts, everything else as written.
 */
static int coroutine_fn add_cow_co_create_opts(BlockDriver *drv,
                                               const char *filename,
                                               QemuOpts *opts, Error **errp)
{
    AddCowCreateTask t = { 0 };
    g_autoptr(GString) o = g_string_new("");
    g_autofree char *size = NULL;
    int ret;

    strstart(filename, "file:", &filename);
    size = g_strdup_printf("%" PRIu64,
                           qemu_opt_get_size_del(opts, BLOCK_OPT_SIZE, 0));
    opt_append(o, BLOCK_OPT_SIZE, size);
    for (QemuOptDesc *d = drv->create_opts->desc; d->name; d++) {
        g_autofree char *v = NULL;
        if (!strcmp(d->name, BLOCK_OPT_SIZE) || !qemu_opt_find(opts, d->name)) {
            continue;
        }
        if (d->type == QEMU_OPT_SIZE) {
            v = g_strdup_printf("%" PRIu64,
                                qemu_opt_get_size_del(opts, d->name, 0));
        } else {
            v = qemu_opt_get_del(opts, d->name);
        }
        if (v) {
            opt_append(o, d->name, v);
        }
    }

    t.path = filename;
    t.format = strcmp(drv->format_name, "add-cow") ? "qcow2" : "add-cow";
    t.opts = o->str;
    ret = thread_pool_submit_co(aio_get_thread_pool(qemu_get_aio_context()),
                                add_cow_create_worker, &t);
    if (ret < 0) {
        /* qemu-img already names the file */
        error_setg(errp, "%s", lib_reason(t.err, "create", filename));
    }
    return ret;
}

static QemuOptsList add_cow_create_opts = {
    .name = "add-cow-create-opts",
    .head = QTAILQ_HEAD_INITIALIZER(add_cow_create_opts.head),
    .desc = {
        {
            .name = BLOCK_OPT_SIZE,
            .type = QEMU_OPT_SIZE,
            .help = "Virtual disk size"
        },
        {
            .name = BLOCK_OPT_BACKING_FILE,
            .type = QEMU_OPT_STRING,
            .help = "File name of a base image"
        },
        {
            .name = BLOCK_OPT_BACKING_FMT,
            .type = QEMU_OPT_STRING,
            .help = "Image format of the base image"
        },
        {
            .name = "image_file",
            .type = QEMU_OPT_STRING,
            .help = "File name of the raw image file (relative to the "
                    "add-cow file; created if absent)"
        },
        {
            .name = BLOCK_OPT_CLUSTER_SIZE,
            .type = QEMU_OPT_SIZE,
            .help = "Bytes covered by one bitmap bit (512 to 2M, power "
                    "of two; default: the library's)"
        },
        { /* end of list */ }
    }
};

/*
 * The library's qcow2 create options: qemu-img's names, types and defaults
 * in qemu-img's order, so that "Formatting ..." lines and -o help read as
 * for QEMU's qcow2 (an option with a default is printed with it).  Only the
 * options the user gave reach the library, which has the same defaults.
 */
static QemuOptsList cowblk_qcow2_create_opts = {
    .name = "cowblk-qcow2-create-opts",
    .head = QTAILQ_HEAD_INITIALIZER(cowblk_qcow2_create_opts.head),
    .desc = {
        {
            .name = BLOCK_OPT_CLUSTER_SIZE,
            .type = QEMU_OPT_SIZE,
            .help = "qcow2 cluster size",
            .def_value_str = "65536"
        },
        {
            .name = BLOCK_OPT_EXTL2,
            .type = QEMU_OPT_BOOL,
            .help = "Extended L2 tables",
            .def_value_str = "off"
        },
        {
            .name = BLOCK_OPT_PREALLOC,
            .type = QEMU_OPT_STRING,
            .help = "Preallocation mode (allowed values: off, metadata, "
                    "falloc, full)"
        },
        {
            .name = BLOCK_OPT_COMPRESSION_TYPE,
            .type = QEMU_OPT_STRING,
            .help = "Compression method used for image cluster compression",
            .def_value_str = "zlib"
        },
        {
            .name = BLOCK_OPT_SIZE,
            .type = QEMU_OPT_SIZE,
            .help = "Virtual disk size"
        },
        {
            .name = BLOCK_OPT_COMPAT_LEVEL,
            .type = QEMU_OPT_STRING,
            .help = "Compatibility level (v2 [0.10] or v3 [1.1])"
        },
        {
            .name = BLOCK_OPT_BACKING_FILE,
            .type = QEMU_OPT_STRING,
            .help = "File name of a base image"
        },
        {
            .name = BLOCK_OPT_BACKING_FMT,
            .type = QEMU_OPT_STRING,
            .help = "Image format of the base image"
        },
        {
            .name = BLOCK_OPT_DATA_FILE,
            .type = QEMU_OPT_STRING,
            .help = "File name of an external data file"
        },
        {
            .name = BLOCK_OPT_DATA_FILE_RAW,
            .type = QEMU_OPT_BOOL,
            .help = "The external data file must stay valid as a raw image"
        },
        {
            .name = BLOCK_OPT_LAZY_REFCOUNTS,
            .type = QEMU_OPT_BOOL,
            .help = "Postpone refcount updates",
            .def_value_str = "off"
        },
        {
            .name = BLOCK_OPT_REFCOUNT_BITS,
            .type = QEMU_OPT_NUMBER,
            .help = "Width of a reference count entry in bits",
            .def_value_str = "16"
        },
        { /* end of list */ }
    }
};

/* ---- internal snapshots (qcow2; qemu-img snapshot, savevm) ---- */

/*
 * The library's snapshot calls, made synchronously from the main loop with
 * the node drained, as QEMU's qcow2 makes its own.
 */
static int cowblk_qcow2_snapshot_create(BlockDriverState *bs,
                                        QEMUSnapshotInfo *sn)
{
    BDRVAddCowState *s = bs->opaque;
    int ret;

    if (sn->vm_state_size) {
        error_report("%s: snapshots with VM state are not supported",
                     bs->filename);
        return -ENOTSUP;
    }
    ret = cowblk_snapshot_create(s->img, sn->name);
    if (ret < 0) {
        error_report("%s: %s", bs->filename, cowblk_last_error());
    }
    return ret;
}

static int cowblk_qcow2_snapshot_goto(BlockDriverState *bs,
                                      const char *snapshot_id)
{
    BDRVAddCowState *s = bs->opaque;
    uint64_t len;
    int ret = cowblk_snapshot_apply(s->img, snapshot_id);

    if (ret < 0) {
        return ret;
    }
    /* the snapshot brings back its own virtual size */
    ret = cowblk_get_length(s->img, &len);
    if (ret < 0) {
        return ret;
    }
    bs->total_sectors = DIV_ROUND_UP(len, BDRV_SECTOR_SIZE);
    return 0;
}

static int cowblk_qcow2_snapshot_delete(BlockDriverState *bs,
                                        const char *snapshot_id,
                                        const char *name, Error **errp)
{
    BDRVAddCowState *s = bs->opaque;
    int ret = cowblk_snapshot_delete(s->img, snapshot_id, name);

    if (ret < 0) {
        error_setg(errp, "%s", ret == -ENOENT ? "Can't find the snapshot" :
                   cowblk_last_error());
    }
    return ret;
}

static int cowblk_qcow2_snapshot_list(BlockDriverState *bs,
                                      QEMUSnapshotInfo **psn_tab)
{
    BDRVAddCowState *s = bs->opaque;
    QEMUSnapshotInfo *tab;
    int n = cowblk_snapshot_count(s->img);

    if (n <= 0) {
        *psn_tab = NULL;
        return n;
    }
    tab = g_new0(QEMUSnapshotInfo, n);
    for (int i = 0; i < n; i++) {
        struct cowblk_snapshot c = { .struct_size = sizeof(c) };
        int ret = cowblk_snapshot_get(s->img, i, &c);
        if (ret < 0) {
            g_free(tab);
            return ret;
        }
        pstrcpy(tab[i].id_str, sizeof(tab[i].id_str), c.id);
        pstrcpy(tab[i].name, sizeof(tab[i].name), c.name);
        tab[i].vm_state_size = c.vm_state_size;
        tab[i].date_sec = c.date_sec;
        tab[i].date_nsec = c.date_nsec;
        tab[i].vm_clock_nsec = c.vm_clock_nsec;
        tab[i].icount = c.icount;
    }
    *psn_tab = tab;
    return n;
}

/* ---- registration ---- */

#define ADD_COW_COMMON_FIELDS                                       \
    .instance_size              = sizeof(BDRVAddCowState),          \
    .is_format                  = true,                             \
    .supports_backing           = true,                             \
    .bdrv_open                  = add_cow_open,                     \
    .bdrv_close                 = add_cow_close,                    \
    .bdrv_reopen_prepare        = add_cow_reopen_prepare,           \
    .bdrv_reopen_commit         = add_cow_reopen_commit,            \
    .bdrv_reopen_abort          = add_cow_reopen_abort,             \
    .bdrv_child_perm            = bdrv_default_perms,               \
    .bdrv_co_create_opts        = add_cow_co_create_opts,           \
    .bdrv_co_preadv             = add_cow_co_preadv_entry,          \
    .bdrv_co_pwritev            = add_cow_co_pwritev_entry,         \
    .bdrv_co_pwrite_zeroes      = add_cow_co_pwrite_zeroes,         \
    .bdrv_refresh_limits        = add_cow_refresh_limits,           \
    .bdrv_co_pdiscard           = add_cow_co_pdiscard,              \
    .bdrv_co_flush_to_disk      = add_cow_co_flush,                 \
    .bdrv_co_truncate           = add_cow_co_truncate,              \
    .bdrv_getlength             = add_cow_getlength,                \
    .bdrv_co_block_status       = add_cow_co_block_status,          \
    .bdrv_get_info              = add_cow_get_info,                 \
    .bdrv_has_zero_init         = add_cow_has_zero_init,            \
    .bdrv_get_allocated_file_size = add_cow_get_allocated_file_size, \
    .bdrv_get_specific_info     = add_cow_get_specific_info,        \
    .bdrv_change_backing_file   = add_cow_change_backing_file,      \
    .bdrv_co_check              = add_cow_co_check

static BlockDriver bdrv_add_cow = {
    .format_name    = "add-cow",
    .bdrv_probe     = add_cow_probe,
    .create_opts    = &add_cow_create_opts,
    ADD_COW_COMMON_FIELDS,
};

#ifdef COWBLK_AS_QCOW2
static int cowblk_qcow2_probe(const uint8_t *buf, int buf_size,
                              const char *filename)
{
    const struct cowblk_driver *d = cowblk_driver_find("qcow2");
    int score;

    if (!d || !d->probe || buf_size <= 0) {
        return 0;
    }
    score = d->probe(buf, buf_size, filename);
    return score < 0 ? 0 : score;
}
#endif

/*
 * The library's qcow2: "cowblk-qcow2" (never probed) beside QEMU's own
 * qcow2 for side-by-side comparison; or, in a build configured with
 * -Dcowblk_qcow2=true (COWBLK_AS_QCOW2), "qcow2" itself, probed, with
 * QEMU's qcow2 left out of the build, so that qemu-iotests -qcow2 test it.
 */
#ifdef COWBLK_AS_QCOW2
/* block.c's -snapshot overlay names QEMU's qcow2 driver by this symbol */
#define bdrv_cowblk_qcow2 bdrv_qcow2
BlockDriver bdrv_cowblk_qcow2 = {
#else
static BlockDriver bdrv_cowblk_qcow2 = {
#endif
#ifdef COWBLK_AS_QCOW2
    .format_name    = "qcow2",
    .bdrv_probe     = cowblk_qcow2_probe,
#else
    .format_name    = "cowblk-qcow2",
#endif
    .create_opts    = &cowblk_qcow2_create_opts,
    .bdrv_snapshot_create = cowblk_qcow2_snapshot_create,
    .bdrv_snapshot_goto = cowblk_qcow2_snapshot_goto,
    .bdrv_snapshot_delete = cowblk_qcow2_snapshot_delete,
    .bdrv_snapshot_list = cowblk_qcow2_snapshot_list,
    .bdrv_co_pwritev_compressed_part = cowblk_qcow2_co_pwritev_compressed_part,
    ADD_COW_COMMON_FIELDS,
};

static const char *lib_format_of(BlockDriverState *bs)
{
    return bs->drv == &bdrv_cowblk_qcow2 ? "qcow2" : "add-cow";
}

static void bdrv_add_cow_init(void)
{
    if (cowblk_abi_version() != COWBLK_ABI_VERSION) {
        error_report("add-cow: libcowblk has C ABI version %u, this QEMU was "
                     "built for %u; add-cow is not available",
                     cowblk_abi_version(), COWBLK_ABI_VERSION);
        return;
    }
    bdrv_register(&bdrv_add_cow);
    /* Registered only when this build of the library has a qcow2 driver. */
    if (cowblk_driver_find("qcow2")) {
        bdrv_register(&bdrv_cowblk_qcow2);
    }
}

block_init(bdrv_add_cow_init);
