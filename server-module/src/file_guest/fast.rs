//! The exit-free fast path for a file-backed guest (`crate::fastpath`): its area lives in the
//! channel, frames granted into magazines are ones the guest gave back (taken within the
//! quota, their memory allocated in the RAM file ahead), and frames the host takes back go
//! through the same FREE as the doorbell path. The embedder runs a [`FastPathService`].

use super::FileGuest;
use crate::extents::Run;
use crate::fastpath::worker::{Serviced, Worker};
use crate::fastpath::{FastPath, FastPathStats, FrameSource};
use memout_protocol::ring::{Extent, PAGE_SIZE};
use std::sync::{Arc, Weak};

/// Most extents one refill's grant may come in.
const GRANT_EXTENTS: usize = 64;

/// The thread that refills a file-backed guest's magazines and takes its free stacks back
/// (see [`FileGuest::serve_fastpath`]); stopped and joined when dropped.
pub struct FastPathService {
    _worker: Worker,
}

impl FileGuest {
    /// Starts servicing the guest's fast path on a thread of its own (does nothing useful if
    /// the guest has none: see [`with_fastpath`](Self::with_fastpath)). Keep the service for
    /// as long as the guest runs; the thread holds the guest only weakly.
    pub fn serve_fastpath(self: &Arc<Self>) -> std::io::Result<FastPathService> {
        let worker = Worker::start()?;
        let _ = self.fastpath_waker.set(worker.waker());
        let weak: Weak<dyn Serviced> = Arc::downgrade(self) as _;
        worker.add(weak);
        Ok(FastPathService { _worker: worker })
    }

    /// The fast path's statistics, if the guest has one.
    pub fn fastpath_stats(&self) -> Option<FastPathStats> {
        self.fastpath.as_ref().map(FastPath::stats)
    }

    /// Takes every frame cached in the fast path back; returns pages.
    pub(super) fn fastpath_reclaim(&self) -> u64 {
        self.fastpath
            .as_ref()
            .map_or(0, |f| f.reclaim(self, &self.span))
    }

    /// The guest's fast path was empty (an ALLOC said so): fill its magazines from now on.
    pub(super) fn nudge_fastpath(&self) {
        if let Some(f) = &self.fastpath {
            f.want();
            if let Some(w) = self.fastpath_waker.get() {
                w.wake();
            }
        }
    }
}

impl FrameSource for FileGuest {
    fn grant(&self, pages: u64) -> Vec<Run> {
        let Ok(runs) = self.take_returned(pages, GRANT_EXTENTS, true) else {
            return Vec::new(); // at the quota, or nothing to give: no refill
        };
        for r in &runs {
            // Best effort: a frame whose memory could not be allocated now still reads zero.
            if let Err(e) = self.ram.populate(r.start * PAGE_SIZE, r.len * PAGE_SIZE) {
                if let Some(suppressed) = self.log.allow() {
                    tracing::warn!(parent: &self.span, %e, suppressed, "fast path: no memory ahead");
                }
            }
        }
        runs
    }

    fn take_back(&self, runs: &[Run]) -> u64 {
        use crate::ring_backend::RingBackend;
        // One run at a time: a run that is not the guest's does not stop the others.
        runs.iter()
            .map(|r| {
                let e = Extent {
                    gpa: r.start * PAGE_SIZE,
                    pages: r.len,
                };
                self.free(&[e], false).unwrap_or(0)
            })
            .sum()
    }

    fn gpa_of(&self, frame: u64) -> u64 {
        frame * PAGE_SIZE
    }

    fn frame_of(&self, gpa: u64) -> Option<u64> {
        (gpa % PAGE_SIZE == 0 && gpa / PAGE_SIZE < self.ram_pages()).then_some(gpa / PAGE_SIZE)
    }
}

impl Serviced for FileGuest {
    fn service_fastpath(&self) -> bool {
        self.fastpath
            .as_ref()
            .is_some_and(|f| f.service(self, &self.span))
    }
}

impl std::fmt::Debug for FastPathService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FastPathService")
    }
}
