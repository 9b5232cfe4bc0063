//! `qemu-img convert -S 0`: a copy with no zero detection, so that every
//! byte of the target is written and the target file fully allocated.

use super::{Progress, CHUNK};
use crate::error::Result;
use crate::image::Image;

/// Copies every guest byte of `srcs`, one after another, into `dst`,
/// writing zeros as data.
pub fn convert_dense(srcs: &[&Image], dst: &Image, progress: Progress) -> Result<()> {
    let total = super::convert::total_fitting(srcs, dst)?;
    let mut buf = Vec::new();
    let mut base = 0;
    progress(0, total);
    for src in srcs {
        let size = src.size();
        let mut off = 0;
        while off < size {
            let n = (size - off).min(CHUNK);
            buf.resize(n as usize, 0);
            src.read(&mut buf, off)?;
            dst.write(&buf, base + off)?;
            off += n;
            progress(base + off, total);
        }
        base += size;
    }
    dst.flush()
}
