//! A guest's statistics at one moment: the allocator's and resident map's counts under one
//! lock, the kernel's view in kernel-eviction mode, and the counters.

use super::{Eviction, GuestCore};
use crate::stats::GuestStatsSnapshot;
use std::sync::atomic::Ordering::Relaxed;

impl GuestCore {
    /// Host pages behind the guest's region now: what memout reports as *resident* everywhere
    /// (statistics, `memoutctl status`, resize progress, the `STATS` request).
    ///
    /// With memout's own eviction: the frames memout backed and has not dropped, counting
    /// frames being freed right now (their resident bits are cleared before the madvise that
    /// drops them returns), so nothing reports host memory gone before it is. In kernel mode
    /// the kernel swaps pages behind memout's back, so it is what the kernel says is in RAM.
    pub fn resident_pages(&self) -> u64 {
        match self.eviction {
            Eviction::Kernel => self.kernel_residency().0,
            _ => {
                let st = self.state();
                st.resident.count() + st.alloc.releasing()
            }
        }
    }

    /// A consistent snapshot of the guest's statistics.
    pub fn snapshot(&self) -> GuestStatsSnapshot {
        let (quota, allocated, resident, evicted, slots, meta) = {
            let st = self.state();
            (
                st.alloc.quota(),
                st.alloc.allocated(),
                st.resident.count() + st.alloc.releasing(),
                st.evicted.total(),
                st.slots.used(),
                st.evicted.entries(),
            )
        };
        // Resident as `resident_pages` defines it, counted under the same lock as the rest;
        // in kernel mode the kernel's view (pagemap over the backed runs).
        let (resident, evicted) = match self.eviction {
            Eviction::Kernel => self.kernel_residency(),
            _ => (resident, evicted),
        };
        let c = &self.counters;
        let budget = self.budget.load(Relaxed);
        GuestStatsSnapshot {
            quota_pages: quota,
            allocated_pages: allocated,
            resident_pages: resident,
            evicted_pages: evicted,
            budget_pages: (budget != u64::MAX).then_some(budget),
            store_slots: slots,
            store_bytes: self.eviction.bytes_on_disk(),
            evicted_metadata_entries: meta as u64,
            eviction_mode: self.eviction.name(),
            doorbells: c.doorbells.load(Relaxed),
            requests: c.requests.load(Relaxed),
            request_errors: c.request_errors.load(Relaxed),
            faults: c.faults.load(Relaxed),
            populated_pages: c.populated_pages.load(Relaxed),
            populated_eager_pages: c.populated_eager_pages.load(Relaxed),
            freed_pages: c.freed_pages.load(Relaxed),
            bytes_returned: c.bytes_returned.load(Relaxed),
            violations: c.violations.load(Relaxed),
            stale_faults: c.stale_faults.load(Relaxed),
            free_errors: c.free_errors.load(Relaxed),
            eager_dropped: self.eager.dropped(),
            evictions_pages: c.evicted_pages.load(Relaxed),
            swapins_pages: c.swapped_in_pages.load(Relaxed),
            evict_errors: c.evict_errors.load(Relaxed),
            last_evict_error: self.last_evict_error.lock().clone(),
            populate_p50_ns: c.populate_latency.quantile(0.5),
            populate_p99_ns: c.populate_latency.quantile(0.99),
            swapin_p50_ns: c.swapin_latency.quantile(0.5),
            swapin_p99_ns: c.swapin_latency.quantile(0.99),
            policy: self.policy().name(),
            fastpath: self.fastpath_stats(),
        }
    }
}
