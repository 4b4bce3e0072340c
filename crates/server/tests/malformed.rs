use std::time::Duration;

use ferrosocks_proto::{Command, Rep};
use ferrosocks_testkit::{spawn_server, tcp_echo, test_config, with_deadline, RawClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::request;

/// Sends `bytes` after a no-auth greeting and expects exactly a failure reply with `rep`,
/// then EOF.
async fn expect_rep(addr: std::net::SocketAddr, bytes: &[u8], rep: Rep) {
    let mut c = RawClient::connect(addr).await;
    c.greet_no_auth().await;
    c.send(bytes).await;
    let reply = c.recv_reply().await;
    assert_eq!(reply.rep, rep, "for {bytes:02x?}");
    c.expect_eof().await;
}

#[tokio::test]
async fn unknown_command_gets_07() {
    let server = spawn_server(test_config()).await;
    expect_rep(
        server.addr,
        &[5, 9, 0, 1, 127, 0, 0, 1, 0, 80],
        Rep::COMMAND_NOT_SUPPORTED,
    )
    .await;
    // Unknown command and unknown address type: the command is reported.
    expect_rep(server.addr, &[5, 0, 0, 9], Rep::COMMAND_NOT_SUPPORTED).await;
}

#[tokio::test]
async fn unknown_address_type_gets_08() {
    let server = spawn_server(test_config()).await;
    for atyp in [0u8, 2, 5, 0xff] {
        expect_rep(
            server.addr,
            &[5, 1, 0, atyp, 1, 2, 3, 4, 0, 80],
            Rep::ADDRESS_TYPE_NOT_SUPPORTED,
        )
        .await;
    }
}

#[tokio::test]
async fn malformed_request_fields_get_general_failure() {
    let server = spawn_server(test_config()).await;
    // Non-zero RSV, empty domain, non-UTF-8 domain, wrong version in the request.
    for bytes in [
        &[5u8, 1, 7, 1, 127, 0, 0, 1, 0, 80][..],
        &[5, 1, 0, 3, 0, 0, 80],
        &[5, 1, 0, 3, 2, 0xff, 0xfe, 0, 80],
        &[4, 1, 0, 1, 127, 0, 0, 1, 0, 80],
    ] {
        expect_rep(server.addr, bytes, Rep::GENERAL_FAILURE).await;
    }
}

#[tokio::test]
async fn refused_target_gets_05() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let server = spawn_server(test_config()).await;
    expect_rep(
        server.addr,
        &request(Command::CONNECT, &closed.to_string()),
        Rep::CONNECTION_REFUSED,
    )
    .await;
}

#[tokio::test]
async fn unresolvable_name_gets_04() {
    // A 64-byte label is rejected by the resolver library itself: no query leaves the host.
    let name = format!("{}.invalid:80", "a".repeat(64));
    let server = spawn_server(test_config()).await;
    expect_rep(
        server.addr,
        &request(Command::CONNECT, &name),
        Rep::HOST_UNREACHABLE,
    )
    .await;
}

#[tokio::test]
async fn connect_timeout_gets_06() {
    // A listener whose accept queue is full silently drops further SYNs, so a connect to it
    // hangs: the loopback stand-in for a black-holed host.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    socket.listen(0).unwrap();
    let target = socket.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(target),
        )
        .await
        {
            fillers.push(s);
        }
    }
    let mut config = test_config();
    config.timeouts.connect = Duration::from_millis(400);
    let server = spawn_server(config).await;
    expect_rep(
        server.addr,
        &request(Command::CONNECT, &target.to_string()),
        Rep::TTL_EXPIRED,
    )
    .await;
}

#[tokio::test]
async fn wrong_version_greeting_is_closed_without_reply() {
    let server = spawn_server(test_config()).await;
    for greeting in [
        &[4u8, 1, 0, 80, 127, 0, 0, 1, 0][..],
        b"GET / HTTP/1.1\r\n\r\n",
        &[0],
    ] {
        let mut c = RawClient::connect(server.addr).await;
        c.send(greeting).await;
        c.expect_eof().await;
    }
}

#[tokio::test]
async fn bad_userpass_version_is_closed() {
    let mut config = test_config();
    let (n, p) = ferrosocks_server::Users::parse_entry("u:p").unwrap();
    config.users.insert(n, p);
    config.auth_methods = vec![ferrosocks_server::AuthMethod::UserPass];
    let server = spawn_server(config).await;
    let mut c = RawClient::connect(server.addr).await;
    c.send(&[5, 1, 2]).await;
    assert_eq!(c.recv_exact(2).await, [5, 2]);
    c.send(&[5, 1, b'u', 1, b'p']).await;
    c.expect_eof().await;
}

#[tokio::test]
async fn truncated_messages_then_close_end_the_session() {
    let server = spawn_server(test_config()).await;
    for partial in [&[5u8][..], &[5, 3, 0], &[5, 1, 0, 5, 1, 0, 3, 10, b'a']] {
        let mut c = RawClient::connect(server.addr).await;
        c.send(partial).await;
        c.stream.shutdown().await.unwrap();
        let mut rest = Vec::new();
        with_deadline(c.stream.read_to_end(&mut rest))
            .await
            .unwrap();
        assert!(
            rest.len() <= 2,
            "only a method selection may come back: {rest:02x?}"
        );
    }
}

#[tokio::test]
async fn random_garbage_never_hangs_or_crashes_the_server() {
    let echo = tcp_echo("127.0.0.1:0").await;
    let mut config = test_config();
    config.timeouts.handshake = Duration::from_millis(500);
    config.timeouts.connect = Duration::from_millis(500);
    let server = spawn_server(config).await;
    // A fixed-seed generator keeps the inputs reproducible.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let len = (next() % 64) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Half of them start like a real greeting, to reach the later stages.
        if next() % 2 == 0 {
            bytes.splice(0..0, [5u8, 1, 0, 5]);
        }
        let addr = server.addr;
        tasks.push(tokio::spawn(async move {
            let mut c = RawClient::connect(addr).await;
            c.send(&bytes).await;
            // Whatever comes back, the server must close by itself within the deadlines.
            let mut rest = Vec::new();
            let _ = with_deadline(c.stream.read_to_end(&mut rest)).await;
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    // Still serving.
    let mut c = RawClient::connect(server.addr).await;
    c.greet_no_auth().await;
    c.send(&request(Command::CONNECT, &echo.to_string())).await;
    assert_eq!(c.recv_reply().await.rep, Rep::SUCCEEDED);
}
