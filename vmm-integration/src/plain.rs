//! The baseline backing of benchmarks: a plain anonymous region with the machine's default
//! transparent-huge-page policy (what a VMM without memout maps), optionally populated ahead of
//! the guest by a helper thread (`MADV_POPULATE_WRITE` in 2 MiB steps: the second core doing
//! for the baseline what memout's eager worker does), and a timed discard.

use memout_server::host_mem::{self, HostRegion};
use memout_server::procfs::mapping_rss;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Step of the populate-ahead helper.
const STEP: usize = 2 << 20;

/// A timed `MADV_DONTNEED` of the plain region.
#[derive(Debug, Clone, Copy)]
pub struct Discard {
    /// How long the madvise took.
    pub elapsed: Duration,
    /// Region RSS before.
    pub rss_before: u64,
    /// Region RSS after.
    pub rss_after: u64,
}

struct Ahead {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// A plain region for one run.
pub struct PlainRegion {
    region: Arc<HostRegion>,
    ahead: Option<Ahead>,
}

impl PlainRegion {
    /// Maps `size` bytes (private, anonymous, `MAP_NORESERVE`, THP as the machine defaults).
    pub fn new(size: usize) -> host_mem::Result<Self> {
        Ok(Self {
            region: Arc::new(HostRegion::plain(size)?),
            ahead: None,
        })
    }

    /// Host address of the region.
    pub fn addr(&self) -> usize {
        self.region.addr()
    }

    /// Size in bytes.
    pub fn size(&self) -> usize {
        self.region.size()
    }

    /// Starts a helper thread that populates the first `len` bytes, 2 MiB at a time, while the
    /// guest touches them. Once per run.
    pub fn populate_ahead(&mut self, len: usize) -> std::io::Result<()> {
        if self.ahead.is_some() {
            return Ok(());
        }
        let len = len.min(self.region.size());
        let stop = Arc::new(AtomicBool::new(false));
        let (region, halt) = (self.region.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("baseline-populate".into())
            .spawn(move || {
                let mut off = 0;
                while off < len && !halt.load(Relaxed) {
                    let n = STEP.min(len - off);
                    if region.populate_write(off, n).is_err() {
                        return;
                    }
                    off += n;
                }
            })?;
        self.ahead = Some(Ahead { stop, thread });
        Ok(())
    }

    /// Stops and joins the populate-ahead helper, if any.
    pub fn stop_ahead(&mut self) {
        if let Some(a) = self.ahead.take() {
            a.stop.store(true, Relaxed);
            let _ = a.thread.join();
        }
    }

    /// Drops the whole region (`MADV_DONTNEED`) and times it.
    pub fn timed_discard(&self) -> host_mem::Result<Discard> {
        let rss_before = mapping_rss(self.addr()).unwrap_or(0);
        let t = Instant::now();
        self.region.discard(0, self.region.size())?;
        let elapsed = t.elapsed();
        Ok(Discard {
            elapsed,
            rss_before,
            rss_after: mapping_rss(self.addr()).unwrap_or(0),
        })
    }
}

impl Drop for PlainRegion {
    fn drop(&mut self) {
        self.stop_ahead();
    }
}
