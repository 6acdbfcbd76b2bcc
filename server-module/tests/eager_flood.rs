//! A guest that floods eager population (ALLOC of its whole quota, FREE, again) next to a
//! victim guest on the same server: host memory stays bounded, and the victim still gets its
//! memory populated ahead of its touches.

use memout_server::GuestCore;
use memout_server::ring_driver::{self, RingDriver, host_test_config};
use memout_server::{Eviction, GuestHandle, PopulatePolicy, Server};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::{Duration, Instant};
use vm_memory::{GuestAddress, GuestMemoryMmap};

fn eager_guest(server: &Server, name: &str, size: u64) -> (GuestHandle, Arc<GuestCore>) {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let h = server
        .add_guest(memout_server::GuestConfig {
            policy: PopulatePolicy::Eager,
            ..host_test_config(name, size, size, Eviction::None, &mem)
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
    (h, core)
}

/// The process's resident memory outside the two guests' regions (heap, stacks, queues).
fn heap_rss(regions: &[&GuestHandle]) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let regions: u64 = regions
        .iter()
        .map(|h| memout_server::procfs::mapping_rss(h.region_host_addr()).unwrap_or(0))
        .sum();
    (kb * 1024).saturating_sub(regions)
}

#[test]
fn an_eager_flooder_neither_grows_host_memory_nor_starves_its_neighbour() {
    if !memout_test_support::require(
        memout_test_support::Piece::Uffd,
        "an_eager_flooder_neither_grows_host_memory_nor_starves_its_neighbour",
    ) {
        return;
    }
    let server = Server::builder().build().unwrap();
    let (flood_h, flood) = eager_guest(&server, "flooder", 1 << 30);
    let (victim_h, victim) = eager_guest(&server, "victim", 256 << 20);
    let before = heap_rss(&[&flood_h, &victim_h]);
    let stop = AtomicBool::new(false);
    let (touch_times, victim_pages) = std::thread::scope(|s| {
        let flooder = s.spawn(|| {
            let mut n = 0u64;
            while !stop.load(SeqCst) {
                let ext = ring_driver::alloc(&flood, 1 << 18, 8, false).expect("whole quota");
                let runs: Vec<_> = ext
                    .iter()
                    .map(|e| ring_driver::run_of(&flood, e).unwrap())
                    .collect();
                ring_driver::free(&flood, &runs).expect("free");
                n += 1;
            }
            n
        });
        // The victim: every round, ALLOC 32 MiB, give the eager workers a moment, touch it all,
        // FREE it. Its touches are fast only if the workers got to its memory.
        let base = victim_h.region_host_addr();
        let mut times = Vec::new();
        let mut pages = 0u64;
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(3) {
            let ext = ring_driver::alloc(&victim, 8192, 1, false).expect("32 MiB");
            let run = ring_driver::run_of(&victim, &ext[0]).unwrap();
            std::thread::sleep(Duration::from_millis(30));
            let t = Instant::now();
            for f in run.start..run.end() {
                // SAFETY: granted frames of the victim; only this thread uses them.
                unsafe { std::ptr::write_volatile((base + (f * 4096) as usize) as *mut u64, f) };
            }
            times.push(t.elapsed());
            pages += run.len;
            ring_driver::free(&victim, &[run]).expect("free");
        }
        stop.store(true, SeqCst);
        let rounds = flooder.join().unwrap();
        assert!(rounds > 100, "the flooder only ran {rounds} rounds");
        (times, pages)
    });
    let grown = heap_rss(&[&flood_h, &victim_h]).saturating_sub(before);
    let s = victim_h.stats();
    assert!(
        grown < 64 << 20,
        "host memory outside the regions grew by {} MiB",
        grown >> 20
    );
    assert!(
        s.populated_eager_pages * 2 >= victim_pages,
        "the victim got {} of {} pages populated ahead: {s:?}",
        s.populated_eager_pages,
        victim_pages
    );
    times_bounded(&touch_times);
}

fn times_bounded(times: &[Duration]) {
    let mut sorted = times.to_vec();
    sorted.sort();
    let median = sorted[sorted.len() / 2];
    // 32 MiB touched with its memory populated ahead takes a few ms; by 4 KiB faults ~0.5 s.
    assert!(
        median < Duration::from_millis(150),
        "median touch of 32 MiB took {median:?} ({sorted:?})"
    );
}
