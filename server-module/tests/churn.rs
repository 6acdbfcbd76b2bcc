//! ALLOC → touch → FREE churn on host threads (in place of vCPUs), with real userfaultfd and a
//! real store, racing eviction and eager population: no data is ever lost, and a guest that
//! only touches what it holds is never stopped.

use memout_server::GuestCore;
use memout_server::extents::Run;
use memout_server::ring_driver::{self, RingDriver, host_test_config};
use memout_server::{Eviction, FileStore, GuestHandle, PopulatePolicy, Server};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};
use vm_memory::{GuestAddress, GuestMemoryMmap};

const REGION: u64 = 256 << 20;
/// Frames one piece spans (a quarter of a chunk, so pieces of several threads share chunks).
const PIECE: u64 = 128;

fn seconds() -> Duration {
    let s = std::env::var("MEMOUT_CHURN_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    Duration::from_secs(s)
}

struct Guest {
    h: GuestHandle,
    core: Arc<GuestCore>,
}

fn guest(server: &Server, name: &str, policy: PopulatePolicy, eviction: Eviction) -> Guest {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let h = server
        .add_guest(memout_server::GuestConfig {
            policy,
            ..host_test_config(name, REGION, REGION, eviction, &mem)
        })
        .expect("add_guest");
    let mut ring = RingDriver::new(mem, 0x6000, 16);
    assert_eq!(ring.hello(&h).status, 0);
    let core = server
        .registry()
        .find(name)
        .expect("registered")
        .core()
        .clone();
    Guest { h, core }
}

fn store(name: &str) -> Eviction {
    let s = FileStore::create(&std::env::temp_dir(), name, REGION).unwrap();
    Eviction::Store(Arc::new(s))
}

fn word(base: usize, frame: u64, at: usize) -> *mut u64 {
    (base + (frame * 4096) as usize + at * 8) as *mut u64
}

fn fill(base: usize, run: Run, tag: u64) {
    for f in run.start..run.end() {
        // SAFETY: the frames are granted to the test guest and only this thread uses them.
        unsafe {
            std::ptr::write_volatile(word(base, f, 0), tag ^ f);
            std::ptr::write_volatile(word(base, f, 511), !(tag ^ f));
        }
    }
}

/// Pages of `run` whose content is not what [`fill`] wrote.
fn wrong(base: usize, run: Run, tag: u64) -> u64 {
    (run.start..run.end())
        .filter(|&f| {
            // SAFETY: as in `fill`.
            let (a, b) = unsafe {
                (
                    std::ptr::read_volatile(word(base, f, 0)),
                    std::ptr::read_volatile(word(base, f, 511)),
                )
            };
            a != tag ^ f || b != !(tag ^ f)
        })
        .count() as u64
}

/// One worker: allocate a few pieces, fill them, let them sit (the evictor takes them), read
/// them back, free them; repeat until `stop`. Returns pages that came back wrong.
fn churn(g: &Guest, id: u64, stop: &AtomicBool, rounds: &AtomicU64) -> u64 {
    let base = g.h.region_host_addr();
    let mut bad = 0;
    let mut n = 0u64;
    while !stop.load(SeqCst) && g.h.fatal_error().is_none() {
        n += 1;
        let tag = (id << 48) | (n << 20);
        let mut held = Vec::new();
        for k in 0..4 {
            match ring_driver::alloc(&g.core, PIECE, 4, false) {
                Ok(ext) => {
                    for e in ext {
                        let run = ring_driver::run_of(&g.core, &e)
                            .expect("granted extent is in the region");
                        fill(base, run, tag + k);
                        held.push((run, tag + k));
                    }
                }
                Err(_) => break, // quota momentarily full: free what we hold and go on
            }
        }
        std::thread::yield_now();
        for &(run, t) in &held {
            bad += wrong(base, run, t);
        }
        let runs: Vec<Run> = held.iter().map(|(r, _)| *r).collect();
        if !runs.is_empty() {
            ring_driver::free(&g.core, &runs).expect("free what we hold");
        }
        rounds.fetch_add(1, SeqCst);
    }
    bad
}

fn run_churn(g: &Guest, workers: u64, evict: bool) -> (u64, u64) {
    let stop = AtomicBool::new(false);
    let rounds = AtomicU64::new(0);
    let bad = std::thread::scope(|s| {
        let hs: Vec<_> = (0..workers)
            .map(|id| {
                let (stop, rounds) = (&stop, &rounds);
                s.spawn(move || churn(g, id, stop, rounds))
            })
            .collect();
        let evictor = evict.then(|| {
            s.spawn(|| {
                while !stop.load(SeqCst) {
                    let _ = g.h.evict(u64::MAX / 2);
                    std::thread::sleep(Duration::from_micros(200));
                }
            })
        });
        let t0 = Instant::now();
        while t0.elapsed() < seconds() && g.h.fatal_error().is_none() {
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, SeqCst);
        if let Some(e) = evictor {
            e.join().unwrap();
        }
        hs.into_iter().map(|h| h.join().unwrap()).sum::<u64>()
    });
    (bad, rounds.load(SeqCst))
}

#[test]
fn frees_racing_evictions_never_zero_data() {
    if !memout_test_support::require(
        memout_test_support::Piece::Uffd,
        "frees_racing_evictions_never_zero_data",
    ) {
        return;
    }
    let server = Server::builder().build().unwrap();
    let g = guest(
        &server,
        "slots",
        PopulatePolicy::default(),
        store("churn-slots"),
    );
    let (bad, rounds) = run_churn(&g, 4, true);
    let s = g.h.stats();
    assert_eq!(g.h.fatal_error(), None, "{s:?}");
    assert_eq!(
        bad, 0,
        "{bad} pages came back wrong in {rounds} rounds; {s:?}"
    );
    assert!(
        s.evictions_pages > 0 && s.swapins_pages > 0,
        "the race never ran: {s:?}"
    );
}

#[test]
fn churn_never_stops_a_well_behaved_guest() {
    if !memout_test_support::require(
        memout_test_support::Piece::Uffd,
        "churn_never_stops_a_well_behaved_guest",
    ) {
        return;
    }
    let server = Server::builder().build().unwrap();
    for policy in PopulatePolicy::ALL {
        for evict in [false, true] {
            let name = format!("churn-{}-{evict}", policy.name());
            let eviction = if evict { store(&name) } else { Eviction::None };
            let g = guest(&server, &name, policy, eviction);
            let (bad, rounds) = run_churn(&g, 3, evict);
            let s = g.h.stats();
            assert_eq!(
                g.h.fatal_error(),
                None,
                "{name}: stopped after {rounds} rounds; {s:?}"
            );
            assert_eq!(bad, 0, "{name}: {bad} pages wrong; {s:?}");
            assert!(rounds > 10, "{name}: only {rounds} rounds");
        }
    }
}
