//! A coalescing set of frame runs with an index by length. Pure logic.
//!
//! Used by the frame allocator for its free set and for frames in transit back to the host.
//! Every operation is O(log n) in the number of runs.

use std::collections::{BTreeMap, BTreeSet};

/// A run of frames `[start, start + len)` in frame numbers relative to a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Run {
    /// First frame.
    pub start: u64,
    /// Number of frames (never zero inside an [`ExtentSet`]).
    pub len: u64,
}

impl Run {
    /// One past the last frame.
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// Disjoint, coalesced runs of frames.
#[derive(Clone, Debug, Default)]
pub struct ExtentSet {
    by_start: BTreeMap<u64, u64>,
    by_len: BTreeSet<(u64, u64)>,
    total: u64,
}

impl ExtentSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of frames in the set.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Number of separate runs.
    pub fn runs(&self) -> usize {
        self.by_start.len()
    }

    /// Runs in address order.
    pub fn iter(&self) -> impl Iterator<Item = Run> + '_ {
        self.by_start
            .iter()
            .map(|(&s, &l)| Run { start: s, len: l })
    }

    fn put(&mut self, start: u64, len: u64) {
        self.by_start.insert(start, len);
        self.by_len.insert((len, start));
    }

    fn take(&mut self, start: u64) -> u64 {
        let len = self.by_start.remove(&start).expect("run present");
        self.by_len.remove(&(len, start));
        len
    }

    /// The run that contains `frame`, if any.
    pub fn containing(&self, frame: u64) -> Option<Run> {
        let (&s, &l) = self.by_start.range(..=frame).next_back()?;
        (frame < s + l).then_some(Run { start: s, len: l })
    }

    /// True if any frame of `r` is in the set.
    pub fn overlaps(&self, r: Run) -> bool {
        if r.len == 0 {
            return false;
        }
        if self.containing(r.start).is_some() {
            return true;
        }
        self.by_start.range(r.start..r.end()).next().is_some()
    }

    /// True if every frame of `r` is in the set.
    pub fn contains(&self, r: Run) -> bool {
        r.len == 0 || self.containing(r.start).is_some_and(|c| r.end() <= c.end())
    }

    /// Adds `r`, which must not overlap the set; merges with neighbours.
    ///
    /// # Panics
    /// If `r` overlaps the set (callers check first; a panic here is a memout bug).
    pub fn insert(&mut self, r: Run) {
        if r.len == 0 {
            return;
        }
        assert!(!self.overlaps(r), "insert of overlapping run {r:?}");
        let (mut start, mut end) = (r.start, r.end());
        if let Some(prev) = self
            .by_start
            .range(..start)
            .next_back()
            .map(|(&s, &l)| (s, l))
            && prev.0 + prev.1 == start
        {
            self.take(prev.0);
            start = prev.0;
        }
        if self.by_start.contains_key(&end) {
            end += self.take(end);
        }
        self.put(start, end - start);
        self.total += r.len;
    }

    /// Removes `r`, which must lie inside the set.
    ///
    /// # Panics
    /// If `r` is not fully contained (callers check first).
    pub fn remove(&mut self, r: Run) {
        if r.len == 0 {
            return;
        }
        let c = self.containing(r.start).expect("remove of absent run");
        assert!(r.end() <= c.end(), "remove of run {r:?} not inside {c:?}");
        self.take(c.start);
        if c.start < r.start {
            self.put(c.start, r.start - c.start);
        }
        if r.end() < c.end() {
            self.put(r.end(), c.end() - r.end());
        }
        self.total -= r.len;
    }

    /// The runs of the set that overlap `r`, clipped to it, in order.
    pub fn within(&self, r: Run) -> Vec<Run> {
        let mut out = Vec::new();
        let mut from = r.start;
        if let Some(c) = self.containing(r.start) {
            let end = c.end().min(r.end());
            out.push(Run {
                start: r.start,
                len: end - r.start,
            });
            from = c.end();
        }
        if from >= r.end() {
            return out;
        }
        for (&s, &l) in self.by_start.range(from..r.end()) {
            let end = (s + l).min(r.end());
            out.push(Run {
                start: s,
                len: end - s,
            });
        }
        out
    }

    /// The parts of `r` not in the set, in order, at most `max` frames in all: what a
    /// populator or an evictor may claim of `r` when the set holds the runs in flight.
    pub fn gaps(&self, r: Run, max: u64) -> Vec<Run> {
        let mut out = Vec::new();
        let mut left = max;
        let mut f = r.start;
        let mut take = |start: u64, end: u64, out: &mut Vec<Run>| {
            let len = (end - start).min(left);
            if len > 0 {
                out.push(Run { start, len });
                left -= len;
            }
        };
        for c in self.within(r) {
            if c.start > f {
                take(f, c.start, &mut out);
            }
            f = c.end();
        }
        if f < r.end() {
            take(f, r.end(), &mut out);
        }
        out
    }

    /// Adds the frames of `r` not in the set yet (unlike [`insert`](Self::insert), overlap is
    /// fine).
    pub fn add(&mut self, r: Run) {
        let mut f = r.start;
        for c in self.within(r) {
            if c.start > f {
                self.insert(Run {
                    start: f,
                    len: c.start - f,
                });
            }
            f = c.end();
        }
        if f < r.end() {
            self.insert(Run {
                start: f,
                len: r.end() - f,
            });
        }
    }

    /// Removes whatever frames of `r` are in the set (unlike [`remove`](Self::remove), `r`
    /// need not lie inside it).
    pub fn subtract(&mut self, r: Run) {
        for c in self.within(r) {
            self.remove(c);
        }
    }

    /// The lowest-addressed run among the shortest runs of at least `len` frames (best fit).
    pub fn best_fit(&self, len: u64) -> Option<Run> {
        self.by_len
            .range((len, 0)..)
            .next()
            .map(|&(l, s)| Run { start: s, len: l })
    }

    /// The last run that starts before `frame` (for a frame outside the set: the run below it).
    pub fn last_before(&self, frame: u64) -> Option<Run> {
        self.by_start
            .range(..frame)
            .next_back()
            .map(|(&s, &l)| Run { start: s, len: l })
    }

    /// The first run that starts after `frame`.
    pub fn first_after(&self, frame: u64) -> Option<Run> {
        let from = frame.checked_add(1)?;
        self.by_start
            .range(from..)
            .next()
            .map(|(&s, &l)| Run { start: s, len: l })
    }

    /// The `k` longest runs, longest first.
    pub fn longest_k(&self, k: usize) -> impl Iterator<Item = Run> + '_ {
        self.by_len
            .iter()
            .rev()
            .take(k)
            .map(|&(l, s)| Run { start: s, len: l })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(start: u64, len: u64) -> Run {
        Run { start, len }
    }

    #[test]
    fn coalesces_on_insert_and_splits_on_remove() {
        let mut s = ExtentSet::new();
        s.insert(r(0, 10));
        s.insert(r(20, 10));
        s.insert(r(10, 10));
        assert_eq!(s.runs(), 1);
        assert_eq!(s.total(), 30);
        s.remove(r(5, 3));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![r(0, 5), r(8, 22)]);
        assert!(s.contains(r(8, 22)));
        assert!(!s.contains(r(4, 2)));
        assert!(s.overlaps(r(4, 2)));
        assert!(!s.overlaps(r(5, 3)));
        assert_eq!(s.best_fit(4), Some(r(0, 5)));
        assert_eq!(s.best_fit(6), Some(r(8, 22)));
        assert_eq!(s.best_fit(23), None);
    }

    proptest! {
        /// The set agrees with a bitmap model after any sequence of inserts and removes.
        #[test]
        fn matches_bitmap_model(ops in proptest::collection::vec((any::<bool>(), 0u64..200, 1u64..40), 1..200)) {
            let mut s = ExtentSet::new();
            let mut model = vec![false; 256];
            for (ins, start, len) in ops {
                let run = r(start, len);
                let bits = &mut model[start as usize..(start + len) as usize];
                if ins {
                    if bits.iter().all(|b| !b) {
                        prop_assert!(!s.overlaps(run));
                        s.insert(run);
                        bits.iter_mut().for_each(|b| *b = true);
                    } else {
                        prop_assert!(s.overlaps(run));
                    }
                } else if bits.iter().all(|b| *b) {
                    prop_assert!(s.contains(run));
                    s.remove(run);
                    bits.iter_mut().for_each(|b| *b = false);
                } else {
                    prop_assert!(!s.contains(run));
                }
                let count = model.iter().filter(|b| **b).count() as u64;
                prop_assert_eq!(s.total(), count);
                // Runs are coalesced: no two adjacent.
                let runs: Vec<_> = s.iter().collect();
                for w in runs.windows(2) {
                    prop_assert!(w[0].end() < w[1].start);
                }
                for (f, bit) in model.iter().enumerate() {
                    prop_assert_eq!(s.containing(f as u64).is_some(), *bit);
                }
            }
        }
    }

    proptest! {
        /// `add` and `subtract` agree with a per-frame model, and the set stays coalesced.
        #[test]
        fn add_and_subtract_agree_with_a_model(ops in proptest::collection::vec((any::<bool>(), 0u64..200, 1u64..50), 1..80)) {
            let mut set = ExtentSet::new();
            let mut model = vec![false; 260];
            for (add, start, len) in ops {
                let run = Run { start, len };
                if add { set.add(run) } else { set.subtract(run) }
                for f in start..start + len { model[f as usize] = add; }
                prop_assert_eq!(set.total(), model.iter().filter(|b| **b).count() as u64);
                for (f, &m) in model.iter().enumerate() {
                    prop_assert_eq!(set.containing(f as u64).is_some(), m);
                }
                let runs: Vec<Run> = set.iter().collect();
                for w in runs.windows(2) {
                    prop_assert!(w[0].end() < w[1].start, "not coalesced: {:?}", w);
                }
                // The gaps of a window are exactly its frames outside the set, up to `max`.
                let window = Run { start: start / 2, len: len * 3 };
                let max = len + 7;
                let gaps = set.gaps(window, max);
                let want: Vec<u64> = (window.start..window.end().min(260))
                    .filter(|&f| !model[f as usize])
                    .take(max as usize)
                    .collect();
                let got: Vec<u64> = gaps.iter().flat_map(|g| g.start..g.end()).collect();
                if window.end() <= 260 {
                    prop_assert_eq!(got, want);
                }
            }
        }
    }
}
