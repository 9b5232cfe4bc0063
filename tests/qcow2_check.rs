//! `cowblk-img check` on qcow2 against QEMU 10's `qemu-img check`: images
//! made by qemu-img/qemu-io (clean ones of many option sets, and damaged
//! ones made by editing bytes) give the same stdout, stderr, JSON output
//! and exit code from both tools. Needs qemu-img and qemu-io on PATH.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cowblk-q2k-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(dir: &Path, prog: &str, args: &[&str]) -> Output {
    Command::new(prog)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {prog}: {e}"))
}

fn ok(dir: &Path, prog: &str, args: &[&str]) {
    let o = run(dir, prog, args);
    assert!(
        o.status.success(),
        "{prog} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

const OURS: &str = env!("CARGO_BIN_EXE_cowblk-img");

/// Both tools' check of `f`, human and JSON: returns QEMU's exit code.
fn same_check(dir: &Path, f: &str) -> i32 {
    let mut code = 0;
    for json in [false, true] {
        let mut args = vec!["check"];
        if json {
            args.push("--output=json");
        }
        args.push(f);
        let q = run(dir, "qemu-img", &args);
        let o = run(dir, OURS, &args);
        let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        assert_eq!(
            s(&o.stdout),
            s(&q.stdout),
            "{f} (json {json}): stdout differs"
        );
        assert_eq!(
            s(&o.stderr),
            s(&q.stderr),
            "{f} (json {json}): stderr differs"
        );
        assert_eq!(
            o.status.code(),
            q.status.code(),
            "{f} (json {json}): exit code"
        );
        code = q.status.code().unwrap();
    }
    code
}

fn io(dir: &Path, f: &str, cmds: &[&str]) {
    let mut a = vec!["-f", "qcow2"];
    for c in cmds {
        a.extend(["-c", c]);
    }
    a.push(f);
    ok(dir, "qemu-io", &a);
}

fn create(dir: &Path, f: &str, opts: &str, size: &str) {
    let mut a = vec!["create", "-q", "-f", "qcow2"];
    if !opts.is_empty() {
        a.extend(["-o", opts]);
    }
    a.extend([f, size]);
    ok(dir, "qemu-img", &a);
}

const WRITES: &[&str] = &[
    "write -P 1 0 64k",
    "write -P 2 1M 200k",
    "write -c -P 3 4M 64k",
    "write -c -P 4 4160k 64k",
    "write -z 6M 128k",
    "write -P 5 9M 4k",
];

#[test]
fn clean_images_of_many_kinds() {
    let dir = tmpdir("clean");
    let sets = [
        ("default", ""),
        ("v2", "compat=0.10"),
        ("c512", "cluster_size=512"),
        ("c4k", "cluster_size=4k"),
        ("c2m", "cluster_size=2M"),
        ("rc1", "refcount_bits=1"),
        ("rc64", "refcount_bits=64"),
        ("extl2", "extended_l2=on"),
        ("zstd", "compression_type=zstd"),
        ("lazy", "lazy_refcounts=on"),
        ("meta", "preallocation=metadata"),
        ("falloc", "cluster_size=4k,preallocation=falloc"),
    ];
    for (name, opts) in sets {
        let f = format!("{name}.qcow2");
        create(&dir, &f, opts, "10M");
        assert_eq!(same_check(&dir, &f), 0, "{name} fresh");
        if name == "meta" || name == "falloc" {
            // Compressed writes need unallocated clusters.
            io(
                &dir,
                &f,
                &["write -P 1 0 64k", "write -z 6M 128k", "write -P 5 9M 4k"],
            );
        } else if name == "c2m" {
            // Compressed writes need whole 2 MiB clusters.
            io(
                &dir,
                &f,
                &[
                    "write -P 1 0 64k",
                    "write -c -P 3 4M 2M",
                    "write -P 5 9M 4k",
                ],
            );
        } else {
            io(&dir, &f, WRITES);
        }
        assert_eq!(same_check(&dir, &f), 0, "{name} written");
    }
    // Snapshots: shared clusters (refcount 2, no COPIED), then rewrites.
    create(&dir, "snap.qcow2", "", "10M");
    io(&dir, "snap.qcow2", WRITES);
    ok(&dir, "qemu-img", &["snapshot", "-c", "s1", "snap.qcow2"]);
    io(
        &dir,
        "snap.qcow2",
        &["write -P 9 0 64k", "write -P 8 2M 64k"],
    );
    ok(&dir, "qemu-img", &["snapshot", "-c", "s2", "snap.qcow2"]);
    io(&dir, "snap.qcow2", &["write -P 7 1M 64k"]);
    assert_eq!(same_check(&dir, "snap.qcow2"), 0);
    // Bitmaps.
    create(&dir, "bm.qcow2", "", "10M");
    ok(&dir, "qemu-img", &["bitmap", "--add", "bm.qcow2", "b0"]);
    ok(
        &dir,
        "qemu-img",
        &["bitmap", "--add", "-g", "512k", "bm.qcow2", "b1"],
    );
    io(&dir, "bm.qcow2", WRITES);
    assert_eq!(same_check(&dir, "bm.qcow2"), 0);
    // External data file.
    create(&dir, "df.qcow2", "data_file=df.raw", "10M");
    io(
        &dir,
        "df.qcow2",
        &["write -P 1 0 64k", "write -P 2 3M 100k"],
    );
    assert_eq!(same_check(&dir, "df.qcow2"), 0);
    create(
        &dir,
        "dfraw.qcow2",
        "data_file=dfraw.raw,data_file_raw=on",
        "10M",
    );
    assert_eq!(same_check(&dir, "dfraw.qcow2"), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

fn poke(dir: &Path, f: &str, off: u64, bytes: &[u8]) {
    use std::io::{Seek, SeekFrom, Write};
    let mut h = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join(f))
        .unwrap();
    h.seek(SeekFrom::Start(off)).unwrap();
    h.write_all(bytes).unwrap();
}

/// Default image, 64 KiB clusters: 0 header, 1 refcount table, 2 refcount
/// block, 3 L1, 4 L2, 5.. data clusters of guest clusters 0, 1, 2.
fn damaged(dir: &Path, f: &str) {
    create(dir, f, "", "10M");
    io(dir, f, &["write -P 1 0 192k"]);
}

const RB: u64 = 0x20000;
const L2: u64 = 0x40000;

#[test]
fn damaged_images() {
    let dir = tmpdir("damaged");
    // A leaked cluster: the L2 entry of guest cluster 2 cleared.
    damaged(&dir, "leak.qcow2");
    poke(&dir, "leak.qcow2", L2 + 16, &[0; 8]);
    assert_eq!(same_check(&dir, "leak.qcow2"), 3);
    // A refcount too large: a leak, and a COPIED flag on refcount 2.
    damaged(&dir, "rc2.qcow2");
    poke(&dir, "rc2.qcow2", RB + 2 * 5, &[0, 2]);
    assert_eq!(same_check(&dir, "rc2.qcow2"), 2);
    // A refcount zeroed under a used cluster.
    damaged(&dir, "rc0.qcow2");
    poke(&dir, "rc0.qcow2", RB + 2 * 6, &[0, 0]);
    assert_eq!(same_check(&dir, "rc0.qcow2"), 2);
    // The refcount of the L2 table zeroed.
    damaged(&dir, "rcl2.qcow2");
    poke(&dir, "rcl2.qcow2", RB + 2 * 4, &[0, 0]);
    assert_eq!(same_check(&dir, "rcl2.qcow2"), 2);
    // A wrong COPIED flag on a data cluster and on the L2 table.
    damaged(&dir, "copied.qcow2");
    poke(&dir, "copied.qcow2", L2, &[0x00]);
    poke(&dir, "copied.qcow2", 0x30000, &[0x00]);
    assert_eq!(same_check(&dir, "copied.qcow2"), 2);
    // An L2 entry pointing past the end of the file.
    damaged(&dir, "eof.qcow2");
    poke(&dir, "eof.qcow2", L2 + 8, &[0x80, 0, 0, 0, 0, 0x64, 0, 0]);
    assert_eq!(same_check(&dir, "eof.qcow2"), 2);
    // Overlapping metadata: a data entry pointing at the refcount block,
    // another at the L1 table.
    damaged(&dir, "overlap.qcow2");
    poke(
        &dir,
        "overlap.qcow2",
        L2 + 8,
        &[0x80, 0, 0, 0, 0, 0x02, 0, 0],
    );
    poke(
        &dir,
        "overlap.qcow2",
        L2 + 16,
        &[0x80, 0, 0, 0, 0, 0x03, 0, 0],
    );
    assert_eq!(same_check(&dir, "overlap.qcow2"), 2);
    // An unaligned data cluster and an unaligned L2 table.
    damaged(&dir, "align.qcow2");
    poke(
        &dir,
        "align.qcow2",
        L2 + 8,
        &[0x80, 0, 0, 0, 0, 0x06, 0x02, 0],
    );
    assert_eq!(same_check(&dir, "align.qcow2"), 2);
    // A refcount block outside the image.
    damaged(&dir, "rbout.qcow2");
    poke(&dir, "rbout.qcow2", 0x10008, &[0, 0, 0, 0, 0x10, 0, 0, 0]);
    assert_eq!(same_check(&dir, "rbout.qcow2"), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Byte edits at random places of the metadata (refcount table and block,
/// active and snapshot L1/L2 tables, snapshot table) of an image with
/// snapshots, compressed, zero and normal clusters: both tools must print
/// and return the same for every edited image (fixed seed, so it replays).
#[test]
fn random_metadata_damage_matches_qemu() {
    let dir = tmpdir("fuzz");
    create(&dir, "base.qcow2", "cluster_size=4k", "10M");
    io(
        &dir,
        "base.qcow2",
        &[
            "write -P 1 0 64k",
            "write -c -P 2 1M 64k",
            "write -z 2M 8k",
            "write -P 3 5M 12k",
        ],
    );
    ok(&dir, "qemu-img", &["snapshot", "-c", "s", "base.qcow2"]);
    io(&dir, "base.qcow2", &["write -P 4 0 8k"]);
    let base = std::fs::read(dir.join("base.qcow2")).unwrap();
    let be = |o: usize, n: usize| {
        base[o..o + n]
            .iter()
            .fold(0u64, |a, &b| (a << 8) | b as u64)
    };
    let cs = 4096u64;
    // Metadata clusters: refcount table and blocks, L1, every L2 table of
    // the active and the snapshot's L1, and the snapshot table.
    let mut regions = vec![be(48, 8), be(40, 8), be(64, 8)];
    let rt = be(48, 8) as usize;
    regions.push(be(rt, 8));
    let snap_l1 = be(be(64, 8) as usize, 8);
    for l1 in [be(40, 8), snap_l1] {
        for i in 0..be(36, 4).min(5) as usize {
            let e = be(l1 as usize + 8 * i, 8) & 0x00ff_ffff_ffff_fe00;
            if e != 0 {
                regions.push(e);
            }
        }
    }
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut nonzero = 0;
    for it in 0..80 {
        let mut f = base.clone();
        for _ in 0..1 + next() % 3 {
            let r = regions[(next() % regions.len() as u64) as usize];
            let span = if next() % 10 < 7 { 256 } else { cs };
            let off = ((r + next() % span) as usize).min(f.len() - 1);
            if next() % 2 == 0 {
                f[off] ^= 1 << (next() % 8);
            } else {
                f[off] = next() as u8;
            }
        }
        let name = format!("f{it}.qcow2");
        std::fs::write(dir.join(&name), &f).unwrap();
        if same_check(&dir, &name) != 0 {
            nonzero += 1;
        }
        std::fs::remove_file(dir.join(&name)).unwrap();
    }
    // The edits must actually damage images for this to test anything.
    assert!(
        nonzero > 20,
        "only {nonzero} of 80 edited images had findings"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn more_damage() {
    let dir = tmpdir("more");
    // An L1 entry with reserved bits, and one whose offset bits are 0
    // (QEMU reads the header cluster as an L2 table).
    damaged(&dir, "l1r.qcow2");
    poke(
        &dir,
        "l1r.qcow2",
        0x30000,
        &[0x81, 0, 0, 0, 0, 0x04, 0, 0x01],
    );
    assert_eq!(same_check(&dir, "l1r.qcow2"), 2);
    create(&dir, "l1z.qcow2", "", "10M");
    poke(&dir, "l1z.qcow2", 0x30000, &[0x01, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(same_check(&dir, "l1z.qcow2"), 2);
    // A COPIED flag on a compressed cluster; a zeroed refcount block.
    create(&dir, "c.qcow2", "", "10M");
    io(
        &dir,
        "c.qcow2",
        &["write -c -P 1 0 64k", "write -c -P 2 64k 64k"],
    );
    poke(&dir, "c.qcow2", L2, &[0xc0]);
    assert_eq!(same_check(&dir, "c.qcow2"), 2);
    create(&dir, "c0.qcow2", "", "10M");
    io(
        &dir,
        "c0.qcow2",
        &["write -c -P 1 0 64k", "write -c -P 2 64k 64k"],
    );
    poke(&dir, "c0.qcow2", RB, &[0; 12]);
    assert_eq!(same_check(&dir, "c0.qcow2"), 2);
    // Extended L2: corrupted subcluster bitmaps.
    create(&dir, "x.qcow2", "extended_l2=on", "10M");
    io(&dir, "x.qcow2", &["write -P 1 0 64k", "write 128k 4k"]);
    poke(&dir, "x.qcow2", L2 + 8, &[0xff; 8]);
    poke(&dir, "x.qcow2", L2 + 24, &[0, 0, 0, 0, 0, 0, 0, 0xff]);
    assert_eq!(same_check(&dir, "x.qcow2"), 2);
    // Reserved bits in a refcount table entry; a block listed twice.
    create(&dir, "rt.qcow2", "", "10M");
    poke(&dir, "rt.qcow2", 0x10000, &[0, 0, 0, 0, 0, 0x02, 0, 0x01]);
    assert_eq!(same_check(&dir, "rt.qcow2"), 2);
    create(&dir, "rt2.qcow2", "", "10M");
    poke(&dir, "rt2.qcow2", 0x10008, &[0, 0, 0, 0, 0, 0x02, 0, 0]);
    assert_eq!(same_check(&dir, "rt2.qcow2"), 2);
    // A snapshot whose L1 table is not cluster aligned.
    create(&dir, "s.qcow2", "", "10M");
    io(&dir, "s.qcow2", &["write -P 1 0 128k"]);
    ok(&dir, "qemu-img", &["snapshot", "-c", "a", "s.qcow2"]);
    let f = std::fs::read(dir.join("s.qcow2")).unwrap();
    let so = u64::from_be_bytes(f[64..72].try_into().unwrap());
    poke(&dir, "s.qcow2", so + 6, &[0x01, 0x23]);
    assert_eq!(same_check(&dir, "s.qcow2"), 2);
    // v2 and 1-bit refcounts, damaged.
    create(&dir, "v2.qcow2", "compat=0.10", "10M");
    io(&dir, "v2.qcow2", &["write -P 1 0 128k"]);
    poke(&dir, "v2.qcow2", RB + 2 * 5, &[0, 0]);
    assert_eq!(same_check(&dir, "v2.qcow2"), 2);
    create(&dir, "rc1.qcow2", "refcount_bits=1", "10M");
    io(&dir, "rc1.qcow2", &["write -P 1 0 128k"]);
    poke(&dir, "rc1.qcow2", RB, &[0x3f]); // cluster 6 (data) loses its refcount
    assert_eq!(same_check(&dir, "rc1.qcow2"), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// 1 TiB image whose 2048 L1 entries all point at one L2 table of 8192
/// unaligned entries: `n` L1 entries are redirected.
fn shared_l2(dir: &Path, f: &str, n: usize) {
    create(dir, f, "", "1T");
    io(dir, f, &["write 0 64k"]);
    let mut l1 = Vec::new();
    for _ in 0..n {
        l1.extend_from_slice(&0x8000_0000_0004_0000u64.to_be_bytes());
    }
    poke(dir, f, 0x30000, &l1);
    let mut l2 = Vec::new();
    for _ in 0..8192 {
        l2.extend_from_slice(&0x8000_0000_0005_0200u64.to_be_bytes());
    }
    poke(dir, f, L2, &l2);
}

#[test]
fn l2_tables_listed_many_times() {
    let dir = tmpdir("shared");
    // A few L1 entries sharing a table: everything as QEMU prints it.
    shared_l2(&dir, "few.qcow2", 3);
    assert_eq!(same_check(&dir, "few.qcow2"), 2);
    // ... with a data and a compressed entry far past the end of the file.
    shared_l2(&dir, "few-eof.qcow2", 3);
    let mut tail = 0x8000_0001_0000_0000u64.to_be_bytes().to_vec();
    tail.extend_from_slice(&0x4000_0001_0000_0000u64.to_be_bytes());
    poke(&dir, "few-eof.qcow2", L2 + 8192 * 8 - 16, &tail);
    assert_eq!(same_check(&dir, "few-eof.qcow2"), 2);
    // All 2048: QEMU 10 prints 83623943 lines and counts 50200581
    // corruptions (its refcount counters saturate at 65535 and every
    // further reference is an overflow). We give the same counts, keep
    // the first 100000 messages and say how many more there were.
    shared_l2(&dir, "all.qcow2", 2048);
    let o = run(&dir, OURS, &["check", "--output=json", "all.qcow2"]);
    assert_eq!(o.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["corruptions"], 50200581);
    assert_eq!(v["allocated-clusters"], 16777216);
    assert_eq!(v["fragmented-clusters"], 16775168);
    assert_eq!(v["image-end-offset"], 458752);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 100_001);
    assert!(
        err.ends_with("(83523943 more messages not shown)\n"),
        "{}",
        &err[err.len() - 200..]
    );
    let _ = std::fs::remove_dir_all(&dir);
}
