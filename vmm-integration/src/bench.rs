//! `memout bench <scenario>`: memout and its baseline measured side by side in one process.
//!
//! Method: one warm-up round of every side (discarded; on this host the first touch
//! of never-used host memory is several times slower), then rounds that alternate the sides
//! (A B A B …), reporting medians and `ratio` = memout ÷ baseline. Each round is a fresh VM.
//! Times are host-clock intervals between two guest checkpoints (one exit each, counted
//! against memout), except the shrink baseline, which times the host's madvise alone.

mod error;
pub mod fastpath;
pub mod linux_free;
pub mod populate;
pub mod resize;
pub mod shared;
pub mod swap;
pub mod swap_redis;

pub use error::{Error, Result};
pub use populate::populate;
pub use swap::swap;

use crate::image::GuestImage;
use crate::runner::{Backing, RunConfig, RunReport, run_guest};
use indicatif::{ProgressBar, ProgressStyle};
use memout_server::Server;
use serde_json::{Map, Value, json};
use std::time::Duration;

/// Benchmark options from the command line.
#[derive(Debug, Clone)]
pub struct BenchOpts {
    /// Size in MiB (scenario default if `None`).
    pub mib: Option<u64>,
    /// Measured rounds per side (after the warm-up).
    pub rounds: usize,
    /// Directory for backing-store, baseline and swap files (swap).
    pub dir: std::path::PathBuf,
    /// Percentage of zero pages in the swapped guest memory (swap; the rest is random data).
    pub zero_pct: u32,
    /// A `memout` executable whose `ksm-guard` restores KSM's settings if a KSM baseline is
    /// killed (`None`: no guard).
    pub ksm_guard: Option<std::path::PathBuf>,
    /// A Redis URL (swap): evict there, and compare with raw SET/GET on the same server.
    pub store: Option<String>,
}

/// One measured quantity: its samples in `unit`.
#[derive(Debug, Clone)]
pub struct Series {
    /// Name (`baseline`, `memout/eager`, …).
    pub name: String,
    /// Samples, one per round.
    pub samples: Vec<f64>,
}

impl Series {
    /// The smallest sample.
    pub fn min(&self) -> f64 {
        self.samples.iter().copied().fold(f64::NAN, f64::min)
    }

    /// The largest sample.
    pub fn max(&self) -> f64 {
        self.samples.iter().copied().fold(f64::NAN, f64::max)
    }

    /// The median sample.
    pub fn median(&self) -> f64 {
        let mut v = self.samples.clone();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }
}

/// Fewest rounds for which a ratio is judged against its target.
pub const MIN_ROUNDS_FOR_TARGET: usize = 5;

/// A ratio of two medians and the target it is held to.
#[derive(Debug, Clone)]
pub struct Ratio {
    /// Name.
    pub name: String,
    /// memout median ÷ baseline median.
    pub value: f64,
    /// Target: the ratio must be at most this (`None`: reported only).
    pub target_max: Option<f64>,
}

/// What a scenario measured.
#[derive(Debug, Clone)]
pub struct BenchResult {
    /// Scenario name.
    pub scenario: &'static str,
    /// Unit of every series.
    pub unit: &'static str,
    /// Measured rounds per side.
    pub rounds: usize,
    /// Every series.
    pub series: Vec<Series>,
    /// Ratios; the first is the headline `ratio`.
    pub ratios: Vec<Ratio>,
    /// Scenario-specific facts (sizes, RSS checks).
    pub extra: Map<String, Value>,
}

impl BenchResult {
    /// The JSON object printed by `--json`.
    pub fn to_json(&self) -> Value {
        let medians: Map<String, Value> = self
            .series
            .iter()
            .map(|s| (s.name.clone(), json!(s.median())))
            .collect();
        let spread: Map<String, Value> = self
            .series
            .iter()
            .map(|s| {
                let v = json!({"min": s.min(), "median": s.median(), "max": s.max()});
                (s.name.clone(), v)
            })
            .collect();
        let samples: Map<String, Value> = self
            .series
            .iter()
            .map(|s| (s.name.clone(), json!(s.samples)))
            .collect();
        let ratios: Map<String, Value> = self
            .ratios
            .iter()
            .map(|r| (r.name.clone(), json!(r.value)))
            .collect();
        let targets: Map<String, Value> = self
            .ratios
            .iter()
            .filter_map(|r| {
                r.target_max
                    .map(|t| (r.name.clone(), json!({"max": t, "met": self.met(r, t)})))
            })
            .collect();
        json!({
            "scenario": self.scenario,
            "unit": self.unit,
            "rounds": self.rounds,
            "ratio": self.ratios.first().map(|r| r.value),
            "medians": medians,
            "spread": spread,
            "ratios": ratios,
            "targets": targets,
            "samples": samples,
            "extra": self.extra,
        })
    }

    /// Whether ratio `r` met its target `t`; `None` (not judged) with fewer than
    /// [`MIN_ROUNDS_FOR_TARGET`] rounds: one or two rounds say nothing about the spread.
    fn met(&self, r: &Ratio, t: f64) -> Option<bool> {
        (self.rounds >= MIN_ROUNDS_FOR_TARGET).then_some(r.value <= t)
    }

    /// A table for people.
    pub fn print_table(&self) {
        println!(
            "\nscenario {} ({} rounds after warm-up, medians)",
            self.scenario, self.rounds
        );
        println!(
            "{:<40} {:>12} {:>12} {:>12}",
            format!("series ({})", self.unit),
            "min",
            "median",
            "max"
        );
        for s in &self.series {
            println!(
                "{:<40} {:>12.3} {:>12.3} {:>12.3}",
                s.name,
                s.min(),
                s.median(),
                s.max()
            );
        }
        println!(
            "\n{:<36} {:>9} {:>9} {:>6}",
            "ratio (memout ÷ baseline)", "value", "target", "met"
        );
        for r in &self.ratios {
            let (t, met) = match r.target_max {
                Some(t) => (
                    format!("≤ {t}"),
                    match self.met(r, t) {
                        Some(true) => "yes",
                        Some(false) => "NO",
                        None => "n/a",
                    },
                ),
                None => ("-".into(), ""),
            };
            println!("{:<36} {:>9.3} {:>9} {:>6}", r.name, r.value, t, met);
        }
        for (k, v) in &self.extra {
            println!("{k}: {v}");
        }
    }
}

/// One side of a comparison: how to run it and what to read from the report.
pub(crate) struct Side {
    pub(crate) name: String,
    pub(crate) cfg: RunConfig,
    pub(crate) measure: fn(&RunReport) -> Option<f64>,
}

pub(crate) fn bench_image() -> Result<GuestImage> {
    image("bench")
}

/// The built-in guest image `name`.
pub(crate) fn image(name: &'static str) -> Result<GuestImage> {
    let bytes = crate::images::get(name).ok_or(Error::NoImage(name))?;
    GuestImage::parse(bytes.to_vec()).map_err(|source| Error::Image { name, source })
}

/// Checks that `report` ended well (exit 0).
pub(crate) fn passed(side: &str, report: &RunReport) -> Result<()> {
    if report.passed() {
        Ok(())
    } else {
        Err(Error::GuestFailed {
            side: side.to_string(),
            outcome: report.outcome.clone(),
            output: report.output.join("\n"),
        })
    }
}

pub(crate) fn cfg(
    name: &str,
    mode: u32,
    param: u32,
    quota_mib: u64,
    backing: Backing,
) -> RunConfig {
    RunConfig {
        name: name.into(),
        arg: mode | (param << 8),
        quota_bytes: quota_mib << 20,
        timeout: Duration::from_secs(300),
        backing,
        ..Default::default()
    }
}

pub(crate) fn ms_between_checkpoints(r: &RunReport) -> Option<f64> {
    r.between(1, 2).map(|d| d.as_secs_f64() * 1e3)
}

/// Runs every side once as warm-up, then `rounds` alternating rounds. `keep` sees each report.
pub(crate) fn measure(
    sides: &[Side],
    rounds: usize,
    mut keep: impl FnMut(&str, &RunReport),
) -> Result<Vec<Series>> {
    let server = Server::builder().build()?;
    let image = bench_image()?;
    let bar = ProgressBar::new(((rounds + 1) * sides.len()) as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg:<24} [{bar:30}] {pos}/{len} {elapsed}")
            .expect("valid template"),
    );
    let mut series: Vec<Series> = sides
        .iter()
        .map(|s| Series {
            name: s.name.clone(),
            samples: Vec::new(),
        })
        .collect();
    for round in 0..=rounds {
        for (i, side) in sides.iter().enumerate() {
            bar.set_message(side.name.clone());
            let report = run_guest(&server, &image, &side.cfg)?;
            passed(&side.name, &report)?;
            let v = (side.measure)(&report).ok_or_else(|| Error::NoMeasurement {
                side: side.name.clone(),
                what: "measurement",
            })?;
            if round > 0 {
                series[i].samples.push(v);
                keep(&side.name, &report);
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok(series)
}

pub(crate) fn ratio(
    series: &[Series],
    num: &str,
    den: &str,
    name: &str,
    target_max: Option<f64>,
) -> Ratio {
    let m = |n: &str| {
        series
            .iter()
            .find(|s| s.name == n)
            .map_or(f64::NAN, Series::median)
    };
    Ratio {
        name: name.into(),
        value: m(num) / m(den),
        target_max,
    }
}

/// `rpc`: ALLOC+FREE of one page per doorbell (pipelined: the FREE of the page held and the
/// ALLOC of the next travel in one doorbell), unpipelined (a doorbell each), and 512 pages per
/// doorbell, vs a bare doorbell exit with nothing posted.
pub fn rpc(o: &BenchOpts) -> Result<BenchResult> {
    const ITERS: u32 = 2000;
    const BATCH_ROUNDS: u32 = 200;
    let sides = vec![
        Side {
            name: "bare doorbell exit".into(),
            cfg: cfg("rpc-bare", 6, ITERS, 64, Backing::Memout),
            measure: |r| ms_between_checkpoints(r).map(|ms| ms * 1e3 / ITERS as f64),
        },
        Side {
            name: "alloc+free 1 page, 1 doorbell".into(),
            cfg: cfg("rpc-pipelined", 3, ITERS, 64, Backing::Memout),
            measure: |r| ms_between_checkpoints(r).map(|ms| ms * 1e3 / ITERS as f64),
        },
        Side {
            name: "alloc+free 1 page, 2 doorbells".into(),
            cfg: cfg("rpc-unpipelined", 4, ITERS, 64, Backing::Memout),
            measure: |r| ms_between_checkpoints(r).map(|ms| ms * 1e3 / ITERS as f64),
        },
        Side {
            name: "alloc+free per page, 512/doorbell".into(),
            cfg: cfg("rpc-batch", 5, BATCH_ROUNDS, 64, Backing::Memout),
            measure: |r| ms_between_checkpoints(r).map(|ms| ms * 1e3 / (BATCH_ROUNDS * 512) as f64),
        },
    ];
    let series = measure(&sides, o.rounds, |_, _| {})?;
    let b = "bare doorbell exit";
    let ratios = vec![
        ratio(
            &series,
            "alloc+free 1 page, 1 doorbell",
            b,
            "alloc+free (1 doorbell)",
            Some(1.3),
        ),
        ratio(
            &series,
            "alloc+free per page, 512/doorbell",
            b,
            "batched per page",
            Some(0.1),
        ),
        ratio(
            &series,
            "alloc+free 1 page, 2 doorbells",
            b,
            "alloc+free (2 doorbells)",
            None,
        ),
    ];
    let mut extra = Map::new();
    extra.insert("iterations".into(), json!(ITERS));
    extra.insert("batch_pages_per_doorbell".into(), json!(512));
    Ok(BenchResult {
        scenario: "rpc",
        unit: "us per op",
        rounds: o.rounds,
        series,
        ratios,
        extra,
    })
}

/// `shrink`: return N MiB (default 1 GiB) a guest held and touched, by one FREE through the
/// ring, vs `madvise(MADV_DONTNEED)` of the same amount of touched plain guest memory.
pub fn shrink(o: &BenchOpts) -> Result<BenchResult> {
    let mib = o.mib.unwrap_or(1024);
    let sides = vec![
        Side {
            name: "baseline madvise(DONTNEED)".into(),
            cfg: cfg(
                "shrink-plain",
                2,
                mib as u32,
                mib,
                Backing::Plain {
                    discard_at_exit: true,
                    populate_ahead: false,
                },
            ),
            measure: |r| r.discard.map(|d| d.elapsed.as_secs_f64() * 1e3),
        },
        Side {
            name: "memout FREE".into(),
            cfg: cfg("shrink-memout", 7, mib as u32, mib, Backing::Memout),
            measure: ms_between_checkpoints,
        },
    ];
    let mut worst_left: f64 = 0.0;
    let series = measure(&sides, o.rounds, |name, r| {
        if name == "memout FREE" {
            let rss = |id| {
                r.checkpoints
                    .iter()
                    .find(|c| c.id == id)
                    .map_or(0, |c| c.region_rss)
            };
            let before = rss(1).max(1);
            worst_left = worst_left.max(rss(2) as f64 / before as f64);
        }
    })?;
    let ratios = vec![ratio(
        &series,
        "memout FREE",
        "baseline madvise(DONTNEED)",
        "shrink",
        Some(1.25),
    )];
    let mut extra = Map::new();
    extra.insert("mib".into(), json!(mib));
    extra.insert("rss_gone_fraction_worst".into(), json!(1.0 - worst_left));
    extra.insert(
        "rss_gone_target_met".into(),
        json!(1.0 - worst_left >= 0.99),
    );
    Ok(BenchResult {
        scenario: "shrink",
        unit: "ms",
        rounds: o.rounds,
        series,
        ratios,
        extra,
    })
}

pub(crate) fn ms_between_checkpoints_at(r: &RunReport, a: u32, b: u32) -> Option<f64> {
    r.between(a, b).map(|d| d.as_secs_f64() * 1e3)
}
