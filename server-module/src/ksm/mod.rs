//! KSM (kernel samepage merging) for memout's guests: per-guest `mergeable` memory, the
//! system's KSM counters, and a controller that runs ksmd `on`, `off` or `auto` (after RHEL's
//! ksmtuned) and restores the system's settings when it stops, even if memout is killed.
//!
//! - [`sysfs`]: `/sys/kernel/mm/ksm` (kernel-touching, root as a parameter);
//! - [`tuner`]: `auto`'s policy (pure logic);
//! - [`controller`]: the mode, the saved settings, `auto`'s thread;
//! - [`guard`]: the process that restores the settings if the controller's owner dies;
//! - [`pages`]: how many of a guest's pages KSM merged (`/proc/self/pagemap`, `kpageflags`).

pub mod controller;
pub mod guard;
pub mod pages;
pub mod sysfs;
pub mod tuner;

pub use controller::{ControllerConfig, ControllerStatus, KsmController, KsmMode};
pub use sysfs::{KsmCounters, KsmSettings, KsmSysfs};
pub use tuner::TunerParams;
