use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use ferrosocks_client::{Error, ProxyUrl, Resolution, UdpAssociation};
use ferrosocks_proto::udp::{decode_datagram, encode_datagram};
use ferrosocks_proto::{Addr, Command, Frag, Rep, UdpHeader};
use tokio::io::AsyncReadExt;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;

use crate::support::{deadline, spawn_fake, url, Policy, Session};

/// What the fake relay saw.
struct Seen {
    announced: Addr,
    destinations: Vec<Addr>,
}

/// A fake proxy whose relay answers each datagram from "the destination", with the
/// payload upper-cased, `rounds` times, then either closes the control connection or
/// waits for the client to close it.
async fn spawn_relay(
    reply_unspecified: bool,
    rounds: usize,
    close_after: bool,
) -> (ProxyUrl, tokio::task::JoinHandle<Option<Seen>>) {
    let relay = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let bnd = if reply_unspecified {
        SocketAddr::new("0.0.0.0".parse().unwrap(), relay_addr.port())
    } else {
        relay_addr
    };
    let (addr, server) = spawn_fake(
        "127.0.0.1:0",
        Policy::no_auth(),
        move |mut s: Session| async move {
            assert_eq!(s.request.command, Command::UDP_ASSOCIATE);
            s.reply(Rep::SUCCEEDED, bnd).await;
            let mut destinations = Vec::new();
            let mut buf = [0u8; 2048];
            for _ in 0..rounds {
                let (n, from) = relay.recv_from(&mut buf).await.unwrap();
                let (header, payload) = decode_datagram(&buf[..n]).unwrap();
                destinations.push(header.dst.clone());
                let mut answer = BytesMut::new();
                encode_datagram(&header, &payload.to_ascii_uppercase(), &mut answer);
                relay.send_to(&answer, from).await.unwrap();
            }
            if !close_after {
                // Wait for the client to end the association by closing the control stream.
                let mut rest = Vec::new();
                s.stream.read_to_end(&mut rest).await.unwrap();
            }
            Seen {
                announced: s.request.dst,
                destinations,
            }
        },
    )
    .await;
    (url(addr, Resolution::Proxy), server)
}

#[tokio::test]
async fn datagrams_go_to_any_destination_and_come_back_with_the_source() {
    deadline(async {
        let (proxy, server) = spawn_relay(false, 2, false).await;
        let udp = UdpAssociation::associate(&proxy, None).await.unwrap();
        let mut buf = vec![0u8; 1024];

        udp.send_to("192.0.2.5:53", b"first").await.unwrap();
        let (len, from) = udp.recv_from(&mut buf).await.unwrap();
        assert_eq!(
            (&buf[..len], from.to_string().as_str()),
            (&b"FIRST"[..], "192.0.2.5:53")
        );

        udp.send_to(("name.test", 7), b"second").await.unwrap();
        let (len, from) = udp.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..len], b"SECOND");
        assert_eq!(from.to_string(), "name.test:7");

        let local = udp.local_addr().unwrap();
        drop(udp);
        let seen = server.await.unwrap().unwrap();
        // Without a hint, the client announces its own UDP address so the proxy can filter.
        assert_eq!(seen.announced, Addr::Ip(local));
        assert_eq!(seen.destinations.len(), 2);
        assert_eq!(seen.destinations[1].to_string(), "name.test:7");
    })
    .await
}

#[tokio::test]
async fn unspecified_relay_address_means_the_proxy_ip() {
    deadline(async {
        let (proxy, _server) = spawn_relay(true, 1, false).await;
        let udp = UdpAssociation::associate(&proxy, None).await.unwrap();
        assert_eq!(udp.relay_addr().ip().to_string(), "127.0.0.1");
        udp.send_to("192.0.2.5:9", b"x").await.unwrap();
        let mut buf = [0u8; 512];
        let (len, _) = udp.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..len], b"X");
    })
    .await
}

#[tokio::test]
async fn explicit_hint_is_announced() {
    deadline(async {
        let (proxy, server) = spawn_relay(false, 0, false).await;
        let hint: SocketAddr = "0.0.0.0:0".parse().unwrap();
        let udp = UdpAssociation::associate(&proxy, Some(hint)).await.unwrap();
        drop(udp);
        assert_eq!(server.await.unwrap().unwrap().announced, Addr::Ip(hint));
    })
    .await
}

#[tokio::test]
async fn closed_control_connection_ends_the_association() {
    deadline(async {
        let (proxy, server) = spawn_relay(false, 1, true).await;
        let udp = UdpAssociation::associate(&proxy, None).await.unwrap();
        udp.send_to("192.0.2.5:9", b"last").await.unwrap();
        let mut buf = [0u8; 512];
        // The datagram that arrived before the close is still delivered...
        let (len, _) = udp.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..len], b"LAST");
        server.await.unwrap().unwrap();
        // ...and then the end of the control connection is reported.
        let err = udp.recv_from(&mut buf).await.unwrap_err();
        assert!(matches!(err, Error::AssociationClosed), "{err:?}");
        assert!(udp.is_closed());
        let err = udp.send_to("192.0.2.5:9", b"late").await.unwrap_err();
        assert!(matches!(err, Error::AssociationClosed), "{err:?}");
    })
    .await
}

#[tokio::test]
async fn malformed_and_fragmented_datagrams_are_skipped() {
    deadline(async {
        let relay = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let relay_addr = relay.local_addr().unwrap();
        let (ready_tx, ready_rx) = oneshot::channel::<()>();
        let (addr, _server) = spawn_fake(
            "127.0.0.1:0",
            Policy::no_auth(),
            move |mut s: Session| async move {
                s.reply(Rep::SUCCEEDED, relay_addr).await;
                let mut buf = [0u8; 512];
                let (_, client) = relay.recv_from(&mut buf).await.unwrap();
                let source: Addr = "198.51.100.1:53".parse().unwrap();
                // Garbage, a truncated header, a fragment, then one good datagram.
                relay.send_to(b"\xff\xff\xff", client).await.unwrap();
                relay.send_to(&[0, 0, 0, 1, 127], client).await.unwrap();
                let mut frag = BytesMut::new();
                let header = UdpHeader {
                    frag: Frag::fragment(1, false),
                    dst: source.clone(),
                };
                encode_datagram(&header, b"part", &mut frag);
                relay.send_to(&frag, client).await.unwrap();
                let mut good = BytesMut::new();
                let header = UdpHeader {
                    frag: Frag::STANDALONE,
                    dst: source,
                };
                encode_datagram(&header, b"whole", &mut good);
                relay.send_to(&good, client).await.unwrap();
                let _ = ready_rx.await;
            },
        )
        .await;
        let udp = UdpAssociation::associate(&url(addr, Resolution::Local), None)
            .await
            .unwrap();
        udp.send_to("192.0.2.5:9", b"go").await.unwrap();
        let mut buf = [0u8; 512];
        let (len, from) = udp.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..len], b"whole");
        assert_eq!(from.to_string(), "198.51.100.1:53");
        let _ = ready_tx.send(());
    })
    .await
}

#[tokio::test]
async fn dropping_the_association_closes_the_control_connection() {
    deadline(async {
        let (proxy, server) = spawn_relay(false, 0, false).await;
        let udp = UdpAssociation::associate(&proxy, None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(udp);
        // The fake returns only once it read EOF on the control connection.
        assert!(server.await.unwrap().is_some());
    })
    .await
}
