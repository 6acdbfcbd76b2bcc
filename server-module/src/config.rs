//! What a guest is served with: [`GuestConfig`] (region, quota, policy, eviction, budget, ring
//! and shared memory), and [`ConfigError`], one typed reason for each configuration the server
//! refuses before it touches anything.

use crate::guest::{Eviction, FatalNotifier};
use crate::populate::PopulatePolicy;
use crate::procfs;
use memout_protocol::ring::{Descriptor, INFO_PAGE_GPA, PAGE_SIZE, RingHeader};
use thiserror::Error;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Alignment of outsourced regions (guest-physical base and size): 2 MiB.
pub const REGION_ALIGN: u64 = 2 << 20;

/// A configuration the server refuses; nothing was set up.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// A fault spin above [`MAX_FAULT_SPIN`](crate::MAX_FAULT_SPIN).
    #[error("fault spin {0:?} is above the limit of 10 ms")]
    FaultSpin(std::time::Duration),
    /// The region size is zero or not a multiple of 2 MiB.
    #[error("region size {0:#x} is not a non-zero multiple of 2 MiB")]
    RegionSize(u64),
    /// The region base is not 2 MiB aligned.
    #[error("region base {0:#x} is not 2 MiB aligned")]
    RegionBase(u64),
    /// Base plus size overflows.
    #[error("region wraps the guest-physical address space")]
    RegionWraps,
    /// The quota is not a multiple of 4 KiB.
    #[error("quota {0} is not a multiple of 4 KiB")]
    QuotaUnaligned(u64),
    /// The quota is above the region.
    #[error("quota {quota} bytes is above the region size {region} bytes")]
    QuotaAboveRegion {
        /// The quota.
        quota: u64,
        /// The region size.
        region: u64,
    },
    /// The pinned minimum is unaligned or above the quota.
    #[error("pinned minimum {min} is not a multiple of 4 KiB at most the quota {quota}")]
    Minimum {
        /// The minimum.
        min: u64,
        /// The quota.
        quota: u64,
    },
    /// A budget was given without eviction.
    #[error("a resident budget needs eviction (a backing store or kernel swap)")]
    BudgetWithoutEviction,
    /// The budget is zero or unaligned.
    #[error("resident budget {0} is not a positive multiple of 4 KiB")]
    Budget(u64),
    /// Ring slots are not a power of two up to 4096.
    #[error("ring slots {0} is not a power of two in 1..=4096")]
    RingSlots(u32),
    /// The ring is not 64-byte aligned.
    #[error("ring at {0:#x} is not 64-byte aligned")]
    RingAlignment(u64),
    /// The ring is not in shared memory.
    #[error("the ring does not lie in shared guest memory")]
    RingOutsideShared,
    /// The info page is not in shared memory.
    #[error("the info page does not lie in shared guest memory")]
    InfoPageOutsideShared,
    /// The ring overlaps the info page.
    #[error("the ring overlaps the info page")]
    RingOverlapsInfoPage,
    /// Shared memory overlaps the outsourced region.
    #[error("shared guest memory overlaps the outsourced region")]
    SharedOverlapsRegion,
    /// The segment window is empty, not 2 MiB aligned, wraps, or overlaps the region or
    /// shared memory.
    #[error(
        "the segment window of {size:#x} bytes at {gpa:#x} is empty, unaligned, or overlaps guest memory"
    )]
    SegmentWindow {
        /// Its base.
        gpa: u64,
        /// Its size.
        size: u64,
    },
    /// The fast-path area is misplaced: unaligned, outside shared memory, or over the ring or
    /// the info page; or its vCPU count is outside 1..=64.
    #[error("fast-path area at {gpa:#x} for {nr_cpus} vCPUs: {why}")]
    FastPath {
        /// Where it was asked for.
        gpa: u64,
        /// For how many vCPUs.
        nr_cpus: u32,
        /// What is wrong.
        why: &'static str,
    },
    /// Kernel eviction was asked for but the host has no swap with free room: nothing could
    /// ever be paged out.
    #[error(
        "kernel eviction needs swap space, and this host has none with free room (add a swapfile, or evict to a backing store)"
    )]
    NoSwap,
    /// Memory the VMM handed over is not page-aligned.
    #[error("region memory at {0:#x} is not page-aligned")]
    RegionMemoryUnaligned(usize),
    /// Memory the VMM handed over (or the server's own mapping) cannot be outsourced.
    #[error(transparent)]
    Unsuitable(#[from] procfs::Unsuitable),
    /// `/proc/self/smaps` could not be read to check the memory.
    #[error("reading /proc/self/smaps: {0}")]
    Smaps(#[source] std::io::Error),
    /// Another guest of this server has the name.
    #[error("a guest called {0:?} is already served")]
    DuplicateName(String),
    /// The server builder's copy chunk is out of range.
    #[error("copy chunk of {0} pages is outside 1..=262144")]
    CopyChunk(u64),
    /// The server builder's eager worker count is out of range.
    #[error("{0} eager workers is outside 1..=64")]
    EagerWorkers(usize),
}

/// Where the guest↔host channel lives in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct ChannelConfig {
    /// Guest-physical address of the ring (64-byte aligned, inside shared memory).
    pub ring_gpa: u64,
    /// Descriptor slots (a power of two, 1..=4096).
    pub ring_slots: u32,
    /// The exit-free fast path's area (see `memout_protocol::fastpath`), or `None` to serve
    /// the guest through the ring alone.
    pub fastpath: Option<FastPathConfig>,
}

/// Where the fast-path area lives and for how many vCPUs (one magazine and one free stack
/// each): [`fastpath_size`](memout_protocol::fastpath::fastpath_size) bytes at `gpa`, 4 KiB
/// aligned, inside shared memory, clear of the ring and the info page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastPathConfig {
    /// Guest-physical address of the area.
    pub gpa: u64,
    /// vCPUs (1..=64).
    pub nr_cpus: u32,
}

/// Where the outsourced region's host memory comes from: [`RegionMemory::allocate`] (the
/// default) or, with the caller's promise, [`RegionMemory::existing`]. Opaque, so memory the
/// VMM mapped can only be named through the `unsafe` constructor.
#[derive(Debug, Clone, Copy, Default)]
pub struct RegionMemory(Source);

#[derive(Debug, Clone, Copy, Default)]
enum Source {
    #[default]
    Allocate,
    Existing(usize),
}

impl RegionMemory {
    /// The server maps it: private, anonymous, `MAP_NORESERVE`, never locked.
    pub fn allocate() -> Self {
        Self(Source::Allocate)
    }

    /// Memory the VMM already mapped at `host_addr` (`region_size` bytes). The server checks
    /// that it is private, anonymous, writable and not locked, and refuses it otherwise.
    ///
    /// # Safety
    /// The mapping must stay mapped, and must not be accessed through Rust references, for as
    /// long as the [`GuestHandle`](crate::GuestHandle) lives; the server does not unmap it.
    pub unsafe fn existing(host_addr: usize) -> Self {
        Self(Source::Existing(host_addr))
    }

    /// The VMM's address, for memory from [`existing`](Self::existing).
    pub(crate) fn existing_addr(&self) -> Option<usize> {
        match self.0 {
            Source::Allocate => None,
            Source::Existing(a) => Some(a),
        }
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
    /// Called when the server stops the guest (see [`GuestFault`](crate::GuestFault)); the VMM must then kick the
    /// guest's vCPUs out of `KVM_RUN`, or the faulting vCPU stays blocked.
    pub on_fatal: Option<FatalNotifier>,
    /// Let KSM merge the region's pages from the start (`MADV_MERGEABLE`; see
    /// [`GuestCore::set_mergeable`](crate::GuestCore::set_mergeable)). memout's regions are
    /// private anonymous memory, which KSM can merge; a guest whose memory another VMM maps
    /// shared cannot be mergeable.
    pub mergeable: bool,
    /// Where the guest may map shared segments, and the VMM's mapper (see
    /// [`crate::segment`]); `None`: the guest cannot map any (MAP_SEGMENT answers
    /// `BadOpcode`).
    pub segments: Option<crate::segment::SegmentWindow>,
}

impl GuestConfig {
    /// Checks the configuration on its own (what does not need the host).
    pub fn validate(&self) -> Result<(), ConfigError> {
        use ConfigError as E;
        if self.region_size == 0 || self.region_size % REGION_ALIGN != 0 {
            return Err(E::RegionSize(self.region_size));
        }
        if self.region_gpa % REGION_ALIGN != 0 {
            return Err(E::RegionBase(self.region_gpa));
        }
        if self.region_gpa.checked_add(self.region_size).is_none() {
            return Err(E::RegionWraps);
        }
        if self.quota_bytes % PAGE_SIZE != 0 {
            return Err(E::QuotaUnaligned(self.quota_bytes));
        }
        if self.quota_bytes > self.region_size {
            return Err(E::QuotaAboveRegion {
                quota: self.quota_bytes,
                region: self.region_size,
            });
        }
        if self.min_bytes % PAGE_SIZE != 0 || self.min_bytes > self.quota_bytes {
            return Err(E::Minimum {
                min: self.min_bytes,
                quota: self.quota_bytes,
            });
        }
        if let Some(b) = self.resident_budget_bytes {
            if matches!(self.eviction, Eviction::None) {
                return Err(E::BudgetWithoutEviction);
            }
            if b % PAGE_SIZE != 0 || b == 0 {
                return Err(E::Budget(b));
            }
        }
        if let Some(w) = &self.segments {
            let bad = || E::SegmentWindow {
                gpa: w.gpa,
                size: w.size,
            };
            let end = w.gpa.checked_add(w.size).ok_or_else(bad)?;
            let over_region = w.gpa < self.region_gpa + self.region_size && self.region_gpa < end;
            let over_shared = self.shared.iter().any(|r| {
                let (s, e) = (r.start_addr().0, r.start_addr().0 + r.len());
                w.gpa < e && s < end
            });
            if w.size == 0
                || w.gpa % REGION_ALIGN != 0
                || w.size % REGION_ALIGN != 0
                || over_region
                || over_shared
            {
                return Err(bad());
            }
        }
        let slots = self.channel.ring_slots;
        if !slots.is_power_of_two() || slots > 4096 {
            return Err(E::RingSlots(slots));
        }
        if self.channel.ring_gpa % 64 != 0 {
            return Err(E::RingAlignment(self.channel.ring_gpa));
        }
        let ring_len = RingHeader::SIZE + slots as usize * Descriptor::SIZE;
        if !self
            .shared
            .check_range(GuestAddress(self.channel.ring_gpa), ring_len)
        {
            return Err(E::RingOutsideShared);
        }
        if !self
            .shared
            .check_range(GuestAddress(INFO_PAGE_GPA), PAGE_SIZE as usize)
        {
            return Err(E::InfoPageOutsideShared);
        }
        let ring = self.channel.ring_gpa..self.channel.ring_gpa + ring_len as u64;
        if ring.start < INFO_PAGE_GPA + PAGE_SIZE && INFO_PAGE_GPA < ring.end {
            return Err(E::RingOverlapsInfoPage);
        }
        if let Some(fp) = self.channel.fastpath {
            self.check_fastpath(fp, ring.clone())?;
        }
        let region_end = self.region_gpa + self.region_size;
        for r in self.shared.iter() {
            use vm_memory::GuestMemoryRegion;
            let (s, e) = (r.start_addr().0, r.start_addr().0 + r.len());
            if s < region_end && self.region_gpa < e {
                return Err(E::SharedOverlapsRegion);
            }
        }
        if matches!(self.eviction, Eviction::Kernel) && procfs::swap_free() == 0 {
            return Err(E::NoSwap);
        }
        Ok(())
    }

    fn check_fastpath(
        &self,
        fp: FastPathConfig,
        ring: std::ops::Range<u64>,
    ) -> Result<(), ConfigError> {
        let bad = |why| ConfigError::FastPath {
            gpa: fp.gpa,
            nr_cpus: fp.nr_cpus,
            why,
        };
        if !(1..=64).contains(&fp.nr_cpus) {
            return Err(bad("the vCPU count is outside 1..=64"));
        }
        if fp.gpa % PAGE_SIZE != 0 {
            return Err(bad("not 4 KiB aligned"));
        }
        let len = memout_protocol::fastpath::fastpath_size(fp.nr_cpus);
        if !self.shared.check_range(GuestAddress(fp.gpa), len as usize) {
            return Err(bad("not inside shared guest memory"));
        }
        let area = fp.gpa..fp.gpa + len;
        let overlaps = |r: &std::ops::Range<u64>| r.start < area.end && area.start < r.end;
        if overlaps(&ring) || overlaps(&(INFO_PAGE_GPA..INFO_PAGE_GPA + PAGE_SIZE)) {
            return Err(bad("overlaps the ring or the info page"));
        }
        Ok(())
    }
}
