//! The L1 table, read on demand in aligned chunks: opening an image reads
//! none of it, so open costs the same for 1 GiB as for 16 TiB. Loaded
//! chunks stay resident (at most the table itself, <= 32 MiB by the limits
//! checked at open, as QEMU keeps the whole table). Lookups take no lock
//! and write nothing shared: one slot per chunk, set once, entries atomic.
//! The slots cost 24 bytes per 512 entries (64 slots for a 16 TiB image
//! with 64 KiB clusters).

use crate::error::Result;
use crate::io::BlockFile;
use byteorder::{BigEndian, ByteOrder};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// Entries per chunk (4 KiB of table).
const CHUNK: u64 = 512;

pub struct L1Table {
    file: Arc<dyn BlockFile>,
    offset: u64,
    /// Entries in the table.
    len: u64,
    /// Entries stored inside the file; later ones read as 0 (as QEMU).
    stored: u64,
    /// Chunk c once loaded; never dropped while the table is in use.
    chunks: Box<[OnceLock<Box<[AtomicU64]>>]>,
}

impl L1Table {
    pub fn new(file: Arc<dyn BlockFile>, offset: u64, len: u64, file_len: u64) -> Self {
        let stored = len.min(file_len.saturating_sub(offset) / 8);
        L1Table {
            stored,
            file,
            offset,
            len,
            chunks: (0..stored.div_ceil(CHUNK))
                .map(|_| OnceLock::new())
                .collect(),
        }
    }

    /// Entry `index` (0 past the end of the table).
    #[inline]
    pub fn entry(&self, index: u64) -> Result<u64> {
        if index >= self.stored {
            return Ok(0);
        }
        let i = (index % CHUNK) as usize;
        Ok(self.chunk(index / CHUNK)?[i].load(Ordering::Acquire))
    }

    /// Chunk `c` (inside the stored table), loaded on first use.
    #[inline]
    fn chunk(&self, c: u64) -> Result<&[AtomicU64]> {
        let slot = &self.chunks[c as usize];
        if let Some(chunk) = slot.get() {
            return Ok(chunk);
        }
        self.load(slot, c)
    }

    /// Reads chunk `c` with no lock held. Racing loads read the same
    /// bytes: an entry changes in memory only after its chunk is loaded
    /// (`set` loads it first), and the first load to finish is kept.
    #[cold]
    fn load<'a>(&self, slot: &'a OnceLock<Box<[AtomicU64]>>, c: u64) -> Result<&'a [AtomicU64]> {
        let first = c * CHUNK;
        let n = (self.stored - first).min(CHUNK);
        let mut raw = vec![0u8; (n * 8) as usize];
        self.file.read_at(&mut raw, self.offset + first * 8)?;
        let chunk: Box<[AtomicU64]> = raw
            .chunks_exact(8)
            .map(|b| AtomicU64::new(BigEndian::read_u64(b)))
            .collect();
        Ok(slot.get_or_init(|| chunk))
    }

    /// Entry `index` if its chunk is resident (or it lies past the stored
    /// table); `None` when reading it would need file I/O.
    pub fn cached_entry(&self, index: u64) -> Option<u64> {
        if index >= self.stored {
            return Some(0);
        }
        let chunk = self.chunks[(index / CHUNK) as usize].get()?;
        Some(chunk[(index % CHUNK) as usize].load(Ordering::Acquire))
    }

    /// Replaces entry `index` in memory (the writer puts it on disk,
    /// ordered after what it points to). Only entries inside the file can
    /// change: a read-write open checks the table lies inside it.
    pub fn set(&self, index: u64, value: u64) -> Result<()> {
        if index >= self.stored {
            return Err(crate::Error::Corrupt(format!(
                "L1 index {index} lies outside the L1 table stored in the file"
            )));
        }
        self.chunk(index / CHUNK)?[(index % CHUNK) as usize].store(value, Ordering::Release);
        Ok(())
    }

    /// Host offset of the table.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Whether every entry lies inside the file.
    pub fn fully_stored(&self) -> bool {
        self.stored == self.len
    }

    /// Entries in the table.
    pub fn entries(&self) -> u64 {
        self.len
    }

    /// Chunks loaded so far (for tests of lazy loading).
    pub fn loaded_chunks(&self) -> usize {
        self.chunks.iter().filter(|c| c.get().is_some()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::fault::MemStorage;
    use crate::io::Storage;
    use std::path::Path;

    #[test]
    fn loads_chunks_on_demand_and_reads_zeros_past_the_file() {
        let st = MemStorage::new();
        let f = st.create(Path::new("t"), false).unwrap();
        let mut raw = vec![0u8; 8 * 1500];
        for i in 0..1500u64 {
            BigEndian::write_u64(&mut raw[i as usize * 8..], i * 10 + 1);
        }
        f.write_at(&raw, 64).unwrap();
        // 2000 entries declared, 1500 inside the file.
        let t = L1Table::new(f.clone(), 64, 2000, 64 + 8 * 1500);
        assert_eq!(t.loaded_chunks(), 0);
        assert_eq!(t.entry(3).unwrap(), 31);
        assert_eq!(t.loaded_chunks(), 1);
        assert_eq!(t.entry(1499).unwrap(), 14991);
        assert_eq!(t.entry(1500).unwrap(), 0);
        assert_eq!(t.entry(5000).unwrap(), 0);
        assert_eq!(t.loaded_chunks(), 2);
        assert_eq!(t.entries(), 2000);
    }
}
