//! qcow2 read throughput (`cargo bench --bench qcow2_read`; needs qemu-img).
//!
//! Rows: allocated reads through the library beside plain pread of a raw
//! copy of the same data (same run, warm page cache, best of several
//! passes), and compressed reads beside `qemu-img convert` of the same
//! image. Sizes can be scaled with COWBLK_BENCH_MB (default 256).

use cowblk::{Image, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const CHUNK: usize = 1 << 20;
const PASSES: usize = 7;

fn qemu_img(args: &[&str]) {
    let st = Command::new("qemu-img")
        .args(args)
        .status()
        .expect("qemu-img is needed for this benchmark");
    assert!(st.success(), "qemu-img {args:?} failed");
}

fn best(mut f: impl FnMut()) -> Duration {
    f(); // warm the page cache and the metadata cache
    (0..PASSES)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap()
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

fn open(p: &Path) -> Image {
    Image::open(
        p,
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap()
}

fn read_image(img: &Image, buf: &mut [u8]) -> u64 {
    let size = img.size();
    let mut off = 0;
    while off < size {
        let n = (size - off).min(buf.len() as u64) as usize;
        img.read(&mut buf[..n], off).unwrap();
        off += n as u64;
    }
    size
}

fn main() {
    let mb: u64 = std::env::var("COWBLK_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let dir = std::env::temp_dir().join(format!("cowblk-bench-qcow2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let size = mb << 20;

    // Incompressible data: allocated reads.
    let raw = dir.join("data.raw");
    let mut seed = 0x9e3779b97f4a7c15u64;
    let data: Vec<u8> = (0..size)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    std::fs::write(&raw, &data).unwrap();
    drop(data);
    let q = dir.join("data.qcow2");
    let (rs, qs) = (raw.to_str().unwrap(), q.to_str().unwrap());
    qemu_img(&["convert", "-O", "qcow2", rs, qs]);

    let mut buf = vec![0u8; CHUNK];
    let f = std::fs::File::open(&raw).unwrap();
    let rimg = open(&raw);
    let img = open(&q);
    // Interleaved rounds, best of each: noise from other processes hits
    // all three alike.
    let mut t = [Duration::MAX; 3];
    for round in 0..=PASSES {
        let mut time = |i: usize, f: &mut dyn FnMut()| {
            let s = Instant::now();
            f();
            if round > 0 {
                t[i] = t[i].min(s.elapsed());
            }
        };
        time(0, &mut || {
            let mut off = 0;
            while off < size {
                f.read_exact_at(&mut buf, off).unwrap();
                off += CHUNK as u64;
            }
        });
        time(1, &mut || {
            read_image(&rimg, &mut buf);
        });
        time(2, &mut || {
            read_image(&img, &mut buf);
        });
    }
    let [t_raw, t_rl, t_q] = t;
    println!(
        "pread of a raw file, 1 MiB requests:     {:8.0} MB/s",
        mbps(size, t_raw)
    );
    println!(
        "raw through the library:                 {:8.0} MB/s   ratio {:.3}",
        mbps(size, t_rl),
        t_rl.as_secs_f64() / t_raw.as_secs_f64()
    );
    println!(
        "qcow2 allocated read (same data):        {:8.0} MB/s   ratio {:.3}",
        mbps(size, t_q),
        t_q.as_secs_f64() / t_raw.as_secs_f64()
    );

    // Compressible data: compressed reads, zlib and zstd.
    let craw = dir.join("text.raw");
    let text: Vec<u8> = (0..size)
        .map(|i| {
            b"the quick brown fox jumps over the lazy dog "[(i % 44) as usize]
                ^ ((i >> 16) as u8 & 3)
        })
        .collect();
    std::fs::write(&craw, &text).unwrap();
    drop(text);
    for ct in ["zlib", "zstd"] {
        let c = dir.join(format!("text-{ct}.qcow2"));
        let cs = c.to_str().unwrap();
        qemu_img(&[
            "convert",
            "-c",
            "-O",
            "qcow2",
            "-o",
            &format!("compression_type={ct}"),
            craw.to_str().unwrap(),
            cs,
        ]);
        let img = open(&c);
        let t_ours = best(|| {
            read_image(&img, &mut buf);
        });
        let out = dir.join("out.raw");
        let t_qemu = best(|| {
            qemu_img(&["convert", "-O", "raw", cs, out.to_str().unwrap()]);
        });
        println!(
            "qcow2 compressed ({ct}) read:            {:8.0} MB/s   qemu-img convert: {:8.0} MB/s",
            mbps(size, t_ours),
            mbps(size, t_qemu)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
