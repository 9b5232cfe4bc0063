use cowblk::{CreateOptions, Image, OpenOptions};
use std::path::PathBuf;

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cowblk-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn overlay_reads_backing_and_cows_partial_clusters() {
    let d = tmpdir("basic");
    let base = d.join("base.raw");
    let mut o = CreateOptions::new();
    o.set("size", "1M");
    Image::create(&base, "raw", &o).unwrap();
    let b = Image::open(&base, &OpenOptions::default()).unwrap();
    let pat: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    b.write(&pat, 0).unwrap();
    b.close().unwrap();

    let ov = d.join("ov.add-cow");
    let mut o = CreateOptions::new();
    o.set("backing_file", "base.raw")
        .set("backing_fmt", "raw")
        .set("image_file", "ov.img")
        .set("cluster_size", "64k");
    Image::create(&ov, "add-cow", &o).unwrap();
    let img = Image::open(&ov, &OpenOptions::default()).unwrap();
    assert_eq!(img.size(), 1 << 20);
    let mut buf = vec![0u8; 1 << 20];
    img.read(&mut buf, 0).unwrap();
    assert_eq!(buf, pat);
    img.write(&[0xaa; 100], 70_000).unwrap();
    let (alloc, n) = img.is_allocated(0, 1 << 20).unwrap();
    assert!(!alloc);
    assert_eq!(n, 65536);
    let (alloc, n) = img.is_allocated(65536, (1 << 20) - 65536).unwrap();
    assert!(alloc);
    assert_eq!(n, 65536);
    img.close().unwrap();

    let img = Image::open(&ov, &OpenOptions::default()).unwrap();
    img.read(&mut buf, 0).unwrap();
    let mut expect = pat.clone();
    expect[70_000..70_100].fill(0xaa);
    assert_eq!(buf, expect);
    // The raw image holds the whole copied cluster.
    let raw = std::fs::read(d.join("ov.img")).unwrap();
    assert_eq!(&raw[65536..131072], &expect[65536..131072]);
}
