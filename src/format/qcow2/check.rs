//! Consistency check, as `qemu-img check` does it on qcow2:
//! rebuild the refcount every host cluster should have from all references
//! (header, L1/L2 tables, data and compressed clusters, refcount table and
//! blocks, snapshot table and snapshot L1/L2 tables, bitmap directory and
//! tables, crypto header), compare with the stored refcounts, then check
//! the OFLAG_COPIED flags of the active tables. Counts, messages (stderr
//! lines) and the end offset are QEMU 10's. Repair (`-r`) runs these
//! passes with a `Fixer` (`repair.rs`).
//!
//! Memory: one 16-bit counter per host cluster up to the file's end (QEMU
//! keeps one per cluster too), capped at `MAX_CLUSTERS`; references past
//! the end grow the array only up to that cap. Tables are read one at a
//! time, stored refcount blocks one at a time, so time is linear in the
//! metadata.

use super::header::MAX_L1_BYTES;
use super::l2::{OFFSET_MASK, OFLAG_COMPRESSED, OFLAG_COPIED, OFLAG_ZERO};
use super::Qcow2;
use crate::error::{Error, Result};
use crate::format::{CheckReport, Repair};
use byteorder::{BigEndian, ByteOrder};
use std::collections::HashMap;

/// Most host clusters a check counts (a 16 TiB file at 64 KiB clusters).
pub const MAX_CLUSTERS: u64 = 1 << 28;
const REFT_OFFSET_MASK: u64 = !0x1ff;
const REFT_RESERVED_MASK: u64 = 0x1ff;
const L1E_RESERVED_MASK: u64 = 0x7f00_0000_0000_01ff;
const L2E_STD_RESERVED_MASK: u64 = 0x3f00_0000_0000_01fe;
/// Bitmap table entries: offset bits.
const BME_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;

pub(super) struct Ctx<'a> {
    q: &'a Qcow2,
    cb: u32,
    pub(super) cs: u64,
    file_len: u64,
    /// Expected refcounts, one per host cluster.
    pub(super) refs: Vec<u16>,
    /// Saturation value (the image's refcount maximum, at most 65535).
    max: u16,
    pub(super) r: CheckReport,
    fragmented: u64,
    compressed: u64,
    allocated: u64,
    /// How many L1 entries point at the L2 table being walked: it is walked
    /// once and its findings count that many times (a hostile image may
    /// point millions of entries at one table).
    mult: u64,
    /// Messages of the L2 table being walked, replayed for its other L1
    /// entries.
    l2_msgs: Vec<String>,
    /// Messages beyond `MAX_MESSAGES`, counted only.
    dropped: u64,
    /// The refcount structures are beyond patching (QEMU's `rebuild`).
    pub(super) rebuild: bool,
    /// Repairing errors (`-r all`): misaligned preallocated clusters are
    /// queued in `zero_fixes` (L2 table, entry index) instead of reported.
    fix_errors: bool,
    pub(super) zero_fixes: Vec<(u64, u64)>,
}

/// How often `v` occurs in the sorted `sorted`.
fn occurrences(sorted: &[u64], v: u64) -> u64 {
    (sorted.partition_point(|&x| x <= v) - sorted.partition_point(|&x| x < v)) as u64
}

/// Messages kept (the counts stay exact beyond it).
pub const MAX_MESSAGES: usize = 100_000;

impl Ctx<'_> {
    pub(super) fn msg(&mut self, m: String) {
        if self.r.messages.len() < MAX_MESSAGES {
            self.r.messages.push(m);
        } else {
            self.dropped += 1;
        }
    }

    /// Messages again (for a table listed again), cheaply once the kept
    /// messages are full.
    fn replay(&mut self, msgs: &[String]) {
        let room = MAX_MESSAGES.saturating_sub(self.r.messages.len());
        let n = room.min(msgs.len());
        self.r.messages.extend_from_slice(&msgs[..n]);
        self.dropped += (msgs.len() - n) as u64;
    }

    /// A finding about one L2 entry: counted once per L1 entry pointing at
    /// the table.
    fn l2_finding(&mut self, m: String) {
        self.r.corruptions += self.mult;
        if self.mult > 1 && self.l2_msgs.len() < MAX_MESSAGES {
            self.l2_msgs.push(m.clone());
        }
        self.msg(m);
    }

    /// Counts one reference to every cluster of `[off, off + len)`.
    fn inc(&mut self, off: u64, len: u64) {
        if len == 0 {
            return;
        }
        // As QEMU 10: a reference a cluster or more past the end of the
        // file is a corruption and is not counted (so the array never
        // grows past the file).
        let end = off.saturating_add(len);
        if end > self.file_len && end - self.file_len >= self.cs {
            let m = format!(
                "ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset 0x{off:x} size 0x{len:x}"
            );
            // Inside an L2 walk this repeats for every L1 entry of the
            // table (outside one, `mult` is 1).
            self.l2_finding(m);
            return;
        }
        let first = off >> self.cb;
        let last = (off.saturating_add(len - 1)) >> self.cb;
        for k in first..=last {
            if k >= self.refs.len() as u64 {
                if k >= MAX_CLUSTERS {
                    self.r.check_errors += 1;
                    self.msg(format!(
                        "ERROR: reference to cluster {k} (offset {:#x}) lies too far past the end of the image to check",
                        k << self.cb
                    ));
                    return;
                }
                self.refs.resize(k as usize + 1, 0);
            }
            let v = &mut self.refs[k as usize];
            let add = self.mult.min((self.max - *v) as u64);
            *v += add as u16;
            for _ in 0..(self.mult - add).min(MAX_MESSAGES as u64) {
                self.r.corruptions += 1;
                self.msg(format!(
                    "ERROR: overflow cluster offset=0x{:x}",
                    k << self.cb
                ));
                self.msg("Use qemu-img amend to increase the refcount entry width or qemu-img convert to create a clean copy if the image cannot be opened for writing".into());
            }
            self.r.corruptions += (self.mult - add).saturating_sub(MAX_MESSAGES as u64);
        }
    }

    fn read(&self, off: u64, len: u64) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len as usize];
        self.q.file.read_at(&mut buf, off)?;
        Ok(buf)
    }

    fn l2_bytes(&self) -> u64 {
        self.cs
    }

    fn entry_words(&self) -> u64 {
        if self.q.geo.extended {
            2
        } else {
            1
        }
    }

    /// QEMU's check_refcounts_l1 and check_refcounts_l2.
    fn l1(&mut self, l1_off: u64, l1_size: u64, active: bool) -> Result<()> {
        let bytes = l1_size * 8;
        self.inc(l1_off, bytes);
        if bytes > MAX_L1_BYTES {
            self.r.check_errors += 1;
            self.msg(format!(
                "ERROR: L1 table of {l1_size} entries is too large to check"
            ));
            return Ok(());
        }
        // In chunks: an L1 table is at most 32 MiB. A first pass counts the
        // L1 entries of each L2 table.
        const CHUNK: u64 = 4096;
        let mut offsets = Vec::new();
        let mut i = 0;
        while i < l1_size {
            let n = CHUNK.min(l1_size - i);
            let buf = self.read(l1_off + i * 8, n * 8)?;
            for w in buf.chunks_exact(8) {
                let e = BigEndian::read_u64(w);
                if e != 0 {
                    offsets.push(e & OFFSET_MASK);
                }
            }
            i += n;
        }
        offsets.sort_unstable();
        // Findings of tables walked already, replayed for later entries.
        let mut seen: HashMap<u64, Vec<String>> = HashMap::new();
        let mut i = 0;
        while i < l1_size {
            let n = CHUNK.min(l1_size - i);
            let buf = self.read(l1_off + i * 8, n * 8)?;
            for j in 0..n {
                let e = BigEndian::read_u64(&buf[(j * 8) as usize..]);
                // As QEMU: any non-zero entry is followed, even one whose
                // offset bits are 0.
                if e == 0 {
                    continue;
                }
                if e & L1E_RESERVED_MASK != 0 {
                    self.r.corruptions += 1;
                    self.msg(format!(
                        "ERROR found L1 entry with reserved bits set: {e:x}"
                    ));
                }
                let l2 = e & OFFSET_MASK;
                self.inc(l2, self.cs);
                if l2 & (self.cs - 1) != 0 {
                    self.r.corruptions += 1;
                    self.msg(format!(
                        "ERROR l2_offset={l2:x}: Table is not cluster aligned; L1 entry corrupted"
                    ));
                }
                if let Some(msgs) = seen.get(&l2) {
                    self.replay(msgs);
                    continue;
                }
                self.mult = occurrences(&offsets, l2);
                self.l2_msgs.clear();
                let r = self.l2(l2, active);
                let mult = std::mem::replace(&mut self.mult, 1);
                r?;
                // Only a table listed again needs its findings kept.
                if mult > 1 {
                    seen.insert(l2, std::mem::take(&mut self.l2_msgs));
                }
            }
            i += n;
        }
        Ok(())
    }

    fn l2(&mut self, l2_off: u64, active: bool) -> Result<()> {
        let t = self.read(l2_off, self.l2_bytes())?;
        let words = self.entry_words() as usize;
        let geo = self.q.geo;
        let data_file = geo.data_file;
        let mut next_contiguous = 0u64;
        for (i, e) in t.chunks_exact(8 * words).enumerate() {
            let entry = BigEndian::read_u64(e);
            let bitmap = if words == 2 {
                BigEndian::read_u64(&e[8..])
            } else {
                0
            };
            let off = entry & OFFSET_MASK;
            if entry & OFLAG_COMPRESSED == 0 && entry & L2E_STD_RESERVED_MASK != 0 {
                self.l2_finding(format!(
                    "ERROR found l2 entry with reserved bits set: {entry:x}"
                ));
            }
            if entry & OFLAG_COMPRESSED != 0 {
                let (coffset, csize) = geo.compressed(entry);
                if entry & OFLAG_COPIED != 0 {
                    self.l2_finding(format!(
                        "ERROR: coffset=0x{coffset:x}: copied flag must never be set for compressed clusters"
                    ));
                }
                let entry = entry & !OFLAG_COPIED;
                if data_file {
                    self.l2_finding(format!(
                        "ERROR compressed cluster {i} with data file, entry=0x{entry:x}"
                    ));
                    continue;
                }
                if bitmap != 0 {
                    self.l2_finding(format!(
                        "ERROR compressed cluster {i} with non-zero subcluster allocation bitmap, entry=0x{entry:x}"
                    ));
                    continue;
                }
                self.inc(coffset, csize);
                if active {
                    self.allocated += self.mult;
                    self.compressed += self.mult;
                    self.fragmented += self.mult;
                }
                continue;
            }
            let zero = entry & OFLAG_ZERO != 0 && !geo.extended;
            let allocated = off != 0 || (data_file && entry & OFLAG_COPIED != 0);
            if !allocated {
                // Plain zero or unallocated.
                if geo.extended && bitmap & 0xffff_ffff != 0 {
                    self.l2_finding(
                        "ERROR: Unallocated cluster has non-zero subcluster allocation map".into(),
                    );
                }
                continue;
            }
            if (bitmap >> 32) & bitmap != 0 {
                self.l2_finding(format!(
                    "ERROR offset={off:x}: Allocated cluster has corrupted subcluster allocation bitmap"
                ));
            }
            if off & (self.cs - 1) != 0 {
                let has_data = if geo.extended {
                    bitmap & 0xffff_ffff != 0
                } else {
                    !zero
                };
                // As QEMU with -r all: a preallocated cluster becomes a
                // plain zero cluster (written after the count) and is not
                // counted. A table listed by several L1 entries is only
                // reported.
                if !has_data && self.fix_errors && self.mult == 1 {
                    self.msg(format!(
                        "Repairing offset={off:x}: Preallocated cluster is not properly aligned; L2 entry corrupted."
                    ));
                    self.r.corruptions_fixed += 1;
                    self.zero_fixes.push((l2_off, i as u64));
                    continue;
                }
                let what = if has_data { "Data" } else { "Preallocated" };
                self.l2_finding(format!(
                    "ERROR offset={off:x}: {what} cluster is not properly aligned; L2 entry corrupted."
                ));
            }
            if active {
                self.allocated += self.mult;
                if next_contiguous != 0 && off != next_contiguous {
                    self.fragmented += self.mult;
                }
                next_contiguous = off + self.cs;
            }
            if !data_file {
                self.inc(off, self.cs);
            }
        }
        Ok(())
    }

    /// Bitmap directory, bitmap tables and their clusters.
    fn bitmaps(&mut self) -> Result<()> {
        let Some(b) = self.q.header.bitmaps else {
            return Ok(());
        };
        self.inc(b.dir_offset, b.dir_size);
        let dir = self.read(b.dir_offset, b.dir_size)?;
        let mut pos = 0usize;
        for _ in 0..b.nb_bitmaps {
            if pos + 24 > dir.len() {
                self.r.check_errors += 1;
                self.msg("ERROR: the bitmap directory is truncated".into());
                return Ok(());
            }
            let e = &dir[pos..];
            let table_off = BigEndian::read_u64(e);
            let table_size = BigEndian::read_u32(&e[8..]) as u64;
            let name_size = BigEndian::read_u16(&e[18..]) as usize;
            let extra = BigEndian::read_u32(&e[20..]) as usize;
            pos += (24 + extra + name_size).next_multiple_of(8);
            self.inc(table_off, table_size * 8);
            // A bitmap table covers at most the virtual disk at one bit per
            // 512 bytes; larger tables are refused as unreadable.
            if table_size * 8 > MAX_L1_BYTES {
                self.r.check_errors += 1;
                self.msg(format!(
                    "ERROR: bitmap table of {table_size} entries is too large to check"
                ));
                continue;
            }
            let t = self.read(table_off, table_size * 8)?;
            for w in t.chunks_exact(8) {
                let off = BigEndian::read_u64(w) & BME_OFFSET_MASK;
                if off != 0 {
                    self.inc(off, self.cs);
                }
            }
        }
        Ok(())
    }
}

/// Reads stored refcounts cluster by cluster, one block at a time.
pub(super) struct Stored<'a> {
    q: &'a Qcow2,
    table: Vec<u64>,
    cur: Option<(u64, Vec<u8>)>,
}

impl<'a> Stored<'a> {
    /// The refcount table at `loc` (offset, clusters), read now.
    pub(super) fn load(q: &'a Qcow2, loc: (u64, u64)) -> Result<Stored<'a>> {
        let bytes = loc.1 << q.header.cluster_bits;
        let mut raw = vec![0u8; bytes as usize];
        q.file.read_at(&mut raw, loc.0)?;
        Ok(Stored {
            q,
            table: raw.chunks_exact(8).map(BigEndian::read_u64).collect(),
            cur: None,
        })
    }

    /// The table's raw entries.
    pub(super) fn table_entries(&self) -> Vec<u64> {
        self.table.clone()
    }

    pub(super) fn get(&mut self, cluster: u64) -> Result<u64> {
        let h = &self.q.header;
        let cb = h.cluster_bits;
        let order = h.refcount_order;
        let (ti, bi) = super::refcount::position(cluster, cb, order);
        let Some(&e) = self.table.get(ti as usize) else {
            return Ok(0);
        };
        let off = e & REFT_OFFSET_MASK;
        if off == 0 {
            return Ok(0);
        }
        if off & ((1 << cb) - 1) != 0 {
            return Err(Error::Corrupt(format!(
                "refcount block offset {off:#x} is not cluster aligned"
            )));
        }
        if self.cur.as_ref().is_none_or(|c| c.0 != off) {
            let mut b = vec![0u8; 1 << cb];
            self.q.file.read_at(&mut b, off)?;
            self.cur = Some((off, b));
        }
        let b = &self.cur.as_ref().expect("just loaded").1;
        super::refcount::entry(b, bi, order)
    }
}

/// What a repairing check changes, through the write side (`repair.rs`).
pub(super) trait Fixer {
    fn set_refcount(&mut self, cluster: u64, value: u64) -> Result<()>;
    fn set_l1_entry(&mut self, index: u64, value: u64) -> Result<()>;
    fn put_l2_table(&mut self, offset: u64, table: Vec<u64>) -> Result<()>;
    /// Grows the image file to `len` bytes (a refcount block past its end).
    fn grow_file(&mut self, len: u64) -> Result<()>;
}

/// Runs the check; a repair (`-r`) goes through `repair::run`.
pub fn run(q: &Qcow2, repair: Repair, progress: &mut dyn FnMut(u64, u64)) -> Result<CheckReport> {
    if repair != Repair::None {
        return super::repair::run(q, repair, progress);
    }
    // Where the table is on disk now (a snapshot operation moves it).
    let loc = q.refcount_table_on_disk();
    let mut c = count(q, Repair::None, loc, None, progress)?;
    let mut stored = Stored::load(q, loc)?;
    let highest = compare(&mut c, Repair::None, &mut stored, None)?;
    progress(3, 4);
    copied_flags(&mut c, &mut stored, Repair::None, None)?;
    progress(4, 4);
    Ok(finish(c, highest))
}

/// The report of a finished pass.
pub(super) fn finish(c: Ctx, highest: Option<u64>) -> CheckReport {
    let cs = c.cs;
    let mut r = c.r;
    if c.dropped > 0 {
        r.messages
            .push(format!("({} more messages not shown)", c.dropped));
    }
    r.total_clusters = Some(
        c.q.size
            .load(std::sync::atomic::Ordering::Relaxed)
            .div_ceil(cs),
    );
    r.allocated_clusters = Some(c.allocated);
    r.fragmented_clusters = Some(c.fragmented);
    r.compressed_clusters = Some(c.compressed);
    r.image_end_offset = Some(highest.map_or(0, |h| (h + 1) * cs));
    r
}

/// QEMU's calculate_refcounts: the refcount every cluster should have,
/// from every reference, with the refcount table at `loc`; the checks of
/// the refcount table's entries (with `fix`, a block past the end of the
/// file grows the file).
pub(super) fn count<'a>(
    q: &'a Qcow2,
    fix: Repair,
    loc: (u64, u64),
    mut fixer: Option<&mut dyn Fixer>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Ctx<'a>> {
    let h = &q.header;
    let cb = h.cluster_bits;
    let cs = 1u64 << cb;
    let flen = q.file.len()?;
    let nb_clusters = flen.div_ceil(cs);
    if nb_clusters > MAX_CLUSTERS {
        return Err(Error::TooLarge(format!(
            "the image file has {nb_clusters} clusters; checking more than {MAX_CLUSTERS} is not supported"
        )));
    }
    let max = ((1u128 << (1u32 << h.refcount_order)) - 1).min(u16::MAX as u128) as u16;
    let mut c = Ctx {
        q,
        cb,
        cs,
        file_len: flen,
        refs: vec![0; nb_clusters as usize],
        max,
        r: CheckReport::default(),
        fragmented: 0,
        compressed: 0,
        allocated: 0,
        mult: 1,
        l2_msgs: Vec::new(),
        dropped: 0,
        rebuild: false,
        fix_errors: fix == Repair::All && fixer.is_some(),
        zero_fixes: Vec::new(),
    };
    let snapshots = q.snapshots.load();
    progress(0, 4);
    // Header.
    c.inc(0, cs);
    // The active L1 table (and its L2 tables and data).
    let l1 = q.l1.load();
    c.l1(l1.offset(), l1.entries(), true)?;
    progress(1, 4);
    // Snapshots.
    if q.geo.data_file && !snapshots.is_empty() {
        c.r.corruptions += 1;
        c.msg(format!(
            "ERROR {} snapshots in image with data file",
            snapshots.len()
        ));
    }
    let mut snap_bytes = 0u64;
    for s in snapshots.iter() {
        snap_bytes += ((40 + s.extra.len() + s.id.len() + s.name.len()) as u64).next_multiple_of(8);
        if s.l1_table_offset & (cs - 1) != 0 {
            c.r.corruptions += 1;
            c.msg(format!(
                "ERROR snapshot {} ({}) l1_offset={:#x}: L1 table is not cluster aligned; snapshot table entry corrupted",
                s.id, s.name, s.l1_table_offset
            ));
            continue;
        }
        if s.l1_size as u64 * 8 > MAX_L1_BYTES {
            c.r.corruptions += 1;
            c.msg(format!(
                "ERROR snapshot {} ({}) l1_size={:#x}: L1 table is too large; snapshot table entry corrupted",
                s.id, s.name, s.l1_size
            ));
            continue;
        }
        c.l1(s.l1_table_offset, s.l1_size as u64, false)?;
    }
    if !snapshots.is_empty() {
        c.inc(q.snapshot_table_offset(), snap_bytes);
    }
    // Refcount table.
    let rt_entries = loc.1 << (cb - 3);
    c.inc(loc.0, rt_entries * 8);
    // Crypto header (encrypted images do not open, but the check counts it).
    if let Some((off, len)) = h.crypto_ext {
        c.inc(off, len);
    }
    c.bitmaps()?;
    progress(2, 4);
    // Refcount blocks (QEMU's check_refblocks).
    let rt_bytes = c.read(loc.0, rt_entries * 8)?;
    let table: Vec<u64> = rt_bytes.chunks_exact(8).map(BigEndian::read_u64).collect();
    for (i, &e) in table.iter().enumerate() {
        let off = e & REFT_OFFSET_MASK;
        let cluster = off >> cb;
        if e & REFT_RESERVED_MASK != 0 {
            c.r.corruptions += 1;
            c.msg(format!(
                "ERROR refcount table entry {i} has reserved bits set"
            ));
            c.rebuild = true;
            continue;
        }
        if off & (cs - 1) != 0 {
            c.r.corruptions += 1;
            c.msg(format!(
                "ERROR refcount block {i} is not cluster aligned; refcount table entry corrupted"
            ));
            c.rebuild = true;
            continue;
        }
        if cluster >= c.refs.len() as u64 {
            c.r.corruptions += 1;
            let repairing = fix == Repair::All && fixer.is_some();
            let word = if repairing { "Repairing" } else { "ERROR" };
            c.msg(format!("{word} refcount block {i} is outside image"));
            if let (true, Some(f)) = (repairing, fixer.as_deref_mut()) {
                // As QEMU: the file grows to hold the block (zeros), the
                // block is counted, and the zeros it holds make the
                // comparison ask for a rebuild.
                let end = off.checked_add(cs).filter(|&e| e >> cb <= MAX_CLUSTERS);
                match end.map(|e| f.grow_file(e).map(|()| e)) {
                    Some(Ok(e)) => {
                        c.file_len = e;
                        c.refs.resize((e >> cb) as usize, 0);
                        c.r.corruptions -= 1;
                        c.r.corruptions_fixed += 1;
                        c.inc(off, cs);
                    }
                    Some(Err(err)) => {
                        c.rebuild = true;
                        c.msg(format!("ERROR could not resize image: {err}"));
                    }
                    None => {
                        c.rebuild = true;
                        c.msg("ERROR could not resize image: Invalid argument".into());
                    }
                }
            }
            continue;
        }
        if off != 0 {
            c.inc(off, cs);
            let n = c.refs[cluster as usize];
            if n != 1 {
                c.r.corruptions += 1;
                c.msg(format!("ERROR refcount block {i} refcount={n}"));
                c.rebuild = true;
            }
        }
    }
    Ok(c)
}

/// QEMU's compare_refcounts: stored refcounts against the references
/// counted; with `fix` (and a fixer) mismatches are repaired where
/// allowed. A referenced cluster with no refcount asks for a rebuild.
/// Returns the highest cluster in use.
pub(super) fn compare(
    c: &mut Ctx,
    fix: Repair,
    stored: &mut Stored,
    mut fixer: Option<&mut dyn Fixer>,
) -> Result<Option<u64>> {
    let mut highest = None;
    for i in 0..c.refs.len() as u64 {
        let want = c.refs[i as usize] as u64;
        let have = match stored.get(i) {
            Ok(v) => v,
            Err(e) => {
                c.r.check_errors += 1;
                c.msg(format!("Can't get refcount for cluster {i}: {e}"));
                continue;
            }
        };
        if have > 0 || want > 0 {
            highest = Some(i);
        }
        if have == want {
            continue;
        }
        // Which count a repair would go to (none: only reported).
        let fixed = if have == 0 {
            c.rebuild = true;
            None
        } else if have > want && fix != Repair::None {
            Some(true)
        } else if have < want && fix == Repair::All {
            Some(false)
        } else {
            None
        };
        let fixed = fixed.filter(|_| fixer.is_some());
        let word = match fixed {
            Some(_) => "Repairing",
            None if have < want => "ERROR",
            None => "Leaked",
        };
        c.msg(format!(
            "{word} cluster {i} refcount={have} reference={want}"
        ));
        if let (Some(leak), Some(f)) = (fixed, fixer.as_deref_mut()) {
            if f.set_refcount(i, want).is_ok() {
                if leak {
                    c.r.leaks_fixed += 1;
                } else {
                    c.r.corruptions_fixed += 1;
                }
                continue;
            }
        }
        if have < want {
            c.r.corruptions += 1;
        } else {
            c.r.leaks += 1;
        }
    }
    Ok(highest)
}

/// QEMU's check_oflag_copied: the COPIED flags of the active L1 and L2
/// tables against the stored refcounts, repaired with `fix` when safe.
pub(super) fn copied_flags(
    c: &mut Ctx,
    stored: &mut Stored,
    fix: Repair,
    mut fixer: Option<&mut dyn Fixer>,
) -> Result<()> {
    let repair = fixer.is_some()
        && match fix {
            Repair::All => true,
            // Only when the refcounts are known right.
            Repair::Leaks => c.r.check_errors == 0 && c.r.corruptions == 0 && c.r.leaks == 0,
            Repair::None => false,
        };
    let word = if repair { "Repairing" } else { "ERROR" };
    let l1t = c.q.l1.load();
    let l1_size = l1t.entries();
    if l1_size * 8 > MAX_L1_BYTES {
        return Ok(());
    }
    let l1 = c.read(l1t.offset(), l1_size * 8)?;
    let words = c.entry_words() as usize;
    let data_file = c.q.geo.data_file;
    let extended = c.q.geo.extended;
    let mut seen: HashMap<u64, (u64, Vec<String>)> = HashMap::new();
    let mut repaired = std::collections::HashSet::new();
    let mut offsets: Vec<u64> = l1
        .chunks_exact(8)
        .map(|w| BigEndian::read_u64(w) & OFFSET_MASK)
        .filter(|&o| o != 0)
        .collect();
    offsets.sort_unstable();
    for (i, w) in l1.chunks_exact(8).enumerate() {
        let e = BigEndian::read_u64(w);
        let l2 = e & OFFSET_MASK;
        if l2 == 0 {
            continue;
        }
        let Ok(rc) = stored.get(l2 >> c.cb) else {
            continue;
        };
        if (rc == 1) != (e & OFLAG_COPIED != 0) {
            c.r.corruptions += 1;
            c.msg(format!(
                "{word} OFLAG_COPIED L2 cluster: l1_index={i} l1_entry={e:x} refcount={rc}"
            ));
            if let (true, Some(f)) = (repair, fixer.as_deref_mut()) {
                let v = if rc == 1 {
                    e | OFLAG_COPIED
                } else {
                    e & !OFLAG_COPIED
                };
                f.set_l1_entry(i as u64, v)?;
                c.r.corruptions -= 1;
                c.r.corruptions_fixed += 1;
            }
        }
        // A table listed again gives the same findings: replay them
        // (a repair has fixed them the first time).
        if let Some((n, msgs)) = seen.get(&l2) {
            c.r.corruptions += n;
            c.replay(msgs);
            continue;
        }
        // Repaired already (through the cache; QEMU reads it back fixed).
        if repair && !repaired.insert(l2) {
            continue;
        }
        let (before, kept) = (c.r.corruptions, c.r.messages.len());
        let raw = c.read(l2, c.l2_bytes())?;
        let mut t: Vec<u64> = raw.chunks_exact(8).map(BigEndian::read_u64).collect();
        let mut dirty = 0u64;
        for k in (0..t.len()).step_by(words) {
            let entry = t[k];
            if entry & OFLAG_COMPRESSED != 0 {
                continue;
            }
            let off = entry & OFFSET_MASK;
            let allocated = off != 0 || (data_file && entry & OFLAG_COPIED != 0);
            let _zero = entry & OFLAG_ZERO != 0 && !extended;
            if !allocated {
                continue;
            }
            let rc = if data_file {
                1
            } else {
                match stored.get(off >> c.cb) {
                    Ok(v) => v,
                    Err(_) => continue,
                }
            };
            if (rc == 1) != (entry & OFLAG_COPIED != 0) {
                c.r.corruptions += 1;
                c.msg(format!(
                    "{word} OFLAG_COPIED data cluster: l2_entry={entry:x} refcount={rc}"
                ));
                if repair {
                    t[k] = if rc == 1 {
                        entry | OFLAG_COPIED
                    } else {
                        entry & !OFLAG_COPIED
                    };
                    dirty += 1;
                }
            }
        }
        if let (true, Some(f)) = (dirty > 0, fixer.as_deref_mut()) {
            f.put_l2_table(l2, t)?;
            c.r.corruptions -= dirty;
            c.r.corruptions_fixed += dirty;
        }
        if occurrences(&offsets, l2) > 1 && !repair {
            let msgs = c.r.messages.get(kept..).map(<[String]>::to_vec);
            seen.insert(l2, (c.r.corruptions - before, msgs.unwrap_or_default()));
        }
    }
    Ok(())
}
