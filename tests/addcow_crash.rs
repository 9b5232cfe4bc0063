//! Power cuts at every step of a write workload on the fault-injecting
//! I/O layer: afterwards every sector reads a version it held since the
//! last flush that completed, never zeros where the backing file had data.

mod common;

use common::{pattern, Rng};
use cowblk::io::fault::MemStorage;
use cowblk::{CreateOptions, Image, OpenOptions};
use std::path::Path;
use std::sync::Arc;

const SECTOR: usize = 512;

/// Chooses which unflushed writes survive a power cut.
type Keep = Box<dyn FnMut(&Path, usize) -> bool>;

#[derive(Clone)]
enum Op {
    Write { off: u64, data: Vec<u8> },
    Zero { off: u64, len: u64 },
    Flush,
}

/// Storage holding base.raw (a pattern) and an empty overlay.
fn setup(size: u64, cluster: u64) -> (MemStorage, Vec<u8>) {
    let st = MemStorage::new();
    let base = pattern(size as usize, 7);
    st.insert("base.raw", base.clone());
    let st = Arc::new(st);
    let mut o = CreateOptions::new();
    o.set("backing_file", "base.raw")
        .set("backing_fmt", "raw")
        .set("image_file", "ov.img")
        .set("cluster_size", cluster.to_string());
    Image::create_in(st.clone(), Path::new("ov.add-cow"), "add-cow", &o).unwrap();
    // Make everything durable and hand back a plain storage.
    let st = Arc::try_unwrap(st).ok().unwrap();
    let st = st.crash(|_, _| true);
    (st, base)
}

fn workload(seed: u64, size: u64, n: usize) -> Vec<Op> {
    let mut r = Rng::new(seed);
    let sectors = size / SECTOR as u64;
    let mut ops = Vec::new();
    for i in 0..n {
        if i % 7 == 6 {
            ops.push(Op::Flush);
            continue;
        }
        let s = r.below(sectors);
        let len = (1 + r.below(24)).min(sectors - s);
        if r.below(6) == 0 {
            ops.push(Op::Zero {
                off: s * SECTOR as u64,
                len: len * SECTOR as u64,
            });
        } else {
            let mut data = vec![0u8; (len as usize) * SECTOR];
            r.fill(&mut data);
            ops.push(Op::Write {
                off: s * SECTOR as u64,
                data,
            });
        }
    }
    ops
}

/// Per-sector versions allowed after a crash: what each sector held at the
/// last completed flush plus everything written to it since.
struct Model {
    cur: Vec<Vec<u8>>,
    allowed: Vec<Vec<Vec<u8>>>,
}

impl Model {
    fn new(base: &[u8]) -> Self {
        let cur: Vec<Vec<u8>> = base.chunks(SECTOR).map(|c| c.to_vec()).collect();
        let allowed = cur.iter().map(|c| vec![c.clone()]).collect();
        Model { cur, allowed }
    }
    fn write(&mut self, off: u64, data: &[u8]) {
        for (i, c) in data.chunks(SECTOR).enumerate() {
            let s = off as usize / SECTOR + i;
            self.cur[s] = c.to_vec();
            self.allowed[s].push(c.to_vec());
        }
    }
    fn flushed(&mut self) {
        for (a, c) in self.allowed.iter_mut().zip(&self.cur) {
            *a = vec![c.clone()];
        }
    }
}

/// Runs `ops` until the injected fault stops it; returns the model.
fn run(img: &Image, ops: &[Op], base: &[u8]) -> Model {
    let mut m = Model::new(base);
    for op in ops {
        let ok = match op {
            Op::Write { off, data } => {
                // A failed write may still have reached the disk in part.
                m.write(*off, data);
                img.write(data, *off).is_ok()
            }
            Op::Zero { off, len } => {
                m.write(*off, &vec![0u8; *len as usize]);
                img.write_zeroes(*off, *len).is_ok()
            }
            Op::Flush => {
                let ok = img.flush().is_ok();
                if ok {
                    m.flushed();
                }
                ok
            }
        };
        if !ok {
            break;
        }
    }
    m
}

fn check(st: &MemStorage, m: &Model, size: u64, what: &str) {
    let img = Image::open_in(
        Arc::new(st.crash(|_, _| true)),
        Path::new("ov.add-cow"),
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("{what}: reopen failed: {e}"));
    assert_eq!(img.size(), size);
    let mut buf = vec![0u8; size as usize];
    img.read(&mut buf, 0).unwrap();
    for (s, got) in buf.chunks(SECTOR).enumerate() {
        assert!(
            m.allowed[s].iter().any(|v| v == got),
            "{what}: sector {s} holds none of its {} allowed versions",
            m.allowed[s].len()
        );
    }
}

fn crash_everywhere(size: u64, cluster: u64, cache: u64, nops: usize, stride: u64) {
    let ops = workload(size ^ cluster, size, nops);
    // Count the operations a full run takes.
    let (st, base) = setup(size, cluster);
    let total = {
        let st = Arc::new(st);
        let img = Image::open_in(st.clone(), Path::new("ov.add-cow"), &open_opts(cache)).unwrap();
        let start = st.op_count();
        run(&img, &ops, &base);
        img.flush().unwrap();
        st.op_count() - start
    };
    assert!(total > 20, "workload too small: {total} operations");
    let mut r = Rng::new(99);
    let mut k = 0;
    while k <= total {
        let (st, base) = setup(size, cluster);
        let st = Arc::new(st);
        let img = Image::open_in(st.clone(), Path::new("ov.add-cow"), &open_opts(cache)).unwrap();
        st.fail_from(Some(st.op_count() + k));
        let m = run(&img, &ops, &base);
        drop(img);
        // Keep none, all, and random subsets of the unflushed writes.
        let subsets: Vec<Keep> = vec![
            Box::new(|_, _| false),
            Box::new(|_, _| true),
            Box::new({
                let mut r = Rng::new(r.next());
                move |_, _| r.below(2) == 0
            }),
            Box::new({
                let mut r = Rng::new(r.next());
                move |_, _| r.below(4) == 0
            }),
            Box::new({
                let mut r = Rng::new(r.next());
                move |_, _| r.below(4) != 0
            }),
        ];
        for (i, keep) in subsets.into_iter().enumerate() {
            let crashed = st.crash(keep);
            check(&crashed, &m, size, &format!("cut at op {k}, subset {i}"));
        }
        k += stride;
    }
}

fn open_opts(cache: u64) -> OpenOptions {
    OpenOptions {
        cache_size: cache,
        ..Default::default()
    }
}

#[test]
fn power_cut_at_every_step_small_clusters() {
    crash_everywhere(256 << 10, 4096, 0, 40, 1);
}

#[test]
fn power_cut_at_every_step_with_bitmap_eviction() {
    // 512-byte clusters over 24 MiB: a 6 KiB bitmap in three 4 KiB
    // blocks, with room for only two in the cache.
    crash_everywhere(24 << 20, 512, 8192, 30, 3);
}

#[test]
fn power_cut_during_resize() {
    let size = 256u64 << 10;
    for (new, what) in [(size + 100_352, "grow"), (size / 2 + 4096, "shrink")] {
        let mut k = 0;
        loop {
            let (st, base) = setup(size, 65536);
            let st = Arc::new(st);
            let img = Image::open_in(st.clone(), Path::new("ov.add-cow"), &open_opts(0)).unwrap();
            img.write(&[0xee; 4096], 8192).unwrap();
            img.flush().unwrap();
            st.fail_from(Some(st.op_count() + k));
            let done = img.truncate(new).is_ok();
            drop(img);
            let mut expect = base.clone();
            expect[8192..8192 + 4096].fill(0xee);
            for keep in 0..3u64 {
                let mut r = Rng::new(keep + k);
                let crashed = st.crash(|_, _| keep == 1 || (keep == 2 && r.below(2) == 0));
                let img = Image::open_in(
                    Arc::new(crashed),
                    Path::new("ov.add-cow"),
                    &OpenOptions {
                        read_only: true,
                        ..Default::default()
                    },
                )
                .unwrap_or_else(|e| panic!("{what} cut at {k}: {e}"));
                let got_size = img.size();
                assert!(
                    got_size == size || got_size == new,
                    "{what} cut at {k}: size {got_size}"
                );
                let mut buf = vec![0u8; got_size as usize];
                img.read(&mut buf, 0).unwrap();
                let keep_len = size.min(new) as usize;
                assert_eq!(
                    &buf[..keep_len.min(buf.len())],
                    &expect[..keep_len.min(buf.len())],
                    "{what} cut at {k}"
                );
                if got_size > size {
                    assert!(
                        buf[size as usize..].iter().all(|&b| b == 0),
                        "{what} cut at {k}: grown area shows old data"
                    );
                }
            }
            if done {
                break;
            }
            k += 1;
        }
        assert!(k > 3, "{what}: resize took only {k} operations");
    }
}
