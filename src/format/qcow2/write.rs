//! qcow2, write side: refcounts, the cluster allocator, linking guest
//! clusters to new host clusters, zeroing and discarding, and the ordered
//! write-back of metadata.
//!
//! All of it runs under one metadata mutex (`Meta`), held for metadata
//! work only: the engine writes guest data with no lock held, between
//! `allocate` and `link`. Metadata changes stay in memory (dirty L2 tables
//! in the L2 cache, dirty refcount blocks here, dirty L1 entries) until a
//! flush, which writes them in dependency order with a flush of the files
//! between each step (see `flush_locked`), so a power cut at any moment
//! leaves at worst leaked clusters, never a pointer to unwritten data or a
//! refcount below the number of its users.

use super::l2::{Kind, OFFSET_MASK, OFLAG_COMPRESSED, OFLAG_COPIED, OFLAG_ZERO};
use super::open_opts::{OL_ACTIVE_L2, OL_REFCOUNT_BLOCK};
use super::{features, refcount, Qcow2};
use crate::error::{Error, Result};
use crate::format::{Format, OldReader};
use crate::io::IoVec;
use byteorder::{BigEndian, ByteOrder};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Offset bits of a refcount table entry (the low 9 bits are reserved).
const RT_OFFSET_MASK: u64 = !0x1ff;
/// An L2 entry: the entry word and (extended L2) the subcluster bitmap.
type Entry = (u64, u64);
/// Every subcluster allocated / reading zeros (extended L2 bitmaps).
const ALL_ALLOC: u64 = 0xffff_ffff;
const ALL_ZERO: u64 = 0xffff_ffff << 32;
/// Dirty metadata that triggers a write-back (the cache's "eviction").
const MAX_DIRTY_L2: usize = 1024;

/// A refcount block in memory.
struct Block {
    data: Vec<u8>,
    dirty: bool,
    tick: u64,
}

/// The mutable metadata state of a read-write open.
pub(super) struct Meta {
    /// Refcount table entries (raw), as the table on disk will hold them.
    pub(super) rt: Vec<u64>,
    pub(super) rt_offset: u64,
    pub(super) rt_clusters: u64,
    /// The refcount blocks' offsets (for the overlap checks).
    pub(super) block_offs: HashSet<u64>,
    /// An entry changed since the table was last written.
    pub(super) rt_dirty: bool,
    /// The table moved (it grew): the old one, to free once the header
    /// points at the new one.
    pub(super) rt_old: Option<(u64, u64)>,
    blocks: HashMap<u64, Block>,
    block_cap: usize,
    tick: u64,
    /// No cluster below this one is free.
    pub(super) hint: u64,
    /// L2 tables changed since the last write-back.
    pub(super) l2_dirty: HashSet<u64>,
    /// L1 indexes changed since the last write-back.
    pub(super) l1_dirty: BTreeSet<u64>,
    /// Host clusters to unreference once nothing on disk points at them.
    pub(super) frees: Vec<u64>,
    /// Where the next compressed cluster may be packed (0: start a new
    /// host cluster), as QEMU's free_byte_offset.
    pub(super) free_byte: u64,
    /// The snapshot table on disk: offset and length in bytes.
    pub(super) snap_table: (u64, u64),
    /// A transaction in progress (see `Shadow`).
    pub(super) shadow: Option<Shadow>,
}

/// A refcount structure built beside the committed one, switched to by
/// one header write (snapshot create and delete): every refcount block the
/// transaction changes is first copied to a new cluster, the table moves,
/// and no cluster whose count drops to 0 is reused before the switch (the
/// committed structure still names it).
#[derive(Default)]
pub(super) struct Shadow {
    /// Blocks made or copied during the transaction: changed in place.
    pub(super) fresh: HashSet<u64>,
    /// Committed blocks replaced by copies: freed after the switch.
    pub(super) replaced: Vec<u64>,
    /// Clusters whose count reached 0 during the transaction.
    pub(super) zeroed: HashSet<u64>,
}

impl Meta {
    pub(super) fn new(rt: Vec<u64>, rt_offset: u64, rt_clusters: u64, block_cap: usize) -> Meta {
        let block_offs = rt
            .iter()
            .map(|e| e & RT_OFFSET_MASK)
            .filter(|&o| o != 0)
            .collect();
        Meta {
            block_offs,
            rt,
            rt_offset,
            rt_clusters,
            rt_dirty: false,
            rt_old: None,
            blocks: HashMap::new(),
            block_cap: block_cap.max(4),
            tick: 0,
            hint: 0,
            l2_dirty: HashSet::new(),
            l1_dirty: BTreeSet::new(),
            frees: Vec::new(),
            free_byte: 0,
            snap_table: (0, 0),
            shadow: None,
        }
    }

    pub(super) fn dirty_blocks(&self) -> usize {
        self.blocks.values().filter(|b| b.dirty).count()
    }
}

impl Qcow2 {
    fn order(&self) -> u32 {
        self.header.refcount_order
    }

    fn per_block_bits(&self) -> u32 {
        self.geo.cluster_bits + 3 - self.order()
    }

    /// The refcount block at `boff`, loaded on a miss (evicting clean
    /// blocks past the cache's capacity).
    fn block<'m>(&self, m: &'m mut Meta, boff: u64) -> Result<&'m mut Block> {
        m.tick += 1;
        let tick = m.tick;
        if !m.blocks.contains_key(&boff) {
            let cs = self.cs();
            if !boff.is_multiple_of(cs) {
                return Err(Error::Corrupt(format!(
                    "refcount block offset {boff:#x} is not cluster aligned"
                )));
            }
            let flen = self.file.len()?;
            if boff.checked_add(cs).is_none_or(|e| e > flen) {
                return Err(Error::Corrupt(format!(
                    "refcount block at {boff:#x} lies outside the image file ({flen} bytes)"
                )));
            }
            let mut data = vec![0u8; cs as usize];
            self.file.read_at(&mut data, boff)?;
            if m.blocks.len() >= m.block_cap {
                let mut clean: Vec<(u64, u64)> = m
                    .blocks
                    .iter()
                    .filter(|(_, b)| !b.dirty)
                    .map(|(k, b)| (b.tick, *k))
                    .collect();
                clean.sort_unstable();
                let excess = m.blocks.len() + 1 - m.block_cap;
                for (_, k) in clean.into_iter().take(excess) {
                    m.blocks.remove(&k);
                }
            }
            m.blocks.insert(
                boff,
                Block {
                    data,
                    dirty: false,
                    tick,
                },
            );
        }
        let b = m.blocks.get_mut(&boff).expect("just loaded");
        b.tick = tick;
        Ok(b)
    }

    fn block_offset(&self, m: &Meta, ti: u64) -> u64 {
        m.rt.get(ti as usize).map_or(0, |e| e & RT_OFFSET_MASK)
    }

    /// The refcount of host cluster `c`.
    pub(super) fn refcount(&self, m: &mut Meta, c: u64) -> Result<u64> {
        let (ti, bi) = refcount::position(c, self.geo.cluster_bits, self.order());
        let boff = self.block_offset(m, ti);
        if boff == 0 {
            return Ok(0);
        }
        let order = self.order();
        refcount::entry(&self.block(m, boff)?.data, bi, order)
    }

    /// Sets the refcount of host cluster `c`, creating its refcount block
    /// (and growing the table) when needed.
    pub(super) fn set_refcount(&self, m: &mut Meta, c: u64, value: u64, depth: u32) -> Result<()> {
        let (ti, bi) = refcount::position(c, self.geo.cluster_bits, self.order());
        let boff = match self.block_offset(m, ti) {
            0 => self.new_block(m, ti, depth)?,
            b => b,
        };
        let boff = match &m.shadow {
            Some(s) if !s.fresh.contains(&boff) => self.copy_block(m, ti, boff, depth)?,
            _ => boff,
        };
        let order = self.order();
        let b = self.block(m, boff)?;
        refcount::set_entry(&mut b.data, bi, order, value)?;
        b.dirty = true;
        Ok(())
    }

    /// Adds `delta` (+1 or -1) to the refcount of cluster `c`; an
    /// underflow or overflow is corruption (or a full counter).
    pub(super) fn add_refcount(&self, m: &mut Meta, c: u64, delta: i64) -> Result<u64> {
        let old = self.refcount(m, c)?;
        let new = if delta < 0 {
            old.checked_sub(delta.unsigned_abs())
        } else {
            old.checked_add(delta as u64)
                .filter(|&v| v <= refcount::max_value(self.order()))
        }
        .ok_or_else(|| {
            Error::Corrupt(format!(
                "refcount of host cluster {:#x} would go from {old} by {delta}",
                c << self.geo.cluster_bits
            ))
        })?;
        self.set_refcount(m, c, new, 0)?;
        if new == 0 {
            if let Some(s) = &mut m.shadow {
                s.zeroed.insert(c);
            }
        }
        Ok(new)
    }

    /// Shadow mode: replaces committed block `boff` (table index `ti`) by
    /// a copy in a new cluster and returns the copy's offset.
    fn copy_block(&self, m: &mut Meta, ti: u64, boff: u64, depth: u32) -> Result<u64> {
        if depth > 8 {
            return Err(Error::Corrupt(
                "refcount block copies do not converge".into(),
            ));
        }
        let data = self.block(m, boff)?.data.clone();
        let c = self.find_free(m, 1)?;
        m.hint = c + 1;
        let nb = c << self.geo.cluster_bits;
        self.check_overlap(m, nb, self.cs(), "a refcount block copy")?;
        m.blocks.remove(&boff);
        m.tick += 1;
        m.blocks.insert(
            nb,
            Block {
                data,
                dirty: true,
                tick: m.tick,
            },
        );
        m.rt[ti as usize] = nb;
        m.block_offs.insert(nb);
        m.rt_dirty = true;
        if let Some(s) = &mut m.shadow {
            s.fresh.insert(nb);
            s.replaced.push(boff);
        }
        self.set_refcount(m, c, 1, depth + 1)?;
        Ok(nb)
    }

    /// Whether cluster `c` may not be allocated: counted, or (during a
    /// transaction) still named by the committed structure.
    fn in_use(&self, m: &mut Meta, c: u64) -> Result<bool> {
        if m.shadow.as_ref().is_some_and(|s| s.zeroed.contains(&c)) {
            return Ok(true);
        }
        Ok(self.refcount(m, c)? != 0)
    }

    /// Makes a refcount block for table index `ti` (zeroed, describing
    /// itself when it lies in its own range) and returns its offset.
    fn new_block(&self, m: &mut Meta, ti: u64, depth: u32) -> Result<u64> {
        if depth > 8 {
            return Err(Error::Corrupt(
                "refcount block allocation does not converge".into(),
            ));
        }
        if ti >= m.rt.len() as u64 {
            self.grow_table(m, ti + 1, depth + 1)?;
            // Placing the new table may have made this very block.
            let b = self.block_offset(m, ti);
            if b != 0 {
                return Ok(b);
            }
        }
        let c = self.find_free(m, 1)?;
        m.hint = c + 1;
        let boff = c << self.geo.cluster_bits;
        self.check_overlap(m, boff, self.cs(), "a new refcount block")?;
        m.tick += 1;
        m.blocks.insert(
            boff,
            Block {
                data: vec![0u8; self.cs() as usize],
                dirty: true,
                tick: m.tick,
            },
        );
        m.rt[ti as usize] = boff;
        m.block_offs.insert(boff);
        m.rt_dirty = true;
        if let Some(s) = &mut m.shadow {
            s.fresh.insert(boff);
        }
        self.set_refcount(m, c, 1, depth + 1)?;
        Ok(boff)
    }

    /// Grows the refcount table (in memory) to at least `need` entries and
    /// gives it a new place; the header switches to it at the next flush.
    fn grow_table(&self, m: &mut Meta, need: u64, depth: u32) -> Result<()> {
        let cs = self.cs();
        let per_cluster = cs / 8;
        let pbb = self.per_block_bits();
        let mut entries = need.max(m.rt.len() as u64 * 3 / 2).div_ceil(per_cluster) * per_cluster;
        // Room for the table's own clusters and their blocks.
        loop {
            let clusters = entries / per_cluster;
            let last = m.hint + clusters + 4;
            let want = (last >> pbb) + 2;
            if want <= entries {
                break;
            }
            entries = want.div_ceil(per_cluster) * per_cluster;
        }
        let clusters = entries / per_cluster;
        if clusters * cs > super::header::MAX_REFTABLE_BYTES {
            return Err(Error::TooLarge(format!(
                "the refcount table would need {} bytes (the limit is 8 MiB)",
                clusters * cs
            )));
        }
        m.rt.resize(entries as usize, 0);
        let c = self.find_free(m, clusters)?;
        m.hint = c + clusters;
        self.check_overlap(m, c * cs, clusters * cs, "a new refcount table")?;
        for i in 0..clusters {
            self.set_refcount(m, c + i, 1, depth + 1)?;
        }
        if m.rt.len() as u64 != entries {
            return Err(Error::Corrupt(
                "refcount table growth does not converge".into(),
            ));
        }
        let old = (m.rt_offset, m.rt_clusters);
        m.rt_offset = c * cs;
        m.rt_clusters = clusters;
        m.rt_dirty = true;
        match m.rt_old {
            // The table in between was never on disk: free it now.
            Some(_) => {
                for i in 0..old.1 {
                    self.add_refcount(m, old.0 / cs + i, -1)?;
                }
                m.hint = m.hint.min(old.0 / cs);
            }
            None => m.rt_old = Some(old),
        }
        Ok(())
    }

    /// The first run of `n` free clusters at or after the hint.
    pub(super) fn find_free(&self, m: &mut Meta, n: u64) -> Result<u64> {
        // Past the end of the file only our own unwritten allocations can
        // be in use; a long run of refcounts there is a hostile image, and
        // scanning it would take forever.
        // The file's length as last seen (a stat per allocation shows in
        // profiles); asked again only before giving up.
        let hint = m.hint;
        let limit_for = |len: u64| {
            (super::header::MAX_HOST_OFFSET >> self.geo.cluster_bits)
                .min((len >> self.geo.cluster_bits).max(hint) + n + (1 << 20))
        };
        let mut limit = limit_for(self.known_len.load(Ordering::Relaxed));
        let mut fresh = false;
        let mut start = m.hint.max(1);
        let mut c = start;
        while c - start < n {
            if c >= limit && !fresh {
                let flen = self.file.len()?;
                self.known_len.fetch_max(flen, Ordering::Relaxed);
                limit = limit_for(flen);
                fresh = true;
            }
            if c >= limit {
                return Err(Error::Corrupt(format!(
                    "no free run of {n} host clusters: refcounts are set far past the end of the file (or the image reached 2^56 bytes)"
                )));
            }
            if self.in_use(m, c)? {
                start = c + 1;
            }
            c += 1;
        }
        Ok(start)
    }

    /// Allocates `n` contiguous clusters with refcount 1.
    pub(super) fn alloc_run(&self, m: &mut Meta, n: u64) -> Result<u64> {
        loop {
            let c = self.find_free(m, n)?;
            m.hint = c + n;
            // Make the blocks first: they may not land inside the run.
            let pbb = self.per_block_bits();
            for ti in (c >> pbb)..=((c + n - 1) >> pbb) {
                if self.block_offset(m, ti) == 0 {
                    self.new_block(m, ti, 0)?;
                }
            }
            let mut free = true;
            for i in 0..n {
                if self.in_use(m, c + i)? {
                    free = false;
                    break;
                }
            }
            if !free {
                m.hint = c;
                continue;
            }
            for i in 0..n {
                self.set_refcount(m, c + i, 1, 0)?;
            }
            return Ok(c);
        }
    }

    /// The overlap checks of the open's `overlap-check` mode (see
    /// `overlap`): a range about to be written as data or metadata must
    /// hold no metadata. Finding some marks the image corrupt.
    pub(super) fn check_overlap(&self, m: &Meta, off: u64, len: u64, what: &str) -> Result<()> {
        self.check_overlap_ign(m, off, len, what, 0)
    }

    /// `check_overlap` ignoring the `ign` kinds (OL_* bits): a table
    /// being written back is checked against everything but its own kind.
    pub(super) fn check_overlap_ign(
        &self,
        m: &Meta,
        off: u64,
        len: u64,
        what: &str,
        ign: u32,
    ) -> Result<()> {
        match self.overlap_hit(m, off, len, ign) {
            None => Ok(()),
            Some(n) => Err(self.mark_corrupt(format!(
                "{what} at {off:#x} would overwrite {n} (the refcounts are wrong)"
            ))),
        }
    }

    /// Marks the image corrupt (v3), stops writing, and returns the error.
    pub(super) fn mark_corrupt(&self, msg: String) -> Error {
        self.ro.store(true, Ordering::SeqCst);
        if self.header.version >= 3 {
            let mut b = [0u8; 8];
            let flags = self.incompat.load(Ordering::SeqCst) | features::INCOMPAT_CORRUPT;
            self.incompat.store(flags, Ordering::SeqCst);
            BigEndian::write_u64(&mut b, flags);
            let _ = self.file.write_at(&b, 72).and_then(|_| self.file.flush());
        }
        Error::Corrupt(format!(
            "{msg}; the image is now marked corrupt and read-only ('qemu-img check -r all' repairs it)"
        ))
    }

    /// Host clusters of the image file an L2 entry holds a reference to
    /// (none for data in an external data file: it has no refcounts).
    pub(super) fn entry_clusters(&self, entry: u64) -> Vec<u64> {
        let cb = self.geo.cluster_bits;
        if self.geo.data_file {
            return Vec::new();
        }
        if entry & OFLAG_COMPRESSED != 0 {
            let (host, csize) = self.geo.compressed(entry);
            return ((host >> cb)..=((host + csize - 1) >> cb)).collect();
        }
        match entry & OFFSET_MASK {
            0 => Vec::new(),
            h => vec![h >> cb],
        }
    }

    /// An L2 table for L1 index `l1i` that may be changed in place: made
    /// (zeroed) when missing, copied when shared (no COPIED flag).
    pub(super) fn writable_l2(&self, m: &mut Meta, l1i: u64) -> Result<u64> {
        let e = self.l1.load().entry(l1i)?;
        let off = e & OFFSET_MASK;
        if off != 0 && e & OFLAG_COPIED != 0 {
            return Ok(off);
        }
        let cs = self.cs();
        let new = self.alloc_run(m, 1)? * cs;
        self.check_overlap(m, new, cs, "a new L2 table")?;
        let table: Vec<u64> = if off == 0 {
            vec![0; (cs / 8) as usize]
        } else {
            self.l2_table(off, l1i)?.to_vec()
        };
        // The table is in the cache before the L1 entry names it, so a
        // reader never loads the (unwritten) cluster from disk.
        self.l2_cache.put(new, table.into(), true);
        m.l2_dirty.insert(new);
        self.l1.load().set(l1i, new | OFLAG_COPIED)?;
        m.l1_dirty.insert(l1i);
        if off != 0 {
            m.frees.push(off >> self.geo.cluster_bits);
        }
        Ok(new)
    }

    /// An entry for data at `host` (every subcluster allocated).
    fn data_entry(&self, host: u64) -> Entry {
        let bitmap = if self.geo.extended { ALL_ALLOC } else { 0 };
        (host | OFLAG_COPIED, bitmap)
    }

    /// An entry reading zeros, keeping `host` (owned by this image alone)
    /// as preallocated space if given.
    fn zero_entry(&self, host: Option<u64>) -> Entry {
        let word = host.map_or(0, |h| h | OFLAG_COPIED);
        if self.geo.extended {
            (word, ALL_ZERO)
        } else {
            (word | OFLAG_ZERO, 0)
        }
    }

    /// The host cluster of an entry this image alone owns (COPIED, not
    /// compressed), if any.
    fn owned_host(&self, e: Entry) -> Option<u64> {
        let allocated = e.0 & OFFSET_MASK != 0 || self.geo.data_file;
        (e.0 & OFLAG_COPIED != 0 && e.0 & OFLAG_COMPRESSED == 0 && allocated)
            .then_some(e.0 & OFFSET_MASK)
    }

    /// Rewrites the L2 entries of whole clusters `[guest, guest + len)`
    /// with `f(guest cluster offset, old entry) -> new entry` (entry word
    /// and, with extended L2, the subcluster bitmap); references the old
    /// entries held and the new ones drop are released after the next
    /// write-back.
    pub(super) fn rewrite_entries(
        &self,
        m: &mut Meta,
        guest: u64,
        len: u64,
        mut f: impl FnMut(u64, Entry) -> Option<Entry>,
    ) -> Result<()> {
        let w = self.geo.entry_words();
        let cs = self.cs();
        let end = guest + len;
        let cov = self.geo.l2_coverage();
        let mut pos = guest;
        while pos < end {
            let (l1i, _) = self.geo.indices(pos);
            let stop = end.min((pos / cov + 1) * cov);
            // Only touch the table when some entry changes.
            let toff = self.l1.load().entry(l1i)? & OFFSET_MASK;
            let current: Vec<u64> = if toff == 0 {
                vec![0; (cs / 8) as usize]
            } else {
                self.l2_table(toff, l1i)?.to_vec()
            };
            let mut changes = Vec::new();
            let mut p = pos;
            while p < stop {
                let (_, i) = self.geo.indices(p);
                let i = i * w;
                let old = (current[i], if w == 2 { current[i + 1] } else { 0 });
                if let Some(new) = f(p, old) {
                    if new != old {
                        changes.push((i, old, new));
                    }
                }
                p += cs;
            }
            if !changes.is_empty() {
                let toff = self.writable_l2(m, l1i)?;
                let mut t = self.l2_table(toff, l1i)?.to_vec();
                for &(i, _, new) in &changes {
                    let old = t[i];
                    t[i] = new.0;
                    if w == 2 {
                        t[i + 1] = new.1;
                    }
                    let keep = self.entry_clusters(new.0);
                    for c in self.entry_clusters(old) {
                        if !keep.contains(&c) {
                            m.frees.push(c);
                        }
                    }
                }
                self.l2_cache.put(toff, t.into(), true);
                m.l2_dirty.insert(toff);
            }
            pos = stop;
        }
        Ok(())
    }

    /// The L2 entry of the cluster holding `guest` (no lock: the engine's
    /// range lock keeps it stable against other writers).
    fn entry_at(&self, guest: u64) -> Result<Entry> {
        let (l1i, i) = self.geo.indices(guest);
        let toff = self.l1.load().entry(l1i)? & OFFSET_MASK;
        if toff == 0 {
            return Ok((0, 0));
        }
        let t = self.l2_table(toff, l1i)?;
        let i = i * self.geo.entry_words();
        Ok((t[i], if self.geo.extended { t[i + 1] } else { 0 }))
    }

    /// Whether a write at `guest` allocates per subcluster: extended L2,
    /// and the cluster's host space (if any) belongs to this image alone,
    /// so the subclusters not written need no copy.
    fn subcluster_mode(&self, guest: u64) -> Result<bool> {
        if !self.geo.extended {
            return Ok(false);
        }
        let e = self.entry_at(guest)?;
        let has_host = e.0 & OFFSET_MASK != 0 || (self.geo.data_file && e.0 & OFLAG_COPIED != 0);
        Ok(e.0 & OFLAG_COMPRESSED == 0 && (!has_host || self.owned_host(e).is_some()))
    }

    /// `Format::cow_unit`.
    pub(super) fn w_cow_unit(&self, guest: u64) -> Result<u64> {
        Ok(if self.subcluster_mode(guest)? {
            1 << self.geo.unit_bits()
        } else {
            self.cs()
        })
    }

    /// `Format::allocate`: a run of fresh clusters for `len` guest bytes,
    /// or (subcluster mode) space inside one cluster: its own host cluster
    /// when it has one, else a fresh one.
    pub(super) fn w_allocate(&self, guest: u64, len: u64) -> Result<(u64, u64)> {
        let mut m = self.meta()?;
        let cs = self.cs();
        // The L2 tables first, then the data: new data clusters then lie
        // one after another, as QEMU's qcow2 lays them out (its `map`
        // shows one extent where they do). An empty table the L1 names
        // reads as unallocated, so this order is safe at any crash point.
        let cov = self.geo.l2_coverage();
        for l1i in guest / cov..=(guest + len.max(1) - 1) / cov {
            self.writable_l2(&mut m, l1i)?;
        }
        if self.subcluster_mode(guest)? && (!guest.is_multiple_of(cs) || len < cs) {
            let inside = guest % cs;
            let len = len.min(cs - inside);
            let e = self.entry_at(guest)?;
            let hc = match self.owned_host(e) {
                Some(h) if self.geo.data_file => h,
                Some(h) => {
                    // Reserved space we write into must start inside the
                    // file and hold no metadata.
                    let flen = self.file.len()?;
                    if h >= flen {
                        return Err(Error::Corrupt(format!(
                            "host cluster {h:#x} lies past the end of the image file ({flen} bytes)"
                        )));
                    }
                    self.check_overlap(&m, h, cs, "guest data")?;
                    h
                }
                None if self.geo.data_file => guest - inside,
                None => {
                    let c = self.alloc_run(&mut m, 1)? * cs;
                    self.check_overlap(&m, c, cs, "guest data")?;
                    c
                }
            };
            return Ok((hc + inside, len));
        }
        let n = len.div_ceil(cs).max(1);
        if self.geo.data_file {
            // The data file holds guest cluster N at host cluster N.
            return Ok((guest / cs * cs, n * cs));
        }
        let c = self.alloc_run(&mut m, n)?;
        self.check_overlap(&m, c * cs, n * cs, "guest data")?;
        Ok((c * cs, n * cs))
    }

    /// `Format::link`: guest clusters now live at `host..`.
    pub(super) fn w_link(&self, guest: u64, len: u64, host: u64) -> Result<()> {
        let mut m = self.meta()?;
        // The data is written (linking comes after it): the file reaches
        // at least its end, so reads of it need not stat the file.
        if !self.geo.data_file {
            self.known_len
                .fetch_max(host.saturating_add(len), Ordering::Relaxed);
        }
        let cs = self.cs();
        if self.geo.extended && (!guest.is_multiple_of(cs) || len < cs) {
            // Subclusters: mark the written ones allocated (not zero).
            let inside = guest % cs;
            let sub = self.geo.unit_bits();
            let (first, last) = (inside >> sub, (inside + len - 1) >> sub);
            let bits = ((1u64 << (last + 1)) - 1) & !((1u64 << first) - 1);
            let hc = host - inside;
            self.rewrite_entries(&mut m, guest - inside, cs, |_, old| {
                Some((hc | OFLAG_COPIED, (old.1 | bits) & !(bits << 32)))
            })?;
            return self.after_change(&mut m);
        }
        let len = len.div_ceil(cs) * cs;
        self.rewrite_entries(&mut m, guest, len, |g, _| {
            Some(self.data_entry(host + (g - guest)))
        })?;
        self.after_change(&mut m)
    }

    /// `Format::zero_clusters`: in v3 the zero flag, where a cluster this
    /// image alone owns stays preallocated unless `unmap` (then, as every
    /// other host cluster, it is freed after the next write-back); in v2
    /// without a backing file, freed clusters; else not done.
    pub(super) fn w_zero(&self, guest: u64, len: u64, unmap: bool) -> Result<bool> {
        if self.header.version < 3 {
            // v2 has no zero flag, but without a backing file a cleared
            // entry reads zeros: free the clusters, as QEMU's qcow2 does
            // whatever MAY_UNMAP says (iotest 122, convert -n to v2)
            if self.backing.load().is_some() {
                return Ok(false);
            }
            let mut m = self.meta()?;
            self.rewrite_entries(&mut m, guest, len, |_, _| Some((0, 0)))?;
            self.after_change(&mut m)?;
            return Ok(true);
        }
        self.zero_raw_data(guest, len)?;
        let mut m = self.meta()?;
        self.rewrite_entries(&mut m, guest, len, |_, old| {
            let keep = if unmap { None } else { self.owned_host(old) };
            Some(self.zero_entry(keep))
        })?;
        self.after_change(&mut m)?;
        Ok(true)
    }

    /// `Format::discard`: clusters freed; they read zeros (v3, or v2
    /// without a backing file) or the backing file (v2), as QEMU.
    pub(super) fn w_discard(&self, guest: u64, len: u64) -> Result<()> {
        // A raw data file must read as the guest does: zeros, as QEMU's
        // zero flag reads.
        if self.header.data_file_raw() {
            return self.w_zero(guest, len, false).map(|_| ());
        }
        let v3 = self.header.version >= 3;
        let backing = self.backing.load().is_some();
        // v2 has no zero flag: clearing an entry would show the backing
        // file's data, so with a backing file discard keeps everything
        // (as QEMU's qcow2 does; iotest 290).
        if !v3 && backing {
            return Ok(());
        }
        let mut m = self.meta()?;
        let cs = self.cs();
        let len = len.div_ceil(cs) * cs;
        self.rewrite_entries(&mut m, guest, len, |_, old| {
            if v3 && (backing || old != (0, 0)) {
                Some(self.zero_entry(None))
            } else if v3 {
                None
            } else {
                Some((0, 0))
            }
        })?;
        self.after_change(&mut m)
    }

    /// With data_file_raw the data file is the guest's disk as raw: zeros
    /// go there too (before the metadata says zero). No lock held.
    fn zero_raw_data(&self, guest: u64, len: u64) -> Result<()> {
        if !self.header.data_file_raw() {
            return Ok(());
        }
        let end = (guest + len).min(self.size.load(Ordering::SeqCst));
        if end > guest {
            self.data.write_zeroes(guest, end - guest)?;
        }
        Ok(())
    }

    /// Writes back when too much is dirty (the caches' eviction).
    pub(super) fn after_change(&self, m: &mut Meta) -> Result<()> {
        if m.l2_dirty.len() > MAX_DIRTY_L2.min(self.l2_cache.capacity())
            || m.dirty_blocks() > m.block_cap / 2
            || m.frees.len() > 4096
        {
            self.flush_locked(m)?;
        }
        Ok(())
    }

    pub(super) fn meta(&self) -> Result<std::sync::MutexGuard<'_, Meta>> {
        if self.ro.load(Ordering::SeqCst) {
            return Err(Error::ReadOnly(
                "the qcow2 image is open read-only (or was marked corrupt)".into(),
            ));
        }
        let w = self
            .meta
            .as_ref()
            .ok_or_else(|| Error::ReadOnly("the qcow2 image is open read-only".into()))?;
        Ok(w.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// `Format::flush`.
    pub(super) fn w_flush(&self) -> Result<()> {
        let Some(w) = self.meta.as_ref() else {
            return Ok(());
        };
        if self.ro.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut m = w.lock().unwrap_or_else(|p| p.into_inner());
        self.flush_locked(&mut m)
    }

    pub(super) fn write_blocks(&self, m: &mut Meta) -> Result<bool> {
        let mut keys: Vec<u64> = m
            .blocks
            .iter()
            .filter(|(_, b)| b.dirty)
            .map(|(k, _)| *k)
            .collect();
        keys.sort_unstable();
        for &k in &keys {
            self.check_overlap_ign(m, k, self.cs(), "a refcount block", OL_REFCOUNT_BLOCK)?;
            self.file.write_at(&m.blocks[&k].data, k)?;
            if let Some(b) = m.blocks.get_mut(&k) {
                b.dirty = false;
            }
        }
        Ok(!keys.is_empty())
    }

    /// Writes everything back, in the order that keeps every crash state
    /// consistent (at worst leaking clusters):
    /// 1. guest data (flush of the data file): before anything points at it;
    /// 2. refcount blocks, then 3. the refcount table, then 4. the header
    ///    naming a moved table: increases before what uses the clusters;
    /// 5. L2 tables, then 6. L1 entries: a table is complete before its
    ///    L1 entry names it;
    /// 7. decreases of the clusters unlinked since the last flush, only now
    ///    that nothing on disk points at them.
    ///
    /// Each step is followed by a flush of the image file.
    pub(super) fn flush_locked(&self, m: &mut Meta) -> Result<()> {
        let r = self.flush_steps(m);
        if r.is_err() {
            // A failed write-back leaves memory ahead of the disk in a way
            // a retry cannot order: stop writing.
            self.ro.store(true, Ordering::SeqCst);
        }
        r
    }

    fn flush_steps(&self, m: &mut Meta) -> Result<()> {
        let cs = self.cs();
        // Lazy refcounts (see `lazy`): the dirty bit first; refcount
        // blocks then go out with the L2 tables, unordered.
        let lazy = self.lazy_refcounts();
        if lazy && self.meta_pending(m) {
            self.mark_dirty()?;
        }
        self.data.flush()?;
        if (!lazy || m.rt_dirty || m.rt_old.is_some()) && self.write_blocks(m)? {
            self.file.flush()?;
        }
        if m.rt_dirty {
            let mut buf = vec![0u8; (m.rt_clusters * cs) as usize];
            for (i, e) in m.rt.iter().enumerate() {
                BigEndian::write_u64(&mut buf[i * 8..], *e);
            }
            self.file.write_at(&buf, m.rt_offset)?;
            self.file.flush()?;
            m.rt_dirty = false;
        }
        if let Some((old_off, old_clusters)) = m.rt_old.take() {
            let mut b = [0u8; 12];
            BigEndian::write_u64(&mut b[..8], m.rt_offset);
            BigEndian::write_u32(&mut b[8..], m.rt_clusters as u32);
            self.file.write_at(&b, 48)?;
            self.file.flush()?;
            for i in 0..old_clusters {
                m.frees.push(old_off / cs + i);
            }
        }
        let tables = self.l2_cache.dirty();
        if !tables.is_empty() {
            for (off, t) in &tables {
                self.check_overlap_ign(m, *off, cs, "an L2 table", OL_ACTIVE_L2)?;
                let mut buf = vec![0u8; cs as usize];
                for (i, e) in t.iter().enumerate() {
                    BigEndian::write_u64(&mut buf[i * 8..], *e);
                }
                self.file.write_at(&buf, *off)?;
            }
            if lazy {
                self.write_blocks(m)?;
            }
            self.file.flush()?;
            for (off, t) in &tables {
                self.l2_cache.mark_clean(*off, t);
            }
            m.l2_dirty.clear();
        }
        if !m.l1_dirty.is_empty() {
            let idx: Vec<u64> = std::mem::take(&mut m.l1_dirty).into_iter().collect();
            for i in idx {
                let mut b = [0u8; 8];
                BigEndian::write_u64(&mut b, self.l1.load().entry(i)?);
                self.file.write_at(&b, self.l1.load().offset() + i * 8)?;
            }
            self.file.flush()?;
        }
        if !m.frees.is_empty() {
            let mut freed = Vec::new();
            for c in std::mem::take(&mut m.frees) {
                if self.add_refcount(m, c, -1)? == 0 {
                    m.hint = m.hint.min(c);
                    if m.free_byte >> self.geo.cluster_bits == c {
                        // Free now: it may become anything else.
                        m.free_byte = 0;
                    }
                    self.l2_cache.invalidate(c * cs);
                    freed.push(c);
                }
            }
            if self.write_blocks(m)? && !lazy {
                self.file.flush()?;
            }
            self.punch_freed(freed);
        }
        if lazy && self.write_blocks(m)? {
            self.file.flush()?;
        }
        Ok(())
    }

    /// Gives clusters that no longer hold anything back to the filesystem
    /// (a hole each run), as QEMU's qcow2 passes discards down with
    /// unmap: a discarded or shrunk-away range frees host space. Called
    /// with the metadata lock held, after the write-back that dropped the
    /// last reference (L2 tables and the L1 table are durable by then, so
    /// nothing on disk points at them), and before anything can allocate
    /// them again. Best effort: a filesystem without holes keeps the
    /// space.
    fn punch_freed(&self, mut freed: Vec<u64>) {
        let cs = self.cs();
        freed.sort_unstable();
        let mut i = 0;
        while i < freed.len() {
            let mut j = i + 1;
            while j < freed.len() && freed[j] == freed[j - 1] + 1 {
                j += 1;
            }
            let _ = self
                .file
                .discard(freed[i] * cs, (freed[j - 1] - freed[i] + 1) * cs);
            i = j;
        }
    }

    /// Loads the refcount table for a read-write open.
    pub(super) fn load_refcount_table(&self) -> Result<Vec<u64>> {
        let h = &self.header;
        let cs = self.cs();
        let bytes = h.refcount_table_clusters as u64 * cs;
        let flen = self.file.len()?;
        if h.refcount_table_offset + bytes > flen {
            return Err(Error::Corrupt(format!(
                "the refcount table ({bytes} bytes at {:#x}) lies outside the file",
                h.refcount_table_offset
            )));
        }
        let mut raw = vec![0u8; bytes as usize];
        self.file.read_at(&mut raw, h.refcount_table_offset)?;
        let rt: Vec<u64> = raw.chunks_exact(8).map(BigEndian::read_u64).collect();
        for (i, e) in rt.iter().enumerate() {
            let off = e & RT_OFFSET_MASK;
            if !off.is_multiple_of(cs) || off >= super::header::MAX_HOST_OFFSET {
                return Err(Error::Corrupt(format!(
                    "refcount table entry {i} ({off:#x}) is not a cluster aligned offset"
                )));
            }
        }
        Ok(rt)
    }

    /// Changes the virtual size (the engine holds every range lock).
    /// Growing zeroes the tail of a partial last cluster and moves the L1
    /// table when it is too small; over a longer backing file the grown
    /// clusters get the zero flag (v3), and a partial last cluster becomes
    /// this image's own (its bytes below the old end, read through `old`,
    /// then zeros), so that no byte of the backing file shows past the old
    /// end. Shrinking frees what lies past the new end once the header has
    /// the new size.
    pub(super) fn w_truncate(
        &self,
        size: u64,
        backing_len: Option<u64>,
        old_bytes: OldReader,
    ) -> Result<()> {
        let old = self.size.load(Ordering::SeqCst);
        let cs = self.cs();
        let hides = size > old && backing_len.is_some_and(|b| b > old);
        if hides && self.header.version < 3 {
            return Err(Error::Unsupported(
                "growing a v2 (compat=0.10) qcow2 image over a longer backing file: v2 has no zero clusters to hide it (QEMU refuses too)".into(),
            ));
        }
        // Read before the metadata lock: the read maps through it.
        let head = if hides && !old.is_multiple_of(cs) {
            if self.geo.data_file {
                return Err(Error::Unsupported(
                    "growing a qcow2 image with an external data file over a longer backing file from a size that is not a whole number of clusters".into(),
                ));
            }
            let used = (old % cs) as usize;
            let mut buf = vec![0u8; cs as usize];
            old_bytes(&IoVec::from_mut(&mut buf[..used]), old - used as u64)?;
            Some(buf)
        } else {
            None
        };
        let mut m = self.meta()?;
        if size == old {
            return Ok(());
        }
        let need = super::header::l1_entries_for(size, self.geo.cluster_bits, self.geo.extended);
        if need * 8 > super::header::MAX_L1_BYTES {
            return Err(Error::TooLarge(format!(
                "{size} bytes need an L1 table of {} bytes (the limit is 32 MiB)",
                need * 8
            )));
        }
        if size > old {
            if head.is_some() && self.owns_last_cluster(old)? {
                // Already wholly this image's (allocated, refcount 1):
                // zeroed past the old end in place, as QEMU does.
                self.zero_tail(&mut m, old)?;
            } else if let Some(buf) = head {
                // A fresh cluster, written before the entry that points to
                // it (the old one, if any, is freed after).
                let c = self.alloc_run(&mut m, 1)? * cs;
                self.check_overlap(&m, c, cs, "guest data")?;
                self.data.write_at(&buf, c)?;
                self.rewrite_entries(&mut m, old - old % cs, cs, |_, _| Some(self.data_entry(c)))?;
            } else {
                self.zero_tail(&mut m, old)?;
            }
            if need > self.l1.load().entries() {
                self.grow_l1(&mut m, need)?;
            }
            self.flush_locked(&mut m)?;
            self.write_size(size)?;
            self.size.store(size, Ordering::SeqCst);
            if hides {
                let from = old.div_ceil(cs) * cs;
                let end = backing_len.unwrap_or(0).min(size).div_ceil(cs) * cs;
                let end = end.min(size.div_ceil(cs) * cs);
                if end > from {
                    self.rewrite_entries(&mut m, from, end - from, |_, _| {
                        Some(self.zero_entry(None))
                    })?;
                }
                self.flush_locked(&mut m)?;
            }
            return Ok(());
        }
        // Shrink: the new size first, then drop what lies past it.
        self.flush_locked(&mut m)?;
        self.write_size(size)?;
        self.size.store(size, Ordering::SeqCst);
        let from = size.div_ceil(cs) * cs;
        let to = old.div_ceil(cs) * cs;
        if to > from {
            self.rewrite_entries(&mut m, from, to - from, |_, _| Some((0, 0)))?;
        }
        // L2 tables wholly past the end.
        let cov = self.geo.l2_coverage();
        let l1 = self.l1.load_full();
        for i in size.div_ceil(cov)..old.div_ceil(cov).min(l1.entries()) {
            let e = l1.entry(i)?;
            if e & OFFSET_MASK != 0 {
                l1.set(i, 0)?;
                m.l1_dirty.insert(i);
                m.frees.push((e & OFFSET_MASK) >> self.geo.cluster_bits);
            }
        }
        self.flush_locked(&mut m)
    }

    fn write_size(&self, size: u64) -> Result<()> {
        let mut b = [0u8; 8];
        BigEndian::write_u64(&mut b, size);
        self.file.write_at(&b, 24)?;
        self.file.flush()
    }

    /// The entry and kind of the unit holding guest byte `pos`, or `None`
    /// when its L2 table is not allocated.
    fn unit_at(&self, pos: u64) -> Result<Option<(u64, Kind)>> {
        let (l1i, _) = self.geo.indices(pos);
        let toff = self.l1.load().entry(l1i)? & OFFSET_MASK;
        if toff == 0 {
            return Ok(None);
        }
        Ok(Some(self.unit(&self.l2_table(toff, l1i)?, pos)))
    }

    /// Whether the cluster holding byte `old - 1` is a plain allocated
    /// cluster with refcount 1 (COPIED): every byte of it is this image's
    /// own. With extended L2 some subclusters may still read the backing
    /// file, so those images always take a fresh cluster.
    fn owns_last_cluster(&self, old: u64) -> Result<bool> {
        if self.geo.extended || old == 0 {
            return Ok(false);
        }
        Ok(matches!(self.unit_at(old - 1)?, Some((e, Kind::Normal(_))) if e & OFLAG_COPIED != 0))
    }

    /// Zeroes the bytes of the last cluster past the old size, so a grown
    /// image never shows what a reused cluster held there.
    fn zero_tail(&self, m: &mut Meta, old: u64) -> Result<()> {
        let cs = self.cs();
        let used = old % cs;
        if used == 0 {
            return Ok(());
        }
        let Some((entry, kind)) = self.unit_at(old - 1)? else {
            return Ok(());
        };
        match kind {
            // Zero bytes, not a hole: QEMU's qcow2 writes them too (its
            // zero write over part of a cluster falls back to a buffer of
            // zeros), so the cluster stays data (iotest 292's map).
            Kind::Normal(h) if entry & OFLAG_COPIED != 0 => {
                crate::io::write_zeroes_by_writing(&*self.data, h + used, cs - used)
            }
            Kind::Normal(_) | Kind::Compressed { .. } => {
                // Shared or compressed: rewriting it in place is not
                // allowed; copy the used part to a fresh cluster.
                let mut buf = vec![0u8; cs as usize];
                let base = old - used;
                match kind {
                    Kind::Normal(h) => self.data.read_at(&mut buf[..used as usize], h)?,
                    Kind::Compressed { host, csize } => self.read_compressed(
                        host,
                        csize,
                        0,
                        &crate::io::IoVec::from_mut(&mut buf[..used as usize]),
                    )?,
                    _ => {}
                }
                let c = self.alloc_run(m, 1)? * cs;
                self.check_overlap(m, c, cs, "guest data")?;
                self.data.write_at(&buf, c)?;
                self.rewrite_entries(m, base, cs, |_, _| Some(self.data_entry(c)))
            }
            _ => Ok(()),
        }
    }

    /// Moves the L1 table to a new place with `need` entries: written
    /// there, then (after a flush) named by the header, then the old
    /// clusters freed.
    fn grow_l1(&self, m: &mut Meta, need: u64) -> Result<()> {
        let cs = self.cs();
        self.flush_locked(m)?;
        let old = self.l1.load_full();
        let clusters = (need * 8).div_ceil(cs);
        let c = self.alloc_run(m, clusters)? * cs;
        self.check_overlap(m, c, clusters * cs, "a new L1 table")?;
        let mut buf = vec![0u8; (clusters * cs) as usize];
        for i in 0..old.entries() {
            BigEndian::write_u64(&mut buf[(i * 8) as usize..], old.entry(i)?);
        }
        self.file.write_at(&buf, c)?;
        // The new table and its refcounts durable before the header.
        self.flush_locked(m)?;
        self.file.flush()?;
        let mut h = [0u8; 12];
        BigEndian::write_u32(&mut h[..4], need as u32);
        BigEndian::write_u64(&mut h[4..], c);
        self.file.write_at(&h, 36)?;
        self.file.flush()?;
        let flen = self.file.len()?;
        self.l1.store(Arc::new(super::l1::L1Table::new(
            self.file.clone(),
            c,
            need,
            flen,
        )));
        let old_clusters = (old.entries() * 8).div_ceil(cs);
        if old.entries() > 0 {
            for i in 0..old_clusters {
                m.frees.push(old.offset() / cs + i);
            }
        }
        Ok(())
    }
}

impl Qcow2 {
    /// Repairs the refcounts of an image found dirty (lazy refcounts, not
    /// closed cleanly) on a read-write open, as QEMU does before using it:
    /// counts every reference (header, tables, every L1 table's L2 tables
    /// and clusters), writes the counts that differ, flushes, and only then
    /// clears the dirty bit, so a cut during the repair leaves it dirty.
    pub(super) fn rebuild_refcounts(&self) -> Result<()> {
        let mut guard = self.meta()?;
        let m = &mut *guard;
        let cs = self.cs();
        let cb = self.geo.cluster_bits;
        let n = self.file.len()?.div_ceil(cs);
        let mut counts = vec![0u32; n as usize];
        let mut add = |off: u64, len: u64, what: &str| -> Result<()> {
            if len == 0 {
                return Ok(());
            }
            let (first, last) = (off >> cb, (off + len - 1) >> cb);
            if last >= n {
                return Err(Error::Corrupt(format!(
                    "{what} at {off:#x} lies past the end of the image file"
                )));
            }
            for c in first..=last {
                counts[c as usize] = counts[c as usize].saturating_add(1);
            }
            Ok(())
        };
        add(0, cs, "the header")?;
        add(m.rt_offset, m.rt_clusters * cs, "the refcount table")?;
        for e in &m.rt {
            let b = e & RT_OFFSET_MASK;
            if b != 0 {
                add(b, cs, "a refcount block")?;
            }
        }
        let mut l1s = vec![(self.l1.load().offset(), self.l1.load().entries())];
        if self.header.nb_snapshots > 0 {
            let mut pos = 0u64;
            let mut fixed = [0u8; 40];
            for _ in 0..self.header.nb_snapshots {
                self.file
                    .read_at(&mut fixed, self.header.snapshots_offset + pos)?;
                pos += super::snapshot::entry_len(&fixed)?;
            }
            add(self.header.snapshots_offset, pos, "the snapshot table")?;
            for s in self.snapshots.load().iter() {
                l1s.push((s.l1_table_offset, s.l1_size as u64));
            }
        }
        self.bitmap_refs(&mut add)?;
        let mut raw = vec![0u8; cs as usize];
        for (l1_off, l1_len) in l1s {
            add(l1_off, l1_len * 8, "an L1 table")?;
            let mut l1 = vec![0u8; (l1_len * 8) as usize];
            self.file.read_at(&mut l1, l1_off)?;
            for (i, e) in l1.chunks_exact(8).map(BigEndian::read_u64).enumerate() {
                let l2 = e & OFFSET_MASK;
                if l2 == 0 {
                    continue;
                }
                if !l2.is_multiple_of(cs) {
                    return Err(Error::Corrupt(format!(
                        "L2 table offset {l2:#x} (L1 index {i}) is not cluster aligned"
                    )));
                }
                add(l2, cs, "an L2 table")?;
                self.file.read_at(&mut raw, l2)?;
                let words = self.geo.entry_words() * 8;
                for w in raw.chunks_exact(words).map(BigEndian::read_u64) {
                    if self.geo.data_file {
                        continue;
                    }
                    if w & OFLAG_COMPRESSED != 0 {
                        let (host, csize) = self.geo.compressed(w);
                        add(host, csize, "a compressed cluster")?;
                    } else if w & OFFSET_MASK != 0 {
                        add(w & OFFSET_MASK, cs, "a data cluster")?;
                    }
                }
            }
        }
        // New refcount blocks go past everything counted.
        m.hint = n;
        for c in 0..n {
            let want = counts[c as usize] as u64;
            if self.refcount(m, c)? != want {
                self.set_refcount(m, c, want, 0)?;
            }
        }
        self.flush_locked(m)?;
        m.hint = 0;
        self.file.flush()?;
        self.clear_dirty()
    }
}

/// Hooks for `check -r` (`repair.rs`): it finds what to change, these
/// change it through the write-back machinery, so the caches stay right.
impl Qcow2 {
    /// The metadata lock, for a repair that holds it throughout.
    pub(super) fn repair_meta(&self) -> Result<std::sync::MutexGuard<'_, Meta>> {
        self.meta()
    }

    /// Where the refcount table is now (offset, clusters).
    pub(super) fn rt_location(&self, m: &Meta) -> (u64, u64) {
        (m.rt_offset, m.rt_clusters)
    }

    pub(super) fn repair_refcount(&self, m: &mut Meta, c: u64, value: u64) -> Result<()> {
        self.set_refcount(m, c, value, 0)
    }

    pub(super) fn repair_l1_entry(&self, m: &mut Meta, i: u64, value: u64) -> Result<()> {
        self.l1.load().set(i, value)?;
        m.l1_dirty.insert(i);
        Ok(())
    }

    pub(super) fn repair_l2_table(&self, m: &mut Meta, off: u64, table: Vec<u64>) {
        self.l2_cache.put(off, table.into(), true);
        m.l2_dirty.insert(off);
    }

    /// A refcount table the repair wrote (and named in the header) replaces
    /// the one in memory; cached blocks belong to the old structure.
    pub(super) fn repair_new_table(&self, m: &mut Meta, rt: Vec<u64>, off: u64, clusters: u64) {
        m.rt = rt;
        m.rt_offset = off;
        m.rt_clusters = clusters;
        m.rt_dirty = false;
        m.rt_old = None;
        m.blocks.clear();
        m.hint = 0;
    }

    /// After refcounts dropped: the allocator may look below its hint again.
    pub(super) fn repair_reset_hint(&self, m: &mut Meta) {
        m.hint = 0;
    }
}

/// Hooks for `amend` (`amend.rs`).
impl Qcow2 {
    /// Rewrites the L2 entries of whole clusters `[guest, guest + len)`
    /// (see `rewrite_entries`) under the metadata lock.
    pub(super) fn amend_rewrite(
        &self,
        guest: u64,
        len: u64,
        f: impl FnMut(u64, Entry) -> Option<Entry>,
    ) -> Result<()> {
        let mut m = self.meta()?;
        self.rewrite_entries(&mut m, guest, len, f)?;
        self.after_change(&mut m)
    }

    /// A fresh host cluster (refcount 1), for data the caller writes
    /// before linking it.
    pub(super) fn amend_alloc(&self) -> Result<u64> {
        let mut m = self.meta()?;
        Ok(self.alloc_run(&mut m, 1)? * self.cs())
    }

    /// Stops writing through this handle (its header in memory is stale
    /// after an amend changed the image's shape).
    pub(super) fn amend_done(&self) {
        self.ro.store(true, Ordering::SeqCst);
    }
}
