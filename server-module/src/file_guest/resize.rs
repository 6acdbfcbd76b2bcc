//! The record of a file-backed guest's resizes. Such a guest can only shrink by releasing
//! frames through its balloon (memout cannot evict memory another VMM maps), so a resize is
//! `Releasing` until the guest holds no more than the target (`Done`) or the deadline passes
//! (`Incomplete`, [`Shortfall::NotReleased`]); a grow is `Done` at once, like a memout
//! guest's. Pure logic: the caller passes in what the guest holds now.

use crate::guest::{ResizeReport, ResizeStage, Shortfall};
use parking_lot::Mutex;
use std::time::{Duration, Instant};

/// One resize being followed.
#[derive(Debug, Clone)]
struct Tracked {
    report: ResizeReport,
    started: Instant,
    deadline: Duration,
    /// Frames the guest held when the resize started.
    held_at_start: u64,
}

impl Tracked {
    /// Brings the report up to date with the guest holding `held` frames (`resident` host
    /// pages), `now`. A final report no longer changes.
    fn update(&mut self, held: u64, resident: u64, now: Instant) {
        let r = &mut self.report;
        if r.stage.is_final() {
            return;
        }
        r.allocated_pages = held;
        r.resident_pages = resident;
        r.released_pages = self.held_at_start.saturating_sub(held);
        r.elapsed = now.saturating_duration_since(self.started);
        if held <= r.target_pages {
            r.stage = ResizeStage::Done;
        } else if r.elapsed >= self.deadline {
            r.stage = ResizeStage::Incomplete;
            r.shortfall = Some(Shortfall::NotReleased {
                pages: held - r.target_pages,
            });
        }
    }
}

/// The latest resize of one guest.
#[derive(Debug, Default)]
pub(super) struct Resizes {
    latest: Mutex<Option<Tracked>>,
}

impl Resizes {
    /// Starts following a resize from a quota of `from` to `target` pages of a guest that
    /// holds `held` frames (`resident` host pages); a resize still running is superseded.
    pub(super) fn start(
        &self,
        from: u64,
        target: u64,
        held: u64,
        resident: u64,
        deadline: Duration,
    ) -> ResizeReport {
        let now = Instant::now();
        let mut g = self.latest.lock();
        let id = g.as_ref().map_or(1, |t| t.report.id + 1);
        let mut t = Tracked {
            report: ResizeReport {
                id,
                from_pages: from,
                target_pages: target,
                stage: ResizeStage::Releasing,
                freed_pages: 0,
                released_pages: 0,
                evicted_pages: 0,
                elapsed: Duration::ZERO,
                allocated_pages: held,
                resident_pages: resident,
                shortfall: None,
            },
            started: now,
            deadline,
            held_at_start: held,
        };
        t.update(held, resident, now);
        let report = t.report.clone();
        *g = Some(t);
        report
    }

    /// The latest resize, brought up to date with the guest holding `held` frames now.
    pub(super) fn progress(&self, held: u64, resident: u64) -> Option<ResizeReport> {
        let mut g = self.latest.lock();
        let t = g.as_mut()?;
        t.update(held, resident, Instant::now());
        Some(t.report.clone())
    }

    /// True if resize `id` is final or no longer the latest.
    pub(super) fn settled(&self, id: u64) -> bool {
        self.latest
            .lock()
            .as_ref()
            .is_none_or(|t| t.report.id != id || t.report.stage.is_final())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_grow_is_done_at_once() {
        let r = Resizes::default();
        let p = r.start(100, 200, 100, 80, MS);
        assert_eq!((p.id, p.stage), (1, ResizeStage::Done));
        assert!(r.settled(1));
    }

    #[test]
    fn a_shrink_is_done_when_the_guest_holds_no_more_than_the_target() {
        let r = Resizes::default();
        let p = r.start(100, 60, 100, 90, Duration::from_secs(60));
        assert_eq!(p.stage, ResizeStage::Releasing);
        assert!(!r.settled(p.id));
        let p = r.progress(70, 70).unwrap();
        assert_eq!((p.stage, p.released_pages), (ResizeStage::Releasing, 30));
        let p = r.progress(60, 55).unwrap();
        assert_eq!((p.stage, p.released_pages), (ResizeStage::Done, 40));
        // Final: what the guest does afterwards no longer changes the report.
        let p = r.progress(100, 100).unwrap();
        assert_eq!((p.stage, p.allocated_pages), (ResizeStage::Done, 60));
    }

    #[test]
    fn a_shrink_past_its_deadline_is_incomplete_with_the_pages_left() {
        let r = Resizes::default();
        r.start(100, 60, 100, 100, MS);
        std::thread::sleep(2 * MS);
        let p = r.progress(75, 75).unwrap();
        assert_eq!(p.stage, ResizeStage::Incomplete);
        assert_eq!(p.shortfall, Some(Shortfall::NotReleased { pages: 15 }));
        assert_eq!(p.released_pages, 25);
    }

    #[test]
    fn a_newer_resize_takes_over() {
        let r = Resizes::default();
        let old = r.start(100, 60, 100, 100, Duration::from_secs(60));
        let new = r.start(60, 100, 100, 100, MS);
        assert_eq!(new.id, old.id + 1);
        assert!(r.settled(old.id), "no longer the latest");
        assert_eq!(r.progress(100, 100).unwrap().id, new.id);
    }
}
