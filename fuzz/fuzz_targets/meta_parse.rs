//! The key/value metadata store parser (src/meta/store.rs) on arbitrary
//! bytes: errors are fine, panics and unbounded allocations are not; a
//! store that parses rebuilds to one that parses to the same pairs.
#![no_main]

use cowblk::meta::store;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(st) = store::parse_all(data) else {
        return;
    };
    let pairs: Vec<(&str, &[u8])> = st
        .entries
        .iter()
        .map(|e| (e.key.as_str(), &data[e.offset as usize..(e.offset + e.len) as usize]))
        .collect();
    let again = store::build(st.superblock.generation, &pairs).expect("a parsed store rebuilds");
    let st2 = store::parse_all(&again).expect("a built store parses");
    let keys = |s: &store::Store| s.entries.iter().map(|e| e.key.clone()).collect::<Vec<_>>();
    assert_eq!(keys(&st), keys(&st2));
    for (e, (_, v)) in st2.entries.iter().zip(&pairs) {
        assert_eq!(&again[e.offset as usize..(e.offset + e.len) as usize], *v);
    }
});
