//! Copying one image's guest contents into another (`qemu-img convert`).
//!
//! Several threads read (and decompress, for compressed sources) chunks
//! ahead of the calling thread, which writes them in order: reading and
//! writing overlap as in QEMU's convert, the target is filled front to
//! back (a qcow2 target gets its clusters in guest order), and memory stays
//! a few chunks per reading thread.

use super::{default_workers, read_concat, zero_blocks, zero_run_at, Progress, CHUNK};
use crate::error::{Error, Result};
use crate::image::Image;
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::channel;
use std::sync::{Condvar, Mutex};

/// Bytes below which a run of zeros is written rather than skipped.
const ZERO_GRAN: usize = 4096;

/// Chunks a reading thread may be ahead of the writer, beyond one each.
const AHEAD: u64 = 2;

/// One chunk as read: its bytes, and runs to write (`None`: zeros) as
/// (target offset, offset in `buf`, length).
struct Chunk {
    buf: Vec<u8>,
    runs: Vec<(u64, Option<usize>, u64)>,
}

/// Copies every guest byte of `srcs`, one after another (qemu-img convert
/// concatenates several sources), into `dst`, which must be at least as
/// large as their total. Runs that read as zeros are skipped when
/// `dst_is_zero` (a fresh image reads zeros) and zeroed otherwise, so the
/// copy stays sparse.
pub fn convert(srcs: &[&Image], dst: &Image, dst_is_zero: bool, progress: Progress) -> Result<()> {
    let total = total_fitting(srcs, dst)?;
    let chunks = total.div_ceil(CHUNK);
    let readers = default_workers().min(chunks.max(1) as usize);
    let window = readers as u64 + AHEAD;
    let next = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    // Chunks written so far, for the readers' window.
    let written = (Mutex::new(0u64), Condvar::new());
    progress(0, total);
    std::thread::scope(|s| -> Result<()> {
        let (tx, rx) = channel::<(u64, Result<Chunk>)>();
        for _ in 0..readers {
            let tx = tx.clone();
            let (next, stop, written) = (&next, &stop, &written);
            s.spawn(move || loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= chunks {
                    return;
                }
                {
                    let mut w = written.0.lock().unwrap_or_else(|p| p.into_inner());
                    while k >= *w + window && !stop.load(Ordering::Relaxed) {
                        w = written.1.wait(w).unwrap_or_else(|p| p.into_inner());
                    }
                }
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let pos = k * CHUNK;
                let len = CHUNK.min(total - pos);
                // A panic must reach the writer, which waits for this chunk.
                let r = catch_unwind(AssertUnwindSafe(|| read_chunk(srcs, pos, len)))
                    .unwrap_or_else(|_| {
                        Err(Error::Corrupt(format!(
                            "internal error reading {len} bytes at offset {pos}"
                        )))
                    });
                if tx.send((k, r)).is_err() {
                    return;
                }
            });
        }
        drop(tx);
        let r = write_in_order(dst, dst_is_zero, chunks, total, &rx, &written, progress);
        stop.store(true, Ordering::Relaxed);
        written.1.notify_all();
        r
    })?;
    dst.flush()
}

/// The writer: chunk after chunk in order, as the readers deliver them.
fn write_in_order(
    dst: &Image,
    dst_is_zero: bool,
    chunks: u64,
    total: u64,
    rx: &std::sync::mpsc::Receiver<(u64, Result<Chunk>)>,
    written: &(Mutex<u64>, Condvar),
    progress: Progress,
) -> Result<()> {
    let mut early: BTreeMap<u64, Result<Chunk>> = BTreeMap::new();
    for k in 0..chunks {
        let c = loop {
            if let Some(c) = early.remove(&k) {
                break c;
            }
            let (i, c) = rx
                .recv()
                .map_err(|_| Error::Corrupt("the reading threads stopped early".into()))?;
            if i == k {
                break c;
            }
            early.insert(i, c);
        }?;
        for &(at, from, len) in &c.runs {
            match from {
                Some(b) => dst.write(&c.buf[b..b + len as usize], at)?,
                None if !dst_is_zero => dst.write_zeroes(at, len)?,
                None => {}
            }
        }
        *written.0.lock().unwrap_or_else(|p| p.into_inner()) = k + 1;
        written.1.notify_all();
        progress(((k + 1) * CHUNK).min(total), total);
    }
    Ok(())
}

/// Reads `[pos, pos + len)` of the sources laid end to end: zero runs by
/// block status without reading, data read and split into zero and
/// non-zero blocks.
fn read_chunk(srcs: &[&Image], pos: u64, len: u64) -> Result<Chunk> {
    let mut c = Chunk {
        buf: Vec::new(),
        runs: Vec::new(),
    };
    let mut off = 0u64;
    while off < len {
        let at = pos + off;
        let (zero, n) = zero_run_at(srcs, at, len - off)?.unwrap_or((true, len - off));
        if zero {
            c.runs.push((at, None, n));
        } else {
            let b = c.buf.len();
            c.buf.resize(b + n as usize, 0);
            read_concat(srcs, at, &mut c.buf[b..])?;
            for (z, i, l) in zero_blocks(&c.buf[b..], ZERO_GRAN) {
                let from = (!z).then_some(b + i);
                c.runs.push((at + i as u64, from, l as u64));
            }
        }
        off += n;
    }
    Ok(c)
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
