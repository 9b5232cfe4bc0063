//! In-memory files that fail on demand and replay power cuts.
//!
//! Every file of a `MemStorage` shares one operation counter. A test can make
//! every operation from the Nth on fail with EIO (the moment of a power cut),
//! then ask for the files as a disk would hold them after the cut: the
//! durable contents (as of each file's last flush) plus any chosen subset of
//! the writes issued since, applied in issue order.

use super::{Access, BlockFile, Const, IoVec, Storage};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// An operation not yet made durable by a flush.
#[derive(Clone, Debug)]
enum Pending {
    Write { off: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Default)]
struct MemState {
    data: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<Pending>,
}

fn apply(buf: &mut Vec<u8>, op: &Pending) {
    match op {
        Pending::Write { off, data } => {
            let end = *off as usize + data.len();
            if buf.len() < end {
                buf.resize(end, 0);
            }
            buf[*off as usize..end].copy_from_slice(data);
        }
        Pending::SetLen(n) => buf.resize(*n as usize, 0),
    }
}

/// Shared failure control.
pub struct FaultControl {
    ops: AtomicU64,
    fail_from: AtomicU64,
    flushes: AtomicU64,
}

impl FaultControl {
    fn new() -> Self {
        FaultControl {
            ops: AtomicU64::new(0),
            fail_from: AtomicU64::new(u64::MAX),
            flushes: AtomicU64::new(0),
        }
    }

    /// Counts one operation; an error once the power is "cut".
    fn tick(&self, name: &str) -> Result<()> {
        let n = self.ops.fetch_add(1, Ordering::SeqCst);
        if n >= self.fail_from.load(Ordering::SeqCst) {
            return Err(Error::io(
                format!("injected fault on '{name}' (operation {n})"),
                std::io::Error::from_raw_os_error(libc::EIO),
            ));
        }
        Ok(())
    }
}

/// One in-memory file.
pub struct MemFile {
    name: String,
    state: Mutex<MemState>,
    ctl: Arc<FaultControl>,
}

impl MemFile {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current contents (what a reader sees now).
    pub fn contents(&self) -> Vec<u8> {
        self.lock().data.clone()
    }

    /// Number of writes not yet flushed.
    pub fn pending_count(&self) -> usize {
        self.lock().pending.len()
    }
}

impl BlockFile for MemFile {
    fn preadv(&self, iov: &IoVec, off: u64) -> Result<()> {
        self.ctl.tick(&self.name)?;
        let st = self.lock();
        let mut tmp = vec![0u8; iov.len()];
        let start = (off as usize).min(st.data.len());
        let end = (off as usize + tmp.len()).min(st.data.len());
        if start < end {
            tmp[..end - start].copy_from_slice(&st.data[start..end]);
        }
        iov.copy_from(0, &tmp);
        Ok(())
    }

    fn pwritev(&self, iov: &IoVec<Const>, off: u64) -> Result<()> {
        self.ctl.tick(&self.name)?;
        let mut data = vec![0u8; iov.len()];
        iov.copy_to(0, &mut data);
        let op = Pending::Write { off, data };
        let mut st = self.lock();
        apply(&mut st.data, &op);
        st.pending.push(op);
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        self.ctl.tick(&self.name)?;
        self.ctl.flushes.fetch_add(1, Ordering::SeqCst);
        let mut st = self.lock();
        st.durable = st.data.clone();
        st.pending.clear();
        Ok(())
    }

    fn len(&self) -> Result<u64> {
        Ok(self.lock().data.len() as u64)
    }

    fn set_len(&self, len: u64) -> Result<()> {
        self.ctl.tick(&self.name)?;
        if len > (1 << 32) {
            return Err(Error::TooLarge(format!(
                "in-memory file '{}' to {len} bytes",
                self.name
            )));
        }
        let op = Pending::SetLen(len);
        let mut st = self.lock();
        apply(&mut st.data, &op);
        st.pending.push(op);
        Ok(())
    }

    fn write_zeroes(&self, off: u64, len: u64) -> Result<()> {
        // One recorded write, so that a crash keeps it whole or drops it.
        self.write_at(&vec![0u8; len as usize], off)
    }

    /// A punched hole: zeros within the file (its size kept), recorded as
    /// one write, so that crash tests see when it lands.
    fn discard(&self, off: u64, len: u64) -> Result<()> {
        let end = off.saturating_add(len).min(self.len()?);
        if off >= end {
            return Ok(());
        }
        self.write_at(&vec![0u8; (end - off) as usize], off)
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// A namespace of in-memory files with a shared fault counter.
pub struct MemStorage {
    files: Mutex<HashMap<PathBuf, Arc<MemFile>>>,
    ctl: Arc<FaultControl>,
}

impl Default for MemStorage {
    fn default() -> Self {
        Self::new()
    }
}

impl MemStorage {
    pub fn new() -> Self {
        MemStorage {
            files: Mutex::new(HashMap::new()),
            ctl: Arc::new(FaultControl::new()),
        }
    }

    fn files(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Arc<MemFile>>> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Operations performed so far on all files.
    pub fn op_count(&self) -> u64 {
        self.ctl.ops.load(Ordering::SeqCst)
    }

    /// Flushes performed so far on all files.
    pub fn flush_count(&self) -> u64 {
        self.ctl.flushes.load(Ordering::SeqCst)
    }

    /// Makes operation number `n` (0-based, counted across all files) and
    /// every later one fail with EIO. `None` disarms.
    pub fn fail_from(&self, n: Option<u64>) {
        self.ctl
            .fail_from
            .store(n.unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    /// Resets the operation counter.
    pub fn reset_count(&self) {
        self.ctl.ops.store(0, Ordering::SeqCst);
    }

    /// Puts a file with the given contents, already durable.
    pub fn insert(&self, path: impl Into<PathBuf>, contents: Vec<u8>) {
        let path = path.into();
        let f = MemFile {
            name: path.display().to_string(),
            state: Mutex::new(MemState {
                durable: contents.clone(),
                data: contents,
                pending: Vec::new(),
            }),
            ctl: self.ctl.clone(),
        };
        self.files().insert(path, Arc::new(f));
    }

    /// The file at `path`, if any.
    pub fn file(&self, path: impl AsRef<Path>) -> Option<Arc<MemFile>> {
        self.files().get(path.as_ref()).cloned()
    }

    /// Total unflushed operations across all files.
    pub fn pending_total(&self) -> usize {
        self.files().values().map(|f| f.pending_count()).sum()
    }

    /// The disk after a power cut: every file's durable contents plus the
    /// pending operations for which `keep(file, index)` is true, applied in
    /// the order they were issued. The new storage has a fresh counter.
    pub fn crash(&self, mut keep: impl FnMut(&Path, usize) -> bool) -> MemStorage {
        let out = MemStorage::new();
        for (path, f) in self.files().iter() {
            let st = f.lock();
            let mut buf = st.durable.clone();
            for (i, op) in st.pending.iter().enumerate() {
                if keep(path, i) {
                    apply(&mut buf, op);
                }
            }
            out.insert(path.clone(), buf);
        }
        out
    }
}

impl Storage for MemStorage {
    fn open(&self, path: &Path, _access: Access) -> Result<Arc<dyn BlockFile>> {
        self.ctl.tick(&path.display().to_string())?;
        match self.file(path) {
            Some(f) => Ok(f),
            None => Err(Error::NotFound(format!("'{}'", path.display()))),
        }
    }

    fn create(&self, path: &Path, truncate: bool) -> Result<Arc<dyn BlockFile>> {
        self.ctl.tick(&path.display().to_string())?;
        if !truncate && self.file(path).is_some() {
            return Err(Error::io(
                format!("could not create '{}'", path.display()),
                std::io::Error::from_raw_os_error(libc::EEXIST),
            ));
        }
        self.insert(path.to_path_buf(), Vec::new());
        Ok(self.file(path).expect("just inserted"))
    }

    fn exists(&self, path: &Path) -> bool {
        self.file(path).is_some()
    }

    fn remove(&self, path: &Path) -> Result<()> {
        self.files().remove(path);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_keeps_durable_and_chosen_pending() {
        let s = MemStorage::new();
        let f = s.create(Path::new("a"), false).unwrap();
        f.write_at(b"hello", 0).unwrap();
        f.flush().unwrap();
        f.write_at(b"J", 0).unwrap();
        f.write_at(b"Y", 4).unwrap();
        let c = s.crash(|_, i| i == 1);
        assert_eq!(c.file("a").unwrap().contents(), b"hellY");
        let c = s.crash(|_, _| false);
        assert_eq!(c.file("a").unwrap().contents(), b"hello");
    }

    #[test]
    fn fails_from_nth_operation() {
        let s = MemStorage::new();
        let f = s.create(Path::new("a"), false).unwrap();
        s.fail_from(Some(s.op_count() + 1));
        f.write_at(b"x", 0).unwrap();
        let e = f.write_at(b"y", 0).unwrap_err();
        assert_eq!(e.errno(), libc::EIO);
        assert!(e.to_string().contains("injected fault"));
    }
}
