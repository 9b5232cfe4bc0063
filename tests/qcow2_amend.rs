//! `cowblk-img amend` on qcow2 against QEMU 10's `qemu-img amend`: twin
//! images made by qemu-img/qemu-io are amended by both tools; the exit
//! codes and error words match, `qemu-img info --output=json` of the two
//! results is equal (but for file name and actual size), `qemu-img check`
//! finds ours clean, and the guest data equals QEMU's result and the
//! image before the amend. A crash test cuts the power at every
//! operation of an amend. Needs qemu-img and qemu-io on PATH.

use cowblk::io::fault::MemStorage;
use cowblk::{CreateOptions, Image, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

const OURS: &str = env!("CARGO_BIN_EXE_cowblk-img");

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cowblk-q2a-{name}-{}", std::process::id()));
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

fn ok(dir: &Path, prog: &str, args: &[&str]) -> String {
    let o = run(dir, prog, args);
    assert!(
        o.status.success(),
        "{prog} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `qemu-img info --output=json` without the fields that name the file
/// or measure it.
fn info(dir: &Path, f: &str) -> String {
    ok(dir, "qemu-img", &["info", "--output=json", f])
        .lines()
        .filter(|l| !l.contains("\"filename\"") && !l.contains("\"actual-size\""))
        .collect::<Vec<_>>()
        .join("\n")
}

const WRITES: &[&str] = &[
    "write -P 1 0 256k",
    "write -z 1M 128k",
    "write -P 2 2M 64k",
    "write -z 2M 64k",
    "write -c -P 3 4M 64k",
    "write -P 4 15M 1M",
];

/// Makes `img.qcow2` with `create` options (plus `extra` qemu-img create
/// arguments), writes to it, copies it to `q.qcow2` and `o.qcow2`, amends
/// them with `amend`; returns QEMU's exit code after comparing.
fn twin(name: &str, create: &str, amend: &str, snapshot: bool) -> i32 {
    let dir = tmpdir(name);
    if create.contains("backing_file") {
        ok(
            &dir,
            "qemu-img",
            &["create", "-q", "-f", "raw", "bk.raw", "16M"],
        );
        ok(
            &dir,
            "qemu-io",
            &["-f", "raw", "-c", "write -P 9 0 16M", "bk.raw"],
        );
    }
    ok(
        &dir,
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            create,
            "img.qcow2",
            "16M",
        ],
    );
    let mut a = vec!["-f", "qcow2"];
    for w in WRITES {
        if create.contains("data_file") && w.contains("-c") {
            continue;
        }
        a.extend(["-c", w]);
    }
    a.push("img.qcow2");
    ok(&dir, "qemu-io", &a);
    if snapshot {
        ok(&dir, "qemu-img", &["snapshot", "-c", "s1", "img.qcow2"]);
        ok(&dir, "qemu-io", &["-c", "write -P 7 64k 64k", "img.qcow2"]);
    }
    for f in ["q.qcow2", "o.qcow2"] {
        std::fs::copy(dir.join("img.qcow2"), dir.join(f)).unwrap();
    }
    let q = run(&dir, "qemu-img", &["amend", "-o", amend, "q.qcow2"]);
    let o = run(&dir, OURS, &["amend", "-o", amend, "o.qcow2"]);
    let err = |b: &[u8]| {
        String::from_utf8_lossy(b)
            .replace("qemu-img: ", "")
            .replace("cowblk-img: ", "")
            .replace("'qemu-img rebase'", "'cowblk-img rebase'")
    };
    assert_eq!(err(&o.stderr), err(&q.stderr), "{name}: stderr");
    assert_eq!(o.status.code(), q.status.code(), "{name}: exit code");
    assert_eq!(info(&dir, "o.qcow2"), info(&dir, "q.qcow2"), "{name}: info");
    // Ours is clean, and reads as QEMU's and as before.
    ok(&dir, "qemu-img", &["check", "o.qcow2"]);
    ok(&dir, "qemu-img", &["compare", "o.qcow2", "q.qcow2"]);
    ok(&dir, "qemu-img", &["compare", "o.qcow2", "img.qcow2"]);
    if snapshot {
        for f in ["o.qcow2", "img.qcow2"] {
            ok(
                &dir,
                "qemu-img",
                &["convert", "-l", "s1", "-O", "raw", f, &format!("{f}.s1")],
            );
        }
        let a = std::fs::read(dir.join("o.qcow2.s1")).unwrap();
        let b = std::fs::read(dir.join("img.qcow2.s1")).unwrap();
        assert!(a == b, "{name}: snapshot data");
    }
    let code = q.status.code().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    code
}

#[test]
fn compat_down_and_up() {
    assert_eq!(twin("down", "compat=1.1", "compat=0.10", false), 0);
    assert_eq!(twin("downv2", "compat=v3", "compat=v2", false), 0);
    assert_eq!(
        twin(
            "downbk",
            "compat=1.1,backing_file=bk.raw,backing_fmt=raw",
            "compat=0.10",
            false
        ),
        0
    );
    assert_eq!(twin("downsnap", "compat=1.1", "compat=0.10", true), 0);
    assert_eq!(
        twin("downlazy", "lazy_refcounts=on", "compat=0.10", false),
        0
    );
    assert_eq!(twin("up", "compat=0.10", "compat=1.1", false), 0);
    assert_eq!(twin("upsnap", "compat=0.10", "compat=1.1", true), 0);
    assert_eq!(twin("same", "compat=1.1", "compat=1.1", false), 0);
}

#[test]
fn lazy_refcounts_on_and_off() {
    assert_eq!(twin("lazyon", "compat=1.1", "lazy_refcounts=on", false), 0);
    assert_eq!(
        twin("lazyoff", "lazy_refcounts=on", "lazy_refcounts=off", false),
        0
    );
    assert_eq!(twin("lazyv2", "compat=0.10", "lazy_refcounts=on", false), 1);
    assert_eq!(
        twin(
            "uplazy",
            "compat=0.10",
            "compat=1.1,lazy_refcounts=on",
            false
        ),
        0
    );
}

#[test]
fn refcount_bits_change() {
    for bits in ["1", "2", "4", "8", "32", "64"] {
        let o = format!("refcount_bits={bits}");
        assert_eq!(twin(&format!("rc{bits}"), "compat=1.1", &o, false), 0);
    }
    assert_eq!(
        twin("rc16", "refcount_bits=2", "refcount_bits=16", false),
        0
    );
    // Snapshot-shared clusters have refcount 2: not in 1 bit.
    assert_eq!(twin("rc1snap", "compat=1.1", "refcount_bits=1", true), 1);
    assert_eq!(twin("rc8snap", "compat=1.1", "refcount_bits=8", true), 0);
    assert_eq!(
        twin(
            "rcdown",
            "refcount_bits=4",
            "compat=0.10,refcount_bits=16",
            false
        ),
        0
    );
    assert_eq!(twin("rcbad", "compat=1.1", "refcount_bits=3", false), 1);
    assert_eq!(twin("rcv2", "compat=0.10", "refcount_bits=8", false), 1);
    assert_eq!(
        twin("rcdownbad", "refcount_bits=8", "compat=0.10", false),
        1
    );
}

#[test]
fn data_file_options_and_refusals() {
    assert_eq!(
        twin(
            "rawoff",
            "data_file=d.raw,data_file_raw=on",
            "data_file_raw=off",
            false
        ),
        0
    );
    assert_eq!(
        twin("rawon", "data_file=d2.raw", "data_file_raw=on", false),
        1
    );
    assert_eq!(twin("dfset", "compat=1.1", "data_file=x.raw", false), 1);
    assert_eq!(twin("dfdown", "data_file=d3.raw", "compat=0.10", false), 1);
    assert_eq!(twin("cs", "compat=1.1", "cluster_size=4k", false), 1);
    assert_eq!(twin("unknown", "compat=1.1", "frobnicate=1", false), 1);
    assert_eq!(twin("compat09", "compat=1.1", "compat=0.9", false), 1);
    assert_eq!(
        twin("backing", "compat=1.1", "backing_file=x.raw", false),
        1
    );
    assert_eq!(twin("extl2", "extended_l2=on", "compat=0.10", false), 1);
}

// ---------------------------------------------------------------- crashes

fn read_all(img: &Image) -> Vec<u8> {
    let mut b = vec![0u8; img.size() as usize];
    img.read(&mut b, 0).unwrap();
    b
}

/// Cuts the power at every operation of an amend (keeping none, all or
/// half of the unflushed writes): every state opens, reads the guest
/// data, and QEMU finds no corruption (leaks allowed).
fn crash(name: &str, create: &str, amend: &str) {
    let dir = tmpdir(&format!("crash{name}"));
    ok(
        &dir,
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            create,
            "img.qcow2",
            "16M",
        ],
    );
    let mut a = vec!["-f", "qcow2"];
    for w in WRITES {
        a.extend(["-c", w]);
    }
    a.push("img.qcow2");
    ok(&dir, "qemu-io", &a);
    let bytes = std::fs::read(dir.join("img.qcow2")).unwrap();
    let path = Path::new("img.qcow2");
    let rw = OpenOptions {
        format: Some("qcow2".into()),
        ..Default::default()
    };
    let ro = OpenOptions {
        read_only: true,
        ..rw.clone()
    };
    let mut opts = CreateOptions::new();
    opts.parse_into(amend).unwrap();
    let do_amend = |st: &Arc<MemStorage>| -> cowblk::Result<()> {
        let img = Image::open_in(st.clone(), path, &rw)?;
        let mut last = (0, 0);
        img.amend(&opts, &mut |d, t| {
            assert!(
                d <= t && (d, t) >= last || t != last.1,
                "progress went back"
            );
            last = (d, t);
        })?;
        assert_eq!(last.0, last.1, "progress ends at its total");
        img.close()
    };
    let model = {
        let st = Arc::new(MemStorage::new());
        st.insert(path, bytes.clone());
        read_all(&Image::open_in(st, path, &ro).unwrap())
    };
    let total = {
        let st = Arc::new(MemStorage::new());
        st.insert(path, bytes.clone());
        st.reset_count();
        do_amend(&st).unwrap();
        st.op_count()
    };
    eprintln!("{name}: {total} operations, {} crash states", total * 3);
    let mut seed = 11u64;
    for k in 0..total {
        for policy in 0..3 {
            let st = Arc::new(MemStorage::new());
            st.insert(path, bytes.clone());
            st.reset_count();
            st.fail_from(Some(k));
            let _ = do_amend(&st);
            let cut = st.crash(|_, _| match policy {
                0 => false,
                1 => true,
                _ => {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    seed >> 63 == 0
                }
            });
            let cut = Arc::new(cut);
            let img = Image::open_in(cut.clone(), path, &ro)
                .unwrap_or_else(|e| panic!("{name}: op {k} policy {policy}: {e}"));
            assert!(
                read_all(&img) == model,
                "{name}: op {k} policy {policy}: guest data differs"
            );
            drop(img);
            std::fs::write(dir.join("cut.qcow2"), cut.file(path).unwrap().contents()).unwrap();
            let q = run(&dir, "qemu-img", &["check", "cut.qcow2"]);
            assert!(
                matches!(q.status.code(), Some(0 | 3)),
                "{name}: op {k} policy {policy}: {}",
                String::from_utf8_lossy(&q.stdout)
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn crash_during_refcount_width_change() {
    crash("rc8", "compat=1.1", "refcount_bits=8");
}

#[test]
fn crash_during_downgrade_with_zero_clusters() {
    crash("down", "compat=1.1", "compat=0.10");
}
