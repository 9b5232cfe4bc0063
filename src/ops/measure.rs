//! How much space an image of a format would take (`qemu-img measure`):
//! for a given virtual size, or for converting an existing image.

use super::chain_runs;
use crate::error::{Error, Result};
use crate::format::addcow::{self, header::Header as AddCowHeader};
use crate::format::options::{self, CreateOptions};
use crate::format::qcow2::create::refcount_metadata;
use crate::image::Image;

/// qemu-img measure's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Measure {
    /// Bytes the new image needs for what the input holds.
    pub required: u64,
    /// Bytes it takes once every cluster is allocated.
    pub fully_allocated: u64,
    /// Bytes the input's persistent bitmaps would take (qcow2 v3 to qcow2
    /// v3 only, as qemu-img shows it).
    pub bitmaps: Option<u64>,
}

/// Measures an image of format `fmt` made with `opts`, either of `size`
/// bytes or holding `input`'s guest contents.
pub fn measure(
    fmt: &str,
    opts: &CreateOptions,
    input: Option<&Image>,
    size: Option<u64>,
) -> Result<Measure> {
    let size = match (input, size) {
        (Some(i), _) => i.size(),
        (None, Some(s)) => s,
        (None, None) => {
            return Err(Error::InvalidArgument(
                "Either --size N or one filename must be specified.".into(),
            ))
        }
    };
    match fmt {
        "raw" => {
            let s = size.div_ceil(512) * 512;
            Ok(Measure {
                required: s,
                fully_allocated: s,
                bitmaps: None,
            })
        }
        "qcow2" => qcow2(opts, input, size),
        "add-cow" => add_cow(opts, input, size),
        other => Err(Error::UnknownFormat(format!("'{other}'"))),
    }
}

/// Bytes of `img` (rounded out to `granule`) that hold data rather than
/// zeros anywhere in its chain: what a copy must store.
fn data_bytes(img: &Image, granule: u64) -> Result<u64> {
    let mut total = 0;
    let mut counted_to = 0;
    for (off, len, data) in chain_runs(img)? {
        if !data {
            continue;
        }
        let start = (off / granule * granule).max(counted_to);
        let end = (off + len).div_ceil(granule) * granule;
        if end > start {
            total += end - start;
            counted_to = end;
        }
    }
    Ok(total)
}

fn add_cow(opts: &CreateOptions, input: Option<&Image>, size: u64) -> Result<Measure> {
    let cs = opts
        .get_size(addcow::CLUSTER_SIZE)?
        .unwrap_or(addcow::DEFAULT_CLUSTER_SIZE);
    if !cs.is_power_of_two() || !(512..=2 << 20).contains(&cs) {
        return Err(Error::InvalidArgument(format!(
            "cluster_size {cs}: a power of two from 512 to 2M"
        )));
    }
    // The add-cow file (header and bitmap) plus the image file.
    let meta = addcow::header::HEADER_SIZE + AddCowHeader::bitmap_len(size, cs.trailing_zeros());
    let full = meta + size.div_ceil(cs) * cs;
    let required = match input {
        Some(i) => meta + data_bytes(i, cs)?,
        None => meta,
    };
    Ok(Measure {
        required,
        fully_allocated: full,
        bitmaps: None,
    })
}

/// A fully allocated qcow2 image of `size` bytes: header cluster, L2 and L1
/// tables for every cluster, refcount structures for all of that, data.
fn qcow2_full(size: u64, cs: u64, refcount_order: u32, extended: bool) -> u64 {
    let aligned = size.div_ceil(cs) * cs;
    let l2e = if extended { 16 } else { 8 };
    let mut meta = cs;
    let nl2e = (aligned / cs).div_ceil(cs / l2e) * (cs / l2e);
    meta += nl2e * l2e;
    let nl1e = (nl2e * l2e / cs).div_ceil(cs / 8) * (cs / 8);
    meta += nl1e * 8;
    let (blocks, table) = refcount_metadata(
        (meta + aligned) / cs,
        (cs * 8) >> refcount_order,
        cs / 8,
        false,
    );
    meta += (blocks + table) * cs;
    meta + aligned
}

fn qcow2(opts: &CreateOptions, input: Option<&Image>, size: u64) -> Result<Measure> {
    let cs = opts.get_size("cluster_size")?.unwrap_or(65536);
    if !cs.is_power_of_two() || !(512..=2 << 20).contains(&cs) {
        return Err(Error::InvalidArgument(
            "Cluster size must be a power of two between 512 and 2048k".into(),
        ));
    }
    let rbits = opts
        .get("refcount_bits")
        .map(|v| {
            v.parse::<u64>()
                .ok()
                .filter(|b| b.is_power_of_two() && *b <= 64)
                .ok_or_else(|| {
                    Error::InvalidArgument(
                        "Refcount width must be a power of two and may not exceed 64 bits".into(),
                    )
                })
        })
        .transpose()?
        .unwrap_or(16);
    let extended = opts.get_bool("extended_l2")?.unwrap_or(false);
    let v2 = matches!(opts.get("compat"), Some("0.10") | Some("v2"));
    if extended && cs < 16384 {
        return Err(Error::InvalidArgument(
            "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes"
                .into(),
        ));
    }
    if v2 && rbits != 16 {
        return Err(Error::InvalidArgument(
            "Different refcount widths than 16 bits require compatibility level 1.1 or above \
             (use compat=1.1 or greater)"
                .into(),
        ));
    }
    let prealloc_full = matches!(opts.get("preallocation"), Some("full") | Some("falloc"));
    let has_backing = opts.get_str(options::BACKING_FILE).is_some();
    let (virtual_size, mut required) = match input {
        Some(i) => {
            let v = i.size().div_ceil(cs) * cs;
            // With a backing file nothing can be assumed shared with the
            // input: every cluster may need writing.
            (v, if has_backing { v } else { data_bytes(i, cs)? })
        }
        None => (size.div_ceil(512) * 512, 0),
    };
    if prealloc_full {
        required = virtual_size;
    }
    let full = qcow2_full(virtual_size, cs, rbits.trailing_zeros(), extended);
    // qemu-img counts the metadata of the fully allocated image in both.
    let bitmaps = match input {
        Some(i) if !v2 => i
            .persistent_bitmaps()
            .map(|b| bitmaps_size(i.size(), &b, cs)),
        _ => None,
    };
    Ok(Measure {
        required: full - virtual_size + required,
        fully_allocated: full,
        bitmaps,
    })
}

/// Space the input's persistent bitmaps take in a qcow2 image with
/// `cs`-byte clusters: each bitmap whole, its table, and the directory.
fn bitmaps_size(size: u64, bitmaps: &[(String, u64)], cs: u64) -> u64 {
    let mut total = 0;
    let mut dir = 0;
    for (name, granularity) in bitmaps {
        let bytes = size.div_ceil(*granularity).div_ceil(8);
        let clusters = bytes.div_ceil(cs);
        total += clusters * cs + (clusters * 8).div_ceil(cs) * cs;
        dir += (24 + name.len() as u64).div_ceil(8) * 8;
    }
    total + dir.div_ceil(cs) * cs
}

#[cfg(test)]
mod tests {
    use super::*;

    // Figures qemu-img measure (QEMU 10) printed on this machine.
    #[test]
    fn qcow2_formulas_match_qemu_img() {
        assert_eq!(qcow2_full(1 << 30, 65536, 4, false), 1074135040);
        let m = measure("qcow2", &CreateOptions::new(), None, Some(1 << 30)).unwrap();
        assert_eq!((m.required, m.fully_allocated), (393216, 1074135040));
    }

    #[test]
    fn add_cow_counts_its_header_bitmap_and_image_file() {
        let m = measure("add-cow", &CreateOptions::new(), None, Some(1 << 30)).unwrap();
        // 4 KiB clusters: 2^18 bits of bitmap after the 2560-byte header.
        let meta = 2560 + (1 << 15);
        assert_eq!((m.required, m.fully_allocated), (meta, meta + (1 << 30)));
        assert!(measure("add-cow", &CreateOptions::new(), None, None).is_err());
    }
}
