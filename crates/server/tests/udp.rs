use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use ferrosocks_proto::udp::{decode_datagram, encode_datagram};
use ferrosocks_proto::{Addr, Command, Frag, Rep, UdpHeader};
use ferrosocks_testkit::{
    spawn_server, test_config, udp_echo, with_deadline, RawClient, TestServer,
};
use tokio::net::UdpSocket;

use crate::request;

struct Assoc {
    control: RawClient,
    relay: SocketAddr,
    socket: UdpSocket,
}

async fn associate(server: &TestServer, client_bind: &str, hint: Option<&str>) -> Assoc {
    let socket = UdpSocket::bind(client_bind).await.unwrap();
    let hint = hint
        .map(str::to_owned)
        .unwrap_or_else(|| socket.local_addr().unwrap().to_string());
    let mut control = RawClient::connect(server.addr).await;
    control.greet_no_auth().await;
    control.send(&request(Command::UDP_ASSOCIATE, &hint)).await;
    let reply = control.recv_reply().await;
    assert_eq!(reply.rep, Rep::SUCCEEDED);
    let Addr::Ip(relay) = reply.bnd else {
        panic!("relay address should be an IP")
    };
    assert!(
        !relay.ip().is_unspecified(),
        "the relay address must be reachable, not a wildcard"
    );
    Assoc {
        control,
        relay,
        socket,
    }
}

fn datagram(frag: Frag, dst: &str, payload: &[u8]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    let header = UdpHeader {
        frag,
        dst: dst.parse().unwrap(),
    };
    encode_datagram(&header, payload, &mut buf);
    buf.to_vec()
}

impl Assoc {
    async fn send(&self, dst: &str, payload: &[u8]) {
        self.socket
            .send_to(&datagram(Frag::STANDALONE, dst, payload), self.relay)
            .await
            .unwrap();
    }

    async fn recv(&self) -> (Addr, Vec<u8>) {
        let mut buf = vec![0u8; 70_000];
        let (n, from) = with_deadline(self.socket.recv_from(&mut buf))
            .await
            .unwrap();
        assert_eq!(from, self.relay, "replies come from the relay socket");
        let (header, payload) = decode_datagram(&buf[..n]).expect("reply has a valid header");
        assert!(header.frag.is_standalone());
        (header.dst, payload.to_vec())
    }
}

async fn nothing_arrives(socket: &UdpSocket) -> bool {
    let mut buf = [0u8; 2048];
    tokio::time::timeout(Duration::from_millis(300), socket.recv_from(&mut buf))
        .await
        .is_err()
}

#[tokio::test]
async fn udp_round_trips_to_several_destinations_through_one_association() {
    let echo_a = udp_echo("127.0.0.1:0").await;
    let echo_b = udp_echo("127.0.0.1:0").await;
    let echo_v6 = udp_echo("[::1]:0").await;
    let server = spawn_server(test_config()).await;
    let a = associate(&server, "127.0.0.1:0", None).await;

    for round in 0..3 {
        for (dst, expect_src) in [
            (echo_a.to_string(), echo_a),
            (echo_b.to_string(), echo_b),
            (echo_v6.to_string(), echo_v6),
            (format!("localhost:{}", echo_a.port()), echo_a),
        ] {
            let payload = format!("round {round} to {dst}");
            a.send(&dst, payload.as_bytes()).await;
            let (src, got) = a.recv().await;
            assert_eq!(
                src,
                Addr::Ip(expect_src),
                "the reply header names the source"
            );
            assert_eq!(got, payload.as_bytes());
        }
    }
}

#[tokio::test]
async fn udp_round_trips_with_busy_polling_off_and_at_its_longest() {
    let echo = udp_echo("127.0.0.1:0").await;
    for busy_poll in [Duration::ZERO, ferrosocks_server::busy_poll::MAX_BUSY_POLL] {
        let mut config = test_config();
        config.busy_poll = ferrosocks_server::BusyPoll::Window(busy_poll);
        config.timeouts.udp_idle = Duration::from_secs(1);
        let server = spawn_server(config).await;
        let mut a = associate(&server, "127.0.0.1:0", None).await;
        for round in 0..20 {
            let payload = format!("round {round} ({busy_poll:?})");
            a.send(&echo.to_string(), payload.as_bytes()).await;
            let (_, got) = a.recv().await;
            assert_eq!(got, payload.as_bytes());
        }
        // Polling after the last datagram does not keep the association from idling out.
        a.control.expect_eof().await;
    }
}

/// While an association busy-polls its sockets are out of the runtime's epoll, and they
/// go back in when the window closes. Bursts that start after a pause longer than the
/// window (registered: the first datagram wakes the association) and bursts that follow
/// at once (still polled), in both directions, all arrive in order. (A socket asked for
/// readiness while out of the epoll panics in this debug build, so an association that
/// failed to register its sockets again would fail here.)
#[tokio::test]
async fn udp_bursts_cross_busy_polling_windows_without_loss() {
    let echo = udp_echo("127.0.0.1:0").await;
    let mut config = test_config();
    config.busy_poll =
        ferrosocks_server::BusyPoll::Window(ferrosocks_server::busy_poll::DEFAULT_BUSY_POLL);
    let server = spawn_server(config).await;
    let a = associate(&server, "127.0.0.1:0", None).await;
    for round in 0..10u64 {
        let burst: Vec<String> = (0..20).map(|i| format!("round {round} #{i}")).collect();
        for payload in &burst {
            a.send(&echo.to_string(), payload.as_bytes()).await;
        }
        for payload in &burst {
            let (src, got) = a.recv().await;
            assert_eq!(src, Addr::Ip(echo));
            assert_eq!(got, payload.as_bytes());
        }
        // Every other round follows the last at once, while the association still polls.
        if round % 2 == 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        a.send(&echo.to_string(), b"after the burst").await;
        assert_eq!(a.recv().await.1, b"after the burst");
        if round % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert!(nothing_arrives(&a.socket).await);
}

#[tokio::test]
async fn udp_large_datagram_round_trip() {
    let echo = udp_echo("127.0.0.1:0").await;
    let server = spawn_server(test_config()).await;
    let a = associate(&server, "127.0.0.1:0", None).await;
    let payload: Vec<u8> = (0..60_000u32).map(|i| i as u8).collect();
    a.send(&echo.to_string(), &payload).await;
    assert_eq!(a.recv().await.1, payload);
}

#[tokio::test]
async fn udp_hint_of_zeros_or_a_domain_means_any_port_from_the_client_ip() {
    let echo = udp_echo("127.0.0.1:0").await;
    let server = spawn_server(test_config()).await;
    for hint in ["0.0.0.0:0", "0:0", "[::]:0"] {
        let a = associate(&server, "127.0.0.1:0", Some(hint)).await;
        a.send(&echo.to_string(), b"hello").await;
        assert_eq!(a.recv().await.1, b"hello", "hint {hint}");
    }
}

#[tokio::test]
async fn udp_ipv6_client_and_relay() {
    let echo = udp_echo("127.0.0.1:0").await;
    let mut config = test_config();
    config.listen = vec!["[::1]:0".parse().unwrap()];
    let server = spawn_server(config).await;
    let a = associate(&server, "[::1]:0", None).await;
    assert!(
        a.relay.is_ipv6(),
        "the relay is announced on the address the client used"
    );
    a.send(&echo.to_string(), b"v6 client").await;
    let (src, got) = a.recv().await;
    assert_eq!(src, Addr::Ip(echo));
    assert_eq!(got, b"v6 client");
}

#[tokio::test]
async fn udp_datagram_from_foreign_source_is_dropped() {
    let target = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let target_addr = target.local_addr().unwrap().to_string();
    let server = spawn_server(test_config()).await;
    // The client announced its own port: another port on the same IP is foreign.
    let a = associate(&server, "127.0.0.1:0", None).await;
    let other_port = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    other_port
        .send_to(&datagram(Frag::STANDALONE, &target_addr, b"spoof"), a.relay)
        .await
        .unwrap();
    assert!(
        nothing_arrives(&target).await,
        "datagram from another port was relayed"
    );

    // Without an announced port, another IP is still foreign.
    let b = associate(&server, "127.0.0.1:0", Some("0.0.0.0:0")).await;
    let other_ip = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    other_ip
        .send_to(&datagram(Frag::STANDALONE, &target_addr, b"spoof"), b.relay)
        .await
        .unwrap();
    assert!(
        nothing_arrives(&target).await,
        "datagram from another IP was relayed"
    );

    // The real client still gets through.
    a.send(&target_addr, b"legit").await;
    let mut buf = [0u8; 64];
    let (n, _) = with_deadline(target.recv_from(&mut buf)).await.unwrap();
    assert_eq!(&buf[..n], b"legit");
}

#[tokio::test]
async fn udp_fragments_are_reassembled() {
    let echo = udp_echo("127.0.0.1:0").await;
    let dst = echo.to_string();
    let server = spawn_server(test_config()).await;
    let a = associate(&server, "127.0.0.1:0", None).await;
    for (frag, part) in [
        (Frag::fragment(1, false), &b"one-"[..]),
        (Frag::fragment(2, false), b"two-"),
        (Frag::fragment(3, true), b"three"),
    ] {
        a.socket
            .send_to(&datagram(frag, &dst, part), a.relay)
            .await
            .unwrap();
    }
    assert_eq!(a.recv().await.1, b"one-two-three");

    // A sequence with a hole is dropped; the next standalone datagram still flows.
    for (frag, part) in [
        (Frag::fragment(1, false), &b"a"[..]),
        (Frag::fragment(3, true), b"c"),
    ] {
        a.socket
            .send_to(&datagram(frag, &dst, part), a.relay)
            .await
            .unwrap();
    }
    a.send(&dst, b"after").await;
    assert_eq!(a.recv().await.1, b"after");
}

#[tokio::test]
async fn udp_association_ends_when_its_tcp_connection_closes() {
    let target = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let target_addr = target.local_addr().unwrap().to_string();
    let server = spawn_server(test_config()).await;
    let a = associate(&server, "127.0.0.1:0", None).await;
    a.send(&target_addr, b"before").await;
    let mut buf = [0u8; 64];
    with_deadline(target.recv_from(&mut buf)).await.unwrap();
    drop(a.control);
    server.wait_for_log("control connection closed").await;
    let _ = a
        .socket
        .send_to(&datagram(Frag::STANDALONE, &target_addr, b"after"), a.relay)
        .await;
    assert!(
        nothing_arrives(&target).await,
        "relay still forwarding after the TCP connection closed"
    );
}

#[tokio::test]
async fn udp_association_idle_timeout_closes_the_tcp_connection() {
    let mut config = test_config();
    config.timeouts.udp_idle = Duration::from_millis(300);
    let server = spawn_server(config).await;
    let mut a = associate(&server, "127.0.0.1:0", None).await;
    a.control.expect_eof().await;
}

#[tokio::test]
async fn udp_relay_port_comes_from_the_configured_range() {
    let echo = udp_echo("127.0.0.1:0").await;
    // Find a free range by probing: take a free port and use a small range above it.
    let base = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (low, high) = (
        base.saturating_sub(20).max(1024),
        base.saturating_sub(20).max(1024) + 40,
    );
    let mut config = test_config();
    config.udp_port_range = Some(low..=high);
    let server = spawn_server(config).await;
    for _ in 0..3 {
        let a = associate(&server, "127.0.0.1:0", None).await;
        assert!(
            (low..=high).contains(&a.relay.port()),
            "{} not in {low}-{high}",
            a.relay
        );
        a.send(&echo.to_string(), b"ranged").await;
        assert_eq!(a.recv().await.1, b"ranged");
    }
}

#[tokio::test]
async fn udp_reply_announces_the_external_address_when_configured() {
    let mut config = test_config();
    config.external_address = Some("192.0.2.7".parse().unwrap());
    let server = spawn_server(config).await;
    let mut control = RawClient::connect(server.addr).await;
    control.greet_no_auth().await;
    control
        .send(&request(Command::UDP_ASSOCIATE, "0.0.0.0:0"))
        .await;
    let reply = control.recv_reply().await;
    assert_eq!(reply.rep, Rep::SUCCEEDED);
    let Addr::Ip(relay) = reply.bnd else {
        panic!("IP expected")
    };
    assert_eq!(relay.ip().to_string(), "192.0.2.7");
    assert_ne!(relay.port(), 0);
}

#[tokio::test]
async fn udp_association_limit_gets_general_failure() {
    let mut config = test_config();
    config.limits.max_udp_associations = 1;
    let server = spawn_server(config).await;
    let _first = associate(&server, "127.0.0.1:0", None).await;
    let mut second = RawClient::connect(server.addr).await;
    second.greet_no_auth().await;
    second
        .send(&request(Command::UDP_ASSOCIATE, "0.0.0.0:0"))
        .await;
    assert_eq!(second.recv_reply().await.rep, Rep::GENERAL_FAILURE);
    second.expect_eof().await;
}

#[tokio::test]
async fn several_udp_associations_share_one_tcp_connection() {
    let echo = udp_echo("127.0.0.1:0").await;
    let server = spawn_server(test_config()).await;
    let first = associate(&server, "127.0.0.1:0", None).await;
    let mut control = first.control;
    // Two more requests on the same connection, pipelined in one write; replies come in
    // request order.
    let sockets = [
        UdpSocket::bind("127.0.0.1:0").await.unwrap(),
        UdpSocket::bind("127.0.0.1:0").await.unwrap(),
    ];
    let mut both = Vec::new();
    for s in &sockets {
        both.extend(request(
            Command::UDP_ASSOCIATE,
            &s.local_addr().unwrap().to_string(),
        ));
    }
    control.send(&both).await;
    let mut channels = vec![(first.socket, first.relay)];
    for socket in sockets {
        let reply = control.recv_reply().await;
        assert_eq!(reply.rep, Rep::SUCCEEDED);
        let Addr::Ip(relay) = reply.bnd else {
            panic!("IP expected")
        };
        channels.push((socket, relay));
    }
    let mut relays: Vec<_> = channels.iter().map(|(_, r)| *r).collect();
    relays.sort();
    relays.dedup();
    assert_eq!(relays.len(), 3, "each association has its own relay socket");

    let mut buf = vec![0u8; 2048];
    for round in 0..2 {
        for (i, (socket, relay)) in channels.iter().enumerate() {
            let payload = format!("channel {i} round {round}");
            socket
                .send_to(
                    &datagram(Frag::STANDALONE, &echo.to_string(), payload.as_bytes()),
                    relay,
                )
                .await
                .unwrap();
            let (n, from) = with_deadline(socket.recv_from(&mut buf)).await.unwrap();
            assert_eq!(from, *relay);
            let (header, got) = decode_datagram(&buf[..n]).unwrap();
            assert_eq!(header.dst, Addr::Ip(echo));
            assert_eq!(got, payload.as_bytes());
        }
    }

    // Closing the one TCP connection ends all three.
    drop(control);
    let line = server.wait_for_log("control connection closed").await;
    assert!(line.contains("associations=3"), "{line}");
    let target = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let target_addr = target.local_addr().unwrap().to_string();
    for (socket, relay) in &channels {
        let _ = socket
            .send_to(&datagram(Frag::STANDALONE, &target_addr, b"late"), relay)
            .await;
    }
    assert!(
        nothing_arrives(&target).await,
        "an association outlived its TCP connection"
    );
}

#[tokio::test]
async fn connect_request_on_a_udp_control_connection_gets_07_and_close() {
    let server = spawn_server(test_config()).await;
    let mut a = associate(&server, "127.0.0.1:0", None).await;
    a.control
        .send(&request(Command::CONNECT, "127.0.0.1:9"))
        .await;
    assert_eq!(a.control.recv_reply().await.rep, Rep::COMMAND_NOT_SUPPORTED);
    a.control.expect_eof().await;
}

/// Bursts the relay receives in one batch (runs of equal size to one destination, which it
/// would send as one segmented message to a remote one) must arrive as the datagrams that
/// were sent: same boundaries, same order, nothing merged, in both directions; runs broken
/// by other sizes, other destinations, empty datagrams and datagrams too large to segment
/// included.
#[tokio::test]
async fn udp_bursts_keep_every_datagram_boundary_and_order() {
    let target_a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let target_b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (addr_a, addr_b) = (
        target_a.local_addr().unwrap(),
        target_b.local_addr().unwrap(),
    );
    let server = spawn_server(test_config()).await;
    let a = associate(&server, "127.0.0.1:0", None).await;

    // (destination, size) in sending order; the contents say which one it was.
    let mut plan = Vec::new();
    for size in [300, 300, 300, 200, 300, 300, 0, 0, 1500, 1500, 1500] {
        plan.push((addr_a, size));
    }
    for i in 0..12 {
        plan.push((if i % 3 == 2 { addr_b } else { addr_a }, 400));
    }
    let payload =
        |n: usize, size: usize| -> Vec<u8> { (0..size).map(|i| (n * 7 + i) as u8).collect() };
    for (n, (dst, size)) in plan.iter().enumerate() {
        a.send(&dst.to_string(), &payload(n, *size)).await;
    }
    for (target, addr) in [(&target_a, addr_a), (&target_b, addr_b)] {
        let mut buf = vec![0u8; 4096];
        for (n, (_, size)) in plan.iter().enumerate().filter(|(_, (d, _))| *d == addr) {
            let (len, from) = with_deadline(target.recv_from(&mut buf)).await.unwrap();
            assert_eq!(from.ip(), a.relay.ip());
            assert_eq!(&buf[..len], payload(n, *size).as_slice(), "datagram {n}");
        }
        assert!(nothing_arrives(target).await, "no extra datagram at {addr}");
    }

    // Replies: a burst of equal datagrams, then a shorter one, from one source.
    let (_, from) = {
        a.send(&addr_a.to_string(), b"where are you").await;
        let mut buf = [0u8; 64];
        with_deadline(target_a.recv_from(&mut buf)).await.unwrap()
    };
    let sizes = [700, 700, 700, 700, 700, 700, 700, 700, 700, 10];
    for (n, size) in sizes.iter().enumerate() {
        target_a.send_to(&payload(n, *size), from).await.unwrap();
    }
    for (n, size) in sizes.iter().enumerate() {
        let (src, got) = a.recv().await;
        assert_eq!(src, Addr::Ip(addr_a));
        assert_eq!(got, payload(n, *size), "reply {n}");
    }
    assert!(nothing_arrives(&a.socket).await);
}

/// A client on this host whose association takes datagrams from any port could have the
/// outbound socket send to the client-facing one: the relay took that for the client's and
/// made the outbound socket its reply address, and one datagram went round thousands of
/// times, a header longer each turn. Datagrams from the server's own relay sockets are
/// dropped, so it ends at the first turn.
#[tokio::test]
async fn a_datagram_cannot_loop_through_the_relays_own_sockets() {
    let server = spawn_server(test_config()).await;
    // "Any port from the client's IP", as PySocks asks.
    let a = associate(&server, "127.0.0.1:0", Some("0.0.0.0:0")).await;
    let probe = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    a.send(&probe.local_addr().unwrap().to_string(), b"where from?")
        .await;
    let mut buf = [0u8; 2048];
    let (_, outbound) = with_deadline(probe.recv_from(&mut buf)).await.unwrap();
    let outbound = SocketAddr::new("127.0.0.1".parse().unwrap(), outbound.port());

    // To the relay's own client-facing socket, a datagram for the outbound socket.
    let inner = datagram(Frag::STANDALONE, &outbound.to_string(), b"ZZZZZZZZ");
    a.send(&a.relay.to_string(), &inner).await;
    // And one more from the client: the association still serves it.
    a.send(&probe.local_addr().unwrap().to_string(), b"still here")
        .await;
    let (n, _) = with_deadline(probe.recv_from(&mut buf)).await.unwrap();
    assert_eq!(&buf[..n], b"still here");

    drop(a.control);
    let line = server.wait_for_log("control connection closed").await;
    // Up: the three the client sent, each passed on (the second to the relay's own
    // socket, which dropped what the outbound socket sent it); down: nothing, as the probe
    // never answers. Looping, it had counted 128 datagrams and 82 KB down in a millisecond.
    assert!(line.contains("datagrams up=3 down=0 dropped=1"), "{line}");
    assert!(line.contains(r#""bytes_down":0,"#), "{line}");
}

/// Nor when a request names a relay socket's port as the client's: association B told to
/// expect its client at A's outbound address drops what A's outbound socket sends it.
#[tokio::test]
async fn a_request_naming_a_relay_socket_as_its_client_gets_nothing_from_it() {
    let server = spawn_server(test_config()).await;
    let a = associate(&server, "127.0.0.1:0", Some("0.0.0.0:0")).await;
    let probe = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let probe_addr = probe.local_addr().unwrap().to_string();
    a.send(&probe_addr, b"where from?").await;
    let mut buf = [0u8; 2048];
    let (_, a_outbound) = with_deadline(probe.recv_from(&mut buf)).await.unwrap();
    let b = associate(
        &server,
        "127.0.0.1:0",
        Some(&format!("127.0.0.1:{}", a_outbound.port())),
    )
    .await;
    // Through A to B's client-facing socket, a datagram B would pass on to the probe.
    let smuggled = datagram(Frag::STANDALONE, &probe_addr, b"smuggled via B");
    a.send(&b.relay.to_string(), &smuggled).await;
    assert!(
        nothing_arrives(&probe).await,
        "B took A's outbound socket for its client"
    );
}
