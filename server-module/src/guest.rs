//! One guest's state in the server: its allocator, which frames are resident, its counters, and
//! the operations the ring and the fault handler call. Shared (in an `Arc`) between the guest's
//! handle, used on the VMM's vCPU thread, and its fault-handler thread.

use crate::eager::EagerQueue;
use crate::extents::{ExtentSet, Run};
use crate::frames::{self, FrameAllocator};
use crate::host_mem::HostRegion;
use crate::log_limit::LogLimiter;
use crate::populate::PopulatePolicy;
use crate::resident::ResidentMap;
use crate::stats::{GuestCounters, GuestStatsSnapshot};
use crate::uffd::{CopyOutcome, GuestUffd};
use memout_protocol::ring::{Extent, PAGE_SIZE, Status};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Instant;
use thiserror::Error;

/// Why the server stopped a guest. The VMM ends the guest's run with this error.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum GuestFault {
    /// The guest touched a frame of its outsourced region that it does not hold.
    #[error("guest touched guest-physical address {gpa:#x}, a frame it does not hold")]
    Unowned {
        /// The faulting guest-physical address (page-aligned).
        gpa: u64,
    },
    /// The host could not back a frame the guest holds (e.g. host out of memory).
    #[error("host could not back guest-physical address {gpa:#x}: {}", std::io::Error::from_raw_os_error(*errno))]
    HostPopulate {
        /// The faulting guest-physical address.
        gpa: u64,
        /// errno of the failed populate.
        errno: i32,
    },
    /// The userfaultfd itself failed; the guest's faults can no longer be served.
    #[error("userfaultfd failed: {0}")]
    Uffd(String),
}

/// Called (from the fault-handler thread) when the server stops a guest; the VMM kicks the
/// guest's vCPUs out of KVM_RUN and ends the run.
pub type FatalNotifier = Box<dyn Fn(&GuestFault) + Send + Sync>;

/// Result of serving one fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// The faulting page is backed and its waiters woken.
    Served,
    /// The fault is refused; the guest is stopped (see [`GuestFault`]).
    Refused,
    /// Mappings are changing (REMOVE events pending): read events, then resolve again.
    Retry,
}

/// Merges sorted, disjoint runs that touch.
fn coalesce(sorted: Vec<Run>) -> Vec<Run> {
    let mut out: Vec<Run> = Vec::with_capacity(sorted.len());
    for r in sorted {
        match out.last_mut() {
            Some(last) if last.end() == r.start => last.len += r.len,
            _ => out.push(r),
        }
    }
    out
}

/// How a fill ended.
enum Fill {
    Done,
    Retry,
    Failed(i32),
}

/// A zero-filled, page-aligned source buffer for UFFDIO_COPY, shared by all guests.
pub struct ZeroChunk {
    buf: Box<[u8]>,
    pages: u64,
}

impl ZeroChunk {
    /// A buffer of `pages` zero pages.
    pub fn new(pages: u64) -> Self {
        // One page of slack so the copy source can start on a page boundary.
        let buf = vec![0u8; ((pages + 1) * PAGE_SIZE) as usize].into_boxed_slice();
        Self { buf, pages }
    }

    fn ptr(&self) -> *const u8 {
        let off = self.buf.as_ptr().align_offset(PAGE_SIZE as usize);
        self.buf[off..].as_ptr()
    }
}

struct State {
    alloc: FrameAllocator,
    resident: ResidentMap,
    /// Runs claimed by a populator and being copied right now (not yet resident).
    inflight: ExtentSet,
    hello: bool,
}

/// Who populated a run (for per-policy statistics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Populator {
    Fault,
    Eager,
}

/// What [`GuestCore::new`] is built from.
pub(crate) struct GuestParts {
    pub name: String,
    pub region: HostRegion,
    pub region_gpa: u64,
    pub uffd: GuestUffd,
    pub alloc: FrameAllocator,
    pub policy: PopulatePolicy,
    pub on_fatal: Option<FatalNotifier>,
    pub zero: Arc<ZeroChunk>,
    pub eager: EagerQueue,
}

/// One guest, as the server sees it.
pub struct GuestCore {
    name: String,
    region: HostRegion,
    region_gpa: u64,
    uffd: GuestUffd,
    state: Mutex<State>,
    settled: Condvar,
    counters: GuestCounters,
    policy: Mutex<PopulatePolicy>,
    fatal: Mutex<Option<GuestFault>>,
    on_fatal: Option<FatalNotifier>,
    zero: Arc<ZeroChunk>,
    eager: EagerQueue,
    me: Weak<GuestCore>,
    #[cfg(feature = "fault-injection")]
    inject: crate::inject::PopulateFailure,
    span: tracing::Span,
    log_limit: LogLimiter,
}

impl GuestCore {
    pub(crate) fn new(p: GuestParts) -> Arc<Self> {
        Arc::new_cyclic(|me| Self::build(p, me.clone()))
    }

    fn build(p: GuestParts, me: Weak<GuestCore>) -> Self {
        let span = tracing::info_span!("guest", name = %p.name);
        let resident = ResidentMap::new(p.alloc.frames());
        Self {
            name: p.name,
            region: p.region,
            region_gpa: p.region_gpa,
            uffd: p.uffd,
            state: Mutex::new(State {
                alloc: p.alloc,
                resident,
                inflight: ExtentSet::new(),
                hello: false,
            }),
            settled: Condvar::new(),
            counters: GuestCounters::default(),
            policy: Mutex::new(p.policy),
            fatal: Mutex::new(None),
            on_fatal: p.on_fatal,
            zero: p.zero,
            eager: p.eager,
            me,
            #[cfg(feature = "fault-injection")]
            inject: Default::default(),
            span,
            log_limit: LogLimiter::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a memout bug; the state is still consistent at every
        // await-free step, so keep serving rather than poisoning every later call.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The guest's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The guest's tracing span.
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// The host mapping of the outsourced region.
    pub fn region(&self) -> &HostRegion {
        &self.region
    }

    /// Guest-physical base of the outsourced region.
    pub fn region_gpa(&self) -> u64 {
        self.region_gpa
    }

    pub(crate) fn uffd(&self) -> &GuestUffd {
        &self.uffd
    }

    /// The budget for log lines this guest can trigger.
    pub(crate) fn log_limit(&self) -> &LogLimiter {
        &self.log_limit
    }

    pub(crate) fn counters(&self) -> &GuestCounters {
        &self.counters
    }

    /// The current population policy.
    pub fn policy(&self) -> PopulatePolicy {
        *self.policy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the population policy (takes effect at the next fault).
    pub fn set_policy(&self, p: PopulatePolicy) {
        *self.policy.lock().unwrap_or_else(|p| p.into_inner()) = p;
    }

    /// Changes the quota in pages.
    pub fn set_quota(&self, pages: u64) -> frames::Result<()> {
        self.state().alloc.set_quota(pages)
    }

    /// The quota in pages.
    pub fn quota(&self) -> u64 {
        self.state().alloc.quota()
    }

    /// Why the guest was stopped, if it was.
    pub fn fatal(&self) -> Option<GuestFault> {
        self.fatal.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn hello_done(&self) -> bool {
        self.state().hello
    }

    pub(crate) fn set_hello(&self) {
        self.state().hello = true;
    }

    /// Converts a guest extent to a run of frames; `None` if misaligned, empty or outside the
    /// region.
    pub fn run_of(&self, e: &Extent) -> Option<Run> {
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
            gpa: self.region_gpa + r.start * PAGE_SIZE,
            pages: r.len,
        }
    }

    /// Grants `pages` frames in at most `max_extents` extents (see
    /// [`FrameAllocator::allocate`]).
    pub fn alloc(
        &self,
        pages: u64,
        max_extents: usize,
        partial: bool,
    ) -> Result<Vec<Extent>, Status> {
        let runs = self
            .state()
            .alloc
            .allocate(pages, max_extents, partial)
            .map_err(|e| match e {
                frames::Error::Quota { .. } => Status::Quota,
                _ => Status::NoMemory,
            })?;
        if self.policy() == PopulatePolicy::Eager {
            for r in &runs {
                self.eager.submit(&self.me, *r);
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

    /// The guest gives `runs` back: validated all or nothing, then the host pages are dropped
    /// at once, then the frames become free. Returns the number of frames freed.
    pub fn free(&self, runs: &[Run]) -> Result<u64, Status> {
        let (pages, to_drop) = {
            let mut st = self.state();
            let pages = st.alloc.begin_release(runs).map_err(|e| match e {
                frames::Error::NotOwned(_) => Status::NotOwned,
                _ => Status::Invalid,
            })?;
            // A copy already under way on these frames must land before they are dropped, or
            // it would back a frame that is no longer the guest's. Releasing frames cannot be
            // claimed again, so this wait ends.
            while runs.iter().any(|&r| st.inflight.overlaps(r)) {
                st = self.settled.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            // Only frames with a host page need dropping: in MISSING mode every host page of
            // the region is one memout copied in, so the resident map is exact. Coalesce the
            // runs so adjacent frees cost one madvise (and one REMOVE event) between them.
            let mut present: Vec<Run> = runs.iter().flat_map(|&r| st.resident.present(r)).collect();
            for r in &present {
                st.resident.clear(*r);
            }
            present.sort_unstable();
            (pages, coalesce(present))
        };
        // Dropped outside the lock: with REMOVE events enabled, madvise waits until the fault
        // thread has read the event, and that thread may need the lock. The frames are in the
        // releasing state meanwhile, so nothing can grant or populate them.
        for r in &to_drop {
            if let Err(e) = self
                .region
                .discard((r.start * PAGE_SIZE) as usize, (r.len * PAGE_SIZE) as usize)
            {
                tracing::error!(parent: &self.span, "dropping freed frames: {e}");
            }
        }
        let was_resident: u64 = to_drop.iter().map(|r| r.len).sum();
        self.state().alloc.finish_release(runs);
        self.counters.freed_pages.fetch_add(pages, Relaxed);
        self.counters
            .bytes_returned
            .fetch_add(was_resident * PAGE_SIZE, Relaxed);
        Ok(pages)
    }

    /// Host pages in `[start, end)` were dropped (a REMOVE event): they are no longer resident.
    pub(crate) fn note_removed(&self, start: usize, end: usize) {
        let base = self.region.addr();
        let lo = start.max(base).saturating_sub(base) as u64 / PAGE_SIZE;
        let hi =
            (end.min(base + self.region.size()).saturating_sub(base) as u64).div_ceil(PAGE_SIZE);
        if hi > lo {
            self.state().resident.clear(Run {
                start: lo,
                len: hi - lo,
            });
        }
    }

    /// Serves a missing-page fault at host address `addr`.
    pub(crate) fn resolve_fault(&self, addr: usize) -> Resolution {
        let t0 = Instant::now();
        let base = self.region.addr();
        let frame = (addr.wrapping_sub(base) as u64) / PAGE_SIZE;
        let gpa = self.region_gpa + frame * PAGE_SIZE;
        let page_addr = base + (frame * PAGE_SIZE) as usize;
        let mut st = self.state();
        let claims = loop {
            let Some(granted) = st.alloc.allocated_run(frame) else {
                drop(st);
                self.counters.violations.fetch_add(1, Relaxed);
                self.stop(GuestFault::Unowned { gpa });
                return Resolution::Refused;
            };
            if st.resident.get(frame) {
                drop(st);
                return self.wake_or_stop(page_addr, gpa);
            }
            if st.inflight.containing(frame).is_none() {
                break self.claim(&mut st, self.policy().fault_window(frame, granted));
            }
            // Another populator is copying this frame; its copy wakes the faulting thread, but
            // wait for it to settle in case it failed and the frame is still missing.
            st = self.settled.wait(st).unwrap_or_else(|p| p.into_inner());
        };
        drop(st);
        match self.fill(&claims, Populator::Fault) {
            Fill::Done => {
                self.counters.faults.fetch_add(1, Relaxed);
                self.counters
                    .populate_latency
                    .record(t0.elapsed().as_nanos() as u64);
                Resolution::Served
            }
            Fill::Retry => Resolution::Retry,
            Fill::Failed(errno) => {
                self.stop(GuestFault::HostPopulate { gpa, errno });
                Resolution::Refused
            }
        }
    }

    /// Eagerly populates `run` if it is still granted (called by the eager workers).
    pub(crate) fn populate_eagerly(&self, run: Run) {
        let claims = {
            let mut st = self.state();
            match st.alloc.allocated_run(run.start) {
                Some(g) if g.end() >= run.end() => self.claim(&mut st, run),
                _ => return, // freed meanwhile
            }
        };
        if let Fill::Failed(errno) = self.fill(&claims, Populator::Eager) {
            let gpa = self.region_gpa + run.start * PAGE_SIZE;
            self.stop(GuestFault::HostPopulate { gpa, errno });
        }
        // Retry: leave it; a fault on those frames populates them.
    }

    fn wake_or_stop(&self, page_addr: usize, gpa: u64) -> Resolution {
        match self.uffd.wake(page_addr, PAGE_SIZE as usize) {
            Ok(()) => Resolution::Served,
            Err(e) => {
                self.stop(GuestFault::Uffd(format!("wake at gpa {gpa:#x}: {e}")));
                Resolution::Refused
            }
        }
    }

    /// Claims the holes of `window` that are neither resident nor being populated.
    fn claim(&self, st: &mut State, window: Run) -> Vec<Run> {
        let mut claims = Vec::new();
        for hole in st.resident.holes(window) {
            // Split each hole around runs another populator holds.
            let mut f = hole.start;
            while f < hole.end() {
                if let Some(busy) = st.inflight.containing(f) {
                    f = busy.end();
                    continue;
                }
                let next_busy = st.inflight.first_after(f).map_or(hole.end(), |b| b.start);
                let r = Run {
                    start: f,
                    len: next_busy.min(hole.end()) - f,
                };
                claims.push(r);
                f = r.end();
            }
        }
        for r in &claims {
            st.inflight.insert(*r);
        }
        claims
    }

    /// Copies zeroes into claimed runs without holding the lock, then settles them (what was
    /// copied becomes resident, the rest is released for someone else to claim), and only then
    /// wakes the faulting threads, so the resident count is exact whenever the guest runs.
    fn fill(&self, claims: &[Run], who: Populator) -> Fill {
        let base = self.region.addr();
        let mut outcome = Fill::Done;
        let mut done: Vec<Run> = Vec::new();
        'claims: for &c in claims {
            let mut f = c.start;
            while f < c.end() {
                let pages = (c.end() - f).min(self.zero.pages);
                let dst = base + (f * PAGE_SIZE) as usize;
                #[cfg(feature = "fault-injection")]
                if let Some(errno) = self.inject.take(pages) {
                    outcome = Fill::Failed(errno);
                    break 'claims;
                }
                let step =
                    match self
                        .uffd
                        .copy(self.zero.ptr(), dst, (pages * PAGE_SIZE) as usize, false)
                    {
                        Ok(CopyOutcome::Copied(n)) if n >= PAGE_SIZE as usize => {
                            n as u64 / PAGE_SIZE
                        }
                        Ok(CopyOutcome::AlreadyPopulated) => {
                            match self.uffd.wake(dst, PAGE_SIZE as usize) {
                                Ok(()) => 1,
                                Err(_) => {
                                    outcome = Fill::Failed(libc::EIO);
                                    break 'claims;
                                }
                            }
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
        let populated: u64 = done.iter().map(|r| r.len).sum();
        {
            let mut st = self.state();
            for r in claims {
                st.inflight.remove(*r);
            }
            for r in &done {
                st.resident.set(*r);
            }
        }
        self.settled.notify_all();
        for r in &done {
            let addr = base + (r.start * PAGE_SIZE) as usize;
            if self.uffd.wake(addr, (r.len * PAGE_SIZE) as usize).is_err() {
                outcome = Fill::Failed(libc::EIO);
            }
        }
        let counter = match who {
            Populator::Fault => &self.counters.populated_pages,
            Populator::Eager => &self.counters.populated_eager_pages,
        };
        counter.fetch_add(populated, Relaxed);
        outcome
    }

    /// Test hook: see [`crate::inject::PopulateFailure`].
    #[cfg(feature = "fault-injection")]
    pub fn inject(&self) -> &crate::inject::PopulateFailure {
        &self.inject
    }

    /// Stops the guest: records the first fault and notifies the VMM.
    pub(crate) fn stop(&self, fault: GuestFault) {
        let mut slot = self.fatal.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_some() {
            return; // already stopping; one log line per guest, whatever the guest does
        }
        tracing::error!(parent: &self.span, "stopping guest: {fault}");
        *slot = Some(fault.clone());
        drop(slot);
        if let Some(n) = &self.on_fatal {
            n(&fault);
        }
    }

    /// A consistent snapshot of the guest's statistics.
    pub fn snapshot(&self) -> GuestStatsSnapshot {
        let (quota, allocated, resident) = {
            let st = self.state();
            (st.alloc.quota(), st.alloc.allocated(), st.resident.count())
        };
        let c = &self.counters;
        GuestStatsSnapshot {
            quota_pages: quota,
            allocated_pages: allocated,
            resident_pages: resident,
            doorbells: c.doorbells.load(Relaxed),
            requests: c.requests.load(Relaxed),
            request_errors: c.request_errors.load(Relaxed),
            faults: c.faults.load(Relaxed),
            populated_pages: c.populated_pages.load(Relaxed),
            populated_eager_pages: c.populated_eager_pages.load(Relaxed),
            freed_pages: c.freed_pages.load(Relaxed),
            bytes_returned: c.bytes_returned.load(Relaxed),
            violations: c.violations.load(Relaxed),
            populate_p50_ns: c.populate_latency.quantile(0.5),
            populate_p99_ns: c.populate_latency.quantile(0.99),
            policy: self.policy().name(),
        }
    }
}
