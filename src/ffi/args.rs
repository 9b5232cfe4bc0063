//! Checking what C hands us: strings, paths, iovec lists, out-parameters.

use crate::error::{Error, Result};
use crate::io::IoVec;
use libc::iovec;
use std::ffi::{c_char, c_int, CStr, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

fn null(what: &str) -> Error {
    Error::InvalidArgument(format!("{what} is NULL"))
}

/// A UTF-8 string argument.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string valid for `'a`.
pub(crate) unsafe fn str_arg<'a>(p: *const c_char, what: &str) -> Result<&'a str> {
    if p.is_null() {
        return Err(null(what));
    }
    CStr::from_ptr(p)
        .to_str()
        .map_err(|_| Error::InvalidArgument(format!("{what} is not valid UTF-8")))
}

/// An optional UTF-8 string argument (NULL = none).
///
/// # Safety
/// As `str_arg`.
pub(crate) unsafe fn opt_str_arg<'a>(p: *const c_char, what: &str) -> Result<Option<&'a str>> {
    if p.is_null() {
        Ok(None)
    } else {
        str_arg(p, what).map(Some)
    }
}

/// A file name: any bytes but NUL, as POSIX allows.
///
/// # Safety
/// As `str_arg`.
pub(crate) unsafe fn path_arg(p: *const c_char, what: &str) -> Result<PathBuf> {
    if p.is_null() {
        return Err(null(what));
    }
    let b = CStr::from_ptr(p).to_bytes();
    if b.is_empty() {
        return Err(Error::InvalidArgument(format!("{what} is empty")));
    }
    Ok(PathBuf::from(OsStr::from_bytes(b)))
}

/// Wraps a C iovec list after checking it: a non-negative count, no NULL
/// list or segment base where there are bytes, a total that fits.
///
/// # Safety
/// The segments must be valid memory for `'a` (writable for reads).
pub(crate) unsafe fn iov_arg<'a>(iov: *const iovec, cnt: c_int, what: &str) -> Result<IoVec<'a>> {
    if cnt < 0 {
        return Err(Error::InvalidArgument(format!(
            "{what}: negative iovec count {cnt}"
        )));
    }
    if cnt == 0 {
        return Ok(IoVec::from_raw(std::ptr::null(), 0));
    }
    if iov.is_null() {
        return Err(null(what));
    }
    let mut total: usize = 0;
    for (i, s) in std::slice::from_raw_parts(iov, cnt as usize)
        .iter()
        .enumerate()
    {
        if s.iov_len > 0 && s.iov_base.is_null() {
            return Err(Error::InvalidArgument(format!(
                "{what}: segment {i} has a NULL base and {} bytes",
                s.iov_len
            )));
        }
        total = total
            .checked_add(s.iov_len)
            .filter(|&t| t <= isize::MAX as usize)
            .ok_or_else(|| Error::InvalidArgument(format!("{what}: total length overflows")))?;
    }
    Ok(IoVec::from_raw(iov, cnt as usize))
}

/// Checks that a required out-parameter is not NULL.
pub(crate) fn out_arg<T>(p: *mut T, what: &str) -> Result<()> {
    if p.is_null() {
        Err(null(what))
    } else {
        Ok(())
    }
}
