//! Eviction: moving a guest's cold memory out of host RAM, to memout's backing store or to the
//! kernel's swap, and keeping a guest under its resident budget.
//!
//! Store mode, for each run of the coldest chunk: write-protect it (userfaultfd), write its
//! non-zero pages to the store, drop the host pages, settle, wake. A guest write during that
//! window blocks on the write-protect fault and never reaches the old page; once woken it faults
//! as missing and is served from the store, so no write is lost. If anything fails, the
//! protection is lifted and the frames stay resident: nothing is lost either way.

use super::{CHUNK_PAGES, GuestCore};
use crate::extents::Run;
use crate::shared_error::Shared;
use crate::store::BackingStore;
use memout_protocol::ring::PAGE_SIZE;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use thiserror::Error;

/// Evictions at least this large run as a pipeline (store writes alongside host page drops).
const PIPELINE_MIN_PAGES: u64 = 4 * CHUNK_PAGES;

/// Runs whose content is in the store while their host pages are still there, write-protected
/// (between the two halves of an eviction).
struct Stored {
    runs: Vec<Run>,
    placed: Vec<(Run, Option<u64>)>,
    slots: Vec<Run>,
}

/// Where a guest's evicted memory goes.
#[derive(Clone, Default)]
pub enum Eviction {
    /// No eviction (the default): memory stays resident until the guest frees it.
    #[default]
    None,
    /// memout writes cold frames to this store and serves them back through userfaultfd.
    Store(Arc<dyn BackingStore>),
    /// The kernel's swap: `MADV_PAGEOUT` on cold ranges (needs swap space; pages come back
    /// through the kernel's own swap-in, invisible to memout).
    Kernel,
}

impl std::fmt::Debug for Eviction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Store(s) => write!(f, "Store({})", s.describe()),
            Self::Kernel => f.write_str("Kernel"),
        }
    }
}

impl Eviction {
    /// `none`, `store` or `kernel`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Store(_) => "store",
            Self::Kernel => "kernel",
        }
    }

    pub(super) fn capacity_slots(&self) -> u64 {
        match self {
            Self::Store(s) => s.capacity_slots(),
            _ => 0,
        }
    }

    pub(super) fn bytes_on_disk(&self) -> u64 {
        match self {
            Self::Store(s) => s.bytes_on_disk(),
            _ => 0,
        }
    }

    pub(super) fn read(&self, slot: u64, buf: &mut [u8]) -> std::io::Result<()> {
        match self {
            Self::Store(s) => s.read(slot, buf),
            _ => Err(std::io::Error::other("no backing store")),
        }
    }

    pub(super) fn discard_slots(&self, runs: &[Run]) {
        if let Self::Store(s) = self {
            for r in runs {
                // Space reclaim only; the slots are already free in the allocator.
                let _ = s.discard(r.start, r.len);
            }
        }
    }
}

/// Why an eviction stopped. Frames it had not finished stay resident.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum EvictError {
    /// The guest has no eviction configured.
    #[error("eviction is not configured for this guest")]
    NotConfigured,
    /// The store has no free slots left.
    #[error("backing store is full ({store})")]
    StoreFull {
        /// The store (its description).
        store: String,
    },
    /// Writing to the store failed (e.g. ENOSPC, EIO).
    #[error("writing to backing store {store} failed: {source}")]
    Store {
        /// The store (its description).
        store: String,
        /// The error.
        #[source]
        source: Shared<std::io::Error>,
    },
    /// Write-protecting guest pages failed.
    #[error("write-protecting pages to evict: {0}")]
    Uffd(#[source] Shared<crate::uffd::Error>),
    /// Dropping or paging out host pages failed.
    #[error("dropping evicted pages: {0}")]
    HostMem(#[source] Shared<crate::host_mem::Error>),
    /// The thread that finishes a pipelined eviction panicked (a memout bug).
    #[error("the eviction helper thread panicked")]
    HelperPanicked,
}

/// True if the page is all zeroes; leaves at the first non-zero word, so a page with data
/// costs a few loads and only a truly zero page is read in full.
fn is_zero(page: &[u8]) -> bool {
    page.chunks_exact(8)
        .all(|w| u64::from_ne_bytes(w.try_into().expect("8 bytes")) == 0)
}

impl GuestCore {
    /// The resident budget in pages, if any.
    pub fn budget(&self) -> Option<u64> {
        let b = self.budget.load(Relaxed);
        (b != u64::MAX).then_some(b)
    }

    /// The resident limit in force: the lower of the budget and a shrink's cap.
    pub(super) fn limit(&self) -> u64 {
        self.budget.load(Relaxed).min(self.cap.load(Relaxed))
    }

    /// Sets the resident budget. Lowering it evicts at once (on the caller's thread); raising
    /// it queues evicted frames for background swap-in up to the new budget.
    pub fn set_budget(&self, pages: Option<u64>) -> Result<(), EvictError> {
        if pages.is_some() && matches!(self.eviction, Eviction::None) {
            return Err(EvictError::NotConfigured);
        }
        let old = self.budget.swap(pages.unwrap_or(u64::MAX), Relaxed);
        if pages.unwrap_or(u64::MAX) < old.min(self.cap.load(Relaxed)) {
            self.enforce_budget_now()
        } else {
            self.prefetch();
            Ok(())
        }
    }

    /// Called after every populate: evicts when the guest is above its budget. Errors are
    /// recorded in the statistics (the guest keeps running with the frames resident).
    pub(super) fn enforce_budget(&self) {
        if self.limit() == u64::MAX {
            return;
        }
        if matches!(self.eviction, Eviction::Kernel) && self.counters.faults.load(Relaxed) % 8 != 0
        {
            return; // kernel mode asks the kernel what is resident: not on every fault
        }
        let _ = self.enforce_budget_now();
    }

    /// True if the budget must be checked on a clock: kernel mode with a budget (the kernel
    /// swaps in behind memout's back), or a guest above its limit now (an eviction that met
    /// frames in flight left some over it, and a guest that only touches resident memory
    /// takes no fault that would check again).
    pub(crate) fn needs_budget_tick(&self) -> bool {
        let limit = self.limit();
        match self.eviction {
            Eviction::None => false,
            Eviction::Kernel => limit != u64::MAX,
            Eviction::Store(_) => limit != u64::MAX && self.state().resident.count() > limit,
        }
    }

    /// The periodic check of [`needs_budget_tick`](Self::needs_budget_tick).
    pub(crate) fn budget_tick(&self) {
        let _ = self.enforce_budget_now();
    }

    fn enforce_budget_now(&self) -> Result<(), EvictError> {
        // Decide under the evict lock: a decision taken before waiting for it could be stale
        // (the budget raised, or another evictor done) and evict memory for nothing.
        let _one = self.evict_lock.lock().unwrap_or_else(|p| p.into_inner());
        let budget = self.limit();
        if matches!(self.eviction, Eviction::Kernel) {
            return self.enforce_kernel_budget(budget);
        }
        let resident = self.state().resident.count();
        if resident > budget {
            // At least a chunk at a time, so a guest at its budget does not evict per fault.
            self.evict_locked((resident - budget).max(CHUNK_PAGES))
                .map(|_| ())
        } else {
            Ok(())
        }
    }

    /// Queues evicted frames for swap-in by the eager workers, up to the budget.
    pub fn prefetch(&self) {
        // One lock for both reads (the state mutex is not reentrant).
        let (room, pieces) = {
            let st = self.state();
            let room = self.limit().saturating_sub(st.resident.count());
            let all = Run {
                start: 0,
                len: st.alloc.frames(),
            };
            (room, st.evicted.pieces(all))
        };
        let mut left = room;
        for p in pieces {
            if left == 0 {
                break;
            }
            let len = p.frames.len.min(left);
            self.eager.submit(
                self.me.clone(),
                Run {
                    start: p.frames.start,
                    len,
                },
            );
            left -= len;
        }
    }

    /// Evicts up to `pages` of the guest's coldest resident frames. Returns how many were
    /// evicted; on an error, those evicted before it stay evicted and the rest stay resident.
    pub fn evict(&self, pages: u64) -> Result<u64, EvictError> {
        let _one = self.evict_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.evict_locked(pages)
    }

    /// [`evict`](Self::evict) with `evict_lock` held by the caller.
    fn evict_locked(&self, pages: u64) -> Result<u64, EvictError> {
        let r = match &self.eviction {
            Eviction::None => Err(EvictError::NotConfigured),
            Eviction::Kernel => self.page_out_cold(pages),
            Eviction::Store(store) => self.evict_to_store(store.as_ref(), pages),
        };
        if let Err(e) = &r {
            if !matches!(e, EvictError::NotConfigured) {
                self.counters.evict_errors.fetch_add(1, Relaxed);
                if let Some(suppressed) = self.log_limit.allow() {
                    tracing::warn!(parent: &self.span, suppressed, "eviction stopped: {e}");
                }
            }
            *self
                .last_evict_error
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
        }
        r
    }

    /// Claims up to `max` resident, idle frames of the coldest chunk that has any.
    fn claim_cold(&self, max: u64) -> Option<Vec<Run>> {
        let mut st = self.state();
        let frames = st.alloc.frames();
        while let Some(chunk) = st.cold.oldest() {
            let start = chunk * CHUNK_PAGES;
            let window = Run {
                start,
                len: CHUNK_PAGES.min(frames - start),
            };
            let mut runs = Vec::new();
            let mut left = max;
            for r in st.resident.present(window) {
                let mut f = r.start;
                while f < r.end() && left > 0 {
                    if let Some(busy) = st.inflight.containing(f) {
                        f = busy.end();
                        continue;
                    }
                    let next_busy = st.inflight.first_after(f).map_or(r.end(), |b| b.start);
                    let len = (next_busy.min(r.end()) - f).min(left);
                    runs.push(Run { start: f, len });
                    left -= len;
                    f += len;
                }
            }
            if runs.is_empty() {
                st.cold.forget(chunk);
                continue;
            }
            if left > 0 {
                st.cold.forget(chunk); // everything idle in it is being taken
            }
            for r in &runs {
                st.inflight.insert(*r);
            }
            return Some(runs);
        }
        None
    }

    /// Gives claimed runs back untouched (resident, writable again).
    fn abandon(&self, runs: &[Run]) {
        for r in runs {
            let _ = self
                .uffd
                .unprotect(self.host_addr(r.start), (r.len * PAGE_SIZE) as usize);
        }
        let mut st = self.state();
        for r in runs {
            st.inflight.remove(*r);
            for chunk in r.start / CHUNK_PAGES..=(r.end() - 1) / CHUNK_PAGES {
                st.cold.touch(chunk);
            }
        }
        drop(st);
        self.settled.notify_all();
    }

    fn evict_to_store(&self, store: &dyn BackingStore, target: u64) -> Result<u64, EvictError> {
        if target < PIPELINE_MIN_PAGES {
            let mut done = 0;
            while done < target {
                let Some(runs) = self.claim_cold(target - done) else {
                    break;
                };
                done += self.finish_stored(self.store_runs(store, runs)?)?;
            }
            return Ok(done);
        }
        // A large eviction is a pipeline: this thread writes chunk N+1 to the store while a
        // helper drops, settles and wakes chunk N (the two halves cost about the same).
        std::thread::scope(|scope| {
            let (tx, rx) = crossbeam_channel::bounded::<Stored>(1);
            let finisher = scope.spawn(move || {
                let (mut done, mut first_err) = (0, None);
                for stored in rx {
                    match self.finish_stored(stored) {
                        Ok(n) => done += n,
                        Err(e) => {
                            first_err.get_or_insert(e);
                        }
                    }
                }
                (done, first_err)
            });
            let mut claimed = 0;
            let mut err = None;
            while claimed < target {
                let Some(runs) = self.claim_cold(target - claimed) else {
                    break;
                };
                claimed += runs.iter().map(|r| r.len).sum::<u64>();
                match self.store_runs(store, runs) {
                    Ok(stored) => {
                        if tx.send(stored).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        err = Some(e);
                        break;
                    }
                }
            }
            drop(tx);
            let (done, finish_err) = finisher
                .join()
                .unwrap_or((0, Some(EvictError::HelperPanicked)));
            match err.or(finish_err) {
                Some(e) => Err(e),
                None => Ok(done),
            }
        })
    }

    /// First half of evicting `runs`: write-protect them and write their non-zero pages to the
    /// store. On an error the runs are given back untouched.
    fn store_runs(&self, store: &dyn BackingStore, runs: Vec<Run>) -> Result<Stored, EvictError> {
        let fail = |e: EvictError, slots: &[Run], runs: &[Run]| {
            self.free_slots(slots);
            self.abandon(runs);
            Err(e)
        };
        for r in &runs {
            if let Err(e) = self
                .uffd
                .write_protect(self.host_addr(r.start), (r.len * PAGE_SIZE) as usize)
            {
                return fail(EvictError::Uffd(e.into()), &[], &runs);
            }
        }
        // Split into zero and non-zero stretches; only non-zero pages are written.
        let mut placed: Vec<(Run, Option<u64>)> = Vec::new();
        let mut slots_taken: Vec<Run> = Vec::new();
        for r in &runs {
            let off = (r.start * PAGE_SIZE) as usize;
            // SAFETY: the run is resident (claimed from the resident map) and write-protected
            // above, so nothing writes it while we read.
            let bytes = unsafe { self.region.bytes(off, (r.len * PAGE_SIZE) as usize) };
            let mut f = r.start;
            for (zero, n) in stretches(bytes) {
                let sub = Run { start: f, len: n };
                f += n;
                if zero {
                    placed.push((sub, None));
                    continue;
                }
                let Some(slot_runs) = self.state().slots.alloc(n) else {
                    let full = EvictError::StoreFull {
                        store: store.describe(),
                    };
                    return fail(full, &slots_taken, &runs);
                };
                let mut g = sub.start;
                for s in slot_runs {
                    slots_taken.push(s);
                    let at = ((g - r.start) * PAGE_SIZE) as usize;
                    let data = &bytes[at..at + (s.len * PAGE_SIZE) as usize];
                    if let Err(e) = store.write(s.start, data) {
                        let err = EvictError::Store {
                            store: store.describe(),
                            source: e.into(),
                        };
                        return fail(err, &slots_taken, &runs);
                    }
                    placed.push((
                        Run {
                            start: g,
                            len: s.len,
                        },
                        Some(s.start),
                    ));
                    g += s.len;
                }
            }
        }
        Ok(Stored {
            runs,
            placed,
            slots: slots_taken,
        })
    }

    /// Second half: the content is durable in the store, so the host pages go; the runs become
    /// evicted, and writers blocked on the protection are woken (they then fault as missing
    /// and are swapped in). Returns the frames evicted.
    fn finish_stored(&self, s: Stored) -> Result<u64, EvictError> {
        for r in &s.runs {
            if let Err(e) = self.drop_frames(*r) {
                self.free_slots(&s.slots);
                self.abandon(&s.runs);
                return Err(EvictError::HostMem(e.into()));
            }
        }
        let n: u64 = s.runs.iter().map(|r| r.len).sum();
        {
            let mut st = self.state();
            for r in &s.runs {
                st.inflight.remove(*r);
                st.resident.clear(*r);
            }
            for (frames, slot) in &s.placed {
                st.evicted.insert(*frames, *slot);
            }
        }
        self.settled.notify_all();
        for r in &s.runs {
            let _ = self
                .uffd
                .wake(self.host_addr(r.start), (r.len * PAGE_SIZE) as usize);
        }
        self.counters.evicted_pages.fetch_add(n, Relaxed);
        Ok(n)
    }

    fn free_slots(&self, slots: &[Run]) {
        let mut st = self.state();
        for s in slots {
            st.slots.free(*s);
        }
    }
}

/// Splits page-aligned bytes into stretches of all-zero and non-zero pages: (zero, pages).
fn stretches(bytes: &[u8]) -> Vec<(bool, u64)> {
    let mut out: Vec<(bool, u64)> = Vec::new();
    for page in bytes.chunks(PAGE_SIZE as usize) {
        let z = is_zero(page);
        match out.last_mut() {
            Some((kind, n)) if *kind == z => *n += 1,
            _ => out.push((z, 1)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::stretches;

    #[test]
    fn zero_and_data_stretches() {
        let mut b = vec![0u8; 4096 * 5];
        b[4096 + 17] = 1;
        b[4096 * 2] = 9;
        b[4096 * 4 + 4095] = 3;
        assert_eq!(
            stretches(&b),
            vec![(true, 1), (false, 2), (true, 1), (false, 1)]
        );
    }
}
