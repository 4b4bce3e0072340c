//! Sans-IO SOCKS5: every message of RFC 1928 and RFC 1929, and both handshakes as state
//! machines.
//!
//! *Sans-IO* means this crate never touches a socket, a task or a clock. Callers hand it
//! bytes and get typed messages or events back; where time matters (fragment reassembly)
//! they pass an [`std::time::Instant`] in. The same code therefore serves the server, the
//! client, the `probe` command and the fuzzers, and it is tested without a network.
//!
//! # Guarantees
//! - No I/O, no clock, no `unsafe`.
//! - Decoding never panics on any input. A prefix of a valid message yields
//!   [`DecodeError::Incomplete`], never an error; the number of bytes consumed is exact, so
//!   pipelined messages are decoded one after another from one buffer.
//!
//! # Layout
//! | module | message (RFC section) |
//! |---|---|
//! | [`method`] | [`Greeting`], [`MethodSelection`] (RFC 1928 §3) |
//! | [`userpass`] | [`UserPassRequest`], [`UserPassStatus`] (RFC 1929 §2) |
//! | [`request`] | [`Request`], [`Command`] (RFC 1928 §4) |
//! | [`addr`] | [`Addr`]: ATYP / ADDR / PORT, shared by all of them (RFC 1928 §5) |
//! | [`reply`] | [`Reply`], [`Rep`] (RFC 1928 §6) |
//! | [`udp`] | [`UdpHeader`], [`udp::decode_datagram`] (RFC 1928 §7) |
//! | [`frag`] | [`frag::Reassembly`]: the §7 reassembly queue and timer |
//! | [`server`] | [`ServerHandshake`]: greeting → user/pass → request |
//! | [`client`] | [`ClientHandshake`]: the mirror image |
//!
//! # Example
//! ```
//! use bytes::BytesMut;
//! use ferrosocks_proto::{Addr, Command, Decode, Encode, Request};
//!
//! let request = Request { command: Command::CONNECT, dst: "example.com:443".parse().unwrap() };
//! let mut buf = BytesMut::new();
//! request.encode(&mut buf);
//! assert_eq!(&buf[..5], &[0x05, 0x01, 0x00, 0x03, 11]);
//!
//! // A partial buffer asks for more; the whole one decodes and reports its length.
//! assert!(Request::decode_prefix(&buf[..7]).is_err());
//! let (decoded, used) = Request::decode_prefix(&buf).unwrap();
//! assert_eq!((decoded, used), (request, buf.len()));
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

#[macro_use]
mod macros;

pub mod addr;
pub mod client;
pub mod codec;
pub mod error;
pub mod frag;
pub mod method;
pub mod reply;
pub mod request;
pub mod server;
pub mod udp;
pub mod userpass;

pub use addr::{Addr, Host};
pub use client::{ClientEvent, ClientHandshake, ClientHandshakeError};
pub use codec::{Decode, Encode, Reader};
pub use error::{DecodeError, ProtocolError};
pub use method::{Greeting, Method, MethodSelection};
pub use reply::{Rep, Reply};
pub use request::{Command, Request};
pub use server::{Event, HandshakeError, ServerHandshake, Stage};
pub use udp::{Frag, UdpHeader};
pub use userpass::{Password, UserPassRequest, UserPassStatus};

/// The VER octet of every SOCKS5 message.
pub const SOCKS_VERSION: u8 = 0x05;
