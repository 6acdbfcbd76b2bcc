//! Runs the KSM experiment ([`super::ksm`] on memout's guests, [`super::ksm_linux`] on Linux
//! guests under QEMU) over its focuses, guest counts and repetitions, and writes what it found:
//! `results.csv` (every measurement, with the guest kind), one chart + CSV per focus and guest
//! kind, a Markdown summary ([`super::ksm_summary`]) and the manifest.

use super::chart::Bars;
use super::ksm::{FOCUS_KEYS, Row, measure_focus, measure_segment};
use super::{GuestKind, Options, Result, now_unix, prepare, progress, write, write_manifest};
use crate::qemu::launch::LinuxImage;
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

/// Guest counts of a run: the quick run boots only two Linux guests (each takes seconds
/// under emulation), the smallest count where guests can share.
pub fn counts(kind: GuestKind, quick: bool) -> Vec<usize> {
    match (kind, quick) {
        (GuestKind::Memout, true) => vec![1, 2],
        (GuestKind::Linux, true) => vec![2],
        (_, false) => vec![1, 2, 3, 4],
    }
}

/// The measurement with the median host memory among the repetitions.
fn median(rows: &[Row]) -> Row {
    let mut v: Vec<&Row> = rows.iter().collect();
    v.sort_by(|a, b| a.host_mib.total_cmp(&b.host_mib));
    v[v.len() / 2].clone()
}

/// Medians by (guest kind, focus, guest count, KSM on).
pub struct Medians(BTreeMap<(GuestKind, &'static str, usize, bool), Row>);

impl Medians {
    fn of(rows: &[Row]) -> Self {
        let mut groups: BTreeMap<_, Vec<Row>> = BTreeMap::new();
        for r in rows {
            groups
                .entry((r.kind, r.focus, r.guests, r.ksm))
                .or_default()
                .push(r.clone());
        }
        Self(groups.into_iter().map(|(k, v)| (k, median(&v))).collect())
    }

    /// The median row of one cell (measured by the run).
    pub fn get(&self, kind: GuestKind, focus: &str, n: usize, ksm: bool) -> &Row {
        self.0
            .iter()
            .find(|((k, f, g, o), _)| *k == kind && *f == focus && *g == n && *o == ksm)
            .map(|(_, r)| r)
            .expect("every cell of the run was measured")
    }
}

/// Runs it all; returns the files written.
pub fn run(opts: &Options) -> Result<Vec<PathBuf>> {
    prepare(opts)?;
    let started = now_unix();
    let image = if opts.guests.contains(&GuestKind::Linux) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/linux-guest");
        Some(LinuxImage::build(&dir)?)
    } else {
        None
    };
    let total: usize = opts
        .guests
        .iter()
        .map(|&k| {
            let panels = FOCUS_KEYS.len() * 2 + usize::from(k == GuestKind::Memout);
            panels * counts(k, opts.quick).len() * opts.repeat
        })
        .sum();
    let bar = progress(opts, total as u64);
    let mut all = Vec::new();
    for &kind in &opts.guests {
        for focus in FOCUS_KEYS {
            for n in counts(kind, opts.quick) {
                for rep in 0..opts.repeat {
                    // Off and on alternate, so drift on the host hits both alike.
                    for ksm in [false, true] {
                        let on = if ksm { "on" } else { "off" };
                        bar.set_message(format!("{kind} {focus} ×{n} {on}"));
                        all.push(match &image {
                            Some(i) if kind == GuestKind::Linux => {
                                super::ksm_linux::measure(opts, i, focus, n, ksm, rep)?
                            }
                            _ => measure_focus(opts, focus, n, ksm, rep)?,
                        });
                        bar.inc(1);
                    }
                }
            }
        }
        if kind == GuestKind::Memout {
            for n in counts(kind, opts.quick) {
                for rep in 0..opts.repeat {
                    bar.set_message(format!("segment ×{n}"));
                    all.push(measure_segment(opts, n, rep)?);
                    bar.inc(1);
                }
            }
        }
    }
    bar.finish_and_clear();
    let med = Medians::of(&all);
    let mut files = vec![write(&opts.out, "results.csv", &csv(&all))?];
    for &kind in &opts.guests {
        files.extend(charts(opts, kind, &med)?);
    }
    files.push(write(
        &opts.out,
        "summary.md",
        &super::ksm_summary::summary(opts, &med),
    )?);
    let params = json!({
        "guest_kinds": opts.guests.iter().map(|k| k.to_string()).collect::<Vec<_>>(),
        "guest_counts": opts.guests.iter().map(|&k| (k.to_string(), counts(k, opts.quick))).collect::<BTreeMap<_, _>>(),
        "focuses": FOCUS_KEYS,
        "ksm_on": {"pages_to_scan": 1250, "sleep_millisecs": 20},
        "converge": "10 full scans in a row without a change in pages_sharing (0.1 %)",
        "smart_scan": std::fs::read_to_string("/sys/kernel/mm/ksm/smart_scan").ok().map(|s| s.trim().to_string()),
        "converge_bound_s": {"memout": if opts.quick { 30 } else { 120 }, "linux": if opts.quick { 60 } else { 180 }},
        "linux_guest": image.as_ref().map(|i| json!({"kernel": i.kernel, "initrd": i.initrd, "ram_mib": 256, "qemu": "-accel tcg,thread=multi -cpu max -smp 1,maxcpus=2"})),
    });
    files.push(write_manifest(opts, "ksm", params, started, &files)?);
    Ok(files)
}

/// The charts of one guest kind: memout's keep the names `ksm-*`, Linux's are `ksm-linux-*`.
fn charts(opts: &Options, kind: GuestKind, med: &Medians) -> Result<Vec<PathBuf>> {
    let ns = counts(kind, opts.quick);
    let stem = |s: &str| match kind {
        GuestKind::Memout => format!("ksm-{s}"),
        GuestKind::Linux => format!("ksm-linux-{s}"),
    };
    let who = match kind {
        GuestKind::Memout => "",
        GuestKind::Linux => ", Linux guests",
    };
    let cats: Vec<String> = ns.iter().map(|n| n.to_string()).collect();
    let each = |f: &str, k: bool, v: fn(&Row) -> f64| {
        ns.iter()
            .map(|&n| v(med.get(kind, f, n, k)))
            .collect::<Vec<_>>()
    };
    let host = |f: &str, k: bool| each(f, k, |r| r.host_mib);
    let bars = |title: String, y: &str, series: Vec<(String, Vec<f64>)>| Bars {
        title,
        x_label: "guests".into(),
        y_label: y.into(),
        categories: cats.clone(),
        series,
    };
    const HOST: &str = "host memory for the guests, MiB";
    let off_on = |f: &str| {
        vec![
            ("KSM off".to_string(), host(f, false)),
            ("KSM on".to_string(), host(f, true)),
        ]
    };
    let mut files = Vec::new();
    files.extend(
        bars(
            format!("(1) guests that only start{who}"),
            HOST,
            off_on("start"),
        )
        .save(&opts.out, &stem("start"))?,
    );
    files.extend(
        bars(
            format!("(2) guests searching primes{who}"),
            HOST,
            off_on("primes"),
        )
        .save(&opts.out, &stem("primes"))?,
    );
    files.extend(
        bars(
            format!("(3) guests filling memory: random vs identical{who}"),
            HOST,
            vec![
                ("random, KSM off".into(), host("fill-random", false)),
                ("random, KSM on".into(), host("fill-random", true)),
                ("identical, KSM off".into(), host("fill-identical", false)),
                ("identical, KSM on".into(), host("fill-identical", true)),
            ],
        )
        .save(&opts.out, &stem("fill"))?,
    );
    let rate = |r: &Row| r.primes_per_s.unwrap_or(f64::NAN);
    files.extend(
        bars(
            format!("(2) prime search rate per guest{who}"),
            "primes found per second",
            vec![
                ("KSM off".into(), each("primes", false, rate)),
                ("KSM on".into(), each("primes", true, rate)),
            ],
        )
        .save(&opts.out, &stem("primes-rate"))?,
    );
    if kind == GuestKind::Memout {
        let seg = |v: fn(&Row) -> f64| each("segment", false, v);
        files.extend(
            bars(
                "(4) the same object: KSM merging vs a shared segment".into(),
                HOST,
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
            bars(
                "(4) time until the guests share one copy".into(),
                "seconds",
                vec![
                    (
                        "KSM: time to merge".into(),
                        each("fill-identical", true, |r| r.converge_s),
                    ),
                    ("segment: time to share".into(), seg(|r| r.converge_s)),
                ],
            )
            .save(&opts.out, "ksm-segment-time")?,
        );
    }
    Ok(files)
}

fn csv(rows: &[Row]) -> String {
    let mut s = String::from(
        "guest_kind,focus,guests,ksm,rep,set_mib,resident_mib,saved_mib,host_mib,shared_pages,merged_guest_pages,system_used_mib,faults,converge_s,converged,primes_per_s\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{:.2},{:.2},{:.2},{},{},{:.2},{},{:.2},{},{}",
            r.kind,
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
            r.faults.map_or(String::new(), |f| f.to_string()),
            r.converge_s,
            r.converged,
            r.primes_per_s.map_or(String::new(), |p| format!("{p:.1}"))
        );
    }
    s
}
