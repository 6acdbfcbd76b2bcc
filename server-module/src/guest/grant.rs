//! ALLOC and FREE: granting frames to the guest and taking them back. A FREE drops the host
//! pages at once and discards the store slots of evicted frames; a slot is reusable only after
//! its discard. If the pages cannot be dropped, the FREE is undone and the guest keeps its
//! frames (none returns to the free pool with stale content).

use super::{GuestCore, coalesce};
use crate::evicted::Piece;
use crate::extents::Run;
use crate::frames;
use crate::populate::PopulatePolicy;
use memout_protocol::ring::{Extent, PAGE_SIZE, Status};
use std::sync::atomic::Ordering::Relaxed;

impl GuestCore {
    /// Converts a guest extent to a run of frames; `None` if misaligned, empty or outside the
    /// region.
    pub(crate) fn run_of(&self, e: &Extent) -> Option<Run> {
        let off = e.gpa.checked_sub(self.region_gpa)?;
        if off % PAGE_SIZE != 0 || e.pages == 0 {
            return None;
        }
        let start = off / PAGE_SIZE;
        let frames = self.region.size() as u64 / PAGE_SIZE;
        (start.checked_add(e.pages)? <= frames).then_some(Run {
            start,
            len: e.pages,
        })
    }

    fn extent_of(&self, r: Run) -> Extent {
        Extent {
            gpa: self.gpa(r.start),
            pages: r.len,
        }
    }

    /// Grants `pages` frames in at most `max_extents` extents (see
    /// [`FrameAllocator::allocate`]).
    pub(crate) fn alloc(
        &self,
        pages: u64,
        max_extents: usize,
        partial: bool,
    ) -> Result<Vec<Extent>, Status> {
        let runs = {
            let mut st = self.state();
            let runs = st
                .alloc
                .allocate(pages, max_extents, partial)
                .map_err(|e| match e {
                    frames::Error::Quota { .. } => Status::Quota,
                    _ => Status::NoMemory,
                })?;
            if !st.strikes.is_empty() {
                // A grant starts a frame's count of bad faults afresh.
                st.strikes
                    .retain(|f, _| !runs.iter().any(|r| (r.start..r.end()).contains(f)));
            }
            runs
        };
        if self.policy() == PopulatePolicy::Eager {
            for r in &runs {
                self.eager.submit(self.me.clone(), *r);
            }
        }
        Ok(runs.into_iter().map(|r| self.extent_of(r)).collect())
    }

    /// Takes back a grant that could not be delivered to the guest (never touched by it).
    pub(crate) fn undo_alloc(&self, extents: &[Extent]) {
        let runs: Vec<Run> = extents.iter().filter_map(|e| self.run_of(e)).collect();
        let mut st = self.state();
        if st.alloc.begin_release(&runs).is_ok() {
            st.alloc.finish_release(&runs);
        }
    }

    /// The guest gives `runs` back: validated all or nothing; in-flight copies on them are
    /// waited for; their resident host pages are dropped at once and their store slots
    /// discarded; then the frames become free. Returns the number of frames freed.
    ///
    /// A store slot becomes reusable only after its discard (a hole punch) is done: a slot
    /// handed to another eviction before that would have its new content punched away. If the
    /// host pages cannot be dropped, the FREE fails with [`Status::HostError`] and the guest
    /// keeps every frame (none returns to the free pool with stale content); the resident map
    /// is rebuilt from what the kernel really holds.
    pub(crate) fn free(&self, runs: &[Run]) -> Result<u64, Status> {
        let (pages, present, pieces) = {
            let mut st = self.state();
            let pages = st.alloc.begin_release(runs).map_err(|e| match e {
                frames::Error::NotOwned(_) => Status::NotOwned,
                _ => Status::Invalid,
            })?;
            // A copy or eviction under way on these frames must land first, or it would back
            // (or store) a frame that is no longer the guest's. Releasing frames cannot be
            // claimed again, so this wait ends.
            while runs.iter().any(|&r| st.inflight.overlaps(r)) {
                self.settled.wait(&mut st);
            }
            // Only frames with a host page need dropping: in MISSING mode every host page of
            // the region is one memout copied in, so the resident map is exact. Coalesce the
            // runs so adjacent frees cost one madvise between them.
            let mut present: Vec<Run> = runs.iter().flat_map(|&r| st.resident.present(r)).collect();
            for r in &present {
                st.resident.clear(*r);
            }
            for &r in runs {
                self.eager.cancel(r); // no use filling frames the guest gives back
            }
            // Evicted pieces leave the map (releasing frames cannot fault them back in); their
            // slots stay taken until the store has discarded them.
            let pieces: Vec<Piece> = runs.iter().flat_map(|&r| st.evicted.remove(r)).collect();
            present.sort_unstable();
            (pages, coalesce(present), pieces)
        };
        if let Err(failed) = self.drop_freed(&present) {
            self.abort_free(runs, &failed, &pieces);
            return Err(Status::HostError);
        }
        let slots: Vec<Run> = pieces
            .iter()
            .filter_map(|p| {
                p.slot.map(|s| Run {
                    start: s,
                    len: p.frames.len,
                })
            })
            .collect();
        self.eviction.discard_slots(&slots);
        {
            let mut st = self.state();
            for s in &slots {
                st.slots.free(*s);
            }
            st.alloc.finish_release(runs);
        }
        let was_resident: u64 = present.iter().map(|r| r.len).sum();
        self.counters.freed_pages.fetch_add(pages, Relaxed);
        self.counters
            .bytes_returned
            .fetch_add(was_resident * PAGE_SIZE, Relaxed);
        Ok(pages)
    }

    /// Drops the host pages of freed runs; on a failure, the runs whose drop failed.
    fn drop_freed(&self, present: &[Run]) -> Result<(), Vec<Run>> {
        let mut failed = Vec::new();
        for r in present {
            #[cfg(feature = "fault-injection")]
            if let Some(errno) = self.inject_drop.take() {
                tracing::error!(parent: &self.span, errno, "dropping freed frames: injected failure");
                failed.push(*r);
                continue;
            }
            if let Err(e) = self.drop_frames(*r) {
                tracing::error!(parent: &self.span, "dropping freed frames: {e}");
                failed.push(*r);
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed)
        }
    }

    /// Undoes a FREE whose page drop failed: the guest keeps the frames, evicted pieces stay
    /// evicted in their slots, and frames whose drop failed are resident exactly where the
    /// kernel still holds a page (a partial drop leaves holes that fault in as zeroes).
    fn abort_free(&self, runs: &[Run], failed: &[Run], pieces: &[Piece]) {
        let mut still: Vec<Run> = Vec::new();
        for r in failed {
            let off = (r.start * PAGE_SIZE) as usize;
            match self.region.in_core(off, (r.len * PAGE_SIZE) as usize) {
                Ok(bits) => {
                    for (i, _) in bits.iter().enumerate().filter(|(_, b)| **b) {
                        still.push(Run {
                            start: r.start + i as u64,
                            len: 1,
                        });
                    }
                }
                // Cannot tell: count all of it resident (a page the map calls resident but the
                // kernel dropped only costs a missing fault that is then populated again).
                Err(_) => still.push(*r),
            }
        }
        let mut st = self.state();
        for r in &still {
            st.resident.set(*r);
        }
        for p in pieces {
            st.evicted.insert(p.frames, p.slot);
        }
        st.alloc.abort_release(runs);
        drop(st);
        self.counters.free_errors.fetch_add(1, Relaxed);
    }
}
