//! UDP ASSOCIATE: datagrams to and from any destination through the proxy's relay.
//!
//! The association lives as long as its TCP control connection (RFC 1928 §6): this type
//! owns it, a background task watches it, and dropping the association closes it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::BytesMut;
use ferrosocks_proto::udp::{decode_datagram, encode_datagram};
use ferrosocks_proto::{Addr, Command, Frag, Request, UdpHeader};
use tokio::io::AsyncReadExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::ClientConfig;
use crate::error::{Error, Result};
use crate::handshake::{connect_proxy, handshake};
use crate::proxy_url::{ProxyUrl, Resolution};
use crate::target::{lookup, prepare, IntoTarget};

/// The largest header the relay can put in front of a payload (ATYP `03` with a
/// 255-byte name): size receive buffers as payload + this.
pub const MAX_HEADER_LEN: usize = 3 + 1 + 1 + 255 + 2;

/// A UDP association with a SOCKS5 proxy.
///
/// ```no_run
/// # async fn demo() -> Result<(), ferrosocks_client::Error> {
/// use ferrosocks_client::{ProxyUrl, UdpAssociation};
///
/// let proxy: ProxyUrl = "socks5h://127.0.0.1:1080".parse()?;
/// let udp = UdpAssociation::associate(&proxy, None).await?;
/// udp.send_to(("dns.example", 53), b"query").await?;
/// let mut buf = [0u8; 2048];
/// let (len, from) = udp.recv_from(&mut buf).await?;
/// println!("{len} bytes from {from}");
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct UdpAssociation {
    /// Connected to the relay, so the kernel drops datagrams from anyone else.
    socket: UdpSocket,
    relay: SocketAddr,
    resolution: Resolution,
    resolve_timeout: Duration,
    /// Becomes `true` (or loses its sender) once the control connection is gone.
    closed: watch::Receiver<bool>,
    /// Held so that dropping the association sends FIN to the proxy.
    _control_write: OwnedWriteHalf,
    watcher: JoinHandle<()>,
}

impl UdpAssociation {
    /// Opens the control connection and sends UDP ASSOCIATE, with the default
    /// [`ClientConfig`].
    ///
    /// `hint` is the address datagrams will come from, which the proxy may use to filter
    /// them. `None` announces the local UDP socket's own address, which is right unless a
    /// NAT sits between client and proxy; `Some(0.0.0.0:0)` announces nothing.
    pub async fn associate(proxy: &ProxyUrl, hint: Option<SocketAddr>) -> Result<Self> {
        Self::associate_with_config(proxy, hint, &ClientConfig::default()).await
    }

    /// [`UdpAssociation::associate`] with explicit timeouts and options.
    pub async fn associate_with_config(
        proxy: &ProxyUrl,
        hint: Option<SocketAddr>,
        config: &ClientConfig,
    ) -> Result<Self> {
        let mut control = connect_proxy(proxy, config).await?;
        // Same address as the control connection: that interface reaches the proxy, and the
        // proxy sees the same source IP on both, which is what it filters on.
        let local_ip = control.local_addr()?.ip();
        let mut socket = UdpSocket::bind((local_ip, 0)).await?;
        let dst = hint.unwrap_or(socket.local_addr()?);

        let request = Request {
            command: Command::UDP_ASSOCIATE,
            dst: Addr::Ip(dst),
        };
        let (reply, _) = handshake(&mut control, request, proxy.credentials(), config).await?;

        let relay = match reply.bnd {
            // Many servers answer 0.0.0.0 meaning "my address"; use the one we reached.
            Addr::Ip(sa) if sa.ip().is_unspecified() => {
                SocketAddr::new(control.peer_addr()?.ip(), sa.port())
            }
            Addr::Ip(sa) => sa,
            Addr::Domain(host, port) => lookup(&host, port, config.connect_timeout).await?,
        };
        if relay.is_ipv4() != local_ip.is_ipv4() {
            // The relay is in the other family than the control connection; a socket of
            // the control connection's family could not reach it.
            let any = if relay.is_ipv4() {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            } else {
                IpAddr::V6(Ipv6Addr::UNSPECIFIED)
            };
            // The request announced the first socket's port, and a proxy that filters by
            // it drops datagrams from any other: keep the port when it is free.
            let announced_port = socket.local_addr()?.port();
            // Closed first: a dual-stack socket on the port would collide with it.
            drop(socket);
            socket = match UdpSocket::bind((any, announced_port)).await {
                Ok(s) => s,
                Err(_) => UdpSocket::bind((any, 0)).await?,
            };
        }
        socket.connect(relay).await?;

        let (read, write) = control.into_split();
        let (closed_tx, closed) = watch::channel(false);
        let watcher = tokio::spawn(watch_control(read, closed_tx));
        Ok(Self {
            socket,
            relay,
            resolution: proxy.resolution(),
            resolve_timeout: config.connect_timeout,
            closed,
            _control_write: write,
            watcher,
        })
    }

    /// Where datagrams are sent: the relay's address from the reply (with the proxy's IP
    /// in place of an unspecified one).
    pub fn relay_addr(&self) -> SocketAddr {
        self.relay
    }

    /// The local UDP socket's address.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    /// Whether the proxy has closed the control connection, which ends the association.
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Sends `payload` to `target` through the relay and returns the payload length. With
    /// `socks5://` a target name is resolved locally first.
    pub async fn send_to(&self, target: impl IntoTarget, payload: &[u8]) -> Result<usize> {
        if self.is_closed() {
            return Err(Error::AssociationClosed);
        }
        let dst = prepare(target.into_target()?, self.resolution, self.resolve_timeout).await?;
        let header = UdpHeader {
            frag: Frag::STANDALONE,
            dst,
        };
        let mut datagram = BytesMut::new();
        encode_datagram(&header, payload, &mut datagram);
        self.socket.send(&datagram).await?;
        Ok(payload.len())
    }

    /// Receives the next datagram: its payload is moved to the start of `buf`, and the
    /// length and the source address from the relay's header are returned.
    ///
    /// `buf` holds header and payload while receiving, so give it [`MAX_HEADER_LEN`]
    /// bytes more than the largest payload expected; a longer datagram is truncated.
    /// Datagrams with a malformed header, and fragments (FRAG ≠ 0, which RFC 1928 §7
    /// lets a client without reassembly drop), are skipped. Fails with
    /// [`Error::AssociationClosed`] once the proxy closed the control connection and no
    /// datagram is waiting.
    pub async fn recv_from(&self, buf: &mut [u8]) -> Result<(usize, Addr)> {
        let mut closed = self.closed.clone();
        loop {
            let n = tokio::select! {
                // Deliver what already arrived before reporting the end.
                biased;
                n = self.socket.recv(buf) => n?,
                _ = closed.wait_for(|closed| *closed) => return Err(Error::AssociationClosed),
            };
            let (source, header_len, payload_len) = match decode_datagram(&buf[..n]) {
                Ok((header, payload)) if header.frag.is_standalone() => {
                    (header.dst, n - payload.len(), payload.len())
                }
                _ => continue,
            };
            buf.copy_within(header_len..n, 0);
            return Ok((payload_len, source));
        }
    }
}

impl Drop for UdpAssociation {
    fn drop(&mut self) {
        // Dropping the read half closes the control connection completely (the write half,
        // dropped with `self`, has already sent FIN).
        self.watcher.abort();
    }
}

/// Waits for the proxy to close the control connection. The proxy has nothing to say on
/// it after the reply, so any bytes are discarded.
async fn watch_control(mut read: OwnedReadHalf, closed: watch::Sender<bool>) {
    let mut scratch = [0u8; 64];
    while let Ok(n) = read.read(&mut scratch).await {
        if n == 0 {
            break;
        }
    }
    closed.send_replace(true);
}
