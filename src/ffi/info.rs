//! Facts about the library and an open image: versions, `cowblk_info`,
//! capabilities.

use super::args::{out_arg, struct_size_arg, write_prefix};
use super::error::{guard, guard_value};
use super::handle::{cowblk_image, image, BackingMode};
use super::{
    COWBLK_ABI_VERSION, COWBLK_CAP_BACKING, COWBLK_CAP_BLOCK_STATUS, COWBLK_CAP_CALLER_BACKING,
    COWBLK_CAP_DISCARD, COWBLK_CAP_TRUNCATE, COWBLK_CAP_WRITE, COWBLK_CAP_WRITE_ZEROES,
};
use crate::error::{Error, Result};
use crate::format;
use std::ffi::{c_char, c_int};

/// The library's C ABI version (COWBLK_ABI_VERSION of the header it was
/// built with).
#[no_mangle]
pub extern "C" fn cowblk_abi_version() -> u32 {
    COWBLK_ABI_VERSION
}

/// The library's version, "MAJOR.MINOR.PATCH", a static string.
#[no_mangle]
pub extern "C" fn cowblk_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// What `cowblk_get_info` reports about an image.
///
/// Ownership: every `char *` member is a NUL-terminated string allocated by
/// the library with malloc, or NULL where the image has no such thing.
/// Release them with `cowblk_info_free` (or free() each). Before the call,
/// zero the struct and set `struct_size = sizeof(struct cowblk_info)`.
#[repr(C)]
pub struct cowblk_info {
    /// sizeof(struct cowblk_info) as the caller compiled it.
    pub struct_size: usize,
    /// Format name ("add-cow", "raw").
    pub format: *mut c_char,
    /// The image's path as opened.
    pub filename: *mut c_char,
    /// Virtual size in bytes.
    pub virtual_size: u64,
    /// Bytes one allocation unit covers; 0 for raw.
    pub cluster_size: u64,
    /// The external data file (add-cow's image file), resolved; or NULL.
    pub data_file: *mut c_char,
    /// The backing file name as recorded in the image, or NULL.
    pub backing_file: *mut c_char,
    /// The backing file name resolved against the image's directory, or NULL.
    pub backing_path: *mut c_char,
    /// The recorded backing format, or NULL.
    pub backing_format: *mut c_char,
    /// COWBLK_ALLOCATED_UNKNOWN: counting guest bytes allocated in this
    /// layer can read all of the image's metadata, so `cowblk_get_info`
    /// leaves it to `cowblk_get_allocated_bytes`.
    pub allocated_bytes: u64,
    /// Bytes the image's files occupy on disk.
    pub disk_size: u64,
    /// Whether the handle was opened read-only.
    pub read_only: bool,
}

/// A malloc'd copy of `s` (up to any NUL), for C to free.
fn c_string(s: &str) -> Result<*mut c_char> {
    let b = s.as_bytes();
    let b = &b[..b.iter().position(|&c| c == 0).unwrap_or(b.len())];
    // SAFETY: malloc'd block of len + 1 bytes, filled and terminated below.
    unsafe {
        let p = libc::malloc(b.len() + 1) as *mut u8;
        if p.is_null() {
            return Err(Error::io(
                "allocating an info string",
                std::io::Error::from_raw_os_error(libc::ENOMEM),
            ));
        }
        std::ptr::copy_nonoverlapping(b.as_ptr(), p, b.len());
        *p.add(b.len()) = 0;
        Ok(p.cast())
    }
}

/// Where the first version (ABI 1) of `cowblk_info` ends: the smallest
/// `struct_size` accepted. Members appended later are filled only for
/// callers whose `struct_size` covers them.
const INFO_V1_END: usize = std::mem::offset_of!(cowblk_info, read_only) + 1;

/// The string members, by offset. A string appended to the struct must be
/// listed here so that callers too old to see it never leak it.
const INFO_STRINGS: [usize; 6] = [
    std::mem::offset_of!(cowblk_info, format),
    std::mem::offset_of!(cowblk_info, filename),
    std::mem::offset_of!(cowblk_info, data_file),
    std::mem::offset_of!(cowblk_info, backing_file),
    std::mem::offset_of!(cowblk_info, backing_path),
    std::mem::offset_of!(cowblk_info, backing_format),
];

/// Frees the string members of `*i` that lie wholly within its first
/// `size` bytes (`inside`) or those that do not (`!inside`), and sets them
/// to NULL.
///
/// # Safety
/// `i` points to a `cowblk_info` whose strings are NULL or from `c_string`,
/// readable and writable for every member freed.
unsafe fn free_strings_within(i: *mut cowblk_info, size: usize, inside: bool) {
    for off in INFO_STRINGS {
        if (off + std::mem::size_of::<*mut c_char>() <= size) != inside {
            continue;
        }
        let p = i.cast::<u8>().add(off).cast::<*mut c_char>();
        libc::free(p.read_unaligned().cast());
        p.write_unaligned(std::ptr::null_mut());
    }
}

/// Frees the strings of an info struct and sets them to NULL.
fn free_strings(i: &mut cowblk_info) {
    // SAFETY: a whole struct we own.
    unsafe { free_strings_within(i, std::mem::size_of::<cowblk_info>(), true) }
}

/// Fills `*info` (see `cowblk_info` for ownership). Nothing is written on
/// failure. A `struct_size` from an older header (down to the first
/// version's struct) gets the members it has, a larger one (a newer header)
/// this version's; -EINVAL below the first version.
///
/// # Safety
/// `img` is a live handle; `info` points to `info->struct_size` writable
/// bytes.
#[no_mangle]
pub unsafe extern "C" fn cowblk_get_info(img: *mut cowblk_image, info: *mut cowblk_info) -> c_int {
    guard(|| {
        let h = image(img)?;
        let given = struct_size_arg(info, INFO_V1_END, "info")?;
        let own = std::mem::size_of::<cowblk_info>();
        // Cheap: nothing beyond in-memory metadata and a stat of the files.
        let ii = h.img.info_cheap()?;
        let mut out = cowblk_info {
            struct_size: own,
            format: std::ptr::null_mut(),
            filename: std::ptr::null_mut(),
            virtual_size: ii.virtual_size,
            cluster_size: ii.cluster_size,
            data_file: std::ptr::null_mut(),
            backing_file: std::ptr::null_mut(),
            backing_path: std::ptr::null_mut(),
            backing_format: std::ptr::null_mut(),
            allocated_bytes: ii.allocated_bytes,
            disk_size: ii.disk_size,
            read_only: ii.read_only,
        };
        let strings = (|| -> Result<()> {
            out.format = c_string(&ii.format)?;
            out.filename = c_string(&ii.filename)?;
            let opt = |s: &Option<String>| s.as_deref().map_or(Ok(std::ptr::null_mut()), c_string);
            out.data_file = opt(&ii.data_file)?;
            out.backing_file = opt(&ii.backing_file)?;
            out.backing_path = opt(&ii.backing_path)?;
            out.backing_format = opt(&ii.backing_format)?;
            Ok(())
        })();
        if let Err(e) = strings {
            free_strings(&mut out);
            return Err(e);
        }
        // Keep the caller's struct_size: it describes their buffer.
        out.struct_size = given;
        // Strings an older caller cannot see would leak: drop them.
        free_strings_within(&mut out, given, false);
        write_prefix(info, given, out);
        Ok(0)
    })
}

/// Stores in `*bytes` the guest bytes allocated in this layer of the image
/// (what `cowblk_info.allocated_bytes` once held). Reads all of the image's
/// allocation metadata (an add-cow file's whole bitmap): call it off any
/// event loop.
///
/// # Safety
/// `img` is a live handle; `bytes` is writable.
#[no_mangle]
pub unsafe extern "C" fn cowblk_get_allocated_bytes(
    img: *mut cowblk_image,
    bytes: *mut u64,
) -> c_int {
    guard(|| {
        let h = image(img)?;
        out_arg(bytes, "bytes")?;
        *bytes = h.img.allocated_bytes()?;
        Ok(0)
    })
}

/// Frees the strings `cowblk_get_info` stored in `*info` and sets them to
/// NULL; numbers are left alone. NULL is a no-op; calling it twice is safe.
/// Only members within `info->struct_size` (and those of the first
/// version) are touched, so a struct from an older header is fine.
///
/// # Safety
/// `info` is NULL or a struct whose string members are NULL or from
/// `cowblk_get_info`.
#[no_mangle]
pub unsafe extern "C" fn cowblk_info_free(info: *mut cowblk_info) {
    guard(|| {
        if !info.is_null() {
            let size = info.cast::<usize>().read_unaligned().max(INFO_V1_END);
            free_strings_within(info, size, true);
        }
        Ok(0)
    });
}

/// A mask of COWBLK_CAP_* for this handle, so a host can advertise what it
/// supports. 0 for NULL.
///
/// # Safety
/// `img` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn cowblk_capabilities(img: *mut cowblk_image) -> u32 {
    guard_value(0, || {
        let h = image(img)?;
        let mut caps = COWBLK_CAP_BLOCK_STATUS;
        if !h.img.read_only() {
            caps |= COWBLK_CAP_WRITE
                | COWBLK_CAP_DISCARD
                | COWBLK_CAP_WRITE_ZEROES
                | COWBLK_CAP_TRUNCATE;
        }
        if format::find_driver(h.img.format_name()).is_ok_and(|d| d.supports_backing) {
            caps |= COWBLK_CAP_BACKING;
        }
        if h.backing == BackingMode::Caller {
            caps |= COWBLK_CAP_CALLER_BACKING;
        }
        Ok(caps)
    })
}
