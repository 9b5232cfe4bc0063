//! An open image: a format driver, its backing layer, and the shared engine
//! (`engine.rs`) that reads, writes and copies on write for every format.

use crate::error::{Error, Result};
use crate::format::{
    self, BackingSpec, CheckReport, CreateCtx, CreateOptions, Format, OpenCtx, Repair, SnapshotInfo,
};
use crate::io::lock::{LockSpec, Role};
use crate::io::posix::PosixStorage;
use crate::io::{Access, BlockFile, IoVec, Storage};
use crate::rangelock::RangeLocks;
use arc_swap::ArcSwapOption;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Backing chains deeper than this are refused (a loop guard as well).
pub const MAX_CHAIN_DEPTH: usize = 64;

/// What an image reads where it has nothing of its own.
///
/// The library's own chain handling implements it with `Image`; a host that
/// manages backing files itself (the QEMU glue) can supply another.
pub trait Backing: Send + Sync {
    /// Length of the backing image; reads past it return zeros.
    fn size(&self) -> u64;
    /// Reads `iov.len()` bytes at `off`; bytes at or past `size()` are zeros.
    fn read_backing(&self, iov: &IoVec, off: u64) -> Result<()>;
    /// The image behind this layer, when it is one of ours (for chain
    /// walks such as `map` and `info --backing-chain`).
    fn as_image(&self) -> Option<&Image> {
        None
    }
}

/// How to open an image.
#[derive(Clone, Default)]
pub struct OpenOptions {
    /// Format name; `None` probes the file's first bytes.
    pub format: Option<String>,
    pub read_only: bool,
    /// Do not open the backing file (unallocated ranges then read zeros).
    pub no_backing: bool,
    /// Metadata cache budget in bytes per image (0 = driver default).
    pub cache_size: u64,
    /// A caller-supplied backing layer, used instead of the recorded one.
    pub backing: Option<Arc<dyn Backing>>,
    /// Open this internal snapshot; needs `read_only`. Applies to the top
    /// image only.
    pub snapshot: Option<SnapshotRef>,
    /// For untrusted images: every file the image names (backing files,
    /// add-cow image files, qcow2 data files, at any depth) must resolve,
    /// after symlinks, inside the top image's directory and be a regular
    /// file; anything else is refused (EACCES) naming the file and rule.
    pub confined: bool,
    /// Parse metadata only, for `info`: data files the image names are not
    /// opened (they may be missing; reads then fail), backing files open
    /// the same way. Needs `read_only`.
    pub metadata_only: bool,
    /// Read-only opens only: take no lock that keeps writers out (QEMU's
    /// `force-share`); reads may then see data change underneath.
    pub force_share: bool,
    /// Take no image locks at all: for hosts whose own locks govern the
    /// files (the QEMU glue). Applies to the whole chain.
    pub no_lock: bool,
    /// Driver options of the top image, as QEMU's `-o key=value` on open
    /// (qcow2: l2-cache-size, refcount-cache-size, cache-size,
    /// overlap-check). A driver refuses options it does not know.
    pub format_opts: Vec<(String, String)>,
    /// Opened for `check -r` (QEMU's BDRV_O_CHECK): a qcow2 image marked
    /// corrupt opens read-write, and a dirty one is left for the check to
    /// repair instead of being repaired at open. Needs `!read_only`.
    pub repair: bool,
}

/// Which internal snapshot to open, with QEMU's rules
/// (`bdrv_snapshot_load_tmp`): the first snapshot in the table that
/// matches. `qemu-img convert -l snapshot.id=ID` is `Id`,
/// `-l snapshot.name=NAME` is `Name`, both together `IdAndName`, and a bare
/// `-l STRING` (or `-s`) is `IdOrName`. A string converts to `IdOrName`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotRef {
    Id(String),
    Name(String),
    /// A snapshot with this id if there is one, else one with this name.
    IdOrName(String),
    /// A snapshot with both this id and this name.
    IdAndName(String, String),
}

impl SnapshotRef {
    /// The index of the snapshot selected among `(id, name)` pairs in
    /// table order.
    pub fn find<'s>(
        &self,
        snaps: impl Iterator<Item = (&'s str, &'s str)> + Clone,
    ) -> Option<usize> {
        let first = |f: &dyn Fn(&str, &str) -> bool| snaps.clone().position(|(i, n)| f(i, n));
        match self {
            SnapshotRef::Id(id) => first(&|i, _| i == id),
            SnapshotRef::Name(name) => first(&|_, n| n == name),
            SnapshotRef::IdOrName(s) => first(&|i, _| i == s).or_else(|| first(&|_, n| n == s)),
            SnapshotRef::IdAndName(id, name) => first(&|i, n| i == id && n == name),
        }
    }
}

impl std::fmt::Display for SnapshotRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // Messages read "snapshot 'X' ...", whatever the selector.
            SnapshotRef::Id(i) => write!(f, "'{i}' (by id)"),
            SnapshotRef::Name(n) => write!(f, "'{n}' (by name)"),
            SnapshotRef::IdOrName(s) => write!(f, "'{s}' (id or name)"),
            SnapshotRef::IdAndName(i, n) => write!(f, "'{i}' named '{n}'"),
        }
    }
}

impl From<&str> for SnapshotRef {
    fn from(s: &str) -> Self {
        SnapshotRef::IdOrName(s.to_string())
    }
}

impl From<String> for SnapshotRef {
    fn from(s: String) -> Self {
        SnapshotRef::IdOrName(s)
    }
}

/// The state of a run of guest bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockStatus {
    /// Allocated in this layer (QEMU's "allocated" for is_allocated).
    pub allocated: bool,
    /// Reads come from stored data.
    pub data: bool,
    /// Reads are known to return zeros.
    pub zero: bool,
    /// Host offset in the layer's data file, where there is one.
    pub offset: Option<u64>,
    /// Stored compressed (qcow2).
    pub compressed: bool,
}

/// `ImageInfo::allocated_bytes` when it was not computed (`info_cheap`).
pub const ALLOCATED_UNKNOWN: u64 = u64::MAX;

/// Facts for `info`.
#[derive(Clone, Debug)]
pub struct ImageInfo {
    pub filename: String,
    pub format: String,
    pub virtual_size: u64,
    pub cluster_size: u64,
    pub backing_file: Option<String>,
    pub backing_path: Option<String>,
    pub backing_format: Option<String>,
    pub data_file: Option<String>,
    /// Guest bytes allocated in this layer.
    pub allocated_bytes: u64,
    /// Bytes the image's files take on disk.
    pub disk_size: u64,
    pub read_only: bool,
    pub specific: Vec<(String, crate::format::info::InfoValue)>,
    /// Not closed cleanly (qcow2's dirty bit).
    pub dirty: bool,
    /// Where VM state is kept (qcow2), for qemu-io's `info`.
    pub vm_state_offset: Option<u64>,
}

/// A sized holder for the backing layer (arc-swap needs thin pointers).
pub(crate) struct BackingSlot {
    pub(crate) layer: Arc<dyn Backing>,
    /// A read-only raw image's file and length: reads inside it go straight
    /// to the file (raw maps every offset to itself, and a read-only open
    /// never changes its length or takes the request lock), skipping the
    /// layer's engine pass on the hot path of reads through to a raw base.
    pub(crate) direct: Option<(Arc<dyn BlockFile>, u64)>,
}

impl BackingSlot {
    pub(crate) fn new(layer: Arc<dyn Backing>) -> Self {
        let direct = layer.as_image().and_then(|img| {
            let f = &img.fmt;
            (f.passthrough() && f.read_only() && f.backing().is_none())
                .then(|| (f.data_file().clone(), f.size()))
        });
        BackingSlot { layer, direct }
    }
}

/// An open image. Safe to share between threads (`Arc<Image>`).
pub struct Image {
    pub(crate) fmt: Box<dyn Format>,
    /// Swappable without a lock, so the read path takes no shared write.
    pub(crate) backing: ArcSwapOption<BackingSlot>,
    pub(crate) alloc_locks: RangeLocks,
    /// Every request holds this shared; a resize (and other changes of the
    /// image's shape) holds it exclusive, as QEMU drains before a
    /// truncate. So no request sees the size change under it.
    pub(crate) requests: RwLock<()>,
    storage: Arc<dyn Storage>,
    path: PathBuf,
    closed: AtomicBool,
    /// The confinement directory of a confined open (`OpenOptions::confined`).
    confine: Option<PathBuf>,
    /// Opened read-write as raw because probing said so (no format was
    /// given): writes may not make the first sector look like another
    /// format, as in QEMU (a guest could otherwise turn its disk into,
    /// say, a qcow2 image naming host files at the next probing open).
    probed_raw: bool,
    /// The last metadata directory read, keyed by its store's superblock
    /// (`meta::api`): repeated `meta_get`s skip re-reading it.
    pub(crate) meta_dir: crate::meta::api::DirCache,
}

impl Image {
    /// Opens an image on the host filesystem.
    pub fn open(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<Image> {
        Self::open_in(Arc::new(PosixStorage), path.as_ref(), opts)
    }

    /// Opens an image in `storage`.
    pub fn open_in(storage: Arc<dyn Storage>, path: &Path, opts: &OpenOptions) -> Result<Image> {
        let mut seen = Vec::new();
        let root = match opts.confined {
            // Names resolve against the directory of the path as given.
            true => Some(match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            }),
            false => None,
        };
        Self::open_chain(storage, path, opts, &mut seen, root.as_deref())
    }

    /// Opens `path` and the chain behind it. `root` is the confinement
    /// directory; every layer but the top is a name an image recorded.
    fn open_chain(
        storage: Arc<dyn Storage>,
        path: &Path,
        opts: &OpenOptions,
        seen: &mut Vec<PathBuf>,
        root: Option<&Path>,
    ) -> Result<Image> {
        if seen.len() >= MAX_CHAIN_DEPTH {
            return Err(Error::InvalidArgument(format!(
                "backing chain deeper than {MAX_CHAIN_DEPTH} at '{}'",
                path.display()
            )));
        }
        let canon = storage.canonical(path);
        if seen.contains(&canon) {
            return Err(Error::InvalidArgument(format!(
                "backing chain loops back to '{}'",
                path.display()
            )));
        }
        seen.push(canon);
        if opts.snapshot.is_some() && !opts.read_only {
            return Err(Error::InvalidArgument(format!(
                "'{}': a snapshot can only be opened read-only",
                path.display()
            )));
        }
        let access = if opts.read_only {
            Access::ReadOnly
        } else {
            Access::ReadWrite
        };
        if opts.force_share && !opts.read_only {
            // QEMU's words for the same refusal.
            return Err(Error::InvalidArgument(
                "force-share=on can only be used with read-only images".into(),
            ));
        }
        if opts.metadata_only && !opts.read_only {
            return Err(Error::InvalidArgument(format!(
                "'{}': a metadata-only open must be read-only",
                path.display()
            )));
        }
        // Every layer but the top is a name an image recorded.
        let named = seen.len() > 1;
        let file = match root {
            Some(r) if named => storage.open_confined(path, access, r),
            _ => storage.open(path, access),
        };
        // QEMU's shape for the top image: "could not open 'X': <why>".
        let file = file.map_err(|e| {
            if seen.len() == 1 {
                e.context(format!("could not open '{}'", path.display()))
            } else {
                e
            }
        })?;
        let driver = match &opts.format {
            Some(f) => format::find_driver(f)?,
            None => {
                let mut buf = vec![0u8; format::PROBE_BYTES];
                file.read_at(&mut buf, 0)?;
                format::probe(&buf, path)
            }
        };
        // Locked before the driver reads metadata or repairs anything.
        let role = if driver.name == format::raw::DRIVER.name {
            Role::Raw
        } else {
            Role::Metadata
        };
        let lock = |f: &Arc<dyn BlockFile>, role| match opts.no_lock {
            true => Ok(()),
            false => f.lock(LockSpec::for_role(role, opts.read_only, opts.force_share)),
        };
        lock(&file, role)?;
        let fmt = (driver.open)(&OpenCtx {
            storage: &*storage,
            path,
            file: file.clone(),
            read_only: opts.read_only,
            cache_size: opts.cache_size,
            snapshot: opts.snapshot.as_ref(),
            confine: root,
            metadata_only: opts.metadata_only,
            format_opts: &opts.format_opts,
            repair: opts.repair && !opts.read_only,
        })
        .map_err(|e| e.context(format!("could not open '{}'", path.display())))?;
        // The data file under metadata (add-cow image file, qcow2 data file).
        let data = fmt.data_file();
        if Arc::as_ptr(data) as *const u8 != Arc::as_ptr(&file) as *const u8 {
            lock(data, Role::Data)?;
        }
        if let Some(s) = &opts.snapshot {
            let snaps = fmt.snapshots();
            if s.find(snaps.iter().map(|x| (x.id.as_str(), x.name.as_str())))
                .is_none()
            {
                return Err(Error::NotFound(format!(
                    "snapshot {s} in '{}' ({} images have {} snapshots)",
                    path.display(),
                    fmt.format_name(),
                    fmt.snapshots().len()
                )));
            }
        }
        let backing: Option<Arc<dyn Backing>> =
            match (&opts.backing, opts.no_backing, fmt.backing()) {
                (Some(b), _, _) => Some(b.clone()),
                (None, false, Some(spec)) => {
                    let bopts = OpenOptions {
                        format: spec.format.clone(),
                        read_only: true,
                        cache_size: opts.cache_size,
                        no_backing: false,
                        backing: None,
                        snapshot: None,
                        force_share: opts.force_share,
                        no_lock: opts.no_lock,
                        confined: opts.confined,
                        metadata_only: opts.metadata_only,
                        format_opts: Vec::new(),
                        repair: false,
                    };
                    let b = Self::open_chain(storage.clone(), &spec.path, &bopts, seen, root)
                        .map_err(|e| {
                            e.context(format!(
                                "could not open '{}': Could not open backing file",
                                path.display()
                            ))
                        })?;
                    Some(Arc::new(b))
                }
                _ => None,
            };
        let probed_raw = opts.format.is_none() && !opts.read_only && fmt.passthrough();
        Ok(Image {
            fmt,
            probed_raw,
            backing: ArcSwapOption::new(backing.map(|b| Arc::new(BackingSlot::new(b)))),
            alloc_locks: RangeLocks::default(),
            requests: RwLock::new(()),
            storage,
            path: path.to_path_buf(),
            closed: AtomicBool::new(false),
            confine: root.map(Path::to_path_buf),
            meta_dir: Default::default(),
        })
    }

    /// Opens `path`, a file this image names (its backing file, for
    /// `commit`), under this image's confinement when it was opened
    /// confined: the file and its chain are then held to the same directory.
    pub fn open_named(&self, path: &Path, opts: &OpenOptions) -> Result<Image> {
        let mut seen = vec![self.storage.canonical(&self.path)];
        let mut opts = opts.clone();
        opts.confined |= self.confine.is_some();
        Self::open_chain(
            self.storage.clone(),
            path,
            &opts,
            &mut seen,
            self.confine.as_deref(),
        )
    }

    /// Creates an image on the host filesystem.
    pub fn create(path: impl AsRef<Path>, format: &str, opts: &CreateOptions) -> Result<()> {
        Self::create_in(Arc::new(PosixStorage), path.as_ref(), format, opts)
    }

    /// Creates an image in `storage`. Without a size, the backing file's
    /// size is used (as qemu-img does).
    pub fn create_in(
        storage: Arc<dyn Storage>,
        path: &Path,
        format: &str,
        opts: &CreateOptions,
    ) -> Result<()> {
        let driver = format::find_driver(format)?;
        let mut opts = opts.clone();
        if let Some(b) = opts
            .get_str(format::options::BACKING_FILE)
            .map(str::to_owned)
        {
            if !driver.supports_backing {
                return Err(Error::Unsupported(format!(
                    "format '{format}' does not support backing files"
                )));
            }
            let fmt = opts
                .get_str(format::options::BACKING_FMT)
                .map(str::to_owned);
            if fmt.is_none() {
                return Err(Error::InvalidArgument(format!(
                    "backing file '{b}' needs its format (backing_fmt=...)"
                )));
            }
            // The backing file must open; its size is the default size.
            let bpath = format::resolve_relative(path, &b);
            let bimg = Image::open_in(
                storage.clone(),
                &bpath,
                &OpenOptions {
                    format: fmt,
                    read_only: true,
                    // Only its size is read: qemu-img create shares too, so
                    // an image in use can still get an overlay.
                    force_share: true,
                    ..Default::default()
                },
            )
            .map_err(|e| e.context(format!("backing file '{b}'")))?;
            if opts.get(format::options::SIZE).is_none() {
                opts.set(format::options::SIZE, bimg.size().to_string());
            }
        }
        (driver.create)(&CreateCtx {
            storage: &*storage,
            path,
            opts: &opts,
        })
        .map_err(|e| e.context(format!("could not create '{}'", path.display())))
    }

    pub fn size(&self) -> u64 {
        self.fmt.size()
    }

    pub fn format_name(&self) -> &'static str {
        self.fmt.format_name()
    }

    pub fn cluster_size(&self) -> u64 {
        self.fmt.cluster_size()
    }

    pub fn read_only(&self) -> bool {
        self.fmt.read_only()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the image was opened read-write as raw by probing (see
    /// `probed_raw`); tools warn about it as qemu-img does.
    pub fn probed_raw(&self) -> bool {
        self.probed_raw
    }

    /// The name of the file this layer's data lives in (the image itself
    /// for raw, the image file for add-cow), as `map` reports it.
    pub fn data_file_name(&self) -> String {
        self.fmt.data_file().name().to_owned()
    }

    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// The backing file recorded in the image.
    pub fn backing_spec(&self) -> Option<BackingSpec> {
        self.fmt.backing()
    }

    /// The open backing layer.
    pub fn backing(&self) -> Option<Arc<dyn Backing>> {
        self.backing.load_full().map(|s| s.layer.clone())
    }

    /// Replaces the backing layer in memory (the recorded name is not
    /// changed; see `set_backing_file`).
    pub fn set_backing_layer(&self, b: Option<Arc<dyn Backing>>) {
        self.backing.store(b.map(|b| Arc::new(BackingSlot::new(b))));
    }

    /// Records a new backing file name and format in the image (`None`
    /// detaches) without copying data: `qemu-img rebase -u`.
    pub fn set_backing_file(&self, backing: Option<(&str, &str)>) -> Result<()> {
        self.check_writable()?;
        let _x = self.exclusive();
        self.fmt.set_backing(backing)
    }

    /// The persistent dirty bitmaps stored in this image (name,
    /// granularity), or `None` if it cannot store any.
    pub fn persistent_bitmaps(&self) -> Option<Vec<(String, u64)>> {
        self.fmt.persistent_bitmaps()
    }

    /// The internal snapshots stored in this image.
    pub fn snapshots(&self) -> Vec<SnapshotInfo> {
        self.fmt.snapshots()
    }

    /// Warnings about this image and its backing chain (for example a
    /// corrupt bit on a read-only open), each naming its file.
    pub fn warnings(&self) -> Vec<String> {
        let mut w: Vec<String> = self
            .fmt
            .warnings()
            .into_iter()
            .map(|m| format!("'{}': {m}", self.path.display()))
            .collect();
        if let Some(b) = self.backing() {
            if let Some(img) = b.as_image() {
                w.extend(img.warnings());
            }
        }
        w
    }

    /// Facts for `info`, `allocated_bytes` included (which may scan all
    /// of the image's metadata).
    pub fn info(&self) -> Result<ImageInfo> {
        let mut i = self.info_cheap()?;
        i.allocated_bytes = self.allocated_bytes()?;
        Ok(i)
    }

    /// Guest bytes allocated in this layer. May read all of the image's
    /// allocation metadata (the whole add-cow bitmap): hosts call it off
    /// their event loop.
    pub fn allocated_bytes(&self) -> Result<u64> {
        self.fmt.allocated_bytes()
    }

    /// `info` from what is in memory plus a stat of the image's files:
    /// `allocated_bytes` is `ALLOCATED_UNKNOWN` (see `allocated_bytes`).
    pub fn info_cheap(&self) -> Result<ImageInfo> {
        let b = self.fmt.backing();
        let fi = self.fmt.info();
        Ok(ImageInfo {
            filename: self.path.display().to_string(),
            format: self.fmt.format_name().into(),
            virtual_size: self.size(),
            cluster_size: self.cluster_size(),
            backing_file: b.as_ref().map(|b| b.name.clone()),
            backing_path: b.as_ref().map(|b| b.path.display().to_string()),
            backing_format: b.and_then(|b| b.format),
            data_file: fi.data_file,
            allocated_bytes: ALLOCATED_UNKNOWN,
            disk_size: self.fmt.disk_size()?,
            read_only: self.read_only(),
            specific: {
                let mut f = fi.specific;
                f.extend(self.meta_info_fields());
                f
            },
            dirty: fi.dirty,
            vm_state_offset: fi.vm_state_offset,
        })
    }

    /// Checks this layer's metadata (`qemu-img check`); `Unsupported` for
    /// formats without a checker.
    pub fn check(&self, repair: Repair) -> Result<CheckReport> {
        self.check_progress(repair, &mut |_, _| {})
    }

    /// `check`, reporting (done, total) to `progress` as it goes.
    pub fn check_progress(
        &self,
        repair: Repair,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<CheckReport> {
        let mut r = if repair != Repair::None {
            self.check_writable()?;
            let _x = self.exclusive();
            self.fmt.check(repair, progress)?
        } else {
            let _s = self.shared();
            self.fmt.check(repair, progress)?
        };
        // A damaged key/value store is reported, never repaired (dropping
        // it would lose the pairs that still read).
        if let Some(e) = self.meta_check() {
            r.corruptions += 1;
            r.messages.push(format!("ERROR key/value metadata: {e}"));
        }
        Ok(r)
    }

    /// Changes format options (`qemu-img amend -o`, see `Format::amend`);
    /// close the image afterwards and reopen it to use it.
    pub fn amend(
        &self,
        opts: &crate::format::CreateOptions,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<()> {
        self.check_writable()?;
        let _x = self.exclusive();
        self.fmt.amend(opts, progress)
    }

    /// Drops everything allocated in this layer (see `Format::make_empty`).
    pub fn make_empty(&self) -> Result<()> {
        self.check_writable()?;
        let _x = self.exclusive();
        self.fmt.make_empty()
    }

    /// Flushes and closes. Dropping an image without `close` flushes too,
    /// but cannot report errors.
    pub fn close(self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        if self.read_only() {
            return Ok(());
        }
        self.fmt.close()
    }

    /// Held by every request (see `requests`). Never taken twice by one
    /// thread: a waiting resize would block the second acquire. A read-only
    /// image never changes its shape, so its requests (reads through a
    /// backing chain, for one) skip the lock.
    pub(crate) fn shared(&self) -> Option<RwLockReadGuard<'_, ()>> {
        (!self.read_only()).then(|| self.requests.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Held by a resize: waits for running requests, holds off new ones.
    pub(crate) fn exclusive(&self) -> RwLockWriteGuard<'_, ()> {
        self.requests.write().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn check_writable(&self) -> Result<()> {
        if self.read_only() {
            return Err(Error::ReadOnly(self.path.display().to_string()));
        }
        Ok(())
    }

    pub(crate) fn check_range(&self, off: u64, len: u64) -> Result<()> {
        let size = self.size();
        match off.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(Error::OutOfRange(format!(
                "{len} bytes at offset {off} lie past the end of the image ({size} bytes)"
            ))),
        }
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        if !self.closed.load(Ordering::Acquire) && !self.read_only() {
            let _ = self.fmt.close();
        }
    }
}

impl Backing for Image {
    fn size(&self) -> u64 {
        Image::size(self)
    }

    fn read_backing(&self, iov: &IoVec, off: u64) -> Result<()> {
        // This layer's own lock (the caller holds the upper layer's).
        let _s = self.shared();
        let size = Image::size(self);
        let len = iov.len() as u64;
        let inside = size.saturating_sub(off).min(len);
        if inside == len {
            // The common case: no sub-list to build on the hot read path.
            return self.read_inner(iov, off);
        }
        if inside > 0 {
            self.read_inner(&iov.slice(0, inside as usize), off)?;
        }
        if inside < len {
            iov.slice(inside as usize, (len - inside) as usize).zero();
        }
        Ok(())
    }

    fn as_image(&self) -> Option<&Image> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::SnapshotRef::{self, *};

    /// (id, name) in table order: names that collide with other ids, and
    /// a name used twice.
    const TABLE: [(&str, &str); 4] = [("1", "2"), ("2", "1"), ("3", "x"), ("4", "x")];

    fn pick(r: SnapshotRef) -> Option<usize> {
        r.find(TABLE.iter().map(|&(i, n)| (i, n)))
    }

    #[test]
    fn selectors_follow_qemu() {
        assert_eq!(pick(Id("2".into())), Some(1));
        assert_eq!(pick(Name("2".into())), Some(0));
        // A bare string: ids first, then names; the first match wins.
        assert_eq!(pick("2".into()), Some(1));
        assert_eq!(pick("x".into()), Some(2));
        assert_eq!(pick(Name("x".into())), Some(2));
        assert_eq!(pick(IdAndName("4".into(), "x".into())), Some(3));
        assert_eq!(pick(IdAndName("1".into(), "1".into())), None);
        assert_eq!(pick(Id("x".into())), None);
        assert_eq!(pick(Name("3".into())), None);
    }
}
