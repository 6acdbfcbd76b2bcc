//! Serving a QEMU guest: memout owns the guest's RAM file and its channel, speaks the ivshmem
//! server protocol to QEMU's `ivshmem-doorbell` device, and answers the guest's doorbells
//! (the Linux module `memout.ko`) on its own thread. [`QemuGuest::qemu_args`] is what QEMU
//! must be started with.
//!
//! QEMU maps the RAM file itself, so memout sees none of the guest's page faults: it frees
//! memory the guest gives back (punching holes in the file) but cannot populate or evict on
//! demand; see `docs/embedding.md`.

pub mod ivshmem;
pub mod launch;
pub mod run;

use ivshmem::{IvshmemClient, IvshmemServer};
use memout_server::file_guest::{FastPathService, FileGuest};
use memout_server::{ConfigError, Server};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use thiserror::Error;

/// Most RAM a QEMU guest may have: below this, QEMU's `pc` machine maps all RAM at
/// guest-physical 0 in one piece, so a frame's address is its offset in the RAM file.
pub const MAX_RAM: u64 = 2 << 30;

/// Errors serving a QEMU guest.
#[derive(Debug, Error)]
pub enum Error {
    /// RAM above [`MAX_RAM`].
    #[error("guest RAM of {0} MiB is above the {max} MiB memout serves for QEMU", max = MAX_RAM >> 20)]
    TooBig(u64),
    /// The guest's RAM file or channel.
    #[error(transparent)]
    Guest(#[from] memout_server::file_guest::Error),
    /// The ivshmem server.
    #[error(transparent)]
    Ivshmem(#[from] ivshmem::Error),
    /// The stop eventfd.
    #[error("cannot create an eventfd: {0}")]
    EventFd(#[source] nix::errno::Errno),
    /// The serving thread could not start.
    #[error("cannot start the serving thread: {0}")]
    Spawn(#[source] std::io::Error),
}

/// `Result` with this module's [`enum@Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// What to serve.
#[derive(Debug, Clone)]
pub struct QemuGuestConfig {
    /// Guest name (also in the file names).
    pub name: String,
    /// Guest RAM in bytes (a multiple of 2 MiB, at most [`MAX_RAM`]).
    pub ram_bytes: u64,
    /// Where the RAM file goes (tmpfs, e.g. `/dev/shm`).
    pub ram_dir: PathBuf,
    /// The ivshmem server's socket.
    pub socket: PathBuf,
    /// Smallest size a resize may ask for (bytes, a multiple of 4 KiB): what the guest's
    /// kernel and programs need to keep running.
    pub min_bytes: u64,
    /// vCPUs to offer the exit-free fast path to (one magazine and free stack each; 0: no
    /// fast path). Only for a QEMU whose guest atomics are atomic against other processes:
    /// KVM, or TCG with `thread=multi` and `maxcpus` above 1 ([`launch::Qemu`] starts it so).
    pub fastpath_cpus: u32,
}

/// One served QEMU guest. Dropping it stops serving and removes the RAM file's name (QEMU
/// keeps the memory it mapped).
pub struct QemuGuest {
    guest: Arc<FileGuest>,
    _fastpath: Option<FastPathService>,
    socket: PathBuf,
    stop: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl QemuGuest {
    /// Creates the RAM file and the channel, listens on the socket, and starts serving.
    pub fn start(cfg: &QemuGuestConfig) -> Result<Self> {
        if cfg.ram_bytes > MAX_RAM {
            return Err(Error::TooBig(cfg.ram_bytes >> 20));
        }
        let mut guest = FileGuest::create(&cfg.name, &cfg.ram_dir, cfg.ram_bytes)?
            .with_min_bytes(cfg.min_bytes)?;
        if cfg.fastpath_cpus > 0 {
            guest = guest.with_fastpath(cfg.fastpath_cpus)?;
        }
        let guest = Arc::new(guest);
        let fastpath = match cfg.fastpath_cpus {
            0 => None,
            _ => Some(guest.serve_fastpath().map_err(Error::Spawn)?),
        };
        let server = IvshmemServer::bind(&cfg.socket)?;
        let eventfd = || {
            EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                .map(Arc::new)
                .map_err(Error::EventFd)
        };
        let (stop, notify) = (eventfd()?, eventfd()?);
        // A host message (a resize) wakes the serving thread, which interrupts the guest.
        let wake = notify.clone();
        guest.set_interrupt(Box::new(move || {
            let _ = wake.write(1);
        }));
        let thread = {
            let (guest, stop, notify) = (guest.clone(), stop.clone(), notify.clone());
            std::thread::Builder::new()
                .name(format!("memout-qemu-{}", cfg.name))
                .spawn(move || serve(&guest, server, &stop, &notify))
                .map_err(Error::Spawn)?
        };
        Ok(Self {
            guest,
            _fastpath: fastpath,
            socket: cfg.socket.clone(),
            stop,
            thread: Some(thread),
        })
    }

    /// The guest as the server sees it: statistics, the RAM file, and
    /// [`resize`](FileGuest::resize), which interrupts the guest through this device.
    pub fn guest(&self) -> &Arc<FileGuest> {
        &self.guest
    }

    /// Lists the guest with `server`'s guests, so its control socket (`memoutctl list`,
    /// `status`, `resize`) covers it; it leaves the list when this is dropped.
    pub fn register(&self, server: &Server) -> std::result::Result<(), ConfigError> {
        server.register_external(&self.guest)
    }

    /// The RAM file's path (what [`qemu_args`](Self::qemu_args) names; removed once the
    /// guest's module has said HELLO).
    pub fn ram_path(&self) -> &Path {
        self.guest.ram().path()
    }

    /// The QEMU options that give the guest its RAM from memout's file and the
    /// `ivshmem-doorbell` device that carries the channel (add the kernel, console, etc.).
    pub fn qemu_args(&self) -> Vec<String> {
        let mib = self.guest.ram().size() >> 20;
        vec![
            "-machine".into(),
            "pc,memory-backend=memout-ram".into(),
            "-m".into(),
            format!("{mib}M"),
            "-object".into(),
            format!(
                "memory-backend-file,id=memout-ram,size={mib}M,mem-path={},share=on",
                self.ram_path().display()
            ),
            "-chardev".into(),
            format!("socket,path={},id=memout-chan", self.socket.display()),
            "-device".into(),
            format!(
                "ivshmem-doorbell,chardev=memout-chan,vectors={}",
                ivshmem::VECTORS
            ),
        ]
    }
}

impl Drop for QemuGuest {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The serving loop: accept QEMU, answer doorbells, until `stop`.
fn serve(guest: &FileGuest, mut server: IvshmemServer, stop: &EventFd, notify: &EventFd) {
    let _span = tracing::info_span!("qemu", guest = guest.name()).entered();
    let mut client: Option<IvshmemClient> = None;
    loop {
        let (accept, ring, quit, message) = {
            let mut fds = [
                PollFd::new(server.listener(), PollFlags::POLLIN),
                PollFd::new(server.doorbell().as_fd(), PollFlags::POLLIN),
                PollFd::new(stop.as_fd(), PollFlags::POLLIN),
                PollFd::new(notify.as_fd(), PollFlags::POLLIN),
            ];
            if let Err(e) = poll(&mut fds, PollTimeout::NONE) {
                if e == nix::errno::Errno::EINTR {
                    continue;
                }
                tracing::error!(%e, "poll failed; no longer serving the guest");
                return;
            }
            let ready = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
            (
                ready(&fds[0]),
                ready(&fds[1]),
                ready(&fds[2]),
                ready(&fds[3]),
            )
        };
        if quit {
            return;
        }
        if accept {
            if client.is_some() {
                server.refuse();
            } else {
                match server.accept(guest.channel().fd()) {
                    Ok(c) => client = Some(c),
                    Err(e) => tracing::warn!(%e, "ivshmem client refused"),
                }
            }
        }
        let mut interrupt = false;
        if message {
            let _ = notify.read();
            interrupt = true;
        }
        if ring {
            let _ = server.doorbell().read();
            interrupt |= guest.on_doorbell().processed > 0;
            // The guest runs, so QEMU has mapped its RAM: the name is no longer needed, and
            // none is left behind if memout is killed.
            if guest.attached() {
                guest.ram().unlink();
            }
        }
        if interrupt && let Some(c) = &client {
            c.interrupt();
        }
    }
}
