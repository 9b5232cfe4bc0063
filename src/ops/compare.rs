//! Comparing two images' guest contents (`qemu-img compare`).

use super::{zero_run, Progress, CHUNK};
use crate::error::Result;
use crate::image::Image;

/// Differences are reported per 512-byte sector, as qemu-img does.
const SECTOR: u64 = 512;

/// What `compare` found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompareResult {
    /// The virtual sizes differ.
    pub size_mismatch: bool,
    /// The first sector whose contents differ (past the shorter image, the
    /// longer must read zeros).
    pub first_mismatch: Option<u64>,
    /// Strict mode: the first offset where the two images' block status
    /// (present, data, zero across the chain) differs, when that comes
    /// before any content mismatch.
    pub status_mismatch: Option<u64>,
}

impl CompareResult {
    pub fn identical(&self, strict: bool) -> bool {
        self.first_mismatch.is_none()
            && self.status_mismatch.is_none()
            && !(strict && self.size_mismatch)
    }
}

/// Compares `a` and `b`. With `strict`, a size difference alone is a
/// mismatch and the contents are not read, and so is a difference in
/// allocation (as `qemu-img compare -s`).
pub fn compare(a: &Image, b: &Image, strict: bool, progress: Progress) -> Result<CompareResult> {
    let (sa, sb) = (a.size(), b.size());
    let r = CompareResult {
        size_mismatch: sa != sb,
        first_mismatch: None,
        status_mismatch: None,
    };
    if strict && r.size_mismatch {
        return Ok(r);
    }
    let status = if strict {
        first_status_mismatch(a, b)?
    } else {
        None
    };
    let r = contents(a, b, r, progress)?;
    // Whichever comes first is what a walk in offset order meets first.
    Ok(match (status, r.first_mismatch) {
        (Some(s), Some(c)) if c < s => r,
        (Some(s), _) => CompareResult {
            status_mismatch: Some(s),
            first_mismatch: None,
            ..r
        },
        (None, _) => r,
    })
}

/// The first offset where the chain status of `a` and `b` differs.
fn first_status_mismatch(a: &Image, b: &Image) -> Result<Option<u64>> {
    let end = a.size().min(b.size());
    let mut off = 0;
    while off < end {
        let (_, x, n1) = a.chain_status(off, end - off)?;
        let (_, y, n2) = b.chain_status(off, end - off)?;
        if (x.allocated, x.data, x.zero) != (y.allocated, y.data, y.zero) {
            return Ok(Some(off));
        }
        off += n1.min(n2);
    }
    Ok(None)
}

fn contents(
    a: &Image,
    b: &Image,
    mut r: CompareResult,
    progress: Progress,
) -> Result<CompareResult> {
    let (sa, sb) = (a.size(), b.size());
    let common = sa.min(sb);
    let total = sa.max(sb);
    let (mut ba, mut bb) = (Vec::new(), Vec::new());
    let mut off = 0;
    progress(0, total);
    while off < common {
        let want = (common - off).min(CHUNK);
        let (za, na) = zero_run(a, off, want)?;
        let (zb, nb) = zero_run(b, off, want)?;
        let n = na.min(nb);
        if !(za && zb) {
            ba.resize(n as usize, 0);
            bb.resize(n as usize, 0);
            a.read(&mut ba, off)?;
            b.read(&mut bb, off)?;
            if let Some(i) = ba.iter().zip(&bb).position(|(x, y)| x != y) {
                r.first_mismatch = Some((off + i as u64) / SECTOR * SECTOR);
                return Ok(r);
            }
        }
        off += n;
        progress(off, total);
    }
    let longer = if sa > sb { a } else { b };
    while off < total {
        let (z, n) = zero_run(longer, off, (total - off).min(CHUNK))?;
        if !z {
            ba.resize(n as usize, 0);
            longer.read(&mut ba, off)?;
            if let Some(i) = ba.iter().position(|&x| x != 0) {
                r.first_mismatch = Some((off + i as u64) / SECTOR * SECTOR);
                return Ok(r);
            }
        }
        off += n;
        progress(off, total);
    }
    Ok(r)
}
