//! qcow2's metadata store: the guest disk of the internal snapshot named
//! "cowblk-metadata" (docs/specs/metadata.txt, section 3). Its L1 and L2
//! tables map store byte `o` where a guest disk maps guest offset `o`, so
//! QEMU counts every cluster as referenced. A change writes new clusters
//! and tables, then swaps the snapshot table entry through
//! `write_snapshot_table` (snapshot_write.rs), then drops the old
//! store's references. Values carried over share their whole clusters
//! with the old store (refcount raised) instead of being rewritten.

use super::l2::{OFFSET_MASK, OFLAG_COMPRESSED, OFLAG_ZERO};
use super::snapshot::{self, Snapshot};
use super::snapshot_write::METADATA_SNAPSHOT;
use super::write::Meta;
use super::Qcow2;
use crate::error::{Error, Result};
use crate::meta::{MetaStore, Same};
use byteorder::{BigEndian, ByteOrder};
use std::sync::RwLock;

/// Store bytes a qcow2 image may keep: a store is at most 2^20 keys of
/// 255 bytes plus values the caller chose; this bounds the L1 table read
/// for a hostile entry (2^40 bytes needs 256 KiB of L1 at 512-byte
/// clusters, 2 KiB at 64 KiB).
const MAX_STORE: u64 = 1 << 40;

fn bad(msg: impl Into<String>) -> Error {
    Error::Corrupt(format!("qcow2 metadata store: {}", msg.into()))
}

impl Qcow2 {
    fn kv_snapshot(&self) -> Option<Snapshot> {
        self.snapshot_list()
            .iter()
            .find(|s| s.name == METADATA_SNAPSHOT)
            .cloned()
    }

    /// The store's length as the snapshot records it, checked.
    fn kv_len(s: &Snapshot) -> Result<u64> {
        let len = s
            .disk_size
            .ok_or_else(|| bad("the snapshot records no disk size"))?;
        if len > MAX_STORE {
            return Err(bad(format!("a store of {len} bytes (at most {MAX_STORE})")));
        }
        Ok(len)
    }

    /// Guest entries per L2 table.
    fn kv_l2_entries(&self) -> u64 {
        self.cs() / (8 * self.geo.entry_words() as u64)
    }

    /// The snapshot's L1 table, checked against the store's length.
    fn kv_l1(&self, s: &Snapshot, len: u64) -> Result<Vec<u64>> {
        snapshot::check_l1(s, self.geo.cluster_bits)?;
        let cs = self.cs();
        let need = len.div_ceil(cs).div_ceil(self.kv_l2_entries());
        if (s.l1_size as u64) < need {
            return Err(bad(format!(
                "an L1 table of {} entries cannot map {len} bytes",
                s.l1_size
            )));
        }
        let mut raw = vec![0u8; need as usize * 8];
        let flen = self.file.len()?;
        if s.l1_table_offset.saturating_add(raw.len() as u64) > flen {
            return Err(bad("its L1 table lies outside the image file"));
        }
        self.file.read_at(&mut raw, s.l1_table_offset)?;
        Ok(raw.chunks_exact(8).map(BigEndian::read_u64).collect())
    }

    /// Host offset of store cluster `c`.
    fn kv_host(&self, l1: &[u64], c: u64, flen: u64) -> Result<u64> {
        let per = self.kv_l2_entries();
        let i = c / per;
        let l2 = l1[i as usize] & OFFSET_MASK;
        if l2 == 0 {
            return Err(bad(format!("store cluster {c} has no L2 table")));
        }
        let t = self.l2_table(l2, i)?;
        let w = t[((c % per) as usize) * self.geo.entry_words()];
        let host = w & OFFSET_MASK;
        if w & (OFLAG_COMPRESSED | OFLAG_ZERO) != 0 || host == 0 {
            return Err(bad(format!(
                "store cluster {c} is not a plain allocated cluster (entry {w:#x})"
            )));
        }
        if host.saturating_add(self.cs()) > flen {
            return Err(bad(format!(
                "store cluster {c} at {host:#x} lies outside the image file"
            )));
        }
        Ok(host)
    }

    /// Allocates `n` clusters (refcount 1, in memory).
    fn kv_alloc(&self, m: &mut Meta, n: u64, what: &str) -> Result<u64> {
        let cs = self.cs();
        let off = self.alloc_run(m, n)? * cs;
        self.check_overlap(m, off, n * cs, what)?;
        Ok(off)
    }

    /// Writes `buf` at `off` as whole clusters (zeros after it), so the
    /// file covers every cluster allocated (our readers refuse tables past
    /// the end of the file).
    fn kv_write_at(&self, off: u64, buf: &[u8]) -> Result<()> {
        let cs = self.cs() as usize;
        let whole = buf.len() - buf.len() % cs;
        self.file.write_at(&buf[..whole], off)?;
        if whole < buf.len() {
            let mut last = vec![0u8; cs];
            last[..buf.len() - whole].copy_from_slice(&buf[whole..]);
            self.file.write_at(&last, off + whole as u64)?;
        }
        Ok(())
    }

    /// For each cluster of a new store of `n` clusters, the host cluster
    /// of the old store it can share (`same` ranges cover it whole).
    fn kv_shared(&self, n: u64, same: &[Same], old: Option<&Snapshot>) -> Result<Vec<Option<u64>>> {
        let mut out = vec![None; n as usize];
        let Some(old) = old else {
            return Ok(out);
        };
        if same.is_empty() {
            return Ok(out);
        }
        let cs = self.cs();
        let old_len = Self::kv_len(old)?;
        let l1 = self.kv_l1(old, old_len)?;
        let flen = self.file.len()?;
        for r in same {
            if !r.new_off.is_multiple_of(cs) || !r.old_off.is_multiple_of(cs) {
                continue;
            }
            // Whole clusters only: a value's last partial cluster also
            // holds other bytes.
            for k in 0..r.len / cs {
                let (nc, oc) = (r.new_off / cs + k, r.old_off / cs + k);
                if nc < n && (oc + 1) * cs <= old_len {
                    out[nc as usize] = Some(self.kv_host(&l1, oc, flen)?);
                }
            }
        }
        Ok(out)
    }

    /// Allocates and writes the clusters, L2 tables and L1 table of a
    /// store holding `bytes`, sharing the old store's clusters where
    /// `same` allows (their refcounts raised); nothing names the new
    /// tables yet (a cut leaves leaks). The writes run without the
    /// metadata lock, so guest allocations do not wait for a large store.
    fn kv_write_tables(
        &self,
        bytes: &[u8],
        same: &[Same],
        old: Option<&Snapshot>,
    ) -> Result<(u64, u32, u64)> {
        let cs = self.cs();
        let cb = self.geo.cluster_bits;
        let n = (bytes.len() as u64).div_ceil(cs);
        let shared = self.kv_shared(n, same, old)?;
        let fresh = shared.iter().filter(|s| s.is_none()).count() as u64;
        let per = self.kv_l2_entries();
        let words = self.geo.entry_words();
        let nl2 = n.div_ceil(per);
        let nl1 = (nl2 * 8).div_ceil(cs);
        let (data, l2, l1_off) = {
            let mut m = self.meta()?;
            for h in shared.iter().flatten() {
                self.add_refcount(&mut m, h >> cb, 1)?;
            }
            (
                if fresh > 0 {
                    self.kv_alloc(&mut m, fresh, "a metadata store")?
                } else {
                    0
                },
                self.kv_alloc(&mut m, nl2, "metadata store L2 tables")?,
                self.kv_alloc(&mut m, nl1, "a metadata L1 table")?,
            )
        };
        let mut hosts = Vec::with_capacity(n as usize);
        let mut next = data;
        let mut c = 0u64;
        while c < n {
            if let Some(h) = shared[c as usize] {
                hosts.push(h);
                c += 1;
                continue;
            }
            // A run of fresh clusters goes out in one write.
            let start = c;
            while c < n && shared[c as usize].is_none() {
                hosts.push(next + (c - start) * cs);
                c += 1;
            }
            let (a, b) = ((start * cs) as usize, ((c * cs) as usize).min(bytes.len()));
            self.kv_write_at(next, &bytes[a..b])?;
            next += (c - start) * cs;
        }
        let mut tables = vec![0u8; (nl2 * cs) as usize];
        for (c, h) in hosts.iter().enumerate() {
            // The snapshot's tables: no COPIED flags (as QEMU leaves them
            // in snapshots); extended entries mark all subclusters
            // allocated.
            let at = c * 8 * words;
            BigEndian::write_u64(&mut tables[at..], *h);
            if words == 2 {
                BigEndian::write_u64(&mut tables[at + 8..], 0xffff_ffff);
            }
        }
        self.kv_write_at(l2, &tables)?;
        let mut l1 = vec![0u8; (nl2 * 8) as usize];
        for i in 0..nl2 {
            BigEndian::write_u64(&mut l1[(i * 8) as usize..], l2 + i * cs);
        }
        self.kv_write_at(l1_off, &l1)?;
        Ok((l1_off, nl2 as u32, n * cs))
    }
}

impl MetaStore for Qcow2 {
    fn meta_lock(&self) -> &RwLock<()> {
        &self.kv_lock
    }

    fn store_len(&self) -> Result<Option<u64>> {
        self.kv_snapshot().map(|s| Self::kv_len(&s)).transpose()
    }

    fn read_store(&self, buf: &mut [u8], off: u64) -> Result<()> {
        let s = self
            .kv_snapshot()
            .ok_or_else(|| Error::NotFound(format!("snapshot '{METADATA_SNAPSHOT}'")))?;
        let len = Self::kv_len(&s)?;
        if off.checked_add(buf.len() as u64).is_none_or(|e| e > len) {
            return Err(bad(format!(
                "{} bytes at {off} lie past its {len} bytes",
                buf.len()
            )));
        }
        let l1 = self.kv_l1(&s, len)?;
        let flen = self.file.len()?;
        let cs = self.cs();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = off + done as u64;
            let host = self.kv_host(&l1, pos / cs, flen)?;
            let n = ((cs - pos % cs) as usize).min(buf.len() - done);
            self.file
                .read_at(&mut buf[done..done + n], host + pos % cs)?;
            done += n;
        }
        Ok(())
    }

    fn share_unit(&self) -> Option<u64> {
        Some(self.cs())
    }

    fn replace_store(&self, new: Option<&[u8]>, same: &[Same]) -> Result<()> {
        if self.geo.data_file {
            return Err(Error::Unsupported(
                "key/value metadata lives in an internal snapshot, which a qcow2 image with an external data file cannot hold".into(),
            ));
        }
        // Refusals first, before anything is allocated. The table cannot
        // change until the switch: snapshot operations wait for the
        // request lock our caller holds shared.
        {
            let list = self.snapshot_list();
            let old = list.iter().find(|s| s.name == METADATA_SNAPSHOT);
            if old.is_none() && new.is_some() && list.len() >= snapshot::MAX_SNAPSHOTS {
                return Err(Error::TooLarge(format!(
                    "the image already has {} snapshots (QEMU's limit)",
                    list.len()
                )));
            }
            if let Some(o) = old {
                // Dropping references of a damaged store could free
                // clusters something else uses: refuse instead.
                snapshot::check_l1(o, self.geo.cluster_bits)?;
            }
        }
        // Written before the metadata lock is taken for the switch; the
        // store lock (held exclusive by the caller) keeps other changes
        // of the store out meanwhile.
        let tables = match new {
            Some(bytes) => Some(self.kv_write_tables(bytes, same, self.kv_snapshot().as_ref())?),
            None => None,
        };
        let mut m = self.meta()?;
        let mut list = (*self.snapshot_list()).clone();
        let at = list.iter().position(|s| s.name == METADATA_SNAPSHOT);
        let old = at.map(|i| list[i].clone());
        match tables {
            None => {
                if let Some(i) = at {
                    list.remove(i);
                }
            }
            Some((l1_off, l1_size, disk)) => {
                let id = match &old {
                    Some(o) => o.id.clone(),
                    None => snapshot::next_id(&list),
                };
                let s = Snapshot::new(
                    id,
                    METADATA_SNAPSHOT.into(),
                    l1_off,
                    l1_size,
                    crate::ops::snapshot::now(),
                    0,
                    disk,
                    Some(0),
                );
                match at {
                    Some(i) => list[i] = s,
                    None => list.push(s),
                }
            }
        }
        if old.is_none() && new.is_none() {
            return Ok(());
        }
        // Flushes the new clusters and their refcounts, then switches the
        // table with one header write.
        self.write_snapshot_table(&mut m, list)?;
        if let Some(o) = old {
            self.drop_l1_refs(&mut m, o.l1_table_offset, o.l1_size)?;
        }
        Ok(())
    }
}
