//! Proxy URLs in curl's form: `socks5://[user:pass@]host[:port]` and `socks5h://…`.
//!
//! The scheme decides who resolves target names, exactly as in curl: with `socks5://` the
//! client resolves them and sends an IP address, with `socks5h://` it sends the name
//! (ATYP `03`) and the proxy resolves it.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use ferrosocks_proto::{Addr, Host, Password, UserPassRequest};

/// The port a proxy URL without one uses (RFC 1928 §3 assigns 1080 to SOCKS).
pub const DEFAULT_PORT: u16 = 1080;

/// Who resolves target names given as domain names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resolution {
    /// `socks5://`: the client resolves the name and sends an IP address.
    Local,
    /// `socks5h://`: the client sends the name (ATYP `03`) and the proxy resolves it.
    Proxy,
}

impl Resolution {
    fn scheme(self) -> &'static str {
        match self {
            Resolution::Local => "socks5",
            Resolution::Proxy => "socks5h",
        }
    }
}

/// A username and password for RFC 1929 authentication. Both are raw bytes, since the RFC
/// promises no encoding; each must be 1 to 255 bytes long.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    username: Vec<u8>,
    password: Password,
}

impl Credentials {
    /// Checks the lengths RFC 1929 allows (1 to 255 bytes each).
    pub fn new(
        username: impl Into<Vec<u8>>,
        password: impl Into<Vec<u8>>,
    ) -> Result<Self, UrlError> {
        let username = username.into();
        let password = password.into();
        if username.is_empty() || username.len() > 255 {
            return Err(UrlError::UsernameLength(username.len()));
        }
        // The length is an error detail only; it does not reveal the password itself.
        if password.is_empty() || password.len() > 255 {
            return Err(UrlError::PasswordLength(password.len()));
        }
        Ok(Self {
            username,
            password: Password::new(password),
        })
    }

    /// The username.
    pub fn username(&self) -> &[u8] {
        &self.username
    }

    /// The password (its `Debug` and `Display` are redacted).
    pub fn password(&self) -> &Password {
        &self.password
    }

    pub(crate) fn to_request(&self) -> UserPassRequest {
        UserPassRequest {
            username: self.username.clone(),
            password: self.password.clone(),
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &String::from_utf8_lossy(&self.username))
            .field("password", &self.password)
            .finish()
    }
}

/// Why a string is not a usable proxy URL. No variant ever carries the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UrlError {
    /// The scheme is missing or is not `socks5` / `socks5h`.
    #[error("unsupported scheme {0:?} (expected socks5:// or socks5h://)")]
    Scheme(String),
    /// Something follows the authority other than an optional `/`.
    #[error("unexpected path, query or fragment {0:?}")]
    Path(String),
    /// The host is empty.
    #[error("missing host")]
    MissingHost,
    /// The host is neither an IP address nor a valid name.
    #[error("invalid host {0:?}")]
    Host(String),
    /// The port is not a number from 1 to 65535.
    #[error("invalid port {0:?}")]
    Port(String),
    /// A `%` is not followed by two hexadecimal digits.
    #[error("invalid percent-encoding in the user information")]
    PercentEncoding,
    /// The username is empty or longer than 255 bytes.
    #[error("username is {0} bytes long (RFC 1929 allows 1 to 255)")]
    UsernameLength(usize),
    /// The password is empty or longer than 255 bytes.
    #[error("password is {0} bytes long (RFC 1929 allows 1 to 255)")]
    PasswordLength(usize),
}

/// A parsed proxy URL: where the proxy is, who resolves names, and optional credentials.
///
/// ```
/// use ferrosocks_client::{ProxyUrl, Resolution};
///
/// let url: ProxyUrl = "socks5h://alice:s%40cret@[::1]:1081".parse().unwrap();
/// assert_eq!(url.resolution(), Resolution::Proxy);
/// assert_eq!(url.addr().to_string(), "[::1]:1081");
/// assert_eq!(url.credentials().unwrap().password().expose(), b"s@cret");
/// // Display never shows the password.
/// assert_eq!(url.to_string(), "socks5h://alice:***@[::1]:1081");
///
/// let plain: ProxyUrl = "socks5://localhost".parse().unwrap();
/// assert_eq!(plain.addr().port(), 1080);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    resolution: Resolution,
    addr: Addr,
    credentials: Option<Credentials>,
}

impl ProxyUrl {
    /// A proxy at `addr` with no credentials.
    pub fn new(addr: impl Into<Addr>, resolution: Resolution) -> Self {
        Self {
            resolution,
            addr: addr.into(),
            credentials: None,
        }
    }

    /// Replaces the credentials (for example ones read from a file rather than the URL).
    pub fn with_credentials(mut self, credentials: Option<Credentials>) -> Self {
        self.credentials = credentials;
        self
    }

    /// The proxy's address: an IP address, or a name resolved locally when connecting.
    pub fn addr(&self) -> &Addr {
        &self.addr
    }

    /// Who resolves target names.
    pub fn resolution(&self) -> Resolution {
        self.resolution
    }

    /// The credentials, if any; with them the client offers username/password as well as
    /// "no authentication".
    pub fn credentials(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }
}

impl FromStr for ProxyUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, UrlError> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| UrlError::Scheme(String::new()))?;
        let resolution = match scheme.to_ascii_lowercase().as_str() {
            "socks5" => Resolution::Local,
            "socks5h" => Resolution::Proxy,
            _ => return Err(UrlError::Scheme(scheme.to_owned())),
        };

        // The authority ends at the first '/', '?' or '#'; only a bare "/" may follow, since
        // a SOCKS proxy has no use for a path and silently ignoring one hides typos.
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        if !tail.is_empty() && tail != "/" {
            return Err(UrlError::Path(tail.to_owned()));
        }

        // The last '@' separates the user information, as in the URL standard, so an
        // unencoded '@' in a password still parses.
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
            None => (None, authority),
        };
        let credentials = userinfo
            .map(|info| {
                let (user, pass) = info.split_once(':').unwrap_or((info, ""));
                Credentials::new(percent_decode(user)?, percent_decode(pass)?)
            })
            .transpose()?;

        Ok(Self {
            resolution,
            addr: parse_host_port(hostport)?,
            credentials,
        })
    }
}

fn parse_host_port(s: &str) -> Result<Addr, UrlError> {
    let (host, port) = if let Some(bracketed) = s.strip_prefix('[') {
        let (ip, after) = bracketed
            .split_once(']')
            .ok_or_else(|| UrlError::Host(s.to_owned()))?;
        let ip: Ipv6Addr = ip.parse().map_err(|_| UrlError::Host(ip.to_owned()))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| UrlError::Port(p.to_owned()))?,
            ),
        };
        (HostPart::Ip(ip.into()), port)
    } else {
        // Two colons can only be an IPv6 address without its brackets, whose port would be
        // ambiguous.
        if s.matches(':').count() > 1 {
            return Err(UrlError::Host(s.to_owned()));
        }
        let (host, port) = match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        };
        if host.is_empty() {
            return Err(UrlError::MissingHost);
        }
        let part = match host.parse::<IpAddr>() {
            Ok(ip) => HostPart::Ip(ip),
            Err(_) => HostPart::Name(host),
        };
        (part, port)
    };

    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n != 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(UrlError::Port(p.to_owned())),
        },
    };

    match host {
        HostPart::Ip(ip) => Ok(Addr::Ip(SocketAddr::new(ip, port))),
        HostPart::Name(name) => {
            // Only what can appear in a DNS name; anything else (spaces, a second ':' from an
            // unbracketed IPv6 address) is a typo better reported here than by the resolver.
            let valid = name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
            let host = Host::new(name)
                .ok()
                .filter(|_| valid)
                .ok_or_else(|| UrlError::Host(name.to_owned()))?;
            Ok(Addr::Domain(host, port))
        }
    }
}

enum HostPart<'a> {
    Ip(IpAddr),
    Name(&'a str),
}

fn percent_decode(s: &str) -> Result<Vec<u8>, UrlError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(UrlError::PercentEncoding)?;
            let hex = std::str::from_utf8(hex).map_err(|_| UrlError::PercentEncoding)?;
            let value = u8::from_str_radix(hex, 16).map_err(|_| UrlError::PercentEncoding)?;
            // from_str_radix accepts a leading '+', which is not a hex digit.
            if hex.starts_with('+') {
                return Err(UrlError::PercentEncoding);
            }
            out.push(value);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// Escapes everything but RFC 3986 "unreserved" characters, so the username in the
/// displayed URL parses back to the same bytes.
fn percent_encode(bytes: &[u8], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            write!(f, "{}", b as char)?;
        } else {
            write!(f, "%{b:02X}")?;
        }
    }
    Ok(())
}

impl fmt::Display for ProxyUrl {
    /// Writes the URL with the password replaced by `***`, so it is safe to log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.resolution.scheme())?;
        if let Some(creds) = &self.credentials {
            percent_encode(&creds.username, f)?;
            f.write_str(":***@")?;
        }
        write!(f, "{}", self.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ProxyUrl, UrlError> {
        s.parse()
    }

    #[test]
    fn schemes_choose_who_resolves() {
        assert_eq!(
            parse("socks5://h:1").unwrap().resolution(),
            Resolution::Local
        );
        assert_eq!(
            parse("SOCKS5H://h:1").unwrap().resolution(),
            Resolution::Proxy
        );
        assert!(matches!(parse("socks4://h:1"), Err(UrlError::Scheme(s)) if s == "socks4"));
        assert!(matches!(parse("http://h:1"), Err(UrlError::Scheme(_))));
        assert!(matches!(parse("h:1080"), Err(UrlError::Scheme(_))));
    }

    #[test]
    fn hosts_and_ports() {
        let u = parse("socks5://127.0.0.1:1081").unwrap();
        assert_eq!(u.addr(), &Addr::Ip("127.0.0.1:1081".parse().unwrap()));
        let u = parse("socks5://[::1]:9050/").unwrap();
        assert_eq!(u.addr(), &Addr::Ip("[::1]:9050".parse().unwrap()));
        let u = parse("socks5://[::1]").unwrap();
        assert_eq!(u.addr().port(), DEFAULT_PORT);
        let u = parse("socks5h://proxy.example-1.net").unwrap();
        assert_eq!(u.addr().to_string(), "proxy.example-1.net:1080");

        assert_eq!(parse("socks5://:1080"), Err(UrlError::MissingHost));
        assert_eq!(parse("socks5://"), Err(UrlError::MissingHost));
        assert!(matches!(parse("socks5://::1:1080"), Err(UrlError::Host(_))));
        assert!(matches!(parse("socks5://[::1"), Err(UrlError::Host(_))));
        assert!(matches!(parse("socks5://[::1]x"), Err(UrlError::Port(_))));
        assert!(matches!(parse("socks5://h:"), Err(UrlError::Port(_))));
        assert!(matches!(parse("socks5://h:0"), Err(UrlError::Port(_))));
        assert!(matches!(parse("socks5://h:65536"), Err(UrlError::Port(_))));
        assert!(matches!(parse("socks5://h:+80"), Err(UrlError::Port(_))));
        assert!(matches!(parse("socks5://h:1/path"), Err(UrlError::Path(_))));
        assert!(matches!(
            parse("socks5://bad host:1"),
            Err(UrlError::Host(_))
        ));
    }

    #[test]
    fn credentials_are_percent_decoded() {
        let u = parse("socks5://al%69ce:p%3Aa%40ss@h:1").unwrap();
        let c = u.credentials().unwrap();
        assert_eq!(c.username(), b"alice");
        assert_eq!(c.password().expose(), b"p:a@ss");

        // An unencoded '@' in the password: the last '@' ends the user information.
        let c = parse("socks5://bob:a@b@h")
            .unwrap()
            .credentials()
            .cloned()
            .unwrap();
        assert_eq!(c.password().expose(), b"a@b");

        // Non-UTF-8 bytes survive, since RFC 1929 carries bytes.
        let c = parse("socks5://%FF:x@h")
            .unwrap()
            .credentials()
            .cloned()
            .unwrap();
        assert_eq!(c.username(), &[0xff]);

        assert_eq!(parse("socks5://a%4:b@h"), Err(UrlError::PercentEncoding));
        assert_eq!(parse("socks5://a%+1:b@h"), Err(UrlError::PercentEncoding));
        assert_eq!(parse("socks5://a:%zz@h"), Err(UrlError::PercentEncoding));
        assert_eq!(parse("socks5://:pw@h"), Err(UrlError::UsernameLength(0)));
        assert_eq!(parse("socks5://user@h"), Err(UrlError::PasswordLength(0)));
        let long = "x".repeat(256);
        assert_eq!(
            parse(&format!("socks5://u:{long}@h")),
            Err(UrlError::PasswordLength(256))
        );
    }

    #[test]
    fn display_redacts_the_password_and_round_trips_the_rest() {
        let u = parse("socks5h://us%20er:hunter2@[::1]:1080").unwrap();
        let shown = u.to_string();
        assert_eq!(shown, "socks5h://us%20er:***@[::1]:1080");
        assert!(!format!("{u:?}").contains("hunter2"));
        let back = parse(&shown).unwrap();
        assert_eq!(back.credentials().unwrap().username(), b"us er");
        assert_eq!(back.addr(), u.addr());
        assert_eq!(parse("socks5://h").unwrap().to_string(), "socks5://h:1080");
    }
}
