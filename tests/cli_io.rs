//! cowblk-io against qemu-io: the same command scripts, the same output
//! (timings aside), the same bytes.

mod cli_support;

use cli_support::*;

/// A script touching every synchronous command, including failures.
const SCRIPT: &[&str] = &[
    "write -P 0xab 0 64k",
    "write -P 0x41 1M 20",
    "read -P 0xab 0 64k",
    "read -P 0xac 0 512",
    "read -v 1M 20",
    "read -P 0xab -s 512 -l 1k 0 4k",
    "writev -P 3 8k 512 1k 2k",
    "readv -P 3 8k 512 1k 2k",
    "write -z 16k 8k",
    "read -P 0 16k 8k",
    "aio_write -P 5 2M 64k",
    "aio_flush",
    "read -q -P 5 2M 64k",
    "discard 3M 64k",
    "write 3M 4k",
    "flush",
    "length",
    "alloc 0 1M",
    "truncate 5M",
    "length",
    "read -P 0 4M 1M",
    "read 0 abc",
    "read -P 300 0 1",
];

#[test]
fn raw_script_matches_qemu_io() {
    let d = tmpdir("io-raw");
    for f in ["q.raw", "c.raw"] {
        ok(&d, "qemu-img", &["create", "-q", "-f", "raw", f, "4M"]);
    }
    let q = run(&d, "qemu-io", &io_args(&["-f", "raw"], SCRIPT, "q.raw"));
    let c = run(&d, COWBLK_IO, &io_args(&["-f", "raw"], SCRIPT, "c.raw"));
    assert_eq!(normalise(&c.stdout), normalise(&q.stdout));
    // Pattern verification and the bad commands fail the run in both.
    assert_eq!(q.code, 1);
    assert_eq!(c.code, q.code);
    assert!(c
        .stdout
        .contains("Pattern verification failed at offset 0, 512 bytes\n"));
    same_bytes(&read(&d, "c.raw"), &read(&d, "q.raw"), "bytes");
    // Wrong argument counts: qemu-io's usage line (ours lists only the
    // options cowblk-io has) or its one-line complaint, and a failed run.
    let bad = ["write -P 1 0", "read 0 1 2", "read 1"];
    let q = run(&d, "qemu-io", &io_args(&["-f", "raw"], &bad, "q.raw"));
    let c = run(&d, COWBLK_IO, &io_args(&["-f", "raw"], &bad, "c.raw"));
    assert_eq!((c.code, q.code), (1, 1));
    let firsts = |s: &str| -> Vec<String> {
        s.lines()
            .map(|l| l.split(' ').next().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(firsts(&c.stdout), firsts(&q.stdout));
    assert_eq!(c.stderr, q.stderr);
    same_bytes(&read(&d, "c.raw"), &read(&d, "q.raw"), "bytes");
}

#[test]
fn map_and_info_match_qemu_io_on_raw() {
    let d = tmpdir("io-map");
    make_base(&d, "b.raw", "4M");
    let cmds = ["map", "info", "length"];
    let q = ok(
        &d,
        "qemu-io",
        &io_args(&["-f", "raw", "-r"], &cmds, "b.raw"),
    );
    let c = ok(
        &d,
        COWBLK_IO,
        &io_args(&["-f", "raw", "-r"], &cmds, "b.raw"),
    );
    assert_eq!(c.stdout, q.stdout);
}

/// The same writes through an add-cow overlay (cowblk-io) and a qcow2
/// overlay (qemu-io) over one raw base: same output, including the
/// allocation map, and the same guest view.
#[test]
fn addcow_script_matches_qemu_io_on_qcow2() {
    let d = tmpdir("io-addcow");
    make_base(&d, "base.raw", "4M");
    make_qcow2(&d, "q.qcow2", "base.raw");
    make_addcow(&d, "c.acow", "c.img", "base.raw");
    let script = [
        "read -P 0xab 0 64k",
        "write -P 7 60k 8k",
        "read -P 0xab 0 60k",
        "read -P 7 60k 8k",
        "read -P 0xab 68k 60k",
        "write -z 2M 64k",
        "read -P 0 2M 64k",
        "writev -P 9 3100k 512 3k",
        "readv -P 0x22 3M 28k",
        "read -P 9 3100k 3584",
        "read -P 0x11 1M 4k",
        "flush",
        "map",
        "alloc 0 4M",
        "read -P 0x11 0 512",
    ];
    let q = run(&d, "qemu-io", &io_args(&[], &script, "q.qcow2"));
    let c = run(&d, COWBLK_IO, &io_args(&[], &script, "c.acow"));
    assert_eq!(normalise(&c.stdout), normalise(&q.stdout));
    assert_eq!((c.code, q.code), (1, 1), "the last read fails verification");
    ok(
        &d,
        COWBLK_IMG,
        &["convert", "-O", "raw", "c.acow", "c.view"],
    );
    same_bytes(
        &read(&d, "c.view"),
        &qemu_view(&d, "q.qcow2", "q.view"),
        "bytes",
    );
}

/// aio requests run on threads; every report comes out once, and the data
/// lands where qemu-io puts it.
#[test]
fn aio_requests_on_threads() {
    let d = tmpdir("io-aio");
    let mut script: Vec<String> = (0..16)
        .map(|i| format!("aio_write -P {} {}k 64k", i + 1, i * 64))
        .collect();
    script.push("aio_flush".into());
    for i in 0..16 {
        script.push(format!("aio_read -P {} {}k 64k", i + 1, i * 64));
    }
    script.push("aio_read -P 0x55 0 4k".into());
    script.push("aio_flush".into());
    let script: Vec<&str> = script.iter().map(String::as_str).collect();
    for f in ["q.raw", "c.raw"] {
        ok(&d, "qemu-img", &["create", "-q", "-f", "raw", f, "4M"]);
    }
    make_base(&d, "base.raw", "4M");
    make_addcow(&d, "c.acow", "c.img", "base.raw");
    let q = run(&d, "qemu-io", &io_args(&["-f", "raw"], &script, "q.raw"));
    let c = run(&d, COWBLK_IO, &io_args(&["-f", "raw"], &script, "c.raw"));
    let a = run(&d, COWBLK_IO, &io_args(&[], &script, "c.acow"));
    assert_eq!(sorted_lines(&c.stdout), sorted_lines(&q.stdout));
    assert_eq!(sorted_lines(&a.stdout), sorted_lines(&q.stdout));
    assert!(q
        .stdout
        .contains("Pattern verification failed at offset 0, 4096 bytes"));
    same_bytes(&read(&d, "c.raw"), &read(&d, "q.raw"), "bytes");
    same_bytes(&read(&d, "c.img"), &read(&d, "q.raw"), "bytes");
}

#[test]
fn errors_are_one_line_with_qemu_exit_codes() {
    let d = tmpdir("io-err");
    make_base(&d, "b.raw", "4M");
    // A missing image.
    let q = run(&d, "qemu-io", &["-c", "read 0 1", "nonexist"]);
    let c = run(&d, COWBLK_IO, &["-c", "read 0 1", "nonexist"]);
    assert_eq!((c.code, q.code), (1, 1));
    assert_eq!(c.stderr.lines().count(), 1, "{}", c.stderr);
    assert!(c.stderr.contains("nonexist"));
    // Writes to a read-only image fail, and change nothing.
    let before = read(&d, "b.raw");
    let c = run(
        &d,
        COWBLK_IO,
        &["-r", "-f", "raw", "-c", "write 0 512", "b.raw"],
    );
    assert_eq!(c.code, 1);
    same_bytes(&read(&d, "b.raw"), &before, "bytes");
    // Out of range and unknown commands.
    let c = run(
        &d,
        COWBLK_IO,
        &["-f", "raw", "-c", "read 4M 1", "-c", "nosuch", "b.raw"],
    );
    assert_eq!(c.code, 1);
    assert!(c.stdout.starts_with("read failed: "), "{}", c.stdout);
    assert_eq!(c.stderr, "command \"nosuch\" not found\n");
    // Out of range and oversized requests print what qemu-io prints.
    for cmd in ["read 4M 1", "read 0 100G", "write 0 3G", "discard 0 4G"] {
        let args = ["-f", "raw", "-c", cmd, "b.raw"];
        let q = run(&d, "qemu-io", &args);
        let c = run(&d, COWBLK_IO, &args);
        assert_eq!((c.code, &c.stdout), (q.code, &q.stdout), "{cmd}");
    }
    // A bad option to the tool itself.
    let c = run(&d, COWBLK_IO, &["--bogus", "b.raw"]);
    assert_eq!(c.code, 1);
    assert!(c.stderr.starts_with("cowblk-io: "));
    // Help.
    let c = ok(&d, COWBLK_IO, &["--help"]);
    assert!(c.stdout.starts_with("Usage: cowblk-io"));
    let c = ok(&d, COWBLK_IO, &["-f", "raw", "-c", "help read", "b.raw"]);
    assert!(c.stdout.starts_with("read "));
}

/// Without -c, commands come from standard input.
#[test]
fn commands_from_stdin() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let d = tmpdir("io-stdin");
    ok(
        &d,
        "qemu-img",
        &["create", "-q", "-f", "raw", "s.raw", "64k"],
    );
    let mut child = Command::new(COWBLK_IO)
        .args(["-f", "raw", "s.raw"])
        .current_dir(&d)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"write -P 0x33 0 4k\nread -P 0x33 0 4k\nquit\nwrite 0 4k\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(s.contains("wrote 4096/4096 bytes at offset 0\n"));
    assert!(s.contains("read 4096/4096 bytes at offset 0\n"));
    assert_eq!(s.matches("wrote").count(), 1, "quit stops the script");
}
