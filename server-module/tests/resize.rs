//! Resizing a guest with host threads in place of a vCPU (real userfaultfd, real store): grow
//! tells the guest at once; a shrink is met by the guest's release, by eviction after the
//! deadline, or ends incomplete without a store; a newer resize supersedes an older one; the
//! guest's data survives all of it.

use memout_protocol::ring::*;
use memout_server::ring_driver::{RingDriver, TEST_RING_GPA as RING, host_test_config};
use memout_server::{Eviction, FileStore, GuestHandle, ResizeOptions, Server};
use memout_server::{ResizeStage, Shortfall};
use std::sync::Arc;
use std::time::Duration;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const LIST: u64 = 0x8000;
const MIB: u64 = 1 << 20;
const PAGES: u64 = 8192; // 32 MiB

fn guest(server: &Server, mem: &GuestMemoryMmap, store: bool) -> Option<GuestHandle> {
    let eviction = if store {
        Eviction::Store(Arc::new(
            FileStore::create(&std::env::temp_dir(), "resize", 64 * MIB).unwrap(),
        ))
    } else {
        Eviction::None
    };
    if !memout_test_support::require(memout_test_support::Piece::Uffd, "resize") {
        return None;
    }
    Some(
        server
            .add_guest(host_test_config("r", 64 * MIB, 32 * MIB, eviction, mem))
            .expect("add_guest"),
    )
}

fn page(h: &GuestHandle, p: u64) -> *mut u64 {
    (h.region_host_addr() + (p * PAGE_SIZE) as usize) as *mut u64
}

/// Fills every page with its number (the first word), through the host mapping.
fn fill(h: &GuestHandle) {
    for p in 0..PAGES {
        // SAFETY: page p lies in the region, in frames granted to the guest.
        unsafe { page(h, p).write_volatile(p ^ 0xabcd) };
    }
}

/// Pages whose first word is wrong, reading `pages` of them.
fn bad_pages(h: &GuestHandle, pages: u64) -> u64 {
    (0..pages)
        // SAFETY: as in `fill`.
        .filter(|&p| unsafe { page(h, p).read_volatile() } != p ^ 0xabcd)
        .count() as u64
}

fn header(mem: &GuestMemoryMmap) -> RingHeader {
    let mut b = [0u8; RingHeader::SIZE];
    mem.read_slice(&mut b, GuestAddress(RING)).unwrap();
    RingHeader::from_bytes(&b)
}

fn setup(store: bool) -> Option<(Server, GuestMemoryMmap, GuestHandle, RingDriver)> {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let server = Server::builder().build().unwrap();
    let h = guest(&server, &mem, store)?;
    let mut ring = RingDriver::new(mem.clone(), RING, 16);
    assert_eq!(ring.hello(&h).status, 0);
    let a = ring.alloc(&h, PAGES, LIST, 1);
    assert_eq!((a.status, a.pages), (0, PAGES));
    fill(&h);
    Some((server, mem, h, ring))
}

fn opts(ms: u64) -> ResizeOptions {
    ResizeOptions {
        release_deadline: Duration::from_millis(ms),
    }
}

#[test]
fn grow_is_posted_to_the_guest_at_once() {
    let Some((_s, mem, h, _ring)) = setup(false) else {
        return;
    };
    let before = header(&mem);
    let p = h.resize(48 * MIB, opts(100)).unwrap();
    assert_eq!(p.stage, ResizeStage::Done);
    let after = header(&mem);
    assert_eq!(after.host_msg_prod, before.host_msg_prod.wrapping_add(1));
    assert_eq!(after.quota_pages, 48 * MIB / PAGE_SIZE);
    assert_eq!(after.release_pages, 0);
    assert_eq!(h.stats().quota_pages, 48 * MIB / PAGE_SIZE);
}

#[test]
fn shrink_met_by_the_guest_releasing() {
    let Some((_s, mem, h, mut ring)) = setup(false) else {
        return;
    };
    let first = h.resize(8 * MIB, opts(5_000)).unwrap();
    assert_eq!(first.stage, ResizeStage::Releasing);
    let hd = header(&mem);
    assert_eq!(
        hd.release_pages,
        PAGES - 2048,
        "the guest is asked for the excess"
    );
    // The "guest" frees the top 24 MiB, as the C driver's release callback would.
    let ext = Extent {
        gpa: (1 << 32) + 2048 * PAGE_SIZE,
        pages: PAGES - 2048,
    };
    mem.write_slice(&ext.to_bytes(), GuestAddress(LIST))
        .unwrap();
    let d = ring.submit(
        &h,
        Descriptor {
            opcode: Opcode::Free as u16,
            nr_extents: 1,
            extents_gpa: LIST,
            ..Default::default()
        },
    );
    assert_eq!(d.status, 0);
    assert_eq!(header(&mem).release_pages, 0, "refreshed on the doorbell");
    let end = h.wait_resize(first.id, Duration::from_secs(10)).unwrap();
    assert_eq!(end.stage, ResizeStage::Done, "{end:?}");
    assert_eq!(end.released_pages * PAGE_SIZE, 24 * MIB);
    assert_eq!(end.evicted_pages, 0);
    assert!(
        end.elapsed < Duration::from_secs(5),
        "ended before the deadline"
    );
    assert_eq!(bad_pages(&h, 2048), 0);
}

#[test]
fn shrink_of_an_ignoring_guest_evicts_and_keeps_its_data() {
    let Some((_s, _mem, h, _ring)) = setup(true) else {
        return;
    };
    let first = h.resize(8 * MIB, opts(50)).unwrap();
    let end = h.wait_resize(first.id, Duration::from_secs(30)).unwrap();
    assert_eq!(end.stage, ResizeStage::Done, "{end:?}");
    assert_eq!(end.released_pages, 0);
    assert!(end.evicted_pages * PAGE_SIZE >= 24 * MIB, "{end:?}");
    assert!(end.resident_pages * PAGE_SIZE <= 8 * MIB);
    let rss = memout_server::procfs::mapping_rss(h.region_host_addr()).unwrap();
    assert!(rss <= 8 * MIB, "host RSS {rss} above the target");
    // Every page comes back intact, and the target stays a cap while the guest runs.
    assert_eq!(bad_pages(&h, PAGES), 0);
    let resident = h.stats().resident_pages * PAGE_SIZE;
    assert!(
        resident <= 8 * MIB + 2 * MIB,
        "resident {resident} after touching all"
    );
    // Growing again lifts the cap to the new size.
    let g = h.resize(32 * MIB, opts(50)).unwrap();
    assert_eq!(g.stage, ResizeStage::Done);
    assert_eq!(bad_pages(&h, PAGES), 0);
    assert!(h.stats().resident_pages * PAGE_SIZE > 16 * MIB);
}

#[test]
fn shrink_without_a_store_ends_incomplete_and_loses_nothing() {
    let Some((_s, _mem, h, _ring)) = setup(false) else {
        return;
    };
    let first = h.resize(8 * MIB, opts(20)).unwrap();
    let end = h.wait_resize(first.id, Duration::from_secs(10)).unwrap();
    assert_eq!(end.stage, ResizeStage::Incomplete);
    assert!(
        matches!(end.shortfall, Some(Shortfall::NoBackingStore { pages }) if pages > 0),
        "{end:?}"
    );
    assert_eq!(bad_pages(&h, PAGES), 0);
    // The guest may not allocate above its new size.
    assert_eq!(h.stats().quota_pages, 2048);
}

#[test]
fn a_newer_resize_supersedes_an_older_one() {
    let Some((_s, _mem, h, _ring)) = setup(true) else {
        return;
    };
    let old = h.resize(8 * MIB, opts(10_000)).unwrap();
    let new = h.resize(32 * MIB, opts(10)).unwrap();
    assert_eq!(new.stage, ResizeStage::Done);
    let end = h.wait_resize(old.id, Duration::from_secs(5));
    // The progress reported is the newest resize's; the old one ended superseded, having
    // evicted nothing.
    assert_eq!(end.unwrap().id, new.id);
    assert_eq!(h.stats().evictions_pages, 0);
    assert_eq!(bad_pages(&h, PAGES), 0);
}

#[test]
fn refused_sizes_change_nothing() {
    let Some((_s, _mem, h, _ring)) = setup(false) else {
        return;
    };
    for bytes in [0, 4097, 65 * MIB, u64::MAX] {
        assert!(h.resize(bytes, opts(10)).is_err(), "{bytes}");
    }
    assert_eq!(h.stats().quota_pages, PAGES);
    assert!(h.resize_progress().is_none());
}
