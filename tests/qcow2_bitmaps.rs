//! Persistent dirty bitmaps made by QEMU 10 survive our read-write opens:
//! we mark them in use (as QEMU does) and keep the autoclear bit, so
//! `qemu-img check` finds no leaks, `check -r leaks` frees nothing and
//! the bitmaps stay listed; dirty images with bitmaps are repaired on open
//! without losing the bitmaps' clusters; a power cut at any operation
//! leaves every bitmap present. Needs qemu-img and qemu-io on PATH.

mod common;

use cowblk::io::fault::MemStorage;
use cowblk::{Image, OpenOptions};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

const IO: &str = env!("CARGO_BIN_EXE_cowblk-io");
const IMG: &str = env!("CARGO_BIN_EXE_cowblk-img");

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

fn rw() -> OpenOptions {
    OpenOptions {
        format: Some("qcow2".into()),
        ..Default::default()
    }
}

/// A QEMU image with three bitmaps: b0 (64 KiB granularity), b1 (4 KiB),
/// b2 disabled; some data written through them.
fn qemu_image(p: &Path, opts: &str) {
    let s = p.to_str().unwrap();
    ok(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "-o", opts, s, "64M"],
    );
    ok("qemu-img", &["bitmap", "--add", s, "b0"]);
    ok("qemu-img", &["bitmap", "--add", "-g", "4k", s, "b1"]);
    ok("qemu-img", &["bitmap", "--add", "--disable", s, "b2"]);
    ok("qemu-io", &["-f", "qcow2", "-c", "write -P 1 0 1M", s]);
}

/// (name, flags) of each bitmap, from `qemu-img info --output=json`.
fn qemu_bitmaps(p: &Path) -> Vec<(String, Vec<String>)> {
    let out = ok(
        "qemu-img",
        &["info", "--output=json", "-f", "qcow2", p.to_str().unwrap()],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let Some(list) = v["format-specific"]["data"]["bitmaps"].as_array() else {
        return Vec::new();
    };
    list.iter()
        .map(|b| {
            let flags = b["flags"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap().to_string())
                .collect();
            (b["name"].as_str().unwrap().to_string(), flags)
        })
        .collect()
}

fn names(b: &[(String, Vec<String>)]) -> Vec<&str> {
    b.iter().map(|(n, _)| n.as_str()).collect()
}

/// `qemu-img check` exit code and output.
fn qemu_check(p: &Path) -> (i32, String) {
    let o = run("qemu-img", &["check", "-f", "qcow2", p.to_str().unwrap()]);
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

fn all_in_use(b: &[(String, Vec<String>)]) -> bool {
    b.iter().all(|(_, f)| f.iter().any(|x| x == "in-use"))
}

#[test]
fn writes_mark_bitmaps_in_use_and_keep_their_clusters() {
    let d = common::tmpdir("bm-keep");
    let p = d.join("t.qcow2");
    qemu_image(&p, "cluster_size=65536");
    let before = qemu_bitmaps(&p);
    assert_eq!(names(&before), ["b0", "b1", "b2"]);
    assert!(before.iter().all(|(_, f)| !f.iter().any(|x| x == "in-use")));
    assert_eq!(before[2].1, Vec::<String>::new(), "b2 disabled");
    // The library: a write, then close.
    {
        let img = Image::open(&p, &rw()).unwrap();
        img.write(&[9u8; 4096], 2 << 20).unwrap();
        img.close().unwrap();
    }
    let b = std::fs::read(&p).unwrap();
    assert_eq!(b[95] & 1, 1, "autoclear bitmaps bit kept");
    let after = qemu_bitmaps(&p);
    assert_eq!(names(&after), ["b0", "b1", "b2"]);
    assert!(all_in_use(&after), "{after:?}");
    // auto stays as it was.
    assert!(after[0].1.iter().any(|x| x == "auto"));
    assert!(!after[2].1.iter().any(|x| x == "auto"));
    let (code, out) = qemu_check(&p);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("No errors were found"), "{out}");
    // Our check agrees with QEMU's on the same image.
    let ours = ok(IMG, &["check", p.to_str().unwrap()]);
    assert_eq!(ours, out);
    // check -r leaks frees nothing: the bitmaps' clusters are referenced.
    let o = ok(
        "qemu-img",
        &["check", "-r", "leaks", "-f", "qcow2", p.to_str().unwrap()],
    );
    assert!(!o.contains("Leaked"), "{o}");
    assert_eq!(names(&qemu_bitmaps(&p)), ["b0", "b1", "b2"]);
    // QEMU refuses to use an in-use bitmap but removes it cleanly.
    let o = run(
        "qemu-img",
        &["bitmap", "--clear", p.to_str().unwrap(), "b1"],
    );
    assert!(!o.status.success());
    ok(
        "qemu-img",
        &["bitmap", "--remove", p.to_str().unwrap(), "b1"],
    );
    assert_eq!(names(&qemu_bitmaps(&p)), ["b0", "b2"]);
    assert_eq!(qemu_check(&p).0, 0);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn cowblk_io_writes_keep_bitmaps_and_data() {
    let d = common::tmpdir("bm-io");
    let p = d.join("t.qcow2");
    qemu_image(&p, "cluster_size=4096");
    let s = p.to_str().unwrap();
    ok(
        IO,
        &[
            "-c",
            "write -P 5 3M 100k",
            "-c",
            "write -z 0 64k",
            "-c",
            "discard 512k 64k",
            s,
        ],
    );
    let b = qemu_bitmaps(&p);
    assert_eq!(names(&b), ["b0", "b1", "b2"]);
    assert!(all_in_use(&b));
    let (code, out) = qemu_check(&p);
    assert_eq!(code, 0, "{out}");
    // QEMU reads our data and writes after us.
    ok("qemu-io", &["-f", "qcow2", "-c", "read -P 5 3M 100k", s]);
    ok("qemu-io", &["-f", "qcow2", "-c", "read -P 1 64k 448k", s]);
    ok("qemu-io", &["-f", "qcow2", "-c", "write -P 6 8M 64k", s]);
    assert_eq!(qemu_check(&p).0, 0);
    assert_eq!(names(&qemu_bitmaps(&p)), ["b0", "b1", "b2"]);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn check_repair_keeps_bitmaps_consistent() {
    // QEMU's check -r all leaves consistent bitmaps consistent; so does ours.
    let d = common::tmpdir("bm-repair");
    let p = d.join("t.qcow2");
    qemu_image(&p, "cluster_size=65536");
    ok(IMG, &["check", "-r", "all", p.to_str().unwrap()]);
    let b = qemu_bitmaps(&p);
    assert_eq!(names(&b), ["b0", "b1", "b2"]);
    assert!(b.iter().all(|(_, f)| !f.iter().any(|x| x == "in-use")));
    assert_eq!(qemu_check(&p).0, 0);
    let _ = std::fs::remove_dir_all(&d);
}

/// A dirty image (lazy refcounts, QEMU aborted) with bitmaps: QEMU's check
/// fails before; our open repairs it, bitmaps and their clusters kept.
#[test]
fn dirty_image_with_bitmaps_is_repaired_on_open() {
    let d = common::tmpdir("bm-dirty");
    let p = d.join("t.qcow2");
    qemu_image(&p, "cluster_size=65536,lazy_refcounts=on");
    let s = p.to_str().unwrap();
    let o = run(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 2 8M 1M", "-c", "abort", s],
    );
    assert!(!o.status.success());
    assert_eq!(std::fs::read(&p).unwrap()[79] & 1, 1, "dirty bit");
    assert_ne!(qemu_check(&p).0, 0, "stale refcounts before the repair");
    {
        let img = Image::open(&p, &rw()).unwrap();
        img.write(&[3u8; 65536], 20 << 20).unwrap();
        img.close().unwrap();
    }
    assert_eq!(std::fs::read(&p).unwrap()[79] & 1, 0, "dirty bit cleared");
    let (code, out) = qemu_check(&p);
    assert_eq!(code, 0, "{out}");
    assert_eq!(names(&qemu_bitmaps(&p)), ["b0", "b1", "b2"]);
    ok("qemu-io", &["-f", "qcow2", "-c", "read -P 2 8M 1M", s]);
    ok("qemu-io", &["-f", "qcow2", "-c", "read -P 3 20M 64k", s]);
    let _ = std::fs::remove_dir_all(&d);
}

/// A power cut at every operation of opening and writing (keeping none,
/// all or half of the unflushed writes): every state opens, QEMU finds no
/// errors (leaks allowed) and lists every bitmap, either all in use or all
/// as they were.
#[test]
fn crash_at_every_operation_keeps_bitmaps() {
    let d = common::tmpdir("bm-crash");
    let p = d.join("base.qcow2");
    qemu_image(&p, "cluster_size=4096");
    let bytes = std::fs::read(&p).unwrap();
    let path = Path::new("img.qcow2");
    let work = |img: &Image| -> cowblk::Result<()> {
        img.write(&[4u8; 8192], 2 << 20)?;
        img.flush()?;
        img.write(&[5u8; 4096], 3 << 20)?;
        img.write_zeroes(0, 8192)?;
        img.flush()
    };
    let total = {
        let st = Arc::new(MemStorage::new());
        st.insert(path, bytes.clone());
        st.reset_count();
        let img = Image::open_in(st.clone(), path, &rw()).unwrap();
        work(&img).unwrap();
        st.op_count()
    };
    assert!(total > 5, "{total} operations");
    eprintln!("{total} operations, {} crash states", total * 3);
    let out = d.join("crash.qcow2");
    for k in 0..total {
        for policy in 0..3u64 {
            let st = Arc::new(MemStorage::new());
            st.insert(path, bytes.clone());
            st.reset_count();
            st.fail_from(Some(k));
            if let Ok(img) = Image::open_in(st.clone(), path, &rw()) {
                let _ = work(&img);
                std::mem::forget(img);
            }
            let mut rng = common::Rng::new(k * 3 + policy);
            let cut = st.crash(|_, _| match policy {
                0 => false,
                1 => true,
                _ => rng.below(2) == 0,
            });
            let state = cut.file(path).unwrap().contents();
            std::fs::write(&out, &state).unwrap();
            let (code, o) = qemu_check(&out);
            assert!(code == 0 || code == 3, "op {k} policy {policy}: {o}");
            let b = qemu_bitmaps(&out);
            assert_eq!(names(&b), ["b0", "b1", "b2"], "op {k} policy {policy}");
            let marked = b
                .iter()
                .filter(|(_, f)| f.iter().any(|x| x == "in-use"))
                .count();
            assert!(marked == 0 || marked == 3, "op {k} policy {policy}: {b:?}");
            // Every state opens read-write again.
            let cut = Arc::new(cut);
            Image::open_in(cut, path, &rw())
                .unwrap_or_else(|e| panic!("op {k} policy {policy}: {e}"));
        }
    }
    let _ = std::fs::remove_dir_all(&d);
}
