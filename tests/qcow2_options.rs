//! qcow2 open options: l2-cache-size, refcount-cache-size, cache-size and
//! overlap-check through cowblk-io's `open -o` and the C ABI's
//! `cowblk_open_kv`. The overlap modes are shown on images whose refcounts
//! were broken on purpose (a snapshot's L1 table, L2 table or the snapshot
//! table marked free): the modes that cover the structure refuse the write
//! and mark the image corrupt, weaker ones let the allocation land there,
//! as in QEMU. Needs qemu-img/qemu-io.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn run(prog: &str, args: &[&str]) -> std::process::Output {
    Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {prog}: {e}"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

/// A 64 KiB-cluster image with snapshot "s1" whose L2 table was copied
/// by a later write, so the snapshot owns an L1 and an L2 table of its
/// own. Returns (path, snapshot L1 cluster, snapshot L2 cluster,
/// snapshot table cluster).
fn snapshot_image(d: &Path) -> (PathBuf, u64, u64, u64) {
    let p = d.join("base.qcow2");
    for args in [
        vec!["create", "-q", "-f", "qcow2", s(&p), "4M"],
        vec!["snapshot", "-c", "s1", s(&p)],
    ] {
        if args[0] == "snapshot" {
            assert!(run("qemu-io", &["-c", "write -P 1 0 64k", s(&p)])
                .status
                .success());
        }
        assert!(run("qemu-img", &args).status.success());
    }
    assert!(run("qemu-io", &["-c", "write -P 2 0 4k", s(&p)])
        .status
        .success());
    let b = std::fs::read(&p).unwrap();
    let st = be64(&b, 64) as usize;
    let sl1 = be64(&b, st);
    let sl2 = be64(&b, sl1 as usize) & 0x00ff_ffff_ffff_fe00;
    (p, sl1 >> 16, sl2 >> 16, st as u64 >> 16)
}

/// A copy of `base` with the (16-bit) refcount of `cluster` set to 0.
fn freed(base: &Path, cluster: u64, name: &str) -> PathBuf {
    let mut b = std::fs::read(base).unwrap();
    let rt = be64(&b, 48) as usize;
    let rb = be64(&b, rt) as usize;
    let at = rb + 2 * cluster as usize;
    assert_eq!(&b[at..at + 2], &[0, 1], "refcount of cluster {cluster}");
    b[at..at + 2].copy_from_slice(&[0, 0]);
    let p = base.with_file_name(name);
    std::fs::write(&p, b).unwrap();
    p
}

/// cowblk-io opening `p` with `opts` and writing a new cluster; its
/// stdout and stderr.
fn write_with(p: &Path, opts: &str) -> String {
    let open = format!("open -o driver=qcow2,{opts} {}", s(p));
    let o = run(
        env!("CARGO_BIN_EXE_cowblk-io"),
        &["-c", &open, "-c", "write -P 3 1M 64k", "-c", "close"],
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn overlap_modes_cover_what_qemu_says() {
    let d = common::tmpdir("q2o-overlap");
    let (base, sl1, sl2, stab) = snapshot_image(&d);
    // (freed cluster, mode that must refuse, weaker mode that lets it
    // through, what the refusal names)
    let cases = [
        (stab, "constant", "none", "the snapshot table"),
        (sl1, "cached", "constant", "a snapshot's L1 table"),
        (sl2, "all", "cached", "a snapshot's L2 table"),
    ];
    for (i, (c, strong, weak, what)) in cases.into_iter().enumerate() {
        let p = freed(&base, c, &format!("strong{i}.qcow2"));
        let out = write_with(&p, &format!("overlap-check={strong}"));
        assert!(out.contains("write failed"), "{strong}: {out}");
        let b = std::fs::read(&p).unwrap();
        assert_eq!(b[79] & 2, 2, "{strong}: corrupt bit not set");
        // The error names the structure (the library's message).
        let p2 = freed(&base, c, &format!("lib{i}.qcow2"));
        let img = cowblk::Image::open(
            &p2,
            &cowblk::OpenOptions {
                format: Some("qcow2".into()),
                format_opts: vec![("overlap-check".into(), strong.into())],
                ..Default::default()
            },
        )
        .unwrap();
        let e = img.write(&[3u8; 65536], 1 << 20).unwrap_err().to_string();
        assert!(e.contains(what) && e.contains("marked corrupt"), "{e}");
        drop(img);
        // The weaker mode does not look there: the write lands on it.
        let p3 = freed(&base, c, &format!("weak{i}.qcow2"));
        let out = write_with(&p3, &format!("overlap-check={weak}"));
        assert!(out.contains("wrote 65536/65536"), "{weak}: {out}");
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn cache_options_work_and_bad_ones_are_refused() {
    let d = common::tmpdir("q2o-cache");
    let p = d.join("c.qcow2");
    assert!(run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=4096",
            s(&p),
            "64M"
        ]
    )
    .status
    .success());
    // Tiny caches: many evictions and write-backs; the image stays clean.
    for opts in [
        "l2-cache-size=8k,refcount-cache-size=16k",
        "cache-size=40k",
        "cache-size=1M,l2-cache-size=512k,overlap-check=all",
        "overlap-check=none",
        "l2-cache-size=8k,l2-cache-entry-size=512",
    ] {
        let open = format!("open -o driver=qcow2,{opts} {}", s(&p));
        let o = run(
            env!("CARGO_BIN_EXE_cowblk-io"),
            &[
                "-c",
                &open,
                "-c",
                "write -P 5 0 8M",
                "-c",
                "write -P 6 20M 4M",
                "-c",
                "write -z -u 1M 1M",
                "-c",
                "close",
            ],
        );
        assert!(o.status.success(), "{opts}: {o:?}");
        let c = run("qemu-img", &["check", s(&p)]);
        assert!(c.status.success(), "{opts}: {c:?}");
    }
    let q = run(
        "qemu-io",
        &[
            "-c",
            "read -P 5 0 1M",
            "-c",
            "read -P 0 1M 1M",
            "-c",
            "read -P 6 20M 4M",
            s(&p),
        ],
    );
    assert!(
        !String::from_utf8_lossy(&q.stdout).contains("fail"),
        "{q:?}"
    );
    for (opts, want) in [
        (
            "cache-size=1M,l2-cache-size=2M",
            "may not exceed cache-size",
        ),
        ("overlap-check=sometimes", "none, constant, cached, all"),
        ("l2-cache-size=lots", "l2-cache-size"),
        ("l2-cache-entry-size=256", "power of two between 512"),
        ("l2-cache-entry-size=1000", "power of two between 512"),
        ("l2-cache-entry-size=8k", "the cluster size (4096)"),
    ] {
        let e = cowblk::Image::open(
            &p,
            &cowblk::OpenOptions {
                format: Some("qcow2".into()),
                format_opts: opts
                    .split(',')
                    .map(|kv| {
                        let (k, v) = kv.split_once('=').unwrap();
                        (k.to_string(), v.to_string())
                    })
                    .collect(),
                ..Default::default()
            },
        )
        .err()
        .unwrap_or_else(|| panic!("{opts} accepted"))
        .to_string();
        assert!(e.contains(want), "{opts}: {e}");
    }
    // The C ABI: options by key and value; raw takes none.
    use cowblk::ffi::*;
    let path = std::ffi::CString::new(s(&p)).unwrap();
    let k = [c"l2-cache-size".as_ptr(), c"overlap-check".as_ptr()];
    let v = [c"64k".as_ptr(), c"all".as_ptr()];
    unsafe {
        let mut img = std::ptr::null_mut();
        let rc = cowblk_open_kv(
            path.as_ptr(),
            c"qcow2".as_ptr(),
            0,
            0,
            k.as_ptr(),
            v.as_ptr(),
            2,
            &mut img,
        );
        assert_eq!(rc, 0);
        assert_eq!(cowblk_close(&mut img), 0);
        let bad = [c"bogus".as_ptr()];
        let rc = cowblk_open_kv(
            path.as_ptr(),
            c"qcow2".as_ptr(),
            0,
            0,
            bad.as_ptr(),
            v.as_ptr(),
            1,
            &mut img,
        );
        assert_eq!(rc, -libc::EINVAL);
        let rc = cowblk_open_kv(
            path.as_ptr(),
            c"raw".as_ptr(),
            0,
            0,
            k.as_ptr(),
            v.as_ptr(),
            1,
            &mut img,
        );
        assert_eq!(rc, -libc::EINVAL);
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// overlap-check=all follows snapshots created and deleted while open:
/// no false alarm when a deleted snapshot's tables are reused, and the
/// new snapshot's tables are protected.
#[test]
fn overlap_all_follows_snapshot_changes() {
    let d = common::tmpdir("q2o-snaps");
    let p = d.join("s.qcow2");
    assert!(run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=4096",
            s(&p),
            "8M"
        ]
    )
    .status
    .success());
    let img = cowblk::Image::open(
        &p,
        &cowblk::OpenOptions {
            format: Some("qcow2".into()),
            format_opts: vec![("overlap-check".into(), "all".into())],
            ..Default::default()
        },
    )
    .unwrap();
    for round in 0..3u8 {
        img.write(&vec![round + 1; 1 << 20], 0).unwrap();
        img.snapshot_create(&format!("s{round}")).unwrap();
        // Copy-on-write of the shared tables and clusters.
        img.write(&vec![round + 10; 1 << 20], 512 << 10).unwrap();
        if round > 0 {
            let name = format!("s{}", round - 1);
            img.snapshot_delete(&cowblk::image::SnapshotRef::Name(name))
                .unwrap();
        }
        // Allocations reuse what the deleted snapshot freed.
        img.write(&vec![round + 20; 2 << 20], 4 << 20).unwrap();
        img.flush().unwrap();
    }
    img.close().unwrap();
    let c = run("qemu-img", &["check", s(&p)]);
    assert!(c.status.success(), "{c:?}");
    let q = run(
        "qemu-io",
        &[
            "-c",
            "read -P 3 0 512k",
            "-c",
            "read -P 12 512k 1M",
            "-c",
            "read -P 22 4M 2M",
            s(&p),
        ],
    );
    assert!(
        !String::from_utf8_lossy(&q.stdout).contains("fail"),
        "{q:?}"
    );
    let _ = std::fs::remove_dir_all(&d);
}
