//! Carries out one control request against the server's guests. Every request is checked
//! before anything changes: a refused request leaves the guest as it was.

use super::wire::{progress, status};
use crate::guest::{EvictError, GuestCore, ResizeError, ResizeOptions};
use crate::ksm::KsmController;
use crate::registry::{self, Registry};
use crate::segment::SegmentStore;
use memout_protocol::control::{CONTROL_VERSION, ErrorKind, Request, Response};
use memout_protocol::ring::PAGE_SIZE;
use std::time::Duration;

/// Longest release deadline a client may ask for.
const MAX_RELEASE_DEADLINE_MS: u32 = 600_000;
/// A waited-for resize answers after its deadline plus this much at the latest.
const WAIT_SLACK: Duration = Duration::from_secs(120);

/// What a control socket serves.
pub(super) struct Served<'a> {
    /// The guests.
    pub registry: &'a Registry,
    /// The KSM controller, if any.
    pub ksm: Option<&'a KsmController>,
    /// The shared segments, if any.
    pub segments: Option<&'a SegmentStore>,
}

/// The answer to `req`; `hello` tracks the handshake of the connection.
pub(super) fn handle(served: &Served<'_>, req: Request, hello: &mut bool) -> Response {
    let (registry, ksm) = (served.registry, served.ksm);
    if let Request::Hello { version, client } = &req {
        if *hello {
            return Response::error(ErrorKind::Handshake, "hello sent twice");
        }
        if *version != CONTROL_VERSION {
            return Response::error(
                ErrorKind::Version,
                format!(
                    "client speaks control protocol {version}, server speaks {CONTROL_VERSION}"
                ),
            );
        }
        tracing::debug!(client = %client.chars().take(64).collect::<String>(), "control client");
        *hello = true;
        return Response::Hello {
            version: CONTROL_VERSION,
            server: format!("memout-server {}", env!("CARGO_PKG_VERSION")),
        };
    }
    if !*hello {
        return Response::error(ErrorKind::Handshake, "the first request must be hello");
    }
    let find = |name: &str| {
        registry.find_served(name).ok_or_else(|| {
            Response::error(ErrorKind::UnknownGuest, format!("no guest called {name:?}"))
        })
    };
    // Budgets, evictions and policies act on page faults memout serves: only its own guests.
    let find_memout = |name: &str| match find(name)? {
        registry::Served::Memout(g) => Ok(g),
        registry::Served::External(_) => Err(Response::error(
            ErrorKind::NotSupported,
            format!(
                "guest {name:?} runs in an external VMM: memout does not see its page faults, \
                 so it cannot evict, budget or populate it (resize works through its balloon)"
            ),
        )),
    };
    let r = match req {
        Request::Hello { .. } => unreachable!("handled above"),
        Request::List => Ok(Response::Guests(
            registry.served().iter().map(status).collect(),
        )),
        Request::Status { guest } => find(&guest).map(|g| Response::Status(Box::new(status(&g)))),
        Request::ResizeStatus { guest } => find(&guest).and_then(|g| {
            g.resize_progress()
                .map(|r| Response::Resize(progress(&r)))
                .ok_or_else(|| {
                    Response::error(
                        ErrorKind::Failed,
                        format!("guest {guest:?} was never resized"),
                    )
                })
        }),
        Request::Resize {
            guest,
            bytes,
            release_deadline_ms,
            wait,
        } => find(&guest).and_then(|g| resize(&g, bytes, release_deadline_ms, wait)),
        Request::SetBudget { guest, bytes } => find_memout(&guest).and_then(|g| {
            if let Some(b) = bytes {
                check_size(&g, b, "budget")?;
            }
            g.set_budget(bytes.map(|b| b / PAGE_SIZE))
                .map(|()| Response::Done)
                .map_err(evict_error)
        }),
        Request::Evict { guest, bytes } => find_memout(&guest).and_then(|g| {
            check_size(&g, bytes, "eviction")?;
            g.evict(bytes / PAGE_SIZE)
                .map(|p| Response::Evicted {
                    bytes: p * PAGE_SIZE,
                })
                .map_err(evict_error)
        }),
        Request::SetPolicy { guest, policy } => find_memout(&guest).map(|g| {
            g.set_policy(policy.into());
            Response::Done
        }),
        Request::Ksm { set } => super::ksm::request(registry, ksm, set),
        Request::SetMergeable { guest, on } => {
            find(&guest).and_then(|g| super::ksm::set_mergeable(&g, on))
        }
        Request::RegisterSegment { name, path, guests } => {
            super::segment::register(served.segments, &name, &path, guests)
        }
        Request::ListSegments => super::segment::list(served.segments),
        Request::RemoveSegment { name } => super::segment::remove(served.segments, &name),
    };
    r.unwrap_or_else(|e| e)
}

fn check_size(g: &GuestCore, bytes: u64, what: &str) -> Result<(), Response> {
    let region = g.region().size() as u64;
    let bad = |m: String| Err(Response::error(ErrorKind::InvalidSize, m));
    if bytes == 0 {
        return bad(format!("{what} size must not be zero"));
    }
    if bytes % PAGE_SIZE != 0 {
        return bad(format!("{what} size {bytes} is not a multiple of 4 KiB"));
    }
    if bytes > region {
        return bad(format!(
            "{what} size {bytes} is above the region of {region} bytes"
        ));
    }
    Ok(())
}

fn evict_error(e: EvictError) -> Response {
    match e {
        EvictError::NotConfigured => Response::error(ErrorKind::NotSupported, e.to_string()),
        other => Response::error(ErrorKind::Failed, other.to_string()),
    }
}

fn resize(
    g: &registry::Served,
    bytes: u64,
    deadline_ms: u32,
    wait: bool,
) -> Result<Response, Response> {
    if deadline_ms > MAX_RELEASE_DEADLINE_MS {
        return Err(Response::error(
            ErrorKind::InvalidSize,
            format!("release deadline {deadline_ms} ms is above {MAX_RELEASE_DEADLINE_MS} ms"),
        ));
    }
    let release_deadline = Duration::from_millis(deadline_ms.into());
    let first = g
        .resize(bytes, ResizeOptions { release_deadline })
        .map_err(|e| {
            let kind = match e {
                ResizeError::Stopped(_) | ResizeError::Removed | ResizeError::Spawn(_) => {
                    ErrorKind::Failed
                }
                _ => ErrorKind::InvalidSize,
            };
            Response::error(kind, e.to_string())
        })?;
    if !wait || first.stage.is_final() {
        return Ok(Response::Resize(progress(&first)));
    }
    g.wait_resize(first.id, release_deadline + WAIT_SLACK)
        .map(|r| Response::Resize(progress(&r)))
        .ok_or_else(|| Response::error(ErrorKind::Failed, "resize state lost"))
}
