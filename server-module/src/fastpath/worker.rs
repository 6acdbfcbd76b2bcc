//! The fast-path worker: one server thread that services every fast-path guest in turn
//! (takes due free stacks, refills low magazines), with adaptive back-off: it keeps polling
//! while there is work, yields for a while after the last work, then sleeps for growing
//! intervals up to [`MAX_SLEEP`]. A guest that falls back to the doorbell path (its magazine
//! ran dry) wakes it at once through a [`Waker`].

use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

/// Longest sleep between passes when no guest has work.
pub const MAX_SLEEP: Duration = Duration::from_millis(1);
/// Idle passes that only yield before the worker starts sleeping.
const SPIN_PASSES: u32 = 2000;

/// A guest the worker services.
pub(crate) trait Serviced: Send + Sync {
    /// One pass; true if it did anything.
    fn service_fastpath(&self) -> bool;
}

/// Wakes the worker.
#[derive(Clone, Debug)]
pub(crate) struct Waker(Thread);

impl Waker {
    /// Ends the worker's current sleep.
    pub(crate) fn wake(&self) {
        self.0.unpark();
    }
}

struct Shared {
    guests: Mutex<Vec<Weak<dyn Serviced>>>,
    stop: AtomicBool,
}

/// The worker thread; stopped and joined when dropped.
pub(crate) struct Worker {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts the thread.
    pub(crate) fn start() -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            guests: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("memout-fastpath".into())
            .spawn(move || run(&s))?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Services `guest` from now on, until it is dropped.
    pub(crate) fn add(&self, guest: Weak<dyn Serviced>) {
        self.shared.guests.lock().push(guest);
        self.waker().wake();
    }

    /// A waker for the thread.
    pub(crate) fn waker(&self) -> Waker {
        Waker(
            self.thread
                .as_ref()
                .expect("running until dropped")
                .thread()
                .clone(),
        )
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

fn run(shared: &Shared) {
    let mut idle: u32 = 0;
    while !shared.stop.load(Relaxed) {
        let guests: Vec<Arc<dyn Serviced>> = {
            let mut g = shared.guests.lock();
            g.retain(|w| w.strong_count() > 0);
            g.iter().filter_map(Weak::upgrade).collect()
        };
        let mut busy = false;
        for g in &guests {
            busy |= g.service_fastpath();
        }
        drop(guests);
        if busy {
            idle = 0;
            continue;
        }
        idle = idle.saturating_add(1);
        match idle {
            0..SPIN_PASSES => std::thread::yield_now(),
            _ => {
                let step = (idle - SPIN_PASSES).min(20);
                std::thread::park_timeout((Duration::from_micros(50) * step).min(MAX_SLEEP));
            }
        }
    }
}
