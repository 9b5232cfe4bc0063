//! Backing layers supplied from C: callbacks (`cowblk_backing_ops`), bytes
//! handed to one copy-on-write call, and the "caller manages it" stand-in.

use crate::error::{Error, Result};
use crate::image::Backing;
use crate::io::IoVec;
use libc::iovec;
use std::ffi::{c_int, c_void};

/// Callbacks that serve a backing image from the caller's own code, for
/// `cowblk_open_with_backing`.
///
/// Set `struct_size = sizeof(struct cowblk_backing_ops)`; the library copies
/// the table at open, so it may be freed afterwards, but `opaque` must stay
/// valid until `cowblk_close`. The callbacks run on whichever thread issues
/// the I/O, possibly on several threads at once when the handle is shared,
/// so they must be thread-safe in that case.
///
/// Re-entrancy: a callback may run while the library holds a range lock on
/// the handle (copy-on-write of a partially written cluster, truncate), so
/// it must not call back into the same handle (no cowblk_* call on the
/// image being served, nor on one whose backing chain reaches it): that
/// call can wait for the lock its own caller holds and deadlock. It may
/// read its own files or other, unrelated handles.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct cowblk_backing_ops {
    /// sizeof(struct cowblk_backing_ops) as the caller compiled it.
    pub struct_size: usize,
    /// Stores the backing image's length in `*len`; returns 0 or a negative
    /// errno. Called once, by `cowblk_open_with_backing`.
    pub get_length: Option<unsafe extern "C" fn(opaque: *mut c_void, len: *mut u64) -> c_int>,
    /// Fills the `iovcnt` buffers with the backing bytes at `offset` (all of
    /// them lie before the length `get_length` reported); returns 0 or a
    /// negative errno. Never asked for bytes past the end: the library
    /// zero-fills those itself.
    pub preadv: Option<
        unsafe extern "C" fn(
            opaque: *mut c_void,
            offset: u64,
            iov: *const iovec,
            iovcnt: c_int,
        ) -> c_int,
    >,
}

/// A backing layer read through `cowblk_backing_ops`.
pub(crate) struct CallbackBacking {
    preadv: unsafe extern "C" fn(*mut c_void, u64, *const iovec, c_int) -> c_int,
    opaque: *mut c_void,
    len: u64,
}

// SAFETY: the caller promises (header comment) that the callbacks and
// `opaque` may be used from any thread while the handle is open.
unsafe impl Send for CallbackBacking {}
unsafe impl Sync for CallbackBacking {}

fn callback_error(what: &str, r: c_int) -> Error {
    Error::io(
        format!("backing {what} callback"),
        std::io::Error::from_raw_os_error(if r < 0 { -r } else { libc::EIO }),
    )
}

impl CallbackBacking {
    /// Copies the caller's table (as much of it as `struct_size` covers) and
    /// asks for the length.
    ///
    /// # Safety
    /// `ops` points to at least `ops->struct_size` readable bytes; the
    /// callbacks are safe to call with `opaque`.
    pub(crate) unsafe fn new(ops: *const cowblk_backing_ops, opaque: *mut c_void) -> Result<Self> {
        if ops.is_null() {
            return Err(Error::InvalidArgument("backing ops is NULL".into()));
        }
        let given = (*ops).struct_size;
        let need = std::mem::offset_of!(cowblk_backing_ops, preadv)
            + std::mem::size_of::<Option<unsafe extern "C" fn()>>();
        if given < need {
            return Err(Error::InvalidArgument(format!(
                "backing ops struct_size {given} is smaller than the first version ({need})"
            )));
        }
        let mut t = cowblk_backing_ops {
            struct_size: 0,
            get_length: None,
            preadv: None,
        };
        // Newer callers may pass a longer table: take what we know.
        std::ptr::copy_nonoverlapping(
            ops as *const u8,
            &mut t as *mut cowblk_backing_ops as *mut u8,
            given.min(std::mem::size_of::<cowblk_backing_ops>()),
        );
        let (Some(get_length), Some(preadv)) = (t.get_length, t.preadv) else {
            return Err(Error::InvalidArgument(
                "backing ops need both get_length and preadv".into(),
            ));
        };
        let mut len = 0u64;
        let r = get_length(opaque, &mut len);
        if r != 0 {
            return Err(callback_error("get_length", r));
        }
        Ok(CallbackBacking {
            preadv,
            opaque,
            len,
        })
    }
}

impl Backing for CallbackBacking {
    fn size(&self) -> u64 {
        self.len
    }

    fn read_backing(&self, iov: &IoVec, off: u64) -> Result<()> {
        let n = iov.len() as u64;
        let inside = self.len.saturating_sub(off).min(n);
        if inside > 0 {
            let part = iov.slice(0, inside as usize);
            let segs = part.segments();
            // Bounded by the engine's request splitting; refuse rather than wrap.
            let cnt = c_int::try_from(segs.len())
                .map_err(|_| Error::InvalidArgument("too many iovec segments".into()))?;
            // SAFETY: the segments describe writable memory of this read
            // request; the caller vouched for the callback.
            let r = unsafe { (self.preadv)(self.opaque, off, segs.as_ptr(), cnt) };
            if r != 0 {
                return Err(callback_error("preadv", r)
                    .context(format!("reading {inside} bytes at offset {off}")));
            }
        }
        if inside < n {
            iov.slice(inside as usize, (n - inside) as usize).zero();
        }
        Ok(())
    }
}

/// The old contents of `[start, start + data.len())`, handed to one
/// `cowblk_pwritev_cow` call.
pub(crate) struct CallerBytes<'a> {
    pub start: u64,
    pub data: IoVec<'a, crate::io::Const>,
}

impl Backing for CallerBytes<'_> {
    fn size(&self) -> u64 {
        self.start.saturating_add(self.data.len() as u64)
    }

    fn read_backing(&self, iov: &IoVec, off: u64) -> Result<()> {
        let n = iov.len() as u64;
        let end = self.size();
        if off < self.start || off.checked_add(n).is_none_or(|e| e > end) {
            return Err(Error::InvalidArgument(format!(
                "copy-on-write needs the backing bytes [{off}, {}) but the caller supplied \
                 [{}, {end}) (use cowblk_cow_range to learn the range)",
                off.saturating_add(n),
                self.start
            )));
        }
        let mut tmp = vec![0u8; n as usize];
        self.data.copy_to((off - self.start) as usize, &mut tmp);
        iov.copy_from(0, &tmp);
        Ok(())
    }
}

/// Stands in for a backing layer the caller manages: never reads. Its
/// length is "infinite" so that growing the image owns every new cluster
/// (zeros), whatever the caller's backing file holds past the old end.
pub(crate) struct CallerManaged;

impl Backing for CallerManaged {
    fn size(&self) -> u64 {
        u64::MAX
    }

    fn read_backing(&self, iov: &IoVec, off: u64) -> Result<()> {
        Err(Error::Unsupported(format!(
            "{} bytes at offset {off} are not allocated in this image and the caller manages \
             the backing file: read them from the backing file (cowblk_block_status), or \
             write with cowblk_cow_range + cowblk_pwritev_cow",
            iov.len()
        )))
    }
}
