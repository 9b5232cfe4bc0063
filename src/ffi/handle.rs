//! The image handle: create, probe, open, close, change of backing file.

use super::args::{opt_str_arg, out_arg, path_arg, str_arg};
use super::backing::{CallbackBacking, CallerManaged};
use super::error::guard;
use super::{
    cowblk_backing_ops, COWBLK_OPEN_CALLER_BACKING, COWBLK_OPEN_CONFINED, COWBLK_OPEN_FORCE_SHARE,
    COWBLK_OPEN_METADATA_ONLY, COWBLK_OPEN_NO_BACKING, COWBLK_OPEN_NO_LOCK, COWBLK_OPEN_RDONLY,
};
use crate::error::{Error, Result};
use crate::format::{self, CreateOptions};
use crate::image::{Backing, Image, OpenOptions};
use std::ffi::{c_char, c_int, c_void, CString};
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// An open image. Opaque; made by `cowblk_open*`, freed by `cowblk_close`.
///
/// Thread-safety: every call except `cowblk_close` may run on the same
/// handle from many threads at once. Reads and writes to different clusters
/// run in parallel; writes that allocate the same cluster are serialised
/// inside the library.
pub struct cowblk_image {
    pub(crate) img: Image,
    pub(crate) backing: BackingMode,
}

// C shares one handle between threads with no lock of ours around it: the
// handle must stay Send + Sync (no global lock around I/O either).
const _: fn() = || {
    fn shareable<T: Send + Sync>() {}
    shareable::<cowblk_image>();
};

/// Who supplies backing data for a handle.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum BackingMode {
    /// The library opens the chain the image names.
    Library,
    /// `cowblk_backing_ops` callbacks.
    Callbacks,
    /// COWBLK_OPEN_CALLER_BACKING: nobody; the caller works around it.
    Caller,
}

/// The handle behind a C pointer.
///
/// # Safety
/// `p` is NULL or a live handle from `cowblk_open*`.
pub(crate) unsafe fn image<'a>(p: *mut cowblk_image) -> Result<&'a cowblk_image> {
    p.as_ref()
        .ok_or_else(|| Error::InvalidArgument("image handle is NULL".into()))
}

/// A NUL-terminated copy of a format name that lives as long as the
/// library, for out-parameters that hand names to C.
pub(crate) fn static_format_name(name: &str) -> *const c_char {
    static NAMES: OnceLock<Vec<(&'static str, CString)>> = OnceLock::new();
    let names = NAMES.get_or_init(|| {
        format::drivers()
            .iter()
            .map(|d| (d.name, CString::new(d.name).unwrap_or_default()))
            .collect()
    });
    names
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(c"".as_ptr(), |(_, c)| c.as_ptr())
}

/// Creates an image. `options` is a qemu-img style list
/// ("size=1G,backing_file=base.raw,backing_fmt=raw,image_file=disk.img";
/// ",," stands for a comma inside a value) or NULL.
///
/// add-cow options: size, backing_file, backing_fmt (required with a
/// backing file), image_file (required; created at the virtual size when
/// missing, an existing one is used and never shrunk), cluster_size. raw:
/// size. qcow2: qemu-img's options (size, cluster_size, compat,
/// lazy_refcounts, refcount_bits, extended_l2, compression_type,
/// preallocation, data_file, data_file_raw, backing_file, backing_fmt),
/// refused where qemu-img refuses them. Without size, the backing file's size is used. Names resolve
/// relative to the directory of `path`. On failure nothing is left behind.
///
/// Returns 0, or a negative errno (-EINVAL for a bad option, -EEXIST, -EACCES,
/// -ENOENT for a missing backing file, ...).
///
/// # Safety
/// `format`, `path` and a non-NULL `options` are NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn cowblk_create(
    format: *const c_char,
    path: *const c_char,
    options: *const c_char,
) -> c_int {
    guard(|| {
        let format = str_arg(format, "format")?;
        let path = path_arg(path, "path")?;
        let mut opts = CreateOptions::new();
        if let Some(o) = opt_str_arg(options, "options")? {
            opts.parse_into(o)?;
        }
        Image::create(&path, format, &opts)?;
        Ok(0)
    })
}

/// Creates an image from `count` option keys and values (no escaping
/// needed). Same options and result as `cowblk_create`.
///
/// # Safety
/// `keys` and `values` point to `count` NUL-terminated strings each (they
/// may be NULL when `count` is 0).
#[no_mangle]
pub unsafe extern "C" fn cowblk_create_kv(
    format: *const c_char,
    path: *const c_char,
    keys: *const *const c_char,
    values: *const *const c_char,
    count: usize,
) -> c_int {
    guard(|| {
        let format = str_arg(format, "format")?;
        let path = path_arg(path, "path")?;
        let mut opts = CreateOptions::new();
        if count > 0 {
            if keys.is_null() || values.is_null() {
                return Err(Error::InvalidArgument(
                    "option keys or values is NULL".into(),
                ));
            }
            let keys = std::slice::from_raw_parts(keys, count);
            let values = std::slice::from_raw_parts(values, count);
            for (i, (&k, &v)) in keys.iter().zip(values).enumerate() {
                let k = str_arg(k, &format!("option key {i}"))?;
                let v = str_arg(v, &format!("value of option '{k}'"))?;
                opts.set(k, v);
            }
        }
        Image::create(&path, format, &opts)?;
        Ok(0)
    })
}

/// Names the format of the file at `path` from its first bytes, as QEMU's
/// probing does (a file no driver recognises is "raw"). On success stores a
/// string owned by the library, valid until it is unloaded, in `*format`.
///
/// # Safety
/// `path` is a NUL-terminated string; `format` is writable.
#[no_mangle]
pub unsafe extern "C" fn cowblk_probe(path: *const c_char, format: *mut *const c_char) -> c_int {
    guard(|| {
        let path = path_arg(path, "path")?;
        out_arg(format, "format")?;
        let d = probe_file(&path)?;
        *format = static_format_name(d.name);
        Ok(0)
    })
}

fn probe_file(path: &Path) -> Result<&'static format::Driver> {
    let f = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("could not open '{}'", path.display()), e))?;
    let mut buf = Vec::with_capacity(format::PROBE_BYTES);
    f.take(format::PROBE_BYTES as u64)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io(format!("could not read '{}'", path.display()), e))?;
    Ok(format::probe(&buf, path))
}

pub(super) fn open_options(
    format: Option<&str>,
    flags: u32,
    cache_size: u64,
    backing: Option<Arc<dyn Backing>>,
) -> Result<OpenOptions> {
    let known = COWBLK_OPEN_RDONLY
        | COWBLK_OPEN_NO_BACKING
        | COWBLK_OPEN_CALLER_BACKING
        | COWBLK_OPEN_FORCE_SHARE
        | COWBLK_OPEN_NO_LOCK
        | COWBLK_OPEN_CONFINED
        | COWBLK_OPEN_METADATA_ONLY;
    if flags & !known != 0 {
        return Err(Error::InvalidArgument(format!(
            "unknown open flags {:#x}",
            flags & !known
        )));
    }
    let caller = flags & COWBLK_OPEN_CALLER_BACKING != 0;
    if caller && flags & COWBLK_OPEN_NO_BACKING != 0 {
        return Err(Error::InvalidArgument(
            "COWBLK_OPEN_NO_BACKING and COWBLK_OPEN_CALLER_BACKING exclude each other".into(),
        ));
    }
    if backing.is_some() && flags & (COWBLK_OPEN_NO_BACKING | COWBLK_OPEN_CALLER_BACKING) != 0 {
        return Err(Error::InvalidArgument(
            "backing callbacks exclude COWBLK_OPEN_NO_BACKING and COWBLK_OPEN_CALLER_BACKING"
                .into(),
        ));
    }
    let backing = if caller {
        Some(Arc::new(CallerManaged) as Arc<dyn Backing>)
    } else {
        backing
    };
    Ok(OpenOptions {
        format_opts: Vec::new(),
        format: format.map(str::to_owned),
        read_only: flags & COWBLK_OPEN_RDONLY != 0,
        no_backing: flags & COWBLK_OPEN_NO_BACKING != 0,
        cache_size,
        backing,
        snapshot: None,
        force_share: flags & COWBLK_OPEN_FORCE_SHARE != 0,
        no_lock: flags & COWBLK_OPEN_NO_LOCK != 0,
        confined: flags & COWBLK_OPEN_CONFINED != 0,
        metadata_only: flags & COWBLK_OPEN_METADATA_ONLY != 0,
        repair: false,
    })
}

/// Opens `path` as `format` and the rest of the chain and stores a new
/// handle in `*out`, or does nothing to `*out` on failure.
///
/// `format` NULL probes the file (see `cowblk_probe`). `flags` is a mask of
/// COWBLK_OPEN_*. `cache_size` is the metadata cache budget in bytes per
/// image (0 = the driver's default; for add-cow one bitmap byte covers 8
/// clusters, and the cache bounds memory however large the image is).
/// Backing files open read-only with the format recorded in the image.
///
/// # Safety
/// `path` and a non-NULL `format` are NUL-terminated strings; `out` is
/// writable.
#[no_mangle]
pub unsafe extern "C" fn cowblk_open(
    path: *const c_char,
    format: *const c_char,
    flags: u32,
    cache_size: u64,
    out: *mut *mut cowblk_image,
) -> c_int {
    guard(|| {
        let path = path_arg(path, "path")?;
        let format = opt_str_arg(format, "format")?;
        out_arg(out, "out")?;
        let opts = open_options(format, flags, cache_size, None)?;
        let mode = if flags & COWBLK_OPEN_CALLER_BACKING != 0 {
            BackingMode::Caller
        } else {
            BackingMode::Library
        };
        *out = open_handle(&path, &opts, mode)?;
        Ok(0)
    })
}

/// Like `cowblk_open`, but the backing image is read through `ops` (called
/// with `opaque`) instead of the file the image names. `ops->get_length` is
/// called once, here. `flags` may not hold COWBLK_OPEN_NO_BACKING or
/// COWBLK_OPEN_CALLER_BACKING.
///
/// # Safety
/// As `cowblk_open`; `ops` points to `ops->struct_size` readable bytes and
/// `opaque` stays valid, and the callbacks callable from any thread using
/// the handle, until `cowblk_close`.
#[no_mangle]
pub unsafe extern "C" fn cowblk_open_with_backing(
    path: *const c_char,
    format: *const c_char,
    flags: u32,
    cache_size: u64,
    ops: *const cowblk_backing_ops,
    opaque: *mut c_void,
    out: *mut *mut cowblk_image,
) -> c_int {
    guard(|| {
        let path = path_arg(path, "path")?;
        let format = opt_str_arg(format, "format")?;
        out_arg(out, "out")?;
        let b = Arc::new(CallbackBacking::new(ops, opaque)?);
        let opts = open_options(format, flags, cache_size, Some(b))?;
        *out = open_handle(&path, &opts, BackingMode::Callbacks)?;
        Ok(0)
    })
}

pub(crate) fn open_handle(
    path: &Path,
    opts: &OpenOptions,
    backing: BackingMode,
) -> Result<*mut cowblk_image> {
    let img = Image::open(path, opts)?;
    Ok(Box::into_raw(Box::new(cowblk_image { img, backing })))
}

/// Flushes and frees the handle in `*img` and sets `*img` to NULL. NULL or
/// a NULL `*img` is a no-op returning 0. The handle is freed even when the
/// final flush fails (the negative errno then says the last writes may not
/// be durable).
///
/// The caller must make sure no other thread is using the handle.
///
/// # Safety
/// `img` is NULL or points to NULL or to a live handle.
#[no_mangle]
pub unsafe extern "C" fn cowblk_close(img: *mut *mut cowblk_image) -> c_int {
    guard(|| {
        if img.is_null() || (*img).is_null() {
            return Ok(0);
        }
        let h = Box::from_raw(*img);
        *img = std::ptr::null_mut();
        h.img.close()?;
        Ok(0)
    })
}

/// Records a new backing file name and format in the image without copying
/// any data (`qemu-img rebase -u`); `backing_file` NULL detaches the image
/// from its backing file. The name resolves relative to the image's
/// directory. When the library manages the chain, the new backing file is
/// opened first (a failure changes nothing) and used from then on; with
/// COWBLK_OPEN_CALLER_BACKING or backing callbacks only the record changes.
///
/// # Safety
/// `img` is a live handle; the strings are NUL-terminated or NULL.
#[no_mangle]
pub unsafe extern "C" fn cowblk_change_backing_file(
    img: *mut cowblk_image,
    backing_file: *const c_char,
    backing_fmt: *const c_char,
) -> c_int {
    guard(|| {
        let h = image(img)?;
        let file = opt_str_arg(backing_file, "backing_file")?;
        let fmt = opt_str_arg(backing_fmt, "backing_fmt")?;
        let rec = match (file, fmt) {
            (Some(f), Some(t)) if !f.is_empty() => Some((f, t)),
            (Some(f), None) if !f.is_empty() => {
                return Err(Error::InvalidArgument(format!(
                    "backing file '{f}' needs its format"
                )))
            }
            _ => None,
        };
        let layer = match rec {
            Some((f, t)) if h.backing == BackingMode::Library => {
                let p = format::resolve_relative(h.img.path(), f);
                let b = Image::open_in(
                    h.img.storage().clone(),
                    &p,
                    &OpenOptions {
                        format: Some(t.to_owned()),
                        read_only: true,
                        ..Default::default()
                    },
                )
                .map_err(|e| e.context(format!("backing file '{f}'")))?;
                Some(Arc::new(b) as Arc<dyn Backing>)
            }
            _ => None,
        };
        h.img.set_backing_file(rec)?;
        if h.backing == BackingMode::Library {
            h.img.set_backing_layer(layer);
        }
        Ok(0)
    })
}
