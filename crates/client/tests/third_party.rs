//! The client library against servers nobody here wrote: Dante (CONNECT, BIND and UDP
//! ASSOCIATE with IPv4, IPv6 and domain targets) and microsocks (CONNECT, and
//! username/password). The daemons are started on loopback by testkit; a missing one
//! fails the test.

use std::net::SocketAddr;

use ferrosocks_client::{
    Error, ProxyUrl, Resolution, Socks5Listener, Socks5Stream, UdpAssociation,
};
use ferrosocks_proto::Addr;
use ferrosocks_testkit::daemons::{self, Daemon};
use ferrosocks_testkit::{tcp_echo, udp_echo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{deadline, url};

async fn round_trip<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    msg: &[u8],
) {
    s.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(back, msg);
}

/// CONNECT to echo servers on 127.0.0.1 and ::1, and by name, with both schemes.
async fn connect_everywhere(daemon: &Daemon, proxy: impl Fn(Resolution) -> ProxyUrl) {
    let echo4 = tcp_echo("127.0.0.1:0").await;
    let echo6 = tcp_echo("[::1]:0").await;
    for resolution in [Resolution::Local, Resolution::Proxy] {
        let proxy = proxy(resolution);
        for target in [
            Addr::Ip(echo4),
            Addr::Ip(echo6),
            format!("localhost:{}", echo4.port()).parse().unwrap(),
        ] {
            let mut s = Socks5Stream::connect(&proxy, &target)
                .await
                .unwrap_or_else(|e| {
                    panic!("CONNECT {target} ({resolution:?}): {e}\n{}", daemon.log())
                });
            round_trip(&mut s, format!("via {target}").as_bytes()).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dante_connect_to_ipv4_ipv6_and_names() {
    let dante = daemons::dante();
    deadline(connect_everywhere(&dante, |r| url(dante.addr, r))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dante_refusal_is_a_typed_rep() {
    let dante = daemons::dante();
    deadline(async {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let err = Socks5Stream::connect(&url(dante.addr, Resolution::Local), closed)
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Rejected(rep) if rep.0 != 0),
            "{err:?}\n{}",
            dante.log()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dante_bind_announces_and_relays_the_peer() {
    let dante = daemons::dante();
    deadline(async {
        for (family, peer_ip) in [("v4", "127.0.0.1"), ("v6", "::1")] {
            let proxy = url(dante.addr, Resolution::Local);
            let expected: SocketAddr = (peer_ip.parse::<std::net::IpAddr>().unwrap(), 0).into();
            let listener = Socks5Listener::bind(&proxy, expected)
                .await
                .unwrap_or_else(|e| panic!("BIND {family}: {e}\n{}", dante.log()));
            let Addr::Ip(announced) = listener.announced_addr().clone() else {
                panic!("Dante announced a name")
            };
            assert!(announced.ip().is_loopback(), "{family}: {announced}");
            let mut peer = TcpStream::connect(announced).await.unwrap();
            let (mut stream, from) = listener.accept().await.unwrap();
            assert_eq!(from, Addr::Ip(peer.local_addr().unwrap()), "{family}");
            stream.write_all(b"client to peer").await.unwrap();
            let mut buf = [0u8; 14];
            peer.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"client to peer");
            peer.write_all(b"peer to client").await.unwrap();
            stream.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"peer to client");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dante_udp_to_ipv4_ipv6_and_names() {
    let dante = daemons::dante();
    deadline(async {
        let echo4 = udp_echo("127.0.0.1:0").await;
        let echo6 = udp_echo("[::1]:0").await;
        for resolution in [Resolution::Local, Resolution::Proxy] {
            let udp = UdpAssociation::associate(&url(dante.addr, resolution), None)
                .await
                .unwrap_or_else(|e| panic!("UDP ASSOCIATE: {e}\n{}", dante.log()));
            for (target, from_port) in [
                (Addr::Ip(echo4), echo4.port()),
                (Addr::Ip(echo6), echo6.port()),
                (
                    format!("localhost:{}", echo4.port()).parse().unwrap(),
                    echo4.port(),
                ),
            ] {
                let payload = format!("datagram for {target}");
                let mut buf = vec![0u8; 2048];
                // UDP may drop a datagram even on loopback: a few tries, each bounded.
                let mut got = None;
                for _ in 0..5 {
                    udp.send_to(&target, payload.as_bytes()).await.unwrap();
                    if let Ok(r) = tokio::time::timeout(
                        std::time::Duration::from_secs(2),
                        udp.recv_from(&mut buf),
                    )
                    .await
                    {
                        got = Some(r.unwrap());
                        break;
                    }
                }
                let (len, source) = got.unwrap_or_else(|| {
                    panic!(
                        "no UDP reply for {target} ({resolution:?})\n{}",
                        dante.log()
                    )
                });
                assert_eq!(&buf[..len], payload.as_bytes());
                assert_eq!(source.port(), from_port, "{target}");
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn microsocks_connect_to_ipv4_ipv6_and_names() {
    let ms = daemons::microsocks(None);
    deadline(connect_everywhere(&ms, |r| url(ms.addr, r))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn microsocks_username_password() {
    let ms = daemons::microsocks(Some(("alice", "s3cret")));
    deadline(async {
        let port = ms.addr.port();
        connect_everywhere(&ms, |r| {
            let scheme = if r == Resolution::Proxy {
                "socks5h"
            } else {
                "socks5"
            };
            format!("{scheme}://alice:s3cret@127.0.0.1:{port}")
                .parse()
                .unwrap()
        })
        .await;
        let echo = tcp_echo("127.0.0.1:0").await;
        let bad: ProxyUrl = format!("socks5://alice:wrong@127.0.0.1:{port}")
            .parse()
            .unwrap();
        let err = Socks5Stream::connect(&bad, echo).await.unwrap_err();
        assert!(matches!(err, Error::AuthFailed(s) if s != 0), "{err:?}");
        let none = url(ms.addr, Resolution::Local);
        let err = Socks5Stream::connect(&none, echo).await.unwrap_err();
        assert!(matches!(err, Error::NoAcceptableMethod), "{err:?}");
    })
    .await;
}
