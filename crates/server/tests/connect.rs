use ferrosocks_proto::{Addr, Command, Rep};
use ferrosocks_server::busy_poll::DEFAULT_BUSY_POLL;
use ferrosocks_server::BusyPoll;
use ferrosocks_server::RelayMode;
use ferrosocks_testkit::{spawn_server, tcp_echo, test_config, with_deadline, RawClient};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::request;

/// A client with a tunnel to `dst` open through the server at `server_addr`.
async fn tunnel(server_addr: std::net::SocketAddr, dst: &str) -> RawClient {
    let mut c = RawClient::connect(server_addr).await;
    c.greet_no_auth().await;
    c.send(&request(Command::CONNECT, dst)).await;
    let reply = c.recv_reply().await;
    assert_eq!(reply.rep, Rep::SUCCEEDED, "{reply:?}");
    c
}

async fn connect_and_echo(server_addr: std::net::SocketAddr, dst: &str) -> ferrosocks_proto::Reply {
    let mut c = RawClient::connect(server_addr).await;
    c.greet_no_auth().await;
    c.send(&request(Command::CONNECT, dst)).await;
    let reply = c.recv_reply().await;
    assert_eq!(reply.rep, Rep::SUCCEEDED, "{reply:?}");
    c.send(b"ping through the tunnel").await;
    assert_eq!(c.recv_exact(23).await, b"ping through the tunnel");
    reply
}

#[tokio::test]
async fn connect_to_ipv4_target_relays_both_ways_and_reports_outgoing_address() {
    let echo = tcp_echo("127.0.0.1:0").await;
    let server = spawn_server(test_config()).await;
    let reply = connect_and_echo(server.addr, &echo.to_string()).await;
    // BND is the local address of the outgoing socket: loopback, a real port.
    let Addr::Ip(bnd) = reply.bnd else {
        panic!("BND should be an IP")
    };
    assert!(bnd.ip().is_loopback() && bnd.port() != 0, "{bnd}");
}

#[tokio::test]
async fn connect_to_ipv6_target() {
    let echo = tcp_echo("[::1]:0").await;
    let mut config = test_config();
    config.listen = vec!["[::1]:0".parse().unwrap()];
    let server = spawn_server(config).await;
    let reply = connect_and_echo(server.addr, &echo.to_string()).await;
    assert!(matches!(reply.bnd, Addr::Ip(std::net::SocketAddr::V6(_))));
}

#[tokio::test]
async fn connect_to_domain_target_resolved_by_the_server() {
    let echo = tcp_echo("127.0.0.1:0").await;
    let server = spawn_server(test_config()).await;
    connect_and_echo(server.addr, &format!("localhost:{}", echo.port())).await;
    let line = server
        .wait_for_log(&format!("\"target\":\"localhost:{}\"", echo.port()))
        .await;
    assert!(
        line.contains(&format!("\"resolved\":\"127.0.0.1:{}\"", echo.port())),
        "{line}"
    );
}

#[tokio::test]
async fn connect_with_pipelined_greeting_request_and_payload() {
    let echo = tcp_echo("127.0.0.1:0").await;
    let server = spawn_server(test_config()).await;
    let mut c = RawClient::connect(server.addr).await;
    let mut all = vec![5, 1, 0];
    all.extend(request(Command::CONNECT, &echo.to_string()));
    all.extend(b"early payload");
    c.send(&all).await;
    assert_eq!(c.recv_exact(2).await, [5, 0]);
    assert_eq!(c.recv_reply().await.rep, Rep::SUCCEEDED);
    assert_eq!(c.recv_exact(13).await, b"early payload");
}

#[tokio::test]
async fn connect_with_pipelined_greeting_auth_request_and_payload() {
    let echo = tcp_echo("127.0.0.1:0").await;
    let mut config = test_config();
    let (name, cred) = ferrosocks_server::Users::parse_entry("alice:wonder").unwrap();
    config.users.insert(name, cred);
    config.auth_methods = vec![ferrosocks_server::AuthMethod::UserPass];
    let server = spawn_server(config).await;
    let mut c = RawClient::connect(server.addr).await;
    let mut all = vec![5, 1, 2, 1, 5];
    all.extend(b"alice");
    all.push(6);
    all.extend(b"wonder");
    all.extend(request(Command::CONNECT, &echo.to_string()));
    all.extend(b"xyz");
    c.send(&all).await;
    assert_eq!(c.recv_exact(4).await, [5, 2, 1, 0]);
    assert_eq!(c.recv_reply().await.rep, Rep::SUCCEEDED);
    assert_eq!(c.recv_exact(3).await, b"xyz");
}

#[tokio::test]
async fn handshake_sent_one_byte_at_a_time() {
    let echo = tcp_echo("127.0.0.1:0").await;
    let server = spawn_server(test_config()).await;
    let mut c = RawClient::connect(server.addr).await;
    let mut all = vec![5, 1, 0];
    all.extend(request(
        Command::CONNECT,
        &format!("localhost:{}", echo.port()),
    ));
    for b in all {
        c.send(&[b]).await;
        c.stream.flush().await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    assert_eq!(c.recv_exact(2).await, [5, 0]);
    assert_eq!(c.recv_reply().await.rep, Rep::SUCCEEDED);
    c.send(b"1").await;
    assert_eq!(c.recv_exact(1).await, b"1");
}

#[tokio::test]
async fn half_close_is_passed_on_in_both_directions() {
    for mode in [RelayMode::Splice, RelayMode::Copy] {
        for busy_poll in [Duration::ZERO, DEFAULT_BUSY_POLL] {
            half_close_round(mode, busy_poll).await;
        }
    }
}

async fn half_close_round(mode: RelayMode, busy_poll: Duration) {
    // A target that reads until EOF, then answers with what it counted, then closes.
    let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_addr = target.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = target.accept().await.unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).await.unwrap();
        s.write_all(format!("got {}", all.len()).as_bytes())
            .await
            .unwrap();
        s.shutdown().await.unwrap();
    });
    let mut config = test_config();
    config.relay_mode = mode;
    config.busy_poll = BusyPoll::Window(busy_poll);
    let server = spawn_server(config).await;
    let mut c = tunnel(server.addr, &target_addr.to_string()).await;
    c.send(&[7u8; 100_000]).await;
    c.stream.shutdown().await.unwrap();
    // The client's EOF reaches the target by a shutdown; the target's, which ends the
    // tunnel, reaches the client when the server closes the socket.
    let mut answer = Vec::new();
    with_deadline(c.stream.read_to_end(&mut answer))
        .await
        .unwrap();
    assert_eq!(answer, b"got 100000");
    // The session ends cleanly once both sides are done, and is logged with exact counts.
    let line = server.wait_for_log("\"end\":\"closed\"").await;
    assert!(
        line.contains("\"bytes_up\":100000") && line.contains("\"bytes_down\":10"),
        "{line}"
    );
}

/// TCP urgent data (an FTP client's ABOR, a telnet interrupt) used to stall the splice
/// relay: splice stops at the urgent mark and never passes it. Both relays now pass the
/// in-band bytes around the mark, as a `recv` reader sees them (the urgent byte itself is
/// out of band): in both directions; after a few bytes (read with `recv`) and after 100 KB
/// (enough for the splice relay to be splicing when it reaches the mark); with the bytes
/// sent apart or back to back; and with the sender waiting for an answer (as an FTP client
/// after ABOR does) before its FIN.
#[tokio::test]
async fn urgent_data_does_not_stall_the_tunnel() {
    for mode in [RelayMode::Splice, RelayMode::Copy] {
        for upload in [true, false] {
            for before in [3, 100_000] {
                for apart in [true, false] {
                    urgent_round(mode, upload, before, apart).await;
                }
            }
        }
    }
}

/// `before` bytes, then the urgent byte `!`, then `def`.
fn urgent_payload(before: usize) -> Vec<u8> {
    (0..before).map(|i| b'a' + (i % 26) as u8).collect()
}

/// Sends the payload's in-band bytes with the urgent byte between them.
async fn send_urgent_payload(s: &mut tokio::net::TcpStream, before: usize, apart: bool) {
    use nix::sys::socket::{send, MsgFlags};
    use std::os::fd::AsRawFd;
    // No await at all between the sends when not apart: even a zero sleep yields for a
    // timer tick, and the bytes would no longer arrive back to back.
    let pause = || async {
        if apart {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    s.write_all(&urgent_payload(before)).await.unwrap();
    pause().await;
    assert_eq!(send(s.as_raw_fd(), b"!", MsgFlags::MSG_OOB).unwrap(), 1);
    pause().await;
    s.write_all(b"def").await.unwrap();
}

/// Sends the payload, waits for `ok`, and closes.
async fn urgent_sender(s: &mut tokio::net::TcpStream, before: usize, apart: bool) {
    send_urgent_payload(s, before, apart).await;
    let mut answer = [0u8; 2];
    with_deadline(s.read_exact(&mut answer)).await.unwrap();
    assert_eq!(&answer, b"ok");
    s.shutdown().await.unwrap();
}

/// Reads the payload's in-band bytes, answers `ok`, and returns them with whatever came
/// after them until EOF; then closes its side too.
async fn urgent_receiver(s: &mut tokio::net::TcpStream, before: usize) -> Vec<u8> {
    let mut got = vec![0u8; before + 3];
    with_deadline(s.read_exact(&mut got)).await.unwrap();
    s.write_all(b"ok").await.unwrap();
    with_deadline(s.read_to_end(&mut got)).await.unwrap();
    s.shutdown().await.unwrap();
    got
}

fn assert_urgent_result(got: &[u8], before: usize, case: &str) {
    let mut want = urgent_payload(before);
    want.extend_from_slice(b"def");
    assert!(got == want, "{case}: {} bytes arrived", got.len());
}

/// A server relaying in `mode` (busy-polling off) and a client that has sent its CONNECT
/// request to `target` and not yet read the reply.
async fn urgent_tunnel_request(
    mode: RelayMode,
    target: std::net::SocketAddr,
) -> (ferrosocks_testkit::TestServer, RawClient) {
    let mut config = test_config();
    config.relay_mode = mode;
    config.busy_poll = BusyPoll::Window(Duration::ZERO);
    let server = spawn_server(config).await;
    let mut c = RawClient::connect(server.addr).await;
    c.greet_no_auth().await;
    c.send(&request(Command::CONNECT, &target.to_string()))
        .await;
    (server, c)
}

async fn urgent_round(mode: RelayMode, upload: bool, before: usize, apart: bool) {
    let case = format!("{mode:?}, upload {upload}, {before} bytes before, apart {apart}");
    let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_addr = target.local_addr().unwrap();
    let target_side = tokio::spawn(async move {
        let (mut s, _) = target.accept().await.unwrap();
        if upload {
            urgent_receiver(&mut s, before).await
        } else {
            urgent_sender(&mut s, before, apart).await;
            Vec::new()
        }
    });
    let (server, mut c) = urgent_tunnel_request(mode, target_addr).await;
    assert_eq!(c.recv_reply().await.rep, Rep::SUCCEEDED);
    let got = if upload {
        urgent_sender(&mut c.stream, before, apart).await;
        with_deadline(target_side).await.unwrap()
    } else {
        let got = urgent_receiver(&mut c.stream, before).await;
        with_deadline(target_side).await.unwrap();
        got
    };
    assert_urgent_result(&got, before, &case);
    let line = server.wait_for_log("\"end\":\"closed\"").await;
    let (up, down) = if upload {
        (before + 3, 2)
    } else {
        (2, before + 3)
    };
    assert!(
        line.contains(&format!("\"bytes_up\":{up},"))
            && line.contains(&format!("\"bytes_down\":{down},")),
        "{case}: {line}"
    );
}

/// The whole payload, urgent byte included, is already waiting in the server's socket,
/// sent right behind the CONNECT request, when the relay starts: no later readiness event
/// can come to rescue a relay that stopped at the mark.
#[tokio::test]
async fn urgent_data_already_waiting_when_the_relay_starts() {
    for mode in [RelayMode::Splice, RelayMode::Copy] {
        let before = 20_000;
        let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target_addr = target.local_addr().unwrap();
        let target_side = tokio::spawn(async move {
            let (mut s, _) = target.accept().await.unwrap();
            urgent_receiver(&mut s, before).await
        });
        let (_server, mut c) = urgent_tunnel_request(mode, target_addr).await;
        send_urgent_payload(&mut c.stream, before, false).await;
        assert_eq!(c.recv_reply().await.rep, Rep::SUCCEEDED);
        assert_eq!(c.recv_exact(2).await, b"ok", "{mode:?}");
        c.stream.shutdown().await.unwrap();
        let got = with_deadline(target_side).await.unwrap();
        assert_urgent_result(&got, before, &format!("{mode:?}"));
    }
}

#[tokio::test]
async fn bulk_transfer_is_byte_exact() {
    for mode in [RelayMode::Splice, RelayMode::Copy] {
        for busy_poll in [Duration::ZERO, DEFAULT_BUSY_POLL] {
            bulk_round(mode, busy_poll).await;
        }
    }
}

async fn bulk_round(mode: RelayMode, busy_poll: Duration) {
    let echo = tcp_echo("127.0.0.1:0").await;
    let mut config = test_config();
    config.relay_mode = mode;
    config.busy_poll = BusyPoll::Window(busy_poll);
    let server = spawn_server(config).await;
    let c = tunnel(server.addr, &echo.to_string()).await;
    let data: Vec<u8> = (0..4_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let (mut r, mut w) = c.stream.into_split();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    with_deadline(r.read_to_end(&mut got)).await.unwrap();
    writer.await.unwrap();
    assert!(got == data, "echoed data differs ({mode:?}, {busy_poll:?})");
    let line = server.wait_for_log("\"end\":\"closed\"").await;
    assert!(
        line.contains("\"bytes_up\":4000000") && line.contains("\"bytes_down\":4000000"),
        "{line}"
    );
}

/// The info line `ss -ti` prints for each established socket matching `filter`.
#[cfg(target_os = "linux")]
fn ss_info_lines(filter: &str) -> Vec<String> {
    let out = std::process::Command::new("ss")
        .args(["-tinH", "state", "established", filter])
        .output()
        .expect("ss (iproute2) runs; scripts/test-all installs it");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(char::is_whitespace))
        .map(str::to_owned)
        .collect()
}

/// The congestion control `ss` reports for the established sockets matching `filter`: on
/// each socket's info line, the word before the first `key:value` field (it follows flags
/// such as `ts` and `sack`).
#[cfg(target_os = "linux")]
fn congestion_seen_by_ss(filter: &str) -> Vec<String> {
    ss_info_lines(filter)
        .iter()
        .filter_map(|l| {
            l.split_whitespace()
                .take_while(|w| !w.contains(':'))
                .last()
                .map(str::to_owned)
        })
        .collect()
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn loopback_tunnels_use_the_local_congestion_control_and_system_keeps_the_default() {
    let system = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control")
        .unwrap()
        .trim()
        .to_owned();
    // A name that differs from the system default, so the check cannot pass by accident.
    let chosen = if system == "reno" { "cubic" } else { "reno" };
    for (setting, expected) in [(Some(chosen), chosen), (None, system.as_str())] {
        let echo = tcp_echo("127.0.0.1:0").await;
        let mut config = test_config();
        config.local_congestion = setting.map(str::to_owned);
        let server = spawn_server(config).await;
        let mut c = tunnel(server.addr, &echo.to_string()).await;
        c.send(b"ping").await;
        assert_eq!(c.recv_exact(4).await, b"ping");
        // The server's socket to the client has the server's port as its source; its
        // socket to the target is the only one with the echo's port as destination.
        let accepted = congestion_seen_by_ss(&format!("( sport = :{} )", server.addr.port()));
        let outbound = congestion_seen_by_ss(&format!("( dport = :{} )", echo.port()));
        assert_eq!(accepted, [expected], "client side, setting {setting:?}");
        assert_eq!(outbound, [expected], "target side, setting {setting:?}");
    }
}

/// The unsent bytes (`notsent:N`, absent when none) `ss` reports for each established
/// socket matching `filter`.
#[cfg(target_os = "linux")]
fn notsent_seen_by_ss(filter: &str) -> Vec<u64> {
    ss_info_lines(filter)
        .iter()
        .map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("notsent:"))
                .map_or(0, |n| n.parse().unwrap())
        })
        .collect()
}

/// With `local_notsent_lowat`, the relay's socket towards a loopback target that stops
/// reading holds at most about that much unsent data (the kernel stops taking writes once
/// it is reached, so one write can overshoot by a segment); without it, the kernel keeps
/// taking the client's bytes into that socket's send buffer.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn loopback_tunnels_keep_little_unsent_data_towards_a_stalled_target() {
    const LOWAT: u32 = 16 * 1024;
    // The limit plus one 64 KiB loopback segment's worth of overshoot, and some slack.
    const MOST_WITH_LOWAT: u64 = LOWAT as u64 + 96 * 1024;
    let mut unsent = Vec::new();
    for setting in [Some(LOWAT), None] {
        // A target that accepts and never reads: its receive buffer fills, then the
        // relay's socket towards it keeps whatever it has not sent.
        let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target_addr = target.local_addr().unwrap();
        let held = tokio::spawn(async move { target.accept().await.unwrap().0 });
        let mut config = test_config();
        config.local_notsent_lowat = setting;
        let server = spawn_server(config).await;
        let c = tunnel(server.addr, &target_addr.to_string()).await;
        let target_side = held.await.unwrap();
        // Writes until everything between here and the target is full: a write that
        // waits 300 ms. A bound in bytes too, far above what the buffers on the way hold.
        let chunk = vec![7u8; 64 * 1024];
        let mut stream = c.stream;
        let mut stalled = false;
        for _ in 0..4096 {
            let write = tokio::time::timeout(Duration::from_millis(300), stream.write_all(&chunk));
            if write.await.is_err() {
                stalled = true;
                break;
            }
        }
        assert!(
            stalled,
            "256 MiB went into a tunnel whose target reads nothing"
        );
        let filter = format!("( dport = :{} )", target_addr.port());
        let seen = notsent_seen_by_ss(&filter);
        assert_eq!(
            seen.len(),
            1,
            "one relay socket towards the target: {seen:?}"
        );
        unsent.push(seen[0]);
        eprintln!("local_notsent_lowat {setting:?}: {} bytes unsent", seen[0]);
        drop((stream, target_side));
        server.shutdown().await;
    }
    assert!(
        unsent[0] <= MOST_WITH_LOWAT,
        "with the limit, {} bytes unsent",
        unsent[0]
    );
    // The same check would pass without the option if the kernel never queued more; that
    // is shown where the host sets no limit of its own (the kernel's default, "none").
    let host_limit = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_notsent_lowat").unwrap();
    if host_limit.trim() == u32::MAX.to_string() {
        assert!(
            unsent[1] > MOST_WITH_LOWAT,
            "without the limit only {} bytes unsent",
            unsent[1]
        );
    }
}

/// A target that aborts (a reset) mid-transfer is passed on as an abort: the client sees
/// a reset, not a clean EOF that would make a cut-off download look complete.
#[tokio::test]
async fn a_reset_from_the_target_reaches_the_client_as_a_reset() {
    for mode in [RelayMode::Splice, RelayMode::Copy] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let _ = s.write_all(&vec![7u8; 2_000_000]).await;
            socket2::SockRef::from(&s)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        });
        let mut config = test_config();
        config.relay_mode = mode;
        let server = spawn_server(config).await;
        let mut c = tunnel(server.addr, &target.to_string()).await;
        // Read slowly, so bytes are still on their way when the reset comes.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut buf = vec![0u8; 16 * 1024];
        let outcome = with_deadline(async {
            loop {
                match c.stream.read(&mut buf).await {
                    Ok(0) => return Ok(()),
                    Ok(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                    Err(e) => return Err(e),
                }
            }
        })
        .await;
        let err = outcome.expect_err("a clean EOF after the target's reset");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{mode:?}");
    }
}

/// Segments the one socket matching `filter` has sent without data: `segs_out` less
/// `data_segs_out`, from `ss -ti`. Sockets in TIME-WAIT (whose info line is empty) are
/// left out; exactly one other must match.
#[cfg(target_os = "linux")]
fn segments_without_data_sent(filter: &str) -> u64 {
    let out = std::process::Command::new("ss")
        .args(["-tinH", "exclude", "time-wait", filter])
        .output()
        .expect("ss (iproute2) runs; scripts/test-all installs it");
    let text = String::from_utf8_lossy(&out.stdout);
    let info: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with(char::is_whitespace) && l.contains("segs_out:"))
        .collect();
    assert_eq!(info.len(), 1, "one socket must match {filter}: {text}");
    let field = |key: &str| -> u64 {
        info[0]
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .map_or(0, |n| n.parse().unwrap())
    };
    field("segs_out:") - field("data_segs_out:")
}

/// A target that answers and closes (a request's reply, an HTTP/1.0 response): its last
/// bytes and its end reach the client in one segment, not the bytes and then a FIN of its
/// own (one packet less for the client to take in, and none left for it to acknowledge
/// late, which with many clients made the kernel retransmit it).
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_last_bytes_and_the_end_leave_in_one_segment() {
    for mode in [RelayMode::Splice, RelayMode::Copy] {
        // The relay's end of both connections is the connecting one, so before any data
        // it has sent exactly its SYN and the handshake's ACK, and the client sends it
        // nothing to acknowledge.
        let (relay_client_side, mut client) = ferrosocks_testkit::tcp_pair().await;
        let (relay_target_side, mut target) = ferrosocks_testkit::tcp_pair().await;
        relay_client_side.set_nodelay(true).unwrap();
        // The whole address pair: an ephemeral port may serve other connections too.
        let (port, peer) = (
            relay_client_side.local_addr().unwrap().port(),
            relay_client_side.peer_addr().unwrap().port(),
        );
        let filter = format!("( sport = :{port} and dport = :{peer} )");
        let before = segments_without_data_sent(&filter);
        // The bytes and the FIN are both waiting when the relay first reads.
        target.write_all(b"the last bytes").await.unwrap();
        target.shutdown().await.unwrap();
        let tunnel =
            ferrosocks_testkit::relay_until_closed(&relay_client_side, &relay_target_side, mode);
        let client_side = async {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"the last bytes", "{mode:?}");
            let after = segments_without_data_sent(&filter);
            // Ends the other direction, and so the relay.
            client.shutdown().await.unwrap();
            after
        };
        let (stats, after) = with_deadline(async { tokio::join!(tunnel, client_side) }).await;
        assert_eq!(stats.down, 14, "{mode:?}");
        assert_eq!(
            after, before,
            "{mode:?}: the FIN went out in a segment of its own"
        );
    }
}
