//! [`GuestRef`]: a served guest as its operators see it. The registry hands these out (what
//! the control socket and tools use), and a [`GuestHandle`](crate::GuestHandle) derefs to
//! one; holding a `GuestRef` does not keep the guest running.

use crate::config::ConfigError;
use crate::guest::{EvictError, GuestCore, GuestFault, ResizeError, ResizeOptions, ResizeReport};
use crate::populate::PopulatePolicy;
use crate::stats::GuestStatsSnapshot;
use memout_protocol::ring::PAGE_SIZE;
use std::sync::Arc;

/// A served guest: its statistics and the operator's operations (evict, budget, policy,
/// resize). Cheap to clone.
#[derive(Clone)]
pub struct GuestRef(pub(crate) Arc<GuestCore>);

impl std::fmt::Debug for GuestRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("GuestRef").field(&self.0.name()).finish()
    }
}

impl GuestRef {
    /// Host address of the outsourced region (for the KVM memslot).
    pub fn region_host_addr(&self) -> usize {
        self.0.region().addr()
    }

    /// Size of the outsourced region in bytes.
    pub fn region_size(&self) -> u64 {
        self.0.region().size() as u64
    }

    /// Guest-physical base of the outsourced region.
    pub fn region_gpa(&self) -> u64 {
        self.0.region_gpa()
    }

    /// The guest's name.
    pub fn name(&self) -> &str {
        self.0.name()
    }

    /// The guest's statistics now.
    pub fn stats(&self) -> GuestStatsSnapshot {
        self.0.snapshot()
    }

    /// Why the server stopped the guest, if it did.
    pub fn fatal_error(&self) -> Option<GuestFault> {
        self.0.fatal()
    }

    /// Test hook (feature `fault-injection`): after `pages` more pages are populated, populate
    /// fails with `errno`, as a real UFFDIO_COPY failure (e.g. ENOMEM) would.
    #[cfg(feature = "fault-injection")]
    pub fn inject_populate_failure(&self, pages: u64, errno: i32) {
        self.0.inject().arm(pages, errno);
    }

    /// Evicts up to `bytes` of the guest's coldest memory now; returns the bytes evicted.
    pub fn evict(&self, bytes: u64) -> std::result::Result<u64, EvictError> {
        self.0
            .evict(bytes.div_ceil(PAGE_SIZE))
            .map(|p| p * PAGE_SIZE)
    }

    /// Sets (or clears) the resident budget in bytes. Lowering it evicts now; raising it swaps
    /// evicted memory back in the background, up to the budget.
    pub fn set_budget(&self, bytes: Option<u64>) -> std::result::Result<(), EvictError> {
        self.0.set_budget(bytes.map(|b| b / PAGE_SIZE))
    }

    /// Changes the population policy.
    pub fn set_policy(&self, p: PopulatePolicy) {
        self.0.set_policy(p);
    }

    /// Lets KSM merge the guest's memory, or stops it (see [`GuestCore::set_mergeable`]).
    pub fn set_mergeable(&self, on: bool) -> std::result::Result<(), crate::MergeableError> {
        self.0.set_mergeable(on)
    }

    /// True while the guest's memory is mergeable.
    pub fn mergeable(&self) -> bool {
        self.0.mergeable()
    }

    /// Pages of the guest KSM merged now (root only).
    pub fn ksm_pages(&self) -> std::io::Result<u64> {
        self.0.ksm_pages()
    }

    /// The VMM refused a guest write at `gpa` (a read-only memslot): true, counted and
    /// logged, if it lies in one of the guest's shared segments; false if not.
    pub fn segment_write_refused(&self, gpa: u64) -> bool {
        self.0.segment_write_refused(gpa)
    }

    /// Guest writes to its shared segments that were refused.
    pub fn segment_writes_refused(&self) -> u64 {
        self.0.segment_writes_refused()
    }

    /// The shared segments the guest maps: (name, guest-physical address, bytes mapped).
    pub fn mapped_segments(&self) -> Vec<(String, u64, u64)> {
        self.0.mapped_segments()
    }

    /// Starts a resize of the guest's requested size to `bytes` (see
    /// the module docs of `guest::resize`); poll [`resize_progress`](Self::resize_progress) or
    /// [`wait_resize`](Self::wait_resize).
    pub fn resize(
        &self,
        bytes: u64,
        opts: ResizeOptions,
    ) -> std::result::Result<ResizeReport, ResizeError> {
        self.0.resize(bytes, opts)
    }

    /// The guest's latest resize.
    pub fn resize_progress(&self) -> Option<ResizeReport> {
        self.0.resize_progress()
    }

    /// Waits at most `timeout` for resize `id` to end.
    pub fn wait_resize(&self, id: u64, timeout: std::time::Duration) -> Option<ResizeReport> {
        self.0.wait_resize(id, timeout)
    }

    /// Changes the quota (bytes, page-aligned, at most the region size).
    pub fn set_quota(&self, bytes: u64) -> Result<(), ConfigError> {
        if bytes % PAGE_SIZE != 0 {
            return Err(ConfigError::QuotaUnaligned(bytes));
        }
        self.0
            .set_quota(bytes / PAGE_SIZE)
            .map_err(|_| ConfigError::QuotaAboveRegion {
                quota: bytes,
                region: self.region_size(),
            })
    }

    /// Lets the guest's fault thread poll for the next fault for up to `spin` after serving
    /// one, before it sleeps (0, the default: it sleeps at once). A swap-in then skips the
    /// thread's wake-up, tens of µs on a virtual machine's host, at the price of CPU time:
    /// while faults come less than `spin` apart the thread keeps a CPU busy. At most
    /// [`MAX_FAULT_SPIN`](crate::MAX_FAULT_SPIN).
    pub fn set_fault_spin(&self, spin: std::time::Duration) -> Result<(), ConfigError> {
        if spin > crate::MAX_FAULT_SPIN {
            return Err(ConfigError::FaultSpin(spin));
        }
        self.0.set_fault_spin(spin);
        Ok(())
    }

    /// The resident budget in bytes, if one is set.
    pub fn budget(&self) -> Option<u64> {
        self.0.budget().map(|p| p * PAGE_SIZE)
    }

    /// The cap a shrink left on resident memory, in bytes, if any (see
    /// [`resize`](Self::resize)).
    pub fn size_cap(&self) -> Option<u64> {
        self.0.size_cap().map(|p| p * PAGE_SIZE)
    }

    /// The server's state of this guest (feature `test-util`: tests drive it directly).
    #[cfg(feature = "test-util")]
    pub fn core(&self) -> &Arc<GuestCore> {
        &self.0
    }
}
