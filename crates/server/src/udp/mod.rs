//! UDP ASSOCIATE (RFC 1928 §4 and §7): a relay socket of its own, announced with an address
//! the client can reach, alive as long as its TCP connection (and not idle).

mod association;

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::Arc;

use ferrosocks_proto::{Addr, Command, Rep, Reply};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use crate::access_log::SessionRecord;
use crate::error::SessionError;
use crate::rules::{Decision, RuleInput};
use crate::session::Conn;
use crate::Shared;

pub(crate) use association::Association;

/// Socket buffers for relay sockets: bursts of datagrams must wait in the kernel rather
/// than be dropped while the relay task is busy. The kernel caps this at `net.core.rmem_max`.
const UDP_SOCKET_BUFFER: usize = 4 << 20;

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
    let _permit = shared
        .udp_associations
        .clone()
        .try_acquire_owned()
        .map_err(|_| SessionError::LimitReached("too many UDP associations"))?;

    // The request's DST is only a hint of where the client will send from. A port is kept
    // when given; a zero address, a zero port or a domain name (PySocks sends "0") all mean
    // "any port from the client's IP".
    let client_port = match &dst {
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

    conn.send_reply(&Reply {
        rep: Rep::SUCCEEDED,
        bnd: announced.into(),
    })
    .await?;
    record.rep = Some(Rep::SUCCEEDED);
    record.resolved = Some(announced);
    tracing::debug!(%announced, %client_ip, ?client_port, "UDP association open");

    let association = Association {
        client_socket,
        outbound,
        client_ip,
        client_port,
        client_user: conn.user.clone(),
        shared: shared.clone(),
    };
    // Anything the client sent on the control connection after the request is meaningless
    // to UDP ASSOCIATE; it is discarded.
    drop(conn.take_leftover());
    let stats = association.run(&mut conn.stream).await;
    record.bytes_up = stats.bytes_up;
    record.bytes_down = stats.bytes_down;
    record.end = format!(
        "{}; datagrams up={} down={} dropped={}",
        stats.end, stats.datagrams_up, stats.datagrams_down, stats.dropped
    );
    Ok(())
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

fn into_tokio(socket: Socket) -> std::io::Result<UdpSocket> {
    UdpSocket::from_std(socket.into())
}

/// The client-facing socket, on `ip`, in the configured port range if there is one.
fn bind_udp(ip: IpAddr, range: Option<&RangeInclusive<u16>>) -> Result<UdpSocket, SessionError> {
    let Some(range) = range else {
        return Ok(into_tokio(new_udp_socket(SocketAddr::new(ip, 0), false)?)?);
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
            Ok(s) => return Ok(into_tokio(s)?),
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
fn bind_outbound() -> Result<UdpSocket, SessionError> {
    let dual = new_udp_socket(SocketAddr::from(([0u16; 8], 0)), true);
    let socket = match dual {
        Ok(s) => s,
        Err(_) => new_udp_socket(SocketAddr::from(([0, 0, 0, 0], 0)), false)?,
    };
    Ok(into_tokio(socket)?)
}
