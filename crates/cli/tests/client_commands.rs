//! The client commands (`connect`, `bind`, `udp`, `passwd`) as built binaries against the
//! in-process ferrosocks server: every command with IPv4, IPv6 and domain targets, half
//! close, REP failures, authentication success and failure, exit codes.

mod support;

use std::net::SocketAddr;

use ferrosocks_server::{AuthMethod, Config, Users};
use ferrosocks_testkit::{spawn_server, tcp_echo, test_config, udp_echo, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::{run, Interactive};

fn proxy(scheme: &str, server: &TestServer) -> String {
    format!("{scheme}://{}", server.addr)
}

fn with_user(entry: &str) -> Config {
    let mut config = test_config();
    config.auth_methods = vec![AuthMethod::UserPass];
    let (name, cred) = Users::parse_entry(entry).unwrap();
    config.users.insert(name, cred);
    config
}

/// A target that reads everything until EOF and only then answers with the byte count,
/// and closes: it works only if the client half-closes and keeps reading.
async fn answer_after_eof() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut all = Vec::new();
                if s.read_to_end(&mut all).await.is_ok() {
                    let _ = s.write_all(format!("got {}\n", all.len()).as_bytes()).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn connect_relays_to_ipv4_ipv6_and_domain_targets() {
    let server = spawn_server(test_config()).await;
    let echo4 = tcp_echo("127.0.0.1:0").await;
    let echo6 = tcp_echo("[::1]:0").await;
    let targets = [
        echo4.to_string(),
        echo6.to_string(),
        format!("localhost:{}", echo4.port()),
    ];
    for scheme in ["socks5", "socks5h"] {
        for target in &targets {
            let out = run(
                &["connect", "--proxy", &proxy(scheme, &server), target],
                b"hello through socks\n",
            )
            .await;
            out.assert_code(0);
            assert_eq!(
                out.stdout_text(),
                "hello through socks\n",
                "{scheme} {target}"
            );
        }
    }
    // socks5h sends the name; socks5 resolved it here and sent an address.
    server
        .wait_for_log(&format!("\"localhost:{}\"", echo4.port()))
        .await;
}

#[tokio::test]
async fn connect_half_closes_at_stdin_eof_and_reads_the_answer_to_its_end() {
    let server = spawn_server(test_config()).await;
    let target = answer_after_eof().await;
    let input = vec![b'x'; 300_000];
    let out = run(
        &[
            "connect",
            "-x",
            &proxy("socks5", &server),
            &target.to_string(),
        ],
        &input,
    )
    .await;
    out.assert_code(0);
    assert_eq!(out.stdout_text(), "got 300000\n");
}

#[tokio::test]
async fn connect_ends_when_the_target_closes_first_and_stdin_then_closes() {
    let server = spawn_server(test_config()).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(b"banner\n").await.unwrap();
        // Full close: the client's later writes meet a reset.
    });
    let mut cmd = Interactive::spawn(&[
        "connect",
        "-x",
        &proxy("socks5", &server),
        &target.to_string(),
    ]);
    assert_eq!(cmd.line().await, "banner");
    // The target is gone; data sent now must not turn into an error exit.
    cmd.send(b"late data\n").await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let _ = cmd
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"more late data\n")
        .await;
    let (code, rest, stderr) = cmd.finish().await;
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert_eq!(rest, "");
}

/// `--no-half-close` ends when the target closes, with stdin still open (it waited for
/// stdin's EOF).
#[tokio::test]
async fn connect_without_half_close_ends_when_the_target_closes() {
    let server = spawn_server(test_config()).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(b"bye\n").await.unwrap();
    });
    let mut cmd = Interactive::spawn(&[
        "connect",
        "--no-half-close",
        "-x",
        &proxy("socks5", &server),
        &target.to_string(),
    ]);
    assert_eq!(cmd.line().await, "bye");
    // stdin stays open: the exit must come from the target's close alone.
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), cmd.child.wait())
        .await
        .expect("connect --no-half-close still running after the target closed")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn connect_refused_target_exits_1_and_names_the_rep() {
    let server = spawn_server(test_config()).await;
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let out = run(
        &[
            "connect",
            "--proxy",
            &proxy("socks5", &server),
            &closed.to_string(),
        ],
        b"",
    )
    .await;
    out.assert_code(1);
    assert!(out.stderr.contains("REP 0x05"), "{}", out.stderr);
    assert!(out.stderr.contains("connection refused"), "{}", out.stderr);
    assert!(out.stdout.is_empty());
}

#[tokio::test]
async fn connect_unresolvable_name_through_the_proxy_is_rep_04() {
    let server = spawn_server(test_config()).await;
    let out = run(
        &[
            "connect",
            "--proxy",
            &proxy("socks5h", &server),
            "no-such-host.invalid:80",
        ],
        b"",
    )
    .await;
    out.assert_code(1);
    assert!(out.stderr.contains("REP 0x04"), "{}", out.stderr);
}

#[tokio::test]
async fn connect_with_username_and_password() {
    let server = spawn_server(with_user("alice:open sesame")).await;
    let echo = tcp_echo("127.0.0.1:0").await.to_string();
    let good = format!("socks5://alice:open%20sesame@{}", server.addr);
    let out = run(&["connect", "--proxy", &good, &echo], b"authenticated\n").await;
    out.assert_code(0);
    assert_eq!(out.stdout_text(), "authenticated\n");

    let bad = format!("socks5://alice:wrong@{}", server.addr);
    let out = run(&["connect", "--proxy", &bad, &echo], b"x").await;
    out.assert_code(1);
    assert!(
        out.stderr.contains("rejected the username/password"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("wrong"),
        "password leaked: {}",
        out.stderr
    );

    let none = proxy("socks5", &server);
    let out = run(&["connect", "--proxy", &none, &echo], b"x").await;
    out.assert_code(1);
    assert!(out.stderr.contains("none of the offered"), "{}", out.stderr);
}

#[tokio::test]
async fn bad_arguments_exit_2() {
    for args in [
        &[
            "connect",
            "--proxy",
            "http://127.0.0.1:1080",
            "127.0.0.1:80",
        ][..],
        &["connect", "--proxy", "socks5://127.0.0.1:1080", "no-port"],
        &["connect", "127.0.0.1:80"],
        &[
            "bind",
            "--proxy",
            "socks5://127.0.0.1:1080",
            "--accept-timeout",
            "soon",
            "0.0.0.0:0",
        ],
        &[
            "udp",
            "--proxy",
            "socks5://127.0.0.1:1080",
            "--wait",
            "x",
            "127.0.0.1:7",
        ],
    ] {
        run(args, b"").await.assert_code(2);
    }
}

#[tokio::test]
async fn help_of_each_client_command_has_examples_and_exit_codes() {
    for cmd in ["connect", "bind", "udp", "passwd"] {
        let out = run(&[cmd, "--help"], b"").await;
        out.assert_code(0);
        let text = out.stdout_text();
        assert!(text.contains("Examples:"), "{cmd}: {text}");
        assert!(text.contains("Exit codes:"), "{cmd}: {text}");
    }
    let out = run(&["connect", "--help"], b"").await;
    assert!(out.stdout_text().contains("ProxyCommand"));
}

/// Runs `bind --json` for `target`, connects a peer to the announced address (from the
/// loopback address of its family), and checks the relay both ways and the clean end.
async fn bind_round_trip(server: &TestServer, scheme: &str, target: &str) {
    let mut cmd = Interactive::spawn(&[
        "bind",
        "--proxy",
        &proxy(scheme, server),
        "--json",
        "--accept-timeout",
        "20s",
        target,
    ]);
    let first: serde_json::Value = serde_json::from_str(&cmd.line().await).unwrap();
    let announced: SocketAddr = first["announced"].as_str().unwrap().parse().unwrap();
    assert!(!announced.ip().is_unspecified(), "{announced}");
    assert!(announced.ip().is_loopback(), "{announced}");

    let mut peer = TcpStream::connect(announced).await.unwrap();
    let second: serde_json::Value = serde_json::from_str(&cmd.line().await).unwrap();
    assert_eq!(
        second["peer"].as_str().unwrap(),
        peer.local_addr().unwrap().to_string()
    );

    peer.write_all(b"from the peer\n").await.unwrap();
    assert_eq!(cmd.line().await, "from the peer");
    cmd.send(b"to the peer\n").await;
    cmd.close_stdin();
    let mut got = String::new();
    tokio::time::timeout(support::LIMIT, peer.read_to_string(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, "to the peer\n", "the peer sees the data, then EOF");
    drop(peer);
    let (code, rest, stderr) = cmd.finish().await;
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert_eq!(rest, "");
}

#[tokio::test]
async fn bind_announces_then_relays_the_peer_for_ipv4_ipv6_and_domain() {
    let server = spawn_server(test_config()).await;
    bind_round_trip(&server, "socks5", "127.0.0.1:0").await;
    bind_round_trip(&server, "socks5", "[::1]:0").await;
    // The name of the expected peer, resolved by the proxy.
    bind_round_trip(&server, "socks5h", "localhost:0").await;
}

#[tokio::test]
async fn bind_without_json_prints_addresses_on_stderr() {
    let server = spawn_server(test_config()).await;
    let mut cmd = Interactive::spawn(&["bind", "-x", &proxy("socks5", &server), "127.0.0.1:0"]);
    let mut stderr = tokio::io::BufReader::new(cmd.child.stderr.take().unwrap());
    let mut line = String::new();
    use tokio::io::AsyncBufReadExt;
    tokio::time::timeout(support::LIMIT, stderr.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    let announced: SocketAddr = line
        .trim()
        .strip_prefix("announced ")
        .unwrap_or_else(|| panic!("{line:?}"))
        .parse()
        .unwrap();
    let mut peer = TcpStream::connect(announced).await.unwrap();
    line.clear();
    tokio::time::timeout(support::LIMIT, stderr.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(line.trim(), format!("peer {}", peer.local_addr().unwrap()));
    peer.write_all(b"data only\n").await.unwrap();
    assert_eq!(
        cmd.line().await,
        "data only",
        "stdout carries only relayed data"
    );
    drop(peer);
    let (code, _, _) = cmd.finish().await;
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn bind_failures_exit_1() {
    let server = spawn_server(with_user("alice:pw")).await;
    let bad = format!("socks5://alice:nope@{}", server.addr);
    let out = run(&["bind", "--proxy", &bad, "127.0.0.1:0"], b"").await;
    out.assert_code(1);
    assert!(
        out.stderr.contains("rejected the username/password"),
        "{}",
        out.stderr
    );

    // No peer within the accept timeout.
    let good = format!("socks5://alice:pw@{}", server.addr);
    let out = run(
        &[
            "bind",
            "--proxy",
            &good,
            "--accept-timeout",
            "300ms",
            "127.0.0.1:0",
        ],
        b"",
    )
    .await;
    out.assert_code(1);
    assert!(out.stderr.contains("timed out"), "{}", out.stderr);
}

#[tokio::test]
async fn udp_sends_lines_and_prints_replies_for_ipv4_ipv6_and_domain() {
    let server = spawn_server(test_config()).await;
    let echo4 = udp_echo("127.0.0.1:0").await;
    let echo6 = udp_echo("[::1]:0").await;
    for (scheme, target, source) in [
        ("socks5", echo4.to_string(), echo4.to_string()),
        ("socks5", echo6.to_string(), echo6.to_string()),
        // The proxy resolves the name; the reply names the address it came from.
        (
            "socks5h",
            format!("localhost:{}", echo4.port()),
            String::new(),
        ),
    ] {
        let out = run(
            &[
                "udp",
                "--proxy",
                &proxy(scheme, &server),
                "--wait",
                "500ms",
                &target,
            ],
            b"first\nsecond\n",
        )
        .await;
        out.assert_code(0);
        let text = out.stdout_text();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort();
        assert_eq!(lines.len(), 2, "{text}");
        for (line, payload) in lines.iter().zip(["first", "second"]) {
            let (from, got) = line.split_once('\t').unwrap();
            assert_eq!(got, payload);
            if source.is_empty() {
                let from: SocketAddr = from.parse().unwrap();
                assert_eq!(from.port(), echo4.port());
            } else {
                assert_eq!(from, source);
            }
        }
    }
}

#[tokio::test]
async fn udp_json_and_hex_output() {
    let server = spawn_server(test_config()).await;
    let echo = udp_echo("127.0.0.1:0").await.to_string();
    let p = proxy("socks5", &server);
    let out = run(
        &["udp", "-x", &p, "--json", "--wait", "500ms", &echo],
        b"caf\xc3\xa9\n",
    )
    .await;
    out.assert_code(0);
    let v: serde_json::Value = serde_json::from_str(out.stdout_text().trim()).unwrap();
    assert_eq!(v["source"], echo.as_str());
    assert_eq!(v["payload"], "café");

    let out = run(
        &["udp", "-x", &p, "--hex", "--wait", "500ms", &echo],
        b"00ff10\n",
    )
    .await;
    out.assert_code(0);
    assert_eq!(out.stdout_text(), format!("{echo}\t00ff10\n"));

    let out = run(&["udp", "-x", &p, "--hex", &echo], b"zz\n").await;
    out.assert_code(2);
}

#[tokio::test]
async fn udp_auth_failure_exits_1_and_success_works() {
    let server = spawn_server(with_user("bob:builder")).await;
    let echo = udp_echo("127.0.0.1:0").await.to_string();
    let bad = format!("socks5://bob:fixer@{}", server.addr);
    let out = run(&["udp", "--proxy", &bad, &echo], b"x\n").await;
    out.assert_code(1);
    assert!(
        out.stderr.contains("rejected the username/password"),
        "{}",
        out.stderr
    );
    let good = format!("socks5://bob:builder@{}", server.addr);
    let out = run(&["udp", "--proxy", &good, "--wait", "500ms", &echo], b"x\n").await;
    out.assert_code(0);
    assert_eq!(out.stdout_text(), format!("{echo}\tx\n"));
}

/// A relay announced in the other address family (here an IPv4-mapped IPv6 address, as
/// `external_address` may give) gets a socket of that family on the port the request
/// announced, so a proxy that filters by it still takes the datagrams (they were dropped).
#[tokio::test]
async fn udp_through_a_relay_announced_in_the_other_family() {
    let mut config = test_config();
    config.external_address = Some("::ffff:127.0.0.1".parse().unwrap());
    let server = spawn_server(config).await;
    let echo = udp_echo("127.0.0.1:0").await.to_string();
    let out = run(
        &[
            "udp",
            "--proxy",
            &proxy("socks5", &server),
            "--wait",
            "500ms",
            &echo,
        ],
        b"across families\n",
    )
    .await;
    out.assert_code(0);
    assert_eq!(out.stdout_text(), format!("{echo}\tacross families\n"));
}

#[tokio::test]
async fn passwd_hash_is_accepted_by_the_server() {
    let out = run(&["passwd"], b"correct horse\n").await;
    out.assert_code(0);
    let hash = out.stdout_text().trim().to_owned();
    assert!(hash.starts_with("$argon2id$v=19$"), "{hash}");
    assert!(!hash.contains("correct horse"));

    let out = run(&["passwd", "--user", "carol"], b"correct horse\r\n").await;
    out.assert_code(0);
    let entry = out.stdout_text().trim().to_owned();
    assert!(entry.starts_with("carol:$argon2id$"), "{entry}");
    assert_ne!(entry, format!("carol:{hash}"), "a fresh salt each time");

    let server = spawn_server(with_user(&entry)).await;
    let echo = tcp_echo("127.0.0.1:0").await.to_string();
    for _ in 0..3 {
        let good = format!("socks5://carol:correct%20horse@{}", server.addr);
        let out = run(&["connect", "--proxy", &good, &echo], b"hashed ok\n").await;
        out.assert_code(0);
        assert_eq!(out.stdout_text(), "hashed ok\n");
    }
    let bad = format!("socks5://carol:correct%20horsE@{}", server.addr);
    run(&["connect", "--proxy", &bad, &echo], b"x")
        .await
        .assert_code(1);
}

#[tokio::test]
async fn passwd_rejects_missing_or_overlong_passwords() {
    run(&["passwd"], b"").await.assert_code(1);
    run(&["passwd"], b"\n").await.assert_code(1);
    let long = vec![b'a'; 256];
    run(&["passwd"], &long).await.assert_code(1);
    // Names whose line would not read back as that one user.
    for name in ["a:b", "a\nb", "#admin", " #admin", ""] {
        run(&["passwd", "--user", name], b"pw\n")
            .await
            .assert_code(2);
    }
}
