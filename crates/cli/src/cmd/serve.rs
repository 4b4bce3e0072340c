//! `ferrosocks serve`: build the server from file and flags, run until SIGTERM/SIGINT,
//! reload on SIGHUP.

use std::process::ExitCode;
use std::time::Duration;

use ferrosocks_server::{AccessLog, Server, ServerHandle};
use tokio::signal::unix::{Signal, SignalKind};

use crate::args::ServeArgs;
use crate::config_file;
use crate::{logging, signals};

/// How long exiting waits for the access log's last lines to be written.
const ACCESS_LOG_EXIT_WAIT: Duration = Duration::from_secs(5);

pub(crate) async fn run(args: ServeArgs) -> ExitCode {
    let (config, log) = match config_file::load(args.config.as_deref(), &args.overrides) {
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
/// reported and the running settings stay), and opens the access-log file again, for log
/// rotation.
async fn reload_on_sighup(
    mut hup: Signal,
    handle: ServerHandle,
    access_log: AccessLog,
    args: ServeArgs,
) {
    while hup.recv().await.is_some() {
        // Off the workers: the reopen first writes what is pending and may wait for a
        // destination that takes nothing (a FIFO without a reader, a hung mount).
        let log = access_log.clone();
        let reopened = tokio::task::spawn_blocking(move || {
            log.reopen()
                .map(|path| path.map(|p| p.display().to_string()))
        })
        .await;
        match reopened {
            Ok(Ok(Some(path))) => tracing::info!("SIGHUP: reopened access log {path}"),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::error!(
                "SIGHUP: access log not reopened, still writing to the old file: {e}"
            ),
            Err(e) => tracing::error!("SIGHUP: access log not reopened: {e}"),
        }
        match config_file::load(args.config.as_deref(), &args.overrides) {
            Ok((config, _)) => {
                tracing::info!(
                    users = config.users.len(),
                    rules = config.rules.rules().len(),
                    "SIGHUP: reloaded users, methods and rules (listen addresses, timeouts, limits, relay, local_congestion and busy_poll need a restart)"
                );
                handle.reload(config.auth_methods, config.users, config.rules);
            }
            Err(e) => tracing::error!("SIGHUP: configuration not reloaded: {e}"),
        }
    }
}
