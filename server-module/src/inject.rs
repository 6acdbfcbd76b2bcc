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

/// How a file-backed guest's host misbehaves on its next ALLOCs (the Linux module's balloon
/// and `/dev/memout` take frames back that way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocFault {
    /// Refuse with `NoMemory`, as a host out of memory would.
    Refuse,
    /// Grant frames the guest already holds (never the host's to grant), as a broken or
    /// hostile host would; nothing changes host-side.
    Foreign,
}

/// `count` ALLOCs of a file-backed guest answered as an [`AllocFault`] says.
#[derive(Debug, Default)]
pub struct AllocFaults {
    armed: parking_lot::Mutex<Option<(AllocFault, u32)>>,
}

impl AllocFaults {
    /// The next `count` ALLOCs misbehave as `fault` says.
    pub fn arm(&self, fault: AllocFault, count: u32) {
        *self.armed.lock() = (count > 0).then_some((fault, count));
    }

    /// Called on each ALLOC: how this one misbehaves, if it does.
    pub fn take(&self) -> Option<AllocFault> {
        let mut g = self.armed.lock();
        let (fault, left) = (*g)?;
        *g = (left > 1).then_some((fault, left - 1));
        Some(fault)
    }
}
