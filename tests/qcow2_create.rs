//! `cowblk-img create -f qcow2` against QEMU 10's qemu-img: for each option
//! set, `qemu-img info --output=json` of our image equals that of
//! qemu-img's (after dropping the fields that must differ: file names and
//! actual-size; the data file's name is mapped), the two files are
//! byte-identical, `qemu-img check` is clean,
//! and QEMU's qemu-io writes and reads our image. Refusals use QEMU's
//! words and leave no file. Needs qemu-img and qemu-io on PATH.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cowblk-q2c-{name}-{}", std::process::id()));
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
        "{prog} {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

const OURS: &str = env!("CARGO_BIN_EXE_cowblk-img");

/// Data runs of a file (SEEK_DATA/SEEK_HOLE), so that large sparse images
/// compare quickly.
fn data_runs(f: &std::fs::File, len: u64) -> Vec<(u64, u64)> {
    use std::os::unix::io::AsRawFd;
    let fd = f.as_raw_fd();
    let mut runs = Vec::new();
    let mut pos = 0u64;
    while pos < len {
        // SAFETY: lseek on an open descriptor.
        let d = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if d < 0 {
            break;
        }
        // SAFETY: as above.
        let h = unsafe { libc::lseek(fd, d, libc::SEEK_HOLE) };
        let h = if h < 0 { len } else { h as u64 };
        runs.push((d as u64, h));
        pos = h;
    }
    runs
}

/// Byte equality of two files, reading only where either holds data
/// (holes read as zeros in both).
fn same_sparse(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::FileExt;
    let (fa, fb) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    let len = fa.metadata().unwrap().len();
    if len != fb.metadata().unwrap().len() {
        return false;
    }
    let mut runs = data_runs(&fa, len);
    runs.extend(data_runs(&fb, len));
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    for (s, e) in runs {
        let mut p = s;
        while p < e {
            let n = ((e - p) as usize).min(x.len());
            fa.read_exact_at(&mut x[..n], p).unwrap();
            fb.read_exact_at(&mut y[..n], p).unwrap();
            if x[..n] != y[..n] {
                return false;
            }
            p += n as u64;
        }
    }
    true
}

/// Drops what legitimately differs between two images of the same layout
/// made under different names.
fn normalise(v: &mut Value) {
    if let Value::Object(m) = v {
        m.remove("filename");
        m.remove("actual-size");
        if let Some(Value::Object(d)) = m.get_mut("format-specific").and_then(|f| f.get_mut("data"))
        {
            if let Some(Value::String(s)) = d.get_mut("data-file") {
                *s = s.replace("o-", "q-");
            }
        }
        if let Some(Value::Array(ch)) = m.get_mut("children") {
            for c in ch {
                if let Some(info) = c.get_mut("info") {
                    normalise(info);
                }
            }
        }
    }
}

fn info(dir: &Path, f: &str) -> Value {
    let mut v: Value =
        serde_json::from_str(&ok(dir, "qemu-img", &["info", "-U", "--output=json", f])).unwrap();
    normalise(&mut v);
    v
}

fn check_clean(dir: &Path, f: &str) {
    let o = run(dir, "qemu-img", &["check", f]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && out.contains("No errors were found"),
        "qemu-img check {f}: {out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Creates the image both ways; `same_bytes` when the layout is QEMU's.
/// `{D}` in the options stands for the data file name (q-d.raw / o-d.raw).
fn both(dir: &Path, case: &str, size: &str, opts: &str, extra: &[&str], same_bytes: bool) {
    let q = format!("q-{case}.qcow2");
    let o = format!("o-{case}.qcow2");
    let qopts = opts.replace("{D}", &format!("q-{case}.raw"));
    let oopts = opts.replace("{D}", &format!("o-{case}.raw"));
    let mut qa = vec!["create", "-q", "-f", "qcow2"];
    let mut oa = qa.clone();
    if !opts.is_empty() {
        qa.extend(["-o", &qopts]);
        oa.extend(["-o", &oopts]);
    }
    qa.extend(extra);
    oa.extend(extra);
    qa.extend([q.as_str(), size]);
    oa.extend([o.as_str(), size]);
    ok(dir, "qemu-img", &qa);
    ok(dir, OURS, &oa);
    assert_eq!(
        info(dir, &o),
        info(dir, &q),
        "{case}: qemu-img info differs"
    );
    check_clean(dir, &o);
    if same_bytes {
        if opts.contains("{D}") {
            // Small files; the data file's name differs by design.
            let mut a = std::fs::read(dir.join(&o)).unwrap();
            let b = std::fs::read(dir.join(&q)).unwrap();
            let from = format!("o-{case}.raw");
            if let Some(i) = a.windows(from.len()).position(|w| w == from.as_bytes()) {
                a[i] = b'q';
            }
            assert!(
                a == b,
                "{case}: our image is not byte-identical to qemu-img's"
            );
        } else {
            assert!(
                same_sparse(&dir.join(&o), &dir.join(&q)),
                "{case}: our image is not byte-identical to qemu-img's"
            );
        }
    }
    if size == "0" || size == "1000" {
        return; // too small for the I/O below
    }
    // QEMU writes and reads our image; it stays clean.
    let wr = ok(
        dir,
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x5a 0 70k",
            "-c",
            "write -P 0xa5 200k 4k",
            "-c",
            "read -P 0x5a 0 70k",
            "-c",
            "read -P 0xa5 200k 4k",
            "-c",
            "read -P 0 300k 4k",
            &o,
        ],
    );
    assert!(!wr.contains("Pattern verification failed"), "{case}: {wr}");
    check_clean(dir, &o);
}

#[test]
fn option_sets_match_qemu_img() {
    let dir = tmpdir("sets");
    ok(
        &dir,
        "qemu-img",
        &["create", "-q", "-f", "raw", "base.raw", "1M"],
    );
    let cases: &[(&str, &str, &str, &[&str], bool)] = &[
        ("default", "100M", "", &[], true),
        ("empty", "0", "", &[], true),
        ("odd", "1000", "", &[], true),
        ("v2", "100M", "compat=0.10", &[], true),
        (
            "v2b",
            "1M",
            "compat=v2",
            &["-b", "base.raw", "-F", "raw"],
            true,
        ),
        ("c512", "10M", "cluster_size=512", &[], true),
        ("c4k", "10M", "cluster_size=4k", &[], true),
        ("c2m", "100M", "cluster_size=2M", &[], true),
        ("meta", "100M", "preallocation=metadata", &[], true),
        (
            "meta512",
            "1M",
            "cluster_size=512,preallocation=metadata",
            &[],
            true,
        ),
        ("falloc", "20M", "preallocation=falloc", &[], true),
        (
            "falloc512",
            "3M",
            "cluster_size=512,preallocation=falloc",
            &[],
            true,
        ),
        (
            "full4k",
            "10M",
            "cluster_size=4k,preallocation=full",
            &[],
            true,
        ),
        ("extl2", "100M", "extended_l2=on", &[], true),
        (
            "extl2meta",
            "10M",
            "extended_l2=on,preallocation=metadata",
            &[],
            true,
        ),
        (
            "extl2back",
            "1M",
            "extended_l2=on,preallocation=metadata",
            &["-b", "base.raw", "-F", "raw"],
            true,
        ),
        ("zstd", "10M", "compression_type=zstd", &[], true),
        ("lazy", "10M", "lazy_refcounts=on", &[], true),
        ("rc1", "10M", "refcount_bits=1", &[], true),
        ("rc4", "10M", "refcount_bits=4", &[], true),
        (
            "rc64",
            "10M",
            "refcount_bits=64,preallocation=metadata",
            &[],
            true,
        ),
        ("datafile", "10M", "data_file={D}", &[], true),
        (
            "dataraw",
            "10M",
            "data_file={D},data_file_raw=on",
            &[],
            true,
        ),
        (
            "datafalloc",
            "10M",
            "data_file={D},preallocation=falloc",
            &[],
            true,
        ),
        ("backing", "", "", &["-b", "base.raw", "-F", "raw"], true),
        (
            "backing512",
            "1M",
            "cluster_size=512,data_file={D}",
            &["-b", "base.raw", "-F", "raw"],
            true,
        ),
        ("big", "10T", "", &[], true),
        // The refcount table grows (twice) while laying out.
        (
            "grow",
            "16M",
            "cluster_size=512,preallocation=metadata",
            &[],
            true,
        ),
        (
            "grow64",
            "16M",
            "cluster_size=512,preallocation=metadata,refcount_bits=64",
            &[],
            true,
        ),
        (
            "grow1k",
            "100M",
            "cluster_size=1k,preallocation=metadata",
            &[],
            true,
        ),
        (
            "bigl1",
            "1G",
            "cluster_size=512,refcount_bits=64",
            &[],
            true,
        ),
        (
            "c2mmeta",
            "4G",
            "cluster_size=2M,preallocation=metadata",
            &[],
            true,
        ),
        (
            "datameta",
            "20M",
            "cluster_size=512,data_file={D},preallocation=metadata",
            &[],
            true,
        ),
    ];
    for (case, size, opts, extra, same) in cases {
        let size = if size.is_empty() { "1M" } else { size };
        let extra: Vec<&str> = extra.to_vec();
        both(&dir, case, size, opts, &extra, *same);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn refusals_use_qemus_words_and_leave_nothing() {
    let dir = tmpdir("refuse");
    let cases = [
        "cluster_size=1000",
        "cluster_size=4M",
        "compat=0.10,lazy_refcounts=on",
        "compat=0.10,refcount_bits=8",
        "refcount_bits=3",
        "refcount_bits=128",
        "extended_l2=on,cluster_size=8k",
        "compat=0.10,extended_l2=on",
        "data_file_raw=on",
        "compat=0.10,data_file=d.raw",
        "compat=0.10,compression_type=zstd",
        "compression_type=lz4",
        "preallocation=foo",
        "compat=1.2",
        "backing_fmt=raw",
    ];
    for opts in cases {
        let q = run(
            &dir,
            "qemu-img",
            &["create", "-q", "-f", "qcow2", "-o", opts, "x.qcow2", "1M"],
        );
        assert!(!q.status.success(), "qemu-img accepted {opts}");
        let qmsg = String::from_utf8_lossy(&q.stderr);
        let qmsg = qmsg.trim().rsplit(": ").next().unwrap().to_string();
        let o = run(
            &dir,
            OURS,
            &["create", "-q", "-f", "qcow2", "-o", opts, "x.qcow2", "1M"],
        );
        assert!(!o.status.success(), "we accepted {opts}");
        let omsg = String::from_utf8_lossy(&o.stderr);
        assert!(omsg.contains(&qmsg), "{opts}: ours '{omsg}', qemu '{qmsg}'");
        assert!(!dir.join("x.qcow2").exists(), "{opts}: a file was left");
        assert!(!dir.join("d.raw").exists(), "{opts}: a data file was left");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn option_help_lists_qemus_options() {
    let dir = tmpdir("help");
    let out = ok(&dir, OURS, &["create", "-f", "qcow2", "-o", "help"]);
    for k in [
        "backing_file",
        "backing_fmt",
        "cluster_size",
        "compat",
        "compression_type",
        "data_file",
        "data_file_raw",
        "extended_l2",
        "lazy_refcounts",
        "preallocation",
        "refcount_bits",
        "size",
    ] {
        assert!(out.contains(&format!("  {k}=")), "{k} missing from: {out}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn formatting_line_is_qemu_imgs() {
    let dir = tmpdir("fmtline");
    ok(
        &dir,
        "qemu-img",
        &["create", "-q", "-f", "raw", "base.raw", "1M"],
    );
    let sets: &[&[&str]] = &[
        &[],
        &["-o", "preallocation=metadata,lazy_refcounts=on,refcount_bits=8,extended_l2=on,compression_type=zstd"],
        &["-o", "data_file=x.raw,data_file_raw=on,cluster_size=2M"],
        &["-o", "compat=0.10,cluster_size=4k"],
        &["-b", "base.raw", "-F", "raw"],
    ];
    for extra in sets {
        let mut out = Vec::new();
        for prog in ["qemu-img", OURS] {
            let _ = std::fs::remove_file(dir.join("y.qcow2"));
            let _ = std::fs::remove_file(dir.join("x.raw"));
            let mut a = vec!["create", "-f", "qcow2"];
            a.extend_from_slice(extra);
            a.push("y.qcow2");
            if !extra.contains(&"-b") {
                a.push("1M");
            }
            out.push(ok(&dir, prog, &a));
        }
        assert_eq!(out[1], out[0], "{extra:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
