//! add-cow's metadata store: a byte range of the add-cow file past the
//! bitmap, named by three header fields in the header's last sector
//! (docs/specs/add-cow.txt, "Metadata store"). A change writes the new
//! store elsewhere, flushes, switches the header sector in one aligned
//! write, flushes, and only then drops the old store.

use super::header::{Header, StoreRef, HEADER_SIZE, SIZE_SECTOR};
use super::{AddCow, Format};
use crate::error::{Error, Result};
use crate::meta::store::SUPERBLOCK_LEN;
use crate::meta::{MetaStore, Same};
use std::sync::RwLock;

/// Stores start at offsets aligned to this (a page: store I/O never
/// shares a page with the bitmap's last block).
const ALIGN: u64 = 4096;

fn align_up(x: u64) -> u64 {
    x.div_ceil(ALIGN) * ALIGN
}

impl AddCow {
    fn header_clone(&self) -> Header {
        self.header
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(super) fn store_ref(&self) -> Option<StoreRef> {
        self.header.lock().unwrap_or_else(|p| p.into_inner()).store
    }

    /// End of the bytes the add-cow file must keep: the bitmap for `size`
    /// and the store.
    pub(super) fn needed_len(&self, size: u64) -> u64 {
        let bm = HEADER_SIZE + Header::bitmap_len(size, self.cluster_bits);
        self.store_ref().map_or(bm, |r| bm.max(r.offset + r.len))
    }

    /// Writes `new` (or no store) in the spec's order, given the bitmap
    /// will end at `bitmap_end` (a grow passes its new end to move the
    /// store out of the way).
    pub(super) fn place_store(&self, new: Option<&[u8]>, bitmap_end: u64) -> Result<()> {
        let old = self.store_ref();
        let lowest = align_up(bitmap_end);
        let new_ref = match new {
            None => None,
            Some(bytes) => {
                let len = bytes.len() as u64;
                // Below the old store if it fits there, else past it: the
                // file holds at most the bitmap, the old and the new store.
                let offset = match old {
                    Some(o) if lowest + len > o.offset => align_up((o.offset + o.len).max(lowest)),
                    _ => lowest,
                };
                self.meta.write_at(bytes, offset)?;
                self.meta.flush()?;
                Some(StoreRef {
                    offset,
                    len,
                    crc: crc32c::crc32c(&bytes[..SUPERBLOCK_LEN.min(bytes.len())]),
                })
            }
        };
        // The switch: the sector holding the size, the compatible bits and
        // the store fields, in one aligned 512-byte write.
        let mut h = self.header_clone();
        h.store = new_ref;
        // A 2012 file (size 0, the image file's length) gets its size
        // recorded, so the bitmap's end cannot move under the store.
        if h.size == 0 {
            h.size = self.size();
        }
        self.meta
            .write_at(&h.serialize()?[SIZE_SECTOR..], SIZE_SECTOR as u64)?;
        self.meta.flush()?;
        *self.header.lock().unwrap_or_else(|p| p.into_inner()) = h;
        // The old store is garbage now; a cut before this leaves bytes that
        // `check` reports as leaked.
        if let Some(o) = old {
            match new_ref {
                Some(n) if n.offset > o.offset => self.meta.write_zeroes(o.offset, o.len)?,
                _ => {
                    let end = new_ref.map_or(bitmap_end, |n| n.offset + n.len);
                    if self.meta.len()? > end {
                        self.meta.set_len(end)?;
                    }
                }
            }
            self.meta.flush()?;
        }
        Ok(())
    }

    /// Checks the header's store against the file at open.
    pub(super) fn check_store_at_open(h: &Header, bitmap_end: u64, flen: u64) -> Result<()> {
        if let Some(r) = h.store {
            if r.offset < bitmap_end || r.offset + r.len > flen {
                return Err(Error::Corrupt(format!(
                    "add-cow metadata store at {}..{} must lie past the bitmap (ends at {bitmap_end}) and within the file ({flen} bytes)",
                    r.offset,
                    r.offset + r.len
                )));
            }
        }
        Ok(())
    }
}

impl MetaStore for AddCow {
    fn meta_lock(&self) -> &RwLock<()> {
        &self.meta_lock
    }

    fn store_len(&self) -> Result<Option<u64>> {
        Ok(self.store_ref().map(|r| r.len))
    }

    fn read_store(&self, buf: &mut [u8], off: u64) -> Result<()> {
        let r = self
            .store_ref()
            .ok_or_else(|| Error::NotFound("add-cow metadata store".into()))?;
        match off.checked_add(buf.len() as u64) {
            Some(end) if end <= r.len => {}
            _ => {
                return Err(Error::Corrupt(format!(
                    "add-cow metadata store: {} bytes at {off} lie past its {} bytes",
                    buf.len(),
                    r.len
                )))
            }
        }
        if off == 0 && buf.len() >= SUPERBLOCK_LEN {
            self.meta.read_at(buf, r.offset)?;
            if crc32c::crc32c(&buf[..SUPERBLOCK_LEN]) != r.crc {
                return Err(Error::Corrupt(
                    "add-cow metadata store: its superblock differs from the one the header names"
                        .into(),
                ));
            }
            return Ok(());
        }
        self.meta.read_at(buf, r.offset + off)
    }

    fn replace_store(&self, new: Option<&[u8]>, _same: &[Same]) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly(self.path.display().to_string()));
        }
        // Guest data and bits first, as for every header change.
        self.flush()?;
        let bm = HEADER_SIZE + Header::bitmap_len(self.size(), self.cluster_bits);
        self.place_store(new, bm)
    }
}
