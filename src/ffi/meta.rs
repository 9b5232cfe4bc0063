//! Key/value metadata inside images (docs/specs/metadata.txt) through the
//! C ABI: get, set, delete, list, and an atomic batch.

use super::args::str_arg;
use super::error::guard;
use super::handle::{cowblk_image, image};
use crate::error::{Error, Result};
use crate::meta::MetaOp;
use std::ffi::{c_char, c_int, c_void, CString};

/// `cowblk_meta_op.op`: set `key` to `value_len` bytes at `value`.
pub const COWBLK_META_SET: u32 = 1;
/// `cowblk_meta_op.op`: delete `key` (the batch fails with -ENOENT if it
/// is absent).
pub const COWBLK_META_DELETE: u32 = 2;

/// One change of `cowblk_meta_batch`.
#[repr(C)]
pub struct cowblk_meta_op {
    /// COWBLK_META_SET or COWBLK_META_DELETE.
    pub op: u32,
    /// NUL-terminated UTF-8, 1 to 255 bytes.
    pub key: *const c_char,
    /// The value's bytes (sets only; may be NULL when `value_len` is 0).
    pub value: *const c_void,
    pub value_len: usize,
}

unsafe fn bytes_arg<'a>(p: *const c_void, len: usize, what: &str) -> Result<&'a [u8]> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(Error::InvalidArgument(format!("{what} is NULL")));
    }
    if len > isize::MAX as usize {
        return Err(Error::InvalidArgument(format!("{what}: {len} bytes")));
    }
    Ok(std::slice::from_raw_parts(p as *const u8, len))
}

/// Reads the value of `key` into `buf`: copies at most `buf_len` bytes
/// and stores the value's full length in `*value_len`, so a caller may ask
/// with `buf_len` 0 (and `buf` NULL) first to learn the size. Reads only
/// the store's directory and this value. Returns 0, -ENOENT if the key is
/// absent, -ENOTSUP for formats without metadata (raw), or another
/// negative errno (-EINVAL for a damaged store, with the rule it breaks).
///
/// # Safety
/// `img` is a live handle; `key` is NUL-terminated; `buf` has `buf_len`
/// writable bytes (or `buf_len` is 0); `value_len` is writable.
#[no_mangle]
pub unsafe extern "C" fn cowblk_meta_get(
    img: *mut cowblk_image,
    key: *const c_char,
    buf: *mut c_void,
    buf_len: usize,
    value_len: *mut u64,
) -> c_int {
    guard(|| {
        let h = image(img)?;
        let key = str_arg(key, "key")?;
        if value_len.is_null() {
            return Err(Error::InvalidArgument("value_len is NULL".into()));
        }
        if buf.is_null() && buf_len > 0 {
            return Err(Error::InvalidArgument("buf is NULL".into()));
        }
        let v = h
            .img
            .meta_get(key)?
            .ok_or_else(|| Error::NotFound(format!("metadata key '{key}'")))?;
        let n = v.len().min(buf_len);
        if n > 0 {
            std::ptr::copy_nonoverlapping(v.as_ptr(), buf as *mut u8, n);
        }
        *value_len = v.len() as u64;
        Ok(0)
    })
}

/// Sets `key` (NUL-terminated UTF-8, 1 to 255 bytes) to `value_len` bytes
/// at `value`, replacing any old value, as one crash-safe change. Needs a
/// read-write handle (-EROFS otherwise). Guest I/O on the same handle may
/// run meanwhile.
///
/// # Safety
/// `img` is a live handle; `key` is NUL-terminated; `value` has
/// `value_len` readable bytes (or `value_len` is 0).
#[no_mangle]
pub unsafe extern "C" fn cowblk_meta_set(
    img: *mut cowblk_image,
    key: *const c_char,
    value: *const c_void,
    value_len: usize,
) -> c_int {
    guard(|| {
        let h = image(img)?;
        let key = str_arg(key, "key")?;
        let v = bytes_arg(value, value_len, "value")?;
        h.img.meta_set(key, v)?;
        Ok(0)
    })
}

/// Deletes `key`; -ENOENT if it is absent.
///
/// # Safety
/// `img` is a live handle; `key` is NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn cowblk_meta_delete(img: *mut cowblk_image, key: *const c_char) -> c_int {
    guard(|| {
        let h = image(img)?;
        let key = str_arg(key, "key")?;
        h.img.meta_delete(key)?;
        Ok(0)
    })
}

/// Calls `cb(opaque, key, size)` for every key, in bytewise key order,
/// with the value's size in bytes; `key` is valid only during the call.
/// Returns 0 after the last key, the callback's value if it returned
/// non-zero (which stops the listing), or a negative errno (-ENOTSUP for
/// raw).
///
/// # Safety
/// `img` is a live handle; `cb` is a valid function.
#[no_mangle]
pub unsafe extern "C" fn cowblk_meta_list(
    img: *mut cowblk_image,
    cb: Option<unsafe extern "C" fn(opaque: *mut c_void, key: *const c_char, size: u64) -> c_int>,
    opaque: *mut c_void,
) -> c_int {
    guard(|| {
        let h = image(img)?;
        let cb = cb.ok_or_else(|| Error::InvalidArgument("callback is NULL".into()))?;
        for e in h.img.meta_list()? {
            // Keys are validated UTF-8 without NUL bytes in practice; one
            // with a NUL cannot be shown to C and is refused.
            let k = CString::new(e.key)
                .map_err(|_| Error::Corrupt("metadata store: a key holds a NUL byte".into()))?;
            let r = cb(opaque, k.as_ptr(), e.size);
            if r != 0 {
                return Ok(r);
            }
        }
        Ok(0)
    })
}

/// Applies `n` changes in order as one atomic, crash-safe change: after
/// an error or a power cut the image holds all of them or none. Deleting
/// an absent key fails the whole batch with -ENOENT.
///
/// # Safety
/// `img` is a live handle; `ops` has `n` readable entries whose pointers
/// are valid as `cowblk_meta_op` describes.
#[no_mangle]
pub unsafe extern "C" fn cowblk_meta_batch(
    img: *mut cowblk_image,
    ops: *const cowblk_meta_op,
    n: usize,
) -> c_int {
    guard(|| {
        let h = image(img)?;
        if n > 0 && ops.is_null() {
            return Err(Error::InvalidArgument("ops is NULL".into()));
        }
        if n > crate::meta::store::MAX_ENTRIES as usize * 2 {
            return Err(Error::InvalidArgument(format!("{n} changes in one batch")));
        }
        let mut list = Vec::with_capacity(n);
        for i in 0..n {
            let o = &*ops.add(i);
            let key = str_arg(o.key, &format!("ops[{i}].key"))?.to_owned();
            list.push(match o.op {
                COWBLK_META_SET => MetaOp::Set(
                    key,
                    bytes_arg(o.value, o.value_len, &format!("ops[{i}].value"))?.to_vec(),
                ),
                COWBLK_META_DELETE => MetaOp::Delete(key),
                x => {
                    return Err(Error::InvalidArgument(format!(
                        "ops[{i}].op is {x} (COWBLK_META_SET or COWBLK_META_DELETE)"
                    )))
                }
            });
        }
        h.img.meta_batch(&list)?;
        Ok(0)
    })
}
