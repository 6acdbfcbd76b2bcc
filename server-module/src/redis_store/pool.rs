//! Connections to one Redis server or cluster ([`super::link`]): at most a fixed number open (so at most that many
//! requests in flight: each request is one pipeline on one connection), reconnected with
//! exponential back-off when the server goes away, for a bounded time. Every request memout
//! makes is idempotent (HSET of the same pages, HMGET, HDEL, UNLINK), so a request whose
//! connection broke is simply sent again on a new one.

use super::link::{Conn, Target};
use crate::log_limit::LogLimiter;
use parking_lot::{Condvar, Mutex};
use redis::RedisError;
use std::time::{Duration, Instant};

const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// How a request failed for good.
#[derive(Debug)]
pub enum Failure {
    /// The server could not be reached (or kept dropping the connection) for the whole
    /// retry time; the last error.
    Unreachable(RedisError),
    /// The server answered with an error (e.g. OOM under `maxmemory` with `noeviction`).
    Refused(RedisError),
}

/// A bounded set of connections.
pub struct Pool {
    target: Target,
    timeout: Duration,
    retry_for: Duration,
    max: usize,
    state: Mutex<(Vec<Conn>, usize)>,
    returned: Condvar,
    log: LogLimiter,
    what: String,
}

/// Worth retrying on a new connection: the server is away, or a cluster is between
/// configurations (a master lost and a replica not yet promoted, slots moving).
fn transient(e: &RedisError) -> bool {
    use redis::{ErrorKind::Server, ServerErrorKind as K};
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(
            e.kind(),
            Server(K::ClusterDown | K::TryAgain | K::MasterDown | K::BusyLoading)
        )
}

impl Pool {
    /// A pool of up to `max` connections; each operation times out after `timeout`, and a
    /// request is retried on new connections for up to `retry_for`. `what` names the server
    /// in logs (without credentials).
    pub fn new(
        target: Target,
        max: usize,
        timeout: Duration,
        retry_for: Duration,
        what: String,
    ) -> Self {
        Self {
            target,
            timeout,
            retry_for,
            max: max.max(1),
            state: Mutex::new((Vec::new(), 0)),
            returned: Condvar::new(),
            log: LogLimiter::new(3, Duration::from_secs(10)),
            what,
        }
    }

    /// An idle connection, or a new one if fewer than `max` are open; waits otherwise.
    fn take(&self) -> Result<Conn, RedisError> {
        let mut st = self.state.lock();
        loop {
            if let Some(c) = st.0.pop() {
                return Ok(c);
            }
            if st.1 < self.max {
                st.1 += 1;
                drop(st);
                let c = self.target.connect(self.timeout);
                if c.is_err() {
                    self.state.lock().1 -= 1;
                    self.returned.notify_one();
                }
                return c;
            }
            self.returned.wait(&mut st);
        }
    }

    fn give_back(&self, c: Conn) {
        self.state.lock().0.push(c);
        self.returned.notify_one();
    }

    fn discard(&self) {
        self.state.lock().1 -= 1;
        self.returned.notify_one();
    }

    /// Runs `f` on a connection, retrying on new connections with back-off while the server
    /// is unreachable, for up to the retry time.
    pub fn run<T>(
        &self,
        mut f: impl FnMut(&mut Conn) -> Result<T, RedisError>,
    ) -> Result<T, Failure> {
        let start = Instant::now();
        let mut backoff = FIRST_BACKOFF;
        loop {
            let err = match self.take() {
                Ok(mut c) => match f(&mut c) {
                    Ok(v) => {
                        self.give_back(c);
                        return Ok(v);
                    }
                    Err(e) if !transient(&e) => {
                        self.give_back(c);
                        return Err(Failure::Refused(e));
                    }
                    Err(e) => {
                        self.discard();
                        e
                    }
                },
                Err(e) if !transient(&e) => return Err(Failure::Refused(e)),
                Err(e) => e,
            };
            if start.elapsed() + backoff > self.retry_for {
                return Err(Failure::Unreachable(err));
            }
            if let Some(suppressed) = self.log.allow() {
                tracing::warn!(store = %self.what, suppressed, "redis: {err}; reconnecting in {backoff:?}");
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}
