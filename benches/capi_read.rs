//! 4 KiB reads through the C ABI (`cowblk_open` + `cowblk_preadv`, what a C
//! host pays per request) against plain pread of the same bytes, one and
//! two threads (`cargo bench --bench capi_read`; qcow2 rows need qemu-img).
//!
//! Rows: add-cow allocated (pread on its image file), add-cow unallocated
//! (reads through to the raw backing file; pread on that file), qcow2
//! allocated (pread on the raw file it was converted from). 64 KiB
//! clusters, page cache warm, sequential 4 KiB reads over the image (two
//! threads: interleaved halves), best of PASSES, ours and pread
//! alternating. COWBLK_BENCH_MB scales the image (default 256).

use cowblk::ffi::{cowblk_close, cowblk_create, cowblk_image, cowblk_open, COWBLK_OPEN_RDONLY};
use std::ffi::CString;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const REQ: usize = 4096;
const PASSES: usize = 7;

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

/// Reads `[0, size)` in 4 KiB requests with `threads` threads, request
/// i going to thread i % threads.
fn pass(size: u64, threads: u64, read: &(dyn Fn(&mut [u8], u64) + Sync)) -> Duration {
    let t = Instant::now();
    std::thread::scope(|s| {
        for k in 0..threads {
            s.spawn(move || {
                let mut buf = vec![0u8; REQ];
                let mut off = k * REQ as u64;
                while off < size {
                    read(&mut buf, off);
                    off += threads * REQ as u64;
                }
            });
        }
    });
    t.elapsed()
}

fn row(name: &str, size: u64, ours: &(dyn Fn(&mut [u8], u64) + Sync), plain: &File) {
    let pread = |b: &mut [u8], o: u64| plain.read_exact_at(b, o).unwrap();
    for threads in [1, 2] {
        pass(size, threads, ours);
        pass(size, threads, &pread);
        let (mut o, mut p) = (Duration::MAX, Duration::MAX);
        for _ in 0..PASSES {
            o = o.min(pass(size, threads, ours));
            p = p.min(pass(size, threads, &pread));
        }
        let mbps = |d: Duration| size as f64 / (1 << 20) as f64 / d.as_secs_f64();
        println!(
            "| {name} | {threads} | {:.0} | {:.0} | {:.2} |",
            mbps(o),
            mbps(p),
            p.as_secs_f64() / o.as_secs_f64()
        );
    }
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

    println!("4 KiB reads through the C ABI vs pread, {mb} MiB, 64 KiB clusters, best of {PASSES}");
    println!();
    println!("| request | threads | handle MB/s | pread MB/s | ratio |");
    println!("|---|---|---|---|---|");
    let h = open(&full, "add-cow");
    row(
        "add-cow allocated 4K",
        size,
        &handle_reader(&h),
        &File::open(dir.join("full.img")).unwrap(),
    );
    let h2 = open(&empty, "add-cow");
    row(
        "add-cow unallocated 4K",
        size,
        &handle_reader(&h2),
        &File::open(&base).unwrap(),
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
        let h3 = open(&q, "qcow2");
        row(
            "qcow2 allocated 4K",
            size,
            &handle_reader(&h3),
            &File::open(&base).unwrap(),
        );
        close(h3);
    } else {
        println!("(qcow2 rows skipped: qemu-img not found)");
    }
    close(h);
    close(h2);
    let _ = std::fs::remove_dir_all(&dir);
}

fn close(h: Handle) {
    let mut p = h.0;
    assert_eq!(unsafe { cowblk_close(&mut p) }, 0);
}
