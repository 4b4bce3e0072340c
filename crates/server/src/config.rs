//! The validated server configuration. Parsing (TOML, command line) lives in the binary;
//! this type only holds values that already make sense together.

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::Duration;

use crate::access_log::AccessLog;
use crate::auth::{AuthMethod, Users};
use crate::busy_poll::{BusyPoll, MAX_BUSY_POLL};
use crate::relay::RelayMode;
use crate::rules::{Action, Rules};
use crate::tcp_tuning::{
    DEFAULT_LOCAL_CONGESTION, DEFAULT_LOCAL_NOTSENT_LOWAT, MAX_CONGESTION_NAME,
};

/// Deadlines, each documented with its default.
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// From accept to a complete request (greeting, authentication, request). Default 10 s.
    pub handshake: Duration,
    /// Resolving and connecting to a CONNECT target, all addresses together. Default 10 s.
    pub connect: Duration,
    /// How long a BIND waits for its peer. Default 60 s.
    pub bind: Duration,
    /// A tunnel with no byte in either direction for this long is closed. Default 2 h.
    pub idle: Duration,
    /// A UDP association with no datagram in either direction for this long ends (and its
    /// TCP connection is closed). Default 5 min.
    pub udp_idle: Duration,
    /// On shutdown, how long sessions may drain before the server exits anyway. Default 30 s.
    pub drain: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            handshake: Duration::from_secs(10),
            connect: Duration::from_secs(10),
            bind: Duration::from_secs(60),
            idle: Duration::from_secs(2 * 3600),
            udp_idle: Duration::from_secs(300),
            drain: Duration::from_secs(30),
        }
    }
}

/// Bounds on what clients can make the server hold.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open client connections at once; further clients wait in the kernel's backlog.
    /// Default 16384.
    pub max_connections: usize,
    /// Connections that have not finished their handshake (not yet authenticated) at once;
    /// further ones are closed at once. Default 1024.
    pub max_handshakes: usize,
    /// UDP associations at once; further UDP ASSOCIATE requests get REP `X'01'`.
    /// Default 1024.
    pub max_udp_associations: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 16_384,
            max_handshakes: 1024,
            max_udp_associations: 1024,
        }
    }
}

/// Everything the server needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Addresses to listen on. Default `127.0.0.1:1080`.
    pub listen: Vec<SocketAddr>,
    /// The IP address announced in BIND and UDP ASSOCIATE replies instead of the local
    /// one, for a server behind NAT. Default: none (announce the local address).
    pub external_address: Option<IpAddr>,
    /// Ports UDP relay sockets are bound in (for firewalls and containers). Default: any.
    pub udp_port_range: Option<RangeInclusive<u16>>,
    /// Methods offered, most preferred first. Default: `none`, or `userpass` when users
    /// are configured.
    pub auth_methods: Vec<AuthMethod>,
    /// Users for username/password authentication.
    pub users: Users,
    /// Allow/deny rules.
    pub rules: Rules,
    /// Deadlines.
    pub timeouts: Timeouts,
    /// Limits.
    pub limits: Limits,
    /// Serve without authentication on a non-loopback address without allow rules that
    /// restrict clients. Default false: such a configuration is refused.
    pub allow_open_proxy: bool,
    /// Where the per-session access log goes.
    pub access_log: AccessLog,
    /// How tunnels move bytes. Default: `splice` (zero-copy for bulk data) on Linux.
    pub relay_mode: RelayMode,
    /// TCP congestion control for tunnel sockets whose peer is on this machine
    /// (loopback); `None` keeps the system default. Default: `cubic`, because a pacing
    /// default such as BBR only costs timers on loopback (see [`crate::tcp_tuning`]).
    pub local_congestion: Option<String>,
    /// `TCP_NOTSENT_LOWAT` in bytes for tunnel sockets whose peer is on this machine;
    /// `None` keeps the system default. Default: 16 KiB, so that the relay's writes
    /// towards a slower local receiver leave from the relay's core rather than from the
    /// receiver's (see [`crate::tcp_tuning`]).
    pub local_notsent_lowat: Option<u32>,
    /// How long a tunnel or UDP association polls without sleeping after it moved data,
    /// so that a quick answer is picked up without a wake-up (see [`crate::busy_poll`]);
    /// a zero window turns it off. Default [`BusyPoll::Auto`]: 50 µs when the server runs
    /// on one worker thread (the binary's default on one or two CPUs), off otherwise. At
    /// most [`MAX_BUSY_POLL`].
    pub busy_poll: BusyPoll,
    /// How long a name the server resolved (a CONNECT or BIND target, a UDP destination)
    /// is reused before it is looked up again; zero looks up every time. Default 30 s
    /// (see [`DEFAULT_NAME_CACHE`]).
    pub name_cache: Duration,
}

/// How long resolved names are reused unless configured otherwise: a record that changes
/// is seen within this, and a client that opens many connections to one name pays one
/// lookup in this time (Java's default; curl keeps names 60 s).
pub const DEFAULT_NAME_CACHE: Duration = Duration::from_secs(30);

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 1080))],
            external_address: None,
            udp_port_range: None,
            auth_methods: vec![AuthMethod::None],
            users: Users::new(),
            rules: Rules::default(),
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            allow_open_proxy: false,
            access_log: AccessLog::Off,
            relay_mode: RelayMode::default(),
            local_congestion: cfg!(target_os = "linux")
                .then(|| DEFAULT_LOCAL_CONGESTION.to_owned()),
            local_notsent_lowat: cfg!(target_os = "linux").then_some(DEFAULT_LOCAL_NOTSENT_LOWAT),
            busy_poll: BusyPoll::Auto,
            name_cache: DEFAULT_NAME_CACHE,
        }
    }
}

/// A configuration that must not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Nothing to listen on.
    #[error("no listen address")]
    NoListenAddress,
    /// No authentication method.
    #[error("no authentication method is enabled")]
    NoAuthMethod,
    /// Username/password is offered but nobody can log in.
    #[error("username/password authentication is enabled but no users are configured (use --user NAME:PASS or a users file)")]
    UserPassWithoutUsers,
    /// An empty or reversed UDP port range.
    #[error("the UDP port range {0}-{1} is empty")]
    EmptyPortRange(u16, u16),
    /// A UDP port range that includes port 0.
    #[error(
        "the UDP port range {0}-{1} includes port 0 (binding it gives any port, outside the range)"
    )]
    PortZeroInRange(u16, u16),
    /// The configuration would be an open proxy reachable from other machines.
    #[error(
        "refusing to run an open proxy: {0} is not a loopback address, authentication \"none\" is enabled \
         and no allow rule restricts which clients may connect. Add users (--user NAME:PASS), \
         restrict clients with rules (an allow rule with `from`), or pass --allow-open-proxy \
         (config: server.allow_open_proxy = true) if an open proxy is really what you want"
    )]
    OpenProxy(SocketAddr),
    /// A congestion control name the kernel could never accept.
    #[error("local_congestion {0:?} is not a congestion control name (1 to 15 letters, digits, '_' or '-'; \"system\" keeps the default)")]
    BadCongestionName(String),
    /// A busy-poll window so long it would mostly burn CPU.
    #[error(
        "busy_poll {0:?} is longer than the most allowed ({MAX_BUSY_POLL:?}); \"0\" turns it off"
    )]
    BusyPollTooLong(Duration),
    /// A limit of zero (nothing could ever be served) or beyond what a semaphore holds.
    #[error("{setting} {value} is out of range: 1 to {MAX_LIMIT}")]
    LimitOutOfRange {
        /// The setting's name in the configuration file.
        setting: &'static str,
        /// What it was given.
        value: usize,
    },
    /// A timeout of zero, which would end every handshake, connect, BIND wait, tunnel or
    /// association at once.
    #[error("{0} must be longer than 0")]
    ZeroTimeout(&'static str),
    /// The same listen address twice, or a specific address beside the wildcard address of
    /// its family on the same port: the second cannot be bound.
    #[error("listen addresses {0} and {1} overlap (the second could not be bound)")]
    OverlappingListen(SocketAddr, SocketAddr),
    /// An IPv4-mapped IPv6 listen address, which an IPv6-only listener cannot bind.
    #[error("listen address {0} is an IPv4 address written as IPv6: write it as IPv4")]
    MappedListen(SocketAddr),
    /// A timeout or `name_cache` too long to add to the clock.
    #[error("{setting} {value:?} is longer than the most allowed (100 years)")]
    DurationTooLong {
        /// The setting's name in the configuration file.
        setting: &'static str,
        /// What it was given.
        value: Duration,
    },
}

/// The largest `max_connections`, `max_handshakes` or `max_udp_associations`: each is the
/// size of a semaphore, which holds at most this many permits (tokio panics beyond it).
pub const MAX_LIMIT: usize = tokio::sync::Semaphore::MAX_PERMITS;

/// The longest timeout or `name_cache` accepted: long enough to mean "never" (the
/// server's deadlines are the time now plus the setting, so a `"500000000000 years"`
/// would overflow the clock and end the session with a panic), short enough that the
/// sum always fits.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

impl Config {
    /// Checks what the settings' own types cannot: rules that span several settings, and
    /// bounds (durations, the busy-poll window, names). A server is only built from a
    /// configuration that passes.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.is_empty() {
            return Err(ConfigError::NoListenAddress);
        }
        if self.auth_methods.is_empty() {
            return Err(ConfigError::NoAuthMethod);
        }
        if self.auth_methods.contains(&AuthMethod::UserPass) && self.users.is_empty() {
            return Err(ConfigError::UserPassWithoutUsers);
        }
        if let Some(name) = &self.local_congestion {
            let well_formed = !name.is_empty()
                && name.len() <= MAX_CONGESTION_NAME
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !well_formed {
                return Err(ConfigError::BadCongestionName(name.clone()));
            }
        }
        let l = &self.limits;
        for (setting, value) in [
            ("max_connections", l.max_connections),
            ("max_handshakes", l.max_handshakes),
            ("max_udp_associations", l.max_udp_associations),
        ] {
            if value == 0 || value > MAX_LIMIT {
                return Err(ConfigError::LimitOutOfRange { setting, value });
            }
        }
        for (i, a) in self.listen.iter().enumerate() {
            // An IPv6 listener is IPv6-only, so a mapped IPv4 address cannot be bound.
            if let IpAddr::V6(v6) = a.ip() {
                if v6.to_ipv4_mapped().is_some() {
                    return Err(ConfigError::MappedListen(*a));
                }
            }
            if let Some(b) = self.listen[i + 1..].iter().find(|b| {
                // Port 0 asks for any free port: two such listeners never collide.
                a.port() != 0
                    && a.port() == b.port()
                    && a.is_ipv4() == b.is_ipv4()
                    && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
            }) {
                return Err(ConfigError::OverlappingListen(*a, *b));
            }
        }
        let t = &self.timeouts;
        // (setting, value, whether zero means something: the drain's "exit at once",
        // the cache's "look up every time")
        for (setting, value, zero_allowed) in [
            ("handshake_timeout", t.handshake, false),
            ("connect_timeout", t.connect, false),
            ("bind_timeout", t.bind, false),
            ("idle_timeout", t.idle, false),
            ("udp_idle_timeout", t.udp_idle, false),
            ("drain_timeout", t.drain, true),
            ("name_cache", self.name_cache, true),
        ] {
            if value.is_zero() && !zero_allowed {
                return Err(ConfigError::ZeroTimeout(setting));
            }
            if value > MAX_DURATION {
                return Err(ConfigError::DurationTooLong { setting, value });
            }
        }
        if let BusyPoll::Window(window) = self.busy_poll {
            if window > MAX_BUSY_POLL {
                return Err(ConfigError::BusyPollTooLong(window));
            }
        }
        if let Some(range) = &self.udp_port_range {
            if range.is_empty() {
                return Err(ConfigError::EmptyPortRange(*range.start(), *range.end()));
            }
            // Port 0 asks the kernel for any port, which then lies outside the range.
            if *range.start() == 0 {
                return Err(ConfigError::PortZeroInRange(*range.start(), *range.end()));
            }
        }
        if !self.allow_open_proxy
            && self.auth_methods.contains(&AuthMethod::None)
            && !self.rules_restrict_clients()
        {
            if let Some(addr) = self
                .listen
                .iter()
                .find(|a| !a.ip().to_canonical().is_loopback())
            {
                return Err(ConfigError::OpenProxy(*addr));
            }
        }
        Ok(())
    }

    /// Whether every allow rule names the clients it admits (`from`), so that an unknown
    /// client falls through to a deny.
    fn rules_restrict_clients(&self) -> bool {
        !self.rules.is_empty()
            && self
                .rules
                .rules()
                .iter()
                .filter(|r| r.action == Action::Allow)
                .all(|r| !r.from.is_empty() || !r.users.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{Cidr, Rule};

    #[test]
    fn default_config_is_valid_and_loopback() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.listen, vec!["127.0.0.1:1080".parse().unwrap()]);
    }

    #[test]
    fn open_proxy_is_refused_and_the_message_names_the_flag() {
        let mut c = Config {
            listen: vec!["0.0.0.0:1080".parse().unwrap()],
            ..Config::default()
        };
        let err = c.validate().unwrap_err();
        assert!(err.to_string().contains("--allow-open-proxy"), "{err}");
        c.allow_open_proxy = true;
        c.validate().unwrap();

        c.allow_open_proxy = false;
        c.rules = Rules::new(vec![Rule {
            action: Action::Allow,
            commands: vec![],
            from: vec!["10.0.0.0/8".parse::<Cidr>().unwrap()],
            to: vec![],
            ports: None,
            users: vec![],
        }]);
        c.validate().unwrap();
    }

    #[test]
    fn durations_longer_than_a_century_are_refused() {
        let century = Config {
            timeouts: Timeouts {
                idle: MAX_DURATION,
                ..Timeouts::default()
            },
            name_cache: MAX_DURATION,
            ..Config::default()
        };
        century.validate().unwrap();
        let too_long = MAX_DURATION + Duration::from_secs(1);
        for name in [
            "handshake_timeout",
            "connect_timeout",
            "bind_timeout",
            "idle_timeout",
            "udp_idle_timeout",
            "drain_timeout",
            "name_cache",
        ] {
            let mut c = Config::default();
            let t = &mut c.timeouts;
            let field = match name {
                "handshake_timeout" => &mut t.handshake,
                "connect_timeout" => &mut t.connect,
                "bind_timeout" => &mut t.bind,
                "idle_timeout" => &mut t.idle,
                "udp_idle_timeout" => &mut t.udp_idle,
                "drain_timeout" => &mut t.drain,
                _ => &mut c.name_cache,
            };
            *field = too_long;
            assert_eq!(
                c.validate(),
                Err(ConfigError::DurationTooLong {
                    setting: name,
                    value: too_long
                }),
                "{name}"
            );
        }
    }

    #[test]
    fn limits_must_fit_a_semaphore_and_not_be_zero() {
        for value in [0, MAX_LIMIT + 1, usize::MAX] {
            for setting in ["max_connections", "max_handshakes", "max_udp_associations"] {
                let mut c = Config::default();
                let l = &mut c.limits;
                *match setting {
                    "max_connections" => &mut l.max_connections,
                    "max_handshakes" => &mut l.max_handshakes,
                    _ => &mut l.max_udp_associations,
                } = value;
                assert_eq!(
                    c.validate(),
                    Err(ConfigError::LimitOutOfRange { setting, value }),
                    "{setting} {value}"
                );
            }
        }
        let mut c = Config::default();
        c.limits.max_connections = MAX_LIMIT;
        c.validate().unwrap();
        // The server builds its semaphores from it without panicking.
        let _ = tokio::sync::Semaphore::new(c.limits.max_connections);
    }

    #[test]
    fn a_udp_port_range_must_not_include_port_0() {
        let mut c = Config {
            udp_port_range: Some(0..=100),
            ..Config::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::PortZeroInRange(0, 100)));
        c.udp_port_range = Some(1..=100);
        c.validate().unwrap();
    }

    #[test]
    fn zero_timeouts_and_overlapping_listeners_are_refused() {
        let mut c = Config::default();
        c.timeouts.idle = Duration::ZERO;
        assert_eq!(c.validate(), Err(ConfigError::ZeroTimeout("idle_timeout")));
        let mut c = Config::default();
        c.timeouts.drain = Duration::ZERO;
        c.name_cache = Duration::ZERO;
        c.validate().unwrap();
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        for (a, b, overlap) in [
            ("127.0.0.1:1080", "127.0.0.1:1080", true),
            ("0.0.0.0:1080", "127.0.0.1:1080", true),
            ("[::1]:1080", "[::]:1080", true),
            ("127.0.0.1:1080", "127.0.0.1:1081", false),
            ("127.0.0.1:1080", "[::1]:1080", false),
            ("127.0.0.1:1080", "127.0.0.2:1080", false),
            ("127.0.0.1:0", "127.0.0.1:0", false),
        ] {
            let c = Config {
                listen: vec![addr(a), addr(b)],
                allow_open_proxy: true,
                ..Config::default()
            };
            assert_eq!(
                c.validate() == Err(ConfigError::OverlappingListen(addr(a), addr(b))),
                overlap,
                "{a} {b}"
            );
        }
        let mapped = Config {
            listen: vec![addr("[::ffff:127.0.0.1]:1080")],
            ..Config::default()
        };
        assert_eq!(
            mapped.validate(),
            Err(ConfigError::MappedListen(addr("[::ffff:127.0.0.1]:1080")))
        );
    }

    #[test]
    fn userpass_needs_users() {
        let c = Config {
            auth_methods: vec![AuthMethod::UserPass],
            ..Config::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::UserPassWithoutUsers));
    }
}
