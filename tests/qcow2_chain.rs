//! commit and rebase between qcow2 images, against QEMU 10: twin chains
//! (qcow2 base, qcow2 overlay with data, zero clusters and discards; v2
//! and v3), one handled by qemu-img, the other by cowblk-img with the same
//! arguments; the results must read the same, record the same backing
//! file, and pass `qemu-img check`.

mod cli_support;

use cli_support::*;
use serde_json::Value;
use std::path::Path;

/// A base full of 1s and a 4 KiB-cluster overlay over it.
fn chain(dir: &Path, p: &str, compat: &str) {
    let o = format!("compat={compat}");
    ok(
        dir,
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &o,
            &format!("{p}base.qcow2"),
            "4M",
        ],
    );
    ok(
        dir,
        "qemu-io",
        &["-c", "write -P 1 0 4M", &format!("{p}base.qcow2")],
    );
    let o = format!("compat={compat},cluster_size=4k");
    ok(
        dir,
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &o,
            "-b",
            &format!("{p}base.qcow2"),
            "-F",
            "qcow2",
            &format!("{p}ov.qcow2"),
        ],
    );
    ok(
        dir,
        "qemu-io",
        &[
            "-c",
            "write -P 2 100k 300k",
            "-c",
            "write -z 1M 64k",
            "-c",
            "discard 2M 128k",
            &format!("{p}ov.qcow2"),
        ],
    );
}

fn same(dir: &Path, a: &str, b: &str) {
    ok(dir, "qemu-img", &["compare", "-U", a, b]);
}

fn clean(dir: &Path, f: &str) {
    let o = run(dir, "qemu-img", &["check", "--output=json", f]);
    assert_eq!(o.code, 0, "qemu-img check {f}: {o:?}");
    let v: Value = serde_json::from_str(&o.stdout).unwrap();
    assert!(
        v.get("leaks").is_none() && v.get("corruptions").is_none(),
        "{f}: {v}"
    );
}

fn backing(dir: &Path, f: &str) -> (Option<String>, Option<String>) {
    let o = ok(dir, "qemu-img", &["info", "-U", "--output=json", f]);
    let v: Value = serde_json::from_str(&o.stdout).unwrap();
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
    (s("backing-filename"), s("backing-filename-format"))
}

/// Runs `args` (F = the image) with qemu-img on q's chain and with
/// cowblk-img on c's: same exit code, same results.
fn both(dir: &Path, args: &[&str], file: &str) {
    let q = run(dir, "qemu-img", &with_file(args, &format!("q{file}")));
    let c = run(dir, COWBLK_IMG, &with_file(args, &format!("c{file}")));
    assert_eq!(q.code, c.code, "{args:?}: qemu-img {q:?}, cowblk-img {c:?}");
    assert_eq!(q.code, 0, "{args:?}: {q:?}");
}

#[test]
fn commit_and_rebase_match_qemu_img() {
    for compat in ["1.1", "0.10"] {
        let d = tmpdir(&format!("q2chain-{compat}"));
        // commit into the qcow2 base.
        chain(&d, "q", compat);
        chain(&d, "c", compat);
        both(&d, &["commit", "-q", "F"], "ov.qcow2");
        same(&d, "qbase.qcow2", "cbase.qcow2");
        same(&d, "qov.qcow2", "cov.qcow2");
        for f in ["cbase.qcow2", "cov.qcow2"] {
            clean(&d, f);
        }
        // Safe rebase onto another qcow2: the guest view stays.
        chain(&d, "q", compat);
        chain(&d, "c", compat);
        ok(
            &d,
            "qemu-img",
            &["create", "-q", "-f", "qcow2", "new.qcow2", "4M"],
        );
        ok(&d, "qemu-io", &["-c", "write -P 3 0 1M", "new.qcow2"]);
        let before = qemu_view(&d, "cov.qcow2", "before.raw");
        both(
            &d,
            &["rebase", "-q", "-b", "new.qcow2", "-F", "qcow2", "F"],
            "ov.qcow2",
        );
        same_bytes(
            &qemu_view(&d, "cov.qcow2", "after.raw"),
            &before,
            "safe rebase",
        );
        same(&d, "qov.qcow2", "cov.qcow2");
        assert_eq!(backing(&d, "cov.qcow2"), backing(&d, "qov.qcow2"));
        clean(&d, "cov.qcow2");
        // Unsafe rebase: only the name changes (each onto its own base).
        ok(
            &d,
            "qemu-img",
            &[
                "rebase",
                "-u",
                "-b",
                "qbase.qcow2",
                "-F",
                "qcow2",
                "qov.qcow2",
            ],
        );
        ok(
            &d,
            COWBLK_IMG,
            &[
                "rebase",
                "-u",
                "-b",
                "cbase.qcow2",
                "-F",
                "qcow2",
                "cov.qcow2",
            ],
        );
        let want = |p: &str| (Some(format!("{p}base.qcow2")), Some("qcow2".to_string()));
        assert_eq!(backing(&d, "qov.qcow2"), want("q"));
        assert_eq!(backing(&d, "cov.qcow2"), want("c"));
        clean(&d, "cov.qcow2");
        same(&d, "qov.qcow2", "cov.qcow2");
        // Flatten: no backing file, same guest view.
        let before = qemu_view(&d, "cov.qcow2", "before.raw");
        both(&d, &["rebase", "-q", "-b", "", "F"], "ov.qcow2");
        same_bytes(&qemu_view(&d, "cov.qcow2", "after.raw"), &before, "flatten");
        same(&d, "qov.qcow2", "cov.qcow2");
        assert_eq!(backing(&d, "cov.qcow2"), (None, None));
        clean(&d, "cov.qcow2");
        let _ = std::fs::remove_dir_all(&d);
    }
}
