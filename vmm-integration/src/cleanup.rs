//! Undoing what an experiment or benchmark changed on the host when the process is stopped by
//! a signal (Ctrl-C, `kill`): swapfiles it switched on are switched off and removed, memory
//! cgroups it made are emptied (their processes killed) and removed. Normal ends and failures
//! undo through `Drop` ([`crate::swapfile::Swapfile`], [`crate::memcg::MemoryCgroup`]); a
//! signal would skip that, so [`install`] starts a thread that waits for SIGINT, SIGTERM or
//! SIGHUP, undoes everything still registered, and exits with 128 + the signal's number.

use parking_lot::Mutex;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;

/// Swapfiles switched on by this process and not yet removed.
static SWAPFILES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
/// Memory cgroups made by this process and not yet removed.
static CGROUPS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static INSTALL: Once = Once::new();

/// Registers a swapfile to remove if the process is stopped by a signal; call before making
/// it (this blocks for good once a signal is being handled).
pub fn register_swapfile(path: &Path) {
    SWAPFILES.lock().push(path.to_path_buf());
}

/// Forgets a swapfile (it was removed the normal way).
pub fn unregister_swapfile(path: &Path) {
    SWAPFILES.lock().retain(|p| p != path);
}

/// Switches a swapfile off and removes it (errors ignored: it may be gone already).
pub fn remove_swapfile(path: &Path) {
    let _ = Command::new("swapoff").arg(path).output();
    let _ = std::fs::remove_file(path);
}

/// Registers a memory cgroup to remove if the process is stopped by a signal; call before
/// making it (this blocks for good once a signal is being handled).
pub fn register_cgroup(path: &Path) {
    CGROUPS.lock().push(path.to_path_buf());
}

/// Forgets a cgroup (it was removed the normal way).
pub fn unregister_cgroup(path: &Path) {
    CGROUPS.lock().retain(|p| p != path);
}

/// Kills what still runs in a cgroup and removes it, waiting up to a second for the killed
/// processes to leave (errors ignored: it may be gone already).
pub fn remove_cgroup(path: &Path) {
    for _ in 0..50 {
        let procs = std::fs::read_to_string(path.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        match std::fs::remove_dir(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            _ => return,
        }
    }
}

/// Tells stderr what the signal thread does. Never panics (unlike `eprintln!`): when the
/// process that read our stderr is gone, the clean-up must still happen.
fn say(what: std::fmt::Arguments<'_>, sig: i32) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "memout: signal {sig}: {what}");
}

/// Starts the signal thread (once per process). Call before changing the host.
pub fn install() -> std::io::Result<()> {
    let mut result = Ok(());
    INSTALL.call_once(|| {
        result = Signals::new([SIGINT, SIGTERM, SIGHUP]).and_then(|mut signals| {
            std::thread::Builder::new()
                .name("memout-cleanup".into())
                .spawn(move || {
                    if let Some(sig) = signals.forever().next() {
                        // The locks stay held until the exit: a thread that goes on meanwhile
                        // blocks in `register_*`, before it makes anything (callers register
                        // first).
                        let mut cgroups = CGROUPS.lock();
                        let mut swapfiles = SWAPFILES.lock();
                        for c in cgroups.drain(..) {
                            say(format_args!("removing cgroup {}", c.display()), sig);
                            remove_cgroup(&c);
                        }
                        for p in swapfiles.drain(..) {
                            say(format_args!("removing swapfile {}", p.display()), sig);
                            remove_swapfile(&p);
                        }
                        std::process::exit(128 + sig);
                    }
                })
                .map(|_| ())
        });
    });
    result
}
