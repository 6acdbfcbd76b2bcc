//! A real Linux guest (Debian's cloud kernel under QEMU's software emulation) with `memout.ko`,
//! served by memout over ivshmem: what the guest frees leaves the host, and the module's
//! bookkeeping holds from load to unload.

use memout_protocol::control::{ErrorKind, GuestStatus, Request, ResizePhase, Response, VmmKind};
use memout_server::Server;
use memout_server::control::{Client, ControlServer};
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
        min_bytes: 64 * MIB,
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
    for want in ["MEMOUT-GUEST: test passed", "MEMOUT-GUEST: unloaded"] {
        assert!(console.contains(want), "no {want:?}\n{console}");
    }
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
    for want in [
        "MEMOUT-GUEST: loaded",
        "no ivshmem device served by memout yet",
        "MEMOUT-GUEST: test passed",
        "MEMOUT-GUEST: unloaded",
        "MEMOUT-GUEST: done",
    ] {
        assert!(console.contains(want), "no {want:?}\n{console}");
    }
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
    for want in [
        "host did not answer request",
        "HELLO to the memout host failed",
        "MEMOUT-GUEST: test passed",
        "MEMOUT-GUEST: done",
    ] {
        assert!(console.contains(want), "no {want:?}\n{console}");
    }
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
    for want in [
        "MEMOUT-TEST: intact (0 bad words)",
        "MEMOUT-GUEST: test passed",
        "MEMOUT-GUEST: done",
    ] {
        assert!(console.contains(want), "no {want:?}\n{console}");
    }
}

/// A control-socket client for a server that lists `g` (the socket is removed when the
/// returned server is dropped).
fn control(g: &QemuGuest, name: &str) -> (Server, ControlServer, Client) {
    let server = Server::builder().build().expect("server");
    g.register(&server).expect("listing the guest");
    let path = std::env::temp_dir().join(format!("memout-ctl-{name}-{}.sock", std::process::id()));
    let ctl = server.serve_control(&path).expect("control socket");
    let c = Client::connect(ctl.path(), "linux-test", Duration::from_secs(120)).expect("connect");
    (server, ctl, c)
}

fn resize(c: &mut Client, guest: &str, bytes: u64, deadline_ms: u32) -> Response {
    c.request(&Request::Resize {
        guest: guest.into(),
        bytes,
        release_deadline_ms: deadline_ms,
        wait: true,
    })
    .expect("resize request")
}

fn status(c: &mut Client, guest: &str) -> GuestStatus {
    match c
        .request(&Request::Status {
            guest: guest.into(),
        })
        .expect("status request")
    {
        Response::Status(s) => *s,
        r => panic!("{r:?}"),
    }
}

/// (b) Resizing a Linux guest through the control socket (what `memoutctl resize` sends):
/// shrunk from 1 GiB to 512 MiB, its balloon gives the host the difference (requested vs
/// actual in the report) and the RAM file follows; grown back, the balloon takes it again;
/// the guest's data stays intact throughout. What memout cannot do for it is refused.
#[test]
fn a_linux_guest_shrinks_and_grows_with_its_data_intact() {
    if !require_all(&[Piece::Qemu], "linux_guest") {
        return;
    }
    let image = image();
    let g = guest("resize", 1024 * MIB);
    let (_server, _ctl, mut c) = control(&g, "resize");
    let mut q = Qemu::boot(&g, &image, "memout_test=hold,256,40 memout.expedite_ms=50")
        .expect("starting QEMU");
    q.wait_line("MEMOUT-TEST: holding", Duration::from_secs(120))
        .expect("the guest fills 256 MiB");
    match c.request(&Request::List).expect("list") {
        Response::Guests(l) => {
            assert_eq!(l.len(), 1, "{l:?}");
            assert_eq!(
                (l[0].name.as_str(), l[0].vmm),
                ("resize", VmmKind::External)
            );
        }
        r => panic!("{r:?}"),
    }
    let before = status(&mut c, "resize").resident_bytes;

    let Response::Resize(p) = resize(&mut c, "resize", 512 * MIB, 60_000) else {
        panic!("shrink refused");
    };
    assert_eq!(p.phase, ResizePhase::Done, "{p:?}");
    assert_eq!(p.target_bytes, 512 * MIB);
    assert!(p.allocated_bytes <= 512 * MIB, "{p:?}");
    assert!(p.released_bytes >= 512 * MIB - 4 * MIB, "{p:?}");
    let s = status(&mut c, "resize");
    assert_eq!(s.requested_bytes, 512 * MIB);
    assert!(s.resident_bytes <= 512 * MIB, "RAM file: {s:?}");
    let shrunk = std::time::Duration::from_micros(p.elapsed_us);

    let Response::Resize(p) = resize(&mut c, "resize", 1024 * MIB, 1000) else {
        panic!("grow refused");
    };
    assert_eq!(p.phase, ResizePhase::Done, "{p:?}");
    let t = std::time::Instant::now();
    while status(&mut c, "resize").allocated_bytes < 1024 * MIB {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the balloon deflates"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "RAM file {} MiB before; shrink to 512 MiB in {shrunk:?} (RAM file {} MiB), grow back \
         in {:?}",
        before / MIB,
        s.resident_bytes / MIB,
        t.elapsed()
    );
    let refused = |r: Response, kind: ErrorKind| match r {
        Response::Error { kind: k, .. } if k == kind => {}
        r => panic!("expected {kind:?}: {r:?}"),
    };
    refused(
        resize(&mut c, "resize", 2048 * MIB, 10),
        ErrorKind::InvalidSize,
    );
    refused(
        resize(&mut c, "resize", 32 * MIB, 10),
        ErrorKind::InvalidSize,
    );
    for r in [
        Request::Evict {
            guest: "resize".into(),
            bytes: 64 * MIB,
        },
        Request::SetBudget {
            guest: "resize".into(),
            bytes: Some(256 * MIB),
        },
    ] {
        refused(c.request(&r).expect("request"), ErrorKind::NotSupported);
    }
    assert_eq!(status(&mut c, "resize").requested_bytes, 1024 * MIB);
    let console = q.finish(Duration::from_secs(300)).join("\n");
    for want in [
        "MEMOUT-TEST: intact (0 bad words)",
        "MEMOUT-GUEST: balloon_bytes 0",
        "MEMOUT-GUEST: unloaded",
    ] {
        assert!(console.contains(want), "no {want:?}\n{console}");
    }
    let s = g.guest().stats();
    assert_eq!((s.request_errors, s.punch_errors), (0, 0), "{s:?}");
    assert_eq!(
        s.allocated_pages, s.ram_pages,
        "unload left the host holding frames"
    );
}

/// A release larger than the guest can give: the balloon gives what it can, says how much
/// in `dmesg`, and the guest keeps running with its data intact.
#[test]
fn a_release_beyond_what_the_guest_can_give_leaves_it_running() {
    if !require_all(&[Piece::Qemu], "linux_guest") {
        return;
    }
    let image = image();
    let g = guest("overask", 512 * MIB);
    let mut q = Qemu::boot(&g, &image, "memout_test=hold,320,20").expect("starting QEMU");
    q.wait_line("MEMOUT-TEST: holding", Duration::from_secs(120))
        .expect("the guest fills 320 MiB");
    let (_server, _ctl, mut c) = control(&g, "overask");
    let Response::Resize(p) = resize(&mut c, "overask", 64 * MIB, 3000) else {
        panic!("a size the host accepts");
    };
    // Past the deadline the report says what the guest kept; the quota stays.
    assert_eq!(p.phase, ResizePhase::Incomplete, "{p:?}");
    assert!(
        p.note
            .as_deref()
            .is_some_and(|n| n.contains("cannot evict")),
        "{p:?}"
    );
    // The balloon stops where the guest's allocator has nothing more to give.
    let end = std::time::Instant::now() + Duration::from_secs(60);
    let mut last = u64::MAX;
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = g.guest().stats().allocated_pages * 4096;
        if now == last || std::time::Instant::now() > end {
            break;
        }
        last = now;
    }
    let held = g.guest().stats().allocated_pages * 4096;
    assert!(
        held > 320 * MIB,
        "the guest kept what it uses: {} MiB",
        held / MIB
    );
    assert!(
        held < 512 * MIB,
        "the balloon gave something: {} MiB",
        held / MIB
    );
    let console = q.finish(Duration::from_secs(300)).join("\n");
    for want in [
        "the guest gave",
        "MEMOUT-TEST: intact (0 bad words)",
        "MEMOUT-GUEST: done",
    ] {
        assert!(console.contains(want), "no {want:?}\n{console}");
    }
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
    for want in [
        "MEMOUT-TEST: dev intact (0 bad words)",
        "MEMOUT-TEST: dev private mapping refused: Invalid argument",
        "MEMOUT-TEST: dev 2 GiB mapping refused: Argument list too long",
        "MEMOUT-TEST: dev 900 MiB mapping refused: Cannot allocate memory",
        "mmap refused",
        "MEMOUT-GUEST: test passed",
        "MEMOUT-GUEST: dev_bytes 0",
        "MEMOUT-GUEST: bad_grants 0",
        "MEMOUT-GUEST: balloon_bytes 0",
        "MEMOUT-GUEST: unloaded",
    ] {
        assert!(console.contains(want), "no {want:?}\n{console}");
    }
    assert!(!console.contains("dev mapping was split"), "{console}");
    let s = g.guest().stats();
    assert_eq!((s.request_errors, s.punch_errors), (0, 0), "{s:?}");
    assert_eq!(
        s.allocated_pages, s.ram_pages,
        "unload left the host holding frames"
    );
}

/// A host that refuses the balloon's ALLOCs, then one that grants frames the guest already
/// holds: the module says so in `dmesg`, takes nothing it was not given, and the guest keeps
/// running with its data intact; once the host behaves, the balloon gives everything back.
#[test]
fn a_host_that_refuses_or_misgrants_allocs_leaves_the_guest_intact() {
    use memout_server::inject::AllocFault;
    use memout_server::{ResizeOptions, ResizeStage};
    if !require_all(&[Piece::Qemu], "linux_guest") {
        return;
    }
    let image = image();
    let g = guest("faults", 512 * MIB);
    let fg = g.guest().clone();
    let mut q = Qemu::boot(&g, &image, "memout_test=hold,128,25").expect("starting QEMU");
    q.wait_line("MEMOUT-TEST: holding", Duration::from_secs(120))
        .expect("the guest fills 128 MiB");
    let resize = |bytes: u64| {
        let r = fg
            .resize(
                bytes,
                ResizeOptions {
                    release_deadline: Duration::from_secs(60),
                },
            )
            .expect("a size the guest can have");
        fg.wait_resize(r.id, Duration::from_secs(90))
            .expect("a resize")
    };
    let held = || fg.stats().allocated_pages * 4096;
    let r = resize(256 * MIB);
    assert_eq!(r.stage, ResizeStage::Done, "{r:?}");

    // Each fault answers every ALLOC while it is armed; the module says so in `dmesg` (on the
    // console), and takes nothing back.
    for (fault, says) in [
        (AllocFault::Refuse, "host refused opcode"),
        (AllocFault::Foreign, "which the balloon does not hold"),
    ] {
        fg.inject_alloc_fault(fault, u32::MAX);
        resize(512 * MIB);
        q.wait_text(says, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{fault:?}: {e}"));
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            held(),
            256 * MIB,
            "{fault:?}: the balloon took nothing back"
        );
        fg.inject_alloc_fault(fault, 0);
        resize(256 * MIB); // the next grow is a new message
    }
    let r = resize(512 * MIB);
    assert_eq!(r.stage, ResizeStage::Done);
    let end = std::time::Instant::now() + Duration::from_secs(60);
    while held() < 512 * MIB {
        assert!(std::time::Instant::now() < end, "the balloon deflates");
        std::thread::sleep(Duration::from_millis(20));
    }
    let console = q.finish(Duration::from_secs(300)).join("\n");
    for want in [
        "host refused opcode",
        "which the balloon does not hold",
        "MEMOUT-TEST: intact (0 bad words)",
        "MEMOUT-GUEST: test passed",
        "MEMOUT-GUEST: balloon_bytes 0",
        "MEMOUT-GUEST: unloaded",
    ] {
        assert!(console.contains(want), "no {want:?}\n{console}");
    }
    assert!(
        !console.contains("MEMOUT-GUEST: bad_grants 0"),
        "the foreign grant was counted\n{console}"
    );
    let s = fg.stats();
    assert_eq!(
        s.allocated_pages, s.ram_pages,
        "unload left the host holding frames"
    );
}
