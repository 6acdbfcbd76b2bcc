//! The host side of the request ring: on a doorbell, read each new descriptor once into a
//! private copy, validate it, carry it out, and write back only the host-owned result fields.
//!
//! The guest controls every byte it can write, so everything read here is untrusted: ring
//! indices, opcodes, flags, counts, extents and pointers. Pointers must land in the guest's
//! shared memory (the boot region the VMM handed the server); the host never reads or writes
//! the outsourced region on a guest's behalf, so a request can never make a host thread block
//! on the guest's own userfaultfd.

use crate::ring_backend::RingBackend;
use memout_protocol::ring::{
    ABI_VERSION, ALLOC_FASTPATH_EMPTY, ALLOC_PARTIAL, Descriptor, Extent, FREE_REPORTED,
    GuestStats, Opcode, PAGE_SIZE, RING_HOST_INDICES_OFFSET, RING_REQ_PROD_OFFSET, RingHeader,
    Status,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use zerocopy::IntoBytes;

/// Most extents one ALLOC or FREE may carry (64 KiB of extent list).
pub const MAX_EXTENTS_PER_REQUEST: u32 = 4096;

/// Where the ring is, and the host's own consumer index (never read back from the guest).
#[derive(Debug)]
pub struct RingCursor {
    ring_gpa: u64,
    slots: u32,
    cons: u32,
}

impl RingCursor {
    /// A cursor for a ring of `slots` descriptors at `ring_gpa`.
    pub fn new(ring_gpa: u64, slots: u32) -> Self {
        Self {
            ring_gpa,
            slots,
            cons: 0,
        }
    }

    fn slot_gpa(&self, index: u32) -> u64 {
        self.ring_gpa
            + RingHeader::SIZE as u64
            + (index % self.slots) as u64 * Descriptor::SIZE as u64
    }
}

/// What one doorbell did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DoorbellOutcome {
    /// Requests processed.
    pub processed: u32,
    /// Ring-level status written to the header.
    pub ring_status: Status,
}

/// Processes every request posted since the last doorbell.
pub(crate) fn process_doorbell<B: RingBackend>(
    core: &B,
    mem: &GuestMemoryMmap,
    cur: &mut RingCursor,
) -> DoorbellOutcome {
    core.doorbell();
    let mut prod_bytes = [0u8; 4];
    if mem
        .read_slice(
            &mut prod_bytes,
            GuestAddress(cur.ring_gpa + RING_REQ_PROD_OFFSET as u64),
        )
        .is_err()
    {
        return DoorbellOutcome {
            processed: 0,
            ring_status: Status::BadPointer,
        };
    }
    let prod = u32::from_le_bytes(prod_bytes);
    let pending = prod.wrapping_sub(cur.cons);
    let ring_status = if pending > cur.slots {
        Status::RingIndex
    } else {
        Status::Ok
    };
    let mut processed = 0;
    if ring_status == Status::Ok {
        while cur.cons != prod {
            let gpa = cur.slot_gpa(cur.cons);
            let mut raw = [0u8; Descriptor::SIZE];
            // In range by construction: the ring lies in shared memory (checked at setup).
            if mem.read_slice(&mut raw, GuestAddress(gpa)).is_ok() {
                let mut d = Descriptor::decode(&raw);
                handle(core, mem, &mut d);
                core.request(d.status != Status::Ok as u32);
                let (off, bytes) = d.encode_result();
                let _ = mem.write_slice(&bytes, GuestAddress(gpa + off as u64));
                if d.opcode == Opcode::Hello as u16 || d.opcode == Opcode::MapSegment as u16 {
                    let (off, bytes) = d.encode_arg1();
                    let _ = mem.write_slice(&bytes, GuestAddress(gpa + off as u64));
                }
            }
            cur.cons = cur.cons.wrapping_add(1);
            processed += 1;
        }
    } else {
        if let Some(suppressed) = core.log_limit().allow() {
            tracing::warn!(parent: core.span(), prod, cons = cur.cons, suppressed, "ring index out of range");
        }
    }
    let mut idx = [0u8; 12];
    idx[0..4].copy_from_slice(&cur.cons.to_le_bytes());
    idx[4..8].copy_from_slice(&cur.cons.to_le_bytes());
    idx[8..12].copy_from_slice(&(ring_status as u32).to_le_bytes());
    let _ = mem.write_slice(
        &idx,
        GuestAddress(cur.ring_gpa + RING_HOST_INDICES_OFFSET as u64),
    );
    core.refresh_limits();
    DoorbellOutcome {
        processed,
        ring_status,
    }
}

fn handle<B: RingBackend>(core: &B, mem: &GuestMemoryMmap, d: &mut Descriptor) {
    let result = match Opcode::from_raw(d.opcode) {
        None => Err(Status::BadOpcode),
        Some(Opcode::Hello) => hello(core, d),
        Some(_) if !core.hello_done() => Err(Status::NoHello),
        Some(Opcode::Alloc) => alloc(core, mem, d),
        Some(Opcode::Free) => free(core, mem, d),
        Some(Opcode::Stats) => stats(core, mem, d),
        Some(Opcode::MapSegment) => map_segment(core, mem, d),
        Some(Opcode::UnmapSegment) => {
            if d.flags != 0 {
                Err(Status::Invalid)
            } else {
                core.unmap_segment(d.arg0)
            }
        }
    };
    d.status = match result {
        Ok(()) => Status::Ok as u32,
        Err(s) => {
            if s != Status::Quota
                && let Some(suppressed) = core.log_limit().allow()
            {
                tracing::debug!(parent: core.span(), opcode = d.opcode, status = s.name(), suppressed, "request refused");
            }
            s as u32
        }
    };
}

fn hello<B: RingBackend>(core: &B, d: &mut Descriptor) -> Result<(), Status> {
    d.arg1 = ABI_VERSION as u64;
    if d.flags != 0 {
        return Err(Status::Invalid);
    }
    if d.arg0 != ABI_VERSION as u64 {
        return Err(Status::Version);
    }
    core.set_hello();
    Ok(())
}

fn map_segment<B: RingBackend>(
    core: &B,
    mem: &GuestMemoryMmap,
    d: &mut Descriptor,
) -> Result<(), Status> {
    d.pages = 0;
    d.arg1 = 0;
    let len = d.nr_extents as usize;
    if d.flags != 0 || len == 0 || len > crate::segment::store::MAX_NAME {
        return Err(Status::Invalid);
    }
    in_shared(mem, d.extents_gpa, len as u64)?;
    let mut name = vec![0u8; len];
    mem.read_slice(&mut name, GuestAddress(d.extents_gpa))
        .map_err(|_| Status::BadPointer)?;
    let name = std::str::from_utf8(&name).map_err(|_| Status::Invalid)?;
    let (bytes, size) = core.map_segment(name, d.arg0)?;
    d.arg1 = bytes;
    d.pages = size / PAGE_SIZE;
    Ok(())
}

/// Checks that `[gpa, gpa + len)` lies in the guest's shared memory.
fn in_shared(mem: &GuestMemoryMmap, gpa: u64, len: u64) -> Result<(), Status> {
    let end = gpa.checked_add(len).ok_or(Status::BadPointer)?;
    if len == 0 || !mem.check_range(GuestAddress(gpa), len as usize) || end < gpa {
        return Err(Status::BadPointer);
    }
    Ok(())
}

fn extent_list_len(d: &Descriptor) -> Result<u64, Status> {
    if d.nr_extents == 0 || d.nr_extents > MAX_EXTENTS_PER_REQUEST {
        return Err(Status::Invalid);
    }
    Ok(d.nr_extents as u64 * Extent::SIZE as u64)
}

fn alloc<B: RingBackend>(
    core: &B,
    mem: &GuestMemoryMmap,
    d: &mut Descriptor,
) -> Result<(), Status> {
    let (want, cap) = (d.pages, d.nr_extents);
    d.pages = 0;
    d.nr_extents = 0;
    if d.flags & !(ALLOC_PARTIAL | ALLOC_FASTPATH_EMPTY) != 0 || want == 0 {
        return Err(Status::Invalid);
    }
    let r = alloc_into(core, mem, d, want, cap);
    // After this request's own grant: the refill it asks for gets what is left.
    if d.flags & ALLOC_FASTPATH_EMPTY != 0 {
        core.fastpath_empty();
    }
    r
}

fn alloc_into<B: RingBackend>(
    core: &B,
    mem: &GuestMemoryMmap,
    d: &mut Descriptor,
    want: u64,
    cap: u32,
) -> Result<(), Status> {
    let mut probe = *d;
    probe.nr_extents = cap;
    let bytes = extent_list_len(&probe)?;
    in_shared(mem, d.extents_gpa, bytes)?;
    let extents = core.alloc(want, cap as usize, d.flags & ALLOC_PARTIAL != 0)?;
    if mem
        .write_slice(extents.as_bytes(), GuestAddress(d.extents_gpa))
        .is_err()
    {
        core.undo_alloc(&extents);
        return Err(Status::BadPointer);
    }
    d.nr_extents = extents.len() as u32;
    d.pages = extents.iter().map(|e| e.pages).sum();
    Ok(())
}

fn free<B: RingBackend>(core: &B, mem: &GuestMemoryMmap, d: &mut Descriptor) -> Result<(), Status> {
    d.pages = 0;
    if d.flags & !FREE_REPORTED != 0 {
        return Err(Status::Invalid);
    }
    let bytes = extent_list_len(d)?;
    in_shared(mem, d.extents_gpa, bytes)?;
    // The host's private copy: the guest may rewrite its list while this runs.
    let mut list = vec![Extent::default(); d.nr_extents as usize];
    mem.read_slice(list.as_mut_bytes(), GuestAddress(d.extents_gpa))
        .map_err(|_| Status::BadPointer)?;
    if list.iter().any(|e| e.gpa % 4096 != 0 || e.pages == 0) {
        return Err(Status::Invalid);
    }
    d.pages = core.free(&list, d.flags & FREE_REPORTED != 0)?;
    Ok(())
}

fn stats<B: RingBackend>(
    core: &B,
    mem: &GuestMemoryMmap,
    d: &mut Descriptor,
) -> Result<(), Status> {
    if d.flags != 0 {
        return Err(Status::Invalid);
    }
    in_shared(mem, d.arg0, GuestStats::SIZE as u64)?;
    mem.write_slice(core.stats().as_bytes(), GuestAddress(d.arg0))
        .map_err(|_| Status::BadPointer)
}
