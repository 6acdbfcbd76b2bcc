//! `memout bench shared`: four guests see the same 64 MiB object. memout: a shared segment,
//! registered once and mapped read-only by each guest where it asks. Baseline: KSM, the thing
//! a user would run instead: the four guests hold the same bytes in their own memory and ksmd
//! merges them (ksmtuned's top rate, 1250 pages / 20 ms, with the guests mergeable once their
//! data is written). Both end with one host copy of the object for four guests.
//!
//! Time to share: from registering the segment (the bytes already in memout's memory, a
//! favourable assumption: no file read) until all four guests have it mapped. Time to merge:
//! from the guests holding their data until KSM saved ≥ 95 % of the three redundant copies
//! (bounded at 120 s). Ratio = time to share ÷ time to merge. Host memory saved is reported
//! for both.

use super::error::Error;
use super::{BenchOpts, BenchResult, Series, ratio};
use crate::image::GuestImage;
use crate::runner::{RunConfig, RunReport, run_guest};
use memout_server::Server;
use memout_server::ksm::{ControllerConfig, KsmMode, KsmSysfs};
use memout_server::segment::Access;
use serde_json::{Map, json};
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const GUESTS: usize = 4;
const SHARE: &str = "shared segment: time to share";
const MERGE: &str = "KSM: time to merge";

fn image(name: &'static str) -> super::Result<GuestImage> {
    let b = crate::images::get(name).ok_or(Error::NoImage(name))?;
    GuestImage::parse(b.to_vec()).map_err(|source| Error::Image { name, source })
}

/// Runs `cfgs` on `server`; `during` runs once they started; then they finish and must pass.
fn with_guests<T>(
    server: &Server,
    img: &GuestImage,
    cfgs: &[RunConfig],
    during: impl FnOnce() -> super::Result<T>,
) -> super::Result<T> {
    std::thread::scope(|sc| {
        let runs: Vec<_> = cfgs
            .iter()
            .map(|c| sc.spawn(|| run_guest(server, img, c)))
            .collect();
        let r = during();
        for c in cfgs {
            c.finish.store(true, SeqCst);
        }
        for (run, c) in runs.into_iter().zip(cfgs) {
            let rep: RunReport = run.join().expect("guest threads do not panic")?;
            if !rep.passed() {
                return Err(Error::GuestFailed {
                    side: c.name.clone(),
                    outcome: rep.outcome,
                    output: rep.output.join("\n"),
                });
            }
        }
        r
    })
}

fn cfgs(prefix: &str, mib: u64, arg: u32) -> Vec<RunConfig> {
    (0..GUESTS)
        .map(|i| RunConfig {
            name: format!("{prefix}{i}"),
            region_size: 256 * MIB,
            quota_bytes: (mib + 16) * MIB,
            arg,
            timeout: Duration::from_secs(600),
            ..Default::default()
        })
        .collect()
}

fn wait(
    what: &'static str,
    side: &str,
    bound: Duration,
    mut f: impl FnMut() -> bool,
) -> super::Result<()> {
    let end = Instant::now() + bound;
    while !f() {
        if Instant::now() > end {
            return Err(Error::NoMeasurement {
                side: side.to_string(),
                what,
            });
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// One round of each side: (share ms, saved MiB), (merge ms, saved MiB).
fn round(
    mib: u64,
    content: &[u8],
    guard: Option<&std::path::Path>,
) -> super::Result<((f64, f64), (f64, f64))> {
    // memout: four guests wait for the segment; register it, and they map it.
    let img = image("segment")?;
    let c = cfgs("share", mib, mib as u32 | 1 << 17);
    let s = Server::builder().build()?;
    let share = with_guests(&s, &img, &c, || {
        // The guests are up and asking (they retry while the segment does not exist).
        wait("guests", SHARE, Duration::from_secs(60), || {
            c.iter().all(|g| s.registry().find(&g.name).is_some())
        })?;
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        s.segments()
            .register("lib", content, Access::All)
            .map_err(|e| Error::Io(std::io::Error::other(e)))?;
        wait("mappings", SHARE, Duration::from_secs(60), || {
            s.segments()
                .list()
                .first()
                .is_some_and(|i| i.guests.len() == GUESTS)
        })?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let host = s.segments().list()[0].host_bytes as f64 / MIB as f64;
        Ok((ms, GUESTS as f64 * mib as f64 - host))
    })?;
    // KSM: four guests hold the same bytes; ksmd merges them.
    let s = Server::builder().build()?;
    let mut kc = ControllerConfig::system();
    kc.saved_path = std::env::temp_dir().join(format!("memout-bench-ksm-{}", std::process::id()));
    kc.guard = guard.map(|exe| crate::experiment::ksm_guard_command(exe, &kc));
    s.configure_ksm(kc);
    s.ksm()
        .set_mode(KsmMode::On)
        .map_err(|e| Error::Io(std::io::Error::other(e)))?;
    let k = KsmSysfs::system();
    let img = image("ksmfill")?;
    let c = cfgs("merge", mib, mib as u32);
    let merge = with_guests(&s, &img, &c, || {
        wait("fills", MERGE, Duration::from_secs(120), || {
            c.iter().all(|g| {
                s.registry()
                    .find(&g.name)
                    .is_some_and(|g| g.stats().resident_pages >= mib * MIB / 4096)
            })
        })?;
        std::thread::sleep(Duration::from_millis(200));
        let base = k
            .counters()
            .map_err(|e| Error::Io(std::io::Error::other(e)))?;
        let t = Instant::now();
        for g in &c {
            if let Some(g) = s.registry().find(&g.name) {
                g.set_mergeable(true)
                    .map_err(|e| Error::Io(std::io::Error::other(e)))?;
            }
        }
        let want = (GUESTS as u64 - 1) * mib * MIB / 4096 * 95 / 100;
        let saved = || {
            k.counters()
                .map_or(0, |c| c.pages_sharing.saturating_sub(base.pages_sharing))
        };
        wait("KSM merging", MERGE, Duration::from_secs(120), || {
            saved() >= want
        })?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        Ok((ms, saved() as f64 * 4096.0 / MIB as f64))
    })?;
    Ok((share, merge))
}

/// Runs the scenario (`--mib`: the object's size, default 64).
pub fn run(o: &BenchOpts) -> super::Result<BenchResult> {
    let mib = o.mib.unwrap_or(64);
    let content = crate::segments::guest_pattern(mib * MIB);
    let mut share = Series {
        name: SHARE.into(),
        samples: Vec::new(),
    };
    let mut merge = Series {
        name: MERGE.into(),
        samples: Vec::new(),
    };
    let (mut share_saved, mut merge_saved) = (Vec::new(), Vec::new());
    // One warm-up round, then the measured ones.
    for r in 0..=o.rounds {
        let ((s_ms, s_saved), (m_ms, m_saved)) = round(mib, &content, o.ksm_guard.as_deref())?;
        if r > 0 {
            share.samples.push(s_ms);
            merge.samples.push(m_ms);
            share_saved.push(s_saved);
            merge_saved.push(m_saved);
        }
    }
    let series = vec![share, merge];
    let ratios = vec![ratio(
        &series,
        SHARE,
        MERGE,
        "time to share ÷ time to merge",
        None,
    )];
    let mut extra = Map::new();
    extra.insert("guests".into(), json!(GUESTS));
    extra.insert("object_mib".into(), json!(mib));
    extra.insert("segment_saved_mib".into(), json!(share_saved));
    extra.insert("ksm_saved_mib".into(), json!(merge_saved));
    extra.insert(
        "ksm_rate".into(),
        json!({"pages_to_scan": 1250, "sleep_millisecs": 20}),
    );
    Ok(BenchResult {
        scenario: "shared",
        unit: "ms",
        rounds: o.rounds,
        series,
        ratios,
        extra,
    })
}
