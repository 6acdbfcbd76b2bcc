//! `memout experiment`: measurements that answer a research question, run the same way every
//! time and kept with everything needed to reproduce them. Every experiment writes into its own
//! directory (refused if it already holds results, unless told to overwrite): its CSV tables,
//! an SVG chart next to each CSV, a Markdown summary, and `manifest.json` (parameters, machine
//! facts, version, timings). `--quick` is the CI-sized run.
//!
//! - [`ksm`], [`ksm_linux`], [`ksm_report`], [`ksm_summary`]: seed 000's KSM experiment on
//!   memout's KVM guests and on Linux guests under QEMU;
//! - [`swap`], [`swap_report`]: swap pressure, memout's store against the kernel's swap;
//! - [`interference`]: seed 004, a target guest beside 0–16 dummy guests;
//! - [`chart`], [`lines`]: grouped bar charts and line plots (plotters, SVG) with their CSV.

pub mod chart;
pub mod interference;
pub mod ksm;
pub mod ksm_linux;
pub mod ksm_report;
pub mod ksm_summary;
pub mod lines;
pub mod swap;
pub mod swap_report;

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};
use thiserror::Error;

/// Why an experiment could not run or record its results.
#[derive(Debug, Error)]
pub enum Error {
    /// The output directory already holds results.
    #[error("{0} already holds results; choose another --out or pass --force to overwrite")]
    Exists(PathBuf),
    /// Writing a result file failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Drawing a chart failed.
    #[error("cannot draw {path}: {message}")]
    Chart {
        /// The chart's file.
        path: PathBuf,
        /// What plotters said.
        message: String,
    },
    /// A part of the experiment the host cannot run (a missing kernel feature), named.
    #[error("{0}")]
    Unsupported(String),
    /// The server.
    #[error(transparent)]
    Server(#[from] memout_server::server::Error),
    /// The KSM controller.
    #[error(transparent)]
    Ksm(#[from] memout_server::ksm::controller::Error),
    /// KSM's files.
    #[error(transparent)]
    KsmSysfs(#[from] memout_server::ksm::sysfs::Error),
    /// Running a guest.
    #[error(transparent)]
    Run(#[from] crate::runner::Error),
    /// A guest ended badly (its data changed, or it failed).
    #[error("guest {name} failed: {outcome}")]
    Guest {
        /// Guest name.
        name: String,
        /// How it ended.
        outcome: String,
    },
    /// Building or running a Linux guest under QEMU.
    #[error(transparent)]
    Linux(#[from] crate::qemu::launch::Error),
    /// A memory cgroup for a measurement could not be made or used.
    #[error(transparent)]
    Cgroup(#[from] crate::memcg::Error),
    /// A guest did not reach its working set in time.
    #[error("guest {0} did not fill its memory in time")]
    Fill(String),
}

/// `Result` with this module's [`enum@Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Which guests an experiment runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GuestKind {
    /// memout's own KVM guests (freestanding C at CPL3), served by memout.
    Memout,
    /// Linux guests under QEMU's software emulation, with the Debian cloud kernel.
    Linux,
}

impl std::fmt::Display for GuestKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Memout => "memout",
            Self::Linux => "linux",
        })
    }
}

impl std::str::FromStr for GuestKind {
    type Err = UnknownGuestKind;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "memout" => Ok(Self::Memout),
            "linux" => Ok(Self::Linux),
            _ => Err(UnknownGuestKind(s.to_string())),
        }
    }
}

/// A guest kind that is neither `memout` nor `linux`.
#[derive(Debug, Error)]
#[error("unknown guest kind {0:?} (memout, linux)")]
pub struct UnknownGuestKind(pub String);

/// Options every experiment takes.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the results go.
    pub out: PathBuf,
    /// The CI-sized run.
    pub quick: bool,
    /// Times each measurement is repeated (its figures are the median).
    pub repeat: usize,
    /// Overwrite a directory that holds results.
    pub force: bool,
    /// Where experiments put scratch files (memout's store, a swapfile).
    pub scratch_dir: PathBuf,
    /// swap-pressure: a Redis server to evict to as well (a third mode).
    pub redis: Option<String>,
    /// Which guests run, in this order.
    pub guests: Vec<GuestKind>,
    /// Draw progress bars (on a terminal).
    pub progress: bool,
    /// A `memout` executable whose `ksm-guard` restores KSM's settings if the experiment is
    /// killed while it holds them (`None`: no guard).
    pub ksm_guard: Option<PathBuf>,
}

/// The command that guards KSM settings saved by `cfg` (`exe ksm-guard --saved .. --root ..`).
pub fn ksm_guard_command(
    exe: &Path,
    cfg: &memout_server::ksm::ControllerConfig,
) -> std::process::Command {
    let mut c = std::process::Command::new(exe);
    c.arg("ksm-guard")
        .arg("--saved")
        .arg(&cfg.saved_path)
        .arg("--root")
        .arg(cfg.sysfs.root());
    c
}

/// A progress bar for `total` measurements (hidden unless the options ask for one).
pub fn progress(opts: &Options, total: u64) -> indicatif::ProgressBar {
    let bar = if opts.progress {
        indicatif::ProgressBar::new(total)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:<34} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// Creates the output directory, refusing one that holds a manifest unless `force`.
pub fn prepare(opts: &Options) -> Result<()> {
    if opts.out.join("manifest.json").exists() && !opts.force {
        return Err(Error::Exists(opts.out.clone()));
    }
    std::fs::create_dir_all(&opts.out).map_err(|source| Error::Write {
        path: opts.out.clone(),
        source,
    })
}

/// Writes `text` to `dir/name`.
pub fn write(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text).map_err(|source| Error::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// Seconds since the epoch.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What the machine is: kernel, CPUs, memory, the output directory's file system.
pub fn machine_facts(out: &Path) -> Value {
    let uname = nix::sys::utsname::uname().ok();
    let meminfo = memout_server::procfs::meminfo().unwrap_or_default();
    let disk = nix::sys::statvfs::statvfs(out).ok().map(|s| {
        json!({
            "total_bytes": s.blocks() * s.fragment_size(),
            "free_bytes": s.blocks_available() * s.fragment_size(),
        })
    });
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string());
    json!({
        "kernel": uname.as_ref().map(|u| u.release().to_string_lossy().into_owned()),
        "machine": uname.as_ref().map(|u| u.machine().to_string_lossy().into_owned()),
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu_model": cpu_model,
        "mem_total_kib": memout_server::procfs::parse_meminfo_kib(&meminfo, "MemTotal"),
        "out_dir_disk": disk,
    })
}

/// Writes `manifest.json`: the experiment, its parameters, the machine, memout's version,
/// when it ran and for how long.
pub fn write_manifest(
    opts: &Options,
    name: &str,
    params: Value,
    started: u64,
    files: &[PathBuf],
) -> Result<PathBuf> {
    let m = json!({
        "experiment": name,
        "memout_version": env!("CARGO_PKG_VERSION"),
        "quick": opts.quick,
        "repeat": opts.repeat,
        "parameters": params,
        "machine": machine_facts(&opts.out),
        "started_unix": started,
        "seconds": now_unix().saturating_sub(started),
        "files": files.iter().filter_map(|f| f.file_name()).map(|f| f.to_string_lossy().into_owned()).collect::<Vec<_>>(),
    });
    write(
        &opts.out,
        "manifest.json",
        &serde_json::to_string_pretty(&m).expect("JSON values serialize"),
    )
}
