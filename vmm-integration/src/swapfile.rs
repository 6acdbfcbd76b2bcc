//! A temporary swapfile, for benchmarks and experiments that compare memout with the kernel's
//! swap: made with `fallocate`, `mkswap` and `swapon` under a unique name, and switched off and
//! removed when dropped, also when the caller fails part-way, and by [`crate::cleanup`]'s
//! signal thread if the process is interrupted.

use std::path::{Path, PathBuf};
use std::process::Command;
use thiserror::Error;

/// Why a swapfile could not be made.
#[derive(Debug, Error)]
pub enum Error {
    /// A command could not be run at all.
    #[error("cannot run {cmd}: {source}")]
    Spawn {
        /// The command.
        cmd: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A command failed (not root, no room, a filesystem that cannot hold swap).
    #[error("{cmd} failed: {stderr}")]
    Failed {
        /// The command.
        cmd: &'static str,
        /// What it printed.
        stderr: String,
    },
}

/// An active swapfile; gone when dropped.
#[derive(Debug)]
pub struct Swapfile {
    path: PathBuf,
}

fn run(cmd: &'static str, args: &[&str]) -> Result<(), Error> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|source| Error::Spawn { cmd, source })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Failed {
            cmd,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

impl Swapfile {
    /// Makes and switches on a swapfile of `bytes` in `dir`, named with `tag` and the process id.
    pub fn create(dir: &Path, tag: &str, bytes: u64) -> Result<Self, Error> {
        let path = dir.join(format!("memout-swap-{tag}-{}", std::process::id()));
        crate::cleanup::register_swapfile(&path);
        let s = Self { path }; // from here, dropping it removes what was made
        let p = s.path.to_string_lossy().into_owned();
        run("fallocate", &["-l", &bytes.to_string(), &p])?;
        run("chmod", &["600", &p])?;
        run("mkswap", &[&p])?;
        run("swapon", &[&p])?;
        Ok(s)
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Swapfile {
    fn drop(&mut self) {
        crate::cleanup::remove_swapfile(&self.path);
        crate::cleanup::unregister_swapfile(&self.path);
    }
}
