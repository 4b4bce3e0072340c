//! The accept loop: a connection permit before each accept, a handshake permit per new
//! client, and back-off (never exit, never spin) when accept fails.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::{session, tcp_tuning, Shared};

const BACKOFF_START: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

pub(crate) async fn run(
    listener: TcpListener,
    inherited: tcp_tuning::Inherited,
    shared: Arc<Shared>,
    sessions: TaskTracker,
    stop: CancellationToken,
) {
    let mut backoff = BACKOFF_START;
    loop {
        // Waiting for a permit before accepting leaves excess clients in the kernel's
        // backlog instead of accepting connections we cannot serve.
        let permit = tokio::select! {
            p = shared.connections.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            () = stop.cancelled() => return,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = stop.cancelled() => return,
        };
        match accepted {
            Ok((stream, client)) => {
                backoff = BACKOFF_START;
                let Ok(handshake) = shared.handshakes.clone().try_acquire_owned() else {
                    tracing::warn!(%client, "too many unauthenticated connections; closing this one");
                    continue;
                };
                // A debug-level span: at the default level it is disabled and costs nothing,
                // whereas an enabled span is entered and left on every poll of the session.
                // Events that matter at info level carry the client themselves.
                let span = tracing::debug_span!("session", %client);
                sessions.spawn(
                    session::run(stream, client, shared.clone(), permit, handshake, inherited)
                        .instrument(span),
                );
            }
            Err(e) if is_connection_error(&e) => {
                // The client gave up between SYN and accept: nothing is wrong with us.
                tracing::debug!(error = %e, "accept: connection aborted by client");
            }
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS: waiting lets other sessions finish and free
                // descriptors; the pending connection stays queued in the kernel.
                tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed; backing off");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    )
}
