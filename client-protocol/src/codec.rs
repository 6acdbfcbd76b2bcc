//! Framing of control-socket messages: the one place that knows bincode.
//!
//! A frame is a little-endian `u32` payload length followed by the payload, a bincode-2
//! (standard configuration) encoding of a [`Request`](crate::control::Request) or
//! [`Response`](crate::control::Response). Payloads above [`MAX_FRAME`] are refused before
//! anything is read or allocated, and decoding is bounded by the same limit.
//!
//! ```
//! use memout_protocol::codec::{decode, encode_frame, read_frame};
//! use memout_protocol::control::Request;
//! let frame = encode_frame(&Request::List).unwrap();
//! let payload = read_frame(&mut &frame[..]).unwrap();
//! assert_eq!(decode::<Request>(&payload).unwrap(), Request::List);
//! ```

use crate::control::MAX_FRAME;
use bincode::config::{Configuration, Limit, LittleEndian, Varint};
use std::io::{self, Read};
use thiserror::Error;

/// Errors reading, decoding or encoding a frame.
#[derive(Debug, Error)]
pub enum Error {
    /// The length prefix is above [`MAX_FRAME`].
    #[error("frame of {0} bytes is above the {MAX_FRAME}-byte limit")]
    TooLarge(u64),
    /// The stream ended inside a frame.
    #[error("connection closed inside a frame")]
    Truncated,
    /// The stream ended cleanly between frames.
    #[error("connection closed")]
    Closed,
    /// The payload is not a valid message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// Reading failed.
    #[error("reading a frame: {0}")]
    Io(#[from] io::Error),
}

/// `Result` with this module's [`enum@Error`].
pub type Result<T> = std::result::Result<T, Error>;

type Config = Configuration<LittleEndian, Varint, Limit<MAX_FRAME>>;

fn config() -> Config {
    bincode::config::standard().with_limit::<MAX_FRAME>()
}

/// Encodes `msg` as one frame (length prefix included).
pub fn encode_frame<T: bincode::Encode>(msg: &T) -> Result<Vec<u8>> {
    let payload =
        bincode::encode_to_vec(msg, config()).map_err(|e| Error::Malformed(e.to_string()))?;
    if payload.len() > MAX_FRAME {
        return Err(Error::TooLarge(payload.len() as u64));
    }
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&payload);
    Ok(frame)
}

/// Decodes a whole payload; trailing bytes are an error.
pub fn decode<T: bincode::Decode<()>>(payload: &[u8]) -> Result<T> {
    let (msg, used) = bincode::decode_from_slice(payload, config())
        .map_err(|e| Error::Malformed(e.to_string()))?;
    if used != payload.len() {
        return Err(Error::Malformed(format!(
            "{} trailing bytes after the message",
            payload.len() - used
        )));
    }
    Ok(msg)
}

/// Reads one frame's payload. A clean end of stream before the prefix is [`Error::Closed`].
pub fn read_frame(r: &mut impl Read) -> Result<Vec<u8>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Err(Error::Closed),
            Ok(0) => return Err(Error::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_le_bytes(len) as u64;
    if len > MAX_FRAME as u64 {
        return Err(Error::TooLarge(len));
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => Error::Truncated,
        _ => Error::Io(e),
    })?;
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{Policy, Request, Response};
    use proptest::prelude::*;

    #[test]
    fn round_trips_requests() {
        let reqs = [
            Request::Hello {
                version: 1,
                client: "t".into(),
            },
            Request::Resize {
                guest: "g".into(),
                bytes: 256 << 20,
                release_deadline_ms: 500,
                wait: true,
            },
            Request::SetBudget {
                guest: "g".into(),
                bytes: None,
            },
            Request::SetPolicy {
                guest: "g".into(),
                policy: Policy::Eager,
            },
        ];
        for r in reqs {
            let f = encode_frame(&r).unwrap();
            assert_eq!(
                decode::<Request>(&read_frame(&mut &f[..]).unwrap()).unwrap(),
                r
            );
        }
    }

    #[test]
    fn refuses_oversized_truncated_and_trailing() {
        let mut big = ((MAX_FRAME + 1) as u32).to_le_bytes().to_vec();
        big.extend_from_slice(&[0; 16]);
        assert!(matches!(read_frame(&mut &big[..]), Err(Error::TooLarge(_))));
        let f = encode_frame(&Request::List).unwrap();
        assert!(matches!(
            read_frame(&mut &f[..f.len() - 1]),
            Err(Error::Truncated)
        ));
        assert!(matches!(read_frame(&mut &f[..2]), Err(Error::Truncated)));
        assert!(matches!(read_frame(&mut &[][..]), Err(Error::Closed)));
        let mut p = read_frame(&mut &f[..]).unwrap();
        p.push(0);
        assert!(matches!(decode::<Request>(&p), Err(Error::Malformed(_))));
    }

    #[test]
    fn a_huge_claimed_string_length_does_not_allocate() {
        // Variant 2 (Status) followed by a varint length of 2^60 for the guest name.
        let mut p = vec![2u8, 0xfd];
        p.extend_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(matches!(decode::<Request>(&p), Err(Error::Malformed(_))));
    }

    proptest! {
        #[test]
        fn random_payloads_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode::<Request>(&bytes);
            let _ = decode::<Response>(&bytes);
        }
    }
}
