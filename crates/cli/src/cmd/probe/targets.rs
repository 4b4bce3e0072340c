//! Targets the probe starts on its own side: TCP and UDP echo servers that record who
//! reached them and what they received, so a check can tell what the proxy really did.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;

/// A TCP echo on one or more listeners sharing a port; stops when dropped.
pub(crate) struct TcpEcho {
    pub(crate) addrs: Vec<SocketAddr>,
    peers: Arc<Mutex<Vec<(SocketAddr, SocketAddr)>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl TcpEcho {
    /// An echo on `ip`, any free port.
    pub(crate) async fn start(ip: IpAddr) -> io::Result<TcpEcho> {
        let listener = retry_in_use(|| TcpListener::bind(SocketAddr::new(ip, 0))).await?;
        Ok(Self::serve(vec![listener]))
    }

    /// An echo on 127.0.0.1 and, when this host has IPv6 loopback, on [::1] with the same
    /// port, so that `localhost:PORT` reaches it whichever address the proxy resolves.
    pub(crate) async fn start_localhost() -> io::Result<TcpEcho> {
        let mut last = None;
        for _ in 0..20 {
            let v4 = retry_in_use(|| TcpListener::bind(("127.0.0.1", 0))).await?;
            let port = v4.local_addr()?.port();
            match TcpListener::bind(("::1", port)).await {
                Ok(v6) => return Ok(Self::serve(vec![v4, v6])),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = Some(e),
                // No IPv6 loopback here: names resolve to 127.0.0.1 only, which suffices.
                Err(_) => return Ok(Self::serve(vec![v4])),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no port free on both loopbacks")))
    }

    fn serve(listeners: Vec<TcpListener>) -> TcpEcho {
        let peers = Arc::new(Mutex::new(Vec::new()));
        let addrs = listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect();
        let tasks = listeners
            .into_iter()
            .map(|listener| {
                let peers = peers.clone();
                tokio::spawn(async move {
                    let local = listener.local_addr().ok();
                    while let Ok((mut s, peer)) = listener.accept().await {
                        if let Some(local) = local {
                            lock(&peers).push((local, peer));
                        }
                        tokio::spawn(async move {
                            let mut buf = [0u8; 4096];
                            loop {
                                match s.read(&mut buf).await {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => {
                                        if s.write_all(&buf[..n]).await.is_err() {
                                            break;
                                        }
                                    }
                                }
                            }
                            let _ = s.shutdown().await;
                        });
                    }
                })
            })
            .collect();
        TcpEcho {
            addrs,
            peers,
            tasks,
        }
    }

    /// `(listener address, peer address)` of every accepted connection.
    pub(crate) fn peers(&self) -> Vec<(SocketAddr, SocketAddr)> {
        lock(&self.peers).clone()
    }
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A UDP echo that records every datagram it receives; stops when dropped.
pub(crate) struct UdpEcho {
    pub(crate) addr: SocketAddr,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
    task: JoinHandle<()>,
}

impl UdpEcho {
    pub(crate) async fn start(ip: IpAddr) -> io::Result<UdpEcho> {
        let socket = retry_in_use(|| UdpSocket::bind(SocketAddr::new(ip, 0))).await?;
        let addr = socket.local_addr()?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                match socket.recv_from(&mut buf).await {
                    Ok((n, src)) => {
                        lock(&log).push(buf[..n].to_vec());
                        let _ = socket.send_to(&buf[..n], src).await;
                    }
                    // ICMP errors from an earlier send_to surface here; keep serving.
                    Err(_) => continue,
                }
            }
        });
        Ok(UdpEcho {
            addr,
            received,
            task,
        })
    }

    /// Every datagram received so far.
    pub(crate) fn received(&self) -> Vec<Vec<u8>> {
        lock(&self.received).clone()
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binding port 0 fails with "address in use" while the ephemeral ports are exhausted
/// (a load test next door leaves thousands in TIME_WAIT); that passes, so try again for a
/// second before giving up.
async fn retry_in_use<T, F, Fut>(mut bind: F) -> io::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = io::Result<T>>,
{
    let mut tries = 0;
    loop {
        match bind().await {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && tries < 20 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A loopback port nothing listens on (bound, then released), for the "refused" check.
pub(crate) fn closed_port(ip: IpAddr) -> io::Result<SocketAddr> {
    let l = std::net::TcpListener::bind(SocketAddr::new(ip, 0))?;
    l.local_addr()
}
