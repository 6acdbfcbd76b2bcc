//! `memout experiment interference` (seed 004): a target guest runs the CPU-bound `cpuwork`
//! guest while 0, 1, 2, 4, 8 or 16 dummy guests run beside it, with the target's vCPU thread
//! at nice 0 and at nice −5. Dummies are light (computing 10 % of the time and sleeping the
//! rest, like the paper's idle desktop guests) or busy (computing all the time). The target's
//! throughput is work units per second over a fixed time, relative to the same target alone.
//! Writes `results.csv`, a line plot (relative throughput against dummies) with its CSV, a
//! Markdown summary and the manifest.

use super::lines::Lines;
use super::{Error, Options, Result, now_unix, prepare, write, write_manifest};
use crate::image::GuestImage;
use crate::runner::{RunConfig, RunReport, run_guest};
use memout_server::Server;
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

/// Dummy guest counts.
pub const DUMMIES: [usize; 6] = [0, 1, 2, 4, 8, 16];
/// The target's nice values.
pub const NICE: [i32; 2] = [0, -5];
/// Dummy loads: (name, % of the time a dummy computes).
pub const LOADS: [(&str, u32); 2] = [("light", 10), ("busy", 100)];

/// One measurement.
#[derive(Debug, Clone)]
pub struct Row {
    /// Dummy load name.
    pub load: &'static str,
    /// The target's nice value.
    pub nice: i32,
    /// Dummy guests.
    pub dummies: usize,
    /// Repetition.
    pub rep: usize,
    /// The target's work units per second.
    pub units_per_s: f64,
    /// The dummies' work units per second, all together.
    pub dummy_units_per_s: f64,
}

fn image() -> GuestImage {
    GuestImage::parse(
        crate::images::get("cpuwork")
            .expect("cpuwork is built in")
            .to_vec(),
    )
    .expect("built-in images parse")
}

fn guest(name: String, duty: u32) -> RunConfig {
    RunConfig {
        name,
        region_size: 64 << 20,
        quota_bytes: 16 << 20,
        params: vec![duty],
        timeout: Duration::from_secs(600),
        ..Default::default()
    }
}

/// Work units per second between the guest's checkpoints 1 and 2.
fn rate(name: &str, r: &RunReport) -> Result<f64> {
    let units = r.output.iter().find_map(|l| {
        l.strip_prefix("CPUWORK: units ")?
            .split(' ')
            .next()?
            .parse::<f64>()
            .ok()
    });
    match (r.passed(), units, r.between(1, 2)) {
        (true, Some(u), Some(t)) => Ok(u / t.as_secs_f64().max(1e-9)),
        _ => Err(Error::Guest {
            name: name.into(),
            outcome: format!("{}: {}", r.outcome, r.output.join(" / ")),
        }),
    }
}

/// Runs the target for `secs` beside `n` dummies computing `duty` % of the time.
fn measure(
    server: &Server,
    load: (&'static str, u32),
    nice: i32,
    n: usize,
    rep: usize,
    secs: f64,
) -> Result<Row> {
    let img = image();
    let dummies: Vec<RunConfig> = (0..n).map(|i| guest(format!("dummy{i}"), load.1)).collect();
    let target = guest("target".into(), 100);
    std::thread::scope(|s| -> Result<Row> {
        let runs: Vec<_> = dummies
            .iter()
            .map(|c| s.spawn(|| run_guest(server, &img, c)))
            .collect();
        // Let the dummies boot and settle into their cycle before the target starts.
        std::thread::sleep(Duration::from_millis(if n > 0 { 300 } else { 0 }));
        let t = s.spawn(|| -> Result<RunReport> {
            crate::sched::set_current_thread_nice(nice).map_err(|e| {
                Error::Unsupported(format!("nice {nice} for the target's vCPU thread: {e}"))
            })?;
            Ok(run_guest(server, &img, &target)?)
        });
        std::thread::sleep(Duration::from_secs_f64(secs));
        target.finish.store(true, SeqCst);
        let target_report = t.join().expect("the target's thread does not panic");
        dummies.iter().for_each(|c| c.finish.store(true, SeqCst));
        let mut dummy_rate = 0.0;
        for (r, c) in runs.into_iter().zip(&dummies) {
            dummy_rate += rate(&c.name, &r.join().expect("dummy threads do not panic")?)?;
        }
        Ok(Row {
            load: load.0,
            nice,
            dummies: n,
            rep,
            units_per_s: rate("target", &target_report?)?,
            dummy_units_per_s: dummy_rate,
        })
    })
}

fn median(rows: &[Row]) -> f64 {
    let mut v: Vec<f64> = rows.iter().map(|r| r.units_per_s).collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs it all; returns the files written.
pub fn run(opts: &Options) -> Result<Vec<PathBuf>> {
    prepare(opts)?;
    let started = now_unix();
    let secs = if opts.quick { 1.5 } else { 10.0 };
    let server = Server::builder().build()?;
    let total = LOADS.len() * NICE.len() * DUMMIES.len() * opts.repeat;
    let bar = super::progress(opts, total as u64);
    let mut all = Vec::new();
    for load in LOADS {
        for &n in &DUMMIES {
            for rep in 0..opts.repeat {
                // The two priorities alternate, so drift on the host hits both alike.
                for nice in NICE {
                    bar.set_message(format!("{} ×{n} nice {nice}", load.0));
                    all.push(measure(&server, load, nice, n, rep, secs)?);
                    bar.inc(1);
                }
            }
        }
    }
    bar.finish_and_clear();
    let mut groups: BTreeMap<(&str, i32, usize), Vec<Row>> = BTreeMap::new();
    for r in &all {
        groups
            .entry((r.load, r.nice, r.dummies))
            .or_default()
            .push(r.clone());
    }
    let med = |l: &str, nice: i32, n: usize| median(&groups[&(l, nice, n)]);
    let relative =
        |l: &str, nice: i32, n: usize| 100.0 * med(l, nice, n) / med(l, nice, 0).max(1e-9);
    let mut files = vec![write(&opts.out, "results.csv", &csv(&all))?];
    let series = LOADS
        .iter()
        .flat_map(|l| NICE.map(|nice| (l.0, nice)))
        .map(|(l, nice)| {
            (
                format!("nice {nice}, {l} dummies"),
                DUMMIES.iter().map(|&n| relative(l, nice, n)).collect(),
            )
        })
        .collect();
    files.extend(
        Lines {
            title: "target guest's throughput beside dummy guests (relative to alone)".into(),
            x_label: "dummy guests".into(),
            y_label: "% of the target's throughput alone".into(),
            xs: DUMMIES.iter().map(|&n| n as f64).collect(),
            series,
            log_y: false,
        }
        .save(&opts.out, "interference")?,
    );
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Interference (seed 004): a target guest beside 0–16 dummy guests\n\n{} run, medians of {} repetition(s), the target runs {secs} s per measurement. Target: `cpuwork` (prime search) at 100 %; its vCPU thread at nice 0 or −5. Light dummies compute 10 % of the time and sleep the rest; busy dummies compute all the time. Host: {} CPUs, Linux {} (EEVDF).\n\n| dummies | light, nice 0 | light, nice −5 | busy, nice 0 | busy, nice −5 |\n|---|---|---|---|---|",
        if opts.quick {
            "Quick (CI-sized)"
        } else {
            "Full"
        },
        opts.repeat,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    for &n in &DUMMIES {
        let cell = |l: &str, nice: i32| {
            format!("{:.0} % ({:.0}/s)", relative(l, nice, n), med(l, nice, n))
        };
        let _ = writeln!(
            s,
            "| {n} | {} | {} | {} | {} |",
            cell("light", 0),
            cell("light", -5),
            cell("busy", 0),
            cell("busy", -5)
        );
    }
    s.push_str("\nEach cell: the target's throughput relative to the same target alone (absolute work units per second in brackets). Seed 004 (Linux 2.6.33 CFS, 2 cores, idle desktop dummies): the target fell to about 20 % of its O(1)-scheduler result at 16 dummies, and to about 40 % with nice −5.\n");
    files.push(write(&opts.out, "summary.md", &s)?);
    let params = json!({
        "dummies": DUMMIES, "nice": NICE,
        "loads": LOADS.map(|(n, d)| json!({"name": n, "duty_pct": d})),
        "target_seconds": secs,
        "work_unit": "primes below 20000, trial division",
    });
    files.push(write_manifest(
        opts,
        "interference",
        params,
        started,
        &files,
    )?);
    Ok(files)
}

fn csv(rows: &[Row]) -> String {
    let mut s = String::from("load,nice,dummies,rep,target_units_per_s,dummy_units_per_s\n");
    for r in rows {
        let _ = writeln!(
            s,
            "{},{},{},{},{:.1},{:.1}",
            r.load, r.nice, r.dummies, r.rep, r.units_per_s, r.dummy_units_per_s
        );
    }
    s
}
