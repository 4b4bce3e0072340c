//! BIND (RFC 1928 §4): listen where the expected peer can reach us, announce that address
//! in the first reply, accept exactly one connection from the expected peer, name it in the
//! second reply, relay.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ferrosocks_proto::{Addr, Command, Rep, Reply};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::access_log::SessionRecord;
use crate::error::{Phase, SessionError};
use crate::resolve::resolve;
use crate::session::{run_tunnel, Conn};
use crate::tcp_tuning::{self, Local};
use crate::Shared;

pub(crate) async fn handle(
    conn: &mut Conn,
    shared: &Arc<Shared>,
    record: &mut SessionRecord,
    dst: Addr,
) -> Result<(), SessionError> {
    // DST.ADDR names the peer expected to connect (for FTP, the server the client talks
    // to). All zeros means "whoever connects first".
    let expected: Vec<SocketAddr> = match &dst {
        Addr::Ip(sa) if sa.ip().is_unspecified() => Vec::new(),
        Addr::Ip(sa) => vec![*sa],
        Addr::Domain(..) => {
            tokio::time::timeout(shared.config.timeouts.connect, resolve(&dst, &shared.names))
                .await
                .map_err(|_| SessionError::Timeout(Phase::Connect))??
        }
    };
    // Rules see the expected peer; for an all-zero DST that is the zero address itself.
    let rule_targets = if expected.is_empty() {
        vec![SocketAddr::new(IpAddr::from([0, 0, 0, 0]), dst.port())]
    } else {
        expected.clone()
    };
    shared.allowed_targets(conn, Command::BIND, &dst, &rule_targets)?;
    let expected_ips: Vec<IpAddr> = expected.iter().map(|a| a.ip().to_canonical()).collect();

    let listen_ip = expected_ips
        .first()
        .and_then(|ip| local_ip_toward(*ip))
        .map(Ok)
        .unwrap_or_else(|| conn.local_addr().map(|a| a.ip().to_canonical()))?;
    // Made like the server's own listeners, so that on loopback the peer's socket starts
    // with the tunnel options (see `tcp_tuning::tune_listener`).
    let (listener, inherited) =
        crate::listen(SocketAddr::new(listen_ip, 0), Local::of(&shared.config))?;
    let local = listener.local_addr()?;
    let announced = SocketAddr::new(
        shared.config.external_address.unwrap_or(local.ip()),
        local.port(),
    );
    conn.send_reply(&Reply {
        rep: Rep::SUCCEEDED,
        bnd: announced.into(),
    })
    .await?;
    record.rep = Some(Rep::SUCCEEDED);
    tracing::debug!(%announced, ?expected_ips, "BIND listening");

    let deadline = Instant::now() + shared.config.timeouts.bind;
    let (mut peer, peer_addr) = loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, addr) = accepted?;
                if expected_ips.is_empty() || expected_ips.contains(&addr.ip().to_canonical()) {
                    break (stream, addr);
                }
                tracing::info!(client = %conn.client, peer = %addr, "BIND: refused a connection from an unexpected peer");
                refuse(stream);
            }
            () = client_gone(&conn.stream, !conn.input.is_empty()) => return Err(SessionError::ClientClosed),
            () = tokio::time::sleep_until(deadline) => return Err(SessionError::Timeout(Phase::BindWait)),
            () = shared.drain_over.cancelled() => return Err(SessionError::Shutdown),
        }
    };
    drop(listener);
    tcp_tuning::tune_accepted(&peer, peer_addr.ip(), Local::of(&shared.config), inherited);
    record.resolved = Some(peer_addr);
    conn.send_reply(&Reply {
        rep: Rep::SUCCEEDED,
        bnd: peer_addr.into(),
    })
    .await?;

    run_tunnel(conn, &mut peer, shared, record).await;
    Ok(())
}

/// The local address the kernel would use to reach `peer`: "connecting" a UDP socket only
/// consults the routing table and sends nothing.
fn local_ip_toward(peer: IpAddr) -> Option<IpAddr> {
    let any: IpAddr = match peer {
        IpAddr::V4(_) => [0, 0, 0, 0].into(),
        IpAddr::V6(_) => [0u16; 8].into(),
    };
    let probe = std::net::UdpSocket::bind(SocketAddr::new(any, 0)).ok()?;
    probe.connect(SocketAddr::new(peer, 9)).ok()?;
    Some(probe.local_addr().ok()?.ip().to_canonical())
}

/// Resets an unwanted connection rather than closing it gracefully, so the intruder sees a
/// refusal and not an empty session.
fn refuse(stream: TcpStream) {
    crate::session::reset_on_close(&stream);
    drop(stream);
}

/// Resolves when the client is gone: its connection failed or was reset, or it ended its
/// side without sending anything. A client that sent data (`sent`: data already read
/// with the request, or waiting in the socket) and then ended its side (a half-close:
/// "this, then EOF, for whoever connects") still waits for its peer, which gets both, but
/// a reset ends that wait too. Nothing is read: the kernel reports the end of the stream
/// apart from data waiting in front of it (`EPOLLRDHUP`) and a reset apart from both
/// (`EPOLLERR`, which tokio reports only when asked for), so readiness for data alone is
/// cleared and the wait goes on. (Watching once stopped at the first byte, so a client
/// that sent some and was then reset held the listener and its connection slot until
/// `bind_timeout`.)
pub(crate) async fn client_gone(stream: &TcpStream, sent: bool) {
    use tokio::io::Interest;
    loop {
        let Ok(ready) = stream.ready(Interest::READABLE | Interest::ERROR).await else {
            return;
        };
        if ready.is_error() {
            return;
        }
        if ready.is_read_closed() {
            let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
            let waiting = matches!(socket2::SockRef::from(stream).peek(&mut probe), Ok(n) if n > 0);
            // EOF with nothing before it: the client left.
            if !sent && !waiting {
                return;
            }
            // A half-close behind data, for the peer. tokio keeps a closed state for good
            // (it would be reported at once from here on), so only a reset ends the wait
            // now, or the peer, or `bind_timeout`.
            let _ = stream.ready(Interest::ERROR).await;
            return;
        }
        // Data alone: forget this readiness (a later event brings a new one; tokio never
        // clears one newer than what this call saw).
        let _ = stream.try_io(Interest::READABLE, || {
            Err::<(), _>(std::io::ErrorKind::WouldBlock.into())
        });
    }
}
