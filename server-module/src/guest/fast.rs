//! The guest's side of the exit-free fast path (`crate::fastpath`): frames granted into its
//! magazines come from its allocator and are populated ahead; frames the host takes back go
//! through the same FREE as the doorbell path, so every ownership check applies.

use super::GuestCore;
use crate::extents::Run;
use crate::fastpath::worker::Serviced;
use crate::fastpath::{FastPathStats, FrameSource};
use memout_protocol::ring::Extent;

/// Most extents one refill's grant may come in.
const GRANT_EXTENTS: usize = 64;

impl FrameSource for GuestCore {
    fn grant(&self, pages: u64) -> Vec<Run> {
        let runs = {
            let mut st = self.state();
            match st.alloc.allocate(pages, GRANT_EXTENTS, true) {
                Ok(runs) => {
                    if !st.strikes.is_empty() {
                        st.strikes
                            .retain(|f, _| !runs.iter().any(|r| (r.start..r.end()).contains(f)));
                    }
                    runs
                }
                Err(_) => Vec::new(), // at the quota, or no room: no refill
            }
        };
        for r in &runs {
            self.populate_eagerly(*r);
        }
        runs
    }

    fn take_back(&self, runs: &[Run]) -> u64 {
        // One run at a time: a run that is not the guest's does not stop the others.
        runs.iter().map(|r| self.free(&[*r]).unwrap_or(0)).sum()
    }

    fn gpa_of(&self, frame: u64) -> u64 {
        self.gpa(frame)
    }

    fn frame_of(&self, gpa: u64) -> Option<u64> {
        self.run_of(&Extent { gpa, pages: 1 }).map(|r| r.start)
    }
}

impl Serviced for GuestCore {
    fn service_fastpath(&self) -> bool {
        if self.stopped_at.get().is_some() {
            return false;
        }
        self.fastpath
            .as_ref()
            .is_some_and(|f| f.service(self, &self.span))
    }
}

impl GuestCore {
    /// Takes every frame cached in the guest's fast path back (magazines and free stacks);
    /// returns pages. A resize does this before asking the guest to release anything.
    pub(crate) fn fastpath_reclaim(&self) -> u64 {
        self.fastpath
            .as_ref()
            .map_or(0, |f| f.reclaim(self, &self.span))
    }

    /// The fast path's statistics, if the guest has one.
    pub(crate) fn fastpath_stats(&self) -> Option<FastPathStats> {
        self.fastpath.as_ref().map(|f| f.stats())
    }

    /// The guest's fast path was empty when it needed a frame (it said so on a doorbell
    /// ALLOC): fill its magazines from now on, and wake the worker.
    pub(crate) fn nudge_fastpath(&self) {
        if let (Some(f), Some(w)) = (&self.fastpath, &self.fastpath_waker) {
            f.want();
            w.wake();
        }
    }
}
