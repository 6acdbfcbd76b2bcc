//! The RAM of an external VMM's guest: a file memout creates and the VMM maps shared (QEMU's
//! `memory-backend-file,share=on`). memout never maps it; it only punches holes in it (the
//! host memory behind a freed guest frame goes at once) and asks how much of it is allocated.

use nix::fcntl::{FallocateFlags, fallocate};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use thiserror::Error;

/// Errors of the RAM file.
#[derive(Debug, Error)]
pub enum Error {
    /// The file could not be created or sized.
    #[error("cannot create the guest RAM file {path}: {source}")]
    Create {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Punching a hole failed.
    #[error("cannot drop {len} bytes at offset {offset:#x} of the guest RAM file: {source}")]
    Punch {
        /// File offset.
        offset: u64,
        /// Length.
        len: u64,
        /// Cause.
        #[source]
        source: nix::errno::Errno,
    },
    /// Allocating memory for a range failed.
    #[error("cannot populate {len} bytes at offset {offset:#x} of the guest RAM file: {source}")]
    Populate {
        /// File offset.
        offset: u64,
        /// Length.
        len: u64,
        /// Cause.
        #[source]
        source: nix::errno::Errno,
    },
    /// fstat failed.
    #[error("cannot stat the guest RAM file: {0}")]
    Stat(#[source] nix::errno::Errno),
}

/// `Result` with this module's [`enum@Error`].
pub type Result<T> = std::result::Result<T, Error>;

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A guest RAM file (sparse, `0600`, its name removed by [`RamFile::unlink`] or when
/// dropped; a VMM that has it mapped keeps its memory).
#[derive(Debug)]
pub struct RamFile {
    file: File,
    path: PathBuf,
    size: u64,
    unlinked: AtomicBool,
}

impl RamFile {
    /// Creates `dir/memout-<name>-<pid>-<n>.ram` of `size` bytes, all holes.
    pub fn create(dir: &Path, name: &str, size: u64) -> Result<Self> {
        let path = dir.join(format!(
            "memout-{name}-{}-{}.ram",
            std::process::id(),
            NEXT.fetch_add(1, Relaxed)
        ));
        let err = |source| Error::Create {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(err)?;
        file.set_len(size).map_err(err)?;
        Ok(Self {
            file,
            path,
            size,
            unlinked: AtomicBool::new(false),
        })
    }

    /// Where the file is (what the VMM maps).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the file's name once the VMM has it mapped, so no name is left behind if
    /// memout is killed; the memory stays with whoever maps it, and with this handle.
    pub fn unlink(&self) {
        if !self.unlinked.swap(true, Relaxed) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    /// Its size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Drops the memory behind `[offset, offset + len)`; it reads as zeroes after, in every
    /// process that maps the file.
    pub fn punch(&self, offset: u64, len: u64) -> Result<()> {
        let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        fallocate(&self.file, flags, offset as i64, len as i64).map_err(|source| Error::Punch {
            offset,
            len,
            source,
        })
    }

    /// Allocates (zero-filled) memory behind `[offset, offset + len)` now, so the guest's
    /// first touch of those frames finds it there.
    pub fn populate(&self, offset: u64, len: u64) -> Result<()> {
        fallocate(
            &self.file,
            FallocateFlags::empty(),
            offset as i64,
            len as i64,
        )
        .map_err(|source| Error::Populate {
            offset,
            len,
            source,
        })
    }

    /// Bytes of host memory the file holds now (its allocated blocks: on tmpfs, its pages).
    pub fn allocated_bytes(&self) -> Result<u64> {
        let st = nix::sys::stat::fstat(&self.file).map_err(Error::Stat)?;
        Ok(st.st_blocks as u64 * 512)
    }
}

impl Drop for RamFile {
    fn drop(&mut self) {
        self.unlink();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn punched_memory_leaves_and_reads_zero() {
        use std::os::unix::fs::FileExt;
        let dir = std::env::temp_dir();
        let f = RamFile::create(&dir, "t", 8 << 20).unwrap();
        assert_eq!(f.allocated_bytes().unwrap(), 0, "created sparse");
        f.file.write_all_at(&vec![7u8; 4 << 20], 0).unwrap();
        assert!(f.allocated_bytes().unwrap() >= 4 << 20);
        f.punch(0, 2 << 20).unwrap();
        let left = f.allocated_bytes().unwrap();
        assert!(left <= 2 << 20, "{left} bytes left after the punch");
        let mut b = [1u8; 16];
        f.file.read_exact_at(&mut b, 4096).unwrap();
        assert_eq!(b, [0u8; 16]);
        f.populate(0, 2 << 20).unwrap();
        assert!(
            f.allocated_bytes().unwrap() >= left + (2 << 20),
            "populated"
        );
        f.file.read_exact_at(&mut b, 4096).unwrap();
        assert_eq!(b, [0u8; 16], "populated memory reads zero");
        f.punch(0, 2 << 20).unwrap();
        let path = f.path().to_path_buf();
        f.unlink();
        assert!(!path.exists());
        assert!(
            f.allocated_bytes().unwrap() <= 2 << 20,
            "the memory stays with the handle"
        );
        std::fs::write(&path, b"someone else's").unwrap();
        drop(f);
        assert!(
            path.exists(),
            "a name reused after the unlink is not removed"
        );
        std::fs::remove_file(&path).unwrap();
    }
}
