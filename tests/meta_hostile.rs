//! Hostile metadata inside images: store pointers past the file or into
//! other structures, damaged stores, absurd sizes. Each is refused with an
//! error naming the problem; nothing panics, and a change refuses to
//! build on a damaged store rather than spreading it.

mod common;

use byteorder::{BigEndian, ByteOrder};
use common::tmpdir;
use cowblk::format::Repair;
use cowblk::{CreateOptions, Image, OpenOptions};
use std::path::{Path, PathBuf};

fn ro(p: &Path) -> cowblk::Result<Image> {
    Image::open(
        p,
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
}

fn addcow_with_store(d: &Path) -> PathBuf {
    let p = d.join("h.add-cow");
    let mut o = CreateOptions::new();
    o.set("size", "1M").set("image_file", "h.img");
    Image::create(&p, "add-cow", &o).unwrap();
    let img = Image::open(&p, &OpenOptions::default()).unwrap();
    img.meta_set("license", b"MIT").unwrap();
    img.meta_set("logo", &[7u8; 5000]).unwrap();
    img.close().unwrap();
    p
}

fn patch(p: &Path, off: usize, bytes: &[u8]) {
    let mut b = std::fs::read(p).unwrap();
    if b.len() < off + bytes.len() {
        b.resize(off + bytes.len(), 0);
    }
    b[off..off + bytes.len()].copy_from_slice(bytes);
    std::fs::write(p, b).unwrap();
}

fn find(p: &Path, what: &[u8]) -> usize {
    let b = std::fs::read(p).unwrap();
    b.windows(what.len())
        .position(|w| w == what)
        .expect("pattern present")
}

#[test]
fn addcow_store_pointers_and_damaged_stores_are_refused() {
    let d = tmpdir("meta-hostile-addcow");
    let cases: Vec<(&str, u64, u64, &str)> = vec![
        ("into the bitmap", 2560, 4096, "must lie past the bitmap"),
        ("past the file", 1 << 20, 4096, "within the file"),
        ("unaligned", 4097, 100, "512-byte aligned"),
        ("too short", 4096, 10, "at least 64 bytes"),
        ("wrapping", u64::MAX - 511, 4096, "metadata store"),
    ];
    for (what, off, len, msg) in cases {
        let p = addcow_with_store(&d);
        let mut f = [0u8; 16];
        BigEndian::write_u64(&mut f[..8], off);
        BigEndian::write_u64(&mut f[8..], len);
        patch(&p, 2112, &f);
        let e = ro(&p).err().unwrap_or_else(|| panic!("{what}: opened"));
        assert!(e.to_string().contains(msg), "{what}: {e}");
    }
    // The header names another superblock than the one in the file.
    let p = addcow_with_store(&d);
    patch(&p, 2128, &[0, 0, 0, 1]);
    let img = ro(&p).unwrap();
    let e = img.meta_list().unwrap_err().to_string();
    assert!(e.contains("differs from the one the header names"), "{e}");
    drop(img);
    // A damaged directory, then a damaged value: reads refuse, a change
    // refuses too (it would carry the damage into the new store).
    let p = addcow_with_store(&d);
    let sb = find(&p, b"cowblkKV");
    patch(&p, sb + 64 + 30, b"\xff");
    let img = Image::open(&p, &OpenOptions::default()).unwrap();
    let e = img.meta_get("license").unwrap_err().to_string();
    assert!(e.contains("directory checksum mismatch"), "{e}");
    let e = img.meta_set("x", b"y").unwrap_err().to_string();
    assert!(e.contains("directory checksum mismatch"), "{e}");
    // check reports it as a corruption and does not "repair" it away.
    for repair in [Repair::None, Repair::All] {
        let r = img.check(repair).unwrap();
        assert_eq!(r.corruptions, 1, "{:?}", r.messages);
        assert!(r.messages.iter().any(|m| m.contains("key/value metadata")));
    }
    drop(img);
    let p = addcow_with_store(&d);
    let at = find(&p, &[7u8; 5000]);
    patch(&p, at + 100, b"\x08");
    let img = Image::open(&p, &OpenOptions::default()).unwrap();
    assert_eq!(img.meta_get("license").unwrap().unwrap(), b"MIT");
    let e = img.meta_get("logo").unwrap_err().to_string();
    assert!(e.contains("'logo' fails its checksum"), "{e}");
    let e = img.meta_delete("license").unwrap_err().to_string();
    assert!(e.contains("'logo' fails its checksum"), "{e}");
    // Guest I/O is unaffected by a damaged store.
    img.write(&[1u8; 512], 0).unwrap();
    let mut back = [0u8; 512];
    img.read(&mut back, 0).unwrap();
    assert_eq!(back, [1u8; 512]);
}

fn qcow2_with_store(d: &Path, name: &str) -> PathBuf {
    let p = d.join(name);
    let mut o = CreateOptions::new();
    o.set("size", "4M");
    Image::create(&p, "qcow2", &o).unwrap();
    let img = Image::open(&p, &OpenOptions::default()).unwrap();
    img.meta_set("license", b"MIT").unwrap();
    img.close().unwrap();
    p
}

/// Offset of the first snapshot table entry.
fn snap_entry(p: &Path) -> usize {
    let b = std::fs::read(p).unwrap();
    assert_eq!(BigEndian::read_u32(&b[60..64]), 1);
    BigEndian::read_u64(&b[64..72]) as usize
}

#[test]
fn qcow2_hostile_metadata_snapshots_are_refused() {
    let d = tmpdir("meta-hostile-qcow2");
    // disk_size (extra data bytes 8..16) absurd.
    let p = qcow2_with_store(&d, "a.qcow2");
    let e = snap_entry(&p);
    patch(&p, e + 40 + 8, &(1u64 << 60).to_be_bytes());
    let img = ro(&p).unwrap();
    let m = img.meta_list().unwrap_err().to_string();
    assert!(m.contains("metadata store") && m.contains("at most"), "{m}");
    // The L1 table past the end of the file.
    let p = qcow2_with_store(&d, "b.qcow2");
    let e = snap_entry(&p);
    patch(&p, e, &(1u64 << 40).to_be_bytes());
    let img = ro(&p).unwrap();
    let m = img.meta_list().unwrap_err().to_string();
    assert!(m.contains("L1 table lies outside the image file"), "{m}");
    // An L1 table too small for the store.
    let p = qcow2_with_store(&d, "c.qcow2");
    let e = snap_entry(&p);
    patch(&p, e + 8, &0u32.to_be_bytes());
    let img = ro(&p).unwrap();
    let m = img.meta_list().unwrap_err().to_string();
    assert!(m.contains("cannot map"), "{m}");
    // The store's directory damaged: reads and changes refuse, and the
    // image stays consistent for QEMU.
    let p = qcow2_with_store(&d, "d.qcow2");
    let sb = find(&p, b"cowblkKV");
    patch(&p, sb + 64 + 30, b"\xff");
    let img = Image::open(&p, &OpenOptions::default()).unwrap();
    let m = img.meta_get("license").unwrap_err().to_string();
    assert!(m.contains("directory checksum mismatch"), "{m}");
    assert!(img.meta_set("x", b"y").is_err());
    let r = img.check(Repair::None).unwrap();
    assert_eq!(r.corruptions, 1, "{:?}", r.messages);
    img.close().unwrap();
    let o = std::process::Command::new("qemu-img")
        .args(["check"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    // The L2 entry of the store's first cluster made compressed.
    let p = qcow2_with_store(&d, "e.qcow2");
    let b = std::fs::read(&p).unwrap();
    let e = snap_entry(&p);
    let l1 = BigEndian::read_u64(&b[e..e + 8]) as usize;
    let l2 = (BigEndian::read_u64(&b[l1..l1 + 8]) & 0x00ff_ffff_ffff_fe00) as usize;
    let w = BigEndian::read_u64(&b[l2..l2 + 8]);
    patch(&p, l2, &(w | 1 << 62).to_be_bytes());
    let img = ro(&p).unwrap();
    let m = img.meta_list().unwrap_err().to_string();
    assert!(m.contains("not a plain allocated cluster"), "{m}");
}

#[test]
fn raw_says_not_supported() {
    let d = tmpdir("meta-hostile-raw");
    let p = d.join("r.raw");
    let mut o = CreateOptions::new();
    o.set("size", "1M");
    Image::create(&p, "raw", &o).unwrap();
    let img = Image::open(
        &p,
        &OpenOptions {
            format: Some("raw".into()),
            ..Default::default()
        },
    )
    .unwrap();
    for e in [
        img.meta_list().unwrap_err(),
        img.meta_get("k").unwrap_err(),
        img.meta_set("k", b"v").unwrap_err(),
        img.meta_delete("k").unwrap_err(),
    ] {
        assert_eq!(e.errno(), libc::ENOTSUP);
        assert!(e.to_string().contains("not supported by raw"), "{e}");
    }
    // Keys are checked before anything else.
    let long = "k".repeat(256);
    assert!(img
        .meta_set(&long, b"v")
        .unwrap_err()
        .to_string()
        .contains("1 to 255"));
}
