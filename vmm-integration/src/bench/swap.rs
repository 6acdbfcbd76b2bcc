//! `memout bench swap`: evict N MiB (default 512) of a guest's memory and fault it back in
//! from the guest. The guest's pages hold realistic content: pseudo-random data, with a
//! declared fraction of zero pages (`--zero-pct`, default 10). Three ways, in one run:
//!
//! - memout: eviction to its backing store (O_DIRECT file), swap-in through userfaultfd;
//! - the physical limit: O_DIRECT `pwrite`/`pread` of the same number of bytes in 2 MiB chunks
//!   to a file in the same directory (targets: out ≤ 1.43×, in ≤ 2.0× its time);
//! - the peer a user would pick instead: the kernel's swap (`MADV_PAGEOUT` to a temporary
//!   swapfile in the same directory, then the guest's faults). Needs root; without it the
//!   peer is reported as unavailable.
//!
//! Favourable to memout: zero pages are not written to its store (the kernel writes them to
//! swap; O_DIRECT writes every byte).

use super::{
    BenchOpts, BenchResult, Error, Result, Series, bench_image, cfg, ms_between_checkpoints_at,
    passed, ratio,
};
use crate::image::GuestImage;
use crate::runner::{Backing, RunReport, run_guest};
use crate::swapfile::Swapfile;
use indicatif::ProgressBar;
use memout_server::{BackingStore, Eviction, FileStore, Server};
use serde_json::{Map, json};
use std::sync::Arc;
use std::time::Instant;

const NAMES: [&str; 6] = [
    "memout evict (out)",
    "baseline O_DIRECT pwrite",
    "kernel swap MADV_PAGEOUT (out)",
    "memout fault-in (in)",
    "baseline O_DIRECT pread",
    "kernel swap fault-in (in)",
];

/// What both swap scenarios start from: the guest's parameter (MiB and zero-page percent), a
/// server, the bench image, and empty series named `names`.
pub(super) fn setup(
    o: &BenchOpts,
    mib: u64,
    names: &[&str],
) -> Result<(u32, Server, GuestImage, Vec<Series>)> {
    if o.zero_pct > 100 {
        return Err(Error::ZeroPercent(o.zero_pct));
    }
    let param = (mib as u32) | (o.zero_pct << 17);
    let series = names
        .iter()
        .map(|n| Series {
            name: n.to_string(),
            samples: Vec::new(),
        })
        .collect();
    Ok((param, Server::builder().build()?, bench_image()?, series))
}

/// The scenario's result: `extra` gains each series' median in MiB/s.
pub(super) fn result(
    o: &BenchOpts,
    mib: u64,
    series: Vec<Series>,
    ratios: Vec<super::Ratio>,
    mut extra: Map<String, serde_json::Value>,
) -> BenchResult {
    for s in &series {
        let mbps = mib as f64 / (s.median() / 1e3);
        extra.insert(format!("{} MiB/s", s.name), json!(mbps.round()));
    }
    BenchResult {
        scenario: "swap",
        unit: "ms",
        rounds: o.rounds,
        series,
        ratios,
        extra,
    }
}

/// (out ms, in ms, fraction of the memory evicted) of one guest run.
pub(super) fn guest_round(
    server: &Server,
    image: &GuestImage,
    mib: u64,
    arg_param: u32,
    eviction: Eviction,
) -> Result<(f64, f64, f64)> {
    let mut c = cfg("swap-guest", 8, arg_param, mib, Backing::Memout);
    c.eviction = eviction;
    let r: RunReport = run_guest(server, image, &c)?;
    passed("swap guest", &r)?;
    let missing = |what| Error::NoMeasurement {
        side: "swap guest".into(),
        what,
    };
    let ev = r.evictions.first().ok_or_else(|| missing("eviction"))?;
    let evicted = ev.result.clone()?;
    let out_ms = ev.took.as_secs_f64() * 1e3;
    let in_ms = ms_between_checkpoints_at(&r, 2, 3).ok_or_else(|| missing("swap-in time"))?;
    Ok((out_ms, in_ms, evicted as f64 / (mib << 20) as f64))
}

/// O_DIRECT write then read of `mib` MiB in 2 MiB chunks of random bytes: (out ms, in ms).
fn direct_round(dir: &std::path::Path, mib: u64) -> Result<(f64, f64)> {
    let chunk = 2usize << 20;
    let file = FileStore::create(dir, "baseline", mib << 20)?;
    let mut buf = memout_server::host_mem::AlignedBuf::new(chunk)?;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for w in buf.as_mut_slice().chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        w.copy_from_slice(&x.to_le_bytes());
    }
    let n = (mib << 20) as usize / chunk;
    let t = Instant::now();
    for i in 0..n {
        file.write((i * chunk / 4096) as u64, buf.as_slice())?;
    }
    let write_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    for i in 0..n {
        file.read((i * chunk / 4096) as u64, buf.as_mut_slice())?;
    }
    Ok((write_ms, t.elapsed().as_secs_f64() * 1e3))
}

/// Runs the scenario (against Redis with `--store redis://…`, see [`super::swap_redis`]).
pub fn swap(o: &BenchOpts) -> Result<BenchResult> {
    if let Some(url) = &o.store {
        return super::swap_redis::run(o, url);
    }
    let mib = o.mib.unwrap_or(512);
    if mib >= 1 << 17 {
        return Err(Error::Mib {
            mib,
            min: 1,
            max: (1 << 17) - 1,
        });
    }
    let (param, server, image, mut series) = setup(o, mib, &NAMES)?;
    // The peer: a swapfile with room for the guest's memory, removed at the end.
    let swap = Swapfile::create(&o.dir, "bench", (mib + 64) << 20);
    let kernel_note = swap.as_ref().err().map(|e| e.to_string());
    let bar = ProgressBar::new(((o.rounds + 1) * 3) as u64);
    let mut worst_fraction: [f64; 2] = [1.0, 1.0];
    for round in 0..=o.rounds {
        let store = FileStore::create(&o.dir, "bench", mib << 20)?;
        let (m_out, m_in, m_frac) = guest_round(
            &server,
            &image,
            mib,
            param,
            Eviction::Store(Arc::new(store)),
        )?;
        bar.inc(1);
        let (d_out, d_in) = direct_round(&o.dir, mib)?;
        bar.inc(1);
        let kernel = match &swap {
            Ok(_) => Some(guest_round(&server, &image, mib, param, Eviction::Kernel)?),
            Err(_) => None,
        };
        bar.inc(1);
        if round == 0 {
            continue; // warm-up
        }
        worst_fraction[0] = worst_fraction[0].min(m_frac);
        let mut values = vec![(0, m_out), (1, d_out), (3, m_in), (4, d_in)];
        if let Some((k_out, k_in, k_frac)) = kernel {
            worst_fraction[1] = worst_fraction[1].min(k_frac);
            values.extend([(2, k_out), (5, k_in)]);
        }
        for (i, v) in values {
            series[i].samples.push(v);
        }
    }
    bar.finish_and_clear();
    drop(swap);
    let mut ratios = vec![
        ratio(
            &series,
            NAMES[0],
            NAMES[1],
            "swap-out vs O_DIRECT",
            Some(1.43),
        ),
        ratio(
            &series,
            NAMES[3],
            NAMES[4],
            "swap-in vs O_DIRECT",
            Some(2.0),
        ),
    ];
    if kernel_note.is_none() {
        ratios.push(ratio(
            &series,
            NAMES[0],
            NAMES[2],
            "swap-out vs kernel swap",
            None,
        ));
        ratios.push(ratio(
            &series,
            NAMES[3],
            NAMES[5],
            "swap-in vs kernel swap",
            None,
        ));
    } else {
        series.retain(|s| !s.samples.is_empty());
    }
    let mut extra = Map::new();
    extra.insert("mib".into(), json!(mib));
    extra.insert("zero_page_percent".into(), json!(o.zero_pct));
    extra.insert("dir".into(), json!(o.dir.display().to_string()));
    let probe = FileStore::create(&o.dir, "probe", 1 << 20)?;
    extra.insert("store_o_direct".into(), json!(probe.direct()));
    extra.insert(
        "memout_evicted_fraction_worst".into(),
        json!(worst_fraction[0]),
    );
    match kernel_note {
        Some(why) => {
            extra.insert("kernel_swap".into(), json!(format!("unavailable: {why}")));
        }
        None => {
            extra.insert(
                "kernel_paged_out_fraction_worst".into(),
                json!(worst_fraction[1]),
            );
        }
    }
    Ok(result(o, mib, series, ratios, extra))
}
