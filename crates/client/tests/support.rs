//! A fake SOCKS5 server that speaks the server side with `ServerHandshake` and then runs
//! whatever script the test gives it, so every byte the client sees is under test control.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use ferrosocks_client::{ProxyUrl, Resolution};
use ferrosocks_proto::{Encode, Event, Method, Rep, Reply, Request, ServerHandshake};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Runs `test` and fails it if it takes longer than ten seconds, so nothing can hang CI.
pub(crate) async fn deadline<F: Future>(test: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), test)
        .await
        .expect("test exceeded its 10 s deadline")
}

/// What the fake accepts.
#[derive(Clone)]
pub(crate) struct Policy {
    /// Methods in order of preference.
    pub(crate) methods: Vec<Method>,
    /// The one username/password it accepts.
    pub(crate) user: Option<(Vec<u8>, Vec<u8>)>,
}

impl Policy {
    pub(crate) fn no_auth() -> Self {
        Self {
            methods: vec![Method::NO_AUTH],
            user: None,
        }
    }

    pub(crate) fn user_pass(user: &str, pass: &str) -> Self {
        Self {
            methods: vec![Method::USER_PASS],
            user: Some((user.into(), pass.into())),
        }
    }
}

/// A connection after a completed handshake: the request and any bytes after it.
pub(crate) struct Session<S = TcpStream> {
    pub(crate) stream: S,
    pub(crate) request: Request,
    pub(crate) leftover: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    pub(crate) async fn reply(&mut self, rep: Rep, bnd: impl Into<ferrosocks_proto::Addr>) {
        let reply = Reply {
            rep,
            bnd: bnd.into(),
        };
        self.stream.write_all(&reply.to_bytes()).await.unwrap();
    }

    /// Echoes the tunnel until the client closes it.
    pub(crate) async fn echo(mut self) {
        if !self.leftover.is_empty() {
            self.stream.write_all(&self.leftover).await.unwrap();
        }
        let mut buf = [0u8; 1024];
        loop {
            match self.stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if self.stream.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// Runs the server side of the handshake. `None` when the fake refused the client (it has
/// written `05 FF` or a failed status and the connection should close).
pub(crate) async fn serve_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    policy: &Policy,
) -> Option<Session<S>> {
    let mut hs = ServerHandshake::new(policy.methods.clone());
    let mut input = BytesMut::new();
    let mut output = BytesMut::new();
    loop {
        let event = hs
            .feed(&mut input, &mut output)
            .expect("client broke the protocol");
        if !output.is_empty() {
            stream.write_all(&output).await.unwrap();
            output.clear();
        }
        match event {
            Event::NeedMore => {
                if stream.read_buf(&mut input).await.unwrap() == 0 {
                    return None;
                }
            }
            Event::Authenticate(creds) => {
                let ok = policy.user.as_ref().is_some_and(|(u, p)| {
                    creds.username == *u && creds.password.expose() == p.as_slice()
                });
                hs.handle_auth_verdict(ok, &mut output);
                stream.write_all(&output).await.unwrap();
                output.clear();
                if !ok {
                    return None;
                }
            }
            Event::Request(request) => {
                return Some(Session {
                    stream,
                    request,
                    leftover: input,
                })
            }
            Event::NoAcceptableMethod | Event::AuthFailed => return None,
        }
    }
}

/// A fake on `bind_addr` that serves one connection: handshake under `policy`, then
/// `script` with the session. The handle yields the script's result (`None` if the client
/// was refused during negotiation).
pub(crate) async fn spawn_fake<F, Fut, T>(
    bind_addr: &str,
    policy: Policy,
    script: F,
) -> (SocketAddr, JoinHandle<Option<T>>)
where
    F: FnOnce(Session) -> Fut + Send + 'static,
    Fut: Future<Output = T> + Send,
    T: Send + 'static,
{
    let listener = TcpListener::bind(bind_addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let session = serve_handshake(stream, &policy).await?;
        Some(script(session).await)
    });
    (addr, handle)
}

/// A "server" that writes `bytes` as soon as a client connects, reads whatever the client
/// sends for a moment, and closes.
pub(crate) async fn spawn_raw(bytes: Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let _ = stream.write_all(&bytes).await;
        let mut sink = [0u8; 512];
        let _ = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut sink)).await;
    });
    addr
}

/// A proxy URL for a fake at `addr`.
pub(crate) fn url(addr: SocketAddr, resolution: Resolution) -> ProxyUrl {
    ProxyUrl::new(addr, resolution)
}
