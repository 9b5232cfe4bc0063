//! Changing an image's backing file (`qemu-img rebase`).
//!
//! Safe mode keeps what the guest reads: every range this layer does not
//! own and whose contents differ between the old and the new backing file
//! is first copied into this layer. With no new backing file (`-b ""`)
//! every range this layer does not own is copied in; for add-cow that
//! leaves the raw image file standing alone. Each copy is an ordinary write,
//! so its allocation (an add-cow bit) reaches the disk only after its data:
//! an interrupted rebase leaves a consistent image still on the old backing
//! file, and running it again finishes the job.

use super::{is_zero, zero_blocks, zero_run, Progress, CHUNK};
use crate::error::{Error, Result};
use crate::format::resolve_relative;
use crate::image::{Backing, Image, OpenOptions};
use std::sync::Arc;

/// The new backing file: its name as recorded and its format.
#[derive(Clone, Debug)]
pub struct NewBacking<'a> {
    pub name: &'a str,
    /// `None` probes the file and records what it finds.
    pub format: Option<&'a str>,
}

/// Rebases `img` onto `new` (`None` detaches). With `unsafe_`, only the
/// recorded name changes (`qemu-img rebase -u`).
pub fn rebase(
    img: &Image,
    new: Option<NewBacking>,
    unsafe_: bool,
    progress: Progress,
) -> Result<()> {
    // Refuse before copying anything into a format that cannot record it.
    let driver = crate::format::find_driver(img.format_name())?;
    if !driver.supports_backing {
        return Err(Error::Unsupported(format!(
            "{} cannot change its backing file",
            img.format_name()
        )));
    }
    let new_img = match &new {
        Some(nb) if !unsafe_ => {
            let path = resolve_relative(img.path(), nb.name);
            let opts = OpenOptions {
                format: nb.format.map(str::to_owned),
                read_only: true,
                ..Default::default()
            };
            let b = Image::open_in(img.storage().clone(), &path, &opts)
                .map_err(|e| e.context(format!("new backing file '{}'", nb.name)))?;
            Some(Arc::new(b))
        }
        _ => None,
    };
    let fmt_name: Option<String> = match (&new, &new_img) {
        (Some(nb), _) if nb.format.is_some() => nb.format.map(str::to_owned),
        (Some(_), Some(b)) => Some(b.format_name().to_owned()),
        (Some(nb), None) => {
            // Unsafe mode without -F: probe the file, if it is there.
            let path = resolve_relative(img.path(), nb.name);
            let opts = OpenOptions {
                read_only: true,
                no_backing: true,
                ..Default::default()
            };
            Some(
                Image::open_in(img.storage().clone(), &path, &opts)
                    .map_err(|e| e.context(format!("new backing file '{}'", nb.name)))?
                    .format_name()
                    .to_owned(),
            )
        }
        (None, _) => None,
    };
    if !unsafe_ {
        copy_differences(img, new_img.as_deref(), progress)?;
    }
    let rec = new
        .as_ref()
        .map(|nb| (nb.name, fmt_name.as_deref().unwrap_or("")));
    img.set_backing_file(rec)?;
    img.set_backing_layer(new_img.map(|b| b as Arc<dyn Backing>));
    img.flush()
}

fn read_view(b: Option<&dyn Backing>, buf: &mut [u8], off: u64) -> Result<()> {
    match b {
        Some(b) => b.read_backing(&crate::io::IoVec::from_mut(buf), off),
        None => {
            buf.fill(0);
            Ok(())
        }
    }
}

/// Whether the old backing layer reads zeros over all of `[off, off + n)`
/// by its metadata alone (past its end, or in holes and zero clusters).
fn old_reads_zero(old: Option<&dyn Backing>, off: u64, n: u64) -> Result<bool> {
    let Some(b) = old else {
        return Ok(true);
    };
    let Some(img) = b.as_image() else {
        return Ok(false);
    };
    let size = img.size();
    let mut pos = off;
    while pos < (off + n).min(size) {
        let (z, len) = zero_run(img, pos, (off + n).min(size) - pos)?;
        if !z {
            return Ok(false);
        }
        pos += len;
    }
    Ok(true)
}

fn copy_differences(img: &Image, new: Option<&Image>, progress: Progress) -> Result<()> {
    let old = img.backing();
    let size = img.size();
    // Compare and copy in whole clusters, so that each write covers its
    // clusters entirely and needs no copy-on-write of its own.
    let gran = img.cluster_size().clamp(4096, CHUNK) as usize;
    let (mut ob, mut nb) = (Vec::new(), Vec::new());
    let mut off = 0;
    progress(0, size);
    while off < size {
        let (st, n) = img.block_status(off, (size - off).min(CHUNK))?;
        if !st.allocated && new.is_none() && old_reads_zero(old.as_deref(), off, n)? {
            // Nothing to read: the old backing chain knows these are zeros.
            img.write_zeroes(off, n)?;
        } else if !st.allocated {
            ob.resize(n as usize, 0);
            read_view(old.as_deref(), &mut ob, off)?;
            match new {
                None => {
                    for (z, at, len) in zero_blocks(&ob, gran) {
                        let pos = off + at as u64;
                        if z {
                            img.write_zeroes(pos, len as u64)?;
                        } else {
                            img.write(&ob[at..at + len], pos)?;
                        }
                    }
                }
                Some(nimg) => {
                    nb.resize(n as usize, 0);
                    read_view(Some(nimg as &dyn Backing), &mut nb, off)?;
                    let mut at = 0;
                    while at < ob.len() {
                        let len = gran.min(ob.len() - at);
                        let o = &ob[at..at + len];
                        if o != &nb[at..at + len] {
                            let pos = off + at as u64;
                            if is_zero(o) {
                                img.write_zeroes(pos, len as u64)?;
                            } else {
                                img.write(o, pos)?;
                            }
                        }
                        at += len;
                    }
                }
            }
        }
        off += n;
        progress(off, size);
    }
    Ok(())
}
