//! Non-blocking metadata lookup (`cowblk_map_nb`), for hosts that must not
//! wait for I/O where they ask (the QEMU glue asks in a coroutine).

use super::args::out_arg;
use super::error::{guard, set_message};
use super::handle::{cowblk_image, image};
use crate::nb::CachedMap;
use std::ffi::c_int;

/// `cowblk_map_nb` kind: not allocated in this layer; the bytes are the
/// backing file's (zeros past its end or without one).
pub const COWBLK_MAP_UNALLOCATED: u32 = 0;
/// `cowblk_map_nb` kind: stored data, at `*host` in the data file.
pub const COWBLK_MAP_DATA: u32 = 1;
/// `cowblk_map_nb` kind: allocated in this layer, reads as zeros.
pub const COWBLK_MAP_ZERO: u32 = 2;
/// `cowblk_map_nb` kind: stored compressed (qcow2): read it through the
/// library (`cowblk_preadv`), which decompresses (ABI 5; before, -EAGAIN).
pub const COWBLK_MAP_COMPRESSED: u32 = 3;

/// Where the run at `offset` lives, answered from the metadata cache alone:
/// never reads a file and never waits for a lock that is held across I/O.
/// On success returns 0 and stores in `*kind` a COWBLK_MAP_* value, in
/// `*pnum` the run's length (1 to `bytes`) and in `*host` (if not NULL) the
/// data file offset for COWBLK_MAP_DATA (else 0). Returns -EAGAIN ("would
/// block") when the answer needs I/O (metadata not cached, a cache being
/// loaded or written back): ask `cowblk_block_status` or just do the I/O
/// through the library (which also fills the cache). 0 bytes fail with -EINVAL, a range not inside
/// the image with -EIO (as a read there would).
///
/// The answer is the state at the moment of the call. It stays right for
/// reading: an allocating write copies the backing bytes into the rest of
/// its cluster, so after COWBLK_MAP_UNALLOCATED the backing file's bytes
/// are this layer's bytes, except bytes a concurrent write is changing,
/// where a read may return old contents anyway. Use COWBLK_MAP_DATA and
/// `*host` to decide, not to read the data file behind the library's back:
/// `cowblk_preadv` and the write calls map again. See docs/QEMU.md.
///
/// # Safety
/// `img` is a live handle; `pnum` and `kind` are writable; `host` is NULL
/// or writable.
#[no_mangle]
pub unsafe extern "C" fn cowblk_map_nb(
    img: *mut cowblk_image,
    offset: u64,
    bytes: u64,
    pnum: *mut u64,
    host: *mut u64,
    kind: *mut u32,
) -> c_int {
    guard(|| {
        let h = image(img)?;
        out_arg(pnum, "pnum")?;
        out_arg(kind, "kind")?;
        if bytes == 0 {
            return Err(crate::Error::InvalidArgument(
                "cowblk_map_nb of 0 bytes".into(),
            ));
        }
        let Some((m, n)) = h.img.map_cached(offset, bytes)? else {
            set_message("would block: metadata not cached");
            return Ok(-libc::EAGAIN);
        };
        let (k, at) = match m {
            CachedMap::Unallocated => (COWBLK_MAP_UNALLOCATED, 0),
            CachedMap::Zero => (COWBLK_MAP_ZERO, 0),
            CachedMap::Data { host } => (COWBLK_MAP_DATA, host),
            CachedMap::Compressed => (COWBLK_MAP_COMPRESSED, 0),
        };
        *pnum = n;
        *kind = k;
        if !host.is_null() {
            *host = at;
        }
        Ok(0)
    })
}

/// Reads `iovcnt` buffers' worth of bytes at `offset` only if that needs
/// no waiting: every byte mapped by cached metadata to this layer's data
/// (in the page cache) or zeros. Returns 0 when all were read, -EAGAIN
/// ("would block") when anything would wait for I/O or a lock, or lies
/// outside this layer (unallocated: the backing file's bytes), and a
/// negative errno for real errors. After -EAGAIN the buffers may hold part
/// of the bytes: read the range again with `cowblk_preadv`, which also
/// loads whatever was missing. A host reading in an event loop calls this
/// first and hands only the misses to a worker thread; files opened with
/// O_DIRECT always answer -EAGAIN (their reads wait for the device).
///
/// # Safety
/// `img` is a live handle; `iov` holds `iovcnt` entries of writable memory
/// that stays valid for the call.
#[no_mangle]
pub unsafe extern "C" fn cowblk_preadv_nb(
    img: *mut cowblk_image,
    offset: u64,
    iov: *const libc::iovec,
    iovcnt: c_int,
) -> c_int {
    guard(|| {
        let h = image(img)?;
        let v = super::args::iov_arg(iov, iovcnt, "iov")?;
        if h.img.readv_nowait(&v, offset)? {
            Ok(0)
        } else {
            set_message("would block: metadata or data not cached");
            Ok(-libc::EAGAIN)
        }
    })
}
