//! Name resolution, outgoing connects, and the one classification of connect errors.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use ferrosocks_proto::Addr;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{sleep, Instant};

use crate::error::{ConnectFailure, Phase, SessionError};
use crate::tcp_tuning::{self, Local};

/// How long one connect attempt runs alone before the next address is tried beside it
/// (RFC 8305's recommended "connection attempt delay").
const ATTEMPT_STAGGER: Duration = Duration::from_millis(250);

/// Turns a SOCKS address into socket addresses: an IP as it is, a name through the system
/// resolver. An empty answer is an error.
pub(crate) async fn resolve(addr: &Addr) -> Result<Vec<SocketAddr>, SessionError> {
    match addr {
        Addr::Ip(sa) => Ok(vec![*sa]),
        Addr::Domain(host, port) => {
            let failed = |reason: String| SessionError::ResolveFailed {
                host: host.to_string(),
                reason,
            };
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), *port))
                .await
                .map_err(|e| failed(e.to_string()))?
                .collect();
            if addrs.is_empty() {
                return Err(failed("no addresses".into()));
            }
            Ok(interleave_families(addrs))
        }
    }
}

/// Orders addresses IPv6, IPv4, IPv6, IPv4, ... (keeping each family's order), so that a
/// broken family costs one stagger delay rather than every one of its addresses.
fn interleave_families(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let (v6, v4): (Vec<_>, Vec<_>) = addrs.into_iter().partition(SocketAddr::is_ipv6);
    let mut out = Vec::with_capacity(v6.len() + v4.len());
    let (mut a, mut b) = (v6.into_iter(), v4.into_iter());
    loop {
        match (a.next(), b.next()) {
            (None, None) => return out,
            (x, y) => out.extend(x.into_iter().chain(y)),
        }
    }
}

/// The one place an `io::Error` from connect becomes a [`ConnectFailure`].
pub fn classify(error: &io::Error) -> ConnectFailure {
    match error.kind() {
        io::ErrorKind::ConnectionRefused => ConnectFailure::ConnectionRefused,
        io::ErrorKind::NetworkUnreachable => ConnectFailure::NetworkUnreachable,
        io::ErrorKind::HostUnreachable => ConnectFailure::HostUnreachable,
        io::ErrorKind::TimedOut => ConnectFailure::TimedOut,
        _ => ConnectFailure::Other,
    }
}

/// Connects to the first address that answers, trying them in order and starting the next
/// attempt when one fails or has run for [`ATTEMPT_STAGGER`] (happy eyeballs), all within
/// `timeout`, each socket with the tunnel options (`local` for loopback targets) set
/// before it connects. On failure, the error of the last attempt to fail is reported.
pub(crate) async fn connect_any(
    addrs: &[SocketAddr],
    timeout: Duration,
    local: Local<'_>,
) -> Result<(TcpStream, SocketAddr), SessionError> {
    if let [only] = addrs {
        // The common case (an IP target) needs no racing, and no task per attempt.
        return match tokio::time::timeout(timeout, tcp_tuning::connect(*only, local)).await {
            Err(_) => Err(SessionError::Timeout(Phase::Connect)),
            Ok(Ok(stream)) => Ok((stream, *only)),
            Ok(Err(source)) => Err(SessionError::ConnectFailed {
                kind: classify(&source),
                target: only.to_string(),
                source,
            }),
        };
    }
    let deadline = Instant::now() + timeout;
    let mut attempts = JoinSet::new();
    let mut next = addrs.iter().copied();
    let mut last_error: Option<(SocketAddr, io::Error)> = None;
    let mut start_next = true;
    // Each attempt is a task of its own, which cannot borrow the configuration.
    let congestion: Option<std::sync::Arc<str>> = local.congestion.map(Into::into);
    let notsent_lowat = local.notsent_lowat;
    loop {
        if start_next {
            if let Some(addr) = next.next() {
                let congestion = congestion.clone();
                attempts.spawn(async move {
                    let local = Local {
                        congestion: congestion.as_deref(),
                        notsent_lowat,
                    };
                    (addr, tcp_tuning::connect(addr, local).await)
                });
            }
        }
        if attempts.is_empty() {
            break;
        }
        let more_waiting = next.len() > 0;
        tokio::select! {
            joined = attempts.join_next() => {
                match joined {
                    Some(Ok((addr, Ok(stream)))) => return Ok((stream, addr)),
                    Some(Ok((addr, Err(e)))) => last_error = Some((addr, e)),
                    // A panicked or cancelled attempt counts as a failure of unknown cause.
                    Some(Err(e)) => last_error = Some((addrs[0], io::Error::other(e))),
                    None => break,
                }
                start_next = true;
            }
            _ = sleep(ATTEMPT_STAGGER), if more_waiting => start_next = true,
            _ = tokio::time::sleep_until(deadline) => return Err(SessionError::Timeout(Phase::Connect)),
        }
    }
    let (addr, source) = last_error.unwrap_or_else(|| {
        (
            SocketAddr::from(([0, 0, 0, 0], 0)),
            io::Error::new(io::ErrorKind::InvalidInput, "no address to connect to"),
        )
    });
    Err(SessionError::ConnectFailed {
        kind: classify(&source),
        target: addr.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_errors_are_classified_by_errno() {
        let os = io::Error::from_raw_os_error;
        assert_eq!(classify(&os(111)), ConnectFailure::ConnectionRefused); // ECONNREFUSED
        assert_eq!(classify(&os(101)), ConnectFailure::NetworkUnreachable); // ENETUNREACH
        assert_eq!(classify(&os(113)), ConnectFailure::HostUnreachable); // EHOSTUNREACH
        assert_eq!(classify(&os(110)), ConnectFailure::TimedOut); // ETIMEDOUT
        assert_eq!(classify(&os(13)), ConnectFailure::Other); // EACCES
    }

    #[test]
    fn families_are_interleaved() {
        let a: Vec<SocketAddr> = ["1.1.1.1:1", "2.2.2.2:1", "[::1]:1", "[::2]:1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let out = interleave_families(a);
        let s: Vec<String> = out.iter().map(|a| a.to_string()).collect();
        assert_eq!(s, ["[::1]:1", "1.1.1.1:1", "[::2]:1", "2.2.2.2:1"]);
    }

    #[tokio::test]
    async fn refused_everywhere_reports_refused() {
        // Bind then drop listeners to find ports nobody listens on.
        let mut addrs = Vec::new();
        for _ in 0..2 {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            addrs.push(l.local_addr().unwrap());
        }
        let err = connect_any(&addrs, Duration::from_secs(5), Local::default())
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                SessionError::ConnectFailed {
                    kind: ConnectFailure::ConnectionRefused,
                    ..
                }
            ),
            "{err}"
        );
    }
}
