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

#[tokio::test]
async fn bind_listener_is_closed_when_the_client_leaves() {
    let server = spawn_server(test_config()).await;
    let mut c = RawClient::connect(server.addr).await;
    c.greet_no_auth().await;
    c.send(&request(Command::BIND, "127.0.0.1:0")).await;
    let listen_addr = announced(&c.recv_reply().await);
    drop(c);
    wait_until_closed(listen_addr).await;
}

/// Waits (within the deadline) until nothing accepts connections at `addr` any more.
async fn wait_until_closed(addr: SocketAddr) {
    with_deadline(async {
        loop {
            if TcpStream::connect(addr).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// A client that sent data for the peer and then half-closed still gets its peer, which
/// receives the data and the EOF; one that is reset after sending data is gone at once
/// (watching once stopped at the first byte, holding the listener until `bind_timeout`).
#[tokio::test]
async fn bind_wait_after_early_data_survives_a_half_close_but_not_a_reset() {
    let server = spawn_server(test_config()).await;
    let start_bind = || async {
        let mut c = RawClient::connect(server.addr).await;
        c.greet_no_auth().await;
        c.send(&request(Command::BIND, "127.0.0.1:0")).await;
        let listen_addr = announced(&c.recv_reply().await);
        c.send(b"early bytes for the peer").await;
        (c, listen_addr)
    };

    let (c, listen_addr) = start_bind().await;
    let mut stream = c.stream;
    stream.shutdown().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut peer = with_deadline(TcpStream::connect(listen_addr))
        .await
        .unwrap();
    let mut got = Vec::new();
    with_deadline(peer.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"early bytes for the peer");

    let (c, listen_addr) = start_bind().await;
    let stream = c.stream;
    // Linger zero: the close resets the connection.
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(stream);
    wait_until_closed(listen_addr).await;
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
