//! A guest's shared segments: MAP_SEGMENT and UNMAP_SEGMENT checked against its window, the
//! access rule and what it already maps, then carried out by the VMM's mapper; writes the VMM
//! saw it refuse are counted and logged; its mappings end with the guest.

use super::GuestCore;
use crate::segment::{Refusal, Segment, SegmentMapping, SegmentStore, SegmentWindow};
use memout_protocol::ring::Status;
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// One mapped segment.
#[derive(Debug)]
struct Mapped {
    gpa: u64,
    size: u64,
    segment: Arc<Segment>,
}

/// A guest's segments.
#[derive(Debug)]
pub(crate) struct GuestSegments {
    guest: String,
    window: Option<SegmentWindow>,
    store: Arc<SegmentStore>,
    mapped: Mutex<Vec<Mapped>>,
    writes: AtomicU64,
}

impl GuestSegments {
    pub(crate) fn new(
        guest: &str,
        window: Option<SegmentWindow>,
        store: Arc<SegmentStore>,
    ) -> Self {
        Self {
            guest: guest.to_string(),
            window,
            store,
            mapped: Mutex::default(),
            writes: AtomicU64::new(0),
        }
    }
}

impl Drop for GuestSegments {
    fn drop(&mut self) {
        // The VM goes with the guest: only the counts are the server's to undo.
        for m in self.mapped.get_mut().drain(..) {
            self.store.release(&m.segment, &self.guest);
        }
    }
}

impl GuestCore {
    /// MAP_SEGMENT: maps segment `name` at `gpa` (2 MiB aligned, the whole segment inside the
    /// guest's window, clear of its other segments). Returns (content bytes, bytes mapped).
    pub(crate) fn map_segment(&self, name: &str, gpa: u64) -> Result<(u64, u64), Status> {
        let s = &self.segments;
        let w = s.window.as_ref().ok_or(Status::BadOpcode)?;
        if gpa % crate::segment::SEGMENT_ALIGN != 0 {
            return Err(Status::Invalid);
        }
        let seg = s.store.acquire(name, &s.guest).map_err(|r| match r {
            Refusal::Unknown => Status::NoSegment,
            Refusal::Denied => Status::Denied,
        })?;
        let size = seg.memory().size();
        let fail = |st| {
            s.store.release(&seg, &s.guest);
            Err(st)
        };
        let end = match gpa.checked_add(size) {
            Some(e) if gpa >= w.gpa && e <= w.gpa + w.size => e,
            _ if size > w.size => return fail(Status::NoMemory),
            _ => return fail(Status::Invalid),
        };
        let mut mapped = s.mapped.lock();
        if mapped.iter().any(|m| gpa < m.gpa + m.size && m.gpa < end) {
            drop(mapped);
            return fail(Status::InUse);
        }
        if let Err(e) = w.mapper.map(SegmentMapping::new(gpa, seg.clone())) {
            drop(mapped);
            if let Some(suppressed) = self.log_limit.allow() {
                tracing::error!(parent: &self.span, %e, name, suppressed, "the VMM could not map a segment");
            }
            return fail(Status::HostError);
        }
        tracing::info!(parent: &self.span, name, gpa, size, "segment mapped");
        let bytes = seg.memory().len();
        mapped.push(Mapped {
            gpa,
            size,
            segment: seg,
        });
        Ok((bytes, size))
    }

    /// UNMAP_SEGMENT of the segment mapped at `gpa`.
    pub(crate) fn unmap_segment(&self, gpa: u64) -> Result<(), Status> {
        let s = &self.segments;
        let w = s.window.as_ref().ok_or(Status::BadOpcode)?;
        let mut mapped = s.mapped.lock();
        let i = mapped
            .iter()
            .position(|m| m.gpa == gpa)
            .ok_or(Status::InUse)?;
        if let Err(e) = w.mapper.unmap(gpa) {
            if let Some(suppressed) = self.log_limit.allow() {
                tracing::error!(parent: &self.span, %e, gpa, suppressed, "the VMM could not unmap a segment");
            }
            return Err(Status::HostError);
        }
        let m = mapped.swap_remove(i);
        s.store.release(&m.segment, &s.guest);
        Ok(())
    }

    /// The VMM refused a guest write at `gpa`: true (counted and logged) if it lies in one of
    /// the guest's segments; false if not (then it is some other fault of the VMM's).
    pub fn segment_write_refused(&self, gpa: u64) -> bool {
        let s = &self.segments;
        let Some(name) = s
            .mapped
            .lock()
            .iter()
            .find(|m| (m.gpa..m.gpa + m.size).contains(&gpa))
            .map(|m| m.segment.name().to_string())
        else {
            return false;
        };
        s.writes.fetch_add(1, Relaxed);
        if let Some(suppressed) = self.log_limit.allow() {
            tracing::warn!(parent: &self.span, gpa, segment = %name, suppressed, "guest write to a read-only segment refused");
        }
        true
    }

    /// Guest writes to its segments that were refused.
    pub fn segment_writes_refused(&self) -> u64 {
        self.segments.writes.load(Relaxed)
    }

    /// The segments the guest maps: (name, guest-physical address, bytes mapped).
    pub fn mapped_segments(&self) -> Vec<(String, u64, u64)> {
        self.segments
            .mapped
            .lock()
            .iter()
            .map(|m| (m.segment.name().to_string(), m.gpa, m.size))
            .collect()
    }
}
