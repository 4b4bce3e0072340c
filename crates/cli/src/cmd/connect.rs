//! `ferrosocks connect`: a stdin/stdout tunnel through a SOCKS5 proxy (CONNECT), usable as
//! OpenSSH's `ProxyCommand`.

use std::process::ExitCode;

use ferrosocks_client::{Addr, Socks5Stream};

use super::tunnel::{fail, relay_stdio, ProxyArgs};

/// Arguments of `ferrosocks connect`.
#[derive(Debug, clap::Args)]
pub(crate) struct ConnectArgs {
    #[command(flatten)]
    pub(crate) proxy: ProxyArgs,
    /// The target: IPv4:PORT, [IPv6]:PORT or NAME:PORT.
    #[arg(value_name = "HOST:PORT", value_parser = super::tunnel::parse_target)]
    pub(crate) target: Addr,
    /// At stdin's EOF send nothing, and end when the target closes. For proxies that
    /// drop the whole tunnel when the client half-closes (microsocks).
    #[arg(long)]
    pub(crate) no_half_close: bool,
}

pub(crate) const EXAMPLES: &str = "Examples:
  ferrosocks connect --proxy socks5h://127.0.0.1:1080 example.com:80
  printf 'HEAD / HTTP/1.0\\r\\n\\r\\n' | ferrosocks connect -x socks5://u:p@proxy [2001:db8::1]:80
  ssh -o ProxyCommand='ferrosocks connect --proxy socks5h://127.0.0.1:1080 %h:%p' user@host

stdin goes to the target and the target's bytes to stdout. At stdin's EOF the tunnel is
half-closed (the target sees EOF) and the answer is still read to its end; the command
exits once the target has closed and stdin is done (or the target no longer takes data).
Some proxies (microsocks) close the whole tunnel when the client half-closes, losing the
answer; --no-half-close keeps the tunnel open after stdin's EOF until the target closes.

Exit codes: 0 the tunnel ran and ended normally; 1 the proxy or the network failed (the
message names the REP code and its meaning when the proxy refused, e.g. \"connection
refused (REP 0x05)\"), or authentication failed; 2 bad arguments.";

pub(crate) async fn run(args: ConnectArgs) -> ExitCode {
    let config = args.proxy.client_config();
    let stream =
        match Socks5Stream::connect_with_config(&args.proxy.proxy, &args.target, &config).await {
            Ok(s) => s,
            Err(e) => return fail("connect", &format!("CONNECT to {}", args.target), &e),
        };
    match relay_stdio(stream, !args.no_half_close).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferrosocks connect: tunnel to {}: {e}", args.target);
            ExitCode::from(1)
        }
    }
}
