//! `qemu-img amend` on qcow2: compat 1.1 <-> 0.10, lazy_refcounts,
//! refcount_bits, data_file_raw (clearing it), data_file (renaming it),
//! with QEMU 10's checks and messages.
//!
//! Crash safety: everything before the final header write leaves the old
//! image valid: zero clusters are expanded through the write side's
//! ordered write-back (a v3 image with fewer zero clusters reads the
//! same), a new refcount structure goes into clusters nothing references,
//! and then cluster 0 is rewritten in one write naming the new version,
//! features, refcount width and table. A new refcount structure counts
//! the old one as free, so nothing leaks.

use super::check::{self, Stored};
use super::create::{feature_table, CREATE_OPTS};
use super::features::{
    AUTOCLEAR_DATA_FILE_RAW, COMPAT_LAZY_REFCOUNTS, INCOMPAT_COMPRESSION, INCOMPAT_DATA_FILE,
};
use super::header::{
    Compression, Header, EXT_BACKING_FMT, EXT_BITMAPS, EXT_DATA_FILE, EXT_FEATURE_TABLE,
};
use super::l2::{OFFSET_MASK, OFLAG_COMPRESSED, OFLAG_COPIED, OFLAG_ZERO};
use super::Qcow2;
use crate::error::{Error, Result};
use crate::format::{options, CreateOptions, Repair};
use byteorder::{BigEndian, ByteOrder};
use std::sync::atomic::Ordering;

fn bad(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}

/// Options amend takes (the rest of the creation options are refused).
const AMENDABLE: &[&str] = &[
    options::SIZE,
    "compat",
    options::BACKING_FILE,
    options::BACKING_FMT,
    "lazy_refcounts",
    "refcount_bits",
    "data_file",
    "data_file_raw",
];

impl Qcow2 {
    /// Applies `o` (see the module comment); `progress(done, total)`.
    /// The handle is read-only afterwards: reopen the image to use it.
    pub(super) fn amend(
        &self,
        o: &CreateOptions,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<()> {
        let h0 = &self.header;
        for k in o.keys() {
            if AMENDABLE.contains(&k) {
                continue;
            }
            if CREATE_OPTS.iter().any(|d| d.name == k) {
                return Err(bad(format!(
                    "Invalid parameter '{k}'\nThis option is only supported for image creation"
                )));
            }
            return Err(bad(format!("Invalid parameter '{k}'")));
        }
        let old_version = h0.version;
        let new_version = match o.get_str("compat") {
            None => old_version,
            Some("0.10" | "v2") => 2,
            Some("1.1" | "v3") => 3,
            Some(c) => return Err(bad(format!("Unknown compatibility level {c}"))),
        };
        let lazy_now = h0.compatible & COMPAT_LAZY_REFCOUNTS != 0;
        let lazy = o.get_bool("lazy_refcounts")?.unwrap_or(lazy_now);
        let order_now = h0.refcount_order;
        let bits = match o.get_str("refcount_bits") {
            None => 1u64 << order_now,
            Some(s) => s
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|b| (1..=64).contains(b) && b.is_power_of_two())
                .ok_or_else(|| {
                    bad("Refcount width must be a power of two and may not exceed 64 bits")
                })?,
        };
        let order = bits.trailing_zeros();
        let data_file = o.get_str("data_file");
        if data_file.is_some() && !h0.has_data_file() {
            return Err(bad(
                "data-file can only be set for images that use an external data file",
            ));
        }
        let raw_now = h0.data_file_raw();
        let raw = o.get_bool("data_file_raw")?.unwrap_or(raw_now);
        if raw && !raw_now {
            return Err(bad("data-file-raw cannot be set on existing images"));
        }
        if order != order_now && new_version < 3 && bits != 16 {
            return Err(bad("Refcount widths other than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)"));
        }
        let (bf, bfmt) = (
            o.get_str(options::BACKING_FILE),
            o.get_str(options::BACKING_FMT),
        );
        if (bf.is_some() || bfmt.is_some())
            && (bf != h0.backing_file.as_deref() || bfmt != h0.backing_fmt.as_deref())
        {
            return Err(bad(
                "Cannot amend the backing file\nYou can use 'cowblk-img rebase' instead.",
            ));
        }
        if lazy && !lazy_now && new_version < 3 {
            return Err(bad("Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)"));
        }
        if let Some(s) = o.get_size(options::SIZE)? {
            if s != self.size.load(Ordering::SeqCst) {
                return Err(Error::Unsupported(
                    "changing the size with amend is not supported; use 'cowblk-img resize'".into(),
                ));
            }
        }
        if new_version > old_version && self.snapshots.load().iter().any(|s| s.extra.len() < 16) {
            return Err(Error::Unsupported(
                "upgrading an image whose snapshots lack the v3 extra data is not supported".into(),
            ));
        }
        if new_version < old_version {
            self.downgrade_checks(order)?;
        }
        let steps = (new_version != old_version) as u64 + (order != order_now) as u64;
        let total = steps.max(1) * 100;
        progress(0, total);
        let mut h = self.current_header();
        if new_version < old_version {
            // Zero clusters first: v2 has none.
            self.expand_zero_clusters(&mut |d, t| progress(d * 100 / t.max(1), total))?;
            h.version = 2;
            h.compatible = 0;
            h.autoclear = 0;
            h.incompatible &= !INCOMPAT_COMPRESSION;
            h.compression = Compression::Zlib;
        } else if new_version > old_version {
            h.version = 3;
            h.refcount_order = 4;
            h.incompatible = 0;
            h.compatible = 0;
            h.autoclear = 0;
        }
        self.w_flush()?;
        if order != order_now {
            let done = (new_version != old_version) as u64 * 100;
            progress(done, total);
            let (off, clusters) = self.new_refcount_width(order)?;
            h.refcount_order = order;
            h.refcount_table_offset = off;
            h.refcount_table_clusters = clusters as u32;
        }
        if h.version >= 3 {
            h.autoclear = if raw {
                h.autoclear | AUTOCLEAR_DATA_FILE_RAW
            } else {
                h.autoclear & !AUTOCLEAR_DATA_FILE_RAW
            };
            h.compatible = if lazy {
                h.compatible | COMPAT_LAZY_REFCOUNTS
            } else {
                h.compatible & !COMPAT_LAZY_REFCOUNTS
            };
        }
        if let Some(d) = data_file {
            h.data_file = (!d.is_empty()).then(|| d.to_string());
        }
        let bytes = header_cluster(&h)?;
        self.file.flush()?;
        self.file.write_at(&bytes, 0)?;
        self.file.flush()?;
        self.amend_done();
        progress(total, total);
        Ok(())
    }

    /// `rebase`'s header change (QEMU's qcow2_change_backing_file): once
    /// everything written so far is on disk, cluster 0 is rewritten with
    /// the new backing file name and format (`None`: none) in one write.
    pub(super) fn change_backing(&self, backing: Option<(&str, &str)>) -> Result<()> {
        if self.ro.load(Ordering::SeqCst) {
            return Err(Error::ReadOnly(self.path.display().to_string()));
        }
        self.w_flush()?;
        let mut h = self.current_header();
        h.backing_file = backing.map(|(n, _)| n.to_string());
        h.backing_fmt = backing.and_then(|(_, f)| (!f.is_empty()).then(|| f.to_string()));
        let bytes = header_cluster(&h)?;
        self.file.flush()?;
        self.file.write_at(&bytes, 0)?;
        self.file.flush()?;
        self.backing
            .store(std::sync::Arc::new(backing.map(|(n, f)| {
                crate::format::BackingSpec {
                    name: n.to_string(),
                    path: crate::format::resolve_relative(&self.path, n),
                    format: (!f.is_empty()).then(|| f.to_string()),
                }
            })));
        Ok(())
    }

    /// The header as the image has it now (the write side may have moved
    /// the L1 and refcount tables since the open).
    fn current_header(&self) -> Header {
        let mut h = self.header.clone();
        h.incompatible = self.incompat.load(Ordering::SeqCst);
        h.size = self.size.load(Ordering::SeqCst);
        let l1 = self.l1.load();
        h.l1_table_offset = l1.offset();
        h.l1_size = l1.entries() as u32;
        if let Ok(m) = self.repair_meta() {
            let (off, clusters) = self.rt_location(&m);
            h.refcount_table_offset = off;
            h.refcount_table_clusters = clusters as u32;
        }
        // A rebase since the open named another backing file.
        let b = self.backing.load();
        h.backing_file = b.as_ref().as_ref().map(|b| b.name.clone());
        h.backing_fmt = b.as_ref().as_ref().and_then(|b| b.format.clone());
        // A snapshot operation since the open moved the snapshot table.
        h.nb_snapshots = self.snapshots.load().len() as u32;
        h.snapshots_offset = self.snapshot_table_offset();
        h
    }

    /// QEMU's refusals for compat=0.10.
    fn downgrade_checks(&self, order: u32) -> Result<()> {
        if order != 4 {
            return Err(bad("compat=0.10 requires refcount_bits=16"));
        }
        if self.header.has_data_file() {
            return Err(Error::Unsupported(
                "Cannot downgrade an image with a data file".into(),
            ));
        }
        let size = self.size.load(Ordering::SeqCst);
        for s in self.snapshots.load().iter() {
            if s.vm_state_size > u32::MAX as u64 || s.disk_size.is_some_and(|d| d != size) {
                return Err(Error::Unsupported(
                    "Internal snapshots prevent downgrade of image".into(),
                ));
            }
        }
        let incompat = self.incompat.load(Ordering::SeqCst)
            & !INCOMPAT_COMPRESSION
            & !super::features::INCOMPAT_DIRTY;
        if incompat != 0 {
            return Err(Error::Unsupported(format!(
                "Cannot downgrade an image with incompatible features {incompat:#x} set"
            )));
        }
        if self.incompat.load(Ordering::SeqCst) & INCOMPAT_COMPRESSION != 0
            && self.header.compression == Compression::Zstd
            && self.has_compressed_clusters()?
        {
            return Err(Error::Unsupported(
                "Cannot downgrade an image with zstd compression type and existing compressed clusters".into(),
            ));
        }
        Ok(())
    }

    fn has_compressed_clusters(&self) -> Result<bool> {
        let mut found = false;
        self.each_active_entry(&mut |_, e| {
            found |= e & OFLAG_COMPRESSED != 0;
            Ok(())
        })?;
        Ok(found)
    }

    /// Calls `f(guest offset, entry)` for every entry of the active L2
    /// tables.
    fn each_active_entry(&self, f: &mut dyn FnMut(u64, u64) -> Result<()>) -> Result<()> {
        let l1 = self.l1.load();
        let per = self.geo.l2_entries();
        let w = self.geo.entry_words();
        for i in 0..l1.entries() {
            let off = l1.entry(i)? & OFFSET_MASK;
            if off == 0 {
                continue;
            }
            let t = self.l2_table(off, i)?;
            for j in 0..per {
                f((i * per + j) << self.geo.cluster_bits, t[j as usize * w])?;
            }
        }
        Ok(())
    }

    /// QEMU's qcow2_expand_zero_clusters for the active tables: a zero
    /// cluster without host cluster becomes unallocated (no backing file)
    /// or a new cluster of zeros; one with a host cluster gets zeros
    /// written there. Snapshots with zero clusters are refused.
    fn expand_zero_clusters(&self, progress: &mut dyn FnMut(u64, u64)) -> Result<()> {
        let mut zeros = Vec::new();
        self.each_active_entry(&mut |g, e| {
            if e & OFLAG_ZERO != 0 && e & OFLAG_COMPRESSED == 0 {
                zeros.push((g, e));
            }
            Ok(())
        })?;
        let cs = self.cs();
        let n = zeros.len() as u64;
        let backing = self.backing.load().is_some();
        let zero_buf = vec![0u8; cs as usize];
        for (k, (g, e)) in zeros.into_iter().enumerate() {
            progress(k as u64, n);
            let host = e & OFFSET_MASK;
            let new = if host != 0 {
                self.data.write_at(&zero_buf, host)?;
                host | (e & OFLAG_COPIED)
            } else if !backing {
                0
            } else {
                let h = self.amend_alloc()?;
                self.data.write_at(&zero_buf, h)?;
                h | OFLAG_COPIED
            };
            // The write-back flushes the zeros before the entry names them.
            self.amend_rewrite(g, cs, |_, _| Some((new, 0)))?;
        }
        self.w_flush()?;
        self.expand_snapshot_zero_clusters()?;
        progress(n, n);
        Ok(())
    }

    /// Zero clusters in the snapshots' L2 tables (after the active ones,
    /// which may share tables with them, are written back): unallocated
    /// without a backing file, zeros written into a host cluster they
    /// keep. Each table is rewritten in place after the zeros are on disk.
    /// A zero cluster without host cluster over a backing file would need
    /// a new cluster shared by every L1 table naming the L2 table: refused.
    fn expand_snapshot_zero_clusters(&self) -> Result<()> {
        let cs = self.cs();
        let zero_buf = vec![0u8; cs as usize];
        let backing = self.backing.load().is_some();
        for s in self.snapshots.load().iter() {
            let mut raw = vec![0u8; s.l1_size as usize * 8];
            self.file.read_at(&mut raw, s.l1_table_offset)?;
            for l1e in raw.chunks_exact(8).map(BigEndian::read_u64) {
                let off = l1e & OFFSET_MASK;
                if off == 0 {
                    continue;
                }
                let mut t = vec![0u8; cs as usize];
                self.file.read_at(&mut t, off)?;
                let mut changed = false;
                for w in t.chunks_exact_mut(8) {
                    let e = BigEndian::read_u64(w);
                    if e & OFLAG_ZERO == 0 || e & OFLAG_COMPRESSED != 0 {
                        continue;
                    }
                    let host = e & OFFSET_MASK;
                    let new = if host != 0 {
                        self.file.write_at(&zero_buf, host)?;
                        host | (e & OFLAG_COPIED)
                    } else if !backing {
                        0
                    } else {
                        return Err(Error::Unsupported(
                            "downgrading an image with a backing file whose internal snapshots have zero clusters is not supported".into(),
                        ));
                    };
                    BigEndian::write_u64(w, new);
                    changed = true;
                }
                if changed {
                    self.file.flush()?;
                    self.file.write_at(&t, off)?;
                    self.file.flush()?;
                    self.l2_cache.invalidate(off);
                }
            }
        }
        Ok(())
    }

    /// Writes a refcount structure of `1 << order`-bit entries next to the
    /// current one (which it counts as free); returns its table's place.
    fn new_refcount_width(&self, order: u32) -> Result<(u64, u64)> {
        let m = self.repair_meta()?;
        let loc = self.rt_location(&m);
        let mut c = check::count(
            self,
            Repair::None,
            loc,
            m.snap_table.0,
            None,
            &mut |_, _| {},
        )?;
        let mut st = Stored::load(self, loc)?;
        check::compare(&mut c, Repair::None, &mut st, None)?;
        if c.r.corruptions + c.r.leaks + c.r.check_errors > 0 || c.rebuild {
            return Err(Error::Corrupt(
                "the image's refcounts are inconsistent; run 'cowblk-img check -r all' first"
                    .into(),
            ));
        }
        let max = super::refcount::max_value(order);
        if let Some((i, &v)) = c.refs.iter().enumerate().find(|(_, &v)| v as u64 > max) {
            return Err(bad(format!(
                "Cannot decrease refcount entry width to {} bits: Cluster at offset {:#x} has a refcount of {v}",
                1u32 << order,
                (i as u64) * c.cs
            )));
        }
        // The old structure: its table and blocks.
        let cs = c.cs;
        let mut old: Vec<u64> = (0..loc.1).map(|i| loc.0 / cs + i).collect();
        for e in &st.table_entries() {
            let b = e & !0x1ff;
            if b != 0 {
                old.push(b / cs);
            }
        }
        let (_, off, clusters) = super::repair::build_structure(self, &c.refs, order, &old)?;
        Ok((off, clusters))
    }
}

/// Cluster 0 for header `h`: the header fields, the extensions QEMU
/// writes (backing format, data file name, feature names with v3 and
/// clusters of 8 KiB or more, bitmaps, unknown ones kept), the end
/// marker and the backing file name.
fn header_cluster(h: &Header) -> Result<Vec<u8>> {
    let cs = 1usize << h.cluster_bits;
    let hlen: usize = if h.version >= 3 { 112 } else { 72 };
    let mut b = vec![0u8; hlen];
    b[0..4].copy_from_slice(b"QFI\xfb");
    BigEndian::write_u32(&mut b[4..], h.version);
    BigEndian::write_u32(&mut b[20..], h.cluster_bits);
    BigEndian::write_u64(&mut b[24..], h.size);
    BigEndian::write_u32(&mut b[32..], h.crypt_method);
    BigEndian::write_u32(&mut b[36..], h.l1_size);
    BigEndian::write_u64(&mut b[40..], h.l1_table_offset);
    BigEndian::write_u64(&mut b[48..], h.refcount_table_offset);
    BigEndian::write_u32(&mut b[56..], h.refcount_table_clusters);
    BigEndian::write_u32(&mut b[60..], h.nb_snapshots);
    BigEndian::write_u64(&mut b[64..], h.snapshots_offset);
    if h.version >= 3 {
        let mut incompat = h.incompatible;
        if h.data_file.is_some() {
            incompat |= INCOMPAT_DATA_FILE;
        }
        BigEndian::write_u64(&mut b[72..], incompat);
        BigEndian::write_u64(&mut b[80..], h.compatible);
        BigEndian::write_u64(&mut b[88..], h.autoclear);
        BigEndian::write_u32(&mut b[96..], h.refcount_order);
        BigEndian::write_u32(&mut b[100..], hlen as u32);
        b[104] = (h.compression == Compression::Zstd) as u8;
    }
    let ext = |b: &mut Vec<u8>, magic: u32, data: &[u8]| {
        let mut e = [0u8; 8];
        BigEndian::write_u32(&mut e[0..], magic);
        BigEndian::write_u32(&mut e[4..], data.len() as u32);
        b.extend_from_slice(&e);
        b.extend_from_slice(data);
        b.resize(b.len().next_multiple_of(8), 0);
    };
    if let Some(f) = &h.backing_fmt {
        ext(&mut b, EXT_BACKING_FMT, f.as_bytes());
    }
    if let Some(d) = &h.data_file {
        ext(&mut b, EXT_DATA_FILE, d.as_bytes());
    }
    if h.version >= 3 && h.cluster_bits >= 13 {
        ext(&mut b, EXT_FEATURE_TABLE, &feature_table());
    }
    if let (Some(bm), true) = (&h.bitmaps, h.version >= 3) {
        let mut d = [0u8; 24];
        BigEndian::write_u32(&mut d[0..], bm.nb_bitmaps);
        BigEndian::write_u64(&mut d[8..], bm.dir_size);
        BigEndian::write_u64(&mut d[16..], bm.dir_offset);
        ext(&mut b, EXT_BITMAPS, &d);
    }
    for (magic, data) in &h.unknown_extensions {
        ext(&mut b, *magic, data);
    }
    b.extend_from_slice(&[0u8; 8]);
    if let Some(f) = &h.backing_file {
        let off = b.len() as u64;
        BigEndian::write_u64(&mut b[8..], off);
        BigEndian::write_u32(&mut b[16..], f.len() as u32);
        b.extend_from_slice(f.as_bytes());
    }
    if b.len() > cs {
        return Err(Error::TooLarge(format!(
            "the amended header ({} bytes) does not fit in cluster 0",
            b.len()
        )));
    }
    b.resize(cs, 0);
    Ok(b)
}
