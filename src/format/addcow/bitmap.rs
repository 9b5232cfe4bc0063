//! The allocation bitmap behind a bounded write-back cache.
//!
//! Blocks are `BLOCK` bytes of the add-cow file at `BLOCK`-aligned file
//! offsets, so write-back is aligned. Blocks load on first use; opening
//! costs nothing whatever the image size. A dirty block may reach the disk
//! only after the data its bits cover is durable: write-back snapshots the
//! dirty blocks, flushes the image file, then writes the snapshots.

use crate::error::{Error, Result};
use crate::io::BlockFile;
use rustc_hash::FxHashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Cache block size (bytes of the add-cow file).
pub const BLOCK: u64 = 4096;

struct Entry {
    data: Box<[u8]>,
    /// 0 = clean; otherwise the generation of the last change.
    dirty: u64,
    /// Second-chance bit for eviction. Readers set it only when clear, so
    /// hot blocks cost no shared-cache-line writes.
    referenced: AtomicBool,
}

impl Entry {
    fn touch(&self) {
        if !self.referenced.load(Ordering::Relaxed) {
            self.referenced.store(true, Ordering::Relaxed);
        }
    }
}

struct Inner {
    blocks: FxHashMap<u64, Entry>,
    generation: u64,
}

/// Lookups (the hot path) share a read lock; loads, evictions and bit
/// changes take the write lock.
pub struct Bitmap {
    file: Arc<dyn BlockFile>,
    /// Flushed before any bitmap block is written.
    data_file: Arc<dyn BlockFile>,
    base: u64,
    /// Number of valid bits (clusters).
    bits: AtomicU64,
    capacity: usize,
    inner: RwLock<Inner>,
    /// Serialises write-back so an older snapshot never lands after a newer one.
    writeback: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Bitmap {
    /// `cache_bytes` bounds the memory for cached blocks (at least 2 blocks).
    pub fn new(
        file: Arc<dyn BlockFile>,
        data_file: Arc<dyn BlockFile>,
        base: u64,
        bits: u64,
        cache_bytes: u64,
    ) -> Self {
        let capacity = (cache_bytes / BLOCK).clamp(2, 1 << 20) as usize;
        Bitmap {
            file,
            data_file,
            base,
            bits: AtomicU64::new(bits),
            capacity,
            inner: RwLock::new(Inner {
                blocks: FxHashMap::default(),
                generation: 0,
            }),
            writeback: Mutex::new(()),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn bits(&self) -> u64 {
        self.bits.load(Ordering::Acquire)
    }

    /// Bitmap bytes currently in use.
    pub fn byte_len(&self) -> u64 {
        self.bits().div_ceil(8)
    }

    /// Cached blocks (for tests of the memory bound).
    pub fn cached_blocks(&self) -> usize {
        self.read().blocks.len()
    }

    /// The file range of block `k` that holds bitmap bytes.
    fn block_span(&self, k: u64) -> (u64, u64) {
        let start = (k * BLOCK).max(self.base);
        let end = ((k + 1) * BLOCK).min(self.base + self.byte_len());
        (start, end.max(start))
    }

    /// A read guard with block `k` resident.
    fn resident(&self, k: u64) -> Result<RwLockReadGuard<'_, Inner>> {
        loop {
            let g = self.read();
            if let Some(e) = g.blocks.get(&k) {
                e.touch();
                return Ok(g);
            }
            drop(g);
            drop(self.resident_mut(k)?);
        }
    }

    /// A write guard with block `k` resident (loading under the lock, so a
    /// stale copy can never replace a newer one).
    fn resident_mut(&self, k: u64) -> Result<RwLockWriteGuard<'_, Inner>> {
        loop {
            let mut g = self.write();
            if g.blocks.contains_key(&k) {
                return Ok(g);
            }
            if g.blocks.len() >= self.capacity {
                // Second chance: a clean block not used since the last
                // sweep, else any clean block.
                let mut victim = None;
                for (bk, e) in g.blocks.iter() {
                    if e.dirty != 0 {
                        continue;
                    }
                    if !e.referenced.swap(false, Ordering::Relaxed) {
                        victim = Some(*bk);
                        break;
                    }
                    victim.get_or_insert(*bk);
                }
                match victim {
                    Some(v) => {
                        g.blocks.remove(&v);
                    }
                    None => {
                        // Everything is dirty: write back, then retry.
                        drop(g);
                        self.write_back()?;
                        continue;
                    }
                }
            }
            let mut data = vec![0u8; BLOCK as usize].into_boxed_slice();
            let (s, e) = self.block_span(k);
            if e > s {
                let off = (s - k * BLOCK) as usize;
                self.file
                    .read_at(&mut data[off..off + (e - s) as usize], s)
                    .map_err(|e| e.context("reading add-cow bitmap"))?;
            }
            g.blocks.insert(
                k,
                Entry {
                    data,
                    dirty: 0,
                    referenced: AtomicBool::new(true),
                },
            );
            return Ok(g);
        }
    }

    /// File offset of the byte holding bit `n`.
    fn byte_pos(&self, n: u64) -> u64 {
        self.base + n / 8
    }

    /// The state of bit `n` and how many bits from `n` on (at most `max`)
    /// share it.
    pub fn run(&self, n: u64, max: u64) -> Result<(bool, u64)> {
        let bits = self.bits();
        if n >= bits {
            return Err(Error::OutOfRange(format!("cluster {n} beyond {bits}")));
        }
        let end = n.saturating_add(max).min(bits);
        let mut pos = n;
        let mut state = None;
        while pos < end {
            let k = self.byte_pos(pos) / BLOCK;
            let g = self.resident(k)?;
            let Some(entry) = g.blocks.get(&k) else {
                continue; // evicted between the calls: look again
            };
            let data = &entry.data;
            // Bits covered by this block.
            let block_last_bit = ((k + 1) * BLOCK - self.base) * 8;
            let stop = end.min(block_last_bit);
            while pos < stop {
                let byte = data[(self.byte_pos(pos) - k * BLOCK) as usize];
                // Whole bytes of one state skip eight bits at a time.
                if pos.is_multiple_of(8) && pos + 8 <= stop && (byte == 0 || byte == 0xff) {
                    let s = byte == 0xff;
                    match state {
                        None => state = Some(s),
                        Some(st) if st != s => return Ok((st, pos - n)),
                        _ => {}
                    }
                    pos += 8;
                    continue;
                }
                let s = byte & (1 << (pos % 8)) != 0;
                match state {
                    None => state = Some(s),
                    Some(st) if st != s => return Ok((st, pos - n)),
                    _ => {}
                }
                pos += 1;
            }
        }
        Ok((state.unwrap_or(false), end - n))
    }

    /// Sets (or clears) bits `[start, end)` in the cache.
    pub fn set_range(&self, start: u64, end: u64, value: bool) -> Result<()> {
        let mut pos = start;
        while pos < end {
            let k = self.byte_pos(pos) / BLOCK;
            let mut g = self.resident_mut(k)?;
            g.generation += 1;
            let gen = g.generation;
            let e = g.blocks.get_mut(&k).expect("resident");
            let block_last_bit = ((k + 1) * BLOCK - self.base) * 8;
            let stop = end.min(block_last_bit);
            let mut changed = false;
            while pos < stop {
                let i = (self.byte_pos(pos) - k * BLOCK) as usize;
                if pos.is_multiple_of(8) && pos + 8 <= stop {
                    let v = if value { 0xff } else { 0 };
                    changed |= e.data[i] != v;
                    e.data[i] = v;
                    pos += 8;
                    continue;
                }
                let m = 1u8 << (pos % 8);
                let old = e.data[i];
                e.data[i] = if value { old | m } else { old & !m };
                changed |= e.data[i] != old;
                pos += 1;
            }
            if changed {
                e.dirty = gen;
            }
        }
        Ok(())
    }

    /// Writes every dirty block, after making the data file durable.
    pub fn write_back(&self) -> Result<()> {
        let _wb = lock(&self.writeback);
        let snap: Vec<(u64, u64, Vec<u8>)> = {
            let g = self.read();
            g.blocks
                .iter()
                .filter(|(_, e)| e.dirty != 0)
                .map(|(k, e)| (*k, e.dirty, e.data.to_vec()))
                .collect()
        };
        if snap.is_empty() {
            return Ok(());
        }
        // Every bit in the snapshot was set after its data write returned,
        // so this flush makes all that data durable before any bit lands.
        self.data_file.flush()?;
        for (k, _, data) in &snap {
            let (s, e) = self.block_span(*k);
            if e > s {
                let off = (s - k * BLOCK) as usize;
                self.file
                    .write_at(&data[off..off + (e - s) as usize], s)
                    .map_err(|e| e.context("writing add-cow bitmap"))?;
            }
        }
        let mut g = self.write();
        for (k, gen, _) in snap {
            if let Some(e) = g.blocks.get_mut(&k) {
                if e.dirty == gen {
                    e.dirty = 0;
                }
            }
        }
        Ok(())
    }

    /// Changes the number of bits. Bits past the new end are cleared first
    /// so a later grow finds them zero.
    pub fn resize(&self, bits: u64) -> Result<()> {
        let old = self.bits();
        if bits < old {
            // Clear the rest of the block holding the new end (the driver
            // truncates the file past it), and forget later blocks, so a
            // later grow finds only zeros.
            let kb = self.byte_pos(bits) / BLOCK;
            let block_last_bit = ((kb + 1) * BLOCK - self.base) * 8;
            self.set_range(bits, old.min(block_last_bit), false)?;
            self.bits.store(bits, Ordering::Release);
            self.write().blocks.retain(|k, _| *k <= kb);
        } else {
            self.bits.store(bits, Ordering::Release);
        }
        Ok(())
    }

    /// Number of set bits (reads through the cache; does not fill it).
    pub fn count_set(&self) -> Result<u64> {
        Ok(self.scan(&mut |_, _| {})?.0)
    }

    /// Counts set bits, reporting bitmap bytes scanned to `progress`; also
    /// says whether any padding bit past the last cluster is set.
    pub fn scan(&self, progress: &mut dyn FnMut(u64, u64)) -> Result<(u64, bool)> {
        let bits = self.bits();
        let mut stray = false;
        let len = self.byte_len();
        let mut count = 0u64;
        let mut off = 0u64;
        let mut buf = vec![0u8; (BLOCK * 64) as usize];
        while off < len {
            let n = (len - off).min(buf.len() as u64);
            self.file.read_at(&mut buf[..n as usize], self.base + off)?;
            // Cached blocks may be newer than the disk.
            {
                let g = self.read();
                for (k, e) in g.blocks.iter() {
                    let (s, end) = self.block_span(*k);
                    let (ws, we) = (s.max(self.base + off), end.min(self.base + off + n));
                    if we > ws {
                        let src = (ws - k * BLOCK) as usize;
                        let dst = (ws - self.base - off) as usize;
                        buf[dst..dst + (we - ws) as usize]
                            .copy_from_slice(&e.data[src..src + (we - ws) as usize]);
                    }
                }
            }
            for (i, b) in buf[..n as usize].iter().enumerate() {
                let first = (off + i as u64) * 8;
                if first + 8 <= bits {
                    count += b.count_ones() as u64;
                } else if first < bits {
                    let valid = bits - first;
                    let mask = ((1u16 << valid) - 1) as u8;
                    count += (b & mask).count_ones() as u64;
                    stray |= b & !mask != 0;
                }
            }
            off += n;
            progress(off, len);
        }
        Ok((count, stray))
    }

    /// Clears the padding bits past the last cluster (in the cache; written
    /// back like any change).
    pub fn clear_padding(&self) -> Result<()> {
        let bits = self.bits();
        self.set_range(bits, bits.div_ceil(8) * 8, false)
    }

    // ---- cache-only lookups (non-blocking; the QEMU glue's fast path) ----

    /// `run` answered from resident blocks alone: `None` when block of bit
    /// `n` is not cached or the cache lock is taken (a writer may hold it
    /// while loading a block from the file). A run ends early at the first
    /// block that is not resident. Never waits for I/O.
    ///
    /// The answer is current: the cache is the newest copy of every bit
    /// (dirty blocks are never evicted, and a bit is set, under the write
    /// lock, before the write that allocated its cluster returns).
    pub fn run_cached(&self, n: u64, max: u64) -> Option<(bool, u64)> {
        let bits = self.bits();
        if n >= bits {
            return None;
        }
        let end = n.saturating_add(max).min(bits);
        let g = match self.inner.try_read() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        let mut pos = n;
        let mut state = None;
        while pos < end {
            let k = self.byte_pos(pos) / BLOCK;
            let Some(entry) = g.blocks.get(&k) else { break };
            entry.touch();
            let stop = end.min(((k + 1) * BLOCK - self.base) * 8);
            while pos < stop {
                let byte = entry.data[(self.byte_pos(pos) - k * BLOCK) as usize];
                let whole = pos.is_multiple_of(8) && pos + 8 <= stop && (byte == 0 || byte == 0xff);
                let s = if whole {
                    byte == 0xff
                } else {
                    byte & (1 << (pos % 8)) != 0
                };
                match state {
                    None => state = Some(s),
                    Some(st) if st != s => return Some((st, pos - n)),
                    _ => {}
                }
                pos += if whole { 8 } else { 1 };
            }
        }
        state.map(|s| (s, pos - n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::fault::MemStorage;
    use crate::io::Storage;
    use std::path::Path;

    fn setup(bits: u64, cache: u64) -> (MemStorage, Bitmap) {
        let s = MemStorage::new();
        let f = s.create(Path::new("m"), false).unwrap();
        f.set_len(2560 + bits.div_ceil(8)).unwrap();
        let d = s.create(Path::new("d"), false).unwrap();
        let b = Bitmap::new(f, d, 2560, bits, cache);
        (s, b)
    }

    #[test]
    fn cached_runs_never_load() {
        let (_s, b) = setup(8 * 4096 * 3, 1 << 20);
        assert_eq!(b.run_cached(0, 10), None, "nothing resident yet");
        b.set_range(5, 9, true).unwrap(); // loads block 0 only
        assert_eq!(b.cached_blocks(), 1);
        assert_eq!(b.run_cached(0, 100), Some((false, 5)));
        assert_eq!(b.run_cached(5, 100), Some((true, 4)));
        // A run stops where the resident blocks end.
        let first_block_bits = (BLOCK - 2560) * 8;
        assert_eq!(
            b.run_cached(9, u64::MAX),
            Some((false, first_block_bits - 9))
        );
        assert_eq!(b.run_cached(first_block_bits, 1), None);
        assert_eq!(b.cached_blocks(), 1, "lookups loaded nothing");
    }

    #[test]
    fn runs_and_sets() {
        let (_s, b) = setup(100_000, 1 << 20);
        assert_eq!(b.run(0, 100_000).unwrap(), (false, 100_000));
        b.set_range(10, 70_000, true).unwrap();
        assert_eq!(b.run(0, 1000).unwrap(), (false, 10));
        assert_eq!(b.run(10, 100_000).unwrap(), (true, 69_990));
        assert_eq!(b.run(70_000, 100_000).unwrap(), (false, 30_000));
        assert_eq!(b.count_set().unwrap(), 69_990);
    }

    #[test]
    fn write_back_flushes_data_first_and_persists() {
        let (s, b) = setup(1000, 1 << 20);
        let flushes = s.flush_count();
        b.set_range(3, 5, true).unwrap();
        b.write_back().unwrap();
        assert_eq!(
            s.flush_count(),
            flushes + 1,
            "data file flushed before bits"
        );
        let m = s.file("m").unwrap().contents();
        assert_eq!(m[2560], 0b0001_1000);
    }

    #[test]
    fn cache_stays_bounded() {
        let bits = 8 * 4096 * 64;
        let (_s, b) = setup(bits, 2 * BLOCK);
        for i in 0..64 {
            b.set_range(i * 8 * 4096, i * 8 * 4096 + 1, true).unwrap();
            assert!(b.cached_blocks() <= 2);
        }
        for i in 0..64 {
            assert_eq!(b.run(i * 8 * 4096, 1).unwrap(), (true, 1));
        }
        assert_eq!(b.count_set().unwrap(), 64);
    }

    #[test]
    fn shrink_clears_tail_bits() {
        let (_s, b) = setup(64, 1 << 20);
        b.set_range(0, 64, true).unwrap();
        b.resize(10).unwrap();
        b.resize(64).unwrap();
        assert_eq!(b.run(0, 64).unwrap(), (true, 10));
        assert_eq!(b.run(10, 64).unwrap(), (false, 54));
    }
}
