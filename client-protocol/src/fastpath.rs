//! The exit-free fast path: allocator state shared by guest and host, so single-page ALLOC and
//! FREE need no VM exit. Offered with [`FEATURE_FASTPATH`](crate::ring::FEATURE_FASTPATH); the
//! area is at [`InfoPage::fastpath_gpa`](crate::ring::InfoPage::fastpath_gpa).
//!
//! ```text
//! fastpath_gpa: FastPathHeader (64 B)
//! mags_gpa:     per vCPU: MagazineHeader (64 B) + mag_slots × u64 frame gpa    (host → guest)
//! stacks_gpa:   per vCPU: FreeStackHeader (64 B) + stack_slots × u64 frame gpa (guest ⇄ host)
//! ```
//!
//! Both structures are rings of frame addresses whose two indices share one 64-bit `state`
//! word, changed only by compare-and-swap of the whole word, so each side's step either
//! happens entirely or not at all whatever the other side does meanwhile.
//!
//! **Magazine** (frames the host granted ahead, zero-filled): `state` is `head` (low 32 bits,
//! the guest's pops) and `tail` (high 32 bits, the host's pushes). Entries `[head, tail)` (mod
//! `mag_slots`) are granted frames not yet handed out. The guest pops by reading the entry at
//! `head`, then swapping `(head, tail)` for `(head + 1, tail)`. The host pushes by writing
//! entries at `tail..`, then swapping in `(head, tail + k)`; it takes the cached frames back by
//! swapping in `(tail, tail)`. Indices only grow (mod 2^32), so a pop that read its entry
//! before a reclaim cannot succeed after the host has pushed again (no ABA).
//!
//! **Free stack** (frames the guest freed, still granted to it): `state` is `top` (low 32
//! bits, the guest's) and `taken` (high 32 bits, the host's); both are 31-bit indices (mod
//! 2^31), and bit 31 of `taken` is [`STACK_BUSY`]. The guest pushes a freed frame by writing
//! the entry at `top`, then swapping in `top + 1` (while `top - taken < slots`); it allocates
//! from here first by reading the entry at `top - 1`, then swapping in `top - 1` (while
//! `top != taken`): an alloc/free pair touches one cache line and no host code. A frame popped
//! here holds what the guest left in it. The host takes every entry in two swaps: first
//! `(top, taken | BUSY)` (while it is set the guest neither pushes nor pops here), then, once
//! it has read the entries `[taken, top)`, `(top, top)`; it drops those frames in a batch
//! (when the stack fills, when frames sat there a while, or when it reclaims memory). With
//! the guest kept off during the read, no entry changes under the host (no ABA).
//!
//! The host never trusts any of it: it keeps its own copy of what it pushed and of `taken`,
//! and checks every frame it takes back, so a guest scribbling over entries or indices can
//! only misuse frames it already holds (see `docs/design.md`, "Fast path").

use core::mem::{offset_of, size_of};

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Magic of the fast-path area: `"MFPA"` read as a little-endian `u32`.
pub const FASTPATH_MAGIC: u32 = u32::from_le_bytes(*b"MFPA");
/// Version of the fast-path layout.
pub const FASTPATH_VERSION: u32 = 1;
/// Entries per magazine (a power of two).
pub const MAG_SLOTS: u32 = 512;
/// Entries per free stack (a power of two).
pub const STACK_SLOTS: u32 = 512;
/// Bit of a free stack's `taken` set while the host reads the entries it is taking.
pub const STACK_BUSY: u32 = 1 << 31;
/// Free stack indices are this wide (mod 2^31).
pub const STACK_INDEX_MASK: u32 = STACK_BUSY - 1;

/// At `fastpath_gpa`: where the magazines and free stacks are.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct FastPathHeader {
    /// [`FASTPATH_MAGIC`].
    pub magic: u32,
    /// [`FASTPATH_VERSION`].
    pub version: u32,
    /// Number of magazines and of free stacks (one each per vCPU).
    pub nr_cpus: u32,
    /// Entries per magazine.
    pub mag_slots: u32,
    /// Entries per free stack.
    pub stack_slots: u32,
    /// Reserved, zero.
    pub reserved0: u32,
    /// Guest-physical address of magazine 0; magazine `i` is `i * magazine_size()` after it.
    pub mags_gpa: u64,
    /// Guest-physical address of free stack 0; stack `i` is `i * free_stack_size()` after it.
    pub stacks_gpa: u64,
    /// Reserved, zero.
    pub reserved: [u64; 3],
}

/// Heads a magazine; `mag_slots` frame addresses (`u64`) follow.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct MagazineHeader {
    /// `head | tail << 32`, changed only by compare-and-swap (see the module docs).
    pub state: u64,
    /// Host: pushes so far.
    pub refills: u64,
    /// Host: frames on their way into this magazine (granted, or about to be, and not yet
    /// pushed); 0 otherwise. They count against the quota already, so a guest refused at its
    /// quota while this is non-zero should wait for the push rather than give up.
    pub granting: u64,
    /// Reserved, zero.
    pub reserved: [u64; 5],
}

/// Heads a free stack; `stack_slots` frame addresses (`u64`) follow.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct FreeStackHeader {
    /// `top | taken << 32` (bit 63: [`STACK_BUSY`]), changed only by compare-and-swap (see
    /// the module docs).
    pub state: u64,
    /// Reserved, zero.
    pub reserved: [u64; 7],
}

/// Packs a magazine's `head` and `tail` into its state word.
pub const fn mag_state(head: u32, tail: u32) -> u64 {
    head as u64 | (tail as u64) << 32
}

/// The `head` (guest pops) of a magazine state word.
pub const fn mag_head(state: u64) -> u32 {
    state as u32
}

/// The `tail` (host pushes) of a magazine state word.
pub const fn mag_tail(state: u64) -> u32 {
    (state >> 32) as u32
}

/// Bytes of one magazine.
pub const fn magazine_size() -> u64 {
    size_of::<MagazineHeader>() as u64 + MAG_SLOTS as u64 * 8
}

/// Bytes of one free stack.
pub const fn free_stack_size() -> u64 {
    size_of::<FreeStackHeader>() as u64 + STACK_SLOTS as u64 * 8
}

/// Packs a free stack's `top` and `taken` into its state word.
pub const fn stack_state(top: u32, taken: u32) -> u64 {
    top as u64 | (taken as u64) << 32
}

/// The `top` (guest) of a free stack state word.
pub const fn stack_top(state: u64) -> u32 {
    state as u32
}

/// The `taken` (host) of a free stack state word.
pub const fn stack_taken(state: u64) -> u32 {
    (state >> 32) as u32
}

/// Bytes of a whole fast-path area for `nr_cpus` vCPUs.
pub const fn fastpath_size(nr_cpus: u32) -> u64 {
    size_of::<FastPathHeader>() as u64 + nr_cpus as u64 * (magazine_size() + free_stack_size())
}

/// Offset of `state` in [`MagazineHeader`].
pub const MAG_STATE_OFFSET: usize = offset_of!(MagazineHeader, state);
/// Offset of `refills` in [`MagazineHeader`].
pub const MAG_REFILLS_OFFSET: usize = offset_of!(MagazineHeader, refills);
/// Offset of `granting` in [`MagazineHeader`].
pub const MAG_GRANTING_OFFSET: usize = offset_of!(MagazineHeader, granting);
/// Offset of `state` in [`FreeStackHeader`].
pub const STACK_STATE_OFFSET: usize = offset_of!(FreeStackHeader, state);

impl FastPathHeader {
    /// Size of the encoded structure in bytes.
    pub const SIZE: usize = size_of::<Self>();

    /// The structure's wire bytes.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        zerocopy::transmute!(*self)
    }

    /// Reads the structure from its wire bytes. Every bit pattern is valid.
    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        zerocopy::transmute!(*b)
    }
}

const _: () = {
    assert!(size_of::<FastPathHeader>() == 64);
    assert!(offset_of!(FastPathHeader, mags_gpa) == 24);
    assert!(offset_of!(FastPathHeader, stacks_gpa) == 32);
    assert!(size_of::<MagazineHeader>() == 64);
    assert!(offset_of!(MagazineHeader, refills) == 8);
    assert!(offset_of!(MagazineHeader, granting) == 16);
    assert!(size_of::<FreeStackHeader>() == 64);
    assert!(MAG_SLOTS.is_power_of_two() && STACK_SLOTS.is_power_of_two());
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_words_pack_head_low_and_tail_high() {
        let s = mag_state(7, 0xffff_fff0);
        assert_eq!((mag_head(s), mag_tail(s)), (7, 0xffff_fff0));
        assert_eq!(mag_state(1, 2), 0x2_0000_0001);
        let s = stack_state(9, 3);
        assert_eq!((stack_top(s), stack_taken(s)), (9, 3));
    }

    #[test]
    fn one_cpu_fits_in_three_pages() {
        assert_eq!(fastpath_size(1), 64 + 4160 + 4160);
        assert!(fastpath_size(1) <= 3 * 4096);
    }

    #[test]
    fn magic_is_ascii() {
        assert_eq!(&FASTPATH_MAGIC.to_le_bytes(), b"MFPA");
    }
}
