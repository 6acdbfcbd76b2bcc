//! A FREE whose host pages cannot be dropped (the madvise fails: injected through the same
//! path) is refused with HOST_ERROR; the guest keeps the frames with their content, none
//! returns to the free pool with stale data, and once the FREE goes through a later ALLOC of
//! the same frames reads zeroes. Also: a page the kernel holds where memout's map says there is
//! none is never handed out with its stale content.

use memout_protocol::ring::{PAGE_SIZE, Status};
use memout_server::ring_driver::{RingDriver, host_test_config};
use memout_server::{Eviction, Server};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const LIST: u64 = 0x8000;
const PAGES: u64 = 64;

fn word(base: usize, p: u64) -> *mut u64 {
    (base + (p * PAGE_SIZE) as usize + 8) as *mut u64
}

#[test]
fn a_failed_free_keeps_the_frames_and_a_later_alloc_reads_zeroes() {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let server = Server::builder().build().unwrap();
    let h = server
        .add_guest(host_test_config(
            "freeerr",
            16 << 20,
            16 << 20,
            Eviction::None,
            &mem,
        ))
        .expect("add_guest (needs userfaultfd with kernel faults: run as root)");
    let core = server.registry().find("freeerr").unwrap().core().clone();
    let mut ring = RingDriver::new(mem.clone(), 0x6000, 16);
    assert_eq!(ring.hello(&h).status, 0);
    let a = ring.alloc(&h, PAGES, LIST, 1);
    assert_eq!((a.status, a.pages), (0, PAGES));
    let base = h.region_host_addr();
    for p in 0..PAGES {
        // SAFETY: granted frames of the test guest.
        unsafe { word(base, p).write_volatile(0xdead_0000 + p) };
    }
    // The extent list at LIST still holds the grant: FREE it with the drop failing.
    core.inject_drop().arm(libc::EIO);
    let f = ring.free(&h, LIST, 1);
    assert_eq!(f.status, Status::HostError as u32, "{f:?}");
    let s = h.stats();
    assert_eq!((s.free_errors, s.allocated_pages), (1, PAGES), "{s:?}");
    assert_eq!(s.resident_pages, PAGES, "{s:?}");
    for p in 0..PAGES {
        // SAFETY: as above: the guest still holds them.
        assert_eq!(unsafe { word(base, p).read_volatile() }, 0xdead_0000 + p);
    }
    // The guest tries again; this time the pages go.
    assert_eq!(ring.free(&h, LIST, 1).status, 0);
    let s = h.stats();
    assert_eq!((s.allocated_pages, s.resident_pages), (0, 0), "{s:?}");
    let a = ring.alloc(&h, PAGES, LIST, 1);
    assert_eq!((a.status, a.pages), (0, PAGES));
    let mut e = [0u8; 16];
    mem.read_slice(&mut e, GuestAddress(LIST)).unwrap();
    let gpa = u64::from_le_bytes(e[..8].try_into().unwrap());
    assert_eq!(gpa, h.region_gpa(), "the same frames come back");
    for p in 0..PAGES {
        // SAFETY: granted again.
        let v = unsafe { word(base, p).read_volatile() };
        assert_eq!(v, 0, "page {p} is stale");
    }
    assert_eq!(h.fatal_error(), None);
}
