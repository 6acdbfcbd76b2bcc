//! Which memory to evict first: 2 MiB chunks ordered by when memout last populated them
//! (oldest first). Pure logic.
//!
//! memout sees a guest's memory only when it populates it, so "last populated" is its notion of
//! age: a chunk the guest keeps using stays resident and is never re-populated, so it grows
//! old and is evicted; if the guest touches it again, it is swapped in and becomes the
//! youngest. This is FIFO with re-insertion on swap-in. `docs/design.md` says why, and what a
//! finer policy (PAGEMAP_SCAN with uffd-wp async) would add.

use std::collections::{BTreeMap, HashMap};

/// Chunks with resident frames, by age.
#[derive(Debug, Default, Clone)]
pub struct ColdQueue {
    next: u64,
    by_age: BTreeMap<u64, u64>,
    age_of: HashMap<u64, u64>,
}

impl ColdQueue {
    /// Empty.
    pub fn new() -> Self {
        Self::default()
    }

    /// `chunk` was just populated: it becomes the youngest.
    pub fn touch(&mut self, chunk: u64) {
        if let Some(old) = self.age_of.insert(chunk, self.next) {
            self.by_age.remove(&old);
        }
        self.by_age.insert(self.next, chunk);
        self.next += 1;
    }

    /// `chunk` has no resident frames any more.
    pub fn forget(&mut self, chunk: u64) {
        if let Some(age) = self.age_of.remove(&chunk) {
            self.by_age.remove(&age);
        }
    }

    /// The oldest chunk.
    pub fn oldest(&self) -> Option<u64> {
        self.by_age.values().next().copied()
    }

    /// Chunks tracked.
    pub fn len(&self) -> usize {
        self.age_of.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_first_and_touch_makes_young() {
        let mut q = ColdQueue::new();
        for c in [5, 1, 9] {
            q.touch(c);
        }
        assert_eq!(q.oldest(), Some(5));
        q.touch(5);
        assert_eq!(q.oldest(), Some(1));
        q.forget(1);
        assert_eq!(q.oldest(), Some(9));
        q.forget(9);
        q.forget(5);
        assert!(q.len() == 0 && q.oldest().is_none());
    }
}
