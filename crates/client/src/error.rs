//! The one error type of the client. Every variant names what happened, with the byte or
//! step involved, so callers can match on it instead of parsing messages.

use std::fmt;
use std::io;

use ferrosocks_proto::{ClientHandshakeError, ProtocolError, Rep};

use crate::proxy_url::UrlError;

/// A step of talking to the proxy, named by [`Error::Timeout`] and [`Error::Closed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// Resolving a name locally (the proxy's host, or a target with `socks5://`).
    Resolve,
    /// Opening the TCP connection to the proxy.
    Connect,
    /// Method negotiation, authentication, the request and the (first) reply.
    Handshake,
    /// Waiting for the second BIND reply, which announces the incoming peer.
    Accept,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Resolve => "name resolution",
            Step::Connect => "connecting to the proxy",
            Step::Handshake => "the SOCKS handshake",
            Step::Accept => "waiting for the BIND peer",
        })
    }
}

/// Why a SOCKS operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A socket operation failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The proxy sent bytes that break RFC 1928 or RFC 1929.
    #[error("the proxy broke the protocol: {0}")]
    Protocol(#[from] ProtocolError),
    /// The proxy answered the request with this non-zero REP code. Unassigned codes are
    /// kept as they arrived.
    #[error("the proxy refused the request: {0} (REP {code:#04x})", code = .0 .0)]
    Rejected(Rep),
    /// The proxy rejected the username/password with this RFC 1929 status.
    #[error("the proxy rejected the username/password (status {0:#04x})")]
    AuthFailed(u8),
    /// The proxy accepts none of the offered authentication methods (`05 FF`). Offering
    /// credentials may help.
    #[error("the proxy accepts none of the offered authentication methods")]
    NoAcceptableMethod,
    /// A step took longer than its configured timeout.
    #[error("timed out during {0}")]
    Timeout(Step),
    /// The proxy closed the connection before the step was complete.
    #[error("the proxy closed the connection during {0}")]
    Closed(Step),
    /// The proxy URL cannot be used.
    #[error("invalid proxy URL: {0}")]
    InvalidUrl(#[from] UrlError),
    /// The target address cannot be sent to the proxy.
    #[error("invalid target address {input:?}: {reason}")]
    InvalidTarget {
        /// The target as given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A name could not be resolved locally.
    #[error("cannot resolve {host:?}: {source}")]
    Resolve {
        /// The name.
        host: String,
        /// The resolver's error (`NotFound` when it returned no address).
        #[source]
        source: io::Error,
    },
    /// The proxy ended the UDP association by closing its control connection.
    #[error("the proxy ended the UDP association (control connection closed)")]
    AssociationClosed,
}

impl From<ClientHandshakeError> for Error {
    fn from(e: ClientHandshakeError) -> Self {
        match e {
            ClientHandshakeError::Protocol(p) => Error::Protocol(p),
            ClientHandshakeError::NoAcceptableMethod => Error::NoAcceptableMethod,
            ClientHandshakeError::AuthFailed(status) => Error::AuthFailed(status),
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
