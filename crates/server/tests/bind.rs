use std::net::SocketAddr;
use std::time::Duration;

use ferrosocks_proto::{Addr, Command, Rep};
use ferrosocks_testkit::{spawn_server, test_config, with_deadline, RawClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::request;

fn announced(reply: &ferrosocks_proto::Reply) -> SocketAddr {
    let Addr::Ip(addr) = reply.bnd else {
        panic!("BND should be an IP: {reply:?}")
    };
    assert!(
        !addr.ip().is_unspecified(),
        "BIND must never announce a wildcard address"
    );
    assert_ne!(addr.port(), 0);
    addr
}

async fn connect_from(source_ip: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = if to.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(source_ip.parse().unwrap(), 0))?;
    socket.connect(to).await
}

async fn bind_round_trip(listen: &str, dst: &str, peer_source: &str) {
    let mut config = test_config();
    config.listen = vec![listen.parse().unwrap()];
    let server = spawn_server(config).await;
    let mut c = RawClient::connect(server.addr).await;
    c.greet_no_auth().await;
    c.send(&request(Command::BIND, dst)).await;
    let first = c.recv_reply().await;
    assert_eq!(first.rep, Rep::SUCCEEDED);
    let listen_addr = announced(&first);

    let mut peer = with_deadline(connect_from(peer_source, listen_addr))
        .await
        .unwrap();
    let second = c.recv_reply().await;
    assert_eq!(second.rep, Rep::SUCCEEDED);
    assert_eq!(
        second.bnd,
        Addr::Ip(peer.local_addr().unwrap()),
        "second reply names the peer"
    );

    peer.write_all(b"from peer").await.unwrap();
    assert_eq!(c.recv_exact(9).await, b"from peer");
    c.send(b"from client").await;
    let mut buf = [0u8; 11];
    with_deadline(peer.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"from client");
}

#[tokio::test]
async fn bind_ipv4_announces_reachable_address_and_sends_two_replies() {
    bind_round_trip("127.0.0.1:0", "127.0.0.1:0", "127.0.0.1").await;
}

#[tokio::test]
async fn bind_with_all_zero_dst_accepts_any_peer() {
    bind_round_trip("127.0.0.1:0", "0.0.0.0:0", "127.0.0.3").await;
}

#[tokio::test]
async fn bind_ipv6() {
    bind_round_trip("[::1]:0", "[::1]:21", "::1").await;
}

#[tokio::test]
async fn bind_with_domain_dst() {
    bind_round_trip("127.0.0.1:0", "localhost:21", "127.0.0.1").await;
}

#[tokio::test]
async fn bind_refuses_a_peer_other_than_dst_and_then_accepts_the_right_one() {
    let server = spawn_server(test_config()).await;
    let mut c = RawClient::connect(server.addr).await;
    c.greet_no_auth().await;
    c.send(&request(Command::BIND, "127.0.0.2:0")).await;
    let listen_addr = announced(&c.recv_reply().await);

    // The wrong peer is reset, and the client hears nothing about it.
    let mut intruder = with_deadline(connect_from("127.0.0.1", listen_addr))
        .await
        .unwrap();
    let mut buf = [0u8; 1];
    let read = with_deadline(intruder.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "intruder must be closed: {read:?}"
    );

    let peer = with_deadline(connect_from("127.0.0.2", listen_addr))
        .await
        .unwrap();
    let second = c.recv_reply().await;
    assert_eq!(second.rep, Rep::SUCCEEDED);
    assert_eq!(second.bnd, Addr::Ip(peer.local_addr().unwrap()));
}

#[tokio::test]
async fn bind_wait_ends_in_a_failure_reply_and_close() {
    let mut config = test_config();
    config.timeouts.bind = Duration::from_millis(300);
    let server = spawn_server(config).await;
    let mut c = RawClient::connect(server.addr).await;
    c.greet_no_auth().await;
    c.send(&request(Command::BIND, "127.0.0.1:0")).await;
    assert_eq!(c.recv_reply().await.rep, Rep::SUCCEEDED);
    let second = c.recv_reply().await;
    assert_eq!(second.rep, Rep::TTL_EXPIRED);
    c.expect_eof().await;
}

/// A BIND waiting for a peer that only 127.0.0.2 may be, on a server whose wait would
/// last far longer than a test step: only the client's leaving can end its session in
/// time. (A probe connection from 127.0.0.1 is refused as the wrong peer, so it cannot end
/// the wait itself, as it could when the test waited for any peer.)
async fn bind_for_a_peer_that_never_comes(
    server: &ferrosocks_testkit::TestServer,
    early: &[u8],
) -> (RawClient, SocketAddr) {
    let mut c = RawClient::connect(server.addr).await;
    c.greet_no_auth().await;
    c.send(&request(Command::BIND, "127.0.0.2:0")).await;
    let listen_addr = announced(&c.recv_reply().await);
    if !early.is_empty() {
        c.send(early).await;
    }
    (c, listen_addr)
}

fn long_bind_wait() -> ferrosocks_server::Config {
    let mut config = test_config();
    config.timeouts.bind = Duration::from_secs(600);
    config
}

#[tokio::test]
async fn bind_wait_ends_when_the_client_leaves() {
    let server = spawn_server(long_bind_wait()).await;
    let (c, _) = bind_for_a_peer_that_never_comes(&server, b"").await;
    drop(c);
    let line = server.wait_for_log("client closed").await;
    assert!(line.contains("BIND"), "{line}");
}

/// A client that sent data for the peer and then half-closed still gets its peer, which
/// receives the data and the EOF; one that is reset after sending data is gone at once
/// (watching once stopped at the first byte, holding the listener until `bind_timeout`).
#[tokio::test]
async fn bind_wait_after_early_data_survives_a_half_close_but_not_a_reset() {
    let server = spawn_server(long_bind_wait()).await;
    let mut c = RawClient::connect(server.addr).await;
    c.greet_no_auth().await;
    c.send(&request(Command::BIND, "127.0.0.1:0")).await;
    let listen_addr = announced(&c.recv_reply().await);
    c.send(b"early bytes for the peer").await;
    c.stream.shutdown().await.unwrap();
    assert_eq!(
        half_closed_then_peer_reads(listen_addr).await,
        b"early bytes for the peer"
    );

    let (c, listen_addr) = bind_for_a_peer_that_never_comes(&server, b"early bytes").await;
    // A wrong peer is refused and the wait goes on.
    let _refused = TcpStream::connect(listen_addr).await;
    // Linger zero: the close resets the connection.
    socket2::SockRef::from(&c.stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(c);
    let line = server.wait_for_log("client closed").await;
    assert!(line.contains("BIND"), "{line}");
}

/// The same with the early data sent in the same write as the request: it is read with
/// the request, not left in the socket, and a half-close behind it still waits.
#[tokio::test]
async fn bind_with_pipelined_data_and_a_half_close_still_gets_its_peer() {
    let server = spawn_server(long_bind_wait()).await;
    let mut c = RawClient::connect(server.addr).await;
    let mut bytes = vec![5, 1, 0];
    bytes.extend(request(Command::BIND, "127.0.0.1:0"));
    bytes.extend(b"pipelined for the peer");
    c.send(&bytes).await;
    assert_eq!(c.recv_exact(2).await, [5, 0]);
    let listen_addr = announced(&c.recv_reply().await);
    c.stream.shutdown().await.unwrap();
    assert_eq!(
        half_closed_then_peer_reads(listen_addr).await,
        b"pipelined for the peer"
    );
}

/// After the client half-closed (and a moment for the server to notice), a peer connects
/// to the BIND listener at `listen_addr` and reads everything to EOF.
async fn half_closed_then_peer_reads(listen_addr: SocketAddr) -> Vec<u8> {
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut peer = with_deadline(TcpStream::connect(listen_addr))
        .await
        .unwrap();
    let mut got = Vec::new();
    with_deadline(peer.read_to_end(&mut got)).await.unwrap();
    got
}

#[tokio::test]
async fn bind_announces_the_external_address_when_configured() {
    let mut config = test_config();
    config.external_address = Some("192.0.2.7".parse().unwrap());
    let server = spawn_server(config).await;
    let mut c = RawClient::connect(server.addr).await;
    c.greet_no_auth().await;
    c.send(&request(Command::BIND, "127.0.0.1:0")).await;
    let first = c.recv_reply().await;
    assert_eq!(first.rep, Rep::SUCCEEDED);
    let Addr::Ip(announced) = first.bnd else {
        panic!("IP expected")
    };
    assert_eq!(announced.ip().to_string(), "192.0.2.7");
}
