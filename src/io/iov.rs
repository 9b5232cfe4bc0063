//! Scatter/gather buffers.
//!
//! A request arrives as a list of `iovec`s (from C) or a single slice (from
//! Rust). The engine splits it at extent boundaries without copying, so the
//! list is kept as raw `iovec`s whose lifetime is tied to the borrowed
//! buffers by `PhantomData`.

use smallvec::{smallvec, SmallVec};
use std::marker::PhantomData;

/// Segments kept inline: most requests have one or a few.
type Segs = SmallVec<[libc::iovec; 4]>;

/// A borrowed list of memory segments. `'a` is the lifetime of the memory.
#[derive(Clone)]
pub struct IoVec<'a> {
    segs: Segs,
    len: usize,
    _mem: PhantomData<&'a mut [u8]>,
}

// SAFETY: an IoVec only describes memory it borrows for 'a; moving the
// description to another thread is as safe as moving the borrow.
unsafe impl Send for IoVec<'_> {}
unsafe impl Sync for IoVec<'_> {}

impl<'a> IoVec<'a> {
    /// A list over one mutable buffer (readable and writable).
    pub fn from_mut(buf: &'a mut [u8]) -> Self {
        let len = buf.len();
        IoVec {
            segs: smallvec![libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: len,
            }],
            len,
            _mem: PhantomData,
        }
    }

    /// A list over one immutable buffer. Only write paths may use it: the
    /// engine never stores into a list it was given for writing.
    pub fn from_ref(buf: &'a [u8]) -> Self {
        let len = buf.len();
        IoVec {
            segs: smallvec![libc::iovec {
                iov_base: buf.as_ptr() as *mut libc::c_void,
                iov_len: len,
            }],
            len,
            _mem: PhantomData,
        }
    }

    /// Wraps raw iovecs handed in over the C ABI.
    ///
    /// # Safety
    /// Every segment must be valid for reads (and for writes if the list is
    /// used for a read request) for `'a`, and segments must not overlap.
    pub unsafe fn from_raw(iov: *const libc::iovec, n: usize) -> Self {
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
        }
    }

    /// Total number of bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The raw segments, for preadv/pwritev.
    pub fn segments(&self) -> &[libc::iovec] {
        &self.segs
    }

    /// The sub-list covering bytes `[off, off + len)` of this one.
    pub fn slice(&self, off: usize, len: usize) -> IoVec<'a> {
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
        }
    }

    /// Appends another list (used to glue copy-on-write head and tail
    /// buffers around the caller's data).
    pub fn append(&mut self, other: IoVec<'a>) {
        self.len += other.len;
        self.segs.extend(other.segs);
    }

    /// Fills the described memory with zeros.
    pub fn zero(&self) {
        for s in &self.segs {
            // SAFETY: segments are valid for writes for 'a (read requests only).
            unsafe { std::ptr::write_bytes(s.iov_base as *mut u8, 0, s.iov_len) };
        }
    }

    /// Copies `src` into the described memory, starting at byte `off`.
    pub fn copy_from(&self, off: usize, src: &[u8]) {
        let part = self.slice(off, src.len());
        let mut pos = 0;
        for s in &part.segs {
            // SAFETY: segment valid for writes, src has the bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(src[pos..].as_ptr(), s.iov_base as *mut u8, s.iov_len)
            };
            pos += s.iov_len;
        }
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
}
