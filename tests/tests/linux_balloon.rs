//! Resizing a real Linux guest (Debian's cloud kernel under QEMU's software emulation) through
//! `memout.ko`'s balloon: through the control socket with the guest's data intact, beyond what
//! the guest can give, and against a host that refuses or misgrants the balloon's ALLOCs.

mod linux_support;

use linux_support::{MIB, expect_lines, guest, image};
use memout_protocol::control::{ErrorKind, GuestStatus, Request, ResizePhase, Response, VmmKind};
use memout_server::Server;
use memout_server::control::{Client, ControlServer};
use memout_tests::{Piece, require_all};
use memout_vmm::qemu::QemuGuest;
use memout_vmm::qemu::launch::Qemu;
use std::time::Duration;

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
    expect_lines(
        &console,
        &[
            "MEMOUT-TEST: intact (0 bad words)",
            "MEMOUT-GUEST: balloon_bytes 0",
            "MEMOUT-GUEST: unloaded",
        ],
    );
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
    expect_lines(
        &console,
        &[
            "the guest gave",
            "MEMOUT-TEST: intact (0 bad words)",
            "MEMOUT-GUEST: done",
        ],
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
    expect_lines(
        &console,
        &[
            "host refused opcode",
            "which the balloon does not hold",
            "MEMOUT-TEST: intact (0 bad words)",
            "MEMOUT-GUEST: test passed",
            "MEMOUT-GUEST: balloon_bytes 0",
            "MEMOUT-GUEST: unloaded",
        ],
    );
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
