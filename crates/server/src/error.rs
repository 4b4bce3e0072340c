//! Session errors and THE ONE mapping from an error to a REP code.

use std::io;

use ferrosocks_proto::{HandshakeError, ProtocolError, Rep};

/// The step of a session a timeout happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Greeting, authentication and request.
    Handshake,
    /// Resolving and connecting to the target.
    Connect,
    /// Waiting for the peer of a BIND.
    BindWait,
}

/// How an outgoing connection failed, classified once from the OS error (see
/// [`crate::resolve::classify`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// `ENETUNREACH`: no route to the network.
    NetworkUnreachable,
    /// `EHOSTUNREACH`: the host does not answer at the link or route level.
    HostUnreachable,
    /// `ECONNREFUSED`: the host answered with a reset.
    ConnectionRefused,
    /// `ETIMEDOUT` from the kernel: the SYN was never answered.
    TimedOut,
    /// Anything else.
    Other,
}

/// Everything that can end a session before its tunnel runs.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The client broke the protocol.
    #[error("protocol violation: {0}")]
    Protocol(#[from] HandshakeError),
    /// The client's credentials were rejected (answered by the RFC 1929 status, not a REP).
    #[error("authentication failed for user {user:?}")]
    AuthFailed {
        /// The username the client gave (never the password).
        user: String,
    },
    /// None of the client's methods is acceptable (answered by `05 FF`, not a REP).
    #[error("no acceptable authentication method offered")]
    NoAcceptableMethod,
    /// A rule denied the request; `rule` is its 1-based index, or `None` for the implicit
    /// deny after the last rule.
    #[error("denied by {}", match .rule { Some(n) => format!("rule #{n}"), None => "the default deny".to_owned() })]
    RuleDenied {
        /// Which rule.
        rule: Option<usize>,
    },
    /// A CONNECT to one of the server's own listening addresses: each such tunnel opens
    /// another session, so one client could chain its pipelined requests through the server
    /// until every connection slot is taken.
    #[error("{0} is this server's own listening address")]
    OwnListener(std::net::SocketAddr),
    /// The target's name does not resolve.
    #[error("cannot resolve {host}: {reason}")]
    ResolveFailed {
        /// The name asked for.
        host: String,
        /// What the resolver said.
        reason: String,
    },
    /// Every address of the target failed; the kind is that of the last attempt.
    #[error("connect to {target} failed: {source}")]
    ConnectFailed {
        /// The classified failure.
        kind: ConnectFailure,
        /// The address that failed last.
        target: String,
        /// The OS error.
        source: io::Error,
    },
    /// A deadline passed.
    #[error("timed out during {0:?}")]
    Timeout(Phase),
    /// A request other than UDP ASSOCIATE on a connection that controls UDP associations.
    #[error("{0:?} is not accepted on a connection that controls UDP associations")]
    NotAfterUdpAssociate(ferrosocks_proto::Command),
    /// A limit was reached (UDP associations, ...).
    #[error("limit reached: {0}")]
    LimitReached(&'static str),
    /// The client closed the connection before the session could finish.
    #[error("client closed the connection")]
    ClientClosed,
    /// The server's drain time ran out while the session was still waiting (for BIND's
    /// incoming connection).
    #[error("server shutdown")]
    Shutdown,
    /// A local socket operation failed (bind, listen, accept, ...).
    #[error("local I/O error: {0}")]
    Io(#[from] io::Error),
}

/// The REP code a failure is answered with, or `None` when the failure is not answered by a
/// SOCKS reply at all (it happened before a request was read, or the client is gone).
///
/// This is the only function in the project that chooses a REP code. The match is
/// exhaustive on purpose: a new error variant must decide its code here.
pub fn rep(error: &SessionError) -> Option<Rep> {
    let rep = match error {
        SessionError::Protocol(HandshakeError { stage, error }) => {
            if *stage != ferrosocks_proto::Stage::Request {
                // Before the request, the RFC has no reply to give: close.
                return None;
            }
            match error {
                ProtocolError::UnknownCommand(_) => Rep::COMMAND_NOT_SUPPORTED,
                ProtocolError::UnknownAtyp(_) => Rep::ADDRESS_TYPE_NOT_SUPPORTED,
                ProtocolError::BadVersion(_)
                | ProtocolError::BadUserPassVersion(_)
                | ProtocolError::BadReserved(_)
                | ProtocolError::EmptyDomain
                | ProtocolError::DomainNotUtf8(_)
                | ProtocolError::UnexpectedMethod(_)
                | ProtocolError::TrailingData(_) => Rep::GENERAL_FAILURE,
            }
        }
        SessionError::AuthFailed { .. }
        | SessionError::NoAcceptableMethod
        | SessionError::ClientClosed => return None,
        SessionError::RuleDenied { .. } | SessionError::OwnListener(_) => {
            Rep::CONNECTION_NOT_ALLOWED
        }
        SessionError::NotAfterUdpAssociate(_) => Rep::COMMAND_NOT_SUPPORTED,
        SessionError::ResolveFailed { .. } => Rep::HOST_UNREACHABLE,
        SessionError::ConnectFailed { kind, .. } => match kind {
            ConnectFailure::NetworkUnreachable => Rep::NETWORK_UNREACHABLE,
            ConnectFailure::HostUnreachable => Rep::HOST_UNREACHABLE,
            ConnectFailure::ConnectionRefused => Rep::CONNECTION_REFUSED,
            ConnectFailure::TimedOut => Rep::TTL_EXPIRED,
            ConnectFailure::Other => Rep::GENERAL_FAILURE,
        },
        SessionError::Timeout(phase) => match phase {
            // A handshake timeout before the request has nobody to answer; after the request
            // it cannot happen (the handshake deadline ends with the request).
            Phase::Handshake => return None,
            Phase::Connect | Phase::BindWait => Rep::TTL_EXPIRED,
        },
        SessionError::LimitReached(_) | SessionError::Io(_) | SessionError::Shutdown => {
            Rep::GENERAL_FAILURE
        }
    };
    Some(rep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrosocks_proto::Stage;

    fn connect_failed(kind: ConnectFailure) -> SessionError {
        SessionError::ConnectFailed {
            kind,
            target: "x".into(),
            source: io::Error::other("x"),
        }
    }

    #[test]
    fn every_reply_code_has_its_cause() {
        let proto = |error| {
            SessionError::Protocol(HandshakeError {
                stage: Stage::Request,
                error,
            })
        };
        let cases = [
            (proto(ProtocolError::BadReserved(1)), Rep::GENERAL_FAILURE),
            (
                SessionError::RuleDenied { rule: Some(1) },
                Rep::CONNECTION_NOT_ALLOWED,
            ),
            (
                connect_failed(ConnectFailure::NetworkUnreachable),
                Rep::NETWORK_UNREACHABLE,
            ),
            (
                connect_failed(ConnectFailure::HostUnreachable),
                Rep::HOST_UNREACHABLE,
            ),
            (
                SessionError::ResolveFailed {
                    host: "x".into(),
                    reason: "x".into(),
                },
                Rep::HOST_UNREACHABLE,
            ),
            (
                connect_failed(ConnectFailure::ConnectionRefused),
                Rep::CONNECTION_REFUSED,
            ),
            (SessionError::Timeout(Phase::Connect), Rep::TTL_EXPIRED),
            (SessionError::Shutdown, Rep::GENERAL_FAILURE),
            (connect_failed(ConnectFailure::TimedOut), Rep::TTL_EXPIRED),
            (
                proto(ProtocolError::UnknownCommand(9)),
                Rep::COMMAND_NOT_SUPPORTED,
            ),
            (
                proto(ProtocolError::UnknownAtyp(9)),
                Rep::ADDRESS_TYPE_NOT_SUPPORTED,
            ),
        ];
        for (error, want) in cases {
            assert_eq!(rep(&error), Some(want), "{error}");
        }
    }

    #[test]
    fn failures_before_the_request_get_no_reply() {
        let greeting = SessionError::Protocol(HandshakeError {
            stage: Stage::Greeting,
            error: ProtocolError::BadVersion(4),
        });
        assert_eq!(rep(&greeting), None);
        assert_eq!(rep(&SessionError::NoAcceptableMethod), None);
        assert_eq!(rep(&SessionError::AuthFailed { user: "u".into() }), None);
        assert_eq!(rep(&SessionError::Timeout(Phase::Handshake)), None);
    }
}
