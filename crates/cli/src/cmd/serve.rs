//! `ferrosocks serve`: build the server from file and flags, run until SIGTERM/SIGINT,
//! reload on SIGHUP.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferrosocks_server::{AccessLog, Server, ServerHandle};
use tokio::signal::unix::{Signal, SignalKind};

use crate::args::ServeArgs;
use crate::config_file::{self, AccessLogOpen};
use crate::{logging, signals};

/// How long exiting waits for the access log's last lines to be written.
const ACCESS_LOG_EXIT_WAIT: Duration = Duration::from_secs(5);

pub(crate) async fn run(args: ServeArgs) -> ExitCode {
    let (config, log) =
        match config_file::load(args.config.as_deref(), &args.overrides, AccessLogOpen::Yes) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("ferrosocks: {e}");
                return ExitCode::from(2);
            }
        };
    logging::init(&log);
    signals::raise_fd_limit();
    // Before the server binds and logs where it listens: a signal sent as soon as it is
    // reachable must find its handler (see `signals::shutdown`).
    let shutdown = signals::shutdown();
    let hup = signals::watch(SignalKind::hangup(), "SIGHUP");
    let access_log = config.access_log.clone();
    let server = match Server::bind(config).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("ferrosocks: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(hup) = hup {
        tokio::spawn(reload_on_sighup(
            hup,
            server.handle(),
            access_log.clone(),
            args,
        ));
    } else {
        tracing::warn!("reloading on SIGHUP is disabled");
    }
    server.run(shutdown).await;
    // The access log's writer thread writes at intervals; the lines of the last sessions
    // are written here, before the process exits and cuts that thread off.
    if !access_log.flush_within(ACCESS_LOG_EXIT_WAIT) {
        tracing::warn!(
            dropped_earlier = access_log.dropped(),
            "access log: its destination took no lines for {ACCESS_LOG_EXIT_WAIT:?}; exiting without the last ones"
        );
    }
    ExitCode::SUCCESS
}

/// Re-reads the configuration on SIGHUP and swaps users, methods and rules (a bad file is
/// reported and the running settings stay), then opens the access-log file again, for log
/// rotation.
async fn reload_on_sighup(
    mut hup: Signal,
    handle: ServerHandle,
    access_log: AccessLog,
    args: ServeArgs,
) {
    let reopening = Arc::new(AtomicBool::new(false));
    while hup.recv().await.is_some() {
        match config_file::load(args.config.as_deref(), &args.overrides, AccessLogOpen::No) {
            Ok((config, _)) => {
                tracing::info!(
                    users = config.users.len(),
                    rules = config.rules.rules().len(),
                    "SIGHUP: reloaded users, methods and rules (listen addresses, timeouts, limits, relay, local_congestion, busy_poll and the access log's destination need a restart)"
                );
                handle.reload(config.auth_methods, config.users, config.rules);
            }
            Err(e) => tracing::error!("SIGHUP: configuration not reloaded: {e}"),
        }
        reopen_access_log(&access_log, &reopening);
    }
}

/// Reopens the access-log file on a blocking thread, not awaited: the reopen first writes
/// what is pending and may wait as long as a destination takes nothing (a FIFO without a
/// reader, a hung mount), which must hold up neither a worker nor the next reload. While
/// one reopen waits, later ones are skipped rather than piled up behind it.
fn reopen_access_log(access_log: &AccessLog, reopening: &Arc<AtomicBool>) {
    if reopening.swap(true, Ordering::AcqRel) {
        tracing::warn!("SIGHUP: access log not reopened: the previous reopen is still waiting for its destination");
        return;
    }
    let log = access_log.clone();
    let reopening = reopening.clone();
    tokio::task::spawn_blocking(move || {
        match log.reopen() {
            Ok(Some(path)) => tracing::info!("SIGHUP: reopened access log {}", path.display()),
            Ok(None) => {}
            Err(e) => tracing::error!(
                "SIGHUP: access log not reopened, still writing to the old file: {e}"
            ),
        }
        reopening.store(false, Ordering::Release);
    });
}
