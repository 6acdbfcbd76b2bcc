//! # memout-server
//!
//! The host side of memout: an embeddable library that owns the page-frame allocator of each
//! guest's *outsourced region* and backs its frames on demand.
//!
//! ```text
//!  VMM (memout-vmm or yours)                         memout-server
//!  ─────────────────────────                         ─────────────
//!  doorbell exit ──▶ GuestHandle::on_doorbell ──▶ rpc ──▶ guest (frames, resident map)
//!  KVM memslot over region_host_addr()                      ▲
//!  guest touches a frame ──▶ userfaultfd ──▶ fault_handler ─┘ ──▶ populate (UFFDIO_COPY)
//! ```
//!
//! The region is private anonymous memory mapped with `MAP_NORESERVE` and never locked; a
//! frame is backed only once the guest holds it and touches it, and its host page is dropped
//! (`MADV_DONTNEED`) the moment the guest frees it. A touch of a frame the guest does not hold
//! gets no memory: the guest is stopped with [`GuestFault::Unowned`].
//!
//! The public API is what an embedder needs: [`Server`] and its builder, [`GuestConfig`], the
//! [`GuestHandle`] a VMM holds (doorbells, and through [`GuestRef`] statistics, eviction,
//! budgets and resizes), [`BackingStore`], the [`control`] socket, and the errors. Inside,
//! bottom up: `extents`, `frames`, `resident`, [`populate`] and `stats` are pure logic;
//! [`uffd`] and [`host_mem`] are the thin `unsafe` wrappers; `guest`, `fault_handler` and
//! [`rpc`] do the work. Guests are resized at runtime ([`GuestRef::resize`]): the host tells
//! the guest its new limit and asks it to release frames through messages in the ring
//! header, and evicts what it keeps after a deadline. The feature `test-util` exposes the
//! guest's internal state (`GuestCore`) and a ring driver for tests.
#![deny(missing_docs)]

mod cold;
pub mod config;
pub mod control;
mod eager;
mod evicted;
pub mod extents;
pub mod fastpath;
mod fault_handler;
pub mod file_guest;
mod frames;
mod guest;
mod guest_ref;
mod handle;
pub mod host_mem;
#[cfg(feature = "fault-injection")]
pub mod inject;
pub mod ksm;
mod log_limit;
mod mailbox;
pub mod populate;
pub mod procfs;
#[cfg(feature = "redis")]
pub mod redis_store;
mod registry;
mod resident;
mod ring_backend;
#[cfg(feature = "test-util")]
pub mod ring_driver;
pub mod rpc;
pub mod segment;
pub mod server;
mod shared_error;
mod slots;
mod stats;
pub mod store;
mod swapin_window;
pub mod uffd;

pub use config::{ChannelConfig, ConfigError, FastPathConfig, GuestConfig, RegionMemory};
pub use fault_handler::MAX_FAULT_SPIN;
#[cfg(feature = "test-util")]
pub use guest::GuestCore;
pub use guest::{
    CHUNK_PAGES, EvictError, Eviction, FatalNotifier, GuestFault, KERNEL_BUDGET_TICK,
    MergeableError, ResizeError, ResizeOptions, ResizeReport, ResizeStage, Shortfall,
};
pub use guest_ref::GuestRef;
pub use handle::GuestHandle;
pub use populate::PopulatePolicy;
pub use registry::Registry;
pub use server::{Server, ServerBuilder};
pub use shared_error::Shared;
pub use stats::GuestStatsSnapshot;
pub use store::{BackingStore, FileStore};
