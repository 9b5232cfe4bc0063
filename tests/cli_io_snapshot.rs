//! cowblk-io -s (and open -s): writes go to a temporary qcow2 overlay, the
//! image file is left byte for byte as it was, and no overlay file is left
//! behind, neither in $TMPDIR nor (with --confined, where the overlay sits
//! next to the image) in the image's directory. qemu-img check passes on
//! the image afterwards.

mod cli_support;

use cli_support::*;
use std::process::Command;

fn run_env(d: &std::path::Path, tmp: &std::path::Path, args: &[&str]) -> String {
    let o = Command::new(COWBLK_IO)
        .args(args)
        .current_dir(d)
        .env("TMPDIR", tmp)
        .output()
        .unwrap();
    assert!(o.status.success(), "{args:?}: {o:?}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn names(d: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn snapshot_mode_leaves_the_image_and_no_overlay() {
    let d = tmpdir("io-snapshot");
    let tmp = d.join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    make_base(&d, "base.raw", "4M");
    ok(
        &d,
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.raw",
            "-F",
            "raw",
            "top.qcow2",
        ],
    );
    ok(&d, "qemu-io", &["-c", "write -P 0x77 0 64k", "top.qcow2"]);
    let files = names(&d);
    for img in ["base.raw", "top.qcow2"] {
        let before = read(&d, img);
        for confined in [false, true] {
            let mut args = vec!["-s"];
            if confined {
                args.push("--confined");
            }
            args.extend([
                "-c",
                "write -P 0x5a 0 1M",
                "-c",
                "read -P 0x5a 0 1M",
                "-c",
                "truncate 8M",
                img,
            ]);
            let out = run_env(&d, &tmp, &args);
            assert!(!out.contains("verification failed"), "{out}");
            // The same with the open command.
            let open = format!("open -s {img}");
            let out = run_env(
                &d,
                &tmp,
                &[
                    "-c",
                    &open,
                    "-c",
                    "write -P 0x5b 1M 4k",
                    "-c",
                    "read -P 0x5b 1M 4k",
                ],
            );
            assert!(!out.contains("verification failed"), "{out}");
            assert!(
                read(&d, img) == before,
                "{img} changed (confined {confined})"
            );
            assert_eq!(names(&d), files, "a file was left next to the image");
            assert!(names(&tmp).is_empty(), "left in TMPDIR: {:?}", names(&tmp));
        }
    }
    ok(&d, "qemu-img", &["check", "top.qcow2"]);
    let _ = std::fs::remove_dir_all(&d);
}
