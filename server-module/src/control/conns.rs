//! The control socket's connection table: who is connected, since when, whether they finished
//! the handshake and when they last asked something. Admission makes room for a new operator
//! by closing the connection that has waited longest without a handshake, else the one idle
//! longest, so no number of silent or trickling clients can lock the control plane out.
//! Reads are bounded per frame, not per byte, so a client trickling a frame cannot hold a
//! connection past the frame deadline.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::io::Read;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// A connection idle at least this long may be closed to admit a new one.
pub const MIN_IDLE_TO_EVICT: Duration = Duration::from_secs(1);

struct Conn {
    stream: UnixStream,
    opened: Instant,
    last_active: Instant,
    hello: bool,
    busy: bool,
}

/// What the table decided for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Admitted under this id.
    Admitted(u64),
    /// Admitted after closing another connection (pre-handshake or idle).
    AdmittedByEvicting(u64),
    /// Every slot is busy with a request.
    Full,
}

/// All open control connections.
#[derive(Default)]
pub struct ConnTable {
    conns: Mutex<HashMap<u64, Conn>>,
    next: AtomicU64,
}

impl ConnTable {
    #[cfg(test)]
    fn len(&self) -> usize {
        self.conns.lock().len()
    }

    /// Admits `stream` if there is room, making room if needed.
    pub fn admit(&self, stream: &UnixStream, max: usize) -> Admission {
        let Ok(copy) = stream.try_clone() else {
            return Admission::Full;
        };
        let mut conns = self.conns.lock();
        let mut evicted = false;
        if conns.len() >= max {
            let now = Instant::now();
            // First the connection that has waited longest without finishing its handshake,
            // then the one idle longest; never one in the middle of a request.
            let victim = conns
                .iter()
                .filter(|(_, c)| !c.hello && !c.busy)
                .min_by_key(|(_, c)| c.opened)
                .or_else(|| {
                    conns
                        .iter()
                        .filter(|(_, c)| {
                            !c.busy && now.duration_since(c.last_active) >= MIN_IDLE_TO_EVICT
                        })
                        .min_by_key(|(_, c)| c.last_active)
                })
                .map(|(id, _)| *id);
            let Some(id) = victim else {
                return Admission::Full;
            };
            if let Some(c) = conns.remove(&id) {
                let _ = c.stream.shutdown(Shutdown::Both);
            }
            evicted = true;
        }
        let id = self.next.fetch_add(1, Relaxed) + 1;
        let now = Instant::now();
        conns.insert(
            id,
            Conn {
                stream: copy,
                opened: now,
                last_active: now,
                hello: false,
                busy: false,
            },
        );
        if evicted {
            Admission::AdmittedByEvicting(id)
        } else {
            Admission::Admitted(id)
        }
    }

    /// Marks the start (`true`) or end of a request on connection `id`.
    pub fn set_busy(&self, id: u64, busy: bool) {
        if let Some(c) = self.conns.lock().get_mut(&id) {
            c.busy = busy;
            c.last_active = Instant::now();
        }
    }

    /// Records that connection `id` finished its handshake.
    pub fn set_hello(&self, id: u64) {
        if let Some(c) = self.conns.lock().get_mut(&id) {
            c.hello = true;
        }
    }

    /// Forgets connection `id` (its thread is ending).
    pub fn remove(&self, id: u64) {
        self.conns.lock().remove(&id);
    }

    /// Closes every connection (the server is stopping).
    pub fn close_all(&self) {
        for c in self.conns.lock().values() {
            let _ = c.stream.shutdown(Shutdown::Both);
        }
    }
}

/// A reader that gives up once `until` has passed: a whole frame must arrive by then, however
/// the client spreads its bytes.
pub struct Deadline<'a> {
    stream: &'a UnixStream,
    until: Instant,
}

impl<'a> Deadline<'a> {
    /// Reads from `stream` until `until`.
    pub fn new(stream: &'a UnixStream, until: Instant) -> Self {
        Self { stream, until }
    }
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        let mut s = self.stream;
        s.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (UnixStream, UnixStream) {
        UnixStream::pair().unwrap()
    }

    #[test]
    fn makes_room_by_closing_the_oldest_silent_then_the_longest_idle() {
        let t = ConnTable::default();
        let (a, _a) = pair();
        let (b, _b) = pair();
        let (c, _c) = pair();
        let Admission::Admitted(ia) = t.admit(&a, 2) else {
            panic!()
        };
        let Admission::Admitted(ib) = t.admit(&b, 2) else {
            panic!()
        };
        t.set_hello(ib);
        // Full: `a` never said hello, so it goes.
        assert!(matches!(t.admit(&c, 2), Admission::AdmittedByEvicting(_)));
        assert_eq!(t.len(), 2);
        let mut buf = [0u8; 1];
        assert_eq!((&_a).read(&mut buf).unwrap(), 0, "evicted peer sees EOF");
        t.remove(ia); // its thread ends; removing twice is harmless
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn never_closes_a_connection_in_a_request() {
        let t = ConnTable::default();
        let (a, _a) = pair();
        let (b, _b) = pair();
        let Admission::Admitted(ia) = t.admit(&a, 1) else {
            panic!()
        };
        t.set_hello(ia);
        t.set_busy(ia, true);
        assert_eq!(t.admit(&b, 1), Admission::Full);
        t.set_busy(ia, false);
        // Idle, but not for long enough yet.
        assert_eq!(t.admit(&b, 1), Admission::Full);
    }

    #[test]
    fn a_trickled_frame_misses_its_deadline() {
        let (a, mut b) = pair();
        std::thread::spawn(move || {
            for byte in [9u8, 0, 0, 0, 1] {
                let _ = std::io::Write::write_all(&mut b, &[byte]);
                std::thread::sleep(Duration::from_millis(150));
            }
        });
        let t0 = Instant::now();
        let mut r = Deadline::new(&a, t0 + Duration::from_millis(300));
        let e = memout_protocol::codec::read_frame(&mut r).unwrap_err();
        assert!(t0.elapsed() < Duration::from_millis(600), "{e}");
    }
}
