//! The guest↔host channel: info page, request ring, descriptors and extents.
//!
//! Every structure here is `repr(C)`, little-endian, and mirrored field by field in
//! `guest-driver-c/include/memout_abi.h`. zerocopy's derives prove each one has no padding and
//! accepts every bit pattern, so encoding and decoding are plain byte copies. Sizes and offsets are asserted at compile time below
//! and compared against the C header by the `abi_layout` test.
//!
//! The host never trusts the guest's copy of anything: it decodes a descriptor from bytes once
//! ([`Descriptor::decode`]), validates the copy, and writes results back with
//! [`Descriptor::encode_result`], which touches only the fields the host owns.

use core::mem::{offset_of, size_of};

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// ABI version spoken by this crate. A guest announces its own in `HELLO`.
pub const ABI_VERSION: u32 = 1;

/// Size of one guest frame.
pub const PAGE_SIZE: u64 = 4096;

/// Guest-physical address of the info page ([`InfoPage`]). The one fixed address of the ABI.
pub const INFO_PAGE_GPA: u64 = 0x5000;

/// `out` (32-bit) to this port: process the request ring (the value written is ignored).
pub const PORT_DOORBELL: u16 = 0x510;
/// `out` (32-bit) to this port: print the NUL-terminated string at this guest-physical address.
pub const PORT_DEBUG_STR: u16 = 0x511;
/// `out` (32-bit) to this port: the guest program ends with this exit code.
pub const PORT_EXIT: u16 = 0x512;

/// ivshmem transport (QEMU's `ivshmem-doorbell`): the peer id memout's ivshmem server takes
/// for itself; a guest rings memout by writing `HOST_PEER << 16 | VECTOR` to the doorbell.
pub const IVSHMEM_HOST_PEER: u16 = 0;
/// ivshmem transport: the one interrupt vector, used both ways (doorbells and answers).
pub const IVSHMEM_VECTOR: u16 = 0;

/// Magic of the info page: `"MEMOUTI\0"` read as a little-endian `u64`.
pub const INFO_MAGIC: u64 = u64::from_le_bytes(*b"MEMOUTI\0");
/// Magic of the ring header: `"MRNG"` read as a little-endian `u32`.
pub const RING_MAGIC: u32 = u32::from_le_bytes(*b"MRNG");

/// Feature bit: the host posts host→guest messages in the ring header (`quota_pages` and
/// `release_pages` changed; `host_msg_prod` counts the posts).
pub const FEATURE_HOST_MESSAGES: u32 = 1 << 0;
/// Feature bit: the exit-free fast path's area is at `InfoPage::fastpath_gpa` (see
/// [`crate::fastpath`]).
pub const FEATURE_FASTPATH: u32 = 1 << 1;

/// Written by the host at a fixed address before the guest starts; tells the guest where
/// everything is.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct InfoPage {
    /// [`INFO_MAGIC`].
    pub magic: u64,
    /// [`ABI_VERSION`] of the host.
    pub abi_version: u32,
    /// `FEATURE_*` bits the host offers.
    pub features: u32,
    /// Guest-physical address of the [`RingHeader`].
    pub ring_gpa: u64,
    /// Number of descriptor slots in the ring (a power of two).
    pub ring_slots: u32,
    /// Reserved, zero.
    pub reserved0: u32,
    /// Guest-physical base of the outsourced region (frames come from here).
    pub region_gpa: u64,
    /// Size of the outsourced region in bytes.
    pub region_size: u64,
    /// Quota in pages when the guest started.
    pub quota_pages: u64,
    /// Guest-physical address of the fast-path page, 0 if none (see [`FEATURE_FASTPATH`]).
    pub fastpath_gpa: u64,
    /// The address the host gives this info page in its view of guest memory. Every other
    /// `*_gpa` here is in the same view: [`INFO_PAGE_GPA`] in memout's own VMM; for a
    /// transport that maps the channel into the guest at an address only the guest knows (a
    /// PCI BAR), the guest finds a structure at `bar + (gpa - info_gpa)`.
    pub info_gpa: u64,
    /// A scratch area in the channel for extent lists and STATS replies (0 if none: the guest
    /// uses its own memory, as in memout's own VMM).
    pub scratch_gpa: u64,
    /// Size of the scratch area in bytes.
    pub scratch_size: u64,
    /// Reserved, zero.
    pub reserved: [u64; 5],
}

/// Header at the start of the ring; descriptors follow at `ring_gpa + size_of::<RingHeader>()`.
///
/// The guest owns `req_prod` and `host_msg_cons`; the host owns everything else.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct RingHeader {
    /// [`RING_MAGIC`].
    pub magic: u32,
    /// ABI version the host speaks.
    pub abi_version: u16,
    /// Number of slots (copy of `InfoPage::ring_slots`).
    pub slots: u16,
    /// Guest: free-running count of requests posted.
    pub req_prod: u32,
    /// Host: free-running count of requests consumed.
    pub req_cons: u32,
    /// Host: free-running count of responses written (equals `req_cons` after a doorbell).
    pub rsp_prod: u32,
    /// Host: ring-level status of the last doorbell ([`Status`] as `u32`).
    pub ring_status: u32,
    /// Host: free-running count of host→guest messages posted. The host bumps it after it
    /// changed `quota_pages` or `release_pages` outside a doorbell.
    pub host_msg_prod: u32,
    /// Guest: the `host_msg_prod` value the guest has handled.
    pub host_msg_cons: u32,
    /// Host: the guest's current quota (requested size) in pages.
    pub quota_pages: u64,
    /// Host: pages the host asks the guest to free now (0: none). A state, not a count of
    /// messages: the host lowers it as the guest frees.
    pub release_pages: u64,
    /// Reserved, zero.
    pub reserved: [u64; 2],
}

/// One request and, after the doorbell, its response. 64 bytes, one cache line.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct Descriptor {
    /// Guest: an [`Opcode`] as `u16`.
    pub opcode: u16,
    /// Guest: `ALLOC_*`/op flags.
    pub flags: u16,
    /// Guest: a cookie echoed untouched.
    pub tag: u32,
    /// Host: a [`Status`] as `u32`.
    pub status: u32,
    /// ALLOC: guest gives the capacity of the extent list, host writes how many it filled.
    /// FREE: guest gives the number of extents in the list.
    pub nr_extents: u32,
    /// ALLOC: guest gives pages wanted, host writes pages granted.
    /// FREE: host writes pages freed.
    pub pages: u64,
    /// Guest-physical address of an array of [`Extent`] (ALLOC, FREE).
    pub extents_gpa: u64,
    /// HELLO: guest ABI version. STATS: guest-physical address of a [`GuestStats`].
    pub arg0: u64,
    /// HELLO: host writes its ABI version. MAP_SEGMENT: host writes the segment's length.
    pub arg1: u64,
    /// Reserved, zero.
    pub reserved: [u64; 2],
}

/// A run of frames: `pages` frames starting at guest-physical address `gpa` (page-aligned).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct Extent {
    /// Guest-physical address of the first frame.
    pub gpa: u64,
    /// Number of frames.
    pub pages: u64,
}

/// What the host writes for `STATS`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct GuestStats {
    /// Current quota in pages.
    pub quota_pages: u64,
    /// Frames granted to the guest.
    pub allocated_pages: u64,
    /// Frames backed by host memory right now.
    pub resident_pages: u64,
    /// Page faults served.
    pub faults: u64,
    /// Pages freed by the guest so far.
    pub freed_pages: u64,
    /// Reserved, zero.
    pub reserved: [u64; 3],
}

/// ALLOC flag: a partial grant is acceptable (otherwise all or nothing).
pub const ALLOC_PARTIAL: u16 = 1 << 0;
/// ALLOC flag: the guest's fast path had no frame for this request (a hint: the host fills
/// the guest's magazines from then on; see [`crate::fastpath`]). Guests that never set it get
/// no frames granted ahead.
pub const ALLOC_FASTPATH_EMPTY: u16 = 1 << 1;

/// FREE flag: free page *reporting*. The guest keeps the frames (it may reuse them at any
/// time, and then reads zeroes); only their content and host memory go. Without it, FREE
/// gives the frames back to the host. Used by guests whose kernel owns all of its RAM (the
/// Linux module); memout's own VMM answers it with `Invalid` (it drops freed frames at once).
pub const FREE_REPORTED: u16 = 1 << 0;

/// Request opcodes.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opcode {
    /// Version handshake; must precede every other request.
    Hello = 1,
    /// Ask for frames.
    Alloc = 2,
    /// Give frames back.
    Free = 3,
    /// Read the guest's statistics.
    Stats = 4,
    /// Map a shared segment: the segment's name (`nr_extents` bytes, no NUL) at
    /// `extents_gpa`, the guest-physical address to map it at in `arg0` (2 MiB aligned,
    /// inside the guest's segment window); the host writes the segment's length in bytes to
    /// `arg1` and the pages it maps (a multiple of 512) to `pages`.
    MapSegment = 5,
    /// Unmap the shared segment mapped at `arg0`.
    UnmapSegment = 6,
}

impl Opcode {
    /// Decodes a raw opcode; `None` for anything unknown.
    pub fn from_raw(raw: u16) -> Option<Self> {
        Some(match raw {
            1 => Self::Hello,
            2 => Self::Alloc,
            3 => Self::Free,
            4 => Self::Stats,
            5 => Self::MapSegment,
            6 => Self::UnmapSegment,
            _ => return None,
        })
    }
}

/// Status codes written by the host.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// Unknown opcode.
    BadOpcode = 1,
    /// A field is out of range or reserved bits are set.
    Invalid = 2,
    /// A guest-physical pointer is outside the memory the host reads for the guest.
    BadPointer = 3,
    /// The request would exceed the guest's quota.
    Quota = 4,
    /// The region has no room (or not in the extents the guest can receive).
    NoMemory = 5,
    /// FREE of a frame the guest does not hold.
    NotOwned = 6,
    /// The guest's ABI version is not supported.
    Version = 7,
    /// Ring indices are inconsistent (ring-level, in `RingHeader::ring_status`).
    RingIndex = 8,
    /// A request arrived before `HELLO`.
    NoHello = 9,
    /// The host failed to carry out a valid request (its own error, reported per guest).
    HostError = 10,
    /// MAP_SEGMENT: no segment of that name (or it is being removed).
    NoSegment = 11,
    /// MAP_SEGMENT: the guest may not map that segment.
    Denied = 12,
    /// MAP_SEGMENT: the address range is in use by another segment; UNMAP_SEGMENT: no
    /// segment is mapped there.
    InUse = 13,
}

impl Status {
    /// A short, stable name for logs and tools.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::BadOpcode => "bad-opcode",
            Self::Invalid => "invalid",
            Self::BadPointer => "bad-pointer",
            Self::Quota => "quota",
            Self::NoMemory => "no-memory",
            Self::NotOwned => "not-owned",
            Self::Version => "version",
            Self::RingIndex => "ring-index",
            Self::NoHello => "no-hello",
            Self::HostError => "host-error",
            Self::NoSegment => "no-segment",
            Self::Denied => "denied",
            Self::InUse => "in-use",
        }
    }
}

// The wire is little-endian and the structures are read and written in native order through
// zerocopy, so a big-endian host must not compile this crate rather than misread every field.
#[cfg(not(target_endian = "little"))]
compile_error!("the memout ABI is little-endian; this crate encodes it in native byte order");

macro_rules! wire_bytes {
    ($($ty:ty),* $(,)?) => {$(
        impl $ty {
            /// Size of the encoded structure in bytes.
            pub const SIZE: usize = size_of::<$ty>();

            /// The structure's bytes as they travel on the wire (little-endian, no padding).
            pub fn to_bytes(&self) -> [u8; Self::SIZE] {
                zerocopy::transmute!(*self)
            }

            /// Reads the structure from its wire bytes. Every bit pattern is valid.
            pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
                zerocopy::transmute!(*b)
            }
        }
    )*};
}

wire_bytes!(InfoPage, RingHeader, Descriptor, Extent, GuestStats);

impl Descriptor {
    /// Decodes a descriptor the guest wrote (the host's private copy).
    pub fn decode(b: &[u8; Self::SIZE]) -> Self {
        Self::from_bytes(b)
    }

    /// Byte range of the host-owned result fields (`status`..=`pages`), and their encoding.
    /// The host writes only these back, so a guest cookie or pointer is never rewritten.
    pub fn encode_result(&self) -> (usize, [u8; 16]) {
        let full = self.to_bytes();
        let start = offset_of!(Descriptor, status);
        let mut out = [0u8; 16];
        out.copy_from_slice(&full[start..start + 16]);
        (start, out)
    }

    /// Byte range of `arg1` and its encoding (HELLO's and MAP_SEGMENT's reply).
    pub fn encode_arg1(&self) -> (usize, [u8; 8]) {
        (offset_of!(Descriptor, arg1), self.arg1.to_le_bytes())
    }
}

/// Offset of `req_prod` in [`RingHeader`] (the guest-owned producer index).
pub const RING_REQ_PROD_OFFSET: usize = offset_of!(RingHeader, req_prod);
/// Offset of `req_cons` in [`RingHeader`]; `req_cons`, `rsp_prod`, `ring_status` follow.
pub const RING_HOST_INDICES_OFFSET: usize = offset_of!(RingHeader, req_cons);
/// Offset of `quota_pages` in [`RingHeader`].
pub const RING_QUOTA_OFFSET: usize = offset_of!(RingHeader, quota_pages);
/// Offset of `release_pages` in [`RingHeader`].
pub const RING_RELEASE_OFFSET: usize = offset_of!(RingHeader, release_pages);
/// Offset of `host_msg_prod` in [`RingHeader`].
pub const RING_HOST_MSG_PROD_OFFSET: usize = offset_of!(RingHeader, host_msg_prod);
/// Offset of `host_msg_cons` in [`RingHeader`].
pub const RING_HOST_MSG_CONS_OFFSET: usize = offset_of!(RingHeader, host_msg_cons);

// Compile-time layout guards; the C header is checked against the same numbers by a test.
const _: () = {
    assert!(size_of::<InfoPage>() == 128);
    assert!(offset_of!(InfoPage, ring_gpa) == 16);
    assert!(offset_of!(InfoPage, region_gpa) == 32);
    assert!(offset_of!(InfoPage, fastpath_gpa) == 56);
    assert!(offset_of!(InfoPage, info_gpa) == 64);
    assert!(offset_of!(InfoPage, scratch_gpa) == 72);
    assert!(offset_of!(InfoPage, scratch_size) == 80);
    assert!(size_of::<RingHeader>() == 64);
    assert!(offset_of!(RingHeader, req_prod) == 8);
    assert!(offset_of!(RingHeader, quota_pages) == 32);
    assert!(offset_of!(RingHeader, release_pages) == 40);
    assert!(offset_of!(RingHeader, host_msg_prod) == 24);
    assert!(size_of::<Descriptor>() == 64);
    assert!(offset_of!(Descriptor, status) == 8);
    assert!(offset_of!(Descriptor, pages) == 16);
    assert!(offset_of!(Descriptor, extents_gpa) == 24);
    assert!(offset_of!(Descriptor, arg1) == 40);
    assert!(size_of::<Extent>() == 16);
    assert!(size_of::<GuestStats>() == 64);
};

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn descriptor_roundtrips(op in any::<u16>(), fl in any::<u16>(), tag in any::<u32>(),
                                 st in any::<u32>(), n in any::<u32>(), p in any::<u64>(),
                                 g in any::<u64>(), a0 in any::<u64>(), a1 in any::<u64>()) {
            let d = Descriptor { opcode: op, flags: fl, tag, status: st, nr_extents: n, pages: p,
                                 extents_gpa: g, arg0: a0, arg1: a1, reserved: [a0, a1] };
            prop_assert_eq!(Descriptor::decode(&d.to_bytes()), d);
        }
    }

    #[test]
    fn result_encoding_covers_only_host_fields() {
        let d = Descriptor {
            status: 6,
            nr_extents: 3,
            pages: 0x1122,
            ..Default::default()
        };
        let (off, bytes) = d.encode_result();
        assert_eq!(off, 8);
        assert_eq!(&bytes[0..4], &6u32.to_le_bytes());
        assert_eq!(&bytes[4..8], &3u32.to_le_bytes());
        assert_eq!(&bytes[8..16], &0x1122u64.to_le_bytes());
    }

    #[test]
    fn opcodes_decode() {
        assert_eq!(Opcode::from_raw(2), Some(Opcode::Alloc));
        assert_eq!(Opcode::from_raw(0), None);
        assert_eq!(Opcode::from_raw(0xffff), None);
    }

    #[test]
    fn magics_are_ascii() {
        assert_eq!(&INFO_MAGIC.to_le_bytes(), b"MEMOUTI\0");
        assert_eq!(&RING_MAGIC.to_le_bytes(), b"MRNG");
    }
}
