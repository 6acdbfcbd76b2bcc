//! `memout experiment swap-pressure`: sweeps the memory budget (100, 75, 50, 25 % of the
//! working set, plus the VMM's allowance, as a memory cgroup's limit) × access pattern ×
//! eviction mode ([`super::swap`]) and writes `results.csv`, line plots (throughput and host
//! memory against the budget, one line per pattern and mode) with their CSVs, a Markdown summary with the memout ÷ kernel-swap ratio per cell,
//! and the manifest. The kernel's swap gets a temporary swapfile in the scratch directory,
//! removed afterwards, also on failure and on Ctrl-C ([`crate::cleanup`]).

use super::lines::Lines;
use super::swap::{Cell, Mode, PATTERNS, Row, measure};
use super::{Error, Options, Result, now_unix, prepare, write, write_manifest};
use crate::swapfile::Swapfile;
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

/// Budgets, % of the working set.
pub const BUDGETS: [u64; 4] = [100, 75, 50, 25];

/// (working set MiB, thousands of accesses) of a run. The quick set is 128 MiB so that the
/// kernel's target at 25 % (32 MiB less its 16 MiB headroom) is still above zero.
fn size(quick: bool) -> (u64, u32) {
    if quick { (128, 5) } else { (256, 100) }
}

fn median(rows: &[Row]) -> Row {
    let mut v: Vec<&Row> = rows.iter().collect();
    v.sort_by(|a, b| a.ops_per_s.total_cmp(&b.ops_per_s));
    v[v.len() / 2].clone()
}

/// Runs it all; returns the files written.
pub fn run(opts: &Options) -> Result<Vec<PathBuf>> {
    prepare(opts)?;
    crate::cleanup::install().map_err(|e| Error::Unsupported(format!("signal handler: {e}")))?;
    let started = now_unix();
    let (set_mib, kops) = size(opts.quick);
    let swap = Swapfile::create(&opts.scratch_dir, "experiment", (2 * set_mib + 64) << 20)
        .map_err(|e| {
            Error::Unsupported(format!(
                "kernel swap needs a swapfile in {} (root, mkswap, swapon): {e}",
                opts.scratch_dir.display()
            ))
        })?;
    let modes: Vec<Mode> = [Mode::Memout, Mode::Kernel]
        .into_iter()
        .chain(opts.redis.as_ref().map(|_| Mode::Redis))
        .collect();
    let stores = super::swap::Stores {
        dir: &opts.scratch_dir,
        redis: opts.redis.as_deref(),
    };
    let total = PATTERNS.len() * BUDGETS.len() * modes.len() * opts.repeat;
    let bar = super::progress(opts, total as u64);
    let mut all = Vec::new();
    for (pattern, pattern_name) in PATTERNS.iter().enumerate() {
        for budget_pct in BUDGETS {
            for rep in 0..opts.repeat {
                // The two modes alternate, so drift on the host hits both alike.
                for &mode in &modes {
                    bar.set_message(format!("{pattern_name} {budget_pct}% {mode}"));
                    let cell = Cell {
                        pattern,
                        budget_pct,
                        mode,
                        set_mib,
                        kops,
                        rep,
                    };
                    all.push(measure(cell, stores)?);
                    bar.inc(1);
                }
            }
        }
    }
    bar.finish_and_clear();
    drop(swap);
    let mut groups: BTreeMap<(usize, u64, Mode), Vec<Row>> = BTreeMap::new();
    for r in &all {
        groups
            .entry((r.cell.pattern, r.cell.budget_pct, r.cell.mode))
            .or_default()
            .push(r.clone());
    }
    let med = |p: usize, b: u64, m: Mode| median(&groups[&(p, b, m)]);
    let mut files = vec![write(&opts.out, "results.csv", &csv(&all))?];
    let xs: Vec<f64> = BUDGETS.iter().map(|&b| b as f64).collect();
    let series = |v: fn(&Row) -> f64| {
        (0..PATTERNS.len())
            .flat_map(|p| modes.iter().map(move |&m| (p, m)))
            .map(|(p, m)| {
                (
                    format!("{}, {m}", PATTERNS[p]),
                    BUDGETS.iter().map(|&b| v(&med(p, b, m))).collect(),
                )
            })
            .collect::<Vec<_>>()
    };
    let x_label = "memory budget, % of the working set".to_string();
    files.extend(
        Lines {
            title: format!("memwork throughput under a memory budget ({set_mib} MiB set)"),
            x_label: x_label.clone(),
            y_label: "page accesses per second".into(),
            xs: xs.clone(),
            series: series(|r| r.ops_per_s),
            log_y: true,
        }
        .save(&opts.out, "swap-throughput")?,
    );
    files.extend(
        Lines {
            title: "mean host memory of the VMM's cgroup during the run".into(),
            x_label,
            y_label: "MiB".into(),
            xs,
            series: series(|r| r.host_mean_mib),
            log_y: false,
        }
        .save(&opts.out, "swap-host-memory")?,
    );
    files.push(write(
        &opts.out,
        "summary.md",
        &summary(opts, set_mib, kops, &med),
    )?);
    let params = json!({
        "working_set_mib": set_mib,
        "accesses": u64::from(kops) * 1000,
        "budgets_pct": BUDGETS,
        "patterns": PATTERNS,
        "modes": modes.iter().map(|m| m.to_string()).collect::<Vec<_>>(),
        "redis": opts.redis.as_deref().map(memout_server::redis_store::keys::redact),
        "write_pct": 30, "zero_pages_pct": 10, "content": "random",
        "hot_cold": "10 % of the pages (the first) take 90 % of the accesses",
        "scratch_dir": opts.scratch_dir,
        "fault_spin_us": super::swap::FAULT_SPIN_US,
        "page_cluster": std::fs::read_to_string("/proc/sys/vm/page-cluster").ok().map(|s| s.trim().to_string()),
    });
    files.push(write_manifest(
        opts,
        "swap-pressure",
        params,
        started,
        &files,
    )?);
    Ok(files)
}

fn csv(rows: &[Row]) -> String {
    let mut s = String::from(
        "pattern,budget_pct,mode,rep,set_mib,accesses,ops_per_s,ops_s,evicted_pages,swapin_pages,swapin_p50_us,swapin_p99_us,host_mean_mib,host_peak_mib,data_errors,cpu_s\n",
    );
    for r in rows {
        let c = &r.cell;
        let (p50, p99) = r
            .swapin_us
            .map_or((String::new(), String::new()), |(a, b)| {
                (format!("{a:.0}"), format!("{b:.0}"))
            });
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{:.1},{:.3},{},{},{p50},{p99},{:.1},{:.1},{},{:.2}",
            PATTERNS[c.pattern],
            c.budget_pct,
            c.mode,
            c.rep,
            c.set_mib,
            u64::from(c.kops) * 1000,
            r.ops_per_s,
            r.ops_s,
            r.evicted_pages,
            r.swapin_pages,
            r.host_mean_mib,
            r.host_peak_mib,
            r.data_errors,
            r.cpu_s
        );
    }
    s
}

fn summary(
    opts: &Options,
    set_mib: u64,
    kops: u32,
    med: &dyn Fn(usize, u64, Mode) -> Row,
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Swap pressure: memout's store against the kernel's swap\n\n{} run, medians of {} repetition(s). The `memwork` guest fills {set_mib} MiB, then makes {} page accesses (30 % rewrite the page, 70 % read and check it; 10 % of the pages hold zeros, the rest random words) under a memory budget. Each run is a `memout run` process in a memory cgroup limited to the budget + {allow} MiB for the VMM, the same for both modes. memout keeps the guest's resident memory at the budget and swaps in from its O_DIRECT store through userfaultfd with an adaptive window; its fault thread polls {spin} µs for the next fault before it sleeps, which costs CPU time (the CPU column: user + system seconds of the whole run, all phases). For kernel swap memout pages the guest out (`MADV_PAGEOUT`) to {head} MiB under the budget every 10 ms; the kernel swaps in through its own fault path and frees its swap cache when the cgroup is full. Both use memout's eviction order (oldest 2 MiB chunk first, hot chunks passed over). Ratio = memout ÷ kernel swap throughput (> 1: memout faster).\n",
        if opts.quick {
            "Quick (CI-sized)"
        } else {
            "Full"
        },
        opts.repeat,
        u64::from(kops) * 1000,
        allow = super::swap::VMM_ALLOWANCE_MIB,
        head = super::swap::KERNEL_HEADROOM_MIB,
        spin = super::swap::FAULT_SPIN_US,
    );
    for (p, name) in PATTERNS.iter().enumerate() {
        let _ = writeln!(
            s,
            "## {name}\n\n| budget | memout accesses/s | kernel swap accesses/s | ratio | host MiB mean (peak), memout | kernel swap | swap-ins memout / kernel (pages) | memout swap-in p50 / p99 µs | CPU s memout / kernel | data errors |\n|---|---|---|---|---|---|---|---|---|---|"
        );
        for b in BUDGETS {
            let (m, k) = (med(p, b, Mode::Memout), med(p, b, Mode::Kernel));
            let (p50, p99) = m.swapin_us.unwrap_or_default();
            let _ = writeln!(
                s,
                "| {b} % | {:.0} | {:.0} | {:.2} | {:.1} ({:.1}) | {:.1} ({:.1}) | {} / {} | {p50:.0} / {p99:.0} | {:.1} / {:.1} | {} |",
                m.ops_per_s,
                k.ops_per_s,
                m.ops_per_s / k.ops_per_s.max(1e-9),
                m.host_mean_mib,
                m.host_peak_mib,
                k.host_mean_mib,
                k.host_peak_mib,
                m.swapin_pages,
                k.swapin_pages,
                m.cpu_s,
                k.cpu_s,
                m.data_errors + k.data_errors,
            );
        }
        s.push('\n');
    }
    if opts.redis.is_some() {
        let _ = writeln!(
            s,
            "## memout evicting to Redis\n\n| pattern | budget | memout→Redis accesses/s | ÷ memout file store | ÷ kernel swap | host MiB mean (peak) | swap-ins (pages) | swap-in p50 / p99 µs | CPU s | data errors |\n|---|---|---|---|---|---|---|---|---|---|"
        );
        for (p, name) in PATTERNS.iter().enumerate() {
            for b in BUDGETS {
                let (r, m, k) = (
                    med(p, b, Mode::Redis),
                    med(p, b, Mode::Memout),
                    med(p, b, Mode::Kernel),
                );
                let (p50, p99) = r.swapin_us.unwrap_or_default();
                let _ = writeln!(
                    s,
                    "| {name} | {b} % | {:.0} | {:.2} | {:.2} | {:.1} ({:.1}) | {} | {p50:.0} / {p99:.0} | {:.1} | {} |",
                    r.ops_per_s,
                    r.ops_per_s / m.ops_per_s.max(1e-9),
                    r.ops_per_s / k.ops_per_s.max(1e-9),
                    r.host_mean_mib,
                    r.host_peak_mib,
                    r.swapin_pages,
                    r.cpu_s,
                    r.data_errors,
                );
            }
        }
        s.push('\n');
    }
    s.push_str("Kernel swap-ins are `pswpin` from /proc/vmstat over the run (host-wide: run on a quiet host); they count pages read from swap, not faults served from the swap cache. Host memory is the cgroup's usage: the VMM, the guest's memory and the swap cache. Favourable to the kernel: what its cgroup holds above memout's paging-out target (up to the headroom) serves faults without I/O, while memout's own store keeps nothing cached. Favourable to memout: its store does not write zero pages (10 % here), the kernel's swap writes them; its fault thread's polling uses CPU time the kernel side does not. CPU time counts the process's threads: the kernel's swap-in work done in the faulting thread is in it, asynchronous swap writeback is not. At 100 % neither mode evicts.");
    if opts.redis.is_some() {
        let _ = write!(
            s,
            " memout→Redis keeps the guest {} MiB under the budget, leaving the cgroup's room to the Redis client's buffers.",
            super::swap::REDIS_CLIENT_MIB
        );
    }
    s.push('\n');
    s
}
