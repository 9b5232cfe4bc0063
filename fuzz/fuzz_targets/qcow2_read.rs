//! Opens arbitrary bytes as a qcow2 image (in memory) and reads it all:
//! data, block status, info and every snapshot. Errors are fine; panics,
//! hangs and unbounded allocations are not.
#![no_main]

use cowblk::io::fault::MemStorage;
use cowblk::{Image, OpenOptions, SnapshotRef};
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use std::sync::Arc;

/// Guest bytes read per input, at most.
const READ_LIMIT: u64 = 4 << 20;

fn read_all(img: &Image) {
    let size = img.size().min(READ_LIMIT);
    let mut buf = vec![0u8; 65536];
    let mut off = 0;
    while off < size {
        let n = (size - off).min(65536);
        let _ = img.read(&mut buf[..n as usize], off);
        if let Ok((_, m)) = img.block_status(off, n) {
            assert!(m > 0 && m <= n);
        }
        let _ = img.chain_status(off, n);
        off += n;
    }
}

fuzz_target!(|data: &[u8]| {
    let st = Arc::new(MemStorage::new());
    st.insert("fuzz.qcow2", data.to_vec());
    let opts = OpenOptions {
        format: Some("qcow2".into()),
        read_only: true,
        no_backing: true,
        cache_size: 4096,
        ..Default::default()
    };
    let Ok(img) = Image::open_in(st.clone(), Path::new("fuzz.qcow2"), &opts) else {
        return;
    };
    read_all(&img);
    let _ = img.info();
    for s in img.snapshots().into_iter().take(4) {
        let o = OpenOptions {
            snapshot: Some(SnapshotRef::Id(s.id)),
            ..opts.clone()
        };
        if let Ok(i) = Image::open_in(st.clone(), Path::new("fuzz.qcow2"), &o) {
            read_all(&i);
        }
    }
});
