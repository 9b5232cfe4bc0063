//! A request-rate benchmark with qemu-img bench's parameters.

use super::Progress;
use crate::error::{Error, Result};
use crate::image::Image;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// qemu-img bench's knobs (`-c -d -o -s -S -w --flush-interval --pattern`).
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub count: u64,
    /// Requests in flight at once (one thread each).
    pub depth: u64,
    pub offset: u64,
    pub buf_size: u64,
    /// Distance between successive requests; 0 = `buf_size`.
    pub step: u64,
    pub write: bool,
    /// Flush after every this many writes (0 = never).
    pub flush_interval: u64,
    pub pattern: u8,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            count: 75000,
            depth: 64,
            offset: 0,
            buf_size: 4096,
            step: 0,
            write: false,
            flush_interval: 0,
            pattern: 0,
        }
    }
}

impl BenchOptions {
    pub fn step(&self) -> u64 {
        if self.step == 0 {
            self.buf_size
        } else {
            self.step
        }
    }

    /// Offset of request `i`: successive steps wrap around the image as in
    /// qemu-img.
    pub fn request_offset(&self, i: u64, image_size: u64) -> u64 {
        if i == 0 {
            return self.offset;
        }
        if image_size <= self.buf_size {
            return 0;
        }
        let m = (image_size - self.buf_size) as u128;
        ((self.offset as u128 + i as u128 * self.step() as u128) % m) as u64
    }
}

/// Runs the benchmark and returns the elapsed time.
pub fn bench(img: &Image, o: &BenchOptions, progress: Progress) -> Result<Duration> {
    if o.buf_size == 0 || o.buf_size > 1 << 30 {
        return Err(Error::InvalidArgument(format!(
            "buffer size {} must be from 1 byte to 1 GiB",
            o.buf_size
        )));
    }
    if o.depth == 0 || o.depth > 1024 {
        return Err(Error::InvalidArgument(format!(
            "depth {} must be from 1 to 1024",
            o.depth
        )));
    }
    let size = img.size();
    if o.buf_size > size {
        return Err(Error::OutOfRange(format!(
            "buffer size {} is larger than the image ({size} bytes)",
            o.buf_size
        )));
    }
    let next = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let first_err: Mutex<Option<Error>> = Mutex::new(None);
    let start = Instant::now();
    let main = std::thread::current();
    std::thread::scope(|s| {
        let mut workers = Vec::new();
        for _ in 0..o.depth.min(o.count.max(1)) {
            workers.push(s.spawn(|| {
                let mut buf = vec![o.pattern; o.buf_size as usize];
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= o.count {
                        break;
                    }
                    let off = o.request_offset(i, size);
                    let r = if o.write {
                        img.write(&buf, off).and_then(|_| {
                            if o.flush_interval > 0 && (i + 1).is_multiple_of(o.flush_interval) {
                                img.flush()
                            } else {
                                Ok(())
                            }
                        })
                    } else {
                        img.read(&mut buf, off)
                    };
                    if let Err(e) = r {
                        let mut fe = first_err.lock().unwrap_or_else(|p| p.into_inner());
                        fe.get_or_insert(e);
                        next.store(o.count, Ordering::Relaxed);
                        break;
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                main.unpark();
            }));
        }
        // Progress is reported from this thread only; the workers just count.
        while !workers.iter().all(|w| w.is_finished()) {
            progress(done.load(Ordering::Relaxed), o.count);
            std::thread::park_timeout(Duration::from_millis(100));
        }
        progress(done.load(Ordering::Relaxed), o.count);
    });
    if let Some(e) = first_err.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    if o.write {
        img.flush()?;
    }
    Ok(start.elapsed())
}
