use std::time::Duration;

use ferrosocks_client::{ClientConfig, Error, ProxyUrl, Resolution, Socks5Stream, Step};
use ferrosocks_proto::{Addr, ProtocolError, Rep};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::support::{deadline, spawn_fake, spawn_raw, url, Policy};

async fn connect_err(addr: std::net::SocketAddr) -> Error {
    Socks5Stream::connect(&url(addr, Resolution::Proxy), "t.test:1")
        .await
        .unwrap_err()
}

async fn rejected_with(rep: Rep) -> Error {
    let (addr, _server) = spawn_fake("127.0.0.1:0", Policy::no_auth(), move |mut s| async move {
        s.reply(rep, Addr::UNSPECIFIED).await;
    })
    .await;
    connect_err(addr).await
}

#[tokio::test]
async fn failure_reply_is_rejected_with_its_rep() {
    deadline(async {
        let err = rejected_with(Rep::CONNECTION_REFUSED).await;
        assert!(matches!(err, Error::Rejected(Rep(0x05))), "{err:?}");
        assert!(err.to_string().contains("connection refused"), "{err}");
    })
    .await
}

#[tokio::test]
async fn unassigned_rep_code_is_kept() {
    deadline(async {
        let err = rejected_with(Rep(0x42)).await;
        assert!(matches!(err, Error::Rejected(Rep(0x42))), "{err:?}");
        assert!(err.to_string().contains("0x42"), "{err}");
    })
    .await
}

#[tokio::test]
async fn http_answer_is_a_bad_version() {
    deadline(async {
        let addr = spawn_raw(b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec()).await;
        let err = connect_err(addr).await;
        assert!(
            matches!(err, Error::Protocol(ProtocolError::BadVersion(b'H'))),
            "{err:?}"
        );
    })
    .await
}

#[tokio::test]
async fn malformed_replies_name_the_violation() {
    deadline(async {
        let cases: [(&[u8], ProtocolError); 3] = [
            (
                &[5, 0, 5, 0, 0, 9, 1, 2, 3, 4, 0, 80],
                ProtocolError::UnknownAtyp(9),
            ),
            (
                &[5, 0, 4, 0, 0, 1, 1, 2, 3, 4, 0, 80],
                ProtocolError::BadVersion(4),
            ),
            (&[5, 0, 5, 0, 0, 3, 0, 0, 80], ProtocolError::EmptyDomain),
        ];
        for (bytes, expected) in cases {
            let err = connect_err(spawn_raw(bytes.to_vec()).await).await;
            assert!(
                matches!(&err, Error::Protocol(p) if *p == expected),
                "{bytes:?}: {err:?}"
            );
        }
    })
    .await
}

#[tokio::test]
async fn close_in_the_middle_of_the_handshake_is_closed() {
    deadline(async {
        for bytes in [&[][..], &[5][..], &[5, 0][..], &[5, 0, 5, 0, 0, 1, 127][..]] {
            let err = connect_err(spawn_raw(bytes.to_vec()).await).await;
            assert!(
                matches!(err, Error::Closed(Step::Handshake) | Error::Io(_)),
                "{bytes:?}: {err:?}"
            );
        }
    })
    .await
}

#[tokio::test]
async fn silent_server_is_a_handshake_timeout() {
    deadline(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Accept and hold the connection without ever answering.
        let _server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(stream);
        });
        let config = ClientConfig {
            handshake_timeout: Duration::from_millis(200),
            ..ClientConfig::default()
        };
        let err =
            Socks5Stream::connect_with_config(&url(addr, Resolution::Proxy), "t.test:1", &config)
                .await
                .unwrap_err();
        assert!(matches!(err, Error::Timeout(Step::Handshake)), "{err:?}");
    })
    .await
}

#[tokio::test]
async fn full_accept_queue_is_a_connect_timeout() {
    deadline(async {
        // A listener that never accepts: once its queue is full the kernel drops further
        // SYNs, so connecting hangs, as with a black-holed proxy, but on loopback.
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(1).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut held = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => held.push(stream),
                Ok(Err(e)) => panic!("unexpected connect error {e}"),
                Err(_) => break,
            }
            assert!(held.len() < 64, "the accept queue never filled");
        }
        let config = ClientConfig {
            connect_timeout: Duration::from_millis(200),
            ..ClientConfig::default()
        };
        let err =
            Socks5Stream::connect_with_config(&url(addr, Resolution::Proxy), "t.test:1", &config)
                .await
                .unwrap_err();
        assert!(matches!(err, Error::Timeout(Step::Connect)), "{err:?}");
    })
    .await
}

#[tokio::test]
async fn invalid_target_fails_before_connecting() {
    deadline(async {
        // Port 9 on 192.0.2.1 (TEST-NET) would never answer; the error must come first.
        let proxy: ProxyUrl = "socks5h://192.0.2.1:9".parse().unwrap();
        let err = Socks5Stream::connect(&proxy, "no-port").await.unwrap_err();
        assert!(matches!(err, Error::InvalidTarget { .. }), "{err:?}");
        let long = format!("{}:80", "a".repeat(256));
        let err = Socks5Stream::connect(&proxy, long.as_str())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidTarget { .. }), "{err:?}");
    })
    .await
}

/// A small deterministic generator, so failures reproduce without a proptest dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u8 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 24) as u8
    }
}

#[tokio::test]
async fn random_server_bytes_never_panic_or_hang() {
    deadline(async {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let creds = ferrosocks_client::Credentials::new("u", "p").unwrap();
        for round in 0..400 {
            let len = usize::from(rng.next() % 48);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.next()).collect();
            // Bias half the rounds towards plausible prefixes so later states are reached.
            match round % 4 {
                0 => bytes.splice(0..0, [5, 0]).for_each(drop),
                1 => bytes.splice(0..0, [5, 0, 5]).for_each(drop),
                2 => bytes.splice(0..0, [5, 2, 1, 0]).for_each(drop),
                _ => {}
            }
            let (client_side, mut server_side) = tokio::io::duplex(4096);
            tokio::spawn(async move {
                let _ = server_side.write_all(&bytes).await;
                let _ = server_side.shutdown().await;
                let mut sink = Vec::new();
                let _ = server_side.read_to_end(&mut sink).await;
            });
            let proxy = "socks5h://127.0.0.1:1".parse::<ProxyUrl>().unwrap();
            let proxy = if round % 8 < 4 {
                proxy.with_credentials(Some(creds.clone()))
            } else {
                proxy
            };
            let config = ClientConfig {
                handshake_timeout: Duration::from_secs(2),
                ..ClientConfig::default()
            };
            // Any outcome is fine except a panic or a hang (the deadline catches those).
            let _ = Socks5Stream::connect_with(client_side, &proxy, "t.test:1", &config).await;
        }
    })
    .await
}
