//! qcow2 creation: qemu-img's `-o` options, checked with QEMU's rules and
//! words, and a layout computed the way QEMU 10 lays a new image out, so
//! that our images equal qemu-img's cluster for cluster in the common cases.
//!
//! `Params::from_options` validates; `Layout::compute` is pure (no I/O);
//! `write` puts a layout on disk, data first and the header last, and the
//! caller removes the file if anything fails.
//!
//! QEMU's layout (observed on QEMU 10 and reproduced here):
//! - cluster 0 header and extensions, cluster 1 refcount table, cluster 2
//!   the first refcount block, then the L1 table (exact size, the file
//!   ending where the L1 table ends).
//! - `metadata`: for each L2 table in guest order, the table and then its
//!   data clusters; a refcount block that is missing is placed after the run
//!   that needed it (or at the run's start when its first cluster needs it).
//! - `falloc`/`full`: after the L1 table, QEMU's "refcount area": new
//!   refcount blocks covering the data and metadata, a new refcount table
//!   (the old one at cluster 1 freed), the data clusters, and the L2 tables
//!   allocated first-fit (the first one in cluster 1).
//! - With an external data file, host offsets equal guest offsets and only
//!   L2 tables are allocated in the qcow2 file.

use super::features::{
    AUTOCLEAR_BITMAPS, AUTOCLEAR_DATA_FILE_RAW, COMPAT_LAZY_REFCOUNTS, INCOMPAT_COMPRESSION,
    INCOMPAT_CORRUPT, INCOMPAT_DATA_FILE, INCOMPAT_DIRTY, INCOMPAT_EXTL2,
};
use super::header::{
    EXT_BACKING_FMT, EXT_DATA_FILE, EXT_FEATURE_TABLE, MAGIC, MAX_BACKING_FMT, MAX_BACKING_NAME,
    MAX_CLUSTER_BITS, MAX_L1_BYTES, MAX_REFTABLE_BYTES, MIN_CLUSTER_BITS, MIN_EXTL2_CLUSTER_BITS,
};
use super::l2::OFLAG_COPIED;
use crate::error::{Error, Result};
use crate::format::options::{self, CreateOptions, OptDesc, OptKind};
use crate::io::BlockFile;
use byteorder::{BigEndian, ByteOrder};
use std::collections::BTreeMap;

pub const CLUSTER_SIZE: &str = "cluster_size";
pub const COMPAT: &str = "compat";
pub const LAZY_REFCOUNTS: &str = "lazy_refcounts";
pub const REFCOUNT_BITS: &str = "refcount_bits";
pub const EXTENDED_L2: &str = "extended_l2";
pub const COMPRESSION_TYPE: &str = "compression_type";
pub const PREALLOCATION: &str = "preallocation";
pub const DATA_FILE: &str = "data_file";
pub const DATA_FILE_RAW: &str = "data_file_raw";

/// The options `qemu-img create -f qcow2 -o help` lists (without
/// encryption, which this library does not write), in its order.
pub static CREATE_OPTS: [OptDesc; 12] = [
    OptDesc {
        name: options::BACKING_FILE,
        kind: OptKind::Str,
        help: "File name of a base image",
    },
    OptDesc {
        name: options::BACKING_FMT,
        kind: OptKind::Str,
        help: "Image format of the base image",
    },
    OptDesc {
        name: CLUSTER_SIZE,
        kind: OptKind::Size,
        help: "qcow2 cluster size",
    },
    OptDesc {
        name: COMPAT,
        kind: OptKind::Str,
        help: "Compatibility level (v2 [0.10] or v3 [1.1])",
    },
    OptDesc {
        name: COMPRESSION_TYPE,
        kind: OptKind::Str,
        help: "Compression method used for image cluster compression",
    },
    OptDesc {
        name: DATA_FILE,
        kind: OptKind::Str,
        help: "File name of an external data file",
    },
    OptDesc {
        name: DATA_FILE_RAW,
        kind: OptKind::Bool,
        help: "The external data file must stay valid as a raw image",
    },
    OptDesc {
        name: EXTENDED_L2,
        kind: OptKind::Bool,
        help: "Extended L2 tables",
    },
    OptDesc {
        name: LAZY_REFCOUNTS,
        kind: OptKind::Bool,
        help: "Postpone refcount updates",
    },
    OptDesc {
        name: PREALLOCATION,
        kind: OptKind::Str,
        help: "Preallocation mode (allowed values: off, metadata, falloc, full)",
    },
    OptDesc {
        name: REFCOUNT_BITS,
        kind: OptKind::Number,
        help: "Width of a reference count entry in bits",
    },
    OptDesc {
        name: options::SIZE,
        kind: OptKind::Size,
        help: "Virtual disk size",
    },
];

/// The `key=value` pairs qemu-img prints on its "Formatting ..." line for
/// qcow2: its order, options with defaults always, sizes in bytes.
pub fn formatting_opts(o: &CreateOptions, size: u64) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let size_or = |k: &str, d: u64| o.get_size(k).ok().flatten().unwrap_or(d).to_string();
    let bool_or = |k: &str| match o.get_bool(k) {
        Ok(Some(true)) => "on".to_string(),
        Ok(Some(false)) | Ok(None) => "off".to_string(),
        Err(_) => o.get(k).unwrap_or("").to_string(),
    };
    out.push((CLUSTER_SIZE, size_or(CLUSTER_SIZE, 65536)));
    out.push((EXTENDED_L2, bool_or(EXTENDED_L2)));
    if let Some(v) = o.get(PREALLOCATION) {
        out.push((PREALLOCATION, v.to_string()));
    }
    out.push((
        COMPRESSION_TYPE,
        o.get(COMPRESSION_TYPE).unwrap_or("zlib").to_string(),
    ));
    out.push((options::SIZE, size.to_string()));
    for k in [
        options::BACKING_FILE,
        options::BACKING_FMT,
        COMPAT,
        DATA_FILE,
    ] {
        if let Some(v) = o.get(k) {
            out.push((k, v.to_string()));
        }
    }
    if o.get(DATA_FILE_RAW).is_some() {
        out.push((DATA_FILE_RAW, bool_or(DATA_FILE_RAW)));
    }
    out.push((LAZY_REFCOUNTS, bool_or(LAZY_REFCOUNTS)));
    out.push((
        REFCOUNT_BITS,
        o.get(REFCOUNT_BITS).unwrap_or("16").to_string(),
    ));
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prealloc {
    Off,
    Metadata,
    Falloc,
    Full,
}

/// Validated creation parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    pub size: u64,
    pub cluster_bits: u32,
    pub version: u32,
    pub lazy_refcounts: bool,
    pub refcount_order: u32,
    pub extended_l2: bool,
    pub zstd: bool,
    pub prealloc: Prealloc,
    pub data_file: Option<String>,
    pub data_file_raw: bool,
    pub backing_file: Option<String>,
    pub backing_fmt: Option<String>,
}

fn bad(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}

const V3_HINT: &str = "(use version=v3 or greater)";

impl Params {
    /// Reads and checks `-o` options with QEMU 10's rules and messages.
    pub fn from_options(o: &CreateOptions) -> Result<Params> {
        for k in o.keys() {
            if !CREATE_OPTS.iter().any(|d| d.name == k) {
                if k == "encryption" || k.starts_with("encrypt.") {
                    return Err(Error::Unsupported(
                        "creating encrypted qcow2 images is not supported".into(),
                    ));
                }
                return Err(bad(format!("Invalid parameter '{k}'")));
            }
        }
        let size = o
            .get_size(options::SIZE)?
            .ok_or_else(|| bad("Image creation needs a size parameter"))?;
        // qemu-img rounds the size up to whole 512-byte sectors.
        let size = size
            .checked_next_multiple_of(512)
            .ok_or_else(|| Error::TooLarge(format!("Image size {size} is too large")))?;
        let cluster_size = o.get_size(CLUSTER_SIZE)?.unwrap_or(65536);
        if !cluster_size.is_power_of_two()
            || !(1u64 << MIN_CLUSTER_BITS..=1u64 << MAX_CLUSTER_BITS).contains(&cluster_size)
        {
            return Err(bad(
                "Cluster size must be a power of two between 512 and 2048k",
            ));
        }
        let cluster_bits = cluster_size.trailing_zeros();
        let version = match o.get(COMPAT) {
            None | Some("1.1") | Some("v3") => 3,
            Some("0.10") | Some("v2") => 2,
            Some(v) => {
                return Err(bad(format!(
                    "Parameter 'version' does not accept value '{v}'"
                )))
            }
        };
        let lazy_refcounts = bool_opt(o, LAZY_REFCOUNTS)?;
        let extended_l2 = bool_opt(o, EXTENDED_L2)?;
        let data_file_raw = bool_opt(o, DATA_FILE_RAW)?;
        let refcount_bits = match o.get(REFCOUNT_BITS) {
            None => 16,
            Some(v) => v.trim().parse::<u64>().map_err(|_| {
                bad("Parameter 'refcount_bits' expects a non-negative number below 2^64")
            })?,
        };
        if !refcount_bits.is_power_of_two() || refcount_bits > 64 {
            return Err(bad(
                "Refcount width must be a power of two and may not exceed 64 bits",
            ));
        }
        let zstd = match o.get(COMPRESSION_TYPE) {
            None | Some("zlib") => false,
            Some("zstd") => true,
            Some(v) => {
                return Err(bad(format!(
                    "Parameter 'compression-type' does not accept value '{v}'"
                )))
            }
        };
        let mut prealloc = match o.get(PREALLOCATION) {
            None | Some("off") => Prealloc::Off,
            Some("metadata") => Prealloc::Metadata,
            Some("falloc") => Prealloc::Falloc,
            Some("full") => Prealloc::Full,
            Some(v) => {
                return Err(bad(format!(
                    "Parameter 'preallocation' does not accept value '{v}'"
                )))
            }
        };
        let data_file = o.get_str(DATA_FILE).map(str::to_owned);
        let backing_file = o.get_str(options::BACKING_FILE).map(str::to_owned);
        let backing_fmt = o.get_str(options::BACKING_FMT).map(str::to_owned);
        // The order of these checks is QEMU's (qcow2_co_create).
        if backing_fmt.is_some() && backing_file.is_none() {
            return Err(bad("Backing format cannot be used without backing file"));
        }
        if backing_file.is_some() && prealloc != Prealloc::Off && !extended_l2 {
            return Err(bad(
                "Backing file and preallocation can only be used at the same time if extended_l2 is on",
            ));
        }
        if version < 3 && lazy_refcounts {
            return Err(bad(format!(
                "Lazy refcounts only supported with compatibility level 1.1 and above {V3_HINT}"
            )));
        }
        if version < 3 && refcount_bits != 16 {
            return Err(bad(format!(
                "Different refcount widths than 16 bits require compatibility level 1.1 or above {V3_HINT}"
            )));
        }
        if version < 3 && data_file.is_some() {
            return Err(bad(format!(
                "External data files are only supported with compatibility level 1.1 and above {V3_HINT}"
            )));
        }
        if data_file_raw && data_file.is_none() {
            return Err(bad("data-file-raw requires data-file"));
        }
        if data_file_raw && backing_file.is_some() {
            return Err(bad(
                "Backing file and data-file-raw cannot be used at the same time",
            ));
        }
        // A raw data file must map 1:1 through the metadata too.
        if data_file_raw && prealloc == Prealloc::Off {
            prealloc = Prealloc::Metadata;
        }
        if version < 3 && extended_l2 {
            return Err(bad(format!(
                "Extended L2 entries are only supported with compatibility level 1.1 and above {V3_HINT}"
            )));
        }
        if extended_l2 && cluster_bits < MIN_EXTL2_CLUSTER_BITS {
            return Err(bad(format!(
                "Extended L2 entries are only supported with cluster sizes of at least {} bytes",
                1u64 << MIN_EXTL2_CLUSTER_BITS
            )));
        }
        if version < 3 && zstd {
            return Err(bad(format!(
                "Non-zlib compression type is only supported with compatibility level 1.1 and above {V3_HINT}"
            )));
        }
        if let Some(b) = &backing_file {
            if b.len() as u64 > MAX_BACKING_NAME as u64 {
                return Err(bad(format!(
                    "Backing file name too long (at most {MAX_BACKING_NAME} bytes)"
                )));
            }
        }
        if let Some(f) = &backing_fmt {
            if f.len() as u64 > MAX_BACKING_FMT as u64 {
                return Err(bad(format!("Backing format name '{f}' is too long")));
            }
        }
        Ok(Params {
            size,
            cluster_bits,
            version,
            lazy_refcounts,
            refcount_order: refcount_bits.trailing_zeros(),
            extended_l2,
            zstd,
            prealloc,
            data_file,
            data_file_raw,
            backing_file,
            backing_fmt,
        })
    }

    fn cs(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Guest clusters one L2 table maps.
    fn l2_entries(&self) -> u64 {
        self.cs() / if self.extended_l2 { 16 } else { 8 }
    }

    /// Clusters one refcount block describes.
    fn refblock_entries(&self) -> u64 {
        (self.cs() * 8) >> self.refcount_order
    }
}

fn bool_opt(o: &CreateOptions, key: &str) -> Result<bool> {
    o.get_bool(key)
        .map_err(|_| bad(format!("Parameter '{key}' expects 'on' or 'off'")))
        .map(|v| v.unwrap_or(false))
}

/// One L2 table: where it lives and the contiguous data run it maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct L2Plan {
    /// Host offset of the table (bytes).
    pub offset: u64,
    /// Its index in the L1 table.
    pub l1_index: u64,
    /// Runs of entries (first entry, count, host offset of the first
    /// entry's data); entry i of a run maps `host + (i - first) * cs`.
    pub runs: Vec<(u64, u64, u64)>,
}

/// Everything a new image holds, computed without I/O.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub cluster_bits: u32,
    /// Cluster 0: the header, its extensions and the backing file name.
    pub header: Vec<u8>,
    pub reftable_offset: u64,
    pub reftable_clusters: u64,
    /// Refcount block offsets by table index (0 = none).
    pub refblocks: Vec<u64>,
    pub l1_offset: u64,
    pub l1_size: u64,
    pub l2: Vec<L2Plan>,
    /// Clusters in use, as sorted disjoint intervals [start, end).
    pub used: Vec<(u64, u64)>,
    /// Refcount tables replaced while laying out (offset, entries as
    /// offsets): written first, as QEMU leaves them in freed clusters.
    pub stale_tables: Vec<(u64, Vec<u64>)>,
    /// Host data run to fill (falloc/full) in the data file or the image.
    pub data: Option<(u64, u64)>,
    /// Final length of the qcow2 file.
    pub file_len: u64,
    /// Length of the external data file.
    pub data_file_len: u64,
    pub refcount_order: u32,
    pub extended_l2: bool,
}

/// QEMU's cluster allocator as far as creation needs it (qcow2-refcount.c
/// behaviour, modelled): first fit from a moving "free cluster index",
/// refcount blocks allocated when a cluster needs one (retrying the
/// allocation as QEMU does on -EAGAIN), and the refcount table grown
/// through a self-describing "refcount area" past the clusters in use.
struct Alloc {
    cs_bits: u32,
    rb_entries: u64,
    /// Used clusters as disjoint intervals start -> end.
    used: BTreeMap<u64, u64>,
    free_index: u64,
    /// Refcount block cluster by table index (0 = none).
    refblocks: Vec<u64>,
    reftable: u64,
    reftable_clusters: u64,
    /// Replaced refcount tables (cluster, clusters, entries): QEMU frees
    /// them without clearing, so their old contents stay in the file.
    stale: Vec<(u64, u64, Vec<u64>)>,
}

impl Alloc {
    fn new(cs_bits: u32, rb_entries: u64) -> Self {
        let mut used = BTreeMap::new();
        used.insert(0, 3);
        Alloc {
            cs_bits,
            rb_entries,
            used,
            free_index: 3,
            refblocks: vec![2],
            reftable: 1,
            reftable_clusters: 1,
            stale: Vec::new(),
        }
    }

    fn mark(&mut self, start: u64, n: u64) {
        let mut s = start;
        let mut e = start + n;
        if let Some((&ps, &pe)) = self.used.range(..=s).next_back() {
            if pe >= s {
                s = ps;
                e = e.max(pe);
            }
        }
        while let Some((&ns, &ne)) = self.used.range(s..).next() {
            if ns > e {
                break;
            }
            e = e.max(ne);
            self.used.remove(&ns);
        }
        self.used.insert(s, e);
    }

    fn unmark(&mut self, start: u64, n: u64) {
        let end = start + n;
        let hits: Vec<(u64, u64)> = self
            .used
            .range(..end)
            .filter(|(_, &e)| e > start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in hits {
            self.used.remove(&s);
            if s < start {
                self.used.insert(s, start);
            }
            if e > end {
                self.used.insert(end, e);
            }
        }
    }

    /// First run of `n` free clusters at or after `from`.
    fn find_free(&self, from: u64, n: u64) -> u64 {
        let mut c = from;
        if let Some((_, &e)) = self.used.range(..=c).next_back() {
            c = c.max(e);
        }
        for (&s, &e) in self.used.range(c..) {
            if s >= c + n {
                break;
            }
            c = c.max(e);
        }
        c
    }

    fn block(&self, idx: u64) -> u64 {
        self.refblocks.get(idx as usize).copied().unwrap_or(0)
    }

    fn table_capacity(&self) -> u64 {
        (self.reftable_clusters << self.cs_bits) / 8
    }

    fn check_size(&self, end: u64) -> Result<()> {
        if end
            .checked_shl(self.cs_bits)
            .is_none_or(|b| b >> self.cs_bits != end)
        {
            return Err(Error::TooLarge(
                "the image layout exceeds 2^64 bytes".into(),
            ));
        }
        Ok(())
    }

    /// `n` contiguous clusters (qcow2_alloc_clusters).
    fn alloc(&mut self, n: u64) -> Result<u64> {
        loop {
            let p = self.find_free(self.free_index, n);
            self.check_size(p + n)?;
            self.free_index = p + n;
            let missing =
                (p / self.rb_entries..=(p + n - 1) / self.rb_entries).find(|&i| self.block(i) == 0);
            let Some(idx) = missing else {
                self.mark(p, n);
                return Ok(p);
            };
            let q = p.max(idx * self.rb_entries);
            self.new_block(idx, q)?;
            // QEMU then searches again from where this attempt started.
            self.free_index = self.free_index.min(p);
        }
    }

    /// A refcount block for table index `idx`, needed for cluster `q`
    /// (alloc_refcount_block).
    fn new_block(&mut self, idx: u64, q: u64) -> Result<()> {
        let nb = self.find_free(self.free_index, 1);
        self.check_size(nb + 1)?;
        self.free_index = nb + 1;
        if nb / self.rb_entries != idx && self.block(nb / self.rb_entries) == 0 {
            // Described by a block that does not exist yet either.
            self.new_block(nb / self.rb_entries, nb)?;
        }
        self.mark(nb, 1);
        if idx < self.table_capacity() {
            if self.refblocks.len() <= idx as usize {
                self.refblocks.resize(idx as usize + 1, 0);
            }
            self.refblocks[idx as usize] = nb;
            return Ok(());
        }
        let blocks_used = (q + 1).max(nb + 1).div_ceil(self.rb_entries);
        self.refcount_area(blocks_used * self.rb_entries, 0, false, Some((idx, nb)))?;
        Ok(())
    }

    /// QEMU's qcow2_refcount_area: new refcount blocks for every range
    /// from `start` on that has none, then a new refcount table, all
    /// describing themselves; the old table is freed. Returns the first
    /// cluster after the area.
    fn refcount_area(
        &mut self,
        start: u64,
        additional: u64,
        exact: bool,
        new_block: Option<(u64, u64)>,
    ) -> Result<u64> {
        let cs = 1u64 << self.cs_bits;
        let per_table_cluster = cs / 8;
        let (total, _) = refcount_metadata(
            start + additional,
            self.rb_entries,
            per_table_cluster,
            !exact,
        );
        let area_index = start / self.rb_entries;
        let mut table_size = if exact {
            total
        } else {
            total + total.div_ceil(2)
        };
        table_size = table_size.next_multiple_of(per_table_cluster);
        let table_clusters = table_size / per_table_cluster;
        if table_clusters << self.cs_bits > MAX_REFTABLE_BYTES {
            return Err(Error::TooLarge(
                "the refcount table would exceed 8 MiB; use a larger cluster size".into(),
            ));
        }
        let mut table = self.refblocks.clone();
        table.resize(table_size.max(table.len() as u64) as usize, 0);
        table.truncate(table_size as usize);
        if let Some((i, b)) = new_block {
            table[i as usize] = b;
        }
        let mut at = start;
        for e in table
            .iter_mut()
            .take(total as usize)
            .skip(area_index as usize)
        {
            if *e == 0 {
                *e = at;
                at += 1;
            }
        }
        let table_at = at;
        let end = table_at + table_clusters;
        self.check_size(end)?;
        self.mark(start, end - start);
        let (old, old_n) = (self.reftable, self.reftable_clusters);
        let mut old_entries = std::mem::replace(&mut self.refblocks, table);
        old_entries.truncate(((old_n << self.cs_bits) / 8) as usize);
        self.stale.push((old, old_n, old_entries));
        self.reftable = table_at;
        self.reftable_clusters = table_clusters;
        self.unmark(old, old_n);
        self.free_index = self.free_index.min(old);
        Ok(end)
    }
}

/// QEMU's `qcow2_refcount_metadata_size`: refcount blocks and table
/// clusters needed to cover `clusters` plus themselves (`generous`: room
/// for half the table again). `ops::measure` sizes images with it too.
pub fn refcount_metadata(
    mut clusters: u64,
    rb_entries: u64,
    rt_per_cluster: u64,
    mut generous: bool,
) -> (u64, u64) {
    let (mut blocks, mut table, mut n) = (0u64, 0u64, 0u64);
    loop {
        let last = n;
        blocks = (clusters + table + blocks).div_ceil(rb_entries);
        table = blocks.div_ceil(rt_per_cluster);
        n = clusters + blocks + table;
        if n == last && generous {
            clusters += table.div_ceil(2);
            n = 0;
            generous = false;
            continue;
        }
        if n == last {
            return (blocks, table);
        }
    }
}

/// Clusters QEMU's preallocation asks for at once (INT_MAX bytes, aligned).
fn max_request(cb: u32) -> u64 {
    ((i32::MAX as u64) >> cb).max(1)
}

impl Layout {
    pub fn compute(p: &Params) -> Result<Layout> {
        let cs = p.cs();
        let cb = p.cluster_bits;
        let l2_entries = p.l2_entries();
        let guest_clusters = p.size.div_ceil(cs);
        let l1_size = guest_clusters.div_ceil(l2_entries);
        if l1_size * 8 > MAX_L1_BYTES {
            return Err(Error::TooLarge(format!(
                "virtual size {} needs an L1 table of {} bytes (at most {MAX_L1_BYTES}); use a larger cluster size",
                p.size,
                l1_size * 8
            )));
        }
        let mut a = Alloc::new(cb, p.refblock_entries());
        let l1_clusters = (l1_size * 8).div_ceil(cs);
        let l1_offset = if l1_size > 0 {
            a.alloc(l1_clusters)? << cb
        } else {
            0
        };
        let mut l2 = Vec::new();
        let mut data = None;
        let ext = p.data_file.is_some();
        let data_file_len = if ext { p.size } else { 0 };
        // The file ends at the last cluster written, or where the L1 table
        // ends (QEMU writes the table, not its whole cluster).
        let l1_end = if l1_size > 0 {
            l1_offset + l1_size * 8
        } else {
            3 * cs
        };
        match p.prealloc {
            Prealloc::Off => {}
            Prealloc::Falloc | Prealloc::Full if !ext => {
                // QEMU's refcount area at the end of the file, then data.
                let start = l1_end.div_ceil(cs);
                let new_l2 = guest_clusters.div_ceil(l2_entries) + 1;
                let data_start = a.refcount_area(start, guest_clusters + new_l2, true, None)?;
                a.check_size(data_start + guest_clusters)?;
                a.mark(data_start, guest_clusters);
                data = Some((data_start << cb, guest_clusters << cb));
                for i in 0..l1_size {
                    let at = a.alloc(1)?;
                    let first = i * l2_entries;
                    let n = l2_entries.min(guest_clusters - first);
                    l2.push(L2Plan {
                        offset: at << cb,
                        l1_index: i,
                        runs: vec![(0, n, (data_start + first) << cb)],
                    });
                }
            }
            _ => {
                // metadata, or any mode with an external data file: L2
                // tables (and in the image, their data) in guest order.
                let chunk = max_request(cb);
                for i in 0..l1_size {
                    let at = a.alloc(1)?;
                    let first = i * l2_entries;
                    let n = l2_entries.min(guest_clusters - first);
                    let mut runs = Vec::new();
                    if ext {
                        runs.push((0, n, first << cb));
                    } else {
                        let mut done = 0;
                        while done < n {
                            let k = chunk.min(n - done);
                            let h = a.alloc(k)?;
                            match runs.last_mut() {
                                Some((_, len, host)) if *host + (*len << cb) == h << cb => {
                                    *len += k
                                }
                                _ => runs.push((done, k, h << cb)),
                            }
                            done += k;
                        }
                    }
                    l2.push(L2Plan {
                        offset: at << cb,
                        l1_index: i,
                        runs,
                    });
                }
                if ext && p.prealloc != Prealloc::Metadata {
                    data = Some((0, p.size));
                }
            }
        }
        // Every cluster in use is written (metadata) or reserved (data).
        let last_used = a.used.iter().next_back().map_or(3, |(_, &e)| e);
        let l1_last = if l1_size > 0 {
            (l1_offset >> cb) + l1_clusters
        } else {
            0
        };
        let file_len = if last_used == l1_last {
            l1_end.max(3 * cs)
        } else {
            (last_used << cb).max(l1_end)
        };
        let mut header =
            Layout::header(p, l1_offset, l1_size, a.reftable << cb, a.reftable_clusters)?;
        header.resize(cs as usize, 0);
        Ok(Layout {
            cluster_bits: cb,
            header,
            reftable_offset: a.reftable << cb,
            reftable_clusters: a.reftable_clusters,
            refblocks: a.refblocks.iter().map(|&b| b << cb).collect(),
            l1_offset,
            l1_size,
            l2,
            used: a.used.into_iter().collect(),
            stale_tables: a
                .stale
                .iter()
                .map(|(at, _, e)| (at << cb, e.iter().map(|&b| b << cb).collect()))
                .collect(),
            data,
            file_len,
            data_file_len,
            refcount_order: p.refcount_order,
            extended_l2: p.extended_l2,
        })
    }

    /// The header, its extensions and the backing file name, as QEMU
    /// writes them (the feature name table only in v3 images with clusters
    /// of 8 KiB or more, as QEMU 10 does).
    fn header(
        p: &Params,
        l1_offset: u64,
        l1_size: u64,
        rt: u64,
        rt_clusters: u64,
    ) -> Result<Vec<u8>> {
        let hlen: usize = if p.version >= 3 { 112 } else { 72 };
        let mut h = vec![0u8; hlen];
        h[0..4].copy_from_slice(MAGIC);
        BigEndian::write_u32(&mut h[4..], p.version);
        BigEndian::write_u32(&mut h[20..], p.cluster_bits);
        BigEndian::write_u64(&mut h[24..], p.size);
        BigEndian::write_u32(&mut h[36..], l1_size as u32);
        BigEndian::write_u64(&mut h[40..], l1_offset);
        BigEndian::write_u64(&mut h[48..], rt);
        BigEndian::write_u32(&mut h[56..], rt_clusters as u32);
        if p.version >= 3 {
            let mut incompat = 0;
            if p.data_file.is_some() {
                incompat |= INCOMPAT_DATA_FILE;
            }
            if p.zstd {
                incompat |= INCOMPAT_COMPRESSION;
            }
            if p.extended_l2 {
                incompat |= INCOMPAT_EXTL2;
            }
            BigEndian::write_u64(&mut h[72..], incompat);
            let compat = if p.lazy_refcounts {
                COMPAT_LAZY_REFCOUNTS
            } else {
                0
            };
            BigEndian::write_u64(&mut h[80..], compat);
            let autoclear = if p.data_file_raw {
                AUTOCLEAR_DATA_FILE_RAW
            } else {
                0
            };
            BigEndian::write_u64(&mut h[88..], autoclear);
            BigEndian::write_u32(&mut h[96..], p.refcount_order);
            BigEndian::write_u32(&mut h[100..], hlen as u32);
            h[104] = p.zstd as u8;
        }
        let ext = |h: &mut Vec<u8>, magic: u32, data: &[u8]| {
            let mut e = [0u8; 8];
            BigEndian::write_u32(&mut e[0..], magic);
            BigEndian::write_u32(&mut e[4..], data.len() as u32);
            h.extend_from_slice(&e);
            h.extend_from_slice(data);
            h.resize(h.len().next_multiple_of(8), 0);
        };
        if let Some(f) = &p.backing_fmt {
            ext(&mut h, EXT_BACKING_FMT, f.as_bytes());
        }
        if let Some(d) = &p.data_file {
            ext(&mut h, EXT_DATA_FILE, d.as_bytes());
        }
        if p.version >= 3 && p.cluster_bits >= 13 {
            ext(&mut h, EXT_FEATURE_TABLE, &feature_table());
        }
        h.extend_from_slice(&[0u8; 8]);
        if let Some(b) = &p.backing_file {
            let off = h.len() as u64;
            BigEndian::write_u64(&mut h[8..], off);
            BigEndian::write_u32(&mut h[16..], b.len() as u32);
            h.extend_from_slice(b.as_bytes());
        }
        if h.len() as u64 > p.cs() {
            return Err(bad(format!(
                "the header, its extensions and the backing file name ({} bytes) do not fit in one cluster ({} bytes)",
                h.len(),
                p.cs()
            )));
        }
        Ok(h)
    }

    /// Refcount block `idx` as bytes: refcount 1 for every cluster in use.
    fn refblock_bytes(&self, idx: u64) -> Vec<u8> {
        let cs = 1usize << self.cluster_bits;
        let mut b = vec![0u8; cs];
        let entries = (cs as u64 * 8) >> self.refcount_order;
        let bits = 1u64 << self.refcount_order;
        let first = idx * entries;
        let last = first + entries;
        let from = self.used.partition_point(|&(_, e)| e <= first);
        for &(s, e) in &self.used[from..] {
            if s >= last {
                break;
            }
            for c in s.max(first)..e.min(last) {
                // Entries narrower than a byte fill each byte from its least
                // significant bit; wider ones are big endian.
                let i = c - first;
                if bits < 8 {
                    let bit = i * bits;
                    b[(bit / 8) as usize] |= 1 << (bit % 8);
                } else {
                    b[((i + 1) * bits / 8 - 1) as usize] |= 1;
                }
            }
        }
        b
    }

    /// L2 table bytes.
    fn l2_bytes(&self, t: &L2Plan) -> Vec<u8> {
        let cs = 1u64 << self.cluster_bits;
        let mut b = vec![0u8; cs as usize];
        let w = if self.extended_l2 { 16 } else { 8 };
        for &(first, n, host) in &t.runs {
            for i in 0..n {
                let e = (host + i * cs) | OFLAG_COPIED;
                BigEndian::write_u64(&mut b[((first + i) * w) as usize..], e);
                // Extended L2: the subcluster bitmap stays 0 (host space
                // reserved, the guest sees zeros or the backing file), as
                // QEMU leaves it.
            }
        }
        b
    }
}

/// QEMU 10's feature name table.
pub(super) fn feature_table() -> Vec<u8> {
    let rows: [(u8, u64, &str); 8] = [
        (0, INCOMPAT_DIRTY, "dirty bit"),
        (0, INCOMPAT_CORRUPT, "corrupt bit"),
        (0, INCOMPAT_DATA_FILE, "external data file"),
        (0, INCOMPAT_COMPRESSION, "compression type"),
        (0, INCOMPAT_EXTL2, "extended L2 entries"),
        (1, COMPAT_LAZY_REFCOUNTS, "lazy refcounts"),
        (2, AUTOCLEAR_BITMAPS, "bitmaps"),
        (2, AUTOCLEAR_DATA_FILE_RAW, "raw external data"),
    ];
    let mut t = Vec::with_capacity(rows.len() * 48);
    for (kind, bit, name) in rows {
        let mut e = [0u8; 48];
        e[0] = kind;
        e[1] = bit.trailing_zeros() as u8;
        e[2..2 + name.len()].copy_from_slice(name.as_bytes());
        t.extend_from_slice(&e);
    }
    t
}

/// Writes `l` into the empty `file` (and `data`, the external data file,
/// if any): data area and tables first, the header last, so an image cut
/// short has no valid header.
pub fn write(
    l: &Layout,
    prealloc: Prealloc,
    file: &dyn BlockFile,
    data: Option<&dyn BlockFile>,
) -> Result<()> {
    let cs = 1u64 << l.cluster_bits;
    if let Some(d) = data {
        d.set_len(0)?;
        d.set_len(l.data_file_len)?;
    }
    if let Some((off, len)) = l.data {
        let target: &dyn BlockFile = data.unwrap_or(file);
        if matches!(prealloc, Prealloc::Falloc | Prealloc::Full) {
            crate::io::write_zeroes_by_writing(target, off, len)?;
        }
    }
    file.set_len(l.file_len)?;
    for (at, entries) in &l.stale_tables {
        let mut t = vec![0u8; entries.len() * 8];
        for (i, &b) in entries.iter().enumerate() {
            BigEndian::write_u64(&mut t[i * 8..], b);
        }
        file.write_at(&t, *at)?;
    }
    for t in &l.l2 {
        file.write_at(&l.l2_bytes(t), t.offset)?;
    }
    if l.l1_size > 0 {
        let mut l1 = vec![0u8; (l.l1_size * 8) as usize];
        for t in &l.l2 {
            BigEndian::write_u64(
                &mut l1[(t.l1_index * 8) as usize..],
                t.offset | OFLAG_COPIED,
            );
        }
        file.write_at(&l1, l.l1_offset)?;
    }
    for (i, &b) in l.refblocks.iter().enumerate() {
        if b != 0 {
            file.write_at(&l.refblock_bytes(i as u64), b)?;
        }
    }
    let mut rt = vec![0u8; (l.reftable_clusters * cs) as usize];
    for (i, &b) in l.refblocks.iter().enumerate() {
        BigEndian::write_u64(&mut rt[i * 8..], b);
    }
    file.write_at(&rt, l.reftable_offset)?;
    if let Some(d) = data {
        d.flush()?;
    }
    file.flush()?;
    file.write_at(&l.header, 0)?;
    file.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(s: &str) -> Result<Params> {
        let mut o = CreateOptions::new();
        o.parse_into(s)?;
        Params::from_options(&o)
    }

    #[test]
    fn refusals_name_the_problem() {
        let cases = [
            ("size=1M,cluster_size=1000", "power of two"),
            ("size=1M,compat=0.10,lazy_refcounts=on", "Lazy refcounts"),
            (
                "size=1M,compat=0.10,refcount_bits=8",
                "Different refcount widths",
            ),
            ("size=1M,refcount_bits=3", "Refcount width"),
            ("size=1M,extended_l2=on,cluster_size=8k", "at least 16384"),
            (
                "size=1M,data_file_raw=on",
                "data-file-raw requires data-file",
            ),
            ("size=1M,compression_type=lz4", "compression-type"),
            ("size=1M,backing_fmt=raw", "Backing format cannot"),
            ("size=1M,foo=1", "Invalid parameter 'foo'"),
            ("cluster_size=64k", "needs a size"),
        ];
        for (o, want) in cases {
            let e = params(o).unwrap_err().to_string();
            assert!(e.contains(want), "{o}: {e}");
        }
    }

    #[test]
    fn default_layout_is_qemus() {
        let l = Layout::compute(&params("size=100M").unwrap()).unwrap();
        assert_eq!(l.l1_offset, 3 << 16);
        assert_eq!(l.l1_size, 1);
        assert_eq!(l.file_len, (3 << 16) + 8);
        assert_eq!(l.used, vec![(0, 4)]);
    }

    #[test]
    fn falloc_refcount_area() {
        // qemu-img create -o cluster_size=4096,preallocation=falloc 100M:
        // blocks 4..15, table at 16, data from 17, first L2 in cluster 1.
        let l = Layout::compute(&params("size=100M,cluster_size=4k,preallocation=falloc").unwrap())
            .unwrap();
        assert_eq!(l.reftable_offset, 16 << 12);
        assert_eq!(l.refblocks[1], 4 << 12);
        assert_eq!(l.data, Some((17 << 12, 25600 << 12)));
        assert_eq!(l.l2[0].offset, 1 << 12);
        assert_eq!(l.l2[1].offset, 25617 << 12);
    }

    #[test]
    fn metadata_refblock_placement() {
        // 512-byte clusters, 1M: QEMU puts blocks at 264 and 525.
        let l =
            Layout::compute(&params("size=1M,cluster_size=512,preallocation=metadata").unwrap())
                .unwrap();
        assert_eq!(l.refblocks[1], 264 << 9);
        assert_eq!(l.refblocks[2], 525 << 9);
        assert_eq!(l.l2[4].offset, 265 << 9);
    }
}
