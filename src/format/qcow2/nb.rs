//! Cache-only mapping: `Format::map_cached` for qcow2. Answers from the
//! resident L1 chunks and the L2 cache, or says "would block"; never reads
//! the file. Both caches hold the newest copy of what they hold (a writer
//! replaces a table in the cache before the write that changed it returns),
//! so a cached answer is as current as `map`'s.

use super::l2::OFFSET_MASK;
use super::Qcow2;
use crate::error::Result;
use crate::format::{Extent, Format, Mapping};

impl Qcow2 {
    pub(super) fn map_nb(&self, off: u64, len: u64) -> Result<Option<Extent>> {
        let cov = self.geo.l2_coverage();
        let end = off
            .saturating_add(len)
            .min((off / cov + 1).saturating_mul(cov))
            .min(self.size().max(off + 1));
        let (l1_index, _) = self.geo.indices(off);
        let Some(l1) = self.l1.load().cached_entry(l1_index) else {
            return Ok(None);
        };
        let l2off = l1 & OFFSET_MASK;
        if l2off == 0 {
            return Ok(Some(Extent::new(Mapping::Unallocated, end - off)));
        }
        // A table not cached under that offset would need a load (and its
        // checks): the slow path does both.
        let Some(table) = self.l2_cache.peek(l2off) else {
            return Ok(None);
        };
        self.map_in_table(&table, off, end, l1_index).map(Some)
    }
}
