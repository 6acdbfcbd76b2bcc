//! Accepting control connections: check the peer (`SO_PEERCRED`: root or the server's own uid),
//! admit it to the connection table (making room if needed) on a thread of its own, or refuse it
//! with a reply the client can read.

use super::conns::{Admission, Deadline};
use super::{Shared, serve};
use memout_protocol::codec::encode_frame;
use memout_protocol::control::{ErrorKind, Response};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::EventFd;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// Accepts connections until the server stops.
pub(super) fn accept_loop(listener: &UnixListener, shared: &Arc<Shared>, wake: &EventFd) {
    while !shared.stop.load(Relaxed) {
        let mut fds = [
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(wake.as_fd(), PollFlags::POLLIN),
        ];
        if poll(&mut fds, PollTimeout::NONE).is_err() {
            continue; // EINTR
        }
        loop {
            match listener.accept() {
                Ok((stream, _)) => admit(stream, shared),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!("control socket accept failed: {e}");
                    break;
                }
            }
        }
    }
}

/// Checks the peer and hands the connection to its own thread.
fn admit(stream: UnixStream, shared: &Arc<Shared>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(shared.cfg.io_timeout));
    let cred = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials);
    let (uid, pid) = match &cred {
        Ok(c) => (c.uid(), c.pid()),
        Err(_) => (u32::MAX, -1),
    };
    if uid != 0 && uid != shared.uid {
        shared.stats.refused_peers.fetch_add(1, Relaxed);
        if let Some(suppressed) = shared.log_limit.allow() {
            tracing::warn!(
                uid,
                pid,
                suppressed,
                "control connection refused: peer is neither root nor uid {}",
                shared.uid
            );
        }
        let why = format!("uid {uid} may not use this socket");
        return refuse(stream, shared, Response::error(ErrorKind::Denied, why));
    }
    let id = match shared.conns.admit(&stream, shared.cfg.max_clients) {
        Admission::Admitted(id) => id,
        Admission::AdmittedByEvicting(id) => {
            shared.stats.evicted.fetch_add(1, Relaxed);
            id
        }
        Admission::Full => {
            shared.stats.refused_busy.fetch_add(1, Relaxed);
            let why = "every control connection is busy with a request; try again";
            return refuse(stream, shared, Response::error(ErrorKind::Denied, why));
        }
    };
    shared.stats.active.fetch_add(1, Relaxed);
    shared.stats.accepted.fetch_add(1, Relaxed);
    let s = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("memout-control-conn".into())
        .spawn(move || {
            serve(stream, &s, id, uid, pid);
            s.conns.remove(id);
            s.stats.active.fetch_sub(1, Relaxed);
        });
    if let Err(e) = spawned {
        shared.conns.remove(id);
        shared.stats.active.fetch_sub(1, Relaxed);
        tracing::warn!("cannot start a control connection thread: {e}");
    }
}

/// Most refused connections drained at once; beyond it they are closed at once.
const MAX_LINGERING: usize = 8;
/// How long a refused connection is drained.
const LINGER: Duration = Duration::from_millis(500);

/// Sends `r` and closes, after reading what the client sends for a moment: a client that
/// writes its hello after the server closed would otherwise see a broken pipe, not `r`.
fn refuse(stream: UnixStream, shared: &Arc<Shared>, r: Response) {
    let mut stream = stream;
    if let Ok(f) = encode_frame(&r) {
        let _ = stream.write_all(&f);
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
    if shared.lingering.fetch_add(1, Relaxed) >= MAX_LINGERING {
        shared.lingering.fetch_sub(1, Relaxed);
        return;
    }
    let s = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("memout-control-refused".into())
        .spawn(move || {
            let mut sink = [0u8; 4096];
            let mut r = Deadline::new(&stream, Instant::now() + LINGER);
            while matches!(std::io::Read::read(&mut r, &mut sink), Ok(n) if n > 0) {}
            s.lingering.fetch_sub(1, Relaxed);
        });
    if spawned.is_err() {
        shared.lingering.fetch_sub(1, Relaxed);
    }
}
