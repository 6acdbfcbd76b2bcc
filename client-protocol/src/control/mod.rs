//! The control-socket protocol: what operators' tools (`memoutctl`) and the server say to each
//! other over a Unix stream socket.
//!
//! Every message is one frame (see [`crate::codec`]): a little-endian `u32` length, then that
//! many bytes of a bincode-2 encoded [`Request`] or [`Response`]. The client's first request
//! must be [`Request::Hello`] with [`CONTROL_VERSION`]; the server answers
//! [`Response::Hello`] or an [`ErrorKind::Version`] error and closes. After that, each
//! request gets exactly one response, in order.
//!
//! Sizes are bytes. A resize sets the guest's *requested* size; what the guest really holds
//! and what the host really backs are reported next to it ([`GuestStatus`]), like virtio-mem's
//! requested vs plugged size.

use bincode::{Decode, Encode};

mod ksm;
mod segment;

pub use ksm::{GuestKsm, KsmKnobs, KsmMode, KsmReport};
pub use segment::SegmentStatus;

/// Version of this protocol; a server refuses clients that speak another.
pub const CONTROL_VERSION: u32 = 4;

/// Largest frame payload either side accepts, in bytes.
pub const MAX_FRAME: usize = 64 * 1024;

/// A population policy, as the control protocol names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum Policy {
    /// One frame per fault.
    PerPage,
    /// The 2 MiB chunk around the fault.
    FaultAround,
    /// Populated ahead of the guest by worker threads.
    Eager,
}

impl Policy {
    /// The name tools show and accept.
    pub fn name(self) -> &'static str {
        match self {
            Self::PerPage => "per-page",
            Self::FaultAround => "fault-around",
            Self::Eager => "eager",
        }
    }

    /// Parses [`name`](Self::name).
    pub fn from_name(s: &str) -> Option<Self> {
        [Self::PerPage, Self::FaultAround, Self::Eager]
            .into_iter()
            .find(|p| p.name() == s)
    }
}

/// Which VMM runs a guest, and so what memout can do for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VmmKind {
    /// memout's own VMM: memout serves the guest's page faults (demand population, eviction,
    /// budgets, policies).
    Memout,
    /// Another VMM (QEMU) maps the guest's RAM; memout frees what the guest gives back and
    /// resizes it through its balloon, but sees none of its faults (no eviction, budget or
    /// policy).
    External,
}

impl VmmKind {
    /// The name tools show.
    pub fn name(self) -> &'static str {
        match self {
            Self::Memout => "memout",
            Self::External => "external",
        }
    }
}

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Request {
    /// The handshake; must come first.
    Hello {
        /// [`CONTROL_VERSION`] of the client.
        version: u32,
        /// The client's name, for the server's log.
        client: String,
    },
    /// All guests the server serves.
    List,
    /// One guest's state and statistics.
    Status {
        /// Guest name.
        guest: String,
    },
    /// Sets the guest's requested size (see [`ResizeProgress`]).
    Resize {
        /// Guest name.
        guest: String,
        /// The new requested size in bytes: a non-zero multiple of 4 KiB, at most the region.
        bytes: u64,
        /// How long the guest gets to release frames itself before the server evicts what
        /// is still above the target, in milliseconds.
        release_deadline_ms: u32,
        /// Answer only when the resize has ended (else at once, with the resize under way).
        wait: bool,
    },
    /// The guest's latest resize.
    ResizeStatus {
        /// Guest name.
        guest: String,
    },
    /// Sets (or clears, with `None`) the resident budget.
    SetBudget {
        /// Guest name.
        guest: String,
        /// Budget in bytes (a non-zero multiple of 4 KiB).
        bytes: Option<u64>,
    },
    /// Evicts up to `bytes` of the guest's coldest memory now.
    Evict {
        /// Guest name.
        guest: String,
        /// Bytes to evict (a non-zero multiple of 4 KiB).
        bytes: u64,
    },
    /// Changes the population policy.
    SetPolicy {
        /// Guest name.
        guest: String,
        /// The new policy.
        policy: Policy,
    },
    /// KSM's figures ([`Response::Ksm`]); with `set`, switches the server's KSM controller
    /// first.
    Ksm {
        /// The new mode, if any.
        set: Option<KsmMode>,
    },
    /// Lets KSM merge a guest's memory, or stops it (and unmerges it).
    SetMergeable {
        /// Guest name.
        guest: String,
        /// Mergeable or not.
        on: bool,
    },
    /// Registers the bytes of a file (read by the server) as shared segment `name`.
    RegisterSegment {
        /// Segment name (1 to 63 of `A-Za-z0-9._-`).
        name: String,
        /// The file, on the server's host.
        path: String,
        /// Guests that may map it; empty: every guest.
        guests: Vec<String>,
    },
    /// Every shared segment ([`Response::Segments`]).
    ListSegments,
    /// Removes a segment: at once if no guest maps it, else with its last mapping
    /// ([`Response::SegmentRemoved`]).
    RemoveSegment {
        /// Segment name.
        name: String,
    },
}

/// Where a resize is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ResizePhase {
    /// Waiting for the guest to release frames (until the deadline).
    Releasing,
    /// Evicting what is still above the target to the backing store.
    Evicting,
    /// The guest's host memory is at or below the target.
    Done,
    /// The resize ended above its target (see the note: e.g. no backing store).
    Incomplete,
    /// A newer resize replaced this one before it ended.
    Superseded,
}

impl ResizePhase {
    /// True once the resize will not change any more.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Done | Self::Incomplete | Self::Superseded)
    }

    /// Lower-case name for tools.
    pub fn name(self) -> &'static str {
        match self {
            Self::Releasing => "releasing",
            Self::Evicting => "evicting",
            Self::Done => "done",
            Self::Incomplete => "incomplete",
            Self::Superseded => "superseded",
        }
    }
}

/// What a resize did so far. Serializes (serde) as `memoutctl --json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, serde::Serialize)]
pub struct ResizeProgress {
    /// Increases with every resize of this guest.
    pub id: u64,
    /// Requested size before.
    pub from_bytes: u64,
    /// Requested size asked for.
    pub target_bytes: u64,
    /// Where it is.
    pub phase: ResizePhase,
    /// Host memory dropped at once because the frames were free in the guest's view.
    pub freed_bytes: u64,
    /// Frames the guest gave back after the server asked.
    pub released_bytes: u64,
    /// Bytes evicted to the backing store after the deadline.
    pub evicted_bytes: u64,
    /// Time since the resize started (or its total, once final), in microseconds.
    pub elapsed_us: u64,
    /// Frames the guest holds now.
    pub allocated_bytes: u64,
    /// Host memory behind the guest's frames now.
    pub resident_bytes: u64,
    /// Why a resize is incomplete, or other detail.
    pub note: Option<String>,
}

/// One guest's state. Serializes (serde) as `memoutctl --json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, serde::Serialize)]
pub struct GuestStatus {
    /// Guest name.
    pub name: String,
    /// Which VMM runs it.
    pub vmm: VmmKind,
    /// Size of the outsourced region (the most it can ever be given).
    pub region_bytes: u64,
    /// Requested size: the guest may hold at most this much (its quota).
    pub requested_bytes: u64,
    /// Smallest size a resize may ask for (the guest's pinned minimum).
    pub min_bytes: u64,
    /// Frames the guest holds.
    pub allocated_bytes: u64,
    /// Host memory behind them.
    pub resident_bytes: u64,
    /// Their contents in the backing store (or kernel swap).
    pub evicted_bytes: u64,
    /// Cap on resident memory set by an operator, if any.
    pub budget_bytes: Option<u64>,
    /// Population policy name.
    pub policy: String,
    /// Eviction mode name.
    pub eviction: String,
    /// Faults served.
    pub faults: u64,
    /// Pages populated.
    pub populated_pages: u64,
    /// Pages the guest freed.
    pub freed_pages: u64,
    /// Pages evicted.
    pub evicted_pages_total: u64,
    /// Pages swapped back in.
    pub swapped_in_pages: u64,
    /// Failed evictions.
    pub evict_errors: u64,
    /// The last eviction error.
    pub last_evict_error: Option<String>,
    /// Why the server stopped the guest, if it did.
    pub stopped: Option<String>,
    /// The guest's latest resize, if any.
    pub resize: Option<ResizeProgress>,
    /// KSM may merge its memory.
    pub mergeable: bool,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum ErrorKind {
    /// The frame did not decode as a request.
    Malformed,
    /// The frame's length is above [`MAX_FRAME`]; the server closes the connection.
    TooLarge,
    /// The client speaks another protocol version; the server closes the connection.
    Version,
    /// The first request was not [`Request::Hello`], or a second hello came.
    Handshake,
    /// No guest has that name.
    UnknownGuest,
    /// A size is zero, unaligned, above the region or below the guest's minimum.
    InvalidSize,
    /// The guest cannot do that (e.g. a budget without a backing store).
    NotSupported,
    /// The server tried and failed; the message says why.
    Failed,
    /// The peer may not use this socket (not root or the server's user), or the server has
    /// too many clients; the server closes the connection.
    Denied,
}

/// What the server answers.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Response {
    /// Handshake accepted.
    Hello {
        /// The server's [`CONTROL_VERSION`].
        version: u32,
        /// The server's name and version, for display.
        server: String,
    },
    /// Answer to [`Request::List`].
    Guests(Vec<GuestStatus>),
    /// Answer to [`Request::Status`].
    Status(Box<GuestStatus>),
    /// Answer to [`Request::Resize`] and [`Request::ResizeStatus`].
    Resize(ResizeProgress),
    /// Answer to [`Request::Ksm`].
    Ksm(Box<KsmReport>),
    /// Answer to [`Request::ListSegments`].
    Segments(Vec<SegmentStatus>),
    /// Answer to [`Request::RemoveSegment`].
    SegmentRemoved {
        /// Mappings still to end before it goes (0: gone).
        pending_mappings: u32,
    },
    /// Answer to [`Request::Evict`].
    Evicted {
        /// Bytes evicted.
        bytes: u64,
    },
    /// The request was carried out.
    Done,
    /// The request was refused; nothing changed.
    Error {
        /// Category.
        kind: ErrorKind,
        /// What was wrong, for people.
        message: String,
    },
}

impl Response {
    /// An error response.
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self::Error {
            kind,
            message: message.into(),
        }
    }
}
