/*
 * nbdkit-cowblk-plugin: serves any image libcowblk opens (add-cow, qcow2,
 * raw, with their backing chains) over NBD.
 *
 *   nbdkit cowblk file=disk.add-cow [format=add-cow] [confined=true]
 *          [cache-size=SIZE]
 *
 * A thin layer over the public C ABI (include/cowblk.h): every request maps
 * to one library call. One image handle serves every connection: the
 * library is thread-safe, so requests run in parallel (PARALLEL thread
 * model), and a flush on any connection flushes everything, which makes
 * multi-conn safe.
 */
#define NBDKIT_API_VERSION 2
#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include <nbdkit-plugin.h>

#include "cowblk.h"

/* Configuration. */
static char *file;
static char *format;
static bool confined;
static uint64_t cache_size;

/*
 * The image, opened at the first connection (only then is it known whether
 * nbdkit serves it read-only: `nbdkit -r`), closed at unload. A read-only
 * open takes only the shared locks, so other readers of the same base (for
 * example other nbdkit processes serving overlays of it) are not shut out.
 */
static pthread_mutex_t open_lock = PTHREAD_MUTEX_INITIALIZER;
static cowblk_image *img;
static bool img_readonly;

/* Reports the library's last error to nbdkit and the client. */
static int fail(int neg_errno, const char *what)
{
    nbdkit_error("cowblk: %s: %s", what, cowblk_last_error());
    nbdkit_set_error(-neg_errno);
    return -1;
}

static void cowblk_unload(void)
{
    if (img && cowblk_close(&img) < 0)
        nbdkit_error("cowblk: close: %s", cowblk_last_error());
    free(file);
    free(format);
}

static int cowblk_config(const char *key, const char *value)
{
    if (strcmp(key, "file") == 0) {
        free(file);
        /* nbdkit changes directory when it daemonizes. */
        file = nbdkit_realpath(value);
        return file ? 0 : -1;
    }
    if (strcmp(key, "format") == 0) {
        free(format);
        format = strdup(value);
        if (!format) {
            nbdkit_error("strdup: %m");
            return -1;
        }
        return 0;
    }
    if (strcmp(key, "confined") == 0) {
        int r = nbdkit_parse_bool(value);
        if (r < 0)
            return -1;
        confined = r;
        return 0;
    }
    if (strcmp(key, "cache-size") == 0) {
        int64_t r = nbdkit_parse_size(value);
        if (r < 0)
            return -1;
        cache_size = (uint64_t)r;
        return 0;
    }
    nbdkit_error("cowblk: unknown parameter '%s'", key);
    return -1;
}

static int cowblk_config_complete(void)
{
    if (!file) {
        nbdkit_error("cowblk: the file=IMAGE parameter is required");
        return -1;
    }
#ifndef COWBLK_OPEN_CONFINED
    if (confined) {
        nbdkit_error("cowblk: confined=true needs a libcowblk with COWBLK_OPEN_CONFINED");
        return -1;
    }
#endif
    return 0;
}

#define cowblk_config_help \
    "file=<IMAGE>          (required) The image to serve.\n" \
    "format=add-cow|qcow2|raw   Its format (default: probed).\n" \
    "confined=true         Untrusted image: every file it names must lie in its directory.\n" \
    "cache-size=<SIZE>     Metadata cache budget per image (default: the driver's)."

/* Fails early on a missing file or an unknown format, before any client. */
static int cowblk_get_ready(void)
{
    const char *probed;
    if (cowblk_abi_version() != COWBLK_ABI_VERSION) {
        nbdkit_error("cowblk: built for ABI %d, the library has %u", COWBLK_ABI_VERSION,
                     cowblk_abi_version());
        return -1;
    }
    if (!format && cowblk_probe(file, &probed) < 0)
        return fail(-EINVAL, file);
    return 0;
}

static void *cowblk_open_conn(int readonly)
{
    void *ret = NULL;
    pthread_mutex_lock(&open_lock);
    if (!img) {
        uint32_t flags = readonly ? COWBLK_OPEN_RDONLY : 0;
#ifdef COWBLK_OPEN_CONFINED
        if (confined)
            flags |= COWBLK_OPEN_CONFINED;
#endif
        int r = cowblk_open(file, format, flags, cache_size, &img);
        if (r < 0) {
            fail(r, file);
            goto out;
        }
        img_readonly = readonly;
    } else if (img_readonly && !readonly) {
        nbdkit_error("cowblk: %s is open read-only", file);
        nbdkit_set_error(EROFS);
        goto out;
    }
    ret = img;
out:
    pthread_mutex_unlock(&open_lock);
    return ret;
}

/* Connections share the handle; unload closes it. */
static void cowblk_close_conn(void *handle)
{
    (void)handle;
}

static int64_t cowblk_get_size(void *handle)
{
    uint64_t len;
    int r = cowblk_get_length(handle, &len);
    if (r < 0)
        return fail(r, "get_size");
    return (int64_t)len;
}

static int cowblk_can_write(void *handle)
{
    return (cowblk_capabilities(handle) & COWBLK_CAP_WRITE) != 0;
}

static int cowblk_can_flush(void *handle)
{
    (void)handle;
    return 1;
}

static int cowblk_can_trim(void *handle)
{
    return (cowblk_capabilities(handle) & COWBLK_CAP_DISCARD) != 0;
}

static int cowblk_can_zero(void *handle)
{
    return (cowblk_capabilities(handle) & COWBLK_CAP_WRITE_ZEROES) != 0;
}

/*
 * A fast zero may not fall back to writing zero bytes. The library's zero
 * write marks clusters in metadata or deallocates file ranges where it can,
 * but may write zeros (a partial cluster, a v2 qcow2, a file system without
 * hole punching), so fast-zero requests are refused unless the range
 * already reads zeros (see cowblk_zero).
 */
static int cowblk_can_fast_zero(void *handle)
{
    return cowblk_can_zero(handle);
}

/* Writes are durable on flush; FUA is a flush after the write. */
static int cowblk_can_fua(void *handle)
{
    (void)handle;
    return NBDKIT_FUA_EMULATE;
}

/* One shared handle: a flush on any connection covers all of them. */
static int cowblk_can_multi_conn(void *handle)
{
    (void)handle;
    return 1;
}

static int cowblk_can_cache(void *handle)
{
    (void)handle;
    return NBDKIT_CACHE_EMULATE;
}

static int cowblk_can_extents(void *handle)
{
    (void)handle;
    return 1;
}

static int cowblk_pread(void *handle, void *buf, uint32_t count, uint64_t offset,
                        uint32_t flags)
{
    (void)flags;
    struct iovec v = { buf, count };
    int r = cowblk_preadv(handle, offset, &v, 1);
    return r < 0 ? fail(r, "read") : 0;
}

static int cowblk_flush_conn(void *handle, uint32_t flags)
{
    (void)flags;
    int r = cowblk_flush(handle);
    return r < 0 ? fail(r, "flush") : 0;
}

static int cowblk_pwrite(void *handle, const void *buf, uint32_t count, uint64_t offset,
                         uint32_t flags)
{
    struct iovec v = { (void *)buf, count };
    int r = cowblk_pwritev(handle, offset, &v, 1);
    if (r < 0)
        return fail(r, "write");
    return (flags & NBDKIT_FLAG_FUA) ? cowblk_flush_conn(handle, 0) : 0;
}

static int cowblk_trim(void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
    int r = cowblk_discard(handle, offset, count);
    if (r < 0)
        return fail(r, "trim");
    return (flags & NBDKIT_FLAG_FUA) ? cowblk_flush_conn(handle, 0) : 0;
}

/* Whether the whole range already reads zeros, through the chain. */
static int reads_zeros(void *handle, uint64_t offset, uint64_t count)
{
    uint64_t end = offset + count;
    while (offset < end) {
        uint64_t n;
        int r = cowblk_chain_status(handle, offset, end - offset, &n, NULL, NULL);
        if (r < 0)
            return r;
        if (!(r & COWBLK_BLOCK_ZERO) || n == 0)
            return 0;
        offset += n;
    }
    return 1;
}

static int cowblk_zero(void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
    if (flags & NBDKIT_FLAG_FAST_ZERO) {
        int z = reads_zeros(handle, offset, count);
        if (z < 0)
            return fail(z, "zero");
        if (!z) {
            nbdkit_set_error(ENOTSUP);
            return -1;
        }
        return 0;
    }
    int r = cowblk_write_zeroes(handle, offset, count);
    if (r < 0)
        return fail(r, "zero");
    return (flags & NBDKIT_FLAG_FUA) ? cowblk_flush_conn(handle, 0) : 0;
}

/*
 * NBD block status describes what the client reads, so it walks the whole
 * chain: data anywhere in it is data; a run no layer stores that reads
 * zeros is a hole.
 */
static int cowblk_extents(void *handle, uint32_t count, uint64_t offset, uint32_t flags,
                          struct nbdkit_extents *extents)
{
    uint64_t end = offset + count;
    while (offset < end) {
        uint64_t n;
        int r = cowblk_chain_status(handle, offset, end - offset, &n, NULL, NULL);
        if (r < 0)
            return fail(r, "extents");
        if (n == 0)
            break;
        uint32_t type = 0;
        if (!(r & COWBLK_BLOCK_DATA))
            type |= NBDKIT_EXTENT_HOLE;
        if (r & COWBLK_BLOCK_ZERO)
            type |= NBDKIT_EXTENT_ZERO;
        if (nbdkit_add_extent(extents, offset, n, type) < 0)
            return -1;
        offset += n;
        if (flags & NBDKIT_FLAG_REQ_ONE)
            break;
    }
    return 0;
}

static struct nbdkit_plugin plugin = {
    .name = "cowblk",
    .longname = "cowblk: add-cow, qcow2 and raw images through libcowblk",
    .version = "0.1.0",
    .description = "Serves add-cow, qcow2 and raw images with their backing chains",
    .unload = cowblk_unload,
    .config = cowblk_config,
    .config_complete = cowblk_config_complete,
    .config_help = cowblk_config_help,
    .magic_config_key = "file",
    .get_ready = cowblk_get_ready,
    .open = cowblk_open_conn,
    .close = cowblk_close_conn,
    .get_size = cowblk_get_size,
    .can_write = cowblk_can_write,
    .can_flush = cowblk_can_flush,
    .can_trim = cowblk_can_trim,
    .can_zero = cowblk_can_zero,
    .can_fast_zero = cowblk_can_fast_zero,
    .can_fua = cowblk_can_fua,
    .can_multi_conn = cowblk_can_multi_conn,
    .can_cache = cowblk_can_cache,
    .can_extents = cowblk_can_extents,
    .pread = cowblk_pread,
    .pwrite = cowblk_pwrite,
    .flush = cowblk_flush_conn,
    .trim = cowblk_trim,
    .zero = cowblk_zero,
    .extents = cowblk_extents,
    .errno_is_preserved = 0,
};

NBDKIT_REGISTER_PLUGIN(plugin)
