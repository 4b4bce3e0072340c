//! BIND: the proxy listens for one incoming connection on the client's behalf.
//!
//! The first reply announces where the proxy listens (the client passes that address to
//! the peer, e.g. in an FTP `PORT` command); the second names the peer that connected,
//! and the control connection becomes the tunnel to it.

use bytes::BytesMut;
use ferrosocks_proto::{Addr, Command, Request};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::config::ClientConfig;
use crate::connect::Socks5Stream;
use crate::error::{Error, Result, Step};
use crate::handshake::{connect_proxy, handshake, read_reply};
use crate::proxy_url::ProxyUrl;
use crate::target::{prepare_for, IntoTarget};

/// A BIND in progress: the proxy is listening at [`Socks5Listener::announced_addr`].
///
/// ```no_run
/// # async fn demo() -> Result<(), ferrosocks_client::Error> {
/// use ferrosocks_client::{ProxyUrl, Socks5Listener};
///
/// let proxy: ProxyUrl = "socks5://127.0.0.1:1080".parse()?;
/// // The target is the peer expected to connect (0.0.0.0:0 when unknown).
/// let listener = Socks5Listener::bind(&proxy, "203.0.113.7:0").await?;
/// println!("tell the peer to connect to {}", listener.announced_addr());
/// let (stream, peer) = listener.accept().await?;
/// println!("{peer} connected");
/// # drop(stream); Ok(()) }
/// ```
#[derive(Debug)]
pub struct Socks5Listener<S = TcpStream> {
    control: S,
    buffered: BytesMut,
    announced: Addr,
    accept_timeout: Option<std::time::Duration>,
}

impl Socks5Listener<TcpStream> {
    /// Connects to the proxy and sends BIND for `target` (the peer expected to connect),
    /// returning once the first reply announced the listening address.
    pub async fn bind(proxy: &ProxyUrl, target: impl IntoTarget) -> Result<Self> {
        Self::bind_with_config(proxy, target, &ClientConfig::default()).await
    }

    /// [`Socks5Listener::bind`] with explicit timeouts and options.
    pub async fn bind_with_config(
        proxy: &ProxyUrl,
        target: impl IntoTarget,
        config: &ClientConfig,
    ) -> Result<Self> {
        let target = prepare_for(proxy, target, config).await?;
        let stream = connect_proxy(proxy, config).await?;
        request(stream, proxy, target, config).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Socks5Listener<S> {
    /// Runs the BIND handshake over `stream`, already connected to the proxy. The proxy's
    /// address in `proxy` is not used; its scheme and credentials are.
    pub async fn bind_with(
        stream: S,
        proxy: &ProxyUrl,
        target: impl IntoTarget,
        config: &ClientConfig,
    ) -> Result<Self> {
        let target = prepare_for(proxy, target, config).await?;
        request(stream, proxy, target, config).await
    }

    /// The address the proxy listens on (BND of the first reply), as the proxy wrote it.
    pub fn announced_addr(&self) -> &Addr {
        &self.announced
    }

    /// Waits for the second reply and returns the tunnel to the peer and the peer's address.
    /// The wait is bounded by [`ClientConfig::accept_timeout`] when set.
    pub async fn accept(mut self) -> Result<(Socks5Stream<S>, Addr)> {
        let wait = read_reply(&mut self.control, &mut self.buffered, Step::Accept);
        let reply = match self.accept_timeout {
            Some(limit) => tokio::time::timeout(limit, wait)
                .await
                .map_err(|_| Error::Timeout(Step::Accept))??,
            None => wait.await?,
        };
        let peer = reply.bnd;
        Ok((
            Socks5Stream::new(self.control, self.buffered, peer.clone()),
            peer,
        ))
    }
}

async fn request<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    proxy: &ProxyUrl,
    dst: Addr,
    config: &ClientConfig,
) -> Result<Socks5Listener<S>> {
    let request = Request {
        command: Command::BIND,
        dst,
    };
    let (reply, buffered) = handshake(&mut stream, request, proxy.credentials(), config).await?;
    Ok(Socks5Listener {
        control: stream,
        buffered,
        announced: reply.bnd,
        accept_timeout: config.accept_timeout,
    })
}
