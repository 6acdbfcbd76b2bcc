//! Serving one QEMU guest until it is done (the `memout qemu` command): until SIGINT or
//! SIGTERM, or, if memout started QEMU itself, until that QEMU exits.

use super::{QemuGuest, QemuGuestConfig};
use memout_server::Server;
use memout_server::file_guest::FileGuestStats;
use nix::sys::signal::{SigSet, Signal, kill};
use nix::unistd::{Pid, getpid};
use parking_lot::Mutex;
use std::path::Path;
use std::sync::Arc;
use thiserror::Error;

/// Why serving could not start or wait.
#[derive(Debug, Error)]
pub enum Error {
    /// Setting up the guest.
    #[error(transparent)]
    Guest(#[from] super::Error),
    /// The server behind the control socket.
    #[error(transparent)]
    Server(#[from] memout_server::server::Error),
    /// The control socket.
    #[error(transparent)]
    Control(#[from] memout_server::control::Error),
    /// Listing the guest on the control socket (its name is in use).
    #[error(transparent)]
    Register(#[from] memout_server::ConfigError),
    /// QEMU could not be started.
    #[error("cannot run qemu-system-x86_64: {0}")]
    Spawn(#[source] std::io::Error),
    /// Blocking or waiting for the signals failed.
    #[error("cannot wait for a signal: {0}")]
    Signal(#[source] nix::errno::Errno),
}

/// Serves `cfg`'s guest, listed on a control socket at `control` if given. Calls `announce`
/// with the QEMU options the guest needs and the control socket's path. With `qemu_args`
/// empty, serves until SIGINT or SIGTERM; otherwise starts `qemu-system-x86_64` with those
/// options and `qemu_args`, and serves until it exits (a signal stops it too). Returns the
/// guest's statistics at the end.
pub fn serve_until_done(
    cfg: &QemuGuestConfig,
    control: Option<&Path>,
    qemu_args: &[String],
    announce: impl FnOnce(&[String], Option<&Path>),
) -> Result<FileGuestStats, Error> {
    // Blocked before any thread starts, so these signals wait for `wait()` below.
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGINT);
    stop.add(Signal::SIGTERM);
    stop.thread_block().map_err(Error::Signal)?;
    let g = QemuGuest::start(cfg)?;
    let server = Server::builder().build()?;
    g.register(&server)?;
    let control = control.map(|p| server.serve_control(p)).transpose()?;
    let args = g.qemu_args();
    announce(&args, control.as_ref().map(|c| c.path()));
    let child = if qemu_args.is_empty() {
        None
    } else {
        let child = std::process::Command::new("qemu-system-x86_64")
            .args(&args)
            .args(qemu_args)
            .spawn()
            .map_err(Error::Spawn)?;
        let child = Arc::new(Mutex::new(child));
        // When QEMU exits, wake the wait below as a SIGTERM would. The child is reaped only
        // under the lock, so its pid stays QEMU's while the lock is held.
        let watched = child.clone();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(std::time::Duration::from_millis(50));
                if !matches!(watched.lock().try_wait(), Ok(None)) {
                    let _ = kill(getpid(), Signal::SIGTERM);
                    return;
                }
            }
        });
        Some(child)
    };
    stop.wait().map_err(Error::Signal)?;
    if let Some(child) = child {
        let mut c = child.lock();
        if matches!(c.try_wait(), Ok(None)) {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            let _ = c.wait();
        }
    }
    Ok(g.guest().stats())
}
