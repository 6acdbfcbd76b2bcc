//! A [`BackingStore`] in Redis: evicted guest memory leaves the host for a Redis server (a
//! standalone `redis-server`, or a Redis Cluster found from one of its nodes), over TCP or TLS,
//! so a host can evict more than its disk holds and share one memory pool with other hosts.
//!
//! Layout ([`keys`]): one hash per 2 MiB run of slots, namespaced per memout instance and
//! guest. A swap-out is one pipelined round trip (an HSET per key touched), a swap-in one
//! (an HMGET per key), a discard one (HDEL); in a cluster each pipeline is split by the
//! master that owns each key (module `link`). At most [`RedisStoreConfig::connections`]
//! requests are in flight; a broken connection is replaced with back-off (module `pool`).
//! Keys are deleted when the store is dropped (the guest ended), and [`RedisStore::connect`]
//! first deletes any left under the same namespace by an instance of the same name that
//! crashed.
//!
//! Failures keep the guest's data safe: an eviction whose write fails leaves the frames
//! resident (memout reports the error), and a swap-in that finds a page missing (the server
//! was restarted empty, or a key was deleted) is an error naming the slot, which memout turns
//! into stopping the guest with the frame's address. It never reads as zeros.

pub mod keys;
mod link;
mod pool;

use crate::store::{BackingStore, SLOT_SIZE};
use keys::{Namespace, pieces};
use link::{Conn, target};
use pool::{Failure, Pool};
use redis::RedisError;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use thiserror::Error;

/// Why the Redis store failed.
#[derive(Debug, Error)]
pub enum Error {
    /// The URL is not a Redis URL the client understands (shown without credentials).
    #[error("bad Redis URL {url}: {source}")]
    Url {
        /// The URL, redacted.
        url: String,
        /// The cause.
        #[source]
        source: RedisError,
    },
    /// A CA to trust was given for a URL that does not use TLS (`redis://`, not `rediss://`).
    #[error("a CA certificate was given for {url}, which does not use TLS (use rediss://)")]
    CaWithoutTls {
        /// The URL, redacted.
        url: String,
    },
    /// The CA certificates are not PEM certificates (none found, or one is broken).
    #[error("the CA certificates given for {url} hold no valid PEM certificate")]
    CaPem {
        /// The URL, redacted.
        url: String,
        /// What was wrong with a certificate, if one was found.
        #[source]
        source: Option<rustls::pki_types::pem::Error>,
    },
    /// The client refused the TLS settings.
    #[error("TLS settings for {url}: {source}")]
    Tls {
        /// The URL, redacted.
        url: String,
        /// The cause.
        #[source]
        source: RedisError,
    },
    /// An instance or guest name that cannot be part of a key.
    #[error(transparent)]
    Name(#[from] keys::BadName),
    /// The server could not be reached for the whole retry time.
    #[error("Redis at {store} unreachable: {source}")]
    Unreachable {
        /// The server, redacted.
        store: String,
        /// The last error.
        #[source]
        source: RedisError,
    },
    /// The server refused a request (e.g. out of memory under `noeviction`).
    #[error("Redis at {store} refused a request: {source}")]
    Refused {
        /// The server, redacted.
        store: String,
        /// Its answer.
        #[source]
        source: RedisError,
    },
    /// A page memout stored is not in the server any more.
    #[error("slot {slot} is missing from Redis key {key} (server restarted empty or key deleted)")]
    Missing {
        /// The key.
        key: String,
        /// The slot.
        slot: u64,
    },
    /// A stored page has the wrong size.
    #[error("slot {slot} in Redis key {key} holds {len} bytes, not a page")]
    Corrupt {
        /// The key.
        key: String,
        /// The slot.
        slot: u64,
        /// Its size.
        len: usize,
    },
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, Error>;

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        let kind = match &e {
            Error::Missing { .. } => io::ErrorKind::NotFound,
            Error::Corrupt { .. } => io::ErrorKind::InvalidData,
            Error::Unreachable { .. } => io::ErrorKind::NotConnected,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

/// How to reach the store and what to call the keys. Its `Debug` hides the password.
#[derive(Clone)]
pub struct RedisStoreConfig {
    /// `redis://[user:password@]host:port/db`, or `rediss://…` for TLS.
    pub url: String,
    /// CA certificates (PEM) to trust for `rediss://` instead of the system's; refused with
    /// `redis://`.
    pub ca_pem: Option<Vec<u8>>,
    /// The URL names one node of a Redis Cluster: keys go to the master that owns their hash
    /// slot (found from the node, following MOVED/ASK redirections).
    pub cluster: bool,
    /// The memout instance (keys of instances with different names never meet).
    pub instance: String,
    /// The guest.
    pub guest: String,
    /// Most bytes the guest may keep in the store.
    pub capacity_bytes: u64,
    /// Connections, so requests in flight, at most.
    pub connections: usize,
    /// Timeout of one connect, read or write.
    pub timeout: Duration,
    /// How long a request is retried while the server is unreachable.
    pub retry_for: Duration,
}

impl RedisStoreConfig {
    /// Defaults: 4 connections, 2 s timeouts, 5 s of retrying.
    pub fn new(url: &str, instance: &str, guest: &str, capacity_bytes: u64) -> Self {
        Self {
            url: url.to_string(),
            ca_pem: None,
            cluster: false,
            instance: instance.to_string(),
            guest: guest.to_string(),
            capacity_bytes,
            connections: 4,
            timeout: Duration::from_secs(2),
            retry_for: Duration::from_secs(5),
        }
    }
}

impl std::fmt::Debug for RedisStoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStoreConfig")
            .field("url", &keys::redact(&self.url))
            .field("ca_pem", &self.ca_pem.as_ref().map(Vec::len))
            .field("cluster", &self.cluster)
            .field("instance", &self.instance)
            .field("guest", &self.guest)
            .field("capacity_bytes", &self.capacity_bytes)
            .field("connections", &self.connections)
            .field("timeout", &self.timeout)
            .field("retry_for", &self.retry_for)
            .finish()
    }
}

/// Evicted memory of one guest, in Redis.
pub struct RedisStore {
    ns: Namespace,
    pool: Pool,
    capacity_slots: u64,
    stored: AtomicU64,
    store: String,
    /// The URL names a cluster node.
    cluster: bool,
    /// The server answered at connect: only then does dropping the store delete its keys
    /// (a store that never reached its server does not wait out the retry time twice).
    reached: bool,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("store", &self.store)
            .field("namespace", &self.ns.prefix())
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects (checking the server answers) and deletes keys a crashed instance of the same
    /// name left for this guest.
    pub fn connect(cfg: &RedisStoreConfig) -> Result<Self> {
        let mut store = keys::redact(&cfg.url);
        if cfg.cluster {
            store.push_str(" (cluster)");
        }
        let ns = Namespace::new(&cfg.instance, &cfg.guest)?;
        let target = target(cfg, &store)?;
        let pool = Pool::new(
            target,
            cfg.connections,
            cfg.timeout,
            cfg.retry_for,
            store.clone(),
        );
        let mut s = Self {
            ns,
            pool,
            capacity_slots: cfg.capacity_bytes / SLOT_SIZE,
            stored: AtomicU64::new(0),
            store,
            cluster: cfg.cluster,
            reached: false,
        };
        s.run(|c| c.query_cmd::<String>(&redis::cmd("PING")))?;
        s.reached = true;
        let swept = s.sweep()?;
        if swept > 0 {
            tracing::warn!(store = %s.store, namespace = s.ns.prefix(), keys = swept,
                "deleted keys left by an earlier instance of this name");
        }
        Ok(s)
    }

    fn run<T>(&self, f: impl FnMut(&mut Conn) -> std::result::Result<T, RedisError>) -> Result<T> {
        self.pool.run(f).map_err(|e| match e {
            Failure::Unreachable(source) => Error::Unreachable {
                store: self.store.clone(),
                source,
            },
            Failure::Refused(source) => Error::Refused {
                store: self.store.clone(),
                source,
            },
        })
    }

    /// Deletes every key of this guest's namespace; returns how many there were. On one
    /// server it finds them with SCAN; in a cluster (where SCAN sees one node) it deletes
    /// every key the guest's capacity can use.
    pub fn sweep(&self) -> Result<u64> {
        let found: Vec<String> = if self.cluster {
            let keys = self.capacity_slots.div_ceil(keys::SLOTS_PER_KEY);
            (0..keys).map(|k| self.ns.key(k)).collect()
        } else {
            self.scan()?
        };
        let mut deleted = 0;
        for batch in found.chunks(512) {
            let mut pipe = redis::pipe();
            for k in batch {
                pipe.cmd("UNLINK").arg(k);
            }
            let n: Vec<u64> = self.run(|c| c.query(&pipe))?;
            deleted += n.iter().sum::<u64>();
        }
        self.stored.store(0, Relaxed);
        Ok(deleted)
    }

    /// The keys of this guest's namespace on one server.
    fn scan(&self) -> Result<Vec<String>> {
        let pattern = self.ns.pattern();
        self.run(|c| {
            let mut cursor = 0u64;
            let mut all = Vec::new();
            loop {
                let (next, batch): (u64, Vec<String>) = c.query_cmd(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000),
                )?;
                all.extend(batch);
                if next == 0 {
                    return Ok(all);
                }
                cursor = next;
            }
        })
    }
}

impl BackingStore for RedisStore {
    fn write(&self, slot: u64, data: &[u8]) -> io::Result<()> {
        self.write_vectored(slot, &[data])
    }

    fn write_vectored(&self, slot: u64, bufs: &[&[u8]]) -> io::Result<()> {
        let pages: Vec<&[u8]> = bufs
            .iter()
            .flat_map(|b| b.chunks(SLOT_SIZE as usize))
            .collect();
        if pages.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for p in pieces(slot, pages.len() as u64) {
            let cmd = pipe.cmd("HSET").arg(self.ns.key(p.key));
            for i in 0..p.len {
                cmd.arg(p.field + i).arg(pages[(p.at + i) as usize]);
            }
        }
        let added: Vec<u64> = self.run(|c| c.query(&pipe))?;
        self.stored.fetch_add(added.iter().sum(), Relaxed);
        Ok(())
    }

    fn read(&self, slot: u64, buf: &mut [u8]) -> io::Result<()> {
        let ps = pieces(slot, buf.len() as u64 / SLOT_SIZE);
        if ps.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for p in &ps {
            let cmd = pipe.cmd("HMGET").arg(self.ns.key(p.key));
            for i in 0..p.len {
                cmd.arg(p.field + i);
            }
        }
        let got: Vec<Vec<Option<Vec<u8>>>> = self.run(|c| c.query(&pipe))?;
        for (p, values) in ps.iter().zip(got) {
            for (i, v) in values.into_iter().enumerate() {
                let s = slot + p.at + i as u64;
                let v = v.ok_or_else(|| Error::Missing {
                    key: self.ns.key(p.key),
                    slot: s,
                })?;
                if v.len() != SLOT_SIZE as usize {
                    return Err(Error::Corrupt {
                        key: self.ns.key(p.key),
                        slot: s,
                        len: v.len(),
                    }
                    .into());
                }
                let at = ((p.at + i as u64) * SLOT_SIZE) as usize;
                buf[at..at + v.len()].copy_from_slice(&v);
            }
        }
        Ok(())
    }

    fn discard(&self, slot: u64, pages: u64) -> io::Result<()> {
        if pages == 0 {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for p in pieces(slot, pages) {
            let cmd = pipe.cmd("HDEL").arg(self.ns.key(p.key));
            for i in 0..p.len {
                cmd.arg(p.field + i);
            }
        }
        let removed: Vec<u64> = self.run(|c| c.query(&pipe))?;
        let n = removed.iter().sum();
        let _ = self
            .stored
            .fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(n)));
        Ok(())
    }

    fn capacity_slots(&self) -> u64 {
        self.capacity_slots
    }

    fn bytes_on_disk(&self) -> u64 {
        self.stored.load(Relaxed) * SLOT_SIZE
    }

    fn describe(&self) -> String {
        format!("{} ({})", self.store, self.ns.prefix())
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        if !self.reached {
            return;
        }
        if let Err(e) = self.sweep() {
            tracing::warn!(store = %self.store, namespace = self.ns.prefix(),
                "could not delete the guest's keys: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_debug_hides_the_password() {
        let cfg = RedisStoreConfig::new("redis://:hunter2@10.0.0.1:6379/0", "i", "g", 1 << 20);
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("10.0.0.1:6379"), "{shown}");
    }
}
