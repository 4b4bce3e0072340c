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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferrosocks: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => cmd::serve::run(*args).await,
            Command::Connect(args) => cmd::connect::run(*args).await,
            Command::Bind(args) => cmd::bind::run(*args).await,
            Command::Udp(args) => cmd::udp::run(*args).await,
            Command::Probe(args) => cmd::probe::run(*args).await,
            Command::Passwd(args) => cmd::passwd::run(&args),
            Command::CheckConfig { file } => cmd::check_config::run(&file),
            Command::Bench(args) => cmd::bench::run(*args).await,
        }
    })
}
