//! The control socket: operators (`memoutctl`) and scripts list guests, read their state,
//! resize them, set budgets and policies, and evict, while they run.
//!
//! ```text
//!  memoutctl ──UnixStream──▶ ControlServer (accept thread) ──▶ one thread per connection
//!                             └ SO_PEERCRED: root or own uid    └ handler ──▶ Registry ──▶ GuestCore
//! ```
//!
//! The socket is created with mode 0600 (bound under a temporary name, chmod-ed, then renamed
//! into place, so it is never reachable with wider permissions), and every connection's peer
//! is checked with `SO_PEERCRED` besides: only root and the server's own uid are served; a
//! refusal is logged (rate-limited) and counted. Frames are length-prefixed bincode 2
//! ([`memout_protocol::codec`]) with a size limit. Each connection has its own thread, a
//! limit on how many there are, a deadline for the handshake and for each whole frame, and a
//! write timeout, so a slow or dead client only ever holds up itself. When every slot is taken,
//! a new connection closes the one that has waited longest without a handshake, else the one
//! idle longest: silent or trickling clients cannot lock an operator out. A refused client is
//! sent its `Denied` reply and the server reads what it sends for a moment before closing, so
//! the client sees the reply rather than a broken pipe.

mod accept;
mod client;
mod conns;
mod handler;
mod ksm;
mod segment;
mod wire;

pub use client::{Client, ClientError};

use crate::ksm::KsmController;
use crate::log_limit::LogLimiter;
use crate::registry::Registry;
use crate::segment::SegmentStore;
use accept::accept_loop;
use conns::{ConnTable, Deadline};
use memout_protocol::codec::{self, encode_frame, read_frame};
use memout_protocol::control::{ErrorKind, Request, Response};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use thiserror::Error;

/// Errors starting the control socket.
#[derive(Debug, Error)]
pub enum Error {
    /// Another live server answers on the path.
    #[error("{0} is in use by a running memout server")]
    InUse(PathBuf),
    /// Something that is not a socket is at the path; it is left alone.
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// Creating, binding or securing the socket failed.
    #[error("cannot create the control socket at {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The accept thread could not start.
    #[error("cannot start the control socket thread: {0}")]
    Spawn(std::io::Error),
}

/// `Result` with this module's [`enum@Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// How the control socket is served.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// Socket path.
    pub path: PathBuf,
    /// Most connections served at once; more are refused with an error reply.
    pub max_clients: usize,
    /// A client that takes longer than this to send the rest of a frame, or to accept a reply,
    /// is disconnected.
    pub io_timeout: Duration,
    /// A connection idle this long is closed.
    pub idle_timeout: Duration,
    /// A connection must finish its handshake this soon after connecting.
    pub hello_timeout: Duration,
}

impl ControlConfig {
    /// Defaults for `path`: 16 clients, 2 s per frame and per reply, 2 s to say hello, 10 min
    /// idle timeout.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            max_clients: 16,
            io_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(600),
            hello_timeout: Duration::from_secs(2),
        }
    }

    /// The default socket path: `$MEMOUT_RUNTIME_DIR/memout.sock`, else
    /// `$XDG_RUNTIME_DIR/memout/memout.sock` for non-root users, else `/run/memout/memout.sock`.
    pub fn default_path() -> PathBuf {
        if let Some(d) = std::env::var_os("MEMOUT_RUNTIME_DIR") {
            return PathBuf::from(d).join("memout.sock");
        }
        if !nix::unistd::geteuid().is_root() {
            if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
                return PathBuf::from(d).join("memout").join("memout.sock");
            }
        }
        PathBuf::from("/run/memout/memout.sock")
    }
}

/// Counters of the control socket.
#[derive(Debug, Default)]
pub struct ControlStats {
    /// Connections accepted and served.
    pub accepted: AtomicU64,
    /// Connections refused because of the peer's uid.
    pub refused_peers: AtomicU64,
    /// Connections refused because every slot was busy with a request.
    pub refused_busy: AtomicU64,
    /// Connections closed to make room for a new one (no handshake yet, or idle).
    pub evicted: AtomicU64,
    /// Connections closed because they sent no hello in time.
    pub hello_timeouts: AtomicU64,
    /// Frames that were oversized, truncated or did not decode.
    pub bad_frames: AtomicU64,
    /// Requests answered (errors included).
    pub requests: AtomicU64,
    /// Connections open now.
    pub active: AtomicU64,
}

struct Shared {
    cfg: ControlConfig,
    registry: Arc<Registry>,
    /// The server's KSM controller (`memoutctl ksm`), if it has one.
    ksm: Option<Arc<KsmController>>,
    /// The server's shared segments (`memoutctl segment`), if it has them.
    segments: Option<Arc<SegmentStore>>,
    stats: Arc<ControlStats>,
    stop: AtomicBool,
    log_limit: LogLimiter,
    uid: u32,
    conns: ConnTable,
    /// Refused connections being drained before they close.
    lingering: AtomicUsize,
}

/// A running control socket; dropping it stops accepting, closes idle connections within a
/// second, and removes the socket file.
pub struct ControlServer {
    shared: Arc<Shared>,
    wake: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl ControlServer {
    /// Binds the socket and starts serving `registry`'s guests.
    pub fn start(
        cfg: ControlConfig,
        registry: Arc<Registry>,
        ksm: Option<Arc<KsmController>>,
        segments: Option<Arc<SegmentStore>>,
    ) -> Result<Self> {
        let listener = bind_private(&cfg.path)?;
        listener
            .set_nonblocking(true)
            .map_err(|source| Error::Bind {
                path: cfg.path.clone(),
                source,
            })?;
        let wake = Arc::new(
            EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC)
                .map_err(|e| Error::Spawn(e.into()))?,
        );
        let shared = Arc::new(Shared {
            cfg,
            registry,
            ksm,
            segments,
            stats: Arc::default(),
            stop: AtomicBool::new(false),
            log_limit: LogLimiter::default(),
            uid: nix::unistd::geteuid().as_raw(),
            conns: ConnTable::default(),
            lingering: AtomicUsize::new(0),
        });
        let thread = {
            let (shared, wake) = (shared.clone(), wake.clone());
            std::thread::Builder::new()
                .name("memout-control".into())
                .spawn(move || accept_loop(&listener, &shared, &wake))
                .map_err(Error::Spawn)?
        };
        tracing::info!(path = %shared.cfg.path.display(), "control socket listening");
        Ok(Self {
            shared,
            wake,
            thread: Some(thread),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.shared.cfg.path
    }

    /// The socket's counters.
    pub fn stats(&self) -> Arc<ControlStats> {
        self.shared.stats.clone()
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Relaxed);
        let _ = self.wake.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.shared.conns.close_all();
        let _ = std::fs::remove_file(&self.shared.cfg.path);
    }
}

/// Creates the socket at `path` with mode 0600, replacing a stale socket but nothing else.
fn bind_private(path: &Path) -> Result<UnixListener> {
    let err = |source| Error::Bind {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(err)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(Error::InUse(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(err)?; // stale: its server is gone
        }
        Ok(_) => return Err(Error::NotASocket(path.to_path_buf())),
        Err(_) => {}
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(err)?;
    let secured = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = secured {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(listener)
}

fn reply_and_close(mut stream: UnixStream, r: &Response) {
    if let Ok(f) = encode_frame(r) {
        let _ = stream.write_all(&f);
    }
}

/// Waits until the client sent something, the server stops, or `until` passes.
fn wait_readable(stream: &UnixStream, shared: &Shared, until: Instant) -> bool {
    while !shared.stop.load(Relaxed) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let ms = left.as_millis().clamp(1, 500) as u16;
        let mut fds = [PollFd::new(stream.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(n) if n > 0 => return true,
            _ => {}
        }
    }
    false
}

/// One connection: handshake (within the hello timeout), then request/response until the
/// client leaves, idles out, or is closed to make room.
fn serve(mut stream: UnixStream, shared: &Shared, id: u64, uid: u32, pid: i32) {
    let span = tracing::info_span!("control", uid, pid);
    let _g = span.enter();
    let hello_by = Instant::now() + shared.cfg.hello_timeout;
    let mut hello = false;
    loop {
        let wait_until = if hello {
            Instant::now() + shared.cfg.idle_timeout
        } else {
            hello_by
        };
        if !wait_readable(&stream, shared, wait_until) {
            if !hello && !shared.stop.load(Relaxed) {
                shared.stats.hello_timeouts.fetch_add(1, Relaxed);
                let why = format!("no hello within {:?}", shared.cfg.hello_timeout);
                reply_and_close(stream, &Response::error(ErrorKind::Handshake, why));
            }
            return;
        }
        // The whole frame must arrive by its deadline, however it is spread out.
        let mut frame_by = Instant::now() + shared.cfg.io_timeout;
        if !hello {
            frame_by = frame_by.min(hello_by);
        }
        let read = read_frame(&mut Deadline::new(&stream, frame_by));
        shared.conns.set_busy(id, true);
        let response = match read {
            Ok(payload) => match codec::decode::<Request>(&payload) {
                Ok(req) => handler::handle(
                    &handler::Served {
                        registry: &shared.registry,
                        ksm: shared.ksm.as_deref(),
                        segments: shared.segments.as_deref(),
                    },
                    req,
                    &mut hello,
                ),
                Err(e) => {
                    shared.stats.bad_frames.fetch_add(1, Relaxed);
                    Response::error(ErrorKind::Malformed, e.to_string())
                }
            },
            Err(codec::Error::Closed) => return,
            Err(e @ codec::Error::TooLarge(_)) => {
                shared.stats.bad_frames.fetch_add(1, Relaxed);
                // The rest of the stream cannot be framed any more: answer, then close.
                return reply_and_close(
                    stream,
                    &Response::error(ErrorKind::TooLarge, e.to_string()),
                );
            }
            Err(e) => {
                shared.stats.bad_frames.fetch_add(1, Relaxed);
                tracing::debug!("control connection dropped: {e}");
                return reply_and_close(
                    stream,
                    &Response::error(ErrorKind::Malformed, e.to_string()),
                );
            }
        };
        if hello {
            shared.conns.set_hello(id);
        }
        shared.stats.requests.fetch_add(1, Relaxed);
        let close = matches!(
            response,
            Response::Error {
                kind: ErrorKind::Version | ErrorKind::Handshake,
                ..
            }
        ) && !hello;
        let frame = match encode_frame(&response) {
            Ok(f) => f,
            // Only a list of very many guests gets this large; say so rather than hang up.
            Err(e) => match encode_frame(&Response::error(
                ErrorKind::Failed,
                format!("the reply does not fit in a frame ({e}); ask for guests one by one"),
            )) {
                Ok(f) => f,
                Err(_) => return,
            },
        };
        if stream.write_all(&frame).is_err() || close {
            return; // a client that does not read its replies is dropped
        }
        shared.conns.set_busy(id, false);
    }
}
