//! What the request ring needs from a guest: the [`RingBackend`] trait that `rpc` drives.
//! memout's own guests (`GuestCore`, frames backed by userfaultfd) and guests of an external
//! VMM (`FileGuest`, RAM in a shared file) implement it, so both get exactly the same request
//! parsing and checks.

use crate::extents::Run;
use crate::guest::GuestCore;
use crate::log_limit::LogLimiter;
use memout_protocol::ring::{Extent, GuestStats, Status};
use std::sync::atomic::Ordering::Relaxed;

/// Request counters a backend keeps for `rpc`.
pub(crate) trait RingCounters {
    /// One doorbell seen.
    fn doorbell(&self);
    /// One request carried out; `failed` if its status was not `Ok`.
    fn request(&self, failed: bool);
}

/// A guest as the ring sees it. Every argument comes from the guest and is already
/// range-checked by `rpc` only as far as the ring goes: extents are the backend's to check.
pub(crate) trait RingBackend: RingCounters {
    /// The guest's tracing span.
    fn span(&self) -> &tracing::Span;
    /// Budget for log lines the guest can trigger.
    fn log_limit(&self) -> &LogLimiter;
    /// True once the guest said HELLO.
    fn hello_done(&self) -> bool;
    /// Records the guest's HELLO.
    fn set_hello(&self);
    /// Grants `pages` frames in at most `max_extents` extents (all or nothing unless
    /// `partial`).
    fn alloc(&self, pages: u64, max_extents: usize, partial: bool) -> Result<Vec<Extent>, Status>;
    /// Takes back a grant the guest could not be told about.
    fn undo_alloc(&self, extents: &[Extent]);
    /// The guest's fast path had no frame for it (an ALLOC with `ALLOC_FASTPATH_EMPTY`).
    fn fastpath_empty(&self) {}
    /// FREE of `list`. With `reported`, the guest keeps the frames and only their content goes
    /// (free page reporting); without, the frames return to the host. Returns pages freed.
    fn free(&self, list: &[Extent], reported: bool) -> Result<u64, Status>;
    /// What STATS reports.
    fn stats(&self) -> GuestStats;
    /// Refreshes the quota and release request in the ring header after a doorbell.
    fn refresh_limits(&self);
    /// MAP_SEGMENT of segment `name` at `gpa`: (content bytes, bytes mapped). Guests without
    /// a segment window are refused.
    fn map_segment(&self, name: &str, gpa: u64) -> Result<(u64, u64), Status> {
        let _ = (name, gpa);
        Err(Status::BadOpcode)
    }
    /// UNMAP_SEGMENT at `gpa`.
    fn unmap_segment(&self, gpa: u64) -> Result<(), Status> {
        let _ = gpa;
        Err(Status::BadOpcode)
    }
}

impl RingCounters for GuestCore {
    fn doorbell(&self) {
        self.counters().doorbells.fetch_add(1, Relaxed);
    }

    fn request(&self, failed: bool) {
        self.counters().requests.fetch_add(1, Relaxed);
        if failed {
            self.counters().request_errors.fetch_add(1, Relaxed);
        }
    }
}

impl RingBackend for GuestCore {
    fn span(&self) -> &tracing::Span {
        GuestCore::span(self)
    }

    fn log_limit(&self) -> &LogLimiter {
        GuestCore::log_limit(self)
    }

    fn hello_done(&self) -> bool {
        GuestCore::hello_done(self)
    }

    fn set_hello(&self) {
        GuestCore::set_hello(self)
    }

    fn alloc(&self, pages: u64, max_extents: usize, partial: bool) -> Result<Vec<Extent>, Status> {
        GuestCore::alloc(self, pages, max_extents, partial)
    }

    fn fastpath_empty(&self) {
        self.nudge_fastpath();
    }

    fn map_segment(&self, name: &str, gpa: u64) -> Result<(u64, u64), Status> {
        GuestCore::map_segment(self, name, gpa)
    }

    fn unmap_segment(&self, gpa: u64) -> Result<(), Status> {
        GuestCore::unmap_segment(self, gpa)
    }

    fn undo_alloc(&self, extents: &[Extent]) {
        GuestCore::undo_alloc(self, extents)
    }

    fn free(&self, list: &[Extent], reported: bool) -> Result<u64, Status> {
        if reported {
            // memout frees a frame's host page the moment the guest FREEs it, so a guest of
            // memout's own VMM has nothing to report.
            return Err(Status::Invalid);
        }
        let runs = list
            .iter()
            .map(|e| {
                self.run_of(e).ok_or(if e.gpa % 4096 != 0 || e.pages == 0 {
                    Status::Invalid
                } else {
                    Status::NotOwned
                })
            })
            .collect::<Result<Vec<Run>, Status>>()?;
        GuestCore::free(self, &runs)
    }

    fn stats(&self) -> GuestStats {
        let s = self.snapshot();
        GuestStats {
            quota_pages: s.quota_pages,
            allocated_pages: s.allocated_pages,
            resident_pages: s.resident_pages,
            faults: s.faults,
            freed_pages: s.freed_pages,
            reserved: [0; 3],
        }
    }

    fn refresh_limits(&self) {
        self.publish_limits(false)
    }
}
