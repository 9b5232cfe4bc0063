//! qcow2 metadata overlap checks (QEMU's `overlap-check` modes): before
//! data or metadata is written, the range is compared with the metadata
//! the mode covers. Constant: header, active L1, refcount table, snapshot
//! table. Cached (the default): also L2 tables in the cache, refcount
//! blocks, the snapshots' L1 tables, the bitmap directory. All: also the
//! snapshots' L2 tables (read once at a read-write open).

use super::l2::OFFSET_MASK;
use super::open_opts::*;
use super::write::Meta;
use super::Qcow2;
use crate::error::{Error, Result};
use byteorder::{BigEndian, ByteOrder};

impl Qcow2 {
    /// Reads the snapshots' L2 table offsets for overlap-check=all (at
    /// a read-write open and after every change of the snapshot table).
    pub(super) fn load_overlap_extents(&self) -> Result<()> {
        if self.overlap & OL_INACTIVE_L2 == 0 {
            return Ok(());
        }
        let flen = self.file.len()?;
        let mut seen = std::collections::HashSet::new();
        let mut set = std::collections::HashSet::new();
        for s in self.snapshots.load().iter() {
            if !seen.insert(s.l1_table_offset) {
                continue;
            }
            let bytes = s.l1_size as u64 * 8;
            if s.l1_table_offset.saturating_add(bytes) > flen {
                return Err(Error::Corrupt(format!(
                    "snapshot '{}' has an L1 table past the end of the file",
                    s.id
                )));
            }
            let mut raw = vec![0u8; bytes as usize];
            self.file.read_at(&mut raw, s.l1_table_offset)?;
            for e in raw.chunks_exact(8).map(BigEndian::read_u64) {
                if e & OFFSET_MASK != 0 {
                    set.insert(e & OFFSET_MASK);
                }
            }
        }
        *self.inactive_l2.write().unwrap_or_else(|p| p.into_inner()) = set;
        Ok(())
    }

    /// The first kind of metadata that `[off, off + len)` overlaps, of
    /// those the mode checks less `ign`.
    pub(super) fn overlap_hit(
        &self,
        m: &Meta,
        off: u64,
        len: u64,
        ign: u32,
    ) -> Option<&'static str> {
        let mode = self.overlap & !ign;
        if mode == 0 || len == 0 {
            return None;
        }
        let cs = self.cs();
        let cb = self.geo.cluster_bits;
        let hits = |(o, l): (u64, u64)| l > 0 && off < o.saturating_add(l) && o < off + len;
        let on = |bit: u32| mode & bit != 0;
        if on(OL_MAIN_HEADER) && off < cs {
            return Some("the header");
        }
        let l1 = self.l1.load();
        if on(OL_ACTIVE_L1) && hits((l1.offset(), l1.entries() * 8)) {
            return Some("the active L1 table");
        }
        if on(OL_REFCOUNT_TABLE) && hits((m.rt_offset, m.rt_clusters * cs)) {
            return Some("the refcount table");
        }
        if on(OL_SNAPSHOT_TABLE) && hits(m.snap_table) {
            return Some("the snapshot table");
        }
        if on(OL_INACTIVE_L1)
            && self
                .snapshots
                .load()
                .iter()
                .any(|s| hits((s.l1_table_offset, s.l1_size as u64 * 8)))
        {
            return Some("a snapshot's L1 table");
        }
        if on(OL_BITMAP_DIRECTORY) {
            if let Some(b) = &self.header.bitmaps {
                if hits((b.dir_offset, b.dir_size)) {
                    return Some("the bitmap directory");
                }
            }
        }
        // Per cluster: the tables are looked up by offset.
        if mode & (OL_ACTIVE_L2 | OL_REFCOUNT_BLOCK | OL_INACTIVE_L2) != 0 {
            let inactive = self.inactive_l2.read().unwrap_or_else(|p| p.into_inner());
            for c in (off >> cb)..=((off + len - 1) >> cb) {
                let at = c << cb;
                if on(OL_REFCOUNT_BLOCK) && m.block_offs.contains(&at) {
                    return Some("a refcount block");
                }
                if on(OL_ACTIVE_L2) && self.l2_cache.contains(at) {
                    return Some("an active L2 table");
                }
                if on(OL_INACTIVE_L2) && inactive.contains(&at) {
                    return Some("a snapshot's L2 table");
                }
            }
        }
        None
    }
}
