//! Driving a guest from the host, as the C driver would from inside the guest: its request
//! ring ([`RingDriver`]), or its ALLOC and FREE directly from several threads at once
//! ([`alloc`], [`free`]). For tests and probes that exercise a server without a VM; only with
//! the `test-util` feature.

use crate::config::{ChannelConfig, GuestConfig, RegionMemory};
use crate::extents::Run;
use crate::guest::{Eviction, GuestCore};
use crate::handle::GuestHandle;
use crate::populate::PopulatePolicy;
use memout_protocol::ring::{
    ABI_VERSION, Descriptor, Extent, Opcode, RING_REQ_PROD_OFFSET, RingHeader, Status,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// ALLOC of `pages` frames in at most `max_extents` extents, as the ring's ALLOC does (from
/// any thread, without a ring).
pub fn alloc(
    core: &GuestCore,
    pages: u64,
    max_extents: usize,
    partial: bool,
) -> Result<Vec<Extent>, Status> {
    core.alloc(pages, max_extents, partial)
}

/// FREE of `runs`, as the ring's FREE does (from any thread, without a ring).
pub fn free(core: &GuestCore, runs: &[Run]) -> Result<u64, Status> {
    core.free(runs)
}

/// The frames an extent names, if it lies in the guest's region.
pub fn run_of(core: &GuestCore, e: &Extent) -> Option<Run> {
    core.run_of(e)
}

/// Where [`host_test_config`] puts the ring.
pub const TEST_RING_GPA: u64 = 0x6000;
/// Ring slots of [`host_test_config`].
pub const TEST_RING_SLOTS: u32 = 16;
/// Guest-physical base of the region of [`host_test_config`] (4 GiB).
pub const TEST_REGION_GPA: u64 = 1 << 32;

/// A guest configuration for driving a guest from host threads: the region at
/// [`TEST_REGION_GPA`], the ring at [`TEST_RING_GPA`] in `shared`, the default policy, no
/// budget, no pinned minimum and no fatal notifier. Adjust fields with struct update syntax.
pub fn host_test_config(
    name: &str,
    region_size: u64,
    quota_bytes: u64,
    eviction: Eviction,
    shared: &GuestMemoryMmap,
) -> GuestConfig {
    GuestConfig {
        name: name.into(),
        region_gpa: TEST_REGION_GPA,
        region_size,
        quota_bytes,
        policy: PopulatePolicy::default(),
        memory: RegionMemory::allocate(),
        eviction,
        resident_budget_bytes: None,
        min_bytes: 0,
        channel: ChannelConfig {
            ring_gpa: TEST_RING_GPA,
            ring_slots: TEST_RING_SLOTS,
            fastpath: None,
        },
        shared: shared.clone(),
        on_fatal: None,
        mergeable: false,
        segments: None,
    }
}

/// Posts descriptors into a ring in `mem` and rings the handle's doorbell.
pub struct RingDriver {
    mem: GuestMemoryMmap,
    ring_gpa: u64,
    slots: u32,
    prod: u32,
}

impl RingDriver {
    /// A driver for the ring of `slots` slots at `ring_gpa` in `mem`.
    pub fn new(mem: GuestMemoryMmap, ring_gpa: u64, slots: u32) -> Self {
        Self {
            mem,
            ring_gpa,
            slots,
            prod: 0,
        }
    }

    /// Posts one descriptor, rings the doorbell and returns the slot as the host left it.
    ///
    /// # Panics
    /// If the ring is not in `mem` (a test set-up error).
    pub fn submit(&mut self, h: &GuestHandle, d: Descriptor) -> Descriptor {
        let slot = self.ring_gpa
            + RingHeader::SIZE as u64
            + (self.prod % self.slots) as u64 * Descriptor::SIZE as u64;
        self.mem
            .write_slice(&d.to_bytes(), GuestAddress(slot))
            .expect("ring in memory");
        self.prod = self.prod.wrapping_add(1);
        let prod_gpa = self.ring_gpa + RING_REQ_PROD_OFFSET as u64;
        self.mem
            .write_slice(&self.prod.to_le_bytes(), GuestAddress(prod_gpa))
            .expect("ring in memory");
        h.on_doorbell();
        let mut b = [0u8; Descriptor::SIZE];
        self.mem
            .read_slice(&mut b, GuestAddress(slot))
            .expect("ring in memory");
        Descriptor::decode(&b)
    }

    /// HELLO with this crate's ABI version.
    pub fn hello(&mut self, h: &GuestHandle) -> Descriptor {
        self.submit(
            h,
            Descriptor {
                opcode: Opcode::Hello as u16,
                arg0: ABI_VERSION as u64,
                ..Default::default()
            },
        )
    }

    /// ALLOC of `pages` into an extent list of `capacity` at `list_gpa`.
    pub fn alloc(
        &mut self,
        h: &GuestHandle,
        pages: u64,
        list_gpa: u64,
        capacity: u32,
    ) -> Descriptor {
        self.submit(
            h,
            Descriptor {
                opcode: Opcode::Alloc as u16,
                pages,
                nr_extents: capacity,
                extents_gpa: list_gpa,
                ..Default::default()
            },
        )
    }

    /// FREE of the `count` extents listed at `list_gpa`.
    pub fn free(&mut self, h: &GuestHandle, list_gpa: u64, count: u32) -> Descriptor {
        self.submit(
            h,
            Descriptor {
                opcode: Opcode::Free as u16,
                nr_extents: count,
                extents_gpa: list_gpa,
                ..Default::default()
            },
        )
    }
}
