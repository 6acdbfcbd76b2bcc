//! Per-guest counters and a latency histogram, updated lock-free from any thread.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

const SUB: usize = 8; // sub-buckets per power of two: quantiles within 12.5%
const BUCKETS: usize = 64 * SUB;

/// A log-linear histogram of nanosecond latencies.
pub struct LatencyHistogram {
    buckets: Box<[AtomicU64]>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

fn bucket_of(ns: u64) -> usize {
    if ns < SUB as u64 {
        return ns as usize;
    }
    let log = 63 - ns.leading_zeros() as usize; // >= 3
    let shift = log - 3;
    let sub = ((ns >> shift) as usize) & (SUB - 1);
    (log - 2) * SUB + sub
}

fn bucket_low(b: usize) -> u64 {
    if b < SUB {
        return b as u64;
    }
    let log = b / SUB + 2;
    let sub = (b % SUB) as u64;
    (SUB as u64 + sub) << (log - 3)
}

impl LatencyHistogram {
    /// Records one sample.
    pub fn record(&self, ns: u64) {
        self.buckets[bucket_of(ns)].fetch_add(1, Relaxed);
    }

    /// Number of samples.
    #[cfg(test)]
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    /// The `q` quantile (0..=1) in nanoseconds (lower bound of its bucket), 0 if empty.
    pub fn quantile(&self, q: f64) -> u64 {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_low(i);
            }
        }
        bucket_low(BUCKETS - 1)
    }
}

/// Live counters of one guest.
#[derive(Default)]
pub struct GuestCounters {
    /// Doorbells rung.
    pub doorbells: AtomicU64,
    /// Requests processed (all opcodes).
    pub requests: AtomicU64,
    /// Requests answered with an error status.
    pub request_errors: AtomicU64,
    /// Page faults served (each resolved fault, not each page).
    pub faults: AtomicU64,
    /// Pages populated by the fault handler.
    pub populated_pages: AtomicU64,
    /// Pages populated ahead of the guest by the eager workers.
    pub populated_eager_pages: AtomicU64,
    /// Frames freed by the guest.
    pub freed_pages: AtomicU64,
    /// Bytes returned to the host (dropped host pages that were resident).
    pub bytes_returned: AtomicU64,
    /// Faults on frames the guest does not hold.
    pub violations: AtomicU64,
    /// Fault events on frames the guest did not hold when they were served, answered with a
    /// wake because the access may have happened while it held them (see `GuestCore::resolve_fault`).
    pub stale_faults: AtomicU64,
    /// FREEs that failed because the host pages could not be dropped.
    pub free_errors: AtomicU64,

    /// Populate latency per fault (from reading the event to the wake-up).
    pub populate_latency: LatencyHistogram,
    /// Pages evicted (to the store, or paged out in kernel mode).
    pub evicted_pages: AtomicU64,
    /// Pages swapped back in from the store.
    pub swapped_in_pages: AtomicU64,
    /// Evictions that stopped on an error.
    pub evict_errors: AtomicU64,
    /// Latency of faults that swapped in from the store.
    pub swapin_latency: LatencyHistogram,
}

/// A point-in-time copy of one guest's statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestStatsSnapshot {
    /// Quota (requested size) in pages.
    pub quota_pages: u64,
    /// Frames granted.
    pub allocated_pages: u64,
    /// Frames backed by host memory.
    pub resident_pages: u64,
    /// Doorbells rung.
    pub doorbells: u64,
    /// Requests processed.
    pub requests: u64,
    /// Requests answered with an error status.
    pub request_errors: u64,
    /// Faults served.
    pub faults: u64,
    /// Pages populated on faults.
    pub populated_pages: u64,
    /// Pages populated eagerly (ahead of the guest).
    pub populated_eager_pages: u64,
    /// Frames freed by the guest.
    pub freed_pages: u64,
    /// Bytes of host memory returned.
    pub bytes_returned: u64,
    /// Faults refused (frame not held by the guest).
    pub violations: u64,
    /// Fault events on frames not held, answered with a wake (possibly stale events).
    pub stale_faults: u64,
    /// FREEs that failed because the host pages could not be dropped.
    pub free_errors: u64,
    /// Eager jobs dropped because the guest's eager queue was full.
    pub eager_dropped: u64,
    /// Frames whose content is in the store now (kernel mode: the region's swap, per smaps).
    pub evicted_pages: u64,
    /// Resident budget in pages, if any.
    pub budget_pages: Option<u64>,
    /// Store slots in use.
    pub store_slots: u64,
    /// Bytes the store occupies on disk.
    pub store_bytes: u64,
    /// Entries in the evicted map (metadata: about 40 bytes each).
    pub evicted_metadata_entries: u64,
    /// `none`, `store` or `kernel`.
    pub eviction_mode: &'static str,
    /// Pages evicted so far.
    pub evictions_pages: u64,
    /// Pages swapped in so far.
    pub swapins_pages: u64,
    /// Evictions that stopped on an error.
    pub evict_errors: u64,
    /// The last eviction error.
    pub last_evict_error: Option<crate::guest::EvictError>,
    /// Median latency of faults that swapped in, ns.
    pub swapin_p50_ns: u64,
    /// 99th percentile latency of faults that swapped in, ns.
    pub swapin_p99_ns: u64,
    /// Median populate latency per fault, ns.
    pub populate_p50_ns: u64,
    /// 99th percentile populate latency per fault, ns.
    pub populate_p99_ns: u64,
    /// Name of the population policy.
    pub policy: &'static str,
    /// The exit-free fast path's figures, if the guest has one. Frames cached in its
    /// magazines and free stacks count as allocated.
    pub fastpath: Option<crate::fastpath::FastPathStats>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for ns in [
            0u64,
            1,
            7,
            8,
            9,
            15,
            16,
            100,
            1000,
            65_000,
            1 << 40,
            u64::MAX,
        ] {
            let b = bucket_of(ns);
            assert!(b >= last);
            last = b;
            let lo = bucket_low(b);
            assert!(lo <= ns && ns - lo <= ns / 8, "{ns} -> {lo}");
        }
    }

    #[test]
    fn quantiles() {
        let h = LatencyHistogram::default();
        assert_eq!(h.quantile(0.5), 0);
        for i in 1..=1000u64 {
            h.record(i * 1000);
        }
        let p50 = h.quantile(0.5);
        let p99 = h.quantile(0.99);
        assert!((440_000..=500_000).contains(&p50), "{p50}");
        assert!((870_000..=990_000).contains(&p99), "{p99}");
        assert_eq!(h.count(), 1000);
    }
}
