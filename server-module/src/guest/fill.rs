//! Populating a guest's frames: serve a fault, fill ahead of the guest (eager, prefetch), and
//! swap evicted frames back in from the store. Every populator works in four steps:
//! claim (under the lock) → copy (without it) → settle (under it) → wake.

use super::{CHUNK_PAGES, Fill, GuestCore, GuestFault, Resolution, State};
use crate::evicted::Piece;
use crate::extents::Run;
use crate::host_mem::AlignedBuf;
use crate::uffd::CopyOutcome;
use memout_protocol::ring::PAGE_SIZE;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

/// Faults on one frame the guest does not hold before it is stopped: more than the threads
/// that can have a stale event outstanding on one page (vCPUs and VMM threads), so a stale
/// event never stops a guest, and few enough that a real bad access ends in about a millisecond.
pub const UNOWNED_STRIKES: u32 = 16;

/// How long a stopped guest's faults are only woken before they get the zero page (see
/// `answer_stopped`): ample time for the VMM's kick signal to reach a vCPU in guest mode.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_millis(50);

/// Frames with strikes remembered at once (a few in practice: one per faulting thread).
const MAX_STRIKE_ENTRIES: usize = 256;

/// Chunks past a swap-in fault that are queued for background swap-in.
const READ_AHEAD_CHUNKS: u64 = 1;

/// Frames claimed by one populator, with the evicted pieces among them.
pub(super) struct Claim {
    run: Run,
    pieces: Vec<Piece>,
}

/// Who populated a run (for statistics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Populator {
    Fault,
    Eager,
}

/// Where a segment's content comes from.
enum Source {
    Zero,
    Store(u64),
}

impl GuestCore {
    /// Serves a missing-page fault at host address `addr`.
    ///
    /// A fault on a frame the guest does not hold is not proof of a bad access: the event may
    /// be stale. Another populator (an eager worker, read-ahead, a fault of another vCPU) can
    /// fill and wake the page after the event was queued but before it is served here, and the
    /// guest can then free the frame. So such a fault is answered with a wake and counted: an
    /// access that really hit a frame the guest does not hold faults again at once, a stale
    /// event does not (each thread has at most one outstanding event). The guest is stopped
    /// when one frame it does not hold faults [`UNOWNED_STRIKES`] times with no grant of it in
    /// between.
    pub(crate) fn resolve_fault(&self, addr: usize) -> Resolution {
        let t0 = Instant::now();
        let frame = (addr.wrapping_sub(self.region.addr()) as u64) / PAGE_SIZE;
        let gpa = self.gpa(frame);
        if self.stopped_at.get().is_some() {
            return self.answer_stopped(frame); // lock-free: every fault asks
        }
        let mut st = self.state();
        let (claims, swap_in, window) = loop {
            let Some(granted) = st.alloc.allocated_run(frame) else {
                if st.strikes.len() >= MAX_STRIKE_ENTRIES {
                    st.strikes.clear(); // only real, repeating faults matter; they come back
                }
                let strikes = st.strikes.entry(frame).or_insert(0);
                *strikes += 1;
                if *strikes < UNOWNED_STRIKES {
                    drop(st);
                    self.counters.stale_faults.fetch_add(1, Relaxed);
                    return self.wake_or_stop(self.host_addr(frame));
                }
                st.strikes.remove(&frame);
                drop(st);
                self.counters.violations.fetch_add(1, Relaxed);
                self.stop(GuestFault::Unowned { gpa });
                return self.answer_stopped(frame);
            };
            if st.resident.get(frame) {
                drop(st);
                return self.wake_or_stop(self.host_addr(frame));
            }
            if st.inflight.containing(frame).is_none() {
                // An evicted frame is swapped in with a window that grows while faults
                // follow each other through memory (see `swapin_window`); at its largest,
                // the next chunk of the same grant, if evicted too, is read ahead on an eager
                // worker while the guest consumes this one.
                let swap_in = st.evicted.contains(frame);
                let read_ahead_pages = READ_AHEAD_CHUNKS * CHUNK_PAGES;
                let (window, read_ahead) = if swap_in {
                    let s = st.swapin.on_fault(frame, granted, read_ahead_pages);
                    (s.window, s.read_ahead)
                } else {
                    (self.policy().fault_window(frame, granted), false)
                };
                let next = Run {
                    start: window.end(),
                    len: read_ahead_pages.min(granted.end() - window.end()),
                };
                let ahead = read_ahead && next.len > 0 && !st.evicted.pieces(next).is_empty();
                break (self.claim(&mut st, window), swap_in, ahead.then_some(next));
            }
            // Someone is copying (or evicting) this frame; its wake-up releases the faulting
            // thread, but wait for it to settle in case it failed and the frame is missing.
            self.settled.wait(&mut st);
        };
        drop(st);
        if let Some(next) = window {
            self.eager.submit(self.me.clone(), next);
        }
        let outcome = self.fill(&claims, Populator::Fault);
        match outcome {
            Fill::Done => {
                self.counters.faults.fetch_add(1, Relaxed);
                let ns = t0.elapsed().as_nanos() as u64;
                self.counters.populate_latency.record(ns);
                if swap_in {
                    self.counters.swapin_latency.record(ns);
                    self.state().cold.swap_in_fault(frame / CHUNK_PAGES);
                }
                self.enforce_budget();
                Resolution::Served
            }
            Fill::Retry => Resolution::Retry,
            Fill::Failed(errno) => {
                self.stop(GuestFault::HostPopulate { gpa, errno });
                self.answer_stopped(frame)
            }
            Fill::StoreFailed {
                frame: failed,
                error,
            } => {
                self.stop(GuestFault::SwapIn {
                    gpa: self.gpa(failed),
                    source: error,
                });
                self.answer_stopped(frame)
            }
        }
    }

    /// Answers a fault of a stopped guest. For [`STOP_GRACE`] after the stop the fault is only
    /// woken: a vCPU faulting from guest mode then sees the VMM's kick signal and leaves
    /// KVM_RUN. A fault KVM takes while emulating an instruction (string I/O, MMIO) cannot be
    /// interrupted that way: it retries in the kernel, so the same page keeps faulting; after
    /// the grace it gets the zero page, the emulated access completes and the vCPU leaves.
    /// Leaving it unanswered would spin the vCPU thread forever. The guest never runs again,
    /// so what it reads there does not matter.
    fn answer_stopped(&self, frame: u64) -> Resolution {
        let addr = self.host_addr(frame);
        let in_grace = self
            .stopped_at
            .get()
            .is_some_and(|t| t.elapsed() < STOP_GRACE);
        let r = if in_grace {
            std::thread::yield_now();
            self.uffd.wake(addr, PAGE_SIZE as usize)
        } else {
            self.uffd.zero_page(addr)
        };
        if let Err(e) = r
            && let Some(suppressed) = self.log_limit.allow()
        {
            tracing::error!(parent: &self.span, suppressed, "answering a stopped guest's fault: {e}");
        }
        Resolution::Refused
    }

    /// A write hit a write-protected page: an eviction is under way there. The evictor wakes
    /// the writer once the page is stored and dropped (it then faults as missing and is swapped
    /// in) or, if the eviction fails, lifts the protection. Only a protection nobody owns any
    /// more is lifted here.
    pub(crate) fn resolve_wp_fault(&self, addr: usize) {
        let frame = (addr.wrapping_sub(self.region.addr()) as u64) / PAGE_SIZE;
        let page = self.host_addr(frame);
        let st = self.state();
        if st.inflight.containing(frame).is_some() {
            return;
        }
        let resident = st.resident.get(frame);
        drop(st);
        let r = if resident {
            self.uffd.unprotect(page, PAGE_SIZE as usize)
        } else {
            self.uffd.wake(page, PAGE_SIZE as usize)
        };
        if let Err(e) = r {
            self.stop(GuestFault::Uffd(e.into()));
        }
    }

    /// Populates `run` ahead of the guest if it is still granted (eager workers, prefetch).
    pub(crate) fn populate_eagerly(&self, run: Run) {
        let claims = {
            let mut st = self.state();
            match st.alloc.allocated_run(run.start) {
                Some(g) if g.end() >= run.end() => {}
                _ => return, // freed meanwhile
            }
            // Counting what other populators are copying now: two eager workers and a fault
            // that each saw room for themselves alone would together overshoot the limit.
            let budget = self.limit();
            let after = st.resident.count() + st.populating + run.len;
            if after > budget {
                return; // would only be evicted again
            }
            self.claim(&mut st, run)
        };
        match self.fill(&claims, Populator::Eager) {
            Fill::Done | Fill::Retry => {} // on Retry a fault populates those frames later
            Fill::Failed(errno) => self.stop(GuestFault::HostPopulate {
                gpa: self.gpa(run.start),
                errno,
            }),
            Fill::StoreFailed { frame, error } => self.stop(GuestFault::SwapIn {
                gpa: self.gpa(frame),
                source: error,
            }),
        }
    }

    pub(super) fn wake_or_stop(&self, page_addr: usize) -> Resolution {
        match self.uffd.wake(page_addr, PAGE_SIZE as usize) {
            Ok(()) => Resolution::Served,
            Err(e) => {
                self.stop(GuestFault::Uffd(e.into()));
                Resolution::Refused
            }
        }
    }

    /// Claims the holes of `window` that are neither resident nor in flight.
    fn claim(&self, st: &mut State, window: Run) -> Vec<Claim> {
        let mut claims = Vec::new();
        for hole in st.resident.holes(window) {
            for run in st.inflight.gaps(hole, u64::MAX) {
                claims.push(Claim {
                    run,
                    pieces: st.evicted.pieces(run),
                });
            }
        }
        for c in &claims {
            st.inflight.insert(c.run);
            st.populating += c.run.len;
        }
        claims
    }

    /// Where a read starting at slot `from` (which must cover `[from, end)`) may stop: extended
    /// over the claim's later pieces whose slots follow on, up to `cap` pages in all.
    fn slot_span_end(c: &Claim, from: u64, end: u64, cap: u64) -> u64 {
        let mut end = end;
        for p in &c.pieces {
            let Some(ps) = p.slot else { continue };
            if ps == end && end - from + p.frames.len <= cap {
                end += p.frames.len;
            }
        }
        end
    }

    /// The segments of a claim in frame order, each with its source.
    fn segments(c: &Claim) -> Vec<(Run, Source)> {
        let mut out = Vec::new();
        let mut f = c.run.start;
        for p in &c.pieces {
            if p.frames.start > f {
                out.push((
                    Run {
                        start: f,
                        len: p.frames.start - f,
                    },
                    Source::Zero,
                ));
            }
            out.push((p.frames, p.slot.map_or(Source::Zero, Source::Store)));
            f = p.frames.end();
        }
        if f < c.run.end() {
            out.push((
                Run {
                    start: f,
                    len: c.run.end() - f,
                },
                Source::Zero,
            ));
        }
        out
    }

    /// A host-private buffer of one copy chunk (swap-in reads, eviction copies), from the
    /// guest's pool; give it back with [`put_staging`](Self::put_staging).
    pub(super) fn take_staging(&self) -> std::io::Result<AlignedBuf> {
        if let Some(b) = self.staging.lock().pop() {
            return Ok(b);
        }
        AlignedBuf::new((self.zero.pages * PAGE_SIZE) as usize).map_err(std::io::Error::other)
    }

    pub(super) fn put_staging(&self, b: AlignedBuf) {
        self.staging.lock().push(b);
    }

    /// Copies content into claimed runs without the lock, settles them (what was copied becomes
    /// resident and leaves the evicted map, the rest is released for someone else to claim),
    /// and only then wakes the faulting threads, so the counts are exact whenever the guest
    /// runs.
    fn fill(&self, claims: &[Claim], who: Populator) -> Fill {
        let mut outcome = Fill::Done;
        let mut done: Vec<Run> = Vec::new();
        let mut staging: Option<AlignedBuf> = None;
        let mut stale_dropped: Option<u64> = None;
        // The slots in the staging buffer: (first slot, pages).
        let mut held: Option<(u64, u64)> = None;
        'claims: for c in claims {
            for (seg, source) in Self::segments(c) {
                let mut f = seg.start;
                while f < seg.end() {
                    let pages = (seg.end() - f).min(self.zero.pages);
                    let dst = self.host_addr(f);
                    #[cfg(feature = "fault-injection")]
                    if let Some(errno) = self.inject.take(pages) {
                        outcome = Fill::Failed(errno);
                        break 'claims;
                    }
                    let src = match source {
                        Source::Zero => self.zero.ptr(),
                        Source::Store(slot) => {
                            let buf = match staging.take().map_or_else(|| self.take_staging(), Ok) {
                                Ok(b) => staging.insert(b),
                                Err(error) => {
                                    outcome = Fill::StoreFailed {
                                        frame: f,
                                        error: error.into(),
                                    };
                                    break 'claims;
                                }
                            };
                            // One read brings in this segment and the claim's following
                            // pieces whose slots continue it (an eviction writes a run's data
                            // pages to consecutive slots), up to the staging buffer's size.
                            let at = slot + (f - seg.start);
                            if !held.is_some_and(|(h, n)| at >= h && at + pages <= h + n) {
                                let end = Self::slot_span_end(c, at, at + pages, self.zero.pages);
                                let len = ((end - at) * PAGE_SIZE) as usize;
                                if let Err(e) =
                                    self.eviction.read(at, &mut buf.as_mut_slice()[..len])
                                {
                                    outcome = Fill::StoreFailed {
                                        frame: f,
                                        error: e.into(),
                                    };
                                    break 'claims;
                                }
                                held = Some((at, end - at));
                            }
                            let (h, _) = held.expect("read above");
                            buf.as_slice()[((at - h) * PAGE_SIZE) as usize..].as_ptr()
                        }
                    };
                    let step = match self
                        .uffd
                        .copy(src, dst, (pages * PAGE_SIZE) as usize, false)
                    {
                        Ok(CopyOutcome::Copied(n)) if n >= PAGE_SIZE as usize => {
                            n as u64 / PAGE_SIZE
                        }
                        Ok(CopyOutcome::AlreadyPopulated) => {
                            // The kernel holds a page memout's map calls missing (one memout
                            // did not put there, e.g. left by a failed drop): its content is
                            // stale. Drop it and copy again, once; never mark it resident.
                            if stale_dropped == Some(f)
                                || self.drop_frames(Run { start: f, len: 1 }).is_err()
                            {
                                outcome = Fill::Failed(libc::EEXIST);
                                break 'claims;
                            }
                            tracing::warn!(parent: &self.span, gpa = self.gpa(f), "dropped a stale page before populating");
                            stale_dropped = Some(f);
                            continue;
                        }
                        Ok(CopyOutcome::Copied(_)) | Ok(CopyOutcome::Retry) => {
                            outcome = Fill::Retry;
                            break 'claims;
                        }
                        Err(crate::uffd::Error::Populate { errno, .. }) => {
                            outcome = Fill::Failed(errno);
                            break 'claims;
                        }
                        Err(_) => {
                            outcome = Fill::Failed(libc::EIO);
                            break 'claims;
                        }
                    };
                    done.push(Run {
                        start: f,
                        len: step,
                    });
                    f += step;
                }
            }
        }
        if let Some(b) = staging {
            self.put_staging(b);
        }
        let (populated, swapped_in) = self.settle(claims, &done);
        self.settled.notify_all();
        for r in &done {
            if self
                .uffd
                .wake(self.host_addr(r.start), (r.len * PAGE_SIZE) as usize)
                .is_err()
            {
                outcome = Fill::Failed(libc::EIO);
            }
        }
        let counter = match who {
            Populator::Fault => &self.counters.populated_pages,
            Populator::Eager => &self.counters.populated_eager_pages,
        };
        counter.fetch_add(populated, Relaxed);
        self.counters
            .swapped_in_pages
            .fetch_add(swapped_in, Relaxed);
        outcome
    }

    /// Under the lock: claims leave the in-flight set; what was copied becomes resident (and
    /// young), leaves the evicted map and frees its slots for reuse (no hole is punched: that
    /// would put a synchronous filesystem operation on every swap-in). Returns (populated,
    /// swapped in).
    fn settle(&self, claims: &[Claim], done: &[Run]) -> (u64, u64) {
        let mut st = self.state();
        for c in claims {
            st.inflight.remove(c.run);
            st.populating -= c.run.len;
        }
        let mut swapped_in = 0;
        for r in done {
            st.resident.set(*r);
            for p in st.evicted.remove(*r) {
                swapped_in += p.frames.len;
                if let Some(s) = p.slot {
                    st.slots.free(Run {
                        start: s,
                        len: p.frames.len,
                    });
                }
            }
            for chunk in r.start / CHUNK_PAGES..=(r.end() - 1) / CHUNK_PAGES {
                st.cold.touch(chunk);
            }
        }
        (done.iter().map(|r| r.len).sum(), swapped_in)
    }
}
