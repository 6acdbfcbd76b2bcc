//! Resizing a running guest. The *requested size* is the guest's quota; what the guest holds
//! (allocated) and what the host backs (resident) are reported next to it, like virtio-mem's
//! requested vs plugged size.
//!
//! - Grow: the quota rises and the guest is told at once (a host→guest message); it can
//!   allocate more with its next request.
//! - Shrink: the quota falls below what the guest holds, so it can allocate nothing more, and
//!   1. frames cached in the guest's fast path (granted ahead, or freed and not yet taken)
//!      are taken back, and frames that are resident but free in the guest's view are dropped
//!      at once (memout drops freed frames on FREE, so this finds only frames caught between
//!      the two);
//!   2. the guest is asked to release `allocated - quota` pages (host→guest message) and
//!      gets until the deadline;
//!   3. what is still resident above the target is evicted to the backing store, and the
//!      target stays a cap on the guest's resident memory: the guest keeps running, and its
//!      evicted data comes back on demand. Without eviction, the resize ends `Incomplete`.
//!
//! One resize runs per guest; a newer one supersedes it.

use super::resize_report::{ResizeReport, ResizeStage, Shortfall};
use super::{Eviction, GuestCore, GuestFault, coalesce};
use crate::extents::Run;
use crate::shared_error::Shared;
use memout_protocol::ring::PAGE_SIZE;
use parking_lot::{Condvar, Mutex};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::time::{Duration, Instant};
use thiserror::Error;

/// A resize refused before anything changed.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ResizeError {
    /// Zero bytes.
    #[error("size must not be zero")]
    Zero,
    /// Not a multiple of 4 KiB.
    #[error("size {0} is not a multiple of 4 KiB")]
    Unaligned(u64),
    /// Above the outsourced region.
    #[error("size {bytes} is above the guest's region of {region} bytes")]
    AboveRegion {
        /// Asked for.
        bytes: u64,
        /// Region size.
        region: u64,
    },
    /// Below the guest's pinned minimum.
    #[error("size {bytes} is below the guest's pinned minimum of {min} bytes")]
    BelowMinimum {
        /// Asked for.
        bytes: u64,
        /// The minimum.
        min: u64,
    },
    /// The server stopped the guest.
    #[error("the guest was stopped: {0}")]
    Stopped(#[source] GuestFault),
    /// The guest's handle was dropped.
    #[error("the guest was removed")]
    Removed,
    /// The resize thread could not be started.
    #[error("cannot start the resize: {0}")]
    Spawn(#[source] Shared<std::io::Error>),
}

/// Checks a resize target of `bytes` against a guest of `region` bytes pinned at `min`.
pub(crate) fn check_target(bytes: u64, region: u64, min: u64) -> Result<(), ResizeError> {
    if bytes == 0 {
        return Err(ResizeError::Zero);
    }
    if bytes % PAGE_SIZE != 0 {
        return Err(ResizeError::Unaligned(bytes));
    }
    if bytes > region {
        return Err(ResizeError::AboveRegion { bytes, region });
    }
    if bytes < min {
        return Err(ResizeError::BelowMinimum { bytes, min });
    }
    Ok(())
}

/// How a resize proceeds.
#[derive(Debug, Clone, Copy)]
pub struct ResizeOptions {
    /// How long the guest gets to release frames before the server evicts.
    pub release_deadline: Duration,
}

impl Default for ResizeOptions {
    fn default() -> Self {
        Self {
            release_deadline: Duration::from_millis(500),
        }
    }
}

/// One guest's resize state.
#[derive(Default)]
pub(crate) struct ResizeTracker {
    /// Id of the newest resize.
    generation: AtomicU64,
    latest: Mutex<Option<ResizeReport>>,
    ended: Condvar,
    /// Held while a resize changes the quota, the cap or evicts.
    steps: Mutex<()>,
}

impl GuestCore {
    /// Pages the guest holds above its quota (what the host asks it to release).
    fn release_wanted(&self) -> (u64, u64) {
        let st = self.state();
        let q = st.alloc.quota();
        (q, st.alloc.allocated().saturating_sub(q))
    }

    /// Writes the quota and release request into the ring header; with `notify`, as a
    /// host→guest message.
    pub(crate) fn publish_limits(&self, notify: bool) {
        if notify {
            self.mailbox.post(|| self.release_wanted());
        } else {
            self.mailbox.refresh(|| self.release_wanted());
        }
    }

    /// The smallest size, in pages, a resize may ask for.
    pub fn min_pages(&self) -> u64 {
        self.min_pages
    }

    /// The cap a shrink left on resident memory, in pages, if any.
    pub fn size_cap(&self) -> Option<u64> {
        let c = self.cap.load(Relaxed);
        (c != u64::MAX).then_some(c)
    }

    /// The latest resize, with live allocated/resident figures.
    pub fn resize_progress(&self) -> Option<ResizeReport> {
        let mut p = self.resize.latest.lock().clone()?;
        if !p.stage.is_final() {
            self.fill_live(&mut p);
        }
        Some(p)
    }

    /// Waits until resize `id` is final, at most `timeout`; returns its progress.
    pub fn wait_resize(&self, id: u64, timeout: Duration) -> Option<ResizeReport> {
        let end = Instant::now() + timeout;
        let mut g = self.resize.latest.lock();
        loop {
            match g.as_ref() {
                Some(p) if p.id != id || p.stage.is_final() => break,
                None => return None,
                _ => {}
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            self.resize.ended.wait_for(&mut g, left);
        }
        drop(g);
        self.resize_progress()
    }

    fn fill_live(&self, p: &mut ResizeReport) {
        p.allocated_pages = self.state().alloc.allocated();
        p.resident_pages = self.resident_pages();
    }

    fn record(&self, p: &ResizeReport) {
        let mut g = self.resize.latest.lock();
        if g.as_ref().is_none_or(|cur| cur.id <= p.id) {
            *g = Some(p.clone());
        }
        drop(g);
        if p.stage.is_final() {
            self.resize.ended.notify_all();
        }
    }

    /// Starts a resize to `bytes` (see the module docs). A grow is final at once; a shrink
    /// continues on its own thread. Returns the resize's first progress (its `id` is what
    /// [`wait_resize`](Self::wait_resize) takes).
    pub fn resize(&self, bytes: u64, opts: ResizeOptions) -> Result<ResizeReport, ResizeError> {
        check_target(bytes, self.region.size() as u64, self.min_pages * PAGE_SIZE)?;
        if let Some(f) = self.fatal() {
            return Err(ResizeError::Stopped(f));
        }
        let me = self.me.upgrade().ok_or(ResizeError::Removed)?;
        let t0 = Instant::now();
        let target = bytes / PAGE_SIZE;
        let id = self.resize.generation.fetch_add(1, SeqCst) + 1;
        let steps = self.resize.steps.lock();
        let (from, allocated) = {
            let mut st = self.state();
            let from = st.alloc.quota();
            st.alloc
                .set_quota(target)
                .expect("target checked against the region");
            (from, st.alloc.allocated())
        };
        if self.cap.load(Relaxed) != u64::MAX {
            self.cap.store(target, Relaxed);
        }
        // Frames cached in the fast path (granted ahead, or freed by the guest and not yet
        // taken) are unused: they go first, before the guest is asked for anything.
        let reclaimed = if allocated > target {
            self.fastpath_reclaim()
        } else {
            0
        };
        let allocated = allocated - reclaimed.min(allocated);
        let freed = self.drop_free_resident() + reclaimed;
        self.publish_limits(true);
        drop(steps);
        tracing::info!(parent: &self.span, from = from * PAGE_SIZE, to = bytes, "resize");
        let mut p = ResizeReport {
            id,
            from_pages: from,
            target_pages: target,
            stage: ResizeStage::Releasing,
            freed_pages: freed,
            released_pages: 0,
            evicted_pages: 0,
            elapsed: Duration::ZERO,
            allocated_pages: allocated,
            resident_pages: 0,
            shortfall: None,
        };
        if allocated <= target {
            // Nothing to give back (a grow, or a shrink to above what the guest holds).
            self.prefetch();
            p.stage = ResizeStage::Done;
            p.elapsed = t0.elapsed();
            self.fill_live(&mut p);
            self.record(&p);
            return Ok(p);
        }
        self.fill_live(&mut p);
        self.record(&p);
        let first = p.clone();
        std::thread::Builder::new()
            .name(format!("memout-resize-{}", self.name))
            .spawn(move || me.finish_shrink(p, t0, opts))
            .map_err(|e| ResizeError::Spawn(e.into()))?;
        Ok(first)
    }

    /// Ends any running resize as superseded (the guest is going away).
    pub(crate) fn cancel_resize(&self) {
        self.resize.generation.fetch_add(1, SeqCst);
    }

    fn superseded(&self, id: u64) -> bool {
        self.resize.generation.load(SeqCst) != id
    }

    fn end(&self, mut p: ResizeReport, t0: Instant, stage: ResizeStage) {
        p.stage = stage;
        p.elapsed = t0.elapsed();
        self.fill_live(&mut p);
        tracing::info!(parent: &self.span, ?stage, released = p.released_pages,
            evicted = p.evicted_pages, elapsed = ?p.elapsed, "resize ended");
        self.record(&p);
    }

    /// Steps 2 and 3 of a shrink, on the resize thread.
    fn finish_shrink(&self, mut p: ResizeReport, t0: Instant, opts: ResizeOptions) {
        let target = p.target_pages;
        let start_alloc = p.allocated_pages;
        let deadline = t0 + opts.release_deadline;
        let mut recorded = p.released_pages;
        loop {
            if self.superseded(p.id) {
                return self.end(p, t0, ResizeStage::Superseded);
            }
            if let Some(f) = self.fatal() {
                p.shortfall = Some(Shortfall::Stopped(f));
                return self.end(p, t0, ResizeStage::Incomplete);
            }
            // Frames still being released count as held until their host pages are gone.
            let (allocated, held) = {
                let st = self.state();
                (
                    st.alloc.allocated(),
                    st.alloc.allocated() + st.alloc.releasing(),
                )
            };
            p.released_pages = start_alloc.saturating_sub(allocated);
            if held <= target || Instant::now() >= deadline {
                break;
            }
            if p.released_pages != recorded {
                // Publish progress only when the guest gave something back (pollers see it).
                recorded = p.released_pages;
                self.fill_live(&mut p);
                self.record(&p);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        if self.resident_pages() <= target {
            return self.end(p, t0, ResizeStage::Done);
        }
        if matches!(self.eviction, Eviction::None) {
            p.shortfall = Some(Shortfall::NoBackingStore {
                pages: self.resident_pages().saturating_sub(target),
            });
            return self.end(p, t0, ResizeStage::Incomplete);
        }
        let steps = self.resize.steps.lock();
        if self.superseded(p.id) {
            drop(steps);
            return self.end(p, t0, ResizeStage::Superseded);
        }
        p.stage = ResizeStage::Evicting;
        self.record(&p);
        // From now on the target caps resident memory, as a budget would.
        self.cap.store(target, Relaxed);
        let mut last_err = None;
        for _ in 0..64 {
            let resident = self.resident_pages();
            if resident <= target {
                break;
            }
            match self.evict(resident - target) {
                Ok(0) => break,
                Ok(n) => p.evicted_pages += n,
                Err(e) => {
                    last_err = Some(e);
                    break;
                }
            }
        }
        drop(steps);
        if self.resident_pages() <= target {
            self.end(p, t0, ResizeStage::Done)
        } else {
            p.shortfall = Some(last_err.map_or(Shortfall::FramesBusy, Shortfall::Evict));
            self.end(p, t0, ResizeStage::Incomplete)
        }
    }

    /// Drops host pages of frames the guest does not hold (step 1). Returns the pages dropped.
    fn drop_free_resident(&self) -> u64 {
        let runs = {
            let mut st = self.state();
            let all = Run {
                start: 0,
                len: st.alloc.frames(),
            };
            let mut loose = Vec::new();
            for r in st.resident.present(all) {
                let mut f = r.start;
                while f < r.end() {
                    if let Some(a) = st.alloc.allocated_run(f) {
                        f = a.end();
                    } else {
                        let one = Run { start: f, len: 1 };
                        if !st.inflight.overlaps(one) {
                            loose.push(one);
                        }
                        f += 1;
                    }
                }
            }
            let runs = coalesce(loose);
            // In flight while the pages go: a grant of these frames meanwhile must not be
            // populated (the late madvise would drop the new page and its data) before the
            // drop is done; its faults wait for the runs to settle.
            for r in &runs {
                st.resident.clear(*r);
                st.inflight.insert(*r);
            }
            runs
        };
        let mut n = 0;
        let mut kept = Vec::new();
        for r in &runs {
            if self.drop_frames(*r).is_ok() {
                n += r.len;
            } else {
                kept.push(*r);
            }
        }
        {
            let mut st = self.state();
            for r in &runs {
                st.inflight.remove(*r);
            }
            for r in &kept {
                st.resident.set(*r); // still there: count it, and drop it on a later pass
            }
        }
        self.settled.notify_all();
        self.counters
            .bytes_returned
            .fetch_add(n * PAGE_SIZE, Relaxed);
        n
    }
}
