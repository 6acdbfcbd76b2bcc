//! The host mapping behind an outsourced region: private, anonymous, `MAP_NORESERVE`, never
//! locked; plus the one operation memout needs on it (dropping pages). The only place the
//! server maps or unmaps memory.

use nix::sys::mman::{MapFlags, MmapAdvise, ProtFlags, madvise, mmap_anonymous, munmap};
use std::num::NonZeroUsize;
use std::ptr::NonNull;
use thiserror::Error;
use vm_memory::VolatileSlice;

/// Errors from host memory operations.
#[derive(Debug, Error)]
pub enum Error {
    /// mmap failed.
    #[error("cannot map {size} bytes for the outsourced region: {source}")]
    Map {
        /// Bytes asked for.
        size: usize,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// madvise failed.
    #[error("madvise({advice:?}) of {len} bytes at {addr:#x} failed: {source}")]
    Madvise {
        /// Which advice.
        advice: MmapAdvise,
        /// Host address.
        addr: usize,
        /// Length.
        len: usize,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading `/proc/self/pagemap` failed.
    #[error("reading the page map of {len} bytes at {addr:#x} failed: {source}")]
    Pagemap {
        /// Host address.
        addr: usize,
        /// Length.
        len: usize,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// `Result` with this module's [`enum@Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// An owned anonymous mapping (unmapped on drop).
#[derive(Debug)]
pub struct HostRegion {
    addr: usize,
    size: usize,
    owned: bool,
    /// `/proc/self/pagemap`, opened on first use by [`in_core`](Self::in_core) (kernel-mode
    /// eviction asks every 10 ms).
    pagemap: std::sync::OnceLock<std::fs::File>,
}

impl HostRegion {
    /// Maps `size` bytes of private anonymous memory with `MAP_NORESERVE`, so the host commits
    /// nothing up front, and asks for transparent huge pages to stay off (memout populates in
    /// its own chunks and returns 4 KiB frames).
    pub fn new(size: usize) -> Result<Self> {
        let region = Self::plain(size)?;
        region.advise(0, size, MmapAdvise::MADV_NOHUGEPAGE)?;
        Ok(region)
    }

    /// Maps `size` bytes of private anonymous memory with `MAP_NORESERVE` and the machine's
    /// default transparent-huge-page policy: what a VMM without memout would map (benchmark
    /// baselines).
    pub fn plain(size: usize) -> Result<Self> {
        Ok(Self {
            addr: map_anonymous(size, MapFlags::MAP_NORESERVE)?,
            size,
            owned: true,
            pagemap: std::sync::OnceLock::new(),
        })
    }

    /// Wraps memory the caller mapped (it is not unmapped on drop).
    ///
    /// # Safety
    /// `[addr, addr + size)` must be a private anonymous read-write mapping that stays mapped,
    /// and is not accessed through Rust references, for as long as the returned value lives.
    pub unsafe fn borrowed(addr: usize, size: usize) -> Self {
        Self {
            addr,
            size,
            owned: false,
            pagemap: std::sync::OnceLock::new(),
        }
    }

    /// Host address of the first byte.
    pub fn addr(&self) -> usize {
        self.addr
    }

    /// Size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Drops the host pages of `[offset, offset + len)`: the memory goes back to the host at
    /// once and the next access faults again (to the userfaultfd).
    pub fn discard(&self, offset: usize, len: usize) -> Result<()> {
        self.advise(offset, len, MmapAdvise::MADV_DONTNEED)
    }

    fn advise(&self, offset: usize, len: usize, advice: MmapAdvise) -> Result<()> {
        assert!(
            offset.checked_add(len).is_some_and(|e| e <= self.size),
            "range outside region"
        );
        let addr = self.addr + offset;
        let Some(ptr) = NonNull::new(addr as *mut std::ffi::c_void) else {
            return Ok(()); // an empty region at address 0 does not exist; nothing to advise
        };
        // SAFETY: the range lies inside our own mapping (asserted above). The advice values used
        // here only drop, populate or re-tag anonymous pages; nothing in Rust holds references
        // into them.
        unsafe { madvise(ptr, len, advice) }.map_err(|e| Error::Madvise {
            advice,
            addr,
            len,
            source: e.into(),
        })
    }
}

impl HostRegion {
    /// Guest-writable memory `[offset, offset + len)` as a [`VolatileSlice`]: the host reads
    /// it only with volatile copies, never as a Rust reference, so a guest writing it at the
    /// same time is no undefined behaviour (the copy may just see old or new bytes). The pages
    /// must be populated, or the copy faults to the region's userfaultfd.
    pub fn volatile(&self, offset: usize, len: usize) -> VolatileSlice<'_> {
        assert!(
            offset.checked_add(len).is_some_and(|e| e <= self.size),
            "range outside region"
        );
        // SAFETY: the range lies inside this mapping (asserted), which lives as long as the
        // borrow of `self`; VolatileSlice accesses it only with volatile reads and writes.
        unsafe { VolatileSlice::new((self.addr + offset) as *mut u8, len) }
    }

    /// Which pages of `[offset, offset + len)` (page-aligned) are mapped in host RAM now, one
    /// bool a page, from `/proc/self/pagemap`: what the kernel really holds (what RSS counts),
    /// whatever memout's own map says. Costs 8 bytes read a page, far less than smaps.
    pub fn in_core(&self, offset: usize, len: usize) -> Result<Vec<bool>> {
        assert!(
            offset.checked_add(len).is_some_and(|e| e <= self.size),
            "range outside region"
        );
        let addr = self.addr + offset;
        let err = |source| Error::Pagemap { addr, len, source };
        let pagemap = match self.pagemap.get() {
            Some(f) => f,
            None => {
                let f = std::fs::File::open("/proc/self/pagemap").map_err(err)?;
                self.pagemap.get_or_init(|| f)
            }
        };
        crate::procfs::pages_present(pagemap, addr, len).map_err(err)
    }

    /// Backs `[offset, offset + len)` with writable pages now (`MADV_POPULATE_WRITE`), as a
    /// VMM's prefault thread would.
    pub fn populate_write(&self, offset: usize, len: usize) -> Result<()> {
        self.advise(offset, len, MmapAdvise::MADV_POPULATE_WRITE)
    }

    /// Lets KSM merge the region's pages (`MADV_MERGEABLE`), or stops it and unmerges them
    /// (`MADV_UNMERGEABLE`). The kernel ignores shared mappings silently: check the mapping's
    /// `mg` flag afterwards.
    pub fn set_mergeable(&self, on: bool) -> Result<()> {
        let advice = if on {
            MmapAdvise::MADV_MERGEABLE
        } else {
            MmapAdvise::MADV_UNMERGEABLE
        };
        self.advise(0, self.size, advice)
    }

    /// Asks the kernel to swap out `[offset, offset + len)` now (`MADV_PAGEOUT`).
    pub fn page_out(&self, offset: usize, len: usize) -> Result<()> {
        self.advise(offset, len, MmapAdvise::MADV_PAGEOUT)
    }
}

/// A page-aligned buffer owned by memout (for O_DIRECT I/O).
#[derive(Debug)]
pub struct AlignedBuf {
    region: HostRegion,
}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes (rounded up to whole pages).
    pub fn new(len: usize) -> Result<Self> {
        let len = len.div_ceil(4096).max(1) * 4096;
        Ok(Self {
            region: HostRegion {
                addr: map_anonymous(len, MapFlags::empty())?,
                size: len,
                owned: true,
                pagemap: std::sync::OnceLock::new(),
            },
        })
    }

    /// The buffer.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: we own the mapping exclusively; `&self` excludes writers.
        unsafe { std::slice::from_raw_parts(self.region.addr as *const u8, self.region.size) }
    }

    /// The buffer, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: we own the mapping exclusively; `&mut self` excludes other access.
        unsafe { std::slice::from_raw_parts_mut(self.region.addr as *mut u8, self.region.size) }
    }

    /// Its length.
    pub fn len(&self) -> usize {
        self.region.size
    }

    /// Gives the buffer's host pages back (`MADV_DONTNEED`); it reads as zeroes after.
    pub fn discard(&mut self) -> Result<()> {
        self.region.discard(0, self.region.size)
    }

    /// True if empty (never: at least one page).
    pub fn is_empty(&self) -> bool {
        self.region.size == 0
    }
}

impl Drop for HostRegion {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let Some(ptr) = NonNull::new(self.addr as *mut std::ffi::c_void) else {
            return;
        };
        // SAFETY: we own this mapping and nothing refers to it once the region is dropped (the
        // server drops the KVM memslot user, the guest handle, first).
        let _ = unsafe { munmap(ptr, self.size) };
    }
}

/// A fresh private anonymous read-write mapping of `size` bytes (plus `extra` flags) at an
/// address the kernel chooses.
fn map_anonymous(size: usize, extra: MapFlags) -> Result<usize> {
    let map_err = |source: std::io::Error| Error::Map { size, source };
    let len = NonZeroUsize::new(size).ok_or_else(|| map_err(nix::errno::Errno::EINVAL.into()))?;
    // SAFETY: a new mapping at a kernel-chosen address aliases nothing the process holds.
    let p = unsafe {
        mmap_anonymous(
            None,
            len,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_PRIVATE | extra,
        )
    }
    .map_err(|e| map_err(e.into()))?;
    Ok(p.as_ptr() as usize)
}
