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

    /// The offset of the request after one at `prev`: one step on,
    /// wrapping around the image end as qemu-img bench does.
    pub fn next_offset(&self, prev: u64, image_size: u64) -> u64 {
        if image_size <= self.buf_size {
            return 0;
        }
        let mut o = prev.saturating_add(self.step());
        if o > image_size - self.buf_size {
            o %= image_size;
            if o > image_size - self.buf_size {
                o = 0;
            }
        }
        o
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
    if o.flush_interval > 0 && o.flush_interval < o.depth {
        return Err(Error::InvalidArgument(
            "Flush interval can't be smaller than depth".into(),
        ));
    }
    let size = img.size();
    if o.buf_size > size {
        return Err(Error::OutOfRange(format!(
            "buffer size {} is larger than the image ({size} bytes)",
            o.buf_size
        )));
    }
    // (requests handed out, offset of the next one)
    if o.offset > size - o.buf_size {
        return Err(Error::OutOfRange(format!(
            "offset {} leaves no room for a {}-byte request in a {size}-byte image",
            o.offset, o.buf_size
        )));
    }
    let next = Mutex::new((0u64, o.offset));
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
                    let (i, off) = {
                        let mut n = next.lock().unwrap_or_else(|p| p.into_inner());
                        let cur = *n;
                        if cur.0 >= o.count {
                            break;
                        }
                        *n = (cur.0 + 1, o.next_offset(cur.1, size));
                        cur
                    };
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
                        next.lock().unwrap_or_else(|p| p.into_inner()).0 = o.count;
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
