//! A real Linux guest (Debian's cloud kernel under QEMU's software emulation) with `memout.ko`,
//! served by memout over ivshmem: what the guest frees leaves the host, `/dev/memout` gives its
//! processes host-granted frames, and the module's bookkeeping holds from load to unload.
//! Resizing (the balloon) is in `linux_balloon.rs`.

mod linux_support;

use linux_support::{MIB, expect_lines, guest, image};
use memout_tests::{Piece, require_all};
use memout_vmm::qemu::launch::Qemu;
use std::time::Duration;

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
    let lines = q.finish(Duration::from_secs(300));
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
    expect_lines(
        &console,
        &["MEMOUT-GUEST: test passed", "MEMOUT-GUEST: unloaded"],
    );
    assert!(
        console.contains("0 report errors"),
        "the module's detach line\n{console}"
    );
}

/// Without its device the module loads, says it is waiting, and the guest runs on.
#[test]
fn the_module_without_its_device_loads_and_waits() {
    if !require_all(&[Piece::Qemu], "linux_guest") {
        return;
    }
    let image = image();
    let args: Vec<String> = ["-m", "512M"].map(String::from).to_vec();
    let q = Qemu::boot_with(&args, &image, "memout_test=free,16,0").expect("starting QEMU");
    let console = q.finish(Duration::from_secs(300)).join("\n");
    expect_lines(
        &console,
        &[
            "MEMOUT-GUEST: loaded",
            "no ivshmem device served by memout yet",
            "MEMOUT-GUEST: test passed",
            "MEMOUT-GUEST: unloaded",
            "MEMOUT-GUEST: done",
        ],
    );
}

/// A host that takes the channel but never answers: the module gives up on it after its
/// deadline, says so, and the guest runs on.
#[test]
fn a_host_that_never_answers_is_given_up() {
    use memout_server::file_guest::FileGuest;
    use memout_vmm::qemu::ivshmem::IvshmemServer;
    if !require_all(&[Piece::Qemu], "linux_guest") {
        return;
    }
    let image = image();
    let guest =
        FileGuest::create("mute", std::path::Path::new("/dev/shm"), 512 * MIB).expect("RAM file");
    let socket = std::env::temp_dir().join(format!("memout-mute-{}.sock", std::process::id()));
    let mut server = IvshmemServer::bind(&socket).expect("ivshmem socket");
    let args: Vec<String> = vec![
        "-machine".into(),
        "pc,memory-backend=ram0".into(),
        "-m".into(),
        "512M".into(),
        "-object".into(),
        format!(
            "memory-backend-file,id=ram0,size=512M,mem-path={},share=on",
            guest.ram().path().display()
        ),
        "-chardev".into(),
        format!("socket,path={},id=chan", socket.display()),
        "-device".into(),
        "ivshmem-doorbell,chardev=chan,vectors=1".into(),
    ];
    let q = Qemu::boot_with(&args, &image, "memout_test=free,16,0").expect("starting QEMU");
    // Hand QEMU the channel, then never look at a doorbell.
    let _client = server.accept(guest.channel().fd()).expect("QEMU connects");
    let console = q.finish(Duration::from_secs(300)).join("\n");
    expect_lines(
        &console,
        &[
            "host did not answer request",
            "HELLO to the memout host failed",
            "MEMOUT-GUEST: test passed",
            "MEMOUT-GUEST: done",
        ],
    );
    assert_eq!(guest.stats().requests, 0, "nothing was served");
}

/// memout goes away while the guest runs: QEMU keeps the RAM file mapped, the guest's data
/// stays intact, and the module stops using the channel.
#[test]
fn memout_gone_leaves_the_guest_intact() {
    if !require_all(&[Piece::Qemu], "linux_guest") {
        return;
    }
    let image = image();
    let g = guest("gone", 512 * MIB);
    let ram = g.ram_path().to_path_buf();
    let mut q = Qemu::boot(&g, &image, "memout_test=hold,64,6").expect("starting QEMU");
    q.wait_line("MEMOUT-TEST: holding", Duration::from_secs(120))
        .expect("the guest fills its memory");
    assert!(
        !ram.exists(),
        "the RAM file's name is gone once the module said HELLO, so a killed memout leaves none"
    );
    drop(g);
    let console = q.finish(Duration::from_secs(300)).join("\n");
    expect_lines(
        &console,
        &[
            "MEMOUT-TEST: intact (0 bad words)",
            "MEMOUT-GUEST: test passed",
            "MEMOUT-GUEST: done",
        ],
    );
}

/// `/dev/memout`: a guest process maps 64 MiB of frames the host grants (zero-filled), fills
/// and checks them; its munmap FREEs them, so the RAM file drops at once; mappings the module
/// must refuse (private, too large, more than the guest can give) are refused, with a `dmesg`
/// line for the host's shortfall; the module unloads with nothing mapped and nothing held.
#[test]
fn dev_memout_maps_host_granted_frames_and_gives_them_back_on_unmap() {
    if !require_all(&[Piece::Qemu], "linux_guest") {
        return;
    }
    let image = image();
    let g = guest("dev", 512 * MIB);
    let mut q = Qemu::boot(&g, &image, "memout_test=dev,64,3").expect("starting QEMU");
    let before = g.guest().stats();
    q.wait_line(
        "MEMOUT-TEST: dev mapped 64 MiB (0 nonzero words)",
        Duration::from_secs(120),
    )
    .expect("the guest maps /dev/memout and reads zeroes");
    let mapped = g.guest().stats();
    q.wait_line("MEMOUT-TEST: dev unmapped", Duration::from_secs(60))
        .expect("the guest unmaps");
    let unmapped = g.guest().stats();
    let console = q.finish(Duration::from_secs(300)).join("\n");
    let page = 4096;
    // The grant: the guest paid the host for it first (FREE), then the host granted (ALLOC).
    assert!(
        (mapped.freed_pages - before.freed_pages) * page >= 64 * MIB,
        "{before:?}\n{mapped:?}"
    );
    // The unmap: FREEd, and the RAM file gave the filled pages back.
    assert!(
        (unmapped.freed_pages - mapped.freed_pages) * page >= 64 * MIB,
        "{mapped:?}\n{unmapped:?}"
    );
    assert!(
        unmapped.resident_pages * page + 57 * MIB <= mapped.resident_pages * page,
        "RAM file {} MiB mapped, {} MiB after the unmap\n{console}",
        mapped.resident_pages * page / MIB,
        unmapped.resident_pages * page / MIB
    );
    expect_lines(
        &console,
        &[
            "MEMOUT-TEST: dev intact (0 bad words)",
            "MEMOUT-TEST: dev private mapping refused: Invalid argument",
            "MEMOUT-TEST: dev 2 GiB mapping refused: Argument list too long",
            "MEMOUT-TEST: dev 900 MiB mapping refused: Cannot allocate memory",
            "mmap refused",
            "MEMOUT-GUEST: test passed",
            "MEMOUT-GUEST: dev_bytes 0",
            "MEMOUT-GUEST: bad_grants 0",
            "MEMOUT-GUEST: unloaded",
        ],
    );
    assert!(!console.contains("dev mapping was split"), "{console}");
    // Until unload the balloon may hold frames cached for the fast path; unload gives the
    // guest everything back. The balloon's ALLOCs may lose the room they saw to the host's
    // magazine refills, which the host refuses (quota): a few, never a bad request.
    let s = g.guest().stats();
    assert_eq!(s.punch_errors, 0, "{s:?}");
    assert!(s.request_errors <= 3, "{s:?}");
    assert_eq!(
        s.allocated_pages, s.ram_pages,
        "unload left the host holding frames"
    );
}
