//! The channel of an external VMM's guest: one memfd holding the info page, the request ring,
//! a scratch area for extent lists and, if enabled, the fast-path area. The VMM maps it into the guest (QEMU: the
//! `ivshmem-doorbell` BAR); memout maps it at [`CHANNEL_GPA`] in its own view, which is the
//! only guest memory memout ever reads for this guest.

use crate::config::FastPathConfig;
use memout_protocol::fastpath::fastpath_size;
use memout_protocol::ring::{
    ABI_VERSION, Descriptor, FEATURE_FASTPATH, FEATURE_HOST_MESSAGES, INFO_MAGIC, InfoPage,
    PAGE_SIZE, RING_MAGIC, RingHeader,
};
use nix::sys::memfd::{MFdFlags, memfd_create};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use thiserror::Error;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

/// Where memout places the channel in its view of the guest: far above any RAM, so the two
/// can never overlap.
pub const CHANNEL_GPA: u64 = 1 << 46;
/// Size of the channel (a power of two, as ivshmem requires).
pub const CHANNEL_SIZE: u64 = 1 << 20;
/// Slots in the ring.
pub const RING_SLOTS: u32 = 32;
const RING_OFFSET: u64 = PAGE_SIZE;
const SCRATCH_OFFSET: u64 = 64 << 10;
const SCRATCH_SIZE: u64 = 64 << 10;
const FASTPATH_OFFSET: u64 = 256 << 10;
/// Most vCPUs the channel's fast-path area has magazines and free stacks for.
pub const MAX_FASTPATH_CPUS: u32 = 64;

/// Errors setting up a channel.
#[derive(Debug, Error)]
pub enum Error {
    /// memfd_create or sizing it failed.
    #[error("cannot create the channel memory: {0}")]
    Memfd(#[source] std::io::Error),
    /// Mapping it failed.
    #[error("cannot map the channel memory: {0}")]
    Map(#[source] vm_memory::mmap::MmapRegionError),
    /// Writing the info page or ring header failed (a memout bug).
    #[error("cannot write the channel: {0}")]
    Write(#[source] vm_memory::GuestMemoryError),
    /// A fast path for no vCPU, or for more than the channel has room for.
    #[error("a fast path for {0} vCPUs: the channel has room for 1 to {MAX_FASTPATH_CPUS}")]
    FastPathCpus(u32),
}

/// `Result` with this module's [`enum@Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// One guest's channel.
#[derive(Debug)]
pub struct Channel {
    file: File,
    mem: GuestMemoryMmap,
}

impl Channel {
    /// Creates the channel and writes its info page (for a region of `ram_size` bytes at
    /// guest-physical 0 with a quota of `quota_pages`) and ring header.
    pub fn create(name: &str, ram_size: u64, quota_pages: u64) -> Result<Self> {
        let fd = memfd_create(format!("memout-{name}").as_str(), MFdFlags::MFD_CLOEXEC)
            .map_err(|e| Error::Memfd(e.into()))?;
        let file = File::from(fd);
        file.set_len(CHANNEL_SIZE).map_err(Error::Memfd)?;
        let dup = file.try_clone().map_err(Error::Memfd)?;
        let map = MmapRegion::from_file(FileOffset::new(dup, 0), CHANNEL_SIZE as usize)
            .map_err(Error::Map)?;
        let region = GuestRegionMmap::new(map, GuestAddress(CHANNEL_GPA))
            .expect("the channel fits in the address space");
        let mem = GuestMemoryMmap::from_regions(vec![region]).expect("one region");
        let info = InfoPage {
            magic: INFO_MAGIC,
            abi_version: ABI_VERSION,
            features: FEATURE_HOST_MESSAGES,
            ring_gpa: Self::ring_gpa(),
            ring_slots: RING_SLOTS,
            region_gpa: 0,
            region_size: ram_size,
            quota_pages,
            info_gpa: CHANNEL_GPA,
            scratch_gpa: CHANNEL_GPA + SCRATCH_OFFSET,
            scratch_size: SCRATCH_SIZE,
            ..Default::default()
        };
        let header = RingHeader {
            magic: RING_MAGIC,
            abi_version: ABI_VERSION as u16,
            slots: RING_SLOTS as u16,
            quota_pages,
            ..Default::default()
        };
        mem.write_slice(&header.to_bytes(), GuestAddress(Self::ring_gpa()))
            .map_err(Error::Write)?;
        mem.write_slice(&info.to_bytes(), GuestAddress(CHANNEL_GPA))
            .map_err(Error::Write)?;
        Ok(Self { file, mem })
    }

    /// Offers the exit-free fast path for `nr_cpus` vCPUs: says so in the info page and
    /// returns where its area is (the caller writes the area before the guest can look).
    pub fn enable_fastpath(&self, nr_cpus: u32) -> Result<FastPathConfig> {
        if !(1..=MAX_FASTPATH_CPUS).contains(&nr_cpus) {
            return Err(Error::FastPathCpus(nr_cpus));
        }
        let at = GuestAddress(CHANNEL_GPA);
        let mut info = [0u8; InfoPage::SIZE];
        self.mem.read_slice(&mut info, at).map_err(Error::Write)?;
        let mut info = InfoPage::from_bytes(&info);
        let gpa = CHANNEL_GPA + FASTPATH_OFFSET;
        info.features |= FEATURE_FASTPATH;
        info.fastpath_gpa = gpa;
        self.mem
            .write_slice(&info.to_bytes(), at)
            .map_err(Error::Write)?;
        Ok(FastPathConfig { gpa, nr_cpus })
    }

    /// The ring's address in memout's view.
    pub fn ring_gpa() -> u64 {
        CHANNEL_GPA + RING_OFFSET
    }

    /// memout's view of the channel (what `rpc` reads and writes).
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The channel's memfd, for the VMM (the ivshmem server sends it to QEMU).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

const _: () = {
    assert!(
        RING_OFFSET + RingHeader::SIZE as u64 + RING_SLOTS as u64 * Descriptor::SIZE as u64
            <= SCRATCH_OFFSET
    );
    assert!(SCRATCH_OFFSET + SCRATCH_SIZE <= FASTPATH_OFFSET);
    assert!(FASTPATH_OFFSET % PAGE_SIZE == 0);
    assert!(FASTPATH_OFFSET + fastpath_size(MAX_FASTPATH_CPUS) <= CHANNEL_SIZE);
    assert!(
        CHANNEL_SIZE.is_power_of_two(),
        "ivshmem needs a power of two"
    );
    assert!(
        SCRATCH_SIZE >= 4096 * 16,
        "room for the longest extent list"
    );
};
