//! Shared segments (seed 002): named, read-only objects (a library's bytes, say) that the host
//! loads once and maps into any number of guests' guest-physical space where each guest asks,
//! instead of waiting for KSM to find the identical pages. One host copy however many guests
//! map it; reference-counted; a guest's write is refused (the VMM maps it read-only) and
//! reported.
//!
//! - [`memory`]: the sealed memfd and memout's read-only mapping of it;
//! - [`store`]: the server's segments by name, access rule, counted mappings, removal;
//! - [`SegmentMapper`]: what a VMM provides to put a segment into a guest (a read-only memslot).

pub mod memory;
pub mod store;

pub use memory::{SEGMENT_ALIGN, SegmentMemory};
pub use store::{Access, Refusal, Removal, Segment, SegmentInfo, SegmentStore};

use std::sync::Arc;

/// A segment as a VMM maps it into one guest: at [`gpa`](Self::gpa), [`size`](Self::size)
/// bytes of memout's read-only mapping at [`host_addr`](Self::host_addr). The memory stays
/// mapped as long as this value (or a clone) exists: keep it until memout asks to unmap.
#[derive(Debug, Clone)]
pub struct SegmentMapping {
    gpa: u64,
    segment: Arc<Segment>,
}

impl SegmentMapping {
    pub(crate) fn new(gpa: u64, segment: Arc<Segment>) -> Self {
        Self { gpa, segment }
    }

    /// Guest-physical address to map it at (2 MiB aligned).
    pub fn gpa(&self) -> u64 {
        self.gpa
    }

    /// Bytes to map (a multiple of 2 MiB).
    pub fn size(&self) -> u64 {
        self.segment.memory().size()
    }

    /// memout's read-only mapping of the segment: valid while this value exists.
    pub fn host_addr(&self) -> usize {
        self.segment.memory().host_addr()
    }

    /// The segment's name.
    pub fn name(&self) -> &str {
        self.segment.name()
    }
}

/// What a VMM does for memout to put a segment into a guest, or take it out.
pub trait SegmentMapper: Send + Sync {
    /// Maps `m` read-only into the guest (KVM: a memslot with `KVM_MEM_READONLY`), and keeps
    /// `m` until [`unmap`](Self::unmap) of its address. Called on the guest's vCPU thread,
    /// while the vCPU is out of the guest.
    fn map(&self, m: SegmentMapping) -> std::io::Result<()>;
    /// Takes the mapping at `gpa` out of the guest.
    fn unmap(&self, gpa: u64) -> std::io::Result<()>;
}

/// Where a guest may map segments, and who maps them for it.
#[derive(Clone)]
pub struct SegmentWindow {
    /// Guest-physical base (2 MiB aligned).
    pub gpa: u64,
    /// Size in bytes (a multiple of 2 MiB).
    pub size: u64,
    /// The VMM's mapper.
    pub mapper: Arc<dyn SegmentMapper>,
}

impl std::fmt::Debug for SegmentWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentWindow")
            .field("gpa", &self.gpa)
            .field("size", &self.size)
            .finish()
    }
}
