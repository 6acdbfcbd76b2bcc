//! Eviction to memout's backing store. For each run of the coldest chunk: write-protect it
//! (userfaultfd), write its non-zero pages to the store, drop the host pages, settle, wake. A
//! guest write during that window blocks on the write-protect fault and never reaches the old
//! page; once woken it faults as missing and is served from the store, so no write is lost. If
//! anything fails, the protection is lifted and the frames stay resident. An eviction of four
//! chunks or more runs as a pipeline: this thread writes chunk N+1 while a helper drops,
//! settles and wakes chunk N.

use super::{CHUNK_PAGES, EvictError, GuestCore};
use crate::extents::Run;
use crate::store::BackingStore;
use memout_protocol::ring::PAGE_SIZE;
use std::sync::atomic::Ordering::Relaxed;

/// Evictions at least this large run as a pipeline (store writes alongside host page drops).
const PIPELINE_MIN_PAGES: u64 = 4 * CHUNK_PAGES;

/// Runs whose content is in the store while their host pages are still there, write-protected
/// (between the two halves of an eviction).
struct Stored {
    runs: Vec<Run>,
    placed: Vec<(Run, Option<u64>)>,
    slots: Vec<Run>,
}

/// Where the pages of runs being evicted went: (frames, slot or `None` for zero pages), and the
/// slots taken.
#[derive(Default)]
struct Placement {
    placed: Vec<(Run, Option<u64>)>,
    slots: Vec<Run>,
}

/// True if the page is all zeroes; leaves at the first non-zero word, so a page with data
/// costs a few loads and only a truly zero page is read in full.
fn is_zero(page: &[u8]) -> bool {
    page.chunks_exact(8)
        .all(|w| u64::from_ne_bytes(w.try_into().expect("8 bytes")) == 0)
}

impl GuestCore {
    /// Claims up to `max` resident, idle frames of the coldest chunk that has any (hot chunks
    /// get a second chance, see [`crate::cold`]).
    fn claim_cold(&self, max: u64) -> Option<Vec<Run>> {
        let mut st = self.state();
        let frames = st.alloc.frames();
        while let Some(chunk) = st.cold.victim() {
            let start = chunk * CHUNK_PAGES;
            let window = Run {
                start,
                len: CHUNK_PAGES.min(frames - start),
            };
            let mut runs = Vec::new();
            let mut left = max;
            for r in st.resident.present(window) {
                let idle = st.inflight.gaps(r, left);
                left -= idle.iter().map(|g| g.len).sum::<u64>();
                runs.extend(idle);
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

    pub(super) fn evict_to_store(
        &self,
        store: &dyn BackingStore,
        target: u64,
    ) -> Result<u64, EvictError> {
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
        // Runs are packed one after another into the staging buffer, and each full buffer's
        // non-zero pages get one slot allocation and go out in one vectored write per slot
        // run: a chunk whose resident pages are scattered (random access) is written in one
        // I/O, not one per run (with single-page runs that was hundreds of 4 KiB O_DIRECT
        // writes per 2 MiB evicted).
        //
        // Guest memory is read only by a volatile copy into host-private staging memory; the
        // zero scan and the store (an embedder's code, too) see only that copy. The runs are
        // write-protected, so the copy is the content being evicted.
        let mut staging = match self.take_staging() {
            Ok(b) => b,
            Err(e) => return fail(EvictError::Staging(e.into()), &[], &runs),
        };
        let piece_pages = staging.len() as u64 / PAGE_SIZE;
        let mut out = Placement::default();
        let mut batch: Vec<(Run, usize)> = Vec::new();
        let mut fill = 0usize;
        let pieces = runs.iter().flat_map(|r| {
            (r.start..r.end())
                .step_by(piece_pages as usize)
                .map(move |s| Run {
                    start: s,
                    len: piece_pages.min(r.end() - s),
                })
        });
        for r in pieces.map(Some).chain([None]) {
            let len = r.map_or(0, |r| (r.len * PAGE_SIZE) as usize);
            if r.is_none() || fill + len > staging.len() {
                let staged = &staging.as_slice()[..fill];
                if let Err(e) = self.write_batch(store, staged, &batch, &mut out) {
                    self.put_staging(staging);
                    return fail(e, &out.slots, &runs);
                }
                batch.clear();
                fill = 0;
            }
            let Some(r) = r else { break };
            self.region
                .volatile((r.start * PAGE_SIZE) as usize, len)
                .copy_to(&mut staging.as_mut_slice()[fill..fill + len]);
            batch.push((r, fill));
            fill += len;
        }
        self.put_staging(staging);
        Ok(Stored {
            runs,
            placed: out.placed,
            slots: out.slots,
        })
    }

    /// Writes the non-zero pages of `batch` (runs, and where each starts in `staged`) to
    /// newly allocated slots, recording where every page went (zero pages: nowhere) and the
    /// slots taken.
    fn write_batch(
        &self,
        store: &dyn BackingStore,
        staged: &[u8],
        batch: &[(Run, usize)],
        out: &mut Placement,
    ) -> Result<(), EvictError> {
        let page = PAGE_SIZE as usize;
        let mut data: Vec<(Run, usize)> = Vec::new();
        for &(r, off) in batch {
            let (mut f, mut at) = (r.start, off);
            for (zero, n) in stretches(&staged[off..off + r.len as usize * page]) {
                let sub = Run { start: f, len: n };
                if zero {
                    out.placed.push((sub, None));
                } else {
                    data.push((sub, at));
                }
                f += n;
                at += n as usize * page;
            }
        }
        let pages: u64 = data.iter().map(|(d, _)| d.len).sum();
        if pages == 0 {
            return Ok(());
        }
        let Some(slot_runs) = self.state().slots.alloc(pages) else {
            return Err(EvictError::StoreFull {
                store: store.describe(),
            });
        };
        out.slots.extend(&slot_runs);
        // Pair the data stretches with the slot runs, splitting where either ends.
        let (mut di, mut d_off) = (0usize, 0u64);
        for sr in slot_runs {
            let mut bufs: Vec<&[u8]> = Vec::new();
            let mut filled = 0;
            while filled < sr.len {
                let (d, at) = data[di];
                let n = (d.len - d_off).min(sr.len - filled);
                let from = at + d_off as usize * page;
                bufs.push(&staged[from..from + n as usize * page]);
                out.placed.push((
                    Run {
                        start: d.start + d_off,
                        len: n,
                    },
                    Some(sr.start + filled),
                ));
                filled += n;
                d_off += n;
                if d_off == d.len {
                    di += 1;
                    d_off = 0;
                }
            }
            store
                .write_vectored(sr.start, &bufs)
                .map_err(|e| EvictError::Store {
                    store: store.describe(),
                    source: e.into(),
                })?;
        }
        Ok(())
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
