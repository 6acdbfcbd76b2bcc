//! Why a benchmark could not run or could not be measured.

use crate::runner::Outcome;
use thiserror::Error;

/// A benchmark failure; nothing is reported as measured.
#[derive(Debug, Error)]
pub enum Error {
    /// A built-in guest image is missing.
    #[error("guest image {0:?} is not built in")]
    NoImage(&'static str),
    /// A built-in guest image does not parse.
    #[error("guest image {name:?}: {source}")]
    Image {
        /// The image.
        name: &'static str,
        /// Why.
        #[source]
        source: crate::image::Error,
    },
    /// Serving a QEMU guest failed.
    #[error(transparent)]
    Qemu(#[from] crate::qemu::Error),
    /// Building the Linux image or running QEMU failed.
    #[error(transparent)]
    Launch(#[from] crate::qemu::launch::Error),
    /// The baseline's RAM file could not be made.
    #[error(transparent)]
    RamFile(#[from] memout_server::file_guest::Error),
    /// A Linux guest's freed memory did not leave the host in time.
    #[error("{side}: {left_mib} MiB short of 90 % given back {after:?} after the free")]
    NotGivenBack {
        /// Which side.
        side: String,
        /// How far from the target.
        left_mib: u64,
        /// How long it was given.
        after: std::time::Duration,
    },
    /// The server could not be built or refused the guest.
    #[error(transparent)]
    Server(#[from] memout_server::server::Error),
    /// A run could not be set up.
    #[error(transparent)]
    Run(#[from] crate::runner::Error),
    /// A guest did not end well.
    #[error("{side}: {outcome}\n{output}")]
    GuestFailed {
        /// Which side of the comparison.
        side: String,
        /// How it ended.
        outcome: Outcome,
        /// What it printed.
        output: String,
    },
    /// A run recorded no value to measure.
    #[error("{side}: the run recorded no {what}")]
    NoMeasurement {
        /// Which side.
        side: String,
        /// What was missing.
        what: &'static str,
    },
    /// A store or baseline file failed.
    #[error("store or baseline file: {0}")]
    Io(#[from] std::io::Error),
    /// Host memory for a baseline could not be mapped or dropped.
    #[error(transparent)]
    HostMem(#[from] memout_server::host_mem::Error),
    /// The harness's eviction failed.
    #[error(transparent)]
    Evict(#[from] memout_server::EvictError),
    /// A resize was refused.
    #[error(transparent)]
    Resize(#[from] memout_server::ResizeError),
    /// A resize did not reach its target.
    #[error("resize ended {stage:?} instead of done")]
    ResizeEnded {
        /// Its final stage.
        stage: memout_server::ResizeStage,
        /// Why it fell short, if it did.
        #[source]
        shortfall: Option<memout_server::Shortfall>,
    },
    /// The guest never filled its memory, so there was nothing to resize.
    #[error("the guest did not fill its memory in time")]
    NotFilled,
    /// A thread running a guest panicked.
    #[error("the runner thread panicked")]
    RunnerPanicked,
    /// `--mib` is out of range for the scenario.
    #[error("--mib {mib} is outside {min}..={max} for this scenario")]
    Mib {
        /// Asked for.
        mib: u64,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },
    /// `--zero-pct` is above 100.
    #[error("--zero-pct {0} is above 100")]
    ZeroPercent(u32),
    /// The Redis store of `bench swap --store`.
    #[error(transparent)]
    Redis(#[from] memout_server::redis_store::Error),
    /// The raw SET/GET baseline against the same Redis server.
    #[error("raw Redis baseline: {0}")]
    RedisBaseline(#[from] redis::RedisError),
}

/// `Result` with this module's [`enum@Error`].
pub type Result<T> = std::result::Result<T, Error>;
