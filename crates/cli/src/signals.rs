//! Process-level setup: signals and the open-files limit.

use std::future::Future;

use tokio::signal::unix::{signal, Signal, SignalKind};

/// Watches SIGTERM and SIGINT from now on and returns a future that completes on the
/// first. Registering here, before the server binds and says where it listens, matters:
/// until a handler is registered a signal takes its default action and kills the process
/// with no drain and no exit code 0 (a test once sent SIGTERM in that window).
pub(crate) fn shutdown() -> impl Future<Output = ()> + Send + 'static {
    let term = watch(SignalKind::terminate(), "SIGTERM");
    let int = watch(SignalKind::interrupt(), "SIGINT");
    async move {
        tokio::select! {
            () = received(term) => tracing::info!("SIGTERM received"),
            () = received(int) => tracing::info!("SIGINT received"),
        }
    }
}

/// Registers for `kind` now; `None` (with a warning) if the OS refuses.
pub(crate) fn watch(kind: SignalKind, name: &str) -> Option<Signal> {
    match signal(kind) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch {name}");
            None
        }
    }
}

/// Completes when the signal arrives; never, for a signal that could not be watched.
async fn received(signal: Option<Signal>) {
    match signal {
        Some(mut s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// Raises the soft open-files limit to the hard limit: every tunnel costs two descriptors,
/// and the usual soft limit of 1024 would cap the server near 500 tunnels.
pub(crate) fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open-files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
    }
}
