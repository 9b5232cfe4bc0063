//! Non-blocking lookups: where a run of guest bytes lives, answered from
//! the format's metadata cache or not at all. For hosts that run requests
//! in coroutines on an event loop (the QEMU glue): a cached answer costs no
//! thread hop, a miss sends the request to a worker thread as before.
//!
//! How far an answer may be trusted (docs/QEMU.md, "Non-blocking lookups"):
//! it is the state at the moment of the lookup. Mappings only ever move
//! from "unallocated" to "allocated" while writes run (discard, truncate
//! and emptying aside, which QEMU does not overlap with I/O on the range),
//! and an allocating write copies the backing bytes into the rest of the
//! cluster, so bytes read from the backing file after an "unallocated"
//! answer are the bytes this layer held at the lookup unless a write to
//! those very bytes was in flight, in which case old contents are what a
//! concurrent read may return anyway. "Data" answers are for deciding, not
//! for reading at the host offset: the library's read and write calls map
//! again under their own rules.

use crate::error::Result;
use crate::format::Mapping;
use crate::image::Image;
use crate::io::IoVec;
use std::sync::{RwLockReadGuard, TryLockError};

/// A cached answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CachedMap {
    /// Not allocated in this layer: the backing file's bytes (or zeros).
    Unallocated,
    /// Allocated in this layer and reads as zeros.
    Zero,
    /// Stored data, at `host` in the data file (uncompressed).
    Data { host: u64 },
    /// Stored compressed: only the library can read it.
    Compressed,
}

impl Image {
    /// The mapping of the run at `off` (at most `len` bytes, `len` > 0,
    /// inside the image) and its length, from cached metadata alone;
    /// `Ok(None)` when finding out would block (a cache miss, a lock held
    /// across I/O).
    /// Never does file I/O.
    pub fn map_cached(&self, off: u64, len: u64) -> Result<Option<(CachedMap, u64)>> {
        // The request lock keeps the size still, as for any request; a
        // resize holding it exclusive would make us wait: "would block".
        let Some(_s) = self.try_shared() else {
            return Ok(None);
        };
        self.check_range(off, len)?;
        if len == 0 {
            return Ok(None);
        }
        let Some(ext) = self.fmt.map_cached(off, len)? else {
            return Ok(None);
        };
        let n = ext.len.min(len);
        Ok(match ext.mapping {
            Mapping::Unallocated if n > 0 => Some((CachedMap::Unallocated, n)),
            Mapping::Zero if n > 0 => Some((CachedMap::Zero, n)),
            Mapping::Data { host, .. } if n > 0 => Some((CachedMap::Data { host }, n)),
            Mapping::Compressed { .. } if n > 0 => Some((CachedMap::Compressed, n)),
            _ => None,
        })
    }
}

impl Image {
    /// The request lock shared, if that needs no wait (`Some(None)` for a
    /// read-only image, which takes none); `None` when a resize holds it.
    fn try_shared(&self) -> Option<Option<RwLockReadGuard<'_, ()>>> {
        if self.read_only() {
            return Some(None);
        }
        match self.requests.try_read() {
            Ok(g) => Some(Some(g)),
            Err(TryLockError::Poisoned(p)) => Some(Some(p.into_inner())),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// Reads `iov.len()` bytes at `off` only if nothing blocks: every run
    /// mapped by cached metadata to this layer's data or zeros, and the
    /// data in the page cache. `Ok(false)` ("would block") otherwise, with
    /// `iov` partly filled: read again with `readv`, which also loads what
    /// was missing. Unallocated runs answer `Ok(false)` too: their bytes are
    /// the backing file's, which a host like QEMU reads itself.
    pub fn readv_nowait(&self, iov: &IoVec, off: u64) -> Result<bool> {
        let Some(_s) = self.try_shared() else {
            return Ok(false);
        };
        let len = iov.len() as u64;
        self.check_range(off, len)?;
        let mut done = 0u64;
        while done < len {
            let pos = off + done;
            let Some(ext) = self.fmt.map_cached(pos, len - done)? else {
                return Ok(false);
            };
            let n = ext.len.min(len - done);
            let sliced;
            let part = if n == len {
                iov
            } else {
                sliced = iov.slice(done as usize, n as usize);
                &sliced
            };
            match ext.mapping {
                Mapping::Data { host, .. } if n > 0 => {
                    if !self.fmt.data_file().preadv_nowait(part, host)? {
                        return Ok(false);
                    }
                }
                Mapping::Zero if n > 0 => part.zero(),
                _ => return Ok(false),
            }
            done += n;
        }
        Ok(true)
    }
}
