//! Command-line arguments: one binary, one subcommand per job.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config_file::Overrides;

#[derive(Debug, Parser)]
#[command(
    name = "ferrosocks",
    version,
    about = "SOCKS5 server (RFC 1928 + RFC 1929), client tools and benchmark",
    after_help = "Exit codes: 0 success, 1 runtime failure, 2 bad arguments or configuration."
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the SOCKS5 server.
    #[command(after_help = SERVE_EXAMPLES)]
    Serve(Box<ServeArgs>),
    /// Tunnel stdin/stdout to HOST:PORT through a SOCKS5 proxy (CONNECT); works as ssh's
    /// ProxyCommand.
    #[command(after_help = crate::cmd::connect::EXAMPLES)]
    Connect(Box<crate::cmd::connect::ConnectArgs>),
    /// Have a SOCKS5 proxy accept one connection (BIND): print where, then relay the peer.
    #[command(after_help = crate::cmd::bind::EXAMPLES)]
    Bind(Box<crate::cmd::bind::BindArgs>),
    /// Send stdin lines as datagrams through a SOCKS5 proxy (UDP ASSOCIATE); print replies.
    #[command(after_help = crate::cmd::udp::EXAMPLES)]
    Udp(Box<crate::cmd::udp::UdpArgs>),
    /// Report what a SOCKS5 server supports and where it departs from RFC 1928/1929.
    #[command(after_help = crate::cmd::probe::EXAMPLES)]
    Probe(Box<crate::cmd::probe::ProbeArgs>),
    /// Hash a password for the users file (Argon2id, PHC string).
    #[command(after_help = crate::cmd::passwd::EXAMPLES)]
    Passwd(crate::cmd::passwd::PasswdArgs),
    /// Check a configuration file and report the first error with its line and column.
    #[command(
        after_help = "Example:\n  ferrosocks check-config /etc/ferrosocks.toml\n\n\
        Exit codes: 0 valid, 2 invalid (the message names FILE:LINE:COLUMN)."
    )]
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
    },
    /// Load generator: any SOCKS5 server (or none) on loopback; `bench peers` runs
    /// Dante, microsocks, HAProxy, nginx, a bare UDP forwarder and ferrosocks side by side.
    Bench(Box<crate::cmd::bench::BenchArgs>),
}

const SERVE_EXAMPLES: &str = "Examples:
  ferrosocks serve                                   # 127.0.0.1:1080, no authentication
  ferrosocks serve --listen 127.0.0.1:1080 --listen [::1]:1080
  ferrosocks serve --user alice:secret               # username/password required
  ferrosocks serve --config ferrosocks.toml --access-log-format json
  curl --socks5-hostname 127.0.0.1:1080 https://example.com/

Signals: SIGTERM/SIGINT stop accepting and drain sessions (exit 0); SIGHUP reloads users,
methods and rules from the config file without dropping sessions.
Exit codes: 0 after a clean shutdown, 1 if a listener cannot be opened, 2 for bad
arguments or configuration.";

#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// TOML configuration file (see ferrosocks.example.toml); flags override it.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) overrides: Overrides,
}

/// Parses a duration argument (`10s`, `1h30m`, `250ms`) and refuses one longer than the
/// server accepts in its configuration (100 years), whose sum with the clock would
/// overflow and panic where a deadline is computed.
pub(crate) fn duration(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d > ferrosocks_server::config::MAX_DURATION {
        return Err("longer than the most allowed (100 years)".into());
    }
    Ok(d)
}
