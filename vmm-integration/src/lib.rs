//! # memout-vmm
//!
//! KVM glue for memout (kvm-ioctls + vm-memory) and the pieces of the `memout` binary.
//!
//! ```text
//!  memout (binary) ── runner ── vm (kvm-ioctls: VM, vCPU, memslots)
//!                        │        └─ cpl3 (long mode at CPL3), layout (boot region)
//!                        ├─ image (guest images)          vcpu_kick (stop a vCPU)
//!                        ├─ plain (baseline memory of benchmarks)
//!                        └─ memout-server (GuestHandle: doorbell, faults, stats)
//!  memoutctl (binary) ──── memout-server::control::Client ──▶ control socket of `memout run`
//! ```
//!
//! A guest program runs in 64-bit long mode at CPL3 (see [`cpl3`] for why), with a 16 MiB boot
//! region ([`layout`]) and an outsourced region at 4 GiB served by `memout-server`.
#![deny(missing_docs)]

pub mod bench;
pub mod cleanup;
pub mod cli_size;
pub mod cpl3;
pub mod experiment;
pub mod image;
pub mod layout;
pub mod memcg;
pub mod plain;
pub mod qemu;
pub mod runner;
pub mod sched;
pub mod segments;
pub mod swapfile;
pub mod vcpu_kick;
pub mod vm;

/// Guest programs built from `guest-driver-c/guests` by `build.rs`.
pub mod images {
    include!(concat!(env!("OUT_DIR"), "/guest_images.rs"));

    /// The image named `name` (a file stem in `guest-driver-c/guests`).
    pub fn get(name: &str) -> Option<&'static [u8]> {
        ALL.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
    }
}
