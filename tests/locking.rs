//! Image locking against QEMU 10 (the installed qemu-io/qemu-img), both
//! directions: an image held by one tool (kept open by a qemu-io or
//! cowblk-io reading commands from a pipe) and opened by the other.

mod cli_support;

use cli_support::*;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};

/// A tool holding an image open until dropped.
struct Holder {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Holder {
    /// Starts `prog args... file` reading commands from a pipe, and waits
    /// until it has answered one (so the image is open and locked).
    fn start(dir: &Path, prog: &str, args: &[&str]) -> Holder {
        let mut child = Command::new(prog)
            .args(args)
            .current_dir(dir)
            .env("LC_ALL", "C")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {prog}: {e}"));
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "length").unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            if out.read_line(&mut line).unwrap() == 0 {
                let o = child.wait_with_output().unwrap();
                panic!(
                    "{prog} {args:?} did not open: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
            }
            if line.trim_end().ends_with("iB") {
                break;
            }
        }
        Holder {
            child,
            stdin: Some(stdin),
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        // End of input: the tool closes the image and exits.
        drop(self.stdin.take());
        let st = self.child.wait().unwrap();
        if !std::thread::panicking() {
            assert!(st.success(), "holder exited with {st}");
        }
    }
}

/// stderr with the tool's name taken out, to compare two tools' messages.
fn msg(o: &Out) -> String {
    o.stderr
        .replace("cowblk-io: ", "")
        .replace("qemu-io: ", "")
        .replace("cowblk-img: ", "")
        .replace("qemu-img: ", "")
}

/// Runs one qemu-io command line with both tools and insists on the same
/// exit code and the same error text; returns (cowblk-io, qemu-io).
fn same_as_qemu_io(d: &Path, args: &[&str]) -> (Out, Out) {
    let q = run(d, "qemu-io", args);
    let c = run(d, COWBLK_IO, args);
    assert_eq!(c.code, q.code, "{args:?}: cowblk-io {c:?} qemu-io {q:?}");
    if q.code != 0 {
        assert_eq!(msg(&c), msg(&q), "{args:?}");
    }
    (c, q)
}

const WRITE_LOCK: &str = "Failed to get \"write\" lock\nIs another process using the image";
const SHARED_WRITE: &str = "Failed to get shared \"write\" lock";

#[test]
fn qemu_io_holding_qcow2_keeps_cowblk_out_as_it_keeps_itself_out() {
    let d = tmpdir("lock-qcow2");
    ok(
        &d,
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "q.qcow2", "4M"],
    );
    {
        let _h = Holder::start(&d, "qemu-io", &["-f", "qcow2", "q.qcow2"]);
        // A writer: refused by both, with QEMU's message.
        let (c, _) = same_as_qemu_io(&d, &["-f", "qcow2", "-c", "write 0 512", "q.qcow2"]);
        assert_eq!(c.code, 1);
        assert!(c.stderr.contains(WRITE_LOCK), "{}", c.stderr);
        assert!(c.stderr.contains("can't open device q.qcow2"));
        // A reader that would not share write: refused by both.
        let (c, _) = same_as_qemu_io(&d, &["-r", "-f", "qcow2", "-c", "read 0 512", "q.qcow2"]);
        assert!(c.stderr.contains(SHARED_WRITE), "{}", c.stderr);
        // Force-share readers get in, in both.
        let (c, _) = same_as_qemu_io(
            &d,
            &["-r", "-U", "-f", "qcow2", "-c", "read 0 512", "q.qcow2"],
        );
        assert_eq!(c.code, 0);
        // Force-share on a read-write open: refused by both, same words.
        let (c, _) = same_as_qemu_io(&d, &["-U", "-f", "qcow2", "-c", "read 0 1", "q.qcow2"]);
        assert!(c
            .stderr
            .contains("force-share=on can only be used with read-only images"));
        // qemu-img info needs -U here too.
        let q = run(&d, "qemu-img", &["info", "q.qcow2"]);
        let c = run(&d, COWBLK_IMG, &["info", "q.qcow2"]);
        assert_eq!((c.code, q.code), (1, 1));
        assert_eq!(msg(&c), msg(&q));
        ok(&d, COWBLK_IMG, &["info", "-U", "q.qcow2"]);
    }
    // Holder gone: everything opens again, writers included.
    ok(
        &d,
        COWBLK_IO,
        &["-r", "-f", "qcow2", "-c", "read 0 512", "q.qcow2"],
    );
    ok(
        &d,
        COWBLK_IO,
        &["-f", "qcow2", "-c", "write 0 512", "q.qcow2"],
    );
    ok(&d, "qemu-img", &["check", "q.qcow2"]);
    ok(
        &d,
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 7 0 512", "q.qcow2"],
    );
    ok(&d, "qemu-img", &["check", "q.qcow2"]);
}

#[test]
fn qemu_io_reading_qcow2_keeps_writers_out() {
    let d = tmpdir("lock-qcow2-ro");
    ok(
        &d,
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "q.qcow2", "4M"],
    );
    let _h = Holder::start(&d, "qemu-io", &["-r", "-f", "qcow2", "q.qcow2"]);
    let (c, _) = same_as_qemu_io(&d, &["-f", "qcow2", "-c", "write 0 512", "q.qcow2"]);
    assert!(c.stderr.contains(WRITE_LOCK), "{}", c.stderr);
    // Readers share with readers.
    let (c, _) = same_as_qemu_io(&d, &["-r", "-f", "qcow2", "-c", "read 0 512", "q.qcow2"]);
    assert_eq!(c.code, 0);
}

#[test]
fn qemu_io_holding_raw_keeps_cowblk_writers_out_not_readers() {
    let d = tmpdir("lock-raw");
    ok(
        &d,
        "qemu-img",
        &["create", "-q", "-f", "raw", "r.raw", "4M"],
    );
    let _h = Holder::start(&d, "qemu-io", &["-f", "raw", "r.raw"]);
    // qemu-io shares write on raw, cowblk does not: it refuses to write
    // behind another writer's back.
    let c = run(&d, COWBLK_IO, &["-f", "raw", "-c", "write 0 512", "r.raw"]);
    assert_eq!(c.code, 1);
    assert!(c.stderr.contains(SHARED_WRITE), "{}", c.stderr);
    let (c, _) = same_as_qemu_io(&d, &["-r", "-f", "raw", "-c", "read 0 512", "r.raw"]);
    assert_eq!(c.code, 0);
}

#[test]
fn cowblk_writing_addcow_keeps_qemu_and_cowblk_writers_out() {
    let d = tmpdir("lock-addcow");
    ok(
        &d,
        "qemu-img",
        &["create", "-q", "-f", "raw", "base.raw", "4M"],
    );
    ok(
        &d,
        COWBLK_IMG,
        &[
            "create",
            "-q",
            "-f",
            "add-cow",
            "-o",
            "backing_file=base.raw,backing_fmt=raw,image_file=top.img",
            "top.add-cow",
            "4M",
        ],
    );
    {
        let _h = Holder::start(&d, COWBLK_IO, &["-f", "add-cow", "top.add-cow"]);
        // QEMU 10 (which knows no add-cow: raw) cannot write either file.
        for f in ["top.add-cow", "top.img"] {
            let q = run(&d, "qemu-io", &["-f", "raw", "-c", "write 0 512", f]);
            assert_eq!(q.code, 1, "{f}: {q:?}");
            assert!(q.stderr.contains(WRITE_LOCK), "{f}: {}", q.stderr);
            // QEMU's raw readers share write, so they get in.
            ok(&d, "qemu-io", &["-r", "-f", "raw", "-c", "read 0 512", f]);
        }
        // A second cowblk writer is refused.
        let c = run(
            &d,
            COWBLK_IO,
            &["-f", "add-cow", "-c", "write 0 512", "top.add-cow"],
        );
        assert_eq!(c.code, 1);
        assert!(
            c.stderr
                .starts_with("cowblk-io: can't open device top.add-cow: ")
                && c.stderr.contains(WRITE_LOCK),
            "{}",
            c.stderr
        );
        // So is one writing the image file as raw.
        let c = run(
            &d,
            COWBLK_IO,
            &["-f", "raw", "-c", "write 0 512", "top.img"],
        );
        assert!(c.code == 1 && c.stderr.contains(WRITE_LOCK), "{}", c.stderr);
        // Readers need -U; resize is refused like a write.
        let c = run(&d, COWBLK_IO, &["-r", "-c", "read 0 512", "top.add-cow"]);
        assert!(
            c.code == 1 && c.stderr.contains(SHARED_WRITE),
            "{}",
            c.stderr
        );
        ok(
            &d,
            COWBLK_IO,
            &["-r", "-U", "-c", "read 0 512", "top.add-cow"],
        );
        let c = run(&d, COWBLK_IMG, &["resize", "top.add-cow", "8M"]);
        assert!(c.code == 1 && c.stderr.contains(WRITE_LOCK), "{}", c.stderr);
    }
    ok(
        &d,
        "qemu-io",
        &["-f", "raw", "-c", "write 0 512", "top.img"],
    );
    ok(&d, COWBLK_IO, &["-c", "write 0 512", "top.add-cow"]);
}

#[test]
fn cowblk_reading_qcow2_is_seen_by_qemu_as_a_qemu_reader_would_be() {
    let d = tmpdir("lock-cowblk-qcow2");
    for (img, data) in [
        ("q.qcow2", "data_file=q.data"),
        ("p.qcow2", "data_file=p.data"),
    ] {
        ok(
            &d,
            "qemu-img",
            &["create", "-q", "-f", "qcow2", "-o", data, img, "4M"],
        );
    }
    {
        // This build's qcow2 driver reads only: cowblk holds q read-only,
        // qemu-io holds its twin p the same way.
        let _h = Holder::start(&d, COWBLK_IO, &["-r", "-f", "qcow2", "q.qcow2"]);
        let _p = Holder::start(&d, "qemu-io", &["-r", "-f", "qcow2", "p.qcow2"]);
        // Each QEMU open of q fails or succeeds as it does on p, with the
        // same message; the data files too.
        let cases: [(&[&str], &str); 5] = [
            (&["-f", "qcow2", "-c", "write 0 1"], "qcow2"),
            (&["-r", "-f", "qcow2", "-c", "read 0 1"], "qcow2"),
            (&["-r", "-U", "-f", "qcow2", "-c", "read 0 1"], "qcow2"),
            (&["-f", "raw", "-c", "write 0 1"], "data"),
            (&["-r", "-f", "raw", "-c", "read 0 1"], "data"),
        ];
        let mut refused = 0;
        for (args, ext) in cases {
            let on = |stem: &str| {
                let f = format!("{stem}.{ext}");
                let mut a = args.to_vec();
                a.push(&f);
                run(&d, "qemu-io", &a)
            };
            let (mine, theirs) = (on("q"), on("p"));
            assert_eq!(mine.code, theirs.code, "{args:?}: {mine:?} {theirs:?}");
            assert_eq!(msg(&mine).replace("q.", "p."), msg(&theirs), "{args:?}");
            refused += mine.code;
        }
        // The writer of the image was refused (the rest share with readers).
        assert_eq!(refused, 1);
    }
    ok(&d, "qemu-img", &["check", "q.qcow2"]);
}

#[test]
fn an_image_in_use_can_get_an_overlay_but_not_be_read_through_it() {
    let d = tmpdir("lock-overlay");
    ok(
        &d,
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "b.qcow2", "4M"],
    );
    let _h = Holder::start(&d, "qemu-io", &["-f", "qcow2", "b.qcow2"]);
    // Creating reads only the backing file's size, sharing it (qemu-img
    // create does the same).
    let q = [
        "create", "-q", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "q.qcow2",
    ];
    ok(&d, "qemu-img", &q);
    let c = [
        "create",
        "-q",
        "-f",
        "add-cow",
        "-o",
        "image_file=c.img",
        "-b",
        "b.qcow2",
        "-F",
        "qcow2",
        "c.add-cow",
    ];
    ok(&d, COWBLK_IMG, &c);
    // Opening the overlay opens the backing file unshared: refused by both.
    let q = run(&d, "qemu-io", &["-r", "-c", "read 0 1", "q.qcow2"]);
    let c = run(&d, COWBLK_IO, &["-r", "-c", "read 0 1", "c.add-cow"]);
    assert_eq!((q.code, c.code), (1, 1));
    for o in [&q, &c] {
        assert!(o.stderr.contains(SHARED_WRITE), "{}", o.stderr);
    }
    // -U reaches the backing file too, as in QEMU.
    ok(&d, "qemu-io", &["-r", "-U", "-c", "read 0 1", "q.qcow2"]);
    ok(&d, COWBLK_IO, &["-r", "-U", "-c", "read 0 1", "c.add-cow"]);
}

#[test]
fn commit_refused_by_a_base_in_use_leaves_the_overlay_reading_it() {
    use cowblk::{Image, OpenOptions};
    let d = tmpdir("lock-commit");
    ok(
        &d,
        "qemu-img",
        &["create", "-q", "-f", "raw", "base.raw", "1M"],
    );
    ok(
        &d,
        "qemu-io",
        &["-f", "raw", "-c", "write -P 1 0 1M", "base.raw"],
    );
    let c = [
        "create",
        "-q",
        "-f",
        "add-cow",
        "-o",
        "image_file=top.img",
        "-b",
        "base.raw",
        "-F",
        "raw",
        "top.add-cow",
    ];
    ok(&d, COWBLK_IMG, &c);
    let top = Image::open(d.join("top.add-cow"), &OpenOptions::default()).unwrap();
    top.write(&[9u8; 4096], 0).unwrap();
    let e = {
        let _h = Holder::start(&d, "qemu-io", &["-f", "raw", "base.raw"]);
        cowblk::ops::commit(&top, false, &mut |_, _| {}).unwrap_err()
    };
    assert!(e.to_string().contains(SHARED_WRITE), "{e}");
    // The overlay still reads through to the base, and commits once the
    // base is free.
    let mut buf = vec![0u8; 8192];
    top.read(&mut buf, 0).unwrap();
    assert!(buf[..4096].iter().all(|&b| b == 9) && buf[4096..].iter().all(|&b| b == 1));
    cowblk::ops::commit(&top, false, &mut |_, _| {}).unwrap();
    drop(top);
    let o = ok(
        &d,
        "qemu-io",
        &["-f", "raw", "-c", "read -P 9 0 4k", "base.raw"],
    );
    assert!(o.stdout.contains("read 4096/4096"));
}
