//! The C ABI.
//!
//! Conventions (stated once here, repeated where they matter in the header):
//! - Every function returns 0 (or a non-negative value where documented) on
//!   success and a negative errno on failure. After a failure,
//!   `cowblk_last_error()` on the same thread says what went wrong.
//! - Every function runs inside a panic boundary: a Rust panic becomes -EIO
//!   and a message; it never unwinds into C.
//! - Pointer arguments are checked for NULL (-EINVAL). Out-parameters are
//!   written only when the call succeeds.
//! - One `cowblk_image` may be used by many threads at once for I/O, info
//!   and status calls. Only `cowblk_close` needs the caller to make sure no
//!   other call on the same handle is running or will start.
//! - Byte offsets and lengths are in bytes and need no alignment.
//!
//! cbindgen reads this module alone (see build.rs), so the header holds
//! exactly what is declared here.

// C names for C types: the header is the interface, Rust names follow it.
#![allow(non_camel_case_types)]

// Declaration order is the header's order: errors and versions first.
mod error;

mod info;

mod handle;

mod io;

mod backing;

mod check;

mod driver;

mod args;

mod nb;

mod resize;

mod meta;

mod open_opts;
mod snapshot;

pub use backing::cowblk_backing_ops;
pub use check::{cowblk_check, cowblk_check_result};
pub use driver::{cowblk_driver, cowblk_driver_find, cowblk_driver_get};
pub use error::cowblk_last_error;
pub use handle::{
    cowblk_change_backing_file, cowblk_close, cowblk_create, cowblk_create_kv, cowblk_image,
    cowblk_open, cowblk_open_with_backing, cowblk_probe,
};
pub use info::{
    cowblk_abi_version, cowblk_capabilities, cowblk_get_info, cowblk_info, cowblk_info_free,
    cowblk_version,
};
pub use io::{
    cowblk_block_status, cowblk_chain_status, cowblk_cow_range, cowblk_discard, cowblk_flush,
    cowblk_get_length, cowblk_is_allocated, cowblk_preadv, cowblk_pwritev,
    cowblk_pwritev_compressed, cowblk_pwritev_cow, cowblk_truncate, cowblk_write_zeroes,
    cowblk_write_zeroes_flags,
};
pub use meta::{
    cowblk_meta_batch, cowblk_meta_delete, cowblk_meta_get, cowblk_meta_list, cowblk_meta_op,
    cowblk_meta_set, COWBLK_META_DELETE, COWBLK_META_SET,
};
pub use nb::{
    cowblk_map_nb, cowblk_preadv_nb, COWBLK_MAP_COMPRESSED, COWBLK_MAP_DATA,
    COWBLK_MAP_UNALLOCATED, COWBLK_MAP_ZERO,
};
pub use open_opts::cowblk_open_kv;
pub use resize::cowblk_truncate_over;
pub use snapshot::{
    cowblk_snapshot, cowblk_snapshot_apply, cowblk_snapshot_count, cowblk_snapshot_create,
    cowblk_snapshot_delete, cowblk_snapshot_get, COWBLK_SNAPSHOT_ID_LEN, COWBLK_SNAPSHOT_NAME_LEN,
};

/// Version of the C ABI described by this header; `cowblk_abi_version()`
/// returns the library's. It grows by one with every change a host can see
/// (a member appended to a struct or driver table, a table member becoming
/// NULL, a new flag); changes are compatible within a soname, so a program
/// built against this header works with any library whose value is at
/// least this one (see docs/C-API.md, "Versioning"). 2: tables have NULL
/// where a format cannot do an operation (qcow2 writes, raw and qcow2
/// check). 3: the open flags COWBLK_OPEN_CONFINED and
/// COWBLK_OPEN_METADATA_ONLY. 4: `cowblk_map_nb` (COWBLK_MAP_*).
/// 5: `cowblk_preadv_nb`, `cowblk_pwritev_compressed` (and the table
/// member `pwritev_compressed`), qcow2's `change_backing_file` non-NULL;
/// `cowblk_map_nb` answers COWBLK_MAP_COMPRESSED
/// where it said -EAGAIN. 6: `cowblk_check_result.message_fn` and
/// `message_opaque` (every check message, whole); `messages` is cut at
/// the end of a line. 7: `cowblk_check_result.fragmented_clusters` and
/// `compressed_clusters`. 8: the zero flags COWBLK_ZERO_BACKING_ZERO_HEAD
/// and COWBLK_ZERO_BACKING_ZERO_TAIL.
pub const COWBLK_ABI_VERSION: u32 = 8;

/// Open flag: open every file read-only; writes fail with -EROFS.
pub const COWBLK_OPEN_RDONLY: u32 = 1 << 0;
/// Open flag: do not open the backing file; unallocated ranges read zeros.
/// When the image records a backing file, a write that would need its
/// old contents (a partial write of an unallocated cluster) and growing
/// the image fail with -ENOTSUP: the backing data they need is not open.
pub const COWBLK_OPEN_NO_BACKING: u32 = 1 << 1;
/// Open flag: the caller manages the backing file (the QEMU glue, where
/// QEMU owns `bs->backing`). The library opens no backing file and never
/// reads backing data: reading an unallocated range, or a write or
/// write-zeroes that needs copy-on-write, fails with -ENOTSUP. The caller
/// reads unallocated ranges itself (`cowblk_block_status` says which) and
/// writes with `cowblk_cow_range` + `cowblk_pwritev_cow`. Growing the image
/// makes the new clusters read zeros, never backing data; growing from a
/// size inside an unallocated cluster needs its backing bytes and fails
/// with -ENOTSUP.
pub const COWBLK_OPEN_CALLER_BACKING: u32 = 1 << 2;
/// Open flag, read-only opens only: take no lock that keeps writers out
/// (QEMU's force-share, qemu-img -U). Reads may then see data change under
/// them. With a read-write open the call fails with -EINVAL.
pub const COWBLK_OPEN_FORCE_SHARE: u32 = 1 << 3;
/// Open flag: take no image locks on any file of the chain. For hosts that
/// lock the files themselves (the QEMU glue, whose file children QEMU's
/// file-posix locks). Without it every file is locked the way QEMU locks
/// images (docs/C-API.md, "Image locking") and an image in use by another
/// writer fails to open with -EAGAIN.
pub const COWBLK_OPEN_NO_LOCK: u32 = 1 << 5;
/// Open flag, for untrusted images: every file the image names (backing
/// files, add-cow image files, qcow2 data files, at any depth of the chain)
/// must resolve, after symlinks, inside the directory of `path` and be a
/// regular file; it is checked on the file actually opened, so renames
/// during the open cannot slip another file in. Anything else fails the
/// open with -EACCES and a message naming the file and the rule. Without
/// the flag, names are followed wherever they point, as QEMU does.
pub const COWBLK_OPEN_CONFINED: u32 = 1 << 4;
/// Open flag: parse metadata only, as `qemu-img info` does. The data files
/// an image names (add-cow image file, qcow2 data file) are not opened and
/// may be missing (an add-cow file with size field 0 still needs its image
/// file: its length is the size); backing files open the same way. Needs
/// COWBLK_OPEN_RDONLY. `cowblk_get_info`, `cowblk_block_status` on this
/// layer and `cowblk_check` work; reading stored data fails with -ENOTSUP.
pub const COWBLK_OPEN_METADATA_ONLY: u32 = 1 << 6;

/// `cowblk_write_zeroes_flags` flag: the range may be deallocated (holes
/// punched), as QEMU's BDRV_REQ_MAY_UNMAP.
pub const COWBLK_ZERO_MAY_UNMAP: u32 = 1 << 0;
/// `cowblk_write_zeroes_flags` flag: fail with -ENOTSUP rather than write
/// zeros as data, as QEMU's BDRV_REQ_NO_FALLBACK.
pub const COWBLK_ZERO_NO_FALLBACK: u32 = 1 << 1;
/// `cowblk_write_zeroes_flags` flags (ABI 8), for a handle opened with
/// COWBLK_OPEN_CALLER_BACKING: the caller's backing chain reads zeros over
/// the bytes of the request's first cluster outside the request (both
/// sides when the request lies inside one cluster) (HEAD), and over those
/// of its last cluster (TAIL). The library cannot look into the caller's
/// backing file; with these a partial-cluster zero write becomes a zero
/// cluster where this layer also reads zeros there (checked under the
/// cluster's lock), as QEMU's qcow2 does.
pub const COWBLK_ZERO_BACKING_ZERO_HEAD: u32 = 1 << 2;
pub const COWBLK_ZERO_BACKING_ZERO_TAIL: u32 = 1 << 3;

/// `cowblk_info.allocated_bytes`: not computed (ask
/// `cowblk_get_allocated_bytes`).
pub const COWBLK_ALLOCATED_UNKNOWN: u64 = u64::MAX;

/// Bytes of `cowblk_check_result.messages`.
pub const COWBLK_CHECK_MESSAGES_LEN: usize = 1024;
/// `cowblk_check` flag: repair leaks (QEMU's BDRV_FIX_LEAKS).
pub const COWBLK_CHECK_FIX_LEAKS: u32 = 1;
/// `cowblk_check` flag: repair errors too (QEMU's BDRV_FIX_ERRORS).
pub const COWBLK_CHECK_FIX_ERRORS: u32 = 2;

/// Block status: reads of the run return stored data.
pub const COWBLK_BLOCK_DATA: u32 = 0x01;
/// Block status: reads of the run return zeros.
pub const COWBLK_BLOCK_ZERO: u32 = 0x02;
/// Block status: `*map` holds the run's offset in the data file (for
/// add-cow the image file, for raw the file itself).
pub const COWBLK_BLOCK_OFFSET_VALID: u32 = 0x04;
/// Block status: the run is allocated in this layer (not in the backing).
pub const COWBLK_BLOCK_ALLOCATED: u32 = 0x10;
/// Block status: the run ends at the end of the image.
pub const COWBLK_BLOCK_EOF: u32 = 0x20;

/// Capability: the image accepts writes (not opened read-only).
pub const COWBLK_CAP_WRITE: u32 = 1 << 0;
/// Capability: `cowblk_discard` is accepted (a hint; it may keep data).
pub const COWBLK_CAP_DISCARD: u32 = 1 << 1;
/// Capability: `cowblk_write_zeroes` is supported.
pub const COWBLK_CAP_WRITE_ZEROES: u32 = 1 << 2;
/// Capability: `cowblk_block_status` reports allocation in this layer.
pub const COWBLK_CAP_BLOCK_STATUS: u32 = 1 << 3;
/// Capability: `cowblk_truncate` can resize the image.
pub const COWBLK_CAP_TRUNCATE: u32 = 1 << 4;
/// Capability: the format records a backing file.
pub const COWBLK_CAP_BACKING: u32 = 1 << 5;
/// Capability: the handle was opened with `COWBLK_OPEN_CALLER_BACKING`.
pub const COWBLK_CAP_CALLER_BACKING: u32 = 1 << 6;
