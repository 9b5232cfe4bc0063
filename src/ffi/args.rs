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
    // One segment, the common case: checked without the loop.
    if cnt == 1 {
        let s = &*iov;
        if s.iov_len > 0 && !s.iov_base.is_null() && s.iov_len <= isize::MAX as usize {
            return Ok(IoVec::from_raw(iov, 1));
        }
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

/// The `struct_size` a caller set in a versioned out-struct (`cowblk_info`,
/// `cowblk_check_result`): any size from the first version's up is fine
/// (older binaries pass smaller ones, newer headers larger ones); below
/// that, or a NULL struct, is an error. `first` is where the first
/// version's last member ends.
///
/// # Safety
/// `p` is NULL or points to a readable `usize` (the struct's first member).
pub(crate) unsafe fn struct_size_arg<T>(p: *const T, first: usize, what: &str) -> Result<usize> {
    if p.is_null() {
        return Err(null(what));
    }
    let given = p.cast::<usize>().read_unaligned();
    if given < first {
        return Err(Error::InvalidArgument(format!(
            "{what} struct_size {given} is smaller than the first version of the struct \
             ({first} bytes): set it to sizeof the struct"
        )));
    }
    Ok(given)
}

/// Stores the leading `given` bytes of `value` (all of it if `given` is
/// larger) at `dst`: a caller built against an older header gets only the
/// members its struct has, one built against a newer header this version's.
///
/// # Safety
/// `dst` points to `given` writable bytes.
pub(crate) unsafe fn write_prefix<T>(dst: *mut T, given: usize, value: T) {
    let n = given.min(std::mem::size_of::<T>());
    let value = std::mem::ManuallyDrop::new(value);
    std::ptr::copy_nonoverlapping((&*value as *const T).cast::<u8>(), dst.cast::<u8>(), n);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A struct that grew: version 1 ended after `a`.
    #[repr(C)]
    struct Grown {
        struct_size: usize,
        a: u64,
        b: u64,
    }
    const V1: usize = std::mem::offset_of!(Grown, a) + 8;

    #[test]
    fn older_struct_gets_only_its_members() {
        // An old caller's struct sits in a bigger buffer; the bytes past
        // its end must stay untouched.
        let mut buf = [0xa5u8; 40];
        buf[..8].copy_from_slice(&V1.to_ne_bytes());
        let p = buf.as_mut_ptr().cast::<Grown>();
        let given = unsafe { struct_size_arg(p, V1, "thing") }.unwrap();
        assert_eq!(given, 16);
        let v = Grown {
            struct_size: given,
            a: 7,
            b: 9,
        };
        unsafe { write_prefix(p, given, v) };
        assert_eq!(&buf[8..16], &7u64.to_ne_bytes());
        assert!(buf[16..].iter().all(|&b| b == 0xa5));
    }

    #[test]
    fn newer_and_too_small_structs() {
        let mut big = [0u8; 64];
        big[..8].copy_from_slice(&64usize.to_ne_bytes());
        let p = big.as_mut_ptr().cast::<Grown>();
        let given = unsafe { struct_size_arg(p, V1, "thing") }.unwrap();
        let v = Grown {
            struct_size: given,
            a: 1,
            b: 2,
        };
        unsafe { write_prefix(p, given, v) };
        assert_eq!(&big[16..24], &2u64.to_ne_bytes());
        assert!(big[24..].iter().all(|&b| b == 0));

        let mut small = [0u8; 16];
        small[..8].copy_from_slice(&15usize.to_ne_bytes());
        let e = unsafe { struct_size_arg(small.as_ptr().cast::<Grown>(), V1, "thing") };
        assert!(e.unwrap_err().to_string().contains("struct_size 15"));
        let n: *const Grown = std::ptr::null();
        assert!(unsafe { struct_size_arg(n, V1, "thing") }.is_err());
    }
}
