//! Fault injection for tests (feature `fault-injection`): make populate fail with a chosen
//! errno after a budget of pages, exercising the same path as a real UFFDIO_COPY failure.
//! On this class of host a memory cgroup either OOM-kills the process or, with the OOM killer
//! disabled, parks every thread that takes a page fault, so ENOMEM cannot be provoked there.

use std::sync::atomic::{AtomicI32, AtomicU64, Ordering::SeqCst};

/// A one-shot populate failure.
#[derive(Debug)]
pub struct PopulateFailure {
    budget: AtomicU64,
    errno: AtomicI32,
}

impl Default for PopulateFailure {
    fn default() -> Self {
        Self {
            budget: AtomicU64::new(u64::MAX),
            errno: AtomicI32::new(0),
        }
    }
}

impl PopulateFailure {
    /// Fail once `pages` more pages have been populated.
    pub fn arm(&self, pages: u64, errno: i32) {
        self.errno.store(errno, SeqCst);
        self.budget.store(pages, SeqCst);
    }

    /// Called before populating `pages`: the errno to fail with, if the budget is spent.
    pub fn take(&self, pages: u64) -> Option<i32> {
        let left = self.budget.load(SeqCst);
        if left == u64::MAX {
            return None;
        }
        if left < pages {
            return Some(self.errno.load(SeqCst));
        }
        self.budget.store(left - pages, SeqCst);
        None
    }
}

/// A one-shot failure of the `MADV_DONTNEED` that drops a FREE's host pages (as a real
/// madvise error would), so the FREE error path can be tested.
#[derive(Debug, Default)]
pub struct DropFailure {
    errno: AtomicI32,
}

impl DropFailure {
    /// The next FREE's page drop fails with `errno`.
    pub fn arm(&self, errno: i32) {
        self.errno.store(errno, SeqCst);
    }

    /// Called before a FREE drops pages: the errno to fail with, once.
    pub fn take(&self) -> Option<i32> {
        match self.errno.swap(0, SeqCst) {
            0 => None,
            e => Some(e),
        }
    }
}
