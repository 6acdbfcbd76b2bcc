//! `memout bench fastpath`: single-page allocation through the exit-free fast path.
//!
//! - Per operation: 1 M alloc/free pairs of one page each (each page written once) through the
//!   fast path, against one bare doorbell exit round trip, the least any ring request costs.
//!   Target: ratio ≤ 0.01.
//! - Throughput: rounds of taking 256 pages, writing every word, giving them back; memout's
//!   fast path against a static VM (a plain memslot) whose guest recycles its own pages
//!   through a free list: the strongest thing a user would run instead, since its pages stay
//!   resident and no host code runs. Reported in ns per page (and pages/s); no target.

use super::{BenchOpts, BenchResult, Side, cfg, measure, ms_between_checkpoints, ratio};
use crate::runner::Backing;
use serde_json::{Map, json};

const BARE: &str = "bare doorbell exit";
const PAIR: &str = "fast path alloc+free pair";
const FAST_TOUCH: &str = "fast path alloc-touch-free, per page";
const STATIC_TOUCH: &str = "baseline: static VM free list, per page";
/// Bare exits timed per round.
const EXITS: u32 = 2000;
/// Thousands of pairs per round.
const PAIRS_K: u32 = 1000;
/// Rounds of 256 pages per round of the throughput sides.
const TOUCH_ROUNDS: u32 = 1000;

fn per(ms: f64, n: f64) -> f64 {
    ms * 1e6 / n
}

/// Runs the scenario.
pub fn fastpath(o: &BenchOpts) -> super::Result<BenchResult> {
    let sides = vec![
        Side {
            name: BARE.into(),
            cfg: cfg("rpc-bare", 6, EXITS, 64, Backing::Memout),
            measure: |r| ms_between_checkpoints(r).map(|ms| per(ms, EXITS as f64)),
        },
        Side {
            name: PAIR.into(),
            cfg: cfg("fast-pairs", 9, PAIRS_K, 64, Backing::Memout),
            measure: |r| ms_between_checkpoints(r).map(|ms| per(ms, PAIRS_K as f64 * 1e3)),
        },
        Side {
            name: FAST_TOUCH.into(),
            cfg: cfg("fast-touch", 10, TOUCH_ROUNDS, 64, Backing::Memout),
            measure: |r| ms_between_checkpoints(r).map(|ms| per(ms, TOUCH_ROUNDS as f64 * 256.0)),
        },
        Side {
            name: STATIC_TOUCH.into(),
            cfg: cfg(
                "static-touch",
                11,
                TOUCH_ROUNDS,
                64,
                Backing::Plain {
                    discard_at_exit: false,
                    populate_ahead: false,
                },
            ),
            measure: |r| ms_between_checkpoints(r).map(|ms| per(ms, TOUCH_ROUNDS as f64 * 256.0)),
        },
    ];
    let mut doorbells = Vec::new();
    let series = measure(&sides, o.rounds, |name, r| {
        if name == PAIR
            && let (Some(a), Some(b)) = (r.checkpoints.first(), r.checkpoints.get(1))
        {
            doorbells.push(b.exits.doorbells - a.exits.doorbells);
        }
    })?;
    let ratios = vec![
        ratio(
            &series,
            PAIR,
            BARE,
            "fast pair vs doorbell exit",
            Some(0.01),
        ),
        ratio(
            &series,
            FAST_TOUCH,
            STATIC_TOUCH,
            "alloc-touch-free vs static VM",
            None,
        ),
    ];
    let pages_per_s = |n: &str| {
        series
            .iter()
            .find(|s| s.name == n)
            .map_or(f64::NAN, |s| 1e9 / s.median())
    };
    let mut extra = Map::new();
    extra.insert("pairs_per_round".into(), json!(PAIRS_K as u64 * 1000));
    extra.insert("doorbells_during_pairs".into(), json!(doorbells));
    extra.insert(
        "fast_touch_pages_per_s".into(),
        json!(pages_per_s(FAST_TOUCH)),
    );
    extra.insert(
        "static_touch_pages_per_s".into(),
        json!(pages_per_s(STATIC_TOUCH)),
    );
    Ok(BenchResult {
        scenario: "fastpath",
        unit: "ns per op",
        rounds: o.rounds,
        series,
        ratios,
        extra,
    })
}
