//! The ring's requests for a file-backed guest: ALLOC hands back frames the guest gave
//! back (within the quota), FREE punches their holes in the RAM file, and every extent list
//! is checked against the RAM first.

use super::FileGuest;
use crate::extents::{ExtentSet, Run};
use crate::log_limit::LogLimiter;
use crate::ring_backend::{RingBackend, RingCounters};
use memout_protocol::ring::{Extent, GuestStats, PAGE_SIZE, Status};
use std::sync::atomic::Ordering::Relaxed;

impl FileGuest {
    /// The guest's extents as runs of RAM frames; `Invalid` for anything outside RAM or
    /// overlapping another extent of the same request.
    fn runs_of(&self, list: &[Extent]) -> Result<Vec<Run>, Status> {
        let mut seen = ExtentSet::new();
        let frames = self.ram_pages();
        for e in list {
            let start = e.gpa / PAGE_SIZE;
            let end = start.checked_add(e.pages).ok_or(Status::Invalid)?;
            let r = Run {
                start,
                len: e.pages,
            };
            if end > frames || seen.overlaps(r) {
                return Err(Status::Invalid);
            }
            seen.insert(r);
        }
        Ok(seen.iter().collect())
    }

    /// Up to `pages` frames the guest holds, as one extent per run (fault injection only).
    #[cfg(feature = "fault-injection")]
    fn foreign(&self, pages: u64) -> Vec<Extent> {
        let all = Run {
            start: 0,
            len: self.ram_pages(),
        };
        self.returned
            .lock()
            .gaps(all, pages)
            .into_iter()
            .map(|r| Extent {
                gpa: r.start * PAGE_SIZE,
                pages: r.len,
            })
            .collect()
    }

    /// Takes up to `pages` frames the guest gave back, within the quota, in at most
    /// `max_extents` runs (all or nothing unless `partial`).
    pub(super) fn take_returned(
        &self,
        pages: u64,
        max_extents: usize,
        partial: bool,
    ) -> Result<Vec<Run>, Status> {
        let mut returned = self.returned.lock();
        let held = self.ram_pages() - returned.total();
        let room = self.quota.load(Relaxed).saturating_sub(held);
        let want = if partial { pages.min(room) } else { pages };
        if want == 0 || want > room {
            return Err(Status::Quota);
        }
        let mut out = Vec::new();
        let mut left = want;
        for r in returned.longest_k(max_extents).collect::<Vec<_>>() {
            let n = r.len.min(left);
            out.push(Run {
                start: r.start,
                len: n,
            });
            left -= n;
            if left == 0 {
                break;
            }
        }
        if left > 0 && !partial {
            return Err(Status::NoMemory);
        }
        for r in &out {
            returned.remove(*r);
        }
        Ok(out)
    }

    fn punch(&self, runs: &[Run]) -> Result<(), Status> {
        for r in runs {
            if let Err(e) = self.ram.punch(r.start * PAGE_SIZE, r.len * PAGE_SIZE) {
                self.counters.punch_errors.fetch_add(1, Relaxed);
                if let Some(suppressed) = self.log.allow() {
                    tracing::error!(parent: &self.span, %e, suppressed, "FREE could not drop memory");
                }
                return Err(Status::HostError);
            }
        }
        Ok(())
    }
}

impl RingCounters for FileGuest {
    fn doorbell(&self) {
        self.counters.doorbells.fetch_add(1, Relaxed);
    }

    fn request(&self, failed: bool) {
        self.counters.requests.fetch_add(1, Relaxed);
        if failed {
            self.counters.request_errors.fetch_add(1, Relaxed);
        }
    }
}

impl RingBackend for FileGuest {
    fn span(&self) -> &tracing::Span {
        &self.span
    }

    fn log_limit(&self) -> &LogLimiter {
        &self.log
    }

    fn hello_done(&self) -> bool {
        self.hello.load(Relaxed)
    }

    fn set_hello(&self) {
        self.hello.store(true, Relaxed);
    }

    fn alloc(&self, pages: u64, max_extents: usize, partial: bool) -> Result<Vec<Extent>, Status> {
        #[cfg(feature = "fault-injection")]
        match self.alloc_faults.take() {
            Some(crate::inject::AllocFault::Refuse) => return Err(Status::NoMemory),
            Some(crate::inject::AllocFault::Foreign) => return Ok(self.foreign(pages)),
            None => {}
        }
        Ok(self
            .take_returned(pages, max_extents, partial)?
            .iter()
            .map(|r| Extent {
                gpa: r.start * PAGE_SIZE,
                pages: r.len,
            })
            .collect())
    }

    fn fastpath_empty(&self) {
        self.nudge_fastpath();
    }
    fn undo_alloc(&self, extents: &[Extent]) {
        let mut returned = self.returned.lock();
        for e in extents {
            returned.insert(Run {
                start: e.gpa / PAGE_SIZE,
                len: e.pages,
            });
        }
    }

    fn free(&self, list: &[Extent], reported: bool) -> Result<u64, Status> {
        let runs = self.runs_of(list)?;
        let pages = runs.iter().map(|r| r.len).sum();
        let mut returned = self.returned.lock();
        if runs.iter().any(|r| returned.overlaps(*r)) {
            return Err(Status::NotOwned);
        }
        self.punch(&runs)?;
        if reported {
            self.counters.reported_pages.fetch_add(pages, Relaxed);
        } else {
            for r in &runs {
                returned.insert(*r);
            }
            self.counters.freed_pages.fetch_add(pages, Relaxed);
        }
        Ok(pages)
    }

    fn stats(&self) -> GuestStats {
        let s = FileGuest::stats(self);
        GuestStats {
            quota_pages: s.quota_pages,
            allocated_pages: s.allocated_pages,
            resident_pages: s.resident_pages,
            faults: 0,
            freed_pages: s.freed_pages + s.reported_pages,
            reserved: [0; 3],
        }
    }

    fn refresh_limits(&self) {
        self.mailbox.refresh(|| self.limits());
    }
}
