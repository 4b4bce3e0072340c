//! What can name a target: anything that turns into a proto [`Addr`], and the local
//! resolution `socks5://` asks for.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::Duration;

use ferrosocks_proto::{Addr, Host};

use crate::error::{Error, Result, Step};
use crate::proxy_url::Resolution;

/// A value that names a target host and port.
///
/// Implemented for [`Addr`], [`SocketAddr`] (and its V4/V6 forms), `(IpAddr, u16)`,
/// `(&str, u16)` / `(String, u16)` where the string is an IP address or a name, and
/// `"host:port"` strings (`"1.2.3.4:80"`, `"[::1]:80"`, `"example.com:443"`).
///
/// ```
/// use ferrosocks_client::IntoTarget;
/// use ferrosocks_proto::Addr;
///
/// assert_eq!(("example.com", 443).into_target().unwrap().to_string(), "example.com:443");
/// assert!(matches!(("::1", 22).into_target().unwrap(), Addr::Ip(_)));
/// assert!("no-port".into_target().is_err());
/// ```
pub trait IntoTarget {
    /// The target as SOCKS carries it.
    fn into_target(self) -> Result<Addr>;
}

impl IntoTarget for Addr {
    fn into_target(self) -> Result<Addr> {
        Ok(self)
    }
}

impl IntoTarget for &Addr {
    fn into_target(self) -> Result<Addr> {
        Ok(self.clone())
    }
}

impl IntoTarget for SocketAddr {
    fn into_target(self) -> Result<Addr> {
        Ok(Addr::Ip(self))
    }
}

impl IntoTarget for SocketAddrV4 {
    fn into_target(self) -> Result<Addr> {
        Ok(Addr::Ip(self.into()))
    }
}

impl IntoTarget for SocketAddrV6 {
    fn into_target(self) -> Result<Addr> {
        Ok(Addr::Ip(self.into()))
    }
}

impl IntoTarget for (IpAddr, u16) {
    fn into_target(self) -> Result<Addr> {
        Ok(Addr::Ip(self.into()))
    }
}

impl IntoTarget for (Ipv4Addr, u16) {
    fn into_target(self) -> Result<Addr> {
        Ok(Addr::Ip(self.into()))
    }
}

impl IntoTarget for (Ipv6Addr, u16) {
    fn into_target(self) -> Result<Addr> {
        Ok(Addr::Ip(self.into()))
    }
}

impl IntoTarget for (&str, u16) {
    fn into_target(self) -> Result<Addr> {
        let (host, port) = self;
        // Accept "[::1]" as well as "::1", since both are common ways to write IPv6 hosts.
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(Addr::Ip(SocketAddr::new(ip, port)));
        }
        let host = Host::new(host).map_err(|e| Error::InvalidTarget {
            input: format!("{host}:{port}"),
            reason: e.to_string(),
        })?;
        Ok(Addr::Domain(host, port))
    }
}

impl IntoTarget for (String, u16) {
    fn into_target(self) -> Result<Addr> {
        (self.0.as_str(), self.1).into_target()
    }
}

impl IntoTarget for &str {
    fn into_target(self) -> Result<Addr> {
        self.parse::<Addr>().map_err(|e| Error::InvalidTarget {
            input: self.to_owned(),
            reason: e.to_string(),
        })
    }
}

impl IntoTarget for String {
    fn into_target(self) -> Result<Addr> {
        self.as_str().into_target()
    }
}

impl IntoTarget for &String {
    fn into_target(self) -> Result<Addr> {
        self.as_str().into_target()
    }
}

/// Resolves a name to its first address, bounded by `limit`.
pub(crate) async fn lookup(host: &Host, port: u16, limit: Duration) -> Result<SocketAddr> {
    lookup_all(host, port, limit)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| resolve_error(host, not_found()))
}

/// Resolves a name to all its addresses, bounded by `limit`.
pub(crate) async fn lookup_all(host: &Host, port: u16, limit: Duration) -> Result<Vec<SocketAddr>> {
    let found = tokio::time::timeout(limit, tokio::net::lookup_host((host.as_str(), port)))
        .await
        .map_err(|_| Error::Timeout(Step::Resolve))?
        .map_err(|e| resolve_error(host, e))?
        .collect::<Vec<_>>();
    if found.is_empty() {
        return Err(resolve_error(host, not_found()));
    }
    Ok(found)
}

fn resolve_error(host: &Host, source: std::io::Error) -> Error {
    Error::Resolve {
        host: host.as_str().to_owned(),
        source,
    }
}

fn not_found() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotFound, "no address found")
}

/// The address to put in a request: with `socks5://` names are resolved here (first
/// address, as curl does); with `socks5h://` they go to the proxy as they are.
/// The target of a CONNECT or BIND through `proxy`: validated, and resolved on this side
/// when the URL is `socks5://`.
pub(crate) async fn prepare_for(
    proxy: &crate::ProxyUrl,
    target: impl IntoTarget,
    config: &crate::ClientConfig,
) -> Result<Addr> {
    prepare(
        target.into_target()?,
        proxy.resolution(),
        config.connect_timeout,
    )
    .await
}

pub(crate) async fn prepare(target: Addr, resolution: Resolution, limit: Duration) -> Result<Addr> {
    match (target, resolution) {
        (Addr::Domain(host, port), Resolution::Local) => {
            Ok(Addr::Ip(lookup(&host, port, limit).await?))
        }
        (target, _) => Ok(target),
    }
}
