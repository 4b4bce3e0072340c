//! `ferrosocks probe`: a conformance and capability report of any SOCKS5 server.
//!
//! Every check opens a fresh TCP connection, speaks raw RFC 1928/1929 bytes through
//! `ferrosocks-proto` (so it sees exactly what the server sends, not what a forgiving
//! client library makes of it), bounds every wait, and ends in one [`report::Check`]:
//! pass, fail, unsupported or n/a, with the observation that decided it. Targets (TCP and
//! UDP echoes, the BIND peer) run inside the probe, on this host, so the probe knows
//! what really arrived at the far end.
//!
//! | module | checks |
//! |---|---|
//! | [`methods`] | `methods.*`, `auth.*` |
//! | [`connect`] | `connect.*`, `malformed.*`, `pipelining` |
//! | [`bind`] | `bind.*` |
//! | [`udp`] | `udp.*` |
//!
//! Exit codes: 0 the probe ran (whatever it found), 1 the proxy is unreachable, 2 usage.

mod bind;
mod connect;
mod methods;
mod report;
mod targets;
mod udp;
mod wire;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferrosocks_proto::{Addr, Method, Password, UserPassRequest};

use ferrosocks_client::ProxyUrl;
use report::Report;
use wire::{secs, HandshakeFailure, Settings};

/// Arguments of `ferrosocks probe`.
#[derive(Debug, clap::Args)]
pub(crate) struct ProbeArgs {
    /// The proxy: socks5://[USER:PASS@]HOST:PORT (socks5h:// is the same here: the probe
    /// sends IP addresses and a name itself, check by check).
    #[arg(long, short = 'x', value_name = "URL")]
    pub(crate) proxy: ProxyUrl,
    /// Username for RFC 1929 (overrides one in the URL); enables the auth.* checks.
    #[arg(long, value_name = "U", requires = "pass")]
    pub(crate) user: Option<String>,
    /// Password for RFC 1929. Like a password in the URL, it shows in the process list:
    /// use a throwaway account on shared machines.
    #[arg(long, value_name = "P", requires = "user")]
    pub(crate) pass: Option<String>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Deadline for each single step (connect, each awaited message).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = crate::args::duration)]
    pub(crate) timeout: Duration,
    /// How long to watch for the server closing a connection after a failure reply (RFC
    /// 1928 allows up to 10 s; a close later than this is reported as "stays open").
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = crate::args::duration)]
    pub(crate) close_wait: Duration,
}

pub(crate) const EXAMPLES: &str = "Examples:
  ferrosocks probe --proxy socks5://127.0.0.1:1080
  ferrosocks probe --proxy socks5://127.0.0.1:1080 --user alice --pass secret --json
  ferrosocks probe -x socks5://alice:secret@[::1]:1080 --close-wait 10s

Each check uses a fresh connection and raw RFC 1928/1929 bytes, and ends as pass, fail,
unsupported (declined in a way the RFC allows: 05 FF, REP 07/08, dropped fragments) or
n/a (could not be run here, e.g. no credentials given). The targets (TCP and UDP echoes,
the BIND peer) run inside the probe on this host's loopback (or, for a remote proxy, on
the address this host reaches it from), so the proxy must be able to reach this host.

Exit codes: 0 the probe ran, whatever it found; 1 the proxy is unreachable; 2 bad arguments.";

/// Where the probe can run targets the proxy can reach, and how normal sessions
/// authenticate.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// An IPv4 address of this host the proxy can reach, for targets.
    pub(crate) v4: Option<IpAddr>,
    /// An IPv6 address of this host the proxy can reach, for targets.
    pub(crate) v6: Option<IpAddr>,
    /// The proxy runs on this host, so `localhost` means the same machine to both.
    pub(crate) same_host: bool,
    /// The method the server picks for a normal session, if any.
    pub(crate) session_method: Option<Method>,
    /// Why a normal session could not be negotiated, when the server timed out or broke
    /// the protocol (not when it merely wants other credentials).
    pub(crate) broken: Option<String>,
}

/// A payload that names its check and this run, so nothing stray is mistaken for it.
pub(crate) fn payload(tag: &str) -> Vec<u8> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("ferrosocks-probe {tag} {}-{nanos:x}", std::process::id()).into_bytes()
}

pub(crate) async fn run(args: ProbeArgs) -> ExitCode {
    let (user, pass) = match (&args.user, &args.pass) {
        (Some(u), Some(p)) => (Some(u.as_bytes().to_vec()), Some(p.as_bytes().to_vec())),
        _ => match args.proxy.credentials() {
            Some(c) => (
                Some(c.username().to_vec()),
                Some(c.password().expose().to_vec()),
            ),
            None => (None, None),
        },
    };
    let credentials = match (user, pass) {
        (Some(u), Some(p)) => {
            if u.is_empty() || u.len() > 255 || p.is_empty() || p.len() > 255 {
                eprintln!("ferrosocks probe: user and password must be 1 to 255 bytes (RFC 1929)");
                return ExitCode::from(2);
            }
            Some(UserPassRequest {
                username: u,
                password: Password::new(p),
            })
        }
        _ => None,
    };

    let proxy = match resolve(args.proxy.addr(), args.timeout).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "ferrosocks probe: proxy {} unreachable: {e}",
                args.proxy.addr()
            );
            return ExitCode::FAILURE;
        }
    };
    let mut settings = Settings {
        proxy,
        credentials,
        step: args.timeout,
        close_wait: args.close_wait,
        broken: None,
    };

    // Reachability decides exit code 1; after this, whatever happens is a finding.
    let local = match wire::Conn::open(&settings).await {
        Ok(conn) => conn.local_addr(),
        Err(e) => {
            eprintln!("ferrosocks probe: proxy {proxy} unreachable: {e}");
            return ExitCode::FAILURE;
        }
    };
    let plan = plan(&settings, local).await;
    settings.broken = plan.broken.clone();
    tracing::debug!(?plan, "probe plan");

    let mut checks = Vec::new();
    methods::run(&settings, &mut checks).await;
    connect::run(&settings, &plan, &mut checks).await;
    bind::run(&settings, &plan, &mut checks).await;
    udp::run(&settings, &plan, &mut checks).await;

    let report = Report::new(args.proxy.to_string(), proxy.to_string(), checks);
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_table());
        println!(
            "(step timeout {}, close wait {})",
            secs(settings.step),
            secs(settings.close_wait)
        );
    }
    ExitCode::SUCCESS
}

async fn resolve(addr: &Addr, timeout: Duration) -> Result<SocketAddr, String> {
    match addr {
        Addr::Ip(sa) => Ok(*sa),
        Addr::Domain(host, port) => {
            let lookup = tokio::net::lookup_host((host.as_str(), *port));
            match tokio::time::timeout(timeout, lookup).await {
                Err(_) => Err(format!(
                    "resolving {host} took longer than {}",
                    secs(timeout)
                )),
                Ok(Err(e)) => Err(format!("cannot resolve {host}: {e}")),
                Ok(Ok(mut addrs)) => addrs.next().ok_or_else(|| format!("{host} has no address")),
            }
        }
    }
}

/// Decides where targets live. A proxy on this host (loopback or one of this host's own
/// addresses) reaches the loopback targets; a remote one only this host's address in the
/// family it was reached with.
async fn plan(s: &Settings, local: Option<SocketAddr>) -> Plan {
    // Binding an address works (or finds it busy) only where it is this host's own.
    let is_local = |ip: IpAddr| match std::net::TcpListener::bind(SocketAddr::new(ip, 0)) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::AddrInUse,
    };
    let same_host = s.proxy.ip().is_loopback() || is_local(s.proxy.ip());
    let (v4, v6) = if same_host {
        // Loopback always has 127.0.0.1; [::1] only where IPv6 is on. "In use" (ephemeral
        // ports exhausted for a moment) still proves the address exists.
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        (
            Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            Some(v6).filter(|ip| is_local(*ip)),
        )
    } else {
        match local.map(|a| a.ip()) {
            Some(ip @ IpAddr::V4(_)) => (Some(ip), None),
            Some(ip @ IpAddr::V6(_)) => (None, Some(ip)),
            None => (None, None),
        }
    };
    let (session_method, broken) = match wire::authenticated(s).await {
        Ok((_, m)) => (Some(m), None),
        Err(f @ (HandshakeFailure::Wire(_) | HandshakeFailure::Unexpected(_))) => {
            (None, Some(f.to_string()))
        }
        Err(_) => (None, None),
    };
    Plan {
        v4,
        v6,
        same_host,
        session_method,
        broken,
    }
}
