//! Host→guest messages: the host writes the guest's current quota and how many pages it asks
//! the guest to release into the ring header, then bumps `host_msg_prod`. The guest polls
//! `host_msg_prod != host_msg_cons` (no interrupt is needed, and none exists for a CPL3 guest
//! program) and reads the two fields; they are state, not queued messages, so posts coalesce.

use memout_protocol::ring::{
    PAGE_SIZE, RING_HOST_MSG_PROD_OFFSET, RING_QUOTA_OFFSET, RING_RELEASE_OFFSET,
};
use parking_lot::Mutex;
use std::sync::atomic::Ordering;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Writes host→guest messages into one guest's ring header.
pub(crate) struct HostMailbox {
    shared: GuestMemoryMmap,
    ring_gpa: u64,
    /// Messages posted so far: the host's own copy of `host_msg_prod`, never read back from
    /// guest memory (the guest can write that field). The lock serialises posts and
    /// refreshes, and the values are computed under it, so the last write is never stale.
    posted: Mutex<u32>,
}

impl HostMailbox {
    pub(crate) fn new(shared: GuestMemoryMmap, ring_gpa: u64) -> Self {
        Self {
            shared,
            ring_gpa,
            posted: Mutex::new(0),
        }
    }

    fn at(&self, off: usize) -> GuestAddress {
        GuestAddress(self.ring_gpa + off as u64)
    }

    /// Writes the state fields, `(quota, release)` as `limits` computes them now, without
    /// notifying (done on every doorbell, while the vCPU is out of the guest).
    ///
    /// `limits` runs under the mailbox lock: a refresh that raced a resize's post can then
    /// never overwrite the post's new values with ones computed before the resize (a Linux
    /// guest, which reads the fields once per message, waited forever on a stale quota).
    pub(crate) fn refresh(&self, limits: impl FnOnce() -> (u64, u64)) {
        let _one = self.posted.lock();
        let (quota, release) = limits();
        self.write(quota, release);
    }

    fn write(&self, quota_pages: u64, release_pages: u64) {
        // The ring header was validated to lie in shared memory when the guest was added.
        let _ = self
            .shared
            .store(quota_pages, self.at(RING_QUOTA_OFFSET), Ordering::Relaxed);
        let _ = self.shared.store(
            release_pages,
            self.at(RING_RELEASE_OFFSET),
            Ordering::Relaxed,
        );
    }

    /// Writes the state fields (`limits` computed under the lock, as for
    /// [`refresh`](Self::refresh)) and tells the guest they changed.
    pub(crate) fn post(&self, limits: impl FnOnce() -> (u64, u64)) {
        let mut posted = self.posted.lock();
        let (quota_pages, release_pages) = limits();
        self.write(quota_pages, release_pages);
        *posted = posted.wrapping_add(1);
        // Release: the guest that sees the new count sees the fields written before it.
        let _ = self.shared.store(
            *posted,
            self.at(RING_HOST_MSG_PROD_OFFSET),
            Ordering::Release,
        );
        tracing::debug!(
            quota = quota_pages * PAGE_SIZE,
            release = release_pages * PAGE_SIZE,
            "host message posted"
        );
    }
}
