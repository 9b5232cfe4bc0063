//! Copying one image's guest contents into another (`qemu-img convert`).

use super::{zero_blocks, zero_run, Progress, CHUNK};
use crate::error::{Error, Result};
use crate::image::Image;

/// Bytes below which a run of zeros is written rather than skipped.
const ZERO_GRAN: usize = 4096;

/// Copies every guest byte of `srcs`, one after another (qemu-img convert
/// concatenates several sources), into `dst`, which must be at least as
/// large as their total. Runs that read as zeros are skipped when
/// `dst_is_zero` (a fresh image reads zeros) and zeroed otherwise, so the
/// copy stays sparse.
pub fn convert(srcs: &[&Image], dst: &Image, dst_is_zero: bool, progress: Progress) -> Result<()> {
    let total = total_fitting(srcs, dst)?;
    let mut buf = Vec::new();
    let mut base = 0;
    progress(0, total);
    for src in srcs {
        let size = src.size();
        let mut off = 0;
        while off < size {
            let want = (size - off).min(CHUNK);
            let (zero, n) = zero_run(src, off, want)?;
            if zero {
                if !dst_is_zero {
                    dst.write_zeroes(base + off, n)?;
                }
            } else {
                buf.resize(n as usize, 0);
                src.read(&mut buf, off)?;
                for (z, at, len) in zero_blocks(&buf, ZERO_GRAN) {
                    let pos = base + off + at as u64;
                    if !z {
                        dst.write(&buf[at..at + len], pos)?;
                    } else if !dst_is_zero {
                        dst.write_zeroes(pos, len as u64)?;
                    }
                }
            }
            off += n;
            progress(base + off, total);
        }
        base += size;
    }
    dst.flush()
}

/// The sources' total size, which `dst` must be able to hold.
pub(super) fn total_fitting(srcs: &[&Image], dst: &Image) -> Result<u64> {
    let total = srcs
        .iter()
        .try_fold(0u64, |t, s| t.checked_add(s.size()))
        .ok_or_else(|| Error::TooLarge("the sources' total size".into()))?;
    if dst.size() < total {
        return Err(Error::InvalidArgument(format!(
            "target is {} bytes, smaller than the source ({total} bytes)",
            dst.size()
        )));
    }
    Ok(total)
}
