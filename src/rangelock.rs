//! Locks on guest byte ranges: allocating writes that touch the same
//! clusters wait for each other; everything else runs in parallel.

use std::sync::{Condvar, Mutex};

#[derive(Default)]
pub struct RangeLocks {
    held: Mutex<Vec<(u64, u64)>>,
    cv: Condvar,
}

pub struct RangeGuard<'a> {
    locks: &'a RangeLocks,
    range: (u64, u64),
}

impl RangeLocks {
    /// Waits until no held range overlaps `[start, end)`, then holds it.
    pub fn lock(&self, start: u64, end: u64) -> RangeGuard<'_> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        while held.iter().any(|&(s, e)| s < end && start < e) {
            held = self.cv.wait(held).unwrap_or_else(|p| p.into_inner());
        }
        held.push((start, end));
        RangeGuard {
            locks: self,
            range: (start, end),
        }
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        let mut held = self.locks.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = held.iter().position(|r| *r == self.range) {
            held.swap_remove(i);
        }
        drop(held);
        self.locks.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[test]
    fn overlapping_ranges_exclude_each_other() {
        let l = Arc::new(RangeLocks::default());
        let inside = Arc::new(AtomicBool::new(false));
        let mut ts = Vec::new();
        for _ in 0..4 {
            let (l, inside) = (l.clone(), inside.clone());
            ts.push(std::thread::spawn(move || {
                for _ in 0..200 {
                    let _g = l.lock(10, 20);
                    assert!(!inside.swap(true, Ordering::SeqCst));
                    std::thread::yield_now();
                    inside.store(false, Ordering::SeqCst);
                }
            }));
        }
        // A disjoint range is never blocked by them.
        for _ in 0..100 {
            let _g = l.lock(20, 30);
        }
        for t in ts {
            t.join().unwrap();
        }
    }
}
