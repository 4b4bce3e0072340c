//! Async SOCKS5 client: CONNECT, BIND and UDP ASSOCIATE, with no authentication or
//! username/password (RFC 1928, RFC 1929).
//!
//! The protocol itself lives in the sans-IO [`ferrosocks_proto`] crate; this crate drives
//! its [`ClientHandshake`](ferrosocks_proto::ClientHandshake) over tokio sockets and adds
//! what a network client needs: proxy URLs, local name resolution, and a timeout on every
//! step.
//!
//! # Layout
//! | module | owns |
//! |---|---|
//! | [`proxy_url`] | [`ProxyUrl`]: curl's `socks5://` (resolve locally) and `socks5h://` (proxy resolves) |
//! | [`target`] | [`IntoTarget`]: `("host", port)`, `SocketAddr`, `"host:port"`, [`Addr`] |
//! | [`connect`] | [`Socks5Stream`]: CONNECT, over TCP or any stream |
//! | [`bind`] | [`Socks5Listener`]: BIND's announced address, then `accept()` |
//! | [`udp`] | [`UdpAssociation`]: datagrams to and from any address |
//! | [`config`] | [`ClientConfig`]: connect, handshake and accept timeouts |
//! | [`error`] | [`Error`], one typed enum naming the REP code, step or violation |
//!
//! # CONNECT
//! ```no_run
//! # async fn demo() -> Result<(), ferrosocks_client::Error> {
//! use ferrosocks_client::{ProxyUrl, Socks5Stream};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! let proxy: ProxyUrl = "socks5h://user:pass@127.0.0.1:1080".parse()?;
//! let mut stream = Socks5Stream::connect(&proxy, "example.com:80").await?;
//! stream.write_all(b"HEAD / HTTP/1.0\r\n\r\n").await?;
//! let mut answer = Vec::new();
//! stream.read_to_end(&mut answer).await?;
//! # Ok(()) }
//! ```
//!
//! # BIND
//! ```no_run
//! # async fn demo() -> Result<(), ferrosocks_client::Error> {
//! use ferrosocks_client::{ProxyUrl, Socks5Listener};
//!
//! let proxy: ProxyUrl = "socks5://127.0.0.1:1080".parse()?;
//! let listener = Socks5Listener::bind(&proxy, "0.0.0.0:0").await?;
//! println!("listening at {}", listener.announced_addr());
//! let (stream, peer) = listener.accept().await?;
//! # drop((stream, peer)); Ok(()) }
//! ```
//!
//! # UDP ASSOCIATE
//! ```no_run
//! # async fn demo() -> Result<(), ferrosocks_client::Error> {
//! use ferrosocks_client::{ProxyUrl, UdpAssociation};
//!
//! let proxy: ProxyUrl = "socks5://127.0.0.1:1080".parse()?;
//! let udp = UdpAssociation::associate(&proxy, None).await?;
//! udp.send_to("192.0.2.1:7", b"ping").await?;
//! let mut buf = vec![0; 65_536];
//! let (len, from) = udp.recv_from(&mut buf).await?;
//! println!("{:?} from {from}", &buf[..len]);
//! # Ok(()) }
//! ```
//!
//! # Errors
//! Every failure is an [`Error`] variant: the proxy's REP code ([`Error::Rejected`], with
//! unassigned codes kept), the RFC 1929 status ([`Error::AuthFailed`]), the protocol
//! violation ([`Error::Protocol`]) or the step that timed out ([`Error::Timeout`]). No
//! byte from the proxy can make the client panic.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod bind;
pub mod config;
pub mod connect;
pub mod error;
mod handshake;
pub mod proxy_url;
pub mod target;
pub mod udp;

pub use bind::Socks5Listener;
pub use config::ClientConfig;
pub use connect::Socks5Stream;
pub use error::{Error, Result, Step};
pub use ferrosocks_proto::{Addr, Rep};
pub use proxy_url::{Credentials, ProxyUrl, Resolution, UrlError};
pub use target::IntoTarget;
pub use udp::UdpAssociation;
