//! Undoing what an experiment or benchmark changed on the host when the process is stopped by
//! a signal (Ctrl-C, `kill`): swapfiles it switched on are switched off and removed. Normal
//! ends and failures undo through `Drop` ([`crate::swapfile::Swapfile`]); a signal would skip
//! that, so [`install`] starts a thread that waits for SIGINT, SIGTERM or SIGHUP, undoes
//! everything still registered, and exits with 128 + the signal's number.

use parking_lot::Mutex;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;

/// Swapfiles switched on by this process and not yet removed.
static SWAPFILES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static INSTALL: Once = Once::new();

/// Registers a swapfile to remove if the process is stopped by a signal.
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

/// Starts the signal thread (once per process). Call before changing the host.
pub fn install() -> std::io::Result<()> {
    let mut result = Ok(());
    INSTALL.call_once(|| {
        result = Signals::new([SIGINT, SIGTERM, SIGHUP]).and_then(|mut signals| {
            std::thread::Builder::new()
                .name("memout-cleanup".into())
                .spawn(move || {
                    if let Some(sig) = signals.forever().next() {
                        let pending = std::mem::take(&mut *SWAPFILES.lock());
                        for p in &pending {
                            eprintln!("memout: signal {sig}: removing swapfile {}", p.display());
                            remove_swapfile(p);
                        }
                        std::process::exit(128 + sig);
                    }
                })
                .map(|_| ())
        });
    });
    result
}
