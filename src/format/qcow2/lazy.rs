//! Lazy refcounts (v3 `lazy_refcounts=on`), as QEMU: before the first
//! write-back whose refcount updates are not ordered before the tables
//! that use them, the dirty bit is set and flushed; from then on the
//! write-back writes refcount blocks together with the L2 tables, with no
//! flush between, and a crash leaves a dirty image whose refcounts the
//! next read-write open rebuilds (`rebuild_refcounts`). A clean close
//! writes everything back, flushes, and clears the bit.
//!
//! Guest data is still flushed before any table points at it, and L2
//! tables before the L1 entries that name them: contents never depend on
//! the repair.

use super::write::Meta;
use super::{features, Qcow2};
use crate::error::Result;
use byteorder::{BigEndian, ByteOrder};
use std::sync::atomic::Ordering;

impl Qcow2 {
    /// Whether write-backs defer refcounts (lazy_refcounts on a v3 image).
    pub(super) fn lazy_refcounts(&self) -> bool {
        self.header.version >= 3
            && self.header.compatible & features::COMPAT_LAZY_REFCOUNTS != 0
            && self.meta.is_some()
    }

    /// Metadata waiting for a write-back.
    pub(super) fn meta_pending(&self, m: &Meta) -> bool {
        !m.l2_dirty.is_empty()
            || !m.l1_dirty.is_empty()
            || !m.frees.is_empty()
            || m.rt_dirty
            || m.rt_old.is_some()
            || m.dirty_blocks() > 0
    }

    fn on_disk_dirty(&self) -> bool {
        self.incompat.load(Ordering::SeqCst) & features::INCOMPAT_DIRTY != 0
    }

    fn write_incompat(&self, flags: u64) -> Result<()> {
        let mut b = [0u8; 8];
        BigEndian::write_u64(&mut b, flags);
        self.file.write_at(&b, 72)?;
        self.file.flush()?;
        self.incompat.store(flags, Ordering::SeqCst);
        Ok(())
    }

    /// Sets the dirty bit (durably) unless it is set.
    pub(super) fn mark_dirty(&self) -> Result<()> {
        if self.on_disk_dirty() {
            return Ok(());
        }
        let flags = self.incompat.load(Ordering::SeqCst) | features::INCOMPAT_DIRTY;
        self.write_incompat(flags)?;
        self.dirtied.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Clears the dirty bit (durably); the caller has made every
    /// refcount durable.
    pub(super) fn clear_dirty(&self) -> Result<()> {
        if !self.on_disk_dirty() {
            return Ok(());
        }
        let flags = self.incompat.load(Ordering::SeqCst) & !features::INCOMPAT_DIRTY;
        self.write_incompat(flags)
    }

    /// `Format::close`: everything written back, then (lazy refcounts)
    /// the dirty bit cleared.
    pub(super) fn w_close(&self) -> Result<()> {
        let Some(w) = self.meta.as_ref() else {
            return Ok(());
        };
        if self.ro.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut m = w.lock().unwrap_or_else(|p| p.into_inner());
        self.flush_locked(&mut m)?;
        if self.lazy_refcounts() && self.on_disk_dirty() && self.dirtied.load(Ordering::SeqCst) {
            self.file.flush()?;
            self.clear_dirty()?;
        }
        Ok(())
    }
}
