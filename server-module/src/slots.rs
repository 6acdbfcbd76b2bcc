//! Which slots of a backing store are free. Pure logic: a free set of slot runs plus a
//! high-water mark, preferring one contiguous run per request so a 2 MiB eviction is one I/O.

use crate::extents::{ExtentSet, Run};

/// Slot allocator for a store of at most `capacity` slots (4 KiB each).
#[derive(Debug, Clone)]
pub struct SlotAllocator {
    free: ExtentSet,
    high: u64,
    capacity: u64,
}

impl SlotAllocator {
    /// An empty store that may grow to `capacity` slots.
    pub fn new(capacity: u64) -> Self {
        Self {
            free: ExtentSet::new(),
            high: 0,
            capacity,
        }
    }

    /// Slots in use.
    pub fn used(&self) -> u64 {
        self.high - self.free.total()
    }

    /// Allocates `n` slots, as few runs as possible; `None` (nothing taken) if they do not fit.
    pub fn alloc(&mut self, n: u64) -> Option<Vec<Run>> {
        if n == 0 {
            return Some(Vec::new());
        }
        if let Some(fit) = self.free.best_fit(n) {
            let r = Run {
                start: fit.start,
                len: n,
            };
            self.free.remove(r);
            return Some(vec![r]);
        }
        if self.high + n <= self.capacity {
            let r = Run {
                start: self.high,
                len: n,
            };
            self.high += n;
            return Some(vec![r]);
        }
        if self.free.total() + (self.capacity - self.high) < n {
            return None;
        }
        let mut out = Vec::new();
        let mut left = n;
        let runs: Vec<Run> = self.free.longest_k(usize::MAX).collect();
        for r in runs {
            let take = r.len.min(left);
            let piece = Run {
                start: r.start,
                len: take,
            };
            self.free.remove(piece);
            out.push(piece);
            left -= take;
            if left == 0 {
                return Some(out);
            }
        }
        out.push(Run {
            start: self.high,
            len: left,
        });
        self.high += left;
        Some(out)
    }

    /// Returns slots; they are reused by later allocations.
    pub fn free(&mut self, r: Run) {
        self.free.insert(r);
        // Shrink the high-water mark when the top is free, so the file can be trimmed.
        while let Some(top) = self.free.containing(self.high.saturating_sub(1)) {
            if top.end() != self.high {
                break;
            }
            self.free.remove(top);
            self.high = top.start;
        }
    }

    /// One past the highest slot in use (the file need not be larger).
    #[cfg(test)]
    pub fn high_water(&self) -> u64 {
        self.high
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reuses_and_shrinks() {
        let mut a = SlotAllocator::new(100);
        let x = a.alloc(10).unwrap();
        let y = a.alloc(10).unwrap();
        assert_eq!((x[0].start, y[0].start), (0, 10));
        a.free(x[0]);
        assert_eq!(a.alloc(5).unwrap(), vec![Run { start: 0, len: 5 }]);
        a.free(y[0]);
        assert_eq!(a.high_water(), 5);
        assert_eq!(a.used(), 5);
        assert!(a.alloc(96).is_none());
        assert_eq!(a.alloc(95).unwrap().iter().map(|r| r.len).sum::<u64>(), 95);
    }

    proptest! {
        #[test]
        fn never_hands_out_a_slot_twice(ops in proptest::collection::vec((any::<bool>(), 1u64..40, any::<usize>()), 1..200)) {
            let mut a = SlotAllocator::new(400);
            let mut held: Vec<Run> = Vec::new();
            let mut used = vec![false; 400];
            for (alloc, n, pick) in ops {
                if alloc {
                    if let Some(runs) = a.alloc(n) {
                        prop_assert_eq!(runs.iter().map(|r| r.len).sum::<u64>(), n);
                        for r in runs {
                            for s in r.start..r.end() {
                                prop_assert!(s < 400 && !used[s as usize]);
                                used[s as usize] = true;
                            }
                            held.push(r);
                        }
                    } else {
                        prop_assert!(used.iter().filter(|u| !**u).count() < n as usize);
                    }
                } else if !held.is_empty() {
                    let r = held.swap_remove(pick % held.len());
                    for s in r.start..r.end() { used[s as usize] = false; }
                    a.free(r);
                }
                prop_assert_eq!(a.used(), used.iter().filter(|u| **u).count() as u64);
            }
        }
    }
}
