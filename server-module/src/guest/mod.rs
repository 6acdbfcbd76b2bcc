//! One guest's state in the server: its allocator, which frames are resident or evicted, its
//! counters, and the operations the ring, the fault handler and the operator call. Shared (in
//! an `Arc`) between the guest's handle, its fault-handler thread and the eager workers.
//!
//! - this module: state, ALLOC/FREE, stop, statistics;
//! - `fill`: populate (claim → copy → settle → wake), including swap-in from the store;
//! - `evict`: eviction to the backing store or to kernel swap, and the resident budget;
//! - `resize`: changing the requested size of a running guest.

mod evict;
mod fast;
mod fill;
mod grant;
mod kernel_swap;
mod ksm;
mod resize;
mod resize_report;
mod segments;
mod snapshot;
mod store_evict;

pub use evict::{EvictError, Eviction};
pub use kernel_swap::KERNEL_BUDGET_TICK;
pub use ksm::MergeableError;
pub(crate) use resize::check_target;
pub use resize::{ResizeError, ResizeOptions};
pub use resize_report::{ResizeReport, ResizeStage, Shortfall};
pub(crate) use segments::GuestSegments;

use crate::cold::ColdQueue;
use crate::eager::{EagerQueue, EagerTarget};
use crate::evicted::EvictedMap;
use crate::extents::{ExtentSet, Run};
use crate::frames::{self, FrameAllocator};
use crate::host_mem::{AlignedBuf, HostRegion};
use crate::log_limit::LogLimiter;
use crate::mailbox::HostMailbox;
use crate::populate::PopulatePolicy;
use crate::resident::ResidentMap;
use crate::shared_error::Shared;
use crate::slots::SlotAllocator;
use crate::stats::GuestCounters;
use crate::uffd::GuestUffd;
use memout_protocol::ring::PAGE_SIZE;
use parking_lot::{Condvar, Mutex, MutexGuard};
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Weak};
use thiserror::Error;

/// Frames per chunk: the unit of fault-around, eager population, eviction and read-ahead.
pub const CHUNK_PAGES: u64 = 512;

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
    /// An evicted frame could not be read back from the backing store. The guest is stopped
    /// rather than given zeroes in place of its data.
    #[error(
        "cannot read evicted frame at guest-physical address {gpa:#x} back from the store: {source}"
    )]
    SwapIn {
        /// The frame that could not be restored.
        gpa: u64,
        /// The store's error.
        #[source]
        source: Shared<std::io::Error>,
    },
    /// The userfaultfd itself failed; the guest's faults can no longer be served.
    #[error("userfaultfd failed: {0}")]
    Uffd(#[source] Shared<crate::uffd::Error>),
    /// Waiting on the userfaultfd failed.
    #[error("polling the userfaultfd failed: {0}")]
    Poll(#[source] nix::errno::Errno),
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
    /// Mappings are changing (UFFDIO_COPY said EAGAIN): read events, then resolve again.
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
    StoreFailed {
        frame: u64,
        error: Shared<std::io::Error>,
    },
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
    /// Runs claimed by a populator or an evictor and being copied right now.
    inflight: ExtentSet,
    /// Pages of `inflight` that populators claimed: not resident yet, but about to be.
    populating: u64,
    /// Where evicted frames' contents are.
    evicted: EvictedMap,
    /// Store slots in use.
    slots: SlotAllocator,
    /// Eviction order.
    cold: ColdQueue,
    /// Faults on frames the guest does not hold, per frame (see `resolve_fault`).
    strikes: HashMap<u64, u32>,
    /// How much the next swap-in fault brings in.
    swapin: crate::swapin_window::SwapInWindow,
    hello: bool,
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
    pub eviction: Eviction,
    pub budget_pages: Option<u64>,
    pub min_pages: u64,
    pub mailbox: HostMailbox,
    pub fastpath: Option<crate::fastpath::FastPath>,
    pub fastpath_waker: Option<crate::fastpath::worker::Waker>,
    pub segments: segments::GuestSegments,
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
    /// KSM may merge the region (see `ksm.rs`).
    mergeable: std::sync::atomic::AtomicBool,
    /// Shared segments it maps (see `segments.rs`).
    segments: segments::GuestSegments,
    fatal: Mutex<Option<GuestFault>>,
    /// When the guest was stopped (see `answer_stopped`).
    stopped_at: std::sync::OnceLock<std::time::Instant>,
    on_fatal: Option<FatalNotifier>,
    zero: Arc<ZeroChunk>,
    eager: EagerQueue,
    eviction: Eviction,
    /// Resident budget in pages (`u64::MAX`: none).
    budget: AtomicU64,
    /// Resident cap a shrink left (`u64::MAX`: none); the effective limit is the lower.
    cap: AtomicU64,
    /// Smallest size a resize may ask for, in pages.
    min_pages: u64,
    /// Host→guest messages.
    mailbox: HostMailbox,
    /// The exit-free fast path, if the guest has one, and how to wake its worker.
    fastpath: Option<crate::fastpath::FastPath>,
    fastpath_waker: Option<crate::fastpath::worker::Waker>,
    resize: resize::ResizeTracker,
    /// One evictor at a time.
    evict_lock: Mutex<()>,
    /// How long the fault thread polls for the next fault before it sleeps, in ns.
    fault_spin_ns: AtomicU64,
    /// Kernel mode: pause after futile page-out sweeps.
    kernel_backoff: Mutex<kernel_swap::Backoff>,
    /// Page-aligned buffers for store I/O, reused.
    staging: Mutex<Vec<AlignedBuf>>,
    last_evict_error: Mutex<Option<EvictError>>,
    me: Weak<GuestCore>,
    #[cfg(feature = "fault-injection")]
    inject: crate::inject::PopulateFailure,
    #[cfg(feature = "fault-injection")]
    inject_drop: crate::inject::DropFailure,
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
        let capacity = p.eviction.capacity_slots();
        Self {
            name: p.name,
            region: p.region,
            region_gpa: p.region_gpa,
            uffd: p.uffd,
            state: Mutex::new(State {
                alloc: p.alloc,
                resident,
                inflight: ExtentSet::new(),
                populating: 0,
                evicted: EvictedMap::new(),
                slots: SlotAllocator::new(capacity),
                cold: ColdQueue::new(),
                strikes: HashMap::new(),
                swapin: crate::swapin_window::SwapInWindow::new(CHUNK_PAGES),
                hello: false,
            }),
            settled: Condvar::new(),
            counters: GuestCounters::default(),
            policy: Mutex::new(p.policy),
            mergeable: std::sync::atomic::AtomicBool::new(false),
            segments: p.segments,
            fatal: Mutex::new(None),
            stopped_at: std::sync::OnceLock::new(),
            on_fatal: p.on_fatal,
            zero: p.zero,
            eager: p.eager,
            eviction: p.eviction,
            budget: AtomicU64::new(p.budget_pages.unwrap_or(u64::MAX)),
            cap: AtomicU64::new(u64::MAX),
            min_pages: p.min_pages,
            mailbox: p.mailbox,
            fastpath: p.fastpath,
            fastpath_waker: p.fastpath_waker,
            resize: Default::default(),
            evict_lock: Mutex::new(()),
            fault_spin_ns: AtomicU64::new(0),
            kernel_backoff: Mutex::default(),
            staging: Mutex::new(Vec::new()),
            last_evict_error: Mutex::new(None),
            me,
            #[cfg(feature = "fault-injection")]
            inject: Default::default(),
            #[cfg(feature = "fault-injection")]
            inject_drop: Default::default(),
            span,
            log_limit: LogLimiter::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a memout bug; the state is consistent between
        // statements, so keep serving rather than poisoning every later call.
        self.state.lock()
    }

    /// The guest's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How long the fault thread polls for the next fault before sleeping.
    pub(crate) fn fault_spin(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(
            self.fault_spin_ns
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Sets [`fault_spin`](Self::fault_spin) (the caller checked the limit).
    pub(crate) fn set_fault_spin(&self, spin: std::time::Duration) {
        let ns = u64::try_from(spin.as_nanos()).unwrap_or(u64::MAX);
        self.fault_spin_ns
            .store(ns, std::sync::atomic::Ordering::Relaxed);
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
        *self.policy.lock()
    }

    /// Changes the population policy (takes effect at the next fault).
    pub fn set_policy(&self, p: PopulatePolicy) {
        *self.policy.lock() = p;
    }

    /// Changes the quota in pages.
    pub fn set_quota(&self, pages: u64) -> frames::Result<()> {
        self.state().alloc.set_quota(pages)
    }

    /// Why the guest was stopped, if it was.
    pub fn fatal(&self) -> Option<GuestFault> {
        self.fatal.lock().clone()
    }

    pub(crate) fn hello_done(&self) -> bool {
        self.state().hello
    }

    pub(crate) fn set_hello(&self) {
        self.state().hello = true;
    }

    /// Drops the host pages behind `r` (`MADV_DONTNEED`).
    fn drop_frames(&self, r: Run) -> crate::host_mem::Result<()> {
        self.region
            .discard((r.start * PAGE_SIZE) as usize, (r.len * PAGE_SIZE) as usize)
    }

    fn host_addr(&self, frame: u64) -> usize {
        self.region.addr() + (frame * PAGE_SIZE) as usize
    }

    fn gpa(&self, frame: u64) -> u64 {
        self.region_gpa + frame * PAGE_SIZE
    }

    /// Stops the guest: records the first fault and notifies the VMM.
    pub(crate) fn stop(&self, fault: GuestFault) {
        let mut slot = self.fatal.lock();
        if slot.is_some() {
            return; // already stopping; one log line per guest, whatever the guest does
        }
        tracing::error!(parent: &self.span, "stopping guest: {fault}");
        *slot = Some(fault.clone());
        let _ = self.stopped_at.set(std::time::Instant::now());
        drop(slot);
        if let Some(n) = &self.on_fatal {
            n(&fault);
        }
    }

    /// Test hook: see [`crate::inject::PopulateFailure`].
    #[cfg(feature = "fault-injection")]
    pub fn inject(&self) -> &crate::inject::PopulateFailure {
        &self.inject
    }

    /// Test hook: see [`crate::inject::DropFailure`].
    #[cfg(feature = "fault-injection")]
    pub fn inject_drop(&self) -> &crate::inject::DropFailure {
        &self.inject_drop
    }
}

impl EagerTarget for GuestCore {
    fn eager_queue(&self) -> &EagerQueue {
        &self.eager
    }

    fn populate_eagerly(&self, run: Run) {
        GuestCore::populate_eagerly(self, run);
    }

    fn stopped(&self) -> bool {
        self.fatal().is_some()
    }
}
