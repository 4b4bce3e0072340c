use std::net::SocketAddr;
use std::time::Duration;

use ferrosocks_client::{ClientConfig, Error, Resolution, Socks5Listener, Step};
use ferrosocks_proto::{Addr, Command, Encode, Rep, Reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{deadline, spawn_fake, url, Policy};

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn bind_announces_then_accepts_the_peer() {
    deadline(async {
        let (addr, server) = spawn_fake("127.0.0.1:0", Policy::no_auth(), |mut s| async move {
            let request = s.request.clone();
            s.reply(Rep::SUCCEEDED, sa("127.0.0.1:5555")).await;
            // A pause between the replies, as while the proxy waits for the peer.
            tokio::time::sleep(Duration::from_millis(50)).await;
            s.reply(Rep::SUCCEEDED, sa("127.0.0.1:6666")).await;
            s.stream.write_all(b"hello").await.unwrap();
            s.echo().await;
            request
        })
        .await;

        let listener = Socks5Listener::bind(&url(addr, Resolution::Local), "127.0.0.1:7777")
            .await
            .unwrap();
        assert_eq!(listener.announced_addr(), &Addr::Ip(sa("127.0.0.1:5555")));
        let (mut stream, peer) = listener.accept().await.unwrap();
        assert_eq!(peer, Addr::Ip(sa("127.0.0.1:6666")));
        assert_eq!(stream.bound_addr(), &peer);
        let mut hello = [0u8; 5];
        stream.read_exact(&mut hello).await.unwrap();
        assert_eq!(&hello, b"hello");
        stream.write_all(b"back").await.unwrap();
        let mut back = [0u8; 4];
        stream.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"back");
        drop(stream);

        let request = server.await.unwrap().unwrap();
        assert_eq!(request.command, Command::BIND);
        assert_eq!(request.dst, Addr::Ip(sa("127.0.0.1:7777")));
    })
    .await
}

#[tokio::test]
async fn both_replies_and_data_in_one_segment() {
    deadline(async {
        let (addr, _server) = spawn_fake("127.0.0.1:0", Policy::no_auth(), |mut s| async move {
            let mut bytes = Reply {
                rep: Rep::SUCCEEDED,
                bnd: Addr::Ip(sa("[::1]:5555")),
            }
            .to_bytes();
            Reply {
                rep: Rep::SUCCEEDED,
                bnd: "peer.test:6666".parse().unwrap(),
            }
            .encode(&mut bytes);
            bytes.extend_from_slice(b"data");
            s.stream.write_all(&bytes).await.unwrap();
            s.echo().await;
        })
        .await;
        let listener = Socks5Listener::bind(&url(addr, Resolution::Proxy), "0.0.0.0:0")
            .await
            .unwrap();
        assert_eq!(listener.announced_addr().to_string(), "[::1]:5555");
        let (mut stream, peer) = listener.accept().await.unwrap();
        assert_eq!(peer.to_string(), "peer.test:6666");
        let mut data = [0u8; 4];
        stream.read_exact(&mut data).await.unwrap();
        assert_eq!(&data, b"data");
    })
    .await
}

#[tokio::test]
async fn failed_second_reply_is_rejected() {
    deadline(async {
        let (addr, _server) = spawn_fake("127.0.0.1:0", Policy::no_auth(), |mut s| async move {
            s.reply(Rep::SUCCEEDED, sa("127.0.0.1:5555")).await;
            s.reply(Rep::TTL_EXPIRED, Addr::UNSPECIFIED).await;
        })
        .await;
        let listener = Socks5Listener::bind(&url(addr, Resolution::Local), "0.0.0.0:0")
            .await
            .unwrap();
        let err = listener.accept().await.unwrap_err();
        assert!(matches!(err, Error::Rejected(Rep::TTL_EXPIRED)), "{err:?}");
    })
    .await
}

#[tokio::test]
async fn close_before_the_second_reply_is_closed_during_accept() {
    deadline(async {
        let (addr, _server) = spawn_fake("127.0.0.1:0", Policy::no_auth(), |mut s| async move {
            s.reply(Rep::SUCCEEDED, sa("127.0.0.1:5555")).await;
        })
        .await;
        let listener = Socks5Listener::bind(&url(addr, Resolution::Local), "0.0.0.0:0")
            .await
            .unwrap();
        let err = listener.accept().await.unwrap_err();
        assert!(matches!(err, Error::Closed(Step::Accept)), "{err:?}");
    })
    .await
}

#[tokio::test]
async fn accept_timeout_bounds_the_wait_for_the_peer() {
    deadline(async {
        let (addr, _server) = spawn_fake("127.0.0.1:0", Policy::no_auth(), |mut s| async move {
            s.reply(Rep::SUCCEEDED, sa("127.0.0.1:5555")).await;
            tokio::time::sleep(Duration::from_secs(30)).await;
        })
        .await;
        let config = ClientConfig {
            accept_timeout: Some(Duration::from_millis(200)),
            ..ClientConfig::default()
        };
        let listener =
            Socks5Listener::bind_with_config(&url(addr, Resolution::Local), "0.0.0.0:0", &config)
                .await
                .unwrap();
        let err = listener.accept().await.unwrap_err();
        assert!(matches!(err, Error::Timeout(Step::Accept)), "{err:?}");
    })
    .await
}
