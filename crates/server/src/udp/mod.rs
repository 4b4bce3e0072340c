//! UDP ASSOCIATE (RFC 1928 §4 and §7): a relay socket of its own, announced with an address
//! the client can reach, alive as long as its TCP connection (and not idle).

mod association;
mod socket;

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use ferrosocks_proto::{
    Addr, Command, Decode, DecodeError, HandshakeError, ProtocolError, Rep, Reply, Request, Stage,
};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::AsyncReadExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::access_log::SessionRecord;
use crate::error::SessionError;
use crate::rules::{Decision, RuleInput};
use crate::session::Conn;
use crate::Shared;

use association::{Association, UdpStats};
use socket::RelaySocket;

/// Socket buffers for relay sockets: bursts of datagrams must wait in the kernel rather
/// than be dropped while the relay task is busy. The kernel caps this at `net.core.rmem_max`.
const UDP_SOCKET_BUFFER: usize = 4 << 20;

/// How many associations one TCP connection may hold at once. RFC 1928 neither allows nor
/// forbids more than one; clients that need many channels (a monitoring client with one
/// stream per camera) would otherwise need a TCP connection each.
const MAX_ASSOCIATIONS_PER_CONNECTION: usize = 64;

/// Bytes a client may leave on a control connection without completing a request.
const CONTROL_BUFFER_LIMIT: usize = 1024;

/// The addresses of every UDP relay socket the server holds (with how many hold each), so
/// an association can tell a datagram one of them sent from its client's. A client on
/// this host whose association takes datagrams from any of its ports could otherwise have
/// the outbound socket send to the client-facing one: the relay took it for the client's,
/// made the outbound socket the reply address, and one 38-byte datagram went round
/// thousands of times, growing by a header each turn.
#[derive(Debug, Default)]
pub(crate) struct RelayAddrs(std::sync::Mutex<std::collections::HashMap<SocketAddr, u32>>);

impl RelayAddrs {
    /// An outbound socket is bound to the wildcard address; its key is `[::]:port`.
    fn key(addr: SocketAddr) -> SocketAddr {
        if addr.ip().is_unspecified() {
            SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), addr.port())
        } else {
            SocketAddr::new(addr.ip().to_canonical(), addr.port())
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<SocketAddr, u32>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `src` is one of the server's relay sockets. `local_ip` is the address the
    /// asking association's client reached the server at: a wildcard-bound socket sends to
    /// it, or to loopback, from that address.
    pub(crate) fn contains(&self, src: SocketAddr, local_ip: IpAddr) -> bool {
        let ip = src.ip().to_canonical();
        let counts = self.counts();
        counts.contains_key(&Self::key(src))
            || ((ip == local_ip || ip.is_loopback())
                && counts.contains_key(&Self::key(SocketAddr::new(
                    IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
                    src.port(),
                ))))
    }
}

/// An association's relay sockets, listed in [`RelayAddrs`] while it lives.
pub(crate) struct RelayAddrsHeld {
    shared: Arc<Shared>,
    addrs: Vec<SocketAddr>,
}

impl RelayAddrsHeld {
    fn new(shared: &Arc<Shared>, addrs: Vec<SocketAddr>) -> Self {
        let addrs: Vec<SocketAddr> = addrs.into_iter().map(RelayAddrs::key).collect();
        let mut counts = shared.udp_relays.counts();
        for a in &addrs {
            *counts.entry(*a).or_default() += 1;
        }
        drop(counts);
        RelayAddrsHeld {
            shared: shared.clone(),
            addrs,
        }
    }
}

impl Drop for RelayAddrsHeld {
    fn drop(&mut self) {
        let mut counts = self.shared.udp_relays.counts();
        for a in &self.addrs {
            if let Some(n) = counts.get_mut(a) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(a);
                }
            }
        }
    }
}

pub(crate) async fn handle(
    conn: &mut Conn,
    shared: &Arc<Shared>,
    record: &mut SessionRecord,
    dst: Addr,
) -> Result<(), SessionError> {
    // Destination rules apply per datagram; here only who may associate at all.
    let input = RuleInput {
        client: conn.client.ip(),
        user: conn.user.as_deref(),
        command: Command::UDP_ASSOCIATE,
        target: None,
    };
    if let Decision::Deny { rule } = shared.rules().evaluate(&input) {
        return Err(SessionError::RuleDenied { rule });
    }
    let stop = CancellationToken::new();
    let mut running = JoinSet::new();
    let (first, announced) = open(conn, shared, &dst)?;
    conn.send_reply(&Reply {
        rep: Rep::SUCCEEDED,
        bnd: announced.into(),
    })
    .await?;
    record.rep = Some(Rep::SUCCEEDED);
    record.resolved = Some(announced);
    running.spawn(first.run(stop.clone()));
    let mut opened = 1usize;
    let mut totals = UdpStats::default();
    conn.output = BytesMut::new();

    // The TCP connection now controls the associations: it ends them when it closes, and
    // each further UDP ASSOCIATE request on it opens one more.
    let outcome = loop {
        match Request::decode_prefix(&conn.input) {
            Ok((request, used)) => {
                conn.input.advance(used);
                if request.command != Command::UDP_ASSOCIATE {
                    break Err(SessionError::NotAfterUdpAssociate(request.command));
                }
                if running.len() >= MAX_ASSOCIATIONS_PER_CONNECTION {
                    break Err(SessionError::LimitReached(
                        "too many UDP associations on one connection",
                    ));
                }
                let (association, announced) = match open(conn, shared, &request.dst) {
                    Ok(opened) => opened,
                    Err(e) => break Err(e),
                };
                if let Err(e) = conn
                    .send_reply(&Reply {
                        rep: Rep::SUCCEEDED,
                        bnd: announced.into(),
                    })
                    .await
                {
                    break Err(e);
                }
                running.spawn(association.run(stop.clone()));
                opened += 1;
                continue;
            }
            Err(DecodeError::Incomplete { .. }) if conn.input.len() < CONTROL_BUFFER_LIMIT => {}
            Err(DecodeError::Incomplete { .. }) => {
                break Err(SessionError::Protocol(HandshakeError {
                    stage: Stage::Request,
                    error: ProtocolError::TrailingData(conn.input.len()),
                }))
            }
            Err(DecodeError::Invalid(error)) => {
                break Err(SessionError::Protocol(HandshakeError {
                    stage: Stage::Request,
                    error,
                }))
            }
        }
        tokio::select! {
            read = conn.stream.read_buf(&mut conn.input) => match read {
                // The associations end with their TCP connection (RFC 1928 §6).
                Ok(0) | Err(_) => break Ok("control connection closed"),
                Ok(_) => {}
            },
            () = shared.drain_over.cancelled() => break Ok("server shutdown"),
            Some(finished) = running.join_next() => {
                if let Ok(stats) = finished {
                    totals.add(&stats);
                }
                if running.is_empty() {
                    // Every association went idle: the connection has nothing left to control.
                    break Ok("idle timeout");
                }
            }
        }
    };
    stop.cancel();
    while let Some(finished) = running.join_next().await {
        if let Ok(stats) = finished {
            totals.add(&stats);
        }
    }
    record.bytes_up = totals.bytes_up;
    record.bytes_down = totals.bytes_down;
    let end = match &outcome {
        Ok(end) => end.to_string(),
        Err(e) => e.to_string(),
    };
    record.end = format!(
        "{end}; associations={opened} datagrams up={} down={} dropped={}",
        totals.datagrams_up, totals.datagrams_down, totals.dropped
    );
    outcome.map(|_| ())
}
/// Opens one association for a request whose DST is `dst`: takes a slot from the global
/// limit, binds the relay sockets, and returns it with the address to announce.
fn open(
    conn: &Conn,
    shared: &Arc<Shared>,
    dst: &Addr,
) -> Result<(Association, SocketAddr), SessionError> {
    let permit = shared
        .udp_associations
        .clone()
        .try_acquire_owned()
        .map_err(|_| SessionError::LimitReached("too many UDP associations"))?;
    // The request's DST is only a hint of where the client will send from. A port is kept
    // when given; a zero address, a zero port or a domain name (PySocks sends "0") all mean
    // "any port from the client's IP".
    let client_port = match dst {
        Addr::Ip(sa) if sa.port() != 0 => Some(sa.port()),
        _ => None,
    };
    let client_ip = conn.client.ip().to_canonical();
    // Announce the address the client already reached us at: it is reachable by
    // construction, unlike the wildcard address.
    let local_ip = conn.local_addr()?.ip().to_canonical();
    let client_socket = bind_udp(local_ip, shared.config.udp_port_range.as_ref())?;
    let relay_addr = client_socket.local_addr()?;
    let announced = SocketAddr::new(
        shared.config.external_address.unwrap_or(local_ip),
        relay_addr.port(),
    );
    let outbound = bind_outbound()?;
    tracing::debug!(%announced, %client_ip, ?client_port, "UDP association open");
    let relay_addrs = RelayAddrsHeld::new(shared, vec![relay_addr, outbound.local_addr()?]);
    let association = Association {
        client_socket,
        outbound,
        local_ip,
        client_local: client_ip.is_loopback() || client_ip == local_ip,
        _relay_addrs: relay_addrs,
        client_ip,
        client_port,
        client_user: conn.user.clone(),
        shared: shared.clone(),
        _permit: permit,
    };
    Ok((association, announced))
}

fn new_udp_socket(addr: SocketAddr, dual_stack: bool) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(!dual_stack)?;
    }
    set_buffer_sizes(&socket);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// Asks for [`UDP_SOCKET_BUFFER`] in both directions. The plain options are capped by
/// `net.core.rmem_max`/`wmem_max` (often 208 KiB); a privileged server uses the `*FORCE`
/// variants to get the full size, which is what keeps bursts from being dropped.
fn set_buffer_sizes(socket: &Socket) {
    #[cfg(target_os = "linux")]
    {
        use nix::sys::socket::{setsockopt, sockopt};
        let size = UDP_SOCKET_BUFFER;
        if setsockopt(socket, sockopt::RcvBufForce, &size).is_ok()
            && setsockopt(socket, sockopt::SndBufForce, &size).is_ok()
        {
            return;
        }
    }
    let _ = socket.set_recv_buffer_size(UDP_SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(UDP_SOCKET_BUFFER);
}

fn into_relay(socket: Socket) -> std::io::Result<RelaySocket> {
    RelaySocket::new(socket.into())
}

/// The client-facing socket, on `ip`, in the configured port range if there is one.
fn bind_udp(ip: IpAddr, range: Option<&RangeInclusive<u16>>) -> Result<RelaySocket, SessionError> {
    let Some(range) = range else {
        return Ok(into_relay(new_udp_socket(SocketAddr::new(ip, 0), false)?)?);
    };
    // Start at a pseudo-random port so concurrent associations do not all race for the
    // first one.
    let span = u32::from(*range.end() - *range.start()) + 1;
    let offset = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        % span;
    let mut last_error = None;
    for i in 0..span {
        let port = *range.start() as u32 + (offset + i) % span;
        match new_udp_socket(SocketAddr::new(ip, port as u16), false) {
            Ok(s) => return Ok(into_relay(s)?),
            Err(e) => last_error = Some(e),
        }
    }
    tracing::warn!(?range, "every port of the UDP port range is in use");
    Err(SessionError::Io(last_error.unwrap_or_else(|| {
        std::io::Error::other("empty UDP port range")
    })))
}

/// The socket datagrams leave from and replies arrive on: one dual-stack socket when the
/// host has IPv6, so IPv4 and IPv6 destinations share it; IPv4 only otherwise.
fn bind_outbound() -> Result<RelaySocket, SessionError> {
    let dual = new_udp_socket(SocketAddr::from(([0u16; 8], 0)), true);
    let socket = match dual {
        Ok(s) => s,
        Err(_) => new_udp_socket(SocketAddr::from(([0, 0, 0, 0], 0)), false)?,
    };
    Ok(into_relay(socket)?)
}
