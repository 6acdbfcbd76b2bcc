//! # memout-protocol
//!
//! The contracts between the parts of memout, and nothing else:
//!
//! ```text
//!  guest (C driver) ──ring + doorbell──▶ memout-server ◀──control socket── memoutctl
//!                     └─ this crate: [`ring`] ─┘          └─ this crate: [`control`] ─┘
//! ```
//!
//! [`ring`] is the guest↔host ABI: a fixed info page, a request ring of 64-byte descriptors in
//! guest memory, a doorbell I/O port, opcodes and status codes. Every structure is `repr(C)`,
//! little-endian, mirrored in `guest-driver-c/include/memout_abi.h`, and checked against that
//! header by a test that compiles it with gcc.
//!
//! [`fastpath`] is shared allocator state (magazines of granted frames, a free queue) that
//! lets a guest allocate and free single pages without a VM exit.
//!
//! [`control`] is the operators' protocol: requests and responses framed by [`codec`]
//! (length-prefixed bincode 2, with a version handshake and a maximum frame size).
//!
//! ```
//! use memout_protocol::ring::{Descriptor, Opcode};
//! let d = Descriptor { opcode: Opcode::Alloc as u16, pages: 16, ..Default::default() };
//! assert_eq!(Descriptor::decode(&d.to_bytes()), d);
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod codec;
pub mod control;
pub mod fastpath;
pub mod ring;
