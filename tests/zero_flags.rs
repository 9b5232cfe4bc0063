//! Zero writes honour QEMU's MAY_UNMAP and NO_FALLBACK: no deallocation
//! without leave to unmap, and no zero buffers written under NO_FALLBACK.

mod common;

use cowblk::io::ZeroFlags;
use cowblk::{CreateOptions, Error, Image, OpenOptions};
use std::os::unix::fs::MetadataExt;

fn blocks(p: &std::path::Path) -> u64 {
    std::fs::metadata(p).unwrap().blocks()
}

/// Runs `prog` in `dir`; it must succeed. Its standard output.
fn run_in(dir: &std::path::Path, prog: &str, args: &[&str]) -> String {
    let o = std::process::Command::new(prog)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{prog} {args:?}: {o:?}");
    String::from_utf8(o.stdout).unwrap()
}

/// qemu-img with the words of `line`, in `dir`; it must succeed.
fn qemu_img(dir: &std::path::Path, line: &str) -> String {
    run_in(
        dir,
        "qemu-img",
        &line.split_whitespace().collect::<Vec<_>>(),
    )
}

const KEEP: ZeroFlags = ZeroFlags {
    may_unmap: false,
    no_fallback: true,
    host_zero_head: false,
    host_zero_tail: false,
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
            ..ZeroFlags::default()
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
    let run = |prog: &str, args: &[&str]| run_in(&d, prog, args);
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

/// A caller that manages the backing file (the QEMU glue) vouches with
/// COWBLK_ZERO_BACKING_ZERO_HEAD/TAIL that its backing chain reads zeros
/// around a partial-cluster zero write: the cluster then becomes a zero
/// cluster, as QEMU's qcow2 makes it (iotest 154), but only where this
/// layer reads zeros there too; without the flag zeros are written.
#[test]
fn caller_backing_zero_writes_widen_only_where_the_caller_vouches() {
    use cowblk::ffi::*;
    let d = common::tmpdir("zero-flags-host");
    let run = |prog: &str, args: &[&str]| run_in(&d, prog, args);
    run("qemu-img", &["create", "-q", "-f", "raw", "b.raw", "64k"]);
    qemu_img(
        &d,
        "create -q -f qcow2 -o cluster_size=4k -b b.raw -F raw o.qcow2 64k",
    );
    // this layer's own data in the third cluster
    run("qemu-io", &["-c", "write -P 9 8k 1k", "o.qcow2"]);
    let path = std::ffi::CString::new(d.join("o.qcow2").to_str().unwrap()).unwrap();
    let mut img = std::ptr::null_mut();
    let fl = COWBLK_OPEN_CALLER_BACKING;
    assert_eq!(
        unsafe { cowblk_open(path.as_ptr(), c"qcow2".as_ptr(), fl, 0, &mut img) },
        0
    );
    let (u, head, tail) = (
        COWBLK_ZERO_MAY_UNMAP,
        COWBLK_ZERO_BACKING_ZERO_HEAD,
        COWBLK_ZERO_BACKING_ZERO_TAIL,
    );
    // Without the caller's word the library cannot zero part of an
    // unallocated cluster (that needs the backing bytes): -ENOTSUP, and
    // the caller writes zeros itself (QEMU's fallback). A request inside
    // one cluster counts on the HEAD word alone.
    let enotsup = -libc::ENOTSUP;
    for (off, len, flags, want) in [
        (1024, 1024, u | head, 0),         // cluster 0: widened
        (5120, 1024, u, enotsup),          // cluster 1: no word
        (10240, 1024, u | head, 0),        // cluster 2: own data, in place
        (21504, 1024, u | tail, enotsup),  // cluster 5: TAIL alone
        (17408, 1024, u | head | tail, 0), // cluster 4: widened
    ] {
        assert_eq!(
            unsafe { cowblk_write_zeroes_flags(img, off, len, flags) },
            want,
            "{off}"
        );
    }
    assert_eq!(unsafe { cowblk_close(&mut img) }, 0);
    run("qemu-img", &["check", "-q", "o.qcow2"]);
    run(
        "qemu-io",
        &[
            "-c",
            "read -P 9 8k 1k",
            "-c",
            "read -P 0 9k 55k",
            "-c",
            "read -P 0 0 8k",
            "o.qcow2",
        ],
    );
    let map = run("qemu-img", &["map", "--output=json", "o.qcow2"]);
    // (start, depth, data) of each depth-0 extent
    let ext: Vec<(u64, bool)> = map
        .lines()
        .filter(|l| l.contains("\"depth\": 0"))
        .map(|l| {
            let n = |k: &str| {
                let i = l.find(k).unwrap() + k.len();
                l[i..]
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()
            };
            (n("\"start\": "), l.contains("\"data\": true"))
        })
        .collect();
    assert_eq!(ext, vec![(0, false), (8192, true), (16384, false)], "{map}");
    std::fs::remove_dir_all(&d).unwrap();
}

/// The image's partial last cluster counts as whole up to the image's
/// end: a zero write over all or part of it (the rest reading zeros)
/// makes it a zero cluster, as QEMU's qcow2 does (iotest 154's unaligned
/// tail); judged by `qemu-img map` against qemu-io.
#[test]
fn zeroing_the_partial_last_cluster_as_qemu_io() {
    let d = common::tmpdir("zero-flags-tail");
    let run = |prog: &str, args: &[&str]| run_in(&d, prog, args);
    let size = 1u64 << 20;
    for (at, len) in [(0, 512), (1536, 512), (512, 1024), (0, 2048)] {
        let cmd = format!("write -z {} {len}", size + at);
        let mut maps = Vec::new();
        for prog in ["qemu-io", env!("CARGO_BIN_EXE_cowblk-io")] {
            let _ = std::fs::remove_file(d.join("t.qcow2"));
            let sz = (size + 2048).to_string();
            qemu_img(
                &d,
                &format!("create -q -f qcow2 -o cluster_size=4k t.qcow2 {sz}"),
            );
            run(prog, &["-f", "qcow2", "-c", &cmd, "t.qcow2"]);
            run("qemu-img", &["check", "-q", "t.qcow2"]);
            maps.push(run("qemu-img", &["map", "--output=json", "t.qcow2"]));
        }
        assert_eq!(maps[0], maps[1], "{cmd}");
        assert!(maps[1].contains(r#""length": 2048, "depth": 0, "present": true, "zero": true"#));
    }
    std::fs::remove_dir_all(&d).unwrap();
}
