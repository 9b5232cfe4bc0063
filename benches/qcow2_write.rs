//! qcow2 write throughput (`cargo bench --bench qcow2_write`; needs
//! qemu-img): first writes (every cluster allocated) and rewrites (the
//! same offsets again, in place) of 4 KiB and 64 KiB requests from 1 and 2
//! threads (each its half, sequentially), each as a ratio to plain pwrite
//! of a raw file doing the same (first writes into a new sparse file,
//! rewrites over it). Every timing ends with a flush (fdatasync / image
//! flush), best of PASSES. Size per row: COWBLK_BENCH_MB (default 64).

use cowblk::{Image, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const PASSES: usize = 3;

fn qemu_img(args: &[&str]) {
    let st = Command::new("qemu-img")
        .args(args)
        .status()
        .expect("qemu-img is needed for this benchmark");
    assert!(st.success(), "qemu-img {args:?} failed");
}

/// Runs `w(offset, buf)` over `[0, size)` in `bs` requests from
/// `threads` threads (contiguous halves).
fn spread(size: u64, bs: usize, threads: u64, w: &(dyn Fn(u64, &[u8]) + Sync)) {
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                let buf = vec![0x5au8 ^ t as u8; bs];
                let per = size / threads;
                let mut off = t * per;
                while off < (t + 1) * per {
                    w(off, &buf);
                    off += bs as u64;
                }
            });
        }
    });
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

fn rw(p: &Path) -> Image {
    Image::open(
        p,
        &OpenOptions {
            format: Some("qcow2".into()),
            ..Default::default()
        },
    )
    .unwrap()
}

fn main() {
    let mb: u64 = std::env::var("COWBLK_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let size = mb << 20;
    let dir = std::env::temp_dir().join(format!("cowblk-bench-q2w-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let raw = dir.join("w.raw");
    let q = dir.join("w.qcow2");
    println!(
        "{mb} MiB per row, flush included, best of {PASSES}; ratio = qcow2 MB/s / pwrite MB/s"
    );
    for bs in [4096usize, 65536] {
        for threads in [1u64, 2] {
            // (first, rewrite) best times for pwrite and qcow2.
            let mut t = [[Duration::MAX; 2]; 2];
            for _ in 0..PASSES {
                let _ = std::fs::remove_file(&raw);
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .read(true)
                    .write(true)
                    .open(&raw)
                    .unwrap();
                f.set_len(size).unwrap();
                for (k, slot) in t[0].iter_mut().enumerate() {
                    let s = Instant::now();
                    spread(size, bs, threads, &|o, b| f.write_all_at(b, o).unwrap());
                    f.sync_data().unwrap();
                    let _ = k;
                    *slot = (*slot).min(s.elapsed());
                }
                let _ = std::fs::remove_file(&q);
                qemu_img(&[
                    "create",
                    "-q",
                    "-f",
                    "qcow2",
                    q.to_str().unwrap(),
                    &size.to_string(),
                ]);
                let img = rw(&q);
                for slot in t[1].iter_mut() {
                    let s = Instant::now();
                    spread(size, bs, threads, &|o, b| img.write(b, o).unwrap());
                    img.flush().unwrap();
                    *slot = (*slot).min(s.elapsed());
                }
                img.close().unwrap();
            }
            for (i, what) in ["first writes", "rewrites"].iter().enumerate() {
                let (p, c) = (mbps(size, t[0][i]), mbps(size, t[1][i]));
                println!(
                    "qcow2 {what:<12} {:>2} KiB x{threads}: {c:8.0} MB/s  pwrite {p:8.0} MB/s  ratio {:.2}",
                    bs / 1024,
                    c / p
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
