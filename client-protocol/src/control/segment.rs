//! The control protocol's shared-segment messages: register a file's bytes as a named segment,
//! list segments, remove one.

use bincode::{Decode, Encode};

/// One segment, as `memoutctl segment list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, serde::Serialize)]
pub struct SegmentStatus {
    /// Name.
    pub name: String,
    /// Bytes of content.
    pub bytes: u64,
    /// Bytes a guest maps (content rounded up to 2 MiB).
    pub mapped_bytes: u64,
    /// Host memory it holds: one copy, however many guests map it.
    pub host_bytes: u64,
    /// Guests mapping it now, one entry per mapping.
    pub guests: Vec<String>,
    /// Guests that may map it (`None`: all).
    pub access: Option<Vec<String>>,
    /// Removed, waiting for its last mapping to end.
    pub removing: bool,
}
