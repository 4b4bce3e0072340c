//! Server integration tests: the real server in-process on loopback, driven by raw bytes
//! (so every byte on the wire is asserted) and by loopback echo servers.

/// Method preference, `05 FF`, RFC 1929 success and failure, no password in logs.
mod auth;
/// BIND: both replies, the expected-peer filter, the wait timeout.
mod bind;
/// CONNECT to IPv4, IPv6 and names; pipelining; half-close; byte-at-a-time handshakes.
mod connect;
/// Limits and timeouts, many concurrent sessions, shutdown.
mod limits;
/// Malformed input: the RFC's answer or a clean close, never a hang.
mod malformed;
/// Rules: deny gives REP 02, order matters.
mod rules;
/// UDP ASSOCIATE: many destinations, source filtering, FRAG, lifetime.
mod udp;

use ferrosocks_proto::{Addr, Command, Encode, Request};

/// The wire form of a request.
pub(crate) fn request(command: Command, dst: &str) -> Vec<u8> {
    let dst: Addr = dst.parse().unwrap();
    Request { command, dst }.to_bytes().to_vec()
}
