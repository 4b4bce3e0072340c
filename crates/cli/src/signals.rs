//! Process-level setup: signals and the open-files limit.

use std::future::Future;

use tokio::signal::unix::{signal, Signal, SignalKind};

/// SIGTERM and SIGINT, watched from [`shutdown`] on.
pub(crate) struct Shutdown {
    /// How many of them have arrived.
    received: tokio::sync::watch::Receiver<u32>,
}

impl Shutdown {
    /// Completes when the first has arrived: shut down, draining the sessions.
    pub(crate) fn first(&self) -> impl Future<Output = ()> + Send + 'static {
        self.nth(1)
    }

    /// Completes when a second has arrived: stop draining, as a user pressing Ctrl-C
    /// again or an init system sending SIGTERM twice means.
    pub(crate) fn second(&self) -> impl Future<Output = ()> + Send + 'static {
        self.nth(2)
    }

    fn nth(&self, n: u32) -> impl Future<Output = ()> + Send + 'static {
        let mut received = self.received.clone();
        async move {
            // An error means the watching task is gone, which it never is while the
            // runtime runs: waiting on is then the only faithful answer.
            if received.wait_for(|r| *r >= n).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Watches SIGTERM and SIGINT from now on. Registering here, before the server binds and
/// says where it listens, matters: until a handler is registered a signal takes its
/// default action and kills the process with no drain and no exit code 0 (a test once
/// sent SIGTERM in that window). Must be called within the runtime. `again` says, in the
/// log, what a second signal does.
pub(crate) fn shutdown(again: &'static str) -> Shutdown {
    let mut term = watch(SignalKind::terminate(), "SIGTERM");
    let mut int = watch(SignalKind::interrupt(), "SIGINT");
    let (count, received) = tokio::sync::watch::channel(0u32);
    tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                () = received_one(&mut term) => "SIGTERM",
                () = received_one(&mut int) => "SIGINT",
            };
            let n = *count.borrow() + 1;
            if n == 1 {
                tracing::info!("{name} received");
            } else {
                tracing::warn!("{name} received again: {again}");
            }
            count.send_replace(n);
        }
    });
    Shutdown { received }
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
async fn received_one(signal: &mut Option<Signal>) {
    match signal {
        Some(s) => {
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
