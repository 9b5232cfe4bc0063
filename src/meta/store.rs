//! The store layout: a 64-byte superblock, a sorted directory, and value
//! bytes, all big-endian (docs/specs/metadata.txt, section 2). Parsing
//! validates every field before anything is sized by it; building lays out
//! a new store from keys and values.

use crate::error::{Error, Result};
use byteorder::{BigEndian, ByteOrder};

pub const MAGIC: &[u8; 8] = b"cowblkKV";
pub const VERSION: u32 = 1;
pub const SUPERBLOCK_LEN: usize = 64;
/// Keys are 1 to 255 bytes of UTF-8.
pub const MAX_KEY: usize = 255;
/// At most this many keys in one store.
pub const MAX_ENTRIES: u64 = 1 << 20;
/// One value is at most 4 GiB.
pub const MAX_VALUE: u64 = 1 << 32;
/// Fixed part of a directory entry (the key follows, then padding to 8).
const ENTRY_FIXED: usize = 24;

fn bad(msg: impl Into<String>) -> Error {
    Error::Corrupt(format!("metadata store: {}", msg.into()))
}

/// The superblock's fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub generation: u64,
    pub entries: u64,
    pub dir_offset: u64,
    pub dir_len: u64,
    pub dir_crc: u32,
    pub store_len: u64,
}

/// One key and where its value lies in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub offset: u64,
    pub len: u64,
    pub crc: u32,
}

/// A parsed directory: entries sorted by key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Store {
    pub superblock: Superblock,
    pub entries: Vec<Entry>,
}

fn entry_len(key_len: usize) -> usize {
    (ENTRY_FIXED + key_len).div_ceil(8) * 8
}

impl Superblock {
    /// Parses and checks the first 64 bytes of a store.
    pub fn parse(b: &[u8]) -> Result<Superblock> {
        let b = b
            .get(..SUPERBLOCK_LEN)
            .ok_or_else(|| bad("shorter than its 64-byte superblock"))?;
        if &b[..8] != MAGIC {
            return Err(bad("bad magic"));
        }
        if crc32c::crc32c(&b[..52]) != BigEndian::read_u32(&b[52..56]) {
            return Err(bad("superblock checksum mismatch"));
        }
        let version = BigEndian::read_u32(&b[8..12]);
        if version != VERSION {
            return Err(Error::Unsupported(format!(
                "metadata store version {version} (this build reads version {VERSION})"
            )));
        }
        let flags = BigEndian::read_u32(&b[12..16]);
        if flags != 0 {
            return Err(Error::Unsupported(format!(
                "metadata store flags {flags:#x}"
            )));
        }
        let s = Superblock {
            generation: BigEndian::read_u64(&b[16..24]),
            entries: BigEndian::read_u64(&b[24..32]),
            dir_offset: BigEndian::read_u64(&b[32..40]),
            dir_len: BigEndian::read_u64(&b[40..48]),
            dir_crc: BigEndian::read_u32(&b[48..52]),
            store_len: BigEndian::read_u64(&b[56..64]),
        };
        if s.entries > MAX_ENTRIES {
            return Err(bad(format!(
                "{} entries (at most {MAX_ENTRIES})",
                s.entries
            )));
        }
        if s.dir_offset < SUPERBLOCK_LEN as u64 || !s.dir_offset.is_multiple_of(8) {
            return Err(bad(format!("directory offset {}", s.dir_offset)));
        }
        // Each entry takes at least 32 bytes and at most 280.
        let (lo, hi) = (s.entries * 32, s.entries * entry_len(MAX_KEY) as u64);
        if s.dir_len < lo || s.dir_len > hi {
            return Err(bad(format!(
                "a directory of {} bytes for {} entries",
                s.dir_len, s.entries
            )));
        }
        match s.dir_offset.checked_add(s.dir_len) {
            Some(end) if end <= s.store_len => {}
            _ => return Err(bad("the directory lies past the store's end")),
        }
        Ok(s)
    }

    /// The 64 bytes of this superblock, checksummed.
    pub fn to_bytes(&self) -> [u8; SUPERBLOCK_LEN] {
        let mut b = [0u8; SUPERBLOCK_LEN];
        b[..8].copy_from_slice(MAGIC);
        BigEndian::write_u32(&mut b[8..12], VERSION);
        BigEndian::write_u64(&mut b[16..24], self.generation);
        BigEndian::write_u64(&mut b[24..32], self.entries);
        BigEndian::write_u64(&mut b[32..40], self.dir_offset);
        BigEndian::write_u64(&mut b[40..48], self.dir_len);
        BigEndian::write_u32(&mut b[48..52], self.dir_crc);
        let crc = crc32c::crc32c(&b[..52]);
        BigEndian::write_u32(&mut b[52..56], crc);
        BigEndian::write_u64(&mut b[56..64], self.store_len);
        b
    }
}

impl Store {
    /// Parses the directory `dir` (the superblock's `dir_len` bytes at its
    /// `dir_offset`) and checks every entry: UTF-8 keys of 1 to 255 bytes,
    /// strictly increasing, values inside the store, aligned, and
    /// overlapping neither each other nor the superblock or directory.
    pub fn parse(sb: Superblock, dir: &[u8]) -> Result<Store> {
        if dir.len() as u64 != sb.dir_len {
            return Err(bad("directory length differs from the superblock's"));
        }
        if crc32c::crc32c(dir) != sb.dir_crc {
            return Err(bad("directory checksum mismatch"));
        }
        let mut entries: Vec<Entry> = Vec::with_capacity(sb.entries as usize);
        let mut at = 0usize;
        for i in 0..sb.entries {
            let fixed = dir
                .get(at..at + ENTRY_FIXED)
                .ok_or_else(|| bad(format!("entry {i} lies past the directory's end")))?;
            let klen = BigEndian::read_u16(&fixed[0..2]) as usize;
            if klen == 0 || klen > MAX_KEY {
                return Err(bad(format!("entry {i} has a key of {klen} bytes")));
            }
            if BigEndian::read_u16(&fixed[2..4]) != 0 {
                return Err(bad(format!("entry {i}: reserved bytes are not zero")));
            }
            let e = Entry {
                crc: BigEndian::read_u32(&fixed[4..8]),
                offset: BigEndian::read_u64(&fixed[8..16]),
                len: BigEndian::read_u64(&fixed[16..24]),
                key: {
                    let k = dir
                        .get(at + ENTRY_FIXED..at + ENTRY_FIXED + klen)
                        .ok_or_else(|| bad(format!("entry {i}'s key lies past the directory")))?;
                    std::str::from_utf8(k)
                        .map_err(|_| bad(format!("entry {i}'s key is not UTF-8")))?
                        .to_owned()
                },
            };
            if e.len > MAX_VALUE || !e.offset.is_multiple_of(8) {
                return Err(bad(format!(
                    "entry {i} ('{}'): a value of {} bytes at offset {} (at most {MAX_VALUE} bytes, 8-byte aligned)",
                    e.key, e.len, e.offset
                )));
            }
            match e.offset.checked_add(e.len) {
                Some(end) if end <= sb.store_len => {}
                _ => {
                    return Err(bad(format!(
                        "entry {i} ('{}'): value lies past the store's end",
                        e.key
                    )))
                }
            }
            if let Some(prev) = entries.last() {
                if prev.key.as_bytes() >= e.key.as_bytes() {
                    return Err(bad(format!(
                        "keys out of order or repeated at entry {i} ('{}')",
                        e.key
                    )));
                }
            }
            entries.push(e);
            at += entry_len(klen);
        }
        if at as u64 != sb.dir_len {
            return Err(bad("directory has bytes past its last entry"));
        }
        // No value may overlap another or the fixed structures.
        let mut ranges: Vec<(u64, u64, String)> = entries
            .iter()
            .filter(|e| e.len > 0)
            .map(|e| (e.offset, e.offset + e.len, e.key.clone()))
            .collect();
        ranges.push((0, SUPERBLOCK_LEN as u64, "the superblock".into()));
        if sb.dir_len > 0 {
            ranges.push((
                sb.dir_offset,
                sb.dir_offset + sb.dir_len,
                "the directory".into(),
            ));
        }
        ranges.sort();
        for w in ranges.windows(2) {
            if w[1].0 < w[0].1 {
                return Err(bad(format!("'{}' overlaps '{}'", w[1].2, w[0].2)));
            }
        }
        Ok(Store {
            superblock: sb,
            entries,
        })
    }

    /// The entry for `key`.
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries
            .binary_search_by(|e| e.key.as_bytes().cmp(key.as_bytes()))
            .ok()
            .map(|i| &self.entries[i])
    }
}

/// Checks a key: 1 to 255 bytes (it is a `str`, so UTF-8).
pub fn check_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(Error::InvalidArgument(format!(
            "metadata keys are 1 to {MAX_KEY} bytes, not {}",
            key.len()
        )));
    }
    Ok(())
}

/// A new store holding `pairs` (any order; keys must be unique): the whole
/// store's bytes, superblock first, then the directory, then the values
/// each at an 8-byte boundary.
pub fn build(generation: u64, pairs: &[(&str, &[u8])]) -> Result<Vec<u8>> {
    build_aligned(generation, pairs, 8)
}

/// `build`, with every value of at least `align` bytes (a power of two,
/// at least 8) starting at a multiple of `align` in the store, so a format
/// whose allocation unit is `align` can share such values' units between
/// stores.
pub fn build_aligned(generation: u64, pairs: &[(&str, &[u8])], align: u64) -> Result<Vec<u8>> {
    if !align.is_power_of_two() || align < 8 {
        return Err(Error::InvalidArgument(format!(
            "metadata value alignment {align}"
        )));
    }
    let mut sorted: Vec<&(&str, &[u8])> = pairs.iter().collect();
    sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    for (i, (k, v)) in sorted.iter().enumerate() {
        check_key(k)?;
        if v.len() as u64 > MAX_VALUE {
            return Err(Error::TooLarge(format!("the value of '{k}'")));
        }
        if i > 0 && sorted[i - 1].0 == *k {
            return Err(Error::InvalidArgument(format!("key '{k}' given twice")));
        }
    }
    if sorted.len() as u64 > MAX_ENTRIES {
        return Err(Error::TooLarge(format!(
            "{} keys (at most {MAX_ENTRIES})",
            sorted.len()
        )));
    }
    let dir_len: usize = sorted.iter().map(|(k, _)| entry_len(k.len())).sum();
    let mut at = (SUPERBLOCK_LEN + dir_len) as u64;
    let mut dir = Vec::with_capacity(dir_len);
    let mut offsets = Vec::with_capacity(sorted.len());
    for (k, v) in &sorted {
        if v.len() as u64 >= align {
            at = at.div_ceil(align) * align;
        }
        let mut e = vec![0u8; entry_len(k.len())];
        BigEndian::write_u16(&mut e[0..2], k.len() as u16);
        BigEndian::write_u32(&mut e[4..8], crc32c::crc32c(v));
        BigEndian::write_u64(&mut e[8..16], at);
        BigEndian::write_u64(&mut e[16..24], v.len() as u64);
        e[ENTRY_FIXED..ENTRY_FIXED + k.len()].copy_from_slice(k.as_bytes());
        dir.extend_from_slice(&e);
        offsets.push(at);
        at = (at + v.len() as u64).div_ceil(8) * 8;
    }
    let sb = Superblock {
        generation,
        entries: sorted.len() as u64,
        dir_offset: SUPERBLOCK_LEN as u64,
        dir_len: dir_len as u64,
        dir_crc: crc32c::crc32c(&dir),
        store_len: at,
    };
    let mut out = vec![0u8; at as usize];
    out[..SUPERBLOCK_LEN].copy_from_slice(&sb.to_bytes());
    out[SUPERBLOCK_LEN..SUPERBLOCK_LEN + dir_len].copy_from_slice(&dir);
    for ((_, v), off) in sorted.iter().zip(offsets) {
        out[off as usize..off as usize + v.len()].copy_from_slice(v);
    }
    Ok(out)
}

/// Parses a whole store held in memory and checks every value's CRC.
pub fn parse_all(b: &[u8]) -> Result<Store> {
    let sb = Superblock::parse(b)?;
    if sb.store_len > b.len() as u64 {
        return Err(bad("the store is longer than the bytes given"));
    }
    let dir = &b[sb.dir_offset as usize..(sb.dir_offset + sb.dir_len) as usize];
    let st = Store::parse(sb, dir)?;
    for e in &st.entries {
        let v = &b[e.offset as usize..(e.offset + e.len) as usize];
        if crc32c::crc32c(v) != e.crc {
            return Err(bad(format!("the value of '{}' fails its checksum", e.key)));
        }
    }
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_lookup() {
        let logo = vec![0x89u8; 100_000];
        let b = build(
            7,
            &[
                ("license", b"MIT"),
                ("logo", &logo),
                ("empty", b""),
                ("é", b"x"),
            ],
        )
        .unwrap();
        let st = parse_all(&b).unwrap();
        assert_eq!(st.superblock.generation, 7);
        let keys: Vec<&str> = st.entries.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["empty", "license", "logo", "é"]);
        let e = st.get("logo").unwrap();
        assert_eq!(
            &b[e.offset as usize..(e.offset + e.len) as usize],
            &logo[..]
        );
        assert!(st.get("nope").is_none());
    }

    #[test]
    fn aligned_builds_put_large_values_on_unit_boundaries() {
        let big = vec![5u8; 10_000];
        let b = build_aligned(1, &[("a", b"xy"), ("b", &big), ("c", b"z")], 4096).unwrap();
        let st = parse_all(&b).unwrap();
        assert_eq!(st.get("b").unwrap().offset % 4096, 0);
        assert!(st.get("a").unwrap().offset < 4096);
        assert!(build_aligned(1, &[], 12).is_err());
    }

    #[test]
    fn bad_keys_and_duplicates_are_refused() {
        assert!(build(0, &[("", b"x")]).is_err());
        let long = "k".repeat(256);
        assert!(build(0, &[(&long, b"x")]).is_err());
        assert!(build(0, &[("a", b"1"), ("a", b"2")]).is_err());
    }

    #[test]
    fn hostile_stores_are_refused_with_the_rule_named() {
        let good = build(1, &[("a", b"hello"), ("b", b"world")]).unwrap();
        let err = |b: &[u8]| parse_all(b).unwrap_err().to_string();
        // Any flipped byte breaks a checksum or a rule; none panics.
        for i in 0..good.len() {
            let mut b = good.clone();
            b[i] ^= 0x40;
            let _ = parse_all(&b);
        }
        let mut b = good.clone();
        b[0] = b'X';
        assert!(err(&b).contains("magic"));
        // A value past the end, with checksums made right.
        let sb = Superblock::parse(&good).unwrap();
        let mut dir = good[64..64 + sb.dir_len as usize].to_vec();
        BigEndian::write_u64(&mut dir[16..24], 1 << 20);
        let mut b = good.clone();
        b[64..64 + dir.len()].copy_from_slice(&dir);
        let sb2 = Superblock {
            dir_crc: crc32c::crc32c(&dir),
            ..sb
        };
        b[..64].copy_from_slice(&sb2.to_bytes());
        assert!(err(&b).contains("past the store's end"), "{}", err(&b));
        // Overlapping values.
        let mut dir = good[64..64 + sb.dir_len as usize].to_vec();
        let first = BigEndian::read_u64(&dir[8..16]);
        BigEndian::write_u64(&mut dir[32 + 8..32 + 16], first);
        let mut b = good.clone();
        b[64..64 + dir.len()].copy_from_slice(&dir);
        b[..64].copy_from_slice(
            &Superblock {
                dir_crc: crc32c::crc32c(&dir),
                ..sb
            }
            .to_bytes(),
        );
        assert!(err(&b).contains("overlaps"), "{}", err(&b));
        // An absurd entry count is refused before anything is allocated.
        let mut b = good.clone();
        b[..64].copy_from_slice(
            &Superblock {
                entries: u64::MAX,
                ..sb
            }
            .to_bytes(),
        );
        assert!(err(&b).contains("entries"));
    }

    /// Replaces the directory of `good` with `dir` (same length), fixing
    /// both checksums, so only the rule under test is broken.
    fn with_dir(good: &[u8], f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let sb = Superblock::parse(good).unwrap();
        let mut dir = good[64..64 + sb.dir_len as usize].to_vec();
        f(&mut dir);
        let mut b = good.to_vec();
        b[64..64 + dir.len()].copy_from_slice(&dir);
        b[..64].copy_from_slice(
            &Superblock {
                dir_crc: crc32c::crc32c(&dir),
                ..sb
            }
            .to_bytes(),
        );
        b
    }

    #[test]
    fn duplicate_keys_bad_utf8_and_bad_lengths_are_refused() {
        let good = build(1, &[("aa", b"hello"), ("ab", b"world")]).unwrap();
        let err = |b: &[u8]| parse_all(b).unwrap_err().to_string();
        // The second key made equal to the first.
        let b = with_dir(&good, |d| d[32 + 24 + 1] = b'a');
        assert!(err(&b).contains("out of order or repeated"), "{}", err(&b));
        // Keys out of order.
        let b = with_dir(&good, |d| d[32 + 24 + 1] = b'0');
        assert!(err(&b).contains("out of order"), "{}", err(&b));
        // Invalid UTF-8.
        let b = with_dir(&good, |d| d[24] = 0xff);
        assert!(err(&b).contains("not UTF-8"), "{}", err(&b));
        // A key length of 0 and one past the directory.
        let b = with_dir(&good, |d| BigEndian::write_u16(&mut d[0..2], 0));
        assert!(err(&b).contains("key of 0 bytes"), "{}", err(&b));
        let b = with_dir(&good, |d| BigEndian::write_u16(&mut d[32..34], 200));
        assert!(err(&b).contains("past the directory"), "{}", err(&b));
        // A value longer than 4 GiB, an unaligned one, one wrapping around.
        let b = with_dir(&good, |d| BigEndian::write_u64(&mut d[16..24], 1 << 33));
        assert!(err(&b).contains("at most"), "{}", err(&b));
        let b = with_dir(&good, |d| BigEndian::write_u64(&mut d[8..16], 81));
        assert!(err(&b).contains("aligned"), "{}", err(&b));
        let b = with_dir(&good, |d| {
            BigEndian::write_u64(&mut d[8..16], u64::MAX - 7);
            BigEndian::write_u64(&mut d[16..24], 16);
        });
        assert!(err(&b).contains("past the store's end"), "{}", err(&b));
        // A value over the directory.
        let b = with_dir(&good, |d| BigEndian::write_u64(&mut d[8..16], 64));
        assert!(err(&b).contains("overlaps"), "{}", err(&b));
        // A value whose bytes changed.
        let mut b = good.clone();
        let last = b.len() - 8;
        b[last] ^= 1;
        assert!(err(&b).contains("fails its checksum"), "{}", err(&b));
        // A store cut short, and a directory past the store's end.
        assert!(err(&good[..good.len() - 8]).contains("longer than the bytes given"));
        let sb = Superblock::parse(&good).unwrap();
        let mut b = good.clone();
        b[..64].copy_from_slice(
            &Superblock {
                store_len: 70,
                ..sb
            }
            .to_bytes(),
        );
        assert!(err(&b).contains("past the store's end"), "{}", err(&b));
    }

    /// Seed stores for the fuzz target; `COWBLK_META_SEEDS=DIR` also writes
    /// them to DIR (fuzz/corpus/meta_parse holds the committed copies).
    #[test]
    fn fuzz_seeds_parse() {
        let seeds = [
            build(0, &[]).unwrap(),
            build(3, &[("license", b"MIT"), ("logo", &[7u8; 300]), ("z", b"")]).unwrap(),
        ];
        for (i, s) in seeds.iter().enumerate() {
            parse_all(s).unwrap();
            if let Some(d) = std::env::var_os("COWBLK_META_SEEDS") {
                std::fs::write(std::path::Path::new(&d).join(format!("seed{i}")), s).unwrap();
            }
        }
    }
}
