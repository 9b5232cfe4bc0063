//! Driver tables: one `cowblk_driver` per format, shaped like QEMU's
//! `BlockDriver`, for hosts that dlopen the library and resolve a single
//! symbol.

use super::args::{opt_str_arg, str_arg};
use super::check::{cowblk_check, cowblk_check_result};
use super::error::{guard, guard_value};
use super::handle::{
    cowblk_change_backing_file, cowblk_close, cowblk_create, cowblk_image, cowblk_open,
};
use super::info::{cowblk_get_info, cowblk_info};
use super::io::{
    cowblk_block_status, cowblk_discard, cowblk_flush, cowblk_get_length, cowblk_is_allocated,
    cowblk_preadv, cowblk_pwritev, cowblk_pwritev_compressed, cowblk_truncate, cowblk_write_zeroes,
};
use super::COWBLK_ABI_VERSION;
use crate::error::Error;
use crate::format;
use libc::iovec;
use std::ffi::{c_char, c_int};
use std::path::Path;

/// A format's entry points, like QEMU's `BlockDriver`. Tables are static
/// and owned by the library (valid until it is unloaded); never write to
/// them. A NULL member means the format does not support that operation
/// (a member is never a stub that always fails): raw has no
/// change_backing_file, check or pwritev_compressed; add-cow no
/// pwritev_compressed.
///
/// Versioning: members are only ever appended, and `abi_version` grows
/// with every change to a table. A host built against ABI N checks
/// `abi_version >= N` and uses only members that lie within `struct_size`.
///
/// Each member behaves as the flat function of the same name (probe,
/// create and open are bound to this table's format); see those for
/// arguments, ownership and thread-safety.
#[repr(C)]
pub struct cowblk_driver {
    /// sizeof(struct cowblk_driver) in the library.
    pub struct_size: usize,
    /// COWBLK_ABI_VERSION of the library.
    pub abi_version: u32,
    /// The format's name, e.g. "add-cow".
    pub format_name: *const c_char,
    /// Scores 0..100 how likely the first `buf_size` bytes of a file (give
    /// at least 512, ideally 4096) are this format; `filename` may be NULL.
    pub probe: Option<
        unsafe extern "C" fn(buf: *const u8, buf_size: usize, filename: *const c_char) -> c_int,
    >,
    /// As `cowblk_create` with this format.
    pub create: Option<unsafe extern "C" fn(path: *const c_char, options: *const c_char) -> c_int>,
    /// As `cowblk_open` with this format.
    pub open: Option<
        unsafe extern "C" fn(
            path: *const c_char,
            flags: u32,
            cache_size: u64,
            out: *mut *mut cowblk_image,
        ) -> c_int,
    >,
    pub close: Option<unsafe extern "C" fn(img: *mut *mut cowblk_image) -> c_int>,
    pub readv: Option<
        unsafe extern "C" fn(
            img: *mut cowblk_image,
            offset: u64,
            iov: *const iovec,
            iovcnt: c_int,
        ) -> c_int,
    >,
    pub writev: Option<
        unsafe extern "C" fn(
            img: *mut cowblk_image,
            offset: u64,
            iov: *const iovec,
            iovcnt: c_int,
        ) -> c_int,
    >,
    pub flush: Option<unsafe extern "C" fn(img: *mut cowblk_image) -> c_int>,
    pub truncate: Option<unsafe extern "C" fn(img: *mut cowblk_image, size: u64) -> c_int>,
    pub is_allocated: Option<
        unsafe extern "C" fn(
            img: *mut cowblk_image,
            offset: u64,
            bytes: u64,
            pnum: *mut u64,
        ) -> c_int,
    >,
    pub block_status: Option<
        unsafe extern "C" fn(
            img: *mut cowblk_image,
            offset: u64,
            bytes: u64,
            pnum: *mut u64,
            map: *mut u64,
        ) -> c_int,
    >,
    pub get_info:
        Option<unsafe extern "C" fn(img: *mut cowblk_image, info: *mut cowblk_info) -> c_int>,
    pub discard:
        Option<unsafe extern "C" fn(img: *mut cowblk_image, offset: u64, bytes: u64) -> c_int>,
    pub write_zeroes:
        Option<unsafe extern "C" fn(img: *mut cowblk_image, offset: u64, bytes: u64) -> c_int>,
    pub get_length: Option<unsafe extern "C" fn(img: *mut cowblk_image, length: *mut u64) -> c_int>,
    pub change_backing_file: Option<
        unsafe extern "C" fn(
            img: *mut cowblk_image,
            backing_file: *const c_char,
            backing_fmt: *const c_char,
        ) -> c_int,
    >,
    /// `cowblk_check` (added in ABI 1 after the members above: check
    /// `struct_size` before using it).
    pub check: Option<
        unsafe extern "C" fn(
            img: *mut cowblk_image,
            fix: u32,
            result: *mut cowblk_check_result,
        ) -> c_int,
    >,
    /// `cowblk_pwritev_compressed` (ABI 5: check `struct_size` before
    /// using it); NULL for formats without compression.
    pub pwritev_compressed: Option<
        unsafe extern "C" fn(
            img: *mut cowblk_image,
            offset: u64,
            iov: *const iovec,
            iovcnt: c_int,
        ) -> c_int,
    >,
}

// SAFETY: tables are immutable statics; their pointers name static data
// and thread-safe functions.
unsafe impl Sync for cowblk_driver {}

/// The probe behind a table entry.
///
/// # Safety
/// `buf` holds `len` readable bytes; `filename` is NULL or NUL-terminated.
unsafe fn probe_with(name: &str, buf: *const u8, len: usize, filename: *const c_char) -> c_int {
    guard(|| {
        if buf.is_null() {
            return Err(Error::InvalidArgument("probe buffer is NULL".into()));
        }
        let d = format::find_driver(name)?;
        let file = opt_str_arg(filename, "filename")?.unwrap_or("");
        let b = std::slice::from_raw_parts(buf, len);
        Ok((d.probe)(b, Path::new(file)))
    })
}

/// Makes one format's table and the three entries bound to its name. The
/// trailing `member: None` list names what the format cannot do.
macro_rules! driver_table {
    ($table:ident, $name:literal, $probe:ident, $create:ident, $open:ident,
     unsupported: [$($none:ident),* $(,)?]) => {
        unsafe extern "C" fn $probe(buf: *const u8, len: usize, filename: *const c_char) -> c_int {
            probe_with($name, buf, len, filename)
        }
        unsafe extern "C" fn $create(path: *const c_char, options: *const c_char) -> c_int {
            cowblk_create(concat!($name, "\0").as_ptr().cast(), path, options)
        }
        unsafe extern "C" fn $open(
            path: *const c_char,
            flags: u32,
            cache_size: u64,
            out: *mut *mut cowblk_image,
        ) -> c_int {
            cowblk_open(
                path,
                concat!($name, "\0").as_ptr().cast(),
                flags,
                cache_size,
                out,
            )
        }
        static $table: cowblk_driver = cowblk_driver {
            $($none: None,)*
            ..cowblk_driver {
            struct_size: std::mem::size_of::<cowblk_driver>(),
            abi_version: COWBLK_ABI_VERSION,
            format_name: concat!($name, "\0").as_ptr().cast(),
            probe: Some($probe),
            create: Some($create),
            open: Some($open),
            close: Some(cowblk_close),
            readv: Some(cowblk_preadv),
            writev: Some(cowblk_pwritev),
            flush: Some(cowblk_flush),
            truncate: Some(cowblk_truncate),
            is_allocated: Some(cowblk_is_allocated),
            block_status: Some(cowblk_block_status),
            get_info: Some(cowblk_get_info),
            discard: Some(cowblk_discard),
            write_zeroes: Some(cowblk_write_zeroes),
            get_length: Some(cowblk_get_length),
            change_backing_file: Some(cowblk_change_backing_file),
            check: Some(cowblk_check),
            pwritev_compressed: Some(cowblk_pwritev_compressed),
            }
        };
    };
}

driver_table!(
    ADDCOW,
    "add-cow",
    addcow_probe,
    addcow_create,
    addcow_open,
    unsupported: [pwritev_compressed]
);
// raw records no backing file and has no metadata to check.
driver_table!(
    RAW,
    "raw",
    raw_probe,
    raw_create,
    raw_open,
    unsupported: [change_backing_file, check, pwritev_compressed]
);
// qcow2 does everything (its backing file changes since ABI 5).
driver_table!(
    QCOW2,
    "qcow2",
    qcow2_probe,
    qcow2_create,
    qcow2_open,
    unsupported: []
);

static TABLES: [&cowblk_driver; 3] = [&ADDCOW, &RAW, &QCOW2];

/// The driver table of format `name` ("add-cow", "raw", "qcow2"), or NULL with the
/// last error set if there is none. The table is static: never free it.
///
/// # Safety
/// `name` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn cowblk_driver_find(name: *const c_char) -> *const cowblk_driver {
    guard_value(std::ptr::null(), || {
        let name = str_arg(name, "format name")?;
        TABLES
            .iter()
            .find(|t| {
                // SAFETY: format_name is a static NUL-terminated literal.
                unsafe { std::ffi::CStr::from_ptr(t.format_name) }.to_bytes() == name.as_bytes()
            })
            .map(|t| *t as *const cowblk_driver)
            .ok_or_else(|| Error::UnknownFormat(format!("no driver table for '{name}'")))
    })
}

/// The `index`-th driver table (0, 1, ...), or NULL past the last one:
/// lets a host list every format. Static; never free it.
#[no_mangle]
pub extern "C" fn cowblk_driver_get(index: usize) -> *const cowblk_driver {
    guard_value(std::ptr::null(), || {
        Ok(TABLES
            .get(index)
            .map_or(std::ptr::null(), |t| *t as *const cowblk_driver))
    })
}
