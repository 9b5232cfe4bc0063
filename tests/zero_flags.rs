//! Zero writes honour QEMU's MAY_UNMAP and NO_FALLBACK: no deallocation
//! without leave to unmap, and no zero buffers written under NO_FALLBACK.

mod common;

use cowblk::io::ZeroFlags;
use cowblk::{CreateOptions, Error, Image, OpenOptions};
use std::os::unix::fs::MetadataExt;

fn blocks(p: &std::path::Path) -> u64 {
    std::fs::metadata(p).unwrap().blocks()
}

const KEEP: ZeroFlags = ZeroFlags {
    may_unmap: false,
    no_fallback: true,
};

#[test]
fn zeroing_keeps_blocks_unless_it_may_unmap() {
    let d = common::tmpdir("zero-flags");
    let p = d.join("r.raw");
    let mut o = CreateOptions::new();
    o.set("size", "1048576");
    Image::create(&p, "raw", &o).unwrap();
    let img = Image::open(&p, &OpenOptions::default()).unwrap();
    img.write(&vec![0x5a; 1 << 20], 0).unwrap();
    img.flush().unwrap();
    let full = blocks(&p);
    assert!(full >= 2048, "{full}");
    // Without MAY_UNMAP: zeros, blocks kept (ext4's ZERO_RANGE, no
    // fallback needed).
    img.write_zeroes_flags(0, 512 << 10, KEEP).unwrap();
    let mut buf = vec![1u8; 1 << 20];
    img.read(&mut buf, 0).unwrap();
    assert!(buf[..512 << 10].iter().all(|&b| b == 0));
    assert!(buf[512 << 10..].iter().all(|&b| b == 0x5a));
    assert_eq!(blocks(&p), full);
    // With it: the range is deallocated.
    img.write_zeroes_flags(
        0,
        512 << 10,
        ZeroFlags {
            may_unmap: true,
            no_fallback: true,
        },
    )
    .unwrap();
    assert!(blocks(&p) <= full - 1024, "{} of {full}", blocks(&p));
    img.read(&mut buf, 0).unwrap();
    assert!(buf[..512 << 10].iter().all(|&b| b == 0));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn no_fallback_refuses_partial_unallocated_clusters_and_leaves_them_alone() {
    let d = common::tmpdir("zero-flags-addcow");
    let base = d.join("base.raw");
    let mut o = CreateOptions::new();
    o.set("size", "1048576");
    Image::create(&base, "raw", &o).unwrap();
    Image::open(&base, &OpenOptions::default())
        .unwrap()
        .write(&vec![0x11; 1 << 20], 0)
        .unwrap();
    let top = d.join("top.add-cow");
    let mut o = CreateOptions::new();
    o.parse_into(
        "size=1048576,backing_file=base.raw,backing_fmt=raw,image_file=top.img,cluster_size=65536",
    )
    .unwrap();
    Image::create(&top, "add-cow", &o).unwrap();
    let img = Image::open(&top, &OpenOptions::default()).unwrap();
    // Half a cluster: the other half would have to be copied as data.
    let e = img.write_zeroes_flags(1000, 4096, KEEP).unwrap_err();
    assert!(matches!(e, Error::Unsupported(_)), "{e}");
    assert!(!img.block_status(0, 65536).unwrap().0.allocated);
    // Whole clusters can be zeroed without writing zeros.
    img.write_zeroes_flags(65536, 131072, KEEP).unwrap();
    let mut buf = vec![1u8; 262144];
    img.read(&mut buf, 0).unwrap();
    assert!(buf[..65536].iter().all(|&b| b == 0x11));
    assert!(buf[65536..196608].iter().all(|&b| b == 0));
    assert!(buf[196608..].iter().all(|&b| b == 0x11));
    // Without NO_FALLBACK the partial cluster is done the slow way.
    img.write_zeroes_flags(1000, 4096, ZeroFlags::default())
        .unwrap();
    img.read(&mut buf, 0).unwrap();
    assert!(buf[..1000].iter().all(|&b| b == 0x11));
    assert!(buf[1000..5096].iter().all(|&b| b == 0));
    assert!(buf[5096..65536].iter().all(|&b| b == 0x11));
    drop(img);
    std::fs::remove_dir_all(&d).unwrap();
}

/// cowblk-io's `write -z` keeps blocks and `write -z -u` frees them, as
/// qemu-io's do on the same raw file.
#[test]
fn cowblk_io_write_z_allocates_like_qemu_io() {
    let d = common::tmpdir("zero-flags-cli");
    let data = vec![0x5au8; 1 << 20];
    let mut sizes = Vec::new();
    for prog in ["qemu-io", env!("CARGO_BIN_EXE_cowblk-io")] {
        let p = d.join("z.raw");
        std::fs::write(&p, &data).unwrap();
        let mut seen = vec![blocks(&p)];
        for cmd in ["write -z 0 512k", "write -z -u 0 512k"] {
            let o = std::process::Command::new(prog)
                .args(["-f", "raw", "-c", cmd])
                .arg(&p)
                .output()
                .unwrap();
            assert!(o.status.success(), "{prog} {cmd}: {o:?}");
            seen.push(blocks(&p));
        }
        sizes.push(seen);
    }
    assert_eq!(sizes[0], sizes[1], "qemu-io vs cowblk-io st_blocks");
    // And the figures say what the flags mean: kept, then freed.
    assert_eq!(sizes[1][1], sizes[1][0]);
    assert!(sizes[1][2] < sizes[1][1]);
    std::fs::remove_dir_all(&d).unwrap();
}

/// qcow2 v2 has no zero flag. Without a backing file, zeroing whole
/// clusters frees them (an unallocated cluster reads zeros), as QEMU's
/// qcow2 does even without MAY_UNMAP (iotest 122: `convert -n` to an
/// empty v2 image leaves it empty); with one, the zeros are written as
/// data. Judged by `qemu-img map` against qemu-io on the same commands.
#[test]
fn zeroing_a_v2_image_frees_clusters_only_without_a_backing_file() {
    let d = common::tmpdir("zero-flags-v2");
    let run = |prog: &str, args: &[&str]| {
        let o = std::process::Command::new(prog)
            .args(args)
            .current_dir(&d)
            .output()
            .unwrap();
        assert!(o.status.success(), "{prog} {args:?}: {o:?}");
        String::from_utf8(o.stdout).unwrap()
    };
    let mut maps = Vec::new();
    for prog in ["qemu-io", env!("CARGO_BIN_EXE_cowblk-io")] {
        let mut seen = Vec::new();
        run("qemu-img", &["create", "-q", "-f", "raw", "b.raw", "2M"]);
        for (f, backing) in [("plain.qcow2", None), ("over.qcow2", Some("b.raw"))] {
            let mut c = vec!["create", "-q", "-f", "qcow2", "-o", "compat=0.10"];
            if let Some(b) = backing {
                c.extend(["-b", b, "-F", "raw"]);
            }
            c.extend([f, "2M"]);
            run("qemu-img", &c);
            run(
                prog,
                &[
                    "-f",
                    "qcow2",
                    "-c",
                    "write -P 0x5a 0 1M",
                    "-c",
                    "write -z 0 512k",
                    "-c",
                    "write -z 640k 4k",
                    "-c",
                    "write -z 1536k 512k",
                    "-c",
                    "read -P 0 0 512k",
                    "-c",
                    "read -P 0x5a 512k 128k",
                    "-c",
                    "read -P 0 640k 4k",
                    "-c",
                    "read -P 0 1536k 512k",
                    f,
                ],
            );
            run("qemu-img", &["check", "-q", f]);
            seen.push(run("qemu-img", &["map", "--output=json", f]));
        }
        maps.push(seen);
    }
    assert_eq!(maps[0], maps[1], "qemu-io vs cowblk-io: qemu-img map");
    // and the maps say it: the plain image's first 512 KiB is no longer
    // allocated, the overlay's is (zeros written as data)
    assert!(
        maps[1][0].starts_with(r#"[{ "start": 0, "length": 524288, "depth": 0, "present": false"#)
    );
    assert!(
        maps[1][1].starts_with(r#"[{ "start": 0, "length": 1048576, "depth": 0, "present": true"#)
    );
    std::fs::remove_dir_all(&d).unwrap();
}
