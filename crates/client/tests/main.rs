//! Integration tests of the client against scripted fake SOCKS5 servers on loopback.
//!
//! One binary (autotests = false) so the shared fake server compiles once.

/// The scripted fake server and the deadline every test runs under.
mod support;

/// No-auth and username/password, method negotiation failures.
mod auth;
/// BIND: two replies, accept timeout.
mod bind;
/// CONNECT with IPv4, IPv6 and domain targets, socks5 vs socks5h, buffered tunnel bytes.
mod connect;
/// Failure replies, protocol violations, early close, timeouts: typed errors, no panic.
mod errors;
/// End to end against the real in-process server (testkit): every command once.
mod real_server;
/// Against Dante and microsocks, started on loopback (testkit::daemons).
mod third_party;
/// UDP ASSOCIATE through a fake relay, and the association's tie to its control connection.
mod udp;
