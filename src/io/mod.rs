//! The I/O layer: byte-addressed files and the namespace they live in.
//!
//! Formats never touch the OS directly; they see `BlockFile`s handed out by
//! a `Storage`. The POSIX pair is used in production, the in-memory
//! fault-injecting pair (`fault`) by crash tests.

pub mod fault;
pub mod iov;
pub mod lock;
pub mod posix;

use crate::error::{Error, Result};
use std::path::Path;
use std::sync::Arc;

pub use iov::{Const, IoVec, Mut};

/// A byte-addressed file. All methods take `&self`: implementations must be
/// safe to call from many threads at once.
#[allow(clippy::len_without_is_empty)] // a file's emptiness is never asked
pub trait BlockFile: Send + Sync {
    /// Reads `iov.len()` bytes at `off`; bytes past the end of the file read
    /// as zeros.
    fn preadv(&self, iov: &IoVec, off: u64) -> Result<()>;
    /// Writes `iov.len()` bytes at `off`, growing the file if needed.
    fn pwritev(&self, iov: &IoVec<Const>, off: u64) -> Result<()>;
    /// Makes every completed write durable.
    fn flush(&self) -> Result<()>;
    /// Current length in bytes.
    fn len(&self) -> Result<u64>;
    /// Grows (with zeros) or shrinks the file.
    fn set_len(&self, len: u64) -> Result<()>;
    /// Makes `[off, off + len)` read as zeros, deallocating where the OS can.
    fn write_zeroes(&self, off: u64, len: u64) -> Result<()> {
        self.zero_range(off, len, ZeroFlags::UNMAP)
    }
    /// Makes `[off, off + len)` read as zeros as `flags` allow: deallocate
    /// only with `may_unmap`; with `no_fallback`, fail with
    /// `Error::Unsupported` rather than write zero buffers.
    fn zero_range(&self, off: u64, len: u64, flags: ZeroFlags) -> Result<()> {
        if flags.no_fallback {
            return Err(Error::Unsupported(format!(
                "'{}' cannot zero without writing zeros",
                self.name()
            )));
        }
        write_zeroes_by_writing(self, off, len)
    }
    /// Hints that `[off, off + len)` is no longer needed; contents become
    /// zeros where honoured. Default: ignored.
    fn discard(&self, _off: u64, _len: u64) -> Result<()> {
        Ok(())
    }
    /// Whether `[off, ...)` holds data (`true`) or is a hole that reads
    /// zeros (`false`), and how many bytes (at most `len`, at least 1) share
    /// that state. `None` when the file cannot tell (then assume data).
    /// Lets block status report holes as QEMU does (SEEK_DATA/SEEK_HOLE).
    fn data_run(&self, _off: u64, _len: u64) -> Result<Option<(bool, u64)>> {
        Ok(None)
    }
    /// Bytes the file occupies on its medium (for `info`'s disk size).
    fn allocated_size(&self) -> Result<u64> {
        self.len()
    }
    /// A name for messages.
    fn name(&self) -> &str;
    /// Takes QEMU-compatible image locks (`lock`) for as long as the file
    /// stays open; fails if another open holds conflicting ones. Files
    /// that no other process can see need none (the default).
    fn lock(&self, _spec: lock::LockSpec) -> Result<()> {
        Ok(())
    }

    /// Convenience: reads into one buffer.
    fn read_at(&self, buf: &mut [u8], off: u64) -> Result<()> {
        self.preadv(&IoVec::from_mut(buf), off)
    }
    /// Convenience: writes one buffer.
    fn write_at(&self, buf: &[u8], off: u64) -> Result<()> {
        self.pwritev(&IoVec::from_ref(buf), off)
    }
}

/// How a zero write may be done (QEMU's BDRV_REQ_MAY_UNMAP and
/// BDRV_REQ_NO_FALLBACK).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ZeroFlags {
    /// The range may be deallocated (a hole punched).
    pub may_unmap: bool,
    /// Fail rather than write zero buffers.
    pub no_fallback: bool,
}

impl ZeroFlags {
    /// Deallocate where possible, write zeros where not (the default of
    /// `write_zeroes`).
    pub const UNMAP: ZeroFlags = ZeroFlags {
        may_unmap: true,
        no_fallback: false,
    };
}

/// Fallback for files that cannot punch holes: write zero buffers.
pub fn write_zeroes_by_writing<F: BlockFile + ?Sized>(f: &F, off: u64, len: u64) -> Result<()> {
    const CHUNK: u64 = 1 << 20;
    let zeros = vec![0u8; CHUNK.min(len) as usize];
    let mut pos = 0;
    while pos < len {
        let n = (len - pos).min(CHUNK) as usize;
        f.write_at(&zeros[..n], off + pos)?;
        pos += n as u64;
    }
    Ok(())
}

/// How a file is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    ReadOnly,
    ReadWrite,
}

/// A namespace of files (the filesystem, or an in-memory one for tests).
pub trait Storage: Send + Sync {
    /// Opens an existing file.
    fn open(&self, path: &Path, access: Access) -> Result<Arc<dyn BlockFile>>;
    /// Creates a file; fails if it exists unless `truncate` is set.
    fn create(&self, path: &Path, truncate: bool) -> Result<Arc<dyn BlockFile>>;
    /// Whether a file exists.
    fn exists(&self, path: &Path) -> bool;
    /// Deletes a file (used to clean up after a failed create).
    fn remove(&self, path: &Path) -> Result<()>;
    /// A canonical form of `path` for identity checks (same file?).
    fn canonical(&self, path: &Path) -> std::path::PathBuf {
        path.to_path_buf()
    }
}
