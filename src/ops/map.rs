//! The allocation map of an image across its backing chain, in the terms of
//! `qemu-img map`.

use crate::error::Result;
use crate::image::{BlockStatus, Image};

/// One run of guest bytes with one state (qemu-img map's JSON entry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapEntry {
    pub start: u64,
    pub length: u64,
    /// The layer the run comes from (0 = the top image); for runs no layer
    /// has, the deepest layer looked at.
    pub depth: usize,
    /// Some layer has the run (or it lies in a layer that reads as zeros).
    pub present: bool,
    pub zero: bool,
    pub data: bool,
    pub compressed: bool,
    /// Offset in `file` where the run's bytes are stored.
    pub offset: Option<u64>,
    /// The file holding the run's bytes, where there is one.
    pub file: Option<String>,
}

impl MapEntry {
    /// Whether `next` continues this entry (qemu-img merges such runs).
    fn continued_by(&self, next: &MapEntry) -> bool {
        self.start + self.length == next.start
            && self.depth == next.depth
            && self.present == next.present
            && self.zero == next.zero
            && self.data == next.data
            && self.compressed == next.compressed
            && self.file == next.file
            && match (self.offset, next.offset) {
                (None, None) => true,
                (Some(a), Some(b)) => a + self.length == b,
                _ => false,
            }
    }
}

struct Run {
    depth: usize,
    present: bool,
    st: BlockStatus,
    len: u64,
    file: Option<String>,
}

fn layer_run(img: &Image, off: u64, len: u64, depth: usize) -> Result<Run> {
    let (st, n) = img.block_status(off, len)?;
    if st.allocated {
        return Ok(Run {
            depth,
            present: true,
            st,
            len: n,
            file: Some(img.data_file_name()),
        });
    }
    let backing = img.backing();
    match backing.as_ref().and_then(|b| b.as_image()) {
        Some(b) if off < b.size() => layer_run(b, off, n.min(b.size() - off), depth + 1),
        // Zeros at this layer; QEMU keeps the layer's offset when it has
        // one (a qcow2 unallocated subcluster of an allocated cluster).
        _ => Ok(Run {
            depth,
            present: false,
            st: BlockStatus {
                allocated: false,
                data: false,
                zero: true,
                offset: st.offset,
                compressed: false,
            },
            len: n,
            file: st.offset.map(|_| img.data_file_name()),
        }),
    }
}

/// The map of `[start, start + len)` of `img`, merged into maximal runs.
pub fn map(img: &Image, start: u64, len: u64) -> Result<Vec<MapEntry>> {
    let end = start.saturating_add(len).min(img.size());
    let mut out: Vec<MapEntry> = Vec::new();
    let mut off = start;
    while off < end {
        let r = layer_run(img, off, end - off, 0)?;
        let e = MapEntry {
            start: off,
            length: r.len,
            depth: r.depth,
            present: r.present,
            zero: r.st.zero,
            data: r.st.data,
            compressed: r.st.compressed,
            offset: r.st.offset,
            file: r.file,
        };
        off += r.len;
        match out.last_mut() {
            Some(last) if last.continued_by(&e) => last.length += e.length,
            _ => out.push(e),
        }
    }
    Ok(out)
}
