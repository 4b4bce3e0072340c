//! CONNECT: a tunnel to one target, usable as a plain byte stream.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use ferrosocks_proto::{Addr, Command, Request};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::config::ClientConfig;
use crate::error::Result;
use crate::handshake::{connect_proxy, handshake};
use crate::proxy_url::ProxyUrl;
use crate::target::{prepare_for, IntoTarget};

/// A stream tunnelled through a SOCKS5 proxy (after CONNECT, or after BIND's second reply).
///
/// It reads and writes like the stream it wraps. Bytes the proxy relayed in the same
/// segment as its reply were read during the handshake; they are kept here and returned
/// by the first reads, so nothing is lost.
#[derive(Debug)]
pub struct Socks5Stream<S = TcpStream> {
    inner: S,
    buffered: BytesMut,
    bound: Addr,
}

impl Socks5Stream<TcpStream> {
    /// Connects to the proxy and asks it to CONNECT to `target`, with the default
    /// [`ClientConfig`].
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), ferrosocks_client::Error> {
    /// use ferrosocks_client::{ProxyUrl, Socks5Stream};
    /// use tokio::io::AsyncWriteExt;
    ///
    /// let proxy: ProxyUrl = "socks5h://127.0.0.1:1080".parse()?;
    /// let mut stream = Socks5Stream::connect(&proxy, ("example.com", 80)).await?;
    /// stream.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(proxy: &ProxyUrl, target: impl IntoTarget) -> Result<Self> {
        Self::connect_with_config(proxy, target, &ClientConfig::default()).await
    }

    /// [`Socks5Stream::connect`] with explicit timeouts and options.
    pub async fn connect_with_config(
        proxy: &ProxyUrl,
        target: impl IntoTarget,
        config: &ClientConfig,
    ) -> Result<Self> {
        // Resolve and validate the target before opening a connection that would be wasted.
        let target = prepare_for(proxy, target, config).await?;
        let stream = connect_proxy(proxy, config).await?;
        request(stream, proxy, target, config).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Socks5Stream<S> {
    /// Runs the CONNECT handshake over `stream`, which is already connected to the proxy
    /// (through another proxy, a TLS layer, a Unix socket…). The proxy's address in
    /// `proxy` is not used; its scheme and credentials are.
    pub async fn connect_with(
        stream: S,
        proxy: &ProxyUrl,
        target: impl IntoTarget,
        config: &ClientConfig,
    ) -> Result<Self> {
        let target = prepare_for(proxy, target, config).await?;
        request(stream, proxy, target, config).await
    }
}

async fn request<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    proxy: &ProxyUrl,
    dst: Addr,
    config: &ClientConfig,
) -> Result<Socks5Stream<S>> {
    let request = Request {
        command: Command::CONNECT,
        dst,
    };
    let (reply, buffered) = handshake(&mut stream, request, proxy.credentials(), config).await?;
    Ok(Socks5Stream::new(stream, buffered, reply.bnd))
}

impl<S> Socks5Stream<S> {
    pub(crate) fn new(inner: S, buffered: BytesMut, bound: Addr) -> Self {
        Self {
            inner,
            buffered,
            bound,
        }
    }

    /// BND.ADDR/BND.PORT of the reply: for CONNECT, the address the proxy uses toward the
    /// target; for an accepted BIND stream, the incoming peer.
    pub fn bound_addr(&self) -> &Addr {
        &self.bound
    }

    /// The wrapped stream. Reading from it directly skips [`Socks5Stream::buffered`].
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped stream, mutably. Reading from it directly skips
    /// [`Socks5Stream::buffered`].
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Tunnel bytes already read from the proxy but not yet returned by a read.
    pub fn buffered(&self) -> &[u8] {
        &self.buffered
    }

    /// The wrapped stream and the tunnel bytes already read from it. Those bytes come
    /// before anything read from the stream afterwards; dropping them loses data.
    pub fn into_inner(self) -> (S, BytesMut) {
        (self.inner, self.buffered)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Socks5Stream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.buffered.is_empty() {
            let n = this.buffered.len().min(buf.remaining());
            buf.put_slice(&this.buffered[..n]);
            this.buffered.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Socks5Stream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
