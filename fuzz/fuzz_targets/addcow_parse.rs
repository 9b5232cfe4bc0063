//! The add-cow header and allocation bitmap on arbitrary bytes: a header
//! that parses obeys the format's limits and survives a serialise/parse
//! round trip; the bitmap's run lengths agree with the bits as stored,
//! before and after changes. Errors are fine; panics, hangs, unbounded
//! allocations and wrong answers are not.
#![no_main]

use cowblk::format::addcow::bitmap::Bitmap;
use cowblk::format::addcow::header::{
    self, Header, AUTOCLEAR_KNOWN, HEADER_SIZE, MAX_CLUSTER_BITS, MAX_SIZE, MIN_CLUSTER_BITS,
};
use cowblk::io::fault::MemStorage;
use cowblk::io::BlockFile;
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    let _ = header::probe(data);
    if let Ok(h) = Header::parse(data) {
        assert!((MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&h.cluster_bits));
        assert!(h.size <= MAX_SIZE);
        assert!(!h.image_file.is_empty());
        assert!(Header::bitmap_len(h.size, h.cluster_bits) <= MAX_SIZE >> (MIN_CLUSTER_BITS + 3));
        let bytes = h.serialize().expect("a parsed header serialises");
        assert_eq!(bytes.len() as u64, HEADER_SIZE);
        let again = Header::parse(&bytes).expect("a serialised header parses");
        let mut want = h.clone();
        // Unknown autoclear bits are dropped on write, by design.
        want.autoclear &= AUTOCLEAR_KNOWN;
        assert_eq!(again, want);
    }
    bitmap(data);
});

/// Bit `n` of a bitmap stored at `base` in `file`, as the format lays it
/// out (least significant bit first).
fn bit(file: &[u8], base: usize, n: u64) -> bool {
    file.get(base + (n / 8) as usize)
        .is_some_and(|b| b & (1 << (n % 8)) != 0)
}

/// The bitmap over the fuzzed bytes (first byte: where it starts and how
/// many bits it has; a tiny cache so blocks are evicted and reloaded).
fn bitmap(data: &[u8]) {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let base = if ctl & 1 != 0 {
        HEADER_SIZE as usize
    } else {
        0
    };
    let mut file = rest.to_vec();
    file.resize(file.len().max(base), 0);
    let bits = ((file.len() - base) as u64 * 8).saturating_sub((ctl >> 1) as u64 % 8);
    if bits == 0 {
        return;
    }
    let st = MemStorage::new();
    st.insert("bm", file.clone());
    st.insert("data", Vec::new());
    let f: Arc<dyn BlockFile> = st.file("bm").unwrap();
    let d: Arc<dyn BlockFile> = st.file("data").unwrap();
    let bm = Bitmap::new(f.clone(), d, base as u64, bits, 0);
    let mut model: Vec<bool> = (0..bits).map(|n| bit(&file, base, n)).collect();
    compare(&bm, &model, ctl);
    // Changes driven by the bytes themselves: set or clear ranges.
    for w in rest.chunks_exact(4).take(16) {
        let start = u16::from_le_bytes([w[0], w[1]]) as u64 % bits;
        let end = (start + u16::from_le_bytes([w[2], w[3]]) as u64 % 4096).min(bits);
        let value = w[0] & 0x80 != 0;
        bm.set_range(start, end, value)
            .expect("set_range in memory");
        for b in &mut model[start as usize..end as usize] {
            *b = value;
        }
    }
    compare(&bm, &model, ctl);
    // What reaches the file is what the cache held.
    bm.write_back().expect("write-back in memory");
    let mut stored = vec![0u8; file.len()];
    f.read_at(&mut stored, 0).unwrap();
    for (n, &m) in model.iter().enumerate() {
        assert_eq!(bit(&stored, base, n as u64), m, "bit {n} after write-back");
    }
}

/// Walks the bitmap with `run` and checks every answer against the model.
fn compare(bm: &Bitmap, model: &[bool], ctl: u8) {
    let bits = model.len() as u64;
    let max = 1 + (ctl as u64 * 97) % (bits + 64);
    let mut n = 0;
    while n < bits {
        let (state, len) = bm.run(n, max).expect("run in range");
        assert!(
            len >= 1 && len <= max && n + len <= bits,
            "run({n}, {max}) = {len}"
        );
        let m = model[n as usize];
        assert_eq!(state, m, "state of bit {n}");
        for k in n..n + len {
            assert_eq!(
                model[k as usize], m,
                "run from {n} covers a different bit {k}"
            );
        }
        let end = n + len;
        if end < bits && len < max {
            assert_ne!(model[end as usize], m, "run from {n} stops early at {end}");
        }
        n = end;
    }
    assert!(bm.run(bits, 1).is_err());
}
