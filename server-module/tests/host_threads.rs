//! The server against real userfaultfd, with host threads in place of a vCPU: the ring is
//! driven through shared memory exactly as a guest would, and the outsourced region is touched
//! through its host mapping (faults arrive on the uffd like KVM's do).

use memout_protocol::ring::*;
use memout_server::ring_driver::{
    RingDriver, TEST_REGION_GPA as REGION_GPA, TEST_RING_GPA as RING, host_test_config,
};
use memout_server::{GuestConfig, Server};
use std::sync::mpsc;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const LIST: u64 = 0x8000;
const STATS: u64 = 0x9000;

fn uffd_available() -> bool {
    memout_test_support::require(memout_test_support::Piece::Uffd, "host threads")
}

fn config(shared: GuestMemoryMmap, quota: u64, tx: Option<mpsc::Sender<String>>) -> GuestConfig {
    GuestConfig {
        on_fatal: tx.map(|tx| {
            Box::new(move |f: &memout_server::GuestFault| {
                let _ = tx.send(f.to_string());
            }) as memout_server::FatalNotifier
        }),
        ..host_test_config("t", 64 << 20, quota, memout_server::Eviction::None, &shared)
    }
}

/// Writes through the host mapping of a granted frame (the test's stand-in for a vCPU).
fn poke(addr: usize, v: u64) {
    // SAFETY: callers pass addresses inside the guest's region, in frames granted to it; the
    // region stays mapped while the handle lives.
    unsafe { std::ptr::write_volatile(addr as *mut u64, v) }
}

/// Reads through the host mapping (see [`poke`]).
fn peek(addr: usize) -> u64 {
    // SAFETY: as for `poke`.
    unsafe { std::ptr::read_volatile(addr as *const u64) }
}

#[test]
fn alloc_touch_free_returns_memory() {
    if !uffd_available() {
        return;
    }
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let server = Server::builder().build().unwrap();
    let h = server
        .add_guest(config(mem.clone(), 32 << 20, None))
        .unwrap();
    let mut drv = RingDriver::new(mem.clone(), RING, 16);
    let no_hello = drv.submit(
        &h,
        Descriptor {
            opcode: 2,
            pages: 1,
            nr_extents: 1,
            extents_gpa: LIST,
            ..Default::default()
        },
    );
    assert_eq!(no_hello.status, Status::NoHello as u32);
    let hello = drv.submit(
        &h,
        Descriptor {
            opcode: 1,
            arg0: ABI_VERSION as u64,
            ..Default::default()
        },
    );
    assert_eq!((hello.status, hello.arg1), (0, ABI_VERSION as u64));
    let a = drv.submit(
        &h,
        Descriptor {
            opcode: 2,
            pages: 4096,
            nr_extents: 8,
            extents_gpa: LIST,
            tag: 77,
            ..Default::default()
        },
    );
    assert_eq!((a.status, a.pages, a.tag), (0, 4096, 77));
    let mut eb = [0u8; 16];
    mem.read_slice(&mut eb, GuestAddress(LIST)).unwrap();
    let e = Extent::from_bytes(&eb);
    assert_eq!(e.pages, 4096);
    // Touch every page through the host mapping: faults are served by the handler thread.
    let base = h.region_host_addr() + (e.gpa - REGION_GPA) as usize;
    for p in 0..4096usize {
        poke(base + p * 4096, p as u64 + 1);
    }
    for p in 0..4096usize {
        assert_eq!(peek(base + p * 4096), p as u64 + 1);
    }
    let s = h.stats();
    assert_eq!(s.allocated_pages, 4096);
    assert_eq!(s.resident_pages, 4096);
    assert!(
        s.faults <= 16,
        "fault-around should need few faults, took {}",
        s.faults
    );
    // Quota: 8192 pages total, 4096 used.
    let q = drv.submit(
        &h,
        Descriptor {
            opcode: 2,
            pages: 5000,
            nr_extents: 8,
            extents_gpa: LIST,
            ..Default::default()
        },
    );
    assert_eq!(q.status, Status::Quota as u32);
    // Free half: memory goes back at once.
    mem.write_slice(
        &Extent {
            gpa: e.gpa,
            pages: 2048,
        }
        .to_bytes(),
        GuestAddress(LIST),
    )
    .unwrap();
    let f = drv.submit(
        &h,
        Descriptor {
            opcode: 3,
            nr_extents: 1,
            extents_gpa: LIST,
            ..Default::default()
        },
    );
    assert_eq!((f.status, f.pages), (0, 2048));
    let s = h.stats();
    assert_eq!((s.allocated_pages, s.resident_pages), (2048, 2048));
    assert_eq!(s.bytes_returned, 2048 * 4096);
    // Double free is refused and changes nothing.
    let f2 = drv.submit(
        &h,
        Descriptor {
            opcode: 3,
            nr_extents: 1,
            extents_gpa: LIST,
            ..Default::default()
        },
    );
    assert_eq!(f2.status, Status::NotOwned as u32);
    let st = drv.submit(
        &h,
        Descriptor {
            opcode: 4,
            arg0: STATS,
            ..Default::default()
        },
    );
    assert_eq!(st.status, 0);
    let mut sb = [0u8; 64];
    mem.read_slice(&mut sb, GuestAddress(STATS)).unwrap();
    assert_eq!(GuestStats::from_bytes(&sb).allocated_pages, 2048);
    assert_eq!(h.stats().allocated_pages, 2048);
}

#[test]
fn touching_an_unowned_frame_gets_no_memory() {
    if !uffd_available() {
        return;
    }
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let (tx, rx) = mpsc::channel();
    let server = Server::builder().build().unwrap();
    let h = server.add_guest(config(mem, 32 << 20, Some(tx))).unwrap();
    let addr = h.region_host_addr() + 5 * 4096;
    // The toucher stays blocked (no memory is given); the test only waits for the verdict.
    std::thread::spawn(move || {
        // SAFETY: (test) address in the registered region; this thread is left blocked.
        unsafe { std::ptr::read_volatile(addr as *const u8) };
    });
    let msg = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("guest stopped");
    assert!(
        msg.contains(&format!("{:#x}", REGION_GPA + 5 * 4096)),
        "{msg}"
    );
    assert_eq!(h.stats().resident_pages, 0);
    assert!(h.fatal_error().is_some());
    std::mem::forget(h); // the blocked thread still references the region
}
