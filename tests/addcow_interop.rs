//! A raw backing file made and written by qemu-img/qemu-io reads through
//! an add-cow overlay exactly as QEMU reads it.

mod common;

use common::tmpdir;
use cowblk::{CreateOptions, Image, OpenOptions};
use std::process::Command;

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} must be installed: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn qemu_written_raw_backing_reads_identically() {
    let d = tmpdir("interop-raw");
    let base = d.join("base.raw");
    let b = base.to_str().unwrap();
    run("qemu-img", &["create", "-q", "-f", "raw", b, "4M"]);
    run(
        "qemu-io",
        &[
            "-f",
            "raw",
            b,
            "-c",
            "write -P 0x5a 0 64k",
            "-c",
            "write -P 0xa5 1M 100k",
            "-c",
            "write -P 0x11 3000 5",
            "-c",
            "write -z 1040k 8k",
        ],
    );
    // qemu-io itself checks the pattern it wrote.
    let out = run("qemu-io", &["-f", "raw", b, "-c", "read -P 0xa5 1M 16k"]);
    assert!(out.contains("read 16384/16384"), "{out}");

    let mut o = CreateOptions::new();
    o.set("backing_file", "base.raw")
        .set("backing_fmt", "raw")
        .set("image_file", "ov.img");
    let ov = d.join("ov.add-cow");
    Image::create(&ov, "add-cow", &o).unwrap();
    let img = Image::open(&ov, &OpenOptions::default()).unwrap();
    img.write(&[0x77; 1000], 2_000_000).unwrap();
    img.close().unwrap();

    let conv = d.join("conv.raw");
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            b,
            conv.to_str().unwrap(),
        ],
    );
    let mut want = std::fs::read(&conv).unwrap();
    assert_eq!(want.len(), 4 << 20);
    assert_eq!(&want[3000..3005], &[0x11; 5]);
    want[2_000_000..2_001_000].fill(0x77);

    let img = Image::open(
        &ov,
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    let mut got = vec![0u8; img.size() as usize];
    img.read(&mut got, 0).unwrap();
    assert!(
        got == want,
        "add-cow view differs from qemu's view of the backing file"
    );
    // The backing file is untouched by the overlay's write.
    let after = std::fs::read(&base).unwrap();
    assert_eq!(&after[2_000_000..2_001_000], &[0u8; 1000]);
}
