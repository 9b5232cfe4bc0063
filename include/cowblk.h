/*
 * cowblk: QEMU-style block format drivers (add-cow, raw) behind a C ABI.
 *
 * Generated from src/ffi/ by cbindgen (build.rs); do not edit. After
 * changing src/ffi/, run `make header` and commit the result.
 *
 * Conventions for every function:
 * - Returns 0 (or a documented non-negative value) on success, a negative
 *   errno on failure; cowblk_last_error() then describes the failure on the
 *   calling thread.
 * - Pointer arguments are checked for NULL (-EINVAL); out-parameters are
 *   written only on success.
 * - No Rust panic crosses into C: it becomes -EIO with a message.
 * - A cowblk_image may be used by many threads at once; only cowblk_close
 *   requires that no other call on that handle runs.
 * - Offsets and lengths are in bytes, with no alignment requirement.
 */

#ifndef COWBLK_H
#define COWBLK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#define COWBLK_VERSION_MAJOR 0
#define COWBLK_VERSION_MINOR 1
#define COWBLK_VERSION_PATCH 0
/* MAJOR * 10000 + MINOR * 100 + PATCH, for #if comparisons. */
#define COWBLK_VERSION_NUMBER 100

/**
 * Version of the C ABI described by this header; `cowblk_abi_version()`
 * returns the library's. It grows by one with every change a host can see
 * (a member appended to a struct or driver table, a table member becoming
 * NULL, a new flag); changes are compatible within a soname, so a program
 * built against this header works with any library whose value is at
 * least this one (see docs/C-API.md, "Versioning"). 2: tables have NULL
 * where a format cannot do an operation (qcow2 writes, raw and qcow2
 * check). 3: the open flags COWBLK_OPEN_CONFINED and
 * COWBLK_OPEN_METADATA_ONLY. 4: `cowblk_map_nb` (COWBLK_MAP_*).
 * 5: `cowblk_preadv_nb`, `cowblk_pwritev_compressed` (and the table
 * member `pwritev_compressed`), qcow2's `change_backing_file` non-NULL;
 * `cowblk_map_nb` answers COWBLK_MAP_COMPRESSED
 * where it said -EAGAIN. 6: `cowblk_check_result.message_fn` and
 * `message_opaque` (every check message, whole); `messages` is cut at
 * the end of a line. 7: `cowblk_check_result.fragmented_clusters` and
 * `compressed_clusters`. 8: the zero flags COWBLK_ZERO_BACKING_ZERO_HEAD
 * and COWBLK_ZERO_BACKING_ZERO_TAIL.
 */
#define COWBLK_ABI_VERSION 8

/**
 * Open flag: open every file read-only; writes fail with -EROFS.
 */
#define COWBLK_OPEN_RDONLY (1 << 0)

/**
 * Open flag: do not open the backing file; unallocated ranges read zeros.
 * When the image records a backing file, a write that would need its
 * old contents (a partial write of an unallocated cluster) and growing
 * the image fail with -ENOTSUP: the backing data they need is not open.
 */
#define COWBLK_OPEN_NO_BACKING (1 << 1)

/**
 * Open flag: the caller manages the backing file (the QEMU glue, where
 * QEMU owns `bs->backing`). The library opens no backing file and never
 * reads backing data: reading an unallocated range, or a write or
 * write-zeroes that needs copy-on-write, fails with -ENOTSUP. The caller
 * reads unallocated ranges itself (`cowblk_block_status` says which) and
 * writes with `cowblk_cow_range` + `cowblk_pwritev_cow`. Growing the image
 * makes the new clusters read zeros, never backing data; growing from a
 * size inside an unallocated cluster needs its backing bytes and fails
 * with -ENOTSUP.
 */
#define COWBLK_OPEN_CALLER_BACKING (1 << 2)

/**
 * Open flag, read-only opens only: take no lock that keeps writers out
 * (QEMU's force-share, qemu-img -U). Reads may then see data change under
 * them. With a read-write open the call fails with -EINVAL.
 */
#define COWBLK_OPEN_FORCE_SHARE (1 << 3)

/**
 * Open flag: take no image locks on any file of the chain. For hosts that
 * lock the files themselves (the QEMU glue, whose file children QEMU's
 * file-posix locks). Without it every file is locked the way QEMU locks
 * images (docs/C-API.md, "Image locking") and an image in use by another
 * writer fails to open with -EAGAIN.
 */
#define COWBLK_OPEN_NO_LOCK (1 << 5)

/**
 * Open flag, for untrusted images: every file the image names (backing
 * files, add-cow image files, qcow2 data files, at any depth of the chain)
 * must resolve, after symlinks, inside the directory of `path` and be a
 * regular file; it is checked on the file actually opened, so renames
 * during the open cannot slip another file in. Anything else fails the
 * open with -EACCES and a message naming the file and the rule. Without
 * the flag, names are followed wherever they point, as QEMU does.
 */
#define COWBLK_OPEN_CONFINED (1 << 4)

/**
 * Open flag: parse metadata only, as `qemu-img info` does. The data files
 * an image names (add-cow image file, qcow2 data file) are not opened and
 * may be missing (an add-cow file with size field 0 still needs its image
 * file: its length is the size); backing files open the same way. Needs
 * COWBLK_OPEN_RDONLY. `cowblk_get_info`, `cowblk_block_status` on this
 * layer and `cowblk_check` work; reading stored data fails with -ENOTSUP.
 */
#define COWBLK_OPEN_METADATA_ONLY (1 << 6)

/**
 * `cowblk_write_zeroes_flags` flag: the range may be deallocated (holes
 * punched), as QEMU's BDRV_REQ_MAY_UNMAP.
 */
#define COWBLK_ZERO_MAY_UNMAP (1 << 0)

/**
 * `cowblk_write_zeroes_flags` flag: fail with -ENOTSUP rather than write
 * zeros as data, as QEMU's BDRV_REQ_NO_FALLBACK.
 */
#define COWBLK_ZERO_NO_FALLBACK (1 << 1)

/**
 * `cowblk_write_zeroes_flags` flags (ABI 8), for a handle opened with
 * COWBLK_OPEN_CALLER_BACKING: the caller's backing chain reads zeros over
 * the bytes of the request's first cluster outside the request (both
 * sides when the request lies inside one cluster) (HEAD), and over those
 * of its last cluster (TAIL). The library cannot look into the caller's
 * backing file; with these a partial-cluster zero write becomes a zero
 * cluster where this layer also reads zeros there (checked under the
 * cluster's lock), as QEMU's qcow2 does.
 */
#define COWBLK_ZERO_BACKING_ZERO_HEAD (1 << 2)

#define COWBLK_ZERO_BACKING_ZERO_TAIL (1 << 3)

/**
 * `cowblk_info.allocated_bytes`: not computed (ask
 * `cowblk_get_allocated_bytes`).
 */
#define COWBLK_ALLOCATED_UNKNOWN UINT64_MAX

/**
 * Bytes of `cowblk_check_result.messages`.
 */
#define COWBLK_CHECK_MESSAGES_LEN 1024

/**
 * `cowblk_check` flag: repair leaks (QEMU's BDRV_FIX_LEAKS).
 */
#define COWBLK_CHECK_FIX_LEAKS 1

/**
 * `cowblk_check` flag: repair errors too (QEMU's BDRV_FIX_ERRORS).
 */
#define COWBLK_CHECK_FIX_ERRORS 2

/**
 * Block status: reads of the run return stored data.
 */
#define COWBLK_BLOCK_DATA 1

/**
 * Block status: reads of the run return zeros.
 */
#define COWBLK_BLOCK_ZERO 2

/**
 * Block status: `*map` holds the run's offset in the data file (for
 * add-cow the image file, for raw the file itself).
 */
#define COWBLK_BLOCK_OFFSET_VALID 4

/**
 * Block status: the run is allocated in this layer (not in the backing).
 */
#define COWBLK_BLOCK_ALLOCATED 16

/**
 * Block status: the run ends at the end of the image.
 */
#define COWBLK_BLOCK_EOF 32

/**
 * Capability: the image accepts writes (not opened read-only).
 */
#define COWBLK_CAP_WRITE (1 << 0)

/**
 * Capability: `cowblk_discard` is accepted (a hint; it may keep data).
 */
#define COWBLK_CAP_DISCARD (1 << 1)

/**
 * Capability: `cowblk_write_zeroes` is supported.
 */
#define COWBLK_CAP_WRITE_ZEROES (1 << 2)

/**
 * Capability: `cowblk_block_status` reports allocation in this layer.
 */
#define COWBLK_CAP_BLOCK_STATUS (1 << 3)

/**
 * Capability: `cowblk_truncate` can resize the image.
 */
#define COWBLK_CAP_TRUNCATE (1 << 4)

/**
 * Capability: the format records a backing file.
 */
#define COWBLK_CAP_BACKING (1 << 5)

/**
 * Capability: the handle was opened with `COWBLK_OPEN_CALLER_BACKING`.
 */
#define COWBLK_CAP_CALLER_BACKING (1 << 6)

/**
 * `cowblk_map_nb` kind: not allocated in this layer; the bytes are the
 * backing file's (zeros past its end or without one).
 */
#define COWBLK_MAP_UNALLOCATED 0

/**
 * `cowblk_map_nb` kind: stored data, at `*host` in the data file.
 */
#define COWBLK_MAP_DATA 1

/**
 * `cowblk_map_nb` kind: allocated in this layer, reads as zeros.
 */
#define COWBLK_MAP_ZERO 2

/**
 * `cowblk_map_nb` kind: stored compressed (qcow2): read it through the
 * library (`cowblk_preadv`), which decompresses (ABI 5; before, -EAGAIN).
 */
#define COWBLK_MAP_COMPRESSED 3

/**
 * `cowblk_meta_op.op`: set `key` to `value_len` bytes at `value`.
 */
#define COWBLK_META_SET 1

/**
 * `cowblk_meta_op.op`: delete `key` (the batch fails with -ENOENT if it
 * is absent).
 */
#define COWBLK_META_DELETE 2

/**
 * Bytes of `cowblk_snapshot.id` and `.name` (QEMU's own limits; longer
 * ones are cut, always NUL-terminated).
 */
#define COWBLK_SNAPSHOT_ID_LEN 128

#define COWBLK_SNAPSHOT_NAME_LEN 256

/**
 * An open image. Opaque; made by `cowblk_open*`, freed by `cowblk_close`.
 *
 * Thread-safety: every call except `cowblk_close` may run on the same
 * handle from many threads at once. Reads and writes to different clusters
 * run in parallel; writes that allocate the same cluster are serialised
 * inside the library.
 */
typedef struct cowblk_image cowblk_image;

/**
 * What `cowblk_get_info` reports about an image.
 *
 * Ownership: every `char *` member is a NUL-terminated string allocated by
 * the library with malloc, or NULL where the image has no such thing.
 * Release them with `cowblk_info_free` (or free() each). Before the call,
 * zero the struct and set `struct_size = sizeof(struct cowblk_info)`.
 */
typedef struct cowblk_info {
  /**
   * sizeof(struct cowblk_info) as the caller compiled it.
   */
  size_t struct_size;
  /**
   * Format name ("add-cow", "raw").
   */
  char *format;
  /**
   * The image's path as opened.
   */
  char *filename;
  /**
   * Virtual size in bytes.
   */
  uint64_t virtual_size;
  /**
   * Bytes one allocation unit covers; 0 for raw.
   */
  uint64_t cluster_size;
  /**
   * The external data file (add-cow's image file), resolved; or NULL.
   */
  char *data_file;
  /**
   * The backing file name as recorded in the image, or NULL.
   */
  char *backing_file;
  /**
   * The backing file name resolved against the image's directory, or NULL.
   */
  char *backing_path;
  /**
   * The recorded backing format, or NULL.
   */
  char *backing_format;
  /**
   * COWBLK_ALLOCATED_UNKNOWN: counting guest bytes allocated in this
   * layer can read all of the image's metadata, so `cowblk_get_info`
   * leaves it to `cowblk_get_allocated_bytes`.
   */
  uint64_t allocated_bytes;
  /**
   * Bytes the image's files occupy on disk.
   */
  uint64_t disk_size;
  /**
   * Whether the handle was opened read-only.
   */
  bool read_only;
} cowblk_info;

/**
 * Callbacks that serve a backing image from the caller's own code, for
 * `cowblk_open_with_backing`.
 *
 * Set `struct_size = sizeof(struct cowblk_backing_ops)`; the library copies
 * the table at open, so it may be freed afterwards, but `opaque` must stay
 * valid until `cowblk_close`. The callbacks run on whichever thread issues
 * the I/O, possibly on several threads at once when the handle is shared,
 * so they must be thread-safe in that case.
 *
 * Re-entrancy: a callback may run while the library holds a range lock on
 * the handle (copy-on-write of a partially written cluster, truncate), so
 * it must not call back into the same handle (no cowblk_* call on the
 * image being served, nor on one whose backing chain reaches it): that
 * call can wait for the lock its own caller holds and deadlock. It may
 * read its own files or other, unrelated handles.
 */
typedef struct cowblk_backing_ops {
  /**
   * sizeof(struct cowblk_backing_ops) as the caller compiled it.
   */
  size_t struct_size;
  /**
   * Stores the backing image's length in `*len`; returns 0 or a negative
   * errno. Called once, by `cowblk_open_with_backing`.
   */
  int (*get_length)(void *opaque, uint64_t *len);
  /**
   * Fills the `iovcnt` buffers with the backing bytes at `offset` (all of
   * them lie before the length `get_length` reported); returns 0 or a
   * negative errno. Never asked for bytes past the end: the library
   * zero-fills those itself.
   */
  int (*preadv)(void *opaque, uint64_t offset, const struct iovec *iov, int iovcnt);
} cowblk_backing_ops;

/**
 * What `cowblk_check` found. Before the call, zero the struct and set
 * `struct_size = sizeof(struct cowblk_check_result)`. No member needs
 * freeing.
 */
typedef struct cowblk_check_result {
  /**
   * sizeof(struct cowblk_check_result) as the caller compiled it.
   */
  size_t struct_size;
  /**
   * Errors that may corrupt data (qemu-img check exits 2).
   */
  uint64_t corruptions;
  /**
   * Wasted space that harms no data (exit 3).
   */
  uint64_t leaks;
  /**
   * Errors that stopped the check from completing (exit 1).
   */
  uint64_t check_errors;
  uint64_t corruptions_fixed;
  uint64_t leaks_fixed;
  /**
   * Allocation units the image addresses and those allocated in this
   * layer; 0 where the format has none.
   */
  uint64_t total_clusters;
  uint64_t allocated_clusters;
  /**
   * First byte past the format's metadata, or 0.
   */
  uint64_t image_end_offset;
  /**
   * One line per problem found, NUL-terminated (cut at 1023 bytes, at
   * the end of a line; `message_fn` gets every line).
   */
  char messages[COWBLK_CHECK_MESSAGES_LEN];
  /**
   * Since ABI 6, set by the caller (NULL: none): called with every
   * message line, whole and NUL-terminated, in order, on the calling
   * thread before `cowblk_check` returns; the line is valid only
   * during the call. For lists longer than `messages` holds (a check
   * can find thousands of leaked clusters).
   */
  void (*message_fn)(void *opaque, const char *line);
  /**
   * Passed to `message_fn` as it is.
   */
  void *message_opaque;
  /**
   * Since ABI 7: allocated clusters not contiguous with the cluster
   * before them in guest order, and compressed clusters (qemu-img
   * check's "fragmented" and "compressed" figures); 0 where the format
   * has none.
   */
  uint64_t fragmented_clusters;
  uint64_t compressed_clusters;
} cowblk_check_result;

/**
 * A format's entry points, like QEMU's `BlockDriver`. Tables are static
 * and owned by the library (valid until it is unloaded); never write to
 * them. A NULL member means the format does not support that operation
 * (a member is never a stub that always fails): raw has no
 * change_backing_file, check or pwritev_compressed; add-cow no
 * pwritev_compressed.
 *
 * Versioning: members are only ever appended, and `abi_version` grows
 * with every change to a table. A host built against ABI N checks
 * `abi_version >= N` and uses only members that lie within `struct_size`.
 *
 * Each member behaves as the flat function of the same name (probe,
 * create and open are bound to this table's format); see those for
 * arguments, ownership and thread-safety.
 */
typedef struct cowblk_driver {
  /**
   * sizeof(struct cowblk_driver) in the library.
   */
  size_t struct_size;
  /**
   * COWBLK_ABI_VERSION of the library.
   */
  uint32_t abi_version;
  /**
   * The format's name, e.g. "add-cow".
   */
  const char *format_name;
  /**
   * Scores 0..100 how likely the first `buf_size` bytes of a file (give
   * at least 512, ideally 4096) are this format; `filename` may be NULL.
   */
  int (*probe)(const uint8_t *buf, size_t buf_size, const char *filename);
  /**
   * As `cowblk_create` with this format.
   */
  int (*create)(const char *path, const char *options);
  /**
   * As `cowblk_open` with this format.
   */
  int (*open)(const char *path, uint32_t flags, uint64_t cache_size, struct cowblk_image **out);
  int (*close)(struct cowblk_image **img);
  int (*readv)(struct cowblk_image *img, uint64_t offset, const struct iovec *iov, int iovcnt);
  int (*writev)(struct cowblk_image *img, uint64_t offset, const struct iovec *iov, int iovcnt);
  int (*flush)(struct cowblk_image *img);
  int (*truncate)(struct cowblk_image *img, uint64_t size);
  int (*is_allocated)(struct cowblk_image *img, uint64_t offset, uint64_t bytes, uint64_t *pnum);
  int (*block_status)(struct cowblk_image *img,
                      uint64_t offset,
                      uint64_t bytes,
                      uint64_t *pnum,
                      uint64_t *map);
  int (*get_info)(struct cowblk_image *img, struct cowblk_info *info);
  int (*discard)(struct cowblk_image *img, uint64_t offset, uint64_t bytes);
  int (*write_zeroes)(struct cowblk_image *img, uint64_t offset, uint64_t bytes);
  int (*get_length)(struct cowblk_image *img, uint64_t *length);
  int (*change_backing_file)(struct cowblk_image *img,
                             const char *backing_file,
                             const char *backing_fmt);
  /**
   * `cowblk_check` (added in ABI 1 after the members above: check
   * `struct_size` before using it).
   */
  int (*check)(struct cowblk_image *img, uint32_t fix, struct cowblk_check_result *result);
  /**
   * `cowblk_pwritev_compressed` (ABI 5: check `struct_size` before
   * using it); NULL for formats without compression.
   */
  int (*pwritev_compressed)(struct cowblk_image *img,
                            uint64_t offset,
                            const struct iovec *iov,
                            int iovcnt);
} cowblk_driver;

/**
 * One change of `cowblk_meta_batch`.
 */
typedef struct cowblk_meta_op {
  /**
   * COWBLK_META_SET or COWBLK_META_DELETE.
   */
  uint32_t op;
  /**
   * NUL-terminated UTF-8, 1 to 255 bytes.
   */
  const char *key;
  /**
   * The value's bytes (sets only; may be NULL when `value_len` is 0).
   */
  const void *value;
  size_t value_len;
} cowblk_meta_op;

/**
 * One internal snapshot. Before the call, zero the struct and set
 * `struct_size = sizeof(struct cowblk_snapshot)`.
 */
typedef struct cowblk_snapshot {
  /**
   * sizeof(struct cowblk_snapshot) as the caller compiled it.
   */
  size_t struct_size;
  /**
   * NUL-terminated id ("1", "2", ...) and name.
   */
  char id[COWBLK_SNAPSHOT_ID_LEN];
  char name[COWBLK_SNAPSHOT_NAME_LEN];
  /**
   * Bytes of saved VM state (0 for disk-only snapshots).
   */
  uint64_t vm_state_size;
  /**
   * Wall-clock time taken: seconds and nanoseconds since the epoch.
   */
  uint64_t date_sec;
  uint32_t date_nsec;
  /**
   * Guest clock at the snapshot, in nanoseconds.
   */
  uint64_t vm_clock_nsec;
  /**
   * Virtual disk size at the snapshot.
   */
  uint64_t disk_size;
  /**
   * Record/replay instruction count; UINT64_MAX when not recorded.
   */
  uint64_t icount;
} cowblk_snapshot;

#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

/**
 * The message of the last failed cowblk call on the calling thread, or ""
 * if the last call succeeded. Every call except this one,
 * `cowblk_version` and `cowblk_abi_version` clears it first.
 *
 * The string belongs to the library and lives in thread-local storage: it
 * stays valid until the next cowblk call on the same thread (which may
 * overwrite it) or until the thread exits. Copy it to keep it. Each thread
 * has its own message; this call never fails and never changes it.
 */
const char *cowblk_last_error(void);

/**
 * The library's C ABI version (COWBLK_ABI_VERSION of the header it was
 * built with).
 */
uint32_t cowblk_abi_version(void);

/**
 * The library's version, "MAJOR.MINOR.PATCH", a static string.
 */
const char *cowblk_version(void);

/**
 * Fills `*info` (see `cowblk_info` for ownership). Nothing is written on
 * failure. A `struct_size` from an older header (down to the first
 * version's struct) gets the members it has, a larger one (a newer header)
 * this version's; -EINVAL below the first version.
 *
 * # Safety
 * `img` is a live handle; `info` points to `info->struct_size` writable
 * bytes.
 */
int cowblk_get_info(struct cowblk_image *img, struct cowblk_info *info);

/**
 * Stores in `*bytes` the guest bytes allocated in this layer of the image
 * (what `cowblk_info.allocated_bytes` once held). Reads all of the image's
 * allocation metadata (an add-cow file's whole bitmap): call it off any
 * event loop.
 *
 * # Safety
 * `img` is a live handle; `bytes` is writable.
 */
int cowblk_get_allocated_bytes(struct cowblk_image *img, uint64_t *bytes);

/**
 * Frees the strings `cowblk_get_info` stored in `*info` and sets them to
 * NULL; numbers are left alone. NULL is a no-op; calling it twice is safe.
 * Only members within `info->struct_size` (and those of the first
 * version) are touched, so a struct from an older header is fine.
 *
 * # Safety
 * `info` is NULL or a struct whose string members are NULL or from
 * `cowblk_get_info`.
 */
void cowblk_info_free(struct cowblk_info *info);

/**
 * A mask of COWBLK_CAP_* for this handle, so a host can advertise what it
 * supports. 0 for NULL.
 *
 * # Safety
 * `img` is NULL or a live handle.
 */
uint32_t cowblk_capabilities(struct cowblk_image *img);

/**
 * Creates an image. `options` is a qemu-img style list
 * ("size=1G,backing_file=base.raw,backing_fmt=raw,image_file=disk.img";
 * ",," stands for a comma inside a value) or NULL.
 *
 * add-cow options: size, backing_file, backing_fmt (required with a
 * backing file), image_file (required; created at the virtual size when
 * missing, an existing one is used and never shrunk), cluster_size. raw:
 * size. qcow2: qemu-img's options (size, cluster_size, compat,
 * lazy_refcounts, refcount_bits, extended_l2, compression_type,
 * preallocation, data_file, data_file_raw, backing_file, backing_fmt),
 * refused where qemu-img refuses them. Without size, the backing file's size is used. Names resolve
 * relative to the directory of `path`. On failure nothing is left behind.
 *
 * Returns 0, or a negative errno (-EINVAL for a bad option, -EEXIST, -EACCES,
 * -ENOENT for a missing backing file, ...).
 *
 * # Safety
 * `format`, `path` and a non-NULL `options` are NUL-terminated strings.
 */
int cowblk_create(const char *format, const char *path, const char *options);

/**
 * Creates an image from `count` option keys and values (no escaping
 * needed). Same options and result as `cowblk_create`.
 *
 * # Safety
 * `keys` and `values` point to `count` NUL-terminated strings each (they
 * may be NULL when `count` is 0).
 */
int cowblk_create_kv(const char *format,
                     const char *path,
                     const char *const *keys,
                     const char *const *values,
                     size_t count);

/**
 * Names the format of the file at `path` from its first bytes, as QEMU's
 * probing does (a file no driver recognises is "raw"). On success stores a
 * string owned by the library, valid until it is unloaded, in `*format`.
 *
 * # Safety
 * `path` is a NUL-terminated string; `format` is writable.
 */
int cowblk_probe(const char *path, const char **format);

/**
 * Opens `path` as `format` and the rest of the chain and stores a new
 * handle in `*out`, or does nothing to `*out` on failure.
 *
 * `format` NULL probes the file (see `cowblk_probe`). `flags` is a mask of
 * COWBLK_OPEN_*. `cache_size` is the metadata cache budget in bytes per
 * image (0 = the driver's default; for add-cow one bitmap byte covers 8
 * clusters, and the cache bounds memory however large the image is).
 * Backing files open read-only with the format recorded in the image.
 *
 * # Safety
 * `path` and a non-NULL `format` are NUL-terminated strings; `out` is
 * writable.
 */
int cowblk_open(const char *path,
                const char *format,
                uint32_t flags,
                uint64_t cache_size,
                struct cowblk_image **out);

/**
 * Like `cowblk_open`, but the backing image is read through `ops` (called
 * with `opaque`) instead of the file the image names. `ops->get_length` is
 * called once, here. `flags` may not hold COWBLK_OPEN_NO_BACKING or
 * COWBLK_OPEN_CALLER_BACKING.
 *
 * # Safety
 * As `cowblk_open`; `ops` points to `ops->struct_size` readable bytes and
 * `opaque` stays valid, and the callbacks callable from any thread using
 * the handle, until `cowblk_close`.
 */
int cowblk_open_with_backing(const char *path,
                             const char *format,
                             uint32_t flags,
                             uint64_t cache_size,
                             const struct cowblk_backing_ops *ops,
                             void *opaque,
                             struct cowblk_image **out);

/**
 * Flushes and frees the handle in `*img` and sets `*img` to NULL. NULL or
 * a NULL `*img` is a no-op returning 0. The handle is freed even when the
 * final flush fails (the negative errno then says the last writes may not
 * be durable).
 *
 * The caller must make sure no other thread is using the handle.
 *
 * # Safety
 * `img` is NULL or points to NULL or to a live handle.
 */
int cowblk_close(struct cowblk_image **img);

/**
 * Records a new backing file name and format in the image without copying
 * any data (`qemu-img rebase -u`); `backing_file` NULL detaches the image
 * from its backing file. The name resolves relative to the image's
 * directory. When the library manages the chain, the new backing file is
 * opened first (a failure changes nothing) and used from then on; with
 * COWBLK_OPEN_CALLER_BACKING or backing callbacks only the record changes.
 *
 * # Safety
 * `img` is a live handle; the strings are NUL-terminated or NULL.
 */
int cowblk_change_backing_file(struct cowblk_image *img,
                               const char *backing_file,
                               const char *backing_fmt);

/**
 * Reads `iovcnt` buffers' worth of bytes at `offset` into `iov`. Any offset
 * and length inside the image work. Unallocated ranges read from the
 * backing chain, or zeros. A range past the end fails with -EIO, as in QEMU.
 *
 * # Safety
 * `img` is a live handle; `iov` holds `iovcnt` entries of writable memory
 * that stays valid for the call.
 */
int cowblk_preadv(struct cowblk_image *img, uint64_t offset, const struct iovec *iov, int iovcnt);

/**
 * Writes the `iovcnt` buffers at `offset` compressed, as QEMU's compressed
 * writes (`qemu-img convert -c`, `qemu-io write -c`): `offset` cluster
 * aligned and the length whole clusters, or ending at the image's end
 * (-EINVAL otherwise); each cluster is compressed on the calling thread
 * and stored compressed, or plainly where compressing does not shrink it.
 * -ENOTSUP for formats without compression (add-cow, raw), -EROFS on a
 * read-only handle. Memory used: one cluster, whatever the length.
 *
 * # Safety
 * `img` is a live handle; `iov` holds `iovcnt` entries of readable memory
 * that stays valid for the call.
 */
int cowblk_pwritev_compressed(struct cowblk_image *img,
                              uint64_t offset,
                              const struct iovec *iov,
                              int iovcnt);

/**
 * Writes the `iovcnt` buffers at `offset`. The unwritten rest of a
 * partially written, unallocated cluster is first copied from the backing
 * chain. Durable only after `cowblk_flush` (or `cowblk_close`).
 *
 * # Safety
 * `img` is a live handle; `iov` holds `iovcnt` entries of readable memory
 * that stays valid for the call.
 */
int cowblk_pwritev(struct cowblk_image *img, uint64_t offset, const struct iovec *iov, int iovcnt);

/**
 * Makes every completed write durable: data first, then the metadata that
 * points at it.
 *
 * # Safety
 * `img` is a live handle.
 */
int cowblk_flush(struct cowblk_image *img);

/**
 * Changes the virtual size to `size` bytes, crash-safely. Grown space
 * reads zeros (never backing data).
 *
 * # Safety
 * `img` is a live handle.
 */
int cowblk_truncate(struct cowblk_image *img, uint64_t size);

/**
 * Hints that `[offset, offset + bytes)` is no longer needed. Contents stay
 * defined: a format drops only what it can without changing what reads
 * return (add-cow with a backing file keeps everything).
 *
 * # Safety
 * `img` is a live handle.
 */
int cowblk_discard(struct cowblk_image *img, uint64_t offset, uint64_t bytes);

/**
 * Makes `[offset, offset + bytes)` read as zeros.
 *
 * # Safety
 * `img` is a live handle.
 */
int cowblk_write_zeroes(struct cowblk_image *img, uint64_t offset, uint64_t bytes);

/**
 * Makes `[offset, offset + bytes)` read as zeros, as `flags` (a mask of
 * COWBLK_ZERO_*) allow: without COWBLK_ZERO_MAY_UNMAP nothing is
 * deallocated (the file keeps its blocks, zeroed); with
 * COWBLK_ZERO_NO_FALLBACK the call fails with -ENOTSUP instead of writing
 * zero buffers or a partly zeroed cluster's other bytes. QEMU's
 * BDRV_REQ_MAY_UNMAP and BDRV_REQ_NO_FALLBACK. `cowblk_write_zeroes` is
 * this with COWBLK_ZERO_MAY_UNMAP.
 *
 * # Safety
 * `img` is a live handle.
 */
int cowblk_write_zeroes_flags(struct cowblk_image *img,
                              uint64_t offset,
                              uint64_t bytes,
                              uint32_t flags);

/**
 * Stores the virtual size in bytes in `*length`.
 *
 * # Safety
 * `img` is a live handle; `length` is writable.
 */
int cowblk_get_length(struct cowblk_image *img, uint64_t *length);

/**
 * QEMU's `bdrv_is_allocated` for this layer: returns 1 if the bytes at
 * `offset` are allocated in this image, 0 if they come from the backing
 * file (or read zeros), or a negative errno; `*pnum` gets the number of
 * bytes from `offset` (at most `bytes`, clamped to the image's end) that
 * share that state. At or past the end, or for 0 bytes: returns 0 with
 * `*pnum` = 0.
 *
 * # Safety
 * `img` is a live handle; `pnum` is writable.
 */
int cowblk_is_allocated(struct cowblk_image *img, uint64_t offset, uint64_t bytes, uint64_t *pnum);

/**
 * QEMU's block status for this layer: returns a mask of COWBLK_BLOCK_*
 * flags (DATA, ZERO, OFFSET_VALID, ALLOCATED, EOF, with QEMU's
 * BDRV_BLOCK_* values) for the run at `offset`, or a negative errno.
 * `*pnum` gets the run's length (at most `bytes`, clamped to the end);
 * `*map`, if `map` is not NULL, gets the run's offset in the data file
 * when OFFSET_VALID is set (else 0). At or past the end: returns
 * COWBLK_BLOCK_EOF with `*pnum` = 0; for 0 bytes: 0 with `*pnum` = 0.
 * An unallocated run reports ZERO only when there is no backing layer.
 *
 * # Safety
 * `img` is a live handle; `pnum` is writable; `map` is NULL or writable.
 */
int cowblk_block_status(struct cowblk_image *img,
                        uint64_t offset,
                        uint64_t bytes,
                        uint64_t *pnum,
                        uint64_t *map);

/**
 * Block status of the whole chain, as `qemu-img map` reports it and as
 * an NBD server answers block status: walking down from this image, the
 * first layer whose run holds data or reads zeros (or the bottom layer).
 * Returns a COWBLK_BLOCK_* mask: DATA, ZERO (also for ranges that no
 * layer allocates and that read zeros), ALLOCATED (set when some layer
 * allocates the run: map's "present"), OFFSET_VALID (then `*map`, if not
 * NULL, gets the offset in that layer's data file) and EOF. `*pnum` gets
 * the run's length (at most `bytes`, clamped to the end) and `*depth`, if
 * not NULL, the layer (0 = this image). With a caller-supplied backing
 * layer the walk stops at this image. At or past the end: COWBLK_BLOCK_EOF
 * with `*pnum` = 0; for 0 bytes: 0 with `*pnum` = 0.
 *
 * # Safety
 * `img` is a live handle; `pnum` is writable; `map` and `depth` are NULL
 * or writable.
 */
int cowblk_chain_status(struct cowblk_image *img,
                        uint64_t offset,
                        uint64_t bytes,
                        uint64_t *pnum,
                        uint64_t *map,
                        uint32_t *depth);

/**
 * For hosts that supply backing data themselves: the range of old
 * contents a write of `[offset, offset + bytes)` would copy (cluster
 * aligned, covering the partially written, unallocated clusters at either
 * end). Stores it in `*cow_offset` and `*cow_bytes`; `*cow_bytes` = 0 (and
 * `*cow_offset` = 0) means the write needs no old contents. Read those
 * bytes from the backing file (zeros past its end) and pass them to
 * `cowblk_pwritev_cow`.
 *
 * # Safety
 * `img` is a live handle; `cow_offset` and `cow_bytes` are writable.
 */
int cowblk_cow_range(struct cowblk_image *img,
                     uint64_t offset,
                     uint64_t bytes,
                     uint64_t *cow_offset,
                     uint64_t *cow_bytes);

/**
 * Writes like `cowblk_pwritev`, taking the old contents of partially
 * written, unallocated clusters from `cow_iov` instead of the backing
 * chain: `cow_iov` holds the backing bytes `[cow_offset, cow_offset +
 * its total length)`, normally the range `cowblk_cow_range` reported.
 * If the write needs old bytes outside that range it fails with -EINVAL
 * before writing anything (only a concurrent shrink-and-grow on another
 * thread could make that check pass and the write still fail part way).
 *
 * # Safety
 * `img` is a live handle; `iov` and `cow_iov` hold `iovcnt` and
 * `cow_iovcnt` entries of readable memory valid for the call.
 */
int cowblk_pwritev_cow(struct cowblk_image *img,
                       uint64_t offset,
                       const struct iovec *iov,
                       int iovcnt,
                       uint64_t cow_offset,
                       const struct iovec *cow_iov,
                       int cow_iovcnt);

/**
 * Checks the image's metadata like `qemu-img check`, repairing what
 * `fix` allows (`COWBLK_CHECK_FIX_LEAKS`, `COWBLK_CHECK_FIX_ERRORS`; a
 * repair needs a read-write handle). Returns 0 with `*result` filled
 * (-EIO with `*result` filled when a repair had to stop: a qcow2 image
 * whose refcount structures need a rebuild under FIX_LEAKS only), or
 * -ENOTSUP for a format without checks (raw), or another negative errno.
 * A `struct_size` from an older header (down to the first version's
 * struct) gets the members it has; -EINVAL below that.
 *
 * # Safety
 * `img` is a live handle; `result` points at a `cowblk_check_result` with
 * `struct_size` set, and at `struct_size` writable bytes.
 */
int cowblk_check(struct cowblk_image *img, uint32_t fix, struct cowblk_check_result *result);

/**
 * The driver table of format `name` ("add-cow", "raw", "qcow2"), or NULL with the
 * last error set if there is none. The table is static: never free it.
 *
 * # Safety
 * `name` is a NUL-terminated string.
 */
const struct cowblk_driver *cowblk_driver_find(const char *name);

/**
 * The `index`-th driver table (0, 1, ...), or NULL past the last one:
 * lets a host list every format. Static; never free it.
 */
const struct cowblk_driver *cowblk_driver_get(size_t index);

/**
 * Where the run at `offset` lives, answered from the metadata cache alone:
 * never reads a file and never waits for a lock that is held across I/O.
 * On success returns 0 and stores in `*kind` a COWBLK_MAP_* value, in
 * `*pnum` the run's length (1 to `bytes`) and in `*host` (if not NULL) the
 * data file offset for COWBLK_MAP_DATA (else 0). Returns -EAGAIN ("would
 * block") when the answer needs I/O (metadata not cached, a cache being
 * loaded or written back): ask `cowblk_block_status` or just do the I/O
 * through the library (which also fills the cache). 0 bytes fail with -EINVAL, a range not inside
 * the image with -EIO (as a read there would).
 *
 * The answer is the state at the moment of the call. It stays right for
 * reading: an allocating write copies the backing bytes into the rest of
 * its cluster, so after COWBLK_MAP_UNALLOCATED the backing file's bytes
 * are this layer's bytes, except bytes a concurrent write is changing,
 * where a read may return old contents anyway. Use COWBLK_MAP_DATA and
 * `*host` to decide, not to read the data file behind the library's back:
 * `cowblk_preadv` and the write calls map again. See docs/QEMU.md.
 *
 * # Safety
 * `img` is a live handle; `pnum` and `kind` are writable; `host` is NULL
 * or writable.
 */
int cowblk_map_nb(struct cowblk_image *img,
                  uint64_t offset,
                  uint64_t bytes,
                  uint64_t *pnum,
                  uint64_t *host,
                  uint32_t *kind);

/**
 * Reads `iovcnt` buffers' worth of bytes at `offset` only if that needs
 * no waiting: every byte mapped by cached metadata to this layer's data
 * (in the page cache) or zeros. Returns 0 when all were read, -EAGAIN
 * ("would block") when anything would wait for I/O or a lock, or lies
 * outside this layer (unallocated: the backing file's bytes), and a
 * negative errno for real errors. After -EAGAIN the buffers may hold part
 * of the bytes: read the range again with `cowblk_preadv`, which also
 * loads whatever was missing. A host reading in an event loop calls this
 * first and hands only the misses to a worker thread; files opened with
 * O_DIRECT always answer -EAGAIN (their reads wait for the device).
 *
 * # Safety
 * `img` is a live handle; `iov` holds `iovcnt` entries of writable memory
 * that stays valid for the call.
 */
int cowblk_preadv_nb(struct cowblk_image *img,
                     uint64_t offset,
                     const struct iovec *iov,
                     int iovcnt);

/**
 * `cowblk_truncate` for a handle opened with COWBLK_OPEN_CALLER_BACKING:
 * `backing_len` is the length of the backing layer the caller manages
 * (`has_backing` false: it has none). Grown space that layer would show
 * (below `backing_len`) is made to read zeros; the rest stays unallocated,
 * as QEMU's formats leave it (plain `cowblk_truncate` in that mode must
 * assume an endless backing layer). QEMU's BDRV_REQ_ZERO_WRITE case.
 *
 * # Safety
 * `img` is a live handle.
 */
int cowblk_truncate_over(struct cowblk_image *img,
                         uint64_t size,
                         bool has_backing,
                         uint64_t backing_len);

/**
 * Reads the value of `key` into `buf`: copies at most `buf_len` bytes
 * and stores the value's full length in `*value_len`, so a caller may ask
 * with `buf_len` 0 (and `buf` NULL) first to learn the size. Reads only
 * the store's directory and this value. Returns 0, -ENOENT if the key is
 * absent, -ENOTSUP for formats without metadata (raw), or another
 * negative errno (-EINVAL for a damaged store, with the rule it breaks).
 *
 * # Safety
 * `img` is a live handle; `key` is NUL-terminated; `buf` has `buf_len`
 * writable bytes (or `buf_len` is 0); `value_len` is writable.
 */
int cowblk_meta_get(struct cowblk_image *img,
                    const char *key,
                    void *buf,
                    size_t buf_len,
                    uint64_t *value_len);

/**
 * Sets `key` (NUL-terminated UTF-8, 1 to 255 bytes) to `value_len` bytes
 * at `value`, replacing any old value, as one crash-safe change. Needs a
 * read-write handle (-EROFS otherwise). Guest I/O on the same handle may
 * run meanwhile.
 *
 * # Safety
 * `img` is a live handle; `key` is NUL-terminated; `value` has
 * `value_len` readable bytes (or `value_len` is 0).
 */
int cowblk_meta_set(struct cowblk_image *img, const char *key, const void *value, size_t value_len);

/**
 * Deletes `key`; -ENOENT if it is absent.
 *
 * # Safety
 * `img` is a live handle; `key` is NUL-terminated.
 */
int cowblk_meta_delete(struct cowblk_image *img, const char *key);

/**
 * Calls `cb(opaque, key, size)` for every key, in bytewise key order,
 * with the value's size in bytes; `key` is valid only during the call.
 * Returns 0 after the last key, the callback's value if it returned
 * non-zero (which stops the listing), or a negative errno (-ENOTSUP for
 * raw).
 *
 * # Safety
 * `img` is a live handle; `cb` is a valid function.
 */
int cowblk_meta_list(struct cowblk_image *img, int (*cb)(void *opaque,
                                                         const char *key,
                                                         uint64_t size), void *opaque);

/**
 * Applies `n` changes in order as one atomic, crash-safe change: after
 * an error or a power cut the image holds all of them or none. Deleting
 * an absent key fails the whole batch with -ENOENT.
 *
 * # Safety
 * `img` is a live handle; `ops` has `n` readable entries whose pointers
 * are valid as `cowblk_meta_op` describes.
 */
int cowblk_meta_batch(struct cowblk_image *img, const struct cowblk_meta_op *ops, size_t n);

/**
 * Like `cowblk_open`, with `count` driver options for the top image as
 * parallel arrays of NUL-terminated keys and values. qcow2 takes
 * "l2-cache-size", "refcount-cache-size" and "cache-size" (bytes, with
 * QEMU's suffixes; cache-size is split between the two caches as QEMU
 * does), "l2-cache-entry-size" (checked as QEMU does; whole tables are
 * cached) and "overlap-check" ("none", "constant", "cached" (the default),
 * "all"); other formats take none. An unknown key or a bad value fails
 * with -EINVAL naming it.
 *
 * # Safety
 * As `cowblk_open`; with `count > 0`, `keys` and `values` point to
 * `count` NUL-terminated strings each.
 */
int cowblk_open_kv(const char *path,
                   const char *format,
                   uint32_t flags,
                   uint64_t cache_size,
                   const char *const *keys,
                   const char *const *values,
                   size_t count,
                   struct cowblk_image **out);

/**
 * The number of internal snapshots the image holds (0 for formats
 * without any), or a negative errno.
 *
 * # Safety
 * `img` is a live handle.
 */
int cowblk_snapshot_count(struct cowblk_image *img);

/**
 * Fills `*out` with snapshot `index` (table order, as `qemu-img snapshot
 * -l` lists them). Returns 0, -ENOENT past the last one, or another
 * negative errno.
 *
 * # Safety
 * `img` is a live handle; `out` points at `struct_size` writable bytes.
 */
int cowblk_snapshot_get(struct cowblk_image *img, uint32_t index, struct cowblk_snapshot *out);

/**
 * Creates an internal snapshot of the active state named `name` (names
 * may repeat; the id is one more than the largest numeric id), dated now.
 * Needs a read-write handle; waits for running requests. -ENOTSUP for
 * formats without snapshots, qcow2 with an external data file, or a
 * qcow2 with 1-bit refcounts holding data (a shared cluster needs a
 * count of 2).
 *
 * # Safety
 * `img` is a live handle; `name` a NUL-terminated UTF-8 string.
 */
int cowblk_snapshot_create(struct cowblk_image *img, const char *name);

/**
 * Makes the active state (contents and virtual size) a copy of the
 * snapshot whose id is `id_or_name`, else the first named so (QEMU's
 * `snapshot -a` / loadvm rule). -ENOENT when there is none; -EINVAL for
 * "cowblk-metadata" (it holds key/value metadata, not a disk state).
 *
 * # Safety
 * `img` is a live handle; `id_or_name` a NUL-terminated UTF-8 string.
 */
int cowblk_snapshot_apply(struct cowblk_image *img, const char *id_or_name);

/**
 * Deletes the first snapshot with this `id` and/or `name` (either may be
 * NULL, not both; with both, both must match), as QEMU's
 * bdrv_snapshot_delete. -ENOENT when none matches.
 *
 * # Safety
 * `img` is a live handle; `id` and `name` NULL or NUL-terminated UTF-8.
 */
int cowblk_snapshot_delete(struct cowblk_image *img, const char *id, const char *name);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* COWBLK_H */
