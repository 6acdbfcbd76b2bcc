//! memout's side of QEMU's ivshmem server protocol (`docs/specs/ivshmem-spec.rst` in QEMU):
//! memout listens on a UNIX socket, and each `ivshmem-doorbell` device that connects gets,
//! as 8-byte little-endian integers with file descriptors attached: the protocol version (0),
//! its own peer id, the shared memory (id -1 with the memfd), then every other peer's
//! eventfds (one per vector) and finally its own. memout is peer
//! [`IVSHMEM_HOST_PEER`]: the guest's doorbell writes memout's eventfd, and memout writes the
//! guest's eventfd to raise its MSI-X interrupt.

use memout_protocol::ring::{IVSHMEM_HOST_PEER, IVSHMEM_VECTOR};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The protocol version QEMU 7.2 speaks.
const PROTOCOL_VERSION: i64 = 0;
/// Vectors per peer (memout uses one).
pub const VECTORS: usize = IVSHMEM_VECTOR as usize + 1;

/// Errors of the ivshmem server.
#[derive(Debug, Error)]
pub enum Error {
    /// The socket could not be created.
    #[error("cannot listen on {path}: {source}")]
    Listen {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Accepting a connection failed.
    #[error("accepting an ivshmem client: {0}")]
    Accept(#[source] std::io::Error),
    /// An eventfd could not be created.
    #[error("cannot create an eventfd: {0}")]
    EventFd(#[source] nix::errno::Errno),
    /// Sending to a client failed (it went away).
    #[error("sending to an ivshmem client: {0}")]
    Send(#[source] nix::errno::Errno),
}

/// `Result` with this module's [`enum@Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// A listening ivshmem server for one guest's channel.
pub struct IvshmemServer {
    listener: UnixListener,
    path: PathBuf,
    /// memout's own eventfds: the guest's doorbells arrive here.
    host: Vec<EventFd>,
    next_id: i64,
}

/// A connected QEMU: the guest's interrupt eventfds, and the connection (dropping it tells
/// QEMU the server went away).
pub struct IvshmemClient {
    _stream: UnixStream,
    id: i64,
    vectors: Vec<EventFd>,
}

impl IvshmemServer {
    /// Listens at `path` (removed first if a stale socket is there; removed again on drop).
    pub fn bind(path: &Path) -> Result<Self> {
        let _ = std::fs::remove_file(path);
        let listen_err = |source| Error::Listen {
            path: path.to_path_buf(),
            source,
        };
        let listener = UnixListener::bind(path).map_err(listen_err)?;
        // Whoever connects gets the guest's channel: only this user may.
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(listen_err)?;
        let host = (0..VECTORS)
            .map(|_| {
                EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(Error::EventFd)?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
            host,
            next_id: IVSHMEM_HOST_PEER as i64 + 1,
        })
    }

    /// The socket path (QEMU's `-chardev socket,path=...`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The eventfd a guest's doorbell signals (poll it; read it to reset).
    pub fn doorbell(&self) -> &EventFd {
        &self.host[IVSHMEM_VECTOR as usize]
    }

    /// The listening socket (poll it for a QEMU connecting).
    pub fn listener(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    /// Accepts a connection and closes it at once (one QEMU per channel).
    pub fn refuse(&self) {
        if let Ok((s, _)) = self.listener.accept() {
            drop(s);
            tracing::warn!("refused a second ivshmem client: the guest's QEMU is connected");
        }
    }

    /// Accepts one QEMU and hands it the shared memory `shm` and the eventfds.
    pub fn accept(&mut self, shm: BorrowedFd<'_>) -> Result<IvshmemClient> {
        let (stream, _) = self.listener.accept().map_err(Error::Accept)?;
        let id = self.next_id;
        self.next_id += 1;
        let vectors = (0..VECTORS)
            .map(|_| EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(Error::EventFd)?;
        send(&stream, PROTOCOL_VERSION, None)?;
        send(&stream, id, None)?;
        send(&stream, -1, Some(shm))?;
        for fd in &self.host {
            send(&stream, IVSHMEM_HOST_PEER as i64, Some(fd.as_fd()))?;
        }
        for fd in &vectors {
            send(&stream, id, Some(fd.as_fd()))?;
        }
        tracing::info!(peer = id, "QEMU connected to the ivshmem server");
        Ok(IvshmemClient {
            _stream: stream,
            id,
            vectors,
        })
    }
}

impl Drop for IvshmemServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl IvshmemClient {
    /// The guest's peer id.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// Raises the guest's interrupt (MSI-X vector [`IVSHMEM_VECTOR`]).
    pub fn interrupt(&self) {
        let _ = self.vectors[IVSHMEM_VECTOR as usize].write(1);
    }
}

/// One protocol message: `value` as 8 little-endian bytes, with `fd` attached if any.
fn send(stream: &UnixStream, value: i64, fd: Option<BorrowedFd<'_>>) -> Result<()> {
    let bytes = value.to_le_bytes();
    let iov = [IoSlice::new(&bytes)];
    let raw = fd.map(|f| [f.as_raw_fd()]);
    let cmsg: Vec<ControlMessage<'_>> = raw.iter().map(|r| ControlMessage::ScmRights(r)).collect();
    sendmsg::<()>(stream.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None).map_err(Error::Send)?;
    Ok(())
}
