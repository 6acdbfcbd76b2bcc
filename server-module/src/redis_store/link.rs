//! One Redis server or a Redis Cluster, over TCP or TLS: how a connection is made and how a
//! request (a pipeline) is sent on it. To a server a pipeline goes as is; in a cluster it is
//! split by key and each part goes to the master that owns the key's hash slot, following
//! MOVED and ASK redirections (the `redis` crate's cluster client).

use super::{Error, RedisStoreConfig, Result};
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConnection, cluster_pipe};
use redis::{Client, Cmd, Connection, FromRedisValue, Pipeline, RedisResult};
use std::time::Duration;

/// Where connections go.
pub enum Target {
    /// One server.
    Server(Client),
    /// A cluster, found from a seed node.
    Cluster(ClusterClient),
}

/// One open connection.
pub enum Conn {
    /// To one server.
    Server(Connection),
    /// To every master of a cluster, as needed.
    Cluster(Box<ClusterConnection>),
}

impl Target {
    /// A new connection whose connect, reads and writes each time out after `timeout`.
    pub fn connect(&self, timeout: Duration) -> RedisResult<Conn> {
        match self {
            Target::Server(client) => {
                let c = client.get_connection_with_timeout(timeout)?;
                c.set_read_timeout(Some(timeout))?;
                c.set_write_timeout(Some(timeout))?;
                Ok(Conn::Server(c))
            }
            Target::Cluster(client) => {
                let c = client.get_connection()?;
                c.set_read_timeout(Some(timeout))?;
                c.set_write_timeout(Some(timeout))?;
                Ok(Conn::Cluster(Box::new(c)))
            }
        }
    }
}

impl Conn {
    /// Sends `pipe` and returns its answers in order.
    pub fn query<T: FromRedisValue>(&mut self, pipe: &Pipeline) -> RedisResult<T> {
        match self {
            Conn::Server(c) => pipe.query(c),
            Conn::Cluster(c) => {
                let mut split = cluster_pipe();
                for cmd in pipe.cmd_iter() {
                    split.add_command(cmd.clone());
                }
                split.query(c.as_mut())
            }
        }
    }

    /// Sends one command (in a cluster, to the node its key routes to; PING to any).
    pub fn query_cmd<T: FromRedisValue>(&mut self, cmd: &Cmd) -> RedisResult<T> {
        match self {
            Conn::Server(c) => cmd.query(c),
            Conn::Cluster(c) => cmd.query(c.as_mut()),
        }
    }
}

/// How to reach the server or cluster `cfg` names (`store` is its redacted URL).
pub fn target(cfg: &RedisStoreConfig, store: &str) -> Result<Target> {
    let certs = match &cfg.ca_pem {
        None => None,
        Some(_) if !cfg.url.starts_with("rediss://") => {
            return Err(Error::CaWithoutTls { url: store.into() });
        }
        Some(pem) => {
            check_pem(pem).map_err(|source| Error::CaPem {
                url: store.into(),
                source,
            })?;
            Some(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.clone()),
            })
        }
    };
    if cfg.cluster {
        let mut b = ClusterClientBuilder::new([cfg.url.as_str()])
            .connection_timeout(cfg.timeout)
            .response_timeout(cfg.timeout);
        if let Some(c) = certs {
            b = b.certs(c);
        }
        return b.build().map(Target::Cluster).map_err(|source| Error::Url {
            url: store.into(),
            source,
        });
    }
    match certs {
        None => Client::open(cfg.url.as_str()).map_err(|source| Error::Url {
            url: store.into(),
            source,
        }),
        Some(c) => Client::build_with_tls(cfg.url.as_str(), c).map_err(|source| Error::Tls {
            url: store.into(),
            source,
        }),
    }
    .map(Target::Server)
}

/// Ok if `pem` holds at least one certificate and every certificate in it parses.
fn check_pem(pem: &[u8]) -> std::result::Result<(), Option<rustls::pki_types::pem::Error>> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut found = false;
    for c in CertificateDer::pem_slice_iter(pem) {
        c.map_err(Some)?;
        found = true;
    }
    found.then_some(()).ok_or(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis_store::RedisStore;

    #[test]
    fn a_ca_needs_a_tls_url_and_valid_pem() {
        let mut cfg = RedisStoreConfig::new("redis://:hunter2@127.0.0.1:1/0", "i", "g", 1 << 20);
        cfg.ca_pem = Some(b"-----BEGIN CERTIFICATE-----\n".to_vec());
        let e = RedisStore::connect(&cfg).unwrap_err();
        assert!(matches!(e, Error::CaWithoutTls { .. }), "{e:?}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        cfg.url = "rediss://127.0.0.1:1/0".into();
        cfg.ca_pem = Some(b"not a certificate".to_vec());
        let e = RedisStore::connect(&cfg).unwrap_err();
        assert!(matches!(e, Error::CaPem { source: None, .. }), "{e:?}");
        cfg.ca_pem = Some(b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n".to_vec());
        let e = RedisStore::connect(&cfg).unwrap_err();
        assert!(
            matches!(
                e,
                Error::CaPem {
                    source: Some(_),
                    ..
                }
            ),
            "{e:?}"
        );
    }
}
