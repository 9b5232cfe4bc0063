//! `convert -S 0` writes every byte, as qemu-img does: the target file is
//! fully allocated (no holes) and holds the same guest bytes; without -S the
//! target stays sparse. qemu-img's target is the reference in both cases.

mod cli_support;

use cli_support::*;
use std::os::unix::fs::MetadataExt;

fn allocated(d: &std::path::Path, f: &str) -> u64 {
    std::fs::metadata(d.join(f)).unwrap().blocks() * 512
}

#[test]
fn sparse_size_zero_fully_allocates_the_target() {
    let d = tmpdir("convert-dense");
    make_base(&d, "base.raw", "4M");
    for (out, args) in [("q.raw", vec!["-S", "0"]), ("q.sparse", vec![])] {
        let mut a = vec!["convert", "-O", "raw"];
        a.extend(&args);
        a.extend(["base.raw", out]);
        ok(&d, "qemu-img", &a);
        let ours = out.replace("q.", "c.");
        a.pop();
        a.push(&ours);
        ok(&d, COWBLK_IMG, &a);
        ok(
            &d,
            "qemu-img",
            &["compare", "-f", "raw", "-F", "raw", out, &ours],
        );
        let (q, c) = (allocated(&d, out), allocated(&d, &ours));
        if args.is_empty() {
            assert!(c < 4 << 20 && q < 4 << 20, "sparse: qemu {q}, ours {c}");
        } else {
            assert!(c >= 4 << 20 && q >= 4 << 20, "-S 0: qemu {q}, ours {c}");
        }
    }
    // A qcow2 target: every cluster allocated, and the image checks clean.
    ok(
        &d,
        COWBLK_IMG,
        &["convert", "-S", "0", "-O", "qcow2", "base.raw", "c.qcow2"],
    );
    ok(&d, "qemu-img", &["check", "c.qcow2"]);
    let m = ok(&d, "qemu-img", &["map", "--output=json", "c.qcow2"]).stdout;
    assert!(!m.contains("\"data\": false"), "{m}");
    let _ = std::fs::remove_dir_all(&d);
}
