use std::time::Duration;

use ferrosocks_client::{
    ClientConfig, Error, ProxyUrl, Resolution, Socks5Listener, Socks5Stream, UdpAssociation,
};
use ferrosocks_proto::{Addr, Rep};
use ferrosocks_server::{AuthMethod, Users};
use ferrosocks_testkit::{spawn_server, tcp_echo, test_config, udp_echo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{deadline, url};

async fn echo_round_trip<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(stream: &mut S) {
    stream.write_all(b"round trip").await.unwrap();
    let mut back = [0u8; 10];
    stream.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"round trip");
}

#[tokio::test]
async fn connect_through_the_real_server_by_ip_and_by_name() {
    deadline(async {
        let server = spawn_server(test_config()).await;
        let echo = tcp_echo("127.0.0.1:0").await;

        let mut stream = Socks5Stream::connect(&url(server.addr, Resolution::Local), echo)
            .await
            .unwrap();
        let Addr::Ip(bound) = stream.bound_addr() else {
            panic!("CONNECT BND should be an IP")
        };
        assert!(bound.ip().is_loopback());
        echo_round_trip(&mut stream).await;

        for resolution in [Resolution::Local, Resolution::Proxy] {
            let mut stream =
                Socks5Stream::connect(&url(server.addr, resolution), ("localhost", echo.port()))
                    .await
                    .unwrap();
            echo_round_trip(&mut stream).await;
        }
    })
    .await
}

#[tokio::test]
async fn refused_target_is_rep_05_from_the_real_server() {
    deadline(async {
        let server = spawn_server(test_config()).await;
        // A port that was just free: nothing listens there any more.
        let closed = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let err = Socks5Stream::connect(&url(server.addr, Resolution::Local), closed)
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Rejected(Rep::CONNECTION_REFUSED)),
            "{err:?}"
        );
    })
    .await
}

#[tokio::test]
async fn username_password_with_the_real_server() {
    deadline(async {
        let mut config = test_config();
        config.auth_methods = vec![AuthMethod::UserPass];
        let (name, cred) = Users::parse_entry("alice:open sesame").unwrap();
        config.users.insert(name, cred);
        let server = spawn_server(config).await;
        let echo = tcp_echo("127.0.0.1:0").await;
        let port = server.addr.port();

        let good: ProxyUrl = format!("socks5://alice:open%20sesame@127.0.0.1:{port}")
            .parse()
            .unwrap();
        let mut stream = Socks5Stream::connect(&good, echo).await.unwrap();
        echo_round_trip(&mut stream).await;

        let bad: ProxyUrl = format!("socks5://alice:closed@127.0.0.1:{port}")
            .parse()
            .unwrap();
        let err = Socks5Stream::connect(&bad, echo).await.unwrap_err();
        assert!(
            matches!(err, Error::AuthFailed(status) if status != 0),
            "{err:?}"
        );

        let none = url(server.addr, Resolution::Local);
        let err = Socks5Stream::connect(&none, echo).await.unwrap_err();
        assert!(matches!(err, Error::NoAcceptableMethod), "{err:?}");
    })
    .await
}

#[tokio::test]
async fn bind_through_the_real_server() {
    deadline(async {
        let server = spawn_server(test_config()).await;
        let config = ClientConfig {
            accept_timeout: Some(Duration::from_secs(5)),
            ..ClientConfig::default()
        };
        let listener = Socks5Listener::bind_with_config(
            &url(server.addr, Resolution::Local),
            "0.0.0.0:0",
            &config,
        )
        .await
        .unwrap();
        let Some(announced) = listener.announced_addr().ip_socket_addr() else {
            panic!("BIND should announce an IP address")
        };
        let peer = tokio::spawn(async move {
            let mut peer = TcpStream::connect(announced).await.unwrap();
            let local = peer.local_addr().unwrap();
            peer.write_all(b"from peer").await.unwrap();
            let mut answer = [0u8; 6];
            peer.read_exact(&mut answer).await.unwrap();
            assert_eq!(&answer, b"thanks");
            local
        });
        let (mut stream, peer_addr) = listener.accept().await.unwrap();
        let mut hello = [0u8; 9];
        stream.read_exact(&mut hello).await.unwrap();
        assert_eq!(&hello, b"from peer");
        stream.write_all(b"thanks").await.unwrap();
        assert_eq!(peer_addr, Addr::Ip(peer.await.unwrap()));
    })
    .await
}

#[tokio::test]
async fn udp_through_the_real_server() {
    deadline(async {
        let server = spawn_server(test_config()).await;
        let echo = udp_echo("127.0.0.1:0").await;
        for resolution in [Resolution::Local, Resolution::Proxy] {
            let udp = UdpAssociation::associate(&url(server.addr, resolution), None)
                .await
                .unwrap();
            let mut buf = vec![0u8; 2048];
            udp.send_to(echo, b"datagram").await.unwrap();
            let (len, from) = udp.recv_from(&mut buf).await.unwrap();
            assert_eq!(&buf[..len], b"datagram");
            assert_eq!(from, Addr::Ip(echo));

            udp.send_to(("localhost", echo.port()), b"by name")
                .await
                .unwrap();
            let (len, _) = udp.recv_from(&mut buf).await.unwrap();
            assert_eq!(&buf[..len], b"by name");
        }
    })
    .await
}

#[tokio::test]
async fn real_server_ending_the_association_is_reported() {
    deadline(async {
        let mut config = test_config();
        config.timeouts.udp_idle = Duration::from_millis(300);
        let server = spawn_server(config).await;
        let udp = UdpAssociation::associate(&url(server.addr, Resolution::Local), None)
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let err = udp.recv_from(&mut buf).await.unwrap_err();
        assert!(matches!(err, Error::AssociationClosed), "{err:?}");
    })
    .await
}

#[tokio::test]
async fn ipv6_control_connection_gets_an_ipv6_udp_socket() {
    deadline(async {
        let mut config = test_config();
        config.listen = vec!["[::1]:0".parse().unwrap()];
        let server = spawn_server(config).await;
        let echo = udp_echo("[::1]:0").await;
        let proxy: ProxyUrl = format!("socks5://[::1]:{}", server.addr.port())
            .parse()
            .unwrap();
        let udp = UdpAssociation::associate(&proxy, None).await.unwrap();
        assert!(udp.local_addr().unwrap().is_ipv6());
        assert!(udp.relay_addr().is_ipv6());
        udp.send_to(echo, b"six").await.unwrap();
        let mut buf = [0u8; 512];
        let (len, from) = udp.recv_from(&mut buf).await.unwrap();
        assert_eq!((&buf[..len], from), (&b"six"[..], Addr::Ip(echo)));
    })
    .await
}
