//! Eager population: worker threads that fill granted runs ahead of the guest, in chunks, so a
//! guest's first touches find memory already backed. Jobs hold only a weak reference to their
//! guest: a guest that goes away has its queued work dropped.

use crate::extents::Run;
use crate::guest::GuestCore;
use crossbeam_channel::{Receiver, Sender};
use std::sync::Weak;

/// One chunk to populate.
pub struct Job {
    guest: Weak<GuestCore>,
    run: Run,
}

/// The sending side, held by each guest.
#[derive(Clone)]
pub struct EagerQueue {
    tx: Sender<Job>,
    chunk_pages: u64,
}

impl EagerQueue {
    /// Queues `run` of `guest`, split into chunks.
    pub(crate) fn submit(&self, guest: &Weak<GuestCore>, run: Run) {
        let mut f = run.start;
        while f < run.end() {
            let len = (run.end() - f).min(self.chunk_pages);
            // A send only fails when every worker is gone (server shutting down): then there is
            // nothing to do, faults still populate the memory.
            let _ = self.tx.send(Job {
                guest: guest.clone(),
                run: Run { start: f, len },
            });
            f += len;
        }
    }
}

/// Starts `workers` threads; they end when every [`EagerQueue`] is dropped.
pub fn start(workers: usize, chunk_pages: u64) -> std::io::Result<EagerQueue> {
    let (tx, rx) = crossbeam_channel::unbounded::<Job>();
    for i in 0..workers {
        let rx: Receiver<Job> = rx.clone();
        std::thread::Builder::new()
            .name(format!("memout-eager-{i}"))
            .spawn(move || {
                for job in rx {
                    if let Some(g) = job.guest.upgrade()
                        && g.fatal().is_none()
                    {
                        g.populate_eagerly(job.run);
                    }
                }
            })?;
    }
    Ok(EagerQueue { tx, chunk_pages })
}
