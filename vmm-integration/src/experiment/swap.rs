//! One cell of the swap-pressure experiment: the `memwork` guest (working set, access
//! pattern, 30 % writes, 10 % zero pages) runs under a host memory limit, with memout's store
//! or the kernel's swap taking what does not fit, and reports its own throughput.
//!
//! Both modes get the same host memory: each cell runs `memout run memwork` as a child process
//! in a fresh memory cgroup limited to the budget plus [`VMM_ALLOWANCE_MIB`] for the VMM itself.
//! Both use memout's eviction policy (oldest 2 MiB chunk first, hot chunks passed over, see
//! `memout_server`'s `cold` module); they differ in where evicted memory goes and how it
//! comes back:
//! - `memout`: resident budget = the budget; an O_DIRECT store file, swap-in through
//!   userfaultfd with an adaptive window; the fault thread polls [`FAULT_SPIN_US`] for the
//!   next fault before sleeping.
//! - `memout-redis` (with `--redis`): as `memout`, evicting to a Redis server, with
//!   [`REDIS_CLIENT_MIB`] of the budget left to the Redis client's buffers.
//! - `kernel`: memout pages the guest out (`MADV_PAGEOUT` to a swapfile) down to the budget
//!   minus [`KERNEL_HEADROOM_MIB`], re-checked every 10 ms with `mincore`; the kernel swaps in
//!   through its own fault path and read-ahead (`vm.page-cluster`), and its reclaim frees the
//!   swap cache when the cgroup is at its limit. So the kernel really reads from swap (it
//!   cannot keep paged-out memory in a swap cache the host does not have), and what it holds
//!   in RAM above memout's target serves its faults without I/O.
//!
//! A KVM guest's memory cannot be left to the cgroup's own reclaim on this host: KVM reports
//! the pages young, the reclaim gives up and the OOM killer ends the VMM (with 8 MiB of
//! headroom it did in 9 runs out of 9; with 16, in none of 9). That is why memout chooses
//! what goes in both modes.
//!
//! Throughput is page accesses per second between the guest's checkpoints 1 and 2 (after the
//! fill, after the accesses), timed by the host. Host memory is the cgroup's usage (VMM,
//! guest memory and swap cache), sampled every 20 ms, and its peak.

use super::{Error, Result};
use crate::memcg::MemoryCgroup;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::Duration;

const MIB: u64 = 1 << 20;
/// Host memory each cell's cgroup allows beyond the budget, for the VMM itself (memout used
/// 6 MiB of it with a 64 MiB working set).
pub const VMM_ALLOWANCE_MIB: u64 = 8;
/// How far below the budget memout pages a kernel-swap guest out, so that the cgroup's
/// reclaim always finds swap cache to free before the next check.
pub const KERNEL_HEADROOM_MIB: u64 = 16;
/// How much of the budget memout gives up in Redis mode, for the Redis client's buffers (a
/// pipelined 2 MiB write or read holds its bytes once more; at 192 MiB of 256 the cgroup's
/// peak was 6 MiB above the file store's, and with the whole budget the VMM was OOM-killed).
pub const REDIS_CLIENT_MIB: u64 = 8;
/// How long memout's fault thread polls for the next fault before sleeping, in both memout
/// modes (`--fault-spin-us`): it saves the thread's wake-up on a swap-in and costs CPU time,
/// which the results report for every mode.
pub const FAULT_SPIN_US: u64 = 200;

/// Access patterns, as `memwork`'s `MEMWORK_P_PATTERN` numbers them.
pub const PATTERNS: [&str; 3] = ["sequential", "uniform", "hot-cold"];

/// Where evicted memory goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    /// memout's store.
    Memout,
    /// The kernel's swap.
    Kernel,
    /// memout, evicting to a Redis server.
    Redis,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Memout => "memout",
            Self::Kernel => "kernel-swap",
            Self::Redis => "memout-redis",
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
    /// Mean host memory of the cell's cgroup during the run, MiB.
    pub host_mean_mib: f64,
    /// Peak host memory of the cell's cgroup, MiB.
    pub host_peak_mib: f64,
    /// Words the guest found wrong.
    pub data_errors: u64,
    /// CPU time (user + system) of the `memout run` process, all phases, seconds.
    pub cpu_s: f64,
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

/// The cgroup limit of a cell, bytes.
pub fn limit_bytes(c: &Cell) -> u64 {
    (c.set_mib * c.budget_pct / 100 + VMM_ALLOWANCE_MIB) * MIB
}

/// Where a cell's evicted memory goes: memout's store file in `dir`, or the Redis server at
/// `redis` (for [`Mode::Redis`]).
#[derive(Debug, Clone, Copy)]
pub struct Stores<'a> {
    /// Directory of memout's store file.
    pub dir: &'a Path,
    /// Redis URL.
    pub redis: Option<&'a str>,
}

/// The `memout run` arguments of a cell.
fn run_args(c: &Cell, stores: Stores) -> Vec<String> {
    let set = c.set_mib * MIB;
    let budget = set * c.budget_pct / 100;
    let params: Vec<String> = params(c).iter().map(u32::to_string).collect();
    let mut a: Vec<String> = [
        "run",
        "memwork",
        "--no-control",
        "--json",
        "--timeout",
        "1800",
        "--name",
    ]
    .map(String::from)
    .to_vec();
    a.push(format!(
        "swap-{}-{}-{}",
        PATTERNS[c.pattern], c.budget_pct, c.mode
    ));
    a.extend(["--region".into(), (2 * set).next_power_of_two().to_string()]);
    a.extend(["--quota".into(), set.to_string()]);
    a.extend(["--param".into(), params.join(",")]);
    if c.mode != Mode::Kernel {
        a.extend(["--fault-spin-us".into(), FAULT_SPIN_US.to_string()]);
    }
    if c.budget_pct < 100 {
        let (eviction, budget) = match c.mode {
            Mode::Memout => ("store", budget),
            Mode::Redis => (
                "store",
                budget.saturating_sub(REDIS_CLIENT_MIB * MIB).max(2 * MIB),
            ),
            Mode::Kernel => (
                "kernel",
                budget
                    .saturating_sub(KERNEL_HEADROOM_MIB * MIB)
                    .max(2 * MIB),
            ),
        };
        a.extend(["--eviction".into(), eviction.into()]);
        a.extend(["--budget".into(), budget.to_string()]);
        a.extend(["--store-dir".into(), stores.dir.display().to_string()]);
        if let (Mode::Redis, Some(url)) = (c.mode, stores.redis) {
            a.extend(["--store".into(), url.into()]);
            a.extend([
                "--store-instance".into(),
                format!("experiment-{}", std::process::id()),
            ]);
        }
    }
    a
}

/// Runs one cell in its own memory cgroup (the kernel's swapfile is the caller's, already on).
pub fn measure(c: Cell, stores: Stores) -> Result<Row> {
    let name = format!("swap-{}-{}-{}", PATTERNS[c.pattern], c.budget_pct, c.mode);
    let limit = limit_bytes(&c);
    let cg = MemoryCgroup::create(&format!("swap-{}", c.mode), limit)?;
    let exe = std::env::current_exe().map_err(|e| Error::Unsupported(format!("own path: {e}")))?;
    let swapins_before = pswpin();
    let done = AtomicBool::new(false);
    let (out, samples) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut v = Vec::new();
            while !done.load(SeqCst) {
                v.extend(cg.usage());
                std::thread::sleep(Duration::from_millis(20));
            }
            v
        });
        let out = cg.run(&exe, &run_args(&c, stores));
        done.store(true, SeqCst);
        (out, sampler.join().expect("the sampler does not panic"))
    });
    let out = out?;
    let swapins = pswpin().saturating_sub(swapins_before);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    if cg.oom_kills() > 0 {
        return Err(Error::Guest {
            name,
            outcome: format!(
                "OOM-killed in its memory cgroup (limit {} MiB)",
                limit / MIB
            ),
        });
    }
    let output: Vec<&str> = report["output"]
        .as_array()
        .map(|v| v.iter().filter_map(|l| l.as_str()).collect())
        .unwrap_or_default();
    if report["passed"] != true {
        return Err(Error::Guest {
            name,
            outcome: format!(
                "{} {}: {} / {}",
                out.status,
                report["outcome"],
                output.join(" / "),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    let bad = output
        .iter()
        .find_map(|l| l.split(" bad ").nth(1)?.trim().parse::<u64>().ok());
    let at = |id: u64| {
        report["checkpoints"]
            .as_array()?
            .iter()
            .find(|c| c["id"] == id)?["at_ms"]
            .as_f64()
    };
    let (Some(t1), Some(t2)) = (at(1), at(2)) else {
        return Err(Error::Guest {
            name,
            outcome: "no checkpoints 1 and 2".into(),
        });
    };
    let ops_s = (t2 - t1) / 1000.0;
    let stat = |k: &str| report["stats"][k].as_u64().unwrap_or(0);
    let mib = |bytes: f64| bytes / MIB as f64;
    let mean = samples.iter().sum::<u64>() as f64 / samples.len().max(1) as f64;
    Ok(Row {
        cell: c,
        ops_per_s: f64::from(c.kops) * 1000.0 / ops_s.max(1e-9),
        ops_s,
        evicted_pages: stat("evictions_pages"),
        swapin_pages: match c.mode {
            Mode::Memout | Mode::Redis => stat("swapins_pages"),
            Mode::Kernel => swapins,
        },
        swapin_us: (c.mode != Mode::Kernel).then(|| {
            (
                stat("swapin_p50_ns") as f64 / 1000.0,
                stat("swapin_p99_ns") as f64 / 1000.0,
            )
        }),
        host_mean_mib: mib(mean),
        host_peak_mib: mib(cg
            .peak()
            .unwrap_or_else(|| samples.iter().copied().max().unwrap_or(0))
            as f64),
        data_errors: bad.unwrap_or(0),
        cpu_s: report["cpu_s"].as_f64().unwrap_or(0.0),
    })
}
