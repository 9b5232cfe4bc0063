//! A bounded cache of metadata tables (L2 tables; refcount blocks once the
//! write side exists), keyed by host offset, least recently used first out.
//!
//! Tables are immutable `Arc<[u64]>` (entries already decoded to native
//! order), so a reader keeps using the table it looked up while the lock is
//! released: the lock is held only to find, insert or evict an entry,
//! never across file I/O. A miss loads the table with no lock held; if two
//! readers miss at once both load and the first insert wins. Lookups
//! share the lock (see `TableCache`).
//!
//! For the write side: a writer replaces a table with `put(.., dirty)`
//! (copy, modify, put: readers holding the old `Arc` see a consistent old
//! table), dirty tables are never evicted, and `dirty()` lists what a flush
//! must write back (after whatever those writes depend on).

use crate::error::Result;
use crossbeam_utils::sync::{ShardedLock, ShardedLockReadGuard, ShardedLockWriteGuard};
use rustc_hash::FxHashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

pub type Table = Arc<[u64]>;

struct Slot {
    table: Table,
    /// When it was last used: the `clock` value it took then.
    tick: AtomicU64,
    dirty: bool,
}

#[derive(Default)]
struct Inner {
    map: FxHashMap<u64, Slot>,
    /// Bumped by every `put` and `invalidate`: a load that started before
    /// one may have read a table that was written over since.
    generation: u64,
}

impl Inner {
    /// Evicts least recently used clean tables down to `capacity` (dirty
    /// ones stay until written back). A linear scan, as QEMU's qcow2 cache
    /// makes: it runs only when a table enters, after a load from disk.
    fn evict_to(&mut self, capacity: usize) {
        while self.map.len() > capacity {
            let victim = self
                .map
                .iter()
                .filter(|(_, s)| !s.dirty)
                .min_by_key(|(_, s)| s.tick.load(Relaxed))
                .map(|(k, _)| *k);
            match victim {
                Some(k) => self.map.remove(&k),
                None => return,
            };
        }
    }
}

/// Cache statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stats {
    pub entries: usize,
    pub misses: u64,
}

/// Lookups take the lock shared, so threads reading through cached tables
/// do not wait for each other; the use order is kept in atomic ticks. A
/// lookup of the table used last writes nothing shared (the common case of
/// requests walking one table), any other takes a new tick.
pub struct TableCache {
    inner: ShardedLock<Inner>,
    clock: AtomicU64,
    misses: AtomicU64,
    capacity: usize,
}

impl TableCache {
    /// A cache holding at most `capacity` tables (at least 1).
    pub fn new(capacity: usize) -> Self {
        TableCache {
            inner: ShardedLock::new(Inner::default()),
            clock: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            capacity: capacity.max(1),
        }
    }

    fn read(&self) -> ShardedLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> ShardedLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// A new tick, later than every tick handed out before.
    fn next_tick(&self) -> u64 {
        self.clock.fetch_add(1, Relaxed) + 1
    }

    /// The cached slot at `key`, marked as used now.
    fn touch_slot<'a>(&self, g: &'a Inner, key: u64) -> Option<&'a Slot> {
        let slot = g.map.get(&key)?;
        if slot.tick.load(Relaxed) != self.clock.load(Relaxed) {
            slot.tick.store(self.next_tick(), Relaxed);
        }
        Some(slot)
    }

    /// The cached table at `key`, marked as used now.
    fn touch(&self, g: &Inner, key: u64) -> Option<Table> {
        self.touch_slot(g, key).map(|s| s.table.clone())
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn stats(&self) -> Stats {
        Stats {
            entries: self.read().map.len(),
            misses: self.misses.load(Relaxed),
        }
    }

    /// The table at `key`, loading it with `load` (no lock held) on a miss.
    /// A load that raced with a `put` (the writer may have written the
    /// table back and let it go since) is retried, so a stale table never
    /// enters the cache.
    pub fn get(&self, key: u64, load: impl Fn() -> Result<Vec<u64>>) -> Result<Table> {
        loop {
            let gen = {
                let g = self.read();
                if let Some(t) = self.touch(&g, key) {
                    return Ok(t);
                }
                g.generation
            };
            self.misses.fetch_add(1, Relaxed);
            let table: Table = load()?.into();
            let mut g = self.write();
            if let Some(t) = self.touch(&g, key) {
                return Ok(t);
            }
            if g.generation != gen {
                continue;
            }
            self.insert(&mut g, key, table.clone(), false);
            return Ok(table);
        }
    }

    /// `f` applied to the cached table at `key` under the shared lock (no
    /// reference counted copy: a lookup then writes nothing shared when
    /// the table is the one used last), or `None` if it is not cached.
    pub fn with<R>(&self, key: u64, f: impl FnOnce(&[u64]) -> R) -> Option<R> {
        let g = self.read();
        self.touch_slot(&g, key).map(|s| f(&s.table))
    }

    /// The table at `key` if cached, else `None`: never loads. Counts as
    /// a use (LRU) but not as a miss. The cache lock is never held across
    /// I/O, so this does not wait for any.
    pub fn peek(&self, key: u64) -> Option<Table> {
        self.touch(&self.read(), key)
    }

    /// Whether `key` is cached (no LRU use: for the overlap checks).
    pub fn contains(&self, key: u64) -> bool {
        self.read().map.contains_key(&key)
    }

    fn insert(&self, g: &mut Inner, key: u64, table: Table, dirty: bool) {
        let tick = AtomicU64::new(self.next_tick());
        g.map.insert(key, Slot { table, tick, dirty });
        g.evict_to(self.capacity);
    }

    /// Stores a (new version of a) table; a dirty one stays until
    /// `mark_clean`.
    pub fn put(&self, key: u64, table: Table, dirty: bool) {
        let mut g = self.write();
        g.generation += 1;
        let dirty = dirty || g.map.get(&key).is_some_and(|s| s.dirty);
        self.insert(&mut g, key, table, dirty);
    }

    /// Keys and tables that must be written back, oldest use first.
    pub fn dirty(&self) -> Vec<(u64, Table)> {
        let g = self.read();
        let mut d: Vec<(u64, u64, Table)> = g
            .map
            .iter()
            .filter(|(_, s)| s.dirty)
            .map(|(k, s)| (s.tick.load(Relaxed), *k, s.table.clone()))
            .collect();
        d.sort_unstable_by_key(|(t, k, _)| (*t, *k));
        d.into_iter().map(|(_, k, t)| (k, t)).collect()
    }

    /// Records that `key` was written back as `table` (unless it changed
    /// again since).
    pub fn mark_clean(&self, key: u64, table: &Table) {
        let mut g = self.write();
        if let Some(s) = g.map.get_mut(&key) {
            if Arc::ptr_eq(&s.table, table) {
                s.dirty = false;
            }
        }
        g.evict_to(self.capacity);
    }

    /// Forgets `key` (a freed table).
    pub fn invalidate(&self, key: u64) {
        let mut g = self.write();
        g.generation += 1;
        g.map.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn bounded_lru() {
        let c = TableCache::new(2);
        let loads = AtomicUsize::new(0);
        let load = |v: u64| {
            let loads = &loads;
            move || {
                loads.fetch_add(1, Ordering::SeqCst);
                Ok(vec![v])
            }
        };
        assert_eq!(c.get(1, load(10)).unwrap()[0], 10);
        assert_eq!(c.get(2, load(20)).unwrap()[0], 20);
        assert_eq!(c.get(1, load(99)).unwrap()[0], 10); // hit, 1 is now newest
        c.get(3, load(30)).unwrap(); // evicts 2
        assert_eq!(c.stats().entries, 2);
        assert_eq!(loads.load(Ordering::SeqCst), 3);
        assert_eq!(c.get(2, load(21)).unwrap()[0], 21); // reloaded
        assert_eq!(c.get(3, load(99)).unwrap()[0], 30);
        assert_eq!(c.stats().misses, 4);
    }

    #[test]
    fn dirty_tables_are_not_evicted() {
        let c = TableCache::new(1);
        let t: Table = vec![1].into();
        c.put(7, t.clone(), true);
        c.get(8, || Ok(vec![2])).unwrap();
        assert_eq!(c.dirty().len(), 1);
        assert_eq!(c.stats().entries, 1, "clean 8 went, dirty 7 stayed");
        c.mark_clean(7, &t);
        assert!(c.dirty().is_empty());
        c.invalidate(7);
        assert_eq!(c.stats().entries, 0);
    }

    #[test]
    fn failed_loads_are_not_cached() {
        let c = TableCache::new(4);
        assert!(c.get(1, || Err(crate::Error::Corrupt("x".into()))).is_err());
        assert_eq!(c.get(1, || Ok(vec![5])).unwrap()[0], 5);
    }

    #[test]
    fn concurrent_readers() {
        let c = Arc::new(TableCache::new(8));
        let hs: Vec<_> = (0..4)
            .map(|t| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for i in 0..2000u64 {
                        let k = (i * 7 + t) % 16;
                        let tab = c.get(k, || Ok(vec![k * 3; 4])).unwrap();
                        assert_eq!(tab[0], k * 3);
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert!(c.stats().entries <= 8);
    }
}
