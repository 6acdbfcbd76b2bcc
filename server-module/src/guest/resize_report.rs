//! What a resize did: the server's record of one resize, in pages. The control socket turns it
//! into its wire form (`memout_protocol::control::ResizeProgress`, in bytes) at the edge.

use super::{EvictError, GuestFault};
use std::time::Duration;
use thiserror::Error;

/// Where a resize is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeStage {
    /// Waiting for the guest to release frames (until the deadline).
    Releasing,
    /// Evicting what is still above the target to the backing store.
    Evicting,
    /// The guest's host memory is at or below the target.
    Done,
    /// The resize ended above its target; [`ResizeReport::shortfall`] says why.
    Incomplete,
    /// A newer resize replaced this one before it ended.
    Superseded,
}

impl ResizeStage {
    /// True once the resize will not change any more.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Done | Self::Incomplete | Self::Superseded)
    }
}

/// Why a resize ended above its target.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum Shortfall {
    /// The server stopped the guest while the resize ran.
    #[error("the guest was stopped: {0}")]
    Stopped(#[source] GuestFault),
    /// The guest kept frames above the target and has no backing store to evict them to.
    #[error("the guest still holds {pages} pages above the target and has no backing store")]
    NoBackingStore {
        /// Pages above the target when the deadline passed.
        pages: u64,
    },
    /// Evicting what was above the target failed.
    #[error("eviction failed: {0}")]
    Evict(#[source] EvictError),
    /// The frames above the target were busy (being filled or freed); the resident cap the
    /// resize left keeps evicting as the guest runs.
    #[error("frames busy; the budget check keeps evicting as the guest runs")]
    FramesBusy,
    /// A guest of an external VMM kept frames above the target past the deadline. memout
    /// cannot evict memory another process maps; the guest's balloon may still release it.
    #[error(
        "the guest still holds {pages} pages above the target; memout cannot evict a guest of \
         another VMM, and its balloon keeps releasing toward the target"
    )]
    NotReleased {
        /// Pages above the target when the deadline passed.
        pages: u64,
    },
}

/// One resize: what was asked, where it is, and what it did so far. Sizes are in pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResizeReport {
    /// Increases with every resize of this guest.
    pub id: u64,
    /// Requested size before.
    pub from_pages: u64,
    /// Requested size asked for.
    pub target_pages: u64,
    /// Where it is.
    pub stage: ResizeStage,
    /// Host pages dropped at once because their frames were free in the guest's view.
    pub freed_pages: u64,
    /// Frames the guest gave back after the server asked.
    pub released_pages: u64,
    /// Pages evicted after the deadline.
    pub evicted_pages: u64,
    /// Time since the resize started (its total, once final).
    pub elapsed: Duration,
    /// Frames the guest holds now.
    pub allocated_pages: u64,
    /// Host pages behind the guest's frames now (resident as
    /// [`GuestStatsSnapshot::resident_pages`](crate::GuestStatsSnapshot::resident_pages)
    /// counts it).
    pub resident_pages: u64,
    /// Why an `Incomplete` resize fell short.
    pub shortfall: Option<Shortfall>,
}
