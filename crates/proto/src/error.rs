//! Decoding errors. `Incomplete` is not a failure: it asks for more bytes.

use thiserror::Error;

/// The result of trying to decode a message from a buffer that may hold only part of it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The buffer ends before the message does; at least `needed` more bytes are required.
    #[error("incomplete message: at least {needed} more byte(s) needed")]
    Incomplete {
        /// The minimum number of further bytes before decoding can make progress.
        needed: usize,
    },
    /// The bytes can never form a valid message.
    #[error(transparent)]
    Invalid(#[from] ProtocolError),
}

/// A violation of RFC 1928 or RFC 1929, carrying the offending byte where there is one.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtocolError {
    /// The VER field of a SOCKS message was not 5.
    #[error("unsupported SOCKS version {0:#04x} (expected 0x05)")]
    BadVersion(u8),
    /// The VER field of an RFC 1929 sub-negotiation message was not 1.
    #[error("unsupported username/password sub-negotiation version {0:#04x} (expected 0x01)")]
    BadUserPassVersion(u8),
    /// A reserved field was not zero.
    #[error("reserved field is {0:#04x} (expected 0x00)")]
    BadReserved(u8),
    /// ATYP was not 1 (IPv4), 3 (domain name) or 4 (IPv6).
    #[error("unknown address type {0:#04x}")]
    UnknownAtyp(u8),
    /// CMD was not CONNECT, BIND or UDP ASSOCIATE.
    #[error("unknown command {0:#04x}")]
    UnknownCommand(u8),
    /// A domain name of length zero.
    #[error("empty domain name")]
    EmptyDomain,
    /// A domain name that is not valid UTF-8 (carries the first invalid byte).
    #[error("domain name is not valid UTF-8 (byte {0:#04x})")]
    DomainNotUtf8(u8),
    /// A server selected a method the client did not offer.
    #[error("server selected method {0:#04x}, which was not offered")]
    UnexpectedMethod(u8),
    /// Bytes arrived where the protocol allows none (for example before a reply was awaited).
    #[error("unexpected trailing data ({0} byte(s))")]
    TrailingData(usize),
}
