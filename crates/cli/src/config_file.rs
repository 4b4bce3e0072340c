//! The TOML configuration file and command-line overrides, turned into a validated
//! `ferrosocks_server::Config`. Every error carries the line and column it points at.

use std::net::{IpAddr, SocketAddr};
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ferrosocks_proto::Command;
use ferrosocks_server::{
    AccessLog, Action, AuthMethod, BusyPoll, Cidr, Config, ConfigError, Limits, RelayMode, Rule,
    Rules, Sink, TargetPattern, Timeouts, Users,
};
use serde::{Deserialize, Deserializer};
use toml::Spanned;

/// A value parsed with `FromStr`, so a bad value is reported by serde with its position.
#[derive(Debug, Clone)]
pub(crate) struct Parsed<T>(pub(crate) T);

impl<'de, T> Deserialize<'de> for Parsed<T>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map(Parsed).map_err(serde::de::Error::custom)
    }
}

/// `busy_poll`: `"auto"` or a duration (`"50us"`, `"0"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BusyPollSetting(pub(crate) BusyPoll);

impl FromStr for BusyPollSetting {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(BusyPollSetting(BusyPoll::Auto));
        }
        humantime::parse_duration(s)
            .map(|d| BusyPollSetting(BusyPoll::Window(d)))
            .map_err(|e| {
                format!("busy_poll {s:?}: {e} (expected \"auto\" or a duration such as \"50us\")")
            })
    }
}

/// `workers`: how many threads run the server's sessions (the async runtime's workers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Workers {
    /// One fewer than the CPUs this process may run on, and at least one (see
    /// [`Workers::count`]).
    #[default]
    Auto,
    /// Exactly this many.
    Count(std::num::NonZeroUsize),
}

/// More worker threads than this is a typo, not a machine.
const MAX_WORKERS: usize = 1024;

impl Workers {
    /// The number of worker threads, given the CPUs this process may run on.
    ///
    /// `auto` leaves one CPU to the rest of the machine: the kernel's network work, which
    /// runs on the sending core, and the programs the proxy serves when they share the
    /// machine. Why one fewer rather than one per CPU: one worker is also what turns
    /// busy-polling on (`busy_poll = "auto"`), and on the two-CPU benchmark machine, with
    /// the load generator unpinned beside the server, one worker beat two in every case
    /// measured (README, Performance).
    pub(crate) fn count(self, cpus: usize) -> usize {
        match self {
            Workers::Auto => cpus.saturating_sub(1).max(1),
            Workers::Count(n) => n.get(),
        }
    }
}

impl FromStr for Workers {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(Workers::Auto);
        }
        let expected = format!("(expected \"auto\" or a number from 1 to {MAX_WORKERS})");
        match s.parse::<usize>() {
            Ok(n @ 1..=MAX_WORKERS) => Ok(Workers::Count(
                std::num::NonZeroUsize::new(n).expect("n is at least 1"),
            )),
            _ => Err(format!("workers {s:?} {expected}")),
        }
    }
}

impl<'de> Deserialize<'de> for Workers {
    /// A TOML integer or a string (`"auto"`, or digits).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(i64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Count(n) => n.to_string().parse(),
            Raw::Text(s) => s.parse(),
        }
        .map_err(serde::de::Error::custom)
    }
}

/// `local_notsent_lowat`: a number of bytes (a TOML integer or a string of digits), or
/// `"system"` (or 0, which is what the kernel takes for it) for the system's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NotsentLowatSetting(pub(crate) Option<u32>);

/// Larger limits than this are no limit in practice (send buffers are a few MiB).
const MAX_NOTSENT_LOWAT: u64 = 64 << 20;

impl NotsentLowatSetting {
    fn bytes(n: i64) -> Result<Self, String> {
        match u64::try_from(n) {
            Ok(0) => Ok(NotsentLowatSetting(None)),
            Ok(b @ 1..=MAX_NOTSENT_LOWAT) => Ok(NotsentLowatSetting(Some(b as u32))),
            _ => Err(format!(
                "local_notsent_lowat {n} is out of range (1 to {MAX_NOTSENT_LOWAT} bytes, or 0 or \"system\" for the system's default)"
            )),
        }
    }
}

impl FromStr for NotsentLowatSetting {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("system") {
            return Ok(NotsentLowatSetting(None));
        }
        let n = s.parse::<i64>().map_err(|_| {
            format!("local_notsent_lowat {s:?}: expected a number of bytes or \"system\"")
        })?;
        NotsentLowatSetting::bytes(n)
    }
}

impl<'de> Deserialize<'de> for NotsentLowatSetting {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(i64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(n) => NotsentLowatSetting::bytes(n),
            Raw::Text(s) => s.parse(),
        }
        .map_err(serde::de::Error::custom)
    }
}

/// A port range written `"40000-40100"` or a single port `"40000"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PortRange(pub(crate) RangeInclusive<u16>);

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a port or a port range like \"40000-40100\"");
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        let a: u16 = a.trim().parse().map_err(|_| bad())?;
        let b: u16 = b.trim().parse().map_err(|_| bad())?;
        if a > b {
            return Err(format!("{s:?}: the range is empty (start is above end)"));
        }
        Ok(PortRange(a..=b))
    }
}

/// A command name in a rule.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CommandName(pub(crate) Command);

impl FromStr for CommandName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "connect" => Ok(CommandName(Command::CONNECT)),
            "bind" => Ok(CommandName(Command::BIND)),
            "udp" | "udpassociate" | "udp_associate" => Ok(CommandName(Command::UDP_ASSOCIATE)),
            other => Err(format!(
                "unknown command {other:?} (expected connect, bind or udp)"
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default, rename = "rule")]
    rules: Vec<Spanned<RawRule>>,
    #[serde(default)]
    log: RawLog,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<Vec<Spanned<SocketAddr>>>,
    external_address: Option<IpAddr>,
    udp_port_range: Option<Parsed<PortRange>>,
    allow_open_proxy: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    handshake_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    bind_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    idle_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    udp_idle_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    drain_timeout: Option<Duration>,
    max_connections: Option<usize>,
    max_handshakes: Option<usize>,
    max_udp_associations: Option<usize>,
    relay: Option<Parsed<RelayMode>>,
    local_congestion: Option<Spanned<String>>,
    local_notsent_lowat: Option<NotsentLowatSetting>,
    busy_poll: Option<Parsed<BusyPollSetting>>,
    #[serde(default, with = "humantime_serde")]
    name_cache: Option<Duration>,
    workers: Option<Workers>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    methods: Option<Spanned<Vec<Parsed<AuthMethod>>>>,
    users: Option<Vec<Spanned<String>>>,
    users_file: Option<Spanned<PathBuf>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    action: Parsed<ActionName>,
    #[serde(default)]
    commands: Vec<Parsed<CommandName>>,
    #[serde(default)]
    from: Vec<Parsed<Cidr>>,
    #[serde(default)]
    to: Vec<Parsed<TargetPattern>>,
    ports: Option<Parsed<PortRange>>,
    #[serde(default)]
    users: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
struct ActionName(Action);

impl FromStr for ActionName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "allow" | "pass" => Ok(ActionName(Action::Allow)),
            "deny" | "block" => Ok(ActionName(Action::Deny)),
            other => Err(format!(
                "unknown action {other:?} (expected \"allow\" or \"deny\")"
            )),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: Option<String>,
    format: Option<LogFormat>,
    access: Option<String>,
    access_format: Option<LogFormat>,
}

/// Command-line settings that override the file.
#[derive(Debug, Default, Clone, clap::Args)]
pub(crate) struct Overrides {
    /// Address to listen on (repeatable; replaces the file's list). Default 127.0.0.1:1080.
    #[arg(long = "listen", short = 'l', value_name = "ADDR")]
    pub(crate) listen: Vec<SocketAddr>,
    /// A user for username/password authentication (repeatable; adds to the file's users).
    #[arg(long = "user", short = 'u', value_name = "NAME:PASS")]
    pub(crate) users: Vec<String>,
    /// A users file: one NAME:PASSWORD per line, # comments.
    #[arg(long, value_name = "FILE")]
    pub(crate) users_file: Option<PathBuf>,
    /// Authentication methods offered, most preferred first: none, userpass.
    /// Default: userpass when users are configured, none otherwise.
    #[arg(long = "auth", value_name = "METHOD", value_delimiter = ',')]
    pub(crate) auth: Vec<AuthMethod>,
    /// IP address announced in BIND and UDP ASSOCIATE replies (a server behind NAT).
    #[arg(long, value_name = "IP")]
    pub(crate) external_address: Option<IpAddr>,
    /// Ports for UDP relay sockets, e.g. 40000-40100.
    #[arg(long, value_name = "LOW-HIGH")]
    pub(crate) udp_port_range: Option<PortRange>,
    /// Serve without authentication on a non-loopback address (an open proxy).
    #[arg(long)]
    pub(crate) allow_open_proxy: bool,
    /// Deadline for greeting, authentication and request [default: 10s].
    #[arg(long, value_parser = crate::args::duration, value_name = "DURATION")]
    pub(crate) handshake_timeout: Option<Duration>,
    /// Deadline for resolving and connecting to a target [default: 10s].
    #[arg(long, value_parser = crate::args::duration, value_name = "DURATION")]
    pub(crate) connect_timeout: Option<Duration>,
    /// How long BIND waits for the incoming connection [default: 60s].
    #[arg(long, value_parser = crate::args::duration, value_name = "DURATION")]
    pub(crate) bind_timeout: Option<Duration>,
    /// Close a tunnel after this long without traffic [default: 2h].
    #[arg(long, value_parser = crate::args::duration, value_name = "DURATION")]
    pub(crate) idle_timeout: Option<Duration>,
    /// End a UDP association after this long without datagrams [default: 5m].
    #[arg(long, value_parser = crate::args::duration, value_name = "DURATION")]
    pub(crate) udp_idle_timeout: Option<Duration>,
    /// On SIGTERM/SIGINT, how long sessions may drain [default: 30s].
    #[arg(long, value_parser = crate::args::duration, value_name = "DURATION")]
    pub(crate) drain_timeout: Option<Duration>,
    /// Client connections at once [default: 16384].
    #[arg(long, value_name = "N")]
    pub(crate) max_connections: Option<usize>,
    /// Connections still in their handshake at once [default: 1024].
    #[arg(long, value_name = "N")]
    pub(crate) max_handshakes: Option<usize>,
    /// UDP associations at once [default: 1024].
    #[arg(long, value_name = "N")]
    pub(crate) max_udp_associations: Option<usize>,
    /// How tunnels move bytes: splice (zero-copy for bulk data, Linux) or copy (portable)
    /// [default: splice].
    #[arg(long, value_name = "splice|copy")]
    pub(crate) relay: Option<RelayMode>,
    /// TCP congestion control for tunnel sockets whose peer is on this machine (loopback),
    /// or "system" to keep the system default everywhere [default: cubic].
    #[arg(long, value_name = "NAME|system")]
    pub(crate) local_congestion: Option<String>,
    /// Unsent bytes at which a tunnel socket whose peer is on this machine (loopback)
    /// stops taking the relay's writes (TCP_NOTSENT_LOWAT), so they leave from the relay's
    /// own core; "system" or 0 keeps the system default [default: 16384].
    #[arg(long, value_name = "BYTES|system")]
    pub(crate) local_notsent_lowat: Option<NotsentLowatSetting>,
    /// After a tunnel or UDP association moves data, poll this long for more without
    /// sleeping (saves a wake-up per round trip; costs CPU); "0" never; "auto" 50us when
    /// the server runs one worker thread (see --workers), else off [default: auto].
    #[arg(long, value_name = "auto|DURATION")]
    pub(crate) busy_poll: Option<BusyPollSetting>,
    /// Reuse a name the server resolved (a CONNECT or BIND target, a UDP destination) for
    /// this long before looking it up again; "0" looks up every time [default: 30s].
    #[arg(long, value_parser = crate::args::duration, value_name = "DURATION")]
    pub(crate) name_cache: Option<Duration>,
    /// Threads that run the sessions; "auto" is one fewer than the CPUs this process may
    /// run on, at least one (one CPU free for the kernel and local clients; one worker is
    /// also what turns busy-polling on) [default: auto].
    #[arg(long, value_name = "auto|N")]
    pub(crate) workers: Option<Workers>,
    /// Diagnostic log level (error, warn, info, debug, trace) or a RUST_LOG-style filter.
    #[arg(long, value_name = "LEVEL")]
    pub(crate) log_level: Option<String>,
    /// Diagnostic log format (on stderr).
    #[arg(long, value_name = "FORMAT")]
    pub(crate) log_format: Option<LogFormat>,
    /// Where the access log goes: stdout, off, or a file path [default: stdout].
    #[arg(long, value_name = "stdout|off|PATH")]
    pub(crate) access_log: Option<String>,
    /// Access log format: one text line or one JSON object per session [default: text].
    #[arg(long, value_name = "FORMAT")]
    pub(crate) access_log_format: Option<LogFormat>,
}

/// Settings of the process that live outside the server's `Config`: diagnostic logging,
/// and the worker threads of the runtime the binary builds for the server.
#[derive(Debug, Clone, Default)]
pub(crate) struct ProcessSettings {
    pub(crate) level: Option<String>,
    pub(crate) format: LogFormat,
    pub(crate) workers: Workers,
}

/// A configuration problem, with the place it points at when it comes from a file.
#[derive(Debug)]
pub(crate) struct ConfigFileError {
    pub(crate) file: Option<PathBuf>,
    /// 1-based line and column.
    pub(crate) position: Option<(usize, usize)>,
    pub(crate) message: String,
    /// The offending line, for a caret display.
    pub(crate) snippet: Option<String>,
}

impl std::fmt::Display for ConfigFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.file, self.position) {
            (Some(file), Some((line, col))) => {
                write!(f, "{}:{line}:{col}: {}", file.display(), self.message)?
            }
            (Some(file), None) => write!(f, "{}: {}", file.display(), self.message)?,
            (None, _) => write!(f, "{}", self.message)?,
        }
        if let (Some(snippet), Some((line, col))) = (&self.snippet, self.position) {
            let gutter = line.to_string().len();
            write!(
                f,
                "\n{:gutter$} |\n{line} | {snippet}\n{:gutter$} | {:>col$}",
                "", "", "^"
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigFileError {}

struct Source<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    fn error(&self, span: Option<Range<usize>>, message: impl Into<String>) -> ConfigFileError {
        let position = span.map(|s| line_col(self.text, s.start));
        ConfigFileError {
            file: Some(self.path.to_owned()),
            position,
            message: message.into(),
            snippet: position
                .and_then(|(line, _)| self.text.lines().nth(line - 1).map(str::to_owned)),
        }
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

fn plain_error(message: impl Into<String>) -> ConfigFileError {
    ConfigFileError {
        file: None,
        position: None,
        message: message.into(),
        snippet: None,
    }
}

/// Whether loading a configuration opens its access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AccessLogOpen {
    /// Open it (creating the file if need be) and start its writer: the server at start.
    Yes,
    /// Check without opening or creating anything (`check-config`): a file that exists
    /// must not be a directory, a new one needs an existing directory.
    Check,
    /// Leave it: a reload keeps the running one. Opening would create the file, start a
    /// writer thread for nothing, and block on a FIFO that has no reader.
    No,
}

/// The access log's destination, resolved but not yet opened.
enum AccessTarget {
    Off,
    Stdout,
    File(String),
}

/// Where `check-config` can tell, without opening it, that `path` cannot be an access log.
fn check_access_log_path(path: &str) -> Result<(), String> {
    let p = Path::new(path);
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => Err(format!("access log {path} is a directory")),
        Ok(_) => Ok(()),
        Err(_) => {
            let dir = match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            if dir.is_dir() {
                Ok(())
            } else {
                Err(format!(
                    "cannot open access log {path}: no directory {}",
                    dir.display()
                ))
            }
        }
    }
}

/// Why a users file without users is refused when no other users exist and the methods are
/// left to their default: that default is then `none`, so an emptied file (or one caught
/// half-rewritten by a SIGHUP) silently let every client in without a password. A reload
/// that fails keeps the running users.
const NO_USERS: &str = "no users in it, and no others configured (the methods would default to \
                        \"none\": no authentication; set methods to say what you want)";

/// Reads the file (if any), applies the overrides, and validates the result.
pub(crate) fn load(
    path: Option<&Path>,
    cli: &Overrides,
    access_log: AccessLogOpen,
) -> Result<(Config, ProcessSettings), ConfigFileError> {
    let text = match path {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| plain_error(format!("cannot read config file {}: {e}", p.display())))?,
        None => String::new(),
    };
    let source = path.map(|p| Source {
        path: p,
        text: &text,
    });
    let raw: RawConfig = match &source {
        Some(src) => {
            toml::from_str(src.text).map_err(|e| src.error(e.span(), e.message().trim_end()))?
        }
        None => RawConfig::default(),
    };
    build(raw, source.as_ref(), cli, access_log)
}

fn build(
    raw: RawConfig,
    src: Option<&Source<'_>>,
    cli: &Overrides,
    open_access_log: AccessLogOpen,
) -> Result<(Config, ProcessSettings), ConfigFileError> {
    let at = |span: Option<Range<usize>>, msg: String| match src {
        Some(src) => src.error(span, msg),
        None => plain_error(msg),
    };
    let s = raw.server;
    let workers = s.workers;
    let defaults = Timeouts::default();
    let limits = Limits::default();

    let mut listen_spans = Vec::new();
    let listen: Vec<SocketAddr> = if !cli.listen.is_empty() {
        cli.listen.clone()
    } else if let Some(list) = s.listen {
        listen_spans = list.iter().map(|l| (*l.get_ref(), l.span())).collect();
        list.into_iter().map(Spanned::into_inner).collect()
    } else {
        Config::default().listen
    };

    let mut users = Users::new();
    let a = raw.auth;
    if let Some(file) = &a.users_file {
        let loaded = Users::load(file.get_ref()).map_err(|e| {
            at(
                Some(file.span()),
                format!("users file {}: {e}", file.get_ref().display()),
            )
        })?;
        users = loaded;
    }
    for entry in a.users.iter().flatten() {
        let (name, cred) = Users::parse_entry(entry.get_ref())
            .map_err(|e| at(Some(entry.span()), e.to_string()))?;
        users.insert(name, cred);
    }
    if let Some(file) = &cli.users_file {
        let loaded = Users::load(file)
            .map_err(|e| plain_error(format!("--users-file {}: {e}", file.display())))?;
        for (name, cred) in loaded.into_entries() {
            users.insert(name, cred);
        }
    }
    for entry in &cli.users {
        let (name, cred) =
            Users::parse_entry(entry).map_err(|e| plain_error(format!("--user: {e}")))?;
        users.insert(name, cred);
    }

    // Methods left to their default, with users expected from a file and none found there
    // or anywhere else: the default would be `none`.
    if users.is_empty() && cli.auth.is_empty() && a.methods.is_none() {
        if let Some(file) = &cli.users_file {
            return Err(plain_error(format!(
                "--users-file {}: {NO_USERS}",
                file.display()
            )));
        }
        if let Some(file) = &a.users_file {
            return Err(at(
                Some(file.span()),
                format!("users file {}: {NO_USERS}", file.get_ref().display()),
            ));
        }
    }
    let methods_span = a.methods.as_ref().map(|m| m.span());
    let auth_methods = if !cli.auth.is_empty() {
        cli.auth.clone()
    } else if let Some(m) = a.methods {
        m.into_inner().into_iter().map(|p| p.0).collect()
    } else if users.is_empty() {
        vec![AuthMethod::None]
    } else {
        // Configuring users means wanting them used: do not silently also admit anyone.
        vec![AuthMethod::UserPass]
    };

    let rules = Rules::new(
        raw.rules
            .into_iter()
            .map(|r| {
                let r = r.into_inner();
                Rule {
                    action: r.action.0 .0,
                    commands: r.commands.into_iter().map(|c| c.0 .0).collect(),
                    from: r.from.into_iter().map(|c| c.0).collect(),
                    to: r.to.into_iter().map(|t| t.0).collect(),
                    ports: r.ports.map(|p| p.0 .0),
                    users: r.users,
                }
            })
            .collect(),
    );

    let lg = raw.log;
    let access_format = cli
        .access_log_format
        .or(lg.access_format)
        .unwrap_or_default();
    let access_target = cli
        .access_log
        .clone()
        .or(lg.access)
        .unwrap_or_else(|| "stdout".into());
    let access_target = match access_target.as_str() {
        "off" | "none" => AccessTarget::Off,
        "stdout" | "-" => AccessTarget::Stdout,
        // Passed check-config and failed only when serve opened it.
        "" => {
            return Err(at(
                None,
                "access log: an empty path (\"stdout\", \"off\" or a file name)".into(),
            ))
        }
        path => AccessTarget::File(path.to_owned()),
    };

    let mut config = Config {
        listen,
        external_address: cli.external_address.or(s.external_address),
        udp_port_range: cli
            .udp_port_range
            .clone()
            .or(s.udp_port_range.map(|p| p.0))
            .map(|p| p.0),
        auth_methods,
        users,
        rules,
        timeouts: Timeouts {
            handshake: cli
                .handshake_timeout
                .or(s.handshake_timeout)
                .unwrap_or(defaults.handshake),
            connect: cli
                .connect_timeout
                .or(s.connect_timeout)
                .unwrap_or(defaults.connect),
            bind: cli.bind_timeout.or(s.bind_timeout).unwrap_or(defaults.bind),
            idle: cli.idle_timeout.or(s.idle_timeout).unwrap_or(defaults.idle),
            udp_idle: cli
                .udp_idle_timeout
                .or(s.udp_idle_timeout)
                .unwrap_or(defaults.udp_idle),
            drain: cli
                .drain_timeout
                .or(s.drain_timeout)
                .unwrap_or(defaults.drain),
        },
        limits: Limits {
            max_connections: cli
                .max_connections
                .or(s.max_connections)
                .unwrap_or(limits.max_connections),
            max_handshakes: cli
                .max_handshakes
                .or(s.max_handshakes)
                .unwrap_or(limits.max_handshakes),
            max_udp_associations: cli
                .max_udp_associations
                .or(s.max_udp_associations)
                .unwrap_or(limits.max_udp_associations),
        },
        allow_open_proxy: cli.allow_open_proxy || s.allow_open_proxy.unwrap_or(false),
        // Opened last, once everything else is valid (see below).
        access_log: AccessLog::Off,
        relay_mode: cli.relay.or(s.relay.map(|r| r.0)).unwrap_or_default(),
        local_congestion: match cli
            .local_congestion
            .clone()
            .or(s.local_congestion.as_ref().map(|n| n.get_ref().clone()))
        {
            Some(name) if name.eq_ignore_ascii_case("system") => None,
            Some(name) => Some(name),
            None => Config::default().local_congestion,
        },
        local_notsent_lowat: match cli.local_notsent_lowat.or(s.local_notsent_lowat) {
            Some(setting) => setting.0,
            None => Config::default().local_notsent_lowat,
        },
        busy_poll: cli
            .busy_poll
            .or(s.busy_poll.map(|b| b.0))
            .map(|b| b.0)
            .unwrap_or_default(),
        name_cache: cli
            .name_cache
            .or(s.name_cache)
            .unwrap_or(ferrosocks_server::config::DEFAULT_NAME_CACHE),
    };
    config.validate().map_err(|e| {
        let span = match &e {
            ConfigError::OpenProxy(addr) | ConfigError::OverlappingListen(_, addr) => listen_spans
                .iter()
                .rev()
                .find(|(a, _)| a == addr)
                .map(|(_, s)| s.clone()),
            ConfigError::UserPassWithoutUsers | ConfigError::NoAuthMethod => methods_span.clone(),
            ConfigError::BadCongestionName(_) if cli.local_congestion.is_none() => {
                s.local_congestion.as_ref().map(|n| n.span())
            }
            _ => None,
        };
        at(span, e.to_string())
    })?;
    // Last: a configuration rejected above must not leave a log file behind (or wait for a
    // FIFO's reader before saying what is wrong).
    let sink = match (access_target, open_access_log) {
        (_, AccessLogOpen::No)
        | (AccessTarget::Off, _)
        | (AccessTarget::Stdout, AccessLogOpen::Check) => None,
        (AccessTarget::File(path), AccessLogOpen::Check) => {
            check_access_log_path(&path).map_err(plain_error)?;
            None
        }
        (AccessTarget::Stdout, AccessLogOpen::Yes) => Some(Sink::stdout()),
        (AccessTarget::File(path), AccessLogOpen::Yes) => Some(
            Sink::file(&path)
                .map_err(|e| plain_error(format!("cannot open access log {path}: {e}")))?,
        ),
    };
    config.access_log = match (sink, access_format) {
        (None, _) => AccessLog::Off,
        (Some(s), LogFormat::Text) => AccessLog::Text(s),
        (Some(s), LogFormat::Json) => AccessLog::Json(s),
    };
    let log = ProcessSettings {
        level: cli.log_level.clone().or(lg.level),
        format: cli.log_format.or(lg.format).unwrap_or_default(),
        workers: cli.workers.or(workers).unwrap_or_default(),
    };
    Ok((config, log))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigFileError> {
        let path = Path::new("test.toml");
        let src = Source { path, text };
        let raw: RawConfig = toml::from_str(text).map_err(|e| src.error(e.span(), e.message()))?;
        build(raw, Some(&src), &Overrides::default(), AccessLogOpen::No).map(|(c, _)| c)
    }

    /// An empty users file is refused only where it would turn authentication off: no
    /// other users, methods left to their default.
    #[test]
    fn an_empty_users_file_is_refused_only_when_it_would_turn_authentication_off() {
        let file =
            std::env::temp_dir().join(format!("ferrosocks-empty-{}.txt", std::process::id()));
        std::fs::write(&file, "# nobody yet\n").unwrap();
        let with = |extra: &str| {
            parse(&format!(
                "[auth]\nusers_file = {:?}\n{extra}",
                file.display().to_string()
            ))
        };
        let err = with("").unwrap_err();
        assert!(err.message.contains("no users in it"), "{err}");
        let c = with("methods = [\"none\"]\n").unwrap();
        assert_eq!(c.auth_methods, vec![AuthMethod::None]);
        let c = with("users = [\"alice:pw\"]\n").unwrap();
        assert_eq!(c.auth_methods, vec![AuthMethod::UserPass]);
        let _ = std::fs::remove_file(&file);
    }

    #[test]
    fn example_file_is_valid() {
        let text = include_str!("../../../ferrosocks.example.toml");
        let config = parse(text).unwrap_or_else(|e| panic!("{e}"));
        assert!(!config.listen.is_empty());
    }

    #[test]
    fn bad_value_points_at_its_line_and_column() {
        let err =
            parse("[server]\nlisten = [\"127.0.0.1:1080\"]\nconnect_timeout = \"ten seconds\"\n")
                .unwrap_err();
        assert_eq!(err.position.map(|p| p.0), Some(3), "{err}");
        let err = parse("[[rule]]\naction = \"allow\"\nfrom = [\"10.0.0.0/99\"]\n").unwrap_err();
        assert_eq!(err.position.map(|p| p.0), Some(3), "{err}");
        assert!(err.to_string().contains("prefix length"), "{err}");
    }

    #[test]
    fn unknown_key_is_an_error() {
        let err = parse("[server]\nlisten_on = [\"127.0.0.1:1\"]\n").unwrap_err();
        assert_eq!(err.position.map(|p| p.0), Some(2), "{err}");
    }

    #[test]
    fn open_proxy_points_at_the_listen_entry() {
        let err = parse("[server]\nlisten = [\"127.0.0.1:1080\", \"0.0.0.0:1081\"]\n").unwrap_err();
        assert_eq!(err.position, Some((2, 29)), "{err}");
        assert!(err.message.contains("--allow-open-proxy"));
    }

    #[test]
    fn overlapping_listen_addresses_point_at_the_second() {
        let err = parse(
            "[server]\nlisten = [\"0.0.0.0:1080\", \"127.0.0.1:1080\"]\nallow_open_proxy = true\n",
        )
        .unwrap_err();
        assert_eq!(err.position, Some((2, 27)), "{err}");
        assert!(err.message.contains("overlap"), "{err}");
    }

    #[test]
    fn local_congestion_defaults_to_cubic_and_system_turns_it_off() {
        let c = parse("").unwrap();
        let default = cfg!(target_os = "linux").then_some("cubic");
        assert_eq!(c.local_congestion.as_deref(), default);
        let c = parse("[server]\nlocal_congestion = \"reno\"\n").unwrap();
        assert_eq!(c.local_congestion.as_deref(), Some("reno"));
        let c = parse("[server]\nlocal_congestion = \"system\"\n").unwrap();
        assert_eq!(c.local_congestion, None);
        let c = parse("[server]\nlocal_congestion = \"System\"\n").unwrap();
        assert_eq!(c.local_congestion, None);
        let err =
            parse("[server]\nrelay = \"splice\"\nlocal_congestion = \"cubic; rm\"\n").unwrap_err();
        assert_eq!(err.position.map(|p| p.0), Some(3), "{err}");
        assert!(err.message.contains("congestion control name"), "{err}");
    }

    #[test]
    fn local_notsent_lowat_defaults_to_16k_takes_bytes_and_system_turns_it_off() {
        let default = cfg!(target_os = "linux").then_some(16384);
        assert_eq!(parse("").unwrap().local_notsent_lowat, default);
        let c = parse("[server]\nlocal_notsent_lowat = 65536\n").unwrap();
        assert_eq!(c.local_notsent_lowat, Some(65536));
        let c = parse("[server]\nlocal_notsent_lowat = \"4096\"\n").unwrap();
        assert_eq!(c.local_notsent_lowat, Some(4096));
        for system in ["\"system\"", "\" System \"", "0", "\"0\""] {
            let c = parse(&format!("[server]\nlocal_notsent_lowat = {system}\n")).unwrap();
            assert_eq!(c.local_notsent_lowat, None, "{system}");
        }
        for bad in ["-1", "\"16k\"", "100000000"] {
            let err = parse(&format!(
                "[server]\nrelay = \"splice\"\nlocal_notsent_lowat = {bad}\n"
            ))
            .unwrap_err();
            assert_eq!(err.position.map(|p| p.0), Some(3), "{bad}: {err}");
            assert!(err.message.contains("\"system\""), "{bad}: {err}");
        }
    }

    fn workers_of(text: &str) -> Result<Workers, ConfigFileError> {
        let path = Path::new("test.toml");
        let src = Source { path, text };
        let raw: RawConfig = toml::from_str(text).map_err(|e| src.error(e.span(), e.message()))?;
        build(raw, Some(&src), &Overrides::default(), AccessLogOpen::No).map(|(_, p)| p.workers)
    }

    #[test]
    fn workers_is_auto_a_toml_integer_or_digits_and_auto_leaves_one_cpu() {
        let four = Workers::Count(std::num::NonZeroUsize::new(4).unwrap());
        assert_eq!(workers_of("").unwrap(), Workers::Auto);
        assert_eq!(
            workers_of("[server]\nworkers = \"auto\"\n").unwrap(),
            Workers::Auto
        );
        assert_eq!(workers_of("[server]\nworkers = 4\n").unwrap(), four);
        assert_eq!(workers_of("[server]\nworkers = \"4\"\n").unwrap(), four);
        for bad in ["0", "-2", "\"none\"", "1025", "2.5"] {
            let err = workers_of(&format!("[server]\nworkers = {bad}\n")).unwrap_err();
            assert_eq!(err.position.map(|p| p.0), Some(2), "{bad}: {err}");
        }
        let flag = Overrides {
            workers: Some(Workers::Auto),
            ..Overrides::default()
        };
        let text = "[server]\nworkers = 4\n";
        let raw: RawConfig = toml::from_str(text).unwrap();
        let (_, settings) = build(raw, None, &flag, AccessLogOpen::No).unwrap();
        assert_eq!(
            settings.workers,
            Workers::Auto,
            "the flag wins over the file"
        );
        assert_eq!(Workers::Auto.count(1), 1);
        assert_eq!(Workers::Auto.count(2), 1);
        assert_eq!(Workers::Auto.count(8), 7);
        assert_eq!(four.count(1), 4, "a number is taken as it is");
    }

    #[test]
    fn name_cache_defaults_to_thirty_seconds_and_zero_turns_it_off() {
        assert_eq!(parse("").unwrap().name_cache, Duration::from_secs(30));
        let c = parse("[server]\nname_cache = \"5m\"\n").unwrap();
        assert_eq!(c.name_cache, Duration::from_secs(300));
        let c = parse("[server]\nname_cache = \"0s\"\n").unwrap();
        assert_eq!(c.name_cache, Duration::ZERO);
        let err = parse("[server]\nname_cache = \"a while\"\n").unwrap_err();
        assert_eq!(err.position.map(|p| p.0), Some(2), "{err}");
        let flag = Overrides {
            name_cache: Some(Duration::ZERO),
            ..Overrides::default()
        };
        let raw: RawConfig = toml::from_str("[server]\nname_cache = \"1m\"\n").unwrap();
        let (c, _) = build(raw, None, &flag, AccessLogOpen::No).unwrap();
        assert_eq!(c.name_cache, Duration::ZERO, "the flag wins over the file");
    }

    #[test]
    fn busy_poll_defaults_to_auto_zero_turns_it_off_and_long_windows_are_refused() {
        assert_eq!(parse("").unwrap().busy_poll, BusyPoll::Auto);
        let c = parse("[server]\nbusy_poll = \"auto\"\n").unwrap();
        assert_eq!(c.busy_poll, BusyPoll::Auto);
        let c = parse("[server]\nbusy_poll = \"200us\"\n").unwrap();
        assert_eq!(c.busy_poll, BusyPoll::Window(Duration::from_micros(200)));
        let c = parse("[server]\nbusy_poll = \"0\"\n").unwrap();
        assert_eq!(c.busy_poll, BusyPoll::Window(Duration::ZERO));
        let err = parse("[server]\nbusy_poll = \"soon\"\n").unwrap_err();
        assert_eq!(err.position.map(|p| p.0), Some(2), "{err}");
        assert!(err.message.contains("\"auto\""), "{err}");
        let err = parse("[server]\nbusy_poll = \"2ms\"\n").unwrap_err();
        assert!(err.message.contains("busy_poll"), "{err}");
        assert!(err.message.contains("turns it off"), "{err}");
    }

    #[test]
    fn users_imply_userpass_and_durations_parse() {
        let c = parse("[auth]\nusers = [\"a:b\"]\n[server]\nidle_timeout = \"5m\"\n").unwrap();
        assert_eq!(c.auth_methods, vec![AuthMethod::UserPass]);
        assert_eq!(c.timeouts.idle, Duration::from_secs(300));
    }
}
