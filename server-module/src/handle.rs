//! [`GuestHandle`]: what the VMM holds for one served guest. It forwards doorbell exits to the
//! ring, and offers the operator's operations (evict, budget, policy, resize); dropping it
//! stops the guest's fault handler and unmaps its region.

use crate::config::ConfigError;
use crate::guest::ResizeReport;
use crate::guest::{EvictError, GuestCore, GuestFault, ResizeError, ResizeOptions};
use crate::populate::PopulatePolicy;
use crate::rpc::{self, DoorbellOutcome, RingCursor};
use crate::stats::GuestStatsSnapshot;
use memout_protocol::ring::PAGE_SIZE;
use nix::sys::eventfd::EventFd;
use parking_lot::Mutex;
use std::sync::Arc;
use std::thread::JoinHandle;
use vm_memory::GuestMemoryMmap;

/// One served guest. Dropping it stops its fault handler and unmaps its region: remove the
/// KVM memslot (or drop the VM) first.
pub struct GuestHandle {
    pub(crate) core: Arc<GuestCore>,
    pub(crate) shared: GuestMemoryMmap,
    pub(crate) ring: Mutex<RingCursor>,
    pub(crate) stop: Arc<EventFd>,
    pub(crate) thread: Option<JoinHandle<()>>,
}

impl GuestHandle {
    /// Host address of the outsourced region (for the KVM memslot).
    pub fn region_host_addr(&self) -> usize {
        self.core.region().addr()
    }

    /// Size of the outsourced region in bytes.
    pub fn region_size(&self) -> u64 {
        self.core.region().size() as u64
    }

    /// Guest-physical base of the outsourced region.
    pub fn region_gpa(&self) -> u64 {
        self.core.region_gpa()
    }

    /// The guest's name.
    pub fn name(&self) -> &str {
        self.core.name()
    }

    /// Call on every doorbell exit: processes the requests the guest posted.
    pub fn on_doorbell(&self) -> DoorbellOutcome {
        let _g = self.core.span().enter();
        let mut cur = self.ring.lock();
        rpc::process_doorbell(&self.core, &self.shared, &mut cur)
    }

    /// The guest's statistics now.
    pub fn stats(&self) -> GuestStatsSnapshot {
        self.core.snapshot()
    }

    /// Why the server stopped the guest, if it did.
    pub fn fatal_error(&self) -> Option<GuestFault> {
        self.core.fatal()
    }

    /// Test hook (feature `fault-injection`): after `pages` more pages are populated, populate
    /// fails with `errno`, as a real UFFDIO_COPY failure (e.g. ENOMEM) would.
    #[cfg(feature = "fault-injection")]
    pub fn inject_populate_failure(&self, pages: u64, errno: i32) {
        self.core.inject().arm(pages, errno);
    }

    /// Evicts up to `bytes` of the guest's coldest memory now; returns the bytes evicted.
    pub fn evict(&self, bytes: u64) -> std::result::Result<u64, EvictError> {
        self.core
            .evict(bytes.div_ceil(PAGE_SIZE))
            .map(|p| p * PAGE_SIZE)
    }

    /// Sets (or clears) the resident budget in bytes. Lowering it evicts now; raising it swaps
    /// evicted memory back in the background, up to the budget.
    pub fn set_budget(&self, bytes: Option<u64>) -> std::result::Result<(), EvictError> {
        self.core.set_budget(bytes.map(|b| b / PAGE_SIZE))
    }

    /// Changes the population policy.
    pub fn set_policy(&self, p: PopulatePolicy) {
        self.core.set_policy(p);
    }

    /// Starts a resize of the guest's requested size to `bytes` (see
    /// [`GuestCore::resize`]); poll [`resize_progress`](Self::resize_progress) or
    /// [`wait_resize`](Self::wait_resize).
    pub fn resize(
        &self,
        bytes: u64,
        opts: ResizeOptions,
    ) -> std::result::Result<ResizeReport, ResizeError> {
        self.core.resize(bytes, opts)
    }

    /// The guest's latest resize.
    pub fn resize_progress(&self) -> Option<ResizeReport> {
        self.core.resize_progress()
    }

    /// Waits at most `timeout` for resize `id` to end.
    pub fn wait_resize(&self, id: u64, timeout: std::time::Duration) -> Option<ResizeReport> {
        self.core.wait_resize(id, timeout)
    }

    /// Changes the quota (bytes, page-aligned, at most the region size).
    pub fn set_quota(&self, bytes: u64) -> Result<(), ConfigError> {
        if bytes % PAGE_SIZE != 0 {
            return Err(ConfigError::QuotaUnaligned(bytes));
        }
        self.core
            .set_quota(bytes / PAGE_SIZE)
            .map_err(|_| ConfigError::QuotaAboveRegion {
                quota: bytes,
                region: self.region_size(),
            })
    }
}

impl Drop for GuestHandle {
    fn drop(&mut self) {
        self.core.cancel_resize();
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
