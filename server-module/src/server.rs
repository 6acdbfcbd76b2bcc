//! The embedding API: a [`Server`] serves many guests; [`Server::add_guest`] turns a
//! [`GuestConfig`] into a [`GuestHandle`] the VMM calls on doorbell exits: it maps (or checks)
//! the region, registers the userfaultfd, writes the info page and ring header, and starts the
//! guest's fault thread.

use crate::config::{ConfigError, GuestConfig};
use crate::eager::{self, EagerPool};
use crate::fastpath::FastPath;
use crate::fastpath::worker::{Serviced, Worker};
use crate::frames::FrameAllocator;
use crate::guest::{GuestCore, GuestParts, ZeroChunk};
use crate::handle::GuestHandle;
use crate::host_mem::HostRegion;
use crate::ksm::{ControllerConfig, KsmController};
use crate::mailbox::HostMailbox;
use crate::registry::Registry;
use crate::rpc::RingCursor;
use crate::segment::SegmentStore;
use crate::uffd::GuestUffd;
use crate::{fault_handler, host_mem, procfs, uffd};
use memout_protocol::ring::{
    ABI_VERSION, Descriptor, FEATURE_FASTPATH, FEATURE_HOST_MESSAGES, INFO_MAGIC, INFO_PAGE_GPA,
    InfoPage, PAGE_SIZE, RING_MAGIC, RingHeader,
};
use nix::sys::eventfd::{EfdFlags, EventFd};
use parking_lot::Mutex;
use std::sync::Arc;
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress};

/// Errors from the server API.
#[derive(Debug, Error)]
pub enum Error {
    /// The guest (or server) configuration is refused; nothing was set up.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// Host memory for the region could not be set up.
    #[error(transparent)]
    HostMem(#[from] host_mem::Error),
    /// The userfaultfd could not be set up.
    #[error(transparent)]
    Uffd(#[from] uffd::Error),
    /// Writing the info page or ring header into guest memory failed.
    #[error("cannot write the memout channel into guest memory: {0}")]
    Channel(#[source] vm_memory::GuestMemoryError),
    /// A thread or eventfd could not be created.
    #[error("cannot start the server's or guest's threads: {0}")]
    Spawn(#[source] std::io::Error),
    /// The fast-path area could not be written into guest memory.
    #[error(transparent)]
    FastPath(#[from] crate::fastpath::AreaError),
    /// The guest was to be mergeable, and KSM could not take its memory.
    #[error(transparent)]
    Mergeable(#[from] crate::MergeableError),
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

    /// Threads that populate memory ahead of guests under [`PopulatePolicy::Eager`](crate::PopulatePolicy::Eager)
    /// (default 1: on a two-core host, one core runs the guest, the other fills ahead of it).
    pub fn eager_workers(mut self, n: usize) -> Self {
        self.eager_workers = n;
        self
    }

    /// Builds the server.
    pub fn build(self) -> Result<Server> {
        if self.chunk_pages == 0 || self.chunk_pages > 1 << 18 {
            return Err(ConfigError::CopyChunk(self.chunk_pages).into());
        }
        if self.eager_workers == 0 || self.eager_workers > 64 {
            return Err(ConfigError::EagerWorkers(self.eager_workers).into());
        }
        let eager = eager::start(self.eager_workers, self.chunk_pages).map_err(Error::Spawn)?;
        Ok(Server {
            zero: Arc::new(ZeroChunk::new(self.chunk_pages)),
            eager,
            registry: Arc::default(),
            fastpath: Mutex::new(None),
            ksm: std::sync::OnceLock::new(),
            segments: Arc::default(),
        })
    }
}

/// The memout host server: owns the frame allocators of all its guests.
pub struct Server {
    zero: Arc<ZeroChunk>,
    eager: EagerPool,
    registry: Arc<Registry>,
    /// The fast-path worker, started with the first guest that has a fast path.
    fastpath: Mutex<Option<Worker>>,
    /// The KSM controller, set up on first use.
    ksm: std::sync::OnceLock<Arc<KsmController>>,
    /// Shared segments.
    segments: Arc<SegmentStore>,
}

impl Server {
    /// Runs `f` on the fast-path worker, started on first use.
    fn fastpath_worker<T>(&self, f: impl FnOnce(&Worker) -> T) -> Result<T> {
        let mut w = self.fastpath.lock();
        if w.is_none() {
            *w = Some(Worker::start().map_err(Error::Spawn)?);
        }
        Ok(f(w.as_ref().expect("started above")))
    }

    /// A builder with defaults.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// The guests this server serves (what the control socket sees).
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// The server's shared segments: register, list, remove (see [`crate::segment`]).
    pub fn segments(&self) -> &Arc<SegmentStore> {
        &self.segments
    }

    /// Sets up the KSM controller (before its first use; else `false` and nothing changes).
    /// Without this, the first use sets up [`ControllerConfig::system`].
    pub fn configure_ksm(&self, cfg: ControllerConfig) -> bool {
        let mut made = false;
        self.ksm.get_or_init(|| {
            made = true;
            self.make_ksm(cfg)
        });
        made
    }

    /// The KSM controller: mode, saved settings, `auto`'s decisions. `auto` counts the
    /// guests' quotas as committed memory.
    pub fn ksm(&self) -> &Arc<KsmController> {
        self.ksm
            .get_or_init(|| self.make_ksm(ControllerConfig::system()))
    }

    fn make_ksm(&self, cfg: ControllerConfig) -> Arc<KsmController> {
        let registry = Arc::downgrade(&self.registry);
        Arc::new(KsmController::new(
            cfg,
            Box::new(move || {
                registry.upgrade().map_or(0, |r| {
                    r.guests().iter().map(|g| g.stats().quota_pages * 4).sum()
                })
            }),
        ))
    }

    /// Serves the control socket at `path` for this server's guests (see [`crate::control`]).
    pub fn serve_control(
        &self,
        path: impl Into<std::path::PathBuf>,
    ) -> crate::control::Result<crate::control::ControlServer> {
        crate::control::ControlServer::start(
            crate::control::ControlConfig::new(path),
            self.registry.clone(),
            Some(self.ksm().clone()),
            Some(self.segments.clone()),
        )
    }

    /// Lists a guest of an external VMM (QEMU; see [`crate::file_guest`]) with this server's
    /// guests, so the control socket shows, resizes and reports it like the others. Held
    /// weakly: it leaves the list when the last `Arc` is dropped. A name in use is refused.
    pub fn register_external(
        &self,
        guest: &std::sync::Arc<crate::file_guest::FileGuest>,
    ) -> std::result::Result<(), ConfigError> {
        self.registry.add_external(guest)
    }

    /// Starts serving a guest: maps its outsourced region (never locked), registers it with a
    /// new userfaultfd, writes the info page and ring header, and starts its fault handler.
    /// The VMM then maps [`GuestRef::region_host_addr`](crate::GuestRef::region_host_addr) as a KVM memslot at `region_gpa`.
    pub fn add_guest(&self, cfg: GuestConfig) -> Result<GuestHandle> {
        cfg.validate()?;
        let mergeable = cfg.mergeable;
        let (name, segments) = (cfg.name.clone(), cfg.segments.clone());
        let frames = cfg.region_size / PAGE_SIZE;
        let alloc = FrameAllocator::new(frames, cfg.quota_bytes / PAGE_SIZE).map_err(|_| {
            ConfigError::QuotaAboveRegion {
                quota: cfg.quota_bytes,
                region: cfg.region_size,
            }
        })?;
        let region = match cfg.memory.existing_addr() {
            None => HostRegion::new(cfg.region_size as usize)?,
            Some(addr) => {
                if addr as u64 % PAGE_SIZE != 0 {
                    return Err(ConfigError::RegionMemoryUnaligned(addr).into());
                }
                // SAFETY: the caller promised this when it built `RegionMemory::existing`; the
                // checks below refuse memory of the wrong kind before anything uses it.
                unsafe { HostRegion::borrowed(addr, cfg.region_size as usize) }
            }
        };
        // Never locked, private, anonymous: checked against what the kernel says, for the
        // server's own mapping too (an mlockall(MCL_FUTURE) in the process would lock it).
        let maps = procfs::vmas().map_err(ConfigError::Smaps)?;
        if let Some(why) = procfs::unsuitable(&maps, region.addr(), region.size()) {
            return Err(ConfigError::Unsuitable(why).into());
        }
        let uffd = GuestUffd::new(region.addr(), region.size())?;
        let fastpath = cfg
            .channel
            .fastpath
            .map(|fp| FastPath::new(cfg.shared.clone(), fp))
            .transpose()?;
        let info = InfoPage {
            magic: INFO_MAGIC,
            abi_version: ABI_VERSION,
            features: FEATURE_HOST_MESSAGES
                | if fastpath.is_some() {
                    FEATURE_FASTPATH
                } else {
                    0
                },
            fastpath_gpa: cfg.channel.fastpath.map_or(0, |f| f.gpa),
            ring_gpa: cfg.channel.ring_gpa,
            ring_slots: cfg.channel.ring_slots,
            region_gpa: cfg.region_gpa,
            region_size: cfg.region_size,
            quota_pages: cfg.quota_bytes / PAGE_SIZE,
            info_gpa: INFO_PAGE_GPA,
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
                .map_err(Error::Channel)
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
            fastpath_waker: match &fastpath {
                Some(_) => Some(self.fastpath_worker(|w| w.waker())?),
                None => None,
            },
            fastpath,
            segments: crate::guest::GuestSegments::new(&name, segments, self.segments.clone()),
        });
        if mergeable {
            core.set_mergeable(true)?;
        }
        self.registry.add(&core)?;
        if cfg.channel.fastpath.is_some() {
            let weak: std::sync::Weak<dyn Serviced> = Arc::downgrade(&core) as _;
            self.fastpath_worker(|w| w.add(weak))?;
        }
        let stop = Arc::new(
            EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC)
                .map_err(|e| Error::Spawn(e.into()))?,
        );
        let thread = fault_handler::spawn(core.clone(), stop.clone()).map_err(Error::Spawn)?;
        tracing::info!(parent: core.span(), region_gpa = cfg.region_gpa, size = cfg.region_size,
            quota = cfg.quota_bytes, "guest added");
        Ok(GuestHandle {
            guest: crate::guest_ref::GuestRef(core),
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
