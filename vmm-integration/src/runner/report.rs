//! What a run did: how it ended ([`Outcome`]), what the guest printed, its checkpoints and
//! evictions, and the server's statistics at the end ([`RunReport`]).

use crate::plain::Discard;
use memout_server::{GuestFault, GuestStatsSnapshot};
use std::time::Duration;

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The guest exited through the exit port with this code.
    Exited(i32),
    /// The server stopped the guest.
    Stopped(GuestFault),
    /// The guest took an exception (no IDT: a shutdown exit) or halted.
    Crashed(String),
    /// The run exceeded its time limit.
    TimedOut(Duration),
    /// The guest did something the VMM does not support (unknown port, unmapped address).
    Refused(String),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exited(c) => write!(f, "guest exited with code {c}"),
            Self::Stopped(fault) => write!(f, "guest stopped by the server: {fault}"),
            Self::Crashed(m) => write!(f, "guest crashed: {m}"),
            Self::TimedOut(t) => write!(f, "guest timed out after {t:?}"),
            Self::Refused(m) => write!(f, "guest refused: {m}"),
        }
    }
}

/// A point the guest marked with [`PORT_CHECKPOINT`](super::PORT_CHECKPOINT).
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The value the guest wrote.
    pub id: u32,
    /// Host time since the vCPU first ran, less the time the harness spent on checkpoints.
    pub at: Duration,
    /// Host RSS of the outsourced region.
    pub region_rss: u64,
    /// Server statistics at that moment.
    pub stats: GuestStatsSnapshot,
    /// VM exits so far, as the VMM counted them (this checkpoint's own exit not included).
    pub exits: ExitCounts,
}

/// VM exits the VMM saw (each return from `KVM_RUN`), not the guest's word.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExitCounts {
    /// All exits.
    pub total: u64,
    /// Doorbell writes (the ring RPC path).
    pub doorbells: u64,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// How it ended.
    pub outcome: Outcome,
    /// Lines the guest printed.
    pub output: Vec<String>,
    /// Checkpoints in order.
    pub checkpoints: Vec<Checkpoint>,
    /// Server statistics at the end.
    pub stats: GuestStatsSnapshot,
    /// Host RSS of the outsourced region at the end.
    pub region_rss: u64,
    /// Wall time of the vCPU loop.
    pub elapsed: Duration,
    /// The timed discard, for [`Backing::Plain`](super::Backing::Plain) with `discard_at_exit`.
    pub discard: Option<Discard>,
    /// Evictions the guest asked for through [`PORT_EVICT_ALL`](super::PORT_EVICT_ALL).
    pub evictions: Vec<EvictRecord>,
    /// VM exits of the whole run.
    pub exits: ExitCounts,
}

/// One eviction done for [`PORT_EVICT_ALL`](super::PORT_EVICT_ALL).
#[derive(Debug, Clone)]
pub struct EvictRecord {
    /// How long the eviction took.
    pub took: Duration,
    /// Bytes evicted, or the error.
    pub result: std::result::Result<u64, memout_server::EvictError>,
}

impl RunReport {
    /// Host time between checkpoints `a` and `b`, if both were recorded.
    pub fn between(&self, a: u32, b: u32) -> Option<Duration> {
        let at = |id| self.checkpoints.iter().find(|c| c.id == id).map(|c| c.at);
        Some(at(b)?.saturating_sub(at(a)?))
    }
}

impl RunReport {
    /// True if the guest exited with code 0.
    pub fn passed(&self) -> bool {
        self.outcome == Outcome::Exited(0)
    }
}
