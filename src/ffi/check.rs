//! `cowblk_check`: qemu-img check through the C ABI.

use super::args::{struct_size_arg, write_prefix};
use super::error::guard;
use super::handle::{cowblk_image, image};
use super::{COWBLK_CHECK_FIX_ERRORS, COWBLK_CHECK_FIX_LEAKS, COWBLK_CHECK_MESSAGES_LEN};

const MESSAGES_LEN: usize = COWBLK_CHECK_MESSAGES_LEN;
use crate::error::Error;
use crate::format::check::Repair;
use std::ffi::{c_char, c_int, c_void, CString};

/// Where the first version (ABI 1) of `cowblk_check_result` ends: the
/// smallest `struct_size` accepted.
const CHECK_V1_END: usize = std::mem::offset_of!(cowblk_check_result, messages) + MESSAGES_LEN;

/// What `cowblk_check` found. Before the call, zero the struct and set
/// `struct_size = sizeof(struct cowblk_check_result)`. No member needs
/// freeing.
#[repr(C)]
pub struct cowblk_check_result {
    /// sizeof(struct cowblk_check_result) as the caller compiled it.
    pub struct_size: usize,
    /// Errors that may corrupt data (qemu-img check exits 2).
    pub corruptions: u64,
    /// Wasted space that harms no data (exit 3).
    pub leaks: u64,
    /// Errors that stopped the check from completing (exit 1).
    pub check_errors: u64,
    pub corruptions_fixed: u64,
    pub leaks_fixed: u64,
    /// Allocation units the image addresses and those allocated in this
    /// layer; 0 where the format has none.
    pub total_clusters: u64,
    pub allocated_clusters: u64,
    /// First byte past the format's metadata, or 0.
    pub image_end_offset: u64,
    /// One line per problem found, NUL-terminated (cut at 1023 bytes, at
    /// the end of a line; `message_fn` gets every line).
    pub messages: [c_char; COWBLK_CHECK_MESSAGES_LEN],
    /// Since ABI 6, set by the caller (NULL: none): called with every
    /// message line, whole and NUL-terminated, in order, on the calling
    /// thread before `cowblk_check` returns; the line is valid only
    /// during the call. For lists longer than `messages` holds (a check
    /// can find thousands of leaked clusters).
    pub message_fn: Option<unsafe extern "C" fn(opaque: *mut c_void, line: *const c_char)>,
    /// Passed to `message_fn` as it is.
    pub message_opaque: *mut c_void,
    /// Since ABI 7: allocated clusters not contiguous with the cluster
    /// before them in guest order, and compressed clusters (qemu-img
    /// check's "fragmented" and "compressed" figures); 0 where the format
    /// has none.
    pub fragmented_clusters: u64,
    pub compressed_clusters: u64,
}

/// Where ABI 6's members end: a caller whose `struct_size` covers them set
/// `message_fn` (NULL or a function).
const CHECK_V6_END: usize =
    std::mem::offset_of!(cowblk_check_result, message_opaque) + std::mem::size_of::<*mut c_void>();

/// Checks the image's metadata like `qemu-img check`, repairing what
/// `fix` allows (`COWBLK_CHECK_FIX_LEAKS`, `COWBLK_CHECK_FIX_ERRORS`; a
/// repair needs a read-write handle). Returns 0 with `*result` filled
/// (-EIO with `*result` filled when a repair had to stop: a qcow2 image
/// whose refcount structures need a rebuild under FIX_LEAKS only), or
/// -ENOTSUP for a format without checks (raw), or another negative errno.
/// A `struct_size` from an older header (down to the first version's
/// struct) gets the members it has; -EINVAL below that.
///
/// # Safety
/// `img` is a live handle; `result` points at a `cowblk_check_result` with
/// `struct_size` set, and at `struct_size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn cowblk_check(
    img: *mut cowblk_image,
    fix: u32,
    result: *mut cowblk_check_result,
) -> c_int {
    guard(|| {
        let h = image(img)?;
        let given = struct_size_arg(result, CHECK_V1_END, "check result")?;
        if fix & !(COWBLK_CHECK_FIX_LEAKS | COWBLK_CHECK_FIX_ERRORS) != 0 {
            return Err(Error::InvalidArgument(format!(
                "unknown check flags {fix:#x}"
            )));
        }
        let repair = if fix & COWBLK_CHECK_FIX_ERRORS != 0 {
            Repair::All
        } else if fix & COWBLK_CHECK_FIX_LEAKS != 0 {
            Repair::Leaks
        } else {
            Repair::None
        };
        // The caller's callback, read before the result overwrites it.
        let (message_fn, message_opaque) = if given >= CHECK_V6_END {
            let c = &*result;
            (c.message_fn, c.message_opaque)
        } else {
            (None, std::ptr::null_mut())
        };
        let r = h.img.check(repair)?;
        if let Some(f) = message_fn {
            for m in &r.messages {
                // A NUL inside would end the line for C anyway.
                let line = m.split('\0').next().unwrap_or("");
                let c = CString::new(line).unwrap_or_default();
                f(message_opaque, c.as_ptr());
            }
        }
        let mut out = cowblk_check_result {
            // The caller's: it describes their buffer.
            struct_size: given,
            corruptions: r.corruptions,
            leaks: r.leaks,
            check_errors: r.check_errors,
            corruptions_fixed: r.corruptions_fixed,
            leaks_fixed: r.leaks_fixed,
            total_clusters: r.total_clusters.unwrap_or(0),
            allocated_clusters: r.allocated_clusters.unwrap_or(0),
            image_end_offset: r.image_end_offset.unwrap_or(0),
            messages: [0; MESSAGES_LEN],
            message_fn,
            message_opaque,
            fragmented_clusters: r.fragmented_clusters.unwrap_or(0),
            compressed_clusters: r.compressed_clusters.unwrap_or(0),
        };
        let text = whole_lines(&r.messages, MESSAGES_LEN - 1);
        for (d, s) in out.messages.iter_mut().zip(text.as_bytes()) {
            *d = *s as c_char;
        }
        write_prefix(result, given, out);
        // A repair that had to stop (qemu-img's "Check failed"): what it
        // found is in *result.
        Ok(if r.failure.is_some() { -libc::EIO } else { 0 })
    })
}

/// The messages joined by newlines, as many whole lines as fit in `cap`
/// bytes (a cut line would read as a different message).
fn whole_lines(messages: &[String], cap: usize) -> String {
    let mut text = String::new();
    for m in messages {
        let sep = usize::from(!text.is_empty());
        if text.len() + sep + m.len() > cap {
            if text.is_empty() {
                // A first line too long for the buffer: its start.
                let mut end = cap.min(m.len());
                while !m.is_char_boundary(end) {
                    end -= 1;
                }
                text.push_str(&m[..end]);
            }
            break;
        }
        if sep == 1 {
            text.push('\n');
        }
        text.push_str(m);
    }
    text
}
