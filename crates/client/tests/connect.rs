use std::net::SocketAddr;

use ferrosocks_client::{ClientConfig, ProxyUrl, Resolution, Socks5Stream};
use ferrosocks_proto::addr::atyp;
use ferrosocks_proto::{Addr, Command, Rep};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{deadline, serve_handshake, spawn_fake, url, Policy};

/// Connects through a fake that records the request, answers with `bnd`, then echoes.
async fn connect_and_echo(proxy_bind: &str, resolution: Resolution, target: &str) -> Addr {
    let bnd: SocketAddr = "127.0.0.1:4321".parse().unwrap();
    let (addr, server) = spawn_fake(proxy_bind, Policy::no_auth(), move |mut s| async move {
        let request = s.request.clone();
        s.reply(Rep::SUCCEEDED, bnd).await;
        s.echo().await;
        request
    })
    .await;

    let mut stream = Socks5Stream::connect(&url(addr, resolution), target)
        .await
        .unwrap();
    assert_eq!(stream.bound_addr(), &Addr::Ip(bnd));
    stream.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    drop(stream);

    let request = server.await.unwrap().expect("handshake completed");
    assert_eq!(request.command, Command::CONNECT);
    request.dst
}

#[tokio::test]
async fn connect_ipv4_target_arrives_as_atyp_01() {
    deadline(async {
        let dst = connect_and_echo("127.0.0.1:0", Resolution::Local, "192.0.2.10:80").await;
        assert_eq!(dst.atyp(), atyp::IPV4);
        assert_eq!(dst.to_string(), "192.0.2.10:80");
    })
    .await
}

#[tokio::test]
async fn connect_ipv6_target_through_ipv6_proxy_arrives_as_atyp_04() {
    deadline(async {
        let dst = connect_and_echo("[::1]:0", Resolution::Proxy, "[2001:db8::7]:443").await;
        assert_eq!(dst.atyp(), atyp::IPV6);
        assert_eq!(dst.to_string(), "[2001:db8::7]:443");
    })
    .await
}

#[tokio::test]
async fn socks5h_sends_the_name_unresolved_as_atyp_03() {
    deadline(async {
        // `.invalid` cannot resolve, so success proves the client did not try.
        let dst = connect_and_echo(
            "127.0.0.1:0",
            Resolution::Proxy,
            "unresolvable.invalid:8080",
        )
        .await;
        assert_eq!(dst.atyp(), atyp::DOMAIN);
        assert_eq!(dst.to_string(), "unresolvable.invalid:8080");
    })
    .await
}

#[tokio::test]
async fn socks5_resolves_the_name_locally_and_sends_an_ip() {
    deadline(async {
        let dst = connect_and_echo("127.0.0.1:0", Resolution::Local, "localhost:8080").await;
        let Addr::Ip(sa) = dst else {
            panic!("expected an IP address, got {dst}")
        };
        assert!(sa.ip().is_loopback());
        assert_eq!(sa.port(), 8080);
    })
    .await
}

#[tokio::test]
async fn tunnel_bytes_sent_with_the_reply_are_read_first() {
    deadline(async {
        let (addr, server) = spawn_fake("127.0.0.1:0", Policy::no_auth(), |mut s| async move {
            // Reply and the target's banner in one segment, as a fast server may send them.
            let mut bytes = ferrosocks_proto::Encode::to_bytes(&ferrosocks_proto::Reply {
                rep: Rep::SUCCEEDED,
                bnd: Addr::UNSPECIFIED,
            });
            bytes.extend_from_slice(b"SSH-2.0-banner\r\n");
            s.stream.write_all(&bytes).await.unwrap();
            s.echo().await;
        })
        .await;
        let proxy = url(addr, Resolution::Proxy);
        let mut stream = Socks5Stream::connect(&proxy, ("example.test", 22))
            .await
            .unwrap();
        let mut banner = [0u8; 16];
        stream.read_exact(&mut banner).await.unwrap();
        assert_eq!(&banner, b"SSH-2.0-banner\r\n");
        stream.write_all(b"after").await.unwrap();
        let mut echoed = [0u8; 5];
        stream.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed, b"after");
        drop(stream);
        server.await.unwrap().unwrap();
    })
    .await
}

#[tokio::test]
async fn into_inner_hands_back_the_buffered_bytes() {
    deadline(async {
        let (addr, _server) = spawn_fake("127.0.0.1:0", Policy::no_auth(), |mut s| async move {
            let mut bytes = ferrosocks_proto::Encode::to_bytes(&ferrosocks_proto::Reply {
                rep: Rep::SUCCEEDED,
                bnd: Addr::UNSPECIFIED,
            });
            bytes.extend_from_slice(b"early");
            s.stream.write_all(&bytes).await.unwrap();
            s.echo().await;
        })
        .await;
        let stream = Socks5Stream::connect(&url(addr, Resolution::Proxy), "127.0.0.1:1")
            .await
            .unwrap();
        // The reply and the payload arrive in one segment on loopback, but a read may
        // still split them; either way no byte may be lost.
        let (mut tcp, buffered) = stream.into_inner();
        let mut all = buffered.to_vec();
        while all.len() < 5 {
            let mut more = [0u8; 5];
            let n = tcp.read(&mut more).await.unwrap();
            assert_ne!(n, 0);
            all.extend_from_slice(&more[..n]);
        }
        assert_eq!(all, b"early");
    })
    .await
}

#[tokio::test]
async fn connect_with_runs_over_any_stream() {
    deadline(async {
        let (client_side, server_side) = tokio::io::duplex(1024);
        let server = tokio::spawn(async move {
            let mut s = serve_handshake(server_side, &Policy::no_auth())
                .await
                .unwrap();
            let dst = s.request.dst.clone();
            s.reply(
                Rep::SUCCEEDED,
                "10.0.0.1:5000".parse::<SocketAddr>().unwrap(),
            )
            .await;
            s.echo().await;
            dst
        });
        // The URL's own address is never dialled by connect_with.
        let proxy: ProxyUrl = "socks5h://192.0.2.99:1080".parse().unwrap();
        let mut stream = Socks5Stream::connect_with(
            client_side,
            &proxy,
            ("db.internal", 5432),
            &ClientConfig::default(),
        )
        .await
        .unwrap();
        assert_eq!(stream.bound_addr().to_string(), "10.0.0.1:5000");
        stream.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        stream.read_exact(&mut one).await.unwrap();
        drop(stream);
        assert_eq!(server.await.unwrap().to_string(), "db.internal:5432");
    })
    .await
}

#[tokio::test]
async fn pipelined_handshake_sends_greeting_and_request_together() {
    deadline(async {
        let (addr, server) = spawn_fake("127.0.0.1:0", Policy::no_auth(), |mut s| async move {
            s.reply(Rep::SUCCEEDED, Addr::UNSPECIFIED).await;
            s.request.dst
        })
        .await;
        let config = ClientConfig {
            pipelined: true,
            ..ClientConfig::default()
        };
        let stream = Socks5Stream::connect_with_config(
            &url(addr, Resolution::Proxy),
            "pipe.test:1",
            &config,
        )
        .await
        .unwrap();
        drop(stream);
        assert_eq!(server.await.unwrap().unwrap().to_string(), "pipe.test:1");
    })
    .await
}

#[tokio::test]
async fn proxy_given_by_name_is_resolved_and_dialled() {
    deadline(async {
        let (addr, server) = spawn_fake("127.0.0.1:0", Policy::no_auth(), |mut s| async move {
            s.reply(Rep::SUCCEEDED, Addr::UNSPECIFIED).await;
        })
        .await;
        let proxy: ProxyUrl = format!("socks5h://localhost:{}", addr.port())
            .parse()
            .unwrap();
        Socks5Stream::connect(&proxy, "a.test:1").await.unwrap();
        server.await.unwrap().unwrap();
    })
    .await
}
