//! cowblk-img against qemu-img: the same commands on raw images give the
//! same output; on add-cow images the same results as qemu-img on qcow2.

mod cli_support;

use cli_support::*;
use serde_json::Value;
use std::path::Path;

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("bad JSON ({e}): {s}"))
}

/// Writes the same data into an add-cow overlay (with cowblk-io) and a
/// qcow2 overlay (with qemu-io), both over one raw base.
fn twin_overlays(d: &Path) {
    make_base(d, "base.raw", "4M");
    make_qcow2(d, "q.qcow2", "base.raw");
    make_addcow(d, "c.acow", "c.img", "base.raw");
    let w = [
        "write -P 7 60k 8k",
        "write -z 2M 64k",
        "write -P 9 3100k 4k",
    ];
    ok(d, "qemu-io", &io_args(&[], &w, "q.qcow2"));
    ok(d, COWBLK_IO, &io_args(&[], &w, "c.acow"));
}

#[test]
fn create_info_map_on_raw_match_qemu_img() {
    let d = tmpdir("img-raw");
    let q = ok(&d, "qemu-img", &["create", "-f", "raw", "q.raw", "4M"]);
    let c = ok(&d, COWBLK_IMG, &["create", "-f", "raw", "c.raw", "4M"]);
    assert_eq!(c.stdout.replace("c.raw", "q.raw"), q.stdout);
    same_bytes(&read(&d, "c.raw"), &read(&d, "q.raw"), "bytes");
    make_base(&d, "b.raw", "4M");
    for args in [
        vec!["info", "b.raw"],
        vec!["info", "--output=json", "b.raw"],
        vec!["info", "--backing-chain", "--output=json", "b.raw"],
        vec!["map", "b.raw"],
        vec!["map", "--output=json", "b.raw"],
        vec!["map", "--output", "json", "-f", "raw", "b.raw"],
        vec!["map", "--output=json", "-s", "32k", "-l", "1M", "b.raw"],
        vec!["map", "--start-offset=1M", "--max-length", "2M", "b.raw"],
    ] {
        let q = ok(&d, "qemu-img", &args);
        let c = ok(&d, COWBLK_IMG, &args);
        assert_eq!(c.stdout, q.stdout, "{args:?}");
    }
    // -o help lists the format's options.
    let c = ok(&d, COWBLK_IMG, &["create", "-f", "add-cow", "-o", "help"]);
    for o in [
        "size=<size>",
        "backing_file=<str>",
        "image_file=<str>",
        "cluster_size=<size>",
    ] {
        assert!(c.stdout.contains(o), "{}", c.stdout);
    }
}

#[test]
fn info_and_map_on_addcow() {
    let d = tmpdir("img-addcow-map");
    twin_overlays(&d);
    let c = json(&ok(&d, COWBLK_IMG, &["info", "--output=json", "c.acow"]).stdout);
    let q = json(&ok(&d, "qemu-img", &["info", "--output=json", "q.qcow2"]).stdout);
    for k in [
        "virtual-size",
        "backing-filename",
        "full-backing-filename",
        "backing-filename-format",
        "cluster-size",
        "dirty-flag",
    ] {
        assert_eq!(c[k], q[k], "{k}");
    }
    assert_eq!(c["format"], "add-cow");
    assert_eq!(c["filename"], "c.acow");
    let chain = json(
        &ok(
            &d,
            COWBLK_IMG,
            &["info", "--backing-chain", "--output=json", "c.acow"],
        )
        .stdout,
    );
    assert_eq!(chain.as_array().unwrap().len(), 2);
    assert_eq!(chain[1]["filename"], "base.raw");
    // The map: same runs, depths and states as the qcow2 twin's; host
    // offsets agree where they point into the shared raw base.
    let c = json(&ok(&d, COWBLK_IMG, &["map", "--output=json", "c.acow"]).stdout);
    let q = json(&ok(&d, "qemu-img", &["map", "--output=json", "q.qcow2"]).stdout);
    let (c, q) = (c.as_array().unwrap(), q.as_array().unwrap());
    assert_eq!(c.len(), q.len(), "{c:?}\n{q:?}");
    for (a, b) in c.iter().zip(q) {
        for k in ["start", "length", "depth", "present", "compressed"] {
            assert_eq!(a[k], b[k], "{k} in {a} vs {b}");
        }
        if a["start"] == 2 << 20 {
            // The zeroed cluster: qcow2 has a zero flag; add-cow owns the
            // cluster and its image file reads zeros there (a hole).
            assert_eq!(
                (&b["zero"], &b["data"]),
                (&Value::Bool(true), &Value::Bool(false))
            );
            assert_eq!(a["data"], true);
        } else {
            assert_eq!(
                (&a["zero"], &a["data"]),
                (&b["zero"], &b["data"]),
                "{a} vs {b}"
            );
        }
        if b["depth"] == 1 {
            assert_eq!(a["offset"], b["offset"]);
        }
        // add-cow's image file mirrors the guest.
        if a["depth"] == 0 && a["data"] == true {
            assert_eq!(a["offset"], a["start"]);
        }
    }
    let h = ok(&d, COWBLK_IMG, &["map", "c.acow"]).stdout;
    // The partly written first two clusters were copied whole into c.img;
    // the zeroed cluster is owned too (a hole in c.img).
    assert_eq!(
        h,
        "Offset          Length          Mapped to       File\n\
         0               0x20000         0               c.img\n\
         0x100000        0x1000          0x100000        base.raw\n\
         0x200000        0x10000         0x200000        c.img\n\
         0x300000        0x10000         0x300000        c.img\n\
         0x310000        0xf0000         0x310000        base.raw\n"
    );
}

#[test]
fn check_exit_codes() {
    let d = tmpdir("img-check");
    twin_overlays(&d);
    // raw has no checks: 63, as qemu-img.
    let q = run(&d, "qemu-img", &["check", "base.raw"]);
    let c = run(&d, COWBLK_IMG, &["check", "base.raw"]);
    assert_eq!((c.code, q.code), (63, 63));
    assert_eq!(
        c.stderr.replace("cowblk-img", "qemu-img"),
        q.stderr,
        "same message"
    );
    let c = ok(&d, COWBLK_IMG, &["check", "c.acow"]);
    assert!(c.stdout.starts_with("No errors were found on the image.\n"));
    let j = json(&ok(&d, COWBLK_IMG, &["check", "--output=json", "c.acow"]).stdout);
    let q = json(&ok(&d, "qemu-img", &["check", "--output=json", "q.qcow2"]).stdout);
    for k in ["check-errors", "total-clusters"] {
        assert_eq!(j[k], q[k], "{k}");
    }
    // add-cow counts its zeroed cluster (a set bit over a hole); qcow2's
    // zero cluster has no host cluster.
    assert_eq!(j["allocated-clusters"], 4);
    assert_eq!(q["allocated-clusters"], 3);
    // Extra bytes after the bitmap: a leak (3); -r leaks repairs it.
    let acow = d.join("c.acow");
    let len = std::fs::metadata(&acow).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&acow).unwrap();
    f.set_len(len + 4096).unwrap();
    assert_eq!(run(&d, COWBLK_IMG, &["check", "c.acow"]).code, 3);
    assert_eq!(
        run(&d, COWBLK_IMG, &["check", "-r", "leaks", "c.acow"]).code,
        0
    );
    assert_eq!(std::fs::metadata(&acow).unwrap().len(), len);
    // An image file shorter than the disk: a corruption (2); -r leaks
    // leaves it, -r all repairs it.
    let img = std::fs::OpenOptions::new()
        .write(true)
        .open(d.join("c.img"))
        .unwrap();
    img.set_len(1 << 20).unwrap();
    let c = run(&d, COWBLK_IMG, &["check", "c.acow"]);
    assert_eq!(c.code, 2, "{c:?}");
    assert!(c.stdout.contains("1 errors were found on the image."));
    assert_eq!(
        run(&d, COWBLK_IMG, &["check", "-r", "leaks", "c.acow"]).code,
        2
    );
    assert_eq!(
        run(&d, COWBLK_IMG, &["check", "-r", "all", "c.acow"]).code,
        0
    );
    assert_eq!(run(&d, COWBLK_IMG, &["check", "c.acow"]).code, 0);
    // A missing file: 1.
    assert_eq!(run(&d, COWBLK_IMG, &["check", "nonexist"]).code, 1);
}

#[test]
fn convert_between_formats() {
    let d = tmpdir("img-convert");
    twin_overlays(&d);
    // add-cow -> raw equals qemu's view of the qcow2 twin.
    ok(
        &d,
        COWBLK_IMG,
        &["convert", "-O", "raw", "c.acow", "c.view"],
    );
    let want = qemu_view(&d, "q.qcow2", "q.view");
    same_bytes(&read(&d, "c.view"), &want, "bytes");
    // The converted raw file is sparse where the guest reads zeros.
    assert!(has_hole(&d, "c.view"), "c.view has no hole");
    // raw -> add-cow (no backing) and back; qemu-img agrees they match.
    // -p prints qemu-img's progress lines on stdout, to a pipe too.
    let c = ok(
        &d,
        COWBLK_IMG,
        &[
            "convert",
            "-p",
            "-f",
            "raw",
            "-O",
            "add-cow",
            "-o",
            "image_file=n.img",
            "q.view",
            "n.acow",
        ],
    );
    assert!(
        c.stdout.starts_with("    (0.00/100%)\r")
            && c.stdout
                .ends_with("    (100.00/100%)\r    (100.00/100%)\r\n"),
        "{:?}",
        c.stdout
    );
    assert_eq!(c.stderr, "");
    ok(&d, "qemu-img", &["compare", "-f", "raw", "q.view", "n.img"]);
    ok(&d, COWBLK_IMG, &["compare", "n.acow", "q.view"]);
    // -n writes into an existing image, zeroing what it must.
    ok(
        &d,
        "qemu-img",
        &["create", "-q", "-f", "raw", "junk.raw", "4M"],
    );
    ok(
        &d,
        "qemu-io",
        &io_args(&["-f", "raw"], &["write -P 0x66 0 4M"], "junk.raw"),
    );
    ok(
        &d,
        COWBLK_IMG,
        &["convert", "-n", "-O", "raw", "c.acow", "junk.raw"],
    );
    same_bytes(&read(&d, "junk.raw"), &want, "bytes");
    // No snapshots in add-cow: asking for one is a clear error.
    let c = run(
        &d,
        COWBLK_IMG,
        &[
            "convert",
            "-l",
            "snapshot.name=x",
            "-O",
            "raw",
            "c.acow",
            "s.raw",
        ],
    );
    assert_eq!(c.code, 1);
    assert_eq!(c.stderr.lines().count(), 1, "{}", c.stderr);
    assert!(!d.join("s.raw").exists());
    let c = ok(&d, COWBLK_IMG, &["snapshot", "-l", "c.acow"]);
    assert_eq!(c.stdout, "");
}

#[test]
fn compare_matches_qemu_img() {
    let d = tmpdir("img-compare");
    make_base(&d, "a.raw", "4M");
    std::fs::copy(d.join("a.raw"), d.join("b.raw")).unwrap();
    ok(
        &d,
        "qemu-io",
        &io_args(&["-f", "raw"], &["write -P 1 1537k 100"], "b.raw"),
    );
    ok(
        &d,
        "qemu-img",
        &["create", "-q", "-f", "raw", "big.raw", "5M"],
    );
    ok(
        &d,
        "qemu-img",
        &["convert", "-O", "raw", "a.raw", "-n", "big.raw"],
    );
    ok(
        &d,
        "qemu-img",
        &["create", "-q", "-f", "raw", "big2.raw", "5M"],
    );
    ok(
        &d,
        "qemu-img",
        &["convert", "-O", "raw", "a.raw", "-n", "big2.raw"],
    );
    ok(
        &d,
        "qemu-io",
        &io_args(&["-f", "raw"], &["write -P 3 4609k 1"], "big2.raw"),
    );
    for args in [
        vec!["compare", "a.raw", "a.raw"],
        vec!["compare", "a.raw", "b.raw"],
        vec!["compare", "-f", "raw", "-F", "raw", "b.raw", "a.raw"],
        vec!["compare", "a.raw", "big.raw"],
        vec!["compare", "-s", "a.raw", "big.raw"],
        vec!["compare", "a.raw", "big2.raw"],
        vec!["compare", "-q", "a.raw", "b.raw"],
    ] {
        let q = run(&d, "qemu-img", &args);
        let c = run(&d, COWBLK_IMG, &args);
        assert_eq!((c.code, &c.stdout), (q.code, &q.stdout), "{args:?}");
    }
    // Errors are exit code 2.
    let q = run(&d, "qemu-img", &["compare", "a.raw", "nonexist"]);
    let c = run(&d, COWBLK_IMG, &["compare", "a.raw", "nonexist"]);
    assert_eq!((c.code, q.code), (2, 2));
    // An add-cow overlay compares equal to its qcow2 twin's view.
    twin_overlays(&d);
    qemu_view(&d, "q.qcow2", "q.view");
    let c = ok(&d, COWBLK_IMG, &["compare", "c.acow", "q.view"]);
    assert_eq!(c.stdout, "Images are identical.\n");
    let c = run(&d, COWBLK_IMG, &["compare", "c.acow", "base.raw"]);
    assert_eq!(c.stdout, "Content mismatch at offset 61440!\n");
    assert_eq!(c.code, 1);
}

#[test]
fn resize_matches_qemu_img() {
    let d = tmpdir("img-resize");
    for f in ["q.raw", "c.raw"] {
        make_base(&d, f, "4M");
    }
    for (args, code) in [
        (vec!["resize", "-f", "raw", "F", "+1M"], 0),
        (vec!["resize", "F", "6M"], 0),
        (vec!["resize", "-f", "raw", "F", "-1M"], 1),
        (vec!["resize", "-f", "raw", "--shrink", "F", "-1M"], 0),
        (vec!["resize", "-q", "--shrink", "F", "3584k"], 0),
        (vec!["resize", "F", "12Q"], 1),
    ] {
        let (qa, ca) = (with_file(&args, "q.raw"), with_file(&args, "c.raw"));
        let q = run(&d, "qemu-img", &qa);
        let c = run(&d, COWBLK_IMG, &ca);
        assert_eq!((c.code, &c.stdout), (q.code, &q.stdout), "{args:?}");
        assert_eq!(c.code, code, "{args:?}: {c:?}");
        same_bytes(&read(&d, "c.raw"), &read(&d, "q.raw"), &format!("{args:?}"));
    }
    // add-cow over a shorter backing file: grown space reads zeros, in
    // cowblk-img as in qemu-img with qcow2.
    twin_overlays(&d);
    ok(&d, "qemu-img", &["resize", "q.qcow2", "8M"]);
    ok(&d, COWBLK_IMG, &["resize", "c.acow", "8M"]);
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
    ok(&d, COWBLK_IMG, &["resize", "--shrink", "c.acow", "-5M"]);
    let i = json(&ok(&d, COWBLK_IMG, &["info", "--output=json", "c.acow"]).stdout);
    assert_eq!(i["virtual-size"], 3 << 20);
}

#[test]
fn commit_matches_qemu_img() {
    let d = tmpdir("img-commit");
    twin_overlays(&d);
    std::fs::copy(d.join("base.raw"), d.join("base2.raw")).unwrap();
    // The add-cow twin is rebased (unsafely: same contents) on its own base.
    ok(
        &d,
        COWBLK_IMG,
        &["rebase", "-u", "-b", "base2.raw", "-F", "raw", "c.acow"],
    );
    let view = qemu_view(&d, "q.qcow2", "q.view");
    let q = ok(&d, "qemu-img", &["commit", "q.qcow2"]);
    let c = ok(&d, COWBLK_IMG, &["commit", "-p", "c.acow"]);
    // The progress line (qemu-img's form), then what qemu-img prints.
    let (progress, said) = c
        .stdout
        .rsplit_once('\n')
        .map(|(p, _)| p.rsplit_once('\n').unwrap_or(("", p)))
        .unwrap();
    assert!(
        progress.starts_with("    (0.00/100%)\r") && progress.ends_with("(100.00/100%)\r"),
        "{:?}",
        c.stdout
    );
    assert_eq!(format!("{said}\n"), q.stdout);
    assert_eq!(q.stdout, "Image committed.\n");
    same_bytes(&read(&d, "base2.raw"), &read(&d, "base.raw"), "bytes");
    same_bytes(&read(&d, "base2.raw"), &view, "bytes");
    // The overlay is empty again and still reads the same.
    let m = json(&ok(&d, COWBLK_IMG, &["map", "--output=json", "c.acow"]).stdout);
    assert!(m.as_array().unwrap().iter().all(|e| e["depth"] != 0), "{m}");
    ok(
        &d,
        COWBLK_IMG,
        &["convert", "-O", "raw", "c.acow", "c.view"],
    );
    same_bytes(&read(&d, "c.view"), &view, "bytes");
    // Nothing to commit into: an error, as in qemu-img.
    assert_eq!(
        run(&d, "qemu-img", &["commit", "-f", "raw", "base.raw"]).code,
        1
    );
    assert_eq!(
        run(&d, COWBLK_IMG, &["commit", "-f", "raw", "base.raw"]).code,
        1
    );
}

#[test]
fn rebase_detach_leaves_a_standalone_raw_file() {
    let d = tmpdir("img-rebase");
    twin_overlays(&d);
    ok(
        &d,
        COWBLK_IMG,
        &["convert", "-O", "raw", "c.acow", "c.before"],
    );
    let before = read(&d, "c.before");
    let c = ok(&d, COWBLK_IMG, &["rebase", "-p", "-b", "", "c.acow"]);
    assert!(
        c.stdout.starts_with("    (0.00/100%)\r") && c.stdout.ends_with("(100.00/100%)\r\n"),
        "{:?}",
        c.stdout
    );
    // The raw image file alone is now the disk.
    same_bytes(&read(&d, "c.img"), &before, "bytes");
    let i = json(&ok(&d, COWBLK_IMG, &["info", "--output=json", "c.acow"]).stdout);
    assert!(i.get("backing-filename").is_none(), "{i}");
    let m = json(&ok(&d, COWBLK_IMG, &["map", "--output=json", "c.acow"]).stdout);
    assert!(m
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["depth"] == 0 && e["present"] == true));
    // Zeros became holes, not written zeros: the overlay's own zero
    // cluster and the base's unwritten space.
    assert!(has_hole(&d, "c.img"), "c.img has no hole");
    // qemu-img's own rebase of the qcow2 twin gives the same view.
    ok(&d, "qemu-img", &["rebase", "-b", "", "q.qcow2"]);
    ok(
        &d,
        "qemu-img",
        &["compare", "-f", "raw", "c.img", "q.qcow2"],
    );
    // -f names the first image only: the add-cow file is still probed.
    ok(&d, COWBLK_IMG, &["compare", "-f", "raw", "c.img", "c.acow"]);
    // Deleting the old base changes nothing.
    std::fs::remove_file(d.join("base.raw")).unwrap();
    ok(&d, COWBLK_IMG, &["compare", "c.acow", "c.before"]);
}

#[test]
fn rebase_onto_another_backing_file_matches_qemu_img() {
    let d = tmpdir("img-rebase2");
    twin_overlays(&d);
    ok(
        &d,
        "qemu-img",
        &["create", "-q", "-f", "raw", "new.raw", "4M"],
    );
    ok(
        &d,
        "qemu-io",
        &io_args(
            &["-f", "raw"],
            &["write -P 0xab 0 32k", "write -P 0x55 2M 2M"],
            "new.raw",
        ),
    );
    let view = qemu_view(&d, "q.qcow2", "q.view");
    ok(
        &d,
        "qemu-img",
        &["rebase", "-b", "new.raw", "-F", "raw", "q.qcow2"],
    );
    ok(
        &d,
        COWBLK_IMG,
        &["rebase", "-b", "new.raw", "-F", "raw", "c.acow"],
    );
    same_bytes(&qemu_view(&d, "q.qcow2", "q.after"), &view, "bytes");
    ok(
        &d,
        COWBLK_IMG,
        &["convert", "-O", "raw", "c.acow", "c.after"],
    );
    same_bytes(&read(&d, "c.after"), &view, "bytes");
    let i = json(&ok(&d, COWBLK_IMG, &["info", "--output=json", "c.acow"]).stdout);
    assert_eq!(i["backing-filename"], "new.raw");
    assert_eq!(i["backing-filename-format"], "raw");
    // -u only rewrites the name: the view now shows the new base's bytes.
    ok(
        &d,
        "qemu-img",
        &["create", "-q", "-f", "raw", "other.raw", "4M"],
    );
    ok(
        &d,
        "qemu-io",
        &io_args(&["-f", "raw"], &["write -P 0x77 0 4M"], "other.raw"),
    );
    ok(
        &d,
        COWBLK_IMG,
        &["rebase", "-u", "-b", "other.raw", "-F", "raw", "c.acow"],
    );
    ok(&d, COWBLK_IMG, &["convert", "-O", "raw", "c.acow", "c.u"]);
    let u = read(&d, "c.u");
    assert!(
        u[512 << 10..1 << 20].iter().all(|&b| b == 0x77),
        "unallocated: new base"
    );
    assert!(
        u[64 << 10..68 << 10].iter().all(|&b| b == 7),
        "own data kept"
    );
    // A missing new backing file is refused before anything changes.
    let c = run(
        &d,
        COWBLK_IMG,
        &["rebase", "-b", "nonexist.raw", "-F", "raw", "c.acow"],
    );
    assert_eq!(c.code, 1);
    let i = json(&ok(&d, COWBLK_IMG, &["info", "--output=json", "c.acow"]).stdout);
    assert_eq!(i["backing-filename"], "other.raw");
}

#[test]
fn bench_matches_qemu_img() {
    let d = tmpdir("img-bench");
    for f in ["q.raw", "c.raw"] {
        ok(&d, "qemu-img", &["create", "-q", "-f", "raw", f, "1M"]);
    }
    for args in [
        vec!["bench", "-f", "raw", "-c", "300", "-s", "4k", "F"],
        vec![
            "bench",
            "-f",
            "raw",
            "-w",
            "-c",
            "300",
            "-d",
            "4",
            "-s",
            "4k",
            "-S",
            "12k",
            "-o",
            "8k",
            "--pattern=171",
            "F",
        ],
        vec![
            "bench",
            "-f",
            "raw",
            "-w",
            "-c",
            "100",
            "-d",
            "4",
            "-s",
            "64k",
            "--flush-interval=10",
            "F",
        ],
    ] {
        let (qa, ca) = (with_file(&args, "q.raw"), with_file(&args, "c.raw"));
        let q = ok(&d, "qemu-img", &qa);
        let c = ok(&d, COWBLK_IMG, &ca);
        let head = |s: &str| {
            s.lines()
                .filter(|l| !l.starts_with("Run completed"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(head(&c.stdout), head(&q.stdout), "{args:?}");
        assert!(c
            .stdout
            .lines()
            .last()
            .unwrap()
            .starts_with("Run completed in "));
        same_bytes(&read(&d, "c.raw"), &read(&d, "q.raw"), &format!("{args:?}"));
    }
    // Refused alike: a flush interval below the depth, reads past the end.
    for args in [
        vec![
            "bench",
            "-f",
            "raw",
            "-w",
            "-c",
            "10",
            "-d",
            "8",
            "--flush-interval=4",
            "q.raw",
        ],
        vec!["bench", "-f", "raw", "-c", "10", "-o", "1M", "q.raw"],
    ] {
        assert_eq!(run(&d, "qemu-img", &args).code, 1, "{args:?}");
        assert_eq!(run(&d, COWBLK_IMG, &args).code, 1, "{args:?}");
    }
    // add-cow works too.
    make_base(&d, "base.raw", "4M");
    make_addcow(&d, "a.acow", "a.img", "base.raw");
    ok(
        &d,
        COWBLK_IMG,
        &[
            "bench", "-w", "-c", "200", "-d", "2", "-s", "4k", "-S", "20k", "a.acow",
        ],
    );
    ok(&d, COWBLK_IMG, &["check", "a.acow"]);
}

#[test]
fn usage_errors_and_help() {
    let d = tmpdir("img-usage");
    make_base(&d, "b.raw", "4M");
    for args in [
        vec!["bogus"],
        vec!["info"],
        vec!["info", "b.raw", "b.raw"],
        vec!["info", "nonexist"],
        vec!["info", "--output=xml", "b.raw"],
        vec!["create", "-f", "raw", "x.raw"],
        vec!["create", "-f", "nosuch", "x.raw", "1M"],
        vec!["create", "-f", "raw", "-b", "b.raw", "-F", "raw", "x.raw"],
        vec!["create", "-f", "raw", "x.raw", "1Q"],
        vec!["map", "-f", "add-cow", "b.raw"],
        vec!["rebase", "-f", "raw", "-b", "", "b.raw"],
        vec!["rebase", "b.raw"],
        vec!["commit", "b.raw"],
        vec!["resize", "b.raw"],
    ] {
        let q = run(&d, "qemu-img", &args);
        let c = run(&d, COWBLK_IMG, &args);
        assert_eq!(c.code, q.code, "{args:?}: {c:?} vs {q:?}");
        assert_eq!(c.code, 1);
        // qemu-img warns about a raw image it probed before a read-write
        // open; so must we, and the error follows.
        let probe_warning = |s: &str| s.starts_with("WARNING: Image format was not specified");
        assert_eq!(
            probe_warning(&c.stderr),
            probe_warning(&q.stderr),
            "{args:?}: {} vs {}",
            c.stderr,
            q.stderr
        );
        let err: Vec<&str> = c
            .stderr
            .lines()
            .skip(if probe_warning(&c.stderr) { 3 } else { 0 })
            .collect();
        assert!(err[0].starts_with("cowblk-img: "), "{args:?}: {}", c.stderr);
        assert!(err.len() <= 2, "{args:?}: {}", c.stderr);
        assert!(!d.join("x.raw").exists(), "{args:?}");
    }
    // add-cow refuses a backing file without its format, in qemu-img's
    // words.
    let c = run(
        &d,
        COWBLK_IMG,
        &[
            "create",
            "-f",
            "add-cow",
            "-b",
            "b.raw",
            "-o",
            "image_file=y.img",
            "y.acow",
        ],
    );
    assert_eq!(c.code, 1);
    assert!(
        c.stderr
            .contains("Backing file specified without backing format"),
        "{}",
        c.stderr
    );
    for cmd in [
        "create", "info", "map", "check", "convert", "snapshot", "compare", "resize", "commit",
        "rebase", "bench",
    ] {
        let c = ok(&d, COWBLK_IMG, &[cmd, "--help"]);
        assert!(
            c.stdout.contains(&format!("cowblk-img {cmd}")),
            "{cmd}: {}",
            c.stdout
        );
    }
    let c = ok(&d, COWBLK_IMG, &["--help"]);
    assert!(c
        .stdout
        .contains("rebase - Change backing file of the image"));
}

/// Whether qemu-img sees a hole (a run that is not data) in raw file `f`.
fn has_hole(d: &Path, f: &str) -> bool {
    let m = json(&ok(d, "qemu-img", &["map", "--output=json", "-f", "raw", f]).stdout);
    m.as_array().unwrap().iter().any(|e| e["data"] == false)
}
