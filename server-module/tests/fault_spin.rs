//! The fault thread's spin (`GuestRef::set_fault_spin`): it is refused above its limit; with
//! it, faults are served as before and the thread polls after each one (it uses ~10 ms of CPU
//! time more per fault when faults come far apart than without it), and an idle guest's
//! thread still goes to sleep.

use memout_server::ring_driver::{RingDriver, host_test_config};
use memout_server::{ConfigError, Eviction, MAX_FAULT_SPIN, PopulatePolicy, Server};
use std::time::{Duration, Instant};
use vm_memory::{GuestAddress, GuestMemoryMmap};

const CHUNK: usize = 2 << 20;
const CHUNKS: usize = 32;

/// User + system time of this process's thread named `comm`, in ms (10 ms ticks). A new
/// thread names itself once it runs, so it is looked for during up to 5 s.
fn thread_cpu_ms(comm: &str) -> u64 {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            if name.trim() != comm {
                continue;
            }
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap();
            // After the ")" that ends the name: state first, utime 12th, stime 13th.
            let (_, rest) = stat.rsplit_once(')').unwrap();
            let f: Vec<u64> = rest
                .split_whitespace()
                .skip(11)
                .take(2)
                .map(|v| v.parse().unwrap())
                .collect();
            return (f[0] + f[1]) * 1000 / hz;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("no thread named {comm}");
}

/// Touches the first page of each chunk in `chunks` (one fault each) with `gap` between
/// touches; checks what was written reads back.
fn touch_chunks(base: usize, chunks: std::ops::Range<usize>, gap: Duration) {
    for i in chunks {
        let p = (base + i * CHUNK) as *mut u64;
        // SAFETY: a granted page of the test guest's region; only this thread touches it.
        unsafe {
            std::ptr::write_volatile(p, i as u64 + 1);
            assert_eq!(std::ptr::read_volatile(p), i as u64 + 1);
        }
        std::thread::sleep(gap);
    }
}

#[test]
fn the_spin_is_bounded_costs_cpu_between_faults_and_sleeps_when_idle() {
    if !memout_test_support::require(memout_test_support::Piece::Uffd, "fault spin") {
        return;
    }
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let server = Server::builder().build().unwrap();
    let size = (CHUNKS * CHUNK) as u64;
    let h = server
        .add_guest(host_test_config("sp", size, size, Eviction::None, &mem))
        .expect("add_guest");
    let mut ring = RingDriver::new(mem.clone(), 0x6000, 16);
    assert_eq!(ring.hello(&h).status, 0);
    let a = ring.alloc(&h, size / 4096, 0x8000, 1);
    assert_eq!(a.status, 0);
    let base = h.region_host_addr();
    let comm = "memout-uffd-sp";
    // One page per fault: the fault itself costs next to nothing, the spin is what shows.
    h.set_policy(PopulatePolicy::PerPage);

    let over = MAX_FAULT_SPIN + Duration::from_micros(1);
    assert!(matches!(h.set_fault_spin(over), Err(ConfigError::FaultSpin(d)) if d == over));
    h.set_fault_spin(MAX_FAULT_SPIN).unwrap();

    // 16 faults 30 ms apart: the thread polls 10 ms after each, about 160 ms of CPU.
    let before = thread_cpu_ms(comm);
    touch_chunks(base, 0..CHUNKS / 2, Duration::from_millis(30));
    let spun = thread_cpu_ms(comm) - before;

    // Idle for a second: it sleeps after its last spin.
    let t = Instant::now();
    let before = thread_cpu_ms(comm);
    std::thread::sleep(Duration::from_secs(1));
    let idle = thread_cpu_ms(comm) - before;
    assert!(
        idle <= 100,
        "an idle fault thread used {idle} ms of CPU in {:?}",
        t.elapsed()
    );

    // Without the spin, the same faults: the difference is the polling.
    h.set_fault_spin(Duration::ZERO).unwrap();
    let before = thread_cpu_ms(comm);
    touch_chunks(base, CHUNKS / 2..CHUNKS, Duration::from_millis(30));
    let plain = thread_cpu_ms(comm) - before;
    eprintln!("fault thread CPU: {spun} ms spinning, {idle} ms idle, {plain} ms without spin");
    assert!(
        spun >= plain + 80,
        "the fault thread used {spun} ms with the spin, {plain} ms without: it did not poll"
    );
}
