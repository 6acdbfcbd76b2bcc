//! The boot region: guest-physical layout of the small, ordinary memslot that holds page
//! tables, GDT, the memout info page and ring, the guest image and its stack. Everything the
//! host reads or writes for the guest lives here; the outsourced region is separate.
//!
//! ```text
//! 0x0000_1000  PML4            0x0000_5000  memout info page (fixed by the ABI)
//! 0x0000_2000  PDPT            0x0000_6000  request ring (64 slots)
//! 0x0000_3000  GDT             0x0000_8000  fast-path area (one vCPU; up to 0x1_0000)
//!                              0x0001_0000  page directories (one per GiB mapped)
//! 0x0020_0000  guest image     0x00e0_0000 .. 0x0100_0000  stack (grows down)
//! ```

/// Size of the boot region.
pub const BOOT_SIZE: u64 = 16 << 20;
/// PML4 table.
pub const PML4: u64 = 0x1000;
/// The single PDPT (covers 512 GiB).
pub const PDPT: u64 = 0x2000;
/// GDT.
pub const GDT: u64 = 0x3000;
/// Ring.
pub const RING: u64 = 0x6000;
/// Ring slots.
pub const RING_SLOTS: u32 = 64;
/// The exit-free fast path's area (magazine and free stack of the one vCPU).
pub const FASTPATH: u64 = 0x8000;
/// First page directory.
pub const PD_BASE: u64 = 0x1_0000;
/// Page directories fit below here (240 of them: 240 GiB of guest-physical space).
pub const PD_LIMIT: u64 = 0x10_0000;
/// Where images load.
pub const IMAGE_BASE: u64 = 0x20_0000;
/// Images (with bss) end below here.
pub const IMAGE_LIMIT: u64 = 0xe0_0000;
/// Initial stack pointer.
pub const STACK_TOP: u64 = BOOT_SIZE;
/// Guest-physical base of the outsourced region.
pub const REGION_GPA: u64 = 4 << 30;
/// Where a guest may map shared segments (a 1 GiB window below the region; mapped in the
/// page tables, backed only where a segment is mapped).
pub const SEGMENT_GPA: u64 = 2 << 30;
/// Size of the segment window.
pub const SEGMENT_WINDOW: u64 = 1 << 30;
/// Highest guest-physical address the page tables can map.
pub const MAX_GPA: u64 = ((PD_LIMIT - PD_BASE) / 0x1000) << 30;
