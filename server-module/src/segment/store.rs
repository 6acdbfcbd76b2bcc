//! The server's shared segments by name: registered once, mapped by any number of guests (each
//! mapping counted), removed only when no guest maps them any more (a removal while mapped
//! only stops new mappings, and the segment goes with its last unmap).
//!
//! Access rule: a segment registered for all guests may be mapped by any guest of this
//! server; one registered for named guests only by those.

use super::memory::{self, SegmentMemory};
use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use thiserror::Error;

/// Largest segment, in bytes.
pub const MAX_SEGMENT: u64 = 1 << 30;
/// Longest segment name, in bytes.
pub const MAX_NAME: usize = 63;

/// Why a segment could not be registered, found or removed.
#[derive(Debug, Error)]
pub enum Error {
    /// The name is empty, too long, or has characters other than `A-Za-z0-9._-`.
    #[error("segment name {0:?} is not 1 to 63 of A-Z a-z 0-9 . _ -")]
    Name(String),
    /// A segment of this name exists.
    #[error("a segment called {0:?} already exists")]
    Duplicate(String),
    /// No segment of this name.
    #[error("no segment called {0:?}")]
    Unknown(String),
    /// The content is empty or too large.
    #[error("a segment of {0} bytes: segments hold 1 byte to 1 GiB")]
    Size(u64),
    /// Reading the content from a file failed.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Its memory.
    #[error(transparent)]
    Memory(#[from] memory::Error),
}

/// `Result` with this module's [`enum@Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Who may map a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Every guest of the server.
    All,
    /// These guests only.
    Guests(BTreeSet<String>),
}

impl Access {
    fn allows(&self, guest: &str) -> bool {
        match self {
            Self::All => true,
            Self::Guests(g) => g.contains(guest),
        }
    }
}

/// One registered segment.
#[derive(Debug)]
pub struct Segment {
    name: String,
    memory: SegmentMemory,
    access: Access,
    state: Mutex<Users>,
}

#[derive(Debug, Default)]
struct Users {
    /// One entry per mapping: the guest's name.
    guests: Vec<String>,
    removing: bool,
}

impl Segment {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its memory.
    pub fn memory(&self) -> &SegmentMemory {
        &self.memory
    }
}

/// What a segment looks like now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Name.
    pub name: String,
    /// Bytes of content.
    pub bytes: u64,
    /// Bytes a guest maps (rounded up to 2 MiB).
    pub mapped_bytes: u64,
    /// Host memory it holds: one copy, however many guests map it.
    pub host_bytes: u64,
    /// Guests mapping it now, one entry per mapping.
    pub guests: Vec<String>,
    /// Who may map it (`None`: every guest).
    pub access: Option<Vec<String>>,
    /// Removed, and waiting for its last mapping to go.
    pub removing: bool,
}

/// Why a guest may not map a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No such segment (or it is being removed).
    Unknown,
    /// The guest may not see it.
    Denied,
}

/// What a removal did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// Gone.
    Removed,
    /// No new mappings; it goes when these many mappings end.
    Pending(usize),
}

/// The segments of one server.
#[derive(Debug, Default)]
pub struct SegmentStore {
    map: Mutex<BTreeMap<String, Arc<Segment>>>,
}

fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl SegmentStore {
    /// Registers `content` as segment `name`.
    pub fn register(&self, name: &str, content: &[u8], access: Access) -> Result<()> {
        if !valid_name(name) {
            return Err(Error::Name(name.to_string()));
        }
        if content.is_empty() || content.len() as u64 > MAX_SEGMENT {
            return Err(Error::Size(content.len() as u64));
        }
        if self.map.lock().contains_key(name) {
            return Err(Error::Duplicate(name.to_string()));
        }
        let seg = Arc::new(Segment {
            name: name.to_string(),
            memory: SegmentMemory::create(name, content)?,
            access,
            state: Mutex::default(),
        });
        let mut m = self.map.lock();
        if m.contains_key(name) {
            return Err(Error::Duplicate(name.to_string()));
        }
        m.insert(name.to_string(), seg);
        Ok(())
    }

    /// Registers the bytes of the file at `path` as segment `name`.
    pub fn register_file(&self, name: &str, path: &std::path::Path, access: Access) -> Result<()> {
        let read = |source| Error::Read {
            path: path.to_path_buf(),
            source,
        };
        let len = std::fs::metadata(path).map_err(read)?.len();
        if len == 0 || len > MAX_SEGMENT {
            return Err(Error::Size(len));
        }
        let content = std::fs::read(path).map_err(read)?;
        self.register(name, &content, access)
    }

    /// The segment `name` for `guest` to map; on success it counts one more mapping by
    /// `guest` (end it with [`release`](Self::release)).
    pub fn acquire(&self, name: &str, guest: &str) -> std::result::Result<Arc<Segment>, Refusal> {
        let seg = self.map.lock().get(name).cloned().ok_or(Refusal::Unknown)?;
        if !seg.access.allows(guest) {
            return Err(Refusal::Denied);
        }
        let mut st = seg.state.lock();
        if st.removing {
            return Err(Refusal::Unknown);
        }
        st.guests.push(guest.to_string());
        drop(st);
        Ok(seg)
    }

    /// One mapping of `seg` by `guest` ended; a removed segment goes with its last.
    pub fn release(&self, seg: &Arc<Segment>, guest: &str) {
        let mut m = self.map.lock();
        let mut st = seg.state.lock();
        if let Some(i) = st.guests.iter().position(|g| g == guest) {
            st.guests.swap_remove(i);
        }
        if st.removing && st.guests.is_empty() {
            m.remove(&seg.name);
        }
    }

    /// Removes `name`: at once if no guest maps it, else when its last mapping ends.
    pub fn remove(&self, name: &str) -> Result<Removal> {
        let mut m = self.map.lock();
        let seg = m
            .get(name)
            .ok_or_else(|| Error::Unknown(name.to_string()))?;
        let mut st = seg.state.lock();
        if st.guests.is_empty() {
            drop(st);
            m.remove(name);
            return Ok(Removal::Removed);
        }
        st.removing = true;
        Ok(Removal::Pending(st.guests.len()))
    }

    /// Every segment.
    pub fn list(&self) -> Vec<SegmentInfo> {
        self.map
            .lock()
            .values()
            .map(|s| {
                let st = s.state.lock();
                SegmentInfo {
                    name: s.name.clone(),
                    bytes: s.memory.len(),
                    mapped_bytes: s.memory.size(),
                    host_bytes: s.memory.host_bytes(),
                    guests: st.guests.clone(),
                    access: match &s.access {
                        Access::All => None,
                        Access::Guests(g) => Some(g.iter().cloned().collect()),
                    },
                    removing: st.removing,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sizes_access_and_counted_removal() {
        let s = SegmentStore::default();
        assert!(matches!(
            s.register("", b"x", Access::All),
            Err(Error::Name(_))
        ));
        assert!(matches!(
            s.register("a/b", b"x", Access::All),
            Err(Error::Name(_))
        ));
        assert!(matches!(
            s.register("e", b"", Access::All),
            Err(Error::Size(0))
        ));
        s.register("libc.so.6", b"hello", Access::All).unwrap();
        assert!(matches!(
            s.register("libc.so.6", b"again", Access::All),
            Err(Error::Duplicate(_))
        ));
        let only = Access::Guests(["vm1".to_string()].into());
        s.register("private", b"p", only).unwrap();
        assert_eq!(s.acquire("nope", "vm1").unwrap_err(), Refusal::Unknown);
        assert_eq!(s.acquire("private", "vm2").unwrap_err(), Refusal::Denied);
        let a = s.acquire("libc.so.6", "vm1").unwrap();
        let b = s.acquire("libc.so.6", "vm2").unwrap();
        assert_eq!(s.remove("libc.so.6").unwrap(), Removal::Pending(2));
        assert_eq!(s.acquire("libc.so.6", "vm3").unwrap_err(), Refusal::Unknown);
        s.release(&a, "vm1");
        assert!(s.list().iter().any(|i| i.name == "libc.so.6" && i.removing));
        s.release(&b, "vm2");
        assert!(!s.list().iter().any(|i| i.name == "libc.so.6"));
        assert_eq!(s.remove("private").unwrap(), Removal::Removed);
        assert!(matches!(s.remove("private"), Err(Error::Unknown(_))));
    }
}
