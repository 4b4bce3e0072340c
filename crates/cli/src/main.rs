//! `ferrosocks`: the SOCKS5 server, client tools and benchmark in one binary.
//!
//! Exit codes: 0 success; 1 runtime failure; 2 bad arguments or configuration.
#![forbid(unsafe_code)]

mod args;
mod cmd;
mod config_file;
mod logging;
mod signals;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        // Reads its configuration first: it says how many worker threads the runtime gets.
        Command::Serve(args) => cmd::serve::main(*args),
        // The load generator runs on one thread: it is pinned to one core anyway, and a
        // multi-threaded runtime would run the scenario's own future on the main thread and
        // its tasks on a worker, so every hand-off between them would be a thread switch.
        Command::Bench(args) => block_on(
            tokio::runtime::Builder::new_current_thread(),
            cmd::bench::run(*args),
        ),
        command => block_on(tokio::runtime::Builder::new_multi_thread(), async move {
            match command {
                Command::Connect(args) => cmd::connect::run(*args).await,
                Command::Bind(args) => cmd::bind::run(*args).await,
                Command::Udp(args) => cmd::udp::run(*args).await,
                Command::Probe(args) => cmd::probe::run(*args).await,
                Command::Passwd(args) => cmd::passwd::run(&args),
                Command::CheckConfig { file } => cmd::check_config::run(&file),
                Command::Serve(_) | Command::Bench(_) => unreachable!("dispatched above"),
            }
        }),
    }
}

/// Builds the runtime `builder` describes and runs `command` on it to the end.
fn block_on(
    mut builder: tokio::runtime::Builder,
    command: impl std::future::Future<Output = ExitCode>,
) -> ExitCode {
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferrosocks: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(command);
    // Everything the command needed has been awaited. A blocking task still running (a
    // name lookup, an access-log reopen waiting for a stalled destination) must not keep
    // the process from exiting, which dropping the runtime would: it waits for them all.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}
