//! Opens arbitrary bytes as a qcow2 image (in memory) read-write, writes,
//! zeroes, discards, flushes and closes. Errors are fine; panics, hangs
//! and unbounded growth of the file are not.
#![no_main]

use cowblk::io::fault::MemStorage;
use cowblk::{Image, OpenOptions};
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    let st = Arc::new(MemStorage::new());
    let path = Path::new("fuzz.qcow2");
    st.insert(path, data.to_vec());
    let opts = OpenOptions {
        format: Some("qcow2".into()),
        no_backing: true,
        cache_size: 16384,
        ..Default::default()
    };
    let Ok(img) = Image::open_in(st.clone(), path, &opts) else {
        return;
    };
    // The operations come from the input's last bytes (deterministic).
    let mut seed = data
        .iter()
        .rev()
        .take(16)
        .fold(0x9e37_79b9_7f4a_7c15u64, |a, &b| a.rotate_left(8) ^ b as u64);
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let size = img.size().min(64 << 20);
    if size > 0 {
        for _ in 0..8 {
            let off = next() % size;
            let len = (1 + next() % 70000).min(size - off);
            let _ = match next() % 4 {
                0 => img.write_zeroes(off, len),
                1 => img.discard(off, len),
                _ => img.write(&vec![0x5a; len as usize], off),
            };
        }
    }
    let _ = img.flush();
    let _ = img.close();
    // Growth is bounded by what was written plus metadata (a refcount
    // table is at most 8 MiB), not by what the image claims.
    let len = st.file(path).map_or(0, |f| f.contents().len());
    assert!(len <= data.len() + (48 << 20), "file grew to {len}");
});
