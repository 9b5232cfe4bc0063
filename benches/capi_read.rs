//! 4 KiB reads through the C ABI (`cowblk_open` + `cowblk_preadv`, what a C
//! host pays per request) against plain pread of the same bytes, one and
//! two threads (`cargo bench --bench capi_read`; qcow2 rows need qemu-img).
//!
//! Rows: add-cow allocated (pread on its image file), add-cow unallocated
//! (reads through to the raw backing file; pread on that file), qcow2
//! allocated (pread on the qcow2 file itself at each cluster's host
//! offset, so both sides copy the same page-cache pages). 64 KiB
//! clusters, page cache warm, sequential 4 KiB reads over the image (two
//! threads: interleaved requests), ours and pread taking turns every
//! 4 MiB piece (see `measure`), 8 passes. COWBLK_BENCH_MB scales the image (default 256);
//! COWBLK_BENCH_ROWS picks rows by name fragment (e.g. `qcow2`) and
//! COWBLK_BENCH_THREADS the thread counts (e.g. `2`), for profiling.

use cowblk::ffi::{cowblk_close, cowblk_create, cowblk_image, cowblk_open, COWBLK_OPEN_RDONLY};
use std::ffi::CString;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::sync::Barrier;
use std::time::{Duration, Instant};

const REQ: u64 = 4096;
/// Measured passes over the image (even: each side reads every piece
/// equally often).
const PASSES: u64 = 8;
/// The piece of the image one side reads before the other takes over.
const CHUNK: u64 = 4 << 20;

/// Reads 4 KiB into the buffer at the offset.
type Reader<'a> = &'a (dyn Fn(&mut [u8], u64) + Sync);

struct Handle(*mut cowblk_image);
// SAFETY: the C ABI allows concurrent calls on one handle.
unsafe impl Send for Handle {}
unsafe impl Sync for Handle {}

fn open(p: &Path, fmt: &str) -> Handle {
    let p = CString::new(p.to_str().unwrap()).unwrap();
    let f = CString::new(fmt).unwrap();
    let mut h = std::ptr::null_mut();
    assert_eq!(
        unsafe { cowblk_open(p.as_ptr(), f.as_ptr(), COWBLK_OPEN_RDONLY, 0, &mut h) },
        0
    );
    Handle(h)
}

/// Reads the image PASSES times (after one warm-up pass) in CHUNK-sized
/// pieces with `threads` threads (request i of a piece to thread
/// i % threads), each piece by one of the two `sides`, swapping piece by
/// piece and pass by pass so that both sides read every piece equally
/// often, cold, under the same machine conditions. The threads start each
/// piece together; a piece costs its slowest thread's time. Returns each
/// side's total time.
fn measure(size: u64, threads: u64, sides: [Reader<'_>; 2]) -> [Duration; 2] {
    let chunks = size.div_ceil(CHUNK);
    let barrier = Barrier::new(threads as usize);
    let per_thread: Vec<Vec<Duration>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|k| {
                let barrier = &barrier;
                s.spawn(move || {
                    let mut buf = vec![0u8; REQ as usize];
                    let mut t = Vec::new();
                    for p in 0..=PASSES {
                        for c in 0..chunks {
                            let read = sides[((c + p) % 2) as usize];
                            let end = ((c + 1) * CHUNK).min(size);
                            barrier.wait();
                            let t0 = Instant::now();
                            let mut off = c * CHUNK + k * REQ;
                            while off < end {
                                read(&mut buf, off);
                                off += threads * REQ;
                            }
                            t.push(t0.elapsed());
                        }
                    }
                    t
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut total = [Duration::ZERO; 2];
    for p in 1..=PASSES {
        for c in 0..chunks {
            let i = (p * chunks + c) as usize;
            let wall = per_thread.iter().map(|t| t[i]).max().unwrap();
            total[((c + p) % 2) as usize] += wall;
        }
    }
    total
}

fn wanted(name: &str) -> bool {
    std::env::var("COWBLK_BENCH_ROWS").map_or(true, |r| name.contains(&r))
}

fn thread_counts() -> Vec<u64> {
    std::env::var("COWBLK_BENCH_THREADS")
        .ok()
        .map(|v| v.split(',').filter_map(|t| t.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2])
}

fn row(name: &str, size: u64, ours: Reader<'_>, pread: Reader<'_>) {
    if !wanted(name) {
        return;
    }
    for threads in thread_counts() {
        let [o, p] = measure(size, threads, [ours, pread]);
        // Each side read the image PASSES / 2 times.
        let mbps = |d: Duration| (size * PASSES / 2) as f64 / (1 << 20) as f64 / d.as_secs_f64();
        println!(
            "| {name} | {threads} | {:.0} | {:.0} | {:.2} |",
            mbps(o),
            mbps(p),
            p.as_secs_f64() / o.as_secs_f64()
        );
    }
}

fn file_reader(f: &File) -> impl Fn(&mut [u8], u64) + Sync + '_ {
    move |b: &mut [u8], o: u64| f.read_exact_at(b, o).unwrap()
}

fn handle_reader(h: &Handle) -> impl Fn(&mut [u8], u64) + Sync + '_ {
    move |b: &mut [u8], o: u64| {
        let v = libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        };
        let r = unsafe { cowblk::ffi::cowblk_preadv(h.0, o, &v, 1) };
        assert_eq!(r, 0);
    }
}

fn create(fmt: &str, path: &Path, opts: &str) {
    let (f, p, o) = (
        CString::new(fmt).unwrap(),
        CString::new(path.to_str().unwrap()).unwrap(),
        CString::new(opts).unwrap(),
    );
    assert_eq!(
        unsafe { cowblk_create(f.as_ptr(), p.as_ptr(), o.as_ptr()) },
        0
    );
}

fn main() {
    let mb: u64 = std::env::var("COWBLK_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let size = mb << 20;
    let dir = std::env::temp_dir().join(format!("cowblk-bench-capi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let base = dir.join("base.raw");
    let data: Vec<u8> = (0..size)
        .map(|i| ((i / 4096) as u8).wrapping_mul(29) | 1)
        .collect();
    std::fs::write(&base, &data).unwrap();
    drop(data);

    let empty = dir.join("empty.add-cow");
    let full = dir.join("full.add-cow");
    let o = |img: &str| {
        format!(
            "size={size},backing_file=base.raw,backing_fmt=raw,image_file={img},cluster_size=65536"
        )
    };
    create("add-cow", &empty, &o("empty.img"));
    create("add-cow", &full, &o("full.img"));
    {
        let img = cowblk::Image::open(&full, &Default::default()).unwrap();
        let buf: Vec<u8> = (0..1u64 << 20).map(|i| (i % 251) as u8 | 1).collect();
        let mut off = 0;
        while off < size {
            img.write(&buf, off).unwrap();
            off += buf.len() as u64;
        }
        img.close().unwrap();
    }

    // Writeback of the files just written must not run during the rows.
    unsafe { libc::sync() };
    println!("4 KiB reads through the C ABI vs pread, {mb} MiB, 64 KiB clusters, {PASSES} passes, sides alternating every 4 MiB");
    println!();
    println!("| request | threads | handle MB/s | pread MB/s | ratio |");
    println!("|---|---|---|---|---|");
    let h = open(&full, "add-cow");
    row(
        "add-cow allocated 4K",
        size,
        &handle_reader(&h),
        &file_reader(&File::open(dir.join("full.img")).unwrap()),
    );
    let h2 = open(&empty, "add-cow");
    row(
        "add-cow unallocated 4K",
        size,
        &handle_reader(&h2),
        &file_reader(&File::open(&base).unwrap()),
    );

    let q = dir.join("data.qcow2");
    let made = Command::new("qemu-img")
        .args([
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            "cluster_size=65536",
        ])
        .arg(&base)
        .arg(&q)
        .status()
        .is_ok_and(|s| s.success());
    if made {
        unsafe { libc::sync() };
        let h3 = open(&q, "qcow2");
        // Each cluster's host offset, looked up once: the pread side reads
        // the very bytes the handle reads, in the qcow2 file.
        let host = host_offsets(&q, size);
        let qf = File::open(&q).unwrap();
        let cs = 65536u64;
        let pread = |b: &mut [u8], o: u64| {
            qf.read_exact_at(b, host[(o / cs) as usize] + o % cs)
                .unwrap()
        };
        row("qcow2 allocated 4K", size, &handle_reader(&h3), &pread);
        close(h3);
    } else {
        println!("(qcow2 rows skipped: qemu-img not found)");
    }
    close(h);
    close(h2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Host offset of every 64 KiB cluster of a fully allocated qcow2 image.
fn host_offsets(q: &Path, size: u64) -> Vec<u64> {
    let img = cowblk::Image::open(
        q,
        &cowblk::OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    (0..size / 65536)
        .map(|c| {
            let (st, _) = img.block_status(c * 65536, 65536).unwrap();
            st.offset.expect("a converted image is fully allocated")
        })
        .collect()
}

fn close(h: Handle) {
    let mut p = h.0;
    assert_eq!(unsafe { cowblk_close(&mut p) }, 0);
}
