//! Randomly damaged add-cow files: every open either fails with an error
//! or yields an image that reads and writes without panicking, and the
//! backing file is never written.

mod common;

use common::{pattern, tmpdir, Rng};
use cowblk::{CreateOptions, Image, OpenOptions};

#[test]
fn mutated_headers_never_panic_or_touch_the_backing_file() {
    let d = tmpdir("hostile");
    std::fs::write(d.join("base.raw"), pattern(256 << 10, 3)).unwrap();
    let p = d.join("o.add-cow");
    let mut o = CreateOptions::new();
    o.set("backing_file", "base.raw")
        .set("backing_fmt", "raw")
        .set("image_file", "o.img")
        .set("cluster_size", "4k");
    Image::create(&p, "add-cow", &o).unwrap();
    let good = std::fs::read(&p).unwrap();
    let base_before = std::fs::read(d.join("base.raw")).unwrap();
    let mut r = Rng::new(42);
    let (mut opened, mut refused) = (0, 0);
    for round in 0..1500 {
        let mut b = good.clone();
        // Damage a few bytes, mostly in the fields that matter.
        for _ in 0..1 + r.below(4) {
            let i = match r.below(4) {
                0 => r.below(12),
                1 => 2060 + r.below(60),
                2 => 1036 + r.below(16),
                _ => r.below(b.len() as u64),
            } as usize;
            b[i] = r.next() as u8;
        }
        if round % 10 == 0 {
            b.truncate(r.below(b.len() as u64) as usize);
        }
        std::fs::write(&p, &b).unwrap();
        let opts = OpenOptions {
            format: Some("add-cow".into()),
            ..Default::default()
        };
        match Image::open(&p, &opts) {
            Err(e) => {
                refused += 1;
                assert!(!e.to_string().is_empty());
                assert!(e.errno() > 0);
            }
            Ok(img) => {
                opened += 1;
                let size = img.size();
                let mut buf = vec![0u8; 8192];
                for off in [0, size / 2, size.saturating_sub(8192)] {
                    let n = 8192.min(size - off.min(size)) as usize;
                    let _ = img.read(&mut buf[..n], off);
                    let _ = img.write(&buf[..n.min(700)], off);
                }
                let _ = img.truncate(size / 2 + 1);
                let _ = img.close();
            }
        }
        // Restore the image file size so later rounds start alike.
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .open(d.join("o.img"))
            .and_then(|f| f.set_len(256 << 10));
    }
    assert!(
        opened > 50 && refused > 50,
        "opened {opened}, refused {refused}"
    );
    assert_eq!(std::fs::read(d.join("base.raw")).unwrap(), base_before);
}
