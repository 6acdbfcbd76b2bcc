//! The control socket's edge: the server's domain types turned into the protocol's wire types
//! (sizes in bytes, names as strings) and back. Nothing inside the server stores a wire type.

use crate::file_guest::FileGuest;
use crate::guest::{GuestCore, ResizeReport, ResizeStage};
use crate::populate::PopulatePolicy;
use crate::registry::Served;
use memout_protocol::control::{GuestStatus, Policy, ResizePhase, ResizeProgress, VmmKind};
use memout_protocol::ring::PAGE_SIZE;

impl From<Policy> for PopulatePolicy {
    fn from(p: Policy) -> Self {
        match p {
            Policy::PerPage => Self::PerPage,
            Policy::FaultAround => Self::default(),
            Policy::Eager => Self::Eager,
        }
    }
}

impl From<PopulatePolicy> for Policy {
    fn from(p: PopulatePolicy) -> Self {
        match p {
            PopulatePolicy::PerPage => Self::PerPage,
            PopulatePolicy::FaultAround { .. } => Self::FaultAround,
            PopulatePolicy::Eager => Self::Eager,
        }
    }
}

fn phase(s: ResizeStage) -> ResizePhase {
    match s {
        ResizeStage::Releasing => ResizePhase::Releasing,
        ResizeStage::Evicting => ResizePhase::Evicting,
        ResizeStage::Done => ResizePhase::Done,
        ResizeStage::Incomplete => ResizePhase::Incomplete,
        ResizeStage::Superseded => ResizePhase::Superseded,
    }
}

/// A resize as the control protocol reports it.
pub(super) fn progress(r: &ResizeReport) -> ResizeProgress {
    ResizeProgress {
        id: r.id,
        from_bytes: r.from_pages * PAGE_SIZE,
        target_bytes: r.target_pages * PAGE_SIZE,
        phase: phase(r.stage),
        freed_bytes: r.freed_pages * PAGE_SIZE,
        released_bytes: r.released_pages * PAGE_SIZE,
        evicted_bytes: r.evicted_pages * PAGE_SIZE,
        elapsed_us: r.elapsed.as_micros().try_into().unwrap_or(u64::MAX),
        allocated_bytes: r.allocated_pages * PAGE_SIZE,
        resident_bytes: r.resident_pages * PAGE_SIZE,
        note: r.shortfall.as_ref().map(|s| s.to_string()),
    }
}

/// A guest's state as the control protocol reports it.
pub(crate) fn status(g: &Served) -> GuestStatus {
    match g {
        Served::Memout(g) => memout_status(g),
        Served::External(g) => external_status(g),
    }
}

fn memout_status(g: &GuestCore) -> GuestStatus {
    let s = g.snapshot();
    GuestStatus {
        name: g.name().to_string(),
        vmm: VmmKind::Memout,
        region_bytes: g.region().size() as u64,
        requested_bytes: s.quota_pages * PAGE_SIZE,
        min_bytes: g.min_pages() * PAGE_SIZE,
        allocated_bytes: s.allocated_pages * PAGE_SIZE,
        resident_bytes: s.resident_pages * PAGE_SIZE,
        evicted_bytes: s.evicted_pages * PAGE_SIZE,
        budget_bytes: s.budget_pages.map(|p| p * PAGE_SIZE),
        policy: s.policy.to_string(),
        eviction: s.eviction_mode.to_string(),
        faults: s.faults,
        populated_pages: s.populated_pages,
        freed_pages: s.freed_pages,
        evicted_pages_total: s.evictions_pages,
        swapped_in_pages: s.swapins_pages,
        evict_errors: s.evict_errors,
        last_evict_error: s.last_evict_error.map(|e| e.to_string()),
        stopped: g.fatal().map(|f| f.to_string()),
        resize: g.resize_progress().map(|r| progress(&r)),
        mergeable: g.mergeable(),
    }
}

/// An external VMM's guest: no faults, population or eviction to report; what it gave back
/// (reported free and ballooned) is its freed pages.
fn external_status(g: &FileGuest) -> GuestStatus {
    let s = g.stats();
    GuestStatus {
        name: g.name().to_string(),
        vmm: VmmKind::External,
        region_bytes: s.ram_pages * PAGE_SIZE,
        requested_bytes: s.quota_pages * PAGE_SIZE,
        min_bytes: g.min_bytes(),
        allocated_bytes: s.allocated_pages * PAGE_SIZE,
        resident_bytes: s.resident_pages * PAGE_SIZE,
        evicted_bytes: 0,
        budget_bytes: None,
        policy: "external".into(),
        eviction: "none".into(),
        faults: 0,
        populated_pages: 0,
        freed_pages: s.freed_pages + s.reported_pages,
        evicted_pages_total: 0,
        swapped_in_pages: 0,
        evict_errors: 0,
        last_evict_error: None,
        stopped: None,
        resize: g.resize_progress().map(|r| progress(&r)),
        mergeable: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_convert_both_ways_under_one_name() {
        for p in PopulatePolicy::ALL {
            let wire = Policy::from(p);
            assert_eq!(wire.name(), p.name());
            assert_eq!(PopulatePolicy::from(wire), p);
        }
    }
}
