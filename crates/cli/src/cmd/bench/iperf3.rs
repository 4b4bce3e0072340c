//! The TCP throughput rows of `bench peers` measured a second time by a load generator
//! that is not ours: iperf3, taken through each SOCKS server by proxychains (which hooks
//! `connect` and does the CONNECT handshake, then leaves the data path alone), through a
//! plain forwarder by connecting to it, and straight to the iperf3 server for direct.
//!
//! Our own generator runs its writer and its reader on one thread; iperf3's client and
//! server are two processes, as most users' programs are (here both pinned to the
//! generator's core). The ratios against direct differ between the two (see the README),
//! so both are published.
//!
//! Every measurement starts its own one-off server (`iperf3 -s -1`), so a failed run
//! cannot leave a server behind to answer the next one. Through proxychains, that the
//! traffic really crossed the relay is checked from iperf3's own report: every connection
//! it made must have the relay's port as its peer (a connection that proxychains let
//! through directly would show the server's). iperf3 takes whole seconds, so the duration
//! is rounded; the report's own `seconds` are recorded with each figure.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};
use tokio::process::Command;

use super::{Better, Record, RunReport};

/// Where iperf3's client connects.
#[derive(Debug, Clone, Copy)]
pub(super) enum Route {
    /// Straight to the iperf3 server.
    Direct,
    /// Through this SOCKS5 server, by proxychains.
    Socks(SocketAddr),
    /// To this plain forwarder, which relays its port to the iperf3 server's.
    Forward(SocketAddr),
}

/// One iperf3 measurement.
#[derive(Debug, Clone)]
pub(super) struct Run<'a> {
    pub(super) iperf3: &'a str,
    pub(super) proxychains: &'a str,
    /// The core both iperf3 processes are pinned to.
    pub(super) cpu: usize,
    /// The loopback port the one-off iperf3 server listens on.
    pub(super) server_port: u16,
    pub(super) route: Route,
    pub(super) streams: usize,
    /// Download: the server sends (`-R`).
    pub(super) reverse: bool,
    pub(super) duration: Duration,
}

/// The record's case name, in the words of `ferrosocks bench throughput`'s own.
pub(super) fn case_name(streams: usize, reverse: bool) -> String {
    let plural = if streams == 1 { "stream" } else { "streams" };
    let dir = if reverse { "down" } else { "up" };
    format!("iperf3 {streams} {plural} {dir}")
}

/// A proxychains configuration that sends every connection through `proxy` and prints
/// nothing of its own (iperf3's JSON goes to the same standard output).
pub(super) fn proxychains_conf(proxy: SocketAddr) -> String {
    format!(
        "strict_chain\nquiet_mode\ntcp_connect_time_out 8000\ntcp_read_time_out 15000\n\
         [ProxyList]\nsocks5 {} {}\n",
        proxy.ip(),
        proxy.port()
    )
}

pub(super) async fn measure(run: &Run<'_>, work: &Path) -> anyhow::Result<RunReport> {
    let at = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), run.server_port);
    // iperf3 takes whole seconds.
    let secs = run.duration.as_secs_f64().round().max(1.0) as u64;
    let log = std::fs::File::create(work.join("iperf3-server.log"))?;
    let mut server = Command::new("taskset")
        .arg("-c")
        .arg(run.cpu.to_string())
        .arg(run.iperf3)
        .args(["-s", "-1", "-B", "127.0.0.1", "-p"])
        .arg(run.server_port.to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting the iperf3 server ({})", run.iperf3))?;
    wait_listening(&mut server, run.server_port).await?;

    let mut client = Command::new("taskset");
    client.arg("-c").arg(run.cpu.to_string());
    let connect_to = match run.route {
        Route::Direct => at,
        Route::Forward(forwarder) => forwarder,
        Route::Socks(proxy) => {
            let conf = work.join("proxychains.conf");
            std::fs::write(&conf, proxychains_conf(proxy))?;
            client.arg(run.proxychains).arg("-q").arg("-f").arg(&conf);
            at
        }
    };
    client
        .arg(run.iperf3)
        .args(["-c", "127.0.0.1", "-J", "-p"])
        .arg(connect_to.port().to_string())
        .arg("-t")
        .arg(secs.to_string())
        .arg("-P")
        .arg(run.streams.to_string());
    if run.reverse {
        client.arg("-R");
    }
    client
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = client
        .spawn()
        .with_context(|| format!("starting the iperf3 client ({})", run.iperf3))?;
    let limit = Duration::from_secs(secs + 30);
    let out = match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(o) => o?,
        Err(_) => bail!("iperf3 did not finish within {limit:?}"),
    };
    // The one-off server ends with its one test; one that does not is stopped on drop.
    let _ = tokio::time::timeout(Duration::from_secs(5), server.wait()).await;

    let relay_port = match run.route {
        Route::Direct => run.server_port,
        Route::Socks(p) | Route::Forward(p) => p.port(),
    };
    let report: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "iperf3 printed no JSON ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })?;
    let record = record(&report, run.streams, run.reverse, relay_port)?;
    Ok(RunReport::new(target_name(run.route), vec![record]))
}

fn target_name(route: Route) -> String {
    match route {
        Route::Direct => "direct (iperf3)".into(),
        Route::Socks(p) => format!("socks5://{p} (iperf3 via proxychains)"),
        Route::Forward(p) => format!("forwarder {p} (iperf3)"),
    }
}

/// The figure out of iperf3's `-J` report: the receiver's rate over the whole test.
/// Fails unless every one of the `streams` connections had `relay_port` as its peer,
/// which is how a connection that bypassed the relay would show.
pub(super) fn record(
    report: &Value,
    streams: usize,
    reverse: bool,
    relay_port: u16,
) -> anyhow::Result<Record> {
    if let Some(e) = report.get("error").and_then(Value::as_str) {
        bail!("iperf3: {e}");
    }
    let connected = report["start"]["connected"]
        .as_array()
        .context("iperf3's report lists no connections")?;
    if connected.len() != streams {
        bail!(
            "iperf3 made {} data connections, not {streams}",
            connected.len()
        );
    }
    for c in connected {
        let peer = c["remote_port"].as_u64();
        if peer != Some(u64::from(relay_port)) {
            bail!("an iperf3 connection went to port {peer:?}, not through port {relay_port}");
        }
    }
    let received = &report["end"]["sum_received"];
    let bits = received["bits_per_second"]
        .as_f64()
        .context("iperf3's report has no received rate")?;
    let retransmits = report["end"]["sum_sent"]["retransmits"].as_u64();
    Ok(Record::new(
        case_name(streams, reverse),
        "Gbit/s",
        bits / 1e9,
        Better::Higher,
    )
    .detail(json!({
        "bytes": received["bytes"],
        "seconds": received["seconds"],
        "streams": streams,
        "sender_retransmits": retransmits,
    })))
}

/// Waits (5 s at most) until the server listens on `port` (IPv4 loopback, as `-B`
/// asks): its socket shows in `/proc/net/tcp` in the LISTEN state. A connection would not
/// do (the one-off server would take it for its test), nor a bind of our own (landing
/// between iperf3's bind and listen, it would make iperf3's listen fail).
async fn wait_listening(server: &mut tokio::process::Child, port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = server.try_wait() {
            bail!("the iperf3 server exited: {status}");
        }
        let table = std::fs::read_to_string("/proc/net/tcp").context("reading /proc/net/tcp")?;
        if listens(&table, port) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("the iperf3 server does not listen on 127.0.0.1:{port} after 5 s")
}

/// Whether `/proc/net/tcp` text has a socket listening on 127.0.0.1:`port`: a line whose
/// local address is `0100007F:PPPP` (hex, the address in the kernel's byte order) and
/// whose state is `0A` (LISTEN).
fn listens(table: &str, port: u16) -> bool {
    let local = format!("0100007F:{port:04X}");
    table.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        let (address, state) = (fields.next(), fields.nth(1));
        address == Some(local.as_str()) && state == Some("0A")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(ports: &[u16]) -> Value {
        json!({
            "start": { "connected": ports.iter().map(|p| json!({
                "local_host": "127.0.0.1", "local_port": 50000, "remote_host": "127.0.0.1",
                "remote_port": p })).collect::<Vec<_>>() },
            "end": {
                "sum_sent": { "bytes": 3_000_000_000u64, "seconds": 3.0, "retransmits": 7 },
                "sum_received": { "bytes": 2_999_000_000u64, "seconds": 3.0,
                                  "bits_per_second": 7.997e9 },
            },
        })
    }

    #[test]
    fn the_receivers_rate_is_the_figure() {
        let r = record(&report(&[1080]), 1, false, 1080).unwrap();
        assert_eq!(r.case, "iperf3 1 stream up");
        assert_eq!(r.metric, "Gbit/s");
        assert!((r.value - 7.997).abs() < 1e-9, "{}", r.value);
        assert_eq!(r.detail["bytes"], 2_999_000_000u64);
        assert_eq!(r.detail["sender_retransmits"], 7);
        let r = record(&report(&[1080; 8]), 8, true, 1080).unwrap();
        assert_eq!(r.case, "iperf3 8 streams down");
    }

    #[test]
    fn a_connection_that_missed_the_relay_fails_the_measurement() {
        let e = record(&report(&[1080, 5201]), 2, false, 1080).unwrap_err();
        assert!(e.to_string().contains("5201"), "{e}");
        let e = record(&report(&[1080]), 2, false, 1080).unwrap_err();
        assert!(e.to_string().contains("not 2"), "{e}");
    }

    #[test]
    fn iperf3s_own_error_is_reported() {
        let e = record(
            &json!({ "start": {}, "error": "unable to connect to server" }),
            1,
            false,
            1080,
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "iperf3: unable to connect to server");
    }

    #[test]
    fn a_listening_socket_is_found_in_proc_net_tcp() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:B0A1 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:1F90 0100007F:B0A1 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
";
        assert!(listens(table, 0xB0A1));
        // Established, not listening.
        assert!(!listens(table, 0x1F90));
        assert!(!listens(table, 80));
        // The real table, with a listener of our own.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(listens(
            &std::fs::read_to_string("/proc/net/tcp").unwrap(),
            port
        ));
    }

    #[test]
    fn proxychains_sends_everything_through_the_one_proxy_quietly() {
        let conf = proxychains_conf("127.0.0.1:41080".parse().unwrap());
        assert!(conf.starts_with("strict_chain\nquiet_mode\n"), "{conf}");
        assert!(
            conf.ends_with("[ProxyList]\nsocks5 127.0.0.1 41080\n"),
            "{conf}"
        );
        // No `localnet` exclusion: loopback destinations go through the proxy too.
        assert!(!conf.contains("localnet"));
    }
}
