//! The embedding API: a [`Server`] serves many guests; [`Server::add_guest`] turns a
//! [`GuestConfig`] into a [`GuestHandle`] the VMM calls on doorbell exits.

use crate::eager::{self, EagerPool};
use crate::frames::FrameAllocator;
use crate::guest::{
    EvictError, Eviction, FatalNotifier, GuestCore, GuestFault, GuestParts, ResizeError,
    ResizeOptions, ZeroChunk,
};
use crate::host_mem::HostRegion;
use crate::mailbox::HostMailbox;
use crate::populate::PopulatePolicy;
use crate::rpc::{self, DoorbellOutcome, RingCursor};
use crate::stats::GuestStatsSnapshot;
use crate::uffd::GuestUffd;
use crate::{fault_handler, host_mem, procfs, uffd};
use memout_protocol::control::ResizeProgress;
use memout_protocol::ring::{
    ABI_VERSION, Descriptor, FEATURE_HOST_MESSAGES, INFO_MAGIC, INFO_PAGE_GPA, InfoPage, PAGE_SIZE,
    RING_MAGIC, RingHeader,
};
use nix::sys::eventfd::{EfdFlags, EventFd};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Alignment of outsourced regions (guest-physical base and size): 2 MiB.
pub const REGION_ALIGN: u64 = 2 << 20;

/// Errors from the server API.
#[derive(Debug, Error)]
pub enum Error {
    /// The guest configuration is refused; the message says why.
    #[error("invalid guest configuration: {0}")]
    Config(String),
    /// Kernel eviction was asked for but the host has no swap space with room: nothing could
    /// ever be paged out.
    #[error(
        "kernel eviction needs swap space, and this host has none with free room (add a swapfile, or evict to a backing store)"
    )]
    NoSwap,
    /// Host memory for the region could not be set up.
    #[error(transparent)]
    HostMem(#[from] host_mem::Error),
    /// The userfaultfd could not be set up.
    #[error(transparent)]
    Uffd(#[from] uffd::Error),
    /// Writing the info page or ring header into guest memory failed.
    #[error("cannot write the memout channel into guest memory: {0}")]
    Channel(String),
    /// A thread or eventfd could not be created.
    #[error("cannot start the guest's fault handler: {0}")]
    Spawn(String),
}

/// `Result` with this module's [`enum@Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Builds a [`Server`].
#[derive(Debug, Clone)]
pub struct ServerBuilder {
    chunk_pages: u64,
    eager_workers: usize,
}

impl Default for ServerBuilder {
    fn default() -> Self {
        Self {
            chunk_pages: 512,
            eager_workers: 1,
        }
    }
}

impl ServerBuilder {
    /// Largest single populate copy in pages (default 512 = 2 MiB).
    pub fn copy_chunk_pages(mut self, pages: u64) -> Self {
        self.chunk_pages = pages;
        self
    }

    /// Threads that populate memory ahead of guests under [`PopulatePolicy::Eager`]
    /// (default 1: on a two-core host, one core runs the guest, the other fills ahead of it).
    pub fn eager_workers(mut self, n: usize) -> Self {
        self.eager_workers = n;
        self
    }

    /// Builds the server.
    pub fn build(self) -> Result<Server> {
        if self.chunk_pages == 0 || self.chunk_pages > 1 << 18 {
            return Err(Error::Config(format!(
                "copy chunk of {} pages is outside 1..=262144",
                self.chunk_pages
            )));
        }
        if self.eager_workers == 0 || self.eager_workers > 64 {
            return Err(Error::Config(format!(
                "{} eager workers is outside 1..=64",
                self.eager_workers
            )));
        }
        let eager = eager::start(self.eager_workers, self.chunk_pages)
            .map_err(|e| Error::Spawn(e.to_string()))?;
        Ok(Server {
            zero: Arc::new(ZeroChunk::new(self.chunk_pages)),
            eager,
            registry: Arc::default(),
        })
    }
}

/// The memout host server: owns the frame allocators of all its guests.
pub struct Server {
    zero: Arc<ZeroChunk>,
    eager: EagerPool,
    registry: Arc<Registry>,
}

/// The guests a server serves, by name (weakly: a guest ends when its handle is dropped).
#[derive(Default)]
pub struct Registry {
    guests: Mutex<Vec<Weak<GuestCore>>>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Weak<GuestCore>>> {
        self.guests.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live guests, in the order they were added.
    pub fn guests(&self) -> Vec<Arc<GuestCore>> {
        let mut g = self.lock();
        g.retain(|w| w.strong_count() > 0);
        g.iter().filter_map(Weak::upgrade).collect()
    }

    /// The live guest called `name`.
    pub fn find(&self, name: &str) -> Option<Arc<GuestCore>> {
        self.guests().into_iter().find(|g| g.name() == name)
    }

    fn add(&self, core: &Arc<GuestCore>) -> Result<()> {
        let mut g = self.lock();
        g.retain(|w| w.strong_count() > 0);
        if g.iter()
            .filter_map(Weak::upgrade)
            .any(|c| c.name() == core.name())
        {
            return Err(Error::Config(format!(
                "a guest called {:?} is already served",
                core.name()
            )));
        }
        g.push(Arc::downgrade(core));
        Ok(())
    }
}

/// Where the guest↔host channel lives in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct ChannelConfig {
    /// Guest-physical address of the ring (64-byte aligned, inside shared memory).
    pub ring_gpa: u64,
    /// Descriptor slots (a power of two, 1..=4096).
    pub ring_slots: u32,
}

/// Where the outsourced region's host memory comes from.
#[derive(Debug, Clone, Copy, Default)]
pub enum RegionMemory {
    /// The server maps it: private, anonymous, `MAP_NORESERVE`, never locked.
    #[default]
    Allocate,
    /// The VMM mapped it (e.g. a `vm_memory::GuestRegionMmap`); see [`RegionMemory::existing`].
    Existing(usize),
}

impl RegionMemory {
    /// Memory the VMM already mapped at `host_addr` (`region_size` bytes). The server checks
    /// that it is private, anonymous, writable and not locked, and refuses it otherwise.
    ///
    /// # Safety
    /// The mapping must stay mapped, and must not be accessed through Rust references, for as
    /// long as the [`GuestHandle`] lives; the server does not unmap it.
    pub unsafe fn existing(host_addr: usize) -> Self {
        Self::Existing(host_addr)
    }
}

/// Everything the server needs to serve one guest.
pub struct GuestConfig {
    /// Name for logs and tools.
    pub name: String,
    /// Guest-physical base of the outsourced region (2 MiB aligned).
    pub region_gpa: u64,
    /// Size of the outsourced region in bytes (2 MiB aligned, non-zero).
    pub region_size: u64,
    /// Quota in bytes (page-aligned, at most the region size).
    pub quota_bytes: u64,
    /// Population policy.
    pub policy: PopulatePolicy,
    /// Host memory behind the region.
    pub memory: RegionMemory,
    /// Where evicted memory goes (default: no eviction).
    pub eviction: Eviction,
    /// Resident budget in bytes (page-aligned): above it, the server evicts cold frames.
    /// Needs `eviction`.
    pub resident_budget_bytes: Option<u64>,
    /// The guest's pinned minimum in bytes (page-aligned, at most the quota): no resize may
    /// ask for less. 0: any non-zero size.
    pub min_bytes: u64,
    /// The ring.
    pub channel: ChannelConfig,
    /// Guest memory the server may read and write for the guest (the VMM's boot region): the
    /// info page, the ring and extent lists must lie here. Must not include the outsourced
    /// region.
    pub shared: GuestMemoryMmap,
    /// Called when the server stops the guest (see [`GuestFault`]); the VMM must then kick the
    /// guest's vCPUs out of `KVM_RUN`, or the faulting vCPU stays blocked.
    pub on_fatal: Option<FatalNotifier>,
}

impl GuestConfig {
    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.region_size == 0 || self.region_size % REGION_ALIGN != 0 {
            return bad(format!(
                "region size {:#x} is not a non-zero multiple of 2 MiB",
                self.region_size
            ));
        }
        if self.region_gpa % REGION_ALIGN != 0 {
            return bad(format!(
                "region base {:#x} is not 2 MiB aligned",
                self.region_gpa
            ));
        }
        if self.region_gpa.checked_add(self.region_size).is_none() {
            return bad("region wraps the guest-physical address space".into());
        }
        if self.quota_bytes % PAGE_SIZE != 0 {
            return bad(format!(
                "quota {} is not a multiple of 4 KiB",
                self.quota_bytes
            ));
        }
        if self.quota_bytes > self.region_size {
            return bad(format!(
                "quota {} bytes is above the region size {} bytes",
                self.quota_bytes, self.region_size
            ));
        }
        if self.min_bytes % PAGE_SIZE != 0 || self.min_bytes > self.quota_bytes {
            return bad(format!(
                "pinned minimum {} is not a multiple of 4 KiB at most the quota {}",
                self.min_bytes, self.quota_bytes
            ));
        }
        if let Some(b) = self.resident_budget_bytes {
            if matches!(self.eviction, Eviction::None) {
                return bad(
                    "a resident budget needs eviction (a backing store or kernel swap)".into(),
                );
            }
            if b % PAGE_SIZE != 0 || b == 0 {
                return bad(format!(
                    "resident budget {b} is not a positive multiple of 4 KiB"
                ));
            }
        }
        if matches!(self.eviction, Eviction::Kernel) && procfs::swap_free() == 0 {
            return Err(Error::NoSwap);
        }
        let slots = self.channel.ring_slots;
        if !slots.is_power_of_two() || slots > 4096 {
            return bad(format!(
                "ring slots {slots} is not a power of two in 1..=4096"
            ));
        }
        if self.channel.ring_gpa % 64 != 0 {
            return bad(format!(
                "ring at {:#x} is not 64-byte aligned",
                self.channel.ring_gpa
            ));
        }
        let ring_len = RingHeader::SIZE + slots as usize * Descriptor::SIZE;
        if !self
            .shared
            .check_range(GuestAddress(self.channel.ring_gpa), ring_len)
        {
            return bad("the ring does not lie in shared guest memory".into());
        }
        if !self
            .shared
            .check_range(GuestAddress(INFO_PAGE_GPA), PAGE_SIZE as usize)
        {
            return bad("the info page does not lie in shared guest memory".into());
        }
        let ring = self.channel.ring_gpa..self.channel.ring_gpa + ring_len as u64;
        if ring.start < INFO_PAGE_GPA + PAGE_SIZE && INFO_PAGE_GPA < ring.end {
            return bad("the ring overlaps the info page".into());
        }
        let region_end = self.region_gpa + self.region_size;
        for r in self.shared.iter() {
            use vm_memory::GuestMemoryRegion;
            let (s, e) = (r.start_addr().0, r.start_addr().0 + r.len());
            if s < region_end && self.region_gpa < e {
                return bad("shared guest memory overlaps the outsourced region".into());
            }
        }
        Ok(())
    }
}

impl Server {
    /// A builder with defaults.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// The guests this server serves (what the control socket sees).
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// Serves the control socket at `path` for this server's guests (see [`crate::control`]).
    pub fn serve_control(
        &self,
        path: impl Into<std::path::PathBuf>,
    ) -> crate::control::Result<crate::control::ControlServer> {
        crate::control::ControlServer::start(
            crate::control::ControlConfig::new(path),
            self.registry.clone(),
        )
    }

    /// Starts serving a guest: maps its outsourced region (never locked), registers it with a
    /// new userfaultfd, writes the info page and ring header, and starts its fault handler.
    /// The VMM then maps [`GuestHandle::region_host_addr`] as a KVM memslot at `region_gpa`.
    pub fn add_guest(&self, cfg: GuestConfig) -> Result<GuestHandle> {
        cfg.validate()?;
        let frames = cfg.region_size / PAGE_SIZE;
        let alloc = FrameAllocator::new(frames, cfg.quota_bytes / PAGE_SIZE)
            .map_err(|e| Error::Config(e.to_string()))?;
        let region = match cfg.memory {
            RegionMemory::Allocate => HostRegion::new(cfg.region_size as usize)?,
            RegionMemory::Existing(addr) => {
                if addr as u64 % PAGE_SIZE != 0 {
                    return Err(Error::Config(format!(
                        "region memory at {addr:#x} is not page-aligned"
                    )));
                }
                // SAFETY: the caller promised this when it built `RegionMemory::existing`; the
                // checks below refuse memory of the wrong kind before anything uses it.
                unsafe { HostRegion::borrowed(addr, cfg.region_size as usize) }
            }
        };
        // Never locked, private, anonymous: checked against what the kernel says, for the
        // server's own mapping too (an mlockall(MCL_FUTURE) in the process would lock it).
        let maps = procfs::vmas().map_err(|e| Error::Config(format!("reading smaps: {e}")))?;
        if let Some(why) = procfs::unsuitable(&maps, region.addr(), region.size()) {
            return Err(Error::Config(why));
        }
        let uffd = GuestUffd::new(region.addr(), region.size())?;
        let info = InfoPage {
            magic: INFO_MAGIC,
            abi_version: ABI_VERSION,
            features: FEATURE_HOST_MESSAGES,
            ring_gpa: cfg.channel.ring_gpa,
            ring_slots: cfg.channel.ring_slots,
            region_gpa: cfg.region_gpa,
            region_size: cfg.region_size,
            quota_pages: cfg.quota_bytes / PAGE_SIZE,
            ..Default::default()
        };
        let header = RingHeader {
            magic: RING_MAGIC,
            abi_version: ABI_VERSION as u16,
            slots: cfg.channel.ring_slots as u16,
            quota_pages: info.quota_pages,
            ..Default::default()
        };
        let ring_len = RingHeader::SIZE + cfg.channel.ring_slots as usize * Descriptor::SIZE;
        let write = |bytes: &[u8], gpa: u64| {
            cfg.shared
                .write_slice(bytes, GuestAddress(gpa))
                .map_err(|e| Error::Channel(e.to_string()))
        };
        write(&vec![0u8; ring_len], cfg.channel.ring_gpa)?;
        write(&header.to_bytes(), cfg.channel.ring_gpa)?;
        write(&info.to_bytes(), INFO_PAGE_GPA)?;
        let core = GuestCore::new(GuestParts {
            name: cfg.name,
            region,
            region_gpa: cfg.region_gpa,
            uffd,
            alloc,
            policy: cfg.policy,
            on_fatal: cfg.on_fatal,
            zero: self.zero.clone(),
            eager: self.eager.queue(),
            eviction: cfg.eviction,
            budget_pages: cfg.resident_budget_bytes.map(|b| b / PAGE_SIZE),
            min_pages: cfg.min_bytes / PAGE_SIZE,
            mailbox: HostMailbox::new(cfg.shared.clone(), cfg.channel.ring_gpa),
        });
        self.registry.add(&core)?;
        let stop = Arc::new(
            EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC)
                .map_err(|e| Error::Spawn(e.to_string()))?,
        );
        let thread = fault_handler::spawn(core.clone(), stop.clone())
            .map_err(|e| Error::Spawn(e.to_string()))?;
        tracing::info!(parent: core.span(), region_gpa = cfg.region_gpa, size = cfg.region_size,
            quota = cfg.quota_bytes, "guest added");
        Ok(GuestHandle {
            core,
            shared: cfg.shared,
            ring: Mutex::new(RingCursor::new(
                cfg.channel.ring_gpa,
                cfg.channel.ring_slots,
            )),
            stop,
            thread: Some(thread),
        })
    }
}

/// One served guest. Dropping it stops its fault handler and unmaps its region: remove the
/// KVM memslot (or drop the VM) first.
pub struct GuestHandle {
    core: Arc<GuestCore>,
    shared: GuestMemoryMmap,
    ring: Mutex<RingCursor>,
    stop: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl GuestHandle {
    /// Host address of the outsourced region (for the KVM memslot).
    pub fn region_host_addr(&self) -> usize {
        self.core.region().addr()
    }

    /// Size of the outsourced region in bytes.
    pub fn region_size(&self) -> u64 {
        self.core.region().size() as u64
    }

    /// Guest-physical base of the outsourced region.
    pub fn region_gpa(&self) -> u64 {
        self.core.region_gpa()
    }

    /// The guest's name.
    pub fn name(&self) -> &str {
        self.core.name()
    }

    /// Call on every doorbell exit: processes the requests the guest posted.
    pub fn on_doorbell(&self) -> DoorbellOutcome {
        let _g = self.core.span().enter();
        let mut cur = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        rpc::process_doorbell(&self.core, &self.shared, &mut cur)
    }

    /// The guest's statistics now.
    pub fn stats(&self) -> GuestStatsSnapshot {
        self.core.snapshot()
    }

    /// Why the server stopped the guest, if it did.
    pub fn fatal_error(&self) -> Option<GuestFault> {
        self.core.fatal()
    }

    /// Test hook (feature `fault-injection`): after `pages` more pages are populated, populate
    /// fails with `errno`, as a real UFFDIO_COPY failure (e.g. ENOMEM) would.
    #[cfg(feature = "fault-injection")]
    pub fn inject_populate_failure(&self, pages: u64, errno: i32) {
        self.core.inject().arm(pages, errno);
    }

    /// Evicts up to `bytes` of the guest's coldest memory now; returns the bytes evicted.
    pub fn evict(&self, bytes: u64) -> std::result::Result<u64, EvictError> {
        self.core
            .evict(bytes.div_ceil(PAGE_SIZE))
            .map(|p| p * PAGE_SIZE)
    }

    /// Sets (or clears) the resident budget in bytes. Lowering it evicts now; raising it swaps
    /// evicted memory back in the background, up to the budget.
    pub fn set_budget(&self, bytes: Option<u64>) -> std::result::Result<(), EvictError> {
        self.core.set_budget(bytes.map(|b| b / PAGE_SIZE))
    }

    /// Changes the population policy.
    pub fn set_policy(&self, p: PopulatePolicy) {
        self.core.set_policy(p);
    }

    /// Starts a resize of the guest's requested size to `bytes` (see
    /// [`GuestCore::resize`]); poll [`resize_progress`](Self::resize_progress) or
    /// [`wait_resize`](Self::wait_resize).
    pub fn resize(
        &self,
        bytes: u64,
        opts: ResizeOptions,
    ) -> std::result::Result<ResizeProgress, ResizeError> {
        self.core.resize(bytes, opts)
    }

    /// The guest's latest resize.
    pub fn resize_progress(&self) -> Option<ResizeProgress> {
        self.core.resize_progress()
    }

    /// Waits at most `timeout` for resize `id` to end.
    pub fn wait_resize(&self, id: u64, timeout: std::time::Duration) -> Option<ResizeProgress> {
        self.core.wait_resize(id, timeout)
    }

    /// Changes the quota (bytes, page-aligned, at most the region size).
    pub fn set_quota(&self, bytes: u64) -> Result<()> {
        if bytes % PAGE_SIZE != 0 {
            return Err(Error::Config(format!(
                "quota {bytes} is not a multiple of 4 KiB"
            )));
        }
        self.core
            .set_quota(bytes / PAGE_SIZE)
            .map_err(|e| Error::Config(e.to_string()))
    }
}

impl Drop for GuestHandle {
    fn drop(&mut self) {
        self.core.cancel_resize();
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
