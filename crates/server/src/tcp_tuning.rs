//! Socket options every tunnel socket gets: `TCP_NODELAY`, and on loopback connections a
//! congestion control that does not pace and a small limit on unsent data. On Linux a
//! listener gets them before it listens and accepted sockets inherit them
//! (`Inherited`); outgoing sockets get them one by one.
//!
//! Why loopback gets its own congestion control: many Linux hosts make BBR the default
//! (`net.ipv4.tcp_congestion_control = bbr`). BBR paces every socket, and without the
//! `fq` qdisc the kernel paces with a high-resolution timer per burst. On a loopback
//! connection there is no bottleneck queue to protect, so the pacing is pure cost: on the
//! 2-core benchmark machine a tunnel between two loopback peers moved ~14 Gbit/s with
//! BBR on the proxy's sockets and ~20 Gbit/s with cubic, and `tcp_pace_kick` fired about
//! 14,000 times a second on each core (see README, Performance). Connections to or from
//! other machines keep the system's choice: there, pacing is what the administrator chose
//! BBR for.
//!
//! Why loopback gets `TCP_NOTSENT_LOWAT`: when a tunnel's receiver is slower than its
//! sender, the relay's socket towards it fills with unsent data, and the kernel sends that
//! data when the receiver's window update arrives, in the receiver's softirq, on the
//! receiver's core. On loopback that core also runs the receiving program, so the relay's
//! own transmit work (and the receive processing that follows it on the same core) lands
//! on the slowest party: in a measured upload through the proxy, 98.5 % of the bytes the
//! proxy sent to the target left from the target's core. With a small limit the socket
//! holds little unsent data, the relay is woken to write more as the window opens, and
//! its writes leave from its own core: an upload of 8 streams through the proxy went from
//! 18.5–23.2 to 28.6–31.6 Gbit/s (README, Performance). For other peers the transmit runs where the
//! network card's interrupts do anyway, and a larger queue rides out the relay's wake-up
//! latency on fast long links, so they keep the system's choice.

use std::net::{IpAddr, SocketAddr};

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::TcpStream;

/// The congestion control loopback tunnels use unless configured otherwise (on Linux; other
/// systems cannot choose per socket, so there the default is none). Cubic is the kernel's
/// usual built-in default. An unprivileged server may only use what
/// `net.ipv4.tcp_allowed_congestion_control` lists (by default the boot default and reno);
/// where cubic is not allowed, loopback tunnels use reno instead (see [`choose`]).
pub const DEFAULT_LOCAL_CONGESTION: &str = "cubic";

/// The `TCP_NOTSENT_LOWAT` loopback tunnel sockets get unless configured otherwise (on
/// Linux), in bytes. 16 KiB measured as fast as or faster than 64 KiB (`ferrosocks bench`)
/// and 128 KiB (iperf3) in interleaved runs (README, Performance).
pub const DEFAULT_LOCAL_NOTSENT_LOWAT: u32 = 16 * 1024;

/// Longest congestion control name Linux accepts (`TCP_CA_NAME_MAX` less the NUL).
pub const MAX_CONGESTION_NAME: usize = 15;

/// What a tunnel socket whose peer is on this machine gets besides `TCP_NODELAY`; `None`
/// keeps the system's choice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Local<'a> {
    pub(crate) congestion: Option<&'a str>,
    pub(crate) notsent_lowat: Option<u32>,
}

impl<'a> Local<'a> {
    pub(crate) fn of(config: &'a crate::Config) -> Self {
        Local {
            congestion: config.local_congestion.as_deref(),
            notsent_lowat: config.local_notsent_lowat,
        }
    }
}

/// Whether a connection with this peer is local to the machine.
pub(crate) fn is_local_peer(peer: IpAddr) -> bool {
    peer.to_canonical().is_loopback()
}

/// Connects a tunnel's outgoing socket to `peer` with the tunnel options set before the
/// connection is made. The congestion control must be: the kernel starts the one a socket
/// has when its connection is established, and BBR, a common system default, turns on the
/// kernel's pacing for the socket, which switching to cubic afterwards leaves on (during an
/// 8-stream upload through the proxy, `tcp_pace_kick` timers fired ~40,000 times a second
/// on the proxy's core with cubic set after the connect). Failures to set an option are
/// ignored: an option the kernel refuses only costs speed, never correctness (an
/// unavailable congestion control is reported once at start-up, see [`check_available`]).
///
/// A connection that is already established when `connect(2)` returns is handed over at
/// once, without waiting for the runtime to report the socket writable. On loopback it
/// usually is: the whole three-way handshake with a local listener normally runs inside
/// the call, though a non-blocking connect still answers `EINPROGRESS`. Waiting for
/// readiness there only cost a turn of the I/O driver per session.
pub(crate) async fn connect(peer: SocketAddr, local: Local<'_>) -> std::io::Result<TcpStream> {
    // Non-blocking (and close-on-exec, which socket2 adds) from the start: one syscall.
    #[cfg(target_os = "linux")]
    let kind = Type::STREAM.nonblocking();
    #[cfg(not(target_os = "linux"))]
    let kind = Type::STREAM;
    let socket = Socket::new(Domain::for_address(peer), kind, Some(Protocol::TCP))?;
    #[cfg(not(target_os = "linux"))]
    socket.set_nonblocking(true)?;
    let _ = socket.set_tcp_nodelay(true);
    if is_local_peer(peer.ip()) {
        set_local(&socket, local, Inherited::default());
    }
    #[cfg(not(target_os = "linux"))]
    return tokio::net::TcpSocket::from_std_stream(socket.into())
        .connect(peer)
        .await;
    #[cfg(target_os = "linux")]
    {
        match socket.connect(&peer.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EINPROGRESS as i32) => {}
            Err(e) => return Err(e),
        }
        // Established already if it has a peer; otherwise (under way, or already refused)
        // the runtime reports it writable once it is either, and its error says which.
        let established = socket.peer_addr().is_ok();
        let stream = TcpStream::from_std(std::net::TcpStream::from(socket))?;
        if !established {
            stream.writable().await?;
            if let Some(e) = stream.take_error()? {
                return Err(e);
            }
        }
        Ok(stream)
    }
}

/// The loopback options of `local` that `inherited` says the socket does not have yet.
fn set_local(socket: &socket2::Socket, local: Local<'_>, inherited: Inherited) {
    if let (Some(name), false) = (local.congestion, inherited.congestion) {
        let _ = set_congestion(socket, name);
    }
    if let (Some(bytes), false) = (local.notsent_lowat, inherited.notsent_lowat) {
        let _ = set_notsent_lowat(socket, bytes);
    }
}

/// What sockets accepted on a listener already have from it, so [`tune_accepted`] does
/// not spend a syscall per connection setting it again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Inherited {
    nodelay: bool,
    congestion: bool,
    notsent_lowat: bool,
}

/// Sets on a listening socket, bound to `addr` and not yet listening, what Linux copies to
/// every socket it accepts: `TCP_NODELAY` and, on a loopback listener (every client of
/// which is on this machine), the congestion control and `TCP_NOTSENT_LOWAT`: three
/// `setsockopt` calls per session fewer, and accepted sockets that start with the chosen
/// congestion control (see [`connect`] for why that matters).
pub(crate) fn tune_listener(
    socket: &socket2::Socket,
    addr: SocketAddr,
    local: Local<'_>,
) -> Inherited {
    if !cfg!(target_os = "linux") {
        return Inherited::default();
    }
    let local_listener = is_local_peer(addr.ip());
    let nodelay = socket.set_tcp_nodelay(true).is_ok();
    let congestion = match local.congestion {
        Some(name) if local_listener => set_congestion(socket, name).is_ok(),
        // Nothing to set: what the system gives is what is wanted.
        None => true,
        Some(_) => false,
    };
    let notsent_lowat = match local.notsent_lowat {
        Some(bytes) if local_listener => set_notsent_lowat(socket, bytes).is_ok(),
        None => true,
        Some(_) => false,
    };
    Inherited {
        nodelay,
        congestion,
        notsent_lowat,
    }
}

/// The tunnel options for a socket accepted on a listener prepared by [`tune_listener`],
/// where it did not already get them from there (set after the connection is established,
/// a congestion control keeps the system's pacing, see [`connect`]).
pub(crate) fn tune_accepted(
    stream: &TcpStream,
    peer: IpAddr,
    local: Local<'_>,
    inherited: Inherited,
) {
    // Latency over throughput for the handshake and for interactive tunnels; bulk
    // transfers fill segments anyway.
    if !inherited.nodelay {
        let _ = stream.set_nodelay(true);
    }
    if (inherited.congestion && inherited.notsent_lowat) || !is_local_peer(peer) {
        return;
    }
    set_local(&SockRef::from(stream), local, inherited);
}

/// `TCP_NOTSENT_LOWAT` on any TCP socket: the one place the option is set.
#[cfg(target_os = "linux")]
fn set_notsent_lowat(socket: &socket2::Socket, bytes: u32) -> std::io::Result<()> {
    socket.set_tcp_notsent_lowat(bytes)
}

/// Not offered here (the relay's unsent data stays as the system sizes it).
#[cfg(not(target_os = "linux"))]
fn set_notsent_lowat(_socket: &socket2::Socket, _bytes: u32) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "TCP_NOTSENT_LOWAT is set on Linux only",
    ))
}

/// `TCP_CONGESTION` on any TCP socket: the one place the option is set.
#[cfg(target_os = "linux")]
fn set_congestion(socket: &socket2::Socket, name: &str) -> std::io::Result<()> {
    socket.set_tcp_congestion(name.as_bytes())
}

/// Congestion control cannot be chosen per socket here.
#[cfg(not(target_os = "linux"))]
fn set_congestion(_socket: &socket2::Socket, _name: &str) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "per-socket congestion control needs Linux",
    ))
}

/// Tries `name` on a fresh socket, so a misspelt or unloaded algorithm (or one that
/// `net.ipv4.tcp_allowed_congestion_control` does not allow this user) is reported once
/// when the server starts rather than silently on every connection.
pub fn check_available(name: &str) -> std::io::Result<()> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    set_congestion(&socket, name)
}

/// The algorithm loopback tunnels will really use for the configured `name`: `name` when
/// this host allows it; for the default (cubic) on a host that does not let this user
/// choose it (a kernel built with another default), reno, which every kernel has and
/// allows and which measured the same on loopback. Otherwise the reason `name` cannot be
/// used, and loopback tunnels keep the system's choice.
pub fn choose(name: &str) -> std::io::Result<String> {
    match check_available(name) {
        Ok(()) => Ok(name.to_owned()),
        Err(_)
            if name == DEFAULT_LOCAL_CONGESTION
                && check_available(FALLBACK_LOCAL_CONGESTION).is_ok() =>
        {
            tracing::info!(
                "local_congestion {name:?} is not allowed here; loopback tunnels use {FALLBACK_LOCAL_CONGESTION:?}"
            );
            Ok(FALLBACK_LOCAL_CONGESTION.to_owned())
        }
        Err(e) => Err(e),
    }
}

/// [`choose`] once at start-up, with a warning when nothing can be used.
pub fn usable(name: Option<String>) -> Option<String> {
    let name = name?;
    choose(&name)
        .inspect_err(|e| {
            tracing::warn!(
                "local_congestion {name:?} cannot be used ({e}); loopback tunnels keep the system's congestion control"
            )
        })
        .ok()
}

/// Used instead of the default where the default is not allowed.
const FALLBACK_LOCAL_CONGESTION: &str = "reno";

/// The `TCP_NOTSENT_LOWAT` of a socket, 0 when it follows the system's default (for tests
/// and diagnostics).
#[cfg(target_os = "linux")]
pub fn notsent_lowat_of(stream: &TcpStream) -> std::io::Result<u32> {
    SockRef::from(stream).tcp_notsent_lowat()
}

/// The congestion control a socket uses (for tests and diagnostics).
#[cfg(target_os = "linux")]
pub fn congestion_of(stream: &TcpStream) -> std::io::Result<String> {
    let name = SockRef::from(stream).tcp_congestion()?;
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Ok(String::from_utf8_lossy(&name[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn loopback_in_every_spelling_is_local() {
        assert!(is_local_peer(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert!(is_local_peer(IpAddr::V4(Ipv4Addr::new(127, 8, 9, 10))));
        assert!(is_local_peer(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert!(is_local_peer(IpAddr::V6(
            Ipv4Addr::LOCALHOST.to_ipv6_mapped()
        )));
    }

    #[test]
    fn other_addresses_are_not_local() {
        assert!(!is_local_peer(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))));
        assert!(!is_local_peer(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))));
        assert!(!is_local_peer(IpAddr::V4(Ipv4Addr::UNSPECIFIED)));
        assert!(!is_local_peer(IpAddr::V6("2001:db8::1".parse().unwrap())));
    }

    /// A connected loopback pair: (client, server, the server's view of the client).
    #[cfg(target_os = "linux")]
    async fn loopback_pair() -> (TcpStream, TcpStream, std::net::SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, peer) = listener.accept().await.unwrap();
        (client, server, peer)
    }

    /// Options a socket would not have by chance: reno (built into every kernel and
    /// allowed to every user) and an odd limit.
    #[cfg(target_os = "linux")]
    const LOCAL: Local<'static> = Local {
        congestion: Some("reno"),
        notsent_lowat: Some(12345),
    };

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_loopback_socket_gets_the_local_options() {
        let (client, server, peer) = loopback_pair().await;
        tune_accepted(&server, peer.ip(), LOCAL, Inherited::default());
        assert_eq!(congestion_of(&server).unwrap(), "reno");
        assert_eq!(notsent_lowat_of(&server).unwrap(), 12345);
        assert!(server.nodelay().unwrap());
        // `None` leaves the socket as the system made it.
        let before = congestion_of(&client).unwrap();
        let lowat_before = notsent_lowat_of(&client).unwrap();
        let server_ip = server.local_addr().unwrap().ip();
        tune_accepted(&client, server_ip, Local::default(), Inherited::default());
        assert_eq!(congestion_of(&client).unwrap(), before);
        assert_eq!(notsent_lowat_of(&client).unwrap(), lowat_before);
        // Each option on its own.
        let (_c, server, peer) = loopback_pair().await;
        let only_lowat = Local {
            congestion: None,
            notsent_lowat: Some(4096),
        };
        tune_accepted(&server, peer.ip(), only_lowat, Inherited::default());
        assert_eq!(notsent_lowat_of(&server).unwrap(), 4096);
        assert_eq!(congestion_of(&server).unwrap(), before);
    }

    /// Outgoing sockets get the options before they connect (so the congestion control
    /// is the one the kernel starts at establishment).
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn an_outgoing_loopback_socket_is_connected_with_the_local_options() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = listener.local_addr().unwrap();
        let stream = connect(at, LOCAL).await.unwrap();
        assert_eq!(stream.peer_addr().unwrap(), at);
        assert_eq!(congestion_of(&stream).unwrap(), "reno");
        assert_eq!(notsent_lowat_of(&stream).unwrap(), 12345);
        assert!(stream.nodelay().unwrap());
        let system = congestion_of(&listener.accept().await.unwrap().0).unwrap();
        let plain = connect(at, Local::default()).await.unwrap();
        assert_eq!(congestion_of(&plain).unwrap(), system);
        assert!(plain.nodelay().unwrap());
        // A refusal is reported as such.
        drop(listener);
        let refused = connect(at, LOCAL).await.unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    }

    /// A connection not yet established when `connect(2)` returns (here: the listener's
    /// accept queue is full, so its first SYN is dropped and retransmitted a second later)
    /// is waited for, and handed over once it is. A backlog of 1 rather than 0: kernels
    /// before 6.14 treat a zero backlog's SYN queue as full from the start.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn an_outgoing_connection_still_under_way_is_waited_for() {
        // A backlog of 1: two connections waiting to be accepted fill the queue.
        let (listener, _) = test_listener("127.0.0.1:0", Local::default(), 1).unwrap();
        let at = listener.local_addr().unwrap();
        let limit = std::time::Duration::from_secs(10);
        let mut queued = Vec::new();
        for _ in 0..2 {
            let stream = tokio::time::timeout(limit, TcpStream::connect(at)).await;
            queued.push(stream.expect("a queue with room answers").unwrap());
        }
        let mut pending = Box::pin(connect(at, LOCAL));
        let early = tokio::time::timeout(std::time::Duration::from_millis(300), &mut pending);
        assert!(
            early.await.is_err(),
            "connected through a full accept queue"
        );
        let (first, _) = listener.accept().await.unwrap();
        let stream = tokio::time::timeout(limit, pending)
            .await
            .expect("the retransmitted SYN is answered once the queue has room")
            .unwrap();
        assert_eq!(stream.peer_addr().unwrap(), at);
        let (second, _) = listener.accept().await.unwrap();
        let (third, from) = listener.accept().await.unwrap();
        assert_eq!(from, stream.local_addr().unwrap());
        assert_eq!(congestion_of(&stream).unwrap(), "reno");
        drop((first, second, third, queued));
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_socket_told_its_peer_is_remote_keeps_the_system_choice() {
        let (_client, server, _) = loopback_pair().await;
        let before = congestion_of(&server).unwrap();
        let lowat_before = notsent_lowat_of(&server).unwrap();
        let other = if before == "reno" { "cubic" } else { "reno" };
        let local = Local {
            congestion: Some(other),
            notsent_lowat: Some(lowat_before + 1000),
        };
        let remote = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        tune_accepted(&server, remote, local, Inherited::default());
        assert_eq!(congestion_of(&server).unwrap(), before);
        assert_eq!(notsent_lowat_of(&server).unwrap(), lowat_before);
        assert!(server.nodelay().unwrap());
    }

    /// A listener made the way the server makes them (see `listen` in lib.rs), with room
    /// for `backlog` connections waiting to be accepted.
    #[cfg(target_os = "linux")]
    fn test_listener(
        addr: &str,
        local: Local<'_>,
        backlog: i32,
    ) -> std::io::Result<(tokio::net::TcpListener, Inherited)> {
        let addr: std::net::SocketAddr = addr.parse().unwrap();
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        let inherited = tune_listener(&socket, addr, local);
        socket.listen(backlog)?;
        Ok((tokio::net::TcpListener::from_std(socket.into())?, inherited))
    }

    /// The kernel behaviour [`tune_listener`] relies on: accepted sockets inherit the
    /// listener's `TCP_NODELAY`, congestion control and `TCP_NOTSENT_LOWAT`.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn accepted_sockets_inherit_what_the_listener_was_given() {
        let (listener, inherited) = test_listener("127.0.0.1:0", LOCAL, 16).unwrap();
        assert_eq!(
            inherited,
            Inherited {
                nodelay: true,
                congestion: true,
                notsent_lowat: true,
            }
        );
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, peer) = listener.accept().await.unwrap();
        assert!(accepted.nodelay().unwrap());
        assert_eq!(congestion_of(&accepted).unwrap(), "reno");
        assert_eq!(notsent_lowat_of(&accepted).unwrap(), 12345);
        // Nothing is set again: told other values, the socket keeps the inherited ones.
        let other = Local {
            congestion: Some("cubic"),
            notsent_lowat: Some(999),
        };
        tune_accepted(&accepted, peer.ip(), other, inherited);
        assert_eq!(congestion_of(&accepted).unwrap(), "reno");
        assert_eq!(notsent_lowat_of(&accepted).unwrap(), 12345);
    }

    /// A listener that cannot pass the options on still gets each loopback socket its own.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn sockets_from_a_listener_on_any_address_get_the_local_options_one_by_one() {
        let only_lowat = Local {
            congestion: None,
            notsent_lowat: Some(4321),
        };
        let (listener, inherited) = test_listener("0.0.0.0:0", only_lowat, 16).unwrap();
        assert!(inherited.congestion, "nothing to set");
        assert!(!inherited.notsent_lowat);
        let port = listener.local_addr().unwrap().port();
        let _client = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (accepted, peer) = listener.accept().await.unwrap();
        assert_ne!(notsent_lowat_of(&accepted).unwrap(), 4321);
        tune_accepted(&accepted, peer.ip(), only_lowat, inherited);
        assert_eq!(notsent_lowat_of(&accepted).unwrap(), 4321);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_listener_on_another_address_leaves_the_local_options_to_each_socket() {
        // [::] accepts from anywhere, so its sockets are tuned one by one.
        let Ok((_listener, inherited)) = test_listener("[::]:0", LOCAL, 16) else {
            return; // no IPv6 on this host
        };
        assert!(!inherited.congestion);
        assert!(!inherited.notsent_lowat);
        assert!(inherited.nodelay);
    }

    #[test]
    fn unknown_algorithms_are_reported() {
        if cfg!(target_os = "linux") {
            assert!(check_available("reno").is_ok());
            assert!(check_available("no-such-cc").is_err());
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn an_unusable_choice_is_dropped_at_start() {
        assert_eq!(usable(None), None);
        assert_eq!(usable(Some("reno".into())).as_deref(), Some("reno"));
        assert_eq!(usable(Some("no-such-cc".into())), None);
    }
}
