//! Eviction racing guest writes (host threads in place of vCPUs, real userfaultfd and a real
//! store): every write lands, whatever the interleaving; raising the budget swaps memory back
//! in the background.

use memout_server::ring_driver::{RingDriver, host_test_config};
use memout_server::{Eviction, FileStore, Server};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::{Duration, Instant};
use vm_memory::{GuestAddress, GuestMemoryMmap};

const PAGES: usize = 4096;

fn setup(server: &Server, mem: &GuestMemoryMmap) -> Option<memout_server::GuestHandle> {
    setup_with_store(server, mem, 64 << 20)
}

fn setup_with_store(
    server: &Server,
    mem: &GuestMemoryMmap,
    store_bytes: u64,
) -> Option<memout_server::GuestHandle> {
    if !memout_test_support::require(memout_test_support::Piece::Uffd, "eviction race") {
        return None;
    }
    let store = FileStore::create(&std::env::temp_dir(), "race", store_bytes).unwrap();
    let h = server
        .add_guest(host_test_config(
            "race",
            64 << 20,
            64 << 20,
            Eviction::Store(Arc::new(store)),
            mem,
        ))
        .expect("add_guest");
    let mut ring = RingDriver::new(mem.clone(), 0x6000, 16);
    assert_eq!(ring.hello(&h).status, 0);
    let a = ring.alloc(&h, PAGES as u64, 0x8000, 1);
    assert_eq!((a.status, a.pages), (0, PAGES as u64));
    Some(h)
}

fn page(base: usize, p: usize) -> *mut u64 {
    (base + p * 4096) as *mut u64
}

#[test]
fn writes_racing_eviction_are_never_lost() {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let server = Server::builder().build().unwrap();
    let Some(h) = setup(&server, &mem) else {
        return;
    };
    let base = h.region_host_addr();
    let stop = AtomicBool::new(false);
    let rounds = std::thread::scope(|s| {
        let evictor = s.spawn(|| {
            let mut n = 0u64;
            while !stop.load(SeqCst) {
                n += h.evict(u64::MAX / 2).unwrap();
            }
            n
        });
        let t0 = Instant::now();
        let mut round = 0u64;
        while t0.elapsed() < Duration::from_secs(2) || round < 3 {
            round += 1;
            for p in 0..PAGES {
                // SAFETY: granted frames of the test guest; only this thread writes them.
                unsafe {
                    std::ptr::write_volatile(page(base, p), round << 32 | p as u64);
                    std::ptr::write_volatile(page(base, p).add(511), !(round << 32 | p as u64));
                }
            }
        }
        stop.store(true, SeqCst);
        let evicted = evictor.join().unwrap();
        assert!(evicted > 0, "the evictor never got to run");
        round
    });
    let mut wrong = 0;
    for p in 0..PAGES {
        let want = rounds << 32 | p as u64;
        // SAFETY: as above.
        let (a, b) = unsafe {
            (
                std::ptr::read_volatile(page(base, p)),
                std::ptr::read_volatile(page(base, p).add(511)),
            )
        };
        if a != want || b != !want {
            wrong += 1;
        }
    }
    let s = h.stats();
    assert_eq!(wrong, 0, "{wrong} pages lost a write; {s:?}");
    assert!(
        s.evictions_pages > PAGES as u64 && s.swapins_pages > 0,
        "{s:?}"
    );
    assert_eq!(s.evict_errors, 0, "{s:?}");
}

#[test]
fn raising_the_budget_swaps_back_in_the_background() {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let server = Server::builder().build().unwrap();
    let Some(h) = setup(&server, &mem) else {
        return;
    };
    let base = h.region_host_addr();
    for p in 0..PAGES {
        // SAFETY: granted frames of the test guest.
        unsafe { std::ptr::write_volatile(page(base, p), p as u64 + 7) };
    }
    h.set_budget(Some(4 << 20)).unwrap();
    let s = h.stats();
    assert!(
        s.resident_pages <= 1024 && s.evicted_pages >= (PAGES - 1024) as u64,
        "{s:?}"
    );
    h.set_budget(Some(64 << 20)).unwrap();
    let t0 = Instant::now();
    while h.stats().evicted_pages > 0 && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let s = h.stats();
    assert_eq!(
        s.evicted_pages, 0,
        "prefetch did not bring everything back: {s:?}"
    );
    let faults_before = s.faults;
    for p in 0..PAGES {
        // SAFETY: as above.
        let v = unsafe { std::ptr::read_volatile(page(base, p)) };
        assert_eq!(v, p as u64 + 7);
    }
    assert_eq!(
        h.stats().faults,
        faults_before,
        "memory should already be back"
    );
}

#[test]
fn a_store_filling_up_mid_eviction_loses_nothing() {
    // A large eviction runs as a pipeline (writes alongside drops); the store has room for
    // 6 of the 8 chunks, so it fails in the middle.
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let server = Server::builder().build().unwrap();
    let Some(h) = setup_with_store(&server, &mem, 12 << 20) else {
        return;
    };
    let base = h.region_host_addr();
    for p in 0..PAGES {
        // SAFETY: granted frames of the test guest.
        unsafe { std::ptr::write_volatile(page(base, p), p as u64 ^ 0x77) };
    }
    let err = h.evict(u64::MAX / 2).unwrap_err();
    assert!(
        matches!(err, memout_server::EvictError::StoreFull { .. }),
        "{err}"
    );
    let s = h.stats();
    assert_eq!(s.evicted_pages, 6 * 512, "{s:?}");
    assert_eq!(s.resident_pages + s.evicted_pages, PAGES as u64, "{s:?}");
    assert_eq!(s.evict_errors, 1, "{s:?}");
    let wrong = (0..PAGES)
        // SAFETY: as above.
        .filter(|&p| unsafe { std::ptr::read_volatile(page(base, p)) } != p as u64 ^ 0x77)
        .count();
    assert_eq!(wrong, 0);
}
