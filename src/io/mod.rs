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

    /// Reads `iov.len()` bytes at `off` only if that cannot block (the
    /// bytes are in the page cache): `Ok(true)` when every byte was read,
    /// `Ok(false)` when the read would have waited for the device, ran
    /// into the end of the file, or the file cannot tell (the default);
    /// `iov` may then hold some of the bytes, and the caller reads again
    /// with `preadv`. For hosts that read in an event loop.
    fn preadv_nowait(&self, _iov: &IoVec, _off: u64) -> Result<bool> {
        Ok(false)
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
    /// For an image whose backing file the host reads (caller-managed
    /// backing): the host's backing chain reads zeros over the bytes of
    /// the request's first cluster outside the request (both sides when
    /// the request lies inside one cluster), and over those of its last
    /// cluster. Lets a partial-cluster zero write become a zero cluster
    /// when this layer reads zeros there too, as QEMU's qcow2 does.
    pub host_zero_head: bool,
    pub host_zero_tail: bool,
}

impl ZeroFlags {
    /// Deallocate where possible, write zeros where not (the default of
    /// `write_zeroes`).
    pub const UNMAP: ZeroFlags = ZeroFlags {
        may_unmap: true,
        no_fallback: false,
        host_zero_head: false,
        host_zero_tail: false,
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
    /// Opens a file an untrusted image names, only if it is a regular file
    /// that lies (after symlinks) inside the directory `root`; otherwise an
    /// `EACCES` error naming the file and the rule it breaks. The check is
    /// made on what was opened, so a rename between check and open cannot
    /// slip another file in. This default suits namespaces without
    /// symlinks or special files (the in-memory one): a lexical check.
    fn open_confined(
        &self,
        path: &Path,
        access: Access,
        root: &Path,
    ) -> Result<Arc<dyn BlockFile>> {
        let real = self.canonical(path);
        let root = self.canonical(root);
        if !real.starts_with(&root) {
            return Err(confinement_error(path, &real, &root));
        }
        self.open(path, access)
    }
}

/// Why a confined open refused `path`: it resolves to `real`, outside `root`.
pub fn confinement_error(path: &Path, real: &Path, root: &Path) -> crate::error::Error {
    refused(
        path,
        &format!(
            "it resolves to '{}', outside the image's directory '{}'",
            real.display(),
            root.display()
        ),
    )
}

/// A confined open's refusal: `EACCES`, naming the file and the rule.
pub fn refused(path: &Path, rule: &str) -> crate::error::Error {
    crate::error::Error::io(
        format!("confined open refused '{}': {rule}", path.display()),
        std::io::Error::from_raw_os_error(libc::EACCES),
    )
}

/// Stands for a file an image names but that a metadata-only open did not
/// open (`OpenOptions::metadata_only`): every access fails, naming it.
pub struct NotOpened {
    name: String,
}

impl NotOpened {
    pub fn new(name: impl Into<String>) -> Self {
        NotOpened { name: name.into() }
    }

    fn fail<T>(&self) -> Result<T> {
        Err(crate::error::Error::Unsupported(format!(
            "'{}' was not opened (metadata-only open)",
            self.name
        )))
    }
}

impl BlockFile for NotOpened {
    fn preadv(&self, _iov: &IoVec, _off: u64) -> Result<()> {
        self.fail()
    }
    fn pwritev(&self, _iov: &IoVec<Const>, _off: u64) -> Result<()> {
        self.fail()
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    fn len(&self) -> Result<u64> {
        self.fail()
    }
    fn set_len(&self, _len: u64) -> Result<()> {
        self.fail()
    }
    fn write_zeroes(&self, _off: u64, _len: u64) -> Result<()> {
        self.fail()
    }
    /// Nothing of it was opened, so nothing is counted.
    fn allocated_size(&self) -> Result<u64> {
        Ok(0)
    }
    fn name(&self) -> &str {
        &self.name
    }
}
