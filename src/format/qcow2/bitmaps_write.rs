//! Persistent dirty bitmaps on the write side. This build does not track
//! writes in the bitmaps, so, as QEMU does on a read-write open, it marks
//! every bitmap in use (inconsistent) before the first guest write and
//! keeps the autoclear "bitmaps" bit: the bitmaps and their clusters stay
//! in the image (no leaks), and QEMU reports them as in use instead of
//! forgetting them. Refcount rebuilds count the directory, the bitmap
//! tables and their data clusters.

use super::bitmaps::{self, TABLE_OFFSET_MASK, TABLE_RESERVED_MASK};
use super::header::MAX_L1_BYTES;
use super::Qcow2;
use crate::error::{Error, Result};
use byteorder::{BigEndian, ByteOrder};

impl Qcow2 {
    /// Sets the in_use flag of every bitmap in the directory, in place,
    /// and flushes it, before any guest write (QEMU marks disabled bitmaps
    /// too: none is stored back consistent by this build).
    pub(super) fn mark_bitmaps_in_use(&mut self) -> Result<()> {
        let Some(ext) = self.header.bitmaps else {
            return Ok(());
        };
        if self.bitmaps.iter().all(|b| b.in_use) {
            return Ok(());
        }
        let mut dir = vec![0u8; ext.dir_size as usize];
        self.file.read_at(&mut dir, ext.dir_offset)?;
        // The directory on disk is the one parsed at open.
        let now = bitmaps::parse_directory(&dir, ext.nb_bitmaps)?;
        bitmaps::set_in_use(&mut dir, &now);
        self.file.write_at(&dir, ext.dir_offset)?;
        self.file.flush()?;
        for b in &mut self.bitmaps {
            b.in_use = true;
        }
        Ok(())
    }

    /// Calls `add(offset, length, what)` for the bitmap directory, every
    /// bitmap table and every data cluster they name (for a refcount
    /// rebuild).
    pub(super) fn bitmap_refs(
        &self,
        add: &mut dyn FnMut(u64, u64, &str) -> Result<()>,
    ) -> Result<()> {
        let Some(ext) = self.header.bitmaps else {
            return Ok(());
        };
        let cs = self.cs();
        add(ext.dir_offset, ext.dir_size, "the bitmap directory")?;
        for b in &self.bitmaps {
            let bytes = b.table_size as u64 * 8;
            if bytes > MAX_L1_BYTES || !b.table_offset.is_multiple_of(cs) {
                return Err(Error::Corrupt(format!(
                    "bitmap '{}': table at {:#x} of {} entries is misplaced or too large",
                    b.name, b.table_offset, b.table_size
                )));
            }
            add(b.table_offset, bytes, "a bitmap table")?;
            let mut t = vec![0u8; bytes as usize];
            self.file.read_at(&mut t, b.table_offset)?;
            for (i, e) in t.chunks_exact(8).map(BigEndian::read_u64).enumerate() {
                let off = e & TABLE_OFFSET_MASK;
                if e & TABLE_RESERVED_MASK != 0 || !off.is_multiple_of(cs) {
                    return Err(Error::Corrupt(format!(
                        "bitmap '{}': table entry {i} ({e:#x}) is invalid",
                        b.name
                    )));
                }
                if off != 0 {
                    add(off, cs, "a bitmap data cluster")?;
                }
            }
        }
        Ok(())
    }
}
