//! Guests of an external VMM (QEMU): their RAM is a file the VMM maps shared, and their
//! channel a memfd the VMM maps into the guest. The guest (the Linux module `memout.ko`)
//! already owns all of its RAM, so the frames memout tracks are the ones it gave back:
//!
//! - `FREE` with `FREE_REPORTED` (free page reporting): the guest keeps the frames, memout
//!   punches their holes, and the guest reads zeroes if it reuses them;
//! - plain `FREE` (the balloon: frames the module took from the guest's allocator): the frames
//!   become the host's, holes punched; `ALLOC` hands them back within the quota.
//!
//! memout cannot see this guest's page faults (userfaultfd covers only its own address
//! space), so there is no demand population, eviction or stale-fault logic here: the file's
//! allocated pages are its resident memory. The same `rpc` code as for memout's own guests
//! parses and checks every request.

mod backend;
mod channel;
mod fast;
mod ram_file;
mod resize;

pub use channel::{CHANNEL_GPA, CHANNEL_SIZE, Channel, MAX_FASTPATH_CPUS, RING_SLOTS};
pub use fast::FastPathService;
pub use ram_file::RamFile;

use crate::extents::ExtentSet;
use crate::fastpath::{AreaError, FastPath, FastPathStats};
use crate::guest::{ResizeError, ResizeOptions, ResizeReport, check_target};
use crate::log_limit::LogLimiter;
use crate::mailbox::HostMailbox;
use crate::rpc::{self, DoorbellOutcome, RingCursor};
use memout_protocol::ring::PAGE_SIZE;
use parking_lot::Mutex;
use resize::Resizes;
use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use thiserror::Error;

/// Why a file-backed guest could not be set up.
#[derive(Debug, Error)]
pub enum Error {
    /// The RAM size is zero or not a multiple of 2 MiB.
    #[error("guest RAM of {0} bytes is not a non-zero multiple of 2 MiB")]
    Size(u64),
    /// The RAM file.
    #[error(transparent)]
    Ram(#[from] ram_file::Error),
    /// The channel.
    #[error(transparent)]
    Channel(#[from] channel::Error),
    /// The fast-path area could not be written (a memout bug).
    #[error(transparent)]
    FastPath(#[from] AreaError),
    /// A pinned minimum that is not a multiple of 4 KiB or is above the RAM.
    #[error(
        "a pinned minimum of {min} bytes is not a multiple of 4 KiB within the RAM of {ram} bytes"
    )]
    Minimum {
        /// Asked for.
        min: u64,
        /// RAM size.
        ram: u64,
    },
}

/// How the VMM interrupts the guest after a host message was posted.
pub type Interrupt = Box<dyn Fn() + Send + Sync>;

/// Counters of a file-backed guest.
#[derive(Debug, Default)]
struct Counters {
    doorbells: AtomicU64,
    requests: AtomicU64,
    request_errors: AtomicU64,
    reported_pages: AtomicU64,
    freed_pages: AtomicU64,
    punch_errors: AtomicU64,
}

/// What a file-backed guest's statistics say now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileGuestStats {
    /// RAM size in pages.
    pub ram_pages: u64,
    /// Quota (requested size) in pages.
    pub quota_pages: u64,
    /// Pages the guest holds (RAM minus what it gave back).
    pub allocated_pages: u64,
    /// Host memory the RAM file holds, in pages.
    pub resident_pages: u64,
    /// Doorbells seen.
    pub doorbells: u64,
    /// Requests carried out, and how many were refused.
    pub requests: u64,
    /// Requests refused.
    pub request_errors: u64,
    /// Pages reported free (their memory dropped, the guest keeps them).
    pub reported_pages: u64,
    /// Pages given back to the host.
    pub freed_pages: u64,
    /// Hole punches that failed (the FREE answered `HostError`).
    pub punch_errors: u64,
    /// The exit-free fast path, if the guest has one.
    pub fastpath: Option<FastPathStats>,
}

/// A guest of an external VMM.
pub struct FileGuest {
    name: String,
    ram: RamFile,
    channel: Channel,
    ring: Mutex<RingCursor>,
    mailbox: HostMailbox,
    /// Frames the guest gave back (the host's; ALLOC hands them out again).
    returned: Mutex<ExtentSet>,
    quota: AtomicU64,
    /// Pages no resize goes below.
    min_pages: u64,
    interrupt: OnceLock<Interrupt>,
    fastpath: Option<FastPath>,
    fastpath_waker: OnceLock<crate::fastpath::worker::Waker>,
    resizes: Resizes,
    #[cfg(feature = "fault-injection")]
    alloc_faults: crate::inject::AllocFaults,
    hello: AtomicBool,
    counters: Counters,
    log: LogLimiter,
    span: tracing::Span,
}

impl FileGuest {
    /// Creates the RAM file (`ram_size` bytes in `dir`, e.g. `/dev/shm`) and the channel.
    pub fn create(name: &str, dir: &Path, ram_size: u64) -> Result<Self, Error> {
        if ram_size == 0 || ram_size % (2 << 20) != 0 {
            return Err(Error::Size(ram_size));
        }
        let pages = ram_size / PAGE_SIZE;
        let ram = RamFile::create(dir, name, ram_size)?;
        let channel = Channel::create(name, ram_size, pages)?;
        let mailbox = HostMailbox::new(channel.memory().clone(), Channel::ring_gpa());
        Ok(Self {
            name: name.to_string(),
            ram,
            ring: Mutex::new(RingCursor::new(Channel::ring_gpa(), RING_SLOTS)),
            channel,
            mailbox,
            returned: Mutex::new(ExtentSet::new()),
            quota: AtomicU64::new(pages),
            min_pages: 0,
            interrupt: OnceLock::new(),
            fastpath: None,
            fastpath_waker: OnceLock::new(),
            resizes: Resizes::default(),
            #[cfg(feature = "fault-injection")]
            alloc_faults: Default::default(),
            hello: AtomicBool::new(false),
            counters: Counters::default(),
            log: LogLimiter::new(10, Duration::from_secs(10)),
            span: tracing::info_span!("guest", name = %name),
        })
    }

    /// Pins a minimum: no resize goes below `bytes` (a multiple of 4 KiB, at most the RAM).
    pub fn with_min_bytes(mut self, bytes: u64) -> Result<Self, Error> {
        if bytes % PAGE_SIZE != 0 || bytes > self.ram.size() {
            return Err(Error::Minimum {
                min: bytes,
                ram: self.ram.size(),
            });
        }
        self.min_pages = bytes / PAGE_SIZE;
        Ok(self)
    }

    /// Offers the guest the exit-free fast path, with a magazine and a free stack for each of
    /// `nr_cpus` vCPUs (1 to [`MAX_FASTPATH_CPUS`]). The VMM must make the guest's atomic
    /// instructions on the channel atomic against memout's (QEMU TCG: `-accel tcg,thread=multi`
    /// with more than one possible vCPU); someone must run [`serve_fastpath`](Self::serve_fastpath).
    pub fn with_fastpath(mut self, nr_cpus: u32) -> Result<Self, Error> {
        let cfg = self.channel.enable_fastpath(nr_cpus)?;
        self.fastpath = Some(FastPath::new(self.channel.memory().clone(), cfg)?);
        Ok(self)
    }

    /// Tells the server how to interrupt the guest when it posts a host message (a resize);
    /// the VMM glue sets it once (later calls are ignored). Without it the guest sees the
    /// message on its next doorbell.
    pub fn set_interrupt(&self, interrupt: Interrupt) {
        let _ = self.interrupt.set(interrupt);
    }

    /// Test hook (feature `fault-injection`): the next `count` ALLOCs misbehave as `fault`
    /// says.
    #[cfg(feature = "fault-injection")]
    pub fn inject_alloc_fault(&self, fault: crate::inject::AllocFault, count: u32) {
        self.alloc_faults.arm(fault, count);
    }

    /// The guest's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Smallest size a resize may ask for, in bytes.
    pub fn min_bytes(&self) -> u64 {
        self.min_pages * PAGE_SIZE
    }

    /// True once the guest has said HELLO: its module runs, so the VMM has mapped the RAM.
    pub fn attached(&self) -> bool {
        self.hello.load(Relaxed)
    }

    /// The RAM file the VMM maps.
    pub fn ram(&self) -> &RamFile {
        &self.ram
    }

    /// The channel the VMM maps into the guest.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Call when the guest rang the doorbell: processes its requests.
    pub fn on_doorbell(&self) -> DoorbellOutcome {
        let _g = self.span.enter();
        rpc::process_doorbell(self, self.channel.memory(), &mut self.ring.lock())
    }

    /// The quota, and what the guest holds above it: what the ring header says.
    fn limits(&self) -> (u64, u64) {
        let quota = self.quota.load(Relaxed);
        (quota, self.allocated().saturating_sub(quota))
    }

    fn ram_pages(&self) -> u64 {
        self.ram.size() / PAGE_SIZE
    }

    fn allocated(&self) -> u64 {
        self.ram_pages() - self.returned.lock().total()
    }

    /// Resizes the guest: sets its requested size (its quota), tells the guest in the ring
    /// header and interrupts it, so its balloon releases what it holds above the target or
    /// takes back what it gave. The report follows the guest's releases until it holds no
    /// more than the target (`Done`) or `opts.release_deadline` passes (`Incomplete`: memout
    /// cannot evict this guest's memory; the quota stays and the balloon keeps going).
    pub fn resize(&self, bytes: u64, opts: ResizeOptions) -> Result<ResizeReport, ResizeError> {
        check_target(bytes, self.ram.size(), self.min_bytes())?;
        let target = bytes / PAGE_SIZE;
        let from = self.quota.swap(target, Relaxed);
        if target < from {
            // Frames cached in the fast path go first: the guest releases only the rest.
            self.fastpath_reclaim();
        }
        let held = self.allocated();
        self.mailbox.post(|| self.limits());
        if let Some(interrupt) = self.interrupt.get() {
            interrupt();
        }
        tracing::info!(parent: &self.span, bytes, "resize");
        Ok(self
            .resizes
            .start(from, target, held, self.resident(), opts.release_deadline))
    }

    /// The guest's latest resize, up to date.
    pub fn resize_progress(&self) -> Option<ResizeReport> {
        self.resizes.progress(self.allocated(), self.resident())
    }

    /// Waits until resize `id` is final (or superseded), at most `timeout`; returns the
    /// latest resize's progress.
    pub fn wait_resize(&self, id: u64, timeout: Duration) -> Option<ResizeReport> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            self.resize_progress()?;
            if self.resizes.settled(id) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.resize_progress()
    }

    fn resident(&self) -> u64 {
        self.ram.allocated_bytes().unwrap_or(0) / PAGE_SIZE
    }

    /// The guest's statistics now.
    pub fn stats(&self) -> FileGuestStats {
        let c = &self.counters;
        FileGuestStats {
            ram_pages: self.ram_pages(),
            quota_pages: self.quota.load(Relaxed),
            allocated_pages: self.allocated(),
            resident_pages: self.resident(),
            doorbells: c.doorbells.load(Relaxed),
            requests: c.requests.load(Relaxed),
            request_errors: c.request_errors.load(Relaxed),
            reported_pages: c.reported_pages.load(Relaxed),
            freed_pages: c.freed_pages.load(Relaxed),
            punch_errors: c.punch_errors.load(Relaxed),
            fastpath: self.fastpath_stats(),
        }
    }
}
