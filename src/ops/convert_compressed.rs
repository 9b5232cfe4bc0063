//! `qemu-img convert -c`: every non-zero cluster of the sources written
//! compressed into `dst`. The calling thread reads, a few worker threads
//! compress (`Image::compress_cluster`, no lock), and one writer thread
//! stores (`Image::store_compressed`): compression, the costly part, runs
//! in parallel while stores stay serial, as QEMU's convert does with its
//! coroutines. Channels are bounded, so memory stays a few clusters per
//! thread.

use super::{default_workers, is_zero, read_concat, zero_run_at, Progress, CHUNK};
use crate::error::{Error, Result};
use crate::image::Image;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};

/// A cluster to compress: its offset in `dst` and its bytes.
type Job = (u64, Vec<u8>);
/// A compressed cluster: offset, bytes, compressed bytes (or none).
type Done = Result<(u64, Vec<u8>, Option<Vec<u8>>)>;

/// Copies `srcs` (concatenated) into `dst` compressed. Zero clusters are
/// skipped when `dst_is_zero`, else zeroed. `workers` compressing threads
/// (0: `default_workers`).
pub fn convert_compressed(
    srcs: &[&Image],
    dst: &Image,
    dst_is_zero: bool,
    workers: usize,
    progress: Progress,
) -> Result<()> {
    if !dst.supports_compression() {
        return Err(Error::Unsupported(
            "the target format does not support compression".into(),
        ));
    }
    let total = super::convert::total_fitting(srcs, dst)?;
    let cs = dst.cluster_size();
    let workers = if workers == 0 {
        default_workers()
    } else {
        workers
    };
    let (job_tx, job_rx) = sync_channel::<Job>(workers * 2);
    let (done_tx, done_rx) = sync_channel::<Done>(workers * 2);
    let job_rx = Arc::new(Mutex::new(job_rx));
    progress(0, total);
    std::thread::scope(|s| -> Result<()> {
        for _ in 0..workers {
            let rx = job_rx.clone();
            let tx = done_tx.clone();
            s.spawn(move || compress_jobs(dst, &rx, |d| tx.send(d).is_ok()));
        }
        drop(done_tx);
        let writer = s.spawn(move || store_all(dst, done_rx));
        let read = read_clusters(srcs, dst, total, cs, dst_is_zero, progress, |job| {
            job_tx.send(job).is_ok()
        });
        drop(job_tx);
        let stored = writer
            .join()
            .unwrap_or_else(|_| Err(Error::Corrupt("the compressed writer panicked".into())));
        // A store error is the cause when both failed.
        stored.and(read)
    })?;
    dst.flush()
}

/// A worker: compresses jobs until the reader is done or the writer gone.
fn compress_jobs(dst: &Image, rx: &Mutex<Receiver<Job>>, mut send: impl FnMut(Done) -> bool) {
    loop {
        let job = match rx.lock() {
            Ok(r) => r.recv(),
            Err(_) => return,
        };
        let Ok((off, data)) = job else { return };
        let r = dst.compress_cluster(&data).map(|c| (off, data, c));
        if !send(r) {
            return;
        }
    }
}

/// The writer: stores every result; stops at the first error (dropping
/// its receiver, which stops the workers and then the reader).
fn store_all(dst: &Image, rx: Receiver<Done>) -> Result<()> {
    for d in rx {
        let (off, data, c) = d?;
        dst.store_compressed(off, &data, c.as_deref())?;
    }
    Ok(())
}

/// Reads the sources cluster by cluster (of `dst`), skipping or zeroing
/// zero clusters, handing the others to `send` (false: stop).
fn read_clusters(
    srcs: &[&Image],
    dst: &Image,
    total: u64,
    cs: u64,
    dst_is_zero: bool,
    progress: Progress,
    mut send: impl FnMut(Job) -> bool,
) -> Result<()> {
    let mut pos = 0u64;
    let mut buf = Vec::new();
    while pos < total {
        let want = (total - pos).min(CHUNK.max(cs));
        // A zero run in one source, from a cluster boundary: whole
        // clusters of it need no reading.
        if let Some((zero, n)) = zero_run_at(srcs, pos, want)? {
            let whole = n / cs * cs;
            if zero && (whole > 0 || pos + n == total) {
                let skip = if whole > 0 { whole } else { n };
                if !dst_is_zero {
                    dst.write_zeroes(pos, skip)?;
                }
                pos += skip;
                progress(pos, total);
                continue;
            }
        }
        buf.resize(want as usize, 0);
        read_concat(srcs, pos, &mut buf)?;
        for (i, c) in buf.chunks(cs as usize).enumerate() {
            let off = pos + i as u64 * cs;
            if is_zero(c) {
                if !dst_is_zero {
                    dst.write_zeroes(off, c.len() as u64)?;
                }
                continue;
            }
            // A partial last cluster runs to the target's end (which may
            // be rounded up past the sources'), zero padded.
            let mut data = c.to_vec();
            data.resize((dst.size() - off).min(cs) as usize, 0);
            if !send((off, data)) {
                // The writer stopped: its error is reported.
                return Ok(());
            }
        }
        pos += want;
        progress(pos, total);
    }
    Ok(())
}
