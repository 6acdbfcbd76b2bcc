//! A guest's KSM setting: its region marked mergeable (or not), checked against what the
//! kernel really did, and how many of its pages KSM merged.

use super::GuestCore;
use crate::host_mem;
use std::sync::atomic::Ordering::Relaxed;
use thiserror::Error;

/// Why a guest's memory could not be made mergeable (or unmergeable).
#[derive(Debug, Error)]
pub enum MergeableError {
    /// madvise failed (a kernel without KSM answers `EINVAL`).
    #[error("KSM cannot take the guest's memory: {0}")]
    Advise(#[from] host_mem::Error),
    /// The kernel accepted the advice but did not mark the mapping: memory KSM cannot merge
    /// (shared or special).
    #[error(
        "the kernel did not mark the mapping at {0:#x} mergeable: KSM cannot merge this memory"
    )]
    Ignored(usize),
    /// The check of the mapping failed.
    #[error("cannot read /proc/self/smaps to check the mapping: {0}")]
    Smaps(#[source] std::io::Error),
}

impl GuestCore {
    /// Lets KSM merge the guest's memory (`MADV_MERGEABLE` on its whole region), or stops it
    /// and unmerges what it had merged. Checks that the kernel marked every mapping of the
    /// region (`mg` in smaps); if not, undoes the advice and says so.
    pub fn set_mergeable(&self, on: bool) -> Result<(), MergeableError> {
        self.region.set_mergeable(on)?;
        if on {
            let (start, end) = (self.region.addr(), self.region.addr() + self.region.size());
            let vmas = crate::procfs::vmas().map_err(MergeableError::Smaps)?;
            if let Some(v) = vmas
                .iter()
                .filter(|v| v.end > start && v.start < end)
                .find(|v| !v.flags.iter().any(|f| f == "mg"))
            {
                let _ = self.region.set_mergeable(false);
                return Err(MergeableError::Ignored(v.start));
            }
        }
        self.mergeable.store(on, Relaxed);
        tracing::info!(parent: &self.span, on, "KSM mergeable");
        Ok(())
    }

    /// True while the guest's memory is mergeable.
    pub fn mergeable(&self) -> bool {
        self.mergeable.load(Relaxed)
    }

    /// How many of the guest's pages KSM merged now (root only: it reads frame flags).
    pub fn ksm_pages(&self) -> std::io::Result<u64> {
        crate::ksm::pages::ksm_pages(self.region.addr(), self.region.size())
    }
}
