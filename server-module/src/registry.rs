//! The guests a server serves, by name: what the control socket lists and finds. Holds them
//! weakly, so a guest ends when its handle is dropped.

use crate::config::ConfigError;
use crate::guest::GuestCore;
use crate::guest_ref::GuestRef;
use parking_lot::Mutex;
use std::sync::{Arc, Weak};

/// The guests a server serves, by name (weakly: a guest ends when its handle is dropped).
#[derive(Default)]
pub struct Registry {
    guests: Mutex<Vec<Weak<GuestCore>>>,
}

impl Registry {
    fn lock(&self) -> parking_lot::MutexGuard<'_, Vec<Weak<GuestCore>>> {
        self.guests.lock()
    }

    /// The live guests, in the order they were added.
    pub fn guests(&self) -> Vec<GuestRef> {
        self.cores().into_iter().map(GuestRef).collect()
    }

    /// The live guest called `name`.
    pub fn find(&self, name: &str) -> Option<GuestRef> {
        self.find_core(name).map(GuestRef)
    }

    pub(crate) fn cores(&self) -> Vec<Arc<GuestCore>> {
        let mut g = self.lock();
        g.retain(|w| w.strong_count() > 0);
        g.iter().filter_map(Weak::upgrade).collect()
    }

    pub(crate) fn find_core(&self, name: &str) -> Option<Arc<GuestCore>> {
        self.cores().into_iter().find(|g| g.name() == name)
    }

    pub(crate) fn add(&self, core: &Arc<GuestCore>) -> Result<(), ConfigError> {
        let mut g = self.lock();
        g.retain(|w| w.strong_count() > 0);
        if g.iter()
            .filter_map(Weak::upgrade)
            .any(|c| c.name() == core.name())
        {
            return Err(ConfigError::DuplicateName(core.name().to_string()));
        }
        g.push(Arc::downgrade(core));
        Ok(())
    }
}
