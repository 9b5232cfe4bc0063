//! `qemu-img check -r leaks|all` on qcow2: the check of `check.rs` run
//! with a fixer, in QEMU 10's order and with its messages, counts and
//! rules (what `-r leaks` may touch, when the refcount structures are
//! rebuilt from scratch, when OFLAG_COPIED is repaired), then checked
//! again as qemu-img does ("Double checking the fixed image now...").
//!
//! Crash safety: every change is one the image can take in any order
//! with any subset lost: a refcount moves to the number of references
//! found on disk (never below it); COPIED flags only follow the stored
//! refcounts; a rebuild writes its blocks and table into clusters
//! nothing references, flushes, and only then switches the header (one
//! 12-byte write), after which the old structure is merely leaked. A cut
//! anywhere leaves an image the next repair finishes.

use super::check::{self, Ctx, Fixer, Stored};
use super::features::{INCOMPAT_CORRUPT, INCOMPAT_DIRTY};
use super::write::Meta;
use super::Qcow2;
use crate::error::{Error, Result};
use crate::format::{CheckReport, Repair};
use byteorder::{BigEndian, ByteOrder};
use std::sync::atomic::Ordering;

/// Changes go through the write side's caches and write-back.
struct MetaFixer<'a> {
    q: &'a Qcow2,
    m: &'a mut Meta,
}

impl Fixer for MetaFixer<'_> {
    fn set_refcount(&mut self, cluster: u64, value: u64) -> Result<()> {
        self.q.repair_refcount(self.m, cluster, value)?;
        if value == 0 {
            // As QEMU (discard "always" for repairs): nothing references
            // the cluster, so its bytes may go at once.
            let cs = self.q.cs();
            self.q.l2_cache.invalidate(cluster * cs);
            self.q.file.discard(cluster * cs, cs)?;
        }
        Ok(())
    }

    fn set_l1_entry(&mut self, index: u64, value: u64) -> Result<()> {
        self.q.repair_l1_entry(self.m, index, value)
    }

    fn put_l2_table(&mut self, offset: u64, table: Vec<u64>) -> Result<()> {
        self.q.repair_l2_table(self.m, offset, table);
        Ok(())
    }

    fn grow_file(&mut self, len: u64) -> Result<()> {
        self.q.file.set_len(len)?;
        self.q.file.flush()
    }
}

/// The counts of a report (its messages are printed as they come, so a
/// count reset keeps them).
#[derive(Clone, Copy)]
struct Counts {
    corruptions: u64,
    leaks: u64,
    check_errors: u64,
    corruptions_fixed: u64,
    leaks_fixed: u64,
}

impl Counts {
    fn of(r: &CheckReport) -> Counts {
        Counts {
            corruptions: r.corruptions,
            leaks: r.leaks,
            check_errors: r.check_errors,
            corruptions_fixed: r.corruptions_fixed,
            leaks_fixed: r.leaks_fixed,
        }
    }

    fn put(self, r: &mut CheckReport) {
        r.corruptions = self.corruptions;
        r.leaks = self.leaks;
        r.check_errors = self.check_errors;
        r.corruptions_fixed = self.corruptions_fixed;
        r.leaks_fixed = self.leaks_fixed;
    }
}

/// Moves `from`'s messages to the end of `to`'s.
fn take_messages(to: &mut Ctx, from: &mut Ctx) {
    for m in std::mem::take(&mut from.r.messages) {
        to.msg(m);
    }
}

/// The repairing check (see the module comment). The report counts what
/// was found in the image as qemu-img reports it after its second check:
/// `corruptions`/`leaks` are those left plus those fixed.
pub(super) fn run(
    q: &Qcow2,
    fix: Repair,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<CheckReport> {
    q.w_flush()?;
    let mut guard = q.repair_meta()?;
    let m: &mut Meta = &mut guard;
    let mut loc = q.rt_location(m);
    let mut first = check::count(q, fix, loc, Some(&mut MetaFixer { q, m }), progress)?;
    zero_entries(q, &first.zero_fixes)?;
    let pre = Counts::of(&first.r);
    let mut stored = Stored::load(q, loc)?;
    let mut highest = check::compare(&mut first, Repair::None, &mut stored, None)?;
    progress(3, 4);
    if first.rebuild && fix == Repair::All {
        first.msg("Rebuilding refcount structure".into());
        let old = Counts::of(&first.r);
        loc = rebuild(q, m, &first.refs)?;
        // The references are counted again against the new structure.
        let mut again = check::count(q, Repair::None, loc, None, &mut |_, _| {})?;
        take_messages(&mut first, &mut again);
        first.r.corruptions = again.r.corruptions;
        first.r.leaks = again.r.leaks;
        first.r.check_errors += again.r.check_errors;
        // The old structure is leaked now: freed. Leaks left after that
        // were made by the rebuild itself.
        Counts {
            corruptions: 0,
            leaks: 0,
            check_errors: 0,
            corruptions_fixed: 0,
            leaks_fixed: 0,
        }
        .put(&mut again.r);
        again.rebuild = false;
        let mut st = Stored::load(q, loc)?;
        highest = check::compare(
            &mut again,
            Repair::Leaks,
            &mut st,
            Some(&mut MetaFixer { q, m }),
        )?;
        take_messages(&mut first, &mut again);
        if again.rebuild {
            first.msg("ERROR rebuilt refcount structure is still broken".into());
        }
        let fresh_leaks = again.r.leaks;
        if first.r.corruptions < old.corruptions {
            first.r.corruptions_fixed += old.corruptions - first.r.corruptions;
        }
        if first.r.leaks < old.leaks {
            first.r.leaks_fixed += old.leaks - first.r.leaks;
        }
        first.r.leaks += fresh_leaks;
        q.repair_reset_hint(m);
        q.flush_locked(m)?;
    } else {
        if first.rebuild {
            first.msg("ERROR need to rebuild refcount structures".into());
            first.r.check_errors += 1;
            let mut r = check::finish(first, highest);
            r.failure = Some("Input/output error".into());
            return Ok(r);
        }
        if first.r.leaks > 0 || first.r.corruptions > 0 {
            pre.put(&mut first.r);
            let mut st = Stored::load(q, loc)?;
            highest = check::compare(&mut first, fix, &mut st, Some(&mut MetaFixer { q, m }))?;
            q.repair_reset_hint(m);
            q.flush_locked(m)?;
        }
    }
    // The refcounts are on disk now: COPIED follows them.
    let mut st = Stored::load(q, loc)?;
    check::copied_flags(&mut first, &mut st, fix, Some(&mut MetaFixer { q, m }))?;
    q.flush_locked(m)?;
    progress(4, 4);
    if first.r.check_errors == 0 && first.r.corruptions == 0 {
        mark_clean(q)?;
    }
    finish(q, m, first, highest)
}

/// Makes the queued L2 entries plain zero clusters (QEMU's
/// fix_l2_entry_by_zero): one synced write of each entry; the cached copy
/// of its table is dropped.
fn zero_entries(q: &Qcow2, fixes: &[(u64, u64)]) -> Result<()> {
    let words = q.geo.entry_words();
    for &(table, i) in fixes {
        let at = table + i * 8 * words as u64;
        let mut e = vec![0u8; 8 * words];
        q.file.read_at(&mut e, at)?;
        if words == 2 {
            let bitmap = BigEndian::read_u64(&e[8..]);
            let zeros = (bitmap | bitmap << 32) & (0xffff_ffff << 32);
            BigEndian::write_u64(&mut e[..8], 0);
            BigEndian::write_u64(&mut e[8..], zeros);
        } else {
            BigEndian::write_u64(&mut e, super::l2::OFLAG_ZERO);
        }
        q.file.write_at(&e, at)?;
        q.file.flush()?;
        q.l2_cache.invalidate(table);
    }
    Ok(())
}

/// Clears the dirty and corrupt bits (QEMU's mark_clean and
/// mark_consistent after a repair that left no corruption).
fn mark_clean(q: &Qcow2) -> Result<()> {
    let flags = q.incompat.load(Ordering::SeqCst);
    let clean = flags & !(INCOMPAT_DIRTY | INCOMPAT_CORRUPT);
    if clean == flags || q.header.version < 3 {
        return Ok(());
    }
    q.file.flush()?;
    let mut b = [0u8; 8];
    BigEndian::write_u64(&mut b, clean);
    q.file.write_at(&b, 72)?;
    q.file.flush()?;
    q.incompat.store(clean, Ordering::SeqCst);
    Ok(())
}

/// The report; when anything was fixed, the image is checked again (as
/// qemu-img does) and that check's findings are what is left.
fn finish(q: &Qcow2, m: &mut Meta, first: Ctx, highest: Option<u64>) -> Result<CheckReport> {
    let mut r = check::finish(first, highest);
    let fixed = Counts::of(&r);
    if fixed.corruptions_fixed + fixed.leaks_fixed == 0 {
        return Ok(r);
    }
    let loc = q.rt_location(m);
    let mut c = check::count(q, Repair::None, loc, None, &mut |_, _| {})?;
    let mut st = Stored::load(q, loc)?;
    let h = check::compare(&mut c, Repair::None, &mut st, None)?;
    check::copied_flags(&mut c, &mut st, Repair::None, None)?;
    let mut again = check::finish(c, h);
    let mut messages = std::mem::take(&mut r.messages);
    messages.append(&mut again.messages);
    again.messages = messages;
    again.corruptions += fixed.corruptions_fixed;
    again.leaks += fixed.leaks_fixed;
    again.corruptions_fixed = fixed.corruptions_fixed;
    again.leaks_fixed = fixed.leaks_fixed;
    Ok(again)
}

/// QEMU's rebuild_refcount_structure: a new structure from the counted
/// references, then the header switched to it (one write, after a flush).
fn rebuild(q: &Qcow2, m: &mut Meta, refs: &[u16]) -> Result<(u64, u64)> {
    let (table, off, clusters) = build_structure(q, refs, q.header.refcount_order, &[])?;
    let mut hb = [0u8; 12];
    BigEndian::write_u64(&mut hb[..8], off);
    BigEndian::write_u32(&mut hb[8..], clusters as u32);
    q.file.write_at(&hb, 48)?;
    q.file.flush()?;
    q.repair_new_table(m, table, off, clusters);
    Ok((off, clusters))
}

/// New refcount blocks (entries of `1 << order` bits) and a new table made
/// from the counted references (`refs`) alone, placed first-fit in
/// clusters nothing references (the table too, found after the blocks;
/// its own clusters may need blocks rewritten, and a table that had to
/// grow is placed again), written and flushed; nothing names them yet.
/// Clusters in `exclude` (the old structure, when it is replaced on
/// purpose) are kept free of the new structure but counted one less.
/// Returns the table's entries, offset and clusters.
pub(super) fn build_structure(
    q: &Qcow2,
    refs: &[u16],
    order: u32,
    exclude: &[u64],
) -> Result<(Vec<u64>, u64, u64)> {
    let cb = q.header.cluster_bits;
    let cs = 1u64 << cb;
    let mut r = Rebuild {
        q,
        imrt: refs.iter().map(|&v| v as u64).collect(),
        table: Vec::new(),
        per_block: 1u64 << (cb + 3 - order),
        order,
        cb,
        exclude: exclude.iter().copied().collect(),
    };
    let n = r.imrt.len() as u64;
    let mut grown = r.write_blocks(0, n)?;
    let (mut off, mut clusters) = (0, 0);
    while grown {
        clusters = (r.table.len() as u64 * 8).div_ceil(cs);
        let mut ff = 0;
        off = r.alloc(clusters, &mut ff)?;
        grown = r.write_blocks(off >> cb, (off >> cb) + clusters)?;
    }
    if clusters == 0 {
        return Err(Error::Corrupt(
            "the image has no clusters in use to rebuild refcounts for".into(),
        ));
    }
    let mut buf = vec![0u8; (clusters * cs) as usize];
    for (i, e) in r.table.iter().enumerate() {
        BigEndian::write_u64(&mut buf[i * 8..], *e);
    }
    q.file.write_at(&buf, off)?;
    q.file.flush()?;
    Ok((r.table, off, clusters))
}

struct Rebuild<'a> {
    q: &'a Qcow2,
    /// The in-memory refcounts of every cluster (allocations included).
    imrt: Vec<u64>,
    /// The new refcount table's entries.
    table: Vec<u64>,
    per_block: u64,
    order: u32,
    cb: u32,
    exclude: std::collections::HashSet<u64>,
}

/// Clusters a rebuild may place past the end of a file it checks.
const MAX_REBUILD_CLUSTERS: u64 = check::MAX_CLUSTERS + (1 << 20);

impl Rebuild<'_> {
    fn get(&self, c: u64) -> u64 {
        self.imrt.get(c as usize).copied().unwrap_or(0)
    }

    /// First fit of `n` free clusters from `*first_free` (which moves to
    /// the first gap seen); the array grows past the end when needed.
    fn alloc(&mut self, n: u64, first_free: &mut u64) -> Result<u64> {
        let mut c = *first_free;
        let mut run = 0;
        let mut first_gap = true;
        while c < self.imrt.len() as u64 && run < n {
            if self.imrt[c as usize] == 0 {
                run += 1;
                if first_gap {
                    *first_free = c;
                    first_gap = false;
                }
            } else {
                run = 0;
            }
            c += 1;
        }
        if run < n {
            let len = c + n - run;
            if len > MAX_REBUILD_CLUSTERS {
                return Err(Error::TooLarge(
                    "ERROR allocating refblock: the image would grow too large".into(),
                ));
            }
            self.imrt.resize(len as usize, 0);
        }
        c -= run;
        for i in 0..n {
            self.imrt[(c + i) as usize] = 1;
        }
        Ok(c << self.cb)
    }

    /// Writes the blocks covering clusters in use in `[first, end)`;
    /// returns whether the table had to grow.
    fn write_blocks(&mut self, first: u64, mut end: u64) -> Result<bool> {
        let cs = 1u64 << self.cb;
        let mut grown = false;
        let mut ff = 0u64;
        let mut c = first;
        while c < end {
            if self.get(c) == 0 {
                c += 1;
                continue;
            }
            let bi = c / self.per_block;
            let start = bi * self.per_block;
            let boff = match self.table.get(bi as usize) {
                Some(&b) if b != 0 => b,
                _ => {
                    ff = ff.max(start);
                    let b = self.alloc(1, &mut ff)?;
                    if b >> self.cb >= end {
                        end = (b >> self.cb) + 1;
                    }
                    if self.table.len() as u64 <= bi {
                        let entries = ((bi + 1) * 8).next_multiple_of(cs) / 8;
                        self.table.resize(entries as usize, 0);
                        grown = true;
                    }
                    self.table[bi as usize] = b;
                    b
                }
            };
            let mut block = vec![0u8; cs as usize];
            for k in 0..self.per_block {
                let v = self.get(start + k) - self.exclude.contains(&(start + k)) as u64;
                if v != 0 {
                    super::refcount::set_entry(&mut block, k, self.order, v)?;
                }
            }
            self.q.file.write_at(&block, boff)?;
            c = start + self.per_block;
        }
        Ok(grown)
    }
}
