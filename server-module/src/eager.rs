//! Eager population: worker threads that fill granted runs ahead of the guest, in chunks, so a
//! guest's first touches find memory already backed.
//!
//! Each guest has its own queue: a set of frames to fill, deduplicated and coalesced, bounded
//! in runs, from which a FREE removes the freed frames at once. Workers serve the guests with
//! pending work in turn, one chunk at a time, so one guest's flood never starves another's
//! population, and what a guest can make the host hold for it is bounded. The ready list holds
//! only weak references: a guest that goes away has its queued work dropped.

use crate::extents::{ExtentSet, Run};
use parking_lot::{Condvar, Mutex, MutexGuard};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};

/// Most separate runs one guest may have queued; a submit beyond it is dropped and counted
/// (the guest's faults still populate those frames). About 100 bytes of host memory a run.
pub const MAX_PENDING_RUNS: usize = 1024;

/// What the workers need from a guest.
pub(crate) trait EagerTarget: Send + Sync {
    /// The guest's queue.
    fn eager_queue(&self) -> &EagerQueue;
    /// Fills `run` if the guest still holds it.
    fn populate_eagerly(&self, run: Run);
    /// True once the guest was stopped (its work is dropped).
    fn stopped(&self) -> bool;
}

/// The frames one guest has queued. Pure logic.
#[derive(Debug, Default)]
pub struct Pending {
    set: ExtentSet,
    queued: bool,
}

impl Pending {
    /// Adds `run`; `false` (and nothing added) if that would exceed [`MAX_PENDING_RUNS`].
    pub fn add(&mut self, run: Run) -> bool {
        if self.set.runs() >= MAX_PENDING_RUNS && !self.set.contains(run) {
            return false;
        }
        self.set.add(run);
        true
    }

    /// Forgets the frames of `run` (freed by the guest).
    pub fn cancel(&mut self, run: Run) {
        self.set.subtract(run);
    }

    /// Takes up to `chunk` frames from the lowest pending run.
    pub fn take(&mut self, chunk: u64) -> Option<Run> {
        let first = self.set.iter().next()?;
        let r = Run {
            start: first.start,
            len: first.len.min(chunk),
        };
        self.set.remove(r);
        Some(r)
    }

    /// Frames queued.
    pub fn frames(&self) -> u64 {
        self.set.total()
    }
}

struct Shared {
    ready: Mutex<Ready>,
    wake: Condvar,
}

#[derive(Default)]
struct Ready {
    guests: VecDeque<Weak<dyn EagerTarget>>,
    shutdown: bool,
}

impl Shared {
    fn ready(&self) -> MutexGuard<'_, Ready> {
        self.ready.lock()
    }
}

/// Ends the workers when the last handle to the pool goes.
struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.ready().shutdown = true;
        self.0.wake.notify_all();
    }
}

/// The worker pool; each guest gets its own [`EagerQueue`] from it.
#[derive(Clone)]
pub struct EagerPool {
    owner: Arc<Owner>,
    chunk_pages: u64,
}

impl EagerPool {
    /// A new, empty queue for one guest.
    pub(crate) fn queue(&self) -> EagerQueue {
        EagerQueue {
            pool: self.clone(),
            pending: Mutex::new(Pending::default()),
            dropped: AtomicU64::new(0),
        }
    }
}

/// One guest's eager queue.
pub struct EagerQueue {
    pool: EagerPool,
    pending: Mutex<Pending>,
    dropped: AtomicU64,
}

impl EagerQueue {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock()
    }

    /// Queues `run` of `guest` (whose queue this is).
    pub(crate) fn submit(&self, guest: Weak<dyn EagerTarget>, run: Run) {
        let mut p = self.pending();
        if !p.add(run) {
            self.dropped.fetch_add(1, Relaxed);
            return;
        }
        if !p.queued {
            p.queued = true;
            let shared = &self.pool.owner.0;
            shared.ready().guests.push_back(guest);
            shared.wake.notify_one();
        }
    }

    /// Forgets queued frames of `run` (the guest freed them).
    pub(crate) fn cancel(&self, run: Run) {
        self.pending().cancel(run);
    }

    /// Submits dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    /// The next chunk to fill; re-queues the guest behind the others if more is left.
    fn next(&self, me: Weak<dyn EagerTarget>) -> Option<Run> {
        let mut p = self.pending();
        let job = p.take(self.pool.chunk_pages);
        if p.frames() == 0 {
            p.queued = false;
        } else {
            self.pool.owner.0.ready().guests.push_back(me);
        }
        job
    }
}

/// Starts `workers` threads; they end when the pool and every queue from it are dropped.
pub fn start(workers: usize, chunk_pages: u64) -> std::io::Result<EagerPool> {
    let shared = Arc::new(Shared {
        ready: Mutex::new(Ready::default()),
        wake: Condvar::new(),
    });
    for i in 0..workers {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name(format!("memout-eager-{i}"))
            .spawn(move || work(&shared))?;
    }
    Ok(EagerPool {
        owner: Arc::new(Owner(shared)),
        chunk_pages,
    })
}

fn work(shared: &Shared) {
    loop {
        let weak = {
            let mut r = shared.ready();
            loop {
                if r.shutdown {
                    return;
                }
                if let Some(g) = r.guests.pop_front() {
                    break g;
                }
                shared.wake.wait(&mut r);
            }
        };
        let Some(guest) = weak.upgrade() else {
            continue; // the guest went away: its work goes with it
        };
        if let Some(run) = guest.eager_queue().next(weak)
            && !guest.stopped()
        {
            guest.populate_eagerly(run);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, len: u64) -> Run {
        Run { start, len }
    }

    #[test]
    fn pending_dedups_cancels_and_takes_in_chunks() {
        let mut p = Pending::default();
        assert!(p.add(r(0, 1000)));
        assert!(p.add(r(500, 1000))); // overlap is merged, not doubled
        assert_eq!(p.frames(), 1500);
        p.cancel(r(0, 1500)); // FREE of the whole grant
        assert_eq!(p.frames(), 0);
        assert!(p.add(r(10, 600)));
        assert_eq!(p.take(512), Some(r(10, 512)));
        assert_eq!(p.take(512), Some(r(522, 88)));
        assert_eq!(p.take(512), None);
    }

    #[test]
    fn pending_is_bounded_in_runs() {
        let mut p = Pending::default();
        for i in 0..MAX_PENDING_RUNS as u64 {
            assert!(p.add(r(i * 2, 1)));
        }
        assert!(!p.add(r(1_000_000, 1)));
        assert!(p.add(r(0, 1)), "frames already queued are not refused");
        assert_eq!(p.frames(), MAX_PENDING_RUNS as u64);
    }
}
