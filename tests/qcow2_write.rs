//! qcow2 write side against QEMU 10: images made by qemu-img, written by
//! us with random workloads checked against an in-memory model, then
//! `qemu-img check` (no errors, no leaks) and `qemu-img compare` against a
//! raw twin; QEMU's qemu-io writes after us and we after it. Crash tests
//! cut the power at every operation of a workload (fault.rs) and let
//! qemu-img check every state. Needs qemu-img and qemu-io on PATH.

mod common;

use common::Rng;
use cowblk::io::fault::MemStorage;
use cowblk::{Image, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

fn tmpdir(name: &str) -> PathBuf {
    common::tmpdir(&format!("q2w-{name}"))
}

fn run(prog: &str, args: &[&str]) -> std::process::Output {
    Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {prog}: {e}"))
}

fn ok(prog: &str, args: &[&str]) -> String {
    let o = run(prog, args);
    assert!(
        o.status.success(),
        "{prog} {args:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn create(path: &Path, opts: &str, size: u64) {
    let s = size.to_string();
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    args.extend([path.to_str().unwrap(), s.as_str()]);
    ok("qemu-img", &args);
}

/// `qemu-img check`: no errors; leaks only if `leaks_ok`.
fn qemu_check(path: &Path, leaks_ok: bool) {
    let o = run(
        "qemu-img",
        &["check", "-f", "qcow2", path.to_str().unwrap()],
    );
    let code = o.status.code().unwrap_or(-1);
    let fine = code == 0 || (leaks_ok && code == 3);
    assert!(
        fine,
        "qemu-img check {path:?} exited {code}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `qemu-img compare` of the image with a raw file holding `model`.
fn qemu_compare(path: &Path, model: &[u8]) {
    let raw = path.with_extension("twin.raw");
    std::fs::write(&raw, model).unwrap();
    ok(
        "qemu-img",
        &[
            "compare",
            "-f",
            "qcow2",
            "-F",
            "raw",
            path.to_str().unwrap(),
            raw.to_str().unwrap(),
        ],
    );
    std::fs::remove_file(raw).unwrap();
}

fn rw() -> OpenOptions {
    OpenOptions {
        format: Some("qcow2".into()),
        ..Default::default()
    }
}

/// Asserts equal bytes, naming the first difference (not the buffers).
fn same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at byte {i}: {:#x} instead of {:#x}",
            got[i], want[i]
        );
    }
}

fn read_all(img: &Image) -> Vec<u8> {
    let mut b = vec![0u8; img.size() as usize];
    img.read(&mut b, 0).unwrap();
    b
}

/// What the image reads where nothing is allocated.
struct Under<'a> {
    backing: Option<&'a [u8]>,
}

impl Under<'_> {
    fn byte(&self, i: usize) -> u8 {
        self.backing.and_then(|b| b.get(i).copied()).unwrap_or(0)
    }
}

/// Random operations inside `[lo, hi)` (cluster aligned): writes of every
/// size and alignment, zero writes, discards, flushes; `model` follows.
#[allow(clippy::too_many_arguments)]
fn workload(
    img: &Image,
    model: &mut [u8],
    lo: u64,
    hi: u64,
    ops: usize,
    seed: u64,
    v3: bool,
    under: &Under,
) {
    let cs = img.cluster_size();
    let size = img.size();
    let mut rng = Rng::new(seed);
    for _ in 0..ops {
        let span = hi - lo;
        let len = match rng.below(4) {
            0 => 1 + rng.below(600),
            1 => (1 + rng.below(8)) * 512,
            2 => (1 + rng.below(3)) * cs,
            _ => 1 + rng.below((4 * cs).min(span)),
        }
        .min(span);
        let off = match rng.below(3) {
            0 => lo + rng.below(span - len + 1) / cs * cs,
            1 => lo + rng.below(span - len + 1) / 512 * 512,
            _ => lo + rng.below(span - len + 1),
        };
        let (o, n) = (off as usize, len as usize);
        match rng.below(10) {
            0..=5 => {
                let mut buf = vec![0u8; n];
                rng.fill(&mut buf);
                img.write(&buf, off).unwrap();
                model[o..o + n].copy_from_slice(&buf);
            }
            6 => {
                img.write_zeroes(off, len).unwrap();
                model[o..o + n].fill(0);
            }
            7 | 8 => {
                img.discard(off, len).unwrap();
                // Whole clusters only, as the engine passes them on.
                let start = off.div_ceil(cs) * cs;
                let end = if off + len == size {
                    off + len
                } else {
                    (off + len) / cs * cs
                };
                // v2 cannot zero over a backing file: discard keeps the
                // data there (as QEMU's qcow2); without one it reads zeros.
                if v3 || under.backing.is_none() {
                    for i in start..end.max(start) {
                        model[i as usize] = 0;
                    }
                }
            }
            _ => img.flush().unwrap(),
        }
    }
}

/// One option set: qemu-img makes the image (with a backing file when
/// asked), we run a random workload from `threads` threads, then QEMU
/// checks and compares; qemu-io writes, we read; we write again.
fn round(name: &str, opts: &str, size: u64, ops: usize, threads: u64, with_backing: bool) {
    let d = tmpdir(name);
    let p = d.join("t.qcow2");
    // "{dir}" names the test's directory (qemu-img resolves a data file
    // name against its working directory).
    let opts = &opts.replace("{dir}", d.to_str().unwrap());
    let mut base = None;
    if with_backing {
        let b = d.join("base.raw");
        let mut bytes = vec![0u8; (size - size / 4) as usize];
        Rng::new(99).fill(&mut bytes);
        std::fs::write(&b, &bytes).unwrap();
        let o = format!("{opts},backing_file=base.raw,backing_fmt=raw");
        create(&p, o.trim_start_matches(','), size);
        base = Some(bytes);
    } else {
        create(&p, opts, size);
    }
    let v3 = !opts.contains("compat=0.10");
    let under = Under {
        backing: base.as_deref(),
    };
    let mut model: Vec<u8> = (0..size as usize).map(|i| under.byte(i)).collect();
    {
        let img = Image::open(&p, &rw()).unwrap();
        let cs = img.cluster_size();
        same(&read_all(&img), &model, &format!("{name}: fresh image"));
        // Threads work on disjoint, cluster-aligned regions.
        let region = size / threads / cs * cs;
        let parts: Vec<Vec<u8>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads)
                .map(|t| {
                    let img = &img;
                    let under = &under;
                    let mut m = model.clone();
                    s.spawn(move || {
                        let lo = t * region;
                        let hi = if t + 1 == threads { size } else { lo + region };
                        workload(img, &mut m, lo, hi, ops, t + 1, v3, under);
                        m[lo as usize..hi as usize].to_vec()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        model = parts.concat();
        let got = read_all(&img);
        if got != model {
            img.flush().unwrap();
            let o = run("qemu-img", &["check", p.to_str().unwrap()]);
            eprintln!("after the mismatch: {}", String::from_utf8_lossy(&o.stdout));
            let o = run("qemu-img", &["map", "--output=json", p.to_str().unwrap()]);
            eprintln!("after the mismatch: {}", String::from_utf8_lossy(&o.stdout));
            same(&got, &model, &format!("{name}: after the workload"));
        }
        img.close().unwrap();
    }
    qemu_check(&p, false);
    qemu_compare(&p, &model);
    if opts.contains("data_file_raw=on") {
        let mut raw = std::fs::read(d.join("t.data")).unwrap();
        raw.resize(size as usize, 0);
        same(&raw, &model, &format!("{name}: the raw data file"));
    }
    // QEMU writes next; we read it.
    ok(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x5a 1000 70000",
            "-c",
            &format!("write -z {} 4096", size / 2),
            p.to_str().unwrap(),
        ],
    );
    model[1000..71000].fill(0x5a);
    model[(size / 2) as usize..(size / 2 + 4096) as usize].fill(0);
    {
        let img = Image::open(&p, &rw()).unwrap();
        same(&read_all(&img), &model, &format!("{name}: after qemu-io"));
        workload(&img, &mut model, 0, size, ops / 2, 77, v3, &under);
        img.close().unwrap();
    }
    qemu_check(&p, false);
    qemu_compare(&p, &model);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn default_options_64k() {
    round("c64k", "", 32 << 20, 300, 1, false);
}

#[test]
fn small_clusters_1bit_refcounts() {
    round(
        "c512",
        "cluster_size=512,refcount_bits=1",
        4 << 20,
        300,
        1,
        false,
    );
}

#[test]
fn clusters_4k_64bit_refcounts_threads() {
    round(
        "c4k",
        "cluster_size=4096,refcount_bits=64",
        16 << 20,
        300,
        4,
        false,
    );
}

#[test]
fn clusters_2m_lazy_refcounts_backing() {
    round(
        "c2m",
        "cluster_size=2097152,lazy_refcounts=on",
        64 << 20,
        120,
        2,
        true,
    );
}

#[test]
fn v2_with_backing_discard_keeps_data() {
    round(
        "v2b",
        "compat=0.10,cluster_size=4096",
        8 << 20,
        300,
        2,
        true,
    );
}

#[test]
fn extended_l2_with_backing() {
    round(
        "extl2",
        "extended_l2=on,cluster_size=65536",
        16 << 20,
        250,
        2,
        true,
    );
}

#[test]
fn external_data_file() {
    round("dfile", "data_file={dir}/t.data", 8 << 20, 250, 2, false);
}

#[test]
fn external_data_file_raw() {
    round(
        "dfraw",
        "data_file={dir}/t.data,data_file_raw=on,cluster_size=4096",
        8 << 20,
        250,
        1,
        false,
    );
}

/// Enough 512-byte clusters with 1-bit refcounts that the refcount table
/// must grow and move.
#[test]
fn refcount_table_grows() {
    let d = tmpdir("rtgrow");
    let p = d.join("t.qcow2");
    let size = 64u64 << 20;
    create(&p, "cluster_size=512,refcount_bits=64", size);
    let rt_offset = |p: &Path| {
        let b = std::fs::read(p).unwrap();
        u64::from_be_bytes(b[48..56].try_into().unwrap())
    };
    let before = rt_offset(&p);
    let mut model = vec![0u8; size as usize];
    {
        let img = Image::open(&p, &rw()).unwrap();
        let mut rng = Rng::new(5);
        // 512-byte clusters, 64-bit refcounts: 64 clusters per block, so
        // the one-cluster table (64 blocks) covers only 2 MiB.
        for i in 0..48u64 {
            let mut buf = vec![0u8; 128 << 10];
            rng.fill(&mut buf);
            let off = i * (1 << 20);
            img.write(&buf, off).unwrap();
            model[off as usize..off as usize + buf.len()].copy_from_slice(&buf);
            if i % 16 == 0 {
                img.flush().unwrap();
            }
        }
        same(&read_all(&img), &model, "read back");
        img.close().unwrap();
    }
    qemu_check(&p, false);
    qemu_compare(&p, &model);
    assert_ne!(rt_offset(&p), before, "the refcount table moved");
    let _ = std::fs::remove_dir_all(&d);
}

/// Overwrites of clusters shared with an internal snapshot and of
/// compressed clusters allocate anew; the snapshot keeps its contents.
#[test]
fn snapshots_and_compressed_clusters_copy_on_write() {
    let d = tmpdir("snapcow");
    let p = d.join("t.qcow2");
    let size = 8u64 << 20;
    create(&p, "cluster_size=65536", size);
    ok(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x11 0 1M",
            "-c",
            "write -c -P 0x22 2M 128k",
            p.to_str().unwrap(),
        ],
    );
    ok("qemu-img", &["snapshot", "-c", "s1", p.to_str().unwrap()]);
    let mut old = vec![0u8; size as usize];
    old[..1 << 20].fill(0x11);
    old[2 << 20..(2 << 20) + (128 << 10)].fill(0x22);
    let mut model = old.clone();
    {
        let img = Image::open(&p, &rw()).unwrap();
        same(&read_all(&img), &model, "read back");
        let b = vec![0x33u8; 5000];
        for off in [100u64, 70000, (2 << 20) + 300, (2 << 20) + 65536] {
            img.write(&b, off).unwrap();
            model[off as usize..off as usize + b.len()].fill(0x33);
        }
        img.write_zeroes(3 * 65536, 65536).unwrap();
        model[3 * 65536..4 * 65536].fill(0);
        img.discard(5 * 65536, 65536).unwrap();
        model[5 * 65536..6 * 65536].fill(0);
        same(&read_all(&img), &model, "read back");
        img.close().unwrap();
    }
    qemu_check(&p, false);
    qemu_compare(&p, &model);
    let snap = d.join("snap.raw");
    ok(
        "qemu-img",
        &[
            "convert",
            "-l",
            "s1",
            "-O",
            "raw",
            p.to_str().unwrap(),
            snap.to_str().unwrap(),
        ],
    );
    assert!(std::fs::read(&snap).unwrap() == old, "the snapshot changed");
    // Deleting the snapshot must leave consistent refcounts too.
    ok("qemu-img", &["snapshot", "-d", "s1", p.to_str().unwrap()]);
    qemu_check(&p, false);
    qemu_compare(&p, &model);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn unknown_autoclear_bits_are_cleared_and_growth_works() {
    let d = tmpdir("autoclear");
    let p = d.join("t.qcow2");
    create(&p, "", 1 << 20);
    let mut b = std::fs::read(&p).unwrap();
    b[88..96].copy_from_slice(&(1u64 << 40).to_be_bytes());
    std::fs::write(&p, &b).unwrap();
    {
        let img = Image::open(&p, &rw()).unwrap();
        img.write(&[7u8; 512], 0).unwrap();
        img.truncate(3 << 20).unwrap();
        img.write(&[8u8; 512], (3 << 20) - 512).unwrap();
        img.close().unwrap();
    }
    let b = std::fs::read(&p).unwrap();
    assert_eq!(u64::from_be_bytes(b[88..96].try_into().unwrap()), 0);
    let img = Image::open(&p, &OpenOptions::default()).unwrap();
    assert_eq!(img.size(), 3 << 20);
    drop(img);
    qemu_check(&p, false);
    let mut model = vec![0u8; 3 << 20];
    model[..512].fill(7);
    model[(3 << 20) - 512..].fill(8);
    qemu_compare(&p, &model);
    let _ = std::fs::remove_dir_all(&d);
}

// ---------------------------------------------------------------- crashes

/// A workload whose writes touch each sector at most once, so every
/// sector after a crash must read either `old` or `new`.
fn crash_workload(img: &Image, cs: u64) -> cowblk::Result<()> {
    let mut rng = Rng::new(3);
    for i in 0..12u64 {
        let off = i * 3 * cs + rng.below(cs / 512) * 512;
        let len = 512 * (1 + rng.below(2 * cs / 512));
        let mut buf = vec![0u8; len as usize];
        buf.fill(i as u8 + 1);
        img.write(&buf, off)?;
        if i % 4 == 3 {
            img.flush()?;
        }
    }
    img.discard(40 * cs, 2 * cs)?;
    img.write_zeroes(44 * cs, cs)?;
    img.flush()
}

/// What a power cut leaves of `st` when `run` fails from its operation
/// `k` on: unflushed writes dropped (policy 0), kept (1), or each kept or
/// dropped at random (2).
fn cut_after(st: &MemStorage, k: u64, policy: u64, run: impl FnOnce()) -> MemStorage {
    st.reset_count();
    st.fail_from(Some(k));
    run();
    let mut rng = Rng::new(k * 3 + policy);
    st.crash(|_, _| match policy {
        0 => false,
        1 => true,
        _ => rng.below(2) == 0,
    })
}

/// Cuts the power at every operation of opening the image (with its
/// repair when `dirty`) and running `crash_workload`, keeping none, all
/// or a random half of the unflushed writes; every state must open (and
/// be repaired), read old or new in every sector, and check clean in QEMU
/// but for leaks.
fn crash_run(name: &str, opts: &str, dirty: bool) {
    let d = tmpdir(name);
    let p = d.join("base.qcow2");
    let size = 64u64 * 4096;
    create(&p, opts, size);
    // The "old" state: some data, so discards and zero writes free
    // clusters; with `dirty`, QEMU's lazy refcounts and abort() leave the
    // refcounts stale and the dirty bit set.
    let mut args = vec!["-f", "qcow2", "-c", "write -P 0x44 160k 16k"];
    if dirty {
        args.extend(["-c", "write -P 0x45 200k 8k", "-c", "abort"]);
    }
    args.push(p.to_str().unwrap());
    let o = run("qemu-io", &args);
    assert_eq!(o.status.success(), !dirty);
    let bytes = std::fs::read(&p).unwrap();
    assert_eq!(bytes[79] & 1 == 1, dirty);
    let path = Path::new("img.qcow2");
    let open = |st: &Arc<MemStorage>| Image::open_in(st.clone(), path, &rw());
    let old = {
        let st = Arc::new(MemStorage::new());
        st.insert(path, bytes.clone());
        let ro = OpenOptions {
            read_only: true,
            ..rw()
        };
        read_all(&Image::open_in(st, path, &ro).unwrap())
    };
    let (new, total, cs) = {
        let st = Arc::new(MemStorage::new());
        st.insert(path, bytes.clone());
        let img = open(&st).unwrap();
        // The workload's stride (bigger clusters: several writes share one).
        let cs = img.cluster_size().min(4096);
        drop(img);
        let st = Arc::new(MemStorage::new());
        st.insert(path, bytes.clone());
        st.reset_count();
        let img = open(&st).unwrap();
        crash_workload(&img, cs).unwrap();
        let n = st.op_count();
        (read_all(&img), n, cs)
    };
    assert!(total > 20, "{total} operations");
    eprintln!("{name}: {total} operations, {} crash states", total * 3);
    let out = d.join("crash.qcow2");
    for k in 0..total {
        for policy in 0..3u64 {
            let st = Arc::new(MemStorage::new());
            st.insert(path, bytes.clone());
            let cut = cut_after(&st, k, policy, || {
                if let Ok(img) = open(&st) {
                    let _ = crash_workload(&img, cs);
                    std::mem::forget(img); // a power cut runs no destructor
                }
            });
            let bytes = cut.file(path).unwrap().contents();
            let cut = Arc::new(cut);
            let img = open(&cut).unwrap_or_else(|e| panic!("op {k} policy {policy}: {e}"));
            let got = read_all(&img);
            for (s, ((g, o), n)) in got
                .chunks(512)
                .zip(old.chunks(512))
                .zip(new.chunks(512))
                .enumerate()
            {
                assert!(
                    g == o || g == n,
                    "{name}: op {k} policy {policy}: sector {s} is neither old nor new"
                );
            }
            drop(img);
            // QEMU checks the state as the cut left it (a dirty one only
            // after our open repaired it: check the repaired file then).
            let state = if bytes[79] & 1 == 1 {
                cut.file(path).unwrap().contents()
            } else {
                bytes
            };
            std::fs::write(&out, &state).unwrap();
            qemu_check(&out, true);
        }
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn crash_at_every_operation_4k() {
    crash_run("crash4k", "cluster_size=4096", false);
}

#[test]
fn crash_at_every_operation_extended_l2_subclusters() {
    crash_run("crashext", "cluster_size=16384,extended_l2=on", false);
}

#[test]
fn crash_at_every_operation_lazy_refcounts_dirty_image() {
    crash_run("crashlazy", "cluster_size=4096,lazy_refcounts=on", true);
}

#[test]
fn crash_at_every_operation_lazy_refcounts_clean_image() {
    // Our own lazy write-backs: the dirty bit set before the first one,
    // refcounts unordered after it; every cut state repairs on open.
    crash_run(
        "crashlazyclean",
        "cluster_size=4096,lazy_refcounts=on",
        false,
    );
}

/// With lazy refcounts the dirty bit is on disk while refcounts may be
/// stale (after a write-back) and cleared by a clean close; qemu-img
/// check then finds nothing, and without lazy refcounts it is never set.
#[test]
fn lazy_refcounts_set_and_clear_the_dirty_bit() {
    let d = tmpdir("lazybit");
    for (lazy, opts) in [(true, "lazy_refcounts=on"), (false, "lazy_refcounts=off")] {
        let p = d.join(format!("{lazy}.qcow2"));
        create(&p, opts, 16 << 20);
        let img = Image::open(&p, &rw()).unwrap();
        let dirty = || std::fs::read(&p).unwrap()[79] & 1 == 1;
        assert!(!dirty());
        img.write(&vec![7u8; 3 << 20], 1000).unwrap();
        img.flush().unwrap();
        assert_eq!(dirty(), lazy, "after a flush, lazy={lazy}");
        img.discard(0, 2 << 20).unwrap();
        img.close().unwrap();
        assert!(!dirty(), "after close, lazy={lazy}");
        qemu_check(&p, false);
        let mut model = vec![0u8; 16 << 20];
        model[(2 << 20)..1000 + (3 << 20)].fill(7);
        qemu_compare(&p, &model);
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// A power cut at every operation of growing over a longer backing file
/// from a size inside a cluster: every state opens with the old or the
/// new size, keeps every byte below the old end, reads zeros past it when
/// grown, and checks clean in QEMU (leaks allowed).
#[test]
fn crash_at_every_operation_of_a_grow_from_a_partial_cluster() {
    // The last cluster unallocated (made the image's own in a fresh
    // cluster), then allocated (zeroed past the old end in place).
    crash_grow("crash-grow", None);
    crash_grow("crash-grow-owned", Some("write -P 0x6b 299000 1000"));
}

fn crash_grow(name: &str, last: Option<&str>) {
    let d = tmpdir(name);
    let base: Vec<u8> = (0..2u32 << 20).map(|i| (i / 512) as u8 | 1).collect();
    std::fs::write(d.join("base.raw"), &base).unwrap();
    let p = d.join("img.qcow2");
    create(
        &p,
        "backing_file=base.raw,backing_fmt=raw,cluster_size=4096",
        300_000,
    );
    let mut args = vec!["-f", "qcow2", "-c", "write -P 0x5a 290000 5000"];
    if let Some(c) = last {
        args.extend(["-c", c]);
    }
    args.push(p.to_str().unwrap());
    ok("qemu-io", &args);
    let bytes = std::fs::read(&p).unwrap();
    let (path, bpath) = (Path::new("img.qcow2"), Path::new("base.raw"));
    let fresh = || {
        let st = Arc::new(MemStorage::new());
        st.insert(path, bytes.clone());
        st.insert(bpath, base.clone());
        st
    };
    let open = |st: &Arc<MemStorage>| Image::open_in(st.clone(), path, &rw());
    let (old, total) = {
        let st = fresh();
        let img = open(&st).unwrap();
        let old = read_all(&img);
        st.reset_count();
        img.truncate(1 << 20).unwrap();
        img.flush().unwrap();
        (old, st.op_count())
    };
    assert_eq!(old.len(), 300_032);
    assert!(total > 5, "{total} operations");
    let out = d.join("crash.qcow2");
    for k in 0..total {
        for policy in 0..3u64 {
            let st = fresh();
            let cut = cut_after(&st, k, policy, || {
                if let Ok(img) = open(&st) {
                    let _ = img.truncate(1 << 20).and_then(|_| img.flush());
                    std::mem::forget(img);
                }
            });
            let state = cut.file(path).unwrap().contents();
            let cut = Arc::new(cut);
            let img = open(&cut).unwrap_or_else(|e| panic!("op {k} policy {policy}: {e}"));
            let got = read_all(&img);
            assert!(
                got.len() == old.len() || got.len() == 1 << 20,
                "op {k} policy {policy}: size {}",
                got.len()
            );
            same(
                &got[..old.len()],
                &old,
                &format!("op {k} policy {policy}: below the old end"),
            );
            assert!(
                got[old.len()..].iter().all(|&b| b == 0),
                "op {k} policy {policy}: the backing file shows past the old end"
            );
            drop(img);
            std::fs::write(&out, &state).unwrap();
            qemu_check(&out, true);
        }
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn crash_at_every_operation_v2_512() {
    crash_run("crashv2", "cluster_size=512,compat=0.10", false);
}

// ---------------------------------------------------------------- resize

/// Growing past what the L1 table maps moves it; shrinking frees the
/// tail; growing again reads zeros (also over a longer backing file).
#[test]
fn resize_grows_l1_shrinks_and_hides_backing() {
    let d = tmpdir("resize");
    let p = d.join("t.qcow2");
    create(&p, "cluster_size=4096", 3 << 20);
    let mut model = vec![0u8; 3 << 20];
    {
        let img = Image::open(&p, &rw()).unwrap();
        let b = vec![0x41u8; 100_000];
        img.write(&b, 3_000_000).unwrap();
        model[3_000_000..3_100_000].fill(0x41);
        // 4 KiB clusters: one L2 table maps 2 MiB; the table has 2 entries.
        img.truncate(40 << 20).unwrap();
        model.resize(40 << 20, 0);
        img.write(&[0x42u8; 8192], (39 << 20) + 100).unwrap();
        model[(39 << 20) + 100..(39 << 20) + 8292].fill(0x42);
        same(&read_all(&img), &model, "grown");
        img.close().unwrap();
    }
    qemu_check(&p, false);
    qemu_compare(&p, &model);
    {
        let img = Image::open(&p, &rw()).unwrap();
        img.truncate(3_050_000 / 512 * 512).unwrap();
        model.truncate(3_050_000 / 512 * 512);
        same(&read_all(&img), &model, "shrunk");
        img.truncate(5 << 20).unwrap();
        model.resize(5 << 20, 0);
        same(&read_all(&img), &model, "grown again");
        img.close().unwrap();
    }
    qemu_check(&p, false);
    qemu_compare(&p, &model);

    // Over a longer backing file the grown range reads zeros, not backing.
    let base = d.join("base.raw");
    std::fs::write(&base, vec![0x77u8; 4 << 20]).unwrap();
    let top = d.join("top.qcow2");
    create(&top, "backing_file=base.raw,backing_fmt=raw", 1 << 20);
    {
        let img = Image::open(&top, &rw()).unwrap();
        img.truncate(6 << 20).unwrap();
        let mut want = vec![0x77u8; 1 << 20];
        want.resize(6 << 20, 0);
        same(&read_all(&img), &want, "grown over backing");
        img.close().unwrap();
    }
    qemu_check(&top, false);
    let _ = std::fs::remove_dir_all(&d);
}

/// Growing over a longer backing file from a size inside a cluster: the
/// partial last cluster keeps its bytes below the old end (the backing
/// file's, where it was unallocated) and reads zeros after it, as QEMU's
/// qcow2 makes it (explicit zeros for the head, zero clusters after); with
/// extended L2 too, whose unwritten subclusters would otherwise show the
/// backing file. v2 has no zero clusters: refused, as QEMU refuses.
#[test]
fn resize_from_a_partial_cluster_over_a_longer_backing_file() {
    let d = tmpdir("resize-partial");
    let base = d.join("base.raw");
    let bytes: Vec<u8> = (0..4u32 << 20).map(|i| (i / 512) as u8 | 1).collect();
    std::fs::write(&base, &bytes).unwrap();
    for (name, opts, written) in [
        ("plain.qcow2", "cluster_size=65536", false),
        ("written.qcow2", "cluster_size=65536", true),
        ("ext.qcow2", "cluster_size=65536,extended_l2=on", true),
        ("small.qcow2", "cluster_size=4096", true),
    ] {
        let top = d.join(name);
        // inside a cluster (qemu-img rounds up to a whole sector)
        create(
            &top,
            &format!("backing_file=base.raw,backing_fmt=raw,{opts}"),
            1_000_000,
        );
        let img = Image::open(&top, &rw()).unwrap();
        let old = img.size();
        assert_eq!(old, 1_000_448);
        let mut want = bytes[..old as usize].to_vec();
        if written {
            img.write(&[0x5au8; 3000], old - 3500).unwrap();
            want[(old - 3500) as usize..(old - 500) as usize].fill(0x5a);
        }
        img.truncate(3 << 20).unwrap();
        want.resize(3 << 20, 0);
        same(&read_all(&img), &want, name);
        img.close().unwrap();
        qemu_check(&top, false);
        // QEMU 10 sees the same bytes through the same backing file.
        let raw = top.with_extension("want.raw");
        std::fs::write(&raw, &want).unwrap();
        ok(
            "qemu-img",
            &[
                "compare",
                "-f",
                "qcow2",
                "-F",
                "raw",
                top.to_str().unwrap(),
                raw.to_str().unwrap(),
            ],
        );
    }
    let v2 = d.join("v2.qcow2");
    create(
        &v2,
        "backing_file=base.raw,backing_fmt=raw,compat=0.10",
        1 << 20,
    );
    let img = Image::open(&v2, &rw()).unwrap();
    let e = img.truncate(2 << 20).unwrap_err();
    assert!(e.to_string().contains("v2"), "{e}");
    img.close().unwrap();
    qemu_check(&v2, false);
    let _ = std::fs::remove_dir_all(&d);
}

// ---------------------------------------------------------------- corruption

/// A refcount of 0 on the L1 table's cluster would let the allocator hand
/// it out: the overlap check catches it, marks the image corrupt, and
/// stops writing; the L1 table is never written over.
#[test]
fn overlap_check_marks_the_image_corrupt() {
    let d = tmpdir("overlap");
    let p = d.join("t.qcow2");
    create(&p, "cluster_size=65536", 8 << 20);
    let mut b = std::fs::read(&p).unwrap();
    let be64 = |b: &[u8], o: usize| u64::from_be_bytes(b[o..o + 8].try_into().unwrap());
    let l1 = be64(&b, 40);
    let rt = be64(&b, 48) as usize;
    let block = be64(&b, rt) as usize;
    // 16-bit refcounts: entry of the L1 table's cluster.
    let i = block + 2 * (l1 / 65536) as usize;
    b[i..i + 2].copy_from_slice(&[0, 0]);
    // Everything below the L1 table is in use, so it is the first free.
    std::fs::write(&p, &b).unwrap();
    let img = Image::open(&p, &rw()).unwrap();
    let e = img.write(&[1u8; 4096], 0).unwrap_err();
    assert!(e.to_string().contains("marked corrupt"), "{e}");
    assert!(img.read_only());
    assert!(img.write(&[1u8; 4096], 0).is_err());
    drop(img);
    let after = std::fs::read(&p).unwrap();
    let incompat = be64(&after, 72);
    assert_eq!(incompat & 2, 2, "corrupt bit set");
    let l1 = l1 as usize;
    assert_eq!(
        after[l1..l1 + 8],
        b[l1..l1 + 8],
        "the L1 table is untouched"
    );
    let info = ok("qemu-img", &["info", p.to_str().unwrap()]);
    assert!(info.contains("corrupt: true"), "{info}");
    let e = Image::open(&p, &rw()).err().unwrap();
    assert!(e.to_string().contains("marked corrupt"), "{e}");
    let _ = std::fs::remove_dir_all(&d);
}

// ---------------------------------------------------------------- lazy refcounts

/// QEMU with lazy refcounts, killed after writing (qemu-io's abort),
/// leaves a dirty image whose refcounts are stale; a read-write open
/// rebuilds them and clears the bit before writing: qemu-img check is
/// then clean, and the data QEMU wrote is there. Internal snapshots and
/// compressed clusters are counted too.
#[test]
fn dirty_images_are_repaired_on_open() {
    let d = tmpdir("dirty");
    for opts in [
        "lazy_refcounts=on,cluster_size=65536",
        "lazy_refcounts=on,cluster_size=4096,refcount_bits=8",
    ] {
        let p = d.join("t.qcow2");
        create(&p, opts, 8 << 20);
        ok(
            "qemu-io",
            &[
                "-f",
                "qcow2",
                "-c",
                "write -c -P 0x21 1M 64k",
                p.to_str().unwrap(),
            ],
        );
        ok("qemu-img", &["snapshot", "-c", "s1", p.to_str().unwrap()]);
        // abort() makes qemu-io exit abnormally: run() not ok().
        let o = run(
            "qemu-io",
            &[
                "-f",
                "qcow2",
                "-c",
                "write -P 0x55 0 300k",
                "-c",
                "write -P 0x56 4M 64k",
                "-c",
                "abort",
                p.to_str().unwrap(),
            ],
        );
        assert!(!o.status.success());
        let b = std::fs::read(&p).unwrap();
        assert_eq!(b[79] & 1, 1, "{opts}: QEMU left the dirty bit");
        let o = run("qemu-img", &["check", p.to_str().unwrap()]);
        assert!(
            !o.status.success(),
            "{opts}: stale refcounts before the repair"
        );
        let mut model = vec![0u8; 8 << 20];
        model[..300 << 10].fill(0x55);
        model[1 << 20..(1 << 20) + (64 << 10)].fill(0x21);
        model[4 << 20..(4 << 20) + (64 << 10)].fill(0x56);
        {
            let img = Image::open(&p, &rw()).unwrap();
            same(&read_all(&img), &model, opts);
            let b = std::fs::read(&p).unwrap();
            assert_eq!(b[79] & 1, 0, "{opts}: dirty bit cleared");
            workload(
                &img,
                &mut model,
                0,
                8 << 20,
                200,
                9,
                true,
                &Under { backing: None },
            );
            img.close().unwrap();
        }
        qemu_check(&p, false);
        qemu_compare(&p, &model);
        std::fs::remove_file(&p).unwrap();
    }
    let _ = std::fs::remove_dir_all(&d);
}

// ---------------------------------------------------------------- CLI

/// cowblk-io and cowblk-img write qcow2 images as qemu-io and qemu-img
/// do: the same commands on twin images give equal contents, both check
/// clean.
#[test]
fn cli_writes_match_qemu_io() {
    let d = tmpdir("cli");
    let ours = d.join("ours.qcow2");
    let theirs = d.join("theirs.qcow2");
    create(&ours, "cluster_size=4096", 8 << 20);
    create(&theirs, "cluster_size=4096", 8 << 20);
    let cmds = [
        "write -P 0x61 1000 300000",
        "aio_write -P 0x62 2M 64k",
        "aio_flush",
        "writev -P 0x63 4M 4k 8k",
        "write -z 5M 128k",
        "write -z -u 4100k 64k",
        "discard 2M 32k",
        "flush",
        "truncate 12M",
        "write -P 0x64 11M 100k",
    ];
    let run_tool = |prog: &str, p: &Path| {
        let mut args = vec!["-f", "qcow2"];
        for c in &cmds {
            args.extend(["-c", c]);
        }
        args.push(p.to_str().unwrap());
        ok(prog, &args)
    };
    run_tool(env!("CARGO_BIN_EXE_cowblk-io"), &ours);
    run_tool("qemu-io", &theirs);
    qemu_check(&ours, false);
    ok(
        "qemu-img",
        &["compare", ours.to_str().unwrap(), theirs.to_str().unwrap()],
    );
    ok(
        env!("CARGO_BIN_EXE_cowblk-img"),
        &["resize", "-f", "qcow2", ours.to_str().unwrap(), "+3G"],
    );
    ok(
        "qemu-img",
        &["resize", "-f", "qcow2", theirs.to_str().unwrap(), "+3G"],
    );
    qemu_check(&ours, false);
    ok(
        "qemu-img",
        &["compare", ours.to_str().unwrap(), theirs.to_str().unwrap()],
    );
    let info = ok("qemu-img", &["info", ours.to_str().unwrap()]);
    assert!(info.contains("(3233808384 bytes)"), "{info}");
    let _ = std::fs::remove_dir_all(&d);
}

// ---------------------------------------------------------------- hostile

/// Images with random bytes of metadata changed, opened read-write,
/// written, flushed and closed: errors are fine, panics and hangs are not.
#[test]
fn mutated_images_written_without_panics() {
    let d = tmpdir("mutants");
    let p = d.join("t.qcow2");
    create(&p, "cluster_size=4096", 4 << 20);
    ok(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 1 0 100k",
            "-c",
            "write -c -P 2 1M 16k",
            p.to_str().unwrap(),
        ],
    );
    ok("qemu-img", &["snapshot", "-c", "s", p.to_str().unwrap()]);
    let bytes = std::fs::read(&p).unwrap();
    // The metadata lies in the first clusters and the tables qemu-img put
    // after the data: mutate anywhere in the file.
    let mut rng = Rng::new(11);
    let (mut opened, mut failed) = (0, 0);
    for round in 0..2000u64 {
        let mut b = bytes.clone();
        for _ in 0..1 + rng.below(4) {
            let i = match rng.below(4) {
                0 => rng.below(120),
                1 => 4096 + rng.below(4 * 4096),
                2 => b.len() as u64 - 1 - rng.below(3 * 4096),
                _ => rng.below(b.len() as u64),
            } as usize;
            b[i] = match rng.below(3) {
                0 => 0xff,
                1 => 0,
                _ => rng.next() as u8,
            };
        }
        let st = Arc::new(MemStorage::new());
        let path = Path::new("m.qcow2");
        st.insert(path, b);
        let Ok(img) = Image::open_in(st.clone(), path, &rw()) else {
            continue;
        };
        opened += 1;
        let size = img.size().min(8 << 20);
        let mut r = Rng::new(round);
        let mut res = Ok(());
        for _ in 0..6 {
            if size == 0 {
                break;
            }
            let off = r.below(size);
            let len = (1 + r.below(20000)).min(size - off);
            res = res.and(match r.below(3) {
                0 => img.write_zeroes(off, len),
                1 => img.discard(off, len),
                _ => img.write(&vec![7u8; len as usize], off),
            });
        }
        res = res.and(img.flush());
        if res.is_err() {
            failed += 1;
        }
        let _ = img.close();
    }
    eprintln!("mutants: {opened} of 2000 opened read-write, {failed} of them failed a write");
    assert!(opened > 500, "{opened}");
    let _ = std::fs::remove_dir_all(&d);
}

/// With extended L2 entries a small write allocates only the subclusters
/// it touches: the rest of the cluster still reads the backing file and
/// QEMU sees them unallocated.
#[test]
fn extended_l2_allocates_only_written_subclusters() {
    let d = tmpdir("subcl");
    let base = d.join("base.raw");
    std::fs::write(&base, vec![0x33u8; 4 << 20]).unwrap();
    let p = d.join("t.qcow2");
    create(
        &p,
        "extended_l2=on,cluster_size=65536,backing_file=base.raw,backing_fmt=raw",
        4 << 20,
    );
    let mut model = vec![0x33u8; 4 << 20];
    {
        let img = Image::open(&p, &rw()).unwrap();
        // 64 KiB clusters: 2 KiB subclusters. Bytes 3000..5000 touch
        // subclusters 1 and 2 of cluster 1.
        img.write(&[0x44u8; 2000], 65536 + 3000).unwrap();
        model[65536 + 3000..65536 + 5000].fill(0x44);
        // A second write into the same cluster reuses its host cluster.
        img.write(&[0x45u8; 100], 65536 + 40000).unwrap();
        model[65536 + 40000..65536 + 40100].fill(0x45);
        assert_eq!(img.is_allocated(65536, 2048).unwrap(), (false, 2048));
        assert_eq!(img.is_allocated(65536 + 2048, 4096).unwrap(), (true, 4096));
        assert!(!img.is_allocated(65536 + 6144, 1).unwrap().0);
        same(&read_all(&img), &model, "subclusters");
        img.close().unwrap();
    }
    qemu_check(&p, false);
    qemu_compare(&p, &model);
    let map = ok("qemu-img", &["map", "--output=json", p.to_str().unwrap()]);
    // QEMU reports the untouched subclusters from the backing file.
    assert!(
        map.contains("\"start\": 67584, \"length\": 4096, \"depth\": 0")
            && map.contains("\"start\": 71680, \"length\": 32768, \"depth\": 1"),
        "{map}"
    );
    let info = ok("qemu-img", &["info", "--output=json", p.to_str().unwrap()]);
    let size: u64 = info
        .split("\"actual-size\": ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap();
    assert!(size < 1 << 20, "one data cluster, not more: {size}");
    let _ = std::fs::remove_dir_all(&d);
}

/// A zero write over part of a cluster whose other bytes read zeros
/// zeroes the whole cluster in metadata, as QEMU's qcow2 does (iotest
/// 154): the same map and the same bytes as qemu-io's; where the rest of
/// the cluster holds data (here, or in the backing file) zeros are written.
#[test]
fn partial_zero_writes_widen_to_zero_clusters_as_qemu() {
    let d = tmpdir("zero-widen");
    let base = d.join("base.raw");
    let mut b = vec![0u8; 4 << 20];
    b[(2 << 20) + 100_000..(2 << 20) + 100_100].fill(9); // data beside 2M+64k's cluster
    std::fs::write(&base, &b).unwrap();
    let cmds = [
        "write -z 1000 2000",
        "write -P 1 1M 4k",
        "write -z 1M 100",
        "write -z 2M 70000",
        "write -z 2100000 512",
        "write -z 3M 512",
        "write -z 4193792 512",
    ];
    for (name, opts) in [
        ("plain", vec![]),
        ("backed", vec!["-b", "base.raw", "-F", "raw"]),
    ] {
        let q = d.join(format!("{name}-qemu.qcow2"));
        let o = d.join(format!("{name}-ours.qcow2"));
        for p in [&q, &o] {
            let mut a = vec!["create", "-q", "-f", "qcow2"];
            a.extend(&opts);
            a.extend([p.to_str().unwrap(), "4M"]);
            ok("qemu-img", &a);
        }
        for (tool, p) in [("qemu-io", &q), (env!("CARGO_BIN_EXE_cowblk-io"), &o)] {
            let mut a = vec!["-f", "qcow2"];
            for c in cmds {
                a.extend(["-c", c]);
            }
            a.push(p.to_str().unwrap());
            ok(tool, &a);
        }
        let map = |p: &PathBuf| ok("qemu-img", &["map", "--output=json", p.to_str().unwrap()]);
        assert_eq!(map(&o), map(&q), "{name}: map");
        ok(
            "qemu-img",
            &["compare", q.to_str().unwrap(), o.to_str().unwrap()],
        );
        qemu_check(&o, false);
        assert_eq!(
            std::fs::read(&o).unwrap(),
            std::fs::read(&q).unwrap(),
            "{name}: bytes"
        );
    }
    let _ = std::fs::remove_dir_all(&d);
}
