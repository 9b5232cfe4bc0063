//! qcow2 open options, as QEMU's qcow2 driver takes them: `l2-cache-size`,
//! `refcount-cache-size` and `cache-size` (split between the two as QEMU's
//! read_cache_sizes does), `l2-cache-entry-size` (checked; whole tables
//! are cached), and `overlap-check` (none, constant, cached,
//! all; QEMU's default is cached). Pure: the sizes are turned into table
//! counts here, the checks run in `write.rs`.

use super::l2::Geometry;
use crate::error::{Error, Result};
use crate::format::options::parse_size;

/// What an overlap check compares a write with (QEMU's QCOW2_OL_* bits).
pub const OL_MAIN_HEADER: u32 = 1 << 0;
pub const OL_ACTIVE_L1: u32 = 1 << 1;
pub const OL_ACTIVE_L2: u32 = 1 << 2;
pub const OL_REFCOUNT_TABLE: u32 = 1 << 3;
pub const OL_REFCOUNT_BLOCK: u32 = 1 << 4;
pub const OL_SNAPSHOT_TABLE: u32 = 1 << 5;
pub const OL_INACTIVE_L1: u32 = 1 << 6;
pub const OL_INACTIVE_L2: u32 = 1 << 7;
pub const OL_BITMAP_DIRECTORY: u32 = 1 << 8;
/// Checks that cost constant time.
pub const OL_CONSTANT: u32 = OL_MAIN_HEADER | OL_ACTIVE_L1 | OL_REFCOUNT_TABLE | OL_SNAPSHOT_TABLE;
/// Checks against what is in memory (QEMU's default).
pub const OL_CACHED: u32 =
    OL_CONSTANT | OL_ACTIVE_L2 | OL_REFCOUNT_BLOCK | OL_INACTIVE_L1 | OL_BITMAP_DIRECTORY;
/// Everything, the snapshots' L2 tables included (read once at open).
pub const OL_ALL: u32 = OL_CACHED | OL_INACTIVE_L2;

/// The option names `parse` takes (front ends pass these to the driver).
pub const NAMES: &[&str] = &[
    "l2-cache-size",
    "refcount-cache-size",
    "cache-size",
    "l2-cache-entry-size",
    "overlap-check",
];

/// QEMU's default L2 cache limit on Linux.
const L2_CACHE_MAX_SETTING: u64 = 32 << 20;
const MIN_L2_TABLES: u64 = 2;
const MIN_REFCOUNT_BLOCKS: u64 = 4;

/// The open options, resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// L2 tables the cache holds.
    pub l2_tables: u64,
    /// Refcount blocks the write side caches; `None`: our default.
    pub refcount_blocks: Option<u64>,
    /// OL_* bits.
    pub overlap: u32,
}

/// Resolves `opts` for an image of `size` bytes. `legacy` is
/// `OpenOptions::cache_size` (all of it for L2 tables, a quarter of it
/// for refcount blocks), used when no cache option is given.
pub fn parse(opts: &[(String, String)], legacy: u64, size: u64, geo: Geometry) -> Result<Options> {
    let (mut combined, mut l2, mut rc, mut overlap) = (None, None, None, OL_CACHED);
    for (k, v) in opts {
        let sz = || parse_size(v).map_err(|e| e.context(format!("qcow2 option '{k}'")));
        match k.as_str() {
            "cache-size" => combined = Some(sz()?),
            "l2-cache-size" => l2 = Some(sz()?),
            "refcount-cache-size" => rc = Some(sz()?),
            // How much of an L2 table one cache entry of QEMU's holds.
            // Checked as QEMU checks it; the cache here holds whole
            // tables within l2-cache-size, so a valid value changes
            // nothing (the memory bound is the cache size either way).
            "l2-cache-entry-size" => {
                let e = sz()?;
                let cs = geo.cluster_size();
                if !e.is_power_of_two() || !(512..=cs).contains(&e) {
                    return Err(Error::InvalidArgument(format!(
                        "L2 cache entry size must be a power of two between 512 and the cluster size ({cs})"
                    )));
                }
            }
            "overlap-check" => {
                overlap = match v.as_str() {
                    "none" => 0,
                    "constant" => OL_CONSTANT,
                    "cached" => OL_CACHED,
                    "all" => OL_ALL,
                    _ => {
                        return Err(Error::InvalidArgument(format!(
                            "Unsupported value '{v}' for qcow2 option 'overlap-check'. Allowed are any of the following: none, constant, cached, all"
                        )))
                    }
                }
            }
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "Invalid parameter '{k}' for the qcow2 driver (known: cache-size, l2-cache-size, refcount-cache-size, l2-cache-entry-size, overlap-check)"
                )))
            }
        }
    }
    let cs = geo.cluster_size();
    let entry = geo.entry_words() as u64 * 8;
    // The L2 tables that map the whole disk.
    let max_l2 = (size.div_ceil(cs) * entry).div_ceil(cs) * cs;
    let min_rc = MIN_REFCOUNT_BLOCKS * cs;
    if let Some(c) = combined {
        if l2.is_some() && rc.is_some() {
            return Err(Error::InvalidArgument(
                "cache-size, l2-cache-size and refcount-cache-size may not be set at the same time"
                    .into(),
            ));
        }
        if l2.is_some_and(|l| l > c) {
            return Err(Error::InvalidArgument(
                "l2-cache-size may not exceed cache-size".into(),
            ));
        }
        if rc.is_some_and(|r| r > c) {
            return Err(Error::InvalidArgument(
                "refcount-cache-size may not exceed cache-size".into(),
            ));
        }
        match (l2, rc) {
            (Some(l), _) => rc = Some(c - l),
            (_, Some(r)) => l2 = Some(c - r),
            _ if c >= max_l2 + min_rc => {
                l2 = Some(max_l2);
                rc = Some(c - max_l2);
            }
            _ => {
                let r = c.min(min_rc);
                rc = Some(r);
                l2 = Some(c - r);
            }
        }
    }
    let any = combined.is_some() || l2.is_some() || rc.is_some();
    let (l2_bytes, rc_bytes) = if any {
        (
            l2.unwrap_or(max_l2.min(L2_CACHE_MAX_SETTING)),
            Some(rc.unwrap_or(min_rc)),
        )
    } else if legacy > 0 {
        (legacy, Some(legacy / 4))
    } else {
        (max_l2.min(L2_CACHE_MAX_SETTING), None)
    };
    // Table counts, bounded as QEMU bounds them (INT_MAX bytes).
    let limit = i32::MAX as u64;
    if l2_bytes > limit {
        return Err(Error::InvalidArgument(format!(
            "L2 cache size too big ({l2_bytes} bytes)"
        )));
    }
    if rc_bytes.is_some_and(|r| r > limit) {
        return Err(Error::InvalidArgument(format!(
            "Refcount cache size too big ({} bytes)",
            rc_bytes.unwrap_or(0)
        )));
    }
    Ok(Options {
        l2_tables: (l2_bytes / cs).max(MIN_L2_TABLES),
        refcount_blocks: rc_bytes.map(|r| (r / cs).max(MIN_REFCOUNT_BLOCKS)),
        overlap,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(kv: &[(&str, &str)]) -> Vec<(String, String)> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const G: Geometry = Geometry {
        cluster_bits: 16,
        extended: false,
        data_file: false,
    };

    #[test]
    fn defaults_and_splits_as_qemu() {
        // 1 GiB of 64 KiB clusters: 16384 entries, 128 KiB of L2 tables.
        let gib = 1 << 30;
        let d = parse(&[], 0, gib, G).unwrap();
        assert_eq!(
            (d.l2_tables, d.refcount_blocks, d.overlap),
            (2, None, OL_CACHED)
        );
        let big = parse(&[], 0, 1 << 42, G).unwrap();
        assert_eq!(big.l2_tables, 512);
        // cache-size larger than the disk needs: L2 gets what maps it all.
        let c = parse(&o(&[("cache-size", "1M")]), 0, gib, G).unwrap();
        assert_eq!((c.l2_tables, c.refcount_blocks), (2, Some(14)));
        // Smaller: the refcount cache its minimum, L2 the rest.
        let c = parse(&o(&[("cache-size", "1M")]), 0, 1 << 40, G).unwrap();
        assert_eq!((c.l2_tables, c.refcount_blocks), (12, Some(4)));
        let c = parse(
            &o(&[("cache-size", "1M"), ("l2-cache-size", "512k")]),
            0,
            gib,
            G,
        )
        .unwrap();
        assert_eq!((c.l2_tables, c.refcount_blocks), (8, Some(8)));
        let c = parse(
            &o(&[("l2-cache-size", "4M"), ("overlap-check", "all")]),
            0,
            gib,
            G,
        )
        .unwrap();
        assert_eq!(
            (c.l2_tables, c.refcount_blocks, c.overlap),
            (64, Some(4), OL_ALL)
        );
        let c = parse(&o(&[("overlap-check", "none")]), 1 << 20, gib, G).unwrap();
        assert_eq!(
            (c.l2_tables, c.refcount_blocks, c.overlap),
            (16, Some(4), 0)
        );
    }

    #[test]
    fn bad_options_are_refused_by_name() {
        let e = |kv: &[(&str, &str)]| parse(&o(kv), 0, 1 << 30, G).unwrap_err().to_string();
        assert!(e(&[
            ("cache-size", "1M"),
            ("l2-cache-size", "1M"),
            ("refcount-cache-size", "1")
        ])
        .contains("may not be set at the same time"));
        assert!(e(&[("cache-size", "1M"), ("l2-cache-size", "2M")]).contains("may not exceed"));
        assert!(e(&[("overlap-check", "some")]).contains("none, constant, cached, all"));
        assert!(e(&[("l2-cache-size", "x")]).contains("l2-cache-size"));
        assert!(e(&[("l2-cache-size", "4G")]).contains("too big"));
        assert!(e(&[("lazy-refcounts", "on")]).contains("'lazy-refcounts'"));
    }
}
