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
/// server accepts in its configuration (100 years): several of them are added to the
/// clock to make a deadline (the server's settings, `udp --wait`, `probe`'s steps, the
/// bench's durations), where a sum past the clock's range panics, and one bound for every
/// duration is simpler to state than which ones need it.
pub(crate) fn duration(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d > ferrosocks_server::config::MAX_DURATION {
        return Err("longer than the most allowed (100 years)".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// Counts that would measure nothing are bad arguments (exit 2), not failed runs.
    #[test]
    fn bench_counts_of_zero_are_argument_errors() {
        for args in [
            &["bench", "throughput", "--direct", "--streams", "0"][..],
            &["bench", "throughput", "--direct", "--streams", "1,1025"],
            &["bench", "connrate", "--direct", "--workers", "0"],
            &["bench", "udp", "--direct", "--window", "0"],
            &["bench", "udp", "--direct", "--rate", "0"],
            &["bench", "idle", "--direct", "--tunnels", "0"],
        ] {
            let mut argv = vec!["ferrosocks"];
            argv.extend_from_slice(args);
            let err = Cli::try_parse_from(&argv).unwrap_err();
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{args:?}"
            );
            assert_eq!(err.exit_code(), 2);
        }
        assert!(Cli::try_parse_from([
            "ferrosocks",
            "bench",
            "throughput",
            "--direct",
            "--streams",
            "1,8"
        ])
        .is_ok());
    }

    /// A proxy that never sends BIND's second reply cannot keep `bind` waiting for ever.
    #[test]
    fn bind_waits_for_its_peer_ten_minutes_unless_told() {
        let cli = Cli::try_parse_from([
            "ferrosocks",
            "bind",
            "--proxy",
            "socks5://127.0.0.1:1080",
            "127.0.0.1:0",
        ])
        .unwrap();
        let Command::Bind(args) = cli.command else {
            panic!("bind")
        };
        assert_eq!(args.accept_timeout, std::time::Duration::from_secs(600));
    }

    #[test]
    fn every_duration_argument_is_bounded_at_a_century() {
        assert_eq!(
            humantime::format_duration(ferrosocks_server::config::MAX_DURATION).to_string(),
            "100years",
            "the messages and the README say 100 years"
        );
        let connect = [
            "connect",
            "--proxy",
            "socks5://127.0.0.1:1080",
            "127.0.0.1:9",
        ];
        let udp = ["udp", "--proxy", "socks5://127.0.0.1:1080", "127.0.0.1:9"];
        let bind = ["bind", "--proxy", "socks5://127.0.0.1:1080", "127.0.0.1:0"];
        let probe = ["probe", "--proxy", "socks5://127.0.0.1:1080"];
        let cases: [(&[&str], &str); 20] = [
            (&["serve"], "--handshake-timeout"),
            (&["serve"], "--connect-timeout"),
            (&["serve"], "--bind-timeout"),
            (&["serve"], "--idle-timeout"),
            (&["serve"], "--udp-idle-timeout"),
            (&["serve"], "--drain-timeout"),
            (&["serve"], "--name-cache"),
            (&connect, "--connect-timeout"),
            (&connect, "--handshake-timeout"),
            (&udp, "--wait"),
            (&udp, "--connect-timeout"),
            (&bind, "--accept-timeout"),
            (&bind, "--handshake-timeout"),
            (&probe, "--timeout"),
            (&probe, "--close-wait"),
            (&["bench", "connrate", "--direct"], "--duration"),
            (&["bench", "connrate", "--direct"], "--timeout"),
            (&["bench", "idle", "--direct"], "--settle"),
            (&["bench", "peers"], "--duration"),
            (&["bench", "all", "--direct"], "--duration"),
        ];
        for (command, flag) in cases {
            let mut argv = vec!["ferrosocks"];
            argv.extend_from_slice(command);
            argv.extend([flag, "500000000000years"]);
            let err = Cli::try_parse_from(&argv).unwrap_err();
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{argv:?}: {err}"
            );
            assert!(err.to_string().contains("100 years"), "{argv:?}: {err}");
            *argv.last_mut().unwrap() = "100years";
            if let Err(e) = Cli::try_parse_from(&argv) {
                panic!("{argv:?}: {e}");
            }
        }
    }
}
