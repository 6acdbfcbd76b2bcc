//! Shared segments in memout's VMM: each mapping a read-only KVM memslot over memout's own
//! read-only mapping of the segment, inside the guest's segment window
//! ([`SEGMENT_GPA`](crate::layout::SEGMENT_GPA)). A guest write there exits as MMIO, which the
//! runner reports to the server and skips.

use kvm_bindings::{KVM_MEM_READONLY, kvm_userspace_memory_region};
use kvm_ioctls::VmFd;
use memout_server::segment::{SegmentMapper, SegmentMapping};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

/// What the built-in `segment` guest checks a segment of `bytes` to hold: word `i` is
/// `i × 0x9e3779b97f4a7c15 ^ 0x5e6d000000000000` (tests, benchmarks and experiments register
/// this).
pub fn guest_pattern(bytes: u64) -> Vec<u8> {
    (0..bytes / 8)
        .flat_map(|i| (i.wrapping_mul(0x9e3779b97f4a7c15) ^ 0x5e6d000000000000).to_le_bytes())
        .collect()
}

/// Maps segments into one VM.
pub struct KvmSegmentMapper {
    vm: Arc<VmFd>,
    next_slot: Arc<AtomicU32>,
    /// By guest-physical address: the memslot and the mapping that keeps its memory alive.
    mapped: Mutex<BTreeMap<u64, (u32, SegmentMapping)>>,
    free_slots: Mutex<Vec<u32>>,
}

impl KvmSegmentMapper {
    pub(crate) fn new(vm: Arc<VmFd>, next_slot: Arc<AtomicU32>) -> Self {
        Self {
            vm,
            next_slot,
            mapped: Mutex::default(),
            free_slots: Mutex::default(),
        }
    }

    fn set(&self, slot: u32, flags: u32, gpa: u64, size: u64, host: usize) -> std::io::Result<()> {
        let region = kvm_userspace_memory_region {
            slot,
            flags,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: host as u64,
        };
        // SAFETY: a non-empty slot covers memout's read-only mapping of a segment, which the
        // `SegmentMapping` in `mapped` keeps alive until this slot is emptied (unmap or drop);
        // an empty slot (size 0) deletes it.
        unsafe { self.vm.set_user_memory_region(region) }.map_err(std::io::Error::from)
    }
}

impl SegmentMapper for KvmSegmentMapper {
    fn map(&self, m: SegmentMapping) -> std::io::Result<()> {
        let slot = self
            .free_slots
            .lock()
            .pop()
            .unwrap_or_else(|| self.next_slot.fetch_add(1, Relaxed));
        let mut mapped = self.mapped.lock();
        if let Err(e) = self.set(slot, KVM_MEM_READONLY, m.gpa(), m.size(), m.host_addr()) {
            self.free_slots.lock().push(slot);
            return Err(e);
        }
        mapped.insert(m.gpa(), (slot, m));
        Ok(())
    }

    fn unmap(&self, gpa: u64) -> std::io::Result<()> {
        let mut mapped = self.mapped.lock();
        let Some((slot, _)) = mapped.get(&gpa) else {
            return Err(std::io::Error::from(std::io::ErrorKind::NotFound));
        };
        let slot = *slot;
        self.set(slot, 0, gpa, 0, 0)?;
        // The slot is gone: its memory may go now.
        mapped.remove(&gpa);
        self.free_slots.lock().push(slot);
        Ok(())
    }
}

impl Drop for KvmSegmentMapper {
    fn drop(&mut self) {
        let gpas: Vec<u64> = self.mapped.lock().keys().copied().collect();
        for gpa in gpas {
            if self.unmap(gpa).is_err() {
                // Leave the mapping alive rather than let KVM point at freed memory.
                if let Some(e) = self.mapped.lock().remove(&gpa) {
                    std::mem::forget(e);
                }
            }
        }
    }
}
