//! Measures evict and swap-in with host threads only (no KVM): how much of the swap cost is
//! memout's own. Usage: cargo run --release --example swap_probe -p memout-server [MiB] [dir]
use memout_server::ring_driver::{RingDriver, host_test_config};
use memout_server::{Eviction, FileStore, Server};
use std::sync::Arc;
use std::time::Instant;
use vm_memory::{GuestAddress, GuestMemoryMmap};

fn main() {
    let mib: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(512);
    let dir = std::env::args().nth(2).unwrap_or_else(|| "/var/tmp".into());
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let store = FileStore::create(std::path::Path::new(&dir), "probe", mib << 20).unwrap();
    let server = Server::builder().build().unwrap();
    let h = server
        .add_guest(host_test_config(
            "probe",
            mib << 20,
            mib << 20,
            Eviction::Store(Arc::new(store)),
            &mem,
        ))
        .unwrap();
    let mut ring = RingDriver::new(mem.clone(), 0x6000, 16);
    assert_eq!(ring.hello(&h).status, 0);
    assert_eq!(ring.alloc(&h, mib * 256, 0x8000, 1).status, 0);
    let base = h.region_host_addr();
    let pages = (mib * 256) as usize;
    let touch = |write: bool| {
        let t = Instant::now();
        let mut sum = 0u64;
        for p in 0..pages {
            let a = (base + p * 4096) as *mut u64;
            // SAFETY: granted frames of the probe's region.
            unsafe {
                if write {
                    std::ptr::write_volatile(a, p as u64 + 1)
                } else {
                    sum += std::ptr::read_volatile(a)
                }
            }
        }
        (t.elapsed(), sum)
    };
    let (t_pop, _) = touch(true);
    let t = Instant::now();
    let n = h.evict(u64::MAX / 2).unwrap();
    let t_ev = t.elapsed();
    let (t_in, sum) = touch(false);
    assert_eq!(sum, (pages as u64) * (pages as u64 + 1) / 2);
    let s = h.stats();
    println!(
        "{mib} MiB: populate {t_pop:?}, evict {t_ev:?} ({n} bytes), swap-in {t_in:?} ({} faults, p50 {} us)",
        s.faults,
        s.swapin_p50_ns / 1000
    );
}
