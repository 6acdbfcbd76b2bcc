//! A file-backed guest (an external VMM's, e.g. QEMU's) through its ring, as a hostile or
//! well-behaved Linux module would drive it: reported frees drop the RAM file's memory and keep
//! ownership, the balloon's FREE/ALLOC move frames within the quota, and bad requests are
//! refused with nothing dropped. Listed on a control socket, it is resized like any guest.

use memout_protocol::control::{ErrorKind, Policy, Request, ResizePhase, Response, VmmKind};
use memout_protocol::ring::{Descriptor, Extent, FREE_REPORTED, Opcode, RingHeader, Status};
use memout_server::control::Client;
use memout_server::file_guest::{Channel, FileGuest};
use memout_server::{ConfigError, Server};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::time::Duration;
use vm_memory::{Bytes, GuestAddress};

mod file_guest_support;

use file_guest_support::{Driver, MIB, ext};

#[test]
fn reported_frees_drop_memory_and_keep_ownership() {
    let mut d = Driver::new(64 * MIB);
    d.touch(0, 32 * MIB);
    assert!(d.resident() >= 32 * MIB);
    let r = d.free(&[ext(0, 16 * MIB), ext(24 * MIB, 8 * MIB)], FREE_REPORTED);
    assert_eq!((r.status, r.pages), (0, 6144));
    assert!(d.resident() <= 8 * MIB, "{} MiB left", d.resident() / MIB);
    let s = d.g.stats();
    assert_eq!((s.reported_pages, s.allocated_pages), (6144, 16384));
    // The guest still owns them: it may report them again, and reads zeroes there.
    assert_eq!(d.free(&[ext(0, 16 * MIB)], FREE_REPORTED).status, 0);
    let f = std::fs::File::open(d.g.ram().path()).unwrap();
    let mut b = [1u8; 64];
    f.read_exact_at(&mut b, 4096).unwrap();
    assert_eq!(b, [0u8; 64]);
}

#[test]
fn the_balloon_gives_frames_back_within_the_quota() {
    let mut d = Driver::new(64 * MIB);
    d.touch(0, 64 * MIB);
    let r = d.free(&[ext(32 * MIB, 32 * MIB)], 0);
    assert_eq!((r.status, r.pages), (0, 8192));
    assert!(d.resident() <= 32 * MIB);
    assert_eq!(d.g.stats().allocated_pages, 8192);
    // Frames given back are the host's: reporting them again is refused.
    let r = d.free(&[ext(40 * MIB, 4 * MIB)], FREE_REPORTED);
    assert_eq!(r.status, Status::NotOwned as u32);
    // ALLOC hands them back (into the scratch area).
    let a = d.submit(Descriptor {
        opcode: Opcode::Alloc as u16,
        pages: 4096,
        nr_extents: 16,
        extents_gpa: d.scratch,
        ..Default::default()
    });
    assert_eq!((a.status, a.pages), (0, 4096));
    assert_eq!(d.g.stats().allocated_pages, 12288);
}

#[test]
fn bad_frees_are_refused_and_drop_nothing() {
    let mut d = Driver::new(64 * MIB);
    d.touch(0, 64 * MIB);
    let before = d.resident();
    for (list, why) in [
        (vec![ext(60 * MIB, 8 * MIB)], "beyond RAM"),
        (vec![ext(u64::MAX - 4095, 4096)], "address overflow"),
        (
            vec![ext(0, 8 * MIB), ext(4 * MIB, 8 * MIB)],
            "overlapping extents",
        ),
        (
            vec![ext(0, 8 * MIB), ext(100 * MIB, 4096)],
            "one bad extent of two",
        ),
        (vec![ext(1, 4096)], "unaligned"),
        (vec![Extent { gpa: 0, pages: 0 }], "empty extent"),
    ] {
        let r = d.free(&list, FREE_REPORTED);
        assert_eq!(r.status, Status::Invalid as u32, "{why}");
    }
    let r = d.free(&[ext(0, 4096)], 0x8000);
    assert_eq!(r.status, Status::Invalid as u32, "unknown flag");
    // An extent list outside the channel.
    let r = d.submit(Descriptor {
        opcode: Opcode::Free as u16,
        nr_extents: 1,
        extents_gpa: 0x1000,
        ..Default::default()
    });
    assert_eq!(r.status, Status::BadPointer as u32);
    assert_eq!(d.resident(), before, "nothing dropped");
    assert_eq!(d.g.stats().request_errors, 8);
}

fn resize(c: &mut Client, bytes: u64, deadline_ms: u32) -> Response {
    c.request(&Request::Resize {
        guest: "t".into(),
        bytes,
        release_deadline_ms: deadline_ms,
        wait: true,
    })
    .unwrap()
}

#[test]
fn a_listed_file_guest_is_resized_through_the_control_socket() {
    let d = Driver::with(
        FileGuest::create("t", std::path::Path::new("/dev/shm"), 64 * MIB)
            .unwrap()
            .with_min_bytes(16 * MIB)
            .unwrap(),
    );
    let interrupts = Arc::new(AtomicU32::new(0));
    let n = interrupts.clone();
    d.g.set_interrupt(Box::new(move || {
        n.fetch_add(1, SeqCst);
    }));
    let server = Server::builder().build().unwrap();
    server.register_external(&d.g).unwrap();
    assert!(
        matches!(
            server.register_external(&d.g),
            Err(ConfigError::DuplicateName(_))
        ),
        "one name, one guest"
    );
    let path = std::env::temp_dir().join(format!("memout-fg-{}.sock", std::process::id()));
    let ctl = server.serve_control(&path).unwrap();
    let mut c = Client::connect(ctl.path(), "t", Duration::from_secs(10)).unwrap();
    match c.request(&Request::List).unwrap() {
        Response::Guests(l) => {
            assert_eq!(l.len(), 1);
            assert_eq!((l[0].vmm, l[0].region_bytes), (VmmKind::External, 64 * MIB));
        }
        r => panic!("{r:?}"),
    }

    // A guest that does not release: at the deadline the resize ends short, and says why.
    let Response::Resize(p) = resize(&mut c, 32 * MIB, 100) else {
        panic!("refused");
    };
    assert_eq!(p.phase, ResizePhase::Incomplete, "{p:?}");
    assert!(p.note.unwrap().contains("8192 pages above the target"));
    assert_eq!(interrupts.load(SeqCst), 1, "the guest was interrupted");
    let mut b = [0u8; RingHeader::SIZE];
    d.g.channel()
        .memory()
        .read_slice(&mut b, GuestAddress(Channel::ring_gpa()))
        .unwrap();
    let h = RingHeader::from_bytes(&b);
    assert_eq!(
        (h.quota_pages, h.release_pages),
        (8192, 8192),
        "the guest's message"
    );

    // A guest that releases while the resize waits: done, with the pages it released.
    let g = d.g.clone();
    let mut d = d;
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        d.touch(0, 64 * MIB);
        assert_eq!(d.free(&[ext(32 * MIB, 32 * MIB)], 0).status, 0);
        d
    });
    let Response::Resize(p) = resize(&mut c, 32 * MIB, 10_000) else {
        panic!("refused");
    };
    let _d = releaser.join().unwrap();
    assert_eq!(p.phase, ResizePhase::Done, "{p:?}");
    assert_eq!((p.released_bytes, p.allocated_bytes), (32 * MIB, 32 * MIB));
    assert!(p.resident_bytes <= 32 * MIB, "{p:?}");
    assert_eq!(g.stats().quota_pages, 8192);

    // What memout cannot do for it, and sizes it cannot have, are refused; nothing changes.
    for (r, kind) in [
        (
            Request::Evict {
                guest: "t".into(),
                bytes: MIB,
            },
            ErrorKind::NotSupported,
        ),
        (
            Request::SetBudget {
                guest: "t".into(),
                bytes: Some(8 * MIB),
            },
            ErrorKind::NotSupported,
        ),
        (
            Request::SetPolicy {
                guest: "t".into(),
                policy: Policy::Eager,
            },
            ErrorKind::NotSupported,
        ),
        (
            Request::Resize {
                guest: "t".into(),
                bytes: 8 * MIB,
                release_deadline_ms: 0,
                wait: false,
            },
            ErrorKind::InvalidSize,
        ),
        (
            Request::Resize {
                guest: "t".into(),
                bytes: 128 * MIB,
                release_deadline_ms: 0,
                wait: false,
            },
            ErrorKind::InvalidSize,
        ),
    ] {
        match c.request(&r).unwrap() {
            Response::Error { kind: k, .. } => assert_eq!(k, kind, "{r:?}"),
            other => panic!("{r:?}: {other:?}"),
        }
    }
    let Response::Status(s) = c.request(&Request::Status { guest: "t".into() }).unwrap() else {
        panic!("status");
    };
    assert_eq!((s.requested_bytes, s.min_bytes), (32 * MIB, 16 * MIB));

    // Gone from the list once the VMM glue drops it.
    drop((g, _d));
    match c.request(&Request::List).unwrap() {
        Response::Guests(l) => assert!(l.is_empty(), "{l:?}"),
        r => panic!("{r:?}"),
    }
}
