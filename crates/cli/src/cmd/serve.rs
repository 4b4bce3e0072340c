//! `ferrosocks serve`: build the server from file and flags, run until SIGTERM/SIGINT,
//! reload on SIGHUP.

use std::process::ExitCode;

use ferrosocks_server::{Server, ServerHandle};
use tokio::signal::unix::{signal, SignalKind};

use crate::args::ServeArgs;
use crate::config_file;
use crate::{logging, signals};

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
    let server = match Server::bind(config).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("ferrosocks: {e}");
            return ExitCode::FAILURE;
        }
    };
    tokio::spawn(reload_on_sighup(server.handle(), args));
    server.run(signals::shutdown()).await;
    ExitCode::SUCCESS
}

/// Re-reads the configuration on SIGHUP and swaps users, methods and rules. A bad file is
/// reported and the running settings stay.
async fn reload_on_sighup(handle: ServerHandle, args: ServeArgs) {
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot watch SIGHUP; reloading is disabled");
        return;
    };
    while hup.recv().await.is_some() {
        match config_file::load(args.config.as_deref(), &args.overrides) {
            Ok((config, _)) => {
                tracing::info!(
                    users = config.users.len(),
                    rules = config.rules.rules().len(),
                    "SIGHUP: reloaded users, methods and rules (listen addresses and timeouts need a restart)"
                );
                handle.reload(config.auth_methods, config.users, config.rules);
            }
            Err(e) => tracing::error!("SIGHUP: configuration not reloaded: {e}"),
        }
    }
}
