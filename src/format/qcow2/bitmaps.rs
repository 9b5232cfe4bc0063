//! The persistent dirty bitmap directory (spec: "Bitmaps extension"),
//! parsed for `info`, for refcount rebuilds and for marking the bitmaps
//! in use on a read-write open (`bitmaps_write.rs`).

use crate::error::{Error, Result};
use byteorder::{BigEndian, ByteOrder};

const FLAG_IN_USE: u32 = 1 << 0;
const FLAG_AUTO: u32 = 1 << 1;
const FLAG_EXTRA_DATA_COMPATIBLE: u32 = 1 << 2;
/// Bitmap names are at most 1023 bytes (spec).
const MAX_NAME: usize = 1023;
/// Bitmap granularity bits: 9 to 31 (QEMU's limits).
const GRANULARITY_BITS: std::ops::RangeInclusive<u8> = 9..=31;

/// One directory entry, as `qemu-img info` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bitmap {
    pub name: String,
    pub granularity: u64,
    pub in_use: bool,
    pub auto: bool,
    /// The bitmap table's offset and its number of 8-byte entries.
    pub table_offset: u64,
    pub table_size: u32,
    /// Where the entry starts in the directory.
    pub entry_at: usize,
}

impl Bitmap {
    /// qemu-img's names for the flags, in its order.
    pub fn flag_names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.in_use {
            v.push("in-use");
        }
        if self.auto {
            v.push("auto");
        }
        v
    }
}

fn corrupt(msg: String) -> Error {
    Error::Corrupt(format!("bitmap directory: {msg}"))
}

/// Parses `nb` entries from the directory bytes `dir`.
pub fn parse_directory(dir: &[u8], nb: u32) -> Result<Vec<Bitmap>> {
    let mut out = Vec::new();
    let mut off = 0usize;
    for i in 0..nb {
        let e = dir
            .get(off..off + 24)
            .ok_or_else(|| corrupt(format!("entry {i} lies past the directory's end")))?;
        let flags = BigEndian::read_u32(&e[12..16]);
        let kind = e[16];
        let gbits = e[17];
        let name_len = BigEndian::read_u16(&e[18..20]) as usize;
        let extra = BigEndian::read_u32(&e[20..24]) as usize;
        if flags & !(FLAG_IN_USE | FLAG_AUTO | FLAG_EXTRA_DATA_COMPATIBLE) != 0 {
            return Err(corrupt(format!("entry {i} has reserved flags {flags:#x}")));
        }
        if kind != 1 {
            return Err(corrupt(format!("entry {i} has unknown type {kind}")));
        }
        if !GRANULARITY_BITS.contains(&gbits) {
            return Err(corrupt(format!("entry {i} has granularity bits {gbits}")));
        }
        if name_len == 0 || name_len > MAX_NAME {
            return Err(corrupt(format!("entry {i} has a name of {name_len} bytes")));
        }
        if extra > 0 && flags & FLAG_EXTRA_DATA_COMPATIBLE == 0 {
            return Err(corrupt(format!(
                "entry {i} has extra data it does not allow"
            )));
        }
        let name_at = 24 + extra;
        let len = (name_at + name_len).div_ceil(8) * 8;
        let name = dir
            .get(off + name_at..off + name_at + name_len)
            .ok_or_else(|| corrupt(format!("entry {i} lies past the directory's end")))?;
        out.push(Bitmap {
            name: String::from_utf8_lossy(name).into_owned(),
            granularity: 1 << gbits,
            in_use: flags & FLAG_IN_USE != 0,
            auto: flags & FLAG_AUTO != 0,
            table_offset: BigEndian::read_u64(&e[0..8]),
            table_size: BigEndian::read_u32(&e[8..12]),
            entry_at: off,
        });
        off += len;
    }
    Ok(out)
}

/// Sets the in_use flag of every entry of `dir` (as parsed into
/// `bitmaps`); only that bit changes, so any torn mix of old and new
/// sectors is a valid directory.
pub fn set_in_use(dir: &mut [u8], bitmaps: &[Bitmap]) {
    for b in bitmaps {
        let f = &mut dir[b.entry_at + 12..b.entry_at + 16];
        let flags = BigEndian::read_u32(f) | FLAG_IN_USE;
        BigEndian::write_u32(f, flags);
    }
}

/// Bitmap table entries: the data cluster's offset (0: all zeros, or all
/// ones with bit 0); bits 1-8 and 56-63 are reserved.
pub const TABLE_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
pub const TABLE_RESERVED_MASK: u64 = 0xff00_0000_0000_01fe;

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, flags: u32, gbits: u8) -> Vec<u8> {
        let mut e = vec![0u8; 24];
        BigEndian::write_u32(&mut e[12..16], flags);
        e[16] = 1;
        e[17] = gbits;
        BigEndian::write_u16(&mut e[18..20], name.len() as u16);
        e.extend_from_slice(name.as_bytes());
        e.resize(e.len().div_ceil(8) * 8, 0);
        e
    }

    #[test]
    fn entries_and_limits() {
        let mut d = entry("b0", FLAG_AUTO, 16);
        d.extend(entry("second", FLAG_IN_USE | FLAG_AUTO, 9));
        let b = parse_directory(&d, 2).unwrap();
        assert_eq!(b[0].name, "b0");
        assert_eq!(b[0].granularity, 65536);
        assert_eq!(b[0].flag_names(), ["auto"]);
        assert_eq!(b[1].flag_names(), ["in-use", "auto"]);
        assert_eq!(b[1].entry_at, 32);
        let mut marked = d.clone();
        set_in_use(&mut marked, &b);
        let m = parse_directory(&marked, 2).unwrap();
        assert!(m.iter().all(|x| x.in_use && x.auto));
        assert_eq!(m[0].name, "b0");
        // Only the flag bit changed.
        let diff: Vec<usize> = (0..d.len()).filter(|&i| d[i] != marked[i]).collect();
        assert_eq!(diff, [15]);
        assert!(parse_directory(&d, 3)
            .unwrap_err()
            .to_string()
            .contains("past"));
        let bad = entry("x", 1 << 7, 16);
        assert!(parse_directory(&bad, 1).is_err());
        let bad = entry("x", 0, 40);
        assert!(parse_directory(&bad, 1).is_err());
        let mut bad = entry("x", 0, 16);
        bad[16] = 2;
        assert!(parse_directory(&bad, 1).is_err());
    }
}
