//! Where an evicted guest's pages live in Redis (pure logic): one hash per 2 MiB run of store
//! slots, `memout:{instance}:{guest}:{n}`, whose fields are the slots' offsets in the run
//! (`0`..`511`) and whose values are the pages. A hash per run keeps the keys few (one per
//! 2 MiB, as a swap-out writes), lets Redis Cluster spread runs over its nodes by key, and
//! still tells a page that is missing (a nil field) from one that is there: a store restarted
//! empty can never hand back zeros in place of data.

use thiserror::Error;

/// Store slots (pages) per Redis key.
pub const SLOTS_PER_KEY: u64 = 512;

/// A name that cannot be used in a key.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("{what} {name:?} cannot name Redis keys: use 1 to 64 letters, digits, '-', '_' or '.'")]
pub struct BadName {
    /// Which name (instance or guest).
    pub what: &'static str,
    /// The name given.
    pub name: String,
}

/// The key prefix of one guest of one memout instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    prefix: String,
}

fn check(what: &'static str, name: &str) -> Result<(), BadName> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(BadName {
            what,
            name: name.to_string(),
        })
    }
}

impl Namespace {
    /// The namespace of `guest` on memout instance `instance`. Names are restricted to
    /// characters that mean nothing to Redis patterns, so a sweep cannot reach other keys.
    pub fn new(instance: &str, guest: &str) -> Result<Self, BadName> {
        check("instance", instance)?;
        check("guest", guest)?;
        Ok(Self {
            prefix: format!("memout:{instance}:{guest}"),
        })
    }

    /// The key holding slots `n * SLOTS_PER_KEY ..`.
    pub fn key(&self, n: u64) -> String {
        format!("{}:{n}", self.prefix)
    }

    /// A `SCAN MATCH` pattern for every key of the namespace.
    pub fn pattern(&self) -> String {
        format!("{}:*", self.prefix)
    }

    /// The prefix, for messages.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

/// One key's share of a run of slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// Which key (`slot / SLOTS_PER_KEY`).
    pub key: u64,
    /// First field (slot offset in the key).
    pub field: u64,
    /// Slots.
    pub len: u64,
    /// Where the piece starts within the run, in slots.
    pub at: u64,
}

/// Splits `len` slots from `slot` at key boundaries.
pub fn pieces(slot: u64, len: u64) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut s = slot;
    while s < slot + len {
        let field = s % SLOTS_PER_KEY;
        let n = (SLOTS_PER_KEY - field).min(slot + len - s);
        out.push(Piece {
            key: s / SLOTS_PER_KEY,
            field,
            len: n,
            at: s - slot,
        });
        s += n;
    }
    out
}

/// `url` without its user and password, for logs and status.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keys_and_pattern() {
        let ns = Namespace::new("host-1", "web.0").unwrap();
        assert_eq!(ns.key(7), "memout:host-1:web.0:7");
        assert_eq!(ns.pattern(), "memout:host-1:web.0:*");
        for bad in ["", "a*", "a:b", "a b", "[x]", &"x".repeat(65)] {
            assert!(Namespace::new("i", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn credentials_never_shown() {
        assert_eq!(
            redact("redis://:s3cret@10.0.0.1:6379/2"),
            "redis://10.0.0.1:6379/2"
        );
        assert_eq!(redact("rediss://user:pw@h/0"), "rediss://h/0");
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn a_run_across_keys() {
        assert_eq!(
            pieces(510, 515),
            vec![
                Piece {
                    key: 0,
                    field: 510,
                    len: 2,
                    at: 0
                },
                Piece {
                    key: 1,
                    field: 0,
                    len: 512,
                    at: 2
                },
                Piece {
                    key: 2,
                    field: 0,
                    len: 1,
                    at: 514
                },
            ]
        );
    }

    proptest! {
        #[test]
        fn pieces_cover_the_run_in_order(slot in 0u64..1 << 30, len in 0u64..5000) {
            let ps = pieces(slot, len);
            let mut next = 0;
            for p in &ps {
                prop_assert_eq!(p.at, next);
                prop_assert_eq!(p.key * SLOTS_PER_KEY + p.field, slot + p.at);
                prop_assert!(p.len > 0 && p.field + p.len <= SLOTS_PER_KEY);
                next += p.len;
            }
            prop_assert_eq!(next, len);
        }
    }
}
