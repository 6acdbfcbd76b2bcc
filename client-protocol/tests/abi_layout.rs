//! Compiles `guest-driver-c/include/memout_abi.h` with gcc and checks that every size, field
//! offset and constant the C side sees equals the Rust definition in `memout_protocol::ring`.

use memout_protocol::fastpath::*;
use memout_protocol::ring::*;
use std::mem::{offset_of, size_of};
use std::path::PathBuf;

/// (C expression, Rust value) pairs; the C program prints each expression's value.
fn expectations() -> Vec<(&'static str, u64)> {
    macro_rules! off {
        ($c:literal, $r:ty, $f:ident) => {
            (
                concat!("offsetof(struct ", $c, ", ", stringify!($f), ")"),
                offset_of!($r, $f) as u64,
            )
        };
    }
    vec![
        ("sizeof(struct memout_info)", size_of::<InfoPage>() as u64),
        off!("memout_info", InfoPage, magic),
        off!("memout_info", InfoPage, abi_version),
        off!("memout_info", InfoPage, features),
        off!("memout_info", InfoPage, ring_gpa),
        off!("memout_info", InfoPage, ring_slots),
        off!("memout_info", InfoPage, reserved0),
        off!("memout_info", InfoPage, region_gpa),
        off!("memout_info", InfoPage, region_size),
        off!("memout_info", InfoPage, quota_pages),
        off!("memout_info", InfoPage, fastpath_gpa),
        off!("memout_info", InfoPage, info_gpa),
        off!("memout_info", InfoPage, scratch_gpa),
        off!("memout_info", InfoPage, scratch_size),
        off!("memout_info", InfoPage, reserved),
        (
            "sizeof(struct memout_ring_header)",
            size_of::<RingHeader>() as u64,
        ),
        off!("memout_ring_header", RingHeader, magic),
        off!("memout_ring_header", RingHeader, abi_version),
        off!("memout_ring_header", RingHeader, slots),
        off!("memout_ring_header", RingHeader, req_prod),
        off!("memout_ring_header", RingHeader, req_cons),
        off!("memout_ring_header", RingHeader, rsp_prod),
        off!("memout_ring_header", RingHeader, ring_status),
        off!("memout_ring_header", RingHeader, host_msg_prod),
        off!("memout_ring_header", RingHeader, host_msg_cons),
        off!("memout_ring_header", RingHeader, quota_pages),
        off!("memout_ring_header", RingHeader, release_pages),
        off!("memout_ring_header", RingHeader, reserved),
        ("sizeof(struct memout_desc)", size_of::<Descriptor>() as u64),
        off!("memout_desc", Descriptor, opcode),
        off!("memout_desc", Descriptor, flags),
        off!("memout_desc", Descriptor, tag),
        off!("memout_desc", Descriptor, status),
        off!("memout_desc", Descriptor, nr_extents),
        off!("memout_desc", Descriptor, pages),
        off!("memout_desc", Descriptor, extents_gpa),
        off!("memout_desc", Descriptor, arg0),
        off!("memout_desc", Descriptor, arg1),
        off!("memout_desc", Descriptor, reserved),
        ("sizeof(struct memout_extent)", size_of::<Extent>() as u64),
        off!("memout_extent", Extent, gpa),
        off!("memout_extent", Extent, pages),
        (
            "sizeof(struct memout_stats)",
            size_of::<GuestStats>() as u64,
        ),
        off!("memout_stats", GuestStats, quota_pages),
        off!("memout_stats", GuestStats, allocated_pages),
        off!("memout_stats", GuestStats, resident_pages),
        off!("memout_stats", GuestStats, faults),
        off!("memout_stats", GuestStats, freed_pages),
        off!("memout_stats", GuestStats, reserved),
        ("MEMOUT_ABI_VERSION", ABI_VERSION as u64),
        ("MEMOUT_PAGE_SIZE", PAGE_SIZE),
        ("MEMOUT_INFO_PAGE_GPA", INFO_PAGE_GPA),
        ("MEMOUT_PORT_DOORBELL", PORT_DOORBELL as u64),
        ("MEMOUT_PORT_DEBUG_STR", PORT_DEBUG_STR as u64),
        ("MEMOUT_PORT_EXIT", PORT_EXIT as u64),
        ("MEMOUT_INFO_MAGIC", INFO_MAGIC),
        ("MEMOUT_RING_MAGIC", RING_MAGIC as u64),
        ("MEMOUT_FEATURE_HOST_MESSAGES", FEATURE_HOST_MESSAGES as u64),
        ("MEMOUT_FEATURE_FASTPATH", FEATURE_FASTPATH as u64),
        ("MEMOUT_ALLOC_PARTIAL", ALLOC_PARTIAL as u64),
        ("MEMOUT_ALLOC_FASTPATH_EMPTY", ALLOC_FASTPATH_EMPTY as u64),
        ("MEMOUT_FREE_REPORTED", FREE_REPORTED as u64),
        ("MEMOUT_IVSHMEM_HOST_PEER", IVSHMEM_HOST_PEER as u64),
        ("MEMOUT_IVSHMEM_VECTOR", IVSHMEM_VECTOR as u64),
        ("MEMOUT_OP_HELLO", Opcode::Hello as u64),
        ("MEMOUT_OP_ALLOC", Opcode::Alloc as u64),
        ("MEMOUT_OP_FREE", Opcode::Free as u64),
        ("MEMOUT_OP_STATS", Opcode::Stats as u64),
        ("MEMOUT_OP_MAP_SEGMENT", Opcode::MapSegment as u64),
        ("MEMOUT_OP_UNMAP_SEGMENT", Opcode::UnmapSegment as u64),
        ("MEMOUT_OK", Status::Ok as u64),
        ("MEMOUT_E_BAD_OPCODE", Status::BadOpcode as u64),
        ("MEMOUT_E_INVALID", Status::Invalid as u64),
        ("MEMOUT_E_BAD_POINTER", Status::BadPointer as u64),
        ("MEMOUT_E_QUOTA", Status::Quota as u64),
        ("MEMOUT_E_NO_MEMORY", Status::NoMemory as u64),
        ("MEMOUT_E_NOT_OWNED", Status::NotOwned as u64),
        ("MEMOUT_E_VERSION", Status::Version as u64),
        ("MEMOUT_E_RING_INDEX", Status::RingIndex as u64),
        ("MEMOUT_E_NO_HELLO", Status::NoHello as u64),
        ("MEMOUT_E_HOST_ERROR", Status::HostError as u64),
        ("MEMOUT_E_NO_SEGMENT", Status::NoSegment as u64),
        ("MEMOUT_E_DENIED", Status::Denied as u64),
        ("MEMOUT_E_IN_USE", Status::InUse as u64),
        (
            "sizeof(struct memout_fastpath)",
            size_of::<FastPathHeader>() as u64,
        ),
        off!("memout_fastpath", FastPathHeader, magic),
        off!("memout_fastpath", FastPathHeader, version),
        off!("memout_fastpath", FastPathHeader, nr_cpus),
        off!("memout_fastpath", FastPathHeader, mag_slots),
        off!("memout_fastpath", FastPathHeader, stack_slots),
        off!("memout_fastpath", FastPathHeader, reserved0),
        off!("memout_fastpath", FastPathHeader, mags_gpa),
        off!("memout_fastpath", FastPathHeader, stacks_gpa),
        off!("memout_fastpath", FastPathHeader, reserved),
        (
            "sizeof(struct memout_magazine)",
            size_of::<MagazineHeader>() as u64,
        ),
        off!("memout_magazine", MagazineHeader, state),
        off!("memout_magazine", MagazineHeader, refills),
        off!("memout_magazine", MagazineHeader, granting),
        off!("memout_magazine", MagazineHeader, reserved),
        (
            "sizeof(struct memout_free_stack)",
            size_of::<FreeStackHeader>() as u64,
        ),
        off!("memout_free_stack", FreeStackHeader, state),
        off!("memout_free_stack", FreeStackHeader, reserved),
        ("MEMOUT_FASTPATH_MAGIC", FASTPATH_MAGIC as u64),
        ("MEMOUT_FASTPATH_VERSION", FASTPATH_VERSION as u64),
        ("MEMOUT_MAG_SLOTS", MAG_SLOTS as u64),
        ("MEMOUT_STACK_SLOTS", STACK_SLOTS as u64),
        ("MEMOUT_STACK_BUSY", STACK_BUSY as u64),
        ("MEMOUT_STACK_INDEX_MASK", STACK_INDEX_MASK as u64),
    ]
}

#[test]
fn c_header_matches_rust_layout() {
    let include = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../guest-driver-c/include");
    memout_test_support::assert_c_header_matches(&include, "memout_abi.h", &expectations());
}
