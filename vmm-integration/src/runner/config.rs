//! How to run a guest: [`RunConfig`] (size, quota, policy, eviction, time limit, the words the
//! harness ports return) and what backs the region ([`Backing`]).

use memout_server::{GuestHandle, PopulatePolicy};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32};
use std::time::Duration;

/// How to run a guest.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Name for logs.
    pub name: String,
    /// Outsourced region size in bytes.
    pub region_size: u64,
    /// Quota in bytes.
    pub quota_bytes: u64,
    /// Population policy.
    pub policy: PopulatePolicy,
    /// Value the guest reads from [`PORT_ARG`](super::PORT_ARG).
    pub arg: u32,
    /// Parameters the guest reads through [`super::PORT_PARAM`] (the `memwork` guest's are in
    /// `memout_harness.h`).
    pub params: Vec<u32>,
    /// The run is stopped after this long.
    pub timeout: Duration,
    /// Print guest output lines to stdout as they arrive.
    pub echo: bool,
    /// What backs the region.
    pub backing: Backing,
    /// Called with the guest's handle before the vCPU first runs (memout backing only).
    pub setup: Option<GuestSetup>,
    /// Where evicted memory goes.
    pub eviction: memout_server::Eviction,
    /// Resident budget in bytes.
    pub budget_bytes: Option<u64>,
    /// The guest's pinned minimum in bytes (no resize goes below it).
    pub min_bytes: u64,
    /// Set it to ask the guest to finish (it reads [`PORT_FINISH`](super::PORT_FINISH)).
    pub finish: Arc<AtomicBool>,
    /// A word the guest reads from [`PORT_FLAGS`](super::PORT_FLAGS) while it runs.
    pub flags: Arc<AtomicU32>,
    /// How many times the guest has read [`flags`](Self::flags) (counted after each read): two
    /// reads after a change, the guest has certainly seen it.
    pub flags_reads: Arc<std::sync::atomic::AtomicU64>,
    /// Serve the server's control socket here while the guest runs (bound once the guest has
    /// been accepted, so a refused configuration never touches the socket path).
    pub control: Option<std::path::PathBuf>,
    /// Offer the guest the exit-free fast path (on by default; see
    /// `memout_protocol::fastpath`).
    pub fastpath: bool,
    /// Let KSM merge the guest's memory from the start (`GuestConfig::mergeable`).
    pub mergeable: bool,
    /// Give the guest a window for shared segments (`layout::SEGMENT_GPA`; on by default).
    pub segments: bool,
    /// How long the fault thread polls for the next fault before sleeping
    /// (`GuestRef::set_fault_spin`; 0 by default).
    pub fault_spin: Duration,
}

/// A hook that sees the guest's handle before it runs (tests use it to inject faults).
#[derive(Clone)]
pub struct GuestSetup(pub Arc<dyn Fn(&GuestHandle) + Send + Sync>);

impl std::fmt::Debug for GuestSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GuestSetup(..)")
    }
}

/// What backs the guest's region at `REGION_GPA`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// memout: the server allocates frames and backs them with userfaultfd.
    Memout,
    /// A plain anonymous memslot (kernel demand paging, the machine's THP default), no memout
    /// server: the baseline of benchmarks (see [`crate::plain`]).
    Plain {
        /// Time a discard of the region after the guest exits.
        discard_at_exit: bool,
        /// From the guest's first checkpoint on, a helper thread populates the first
        /// `quota_bytes` of the region ahead of the guest (`MADV_POPULATE_WRITE`).
        populate_ahead: bool,
    },
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            name: "guest".into(),
            region_size: 4 << 30,
            quota_bytes: 1 << 30,
            policy: PopulatePolicy::default(),
            arg: 0,
            params: Vec::new(),
            timeout: Duration::from_secs(120),
            echo: false,
            backing: Backing::Memout,
            setup: None,
            eviction: memout_server::Eviction::None,
            budget_bytes: None,
            min_bytes: 0,
            finish: Arc::default(),
            flags: Arc::default(),
            flags_reads: Arc::default(),
            control: None,
            fastpath: true,
            mergeable: false,
            segments: true,
            fault_spin: Duration::ZERO,
        }
    }
}
