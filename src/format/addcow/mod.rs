//! add-cow: a raw image file plus a bitmap file saying which clusters the
//! image file holds (bit set) and which still come from the backing file.

pub mod bitmap;
pub mod header;
mod metadata;

use super::{
    options, resolve_relative, BackingSpec, CheckReport, CreateCtx, Driver, Extent, Format,
    FormatInfo, Mapping, OldReader, OpenCtx, OptDesc, OptKind, Repair,
};
use crate::error::{Error, Result};
use crate::io::{Access, BlockFile, IoVec, NotOpened};
use bitmap::Bitmap;
use header::{Header, HEADER_SIZE, MAX_SIZE};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// Default cluster size: the largest that keeps 4 KiB first writes free of
/// copy-on-write (docs/specs/add-cow.txt, "Choosing a cluster size").
pub const DEFAULT_CLUSTER_SIZE: u64 = 4096;
/// Default bitmap cache: 4 MiB covers 128 GiB of guest at 4 KiB clusters.
pub const DEFAULT_CACHE_SIZE: u64 = 4 << 20;

pub const IMAGE_FILE: &str = "image_file";
pub const CLUSTER_SIZE: &str = "cluster_size";

pub static DRIVER: Driver = Driver {
    name: "add-cow",
    probe: |buf, _| header::probe(buf),
    create,
    open,
    create_opts: &CREATE_OPTS,
    supports_backing: true,
};

static CREATE_OPTS: [OptDesc; 5] = [
    OptDesc {
        name: options::SIZE,
        kind: OptKind::Size,
        help: "Virtual disk size",
    },
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
        name: IMAGE_FILE,
        kind: OptKind::Str,
        help: "File name of the raw image file (relative to the add-cow file)",
    },
    OptDesc {
        name: CLUSTER_SIZE,
        kind: OptKind::Size,
        help: "Bytes covered by one bitmap bit (512 to 2M, power of two; default 4k)",
    },
];

struct AddCow {
    meta: Arc<dyn BlockFile>,
    image: Arc<dyn BlockFile>,
    image_path: PathBuf,
    backing: Mutex<Option<BackingSpec>>,
    header: Mutex<Header>,
    size: AtomicU64,
    cluster_bits: u32,
    bitmap: Bitmap,
    read_only: bool,
    path: PathBuf,
    /// Held shared while store bytes are read, exclusive while the store
    /// moves (`metadata.rs`).
    meta_lock: RwLock<()>,
}

fn create(ctx: &CreateCtx) -> Result<()> {
    let o = ctx.opts;
    o.check_known("add-cow", &CREATE_OPTS)?;
    let size = o
        .get_size(options::SIZE)?
        .ok_or_else(|| Error::InvalidArgument("add-cow needs a size".into()))?;
    if size > MAX_SIZE {
        return Err(Error::TooLarge(format!(
            "virtual size {size} exceeds the maximum {MAX_SIZE}"
        )));
    }
    let cluster_size = o.get_size(CLUSTER_SIZE)?.unwrap_or(DEFAULT_CLUSTER_SIZE);
    if !cluster_size.is_power_of_two()
        || !(1u64 << header::MIN_CLUSTER_BITS..=1u64 << header::MAX_CLUSTER_BITS)
            .contains(&cluster_size)
    {
        return Err(Error::InvalidArgument(format!(
            "cluster_size {cluster_size} must be a power of two from 512 to 2M"
        )));
    }
    let image_file = o
        .get_str(IMAGE_FILE)
        .ok_or_else(|| Error::InvalidArgument("add-cow needs image_file=NAME".into()))?;
    let backing_file = o.get_str(options::BACKING_FILE).unwrap_or("");
    let backing_fmt = o.get_str(options::BACKING_FMT).unwrap_or("");
    if !backing_file.is_empty() && backing_fmt.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "backing file '{backing_file}' needs its format (backing_fmt=...)"
        )));
    }
    if backing_file.is_empty() && !backing_fmt.is_empty() {
        return Err(Error::InvalidArgument(
            "backing_fmt given without backing_file".into(),
        ));
    }
    let hdr = Header {
        backing_file: backing_file.into(),
        image_file: image_file.into(),
        size,
        cluster_bits: cluster_size.trailing_zeros(),
        incompat: 0,
        compat: 0,
        autoclear: 0,
        backing_fmt: backing_fmt.into(),
        store: None,
    };
    let bytes = hdr.serialize()?;
    let st = ctx.storage;
    let me = st.canonical(ctx.path);
    let image_path = resolve_relative(ctx.path, image_file);
    let image_canon = st.canonical(&image_path);
    if image_canon == me {
        return Err(Error::InvalidArgument(format!(
            "image file '{image_file}' is the add-cow file itself"
        )));
    }
    if !backing_file.is_empty() {
        let b = st.canonical(&resolve_relative(ctx.path, backing_file));
        if b == image_canon {
            return Err(Error::InvalidArgument(format!(
                "image file '{image_file}' is the backing file"
            )));
        }
        if b == me {
            return Err(Error::InvalidArgument(format!(
                "backing file '{backing_file}' is the add-cow file itself"
            )));
        }
    }
    // The image file first: if that fails, no add-cow file is left behind.
    let (image, created) = if st.exists(&image_path) {
        (st.open(&image_path, Access::ReadWrite)?, false)
    } else {
        (st.create(&image_path, false)?, true)
    };
    let result = (|| {
        if image.len()? < size {
            image.set_len(size)?;
        }
        image.flush()?;
        let meta = st.create(ctx.path, true)?;
        meta.write_at(&bytes, 0)?;
        meta.set_len(HEADER_SIZE + Header::bitmap_len(size, hdr.cluster_bits))?;
        meta.flush()
    })();
    if result.is_err() && created {
        let _ = st.remove(&image_path);
    }
    result
}

fn open(ctx: &OpenCtx) -> Result<Box<dyn Format>> {
    ctx.no_format_opts("add-cow")?;
    let meta = ctx.file.clone();
    let flen = meta.len()?;
    let mut buf = vec![0u8; HEADER_SIZE.min(flen) as usize];
    meta.read_at(&mut buf, 0)?;
    let hdr = Header::parse(&buf)?;
    let image_path = resolve_relative(ctx.path, &hdr.image_file);
    // A hostile header must not turn writes onto the backing file or onto
    // the add-cow file itself.
    let image_canon = ctx.storage.canonical(&image_path);
    if image_canon == ctx.storage.canonical(ctx.path) {
        return Err(Error::Corrupt(format!(
            "image file '{}' is the add-cow file itself",
            hdr.image_file
        )));
    }
    if !hdr.backing_file.is_empty()
        && image_canon
            == ctx
                .storage
                .canonical(&resolve_relative(ctx.path, &hdr.backing_file))
    {
        return Err(Error::Corrupt(format!(
            "image file '{}' is the backing file",
            hdr.image_file
        )));
    }
    let access = if ctx.read_only {
        Access::ReadOnly
    } else {
        Access::ReadWrite
    };
    // A metadata-only open needs the image file only when its length is
    // the virtual size (2012 layout, size field 0).
    let image: Arc<dyn BlockFile> = if ctx.metadata_only && hdr.size != 0 {
        Arc::new(NotOpened::new(image_path.display().to_string()))
    } else {
        ctx.open_named(&hdr.image_file, access)
            .map_err(|e| e.context(format!("add-cow image file '{}'", hdr.image_file)))?
            .0
    };
    let size = if hdr.size == 0 {
        image.len()?
    } else {
        hdr.size
    };
    if size > MAX_SIZE {
        return Err(Error::Corrupt(format!(
            "virtual size {size} exceeds {MAX_SIZE}"
        )));
    }
    let need = HEADER_SIZE + Header::bitmap_len(size, hdr.cluster_bits);
    if flen < need {
        return Err(Error::Corrupt(format!(
            "add-cow file is truncated: the bitmap needs {need} bytes, the file has {flen}"
        )));
    }
    AddCow::check_store_at_open(&hdr, need, flen)?;
    let backing = (!hdr.backing_file.is_empty()).then(|| BackingSpec {
        name: hdr.backing_file.clone(),
        path: resolve_relative(ctx.path, &hdr.backing_file),
        format: (!hdr.backing_fmt.is_empty()).then(|| hdr.backing_fmt.clone()),
    });
    let cache = if ctx.cache_size == 0 {
        DEFAULT_CACHE_SIZE
    } else {
        ctx.cache_size
    };
    let clusters = size.div_ceil(1 << hdr.cluster_bits);
    if !ctx.read_only && hdr.autoclear & !header::AUTOCLEAR_KNOWN != 0 {
        // Data kept for autoclear features we do not know goes stale with
        // our first write: drop their bits now (serialize masks them).
        meta.write_at(&hdr.serialize()?, 0)?;
        meta.flush()?;
    }
    Ok(Box::new(AddCow {
        bitmap: Bitmap::new(meta.clone(), image.clone(), HEADER_SIZE, clusters, cache),
        meta,
        image,
        image_path,
        backing: Mutex::new(backing),
        cluster_bits: hdr.cluster_bits,
        header: Mutex::new(hdr),
        size: AtomicU64::new(size),
        read_only: ctx.read_only,
        path: ctx.path.to_path_buf(),
        meta_lock: RwLock::new(()),
    }))
}

impl AddCow {
    fn cs(&self) -> u64 {
        1 << self.cluster_bits
    }

    fn write_header(&self, h: &Header) -> Result<()> {
        let bytes = h.serialize()?;
        self.meta.write_at(&bytes, 0)?;
        self.meta.flush()
    }

    /// Writes the size field in one aligned 512-byte write of the header
    /// sector that holds it (atomic on disks with 512-byte sectors), and
    /// flushes.
    fn set_size_field(&self, size: u64) -> Result<()> {
        let mut h = self
            .header
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        h.size = size;
        self.meta
            .write_at(&h.size_sector()?, header::SIZE_SECTOR as u64)?;
        self.meta.flush()?;
        self.header.lock().unwrap_or_else(|p| p.into_inner()).size = size;
        Ok(())
    }

    /// Grows in the spec's order: zeros in the image file, flush, bits,
    /// flush, size. Until the size is written the old size is visible and
    /// reads exactly as before.
    fn grow(
        &self,
        old: u64,
        new: u64,
        backing_len: Option<u64>,
        read_old: OldReader,
    ) -> Result<()> {
        let cs = self.cs();
        // 1. The image file reads zeros over the new range (it may hold
        //    stale bytes past the old size).
        let img_len = self.image.len()?;
        if img_len > old {
            self.image.write_zeroes(old, img_len.min(new) - old)?;
        }
        if img_len < new {
            self.image.set_len(new)?;
        }
        // 2. A clear cluster straddling the old end must not show backing
        //    data past it: copy its old head into the image file and own it
        //    (the bit is written after the flush below).
        let mut first_new = old.div_ceil(cs);
        let mut own_last = None;
        if !old.is_multiple_of(cs) {
            let b = old / cs;
            if !self.bitmap.run(b, 1)?.0 {
                let mut head = vec![0u8; (old - b * cs) as usize];
                read_old(&IoVec::from_mut(&mut head), b * cs)?;
                self.image.write_at(&head, b * cs)?;
                own_last = Some(b);
            }
            first_new = b + 1;
        }
        // 3. New clusters the backing file covers are owned by the image
        //    file (zeros); the rest read zeros past the backing file anyway.
        //    Every new bit is written explicitly: the file may hold bits left
        //    by a shrink that was cut short.
        let clusters = new.div_ceil(cs);
        let bitmap_end = HEADER_SIZE + Header::bitmap_len(new, self.cluster_bits);
        if let Some(r) = self.store_ref() {
            if bitmap_end > r.offset {
                // The bitmap would reach the store: move the store first
                // (its own crash-safe change; the old size stays visible).
                let mut bytes = vec![0u8; r.len as usize];
                self.meta.read_at(&mut bytes, r.offset)?;
                self.place_store(Some(&bytes), bitmap_end)?;
            }
        }
        self.meta.set_len(self.needed_len(new))?;
        self.bitmap.file_changed();
        self.bitmap.resize(clusters)?;
        if let Some(b) = own_last {
            self.bitmap.set_range(b, b + 1, true)?;
        }
        let covered = backing_len
            .map_or(0, |l| l.min(new).div_ceil(cs))
            .max(first_new);
        self.bitmap.set_range(first_new, covered, true)?;
        self.bitmap.set_range(covered, clusters, false)?;
        self.bitmap.clear_padding()?;
        // Flushes the image file (step 1 and 2 durable), writes the bits,
        // flushes the add-cow file.
        self.bitmap.sync()?;
        // 4. Only now does the new size become visible.
        self.set_size_field(new)?;
        self.size.store(new, Ordering::Release);
        Ok(())
    }

    fn shrink(&self, new: u64) -> Result<()> {
        // The size field first: past it nothing is visible any more.
        self.set_size_field(new)?;
        self.size.store(new, Ordering::Release);
        self.bitmap.resize(new.div_ceil(self.cs()))?;
        self.bitmap.write_back()?;
        self.meta.set_len(self.needed_len(new))?;
        self.meta.flush()?;
        self.image.set_len(new)?;
        self.image.flush()
    }
}

impl Format for AddCow {
    fn format_name(&self) -> &'static str {
        "add-cow"
    }

    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    fn cluster_size(&self) -> u64 {
        self.cs()
    }

    fn backing(&self) -> Option<BackingSpec> {
        self.backing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn map(&self, off: u64, len: u64) -> Result<Extent> {
        let cs = self.cs();
        let c = off >> self.cluster_bits;
        let want = (off + len).div_ceil(cs) - c;
        let (set, n) = self.bitmap.run(c, want)?;
        let run_end = ((c + n) * cs).min(off + len);
        Ok(Extent::new(
            if set {
                Mapping::Data {
                    host: off,
                    in_place: true,
                }
            } else {
                Mapping::Unallocated
            },
            run_end - off,
        ))
    }

    fn map_cached(&self, off: u64, len: u64) -> Result<Option<Extent>> {
        let cs = self.cs();
        let c = off >> self.cluster_bits;
        let want = (off + len).div_ceil(cs) - c;
        let Some((set, n)) = self.bitmap.run_cached(c, want) else {
            return Ok(None);
        };
        let run_end = ((c + n) * cs).min(off + len);
        let mapping = if set {
            Mapping::Data {
                host: off,
                in_place: true,
            }
        } else {
            Mapping::Unallocated
        };
        Ok(Some(Extent::new(mapping, run_end - off)))
    }

    fn data_file(&self) -> &Arc<dyn BlockFile> {
        &self.image
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn allocate(&self, guest: u64, len: u64) -> Result<(u64, u64)> {
        // The image file mirrors the guest: nothing to reserve.
        Ok((guest, len))
    }

    fn link(&self, guest: u64, len: u64, host: u64) -> Result<()> {
        debug_assert_eq!(guest, host);
        let cs = self.cs();
        self.bitmap
            .set_range(guest / cs, (guest + len).div_ceil(cs), true)
    }

    fn discard(&self, guest: u64, len: u64) -> Result<()> {
        // Only without a backing file can owned clusters become holes
        // without changing what the guest reads (zeros either way).
        if self.backing().is_none() {
            self.image.discard(guest, len)?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        // Image file, then bitmap, then the add-cow file: two fdatasyncs.
        self.bitmap.sync()
    }

    fn truncate(&self, size: u64, backing_len: Option<u64>, old: OldReader) -> Result<()> {
        if size > MAX_SIZE {
            return Err(Error::TooLarge(format!("size {size} exceeds {MAX_SIZE}")));
        }
        self.flush()?;
        let cur = self.size();
        if size != cur && self.header.lock().unwrap_or_else(|p| p.into_inner()).size == 0 {
            // 2012 layout: the size is the image file's length, which the
            // resize changes before the bitmap is ready. Record the size
            // first (the same size either way, so a cut here is harmless).
            self.set_size_field(cur)?;
        }
        if size > cur {
            self.grow(cur, size, backing_len, old)
        } else if size < cur {
            self.shrink(size)
        } else {
            Ok(())
        }
    }

    fn set_backing(&self, backing: Option<(&str, &str)>) -> Result<()> {
        let mut h = self
            .header
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match backing {
            Some((name, fmt)) => {
                h.backing_file = name.into();
                h.backing_fmt = fmt.into();
            }
            None => {
                h.backing_file.clear();
                h.backing_fmt.clear();
            }
        }
        // Data and bits first, so the new header never describes stale bits.
        self.flush()?;
        if h.size == 0 {
            h.size = self.size();
        }
        self.write_header(&h)?;
        *self.backing.lock().unwrap_or_else(|p| p.into_inner()) =
            backing.map(|(n, f)| BackingSpec {
                name: n.into(),
                path: resolve_relative(&self.path, n),
                format: Some(f.into()),
            });
        *self.header.lock().unwrap_or_else(|p| p.into_inner()) = h;
        Ok(())
    }

    fn check(&self, repair: Repair, progress: &mut dyn FnMut(u64, u64)) -> Result<CheckReport> {
        // Bits are checked as the bitmap holds them, so write back first.
        if !self.read_only {
            self.flush()?;
        }
        let size = self.size();
        let clusters = size.div_ceil(self.cs());
        // The store, when there is one, lies past the bitmap and is kept.
        let need = self.needed_len(size);
        let (allocated, stray) = self.bitmap.scan(progress)?;
        let mut r = CheckReport {
            total_clusters: Some(clusters),
            allocated_clusters: Some(allocated),
            image_end_offset: Some(need),
            ..Default::default()
        };
        // The spec keeps the bits past the last cluster zero: a later grow
        // must not find stray bits there.
        if stray {
            r.leaks += 1;
            r.messages
                .push("Leaked bits: padding bits past the last cluster are set".into());
            if repair != Repair::None {
                self.bitmap.clear_padding()?;
                self.bitmap.write_back()?;
                self.meta.flush()?;
                r.leaks_fixed += 1;
            }
        }
        // The open already refused a bitmap shorter than `need`.
        let meta_len = self.meta.len()?;
        if meta_len > need {
            r.leaks += 1;
            r.messages.push(format!(
                "Leaked bytes: the add-cow file is {meta_len} bytes, its bitmap (and metadata store) end at {need}"
            ));
            if repair != Repair::None {
                self.meta.set_len(need)?;
                self.meta.flush()?;
                r.leaks_fixed += 1;
            }
        }
        // Set bits over bytes the image file does not have promise data
        // that is not there; the image file must cover the virtual size.
        let img_len = self.image.len()?;
        if img_len < size {
            r.corruptions += 1;
            r.messages.push(format!(
                "ERROR image file '{}' is {img_len} bytes, shorter than the virtual size {size}",
                self.image_path.display()
            ));
            if repair == Repair::All {
                self.image.set_len(size)?;
                self.image.flush()?;
                r.corruptions_fixed += 1;
            }
        }
        Ok(r)
    }

    fn make_empty(&self) -> Result<()> {
        self.flush()?;
        let clusters = self.size().div_ceil(self.cs());
        self.bitmap.set_range(0, clusters, false)?;
        self.bitmap.write_back()?;
        self.meta.flush()
    }

    fn allocated_bytes(&self) -> Result<u64> {
        let set = self.bitmap.count_set()?;
        // The last cluster may extend past the end.
        let cs = self.cs();
        let size = self.size();
        let mut bytes = set * cs;
        if !size.is_multiple_of(cs) && self.bitmap.run(size / cs, 1)?.0 {
            bytes -= cs - size % cs;
        }
        Ok(bytes)
    }

    fn info(&self) -> FormatInfo {
        FormatInfo {
            specific: vec![
                (
                    "image file".into(),
                    self.image_path.display().to_string().into(),
                ),
                ("cluster bits".into(), u64::from(self.cluster_bits).into()),
            ],
            data_file: Some(self.image_path.display().to_string()),
            ..Default::default()
        }
    }

    fn disk_size(&self) -> Result<u64> {
        Ok(self.meta.allocated_size()? + self.image.allocated_size()?)
    }

    fn meta_store(&self) -> Option<&dyn crate::meta::MetaStore> {
        Some(self)
    }
}
