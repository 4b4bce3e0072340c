//! Raw SOCKS5 conversations with the server under test: every byte the probe sends is
//! encoded by `ferrosocks-proto` (or written by hand where it must be malformed), every
//! byte the server sends is kept, and every wait has a deadline.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use ferrosocks_proto::{
    Decode, DecodeError, Encode, Greeting, Method, MethodSelection, Rep, Reply, Request,
    UserPassRequest, UserPassStatus,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why a conversation stopped before the probe had what it needed.
#[derive(Debug)]
pub(crate) enum WireError {
    /// TCP connect to the proxy failed.
    Connect(io::Error),
    /// No (complete) answer within the step deadline.
    Timeout {
        awaiting: &'static str,
        got: Vec<u8>,
        after: Duration,
    },
    /// The server closed (or reset) the connection first.
    Closed {
        awaiting: &'static str,
        got: Vec<u8>,
        reset: bool,
    },
    /// The server sent bytes that are not the expected message.
    Invalid {
        awaiting: &'static str,
        got: Vec<u8>,
        why: String,
    },
    /// Another socket error.
    Io(io::Error),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Connect(e) => write!(f, "cannot connect to the proxy: {e}"),
            WireError::Timeout {
                awaiting,
                got,
                after,
            } => {
                write!(f, "no {awaiting} within {}", secs(*after))?;
                if !got.is_empty() {
                    write!(f, " (partial: {})", hex(got))?;
                }
                Ok(())
            }
            WireError::Closed {
                awaiting,
                got,
                reset,
            } => {
                let how = if *reset { "reset" } else { "closed" };
                write!(f, "connection {how} while waiting for the {awaiting}")?;
                if !got.is_empty() {
                    write!(f, " (partial: {})", hex(got))?;
                }
                Ok(())
            }
            WireError::Invalid { awaiting, got, why } => {
                write!(f, "bad {awaiting}: {why} (bytes: {})", hex(got))
            }
            WireError::Io(e) => write!(f, "socket error: {e}"),
        }
    }
}

/// `1.5s`, `3s`, `250ms`.
pub(crate) fn secs(d: Duration) -> String {
    if d.as_millis() < 1000 {
        format!("{}ms", d.as_millis())
    } else if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// Bytes as spaced hex, shortened past 24 bytes.
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut s: Vec<String> = bytes.iter().take(24).map(|b| format!("{b:02x}")).collect();
    if bytes.len() > 24 {
        s.push(format!("... ({} bytes)", bytes.len()));
    }
    s.join(" ")
}

/// What the server did after a message that should end the session (a failure reply,
/// `05 FF`, a rejected password, a malformed greeting).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Afterwards {
    /// EOF or reset within the wait.
    Closes,
    /// Still open, silent, when the wait ran out.
    StaysOpen,
    /// Sent more bytes, then closed (`closed`) or went silent until the wait ran out.
    SendsMore { bytes: Vec<u8>, closed: bool },
}

impl Afterwards {
    pub(crate) fn word(&self) -> &'static str {
        match self {
            Afterwards::Closes => "closes",
            Afterwards::StaysOpen => "stays open",
            Afterwards::SendsMore { closed: true, .. } => "sends more, closes",
            Afterwards::SendsMore { closed: false, .. } => "sends more, stays open",
        }
    }

    pub(crate) fn describe(&self, wait: Duration) -> String {
        match self {
            Afterwards::Closes => "then closes".into(),
            Afterwards::StaysOpen => format!("then stays open ({} waited)", secs(wait)),
            Afterwards::SendsMore { bytes, closed } => format!(
                "then sends more bytes: {}, then {}",
                hex(bytes),
                if *closed { "closes" } else { "stays open" }
            ),
        }
    }
}

/// The credentials and deadlines every conversation uses.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) proxy: SocketAddr,
    pub(crate) credentials: Option<UserPassRequest>,
    /// Deadline for each single step (connect, one message).
    pub(crate) step: Duration,
    /// How long to watch for a close after a failure.
    pub(crate) close_wait: Duration,
    /// Set when a first, plain session could not even be negotiated because of a
    /// timeout or a protocol error: later sessions would only wait for the same failure
    /// again, so they give up at once with this reason.
    pub(crate) broken: Option<String>,
}

impl Settings {
    /// The methods a normal session offers: NO_AUTH, plus USER_PASS when credentials are
    /// given (as curl does).
    pub(crate) fn session_methods(&self) -> Vec<Method> {
        if self.credentials.is_some() {
            vec![Method::NO_AUTH, Method::USER_PASS]
        } else {
            vec![Method::NO_AUTH]
        }
    }
}

/// One TCP connection to the proxy with everything it has sent and not yet consumed.
pub(crate) struct Conn {
    pub(crate) stream: TcpStream,
    buf: BytesMut,
    step: Duration,
}

impl Conn {
    pub(crate) async fn open(s: &Settings) -> Result<Conn, WireError> {
        let stream = match tokio::time::timeout(s.step, TcpStream::connect(s.proxy)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(WireError::Connect(e)),
            Err(_) => {
                return Err(WireError::Connect(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no TCP connection within {}", secs(s.step)),
                )))
            }
        };
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            stream,
            buf: BytesMut::new(),
            step: s.step,
        })
    }

    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        self.stream.local_addr().ok()
    }

    pub(crate) async fn send(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        match tokio::time::timeout(self.step, self.stream.write_all(bytes)).await {
            Ok(r) => r.map_err(WireError::Io),
            Err(_) => Err(WireError::Timeout {
                awaiting: "write to complete",
                got: Vec::new(),
                after: self.step,
            }),
        }
    }

    pub(crate) async fn send_msg(&mut self, msg: &impl Encode) -> Result<(), WireError> {
        self.send(&msg.to_bytes()).await
    }

    /// Reads once more into the buffer; `Ok(false)` on EOF.
    async fn fill(&mut self, awaiting: &'static str, deadline: Instant) -> Result<(), WireError> {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, self.stream.read_buf(&mut self.buf)).await {
            Ok(Ok(0)) => Err(WireError::Closed {
                awaiting,
                got: self.buf.to_vec(),
                reset: false,
            }),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if is_reset(&e) => Err(WireError::Closed {
                awaiting,
                got: self.buf.to_vec(),
                reset: true,
            }),
            Ok(Err(e)) => Err(WireError::Io(e)),
            Err(_) => Err(WireError::Timeout {
                awaiting,
                got: self.buf.to_vec(),
                after: self.step,
            }),
        }
    }

    /// Decodes one `T` from the stream, reading as needed within one step deadline.
    pub(crate) async fn recv<T: Decode>(&mut self, awaiting: &'static str) -> Result<T, WireError> {
        let deadline = Instant::now() + self.step;
        loop {
            match T::decode_prefix(&self.buf) {
                Ok((msg, used)) => {
                    self.buf.advance(used);
                    return Ok(msg);
                }
                Err(DecodeError::Incomplete { .. }) => self.fill(awaiting, deadline).await?,
                Err(DecodeError::Invalid(e)) => {
                    return Err(WireError::Invalid {
                        awaiting,
                        got: self.buf.to_vec(),
                        why: e.to_string(),
                    })
                }
            }
        }
    }

    /// Reads exactly `n` bytes (e.g. echoed data) within one step deadline.
    pub(crate) async fn recv_exact(
        &mut self,
        n: usize,
        awaiting: &'static str,
    ) -> Result<Vec<u8>, WireError> {
        let deadline = Instant::now() + self.step;
        while self.buf.len() < n {
            self.fill(awaiting, deadline).await?;
        }
        Ok(self.buf.split_to(n).to_vec())
    }

    /// Watches the connection for `wait`: does the server close it?
    pub(crate) async fn afterwards(&mut self, wait: Duration) -> Afterwards {
        let deadline = Instant::now() + wait;
        let mut extra = std::mem::take(&mut self.buf).to_vec();
        let mut chunk = [0u8; 512];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    return if extra.is_empty() {
                        Afterwards::Closes
                    } else {
                        Afterwards::SendsMore {
                            bytes: extra,
                            closed: true,
                        }
                    }
                }
                Ok(Ok(n)) => {
                    extra.extend_from_slice(&chunk[..n]);
                    if extra.len() > 4096 {
                        return Afterwards::SendsMore {
                            bytes: extra,
                            closed: false,
                        };
                    }
                }
                Err(_) => {
                    return if extra.is_empty() {
                        Afterwards::StaysOpen
                    } else {
                        Afterwards::SendsMore {
                            bytes: extra,
                            closed: false,
                        }
                    }
                }
            }
        }
    }
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
    )
}

/// How a handshake up to the request went, when it did not get that far.
#[derive(Debug)]
pub(crate) enum HandshakeFailure {
    Wire(WireError),
    /// `05 FF`: none of the offered methods.
    NoAcceptable(Vec<Method>),
    /// A method that was not offered.
    Unexpected(Method),
    /// RFC 1929 status other than 0.
    AuthRejected(u8),
    /// Not tried: the first session already failed this way ([`Settings::broken`]).
    Skipped(String),
}

impl fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeFailure::Wire(e) => e.fmt(f),
            HandshakeFailure::NoAcceptable(offered) => write!(
                f,
                "the server accepts none of the offered methods ({}); give --user/--pass if it \
                 needs a password",
                methods(offered)
            ),
            HandshakeFailure::Unexpected(m) => {
                write!(
                    f,
                    "the server selected method {:02x}, which was not offered",
                    m.0
                )
            }
            HandshakeFailure::AuthRejected(s) => {
                write!(f, "username/password rejected (status {s:02x})")
            }
            HandshakeFailure::Skipped(why) => {
                write!(f, "not tried: a plain session already failed: {why}")
            }
        }
    }
}

impl From<WireError> for HandshakeFailure {
    fn from(e: WireError) -> Self {
        HandshakeFailure::Wire(e)
    }
}

/// `00 02`.
pub(crate) fn methods(ms: &[Method]) -> String {
    ms.iter()
        .map(|m| format!("{:02x}", m.0))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A method code with its name: `02 (username/password)`.
pub(crate) fn method_name(m: Method) -> String {
    match m.name() {
        Some(_) => format!("{:02x} ({m})", m.0),
        None => format!("{:02x}", m.0),
    }
}

/// A REP code with its name: `05 (connection refused)`.
pub(crate) fn rep_name(rep: Rep) -> String {
    match rep.name() {
        Some(_) => format!("{:02x} ({rep})", rep.0),
        None => format!("{:02x} (unassigned)", rep.0),
    }
}

/// Opens a connection and negotiates a method (and authenticates), ready for a request.
pub(crate) async fn authenticated(s: &Settings) -> Result<(Conn, Method), HandshakeFailure> {
    if let Some(why) = &s.broken {
        return Err(HandshakeFailure::Skipped(why.clone()));
    }
    let mut conn = Conn::open(s).await?;
    let offered = s.session_methods();
    conn.send_msg(&Greeting {
        methods: offered.clone(),
    })
    .await?;
    let sel: MethodSelection = conn.recv("method selection").await?;
    match sel.method {
        Method::NO_ACCEPTABLE => Err(HandshakeFailure::NoAcceptable(offered)),
        m if !offered.contains(&m) => Err(HandshakeFailure::Unexpected(m)),
        Method::USER_PASS => {
            // Offered only with credentials, so they are there.
            if let Some(creds) = &s.credentials {
                conn.send_msg(creds).await?;
            }
            let status: UserPassStatus = conn.recv("username/password status").await?;
            if status.is_success() {
                Ok((conn, Method::USER_PASS))
            } else {
                Err(HandshakeFailure::AuthRejected(status.status))
            }
        }
        m => Ok((conn, m)),
    }
}

/// A full session: handshake, then `request`, then the first reply.
pub(crate) async fn request(
    s: &Settings,
    request: &Request,
) -> Result<(Conn, Reply), HandshakeFailure> {
    raw_request(s, &request.to_bytes()).await
}

/// Like [`request`], with the request given as raw (possibly malformed) bytes.
pub(crate) async fn raw_request(
    s: &Settings,
    bytes: &[u8],
) -> Result<(Conn, Reply), HandshakeFailure> {
    let (mut conn, _) = authenticated(s).await?;
    conn.send(bytes).await?;
    let reply: Reply = conn.recv("reply").await?;
    Ok((conn, reply))
}
