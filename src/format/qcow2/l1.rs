//! The L1 table, read on demand in aligned chunks: opening an image reads
//! none of it, so open costs the same for 1 GiB as for 16 TiB. Loaded
//! chunks stay resident (at most the table itself, <= 32 MiB by the limits
//! checked at open, as QEMU keeps the whole table).

use crate::error::Result;
use crate::io::BlockFile;
use byteorder::{BigEndian, ByteOrder};
use rustc_hash::FxHashMap;
use std::sync::{Arc, RwLock};

/// Entries per chunk (4 KiB of table).
const CHUNK: u64 = 512;

pub struct L1Table {
    file: Arc<dyn BlockFile>,
    offset: u64,
    /// Entries in the table.
    len: u64,
    /// Entries stored inside the file; later ones read as 0 (as QEMU).
    stored: u64,
    chunks: RwLock<FxHashMap<u64, Arc<[u64]>>>,
}

impl L1Table {
    pub fn new(file: Arc<dyn BlockFile>, offset: u64, len: u64, file_len: u64) -> Self {
        L1Table {
            stored: len.min(file_len.saturating_sub(offset) / 8),
            file,
            offset,
            len,
            chunks: RwLock::new(FxHashMap::default()),
        }
    }

    /// Entry `index` (0 past the end of the table).
    pub fn entry(&self, index: u64) -> Result<u64> {
        if index >= self.stored {
            return Ok(0);
        }
        let c = index / CHUNK;
        let i = (index % CHUNK) as usize;
        if let Some(chunk) = self
            .chunks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&c)
        {
            return Ok(chunk[i]);
        }
        // Loaded without the lock held; two racing loads read the same
        // bytes (the table is not written while open read-only).
        let first = c * CHUNK;
        let n = (self.stored - first).min(CHUNK);
        let mut raw = vec![0u8; (n * 8) as usize];
        self.file.read_at(&mut raw, self.offset + first * 8)?;
        let chunk: Arc<[u64]> = raw.chunks_exact(8).map(BigEndian::read_u64).collect();
        let v = chunk[i];
        self.chunks
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(c)
            .or_insert(chunk);
        Ok(v)
    }

    /// Entry `index` if its chunk is resident (or it lies past the stored
    /// table); `None` when reading it would need file I/O. The chunk lock
    /// is never held across I/O, so this does not wait for any.
    pub fn cached_entry(&self, index: u64) -> Option<u64> {
        if index >= self.stored {
            return Some(0);
        }
        let g = self.chunks.read().unwrap_or_else(|p| p.into_inner());
        g.get(&(index / CHUNK)).map(|c| c[(index % CHUNK) as usize])
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
        self.entry(index)?; // loads the chunk
        let c = index / CHUNK;
        let mut g = self.chunks.write().unwrap_or_else(|p| p.into_inner());
        if let Some(chunk) = g.get_mut(&c) {
            let mut v = chunk.to_vec();
            v[(index % CHUNK) as usize] = value;
            *chunk = v.into();
        }
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
        self.chunks.read().unwrap_or_else(|p| p.into_inner()).len()
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
