//! `memout experiment swap-pressure`: sweeps the resident budget (100, 75, 50, 25 % of the
//! working set) × access pattern × eviction mode ([`super::swap`]) and writes `results.csv`,
//! line plots (throughput and resident memory against the budget, one line per pattern and
//! mode) with their CSVs, a Markdown summary with the memout ÷ kernel-swap ratio per cell,
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
const MODES: [Mode; 2] = [Mode::Memout, Mode::Kernel];

/// (working set MiB, thousands of accesses) of a run.
fn size(quick: bool) -> (u64, u32) {
    if quick { (32, 5) } else { (256, 100) }
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
    let total = PATTERNS.len() * BUDGETS.len() * MODES.len() * opts.repeat;
    let bar = super::progress(opts, total as u64);
    let mut all = Vec::new();
    for (pattern, pattern_name) in PATTERNS.iter().enumerate() {
        for budget_pct in BUDGETS {
            for rep in 0..opts.repeat {
                // The two modes alternate, so drift on the host hits both alike.
                for mode in MODES {
                    bar.set_message(format!("{pattern_name} {budget_pct}% {mode}"));
                    let cell = Cell {
                        pattern,
                        budget_pct,
                        mode,
                        set_mib,
                        kops,
                        rep,
                    };
                    all.push(measure(cell, &opts.scratch_dir)?);
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
            .flat_map(|p| MODES.map(|m| (p, m)))
            .map(|(p, m)| {
                (
                    format!("{}, {m}", PATTERNS[p]),
                    BUDGETS.iter().map(|&b| v(&med(p, b, m))).collect(),
                )
            })
            .collect::<Vec<_>>()
    };
    let x_label = "resident budget, % of the working set".to_string();
    files.extend(
        Lines {
            title: format!("memwork throughput under a resident budget ({set_mib} MiB set)"),
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
            title: "mean resident memory during the run".into(),
            x_label,
            y_label: "MiB".into(),
            xs,
            series: series(|r| r.resident_mean_mib),
            log_y: false,
        }
        .save(&opts.out, "swap-resident")?,
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
        "modes": MODES.map(|m| m.to_string()),
        "write_pct": 30, "zero_pages_pct": 10, "content": "random",
        "hot_cold": "10 % of the pages (the first) take 90 % of the accesses",
        "scratch_dir": opts.scratch_dir,
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
        "pattern,budget_pct,mode,rep,set_mib,accesses,ops_per_s,ops_s,evicted_pages,swapin_pages,swapin_p50_us,swapin_p99_us,resident_mean_mib,resident_max_mib,data_errors\n",
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
            "{},{},{},{},{},{},{:.1},{:.3},{},{},{p50},{p99},{:.1},{:.1},{}",
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
            r.resident_mean_mib,
            r.resident_max_mib,
            r.data_errors
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
        "# Swap pressure: memout's store against the kernel's swap\n\n{} run, medians of {} repetition(s). The `memwork` guest fills {set_mib} MiB, then makes {} page accesses (30 % rewrite the page, 70 % read and check it; 10 % of the pages hold zeros, the rest random words) under a resident budget. Both modes use memout's eviction policy (coldest 2 MiB chunk first); memout swaps in through userfaultfd with an adaptive window, the kernel through its own fault path (`MADV_PAGEOUT` out, re-checked every 10 ms). Ratio = memout ÷ kernel swap throughput (> 1: memout faster).\n",
        if opts.quick {
            "Quick (CI-sized)"
        } else {
            "Full"
        },
        opts.repeat,
        u64::from(kops) * 1000,
    );
    for (p, name) in PATTERNS.iter().enumerate() {
        let _ = writeln!(
            s,
            "## {name}\n\n| budget | memout accesses/s | kernel swap accesses/s | ratio | resident MiB mean (max), memout | kernel swap | swap-ins memout / kernel (pages) | memout swap-in p50 / p99 µs | data errors |\n|---|---|---|---|---|---|---|---|---|"
        );
        for b in BUDGETS {
            let (m, k) = (med(p, b, Mode::Memout), med(p, b, Mode::Kernel));
            let (p50, p99) = m.swapin_us.unwrap_or_default();
            let _ = writeln!(
                s,
                "| {b} % | {:.0} | {:.0} | {:.2} | {:.1} ({:.1}) | {:.1} ({:.1}) | {} / {} | {p50:.0} / {p99:.0} | {} |",
                m.ops_per_s,
                k.ops_per_s,
                m.ops_per_s / k.ops_per_s.max(1e-9),
                m.resident_mean_mib,
                m.resident_max_mib,
                k.resident_mean_mib,
                k.resident_max_mib,
                m.swapin_pages,
                k.swapin_pages,
                m.data_errors + k.data_errors,
            );
        }
        s.push('\n');
    }
    s.push_str("Kernel swap-ins are `pswpin` from /proc/vmstat over the run (host-wide: run on a quiet host). memout enforces its budget on every fault; in kernel mode the kernel swaps in behind memout's back and the budget is restored every 10 ms, so its resident memory can exceed the budget between checks: a favourable assumption for the kernel, visible in the resident columns. Pages it pages out stay in the swap cache until the host is short of memory, so they come back without I/O (the kernel's swap-ins column counts the ones read from disk). Favourable to memout: its store does not write zero pages (10 % here); the kernel's swap writes them.\n");
    s
}
