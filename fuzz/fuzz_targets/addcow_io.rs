//! Opens arbitrary bytes as an add-cow file (in memory) over an image file
//! and, optionally, a raw backing file; reads it all, then, read-write,
//! writes, zeroes, discards, truncates and flushes, checking against a
//! model that every write reads back, and reopens the result to check that
//! it persisted. Errors are fine; panics, hangs, unbounded allocations and
//! wrong data are not.
//!
//! Input: 16 control bytes, then the add-cow file. Control: [0..2] image
//! file length in 512-byte units, [2] flags (1: read-write, 2: a backing
//! file), [3] backing file length in 4 KiB units, [4..16] three operations.
#![no_main]

use cowblk::format::addcow::header::Header;
use cowblk::io::fault::MemStorage;
use cowblk::{Image, OpenOptions};
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use std::sync::Arc;

const TOP: &str = "fuzz.add-cow";
const CTL: usize = 16;
/// Guest bytes read or modelled per input, at most; requests stay below.
const LIMIT: u64 = 1 << 20;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i / 512) as u8 ^ (i as u8) ^ seed)
        .collect()
}

/// The first `min(size, LIMIT)` guest bytes (`None` if a read fails).
fn read_all(img: &Image) -> Option<Vec<u8>> {
    let len = img.size().min(LIMIT);
    let mut buf = vec![0u8; len as usize];
    let mut ok = true;
    for (i, chunk) in buf.chunks_mut(65536).enumerate() {
        let off = i as u64 * 65536;
        ok &= img.read(chunk, off).is_ok();
        if let Ok((_, m)) = img.block_status(off, chunk.len() as u64) {
            assert!(m > 0 && m <= chunk.len() as u64);
        }
    }
    ok.then_some(buf)
}

fn open(st: &Arc<MemStorage>, read_only: bool, backing: bool) -> Option<Image> {
    let opts = OpenOptions {
        format: Some("add-cow".into()),
        read_only,
        no_backing: !backing,
        cache_size: 8192,
        ..Default::default()
    };
    Image::open_in(st.clone(), Path::new(TOP), &opts).ok()
}

fuzz_target!(|data: &[u8]| {
    if data.len() < CTL {
        return;
    }
    let (ctl, file) = data.split_at(CTL);
    let st = Arc::new(MemStorage::new());
    st.insert(TOP, file.to_vec());
    let img_len = (u16::from_le_bytes([ctl[0], ctl[1]]) as usize % 8192) * 512;
    let flags = ctl[2];
    let mut backing = false;
    // Give the files the header names some contents.
    if let Ok(h) = Header::parse(file) {
        if h.image_file != TOP {
            st.insert(h.image_file.as_str(), pattern(img_len, 0x5a));
        }
        if flags & 2 != 0
            && !h.backing_file.is_empty()
            && h.backing_file != TOP
            && h.backing_file != h.image_file
        {
            st.insert(
                h.backing_file.as_str(),
                pattern(ctl[3] as usize * 4096, 0xa7),
            );
            backing = true;
        }
    }
    // Read-only first, with the backing file if it opens, else without.
    let ro = open(&st, true, backing).or_else(|| {
        backing = false;
        open(&st, true, false)
    });
    let Some(ro) = ro else {
        return;
    };
    let before = read_all(&ro);
    let _ = ro.info();
    let _ = ro.check(cowblk::format::check::Repair::None);
    drop(ro);
    if flags & 1 == 0 {
        return;
    }
    let Some(img) = open(&st, false, backing) else {
        return;
    };
    // The model covers the whole image, or nothing if it is too big.
    let mut model = before.filter(|_| img.size() <= LIMIT);
    for (i, op) in ctl[4..].chunks_exact(4).enumerate() {
        let size = img.size();
        let span = size.min(LIMIT);
        if span == 0 && op[0] % 5 != 3 {
            continue;
        }
        let off = (u16::from_le_bytes([op[1], op[2]]) as u64 * span) >> 16;
        let len = ((op[3] as u64 + 1) * 257).min(span - off);
        match op[0] % 5 {
            0 => {
                let buf = pattern(len as usize, i as u8 + 1);
                if img.write(&buf, off).is_ok() {
                    let mut back = vec![0u8; len as usize];
                    img.read(&mut back, off).expect("read after a write");
                    assert!(back == buf, "write at {off} (+{len}) does not read back");
                    if let Some(m) = &mut model {
                        m[off as usize..(off + len) as usize].copy_from_slice(&buf);
                    }
                } else {
                    model = None;
                }
            }
            1 => {
                if img.write_zeroes(off, len).is_ok() {
                    let mut back = vec![1u8; len as usize];
                    img.read(&mut back, off).expect("read after write_zeroes");
                    assert!(
                        back.iter().all(|&b| b == 0),
                        "write_zeroes at {off} (+{len})"
                    );
                    if let Some(m) = &mut model {
                        m[off as usize..(off + len) as usize].fill(0);
                    }
                } else {
                    model = None;
                }
            }
            2 => {
                // What a discarded range reads is the format's choice:
                // learn it, then expect it to stay.
                let ok = img.discard(off, len).is_ok();
                let mut back = vec![0u8; len as usize];
                match (&mut model, ok && img.read(&mut back, off).is_ok()) {
                    (Some(m), true) => m[off as usize..(off + len) as usize].copy_from_slice(&back),
                    _ => model = None,
                }
            }
            3 => {
                // Shrink or grow within the limit: grown bytes read zeros.
                let new = (op[1] as u64 * LIMIT) >> 8;
                if img.truncate(new).is_ok() {
                    assert_eq!(img.size(), new);
                    if let Some(m) = &mut model {
                        m.resize(new as usize, 0);
                    }
                } else {
                    model = None;
                }
            }
            _ => {
                let _ = img.flush();
            }
        }
    }
    if let Some(m) = &model {
        assert!(
            read_all(&img).as_ref() == Some(m),
            "contents differ from the model"
        );
    }
    if img.close().is_err() {
        return;
    }
    // Everything survived the close.
    if let (Some(m), Some(again)) = (&model, open(&st, true, backing)) {
        assert!(
            read_all(&again).as_ref() == Some(m),
            "contents changed across reopen"
        );
    }
});
