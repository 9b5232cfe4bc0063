//! Header, extension, feature table, snapshot entry, L2 entry and
//! decompression parsing on arbitrary bytes: errors are fine, panics,
//! hangs and unbounded allocations are not.
#![no_main]

use cowblk::format::qcow2::header::{Compression, Header};
use cowblk::format::qcow2::{compress, features, l2, snapshot};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = Header::parse(data) {
        let _ = header_limits_hold(&h);
    }
    let _ = features::parse_name_table(data);
    if data.len() >= snapshot::ENTRY_HEADER {
        let _ = snapshot::parse_entry(data);
    }
    if data.len() >= 17 {
        let bits = 9 + (data[0] % 13) as u32;
        let g = l2::Geometry {
            cluster_bits: bits,
            extended: data[0] & 0x80 != 0 && bits >= 14,
            data_file: data[0] & 0x40 != 0,
        };
        let e = u64::from_be_bytes(data[1..9].try_into().unwrap());
        let b = u64::from_be_bytes(data[9..17].try_into().unwrap());
        for sc in 0..32 {
            let _ = g.kind(e, b, sc);
        }
        let _ = g.compressed(e);
        // Output bounded to one (small) cluster whatever the input says.
        let mut out = vec![0u8; 1 << (9 + (data[0] % 4))];
        let kind = if data[0] & 0x20 != 0 {
            Compression::Zstd
        } else {
            Compression::Zlib
        };
        let _ = compress::decompress(kind, &data[17..], &mut out);
    }
});

/// What a successful parse guarantees.
fn header_limits_hold(h: &Header) -> Option<()> {
    assert!((9..=21).contains(&h.cluster_bits));
    assert!(h.refcount_order <= 6);
    assert!(h.l1_size as u64 * 8 <= 32 << 20);
    assert!(h.nb_snapshots <= 65536);
    assert!(h.l1_table_offset < 1 << 56);
    Some(())
}
