//! The control protocol's KSM messages: the controller's mode, and the report `memoutctl ksm
//! status` prints (system counters, the controller's state, each guest's setting).

use bincode::{Decode, Encode};

/// What the server's KSM controller does with ksmd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KsmMode {
    /// Hands off: the system's own settings.
    Off,
    /// ksmd runs at the controller's rate.
    On,
    /// ksmtuned's policy: run and scale with memory pressure, stop without it.
    Auto,
}

impl KsmMode {
    /// The name tools show and accept.
    pub fn name(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::On => "on",
            Self::Auto => "auto",
        }
    }

    /// Parses [`name`](Self::name).
    pub fn from_name(s: &str) -> Option<Self> {
        [Self::Off, Self::On, Self::Auto]
            .into_iter()
            .find(|m| m.name() == s)
    }
}

/// ksmd's three knobs the controller sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode, serde::Serialize)]
pub struct KsmKnobs {
    /// `run` (0 stopped, 1 running, 2 unmerging).
    pub run: u32,
    /// `pages_to_scan`.
    pub pages_to_scan: u32,
    /// `sleep_millisecs`.
    pub sleep_millisecs: u32,
}

/// One guest's KSM state.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, serde::Serialize)]
pub struct GuestKsm {
    /// Guest name.
    pub name: String,
    /// KSM may merge its memory.
    pub mergeable: bool,
    /// Its pages KSM merged now (`None` where memout cannot tell: an external VMM's guest).
    pub merged_pages: Option<u64>,
}

/// Answer to [`Request::Ksm`](super::Request::Ksm). Serializes as `memoutctl ksm status
/// --json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, serde::Serialize)]
pub struct KsmReport {
    /// The controller's mode.
    pub mode: KsmMode,
    /// Why KSM cannot be used on this host, if it cannot (the figures below are then zero).
    pub unavailable: Option<String>,
    /// The knobs now.
    pub knobs: KsmKnobs,
    /// What the controller restores when turned off, while it holds the knobs.
    pub saved: Option<KsmKnobs>,
    /// Pages KSM keeps one copy of.
    pub pages_shared: u64,
    /// Mappings of those beyond the first: pages saved.
    pub pages_sharing: u64,
    /// Pages scanned but unique so far.
    pub pages_unshared: u64,
    /// Pages changing too fast to merge.
    pub pages_volatile: u64,
    /// Complete scans of all mergeable memory.
    pub full_scans: u64,
    /// Bytes saved minus KSM's metadata (kernels that have it).
    pub general_profit: Option<i64>,
    /// Pages of the server's process KSM merged (`ksm_merging_pages`, kernels that have it).
    pub process_merging_pages: Option<u64>,
    /// `auto`'s latest failure.
    pub last_error: Option<String>,
    /// Each guest.
    pub guests: Vec<GuestKsm>,
}
