//! Data calls: vectored reads and writes, flush, resize, discard, zeroing,
//! allocation status, and copy-on-write with caller-supplied backing bytes.

use super::args::{iov_arg, out_arg};
use super::backing::CallerBytes;
use super::error::guard;
use super::handle::{cowblk_image, image};
use super::{
    COWBLK_BLOCK_ALLOCATED, COWBLK_BLOCK_DATA, COWBLK_BLOCK_EOF, COWBLK_BLOCK_OFFSET_VALID,
    COWBLK_BLOCK_ZERO, COWBLK_ZERO_BACKING_ZERO_HEAD, COWBLK_ZERO_BACKING_ZERO_TAIL,
    COWBLK_ZERO_MAY_UNMAP, COWBLK_ZERO_NO_FALLBACK,
};
use crate::error::Error;
use crate::image::{Backing, BlockStatus};
use crate::io::ZeroFlags;
use libc::iovec;
use std::ffi::c_int;

/// Reads `iovcnt` buffers' worth of bytes at `offset` into `iov`. Any offset
/// and length inside the image work. Unallocated ranges read from the
/// backing chain, or zeros. A range past the end fails with -EIO, as in QEMU.
///
/// # Safety
/// `img` is a live handle; `iov` holds `iovcnt` entries of writable memory
/// that stays valid for the call.
#[no_mangle]
pub unsafe extern "C" fn cowblk_preadv(
    img: *mut cowblk_image,
    offset: u64,
    iov: *const iovec,
    iovcnt: c_int,
) -> c_int {
    guard(|| {
        let h = image(img)?;
        let v = iov_arg(iov, iovcnt, "iov")?;
        h.img.readv(&v, offset)?;
        Ok(0)
    })
}

/// Writes the `iovcnt` buffers at `offset` compressed, as QEMU's compressed
/// writes (`qemu-img convert -c`, `qemu-io write -c`): `offset` cluster
/// aligned and the length whole clusters, or ending at the image's end
/// (-EINVAL otherwise); each cluster is compressed on the calling thread
/// and stored compressed, or plainly where compressing does not shrink it.
/// -ENOTSUP for formats without compression (add-cow, raw), -EROFS on a
/// read-only handle. Memory used: one cluster, whatever the length.
///
/// # Safety
/// `img` is a live handle; `iov` holds `iovcnt` entries of readable memory
/// that stays valid for the call.
#[no_mangle]
pub unsafe extern "C" fn cowblk_pwritev_compressed(
    img: *mut cowblk_image,
    offset: u64,
    iov: *const iovec,
    iovcnt: c_int,
) -> c_int {
    guard(|| {
        let h = image(img)?;
        let v = iov_arg(iov, iovcnt, "iov")?.into_const();
        h.img.writev_compressed(&v, offset)?;
        Ok(0)
    })
}

/// Writes the `iovcnt` buffers at `offset`. The unwritten rest of a
/// partially written, unallocated cluster is first copied from the backing
/// chain. Durable only after `cowblk_flush` (or `cowblk_close`).
///
/// # Safety
/// `img` is a live handle; `iov` holds `iovcnt` entries of readable memory
/// that stays valid for the call.
#[no_mangle]
pub unsafe extern "C" fn cowblk_pwritev(
    img: *mut cowblk_image,
    offset: u64,
    iov: *const iovec,
    iovcnt: c_int,
) -> c_int {
    guard(|| {
        let h = image(img)?;
        // Only read: the caller's buffers may be read-only memory.
        let v = iov_arg(iov, iovcnt, "iov")?.into_const();
        h.img.writev(&v, offset)?;
        Ok(0)
    })
}

/// Makes every completed write durable: data first, then the metadata that
/// points at it.
///
/// # Safety
/// `img` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn cowblk_flush(img: *mut cowblk_image) -> c_int {
    guard(|| {
        image(img)?.img.flush()?;
        Ok(0)
    })
}

/// Changes the virtual size to `size` bytes, crash-safely. Grown space
/// reads zeros (never backing data).
///
/// # Safety
/// `img` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn cowblk_truncate(img: *mut cowblk_image, size: u64) -> c_int {
    guard(|| {
        image(img)?.img.truncate(size)?;
        Ok(0)
    })
}

/// Hints that `[offset, offset + bytes)` is no longer needed. Contents stay
/// defined: a format drops only what it can without changing what reads
/// return (add-cow with a backing file keeps everything).
///
/// # Safety
/// `img` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn cowblk_discard(img: *mut cowblk_image, offset: u64, bytes: u64) -> c_int {
    guard(|| {
        image(img)?.img.discard(offset, bytes)?;
        Ok(0)
    })
}

/// Makes `[offset, offset + bytes)` read as zeros.
///
/// # Safety
/// `img` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn cowblk_write_zeroes(
    img: *mut cowblk_image,
    offset: u64,
    bytes: u64,
) -> c_int {
    guard(|| {
        image(img)?.img.write_zeroes(offset, bytes)?;
        Ok(0)
    })
}

/// Makes `[offset, offset + bytes)` read as zeros, as `flags` (a mask of
/// COWBLK_ZERO_*) allow: without COWBLK_ZERO_MAY_UNMAP nothing is
/// deallocated (the file keeps its blocks, zeroed); with
/// COWBLK_ZERO_NO_FALLBACK the call fails with -ENOTSUP instead of writing
/// zero buffers or a partly zeroed cluster's other bytes. QEMU's
/// BDRV_REQ_MAY_UNMAP and BDRV_REQ_NO_FALLBACK. `cowblk_write_zeroes` is
/// this with COWBLK_ZERO_MAY_UNMAP.
///
/// # Safety
/// `img` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn cowblk_write_zeroes_flags(
    img: *mut cowblk_image,
    offset: u64,
    bytes: u64,
    flags: u32,
) -> c_int {
    guard(|| {
        let known = COWBLK_ZERO_MAY_UNMAP
            | COWBLK_ZERO_NO_FALLBACK
            | COWBLK_ZERO_BACKING_ZERO_HEAD
            | COWBLK_ZERO_BACKING_ZERO_TAIL;
        if flags & !known != 0 {
            return Err(Error::InvalidArgument(format!(
                "unknown zero flags {:#x}",
                flags & !known
            )));
        }
        let f = ZeroFlags {
            may_unmap: flags & COWBLK_ZERO_MAY_UNMAP != 0,
            no_fallback: flags & COWBLK_ZERO_NO_FALLBACK != 0,
            host_zero_head: flags & COWBLK_ZERO_BACKING_ZERO_HEAD != 0,
            host_zero_tail: flags & COWBLK_ZERO_BACKING_ZERO_TAIL != 0,
        };
        image(img)?.img.write_zeroes_flags(offset, bytes, f)?;
        Ok(0)
    })
}

/// Stores the virtual size in bytes in `*length`.
///
/// # Safety
/// `img` is a live handle; `length` is writable.
#[no_mangle]
pub unsafe extern "C" fn cowblk_get_length(img: *mut cowblk_image, length: *mut u64) -> c_int {
    guard(|| {
        let h = image(img)?;
        out_arg(length, "length")?;
        *length = h.img.size();
        Ok(0)
    })
}

/// QEMU's `bdrv_is_allocated` for this layer: returns 1 if the bytes at
/// `offset` are allocated in this image, 0 if they come from the backing
/// file (or read zeros), or a negative errno; `*pnum` gets the number of
/// bytes from `offset` (at most `bytes`, clamped to the image's end) that
/// share that state. At or past the end, or for 0 bytes: returns 0 with
/// `*pnum` = 0.
///
/// # Safety
/// `img` is a live handle; `pnum` is writable.
#[no_mangle]
pub unsafe extern "C" fn cowblk_is_allocated(
    img: *mut cowblk_image,
    offset: u64,
    bytes: u64,
    pnum: *mut u64,
) -> c_int {
    guard(|| {
        let h = image(img)?;
        out_arg(pnum, "pnum")?;
        let size = h.img.size();
        if offset >= size || bytes == 0 {
            *pnum = 0;
            return Ok(0);
        }
        let (alloc, n) = h.img.is_allocated(offset, bytes.min(size - offset))?;
        *pnum = n;
        Ok(alloc as c_int)
    })
}

/// QEMU's block status for this layer: returns a mask of COWBLK_BLOCK_*
/// flags (DATA, ZERO, OFFSET_VALID, ALLOCATED, EOF, with QEMU's
/// BDRV_BLOCK_* values) for the run at `offset`, or a negative errno.
/// `*pnum` gets the run's length (at most `bytes`, clamped to the end);
/// `*map`, if `map` is not NULL, gets the run's offset in the data file
/// when OFFSET_VALID is set (else 0). At or past the end: returns
/// COWBLK_BLOCK_EOF with `*pnum` = 0; for 0 bytes: 0 with `*pnum` = 0.
/// An unallocated run reports ZERO only when there is no backing layer.
///
/// # Safety
/// `img` is a live handle; `pnum` is writable; `map` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn cowblk_block_status(
    img: *mut cowblk_image,
    offset: u64,
    bytes: u64,
    pnum: *mut u64,
    map: *mut u64,
) -> c_int {
    guard(|| {
        let h = image(img)?;
        out_arg(pnum, "pnum")?;
        let size = h.img.size();
        if offset >= size || bytes == 0 {
            *pnum = 0;
            if !map.is_null() {
                *map = 0;
            }
            return Ok(if offset >= size {
                COWBLK_BLOCK_EOF as c_int
            } else {
                0
            });
        }
        let (st, n) = h.img.block_status(offset, bytes.min(size - offset))?;
        *pnum = n;
        if !map.is_null() {
            *map = st.offset.unwrap_or(0);
        }
        Ok(status_flags(&st, offset + n == size))
    })
}

/// The COWBLK_BLOCK_* mask for a status.
fn status_flags(st: &BlockStatus, eof: bool) -> c_int {
    let mut flags = 0;
    for (on, f) in [
        (st.data, COWBLK_BLOCK_DATA),
        (st.zero, COWBLK_BLOCK_ZERO),
        (st.offset.is_some(), COWBLK_BLOCK_OFFSET_VALID),
        (st.allocated, COWBLK_BLOCK_ALLOCATED),
        (eof, COWBLK_BLOCK_EOF),
    ] {
        if on {
            flags |= f;
        }
    }
    flags as c_int
}

/// Block status of the whole chain, as `qemu-img map` reports it and as
/// an NBD server answers block status: walking down from this image, the
/// first layer whose run holds data or reads zeros (or the bottom layer).
/// Returns a COWBLK_BLOCK_* mask: DATA, ZERO (also for ranges that no
/// layer allocates and that read zeros), ALLOCATED (set when some layer
/// allocates the run: map's "present"), OFFSET_VALID (then `*map`, if not
/// NULL, gets the offset in that layer's data file) and EOF. `*pnum` gets
/// the run's length (at most `bytes`, clamped to the end) and `*depth`, if
/// not NULL, the layer (0 = this image). With a caller-supplied backing
/// layer the walk stops at this image. At or past the end: COWBLK_BLOCK_EOF
/// with `*pnum` = 0; for 0 bytes: 0 with `*pnum` = 0.
///
/// # Safety
/// `img` is a live handle; `pnum` is writable; `map` and `depth` are NULL
/// or writable.
#[no_mangle]
pub unsafe extern "C" fn cowblk_chain_status(
    img: *mut cowblk_image,
    offset: u64,
    bytes: u64,
    pnum: *mut u64,
    map: *mut u64,
    depth: *mut u32,
) -> c_int {
    guard(|| {
        let h = image(img)?;
        out_arg(pnum, "pnum")?;
        let size = h.img.size();
        let (st, n, d) = if offset >= size || bytes == 0 {
            let none = BlockStatus {
                allocated: false,
                data: false,
                zero: false,
                offset: None,
                compressed: false,
            };
            (none, 0, 0)
        } else {
            let (d, st, n) = h.img.chain_status(offset, bytes.min(size - offset))?;
            (st, n, d)
        };
        *pnum = n;
        if !map.is_null() {
            *map = st.offset.unwrap_or(0);
        }
        if !depth.is_null() {
            *depth = d as u32;
        }
        Ok(status_flags(
            &st,
            offset >= size || (n > 0 && offset + n == size),
        ))
    })
}

/// For hosts that supply backing data themselves: the range of old
/// contents a write of `[offset, offset + bytes)` would copy (cluster
/// aligned, covering the partially written, unallocated clusters at either
/// end). Stores it in `*cow_offset` and `*cow_bytes`; `*cow_bytes` = 0 (and
/// `*cow_offset` = 0) means the write needs no old contents. Read those
/// bytes from the backing file (zeros past its end) and pass them to
/// `cowblk_pwritev_cow`.
///
/// # Safety
/// `img` is a live handle; `cow_offset` and `cow_bytes` are writable.
#[no_mangle]
pub unsafe extern "C" fn cowblk_cow_range(
    img: *mut cowblk_image,
    offset: u64,
    bytes: u64,
    cow_offset: *mut u64,
    cow_bytes: *mut u64,
) -> c_int {
    guard(|| {
        let h = image(img)?;
        out_arg(cow_offset, "cow_offset")?;
        out_arg(cow_bytes, "cow_bytes")?;
        let (o, n) = h.img.cow_range(offset, bytes)?.unwrap_or((0, 0));
        *cow_offset = o;
        *cow_bytes = n;
        Ok(0)
    })
}

/// Writes like `cowblk_pwritev`, taking the old contents of partially
/// written, unallocated clusters from `cow_iov` instead of the backing
/// chain: `cow_iov` holds the backing bytes `[cow_offset, cow_offset +
/// its total length)`, normally the range `cowblk_cow_range` reported.
/// If the write needs old bytes outside that range it fails with -EINVAL
/// before writing anything (only a concurrent shrink-and-grow on another
/// thread could make that check pass and the write still fail part way).
///
/// # Safety
/// `img` is a live handle; `iov` and `cow_iov` hold `iovcnt` and
/// `cow_iovcnt` entries of readable memory valid for the call.
#[no_mangle]
pub unsafe extern "C" fn cowblk_pwritev_cow(
    img: *mut cowblk_image,
    offset: u64,
    iov: *const iovec,
    iovcnt: c_int,
    cow_offset: u64,
    cow_iov: *const iovec,
    cow_iovcnt: c_int,
) -> c_int {
    guard(|| {
        let h = image(img)?;
        let v = iov_arg(iov, iovcnt, "iov")?.into_const();
        let old = CallerBytes {
            start: cow_offset,
            data: iov_arg(cow_iov, cow_iovcnt, "cow_iov")?.into_const(),
        };
        if let Some((o, n)) = h.img.cow_range(offset, v.len() as u64)? {
            // Checked up front so that a short supply writes nothing.
            if o < old.start || o + n > old.size() {
                return Err(Error::InvalidArgument(format!(
                    "this write needs the backing bytes [{o}, {}) but the caller supplied [{}, {})",
                    o + n,
                    old.start,
                    old.size()
                )));
            }
        }
        h.img.writev_cow(&v, offset, &old)?;
        Ok(0)
    })
}
