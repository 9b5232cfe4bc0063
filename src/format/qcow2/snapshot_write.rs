//! qcow2, write side of internal snapshots: the snapshot table, taking
//! and dropping a snapshot's references, and create / apply / delete.
//!
//! # API (for every user of snapshot-shaped state, e.g. the metadata store)
//!
//! All of these run under the write-side metadata lock: take it with
//! `let mut m = self.meta()?;` and pass `&mut m`. Each flushes what it
//! needs; none leaves anything pending that a crash could reorder.
//!
//! - [`Qcow2::snapshot_list`]: the table as it is now (an `Arc`, replaced
//!   whole by every update; entries keep their raw `extra` bytes).
//! - [`Qcow2::transaction`]`(m, |m| { ...; self.commit(m, l1, &list, old_l1) })`:
//!   the way to change refcounts, tables and the snapshot table all at once.
//!   Inside, refcounts change in a shadow structure (every refcount block
//!   touched is copied first, the refcount table moves, a cluster whose
//!   count drops to 0 is not reused), so raising and lowering counts is free
//!   of ordering concerns; write new L1/L2 tables and data only into
//!   clusters from `alloc_run` (they may go to disk at once), never change a
//!   table the committed state names. `commit` writes the new snapshot
//!   table (`list`, entries encoded as QEMU 5+ does: 24 bytes of known
//!   extra data, the rest of an entry's extra data byte for byte), the
//!   refcount blocks and table, flush, then ONE header write of bytes 36..72
//!   (L1 size/offset — `None` keeps the active table —, refcount table
//!   offset/size, snapshot count/offset), flush, then frees what only the
//!   old state used (old blocks, table, snapshot table, `old_l1`). A cut
//!   before the header write leaves the old image plus leaks; after it the
//!   new one. `qemu-img check` finds no error in any crash state.
//! - [`Qcow2::write_snapshot_table`]`(m, list)`: the snapshot table alone:
//!   new table in new clusters (refcounts first), flush, one header write
//!   of `nb_snapshots` + `snapshots_offset`, flush, old table freed.
//!   Everything a new entry names must already be durable with its
//!   refcounts (it flushes first).
//! - [`Qcow2::copy_active_l1`]`(m) -> (l1_offset, l1_size)` and
//!   [`Qcow2::drop_l1_refs`]`(m, l1_offset, l1_size)`: QEMU's way, outside a
//!   transaction: a copy of the active L1 with every L2 table and cluster
//!   it names raised by one and OFLAG_COPIED cleared in the active tables;
//!   and the reverse for an L1 table nothing names any more, setting
//!   COPIED again where a count returns to 1. Both durable on return, but
//!   with QEMU's window: between the refcount write and the flag write a
//!   cut leaves COPIED disagreeing with a count (harmless, but `qemu-img
//!   check` counts it). Create and delete use `transaction` instead;
//!   `drop_l1_refs` is exact for tables the active state does not share.
//!
//! Snapshot operations themselves: `w_snapshot_create` (transaction: the
//! active L1 becomes the snapshot's; the new active L1 names copies of the
//! L2 tables that had COPIED entries), `w_snapshot_delete` (transaction:
//! references dropped, new active L1 with COPIED exact, copies of the L2
//! tables whose flags change), `w_snapshot_apply` (snapshot references
//! raised, its L1 copied to new clusters, one header write of size + L1,
//! then the old active state dropped: no flag ever disagrees).

use super::header::{check_table, l1_entries_for, MAX_L1_BYTES};
use super::l2::{OFFSET_MASK, OFLAG_COMPRESSED, OFLAG_COPIED};
use super::snapshot::{self, Snapshot, ENTRY_HEADER};
use super::write::Meta;
use super::Qcow2;
use crate::error::{Error, Result};
use crate::image::SnapshotRef;
use byteorder::{BigEndian, ByteOrder};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The snapshot that holds cowblk's key/value metadata
/// (docs/specs/metadata.txt): never applied.
pub const METADATA_SNAPSHOT: &str = "cowblk-metadata";

impl Qcow2 {
    /// Records where the snapshot table lies (for freeing it later).
    pub(super) fn init_snapshot_table(&self) -> Result<()> {
        let h = &self.header;
        let mut len = 0u64;
        let mut fixed = [0u8; ENTRY_HEADER];
        for _ in 0..h.nb_snapshots {
            self.file.read_at(&mut fixed, h.snapshots_offset + len)?;
            len += snapshot::entry_len(&fixed)?;
        }
        let mut m = self.meta()?;
        m.snap_table = if h.nb_snapshots == 0 {
            (0, 0)
        } else {
            (h.snapshots_offset, len)
        };
        Ok(())
    }

    /// Where the snapshot table lies now.
    pub(super) fn snapshot_table_offset(&self) -> u64 {
        match &self.meta {
            Some(m) => m.lock().unwrap_or_else(|p| p.into_inner()).snap_table.0,
            None => self.header.snapshots_offset,
        }
    }

    /// Where the refcount table is on disk (offset, clusters): a grown or
    /// moved table is named by the header only after its write-back.
    pub(super) fn refcount_table_on_disk(&self) -> (u64, u64) {
        match &self.meta {
            Some(m) => {
                let m = m.lock().unwrap_or_else(|p| p.into_inner());
                m.rt_old.unwrap_or((m.rt_offset, m.rt_clusters))
            }
            None => (
                self.header.refcount_table_offset,
                self.header.refcount_table_clusters as u64,
            ),
        }
    }

    /// The snapshot table as it is now.
    pub fn snapshot_list(&self) -> Arc<Vec<Snapshot>> {
        self.snapshots.load_full()
    }

    /// Replaces the snapshot table with `list` (see the module comment).
    // API for the key/value metadata store; create and delete use
    // `transaction` instead.
    #[allow(dead_code)]
    pub(super) fn write_snapshot_table(&self, m: &mut Meta, list: Vec<Snapshot>) -> Result<()> {
        let cs = self.cs();
        let bytes = snapshot::encode_table(&list, self.size.load(Ordering::SeqCst))?;
        self.flush_locked(m)?;
        let off = if bytes.is_empty() {
            0
        } else {
            let n = (bytes.len() as u64).div_ceil(cs);
            let c = self.alloc_run(m, n)? * cs;
            self.check_overlap(m, c, n * cs, "a new snapshot table")?;
            self.file.write_at(&bytes, c)?;
            c
        };
        // The table and its refcounts durable before the header names it.
        self.flush_locked(m)?;
        self.file.flush()?;
        let mut h = [0u8; 12];
        BigEndian::write_u32(&mut h[..4], list.len() as u32);
        BigEndian::write_u64(&mut h[4..], off);
        self.file.write_at(&h, 60)?;
        self.file.flush()?;
        let (old_off, old_len) = m.snap_table;
        m.snap_table = (off, bytes.len() as u64);
        // Memory holds what the disk now says (normalised extra data).
        let read = |buf: &mut [u8], o: u64| {
            let s = (o - off) as usize;
            buf.copy_from_slice(&bytes[s..s + buf.len()]);
            Ok(())
        };
        let parsed = snapshot::read_table(&read, off, list.len() as u32)?;
        self.snapshots.store(Arc::new(parsed));
        self.load_overlap_extents()?;
        if old_len > 0 {
            let cb = self.geo.cluster_bits;
            for c in (old_off >> cb)..=((old_off + old_len - 1) >> cb) {
                self.release(m, c)?;
            }
        }
        self.flush_locked(m)
    }

    /// Lowers a cluster's refcount now (nothing on disk names it).
    fn release(&self, m: &mut Meta, c: u64) -> Result<()> {
        if self.add_refcount(m, c, -1)? == 0 {
            m.hint = m.hint.min(c);
            self.l2_cache.invalidate(c << self.geo.cluster_bits);
        }
        Ok(())
    }

    /// Refuses what cannot hold snapshots.
    fn snapshots_possible(&self, what: &str) -> Result<()> {
        if self.geo.data_file {
            return Err(Error::Unsupported(format!(
                "cannot {what} internal snapshots in an image with an external data file (QEMU refuses too)"
            )));
        }
        Ok(())
    }

    /// With 1-bit refcounts no cluster can be shared: a snapshot is only
    /// possible while the L1 table references nothing (QEMU fails such a
    /// snapshot half-way with EINVAL and a leak; we refuse up front).
    fn refuse_sharing(&self, l1: &[u64], what: &str) -> Result<()> {
        if self.header.refcount_order == 0 && l1.iter().any(|e| e & OFFSET_MASK != 0) {
            return Err(Error::Unsupported(format!(
                "cannot {what} an internal snapshot: the image has 1-bit refcounts, which cannot count a cluster shared by a snapshot (amend to refcount_bits=16 first)"
            )));
        }
        Ok(())
    }

    /// Host clusters an L2 word references, checked to lie inside the file.
    fn word_clusters(&self, word: u64, file_clusters: u64) -> Result<Vec<u64>> {
        let cs = self.entry_clusters(word);
        if let Some(&c) = cs.iter().find(|&&c| c >= file_clusters) {
            return Err(Error::Corrupt(format!(
                "L2 entry {word:#x} points at host cluster {:#x}, past the end of the image file",
                c << self.geo.cluster_bits
            )));
        }
        Ok(cs)
    }

    /// Reads an inactive L1 table from disk, checked.
    fn read_l1(&self, off: u64, size: u32, what: &str) -> Result<Vec<u64>> {
        let bytes = size as u64 * 8;
        if bytes > MAX_L1_BYTES {
            return Err(Error::TooLarge(format!(
                "{what} has {size} entries, above QEMU's 32 MiB limit"
            )));
        }
        check_table(what, off, bytes, self.geo.cluster_bits)?;
        let flen = self.file.len()?;
        if off.saturating_add(bytes) > flen {
            return Err(Error::Corrupt(format!(
                "{what} ({bytes} bytes at {off:#x}) lies outside the image file"
            )));
        }
        let mut raw = vec![0u8; bytes as usize];
        self.file.read_at(&mut raw, off)?;
        Ok(raw.chunks_exact(8).map(BigEndian::read_u64).collect())
    }

    /// Raises by one the refcount of every L2 table `l1` names and of every
    /// cluster those tables reference, clearing COPIED in the L2 entries
    /// (the tables are shared from now on). Changes stay in memory.
    fn raise_refs(&self, m: &mut Meta, l1: &[u64]) -> Result<()> {
        let cb = self.geo.cluster_bits;
        let w = self.geo.entry_words();
        let fc = self.file.len()?.div_ceil(self.cs());
        for (i, &e) in l1.iter().enumerate() {
            let off = e & OFFSET_MASK;
            if off == 0 {
                continue;
            }
            let t = self.l2_table(off, i as u64)?;
            let mut nt = t.to_vec();
            let mut changed = false;
            for j in (0..nt.len()).step_by(w) {
                for c in self.word_clusters(nt[j], fc)? {
                    self.add_refcount(m, c, 1)?;
                }
                if nt[j] & OFLAG_COPIED != 0 {
                    nt[j] &= !OFLAG_COPIED;
                    changed = true;
                }
            }
            if changed {
                self.l2_cache.put(off, nt.into(), true);
                m.l2_dirty.insert(off);
            }
            self.add_refcount(m, off >> cb, 1)?;
        }
        Ok(())
    }

    /// Writes `entries` as a new L1 table into fresh clusters; returns its
    /// offset (0 for an empty table). Not yet flushed.
    pub(super) fn write_new_l1(&self, m: &mut Meta, entries: &[u64]) -> Result<u64> {
        if entries.is_empty() {
            return Ok(0);
        }
        let cs = self.cs();
        let n = (entries.len() as u64 * 8).div_ceil(cs);
        let c = self.alloc_run(m, n)? * cs;
        self.check_overlap(m, c, n * cs, "a new L1 table")?;
        let mut buf = vec![0u8; (n * cs) as usize];
        for (i, e) in entries.iter().enumerate() {
            BigEndian::write_u64(&mut buf[i * 8..], *e);
        }
        self.file.write_at(&buf, c)?;
        Ok(c)
    }

    /// A copy of the active L1 table for a new snapshot (see the module
    /// comment). Returns its offset and number of entries.
    #[allow(dead_code)]
    pub(super) fn copy_active_l1(&self, m: &mut Meta) -> Result<(u64, u32)> {
        self.snapshots_possible("create")?;
        self.flush_locked(m)?;
        let l1 = self.l1.load_full();
        let mut entries = Vec::with_capacity(l1.entries() as usize);
        for i in 0..l1.entries() {
            entries.push(l1.entry(i)?);
        }
        self.refuse_sharing(&entries, "create")?;
        self.raise_refs(m, &entries)?;
        for (i, e) in entries.iter_mut().enumerate() {
            if *e & OFLAG_COPIED != 0 {
                *e &= !OFLAG_COPIED;
                l1.set(i as u64, *e)?;
                m.l1_dirty.insert(i as u64);
            }
        }
        let off = self.write_new_l1(m, &entries)?;
        // Refcounts first, then the cleared flags (flush_locked's order).
        self.flush_locked(m)?;
        self.file.flush()?;
        Ok((off, entries.len() as u32))
    }

    /// Drops the references of an L1 table nothing names any more (see the
    /// module comment).
    pub(super) fn drop_l1_refs(&self, m: &mut Meta, l1_off: u64, l1_size: u32) -> Result<()> {
        self.flush_locked(m)?;
        let cb = self.geo.cluster_bits;
        let cs = self.cs();
        let w = self.geo.entry_words();
        let l1 = self.read_l1(l1_off, l1_size, "the snapshot's L1 table")?;
        let fc = self.file.len()?.div_ceil(cs);
        for (i, &e) in l1.iter().enumerate() {
            let off = e & OFFSET_MASK;
            if off == 0 {
                continue;
            }
            let t = self.l2_table(off, i as u64)?;
            for j in (0..t.len()).step_by(w) {
                for c in self.word_clusters(t[j], fc)? {
                    self.release(m, c)?;
                }
            }
            self.release(m, off >> cb)?;
        }
        if l1_size > 0 {
            let n = (l1_size as u64 * 8).div_ceil(cs);
            for c in 0..n {
                self.release(m, (l1_off >> cb) + c)?;
            }
        }
        self.fix_copied(m)?;
        self.flush_locked(m)
    }

    /// Sets OFLAG_COPIED in the active L1 and L2 entries exactly where the
    /// refcount is 1 (QEMU's update with addend 0). In memory.
    fn fix_copied(&self, m: &mut Meta) -> Result<()> {
        let cb = self.geo.cluster_bits;
        let w = self.geo.entry_words();
        let l1 = self.l1.load_full();
        for i in 0..l1.entries() {
            let e = l1.entry(i)?;
            let off = e & OFFSET_MASK;
            if off == 0 {
                continue;
            }
            let t = self.l2_table(off, i)?;
            let mut nt = t.to_vec();
            let mut changed = false;
            for j in (0..nt.len()).step_by(w) {
                let word = nt[j];
                let host = word & OFFSET_MASK;
                if word & OFLAG_COMPRESSED != 0 || host == 0 {
                    continue;
                }
                let want = if self.refcount(m, host >> cb)? == 1 {
                    OFLAG_COPIED
                } else {
                    0
                };
                if word & OFLAG_COPIED != want {
                    nt[j] = (word & !OFLAG_COPIED) | want;
                    changed = true;
                }
            }
            if changed {
                self.l2_cache.put(off, nt.into(), true);
                m.l2_dirty.insert(off);
            }
            let want = if self.refcount(m, off >> cb)? == 1 {
                OFLAG_COPIED
            } else {
                0
            };
            if e & OFLAG_COPIED != want {
                l1.set(i, (e & !OFLAG_COPIED) | want)?;
                m.l1_dirty.insert(i);
            }
        }
        Ok(())
    }

    /// `snapshot -c`: a new snapshot of the active state named `name`
    /// with the next free numeric id, dated `date` (seconds, nanoseconds),
    /// VM clock 0, icount 0 and no VM state (as qemu-img makes one).
    ///
    /// One transaction (see `commit`): the active L1 table becomes the
    /// snapshot's as it stands; the new active L1 table names copies of the
    /// L2 tables that had COPIED entries (flags cleared) and shares the
    /// others; every data cluster gains a reference.
    pub(super) fn w_snapshot_create(&self, name: &str, date: (u32, u32)) -> Result<String> {
        let mut m = self.meta()?;
        self.snapshots_possible("create")?;
        let mut list = (*self.snapshot_list()).clone();
        if list.len() >= snapshot::MAX_SNAPSHOTS {
            return Err(Error::TooLarge(format!(
                "the image already has {} snapshots (QEMU's limit)",
                list.len()
            )));
        }
        let id = snapshot::next_id(&list);
        self.flush_locked(&mut m)?;
        let l1 = self.l1.load_full();
        let entries = (0..l1.entries())
            .map(|i| l1.entry(i))
            .collect::<Result<Vec<u64>>>()?;
        self.refuse_sharing(&entries, "create")?;
        list.push(Snapshot::new(
            id.clone(),
            name.to_string(),
            l1.offset(),
            entries.len() as u32,
            date,
            0,
            self.size.load(Ordering::SeqCst),
            Some(0),
        ));
        self.transaction(&mut m, |m| {
            let cb = self.geo.cluster_bits;
            let w = self.geo.entry_words();
            let fc = self.file.len()?.div_ceil(self.cs());
            let mut active = vec![0u64; entries.len()];
            for (i, &e) in entries.iter().enumerate() {
                let off = e & OFFSET_MASK;
                if off == 0 {
                    continue;
                }
                let t = self.l2_table(off, i as u64)?;
                let mut owned = false;
                for j in (0..t.len()).step_by(w) {
                    for c in self.word_clusters(t[j], fc)? {
                        self.add_refcount(m, c, 1)?;
                    }
                    owned |= t[j] & OFLAG_COPIED != 0;
                }
                active[i] = if owned {
                    let mut nt = t.to_vec();
                    for j in (0..nt.len()).step_by(w) {
                        nt[j] &= !OFLAG_COPIED;
                    }
                    self.write_table_copy(m, &nt)? | OFLAG_COPIED
                } else {
                    self.add_refcount(m, off >> cb, 1)?;
                    off
                };
            }
            let l1_off = self.write_new_l1(m, &active)?;
            self.commit(m, Some((l1_off, active.len() as u64)), &list, None)
        })?;
        Ok(id)
    }

    /// `snapshot -d`: one transaction (see `commit`) that drops the
    /// snapshot's references, gives the active state a new L1 table whose
    /// entries (and copies of the L2 tables whose entries change) carry
    /// COPIED exactly where a refcount is now 1, and writes the table
    /// without the entry.
    pub(super) fn w_snapshot_delete(&self, which: &SnapshotRef) -> Result<Snapshot> {
        let mut m = self.meta()?;
        let mut list = (*self.snapshot_list()).clone();
        let i = which
            .find(list.iter().map(|s| (s.id.as_str(), s.name.as_str())))
            .ok_or_else(|| Error::NotFound(format!("snapshot {which}")))?;
        let s = list.remove(i);
        snapshot::check_l1(&s, self.geo.cluster_bits)?;
        self.flush_locked(&mut m)?;
        let l1 = self.l1.load_full();
        let entries = (0..l1.entries())
            .map(|i| l1.entry(i))
            .collect::<Result<Vec<u64>>>()?;
        self.transaction(&mut m, |m| {
            let cb = self.geo.cluster_bits;
            let w = self.geo.entry_words();
            self.drop_refs_in_transaction(m, s.l1_table_offset, s.l1_size)?;
            let copied = |m: &mut Meta, host: u64| -> Result<u64> {
                Ok(if self.refcount(m, host >> cb)? == 1 {
                    OFLAG_COPIED
                } else {
                    0
                })
            };
            let mut active = vec![0u64; entries.len()];
            for (i, &e) in entries.iter().enumerate() {
                let off = e & OFFSET_MASK;
                if off == 0 {
                    continue;
                }
                let t = self.l2_table(off, i as u64)?;
                let mut nt = t.to_vec();
                for j in (0..nt.len()).step_by(w) {
                    let word = nt[j];
                    let host = word & OFFSET_MASK;
                    if word & OFLAG_COMPRESSED == 0 && host != 0 {
                        nt[j] = (word & !OFLAG_COPIED) | copied(m, host)?;
                    }
                }
                active[i] = if nt[..] != t[..] {
                    // The committed active state still reads `t`: its
                    // flags change in a copy, named by the new L1 table.
                    self.add_refcount(m, off >> cb, -1)?;
                    self.write_table_copy(m, &nt)? | OFLAG_COPIED
                } else {
                    off | copied(m, off)?
                };
            }
            let l1_off = self.write_new_l1(m, &active)?;
            let old_l1 = (l1.offset(), l1.entries());
            self.commit(m, Some((l1_off, active.len() as u64)), &list, Some(old_l1))
        })?;
        Ok(s)
    }

    /// Inside a transaction: lowers the counts of everything the L1 table
    /// at `l1_off` (`l1_size` entries) names, and of the table itself. For
    /// tables the active state does not share (a snapshot being replaced);
    /// the active state's COPIED flags are not revisited.
    pub(super) fn drop_refs_in_transaction(
        &self,
        m: &mut Meta,
        l1_off: u64,
        l1_size: u32,
    ) -> Result<()> {
        let cb = self.geo.cluster_bits;
        let cs = self.cs();
        let w = self.geo.entry_words();
        let fc = self.file.len()?.div_ceil(cs);
        let l1 = self.read_l1(l1_off, l1_size, "the snapshot's L1 table")?;
        for (i, &e) in l1.iter().enumerate() {
            let off = e & OFFSET_MASK;
            if off == 0 {
                continue;
            }
            let t = self.l2_table(off, i as u64)?;
            for j in (0..t.len()).step_by(w) {
                for c in self.word_clusters(t[j], fc)? {
                    self.add_refcount(m, c, -1)?;
                }
            }
            self.add_refcount(m, off >> cb, -1)?;
        }
        for c in 0..(l1_size as u64 * 8).div_ceil(cs) {
            self.add_refcount(m, (l1_off >> cb) + c, -1)?;
        }
        Ok(())
    }

    /// An L2 table written into a new cluster (nothing names it yet, so it
    /// goes to disk at once); returns its offset.
    pub(super) fn write_table_copy(&self, m: &mut Meta, t: &[u64]) -> Result<u64> {
        let cs = self.cs();
        let c = self.alloc_run(m, 1)? * cs;
        self.check_overlap(m, c, cs, "an L2 table copy")?;
        let mut buf = vec![0u8; cs as usize];
        for (i, e) in t.iter().enumerate() {
            BigEndian::write_u64(&mut buf[i * 8..], *e);
        }
        self.file.write_at(&buf, c)?;
        self.l2_cache.invalidate(c);
        Ok(c)
    }

    /// Runs `f` as a transaction on a shadow refcount structure (see
    /// `write::Shadow`): everything written back first, then the refcount
    /// table gets a new place. `f` ends with `commit`. A failure leaves the
    /// disk as it was (but for leaked clusters) and the handle read-only:
    /// memory no longer matches it.
    pub(super) fn transaction(
        &self,
        m: &mut Meta,
        f: impl FnOnce(&mut Meta) -> Result<()>,
    ) -> Result<()> {
        self.flush_locked(m)?;
        // Allocate past the end of the file: a hole elsewhere lies in the
        // range of a committed block that would have to be copied first,
        // whose copy would land in another hole, and so on.
        let hint = m.hint;
        m.hint = m.hint.max(self.file.len()?.div_ceil(self.cs()));
        let r = (|| {
            m.shadow = Some(Default::default());
            let clusters = m.rt_clusters;
            let c = self.alloc_run(m, clusters)?;
            if m.rt_old.is_some() {
                // Growing the table on the way moved it already.
                for i in 0..clusters {
                    self.add_refcount(m, c + i, -1)?;
                }
            } else {
                let cs = self.cs();
                self.check_overlap(m, c * cs, clusters * cs, "a refcount table copy")?;
                m.rt_old = Some((m.rt_offset, m.rt_clusters));
                m.rt_offset = c * cs;
                m.rt_dirty = true;
            }
            f(m)
        })();
        m.hint = m.hint.min(hint);
        if r.is_err() {
            self.ro.store(true, Ordering::SeqCst);
        }
        r
    }

    /// Ends a transaction: the new refcount blocks and table and the new
    /// snapshot table are written, flush; then one header write of bytes
    /// 36..72 (L1 size and offset, refcount table offset and size, snapshot
    /// count and offset: one sector) switches everything at once, flush;
    /// then what only the old state used is freed. A cut before the header
    /// write leaves the old image (and leaked clusters), after it the new.
    pub(super) fn commit(
        &self,
        m: &mut Meta,
        l1: Option<(u64, u64)>,
        list: &[Snapshot],
        old_l1: Option<(u64, u64)>,
    ) -> Result<()> {
        let cs = self.cs();
        let cb = self.geo.cluster_bits;
        let l1 = l1.unwrap_or_else(|| (self.l1.load().offset(), self.l1.load().entries()));
        let bytes = snapshot::encode_table(list, self.size.load(Ordering::SeqCst))?;
        let snap_off = if bytes.is_empty() {
            0
        } else {
            let n = (bytes.len() as u64).div_ceil(cs);
            let c = self.alloc_run(m, n)? * cs;
            self.check_overlap(m, c, n * cs, "a new snapshot table")?;
            self.file.write_at(&bytes, c)?;
            c
        };
        self.write_blocks(m)?;
        let mut rt = vec![0u8; (m.rt_clusters * cs) as usize];
        for (i, e) in m.rt.iter().enumerate() {
            BigEndian::write_u64(&mut rt[i * 8..], *e);
        }
        self.file.write_at(&rt, m.rt_offset)?;
        self.file.flush()?;
        let mut h = [0u8; 36];
        BigEndian::write_u32(&mut h[0..4], l1.1 as u32);
        BigEndian::write_u64(&mut h[4..12], l1.0);
        BigEndian::write_u64(&mut h[12..20], m.rt_offset);
        BigEndian::write_u32(&mut h[20..24], m.rt_clusters as u32);
        BigEndian::write_u32(&mut h[24..28], list.len() as u32);
        BigEndian::write_u64(&mut h[28..36], snap_off);
        self.file.write_at(&h, 36)?;
        self.file.flush()?;
        // Switched: memory follows, then the old state's clusters go.
        m.rt_dirty = false;
        let shadow = m.shadow.take().unwrap_or_default();
        let old_rt = m.rt_old.take();
        if l1.0 != self.l1.load().offset() {
            let flen = self.file.len()?;
            self.l1.store(Arc::new(super::l1::L1Table::new(
                self.file.clone(),
                l1.0,
                l1.1,
                flen,
            )));
        }
        let read = |buf: &mut [u8], o: u64| {
            let s = (o - snap_off) as usize;
            buf.copy_from_slice(&bytes[s..s + buf.len()]);
            Ok(())
        };
        let parsed = snapshot::read_table(&read, snap_off, list.len() as u32)?;
        self.snapshots.store(Arc::new(parsed));
        self.load_overlap_extents()?;
        let (old_snap, old_snap_len) = m.snap_table;
        m.snap_table = (snap_off, bytes.len() as u64);
        for c in &shadow.zeroed {
            m.hint = m.hint.min(*c);
            self.l2_cache.invalidate(c << cb);
        }
        for b in shadow.replaced {
            m.block_offs.remove(&b);
            self.release(m, b >> cb)?;
        }
        if let Some((off, n)) = old_rt {
            for i in 0..n {
                self.release(m, (off >> cb) + i)?;
            }
        }
        if old_snap_len > 0 {
            for c in (old_snap >> cb)..=((old_snap + old_snap_len - 1) >> cb) {
                self.release(m, c)?;
            }
        }
        if let Some((off, n)) = old_l1 {
            for i in 0..(n * 8).div_ceil(cs) {
                self.release(m, (off >> cb) + i)?;
            }
        }
        self.flush_locked(m)
    }

    /// `snapshot -a`: the active state becomes a copy of the snapshot's
    /// (its disk size too): 1. the snapshot's references raised and a new
    /// L1 table written with them, flush; 2. one header write of the size
    /// and the L1 table (24..48, one sector), flush; 3. the old active
    /// state's references dropped.
    pub(super) fn w_snapshot_apply(&self, which: &SnapshotRef) -> Result<Snapshot> {
        let mut m = self.meta()?;
        let list = self.snapshot_list();
        let i = which
            .find(list.iter().map(|s| (s.id.as_str(), s.name.as_str())))
            .ok_or_else(|| Error::NotFound(format!("snapshot {which}")))?;
        let s = list[i].clone();
        if s.name == METADATA_SNAPSHOT {
            return Err(Error::InvalidArgument(format!(
                "snapshot '{METADATA_SNAPSHOT}' holds cowblk's key/value metadata, not a disk state; applying it would replace the guest's disk (docs/specs/metadata.txt)"
            )));
        }
        self.snapshots_possible("apply")?;
        snapshot::check_l1(&s, self.geo.cluster_bits)?;
        self.flush_locked(&mut m)?;
        let size = s.disk_size.unwrap_or(self.size.load(Ordering::SeqCst));
        let cb = self.geo.cluster_bits;
        let need = l1_entries_for(size, cb, self.geo.extended);
        if need * 8 > MAX_L1_BYTES {
            return Err(Error::TooLarge(format!(
                "snapshot '{}' has a disk size of {size} bytes, above what an L1 table of 32 MiB maps",
                s.id
            )));
        }
        let old = self.l1.load_full();
        let mut entries = self.read_l1(s.l1_table_offset, s.l1_size, "the snapshot's L1 table")?;
        let n = need.max(s.l1_size as u64).max(old.entries()) as usize;
        self.refuse_sharing(&entries, "apply")?;
        self.raise_refs(&mut m, &entries)?;
        for e in entries.iter_mut() {
            *e &= !OFLAG_COPIED;
        }
        entries.resize(n, 0);
        let off = self.write_new_l1(&mut m, &entries)?;
        self.flush_locked(&mut m)?;
        self.file.flush()?;
        // Size, encryption method (unchanged), L1 size and offset at once.
        let mut h = [0u8; 24];
        self.file.read_at(&mut h, 24)?;
        BigEndian::write_u64(&mut h[0..8], size);
        BigEndian::write_u32(&mut h[12..16], n as u32);
        BigEndian::write_u64(&mut h[16..24], off);
        self.file.write_at(&h, 24)?;
        self.file.flush()?;
        let flen = self.file.len()?;
        self.l1.store(Arc::new(super::l1::L1Table::new(
            self.file.clone(),
            off,
            n as u64,
            flen,
        )));
        self.size.store(size, Ordering::SeqCst);
        self.drop_l1_refs(&mut m, old.offset(), old.entries() as u32)?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use crate::format::check::Repair;
    use crate::io::fault::MemStorage;
    use crate::{CreateOptions, Image, OpenOptions, SnapshotRef};
    use std::path::Path;
    use std::sync::Arc;

    fn clean(img: &Image, what: &str) {
        let r = img.check(Repair::None).unwrap();
        assert_eq!(
            (r.corruptions, r.leaks, r.check_errors),
            (0, 0, 0),
            "{what}: {r:?}"
        );
    }

    fn read(st: &Arc<MemStorage>, snap: Option<&str>) -> Vec<u8> {
        let o = OpenOptions {
            read_only: true,
            snapshot: snap.map(SnapshotRef::from),
            ..Default::default()
        };
        let img = Image::open_in(st.clone(), Path::new("t.qcow2"), &o).unwrap();
        let mut b = vec![0u8; img.size() as usize];
        img.read(&mut b, 0).unwrap();
        b
    }

    /// Create, write, apply, delete with our own checker clean after each
    /// step and every snapshot reading what it held.
    #[test]
    fn create_apply_delete_keep_refcounts_exact() {
        let st = Arc::new(MemStorage::new());
        let p = Path::new("t.qcow2");
        let mut o = CreateOptions::new();
        o.parse_into("size=1M,cluster_size=4096").unwrap();
        Image::create_in(st.clone(), p, "qcow2", &o).unwrap();
        let img = Image::open_in(st.clone(), p, &OpenOptions::default()).unwrap();
        img.write(&[1u8; 12288], 4096).unwrap();
        let s1 = read_img(&img);
        assert_eq!(img.snapshot_create("one").unwrap(), "1");
        clean(&img, "after create");
        img.write(&[2u8; 4096], 8192).unwrap();
        img.write(&[3u8; 4096], 65536).unwrap();
        let s2 = read_img(&img);
        assert_eq!(img.snapshot_create("two").unwrap(), "2");
        img.write(&[4u8; 512], 4096 + 100).unwrap();
        img.flush().unwrap();
        clean(&img, "after writes");
        let now = read_img(&img);
        drop(img);
        assert_eq!(read(&st, Some("one")), s1);
        assert_eq!(read(&st, Some("two")), s2);
        assert_eq!(read(&st, None), now);
        let img = Image::open_in(st.clone(), p, &OpenOptions::default()).unwrap();
        img.snapshot_apply(&"one".into()).unwrap();
        assert_eq!(read_img(&img), s1);
        clean(&img, "after apply");
        img.snapshot_delete(&SnapshotRef::Name("one".into()))
            .unwrap();
        clean(&img, "after delete");
        img.write(&[5u8; 4096], 0).unwrap();
        img.snapshot_delete(&SnapshotRef::Name("two".into()))
            .unwrap();
        img.flush().unwrap();
        clean(&img, "after deleting all");
        let mut want = s1.clone();
        want[..4096].fill(5);
        assert_eq!(read_img(&img), want);
        assert!(img.snapshots().is_empty());
        let e = img.snapshot_delete(&SnapshotRef::Name("two".into()));
        assert!(matches!(e, Err(crate::Error::NotFound(_))));
    }

    /// The transaction API as the metadata store uses it: a hidden
    /// snapshot whose L1/L2 tables and data are built by hand, then replaced
    /// by a second version that shares one data cluster with the first.
    #[test]
    fn transaction_api_builds_a_store_snapshot() {
        use super::super::{l2::OFLAG_COPIED, Qcow2};
        use crate::format::OpenCtx;
        use crate::io::{Access, Storage};
        let st = Arc::new(MemStorage::new());
        let p = Path::new("t.qcow2");
        let mut o = CreateOptions::new();
        o.parse_into("size=1M,cluster_size=4096").unwrap();
        Image::create_in(st.clone(), p, "qcow2", &o).unwrap();
        let file = st.open(p, Access::ReadWrite).unwrap();
        let q = Qcow2::open(&OpenCtx {
            storage: &*st,
            path: p,
            file,
            read_only: false,
            cache_size: 0,
            snapshot: None,
            confine: None,
            metadata_only: false,
            format_opts: &[],
            repair: false,
        })
        .unwrap();
        let cs = q.cs();
        // Version 1: one L1 entry -> one L2 table -> two data clusters.
        let store = |m: &mut super::Meta, shared: Option<u64>| -> (u64, u64) {
            let d0 = match shared {
                Some(c) => {
                    q.add_refcount(m, c / cs, 1).unwrap();
                    c
                }
                None => {
                    let c = q.alloc_run(m, 1).unwrap() * cs;
                    q.file.write_at(&vec![0xaa; cs as usize], c).unwrap();
                    c
                }
            };
            let d1 = q.alloc_run(m, 1).unwrap() * cs;
            q.file.write_at(&vec![0xbb; cs as usize], d1).unwrap();
            let mut l2 = vec![0u64; (cs / 8) as usize];
            l2[0] = d0;
            l2[1] = d1 | OFLAG_COPIED;
            let t = q.write_table_copy(m, &l2).unwrap();
            (q.write_new_l1(m, &[t]).unwrap(), d0)
        };
        let entry = |l1: u64| {
            super::Snapshot::new(
                "1".into(),
                "cowblk-metadata".into(),
                l1,
                1,
                (1, 0),
                0,
                8192,
                None,
            )
        };
        let mut m = q.meta().unwrap();
        let mut first = 0;
        q.transaction(&mut m, |m| {
            let (l1, d0) = store(m, None);
            first = d0;
            q.commit(m, None, &[entry(l1)], None)
        })
        .unwrap();
        // Version 2 shares d0; the old version's references go in the
        // same transaction.
        let old = q.snapshot_list()[0].clone();
        q.transaction(&mut m, |m| {
            let (l1, _) = store(m, Some(first));
            q.drop_refs_in_transaction(m, old.l1_table_offset, old.l1_size)?;
            q.commit(m, None, &[entry(l1)], None)
        })
        .unwrap();
        drop(m);
        let r =
            crate::format::Format::check(&q, crate::format::check::Repair::None, &mut |_, _| {})
                .unwrap();
        assert_eq!((r.corruptions, r.leaks), (0, 0), "{r:?}");
        drop(q);
        let mut want = vec![0xaau8; 4096];
        want.extend(vec![0xbbu8; 4096]);
        assert_eq!(read(&st, Some("cowblk-metadata"))[..8192], want[..]);
    }

    fn read_img(img: &Image) -> Vec<u8> {
        let mut b = vec![0u8; img.size() as usize];
        img.read(&mut b, 0).unwrap();
        b
    }

    #[test]
    fn one_bit_refcounts_and_metadata_snapshot_are_refused() {
        let st = Arc::new(MemStorage::new());
        let p = Path::new("t.qcow2");
        let mut o = CreateOptions::new();
        o.parse_into("size=1M,refcount_bits=1").unwrap();
        Image::create_in(st.clone(), p, "qcow2", &o).unwrap();
        let img = Image::open_in(st.clone(), p, &OpenOptions::default()).unwrap();
        // Nothing to share yet: allowed, as in QEMU.
        img.snapshot_create("empty").unwrap();
        img.write(&[1u8; 512], 0).unwrap();
        let e = img.snapshot_create("x").unwrap_err().to_string();
        assert!(e.contains("1-bit refcounts"), "{e}");
        clean(&img, "after refusal");
        drop(img);
        let mut o = CreateOptions::new();
        o.parse_into("size=1M").unwrap();
        Image::create_in(st.clone(), p, "qcow2", &o).unwrap();
        let img = Image::open_in(st.clone(), p, &OpenOptions::default()).unwrap();
        img.snapshot_create(super::METADATA_SNAPSHOT).unwrap();
        let e = img.snapshot_apply(&"cowblk-metadata".into()).unwrap_err();
        assert!(e.to_string().contains("key/value metadata"), "{e}");
    }
}
