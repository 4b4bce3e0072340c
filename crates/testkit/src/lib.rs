//! Shared helpers for ferrosocks tests: an in-process server on `127.0.0.1:0`, loopback
//! echo servers, a raw-byte client, and a deadline so no test can hang.

/// Dante and microsocks started on loopback, for interop tests.
pub mod daemons;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use ferrosocks_proto::{Decode, DecodeError, Reply};
pub use ferrosocks_server::access_log::MemoryLog;
use ferrosocks_server::{AccessLog, Config, Server, ServerHandle, Sink};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The longest any single test step may take before the test fails instead of hanging.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Runs `fut`, failing the test if it takes longer than [`DEADLINE`].
pub async fn with_deadline<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .expect("test step exceeded its deadline")
}

/// A server running in this process.
pub struct TestServer {
    /// The first listen address.
    pub addr: SocketAddr,
    /// Every listen address.
    pub addrs: Vec<SocketAddr>,
    /// For reloads.
    pub handle: ServerHandle,
    /// The access log, kept in memory.
    pub log: MemoryLog,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Waits (within the deadline) for an access-log line containing `needle`, and returns it.
    pub async fn wait_for_log(&self, needle: &str) -> String {
        with_deadline(async {
            loop {
                if let Some(line) = self.log.lines().into_iter().find(|l| l.contains(needle)) {
                    return line;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
    }

    /// Stops accepting, drains, and waits for the server to finish.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Raises this process's soft open-files limit to the hard limit, for tests that hold many
/// connections at once.
pub fn raise_fd_limit() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
}

/// The default configuration on `127.0.0.1:0`.
pub fn test_config() -> Config {
    Config {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        ..Config::default()
    }
}

/// Starts a server with `config` (its access log is replaced by an in-memory JSON log).
pub async fn spawn_server(mut config: Config) -> TestServer {
    let (sink, log) = Sink::memory();
    config.access_log = AccessLog::Json(sink);
    let server = Server::bind(config).await.expect("server binds");
    let addrs = server.local_addrs();
    let handle = server.handle();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    TestServer {
        addr: addrs[0],
        addrs,
        handle,
        log,
        stop: Some(stop),
        task: Some(task),
    }
}

/// A TCP connection over loopback, both ends: (the connecting end, the accepted end).
pub async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let connecting = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .expect("connects");
    let (accepted, _) = listener.accept().await.expect("accepts");
    (connecting, accepted)
}

/// The server's relay between two sockets, as a tunnel runs it but with busy-polling off,
/// a 10 s idle timeout and no shutdown: until both directions end or one fails.
pub async fn relay_until_closed(
    client: &TcpStream,
    target: &TcpStream,
    mode: ferrosocks_server::RelayMode,
) -> ferrosocks_server::relay::RelayStats {
    let pipes = ferrosocks_server::relay::PipePool::new();
    ferrosocks_server::relay::relay(
        client,
        target,
        Duration::from_secs(10),
        mode,
        Duration::ZERO,
        &pipes,
        std::future::pending(),
    )
    .await
}

/// A TCP echo server on `addr` (use port 0); returns its address.
pub async fn tcp_echo(addr: &str) -> SocketAddr {
    let listener = TcpListener::bind(addr).await.expect("echo binds");
    let local = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    local
}

/// A UDP echo server on `addr` (use port 0); returns its address.
pub async fn udp_echo(addr: &str) -> SocketAddr {
    let socket = UdpSocket::bind(addr).await.expect("udp echo binds");
    let local = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, src)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..n], src).await;
        }
    });
    local
}

/// A raw TCP connection for scripted byte exchanges.
pub struct RawClient {
    /// The stream.
    pub stream: TcpStream,
    buf: BytesMut,
}

impl RawClient {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> RawClient {
        RawClient {
            stream: with_deadline(TcpStream::connect(addr))
                .await
                .expect("connect"),
            buf: BytesMut::new(),
        }
    }

    /// Sends bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send");
    }

    /// Reads exactly `n` bytes.
    pub async fn recv_exact(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            let got = with_deadline(self.stream.read_buf(&mut self.buf))
                .await
                .expect("read");
            assert!(
                got > 0,
                "EOF after {} of {n} bytes: {:02x?}",
                self.buf.len(),
                &self.buf[..]
            );
        }
        self.buf.split_to(n).to_vec()
    }

    /// Reads one SOCKS reply.
    pub async fn recv_reply(&mut self) -> Reply {
        loop {
            match Reply::decode_prefix(&self.buf) {
                Ok((reply, used)) => {
                    let _ = self.buf.split_to(used);
                    return reply;
                }
                Err(DecodeError::Incomplete { .. }) => {
                    let got = with_deadline(self.stream.read_buf(&mut self.buf))
                        .await
                        .expect("read");
                    assert!(
                        got > 0,
                        "EOF before a complete reply: {:02x?}",
                        &self.buf[..]
                    );
                }
                Err(e) => panic!("invalid reply {:02x?}: {e}", &self.buf[..]),
            }
        }
    }

    /// Asserts that the server closes the connection with no further bytes.
    pub async fn expect_eof(&mut self) {
        let mut rest = Vec::new();
        with_deadline(self.stream.read_to_end(&mut rest)).await.ok();
        rest.splice(0..0, self.buf.split().to_vec());
        assert!(rest.is_empty(), "expected EOF, got {rest:02x?}");
    }

    /// Greets with NO AUTH and checks the server chose it.
    pub async fn greet_no_auth(&mut self) {
        self.send(&[5, 1, 0]).await;
        assert_eq!(self.recv_exact(2).await, [5, 0]);
    }
}
