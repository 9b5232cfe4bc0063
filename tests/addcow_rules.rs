//! add-cow behaviour, rule by rule (issue 2 and the reviewers' comments in
//! seeds 000, 002 and 003).

mod common;

use common::{pattern, tmpdir};
use cowblk::io::{Access, Storage};
use cowblk::{CreateOptions, Image, OpenOptions};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

fn make_raw(path: &Path, data: &[u8]) {
    std::fs::write(path, data).unwrap();
}

fn overlay(
    dir: &Path,
    name: &str,
    backing: Option<(&str, &str)>,
    extra: &[(&str, &str)],
) -> std::path::PathBuf {
    let p = dir.join(format!("{name}.add-cow"));
    let mut o = CreateOptions::new();
    o.set("image_file", format!("{name}.img"));
    if let Some((b, f)) = backing {
        o.set("backing_file", b).set("backing_fmt", f);
    }
    for (k, v) in extra {
        o.set(*k, *v);
    }
    Image::create(&p, "add-cow", &o).unwrap();
    p
}

fn rw() -> OpenOptions {
    OpenOptions::default()
}

fn ro() -> OpenOptions {
    OpenOptions {
        read_only: true,
        ..Default::default()
    }
}

fn read_all(img: &Image) -> Vec<u8> {
    let mut b = vec![0u8; img.size() as usize];
    img.read(&mut b, 0).unwrap();
    b
}

#[test]
fn create_refuses_what_reviewers_refused() {
    let d = tmpdir("rules-create");
    make_raw(&d.join("base.raw"), &[1u8; 65536]);
    let try_create = |opts: &[(&str, &str)]| {
        let mut o = CreateOptions::new();
        for (k, v) in opts {
            o.set(*k, *v);
        }
        Image::create(d.join("x.add-cow"), "add-cow", &o)
    };
    let e = try_create(&[
        ("image_file", "x.img"),
        ("backing_file", "base.raw"),
        ("size", "64k"),
    ])
    .unwrap_err();
    assert!(e.to_string().contains("backing_fmt"), "{e}");
    let e = try_create(&[
        ("image_file", "base.raw"),
        ("backing_file", "base.raw"),
        ("backing_fmt", "raw"),
    ])
    .unwrap_err();
    assert!(e.to_string().contains("is the backing file"), "{e}");
    let e = try_create(&[("image_file", "x.add-cow"), ("size", "64k")]).unwrap_err();
    assert!(e.to_string().contains("add-cow file itself"), "{e}");
    let e = try_create(&[("size", "64k")]).unwrap_err();
    assert!(e.to_string().contains("image_file"), "{e}");
    let e = try_create(&[
        ("image_file", "x.img"),
        ("size", "64k"),
        ("cluster_size", "3000"),
    ])
    .unwrap_err();
    assert!(e.to_string().contains("cluster_size"), "{e}");
    let e = try_create(&[("image_file", "x.img"), ("size", "9E")]).unwrap_err();
    assert_eq!(e.errno(), libc::EFBIG, "{e}");
    let e = try_create(&[("image_file", "x.img"), ("size", "64k"), ("bogus", "1")]).unwrap_err();
    assert!(e.to_string().contains("bogus"), "{e}");
    // Nothing was left behind by the refusals.
    assert!(!d.join("x.add-cow").exists());
    assert!(!d.join("x.img").exists());
}

#[test]
fn create_defaults_and_existing_image_file() {
    let d = tmpdir("rules-defaults");
    make_raw(&d.join("base.raw"), &pattern(200_000, 3));
    // Size comes from the backing file; default cluster size is 4 KiB.
    let p = overlay(&d, "a", Some(("base.raw", "raw")), &[]);
    let img = Image::open(&p, &rw()).unwrap();
    assert_eq!(img.size(), 200_000);
    assert_eq!(img.cluster_size(), 4096);
    assert_eq!(std::fs::metadata(d.join("a.img")).unwrap().len(), 200_000);
    drop(img);
    // An existing, larger image file is used as it is and never shrunk.
    make_raw(&d.join("b.img"), &vec![9u8; 300_000]);
    let p = overlay(&d, "b", Some(("base.raw", "raw")), &[("size", "100000")]);
    assert_eq!(std::fs::metadata(d.join("b.img")).unwrap().len(), 300_000);
    let img = Image::open(&p, &rw()).unwrap();
    assert_eq!(img.size(), 100_000);
    // Bits start clear: the guest sees the backing file, not the old bytes.
    assert_eq!(read_all(&img), pattern(200_000, 3)[..100_000].to_vec());
    // A shorter existing image file is extended to the virtual size.
    make_raw(&d.join("c.img"), &[5u8; 1000]);
    overlay(&d, "c", None, &[("size", "70000")]);
    assert_eq!(std::fs::metadata(d.join("c.img")).unwrap().len(), 70_000);
}

#[test]
fn names_resolve_relative_to_the_add_cow_file() {
    let d = tmpdir("rules-relative");
    std::fs::create_dir_all(d.join("sub")).unwrap();
    make_raw(&d.join("sub/base.raw"), &pattern(65536, 5));
    let p = overlay(&d.join("sub"), "o", Some(("base.raw", "raw")), &[]);
    // Opened from a different working directory, by absolute path.
    let img = Image::open(&p, &ro()).unwrap();
    assert_eq!(read_all(&img), pattern(65536, 5));
    let info = img.info().unwrap();
    assert_eq!(info.backing_file.as_deref(), Some("base.raw"));
    assert_eq!(info.backing_format.as_deref(), Some("raw"));
    assert!(info.data_file.unwrap().ends_with("sub/o.img"));
}

#[test]
fn reads_image_then_backing_then_zeros() {
    let d = tmpdir("rules-read");
    // A backing file shorter than the overlay: zeros past its end.
    make_raw(&d.join("base.raw"), &pattern(100_000, 11));
    let p = overlay(
        &d,
        "o",
        Some(("base.raw", "raw")),
        &[("size", "300000"), ("cluster_size", "4096")],
    );
    let img = Image::open(&p, &rw()).unwrap();
    img.write(&[0x55; 10], 250_000).unwrap();
    img.write(&[0x66; 3], 4095).unwrap();
    let got = read_all(&img);
    let mut want = pattern(100_000, 11);
    want.resize(300_000, 0);
    want[250_000..250_010].fill(0x55);
    want[4095..4098].fill(0x66);
    assert_eq!(got, want);
    // Without a backing file unallocated clusters read zeros.
    let p2 = overlay(&d, "nb", None, &[("size", "65536")]);
    std::fs::write(d.join("nb.img"), vec![0xffu8; 65536]).unwrap();
    let img2 = Image::open(&p2, &rw()).unwrap();
    assert!(read_all(&img2).iter().all(|&b| b == 0));
}

#[test]
fn small_reads_through_to_a_raw_base_and_a_middle_layer() {
    // Raw bases are read straight from their file when a request lies
    // inside them; request by request, across the base's (odd) end and
    // through a middle add-cow layer, every byte must match the model.
    let d = tmpdir("rules-small-reads");
    let base = pattern(50_001, 7);
    make_raw(&d.join("base.raw"), &base);
    let opts = [("size", "81920"), ("cluster_size", "4096")];
    overlay(&d, "mid", Some(("base.raw", "raw")), &opts);
    let top = overlay(&d, "top", Some(("mid.add-cow", "add-cow")), &opts);
    let mid = Image::open(d.join("mid.add-cow"), &rw()).unwrap();
    mid.write(&[0x5a; 4096], 8192).unwrap();
    mid.close().unwrap();
    let mut want = base.clone();
    want.resize(81_920, 0);
    want[8192..12288].fill(0x5a);
    let direct = overlay(&d, "direct", Some(("base.raw", "raw")), &opts);
    let mut base_only = base;
    base_only.resize(81_920, 0);
    for (p, want) in [(top, &want), (direct, &base_only)] {
        let img = Image::open(&p, &ro()).unwrap();
        for req in [4096usize, 3000] {
            let mut off = 0;
            while off < 81_920 {
                let n = req.min(81_920 - off);
                let mut b = vec![0xeeu8; n];
                img.read(&mut b, off as u64).unwrap();
                assert_eq!(b, want[off..off + n], "{} at {off}", p.display());
                off += n;
            }
        }
    }
}

#[test]
fn is_allocated_reports_runs() {
    let d = tmpdir("rules-alloc");
    make_raw(&d.join("base.raw"), &pattern(1 << 20, 1));
    let p = overlay(
        &d,
        "o",
        Some(("base.raw", "raw")),
        &[("cluster_size", "64k")],
    );
    let img = Image::open(&p, &rw()).unwrap();
    img.write(&[1; 10], 3 * 65536 + 5).unwrap();
    img.write(&[1; 65536 * 2], 4 * 65536).unwrap();
    assert_eq!(img.is_allocated(0, 1 << 20).unwrap(), (false, 3 * 65536));
    assert_eq!(
        img.is_allocated(3 * 65536, 65536 * 4).unwrap(),
        (true, 3 * 65536)
    );
    assert_eq!(
        img.is_allocated(3 * 65536 + 100, 65536 * 3).unwrap(),
        (true, 3 * 65536 - 100)
    );
    assert_eq!(img.is_allocated(6 * 65536, 1000).unwrap(), (false, 1000));
    let info = img.info().unwrap();
    assert_eq!(info.allocated_bytes, 3 * 65536);
    assert_eq!(info.format, "add-cow");
    assert_eq!(info.cluster_size, 65536);
    assert_eq!(info.virtual_size, 1 << 20);
}

/// Records how every file was opened.
#[derive(Default)]
struct Recording {
    inner: cowblk::io::posix::PosixStorage,
    log: std::sync::Mutex<Vec<(String, Access)>>,
}

impl Storage for Recording {
    fn open(&self, path: &Path, access: Access) -> cowblk::Result<Arc<dyn cowblk::io::BlockFile>> {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        self.log.lock().unwrap().push((name, access));
        self.inner.open(path, access)
    }
    fn create(
        &self,
        path: &Path,
        truncate: bool,
    ) -> cowblk::Result<Arc<dyn cowblk::io::BlockFile>> {
        self.inner.create(path, truncate)
    }
    fn exists(&self, path: &Path) -> bool {
        self.inner.exists(path)
    }
    fn remove(&self, path: &Path) -> cowblk::Result<()> {
        self.inner.remove(path)
    }
}

#[test]
fn read_only_open_opens_every_file_read_only() {
    let d = tmpdir("rules-ro");
    make_raw(&d.join("base.raw"), &pattern(65536, 2));
    let mid = overlay(&d, "mid", Some(("base.raw", "raw")), &[]);
    let p = overlay(&d, "o", Some(("mid.add-cow", "add-cow")), &[]);
    {
        let img = Image::open(&p, &rw()).unwrap();
        img.write(&[7; 512], 0).unwrap();
        img.close().unwrap();
    }
    let _ = mid;
    let st = Arc::new(Recording::default());
    let img = Image::open_in(st.clone(), &p, &ro()).unwrap();
    assert_eq!(&read_all(&img)[..512], &[7; 512]);
    assert_eq!(img.write(&[1], 0).unwrap_err().errno(), libc::EROFS);
    assert_eq!(img.truncate(1).unwrap_err().errno(), libc::EROFS);
    drop(img);
    let log = st.log.lock().unwrap().clone();
    assert_eq!(log.len(), 5, "{log:?}");
    assert!(log.iter().all(|(_, a)| *a == Access::ReadOnly), "{log:?}");
    // Read-write: the top layer's two files are writable, the backing
    // chain stays read-only.
    let st = Arc::new(Recording::default());
    let img = Image::open_in(st.clone(), &p, &rw()).unwrap();
    img.write(&[3; 60_000], 100).unwrap();
    img.close().unwrap();
    let log = st.log.lock().unwrap().clone();
    let writable: Vec<&str> = log
        .iter()
        .filter(|(_, a)| *a == Access::ReadWrite)
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(writable, ["o.add-cow", "o.img"], "{log:?}");
    // A read-only file really cannot be written through a read-only open
    // (checked as non-root, where file modes apply).
    if unsafe { libc::geteuid() } != 0 {
        std::fs::set_permissions(d.join("o.img"), std::fs::Permissions::from_mode(0o444)).unwrap();
        assert!(Image::open(&p, &ro()).is_ok());
    }
}

#[test]
fn concurrent_writes_to_one_unallocated_cluster_keep_every_byte() {
    let d = tmpdir("rules-threads");
    make_raw(&d.join("base.raw"), &pattern(1 << 20, 9));
    let p = overlay(
        &d,
        "o",
        Some(("base.raw", "raw")),
        &[("cluster_size", "64k")],
    );
    let img = Arc::new(Image::open(&p, &rw()).unwrap());
    // 8 threads each write their own 512-byte pieces into the same clusters:
    // every piece is a partial copy-on-write of a shared cluster.
    let mut ts = Vec::new();
    for t in 0..8u8 {
        let img = img.clone();
        ts.push(std::thread::spawn(move || {
            for c in 0..16u64 {
                let off = c * 65536 + t as u64 * 4096 + 512;
                img.write(&[t + 1; 512], off).unwrap();
            }
        }));
    }
    for t in ts {
        t.join().unwrap();
    }
    let got = read_all(&img);
    let mut want = pattern(1 << 20, 9);
    for t in 0..8u8 {
        for c in 0..16u64 {
            let off = (c * 65536 + t as u64 * 4096 + 512) as usize;
            want[off..off + 512].fill(t + 1);
        }
    }
    assert!(got == want, "a concurrent copy-on-write lost data");
}

#[test]
fn resize_grows_with_zeros_and_shrinks() {
    let d = tmpdir("rules-resize");
    make_raw(&d.join("base.raw"), &pattern(1 << 20, 4));
    let p = overlay(&d, "o", Some(("base.raw", "raw")), &[("size", "300000")]);
    let img = Image::open(&p, &rw()).unwrap();
    img.write(&[0xab; 1000], 10_000).unwrap();
    // Grow: the backing file is longer, but the new space must read zeros.
    img.truncate(700_000).unwrap();
    assert_eq!(img.size(), 700_000);
    let got = read_all(&img);
    let mut want = pattern(1 << 20, 4)[..300_000].to_vec();
    want[10_000..11_000].fill(0xab);
    assert_eq!(&got[..300_000], &want[..]);
    assert!(
        got[300_000..].iter().all(|&b| b == 0),
        "grown area shows backing data"
    );
    // Shrink, then grow again: nothing from before the shrink reappears.
    img.truncate(5000).unwrap();
    assert_eq!(std::fs::metadata(d.join("o.img")).unwrap().len(), 5000);
    img.truncate(400_000).unwrap();
    let got = read_all(&img);
    assert_eq!(&got[..5000], &want[..5000]);
    assert!(got[5000..].iter().all(|&b| b == 0));
    img.close().unwrap();
    let img = Image::open(&p, &rw()).unwrap();
    assert_eq!(img.size(), 400_000);
    assert!(read_all(&img)[5000..].iter().all(|&b| b == 0));
}

#[test]
fn chains_of_any_depth() {
    let d = tmpdir("rules-chain");
    make_raw(&d.join("l0.raw"), &pattern(1 << 20, 1));
    let mut want = pattern(1 << 20, 1);
    let mut prev = ("l0.raw".to_string(), "raw");
    for depth in 1..=5u8 {
        let name = format!("l{depth}");
        let p = overlay(
            &d,
            &name,
            Some((&prev.0, prev.1)),
            &[("cluster_size", "4096")],
        );
        let img = Image::open(&p, &rw()).unwrap();
        let off = depth as u64 * 100_000 + 77;
        img.write(&[depth; 5000], off).unwrap();
        want[off as usize..off as usize + 5000].fill(depth);
        img.close().unwrap();
        prev = (format!("{name}.add-cow"), "add-cow");
    }
    let top = Image::open(d.join("l5.add-cow"), &ro()).unwrap();
    assert_eq!(read_all(&top), want);
    let (depth, _, _) = top.chain_status(100_077, 10).unwrap();
    assert_eq!(depth, 4);
}

#[test]
fn opens_a_file_written_by_the_2012_patch() {
    // Seed 002's layout: reserved bytes zero (so size 0 = the image file's
    // length, and one bit per 512-byte sector), bitmap at 2560.
    let d = tmpdir("rules-2012");
    make_raw(&d.join("base.img"), &pattern(8192, 8));
    let mut img_file = vec![0u8; 8192];
    img_file[1024..1536].fill(0xcd);
    make_raw(&d.join("test.raw"), &img_file);
    let mut h = vec![0u8; 2560 + 2];
    h[..8].copy_from_slice(b"ADD_COW\xff");
    h[11] = 1;
    h[12..20].copy_from_slice(b"base.img");
    h[1036..1044].copy_from_slice(b"test.raw");
    h[2560] = 0b0000_0100; // sector 2 lives in the image file
    std::fs::write(d.join("t.add-cow"), &h).unwrap();
    let img = Image::open(d.join("t.add-cow"), &rw()).unwrap();
    assert_eq!(img.size(), 8192);
    assert_eq!(img.cluster_size(), 512);
    let mut want = pattern(8192, 8);
    want[1024..1536].fill(0xcd);
    assert_eq!(read_all(&img), want);
    img.write(&[0x11; 10], 4000).unwrap();
    img.close().unwrap();
    let img = Image::open(d.join("t.add-cow"), &ro()).unwrap();
    want[4000..4010].fill(0x11);
    assert_eq!(read_all(&img), want);
}

#[test]
fn bad_files_get_clear_errors() {
    let d = tmpdir("rules-bad");
    let p = overlay(&d, "o", None, &[("size", "1M")]);
    let good = std::fs::read(&p).unwrap();
    let open_fmt = |bytes: &[u8]| {
        std::fs::write(d.join("bad.add-cow"), bytes).unwrap();
        Image::open(
            d.join("bad.add-cow"),
            &OpenOptions {
                format: Some("add-cow".into()),
                ..Default::default()
            },
        )
        .err()
        .expect("bad image opened")
    };
    let e = open_fmt(&good[..1000]);
    assert!(e.to_string().contains("truncated"), "{e}");
    let mut b = good.clone();
    b[1036..2060].fill(b'n');
    let e = open_fmt(&b);
    assert!(e.to_string().contains("NUL"), "{e}");
    let mut b = good.clone();
    b[11] = 9;
    let e = open_fmt(&b);
    assert!(e.to_string().contains("version 9"), "{e}");
    let mut b = good.clone();
    b[2060..2068].copy_from_slice(&u64::MAX.to_be_bytes());
    let e = open_fmt(&b);
    assert!(e.to_string().contains("exceeds"), "{e}");
    let mut b = good.clone();
    b[1036..1046].copy_from_slice(b"missing\0\0\0");
    let e = open_fmt(&b);
    assert_eq!(e.errno(), libc::ENOENT, "{e}");
    assert!(e.to_string().contains("missing"), "{e}");
    // An image file that is the add-cow file, or the backing file.
    let mut b = good.clone();
    b[1036..1046].copy_from_slice(b"bad.add-co");
    b[1046] = b'w';
    let e = open_fmt(&b);
    assert!(e.to_string().contains("add-cow file itself"), "{e}");
    std::fs::write(d.join("base.raw"), [0u8; 512]).unwrap();
    let mut b = good.clone();
    b[12..20].copy_from_slice(b"base.raw");
    b[1036..1045].copy_from_slice(b"base.raw\0");
    let e = open_fmt(&b);
    assert!(e.to_string().contains("is the backing file"), "{e}");
    // A bitmap shorter than the size needs.
    let mut b = good.clone();
    b.truncate(2560 + 1);
    let e = open_fmt(&b);
    assert!(e.to_string().contains("truncated"), "{e}");
}

#[test]
fn unknown_autoclear_bits_are_cleared_by_a_writer_only() {
    let d = tmpdir("rules-autoclear");
    let p = overlay(&d, "o", None, &[("size", "64k")]);
    let mut b = std::fs::read(&p).unwrap();
    b[2088 + 7] = 0x81;
    std::fs::write(&p, &b).unwrap();
    drop(Image::open(&p, &ro()).unwrap());
    assert_eq!(
        std::fs::read(&p).unwrap()[2095],
        0x81,
        "a reader changed the file"
    );
    drop(Image::open(&p, &rw()).unwrap());
    assert_eq!(
        std::fs::read(&p).unwrap()[2095],
        0,
        "unknown autoclear bits survived a writer"
    );
}

#[test]
fn check_finds_and_repairs_stray_padding_bits() {
    let d = tmpdir("rules-check");
    // 10 clusters: bits 10..16 of the two bitmap bytes are padding.
    let p = overlay(
        &d,
        "o",
        None,
        &[("size", "40960"), ("cluster_size", "4096")],
    );
    {
        let img = Image::open(&p, &rw()).unwrap();
        img.write(&[1; 4096], 0).unwrap();
        let r = img.check(cowblk::format::check::Repair::None).unwrap();
        assert_eq!((r.leaks, r.corruptions), (0, 0), "{:?}", r.messages);
        assert_eq!(r.allocated_clusters, Some(1));
        img.close().unwrap();
    }
    let mut b = std::fs::read(&p).unwrap();
    b[2561] |= 0x80;
    std::fs::write(&p, &b).unwrap();
    let img = Image::open(&p, &ro()).unwrap();
    let mut seen = 0;
    let r = img
        .check_progress(cowblk::format::check::Repair::None, &mut |done, total| {
            assert!(done <= total);
            seen += 1;
        })
        .unwrap();
    assert!(seen > 0, "no progress reported");
    assert_eq!(r.leaks, 1, "{:?}", r.messages);
    assert_eq!(r.allocated_clusters, Some(1));
    drop(img);
    let img = Image::open(&p, &rw()).unwrap();
    let r = img.check(cowblk::format::check::Repair::Leaks).unwrap();
    assert_eq!(r.leaks_fixed, 1);
    img.close().unwrap();
    assert_eq!(std::fs::read(&p).unwrap()[2561], 0);
    let img = Image::open(&p, &ro()).unwrap();
    assert_eq!(
        img.check(cowblk::format::check::Repair::None)
            .unwrap()
            .leaks,
        0
    );
}
