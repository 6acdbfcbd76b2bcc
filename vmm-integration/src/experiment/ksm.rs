//! Seed 000's KSM experiment on memout's own KVM guests: host memory with KSM off and on for
//! 1…4 identical guests, in the paper's three focuses: (1) guests that only start (each loads
//! the same image-sized block and idles), (2) guests running a CPU-bound prime search, (3)
//! guests filling anonymous memory with random vs identical data.
//!
//! "KSM on" means the server's KSM controller runs ksmd (`on`: 1250 pages / 20 ms) and the
//! guests are made mergeable once they hold their data; "off" means they are not mergeable. After the guests hold their data,
//! the run waits for KSM to converge (at least ten complete scans in a row with no change in
//! `pages_sharing`; bounded, the time or the timeout is recorded). Host memory for the guests is their
//! resident memory minus what KSM saved (`pages_sharing` since the run began).

use super::{Error, GuestKind, Options, Result};
use crate::image::GuestImage;
use crate::runner::{RunConfig, RunReport, run_guest};
use memout_server::Server;
use memout_server::ksm::{ControllerConfig, KsmCounters, KsmMode, KsmSysfs};
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

/// One focus: what its guests do.
#[derive(Debug, Clone, Copy)]
pub(super) struct Focus {
    pub(super) key: &'static str,
    /// Working set in MiB (full run, quick run).
    pub(super) mib: (u64, u64),
    /// Content: 0 identical, 1 random.
    pub(super) content: u32,
    /// A CPU-bound prime search runs.
    pub(super) primes: bool,
}

/// The focus called `key` (one of [`FOCUS_KEYS`]).
pub(super) fn focus(key: &str) -> Focus {
    *FOCUSES
        .iter()
        .find(|f| f.key == key)
        .expect("a focus of FOCUS_KEYS")
}

/// The KSM controller's settings for a run: the system's sysfs, its own saved-settings file,
/// and the guard process if the options name one.
pub(super) fn controller_config(opts: &Options) -> ControllerConfig {
    let mut cfg = ControllerConfig::system();
    cfg.saved_path = std::env::temp_dir().join(format!("memout-ksm-exp-{}", std::process::id()));
    cfg.guard = opts
        .ksm_guard
        .as_deref()
        .map(|exe| super::ksm_guard_command(exe, &cfg));
    cfg
}

/// The focuses, in the order they run.
pub const FOCUS_KEYS: [&str; 4] = ["start", "primes", "fill-identical", "fill-random"];

const FOCUSES: [Focus; 4] = [
    Focus {
        key: "start",
        mib: (16, 8),
        content: 0,
        primes: false,
    },
    Focus {
        key: "primes",
        mib: (16, 8),
        content: 0,
        primes: true,
    },
    Focus {
        key: "fill-identical",
        mib: (64, 16),
        content: 0,
        primes: false,
    },
    Focus {
        key: "fill-random",
        mib: (64, 16),
        content: 1,
        primes: false,
    },
];

/// One measurement.
#[derive(Debug, Clone)]
pub struct Row {
    /// Which guests: memout's KVM guests or Linux guests under QEMU.
    pub kind: GuestKind,
    /// Focus key.
    pub focus: &'static str,
    /// Guests running.
    pub guests: usize,
    /// KSM on (mergeable guests, ksmd running).
    pub ksm: bool,
    /// Repetition.
    pub rep: usize,
    /// Each guest's working set, MiB.
    pub set_mib: u64,
    /// The guests' resident memory, MiB.
    pub resident_mib: f64,
    /// Pages KSM saved since the run began (`pages_sharing`), as MiB.
    pub saved_mib: f64,
    /// Host memory for the guests: resident minus saved, MiB.
    pub host_mib: f64,
    /// Change in `pages_shared` (KSM's own copies).
    pub shared_pages: i64,
    /// The guests' pages that are KSM pages now.
    pub merged_guest_pages: u64,
    /// Change in the host's used memory (MemTotal − MemAvailable), MiB.
    pub system_used_mib: f64,
    /// Page faults memout served for the guests (`None`: guests memout does not serve).
    pub faults: Option<u64>,
    /// Seconds until KSM converged, or the bound if it did not.
    pub converge_s: f64,
    /// Converged within the bound.
    pub converged: bool,
    /// Prime search: primes found per second, per guest (focus 2).
    pub primes_per_s: Option<f64>,
}

pub(super) fn used_kib() -> u64 {
    use memout_server::procfs::{meminfo, parse_meminfo_kib};
    let t = meminfo().unwrap_or_default();
    parse_meminfo_kib(&t, "MemTotal").saturating_sub(parse_meminfo_kib(&t, "MemAvailable"))
}

/// Scans KSM needs at least before it can have merged anything written before them: one to
/// see a page's checksum, one to find it unchanged and put it in the unstable tree, one to
/// meet its twin there; one more for margin.
const MIN_SCANS: u64 = 4;

/// Scans in a row without a change in `pages_sharing` (within 0.1 %) that count as converged.
/// With `smart_scan` (Linux ≥ 6.7, on by default) KSM skips a page that did not merge for up
/// to 8 scans, so a page still being written when scanning began may merge only after a
/// quiet stretch of that length.
const STABLE_SCANS: u32 = 10;

/// KSM's counters once ksmd has made two full scans (bounded): pages of processes that ended
/// stay counted until ksmd passes over them, so a baseline read right after a run would count
/// the last run's guests. ksmd does not scan while nothing is mergeable, and then nothing is
/// stale either: a second without a scan also settles. Call with ksmd running.
pub(super) fn settled_counters(k: &KsmSysfs) -> Result<KsmCounters> {
    let first = k.counters()?.full_scans;
    let t = Instant::now();
    loop {
        let c = k.counters()?;
        let idle = c.full_scans == first && t.elapsed() > Duration::from_secs(1);
        if c.full_scans >= first + 2 || idle || t.elapsed() > Duration::from_secs(30) {
            return Ok(c);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until KSM converged: at least [`MIN_SCANS`] full scans after `from`, the last
/// [`STABLE_SCANS`] with `pages_sharing` unchanged. Returns (seconds, converged).
pub(super) fn converge(k: &KsmSysfs, from: Instant, bound: Duration) -> Result<(f64, bool)> {
    let mut last: Option<KsmCounters> = None;
    let first = k.counters()?.full_scans;
    let mut stable_scans = 0;
    while from.elapsed() < bound {
        let c = k.counters()?;
        if let Some(l) = last.filter(|l| c.full_scans > l.full_scans) {
            let same = c.pages_sharing.abs_diff(l.pages_sharing) * 1000 <= c.pages_sharing.max(1);
            stable_scans = if same { stable_scans + 1 } else { 0 };
            if stable_scans >= STABLE_SCANS && c.full_scans >= first + MIN_SCANS {
                return Ok((from.elapsed().as_secs_f64(), true));
            }
        }
        if last.is_none_or(|l| c.full_scans > l.full_scans) {
            last = Some(c);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok((bound.as_secs_f64(), false))
}

/// The guests' reports once they ended; an error names the first that did not pass.
fn joined(
    runs: Vec<std::thread::ScopedJoinHandle<'_, crate::runner::Result<RunReport>>>,
    cfgs: &[RunConfig],
) -> Result<Vec<RunReport>> {
    let mut out = Vec::new();
    for (r, c) in runs.into_iter().zip(cfgs) {
        let r = r.join().expect("guest threads do not panic")?;
        if !r.passed() {
            return Err(Error::Guest {
                name: c.name.clone(),
                outcome: format!("{}: {}", r.outcome, r.output.join(" / ")),
            });
        }
        out.push(r);
    }
    Ok(out)
}

/// The count a `ksmfill` guest printed.
fn primes_found(r: &RunReport) -> Option<u64> {
    r.output.iter().find_map(|l| {
        let before = l.split(" primes found").next()?;
        before.rsplit(' ').next()?.parse().ok()
    })
}

/// The fourth panel: `n` guests see the same object as the fill focus's identical data, but
/// through a shared segment (memout registers it once; each guest maps it). "Converge" is the
/// time from registering it until every guest has mapped it; host memory is its one copy.
pub fn measure_segment(opts: &Options, n: usize, rep: usize) -> Result<Row> {
    let mib = if opts.quick {
        FOCUSES[2].mib.1
    } else {
        FOCUSES[2].mib.0
    };
    let server = Server::builder().build()?;
    let img = GuestImage::parse(
        crate::images::get("segment")
            .expect("segment is built in")
            .to_vec(),
    )
    .expect("built-in images parse");
    let content = crate::segments::guest_pattern(mib * MIB);
    let cfgs: Vec<RunConfig> = (0..n)
        .map(|i| RunConfig {
            name: format!("seg{i}"),
            region_size: 64 * MIB,
            quota_bytes: 16 * MIB,
            // The segment's size; wait for it to exist.
            arg: mib as u32 | 1 << 17,
            timeout: Duration::from_secs(900),
            ..Default::default()
        })
        .collect();
    std::thread::scope(|sc| -> Result<Row> {
        let runs: Vec<_> = cfgs
            .iter()
            .map(|c| sc.spawn(|| run_guest(&server, &img, c)))
            .collect();
        let finish_all = || cfgs.iter().for_each(|c| c.finish.store(true, SeqCst));
        let up = Instant::now();
        while !cfgs
            .iter()
            .all(|c| server.registry().find(&c.name).is_some())
        {
            if up.elapsed() > Duration::from_secs(60) {
                finish_all();
                return Err(Error::Fill("segment guests".into()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        server
            .segments()
            .register("lib", &content, memout_server::segment::Access::All)
            .map_err(|e| Error::Unsupported(e.to_string()))?;
        let mapped = || {
            server
                .segments()
                .list()
                .first()
                .is_some_and(|i| i.guests.len() == n)
        };
        while !mapped() {
            if t.elapsed() > Duration::from_secs(60) {
                finish_all();
                return Err(Error::Fill("segment mappings".into()));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let share_s = t.elapsed().as_secs_f64();
        let host = server.segments().list()[0].host_bytes as f64 / MIB as f64;
        let guests: Vec<_> = cfgs
            .iter()
            .filter_map(|c| server.registry().find(&c.name))
            .collect();
        let own: u64 = guests.iter().map(|g| g.stats().resident_pages).sum();
        let faults = guests.iter().map(|g| g.stats().faults).sum();
        finish_all();
        joined(runs, &cfgs)?;
        let own_mib = own as f64 * 4096.0 / MIB as f64;
        Ok(Row {
            kind: GuestKind::Memout,
            focus: "segment",
            guests: n,
            ksm: false,
            rep,
            set_mib: mib,
            resident_mib: own_mib + host,
            saved_mib: n as f64 * mib as f64 - host,
            host_mib: own_mib + host,
            shared_pages: 0,
            merged_guest_pages: 0,
            system_used_mib: 0.0,
            faults: Some(faults),
            converge_s: share_s,
            converged: true,
            primes_per_s: None,
        })
    })
}

/// Measures focus `key` with `n` guests, KSM on or off.
pub fn measure_focus(opts: &Options, key: &str, n: usize, ksm: bool, rep: usize) -> Result<Row> {
    measure(opts, focus(key), n, ksm, rep)
}

fn measure(opts: &Options, f: Focus, n: usize, ksm: bool, rep: usize) -> Result<Row> {
    let mib = if opts.quick { f.mib.1 } else { f.mib.0 };
    let k = KsmSysfs::system();
    let server = Server::builder().build()?;
    if ksm {
        server.configure_ksm(controller_config(opts));
        server.ksm().set_mode(KsmMode::On)?;
    }
    let img = GuestImage::parse(
        crate::images::get("ksmfill")
            .expect("ksmfill is built in")
            .to_vec(),
    )
    .expect("built-in images parse");
    let base = if ksm {
        settled_counters(&k)?
    } else {
        k.counters()?
    };
    let base_used = used_kib();
    let cfgs: Vec<RunConfig> = (0..n)
        .map(|i| RunConfig {
            name: format!("ksm{i}"),
            region_size: 256 * MIB,
            quota_bytes: (mib + 16) * MIB,
            arg: mib as u32 | f.content << 16 | u32::from(f.primes) << 18,
            timeout: Duration::from_secs(900),
            ..Default::default()
        })
        .collect();
    let bound = Duration::from_secs(if opts.quick { 30 } else { 120 });
    std::thread::scope(|sc| -> Result<Row> {
        let runs: Vec<_> = cfgs
            .iter()
            .map(|c| sc.spawn(|| run_guest(&server, &img, c)))
            .collect();
        let finish_all = || cfgs.iter().for_each(|c| c.finish.store(true, SeqCst));
        let filled = Instant::now();
        let full = |c: &RunConfig| {
            server
                .registry()
                .find(&c.name)
                .is_some_and(|g| g.stats().resident_pages >= mib * MIB / 4096)
        };
        while !cfgs.iter().all(full) {
            if filled.elapsed() > Duration::from_secs(120) || runs.iter().any(|r| r.is_finished()) {
                finish_all();
                let name = cfgs.iter().find(|c| !full(c)).map(|c| c.name.clone());
                return Err(Error::Fill(name.unwrap_or_default()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Mergeable once the data is written: KSM's smart scan skips a page that did not
        // merge for up to 8 scans, so twins written while being scanned can fall out of step
        // and stay apart for long (runs mergeable from the start ended 25-89 % merged).
        if ksm {
            for c in &cfgs {
                if let Some(g) = server.registry().find(&c.name) {
                    g.set_mergeable(true)
                        .map_err(|e| Error::Unsupported(e.to_string()))?;
                }
            }
        }
        let held = Instant::now();
        let (converge_s, converged) = if ksm {
            converge(&k, held, bound)?
        } else {
            std::thread::sleep(Duration::from_secs(if opts.quick { 1 } else { 3 }));
            (0.0, true)
        };
        let c = k.counters()?;
        let guests: Vec<_> = cfgs
            .iter()
            .filter_map(|c| server.registry().find(&c.name))
            .collect();
        let resident: u64 = guests.iter().map(|g| g.stats().resident_pages).sum();
        let faults = guests.iter().map(|g| g.stats().faults).sum();
        let merged = guests.iter().filter_map(|g| g.ksm_pages().ok()).sum();
        let system_used = used_kib() as f64 - base_used as f64;
        let held_s = held.elapsed().as_secs_f64();
        finish_all();
        let primes: Vec<u64> = joined(runs, &cfgs)?
            .iter()
            .filter_map(primes_found)
            .collect();
        let saved = c.pages_sharing.saturating_sub(base.pages_sharing) as f64 * 4096.0 / MIB as f64;
        let resident_mib = resident as f64 * 4096.0 / MIB as f64;
        Ok(Row {
            kind: GuestKind::Memout,
            focus: f.key,
            guests: n,
            ksm,
            rep,
            set_mib: mib,
            resident_mib,
            saved_mib: saved,
            host_mib: resident_mib - saved,
            shared_pages: c.pages_shared as i64 - base.pages_shared as i64,
            merged_guest_pages: merged,
            system_used_mib: system_used / 1024.0,
            faults: Some(faults),
            converge_s,
            converged,
            primes_per_s: f
                .primes
                .then(|| primes.iter().sum::<u64>() as f64 / primes.len().max(1) as f64 / held_s),
        })
    })
}
