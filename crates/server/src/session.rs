//! One client connection from accept to close: handshake under a deadline, then the
//! command handler, then the failure reply (if any) and the access-log line.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use ferrosocks_proto::{Command, Encode, Event, Reply, Request, ServerHandshake};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use crate::access_log::SessionRecord;
use crate::error::{rep, Phase, SessionError};
use crate::relay::relay;
use crate::{bind, connect, tcp_tuning, udp, Shared};

/// The largest handshake message (a request with a 255-byte name) is 262 bytes, and a
/// user/pass request 513; the buffer never needs to grow past this.
const HANDSHAKE_BUFFER: usize = 1024;

/// After a failure reply, how long the client may keep sending before the connection is
/// closed anyway. RFC 1928 §6 asks for the close within 10 seconds.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// A client connection and its buffers, as handlers see it.
pub(crate) struct Conn {
    pub(crate) stream: TcpStream,
    /// Bytes read but not yet consumed; after the handshake, the client's pipelined payload.
    pub(crate) input: BytesMut,
    /// Bytes to send; replies are gathered here so they leave in one write.
    pub(crate) output: BytesMut,
    pub(crate) client: SocketAddr,
    /// The authenticated user, if any.
    pub(crate) user: Option<String>,
}

impl Conn {
    /// The address the client reached the server at (only BIND and UDP need it, so it is
    /// asked of the kernel only then).
    pub(crate) fn local_addr(&self) -> Result<SocketAddr, SessionError> {
        Ok(self.stream.local_addr()?)
    }

    /// Sends everything gathered in the output buffer.
    pub(crate) async fn flush(&mut self) -> Result<(), SessionError> {
        if !self.output.is_empty() {
            self.stream
                .write_all(&self.output)
                .await
                .map_err(|_| SessionError::ClientClosed)?;
            self.output.clear();
        }
        Ok(())
    }

    /// Queues a reply and sends it together with anything queued before it.
    pub(crate) async fn send_reply(&mut self, reply: &Reply) -> Result<(), SessionError> {
        reply.encode(&mut self.output);
        self.flush().await
    }

    /// Hands back the pipelined payload (if any) and frees the handshake buffers, so an
    /// idle tunnel holds no buffer of its own.
    pub(crate) fn take_leftover(&mut self) -> BytesMut {
        self.output = BytesMut::new();
        std::mem::take(&mut self.input)
    }
}

/// The tunnel phase of CONNECT and BIND: the client's pipelined payload goes to the far
/// end first, then both directions are relayed until they close; the record gets the byte
/// counts and how it ended.
pub(crate) async fn run_tunnel(
    conn: &mut Conn,
    far: &mut TcpStream,
    shared: &Shared,
    record: &mut SessionRecord,
) {
    // In a block of its own, so the emptied buffer has no place in the task while the
    // tunnel runs.
    {
        let leftover = conn.take_leftover();
        if !leftover.is_empty() {
            if far.write_all(&leftover).await.is_err() {
                record.end = "the far end closed before the pipelined payload was delivered".into();
                return;
            }
            record.bytes_up += leftover.len() as u64;
        }
    }
    let stats = relay(
        &conn.stream,
        far,
        shared.config.timeouts.idle,
        shared.config.relay_mode,
        shared.busy_poll,
        &shared.pipes,
        shared.drain_over.cancelled(),
    )
    .await;
    record.bytes_up += stats.up;
    record.bytes_down += stats.down;
    record.end = stats.end.describe().into();
    if stats.end == crate::relay::RelayEnd::Error {
        // One side aborted (a reset, a failed write): the other is aborted too when both
        // are closed, with a reset rather than a FIN, which would have it take a cut-off
        // transfer whose end only the close marks for a complete one.
        reset_on_close(&conn.stream);
        reset_on_close(far);
    }
}

/// Makes closing `stream` send a reset instead of a FIN. Linger zero does it at once; it
/// never blocks, unlike a non-zero linger.
pub(crate) fn reset_on_close(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(std::time::Duration::ZERO));
}

/// Runs one session to its end. Never panics on client input; every outcome is logged.
///
/// Not an `async fn`: that would copy each argument into a local of its own and keep both
/// copies in the task for its whole life (about 100 bytes of every idle tunnel). The state
/// is built here and the future uses it in place.
pub(crate) fn run(
    stream: TcpStream,
    client: SocketAddr,
    shared: Arc<Shared>,
    connection: OwnedSemaphorePermit,
    handshake_permit: OwnedSemaphorePermit,
    inherited: tcp_tuning::Inherited,
) -> impl std::future::Future<Output = ()> + Send {
    let started = Instant::now();
    // Until its access-log line is written (see `Shared::unlogged`).
    shared.unlogged.fetch_add(1, Ordering::Relaxed);
    // Here rather than in the future, which would keep `inherited` for the tunnel's whole
    // life. From a loopback listener this sets nothing (it was all inherited); elsewhere
    // only a loopback client's socket gets a call or two.
    tcp_tuning::tune_accepted(
        &stream,
        client.ip(),
        tcp_tuning::Local::of(&shared.config),
        inherited,
    );
    let mut record = SessionRecord::new(client);
    let mut conn = Conn {
        stream,
        input: BytesMut::with_capacity(HANDSHAKE_BUFFER),
        output: BytesMut::with_capacity(64),
        client,
        user: None,
    };
    async move {
        let result = drive(&mut conn, &shared, &mut record, handshake_permit).await;
        let linger = if let Err(error) = &result {
            if let Some(code) = rep(error) {
                record.rep = Some(code);
                let _ = conn.send_reply(&Reply::failure(code)).await;
            } else {
                // 05 FF or an RFC 1929 failure status may be waiting.
                let _ = conn.flush().await;
            }
            record.end = error.to_string();
            match error {
                SessionError::ClientClosed | SessionError::Timeout(Phase::Handshake) => {
                    tracing::debug!(%error, "session ended")
                }
                _ => tracing::info!(client = %conn.client, %error, "session failed"),
            }
            Some(conn.stream)
        } else {
            // A finished tunnel's last FIN goes out with this close (see `relay`), so it comes
            // before the log line.
            drop(conn);
            None
        };
        // Before the linger after a failure: the session is over once its answer is out, and a
        // shutdown's last moments must not hold back the line.
        record.duration = started.elapsed();
        shared.config.access_log.write(&record);
        shared.unlogged.fetch_sub(1, Ordering::Relaxed);
        if let Some(stream) = linger {
            close_after_failure(stream).await;
        }
        // Held until the session ends, the close linger included: it counts towards
        // `max_connections`.
        drop(connection);
    }
}

async fn drive(
    conn: &mut Conn,
    shared: &Arc<Shared>,
    record: &mut SessionRecord,
    handshake_permit: OwnedSemaphorePermit,
) -> Result<(), SessionError> {
    let request = tokio::time::timeout(
        shared.config.timeouts.handshake,
        handshake(conn, shared, record),
    )
    .await
    .map_err(|_| SessionError::Timeout(Phase::Handshake))??;
    drop(handshake_permit);
    record.command = Some(request.command);
    record.target = Some(request.dst.to_string());
    tracing::debug!(command = ?request.command, dst = %request.dst, "request");
    // The drain is over: a handshake that finishes now gets a failure reply, not a new
    // connection to its target that the shutdown would cut a moment later.
    if shared.drain_over.is_cancelled() {
        return Err(SessionError::Shutdown);
    }
    match request.command {
        Command::CONNECT => connect::handle(conn, shared, record, request.dst).await,
        // BIND and UDP keep more state than CONNECT; boxing them keeps every session's
        // future (the memory an idle CONNECT tunnel costs) the size of the CONNECT path.
        Command::BIND => Box::pin(bind::handle(conn, shared, record, request.dst)).await,
        Command::UDP_ASSOCIATE => Box::pin(udp::handle(conn, shared, record, request.dst)).await,
        // The handshake only returns known commands; an unknown one is a HandshakeError.
        other => Err(SessionError::Protocol(ferrosocks_proto::HandshakeError {
            stage: ferrosocks_proto::Stage::Request,
            error: ferrosocks_proto::ProtocolError::UnknownCommand(other.0),
        })),
    }
}

/// Greeting, optional username/password, request. Reads only as much as it needs to decode;
/// whatever follows the request stays in `conn.input`.
async fn handshake(
    conn: &mut Conn,
    shared: &Shared,
    record: &mut SessionRecord,
) -> Result<Request, SessionError> {
    let auth = shared.auth();
    let mut hs = ServerHandshake::new(auth.methods.iter().map(|m| m.method()).collect());
    loop {
        match hs.feed(&mut conn.input, &mut conn.output)? {
            Event::NeedMore => {
                conn.flush().await?;
                if conn.input.len() >= HANDSHAKE_BUFFER {
                    // Cannot happen with well-formed messages (see HANDSHAKE_BUFFER).
                    return Err(SessionError::ClientClosed);
                }
                conn.input.reserve(HANDSHAKE_BUFFER - conn.input.len());
                match conn.stream.read_buf(&mut conn.input).await {
                    Ok(0) | Err(_) => return Err(SessionError::ClientClosed),
                    Ok(_) => {}
                }
            }
            Event::Authenticate(credentials) => {
                let user = String::from_utf8_lossy(&credentials.username).into_owned();
                // Argon2 (hashed users) runs off this worker; see auth.rs.
                let accepted = auth.users.verify_async(&credentials).await;
                hs.handle_auth_verdict(accepted, &mut conn.output);
                if !accepted {
                    record.user = Some(user.clone());
                    return Err(SessionError::AuthFailed { user });
                }
                record.user = Some(user.clone());
                conn.user = Some(user);
            }
            Event::Request(request) => return Ok(request),
            Event::NoAcceptableMethod => return Err(SessionError::NoAcceptableMethod),
            Event::AuthFailed => {
                return Err(SessionError::AuthFailed {
                    user: String::new(),
                })
            }
        }
    }
}

/// Closes after a failure: shut our sending half (the reply is already out), then read and
/// discard until the client closes or [`CLOSE_LINGER`] passes. Closing a socket that still
/// has unread input makes the kernel send a reset, which can destroy the reply before the
/// client reads it.
async fn close_after_failure(mut stream: TcpStream) {
    let _ = stream.shutdown().await;
    // On the heap: an array here would sit in every session's future, failed or not.
    let mut sink = vec![0u8; 4096];
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        let mut total = 0usize;
        while total < 1 << 20 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    /// Every open tunnel costs the server one task, and a task is as large as the session
    /// future's largest state. This guards the budget behind "under 4 KiB per idle tunnel":
    /// a stray buffer held across an `.await` (it happened: a 4 KiB array in the close
    /// path) would more than double it.
    #[tokio::test]
    async fn session_future_stays_small() {
        fn size<F: std::future::Future>(_: &F) -> usize {
            std::mem::size_of::<F>()
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let shared = std::sync::Arc::new(crate::Shared::new(crate::Config::default(), Vec::new()));
        let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(2));
        let session = super::run(
            stream,
            addr,
            shared,
            permits.clone().try_acquire_owned().unwrap(),
            permits.try_acquire_owned().unwrap(),
            crate::tcp_tuning::Inherited::default(),
        );
        let bytes = size(&session);
        // 1784 today. It was 2624 before the relay waited through poll functions instead
        // of tokio's readiness futures, and before arguments stopped being held twice
        // (see `run` and `relay::Direction`) and the connect step's locals stopped
        // outliving it: idle RSS per tunnel went from 3.78 to 2.89 KiB. Tokio rounds a task
        // up to 128 bytes on x86_64, so even 8 bytes more can cost 128 per idle tunnel
        // (1792 bytes measured 3.02 KiB).
        assert!(bytes <= 1856, "session future grew to {bytes} bytes");
    }
}
