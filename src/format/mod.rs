//! Format drivers: each maps guest offsets to places and allocates; the
//! engine (`crate::engine`) does the reading, writing and copy-on-write.

pub mod addcow;
pub mod check;
pub mod info;
pub mod options;
pub mod qcow2;
pub mod raw;

use crate::error::{Error, Result};
use crate::io::{Access, BlockFile, IoVec, Storage};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use check::{CheckReport, Repair};
pub use options::{CreateOptions, OptDesc, OptKind};

/// Where a run of guest bytes lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mapping {
    /// In this layer's data file at `host`. `in_place` is false when the
    /// data may not be overwritten where it is (for example a cluster
    /// shared with a snapshot), so a write must allocate anew.
    Data { host: u64, in_place: bool },
    /// Allocated in this layer and reads as zeros.
    Zero,
    /// Not allocated in this layer: read the backing file, or zeros.
    Unallocated,
    /// A compressed cluster; the format reads it (`Format::read_compressed`).
    Compressed { host: u64, csize: u64 },
}

/// A run of guest bytes with one mapping. For `Data` the run is contiguous
/// on the host too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub mapping: Mapping,
    pub len: u64,
    /// For `Zero` and `Unallocated` runs: host space already reserved under
    /// them in the data file (qcow2 preallocated zero clusters, unallocated
    /// subclusters of an allocated cluster). Block status reports it, as
    /// QEMU does; a write may reuse it. `None` otherwise.
    pub reserved: Option<u64>,
}

impl Extent {
    /// A run with nothing reserved.
    pub fn new(mapping: Mapping, len: u64) -> Self {
        Extent {
            mapping,
            len,
            reserved: None,
        }
    }
}

/// An internal snapshot, as `qemu-img snapshot -l` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub id: String,
    pub name: String,
    /// Bytes of saved VM state (0 for disk-only snapshots).
    pub vm_state_size: u64,
    /// Wall-clock time the snapshot was taken.
    pub date_sec: u64,
    pub date_nsec: u32,
    /// Guest run time at the snapshot, in nanoseconds.
    pub vm_clock_nsec: u64,
    /// Virtual disk size at the snapshot.
    pub disk_size: u64,
    /// Record/replay instruction count, when recorded.
    pub icount: Option<u64>,
}

/// The backing file an image names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackingSpec {
    /// The name as recorded in the image.
    pub name: String,
    /// The name resolved against the image's directory.
    pub path: PathBuf,
    /// The recorded format, if any.
    pub format: Option<String>,
}

/// Format-specific facts for `info`.
#[derive(Clone, Debug, Default)]
pub struct FormatInfo {
    /// Named values, in display order (`info::fields_human` and
    /// `info::fields_json` render them as qemu-img does).
    pub specific: Vec<(String, info::InfoValue)>,
    /// The external data/image file, if the format has one.
    pub data_file: Option<String>,
    /// Not closed cleanly (qcow2's dirty bit): "cleanly shut down: no".
    pub dirty: bool,
    /// Where internal snapshots keep VM state (qcow2), as qemu-io's `info`
    /// shows it.
    pub vm_state_offset: Option<u64>,
}

/// Reads the image as it was before a resize, for formats that must copy
/// data into place while resizing.
pub type OldReader<'a> = &'a dyn Fn(&IoVec, u64) -> Result<()>;

/// An open image as a format sees it.
pub trait Format: Send + Sync {
    fn format_name(&self) -> &'static str;
    /// Virtual size in bytes.
    fn size(&self) -> u64;
    /// Allocation unit in bytes; 0 when the format never allocates (raw).
    fn cluster_size(&self) -> u64;
    /// The backing file recorded in the image.
    fn backing(&self) -> Option<BackingSpec>;
    /// The mapping of the run starting at `off`, at most `len` bytes long.
    /// `off < size()`, `len > 0`; the returned `len` is > 0.
    fn map(&self, off: u64, len: u64) -> Result<Extent>;
    /// `map` answered from memory alone, for callers that must not block
    /// (the QEMU glue's coroutines): `Ok(None)` ("would block") whenever the
    /// answer needs file I/O or a lock that may be held across I/O. Never
    /// reads files. The default always says "would block".
    fn map_cached(&self, _off: u64, _len: u64) -> Result<Option<Extent>> {
        Ok(None)
    }
    /// The file `Mapping::Data` offsets refer to.
    fn data_file(&self) -> &Arc<dyn BlockFile>;
    /// Reads bytes `[skip, skip + iov.len())` of a compressed cluster.
    fn read_compressed(&self, _host: u64, _csize: u64, _skip: u64, _iov: &IoVec) -> Result<()> {
        Err(Error::Unsupported(format!(
            "{} has no compressed clusters",
            self.format_name()
        )))
    }
    fn read_only(&self) -> bool;
    /// Reserves host space for guest clusters `[guest, guest + len)` (cluster
    /// aligned; `len` may end at the virtual size) and returns the host
    /// offset and length of a contiguous run (a prefix of the request,
    /// whole clusters). Nothing points at it until `link`.
    fn allocate(&self, guest: u64, len: u64) -> Result<(u64, u64)>;
    /// The unit an allocating write at `guest` copies old contents in
    /// (head and tail up to its boundaries): the cluster size unless the
    /// format can allocate less there (qcow2 subclusters). `allocate` and
    /// `link` then get ranges aligned to it.
    fn cow_unit(&self, _guest: u64) -> Result<u64> {
        Ok(self.cluster_size())
    }
    /// Makes the guest range point at `host` once its data has been written.
    /// The metadata may reach the disk only after that data is durable.
    fn link(&self, guest: u64, len: u64, host: u64) -> Result<()>;
    /// Marks `[guest, guest + len)` (whole clusters) as reading zeros
    /// without writing data, if the format can; `Ok(false)` if not.
    /// `unmap` (QEMU's BDRV_REQ_MAY_UNMAP): host space may be freed;
    /// without it, space the layer alone owns stays preallocated.
    fn zero_clusters(&self, _guest: u64, _len: u64, _unmap: bool) -> Result<bool> {
        Ok(false)
    }
    /// Whether `zero_clusters` can mark clusters (qcow2 v3): then a zero
    /// write over part of a cluster that otherwise reads zeros zeroes the
    /// whole cluster in metadata, as QEMU's qcow2 does.
    fn has_zero_clusters(&self) -> bool {
        false
    }
    /// Compresses one whole cluster's contents for `write_compressed`
    /// (no lock, no I/O: any thread may run it). `Ok(None)` when
    /// compressing would not make it smaller; the cluster is then written
    /// uncompressed, as QEMU does. Formats without compressed clusters
    /// refuse.
    fn compress_cluster(&self, _data: &[u8]) -> Result<Option<Vec<u8>>> {
        Err(Error::Unsupported(format!(
            "compression is not supported by the {} format",
            self.format_name()
        )))
    }
    /// Makes guest cluster `guest` hold `compressed` (a result of
    /// `compress_cluster`). The engine holds the cluster's range lock.
    fn write_compressed(&self, _guest: u64, _compressed: &[u8]) -> Result<()> {
        Err(Error::Unsupported(format!(
            "compression is not supported by the {} format",
            self.format_name()
        )))
    }
    /// Drops whole clusters of this layer where that keeps guest-visible
    /// contents defined; a hint, may do nothing.
    fn discard(&self, _guest: u64, _len: u64) -> Result<()> {
        Ok(())
    }
    /// Data, then metadata, durable.
    fn flush(&self) -> Result<()>;
    /// Changes the virtual size crash-safely. `backing_len` is the length of
    /// the backing image, if any: grown ranges must not show backing data.
    fn truncate(&self, size: u64, backing_len: Option<u64>, old: OldReader) -> Result<()>;
    /// Records a new backing file (rebase); `None` detaches.
    fn set_backing(&self, _backing: Option<(&str, &str)>) -> Result<()> {
        Err(Error::Unsupported(format!(
            "{} cannot change its backing file",
            self.format_name()
        )))
    }
    /// Bytes of guest data allocated in this layer (may scan metadata).
    fn allocated_bytes(&self) -> Result<u64>;
    /// Format-specific details.
    fn info(&self) -> FormatInfo {
        FormatInfo::default()
    }
    /// Bytes the image's files take on disk.
    fn disk_size(&self) -> Result<u64> {
        self.data_file().allocated_size()
    }
    /// Whether guest bytes are the data file's bytes as they stand (raw):
    /// block status then reports holes in the file as zeros without data,
    /// as QEMU's raw driver passes block status through to the file.
    fn passthrough(&self) -> bool {
        false
    }
    /// Whether block status also asks the data file about holes under
    /// `Data` runs and reports them as zero while keeping data, as QEMU
    /// does for qcow2 images it finds metadata-preallocated.
    fn zero_holes_under_data(&self) -> bool {
        false
    }
    /// Checks the image's metadata for consistency, repairing what
    /// `repair` allows, reporting (done, total) work units to `progress`.
    /// Formats without a checker say so (qemu-img exits 63).
    fn check(&self, _repair: Repair, _progress: &mut dyn FnMut(u64, u64)) -> Result<CheckReport> {
        Err(Error::Unsupported(format!(
            "format '{}' does not support checks",
            self.format_name()
        )))
    }
    /// Changes format options of an existing image (`qemu-img amend`),
    /// reporting (done, total) to `progress`. The handle may be read-only
    /// afterwards (reopen it).
    fn amend(&self, _opts: &CreateOptions, _progress: &mut dyn FnMut(u64, u64)) -> Result<()> {
        Err(Error::Unsupported(format!(
            "Format driver '{}' does not support option amendment",
            self.format_name()
        )))
    }
    /// Drops everything allocated in this layer so it reads through to its
    /// backing file again (after `commit`).
    fn make_empty(&self) -> Result<()> {
        Err(Error::Unsupported(format!(
            "format '{}' cannot empty an image",
            self.format_name()
        )))
    }
    /// Persistent dirty bitmaps stored in the image, as (name, granularity
    /// in bytes); `None` when the image cannot store any (most formats,
    /// qcow2 version 2).
    fn persistent_bitmaps(&self) -> Option<Vec<(String, u64)>> {
        None
    }
    /// Internal snapshots stored in the image (none for most formats).
    fn snapshots(&self) -> Vec<SnapshotInfo> {
        Vec::new()
    }
    /// Creates an internal snapshot of the active state named `name`,
    /// dated `date` (seconds, nanoseconds since the epoch); returns its id.
    fn snapshot_create(&self, _name: &str, _date: (u32, u32)) -> Result<String> {
        Err(Error::Unsupported(format!(
            "format '{}' has no internal snapshots",
            self.format_name()
        )))
    }
    /// Makes the active state a copy of a snapshot's (size included).
    fn snapshot_apply(&self, _which: &crate::image::SnapshotRef) -> Result<()> {
        Err(Error::Unsupported(format!(
            "format '{}' has no internal snapshots",
            self.format_name()
        )))
    }
    /// Deletes an internal snapshot.
    fn snapshot_delete(&self, _which: &crate::image::SnapshotRef) -> Result<()> {
        Err(Error::Unsupported(format!(
            "format '{}' has no internal snapshots",
            self.format_name()
        )))
    }
    /// Things the user should know about the open image that did not stop
    /// it from opening (for example a qcow2 corrupt bit on a read-only open).
    fn warnings(&self) -> Vec<String> {
        Vec::new()
    }
    /// Where the image keeps its key/value metadata store
    /// (`crate::meta`); `None` when the format has no place for one.
    fn meta_store(&self) -> Option<&dyn crate::meta::MetaStore> {
        None
    }
    /// Flushes and releases; called once, before drop, on a clean close.
    fn close(&self) -> Result<()> {
        self.flush()
    }
}

/// What an opener is given.
pub struct OpenCtx<'a> {
    pub storage: &'a dyn Storage,
    pub path: &'a Path,
    pub file: Arc<dyn BlockFile>,
    pub read_only: bool,
    /// Metadata cache budget in bytes (0 = the driver's default).
    pub cache_size: u64,
    /// Open this internal snapshot instead of the active state; only with
    /// `read_only`. Formats without snapshots refuse it.
    pub snapshot: Option<&'a crate::image::SnapshotRef>,
    /// Confined open (`OpenOptions::confined`): files the image names must
    /// be regular files inside this directory (the top image's).
    pub confine: Option<&'a Path>,
    /// Parse metadata only (`OpenOptions::metadata_only`): do not open the
    /// data files the image names unless their contents are needed to
    /// know the image's shape.
    pub metadata_only: bool,
    /// Driver options (`OpenOptions::format_opts`); drivers that take
    /// none refuse any (`OpenCtx::no_format_opts`).
    pub format_opts: &'a [(String, String)],
    /// Opened to repair (`OpenOptions::repair`).
    pub repair: bool,
}

impl OpenCtx<'_> {
    /// Refuses driver options, for drivers that take none.
    pub fn no_format_opts(&self, driver: &str) -> Result<()> {
        match self.format_opts.first() {
            None => Ok(()),
            Some((k, _)) => Err(Error::InvalidArgument(format!(
                "Invalid parameter '{k}' (the {driver} driver takes no options)"
            ))),
        }
    }

    /// Opens a file the image names (`name` as recorded), resolved against
    /// the image's directory and held to the open's confinement. Returns
    /// the file and the resolved path.
    pub fn open_named(&self, name: &str, access: Access) -> Result<(Arc<dyn BlockFile>, PathBuf)> {
        let p = resolve_relative(self.path, name);
        let f = match self.confine {
            Some(root) => self.storage.open_confined(&p, access, root)?,
            None => self.storage.open(&p, access)?,
        };
        Ok((f, p))
    }
}

/// What a creator is given.
pub struct CreateCtx<'a> {
    pub storage: &'a dyn Storage,
    pub path: &'a Path,
    pub opts: &'a CreateOptions,
}

/// A format driver's entry points.
pub struct Driver {
    pub name: &'static str,
    /// Score 0..=100 that the first bytes (at least 512, up to 4096) are
    /// this format; raw answers 1.
    pub probe: fn(buf: &[u8], path: &Path) -> i32,
    pub create: fn(&CreateCtx) -> Result<()>,
    pub open: fn(&OpenCtx) -> Result<Box<dyn Format>>,
    pub create_opts: &'static [OptDesc],
    pub supports_backing: bool,
}

/// Every driver this build has.
pub fn drivers() -> &'static [&'static Driver] {
    static ALL: [&Driver; 3] = [&addcow::DRIVER, &qcow2::DRIVER, &raw::DRIVER];
    &ALL
}

/// The driver called `name`.
pub fn find_driver(name: &str) -> Result<&'static Driver> {
    drivers()
        .iter()
        .copied()
        .find(|d| d.name == name)
        .ok_or_else(|| Error::UnknownFormat(format!("'{name}' (known: {})", known_names())))
}

fn known_names() -> String {
    drivers()
        .iter()
        .map(|d| d.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Picks the driver whose probe scores highest on `buf`.
pub fn probe(buf: &[u8], path: &Path) -> &'static Driver {
    let mut best = &raw::DRIVER;
    let mut score = 0;
    for d in drivers() {
        let s = (d.probe)(buf, path);
        if s > score {
            score = s;
            best = d;
        }
    }
    best
}

/// Bytes a prober is given.
pub const PROBE_BYTES: usize = 4096;

/// Resolves a file name recorded in an image against the image's directory.
pub fn resolve_relative(image: &Path, name: &str) -> PathBuf {
    let p = Path::new(name);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    match image.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.join(p),
        _ => p.to_path_buf(),
    }
}
