//! Kernel mode: memout asks the kernel to swap cold guest memory out (MADV_PAGEOUT) to a
//! swapfile. The swapfile is made for this test (unique name) and is switched off and removed
//! when the test ends, pass or fail.
//!
//! Also: a resize of a kernel-mode guest evicts through the kernel's swap too, and the data
//! comes back intact.

use memout_protocol::ring::PAGE_SIZE;
use memout_server::ResizeStage;
use memout_server::ring_driver::{RingDriver, host_test_config};
use memout_server::{Eviction, ResizeOptions, Server};
use memout_tests::needs_kvm;
use memout_vmm::image::GuestImage;
use memout_vmm::runner::{RunConfig, run_guest};
use memout_vmm::swapfile::Swapfile;
use std::time::Duration;
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Tests in this binary change the host's swap: one at a time, so a test that needs "no swap"
/// does not see another's swapfile.
static SWAP_STATE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn swap_lock() -> std::sync::MutexGuard<'static, ()> {
    SWAP_STATE.lock().unwrap_or_else(|p| p.into_inner())
}

/// A swapfile for `test`, or `None` if the user opted out of the pieces it needs (uffd, swap);
/// if they are missing without an opt-out the test fails naming them.
fn swapfile(test: &str, tag: &str, mib: u64) -> Option<Swapfile> {
    if !memout_tests::require_all(
        &[memout_tests::Piece::Uffd, memout_tests::Piece::Swap],
        test,
    ) {
        return None;
    }
    let made = Swapfile::create(&std::env::temp_dir(), &format!("test-{tag}"), mib << 20);
    Some(made.unwrap_or_else(|e| panic!("{test}: cannot make a swapfile: {e}")))
}

/// Where a 32 MiB kernel-mode budget must stand once a guest that streamed through its 128 MiB
/// working set pauses. While it streams, the kernel swaps in faster than memout pages out
/// (44-126 MiB measured at the end of streaming, the top on a busy host); after the swapper's
/// pause (0.3 s or more) it is 28-30 MiB, even on a busy host.
const PAUSED_SLACK: u64 = 48 << 20;

#[test]
fn kernel_mode_without_swap_is_refused() {
    if !memout_tests::require(memout_tests::Piece::Uffd, "kernel mode without swap") {
        return;
    }
    let _one = swap_lock();
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let server = Server::builder().build().unwrap();
    let cfg = host_test_config("noswap", 64 << 20, 64 << 20, Eviction::Kernel, &mem);
    if memout_server::procfs::swap_free() > 0 {
        // The host has swap of its own: the refusal cannot be shown here, only that kernel
        // mode is accepted (the parser is unit-tested).
        eprintln!("NOTE: host swap is on; kernel mode accepted, refusal not exercised");
        assert!(server.add_guest(cfg).is_ok());
        return;
    }
    match server.add_guest(cfg) {
        Err(memout_server::server::Error::Config(memout_server::ConfigError::NoSwap)) => {}
        Err(e) => panic!("wrong refusal: {e}"),
        Ok(_) => panic!("kernel mode accepted without swap"),
    }
}

#[test]
fn kernel_mode_counts_only_what_really_left_ram_and_backs_off() {
    let _one = swap_lock();
    // 8 MiB of swap for a 64 MiB guest asked down to 8 MiB: most of it cannot go.
    let Some(swap) = swapfile("kernel tiny swap", "tiny", 8) else {
        return;
    };
    const MIB: u64 = 1 << 20;
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let server = Server::builder().build().unwrap();
    let h = server
        .add_guest(host_test_config(
            "ktiny",
            64 * MIB,
            64 * MIB,
            Eviction::Kernel,
            &mem,
        ))
        .unwrap();
    let mut ring = RingDriver::new(mem, 0x6000, 16);
    assert_eq!(ring.hello(&h).status, 0);
    let pages = 64 * MIB / PAGE_SIZE;
    assert_eq!(ring.alloc(&h, pages, 0x8000, 1).status, 0);
    let page = |p: u64| (h.region_host_addr() + (p * PAGE_SIZE) as usize) as *mut u64;
    for p in 0..pages {
        // SAFETY: page p lies in the region, in frames granted to the guest.
        unsafe { page(p).write_volatile(p.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1) };
    }
    h.set_budget(Some(8 * MIB)).unwrap();
    let cpu0 = cpu_time();
    std::thread::sleep(Duration::from_secs(2));
    let busy = cpu_time() - cpu0;
    let s = h.stats();
    let rss = memout_server::procfs::mapping_rss(h.region_host_addr()).unwrap();
    assert!(
        s.evictions_pages * PAGE_SIZE <= 9 * MIB,
        "counted {} MiB paged out with 8 MiB of swap: {s:?}",
        s.evictions_pages * PAGE_SIZE / MIB
    );
    assert!(rss >= 50 * MIB, "RSS {rss}");
    let diff = (s.resident_pages * PAGE_SIZE) as i64 - rss as i64;
    assert!(diff.unsigned_abs() <= 2 * MIB, "stats {s:?} vs RSS {rss}");
    assert!(
        busy < Duration::from_millis(400),
        "memout burned {busy:?} of CPU in 2 s on a budget it cannot meet"
    );
    let pattern = |p: u64| p.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let bad = (0..pages)
        .filter(|&p| {
            // SAFETY: as above.
            let v = unsafe { page(p).read_volatile() };
            v != pattern(p)
        })
        .count();
    assert_eq!(bad, 0);
    drop(h);
    drop(swap);
}

#[test]
fn kernel_mode_budget_holds_once_the_guest_pauses() {
    let _one = swap_lock();
    let Some(swap) = swapfile("kernel steady budget", "steady", 256) else {
        return;
    };
    const MIB: u64 = 1 << 20;
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let server = Server::builder().build().unwrap();
    let cfg = memout_server::GuestConfig {
        resident_budget_bytes: Some(16 * MIB),
        ..host_test_config("ksteady", 64 * MIB, 64 * MIB, Eviction::Kernel, &mem)
    };
    let h = server.add_guest(cfg).unwrap();
    let mut ring = RingDriver::new(mem, 0x6000, 16);
    assert_eq!(ring.hello(&h).status, 0);
    let pages = 64 * MIB / PAGE_SIZE;
    assert_eq!(ring.alloc(&h, pages, 0x8000, 1).status, 0);
    let page = |p: u64| (h.region_host_addr() + (p * PAGE_SIZE) as usize) as *mut u64;
    for round in 0..3u64 {
        // Stream through the whole working set: the kernel swaps most of it back in.
        for p in 0..pages {
            // SAFETY: page p lies in the region, in frames granted to the guest.
            unsafe {
                if round > 0 {
                    assert_eq!(page(p).read_volatile(), p + round - 1, "page {p}");
                }
                page(p).write_volatile(p + round);
            }
        }
        // Paused: within a few ticks the region is back under its budget.
        let t0 = std::time::Instant::now();
        let mut rss = u64::MAX;
        while t0.elapsed() < Duration::from_secs(2) {
            rss = memout_server::procfs::mapping_rss(h.region_host_addr()).unwrap();
            if rss <= 16 * MIB {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            rss <= 16 * MIB,
            "round {round}: RSS {} MiB after a 2 s pause",
            rss >> 20
        );
        eprintln!(
            "round {round}: under budget {:?} after the pause began",
            t0.elapsed()
        );
    }
    drop(h);
    drop(swap);
}

/// CPU time this process has used (user + system).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the command name.
    let ticks = f[11] + f[12];
    Duration::from_millis(ticks * 1000 / 100)
}

#[test]
fn kernel_mode_pages_out_and_stays_correct() {
    if !needs_kvm("kernel-swap") {
        return;
    }
    let _one = swap_lock();
    let Some(swap) = swapfile("kernel-swap", "budget", 512) else {
        return;
    };
    let img = GuestImage::parse(memout_vmm::images::get("swapper").unwrap().to_vec()).unwrap();
    let cfg = RunConfig {
        name: "kernel-swap".into(),
        arg: 128 | 1 << 16, // also page everything out once after the first fill
        quota_bytes: 512 << 20,
        timeout: Duration::from_secs(120),
        eviction: Eviction::Kernel,
        budget_bytes: Some(32 << 20),
        ..Default::default()
    };
    let r = run_guest(&Server::builder().build().unwrap(), &img, &cfg).unwrap();
    drop(swap);
    assert!(r.passed(), "{}\n{}", r.outcome, r.output.join("\n"));
    let after_evict = r.checkpoints.iter().find(|c| c.id == 2).unwrap();
    assert!(
        after_evict.stats.evicted_pages > 16 * 256,
        "kernel swapped little: {:?}",
        after_evict.stats
    );
    assert!(
        after_evict.region_rss < 64 << 20,
        "RSS {} after page-out",
        after_evict.region_rss
    );
    assert_eq!(after_evict.stats.eviction_mode, "kernel");
    assert!(r.stats.evictions_pages > 128 * 256, "{:?}", r.stats);
    // The kernel swaps pages back in behind memout's back; the budget is re-checked every
    // 10 ms against what is really in RAM, so a guest streaming through its memory stands
    // above it by what it swaps in between checks (more when the host is busy), and the
    // budget holds once the guest pauses: checkpoint 4 comes after a pause that touches
    // nothing.
    let streaming = r.checkpoints.iter().find(|c| c.id == 3).unwrap();
    let paused = r.checkpoints.iter().find(|c| c.id == 4).unwrap();
    eprintln!(
        "kernel mode: RSS {} MiB at the end of streaming, {} MiB after a pause (budget 32 MiB)",
        streaming.region_rss >> 20,
        paused.region_rss >> 20
    );
    assert!(
        paused.region_rss <= PAUSED_SLACK,
        "RSS {} MiB after the pause (budget 32 MiB)",
        paused.region_rss >> 20
    );
}

#[test]
fn kernel_mode_resize_pages_out_to_the_target_and_keeps_the_data() {
    let _one = swap_lock();
    let Some(swap) = swapfile("kernel resize", "resize", 256) else {
        return;
    };
    const MIB: u64 = 1 << 20;
    const PAGES: u64 = 64 * MIB / PAGE_SIZE;
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let server = Server::builder().build().unwrap();
    let h = server
        .add_guest(host_test_config(
            "kresize",
            64 * MIB,
            64 * MIB,
            Eviction::Kernel,
            &mem,
        ))
        .expect("add_guest");
    let mut ring = RingDriver::new(mem, 0x6000, 16);
    assert_eq!(ring.hello(&h).status, 0);
    assert_eq!(ring.alloc(&h, PAGES, 0x8000, 1).status, 0);
    let page = |p: u64| (h.region_host_addr() + (p * PAGE_SIZE) as usize) as *mut u64;
    for p in 0..PAGES {
        // SAFETY: page p lies in the region, in frames granted to the guest.
        unsafe { page(p).write_volatile(p ^ 0x5a5a) };
    }
    // The "guest" (host threads here) never releases: the shrink must page out.
    let first = h
        .resize(
            16 * MIB,
            ResizeOptions {
                release_deadline: Duration::from_millis(20),
            },
        )
        .unwrap();
    let end = h.wait_resize(first.id, Duration::from_secs(60)).unwrap();
    let rss = memout_server::procfs::mapping_rss(h.region_host_addr()).unwrap();
    assert_eq!(end.stage, ResizeStage::Done, "{end:?}");
    assert!(end.evicted_pages * PAGE_SIZE >= 48 * MIB, "{end:?}");
    assert!(rss <= 16 * MIB, "RSS {rss} above the 16 MiB target");
    assert!(
        h.stats().evicted_pages * PAGE_SIZE >= 48 * MIB,
        "{:?}",
        h.stats()
    );
    // Every page comes back (through the kernel's swap-in) with its content.
    let bad = (0..PAGES)
        // SAFETY: as above.
        .filter(|&p| unsafe { page(p).read_volatile() } != p ^ 0x5a5a)
        .count();
    assert_eq!(bad, 0);
    drop(h);
    drop(swap);
}
