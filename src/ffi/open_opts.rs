//! Opening with driver options (QEMU's `-o key=value` on open).

use super::args::{opt_str_arg, out_arg, path_arg, str_arg};
use super::error::guard;
use super::handle::{open_handle, open_options, BackingMode};
use super::{cowblk_image, COWBLK_OPEN_CALLER_BACKING};
use crate::error::Error;
use std::ffi::{c_char, c_int};

/// Like `cowblk_open`, with `count` driver options for the top image as
/// parallel arrays of NUL-terminated keys and values. qcow2 takes
/// "l2-cache-size", "refcount-cache-size" and "cache-size" (bytes, with
/// QEMU's suffixes; cache-size is split between the two caches as QEMU
/// does), "l2-cache-entry-size" (checked as QEMU does; whole tables are
/// cached) and "overlap-check" ("none", "constant", "cached" (the default),
/// "all"); other formats take none. An unknown key or a bad value fails
/// with -EINVAL naming it.
///
/// # Safety
/// As `cowblk_open`; with `count > 0`, `keys` and `values` point to
/// `count` NUL-terminated strings each.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn cowblk_open_kv(
    path: *const c_char,
    format: *const c_char,
    flags: u32,
    cache_size: u64,
    keys: *const *const c_char,
    values: *const *const c_char,
    count: usize,
    out: *mut *mut cowblk_image,
) -> c_int {
    guard(|| {
        let path = path_arg(path, "path")?;
        let format = opt_str_arg(format, "format")?;
        out_arg(out, "out")?;
        let mut opts = open_options(format, flags, cache_size, None)?;
        if count > 0 {
            if keys.is_null() || values.is_null() {
                return Err(Error::InvalidArgument(
                    "option keys or values is NULL".into(),
                ));
            }
            let keys = std::slice::from_raw_parts(keys, count);
            let values = std::slice::from_raw_parts(values, count);
            for (i, (&k, &v)) in keys.iter().zip(values).enumerate() {
                let k = str_arg(k, &format!("option key {i}"))?;
                let v = str_arg(v, &format!("value of option '{k}'"))?;
                opts.format_opts.push((k.to_owned(), v.to_owned()));
            }
        }
        let mode = if flags & COWBLK_OPEN_CALLER_BACKING != 0 {
            BackingMode::Caller
        } else {
            BackingMode::Library
        };
        *out = open_handle(&path, &opts, mode)?;
        Ok(0)
    })
}
