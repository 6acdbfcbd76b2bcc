//! The `auto` policy of the KSM controller, after RHEL's ksmtuned: pure logic, no sysfs.
//!
//! Every [`TunerParams::interval`] the controller asks [`decide`] with the host's memory now.
//! Like ksmtuned: while the guests' committed memory fits in RAM and free memory is above the
//! threshold, ksmd is stopped; otherwise it runs, scanning [`TunerParams::boost`] more pages
//! per wake-up while free memory is below the threshold and [`TunerParams::decay`] fewer once
//! it is above, within `min_pages..=max_pages`, and sleeping less on hosts with more memory.

use std::time::Duration;

/// The policy's knobs (defaults: ksmtuned's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunerParams {
    /// How often the controller decides again (ksmtuned: 60 s).
    pub interval: Duration,
    /// Free memory below this share of RAM counts as pressure, in percent (ksmtuned: 20).
    pub threshold_pct: u32,
    /// ...or below this many KiB, whichever is larger (ksmtuned: 2 GiB).
    pub threshold_min_kib: u64,
    /// Pages added to `pages_to_scan` per decision under pressure (ksmtuned: 300).
    pub boost: u32,
    /// Pages taken off per decision without pressure (ksmtuned: 50).
    pub decay: u32,
    /// Fewest pages per scan (ksmtuned: 64).
    pub min_pages: u32,
    /// Most pages per scan (ksmtuned: 1250).
    pub max_pages: u32,
    /// ksmd's sleep on a 16 GiB host, in ms; scaled by 16 GiB / RAM, at least 10 (ksmtuned:
    /// 10).
    pub sleep_ms_16g: u32,
}

impl Default for TunerParams {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(60),
            threshold_pct: 20,
            threshold_min_kib: 2 << 20,
            boost: 300,
            decay: 50,
            min_pages: 64,
            max_pages: 1250,
            sleep_ms_16g: 10,
        }
    }
}

/// The host's memory as the policy sees it, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostMemory {
    /// RAM (`MemTotal`).
    pub total_kib: u64,
    /// Memory available without swapping (`MemAvailable`).
    pub free_kib: u64,
    /// What the guests may use: the sum of their sizes.
    pub committed_kib: u64,
}

/// What ksmd should do until the next decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Run ksmd (else stop it; merged pages stay merged).
    pub run: bool,
    /// Pages per wake-up.
    pub pages_to_scan: u32,
    /// Sleep between wake-ups, in ms.
    pub sleep_millisecs: u32,
}

/// Free memory below this (KiB) is pressure.
pub fn threshold_kib(p: &TunerParams, total_kib: u64) -> u64 {
    (total_kib * p.threshold_pct as u64 / 100).max(p.threshold_min_kib)
}

/// The next decision, from the memory now and the `pages_to_scan` in force.
pub fn decide(p: &TunerParams, mem: HostMemory, pages_now: u32) -> Decision {
    let thres = threshold_kib(p, mem.total_kib);
    let lo = p.min_pages.min(p.max_pages);
    let pages_now = pages_now.clamp(lo, p.max_pages.max(lo));
    let sleep = ((p.sleep_ms_16g as u64 * (16 << 20)) / mem.total_kib.max(1)).max(10) as u32;
    if mem.committed_kib < mem.total_kib && mem.free_kib > thres {
        return Decision {
            run: false,
            pages_to_scan: pages_now,
            sleep_millisecs: sleep,
        };
    }
    let pages = if mem.free_kib < thres {
        pages_now.saturating_add(p.boost)
    } else {
        pages_now.saturating_sub(p.decay)
    };
    Decision {
        run: true,
        pages_to_scan: pages.clamp(lo, p.max_pages.max(lo)),
        sleep_millisecs: sleep,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GIB: u64 = 1 << 20; // in KiB

    fn mem(total: u64, free: u64, committed: u64) -> HostMemory {
        HostMemory {
            total_kib: total * GIB,
            free_kib: free * GIB,
            committed_kib: committed * GIB,
        }
    }

    #[test]
    fn follows_ksmtuned() {
        let p = TunerParams::default();
        // 24 GiB host: the threshold is 20 % (4.8 GiB), above the 2 GiB floor.
        assert_eq!(threshold_kib(&p, 24 * GIB), 24 * GIB / 5);
        assert_eq!(threshold_kib(&p, 4 * GIB), 2 * GIB);
        // Plenty free and the guests fit: stopped.
        let d = decide(&p, mem(24, 20, 8), 100);
        assert!(!d.run);
        // Overcommitted but memory is free: runs, scanning 50 fewer pages.
        let d = decide(&p, mem(24, 20, 32), 1000);
        assert_eq!((d.run, d.pages_to_scan), (true, 950));
        // Pressure: 300 more, up to 1250.
        assert_eq!(decide(&p, mem(24, 2, 8), 100).pages_to_scan, 400);
        assert_eq!(decide(&p, mem(24, 2, 8), 1100).pages_to_scan, 1250);
        // Never below 64.
        assert_eq!(decide(&p, mem(24, 20, 32), 80).pages_to_scan, 64);
        // Sleep: 10 ms at 16 GiB, shorter on bigger hosts but at least 10.
        assert_eq!(decide(&p, mem(16, 2, 8), 100).sleep_millisecs, 10);
        assert_eq!(decide(&p, mem(4, 1, 8), 100).sleep_millisecs, 40);
    }

    proptest! {
        #[test]
        fn stays_within_bounds(total in 1u64..1 << 30, free in 0u64..1 << 30,
                               committed in 0u64..1 << 31, now in 0u32..100_000) {
            let p = TunerParams::default();
            let m = HostMemory { total_kib: total, free_kib: free.min(total), committed_kib: committed };
            let d = decide(&p, m, now);
            prop_assert!((p.min_pages..=p.max_pages).contains(&d.pages_to_scan));
            prop_assert!(d.sleep_millisecs >= 10);
            // Under pressure it always runs.
            if m.free_kib < threshold_kib(&p, total) {
                prop_assert!(d.run);
            }
        }
    }
}
