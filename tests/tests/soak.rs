//! Soak: eight real KVM guests on one server, each evicting to its own store, resized by three
//! concurrent resizers and given changing budgets while they release, grow and verify every
//! page they hold on every pass. No page may come back wrong, no guest may be stopped, and
//! the host memory of each region stays within its limit.
//!
//! `make test` runs it for 20 s; set `MEMOUT_SOAK_SECS` for a longer run (minutes).

use memout_server::procfs::mapping_rss;
use memout_server::{Eviction, FileStore, ResizeOptions, Server};
use memout_tests::needs_kvm;
use memout_vmm::image::GuestImage;
use memout_vmm::runner::{Outcome, RunConfig, run_guest};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::SeqCst};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const GUESTS: usize = 8;
const REGION: u64 = 128 * MIB;
/// How far above its limit (budget or shrink cap) a region's host memory may be when sampled
/// while the guest runs: the chunks being populated or swapped in right then (fault-around and
/// one chunk of read-ahead) before the budget check after them evicts.
const OVER_LIMIT: u64 = 8 * MIB;

fn seconds() -> Duration {
    Duration::from_secs(
        std::env::var("MEMOUT_SOAK_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20),
    )
}

/// A small xorshift generator: the run is reproducible from its seed (printed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<T: Clone>(&mut self, v: &[T]) -> T {
        v[(self.next() % v.len() as u64) as usize].clone()
    }
}

#[test]
fn eight_guests_under_eviction_resizes_budgets_and_churn_lose_nothing() {
    if !needs_kvm("soak") {
        return;
    }
    let img = GuestImage::parse(memout_vmm::images::get("resizer").unwrap().to_vec()).unwrap();
    let server = Server::builder().build().unwrap();
    let finish = Arc::new(AtomicBool::new(false));
    let names: Vec<String> = (0..GUESTS)
        .map(|i| format!("soak{i}-{}", std::process::id()))
        .collect();
    let seed = 0x5eed_0000 ^ std::process::id() as u64;
    eprintln!("soak: {GUESTS} guests for {:?}, seed {seed:#x}", seconds());
    let reports = std::thread::scope(|s| {
        let runs: Vec<_> = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let store = FileStore::create(&std::env::temp_dir(), name, 2 * REGION).unwrap();
                // All start holding their pinned minimum and grow to their limit; 0-5 release
                // on request, 6 and 7 ignore release requests, so their shrinks must evict.
                let flags = if i < 6 { 1 << 17 } else { 1 << 17 | 1 << 16 };
                let cfg = RunConfig {
                    name: name.clone(),
                    region_size: REGION,
                    quota_bytes: 64 * MIB,
                    arg: 8 | flags,
                    timeout: seconds() + Duration::from_secs(120),
                    eviction: Eviction::Store(Arc::new(store)),
                    budget_bytes: Some(48 * MIB),
                    min_bytes: 8 * MIB,
                    finish: finish.clone(),
                    flags: Arc::new(AtomicU32::new(0)),
                    ..Default::default()
                };
                let (server, img) = (&server, &img);
                s.spawn(move || run_guest(server, img, &cfg).unwrap())
            })
            .collect();
        // Wait until every guest is served.
        let t0 = Instant::now();
        while names.iter().any(|n| server.registry().find(n).is_none()) {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "guests never came up"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let stop = AtomicBool::new(false);
        let worst = std::thread::scope(|c| {
            for k in 0..3u64 {
                let (server, names, stop) = (&server, &names, &stop);
                c.spawn(move || {
                    let mut rng = Rng(seed + k * 7919 + 1);
                    let sizes = [8 * MIB, 16 * MIB, 32 * MIB, 64 * MIB, 128 * MIB];
                    let budgets = [None, Some(16 * MIB), Some(32 * MIB), Some(64 * MIB)];
                    while !stop.load(SeqCst) {
                        let name = rng.pick(names);
                        let Some(g) = server.registry().find(&name).map(|g| g.core().clone())
                        else {
                            continue;
                        };
                        match rng.next() % 8 {
                            0 => {
                                let _ = g.set_budget(rng.pick(&budgets).map(|b| b / 4096));
                            }
                            1 => {
                                let _ = g.evict(rng.next() % 4096);
                            }
                            _ => {
                                let opts = ResizeOptions {
                                    release_deadline: Duration::from_millis(rng.next() % 100),
                                };
                                let _ = g.resize(rng.pick(&sizes), opts);
                            }
                        }
                        std::thread::sleep(Duration::from_millis(rng.next() % 40));
                    }
                });
            }
            // While all this goes on, sample how far above its limit (budget or shrink cap)
            // each region's host memory is: a limit just lowered takes its eviction's time to
            // reach, and on this 2-core host eight guests, three resizers and the evictors share
            // two CPUs. Reported, not asserted; the bound is checked once the changes stop.
            let mut worst = (0i64, String::new());
            let t0 = Instant::now();
            while t0.elapsed() < seconds() {
                for name in &names {
                    if let Some((over, what)) = over_limit(&server, name)
                        && over > worst.0
                    {
                        worst = (over, what);
                    }
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            stop.store(true, SeqCst);
            worst
        });
        // The changes stopped; the guests still run, touch and verify everything they hold.
        // Every region must come within OVER_LIMIT of its limit and stay there.
        std::thread::sleep(Duration::from_secs(2));
        let mut settled = Vec::new();
        for name in &names {
            let t = Instant::now();
            let mut last = None;
            let mut under = 0;
            while t.elapsed() < Duration::from_secs(10) && under < 10 {
                last = over_limit(&server, name);
                under = match &last {
                    Some((o, _)) if *o > OVER_LIMIT as i64 => 0,
                    _ => under + 1,
                };
                std::thread::sleep(Duration::from_millis(20));
            }
            settled.push((name.clone(), under >= 10, last));
        }
        finish.store(true, SeqCst);
        let reports: Vec<_> = runs.into_iter().map(|r| r.join().unwrap()).collect();
        (reports, worst, settled)
    });
    let (reports, worst, settled) = reports;
    for (name, r) in names.iter().zip(&reports) {
        let last = r.output.last().cloned().unwrap_or_default();
        eprintln!("{name}: {} | {last}", r.outcome);
        assert_eq!(
            r.outcome,
            Outcome::Exited(0),
            "{name}: {}",
            r.output.join("\n")
        );
        assert!(last.contains(" 0 bad pages"), "{name}: {last}");
    }
    let evicted: u64 = reports.iter().map(|r| r.stats.evictions_pages).sum();
    let swapped: u64 = reports.iter().map(|r| r.stats.swapins_pages).sum();
    eprintln!(
        "soak: {} MiB evicted, {} MiB swapped in; worst sample {} MiB over ({})",
        evicted * 4096 / MIB,
        swapped * 4096 / MIB,
        worst.0 / MIB as i64,
        worst.1
    );
    assert!(
        evicted > 0 && swapped > 0,
        "the soak never evicted or swapped in"
    );
    for (name, ok, last) in settled {
        assert!(ok, "{name}: host memory stays above its limit: {last:?}");
    }
}

/// How far a region's host memory is above its limit (budget or shrink cap), with the details;
/// `None` if the guest has no limit or is gone.
fn over_limit(server: &Server, name: &str) -> Option<(i64, String)> {
    let g = server.registry().find(name)?.core().clone();
    let limit = g
        .budget()
        .unwrap_or(u64::MAX)
        .min(g.size_cap().unwrap_or(u64::MAX));
    if limit == u64::MAX {
        return None;
    }
    let rss = mapping_rss(g.region().addr()).unwrap_or(0);
    let st = g.snapshot();
    let what = format!(
        "{name}: RSS {} MiB, limit {} MiB; resident {} MiB, allocated {} MiB, evict errors {} ({:?}); resize {:?}",
        rss / MIB,
        limit * 4096 / MIB,
        st.resident_pages / 256,
        st.allocated_pages / 256,
        st.evict_errors,
        st.last_evict_error,
        g.resize_progress().map(|p| p.stage),
    );
    Some((rss as i64 - (limit * 4096) as i64, what))
}
