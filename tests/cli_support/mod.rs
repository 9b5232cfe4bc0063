#![allow(dead_code)]
//! Running cowblk-img/cowblk-io and qemu-img/qemu-io side by side.

use std::path::{Path, PathBuf};
use std::process::Command;

pub const COWBLK_IMG: &str = env!("CARGO_BIN_EXE_cowblk-img");
pub const COWBLK_IO: &str = env!("CARGO_BIN_EXE_cowblk-io");

/// What a command did.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `prog args...` in `dir`. QEMU's tools must be installed: a missing
/// one fails the test rather than skipping it.
/// `args` with every "F" replaced by `file` (one script, two tools).
pub fn with_file<'a>(args: &[&'a str], file: &'a str) -> Vec<&'a str> {
    args.iter()
        .map(|a| if *a == "F" { file } else { a })
        .collect()
}

pub fn run(dir: &Path, prog: &str, args: &[&str]) -> Out {
    let o = Command::new(prog)
        .args(args)
        .current_dir(dir)
        .env("LC_ALL", "C")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {prog} (is it installed?): {e}"));
    let out = Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    };
    // Whatever happens, our tools never show a Rust panic or backtrace.
    if prog == COWBLK_IMG || prog == COWBLK_IO {
        assert!(
            !out.stderr.contains("panicked") && !out.stderr.contains("RUST_BACKTRACE"),
            "{prog} {args:?} panicked: {}",
            out.stderr
        );
    }
    out
}

/// Runs and insists on success.
pub fn ok(dir: &Path, prog: &str, args: &[&str]) -> Out {
    let o = run(dir, prog, args);
    assert_eq!(o.code, 0, "{prog} {args:?} failed: {o:?}");
    o
}

/// `-c CMD` for each command, then the other arguments.
pub fn io_args<'a>(pre: &[&'a str], cmds: &[&'a str], file: &'a str) -> Vec<&'a str> {
    let mut v: Vec<&str> = pre.to_vec();
    for c in cmds {
        v.push("-c");
        v.push(c);
    }
    v.push(file);
    v
}

/// qemu-io output with the timing part of each report line replaced:
/// "64 KiB, 1 ops; 00.00 sec (48.320 MiB/sec and 773.1166 ops/sec)"
/// becomes "64 KiB, 1 ops; <timing>".
pub fn normalise(s: &str) -> String {
    s.lines()
        .map(|l| match l.find(" ops; ") {
            Some(i) if l.ends_with("ops/sec)") => format!("{}; <timing>", &l[..i + 4]),
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every line, normalised and sorted (for output of concurrent requests).
pub fn sorted_lines(s: &str) -> Vec<String> {
    let mut v: Vec<String> = normalise(s).lines().map(str::to_owned).collect();
    v.sort();
    v
}

/// A fresh directory.
pub fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cowblk-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn read(dir: &Path, f: &str) -> Vec<u8> {
    std::fs::read(dir.join(f)).unwrap_or_else(|e| panic!("read {f}: {e}"))
}

/// Makes a raw base image with data in a few places, using qemu-io.
pub fn make_base(dir: &Path, name: &str, size: &str) {
    ok(dir, "qemu-img", &["create", "-q", "-f", "raw", name, size]);
    ok(
        dir,
        "qemu-io",
        &io_args(
            &["-f", "raw"],
            &[
                "write -P 0xab 0 64k",
                "write -P 0x11 1M 4k",
                "write -P 0x22 3M 1M",
            ],
            name,
        ),
    );
}

/// An add-cow overlay over `base` (raw) with a 64 KiB cluster, so that its
/// allocation matches a default qcow2 overlay's.
pub fn make_addcow(dir: &Path, name: &str, image_file: &str, base: &str) {
    let o = format!("image_file={image_file},cluster_size=64k");
    ok(
        dir,
        COWBLK_IMG,
        &[
            "create", "-q", "-f", "add-cow", "-b", base, "-F", "raw", "-o", &o, name,
        ],
    );
}

/// A qcow2 overlay over `base` (raw), made by qemu-img.
pub fn make_qcow2(dir: &Path, name: &str, base: &str) {
    ok(
        dir,
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", name],
    );
}

/// The guest view of `file` as a raw file, made by qemu-img convert.
pub fn qemu_view(dir: &Path, file: &str, out: &str) -> Vec<u8> {
    ok(dir, "qemu-img", &["convert", "-O", "raw", file, out]);
    read(dir, out)
}

/// Asserts two byte strings are equal, naming the first difference
/// instead of printing megabytes.
#[track_caller]
pub fn same_bytes(a: &[u8], b: &[u8], what: &str) {
    if a == b {
        return;
    }
    let first = a.iter().zip(b).position(|(x, y)| x != y);
    panic!(
        "{what}: contents differ (lengths {} and {}, first difference at {:?})",
        a.len(),
        b.len(),
        first
    );
}
