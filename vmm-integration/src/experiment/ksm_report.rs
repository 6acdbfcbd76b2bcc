//! Runs the KSM experiment ([`super::ksm`]) over its focuses, guest counts and repetitions,
//! and writes what it found: `results.csv` (every measurement), one chart + CSV per focus, a
//! Markdown summary that compares the figures with seed 000's findings, and the manifest.

use super::chart::Bars;
use super::ksm::{FOCUS_KEYS, Row, measure_focus};
use super::{Options, Result, now_unix, prepare, write, write_manifest};
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

/// Guest counts of a run.
fn counts(quick: bool) -> Vec<usize> {
    if quick { vec![1, 2] } else { vec![1, 2, 3, 4] }
}

/// The measurement with the median host memory among the repetitions.
fn median(rows: &[Row]) -> Row {
    let mut v: Vec<&Row> = rows.iter().collect();
    v.sort_by(|a, b| a.host_mib.total_cmp(&b.host_mib));
    v[v.len() / 2].clone()
}

/// Runs it all; returns the files written.
pub fn run(opts: &Options) -> Result<Vec<PathBuf>> {
    prepare(opts)?;
    let started = now_unix();
    let ns = counts(opts.quick);
    let total = ((FOCUS_KEYS.len() * 2 + 1) * ns.len() * opts.repeat) as u64;
    let bar = if opts.progress {
        indicatif::ProgressBar::new(total)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:<28} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut all = Vec::new();
    for focus in FOCUS_KEYS {
        for &n in &ns {
            for rep in 0..opts.repeat {
                // Off and on alternate, so drift on the host hits both alike.
                for ksm in [false, true] {
                    bar.set_message(format!("{focus} ×{n} {}", if ksm { "on" } else { "off" }));
                    all.push(measure_focus(opts, focus, n, ksm, rep)?);
                    bar.inc(1);
                }
            }
        }
    }
    for &n in &ns {
        for rep in 0..opts.repeat {
            bar.set_message(format!("segment ×{n}"));
            all.push(super::ksm::measure_segment(opts, n, rep)?);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let mut groups: BTreeMap<(&str, usize, bool), Vec<Row>> = BTreeMap::new();
    for r in &all {
        groups
            .entry((r.focus, r.guests, r.ksm))
            .or_default()
            .push(r.clone());
    }
    let med = |f: &str, n: usize, k: bool| median(&groups[&(f, n, k)]);
    let mut files = vec![write(&opts.out, "results.csv", &csv(&all))?];
    let cats: Vec<String> = ns.iter().map(|n| n.to_string()).collect();
    let host = |f: &str, k: bool| {
        ns.iter()
            .map(|&n| med(f, n, k).host_mib)
            .collect::<Vec<_>>()
    };
    let bars = |title: &str, series: Vec<(String, Vec<f64>)>| Bars {
        title: title.into(),
        x_label: "guests".into(),
        y_label: "host memory for the guests, MiB".into(),
        categories: cats.clone(),
        series,
    };
    let off_on = |f: &str| {
        vec![
            ("KSM off".to_string(), host(f, false)),
            ("KSM on".to_string(), host(f, true)),
        ]
    };
    files.extend(bars("(1) guests that only start", off_on("start")).save(&opts.out, "ksm-start")?);
    files.extend(
        bars("(2) guests searching primes", off_on("primes")).save(&opts.out, "ksm-primes")?,
    );
    files.extend(
        bars(
            "(3) guests filling memory: random vs identical",
            vec![
                ("random, KSM off".into(), host("fill-random", false)),
                ("random, KSM on".into(), host("fill-random", true)),
                ("identical, KSM off".into(), host("fill-identical", false)),
                ("identical, KSM on".into(), host("fill-identical", true)),
            ],
        )
        .save(&opts.out, "ksm-fill")?,
    );
    let rate = |k: bool| {
        ns.iter()
            .map(|&n| med("primes", n, k).primes_per_s.unwrap_or(f64::NAN))
            .collect::<Vec<_>>()
    };
    files.extend(
        Bars {
            title: "(2) prime search rate per guest".into(),
            x_label: "guests".into(),
            y_label: "primes found per second".into(),
            categories: cats.clone(),
            series: vec![
                ("KSM off".into(), rate(false)),
                ("KSM on".into(), rate(true)),
            ],
        }
        .save(&opts.out, "ksm-primes-rate")?,
    );
    let seg = |f: fn(&Row) -> f64| {
        ns.iter()
            .map(|&n| f(&med("segment", n, false)))
            .collect::<Vec<_>>()
    };
    files.extend(
        bars(
            "(4) the same object: KSM merging vs a shared segment",
            vec![
                (
                    "KSM on, identical fill".into(),
                    host("fill-identical", true),
                ),
                ("shared segment".into(), seg(|r| r.host_mib)),
            ],
        )
        .save(&opts.out, "ksm-segment")?,
    );
    files.extend(
        Bars {
            title: "(4) time until the guests share one copy".into(),
            x_label: "guests".into(),
            y_label: "seconds".into(),
            categories: cats.clone(),
            series: vec![
                (
                    "KSM: time to merge".into(),
                    ns.iter()
                        .map(|&n| med("fill-identical", n, true).converge_s)
                        .collect(),
                ),
                ("segment: time to share".into(), seg(|r| r.converge_s)),
            ],
        }
        .save(&opts.out, "ksm-segment-time")?,
    );
    files.push(write(&opts.out, "summary.md", &summary(opts, &ns, &med))?);
    let params = json!({
        "guest_counts": ns,
        "focuses": FOCUS_KEYS,
        "ksm_on": {"pages_to_scan": 1250, "sleep_millisecs": 20},
        "converge": "10 full scans in a row without a change in pages_sharing (0.1 %)",
        "smart_scan": std::fs::read_to_string("/sys/kernel/mm/ksm/smart_scan").ok().map(|s| s.trim().to_string()),
        "converge_bound_s": if opts.quick { 30 } else { 120 },
    });
    files.push(write_manifest(opts, "ksm", params, started, &files)?);
    Ok(files)
}

fn csv(rows: &[Row]) -> String {
    let mut s = String::from(
        "focus,guests,ksm,rep,set_mib,resident_mib,saved_mib,host_mib,shared_pages,merged_guest_pages,system_used_mib,faults,converge_s,converged,primes_per_s\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{:.2},{:.2},{:.2},{},{},{:.2},{},{:.2},{},{}",
            r.focus,
            r.guests,
            if r.ksm { "on" } else { "off" },
            r.rep,
            r.set_mib,
            r.resident_mib,
            r.saved_mib,
            r.host_mib,
            r.shared_pages,
            r.merged_guest_pages,
            r.system_used_mib,
            r.faults,
            r.converge_s,
            r.converged,
            r.primes_per_s.map_or(String::new(), |p| format!("{p:.1}"))
        );
    }
    s
}

fn summary(opts: &Options, ns: &[usize], med: &dyn Fn(&str, usize, bool) -> Row) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# KSM experiment (seed 000) on memout's guests\n\n{} run, medians of {} repetition(s). Host memory for the guests = their resident memory − what KSM saved (`pages_sharing` since the run began). \"KSM on\": ksmd runs at 1250 pages / 20 ms and the guests are made mergeable once they hold their data (with KSM's smart scan, guests mergeable from the start while they write can leave twin pages out of step for many scans); \"off\": not mergeable.\n",
        if opts.quick {
            "Quick (CI-sized)"
        } else {
            "Full"
        },
        opts.repeat
    );
    for (f, what) in [
        (
            "start",
            "(1) guests that only start: each loads the same block (its image) and idles",
        ),
        (
            "primes",
            "(2) guests searching primes after loading the same block",
        ),
        (
            "fill-identical",
            "(3a) guests filling anonymous memory with identical data",
        ),
        (
            "fill-random",
            "(3b) guests filling anonymous memory with random data",
        ),
    ] {
        let _ = writeln!(
            s,
            "## {what}\n\n| guests | resident MiB | host MiB, KSM off | host MiB, KSM on | saved MiB | ideal saving MiB | converged after s | faults off / on |\n|---|---|---|---|---|---|---|---|"
        );
        for &n in ns {
            let (off, on) = (med(f, n, false), med(f, n, true));
            let ideal = if f == "fill-random" {
                0
            } else {
                (n as u64 - 1) * on.set_mib
            };
            let _ = writeln!(
                s,
                "| {n} | {:.1} | {:.1} | {:.1} | {:.1} | {ideal} | {}{:.1} | {} / {} |",
                on.resident_mib,
                off.host_mib,
                on.host_mib,
                on.saved_mib,
                if on.converged { "" } else { "not within " },
                on.converge_s,
                off.faults,
                on.faults
            );
        }
        s.push('\n');
    }
    let _ = writeln!(
        s,
        "## (4) the same object through a shared segment (not in the paper)\n\n| guests | host MiB, KSM on (identical fill) | host MiB, segment | time to merge s | time to share s |\n|---|---|---|---|---|"
    );
    for &n in ns {
        let (k, g) = (med("fill-identical", n, true), med("segment", n, false));
        let _ = writeln!(
            s,
            "| {n} | {:.1} | {:.1} | {:.2} | {:.4} |",
            k.host_mib, g.host_mib, k.converge_s, g.converge_s
        );
    }
    s.push_str("\nTime to merge counts from the guests holding their data (and becoming mergeable) until KSM converged; time to share from registering the segment until every guest mapped it. A segment's host memory is its one copy plus the guests' own (untouched) memory.\n\n");
    let last = *ns.last().expect("at least one guest count");
    let saved = |f: &str| {
        ns.iter()
            .map(|&n| med(f, n, true).saved_mib)
            .collect::<Vec<_>>()
    };
    let ident = saved("fill-identical");
    let grows = ident.windows(2).all(|w| w[1] >= w[0]);
    let diff =
        med("fill-identical", last, true).saved_mib - med("fill-random", last, true).saved_mib;
    let (poff, pon) = (
        med("primes", last, false).primes_per_s.unwrap_or(0.0),
        med("primes", last, true).primes_per_s.unwrap_or(0.0),
    );
    let _ = writeln!(
        s,
        "## Against seed 000's findings\n\n\
         - *Merged memory grows with the number of identical guests*: saved with identical fills, by guest count: {}: {}.\n\
         - *Random data merges less than identical data*: with {last} guests, identical fills saved {diff:.1} MiB more than random ones (the paper: about 10 MB less for random, on 1 GiB Debian guests whose OS pages merge either way; memout's guests hold only their working set, so random data leaves nothing to merge).\n\
         - *Page faults are unchanged by merging*: the faults memout served are in the tables (off / on); KSM merges after the data is written, so the guests' population faults do not change.\n\
         - Prime search with {last} guests: {poff:.0} primes/s per guest with KSM off, {pon:.0} with it on ({:+.1} %): ksmd's scanning competes for this host's 2 CPUs.\n\n\
         Not measured here: real Linux guests. memout serves QEMU's RAM from a shared file, which KSM cannot merge, so the paper's setting (QEMU's own anonymous, mergeable RAM) is not a memout configuration.\n",
        ns.iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        ident
            .iter()
            .map(|v| format!("{v:.1} MiB"))
            .collect::<Vec<_>>()
            .join(", ")
            + if grows {
                " (grows)"
            } else {
                " (does not grow at every step)"
            },
        if poff > 0.0 {
            (pon / poff - 1.0) * 100.0
        } else {
            0.0
        }
    );
    s
}
