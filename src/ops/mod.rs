//! Whole-image operations behind qemu-img's commands (convert, commit,
//! rebase, compare, map, bench), kept in the library so that every front
//! end (the command-line tools, C callers) shares one implementation.
//!
//! Long operations report progress through a callback `(done, total)` in
//! bytes; they do no printing of their own.

pub mod bench;
pub mod commit;
pub mod compare;
pub mod convert;
pub mod convert_compressed;
pub mod convert_dense;
pub mod map;
pub mod measure;
pub mod rebase;
pub mod snapshot;

use crate::error::Result;
use crate::image::Image;

pub use bench::{bench, BenchOptions};
pub use commit::commit;
pub use compare::{compare, CompareResult};
pub use convert::convert;
pub use convert_compressed::convert_compressed;
pub use convert_dense::convert_dense;
pub use map::{map, MapEntry};
pub use measure::{measure, Measure};
pub use rebase::rebase;

/// Progress callback: bytes done so far and bytes in all.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// A callback that ignores progress.
pub fn no_progress(_done: u64, _total: u64) {}

/// Bytes copied or compared per step: large enough to stream, small enough
/// to keep memory bounded.
pub const CHUNK: u64 = 4 << 20;

/// Whether `[off, ...)` reads as zeros through the whole backing chain
/// without reading data, and for how many bytes (at most `len`).
pub fn zero_run(img: &Image, off: u64, len: u64) -> Result<(bool, u64)> {
    let (_, st, n) = img.chain_status(off, len)?;
    Ok((st.zero && !st.data, n))
}

/// The image's runs through its chain as `(offset, length, data)`: `data`
/// when some layer stores bytes there that are not known to be zeros.
pub fn chain_runs(img: &Image) -> Result<Vec<(u64, u64, bool)>> {
    let mut out: Vec<(u64, u64, bool)> = Vec::new();
    let size = img.size();
    let mut off = 0;
    while off < size {
        let (_, st, n) = img.chain_status(off, size - off)?;
        let data = st.data && st.allocated && !st.zero;
        match out.last_mut() {
            Some(last) if last.2 == data && last.0 + last.1 == off => last.1 += n,
            _ => out.push((off, n, data)),
        }
        off += n;
    }
    Ok(out)
}

/// Worker threads used when the caller passes 0: the machine's cores,
/// at most 8.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().min(8))
}

/// `zero_run` in the source holding `pos` (the run stops at its end).
pub fn zero_run_at(srcs: &[&Image], pos: u64, len: u64) -> Result<Option<(bool, u64)>> {
    let mut base = 0;
    for s in srcs {
        if pos < base + s.size() {
            let n = len.min(base + s.size() - pos);
            return zero_run(s, pos - base, n).map(Some);
        }
        base += s.size();
    }
    Ok(None)
}

/// Reads `buf.len()` bytes at `pos` of the sources laid end to end.
pub fn read_concat(srcs: &[&Image], pos: u64, buf: &mut [u8]) -> Result<()> {
    let mut base = 0u64;
    let mut done = 0usize;
    for s in srcs {
        let end = base + s.size();
        let at = pos + done as u64;
        if done < buf.len() && at < end {
            let n = ((end - at) as usize).min(buf.len() - done);
            s.read(&mut buf[done..done + n], at - base)?;
            done += n;
        }
        base = end;
    }
    buf[done..].fill(0);
    Ok(())
}

/// Whether every byte of `buf` is zero (word at a time: this runs over
/// every byte a copy moves).
pub fn is_zero(buf: &[u8]) -> bool {
    // SAFETY: any bytes are a valid u64.
    let (head, body, tail) = unsafe { buf.align_to::<u64>() };
    head.iter().all(|&b| b == 0) && body.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

/// Splits `buf` into runs of all-zero and not-all-zero blocks of `gran`
/// bytes (the last may be shorter): `(is_zero, start, len)`.
pub fn zero_blocks(buf: &[u8], gran: usize) -> Vec<(bool, usize, usize)> {
    let gran = gran.max(1);
    let mut out: Vec<(bool, usize, usize)> = Vec::new();
    for (i, blk) in buf.chunks(gran).enumerate() {
        let z = is_zero(blk);
        match out.last_mut() {
            Some(last) if last.0 == z => last.2 += blk.len(),
            _ => out.push((z, i * gran, blk.len())),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_block_runs() {
        let mut b = vec![0u8; 10];
        b[4] = 1;
        assert_eq!(
            zero_blocks(&b, 3),
            vec![(true, 0, 3), (false, 3, 3), (true, 6, 4)]
        );
        assert_eq!(zero_blocks(&[], 3), vec![]);
        let mut big = vec![0u8; 4099];
        assert!(is_zero(&big[1..]));
        big[4098] = 1;
        assert!(!is_zero(&big[3..]));
        big[4098] = 0;
        big[1] = 1;
        assert!(!is_zero(&big[1..]) && is_zero(&big[2..]));
    }
}
