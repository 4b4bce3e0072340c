//! `ferrosocks bind`: asks a SOCKS5 proxy to listen for one incoming connection (BIND),
//! prints where it listens, then relays the peer that connects to stdin/stdout.

use std::process::ExitCode;
use std::time::Duration;

use ferrosocks_client::{Addr, Socks5Listener};

use super::tunnel::{fail, relay_stdio, ProxyArgs};

/// Arguments of `ferrosocks bind`.
#[derive(Debug, clap::Args)]
pub(crate) struct BindArgs {
    #[command(flatten)]
    pub(crate) proxy: ProxyArgs,
    /// The peer expected to connect (DST of the BIND request). Servers may accept only
    /// that address; 0.0.0.0:0 means any.
    #[arg(value_name = "HOST:PORT", value_parser = super::tunnel::parse_target)]
    pub(crate) target: Addr,
    /// Print the addresses as JSON lines on stdout ({"announced":"IP:PORT"}, then
    /// {"peer":"IP:PORT"}) before the relayed data, instead of text on stderr.
    #[arg(long)]
    pub(crate) json: bool,
    /// Give up if no peer connects within this time. Bounded by default: a proxy that
    /// never sends its second reply would otherwise keep the command waiting for ever.
    #[arg(long, value_name = "DURATION", value_parser = crate::args::duration, default_value = "10m")]
    pub(crate) accept_timeout: Duration,
    /// At stdin's EOF send nothing, and end when the peer closes (see `connect --help`).
    #[arg(long)]
    pub(crate) no_half_close: bool,
}

pub(crate) const EXAMPLES: &str = "Examples:
  ferrosocks bind --proxy socks5://127.0.0.1:1080 0.0.0.0:0
  ferrosocks bind --proxy socks5://127.0.0.1:1080 --json --accept-timeout 30s 192.0.2.7:0

Output: the address the proxy listens on (its first reply) as a line on stderr,
'announced IP:PORT'; once a peer connected (the second reply), 'peer IP:PORT'. With --json
both go to stdout as JSON lines, {\"announced\":\"IP:PORT\"} and then {\"peer\":\"IP:PORT\"},
before any relayed data. Then stdin goes to the peer and the peer's bytes to stdout, with
the same half-close handling as `ferrosocks connect`.

Exit codes: 0 the peer connected and the relay ended normally; 1 the proxy refused (the
message names the REP code and its meaning), no peer came in time, or the network failed;
2 bad arguments.";

pub(crate) async fn run(args: BindArgs) -> ExitCode {
    let mut config = args.proxy.client_config();
    config.accept_timeout = Some(args.accept_timeout);
    let listener =
        match Socks5Listener::bind_with_config(&args.proxy.proxy, &args.target, &config).await {
            Ok(l) => l,
            Err(e) => return fail("bind", &format!("BIND for {}", args.target), &e),
        };
    announce(args.json, "announced", listener.announced_addr());
    let (stream, peer) = match listener.accept().await {
        Ok(accepted) => accepted,
        Err(e) => return fail("bind", "waiting for the peer", &e),
    };
    announce(args.json, "peer", &peer);
    match relay_stdio(stream, !args.no_half_close).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferrosocks bind: tunnel to {peer}: {e}");
            ExitCode::from(1)
        }
    }
}

fn announce(json: bool, key: &str, addr: &Addr) {
    if json {
        // The relay writes through tokio's handle, not this one: flush so the line is out
        // before any relayed byte.
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", serde_json::json!({ key: addr.to_string() }));
        let _ = out.flush();
    } else {
        eprintln!("{key} {}", super::printable(&addr.to_string()));
    }
}
