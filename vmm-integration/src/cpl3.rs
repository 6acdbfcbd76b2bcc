//! 64-bit long mode at CPL3, set up directly by the VMM (no guest kernel).
//!
//! Why CPL3: on this class of host (KVM inside a VM using PVM), guest code at CPL0 is emulated
//! at about 1 µs per instruction while CPL3 code runs natively. So the VMM builds identity page
//! tables with the user bit set, loads DPL-3 segments, and sets IOPL=3 in RFLAGS so the guest
//! may use `out` for the doorbell. There is no IDT: any guest exception ends the run with a
//! shutdown exit, which the VMM reports.

use crate::layout::{BOOT_SIZE, GDT, MAX_GPA, PD_BASE, PDPT, PML4, STACK_TOP};
use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Errors setting up the guest's address space.
#[derive(Debug, Error)]
pub enum Error {
    /// A mapped range is beyond what the page tables can cover.
    #[error("guest-physical range ends at {end:#x}, above the {MAX_GPA:#x} the page tables map")]
    TooHigh {
        /// End of the range.
        end: u64,
    },
    /// Writing the tables into boot memory failed.
    #[error("writing page tables: {0}")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// `Result` with this module's [`enum@Error`].
pub type Result<T> = std::result::Result<T, Error>;

const PTE_P_RW_US: u64 = 0x7;
const PDE_2M: u64 = 0x87; // P | RW | US | PS
const SEL_USER_DATA: u16 = 0x18 | 3;
const SEL_USER_CODE: u16 = 0x20 | 3;

/// Writes identity page tables (2 MiB pages, user-accessible) covering `[0, BOOT_SIZE)` and
/// every range in `ranges`, and a GDT with DPL-3 code and data segments.
pub fn write_tables(mem: &GuestMemoryMmap, ranges: &[(u64, u64)]) -> Result<()> {
    let w = |v: u64, gpa: u64| mem.write_obj(v, GuestAddress(gpa)).map_err(Error::Write);
    w(PDPT | PTE_P_RW_US, PML4)?;
    let mut gibs: Vec<u64> = vec![0];
    for &(start, size) in std::iter::once(&(0, BOOT_SIZE)).chain(ranges) {
        let end = start
            .checked_add(size)
            .ok_or(Error::TooHigh { end: u64::MAX })?;
        if end > MAX_GPA {
            return Err(Error::TooHigh { end });
        }
        gibs.extend((start >> 30)..end.div_ceil(1 << 30));
    }
    gibs.sort_unstable();
    gibs.dedup();
    for g in gibs {
        let pd = PD_BASE + g * 0x1000;
        w(pd | PTE_P_RW_US, PDPT + g * 8)?;
        let mut table = [0u8; 4096];
        for j in 0..512u64 {
            let e = (g << 30) | (j << 21) | PDE_2M;
            table[(j * 8) as usize..(j * 8 + 8) as usize].copy_from_slice(&e.to_le_bytes());
        }
        mem.write_slice(&table, GuestAddress(pd))
            .map_err(Error::Write)?;
    }
    // null, kernel code, kernel data, user data (0x18), user code 64-bit (0x20)
    let gdt: [u64; 5] = [
        0,
        0x00af_9b00_0000_ffff,
        0x00cf_9300_0000_ffff,
        0x00cf_f300_0000_ffff,
        0x00af_fb00_0000_ffff,
    ];
    for (i, d) in gdt.iter().enumerate() {
        w(*d, GDT + 8 * i as u64)?;
    }
    Ok(())
}

fn seg(selector: u16, type_: u8, l: u8, db: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 3,
        db,
        s: 1,
        l,
        g: 1,
        ..Default::default()
    }
}

/// Special registers for long mode at CPL3 (starting from the vCPU's defaults).
pub fn sregs(mut s: kvm_sregs) -> kvm_sregs {
    s.cs = seg(SEL_USER_CODE, 11, 1, 0);
    let data = seg(SEL_USER_DATA, 3, 0, 1);
    (s.ds, s.es, s.fs, s.gs, s.ss) = (data, data, data, data, data);
    s.gdt.base = GDT;
    s.gdt.limit = 5 * 8 - 1;
    s.cr3 = PML4;
    s.cr4 = 0x20; // PAE
    s.cr0 = 0x8000_0031; // PG | NE | ET | PE
    s.efer = 0x500; // LME | LMA
    s
}

/// General registers: entry point, stack, RFLAGS with IOPL=3.
pub fn regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rsp: STACK_TOP,
        rflags: 0x3002,
        ..Default::default()
    }
}
