//! Every scenario, briefly, straight to the targets and through an in-process ferrosocks.
//! These check correctness only (counts match, echoes verified, nothing lost at a low
//! rate); speed is never asserted.

use std::time::Duration;

use ferrosocks_testkit::{spawn_server, test_config, with_deadline};

use super::*;

fn common(proxy: Option<SocketAddr>) -> Common {
    Common {
        proxy: proxy.map(|p| p.to_string()),
        direct: proxy.is_none(),
        forward: None,
        targets_port: None,
        user: None,
        pass: None,
        duration: Duration::from_millis(150),
        timeout: Duration::from_secs(5),
        pipelined: false,
        target_name: None,
        json: None,
        quiet: true,
    }
}

fn value(records: &[Record], metric: &str) -> f64 {
    records
        .iter()
        .find(|r| r.metric == metric)
        .unwrap_or_else(|| panic!("no {metric} in {records:?}"))
        .value
}

async fn every_scenario(proxy: Option<SocketAddr>) {
    let c = common(proxy);
    let ctx = Ctx::new(&c).await.unwrap();

    let t = tcp::throughput(
        ctx.clone(),
        ThroughputArgs {
            common: c.clone(),
            streams: vec![1, 3],
            direction: vec![Direction::Up, Direction::Down],
            max_bytes: 1 << 40,
        },
    )
    .await
    .unwrap();
    assert_eq!(t.len(), 4);
    for r in &t {
        // upload/download already failed the run if the two ends' counts differed
        assert!(r.detail["bytes"].as_u64().unwrap() > 0, "{r:?}");
    }

    // A byte budget smaller than one chunk: exactly that many bytes, both ways.
    let t = tcp::throughput(
        ctx.clone(),
        ThroughputArgs {
            common: c.clone(),
            streams: vec![2],
            direction: vec![Direction::Up, Direction::Down],
            max_bytes: 1000,
        },
    )
    .await
    .unwrap();
    for r in &t {
        assert_eq!(r.detail["bytes"].as_u64(), Some(2000), "{r:?}");
    }

    let cr = tcp::connrate(
        ctx.clone(),
        ConnrateArgs {
            common: c.clone(),
            workers: 4,
            count: 300,
        },
    )
    .await
    .unwrap();
    let sessions = cr[0].detail["sessions"].as_u64().unwrap();
    assert!(sessions > 0 && sessions <= 300);
    assert!(value(&cr, "p50 µs") <= value(&cr, "p99 µs"));

    let l = tcp::latency(
        ctx.clone(),
        LatencyArgs {
            common: c.clone(),
            size: 32,
            count: 500,
        },
    )
    .await
    .unwrap();
    assert!(value(&l, "p50 µs") <= value(&l, "p99 µs"));

    let u = udp::udp(
        ctx.clone(),
        UdpArgs {
            common: c.clone(),
            size: 512,
            window: 64,
            rate: Some(500),
            count: 50,
        },
    )
    .await
    .unwrap();
    assert_eq!(value(&u, "loss %"), 0.0, "{u:?}");
    assert_eq!(u[0].detail["received"], u[0].detail["sent"]);

    let u = udp::udp(
        ctx.clone(),
        UdpArgs {
            common: c.clone(),
            size: 100,
            window: 8,
            rate: None,
            count: 2000,
        },
    )
    .await
    .unwrap();
    assert!(u[0].detail["received"].as_u64().unwrap() > 0);

    let pid = if proxy.is_some() {
        vec![std::process::id()]
    } else {
        vec![]
    };
    let i = tcp::idle(
        ctx,
        IdleArgs {
            common: c,
            tunnels: 200,
            proxy_pid: pid.clone(),
            concurrency: 32,
            no_ping: false,
            settle: Duration::from_millis(10),
        },
    )
    .await
    .unwrap();
    assert_eq!(value(&i, "opened"), 200.0);
    assert_eq!(
        i.iter().any(|r| r.metric == "RSS KiB/tunnel"),
        !pid.is_empty()
    );
}

// One thread, as `ferrosocks bench` runs (see main.rs).
#[tokio::test]
async fn every_scenario_direct() {
    with_deadline(every_scenario(None)).await;
}

// The generator on one thread as in the binary; the in-process server shares it here.
#[tokio::test]
async fn every_scenario_through_ferrosocks() {
    ferrosocks_testkit::raise_fd_limit();
    let server = spawn_server(test_config()).await;
    with_deadline(every_scenario(Some(server.addr))).await;
    server.shutdown().await;
}

/// Every TCP case measured with named targets is a case of its own (so `bench peers` keeps
/// it apart from the same case with addresses); without a name nothing changes.
#[test]
fn tcp_cases_with_named_targets_are_marked() {
    let proxy: SocketAddr = "127.0.0.1:1080".parse().unwrap();
    let socks = |target_name: Option<Host>| Via::Socks {
        proxy,
        credentials: None,
        pipelined: false,
        target_name,
    };
    let named = socks(Some(Host::new("bench-target").unwrap()));
    assert!(named.targets_by_name());
    assert_eq!(named.tcp_case("latency"), "latency by name");
    for plain in [socks(None), Via::Direct] {
        assert!(!plain.targets_by_name());
        assert_eq!(plain.tcp_case("latency"), "latency");
    }
}

// `--target-name`: CONNECT carries the name, the proxy resolves it, the sessions run.
#[tokio::test]
async fn targets_can_be_given_by_name() {
    let Some(name) = localhost_v4_only() else {
        return;
    };
    let server = spawn_server(test_config()).await;
    let log = server.log.clone();
    let mut c = common(Some(server.addr));
    c.target_name = Some(name.into());
    let ctx = Ctx::new(&c).await.unwrap();
    let cr = with_deadline(tcp::connrate(
        ctx.clone(),
        ConnrateArgs {
            common: c,
            workers: 2,
            count: 20,
        },
    ))
    .await
    .unwrap();
    assert_eq!(cr[0].detail["sessions"].as_u64(), Some(20));
    // A row of its own beside the sessions to addresses in `bench peers`.
    assert_eq!(cr[0].case, "connrate 2w by name");
    server.shutdown().await;
    let echo = format!("\"target\":\"localhost:{}\"", ctx.targets.echo_once.port());
    let lines = log.lines();
    assert_eq!(
        lines.iter().filter(|l| l.contains(&echo)).count(),
        20,
        "{lines:?}"
    );
}

/// `localhost`, where it resolves to 127.0.0.1 only (as on this project's machines; many
/// systems also give `::1`, which `--target-name` refuses).
fn localhost_v4_only() -> Option<&'static str> {
    match checked_target_name("localhost") {
        Ok(_) => Some("localhost"),
        Err(e) => {
            let e = e.to_string();
            assert!(e.contains("127.0.0.1 only"), "{e}");
            eprintln!("localhost does not resolve to 127.0.0.1 only here: {e}");
            None
        }
    }
}

#[test]
fn a_target_name_must_resolve_to_127_0_0_1_only() {
    localhost_v4_only();
    // An address is a name that resolves to itself.
    assert!(checked_target_name("127.0.0.1").is_ok());
    let err = checked_target_name("::1").unwrap_err().to_string();
    assert!(err.contains("127.0.0.1 only"), "{err}");
    assert!(checked_target_name("127.0.0.2").is_err());
}

#[tokio::test]
async fn a_failure_reply_fails_the_run() {
    let server = spawn_server(test_config()).await;
    let ctx = Ctx::new(&common(Some(server.addr))).await.unwrap();
    // A port nobody listens on: the server answers REP 05 (connection refused).
    let closed = std::net::TcpListener::bind(LOOPBACK).unwrap();
    let dst = closed.local_addr().unwrap();
    drop(closed);
    let err = with_deadline(ctx.dial(dst)).await.unwrap_err();
    assert!(format!("{err:#}").contains("REP 0x05"), "{err:#}");
}

#[tokio::test]
async fn targets_queue_hundreds_of_connections_before_accepting() {
    // Nothing accepts: every connection must complete into the queue. With the 128 of
    // `TcpListener::bind` the 130th SYN would be dropped and its connect would wait for
    // the retransmission a second later, past the timeout below. The kernel caps the
    // queue at `net.core.somaxconn` (4096 by default since Linux 5.4).
    let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096);
    let listener = target_listener(LOOPBACK).unwrap();
    let addr = listener.local_addr().unwrap();
    let count = somaxconn.min(300);
    let clients = tokio::task::spawn_blocking(move || {
        (0..count)
            .map(|n| {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(900))
                    .unwrap_or_else(|e| panic!("connection {n} of {count}: {e}"))
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert_eq!(clients.len(), count);
}

/// A plain forwarder, as HAProxy and nginx run in `bench peers`: TCP `listen` + N to
/// `targets` + N, UDP `listen` to `targets` (for one client at a time).
async fn spawn_forwarder(listen: u16, targets: u16) {
    let front = Arc::new(
        tokio::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, listen))
            .await
            .unwrap(),
    );
    let back = Arc::new(tokio::net::UdpSocket::bind(LOOPBACK).await.unwrap());
    back.connect((Ipv4Addr::LOCALHOST, targets)).await.unwrap();
    let client = Arc::new(std::sync::Mutex::new(None));
    let (f, b, c) = (front.clone(), back.clone(), client.clone());
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = f.recv_from(&mut buf).await {
            *c.lock().unwrap() = Some(from);
            let _ = b.send(&buf[..n]).await;
        }
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok(n) = back.recv(&mut buf).await {
            let to = *client.lock().unwrap();
            if let Some(to) = to {
                let _ = front.send_to(&buf[..n], to).await;
            }
        }
    });
    for n in 0..TARGETS {
        let l = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, listen + n))
            .await
            .unwrap();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut target = TcpStream::connect((Ipv4Addr::LOCALHOST, targets + n))
                        .await
                        .unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut target).await;
                });
            }
        });
    }
}

#[tokio::test]
async fn scenarios_through_a_plain_forwarder() {
    // The forwarder's block and the targets' block, one after the other.
    let listen = peers::port_block(2 * TARGETS).unwrap();
    spawn_forwarder(listen, listen + TARGETS).await;
    let mut c = common(None);
    c.direct = false;
    c.forward = Some(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), listen));
    c.targets_port = Some(listen + TARGETS);
    let ctx = Ctx::new(&c).await.unwrap();
    assert_eq!(ctx.targets.sink.port(), listen + TARGETS);
    assert_eq!(ctx.targets.idle_echo.port(), listen + TARGETS + 4);
    assert_eq!(
        ctx.targets.udp_echo.port(),
        listen + TARGETS,
        "UDP's own port space"
    );

    // The byte counts of both ends are compared inside: a wrong mapping fails the run.
    let t = with_deadline(tcp::throughput(
        ctx.clone(),
        ThroughputArgs {
            common: c.clone(),
            streams: vec![2],
            direction: vec![Direction::Up, Direction::Down],
            max_bytes: 100_000,
        },
    ))
    .await
    .unwrap();
    for r in &t {
        assert_eq!(r.detail["bytes"].as_u64(), Some(200_000), "{r:?}");
    }
    let l = with_deadline(tcp::latency(
        ctx.clone(),
        LatencyArgs {
            common: c.clone(),
            size: 32,
            count: 200,
        },
    ))
    .await
    .unwrap();
    assert!(value(&l, "p50 µs") <= value(&l, "p99 µs"));

    let u = with_deadline(udp::udp(
        ctx.clone(),
        UdpArgs {
            common: c.clone(),
            size: 64,
            window: 8,
            rate: None,
            count: 500,
        },
    ))
    .await
    .unwrap();
    assert_eq!(u[0].detail["received"], u[0].detail["sent"], "{u:?}");

    // No SOCKS: a command that only a SOCKS server could carry fails before connecting.
    let err = with_deadline(ctx.dial_command(Command::BIND, ctx.targets.echo))
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("plain forwarder"), "{err:#}");
}

#[test]
fn a_forwarder_maps_each_target_port_to_its_own_port() {
    let fwd: SocketAddr = "127.0.0.1:42000".parse().unwrap();
    let at = |p: u16| SocketAddr::new(Ipv4Addr::LOCALHOST.into(), p);
    assert_eq!(forwarded(fwd, 43000, at(43000)).unwrap(), at(42000));
    assert_eq!(forwarded(fwd, 43000, at(43004)).unwrap(), at(42004));
    assert!(forwarded(fwd, 43000, at(43005)).is_err(), "past the block");
    assert!(forwarded(fwd, 43000, at(42999)).is_err(), "below the block");
}

#[test]
fn proxy_urls() {
    let (a, c) = parse_proxy("socks5://u:p@127.0.0.1:1080").unwrap();
    assert_eq!(a, "127.0.0.1:1080".parse().unwrap());
    assert_eq!(c, Some(("u".into(), "p".into())));
    assert_eq!(parse_proxy("localhost:9").unwrap().0.port(), 9);
    assert!(parse_proxy("192.0.2.1:1080").is_err(), "only loopback");
}

/// `bench peers`' second generator: iperf3 straight, through ferrosocks by proxychains,
/// and through a plain forwarder, each run checked (inside `iperf3::measure`) to have
/// connected where it should. Needs iperf3, proxychains4 and taskset (scripts/test-all
/// installs them; without them it fails, as the Dante tests do without danted) and CPU 0
/// in this process's CPU set.
#[tokio::test]
async fn iperf3_runs_direct_through_socks_and_through_a_forwarder() {
    let server = spawn_server(test_config()).await;
    let work = std::env::temp_dir().join(format!("ferrosocks-iperf3-test-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let listen = peers::port_block(2 * TARGETS).unwrap();
    spawn_forwarder(listen, listen + TARGETS).await;
    let free = || peers::free_port().unwrap();
    let forwarder = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), listen);
    let runs = [
        (iperf3::Route::Direct, free(), 1, false),
        (iperf3::Route::Socks(server.addr), free(), 2, false),
        (iperf3::Route::Socks(server.addr), free(), 1, true),
        // The forwarder takes its first port to the targets' first, where the server is.
        (
            iperf3::Route::Forward(forwarder),
            listen + TARGETS,
            1,
            false,
        ),
    ];
    for &(route, server_port, streams, reverse) in &runs {
        let run = iperf3::Run {
            iperf3: "iperf3",
            proxychains: "proxychains4",
            cpu: 0,
            server_port,
            route,
            streams,
            reverse,
            duration: Duration::from_secs(1),
        };
        let report = with_deadline(iperf3::measure(&run, &work))
            .await
            .unwrap_or_else(|e| panic!("{route:?}: {e:#}"));
        let record = &report.records[0];
        assert_eq!(record.case, iperf3::case_name(streams, reverse));
        assert!(record.value > 0.0, "{route:?}: {record:?}");
        assert!(record.detail["bytes"].as_u64().unwrap() > 0, "{record:?}");
    }
    // ferrosocks relayed the SOCKS runs' connections (each run's control connection and
    // its data streams, 3 and 2) and no other.
    let socks_ports = [&runs[1], &runs[2]].map(|r| r.1);
    with_deadline(async {
        while server.log.lines().len() < 5 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let lines = server.log.lines();
    assert_eq!(lines.len(), 5, "{lines:#?}");
    for (port, count) in socks_ports.into_iter().zip([3, 2]) {
        let target = format!("\"target\":\"127.0.0.1:{port}\"");
        assert_eq!(
            lines.iter().filter(|l| l.contains(&target)).count(),
            count,
            "{lines:#?}"
        );
    }
    let _ = std::fs::remove_dir_all(&work);
}
