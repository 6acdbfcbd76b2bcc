//! One cell of the swap-pressure experiment: the `memwork` guest (working set, access
//! pattern, 30 % writes, 10 % zero pages) runs under a resident budget, with memout's store
//! or the kernel's swap taking what does not fit, and reports its own throughput.
//!
//! Both modes run under the same memout server and eviction policy (coldest 2 MiB chunk
//! first); they differ in where evicted memory goes and how it comes back:
//! - `memout`: an O_DIRECT store file, swap-in through userfaultfd with an adaptive window;
//! - `kernel`: `MADV_PAGEOUT` to a swapfile, swap-in by the kernel's own fault path and its
//!   read-ahead (`vm.page-cluster`), invisible to memout, which re-checks the budget every
//!   10 ms with `mincore`.
//!
//! Throughput is page accesses per second between the guest's checkpoints 1 and 2 (after the
//! fill, after the accesses), timed by the host. Resident memory is sampled every 20 ms
//! during the run (memout's count; in kernel mode what `mincore` finds in RAM).

use super::{Error, Result};
use crate::image::GuestImage;
use crate::runner::{RunConfig, run_guest};
use memout_server::{Eviction, FileStore, Server};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::Duration;

const MIB: u64 = 1 << 20;

/// Access patterns, as `memwork`'s `MEMWORK_P_PATTERN` numbers them.
pub const PATTERNS: [&str; 3] = ["sequential", "uniform", "hot-cold"];

/// Where evicted memory goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    /// memout's store.
    Memout,
    /// The kernel's swap.
    Kernel,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Memout => "memout",
            Self::Kernel => "kernel-swap",
        })
    }
}

/// What a cell is.
#[derive(Debug, Clone, Copy)]
pub struct Cell {
    /// Index into [`PATTERNS`].
    pub pattern: usize,
    /// Resident budget, % of the working set.
    pub budget_pct: u64,
    /// Where evicted memory goes.
    pub mode: Mode,
    /// Working set, MiB.
    pub set_mib: u64,
    /// Page accesses after the fill, thousands.
    pub kops: u32,
    /// Repetition (also the guest's seed).
    pub rep: usize,
}

/// One measurement.
#[derive(Debug, Clone)]
pub struct Row {
    /// What was measured.
    pub cell: Cell,
    /// Page accesses per second.
    pub ops_per_s: f64,
    /// Seconds of accesses.
    pub ops_s: f64,
    /// Pages evicted during the run.
    pub evicted_pages: u64,
    /// Pages swapped in during the run (memout: its swap-ins; kernel: `pswpin`, host-wide).
    pub swapin_pages: u64,
    /// memout's swap-in fault latency, p50 and p99, µs (`None` in kernel mode: the kernel's
    /// faults are invisible to memout).
    pub swapin_us: Option<(f64, f64)>,
    /// Mean and largest resident memory sampled during the run, MiB.
    pub resident_mean_mib: f64,
    /// Largest resident sample, MiB.
    pub resident_max_mib: f64,
    /// Words the guest found wrong.
    pub data_errors: u64,
}

fn pswpin() -> u64 {
    std::fs::read_to_string("/proc/vmstat")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("pswpin ")?.trim().parse().ok())
        .unwrap_or(0)
}

/// The `memwork` parameters of a cell (see `memout_harness.h`).
pub fn params(c: &Cell) -> Vec<u32> {
    vec![
        c.set_mib as u32,
        c.pattern as u32,
        30, // % writes
        10, // % zero pages
        0,  // random content
        c.kops,
        c.rep as u32 + 1,
    ]
}

/// Runs one cell; `store_dir` holds memout's store file (the kernel's swapfile is the
/// caller's, already on).
pub fn measure(c: Cell, store_dir: &Path) -> Result<Row> {
    let set = c.set_mib * MIB;
    let budget = (set * c.budget_pct / 100).max(2 * MIB);
    let eviction = match c.mode {
        Mode::Memout => Eviction::Store(Arc::new(
            FileStore::create(store_dir, "swap-pressure", 2 * set).map_err(|source| {
                Error::Write {
                    path: store_dir.to_path_buf(),
                    source,
                }
            })?,
        )),
        Mode::Kernel => Eviction::Kernel,
    };
    let server = Server::builder().build()?;
    let image = GuestImage::parse(
        crate::images::get("memwork")
            .expect("memwork is built in")
            .to_vec(),
    )
    .expect("built-in images parse");
    let name = format!("swap-{}-{}-{}", PATTERNS[c.pattern], c.budget_pct, c.mode);
    let cfg = RunConfig {
        name: name.clone(),
        region_size: (2 * set).next_power_of_two(),
        quota_bytes: set,
        params: params(&c),
        eviction,
        budget_bytes: Some(budget),
        timeout: Duration::from_secs(1800),
        ..Default::default()
    };
    let swapins_before = pswpin();
    let done = AtomicBool::new(false);
    let (report, samples) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut v = Vec::new();
            while !done.load(SeqCst) {
                if let Some(g) = server.registry().find(&name) {
                    v.push(g.stats().resident_pages);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            v
        });
        let r = run_guest(&server, &image, &cfg);
        done.store(true, SeqCst);
        (r, sampler.join().expect("the sampler does not panic"))
    });
    let report = report?;
    let bad = report
        .output
        .iter()
        .find_map(|l| l.split(" bad ").nth(1)?.trim().parse::<u64>().ok());
    if !report.passed() {
        return Err(Error::Guest {
            name,
            outcome: format!("{}: {}", report.outcome, report.output.join(" / ")),
        });
    }
    let ops_s = report
        .between(1, 2)
        .ok_or_else(|| Error::Guest {
            name: name.clone(),
            outcome: "no checkpoints 1 and 2".into(),
        })?
        .as_secs_f64();
    let s = &report.stats;
    let mib = |pages: f64| pages * 4096.0 / MIB as f64;
    let mean = samples.iter().sum::<u64>() as f64 / samples.len().max(1) as f64;
    Ok(Row {
        cell: c,
        ops_per_s: f64::from(c.kops) * 1000.0 / ops_s.max(1e-9),
        ops_s,
        evicted_pages: s.evictions_pages,
        swapin_pages: match c.mode {
            Mode::Memout => s.swapins_pages,
            Mode::Kernel => pswpin().saturating_sub(swapins_before),
        },
        swapin_us: (c.mode == Mode::Memout).then(|| {
            (
                s.swapin_p50_ns as f64 / 1000.0,
                s.swapin_p99_ns as f64 / 1000.0,
            )
        }),
        resident_mean_mib: mib(mean),
        resident_max_mib: mib(samples.iter().copied().max().unwrap_or(0) as f64),
        data_errors: bad.unwrap_or(0),
    })
}
