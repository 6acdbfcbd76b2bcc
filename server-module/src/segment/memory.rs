//! One shared segment's bytes: a sealed memfd (no one can change it after it is filled) mapped
//! once, read-only and shared, in memout's process. Every guest that maps the segment maps
//! these same pages, so the host holds one copy however many guests see it.

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};
use std::fs::File;
use std::os::unix::fs::FileExt;
use thiserror::Error;
use vm_memory::{FileOffset, MmapRegion};

/// Guests map segments in 2 MiB pieces (their page tables use 2 MiB pages).
pub const SEGMENT_ALIGN: u64 = 2 << 20;

/// Why a segment's memory could not be set up.
#[derive(Debug, Error)]
pub enum Error {
    /// Creating, filling or sealing the memfd failed.
    #[error("cannot create the segment's memory: {0}")]
    Memfd(#[source] std::io::Error),
    /// Mapping it failed.
    #[error("cannot map the segment's memory: {0}")]
    Map(#[source] vm_memory::mmap::MmapRegionError),
}

/// `Result` with this module's [`enum@Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// A segment's memory.
#[derive(Debug)]
pub struct SegmentMemory {
    file: File,
    map: MmapRegion,
    len: u64,
}

impl SegmentMemory {
    /// A sealed memfd holding `content`, padded with zeroes to a multiple of
    /// [`SEGMENT_ALIGN`], and its read-only mapping.
    pub fn create(name: &str, content: &[u8]) -> Result<Self> {
        let io = |e: nix::errno::Errno| Error::Memfd(e.into());
        let fd = memfd_create(
            format!("memout-seg-{name}").as_str(),
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )
        .map_err(io)?;
        let file = File::from(fd);
        let size = (content.len() as u64).div_ceil(SEGMENT_ALIGN).max(1) * SEGMENT_ALIGN;
        file.set_len(size).map_err(Error::Memfd)?;
        file.write_all_at(content, 0).map_err(Error::Memfd)?;
        fcntl(
            &file,
            FcntlArg::F_ADD_SEALS(
                SealFlag::F_SEAL_SHRINK
                    | SealFlag::F_SEAL_GROW
                    | SealFlag::F_SEAL_WRITE
                    | SealFlag::F_SEAL_SEAL,
            ),
        )
        .map_err(io)?;
        let dup = file.try_clone().map_err(Error::Memfd)?;
        let map = MmapRegion::build(
            Some(FileOffset::new(dup, 0)),
            size as usize,
            libc::PROT_READ,
            libc::MAP_SHARED,
        )
        .map_err(Error::Map)?;
        Ok(Self {
            file,
            map,
            len: content.len() as u64,
        })
    }

    /// Bytes of content.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True if it holds no content (never: segments are refused empty).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes a guest maps (content rounded up to [`SEGMENT_ALIGN`]).
    pub fn size(&self) -> u64 {
        self.map.size() as u64
    }

    /// Where memout maps it (read-only): what a VMM gives KVM as the memslot's memory.
    pub fn host_addr(&self) -> usize {
        self.map.as_ptr() as usize
    }

    /// Host memory it holds now (the memfd's allocated pages).
    pub fn host_bytes(&self) -> u64 {
        nix::sys::stat::fstat(&self.file).map_or(0, |s| s.st_blocks as u64 * 512)
    }

    /// Reads `buf.len()` bytes at `offset` (tests and tools; guests read through KVM).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_its_content_sealed_and_padded() {
        let m = SegmentMemory::create("t", &[7u8; 5000]).unwrap();
        assert_eq!((m.len(), m.size()), (5000, SEGMENT_ALIGN));
        let mut b = [0u8; 8];
        m.read_at(&mut b, 4992).unwrap();
        assert_eq!(b, [7u8; 8]);
        m.read_at(&mut b, 5000).unwrap();
        assert_eq!(b, [0u8; 8], "padded with zeroes");
        // Sealed: nobody writes it any more.
        assert!(m.file.write_all_at(&[1], 0).is_err());
        assert!(m.host_bytes() >= 4096);
    }
}
