//! Which memory to evict first: 2 MiB chunks ordered by when memout last populated them
//! (oldest first), with a second chance for chunks the guest has shown to be hot. Pure logic.
//!
//! memout sees a guest's memory only when it populates it, so "last populated" is its notion of
//! age: a chunk the guest keeps using stays resident and is never re-populated, so it grows
//! old. Plain FIFO would then evict the guest's hottest memory once per turnover of the
//! budget. What memout does see is how swap-ins arrive: a chunk the guest uses heavily comes
//! back in a *burst* (its swap-in faults follow each other closely in the guest's stream of
//! swap-in faults), while a chunk touched now and then comes back one fault at a time among
//! many others. Each swap-in that follows the chunk's previous one within [`BURST_FAULTS`]
//! faults adds one to the chunk's heat; a chunk whose heat reaches [`HOT`] when it is the
//! oldest is passed over once (its heat drops by [`HOT`] and it becomes the youngest), like
//! CLOCK's second chance. Sequential scans (about nine faults per chunk as the window grows)
//! and uniform random access (each chunk gets one fault in 30 or so) stay below [`HOT`]; in a
//! hot-cold mix the hot chunks, which take most faults while they are out, reach it.
//! `docs/design.md` has the measurements.

use std::collections::{BTreeMap, HashMap};

/// A swap-in fault at most this many faults after the chunk's previous one counts as a burst.
pub const BURST_FAULTS: u64 = 16;
/// Heat at which the oldest chunk is passed over once.
pub const HOT: u32 = 64;

#[derive(Debug, Clone, Copy)]
struct Entry {
    age: u64,
    heat: u32,
    /// The swap-in fault clock at the chunk's last swap-in fault.
    last_fault: Option<u64>,
    /// Kernel mode: memout paged the chunk out at its last visit.
    paged_out: bool,
}

/// Chunks with resident frames, by age.
#[derive(Debug, Default, Clone)]
pub struct ColdQueue {
    next: u64,
    faults: u64,
    by_age: BTreeMap<u64, u64>,
    entries: HashMap<u64, Entry>,
}

impl ColdQueue {
    /// Empty.
    pub fn new() -> Self {
        Self::default()
    }

    /// `chunk` was just populated: it becomes the youngest (keeping its heat).
    pub fn touch(&mut self, chunk: u64) {
        let age = self.next;
        self.next += 1;
        let e = self.entries.entry(chunk).or_insert(Entry {
            age,
            heat: 0,
            last_fault: None,
            paged_out: false,
        });
        self.by_age.remove(&e.age);
        e.age = age;
        self.by_age.insert(age, chunk);
    }

    /// The guest faulted on evicted memory of `chunk` (after [`touch`](Self::touch) for the
    /// frames it brought in); read-ahead and eager fills are not faults and do not count.
    pub fn swap_in_fault(&mut self, chunk: u64) {
        self.faults += 1;
        let now = self.faults;
        if let Some(e) = self.entries.get_mut(&chunk) {
            if e.last_fault.is_some_and(|t| now - t <= BURST_FAULTS) {
                e.heat = e.heat.saturating_add(1);
            }
            e.last_fault = Some(now);
        }
    }

    /// Adds `pages` to `chunk`'s heat directly (kernel mode, which sees no faults: pages that
    /// came back into RAM since memout last paged the chunk out).
    pub fn add_heat(&mut self, chunk: u64, pages: u32) {
        if let Some(e) = self.entries.get_mut(&chunk) {
            e.heat = e.heat.saturating_add(pages);
        }
    }

    /// Kernel mode: records whether memout paged `chunk` out at this visit, and returns
    /// whether it had at the previous one.
    pub fn note_paged_out(&mut self, chunk: u64, now: bool) -> bool {
        self.entries
            .get_mut(&chunk)
            .is_some_and(|e| std::mem::replace(&mut e.paged_out, now))
    }

    /// `chunk` has no resident frames any more.
    pub fn forget(&mut self, chunk: u64) {
        if let Some(e) = self.entries.remove(&chunk) {
            self.by_age.remove(&e.age);
        }
    }

    /// The oldest chunk, without second chances.
    pub fn oldest(&self) -> Option<u64> {
        self.by_age.values().next().copied()
    }

    /// The chunk to evict next: the oldest one that is not hot. Hot chunks met on the way
    /// are passed over once each (heat −[`HOT`], made the youngest); if every chunk is hot,
    /// the oldest after that pass is taken.
    pub fn victim(&mut self) -> Option<u64> {
        for _ in 0..self.entries.len() {
            let (&age, &chunk) = self.by_age.iter().next()?;
            let e = self
                .entries
                .get_mut(&chunk)
                .expect("queued chunks have entries");
            if e.heat < HOT {
                return Some(chunk);
            }
            e.heat -= HOT;
            self.by_age.remove(&age);
            e.age = self.next;
            self.by_age.insert(self.next, chunk);
            self.next += 1;
        }
        self.oldest()
    }

    /// Heat of `chunk` (0 if it is not tracked).
    pub fn heat(&self, chunk: u64) -> u32 {
        self.entries.get(&chunk).map_or(0, |e| e.heat)
    }

    /// Chunks tracked.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn oldest_first_and_touch_makes_young() {
        let mut q = ColdQueue::new();
        for c in [5, 1, 9] {
            q.touch(c);
        }
        assert_eq!(q.victim(), Some(5));
        q.touch(5);
        assert_eq!(q.victim(), Some(1));
        q.forget(1);
        assert_eq!(q.victim(), Some(9));
        q.forget(9);
        q.forget(5);
        assert!(q.len() == 0 && q.victim().is_none());
    }

    #[test]
    fn a_burst_makes_a_chunk_hot_and_it_is_passed_over_once_per_hot() {
        let mut q = ColdQueue::new();
        q.touch(0);
        for _ in 0..=2 * HOT {
            q.touch(0);
            q.swap_in_fault(0); // back to back: every one after the first is a burst
        }
        assert_eq!(q.heat(0), 2 * HOT);
        q.touch(1);
        q.touch(2);
        assert_eq!(q.victim(), Some(1), "hot 0 passed over");
        assert_eq!(q.heat(0), HOT);
        q.forget(1);
        assert_eq!(q.victim(), Some(2));
        q.forget(2);
        // Alone and still hot: passed over once more, then taken.
        assert_eq!(q.victim(), Some(0));
        assert_eq!(q.heat(0), 0);
    }

    #[test]
    fn scattered_faults_do_not_heat() {
        let mut q = ColdQueue::new();
        for c in 0..32 {
            q.touch(c);
        }
        // Round-robin over 32 chunks: each chunk's faults are 32 apart, beyond BURST_FAULTS.
        for i in 0..10_000u64 {
            let c = i % 32;
            q.touch(c);
            q.swap_in_fault(c);
        }
        assert!((0..32).all(|c| q.heat(c) == 0));
        assert_eq!(
            q.victim(),
            Some(10_000 % 32),
            "the oldest, no second chances"
        );
    }

    proptest! {
        /// Whatever happens, the victim is a tracked chunk, and there is one while any is.
        #[test]
        fn victim_is_tracked(ops in proptest::collection::vec((0u8..4, 0u64..16), 0..400)) {
            let mut q = ColdQueue::new();
            let mut tracked = std::collections::HashSet::new();
            for (op, c) in ops {
                match op {
                    0 => { q.touch(c); tracked.insert(c); }
                    1 => q.swap_in_fault(c),
                    2 => { q.forget(c); tracked.remove(&c); }
                    _ => q.add_heat(c, 100),
                }
                prop_assert_eq!(q.len(), tracked.len());
                match q.victim() {
                    Some(v) => prop_assert!(tracked.contains(&v)),
                    None => prop_assert!(tracked.is_empty()),
                }
                prop_assert_eq!(q.len(), tracked.len());
            }
        }
    }
}
