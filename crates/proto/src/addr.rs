//! The one address codec (ATYP `01` IPv4, `03` domain name, `04` IPv6), shared by requests,
//! replies and UDP headers.
//!
//! ```text
//! +------+----------+----------+
//! | ATYP | DST.ADDR | DST.PORT |
//! +------+----------+----------+
//! |  1   | Variable |    2     |
//! +------+----------+----------+
//! ```
//! RFC 1928 §5: IPv4 is 4 octets, IPv6 16 octets, and a domain name is one length octet
//! followed by the name, with no terminating NUL.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use bytes::{BufMut, BytesMut};

use crate::codec::{Decode, Encode, Reader};
use crate::error::{DecodeError, ProtocolError};

/// Address type codes of RFC 1928 §4/§5.
pub mod atyp {
    /// `X'01'`: IP version 4 address.
    pub const IPV4: u8 = 0x01;
    /// `X'03'`: fully-qualified domain name.
    pub const DOMAIN: u8 = 0x03;
    /// `X'04'`: IP version 6 address.
    pub const IPV6: u8 = 0x04;
}

/// A domain name as carried on the wire: 1 to 255 bytes of UTF-8, no NUL terminator.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Host(String);

/// Why a string cannot be a [`Host`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// Zero bytes.
    #[error("domain name is empty")]
    Empty,
    /// More than 255 bytes, which the one-octet length cannot carry.
    #[error("domain name is {0} bytes long (at most 255)")]
    TooLong(usize),
}

impl Host {
    /// The longest name the one-octet length field can describe.
    pub const MAX_LEN: usize = 255;

    /// Validates a domain name.
    pub fn new(name: impl Into<String>) -> Result<Self, HostError> {
        let name = name.into();
        match name.len() {
            0 => Err(HostError::Empty),
            n if n > Self::MAX_LEN => Err(HostError::TooLong(n)),
            _ => Ok(Self(name)),
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// An address as SOCKS carries it: an IP socket address, or a domain name and port for the
/// proxy to resolve.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Addr {
    /// An IPv4 or IPv6 address and port.
    Ip(SocketAddr),
    /// A domain name and port.
    Domain(Host, u16),
}

impl Addr {
    /// `0.0.0.0:0`, used where the RFC leaves an address unspecified (for example the
    /// BND fields of a failure reply).
    pub const UNSPECIFIED: Addr = Addr::Ip(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0));

    /// The port.
    pub fn port(&self) -> u16 {
        match self {
            Addr::Ip(sa) => sa.port(),
            Addr::Domain(_, port) => *port,
        }
    }

    /// The IP socket address, if this is not a domain name.
    pub fn ip_socket_addr(&self) -> Option<SocketAddr> {
        match self {
            Addr::Ip(sa) => Some(*sa),
            Addr::Domain(..) => None,
        }
    }

    /// The ATYP octet this address is encoded with.
    pub fn atyp(&self) -> u8 {
        match self {
            Addr::Ip(SocketAddr::V4(_)) => atyp::IPV4,
            Addr::Ip(SocketAddr::V6(_)) => atyp::IPV6,
            Addr::Domain(..) => atyp::DOMAIN,
        }
    }
}

impl From<SocketAddr> for Addr {
    fn from(sa: SocketAddr) -> Self {
        Addr::Ip(sa)
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Ip(sa) => sa.fmt(f),
            Addr::Domain(host, port) => write!(f, "{host}:{port}"),
        }
    }
}

impl fmt::Debug for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a `host:port` string cannot be an [`Addr`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrParseError {
    /// No `:port` at the end.
    #[error("missing :PORT in {0:?}")]
    MissingPort(String),
    /// The port is not a number from 0 to 65535.
    #[error("invalid port in {0:?}")]
    BadPort(String),
    /// The host part is not a valid domain name.
    #[error(transparent)]
    Host(#[from] HostError),
}

impl FromStr for Addr {
    type Err = AddrParseError;

    /// Parses `1.2.3.4:80`, `[::1]:80` or `example.com:80`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(sa) = s.parse::<SocketAddr>() {
            return Ok(Addr::Ip(sa));
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| AddrParseError::MissingPort(s.to_owned()))?;
        let port: u16 = port
            .parse()
            .map_err(|_| AddrParseError::BadPort(s.to_owned()))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(Addr::Ip(SocketAddr::new(ip, port)));
        }
        Ok(Addr::Domain(Host::new(host)?, port))
    }
}

impl Encode for Addr {
    fn encode(&self, buf: &mut BytesMut) {
        buf.reserve(self.encoded_len());
        buf.put_u8(self.atyp());
        match self {
            Addr::Ip(sa) => match sa.ip() {
                IpAddr::V4(ip) => buf.put_slice(&ip.octets()),
                IpAddr::V6(ip) => buf.put_slice(&ip.octets()),
            },
            Addr::Domain(host, _) => {
                // Host guarantees 1..=255 bytes, so the length fits the octet.
                buf.put_u8(host.0.len() as u8);
                buf.put_slice(host.0.as_bytes());
            }
        }
        buf.put_u16(self.port());
    }

    fn encoded_len(&self) -> usize {
        let addr_len = match self {
            Addr::Ip(SocketAddr::V4(_)) => 4,
            Addr::Ip(SocketAddr::V6(_)) => 16,
            Addr::Domain(host, _) => 1 + host.0.len(),
        };
        1 + addr_len + 2
    }
}

impl Decode for Addr {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let atyp = r.take_u8()?;
        let addr = match atyp {
            atyp::IPV4 => {
                let ip = Ipv4Addr::from(r.take_array::<4>()?);
                Addr::Ip(SocketAddr::new(ip.into(), r.take_u16()?))
            }
            atyp::IPV6 => {
                let ip = Ipv6Addr::from(r.take_array::<16>()?);
                Addr::Ip(SocketAddr::new(ip.into(), r.take_u16()?))
            }
            atyp::DOMAIN => {
                let name = r.take_len_prefixed()?;
                let port = r.take_u16()?;
                if name.is_empty() {
                    return Err(ProtocolError::EmptyDomain.into());
                }
                let name = std::str::from_utf8(name)
                    .map_err(|e| ProtocolError::DomainNotUtf8(name[e.valid_up_to()]))?;
                Addr::Domain(Host(name.to_owned()), port)
            }
            other => return Err(ProtocolError::UnknownAtyp(other).into()),
        };
        Ok(addr)
    }
}
