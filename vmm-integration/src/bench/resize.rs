//! `memout bench resize`: shrink a running guest from 1 GiB to 256 MiB, timed from the resize
//! request until the guest's host memory is at the target, in three cases:
//!
//! - **free in the guest**: the guest's driver holds 768 MiB in its pool (frames it got from
//!   the host but does not use, like a guest kernel's free list) and gives them back when
//!   asked, without involving its owner;
//! - **released on request**: the guest holds all 1 GiB with data; its owner's release
//!   callback drops 768 MiB of it (64 chunks per doorbell);
//! - **evicted**: the guest ignores the request; the server evicts 768 MiB to the backing
//!   store (release deadline 0, so only the eviction is timed).
//!
//! Baselines, in the same process: `madvise(MADV_DONTNEED)` of 768 MiB of touched anonymous
//! memory; and, for the evicted case, which must also save the data, an O_DIRECT write of the
//! same 768 MiB (2 MiB at a time, to a file in the same directory) followed by that madvise.
//! Rounds alternate the sides after one warm-up round of each.

use super::{BenchOpts, BenchResult, Error, Ratio, Result, Series, passed};
use crate::image::GuestImage;
use crate::runner::{RunConfig, run_guest};
use indicatif::{ProgressBar, ProgressStyle};
use memout_server::host_mem::AlignedBuf;
use memout_server::procfs::mapping_rss;
use memout_server::{BackingStore, Eviction, FileStore, ResizeOptions, ResizeStage, Server};
use serde_json::{Map, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

#[derive(Clone, Copy)]
enum Case {
    Pool,
    Release,
    Evict,
}

impl Case {
    fn name(self) -> &'static str {
        match self {
            Self::Pool => "memout/free in guest",
            Self::Release => "memout/released on request",
            Self::Evict => "memout/evicted",
        }
    }
}

struct Round {
    ms: f64,
    rss_after: u64,
}

fn shrink_once(
    server: &Server,
    image: &GuestImage,
    o: &BenchOpts,
    from: u64,
    to: u64,
    case: Case,
) -> Result<Round> {
    let mib = (from / MIB) as u32;
    // resizer: hold `mib`, bench mode; pool mode keeps `to` in use and the rest in the pool.
    let arg = mib
        | 1 << 18
        | match case {
            Case::Pool => 1 << 19 | ((to / MIB) as u32) << 20,
            Case::Release => 0,
            Case::Evict => 1 << 16,
        };
    let eviction = match case {
        Case::Evict => Eviction::Store(Arc::new(FileStore::create(&o.dir, "bench-resize", from)?)),
        _ => Eviction::None,
    };
    let cfg = RunConfig {
        name: "bench-resize".into(),
        region_size: from,
        quota_bytes: from,
        arg,
        timeout: Duration::from_secs(300),
        eviction,
        ..Default::default()
    };
    let finish = cfg.finish.clone();
    let registry = server.registry();
    std::thread::scope(|s| {
        let run = s.spawn(|| run_guest(server, image, &cfg));
        let result = (|| {
            let end = Instant::now() + Duration::from_secs(120);
            let core = loop {
                if let Some(c) = registry.find("bench-resize") {
                    let st = c.stats();
                    if st.allocated_pages * 4096 >= from && st.resident_pages * 4096 >= from {
                        break c;
                    }
                }
                if Instant::now() > end || run.is_finished() {
                    return Err(Error::NotFilled);
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            std::thread::sleep(Duration::from_millis(50));
            let release_deadline = match case {
                Case::Evict => Duration::ZERO,
                _ => Duration::from_secs(30),
            };
            let p = core.resize(to, ResizeOptions { release_deadline })?;
            let p = core
                .wait_resize(p.id, Duration::from_secs(120))
                .ok_or(Error::NotFilled)?;
            if p.stage != ResizeStage::Done {
                return Err(Error::ResizeEnded {
                    stage: p.stage,
                    shortfall: p.shortfall,
                });
            }
            let rss_after = mapping_rss(core.region_host_addr()).unwrap_or(u64::MAX);
            Ok(Round {
                ms: p.elapsed.as_secs_f64() * 1e3,
                rss_after,
            })
        })();
        finish.store(true, std::sync::atomic::Ordering::SeqCst);
        let report = run.join().map_err(|_| Error::RunnerPanicked)??;
        passed("resizer", &report)?;
        result
    })
}

/// Drops `bytes` of touched anonymous memory; with `save_to`, writes them to an O_DIRECT file
/// there first (2 MiB at a time). Returns the time of the whole.
fn madvise_once(bytes: u64, save_to: Option<&std::path::Path>) -> Result<f64> {
    let mut buf = AlignedBuf::new(bytes as usize)?;
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for w in buf.as_mut_slice().chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        w.copy_from_slice(&x.to_ne_bytes());
    }
    let file = match save_to {
        Some(dir) => Some(FileStore::create(dir, "bench-resize-base", bytes)?),
        None => None,
    };
    let t = Instant::now();
    if let Some(f) = &file {
        let chunk = 2usize << 20;
        for (i, data) in buf.as_slice().chunks(chunk).enumerate() {
            f.write((i * chunk / 4096) as u64, data)?;
        }
    }
    buf.discard()?;
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

/// Runs the scenario (see the module docs). `--mib` sets the starting size (default 1024);
/// the target is a quarter of it.
pub fn run(o: &BenchOpts) -> Result<BenchResult> {
    let from = o.mib.unwrap_or(1024) * MIB;
    let to = (from / 4).max(2 * MIB) / (2 * MIB) * (2 * MIB);
    if from < 8 * MIB {
        return Err(Error::Mib {
            mib: from / MIB,
            min: 8,
            max: 64 << 10,
        });
    }
    let image = super::image("resizer")?;
    let server = Server::builder().build()?;
    let cases = [Case::Pool, Case::Release, Case::Evict];
    let base = "baseline (madvise DONTNEED)";
    let base_io = "baseline (O_DIRECT write + madvise)";
    let mut series: Vec<Series> = [base, base_io]
        .into_iter()
        .chain(cases.iter().map(|c| c.name()))
        .map(|n| Series {
            name: n.into(),
            samples: Vec::new(),
        })
        .collect();
    let bar = ProgressBar::new(((o.rounds + 1) * 5) as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg:<28} [{bar:30}] {pos}/{len} {elapsed}")
            .expect("valid template"),
    );
    let mut worst_rss = 0u64;
    for round in 0..=o.rounds {
        bar.set_message(base);
        let b = madvise_once(from - to, None)?;
        bar.inc(1);
        bar.set_message(base_io);
        let b_io = madvise_once(from - to, Some(&o.dir))?;
        bar.inc(1);
        let mut row = vec![b, b_io];
        for c in cases {
            bar.set_message(c.name());
            let r = shrink_once(&server, &image, o, from, to, c)?;
            if round > 0 {
                worst_rss = worst_rss.max(r.rss_after);
            }
            row.push(r.ms);
            bar.inc(1);
        }
        if round > 0 {
            for (s, v) in series.iter_mut().zip(row) {
                s.samples.push(v);
            }
        }
    }
    bar.finish_and_clear();
    let median = |n: &str| {
        series
            .iter()
            .find(|s| s.name == n)
            .map_or(f64::NAN, Series::median)
    };
    let mut ratios: Vec<Ratio> = cases
        .iter()
        .map(|c| Ratio {
            name: format!("{} vs madvise", c.name().trim_start_matches("memout/")),
            value: median(c.name()) / median(base),
            target_max: None,
        })
        .collect();
    // Equal work for the evicted case: its data is saved, as the second baseline's is.
    ratios.push(Ratio {
        name: "evicted vs O_DIRECT write + madvise".into(),
        value: median(Case::Evict.name()) / median(base_io),
        target_max: None,
    });
    let mut extra = Map::new();
    extra.insert("from_bytes".into(), json!(from));
    extra.insert("to_bytes".into(), json!(to));
    extra.insert("shed_bytes".into(), json!(from - to));
    extra.insert("worst_rss_after_bytes".into(), json!(worst_rss));
    extra.insert("rss_at_or_below_target".into(), json!(worst_rss <= to));
    Ok(BenchResult {
        scenario: "resize",
        unit: "ms",
        rounds: o.rounds,
        series,
        ratios,
        extra,
    })
}
