//! qcow2, read side: every image qemu-img makes (v2 and v3, 512 B to 2 MiB
//! clusters, any refcount width, zero and compressed clusters, extended L2
//! entries, external data files, internal snapshots) reads back as
//! `qemu-img convert -O raw` does.
//!
//! Read-write opens (v2 and v3, extended L2, external data files) write
//! through `write` (allocation, refcounts, ordered write-back, repair of
//! dirty images). Images with the corrupt bit are refused for writing and
//! open read-only with a warning (`Image::warnings`);
//! unknown incompatible features are refused by name (from the image's
//! feature name table); encrypted images are refused as unsupported.
//!
//! Modules: `header` (cluster 0, extensions, limits), `features`, `l2`
//! (entry decoding), `compress`, `snapshot`, `cache` (bounded L2 cache).
//! Parsers take byte slices; file I/O stays in this file.
//!
//! The L1 table is swapped whole when a resize moves it; L2 tables are
//! immutable `Arc`s in a cache that holds dirty versions (see `cache`), and
//! `map` reports COPIED (`in_place`) and preallocated space
//! (`Extent::reserved`).

mod amend;
pub mod bitmaps;
mod bitmaps_write;
pub mod cache;
pub mod check;
pub mod compress;
mod compress_write;
pub mod create;
pub mod features;
pub mod header;
mod kv;
pub mod l1;
pub mod l2;
mod lazy;
mod nb;
pub mod open_opts;
mod overlap;
pub mod refcount;
mod repair;
pub mod snapshot;
mod snapshot_write;
#[cfg(test)]
mod tests;
mod write;

use super::info::InfoValue;
use super::{
    resolve_relative, BackingSpec, CreateCtx, Driver, Extent, Format, FormatInfo, Mapping,
    OldReader, OpenCtx, SnapshotInfo,
};
use crate::error::{Error, Result};
use crate::io::{Access, BlockFile, IoVec, NotOpened};
use arc_swap::ArcSwap;
use byteorder::{BigEndian, ByteOrder};
use cache::{Table, TableCache};
use header::{Compression, Header};
use l1::L1Table;
use l2::{Geometry, Kind, OFFSET_MASK, OFLAG_COPIED};
use snapshot::Snapshot;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use write::Meta;

/// QEMU's default L2 cache limit (Linux): 32 MiB, or less when that
/// covers the whole disk; never less than two tables.
pub const DEFAULT_L2_CACHE_BYTES: u64 = 32 << 20;
pub const MIN_L2_CACHE_TABLES: usize = 2;

pub static DRIVER: Driver = Driver {
    name: "qcow2",
    probe: |buf, _| header::probe(buf),
    create,
    open,
    create_opts: &create::CREATE_OPTS,
    supports_backing: true,
};

/// Creates an image (see `create`): the file is removed again if anything
/// fails, so no half-written image is left that looks valid.
fn create(ctx: &CreateCtx) -> Result<()> {
    let p = create::Params::from_options(ctx.opts)?;
    let layout = create::Layout::compute(&p)?;
    let st = ctx.storage;
    let data_path = p
        .data_file
        .as_deref()
        .map(|d| resolve_relative(ctx.path, d));
    if let Some(dp) = &data_path {
        if st.canonical(dp) == st.canonical(ctx.path) {
            return Err(Error::InvalidArgument(
                "the data file cannot be the image file itself".into(),
            ));
        }
    }
    let data_existed = data_path.as_ref().is_some_and(|d| st.exists(d));
    let file = st.create(ctx.path, true)?;
    let result = (|| {
        let data = match &data_path {
            Some(dp) => Some(st.create(dp, true)?),
            None => None,
        };
        create::write(&layout, p.prealloc, &*file, data.as_deref())
    })();
    if result.is_err() {
        drop(file);
        let _ = st.remove(ctx.path);
        if let (Some(dp), false) = (&data_path, data_existed) {
            let _ = st.remove(dp);
        }
    }
    result
}

/// An open qcow2 image (read-only).
pub struct Qcow2 {
    file: Arc<dyn BlockFile>,
    /// The external data file, or `file`.
    data: Arc<dyn BlockFile>,
    data_file_path: Option<PathBuf>,
    header: Header,
    geo: Geometry,
    size: AtomicU64,
    /// The L1 table in use (active or a snapshot's), read on demand;
    /// swapped whole when a resize moves it.
    l1: ArcSwap<L1Table>,
    l2_cache: TableCache,
    /// The snapshot table (replaced whole by the write side).
    snapshots: ArcSwap<Vec<Snapshot>>,
    /// The persistent bitmap directory (for `info`).
    bitmaps: Vec<bitmaps::Bitmap>,
    /// Where the image was opened (backing names are relative to it).
    path: PathBuf,
    /// Swapped by `rebase` (`set_backing`).
    backing: ArcSwap<Option<BackingSpec>>,
    warnings: Vec<String>,
    /// Whether the image looks metadata-preallocated (QEMU's heuristic,
    /// computed on first use): block status then asks the data file about
    /// holes under data clusters.
    prealloc: OnceLock<bool>,
    /// The write side's state; `None` on a read-only open.
    meta: Option<Mutex<Meta>>,
    /// Read-only: opened so, or stopped after corruption or a failed
    /// write-back.
    ro: AtomicBool,
    /// The incompatible feature bits as on disk.
    incompat: AtomicU64,
    /// A length the image file is known to have reached (it never shrinks
    /// while open), so `check_in_file` rarely asks the file.
    known_len: AtomicU64,
    /// Readers of the metadata store hold it shared, a change exclusive
    /// (`kv.rs`).
    kv_lock: std::sync::RwLock<()>,
    /// Overlap checks (open_opts::OL_* bits) of a read-write open.
    overlap: u32,
    /// The snapshots' L2 tables (only with overlap-check=all; rebuilt
    /// when the snapshot table changes).
    inactive_l2: std::sync::RwLock<HashSet<u64>>,
    /// This open set the dirty bit (lazy refcounts): a clean close may
    /// clear it. A bit found set at open is cleared only by a repair.
    dirtied: AtomicBool,
}

fn open(ctx: &OpenCtx) -> Result<Box<dyn Format>> {
    Ok(Box::new(Qcow2::open(ctx)?))
}

impl Qcow2 {
    pub fn open(ctx: &OpenCtx) -> Result<Qcow2> {
        let file = ctx.file.clone();
        let file_len = file.len()?;
        let mut first = [0u8; 104];
        file.read_at(&mut first, 0)?;
        let cluster_bits = Header::peek_cluster_bits(&first)?;
        let mut c0 = vec![0u8; 1 << cluster_bits];
        file.read_at(&mut c0, 0)?;
        let h = Header::parse(&c0)?;
        // A repair open (`check -r`) may write an image marked corrupt.
        Self::check_features(&h, ctx.read_only || ctx.repair)?;
        let mut warnings = Vec::new();
        if h.incompatible & features::INCOMPAT_CORRUPT != 0 {
            warnings.push(
                "the image is marked corrupt (opened read-only; its data may be wrong; \
                 'qemu-img check -r all' repairs it)"
                    .to_string(),
            );
        }
        let geo = Geometry {
            cluster_bits,
            extended: h.extended_l2(),
            data_file: h.has_data_file(),
        };
        let (data, data_file_path) = if h.has_data_file() {
            let name = h.data_file.as_deref().ok_or_else(|| {
                Error::Corrupt("the image uses an external data file but does not name it".into())
            })?;
            if ctx.metadata_only {
                // As qemu-img info: the data file is named, not opened.
                let p = resolve_relative(ctx.path, name);
                let f: Arc<dyn BlockFile> = Arc::new(NotOpened::new(p.display().to_string()));
                (f, Some(p))
            } else {
                // Opened for writing with the image (guest data goes there).
                let access = if ctx.read_only {
                    Access::ReadOnly
                } else {
                    Access::ReadWrite
                };
                let (f, p) = ctx
                    .open_named(name, access)
                    .map_err(|e| e.context(format!("external data file '{name}'")))?;
                (f, Some(p))
            }
        } else {
            (file.clone(), None)
        };
        let snapshots = if h.nb_snapshots > 0 {
            let read = |buf: &mut [u8], off: u64| file.read_at(buf, off);
            snapshot::read_table(&read, h.snapshots_offset, h.nb_snapshots)?
        } else {
            Vec::new()
        };
        // At a snapshot: its L1 table under the current virtual size, as
        // `qemu-img convert -l` (QEMU's load_tmp keeps the size).
        let size = h.size;
        let (l1_off, l1_size) = match ctx.snapshot {
            None => (h.l1_table_offset, h.l1_size as u64),
            Some(want) => {
                let i = want
                    .find(snapshots.iter().map(|s| (s.id.as_str(), s.name.as_str())))
                    .ok_or_else(|| {
                        Error::NotFound(format!(
                            "snapshot {want} (the image has {})",
                            snapshots.len()
                        ))
                    })?;
                let s = &snapshots[i];
                snapshot::check_l1(s, cluster_bits)?;
                (s.l1_table_offset, s.l1_size as u64)
            }
        };
        // Nothing of the L1 table is read yet: open costs the same for any
        // virtual size (entries past the end of the file read as 0).
        let l1 = L1Table::new(file.clone(), l1_off, l1_size, file_len);
        let oo = open_opts::parse(ctx.format_opts, ctx.cache_size, size, geo)?;
        let tables = (oo.l2_tables.min(usize::MAX as u64) as usize).max(MIN_L2_CACHE_TABLES);
        // The directory is bounded by the extension's limits (header.rs);
        // QEMU reads it at open too.
        let bitmaps = match &h.bitmaps {
            Some(b) => {
                let mut dir = vec![0u8; b.dir_size as usize];
                file.read_at(&mut dir, b.dir_offset)?;
                bitmaps::parse_directory(&dir, b.nb_bitmaps)?
            }
            None => Vec::new(),
        };
        let backing = h.backing_file.as_ref().map(|name| BackingSpec {
            name: name.clone(),
            path: resolve_relative(ctx.path, name),
            format: h.backing_fmt.clone(),
        });
        let incompat = AtomicU64::new(h.incompatible);
        let mut q = Qcow2 {
            file,
            data,
            data_file_path,
            geo,
            size: AtomicU64::new(size),
            l1: ArcSwap::from_pointee(l1),
            l2_cache: TableCache::new(tables),
            snapshots: ArcSwap::from_pointee(snapshots),
            bitmaps,
            path: ctx.path.to_path_buf(),
            backing: ArcSwap::from_pointee(backing),
            warnings,
            header: h,
            prealloc: OnceLock::new(),
            meta: None,
            ro: AtomicBool::new(ctx.read_only),
            incompat,
            known_len: AtomicU64::new(file_len),
            kv_lock: std::sync::RwLock::new(()),
            overlap: oo.overlap,
            inactive_l2: Default::default(),
            dirtied: AtomicBool::new(false),
        };
        if !ctx.read_only {
            q.open_for_writing(oo.refcount_blocks, ctx.repair)?;
        }
        Ok(q)
    }

    /// Prepares a read-write open: checks what the write side needs, loads
    /// the refcount table and, before the first write, clears the
    /// autoclear bits this build does not know (as QEMU does on a
    /// read-write open) and marks the persistent bitmaps in use, since
    /// our writes do not update them (`bitmaps_write.rs`).
    fn open_for_writing(&mut self, refcount_blocks: Option<u64>, repair: bool) -> Result<()> {
        if !self.l1.load().fully_stored() {
            return Err(Error::Corrupt(
                "the active L1 table runs past the end of the image file".into(),
            ));
        }
        let rt = self.load_refcount_table()?;
        let cs = self.cs();
        let blocks = refcount_blocks.unwrap_or((1u64 << 20) / cs);
        self.load_overlap_extents()?;
        self.meta = Some(Mutex::new(Meta::new(
            rt,
            self.header.refcount_table_offset,
            self.header.refcount_table_clusters as u64,
            blocks.min(1 << 16) as usize,
        )));
        self.init_snapshot_table()?;
        // As QEMU in check mode: a dirty image is left to the check.
        if self.header.incompatible & features::INCOMPAT_DIRTY != 0 && !repair {
            self.rebuild_refcounts()
                .map_err(|e| e.context("repairing the refcounts of an image not closed cleanly"))?;
        }
        let keep = self.header.autoclear
            & (features::AUTOCLEAR_DATA_FILE_RAW | features::AUTOCLEAR_BITMAPS);
        // A repair open (`check -r`) writes no guest data: the bitmaps stay
        // valid, as QEMU leaves them.
        if !repair {
            self.mark_bitmaps_in_use()?;
        }
        if self.header.version >= 3 && keep != self.header.autoclear {
            let mut b = [0u8; 8];
            BigEndian::write_u64(&mut b, keep);
            self.file.write_at(&b, 88)?;
            self.file.flush()?;
            self.header.autoclear = keep;
        }
        Ok(())
    }

    /// Refuses what this build cannot read or must not write.
    fn check_features(h: &Header, read_only: bool) -> Result<()> {
        let unknown = h.incompatible & !features::INCOMPAT_KNOWN;
        if unknown != 0 {
            return Err(Error::Unsupported(format!(
                "Unsupported qcow2 feature(s): {}",
                features::describe_incompatible(unknown, &h.feature_names)
            )));
        }
        if h.crypt_method != header::CRYPT_NONE {
            let what = match h.crypt_method {
                header::CRYPT_AES => "AES".to_string(),
                header::CRYPT_LUKS => "LUKS".to_string(),
                m => format!("method {m}"),
            };
            return Err(Error::Unsupported(format!(
                "encrypted qcow2 images ({what}) cannot be read by this library"
            )));
        }
        if !read_only {
            let why = if h.incompatible & features::INCOMPAT_CORRUPT != 0 {
                Some("it is marked corrupt ('qemu-img check -r all' repairs it)")
            } else {
                None
            };
            if let Some(why) = why {
                return Err(Error::ReadOnly(format!(
                    "cannot open the qcow2 image for writing: {why}; open it read-only"
                )));
            }
        }
        Ok(())
    }

    fn cs(&self) -> u64 {
        1 << self.geo.cluster_bits
    }

    /// The L2 table at host offset `off`, checked and cached.
    fn l2_table(&self, off: u64, l1_index: u64) -> Result<Table> {
        let cs = self.cs();
        if !off.is_multiple_of(cs) {
            return Err(Error::Corrupt(format!(
                "L2 table offset {off:#x} is not cluster aligned (L1 index {l1_index})"
            )));
        }
        self.l2_cache.get(off, || {
            let flen = self.file.len()?;
            if off.checked_add(cs).is_none_or(|end| end > flen) {
                return Err(Error::Corrupt(format!(
                    "L2 table at {off:#x} (L1 index {l1_index}) lies outside the image file ({flen} bytes)"
                )));
            }
            let mut raw = vec![0u8; cs as usize];
            self.file.read_at(&mut raw, off)?;
            Ok(raw.chunks_exact(8).map(BigEndian::read_u64).collect())
        })
    }

    fn l1_entry(&self, index: u64) -> Result<u64> {
        self.l1.load().entry(index)
    }

    /// `map` for the run `[off, end)` inside the L2 table `table`.
    fn map_in_table(&self, table: &[u64], off: u64, end: u64, l1_index: u64) -> Result<Extent> {
        let cs = self.cs();
        let (entry, first) = self.unit(table, off);
        self.check_unit(first, off, l1_index)?;
        if let Kind::Compressed { host, csize } = first {
            let cend = (off / cs + 1) * cs;
            return Ok(Extent::new(
                Mapping::Compressed { host, csize },
                end.min(cend) - off,
            ));
        }
        let copied = entry & OFLAG_COPIED;
        // The host offset of `off` for kinds with a host cluster.
        let host_at = |k: Kind, p: u64| k.host_cluster().map(|h| h + p % cs);
        let first_host = host_at(first, off);
        let unit_bits = self.geo.unit_bits();
        let mut pos = ((off >> unit_bits) + 1) << unit_bits;
        while pos < end {
            let (e, k) = self.unit(table, pos);
            if !k.same_class(first)
                || e & OFLAG_COPIED != copied
                || first_host.map(|h| h + (pos - off)) != host_at(k, pos)
            {
                break;
            }
            pos += 1 << unit_bits;
        }
        let n = pos.min(end) - off;
        if let (Kind::Normal(_), Some(h)) = (first, first_host) {
            self.check_in_file(h, n)?;
        }
        let ext = match first {
            Kind::Normal(_) => Extent::new(
                Mapping::Data {
                    host: first_host.unwrap_or(0),
                    in_place: copied != 0 || self.geo.data_file,
                },
                n,
            ),
            Kind::ZeroPlain => Extent::new(Mapping::Zero, n),
            Kind::UnallocPlain => Extent::new(Mapping::Unallocated, n),
            Kind::ZeroAlloc(_) => Extent {
                mapping: Mapping::Zero,
                len: n,
                reserved: first_host,
            },
            Kind::UnallocAlloc(_) => Extent {
                mapping: Mapping::Unallocated,
                len: n,
                reserved: first_host,
            },
            // Both returned early above.
            Kind::Compressed { .. } | Kind::Invalid => {
                return Err(Error::Corrupt(format!("bad L2 entry at {off:#x}")))
            }
        };
        Ok(ext)
    }

    /// Raw entry words and the kind of the unit holding guest `pos`.
    #[inline]
    fn unit(&self, table: &[u64], pos: u64) -> (u64, Kind) {
        let (_, idx) = self.geo.indices(pos);
        let w = self.geo.entry_words();
        let entry = table[idx * w];
        let (bitmap, sc) = if self.geo.extended {
            (
                table[idx * w + 1],
                ((pos >> self.geo.unit_bits()) & 31) as u32,
            )
        } else {
            (0, 0)
        };
        (entry, self.geo.kind(entry, bitmap, sc))
    }

    /// Checks a unit's host cluster as QEMU does before using it.
    #[inline]
    fn check_unit(&self, kind: Kind, pos: u64, l1_index: u64) -> Result<()> {
        let cs = self.cs();
        match kind {
            Kind::Invalid => Err(Error::Corrupt(format!(
                "invalid L2 entry for guest offset {pos:#x} (L1 index {l1_index})"
            ))),
            Kind::Compressed { .. } if self.geo.data_file => Err(Error::Corrupt(format!(
                "compressed cluster at guest offset {pos:#x} in an image with an external data file"
            ))),
            k => match k.host_cluster() {
                Some(h) if !h.is_multiple_of(cs) => Err(Error::Corrupt(format!(
                    "host cluster offset {h:#x} for guest offset {pos:#x} is not cluster aligned"
                ))),
                Some(h) if self.geo.data_file && h != pos / cs * cs => {
                    Err(Error::Corrupt(format!(
                        "external data file offset {h:#x} does not match guest cluster {:#x}",
                        pos / cs * cs
                    )))
                }
                _ => Ok(()),
            },
        }
    }

    /// On a writable open, data the engine may write in place must lie
    /// inside the image file: a hostile L2 entry far past its end would
    /// otherwise make a write grow the file without bound. (Our own
    /// clusters are written before they are linked, so they pass.)
    fn check_in_file(&self, host: u64, n: u64) -> Result<()> {
        if self.meta.is_none() || self.geo.data_file {
            return Ok(());
        }
        let end = host.saturating_add(n);
        if end <= self.known_len.load(Ordering::Relaxed) {
            return Ok(());
        }
        let flen = self.file.len()?;
        self.known_len.fetch_max(flen, Ordering::Relaxed);
        if end > flen {
            return Err(Error::Corrupt(format!(
                "data at host offset {host:#x} ({n} bytes) lies past the end of the image file ({flen} bytes)"
            )));
        }
        Ok(())
    }

    /// QEMU's metadata preallocation heuristic: clearly more clusters have
    /// a refcount than the file has allocated on disk. Bounded by the file
    /// length; any error says no.
    fn detect_prealloc(&self) -> Result<bool> {
        let h = &self.header;
        let (cb, order) = (self.geo.cluster_bits, h.refcount_order);
        let cs = self.cs();
        let flen = self.file.len()?;
        let real = self.file.allocated_size()? / cs;
        let threshold = (real * 10 / 9).max(real + 2);
        let end = flen.div_ceil(cs);
        let per_block = 1u64 << (cb + 3 - order);
        let rt_entries = ((h.refcount_table_clusters as u64) << cb) / 8;
        let mut block = vec![0u8; cs as usize];
        let (mut count, mut cluster) = (0u64, 0u64);
        while cluster < end && count < threshold {
            let (ti, bi) = refcount::position(cluster, cb, order);
            if ti >= rt_entries {
                break;
            }
            let mut e = [0u8; 8];
            self.file
                .read_at(&mut e, h.refcount_table_offset + ti * 8)?;
            let boff = u64::from_be_bytes(e) & !(cs - 1);
            let stop = ((ti + 1) * per_block).min(end);
            if boff == 0 || boff >= flen {
                cluster = stop;
                continue;
            }
            self.file.read_at(&mut block, boff)?;
            for i in bi..bi + (stop - cluster) {
                count += (refcount::entry(&block, i, order)? != 0) as u64;
                if count >= threshold {
                    break;
                }
            }
            cluster = stop;
        }
        Ok(count >= threshold)
    }

    /// Counts guest bytes with data in this layer, scanning every L2 table
    /// once (a table listed twice is corruption: it would multiply work).
    fn count_allocated(&self) -> Result<u64> {
        let cov = self.geo.l2_coverage();
        let size = self.size.load(Ordering::Relaxed);
        let tables = size.div_ceil(cov);
        let unit = 1u64 << self.geo.unit_bits();
        let mut seen = HashSet::new();
        let mut total = 0u64;
        for i in 0..tables {
            let l2off = self.l1_entry(i)? & OFFSET_MASK;
            if l2off == 0 {
                continue;
            }
            if !seen.insert(l2off) {
                return Err(Error::Corrupt(format!(
                    "L2 table {l2off:#x} is used by more than one L1 entry"
                )));
            }
            let table = self.l2_table(l2off, i)?;
            let end = ((i + 1) * cov).min(size);
            let mut pos = i * cov;
            while pos < end {
                let (_, k) = self.unit(&table, pos);
                let step = match k {
                    Kind::Compressed { .. } => self.cs(),
                    _ => unit,
                };
                if matches!(k, Kind::Normal(_) | Kind::Compressed { .. }) {
                    total += step.min(end - pos);
                }
                pos += step;
            }
        }
        Ok(total)
    }
}

impl Format for Qcow2 {
    fn format_name(&self) -> &'static str {
        "qcow2"
    }

    fn check(
        &self,
        repair: super::Repair,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<super::CheckReport> {
        check::run(self, repair, progress)
    }

    fn amend(&self, opts: &super::CreateOptions, progress: &mut dyn FnMut(u64, u64)) -> Result<()> {
        Qcow2::amend(self, opts, progress)
    }

    fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    fn cluster_size(&self) -> u64 {
        self.cs()
    }

    fn set_backing(&self, backing: Option<(&str, &str)>) -> Result<()> {
        self.change_backing(backing)
    }

    fn backing(&self) -> Option<BackingSpec> {
        (**self.backing.load()).clone()
    }

    fn map(&self, off: u64, len: u64) -> Result<Extent> {
        let cov = self.geo.l2_coverage();
        let end = off
            .saturating_add(len)
            .min((off / cov + 1).saturating_mul(cov))
            .min(self.size().max(off + 1));
        let (l1_index, _) = self.geo.indices(off);
        let l2off = self.l1_entry(l1_index)? & OFFSET_MASK;
        if l2off == 0 {
            return Ok(Extent::new(Mapping::Unallocated, end - off));
        }
        // A cached table is mapped in place; a miss loads (and checks) it.
        if let Some(r) = self
            .l2_cache
            .with(l2off, |t| self.map_in_table(t, off, end, l1_index))
        {
            return r;
        }
        let table = self.l2_table(l2off, l1_index)?;
        self.map_in_table(&table, off, end, l1_index)
    }

    fn map_cached(&self, off: u64, len: u64) -> Result<Option<Extent>> {
        self.map_nb(off, len)
    }

    fn data_file(&self) -> &Arc<dyn BlockFile> {
        &self.data
    }

    fn read_compressed(&self, host: u64, csize: u64, skip: u64, iov: &IoVec) -> Result<()> {
        let cs = self.cs();
        let flen = self.file.len()?;
        // Bytes past the end of the file read as zeros, as QEMU reads
        // them: the last sector is not padded, and a descriptor claiming
        // more sectors than the stream needs still decodes (the decoder
        // stops once the cluster is full; iotest 214). Starting past the
        // end there is nothing to decode.
        if host >= flen {
            return Err(Error::BadData(format!(
                "compressed cluster at {host:#x} starts past the end of the image file ({flen} bytes)"
            )));
        }
        if skip + iov.len() as u64 > cs {
            return Err(Error::InvalidArgument(format!(
                "read of {} bytes at {skip} in a compressed cluster of {cs}",
                iov.len()
            )));
        }
        let mut input = vec![0u8; csize as usize];
        let have = csize.min(flen - host) as usize;
        self.file.read_at(&mut input[..have], host)?;
        let mut out = vec![0u8; cs as usize];
        compress::decompress(self.header.compression, &input, &mut out)
            .map_err(|e| e.context(format!("compressed cluster at {host:#x}")))?;
        iov.copy_from(0, &out[skip as usize..skip as usize + iov.len()]);
        Ok(())
    }

    fn read_only(&self) -> bool {
        self.ro.load(Ordering::SeqCst)
    }

    fn allocate(&self, guest: u64, len: u64) -> Result<(u64, u64)> {
        self.w_allocate(guest, len)
    }

    fn cow_unit(&self, guest: u64) -> Result<u64> {
        self.w_cow_unit(guest)
    }

    fn link(&self, guest: u64, len: u64, host: u64) -> Result<()> {
        self.w_link(guest, len, host)
    }

    fn compress_cluster(&self, data: &[u8]) -> Result<Option<Vec<u8>>> {
        self.w_compress_cluster(data)
    }

    fn write_compressed(&self, guest: u64, compressed: &[u8]) -> Result<()> {
        self.w_write_compressed(guest, compressed)
    }

    fn zero_clusters(&self, guest: u64, len: u64, unmap: bool) -> Result<bool> {
        self.w_zero(guest, len, unmap)
    }

    fn has_zero_clusters(&self) -> bool {
        self.header.version >= 3
    }

    fn discard(&self, guest: u64, len: u64) -> Result<()> {
        self.w_discard(guest, len)
    }

    fn flush(&self) -> Result<()> {
        self.w_flush()
    }

    fn truncate(&self, size: u64, backing_len: Option<u64>, old: OldReader) -> Result<()> {
        self.w_truncate(size, backing_len, old)
    }

    fn allocated_bytes(&self) -> Result<u64> {
        self.count_allocated()
    }

    fn info(&self) -> FormatInfo {
        let h = &self.header;
        let compat = if h.version >= 3 { "1.1" } else { "0.10" };
        let compression = match h.compression {
            Compression::Zlib => "zlib",
            Compression::Zstd => "zstd",
        };
        let mut s: Vec<(String, InfoValue)> = vec![
            ("compat".into(), compat.into()),
            ("compression type".into(), compression.into()),
        ];
        // Version 2 has no feature bits: qemu-img shows none of them.
        if h.version >= 3 {
            s.push((
                "lazy refcounts".into(),
                (h.compatible & features::COMPAT_LAZY_REFCOUNTS != 0).into(),
            ));
        }
        if !self.bitmaps.is_empty() {
            let list = self
                .bitmaps
                .iter()
                .map(|b| {
                    InfoValue::Map(vec![
                        (
                            "flags".into(),
                            InfoValue::List(b.flag_names().into_iter().map(Into::into).collect()),
                        ),
                        ("name".into(), b.name.as_str().into()),
                        ("granularity".into(), b.granularity.into()),
                    ])
                })
                .collect();
            s.push(("bitmaps".into(), InfoValue::List(list)));
        }
        s.push(("refcount bits".into(), u64::from(h.refcount_bits()).into()));
        if let Some(d) = &h.data_file {
            s.push(("data file".into(), d.as_str().into()));
            s.push(("data file raw".into(), h.data_file_raw().into()));
        }
        if h.version >= 3 {
            s.push((
                "corrupt".into(),
                (h.incompatible & features::INCOMPAT_CORRUPT != 0).into(),
            ));
            s.push(("extended l2".into(), h.extended_l2().into()));
        }
        // The VM state lives past the last L1 entry the disk needs.
        let l1_entries = h.size.div_ceil(self.geo.l2_coverage());
        FormatInfo {
            specific: s,
            data_file: self
                .data_file_path
                .as_ref()
                .map(|p| p.display().to_string()),
            dirty: h.incompatible & features::INCOMPAT_DIRTY != 0,
            vm_state_offset: Some(l1_entries.saturating_mul(self.geo.l2_coverage())),
        }
    }

    // As qemu-img: the disk size of the image file alone, not of its data
    // file.
    fn disk_size(&self) -> Result<u64> {
        self.file.allocated_size()
    }

    fn zero_holes_under_data(&self) -> bool {
        *self
            .prealloc
            .get_or_init(|| self.detect_prealloc().unwrap_or(false))
    }

    fn meta_store(&self) -> Option<&dyn crate::meta::MetaStore> {
        Some(self)
    }

    fn snapshots(&self) -> Vec<SnapshotInfo> {
        self.snapshots
            .load()
            .iter()
            .map(|s| SnapshotInfo {
                id: s.id.clone(),
                name: s.name.clone(),
                vm_state_size: s.vm_state_size,
                date_sec: s.date_sec as u64,
                date_nsec: s.date_nsec,
                vm_clock_nsec: s.vm_clock_nsec,
                disk_size: s.disk_size.unwrap_or(self.header.size),
                icount: s.icount,
            })
            .collect()
    }

    fn snapshot_create(&self, name: &str, date: (u32, u32)) -> Result<String> {
        self.w_snapshot_create(name, date)
    }

    fn snapshot_apply(&self, which: &crate::image::SnapshotRef) -> Result<()> {
        self.w_snapshot_apply(which).map(|_| ())
    }

    fn snapshot_delete(&self, which: &crate::image::SnapshotRef) -> Result<()> {
        self.w_snapshot_delete(which).map(|_| ())
    }

    fn persistent_bitmaps(&self) -> Option<Vec<(String, u64)>> {
        (self.header.version >= 3).then(|| {
            self.bitmaps
                .iter()
                .map(|b| (b.name.clone(), b.granularity))
                .collect()
        })
    }

    fn warnings(&self) -> Vec<String> {
        self.warnings.clone()
    }

    fn close(&self) -> Result<()> {
        self.w_close()
    }
}
