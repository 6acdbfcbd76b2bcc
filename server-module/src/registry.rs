//! The guests a server serves, by name: what the control socket lists and finds. Holds them
//! weakly, so a guest ends when its handle is dropped. Two kinds share one namespace: guests
//! of memout's own VMM ([`GuestCore`]) and guests of an external VMM ([`FileGuest`]).

use crate::config::ConfigError;
use crate::file_guest::FileGuest;
use crate::guest::{GuestCore, ResizeError, ResizeOptions, ResizeReport};
use crate::guest_ref::GuestRef;
use parking_lot::Mutex;
use std::sync::{Arc, Weak};

/// A registered guest, weakly.
enum Entry {
    Memout(Weak<GuestCore>),
    External(Weak<FileGuest>),
}

impl Entry {
    fn upgrade(&self) -> Option<Served> {
        match self {
            Self::Memout(w) => w.upgrade().map(Served::Memout),
            Self::External(w) => w.upgrade().map(Served::External),
        }
    }

    fn live(&self) -> bool {
        match self {
            Self::Memout(w) => w.strong_count() > 0,
            Self::External(w) => w.strong_count() > 0,
        }
    }
}

/// A live guest of either kind.
#[derive(Clone)]
pub(crate) enum Served {
    /// Served by memout's own VMM.
    Memout(Arc<GuestCore>),
    /// Served for an external VMM.
    External(Arc<FileGuest>),
}

impl Served {
    pub(crate) fn name(&self) -> &str {
        match self {
            Self::Memout(g) => g.name(),
            Self::External(g) => g.name(),
        }
    }

    pub(crate) fn resize(
        &self,
        bytes: u64,
        opts: ResizeOptions,
    ) -> Result<ResizeReport, ResizeError> {
        match self {
            Self::Memout(g) => g.resize(bytes, opts),
            Self::External(g) => g.resize(bytes, opts),
        }
    }

    pub(crate) fn resize_progress(&self) -> Option<ResizeReport> {
        match self {
            Self::Memout(g) => g.resize_progress(),
            Self::External(g) => g.resize_progress(),
        }
    }

    pub(crate) fn wait_resize(
        &self,
        id: u64,
        timeout: std::time::Duration,
    ) -> Option<ResizeReport> {
        match self {
            Self::Memout(g) => g.wait_resize(id, timeout),
            Self::External(g) => g.wait_resize(id, timeout),
        }
    }
}

/// The guests a server serves, by name (weakly: a guest ends when its handle is dropped).
#[derive(Default)]
pub struct Registry {
    guests: Mutex<Vec<Entry>>,
}

impl Registry {
    /// The live guests of memout's own VMM, in the order they were added (guests of an
    /// external VMM are listed by the control socket, not here).
    pub fn guests(&self) -> Vec<GuestRef> {
        self.served()
            .into_iter()
            .filter_map(|s| match s {
                Served::Memout(g) => Some(GuestRef(g)),
                Served::External(_) => None,
            })
            .collect()
    }

    /// The live guest of memout's own VMM called `name`.
    pub fn find(&self, name: &str) -> Option<GuestRef> {
        match self.find_served(name)? {
            Served::Memout(g) => Some(GuestRef(g)),
            Served::External(_) => None,
        }
    }

    /// Every live guest, in the order they were added.
    pub(crate) fn served(&self) -> Vec<Served> {
        let mut g = self.guests.lock();
        let live: Vec<Served> = g.iter().filter_map(Entry::upgrade).collect();
        g.retain(Entry::live);
        live
    }

    pub(crate) fn find_served(&self, name: &str) -> Option<Served> {
        self.served().into_iter().find(|g| g.name() == name)
    }

    pub(crate) fn add(&self, core: &Arc<GuestCore>) -> Result<(), ConfigError> {
        self.insert(core.name(), Entry::Memout(Arc::downgrade(core)))
    }

    pub(crate) fn add_external(&self, guest: &Arc<FileGuest>) -> Result<(), ConfigError> {
        self.insert(guest.name(), Entry::External(Arc::downgrade(guest)))
    }

    fn insert(&self, name: &str, entry: Entry) -> Result<(), ConfigError> {
        let mut g = self.guests.lock();
        if g.iter()
            .filter_map(Entry::upgrade)
            .any(|s| s.name() == name)
        {
            return Err(ConfigError::DuplicateName(name.to_string()));
        }
        g.retain(Entry::live);
        g.push(entry);
        Ok(())
    }
}
