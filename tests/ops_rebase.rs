//! `rebase -b ""` (ops::rebase with no new backing file) is safe to
//! interrupt: a failure or power cut at any step leaves an image that reads
//! exactly as before, and running it again finishes the job, leaving the
//! raw image file equal to the guest view.

mod common;

use common::pattern;
use cowblk::io::fault::MemStorage;
use cowblk::ops;
use cowblk::{CreateOptions, Image, OpenOptions};
use std::path::Path;
use std::sync::Arc;

const SIZE: u64 = 256 << 10;

fn open(st: &Arc<MemStorage>) -> cowblk::Result<Image> {
    Image::open_in(st.clone(), Path::new("ov.add-cow"), &OpenOptions::default())
}

fn view(img: &Image) -> Vec<u8> {
    let mut v = vec![0u8; img.size() as usize];
    img.read(&mut v, 0).unwrap();
    v
}

/// base.raw: a pattern with a zero hole; an add-cow overlay with a few
/// writes of its own; all durable.
fn setup() -> MemStorage {
    let st = MemStorage::new();
    let mut base = pattern(SIZE as usize, 3);
    base[64 << 10..128 << 10].fill(0);
    st.insert("base.raw", base);
    let st = Arc::new(st);
    let mut o = CreateOptions::new();
    o.set("backing_file", "base.raw")
        .set("backing_fmt", "raw")
        .set("image_file", "ov.img")
        .set("cluster_size", "4096");
    Image::create_in(st.clone(), Path::new("ov.add-cow"), "add-cow", &o).unwrap();
    let img = open(&st).unwrap();
    img.write(&[0x5a; 6000], 10_000).unwrap();
    img.write_zeroes(200 << 10, 8192).unwrap();
    img.close().unwrap();
    Arc::try_unwrap(st).ok().unwrap().crash(|_, _| true)
}

#[test]
fn detach_survives_failure_and_power_cut_at_every_step() {
    let st0 = Arc::new(setup());
    let want = view(&open(&st0).unwrap());
    // Count the operations a full run takes.
    let (total, with_close) = {
        let st = Arc::new(st0.crash(|_, _| true));
        let img = open(&st).unwrap();
        st.reset_count();
        ops::rebase(&img, None, false, &mut ops::no_progress).unwrap();
        let t = st.op_count();
        img.close().unwrap();
        (t, st.op_count())
    };
    assert!(total > 10, "a detach takes several steps ({total})");
    // Failing from step n on: inside the rebase, or in the close after it.
    for n in 0..with_close + 1 {
        for keep_mode in 0..3 {
            let st = Arc::new(st0.crash(|_, _| true));
            {
                let img = open(&st).unwrap();
                st.reset_count();
                st.fail_from(Some(n));
                let r = ops::rebase(&img, None, false, &mut ops::no_progress);
                assert_eq!(r.is_err(), n < total, "step {n} of {total}");
                let _ = img.close();
            }
            // Power cut: keep none, all, or every other unflushed write.
            let after = Arc::new(st.crash(|_, i| match keep_mode {
                0 => false,
                1 => true,
                _ => i % 2 == 0,
            }));
            let img = open(&after).unwrap_or_else(|e| panic!("step {n}/{keep_mode}: {e}"));
            assert!(
                view(&img) == want,
                "step {n}, cut {keep_mode}: the view changed"
            );
            // Running it again completes the detach.
            ops::rebase(&img, None, false, &mut ops::no_progress).unwrap();
            assert!(img.backing_spec().is_none());
            img.close().unwrap();
            let img = open(&after).unwrap();
            assert!(view(&img) == want, "step {n}, cut {keep_mode}: after rerun");
            let raw = after.file("ov.img").unwrap().contents();
            assert!(raw == want, "step {n}, cut {keep_mode}: raw file differs");
        }
    }
}
