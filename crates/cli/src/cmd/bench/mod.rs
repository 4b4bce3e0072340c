//! `ferrosocks bench`: a load generator for any SOCKS5 server, or none (`--direct`, the
//! loopback limit), with its own targets on loopback inside this process.
//!
//! # Layout
//! - `mod.rs`: arguments, the in-process targets, the SOCKS dialer (driven by
//!   `ferrosocks_proto::ClientHandshake`, so nothing here depends on the async client crate),
//!   the shared measurement types.
//! - `tcp.rs`: `throughput`, `connrate`, `latency` and `idle`.
//! - `udp.rs`: `udp` (UDP ASSOCIATE, window or rate).
//! - `report.rs`: the table, the JSON file, medians and ratios, the SVG chart.
//! - `peers.rs`: `bench peers`, direct / Dante / microsocks / ferrosocks side by side.
//! - `iperf3.rs`: the TCP throughput rows of `bench peers` once more, by iperf3 (taken
//!   through SOCKS by proxychains).
//! - `bare_udp.rs`: `bare-udp-forwarder`, a UDP relay doing the least work per datagram,
//!   a reference for the UDP rows of `bench peers`.
//!
//! # Correctness before speed
//! Every byte is counted on both ends and the counts must match; echoed payloads carry a
//! sequence number and are compared; every wait has a deadline (`--timeout`); a SOCKS
//! failure reply ends the run with an error naming the REP code. Every load stops at
//! `--duration` or `--count`, whichever comes first.

mod bare_udp;
mod iperf3;
pub(crate) mod peers;
mod report;
mod tcp;
mod udp;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use bytes::BytesMut;
use clap::{Args, Subcommand};
use ferrosocks_proto::{
    Addr, ClientEvent, ClientHandshake, Command, Host, Password, Rep, Reply, Request,
    UserPassRequest,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::oneshot;

pub(crate) use report::{Better, Record, RunReport};

/// `ferrosocks bench` arguments.
#[derive(Debug, Args)]
#[command(after_help = BENCH_EXAMPLES)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    pub(crate) scenario: Scenario,
}

const BENCH_EXAMPLES: &str = "Examples:
  ferrosocks bench throughput --direct                      # the loopback limit
  ferrosocks bench throughput --proxy 127.0.0.1:1080 --streams 8 --direction down
  ferrosocks bench connrate --proxy socks5://alice:secret@127.0.0.1:1080 --workers 16
  ferrosocks bench latency --proxy 127.0.0.1:1080
  ferrosocks bench udp --proxy 127.0.0.1:1080 --size 512 --window 64
  ferrosocks bench idle --proxy 127.0.0.1:1080 --proxy-pid $(pgrep -o danted) --tunnels 9000
  ferrosocks bench all --proxy 127.0.0.1:1080 --json out.json
  ferrosocks bench throughput --forward 127.0.0.1:42000 --targets-port 43000  # HAProxy, nginx ...
  ferrosocks bench bare-udp-forwarder --listen 127.0.0.1:42000 --to 127.0.0.1:43000 &
  ferrosocks bench udp --forward 127.0.0.1:42000 --targets-port 43000         # bare relay
  bench/peers.sh [--quick]                                  # direct, Dante, microsocks, ... ferrosocks

The targets (TCP sink, source and echo; UDP echo) run inside this process on 127.0.0.1,
so the proxy must be on loopback too. Exit codes: 0 success, 1 a failed measurement
(SOCKS failure reply, count mismatch, timeout), 2 bad arguments.";

/// One scenario per subcommand.
#[derive(Debug, Subcommand)]
pub(crate) enum Scenario {
    /// Bulk TCP through one tunnel per stream, upload and download, Gbit/s.
    Throughput(ThroughputArgs),
    /// Whole sessions per second: connect, greeting, CONNECT, 32-byte echo, close.
    Connrate(ConnrateArgs),
    /// Round trips of a small payload on one long-lived tunnel, p50/p99.
    Latency(LatencyArgs),
    /// UDP ASSOCIATE, datagrams echoed through the relay: datagrams/s and loss.
    Udp(UdpArgs),
    /// Many idle tunnels: memory per tunnel (proxy RSS and machine-wide MemAvailable).
    Idle(IdleArgs),
    /// Every scenario above, one after the other, against the same proxy.
    All(AllArgs),
    /// Direct, Dante, microsocks, HAProxy, nginx (plain forwarders), a bare UDP forwarder
    /// and ferrosocks interleaved, with medians, ratios and a chart.
    Peers(peers::PeersArgs),
    /// Not a load: a bare UDP forwarder (no SOCKS, one thread, busy-polling while
    /// datagrams flow), the reference `bench peers` runs beside the servers in its UDP rows.
    BareUdpForwarder(bare_udp::BareUdpArgs),
}

/// What every scenario shares: where to send the load and how long.
#[derive(Debug, Clone, Args)]
pub(crate) struct Common {
    /// The SOCKS5 server: HOST:PORT or socks5://[USER:PASS@]HOST:PORT (loopback only).
    #[arg(long, value_name = "ADDR", required_unless_present_any = ["direct", "forward"])]
    pub(crate) proxy: Option<String>,
    /// No proxy: connect straight to the targets (the loopback limit).
    #[arg(long, conflicts_with_all = ["proxy", "forward"])]
    pub(crate) direct: bool,
    /// A plain forwarder (HAProxy, nginx's stream module, socat) instead of a SOCKS
    /// server, for comparing relays without SOCKS: a connection for the target at
    /// `--targets-port` + N goes to this address's port + N (TCP: 0 sink, 1 source, 2 echo,
    /// 3 one-shot echo, 4 idle echo; UDP: 0 echo). No handshake, so `connrate` measures
    /// plain connections.
    #[arg(
        long,
        value_name = "ADDR",
        conflicts_with = "proxy",
        requires = "targets_port"
    )]
    pub(crate) forward: Option<SocketAddr>,
    /// Listen for the TCP targets on this port and the four after it, and for the UDP echo
    /// on this port (instead of free ports), so a forwarder can be pointed at them.
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..=65531))]
    pub(crate) targets_port: Option<u16>,
    /// Username for RFC 1929 authentication.
    #[arg(long, requires = "pass")]
    pub(crate) user: Option<String>,
    /// Password for RFC 1929 authentication.
    #[arg(long, requires = "user")]
    pub(crate) pass: Option<String>,
    /// How long each measurement runs.
    #[arg(long, value_parser = crate::args::duration, default_value = "3s")]
    pub(crate) duration: Duration,
    /// The longest any single step (connect, handshake, read) may take before the run fails.
    #[arg(long, value_parser = crate::args::duration, default_value = "10s")]
    pub(crate) timeout: Duration,
    /// Send the CONNECT request together with the greeting (saves a round trip; some
    /// servers, microsocks among them, lose a pipelined request).
    #[arg(long)]
    pub(crate) pipelined: bool,
    /// Give the TCP targets by this name in CONNECT requests instead of by address, so
    /// the proxy's name resolution is part of what is measured (as with `curl
    /// --socks5-hostname` or a browser's remote DNS). UDP and BIND requests keep the
    /// address. The name must resolve to 127.0.0.1 only (checked here; the proxy is on
    /// this machine), as `localhost` does where /etc/hosts gives it no `::1`.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["direct", "forward"])]
    pub(crate) target_name: Option<String>,
    /// Also write the results to this JSON file.
    #[arg(long, value_name = "FILE")]
    pub(crate) json: Option<PathBuf>,
    /// Print no table (with --json).
    #[arg(long)]
    pub(crate) quiet: bool,
}

/// A count that must be at least 1 (0 would measure nothing): refused as a bad argument,
/// exit code 2, like every other argument error.
fn count(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// Parallel streams: 1 to 1024.
fn stream_count(s: &str) -> Result<usize, String> {
    count(s).and_then(|n| {
        if n <= 1024 {
            Ok(n)
        } else {
            Err("must be 1 to 1024".into())
        }
    })
}

/// Direction of a bulk transfer, as seen from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Direction {
    /// Client to target.
    Up,
    /// Target to client.
    Down,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct ThroughputArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Parallel streams (one tunnel each); repeat or comma-separate for several runs.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 8], value_parser = stream_count)]
    pub(crate) streams: Vec<usize>,
    /// up, down, or both (comma-separated).
    #[arg(long, value_delimiter = ',', default_values = ["up", "down"])]
    pub(crate) direction: Vec<Direction>,
    /// Upper bound on the bytes one stream sends, besides --duration.
    #[arg(long, default_value_t = 1 << 40)]
    pub(crate) max_bytes: u64,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct ConnrateArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Concurrent workers, each running sessions back to back.
    #[arg(long, default_value_t = 8, value_parser = count)]
    pub(crate) workers: usize,
    /// Upper bound on the number of sessions, besides --duration.
    #[arg(long, default_value_t = 200_000)]
    pub(crate) count: u64,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct LatencyArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Payload bytes per ping (at least 8: it carries a sequence number).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(8..=65_536))]
    pub(crate) size: u32,
    /// Upper bound on the number of round trips, besides --duration.
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) count: u64,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct UdpArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Payload bytes per datagram (at least 8: it carries a sequence number).
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(8..=65_000))]
    pub(crate) size: u32,
    /// Datagrams in flight at most (ignored with --rate).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) window: u64,
    /// Send at this many datagrams per second instead of a window.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) rate: Option<u64>,
    /// Upper bound on the number of datagrams sent, besides --duration.
    #[arg(long, default_value_t = 10_000_000)]
    pub(crate) count: u64,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct IdleArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Idle tunnels to open (each costs this process two descriptors).
    #[arg(long, default_value_t = 9000, value_parser = count)]
    pub(crate) tunnels: usize,
    /// The proxy's process id (its children are counted too); repeat for several.
    #[arg(long, value_name = "PID")]
    pub(crate) proxy_pid: Vec<u32>,
    /// Handshakes in progress at once while opening.
    #[arg(long, default_value_t = 64)]
    pub(crate) concurrency: usize,
    /// Do not send the one-byte round trip that proves each tunnel relays.
    #[arg(long)]
    pub(crate) no_ping: bool,
    /// How long to wait after the last tunnel opened before reading memory.
    #[arg(long, value_parser = crate::args::duration, default_value = "1s")]
    pub(crate) settle: Duration,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct AllArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Idle tunnels for the idle scenario.
    #[arg(long, default_value_t = 9000, value_parser = count)]
    pub(crate) tunnels: usize,
    /// The proxy's process id, for the idle scenario's memory figures.
    #[arg(long, value_name = "PID")]
    pub(crate) proxy_pid: Vec<u32>,
}

/// Runs `ferrosocks bench`.
pub(crate) async fn run(args: BenchArgs) -> ExitCode {
    let result = match args.scenario {
        Scenario::Peers(p) => return peers::run(p).await,
        Scenario::BareUdpForwarder(a) => return bare_udp::run(a),
        Scenario::Throughput(a) => measure(&a.common.clone(), |ctx| tcp::throughput(ctx, a)).await,
        Scenario::Connrate(a) => measure(&a.common.clone(), |ctx| tcp::connrate(ctx, a)).await,
        Scenario::Latency(a) => measure(&a.common.clone(), |ctx| tcp::latency(ctx, a)).await,
        Scenario::Udp(a) => measure(&a.common.clone(), |ctx| udp::udp(ctx, a)).await,
        Scenario::Idle(a) => measure(&a.common.clone(), |ctx| tcp::idle(ctx, a)).await,
        Scenario::All(a) => measure(&a.common.clone(), |ctx| all(ctx, a)).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferrosocks bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Sets up the targets, runs one scenario, prints and writes the report.
async fn measure<F, Fut>(common: &Common, scenario: F) -> anyhow::Result<()>
where
    F: FnOnce(Ctx) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Vec<Record>>>,
{
    let ctx = Ctx::new(common).await?;
    let target = ctx.via.describe();
    let records = scenario(ctx).await?;
    let report = RunReport::new(target, records);
    if !common.quiet {
        print!("{}", report.table());
    }
    if let Some(path) = &common.json {
        report.write_json(path)?;
    }
    Ok(())
}

async fn all(ctx: Ctx, a: AllArgs) -> anyhow::Result<Vec<Record>> {
    let c = a.common.clone();
    let mut out = tcp::throughput(
        ctx.clone(),
        ThroughputArgs {
            common: c.clone(),
            streams: vec![1, 8],
            direction: vec![Direction::Up, Direction::Down],
            max_bytes: 1 << 40,
        },
    )
    .await?;
    out.extend(
        tcp::connrate(
            ctx.clone(),
            ConnrateArgs {
                common: c.clone(),
                workers: 8,
                count: 200_000,
            },
        )
        .await?,
    );
    out.extend(
        tcp::latency(
            ctx.clone(),
            LatencyArgs {
                common: c.clone(),
                size: 32,
                count: 1_000_000,
            },
        )
        .await?,
    );
    out.extend(
        udp::udp(
            ctx.clone(),
            UdpArgs {
                common: c.clone(),
                size: 512,
                window: 64,
                rate: None,
                count: 10_000_000,
            },
        )
        .await?,
    );
    out.extend(
        tcp::idle(
            ctx,
            IdleArgs {
                common: c,
                tunnels: a.tunnels,
                proxy_pid: a.proxy_pid,
                concurrency: 64,
                no_ping: false,
                settle: Duration::from_secs(1),
            },
        )
        .await?,
    );
    Ok(out)
}

/// How the load reaches the targets.
#[derive(Debug, Clone)]
pub(crate) enum Via {
    /// Straight to the target.
    Direct,
    /// Through a plain forwarder that maps `forwarder` + N to `targets_port` + N (TCP),
    /// and `forwarder` to `targets_port` (UDP).
    Forward {
        forwarder: SocketAddr,
        targets_port: u16,
    },
    /// Through a SOCKS5 server.
    Socks {
        proxy: SocketAddr,
        credentials: Option<(String, String)>,
        pipelined: bool,
        /// Sent in CONNECT requests instead of the target's address.
        target_name: Option<Host>,
    },
}

impl Via {
    fn describe(&self) -> String {
        match self {
            Via::Direct => "direct".into(),
            Via::Forward { forwarder, .. } => format!("forwarder {forwarder}"),
            Via::Socks {
                proxy,
                target_name: Some(name),
                ..
            } => format!("socks5 {proxy}, targets named {name}"),
            Via::Socks { proxy, .. } => format!("socks5 {proxy}"),
        }
    }

    /// Whether CONNECT requests carry the targets' name (`--target-name`).
    pub(crate) fn targets_by_name(&self) -> bool {
        matches!(
            self,
            Via::Socks {
                target_name: Some(_),
                ..
            }
        )
    }

    /// The case name of a TCP measurement (its sessions CONNECT to the targets): marked
    /// when they name the targets, so a side-by-side run keeps sessions to a name and to
    /// an address in separate rows (`bench peers` merges rows by case and metric).
    pub(crate) fn tcp_case(&self, case: impl Into<String>) -> String {
        let case = case.into();
        if self.targets_by_name() {
            format!("{case} by name")
        } else {
            case
        }
    }

    fn from_common(c: &Common) -> anyhow::Result<Via> {
        if c.direct {
            return Ok(Via::Direct);
        }
        if let Some(forwarder) = c.forward {
            if !forwarder.ip().is_loopback() {
                bail!("--forward {forwarder}: the forwarder must be on loopback");
            }
            if forwarder.port() == 0 || forwarder.port().checked_add(TARGETS - 1).is_none() {
                bail!("--forward {forwarder}: the forwarder needs ports {TARGETS} in a row from there");
            }
            let targets_port = c
                .targets_port
                .ok_or_else(|| anyhow!("--forward needs --targets-port"))?;
            return Ok(Via::Forward {
                forwarder,
                targets_port,
            });
        }
        let raw = c
            .proxy
            .as_deref()
            .ok_or_else(|| anyhow!("give --proxy ADDR, --forward ADDR or --direct"))?;
        let (proxy, url_creds) = parse_proxy(raw)?;
        let credentials = match (&c.user, &c.pass) {
            (Some(u), Some(p)) => Some((u.clone(), p.clone())),
            _ => url_creds,
        };
        Ok(Via::Socks {
            proxy,
            credentials,
            pipelined: c.pipelined,
            target_name: c
                .target_name
                .as_deref()
                .map(checked_target_name)
                .transpose()?,
        })
    }
}

/// Checks a `--target-name`: it must resolve to 127.0.0.1 and nothing else here (the proxy
/// is on this machine, so it resolves the same way). A name that also gives `::1`, as
/// `localhost` does on many systems, would have every proxy try `::1` first, where no
/// target listens, and pay a refused connect per session.
fn checked_target_name(name: &str) -> anyhow::Result<Host> {
    use std::net::ToSocketAddrs;
    let host = Host::new(name).map_err(|e| anyhow!("--target-name {name}: {e}"))?;
    let ips: Vec<IpAddr> = (name, 0)
        .to_socket_addrs()
        .with_context(|| format!("--target-name {name}: cannot resolve it"))?
        .map(|a| a.ip())
        .collect();
    if ips.is_empty() || ips.iter().any(|ip| *ip != IpAddr::V4(Ipv4Addr::LOCALHOST)) {
        bail!(
            "--target-name {name}: resolves to {ips:?}; it must resolve to 127.0.0.1 only \
             (the targets listen there; an entry in /etc/hosts makes such a name)"
        );
    }
    Ok(host)
}

/// Parses `HOST:PORT` or `socks5://[USER:PASS@]HOST:PORT`. The proxy must be on loopback:
/// the targets listen on 127.0.0.1 inside this process, so nothing else could reach them.
fn parse_proxy(raw: &str) -> anyhow::Result<(SocketAddr, Option<(String, String)>)> {
    let rest = raw
        .strip_prefix("socks5://")
        .or_else(|| raw.strip_prefix("socks5h://"))
        .unwrap_or(raw);
    let (creds, hostport) = match rest.rsplit_once('@') {
        Some((userinfo, hp)) => {
            let (u, p) = userinfo
                .split_once(':')
                .ok_or_else(|| anyhow!("--proxy {raw}: credentials must be USER:PASS"))?;
            (Some((u.to_string(), p.to_string())), hp)
        }
        None => (None, rest),
    };
    let hostport = hostport.trim_end_matches('/');
    let addr: SocketAddr = match hostport.parse() {
        Ok(a) => a,
        Err(_) => {
            let (host, port) = hostport
                .rsplit_once(':')
                .ok_or_else(|| anyhow!("--proxy {raw}: expected HOST:PORT"))?;
            let port: u16 = port
                .parse()
                .with_context(|| format!("--proxy {raw}: bad port"))?;
            if host != "localhost" {
                bail!("--proxy {raw}: give an IP address (or localhost)");
            }
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
        }
    };
    if !addr.ip().is_loopback() {
        bail!(
            "--proxy {raw}: the proxy must be on loopback (the targets listen on 127.0.0.1 \
             inside this process)"
        );
    }
    Ok((addr, creds))
}

/// Everything a scenario needs: the targets and the way to them.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub(crate) via: Via,
    pub(crate) targets: Arc<Targets>,
    pub(crate) timeout: Duration,
}

impl Ctx {
    async fn new(common: &Common) -> anyhow::Result<Ctx> {
        Ok(Ctx {
            via: Via::from_common(common)?,
            targets: Arc::new(Targets::start(common.targets_port).await?),
            timeout: common.timeout,
        })
    }

    /// Opens a tunnel to `target` (or a direct connection), with the handshake done and a
    /// success reply received. Fails on any failure reply, with its REP code.
    pub(crate) async fn dial(&self, target: SocketAddr) -> anyhow::Result<TcpStream> {
        let (stream, reply) = self.dial_command(Command::CONNECT, target).await?;
        let _ = reply;
        Ok(stream)
    }

    /// Opens a connection and, through a proxy, runs one handshake for `command`.
    pub(crate) async fn dial_command(
        &self,
        command: Command,
        dst: SocketAddr,
    ) -> anyhow::Result<(TcpStream, Option<Reply>)> {
        let t = self.timeout;
        match &self.via {
            Via::Direct => {
                let s = bounded(t, "connect to the target", TcpStream::connect(dst)).await?;
                s.set_nodelay(true)?;
                Ok((s, None))
            }
            Via::Forward {
                forwarder,
                targets_port,
            } => {
                if command != Command::CONNECT {
                    bail!("a plain forwarder carries only TCP connections and UDP datagrams (no {command:?})");
                }
                let addr = forwarded(*forwarder, *targets_port, dst)?;
                let s = bounded(t, "connect to the forwarder", TcpStream::connect(addr)).await?;
                s.set_nodelay(true)?;
                Ok((s, None))
            }
            Via::Socks {
                proxy,
                credentials,
                pipelined,
                target_name,
            } => {
                let mut s = bounded(t, "connect to the proxy", TcpStream::connect(*proxy)).await?;
                s.set_nodelay(true)?;
                let creds = credentials.as_ref().map(|(u, p)| UserPassRequest {
                    username: u.as_bytes().to_vec(),
                    password: Password::new(p.as_bytes()),
                });
                let dst = match target_name {
                    Some(name) if command == Command::CONNECT => {
                        Addr::Domain(name.clone(), dst.port())
                    }
                    _ => Addr::Ip(dst),
                };
                let request = Request { command, dst };
                let reply = bounded(
                    t,
                    "SOCKS handshake",
                    handshake(&mut s, request, creds, *pipelined),
                )
                .await?;
                Ok((s, Some(reply)))
            }
        }
    }
}

/// Drives `ClientHandshake` over `s` until the reply; a failure reply is an error.
async fn handshake(
    s: &mut TcpStream,
    request: Request,
    creds: Option<UserPassRequest>,
    pipelined: bool,
) -> anyhow::Result<Reply> {
    let command = request.command;
    let mut hs = ClientHandshake::new(request, creds).pipelined(pipelined);
    let mut out = BytesMut::with_capacity(64);
    let mut input = BytesMut::with_capacity(64);
    hs.start(&mut out);
    loop {
        if !out.is_empty() {
            s.write_all(&out).await.context("writing the handshake")?;
            out.clear();
        }
        match hs
            .feed(&mut input, &mut out)
            .context("SOCKS handshake failed")?
        {
            ClientEvent::Reply(reply) => {
                if reply.rep != Rep::SUCCEEDED {
                    bail!(
                        "the proxy refused {command}: REP {:#04x} ({})",
                        reply.rep.0,
                        reply.rep
                    );
                }
                // The targets speak only after the client has, so nothing may follow
                // the reply: a byte here would be one the count could not explain.
                if !input.is_empty() {
                    bail!("{} unexpected bytes after the SOCKS reply", input.len());
                }
                return Ok(reply);
            }
            ClientEvent::NeedMore => {
                if !out.is_empty() {
                    continue;
                }
                let n = s
                    .read_buf(&mut input)
                    .await
                    .context("reading the handshake")?;
                if n == 0 {
                    bail!("the proxy closed the connection during the handshake");
                }
            }
        }
    }
}

/// Awaits `fut` for at most `limit`, naming the step when it takes longer.
pub(crate) async fn bounded<T, E>(
    limit: Duration,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> anyhow::Result<T>
where
    E: Into<anyhow::Error>,
{
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.into().context(what.to_string())),
        Err(_) => bail!("{what}: no progress within {limit:?}"),
    }
}

/// What a target reports about one stream, delivered in-process so that both ends of every
/// byte count can be compared.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StreamReport {
    pub(crate) bytes: u64,
    /// When the sink saw EOF, or the source finished writing.
    pub(crate) at: Instant,
}

/// Stream id → where to deliver its report.
#[derive(Default)]
pub(crate) struct Registry {
    waiting: Mutex<HashMap<u64, oneshot::Sender<StreamReport>>>,
    next: std::sync::atomic::AtomicU64,
}

impl Registry {
    /// A fresh id and the receiver of its report.
    pub(crate) fn expect(&self) -> (u64, oneshot::Receiver<StreamReport>) {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        (id, rx)
    }

    fn deliver(&self, id: u64, report: StreamReport) {
        let tx = self
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        if let Some(tx) = tx {
            let _ = tx.send(report);
        }
    }
}

/// The loopback targets, one listener per role, all in this process.
pub(crate) struct Targets {
    /// Reads an 8-byte stream id, then counts bytes until EOF.
    pub(crate) sink: SocketAddr,
    /// Reads an 8-byte stream id and a 8-byte duration in ms and a byte budget, then writes
    /// until either runs out and closes.
    pub(crate) source: SocketAddr,
    /// Echoes everything back, with a 16 KiB buffer.
    pub(crate) echo: SocketAddr,
    /// Echoes 32 bytes once, then closes.
    pub(crate) echo_once: SocketAddr,
    /// Echoes with a 64-byte buffer allocated only while data is pending, so thousands of
    /// idle tunnels cost this process almost nothing beyond its sockets.
    pub(crate) idle_echo: SocketAddr,
    /// Echoes each datagram to its sender.
    pub(crate) udp_echo: SocketAddr,
    pub(crate) registry: Arc<Registry>,
}

const LOOPBACK: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

/// A loopback UDP socket for the generator's own ends (the client and the echo target),
/// with buffers large enough that neither drops datagrams while this one thread is busy
/// with the other: with the default ~200 KiB, the `--rate` mode lost a third of its
/// datagrams at 150k/s even without a proxy (UdpRcvbufErrors), which would have been
/// charged to the proxy.
pub(super) fn udp_socket(at: SocketAddr) -> anyhow::Result<UdpSocket> {
    const BUFFER: usize = 8 << 20;
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    // The kernel caps these at net.core.rmem_max / wmem_max; a smaller buffer only matters
    // at rates the generator reports as loss on the direct run too.
    let _ = socket.set_recv_buffer_size(BUFFER);
    let _ = socket.set_send_buffer_size(BUFFER);
    socket.set_nonblocking(true)?;
    socket
        .bind(&at.into())
        .with_context(|| format!("binding a UDP socket on {at}"))?;
    Ok(UdpSocket::from_std(socket.into())?)
}

/// Where a forwarder that maps `forwarder` + N to `targets_port` + N takes `dst`.
pub(super) fn forwarded(
    forwarder: SocketAddr,
    targets_port: u16,
    dst: SocketAddr,
) -> anyhow::Result<SocketAddr> {
    let port = dst
        .port()
        .checked_sub(targets_port)
        .filter(|n| *n < TARGETS)
        .and_then(|n| forwarder.port().checked_add(n))
        .ok_or_else(|| anyhow!("{dst} is not one of the targets a forwarder reaches"))?;
    Ok(SocketAddr::new(forwarder.ip(), port))
}

/// TCP targets: sink, source, echo, one-shot echo, idle echo.
pub(crate) const TARGETS: u16 = 5;

impl Targets {
    /// Starts every target: when `port` is given, the TCP ones on `port`..`port + 4` and
    /// the UDP echo on `port`.
    async fn start(port: Option<u16>) -> anyhow::Result<Targets> {
        let registry = Arc::new(Registry::default());
        let at = |n: u16| -> anyhow::Result<SocketAddr> {
            Ok(match port {
                None => LOOPBACK,
                Some(p) => SocketAddr::new(
                    LOOPBACK.ip(),
                    p.checked_add(n).ok_or_else(|| {
                        anyhow!("--targets-port {p}: no room for {TARGETS} ports")
                    })?,
                ),
            })
        };
        let bind = |n: u16| async move {
            let addr = at(n)?;
            target_listener(addr).with_context(|| format!("binding a target on {addr}"))
        };
        let sink = bind(0).await?;
        let source = bind(1).await?;
        let echo = bind(2).await?;
        let echo_once = bind(3).await?;
        let idle_echo = bind(4).await?;
        // UDP has its own port numbers: the echo takes the first one, beside the sink.
        let udp_echo = udp_socket(at(0)?)?;
        let t = Targets {
            sink: sink.local_addr()?,
            source: source.local_addr()?,
            echo: echo.local_addr()?,
            echo_once: echo_once.local_addr()?,
            idle_echo: idle_echo.local_addr()?,
            udp_echo: udp_echo.local_addr()?,
            registry: registry.clone(),
        };
        let r = registry.clone();
        tokio::spawn(accept_loop(sink, move |s| tcp::sink(s, r.clone())));
        tokio::spawn(accept_loop(source, move |s| {
            tcp::source(s, registry.clone())
        }));
        tokio::spawn(accept_loop(echo, tcp::echo));
        tokio::spawn(accept_loop(echo_once, tcp::echo_once));
        tokio::spawn(accept_loop(idle_echo, tcp::idle_echo));
        tokio::spawn(udp::echo(udp_echo));
        Ok(t)
    }
}

/// Connections a target lets wait to be accepted. Real servers queue far more than the
/// 128 of Rust's standard library (nginx 511, Go the system's maximum, 4096 here): with
/// 512 clients through a proxy that connects in bursts, a queue of 128 overflowed, the
/// kernel dropped the SYNs, and about 1 % of the sessions waited for the retransmission
/// a second later, which the run then measured instead of the proxy. The kernel caps this
/// at `net.core.somaxconn`.
const TARGET_BACKLOG: u32 = 4096;

fn target_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a port given with --targets-port can be reused at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(TARGET_BACKLOG)
}

/// Accepts until the listener fails for good; a failed accept (EMFILE) backs off briefly.
async fn accept_loop<F, Fut>(listener: TcpListener, handle: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                let _ = s.set_nodelay(true);
                tokio::spawn(handle(s));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// Nearest-rank percentile of sorted samples, in microseconds.
pub(crate) fn percentile_us(sorted: &[Duration], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let idx = rank.clamp(1, sorted.len()) - 1;
    Some(sorted[idx].as_secs_f64() * 1e6)
}

/// `len` bytes: `n` little endian, then a pattern that depends on `n`, so an echo that
/// comes back misplaced or altered is caught.
pub(crate) fn numbered(n: u64, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&n.to_le_bytes());
    v.extend((8..len).map(|i| (n as u8).wrapping_add(i as u8)));
    v
}

#[cfg(test)]
mod tests;
