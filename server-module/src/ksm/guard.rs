//! The KSM guard: a small process the controller's owner starts when it first changes KSM's
//! knobs. It waits for its owner to end (end of file on its stdin, which only the owner
//! holds); unless the owner said `released` first (it restored the knobs itself), it puts the
//! saved settings back. So a memout killed with SIGKILL still leaves the system's KSM
//! settings as it found them.

use super::sysfs::{self, KsmSettings, KsmSysfs};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use thiserror::Error;

/// What the guard's owner writes before it lets go, when it restored the knobs itself.
const RELEASED: &str = "released";

/// Why the guard could not restore the settings.
#[derive(Debug, Error)]
pub enum Error {
    /// The saved-settings file is missing or unreadable.
    #[error("cannot read the saved KSM settings {path}: {source}")]
    Saved {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// It holds something else.
    #[error("{0} does not hold saved KSM settings")]
    Format(PathBuf),
    /// Writing the knobs failed.
    #[error(transparent)]
    Sysfs(#[from] sysfs::Error),
}

/// `Result` with this module's [`enum@Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// The owner's handle on a running guard.
#[derive(Debug)]
pub struct Guard {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Guard {
    /// Starts `cmd` (which runs [`run_guard`]) in a process group of its own, so a Ctrl-C
    /// meant for the owner does not end it too.
    pub fn spawn(mut cmd: Command) -> std::io::Result<Self> {
        use std::os::unix::process::CommandExt;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()?;
        let stdin = child.stdin.take();
        Ok(Self { child, stdin })
    }

    /// The owner restored the settings itself: the guard ends without touching them.
    pub fn release(mut self) {
        if let Some(mut s) = self.stdin.take() {
            let _ = writeln!(s, "{RELEASED}");
        }
        let _ = self.child.wait();
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // Not released: end of file, so the guard restores (as if the owner had died).
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// Writes `settings` to `path`, for the guard.
pub fn save(path: &Path, settings: &KsmSettings) -> std::io::Result<()> {
    std::fs::write(path, settings.to_text())
}

/// Restores the settings saved at `path` into `sysfs`, and removes the file.
pub fn restore(sysfs: &KsmSysfs, path: &Path) -> Result<KsmSettings> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Saved {
        path: path.to_path_buf(),
        source,
    })?;
    let s = KsmSettings::from_text(&text).ok_or_else(|| Error::Format(path.to_path_buf()))?;
    sysfs.apply(&s)?;
    let _ = std::fs::remove_file(path);
    Ok(s)
}

/// The guard's body: reads `owner` (its stdin) to the end; unless the owner wrote `released`,
/// restores the settings saved at `saved`. Returns what it restored, if anything.
pub fn run_guard(
    owner: impl std::io::Read,
    sysfs: &KsmSysfs,
    saved: &Path,
) -> Result<Option<KsmSettings>> {
    let mut released = false;
    for line in std::io::BufReader::new(owner).lines() {
        match line {
            Ok(l) => released |= l.trim() == RELEASED,
            Err(_) => break,
        }
    }
    if released {
        return Ok(None);
    }
    restore(sysfs, saved).map(Some)
}
