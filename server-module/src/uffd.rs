//! Thin wrapper over a userfaultfd: creation with the flags memout needs, and errnos mapped to
//! what they mean for a page handler. One of the few modules with `unsafe`.

use std::os::fd::{AsFd, BorrowedFd};
use thiserror::Error;
use userfaultfd::{Event, EventBuffer, IoctlFlags, RegisterMode, Uffd, UffdBuilder};

/// Errors from the userfaultfd wrapper.
#[derive(Debug, Error)]
pub enum Error {
    /// The userfaultfd could not be created (no kernel support, or no permission).
    #[error("cannot create userfaultfd: {0}")]
    Create(#[source] userfaultfd::Error),
    /// Registering the region failed.
    #[error("cannot register {len} bytes at {addr:#x} with userfaultfd: {source}")]
    Register {
        /// Host address.
        addr: usize,
        /// Length.
        len: usize,
        /// Cause.
        #[source]
        source: userfaultfd::Error,
    },
    /// A populate ioctl failed for a reason other than EEXIST/EAGAIN (e.g. ENOMEM).
    #[error("userfaultfd populate at {addr:#x} failed: errno {errno}")]
    Populate {
        /// Destination host address.
        addr: usize,
        /// The raw errno.
        errno: i32,
    },
    /// The kernel does not offer write-protection on this range.
    #[error("userfaultfd write-protect is not available for anonymous memory on this kernel")]
    NoWriteProtect,
    /// UFFDIO_WRITEPROTECT failed.
    #[error("userfaultfd write-protect at {addr:#x} failed: {source}")]
    WriteProtect {
        /// Host address.
        addr: usize,
        /// Cause.
        #[source]
        source: userfaultfd::Error,
    },
    /// Reading events failed.
    #[error("reading userfaultfd events: {0}")]
    Read(#[source] userfaultfd::Error),
    /// UFFDIO_WAKE failed.
    #[error("userfaultfd wake at {addr:#x} failed: {source}")]
    Wake {
        /// Host address.
        addr: usize,
        /// Cause.
        #[source]
        source: userfaultfd::Error,
    },
}

/// `Result` with this module's [`enum@Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// What a populate call achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyOutcome {
    /// `n` bytes from the start of the range are now populated (and waiters woken); if `n` is
    /// less than asked, the page at `n` already existed or the call was cut short: call again.
    Copied(usize),
    /// EEXIST on the first page: it is already populated. Wake its waiters and move on.
    AlreadyPopulated,
    /// EAGAIN with nothing copied: the address space is changing (a REMOVE event is pending).
    /// Read pending events, then retry.
    Retry,
}

/// A userfaultfd registered over one host range in MISSING and write-protect modes, that also
/// sees faults taken by the kernel on the guest's behalf (KVM), not only user-mode faults.
///
/// REMOVE events are deliberately not requested: memout is the only one that drops pages in
/// its regions, so they would carry no news, and with them every `madvise` would have to wait
/// until the fault thread read the event — a deadlock when the fault thread itself evicts.
pub struct GuestUffd {
    uffd: Uffd,
}

impl GuestUffd {
    /// Creates the userfaultfd and registers `[addr, addr + len)`.
    pub fn new(addr: usize, len: usize) -> Result<Self> {
        let uffd = UffdBuilder::new()
            .close_on_exec(true)
            .non_blocking(true)
            .user_mode_only(false)
            .create()
            .map_err(Error::Create)?;
        let ioctls = uffd
            .register_with_mode(
                addr as *mut libc::c_void,
                len,
                RegisterMode::MISSING | RegisterMode::WRITE_PROTECT,
            )
            .map_err(|source| Error::Register { addr, len, source })?;
        if !ioctls.contains(IoctlFlags::WRITE_PROTECT) {
            return Err(Error::NoWriteProtect);
        }
        Ok(Self { uffd })
    }

    /// Reads the pending events into `buf` (non-blocking: none pending gives none).
    pub fn read_events<'a>(
        &self,
        buf: &'a mut EventBuffer,
    ) -> Result<impl Iterator<Item = std::result::Result<Event, userfaultfd::Error>> + 'a> {
        self.uffd.read_events(buf).map_err(Error::Read)
    }

    /// Atomically fills `[dst, dst + len)` from `src`; with `wake`, also wakes threads faulting
    /// on it (without, call [`wake`](Self::wake) once the caller's bookkeeping is done).
    ///
    /// `dst` must lie in the registered range; `src` must be readable for `len` bytes.
    pub fn copy(&self, src: *const u8, dst: usize, len: usize, wake: bool) -> Result<CopyOutcome> {
        // SAFETY: UFFDIO_COPY only writes into the registered range (checked by the kernel,
        // which refuses anything else with an errno) and reads `len` bytes at `src`, which the
        // caller guarantees are readable. No Rust reference aliases the destination pages: the
        // guest region is accessed from Rust only through raw addresses.
        let r = unsafe {
            self.uffd
                .copy(src.cast(), dst as *mut libc::c_void, len, wake)
        };
        match r {
            Ok(n) => Ok(CopyOutcome::Copied(n)),
            // The crate reports EAGAIN as "partially copied" with the kernel's count, which is
            // negative (-EAGAIN) when nothing was copied because mappings are changing.
            Err(userfaultfd::Error::PartiallyCopied(n)) if (n as isize) > 0 => {
                Ok(CopyOutcome::Copied(n))
            }
            Err(userfaultfd::Error::PartiallyCopied(_)) => Ok(CopyOutcome::Retry),
            Err(userfaultfd::Error::CopyFailed(e)) if e as i32 == libc::EEXIST => {
                Ok(CopyOutcome::AlreadyPopulated)
            }
            Err(userfaultfd::Error::CopyFailed(e)) if e as i32 == libc::EAGAIN => {
                Ok(CopyOutcome::Retry)
            }
            Err(userfaultfd::Error::CopyFailed(e)) => Err(Error::Populate {
                addr: dst,
                errno: e as i32,
            }),
            Err(other) => Err(Error::Populate {
                addr: dst,
                errno: errno_of(&other),
            }),
        }
    }

    /// Maps the shared zero page at the page `addr` and wakes its waiters; a page already there
    /// is only woken. Used to let a kernel access (KVM emulating an instruction) finish for a
    /// guest that is being stopped: such an access cannot be interrupted by a signal.
    pub fn zero_page(&self, addr: usize) -> Result<()> {
        let len = memout_protocol::ring::PAGE_SIZE as usize;
        // SAFETY: UFFDIO_ZEROPAGE only maps zero pages into the registered range (the kernel
        // refuses anything else with an errno); no Rust reference aliases guest pages.
        let r = unsafe { self.uffd.zeropage(addr as *mut libc::c_void, len, true) };
        match r {
            Ok(_) => Ok(()),
            Err(userfaultfd::Error::ZeropageFailed(e)) if e as i32 == libc::EEXIST => {
                self.wake(addr, len)
            }
            Err(other) => Err(Error::Populate {
                addr,
                errno: errno_of(&other),
            }),
        }
    }

    /// Wakes threads waiting on faults in `[addr, addr + len)`.
    pub fn wake(&self, addr: usize, len: usize) -> Result<()> {
        self.uffd
            .wake(addr as *mut libc::c_void, len)
            .map_err(|source| Error::Wake { addr, source })
    }
}

impl GuestUffd {
    /// Write-protects `[addr, addr + len)`: a write there now faults to this userfaultfd.
    pub fn write_protect(&self, addr: usize, len: usize) -> Result<()> {
        self.uffd
            .write_protect(addr as *mut libc::c_void, len)
            .map_err(|source| Error::WriteProtect { addr, source })
    }

    /// Lifts write-protection from `[addr, addr + len)` and wakes writers blocked there.
    pub fn unprotect(&self, addr: usize, len: usize) -> Result<()> {
        self.uffd
            .remove_write_protection(addr as *mut libc::c_void, len, true)
            .map_err(|source| Error::WriteProtect { addr, source })
    }
}

fn errno_of(e: &userfaultfd::Error) -> i32 {
    match e {
        userfaultfd::Error::SystemError(n) => *n as i32,
        _ => libc::EIO,
    }
}

impl AsFd for GuestUffd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.uffd.as_fd()
    }
}
