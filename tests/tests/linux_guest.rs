//! A real Linux guest (Debian's cloud kernel under QEMU's software emulation) with `memout.ko`,
//! served by memout over ivshmem: what the guest frees leaves the host, and the module's
//! bookkeeping holds from load to unload.

use memout_tests::{Piece, require_all};
use memout_vmm::qemu::launch::{LinuxImage, Qemu};
use memout_vmm::qemu::{QemuGuest, QemuGuestConfig};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

const MIB: u64 = 1 << 20;
/// One image build at a time (tests of this file run in parallel threads).
static IMAGE: Mutex<Option<LinuxImage>> = Mutex::new(None);

fn image() -> LinuxImage {
    let mut g = IMAGE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(i) = &*g {
        return i.clone();
    }
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/linux-guest");
    let i = LinuxImage::build(&out).expect("building the Linux guest image");
    *g = Some(i.clone());
    i
}

fn guest(name: &str, ram: u64) -> QemuGuest {
    let socket = std::env::temp_dir().join(format!("memout-{name}-{}.sock", std::process::id()));
    QemuGuest::start(&QemuGuestConfig {
        name: name.into(),
        ram_bytes: ram,
        ram_dir: "/dev/shm".into(),
        socket,
    })
    .expect("serving the QEMU guest")
}

/// (a) The guest touches 256 MiB and frees it; the host's RAM file gives back at least 90 % of
/// it within 2 s of the free. (c) Unload leaves the module's accounting at zero errors and the
/// host answering.
#[test]
fn guest_frees_reach_the_host_within_two_seconds() {
    if !require_all(&[Piece::Qemu], "linux_guest") {
        return;
    }
    let image = image();
    let g = guest("free", 1024 * MIB);
    let mut q = Qemu::boot(&g, &image, "memout_test=free,256,4 memout.expedite_ms=50")
        .expect("starting QEMU");
    q.wait_line("MEMOUT-GUEST: loaded", Duration::from_secs(120))
        .expect("the module loads and attaches");
    q.wait_line("MEMOUT-TEST: start", Duration::from_secs(120))
        .expect("the test starts");
    let before = g.guest().stats().resident_pages * 4096;
    q.wait_line("MEMOUT-TEST: touched", Duration::from_secs(120))
        .expect("the guest touches its memory");
    let held = g.guest().stats().resident_pages * 4096;
    eprintln!(
        "RAM file: {} MiB before the touch, {} MiB after",
        before / MIB,
        held / MIB
    );
    let (freed_at, _) = q
        .wait_line("MEMOUT-TEST: freed", Duration::from_secs(60))
        .expect("the guest frees");
    let target = held - 256 * MIB * 9 / 10;
    let mut now = held;
    let mut timeline = Vec::new();
    while now > target && freed_at.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
        now = g.guest().stats().resident_pages * 4096;
        if timeline.last().is_none_or(|&(_, m)| m != now / MIB) {
            timeline.push((freed_at.elapsed().as_millis(), now / MIB));
        }
    }
    let took = freed_at.elapsed();
    eprintln!("after the free (ms, MiB): {timeline:?}");
    let lines = q.finish(Duration::from_secs(60));
    let console = lines.join("\n");
    assert!(
        now <= target,
        "RAM file still holds {} MiB (from {} MiB) 10 s after the free; (ms, MiB): \
         {timeline:?}\n{console}",
        now / MIB,
        held / MIB
    );
    assert!(
        took <= Duration::from_secs(2),
        "host memory fell only after {took:?}\n{console}"
    );
    let s = g.guest().stats();
    assert!(s.reported_pages * 4096 >= 230 * MIB, "{s:?}");
    assert_eq!((s.request_errors, s.punch_errors), (0, 0), "{s:?}");
    for want in ["MEMOUT-GUEST: test passed", "MEMOUT-GUEST: unloaded"] {
        assert!(console.contains(want), "no {want:?}\n{console}");
    }
    assert!(
        console.contains("0 report errors"),
        "the module's detach line\n{console}"
    );
}
