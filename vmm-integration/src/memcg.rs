//! A temporary memory cgroup with a limit, for experiments that give memout and the kernel's
//! swap the same host memory: created under a unique name, a child process runs in it, and it
//! is removed when dropped (also when the caller fails part-way, and by
//! [`crate::cleanup`]'s signal thread if the process is interrupted). cgroup v1
//! (`/sys/fs/cgroup/memory`) and v2 (a `memory` controller in `/sys/fs/cgroup`) are supported;
//! this project's host has v1, so v2 is the less-tested path.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use thiserror::Error;

const V1_ROOT: &str = "/sys/fs/cgroup/memory";
const V2_ROOT: &str = "/sys/fs/cgroup";

/// Why a cgroup could not be made or used.
#[derive(Debug, Error)]
pub enum Error {
    /// Neither a cgroup v1 memory controller nor a v2 one is available.
    #[error(
        "no memory cgroup controller (neither {V1_ROOT} nor a v2 `memory` controller in {V2_ROOT})"
    )]
    NoController,
    /// A cgroup file could not be read or written (not root, a name clash).
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// A memory cgroup with a limit; removed when dropped.
#[derive(Debug)]
pub struct MemoryCgroup {
    path: PathBuf,
    version: Version,
}

fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn detect() -> Result<Version> {
    if Path::new(V1_ROOT).join("memory.limit_in_bytes").exists() {
        return Ok(Version::V1);
    }
    let controllers =
        std::fs::read_to_string(Path::new(V2_ROOT).join("cgroup.controllers")).unwrap_or_default();
    if controllers.split_whitespace().any(|c| c == "memory") {
        return Ok(Version::V2);
    }
    Err(Error::NoController)
}

impl MemoryCgroup {
    /// Makes a cgroup named with `tag` and the process id, whose memory (swap not counted) is
    /// limited to `limit_bytes`.
    pub fn create(tag: &str, limit_bytes: u64) -> Result<Self> {
        let version = detect()?;
        let root = match version {
            Version::V1 => V1_ROOT,
            Version::V2 => V2_ROOT,
        };
        let path = Path::new(root).join(format!("memout-{tag}-{}", std::process::id()));
        crate::cleanup::register_cgroup(&path);
        if let Err(source) = std::fs::create_dir(&path) {
            crate::cleanup::unregister_cgroup(&path);
            return Err(Error::Io { path, source });
        }
        let cg = Self { path, version };
        let file = match version {
            Version::V1 => "memory.limit_in_bytes",
            Version::V2 => "memory.max",
        };
        write(&cg.path.join(file), &limit_bytes.to_string())?;
        Ok(cg)
    }

    /// Runs `program args…` inside the cgroup (it enters before `exec`, so all its memory is
    /// charged here) and waits for it.
    pub fn run(&self, program: &Path, args: &[String]) -> Result<Output> {
        let procs = self.path.join("cgroup.procs");
        Command::new("sh")
            .arg("-c")
            .arg(r#"echo $$ > "$0" && exec "$@""#)
            .arg(&procs)
            .arg(program)
            .args(args)
            .output()
            .map_err(|source| Error::Io {
                path: procs,
                source,
            })
    }

    fn read_u64(&self, file: &str) -> Option<u64> {
        std::fs::read_to_string(self.path.join(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Memory in use now, bytes.
    pub fn usage(&self) -> Option<u64> {
        self.read_u64(match self.version {
            Version::V1 => "memory.usage_in_bytes",
            Version::V2 => "memory.current",
        })
    }

    /// The largest usage so far, bytes (v2: needs Linux 5.19's `memory.peak`).
    pub fn peak(&self) -> Option<u64> {
        self.read_u64(match self.version {
            Version::V1 => "memory.max_usage_in_bytes",
            Version::V2 => "memory.peak",
        })
    }

    /// How many times the OOM killer ran in it.
    pub fn oom_kills(&self) -> u64 {
        let file = match self.version {
            Version::V1 => "memory.oom_control",
            Version::V2 => "memory.events",
        };
        std::fs::read_to_string(self.path.join(file))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        crate::cleanup::remove_cgroup(&self.path);
        crate::cleanup::unregister_cgroup(&self.path);
    }
}
