//! A minimal KVM VM for memout guests: one vCPU, a boot-region memslot owned by vm-memory, and
//! further memslots over host memory owned by someone else (the server's outsourced region).

use crate::cpl3;
use crate::layout::BOOT_SIZE;
use kvm_bindings::{KVM_MAX_CPUID_ENTRIES, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use thiserror::Error;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Errors creating or configuring the VM.
#[derive(Debug, Error)]
pub enum Error {
    /// `/dev/kvm` is missing or cannot be opened.
    #[error("cannot open /dev/kvm: {0}")]
    NoKvm(#[source] kvm_ioctls::Error),
    /// A KVM ioctl failed.
    #[error("{what}: {source}")]
    Kvm {
        /// What was being done.
        what: &'static str,
        /// Cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Boot memory could not be mapped.
    #[error("cannot map boot memory: {0}")]
    BootMemory(#[source] vm_memory::mmap::FromRangesError),
    /// Page tables could not be written.
    #[error(transparent)]
    Tables(#[from] cpl3::Error),
}

/// `Result` with this module's [`enum@Error`].
pub type Result<T> = std::result::Result<T, Error>;

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}

/// True if `/dev/kvm` can be opened.
pub fn kvm_available() -> bool {
    Kvm::new().is_ok()
}

/// A VM with one vCPU and its boot region.
pub struct GuestVm {
    _kvm: Kvm,
    vm: Arc<VmFd>,
    vcpu: VcpuFd,
    boot: GuestMemoryMmap,
    next_slot: Arc<AtomicU32>,
}

impl GuestVm {
    /// Creates the VM, maps the boot region as memslot 0 and creates vCPU 0.
    pub fn new() -> Result<Self> {
        let kvm_fd = Kvm::new().map_err(Error::NoKvm)?;
        let vm = kvm_fd.create_vm().map_err(kvm("KVM_CREATE_VM"))?;
        vm.set_tss_address(0xfffb_d000)
            .map_err(kvm("KVM_SET_TSS_ADDR"))?;
        let boot = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), BOOT_SIZE as usize)])
            .map_err(Error::BootMemory)?;
        let mut this = Self {
            _kvm: kvm_fd,
            vcpu: vm.create_vcpu(0).map_err(kvm("KVM_CREATE_VCPU"))?,
            vm: Arc::new(vm),
            boot,
            next_slot: Arc::new(AtomicU32::new(0)),
        };
        let host = this.boot.iter().next().expect("one region").as_ptr() as usize;
        // SAFETY: the boot memory is owned by `this` and declared after `vm`, so it is unmapped
        // only after the VM (and its memslots) are gone.
        unsafe { this.map(0, BOOT_SIZE, host)? };
        let cpuid = this
            ._kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm("KVM_GET_SUPPORTED_CPUID"))?;
        this.vcpu
            .set_cpuid2(&cpuid)
            .map_err(kvm("KVM_SET_CPUID2"))?;
        Ok(this)
    }

    /// The boot region (shared with the server for the ring and extent lists).
    pub fn boot(&self) -> &GuestMemoryMmap {
        &self.boot
    }

    /// Adds a memslot at `gpa` over `size` bytes of host memory at `host_addr`.
    ///
    /// # Safety
    /// `[host_addr, host_addr + size)` must be a mapping that stays mapped for as long as the
    /// VM exists (the guest reads and writes it through KVM); memout's outsourced regions are
    /// owned by the server's guest handle, which the runner drops after the VM.
    pub unsafe fn map(&mut self, gpa: u64, size: u64, host_addr: usize) -> Result<()> {
        let slot = self.next_slot.fetch_add(1, Relaxed);
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: host_addr as u64,
        };
        // SAFETY: the caller promises the host range is a live mapping of `size` bytes that
        // outlives the VM.
        unsafe { self.vm.set_user_memory_region(region) }
            .map_err(kvm("KVM_SET_USER_MEMORY_REGION"))?;
        Ok(())
    }

    /// Writes page tables covering the boot region and `ranges`, and puts the vCPU in long
    /// mode at CPL3 at `entry`.
    pub fn setup_cpl3(&self, entry: u64, ranges: &[(u64, u64)]) -> Result<()> {
        cpl3::write_tables(&self.boot, ranges)?;
        let sregs = self.vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
        self.vcpu
            .set_sregs(&cpl3::sregs(sregs))
            .map_err(kvm("KVM_SET_SREGS"))?;
        self.vcpu
            .set_regs(&cpl3::regs(entry))
            .map_err(kvm("KVM_SET_REGS"))?;
        Ok(())
    }

    /// What maps shared segments into this VM (read-only memslots; see [`crate::segments`]).
    pub fn segment_mapper(&self) -> crate::segments::KvmSegmentMapper {
        crate::segments::KvmSegmentMapper::new(self.vm.clone(), self.next_slot.clone())
    }

    /// The vCPU.
    pub fn vcpu(&mut self) -> &mut VcpuFd {
        &mut self.vcpu
    }
}
