//! Scatter/gather buffers.
//!
//! A request arrives as a list of `iovec`s (from C) or a single slice (from
//! Rust). The engine splits it at extent boundaries without copying, so the
//! list is kept as raw `iovec`s whose lifetime is tied to the borrowed
//! buffers by `PhantomData`.

use smallvec::SmallVec;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::ops::Deref;

/// Segments kept inline: most requests have one or a few.
type Segs = SmallVec<[libc::iovec; 4]>;

/// Marker: the memory may be written (read requests fill it).
pub enum Mut {}

/// Marker: the memory is only read (write requests take their data from it).
pub enum Const {}

/// A borrowed list of memory segments. `'a` is the lifetime of the memory;
/// `M` says whether the library may store into it: read paths take
/// `&IoVec<Mut>`, write paths `&IoVec<Const>`. A writable list derefs to a
/// read-only one, so it can be handed to a write path as it is.
///
/// A list over a shared borrow cannot be read into:
///
/// ```compile_fail,E0308
/// # fn f(img: &cowblk::Image) {
/// let buf = [0u8; 512];
/// img.readv(&cowblk::IoVec::from_ref(&buf), 0).unwrap();
/// # }
/// ```
///
/// while a writable one serves both directions:
///
/// ```no_run
/// # fn f(img: &cowblk::Image) {
/// let mut buf = [0u8; 512];
/// let iov = cowblk::IoVec::from_mut(&mut buf);
/// img.readv(&iov, 0).unwrap();
/// img.writev(&iov, 512).unwrap();
/// # }
/// ```
// repr(C): the layout does not depend on `M` (a zero-sized marker), which
// lets `Deref` reinterpret a `&IoVec<Mut>` as a `&IoVec<Const>`.
#[repr(C)]
pub struct IoVec<'a, M = Mut> {
    segs: Segs,
    len: usize,
    _mem: PhantomData<&'a mut [u8]>,
    _mode: PhantomData<M>,
}

impl<M> Clone for IoVec<'_, M> {
    fn clone(&self) -> Self {
        IoVec {
            segs: self.segs.clone(),
            len: self.len,
            _mem: PhantomData,
            _mode: PhantomData,
        }
    }
}

// SAFETY: an IoVec only describes memory it borrows for 'a; moving the
// description to another thread is as safe as moving the borrow.
unsafe impl<M> Send for IoVec<'_, M> {}
unsafe impl<M> Sync for IoVec<'_, M> {}

impl<'a> Deref for IoVec<'a, Mut> {
    type Target = IoVec<'a, Const>;

    fn deref(&self) -> &IoVec<'a, Const> {
        // SAFETY: repr(C) with identical field types except the zero-sized
        // marker, so both instantiations have the same layout; memory that
        // may be written may also be only read.
        unsafe { &*(self as *const IoVec<'a, Mut>).cast::<IoVec<'a, Const>>() }
    }
}

impl<'a> From<IoVec<'a, Mut>> for IoVec<'a, Const> {
    fn from(v: IoVec<'a, Mut>) -> Self {
        v.into_const()
    }
}

impl<'a> IoVec<'a, Mut> {
    /// A list over one mutable buffer (readable and writable).
    pub fn from_mut(buf: &'a mut [u8]) -> Self {
        let len = buf.len();
        Self::one(buf.as_mut_ptr(), len)
    }

    /// Wraps raw iovecs handed in over the C ABI.
    ///
    /// # Safety
    /// Every segment must be valid for reads and writes for `'a` (for reads
    /// only if the list is only used for write requests, e.g. through
    /// [`IoVec::into_const`]), and segments must not overlap.
    pub unsafe fn from_raw(iov: *const libc::iovec, n: usize) -> Self {
        // One segment, the common case, without the general loop.
        if n == 1 && !iov.is_null() && (*iov).iov_len > 0 {
            return Self::one((*iov).iov_base.cast(), (*iov).iov_len);
        }
        let mut segs = Segs::with_capacity(n);
        let mut len = 0usize;
        if n > 0 && !iov.is_null() {
            for s in std::slice::from_raw_parts(iov, n) {
                if s.iov_len > 0 {
                    len = len.saturating_add(s.iov_len);
                    segs.push(*s);
                }
            }
        }
        IoVec {
            segs,
            len,
            _mem: PhantomData,
            _mode: PhantomData,
        }
    }

    /// The same list, read-only.
    pub fn into_const(self) -> IoVec<'a, Const> {
        IoVec {
            segs: self.segs,
            len: self.len,
            _mem: PhantomData,
            _mode: PhantomData,
        }
    }

    /// Fills the described memory with zeros.
    pub fn zero(&self) {
        for s in &self.segs {
            // SAFETY: an IoVec<Mut> only describes memory valid for writes for 'a.
            unsafe { std::ptr::write_bytes(s.iov_base as *mut u8, 0, s.iov_len) };
        }
    }

    /// Copies `src` into the described memory, starting at byte `off`.
    pub fn copy_from(&self, off: usize, src: &[u8]) {
        let part = self.slice(off, src.len());
        let mut pos = 0;
        for s in &part.segs {
            // SAFETY: segment valid for writes (IoVec<Mut>), src has the bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(src[pos..].as_ptr(), s.iov_base as *mut u8, s.iov_len)
            };
            pos += s.iov_len;
        }
    }
}

impl<'a> IoVec<'a, Const> {
    /// A list over one immutable buffer, for write requests only: the type
    /// keeps it away from every path that stores into a list.
    pub fn from_ref(buf: &'a [u8]) -> Self {
        Self::one(buf.as_ptr() as *mut u8, buf.len())
    }
}

impl<'a, M> IoVec<'a, M> {
    #[inline]
    fn one(base: *mut u8, len: usize) -> Self {
        let mut buf = MaybeUninit::<[libc::iovec; 4]>::uninit();
        // SAFETY: the first element is written before the vector claims
        // it; the other three stay unclaimed.
        let segs = unsafe {
            buf.as_mut_ptr().cast::<libc::iovec>().write(libc::iovec {
                iov_base: base.cast(),
                iov_len: len,
            });
            Segs::from_buf_and_len_unchecked(buf, 1)
        };
        IoVec {
            segs,
            len,
            _mem: PhantomData,
            _mode: PhantomData,
        }
    }

    /// Total number of bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The raw segments, for preadv/pwritev. Storing through them is only
    /// allowed for an `IoVec<Mut>`.
    pub fn segments(&self) -> &[libc::iovec] {
        &self.segs
    }

    /// The sub-list covering bytes `[off, off + len)` of this one.
    pub fn slice(&self, off: usize, len: usize) -> IoVec<'a, M> {
        assert!(off.checked_add(len).is_some_and(|e| e <= self.len));
        let mut out = Segs::new();
        let mut skip = off;
        let mut want = len;
        for s in &self.segs {
            if want == 0 {
                break;
            }
            if skip >= s.iov_len {
                skip -= s.iov_len;
                continue;
            }
            let take = (s.iov_len - skip).min(want);
            out.push(libc::iovec {
                // SAFETY: skip < iov_len, so the pointer stays inside the segment.
                iov_base: unsafe { (s.iov_base as *mut u8).add(skip) }.cast(),
                iov_len: take,
            });
            want -= take;
            skip = 0;
        }
        IoVec {
            segs: out,
            len,
            _mem: PhantomData,
            _mode: PhantomData,
        }
    }

    /// Appends another list (used to glue copy-on-write head and tail
    /// buffers around the caller's data). A writable list may be appended
    /// to a read-only one (`.into_const()` it), never the reverse.
    pub fn append(&mut self, other: IoVec<'a, M>) {
        self.len += other.len;
        self.segs.extend(other.segs);
    }

    /// Copies the described bytes `[off, off + dst.len())` into `dst`.
    pub fn copy_to(&self, off: usize, dst: &mut [u8]) {
        let part = self.slice(off, dst.len());
        let mut pos = 0;
        for s in &part.segs {
            // SAFETY: segment valid for reads.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    s.iov_base as *const u8,
                    dst[pos..].as_mut_ptr(),
                    s.iov_len,
                )
            };
            pos += s.iov_len;
        }
    }

    /// True if every byte is zero.
    pub fn is_zero(&self) -> bool {
        self.segs.iter().all(|s| {
            // SAFETY: segment valid for reads.
            let b = unsafe { std::slice::from_raw_parts(s.iov_base as *const u8, s.iov_len) };
            b.iter().all(|&x| x == 0)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_crosses_segments() {
        let mut a = [1u8; 4];
        let mut b = [2u8; 4];
        let mut v = IoVec::from_mut(&mut a);
        v.append(IoVec::from_mut(&mut b));
        let s = v.slice(2, 4);
        assert_eq!(s.len(), 4);
        assert_eq!(s.segments().len(), 2);
        s.zero();
        assert_eq!(a, [1, 1, 0, 0]);
        assert_eq!(b, [0, 0, 2, 2]);
    }

    #[test]
    fn copy_roundtrip() {
        let mut a = [0u8; 3];
        let mut b = [0u8; 5];
        let mut v = IoVec::from_mut(&mut a);
        v.append(IoVec::from_mut(&mut b));
        v.copy_from(1, &[9, 8, 7, 6]);
        let mut out = [0u8; 8];
        v.copy_to(0, &mut out);
        assert_eq!(out, [0, 9, 8, 7, 6, 0, 0, 0]);
    }

    #[test]
    fn writable_list_reads_as_const() {
        let mut a = [7u8; 4];
        let v = IoVec::from_mut(&mut a);
        // Deref: a writable list is usable where a read-only one is asked.
        let c: &IoVec<Const> = &v;
        let mut out = [0u8; 2];
        c.slice(1, 2).copy_to(0, &mut out);
        assert_eq!(out, [7, 7]);
        let mut owned = v.clone().into_const();
        owned.append(IoVec::from_ref(&[1, 2]));
        assert_eq!(owned.len(), 6);
        assert!(!owned.is_zero());
        v.zero();
        assert!(owned.slice(0, 4).is_zero());
    }
}
