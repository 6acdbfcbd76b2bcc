//! Eviction policy: where a guest's cold memory goes ([`Eviction`]), why an eviction stopped
//! ([`EvictError`]), and keeping a guest under its resident limit (budget and shrink cap).
//! The store path is in `store_evict`, the kernel-swap path in `kernel_swap`.

use super::{CHUNK_PAGES, GuestCore};
use crate::extents::Run;
use crate::shared_error::Shared;
use crate::store::BackingStore;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use thiserror::Error;

/// Where a guest's evicted memory goes.
#[derive(Clone, Default)]
pub enum Eviction {
    /// No eviction (the default): memory stays resident until the guest frees it.
    #[default]
    None,
    /// memout writes cold frames to this store and serves them back through userfaultfd.
    Store(Arc<dyn BackingStore>),
    /// The kernel's swap: `MADV_PAGEOUT` on cold ranges (needs swap space; pages come back
    /// through the kernel's own swap-in, invisible to memout).
    Kernel,
}

impl std::fmt::Debug for Eviction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Store(s) => write!(f, "Store({})", s.describe()),
            Self::Kernel => f.write_str("Kernel"),
        }
    }
}

impl Eviction {
    /// `none`, `store` or `kernel`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Store(_) => "store",
            Self::Kernel => "kernel",
        }
    }

    pub(super) fn capacity_slots(&self) -> u64 {
        match self {
            Self::Store(s) => s.capacity_slots(),
            _ => 0,
        }
    }

    pub(super) fn bytes_on_disk(&self) -> u64 {
        match self {
            Self::Store(s) => s.bytes_on_disk(),
            _ => 0,
        }
    }

    pub(super) fn read(&self, slot: u64, buf: &mut [u8]) -> std::io::Result<()> {
        match self {
            Self::Store(s) => s.read(slot, buf),
            _ => Err(std::io::Error::other("no backing store")),
        }
    }

    pub(super) fn discard_slots(&self, runs: &[Run]) {
        if let Self::Store(s) = self {
            for r in runs {
                // Space reclaim only; the slots are already free in the allocator.
                let _ = s.discard(r.start, r.len);
            }
        }
    }
}

/// Why an eviction stopped. Frames it had not finished stay resident.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum EvictError {
    /// The guest has no eviction configured.
    #[error("eviction is not configured for this guest")]
    NotConfigured,
    /// The store has no free slots left.
    #[error("backing store is full ({store})")]
    StoreFull {
        /// The store (its description).
        store: String,
    },
    /// Writing to the store failed (e.g. ENOSPC, EIO).
    #[error("writing to backing store {store} failed: {source}")]
    Store {
        /// The store (its description).
        store: String,
        /// The error.
        #[source]
        source: Shared<std::io::Error>,
    },
    /// Write-protecting guest pages failed.
    #[error("write-protecting pages to evict: {0}")]
    Uffd(#[source] Shared<crate::uffd::Error>),
    /// Dropping or paging out host pages failed.
    #[error("dropping evicted pages: {0}")]
    HostMem(#[source] Shared<crate::host_mem::Error>),
    /// No host memory for the buffer guest pages are copied into before they are written.
    #[error("cannot map the eviction staging buffer: {0}")]
    Staging(#[source] Shared<std::io::Error>),
    /// The thread that finishes a pipelined eviction panicked (a memout bug).
    #[error("the eviction helper thread panicked")]
    HelperPanicked,
}

impl GuestCore {
    /// The resident budget in pages, if any.
    pub fn budget(&self) -> Option<u64> {
        let b = self.budget.load(Relaxed);
        (b != u64::MAX).then_some(b)
    }

    /// The resident limit in force: the lower of the budget and a shrink's cap.
    pub(super) fn limit(&self) -> u64 {
        self.budget.load(Relaxed).min(self.cap.load(Relaxed))
    }

    /// Sets the resident budget. Lowering it evicts at once (on the caller's thread); raising
    /// it queues evicted frames for background swap-in up to the new budget.
    pub fn set_budget(&self, pages: Option<u64>) -> Result<(), EvictError> {
        if pages.is_some() && matches!(self.eviction, Eviction::None) {
            return Err(EvictError::NotConfigured);
        }
        let old = self.budget.swap(pages.unwrap_or(u64::MAX), Relaxed);
        if pages.unwrap_or(u64::MAX) < old.min(self.cap.load(Relaxed)) {
            self.enforce_budget_now()
        } else {
            self.prefetch();
            Ok(())
        }
    }

    /// Called after every populate: evicts when the guest is above its budget. Errors are
    /// recorded in the statistics (the guest keeps running with the frames resident).
    pub(super) fn enforce_budget(&self) {
        if self.limit() == u64::MAX {
            return;
        }
        if matches!(self.eviction, Eviction::Kernel) && self.counters.faults.load(Relaxed) % 8 != 0
        {
            return; // kernel mode asks the kernel what is resident: not on every fault
        }
        let _ = self.enforce_budget_now();
    }

    /// True if the budget must be checked on a clock: kernel mode with a budget (the kernel
    /// swaps in behind memout's back), or a guest above its limit now (an eviction that met
    /// frames in flight left some over it, and a guest that only touches resident memory
    /// takes no fault that would check again).
    pub(crate) fn needs_budget_tick(&self) -> bool {
        let limit = self.limit();
        match self.eviction {
            Eviction::None => false,
            Eviction::Kernel => limit != u64::MAX,
            Eviction::Store(_) => limit != u64::MAX && self.state().resident.count() > limit,
        }
    }

    /// The periodic check of [`needs_budget_tick`](Self::needs_budget_tick).
    pub(crate) fn budget_tick(&self) {
        let _ = self.enforce_budget_now();
    }

    fn enforce_budget_now(&self) -> Result<(), EvictError> {
        // Decide under the evict lock: a decision taken before waiting for it could be stale
        // (the budget raised, or another evictor done) and evict memory for nothing.
        let _one = self.evict_lock.lock();
        let budget = self.limit();
        if matches!(self.eviction, Eviction::Kernel) {
            return self.enforce_kernel_budget(budget);
        }
        let resident = self.state().resident.count();
        if resident > budget {
            // At least a chunk at a time, so a guest at its budget does not evict per fault.
            self.evict_locked((resident - budget).max(CHUNK_PAGES))
                .map(|_| ())
        } else {
            Ok(())
        }
    }

    /// Queues evicted frames for swap-in by the eager workers, up to the budget.
    pub fn prefetch(&self) {
        // One lock for both reads (the state mutex is not reentrant).
        let (room, pieces) = {
            let st = self.state();
            let room = self.limit().saturating_sub(st.resident.count());
            let all = Run {
                start: 0,
                len: st.alloc.frames(),
            };
            (room, st.evicted.pieces(all))
        };
        let mut left = room;
        for p in pieces {
            if left == 0 {
                break;
            }
            let len = p.frames.len.min(left);
            self.eager.submit(
                self.me.clone(),
                Run {
                    start: p.frames.start,
                    len,
                },
            );
            left -= len;
        }
    }

    /// Evicts up to `pages` of the guest's coldest resident frames. Returns how many were
    /// evicted; on an error, those evicted before it stay evicted and the rest stay resident.
    pub fn evict(&self, pages: u64) -> Result<u64, EvictError> {
        let _one = self.evict_lock.lock();
        self.evict_locked(pages)
    }

    /// [`evict`](Self::evict) with `evict_lock` held by the caller.
    fn evict_locked(&self, pages: u64) -> Result<u64, EvictError> {
        let r = match &self.eviction {
            Eviction::None => Err(EvictError::NotConfigured),
            Eviction::Kernel => self.page_out_cold(pages),
            Eviction::Store(store) => self.evict_to_store(store.as_ref(), pages),
        };
        if let Err(e) = &r {
            if !matches!(e, EvictError::NotConfigured) {
                self.counters.evict_errors.fetch_add(1, Relaxed);
                if let Some(suppressed) = self.log_limit.allow() {
                    tracing::warn!(parent: &self.span, suppressed, "eviction stopped: {e}");
                }
            }
            *self.last_evict_error.lock() = Some(e.clone());
        }
        r
    }
}
