//! `ferrosocks serve`: build the server from file and flags, run until SIGTERM/SIGINT,
//! reload on SIGHUP.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrosocks_server::{AccessLog, Server, ServerHandle};
use tokio::signal::unix::{Signal, SignalKind};

use crate::args::ServeArgs;
use crate::config_file::{self, AccessLogOpen, Workers};
use crate::{logging, signals};

/// How long exiting waits for the access log's last lines to be written.
const ACCESS_LOG_EXIT_WAIT: Duration = Duration::from_secs(5);

/// I/O events a worker takes from the kernel when it checks for them between tasks
/// (tokio's default: 1024, the same as when it waits). Every event it takes wakes a task
/// onto its local run queue, which holds 256; when that queue overflows, tokio moves its
/// oldest half to the global queue, served one task every few dozen, so under load the
/// sessions that had waited longest waited longest again. With 256 clients opening
/// sessions back to back (`bench connrate --workers 256`) the session p99 was 42–50 ms
/// against a p50 of 16–20; with 64 here it is 0.67–0.77× that, with 8, 64 or 128 clients
/// no worse, with 512 lower still (0.74×) at 6 % fewer sessions/s (README, Performance).
/// The rest of a large batch stays in the kernel until the next check. Set here, where the
/// runtime is built: a program that runs the server library on its own runtime chooses.
const BUSY_IO_EVENTS: usize = 64;

/// Reads the configuration, then runs the server on a runtime with the worker threads it
/// asks for.
pub(crate) fn main(args: ServeArgs) -> ExitCode {
    let (config, settings) =
        match config_file::load(args.config.as_deref(), &args.overrides, AccessLogOpen::Yes) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("ferrosocks: {e}");
                return ExitCode::from(2);
            }
        };
    logging::init(&settings);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = settings.workers.count(cpus);
    match settings.workers {
        Workers::Auto => tracing::info!(
            "{workers} worker thread(s): one fewer than the {cpus} CPU(s) this process may run on, at least one (workers = \"auto\")"
        ),
        Workers::Count(_) => tracing::info!("{workers} worker thread(s)"),
    }
    if std::env::var_os("TOKIO_WORKER_THREADS").is_some() {
        tracing::warn!(
            "TOKIO_WORKER_THREADS is ignored by serve: the workers setting (--workers) sizes its runtime"
        );
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime
        .worker_threads(workers)
        .max_io_events_per_busy_tick(BUSY_IO_EVENTS);
    crate::block_on(runtime, run(args, config))
}

async fn run(args: ServeArgs, config: ferrosocks_server::Config) -> ExitCode {
    signals::raise_fd_limit();
    // Before the server binds and logs where it listens: a signal sent as soon as it is
    // reachable must find its handler (see `signals::shutdown`).
    let shutdown = signals::shutdown("closing the remaining sessions now");
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
    // A second signal while draining: close what is left now rather than at the drain
    // time (30 s by default), as a user pressing Ctrl-C again expects.
    let (second, handle) = (shutdown.second(), server.handle());
    tokio::spawn(async move {
        second.await;
        handle.end_drain();
    });
    server.run(shutdown.first()).await;
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
    let reopener = Arc::new(Reopener::default());
    while hup.recv().await.is_some() {
        // Reads files: off the workers, like any blocking I/O.
        let (path, overrides) = (args.config.clone(), args.overrides.clone());
        let loaded = tokio::task::spawn_blocking(move || {
            config_file::load(path.as_deref(), &overrides, AccessLogOpen::No)
                .map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        match loaded {
            Ok((config, _)) => {
                tracing::info!(
                    users = config.users.len(),
                    rules = config.rules.rules().len(),
                    "SIGHUP: reloaded users, methods and rules (listen addresses, timeouts, limits, relay, local_congestion, local_notsent_lowat, busy_poll, name_cache, workers and the access log's destination and format need a restart)"
                );
                handle.reload(config.auth_methods, config.users, config.rules);
            }
            Err(e) => tracing::error!("SIGHUP: configuration not reloaded: {e}"),
        }
        reopener.request(&access_log);
    }
}

/// Reopens the access-log file on a thread of its own, not awaited: the reopen writes
/// what is pending to the old destination first and may wait as long as that takes
/// nothing, which must hold up neither a worker nor the next reload. SIGHUPs that come
/// while a reopen waits make it run once more when it is done, rather than piling up
/// threads behind it.
#[derive(Default)]
struct Reopener {
    state: Mutex<ReopenState>,
}

#[derive(Default)]
struct ReopenState {
    running: bool,
    /// Another reopen was asked for while one was running.
    again: bool,
}

impl Reopener {
    fn request(self: &Arc<Self>, access_log: &AccessLog) {
        {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if state.running {
                state.again = true;
                tracing::warn!(
                    "SIGHUP: the previous access-log reopen is still waiting for its destination; reopening again after it"
                );
                return;
            }
            state.running = true;
        }
        let (this, log) = (self.clone(), access_log.clone());
        let spawned = std::thread::Builder::new()
            .name("access-log-reopen".into())
            .spawn(move || this.run(&log));
        if let Err(e) = spawned {
            tracing::error!("SIGHUP: access log not reopened: no thread for it: {e}");
            self.state.lock().unwrap_or_else(|e| e.into_inner()).running = false;
        }
    }

    fn run(&self, log: &AccessLog) {
        loop {
            match log.reopen() {
                Ok(Some(path)) => tracing::info!("SIGHUP: reopened access log {}", path.display()),
                Ok(None) => {}
                Err(e) => tracing::error!(
                    "SIGHUP: access log not reopened, still writing to the old destination: {e}"
                ),
            }
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if !std::mem::take(&mut state.again) {
                state.running = false;
                return;
            }
        }
    }
}
