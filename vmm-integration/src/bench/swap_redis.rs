//! `memout bench swap --store redis://…`: evict N MiB (default 512) of a guest's memory to a
//! Redis server and fault it back in from the guest, against the physical limit of that
//! server and link: raw pipelined `SET` and `GET` of the same number of bytes, in 2 MiB values,
//! on one connection (what `redis-cli --pipe` does), in the same run.
//!
//! memout stores a page per hash field (`HSET`/`HMGET` of 512 fields per 2 MiB key, see
//! `memout_server::redis_store`), so it sends the same bytes plus a field name per page;
//! favourable to memout: it does not store zero pages (`--zero-pct`, default 10), which the
//! raw baseline sends.

use super::swap::{guest_round, result, setup};
use super::{BenchOpts, BenchResult, Error, Result, ratio};
use memout_server::Eviction;
use memout_server::redis_store::{RedisStore, RedisStoreConfig, keys::redact};
use serde_json::{Map, json};
use std::sync::Arc;
use std::time::Instant;

const NAMES: [&str; 4] = [
    "memout evict to Redis (out)",
    "raw pipelined SET 2 MiB (out)",
    "memout fault-in from Redis (in)",
    "raw pipelined GET 2 MiB (in)",
];
/// Values per pipeline of the raw baseline (32 MiB in flight).
const BATCH: usize = 16;

/// Raw SET then GET of `mib` MiB of random bytes in 2 MiB values: (out ms, in ms).
fn raw_round(client: &redis::Client, prefix: &str, mib: u64) -> Result<(f64, f64)> {
    let mut value = vec![0u8; 2 << 20];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for w in value.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        w.copy_from_slice(&x.to_le_bytes());
    }
    let keys: Vec<String> = (0..mib / 2).map(|i| format!("{prefix}:{i}")).collect();
    let mut c = client.get_connection()?;
    let t = Instant::now();
    for batch in keys.chunks(BATCH) {
        let mut p = redis::pipe();
        for k in batch {
            p.cmd("SET").arg(k).arg(&value[..]).ignore();
        }
        p.exec(&mut c)?;
    }
    let out_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let mut bytes = 0;
    for batch in keys.chunks(BATCH) {
        let mut p = redis::pipe();
        for k in batch {
            p.cmd("GET").arg(k);
        }
        let got: Vec<Vec<u8>> = p.query(&mut c)?;
        bytes += got.iter().map(Vec::len).sum::<usize>();
    }
    let in_ms = t.elapsed().as_secs_f64() * 1e3;
    debug_assert_eq!(bytes as u64, (mib / 2) << 21);
    for batch in keys.chunks(512) {
        redis::cmd("UNLINK").arg(batch).exec(&mut c)?;
    }
    Ok((out_ms, in_ms))
}

/// Runs the Redis variant of the swap scenario.
pub fn run(o: &BenchOpts, url: &str) -> Result<BenchResult> {
    let mib = o.mib.unwrap_or(512);
    if !(2..1 << 17).contains(&mib) || mib % 2 != 0 {
        return Err(Error::Mib {
            mib,
            min: 2,
            max: (1 << 17) - 2,
        });
    }
    let (param, server, image, mut series) = setup(o, mib, &NAMES)?;
    let client = redis::Client::open(url)?;
    let instance = format!("bench-{}", std::process::id());
    let raw_prefix = format!("memout-bench-raw:{}", std::process::id());
    let bar = indicatif::ProgressBar::new(((o.rounds + 1) * 2) as u64);
    let mut worst_fraction = 1.0f64;
    for round in 0..=o.rounds {
        let store = RedisStore::connect(&RedisStoreConfig::new(
            url,
            &instance,
            "swap-guest",
            mib << 20,
        ))?;
        let (m_out, m_in, frac) = guest_round(
            &server,
            &image,
            mib,
            param,
            Eviction::Store(Arc::new(store)),
        )?;
        bar.inc(1);
        let (r_out, r_in) = raw_round(&client, &raw_prefix, mib)?;
        bar.inc(1);
        if round == 0 {
            continue; // warm-up
        }
        worst_fraction = worst_fraction.min(frac);
        for (i, v) in [m_out, r_out, m_in, r_in].into_iter().enumerate() {
            series[i].samples.push(v);
        }
    }
    bar.finish_and_clear();
    let ratios = vec![
        ratio(&series, NAMES[0], NAMES[1], "swap-out vs raw SET", None),
        ratio(&series, NAMES[2], NAMES[3], "swap-in vs raw GET", None),
    ];
    let mut extra = Map::new();
    extra.insert("mib".into(), json!(mib));
    extra.insert("zero_page_percent".into(), json!(o.zero_pct));
    extra.insert("store".into(), json!(redact(url)));
    extra.insert(
        "memout_evicted_fraction_worst".into(),
        json!(worst_fraction),
    );
    Ok(result(o, mib, series, ratios, extra))
}
