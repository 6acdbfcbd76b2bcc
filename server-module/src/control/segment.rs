//! The control socket's shared-segment requests: register a file's bytes, list, remove.

use crate::segment::{Access, Removal, SegmentStore, store};
use memout_protocol::control::{ErrorKind, Response, SegmentStatus};

fn store_of(s: Option<&SegmentStore>) -> Result<&SegmentStore, Response> {
    s.ok_or_else(|| {
        Response::error(
            ErrorKind::NotSupported,
            "this control socket serves no shared segments",
        )
    })
}

fn refused(e: store::Error) -> Response {
    let kind = match e {
        store::Error::Read { .. } | store::Error::Memory(_) => ErrorKind::Failed,
        _ => ErrorKind::InvalidSize,
    };
    Response::error(kind, e.to_string())
}

/// `RegisterSegment`.
pub(super) fn register(
    s: Option<&SegmentStore>,
    name: &str,
    path: &str,
    guests: Vec<String>,
) -> Result<Response, Response> {
    let access = if guests.is_empty() {
        Access::All
    } else {
        Access::Guests(guests.into_iter().collect())
    };
    store_of(s)?
        .register_file(name, std::path::Path::new(path), access)
        .map(|()| Response::Done)
        .map_err(refused)
}

/// `ListSegments`.
pub(super) fn list(s: Option<&SegmentStore>) -> Result<Response, Response> {
    Ok(Response::Segments(
        store_of(s)?
            .list()
            .into_iter()
            .map(|i| SegmentStatus {
                name: i.name,
                bytes: i.bytes,
                mapped_bytes: i.mapped_bytes,
                host_bytes: i.host_bytes,
                guests: i.guests,
                access: i.access,
                removing: i.removing,
            })
            .collect(),
    ))
}

/// `RemoveSegment`.
pub(super) fn remove(s: Option<&SegmentStore>, name: &str) -> Result<Response, Response> {
    match store_of(s)?.remove(name).map_err(|e| match e {
        store::Error::Unknown(_) => Response::error(ErrorKind::UnknownGuest, e.to_string()),
        other => refused(other),
    })? {
        Removal::Removed => Ok(Response::SegmentRemoved {
            pending_mappings: 0,
        }),
        Removal::Pending(n) => Ok(Response::SegmentRemoved {
            pending_mappings: n as u32,
        }),
    }
}
