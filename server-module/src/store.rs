//! Where evicted guest memory goes: the [`BackingStore`] trait, and [`FileStore`], a file
//! written in large chunks with `O_DIRECT` so evicted memory really leaves the host (buffered
//! writes would keep it in the page cache). Slots are 4 KiB; which slot holds what is decided
//! by the guest's slot allocator, the store only does I/O.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Size of one slot.
pub const SLOT_SIZE: u64 = 4096;

/// A store for evicted frames. Implementations must be durable on return from `write`: memout
/// drops the host page right after.
pub trait BackingStore: Send + Sync {
    /// Writes whole pages `data` at `slot`. `data` is page-aligned.
    fn write(&self, slot: u64, data: &[u8]) -> io::Result<()>;
    /// Writes the pages of `bufs`, one after another, to consecutive slots from `slot`: one
    /// I/O where the store can (memout gathers a chunk's non-zero pages this way). Each buffer
    /// is page-aligned and a whole number of pages.
    fn write_vectored(&self, slot: u64, bufs: &[&[u8]]) -> io::Result<()> {
        let mut s = slot;
        for b in bufs {
            self.write(s, b)?;
            s += b.len() as u64 / SLOT_SIZE;
        }
        Ok(())
    }
    /// Reads whole pages at `slot` into `buf` (page-aligned).
    fn read(&self, slot: u64, buf: &mut [u8]) -> io::Result<()>;
    /// `pages` slots from `slot` are no longer needed (space may be given back).
    fn discard(&self, _slot: u64, _pages: u64) -> io::Result<()> {
        Ok(())
    }
    /// Most slots the store can hold.
    fn capacity_slots(&self) -> u64;
    /// Bytes the store occupies on disk now.
    fn bytes_on_disk(&self) -> u64;
    /// A short description for logs and status (e.g. the file path).
    fn describe(&self) -> String;
}

static NEXT_FILE: AtomicU64 = AtomicU64::new(0);

/// A backing file in a directory of the operator's choice: created 0600 with `O_EXCL` and
/// unlinked at once, so it lives exactly as long as the store (the guest) — even if the
/// process is killed — and no other process can open it by name.
#[derive(Debug)]
pub struct FileStore {
    file: File,
    path: PathBuf,
    capacity: u64,
    direct: bool,
}

impl FileStore {
    /// Creates `dir/memout-<name>-<pid>-<n>.store`, able to hold `capacity_bytes`.
    pub fn create(dir: &Path, name: &str, capacity_bytes: u64) -> io::Result<Self> {
        let safe: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(64)
            .collect();
        let n = NEXT_FILE.fetch_add(1, Relaxed);
        let path = dir.join(format!("memout-{safe}-{}-{n}.store", std::process::id()));
        let open = |direct: bool| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_CLOEXEC | if direct { libc::O_DIRECT } else { 0 })
                .open(&path)
        };
        let (file, direct) = match open(true) {
            Ok(f) => (f, true),
            // Some filesystems refuse O_DIRECT: write buffered, then push the data out and drop
            // it from the page cache after every write.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (open(false)?, false),
            Err(e) => return Err(e),
        };
        std::fs::remove_file(&path)?;
        Ok(Self {
            file,
            path,
            capacity: capacity_bytes / SLOT_SIZE,
            direct,
        })
    }

    /// The path the file was created at (already unlinked).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True if the file is written with `O_DIRECT`.
    pub fn direct(&self) -> bool {
        self.direct
    }

    fn check(&self, slot: u64, len: usize) -> io::Result<u64> {
        let pages = len as u64 / SLOT_SIZE;
        if len as u64 % SLOT_SIZE != 0 || slot.checked_add(pages).is_none_or(|e| e > self.capacity)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "slot range outside the store",
            ));
        }
        Ok(slot * SLOT_SIZE)
    }
}

impl BackingStore for FileStore {
    fn write(&self, slot: u64, data: &[u8]) -> io::Result<()> {
        let off = self.check(slot, data.len())?;
        self.file.write_all_at(data, off)?;
        if !self.direct {
            let len = data.len() as i64;
            // Durable first, then dropped from the page cache (it must not keep the memory).
            self.file.sync_data()?;
            nix::fcntl::posix_fadvise(
                self.file.as_fd(),
                off as i64,
                len,
                nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
            )?;
        }
        Ok(())
    }

    fn write_vectored(&self, slot: u64, bufs: &[&[u8]]) -> io::Result<()> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let off = self.check(slot, total)?;
        // At most IOV_MAX (1024) buffers per call; a short write goes on where it stopped.
        let mut done = 0usize;
        let mut first = 0usize;
        let mut skip = 0usize;
        while done < total {
            let iov: Vec<std::io::IoSlice<'_>> = bufs[first..]
                .iter()
                .take(1024)
                .enumerate()
                .map(|(i, b)| std::io::IoSlice::new(if i == 0 { &b[skip..] } else { b }))
                .collect();
            let n = nix::sys::uio::pwritev(&self.file, &iov, (off + done as u64) as i64)?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            done += n;
            let mut left = n + skip;
            while first < bufs.len() && left >= bufs[first].len() {
                left -= bufs[first].len();
                first += 1;
            }
            skip = left;
        }
        if !self.direct {
            self.file.sync_data()?;
            nix::fcntl::posix_fadvise(
                self.file.as_fd(),
                off as i64,
                total as i64,
                nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
            )?;
        }
        Ok(())
    }

    fn read(&self, slot: u64, buf: &mut [u8]) -> io::Result<()> {
        let off = self.check(slot, buf.len())?;
        self.file.read_exact_at(buf, off)?;
        if !self.direct {
            let _ = nix::fcntl::posix_fadvise(
                self.file.as_fd(),
                off as i64,
                buf.len() as i64,
                nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
            );
        }
        Ok(())
    }

    fn discard(&self, slot: u64, pages: u64) -> io::Result<()> {
        nix::fcntl::fallocate(
            self.file.as_fd(),
            nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
            (slot * SLOT_SIZE) as i64,
            (pages * SLOT_SIZE) as i64,
        )?;
        Ok(())
    }

    fn capacity_slots(&self) -> u64 {
        self.capacity
    }

    fn bytes_on_disk(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        self.file.metadata().map(|m| m.blocks() * 512).unwrap_or(0)
    }

    fn describe(&self) -> String {
        format!(
            "{}{}",
            self.path.display(),
            if self.direct { "" } else { " (buffered)" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host_mem::AlignedBuf;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn file_is_private_roundtrips_and_goes_away() {
        let dir = std::env::temp_dir();
        let s = FileStore::create(&dir, "unit/test", 64 << 20).unwrap();
        let path = s.path().to_path_buf();
        assert!(
            path.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("memout-unit_test-")
        );
        let meta = s.file.metadata().unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert!(!path.exists(), "the store is unlinked at creation");
        let mut w = AlignedBuf::new(8192).unwrap();
        w.as_mut_slice()
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = i as u8);
        s.write(3, w.as_slice()).unwrap();
        let mut r = AlignedBuf::new(8192).unwrap();
        s.read(3, r.as_mut_slice()).unwrap();
        assert_eq!(r.as_slice(), w.as_slice());
        assert!(s.bytes_on_disk() >= 8192);
        s.discard(3, 2).unwrap();
        assert!(s.write(s.capacity_slots(), w.as_slice()).is_err());
        drop(s);
    }

    #[test]
    fn vectored_writes_land_in_consecutive_slots() {
        let s = FileStore::create(&std::env::temp_dir(), "unit-vec", 64 << 20).unwrap();
        // 1100 one-page buffers: more than IOV_MAX, so the write takes several calls.
        let n = 1100usize;
        let mut src = AlignedBuf::new(n * 4096).unwrap();
        for (i, page) in src.as_mut_slice().chunks_mut(4096).enumerate() {
            page.fill((i % 251) as u8 + 1);
        }
        let bufs: Vec<&[u8]> = src.as_slice().chunks(4096).collect();
        s.write_vectored(7, &bufs).unwrap();
        let mut r = AlignedBuf::new(n * 4096).unwrap();
        s.read(7, r.as_mut_slice()).unwrap();
        assert!(r.as_slice() == src.as_slice());
        assert!(
            s.write_vectored(s.capacity_slots() - 1, &bufs[..2])
                .is_err()
        );
    }
}
