//! Kernel-swap eviction: memout asks the kernel to page the guest's coldest chunks out
//! (`MADV_PAGEOUT`) and the kernel swaps them back in on access, without telling memout.
//!
//! So memout's resident map means *backed* here (in RAM or in swap), and what is really in
//! RAM is asked of the kernel with `mincore` over the backed runs: cheap (a byte a page), so
//! the budget is checked every [`KERNEL_BUDGET_TICK`] and after faults. Only pages that really
//! left RAM count as paged out. When a sweep pages nothing out (swap full or switched off),
//! memout says so once and backs off instead of burning CPU on futile sweeps.

use super::{CHUNK_PAGES, EvictError, GuestCore};
use crate::extents::Run;
use memout_protocol::ring::PAGE_SIZE;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// How often a kernel-mode budget is re-checked (the kernel swaps in behind memout's back).
pub const KERNEL_BUDGET_TICK: Duration = Duration::from_millis(10);
/// Pause after a sweep that paged nothing out, doubled each time up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Back-off state of kernel-mode eviction.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    until: Option<Instant>,
    step: Duration,
}

impl GuestCore {
    /// The runs memout has backed (in RAM or in swap).
    fn backed_runs(&self) -> Vec<Run> {
        let st = self.state();
        let all = Run {
            start: 0,
            len: st.alloc.frames(),
        };
        st.resident.present(all)
    }

    /// Pages of `r` in host RAM now.
    fn in_core(&self, r: Run) -> u64 {
        let off = (r.start * PAGE_SIZE) as usize;
        match self.region.in_core(off, (r.len * PAGE_SIZE) as usize) {
            Ok(v) => v.iter().filter(|b| **b).count() as u64,
            Err(_) => r.len,
        }
    }

    /// Kernel mode: (pages in host RAM, pages backed but not in RAM, i.e. in swap).
    pub(super) fn kernel_residency(&self) -> (u64, u64) {
        let runs = self.backed_runs();
        let backed: u64 = runs.iter().map(|r| r.len).sum();
        let in_ram: u64 = runs.iter().map(|&r| self.in_core(r)).sum();
        (in_ram, backed - in_ram)
    }

    /// Pages the guest out down to a little under `budget` (hysteresis, so the next swap-ins
    /// do not push it straight back over), unless backing off.
    pub(super) fn enforce_kernel_budget(&self, budget: u64) -> Result<(), EvictError> {
        {
            let b = self.kernel_backoff.lock();
            if b.until.is_some_and(|t| Instant::now() < t) {
                return Ok(());
            }
        }
        let (in_ram, _) = self.kernel_residency();
        if in_ram <= budget {
            return Ok(());
        }
        let goal = budget.saturating_sub((budget / 8).min(CHUNK_PAGES));
        self.page_out_cold(in_ram - goal).map(|_| ())
    }

    /// `MADV_PAGEOUT` the coldest chunks until `target` pages really left RAM or every chunk
    /// was tried once, rotating each to the young end (the kernel brings pages back without
    /// telling memout, so a chunk stays a candidate). Returns the pages really paged out.
    pub(super) fn page_out_cold(&self, target: u64) -> Result<u64, EvictError> {
        let mut done = 0;
        let mut in_ram = 0;
        let rounds = self.state().cold.len();
        for _ in 0..rounds {
            if done >= target {
                break;
            }
            let (chunk, runs) = {
                let mut st = self.state();
                let Some(chunk) = st.cold.victim() else { break };
                st.cold.touch(chunk);
                let start = chunk * CHUNK_PAGES;
                let frames = st.alloc.frames();
                let runs = st.resident.present(Run {
                    start,
                    len: CHUNK_PAGES.min(frames - start),
                });
                (chunk, runs)
            };
            let before: Vec<u64> = runs.iter().map(|&r| self.in_core(r)).collect();
            let back: u64 = before.iter().sum();
            // The kernel swaps in behind memout's back, so heat is judged at the next visit:
            // a chunk paged out last time that is mostly back in RAM is hot (see `cold`).
            {
                let mut st = self.state();
                if st.cold.note_paged_out(chunk, false) && back >= CHUNK_PAGES / 2 {
                    st.cold.add_heat(chunk, back as u32);
                    if st.cold.heat(chunk) >= crate::cold::HOT {
                        continue;
                    }
                }
                st.cold.note_paged_out(chunk, back > 0);
            }
            for (r, before) in runs.iter().zip(before) {
                if before == 0 {
                    continue;
                }
                in_ram += before;
                self.region
                    .page_out((r.start * PAGE_SIZE) as usize, (r.len * PAGE_SIZE) as usize)
                    .map_err(|e| EvictError::HostMem(e.into()))?;
                done += before.saturating_sub(self.in_core(*r));
            }
        }
        self.counters.evicted_pages.fetch_add(done, Relaxed);
        // Judge the sweep by what it could have paged out, not by the target (an evict-all asks
        // for everything).
        self.note_sweep(target.min(in_ram), done);
        Ok(done)
    }

    /// Backs off after a sweep that paged (almost) nothing out, and says why once per streak.
    fn note_sweep(&self, target: u64, done: u64) {
        let mut b = self.kernel_backoff.lock();
        if target == 0 || done * 8 >= target {
            *b = Backoff::default();
            return;
        }
        if b.step.is_zero() {
            tracing::warn!(parent: &self.span, wanted = target * PAGE_SIZE, paged_out = done * PAGE_SIZE,
                swap_free = crate::procfs::swap_free(),
                "kernel eviction pages (almost) nothing out: is swap full or switched off? backing off");
        }
        b.step = (b.step * 2).clamp(MIN_BACKOFF, MAX_BACKOFF);
        b.until = Some(Instant::now() + b.step);
    }
}
