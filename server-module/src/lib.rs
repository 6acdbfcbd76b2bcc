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
//! Modules, bottom up: [`extents`], [`frames`], [`resident`], [`populate`] and [`stats`] are
//! pure logic; [`uffd`] and [`host_mem`] are the thin `unsafe` wrappers; [`guest`],
//! [`fault_handler`] and [`rpc`] do the work; [`server`] is the API, and [`control`] serves it
//! to operators over a Unix socket (`memoutctl`). Guests are resized at runtime
//! ([`GuestHandle::resize`]): the host tells the guest its new limit and asks it to release
//! frames through messages in the ring header, and evicts what it keeps after a deadline.
#![deny(missing_docs)]

pub mod cold;
pub mod config;
pub mod control;
pub mod eager;
pub mod evicted;
pub mod extents;
pub mod fault_handler;
pub mod frames;
pub mod guest;
mod handle;
pub mod host_mem;
#[cfg(feature = "fault-injection")]
pub mod inject;
pub mod log_limit;
mod mailbox;
pub mod populate;
pub mod procfs;
mod registry;
pub mod resident;
#[cfg(feature = "test-util")]
pub mod ring_driver;
pub mod rpc;
pub mod server;
pub mod shared_error;
pub mod slots;
pub mod stats;
pub mod store;
pub mod uffd;

pub use config::{ChannelConfig, ConfigError, GuestConfig, RegionMemory};
pub use guest::{
    EvictError, Eviction, FatalNotifier, GuestFault, ResizeError, ResizeOptions, ResizeReport,
    ResizeStage, Shortfall,
};
pub use handle::GuestHandle;
pub use populate::PopulatePolicy;
pub use registry::Registry;
pub use server::{Server, ServerBuilder};
pub use stats::GuestStatsSnapshot;
pub use store::{BackingStore, FileStore};
