//! Opening images as qemu-img does: -U and --confined applied, lock
//! refusals in qemu-img's words, the probed-raw warning; and `-p`.

use crate::args::{fail, lib, Fail};
use crate::shared::{self, ProgressBar};
use cowblk::ops;
use cowblk::{Error, Image, OpenOptions};
use std::sync::atomic::{AtomicBool, Ordering};

/// `--confined` was given: every image opened holds the files it names to
/// its own directory (`OpenOptions::confined`).
static CONFINED: AtomicBool = AtomicBool::new(false);

/// Set by -U/--force-share: opens of the command's source images share
/// every permission (read-only opens only, as in qemu-img).
static FORCE_SHARE: AtomicBool = AtomicBool::new(false);

pub fn set_confined() {
    CONFINED.store(true, Ordering::Relaxed);
}

pub fn confined() -> bool {
    CONFINED.load(Ordering::Relaxed)
}

pub fn force_share() {
    FORCE_SHARE.store(true, Ordering::Relaxed);
}

/// Whether -U was given.
pub fn forcing_share() -> bool {
    FORCE_SHARE.load(Ordering::Relaxed)
}

/// -U covers a command's sources only: called before its output opens.
pub fn end_force_share() {
    FORCE_SHARE.store(false, Ordering::Relaxed);
}

pub fn open(file: &str, fmt: Option<String>, read_only: bool) -> Result<Image, Fail> {
    open_with(
        file,
        &OpenOptions {
            format: fmt,
            read_only,
            ..Default::default()
        },
    )
}

/// Opens an image. The library's warnings (a corrupt bit on a read-only
/// open) are not printed: qemu-img opens such images silently too.
pub fn open_with(file: &str, opts: &OpenOptions) -> Result<Image, Fail> {
    let mut opts = opts.clone();
    opts.force_share |= FORCE_SHARE.load(Ordering::Relaxed);
    opts.confined |= confined();
    let img = Image::open(file, &opts).map_err(|e| match e {
        // Said as qemu-img says it.
        Error::Locked(m) | Error::InvalidArgument(m) if is_lock_refusal(&m) => {
            fail(format!("Could not open '{file}': {m}"))
        }
        // A format named with -f that does not exist.
        Error::UnknownFormat(_) if opts.format.is_some() => fail(format!(
            "Could not open '{file}': Unknown driver '{}'",
            opts.format.as_deref().unwrap_or_default()
        )),
        e => lib(e),
    })?;
    shared::warn_probed_raw(&img);
    Ok(img)
}

/// Whether a message is a lock conflict or a refused force-share.
fn is_lock_refusal(m: &str) -> bool {
    m.starts_with("Failed to get ") || m.starts_with("force-share=on")
}

/// How a command shows `-p`: qemu-img's step between printed values, and
/// whether it prints 100.00 once more when done.
#[derive(Clone, Copy)]
pub struct ProgressStyle {
    pub min_skip: f64,
    pub final_100: bool,
}

/// A progress callback for `-p`, printing as qemu-img does.
pub fn with_progress<T, E>(
    enabled: bool,
    style: ProgressStyle,
    f: impl FnOnce(ops::Progress) -> Result<T, E>,
) -> Result<T, E> {
    let mut bar = ProgressBar::new(enabled, style.min_skip);
    let r = f(&mut |d, t| bar.update(d, t));
    bar.finish(style.final_100 && r.is_ok());
    r
}
