//! A raw image opened read-write by probing may not be turned into another
//! format by a guest write to its first sector (QEMU refuses it with EPERM):
//! at the next probing open, a qcow2 header written by the guest could name
//! any host file as its backing or data file.

mod common;

use cowblk::{Error, Image, OpenOptions};

fn qcow2_magic() -> Vec<u8> {
    let mut b = vec![0u8; 512];
    b[..8].copy_from_slice(b"QFI\xfb\0\0\0\x03");
    b
}

#[test]
fn a_probed_raw_image_keeps_its_format() {
    let d = common::tmpdir("probe-protect");
    let p = d.join("disk.raw");
    std::fs::write(&p, vec![0u8; 1 << 20]).unwrap();
    let probed = Image::open(&p, &OpenOptions::default()).unwrap();
    assert!(probed.probed_raw());
    // The magic, whole or in a write that only touches its bytes, is refused.
    let e = probed.write(&qcow2_magic(), 0).unwrap_err();
    assert!(matches!(e, Error::PermissionDenied(_)), "{e}");
    assert_eq!(e.errno(), libc::EPERM);
    let e = probed.write(b"QFI\xfb\0\0\0\x02", 0).unwrap_err();
    assert!(matches!(e, Error::PermissionDenied(_)), "{e}");
    // Nothing reached the file.
    let mut first = [0u8; 8];
    probed.read(&mut first, 0).unwrap();
    assert_eq!(first, [0u8; 8]);
    // Ordinary data in sector 0, and the magic past it, are written.
    probed.write(&[0x5a; 512], 0).unwrap();
    probed.write(&qcow2_magic(), 512).unwrap();
    probed.close().unwrap();
    // Named explicitly, raw takes any bytes; read-only opens are not marked.
    let named = OpenOptions {
        format: Some("raw".into()),
        ..Default::default()
    };
    let raw = Image::open(&p, &named).unwrap();
    assert!(!raw.probed_raw());
    raw.write(&qcow2_magic(), 0).unwrap();
    raw.close().unwrap();
    let ro = OpenOptions {
        read_only: true,
        format: Some("raw".into()),
        ..Default::default()
    };
    let mut back = [0u8; 8];
    Image::open(&p, &ro).unwrap().read(&mut back, 0).unwrap();
    assert_eq!(&back, b"QFI\xfb\0\0\0\x03");
    std::fs::remove_dir_all(&d).unwrap();
}
