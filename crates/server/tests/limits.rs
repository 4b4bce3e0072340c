use std::time::Duration;

use ferrosocks_proto::{Command, Rep};
use ferrosocks_testkit::{
    raise_fd_limit, spawn_server, tcp_echo, test_config, with_deadline, RawClient,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::request;

#[tokio::test]
async fn silent_client_is_closed_after_the_handshake_timeout() {
    let mut config = test_config();
    config.timeouts.handshake = Duration::from_millis(300);
    let server = spawn_server(config).await;
    let mut c = RawClient::connect(server.addr).await;
    c.send(&[5, 1]).await;
    c.expect_eof().await;
}

#[tokio::test]
async fn unauthenticated_connections_are_capped() {
    let mut config = test_config();
    config.limits.max_handshakes = 2;
    let server = spawn_server(config).await;
    let _a = RawClient::connect(server.addr).await;
    let _b = RawClient::connect(server.addr).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = RawClient::connect(server.addr).await;
    third.expect_eof().await;
}

#[tokio::test]
async fn open_tunnels_hold_their_connection_slot_until_they_end() {
    let echo = tcp_echo("127.0.0.1:0").await;
    let mut config = test_config();
    config.limits.max_connections = 2;
    let server = spawn_server(config).await;
    let mut tunnels = Vec::new();
    for _ in 0..2 {
        let mut c = RawClient::connect(server.addr).await;
        c.greet_no_auth().await;
        c.send(&request(Command::CONNECT, &echo.to_string())).await;
        assert_eq!(c.recv_reply().await.rep, Rep::SUCCEEDED);
        tunnels.push(c);
    }
    // The kernel completes the third connection, but the server does not take it while
    // both slots are held: its greeting stays unanswered.
    let mut third = RawClient::connect(server.addr).await;
    third.send(&[5, 1, 0]).await;
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(300), third.stream.read(&mut byte));
    assert!(early.await.is_err(), "served beyond max_connections");
    // A tunnel still works while the third waits.
    tunnels[0].send(b"ping").await;
    assert_eq!(tunnels[0].recv_exact(4).await, b"ping");
    // Ending one tunnel frees its slot, and the waiting client is served.
    drop(tunnels.remove(1));
    assert_eq!(third.recv_exact(2).await, [5, 0]);
}

#[tokio::test]
async fn idle_tunnel_is_closed() {
    let echo = tcp_echo("127.0.0.1:0").await;
    let mut config = test_config();
    config.timeouts.idle = Duration::from_millis(300);
    let server = spawn_server(config).await;
    let mut c = RawClient::connect(server.addr).await;
    c.greet_no_auth().await;
    c.send(&request(Command::CONNECT, &echo.to_string())).await;
    assert_eq!(c.recv_reply().await.rep, Rep::SUCCEEDED);
    c.expect_eof().await;
    server.wait_for_log("idle timeout").await;
}

#[tokio::test]
async fn five_hundred_concurrent_sessions() {
    // 500 tunnels hold 2000 descriptors in this one process (client, server's two ends,
    // echo side).
    raise_fd_limit();
    let echo = tcp_echo("127.0.0.1:0").await;
    let server = spawn_server(test_config()).await;
    let mut streams = Vec::new();
    for _ in 0..500 {
        let mut s = with_deadline(TcpStream::connect(server.addr))
            .await
            .unwrap();
        let mut bytes = vec![5, 1, 0];
        bytes.extend(request(Command::CONNECT, &echo.to_string()));
        s.write_all(&bytes).await.unwrap();
        streams.push(s);
    }
    // All open at once; now each completes its handshake and an echo.
    let tasks: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            tokio::spawn(async move {
                let mut head = [0u8; 12];
                s.read_exact(&mut head).await.unwrap();
                assert_eq!(&head[..4], &[5, 0, 5, 0]);
                let msg = format!("session {i:04}");
                s.write_all(msg.as_bytes()).await.unwrap();
                let mut back = vec![0u8; msg.len()];
                s.read_exact(&mut back).await.unwrap();
                assert_eq!(back, msg.as_bytes());
                s
            })
        })
        .collect();
    let mut open = Vec::new();
    for t in tasks {
        open.push(with_deadline(t).await.unwrap());
    }
    assert_eq!(open.len(), 500);
}

#[tokio::test]
async fn shutdown_stops_accepting_and_drains_within_its_bound() {
    let echo = tcp_echo("127.0.0.1:0").await;
    let mut config = test_config();
    config.timeouts.drain = Duration::from_millis(500);
    let server = spawn_server(config).await;
    let addr = server.addr;
    let mut c = RawClient::connect(addr).await;
    c.greet_no_auth().await;
    c.send(&request(Command::CONNECT, &echo.to_string())).await;
    assert_eq!(c.recv_reply().await.rep, Rep::SUCCEEDED);
    let mut bind = RawClient::connect(addr).await;
    bind.greet_no_auth().await;
    bind.send(&request(Command::BIND, "127.0.0.1:0")).await;
    assert_eq!(bind.recv_reply().await.rep, Rep::SUCCEEDED);
    let mut udp = RawClient::connect(addr).await;
    udp.greet_no_auth().await;
    udp.send(&request(Command::UDP_ASSOCIATE, "0.0.0.0:0"))
        .await;
    assert_eq!(udp.recv_reply().await.rep, Rep::SUCCEEDED);
    let log = server.log.clone();
    let started = std::time::Instant::now();
    with_deadline(server.shutdown()).await;
    // The open tunnel kept the drain going until its bound, not forever.
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
    // Then the tunnel, the BIND wait (answered with its second reply) and the association
    // were closed, each with its access-log line.
    assert_eq!(bind.recv_reply().await.rep, Rep::GENERAL_FAILURE);
    let mut rest = Vec::new();
    with_deadline(bind.stream.read_to_end(&mut rest))
        .await
        .unwrap();
    with_deadline(c.stream.read_to_end(&mut rest))
        .await
        .unwrap();
    with_deadline(udp.stream.read_to_end(&mut rest))
        .await
        .unwrap();
    let ended: Vec<String> = log
        .lines()
        .into_iter()
        .filter(|l| l.contains("\"end\":\"server shutdown"))
        .collect();
    assert_eq!(ended.len(), 3, "{:?}", log.lines());
    assert!(ended.iter().any(|l| l.contains("\"command\":\"BIND\"")));
    assert!(ended.iter().any(|l| l.contains("\"command\":\"CONNECT\"")));
    assert!(ended
        .iter()
        .any(|l| l.contains("\"command\":\"UDP_ASSOCIATE\"")));
}

/// `ServerHandle::end_drain` (a second SIGTERM in `ferrosocks serve`) ends the drain at
/// once: the tunnel is closed with its access-log line long before a drain time of an
/// hour. Called before the shutdown, the shutdown skips the drain; until then the server
/// serves as usual.
#[tokio::test]
async fn ending_the_drain_closes_open_tunnels_at_once() {
    let echo = tcp_echo("127.0.0.1:0").await;
    for early in [false, true] {
        let mut config = test_config();
        config.timeouts.drain = Duration::from_secs(3600);
        let server = spawn_server(config).await;
        if early {
            server.handle.end_drain();
        }
        let mut c = RawClient::connect(server.addr).await;
        c.greet_no_auth().await;
        c.send(&request(Command::CONNECT, &echo.to_string())).await;
        assert_eq!(c.recv_reply().await.rep, Rep::SUCCEEDED, "early: {early}");
        c.stream.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 4];
        with_deadline(c.stream.read_exact(&mut back)).await.unwrap();
        assert_eq!(&back, b"ping", "early: {early}");
        let (log, handle) = (server.log.clone(), server.handle.clone());
        let shutdown = tokio::spawn(server.shutdown());
        if !early {
            // Draining: the tunnel stays open.
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert!(!shutdown.is_finished(), "early: {early}");
            handle.end_drain();
        }
        with_deadline(shutdown).await.unwrap();
        let mut rest = Vec::new();
        with_deadline(c.stream.read_to_end(&mut rest))
            .await
            .unwrap();
        assert!(
            log.lines()
                .iter()
                .any(|l| l.contains("\"end\":\"server shutdown")),
            "early: {early}: {:?}",
            log.lines()
        );
    }
}

/// A handshake that completes after the drain is over gets a failure reply, and its target
/// no connection (the server opened one, answered 00, and cut it at once).
#[tokio::test]
async fn a_request_after_the_drain_gets_01_and_no_target_connection() {
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_addr = target.local_addr().unwrap();
    let mut config = test_config();
    config.timeouts.drain = Duration::from_millis(100);
    let server = spawn_server(config).await;
    let mut c = RawClient::connect(server.addr).await;
    c.greet_no_auth().await;
    let stopping = tokio::spawn(server.shutdown());
    // Past the drain, inside the 2 s a handshake still gets.
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.send(&request(Command::CONNECT, &target_addr.to_string()))
        .await;
    assert_eq!(c.recv_reply().await.rep, Rep::GENERAL_FAILURE);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), target.accept())
            .await
            .is_err(),
        "the target was connected to after the drain"
    );
    with_deadline(stopping).await.unwrap();
}
